"""ISBI 2012 EM membrane segmentation (Drosophila VNC serial-section TEM).

Layout: ``<root>/images/0.png … 29.png`` (grayscale 512x512) and ``<root>/labels/<same name>``
with 0 = membrane, 255 = cell interior. Class 0 = membrane, class 1 = interior; labels stored as
0/1 work too (:func:`~sjunet.data.common.binary_label` decides from each label's set of values).

Split (files in natural order, ``test_images=5``, ``val_images`` by the rule of every 2-D data set,
:func:`~sjunet.data.common.validation_size`: max(4, 20 % of the 25 training images) = 5):

* ``test``  = the last 5 images (25–29), whole 512x512, no augmentation. The ISBI challenge's own
  test labels are not public, so — like the Spiking-UNet paper and most re-implementations —
  figures are quoted on a held-out part of the 30 training images; ours is 25–29.
* ``train`` = images 0–24 (default), or 0–19 with ``holdout_val=True``;
* ``val``   = images 20–24, whole images, no augmentation.

Training items are a random crop (``crop``; ``None`` = the full image) plus random horizontal and
vertical flips; ``samples_per_epoch`` items per epoch, item ``i`` from image ``i % n``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .common import (
    SEGMENTATION,
    SJDataset,
    as_size,
    binary_label,
    check_headers,
    check_same_size,
    list_images,
    pair_files,
    random_crop,
    random_flip,
    read_image,
    read_label,
    require_files,
    resolve_root,
    segmentation_item,
    select_split,
    validation_size,
)


def _check_layout(root: Path) -> str | None:
    for sub in ("images", "labels"):
        if not list_images(root / sub):
            return (
                f"expected {root}/images/0.png … and {root}/labels/0.png … "
                f"(grayscale images and 0/255 or 0/1 membrane labels of the same names); "
                f"found no image files in {root / sub}"
            )
    return None


class EMDataset(SJDataset):
    """ISBI 2012 EM membranes: 1 input channel, 2 classes (membrane, interior)."""

    name = "em"
    task = SEGMENTATION
    DEFAULT_ROOT = "ISBI2012-EM"
    CLASS_NAMES = ("membrane", "interior")
    #: the class the tables report (its F1 selects checkpoints: :attr:`sjunet.tasks.SegmentationTask.metric`)
    FOREGROUND = "membrane"
    in_channels = 1
    num_classes = 2

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str = "train",
        *,
        crop: int | tuple[int, int] | None = None,
        flip: bool = True,
        samples_per_epoch: int | None = None,
        holdout_val: bool = False,
        test_images: int = 5,
        val_images: int | None = None,
        cache: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: the dataset directory (``images/``, ``labels/``) or a data directory holding it
                as ``ISBI2012-EM``.
            split: ``train``, ``val`` or ``test``.
            crop: training crop size (int or (H, W)); ``None`` keeps the whole image.
            flip: random horizontal and vertical flips in training.
            samples_per_epoch: training items per epoch (default: number of training images).
            holdout_val: exclude the ``val`` images from ``train``.
            test_images, val_images: sizes of the trailing test block and the validation block
                (``val_images=None``: :func:`~sjunet.data.common.validation_size` of the non-test images).
            cache: keep decoded images in memory.
            seed: seed of the augmentation stream.
        """
        super().__init__(resolve_root(root, self.DEFAULT_ROOT, _check_layout, self.name), split, seed)
        images = list_images(self.root / "images")
        labels = pair_files(images, list_images(self.root / "labels"), key=lambda p: p.stem)
        if val_images is None:
            val_images = validation_size(len(images) - test_images)
        chosen = select_split(list(zip(images, labels)), split, val_images, test_images, holdout_val)
        require_files(chosen, f"at least one {split} image", self.root / "images")
        check_headers(chosen, self.max_image_pixels)  # sizes from the headers, before any decoding
        self.pairs: list[tuple[Path, Path]] = chosen
        self.files = [f for pair in chosen for f in pair]
        self.crop = as_size(crop, "crop")
        self.flip = bool(flip)
        self.cache = bool(cache)
        self.samples_per_epoch = int(samples_per_epoch or len(chosen)) if self.train else len(chosen)
        self.options = {
            "crop": self.crop,
            "flip": self.flip,
            "samples_per_epoch": self.samples_per_epoch,
            "holdout_val": bool(holdout_val),
            "test_images": test_images,
            "val_images": val_images,
            "images": [p.name for p, _ in chosen],
        }

    def __len__(self) -> int:
        return self.samples_per_epoch

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``i`` of the split: ``([H,W,1] float32, [H,W] uint8 class map)``."""

        def read() -> tuple[np.ndarray, np.ndarray]:
            image_path, label_path = self.pairs[i]
            image = read_image(image_path, 1, self.max_image_pixels)
            label = read_label(label_path, self.max_image_pixels)
            check_same_size(image_path, image, label_path, label)
            return image, binary_label(label, label_path)

        return self.cached(i, read)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        image, label = self.load(index % len(self.pairs))
        if self.train:
            rng = self.item_rng(index)
            image, label = random_crop([image, label], self.crop, rng)
            if self.flip:
                image, label = random_flip([image, label], rng, horizontal=True, vertical=True)
        return segmentation_item(image, label)
