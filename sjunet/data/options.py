"""Dataset options checked by their declared type and range, and the image-size rule of a network.

:func:`check_options` is called by :func:`sjunet.data.get_dataset` (and by the CLI before any work) on
the keyword options of a dataset class (``--opt KEY=VALUE``): booleans are parsed strictly
(``true/false/yes/no/on/off/1/0``, any case), whole numbers must be whole and in range, sizes are a
positive int or ``[height, width]`` (volumetric datasets, ``spatial_dims = 3``: a positive int or
``[depth, height, width]``); an unknown option names the valid ones. Each failure is one
:class:`DatasetError` line saying what was wrong and what to pass instead.

:func:`check_fits` refuses, before the work, images that cannot pass a network whose input height
and width must be multiples of ``multiple`` (a U-Net of depth ``d``: ``2**d``).
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

from .common import DatasetError

#: the largest image side (demo sizes, crops, patches) sjunet accepts as an option
MAX_SIDE = 4096

_TRUE = {"true", "yes", "on", "1", "y", "t"}
_FALSE = {"false", "no", "off", "0", "n", "f"}


def _fail(dataset: str, name: str, why: str) -> DatasetError:
    return DatasetError(f"{dataset}: --opt {name}: {why}")


def _bool(dataset: str, name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise _fail(dataset, name, f"takes true or false (yes/no, on/off, 1/0), got {v!r}")


def _whole(dataset: str, name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, str):
        try:
            v = float(v.strip()) if any(c in v for c in ".eE") else int(v.strip())
        except ValueError:
            raise _fail(dataset, name, f"takes a whole number in {lo}..{hi}, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise _fail(dataset, name, f"takes a whole number in {lo}..{hi}, got {v!r}")
    if isinstance(v, float) and not v.is_integer():
        raise _fail(dataset, name, f"takes a whole number in {lo}..{hi}, got {v!r}")
    v = int(v)
    if not lo <= v <= hi:
        raise _fail(dataset, name, f"must be in {lo}..{hi}, got {v}")
    return v


def _number(dataset: str, name: str, v: Any, lo: float, hi: float) -> float:
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise _fail(dataset, name, f"takes a number in {lo:g}..{hi:g}, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise _fail(dataset, name, f"takes a number in {lo:g}..{hi:g}, got {v!r}")
    return float(v)


def _size(dataset: str, name: str, v: Any, optional: bool, lo: int = 1) -> Any:
    """A positive int or [height, width] (each lo..MAX_SIDE); ``None`` when ``optional``."""
    if v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null")):
        if optional:
            return None
        raise _fail(dataset, name, f"takes a size (a whole number or [height, width]), not {v!r}")
    if isinstance(v, str) and ("x" in v.lower() or "," in v):
        v = [p for p in v.lower().replace("x", ",").split(",")]
    try:
        if isinstance(v, (list, tuple)):
            if len(v) != 2:
                raise ValueError
            return tuple(_whole(dataset, name, p, lo, MAX_SIDE) for p in v)
        return _whole(dataset, name, v, lo, MAX_SIDE)
    except (DatasetError, ValueError):
        raise _fail(dataset, name, f"takes a size: a whole number in {lo}..{MAX_SIDE} or [height, width] "
                                   f"(e.g. --opt {name}=128 or --opt {name}=[128,96]), got {v!r}") from None


def _size3(dataset: str, name: str, v: Any, optional: bool, lo: int = 1, hi: int = MAX_SIDE) -> Any:
    """A volume size: a positive int (a cube) or [depth, height, width] (each lo..hi); ``None`` when
    ``optional``. Strings ``8x64x64`` and ``8,64,64`` are read as triples."""
    if v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null")):
        if optional:
            return None
        raise _fail(dataset, name, f"takes a size (a whole number or [depth, height, width]), not {v!r}")
    if isinstance(v, str) and ("x" in v.lower() or "," in v):
        v = [p for p in v.lower().strip().strip("[]()").replace("x", ",").split(",")]
    try:
        if isinstance(v, (list, tuple)):
            if len(v) != 3:
                raise ValueError
            return tuple(_whole(dataset, name, p, lo, hi) for p in v)
        return _whole(dataset, name, v, lo, hi)
    except (DatasetError, ValueError):
        raise _fail(dataset, name, f"takes a volume size: a whole number in {lo}..{hi} or [depth, height, width] "
                                   f"(e.g. --opt {name}=[8,64,64]), got {v!r}") from None


def _numbers(dataset: str, name: str, v: Any, count: int, lo: float, hi: float) -> tuple[float, ...]:
    if isinstance(v, str):
        v = v.replace(" ", "").strip("[]()").split(",")
    if not isinstance(v, (list, tuple)) or len(v) != count:
        raise _fail(dataset, name, f"takes {count} numbers, e.g. [{', '.join(['0'] * count)}], got {v!r}")
    return tuple(_number(dataset, name, p, lo, hi) for p in v)


def _sigma_range(dataset: str, name: str, v: Any) -> tuple[float, float]:
    lo, hi = _numbers(dataset, name, v, 2, 0.0, 255.0)
    if lo > hi:
        raise _fail(dataset, name, f"takes [low, high] with low ≤ high, got {v!r}")
    return lo, hi


def _fractions(dataset: str, name: str, v: Any) -> tuple[float, float, float]:
    f = _numbers(dataset, name, v, 3, 0.0, 1e6)
    if sum(f) <= 0:
        raise _fail(dataset, name, f"takes three non-negative numbers (train, val, test) with a positive sum, got {v!r}")
    return f  # type: ignore[return-value]


#: option name → checker(dataset, name, value) returning the checked value
CHECKS: dict[str, Callable[[str, str, Any], Any]] = {
    "seed": lambda d, n, v: _whole(d, n, v, 0, 2 ** 32 - 1),
    "flip": _bool, "cache": _bool, "holdout_val": _bool, "color": _bool,
    "samples_per_epoch": lambda d, n, v: None if v is None else _whole(d, n, v, 1, 10 ** 7),
    "num_items": lambda d, n, v: None if v is None else _whole(d, n, v, 1, 100_000),
    "val_images": lambda d, n, v: _whole(d, n, v, 1, 100_000),
    "test_images": lambda d, n, v: _whole(d, n, v, 1, 100_000),
    "patch": lambda d, n, v: _whole(d, n, v, 1, MAX_SIDE),
    "val_x": lambda d, n, v: _whole(d, n, v, 1, MAX_SIDE),
    "test_x": lambda d, n, v: _whole(d, n, v, 1, MAX_SIDE),
    "sigma": lambda d, n, v: _number(d, n, v, 0.0, 255.0),
    "sigma_range": _sigma_range,
    "fractions": _fractions,
}


def _keyword_parameters(cls: type) -> dict[str, inspect.Parameter]:
    return {p.name: p for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY}


def check_options(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against dataset class ``cls``'s keyword-only parameters; returns them
    converted to their declared types (``"no"`` → ``False``, ``"128"`` → ``128``). One
    :class:`DatasetError` line for an unknown option (naming the valid ones) or a bad value."""
    dataset = getattr(cls, "name", cls.__name__)
    params = _keyword_parameters(cls)
    unknown = sorted(str(k) for k in options if k not in params)
    if unknown:
        raise DatasetError(f"{dataset}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(params)}")
    out: dict[str, Any] = {}
    for name, value in options.items():
        ann = str(params[name].annotation)
        check = CHECKS.get(name)
        if name in ("crop", "eval_crop", "size") and getattr(cls, "spatial_dims", 2) == 3:
            lo, hi = (8, 256) if name == "size" else (1, MAX_SIDE)  # demo-seg3d volumes: sides 8..256
            out[name] = _size3(dataset, name, value, optional="None" in ann, lo=lo, hi=hi)
        elif name in ("crop", "eval_crop", "size") and "tuple" in ann:
            out[name] = _size(dataset, name, value, optional="None" in ann)
        elif name == "size":  # demo-seg: the side of square images
            out[name] = _whole(dataset, name, value, 16, MAX_SIDE)
        elif check is not None:
            out[name] = check(dataset, name, value)
        elif ann == "bool":
            out[name] = _bool(dataset, name, value)
        elif ann == "int":
            out[name] = _whole(dataset, name, value, 0, 10 ** 9)
        elif ann == "float":
            out[name] = _number(dataset, name, value, -1e9, 1e9)
        else:
            out[name] = value
    return out


# --------------------------------------------------------------------------- image size vs network

def image_size(dataset) -> tuple[int, int]:
    """(H, W) of the dataset's first item (items of a split share their size after cropping)."""
    if len(dataset) == 0:
        raise DatasetError(f"{getattr(dataset, 'name', 'the dataset')}: the split is empty")
    x = dataset[0][0]
    return int(x.shape[-2]), int(x.shape[-1])


def spatial_size(dataset) -> tuple[int, ...]:
    """All spatial sides of the dataset's first item: (H, W), or (D, H, W) for volumes."""
    if len(dataset) == 0:
        raise DatasetError(f"{getattr(dataset, 'name', 'the dataset')}: the split is empty")
    x = dataset[0][0]
    return tuple(int(n) for n in x.shape[-getattr(dataset, "spatial_dims", 2):])


def _check_fits_nd(dataset, multiple: int | tuple[int, ...], padded: bool, what: str) -> None:
    """:func:`check_fits` for volumes, or a per-axis ``multiple`` (e.g. (1, 16, 16) for a net that
    pools only in-plane): every spatial side must be a multiple of its axis's multiple."""
    name = getattr(dataset, "name", type(dataset).__name__)
    dims = getattr(dataset, "spatial_dims", 2)
    axes = ("depth", "height", "width")[-dims:]
    multiples = (int(multiple),) * dims if isinstance(multiple, (int, float)) else tuple(int(m) for m in multiple)
    if len(multiples) != dims:
        raise ValueError(f"{len(multiples)} multiples for {dims} spatial axes")
    if padded or max(multiples) <= 1:  # evaluation pads volumes up to the multiples
        return
    sides = spatial_size(dataset)
    bad = [f"{a} {n} must be a multiple of {m}" for a, n, m in zip(axes, sides, multiples) if n % m]
    if bad:
        kind = f"{'volumes' if dims == 3 else 'images'} of {'×'.join(map(str, sides))} ({name}, {getattr(dataset, 'split', '')} split)"
        hint = "pass --opt crop=[d,h,w]" if "crop" in _keyword_parameters(type(dataset)) else \
               "pass --opt size=[d,h,w]" if "size" in _keyword_parameters(type(dataset)) else "crop or pad the items"
        raise DatasetError(f"{kind} cannot pass {what}: {', '.join(bad)}; {hint} with such sides, or use a "
                           "shallower network (--depth)")


def describe_multiple(multiple: int) -> str:
    """``"height and width must be multiples of 16 (2**4) and at least 16"``."""
    power = f" (2**{int(math.log2(multiple))})" if multiple > 1 and multiple & (multiple - 1) == 0 else ""
    return f"height and width must be multiples of {multiple}{power} and at least {multiple}"


def check_fits(dataset, multiple: int | tuple[int, ...], *, padded: bool, what: str = "this U-Net") -> None:
    """Refuse (one :class:`DatasetError` line) images of ``dataset`` that cannot pass a network whose
    input sides must be multiples of ``multiple``.

    ``padded=False`` (training, calibration: batches go in as they are): every side must be a
    multiple of ``multiple`` (so at least ``multiple``). ``padded=True`` (evaluation and validation:
    whole images are padded up to the multiple, :mod:`sjunet.evaluation`): any size passes — the
    windows of ``--protocol patch`` are checked where that protocol is chosen
    (:func:`sjunet.evaluation.check_protocol`).

    Volumes (``dataset.spatial_dims == 3``): an int ``multiple`` applies to depth, height and width
    alike (a net pooling 2× in every axis); a per-axis tuple ``(d, h, w)`` says otherwise (e.g.
    ``(4, 16, 16)``). A tuple may also be given for images, ``(h, w)``.
    """
    if getattr(dataset, "spatial_dims", 2) != 2 or isinstance(multiple, (tuple, list)):
        return _check_fits_nd(dataset, multiple, padded, what)
    multiple = int(multiple)
    if multiple <= 1 or padded:
        return
    name = getattr(dataset, "name", type(dataset).__name__)
    h, w = image_size(dataset)
    kind = f"images of {h}×{w} ({name}, {getattr(dataset, 'split', '')} split)".replace(", )", ")")
    if h % multiple or w % multiple:
        hint = ("pass --opt patch=… (a multiple of {m})" if "patch" in _keyword_parameters(type(dataset))
                else "pass --opt crop=… (a multiple of {m})" if "crop" in _keyword_parameters(type(dataset))
                else "pass --opt size=… (a multiple of {m})" if "size" in _keyword_parameters(type(dataset))
                else "crop or pad the images to a multiple of {m}").format(m=multiple)
        raise DatasetError(f"{kind} cannot pass {what}: {describe_multiple(multiple)}; {hint}, or use a shallower "
                           "network (--depth)")
