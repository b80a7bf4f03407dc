"""The calibration statistics file, continued (:mod:`test_fuzz_stats` builds the valid file and the
helpers): regression tests for each reported case, a write onto a really full file system, stored
string lengths (issue 27) and the approximation record of a norm model (issue 26)."""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fulldisk import fill, full_disk  # noqa: F401 - fixture
from sjunet.calibration import calibrate
from sjunet.calibration.reader import read_stats
from sjunet.calibration.store import write_stats
from sjunet.calibration.store import NODE_ATTRS as _NODE_ATTRS
from sjunet.calibration.store import content_hash as _content_hash
from sjunet.io import ArtifactError, NoSpaceError
from test_fuzz_stats import (_HASHED_FILE, FUZZ, _any_float, _finite, _val, assert_sane, base, names, refused, rehash,
                             set_attr, variant)

__all__ = ["base", "names"]  # the module-scoped fixtures of test_fuzz_stats, shared


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
