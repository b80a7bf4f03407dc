"""Reading and resizing the image and label files of the dataset loaders.

Conventions (the loaders, and through them the rest of sjunet, depend on them):

* :func:`read_image` gives ``float32`` ``[H, W, C]`` in ``[0, 1]`` whatever the file's bit depth:
  8-bit values / 255, 16-bit values (PIL modes ``I;16``, ``I;16B``, ``I``) / 65535, 1-bit images as
  0/1. A float image (mode ``F``) is taken as it is when its values are finite and in ``[0, 1]``
  and refused otherwise: sjunet never guesses the scale of a float image;
* :func:`read_label` gives the stored integers unchanged (a palette image gives its indices);
  :func:`binary_label` decides the two classes of a binary label from its set of values, so 0/1
  and 0/255 labels both work;
* a file that cannot be decoded (truncated, corrupt, not an image) is refused, never zero-filled:
  PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is switched off while a file is decoded;
* an image's dimensions are read from its header first (``PIL.Image.open`` decodes nothing) and an
  image declaring more than ``max_pixels`` (:data:`MAX_IMAGE_PIXELS` unless the dataset sets its
  own, :attr:`~sjunet.data.common.SJDataset.max_image_pixels`) is refused before a byte of it is
  decoded — a 4 KB TIFF may declare 60000x60000; :func:`check_headers` compares an image's and its
  label's header sizes before either is decoded;
* every problem raises one :class:`~sjunet.data.errors.DatasetError` line that names the file and
  says what to do.
"""
from __future__ import annotations

import os
import struct
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile

from .errors import DatasetError

#: weights of the RGB → gray conversion (ITU-R BT.601 luma, as MATLAB ``rgb2gray`` and PIL)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)

#: full scale of 16-bit images: their values are read as ``value / MAX_16BIT``
MAX_16BIT = 65535

#: a binary label whose values are neither within {0, 1} nor within {0, 255} is thresholded at
#: the middle of its range only if this fraction of its pixels lies near either end…
NEAR_ENDS_FRACTION = 0.99
#: …where "near" means within this fraction of the range from 0 or from the full scale
NEAR_END = 0.1

#: images declaring more pixels than this are refused from their header (a dataset may set its own limit)
MAX_IMAGE_PIXELS = 1 << 24

#: what PIL raises for files it cannot decode
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


@contextmanager
def _decoding(path: str | os.PathLike) -> Iterator[None]:
    """Decode with ``LOAD_TRUNCATED_IMAGES`` off (restored after; the setting is process-wide, so a
    thread decoding at the same time sees it off too); decoding errors → DatasetError."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    except _DECODE_ERRORS as exc:
        raise DatasetError(
            f"{path}: cannot read image ({exc}); the file is damaged or not an image: copy or export it again"
        ) from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _header(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    """The lazily opened image of ``path`` (its header read, nothing decoded), refused when it
    declares more than ``max_pixels`` pixels."""
    try:
        with _decoding(path), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise DatasetError(f"{path}: the image declares more pixels than PIL will decode (a decompression bomb); "
                           f"sjunet reads images of at most {max_pixels} pixels: remove or replace it") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise DatasetError(f"{path}: the image declares {h}x{w} (HxW) = {w * h} pixels, more than the {max_pixels} "
                           "this dataset reads; nothing was decoded — remove or replace the file (or downscale it)")
    return im


def image_size(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(H, W)`` of an image from its header alone (nothing decoded; over ``max_pixels`` refused)."""
    with _header(path, max_pixels) as im:
        w, h = im.size
    return h, w


def check_headers(groups: Sequence[Sequence[str | os.PathLike]], max_pixels: int = MAX_IMAGE_PIXELS,
                  what: str = "label") -> list[tuple[int, int]]:
    """Each group's ``(H, W)`` from the headers (an image and its label, mask …: all of one size),
    before anything is decoded; one :class:`DatasetError` line naming the file(s) otherwise."""
    sizes = []
    for group in groups:
        first = image_size(group[0], max_pixels)
        for other in group[1:]:
            size = image_size(other, max_pixels)
            if size != first:
                raise DatasetError(f"{group[0]} is {first[0]}x{first[1]} (HxW) but its {what} {other} is "
                                   f"{size[0]}x{size[1]}; an image and its {what} must have the same size: replace "
                                   "the mismatched file")
        sizes.append(first)
    return sizes


@contextmanager
def open_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """The fully decoded PIL image of ``path``, closed on exit. Its header is checked first (at most
    ``max_pixels`` pixels); PIL opens files lazily, so the pixels are decoded here (``load``), where
    a truncated or corrupt file raises :class:`DatasetError` naming it, not later in ``np.asarray``."""
    im = _header(path, max_pixels)
    with im:
        with _decoding(path):
            im.load()
        yield im


def read_image(path: str | os.PathLike, channels: int, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image as ``float32`` ``[H, W, channels]`` in ``[0, 1]``, scaled by its bit depth
    (see the module docstring).

    ``channels=1`` converts colour images with the weighted sum :data:`GRAY_WEIGHTS` (computed in
    floating point, no rounding); ``channels=3`` replicates gray images.
    """
    with open_image(path, max_pixels) as im:
        arr = _unit_values(im, path, channels)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if channels == 1 and arr.shape[2] == 3:
        arr = rgb_to_gray(arr)[:, :, None]
    elif channels == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] != channels:
        raise DatasetError(f"{path}: cannot make a {channels}-channel image from shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _unit_values(im: Image.Image, path: str | os.PathLike, channels: int) -> np.ndarray:
    """``float32`` ``[H, W]`` or ``[H, W, 3]`` values in ``[0, 1]`` of a decoded image."""
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        bad = int(arr.size - np.isfinite(arr).sum())
        if bad:
            raise DatasetError(
                f"{path}: float image with {bad} non-finite value(s) (NaN or inf); sjunet expects "
                f"images scaled to [0, 1] (or 8/16-bit integers): fix the values and save it again"
            )
        low, high = float(arr.min()), float(arr.max())
        if low < 0 or high > 1:
            raise DatasetError(
                f"{path}: float image with values in [{low:.6g}, {high:.6g}]; sjunet expects images "
                f"scaled to [0, 1] (or 8/16-bit integers): rescale it to [0, 1] and save it again"
            )
        return arr
    if im.mode.startswith("I"):  # I;16, I;16B, I;16L (16-bit) and I (32-bit, 16-bit PNG/TIFF data)
        arr = np.asarray(im)
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high > MAX_16BIT:
            raise DatasetError(
                f"{path}: {im.mode} integer image with values in [{low}, {high}]; sjunet reads integer "
                f"images as 8-bit (0–255) or 16-bit (0–{MAX_16BIT}): save it as such, or as float "
                f"in [0, 1]"
            )
        return arr.astype(np.float32) / MAX_16BIT
    if im.mode not in ("L", "RGB"):  # 8-bit (and 1-bit: "1" → L gives 0/255, so 0/1 below)
        im = im.convert("RGB" if channels == 3 or im.mode in ("P", "RGBA", "CMYK") else "L")
    return np.asarray(im, dtype=np.float32) / 255.0


def read_label(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read a label image's stored integers unchanged: ``[H, W]`` for index/gray/palette images
    (palette images give their indices), ``[H, W, 3]`` for colour-coded RGB labels. The dtype is
    the file's (``uint8``; ``uint16`` or ``int32`` for 16/32-bit files); bilevel images give 0/255.
    Float images are refused: a label holds integers."""
    with open_image(path, max_pixels) as im:
        if im.mode == "F":
            raise DatasetError(
                f"{path}: float label image; save labels as 8- or 16-bit integer images "
                f"(class indices, or 0/255 for two classes)"
            )
        if im.mode in ("1", "LA"):
            im = im.convert("L")  # bilevel → 0/255
        elif im.mode not in ("L", "P", "RGB") and not im.mode.startswith("I"):
            im = im.convert("RGB")
        arr = np.array(im)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)  # I;16B → native uint16


def binary_label(label: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """``[H, W]`` ``uint8`` map of 0s and 1s from a two-class label as :func:`read_label` gives it,
    the classes decided from the label's set of values:

    * values within {0, 1} → the value (1 = the class of non-zero pixels);
    * values within {0, 255} → ``value > 127`` (so a label with a single value 0, 1 or 255 is fine);
    * other values (JPEG ringing, 16-bit 0/65535…) → ``value > full / 2``, ``full`` being the top of
      the dtype's range (255 for ``uint8``, else 65535), but only when at least
      :data:`NEAR_ENDS_FRACTION` of the pixels lie within :data:`NEAR_END` of ``full`` from 0 or
      from ``full``, and some lie near each end unless the label has a single value (so a 0/2
      label is refused, not read as all one class); otherwise the label is refused with the
      values found.

    A colour label is taken when its three channels are equal (:func:`gray_label`).
    """
    label = gray_label(label, path, "a two-class label (0/255 or 0/1)")
    values = np.unique(label)
    if np.isin(values, (0, 1)).all():
        return (label > 0).astype(np.uint8)
    if np.isin(values, (0, 255)).all():
        return (label > 127).astype(np.uint8)
    full = 255 if label.dtype == np.uint8 else MAX_16BIT
    near_low = (label >= 0) & (label <= NEAR_END * full)
    near_high = (label >= (1 - NEAR_END) * full) & (label <= full)
    both_ends = values.size == 1 or (near_low.any() and near_high.any())
    if both_ends and np.mean(near_low | near_high) >= NEAR_ENDS_FRACTION:
        return (label > full / 2).astype(np.uint8)
    raise DatasetError(
        f"{path}: cannot tell the two classes of this binary label from its values {format_values(values)}; "
        f"expected 0/1 or 0/255 (or values near 0 and near {full}): save it again with two values"
    )


def gray_label(label: np.ndarray, path: str | os.PathLike, expected: str) -> np.ndarray:
    """``[H, W]`` label from :func:`read_label`'s output: an ``[H, W, 3]`` one is taken when its
    channels are equal (a gray label saved as RGB) and refused as colour-coded otherwise, the
    message saying it ``expected`` (e.g. ``"class indices 0–11"``)."""
    if label.ndim == 2:
        return label
    if not (label == label[..., :1]).all():
        raise DatasetError(
            f"{path}: colour label (its RGB channels differ); expected {expected} in one channel"
        )
    return label[..., 0]


def format_values(values: np.ndarray, limit: int = 8) -> str:
    """Sorted distinct ``values`` for a message: ``0, 1, 2, 3, 4, 5, 6, …, 255 (256 distinct)``."""
    shown = [str(v) for v in values.tolist()]
    if len(shown) <= limit:
        return ", ".join(shown)
    return ", ".join(shown[: limit - 1] + ["…", shown[-1]]) + f" ({len(shown)} distinct)"


def check_same_size(
    image_path: str | os.PathLike,
    image: np.ndarray,
    label_path: str | os.PathLike,
    label: np.ndarray,
    what: str = "label",
) -> None:
    """Raise :class:`DatasetError` naming both files unless ``image`` and its ``label`` (or other
    per-pixel ``what``) have the same height and width."""
    if image.shape[:2] != label.shape[:2]:
        (h, w), (lh, lw) = image.shape[:2], label.shape[:2]
        raise DatasetError(
            f"{image_path} is {h}x{w} (HxW) but its {what} {label_path} is {lh}x{lw}; an image and "
            f"its {what} must have the same size: replace the mismatched file"
        )


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` → ``[...]`` weighted sum with :data:`GRAY_WEIGHTS`."""
    return (rgb[..., :3] @ np.asarray(GRAY_WEIGHTS, dtype=rgb.dtype)).astype(np.float32)


def resize_image(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a ``[H, W, C]`` float image to ``size = (H, W)`` (PIL, per channel)."""
    h, w = size
    chans = [
        np.asarray(Image.fromarray(arr[:, :, c]).resize((w, h), Image.BILINEAR), dtype=np.float32)
        for c in range(arr.shape[2])
    ]
    return np.stack(chans, axis=2)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``[H, W]`` integer label map to ``size = (H, W)``."""
    h, w = size
    im = Image.fromarray(label.astype(np.int32), mode="I")
    return np.asarray(im.resize((w, h), Image.NEAREST), dtype=np.int64)
