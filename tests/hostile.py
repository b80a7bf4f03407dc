"""Hostile inputs shared by the issue-27 tests and the fuzz layer: crafted SNN records (re-hashed like
an attacker), image headers that declare huge images, dataset entries that are not files, a
variable-length string attribute whose stored length is edited, and a trap on the network."""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.torch import load_file, safe_open, save_file

# ------------------------------------------------------------------ SNN records


def read_snn(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        record = json.loads(f.metadata()["sjunet"])
    return record, load_file(str(path))


def write_snn(path: Path, record: dict, tensors: dict) -> Path:
    """Save ``record`` with ``tensors``, its content hash recomputed (the hash is unkeyed)."""
    from sjunet.snn import file as snnfile

    record = {**record, "content_sha256": snnfile._hash(tensors, record)}
    save_file(tensors, str(path), metadata={"sjunet": json.dumps(record)})
    return path


def insert_module(rec: dict, name: str, spec: dict, after: str = "x", extra_args: list | None = None) -> dict:
    """Put module ``spec`` as ``name`` on the edge leaving node ``after`` (its users read it instead);
    ``extra_args``: more inputs of the new node after ``after``."""
    g = rec["graph"]
    g["modules"][name] = spec
    for n in g["nodes"]:
        n["args"] = json.loads(json.dumps(n["args"]).replace(json.dumps({"node": after}), json.dumps({"node": name})))
    at = next(i for i, n in enumerate(g["nodes"]) if n["name"] == after) + 1
    g["nodes"].insert(at, {"name": name, "op": "call_module", "target": name, "kwargs": {"dict": {}},
                           "args": {"tuple": [{"node": after}, *(extra_args or [])]}})
    return rec


def module_args(rec: dict, path: str) -> dict:
    spec = rec["graph"]["modules"][path]
    return spec["args"]["layer"]["args"] if spec["type"] == "StaticInputSynapse" else spec["args"]


def node(rec: dict, name: str) -> dict:
    return next(n for n in rec["graph"]["nodes"] if n["name"] == name)


def first(rec: dict, module_type: str) -> str:
    """The path of the first module of ``module_type`` (a StaticInputSynapse's layer counts)."""
    for p, spec in rec["graph"]["modules"].items():
        t = spec["args"]["layer"]["type"] if spec["type"] == "StaticInputSynapse" else spec["type"]
        if t == module_type:
            return p
    raise KeyError(module_type)


def pooled(rec: dict) -> str:
    """A node after the first pooling (a feature map smaller than the input)."""
    for n in rec["graph"]["nodes"]:
        if n["op"] == "call_module" and "Pool" in rec["graph"]["modules"][n["target"]]["type"]:
            return n["name"]
    raise KeyError("pool")


def late(rec: dict) -> str:
    """The node the network's last layer reads (a full-size feature map)."""
    last = [n for n in rec["graph"]["nodes"] if n["op"] == "call_module"][-1]
    return last["args"]["tuple"][0]["node"]


def resample(scale=None, size=None) -> dict:
    return {"type": "Resample", "args": {"mode": "nearest", "scale_factor": scale, "size": size,
                                         "align_corners": None}}


def pad(amounts, mode="constant") -> dict:
    return {"type": "Pad", "args": {"pad": list(amounts), "mode": mode}}


def adaptive(size) -> dict:
    return {"type": "AdaptiveAvgPool", "args": {"output_size": list(size)}}


# ------------------------------------------------------------------ image headers


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_bomb(path: Path, width: int, height: int, rows: int = 0) -> Path:
    """A grayscale PNG declaring ``width`` x ``height`` pixels; ``rows`` zero rows really compressed
    into it (0: only a token of data: the header alone is the bomb). A 12000x12000 one with all its
    rows is about 140 KB."""
    comp = zlib.compressobj(9)
    body = bytearray()
    line = b"\x00" * (width + 1)
    for _ in range(rows):
        body += comp.compress(line)
    body += comp.compress(b"\x00" * 16) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + _chunk(b"IDAT", bytes(body)) + _chunk(b"IEND", b""))
    return path


def tiff_header_bomb(path: Path, width: int, height: int) -> Path:
    """A 4 KB little-endian grayscale TIFF whose header declares ``width`` x ``height`` pixels."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0),
               (277, 3, 1), (278, 4, height), (279, 4, min(width * height, 2**32 - 1))]
    ifd_at = 8
    data_at = ifd_at + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_at if tag == 273 else value
        ifd += struct.pack("<HHII", tag, kind, 1, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, 1, value, 0)
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_at) + ifd + bytes(4096 - data_at))
    return path


def write_em(root: Path, n: int = 30, size: int = 16) -> Path:
    """An EM layout of ``n`` gray images and 0/255 labels (``size`` x ``size``)."""
    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        label = np.zeros((size, size), np.uint8)
        label[:, size // 2:] = 255
        Image.fromarray(label).save(root / "labels" / f"{i}.png")
    return root


def make_not_a_file(path: Path, kind: str) -> None:
    """Replace ``path`` by a dangling symbolic link, a directory, a FIFO, or a link to a directory."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "dangling-symlink":
        path.symlink_to(path.parent / "gone.png")
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink-to-directory":
        (path.parent / "adir").mkdir(exist_ok=True)
        path.symlink_to(path.parent / "adir")
    else:
        raise ValueError(kind)


NOT_FILES = ("dangling-symlink", "directory", "fifo", "symlink-to-directory")


# ------------------------------------------------------------------ HDF5 string lengths


def string_descriptors(raw: bytes) -> list[int]:
    """Offsets of the stored lengths of the variable-length strings of a file with one global heap
    collection: each is 4 bytes before the collection's address, which the descriptor holds."""
    o = raw.index(b"GCOL\x01")
    addr = o.to_bytes(8, "little")
    return [m.start() - 4 for m in re.finditer(re.escape(addr), raw) if m.start() >= 4]


def set_string_length(path: Path, which: int, length: int, address: int | None = None) -> None:
    """Edit the stored length (and optionally the heap address) of variable-length string ``which``."""
    raw = bytearray(path.read_bytes())
    at = string_descriptors(bytes(raw))[which % len(string_descriptors(bytes(raw)))]
    raw[at:at + 4] = int(length).to_bytes(4, "little")
    if address is not None:
        raw[at + 4:at + 12] = int(address).to_bytes(8, "little")
    path.write_bytes(bytes(raw))


# ------------------------------------------------------------------ the network


class NetworkTouched(AssertionError):
    pass


@contextlib.contextmanager
def no_sockets():
    """Sockets disabled in this process: creating one, connecting or resolving a name is recorded and
    fails. Yields the list of attempts (the test asserts it stays empty)."""
    attempts: list = []

    class Trap(socket.socket):
        def __init__(self, *a, **k):
            attempts.append(("socket", a))
            raise NetworkTouched("a socket was opened")

    def trap(name):
        def f(*a, **k):
            attempts.append((name, a))
            raise NetworkTouched(f"{name} was called")
        return f

    saved = (socket.socket, socket.create_connection, socket.getaddrinfo)
    socket.socket, socket.create_connection, socket.getaddrinfo = Trap, trap("create_connection"), trap("getaddrinfo")
    try:
        yield attempts
    finally:
        socket.socket, socket.create_connection, socket.getaddrinfo = saved


def _hold(path: Path, ready, release, result: str | None) -> None:
    from sjunet.io import output_guard

    with output_guard(path):
        ready.set()
        release.wait(30)
        if result is not None:
            path.write_text(result)


@contextlib.contextmanager
def lock_held_elsewhere(path: Path, result: str | None = None):
    """Another process (forked) holds ``path``'s output lock (:func:`sjunet.io.output_guard`) while the
    block runs, as a first run would; when released it writes ``result`` there (if given)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(path, ready, release, result))
    p.start()
    try:
        assert ready.wait(30)
        yield
    finally:
        release.set()
        p.join(30)
