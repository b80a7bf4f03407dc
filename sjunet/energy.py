"""Spike, synaptic-operation and MAC counting; energy estimates (paper §4.4.3, spec §8).

Per image, at T time steps, :func:`count_energy` reports

* **spikes** per neuron layer — the sum of :class:`~sjunet.neurons.MultiThresholdNode`'s
  ``spike_count`` memory, i.e. Σ_t Σ_i s_i(t) over every neuron of the layer: a multi-threshold
  (MT) step whose output is 0.75 = 0.5 + 0.25 is **two** spikes (one per threshold that fired);
  an IF spike is one. The **firing rate** is spikes per neuron per step, so it can reach N (the
  ladder length, 4 by default) for MT neurons, 1 for IF;
* **synaptic operations** (SOPs), counted as accumulates (AC): every spike costs one AC per
  synapse it reaches (its *fan-out*). A threshold spike of weight θ_i = 2^k·θ_N is still ONE AC
  per synapse: the scaling by its threshold is a shift of the weight, not a multiply. The
  spikes entering the (non-spiking) output convolution count too;
* **MACs of the analog first layer**. Under static coding the image is the first layer's input
  current at every step, and :class:`~sjunet.recipe.StaticInputSynapse` computes it **once per
  image**: C_in·k_h·k_w·C_out·H_out·W_out MACs (with padding positions, as any dense count).
  ``first_layer_macs_every_step`` (= T times that) is the figure of an implementation that
  recomputes it every step; the energies use the once-per-image figure;
* **the ANN's MACs** for the same input size: every Conv2d (C_in/groups·k²·C_out·H_out·W_out) and
  ConvTranspose2d (C_in·k²·C_out/groups·H_in·W_in), counted with SpikingJelly's
  ``op_counter.MACCounter`` under ``DispatchCounterMode``. Its stock convolution rule counts 0
  when a convolution's input happens to be all 0/1 (a dead ReLU layer, a binary image), so it is
  replaced by the same formula without that value test; BatchNorm is ignored (it is folded into
  the convolution before conversion). :func:`conv_macs` is the closed form, and a test checks
  that both agree.

Energy (Horowitz 2014, 45 nm, fp32: E_MAC = 4.6 pJ, E_AC = 0.9 pJ), in two conventions:

* ``paper`` — the paper's Table 5: ``first_layer_macs·E_MAC + spikes·E_AC``: one AC per
  *spike*, whatever its fan-out (its 6.98e-4 J is this);
* ``sop`` — ``first_layer_macs·E_MAC + SOPs·E_AC``: one AC per spike per synapse reached;
* ``ann`` — ``ann_macs·E_MAC``; ``ratios`` gives SNN / ANN for both conventions.

Not counted in either convention: the bias current b̃ added to every neuron at every step
(T·neurons ACs), the neuron updates themselves, and memory traffic (the paper counts none).

Fan-out (exact, padding-aware, structural)
-------------------------------------------
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

Why not SpikingJelly's ``SynOpCounter``
---------------------------------------
``op_counter.SynOpCounter`` counts a synaptic operation only where a convolution's input is
*binary* (bool, or every value 0 or 1); otherwise ``MACCounter`` counts the convolution as dense
MACs. In this SNN that is almost never the case: MT neurons emit graded values
(0, 0.25, …, 3.75), AvgPool turns spikes into fractions, and a linear up-convolution's output is
real-valued. Measured here (``SkewedSkipNet`` of the tests — conv 1→3, AvgPool, conv 3→5, linear
2x2/s2 up-conv, cat, conv 8→4, 1x1 head — 99.9 % calibration on 2 random 16x16 images,
connection-wise, one 16x16 image, T = 4, multi-step):

* MT neurons: **0** SynOps; 370,176 MACs = 6,912 (first layer, once) + 4 × 90,816 — every
  other convolution is a dense MAC at every step, i.e. T times the ANN's MACs;
* IF neurons: 2,684 SynOps, only for the up-conv (2,340) and the head (344), whose inputs are
  binary; the conv after AvgPool and the conv after the concatenation still come out as
  4 × (8,640 + 73,728) dense MACs (336,384 MACs in all);

while this module counts, on the same input, 2,235 spikes and 63,627 SOPs (MT), 433 spikes and
16,568 SOPs (IF) — spike-driven figures with AvgPool and the linear up-conv composed into the
layer they feed. Where SynOpCounter does see binary input the counts meet: the IF head's 344
SOPs are exactly its 344. (Its up-conv figure, 2,340 = 117 spikes × 5 × 2², is the up-conv's
own synapses; composed with the 3x3 conv after the concatenation it is 6,604 here.) The test
``test_synop_counter_sees_no_mt_spikes`` re-runs the MT measurement.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from math import prod
from pathlib import Path
from typing import Any, Iterable

import torch
from spikingjelly.activation_based import functional
from torch import fx, nn

from sjunet.graph import IDENTITY_TYPES, cat_dim, kind_of
from sjunet.neurons import MultiThresholdNode
from sjunet.recipe import StaticInputSynapse
from sjunet.simulate import run_steps

#: Horowitz (ISSCC 2014), 45 nm, 32-bit float: multiply-accumulate and accumulate energies (J)
E_MAC = 4.6e-12
E_AC = 0.9e-12

CONVENTIONS = {
    "paper": "first-layer MACs x E_MAC + spike count x E_AC (the paper's Table 5)",
    "sop": "first-layer MACs x E_MAC + synaptic operations (spikes x fan-out) x E_AC",
    "ann": "ANN MACs x E_MAC",
}


class EnergyError(ValueError):
    """The SNN graph holds something the counter does not know how to count."""


# ----------------------------------------------------------------------------------- MACs


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def conv_macs(m: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Dense MACs of one Conv2d / ConvTranspose2d for one image.

    Conv2d: C_in/groups · k_h·k_w · C_out · H_out·W_out. ConvTranspose2d: every input element
    times every kernel element of its group's outputs, C_in · k_h·k_w · C_out/groups · H_in·W_in.
    ``in_shape`` / ``out_shape`` are ``(…, H, W)``. (Bias additions are not MACs.)
    """
    kh, kw = _pair(m.kernel_size)
    if isinstance(m, nn.ConvTranspose2d):
        return m.in_channels * kh * kw * (m.out_channels // m.groups) * int(in_shape[-2]) * int(in_shape[-1])
    if isinstance(m, nn.Conv2d):
        return (m.in_channels // m.groups) * kh * kw * m.out_channels * int(out_shape[-2]) * int(out_shape[-1])
    raise TypeError(f"not a synaptic layer: {type(m).__name__}")


def _dense_conv_rule(args, kwargs, out) -> int:
    """``aten.convolution`` MACs from shapes only (SpikingJelly's rule without its 0/1 test)."""
    x, w, transposed = args[0], args[1], args[6]
    spatial = x.shape[2:] if transposed else out.shape[2:]
    return prod(w.shape) * prod(spatial) * x.shape[0]


@torch.no_grad()
def ann_macs(ann: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """MACs of ``ann`` for one input of shape ``(C, H, W)``, by SpikingJelly's ``MACCounter``
    under ``DispatchCounterMode`` (shape-only convolution rule, BatchNorm ignored).

    Runs on a copy of the model on the ``meta`` device (shapes only, no arithmetic); a model
    that cannot run there is run on a constant image instead (in eval mode, restored after).
    """
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter

    def count(model: nn.Module, device, dtype) -> int:
        counter = MACCounter(extra_rules={torch.ops.aten.convolution.default: _dense_conv_rule},
                             extra_ignore_modules=[nn.BatchNorm2d])
        with DispatchCounterMode([counter]):
            model(torch.full((1, *input_shape), 0.5, dtype=dtype, device=device))
        return int(counter.get_total())

    p = next(iter(ann.parameters()), None)
    dtype = p.dtype if p is not None else torch.float32
    try:
        return count(copy.deepcopy(ann).to("meta").eval(), "meta", dtype)
    except (NotImplementedError, RuntimeError):
        pass
    was_training = ann.training
    ann.eval()
    try:
        return count(ann, p.device if p is not None else "cpu", dtype)
    finally:
        ann.train(was_training)


# ------------------------------------------------------------------------- graph structure


def _classify(gm: fx.GraphModule, node: fx.Node) -> str:
    """input | neuron | analog | synaptic | pool | cat | identity | output | other."""
    k = kind_of(gm, node, neuron_types=(MultiThresholdNode,))
    if k == "other" and node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, StaticInputSynapse):
            return "analog"
        if getattr(m, "op_name", None) == "cat":  # SpikingJelly's _StepModeTensorOp(cat)
            dim = getattr(m, "op_kwargs", {}).get("dim", 0)
            return "cat" if dim in (1, -3) else "other"
        if isinstance(m, IDENTITY_TYPES):
            return "identity"
    if k == "cat" and cat_dim(node) not in (1, -3):
        return "other"
    return k


def _synaptic_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module:
    m = gm.get_submodule(node.target)
    return m.layer if isinstance(m, StaticInputSynapse) else m


def _is_terminal(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A synaptic layer that feeds a neuron or the network output (not a linear stage)."""
    return any(_classify(gm, u) in ("neuron", "output") for u in node.users)


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[str, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n.name] = tuple(out.shape[2:])  # drop [T, B]
        return out


@torch.no_grad()
def node_shapes(snn: fx.GraphModule, input_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """``(C, H, W)`` of every tensor node of ``snn`` for one input of shape ``input_shape``
    (one multi-step step on a zero image; the state is reset afterwards)."""
    p = next(iter(snn.parameters()), None)
    x = torch.zeros((1, 1, *input_shape), dtype=p.dtype if p is not None else torch.float32,
                    device=p.device if p is not None else "cpu")
    functional.reset_net(snn)
    functional.set_step_mode(snn, "m")
    try:
        rec = _ShapeRecorder(snn)
        rec.run(x)
    finally:
        functional.reset_net(snn)
    return rec.shapes


# ----------------------------------------------------------------------- fan-out (1-D maps)


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


def stage_reach(m: nn.Module, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column reachability matrices (bool ``[H_in, H_out]``, ``[W_in, W_out]``) of one
    Conv2d / ConvTranspose2d / AvgPool2d stage; see the module docstring."""
    mats = []
    for dim in (0, 1):
        n_in, n_out = int(in_hw[dim]), int(out_hw[dim])
        if isinstance(m, nn.AvgPool2d):
            k = _pair(m.kernel_size)[dim]
            s = _pair(m.stride if m.stride is not None else m.kernel_size)[dim]
            mats.append(_window_reach(n_in, n_out, k, s, _pair(m.padding)[dim], 1, "zeros"))
        elif isinstance(m, nn.ConvTranspose2d):
            if m.padding_mode != "zeros":
                raise EnergyError(f"{type(m).__name__} with padding_mode={m.padding_mode!r} is not supported")
            mats.append(_transposed_reach(n_in, n_out, _pair(m.kernel_size)[dim], _pair(m.stride)[dim],
                                          _pair(m.padding)[dim], _pair(m.dilation)[dim]))
        elif isinstance(m, nn.Conv2d):
            k, s, d = _pair(m.kernel_size)[dim], _pair(m.stride)[dim], _pair(m.dilation)[dim]
            if isinstance(m.padding, str):
                pad = 0 if m.padding == "valid" else d * (k - 1) // 2  # 'same': extra padding on the right
            else:
                pad = _pair(m.padding)[dim]
            mats.append(_window_reach(n_in, n_out, k, s, pad, d, m.padding_mode))
        else:
            raise EnergyError(f"no reachability rule for {type(m).__name__}")
    return mats[0], mats[1]


def _compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Boolean matrix product: reachability through a then b (clamped, not path counts)."""
    return (a.to(torch.float64) @ b.to(torch.float64)) > 0


@dataclass
class FanOut:
    """Fan-out of one neuron layer: ``map[h, w]`` synapses per spike at (h, w), any channel, and
    the terminal synaptic layers its spikes reach (with that path's mean fan-out)."""

    map: torch.Tensor
    channels: int
    targets: dict[str, float] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(self.map.mean())


def fanout_maps(snn: fx.GraphModule, input_shape: tuple[int, int, int],
                shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, FanOut]:
    """Fan-out map of every neuron layer for an input of shape ``(C, H, W)``, keyed by the
    neuron's module path (``targets``: terminal synaptic layers by module path).

    Walks every path from the neuron through linear stages (AvgPool2d, a synaptic layer that
    feeds no neuron), concatenations and identities to a terminal synaptic layer, composing the
    row/column reachability matrices (:func:`stage_reach`) and adding
    ``C_out · rows reached · columns reached`` per path (module docstring).
    """
    shapes = shapes or node_shapes(snn, input_shape)
    out: dict[str, FanOut] = {}
    for node in snn.graph.nodes:
        if _classify(snn, node) != "neuron":
            continue
        c, h, w = shapes[node.name]
        fo = FanOut(torch.zeros(h, w, dtype=torch.float64), c)
        eye_h, eye_w = torch.eye(h, dtype=torch.bool), torch.eye(w, dtype=torch.bool)
        _walk(snn, node, eye_h, eye_w, shapes, fo, node.target)
        out[node.target] = fo
    return out


def _walk(gm, node, rh, rw, shapes, fo: FanOut, origin: str) -> None:
    """Follow ``node``'s users, ``rh``/``rw`` being the reachability from the neuron so far."""
    for u in node.users:
        k = _classify(gm, u)
        if k in ("identity", "cat"):
            _walk(gm, u, rh, rw, shapes, fo, origin)
        elif k == "output":
            continue  # spikes leaving the network reach no synapse
        elif k in ("pool", "synaptic"):
            m = gm.get_submodule(u.target)
            sh, sw = stage_reach(m, shapes[node.name][-2:], shapes[u.name][-2:])
            ch, cw = _compose(rh, sh), _compose(rw, sw)
            if k == "synaptic" and _is_terminal(gm, u):
                f = m.out_channels * torch.outer(ch.sum(1).to(torch.float64), cw.sum(1).to(torch.float64))
                fo.map += f
                fo.targets[u.target] = fo.targets.get(u.target, 0.0) + float(f.mean())
            else:
                _walk(gm, u, ch, cw, shapes, fo, origin)
        else:
            raise EnergyError(f"cannot count synaptic operations through node {u.name!r} "
                              f"({u.op} {u.target}) fed by neuron layer {origin!r}: only Conv2d, "
                              "ConvTranspose2d, AvgPool2d, channel concatenation and identities are understood")


def analog_macs(snn: fx.GraphModule, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """MACs per image of every synaptic layer reached from the input without passing a neuron
    (the analog first layer under static coding), by :func:`conv_macs`."""
    out: dict[str, int] = {}
    stack = [n for n in snn.graph.nodes if n.op == "placeholder"]
    seen = set()
    while stack:
        node = stack.pop()
        for u in node.users:
            if u.name in seen:
                continue
            seen.add(u.name)
            k = _classify(snn, u)
            if k in ("neuron", "output"):
                continue
            if k in ("analog", "synaptic"):
                out[u.target] = conv_macs(_synaptic_module(snn, u), shapes[node.name], shapes[u.name])
            stack.append(u)
    return out


# ------------------------------------------------------------------------------ counting


@torch.no_grad()
def spike_counts(snn: fx.GraphModule, x: torch.Tensor, T: int, chunk: int = 4) -> dict[str, torch.Tensor]:
    """Simulate ``x`` ([B, C, H, W]) for T steps (multi-step, chunks of ``chunk``) and return
    every neuron layer's ``spike_count`` (Σ_t Σ_i s_i, shape [B, C, H, W]) by module path."""
    if T < 1:
        raise ValueError(f"T must be a positive integer, got {T}")
    neurons = {n.target: snn.get_submodule(n.target) for n in snn.graph.nodes if _classify(snn, n) == "neuron"}
    if not neurons:
        raise EnergyError("the SNN has no MultiThresholdNode neuron layer to count spikes of")
    recording = {name: (m.record, m.record_spikes) for name, m in neurons.items()}
    functional.reset_net(snn)
    try:
        for m in neurons.values():
            m.record_spikes = True
        run_steps(snn, x, T, chunk)
        counts = {name: m.spike_count for name, m in neurons.items()}
    finally:
        for name, m in neurons.items():
            m.record, m.record_spikes = recording[name]
        functional.reset_net(snn)
    return counts


@dataclass
class LayerEnergy:
    """One neuron layer (``name``: its module path, as in the conversion record's ``neuron``
    field and :mod:`sjunet.flow`), per image: ``neurons``, ``spikes`` (threshold spikes), ``rate`` (spikes
    per neuron per step), ``fanout_mean`` (structural synapses per neuron, averaged over the
    layer's neurons — independent of the data), ``sops`` (Σ spikes × fan-out at their
    position) and the terminal synaptic layers reached (``targets``: layer → mean fan-out)."""

    name: str
    neurons: float
    spikes: float
    rate: float
    fanout_mean: float
    sops: float
    targets: dict[str, float] = field(default_factory=dict)


@dataclass
class EnergyReport:
    """Per-image averages over ``images`` images at ``T`` steps; energies in joules.

    ``energy_paper_J`` = first_layer_macs·e_mac + spikes·e_ac (the paper's Table 5);
    ``energy_sop_J`` = first_layer_macs·e_mac + sops·e_ac; ``energy_ann_J`` = ann_macs·e_mac;
    ``ratios`` = {'paper': paper/ann, 'sop': sop/ann}. ``first_layer_macs`` counts the analog
    first layer once per image (static coding, cached); ``first_layer_macs_every_step`` is T
    times that (an implementation that recomputes it every step; not used in the energies).
    """

    T: int
    images: int
    layers: list[LayerEnergy]
    first_layer_macs: float
    ann_macs: float | None
    spikes: float
    sops: float
    energy_paper_J: float
    energy_sop_J: float
    energy_ann_J: float | None
    ratios: dict[str, float]
    e_mac: float = E_MAC
    e_ac: float = E_AC
    first_layer_macs_every_step: float = 0.0
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["conventions"] = dict(CONVENTIONS)
        d["sops_per_spike"] = self.sops / self.spikes if self.spikes else 0.0
        return d


@dataclass
class _Structure:
    fanout: dict[str, FanOut]
    first_macs: int
    ann_macs: int | None


def _structure(snn, ann, shape) -> _Structure:
    shapes = node_shapes(snn, shape)
    return _Structure(fanout_maps(snn, shape, shapes), sum(analog_macs(snn, shapes).values()),
                      ann_macs(ann, shape) if ann is not None else None)


def count_energy(
    snn: fx.GraphModule,
    ann: nn.Module | None,
    batches: Iterable,
    T: int,
    chunk: int = 4,
    e_mac: float = E_MAC,
    e_ac: float = E_AC,
) -> EnergyReport:
    """Spikes, SOPs, MACs and energy per image, averaged over every image of ``batches``.

    ``batches`` yields image batches ``[B, C, H, W]`` (or ``(x, y)`` pairs) whose H and W the
    SNN accepts (multiples of 2^depth for the U-Net). ``ann`` (the source ANN, or any model of
    the same architecture: MACs do not depend on weights) may be ``None``: then no ANN figures.
    Structures (fan-out maps, MACs) are computed once per input size.
    """
    cache: dict[tuple[int, ...], _Structure] = {}
    acc: dict[str, dict[str, Any]] = {}
    images = 0
    first = ann_total = 0.0
    for x in batches:
        if isinstance(x, (tuple, list)):
            x = x[0]
        if x.dim() != 4:
            raise ValueError(f"expected image batches [B, C, H, W], got shape {tuple(x.shape)}")
        b, shape = x.shape[0], tuple(int(s) for s in x.shape[1:])
        if shape not in cache:
            cache[shape] = _structure(snn, ann, shape)
        st = cache[shape]
        for name, cnt in spike_counts(snn, x, T, chunk).items():
            fo = st.fanout[name]
            if not isinstance(cnt, torch.Tensor):
                raise EnergyError(f"neuron layer {name!r} recorded no spike count")
            per_pos = cnt.detach().to("cpu", torch.float64).sum(dim=(0, 1))  # [H, W]: batch and channels summed
            a = acc.setdefault(name, {"neurons": 0, "spikes": 0.0, "sops": 0.0, "fanout": 0.0, "targets": {}})
            n_layer = fo.channels * fo.map.numel()
            a["neurons"] += b * n_layer
            a["spikes"] += float(per_pos.sum())
            a["sops"] += float((per_pos * fo.map).sum())
            a["fanout"] += b * fo.channels * float(fo.map.sum())
            for t, v in fo.targets.items():
                a["targets"][t] = a["targets"].get(t, 0.0) + b * n_layer * v
        images += b
        first += b * st.first_macs
        if st.ann_macs is not None:
            ann_total += b * st.ann_macs
    if images == 0:
        raise ValueError("no images to count: the batches were empty")
    layers = [LayerEnergy(name, a["neurons"] / images, a["spikes"] / images,
                          a["spikes"] / (a["neurons"] * T), a["fanout"] / a["neurons"], a["sops"] / images,
                          {t: v / a["neurons"] for t, v in a["targets"].items()})
              for name, a in acc.items()]
    spikes = sum(layer.spikes for layer in layers)
    sops = sum(layer.sops for layer in layers)
    first_macs = first / images
    ann_m = ann_total / images if ann is not None else None
    e_paper = first_macs * e_mac + spikes * e_ac
    e_sop = first_macs * e_mac + sops * e_ac
    e_ann = ann_m * e_mac if ann_m is not None else None
    ratios = {"paper": e_paper / e_ann, "sop": e_sop / e_ann} if e_ann else {}
    return EnergyReport(T, images, layers, first_macs, ann_m, spikes, sops, e_paper, e_sop, e_ann, ratios,
                        e_mac, e_ac, first_layer_macs_every_step=T * first_macs)


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}"


def energy_table(report: EnergyReport) -> str:
    """Markdown: one row per neuron layer, then the totals, energies and SNN/ANN ratios."""
    r = report
    lines = [f"Energy per image (T = {r.T}, {r.images} image{'s' if r.images != 1 else ''}; "
             f"E_MAC = {r.e_mac * 1e12:g} pJ, E_AC = {r.e_ac * 1e12:g} pJ)", "",
             "| layer | neurons | spikes | rate (spikes/neuron/step) | mean fan-out | SOPs |",
             "|---|---:|---:|---:|---:|---:|"]
    for layer in r.layers:
        lines.append(f"| {layer.name} | {_fmt(layer.neurons)} | {_fmt(layer.spikes)} | {layer.rate:.4f} | "
                     f"{layer.fanout_mean:.1f} | {_fmt(layer.sops)} |")
    neurons = sum(layer.neurons for layer in r.layers)
    lines.append(f"| **total** | {_fmt(neurons)} | {_fmt(r.spikes)} | "
                 f"{r.spikes / (neurons * r.T) if neurons else 0:.4f} | "
                 f"{r.sops / r.spikes if r.spikes else 0:.1f} per spike | {_fmt(r.sops)} |")
    lines += ["", "| quantity | value |", "|---|---:|",
              f"| first-layer MACs (once per image) | {_fmt(r.first_layer_macs)} |",
              f"| first-layer MACs if recomputed every step | {_fmt(r.first_layer_macs_every_step)} |",
              f"| ANN MACs | {_fmt(r.ann_macs)} |",
              f"| spikes | {_fmt(r.spikes)} |",
              f"| SOPs (ACs) | {_fmt(r.sops)} |",
              f"| energy, paper convention (MAC_first·E_MAC + spikes·E_AC) | {r.energy_paper_J:.4e} J |",
              f"| energy, SOP convention (MAC_first·E_MAC + SOPs·E_AC) | {r.energy_sop_J:.4e} J |",
              f"| energy, ANN (MACs·E_MAC) | {'–' if r.energy_ann_J is None else f'{r.energy_ann_J:.4e} J'} |"]
    for k, v in r.ratios.items():
        lines.append(f"| SNN/ANN energy, {k} convention | {v:.4f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- library verb


def energy(
    snn: str | Path | nn.Module,
    dataset: str | Any,
    data: str | Path | None = None,
    T: int = 20,
    model: str | Path | nn.Module | None = None,
    split: str = "test",
    limit: int | None = None,
    output: str | Path | None = None,
    dataset_options: dict | None = None,
    chunk: int = 4,
) -> EnergyReport:
    """Library form of ``sjunet energy --snn snn.pt --data … --T 20``.

    ``snn``: a file from ``sjunet convert`` / ``finetune`` (or the module). ``dataset``: a
    registry name (``sjunet.data.get_dataset(dataset, data, split, **dataset_options)``) or a
    dataset object whose items are ``(x [C, H, W], y)``. ``model``: the ANN checkpoint (or
    module) for the ANN's MACs; without it the ANN is rebuilt from the SNN record's
    ``model_config`` (MACs do not depend on weights). Every image is reflect-padded to a multiple
    of 2^depth as in evaluation (:func:`sjunet.evaluate._padded_call`) and counted at the padded
    size the SNN actually processes (datasets evaluated by patches, such as DRIVE, are counted
    as whole padded images). With ``output``, writes the report as JSON (atomically) with
    provenance.
    """
    from sjunet.data import get_dataset
    from sjunet.evaluate import _padded_call
    from sjunet.io import file_fingerprint, load_ann, model_fingerprint, provenance, write_json
    from sjunet.models import build_model
    from sjunet.recipe import load_snn

    meta: dict[str, Any] = {}
    if isinstance(snn, nn.Module):
        net, rec = snn, {"conversion": getattr(snn, "sjunet_conversion", {}), "model_config": None}
        meta["snn"] = {"path": None}
    else:
        net, rec = load_snn(snn)
        meta["snn"] = {"path": str(snn), "file": file_fingerprint(snn)}
    conv = rec.get("conversion") or {}
    meta["snn"]["conversion"] = conv.get("options")

    if isinstance(model, nn.Module):
        ann = model
        meta["model"] = {"path": None, "fingerprint": model_fingerprint(ann)}
    elif model is not None:
        ann, ckpt = load_ann(model)
        meta["model"] = {"path": str(model), "fingerprint": ckpt.get("fingerprint"), "file": file_fingerprint(model)}
    elif rec.get("model_config"):
        ann = build_model(rec["model_config"])
        meta["model"] = {"path": None, "rebuilt_from": "snn model_config (MACs only; weights unused)"}
    else:
        raise ValueError("cannot count the ANN's MACs: the SNN record has no model_config; give --model "
                         "(the ANN checkpoint the SNN was converted from)")
    if conv.get("ann_fingerprint") and meta["model"].get("fingerprint"):
        meta["model"]["matches_snn"] = conv["ann_fingerprint"] == meta["model"]["fingerprint"]
    n_ann = sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in ann.modules())
    n_snn = sum(_classify(net, n) in ("synaptic", "analog") for n in net.graph.nodes)
    if n_ann != n_snn:
        raise ValueError(f"the ANN has {n_ann} convolution layers but the SNN {n_snn}: not the SNN's architecture")

    cfg = rec.get("model_config") or (ann.config.to_dict() if hasattr(getattr(ann, "config", None), "to_dict") else {})
    multiple = 2 ** int(cfg.get("depth", 4))

    ds = get_dataset(dataset, data, split, **(dataset_options or {})) if isinstance(dataset, str) else dataset
    n = len(ds) if limit is None else min(int(limit), len(ds))

    def padded_images():
        for i in range(n):
            got: list[torch.Tensor] = []

            def keep(xp: torch.Tensor) -> dict:  # _padded_call's fn: only keep the padded input
                got.append(xp)
                return {}

            _padded_call(keep, ds[i][0].unsqueeze(0), multiple)
            yield got[0]

    report = count_energy(net, ann, padded_images(), T, chunk=chunk)
    describe = getattr(ds, "describe", None)
    meta["dataset"] = {"name": dataset if isinstance(dataset, str) else type(ds).__name__,
                       **(describe() if callable(describe) else {})}
    meta.update({"split": split, "limit": limit, "size_multiple": multiple})
    report.meta = meta
    if output is not None:
        write_json({**report.to_dict(), "provenance": provenance(sources={
            "snn": meta["snn"].get("path"), "model": meta["model"].get("path"),
            "dataset": meta["dataset"]}, options={"T": T, "split": split, "limit": limit, "chunk": chunk})}, output)
    return report
