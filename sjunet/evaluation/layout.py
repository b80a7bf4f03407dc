"""How one image goes through the network under a :class:`~sjunet.evaluation.protocol.Protocol`:
padding to the size multiple, the memory budget, tiling (:func:`plan`, :class:`Layout`,
:func:`run_layout`) — the one code path of evaluation, validation and prediction pictures
(:func:`predict`).

Under ``whole`` each image is padded on the bottom/right (every axis's end, for volumes) to the
network's size multiple, run once and cropped back; above the memory budget (:func:`budget` live
activation elements over the network's :func:`activation_cost` per pixel) it is cut into tiles whose
cores tile the padded image, each run with a margin of its neighbours and giving only its core to the
output. The patch protocol's overlapping windows are :func:`sjunet.data.patches.predict_by_patches`.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sjunet.data.patches import patch_grid, predict_by_patches
from sjunet.evaluation.protocol import PAD_MODES, PATCH_BATCH, Protocol, check_protocol, make_protocol
from sjunet.layers.dims import show, spatial_dims
from sjunet.snn.model import shape_rule
from sjunet.snn.simulation import simulate

Outputs = dict  # key (None for the ANN, T for the SNN) -> output tensor

#: automatic memory budget on a CPU: live activation elements of one call (largest activation + SNN
#: state; 2^26 float32 = 256 MiB); on a GPU, a quarter of its free memory when that is more
MAX_ELEMENTS = 2 ** 26
#: default margin of a tile (pixels, rounded up to the size multiple)
TILE_OVERLAP = 32
#: tile core side when ``tiled`` is asked without ``tile`` and without a budget
DEFAULT_TILE = 256


def _ceil_to(v: int, m: int) -> int:
    return -(-int(v) // m) * m


def _per_axis(multiple: int | Sequence[int], nd: int) -> tuple[int, ...]:
    """A size multiple (one for all axes, or one per axis) as ``nd`` positive ints."""
    if isinstance(multiple, (tuple, list)):
        if len(multiple) != nd:
            raise ValueError(f"{len(multiple)} size multiples for an input of {nd} spatial axes")
        return tuple(max(1, int(v)) for v in multiple)
    return (max(1, int(multiple)),) * nd


def _pad_after(x: torch.Tensor, amounts: Sequence[int], mode: str = "reflect") -> torch.Tensor:
    """Pad ``x`` ([B, C, *spatial]) by ``amounts[i]`` after the end of spatial axis i (images: the
    bottom and the right): ``reflect`` (``replicate`` where an axis is too short to reflect) or ``zero``."""
    amounts = [int(a) for a in amounts]
    if not any(amounts):
        return x
    pads = tuple(v for a in reversed(amounts) for v in (0, a))  # F.pad: the last axis first
    if mode == "zero":
        return F.pad(x, pads)
    if mode != "reflect":
        raise ValueError(f"unknown padding {mode!r}; choose one of {', '.join(PAD_MODES)}")
    sizes = x.shape[2:]
    return F.pad(x, pads, mode="reflect" if all(a < n for a, n in zip(amounts, sizes)) else "replicate")


def pad_to_multiple(x: torch.Tensor, multiple: int | Sequence[int], mode: str = "reflect") -> torch.Tensor:
    """Pad [B, C, H, W] on the bottom/right to multiples of ``multiple`` (reflect when possible,
    or ``mode="zero"``). Volumes [B, C, D, H, W]: at the end of every axis, to ``multiple`` (one
    for all axes, or one per axis)."""
    ms = _per_axis(multiple, x.dim() - 2)
    return _pad_after(x, [(-n) % m for n, m in zip(x.shape[2:], ms)], mode)


@dataclass
class Layout:
    """How one image is cut: ``kind`` (whole, tiled, patch), the padded size, the tiles (window
    ``y0, y1, x0, x1`` and core ``y0, y1, x0, x1`` in padded coordinates), the number of network
    inputs (tiles or windows), the calls of the network and the tile core side / margin."""

    kind: str
    padded: tuple[int, int]
    tiles: list[tuple[int, ...]] = field(default_factory=list)
    windows: int = 1
    calls: int = 1
    tile: int | None = None
    overlap: int | None = None
    max_pixels: int | None = None


def _axis(n: int, core: int, margin: int, m: int) -> list[tuple[int, int, int, int]]:
    """(window start, window end, core start, core end) along one padded side ``n`` (a multiple
    of ``m``): cores of balanced sizes, multiples of ``m``, at most ``core``."""
    k = -(-n // core)
    size = _ceil_to(-(-n // k), m)
    return [(max(0, a - margin), min(n, a + size + margin), a, min(n, a + size)) for a in range(0, n, size)]


def budget(device="cpu") -> int:
    """Live activation elements one call may hold: :data:`MAX_ELEMENTS`, or on a GPU a quarter of
    its free memory (float32) when that is more."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        try:
            free = torch.cuda.mem_get_info(torch.device(device))[0]
        except Exception:  # noqa: BLE001 - no estimate: the CPU's budget
            return MAX_ELEMENTS
        return max(MAX_ELEMENTS, int(free) // 16)
    return MAX_ELEMENTS


def plan(protocol: Protocol, sizes: Sequence[int], multiple: int | Sequence[int], cost: float | None = None,
         tileable: "bool | Sequence[int]" = True, elements: int = MAX_ELEMENTS) -> Layout:
    """The :class:`Layout` of an input of spatial ``sizes`` (``H x W``, or ``D x H x W``) under
    ``protocol`` for a network of size ``multiple`` (one for all axes, or one per axis) and ``cost``
    live activation elements per input pixel (:func:`activation_cost`): padded per axis to that
    axis's multiple, whole when a call would hold at most ``elements`` of them (or
    ``protocol.max_pixels`` pixels), else a grid of tiles — cores of balanced sizes, multiples of
    their axis's size multiple, with a margin of ``overlap`` rounded up likewise. Tiles are
    ``(window start, end per axis…, core start, end per axis…)``. Images under a budget get square
    tiles (the budget's side); volumes keep an axis shorter than that side whole
    (:func:`_budget_cores`). ``tileable``: False, or the one size a network holds for (a conversion
    specialised on its example: tiled only by windows of exactly that size, ``--tile-overlap 0``)."""
    nd = len(sizes)
    if protocol.name == "patch":
        if nd != 2:
            raise ValueError(f"--protocol patch evaluates 2-D images by square windows; a {nd}-D input is "
                             "evaluated --protocol whole or tiled")
        hp, wp, corners = patch_grid(int(sizes[0]), int(sizes[1]), protocol.patch, protocol.stride)
        return Layout("patch", (hp, wp), windows=len(corners), calls=-(-len(corners) // protocol.batch))
    forced = protocol.name == "tiled"
    fixed = None if isinstance(tileable, bool) or not forced else tuple(int(v) for v in tileable)
    ms = list(fixed) if fixed is not None and len(fixed) == nd else _per_axis(multiple, nd)  # one size: its windows
    padded = tuple(_ceil_to(max(int(n), 1), m) for n, m in zip(sizes, ms))
    limit = protocol.max_pixels or (max(1, int(elements / cost)) if cost else None)
    whole = Layout("whole", padded, max_pixels=limit)
    if not tileable or (not isinstance(tileable, bool) and not forced):
        if forced:
            raise ValueError("this SNN's conversion holds only for inputs of the size it was converted at: it cannot "
                             "be tiled; use --protocol whole")
        return whole
    if not forced and (limit is None or math.prod(padded) <= limit):
        return whole
    default = 0 if fixed is not None else TILE_OVERLAP  # one size: no margin fits around its windows
    overlap = default if protocol.overlap is None else protocol.overlap
    margins = [_ceil_to(overlap, m) for m in ms]
    if fixed is not None:
        cores = ms  # non-overlapping windows of exactly that size (a margin makes them larger: refused below)
    elif protocol.tile:
        cores = [_ceil_to(protocol.tile, m) for m in ms]
    elif limit and nd == 2 and not isinstance(multiple, (tuple, list)):
        cores = [max(ms[0], math.isqrt(limit) // ms[0] * ms[0] - 2 * margins[0])] * 2
    elif limit:
        cores = _budget_cores(padded, ms, margins, limit)
    else:
        cores = [_ceil_to(DEFAULT_TILE, m) for m in ms]
    per_axis = [_axis(n, c, g, m) for n, c, g, m in zip(padded, cores, margins, ms)]
    tiles = [tuple(v for a in combo for v in a[:2]) + tuple(v for a in combo for v in a[2:])
             for combo in itertools.product(*per_axis)]
    if fixed is not None and any(tuple(t[2 * i + 1] - t[2 * i] for i in range(nd)) != fixed for t in tiles):
        raise ValueError(f"this SNN's conversion holds only for {show(fixed)} inputs, the size it was converted "
                         f"at: tile it without margins (--tile-overlap 0), by windows of exactly that size, or "
                         "use --protocol whole")
    if len(tiles) == 1:
        return whole
    side = max(max(t[2 * nd + 2 * i + 1] - t[2 * nd + 2 * i] for i in range(nd)) for t in tiles)
    return Layout("tiled", padded, tiles, len(tiles), len(tiles), side, max(margins), limit)


def _budget_cores(padded: Sequence[int], ms: Sequence[int], margins: Sequence[int], limit: int) -> list[int]:
    """Tile cores of a volume for a budget of ``limit`` input voxels per call: an axis shorter than
    the budget's side (the 30 sections of an anisotropic EM stack) is kept whole — no margin is
    spent along it — and the rest of the budget is shared by the other axes (windows about
    ``limit ** (1/k)`` per cut axis, their cores that less the margins, multiples of the axis's
    size multiple)."""
    nd = len(padded)
    cores: list[int | None] = [None] * nd
    free, left = list(range(nd)), float(limit)
    changed = True
    while changed and free:
        changed = False
        side = left ** (1.0 / len(free))
        for i in list(free):
            if padded[i] <= side:
                cores[i] = int(padded[i])
                left /= max(1, padded[i])
                free.remove(i)
                changed = True
    side = int(max(1.0, left) ** (1.0 / len(free))) if free else 0
    for i in free:
        cores[i] = max(ms[i], side // ms[i] * ms[i] - 2 * margins[i])
    return [int(c) for c in cores]


def run_layout(fn: Callable[[torch.Tensor], Outputs], x: torch.Tensor, layout: Layout, protocol: Protocol,
               on_call: Callable[[int], None] | None = None) -> Outputs:
    """Apply ``fn`` to a batch ``x`` ([B, C, H, W] or [B, C, D, H, W]) as ``layout`` says
    (:func:`plan`); outputs cropped back to the input's spatial size. ``on_call(n)`` after every
    call of ``fn`` with the number of tiles / windows it took."""
    done = on_call or (lambda n: None)
    if layout.kind == "patch":
        if x.dim() != 4:
            raise ValueError("--protocol patch evaluates 2-D images by square windows; volumes: whole or tiled")
        return _patched_call(fn, x, protocol.patch, protocol.stride, protocol.pad_mode, protocol.batch, done)
    nd = x.dim() - 2
    sizes = tuple(x.shape[2:])
    crop = (Ellipsis, *(slice(0, n) for n in sizes))
    xp = _pad_after(x, [p - n for p, n in zip(layout.padded, sizes)], protocol.pad_mode)
    if layout.kind == "whole":
        out = fn(xp)
        done(1)
        return {k: v[crop] for k, v in out.items()}
    full: dict = {}
    for t in layout.tiles:
        win, core = t[:2 * nd], t[2 * nd:]
        out = fn(xp[(Ellipsis, *(slice(win[2 * i], win[2 * i + 1]) for i in range(nd)))])
        for k, v in out.items():
            if k not in full:
                full[k] = v.new_empty(*v.shape[:-nd], *layout.padded)
            src = tuple(slice(core[2 * i] - win[2 * i], core[2 * i + 1] - win[2 * i]) for i in range(nd))
            dst = tuple(slice(core[2 * i], core[2 * i + 1]) for i in range(nd))
            full[k][(Ellipsis, *dst)] = v[(Ellipsis, *src)]
        done(1)
    return {k: v[crop] for k, v in full.items()}


def _padded_call(fn: Callable[[torch.Tensor], Outputs], x: torch.Tensor, multiple: int,
                 pad: str = "reflect") -> Outputs:
    h, w = x.shape[-2:]
    return {k: v[..., :h, :w] for k, v in fn(pad_to_multiple(x, multiple, pad)).items()}


def _patched_call(fn: Callable[[torch.Tensor], Outputs], x: torch.Tensor, patch: int, stride: int,
                  pad: str = "zero", batch: int = PATCH_BATCH, on_batch: Callable[[int], None] | None = None
                  ) -> Outputs:
    keys: list = []
    sizes: list[int] = []

    def packed(p: torch.Tensor) -> torch.Tensor:
        out = fn(p)
        keys[:] = list(out)
        sizes[:] = [v.shape[1] for v in out.values()]
        return torch.cat(list(out.values()), dim=1)

    y = predict_by_patches(packed, x, patch=patch, stride=stride, batch_size=batch,
                           pad_mode="constant" if pad == "zero" else pad, on_batch=on_batch)
    return dict(zip(keys, torch.split(y, sizes, dim=1)))


def predict(fn: Callable[[torch.Tensor], Outputs], x: torch.Tensor, dataset, multiple: int,
            protocol: "Protocol | str | None" = None, cost: float | None = None,
            on_call: Callable[[int], None] | None = None) -> Outputs:
    """Apply ``fn`` to a whole image batch under ``protocol`` (default ``whole``: padded to
    ``multiple``, run once, cropped back; tiled above ``max_pixels`` or, given ``cost``, the
    memory budget). The one code path of evaluation, validation and prediction pictures."""
    p = make_protocol(protocol, dataset)
    check_protocol(p, multiple)
    return run_layout(fn, x, plan(p, x.shape[2:], multiple, cost), p, on_call)


def activation_cost(net: nn.Module, in_channels: int, multiple: int, device="cpu", snn: bool = False,
                    mode: str = "step", chunk: int | str = "auto") -> float | None:
    """Live activation elements per input pixel of ``net``: its largest activation (a module's
    output; × ``chunk`` steps in multi-step mode — a chunk chosen by memory, ``"auto"``, keeps its
    largest tensor within the cache budget, so it counts as one step) plus, for an SNN, the state of
    its memory modules (neurons, static-input caches), which does not grow with T. Measured on one
    small probe (None when the probe fails: then images run whole)."""
    from spikingjelly.activation_based.base import MemoryModule

    rule = shape_rule(net) or {}
    nd = spatial_dims(net)
    if nd == 2 and not isinstance(multiple, (tuple, list)):
        side = _ceil_to(max(64, 2 * int(multiple)), max(1, int(multiple)))
        hw = tuple(int(v) for v in rule["shape"]) if rule.get("shape") else (side, side)
    else:  # a volume: a probe of 2 multiples (at least 16) per axis
        hw = tuple(int(v) for v in rule["shape"]) if rule.get("shape") else tuple(
            _ceil_to(max(16, 2 * m), m) for m in _per_axis(multiple, nd))
    largest, state = [in_channels * math.prod(hw)], [0]

    def hook(m, inputs, out):
        n = sum(t.numel() for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor))
        largest[0] = max(largest[0], n)
        if snn and isinstance(m, MemoryModule) and not any(isinstance(c, MemoryModule) for c in m.children()):
            state[0] += n

    handles = [m.register_forward_hook(hook) for m in net.modules() if m is not net]
    try:
        probe = torch.zeros(1, in_channels, *hw, device=device)
        if snn:
            simulate(net, probe, 1, mode="step", post=False)
        else:
            with torch.no_grad():
                net(probe)
    except Exception:  # noqa: BLE001 - no estimate: images run whole (the evaluation reports its own errors)
        return None
    finally:
        for h in handles:
            h.remove()
    steps = int(chunk) if snn and mode == "multi" and chunk != "auto" else 1
    return (largest[0] * steps + state[0]) / math.prod(hw)


def call_shapes(layout: Layout, lead: tuple[int, int], protocol: Protocol) -> set[tuple[int, ...]]:
    """The input shapes the network is called with under ``layout``: ``lead`` (batch, channels) and the
    padded image, each tile's window, or a batch of patch windows."""
    nd = len(layout.padded)
    if layout.kind == "tiled":
        return {(*lead, *(t[2 * i + 1] - t[2 * i] for i in range(nd))) for t in layout.tiles}
    if layout.kind == "patch":
        return {(min(protocol.batch, layout.windows) * lead[0], lead[1], protocol.patch, protocol.patch)}
    return {(*lead, *layout.padded)}


def tileable(net: nn.Module) -> "bool | tuple[int, ...]":
    """True, or the one input size a conversion holds for (only windows of that size may tile it)."""
    rule = shape_rule(net) or {}
    return tuple(int(v) for v in rule["shape"]) if rule.get("shape") else True


def needs_cost(p: Protocol) -> bool:
    return p.name != "patch" and p.max_pixels is None and not (p.name == "tiled" and p.tile)


def protocol_record(p: Protocol, layouts: Sequence[Layout]) -> dict:
    """What the results say of the protocol: ``protocol`` (whole, tiled — some image was cut into
    tiles — or patch), ``tile`` (core side), ``overlap`` (margin), ``patch``, ``stride``,
    ``windows_per_image`` (network inputs per image), ``pad``, ``max_pixels``, ``tiled_images``."""
    tiled = [lay for lay in layouts if lay.kind == "tiled"]
    name = "patch" if p.name == "patch" else ("tiled" if tiled else "whole")
    return {"protocol": name,
            "tile": max(lay.tile for lay in tiled) if tiled else None,
            "overlap": tiled[0].overlap if tiled else None,
            "patch": p.patch, "stride": p.stride,
            "windows_per_image": (sum(lay.windows for lay in layouts) / len(layouts)) if layouts else None,
            "pad": p.pad_mode,
            "max_pixels": layouts[0].max_pixels if layouts and p.name != "patch" else None,
            "tiled_images": len(tiled)}
