"""Evaluation of an ANN and/or a converted SNN on a test split (``sjunet evaluate``).

Protocols (:class:`Protocol`, the same for every dataset and for validation during ``train`` /
``finetune``, which call :func:`evaluate_model` / :func:`evaluate_snn` too):

* ``whole`` (the default): each image is padded on the bottom/right to the network's size multiple
  (reflect by default, or zeros), run once and cropped back. A U-Net is fully convolutional, so
  this is the network's prediction of the image. When an image would exceed the memory budget
  (``max_pixels`` input pixels per call, by default :func:`budget` live activation elements — 2^26
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

The SNN is simulated once up to max(T) and decoded at every requested T (spec §6); its
predictions are compared with the ANN's (pixel agreement) when both are given, the two run on the
same tiles. Results record the protocol (``"protocol"``: name, tile, overlap, patch, stride,
windows per image) and the timings (ANN seconds per image, SNN seconds per image per step).
Progress bars advance per tile / window (ANN) and per simulated step (SNN).
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field, replace
from numbers import Integral
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sjunet.data.patches import patch_grid, predict_by_patches
from sjunet.dims import spatial_dims
from sjunet.distributed import merge_meter, resolve_device, shard
from sjunet.simulation import simulate
from sjunet.snn import shape_rule, size_rule
from sjunet.tasks import Task, task_for

Outputs = dict  # key (None for the ANN, T for the SNN) -> output tensor

PROTOCOLS = ("whole", "tiled", "patch")
#: padding modes of an image up to the size multiple (``zero``: the official patch code's)
PAD_MODES = ("reflect", "zero")
#: automatic memory budget on a CPU: live activation elements of one call (largest activation + SNN
#: state; 2^26 float32 = 256 MiB); on a GPU, a quarter of its free memory when that is more
MAX_ELEMENTS = 2 ** 26
#: default margin of a tile (pixels, rounded up to the size multiple)
TILE_OVERLAP = 32
#: tile core side when ``tiled`` is asked without ``tile`` and without a budget
DEFAULT_TILE = 256
#: windows per call of the network under the patch protocol
PATCH_BATCH = 64


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


# ------------------------------------------------------------------------------ protocol

@dataclass(frozen=True)
class Protocol:
    """How images are fed to the network (see the module docstring).

    ``name``: ``whole`` (tiled only when an image exceeds the budget), ``tiled`` (always tiled) or
    ``patch``. ``tile``: core side of a tile (pixels; default from the budget). ``overlap``: margin
    of a tile (default :data:`TILE_OVERLAP`). ``max_pixels``: input pixels per call above which
    ``whole`` tiles (default: :data:`MAX_ELEMENTS` over the network's activation elements per
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
         tileable: bool = True, elements: int = MAX_ELEMENTS) -> Layout:
    """The :class:`Layout` of an input of spatial ``sizes`` (``H x W``, or ``D x H x W``) under
    ``protocol`` for a network of size ``multiple`` (one for all axes, or one per axis) and ``cost``
    live activation elements per input pixel (:func:`activation_cost`): padded per axis to that
    axis's multiple, whole when a call would hold at most ``elements`` of them (or
    ``protocol.max_pixels`` pixels), else a grid of tiles — cores of balanced sizes, multiples of
    their axis's size multiple, with a margin of ``overlap`` rounded up likewise. Tiles are
    ``(window start, end per axis…, core start, end per axis…)``. Images under a budget get square
    tiles (the budget's side); volumes keep an axis shorter than that side whole
    (:func:`_budget_cores`)."""
    nd = len(sizes)
    if protocol.name == "patch":
        if nd != 2:
            raise ValueError(f"--protocol patch evaluates 2-D images by square windows; a {nd}-D input is "
                             "evaluated --protocol whole or tiled")
        hp, wp, corners = patch_grid(int(sizes[0]), int(sizes[1]), protocol.patch, protocol.stride)
        return Layout("patch", (hp, wp), windows=len(corners), calls=-(-len(corners) // protocol.batch))
    ms = _per_axis(multiple, nd)
    padded = tuple(_ceil_to(max(int(n), 1), m) for n, m in zip(sizes, ms))
    limit = protocol.max_pixels or (max(1, int(elements / cost)) if cost else None)
    whole = Layout("whole", padded, max_pixels=limit)
    forced = protocol.name == "tiled"
    if not tileable:
        if forced:
            raise ValueError("this SNN's conversion holds only for inputs of the size it was converted at: it cannot "
                             "be tiled; use --protocol whole")
        return whole
    if not forced and (limit is None or math.prod(padded) <= limit):
        return whole
    overlap = TILE_OVERLAP if protocol.overlap is None else protocol.overlap
    margins = [_ceil_to(overlap, m) for m in ms]
    if protocol.tile:
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
                    mode: str = "step", chunk: int = 4) -> float | None:
    """Live activation elements per input pixel of ``net``: its largest activation (a module's
    output; × ``chunk`` steps in multi-step mode) plus, for an SNN, the state of its memory modules
    (neurons, static-input caches), which does not grow with T. Measured on one small probe (None
    when the probe fails: then images run whole)."""
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
    steps = int(chunk) if snn and mode == "multi" else 1
    return (largest[0] * steps + state[0]) / math.prod(hw)


def _tileable(net: nn.Module) -> bool:
    rule = shape_rule(net) or {}
    return not rule.get("shape")


def _needs_cost(p: Protocol) -> bool:
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


# ------------------------------------------------------------------------------ running

def ann_fn(model: nn.Module) -> Callable[[torch.Tensor], Outputs]:
    @torch.no_grad()
    def fn(x):
        return {None: model(x)}
    return fn


def snn_fn(snn: nn.Module, T: Sequence[int], mode: str = "step", chunk: int = 4,
           on_checkpoint=None) -> Callable[[torch.Tensor], Outputs]:
    def fn(x):
        return simulate(snn, x, T, mode=mode, chunk=chunk, on_checkpoint=on_checkpoint)
    return fn


def _indices(dataset, limit: int | None) -> tuple[int, list[int]]:
    """The number of images evaluated and this rank's share of them (under torchrun; the metric
    accumulators are merged afterwards, :func:`sjunet.distributed.merge_meter`)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    return n, list(shard(range(n)))


def _items(dataset, limit: int | None):
    """The first ``limit`` items as batches of one (this rank's share under torchrun)."""
    for i in _indices(dataset, limit)[1]:
        x, y = dataset[i]
        yield x.unsqueeze(0), y.unsqueeze(0)


class _Progress:
    """A bar over the units (tiles / windows, or simulated steps) of all images, its total set
    image by image (sizes may differ): it moves from the first call of the network."""

    def __init__(self, images: int, desc: str, unit: str, enabled: bool):
        self.images, self.started, self.done = images, 0, 0
        self.bar = tqdm(total=None, desc=desc, unit=unit, disable=not enabled, leave=False)

    def image(self, units: int) -> None:
        self.started += 1
        self.bar.total = self.done + units * (1 + self.images - self.started)
        self.bar.refresh()

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def check_options(T: Sequence[int] | None = None, chunk: int | None = None, limit: int | None = None) -> None:
    """One clear line for nonsensical evaluation options (before any work)."""
    if T is not None and (not list(T) or min(int(t) for t in T) < 1):
        raise ValueError(f"--T takes positive integers, got {list(T)}")
    if chunk is not None and int(chunk) < 1:
        raise ValueError(f"--chunk must be a positive integer, got {chunk}")
    if limit is not None and int(limit) < 1:
        raise ValueError(f"--limit must be a positive integer (or left out for every image), got {limit}")


def check_compatible(dataset, in_channels: int | None, out_channels: int | None, task: dict | None = None,
                     what: str = "the model") -> None:
    """Refuse, with one line, a model that cannot be evaluated on ``dataset``: another task,
    another number of input channels, or an output that is not one channel per class (segmentation)
    / per image channel (denoising)."""
    kind = dataset.task
    name = getattr(dataset, "name", type(dataset).__name__)
    if task and task.get("kind") and task["kind"] != kind:
        raise ValueError(f"{what} was trained for {task['kind']} but {name} is a {kind} dataset; "
                         "choose a matching dataset (-d) or model")
    if in_channels is not None and in_channels != dataset.in_channels:
        raise ValueError(f"{what} takes {in_channels}-channel images but {name} has {dataset.in_channels}-channel "
                         "images; choose a matching dataset or model")
    want = dataset.num_classes if kind == "segmentation" else dataset.in_channels
    unit = "classes" if kind == "segmentation" else "noise channels"
    if out_channels is not None and out_channels != want:
        raise ValueError(f"{what} outputs {out_channels} channels but {name} needs {want} {unit}; choose a "
                         "matching dataset or model")


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def _evaluate_ann(model: nn.Module, dataset, task: Task, device, limit: int | None, progress: bool, p: Protocol,
                  multiple: int | None) -> tuple[dict, dict, float]:
    """(metrics, protocol record, ANN seconds per image of this rank) — network time only."""
    was_training = model.training
    model.eval()
    seconds = 0.0
    try:
        multiple = multiple or size_rule(model, dataset.in_channels)
        check_protocol(p, multiple)
        cost = activation_cost(model, dataset.in_channels, multiple, device) if _needs_cost(p) else None
        meter = task.new_meter()
        _, indices = _indices(dataset, limit)
        bar = _Progress(len(indices), "evaluate ANN", "window", progress)
        layouts = []
        try:
            for i in indices:
                x, y = dataset[i]
                x, y = x.unsqueeze(0).to(device), y.unsqueeze(0)
                lay = plan(p, x.shape[2:], multiple, cost, elements=budget(device))
                layouts.append(lay)
                bar.image(lay.windows)
                t0 = time.perf_counter()
                out = run_layout(ann_fn(model), x, lay, p, bar.update)[None]
                _sync(device)
                seconds += time.perf_counter() - t0
                meter.update(out.cpu(), task.meter_target(x.cpu(), y.cpu()))
        finally:
            bar.close()
    finally:
        model.train(was_training)
    merge_meter(meter)
    return meter.result(), protocol_record(p, layouts), seconds / max(len(indices), 1)


def evaluate_model(model: nn.Module, dataset, task: Task | None = None, device: str = "cpu",
                   limit: int | None = None, progress: bool = True, protocol: "Protocol | str | None" = None,
                   multiple: int | None = None) -> dict:
    """Metrics of an ANN on ``dataset`` under ``protocol`` (default: whole images), with
    ``"protocol"`` (:func:`protocol_record`) among them. Validation during ``train`` uses it."""
    task = task or task_for(dataset)
    check_options(limit=limit)
    p = make_protocol(protocol, dataset)
    metrics, record, _ = _evaluate_ann(model, dataset, task, resolve_device(device), limit, progress, p, multiple)
    return {**metrics, "protocol": record}


def evaluate_snn(snn: nn.Module, dataset, T: Sequence[int], task: Task | None = None, reference: nn.Module | None = None,
                 mode: str = "step", chunk: int = 4, limit: int | None = None, multiple: int | None = None,
                 progress: bool = True, device: str = "cpu", on_checkpoint=None,
                 protocol: "Protocol | str | None" = None) -> dict:
    """Metrics of an SNN at every T in ``T`` (one simulation up to max T per image), with pixel
    agreement against ``reference`` (the ANN, run on the same tiles / windows) when given, the
    protocol and timings. ``on_checkpoint(t, x)`` is called at every requested step of every
    simulated input (:func:`sjunet.simulation.simulate`)."""
    task = task or task_for(dataset)
    check_options(T, chunk, limit)
    p = make_protocol(protocol, dataset)
    device = resolve_device(device)
    multiple = multiple or size_rule(snn)
    check_protocol(p, multiple)
    T = sorted(set(int(t) for t in T))
    meters = {t: task.new_meter() for t in T}
    ann_meter = task.new_meter() if reference is not None else None
    t_snn = t_ann = 0.0
    n, indices = _indices(dataset, limit)
    snn.to(device)
    if reference is not None:
        reference.to(device).eval()
    cost = activation_cost(snn, dataset.in_channels, multiple, device, snn=True, mode=mode,
                           chunk=chunk) if _needs_cost(p) else None
    tileable = _tileable(snn)
    bar = _Progress(len(indices), f"evaluate SNN T<={max(T)}", "step", progress)
    steps = (lambda m, inputs, out: bar.update(int(inputs[0].shape[0]) if mode == "multi" else 1))
    hook = snn.register_forward_hook(steps) if progress else None
    layouts = []
    try:
        for i in indices:
            x, y = dataset[i]
            x, y = x.unsqueeze(0).to(device), y.unsqueeze(0)
            lay = plan(p, x.shape[2:], multiple, cost, tileable, budget(device))
            layouts.append(lay)
            bar.image(lay.calls * max(T))
            ref = None
            if reference is not None:
                t0 = time.perf_counter()
                ref = run_layout(ann_fn(reference), x, lay, p)[None]
                _sync(device)
                t_ann += time.perf_counter() - t0
                ref = ref.cpu()
                ann_meter.update(ref, task.meter_target(x.cpu(), y))
            t0 = time.perf_counter()
            outs = run_layout(snn_fn(snn, T, mode, chunk, on_checkpoint), x, lay, p)
            _sync(device)
            t_snn += time.perf_counter() - t0
            for t in T:
                meters[t].update(outs[t].cpu(), task.meter_target(x.cpu(), y), reference=ref)
    finally:
        if hook is not None:
            hook.remove()
        bar.close()
    for m in [*meters.values(), *([ann_meter] if ann_meter is not None else [])]:
        merge_meter(m)
    local = max(len(indices), 1)
    result = {"T": {str(t): meters[t].result() for t in T},
              "protocol": protocol_record(p, layouts),
              "timing": {"images": n, "snn_seconds_per_image": t_snn / local, "max_T": max(T),
                         "snn_seconds_per_step": t_snn / local / max(T)}}
    if ann_meter is not None:
        result["ann"] = ann_meter.result()
        result["timing"]["ann_seconds_per_image"] = t_ann / local
        result["timing"]["step_cost_vs_ann"] = result["timing"]["snn_seconds_per_step"] / max(t_ann / local, 1e-12)
    return result


def evaluate(
    dataset,
    model: nn.Module | None = None,
    snn: nn.Module | None = None,
    T: Sequence[int] = (10, 20, 50, 100),
    mode: str = "step",
    chunk: int = 4,
    limit: int | None = None,
    progress: bool = True,
    device: str = "cpu",
    protocol: "Protocol | str | None" = None,
) -> dict:
    """``sjunet evaluate`` on objects: metrics of an ANN and/or an SNN on a dataset object under
    ``protocol`` (default: whole images), the SNN at every T with pixel agreement against the ANN
    when both are given; ``"protocol"`` and ``"timing"`` (per image, and per image per step)."""
    if model is None and snn is None:
        raise ValueError("give an ANN (model), a converted SNN (snn) or both")
    device = resolve_device(device)
    task = task_for(dataset)
    check_options(limit=limit)
    p = make_protocol(protocol, dataset)
    result: dict = {"dataset": {"name": getattr(dataset, "name", None), **(dataset.describe()
                                                                            if hasattr(dataset, "describe") else {})}}
    if snn is not None:
        result.update(evaluate_snn(snn, dataset, T, task, reference=model, mode=mode, chunk=chunk, limit=limit,
                                   progress=progress, device=device, protocol=p))
    else:
        metrics, record, seconds = _evaluate_ann(model.to(device), dataset, task, device, limit, progress, p, None)
        result.update({"ann": metrics, "protocol": record,
                       "timing": {"images": _indices(dataset, limit)[0], "ann_seconds_per_image": seconds}})
    return result

