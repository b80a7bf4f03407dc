"""Fuzz layer for the results-JSON reader (plot metric-vs-T / metric-vs-energy) and the ``.last.pt``
resume state: every hostile file is refused with one line naming it (tests/fuzzing.py)."""
import json
import random

import numpy as np
import pytest
import torch
from fuzzing import refused_cleanly
from hypothesis import HealthCheck, given, settings, strategies as st

from sjunet.plots.curves import load_results
from sjunet.training.loop import LoopOptions, fit
from sjunet.training.resume import LAST_FIELDS, load_resume_state
from sjunet.training.run import make_schedule

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

VALID = {"split": "test", "ann": {"f1_vessel": 0.7, "accuracy": 0.9, "num_images": 2},
         "T": {"2": {"f1_vessel": 0.5, "agreement": 0.8}, "4": {"f1_vessel": 0.6, "agreement": 0.9}},
         "snn": {"path": "s.safetensors", "conversion": {"norm": "connection", "neuron": "mt"}}}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20)


# ----------------------------------------------------------------------------- results JSON

@SETTINGS
@given(value=json_values)
def test_results_reader_arbitrary_json(tmp_path_factory, value):
    p = tmp_path_factory.mktemp("j") / "r.json"
    p.write_text(json.dumps(value))
    refused_cleanly(load_results, p, "results-json", allow_success=True)


@SETTINGS
@given(value=json_values, key=st.sampled_from(["T", "ann", "snn"]))
def test_results_reader_mutated_fields(tmp_path_factory, value, key):
    p = tmp_path_factory.mktemp("j") / "r.json"
    p.write_text(json.dumps({**VALID, key: value}))
    refused_cleanly(load_results, p, "results-json", allow_success=True)
    refused_cleanly(lambda q: load_results(q, "frontier"), p, "results-json")  # no energy: never a frontier


@SETTINGS
@given(depth=st.integers(33, 200_000), opener=st.sampled_from(["[", '{"a":']))
def test_results_reader_deep_nesting(tmp_path_factory, depth, opener):
    p = tmp_path_factory.mktemp("j") / "r.json"
    p.write_text(opener * depth)
    refused_cleanly(load_results, p, "results-json")


@SETTINGS
@given(data=st.binary(min_size=1, max_size=64))
def test_results_reader_not_utf8(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("j") / "r.json"
    p.write_bytes(b'{"T": {"2": {"f1": 0.5}}, "x": "\xff\xfe' + data)
    refused_cleanly(load_results, p, "results-json")


@SETTINGS
@given(cut=st.integers(0, len(json.dumps(VALID, indent=2)) - 1))
def test_results_reader_truncated(tmp_path_factory, cut):
    p = tmp_path_factory.mktemp("j") / "r.json"
    p.write_text(json.dumps(VALID, indent=2)[:cut])
    refused_cleanly(load_results, p, "results-json")


def test_results_reader_regressions(tmp_path):
    for text in ("[1, 2]", "[" * 100000, "{}", '{"split": "test"}', "null", "3"):
        p = tmp_path / "r.json"
        p.write_text(text)
        refused_cleanly(load_results, p, "results-json")
    p.write_text(json.dumps(VALID))
    assert load_results(p)["T"]["2"]["f1_vessel"] == 0.5


# ----------------------------------------------------------------------------- .last.pt

KIND = "toy-last"
OPTIONS = LoopOptions(epochs=3, batch_size=3, seed=5, progress=False)
IDENTITY = {"lr": 1e-2, "dataset_options": {"flip": True}}


class Toy(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        x = torch.randn(3, generator=torch.Generator().manual_seed(i))
        return x, x.sum(0, keepdim=True)


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, opt, make_schedule(opt, "cosine", 12, 2, 1e-2)


@pytest.fixture(scope="module")
def valid_state(tmp_path_factory):
    """The ``.last.pt`` of a toy run stopped mid-epoch (step 5: epoch 1, iteration 1)."""
    d = tmp_path_factory.mktemp("last")
    model, opt, sched = _setup()
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    fit(model, lambda x, y: ((model(x) - y) ** 2).mean(), Toy(), lambda: (0.5, {"f1": 0.5}),
        LoopOptions(epochs=3, batch_size=3, seed=5, progress=False, max_iters=5, val_every=2),
        lambda e, h: None, optimizer=opt, scheduler=sched, last=d / "x.pt.last.pt", kind=KIND, identity=IDENTITY)
    random.setstate(saved[0]), np.random.set_state(saved[1]), torch.set_rng_state(saved[2])
    return torch.load(d / "x.pt.last.pt", weights_only=True)


def _read(path):
    model, opt, sched = _setup()
    return load_resume_state(path, KIND, model=model, optimizer=opt, scheduler=sched, options=OPTIONS,
                             num_items=10, identity=IDENTITY, generator=torch.Generator())


def test_valid_state_loads(tmp_path, valid_state):
    assert (valid_state["epoch"], valid_state["iteration"], valid_state["step"]) == (1, 1, 5)
    torch.save(valid_state, tmp_path / "s.last.pt")
    assert _read(tmp_path / "s.last.pt")["step"] == 5


plain = st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40) | st.floats() | st.text(max_size=5)
values = st.recursive(plain | st.builds(lambda n: torch.zeros(n), st.integers(0, 4)),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                    max_size=3), max_leaves=8)


def _mutate(state, path, value, delete):
    """A copy of ``state`` with the entry at ``path`` (keys into nested dicts) replaced or deleted."""
    import copy

    state = copy.deepcopy(state)
    node = state
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return state


def _paths(state):
    out, stack = [], [((), state)]
    while stack:
        p, node = stack.pop()
        if isinstance(node, dict) and len(p) < 4:
            for k, v in node.items():
                out.append(p + (k,))
                stack.append((p + (k,), v))
    return sorted(out, key=repr)


@SETTINGS
@given(data=st.data(), delete=st.booleans())
def test_last_pt_mutated_fields(tmp_path_factory, valid_state, data, delete):
    path = data.draw(st.sampled_from(_paths(valid_state)))
    value = data.draw(values)
    p = tmp_path_factory.mktemp("m") / "x.last.pt"
    torch.save(_mutate(valid_state, path, value, delete), p)
    refused_cleanly(_read, p, "last.pt", allow_success=True)


@SETTINGS
@given(field=st.sampled_from(LAST_FIELDS), value=plain)
def test_last_pt_top_level_fields(tmp_path_factory, valid_state, field, value):
    p = tmp_path_factory.mktemp("m") / "x.last.pt"
    torch.save({**valid_state, field: value}, p)
    harmless = ("minutes", "loss_sum", "loss_count", "baseline", "epoch", "iteration", "step", "loop_version",
                "num_items")  # a plain value that can be a valid one there
    refused_cleanly(_read, p, "last.pt", allow_success=field in harmless)


@pytest.mark.parametrize("make", [
    lambda s: {**s, "order": 1e9},
    lambda s: {**s, "order": torch.full((10,), 10 ** 9)},
    lambda s: {**s, "order": torch.arange(10).float()},
    lambda s: [s],
    lambda s: "a string",
    lambda s: {k: v for k, v in s.items() if k != "optimizer"},
    lambda s: {k: v for k, v in s.items() if k != "step"},
    lambda s: {**s, "step": 10 ** 12},
    lambda s: {**s, "epoch": 99},
    lambda s: {**s, "rng": {**s["rng"], "torch": s["rng"]["torch"].float()}},
    lambda s: {**s, "rng": {**s["rng"], "numpy": {**s["rng"]["numpy"], "pos": 10 ** 6}}},
    lambda s: {**s, "optimizer": {**s["optimizer"], "state": {0: {"exp_avg": torch.zeros(7)}}}},
    lambda s: {**s, "state_dict": {**s["state_dict"], "0.weight": torch.zeros(2, 2)}},
    lambda s: {**s, "history": [{"at": "x"}] * 3},
    lambda s: {**s, "scheduler": {**s["scheduler"], "_last_lr": [1e9]}},
], ids=["order-1e9", "order-huge-values", "order-float", "list", "string", "no-optimizer", "no-step",
        "step-beyond-run", "epoch-beyond-run", "rng-dtype", "numpy-pos", "optimizer-shape", "weight-shape",
        "history-entries", "scheduler-lr"])
def test_last_pt_regressions(tmp_path, valid_state, make):
    p = tmp_path / "x.last.pt"
    torch.save(make(valid_state), p)
    err = refused_cleanly(_read, p, "last.pt")
    assert str(p) in str(err)
