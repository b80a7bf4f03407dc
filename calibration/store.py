"""HDF5 schema of calibration statistics (spec §4).

One group per recorded tensor, named by its FX node, under ``/nodes``; attributes
``percentile`` (λ), ``p``, ``max``, ``min``, ``mean``, ``count``, ``channels``, ``role``,
``error_bound``, ``fallback`` ("" | "max" | "one": a dead layer's fallback λ, spec §4) and
``raw_percentile``, datasets ``histogram`` and ``bin_edges`` (fletcher32-checksummed). File
attributes: ``model_fingerprint`` (hash of architecture and weights), ``data`` (JSON description
of the calibration data), ``options``, ``versions``, ``graph`` (JSON), ``created``, ``node_order``
(JSON list) and ``content_sha256``: a hash over every attribute and dataset above, verified on
read, so a flipped bit in a stored λ is refused rather than converted. Written atomically
(temp file + rename).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sjunet.io import ArtifactError, atomic_path

SCHEMA = "sjunet-calibration/2"
_NODE_ATTRS = ("role", "percentile", "p", "max", "min", "mean", "count", "channels", "error_bound", "fallback",
               "raw_percentile")


class StatsMismatchError(ArtifactError):
    """The statistics were computed on a different model than the one being converted."""


@dataclass
class TensorStats:
    """Statistics of one recorded tensor (one FX node) over the whole calibration set."""

    name: str
    role: str  # 'input' | 'relu' | 'cat' | 'cat-part' | 'linear'
    percentile: float
    p: float
    max: float
    min: float
    mean: float
    count: int
    channels: int
    error_bound: float
    histogram: np.ndarray = field(repr=False)
    bin_edges: np.ndarray = field(repr=False)
    fallback: str | None = None  # a dead layer's fallback: 'max' | 'one'
    raw_percentile: float | None = None  # the percentile before the fallback


@dataclass
class CalibrationStats:
    """All recorded tensors of one model, plus what made them."""

    nodes: dict[str, TensorStats]
    model_fingerprint: str
    p: float
    data: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    graph: dict[str, Any] = field(default_factory=dict)

    @property
    def dead(self) -> dict[str, TensorStats]:
        """ReLUs that never (or almost never) fire on the calibration data: λ is a fallback."""
        return {k: v for k, v in self.nodes.items() if v.fallback and v.role == "relu"}

    def scale(self, name: str) -> float:
        """λ of node ``name``; a missing, zero or non-finite λ is an error naming the node."""
        if name not in self.nodes:
            raise ArtifactError(
                f"no calibration statistics for FX node {name!r}; the statistics file does not "
                f"cover this graph (recorded: {', '.join(self.nodes)}). Re-run `sjunet calibrate`."
            )
        lam = self.nodes[name].percentile
        if not (np.isfinite(lam) and lam > 0):
            raise ArtifactError(
                f"calibration λ of node {name!r} is {lam} (p={self.nodes[name].p}); a scale must be "
                "positive and finite; re-run `sjunet calibrate` (it records a fallback for dead layers)."
            )
        return float(lam)

    def check_model(self, fingerprint: str, source: str = "the statistics") -> None:
        if fingerprint != self.model_fingerprint:
            raise StatsMismatchError(
                f"{source} were computed for model {self.model_fingerprint}, but the model to convert "
                f"has fingerprint {fingerprint}. Run `sjunet calibrate` on this checkpoint first."
            )


def _content_hash(file_attrs: dict[str, Any], nodes: dict[str, dict[str, Any]], arrays: dict[str, tuple]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(file_attrs, sort_keys=True, default=str).encode())
    for name in sorted(nodes):
        h.update(name.encode())
        h.update(json.dumps(nodes[name], sort_keys=True, default=str).encode())
        for a in arrays[name]:
            a = np.ascontiguousarray(a)
            h.update(str(a.dtype).encode())
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _attr(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        v = v.item()
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return float(v)
    return v


def write_stats(stats: CalibrationStats, path: str | os.PathLike) -> Path:
    """Write ``stats`` to ``path`` atomically, with a content hash over everything stored."""
    file_attrs = {
        "schema": SCHEMA, "model_fingerprint": stats.model_fingerprint, "p": float(stats.p),
        "data": json.dumps(stats.data, default=str), "options": json.dumps(stats.options, default=str),
        "versions": json.dumps(stats.versions), "created": stats.created,
        "node_order": json.dumps(list(stats.nodes)), "graph": json.dumps(stats.graph, default=str),
    }
    node_attrs = {name: {k: _attr(getattr(s, k) if not (k == "raw_percentile" and s.raw_percentile is None)
                                  else s.percentile) for k in _NODE_ATTRS} for name, s in stats.nodes.items()}
    arrays = {name: (np.asarray(s.histogram), np.asarray(s.bin_edges)) for name, s in stats.nodes.items()}
    digest = _content_hash(file_attrs, node_attrs, arrays)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for k, v in file_attrs.items():
                f.attrs[k] = v
            f.attrs["content_sha256"] = digest
            g = f.create_group("nodes")
            for name, attrs in node_attrs.items():
                n = g.create_group(name)
                for k, v in attrs.items():
                    n.attrs[k] = v
                hist, edges = arrays[name]
                n.create_dataset("histogram", data=hist, compression="gzip", fletcher32=True)
                n.create_dataset("bin_edges", data=edges, fletcher32=True)
    return Path(path)


def read_stats(path: str | os.PathLike) -> CalibrationStats:
    """Read statistics written by :func:`write_stats`; a wrong, foreign, old or altered file is a
    clear error (the content hash is recomputed and compared)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such statistics file (make one with `sjunet calibrate`)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ArtifactError(f"{path}: not an HDF5 file ({e})") from e
    try:
        with f:
            schema = f.attrs.get("schema")
            if schema != SCHEMA:
                if isinstance(schema, str) and schema.startswith("sjunet-calibration/"):
                    raise ArtifactError(f"{path}: statistics written by an earlier sjunet ({schema}); "
                                        "re-run `sjunet calibrate` to regenerate them")
                raise ArtifactError(f"{path}: not an sjunet calibration file (schema {schema!r})")
            file_attrs = {k: (f.attrs[k].item() if isinstance(f.attrs[k], np.generic) else f.attrs[k])
                          for k in ("schema", "model_fingerprint", "p", "data", "options", "versions", "created",
                                    "node_order", "graph")}
            order = json.loads(file_attrs["node_order"])
            node_attrs, arrays = {}, {}
            for name in order:
                n = f["nodes"][name]
                node_attrs[name] = {k: (n.attrs[k].item() if isinstance(n.attrs[k], np.generic) else n.attrs[k])
                                    for k in _NODE_ATTRS}
                arrays[name] = (n["histogram"][()], n["bin_edges"][()])
            stored = f.attrs.get("content_sha256")
    except OSError as e:  # fletcher32 mismatch, truncated file
        raise ArtifactError(f"{path}: corrupt statistics file ({e}); re-run `sjunet calibrate`") from None
    if stored != _content_hash(file_attrs, node_attrs, arrays):
        raise ArtifactError(f"{path}: integrity check failed — the statistics changed after they were written "
                            "(content hash mismatch); re-run `sjunet calibrate`")
    nodes = {}
    for name in order:
        a = node_attrs[name]
        nodes[name] = TensorStats(
            name=name, role=str(a["role"]), percentile=float(a["percentile"]), p=float(a["p"]),
            max=float(a["max"]), min=float(a["min"]), mean=float(a["mean"]), count=int(a["count"]),
            channels=int(a["channels"]), error_bound=float(a["error_bound"]),
            histogram=arrays[name][0], bin_edges=arrays[name][1],
            fallback=str(a["fallback"]) or None, raw_percentile=float(a["raw_percentile"]))
    return CalibrationStats(
        nodes=nodes, model_fingerprint=str(file_attrs["model_fingerprint"]), p=float(file_attrs["p"]),
        data=json.loads(file_attrs["data"]), options=json.loads(file_attrs["options"]),
        versions=json.loads(file_attrs["versions"]), created=str(file_attrs["created"]),
        graph=json.loads(file_attrs["graph"]))
