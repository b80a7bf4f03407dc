"""Shared pieces of the dataset loaders: file listing and pairing, splits, fingerprints, seeded
RNG, crops, flips, noise, directory-layout resolution and the :class:`SJDataset` base class. The
error class (:mod:`sjunet.data.errors`) and image / label reading (:mod:`sjunet.data.imageio`) are
re-exported from here.

Conventions every loader follows (the rest of sjunet depends on them):

* images are ``float32`` tensors ``[C, H, W]`` with values in ``[0, 1]`` (8-bit files / 255,
  16-bit / 65535, float files only when already in ``[0, 1]``; see :mod:`sjunet.data.imageio`);
  volumetric datasets (``spatial_dims = 3``: ``em3d``, ``demo-seg3d``) give ``[C, D, H, W]``;
* a segmentation item is ``(x, y)`` with ``y`` an ``int64`` tensor ``[H, W]`` (volumes:
  ``[D, H, W]``) of class indices, pixels excluded from loss *and* metrics carry :data:`IGNORE_INDEX`;
* a denoising item is ``(noisy, noise)``, both ``float32`` ``[C, H, W]``, ``clean = noisy - noise``,
  ``noise = sigma / 255 * N(0, 1)``. The noisy image is **not** clipped to ``[0, 1]`` (DnCNN
  practice: clipping would make the noise signal-dependent and the residual target inexact);
* random augmentation draws from a :class:`numpy.random.Generator` seeded by
  ``(seed, epoch, index)`` (see :func:`make_rng`), so a run reproduces exactly; call
  :meth:`SJDataset.set_epoch` at the start of each epoch to get fresh crops per epoch
  (with ``DataLoader`` workers this works as long as ``persistent_workers=False``, because
  workers receive a fresh copy of the dataset at each epoch's iterator);
* evaluation items (``val``/``test``) do not depend on the epoch: their noise / patches are drawn
  from a generator seeded by ``(seed, index, ...)`` only.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetError
from .imageio import (  # noqa: F401  (re-exported: the loaders import them from here)
    GRAY_WEIGHTS,
    MAX_IMAGE_PIXELS,
    check_headers,
    image_size,
    binary_label,
    check_same_size,
    format_values,
    gray_label,
    open_image,
    read_image,
    read_label,
    resize_image,
    resize_label,
    rgb_to_gray,
)

#: label value of pixels excluded from the loss and the metrics
IGNORE_INDEX = 255

#: environment variable naming the parent data directory (``<dir>/ISBI2012-EM``, ``<dir>/DRIVE``…)
DATA_ENV = "SJUNET_DATA"

SEGMENTATION = "segmentation"
DENOISING = "denoising"

T = TypeVar("T")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")


# --------------------------------------------------------------------------- files


def natural_key(path: str | os.PathLike) -> list:
    """Sort key that orders ``2.png`` before ``10.png`` (numbers compared as numbers)."""
    name = Path(path).name
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_images(
    directory: str | os.PathLike,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    exclude: Callable[[Path], bool] | None = None,
) -> list[Path]:
    """Image files of ``directory`` with one of ``extensions`` (case-insensitive), naturally sorted.

    Returns an empty list when the directory does not exist; callers turn that into a
    :class:`DatasetError` that says what they expected. An entry with an image's name that is not
    a regular file (a dangling symbolic link, a directory, a FIFO, a device) is refused, naming it:
    skipping it would silently shift the splits (a validation image would become a test image).
    A symbolic link to a regular file is read.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    exts = {e.lower() for e in extensions}
    files = []
    for p in directory.iterdir():
        if p.suffix.lower() not in exts or (exclude and exclude(p)):
            continue
        if not p.is_file():
            raise DatasetError(f"{p}: {_entry_kind(p)}, not an image file; every image and label of a dataset must be "
                               "a regular file (or a link to one) — restore it or remove it, so the splits do not shift")
        files.append(p)
    return sorted(files, key=natural_key)


def _entry_kind(p: Path) -> str:
    """What a directory entry that is not a regular file is, for messages."""
    import stat

    try:
        st = p.lstat()
    except OSError:
        return "it cannot be read"
    if stat.S_ISLNK(st.st_mode):
        return "a dangling symbolic link" if not p.exists() else "a link to something that is not a file"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(st.st_mode):
        return "a socket"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "a device"
    return "not a regular file"


def require_files(files: list[Path], expected: str, directory: str | os.PathLike) -> list[Path]:
    """Return ``files`` or raise :class:`DatasetError` saying ``expected`` and where nothing was found."""
    if not files:
        directory = Path(directory)
        why = "it does not exist" if not directory.exists() else "found no matching files"
        raise DatasetError(f"expected {expected}; {why} in {directory}")
    return files


def pair_files(
    primary: Sequence[Path],
    candidates: Sequence[Path],
    key: Callable[[Path], str],
    candidate_key: Callable[[Path], str] | None = None,
    what: str = "label",
) -> list[Path]:
    """For each file of ``primary`` the file of ``candidates`` with the same key
    (``key(primary) == candidate_key(candidate)``); a missing partner raises :class:`DatasetError`."""
    candidate_key = candidate_key or key
    by_key = {candidate_key(c): c for c in candidates}
    missing = [p.name for p in primary if key(p) not in by_key]
    if missing:
        where = Path(candidates[0]).parent if candidates else "the label directory"
        raise DatasetError(
            f"no {what} file for {len(missing)} image(s) (e.g. {missing[0]}) in {where}"
        )
    keys = {key(p) for p in primary}
    orphans = [c for c in candidates if candidate_key(c) not in keys]
    if orphans:
        where = Path(primary[0]).parent if primary else "the image directory"
        raise DatasetError(
            f"{orphans[0]}: a {what} without its image in {where} ({len(orphans)} such file(s)); an image is missing "
            "— restore it or remove the orphan, so the splits do not shift"
        )
    return [by_key[key(p)] for p in primary]


#: the validation rule of every 2-D data set (:func:`validation_size`): at least this many whole images…
MIN_VAL_IMAGES = 4
#: … and at least this fraction of the training images (the non-test images), whichever is more
VAL_FRACTION = 0.2


def validation_size(pool: int) -> int:
    """Validation images carved from ``pool`` training (non-test) images: ``max(4, ceil(0.2 · pool))``
    (:data:`MIN_VAL_IMAGES`, :data:`VAL_FRACTION`), and at least one image left to train on.

    Why: checkpoints are chosen and fine-tuning's gains judged on the validation score, so it must
    rank them the way the test images would. Measured: a DRIVE validation split of 2 images scored
    0.47 where the test images scored 0.63, and moved between 0.17 and 0.47 from epoch to epoch;
    five EM images (20 % of 25) ranked fine-tuning checkpoints as the test images did."""
    pool = int(pool)
    return max(0, min(pool - 1, max(MIN_VAL_IMAGES, math.ceil(VAL_FRACTION * pool))))


def select_split(
    files: Sequence[T], split: str, n_val: int | None, n_test: int = 0, holdout_val: bool = False
) -> list[T]:
    """Contiguous-block split of sorted ``files``: the last ``n_test`` are ``test``; of the rest, the
    last ``n_val`` are ``val`` (``None``: :func:`validation_size` of the rest); ``train`` is the rest,
    and also includes the ``val`` block unless ``holdout_val`` (so by default ``train`` uses every
    non-test file, as the papers do)."""
    files = list(files)
    n_trainval = len(files) - n_test
    if n_val is None:
        n_val = validation_size(n_trainval)
    if n_trainval - (n_val if holdout_val else 0) <= 0 or n_val > n_trainval or n_test < 0:
        raise DatasetError(
            f"cannot take {n_test} test and {n_val} validation files from {len(files)} files"
        )
    if split == "test":
        return files[n_trainval:]
    if split == "val":
        return files[n_trainval - n_val : n_trainval]
    return files[: n_trainval - n_val] if holdout_val else files[:n_trainval]


def fingerprint(files: Iterable[str | os.PathLike], extra: Any = None) -> str:
    """Short (16 hex) sha256 over the sorted file names and sizes (and ``repr(extra)`` if given).

    Cheap (no file content is read) yet it changes when files are added, removed, renamed or
    re-encoded; dataset descriptions carry it so results say which data produced them.
    """
    h = hashlib.sha256()
    for name, size in sorted((Path(f).name, Path(f).stat().st_size) for f in files):
        h.update(f"{name}\0{size}\n".encode())
    if extra is not None:
        h.update(repr(extra).encode())
    return h.hexdigest()[:16]


def resolve_root(
    root: str | os.PathLike | None,
    default_subdir: str | None,
    check: Callable[[Path], str | None],
    name: str,
) -> Path:
    """Find the dataset directory from ``root``.

    ``root`` may be the dataset directory itself or the parent data directory holding it under
    ``default_subdir`` (e.g. ``../shared/data`` → ``../shared/data/ISBI2012-EM``). With ``root=None``
    the parent directory comes from the environment variable :data:`DATA_ENV`.
    ``check(path)`` returns ``None`` when ``path`` has the dataset's layout, else a message saying
    what was expected; the message for ``root`` itself is raised if neither candidate fits.
    """
    if root is None:
        env = os.environ.get(DATA_ENV)
        if not env:
            raise DatasetError(
                f"dataset {name!r} needs a root directory (or the environment variable {DATA_ENV} "
                f"naming the parent data directory that holds {default_subdir!r})"
            )
        root = env
    root = Path(root).expanduser()
    problem = check(root)
    if problem is None:
        return root
    if default_subdir:
        sub = root / default_subdir
        if sub.is_dir() and check(sub) is None:
            return sub
    hint = f" (nor is it a data directory holding {default_subdir!r})" if default_subdir else ""
    raise DatasetError(f"{name}: {root} is not in the expected layout{hint}: {problem}")


# --------------------------------------------------------------------------- tensors


def image_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``[H, W, C]`` (or ``[H, W]``) float array → ``float32`` tensor ``[C, H, W]``."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


def label_to_tensor(label: np.ndarray) -> torch.Tensor:
    """``[H, W]`` integer array → ``int64`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))


def volume_to_tensor(arr: np.ndarray, spatial_dims: int) -> torch.Tensor:
    """Channels-last ``[*S, C]`` (or channel-less ``[*S]``) float array with ``spatial_dims`` spatial
    axes ``S`` → ``float32`` tensor ``[C, *S]`` (``spatial_dims=3``: ``[D,H,W,C]`` → ``[C,D,H,W]``)."""
    if arr.ndim == spatial_dims:
        arr = arr[..., None]
    if arr.ndim != spatial_dims + 1:
        raise DatasetError(f"expected an image of {spatial_dims} spatial axes (+ channels), got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(arr, -1, 0), dtype=np.float32))


def segmentation_item(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [C,*S] float32, y [*S] int64)`` from a channels-last ``[*S,C]`` image and a ``[*S]`` label.

    The label's number of axes gives the spatial dimensions: ``[H,W,C]`` + ``[H,W]`` →
    ``([C,H,W], [H,W])``; ``[D,H,W,C]`` + ``[D,H,W]`` → ``([C,D,H,W], [D,H,W])`` (a channel-less
    image of the label's shape gets one channel). Label values, :data:`IGNORE_INDEX` included, are
    kept as they are.
    """
    if label.ndim == 2:
        return image_to_tensor(image), label_to_tensor(label)
    x = volume_to_tensor(image, label.ndim)
    if tuple(x.shape[1:]) != tuple(label.shape):
        raise DatasetError(f"image {tuple(x.shape[1:])} and label {tuple(label.shape)} differ in size")
    return x, label_to_tensor(label)


# --------------------------------------------------------------------------- randomness


def make_rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent generator for ``(seed, *keys)`` (e.g. ``(seed, epoch, index)``) via
    :class:`numpy.random.SeedSequence`; the same keys always give the same stream."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *(int(k) for k in keys)]))


def random_crop_box(
    shape: tuple[int, int], size: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int]:
    """Top-left corner of a uniformly random ``size`` crop inside an image of ``shape`` (H, W)."""
    (h, w), (ch, cw) = shape, size
    if ch > h or cw > w:
        raise DatasetError(f"crop {ch}x{cw} does not fit in an image of {h}x{w}")
    return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))


def center_crop_box(shape: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the centred ``size`` crop (clamped: a crop larger than the image keeps it)."""
    (h, w), (ch, cw) = shape, size
    return max(0, (h - ch) // 2), max(0, (w - cw) // 2)


def crop(arrays: Sequence[np.ndarray], top: int, left: int, size: tuple[int, int]) -> list[np.ndarray]:
    """The same ``size`` window at ``(top, left)`` of each ``[H, W, ...]`` array."""
    ch, cw = size
    return [a[top : top + ch, left : left + cw] for a in arrays]


def random_crop(
    arrays: Sequence[np.ndarray], size: tuple[int, int] | None, rng: np.random.Generator
) -> list[np.ndarray]:
    """The same random ``size`` window of every array (``size=None``: unchanged)."""
    if size is None:
        return list(arrays)
    top, left = random_crop_box(arrays[0].shape[:2], size, rng)
    return crop(arrays, top, left, size)


def random_crop_box_nd(
    shape: Sequence[int], size: Sequence[int], rng: np.random.Generator
) -> tuple[int, ...]:
    """Corner of a uniformly random ``size`` crop inside an array of spatial ``shape`` (any number
    of axes, e.g. (D, H, W)); one draw per axis, in axis order."""
    if len(shape) != len(size) or any(c > n for c, n in zip(size, shape)):
        raise DatasetError(f"crop {'x'.join(map(str, size))} does not fit in {'x'.join(map(str, shape))}")
    return tuple(int(rng.integers(0, n - c + 1)) for n, c in zip(shape, size))


def random_flip_axes(
    arrays: Sequence[np.ndarray], rng: np.random.Generator, axes: Sequence[int], enabled: bool = True
) -> list[np.ndarray]:
    """Flip all arrays together along each of ``axes`` with probability 1/2. One draw per axis is
    always made (also with ``enabled=False``), so the switch does not shift the random stream."""
    flips = [rng.random() < 0.5 for _ in axes]
    out = list(arrays)
    if enabled:
        for axis, flip in zip(axes, flips):
            if flip:
                out = [np.flip(a, axis) for a in out]
    return out


def random_flip(
    arrays: Sequence[np.ndarray],
    rng: np.random.Generator,
    horizontal: bool = True,
    vertical: bool = False,
) -> list[np.ndarray]:
    """Flip all ``[H, W, ...]`` arrays together, each enabled direction with probability 1/2.

    Two draws are always made (whether or not a direction is enabled) so enabling one direction
    does not shift the rest of the random stream.
    """
    flip_h, flip_v = rng.random() < 0.5, rng.random() < 0.5
    out = list(arrays)
    if horizontal and flip_h:
        out = [a[:, ::-1] for a in out]
    if vertical and flip_v:
        out = [a[::-1] for a in out]
    return out


def gaussian_noise(shape: Sequence[int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``sigma / 255 * N(0, 1)`` of ``shape`` as ``float32`` (sigma on the 0–255 scale)."""
    return rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(sigma / 255.0)


def noisy_pair(clean: torch.Tensor, sigma: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noisy, noise)`` for a clean ``[C, H, W]`` tensor: ``noise = sigma/255 · N(0,1)``,
    ``noisy = clean + noise`` **without clipping** (so ``clean == noisy - noise`` up to float32
    rounding, as in DnCNN's residual learning)."""
    noise = torch.from_numpy(gaussian_noise(clean.shape, sigma, rng))
    return clean + noise, noise


def as_size(value: int | Sequence[int] | None, what: str) -> tuple[int, int] | None:
    """``48`` → ``(48, 48)``; ``(192, 256)`` → ``(192, 256)``; ``None`` → ``None``."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) <= 0:
        raise DatasetError(f"{what} must be a positive int or (height, width), got {value!r}")
    return value  # type: ignore[return-value]


def as_size3(value: int | Sequence[int] | None, what: str) -> tuple[int, int, int] | None:
    """``8`` → ``(8, 8, 8)``; ``(8, 64, 64)`` → ``(8, 64, 64)`` (depth, height, width); ``None`` → ``None``."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * 3
    value = tuple(int(v) for v in value)
    if len(value) != 3 or min(value) <= 0:
        raise DatasetError(f"{what} must be a positive int or (depth, height, width), got {value!r}")
    return value  # type: ignore[return-value]


# --------------------------------------------------------------------------- base class


class SJDataset(Dataset):
    """Base class of every sjunet dataset.

    Subclasses set the class attributes, fill ``self.files`` (everything the items are read from,
    for the fingerprint) and ``self.options`` (the options that shape the items, for
    :meth:`describe`), and implement ``__len__`` / ``__getitem__``.
    """

    #: registry name
    name: ClassVar[str] = ""
    #: ``"segmentation"`` or ``"denoising"``
    task: ClassVar[str] = ""
    #: splits this dataset has
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    #: conventional sub-directory under a parent data directory (None: no files needed)
    DEFAULT_ROOT: ClassVar[str | None] = None
    #: names of the classes (segmentation); may be replaced per instance
    CLASS_NAMES: tuple[str, ...] = ()

    in_channels: int = 1
    num_classes: int = 0
    #: the most pixels one of this dataset's image files may declare (checked from its header, before decoding)
    max_image_pixels: ClassVar[int] = MAX_IMAGE_PIXELS
    #: spatial axes of an item: 2 (``x [C,H,W]``, ``y [H,W]``) or 3 (volumes: ``x [C,D,H,W]``, ``y [D,H,W]``)
    spatial_dims: ClassVar[int] = 2

    def __init__(self, root: Path | None, split: str, seed: int = 0) -> None:
        if split not in self.SPLITS:
            raise DatasetError(f"{self.name}: unknown split {split!r}; valid splits: {', '.join(self.SPLITS)}")
        self.root = root
        self.split = split
        self.seed = int(seed)
        self.epoch = 0
        self.files: list[Path] = []
        self.options: dict[str, Any] = {}

    @property
    def train(self) -> bool:
        """Whether items are randomly augmented (``split == 'train'``)."""
        return self.split == "train"

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random augmentation ``__getitem__`` draws (training split only)."""
        self.epoch = int(epoch)

    def item_rng(self, index: int, *keys: int) -> np.random.Generator:
        """Generator for item ``index``: depends on the epoch for ``train``, not for ``val``/``test``."""
        if self.train:
            return make_rng(self.seed, self.epoch, index, *keys)
        return make_rng(self.seed, index, *keys)

    def cached(self, key: Any, load: Callable[[], Any]) -> Any:
        """``load()`` once per ``key`` when ``self.cache`` is true (decoded / preprocessed images)."""
        if not getattr(self, "cache", True):
            return load()
        store = self.__dict__.setdefault("_cache", {})
        if key not in store:
            store[key] = load()
        return store[key]

    def fingerprint(self) -> str:
        """:func:`fingerprint` of ``self.files``, the split, the seed and the item-shaping options."""
        return fingerprint(self.files, extra=(self.name, self.split, self.seed, sorted(self.options.items())))

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary: name, task, root, split, seed, options, sizes, fingerprint."""
        info: dict[str, Any] = {
            "name": self.name,
            "task": self.task,
            "root": None if self.root is None else str(self.root),
            "split": self.split,
            "seed": self.seed,
            "options": {k: _jsonable(v) for k, v in self.options.items()},
            "num_items": len(self),
            "num_files": len(self.files),
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "spatial_dims": self.spatial_dims,
            "fingerprint": self.fingerprint(),
        }
        if self.task == SEGMENTATION:
            info["class_names"] = list(self.CLASS_NAMES)
            info["ignore_index"] = IGNORE_INDEX
        return info

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root}, split={self.split!r}, items={len(self)})"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value
