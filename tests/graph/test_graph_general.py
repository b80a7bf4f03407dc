"""Issue 19: converting the U-Nets people train with their frameworks' defaults (spec §11).

Every blocker of a model at once (node, source line, cause, remedy; root causes only), shape
arithmetic specialised on the calibration shape with its size rule, adaptive/global average
pooling as a linear stage, functional convolutions / batch norms with constant tensors folded,
and the zoo coverage probe. Small random-weight nets, no training."""
import importlib.util
import warnings

import pytest
import torch
from helpers import init_random
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import nn

from sjunet.calibration import calibrate
from sjunet.conversion.recipe import convert
from sjunet.graph import UnsupportedGraphError, canonical_graph, kind_of
from sjunet.layers.stages import AdaptiveAvgPool
from sjunet.models.zoo_nets import FunctionalConvNet, PadCatUNet, PyramidPoolNet
from sjunet.snn.simulation import simulate


def _init(net: nn.Module, seed: int = 0) -> nn.Module:
    return init_random(net, seed, bn_bias=0.05)


def _data(n=2, b=2, c=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, c, size, size, generator=g) for _ in range(n)]


def _convert(net, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(net, calibrate(net, data, progress=False), **kw)


def _errors(net, data, T=(16, 256), **kw):
    snn = _convert(net, data, **kw)
    x = data[0]
    ref = net(x).detach()
    out = simulate(snn, x, list(T), chunk=64)
    scale = float(ref.abs().mean())
    return {t: float((o - ref).abs().mean()) / scale for t, o in out.items()}, snn


# ------------------------------------------------------------------ 1. every blocker at once


class _Many(nn.Module):
    """Four independent blockers (what no construction converts): control flow on values, a division
    by an activation, a concatenation along the batch, an op outside the Σ-Δ table."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        z = torch.log1p(torch.relu(self.b(x)))
        if z.sum() > 0:  # data-dependent
            z = z + y
        w = y / (1 + torch.relu(z))
        return self.c(torch.cat([w, w], 0))


def test_refusal_lists_every_blocker_with_node_source_line_and_remedy():
    with pytest.raises(UnsupportedGraphError) as e:
        canonical_graph(_Many().eval(), (1, 1, 16, 16))
    msg = str(e.value)
    first, *lines = msg.splitlines()
    assert first.startswith("cannot convert _Many: 4 blockers: ")
    assert len(lines) == 4 and all(ln.startswith("  - node '") for ln in lines)
    joined = "\n".join(lines)
    for node, hint in [("log1p", "Σ-Δ table"), ("gt", "data-dependent control flow"),
                       ("truediv", "dividing by an activation"), ("cat", "dim 0")]:
        assert any(f"'{node}'" in ln and hint in ln for ln in lines), (node, msg)
    # each names the model's source line
    assert joined.count("test_graph_general.py") == 4, msg
    assert "torch.log1p(torch.relu(self.b(x)))" in joined and "y / (1 + torch.relu(z))" in joined


USER_NET = """import torch
from torch import nn


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        return torch.log1p(self.conv(x))
"""


def test_source_lines_are_found_by_identity_not_by_folder_name(tmp_path):
    """A model whose file lies in folders named ``sjunet`` and ``torch`` (a clone of this repository
    into ``sjunet/``) still gets its own source line: frames are skipped only when their file lies
    inside the installed sjunet, torch or SpikingJelly packages (resolved paths), never by name."""
    folder = tmp_path / "sjunet" / "torch"
    folder.mkdir(parents=True)
    path = folder / "user_net.py"
    path.write_text(USER_NET)
    spec = importlib.util.spec_from_file_location("user_net_in_sjunet_torch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(UnsupportedGraphError) as e:
        canonical_graph(module.UserNet().eval(), (1, 1, 16, 16))
    msg = str(e.value)
    line = USER_NET.splitlines().index("        return torch.log1p(self.conv(x))") + 1
    assert f"{path}, line {line}, in forward: return torch.log1p(self.conv(x))" in msg, msg


class _ShapeView(nn.Module):
    """Position attention (MAnet-like) — shape arithmetic, views, a product — ending in a division by
    an activation: the views and the product convert, the division is the one root cause."""

    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 2, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q = self.q(x).view(b, -1, h * w).permute(0, 2, 1)
        k = self.k(x).view(b, -1, h * w)
        att = torch.bmm(q, k)
        a = att.view(b, 1, h * w, h * w)
        return a.relu() / (1 + a.relu())


def test_root_causes_only_no_shape_noise():
    with pytest.raises(UnsupportedGraphError) as e:
        canonical_graph(_ShapeView().eval(), (1, 1, 8, 8))
    msg = str(e.value)
    assert "1 blocker: division by an activation" in msg.splitlines()[0], msg
    assert "getattr" not in msg and "getitem" not in msg and "'view" not in msg, msg




def test_smp_encoders_with_squeeze_excitation_and_attention_convert():
    """EfficientNet (SiLU, squeeze-excitation) and MAnet (attention) encoders: Σ-Δ neurons and plumbing."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    eff = smp.Unet("efficientnet-b0", encoder_weights=None, in_channels=1, classes=2, encoder_depth=3,
                   decoder_channels=(16, 8, 8)).eval()
    kinds = [kind_of(tr.gm, n) for tr in [canonical_graph(eff, (1, 1, 64, 64))] for n in tr.gm.graph.nodes]
    assert kinds.count("product") >= 1 and kinds.count("sigma") >= 2
    manet = smp.MAnet("resnet18", encoder_weights=None, in_channels=1, classes=2, encoder_depth=3,
                      decoder_channels=(16, 8, 8)).eval()
    tr = canonical_graph(manet, (1, 1, 64, 64))
    assert {"product", "plumbing", "sigma"} <= {kind_of(tr.gm, n) for n in tr.gm.graph.nodes}


# -------------------------------------------- 2. shape arithmetic specialised on the example


@pytest.mark.parametrize("bilinear", [True, False])
def test_padcat_unet_converts_and_approaches_the_ann(bilinear):
    net = _init(PadCatUNet(1, 2, bilinear=bilinear, width=4, depth=2), seed=1)
    tr = canonical_graph(net, (1, 1, 16, 16))
    assert [s["value"] for s in tr.specialised] == [[0, 0, 0, 0]] * 2
    assert all(s["input_shape"] == [1, 1, 16, 16] and s["op"] == "pad" for s in tr.specialised)
    assert tr.size_rule["multiple"] == 4 and tr.size_rule["checked"][0] == [16, 16]
    data = _data(2, size=16)
    for neuron in ("mt", "if") if bilinear else ("mt",):
        err, snn = _errors(net, data, neuron=neuron)
        assert err[256] < err[16] and err[256] < 0.05, (neuron, err)
    conv = snn.record.conversion
    assert conv.size_rule["multiple"] == 4 and len(conv.specialised) == 2
    assert 8 in simulate(snn, torch.rand(1, 1, 24, 20), 8)  # another multiple of 4: the rule holds
    with pytest.raises(ValueError, match=r"^input 18x16 does not fit .*multiples of 4[^\n]*$"):
        simulate(snn, torch.rand(1, 1, 18, 16), 4)


def test_constants_that_change_with_the_size_hold_only_for_the_example():
    net = _init(PyramidPoolNet(width=4))
    tr = canonical_graph(net, (1, 1, 16, 16))
    assert [(s["arg"], s["value"]) for s in tr.specialised] == [("output_size", [4, 4])]
    assert tr.size_rule["shape"] == [16, 16] and not tr.size_rule.get("multiple")
    snn = _convert(net, _data(1, size=16))
    with pytest.raises(ValueError, match="hold only for the 16x16 input"):
        simulate(snn, torch.rand(1, 1, 32, 32), 2)


# ----------------------------------- 3. adaptive average pooling; functional conv / batch norm


def test_adaptive_pooling_is_a_linear_stage_exact_in_the_limit():
    net = _init(PyramidPoolNet(width=4), seed=2)
    tr = canonical_graph(net, (1, 1, 16, 16))
    pools = [n for n in tr.gm.graph.nodes if n.op == "call_module"
             and isinstance(tr.gm.get_submodule(n.target), AdaptiveAvgPool)]
    assert len(pools) == 4 and all(kind_of(tr.gm, n) == "pool" for n in pools)  # module, mean, F, F(from shapes)
    x = _data(1, size=16)[0]
    assert torch.allclose(tr.gm(x), net(x), atol=1e-6)
    err, snn = _errors(net, _data(2, size=16))
    assert err[256] < err[16] and err[256] < 0.05, err
    types = {v["type"] for v in snn.record.graph["modules"].values()}
    assert "AdaptiveAvgPool" in types


def test_adaptive_pool_stage_steps_flow_and_fanout():
    from sjunet.evaluation.fanout import stage_reach

    m = AdaptiveAvgPool((2, 1))
    x = torch.rand(3, 2, 4, 6, 6)
    functional.set_step_mode(m, "m")
    multi = m(x)
    functional.set_step_mode(m, "s")
    assert torch.allclose(multi, torch.stack([m(xt) for xt in x]))
    assert torch.allclose(m.flow(x.sum(0)), multi.sum(0), atol=1e-6)
    assert m.spec() == {"output_size": [2, 1]}
    rh, rw = stage_reach(m, (6, 6), (2, 1))
    assert rh.sum(0).tolist() == [3, 3] and rw.all()  # each output row averages its 3 rows, all columns


def test_functional_conv_and_batch_norm_with_constant_tensors_fold():
    net = _init(FunctionalConvNet(), seed=3)
    tr = canonical_graph(net, (1, 1, 16, 16))
    mods = [type(tr.gm.get_submodule(n.target)).__name__ for n in tr.gm.graph.nodes if n.op == "call_module"]
    assert mods.count("Conv2d") == 3 and "BatchNorm2d" not in mods  # F.conv2d → Conv2d, F.batch_norm folded
    assert not any(n.op == "get_attr" for n in tr.gm.graph.nodes)
    assert [s["value"] for s in tr.specialised] == [[0, 1, 0, 1], [1, 1, 1, 1]]  # "same" pads from shapes
    x = _data(1, size=16)[0]
    assert torch.allclose(tr.gm(x), net(x), atol=1e-5)
    err, _ = _errors(net, _data(2, size=16))
    assert err[256] < err[16] and err[256] < 0.05, err


def test_global_mean_feeding_an_interpolation_by_reference():
    class Psp(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            f = F.relu(self.a(x))
            g = F.relu(self.b(F.adaptive_avg_pool2d(f, 1)))
            g = F.interpolate(g, size=(f.size(2), f.size(3)), mode="bilinear", align_corners=False)
            return self.head(torch.cat([f, g], 1))

    tr = canonical_graph(_init(Psp()), (1, 1, 8, 8))
    assert tr.specialised == [] and tr.size_rule is None  # the reference mechanism needs no constants
    err, _ = _errors(_init(Psp()), _data(2, size=8))
    assert err[256] < 0.05, err


# --------------------------------------------------------------------- 4. the coverage probe


def test_zoo_coverage_probe_on_three_configs():
    pytest.importorskip("monai.networks.nets")
    from benchmarks.zoo_coverage import CONFIGS, coverage, table

    assert len(CONFIGS) >= 25 and len({c.name for c in CONFIGS}) == len(CONFIGS)
    rows = coverage(["milesial-UNet-bilinear", "monai-AttentionUnet", "sjunet-UNet"])
    by = {r["name"]: r for r in rows}
    assert all(r["converted"] for r in rows) and "model" not in by["sjunet-UNet"]
    text = table(rows)
    assert "converted 3 / 3 (refused: 0)" in text and "| monai-AttentionUnet |" in text


class _StackSumNet(nn.Module):
    """smp FPN's merge: ``torch.stack([...]).sum(dim=0)`` of three branches, then a ReLU head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.branches = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        merged = torch.stack([torch.relu(b(x)) for b in self.branches]).sum(dim=0)
        return self.head(torch.relu(merged))


def test_stack_sum_merge_becomes_joins_exact_in_the_limit():
    net = _init(_StackSumNet(), seed=4)
    tr = canonical_graph(net, (1, 1, 16, 16))
    assert sum(kind_of(tr.gm, n) == "add" for n in tr.gm.graph.nodes) == 2
    assert not any(n.op == "call_function" and n.target is torch.stack for n in tr.gm.graph.nodes)
    x = _data(1, size=16)[0]
    assert torch.allclose(tr.gm(x), net(x), atol=1e-5)
    err, _ = _errors(net, _data(2, size=16))
    assert err[256] < err[16] and err[256] < 0.05, err
