"""Spike, synaptic-operation and MAC counting; energy estimates (paper §4.4.3, spec §8, §12).

Per image, at T time steps, :func:`count_energy` reports

* **spikes** per source layer — for a neuron layer the sum of its ``spike_count`` memory, i.e.
  Σ_t (threshold crossings) over every neuron of the layer: a multi-threshold (MT) step whose
  output is 0.75 = 0.5 + 0.25 is **two** spikes (one per threshold that fired); an IF spike is
  one. For a spiking max-pool (:class:`~sjunet.layers.stages.SpikingMaxPool2d`) the count of its non-zero
  (graded) outputs. The **firing rate** is spikes per neuron per step, so it can reach N (the
  ladder length, 4 by default) for MT neurons, 1 for IF;
* **synaptic operations** (SOPs), counted as accumulates (AC): every spike costs one AC per
  synapse it reaches (its *fan-out*, :mod:`sjunet.evaluation.fanout`: exact, padding-aware, through linear
  stages, interpolation, padding, concatenations, residual joins and gains). A threshold spike
  of weight θ_i = 2^k·θ_N is still ONE AC per synapse: the scaling by its threshold is a shift of
  the weight, not a multiply. The spikes entering the (non-spiking) output convolution count too;
* **MACs of the analog part**: the synaptic layers fed by the image without a neuron between
  (the first layer, a residual convolution on the input). Under static coding the image is their
  input current at every step, and :class:`~sjunet.layers.static_synapse.StaticInputSynapse` computes them
  **once per image**; ``first_layer_macs_every_step`` (T times that) is the figure of an
  implementation that recomputes them every step; the energies use the once-per-image figure;
* **the ANN's MACs** for the same input size: with the ANN given, counted by SpikingJelly's
  ``op_counter.MACCounter`` under ``DispatchCounterMode`` (:func:`ann_macs`; its stock convolution
  rule counts 0 when a convolution's input happens to be all 0/1 — a dead ReLU layer, a binary
  image — so it is replaced by the same formula without that value test; BatchNorm ignored,
  it is folded at conversion); without it, :func:`conv_macs` over the SNN's own synaptic layers,
  which are the ANN's convolutions.

* **events** per source layer — the non-zero outputs (one graded message per neuron and step,
  however many thresholds fired) — and the **synaptic events** ``events × fan-out``.

Energy (Horowitz 2014, 45 nm, fp32: E_MAC = 4.6 pJ, E_AC = 0.9 pJ), in three conventions
(spec §12; none is "the" truth):

* ``paper`` — the paper's Table 5: ``first_layer_macs·E_MAC + spikes·E_AC``: one AC per
  *spike*, whatever its fan-out (its 6.98e-4 J is this);
* ``sop`` — ``first_layer_macs·E_MAC + SOPs·E_AC``: one AC per spike per synapse reached;
* ``neurobench`` — ``first_layer_macs·E_MAC + events·fan-out·E_MAC``: NeuroBench counts a
  synaptic operation with a non-binary input as a MAC, so a non-zero graded MT output costs one
  MAC per synapse it reaches, once per step however many thresholds fired — what a graded-spike
  chip (one message with a payload) pays;
* ``ann`` — ``ann_macs·E_MAC``; ``ratios`` gives SNN / ANN for each convention.

Energy is a curve, not a number: :func:`count_energy` takes several T and counts them in one
simulation (snapshots of the counters), and :func:`energy_frontier` adds the task metric at each
T from the same simulation (the evaluation's own, patches included) — metric against energy.

**Σ-Δ neurons and graded currents** (spec §15), counted at MAC cost in every convention: each Σ-Δ
neuron layer evaluates its function once per element and step, a product neuron its product's MACs
per step (:func:`sigma_delta_ops`); a synaptic layer fed by another's output through no neuron in a
token path (a transformer's residual stream into the next block or the decoder) works on graded
currents every step, its dense MACs each step (:func:`graded_macs`,
:func:`sjunet.evaluation.fanout_generic.graded_layers`). ``mac_share`` says, per convention, which
share of the operations and of the energy is not accumulate: how "spiking" the converted network is.

Not counted in either convention: the bias current b̃ added to every neuron at every step
(T·neurons ACs), the updates of MT neurons themselves, and memory traffic (the paper counts none).

SpikingJelly's ``SynOpCounter`` is not used for the SNN: it counts a synaptic operation only
where a convolution's input is *binary*, and MT neurons emit graded values (0, 0.25, …, 3.75),
so it sees none of their spikes and counts every later convolution as dense MACs at every step
(``tests/evaluation/test_energy.py::test_synop_counter_sees_no_mt_spikes`` measures this).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from math import prod
from typing import Any, Iterable, Sequence

import torch
from spikingjelly.activation_based import functional
from torch import fx, nn

from sjunet.evaluation.fanout import (EnergyError, FanOut, analog_layers, center_acs, fanout_maps, generic_kind,
                                      is_source, node_shapes, synaptic_module)
from sjunet.graph import kind_of
from sjunet.snn.simulation import run_steps

#: Horowitz (ISSCC 2014), 45 nm, 32-bit float: multiply-accumulate and accumulate energies (J)
E_MAC = 4.6e-12
E_AC = 0.9e-12

CONVENTIONS = {
    "paper": "first-layer MACs x E_MAC + spike count x E_AC (the paper's Table 5)",
    "sop": "first-layer MACs x E_MAC + synaptic operations (spikes x fan-out) x E_AC",
    "neurobench": "first-layer MACs x E_MAC + graded events x fan-out x E_MAC (NeuroBench: non-binary input = MAC)",
    "ann": "ANN MACs x E_MAC",
}


# ----------------------------------------------------------------------------------- MACs


def conv_macs(m: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Dense MACs of one Conv / ConvTranspose (2-D or 3-D) for one image or volume.

    Conv2d: C_in/groups · k_h·k_w · C_out · H_out·W_out. ConvTranspose2d: every input element
    times every kernel element of its group's outputs, C_in · k_h·k_w · C_out/groups · H_in·W_in.
    Volumes alike, with the products over D, H, W. ``in_shape`` / ``out_shape`` are
    ``(…, H, W)`` (``(…, D, H, W)``: the last as many sizes as the kernel has axes). (Bias
    additions are not MACs.)
    """
    if isinstance(m, nn.Linear):  # every output element: in_features MACs
        return m.in_features * prod(int(v) for v in out_shape)
    if not isinstance(m, nn.modules.conv._ConvNd):
        raise TypeError(f"not a synaptic layer: {type(m).__name__}")
    nd = len(m.kernel_size)
    k = prod(int(v) for v in m.kernel_size)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return m.in_channels * k * (m.out_channels // m.groups) * prod(int(v) for v in in_shape[-nd:])
    return (m.in_channels // m.groups) * k * m.out_channels * prod(int(v) for v in out_shape[-nd:])


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
                             extra_ignore_modules=[nn.BatchNorm2d, nn.BatchNorm3d])
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
    """MACs per image of the analog part (:func:`sjunet.evaluation.fanout.analog_layers`), by :func:`conv_macs`."""
    return {u.target: conv_macs(synaptic_module(snn, u), shapes[u.args[0].name], shapes[u.name])
            for u in analog_layers(snn)}


def graph_macs(snn: fx.GraphModule, shapes: dict[str, tuple[int, ...]]) -> int:
    """Dense MACs of every synaptic layer of the SNN's graph — the ANN's convolutions (BN folded) and
    linear layers — and of its products (attention's matrix products)."""
    from sjunet.neurons.sigma_delta import SigmaDeltaProduct

    total = sum(conv_macs(synaptic_module(snn, n), shapes[n.args[0].name], shapes[n.name])
                for n in snn.graph.nodes if kind_of(snn, n) in ("synaptic", "analog"))
    for n in snn.graph.nodes:
        m = snn.get_submodule(n.target) if n.op == "call_module" else None
        if isinstance(m, SigmaDeltaProduct):
            a, b = n.args
            total += m.evaluations((1, *shapes[a.name]), (1, *shapes[b.name]))
    return total


def sigma_delta_ops(snn: fx.GraphModule, full: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Operations per image and step of every Σ-Δ neuron layer (module path -> count): one
    evaluation of f per element, or the product's MACs (``full``: shapes for a batch of one)."""
    from sjunet.neurons.sigma_delta import SigmaDeltaNode, SigmaDeltaProduct

    out = {}
    for n in snn.graph.nodes:
        m = snn.get_submodule(n.target) if n.op == "call_module" else None
        if isinstance(m, SigmaDeltaNode):
            out[n.target] = m.evaluations(full[n.name])
        elif isinstance(m, SigmaDeltaProduct):
            out[n.target] = m.evaluations(full[n.args[0].name], full[n.args[1].name])
    return out


def graded_macs(snn: fx.GraphModule, shapes: dict[str, tuple[int, ...]], maps: dict[str, FanOut]) -> dict[str, int]:
    """Dense MACs per image and step of the synaptic layers fed by graded currents (module docstring)."""
    from sjunet.evaluation.fanout_generic import graded_layers

    starts = {t for fo in maps.values() if fo.per_element for t in fo.targets}
    layers = graded_layers(snn, starts, lambda u, v: generic_kind(snn, u, v))
    return {u.target: conv_macs(synaptic_module(snn, u), shapes[u.args[0].name], shapes[u.name]) for u in layers}


# ------------------------------------------------------------------------------ counting


def _sources(snn: fx.GraphModule) -> dict[str, nn.Module]:
    return {n.target: snn.get_submodule(n.target) for n in snn.graph.nodes if is_source(snn, n)}


class counting:
    """Context: every source of ``snn`` counts spikes and events (``record_spikes``); restored after."""

    def __init__(self, snn: fx.GraphModule) -> None:
        self.sources = _sources(snn)
        if not any(kind_of(snn, n) == "neuron" for n in snn.graph.nodes):
            raise EnergyError("the SNN has no neuron layer to count spikes of")

    def __enter__(self) -> "counting":
        self.flags = {name: m.record_spikes for name, m in self.sources.items()}
        for m in self.sources.values():
            m.record_spikes = True
        return self

    def __exit__(self, *exc) -> None:
        for name, m in self.sources.items():
            m.record_spikes = self.flags[name]

    def snapshot(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(spike_count, event_count) of every source, each [B, C, H, W], by module path."""
        out = {}
        for name, m in self.sources.items():
            if not isinstance(m.spike_count, torch.Tensor):
                raise EnergyError(f"source layer {name!r} recorded no spike count")
            out[name] = (m.spike_count.detach().clone(), m.event_count.detach().clone())
        return out


@torch.no_grad()
def spike_counts(snn: fx.GraphModule, x: torch.Tensor, T: int | Sequence[int], chunk: int | str = "auto"):
    """Simulate ``x`` ([B, C, H, W]) for max(T) steps (multi-step chunks of ``chunk``; 1:
    single-step; ``"auto"``: by memory, :func:`sjunet.snn.simulation.memory_chunk`) and return
    every source layer's spike counts (shape [B, C, H, W]) by module path; for several T,
    ``{t: {path: (spikes, events)}}`` snapshots of one simulation."""
    steps = sorted({int(t) for t in ([T] if isinstance(T, int) else T)})
    if not steps or steps[0] < 1:
        raise ValueError(f"T must be positive integers, got {T}")
    functional.reset_net(snn)
    snaps: dict[int, dict] = {}
    try:
        with counting(snn) as c:
            t = 0
            for target in steps:
                run_steps(snn, x, target - t, chunk)
                t = target
                snaps[target] = c.snapshot()
    finally:
        functional.reset_net(snn)
    if isinstance(T, int):
        return {name: spikes for name, (spikes, _) in snaps[steps[0]].items()}
    return snaps


@dataclass
class LayerEnergy:
    """One source layer (``name``: its module path), per image: ``neurons``, ``spikes``
    (threshold spikes), ``rate`` (spikes per neuron per step), ``events`` (non-zero outputs),
    ``nonzero`` (events per neuron per step: the fraction of non-zero outputs), ``fanout_mean``
    (structural synapses per neuron, averaged over the layer), ``sops`` (Σ spikes × fan-out at
    their position), ``synaptic_events`` (Σ events × fan-out) and the terminal layers reached
    (``targets``: layer → mean fan-out)."""

    name: str
    neurons: float
    spikes: float
    rate: float
    fanout_mean: float
    sops: float
    targets: dict[str, float] = field(default_factory=dict)
    events: float = 0.0
    nonzero: float = 0.0
    synaptic_events: float = 0.0


@dataclass
class EnergyReport:
    """Per-image averages over ``images`` images at ``T`` steps; energies in joules.

    ``energy_paper_J`` = first_layer_macs·e_mac + spikes·e_ac (the paper's Table 5);
    ``energy_sop_J`` = first_layer_macs·e_mac + sops·e_ac; ``energy_neurobench_J`` =
    first_layer_macs·e_mac + synaptic_events·e_mac; ``energy_ann_J`` = ann_macs·e_mac;
    ``ratios`` = SNN / ANN per convention. ``first_layer_macs`` counts the analog part once per
    image (static coding, cached); ``first_layer_macs_every_step`` is T times that.
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
    events: float = 0.0
    synaptic_events: float = 0.0
    energy_neurobench_J: float = 0.0
    #: accumulates of the norms' centring stages (2·C·H·W per step each, :func:`sjunet.evaluation.fanout.center_acs`),
    #: added at e_ac to every convention; 0 without instance/group/layer norms
    stage_acs: float = 0.0
    #: Σ-Δ neuron evaluations (functions and products' MACs) over the T steps, at e_mac in every convention
    neuron_ops: float = 0.0
    #: dense MACs of synaptic layers fed by graded currents over the T steps, at e_mac in every convention
    graded_macs: float = 0.0
    #: per convention, the share of operations (``ops``) and of energy (``energy``) that is not accumulate
    mac_share: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["conventions"] = dict(CONVENTIONS)
        d["sops_per_spike"] = self.sops / self.spikes if self.spikes else 0.0
        return d


@dataclass
class _Structure:
    fanout: dict[str, FanOut]
    first_macs: int
    ann_macs: int
    center_acs: int = 0  # per step: norms' centring (fanout.center_acs)
    neuron_ops: int = 0  # per step: Σ-Δ neuron evaluations (sigma_delta_ops)
    graded_macs: int = 0  # per step: layers fed by graded currents (graded_macs)


class EnergyTally:
    """Accumulates spike/event counts of images (of any sizes) into an :class:`EnergyReport`;
    structures (fan-out maps, MACs) are computed once per input size."""

    def __init__(self, snn: fx.GraphModule, ann: nn.Module | None = None, cache: dict | None = None) -> None:
        self.snn, self.ann = snn, ann
        self.cache = cache if cache is not None else {}
        self.acc: dict[str, dict[str, Any]] = {}
        self.images = 0
        self.first = self.ann_total = self.center = self.neuron = self.graded = 0.0

    def structure(self, shape: tuple[int, ...]) -> _Structure:
        if shape not in self.cache:
            from sjunet.evaluation.fanout_generic import full_shapes

            shapes = node_shapes(self.snn, shape)
            maps = fanout_maps(self.snn, shape, shapes)
            sd = sigma_delta_ops(self.snn, full_shapes(self.snn, shape)) if any(
                hasattr(m, "flow_vjp") for m in self.snn.modules()) else {}
            self.cache[shape] = _Structure(maps, sum(analog_macs(self.snn, shapes).values()),
                                           ann_macs(self.ann, shape) if self.ann is not None else graph_macs(self.snn, shapes),
                                           center_acs(self.snn, shapes), sum(sd.values()),
                                           sum(graded_macs(self.snn, shapes, maps).values()))
        return self.cache[shape]

    def add(self, x_shape: Sequence[int], counts: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        b, shape = int(x_shape[0]), tuple(int(s) for s in x_shape[1:])
        st = self.structure(shape)
        for name, (spikes, events) in counts.items():
            fo = st.fanout[name]
            s_pos, sops = fo.weigh(spikes)  # [H, W]: batch and channels summed (per element: the batch)
            e_pos, syn_events = fo.weigh(events)
            a = self.acc.setdefault(name, {"neurons": 0, "spikes": 0.0, "sops": 0.0, "events": 0.0, "syn_events": 0.0,
                                           "fanout": 0.0, "targets": {}})
            n_layer = fo.channels * fo.map.numel()
            a["neurons"] += b * n_layer
            a["spikes"] += float(s_pos.sum())
            a["sops"] += sops
            a["events"] += float(e_pos.sum())
            a["syn_events"] += syn_events
            a["fanout"] += b * fo.channels * float(fo.map.sum())
            for t, v in fo.targets.items():
                a["targets"][t] = a["targets"].get(t, 0.0) + b * n_layer * v
        self.images += b
        self.first += b * st.first_macs
        self.ann_total += b * st.ann_macs
        self.center += b * st.center_acs
        self.neuron += b * st.neuron_ops
        self.graded += b * st.graded_macs

    def report(self, T: int, e_mac: float = E_MAC, e_ac: float = E_AC) -> EnergyReport:
        n = self.images
        if n == 0:
            raise ValueError("no images to count: the batches were empty")
        layers = [LayerEnergy(name, a["neurons"] / n, a["spikes"] / n, a["spikes"] / (a["neurons"] * T),
                              a["fanout"] / a["neurons"], a["sops"] / n,
                              {t: v / a["neurons"] for t, v in a["targets"].items()},
                              a["events"] / n, a["events"] / (a["neurons"] * T), a["syn_events"] / n)
                  for name, a in self.acc.items()]
        spikes, sops = sum(x.spikes for x in layers), sum(x.sops for x in layers)
        events, syn_events = sum(x.events for x in layers), sum(x.synaptic_events for x in layers)
        first_macs, ann_m = self.first / n, self.ann_total / n
        stage_acs = T * self.center / n  # norms' centring, dense, every step: in every convention
        neuron_ops, graded = T * self.neuron / n, T * self.graded / n  # Σ-Δ evaluations, graded layers: MACs
        macs = {"paper": first_macs + neuron_ops + graded, "sop": first_macs + neuron_ops + graded,
                "neurobench": first_macs + syn_events + neuron_ops + graded}
        acs = {"paper": spikes + stage_acs, "sop": sops + stage_acs, "neurobench": stage_acs}
        energy = {k: macs[k] * e_mac + acs[k] * e_ac for k in macs}
        e_paper, e_sop, e_nb = energy["paper"], energy["sop"], energy["neurobench"]
        e_ann = ann_m * e_mac
        ratios = {"paper": e_paper / e_ann, "sop": e_sop / e_ann, "neurobench": e_nb / e_ann} if e_ann else {}
        share = {k: {"ops": macs[k] / (macs[k] + acs[k]) if macs[k] + acs[k] else 0.0,
                     "energy": macs[k] * e_mac / energy[k] if energy[k] else 0.0} for k in macs}
        return EnergyReport(T, n, layers, first_macs, ann_m, spikes, sops, e_paper, e_sop, e_ann, ratios, e_mac, e_ac,
                            first_layer_macs_every_step=T * first_macs, events=events, synaptic_events=syn_events,
                            energy_neurobench_J=e_nb, stage_acs=stage_acs, neuron_ops=neuron_ops, graded_macs=graded,
                            mac_share=share)


def count_energy(
    snn: fx.GraphModule,
    ann: nn.Module | None,
    batches: Iterable,
    T: int | Sequence[int],
    chunk: int | str = "auto",
    e_mac: float = E_MAC,
    e_ac: float = E_AC,
) -> EnergyReport | dict[int, EnergyReport]:
    """Spikes, events, SOPs, MACs and energy per image, averaged over every image of ``batches``.

    ``batches`` yields image batches ``[B, C, H, W]`` (or ``(x, y)`` pairs) whose H and W the
    SNN accepts (multiples of 2^depth for the U-Net). ``ann`` (the source ANN, or any model of
    the same architecture: MACs do not depend on weights) may be ``None``: then the ANN's MACs
    are those of the SNN's own synaptic layers (the same convolutions). With several ``T``,
    ``{t: report}`` from one simulation per batch.
    """
    steps = [int(T)] if isinstance(T, int) else sorted({int(t) for t in T})
    cache: dict = {}
    tallies = {t: EnergyTally(snn, ann, cache) for t in steps}
    for x in batches:
        if isinstance(x, (tuple, list)):
            x = x[0]
        if x.dim() not in (4, 5):
            raise ValueError(f"expected image batches [B, C, H, W] or volume batches [B, C, D, H, W], got shape "
                             f"{tuple(x.shape)}")
        for t, counts in spike_counts(snn, x, steps, chunk).items():
            tallies[t].add(x.shape, counts)
    reports = {t: tally.report(t, e_mac, e_ac) for t, tally in tallies.items()}
    return reports[steps[0]] if isinstance(T, int) else reports


def energy_frontier(snn: fx.GraphModule, dataset, T: Sequence[int], ann: nn.Module | None = None,
                    limit: int | None = None, mode: str = "step", chunk: int | str = "auto",
                    multiple: int | None = None,
                    progress: bool = False, device: str = "cpu", protocol=None) -> dict:
    """Metric and energy at every T from one simulation of each evaluated input: the evaluation's
    own (:func:`sjunet.evaluation.loops.evaluate_snn`: whole images by default, padded to the size rule,
    tiled only where memory needs it; under ``--protocol patch`` the energy is that of producing
    the evaluated prediction, and the ANN's MACs are counted over the same windows). Returns
    ``{"T": {t: {"metrics", "energy"}}, "ann": ANN metrics (when ``ann``), "metric": the data set's
    headline metric, "protocol", "timing"}``."""
    from sjunet.evaluation.loops import evaluate_snn
    from sjunet.tasks import task_for

    steps = sorted({int(t) for t in T})
    cache: dict = {}
    tallies = {t: EnergyTally(snn, ann, cache) for t in steps}
    with counting(snn) as c:
        def hook(t: int, x: torch.Tensor) -> None:
            tallies[t].add(x.shape, c.snapshot())

        r = evaluate_snn(snn, dataset, steps, reference=ann, mode=mode, chunk=chunk, limit=limit, multiple=multiple,
                         progress=progress, device=device, on_checkpoint=hook, protocol=protocol)
    out = {"T": {str(t): {"metrics": r["T"][str(t)], "energy": tallies[t].report(t).to_dict()} for t in steps},
           "metric": task_for(dataset).metric, "protocol": r["protocol"], "timing": r["timing"]}
    if "ann" in r:
        out["ann"] = r["ann"]
    return out


def count_energy_on(snn: fx.GraphModule, dataset, T: int | Sequence[int], ann: nn.Module | None = None,
                    limit: int | None = None, chunk: int | str = "auto", multiple: int | None = None):
    """:func:`count_energy` over the first ``limit`` images of a dataset (items ``(x [C, H, W], y)``),
    each reflect-padded to the SNN's size multiple as in evaluation and counted at that padded
    size (datasets evaluated by patches, such as DRIVE, are counted as whole padded images)."""
    from sjunet.evaluation.layout import pad_to_multiple
    from sjunet.snn import size_rule

    multiple = multiple or size_rule(snn)
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n < 1:
        raise ValueError(f"no images to count (limit {limit}, {len(dataset)} in the dataset)")
    images = (pad_to_multiple(dataset[i][0].unsqueeze(0), multiple) for i in range(n))
    reports = count_energy(snn, ann, images, T, chunk=chunk)
    for r in ([reports] if isinstance(reports, EnergyReport) else reports.values()):
        r.meta.update({"size_multiple": multiple, "limit": limit})
    return reports
