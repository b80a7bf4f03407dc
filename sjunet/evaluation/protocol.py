"""Evaluation protocols (:class:`Protocol`): how images are fed to the network, the same for every
dataset and for validation during ``train`` / ``finetune``.

* ``whole`` (the default): each image is padded on the bottom/right to the network's size multiple
  (reflect by default, or zeros), run once and cropped back. A U-Net is fully convolutional, so
  this is the network's prediction of the image. When an image would exceed the memory budget
  (``max_pixels`` input pixels per call, by default :func:`~sjunet.evaluation.layout.budget` live activation elements — 2^26
  on a CPU — over the network's activation elements per pixel — its largest feature map, plus a converted
  SNN's state, which does not grow with T), the image is tiled instead:
* ``tiled``: the padded image is cut into a grid of tiles (cores of side ``tile``, a multiple of
  the size rule, balanced over the image); each tile runs with a margin of ``overlap`` pixels of
  its neighbours (rounded up to the size multiple, so pooling grids stay aligned) and gives only
  its core to the output: every pixel comes from exactly one tile, nothing is averaged, and the
  result equals the whole-image prediction wherever the receptive field reaching beyond the margin
  does not matter (exactly, for a network whose receptive-field radius is within the margin);
* ``patch``: the paper's protocol for its tables (official code): ``patch`` x ``patch`` windows
  every ``stride`` pixels over the zero-padded image, overlaps averaged
  (:func:`sjunet.data.patches.predict_by_patches`); the defaults are the dataset's ``eval_patch``
  (DRIVE: 48, 16).

A new protocol is a name in :data:`PROTOCOLS`, its checks in :func:`make_protocol` and its layout in
:func:`sjunet.evaluation.layout.plan`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Integral
from typing import Sequence

PROTOCOLS = ("whole", "tiled", "patch")
#: padding modes of an image up to the size multiple (``zero``: the official patch code's)
PAD_MODES = ("reflect", "zero")
#: windows per call of the network under the patch protocol
PATCH_BATCH = 64


# ------------------------------------------------------------------------------ protocol

@dataclass(frozen=True)
class Protocol:
    """How images are fed to the network (see the module docstring).

    ``name``: ``whole`` (tiled only when an image exceeds the budget), ``tiled`` (always tiled) or
    ``patch``. ``tile``: core side of a tile (pixels; default from the budget). ``overlap``: margin
    of a tile (default :data:`~sjunet.evaluation.layout.TILE_OVERLAP`). ``max_pixels``: input pixels per call above which
    ``whole`` tiles (default: :data:`~sjunet.evaluation.layout.MAX_ELEMENTS` over the network's activation elements per
    pixel). ``patch``, ``stride``: the patch protocol's windows (default: the dataset's
    ``eval_patch``). ``pad``: ``reflect`` or ``zero`` (default: reflect; zero for ``patch``).
    """

    name: str = "whole"
    tile: int | None = None
    overlap: int | None = None
    max_pixels: int | None = None
    patch: int | None = None
    stride: int | None = None
    pad: str | None = None
    batch: int = PATCH_BATCH

    @property
    def pad_mode(self) -> str:
        return self.pad or ("zero" if self.name == "patch" else "reflect")


def _integer(flag: str, v, lowest: int = 1):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, Integral) or v < lowest:
        kind = "a non-negative" if lowest == 0 else "a positive"
        raise ValueError(f"{flag} must be {kind} integer (pixels), got {v!r}")
    return int(v)


def make_protocol(protocol: "Protocol | str | dict | None" = None, dataset=None, **options) -> Protocol:
    """A checked :class:`Protocol` from a name, a dict or a Protocol (plus field overrides), with the
    patch protocol's window and stride defaulting to ``dataset.eval_patch``. One-line ValueErrors."""
    if isinstance(protocol, Protocol):
        p = replace(protocol, **options) if options else protocol
    elif isinstance(protocol, dict):
        p = Protocol(**{**protocol, **options})
    else:
        p = Protocol(name=protocol or "whole", **options)
    if p.name not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {p.name!r}")
    if p.pad is not None and p.pad not in PAD_MODES:
        raise ValueError(f"--pad must be one of {', '.join(PAD_MODES)}, got {p.pad!r}")
    _integer("--tile", p.tile)
    _integer("--tile-overlap", p.overlap, 0)
    _integer("--max-pixels", p.max_pixels)
    _integer("--patch", p.patch)
    _integer("batch", p.batch)
    if p.stride is not None and (isinstance(p.stride, bool) or not isinstance(p.stride, Integral)):
        raise ValueError(f"--stride must be an integer (pixels), got {p.stride!r}")
    if p.name == "patch":
        given = [f for f, v in (("--tile", p.tile), ("--tile-overlap", p.overlap), ("--max-pixels", p.max_pixels))
                 if v is not None]
        if given:
            raise ValueError(f"{'/'.join(given)} apply to --protocol whole or tiled, not to --protocol patch")
        default = getattr(dataset, "eval_patch", None) if dataset is not None else None
        patch = p.patch if p.patch is not None else (int(default[0]) if default else None)
        if patch is None:
            name = getattr(dataset, "name", None) or "this dataset"
            raise ValueError(f"--protocol patch needs --patch (the window side): {name} declares no evaluation window")
        stride = p.stride if p.stride is not None else (min(int(default[1]), patch) if default else patch)
        if not 1 <= stride <= patch:
            raise ValueError(f"--stride must be between 1 and --patch ({patch}) pixels, got {stride}")
        return replace(p, patch=int(patch), stride=int(stride))
    if p.patch is not None or p.stride is not None:
        raise ValueError(f"--patch/--stride apply to --protocol patch, not to --protocol {p.name}")
    return p


def check_protocol(protocol: Protocol, multiple: int | Sequence[int]) -> None:
    """The patch protocol's windows must pass the network (multiples of its size rule); it is a
    protocol for 2-D images (volumes: whole or tiled)."""
    if isinstance(multiple, (tuple, list)):
        if protocol.name == "patch" and len(multiple) != 2:
            raise ValueError("--protocol patch evaluates 2-D images by square windows; volumes are evaluated "
                             "--protocol whole or tiled")
        multiple = max(int(v) for v in multiple)
    m = int(multiple)
    if protocol.name == "patch" and m > 1 and protocol.patch % m:
        from sjunet.data import describe_multiple

        raise ValueError(f"--patch {protocol.patch}: the windows cannot pass this network ({describe_multiple(m)}); "
                         f"choose a multiple of {m}, or --protocol whole")
