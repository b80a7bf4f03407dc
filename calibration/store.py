"""HDF5 schema of calibration statistics (spec §4).

One group per recorded tensor, named by its FX node, under ``/nodes``; attributes
``percentile`` (λ), ``p``, ``max``, ``min``, ``mean``, ``count``, ``channels``, ``role``,
``error_bound``, datasets ``histogram`` and ``bin_edges``. File attributes: ``model_fingerprint``
(hash of architecture and weights), ``data`` (JSON description of the calibration data),
``options`` (JSON), ``versions`` (JSON), ``created``, ``node_order`` (JSON list). Written
atomically (temp file + rename).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sjunet.io import ArtifactError, atomic_path

SCHEMA = "sjunet-calibration/1"


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
                "positive and finite. The layer is dead or nearly so on the calibration data: "
                "use more/other calibration data, a higher percentile, or --positive-only."
            )
        return float(lam)

    def check_model(self, fingerprint: str, source: str = "the statistics") -> None:
        if fingerprint != self.model_fingerprint:
            raise StatsMismatchError(
                f"{source} were computed for model {self.model_fingerprint}, but the model to convert "
                f"has fingerprint {fingerprint}. Run `sjunet calibrate` on this checkpoint first."
            )


def write_stats(stats: CalibrationStats, path: str | os.PathLike) -> Path:
    """Write ``stats`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema"] = SCHEMA
            f.attrs["model_fingerprint"] = stats.model_fingerprint
            f.attrs["p"] = stats.p
            f.attrs["data"] = json.dumps(stats.data, default=str)
            f.attrs["options"] = json.dumps(stats.options, default=str)
            f.attrs["versions"] = json.dumps(stats.versions)
            f.attrs["created"] = stats.created
            f.attrs["node_order"] = json.dumps(list(stats.nodes))
            g = f.create_group("nodes")
            for name, s in stats.nodes.items():
                n = g.create_group(name)
                for key in ("role", "percentile", "p", "max", "min", "mean", "count", "channels", "error_bound"):
                    n.attrs[key] = getattr(s, key)
                n.create_dataset("histogram", data=s.histogram, compression="gzip")
                n.create_dataset("bin_edges", data=s.bin_edges)
    return Path(path)


def read_stats(path: str | os.PathLike) -> CalibrationStats:
    """Read statistics written by :func:`write_stats`; a wrong or foreign file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such statistics file (make one with `sjunet calibrate`)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ArtifactError(f"{path}: not an HDF5 file ({e})") from e
    with f:
        if f.attrs.get("schema") != SCHEMA:
            raise ArtifactError(f"{path}: not an sjunet calibration file (schema {f.attrs.get('schema')!r})")
        order = json.loads(f.attrs["node_order"])
        nodes = {}
        for name in order:
            n = f["nodes"][name]
            a = n.attrs
            nodes[name] = TensorStats(
                name=name, role=str(a["role"]), percentile=float(a["percentile"]), p=float(a["p"]),
                max=float(a["max"]), min=float(a["min"]), mean=float(a["mean"]), count=int(a["count"]),
                channels=int(a["channels"]), error_bound=float(a["error_bound"]),
                histogram=n["histogram"][()], bin_edges=n["bin_edges"][()],
            )
        return CalibrationStats(
            nodes=nodes, model_fingerprint=str(f.attrs["model_fingerprint"]), p=float(f.attrs["p"]),
            data=json.loads(f.attrs["data"]), options=json.loads(f.attrs["options"]),
            versions=json.loads(f.attrs["versions"]), created=str(f.attrs["created"]),
        )
