"""CamSeq01 road-scene segmentation (Fauqueur et al., ICCV 2007), two layouts auto-detected:

* ``camvid11`` — ``<root>/images/*.png`` (RGB) and ``<root>/labels/<same name>`` holding class
  indices 0..10 in the SegNet CamVid coding (Sky, Building, Pole, Road, Pavement, Tree,
  SignSymbol, Fence, Car, Pedestrian, Bicyclist); 11 (void) and 255 become
  :data:`~sjunet.data.common.IGNORE_INDEX`. Any other value is refused (a colour-coded label or
  another coding would otherwise silently turn into "ignore"). 11 classes.
* ``camseq32`` — the original release: ``<root>/<frame>.png``, ``<root>/<frame>_L.png``
  (RGB colour-coded labels) and ``<root>/label_colors.txt`` with lines ``R G B<TAB>Name``.
  One class per line in file order (32 in CamSeq01, ``Void`` included, as the paper's
  32-class figure counts it); colours missing from the table become IGNORE_INDEX.

A frame and its label must have the same size. Images are resized to ``size`` (default 256x256,
as the paper; bilinear), labels with nearest neighbour. The frames are one video, so splits are
contiguous blocks of the sorted frames — ``test`` the last 20 %, ``val`` the block before it, by
the rule of every 2-D data set (:func:`~sjunet.data.common.validation_size`: max(4, 20 % of the
non-test frames); 101 frames: 64 train, 17 val, 20 test), ``train`` the rest (option
``fractions`` = train / val / test fractions instead; counts rounded) — never interleaved, or
neighbouring frames would leak.
Training augmentation: random horizontal flip. 3 input channels.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .common import (
    check_headers,
    IGNORE_INDEX,
    SEGMENTATION,
    DatasetError,
    SJDataset,
    as_size,
    check_same_size,
    format_values,
    gray_label,
    list_images,
    pair_files,
    random_flip,
    read_image,
    read_label,
    require_files,
    resize_image,
    resize_label,
    resolve_root,
    segmentation_item,
    select_split,
    validation_size,
)

CAMVID11_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
#: CamVid-11 index of the void class (SegNet coding), read as IGNORE_INDEX
CAMVID11_VOID = 11
COLOR_TABLE = "label_colors.txt"
LABEL_SUFFIX = "_L"
#: the last fifth of the frames is the test block (the validation block precedes it)
TEST_FRACTION = 0.2


def parse_label_colors(path: str | os.PathLike) -> tuple[list[tuple[int, int, int]], list[str]]:
    """Read ``label_colors.txt`` (``R G B<whitespace>Name`` per line) → (colours, names) in file order."""
    colors: list[tuple[int, int, int]] = []
    names: list[str] = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            rgb = tuple(int(v) for v in parts[:3])
        except ValueError:
            rgb = ()
        if len(rgb) != 3 or len(parts) < 4:
            raise DatasetError(f"{path}:{lineno}: expected 'R G B<TAB>Name', got {line!r}")
        colors.append(rgb)  # type: ignore[arg-type]
        names.append(" ".join(parts[3:]))
    if not colors:
        raise DatasetError(f"{path}: no colours listed")
    return colors, names


def colors_to_index(rgb: np.ndarray, colors: list[tuple[int, int, int]]) -> np.ndarray:
    """``[H, W, 3]`` colour-coded label → ``[H, W]`` class indices (colour's position in
    ``colors``); colours not in the table → IGNORE_INDEX."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2].astype(np.int64)
    table = np.array([(r << 16) | (g << 8) | b for r, g, b in colors], dtype=np.int64)
    order = np.argsort(table)
    pos = np.clip(np.searchsorted(table[order], codes), 0, len(table) - 1)
    found = table[order][pos] == codes
    return np.where(found, order[pos], IGNORE_INDEX).astype(np.int64)


def camvid11_index(raw: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """``[H, W]`` class indices of a CamVid-11 index label as :func:`read_label` gives it: 0..10 kept,
    11 (void) and IGNORE_INDEX → IGNORE_INDEX; any other value → :class:`DatasetError` naming the
    file and the values."""
    raw = gray_label(raw, path, f"CamVid-11 class indices 0–{CAMVID11_VOID}")
    values = np.unique(raw)
    bad = values[((values < 0) | (values > CAMVID11_VOID)) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DatasetError(
            f"{path}: values {format_values(bad)} are not CamVid-11 class indices (0–10, "
            f"{CAMVID11_VOID} = void, {IGNORE_INDEX} = ignore); expected an index label in the SegNet "
            f"CamVid coding, not a colour-coded one"
        )
    return np.where(raw < CAMVID11_VOID, raw, IGNORE_INDEX)


def _is_label(path: Path) -> bool:
    return path.stem.endswith(LABEL_SUFFIX)


def detect_layout(root: Path) -> str | None:
    """``"camvid11"``, ``"camseq32"`` or ``None`` when ``root`` has neither layout."""
    if list_images(root / "images") and list_images(root / "labels"):
        return "camvid11"
    if (root / COLOR_TABLE).is_file() and any(_is_label(p) for p in list_images(root, (".png",))):
        return "camseq32"
    return None


def _check_layout(root: Path) -> str | None:
    if detect_layout(root) is None:
        return (
            f"expected either {root}/images/*.png with {root}/labels/*.png (CamVid-11 class indices) "
            f"or {root}/<frame>.png with {root}/<frame>_L.png and {root}/{COLOR_TABLE} "
            f"(original CamSeq01); found neither"
        )
    return None


class CamSeqDataset(SJDataset):
    """CamSeq01 frames: 3 input channels, 11 (CamVid-11 layout) or 32 (original layout) classes."""

    name = "camseq"
    task = SEGMENTATION
    DEFAULT_ROOT = "CamSeq01-CamVid11"
    in_channels = 3

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str = "train",
        *,
        size: int | tuple[int, int] | None = (256, 256),
        fractions: tuple[float, float, float] | None = None,
        flip: bool = True,
        cache: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: a directory in either layout, or a data directory holding ``CamSeq01-CamVid11``.
            split: ``train``, ``val`` or ``test`` (contiguous blocks, see the module docstring).
            size: output (H, W) or int; ``None`` keeps the original resolution.
            fractions: train / val / test fractions of the sorted frames (``None``: test 20 %,
                validation :func:`~sjunet.data.common.validation_size` of the rest).
            flip: random horizontal flip in training.
            cache: keep decoded, resized frames in memory.
            seed: seed of the flip stream.
        """
        super().__init__(resolve_root(root, self.DEFAULT_ROOT, _check_layout, self.name), split, seed)
        self.layout = detect_layout(self.root)
        if self.layout == "camvid11":
            images = list_images(self.root / "images")
            labels = pair_files(images, list_images(self.root / "labels"), key=lambda p: p.stem)
            self.colors: list[tuple[int, int, int]] | None = None
            self.CLASS_NAMES = CAMVID11_CLASSES
            self.files = []
        else:
            frames = list_images(self.root, (".png",))
            images = [p for p in frames if not _is_label(p)]
            labels = pair_files(
                images, [p for p in frames if _is_label(p)],
                key=lambda p: p.stem, candidate_key=lambda p: p.stem[: -len(LABEL_SUFFIX)],
            )  # fmt: skip
            self.colors, names = parse_label_colors(self.root / COLOR_TABLE)
            self.CLASS_NAMES = tuple(names)
            self.files = [self.root / COLOR_TABLE]
        self.num_classes = len(self.CLASS_NAMES)
        n = len(images)
        if fractions is None:
            n_test = int(round(n * TEST_FRACTION))
            n_val = validation_size(n - n_test)
        else:
            if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
                raise DatasetError(f"fractions must be three non-negative numbers, got {fractions!r}")
            total = float(sum(fractions))
            n_val = int(round(n * fractions[1] / total))
            n_test = int(round(n * fractions[2] / total))
        pairs = select_split(list(zip(images, labels)), split, n_val, n_test, holdout_val=True)
        require_files(pairs, f"at least one {split} frame (of {n})", self.root)
        check_headers(pairs, self.max_image_pixels)  # before any decoding
        self.pairs: list[tuple[Path, Path]] = pairs
        self.files += [f for pair in pairs for f in pair]
        self.size = as_size(size, "size")
        self.flip = bool(flip)
        self.cache = bool(cache)
        self.options = {
            "layout": self.layout,
            "size": self.size,
            "fractions": tuple(fractions) if fractions is not None else None,
            "val_frames": n_val,
            "test_frames": n_test,
            "flip": self.flip,
            "frames": [pairs[0][0].name, pairs[-1][0].name],
        }

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``i`` of the split, resized: ``([H,W,3] float32, [H,W] uint8 class map)``."""

        def read() -> tuple[np.ndarray, np.ndarray]:
            image_path, label_path = self.pairs[i]
            image = read_image(image_path, 3, self.max_image_pixels)
            raw = read_label(label_path, self.max_image_pixels)
            if self.colors is None:
                label = camvid11_index(raw, label_path)
            else:
                if raw.ndim != 3:
                    raise DatasetError(f"{label_path}: expected an RGB colour-coded label")
                label = colors_to_index(raw, self.colors)
            check_same_size(image_path, image, label_path, label)
            if self.size is not None and image.shape[:2] != self.size:
                image, label = resize_image(image, self.size), resize_label(label, self.size)
            return image, label.astype(np.uint8)

        return self.cached(i, read)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        image, label = self.load(index)
        if self.train and self.flip:
            image, label = random_flip([image, label], self.item_rng(index), horizontal=True)
        return segmentation_item(image, label)
