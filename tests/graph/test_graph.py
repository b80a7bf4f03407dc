"""Third-party graph support (spec §11): every new stage exact in the count limit on random-weight
graphs, every refusal names its node, MONAI and smp U-Nets end to end, the public API."""
import warnings

import pytest
import torch
from helpers import Relu6Net, ResidualNet, init_random
import torch.nn.functional as F
from torch import nn

import sjunet
from sjunet.calibration import calibrate
from sjunet.conversion.recipe import convert, load_snn, save_snn
from sjunet.graph import UnsupportedGraphError, canonical_graph
from sjunet.layers.stages import SpikingMaxPool2d
from sjunet.snn.simulation import simulate

T_STEPS = [8, 64, 512]


def _init(net: nn.Module, seed: int) -> nn.Module:
    return init_random(net, seed, bn_bias=0.0)


def _data(n=3, b=2, c=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, c, size, size, generator=g) for _ in range(n)]


def _errors(net, data=None, T=T_STEPS, **kw):
    data = data or _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snn = convert(net, calibrate(net, data, progress=False), **kw)
    x = data[0]
    ref = net(x).detach()
    out = simulate(snn, x, T, chunk=64)
    scale = float(ref.abs().mean())
    return {t: float((o - ref).abs().mean()) / scale for t, o in out.items()}, snn


def _assert_converges(err, tol=0.01):
    ts = sorted(err)
    assert err[ts[-1]] < err[ts[0]], err
    assert err[ts[-1]] < tol, err


class MaxPoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 2, 1)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        a = F.relu(self.c1(x))
        b = torch.relu(self.c2(self.pool(a)))
        return self.head(self.up(b) + a)  # a linear join of a neuron output and an upsampled one


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.dw = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.pw, self.head = nn.Conv2d(4, 4, 1), nn.ConvTranspose2d(8, 2, 2, stride=2, groups=2)

    def forward(self, x):
        a = nn.functional.relu(self.c1(x))
        b = self.pw(self.dw(a)).relu_()
        return torch.softmax(self.head(torch.cat([a, b], 1)), dim=1)


@pytest.mark.parametrize("net_cls", [MaxPoolNet, ResidualNet, Relu6Net, GroupedNet])
@pytest.mark.parametrize("neuron", ["mt", "if"])
def test_new_stages_exact_in_the_limit(net_cls, neuron):
    T = T_STEPS if neuron == "mt" else [16, 256, 2048]
    err, snn = _errors(_init(net_cls(), seed=1), T=T, neuron=neuron)
    _assert_converges(err, tol=0.01 if neuron == "mt" else 0.03)


def test_relu6_saturates_at_the_cap():
    net = _init(Relu6Net(cap=False), seed=2)  # Hardtanh(0, 0.5): most activations above the cap
    with torch.no_grad():
        net.c1.bias.fill_(1.0)
    err, snn = _errors(net, T=[512], thresholds="paper")
    assert err[512] < 0.005
    lam = next(iter(snn.record.conversion.neurons.values()))["lambda"]
    assert lam == pytest.approx(0.5 / 3.75)  # λ · (2 + 1 + 0.5 + 0.25) = the cap


def test_spiking_maxpool_counts():
    """Σ_t o_t = maxpool(Σ_t x_t) exactly, in both step modes."""
    from spikingjelly.activation_based import functional

    g = torch.Generator().manual_seed(0)
    xs = (torch.rand(20, 2, 3, 8, 8, generator=g) > 0.6).float() * torch.rand(20, 2, 3, 8, 8, generator=g)
    m = SpikingMaxPool2d(2)
    single = sum(m(x) for x in xs)
    functional.reset_net(m)
    functional.set_step_mode(m, "m")
    multi = m(xs[:7]).sum(0) + m(xs[7:]).sum(0)
    want = F.max_pool2d(xs.sum(0), 2)
    assert torch.allclose(single, want, atol=1e-5) and torch.allclose(multi, want, atol=1e-5)


def test_gains_on_identity_edges_and_joins_are_recorded():
    _, snn = _errors(_init(ResidualNet(), seed=3), T=[8])
    conv = snn.record.conversion
    consumers = {g["consumer"] for g in conv.gains}
    assert any("add" in c for c in consumers)  # the identity shortcut into the residual join
    roles = {v["role"] for v in conv.layers.values()}
    assert {"neuron", "join", "output"} <= roles
    assert conv.post == [] and conv.size_multiple == 2


def test_multi_step_equals_step_by_step_on_a_residual_graph():
    _, snn = _errors(_init(ResidualNet(), seed=4), T=[8])
    x = _data(1)[0]
    a = simulate(snn, x, [5, 13], mode="multi", chunk=4)
    b = simulate(snn, x, [5, 13], mode="step")
    for t in a:
        assert torch.allclose(a[t], b[t], atol=1e-5)


def test_snn_file_roundtrip_and_no_pickle(tmp_path):
    _, snn = _errors(_init(ResidualNet(), seed=5), T=[8])
    path = save_snn(snn, tmp_path / "res.safetensors")
    assert path.read_bytes()[8:9] == b"{"  # safetensors header: JSON, not a pickle
    snn2, rec = load_snn(path)
    x = _data(1)[0]
    assert torch.equal(simulate(snn, x, 16)[16], simulate(snn2, x, 16)[16])
    assert rec["graph"]["modules"] and rec["conversion"]["gains"] == snn.record.conversion.gains


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow
            return y
        return -y


class _BatchCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return torch.cat([y, y], dim=0)


class _Divide(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return torch.relu(self.a(x)) / (1 + torch.relu(self.b(x)))


class _Mha(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.att = nn.Conv2d(1, 4, 3), nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        t = torch.relu(self.a(x)).flatten(2).transpose(1, 2)
        return self.att(t, t, t)[0]


@pytest.mark.parametrize("net,node,hint", [  # what no construction converts (ELU, GELU, products, crops,
    (_Branchy(), "gt", "data-dependent control flow"),   # constants and channels-last norms do: test_sigma_delta)
    (_BatchCat(), "cat", "dim 0"),
    (_Divide(), "truediv", "dividing by an activation"),
    (_Mha(), "att", "MultiheadAttention"),
])
def test_refusals_name_the_node_and_the_remedy(net, node, hint):
    with pytest.raises(UnsupportedGraphError, match=rf"'{node}'.*{hint}"):
        canonical_graph(net.eval(), (1, 1, 16, 16))


def test_third_party_unets_convert_and_converge():
    monai = pytest.importorskip("monai.networks.nets")
    smp = pytest.importorskip("segmentation_models_pytorch")
    nets = {
        "BasicUNet": monai.BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, act="relu", norm="batch",
                                     features=(4, 4, 8, 8, 16, 4)),
        "UNet": monai.UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
                           num_res_units=2, act="relu", norm="batch"),
        "smp": smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=2, encoder_depth=3,
                        decoder_channels=(16, 8, 8)),
    }
    data = _data(2, size=32)
    for name, net in nets.items():
        net.train()
        with torch.no_grad():  # non-trivial BatchNorm statistics
            for x in _data(3, size=32, seed=7):
                net(x)
        net.eval()
        err, snn = _errors(net, data, T=[16, 256])
        assert err[256] < err[16] and err[256] < 0.06, (name, err)
        kinds = snn.record.conversion
        if name == "BasicUNet":
            assert kinds.trace_decisions  # MONAI's pad-if-sizes-differ decided on the example shape
        if name == "smp":
            assert any(m == "SpikingMaxPool2d" for m in (v["type"] for v in snn.record.graph["modules"].values()))


def test_public_api_names_stay_functions():
    x = _data(1)[0]
    net = _init(MaxPoolNet(), seed=0)
    for _ in range(2):  # a second use must not find the submodule instead of the function
        stats = sjunet.calibrate(net, [x], progress=False)
        snn = sjunet.convert(net, stats)
        out = sjunet.simulate(snn, x, 4)
        assert callable(sjunet.simulate) and callable(sjunet.train) and callable(sjunet.evaluate)
        assert callable(sjunet.count_energy) and callable(sjunet.finetune) and 4 in out
        sjunet.count_energy(snn, None, [x], 2)
