"""The U-Net of spec §2 (Ronneberger et al. 2015, with the Spiking-UNet paper's changes).

* ``depth`` down stages and ``depth`` up stages, two 3x3 conv (+BN) + ReLU per stage;
* **AvgPool2d(2)** instead of max-pooling, as the paper does (``pool="max"`` gives the original
  U-Net's MaxPool2d(2), converted to a spiking max-pool, spec §11);
* ``ConvTranspose2d(k=2, s=2)`` up-convolution, *without* an activation by default
  (``up_relu=True`` adds one, as in the paper's official code);
* skip connections ``torch.cat([skip, up], dim=1)``;
* a 1x1 output convolution with no activation.

The module is FX-traceable (plain Python loops over ``nn.ModuleList`` unroll), so
SpikingJelly's ``ann2snn`` converter and :mod:`sjunet.calibration` can trace it.
Input height and width must be multiples of ``2**depth``.

``spatial_dims=3`` builds the same network for volumes ``[N, C, D, H, W]`` (Conv3d, BatchNorm3d,
AvgPool3d / MaxPool3d(2), ConvTranspose3d(k=2, s=2); layers named by :mod:`sjunet.layers.dims`): depth,
height and width must each be a multiple of ``2**depth``. The 2-D network, its state-dict keys and
its checkpoint record are unchanged (``spatial_dims`` is recorded only when it is not 2).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from sjunet.layers import dims


#: sanity limits of a config (a checkpoint's record is checked against them before building)
MAX_DEPTH = 10
MAX_CHANNELS = 1 << 16


@dataclass(frozen=True)
class UNetConfig:
    """Architecture options of :class:`UNet` (saved in every checkpoint)."""

    in_channels: int = 1
    out_channels: int = 2
    base_width: int = 64
    depth: int = 4
    batch_norm: bool = False
    up_relu: bool = False
    pool: str = "avg"
    #: 2: images [N, C, H, W]; 3: volumes [N, C, D, H, W]
    spatial_dims: int = 2

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "base_width", "depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"UNetConfig.{name} must be an integer, got {v!r}")
            if v < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1, got {v}")
        for name in ("batch_norm", "up_relu"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"UNetConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.depth > MAX_DEPTH:
            raise ValueError(f"UNetConfig.depth must be <= {MAX_DEPTH}, got {self.depth}")
        if max(self.in_channels, self.out_channels) > MAX_CHANNELS or self.base_width * 2**self.depth > MAX_CHANNELS:
            raise ValueError(f"UNetConfig: at most {MAX_CHANNELS} channels per layer (in_channels, out_channels, "
                             f"base_width × 2**depth = {self.base_width * 2**self.depth})")
        if self.pool not in ("avg", "max"):
            raise ValueError(f"UNetConfig.pool must be 'avg' or 'max', got {self.pool!r}")
        if isinstance(self.spatial_dims, bool) or not isinstance(self.spatial_dims, int) or self.spatial_dims not in (2, 3):
            raise ValueError(f"UNetConfig.spatial_dims must be 2 (images) or 3 (volumes), got {self.spatial_dims!r}")

    def to_dict(self) -> dict:
        """The checkpoint's ``model_config`` record (a 2-D config's is what it always was: no
        ``spatial_dims`` key)."""
        d = asdict(self)
        if self.spatial_dims == 2:
            del d["spatial_dims"]
        return d


def _double_conv(c_in: int, c_out: int, batch_norm: bool, nd: int = 2) -> nn.Sequential:
    conv, bn = dims.layer("conv", nd), dims.layer("batch_norm", nd)
    layers: list[nn.Module] = []
    for a, b in ((c_in, c_out), (c_out, c_out)):
        layers.append(conv(a, b, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(bn(b))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net with average (or max) pooling and concatenation skips (spec §2)."""

    def __init__(self, config: UNetConfig | None = None, **kwargs) -> None:
        super().__init__()
        config = config or UNetConfig(**kwargs)
        self.config = config
        w, d, nd = config.base_width, config.depth, config.spatial_dims
        widths = [w * 2**i for i in range(d + 1)]
        self.down = nn.ModuleList()
        c_in = config.in_channels
        for i in range(d):
            self.down.append(_double_conv(c_in, widths[i], config.batch_norm, nd))
            c_in = widths[i]
        pool = dims.layer("avg_pool" if config.pool == "avg" else "max_pool", nd)
        self.pool = nn.ModuleList(pool(2) for _ in range(d))
        self.bottom = _double_conv(widths[d - 1], widths[d], config.batch_norm, nd)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(d)):
            up: nn.Module = dims.layer("conv_t", nd)(widths[i + 1], widths[i], 2, stride=2)
            if config.up_relu:
                up = nn.Sequential(up, nn.ReLU())
            self.up.append(up)
            self.dec.append(_double_conv(2 * widths[i], widths[i], config.batch_norm, nd))
        self.head = dims.layer("conv", nd)(widths[0], config.out_channels, 1)

    @property
    def size_multiple(self) -> int | tuple[int, ...]:
        """Input height/width must be a multiple of this (volumes: one multiple per axis, D, H, W)."""
        m = 2 ** self.config.depth
        return m if self.config.spatial_dims == 2 else (m,) * self.config.spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block, pool in zip(self.down, self.pool):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for up, block, skip in zip(self.up, self.dec, reversed(skips)):
            x = torch.cat([skip, up(x)], dim=1)
            x = block(x)
        return self.head(x)


def build_model(config: dict | UNetConfig) -> UNet:
    """Build a :class:`UNet` from a config (a dict as stored in checkpoints, or a UNetConfig)."""
    if isinstance(config, dict):
        config = UNetConfig(**config)
    return UNet(config)
