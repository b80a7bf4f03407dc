"""The number of spatial dimensions, in one place (spec §14).

Nothing in conversion depends on how many spatial axes a tensor has: a convolution's fan-out, a
pool's window, a resample's factor and the size rule are per axis. Code that must name a layer or
a functional of one dimensionality asks this module — ``layer("conv", 3)`` is ``nn.Conv3d``,
``functional("max_pool", x.dim() - 2)`` is ``F.max_pool3d`` for a volume batch — so adding a
dimensionality is one entry per table here. Code that only needs to recognise a layer uses the
base classes (:data:`CONV_TYPES`, :data:`CONV_T_TYPES`, :data:`BATCHNORM_TYPES` …).

Converted: 2-D images ``[N, C, H, W]`` and 3-D volumes ``[N, C, D, H, W]`` (:data:`SUPPORTED`);
1-D layers are known to the tables but refused by the converter (not tested).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

#: spatial dimensionalities the converter accepts (2-D images, 3-D volumes)
SUPPORTED = (2, 3)
#: names of the spatial axes, by dimensionality (messages)
AXES = {1: ("W",), 2: ("H", "W"), 3: ("D", "H", "W")}

_LAYERS: dict[str, dict[int, type]] = {
    "conv": {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d},
    "conv_t": {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d},
    "batch_norm": {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
    "instance_norm": {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
    "avg_pool": {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d},
    "max_pool": {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d},
    "adaptive_avg_pool": {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d},
}

_FUNCTIONALS: dict[str, dict[int, object]] = {
    "conv": {1: F.conv1d, 2: F.conv2d, 3: F.conv3d},
    "conv_t": {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d},
    "avg_pool": {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d},
    "max_pool": {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d},
    "adaptive_avg_pool": {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d},
}

CONV_TYPES = tuple(_LAYERS["conv"].values())
CONV_T_TYPES = tuple(_LAYERS["conv_t"].values())
BATCHNORM_TYPES = tuple(_LAYERS["batch_norm"].values())
INSTANCENORM_TYPES = tuple(_LAYERS["instance_norm"].values())
AVGPOOL_TYPES = tuple(_LAYERS["avg_pool"].values())
MAXPOOL_TYPES = tuple(_LAYERS["max_pool"].values())
ADAPTIVE_AVG_TYPES = tuple(_LAYERS["adaptive_avg_pool"].values())


def layer(op: str, nd: int) -> type:
    """The torch.nn layer of ``op`` for ``nd`` spatial dimensions (``layer("conv", 3)``: Conv3d)."""
    try:
        return _LAYERS[op][nd]
    except KeyError:
        raise ValueError(f"no {op} layer for {nd} spatial dimension(s)") from None


def functional(op: str, nd: int):
    """The functional of ``op`` for ``nd`` spatial dimensions (``functional("max_pool", 3)``)."""
    try:
        return _FUNCTIONALS[op][nd]
    except KeyError:
        raise ValueError(f"no {op} function for {nd} spatial dimension(s)") from None


def functional_dims(fn) -> tuple[str, int] | None:
    """``(op, nd)`` of one of the tables' functionals (``F.conv3d`` → ``("conv", 3)``), else None."""
    for op, by in _FUNCTIONALS.items():
        for nd, f in by.items():
            if fn is f:
                return op, nd
    return None


def module_dims(m: nn.Module) -> int | None:
    """Spatial dimensions of a layer of the tables (None for any other module)."""
    for by in _LAYERS.values():
        for nd, t in by.items():
            if isinstance(m, t):
                return nd
    nd = getattr(m, "spatial_dims", None)
    return nd if isinstance(nd, int) else None


def spatial_dims(module: nn.Module, default: int = 2) -> int:
    """Spatial dimensions of a network: those of its first convolution (or other layer of the
    tables); ``default`` when it has none."""
    for m in module.modules():
        if isinstance(m, CONV_TYPES + CONV_T_TYPES):
            return len(m.kernel_size)
    for m in module.modules():
        nd = module_dims(m)
        if nd is not None:
            return nd
    return default


def set_spatial_dims(module: nn.Module, nd: int | None = None) -> int:
    """Tell every stage of ``module`` that broadcasts per channel (:class:`~sjunet.layers.stages.ChannelAffine`,
    :class:`~sjunet.layers.stages.Normalize`) how many spatial axes follow the channel axis (``nd``:
    the network's own, :func:`spatial_dims`, when not given). Returns ``nd``."""
    nd = spatial_dims(module) if nd is None else int(nd)
    for m in module.modules():
        if hasattr(m, "spatial_dims") and not isinstance(m, CONV_TYPES + CONV_T_TYPES):
            m.spatial_dims = nd
    return nd


def per_channel(t: torch.Tensor, nd: int) -> torch.Tensor:
    """A [C] tensor shaped to broadcast over ``[…, C, *spatial]`` with ``nd`` spatial axes."""
    return t.view(-1, *([1] * nd))


def axes(nd: int) -> tuple[str, ...]:
    return AXES.get(nd, tuple(f"S{i}" for i in range(nd)))


def show(sizes: Iterable[int]) -> str:
    """``16x16x8``"""
    return "x".join(str(int(v)) for v in sizes)
