"""Fuzz layer of the SNN file, continued (:mod:`test_fuzz_snn` builds the valid files and the helpers):
record fields that amplify a run (issue 27) and the record vocabulary of Σ-Δ neurons and plumbing
stages (issue 26). Every variant is refused in one line, or loads where the mutation was harmless."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fuzzing import refused_cleanly
from hostile import insert_module, node
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_snn import HOSTILE, FUZZ, Valid, done, module_args, refused, refused_or_loaded, saved, valid, write

import sjunet
from sjunet.io import ArtifactError
from sjunet.models import UNet
from sjunet.snn import file as snnfile

__all__ = ["valid"]  # the module-scoped fixture of test_fuzz_snn, shared


# ------------------------------------------------------------- 4. amplifying fields (issue 27)

@pytest.fixture(scope="module")
def valid3(tmp_path_factory) -> Valid:
    """A 3-D SNN (a depth-2 U-Net of volumes: a 4-fold reduction per axis)."""
    torch.manual_seed(0)
    net = UNet(in_channels=1, out_channels=2, base_width=4, depth=2, spatial_dims=3).eval()
    stats = sjunet.calibrate(net, [torch.rand(2, 1, 8, 16, 16)], progress=False)
    return saved(sjunet.convert(net, stats), tmp_path_factory, "snn3")


def load_and_run(path: Path) -> None:
    """What every verb does with an SNN file: load it, then simulate a step on a small input of its
    calibration size (the shape and memory checks run before anything is allocated)."""
    from sjunet.conversion.recipe import load_snn
    from sjunet.snn import simulate

    net, rec = load_snn(path)
    shape = rec["conversion"]["example_shape"]
    simulate(net, torch.zeros(1, *shape[1:]), 1)


BIG = st.one_of(st.integers(2, 64), st.integers(65, 1 << 20), st.sampled_from([128, 256, 512, 4096, 16384]))
AMPLIFYING = ["size_multiples", "size_multiple", "size_rule", "resample-scale", "resample-size", "pad", "adaptive",
              "conv-padding", "conv-dilation", "conv-stride", "transpose-stride", "pool", "v_init", "cat-dim"]


@FUZZ
@given(data=st.data(), family=st.sampled_from(AMPLIFYING), volume=st.booleans())
def test_fuzz_amplifying_record_fields(valid, valid3, data, family, volume):
    """A record field that asks for more than the network's own shapes allow — a size rule larger
    than its reduction, a resample, a pad, an adaptive pool that grows a tensor past the input, a
    convolution padding beyond its kernel, a neuron number that overflows, a join along another
    dimension — with the hash recomputed: refused in one line naming the file, at load or before the
    run, within bounded memory and time; or harmless (then it runs, bounded all the same)."""
    from sjunet.snn.footprint import BudgetError

    v = valid3 if volume else valid
    nd = 3 if volume else 2
    rec = v.rec()
    conv = rec["conversion"]
    big = data.draw(BIG, label="size")
    at = data.draw(st.sampled_from([n["name"] for n in rec["graph"]["nodes"][1:-1]]), label="after")
    if family == "size_multiples":
        conv["size_multiples"] = data.draw(st.one_of(st.just([big] * nd), st.lists(BIG, min_size=1, max_size=4),
                                                     st.just(big), st.just(str(big))), label="value")
    elif family == "size_multiple":
        conv["size_multiple"] = data.draw(st.one_of(st.just(big), st.just(str(big)), st.just([big])), label="value")
    elif family == "size_rule":
        conv["size_rule"] = {"shape": None, "multiple": big, "multiples": [big] * nd, "nodes": [],
                             "example_shape": conv["example_shape"]}
    elif family == "resample-scale":
        insert_module(rec, "rs", {"type": "Resample", "args": {"mode": "nearest", "scale_factor": float(
            data.draw(st.floats(1.01, 64.0), label="scale")), "size": None, "align_corners": None}}, after=at)
    elif family == "resample-size":
        insert_module(rec, "rs", {"type": "Resample", "args": {"mode": "nearest", "scale_factor": None,
                                                               "size": [min(big, 16384)] * nd, "align_corners": None}},
                      after=at)
    elif family == "pad":
        amount = data.draw(st.integers(-4096, 4096), label="amount")
        mode = data.draw(st.sampled_from(["constant", "reflect", "replicate", "circular"]), label="mode")
        insert_module(rec, "pd", {"type": "Pad", "args": {"pad": [amount] * (2 * nd), "mode": mode}}, after=at)
    elif family == "adaptive":
        insert_module(rec, "ap", {"type": "AdaptiveAvgPool", "args": {"output_size": [min(big, 16384)] * nd}}, after=at)
    elif family in ("conv-padding", "conv-dilation", "conv-stride", "transpose-stride", "pool"):
        kind = {"transpose-stride": "ConvTranspose", "pool": "AvgPool"}.get(family, "Conv")
        paths = [p for p, s in rec["graph"]["modules"].items()
                 if (s["args"]["layer"]["type"] if s["type"] == "StaticInputSynapse" else s["type"]).startswith(kind)]
        args = module_args(rec["graph"], data.draw(st.sampled_from(paths), label="module"))
        key = {"conv-padding": "padding", "conv-dilation": "dilation", "conv-stride": "stride",
               "transpose-stride": "stride", "pool": data.draw(st.sampled_from(["kernel_size", "stride", "padding"]))
               }[family]
        args[key] = [min(big, 64 if key != "padding" else 1024)] * nd
    elif family == "v_init":
        neuron = next(p for p, s in rec["graph"]["modules"].items() if s["type"] == "MultiThresholdNode")
        rec["graph"]["modules"][neuron]["args"]["v_init"] = data.draw(
            st.sampled_from([1e308, -1e308, 1e38, 3.4e38, 1e7, 1e6 + 1]), label="v_init")
    else:
        node(rec, "cat")["kwargs"]["dict"]["dim"] = data.draw(st.integers(-8, 8), label="dim")
    path = write(v, rec)
    err = refused_cleanly(load_and_run, path, "snn", exc=(ArtifactError, BudgetError), allow_success=True)
    assert err is None or str(path) in str(err), f"the refusal does not name the file: {err}"
    done(path)


@pytest.mark.parametrize("volume", [False, True])
def test_a_converted_network_passes_its_own_shape_checks(valid, valid3, volume):
    """The bounds never refuse what conversion writes: the record's own fields and shapes pass."""
    load_and_run((valid3 if volume else valid).path)


# --------------------------------------------------- 5. Σ-Δ neurons and plumbing stages (issue 26)

@pytest.fixture(scope="module")
def valid_sigma(tmp_path_factory) -> Valid:
    """A small SNN with every new record field: Σ-Δ activation and product neurons (a table function
    and its parameters, an einsum equation), Linear, Reshape, Permute, Index, AddConstant."""
    from torch import nn

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.pos = nn.Conv2d(1, 4, 4, stride=4), nn.Parameter(torch.randn(1, 4, 4) * 0.1)
            self.norm, self.qk = nn.LayerNorm(4), nn.Linear(4, 8)
            self.up = nn.ConvTranspose2d(4, 2, 4, stride=4)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2) + self.pos
            q, k = self.qk(self.norm(t)).reshape(x.shape[0], 4, 2, 4).permute(2, 0, 1, 3)
            a = torch.einsum("bqd,bkd->bqk", q, k).softmax(-1)
            y = F.gelu(a @ t)
            return self.up(y.transpose(1, 2).reshape(x.shape[0], 4, 2, 2))

    import torch.nn.functional as F

    torch.manual_seed(0)
    net = Tokens().eval()
    g = torch.Generator().manual_seed(0)
    stats = sjunet.calibrate(net, [torch.rand(2, 1, 8, 8, generator=g) for _ in range(2)], progress=False)
    snn = sjunet.convert(net, stats)
    return saved(snn, tmp_path_factory, "snn_sigma")


def _of_type(valid: Valid, t: str) -> str:
    return next(p for p, m in valid.record["graph"]["modules"].items() if m["type"] == t)


def test_sigma_file_loads_and_runs(valid_sigma):
    snn, rec = snnfile.load(valid_sigma.path)
    types = {m["type"] for m in rec["graph"]["modules"].values()}
    assert {"SigmaDeltaNode", "SigmaDeltaProduct", "Linear", "Reshape", "Permute", "Index", "AddConstant"} <= types
    path = write(valid_sigma, valid_sigma.rec())
    assert torch.equal(snn(torch.ones(1, 1, 8, 8)), snnfile.load(path)[0](torch.ones(1, 1, 8, 8)))
    done(path)


@pytest.mark.parametrize("t,change", [
    ("SigmaDeltaNode", {"function": "os.system"}), ("SigmaDeltaNode", {"function": ["gelu"]}),
    ("SigmaDeltaNode", {"params": {"approximate": "erf"}}), ("SigmaDeltaNode", {"params": {"__class__": 1}}),
    ("SigmaDeltaNode", {"params": "none"}), ("SigmaDeltaNode", {"thresholds": []}),
    ("SigmaDeltaNode", {"channels": 10**9}), ("SigmaDeltaNode", {"out_scale": 0}), ("SigmaDeltaNode", {"in_scale": -1.0}),
    ("SigmaDeltaNode", {"extra": 1}), ("SigmaDeltaProduct", {"op": "exec"}),
    ("SigmaDeltaProduct", {"equation": "ab,bc"}), ("SigmaDeltaProduct", {"equation": "a" * 1000 + ",b->a"}),
    ("SigmaDeltaProduct", {"a_scale": "1"}), ("Linear", {"in_features": 2**30}), ("Linear", {"bias": 1}),
    ("Reshape", {"shape": [2**40]}), ("Reshape", {"batch_dim": 9}), ("Reshape", {"shape": [1] * 100}),
    ("Permute", {"dims": [0, 0, 1]}), ("Permute", {"dims": "012"}), ("Index", {"items": [["call", "os.system"]]}),
    ("Index", {"items": [["slice", 0, 2**40, 1]]}), ("Index", {"items": []}),
    ("AddConstant", {"shape": [100_000, 100_000]}), ("AddConstant", {"shape": [3, 3]}),
])
def test_bad_sigma_and_plumbing_arguments_are_refused(valid_sigma, t, change):
    rec = valid_sigma.rec()
    rec["graph"]["modules"][_of_type(valid_sigma, t)]["args"].update(change)
    refused(write(valid_sigma, rec))


def test_a_product_neuron_with_one_input_is_refused(valid_sigma):
    rec = valid_sigma.rec()
    target = _of_type(valid_sigma, "SigmaDeltaProduct")
    n = next(n for n in rec["graph"]["nodes"] if n.get("target") == target)
    n["args"]["tuple"] = n["args"]["tuple"][:1]
    assert "two" in str(refused(write(valid_sigma, rec)))


@FUZZ
@given(t=st.sampled_from(["SigmaDeltaNode", "SigmaDeltaProduct", "Reshape", "Permute", "Index", "AddConstant",
                          "Linear"]), key=st.text(max_size=10), value=HOSTILE, replace=st.booleans())
def test_fuzz_sigma_and_plumbing_arguments(valid_sigma, t, key, value, replace):
    """Hostile values for the new modules' arguments (an existing key or a new one): refused in one
    line, or loaded where the value happens to be a valid one."""
    rec = valid_sigma.rec()
    args = rec["graph"]["modules"][_of_type(valid_sigma, t)]["args"]
    keys = sorted(args)
    args[keys[sum(map(ord, key)) % len(keys)] if replace else key] = value
    refused_or_loaded(write(valid_sigma, rec))
