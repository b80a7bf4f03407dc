"""Multi-threshold neuron, Norse-style (paper §3.2, Eq. 4–6; spec §3), behind the neuron interface
(:mod:`sjunet.neurons.base`):

* :func:`~sjunet.neurons.base.threshold_ladder` builds the ladder θ_1 > … > θ_N (Theorem 3.1's
  halving rule by default);
* :func:`mt_step` is the pure step function of (input, membrane, ladder);
* :class:`MultiThresholdNode` wraps it as a SpikingJelly 2.x neuron (``BaseNode``), with
  single- and multi-step modes, reset by ``functional.reset_net``, and switchable recording
  of the accumulated input current, output flow and spike count.

The integrate-and-fire (IF) neuron is the same class with one threshold (:func:`IFNode`).
Its signed form (leaky ReLU / PReLU) is :mod:`sjunet.neurons.signed`; the factory of both is
:func:`sjunet.neurons.registry.mt_factory`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from sjunet.neurons.base import SpikingNeuron, ThresholdLadder, is_halving, validate_ladder


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


def popcount(k: torch.Tensor, bits: int) -> torch.Tensor:
    """Set bits of each element of ``k`` among its lowest ``bits``: the thresholds a step crossed."""
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
    ``o = θ_N · clamp(floor(V · (1/θ_N)), 0, 2^N − 1)``, which is what runs (a few elementwise
    ops); other ladders run the comparison loop. ``≥`` (not the official code's ``>``) is the
    floor quantiser Theorem 3.1 assumes. The floor takes V times 1/θ_N: exact when θ_N is a power
    of two (every named ladder), else within one rounding of V/θ_N at a quantisation boundary.

    This is the reference step; :meth:`MultiThresholdNode.step_into` runs the same arithmetic in
    place (equal bit for bit). Returns ``(o, v_new, n_spikes)``; ``n_spikes`` (spikes emitted this
    step, Σ_i s_i) is ``None`` unless ``count_spikes``.
    """
    v = v + x
    if is_halving(thresholds):
        lo = thresholds[-1]
        levels = (1 << len(thresholds)) - 1
        k = torch.floor(v * (1.0 / lo)).clamp_(0, levels)
        n = popcount(k.to(torch.int32), len(thresholds)).to(x.dtype) if count_spikes else None
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


def mt_step_into(x: torch.Tensor, v: torch.Tensor, out: torch.Tensor, thresholds: Sequence[float],
                 count_spikes: bool = False) -> torch.Tensor | None:
    """:func:`mt_step` in place, equal to it bit for bit: the membrane ``v`` is updated and o(t)
    written into ``out`` (neither may alias ``x``). Returns the spike count of the step when
    ``count_spikes``, else None. With a halving ladder, six elementwise passes and no allocation:
    V += I, k = floor(V·(1/θ_N)) clamped to [0, 2^N − 1], o = kθ_N, V −= o."""
    v.add_(x)
    return mt_fire_into(v, out, thresholds, count_spikes)


def mt_fire_into(v: torch.Tensor, out: torch.Tensor, thresholds: Sequence[float],
                 count_spikes: bool = False) -> torch.Tensor | None:
    """:func:`mt_step_into` after V ← V + I(t) (done by a fused synapse, :mod:`sjunet.snn.fusion`):
    fire from the membrane ``v``, write o(t) into ``out``, subtract it from ``v``."""
    if is_halving(thresholds):
        lo = thresholds[-1]
        k = torch.mul(v, 1.0 / lo, out=out).floor_().clamp_(0, (1 << len(thresholds)) - 1)
        n = popcount(k.to(torch.int32), len(thresholds)).to(out.dtype) if count_spikes else None
        v.sub_(out.mul_(lo))
        return n
    out.zero_()
    n = torch.zeros_like(out) if count_spikes else None
    for th in thresholds:
        s = v >= th
        out.add_(s, alpha=th)
        v.add_(s, alpha=-th)  # V − θ·s: subtraction takes no boolean tensor
        if n is not None:
            n.add_(s)
    return n


class MultiThresholdNode(ThresholdLadder, SpikingNeuron):
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

    def step_into(self, xs, out, states):
        """:func:`mt_step_into`, recorded as the functional step records (the same numbers)."""
        n = self.run_kernel(mt_step_into, (xs[0], states[0], out), self.thresholds, self.record_spikes,
                            tile=not self.record_spikes)
        return self._fired(out, states, n)

    def fire_into(self, out, states):
        """:func:`mt_fire_into`: :meth:`step_into` with the input current already in the membrane."""
        n = self.run_kernel(mt_fire_into, (states[0], out), self.thresholds, self.record_spikes,
                            tile=not self.record_spikes)
        return self._fired(out, states, n)

    def _fired(self, out, states, n):
        """The states after a step that wrote ``out`` and emitted ``n`` spikes (None: not counted)."""
        v, acc_out, count, events = states
        if self.record:
            acc_out = self._accumulate_flow(acc_out, out if is_halving(self.thresholds) else out.clone())
        if n is not None:
            count = self._accumulate(count, n)
            events = self._accumulate(events, (out != 0).to(out.dtype))
        return [v, acc_out, count, events]

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
