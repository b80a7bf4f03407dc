"""Every U-Net converts (issue 26): smooth activations, gates, squeeze-excitation, attention and
transformer plumbing become Σ-Δ neurons and linear stages, and the SNN converges to the ANN as T
grows — measured on tiny random-weight graphs, end to end (calibrate → convert → simulate), with
the SNN file, multi-step mode and the flow pass on the one graph that has every piece."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import TokenBlock as Block

from sjunet.calibration import calibrate
from sjunet.conversion.recipe import convert, load_snn, save_snn
from sjunet.graph import canonical_graph, kind_of
from sjunet.neurons.sigma_delta import SigmaDeltaNode, SigmaDeltaProduct
from sjunet.snn.simulation import record_flow, simulate
from sjunet.training.flow import FlowPass


def _data(n=3, b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, 1, size, size, generator=g) for _ in range(n)]


def _convert(net, data=None, **kw):
    data = data or _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(net, calibrate(net, data, progress=False), **kw)


def _errors(net, snn, T=(16, 256), data=None):
    x = (data or _data())[0]
    ref = net(x).detach()
    out = simulate(snn, x, list(T), chunk=64)
    scale = float(ref.abs().mean())
    return {t: float((o - ref).abs().mean()) / scale for t, o in out.items()}


class Smooth(nn.Module):
    """Every activation spelling of the table inside a small conv net."""

    def __init__(self, act):
        super().__init__()
        self.c1, self.c2, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 2, 1)
        self.act = act

    def forward(self, x):
        return self.head(self.act(self.c2(torch.relu(self.c1(x)))))


ACTS = {"SiLU": nn.SiLU(), "GELU": nn.GELU(), "GELU-tanh": lambda x: F.gelu(x, approximate="tanh"),
        "ELU": nn.ELU(0.7), "CELU": nn.CELU(), "SELU": nn.SELU(), "sigmoid": torch.sigmoid, "tanh": lambda x: x.tanh(),
        "hardswish": F.hardswish, "hardsigmoid": nn.Hardsigmoid(), "Mish": nn.Mish(), "softplus": nn.Softplus(2.0),
        "swish": lambda x: x * torch.sigmoid(x), "softmax": lambda x: torch.softmax(x, dim=1)}


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("name", sorted(ACTS))
def test_every_activation_converts_and_converges(name):
    act = ACTS[name] if isinstance(ACTS[name], nn.Module) else _Fn(ACTS[name])
    torch.manual_seed(0)
    net = Smooth(act).eval()
    data = _data(2, size=8)
    snn = _convert(net, data)
    kinds = {type(m).__name__ for m in snn.modules()}
    assert "SigmaDeltaNode" in kinds
    err = _errors(net, snn, T=(16, 128), data=data)
    assert err[128] <= err[16] / 2 and err[128] < 0.03, err


class Gates(nn.Module):
    """An attention gate (x · sigmoid(ψ)), squeeze-excitation (x · sigmoid(fc(mean x))), a crop by
    slicing, a constant added, a channel repeat, a difference of two activations and a scaled one."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.psi, self.se = nn.Conv2d(4, 1, 1), nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = torch.relu(self.c1(x.repeat(1, 1, 1, 1)))
        b = F.silu(self.c2(a))
        gated = a * torch.sigmoid(self.psi(b))  # MONAI AttentionUnet
        se = b * torch.sigmoid(self.se(b.mean((2, 3), keepdim=True)))  # EfficientNet
        crop = F.pad(gated, (1, 1, 1, 1))[:, :, 1:-1, 1:-1]
        return self.head(torch.cat([crop + 0.1, 0.5 * (se - a)], 1))


def test_gates_and_squeeze_excitation_convert_and_converge():
    torch.manual_seed(1)
    net = Gates().eval()
    snn = _convert(net)
    products = [m for m in snn.modules() if isinstance(m, SigmaDeltaProduct)]
    assert len(products) == 2 and all(p.op == "mul" for p in products)
    err = _errors(net, snn, T=(16, 128))
    assert err[128] <= err[16] / 2 and err[128] < 0.03, err


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(2)
    net = Block().eval()
    return net, _convert(net)


def test_a_transformer_block_converts_and_converges(block):
    """Attention (two einsum/matmul products), softmax, LayerNorm and GELU neurons, Linear layers,
    reshapes and permutations with the batch moved to dim 1, a position embedding as a bias current."""
    net, snn = block
    names = [type(m).__name__ for m in snn.modules()]
    assert names.count("SigmaDeltaProduct") == 2 and {"Linear", "Reshape", "Permute", "Index", "AddConstant"} <= set(
        names)
    functions = sorted(m.function for m in snn.modules() if isinstance(m, SigmaDeltaNode))
    assert functions == ["gelu", "layer_norm", "layer_norm", "softmax"]
    err = _errors(net, snn, T=(16, 256))
    assert err[256] <= err[16] / 2 and err[256] < 0.03, err


def test_transformer_snn_modes_file_and_batch(block, tmp_path):
    """Multi-step mode (the batch inside a permuted [T, 3, B, …] tensor) gives the step-by-step
    output; the SNN file rebuilds it from data; a batch of 3 runs a conversion calibrated on 2."""
    net, snn = block
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    a = simulate(snn, x, [3, 8], mode="multi", chunk=4)
    b = simulate(snn, x, [3, 8], mode="step")
    assert all(torch.allclose(a[t], b[t], atol=1e-5) for t in a)
    snn2, rec = load_snn(save_snn(snn, tmp_path / "block.safetensors"))
    assert torch.equal(simulate(snn2, x, 8)[8], b[8])
    assert rec["conversion"]["sigma_delta"]


def test_flow_pass_through_sigma_delta_neurons(block):
    """The differentiable pass reproduces every neuron's recorded accumulated inputs (so the flow
    gradient is taken where the simulation was), and its gradient reaches the first layer."""
    _, snn = block
    x = _data(1)[0]
    rec = record_flow(snn, x, 6)
    p = FlowPass(snn, rec, keep_currents=True)
    out = p.run(x)
    for name, cur in p.currents.items():
        m = snn.get_submodule(name)
        if isinstance(m, SigmaDeltaNode):
            assert torch.allclose(cur.detach(), rec.gates[name][0], atol=1e-3 * (1 + float(cur.detach().abs().max())))
    out.sum().backward()
    first = next(m for m in snn.modules() if hasattr(m, "layer"))
    assert first.layer.weight.grad is not None and float(first.layer.weight.grad.abs().sum()) > 0


def test_canonical_graph_kinds():
    """The canonical graph names each piece: a Σ-Δ activation, a product, plumbing, a constant."""
    torch.manual_seed(3)
    tr = canonical_graph(Block().eval(), (1, 1, 16, 16))
    kinds = {kind_of(tr.gm, n) for n in tr.gm.graph.nodes}
    assert {"sigma", "product", "plumbing", "constant", "scale", "synaptic"} <= kinds
    assert tr.size_rule and tr.size_rule.get("shape") == [16, 16]  # tokens: the example's size only
