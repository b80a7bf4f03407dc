"""Buffers reused across simulation steps (issue 29): what lets a step of a converted network cost
what an ANN forward costs.

On a CPU a fresh large tensor costs more than the arithmetic on it: every page of it is faulted
in and zeroed (a 16 MB activation takes ~13 ms to allocate and touch, ~1 ms to update in place).
A module that mixes in :class:`Buffered` asks :meth:`Buffered.step_buffer` for its output and state
tensors; while :func:`streaming` is on (the simulator turns it on) the same storage comes back at
every step, so a step allocates nothing. Outside :func:`streaming` every call gets a fresh tensor,
so a module called by hand keeps the usual semantics (an output stays valid after the next step).

**The contract while streaming:** a module's output is valid until that module's next call (its
consumers read it within the step: convolutions, joins, concatenations), and its state tensors are
updated in place. A module called at more than one place of a graph never streams (its two calls
would share one buffer): :func:`streaming` enables only modules that are the target of exactly one
call of the graph, and no module with a forward hook (a monitor may keep what it sees). Buffers
outlive the simulation and the state reset, so the next image reuses them; :func:`release_buffers`
frees them.
"""
from __future__ import annotations

import contextlib
import functools
import math
from pathlib import Path
from typing import Iterator

import torch
from torch import fx, nn


class Buffered:
    """Mixin of modules that reuse their tensors across steps (module docstring)."""

    #: reuse buffers across calls (switched by :func:`streaming`; off: a fresh tensor every call)
    streaming: bool = False

    def step_buffer(self, name: str, shape, like: torch.Tensor, last: bool | None = None) -> torch.Tensor:
        """A tensor of ``shape`` with ``like``'s dtype, device and layout (channels-last when ``like``
        is a channels-last image batch, or ``last``), contents undefined: the same
        storage at every call while :attr:`streaming` (grown when a larger one is asked for),
        else a new one."""
        last = (channels_last(like) if last is None else last) and len(shape) == 4
        if not self.streaming:
            return torch.empty(shape, dtype=like.dtype, device=like.device,
                               memory_format=torch.channels_last if last else torch.contiguous_format)
        n = math.prod(shape)
        ws = self.__dict__.setdefault("_workspace", {})
        t = ws.get(name)
        if t is None or t.dtype != like.dtype or t.device != like.device or t.numel() < n:
            t = ws[name] = torch.empty(n, dtype=like.dtype, device=like.device)
        if last:  # the layout of ``like`` (channels-last: the fused simulation, :mod:`sjunet.snn.fusion`)
            return t[:n].view(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2)
        return t[:n].view(shape)

    def release_buffers(self) -> None:
        """Free the reused buffers (the next streaming call allocates them again)."""
        self.__dict__.pop("_workspace", None)


def channels_last(t: torch.Tensor) -> bool:
    """Whether ``t`` is an image batch [B, C, H, W] laid out channels-last (and not also plainly
    contiguous, as a one-channel or one-pixel batch is)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def flat(tensors) -> list[torch.Tensor] | None:
    """1-D views of ``tensors`` in memory order when all are dense in one layout (contiguous, or all
    channels-last with one shape), so an elementwise kernel can run on them as flat arrays; else None."""
    n = tensors[0].numel()
    if all(t.is_contiguous() and t.numel() == n for t in tensors):
        return [t.view(-1) for t in tensors]
    shape = tensors[0].shape
    if all(channels_last(t) and t.shape == shape for t in tensors):
        return [t.permute(0, 2, 3, 1).reshape(-1) for t in tensors]  # a view: the memory order
    return None


@functools.lru_cache(maxsize=None)
def _llc_bytes() -> int:
    sizes = []
    for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (idx / "type").read_text().strip() == "Instruction":
                continue
            size = (idx / "size").read_text().strip().upper()
            unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
            sizes.append(int(size.rstrip("KMG")) * unit)
        except (OSError, ValueError):
            continue
    return max(sizes) if sizes else 32 << 20


def cache_bytes(device: torch.device | str = "cpu") -> int:
    """The memory a multi-step chunk of activations should fit in: on a CPU the last-level cache
    (read from sysfs; 32 MiB where it cannot be read), on a GPU a quarter of its free memory."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 4
    return _llc_bytes()


def tiles(n: int, element_size: int = 4, tensors: int = 8):
    """Slices cutting ``n`` elements into tiles for an elementwise step of several passes: each tile
    small enough that ``tensors`` tiles fit in :func:`cache_bytes`, so the passes after the first
    read the cache instead of memory (a 6-pass MT step on a 16 MB layer: 25 % faster)."""
    size = max(1 << 14, cache_bytes() // (tensors * element_size))
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def call_counts(net: nn.Module) -> dict[str, int] | None:
    """How many places of ``net``'s graph call each module (by target); None when ``net`` is no graph."""
    if not isinstance(net, fx.GraphModule):
        return None
    counts: dict[str, int] = {}
    for n in net.graph.nodes:
        if n.op == "call_module":
            counts[n.target] = counts.get(n.target, 0) + 1
    return counts


@contextlib.contextmanager
def streaming(net: nn.Module, on: bool = True) -> Iterator[list[nn.Module]]:
    """Switch buffer reuse on (``on``) for the :class:`Buffered` modules of ``net`` called at
    exactly one place of its graph (a ``torch.fx.GraphModule``, as every converted network is;
    ``net`` itself when it is a :class:`Buffered` module) and without forward hooks, and back to
    what it was on exit.
    Yields the modules switched."""
    counts = call_counts(net)
    mods = [m for name, m in net.named_modules() if isinstance(m, Buffered) and not m._forward_hooks
            and (m is net or (counts is not None and counts.get(name, 0) == 1))]
    before = [m.streaming for m in mods]
    for m in mods:
        m.streaming = on
    try:
        yield mods
    finally:
        for m, b in zip(mods, before):
            m.streaming = b


def release_buffers(net: nn.Module) -> None:
    """Free the buffers every :class:`Buffered` module of ``net`` keeps between steps."""
    for m in net.modules():
        if isinstance(m, Buffered):
            m.release_buffers()
