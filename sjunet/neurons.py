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


#: neuron classes an SNN file may name (rebuilt from their ``spec()``)
NEURON_TYPES: dict[str, type[SpikingNeuron]] = {"MultiThresholdNode": MultiThresholdNode}

#: a neuron factory builds the neuron that replaces one ReLU: ``factory(relu_name) -> module``
NeuronFactory = Callable[[str], nn.Module]


def mt_factory(thresholds: Sequence[float] = (2.0, 1.0, 0.5, 0.25), v_init: float = 0.0) -> NeuronFactory:
    """Factory of multi-threshold neurons (``thresholds=(1.0,)``: integrate-and-fire)."""
    ladder = validate_ladder(thresholds)
    return lambda relu_name: MultiThresholdNode(ladder, v_init=v_init)


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
