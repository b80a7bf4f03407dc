"""The neuron interface (paper §3.2; spec §3): what every neuron type shares, and nothing above it.

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

A neuron whose spiking-flow gradient needs more than the ReLU gate — the Σ-Δ neurons, which take f'
at the mean input, and a product's partial derivatives — also provides ``flow_inputs()`` (what the
flow record keeps: its accumulated inputs) and ``flow_vjp(grad, inputs, T)`` (the gradient with
respect to each accumulated input); flow uses them where they exist.

A new neuron type subclasses :class:`SpikingNeuron` in its own module of :mod:`sjunet.neurons`,
registers itself in :data:`sjunet.neurons.registry.NEURON_TYPES` and gets a factory in
:data:`sjunet.neurons.registry.FACTORIES` (the registry, which imports every neuron module); the
recipe, flow, energy and plots need no edit.

Also here, shared by the neuron modules: threshold ladders (:func:`threshold_ladder`,
:func:`validate_ladder`, :func:`is_halving`; every factory takes one), the :data:`NeuronFactory`
type with :func:`refuse_signed`, and :class:`AdvancedByStep` (the functional forwards of a neuron
defined by one step). This module imports no other neuron module: the MT neurons
(:mod:`sjunet.neurons.mt`, :mod:`sjunet.neurons.signed`) and the peer neurons
(:mod:`sjunet.neurons.peers`) build on it, and :mod:`sjunet.neurons.registry` registers them all.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from spikingjelly.activation_based import neuron
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


#: named ladders (``--thresholds NAME``): ``paper`` — the paper's Table 4 choice and the MT default,
#: (2, 1, 0.5, 0.25), tuned at the paper's T of 10–50; ``theorem`` — Theorem 3.1's optimum for a
#: membrane in [0, 1], (0.5, 0.25, 0.125, 0.0625). The normalisation puts the 99.9th percentile of
#: every activation at 1, so the paper's top threshold (2) fires for almost nothing and one of its
#: four bits is idle; the theorem's ladder spends all four on [0, 1] (one step at 1/16 instead of
#: 1/4), which matters at T = 1–2 and costs a cap of 0.9375 per step on the rare values above 1.
LADDERS: dict[str, tuple[float, ...]] = {"paper": threshold_ladder(4), "theorem": threshold_ladder(4, top=0.5)}


def named_ladder(thresholds: "str | Sequence[float] | None") -> "tuple[float, ...] | None":
    """A ladder given by name (:data:`LADDERS`) or as numbers (returned as a tuple); None stays None."""
    if thresholds is None:
        return None
    if isinstance(thresholds, str):
        if thresholds not in LADDERS:
            raise ValueError(f"unknown threshold ladder {thresholds!r}; name one of {', '.join(LADDERS)} or give the "
                             "thresholds, largest first")
        return LADDERS[thresholds]
    return tuple(float(t) for t in thresholds)


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


def set_recording(module: nn.Module, on: bool = True, spikes: bool | None = None) -> list[SpikingNeuron]:
    """Switch recording of the accumulated output (and, with ``spikes``, the spike count; by
    default the same as ``on``) on every neuron in ``module``."""
    nodes = [m for m in module.modules() if is_neuron(m)]
    for m in nodes:
        m.record = on
        m.record_spikes = on if spikes is None else spikes
    return nodes


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
