"""HDF5 schema of calibration statistics (spec §4).

One group per recorded tensor, named by its FX node, under ``/nodes``; attributes
``percentile`` (λ), ``p``, ``max``, ``min``, ``mean``, ``count``, ``channels``, ``role``,
``error_bound``, ``fallback`` ("" | "max" | "one": a dead layer's fallback λ, spec §4) and
``raw_percentile``, datasets ``histogram`` and ``bin_edges`` (fletcher32-checksummed) and, for a
norm's division node (role ``norm``) only, ``sigma``: its fixed deviation σ̂ per channel. File
attributes: ``model_fingerprint`` (hash of architecture and weights), ``data`` (JSON description
of the calibration data), ``options``, ``versions``, ``graph`` (JSON), ``created``, ``node_order``
(JSON list), with instance/group/layer norms only ``approximation`` (JSON: the norms, and the gap
fixing their deviations costs the ANN — :mod:`.approximation` — estimated on samples not used to fit
them: since issue 26 with ``interval`` (its 95 % bootstrap interval), ``estimated_on`` (which samples)
and ``degenerate`` (why the ANN's output cannot show a gap, or null); earlier files lack these three
and read as before; files without norms are written as before, byte for byte) and ``content_sha256``: a hash over every attribute and dataset above, verified on
read, so a flipped bit in a stored λ is refused rather than converted. Serialised in memory
and written with :func:`sjunet.io.write_bytes_atomic` (temp file + rename), so a full disk is one
:class:`~sjunet.io.NoSpaceError` line and never damages the previous file.

Reading is :mod:`.reader` (:func:`~sjunet.calibration.reader.read_stats`): it trusts nothing in the file.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sjunet.io import ArtifactError, write_bytes_atomic

SCHEMA = "sjunet-calibration/2"
NODE_ATTRS = ("role", "percentile", "p", "max", "min", "mean", "count", "channels", "error_bound", "fallback",
               "raw_percentile")


#: λ outside this range is accepted but warned about (:meth:`CalibrationStats.scale`)
PLAUSIBLE_LAMBDA = (1e-8, 1e8)


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
    sigma: np.ndarray | None = field(default=None, repr=False)  # a norm node's fixed deviation σ̂ per channel


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
    #: instance/group/layer norms with a fixed deviation and the gap that costs the ANN
    #: (:mod:`sjunet.calibration.approximation`); None without norms
    approximation: dict[str, Any] | None = None
    _warned: set = field(default_factory=set, init=False, repr=False, compare=False)

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
        if not PLAUSIBLE_LAMBDA[0] <= lam <= PLAUSIBLE_LAMBDA[1] and name not in self._warned:
            self._warned.add(name)
            warnings.warn(
                f"calibration λ of node {name!r} is {lam:.3g}, outside the plausible range "
                f"[{PLAUSIBLE_LAMBDA[0]:g}, {PLAUSIBLE_LAMBDA[1]:g}] of an activation scale (p={self.nodes[name].p:g}); "
                "the statistics are probably corrupt or come from a broken model — re-run `sjunet calibrate`",
                UserWarning, stacklevel=2)
        return float(lam)

    def implausible(self) -> dict[str, float]:
        """Nodes whose λ is positive and finite but outside :data:`PLAUSIBLE_LAMBDA` (an activation
        scale in the ANN's units below 1e-8 or above 1e8): ``{node: λ}``. :meth:`scale` warns once
        per such node."""
        lo, hi = PLAUSIBLE_LAMBDA
        return {k: float(v.percentile) for k, v in self.nodes.items()
                if np.isfinite(v.percentile) and v.percentile > 0 and not lo <= v.percentile <= hi}

    def check_model(self, fingerprint: str, source: str = "the statistics") -> None:
        if fingerprint != self.model_fingerprint:
            raise StatsMismatchError(
                f"{source} were computed for model {self.model_fingerprint}, but the model to convert "
                f"has fingerprint {fingerprint}. Run `sjunet calibrate` on this checkpoint first."
            )


def content_hash(file_attrs: dict[str, Any], nodes: dict[str, dict[str, Any]], arrays: dict[str, tuple]) -> str:
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
    """Write ``stats`` to ``path`` atomically, with a content hash over everything stored.

    The HDF5 file is built in memory and written with :func:`sjunet.io.write_bytes_atomic`: on a
    full disk that is one :class:`~sjunet.io.NoSpaceError` line, the previous file is unchanged and
    no temporary is left (HDF5 writing straight to a full disk crashed the process)."""
    file_attrs = {
        "schema": SCHEMA, "model_fingerprint": stats.model_fingerprint, "p": float(stats.p),
        "data": json.dumps(stats.data, default=str), "options": json.dumps(stats.options, default=str),
        "versions": json.dumps(stats.versions), "created": stats.created,
        "node_order": json.dumps(list(stats.nodes)), "graph": json.dumps(stats.graph, default=str),
    }
    if stats.approximation is not None:  # only with norms: files without are as before, byte for byte
        file_attrs["approximation"] = json.dumps(stats.approximation, allow_nan=False)
    node_attrs = {name: {k: _attr(getattr(s, k) if not (k == "raw_percentile" and s.raw_percentile is None)
                                  else s.percentile) for k in NODE_ATTRS} for name, s in stats.nodes.items()}
    arrays = {name: (np.asarray(s.histogram), np.asarray(s.bin_edges))
              + ((np.asarray(s.sigma, dtype=np.float64),) if s.sigma is not None else ())
              for name, s in stats.nodes.items()}
    digest = content_hash(file_attrs, node_attrs, arrays)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for k, v in file_attrs.items():
            f.attrs[k] = v
        f.attrs["content_sha256"] = digest
        g = f.create_group("nodes")
        for name, attrs in node_attrs.items():
            n = g.create_group(name)
            for k, v in attrs.items():
                n.attrs[k] = v
            hist, edges = arrays[name][:2]
            n.create_dataset("histogram", data=hist, compression="gzip", fletcher32=True)
            n.create_dataset("bin_edges", data=edges, fletcher32=True)
            if len(arrays[name]) > 2:
                n.create_dataset("sigma", data=arrays[name][2], fletcher32=True)
    return write_bytes_atomic(buf.getvalue(), path)
