"""``demo-seg3d``: a download-free volumetric segmentation set, the 3-D sibling of ``demo-seg``.

Each item is a procedurally generated noisy volume (:func:`render_volume`) with exact labels:
3–5 bright curved tubes (piecewise-linear centre lines, tapering radius) and 1–3 bright rotated
ellipsoids are the foreground (class 1); the background (class 0) is a smooth texture with a linear
illumination gradient, 0–2 fainter *unlabelled* ellipsoidal distractors, and Gaussian voxel noise.
Item ``i`` of a split is a pure function of ``(seed, split, i)`` (so train / val / test differ);
training items are additionally flipped at random along z, y and x per epoch
(``(seed, epoch, i)``). Default: 32 / 8 / 8 volumes (``num_items``) of 16×32×32 voxels
(``size``: depth, height, width, or one int for a cube; each side 8..256); about 14 % of the
voxels are foreground on average (8–23 % per volume at the default size). Items: ``x [1, D, H, W] float32`` in [0, 1], ``y [D, H, W] int64``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .common import (
    SEGMENTATION,
    DatasetError,
    SJDataset,
    as_size3,
    make_rng,
    random_flip_axes,
    segmentation_item,
)
from .demo import _SPLIT_CODE, _smooth_noise

#: generator version: bump when :func:`render_volume` changes, so fingerprints change
VOLUME_VERSION = 1
#: smallest and largest side of a ``demo-seg3d`` volume
MIN_SIDE, MAX_SIDE_3D = 8, 256


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of points ``p [N, 3]`` to segment ``a``–``b`` and the position ``t`` in [0, 1] of the
    nearest point on it."""
    ab = b - a
    t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1), t


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3×3 rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _ellipsoid(rng: np.random.Generator, p: np.ndarray, shape: np.ndarray, radii: tuple[float, float]) -> np.ndarray:
    """Approximate signed distance (negative inside) of points ``p`` to a random rotated ellipsoid."""
    centre = rng.uniform(0.15, 0.85, 3) * shape
    r = rng.uniform(*radii, 3)
    local = (p - centre) @ _random_rotation(rng)
    q = np.sqrt(((local / r) ** 2).sum(axis=1))
    return (q - 1.0) * r.min()


def render_volume(rng: np.random.Generator, shape: tuple[int, int, int] = (16, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic volume: ``([D,H,W] float32 in [0, 1], [D,H,W] uint8 labels)`` (module docstring).

    Label 1 = the voxel centre lies inside a tube (distance to the centre line < local radius) or an
    ellipsoid; the image brightens them with a one-voxel anti-aliased edge.
    """
    dims = np.asarray(shape, dtype=np.float64)
    side = float(dims.min())
    grid = np.stack(np.meshgrid(*[np.arange(n) + 0.5 for n in shape], indexing="ij"), axis=-1)
    p = grid.reshape(-1, 3)
    n = p.shape[0]

    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    gradient = rng.uniform(0.05, 0.15) * ((p - dims / 2) @ direction) / float(dims.max())
    background = (
        rng.uniform(0.3, 0.45)
        + gradient
        + 0.04 * _smooth_noise(rng, tuple(shape), side / 6).reshape(-1)
        + 0.02 * _smooth_noise(rng, tuple(shape), 1.0).reshape(-1)
    )
    brightening = np.zeros(n)
    label = np.zeros(n, dtype=bool)

    def add(signed: np.ndarray, contrast: float, labelled: bool) -> None:
        nonlocal brightening, label
        if labelled:
            label |= signed < 0
        brightening = np.maximum(brightening, contrast * np.clip(0.5 - signed, 0.0, 1.0))

    for _ in range(int(rng.integers(3, 6))):  # tubes: a random walk of 3-5 straight pieces
        pieces = int(rng.integers(3, 6))
        start = rng.uniform(0.0, 1.0, 3) * dims
        heading = rng.standard_normal(3)
        points = [start]
        for _ in range(pieces):
            heading = heading / np.linalg.norm(heading) + 0.6 * rng.standard_normal(3)
            points.append(points[-1] + heading / np.linalg.norm(heading) * rng.uniform(0.25, 0.5) * float(dims.max()))
        points_arr = np.asarray(points)
        points_arr += rng.uniform(0.3, 0.7, 3) * dims - points_arr.mean(axis=0)  # centred inside the volume
        r0 = rng.uniform(1.0, 0.15 * side + 1.5)
        radii = np.linspace(r0, rng.uniform(0.7, r0), pieces + 1)
        signed = np.full(n, np.inf)
        for a, b, ra, rb in zip(points_arr[:-1], points_arr[1:], radii[:-1], radii[1:]):
            dist, t = _segment_distance(p, a, b)
            signed = np.minimum(signed, dist - (ra + t * (rb - ra)))
        add(signed, rng.uniform(0.25, 0.45), True)
    for _ in range(int(rng.integers(1, 4))):  # labelled blobs
        add(_ellipsoid(rng, p, dims, (0.1 * side + 1.5, 0.25 * side + 1.5)), rng.uniform(0.25, 0.45), True)
    for _ in range(int(rng.integers(0, 3))):  # unlabelled faint distractors
        add(_ellipsoid(rng, p, dims, (0.06 * side + 1.0, 0.15 * side + 1.0)), rng.uniform(0.06, 0.12), False)
    image = background + brightening + rng.uniform(0.02, 0.05) * rng.standard_normal(n)
    return (
        np.clip(image, 0.0, 1.0).astype(np.float32).reshape(shape),
        label.astype(np.uint8).reshape(shape),
    )


class DemoSegmentation3D(SJDataset):
    """Synthetic tubes and blobs in a noisy volume (``demo-seg3d``): 1 channel, 2 classes
    (background, object), 3-D items; no files."""

    name = "demo-seg3d"
    task = SEGMENTATION
    CLASS_NAMES = ("background", "object")
    FOREGROUND = "object"
    in_channels = 1
    num_classes = 2
    spatial_dims = 3
    DEFAULT_ITEMS = {"train": 32, "val": 8, "test": 8}

    def __init__(
        self,
        root: Any = None,
        split: str = "train",
        *,
        size: int | tuple[int, int, int] = (16, 32, 32),
        num_items: int | None = None,
        flip: bool = True,
        cache: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: ignored (nothing is read).
            split: ``train``, ``val`` or ``test`` (disjoint: the split enters the item seed).
            size: (depth, height, width) of the volumes, or one int for a cube; each side 8..256.
            num_items: items in the split (default 32 / 8 / 8).
            flip: random flips of training items along z, y and x (per epoch).
            cache: keep generated items in memory.
            seed: generator seed.
        """
        super().__init__(None, split, seed)
        shape = as_size3(size, "demo-seg3d: size")
        assert shape is not None
        if not all(MIN_SIDE <= s <= MAX_SIDE_3D for s in shape):
            raise DatasetError(
                f"demo-seg3d: --opt size: each side must be in {MIN_SIDE}..{MAX_SIDE_3D}, got {'x'.join(map(str, shape))}"
            )
        self.size = shape
        self.length = int(num_items if num_items is not None else self.DEFAULT_ITEMS[split])
        self.flip = bool(flip)
        self.cache = bool(cache)
        self.options = {"size": self.size, "num_items": self.length, "flip": self.flip, "version": VOLUME_VERSION}

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The un-augmented item ``index``: ``([D,H,W,1] float32, [D,H,W] uint8)``."""

        def make() -> tuple[np.ndarray, np.ndarray]:
            image, label = render_volume(make_rng(self.seed, _SPLIT_CODE[self.split], index), self.size)
            return image[..., None], label

        return self.cached(index, make)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        image, label = self.load(index)
        if self.train:
            image, label = random_flip_axes([image, label], self.item_rng(index), axes=(0, 1, 2), enabled=self.flip)
        return segmentation_item(image, label)
