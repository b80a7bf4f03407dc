"""T-step simulation of a converted SNN and decoding (paper §3.1, spec §6).

Static coding: the analog image is the input current of the first layer at every step; the
first layer runs once per image (:class:`~sjunet.layers.static_synapse.StaticInputSynapse`). The output layer
is not spiking: the decoded output is I_in^L / T = (1/T) Σ_t C_t^L, in the ANN's units.
Segmentation takes its argmax over classes, denoising uses it as the noise map.

Two modes give the same numbers (with ``fuse=False``; fused, within float rounding):

* ``step`` — single-step mode, one step at a time (memory independent of T). The default. On a
  CPU its convolutions add into the membranes of the neurons they feed, channels-last
  (:mod:`sjunet.snn.fusion`: the same numbers within float rounding; ``fuse=False`` runs the
  modules as they are), and on whole 512² images a step costs less than an ANN forward
  (``python -m sjunet.benchmarks step_cost``);
* ``multi`` — SpikingJelly multi-step mode, layer by layer over ``[t, B, …]`` for chunks of
  ``chunk`` steps (memory grows with the chunk, not with T). ``chunk="auto"`` (the default) takes
  as many steps as keep a chunk's largest tensor within the last-level cache
  (:func:`memory_chunk`): on small images multi-step chunks win (the per-module overhead is shared
  by the chunk), on large ones a chunk of one step — run in single-step mode — is the fastest.

Every run streams (:func:`sjunet.layers.buffers.streaming`): neurons update their state in place and
write their output, like concatenations and spiking max-pools, into buffers reused across steps.

The state is reset (``functional.reset_net``) before every input, so a batch-size change
cannot leak or silently re-initialise state.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

import torch
from spikingjelly.activation_based import functional
from torch import nn

from sjunet.graph import apply_post
from sjunet.layers.buffers import cache_bytes, streaming
from sjunet.neurons import is_neuron, set_recording
from sjunet.snn.file import check_graph
from sjunet.snn.model import record_of, shape_rule
from sjunet.snn.footprint import BudgetError, Plan, Unmodelled, check_budget, plan
from sjunet.snn.footprint_run import run_plan
from sjunet.snn.fusion import fused
from sjunet.snn.shapes import RecordError

MODES = ("multi", "step")


def _as_steps(T: int | Sequence[int]) -> list[int]:
    steps = sorted({int(t) for t in ([T] if isinstance(T, int) else T)})
    if not steps or steps[0] < 1:
        raise ValueError(f"time steps must be positive integers, got {T}")
    return steps


#: ``chunk="auto"``: steps per multi-step chunk chosen by memory (:func:`memory_chunk`)
AUTO = "auto"


def memory_chunk(step_bytes: int, T: int, device: torch.device | str = "cpu") -> int:
    """Steps per multi-step chunk: as many as keep the largest tensor of a chunk (``step_bytes``
    per step) within a quarter of the last-level cache on a CPU (a layer's input and output chunks
    live together, and the cores share the cache), within :func:`cache_bytes` on a GPU; at least 1
    and at most T. Measured crossover (``python -m sjunet.benchmarks step_cost``, crossover table,
    width-16 U-Net, 32 MiB cache): multi-step chunks beat single steps by 15–40 % at 64²–128² and
    lose from 256² on (its largest tensor, 8 MB, a quarter of the cache); at 512² the chunk is 1."""
    budget = cache_bytes(device) // (4 if torch.device(device).type == "cpu" else 1)
    return int(max(1, min(T, budget // max(1, int(step_bytes)))))


def check_chunk(chunk: int | str) -> int | str:
    """``chunk`` as given: a positive integer, or ``"auto"``; anything else is refused in one line."""
    if chunk == AUTO:
        return chunk
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer or 'auto', got {chunk!r}")
    return chunk


class _Stepper:
    """Advances a network on a static input, step by step or in multi-step chunks; chunks of one
    step run in single-step mode (the same numbers, no multi-step overhead). ``chunk="auto"``
    measures the largest tensor of the first step (run in single-step mode) and takes
    :func:`memory_chunk` for the rest; an integer chunk is at most that (``cap``): a chunk whose
    tensors outgrow the cache is slower per step than single steps (the measured crossover), and the
    numbers are the same either way. ``cap=False`` runs exactly ``chunk`` steps at once."""

    def __init__(self, snn: nn.Module, x: torch.Tensor, mode: str, chunk: int | str, T: int,
                 cap: bool = True, fuse: bool = True) -> None:
        self.snn, self.x, self.T = snn, x, T
        self.chunk = 1 if mode == "step" else chunk
        self.probe = self.chunk == AUTO or (cap and self.chunk != 1)
        self.mode = None
        # single steps (and the probe step, one too): the synapses integrate into the membranes where they
        # can (sjunet.snn.fusion); multi-step chunks run the modules as they are
        self.net = (fused(snn, x) if fuse and (self.chunk == 1 or self.probe) else None) or snn

    def _set(self, mode: str) -> None:
        if mode != self.mode:
            functional.set_step_mode(self.snn, mode)
            self.mode = mode

    def _probe(self) -> tuple[torch.Tensor, int]:
        from torch.nn.modules.module import register_module_forward_hook

        largest = [0]
        mine = set(map(id, [*self.snn.modules(), *self.net.modules()])) - {id(self.snn), id(self.net)}

        def hook(m, _inputs, out):  # global, so the modules keep their fast paths (hooked ones do not)
            if id(m) in mine:
                for o in (out if isinstance(out, (tuple, list)) else (out,)):
                    if isinstance(o, torch.Tensor):
                        largest[0] = max(largest[0], o.numel() * o.element_size())

        handle = register_module_forward_hook(hook)
        try:
            self._set("s")
            y = self.net(self.x)
        finally:
            handle.remove()
        return y, largest[0]

    def run(self, n: int):
        """Yield the outputs of the next ``n`` steps, one per step."""
        done = 0
        while done < n:
            if self.probe:
                y, step_bytes = self._probe()
                fit = memory_chunk(step_bytes, self.T, self.x.device)
                self.chunk = fit if self.chunk == AUTO else min(self.chunk, fit)
                self.probe = False
                done += 1
                yield y
                continue
            c = min(self.chunk, n - done)
            if self.chunk == 1:
                self._set("s")
                yield self.net(self.x)
            else:
                self._set("m")
                yield from self.snn(self.x.unsqueeze(0).expand(c, *self.x.shape))
            done += c


@torch.no_grad()
def auto_chunk(snn: nn.Module, x: torch.Tensor, T: int) -> int:
    """The chunk ``simulate(snn, x, T, mode="multi")`` takes (``chunk="auto"``): one probe step."""
    functional.reset_net(snn)
    with streaming(snn):
        stepper = _Stepper(snn, x, "multi", AUTO, T)
        for _ in stepper.run(1):
            pass
    functional.reset_net(snn)
    return int(stepper.chunk)


@torch.no_grad()
def simulate(
    snn: nn.Module,
    x: torch.Tensor,
    T: int | Sequence[int],
    mode: str = "step",
    chunk: int | str = AUTO,
    post: bool = True,
    on_checkpoint=None,
    cap_chunk: bool = True,
    fuse: bool = True,
) -> dict[int, torch.Tensor]:
    """Run ``snn`` on image batch ``x`` ([B, C, H, W]) for max(T) steps.

    Returns ``{t: I_in^L(t) / t}`` for every requested ``t`` (one run serves them all), with the
    ANN's output-side ops (sigmoid, softmax; stripped at conversion) applied when ``post``.
    ``on_checkpoint(t, x)`` is called when step ``t`` of the requested ones is reached (before the
    state is reset): energy counting reads the neurons' counters there. ``mode="multi"`` runs
    chunks of ``chunk`` steps (``"auto"``: by memory, :func:`memory_chunk`; an integer: at most that
    many, fewer where memory says a chunk would be slower than single steps — the same numbers;
    ``cap_chunk=False``: exactly ``chunk``, for measuring the crossover). Single steps on a CPU run
    the convolutions fused with the neurons they feed (:mod:`sjunet.snn.fusion`; the same numbers
    within float rounding); ``fuse=False`` runs the modules as they are. The network streams
    (:func:`sjunet.layers.buffers.streaming`): a step allocates nothing, and its buffers stay for the next
    input (:func:`sjunet.layers.buffers.release_buffers` frees them).
    """
    check_chunk(chunk)
    if mode not in MODES:
        raise ValueError(f"unknown simulation mode {mode!r}; choose one of {MODES}")
    if x.dim() not in (4, 5):
        raise ValueError(f"expected an image batch [B, C, H, W] or a volume batch [B, C, D, H, W], got shape "
                         f"{tuple(x.shape)}")
    check_input(snn, x, mode, chunk)
    steps = _as_steps(T)
    functional.reset_net(snn)
    out: dict[int, torch.Tensor] = {}
    acc: torch.Tensor | None = None
    t = 0
    with streaming(snn):
        stepper = _Stepper(snn, x, mode, chunk, steps[-1], cap_chunk, fuse)
        for target in steps:
            for y in stepper.run(target - t):  # step by step, so both modes sum in the same order
                acc = y + 0.0 if acc is None else acc.add_(y)  # its own tensor: y may be a reused buffer
            t = target
            out[target] = acc / target
            if on_checkpoint is not None:
                on_checkpoint(target, x)
    functional.reset_net(snn)
    rec = record_of(snn)
    ops = rec.post if post and rec is not None else None
    return {t: apply_post(ops, y) for t, y in out.items()} if ops else out


_PLANS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def check_run(net: nn.Module, x_shape: Sequence[int], mode: str = "step", chunk: int = 1, device="cpu") -> Plan | None:
    """Before ``net`` runs on a batch of shape ``x_shape`` ([B, C, *spatial]): the shapes of a network
    rebuilt from a record (a :class:`~sjunet.snn.model.SpikingUNet` with a graph record; None for any
    other module) and the memory of the run against the budget (:mod:`sjunet.snn.footprint`), in one
    line naming the file, the node and the field. Cached per network and input shape."""
    rec = record_of(net)
    graph = rec.graph if rec is not None else None
    if not isinstance(graph, dict):
        return None
    source = (getattr(net, "source", None) or {}).get("path")
    prefix = f"{source}: " if source else ""
    cache = _PLANS.setdefault(net, {})
    key = (id(graph), tuple(int(v) for v in x_shape[1:]))
    try:
        if key not in cache:
            if ("graph", id(graph)) not in cache:
                cache[("graph", id(graph))] = check_graph(graph)
            nodes, modules = cache[("graph", id(graph))]
            try:
                cache[key] = plan(nodes, modules, key[1])
            except Unmodelled:  # token plumbing / Σ-Δ products: one step on the meta device
                cache[key] = run_plan(net, key[1])
        p = cache[key]
        check_budget(p, int(x_shape[0]), mode, chunk, device)
    except RecordError as e:
        raise RecordError(f"{prefix}{e}") from None
    except BudgetError as e:
        raise BudgetError(f"{prefix}{e}") from None
    return p


def check_input(snn: nn.Module, x: torch.Tensor, mode: str = "step", chunk: int = 1) -> None:
    """Refuse an input size the conversion's shape-specialised constants (padding, interpolation
    and pooling sizes computed from shapes) do not hold for (its ``size_rule``); for a network
    rebuilt from a record, refuse one whose shapes a field makes impossible or whose run would
    exceed the memory budget (:func:`check_run`), before anything runs."""
    from sjunet.graph import check_input_size

    check_input_size(shape_rule(snn), x.shape[2:])
    check_run(snn, tuple(x.shape), mode, chunk, x.device)


def run_steps(snn: nn.Module, x: torch.Tensor, T: int, chunk: int | str = 1) -> None:
    """Advance ``snn`` by T steps on static input ``x`` without resetting it (for recorders):
    single-step mode when ``chunk`` is 1, else multi-step chunks of ``chunk`` steps (``"auto"``:
    by memory, :func:`memory_chunk`). The network streams (:func:`sjunet.layers.buffers.streaming`)."""
    check_chunk(chunk)
    check_input(snn, x, "step" if chunk == 1 else "multi", chunk)
    with streaming(snn):
        for _ in _Stepper(snn, x, "multi", chunk, T).run(T):
            pass


@dataclass
class FlowRecord:
    """What a recorded simulation leaves, per neuron layer (by module path): the accumulated
    output flow I_out = Σ_t o(t) (paper Eq. 10), the gate [I_in > 0] (for a Σ-Δ neuron, the tuple of
    its accumulated inputs: the flow takes f' there) and, on request, the accumulated input current
    I_in = Σ_t I(t) (paper Eq. 9)."""

    T: int
    outputs: dict[str, torch.Tensor]
    gates: dict[str, torch.Tensor]
    inputs: dict[str, torch.Tensor] | None = None
    spikes: dict[str, torch.Tensor] | None = None  # threshold spikes per neuron (only when count_spikes)


@torch.no_grad()
def record_flow(snn: nn.Module, x: torch.Tensor, T: int, chunk: int = 1, keep_inputs: bool = False,
                count_spikes: bool = False) -> FlowRecord:
    """Simulate T steps recording I_out and the gate [I_in > 0] of every neuron layer (the first
    step of spiking-flow fine-tuning, Algorithm 1; also the SNN side of activation-vs-rate plots).

    ``chunk=1`` runs SpikingJelly's single-step mode, so the simulation holds one step's
    activations (memory independent of T); larger chunks run multi-step chunks. I_in is turned
    into a boolean gate as soon as the simulation ends and then dropped, unless ``keep_inputs``.
    Spikes are counted only with ``count_spikes`` (spike-budget fine-tuning).
    """
    check_input(snn, x, "step" if chunk <= 1 else "multi", chunk)
    functional.reset_net(snn)
    neurons = {n: m for n, m in snn.named_modules() if is_neuron(m)}
    set_recording(snn, True, spikes=count_spikes)
    outs, gates, ins, spikes = {}, {}, {} if keep_inputs else None, {} if count_spikes else None
    try:
        run_steps(snn, x, T, chunk)
        for n, m in neurons.items():  # read each layer, then free its state at once (a lower peak)
            outs[n] = m.output_flow()
            i_in = m.input_current()
            # a Σ-Δ neuron's flow needs its accumulated inputs themselves (f' at the mean input)
            gates[n] = tuple(m.flow_inputs()) if hasattr(m, "flow_vjp") else i_in > 0
            if keep_inputs:
                ins[n] = i_in
            if count_spikes:
                spikes[n] = m.spike_count
            del i_in
            m.reset()
            m.release_buffers()
    finally:
        set_recording(snn, False)
        functional.reset_net(snn)  # frees membranes and the I_in accumulators
    return FlowRecord(T, outs, gates, ins, spikes)
