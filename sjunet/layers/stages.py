"""Non-neuron stages of a converted network (spec §5, §11): what sits between synaptic layers.

Each is a SpikingJelly step module (single- and multi-step mode; a ``[T, B, C, H, W]`` sequence
is processed as ``T·B`` images; volumes ``[B, C, D, H, W]`` alike) and has a :meth:`flow` method: the stage applied to quantities
accumulated over T steps, used by spiking-flow fine-tuning (:mod:`sjunet.training.flow`).

* :class:`Resample` — ``F.interpolate`` / ``nn.Upsample`` (nearest, bilinear): linear, no bias,
  unit passes through. Its output size is a scale factor, a fixed size, or the spatial size of a
  reference tensor (``size=ref.shape[-2:]``, as segmentation_models_pytorch computes it).
* :class:`Pad` — zero / reflect / replicate / circular padding of the last 1–3 dimensions: a
  linear copy, unit passes through.
* :class:`ChannelAffine` — ``y = s_c·x + b_c`` per channel: a BatchNorm with no convolution to
  fold into, and the explicit gain λ_x/λ_z on an identity edge into a join (spec §11; no
  shift). The shift is a bias current added every step, so its flow is ``s·x + T·b``.
* :class:`SpikingMaxPool2d` (alias ``SpikingMaxPool``; any dimensionality) — max-pooling of spike *counts*, exact in the count limit (spec §11):
  it keeps the running input sums S_t = Σ_{τ≤t} x_τ (one state tensor) and emits
  o_t = maxpool(S_t) − maxpool(S_{t−1}) ≥ 0, so Σ_t o_t = maxpool(S_T). Its flow is the max-pool
  of the accumulated input; the gradient goes to the arg-max input, as in the ANN.
* :class:`AdaptiveAvgPool` — ``nn.AdaptiveAvgPool2d`` / ``F.adaptive_avg_pool2d`` /
  ``x.mean((2, 3), keepdim=True)`` (global average pooling of PSP / ASPP / SE branches): linear,
  no bias, unit passes through, like ``AvgPool2d``.

* :class:`Center` — the mean subtraction of instance / group / layer norm (per sample, over a
  group's channels and all positions): linear, no bias, exact per time step (spec §11).
* :class:`Normalize` — the norm's division, per sample in the ANN (calibration), by a fixed σ̂
  once set; never in an SNN: conversion folds 1/σ̂ into the affine after it.

Without autograd the stages a step runs through allocate nothing: gains, centring, padding, the
spiking max-pool and :class:`Concat` write into buffers reused across steps while the network
streams (:mod:`sjunet.layers.buffers`); a pad of zeros passes its input through. The numbers are
those of the out-of-place forms, which run under autograd.

Every class but :class:`Normalize` has ``spec()`` (constructor arguments as plain data) so an SNN file rebuilds it
without code from the file (:mod:`sjunet.snn.file`).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import base
from torch import nn

from sjunet.layers.buffers import Buffered
from sjunet.layers.dims import functional, per_channel


def _per_image(fn, x: torch.Tensor, step_mode: str) -> torch.Tensor:
    """Apply ``fn`` to ``x`` ([B, C, H, W]) or to every step of ``x`` ([T, B, C, H, W])."""
    if step_mode == "m":
        return fn(x.flatten(0, 1)).unflatten(0, x.shape[:2])
    return fn(x)


def _needs_grad(*ts: torch.Tensor | None) -> bool:
    """Whether autograd records an op on ``ts``: then a stage computes out of place (as ever);
    otherwise it writes into its step buffer (:mod:`sjunet.layers.buffers`), the same numbers."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _plain(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_plain(u) for u in v]
    return v


class Resample(nn.Module, base.StepModule):
    """``F.interpolate`` as a stage: ``mode`` nearest / (bi/tri)linear; ``scale_factor`` or ``size``,
    or (when called with a second tensor argument) the spatial size of that reference tensor."""

    MODES = ("nearest", "nearest-exact", "bilinear", "trilinear", "linear")

    def __init__(self, mode: str = "nearest", scale_factor: float | Sequence[float] | None = None,
                 size: int | Sequence[int] | None = None, align_corners: bool | None = None,
                 step_mode: str = "s") -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"interpolation mode {mode!r} is not supported (only {', '.join(self.MODES)})")
        self.mode = mode
        self.scale_factor = tuple(scale_factor) if isinstance(scale_factor, (list, tuple)) else scale_factor
        self.size = tuple(size) if isinstance(size, (list, tuple)) else size
        self.align_corners = align_corners
        self.step_mode = step_mode

    def supported_step_mode(self):
        return ("s", "m")

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, scale_factor={self.scale_factor}, size={self.size}, "
                f"align_corners={self.align_corners}, step_mode={self.step_mode}")

    def spec(self) -> dict:
        return {"mode": self.mode, "scale_factor": _plain(self.scale_factor), "size": _plain(self.size),
                "align_corners": self.align_corners}

    def _fn(self, ref: torch.Tensor | None):
        scale = None if ref is not None else self.scale_factor
        # to a reference: its size on every spatial axis of the image x ([B, C, *spatial])
        return lambda x: F.interpolate(x, size=tuple(ref.shape[-(x.dim() - 2):]) if ref is not None else self.size,
                                       scale_factor=scale, mode=self.mode, align_corners=self.align_corners)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return _per_image(self._fn(ref), x, self.step_mode)

    def flow(self, x: torch.Tensor, ref: torch.Tensor | None = None, T: float = 1.0) -> torch.Tensor:
        return self._fn(ref)(x)


class Pad(Buffered, nn.Module, base.StepModule):
    """Padding of the last one, two or three dimensions (``F.pad`` order: left, right, top, bottom,
    front, back); ``mode`` constant (zeros only), reflect, replicate or circular."""

    MODES = ("constant", "reflect", "replicate", "circular")

    def __init__(self, pad: Sequence[int], mode: str = "constant", step_mode: str = "s") -> None:
        super().__init__()
        pad = tuple(int(p) for p in pad)
        if len(pad) not in (2, 4, 6):
            raise ValueError(f"only padding of the last one to three dimensions is supported, got pad={pad}")
        if mode not in self.MODES:
            raise ValueError(f"padding mode {mode!r} is not supported")
        self.pad = pad
        self.mode = mode
        self.step_mode = step_mode

    def supported_step_mode(self):
        return ("s", "m")

    def extra_repr(self) -> str:
        return f"pad={self.pad}, mode={self.mode}, step_mode={self.step_mode}"

    def spec(self) -> dict:
        return {"pad": list(self.pad), "mode": self.mode}

    def _fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad, mode=self.mode)

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_fn` without allocating (no autograd): a pad of zeros passes the tensor through; a
        zero pad copies it into the interior of a buffer whose border was zeroed once; reflect and
        replicate write into a buffer (the same kernels, so the same numbers); crops and circular
        padding as ``F.pad``."""
        nd = len(self.pad) // 2
        if not any(self.pad):
            return x
        if _needs_grad(x) or self.mode == "circular" or min(self.pad) < 0 or x.dim() < nd + 1:
            return self._fn(x)
        shape = list(x.shape)
        for i in range(nd):
            shape[-1 - i] += self.pad[2 * i] + self.pad[2 * i + 1]
        out = self.step_buffer("out", shape, x)
        if self.mode != "constant":
            fn = getattr(torch._C._nn, f"{'reflection' if self.mode == 'reflect' else 'replication'}_pad{nd}d")
            return fn(x, self.pad, out=out)
        key = (out.data_ptr(), tuple(out.shape))
        if not self.streaming or self.__dict__.get("_zeroed") != key:  # a new buffer: its border is zeroed
            out.zero_()
            self._zeroed = key if self.streaming else None
        inner = (..., *(slice(self.pad[2 * i], shape[-1 - i] - self.pad[2 * i + 1]) for i in reversed(range(nd))))
        out[inner].copy_(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _per_image(self._step, x, self.step_mode)

    def flow(self, x: torch.Tensor, T: float = 1.0) -> torch.Tensor:
        return self._fn(x)

    @property
    def left_top(self) -> tuple[int, int]:
        """Padding before the first row and column (may be negative: cropping)."""
        return (self.pad[2] if len(self.pad) >= 4 else 0), self.pad[0]

    def before(self, nd: int) -> tuple[int, ...]:
        """Padding before the first position of each of the last ``nd`` axes, in axis order
        (may be negative: cropping; 0 where the pad leaves an axis alone)."""
        pairs = [self.pad[i] for i in range(0, len(self.pad), 2)]  # last axis first
        return tuple(reversed((pairs + [0] * nd)[:nd]))


class ChannelAffine(Buffered, nn.Module, base.StepModule):
    """``y = scale_c · x + shift_c`` over the channel dimension (the one before the
    ``spatial_dims`` spatial axes: −3 for images, −4 for volumes); ``shift=False`` for a gain."""

    def __init__(self, channels: int, shift: bool = True, step_mode: str = "s", spatial_dims: int = 2) -> None:
        super().__init__()
        self.channels = int(channels)
        self.spatial_dims = int(spatial_dims)
        self.register_buffer("scale", torch.ones(self.channels))
        self.register_buffer("shift", torch.zeros(self.channels) if shift else None)
        self.step_mode = step_mode

    @classmethod
    def of(cls, scale: torch.Tensor, shift: torch.Tensor | None = None) -> "ChannelAffine":
        m = cls(scale.numel(), shift is not None)
        m.scale.copy_(scale.detach().to(m.scale.dtype))
        if shift is not None:
            m.shift.copy_(shift.detach().to(m.shift.dtype))
        return m

    def supported_step_mode(self):
        return ("s", "m")

    def extra_repr(self) -> str:
        return f"channels={self.channels}, shift={self.shift is not None}, step_mode={self.step_mode}"

    def spec(self) -> dict:
        out = {"channels": self.channels, "shift": self.shift is not None}
        return out if self.spatial_dims == 2 else {**out, "spatial_dims": self.spatial_dims}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = self.spatial_dims
        scale = per_channel(self.scale, nd)
        if _needs_grad(x, self.scale, self.shift) or torch.result_type(x, self.scale) != x.dtype:
            y = x * scale
            return y + per_channel(self.shift, nd) if self.shift is not None else y
        out = torch.mul(x, scale, out=self.step_buffer("out", x.shape, x))
        return out if self.shift is None else out.add_(per_channel(self.shift, nd))  # (not addcmul: it fuses)

    def flow(self, x: torch.Tensor, T: float = 1.0) -> torch.Tensor:
        nd = self.spatial_dims
        y = x * per_channel(self.scale, nd)
        return y + T * per_channel(self.shift, nd) if self.shift is not None else y


class SpikingMaxPool2d(Buffered, base.MemoryModule):
    """Max-pooling of accumulated spikes: o_t = maxpool(S_t) − maxpool(S_{t−1}), S_t = Σ_{τ≤t} x_τ,
    over as many spatial axes as its kernel has (an int kernel: ``spatial_dims``, 2 by default).

    Memories (reset by ``functional.reset_net``): ``acc`` = S and, without autograd, ``pooled`` =
    maxpool(S_{t−1}), so a step pools once and allocates only the pooled sums
    (:mod:`sjunet.layers.buffers`). Σ_t o_t = maxpool(S_T), which tends to T × the ANN's max-pool
    as each input's rate converges (spec §11). The unit of the input passes through (max-pooling
    commutes with a positive per-channel scale).

    For energy counting it is an event source: with ``record_spikes`` on, ``spike_count`` and
    ``event_count`` both count its non-zero outputs (one graded event each) over the steps.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
                 step_mode: str = "s", spatial_dims: int | None = None) -> None:
        super().__init__()
        if spatial_dims is None:
            sized = [len(v) for v in (kernel_size, stride, padding, dilation) if isinstance(v, (tuple, list))]
            spatial_dims = sized[0] if sized else 2
        self.spatial_dims = int(spatial_dims)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = bool(ceil_mode)
        self.step_mode = step_mode
        self.record_spikes = False
        self.register_memory("acc", 0.0)
        self.register_memory("pooled", 0.0)  # maxpool(S_{t−1}), kept by the in-place step
        self.register_memory("spike_count", 0.0)
        self.register_memory("event_count", 0.0)

    @classmethod
    def from_maxpool(cls, m: nn.Module) -> "SpikingMaxPool2d":
        """From a ``MaxPool1d/2d/3d`` (or another spiking max-pool)."""
        from sjunet.layers.dims import module_dims

        if getattr(m, "return_indices", False):
            raise ValueError(f"{type(m).__name__}(return_indices=True) cannot be converted")
        return cls(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                   spatial_dims=module_dims(m) or getattr(m, "spatial_dims", 2))

    def supported_step_mode(self):
        return ("s", "m")

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}, step_mode={self.step_mode}")

    def spec(self) -> dict:
        out = {"kernel_size": _plain(self.kernel_size), "stride": _plain(self.stride),
               "padding": _plain(self.padding), "dilation": _plain(self.dilation), "ceil_mode": self.ceil_mode}
        return out if self.spatial_dims == 2 else {**out, "spatial_dims": self.spatial_dims}

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return functional("max_pool", self.spatial_dims)(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                                         self.ceil_mode)

    def _count(self, o: torch.Tensor, steps_dim: bool) -> None:
        if self.record_spikes:
            n = (o != 0).to(o.dtype)
            n = n.sum(0) if steps_dim else n
            self.spike_count = n if isinstance(self.spike_count, float) else self.spike_count + n
            self.event_count = self.spike_count

    def _in_place(self, x: torch.Tensor) -> bool:
        return not (torch.is_grad_enabled() and (x.requires_grad or (isinstance(self.acc, torch.Tensor)
                                                                      and self.acc.requires_grad)))

    def _step_into(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """One step in place: S += x (a buffer of its own), o = maxpool(S) − maxpool(S_prev), the
        previous pooled sums kept instead of pooled again (the same numbers); ``out`` (None: the
        first step, whose output is maxpool(S) itself) receives o."""
        if isinstance(self.acc, float):
            prev = None
            self.acc = self.step_buffer("acc", x.shape, x).copy_(x)
        else:
            prev = self.pooled if isinstance(self.pooled, torch.Tensor) else self.pool(self.acc)
            self.acc.add_(x)
        pooled = self.pooled = self.pool(self.acc)
        if prev is None:
            return pooled if out is None else out.copy_(pooled)
        return torch.sub(pooled, prev, out=self.step_buffer("out", pooled.shape, pooled) if out is None else out)

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._in_place(x):
            o = self._step_into(x, None)
        else:
            self.pooled = 0.0  # kept by the in-place step only
            if isinstance(self.acc, float):  # first step: S_0 = 0, maxpool(0) = 0
                self.acc = x.clone()  # its own tensor: an in-place step may add to it later
                o = self.pool(x)
            else:
                prev = self.pool(self.acc)
                self.acc = self.acc + x
                o = self.pool(self.acc) - prev
        self._count(o, False)
        return o

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if self._in_place(x_seq):  # step by step: the same numbers as single-step mode
            first = self._step_into(x_seq[0], None)
            out = self.step_buffer("out_seq", (x_seq.shape[0], *first.shape), first)
            out[0].copy_(first)
            for t in range(1, x_seq.shape[0]):
                self._step_into(x_seq[t], out[t])
            self._count(out, True)
            return out
        self.pooled = 0.0
        sums = torch.cumsum(x_seq, 0)
        if not isinstance(self.acc, float):
            sums = sums + self.acc
        pooled = self.pool(sums.flatten(0, 1)).unflatten(0, x_seq.shape[:2])
        first = pooled[:1] - (self.pool(self.acc) if not isinstance(self.acc, float) else 0.0)
        self.acc = sums[-1]
        o = torch.cat([first, pooled[1:] - pooled[:-1]])
        self._count(o, True)
        return o

    def flow(self, x: torch.Tensor, T: float = 1.0) -> torch.Tensor:
        return self.pool(x)


class AdaptiveAvgPool(nn.Module, base.StepModule):
    """Adaptive (global) average pooling of the last two (or ``spatial_dims``) dimensions to
    ``output_size`` (an int or ``(h, w)`` / ``(d, h, w)``; ``None`` keeps that dimension): a linear
    stage, unit passes through (spec §11)."""

    def __init__(self, output_size: int | Sequence[int | None] = 1, step_mode: str = "s",
                 spatial_dims: int | None = None) -> None:
        super().__init__()
        nd = len(output_size) if isinstance(output_size, (list, tuple)) else (spatial_dims or 2)
        size = tuple(output_size) if isinstance(output_size, (list, tuple)) else (output_size,) * nd
        if len(size) not in (2, 3) or any(s is not None and (not isinstance(s, int) or isinstance(s, bool) or s < 1)
                                          for s in size):
            raise ValueError("output_size must be a positive int or a pair or triple of them (or None), "
                             f"got {output_size!r}")
        self.spatial_dims = len(size)
        self.output_size = size
        self.step_mode = step_mode

    def supported_step_mode(self):
        return ("s", "m")

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, step_mode={self.step_mode}"

    def spec(self) -> dict:
        return {"output_size": list(self.output_size)}

    def _fn(self, x: torch.Tensor) -> torch.Tensor:
        return functional("adaptive_avg_pool", self.spatial_dims)(x, self.output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _per_image(self._fn, x, self.step_mode)

    def flow(self, x: torch.Tensor, T: float = 1.0) -> torch.Tensor:
        return self._fn(x)


class Concat(Buffered, nn.Module, base.StepModule):
    """``torch.cat`` of step tensors along ``dim`` (of a single step; one more in multi-step mode),
    written into a buffer reused across steps while streaming (:mod:`sjunet.layers.buffers`): the
    concatenation of a converted graph copies its parts once per step and allocates nothing.
    It replaces SpikingJelly's step-mode ``cat`` adapter at load and conversion
    (:func:`sjunet.snn.file.adapt`); graphs and files still record a ``torch.cat``."""

    #: what graph analysis reads of SpikingJelly's adapter (``kind_of`` -> "cat"), kept alike
    op_name = "cat"

    def __init__(self, dim: int = 1, step_mode: str = "s") -> None:
        super().__init__()
        self.dim = int(dim)
        self.step_mode = step_mode

    @property
    def op_kwargs(self) -> dict:
        return {"dim": self.dim}

    def supported_step_mode(self):
        return ("s", "m")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, step_mode={self.step_mode}"

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        d = self.dim + 1 if self.step_mode == "m" and self.dim >= 0 else self.dim
        if self.step_mode == "m" and d in (0, 1 - xs[0].dim()):
            raise ValueError("a concatenation along the batch axis has no multi-step form")
        if torch.is_grad_enabled() and any(x.requires_grad for x in xs):
            return torch.cat(xs, d)
        shape = list(xs[0].shape)
        shape[d] = sum(x.shape[d] for x in xs)
        return torch.cat(xs, d, out=self.step_buffer("out", shape, xs[0]))


NORM_KINDS = ("instance_norm", "group_norm", "layer_norm")
MAX_GROUPS = 65_536


def _check_groups(groups: Any) -> int:
    if not isinstance(groups, int) or isinstance(groups, bool) or not 1 <= groups <= MAX_GROUPS:
        raise ValueError(f"groups must be an integer in 1..{MAX_GROUPS}, got {groups!r}")
    return groups


def _grouped(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``x`` ([N, C, H, W]) as [N, groups, C/groups · H · W]."""
    if x.dim() < 2 or x.shape[1] % groups:
        raise ValueError(f"{x.shape[1] if x.dim() > 1 else '?'} channels do not split into {groups} groups")
    return x.reshape(x.shape[0], groups, -1)


class Center(Buffered, nn.Module, base.StepModule):
    """Subtract the per-sample mean over each group of channels and all positions (spec §11: the
    linear half of instance / group / layer norm; ``groups`` = C for instance norm, 1 for layer
    norm). Linear, no bias: on synaptic currents it runs per time step, and Σ_t of the centred
    currents is the centred Σ_t — exact in the SNN. A per-channel unit passes through only when it
    is uniform within each group (:mod:`sjunet.conversion.normalization` inserts a gain where it is not)."""

    def __init__(self, groups: int = 1, step_mode: str = "s") -> None:
        super().__init__()
        self.groups = _check_groups(groups)
        self.step_mode = step_mode

    def supported_step_mode(self):
        return ("s", "m")

    def extra_repr(self) -> str:
        return f"groups={self.groups}, step_mode={self.step_mode}"

    def spec(self) -> dict:
        return {"groups": self.groups}

    def _fn(self, x: torch.Tensor) -> torch.Tensor:
        g = _grouped(x, self.groups)
        if _needs_grad(x):
            return (g - g.mean(-1, keepdim=True)).reshape(x.shape)
        out = self.step_buffer("out", g.shape, g)
        return torch.sub(g, g.mean(-1, keepdim=True), out=out).view(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _per_image(self._fn, x, self.step_mode)

    def flow(self, x: torch.Tensor, T: float = 1.0) -> torch.Tensor:
        return self._fn(x)


class Normalize(nn.Module, base.StepModule):
    """The division of instance / group / layer norm, after :class:`Center`: by the per-sample
    deviation σ_s = sqrt(var_s + eps) of each group (``sigma`` unset: the ANN itself, as in
    calibration) or by a fixed per-channel deviation σ̂ (``fix(sigma)``: the ANN the SNN
    implements, :func:`sjunet.calibration.approximation.fixed_deviation`). Only in the ANN's
    canonical graph: conversion folds σ̂ into the :class:`ChannelAffine` after it, and an SNN file
    has no such stage (a per-sample division has no spiking form)."""

    def __init__(self, groups: int = 1, eps: float = 1e-5, kind: str = "group_norm", step_mode: str = "s",
                 spatial_dims: int = 2) -> None:
        super().__init__()
        self.spatial_dims = int(spatial_dims)
        if kind not in NORM_KINDS:
            raise ValueError(f"kind must be one of {NORM_KINDS}, got {kind!r}")
        self.groups = _check_groups(groups)
        self.eps = float(eps)
        self.kind = kind
        self.register_buffer("sigma", None)
        self.step_mode = step_mode

    def supported_step_mode(self):
        return ("s", "m")

    def extra_repr(self) -> str:
        return f"groups={self.groups}, eps={self.eps}, kind={self.kind}, fixed={self.sigma is not None}"

    def fix(self, sigma: torch.Tensor | None) -> "Normalize":
        """Divide by the fixed per-channel deviation ``sigma`` ([C]) from now on (None: per sample)."""
        self.sigma = None if sigma is None else torch.as_tensor(sigma).detach().reshape(-1).clone()
        return self

    def deviation(self, x: torch.Tensor) -> torch.Tensor:
        """σ_s per sample and group, [N, groups] (biased variance, as torch's norms)."""
        return torch.sqrt(_grouped(x, self.groups).var(-1, unbiased=False) + self.eps)

    def _fn(self, x: torch.Tensor) -> torch.Tensor:
        if self.sigma is None:
            return (_grouped(x, self.groups) / self.deviation(x).unsqueeze(-1)).reshape(x.shape)
        return x / per_channel(self.sigma.to(x.dtype), self.spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _per_image(self._fn, x, self.step_mode)

    def flow(self, x: torch.Tensor, T: float = 1.0) -> torch.Tensor:
        if self.sigma is None:
            raise ValueError("a per-sample normalization has no spiking form; fix its deviation (calibration) first")
        return self._fn(x)


#: the spiking max-pool of any dimensionality (its class keeps the name SNN files record it by)
SpikingMaxPool = SpikingMaxPool2d

STAGE_TYPES = (Resample, Pad, ChannelAffine, SpikingMaxPool, AdaptiveAvgPool, Center)
