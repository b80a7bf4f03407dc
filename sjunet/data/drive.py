"""DRIVE retinal vessel segmentation (Staal et al., IEEE TMI 2004).

Layout: ``<root>/training/{images,1st_manual,mask}`` and ``<root>/test/{images,1st_manual,mask}``;
images ``NN_training.tif`` / ``NN_test.tif`` (RGB 565x584), labels ``NN_manual1.gif`` (0/255),
field-of-view masks ``NN_training_mask.gif`` / ``NN_test_mask.gif``. Files are paired by the
number before the first ``_``; an image, its label and its mask must have the same size. Classes:
0 = background, 1 = vessel; pixels outside the FOV mask are
:data:`~sjunet.data.common.IGNORE_INDEX` (excluded from loss and metrics). Labels and masks may be
stored as 0/255 or 0/1 (:func:`~sjunet.data.common.binary_label` decides from each file's values).

Preprocessing (:func:`preprocess`), following the official Spiking-UNet / retina-unet code:

1. grayscale ``0.299 R + 0.587 G + 0.114 B``;
2. standardise ``(g - mean) / std`` over the image, then rescale min–max to ``[0, 1]``
   (the official code standardises over the whole data set, then min–max rescales each image,
   which makes the standardisation an affine no-op; we do it per image so a test image's input
   never depends on the other images);
3. CLAHE, :func:`skimage.exposure.equalize_adapthist` with 8x8 tiles (skimage's default kernel of
   1/8 of each side) and ``clip_limit = 2/256`` — the same clipping as OpenCV's ``clipLimit=2.0``
   of the official code (skimage clips each bin at ``clip_limit × tile pixels``, OpenCV at
   ``clipLimit × tile pixels / 256``);
4. gamma: ``x ** (1 / 1.2)`` (the official ``adjust_gamma(…, 1.2)`` builds its table with the
   inverse gamma);
5. values stay in ``[0, 1]``.

Splits: ``train`` = the 20 training images (the first 18 with ``holdout_val=True``) as random
``patch`` x ``patch`` crops whose centre lies inside the FOV, item ``i`` from image ``i % n``;
``val`` = the last ``val_images`` training images (4 = max(4, 20 % of 20): the rule of every 2-D data
set, :func:`~sjunet.data.common.validation_size`), whole and FOV-masked like the test images
(checkpoints are chosen on the same kind of input the test reports: one code path for both);
``test`` = the 20 test images, whole
(``x [1, 584, 565]``), evaluated whole by default (padded to the network's size multiple, run
once: :mod:`sjunet.evaluation`); the paper's protocol, 48x48 windows every 16 pixels with the
overlaps averaged (:func:`sjunet.data.patches.predict_by_patches`), is ``--protocol patch``
(:attr:`DRIVEDataset.eval_patch`). Preprocessing is per image, so a whole image and its patches
see the same input values.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from skimage import exposure

from .common import (
    check_headers,
    DatasetError,
    IGNORE_INDEX,
    SEGMENTATION,
    SJDataset,
    binary_label,
    check_same_size,
    crop,
    list_images,
    pair_files,
    random_flip,
    read_image,
    read_label,
    require_files,
    resolve_root,
    rgb_to_gray,
    segmentation_item,
    select_split,
    validation_size,
)

#: clip limit matching OpenCV ``clipLimit=2.0`` with 256 bins
CLAHE_CLIP = 2.0 / 256
GAMMA = 1.2
SUBDIRS = ("images", "1st_manual", "mask")


def preprocess(rgb: np.ndarray, clip_limit: float = CLAHE_CLIP, gamma: float = GAMMA) -> np.ndarray:
    """DRIVE preprocessing of an ``[H, W, 3]`` (or ``[H, W, 1]``) image in ``[0, 1]`` →
    ``[H, W, 1]`` float32 in ``[0, 1]`` (see the module docstring)."""
    gray = rgb_to_gray(rgb) if rgb.shape[-1] == 3 else rgb[..., 0].astype(np.float32)
    gray = (gray - gray.mean()) / max(float(gray.std()), 1e-8)
    gray = (gray - gray.min()) / max(float(gray.max() - gray.min()), 1e-8)
    gray = exposure.equalize_adapthist(gray, clip_limit=clip_limit).astype(np.float32)
    gray = np.clip(gray, 0.0, 1.0) ** np.float32(1.0 / gamma)
    return gray[:, :, None].astype(np.float32)


def _item_id(path: Path) -> str:
    return path.name.split("_")[0]


def _split_dir(split: str) -> str:
    return "test" if split == "test" else "training"


class DRIVEDataset(SJDataset):
    """DRIVE vessels: 1 input channel, 2 classes (background, vessel), IGNORE outside the FOV."""

    name = "drive"
    task = SEGMENTATION
    DEFAULT_ROOT = "DRIVE"
    CLASS_NAMES = ("background", "vessel")
    in_channels = 1
    num_classes = 2
    #: the paper's patch protocol (``--protocol patch``): ``patch`` x ``patch`` windows with this
    #: stride, overlaps averaged; the defaults of ``--patch`` / ``--stride``
    #: (:func:`sjunet.evaluation.make_protocol`). Evaluation is whole-image by default.
    eval_patch: tuple[int, int] | None = (48, 16)

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str = "train",
        *,
        patch: int = 48,
        samples_per_epoch: int | None = None,
        holdout_val: bool = False,
        val_images: int | None = None,
        flip: bool = False,
        cache: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: the DRIVE directory (``training/``, ``test/``) or a data directory holding ``DRIVE``.
            split: ``train`` (random patches), ``val`` and ``test`` (whole images).
            patch: side of the square training patches.
            samples_per_epoch: training patches per epoch (default 2000).
            holdout_val: exclude the validation images from ``train``.
            val_images: number of trailing training images used for ``val`` (``None``:
                :func:`~sjunet.data.common.validation_size`, 4 of the 20).
            flip: random horizontal / vertical flips of training patches (off: the paper uses none).
            cache: keep preprocessed images in memory.
            seed: seed of the patch / flip stream.
        """
        sub = _split_dir(split)

        def check(path: Path) -> str | None:
            for d in SUBDIRS:
                if not list_images(path / sub / d):
                    return (
                        f"expected {path}/{sub}/images/NN_{sub}.tif with {path}/{sub}/1st_manual/"
                        f"NN_manual1.gif and {path}/{sub}/mask/NN_{sub}_mask.gif; "
                        f"found no image files in {path / sub / d}"
                    )
            return None

        super().__init__(resolve_root(root, self.DEFAULT_ROOT, check, self.name), split, seed)
        base = self.root / sub
        images = list_images(base / "images")
        labels = pair_files(images, list_images(base / "1st_manual"), _item_id, what="1st_manual")
        masks = pair_files(images, list_images(base / "mask"), _item_id, what="mask")
        triples = list(zip(images, labels, masks))
        if val_images is None:
            val_images = validation_size(len(triples)) if split != "test" else None
        if split != "test":
            triples = select_split(triples, split, val_images, 0, holdout_val)
        require_files(triples, f"at least one {split} image", base / "images")
        check_headers(triples, self.max_image_pixels, what="label or FOV mask")  # before any decoding
        self.triples: list[tuple[Path, Path, Path]] = triples
        self.files = [f for t in triples for f in t]
        self.patch = int(patch)
        self.flip = bool(flip)
        self.cache = bool(cache)
        if split != "train":  # validation and test: whole images
            self.length = len(triples)
        else:
            self.length = int(samples_per_epoch or 2000)
        self.options = {
            "patch": self.patch if split == "train" else None,
            "samples_per_epoch": self.length,
            "holdout_val": bool(holdout_val),
            "val_images": val_images,
            "flip": self.flip,
            "preprocess": {"gray": "0.299/0.587/0.114", "clahe_clip": CLAHE_CLIP, "gamma": GAMMA},
            "images": [t[0].name for t in triples],
        }

    def __len__(self) -> int:
        return self.length

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``i``: ``(preprocessed [H,W,1], label [H,W] uint8 with IGNORE outside FOV,
        flat indices of the FOV pixels where a centred patch fits)``."""

        def read() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            image_path, label_path, mask_path = self.triples[i]
            image = preprocess(read_image(image_path, 3, self.max_image_pixels))
            vessel = read_label(label_path, self.max_image_pixels)
            fov = read_label(mask_path, self.max_image_pixels)
            check_same_size(image_path, image, label_path, vessel)
            check_same_size(image_path, image, mask_path, fov, what="FOV mask")
            fov = binary_label(fov, mask_path).astype(bool)
            label = np.where(fov, binary_label(vessel, label_path), np.uint8(IGNORE_INDEX)).astype(np.uint8)
            h, w = label.shape
            half = self.patch // 2
            fits = np.zeros_like(fov)
            fits[half : h - (self.patch - half) + 1, half : w - (self.patch - half) + 1] = True
            centres = np.flatnonzero(fov & fits)
            if centres.size == 0:
                raise DatasetError(f"{image_path}: no {self.patch}x{self.patch} patch centred inside the FOV")
            return image, label, centres

        return self.cached(i, read)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self.split != "train":
            image, label, _ = self.load(index)
            return segmentation_item(image, label)
        image, label, centres = self.load(index % len(self.triples))
        rng = self.item_rng(index)
        centre = int(centres[rng.integers(0, centres.size)])
        cy, cx = divmod(centre, label.shape[1])
        top, left = cy - self.patch // 2, cx - self.patch // 2
        image, label = crop([image, label], top, left, (self.patch, self.patch))
        if self.train and self.flip:
            image, label = random_flip([image, label], rng, horizontal=True, vertical=True)
        return segmentation_item(image, label)
