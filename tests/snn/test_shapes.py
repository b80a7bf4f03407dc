"""What a converted network's own shapes allow (``sjunet.snn.shapes``, ``sjunet.snn.footprint``): the shape propagation is torch's
own arithmetic (checked against real runs), the recorded size multiples pass their bound, and the
memory budget refuses in one line before anything runs."""
from __future__ import annotations

import pytest
import torch

import sjunet
from sjunet.snn import footprint, shapes as snn_shapes
from sjunet.models import UNet
from sjunet.models.zoo_nets import PadCatUNet
from sjunet.snn import simulate
from sjunet.snn.file import check_graph as checked_graph
from sjunet.snn.footprint import BudgetError, check_budget, parse_bytes, plan
from sjunet.snn.shapes import RecordError
from sjunet.snn.simulation import check_run


def _converted(net, shape):
    torch.manual_seed(0)
    return sjunet.convert(net.eval(), sjunet.calibrate(net.eval(), [torch.rand(*shape)], progress=False))


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return {
        "unet2d": (_converted(UNet(in_channels=1, out_channels=2, base_width=4, depth=2), (2, 1, 32, 32)), (1, 24, 40)),
        "unet3d": (_converted(UNet(in_channels=1, out_channels=2, base_width=2, depth=2, spatial_dims=3),
                              (1, 1, 8, 16, 16)), (1, 12, 16, 20)),
        # shape-computed pads and bilinear resampling: Pad and Resample stages in the graph
        "padcat": (_converted(PadCatUNet(n_channels=1, n_classes=2, bilinear=True, width=4, depth=2), (2, 1, 32, 32)),
                   (1, 32, 32)),
    }


@pytest.mark.parametrize("name", ["unet2d", "unet3d", "padcat"])
def test_the_propagated_shapes_are_the_real_ones(nets, name):
    snn, shape = nets[name]
    nodes, modules = checked_graph(snn.record.graph)
    p = plan(nodes, modules, shape)
    seen = {}
    targets = {n["target"]: n["name"] for n in nodes if n["op"] == "call_module"}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, tuple(o.shape[1:])))
             for path, m in snn.named_modules() if path in targets for n in [targets[path]]]
    try:
        simulate(snn, torch.rand(1, *shape), 1)
    finally:
        for h in hooks:
            h.remove()
    assert seen and all(p.shapes[n] == s for n, s in seen.items()), {n: (p.shapes[n], s) for n, s in seen.items()}
    assert p.largest[1] == max(map(lambda s: torch.Size(s).numel(), p.shapes.values()))


@pytest.mark.parametrize("name", ["unet2d", "unet3d", "padcat"])
def test_the_recorded_size_rule_is_within_the_graphs_reduction(nets, name):
    snn, _ = nets[name]
    nodes, modules = checked_graph(snn.record.graph)
    nd = snn_shapes.check_record(snn.record.to_dict(), nodes, modules)
    red, _ = snn_shapes.reductions(nodes, modules, nd)
    assert red == (4.0,) * nd  # a depth-2 U-Net pools twice along every axis
    rec = snn.record.to_dict()
    rec["conversion"] = {**rec["conversion"], "size_multiple": 8}
    with pytest.raises(RecordError, match="size_multiple"):
        snn_shapes.check_record(rec, nodes, modules)


def test_memory_grows_with_the_batch_and_the_chunk_and_the_budget_refuses_in_one_line(nets):
    snn, shape = nets["unet2d"]
    p = plan(*checked_graph(snn.record.graph), shape)
    one = p.bytes()
    assert p.bytes(batch=4) == 4 * one
    assert p.bytes(mode="multi", chunk=4) > p.bytes(mode="multi", chunk=1) == one
    assert check_budget(p, budget=one) == one
    with pytest.raises(BudgetError) as e:
        check_budget(p, budget=one - 1)
    assert "\n" not in str(e.value) and "memory budget" in str(e.value) and p.largest[0] in str(e.value)


def test_the_budget_comes_from_the_environment(nets, monkeypatch):
    snn, shape = nets["unet2d"]
    monkeypatch.setenv(footprint.BUDGET_ENV, "1K")
    with pytest.raises(BudgetError, match=footprint.BUDGET_ENV):
        simulate(snn, torch.rand(1, *shape), 1)
    monkeypatch.setenv(footprint.BUDGET_ENV, "64G")
    simulate(snn, torch.rand(1, *shape), 1)
    assert parse_bytes("1.5G") == int(1.5 * 2**30) and parse_bytes("512M") == 512 * 2**20 and parse_bytes(4096) == 4096
    for bad in ("lots", "-1G", "0", ""):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    monkeypatch.delenv(footprint.BUDGET_ENV)
    limit, source = footprint.memory_budget()
    assert limit == int(footprint.machine_memory() * footprint.BUDGET_FRACTION) and "RAM" in source


def test_a_network_made_in_memory_without_a_graph_record_is_not_planned():
    from torch import nn

    assert check_run(nn.Conv2d(1, 1, 3), (1, 1, 8, 8)) is None


# ------------------------------------------- token graphs (spec §15): planned by one step on meta


@pytest.fixture(scope="module")
def unetr():
    """A tiny UNETR converted: token plumbing, Linear layers, Σ-Δ softmax / GELU / products."""
    from sjunet.models.zoo_nets import unetr as build

    torch.manual_seed(0)
    net = build(in_channels=1, out_channels=2, img_size=(16, 16), spatial_dims=2, feature_size=2, hidden_size=8,
                mlp_dim=8, num_heads=2)
    return sjunet.convert(net.eval(), sjunet.calibrate(net.eval(), [torch.rand(2, 1, 16, 16)], progress=False),
                          norms="exact")


def test_a_token_graph_run_is_planned_as_it_runs(unetr):
    """The graph planner does not model token plumbing; one step on the meta device does, and its
    peak is what the real step holds (every tensor an operation creates, counted while it lives)."""
    from sjunet.snn.footprint_run import _Peak

    p = check_run(unetr, (1, 1, 16, 16))
    assert p is not None and p.largest[1] > 0
    check_run(unetr, (1, 1, 16, 16))  # cached: the counter below sees the run alone
    real = _Peak()
    with torch.no_grad(), real:
        simulate(unetr, torch.rand(1, 1, 16, 16), 1)
    assert 0.7 <= p.bytes() / real.peak <= 1.5, (p.bytes(), real.peak)


def test_a_crafted_repeat_in_a_token_graph_is_refused_by_the_budget(unetr, tmp_path):
    from hostile import insert_module, late, read_snn, write_snn

    from sjunet.conversion.recipe import load_snn, save_snn

    rec, tensors = read_snn(save_snn(unetr, tmp_path / "ok.safetensors"))
    rec = insert_module(rec, "rep", {"type": "Repeat", "args": {"repeats": [1, 1, 4096, 4096]}}, late(rec))
    evil = load_snn(write_snn(tmp_path / "evil.safetensors", rec, tensors))
    evil = evil[0] if isinstance(evil, tuple) else evil
    with pytest.raises(BudgetError) as e:  # 2 x 65536 x 65536 floats asked for: refused before any allocation
        simulate(evil, torch.rand(1, 1, 16, 16), 1)
    assert "\n" not in str(e.value) and "memory budget" in str(e.value)
