"""Neurons (paper §3.2, Eq. 4–6; spec §3) behind one small interface, and the static input synapse.

**The neuron interface** (:class:`SpikingNeuron`, a SpikingJelly ``BaseNode``) is all that
simulation, spiking-flow fine-tuning, energy counting and plots use of a neuron layer:

* flags ``record`` (accumulate the output flow) and ``record_spikes`` (count spikes), switched by
  :func:`set_recording`;
* :meth:`SpikingNeuron.output_flow` = I_out = Σ_t o(t) (paper Eq. 10),
  :meth:`SpikingNeuron.input_current` = I_in = Σ_t I(t) (paper Eq. 9), and memories
  ``spike_count`` = Σ_t (threshold crossings) and ``event_count`` = Σ_t [o(t) ≠ 0] (graded events:
  one message per non-zero output, however many thresholds fired), reset by
  ``functional.reset_net``;
* ``quantum`` (the smallest non-zero output), ``max_output`` (the largest output of one step:
  a saturated neuron; capped ReLUs use it) and :meth:`spec`
  (constructor arguments as plain data, so an SNN file rebuilds it without code).

A new neuron type subclasses :class:`SpikingNeuron`, registers itself in :data:`NEURON_TYPES`
and gets a factory in :data:`FACTORIES`; the recipe, flow, energy and plots need no edit.

Multi-threshold neuron, Norse-style:

* :func:`threshold_ladder` builds the ladder θ_1 > … > θ_N (Theorem 3.1's halving rule by default);
* :func:`mt_step` is the pure step function of (input, membrane, ladder);
* :class:`MultiThresholdNode` wraps it as a SpikingJelly 2.x neuron (``BaseNode``), with
  single- and multi-step modes, reset by ``functional.reset_net``, and switchable recording
  of the accumulated input current, output flow and spike count.

The integrate-and-fire (IF) neuron is the same class with one threshold.

Leaky ReLU and PReLU (spec §11): :func:`signed_mt_step` / :class:`SignedMultiThresholdNode` — the MT
neuron with the ladder mirrored below its dead zone and negative spikes of amplitude α·θ_i (α per
channel for PReLU); its rate tends to LeakyReLU_α of the input current, with the proof in
:func:`signed_mt_step`. Factories build it when the recipe passes ``negative_slope``.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from spikingjelly.activation_based import base, neuron
from torch import nn


def threshold_ladder(n: int = 4, top: float = 2.0, ratio: float = 0.5) -> tuple[float, ...]:
    """Thresholds ``(top, top·ratio, top·ratio², …)`` of length ``n``.

    The default ``ratio=0.5`` is the halving rule of Theorem 3.1: for V ~ U[0, 1] and a ladder
    whose smallest threshold is 2^-N it minimises the expected quantisation error, which is then
    1/2^(N+1). ``threshold_ladder(4)`` is the paper's (2, 1, 0.5, 0.25).
    """
    if n < 1:
        raise ValueError(f"a threshold ladder needs n >= 1 thresholds, got {n}")
    if not (top > 0 and math.isfinite(top)):
        raise ValueError(f"the top threshold must be a positive number, got {top}")
    if not 0 < ratio < 1 and n > 1:
        raise ValueError(f"ratio must be in (0, 1) so thresholds decrease, got {ratio}")
    return tuple(float(top * ratio**i) for i in range(n))


def validate_ladder(thresholds: Sequence[float]) -> tuple[float, ...]:
    """Return the ladder as a tuple of floats; refuse an empty, unsorted or non-positive one."""
    th = tuple(float(t) for t in thresholds)
    if not th:
        raise ValueError("the threshold ladder is empty: give at least one threshold")
    if any(not (t > 0 and math.isfinite(t)) for t in th):
        raise ValueError(f"thresholds must be positive and finite, got {th}")
    if any(a <= b for a, b in zip(th, th[1:])):
        raise ValueError(f"thresholds must be strictly decreasing (largest first), got {th}")
    return th


def is_halving(thresholds: Sequence[float]) -> bool:
    """True if every threshold is exactly half the previous one (Theorem 3.1's ladder)."""
    return all(b * 2.0 == a for a, b in zip(thresholds, thresholds[1:]))


def mt_step_surrogate(
    x: torch.Tensor, v: torch.Tensor, thresholds: Sequence[float], spike_fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mt_step` with differentiable spikes ``s_i = spike_fn(V − θ_i)`` (a SpikingJelly
    surrogate: Heaviside ``[V − θ_i ≥ 0]`` forward, smooth gradient backward), for training
    through time (BPTT). Forward values equal :func:`mt_step`'s."""
    v = v + x
    o = torch.zeros_like(v)
    for th in thresholds:
        s = spike_fn(v - th)
        o = o + th * s
        v = v - th * s
    return o, v


def _popcount(k: torch.Tensor, bits: int) -> torch.Tensor:
    n = torch.zeros_like(k)
    for i in range(bits):
        n += (k >> i) & 1
    return n


def mt_step(
    x: torch.Tensor,
    v: torch.Tensor,
    thresholds: Sequence[float],
    count_spikes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    r"""One time step of the multi-threshold neuron (paper Eq. 4–6, spec §3).

    .. math::

        V \leftarrow V + I(t); \quad
        \text{for } i = 1..N \text{ (largest first)}:\;
        s_i = [V \ge \theta_i],\; V \leftarrow V - \theta_i s_i; \quad
        o(t) = \sum_i \theta_i s_i

    At most one spike per threshold per step; reset by subtraction keeps the residue. With the
    halving ladder this is a floor quantiser with a cap,
    ``o = θ_N · clamp(floor(V/θ_N), 0, 2^N − 1)``, which is what runs (a few fused elementwise
    ops); other ladders run the comparison loop. ``≥`` (not the official code's ``>``) is the
    floor quantiser Theorem 3.1 assumes.

    Returns ``(o, v_new, n_spikes)``; ``n_spikes`` (spikes emitted this step, Σ_i s_i) is
    ``None`` unless ``count_spikes``.
    """
    v = v + x
    if is_halving(thresholds):
        lo = thresholds[-1]
        levels = (1 << len(thresholds)) - 1
        # five elementwise passes, two allocations: k = clamp(floor(V/θ_N)), o = kθ_N, V -= o
        k = torch.floor_divide(v, lo).clamp_(0, levels)
        n = _popcount(k.to(torch.int32), len(thresholds)).to(x.dtype) if count_spikes else None
        o = k.mul_(lo)
        return o, v.sub_(o), n
    o = torch.zeros_like(v)
    n = torch.zeros_like(v) if count_spikes else None
    for th in thresholds:
        s = (v >= th).to(v.dtype)
        o = o + th * s
        v = v - th * s
        if n is not None:
            n = n + s
    return o, v, n


class SpikingNeuron(neuron.BaseNode):
    """The neuron interface (module docstring). Subclasses implement the SpikingJelly step
    functions and keep ``acc_output`` / ``spike_count`` when ``record`` / ``record_spikes``."""

    record: bool
    record_spikes: bool
    #: smallest non-zero output of one step (normalised units)
    quantum: float = 1.0
    #: largest output of one step (normalised units)
    max_output: float = 1.0

    def _init_interface(self) -> None:
        """The interface's switches (all off) and memories ``acc_output``, ``spike_count``, ``event_count``."""
        self.record = False
        #: count spikes (``spike_count``) — for energy accounting; off by default (it costs memory)
        self.record_spikes = False
        #: when True and autograd is on, spikes go through ``self.surrogate_function`` (BPTT)
        self.surrogate_gradient = False
        self.register_memory("acc_output", 0.0)
        self.register_memory("spike_count", 0.0)
        self.register_memory("event_count", 0.0)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """The ANN activation this neuron's rate stands for, in normalised units (a ReLU; signed
        neurons: a leaky ReLU). Distillation's teacher runs it in place of the neuron."""
        return torch.relu(x)

    def activation_gradient(self, gate: torch.Tensor) -> torch.Tensor:
        """d activation / d input where ``gate`` = [input > 0] (booleans): the straight-through
        factor of spiking-flow fine-tuning. A ReLU's is the gate itself."""
        return gate

    def output_flow(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def input_current(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def spec(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError


def is_neuron(m: nn.Module | None) -> bool:
    """Whether ``m`` is a neuron layer (implements :class:`SpikingNeuron`)."""
    return isinstance(m, SpikingNeuron)


class MultiThresholdNode(SpikingNeuron):
    """SpikingJelly neuron running :func:`mt_step`; ``thresholds=(1.0,)`` is the IF neuron.

    Thresholds are in the normalised domain (the converter scales weights so θ = 1 is the
    layer's 99.9th-percentile activation); ``v_threshold`` is that unit level (1.0), as
    SpikingJelly's ``ann2snn`` expects. Memories (reset by ``functional.reset_net``):

    * ``v`` — membrane potential, ``v_init`` after reset (default 0, as in the paper);
    * ``acc_output`` — Σ_t o(t), the output flow I_out (paper Eq. 10), read by
      :meth:`output_flow`. With a halving ladder every output is a whole number of quanta θ_N, so
      the sum is kept as an integer count of quanta (int16, widened to int32 before it could
      overflow): exact, and half the memory of a float32 accumulator (the spiking-flow trainer
      holds one per neuron layer while it simulates);
    * ``spike_count`` — Σ_t Σ_i s_i(t); ``event_count`` — Σ_t [o(t) ≠ 0].

    ``acc_output`` is recorded only while ``record`` is True, the counts only while
    ``record_spikes`` is True (``set_recording``); otherwise they stay ``0.0`` and cost nothing.
    The accumulated input current I_in = Σ_t I(t) (paper Eq. 9) needs no memory of its own: reset
    by subtraction gives V_T = V_0 + I_in − I_out, so :meth:`input_current` returns
    V_T − V_0 + I_out.
    """

    def __init__(self, thresholds: Sequence[float] = (2.0, 1.0, 0.5, 0.25), step_mode: str = "s",
                 v_init: float = 0.0) -> None:
        super().__init__(v_threshold=1.0, v_reset=None, step_mode=step_mode)
        self.thresholds = validate_ladder(thresholds)
        #: membrane potential after reset (0: the paper; θ_N/2 turns the floor quantiser into rounding)
        self.v_init = float(v_init)
        self.set_reset_value("v", self.v_init)
        self.v = self.v_init
        self._init_interface()
        self._flow_steps = 0  # steps in acc_output (bounds its integer count)

    def extra_repr(self) -> str:
        return f"thresholds={self.thresholds}, v_init={self.v_init}, step_mode={self.step_mode}, record={self.record}"

    @property
    def quantum(self) -> float:
        return self.thresholds[-1]

    @property
    def max_output(self) -> float:
        return float(sum(self.thresholds))

    def spec(self) -> dict:
        return {"thresholds": list(self.thresholds), "v_init": self.v_init}

    def materialize_states(self, inputs, states, step_mode):
        v = super().materialize_states(inputs, states, step_mode)[0]
        return (v, *states[1:])

    def output_flow(self) -> torch.Tensor:
        """I_out = Σ_t o(t) since the last reset (needs ``record`` on)."""
        acc = self.acc_output
        if isinstance(acc, float):
            raise RuntimeError("output_flow() needs a simulation with recording on (set_recording)")
        return acc.to(self.v.dtype) * self.thresholds[-1] if not acc.is_floating_point() else acc

    def input_current(self) -> torch.Tensor:
        """I_in = Σ_t I(t) since the last reset, as V_T − V_0 + I_out (needs ``record`` on)."""
        return self.v - self.v_init + self.output_flow()

    @staticmethod
    def _accumulate(acc, value):
        return value if isinstance(acc, float) else acc + value

    def _accumulate_flow(self, acc, o: torch.Tensor, steps: int = 1):
        """Add ``o`` (summed over ``steps`` steps) to the output flow: whole quanta as integers with a
        halving ladder (exact; int16, or int32 once the count could pass 32767), else floats."""
        if not is_halving(self.thresholds):
            return self._accumulate(acc, o)
        q = torch.round(o / self.thresholds[-1])
        self._flow_steps = (0 if isinstance(acc, float) else self._flow_steps) + steps
        bound = ((1 << len(self.thresholds)) - 1) * self._flow_steps  # the largest count possible so far
        dtype = torch.int16 if bound <= 32767 else torch.int32
        if isinstance(acc, float):
            return q.to(dtype)
        if acc.dtype != dtype and dtype == torch.int32:
            acc = acc.to(torch.int32)
        return acc + q.to(acc.dtype)

    def _step(self, x, v):
        if self.surrogate_gradient and torch.is_grad_enabled():
            o, v = mt_step_surrogate(x, v, self.thresholds, self.surrogate_function)
            return o, v, None
        return mt_step(x, v, self.thresholds, count_spikes=self.record_spikes)

    def single_step_functional_forward(self, inputs, states, **kwargs):
        x = inputs[0]
        v, acc_out, count, events = states
        o, v, n = self._step(x, v)
        if self.record:
            acc_out = self._accumulate_flow(acc_out, o)
        if n is not None:
            count = self._accumulate(count, n)
            events = self._accumulate(events, (o != 0).to(o.dtype))
        return (o,), (v, acc_out, count, events)

    def multi_step_functional_forward(self, inputs, states, **kwargs):
        x_seq = inputs[0]
        v, acc_out, count, events = states
        steps = []
        n_sum = None
        for t in range(x_seq.shape[0]):
            o, v, n = self._step(x_seq[t], v)
            steps.append(o)
            if n is not None:
                n_sum = n if n_sum is None else n_sum + n
        out = torch.stack(steps)
        if self.record and x_seq.shape[0]:
            acc_out = self._accumulate_flow(acc_out, out.sum(0), steps=x_seq.shape[0])
        if n_sum is not None:
            count = self._accumulate(count, n_sum)
            events = self._accumulate(events, (out != 0).to(out.dtype).sum(0))
        return (out,), (v, acc_out, count, events)


def IFNode(threshold: float = 1.0, step_mode: str = "s") -> MultiThresholdNode:  # noqa: N802
    """The integrate-and-fire baseline: a :class:`MultiThresholdNode` with one threshold."""
    return MultiThresholdNode((threshold,), step_mode=step_mode)


def _per_channel(slope, x: torch.Tensor):
    """``slope`` (a number, or a [C] tensor) broadcast against a step tensor ``x`` [B, C, ...]
    (per channel along dim 1)."""
    if isinstance(slope, torch.Tensor) and slope.dim() == 1 and slope.numel() > 1:
        return slope.to(x.dtype).view(-1, *([1] * (x.dim() - 2))) if x.dim() >= 2 else slope.to(x.dtype)
    return slope


def leaky(x: torch.Tensor, negative_slope) -> torch.Tensor:
    """LeakyReLU_α(x) = x for x > 0, α·x otherwise; α a number or a per-channel [C] tensor (dim 1)."""
    return torch.where(x > 0, x, x * _per_channel(negative_slope, x))


def _signed_charge(v: torch.Tensor, thresholds: Sequence[float], count_spikes: bool):
    """The signed ladder on membrane ``v`` (after integration): ``(m, n)``, m = Σ_i θ_i (s⁺_i − s⁻_i)."""
    if is_halving(thresholds):
        lo = thresholds[-1]
        levels = (1 << len(thresholds)) - 1
        k = torch.floor_divide(v, lo).clamp_(-levels, levels)
        n = _popcount(k.abs().to(torch.int32), len(thresholds)).to(v.dtype) if count_spikes else None
        return k.mul_(lo), n
    m = torch.zeros_like(v)
    n = torch.zeros_like(v) if count_spikes else None
    for th in thresholds:  # positive spikes: the MT ladder
        s = (v - m >= th).to(v.dtype)
        m = m + th * s
        if n is not None:
            n = n + s
    lo = thresholds[-1]
    for th in thresholds:  # negative spikes: the ladder mirrored about θ_N/2 (strict: V = 0 stays)
        s = (lo - (v - m) > th).to(v.dtype)
        m = m - th * s
        if n is not None:
            n = n + s
    return m, n


def signed_mt_step(
    x: torch.Tensor,
    v: torch.Tensor,
    charge: torch.Tensor | float,
    thresholds: Sequence[float],
    negative_slope,
    count_spikes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    r"""One time step of the signed multi-threshold neuron: a leaky ReLU / PReLU in the rate limit.

    .. math::

        V \leftarrow V + I(t);\quad
        \text{for } i = 1..N:\; s^+_i = [V \ge \theta_i],\; V \leftarrow V - \theta_i s^+_i;\quad
        \text{for } i = 1..N:\; s^-_i = [\theta_N - V > \theta_i],\; V \leftarrow V + \theta_i s^-_i;

        m(t) = \sum_i \theta_i (s^+_i - s^-_i),\quad M(t) = M(t-1) + m(t),\quad
        o(t) = f_\alpha(M(t)) - f_\alpha(M(t-1)),\quad f_\alpha = \mathrm{LeakyReLU}_\alpha

    The membrane is :func:`mt_step`'s with the ladder mirrored below its *dead zone* [0, θ_N): a
    negative spike fires while V < 0 and lifts V by θ_i (reset by addition; at most one spike per
    threshold and sign per step). ``charge`` M is the signed charge emitted so far (M(0) = 0). A spike
    carries amplitude θ_i while M ≥ 0 and α·θ_i while M < 0 — so a negative spike from a neuron whose
    count is below zero outputs −α·θ_i, and a spike that moves M back across zero cancels exactly
    what the earlier ones emitted. With the halving ladder both loops are one signed floor
    quantiser, ``k = clamp(floor(V/θ_N), −(2^N − 1), 2^N − 1)``, ``m = kθ_N`` (what runs).
    α (``negative_slope``) is a number or a per-channel [C] tensor broadcast over dim 1 of
    ``x`` [B, C, ...] (PReLU); any finite α (PReLU's may be negative or > 1).

    **Exact in the limit, for any input sequence.** The outputs telescope: Σ_{t≤T} o(t) = f_α(M(T)).
    The membrane update sums to M(T) = Σ_t I(t) + V_0 − V_T, and every step leaves V in [0, θ_N)
    unless the ladder saturates (|m| ≤ Σθ_i per step). So for inputs whose partial sums do not
    outrun the ladder, |M(T) − Σ_t I(t) − V_0 + θ_N/2| ≤ θ_N/2 and the rate is
    (1/T)·Σ_t o(t) = f_α((1/T)·Σ_t I(t)) + O(θ_N/T) — for a constant input I it is LeakyReLU_α(I)
    (only one side then fires: the partial sums are monotone), and for the fluctuating currents of a
    deep network it is LeakyReLU_α of the mean current, with no bias from fluctuations around zero
    (a neuron whose charge is M pays back exactly f_α(M) whichever way it crosses zero). With
    ``V_0 = θ_N/2`` (the recipe's ``v_init="half"``, as for ReLU neurons) M(T) = θ_N·round(Σ_t I/θ_N)
    on both sides — symmetric rounding, |error| ≤ θ_N/2 (·|α| below zero) — because the ladder is
    mirrored about θ_N/2, the centre of the dead zone; with ``V_0 = 0`` it is the floor on both sides,
    as for the paper's ReLU neuron. (Mirroring about 0 — negative spikes at V ≤ −θ_i — would widen the
    dead zone to (−θ_N, θ_N): no single V_0 then rounds both sides. Amplitudes tied to the spike's sign
    alone, α·θ_i for every negative spike, would make f_α of the mean only for constant inputs: a
    fluctuating current would fire both ways and be rectified, a bias measured at 3–5 % of the output
    on small random nets that no T removes.)

    Returns ``(o, v_new, charge_new, n)``; ``n`` (spikes of both signs this step, Σ_i s⁺_i + s⁻_i)
    is ``None`` unless ``count_spikes``. The input current so far is I_in = V − V_0 + M.
    """
    v = v + x
    m, n = _signed_charge(v, thresholds, count_spikes)
    new = charge + m
    o = leaky(new, negative_slope) - (leaky(charge, negative_slope) if isinstance(charge, torch.Tensor) else 0.0)
    return o, v.sub_(m), new, n


def signed_mt_step_surrogate(x: torch.Tensor, v: torch.Tensor, charge, thresholds: Sequence[float], negative_slope,
                             spike_fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`signed_mt_step` with differentiable spikes (BPTT): the same forward values, the
    gradients of the SpikingJelly surrogate ``spike_fn`` on both sides. Returns ``(o, v_new, charge_new)``."""
    v = v + x
    m = torch.zeros_like(v)
    for th in thresholds:
        s = spike_fn(v - m - th)
        m = m + th * s
    lo = thresholds[-1]
    for th in thresholds:
        z = lo - (v - m) - th
        g = spike_fn(z)
        s = (z > 0).to(v.dtype) + (g - g.detach())  # strict > forward, surrogate gradient backward
        m = m - th * s
    new = charge + m
    o = leaky(new, negative_slope) - (leaky(charge, negative_slope) if isinstance(charge, torch.Tensor) else 0.0)
    return o, v - m, new


class AdvancedByStep:
    """SpikingJelly's functional forwards of a neuron defined by one ``_advance(x, states) -> (o,
    states)`` step: multi-step mode runs the same per-step arithmetic, so both modes agree exactly."""

    def single_step_functional_forward(self, inputs, states, **kwargs):
        o, states = self._advance(inputs[0], states)
        return (o,), states

    def multi_step_functional_forward(self, inputs, states, **kwargs):
        outs = []
        for x in inputs[0]:  # the same per-step arithmetic as single-step: identical results
            o, states = self._advance(x, states)
            outs.append(o)
        return (torch.stack(outs),), states


class SignedMultiThresholdNode(AdvancedByStep, MultiThresholdNode):
    """The signed MT neuron (:func:`signed_mt_step`): replaces a ``LeakyReLU(α)`` or a ``PReLU``.

    One population, no weight duplication: the positive half is the MT neuron; below zero the
    ladder is mirrored and spikes carry α·θ_i, so the rate tends to LeakyReLU_α of the mean input
    current with error O(θ_N/T) (proof in :func:`signed_mt_step`). Compared with the spec's
    two-population construction (αx + (1 − α)·ReLU(x): a signed population beside the ReLU one,
    merged by the next layer's weights) it has half the neurons, the next layer's weights are
    untouched, and a neuron whose input stays on one side fires only on that side.

    Args:
        thresholds: the ladder, largest first (as :class:`MultiThresholdNode`; ``(1.0,)``: signed IF).
        negative_slope: α, a number (LeakyReLU, PReLU with one parameter) or a [C] tensor (PReLU per
            channel, broadcast over dim 1 of a [B, C, ...] step). A per-channel α is the buffer
            ``negative_slope`` (in the state dict, so SNN files carry it), not a parameter:
            fine-tuning keeps it fixed.
        channels: C for a per-channel α (0: a number); set from a tensor ``negative_slope``.
        v_init: membrane after reset; θ_N/2 (the recipe's default ``"half"``) rounds symmetrically on
            both sides, 0 floors.

    Memories (reset by ``functional.reset_net``): ``v``; ``charge`` = M, the signed charge emitted
    (Σ_t m(t), needed by the dynamics), from which I_out = f_α(M) and I_in = V_T − V_0 + M follow
    exactly, so ``acc_output`` stays unused; ``spike_count`` counts threshold crossings of both signs,
    ``event_count`` the non-zero outputs (recorded with ``record_spikes``). Same ``quantum`` and
    ``max_output`` as the MT neuron on the same ladder (below zero: |α| times them).
    """

    def __init__(self, thresholds: Sequence[float] = (2.0, 1.0, 0.5, 0.25), negative_slope=0.01, channels: int = 0,
                 v_init: float = 0.0, step_mode: str = "s") -> None:
        super().__init__(thresholds, step_mode=step_mode, v_init=v_init)
        values = None
        if isinstance(negative_slope, torch.Tensor):
            values = negative_slope.detach().reshape(-1).float()
            if values.numel() == 1:
                negative_slope, values = float(values), None
            else:
                channels = values.numel()
                negative_slope = float(values.mean()) if values.device.type != "meta" else 0.0
        negative_slope = float(negative_slope)
        if not math.isfinite(negative_slope):
            raise ValueError(f"negative_slope must be finite, got {negative_slope}")
        if type(channels) is not int or channels < 0:
            raise ValueError(f"channels must be a non-negative integer, got {channels!r}")
        self.channels = channels
        if channels:
            self.register_buffer("negative_slope", torch.full((channels,), negative_slope))
            if values is not None:
                if not bool(torch.isfinite(values).all()):
                    raise ValueError("negative_slope must be finite in every channel")
                self.negative_slope.copy_(values)
        else:
            self.negative_slope = negative_slope
        self.register_memory("charge", 0.0)

    def extra_repr(self) -> str:
        a = f"[{self.channels} channels]" if self.channels else self.negative_slope
        return f"thresholds={self.thresholds}, negative_slope={a}, v_init={self.v_init}, step_mode={self.step_mode}"

    def spec(self) -> dict:
        a = float(self.negative_slope.mean()) if self.channels else self.negative_slope
        return {"thresholds": list(self.thresholds), "negative_slope": a, "channels": self.channels,
                "v_init": self.v_init}

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return leaky(x, self.negative_slope)

    def activation_gradient(self, gate: torch.Tensor) -> torch.Tensor:
        a = self.negative_slope
        if isinstance(a, torch.Tensor):
            a = a.to(gate.device).view(-1, *([1] * (gate.dim() - 2)))
        return torch.where(gate, torch.ones((), dtype=torch.float32, device=gate.device),
                           torch.as_tensor(a, dtype=torch.float32, device=gate.device))

    def _charge(self) -> torch.Tensor:
        if isinstance(self.charge, float):
            raise RuntimeError("output_flow() / input_current() need a simulation since the last reset")
        return self.charge

    def output_flow(self) -> torch.Tensor:
        """I_out = Σ_t o(t) = f_α(M) since the last reset (exact: the outputs telescope)."""
        return leaky(self._charge(), self.negative_slope)

    def input_current(self) -> torch.Tensor:
        """I_in = Σ_t I(t) = V_T − V_0 + M since the last reset."""
        return self.v - self.v_init + self._charge()

    def _signed_step(self, x, v, charge):
        if self.surrogate_gradient and torch.is_grad_enabled():
            o, v, charge = signed_mt_step_surrogate(x, v, charge, self.thresholds, self.negative_slope,
                                                    self.surrogate_function)
            return o, v, charge, None
        return signed_mt_step(x, v, charge, self.thresholds, self.negative_slope, count_spikes=self.record_spikes)

    def _advance(self, x, states):
        v, acc_out, count, events, charge = states
        o, v, charge, n = self._signed_step(x, v, charge)
        if n is not None:
            count = self._accumulate(count, n)
            events = self._accumulate(events, (o != 0).to(o.dtype))
        return o, (v, acc_out, count, events, charge)



#: neuron classes an SNN file may name (rebuilt from their ``spec()``)
NEURON_TYPES: dict[str, type[SpikingNeuron]] = {"MultiThresholdNode": MultiThresholdNode,
                                                "SignedMultiThresholdNode": SignedMultiThresholdNode}

#: a neuron factory builds the neuron that replaces one ReLU: ``factory(relu_name) -> module``; for a
#: leaky ReLU / PReLU node the recipe calls ``factory(relu_name, negative_slope=α)`` (α: a number or a
#: per-channel tensor). A factory whose neuron has no signed form refuses that call with a clear
#: ``UnsupportedGraphError`` (:func:`refuse_signed`); one without the keyword is refused by the recipe.
NeuronFactory = Callable[..., nn.Module]


def refuse_signed(neuron: str, relu_name: str) -> None:
    """Raise the one-line refusal of a leaky ReLU / PReLU node by a neuron with no signed form."""
    from sjunet.errors import UnsupportedGraphError

    raise UnsupportedGraphError(
        f"cannot convert node {relu_name!r}: a leaky ReLU / PReLU needs a signed neuron, and {neuron} neurons have "
        "none; convert with --neuron mt or --neuron if")


def mt_factory(thresholds: Sequence[float] = (2.0, 1.0, 0.5, 0.25), v_init: float = 0.0) -> NeuronFactory:
    """Factory of multi-threshold neurons (``thresholds=(1.0,)``: integrate-and-fire); for a leaky
    ReLU / PReLU node (``negative_slope`` given) the signed neuron on the same ladder and ``v_init``."""
    ladder = validate_ladder(thresholds)

    def factory(relu_name: str, negative_slope=None) -> SpikingNeuron:
        if negative_slope is None:
            return MultiThresholdNode(ladder, v_init=v_init)
        return SignedMultiThresholdNode(ladder, negative_slope, v_init=v_init)

    return factory


#: neuron name (``--neuron``) -> (default ladder, factory builder)
FACTORIES: dict[str, tuple[tuple[float, ...], Callable[..., NeuronFactory]]] = {
    "mt": (threshold_ladder(4, 2.0), mt_factory),
    "if": ((1.0,), mt_factory),
}


def set_recording(module: nn.Module, on: bool = True, spikes: bool | None = None) -> list[SpikingNeuron]:
    """Switch recording of the accumulated output (and, with ``spikes``, the spike count; by
    default the same as ``on``) on every neuron in ``module``."""
    nodes = [m for m in module.modules() if is_neuron(m)]
    for m in nodes:
        m.record = on
        m.record_spikes = on if spikes is None else spikes
    return nodes


class StaticInputSynapse(base.MemoryModule):
    """The first (analog) synaptic layer under static coding: computed once per image, not T times.

    Multi-step: if the input sequence is an ``expand`` of one image (stride 0 along T), the layer
    runs on ``x_seq[0]`` and the result is expanded; otherwise every step is computed. Single-step:
    the output for the same input tensor object is cached until ``reset()``.
    """

    def __init__(self, layer: nn.Module, step_mode: str = "s") -> None:
        super().__init__()
        self.layer = layer
        self.step_mode = step_mode
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def supported_step_mode(self):
        return ("s", "m")

    def reset(self) -> None:
        self._cache = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "m":
            if x.stride(0) != 0:  # not a static sequence: compute every step
                return self.layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])
            root = x._base if x._base is not None else x
            y = self._cached(root, lambda: self.layer(x[0]))
            return y.unsqueeze(0).expand(x.shape[0], *y.shape)
        return self._cached(x, lambda: self.layer(x))

    def _cached(self, key: torch.Tensor, compute) -> torch.Tensor:
        # The cache holds a reference to ``key``, so identity cannot be confused with a new
        # tensor at a reused address; it is cleared by reset() (functional.reset_net).
        if torch.is_grad_enabled():
            return compute()
        if self._cache is None or self._cache[0] is not key:
            self._cache = (key, compute())
        return self._cache[1]


# The peer neurons (ML, RS) register themselves in NEURON_TYPES and FACTORIES; importing them here,
# after everything they use is defined, makes the registration happen whenever neurons are used.
from sjunet import peer_neurons as _peer_neurons  # noqa: E402,F401
