"""ISBI 2012 EM membranes read as one anisotropic volume (``em3d``).

Same files and class convention as :mod:`sjunet.data.em` (``<root>/images/0.png … 29.png``,
``<root>/labels/<same name>``; class 0 = membrane — the foreground — class 1 = interior), but the 30
consecutive serial sections are stacked in natural file order into one volume: image
``[1, 30, 512, 512]`` (C, D, H, W), labels ``[30, 512, 512]``. The sections are about 50 nm apart
and the pixels 4 nm wide, so the volume is strongly anisotropic (nets usually pool only in-plane at
first, as nnU-Net does).

Split: every section is divided along x (the width axis, last axis) into three column blocks that
share no voxel, so no split sees another's labels (default ``val_x=192``, ``test_x=256``; each
block spans all 30 sections and all 512 rows)::

    train   x in [0, 192)     (holdout_val=True, the default; holdout_val=False: [0, 256))
    val     x in [192, 256)   whole block, one item [1, 30, 512, 64]
    test    x in [256, 512)   whole block, one item [1, 30, 512, 256] (the right half of every section)

The layout is recorded in ``options["layout"]`` (split → ``[x_start, x_end)``, ``"axis": "x"``) and
the split's own columns in ``options["x_range"]``.

``train`` yields ``samples_per_epoch`` (default 32) random crops of ``crop`` voxels (default
``(8, 64, 64)`` = depth × height × width; an int ``n`` is an ``n × n × n`` cube; ``None`` = the
whole training block) drawn inside the training columns only, plus random flips along z, y and x
(``flip``); item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``
(:meth:`~sjunet.data.common.SJDataset.item_rng`). ``val`` / ``test`` yield their whole block once,
uncropped and unflipped. Divisibility is the network's business: 30 sections are not a multiple of
4, so a net that pools 2× in depth twice needs a depth crop that is (e.g. 8, 16, 28) for training
and padding for evaluation.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import (
    check_headers,
    SEGMENTATION,
    DatasetError,
    SJDataset,
    as_size3,
    binary_label,
    check_same_size,
    list_images,
    pair_files,
    random_crop_box_nd,
    read_image,
    read_label,
    require_files,
    resolve_root,
    segmentation_item,
)
from .em import _check_layout

#: default training crop, (depth, height, width)
DEFAULT_CROP = (8, 64, 64)
#: the most recently read stack, keyed by its files' paths, sizes and modification times
_VOLUMES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


class EM3DDataset(SJDataset):
    """ISBI 2012 EM stack as one volume: 1 input channel, 2 classes (membrane, interior), 3-D items."""

    name = "em3d"
    task = SEGMENTATION
    DEFAULT_ROOT = "ISBI2012-EM"
    CLASS_NAMES = ("membrane", "interior")
    #: the class the tables report (as for ``em``)
    FOREGROUND = "membrane"
    in_channels = 1
    num_classes = 2
    spatial_dims = 3

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str = "train",
        *,
        crop: int | tuple[int, int, int] | None = DEFAULT_CROP,
        flip: bool = True,
        samples_per_epoch: int | None = None,
        holdout_val: bool = True,
        val_x: int = 192,
        test_x: int = 256,
        cache: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: the dataset directory (``images/``, ``labels/``) or a data directory holding it
                as ``ISBI2012-EM``.
            split: ``train``, ``val`` or ``test``.
            crop: training crop (int = cube, or (depth, height, width)); ``None``: the whole block.
            flip: random flips along z, y and x in training.
            samples_per_epoch: training crops per epoch (default 32).
            holdout_val: train only left of ``val_x`` (default); ``False``: left of ``test_x``.
            val_x, test_x: first column of the val block and of the test block (``0 < val_x < test_x < width``).
            cache: keep the decoded volume in memory.
            seed: seed of the augmentation stream.
        """
        super().__init__(resolve_root(root, self.DEFAULT_ROOT, _check_layout, self.name), split, seed)
        images = require_files(list_images(self.root / "images"), "section images 0.png …", self.root / "images")
        labels = pair_files(images, list_images(self.root / "labels"), key=lambda p: p.stem)
        self.pairs: list[tuple[Path, Path]] = list(zip(images, labels))
        self.files = [f for pair in self.pairs for f in pair]
        sizes = check_headers(self.pairs, self.max_image_pixels)  # from the headers, before any decoding
        height, width = sizes[0]
        odd = next((p for p, s in zip(images, sizes) if s != sizes[0]), None)
        if odd is not None:
            h, w = sizes[images.index(odd)]
            raise DatasetError(f"{odd}: section of {h}x{w} in a stack of {height}x{width} sections; all sections "
                               "must have one size")
        self.shape = (len(images), height, width)  # D, H, W of the whole stack
        val_x, test_x = int(val_x), int(test_x)
        if not 0 < val_x < test_x < width:
            raise DatasetError(
                f"em3d: need 0 < val_x < test_x < width ({width}), got val_x={val_x}, test_x={test_x}"
            )
        train_end = val_x if holdout_val else test_x
        self.layout: dict[str, Any] = {
            "axis": "x", "train": (0, train_end), "val": (val_x, test_x), "test": (test_x, width),
        }  # fmt: skip
        self.x_range: tuple[int, int] = self.layout[split]
        region = self.region_shape
        self.crop = as_size3(crop, "crop") if self.train else None
        if self.crop is not None and any(c > n for c, n in zip(self.crop, region)):
            raise DatasetError(
                f"em3d: --opt crop {'x'.join(map(str, self.crop))} (depth x height x width) does not fit in "
                f"the train block of {'x'.join(map(str, region))} (x {self.x_range[0]}..{self.x_range[1] - 1}); "
                f"pass a smaller crop, e.g. --opt crop=[{','.join(str(min(c, n)) for c, n in zip(DEFAULT_CROP, region))}]"
            )
        self.flip = bool(flip)
        self.cache = bool(cache)
        self.samples_per_epoch = int(samples_per_epoch or 32) if self.train else 1
        self.options = {
            "crop": self.crop,
            "flip": self.flip,
            "samples_per_epoch": self.samples_per_epoch,
            "holdout_val": bool(holdout_val),
            "val_x": val_x,
            "test_x": test_x,
            "x_range": list(self.x_range),
            "layout": {k: list(v) if isinstance(v, tuple) else v for k, v in self.layout.items()},
            "sections": len(images),
        }

    @property
    def region_shape(self) -> tuple[int, int, int]:
        """(D, H, W) of this split's column block."""
        d, h, _ = self.shape
        return d, h, self.x_range[1] - self.x_range[0]

    def __len__(self) -> int:
        return self.samples_per_epoch

    def volume(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole stack: ``([D,H,W,1] float32, [D,H,W] uint8 class map)``, read-only (with
        ``cache``, one copy in the process is shared by every split of the same files)."""

        def read() -> tuple[np.ndarray, np.ndarray]:
            if not self.cache:
                return read_stack()
            key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in self.files)
            if key not in _VOLUMES:  # shared by the splits of one stack (train and val built together)
                _VOLUMES.clear()
                _VOLUMES[key] = read_stack()
            return _VOLUMES[key]

        def read_stack() -> tuple[np.ndarray, np.ndarray]:
            images, labels = [], []
            for image_path, label_path in self.pairs:
                image = read_image(image_path, 1, self.max_image_pixels)
                label = read_label(label_path, self.max_image_pixels)
                check_same_size(image_path, image, label_path, label)
                if image.shape[:2] != self.shape[1:]:
                    raise DatasetError(
                        f"{image_path}: section of {image.shape[0]}x{image.shape[1]} in a stack of "
                        f"{self.shape[1]}x{self.shape[2]} sections; all sections must have one size"
                    )
                images.append(image)
                labels.append(binary_label(label, label_path))
            image, label = np.stack(images), np.stack(labels)
            image.flags.writeable = label.flags.writeable = False  # shared: items copy what they take
            return image, label

        return self.cached("volume", read)

    def plan(self, index: int) -> tuple[tuple[int, int, int, int, int, int], tuple[bool, bool, bool]]:
        """Item ``index``'s crop ``(z, y, x, depth, height, width)`` in whole-stack coordinates (the
        whole block for ``val`` / ``test`` or ``crop=None``) and its flips along (z, y, x); drawn from
        :meth:`item_rng` (crop corner first, then three flip draws, made even with ``flip=False``)."""
        region = self.region_shape
        x0 = self.x_range[0]
        if not self.train:
            return (0, 0, x0, *region), (False, False, False)
        rng = self.item_rng(index)
        if self.crop is None:
            box = (0, 0, x0, *region)
        else:
            z, y, x = random_crop_box_nd(region, self.crop, rng)
            box = (z, y, x0 + x, *self.crop)
        flips = tuple(bool(rng.random() < 0.5) and self.flip for _ in range(3))
        return box, flips  # type: ignore[return-value]

    def crop_box(self, index: int) -> tuple[int, int, int, int, int, int]:
        """Item ``index``'s ``(z, y, x, depth, height, width)`` in whole-stack coordinates."""
        return self.plan(index)[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        image, label = self.volume()
        (z, y, x, d, h, w), flips = self.plan(index)
        image, label = image[z : z + d, y : y + h, x : x + w], label[z : z + d, y : y + h, x : x + w]
        for axis, flip in enumerate(flips):
            if flip:
                image, label = np.flip(image, axis), np.flip(label, axis)
        # writable C-ordered copies (the stack is shared and read-only)
        return segmentation_item(np.require(image, requirements="CW"), np.require(label, requirements="CW"))
