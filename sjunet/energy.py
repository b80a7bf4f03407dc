"""Spike, synaptic-operation and MAC counting; energy estimates (paper §4.4.3, spec §8, §12).

Per image, at T time steps, :func:`count_energy` reports

* **spikes** per source layer — for a neuron layer the sum of its ``spike_count`` memory, i.e.
  Σ_t (threshold crossings) over every neuron of the layer: a multi-threshold (MT) step whose
  output is 0.75 = 0.5 + 0.25 is **two** spikes (one per threshold that fired); an IF spike is
  one. For a spiking max-pool (:class:`~sjunet.stages.SpikingMaxPool2d`) the count of its non-zero
  (graded) outputs. The **firing rate** is spikes per neuron per step, so it can reach N (the
  ladder length, 4 by default) for MT neurons, 1 for IF;
* **synaptic operations** (SOPs), counted as accumulates (AC): every spike costs one AC per
  synapse it reaches (its *fan-out*, :mod:`sjunet.fanout`: exact, padding-aware, through linear
  stages, interpolation, padding, concatenations, residual joins and gains). A threshold spike
  of weight θ_i = 2^k·θ_N is still ONE AC per synapse: the scaling by its threshold is a shift of
  the weight, not a multiply. The spikes entering the (non-spiking) output convolution count too;
* **MACs of the analog part**: the synaptic layers fed by the image without a neuron between
  (the first layer, a residual convolution on the input). Under static coding the image is their
  input current at every step, and :class:`~sjunet.neurons.StaticInputSynapse` computes them
  **once per image**; ``first_layer_macs_every_step`` (T times that) is the figure of an
  implementation that recomputes them every step; the energies use the once-per-image figure;
* **the ANN's MACs** for the same input size: with the ANN given, counted by SpikingJelly's
  ``op_counter.MACCounter`` under ``DispatchCounterMode`` (:func:`ann_macs`; its stock convolution
  rule counts 0 when a convolution's input happens to be all 0/1 — a dead ReLU layer, a binary
  image — so it is replaced by the same formula without that value test; BatchNorm ignored,
  it is folded at conversion); without it, :func:`conv_macs` over the SNN's own synaptic layers,
  which are the ANN's convolutions.

Energy (Horowitz 2014, 45 nm, fp32: E_MAC = 4.6 pJ, E_AC = 0.9 pJ), in two conventions:

* ``paper`` — the paper's Table 5: ``first_layer_macs·E_MAC + spikes·E_AC``: one AC per
  *spike*, whatever its fan-out (its 6.98e-4 J is this);
* ``sop`` — ``first_layer_macs·E_MAC + SOPs·E_AC``: one AC per spike per synapse reached;
* ``ann`` — ``ann_macs·E_MAC``; ``ratios`` gives SNN / ANN for both conventions.

Not counted in either convention: the bias current b̃ added to every neuron at every step
(T·neurons ACs), the neuron updates themselves, and memory traffic (the paper counts none).

SpikingJelly's ``SynOpCounter`` is not used for the SNN: it counts a synaptic operation only
where a convolution's input is *binary*, and MT neurons emit graded values (0, 0.25, …, 3.75),
so it sees none of their spikes and counts every later convolution as dense MACs at every step
(``tests/test_energy.py::test_synop_counter_sees_no_mt_spikes`` measures this).
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

from sjunet.fanout import EnergyError, FanOut, _pair, analog_layers, fanout_maps, is_source, node_shapes, synaptic_module
from sjunet.graph import kind_of
from sjunet.simulation import run_steps

#: Horowitz (ISSCC 2014), 45 nm, 32-bit float: multiply-accumulate and accumulate energies (J)
E_MAC = 4.6e-12
E_AC = 0.9e-12

CONVENTIONS = {
    "paper": "first-layer MACs x E_MAC + spike count x E_AC (the paper's Table 5)",
    "sop": "first-layer MACs x E_MAC + synaptic operations (spikes x fan-out) x E_AC",
    "ann": "ANN MACs x E_MAC",
}


# ----------------------------------------------------------------------------------- MACs


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


def analog_macs(snn: fx.GraphModule, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """MACs per image of the analog part (:func:`sjunet.fanout.analog_layers`), by :func:`conv_macs`."""
    return {u.target: conv_macs(synaptic_module(snn, u), shapes[u.args[0].name], shapes[u.name])
            for u in analog_layers(snn)}


def graph_macs(snn: fx.GraphModule, shapes: dict[str, tuple[int, ...]]) -> int:
    """Dense MACs of every synaptic layer of the SNN's graph: the ANN's convolutions (BN folded)."""
    return sum(conv_macs(synaptic_module(snn, n), shapes[n.args[0].name], shapes[n.name])
               for n in snn.graph.nodes if kind_of(snn, n) in ("synaptic", "analog"))


# ------------------------------------------------------------------------------ counting


def _sources(snn: fx.GraphModule) -> dict[str, nn.Module]:
    return {n.target: snn.get_submodule(n.target) for n in snn.graph.nodes if is_source(snn, n)}


@torch.no_grad()
def spike_counts(snn: fx.GraphModule, x: torch.Tensor, T: int, chunk: int = 4) -> dict[str, torch.Tensor]:
    """Simulate ``x`` ([B, C, H, W]) for T steps (multi-step chunks of ``chunk``; 1: single-step)
    and return every source layer's ``spike_count`` (shape [B, C, H, W]) by module path."""
    if T < 1:
        raise ValueError(f"T must be a positive integer, got {T}")
    sources = _sources(snn)
    if not any(kind_of(snn, n) == "neuron" for n in snn.graph.nodes):
        raise EnergyError("the SNN has no neuron layer to count spikes of")
    flags = {name: (getattr(m, "record", False), m.record_spikes) for name, m in sources.items()}
    functional.reset_net(snn)
    try:
        for m in sources.values():
            m.record_spikes = True
        run_steps(snn, x, T, chunk)
        counts = {name: m.spike_count for name, m in sources.items()}
    finally:
        for name, m in sources.items():
            if hasattr(m, "record"):
                m.record = flags[name][0]
            m.record_spikes = flags[name][1]
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
                      ann_macs(ann, shape) if ann is not None else graph_macs(snn, shapes))


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
    the same architecture: MACs do not depend on weights) may be ``None``: then the ANN's MACs
    are those of the SNN's own synaptic layers (the same convolutions).
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
    ann_m = ann_total / images
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




def count_energy_on(snn: fx.GraphModule, dataset, T: int, ann: nn.Module | None = None, limit: int | None = None,
                    chunk: int = 4, multiple: int | None = None) -> EnergyReport:
    """:func:`count_energy` over the first ``limit`` images of a dataset (items ``(x [C, H, W], y)``),
    each reflect-padded to the SNN's size multiple as in evaluation and counted at that padded
    size (datasets evaluated by patches, such as DRIVE, are counted as whole padded images)."""
    from sjunet.evaluation import pad_to_multiple
    from sjunet.recipe import snn_size_multiple

    multiple = multiple or snn_size_multiple(snn)
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n < 1:
        raise ValueError(f"no images to count (limit {limit}, {len(dataset)} in the dataset)")
    images = (pad_to_multiple(dataset[i][0].unsqueeze(0), multiple) for i in range(n))
    report = count_energy(snn, ann, images, T, chunk=chunk)
    report.meta.update({"size_multiple": multiple, "limit": limit})
    return report
