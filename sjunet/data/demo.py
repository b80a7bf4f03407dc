"""Download-free demo datasets, small enough for a whole pipeline on a laptop CPU in minutes.

``demo-seg`` — procedurally generated vessel-like images with exact labels (:func:`render_vessels`):
smooth curved tubes of varying width and contrast, darker than a textured background with an
illumination gradient, a few unlabelled dark blobs as distractors, and Gaussian pixel noise.
Item ``i`` of a split is a pure function of ``(seed, split, i)``; training items are additionally
flipped at random per epoch. Default sizes: 64 / 16 / 16 images of 64x64 (options ``num_items``,
``size``). About 15 % of the pixels are vessel. 1 channel, 2 classes (background, vessel).

``demo-denoise`` — photographs bundled in the scikit-image wheel (no download): the images of
:data:`DEMO_IMAGES` split by image; ``train`` = random 64x64 crops (option ``crop``) with flips and
``sigma ~ U[0, 55]``, ``val`` / ``test`` = centre 128x128 crops (``eval_crop``) with
``sigma`` (25) from a fixed seed. Grayscale by default (``color=True``: 3 channels, gray photos
replicated). Same noise model as :mod:`sjunet.data.bsd`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from skimage.filters import gaussian

from .bsd import DEFAULT_SIGMA, DenoisingDataset
from .common import (
    SEGMENTATION,
    DatasetError,
    SJDataset,
    make_rng,
    random_flip,
    rgb_to_gray,
    segmentation_item,
)

#: scikit-image sample photographs used by ``demo-denoise`` (all shipped in the wheel)
DEMO_IMAGES: dict[str, tuple[str, ...]] = {
    "train": (
        "astronaut", "coffee", "chelsea", "rocket", "moon",
        "hubble_deep_field", "immunohistochemistry", "brick", "grass",
    ),
    # four photos: the validation rule of every 2-D data set (sjunet.data.common.validation_size)
    "val": ("text", "clock", "page", "gravel"),
    "test": ("camera", "coins"),
}  # fmt: skip

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
#: generator version: bump when :func:`render_vessels` changes, so fingerprints change
VESSELS_VERSION = 1


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation."""
    field = gaussian(rng.standard_normal(shape), sigma, mode="wrap", preserve_range=True)
    return field / max(float(field.std()), 1e-8)


def _tube(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre line points ``[N, 2]`` (y, x) and radii ``[N]`` of one random smooth tube."""
    step = 0.5
    length = rng.uniform(0.7, 1.5) * size
    n = max(int(length / step), 2)
    start = rng.uniform(0.0, size, 2)
    heading = rng.uniform(0.0, 2 * np.pi)
    curvature = _smooth_noise(rng, (n,), sigma=n / 8) * rng.uniform(0.01, 0.04)
    angle = heading + np.cumsum(curvature)
    steps = step * np.stack([np.sin(angle), np.cos(angle)], axis=1)
    # centre the tube on its start point so it crosses the image
    points = start + np.cumsum(steps, axis=0) - steps.sum(axis=0) * rng.uniform(0.3, 0.7)
    r0 = rng.uniform(1.0, 2.6)
    radii = np.linspace(r0, rng.uniform(0.6, r0), n)
    return points, radii


def render_vessels(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic vessel image: ``([size, size] float32 in [0, 1], [size, size] uint8 labels)``.

    Label 1 = the pixel centre lies inside a tube (distance to the centre line < local radius).
    The image darkens tubes with an anti-aliased edge, so the label is exact up to that 1-pixel
    transition; the background is a smooth texture plus a linear illumination gradient, with
    0–2 unlabelled dark blobs and Gaussian noise.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    py, px = yy.reshape(-1, 1), xx.reshape(-1, 1)  # pixel centres as columns

    def distance(points: np.ndarray) -> np.ndarray:
        """``[pixels, len(points)]`` Euclidean distances from pixel centres to ``points``."""
        points = points.astype(np.float32)
        return np.sqrt((py - points[:, 0]) ** 2 + (px - points[:, 1]) ** 2)

    angle = rng.uniform(0, 2 * np.pi)
    gradient = rng.uniform(0.1, 0.3) * ((yy - size / 2) * np.sin(angle) + (xx - size / 2) * np.cos(angle)) / size
    background = (
        rng.uniform(0.45, 0.65)
        + gradient
        + 0.05 * _smooth_noise(rng, (size, size), size / 12)
        + 0.03 * _smooth_noise(rng, (size, size), 1.0)
    )
    darkening = np.zeros(size * size)
    label = np.zeros(size * size, dtype=bool)
    for _ in range(int(rng.integers(3, 6))):
        points, radii = _tube(rng, size)
        signed = (distance(points) - radii.astype(np.float32)).min(axis=1)
        label |= signed < 0
        contrast = rng.uniform(0.12, 0.3)
        darkening = np.maximum(darkening, contrast * np.clip(0.5 - signed, 0.0, 1.0))
    for _ in range(int(rng.integers(0, 3))):  # unlabelled round distractors
        centre, radius = rng.uniform(0, size, 2), rng.uniform(2.0, 5.0)
        signed = distance(centre[None, :])[:, 0] - radius
        darkening = np.maximum(darkening, rng.uniform(0.08, 0.2) * np.clip(0.5 - signed, 0.0, 1.0))
    image = background - darkening.reshape(size, size)
    image = image + rng.uniform(0.01, 0.04) * rng.standard_normal((size, size))
    return np.clip(image, 0.0, 1.0).astype(np.float32), label.reshape(size, size).astype(np.uint8)


class DemoSegmentation(SJDataset):
    """Synthetic vessels (``demo-seg``): 1 channel, 2 classes (background, vessel); no files."""

    name = "demo-seg"
    task = SEGMENTATION
    CLASS_NAMES = ("background", "vessel")
    in_channels = 1
    num_classes = 2
    DEFAULT_ITEMS = {"train": 64, "val": 16, "test": 16}

    def __init__(
        self,
        root: Any = None,
        split: str = "train",
        *,
        size: int = 64,
        num_items: int | None = None,
        flip: bool = True,
        cache: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: ignored (nothing is read).
            split: ``train``, ``val`` or ``test`` (disjoint: the split enters the item seed).
            size: side of the square images.
            num_items: items in the split (default 64 / 16 / 16).
            flip: random flips of training items (per epoch).
            cache: keep generated items in memory.
            seed: generator seed.
        """
        super().__init__(None, split, seed)
        if size < 16:
            raise DatasetError(f"demo-seg: size must be at least 16, got {size}")
        self.size = int(size)
        self.length = int(num_items if num_items is not None else self.DEFAULT_ITEMS[split])
        self.flip = bool(flip)
        self.cache = bool(cache)
        self.options = {"size": self.size, "num_items": self.length, "flip": self.flip, "version": VESSELS_VERSION}

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The un-augmented item ``index``: ``([H,W,1] float32, [H,W] uint8)``."""

        def make() -> tuple[np.ndarray, np.ndarray]:
            image, label = render_vessels(make_rng(self.seed, _SPLIT_CODE[self.split], index), self.size)
            return image[:, :, None], label

        return self.cached(index, make)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        image, label = self.load(index)
        if self.train and self.flip:
            image, label = random_flip([image, label], self.item_rng(index), horizontal=True, vertical=True)
        return segmentation_item(image, label)


def load_skimage_photo(name: str, color: bool) -> np.ndarray:
    """A scikit-image sample photo as ``[H, W, 3 if color else 1]`` float32 in [0, 1]."""
    from skimage import data as skdata

    arr = np.asarray(getattr(skdata, name)())
    arr = arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0)
    if arr.ndim == 3:
        arr = arr[..., :3]
        arr = arr if color else rgb_to_gray(arr)[..., None]
    else:
        arr = np.repeat(arr[..., None], 3 if color else 1, axis=2)
    return np.ascontiguousarray(arr, dtype=np.float32)


class DemoDenoising(DenoisingDataset):
    """scikit-image photographs with Gaussian noise (``demo-denoise``); no files needed."""

    name = "demo-denoise"
    SPLITS = ("train", "val", "test")

    def __init__(
        self,
        root: Any = None,
        split: str = "train",
        *,
        color: bool = False,
        crop: int | tuple[int, int] = 64,
        eval_crop: int | tuple[int, int] | None = 128,
        sigma_range: tuple[float, float] = (0.0, 55.0),
        sigma: float = DEFAULT_SIGMA,
        samples_per_epoch: int | None = 256,
        flip: bool = True,
        seed: int = 0,
        size: int | None = None,
        num_items: int | None = None,
    ) -> None:
        """
        Args:
            root: ignored (the photos ship with scikit-image).
            split: ``train``, ``val`` or ``test`` (disjoint sets of photos, :data:`DEMO_IMAGES`).
            color: 3 channels instead of weighted grayscale.
            crop: random training crop; eval_crop: centre crop of val/test images.
            sigma_range: training noise interval; sigma: val/test noise level (0–255 scale).
            samples_per_epoch: training crops per epoch.
            flip: random flips in training.
            seed: seed of the crop / flip / noise stream.
            size, num_items: the options every demo data set takes (``demo-seg``, ``demo-seg3d``):
                ``size`` sets both crops (training and evaluation) to ``size`` × ``size``;
                ``num_items`` the items of the split (training: crops per epoch; val / test: at
                most that many photos).
        """
        SJDataset.__init__(self, None, split, seed)
        if size is not None:
            crop = eval_crop = int(size)
        if num_items is not None and int(num_items) < 1:
            raise DatasetError(f"demo-denoise: num_items must be at least 1, got {num_items}")
        self.in_channels = 3 if color else 1
        self.names = DEMO_IMAGES[split]
        if num_items is not None and split == "train":
            samples_per_epoch = int(num_items)
        elif num_items is not None:
            self.names = self.names[: int(num_items)]
        self._images = [load_skimage_photo(n, color) for n in self.names]
        self.options = {
            "images": list(self.names),
            "shapes": [list(a.shape) for a in self._images],
        }
        self._configure(
            len(self._images), crop=crop, eval_crop=eval_crop, sigma_range=sigma_range, sigma=sigma,
            samples_per_epoch=samples_per_epoch, flip=flip,
        )  # fmt: skip

    def image(self, i: int) -> np.ndarray:
        return self._images[i]
