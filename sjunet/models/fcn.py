"""The Spiking-FCN baseline's architecture (Kim, Chough, Panda, "Beyond classification: directly
training spiking neural networks for semantic segmentation", Neuromorph. Comput. Eng. 2022; the
paper's ref. [40], Table 1's "Spiking-FCN" column).

Kim et al. build an FCN on a VGG-style encoder with LIF neurons, average pooling and FCN-8s-style
score fusion, trained directly with surrogate gradients. Their exact widths target 224² RGB scenes;
here the same shape at U-Net-comparable size: four VGG blocks (``width``·1, 2, 4, 8 channels, two
3×3 conv + ReLU each, average pooling after the first three), 1×1 score layers on the outputs of
blocks 2, 3 and 4, and the FCN-8s fusion — upsample the coarsest scores ×2 (bilinear), add the
next scores, ×2 again, add, ×4 to the input resolution. No skip concatenations: that is the
difference from the U-Net the comparison is about. ReLUs become neurons under
``sjunet train --spiking --neuron lif --arch sjunet.models.fcn:SpikingFCNNet``; the ANN is
trainable and convertible like any other ``--arch``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())


class SpikingFCNNet(nn.Module):
    """FCN-8s-style network (module docstring); inputs must be multiples of 8 pixels."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2, width: int = 16) -> None:
        super().__init__()
        w = int(width)
        self.block1 = _block(in_channels, w)
        self.block2 = _block(w, 2 * w)
        self.block3 = _block(2 * w, 4 * w)
        self.block4 = _block(4 * w, 8 * w)
        self.pool = nn.AvgPool2d(2)
        self.score2 = nn.Conv2d(2 * w, out_channels, 1)
        self.score3 = nn.Conv2d(4 * w, out_channels, 1)
        self.score4 = nn.Conv2d(8 * w, out_channels, 1)

    def forward(self, x):
        f2 = self.block2(self.pool(self.block1(x)))  # 1/2
        f3 = self.block3(self.pool(f2))  # 1/4
        f4 = self.block4(self.pool(f3))  # 1/8
        s = F.interpolate(self.score4(f4), scale_factor=2, mode="bilinear", align_corners=False) + self.score3(f3)
        s = F.interpolate(s, scale_factor=2, mode="bilinear", align_corners=False) + self.score2(f2)
        return F.interpolate(s, scale_factor=2, mode="bilinear", align_corners=False)
