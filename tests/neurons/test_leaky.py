"""LeakyReLU and PReLU (spec §11, issue 19): one signed multi-threshold neuron, exact in the limit.

Results are derived by hand where they can be (the step function, a two-layer network's weights
and output, the flow gradient) and measured against the ANN on small random graphs otherwise."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import nn

from sjunet.calibration import calibrate
from sjunet.conversion.recipe import convert, load_snn, save_snn
from sjunet.evaluation.energy import spike_counts
from sjunet.graph import UnsupportedGraphError, canonical_graph, kind_of, module_of, relu_slope
from sjunet.neurons import (NEURON_TYPES, MultiThresholdNode, SignedMultiThresholdNode, mt_factory, set_recording,
                            signed_mt_step)
from sjunet.snn.simulation import simulate
from sjunet.training.distill import Teacher
from sjunet.training.flow import flow_forward

LADDERS = [(2.0, 1.0, 0.5, 0.25), (1.0,), (1.5, 1.0, 0.3)]


# ------------------------------------------------------------------------------ the neuron

def _reference(xs, thresholds, alpha, v0=0.0):
    """The docstring's equations of :func:`signed_mt_step`, literally, on Python floats."""
    lo = thresholds[-1]

    def f(m):
        return m if m > 0 else alpha * m

    v, charge, outs, spikes = v0, 0.0, [], 0
    for x in xs:
        v += x
        m = 0.0
        for th in thresholds:
            if v >= th:
                v -= th
                m += th
                spikes += 1
        for th in thresholds:
            if lo - v > th:
                v += th
                m -= th
                spikes += 1
        outs.append(f(charge + m) - f(charge))
        charge += m
    return outs, v, charge, spikes


def test_step_by_hand():
    """Ladder (2, 1, 0.5, 0.25), α = 0.1, V_0 = 0; inputs exact in binary.
    t1: V = 0.8125 -> k = floor(3.25) = 3: m = 0.75, V = 0.0625, M = 0.75, o = 0.75
    t2: V = -0.9375 -> k = -4: m = -1, V = 0.0625, M = -0.25, o = f(-0.25) - f(0.75) = -0.025 - 0.75
    t3: V = -0.25 -> k = -1: m = -0.25, V = 0 (stays: strict >), M = -0.5, o = -0.05 + 0.025 = -0.025
    t4: V = 0.625 -> k = 2: m = 0.5, V = 0.125, M = 0, o = 0 + 0.05 = 0.05
    t5: V = 0.125 + 0 -> nothing."""
    n = SignedMultiThresholdNode((2.0, 1.0, 0.5, 0.25), 0.1)
    set_recording(n)
    xs = [0.8125, -1.0, -0.3125, 0.625, 0.0]
    outs = [float(n(torch.tensor([[x]]))) for x in xs]
    assert outs == pytest.approx([0.75, -0.775, -0.025, 0.05, 0.0], abs=1e-6)
    assert float(n.v) == 0.125 and float(n.charge) == 0.0
    assert float(n.output_flow()) == pytest.approx(sum(outs), abs=1e-6)  # = f(M) = 0
    assert float(n.input_current()) == pytest.approx(sum(xs))
    assert float(n.spike_count) == 2 + 1 + 1 + 1  # |k| = 3 (0.5 + 0.25), 4 (1), 1 (0.25), 2 (0.5)
    assert float(n.event_count) == 4
    functional.reset_net(n)
    assert n.v == 0.0 and n.charge == 0.0


@pytest.mark.parametrize("ladder", LADDERS)
@pytest.mark.parametrize("alpha", [0.01, 0.3, -0.2, 1.7])
def test_step_matches_reference(ladder, alpha):
    g = torch.Generator().manual_seed(1)
    xs = (torch.randn(60, generator=g) * 1.5).tolist()
    ref, v, charge, spikes = _reference(xs, ladder, alpha, v0=0.1)
    for mode in ("s", "m"):
        n = SignedMultiThresholdNode(ladder, alpha, v_init=0.1, step_mode=mode)
        set_recording(n)
        x = torch.tensor(xs, dtype=torch.float64).view(-1, 1, 1)
        out = n(x).view(-1) if mode == "m" else torch.stack([n(xi) for xi in x]).view(-1)
        assert out.tolist() == pytest.approx(ref, abs=1e-9)
        assert float(n.v) == pytest.approx(v, abs=1e-9) and float(n.charge) == pytest.approx(charge, abs=1e-9)
        assert float(n.spike_count) == spikes
        assert float(n.output_flow()) == pytest.approx(sum(ref), abs=1e-9)
        assert float(n.input_current()) == pytest.approx(sum(xs), abs=1e-9)


@pytest.mark.parametrize("ladder", LADDERS)
def test_limit_constant_and_fluctuating_inputs(ladder):
    """Σo = f_α(M_T), M_T = ΣI + V_0 − V_T, with V_T ∈ [0, θ_N) for a halving ladder whose range
    |I| < Σθ the inputs keep to: the rate error is at most θ_N/(2T) with V_0 = θ_N/2 (symmetric
    rounding), for constant inputs and for inputs fluctuating around zero alike (other ladders:
    the residue is below θ_1)."""
    lo = ladder[-1]
    alpha = torch.tensor([0.01, 0.1, 0.3, 0.25])
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor([[0.7, -0.45, -0.8, 0.013], [-0.013, 0.31, 0.0, -0.6]], dtype=torch.float64)
    for noise in (0.0, 0.6):
        for T in (8, 64, 512):
            n = SignedMultiThresholdNode(ladder, alpha, v_init=lo / 2)
            xs = mean * sum(ladder) / 3.75 + noise * torch.randn(T, *mean.shape, generator=g, dtype=torch.float64)
            xs = xs.clamp(-0.95 * sum(ladder), 0.95 * sum(ladder))
            total = sum(n(x) for x in xs)
            avg = xs.mean(0)
            target = torch.where(avg > 0, avg, avg * alpha)
            bound = (lo / 2 if ladder != (1.5, 1.0, 0.3) else ladder[0]) / T
            assert float((total / T - target).abs().max()) <= bound + 1e-9
            if noise == 0.0 and len(ladder) > 1:  # one side fires for a constant input
                assert float(n.output_flow().sub(total).abs().max()) < 1e-9


def test_per_channel_slope_broadcast_and_state():
    n = SignedMultiThresholdNode(negative_slope=torch.tensor([0.1, 0.2, 0.3]))
    assert n.channels == 3 and "negative_slope" in n.state_dict()
    y = n(torch.full((2, 3, 4, 5), -1.0))  # V = -1 -> k = -4: m = -1, output α·m per channel
    assert torch.allclose(y[:, :, 0, 0], torch.tensor([-0.1, -0.2, -0.3]).expand(2, 3))
    one = SignedMultiThresholdNode(negative_slope=torch.tensor([0.25]))  # PReLU(1): a number
    assert one.channels == 0 and one.negative_slope == 0.25 and "negative_slope" not in one.state_dict()
    assert NEURON_TYPES["SignedMultiThresholdNode"] is SignedMultiThresholdNode
    assert SignedMultiThresholdNode(**n.spec()).spec() == n.spec()
    with pytest.raises(ValueError):
        SignedMultiThresholdNode(negative_slope=float("nan"))


def test_factory_builds_signed_only_for_leaky_nodes():
    f = mt_factory((2.0, 1.0, 0.5, 0.25), 0.125)
    assert type(f("relu")) is MultiThresholdNode
    s = f("leaky", negative_slope=0.1)
    assert isinstance(s, SignedMultiThresholdNode) and s.thresholds == (2.0, 1.0, 0.5, 0.25) and s.v_init == 0.125


# --------------------------------------------------------------------------- small networks

class _Net(nn.Module):
    """conv-act-pool-conv-act-up-cat-conv-act-head; ``cat=False`` joins the up path with itself
    (equal units on both parts, so layer-wise normalization is exact too)."""

    def __init__(self, act, cat: bool = True, C: int = 6, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.cat = cat
        self.c1, self.a1 = nn.Conv2d(1, C, 3, padding=1), act(C)
        self.pool = nn.AvgPool2d(2)
        self.c2, self.a2 = nn.Conv2d(C, C, 3, padding=1), act(C)
        self.up = nn.ConvTranspose2d(C, C, 2, stride=2)
        self.c3, self.a3 = nn.Conv2d(2 * C, C, 3, padding=1), act(C)
        self.head = nn.Conv2d(C, 2, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.data = torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5
                m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
            elif isinstance(m, nn.PReLU):
                m.weight.data = torch.rand(m.weight.shape, generator=g) * 0.4

    def forward(self, x):
        a = self.a1(self.c1(x))
        u = self.up(self.a2(self.c2(self.pool(a))))
        return self.head(self.a3(self.c3(torch.cat([a if self.cat else u, u], dim=1))))


ACTS = {"leaky0.01": lambda C: nn.LeakyReLU(0.01), "leaky0.1": lambda C: nn.LeakyReLU(0.1, inplace=True),
        "leaky0.3": lambda C: nn.LeakyReLU(0.3), "prelu_C": lambda C: nn.PReLU(C), "prelu_1": lambda C: nn.PReLU(1)}


def _data(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(2, 1, 16, 16, generator=g) * 2 - 0.5 for _ in range(n)]


@pytest.fixture(scope="module")
def calibrated():
    out = {}
    for act in ACTS:
        for cat in (True, False):
            net = _Net(ACTS[act], cat).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[act, cat] = net, calibrate(net, _data(), p=100, progress=False)
    return out


def _rel_errors(snn, net, x, steps=(8, 64, 512)):
    ref = net(x).detach()
    out = simulate(snn, x, list(steps), chunk=64)
    return {t: float((o - ref).norm() / ref.norm()) for t, o in out.items()}


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("norm,cat,neuron", [("connection", True, "mt"), ("layer", False, "if")])
def test_random_graphs_converge_to_the_ann(calibrated, act, norm, cat, neuron):
    """Relative L2 error of the SNN's output against the ANN's at T = 8, 64, 512 (calibrated at the
    maximum, so no neuron saturates and the limit is exact): shrinks, and is < 2 % at T = 512."""
    net, stats = calibrated[act, cat]
    snn = convert(net, stats, norm=norm, neuron=neuron)
    assert sum(isinstance(m, SignedMultiThresholdNode) for m in snn.modules()) == 3
    e = _rel_errors(snn, net, _data(seed=7, n=1)[0][:1])
    print(f"{act} {norm} {neuron}: " + ", ".join(f"T={t}: {v:.4f}" for t, v in e.items()))
    assert e[8] > e[64] > e[512] and e[512] < 0.02


def test_signed_layer_is_calibrated_on_its_input(calibrated):
    net, stats = calibrated["leaky0.01", True]
    x = torch.cat(_data())
    pre = net.c1(x)
    assert stats.scale("a1") == pytest.approx(float(pre.detach().abs().max()), rel=1e-3)  # p = 100: max |pre-activation|


def test_normalization_by_hand():
    """x -> conv1x1(w=4, b=-2) -> LeakyReLU(0.1) -> conv1x1(w=3, b=0.5). Inputs {0, 1/4, 3/4, 1}
    give pre-activations {-2, -1, 1, 2}, so λ = 2 (p = 100 of |input|). Normalization as for a ReLU:
    conv1 -> w = 4/2, b = -2/2; head -> w = 3·2, b = 0.5 (no extra factor for α: it lives in the
    neuron's amplitude). Rates -> LeakyReLU_0.1({-1, -1/2, 1/2, 1}) = {-0.1, -0.05, 0.5, 1};
    output -> 6·rate + 0.5 = {-0.1, 0.2, 3.5, 6.5} = 3·LeakyReLU(pre) + 0.5."""
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.LeakyReLU(0.1), nn.Conv2d(1, 1, 1))
    with torch.no_grad():
        net[0].weight.fill_(4.0), net[0].bias.fill_(-2.0), net[2].weight.fill_(3.0), net[2].bias.fill_(0.5)
    x = torch.tensor([0.0, 0.25, 0.75, 1.0]).view(1, 1, 2, 2)
    snn = convert(net, calibrate(net, [x], p=100, progress=False), neuron="mt")
    conv1, head = snn.get_submodule("0").layer, snn.get_submodule("2")
    assert (float(conv1.weight.detach()), float(conv1.bias.detach())) == (2.0, -1.0)
    assert (float(head.weight.detach()), float(head.bias.detach())) == (6.0, 0.5)
    out = simulate(snn, x, [1024])[1024].view(-1)
    assert out.tolist() == pytest.approx([-0.1, 0.2, 3.5, 6.5], abs=4 * 0.25 * 6 / 1024)


# ------------------------------------------------------------------------- the pipeline

def test_spellings_canonicalize_to_one_relu_kind():
    class Spelled(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 3, 3, padding=1)
            self.w = nn.Parameter(torch.tensor([0.1, 0.2, 0.3]))
            self.rrelu = nn.RReLU(0.1, 0.3)

        def forward(self, x):
            y = F.leaky_relu(self.c(x), 0.2)
            y = F.prelu(self.c(y), self.w)
            return self.c(self.rrelu(self.c(y)))

    gm = canonical_graph(Spelled(), (1, 1, 8, 8)).gm
    slopes = [relu_slope(module_of(gm, n)) for n in gm.graph.nodes if kind_of(gm, n) == "relu"]
    assert slopes[0] == pytest.approx(0.2) and slopes[2] == pytest.approx(0.2)
    assert slopes[1].tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_energy_counts_negative_spikes():
    """A layer whose input is negative everywhere spikes only below zero: a ReLU neuron layer would
    count nothing there, the signed one counts every negative spike (hand count: input −1/2 per
    step, V_0 = 1/8: k = −2 at t=1, then −2 every step: one spike (θ = 0.5) per step)."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.LeakyReLU(0.1), nn.Conv2d(2, 1, 1))
    with torch.no_grad():
        net[0].weight.zero_(), net[0].bias.copy_(torch.tensor([-0.5, -1.0]))
    x = torch.rand(1, 1, 4, 4)
    snn = convert(net, calibrate(net, [x], p=100, progress=False), neuron="mt")  # λ = 1
    counts = spike_counts(snn, x, [8])[8]["1"]
    spikes, events = counts
    assert float(spikes[0, 0].mean()) == 8 and float(events[0, 0].mean()) == 8  # −1/2: one 0.5-spike a step
    assert float(spikes[0, 1].mean()) == 8  # −1: one 1-spike a step


def test_flow_gradient_is_the_leaky_derivative():
    """The flow pass's gradient through a signed layer is 1 where I_in > 0 and α elsewhere: for the
    hand network above, d ΣÎ_in^L / d b̃_1 = T · w̃_head · (2·1 + 2·α)."""
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.LeakyReLU(0.1), nn.Conv2d(1, 1, 1))
    with torch.no_grad():
        net[0].weight.fill_(4.0), net[0].bias.fill_(-2.0), net[2].weight.fill_(3.0), net[2].bias.fill_(0.5)
    x = torch.tensor([0.0, 0.25, 0.75, 1.0]).view(1, 1, 2, 2)
    snn = convert(net, calibrate(net, [x], p=100, progress=False), neuron="mt")
    T = 16
    flow_forward(snn, x, T).sum().backward()
    assert float(snn.get_submodule("0").layer.bias.grad) == pytest.approx(T * 6.0 * (2 + 2 * 0.1))
    functional.reset_net(snn)
    out, _ = Teacher(snn)(x)  # the ANN rebuilt from the SNN: leaky activations
    assert torch.allclose(out, net(x), atol=1e-5)


def test_save_load_round_trip(calibrated, tmp_path):
    net, stats = calibrated["prelu_C", True]
    snn = convert(net, stats)
    x = _data(seed=3, n=1)[0]
    before = simulate(snn, x, [16])[16]
    path = save_snn(snn, tmp_path / "prelu.safetensors")
    back, rec = load_snn(path)
    signed = [m for m in back.modules() if isinstance(m, SignedMultiThresholdNode)]
    assert len(signed) == 3 and all(m.channels == 6 for m in signed)
    assert torch.equal(signed[0].negative_slope, net.a1.weight.detach())
    assert torch.equal(simulate(back, x, [16])[16], before)
    slopes = [v["negative_slope"] for v in rec["conversion"]["neurons"].values()]
    assert slopes[0] == pytest.approx(net.a1.weight.tolist())


def test_peer_neurons_refuse_leaky_nodes(calibrated):
    net, stats = calibrated["leaky0.1", True]
    for neuron in ("ml", "rs"):
        with pytest.raises(UnsupportedGraphError, match="signed neuron"):
            convert(net, stats, neuron=neuron)
    with pytest.raises(UnsupportedGraphError, match="negative_slope"):
        convert(net, stats, neuron_factory=lambda name: MultiThresholdNode())


@pytest.mark.parametrize("which", ["BasicUNet-leaky", "UNet-prelu"])
def test_monai_unets_convert(which):
    monai = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    if which == "BasicUNet-leaky":
        net = monai.BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4),
                              act=("LeakyReLU", {"negative_slope": 0.1}), norm="batch")
    else:
        net = monai.UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
                         act="PRELU", norm="batch")
    net.eval()
    data = [d[:1] for d in _data(n=2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = calibrate(net, data, p=100, nbins=1024, progress=False)
    snn = convert(net, stats)
    assert sum(isinstance(m, SignedMultiThresholdNode) for m in snn.modules()) >= 4
    e = _rel_errors(snn, net, data[0], (4, 32))
    print(which, e)
    assert math.isfinite(e[32]) and e[32] < e[4] and e[32] < 0.05
