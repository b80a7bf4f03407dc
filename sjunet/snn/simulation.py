"""T-step simulation of a converted SNN and decoding (paper §3.1, spec §6).

Static coding: the analog image is the input current of the first layer at every step; the
first layer runs once per image (:class:`~sjunet.layers.static_synapse.StaticInputSynapse`). The output layer
is not spiking: the decoded output is I_in^L / T = (1/T) Σ_t C_t^L, in the ANN's units.
Segmentation takes its argmax over classes, denoising uses it as the noise map.

Two modes give the same numbers:

* ``multi`` — SpikingJelly multi-step mode, layer by layer over ``[t, B, …]`` for chunks of
  ``chunk`` steps (memory grows with the chunk, not with T);
* ``step`` — single-step mode, one step at a time (memory independent of T). The default: on
  CPU it was also the faster one (a step cost 0.95–1.16 ANN forwards on a 512x512 EM image,
  multi-step chunks of 4: 1.18–1.67; ``python -m sjunet.benchmarks step_cost``).

The state is reset (``functional.reset_net``) before every input, so a batch-size change
cannot leak or silently re-initialise state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from spikingjelly.activation_based import functional
from torch import nn

from sjunet.graph import apply_post
from sjunet.neurons import is_neuron, set_recording
from sjunet.snn.model import record_of, shape_rule

MODES = ("multi", "step")


def _as_steps(T: int | Sequence[int]) -> list[int]:
    steps = sorted({int(t) for t in ([T] if isinstance(T, int) else T)})
    if not steps or steps[0] < 1:
        raise ValueError(f"time steps must be positive integers, got {T}")
    return steps


@torch.no_grad()
def simulate(
    snn: nn.Module,
    x: torch.Tensor,
    T: int | Sequence[int],
    mode: str = "step",
    chunk: int = 4,
    post: bool = True,
    on_checkpoint=None,
) -> dict[int, torch.Tensor]:
    """Run ``snn`` on image batch ``x`` ([B, C, H, W]) for max(T) steps.

    Returns ``{t: I_in^L(t) / t}`` for every requested ``t`` (one run serves them all), with the
    ANN's output-side ops (sigmoid, softmax; stripped at conversion) applied when ``post``.
    ``on_checkpoint(t, x)`` is called when step ``t`` of the requested ones is reached (before the
    state is reset): energy counting reads the neurons' counters there.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk}")
    if mode not in MODES:
        raise ValueError(f"unknown simulation mode {mode!r}; choose one of {MODES}")
    if x.dim() not in (4, 5):
        raise ValueError(f"expected an image batch [B, C, H, W] or a volume batch [B, C, D, H, W], got shape "
                         f"{tuple(x.shape)}")
    check_input(snn, x)
    steps = _as_steps(T)
    functional.reset_net(snn)
    functional.set_step_mode(snn, "m" if mode == "multi" else "s")
    out: dict[int, torch.Tensor] = {}
    acc: torch.Tensor | torch.Tensor = 0.0
    t = 0
    for target in steps:
        while t < target:
            if mode == "step":
                acc = acc + snn(x)
                t += 1
            else:
                c = min(chunk, target - t)
                for y in snn(x.unsqueeze(0).expand(c, *x.shape)):
                    acc = acc + y  # step by step, so both modes sum in the same order
                t += c
        out[target] = acc / target
        if on_checkpoint is not None:
            on_checkpoint(target, x)
    functional.reset_net(snn)
    rec = record_of(snn)
    ops = rec.post if post and rec is not None else None
    return {t: apply_post(ops, y) for t, y in out.items()} if ops else out


def check_input(snn: nn.Module, x: torch.Tensor) -> None:
    """Refuse an input size the conversion's shape-specialised constants (padding, interpolation
    and pooling sizes computed from shapes) do not hold for (its ``size_rule``)."""
    from sjunet.graph import check_input_size

    check_input_size(shape_rule(snn), x.shape[2:])


def run_steps(snn: nn.Module, x: torch.Tensor, T: int, chunk: int = 1) -> None:
    """Advance ``snn`` by T steps on static input ``x`` without resetting it (for recorders):
    single-step mode when ``chunk <= 1``, else multi-step chunks of ``chunk`` steps."""
    if chunk <= 1:
        functional.set_step_mode(snn, "s")
        for _ in range(T):
            snn(x)
        return
    functional.set_step_mode(snn, "m")
    t = 0
    while t < T:
        c = min(chunk, T - t)
        snn(x.unsqueeze(0).expand(c, *x.shape))
        t += c


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
    check_input(snn, x)
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
    finally:
        set_recording(snn, False)
        functional.reset_net(snn)  # frees membranes and the I_in accumulators
    return FlowRecord(T, outs, gates, ins, spikes)
