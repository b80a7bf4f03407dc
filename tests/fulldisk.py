"""A really full file system for tests: a tiny tmpfs, mounted for the test and always unmounted.

``full_tmpfs(size_kb)`` mounts a tmpfs of ``size_kb`` KiB on a fresh directory and yields it (the
test is skipped, with the reason, where mounting is not allowed: not root, no CAP_SYS_ADMIN);
``fill(directory)`` then takes every remaining byte, so the next write gets ENOSPC. The
``full_disk`` fixture is ``full_tmpfs(512)``, left for the test to fill after putting its files
there. Use it as ``from fulldisk import full_disk, fill, full_tmpfs`` (importing the fixture into a
test module registers it there).
"""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest


@contextlib.contextmanager
def full_tmpfs(size_kb: int = 64) -> Iterator[Path]:
    """Mount a ``size_kb`` KiB tmpfs on a new temporary directory; yield it; unmount and remove it."""
    d = Path(tempfile.mkdtemp(prefix="sjunet-fulldisk-"))
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_kb)}k", "tmpfs", str(d)],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        d.rmdir()
        pytest.skip(f"cannot mount a tmpfs for a full-disk test: {e}")
    if r.returncode != 0:
        d.rmdir()
        pytest.skip(f"cannot mount a tmpfs for a full-disk test (needs root): {r.stderr.strip() or r.returncode}")
    try:
        yield d
    finally:
        u = subprocess.run(["umount", str(d)], capture_output=True, timeout=30)
        if u.returncode != 0:  # something still open there: detach it lazily rather than leak the mount
            subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=30)
        with contextlib.suppress(OSError):
            d.rmdir()


def fill(directory: str | os.PathLike, name: str = "filler") -> Path:
    """Write ``directory/name`` until the file system is full (ENOSPC); returns its path."""
    path = Path(directory) / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for block in (1 << 16, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * block)
                except OSError as e:
                    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                        raise
                    break
    finally:
        os.close(fd)
    return path


@pytest.fixture
def full_disk() -> Iterator[Path]:
    """A 512 KiB tmpfs directory (not yet filled: call :func:`fill` once its files are in place)."""
    with full_tmpfs(512) as d:
        yield d
