"""Bounded HDF5 reading: what libhdf5 would allocate, read from the raw file before h5py touches it.

libhdf5 trusts sizes stored in the file where it cannot check them: reading a variable-length
string attribute, it allocates the string's stored length (a 4-byte field beside the attribute's
name) *before* it looks the string up in the global heap — a 4-byte edit asking for 0xffffffff
bytes cost 4.7 GB and half a minute before the error (issue 27). And it walks a global heap
collection's objects when it loads one, looping forever on a free-space object of size 0. Neither
can be bounded from Python once libhdf5 runs, so both are read from the raw file first:

* :meth:`RawHDF5.check_heaps` — every global heap collection (``GCOL``) is walked as libhdf5 walks
  it: its objects must tile it exactly, at most 65 537 of them, all walks together at most one
  object per 16 bytes of file;
* :meth:`RawHDF5.check_attributes` — the object header of an object whose attributes will be read
  is parsed (version 1 headers and their continuation chunks, as sjunet's writer makes them; any
  other layout — version 2 headers, dense or shared attribute storage, a user block — is refused as
  a file sjunet did not write), and every variable-length attribute's stored element lengths are
  summed against a budget: the bytes a string can really hold live in the file, so all of them
  together may declare at most the file's size, one at most :data:`MAX_STRING` bytes.

Each refusal is one :class:`Refused` line saying where. Only the parsing is done here, with
:mod:`mmap` and :mod:`struct` (nothing allocated beyond the file's own bytes); the values are then
read by h5py (:mod:`sjunet.calibration.store`).
"""
from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_GCOL = b"GCOL\x01"
#: bytes of one variable-length string attribute (JSON included)
MAX_STRING = 16 << 20
#: chunks of one object header, and messages in it (a group of sjunet's: 2 chunks, 13 messages)
MAX_CHUNKS = 64
MAX_MESSAGES = 4096

_CONTINUATION, _ATTRIBUTE, _ATTRIBUTE_INFO = 0x10, 0x0C, 0x15
_VLEN, _ARRAY, _COMPOUND = 9, 10, 6


class Refused(Exception):
    """The raw file declares something the bounded reader will not let libhdf5 allocate or walk."""


class RawHDF5:
    """The raw bytes of an HDF5 file (memory-mapped, read only), for the checks of the module
    docstring. Use as a context manager; ``budget`` is the bytes variable-length attributes may
    still declare (the file's size at first)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fh = open(self.path, "rb")
        self.size = os.fstat(self._fh.fileno()).st_size
        self.mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
        self.budget = self.size
        self.offsets = self.lengths = 8
        self.version = self._superblock()

    def close(self) -> None:
        if isinstance(self.mm, mmap.mmap):
            self.mm.close()
        self._fh.close()

    def __enter__(self) -> "RawHDF5":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ superblock

    def _superblock(self) -> int | None:
        """The superblock version at byte 0 (None when the file has no signature there: libhdf5
        refuses such a file itself, or finds a user block — refused by :meth:`check_attributes`)."""
        mm = self.mm
        if self.size < 16 or mm[:8] != SIGNATURE:
            return None
        version = mm[8]
        if version in (0, 1):
            self.offsets, self.lengths = mm[13], mm[14]
        else:
            self.offsets, self.lengths = mm[9], mm[10]
        if self.offsets not in (2, 4, 8, 16, 32) or self.lengths not in (2, 4, 8, 16, 32):
            raise Refused(f"its superblock declares {self.offsets}-byte addresses and {self.lengths}-byte lengths")
        return version

    def _int(self, at: int, n: int, what: str) -> int:
        if at < 0 or at + n > self.size:
            raise Refused(f"{what} at byte {at} lies past the end of the {self.size}-byte file")
        return int.from_bytes(self.mm[at:at + n], "little")

    # ------------------------------------------------------------------ global heaps

    def check_heaps(self) -> None:
        """Walk every global heap collection as libhdf5 would (module docstring)."""
        if self.size < 32 or self.version is None:
            return
        mm, size_len = self.mm, self.lengths
        hdr = (8 + size_len + 7) // 8 * 8  # collection header and object header, 8-aligned
        budget = self.size // 16 + 65_537
        o = mm.find(_GCOL)
        while o >= 0:
            size = int.from_bytes(mm[o + 8:o + 8 + size_len], "little") if o + 8 + size_len <= self.size else 0
            if hdr <= size <= self.size - o:  # else libhdf5 refuses to load it (past the end / too small)
                p, end, n = o + hdr, o + size, 0
                while p < end and p + hdr <= end:
                    idx = int.from_bytes(mm[p:p + 2], "little")
                    obj = int.from_bytes(mm[p + 8:p + 8 + size_len], "little")
                    need = hdr + (obj + 7) // 8 * 8 if idx else obj
                    if need == 0 or need > end - p:
                        raise Refused(f"corrupt HDF5 global heap at byte {o} (object {idx} of {obj} bytes "
                                      "does not fit its collection)")
                    p, n, budget = p + need, n + 1, budget - 1
                    if n > 65_537 or budget < 0:
                        raise Refused(f"corrupt HDF5 global heap at byte {o} (too many objects)")
            o = mm.find(_GCOL, o + 1)

    # ------------------------------------------------------------------ attributes

    def check_attributes(self, addr: int, where: str) -> int:
        """Parse the object header at ``addr`` (relative to the file's start: sjunet writes no user
        block) and bound every variable-length attribute in it (module docstring); returns the
        number of attribute messages. One :class:`Refused` line naming ``where`` otherwise."""
        if self.version not in (0, 1):
            raise Refused(f"an HDF5 layout sjunet does not write (superblock version {self.version}"
                          f"{', or a user block' if self.version is None else ''})")
        base = self._int(24 if self.version == 0 else 28, self.offsets, "the superblock's base address")
        if base != 0:
            raise Refused("an HDF5 layout sjunet does not write (a base address after a user block)")
        if addr < 0 or addr + 16 > self.size:
            raise Refused(f"{where}: its object header lies outside the file")
        version = self.mm[addr]
        if version != 1:
            raise Refused(f"{where}: an object header of a layout sjunet does not write (version {version}: "
                          "dense or shared attribute storage)")
        declared = self._int(addr + 2, 2, f"{where}: header")
        chunks, seen, messages, attributes = [(addr + 16, self._int(addr + 8, 4, f"{where}: header"))], set(), 0, 0
        while chunks:
            start, length = chunks.pop()
            if len(seen) >= MAX_CHUNKS or (start, length) in seen:
                raise Refused(f"{where}: its object header has more than {MAX_CHUNKS} chunks or a loop of them")
            seen.add((start, length))
            if start < 0 or length < 0 or start + length > self.size:
                raise Refused(f"{where}: a chunk of its object header ({length} bytes at byte {start}) lies past the "
                              f"end of the {self.size}-byte file")
            p, end = start, start + length
            while p + 8 <= end:
                kind, size, flags = struct.unpack_from("<HHB", self.mm, p)
                data = p + 8
                if data + size > end:
                    raise Refused(f"{where}: a header message of {size} bytes overruns its chunk")
                messages += 1
                if messages > MAX_MESSAGES:
                    raise Refused(f"{where}: more than {MAX_MESSAGES} header messages")
                if kind == _CONTINUATION:
                    chunks.append((self._int(data, self.offsets, where),
                                   self._int(data + self.offsets, self.lengths, where)))
                elif kind == _ATTRIBUTE_INFO:
                    raise Refused(f"{where}: attributes in dense storage, a layout sjunet does not write")
                elif kind == _ATTRIBUTE:
                    if flags & 0x02:
                        raise Refused(f"{where}: a shared attribute message, a layout sjunet does not write")
                    self._attribute(data, size, where)
                    attributes += 1
                p = data + size
        if messages > declared:
            raise Refused(f"{where}: its object header holds {messages} messages, it declares {declared}")
        return attributes

    def _attribute(self, at: int, size: int, where: str) -> None:
        """Bound one attribute message's variable-length elements (module docstring)."""
        end = at + size
        version = self.mm[at]
        if version not in (1, 2, 3):
            raise Refused(f"{where}: an attribute message of version {version}")
        name_len, dt_len, ds_len = struct.unpack_from("<HHH", self.mm, at + 2)
        if version == 1:
            pad = lambda n: (n + 7) // 8 * 8  # noqa: E731 - version 1 pads each part to 8 bytes
            p = at + 8
            name_at, p = p, p + pad(name_len)
            dt_at, p = p, p + pad(dt_len)
            ds_at, p = p, p + pad(ds_len)
        else:
            if self.mm[at + 1] & 0x03:
                raise Refused(f"{where}: an attribute with a shared datatype or dataspace, a layout sjunet does not "
                              "write")
            p = at + 8 + (1 if version == 3 else 0)
            name_at, p = p, p + name_len
            dt_at, p = p, p + dt_len
            ds_at, p = p, p + ds_len
        if p > end or dt_len < 8:
            raise Refused(f"{where}: an attribute message overruns its {size} bytes")
        name = bytes(self.mm[name_at:name_at + max(0, name_len - 1)]).decode("utf-8", "replace")
        what = f"{where}: attribute {name!r}"
        dt_class = self.mm[dt_at] & 0x0F
        count = self._elements(ds_at, ds_len, what)
        if dt_class != _VLEN:  # fixed-size values: all of them are stored in the message itself
            if p + count * int.from_bytes(self.mm[dt_at + 4:dt_at + 8], "little") > end:
                raise Refused(f"{what}: declares {count} values larger than its message holds")
            return
        element = 4 + self.offsets + 4  # sequence length, heap collection address, object index
        if p + count * element > end:
            raise Refused(f"{what}: {count} variable-length values do not fit its message")
        for i in range(count):
            n = int.from_bytes(self.mm[p + i * element:p + i * element + 4], "little")
            if n > MAX_STRING:
                raise Refused(f"{what} declares a {n}-byte string (at most {MAX_STRING}): reading it would allocate "
                              "that much")
            self.budget -= n
            if self.budget < 0:
                raise Refused(f"{what}: its strings, with the others read before, declare more bytes than the "
                              f"{self.size}-byte file holds")

    def _elements(self, at: int, length: int, what: str) -> int:
        """Elements of a dataspace message (scalar 1, null 0, simple: the product of its sizes)."""
        if length < 8:
            raise Refused(f"{what}: a dataspace message of {length} bytes")
        version, rank, flags = self.mm[at], self.mm[at + 1], self.mm[at + 2]
        if version == 1:
            dims_at = at + 8
            null = False
        elif version == 2:
            dims_at, null = at + 4, self.mm[at + 3] == 2
        else:
            raise Refused(f"{what}: a dataspace message of version {version}")
        if null:
            return 0
        if rank > 32 or dims_at + rank * self.lengths > at + length:
            raise Refused(f"{what}: a dataspace of {rank} dimensions overruns its message")
        count = 1
        for i in range(rank):
            count *= int.from_bytes(self.mm[dims_at + i * self.lengths:dims_at + (i + 1) * self.lengths], "little")
            if count > MAX_MESSAGES * 16:
                raise Refused(f"{what}: declares more than {MAX_MESSAGES * 16} values")
        return count


def object_address(obj) -> int:
    """The object header address of an open h5py object (``H5Oget_info``: nothing of it is read)."""
    import h5py

    return int(h5py.h5o.get_info(obj.id).addr)


__all__ = ["MAX_STRING", "RawHDF5", "Refused", "object_address"]
