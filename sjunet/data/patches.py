"""Whole-image prediction from overlapping patches: the paper's DRIVE protocol (its official
code: 48x48 patches, stride 16, overlapping outputs averaged), ``sjunet evaluate --protocol patch``.
The default evaluation runs whole images instead (:mod:`sjunet.evaluation`): each pixel of a
48/16 grid is computed about 9 times here."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F


def _padded(size: int, patch: int, stride: int) -> int:
    """Smallest length ≥ ``size`` (and ≥ ``patch``) tiled exactly by ``patch`` windows every ``stride``."""
    if size <= patch:
        return patch
    return patch + -(-(size - patch) // stride) * stride


def patch_grid(height: int, width: int, patch: int, stride: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Padded size ``(H', W')`` and the top-left corners of all windows tiling it."""
    hp, wp = _padded(height, patch, stride), _padded(width, patch, stride)
    corners = [(y, x) for y in range(0, hp - patch + 1, stride) for x in range(0, wp - patch + 1, stride)]
    return hp, wp, corners


def predict_by_patches(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    patch: int = 48,
    stride: int = 16,
    batch_size: int = 64,
    pad_mode: str = "constant",
    no_grad: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run ``fn`` on overlapping ``patch`` x ``patch`` windows of ``image`` and recompose.

    Args:
        fn: maps a batch ``[N, C, patch, patch]`` to ``[N, K, patch, patch]`` (any ``K``: logits,
            probabilities, a noise map…).
        image: ``[C, H, W]`` or ``[B, C, H, W]``.
        patch, stride: window side and step (``stride <= patch``, so windows cover the image).
        batch_size: windows per call of ``fn`` (windows of all ``B`` images are batched together).
        pad_mode: how the image is padded at the bottom/right so windows tile it exactly
            (``"constant"`` = zeros, as the official code; or ``"reflect"`` / ``"replicate"``).
        no_grad: run ``fn`` under :func:`torch.no_grad`.
        on_batch: called after every call of ``fn`` with the number of windows it took (progress).

    Returns:
        ``[K, H, W]`` (or ``[B, K, H, W]``): each pixel the mean of ``fn``'s outputs over the windows
        containing it, cropped back to ``H x W``; on ``image``'s device, in ``fn``'s output dtype.
    """
    if patch < 1:
        raise ValueError(f"the patch side must be a positive number of pixels, got {patch}")
    if not 0 < stride <= patch:
        raise ValueError(f"the stride must be between 1 and the patch side ({patch}) pixels, got {stride}")
    single = image.dim() == 3
    batch = image.unsqueeze(0) if single else image
    if batch.dim() != 4:
        raise ValueError(f"image must be [C,H,W] or [B,C,H,W], got {tuple(image.shape)}")
    b, _, h, w = batch.shape
    hp, wp, corners = patch_grid(h, w, patch, stride)
    padded = F.pad(batch, (0, wp - w, 0, hp - h), mode=pad_mode) if (hp, wp) != (h, w) else batch
    windows = [(i, y, x) for i in range(b) for (y, x) in corners]

    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, hp, wp, device=batch.device)
    for (y, x) in corners:
        count[..., y : y + patch, x : x + patch] += 1

    with torch.no_grad() if no_grad else contextlib.nullcontext():
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            inputs = torch.stack([padded[i, :, y : y + patch, x : x + patch] for i, y, x in chunk])
            outputs = fn(inputs)
            if outputs.dim() != 4 or outputs.shape[0] != len(chunk) or outputs.shape[-2:] != (patch, patch):
                raise ValueError(
                    f"fn must map [N,C,{patch},{patch}] to [N,K,{patch},{patch}]; got {tuple(outputs.shape)}"
                )
            if total is None:
                total = outputs.new_zeros(b, outputs.shape[1], hp, wp)
            for out, (i, y, x) in zip(outputs, chunk):
                total[i, :, y : y + patch, x : x + patch] += out
            if on_batch is not None:
                on_batch(len(chunk))
    assert total is not None
    result = (total / count.to(total.dtype))[:, :, :h, :w]
    return result[0] if single else result
