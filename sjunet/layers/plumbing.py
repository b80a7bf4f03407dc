"""Transformer plumbing as linear stages (spec §15, issue 26): the reshaping, re-indexing and constant
additions of token tensors, each a stage with the unit passing through.

Each stage is exact per time step — it moves, copies or drops values, or adds a constant current —
so a spike train through it is the ANN's tensor through it, step by step; none has a neuron.

* :class:`Reshape` — ``view`` / ``reshape`` / ``flatten`` / ``unflatten`` / ``squeeze`` /
  ``unsqueeze`` (and einops' rearrangements, which trace to those): a new shape, recorded for a
  batch of one with the dimension the batch lives in (``batch_dim``; the batch may sit anywhere,
  e.g. an einops ``qkv b l h d``) — at run time that dimension is B times as long;
* :class:`Permute` — ``permute`` / ``transpose`` / ``.t()`` / ``movedim``;
* :class:`Index` — static indexing and slicing (``t[:, :, dy:dy + h, dx:dx + w]``, ``t[0]``, ``narrow``,
  the parts of ``chunk`` / ``split`` / ``unbind``): a subset, in order;
* :class:`Repeat` — ``repeat`` / ``expand`` (VNet's channel repeat of its input): copies;
* :class:`Roll` — ``torch.roll`` (shifted windows);
* :class:`AddConstant` — adding a constant tensor (a position embedding, an attention bias or mask):
  a bias current every step, in the unit of the tensor it is added to (its flow: T·c);
* :class:`Scale` — multiplying by a constant number (``att * self.scale``): in the ANN graph only;
  conversion folds a positive factor into the tensor's unit (no stage), a negative one leaves ``Scale(-1)``.

Step modes: single-step inputs are the ANN's tensors (batch wherever the ANN has it); multi-step
inputs ``[T, …]`` prepend the time axis, and every stage applies its operation behind it (indices
and dimensions shifted by one), so batch-moving permutations are exact in both modes. Every stage
has ``spec()`` (its arguments as plain data) and ``flow(x, T)`` (the stage on accumulated
quantities: the stage itself, plus T·c for a constant).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from spikingjelly.activation_based import base
from torch import nn

MAX_RANK = 8  #: dimensions of a plumbing stage's tensors
MAX_SIZE = 1 << 24  #: one dimension's length (a batch of one)


class _Stage(nn.Module, base.StepModule):
    def __init__(self, step_mode: str = "s") -> None:
        super().__init__()
        self.step_mode = step_mode

    def supported_step_mode(self):
        return ("s", "m")

    def op(self, x: torch.Tensor, steps: bool) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x, self.step_mode == "m")

    def flow(self, x: torch.Tensor, T: float = 1.0) -> torch.Tensor:
        return self.op(x, False)


def _shift(dim: int, steps: bool) -> int:
    """A dimension of the single-step tensor, in the multi-step one (non-negative ones move by one)."""
    return dim + 1 if steps and dim >= 0 else dim


class Reshape(_Stage):
    """``x.reshape(shape)`` with ``shape[batch_dim]`` times the batch size (module docstring)."""

    def __init__(self, shape: Sequence[int], batch_dim: int = 0, step_mode: str = "s") -> None:
        super().__init__(step_mode)
        self.shape = [int(s) for s in shape]
        if not 1 <= len(self.shape) <= MAX_RANK or any(not 1 <= s <= MAX_SIZE for s in self.shape):
            raise ValueError(f"a reshape needs 1..{MAX_RANK} sizes in 1..{MAX_SIZE}, got {list(shape)[:10]}")
        if not 0 <= int(batch_dim) < len(self.shape):
            raise ValueError(f"batch_dim {batch_dim} is not a dimension of shape {self.shape}")
        self.batch_dim = int(batch_dim)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, batch_dim={self.batch_dim}"

    def spec(self) -> dict:
        return {"shape": list(self.shape), "batch_dim": self.batch_dim}

    def out_shape(self, numel: int) -> list[int]:
        per = math.prod(self.shape)
        if numel % per:
            raise ValueError(f"cannot reshape {numel} values to {self.shape} per sample")
        out = list(self.shape)
        out[self.batch_dim] *= numel // per
        return out

    def op(self, x, steps):
        if steps:
            return x.reshape(x.shape[0], *self.out_shape(x[0].numel()))
        return x.reshape(self.out_shape(x.numel()))


class Permute(_Stage):
    """``x.permute(dims)``."""

    def __init__(self, dims: Sequence[int], step_mode: str = "s") -> None:
        super().__init__(step_mode)
        self.dims = [int(d) for d in dims]
        n = len(self.dims)
        if not 1 <= n <= MAX_RANK or sorted(d % n for d in self.dims) != list(range(n)):
            raise ValueError(f"dims {list(dims)[:10]} are not a permutation of 0..{n - 1}")
        self.dims = [d % n for d in self.dims]

    def extra_repr(self) -> str:
        return f"dims={self.dims}"

    def spec(self) -> dict:
        return {"dims": list(self.dims)}

    def op(self, x, steps):
        return x.permute(0, *(d + 1 for d in self.dims)) if steps else x.permute(self.dims)


#: an index item as plain data: ``["slice", start, stop, step]`` (None for defaults), ``["int", i]``,
#: ``["none"]`` (a new axis), ``["ellipsis"]``
ITEM_KINDS = ("slice", "int", "none", "ellipsis")


def _item(v: Any):
    kind = v[0] if isinstance(v, (list, tuple)) and v else None
    if kind == "slice" and len(v) == 4 and all(u is None or type(u) is int for u in v[1:]) and v[3] != 0 \
            and (v[3] is None or v[3] > 0):
        return slice(v[1], v[2], v[3])
    if kind == "int" and len(v) == 2 and type(v[1]) is int:
        return v[1]
    if kind == "none" and len(v) == 1:
        return None
    if kind == "ellipsis" and len(v) == 1:
        return Ellipsis
    raise ValueError(f"index item {str(v)[:40]} is not one of {ITEM_KINDS} (a slice's step positive)")


def item_data(i: Any) -> list:
    """A Python index item as plain data (the inverse of the stage's reading)."""
    if isinstance(i, slice):
        return ["slice", i.start, i.stop, i.step]
    if i is None:
        return ["none"]
    if i is Ellipsis:
        return ["ellipsis"]
    if type(i) is int:
        return ["int", i]
    raise ValueError(f"index item {i!r} is not static (an int, a slice of ints, None or ...)")


class Index(_Stage):
    """``x[items]`` for static items (module docstring); ``items`` as plain data (:data:`ITEM_KINDS`)."""

    def __init__(self, items: Sequence[Any], step_mode: str = "s") -> None:
        super().__init__(step_mode)
        if not 1 <= len(items) <= MAX_RANK + 2 or sum(1 for v in items if list(v)[:1] == ["ellipsis"]) > 1:
            raise ValueError(f"an index needs 1..{MAX_RANK + 2} items and at most one ellipsis")
        self.items = [list(v) for v in items]
        self._items = tuple(_item(v) for v in self.items)

    def extra_repr(self) -> str:
        return f"items={self._items}"

    def spec(self) -> dict:
        return {"items": [list(v) for v in self.items]}

    def op(self, x, steps):
        if not steps:
            return x[self._items]
        if self._items and self._items[0] is Ellipsis:
            return x[self._items]
        return x[(slice(None), *self._items)]


class Repeat(_Stage):
    """``x.repeat(repeats)`` (``expand`` of size-1 dimensions is the same copy)."""

    def __init__(self, repeats: Sequence[int], step_mode: str = "s") -> None:
        super().__init__(step_mode)
        self.repeats = [int(r) for r in repeats]
        if not 1 <= len(self.repeats) <= MAX_RANK or any(not 1 <= r <= 4096 for r in self.repeats):
            raise ValueError(f"repeats must be 1..{MAX_RANK} integers in 1..4096, got {list(repeats)[:10]}")

    def extra_repr(self) -> str:
        return f"repeats={self.repeats}"

    def spec(self) -> dict:
        return {"repeats": list(self.repeats)}

    def op(self, x, steps):
        if steps:
            return x.repeat(1, *([1] * (x.dim() - 1 - len(self.repeats))), *self.repeats)
        return x.repeat(*self.repeats)


class Roll(_Stage):
    """``torch.roll(x, shifts, dims)``."""

    def __init__(self, shifts: Sequence[int], dims: Sequence[int], step_mode: str = "s") -> None:
        super().__init__(step_mode)
        self.shifts, self.dims = [int(s) for s in shifts], [int(d) for d in dims]
        if not 1 <= len(self.dims) <= MAX_RANK or len(self.shifts) != len(self.dims) \
                or any(abs(d) > MAX_RANK for d in self.dims) or any(abs(s) > MAX_SIZE for s in self.shifts):
            raise ValueError("roll needs as many shifts as dims (1..8 of each, dims in -8..8)")

    def extra_repr(self) -> str:
        return f"shifts={self.shifts}, dims={self.dims}"

    def spec(self) -> dict:
        return {"shifts": list(self.shifts), "dims": list(self.dims)}

    def op(self, x, steps):
        return torch.roll(x, self.shifts, [_shift(d, steps) for d in self.dims])


class AddConstant(_Stage):
    """``x + c`` for a constant tensor ``c`` (the buffer ``constant``, of ``shape``: broadcast against a
    step tensor from its last dimensions). A bias current: in the SNN ``c`` is in the unit of ``x``
    (conversion divides it), and its flow adds T·c."""

    def __init__(self, shape: Sequence[int], step_mode: str = "s") -> None:
        super().__init__(step_mode)
        shape = [int(s) for s in shape]
        if len(shape) > MAX_RANK or any(not 1 <= s <= MAX_SIZE for s in shape) or math.prod(shape) > MAX_SIZE:
            raise ValueError(f"a constant needs at most {MAX_RANK} dimensions and {MAX_SIZE} values, got {shape[:10]}")
        self.shape = shape
        self.register_buffer("constant", torch.zeros(shape))

    @classmethod
    def of(cls, c: torch.Tensor) -> "AddConstant":
        m = cls(list(c.shape))
        m.constant.copy_(c.detach().to(m.constant.dtype))
        return m

    def extra_repr(self) -> str:
        return f"shape={self.shape}"

    def spec(self) -> dict:
        return {"shape": list(self.shape)}

    def op(self, x, steps):
        return x + self.constant.to(x.dtype)

    def flow(self, x: torch.Tensor, T: float = 1.0) -> torch.Tensor:
        return x + T * self.constant.to(x.dtype)


class Scale(_Stage):
    """``x · factor`` for a constant number (module docstring)."""

    def __init__(self, factor: float, step_mode: str = "s") -> None:
        super().__init__(step_mode)
        self.factor = float(factor)
        if not (math.isfinite(self.factor) and self.factor != 0):
            raise ValueError(f"a scale factor must be finite and non-zero, got {factor!r}")

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"

    def spec(self) -> dict:
        return {"factor": self.factor}

    def op(self, x, steps):
        return x * self.factor


PLUMBING_TYPES = (Reshape, Permute, Index, Repeat, Roll)
STAGE_TYPES = (*PLUMBING_TYPES, AddConstant, Scale)
