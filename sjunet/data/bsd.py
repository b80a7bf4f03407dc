"""Gaussian denoising data: BSD200 training crops and the Set12 / BSD68 / CBSD68 test sets.

Items are ``(noisy, noise)`` with ``noise = sigma/255 · N(0, 1)`` and ``noisy = clean + noise``,
**not clipped** (DnCNN practice; the network predicts the noise map, ``clean = noisy − noise``).

* ``bsd`` / ``train``: the BSD200 images (``*.jpg``; all 200 by default, all but the last
  ``val_images`` with ``holdout_val=True``), a random ``crop`` (default 192x256; portrait images
  are cropped within their 481x321 frame), random horizontal / vertical flips,
  ``sigma ~ U[sigma_range]`` (default [0, 55]) per item, ``samples_per_epoch`` items per epoch
  (default: one per image), item ``i`` from image ``i % n``.
* ``bsd`` / ``val``: the last ``val_images`` BSD200 images (40 = 20 % of 200: the rule of every 2-D
  data set, :func:`~sjunet.data.common.validation_size`), centre ``crop``, ``sigma``
  (default 25), noise from a generator seeded by ``(seed, index, sigma)`` — identical every epoch.
* ``set12``, ``bsd68`` (grayscale, 1 channel), ``cbsd68`` (colour, 3 channels): split ``test`` only,
  whole images, option ``sigma`` (15 / 25 / 50, default 25), noise seeded by
  ``(seed, index, sigma)``, so every run sees the same noisy images.

``color=False`` (gray) converts colour images with ``0.299 R + 0.587 G + 0.114 B`` in floating point.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .common import (
    check_headers,
    DENOISING,
    DatasetError,
    SJDataset,
    as_size,
    center_crop_box,
    crop,
    image_to_tensor,
    list_images,
    noisy_pair,
    random_crop,
    random_flip,
    read_image,
    require_files,
    resolve_root,
    select_split,
    validation_size,
)

DEFAULT_SIGMA = 25.0


def sigma_key(sigma: float) -> int:
    """Integer key of a noise level for seeding (σ in thousandths)."""
    return int(round(float(sigma) * 1000))


def _layout_check(what: str, extensions: tuple[str, ...]):
    def check(root: Path) -> str | None:
        if not list_images(root, extensions):
            exts = "/".join(e.lstrip(".") for e in extensions)
            return f"expected {what} ({exts} files) directly in {root}; found none"
        return None

    return check


class DenoisingDataset(SJDataset):
    """Denoising items cut from a list of clean images.

    ``train``: item ``i`` from image ``i % n``: random ``crop``, random horizontal / vertical flips,
    ``sigma ~ U[sigma_range]``, all drawn from the ``(seed, epoch, i)`` generator.
    Other splits: one item per image, centre ``eval_crop`` (``None``: whole image), noise level
    ``sigma`` from the ``(seed, i, sigma)`` generator.
    The images are ``self.files`` (found by :meth:`_setup`) unless a subclass overrides :meth:`image`.
    """

    task = DENOISING
    num_classes = 0
    EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
    WHAT = "images"

    def _setup(self, root: str | os.PathLike | None, split: str, seed: int) -> list[Path]:
        """Resolve the root directory (initialising the base class) and list its images."""
        check = _layout_check(self.WHAT, self.EXTENSIONS)
        super().__init__(resolve_root(root, self.DEFAULT_ROOT, check, self.name), split, seed)
        return list_images(self.root, self.EXTENSIONS)

    def _configure(
        self,
        num_images: int,
        *,
        crop: int | tuple[int, int] | None,
        eval_crop: int | tuple[int, int] | None,
        sigma_range: tuple[float, float],
        sigma: float,
        samples_per_epoch: int | None,
        flip: bool,
    ) -> None:
        self.num_images = num_images
        self.crop = as_size(crop, "crop")
        self.eval_crop = as_size(eval_crop, "eval_crop")
        lo, hi = float(sigma_range[0]), float(sigma_range[1])
        if not 0 <= lo <= hi:
            raise DatasetError(f"sigma_range must satisfy 0 <= low <= high, got {sigma_range!r}")
        self.sigma_range = (lo, hi)
        self.sigma = float(sigma)
        self.flip = bool(flip)
        self.length = int(samples_per_epoch or num_images) if self.train else num_images
        self.options.update(
            {
                "color": self.in_channels == 3,
                "crop": self.crop if self.train else self.eval_crop,
                "sigma_range": self.sigma_range if self.train else None,
                "sigma": None if self.train else self.sigma,
                "samples_per_epoch": self.length,
                "flip": self.flip if self.train else False,
            }
        )

    def image(self, i: int) -> np.ndarray:
        """Clean image ``i`` of the split as ``[H, W, in_channels]`` float32 in [0, 1]
        (default: read ``self.files[i]``)."""
        return read_image(self.files[i], self.in_channels, self.max_image_pixels)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        image = self.image(index % self.num_images)
        if self.train:
            rng = self.item_rng(index)
            (image,) = random_crop([image], self.crop, rng)
            if self.flip:
                (image,) = random_flip([image], rng, horizontal=True, vertical=True)
            sigma = float(rng.uniform(*self.sigma_range))
        else:
            if self.eval_crop is not None:
                (image,) = crop([image], *center_crop_box(image.shape[:2], self.eval_crop), self.eval_crop)
            sigma = self.sigma
            rng = self.item_rng(index, sigma_key(sigma))
        return noisy_pair(image_to_tensor(image), sigma, rng)


class BSDTrainDataset(DenoisingDataset):
    """BSD200 training crops (``train``) and held-out centre crops (``val``)."""

    name = "bsd"
    SPLITS = ("train", "val")
    DEFAULT_ROOT = "BSD/BSD200"
    EXTENSIONS = (".jpg", ".jpeg", ".png")
    WHAT = "the BSD200 training images (e.g. 100075.jpg …)"

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str = "train",
        *,
        color: bool = False,
        crop: int | tuple[int, int] = (192, 256),
        sigma_range: tuple[float, float] = (0.0, 55.0),
        sigma: float = DEFAULT_SIGMA,
        samples_per_epoch: int | None = None,
        holdout_val: bool = False,
        val_images: int | None = None,
        flip: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: the BSD200 directory or a data directory holding ``BSD/BSD200``.
            split: ``train`` or ``val``.
            color: 3 channels (True) or weighted grayscale, 1 channel (False).
            crop: crop (H, W) or int, random in ``train``, centred in ``val``; landscape and
                portrait images are both cropped within.
            sigma_range: training noise level interval, uniform per item (0–255 scale).
            sigma: validation noise level.
            samples_per_epoch: training items per epoch (default: number of images).
            holdout_val: exclude the validation images from ``train``.
            val_images: number of trailing images forming ``val`` (``None``:
                :func:`~sjunet.data.common.validation_size`, 40 of the 200).
            flip: random horizontal and vertical flips in training.
            seed: seed of the crop / flip / noise stream.
        """
        self.in_channels = 3 if color else 1
        files = self._setup(root, split, seed)
        if val_images is None:
            val_images = validation_size(len(files))
        files = select_split(files, split, val_images, 0, holdout_val)
        self.files = require_files(files, f"at least one {split} image", self.root)
        check_headers([[f] for f in self.files], self.max_image_pixels)  # before any decoding
        self.options = {"holdout_val": bool(holdout_val), "val_images": val_images}
        self._configure(
            len(files), crop=crop, eval_crop=crop, sigma_range=sigma_range, sigma=sigma,
            samples_per_epoch=samples_per_epoch, flip=flip,
        )  # fmt: skip


class DenoisingTestSet(DenoisingDataset):
    """A directory of whole test images with fixed-seed Gaussian noise of level ``sigma``."""

    SPLITS = ("test",)

    def __init__(
        self, root: str | os.PathLike | None, split: str = "test", *, sigma: float = DEFAULT_SIGMA, seed: int = 0
    ) -> None:
        """
        Args:
            root: the test-set directory or a data directory holding it (``BSD/Set12`` …).
            split: ``test``.
            sigma: noise level on the 0–255 scale (15, 25, 50 in the papers).
            seed: noise seed; image ``i`` gets the generator of ``(seed, i, sigma)``.
        """
        files = self._setup(root, split, seed)
        self.files = require_files(files, self.WHAT, self.root)
        check_headers([[f] for f in self.files], self.max_image_pixels)  # before any decoding
        self._configure(
            len(files), crop=None, eval_crop=None, sigma_range=(0.0, 0.0), sigma=sigma,
            samples_per_epoch=None, flip=False,
        )  # fmt: skip


class Set12(DenoisingTestSet):
    """Set12: 12 grayscale images (256x256 / 512x512)."""

    name = "set12"
    DEFAULT_ROOT = "BSD/Set12"
    in_channels = 1
    WHAT = "the Set12 gray images (01.png … 12.png)"


class BSD68(DenoisingTestSet):
    """BSD68: 68 grayscale BSD test images."""

    name = "bsd68"
    DEFAULT_ROOT = "BSD/BSD68"
    in_channels = 1
    WHAT = "the BSD68 gray images (test001.png …)"


class CBSD68(DenoisingTestSet):
    """CBSD68: the same 68 BSD test images in colour."""

    name = "cbsd68"
    DEFAULT_ROOT = "BSD/CBSD68"
    in_channels = 3
    WHAT = "the CBSD68 colour images (e.g. 101085.png …)"
