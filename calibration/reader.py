"""Reading calibration statistics (:func:`read_stats`): the file written by
:func:`sjunet.calibration.store.write_stats`, trusting nothing in it.

Reading trusts nothing in the file (README, "What sjunet refuses and why"): the content hash is
unkeyed, so a crafted file can carry a correct one, and every check below must hold for a
correctly hashed hostile file too. :func:`read_stats` checks types, shapes, sizes and link kinds
before it reads any value or decompresses any dataset, and refuses anything else with one
:class:`~sjunet.io.ArtifactError` line naming the file.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sjunet.calibration.hdf5_bounds import MAX_STRING as BOUNDS_MAX_STRING
from sjunet.calibration.hdf5_bounds import RawHDF5, Refused, object_address
from sjunet.calibration.store import NODE_ATTRS, SCHEMA, CalibrationStats, TensorStats, content_hash
from sjunet.io import ArtifactError

# Bounds of what read_stats accepts (calibrate writes 256-bin histograms; a few thousand nodes).
MAX_NODES = 100_000
MAX_BINS = 1 << 20
MAX_STRING = BOUNDS_MAX_STRING  # bytes of one string attribute (JSON included)
MAX_JSON_DEPTH = 64
MAX_DECLARED_BYTES = 256 << 20  # all datasets together, decompressed
MAX_EXPANSION = 1000  # declared bytes per byte of file
MAX_CHUNKS = 4096  # chunks of one dataset
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,1023}")  # FX node names are identifiers
_FILTERS = {1, 2, 3}  # deflate, shuffle, fletcher32
_FALLBACKS = ("", "max", "one")
MAX_SIGMA = 65_536  # channels of a norm's fixed deviation
_NORM_KINDS = ("instance_norm", "group_norm", "layer_norm")
_APPROX_KEYS = {"nodes", "relative_error", "worst_sample_relative_error", "agreement", "samples", "held_out",
                "holdout", "estimated_on", "interval", "degenerate"}  # the last three: since issue 26 (optional)
_INTERVAL_KEYS = {"relative_error", "agreement", "confidence", "method"}
MAX_TEXT = 1024  #: characters of a free-text field of the approximation record
_APPROX_NODE_KEYS = {"node", "kind", "groups", "channels", "eps", "spread"}


class _Refused(Exception):
    """A check of :func:`read_stats` failed; becomes one ArtifactError line naming the file."""


def _show(v: Any, n: int = 60) -> str:
    r = repr(v) if not isinstance(v, np.ndarray) else f"array(shape={v.shape}, dtype={v.dtype})"
    r = r.replace("\n", " ")
    return r if len(r) <= n else r[:n] + "…"


def _child(group: h5py.Group, name: str, kind: type, where: str) -> Any:
    """``group[name]`` if it is a hard link to a ``kind`` (external and soft links are refused:
    they would make the reader open other files or loop)."""
    link = group.get(name, getlink=True)
    if link is None:
        raise _Refused(f"{where} is missing")
    if not isinstance(link, h5py.HardLink):
        raise _Refused(f"{where} is a {type(link).__name__}, not a stored {kind.__name__.lower()}")
    obj = group[name]
    if not isinstance(obj, kind):
        raise _Refused(f"{where} is a {type(obj).__name__}, expected a {kind.__name__.lower()}")
    return obj


def _read_attr(obj: Any, key: str, kind: str, where: str) -> Any:
    """One scalar attribute, its type checked before it is read: ``kind`` 'str', 'int' or 'float'."""
    if key not in obj.attrs:
        raise _Refused(f"{where}: attribute {key!r} is missing")
    aid = obj.attrs.get_id(key)
    dt = aid.dtype
    if aid.shape != ():
        raise _Refused(f"{where}: attribute {key!r} has shape {aid.shape}, expected a scalar")
    if kind == "str":
        info = h5py.check_string_dtype(dt)
        if info is None or info.length is not None:
            raise _Refused(f"{where}: attribute {key!r} is of type {dt}, expected a string")
    elif dt.kind not in ("iu" if kind == "int" else "iuf") or dt.itemsize > 8:
        raise _Refused(f"{where}: attribute {key!r} is of type {dt}, expected {'an integer' if kind == 'int' else 'a number'}")
    v = obj.attrs[key]
    if isinstance(v, np.generic):
        v = v.item()
    if kind == "str":
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise _Refused(f"{where}: attribute {key!r} is not UTF-8 text") from None
        if not isinstance(v, str):
            raise _Refused(f"{where}: attribute {key!r} is {type(v).__name__}, expected a string")
        if len(v) > MAX_STRING:
            raise _Refused(f"{where}: attribute {key!r} is {len(v)} characters long (at most {MAX_STRING})")
    elif kind == "int":
        if not isinstance(v, int) or isinstance(v, bool):
            raise _Refused(f"{where}: attribute {key!r} is {_show(v)}, expected an integer")
    elif not isinstance(v, (int, float)) or isinstance(v, bool):
        raise _Refused(f"{where}: attribute {key!r} is {_show(v)}, expected a number")
    return v


def _json_depth(v: Any) -> int:
    depth, stack = 0, [(v, 1)]
    while stack:
        x, d = stack.pop()
        depth = max(depth, d)
        if depth > MAX_JSON_DEPTH:
            break
        if isinstance(x, dict):
            stack.extend((y, d + 1) for y in x.values())
        elif isinstance(x, list):
            stack.extend((y, d + 1) for y in x)
    return depth


def _json(text: str, key: str, want: type) -> Any:
    try:
        v = json.loads(text)
    except RecursionError:
        raise _Refused(f"attribute {key!r} nests JSON too deeply") from None
    except ValueError as e:  # JSONDecodeError, over-long integers
        raise _Refused(f"attribute {key!r} is not valid JSON ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(v, want):
        raise _Refused(f"attribute {key!r} is JSON {type(v).__name__}, expected a {want.__name__}")
    if _json_depth(v) > MAX_JSON_DEPTH:
        raise _Refused(f"attribute {key!r} nests JSON deeper than {MAX_JSON_DEPTH} levels")
    return v


def _check_dataset(ds: h5py.Dataset, where: str, kinds: str) -> int:
    """Check a dataset's declaration (layout, filters, type, shape, chunks) without reading it;
    returns the bytes reading it may decompress (its size, or its chunk's when larger)."""
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT):
        raise _Refused(f"{where}: unsupported storage layout {layout} (a virtual dataset)")
    if dcpl.get_external_count():
        raise _Refused(f"{where}: stored in external files")
    filters = {dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())}
    if not filters <= _FILTERS:
        raise _Refused(f"{where}: unsupported HDF5 filter(s) {sorted(filters - _FILTERS)}")
    dt = ds.dtype
    if dt.kind not in kinds or dt.itemsize > 8 or dt.subdtype is not None:
        raise _Refused(f"{where}: of type {dt}, expected {'a float' if kinds == 'f' else 'a number'} array")
    shape = ds.shape
    if shape is None or len(shape) != 1:
        raise _Refused(f"{where}: has shape {shape}, expected a 1-D array")
    if shape[0] > MAX_BINS + 1:
        raise _Refused(f"{where}: declares {shape[0]} bins (at most {MAX_BINS})")
    elems = shape[0]
    if layout == h5py.h5d.CHUNKED:
        chunks = dcpl.get_chunk()
        if len(chunks) != 1 or not 0 < chunks[0] <= MAX_BINS + 1:
            raise _Refused(f"{where}: declares chunks of {chunks} elements")
        if -(-shape[0] // chunks[0]) > MAX_CHUNKS:
            raise _Refused(f"{where}: declares more than {MAX_CHUNKS} chunks")
        elems = max(elems, chunks[0])
    return elems * dt.itemsize


def _number_or_none(v: Any, what: str, lo: float = 0.0, hi: float = math.inf) -> float | None:
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not (math.isfinite(v) and lo <= v <= hi):
        raise _Refused(f"{what} is {_show(v)}, expected a finite number in [{lo:g}, {hi:g}] or null")
    return float(v)


def _count(v: Any, what: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _Refused(f"{what} is {_show(v)}, expected an integer in {lo}..{hi}")
    return v


def _check_approximation(a: dict) -> dict:
    """The ``approximation`` file attribute (norms with a fixed deviation and their gap), checked
    key by key: known keys only, node names, kinds, group and channel counts, finite numbers."""
    extra = set(a) - _APPROX_KEYS
    if extra or not {"nodes", "relative_error", "agreement", "samples", "held_out"} <= set(a):
        raise _Refused(f"attribute 'approximation' has keys {_show(sorted(a))}, expected {sorted(_APPROX_KEYS)}")
    nodes = a["nodes"]
    if not isinstance(nodes, list) or not 1 <= len(nodes) <= MAX_NODES:
        raise _Refused(f"approximation.nodes is {_show(nodes)}, expected a list of 1..{MAX_NODES} norm nodes")
    seen = set()
    for e in nodes:
        if not isinstance(e, dict) or set(e) != _APPROX_NODE_KEYS:
            raise _Refused(f"approximation.nodes holds {_show(e)}, expected objects with keys "
                           f"{sorted(_APPROX_NODE_KEYS)}")
        if not isinstance(e["node"], str) or not _NAME.fullmatch(e["node"]) or e["node"] in seen:
            raise _Refused(f"approximation.nodes names {_show(e['node'])}, not a (new) FX node name")
        seen.add(e["node"])
        if e["kind"] not in _NORM_KINDS:
            raise _Refused(f"approximation node {e['node']!r}: kind {_show(e['kind'])}, expected one of {_NORM_KINDS}")
        groups = _count(e["groups"], f"approximation node {e['node']!r}: groups", 1, MAX_SIGMA)
        channels = _count(e["channels"], f"approximation node {e['node']!r}: channels", 1, MAX_SIGMA)
        if channels % groups:
            raise _Refused(f"approximation node {e['node']!r}: {channels} channels do not split into {groups} groups")
        if _number_or_none(e["eps"], f"approximation node {e['node']!r}: eps") is None or e["eps"] <= 0:
            raise _Refused(f"approximation node {e['node']!r}: eps is {_show(e['eps'])}, expected a positive number")
        _number_or_none(e["spread"], f"approximation node {e['node']!r}: spread")
    _number_or_none(a["relative_error"], "approximation.relative_error")
    _number_or_none(a.get("worst_sample_relative_error"), "approximation.worst_sample_relative_error")
    _number_or_none(a["agreement"], "approximation.agreement", 0.0, 1.0)
    _count(a["samples"], "approximation.samples", 1, 1 << 62)
    if not isinstance(a["held_out"], bool):
        raise _Refused(f"approximation.held_out is {_show(a['held_out'])}, expected true or false")
    for key in ("holdout", "estimated_on"):
        if not isinstance(a.get(key, ""), str) or len(a.get(key, "")) > MAX_TEXT:
            raise _Refused(f"approximation.{key} is not a short string")
    if a.get("degenerate") is not None and not (isinstance(a["degenerate"], str) and len(a["degenerate"]) <= MAX_TEXT):
        raise _Refused(f"approximation.degenerate is {_show(a['degenerate'])}, expected a short string or null")
    if "interval" in a:
        _check_interval(a["interval"], a)
    return a


def _check_interval(iv: Any, a: dict) -> None:
    """``approximation.interval``: a known-keys object whose ``relative_error`` / ``agreement`` are null or
    ``[low, high]`` (finite, low ≤ high, in the quantity's range, around its point value), ``confidence``
    in (0, 1), ``method`` a short string."""
    if not isinstance(iv, dict) or not set(iv) <= _INTERVAL_KEYS:
        raise _Refused(f"approximation.interval is {_show(iv)}, expected an object with keys {sorted(_INTERVAL_KEYS)}")
    for key, hi in (("relative_error", math.inf), ("agreement", 1.0)):
        v = iv.get(key)
        if v is None:
            continue
        if not (isinstance(v, list) and len(v) == 2):
            raise _Refused(f"approximation.interval.{key} is {_show(v)}, expected [low, high] or null")
        lo_, hi_ = (_number_or_none(x, f"approximation.interval.{key}", 0.0, hi) for x in v)
        if lo_ is None or hi_ is None or lo_ > hi_:
            raise _Refused(f"approximation.interval.{key} is {_show(v)}, expected finite low <= high")
        if a.get(key) is None:
            raise _Refused(f"approximation.interval.{key} is given but approximation.{key} is null")
    conf = iv.get("confidence")
    if conf is not None and (_number_or_none(conf, "approximation.interval.confidence", 0.0, 1.0) in (0.0, 1.0)):
        raise _Refused(f"approximation.interval.confidence is {_show(conf)}, expected a number in (0, 1)")
    if not isinstance(iv.get("method", ""), str) or len(iv.get("method", "")) > MAX_TEXT:
        raise _Refused("approximation.interval.method is not a short string")


def _check_sigmas(arrays: dict[str, tuple], approximation: dict | None) -> None:
    """Every norm the approximation lists has a ``sigma`` dataset (positive, finite, one value per
    channel of the norm) and no other node has one."""
    listed = {e["node"]: e for e in (approximation or {}).get("nodes", [])}
    have = {name for name, ds in arrays.items() if len(ds) > 2}
    if have != set(listed):
        odd = sorted(have ^ set(listed))[0]
        raise _Refused(f"node {odd!r}: a fixed deviation 'sigma' {'without' if odd in have else 'missing for'} "
                       "a norm listed in the 'approximation' attribute")
    for name in have:
        sig = arrays[name][2]
        if not (isinstance(sig, np.ndarray) and sig.ndim == 1 and sig.shape[0] == listed[name]["channels"]):
            raise _Refused(f"node {name!r}: 'sigma' is not one value per channel ({listed[name]['channels']})")
        if not (np.all(np.isfinite(sig)) and np.all(sig > 0)):
            raise _Refused(f"node {name!r}: 'sigma' holds a value that is not a positive finite deviation")


def read_stats(path: str | os.PathLike) -> CalibrationStats:
    """Read statistics written by :func:`~sjunet.calibration.store.write_stats`; a wrong, foreign, old, altered or crafted
    file is refused with one :class:`~sjunet.io.ArtifactError` line naming it.

    Bounded memory and time: the content hash covers the *decompressed* arrays, so it cannot be
    checked before decompressing them; instead every dataset's declaration (1-D, numeric, at most
    :data:`MAX_BINS` bins, ``len(bin_edges) == len(histogram) + 1``, only deflate/shuffle/fletcher32
    filters, bounded chunks, no external storage) is checked first, and all of them together may
    declare at most :data:`MAX_DECLARED_BYTES` and :data:`MAX_EXPANSION` times the file's size.
    That bounds what decompression can allocate before the hash is compared. What libhdf5 cannot
    bound itself is read from the raw file first (:mod:`sjunet.calibration.hdf5_bounds`): global
    heaps (where string attributes live) are walked before libhdf5 loads them (a corrupt one hangs
    it), and every object's variable-length attributes have their stored lengths bounded before
    h5py reads them (libhdf5 allocates the stored length first: a 4-byte edit asked for 4 GB).
    Attributes are checked for type and shape before they are read, strings are bounded
    (:data:`MAX_STRING`),
    JSON nesting too, and the node count (:data:`MAX_NODES`); links must be stored (hard) links.
    The hash is unkeyed, so none of these checks relies on it.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such statistics file (make one with `sjunet calibrate`)")
    try:
        raw = RawHDF5(path)
    except Refused as e:
        raise ArtifactError(f"{path}: refused, not a valid statistics file — {e}; re-run `sjunet calibrate`") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: cannot read it ({_oneline(e)})") from None
    with raw:
        return _read_bounded(raw, path)


def _read_bounded(raw: RawHDF5, path: Path) -> CalibrationStats:
    """:func:`read_stats` once the raw file is open: global heaps walked, then h5py, every object's
    attribute lengths bounded from the raw file before its attributes are read."""
    try:
        raw.check_heaps()
    except Refused as e:
        raise ArtifactError(f"{path}: refused, not a valid statistics file — {e}; re-run `sjunet calibrate`") from None
    try:
        f = h5py.File(path, "r")
    except Exception as e:  # noqa: BLE001 - OSError for a non-HDF5 file, anything for a crafted one
        raise ArtifactError(f"{path}: not an HDF5 file ({_oneline(e)})") from None
    try:
        with f:
            return _read(f, path, raw.size, raw)
    except ArtifactError:
        raise
    except (_Refused, Refused) as e:
        raise ArtifactError(f"{path}: refused, not a valid statistics file — {e}; re-run `sjunet calibrate`") from None
    except RecursionError:
        raise ArtifactError(f"{path}: refused, not a valid statistics file — nested too deeply; "
                            "re-run `sjunet calibrate`") from None
    except Exception as e:  # noqa: BLE001 - h5py/numpy on a corrupt file: fletcher32, truncation, bad types
        raise ArtifactError(f"{path}: corrupt statistics file ({_oneline(e)}); re-run `sjunet calibrate`") from None


def _oneline(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _read(f: h5py.File, path: Path, file_size: int, raw: RawHDF5) -> CalibrationStats:
    # 1. file attributes: their stored lengths bounded (raw file), types first, then the schema, then values
    raw.check_attributes(object_address(f), "file")
    if "schema" not in f.attrs:
        raise ArtifactError(f"{path}: not an sjunet calibration file (no schema)")
    schema = _read_attr(f, "schema", "str", "file")
    if schema != SCHEMA:
        if schema.startswith("sjunet-calibration/"):
            raise ArtifactError(f"{path}: statistics written by an earlier sjunet ({_show(schema)}); "
                                "re-run `sjunet calibrate` to regenerate them")
        raise ArtifactError(f"{path}: not an sjunet calibration file (schema {_show(schema)})")
    file_attrs: dict[str, Any] = {"schema": schema}
    for k in ("model_fingerprint", "p", "data", "options", "versions", "created", "node_order", "graph"):
        file_attrs[k] = _read_attr(f, k, "float" if k == "p" else "str", "file")
    stored = _read_attr(f, "content_sha256", "str", "file")
    if not re.fullmatch(r"[0-9a-f]{64}", stored):
        raise _Refused(f"content_sha256 is {_show(stored)}, not a sha256 hex digest")
    if len(file_attrs["model_fingerprint"]) > 256:
        raise _Refused("model_fingerprint is longer than 256 characters")
    if len(file_attrs["created"]) > 256:
        raise _Refused("created is longer than 256 characters")
    p = file_attrs["p"]
    if not (math.isfinite(p) and 0 < p <= 100):
        raise _Refused(f"file attribute 'p' is {_show(p)}, expected a percentile in (0, 100]")
    parsed = {k: _json(file_attrs[k], k, dict) for k in ("data", "options", "versions", "graph")}
    approximation = None
    if "approximation" in f.attrs:
        file_attrs["approximation"] = _read_attr(f, "approximation", "str", "file")
        approximation = _check_approximation(_json(file_attrs["approximation"], "approximation", dict))
    shape = parsed["data"].get("input_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) in (3, 4, 5) and all(
            isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 1 << 20 for s in shape)):
        raise _Refused(f"data.input_shape is {_show(shape)}, expected 3 to 5 positive sizes")
    order = _json(file_attrs["node_order"], "node_order", list)
    if len(order) > MAX_NODES:
        raise _Refused(f"node_order lists {len(order)} nodes (at most {MAX_NODES})")
    for name in order:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise _Refused(f"node_order holds {_show(name)}, not an FX node name")
    if len(set(order)) != len(order):
        raise _Refused("node_order lists a node twice")

    # 2. the node groups: exactly the listed ones; attributes and dataset declarations
    nodes_group = _child(f, "nodes", h5py.Group, "group /nodes")
    if len(nodes_group) > MAX_NODES:
        raise _Refused(f"/nodes holds {len(nodes_group)} groups (at most {MAX_NODES})")
    stray = set(nodes_group.keys()) - set(order)
    if stray:
        raise _Refused(f"/nodes holds group {_show(sorted(stray)[0])} that node_order does not list")
    node_attrs: dict[str, dict[str, Any]] = {}
    datasets: dict[str, tuple[h5py.Dataset, h5py.Dataset]] = {}
    declared = 0
    kinds = {"role": "str", "fallback": "str", "count": "int", "channels": "int"}
    for name in order:
        where = f"node {name!r}"
        n = _child(nodes_group, name, h5py.Group, where)
        raw.check_attributes(object_address(n), where)
        a = {k: _read_attr(n, k, kinds.get(k, "float"), where) for k in NODE_ATTRS}
        if not 0 < len(a["role"]) <= 64:
            raise _Refused(f"{where}: role {_show(a['role'])} is not a role name")
        if a["fallback"] not in _FALLBACKS:
            raise _Refused(f"{where}: fallback is {_show(a['fallback'])}, expected one of {_FALLBACKS}")
        if not 0 <= a["count"] < 1 << 62:
            raise _Refused(f"{where}: count is {a['count']}, expected a non-negative integer")
        if not 0 <= a["channels"] <= 1 << 31:
            raise _Refused(f"{where}: channels is {a['channels']}, expected a non-negative integer")
        lam = a["percentile"]
        if not (math.isfinite(lam) and lam >= 0):
            raise _Refused(f"{where}: percentile (λ) is {_show(lam)}, expected a finite non-negative number")
        if not (math.isfinite(a["p"]) and 0 < a["p"] <= 100):
            raise _Refused(f"{where}: p is {_show(a['p'])}, expected a percentile in (0, 100]")
        if a["error_bound"] < 0:
            raise _Refused(f"{where}: error_bound is {_show(a['error_bound'])}, expected a non-negative number")
        node_attrs[name] = a
        hist = _child(n, "histogram", h5py.Dataset, f"{where}: dataset 'histogram'")
        edges = _child(n, "bin_edges", h5py.Dataset, f"{where}: dataset 'bin_edges'")
        declared += _check_dataset(hist, f"{where}: dataset 'histogram'", "iuf")
        declared += _check_dataset(edges, f"{where}: dataset 'bin_edges'", "f")
        if edges.shape[0] != hist.shape[0] + 1:
            raise _Refused(f"{where}: {edges.shape[0]} bin edges for {hist.shape[0]} bins (expected one more)")
        if declared > min(MAX_DECLARED_BYTES, MAX_EXPANSION * max(file_size, 1)):
            raise _Refused(f"its datasets declare more than {min(MAX_DECLARED_BYTES, MAX_EXPANSION * file_size)} "
                           f"bytes (a {file_size}-byte file)")
        datasets[name] = (hist, edges)
        if n.get("sigma", getlink=True) is not None:
            sig = _child(n, "sigma", h5py.Dataset, f"{where}: dataset 'sigma'")
            declared += _check_dataset(sig, f"{where}: dataset 'sigma'", "f")
            if not 0 < sig.shape[0] <= MAX_SIGMA or (a["channels"] and sig.shape[0] != a["channels"]):
                raise _Refused(f"{where}: dataset 'sigma' has {sig.shape[0]} values for {a['channels']} channels")
            datasets[name] = (hist, edges, sig)

    # 3. the (bounded) arrays, then the content hash over everything
    arrays = {name: tuple(d[()] for d in ds) for name, ds in datasets.items()}
    _check_sigmas(arrays, approximation)
    for name, (h, e, *_) in arrays.items():
        if not (isinstance(h, np.ndarray) and isinstance(e, np.ndarray) and h.ndim == 1 and e.ndim == 1
                and e.shape[0] == h.shape[0] + 1):
            raise _Refused(f"node {name!r}: histogram/bin_edges did not read as 1-D arrays")
    if stored != content_hash(file_attrs, node_attrs, arrays):
        raise ArtifactError(f"{path}: integrity check failed — the statistics changed after they were written "
                            "(content hash mismatch); re-run `sjunet calibrate`")
    nodes = {}
    for name in order:
        a = node_attrs[name]
        nodes[name] = TensorStats(
            name=name, role=a["role"], percentile=float(a["percentile"]), p=float(a["p"]),
            max=float(a["max"]), min=float(a["min"]), mean=float(a["mean"]), count=int(a["count"]),
            channels=int(a["channels"]), error_bound=float(a["error_bound"]),
            histogram=arrays[name][0], bin_edges=arrays[name][1],
            fallback=a["fallback"] or None, raw_percentile=float(a["raw_percentile"]),
            sigma=arrays[name][2] if len(arrays[name]) > 2 else None)
    return CalibrationStats(
        nodes=nodes, model_fingerprint=file_attrs["model_fingerprint"], p=float(p),
        data=parsed["data"], options=parsed["options"], versions=parsed["versions"],
        created=file_attrs["created"], graph=parsed["graph"], approximation=approximation)
