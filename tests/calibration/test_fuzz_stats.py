"""Fuzz layer of the calibration statistics file (``sjunet.calibration.store``).

One small valid stats file is built per module; each hypothesis example copies it into a fresh
directory, mutates it in place with h5py, and — like an attacker, since the content hash is
unkeyed — recomputes ``content_sha256`` over the mutated attributes and arrays where it can. Every
variant must be refused by :func:`read_stats` with one line naming the file, in bounded time and
memory (:func:`fuzzing.refused_cleanly`). The regression tests of reported cases, stored string
lengths and the approximation record are in :mod:`test_stats_regressions`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fuzzing import refused_cleanly
from sjunet.calibration import calibrate
from sjunet.calibration.reader import MAX_BINS, read_stats
from sjunet.calibration.store import CalibrationStats, write_stats
from sjunet.calibration.store import NODE_ATTRS as _NODE_ATTRS
from sjunet.models import UNet

#: examples per fuzz test (SJUNET_FUZZ_EXAMPLES=500 for a longer hunt)
EXAMPLES = int(os.environ.get("SJUNET_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

FILE_STR = ("schema", "model_fingerprint", "data", "options", "versions", "created", "node_order", "graph",
            "content_sha256")
FILE_NUM = ("p",)
NODE_STR = ("role", "fallback")
NODE_INT = ("count", "channels")
NODE_FLOAT = tuple(k for k in _NODE_ATTRS if k not in NODE_STR + NODE_INT)
_HASHED_FILE = ("schema", "model_fingerprint", "p", "data", "options", "versions", "created", "node_order", "graph")


# ------------------------------------------------------------------------------- the valid file

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = UNet(in_channels=1, out_channels=2, base_width=4, depth=2).eval()
    g = torch.Generator().manual_seed(0)
    data = [torch.rand(2, 1, 16, 16, generator=g) for _ in range(2)]
    stats = calibrate(model, data, progress=False, nbins=1024, data_description={"dataset": "random"})
    path = tmp_path_factory.mktemp("stats") / "stats.h5"
    write_stats(stats, path)
    read_stats(path)  # valid
    return path


@pytest.fixture(scope="module")
def names(base) -> list[str]:
    with h5py.File(base, "r") as f:
        return json.loads(f.attrs["node_order"])


@contextlib.contextmanager
def variant(base: Path):
    """A copy of the valid file in a fresh directory (removed afterwards)."""
    d = Path(tempfile.mkdtemp(prefix="sjunet-fuzz-stats-"))
    try:
        path = d / "stats.h5"
        shutil.copyfile(base, path)
        yield path
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _val(v):
    return v.item() if isinstance(v, np.generic) else v


def _stream_hash(ds: h5py.Dataset, h) -> None:
    """Feed a dataset into the hash as ``_content_hash`` does, block by block (no full copy)."""
    dt = ds.dtype
    h.update(str(dt).encode())
    h.update(str(ds.shape).encode())
    if ds.ndim != 1:
        h.update(np.ascontiguousarray(ds[()]).tobytes())
        return
    step = 1 << 20
    for i in range(0, ds.shape[0], step):
        h.update(np.ascontiguousarray(ds[i:i + step]).tobytes())


def rehash(path: Path, max_bytes: int = 64 << 20) -> bool:
    """Recompute ``content_sha256`` over the (mutated) file like an attacker would; False where the
    file no longer has what the hash covers (a deleted attribute, a missing group) or declares
    more than ``max_bytes`` of arrays."""
    try:
        with h5py.File(path, "r+") as f:
            fa = {k: _val(f.attrs[k]) for k in _HASHED_FILE}
            order = json.loads(fa["node_order"])
            na, total = {}, 0
            for name in order:
                n = f["nodes"][name]
                na[name] = {k: _val(n.attrs[k]) for k in _NODE_ATTRS}
                total += sum(n[d].size * n[d].dtype.itemsize for d in ("histogram", "bin_edges"))
                if total > max_bytes:
                    return False
            # _content_hash, streamed: same bytes in the same order
            h = hashlib.sha256()
            h.update(json.dumps(fa, sort_keys=True, default=str).encode())
            for name in sorted(na):
                h.update(name.encode())
                h.update(json.dumps(na[name], sort_keys=True, default=str).encode())
                for d in ("histogram", "bin_edges"):
                    _stream_hash(f["nodes"][name][d], h)
            f.attrs["content_sha256"] = h.hexdigest()
        return True
    except Exception:  # noqa: BLE001 - the mutation removed what the hash covers
        return False


def set_attr(path: Path, where: str, key: str, value) -> None:
    with h5py.File(path, "r+") as f:
        obj = f if where == "/" else f[where]
        if key in obj.attrs:
            del obj.attrs[key]
        obj.attrs[key] = value


def assert_sane(s: CalibrationStats) -> None:
    """What an accepted file must give: the types and ranges the converter relies on."""
    assert isinstance(s.model_fingerprint, str) and isinstance(s.created, str)
    assert 0 < s.p <= 100
    for d in (s.data, s.options, s.versions, s.graph):
        assert isinstance(d, dict)
    assert s.nodes
    for name, t in s.nodes.items():
        assert isinstance(name, str) and isinstance(t.role, str)
        assert isinstance(t.count, int) and t.count >= 0
        assert isinstance(t.channels, int) and t.channels >= 0
        assert math.isfinite(t.percentile) and t.percentile >= 0
        assert 0 < t.p <= 100
        assert t.fallback in (None, "max", "one")
        assert t.histogram.ndim == 1 and t.bin_edges.shape == (t.histogram.shape[0] + 1,)


def refused(path: Path, allow_success: bool = False):
    err = refused_cleanly(read_stats, path, "stats", allow_success=allow_success)
    if err is not None:
        assert str(path) in str(err) or path.name in str(err)
    else:
        assert_sane(read_stats(path))
    return err


# ------------------------------------------------------------------------------- strategies

_finite = st.floats(allow_nan=False, allow_infinity=False)
#: text h5py can store as an attribute (variable-length strings cannot hold NUL)
_str = st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=40)
_any_float = st.floats(allow_nan=True, allow_infinity=True)
_arrays = st.one_of(
    st.lists(_any_float, min_size=1, max_size=5).map(lambda v: np.array(v, dtype=np.float64)),
    st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=5).map(lambda v: np.array(v, dtype=np.int64)),
    st.lists(_str, min_size=1, max_size=3).map(lambda v: np.array(v, dtype=object)),
)
_deep = st.integers(1000, 100_000).map(lambda n: "[" * n)
_text = st.one_of(_str, _deep, st.just("x" * 100_000))

#: values whose type is wrong for a string attribute / a number attribute / an integer attribute
wrong_for_str = st.one_of(_any_float, st.integers(-2**63, 2**63 - 1), st.booleans(), _arrays,
                          st.complex_numbers(allow_nan=False, allow_infinity=False))
wrong_for_num = st.one_of(_text, st.booleans(), _arrays, st.complex_numbers(allow_nan=False, allow_infinity=False))
wrong_for_int = st.one_of(wrong_for_num, _any_float)
#: anything at all
anything = st.one_of(_any_float, st.integers(-2**63, 2**63 - 1), _text, st.booleans(), _arrays,
                     st.sampled_from([-1, 0, 1, 1e-30, 1e30, "", "max", "relu", "{}", "[]", '{"input_shape": [1]}']))


@st.composite
def wrong_typed_attribute(draw):
    if draw(st.booleans()):
        key = draw(st.sampled_from(FILE_STR + FILE_NUM))
        value = draw(wrong_for_num if key in FILE_NUM else wrong_for_str)
        return None, key, value
    key = draw(st.sampled_from(_NODE_ATTRS))
    value = draw(wrong_for_str if key in NODE_STR else wrong_for_int if key in NODE_INT else wrong_for_num)
    return draw(st.integers(0, 1000)), key, value


@st.composite
def bad_value(draw):
    """Right type, impossible value."""
    case = draw(st.sampled_from(["count", "channels", "percentile", "p", "file-p", "fallback", "role",
                                 "error_bound", "sha"]))
    if case == "count":
        v = draw(st.one_of(st.integers(-2**63, -1), st.just(np.int64(-1))))
        return draw(st.integers(0, 1000)), "count", v
    if case == "channels":
        return draw(st.integers(0, 1000)), "channels", draw(st.integers(-2**63, -1))
    if case == "percentile":
        v = draw(st.one_of(st.sampled_from([math.inf, -math.inf, math.nan]), st.floats(max_value=-1e-300)))
        return draw(st.integers(0, 1000)), "percentile", v
    if case == "p":
        v = draw(st.one_of(st.sampled_from([math.inf, -math.inf, math.nan, 0.0, 100.5]), st.floats(max_value=0),
                           st.floats(min_value=100.0001)))
        return draw(st.integers(0, 1000)), "p", v
    if case == "file-p":
        v = draw(st.one_of(st.sampled_from([math.inf, math.nan, 0.0]), st.floats(max_value=0),
                           st.floats(min_value=100.0001)))
        return None, "p", v
    if case == "fallback":
        v = draw(_str.filter(lambda s: s not in ("", "max", "one")))
        return draw(st.integers(0, 1000)), "fallback", v
    if case == "role":
        return draw(st.integers(0, 1000)), "role", draw(st.sampled_from(["", "r" * 65]))
    if case == "error_bound":
        return draw(st.integers(0, 1000)), "error_bound", draw(st.one_of(st.just(-math.inf), st.floats(max_value=-1e-300)))
    return None, "content_sha256", draw(st.one_of(_str, st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda s: s + "0")))


# ------------------------------------------------------------------------------- fuzz tests

@FUZZ
@given(case=wrong_typed_attribute())
def test_fuzz_wrong_typed_attributes_refused(base, names, case):
    node, key, value = case
    with variant(base) as path:
        where = "/" if node is None else f"nodes/{names[node % len(names)]}"
        set_attr(path, where, key, value)
        if key != "content_sha256":
            rehash(path)
        refused(path)


@FUZZ
@given(case=bad_value())
def test_fuzz_impossible_values_refused(base, names, case):
    node, key, value = case
    with variant(base) as path:
        set_attr(path, "/" if node is None else f"nodes/{names[node % len(names)]}", key, value)
        if key != "content_sha256":
            assert rehash(path)
        refused(path)


@FUZZ
@given(node=st.one_of(st.none(), st.integers(0, 1000)), key=st.data(), value=anything)
def test_fuzz_random_attribute_values(base, names, node, key, value):
    """Any value anywhere: refused, or read into the types and ranges the converter relies on."""
    key = key.draw(st.sampled_from(FILE_STR + FILE_NUM if node is None else _NODE_ATTRS))
    with variant(base) as path:
        set_attr(path, "/" if node is None else f"nodes/{names[node % len(names)]}", key, value)
        if key != "content_sha256":
            rehash(path)
        refused(path, allow_success=True)


@FUZZ
@given(node=st.one_of(st.none(), st.integers(0, 1000)), key=st.data())
def test_fuzz_deleted_attributes_refused(base, names, node, key):
    key = key.draw(st.sampled_from(FILE_STR + FILE_NUM if node is None else _NODE_ATTRS))
    with variant(base) as path:
        with h5py.File(path, "r+") as f:
            obj = f if node is None else f["nodes"][names[node % len(names)]]
            del obj.attrs[key]
        refused(path)


GHOSTS = ["listed-no-group", "group-not-listed", "group-deleted", "unlisted-copy", "group-is-dataset",
          "soft-link", "external-link", "dataset-deleted", "nodes-missing", "nodes-is-dataset", "dataset-is-group"]


@FUZZ
@given(case=st.sampled_from(GHOSTS), node=st.integers(0, 1000), ghost=st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True))
def test_fuzz_ghost_nodes_refused(base, names, case, node, ghost):
    name = names[node % len(names)]
    assume(ghost not in names)
    with variant(base) as path:
        with h5py.File(path, "r+") as f:
            g = f["nodes"]
            order = json.loads(f.attrs["node_order"])
            if case == "listed-no-group":
                f.attrs["node_order"] = json.dumps(order + [ghost])
            elif case == "group-not-listed":
                f.attrs["node_order"] = json.dumps([n for n in order if n != name])
            elif case == "group-deleted":
                del g[name]
            elif case == "unlisted-copy":
                g.copy(g[name], ghost)
            elif case == "group-is-dataset":
                del g[name]
                g.create_dataset(name, data=np.zeros(3))
            elif case == "soft-link":
                other = names[(node + 1) % len(names)]
                del g[name]
                g[name] = h5py.SoftLink(f"/nodes/{other}")
            elif case == "external-link":
                del g[name]
                g[name] = h5py.ExternalLink(str(base), f"/nodes/{name}")
            elif case == "dataset-deleted":
                del g[name]["histogram" if node % 2 else "bin_edges"]
            elif case == "nodes-missing":
                del f["nodes"]
            elif case == "nodes-is-dataset":
                del f["nodes"]
                f.create_dataset("nodes", data=np.zeros(3))
            elif case == "dataset-is-group":
                del g[name]["bin_edges"]
                g[name].create_group("bin_edges")
        rehash(path)
        refused(path)


@st.composite
def junk_order(draw):
    kind = draw(st.sampled_from(["json-non-list", "list-non-str", "mixed", "duplicate", "bad-name", "not-json",
                                 "deep", "too-many"]))
    if kind == "json-non-list":
        return json.dumps(draw(st.one_of(st.integers(), _finite, st.text(max_size=10), st.none(),
                                         st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))))
    if kind == "list-non-str":
        return json.dumps(draw(st.lists(st.one_of(st.integers(), _finite, st.none(), st.lists(st.integers(), max_size=2)),
                                        min_size=1, max_size=5)))
    if kind == "mixed":
        return None  # filled in with the real names plus a non-string
    if kind == "duplicate":
        return "duplicate"
    if kind == "bad-name":
        return json.dumps([draw(st.sampled_from(["", ".", "..", "a/b", "x/histogram", "nodes", "a" * 2000,
                                                 "name with space", "é", "0abc", "a\x00b"]))])
    if kind == "not-json":
        return draw(st.sampled_from(["", "[", "not json", "['x']", "[1,", "{", "[\"x\"", "NaN]"]))
    if kind == "deep":
        return draw(_deep)
    return json.dumps([f"n{i}" for i in range(100_001)])


@FUZZ
@given(junk=junk_order(), extra=st.one_of(st.integers(), st.none(), _finite))
def test_fuzz_node_order_junk_refused(base, names, junk, extra):
    if junk is None:
        junk = json.dumps(names + [extra])
    elif junk == "duplicate":
        junk = json.dumps(names + names[:1])
    with variant(base) as path:
        set_attr(path, "/", "node_order", junk)
        rehash(path)
        refused(path)


DATASET_CASES = ["huge", "huge-pair", "total", "2d", "scalar", "null", "mismatch", "dtype", "edges-int",
                 "chunk", "lzf", "external"]


@FUZZ
@given(case=st.sampled_from(DATASET_CASES), node=st.integers(0, 1000), n=st.integers(MAX_BINS + 1, 1 << 36),
       which=st.sampled_from(["histogram", "bin_edges"]))
def test_fuzz_oversized_or_misshapen_datasets_refused(base, names, case, node, n, which):
    """Declared sizes and shapes are checked before anything is decompressed (file stays small)."""
    name = names[node % len(names)]
    with variant(base) as path:
        with h5py.File(path, "r+") as f:
            grp = f["nodes"][name]

            def replace(ds_name, **kw):
                del grp[ds_name]
                grp.create_dataset(ds_name, **kw)

            big = dict(dtype="i8", chunks=(1 << 16,), compression="gzip", fletcher32=True, fillvalue=0)
            if case == "huge":
                replace(which, shape=(n,), **big)
            elif case == "huge-pair":
                m = min(n, (1 << 31) - 2)
                replace("histogram", shape=(m,), **big)
                replace("bin_edges", shape=(m + 1,), **{**big, "dtype": "f8"})
            elif case == "total":  # every node at the bin limit: too much together
                for nm in names:
                    g2 = f["nodes"][nm]
                    del g2["histogram"], g2["bin_edges"]
                    g2.create_dataset("histogram", shape=(MAX_BINS,), **big)
                    g2.create_dataset("bin_edges", shape=(MAX_BINS + 1,), **{**big, "dtype": "f8"})
            elif case == "2d":
                replace(which, data=np.zeros((16, 17) if which == "bin_edges" else (16, 16)))
            elif case == "scalar":
                replace(which, data=np.float64(1.0))
            elif case == "null":
                replace(which, data=h5py.Empty("f8"))
            elif case == "mismatch":
                k = grp["histogram"].shape[0]
                replace("bin_edges", data=np.zeros(k + 1 + (n % 7) + 1 if node % 2 else k))
            elif case == "dtype":
                dt = [np.dtype("S4"), np.dtype([("a", "f8"), ("b", "i4")]), np.dtype(bool), np.dtype("c16"),
                      h5py.string_dtype(), np.dtype(("f8", (2,)))][node % 6]
                k = grp[which].shape[0]
                replace(which, shape=(k,), dtype=dt)
            elif case == "edges-int":
                k = grp["bin_edges"].shape[0]
                replace("bin_edges", data=np.arange(k, dtype=np.int64))
            elif case == "chunk":
                k = grp[which].shape[0]
                replace(which, shape=(k,), maxshape=(None,), dtype="f8", chunks=(1 << 28,))
            elif case == "lzf":
                replace(which, data=grp[which][()], compression="lzf")
            elif case == "external":
                k = grp[which].shape[0]
                replace(which, shape=(k,), dtype="f8", external=[("/dev/zero", 0, k * 8)])
        rehash(path)
        assert path.stat().st_size < 4 << 20
        refused(path)


@FUZZ
@given(data=st.data())
def test_fuzz_byte_flips(base, data):
    """Flipped bytes anywhere: refused, or (a flip in an unused byte) read like the original."""
    raw = bytearray(base.read_bytes())
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), min_size=1, max_size=8))
    for pos, x in flips:
        raw[pos] ^= x
    with variant(base) as path:
        path.write_bytes(bytes(raw))
        refused(path, allow_success=True)


@FUZZ
@given(data=st.data())
def test_fuzz_truncations_refused(base, data):
    size = base.stat().st_size
    keep = data.draw(st.one_of(st.integers(0, size - 1), st.integers(max(0, size - 64), size - 1)))
    with variant(base) as path:
        path.write_bytes(base.read_bytes()[:keep])
        refused(path)
