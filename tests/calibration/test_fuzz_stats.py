"""Fuzz layer of the calibration statistics file (``sjunet.calibration.store``).

One small valid stats file is built per module; each hypothesis example copies it into a fresh
directory, mutates it in place with h5py, and — like an attacker, since the content hash is
unkeyed — recomputes ``content_sha256`` over the mutated attributes and arrays where it can. Every
variant must be refused by :func:`read_stats` with one line naming the file, in bounded time and
memory (:func:`fuzzing.refused_cleanly`). Then regression tests for each reported case, and a
write onto a really full file system.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fulldisk import fill, full_disk  # noqa: F401 - fixture
from fuzzing import refused_cleanly
from sjunet.calibration import calibrate
from sjunet.calibration.reader import MAX_BINS, read_stats
from sjunet.calibration.store import CalibrationStats, write_stats
from sjunet.calibration.store import NODE_ATTRS as _NODE_ATTRS
from sjunet.calibration.store import content_hash as _content_hash
from sjunet.io import ArtifactError, NoSpaceError
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


# ------------------------------------------------------------------------------- regressions

def test_regression_3gb_declared_gzip_dataset_refused_fast(base, names):
    """Reported: a 173 KB file declaring a 3 GB gzip dataset took 39 s and 3.5 GB, then a traceback."""
    with variant(base) as path:
        with h5py.File(path, "r+") as f:
            g = f["nodes"][names[1]]
            del g["histogram"]
            g.create_dataset("histogram", shape=((3 << 30) // 8,), dtype="i8", chunks=(1 << 20,),
                             compression="gzip", fletcher32=True, fillvalue=0)
        assert path.stat().st_size < 1 << 20
        t0 = time.monotonic()
        err = refused(path)
        assert time.monotonic() - t0 < 5.0
        assert "histogram" in str(err) and "bins" in str(err)


def _heap_objects(raw: bytes) -> list[tuple[int, int, int]]:
    """``(offset, index, size)`` of the objects of the file's first global heap collection."""
    o = raw.index(b"GCOL\x01")
    size = int.from_bytes(raw[o + 8:o + 16], "little")
    p, out = o + 16, []
    while p + 16 <= o + size:
        idx, n = int.from_bytes(raw[p:p + 2], "little"), int.from_bytes(raw[p + 8:p + 16], "little")
        out.append((p, idx, n))
        p += 16 + (n + 7) // 8 * 8 if idx else n
    return out


@pytest.mark.parametrize("case", ["free-space-size-0", "object-overruns"])
def test_regression_corrupt_global_heap_refused_not_hung(base, case):
    """Found by the byte-flip fuzzer: a flipped bit that zeroes the size of a global heap's free
    space made libhdf5 loop forever (native code: no timeout can stop it)."""
    raw = bytearray(base.read_bytes())
    objs = _heap_objects(bytes(raw))
    if case == "free-space-size-0":
        p = next(p for p, idx, n in objs if idx == 0)
        raw[p + 8:p + 16] = (0).to_bytes(8, "little")
    else:
        p = next(p for p, idx, n in objs if idx > 0)
        raw[p + 8:p + 16] = (1 << 40).to_bytes(8, "little")
    with variant(base) as path:
        path.write_bytes(bytes(raw))
        assert "global heap" in str(refused(path))


def test_regression_count_inf(base, names):
    with variant(base) as path:
        set_attr(path, f"nodes/{names[0]}", "count", math.inf)
        assert rehash(path)
        assert "count" in str(refused(path))


def test_regression_node_order_not_names(base):
    with variant(base) as path:
        set_attr(path, "/", "node_order", "[1, 2]")
        rehash(path)  # cannot be hashed (names are not strings): the reader crashed before hashing
        assert "node_order" in str(refused(path))


def test_regression_missing_attribute(base, names):
    with variant(base) as path:
        with h5py.File(path, "r+") as f:
            del f["nodes"][names[2]].attrs["mean"]
        err = refused(path)
        assert "'mean'" in str(err) and "missing" in str(err)
    with variant(base) as path:
        with h5py.File(path, "r+") as f:
            del f.attrs["graph"]
        assert "'graph'" in str(refused(path))


def test_regression_ghost_node(base):
    with variant(base) as path:
        with h5py.File(path, "r+") as f:
            f.attrs["node_order"] = json.dumps(json.loads(f.attrs["node_order"]) + ["ghost"])
        rehash(path)  # not hashable (no such group): the reader raised KeyError before hashing
        err = refused(path)
        assert "'ghost'" in str(err)


def test_regression_channels_abc(base, names):
    with variant(base) as path:
        set_attr(path, f"nodes/{names[0]}", "channels", "abc")
        assert rehash(path)
        assert "channels" in str(refused(path))


def test_regression_deeply_nested_json(base):
    for key in ("data", "options", "graph", "versions"):
        with variant(base) as path:
            set_attr(path, "/", key, "[" * 100_000)
            assert rehash(path)
            assert key in str(refused(path))


def test_regression_huge_string_attribute(base):
    with variant(base) as path:
        set_attr(path, "/", "data", json.dumps({"note": "x" * (17 << 20)}))
        assert rehash(path)
        err = str(refused(path))  # now from the raw file, before h5py allocates it
        assert "'data'" in err and "byte string" in err


@pytest.mark.parametrize("lam", [1e-30, 1e30])
def test_regression_implausible_lambda_warns(base, names, lam):
    with variant(base) as path:
        set_attr(path, f"nodes/{names[1]}", "percentile", lam)
        assert rehash(path)
        s = read_stats(path)  # a plausible-looking file: read, but its λ is warned about where used
        with pytest.warns(UserWarning, match=rf"{names[1]}.*re-run `sjunet calibrate`"):
            assert s.scale(names[1]) == lam
        assert s.implausible() == {names[1]: lam}
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            s.scale(names[1])  # once per node
            s.scale(names[0])  # a plausible λ: silent


def test_valid_file_reads_and_old_writer_format(base, names, tmp_path):
    """The in-memory writer keeps the format: a file written like before (h5py straight to the
    path) still reads, and a re-written file reads back the same."""
    s = read_stats(base)
    assert_sane(s)
    assert not s.implausible()
    out = write_stats(s, tmp_path / "again.h5")
    r = read_stats(out)
    assert list(r.nodes) == names and r.model_fingerprint == s.model_fingerprint
    for n in names:
        assert r.nodes[n].percentile == s.nodes[n].percentile
        assert np.array_equal(r.nodes[n].histogram, s.nodes[n].histogram)
    # the previous writer, verbatim apart from the temp file
    from sjunet.calibration.store import SCHEMA, _attr
    file_attrs = {
        "schema": SCHEMA, "model_fingerprint": s.model_fingerprint, "p": float(s.p),
        "data": json.dumps(s.data, default=str), "options": json.dumps(s.options, default=str),
        "versions": json.dumps(s.versions), "created": s.created,
        "node_order": json.dumps(list(s.nodes)), "graph": json.dumps(s.graph, default=str)}
    node_attrs = {name: {k: _attr(getattr(t, k) if not (k == "raw_percentile" and t.raw_percentile is None)
                                  else t.percentile) for k in _NODE_ATTRS} for name, t in s.nodes.items()}
    arrays = {name: (np.asarray(t.histogram), np.asarray(t.bin_edges)) for name, t in s.nodes.items()}
    with h5py.File(tmp_path / "old.h5", "w") as f:
        for k, v in file_attrs.items():
            f.attrs[k] = v
        f.attrs["content_sha256"] = _content_hash(file_attrs, node_attrs, arrays)
        g = f.create_group("nodes")
        for name, attrs in node_attrs.items():
            n = g.create_group(name)
            for k, v in attrs.items():
                n.attrs[k] = v
            n.create_dataset("histogram", data=arrays[name][0], compression="gzip", fletcher32=True)
            n.create_dataset("bin_edges", data=arrays[name][1], fletcher32=True)
    old = read_stats(tmp_path / "old.h5")
    assert list(old.nodes) == names and old.nodes[names[0]].count == s.nodes[names[0]].count


def test_write_stats_on_full_disk(base, full_disk):
    """Reported: h5py writing onto a full disk crashed (exit 139, 321 lines) and left a .tmp."""
    stats = read_stats(base)
    target = full_disk / "stats.h5"
    shutil.copyfile(base, target)
    before = target.read_bytes()
    fill(full_disk)
    with pytest.raises(NoSpaceError) as e:
        write_stats(stats, target)
    msg = str(e.value)
    assert "no space left" in msg and "\n" not in msg and str(target) in msg
    assert isinstance(e.value, ArtifactError)
    assert target.read_bytes() == before
    assert not [p.name for p in full_disk.iterdir() if p.name.endswith(".tmp")]
    read_stats(target)


# ------------------------------------------------------------------ stored string lengths (issue 27)

@FUZZ
@given(data=st.data())
def test_fuzz_string_lengths(base, data):
    """The stored length of a variable-length string attribute (4 bytes beside its heap address)
    edited — huge, just over the file, or with the address pointing elsewhere: libhdf5 allocates
    the length before it reads the string, so the reader must refuse it from the raw file first."""
    from hostile import set_string_length, string_descriptors

    n = len(string_descriptors(base.read_bytes()))
    which = data.draw(st.integers(0, n - 1), label="string")
    size = base.stat().st_size
    length = data.draw(st.one_of(st.integers(size + 1, 2**32 - 1), st.sampled_from([2**32 - 1, 2**31, 17 << 20])),
                       label="length")
    address = data.draw(st.one_of(st.none(), st.integers(0, 2**64 - 1), st.integers(0, size)), label="address")
    with variant(base) as path:
        set_string_length(path, which, length, address)
        t0 = time.monotonic()
        refused(path)
        assert time.monotonic() - t0 < 5.0


def test_regression_string_length_0xffffffff_refused_in_bounded_memory(base):
    """Reported: a 4-byte edit (one string's stored length set to 0xffffffff) took 4.7 GB and 33 s."""
    from hostile import set_string_length

    for address in (None, 0):
        with variant(base) as path:
            set_string_length(path, 0, 0xFFFFFFFF, address)
            assert "string" in str(refused(path))


# ------------------------------------------------- the approximation record of a norm model (issue 26)

#: JSON values an attacker can put anywhere in the approximation record (NaN and ±inf included: json
#: writes them as tokens that json.loads reads back)
_json_junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), _any_float, st.text(max_size=12),
              st.just("x" * 5000)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)
_near_intervals = st.one_of(
    st.lists(_any_float, min_size=0, max_size=3),
    st.tuples(_finite, _finite).map(list),
    st.sampled_from([[0.2, 0.1], [-1.0, 0.5], [0.9, 1.5], [math.nan, 0.1], [0.1, math.inf], [0.1], "0.1,0.2"]))
#: (path in the record, values): the fields issue 26 added, which old files do not have
APPROX_FIELDS = (("interval",), ("interval", "relative_error"), ("interval", "agreement"),
                 ("interval", "confidence"), ("interval", "method"), ("degenerate",), ("estimated_on",))


@pytest.fixture(scope="module")
def norm_base(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 2, 1)).eval()
    g = torch.Generator().manual_seed(0)
    data = [torch.rand(2, 1, 16, 16, generator=g) for _ in range(3)]
    stats = calibrate(model, data, progress=False, nbins=1024, gap_data=data[:1], gap_description="validation")
    assert {"interval", "degenerate", "estimated_on"} <= set(stats.approximation)
    path = tmp_path_factory.mktemp("norm-stats") / "stats.h5"
    write_stats(stats, path)
    read_stats(path)
    return path


def rehash_all(path: Path) -> None:
    """Recompute ``content_sha256`` over every attribute and array of a (small) file, the
    approximation record and the ``sigma`` datasets included, as an attacker would."""
    with h5py.File(path, "r+") as f:
        fa = {k: _val(f.attrs[k]) for k in (*_HASHED_FILE, "approximation") if k in f.attrs}
        order = json.loads(fa["node_order"])
        na = {n: {k: _val(f["nodes"][n].attrs[k]) for k in _NODE_ATTRS} for n in order}
        arrays = {n: tuple(f["nodes"][n][d][()] for d in ("histogram", "bin_edges", "sigma") if d in f["nodes"][n])
                  for n in order}
        f.attrs["content_sha256"] = _content_hash(fa, na, arrays)


def assert_sane_approximation(a: dict | None) -> None:
    """What convert and the CLI rely on in an accepted approximation record."""
    assert isinstance(a, dict)
    iv = a.get("interval")
    if iv is not None:
        assert isinstance(iv, dict)
        for key, hi in (("relative_error", math.inf), ("agreement", 1.0)):
            v = iv.get(key)
            assert v is None or (isinstance(v, list) and len(v) == 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
                and 0 <= v[0] <= v[1] <= hi), v
        assert iv.get("confidence") is None or 0 < iv["confidence"] < 1
        assert isinstance(iv.get("method", ""), str)
    assert a.get("degenerate") is None or (isinstance(a["degenerate"], str) and len(a["degenerate"]) <= 1024)
    assert isinstance(a.get("estimated_on", ""), str) and len(a.get("estimated_on", "")) <= 1024
    from sjunet.calibration.gap import gap_line, gap_refusal

    gap_line(a), gap_refusal(a)  # the CLI's lines format whatever was accepted


@FUZZ
@given(field=st.sampled_from(APPROX_FIELDS), value=st.one_of(_json_junk, _near_intervals), drop=st.booleans())
def test_fuzz_approximation_record(norm_base, field, value, drop):
    """The fields issue 26 added (interval, degenerate, estimated_on): any value, or the field removed,
    in a correctly re-hashed file — refused in one line, or read into what the gate relies on."""
    with variant(norm_base) as path:
        with h5py.File(path, "r+") as f:
            a = json.loads(f.attrs["approximation"])
            holder = a
            for k in field[:-1]:
                holder = holder[k]
            if drop:
                holder.pop(field[-1], None)
            else:
                holder[field[-1]] = value
            del f.attrs["approximation"]
            f.attrs["approximation"] = json.dumps(a)
        rehash_all(path)
        if refused(path, allow_success=True) is None:
            assert_sane_approximation(read_stats(path).approximation)


def test_approximation_record_of_an_earlier_version_still_reads(norm_base, tmp_path):
    """Files written before issue 26 carry no interval, degenerate flag or estimated_on: they read, and
    the gate judges them as before (the interval is simply not shown)."""
    from sjunet.calibration.gap import gap_line

    s = read_stats(norm_base)
    s.approximation = {k: v for k, v in s.approximation.items() if k not in ("interval", "degenerate", "estimated_on")}
    old = read_stats(write_stats(s, tmp_path / "old.h5"))
    assert old.approximation == s.approximation and "interval" not in gap_line(old.approximation)
    assert "interval" in gap_line(read_stats(norm_base).approximation)
