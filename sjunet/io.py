"""Artifacts: atomic writes, output guards, fingerprints, provenance, checkpoint loading.

Every artifact sjunet writes (checkpoint, HDF5 statistics, SNN, results JSON, figure) goes
through :func:`atomic_path` (temp file in the same directory + ``os.replace``), so a crash never
leaves a half-written file, and carries a :func:`provenance` record saying what made it.

Trust rules (README, "What sjunet refuses and why"):

* files are data, never code: checkpoints are read with ``torch.load(weights_only=True)`` (plain
  dicts, lists, strings, numbers and tensors only) and SNNs are safetensors + a JSON record
  (:mod:`sjunet.snn.file`); a file that needs unpickling of anything else is refused;
* fingerprints are verified on load (:func:`sjunet.models.checkpoint.load_ann` recomputes the model's);
* a long run never overwrites a result it was not asked to (:func:`output_guard`): an existing
  output (a dangling symbolic link too) is refused unless ``--force`` or ``--resume``, one run at a
  time holds an exclusive lock on it, and an output is a regular file or absent — never a device,
  a FIFO or a socket, even with ``--force`` (:func:`check_output_kind`);
* weights read from a file are finite (:func:`nonfinite` names the first tensor that is not);
* written files get the usual permissions (``0666 & ~umask``), not ``mkstemp``'s 0600, and
  temporaries of a killed run are removed by the next write of the same file.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import math
import os
import pickle
import platform
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

#: checkpoint ``kind`` values
ANN_KIND = "sjunet-ann"
#: the record key under which a broken ANN (one class everywhere, a constant image) is noted in the
#: checkpoint, the statistics' data description and the SNN's conversion record (sjunet.evaluation.degenerate)
DEGENERATE_KEY = "model_degenerate"
SNN_KIND = "sjunet-snn"


class ArtifactError(ValueError):
    """An input file is missing, of the wrong kind, corrupt, or does not match its partner."""


class OutputExistsError(ArtifactError):
    """The output of a run already exists and neither --force nor --resume was given."""


# ------------------------------------------------------------------------------- atomic writes

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Remove ``.<name>.<pid>.*.tmp`` siblings of ``path`` left by a process that no longer runs."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\..*\.tmp$")
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for p in entries:
        m = pattern.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                p.unlink()


#: errno values that mean "the disk (or quota) is full"
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class NoSpaceError(ArtifactError):
    """A write failed because the file system (or a quota) is full; the previous file is unchanged."""


def _no_space(path: Path, e: BaseException | None = None) -> NoSpaceError:
    return NoSpaceError(f"{path}: no space left on the device while writing it — the previous file (if any) is "
                        "unchanged and no temporary file was left; free some space (or choose another -o) and re-run")


def _is_no_space(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
        return True
    text = str(e).lower()  # libraries that swallow errno (torch's zip writer, h5py, safetensors)
    return any(s in text for s in ("no space left", "disk quota", "file too large"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched; a full disk
    becomes one :class:`NoSpaceError` line naming ``path``. The file gets ``0666 & ~umask``
    permissions; temporaries left by a killed process are removed first.
    """
    path = Path(path)
    _make_parent(path)
    _remove_stale_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if _is_no_space(e):
            raise _no_space(path, e) from None
        raise ArtifactError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            os.chmod(tmp_path, 0o666 & ~_umask())
            check_output_kind(path)  # never replace a device, a FIFO, a socket or a directory
            os.replace(tmp_path, path)
        except ArtifactError:
            raise
        except Exception as e:  # noqa: BLE001 - a full disk reported by any writer
            if _is_no_space(e):
                raise _no_space(path, e) from None
            raise
    finally:
        with contextlib.suppress(OSError):
            if tmp_path.exists() or tmp_path.is_symlink():
                tmp_path.unlink()


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically, flushed to the disk before the rename.

    Every artifact is serialised in memory first and written here, so a full disk is one clean
    :class:`NoSpaceError` (never a writer library's crash) and never damages the previous file.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` (JSON has no NaN), tuples as lists, paths and
    tensors/numpy scalars as plain values."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    if hasattr(obj, "item") and callable(obj.item):
        return jsonable(obj.item())
    return obj


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON (``allow_nan=False``; NaN/inf written as ``null``)."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented strict JSON atomically (non-finite numbers become ``null``)."""
    return write_bytes_atomic((dumps(obj) + "\n").encode(), path)


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` (to memory) + :func:`write_bytes_atomic` (``obj``: plain containers and tensors only)."""
    import io as _io

    buf = _io.BytesIO()
    torch.save(obj, buf)
    return write_bytes_atomic(buf.getvalue(), path)


# ------------------------------------------------------------------------------- output guards

def _make_parent(path: Path) -> None:
    """Create ``path``'s directory; one line when a file stands where a directory must be."""
    parent = path.parent
    for p in [parent, *parent.parents]:
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise ArtifactError(f"cannot write {path}: {p} is a file, not a directory — choose another -o")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if _is_no_space(e):
            raise _no_space(path, e) from None
        raise ArtifactError(f"cannot create the directory {parent} for {path}: {e.strerror or e}") from None


#: an output directory with less free space than this is refused before the work starts
MIN_FREE_BYTES = 64 * 1024


def output_exists(path: str | os.PathLike) -> bool:
    """Whether something stands at ``path``: a file, or a symbolic link — a dangling one too (a
    write would replace it: it counts as an existing output)."""
    return os.path.lexists(path)


def _kind(mode: int) -> str | None:
    """What a non-regular file is (None for a regular file)."""
    import stat

    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def check_output_kind(path: str | os.PathLike) -> None:
    """An output is a regular file or absent (or a link to one, or a dangling link): a device, a FIFO,
    a socket or a directory is refused, even with ``--force`` — writing would replace the node (as
    root, ``-o /dev/null --force`` would replace the real one) or block on a pipe."""
    import stat

    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # absent (or under a file: said by the caller)
        return
    except OSError as e:
        raise ArtifactError(f"cannot use the output {path}: {e.strerror or e}") from None
    kind = _kind(st.st_mode) if not stat.S_ISLNK(st.st_mode) else None
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.stat(path)
        except OSError:
            target = None  # dangling: an existing output, replaced only with --force
        kind = _kind(target.st_mode) if target is not None else None
        if kind:
            kind = f"a link to {kind}"
    if kind:
        raise ArtifactError(f"output {path} is {kind}, not a regular file: sjunet writes only regular files (even "
                            "with --force) — choose another -o")


def check_writable(path: str | os.PathLike) -> Path:
    """Check, before any long work, that ``path`` can be written (its directory can be created
    and holds a new file); raise :class:`ArtifactError` with one line saying what is wrong."""
    text = os.fspath(path)
    path = Path(path)
    if text.endswith(("/", os.sep)) or path.is_dir():
        raise ArtifactError(f"output {text} is a directory: give a file name (e.g. {path / 'out'}"
                            f"{path.suffix or ''})")
    check_output_kind(path)
    _make_parent(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if _is_no_space(e):
            raise _no_space(path, e) from None
        raise ArtifactError(f"cannot write the output {path}: {e.strerror or e} — choose another -o/--output") from None
    try:
        st = os.statvfs(path.parent)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    if free is not None and free < MIN_FREE_BYTES:
        raise NoSpaceError(f"{path}: no space left on the device ({free // 1024} KiB free) — free some space or "
                           "choose another -o; nothing was started")
    return path


def lock_path(path: str | os.PathLike) -> Path:
    """``runs/ann.pt`` → ``runs/.ann.pt.lock``: the lock file of an output (kept between runs)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _open_lock(lock: Path) -> int:
    """Open (create) ``lock`` without following a symlink; refuse anything but a private regular file."""
    import stat

    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(lock, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ArtifactError(f"the lock file {lock} is a symbolic link; sjunet will not follow it — remove it "
                                "and re-run") from None
        if _is_no_space(e):
            raise _no_space(lock, e) from None
        raise ArtifactError(f"cannot open the lock file {lock}: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise ArtifactError(f"the lock file {lock} is not a plain file of its own (a link or a device); remove it "
                            "and re-run")
    return fd


@contextlib.contextmanager
def output_guard(path: str | os.PathLike, force: bool = False, resume: bool = False,
                 what: str = "output") -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` for a run that will write it.

    * an existing ``path`` (a dangling symbolic link too) is refused unless ``force`` (overwrite) or
      ``resume`` (continue it) — checked again once the lock is held, so of two runs started together
      without ``--force`` the second is refused, never silently replacing the first's result;
    * ``path`` must be a regular file or absent (:func:`check_output_kind`);
    * the directory must be writable (checked now, not after the work);
    * a second run on the same output is refused while this one holds the lock: ``fcntl.flock``
      on ``.<name>.lock`` beside it, opened with ``O_NOFOLLOW`` (a symlink planted there is
      refused, never followed) and *kept* after the run, so two runs always lock the same inode
      (removing it would let a third run lock a new file while the second still holds the old).
    """
    import fcntl

    path = check_writable(path)

    def refuse_existing() -> None:
        if output_exists(path) and not (force or resume):
            link = " (a symbolic link)" if path.is_symlink() else ""
            raise OutputExistsError(f"{what} {path} exists{link}: refusing to overwrite it; pass --force to replace it "
                                    "or --resume to continue that run (or choose another -o)")

    refuse_existing()
    lock = lock_path(path)
    fd = _open_lock(lock)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise ArtifactError(f"{what} {path} is being written by another sjunet run ({holder}); "
                                "wait for it or choose another -o") from None
        refuse_existing()  # again under the lock: a run that held it may have written the output meanwhile
        with contextlib.suppress(OSError):  # who holds it, for the message above; informational only
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the flock


# ------------------------------------------------------------------------------- fingerprints

def tensor_digest(tensors: dict[str, torch.Tensor], h: Any = None) -> Any:
    """Feed ``tensors`` (sorted by name: name, dtype, shape, bytes) into sha256 ``h``."""
    h = h or hashlib.sha256()
    for name, t in sorted(tensors.items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h


def nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity (None when all are
    finite): weights loaded from a file are refused with it (README, "What sjunet refuses")."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and t.numel():
            if not bool(torch.isfinite(t).all()):
                return name
    return None


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex) of a model's architecture (module tree) and every parameter/buffer value."""
    h = hashlib.sha256()
    h.update(repr(model).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.uint16).numpy().tobytes())
    return h.hexdigest()[:16]


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (16 hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions (plain strings) of sjunet and the libraries that shape its results."""
    import numpy

    out = {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": str(numpy.__version__)}
    try:
        from importlib.metadata import version

        out["sjunet"] = str(version("sjunet"))
        out["spikingjelly"] = str(version("spikingjelly"))
    except Exception:  # pragma: no cover - not installed as a distribution
        out.setdefault("sjunet", "unknown")
    return out


def world() -> dict[str, int]:
    """Process-group size and rank of this run (1 and 0 outside ``torchrun``)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return {"world_size": dist.get_world_size(), "rank": dist.get_rank()}
    except Exception:  # pragma: no cover
        pass
    return {"world_size": int(os.environ.get("WORLD_SIZE", 1)), "rank": int(os.environ.get("RANK", 0))}


def provenance(**fields: Any) -> dict[str, Any]:
    """A provenance record: creation time, versions, world size and the given fields."""
    return jsonable({
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "world_size": world()["world_size"],
        **fields,
    })


# ------------------------------------------------------------------------------- loading

_REGENERATE = {
    ANN_KIND: "retrain it with `sjunet train` (or export its state_dict and use --arch/--weights)",
    SNN_KIND: "regenerate it with `sjunet convert` (and `sjunet finetune`)",
}


def torch_load_data(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)``: plain data and tensors, never code.

    A file that holds pickled objects (an earlier sjunet's SNN, a crafted file) is refused with
    one line, without running anything from it.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise ArtifactError(
            f"{path}: refused — the file holds pickled Python objects"
            f"{' (' + what.group(1) + ')' if what else ''} and sjunet never runs code from a file; "
            "if an earlier sjunet wrote it, regenerate it with this version (`sjunet train` / "
            "`sjunet convert`)") from None
    except Exception as e:  # noqa: BLE001 - truncated, not a zip, wrong format
        raise ArtifactError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict:
    """Load an sjunet checkpoint (``weights_only=True``) and check its ``kind``."""
    path = Path(path)
    if kind == SNN_KIND or (path.is_file() and is_safetensors(path)):
        raise ArtifactError(f"{path}: is an SNN file; load it with sjunet.load_snn")
    ckpt = torch_load_data(path)
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise ArtifactError(f"{path}: not an sjunet checkpoint (no 'kind' field)")
    if kind is not None and ckpt["kind"] != kind:
        want = {ANN_KIND: "an ANN checkpoint written by `sjunet train`"}.get(kind, kind)
        raise ArtifactError(f"{path}: is a {ckpt['kind']!r} file, expected {want}")
    return ckpt


def is_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"
