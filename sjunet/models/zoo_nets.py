"""Hand-written reference U-Nets in the styles people train (spec §11), for the zoo benchmark and
the tests. Written from descriptions of the architectures, not copied from their sources.

* :class:`PadCatUNet` — the layout of the popular "PyTorch-UNet" (milesial): DoubleConv
  (3x3 conv without bias, BatchNorm, ReLU, twice), Down = MaxPool2d(2) + DoubleConv, Up =
  bilinear ``nn.Upsample(scale_factor=2, align_corners=True)`` (then a DoubleConv with a middle
  width of half its input) or ``ConvTranspose2d(k=2, s=2)``; the upsampled tensor is padded by
  the size difference to the skip (``F.pad`` with amounts computed from ``x.size()``) before
  ``torch.cat([skip, up], dim=1)``; a 1x1 output convolution. The padding amounts are shape
  arithmetic: sjunet specialises them on the calibration input (they are 0 for every H, W that
  is a multiple of ``2**depth``).
* :class:`PyramidPoolNet` — a small encoder with a PSP-style head: global/adaptive average
  pooling branches (``nn.AdaptiveAvgPool2d``, ``F.adaptive_avg_pool2d``, ``x.mean((2, 3),
  keepdim=True)``) upsampled back to the feature map's size (``size=x.shape[-2:]``) and
  concatenated.
* :class:`FunctionalConvNet` — convolutions and batch norms written functionally with the
  module's own tensors (``F.conv2d(x, self.weight, …)`` after a "same" padding computed from
  shapes, ``F.batch_norm(x, running_mean, …, training=False)``), as EfficientNet ports and timm's
  ``BatchNormAct2d`` do.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Module):
    """(3x3 conv, no bias → BatchNorm → ReLU) x 2; ``mid`` channels in between."""

    def __init__(self, cin: int, cout: int, mid: int | None = None) -> None:
        super().__init__()
        mid = mid or cout
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upsample ``x1`` (bilinear or transposed conv), pad it to ``x2``'s size, concatenate, DoubleConv."""

    def __init__(self, cin: int, cout: int, bilinear: bool = True) -> None:
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(cin, cout, cin // 2)
        else:
            self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(cin, cout)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        diff_y = x2.size()[2] - x1.size()[2]
        diff_x = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class OutConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class PadCatUNet(nn.Module):
    """The "PyTorch-UNet" layout (module docstring): ``depth`` Down and Up stages, widths
    ``width·2^i``; with ``bilinear`` the deepest stage has half the width (factor 2)."""

    def __init__(self, n_channels: int = 3, n_classes: int = 2, bilinear: bool = False, width: int = 64,
                 depth: int = 4) -> None:
        super().__init__()
        self.n_channels, self.n_classes, self.bilinear = n_channels, n_classes, bilinear
        factor = 2 if bilinear else 1
        w = [width * 2 ** i for i in range(depth + 1)]
        self.inc = DoubleConv(n_channels, w[0])
        self.downs = nn.ModuleList(Down(w[i], w[i + 1] // (factor if i == depth - 1 else 1)) for i in range(depth))
        self.ups = nn.ModuleList(Up(w[depth - i], w[depth - i - 1] // (factor if i < depth - 1 else 1), bilinear)
                                 for i in range(depth))
        self.outc = OutConv(w[0], n_classes)

    def forward(self, x):
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.outc(y)


class PyramidPoolNet(nn.Module):
    """Encoder + pyramid pooling head (module docstring): branches at 1x1 (a module, a spatial
    mean, the functional form) and 2x2, each a 1x1 conv + ReLU, upsampled to the feature map."""

    def __init__(self, cin: int = 1, classes: int = 2, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.b1, self.b2, self.b3, self.b4 = (nn.Conv2d(width, width // 2, 1) for _ in range(4))
        self.head = nn.Conv2d(width * 3, classes, 3, padding=1)

    def forward(self, x):
        f = self.stem(x)
        size = f.shape[-2:]
        p1 = F.relu(self.b1(self.pool(f)))
        p2 = F.relu(self.b2(f.mean((2, 3), keepdim=True)))
        p3 = F.relu(self.b3(F.adaptive_avg_pool2d(f, 2)))
        p4 = F.relu(self.b4(F.adaptive_avg_pool2d(f, (f.size(2) // 2, f.size(3) // 2))))
        ups = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in (p1, p2, p3, p4)]
        y = torch.cat([f, *ups], dim=1)
        return F.interpolate(self.head(y), scale_factor=2, mode="bilinear", align_corners=False)


class _SameConv2d(nn.Conv2d):
    """A TensorFlow-style "same" convolution: the padding is computed from the input's shape, then
    ``F.conv2d`` runs with the module's weight (as EfficientNet ports write it)."""

    def forward(self, x):
        ih, iw = x.size()[-2:]
        kh, kw = self.weight.size()[-2:]
        sh, sw = self.stride
        oh, ow = math.ceil(ih / sh), math.ceil(iw / sw)
        pad_h = max((oh - 1) * sh + (kh - 1) * self.dilation[0] + 1 - ih, 0)
        pad_w = max((ow - 1) * sw + (kw - 1) * self.dilation[1] + 1 - iw, 0)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _BatchNormAct(nn.BatchNorm2d):
    """BatchNorm written with ``F.batch_norm`` on the module's tensors, then a ReLU (timm's style)."""

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                         0.0 if self.momentum is None else self.momentum, self.eps)
        return F.relu(x)


class FunctionalConvNet(nn.Module):
    """Functional convolutions / batch norms with constant tensors (module docstring)."""

    def __init__(self, cin: int = 1, classes: int = 2, width: int = 4) -> None:
        super().__init__()
        self.c1, self.n1 = _SameConv2d(cin, width, 3, stride=2, bias=False), _BatchNormAct(width)
        self.c2, self.n2 = _SameConv2d(width, width, 3), _BatchNormAct(width)
        self.up = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.head = nn.Conv2d(width + cin, classes, 1)

    def forward(self, x):
        y = self.n2(self.c2(self.n1(self.c1(x))))
        return self.head(torch.cat([x, self.up(y)], dim=1))


__all__ = ["DoubleConv", "Down", "FunctionalConvNet", "OutConv", "PadCatUNet", "PyramidPoolNet", "Up"]


def unetr(**kwargs):
    """MONAI's ``UNETR`` that says its input size (``size_multiple``: its ``img_size``; a ViT's position
    embeddings fix it), so sjunet's size rule needs no probe. The zoo builds its 2-D UNETR rows with it."""
    from monai.networks.nets import UNETR

    model = UNETR(**kwargs)
    size = tuple(int(v) for v in kwargs["img_size"])
    model.size_multiple = size[0] if len(size) == 2 and size[0] == size[1] else size
    return model
