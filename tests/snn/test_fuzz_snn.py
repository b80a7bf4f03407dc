"""Fuzz layer of the SNN file (``sjunet.snn.file.load``: safetensors + a JSON record).

One small valid SNN file is built per module. Each hypothesis example writes a hostile variant into
a fresh directory; like an attacker (the content hash is unkeyed), it recomputes
``content_sha256`` with :func:`sjunet.snn.file._hash` wherever the record is an object, so the
record's own checks must hold. Every variant must be refused by :func:`sjunet.snn.file.load` with
one line naming the file, in bounded time and memory, without running code
(:func:`fuzzing.refused_cleanly`). A mutation that leaves a valid SNN (another ``v_init``, a
dropped optional field, whitespace) may load instead; see :func:`refused_or_loaded`. Then
regression tests for each reported case.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from fuzzing import refused_cleanly
from hostile import insert_module, node
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, safe_open, save_file

import sjunet
from sjunet.io import SNN_KIND, ArtifactError
from sjunet.models import UNet
from sjunet.snn import file as snnfile

#: examples per fuzz test (SJUNET_FUZZ_EXAMPLES=500 for a longer hunt)
EXAMPLES = int(os.environ.get("SJUNET_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------------------- the valid file

class Valid:
    def __init__(self, path: Path, tensors: dict, record: dict, scratch: Path) -> None:
        self.path, self.tensors, self.record, self.scratch = path, tensors, record, scratch

    def rec(self) -> dict:
        return copy.deepcopy(self.record)

    def graph(self, record: dict | None = None) -> dict:
        return (record or self.record)["graph"]


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Valid:
    torch.manual_seed(0)
    net = UNet(in_channels=1, out_channels=2, base_width=4, depth=2).eval()
    g = torch.Generator().manual_seed(0)
    data = [torch.rand(2, 1, 16, 16, generator=g) for _ in range(2)]
    stats = sjunet.calibrate(net, data, progress=False)
    snn = sjunet.convert(net, stats)
    return saved(snn, tmp_path_factory, "snn")


def saved(snn, tmp_path_factory, name: str) -> Valid:
    """``snn`` saved as the valid file of a family (its tensors and record read back), with a folder for
    the family's cases."""
    path = sjunet.save_snn(snn, tmp_path_factory.mktemp(name) / "snn.safetensors")
    with safe_open(str(path), framework="pt") as f:
        record = json.loads(f.metadata()["sjunet"])
    return Valid(path, load_file(str(path)), record, tmp_path_factory.mktemp(f"cases_{name}"))


def write(valid: Valid, record=None, text: str | None = None, rehash: bool = True, tensors=None,
          raw: bytes | None = None) -> Path:
    """A case file in its own fresh directory: ``record`` (re-hashed like an attacker when it is an
    object), or the record ``text`` as is, or ``raw`` bytes for the whole file."""
    path = Path(tempfile.mkdtemp(dir=valid.scratch)) / "snn.safetensors"
    if raw is not None:
        path.write_bytes(raw)
        return path
    tensors = valid.tensors if tensors is None else tensors
    if text is None:
        if rehash and isinstance(record, dict):
            record = {**record, "content_sha256": snnfile._hash(tensors, record)}
        text = json.dumps(record)
    save_file(tensors, str(path), metadata={"sjunet": text})
    return path


def done(path: Path) -> None:
    shutil.rmtree(path.parent, ignore_errors=True)


def refused(path: Path):
    err = refused_cleanly(snnfile.load, path, "snn")
    assert str(path) in str(err), f"the refusal does not name the file: {err}"
    done(path)
    return err


def refused_or_loaded(path: Path) -> bool:
    """A mutation that may leave a valid SNN (another ``v_init``, a dropped optional field, JSON
    whitespace): it loads (True) or is refused cleanly (False) — bounded either way."""
    err = refused_cleanly(snnfile.load, path, "snn", allow_success=True)
    assert err is None or str(path) in str(err), f"the refusal does not name the file: {err}"
    done(path)
    return err is None


# ------------------------------------------------------------------------------------ strategies

SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda ch: st.lists(ch, max_size=5) | st.dictionaries(st.text(max_size=8), ch, max_size=5),
                    max_leaves=20)
HOSTILE = st.one_of(
    st.sampled_from([0, -1, -2**31, 40_000, 100_000, 10**9, 2**63, 10**30, 3000.0, 1e300, -1e-300, 0.5, True, False,
                     None, "", "same", "zeros", "x" * 100, [], [0], [3, 3, 3], [40_000, 40_000], [1e5] * 4,
                     {}, {"node": "x"}, {"tuple": []}]),
    st.integers(-2**40, 2**40), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10),
    st.lists(st.integers(-2**20, 2**20), max_size=6), JSON)


def module_args(graph: dict, path: str) -> dict:
    spec = graph["modules"][path]
    return spec["args"]["layer"]["args"] if spec["type"] == "StaticInputSynapse" else spec["args"]


# ----------------------------------------------------------------------------- sanity of the setup

def test_valid_file_and_a_rehashed_copy_load(valid):
    snn, rec = snnfile.load(valid.path)
    assert rec == valid.record
    path = write(valid, valid.rec())
    snn2, _ = snnfile.load(path)
    x = torch.rand(1, 1, 16, 16)
    assert torch.equal(snn(x), snn2(x))
    done(path)


def test_sane_inserted_stages_still_load(valid):
    """The limits do not refuse what a real SNN has: a zero pad, a ×2 resample to a reference, a gain."""
    rec = insert_module(valid.rec(), "pad_ok", {"type": "Pad", "args": {"pad": [0, 0, 0, 0], "mode": "constant"}})
    rec = insert_module(rec, "up_ok", {"type": "Resample", "args": {"mode": "nearest", "scale_factor": None,
                                                                    "size": None, "align_corners": None}},
                        after="pool_0", extra_args=[{"node": "pool_0"}])
    path = write(valid, rec)
    snn, _ = snnfile.load(path)
    assert snn(torch.rand(1, 1, 16, 16)).shape == (1, 2, 16, 16)
    done(path)


# ----------------------------------------------------------------------- regression: reported cases

@pytest.mark.parametrize("value", [[], [1, 2], ["sjunet-snn"], "sjunet-snn", 3, 2.5, True, None])
def test_record_that_is_not_an_object_is_refused(valid, value):
    err = refused(write(valid, text=json.dumps(value)))
    assert "not an object" in str(err)


@pytest.mark.parametrize("text", ["[" * 100_000, "[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000])
def test_deep_bracket_nesting_is_refused(valid, text):
    assert "nested" in str(refused(write(valid, text=text)))


def test_deep_nesting_inside_a_rehashed_record_is_refused(valid):
    rec = valid.rec()
    deep = 1
    for _ in range(500):
        deep = [deep]
    rec["conversion"] = {"x": deep}
    assert "nested" in str(refused(write(valid, rec)))


@pytest.mark.parametrize("text", ["not json", '{"kind": NaN}', '{"kind": 1e400}', "1" * 5000, ""])
def test_metadata_that_is_not_json_is_refused(valid, text):
    refused(write(valid, text=text))


def test_record_with_nan_is_refused_before_hashing(valid):
    rec = valid.rec()
    rec["content_sha256"] = snnfile._hash(valid.tensors, rec)
    text = json.dumps(rec).replace('"task": null', '"task": NaN')
    assert "NaN" in text
    refused(write(valid, text=text))


@pytest.mark.parametrize("dim", [7, -5, 4, 2**40, "1", 1.0, None, [1], True])
def test_cat_dim_out_of_range_is_refused(valid, dim):
    rec = valid.rec()
    node(rec, "cat")["kwargs"]["dict"]["dim"] = dim
    assert "dim" in str(refused(write(valid, rec)))


def test_40000_channel_conv_is_refused_without_allocating(valid):
    rec = valid.rec()
    rec["graph"]["modules"]["bottom.2"]["args"].update(in_channels=40_000, out_channels=40_000)
    assert "bottom.2" in str(refused(write(valid, rec)))


def test_conv_channels_must_match_the_tensors(valid):
    rec = valid.rec()
    rec["graph"]["modules"]["bottom.2"]["args"].update(in_channels=32, out_channels=32)  # within limits, wrong
    assert "do not fit" in str(refused(write(valid, rec)))
    rec = valid.rec()
    rec["graph"]["modules"]["head"]["args"]["bias"] = False  # the file has head.bias
    assert "head.bias" in str(refused(write(valid, rec)))


def test_huge_pad_is_refused(valid):
    rec = insert_module(valid.rec(), "pad_evil", {"type": "Pad", "args": {"pad": [100_000] * 4, "mode": "constant"}})
    assert "pad" in str(refused(write(valid, rec)))


def test_huge_resample_is_refused(valid):
    rec = insert_module(valid.rec(), "up_evil", {"type": "Resample", "args": {
        "mode": "nearest", "scale_factor": 3000.0, "size": None, "align_corners": None}})
    assert "scale_factor" in str(refused(write(valid, rec)))
    rec = insert_module(valid.rec(), "up_evil", {"type": "Resample", "args": {
        "mode": "bilinear", "scale_factor": None, "size": [10**6, 10**6], "align_corners": False}})
    assert "size" in str(refused(write(valid, rec)))


@pytest.mark.parametrize("args", [{"thresholds": [1.0] * 100_000}, {"thresholds": [2.0, 1.0], "v_init": "0"},
                                  {"thresholds": [1.0, 2.0]}, {"thresholds": []}, {"bogus": 1},
                                  {"thresholds": [2.0, 1.0], "step_mode": "m"}, {"thresholds": {"a": 1}}])
def test_bad_neuron_arguments_are_refused(valid, args):
    rec = valid.rec()
    rec["graph"]["modules"]["down.0.1"]["args"] = args
    refused(write(valid, rec))


def test_huge_real_spike_neuron_is_refused(valid):
    rec = valid.rec()
    rec["graph"]["modules"]["down.0.1"] = {"type": "RealSpikeNode", "args": {
        "threshold": 1.0, "decay": 1.0, "reset": "subtract", "v_init": 0.0, "channels": 10**9}}
    refused(write(valid, rec))


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda r: node(r, "head")["args"]["tuple"].__setitem__(0, {"node": "ghost"}), id="ghost-ref"),
    pytest.param(lambda r: node(r, "head")["args"]["tuple"].__setitem__(0, "dec_1_3"), id="string-for-ref"),
    pytest.param(lambda r: node(r, "head")["args"]["tuple"].__setitem__(0, {"dict": {}}), id="dict-for-ref"),
    pytest.param(lambda r: node(r, "head").__setitem__("args", [{"node": "dec_1_3"}]), id="args-not-tuple"),
    pytest.param(lambda r: node(r, "head").__setitem__("name", "dec_1_3"), id="duplicate-name"),
    pytest.param(lambda r: node(r, "head").pop("kwargs"), id="missing-key"),
    pytest.param(lambda r: node(r, "head").__setitem__("op", "call_method"), id="call-method"),
    pytest.param(lambda r: node(r, "cat").__setitem__("target", "os.system"), id="foreign-function"),
    pytest.param(lambda r: node(r, "head").__setitem__("target", "ghost.module"), id="undeclared-module"),
    pytest.param(lambda r: node(r, "dec_1_0")["args"]["tuple"].__setitem__(0, {"node": "head"}), id="later-node"),
    pytest.param(lambda r: r["graph"]["nodes"].insert(3, {"name": "g", "op": "call_function", "target": "operator.add",
                                                          "args": {"tuple": [{"node": "x"}, {"node": "phantom"}]},
                                                          "kwargs": {"dict": {}}}), id="ghost-node"),
    pytest.param(lambda r: r["graph"]["nodes"].insert(3, {"name": "g", "op": "call_function", "target": "operator.add",
                                                          "args": {"tuple": [{"node": "x"}, 1.0]},
                                                          "kwargs": {"dict": {}}}), id="add-constant"),
    pytest.param(lambda r: r["graph"]["nodes"].insert(1, dict(r["graph"]["nodes"][0], name="y", target="y")),
                 id="second-input"),
    pytest.param(lambda r: r["graph"]["nodes"].pop(), id="no-output"),
    pytest.param(lambda r: r["graph"]["modules"].__setitem__("unused", {"type": "Pad", "args": {
        "pad": [0, 0], "mode": "constant"}}), id="unused-module"),
    pytest.param(lambda r: r["graph"]["modules"]["down.0.1"].__setitem__("type", "Sequential"), id="foreign-module"),
    pytest.param(lambda r: r["graph"]["modules"]["down.0.1"].__setitem__("type", ["MultiThresholdNode"]),
                 id="unhashable-type"),
    pytest.param(lambda r: r.__setitem__("graph", []), id="graph-list"),
    pytest.param(lambda r: r.__setitem__("post", {"a": 1}), id="post-object"),
])
def test_malformed_graph_records_are_refused(valid, mutate):
    rec = valid.rec()
    mutate(rec)
    refused(write(valid, rec))


def test_code_in_a_module_path_or_input_name_is_refused(valid):
    """torch.fx writes module paths and the input's name into the code it generates (the forward's
    body; the input's name, with a default, into its signature): both must be plain names."""
    evil = 'x") or getattr(__import__("os"), "system")("touch pwned") or getattr(self, "y'  # no dots: one segment
    rec = valid.rec()
    g = rec["graph"]
    g["modules"][evil] = g["modules"].pop("head")
    node(rec, "head")["target"] = evil
    assert "module path" in str(refused(write(valid, rec)))
    rec = valid.rec()
    node(rec, "x")["target"] = "x=__import__('os').system('touch pwned')"
    assert "input name" in str(refused(write(valid, rec)))
    rec = valid.rec()
    g = rec["graph"]
    g["modules"]["_parameters"] = g["modules"].pop("head")
    node(rec, "head")["target"] = "_parameters"
    refused(write(valid, rec))


def test_extra_or_missing_tensors_are_refused(valid):
    extra = dict(valid.tensors, **{"head.secret": torch.zeros(3)})
    assert "head.secret" in str(refused(write(valid, valid.rec(), tensors=extra)))
    fewer = {k: v for k, v in valid.tensors.items() if k != "up.0.weight"}
    assert "up.0.weight" in str(refused(write(valid, valid.rec(), tensors=fewer)))
    ints = dict(valid.tensors, **{"head.bias": torch.zeros(2, dtype=torch.int64)})
    refused(write(valid, valid.rec(), tensors=ints))


# --------------------------------------------------------------------------------- 1. any JSON

@FUZZ
@given(value=JSON, looks_right=st.booleans(), graph=JSON)
def test_fuzz_record_is_arbitrary_json(valid, value, looks_right, graph):
    """Any JSON as the record; objects get the right kind and format half of the time (so the graph
    record itself is tested) and are always correctly re-hashed."""
    if looks_right:
        value = {**(value if isinstance(value, dict) else {"v": value}), "kind": SNN_KIND, "format": snnfile.FORMAT,
                 "graph": graph}
    refused(write(valid, value))


@FUZZ
@given(graph=st.fixed_dictionaries({"nodes": st.lists(JSON, max_size=6), "modules": st.dictionaries(
    st.text(max_size=8), JSON, max_size=4)}))
def test_fuzz_graph_record_is_arbitrary_json(valid, graph):
    rec = valid.rec()
    rec["graph"] = graph
    refused(write(valid, rec))


# ------------------------------------------------------------------------ 2. targeted mutations

@FUZZ
@given(data=st.data())
def test_fuzz_module_argument(valid, data):
    """One constructor argument of one module gets a huge / negative / float / string / list / JSON
    value, or is deleted, or a new one is added."""
    rec = valid.rec()
    path = data.draw(st.sampled_from(sorted(valid.graph()["modules"])), label="module")
    args = module_args(rec["graph"], path)
    key = data.draw(st.sampled_from(sorted(args)) | st.text(max_size=8), label="argument")
    if data.draw(st.booleans(), label="delete") and key in args:
        del args[key]
    else:
        args[key] = data.draw(HOSTILE, label="value")
    refused_or_loaded(write(valid, rec))


@FUZZ
@given(data=st.data())
def test_fuzz_conversion_ladder_fields(valid, data):
    """The per-layer ladder record (``conversion.options.thresholds`` = "auto", ``conversion.ladders``:
    ReLU node -> its ladder and expected error) that tables and people read: any field of it, or the
    whole of it, becomes a hostile value. The file loads (a value the checks accept) or is refused
    in one line naming it — and whatever loads has ladders that read as numbers."""
    rec = valid.rec()
    conv = rec["conversion"]
    assert conv["options"]["thresholds"] == "auto" and conv["ladders"]  # the default writes per-layer ladders
    relu = data.draw(st.sampled_from(sorted(conv["ladders"])))
    where = data.draw(st.sampled_from(["options.thresholds", "ladders", "one ladder", "its thresholds", "its field",
                                       "its threshold"]))
    value = data.draw(HOSTILE)
    if where == "options.thresholds":
        conv["options"]["thresholds"] = value
    elif where == "ladders":
        conv["ladders"] = value
    elif where == "one ladder":
        conv["ladders"][relu] = value
    elif where == "its thresholds":
        conv["ladders"][relu]["thresholds"] = value
    elif where == "its field":
        conv["ladders"][relu][data.draw(st.sampled_from(["mae", "spikes", "met", "new"]))] = value
    else:
        conv["ladders"][relu]["thresholds"][0] = value
    if refused_or_loaded(write(valid, rec)):  # it loaded: the record it carries reads as ladders
        c = rec["conversion"]
        th = c["options"]["thresholds"]
        assert th == "auto" or (isinstance(th, list) and all(float(t) > 0 for t in th))
        for choice in (c.get("ladders") or {}).values():
            assert all(float(t) > 0 for t in choice["thresholds"])


def test_snn_files_from_before_per_layer_ladders_load(valid):
    """An SNN file written before per-layer ladders — one ladder for every layer in
    ``options.thresholds``, no ``ladders`` — loads and runs as before."""
    rec = valid.rec()
    rec["conversion"]["options"]["thresholds"] = [2.0, 1.0, 0.5, 0.25]
    del rec["conversion"]["ladders"]
    path = write(valid, rec)
    snn, r = snnfile.load(path)
    assert "ladders" not in r["conversion"] and snn(torch.rand(1, 1, 16, 16)).shape == (1, 2, 16, 16)
    done(path)


@FUZZ
@given(dim=st.integers(-2**40, 2**40) | st.integers(-8, 8) | HOSTILE, which=st.sampled_from(["cat", "cat_1"]))
def test_fuzz_cat_dim(valid, dim, which):
    rec = valid.rec()
    node(rec, which)["kwargs"]["dict"]["dim"] = dim
    path = write(valid, rec)
    if type(dim) is int and dim in (1, -3):
        snnfile.load(path)  # the channel dimension of a 4-D batch: loads
        done(path)
    else:
        refused(path)


@FUZZ
@given(data=st.data())
def test_fuzz_node_fields(valid, data):
    """One field (args, kwargs, target, name, op) of one node becomes arbitrary JSON or a hostile value."""
    rec = valid.rec()
    nodes = rec["graph"]["nodes"]
    i = data.draw(st.integers(0, len(nodes) - 1), label="node")
    field = data.draw(st.sampled_from(["args", "kwargs", "target", "name", "op"]), label="field")
    nodes[i][field] = data.draw(JSON | HOSTILE, label="value")
    refused_or_loaded(write(valid, rec))


def _containers(rec: dict) -> list[dict]:
    """Every JSON object in the record's graph, and the record itself."""
    out, stack = [rec], [rec["graph"]]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            out.append(o)
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return out


@FUZZ
@given(data=st.data())
def test_fuzz_deleted_keys(valid, data):
    rec = valid.rec()
    objs = [o for o in _containers(rec) if o]
    for _ in range(data.draw(st.integers(1, 3), label="deletions")):
        o = data.draw(st.sampled_from(objs), label="object")
        if o:
            del o[data.draw(st.sampled_from(sorted(o)), label="key")]
    refused_or_loaded(write(valid, rec))


@FUZZ
@given(data=st.data())
def test_fuzz_ghost_and_duplicate_nodes(valid, data):
    """A node that refers to a name no earlier node has, or that repeats an existing name."""
    rec = valid.rec()
    nodes = rec["graph"]["nodes"]
    at = data.draw(st.integers(1, len(nodes) - 1), label="position")
    earlier = [n["name"] for n in nodes[:at]]
    kind = data.draw(st.sampled_from(["ghost-ref", "duplicate", "rewire"]), label="kind")
    ghost = data.draw(st.text(min_size=1, max_size=10).filter(lambda s: s not in earlier), label="ghost")
    if kind == "duplicate":
        dup = dict(nodes[at - 1], args={"tuple": [{"node": earlier[0]}]} if nodes[at - 1]["op"] != "placeholder"
                   else nodes[at - 1]["args"])
        nodes.insert(at, dup)
    elif kind == "ghost-ref":
        nodes.insert(at, {"name": "ghost_user", "op": "call_function",
                          "target": data.draw(st.sampled_from(["operator.add", "torch.cat"])),
                          "args": {"tuple": [{"node": earlier[-1]}, {"node": ghost}]}, "kwargs": {"dict": {}}})
    else:
        nodes[at]["args"] = {"tuple": [{"node": ghost}]}
    refused(write(valid, rec))


# ---------------------------------------------------------------- 3. nesting, text, bytes of the file

@FUZZ
@given(depth=st.integers(snnfile.MAX_DEPTH + 1, 200_000), opener=st.sampled_from(["[", '{"a":']),
       closed=st.booleans(), inside=st.booleans())
def test_fuzz_deep_nesting(valid, depth, opener, closed, inside):
    closer = "]" if opener == "[" else "}"
    deep = opener * depth + ("0" + closer * depth if closed else "")
    if inside:  # inside an otherwise valid record (hashed where json can still hash it)
        rec = valid.rec()
        rec["conversion"] = "@@DEEP@@"
        text = json.dumps(rec).replace('"@@DEEP@@"', deep)
        if closed and depth < 600:
            rec["conversion"] = json.loads(deep)
            rec["content_sha256"] = snnfile._hash(valid.tensors, rec)
            text = json.dumps(rec)
        refused(write(valid, text=text))
    else:
        refused(write(valid, text=deep))


@FUZZ
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_fuzz_metadata_is_not_a_record(valid, text):
    refused(write(valid, text=text))


@FUZZ
@given(data=st.data())
def test_fuzz_byte_flips_and_truncations(valid, data):
    """Flipped bytes or a truncation anywhere in the file. A flip that changes nothing the file
    means (header padding, JSON whitespace, ``e``/``E`` in a number) may load; then what loads must
    equal the original."""
    raw = bytearray(valid.path.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            i = data.draw(st.integers(0, len(raw) - 1), label="offset")
            raw[i] ^= data.draw(st.integers(1, 255), label="xor")
    path = write(valid, raw=bytes(raw))
    if path.read_bytes() == valid.path.read_bytes():  # pragma: no cover - xor is never 0
        return done(path)
    check = Path(tempfile.mkdtemp(dir=valid.scratch)) / "copy.safetensors"
    shutil.copy(path, check)
    if refused_or_loaded(path):
        _, rec = snnfile.load(check)
        assert rec == valid.record
        tensors = load_file(str(check))
        assert tensors.keys() == valid.tensors.keys()
        assert all(torch.equal(tensors[k], valid.tensors[k]) for k in tensors)
    done(check)


def test_not_a_safetensors_file_is_refused(valid):
    refused(write(valid, raw=b""))
    refused(write(valid, raw=b"\xff" * 8 + b"{}"))
    refused(write(valid, raw=(2**62).to_bytes(8, "little") + b"{}"))
    with pytest.raises(ArtifactError, match="no such file"):
        snnfile.load(valid.scratch / "missing.safetensors")
