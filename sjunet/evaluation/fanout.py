"""Structural fan-out of spike sources through a converted graph (spec §8, §11).

The fan-out of a spike of neuron layer N at channel c and position p = (h, w) is the number of
synapses it reaches: the (output channel, output position) pairs (o, q) of a *synaptic* layer
whose (composed) weight uses input (c, p). It is structural — every such pair counts, whatever
the weight value — and depends only on p (every output channel of a dense convolution reads
every input channel), so each neuron layer gets one map F_N[h, w].

The spikes of N travel along every path N → (linear stage | concatenation | identity)* → L
that ends at a **terminal** synaptic layer L: one that feeds a neuron or the network output.
Linear stages — an AvgPool2d, or a Conv2d/ConvTranspose2d that feeds neither a neuron nor the
output (spec §5: the default up-convolution) — have no neurons; their output is consumed by the
next synaptic layer, so on a chip their synapses are *composed* with that layer's: a spike
entering a linear stage costs one AC per synapse of the composed map A_L ∘ … ∘ A_1, i.e. per
output pair (o, q) of L that it can reach through any intermediate channel and position. A
concatenation only routes the spike to its own channel range of L's input; an identity passes
it on. Different paths reach different synapses (different terminal layers, or different input
channels of the same terminal layer, e.g. ``cat([a, a])``), so fan-outs of paths **add**;
within one path the reachable output positions are a **union** (a position reached through
several intermediates is one synapse of the composed map, not several).

Every stage here (Conv2d with any stride/padding/dilation/padding mode, ConvTranspose2d with
any stride/padding/dilation/output padding, AvgPool2d with any kernel/stride/padding/ceil mode)
is separable in its *reachability*: input (i_h, i_w) reaches output (o_h, o_w) iff i_h reaches
o_h along the rows and i_w reaches o_w along the columns. Composition keeps that:
∃(m_h, m_w): R1h[i_h, m_h] R1w[i_w, m_w] R2h[m_h, o_h] R2w[m_w, o_w] factorises into
(∃m_h: R1h R2h)·(∃m_w: R1w R2w). So each path is two boolean matrices (rows, columns), composed
by a matrix product clamped to 1 (reachability, not path counts), and the union is counted as

    F_path[h, w] = C_out(L) · |{o_h : Rh[h, o_h]}| · |{o_w : Rw[w, o_w]}|,   F_N = Σ_paths F_path.

One dimension of a convolution with kernel k, stride s, left padding P, dilation d reaches
output o from input i iff i = π(o·s − P + d·j) for some j in [0, k), where π maps a padded
index onto the input (zero padding: dropped when outside; reflect/replicate/circular: the
index that padding copies); of a transposed convolution, iff o = i·s − P + d·j and o lies in the
output. This is what a ones map propagated through ones-kernel convolutions with clamping to 1
after every stage computes, position by position; the tests check the two agree.

Examples (interior / edge / corner positions): a 3x3, padding-1 conv has fan-out 9/6/4 · C_out;
AvgPool2d(2) then a 3x3 conv: 9·C_out in the interior (the pooled position's 3x3 window); a 2x2
stride-2 up-convolution then (through a concatenation) a 3x3 conv: 16·C_out in the interior
(the 2x2 block's 4x4 neighbourhood), 12·C_out at an edge, 9·C_out in a corner.

Sources and sinks (spec §11). The event sources are the neuron layers and the spiking max-pools
(:class:`~sjunet.layers.stages.SpikingMaxPool2d` emits its own graded events). A path from a source ends
at a *sink*: a neuron layer, a spiking max-pool, or the network output. Along the way:

* a synaptic layer (Conv2d / ConvTranspose2d) mixes channels: the path now reaches C_out/groups
  channels per input channel, and its (composed) synapses are counted at the sink;
* per-channel stages keep channels and compose positions: AvgPool2d, adaptive / global average
  pooling (:class:`~sjunet.layers.stages.AdaptiveAvgPool`, its adaptive windows), interpolation
  (:class:`~sjunet.layers.stages.Resample`, nearest or bilinear), padding (:class:`~sjunet.layers.stages.Pad`,
  any mode), a gain or affine stage (identity reach), a norm's centring (identity reach for its
  x term; its mean is a dense per-step cost, :func:`center_acs`), a concatenation (routing), a
  residual add;
* a path that reaches a sink through no synaptic layer is an identity edge (a shortcut into a
  residual join, with or without its gain): one synapse per spike (one accumulate into the
  membrane), per position reached;
* a spike entering a max-pool reaches no synapse (the pool compares counts); the pool's own
  events fan out from it.
"""
from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import fx, nn

from sjunet.graph import is_reference_use, kind_of, tensor_shapes
from sjunet.layers import dims
from sjunet.layers.plumbing import AddConstant, Scale
from sjunet.layers.stages import AdaptiveAvgPool, Center, ChannelAffine, Pad, Resample, SpikingMaxPool2d


class EnergyError(ValueError):
    """The SNN graph holds something the counter does not know how to count."""


class _Unseparable(EnergyError):
    """A path leaves the spatial layout (tokens, Linear, reshaping): counted per element instead
    (:mod:`sjunet.evaluation.fanout_generic`)."""


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _per_axis(v, nd: int) -> tuple[int, ...]:
    """A layer argument (an int or one per axis) as ``nd`` ints, one per spatial axis."""
    return tuple(int(u) for u in v) if isinstance(v, (tuple, list)) else (int(v),) * nd


# ----------------------------------------------------------------------- reachability (1-D maps)


def _padded_source(idx: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Input index that padded index ``idx`` (in input coordinates) reads; −1 for zero padding."""
    inside = (idx >= 0) & (idx < n)
    if mode == "zeros":
        return torch.where(inside, idx, torch.full_like(idx, -1))
    if mode == "reflect":
        r = idx.abs()
        return torch.where(r >= n, 2 * (n - 1) - r, r)
    if mode == "replicate":
        return idx.clamp(0, n - 1)
    if mode == "circular":
        return idx.remainder(n)
    raise EnergyError(f"unknown padding mode {mode!r}")


def _window_reach(n_in: int, n_out: int, k: int, s: int, pad_left: int, d: int, mode: str) -> torch.Tensor:
    """Bool [n_in, n_out]: input i is in the window of output o (conv / pool along one dim)."""
    o = torch.arange(n_out).view(-1, 1)
    j = torch.arange(k).view(1, -1)
    src = _padded_source(o * s - pad_left + d * j, n_in, mode)  # [n_out, k]
    r = torch.zeros(n_in + 1, n_out, dtype=torch.bool)  # row n_in collects "no input" (zero padding)
    r[src.where(src >= 0, torch.full_like(src, n_in)), o.expand_as(src)] = True
    return r[:n_in]


def _transposed_reach(n_in: int, n_out: int, k: int, s: int, pad: int, d: int) -> torch.Tensor:
    """Bool [n_in, n_out]: input i scatters into output o (transposed conv along one dim)."""
    i = torch.arange(n_in).view(-1, 1)
    j = torch.arange(k).view(1, -1)
    o = i * s - pad + d * j  # [n_in, k]
    ok = (o >= 0) & (o < n_out)
    r = torch.zeros(n_in, n_out + 1, dtype=torch.bool)
    r[i.expand_as(o), o.where(ok, torch.full_like(o, n_out))] = True
    return r[:, :n_out]


def _probe_reach(fn, n_in: int, dim: int, nd: int = 2) -> torch.Tensor:
    """Bool [n_in, n_out] of a separable per-channel stage along spatial axis ``dim`` (images:
    0 rows, 1 columns; ``nd`` spatial axes), by running ``fn`` on one-hot inputs (one channel per
    input index)."""
    eye = torch.eye(n_in, dtype=torch.float64)
    shape = [1] * nd
    shape[dim] = n_in
    x = eye.view(1, n_in, *shape)
    with torch.no_grad():
        y = fn(x, dim)
    at = [0] * nd
    at[dim] = slice(None)
    return y[(0, slice(None), *at)] != 0


def _only(dim: int, v, nd: int, rest):
    """``v`` on axis ``dim``, ``rest`` on the other of ``nd`` axes."""
    return tuple(v if i == dim else rest for i in range(nd))


def _resample_fn(m: Resample, out_hw: tuple[int, ...], by_reference: bool):
    nd = len(out_hw)

    def fn(x, dim):
        if m.scale_factor is not None and m.size is None and not by_reference:
            s = _per_axis_float(m.scale_factor, nd)
            return F.interpolate(x, scale_factor=_only(dim, s[dim], nd, 1.0), mode=m.mode,
                                 align_corners=m.align_corners)
        return F.interpolate(x, size=_only(dim, out_hw[dim], nd, 1), mode=m.mode, align_corners=m.align_corners)
    return fn


def _per_axis_float(v, nd: int) -> tuple[float, ...]:
    return tuple(float(u) for u in v) if isinstance(v, (tuple, list)) else (float(v),) * nd


def _pad_fn(m: Pad, nd: int = 2):
    def fn(x, dim):
        at = 2 * (nd - 1 - dim)  # F.pad lists the last axis first
        pad = [0] * (2 * nd)
        if at + 1 < len(m.pad):
            pad[at], pad[at + 1] = m.pad[at], m.pad[at + 1]
        return F.pad(x, tuple(pad), mode=m.mode)
    return fn


def stage_reach(m: nn.Module, in_hw: tuple[int, ...], out_hw: tuple[int, ...],
                by_reference: bool = False) -> tuple[torch.Tensor, ...]:
    """Reachability matrices, one per spatial axis (images: rows and columns, bool ``[H_in, H_out]``,
    ``[W_in, W_out]``; volumes: D, H, W), of one Conv / ConvTranspose / AvgPool / max-pool (any
    dimensionality) / interpolation / padding / per-channel stage; see the module docstring.
    ``by_reference``: an interpolation to another tensor's size."""
    nd = len(in_hw)
    axes = range(nd)
    if isinstance(m, (ChannelAffine, Center, Scale)):  # Center: its x term (the mean is counted by center_acs)
        return tuple(torch.eye(int(in_hw[i]), dtype=torch.bool) for i in axes)
    if isinstance(m, (Resample, Pad, AdaptiveAvgPool)):
        if isinstance(m, Resample):
            fn = _resample_fn(m, tuple(out_hw), by_reference)
        elif isinstance(m, Pad):
            fn = _pad_fn(m, nd)
        else:  # the adaptive windows, as AvgPool's: every input in its window

            def fn(x, dim):
                return dims.functional("adaptive_avg_pool", nd)(x, _only(dim, int(out_hw[dim]), nd, 1))
        return tuple(_probe_reach(fn, int(in_hw[i]), i, nd) for i in axes)
    mats = []
    for dim in axes:
        n_in, n_out = int(in_hw[dim]), int(out_hw[dim])
        if isinstance(m, (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd, SpikingMaxPool2d)):
            k = _per_axis(m.kernel_size, nd)[dim]
            s = _per_axis(m.stride if m.stride is not None else m.kernel_size, nd)[dim]
            d = _per_axis(getattr(m, "dilation", 1), nd)[dim]
            mats.append(_window_reach(n_in, n_out, k, s, _per_axis(m.padding, nd)[dim], d, "zeros"))
        elif isinstance(m, nn.modules.conv._ConvTransposeNd):
            if m.padding_mode != "zeros":
                raise EnergyError(f"{type(m).__name__} with padding_mode={m.padding_mode!r} is not supported")
            mats.append(_transposed_reach(n_in, n_out, m.kernel_size[dim], m.stride[dim], m.padding[dim],
                                          m.dilation[dim]))
        elif isinstance(m, nn.modules.conv._ConvNd):
            k, s, d = m.kernel_size[dim], m.stride[dim], m.dilation[dim]
            if isinstance(m.padding, str):
                pad = 0 if m.padding == "valid" else d * (k - 1) // 2  # 'same': extra padding on the right
            else:
                pad = _per_axis(m.padding, nd)[dim]
            mats.append(_window_reach(n_in, n_out, k, s, pad, d, m.padding_mode))
        else:
            raise EnergyError(f"no reachability rule for {type(m).__name__}")
    return tuple(mats)


def _outer(counts: list[torch.Tensor]) -> torch.Tensor:
    """The product map of per-axis counts (images: ``torch.outer`` of rows and columns)."""
    if len(counts) == 2:
        return torch.outer(counts[0], counts[1])
    f = counts[0]
    for c in counts[1:]:
        f = f.unsqueeze(-1) * c
    return f


def _compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Boolean matrix product: reachability through a then b (clamped, not path counts)."""
    return (a.to(torch.float64) @ b.to(torch.float64)) > 0


# ------------------------------------------------------------------------------- the graph


def synaptic_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module:
    m = gm.get_submodule(node.target)
    return m.layer if hasattr(m, "layer") and kind_of(gm, node) == "analog" else m


def is_source(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Neuron layers and spiking max-pools emit events."""
    return kind_of(gm, node) == "neuron" or (kind_of(gm, node) == "maxpool" and node.op == "call_module"
                                             and isinstance(gm.get_submodule(node.target), SpikingMaxPool2d))


@torch.no_grad()
def node_shapes(snn: fx.GraphModule, input_shape: Iterable[int]) -> dict[str, tuple[int, ...]]:
    """``(C, H, W)`` of every tensor node of ``snn`` for one input of shape ``input_shape``
    (single-step mode on the ``meta`` device; ``snn`` itself is not run)."""
    m = copy.deepcopy(snn)
    functional.reset_net(m)
    functional.set_step_mode(m, "s")
    return tensor_shapes(m, input_shape)


@dataclass
class FanOut:
    """Fan-out of one source layer: ``map[h, w]`` synapses per event at (h, w), any channel, and
    the layers its events reach (terminal synaptic layer, or the sink of an identity edge) with
    that path's mean fan-out. ``per_element``: the map holds one count per element of the source's
    whole output for a batch of one (``channels`` 1): a source whose paths leave the spatial layout
    (:mod:`sjunet.evaluation.fanout_generic`)."""

    map: torch.Tensor
    channels: int
    targets: dict[str, float] = field(default_factory=dict)
    per_element: bool = False

    @property
    def mean(self) -> float:
        return float(self.map.mean())

    def collapse(self, counts: torch.Tensor) -> torch.Tensor:
        """``counts`` (a source's per-element counts or flows for a batch) summed onto the map's shape:
        over the batch and channels, or (per element) over the batch — wherever it sits, or merged into
        a dimension (windows of a Swin block: outermost, as their reshape puts it). Differentiable."""
        if not self.per_element:
            return counts.sum(dim=(0, 1))
        m = self.map
        if counts.dim() == m.dim() and all(a == b or b == 1 for a, b in zip(counts.shape, m.shape)):
            dims = tuple(i for i, (a, b) in enumerate(zip(counts.shape, m.shape)) if a != b)
            per = counts.sum(dim=dims, keepdim=True) if dims else counts
        else:
            per = counts.reshape(-1, *m.shape).sum(0)
        return per.reshape(m.shape)

    def weigh(self, counts: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``(counts collapsed onto the map's shape, Σ counts × map)`` (float64, on the CPU)."""
        per = self.collapse(counts.to("cpu", torch.float64))
        return per, float((per * self.map).sum())


def fanout_maps(snn: fx.GraphModule, input_shape: Iterable[int],
                shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, FanOut]:
    """Fan-out map of every source (neuron layer, spiking max-pool) for an input of shape
    ``(C, H, W)``, keyed by module path (module docstring); a source whose paths leave the spatial
    layout is counted per element (:func:`sjunet.evaluation.fanout_generic.element_fanout`)."""
    shapes = shapes or node_shapes(snn, input_shape)
    nd = dims.spatial_dims(snn)
    out: dict[str, FanOut] = {}
    full = None
    for node in snn.graph.nodes:
        if not is_source(snn, node):
            continue
        c, *sizes = shapes[node.name]
        try:
            if len(sizes) != nd:
                raise _Unseparable(node.name)
            fo = FanOut(torch.zeros(*sizes, dtype=torch.float64), c)
            _walk(snn, node, [torch.eye(n, dtype=torch.bool) for n in sizes], None, None, shapes, fo, node.target)
        except _Unseparable:
            from sjunet.evaluation.fanout_generic import element_fanout, full_shapes

            full = full if full is not None else full_shapes(snn, input_shape)
            counts, terminals = element_fanout(snn, node, full, lambda u, v: generic_kind(snn, u, v), apply_stage)
            fo = FanOut(counts, 1, {t: float(counts.mean()) for t in terminals}, per_element=True)
        out[node.target] = fo
    return out


def generic_kind(gm: fx.GraphModule, u: fx.Node, v: fx.Node) -> str:
    """What node ``u`` is to a spike arriving from ``v`` when counting per element (module
    docstring of :mod:`sjunet.evaluation.fanout_generic`)."""
    if is_reference_use(gm, u, v):
        return "skip"
    k = kind_of(gm, u)
    if is_source(gm, u) and k == "maxpool":
        return "compare"
    if k in ("neuron", "output") or is_source(gm, u):
        return "sink"
    if k in ("synaptic", "analog"):
        return "synaptic"
    if k == "shape":
        return "skip"
    return "stage"


def apply_stage(u: fx.Node, inputs: list[torch.Tensor], gm: fx.GraphModule | None = None) -> torch.Tensor:
    """Stage ``u`` on float64 stand-ins of its inputs, for routing counts backwards: gains, constant
    additions and a centring's x term pass counts through unchanged (a weight scales no count)."""
    if u.op == "call_function":
        if u.target is operator.add:
            return inputs[0] + inputs[1]
        return u.target(*inputs)
    m = u.graph.owning_module.get_submodule(u.target)
    if isinstance(m, (ChannelAffine, Center, Scale, AddConstant)):
        return inputs[0]
    if hasattr(m, "flow"):  # sjunet's stages: the stage itself, one step
        return m.flow(*inputs, T=1)
    mode = getattr(m, "step_mode", None)
    if mode is not None:
        m.step_mode = "s"
    try:
        return m(*inputs)
    finally:
        if mode is not None:
            m.step_mode = mode


def _walk(gm, node, reach: list, channels: int | None, layer: str | None, shapes, fo: FanOut, origin: str) -> None:
    """Follow ``node``'s users; ``reach``: per spatial axis, the reach from the source so far
    (images: rows, columns); ``channels``: output
    channels reached per input channel (None: no synaptic layer crossed yet); ``layer``: the last
    synaptic layer crossed."""
    for u in node.users:
        if is_reference_use(gm, u, node):
            continue
        k = kind_of(gm, u)
        if k in ("neuron", "output") or is_source(gm, u):
            if is_source(gm, u) and k == "maxpool" and channels is None:
                continue  # a spike entering a max-pool is compared, not multiplied
            f = (channels or 1) * _outer([r.sum(1).to(torch.float64) for r in reach])
            fo.map += f
            key = layer or (u.target if u.op == "call_module" else u.name)
            fo.targets[key] = fo.targets.get(key, 0.0) + float(f.mean())
        elif k in ("cat", "add", "shape"):
            if k != "shape":
                _walk(gm, u, reach, channels, layer, shapes, fo, origin)
        elif k in ("plumbing", "constant") or (k == "synaptic" and isinstance(gm.get_submodule(u.target), nn.Linear)):
            raise _Unseparable(u.name)
        elif k in ("affine", "center", "pool", "resample", "pad", "maxpool", "synaptic", "scale"):
            m = gm.get_submodule(u.target)
            stage = stage_reach(m, shapes[node.name][1:], shapes[u.name][1:], by_reference=len(u.args) > 1)
            composed = [_compose(r, s) for r, s in zip(reach, stage)]
            if k == "synaptic":
                _walk(gm, u, composed, m.out_channels // m.groups, u.target, shapes, fo, origin)
            else:
                _walk(gm, u, composed, channels, layer, shapes, fo, origin)
        else:
            raise EnergyError(f"cannot count synaptic operations through node {u.name!r} ({u.op} {u.target}) "
                              f"fed by {origin!r}")


def time_varying(snn: fx.GraphModule) -> set[fx.Node]:
    """The nodes downstream of a source: their values change from step to step."""
    out: set[fx.Node] = set()
    for n in snn.graph.nodes:
        if is_source(snn, n) or any(a in out for a in n.all_input_nodes):
            out.add(n)
    return out


def analog_layers(snn: fx.GraphModule) -> list[fx.Node]:
    """Synaptic layers reached from the input without passing a source and fed by nothing that
    passed one (the analog part under static coding: computed once per image)."""
    varying = time_varying(snn)
    out, seen = [], set()
    stack = [n for n in snn.graph.nodes if n.op == "placeholder"]
    while stack:
        node = stack.pop()
        for u in node.users:
            if u.name in seen or is_reference_use(snn, u, node):
                continue
            seen.add(u.name)
            k = kind_of(snn, u)
            if k in ("neuron", "output") or is_source(snn, u):
                continue
            if k in ("analog", "synaptic") and u not in varying:
                out.append(u)
            stack.append(u)
    return out


def center_acs(snn: fx.GraphModule, shapes: dict[str, tuple[int, ...]]) -> int:
    """Accumulates per image and time step of the norms' centring stages (:class:`~sjunet.layers.stages.
    Center`). A centring is not a synapse a spike reaches: it reduces its input currents to one mean
    per group (one accumulate per element) and subtracts it from every element (one more), whatever
    spiked — 2·C·H·W per step, dense, like the bias current it resembles. Its x term passes spikes
    on as an identity (:func:`stage_reach`), so composing the mean into the next layer's synapses
    (which would make every position reach every other) is not how it is counted."""
    total = 0
    for n in snn.graph.nodes:
        if n.op == "call_module" and isinstance(snn.get_submodule(n.target), Center):
            total += 2 * math.prod(int(v) for v in shapes[n.name])
    return total
