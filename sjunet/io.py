"""Artifacts: atomic writes, fingerprints, provenance, checkpoint format.

Every artifact sjunet writes (checkpoint, HDF5 statistics, SNN, results JSON) goes through
:func:`atomic_path` (temp file in the same directory + ``os.replace``), so a crash never
leaves a half-written file, and carries a :func:`provenance` record saying what made it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

#: checkpoint ``kind`` values
ANN_KIND = "sjunet-ann"
SNN_KIND = "sjunet-snn"


class ArtifactError(ValueError):
    """An input file is missing, of the wrong kind, or does not match its partner."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")
    return Path(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex) of a model's architecture (module tree) and every parameter/buffer value."""
    h = hashlib.sha256()
    h.update(repr(model).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (16 hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of sjunet and the libraries that shape its results."""
    import numpy

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        from importlib.metadata import version

        out["sjunet"] = version("sjunet")
        out["spikingjelly"] = version("spikingjelly")
    except Exception:  # pragma: no cover - not installed as a distribution
        out.setdefault("sjunet", "unknown")
    return out


def provenance(**fields: Any) -> dict[str, Any]:
    """A provenance record: creation time, versions and the given fields (inputs, options)."""
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        **fields,
    }


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict:
    """Load an sjunet checkpoint (ANN or SNN) and check its ``kind``.

    SNN files hold a pickled ``torch.fx.GraphModule``, so they are loaded with
    ``weights_only=False``: load only files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise ArtifactError(f"{path}: not a readable torch checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise ArtifactError(f"{path}: not an sjunet checkpoint (no 'kind' field)")
    if kind is not None and ckpt["kind"] != kind:
        want = {ANN_KIND: "an ANN checkpoint written by `sjunet train`",
                SNN_KIND: "an SNN written by `sjunet convert`"}.get(kind, kind)
        raise ArtifactError(f"{path}: is a {ckpt['kind']!r} file, expected {want}")
    return ckpt


def load_ann(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Load an ANN checkpoint written by :func:`sjunet.train.train`; returns ``(model, checkpoint)``."""
    from sjunet.models import build_model

    ckpt = load_checkpoint(path, ANN_KIND)
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt
