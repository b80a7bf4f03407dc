"""The fuzz layer's one assertion: a hostile or malformed file is refused cleanly.

``refused_cleanly(read, path)`` calls ``read(path)`` and checks the four promises of the README's
"What sjunet refuses and why" for every reader (checkpoint, SNN record, HDF5 statistics,
``.last.pt``, results JSON):

* it raises :class:`sjunet.io.ArtifactError` (or the reader's subclass), never another exception
  — no traceback for bad input — with a message of **one line** that names the file;
* it runs **no code** from the file: ``os.system``, ``os.popen``, ``subprocess.Popen`` and
  ``os.exec*`` are trapped while it runs, and any call fails the test (importing an allow-listed
  library is not trapped: Python's import machinery itself calls ``exec``);
* it has **no file effects**: the directory holding the file is unchanged;
* it stays within **bounded time and memory**: wall seconds and the growth of the process's peak
  resident set (``ru_maxrss``) are checked against generous limits (seconds and hundreds of MB,
  where the reported attacks took tens of seconds and gigabytes).

Each test module generates its cases with ``hypothesis`` and counts them in :data:`CASES`, which
the session prints (``pytest -s``) so the fuzz layer's size is visible.
"""
from __future__ import annotations

import os
import resource
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from sjunet.io import ArtifactError

#: cases run per reader in this session
CASES: Counter = Counter()

MAX_SECONDS = 20.0
MAX_RSS_GROWTH_MB = 400


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _listing(d: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in d.iterdir():
        try:
            st = p.lstat()
        except OSError:
            continue
        out[p.name] = (st.st_size, st.st_mtime_ns)
    return out


class _CodeRan(AssertionError):
    pass


def refused_cleanly(read: Callable[[Path], object], path: Path, reader: str,
                    exc: type[BaseException] = ArtifactError, allow_success: bool = False) -> BaseException | None:
    """Run ``read(path)`` and assert a clean refusal (module docstring); returns the exception.

    ``allow_success``: a mutation may leave a file valid (e.g. a flipped bit in an unused byte);
    then reading it must simply succeed.
    """
    path = Path(path)
    CASES[reader] += 1
    before = _listing(path.parent)

    def trap(*a, **k):
        raise _CodeRan(f"{reader}: reading {path.name} tried to run code ({a[:1]!r})")

    saved = {(os, "system"): os.system, (subprocess, "Popen"): subprocess.Popen, (os, "execv"): os.execv,
             (os, "execve"): os.execve, (os, "popen"): os.popen}
    rss0, t0 = _peak_rss_mb(), time.monotonic()
    err: BaseException | None = None
    try:
        for (mod, name) in saved:
            setattr(mod, name, trap)
        try:
            read(path)
        except _CodeRan:
            raise
        except exc as e:  # the promised refusal
            err = e
        except BaseException as e:  # noqa: BLE001 - anything else is a bug the test must show
            raise AssertionError(f"{reader}: {path.name} raised {type(e).__name__} instead of a one-line "
                                 f"refusal: {str(e)[:300]!r}") from e
    finally:
        for (mod, name), fn in saved.items():
            setattr(mod, name, fn)
    seconds, grown = time.monotonic() - t0, _peak_rss_mb() - rss0
    assert seconds < MAX_SECONDS, f"{reader}: {path.name} took {seconds:.1f} s to refuse"
    assert grown < MAX_RSS_GROWTH_MB, f"{reader}: {path.name} grew the peak memory by {grown:.0f} MB"
    assert _listing(path.parent) == before, f"{reader}: reading {path.name} changed its directory"
    if err is None:
        if not allow_success:
            pytest.fail(f"{reader}: {path.name} was accepted")
        return None
    msg = str(err)
    assert msg and "\n" not in msg.strip(), f"{reader}: the refusal is not one line: {msg!r}"
    assert len(msg) < 1000, f"{reader}: the refusal is {len(msg)} characters long"
    assert "Traceback" not in msg
    return err
