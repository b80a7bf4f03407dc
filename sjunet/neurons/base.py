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

from sjunet.layers.buffers import Buffered, channels_last, flat, tiles


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


#: named ladders (``--thresholds NAME``): ``paper`` — the paper's Table 4 choice, (2, 1, 0.5, 0.25),
#: tuned at the paper's T of 10–50 (the paper-table benchmarks name it); ``theorem`` — Theorem
#: 3.1's optimum for a membrane in [0, 1], (0.5, 0.25, 0.125, 0.0625); ``uncapped`` — the same step
#: with a top of 1, (1, 0.5, 0.25, 0.125, 0.0625). The normalisation puts the 99.9th percentile of
#: every activation at 1, so the paper's top threshold (2) fires for almost nothing and one of its
#: four bits is idle; the theorem's ladder spends all four on [0, 1] (one step at 1/16 instead of
#: 1/4), which matters at T = 1–2 and costs a cap of 0.9375 per step on the rare values above 1 —
#: a plateau in T; the uncapped ladder lifts the cap to 1.9375 at the price of one more level.
#: The MT default is neither: ``"auto"``, a ladder per layer (:mod:`sjunet.conversion.ladders`).
LADDERS: dict[str, tuple[float, ...]] = {"paper": threshold_ladder(4), "theorem": threshold_ladder(4, top=0.5),
                                         "uncapped": threshold_ladder(5, top=1.0)}
#: ``--thresholds auto``: a ladder per layer, chosen from its calibration histogram (:mod:`sjunet.conversion.ladders`)
AUTO = "auto"


def named_ladder(thresholds: "str | Sequence[float] | None") -> "tuple[float, ...] | None":
    """A ladder given by name (:data:`LADDERS`) or as numbers (returned as a tuple); None stays None."""
    if thresholds is None:
        return None
    if isinstance(thresholds, str):
        if thresholds not in LADDERS:
            raise ValueError(f"unknown threshold ladder {thresholds!r}; name one of {', '.join(LADDERS)}, {AUTO} "
                             "(a ladder per layer) or give the thresholds, largest first")
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


#: the step kernels compiled so far, by their eager function (one compile per kernel and process)
_KERNELS: dict[Callable, Callable] = {}


def compile_status(device: "torch.device | str" = "cpu") -> str | None:
    """None when ``torch.compile`` can build the neurons' step kernels for ``device`` here (CPU:
    inductor and a C++ compiler; CUDA: Triton), else the reason it cannot, in one line."""
    try:
        import torch._inductor.config  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means no compiler
        return f"torch.compile is unavailable ({type(e).__name__}: {e})"
    if torch.device(device).type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "torch.compile needs Triton for CUDA kernels, and it is not installed"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001
        return f"torch.compile's CPU backend (inductor) finds no C++ compiler ({type(e).__name__}: {str(e)[:120]})"
    return None


def compiled_kernel(fn: Callable) -> Callable:
    """``fn`` (an in-place step kernel) compiled by ``torch.compile`` (inductor; dynamic shapes, so
    one compile serves every layer; the same numbers as eager, checked by the tests)."""
    k = _KERNELS.get(fn)
    if k is None:
        k = _KERNELS[fn] = torch.compile(fn, dynamic=True, fullgraph=True)
    return k


#: pixel-steps (input pixels × simulated steps, over a run) after which the compiled kernels have paid for
#: their compile, with a margin of 2: on the 2-core development machine (one thread, loaded) the first
#: compile of a process took 8.4 s and saved 33 ms per step of a width-16 U-Net at 512² (0.13 µs per
#: pixel-step; MONAI's BasicUNet: 70 ms per step after a 1.8 s compile) — ``python -m sjunet.benchmarks
#: step_cost``, its eager and compiled rows. ``sjunet evaluate`` of the 5 EM test images at T ≤ 100
#: (1.3e8) compiles; a short validation does not.
COMPILE_PAYS_AFTER = 1.2e8


def compile_pays(pixel_steps: float, device: "torch.device | str" = "cpu") -> bool:
    """Whether a run of ``pixel_steps`` (input pixels × steps, summed over its images) is long enough
    for the compiled kernels to win, compile included, and a compiler is present (``compiled="auto"``
    of :func:`sjunet.evaluation.evaluate_snn`)."""
    return pixel_steps >= COMPILE_PAYS_AFTER and compile_status(device) is None


def set_compiled(module: nn.Module, on: bool = True) -> str | None:
    """Run the step kernels of every neuron in ``module`` compiled (``on``) or eager. Returns None,
    or (``on`` where :func:`compile_status` says no compiler is present) the reason the neurons
    stay eager."""
    why = compile_status(next((p.device for p in module.parameters()), "cpu")) if on else None
    for m in module.modules():
        if is_neuron(m):
            m.compiled = on and why is None
    return why


class ThresholdLadder:
    """``quantum`` and ``max_output`` of a neuron firing on the threshold ladder ``self.thresholds``
    (largest first): the smallest threshold, and all of them at once."""

    thresholds: tuple[float, ...]

    @property
    def quantum(self) -> float:
        return self.thresholds[-1]

    @property
    def max_output(self) -> float:
        return float(sum(self.thresholds))


class SpikingNeuron(Buffered, neuron.BaseNode):
    """The neuron interface (module docstring). Subclasses implement the SpikingJelly step
    functions and keep ``acc_output`` / ``spike_count`` when ``record`` / ``record_spikes``.

    **The in-place step** (issue 29: a neuron step that costs what a ReLU costs). SpikingJelly's
    functional forwards are pure: every step allocates a new membrane and a new output, which on a
    CPU costs more than the arithmetic. A subclass that also implements :meth:`step_into` — the same
    step, written into ``out`` with its state tensors updated in place — gets module forwards
    (single- and multi-step) that run it whenever no gradient is asked for (:meth:`in_place`):

    * the states named in :attr:`inplace_memories` are tensors owned by the neuron (while
      :func:`sjunet.layers.buffers.streaming` is on, the same storage across steps and images, refilled
      with the reset value after ``functional.reset_net``; :meth:`init_state` fills them);
    * the output goes into :meth:`step_buffer` ``"out"`` (reused across steps while streaming; a
      multi-step chunk writes step t into ``out[t]``);
    * counting spikes and recording the flow cost nothing unless ``record_spikes`` / ``record``;
    * its elementwise kernels (the ``*_step_into`` functions) go through :meth:`kernel`, so
      :func:`set_compiled` can run them fused by ``torch.compile`` (one pass instead of six to ten).

    The pure functional step stays the reference (autograd, SpikingJelly's functional API), and
    :meth:`step_into` must give the same numbers bit for bit (tests compare them on random inputs).
    """

    #: memories that :meth:`step_into` updates in place (made owned tensors before the first step)
    inplace_memories: tuple[str, ...] = ("v",)
    #: run the step kernels compiled (:func:`set_compiled`); off: eager
    compiled: bool = False

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

    # -- the in-place step (class docstring) -------------------------------------------------
    def step_into(self, xs: tuple[torch.Tensor, ...], out: torch.Tensor, states: list) -> list:
        """One step on inputs ``xs`` (one tensor for a neuron; more for a multi-input node), its
        output written into ``out``, the tensors of :attr:`inplace_memories` in ``states`` (ordered
        as the memories) updated in place; returns the states (accumulators may be new tensors).
        Not implemented: the neuron runs its functional step only."""
        raise NotImplementedError

    def fire_into(self, out: torch.Tensor, states: list) -> list:
        """:meth:`step_into` after its integration: the input current is already in the membrane
        (``states[0]``, V ← V + I(t) done by the synapse: :mod:`sjunet.snn.fusion` fuses it into the
        convolution); fire, write o(t) into ``out``, update the states and return them as
        :meth:`step_into` does (the same arithmetic after its first pass). Not implemented: the
        neuron's synapse is not fused."""
        raise NotImplementedError

    @property
    def fires_integrated(self) -> bool:
        """Whether this neuron implements :meth:`fire_into` (a synapse may integrate into its membrane)."""
        return type(self).fire_into is not SpikingNeuron.fire_into

    def kernel(self, fn: Callable) -> Callable:
        """The step kernel ``fn`` as this neuron runs it: compiled when :attr:`compiled`
        (:func:`compiled_kernel`), else ``fn`` itself. :meth:`step_into` calls its kernels through it."""
        return compiled_kernel(fn) if self.compiled else fn

    def run_kernel(self, fn: Callable, tensors: tuple[torch.Tensor, ...], *args, tile: bool = True):
        """Run the elementwise kernel ``fn(*tensors, *args)`` (:meth:`kernel`). Eager on a CPU and
        with ``tile``, over cache-sized tiles of the flattened tensors (:func:`sjunet.layers.buffers.tiles`:
        its six to ten passes then read the cache, not memory; elementwise, so the same numbers)
        when the tensors are dense in one layout (:func:`sjunet.layers.buffers.flat`); returns what
        ``fn`` returns (None when tiled: a kernel asked for more than its outputs is not tiled)."""
        views = None if self.compiled or not tile or tensors[0].device.type != "cpu" else flat(tensors)
        if views is None:
            return self.kernel(fn)(*tensors, *args)
        parts = tiles(tensors[0].numel(), tensors[0].element_size(), 2 * len(tensors))
        if len(parts) == 1:
            return fn(*tensors, *args)
        for sl in parts:
            fn(*(f[sl] for f in views), *args)
        return None

    def state_shape(self, name: str, x: torch.Tensor) -> tuple[int, ...]:
        """Shape of in-place memory ``name`` for a step input ``x`` (default: ``x``'s)."""
        return tuple(x.shape)

    def init_state(self, name: str, buf: torch.Tensor, value, x: torch.Tensor) -> torch.Tensor:
        """Fill ``buf`` with the initial value of memory ``name`` (``value``: its reset value)."""
        return buf.fill_(value)

    def in_place(self, x: torch.Tensor) -> bool:
        """Whether the in-place step runs: implemented, no forward hook on this neuron (a monitor
        keeping outputs or states gets fresh tensors at every step, as SpikingJelly's own
        neurons give), and no gradient can flow through this step (autograd off, or nothing here
        requires one: input, states, parameters, a surrogate)."""
        if type(self).step_into is SpikingNeuron.step_into or self.store_v_seq or self._forward_hooks:
            return False  # a hook (a SpikingJelly monitor) may keep outputs or states: fresh tensors for it
        if not torch.is_grad_enabled():
            return True
        if self.surrogate_gradient or x.requires_grad:
            return False
        if any(p.requires_grad for p in self.parameters(recurse=False)):
            return False
        return not any(isinstance(v, torch.Tensor) and v.requires_grad for v in self._memories.values())

    def _owned_states(self, x: torch.Tensor) -> list:
        states = []
        for name, value in self._memories.items():
            if name in self.inplace_memories:
                shape = self.state_shape(name, x)
                if not (isinstance(value, torch.Tensor) and tuple(value.shape) == shape and value.dtype == x.dtype
                        and value.device == x.device):
                    init = value if not isinstance(value, torch.Tensor) else self._memories_rv[name]
                    value = self.init_state(name, self.step_buffer(name, shape, x), init, x)
                elif len(shape) == 4 and channels_last(value) != channels_last(x):  # a run changing layout
                    value = value.contiguous(memory_format=torch.channels_last if channels_last(x)
                                             else torch.contiguous_format)  # (fused probe step, then chunks)
            states.append(value)
        return states

    def _keep(self, states: list) -> None:
        for name, value in zip(self._memories, states, strict=True):
            self._memories[name] = value

    def single_step_forward(self, x: torch.Tensor, *args, **kwargs):
        if not self.in_place(x):
            return super().single_step_forward(x, *args, **kwargs)
        states = self._owned_states(x)
        out = self.step_buffer("out", x.shape, x)
        self._keep(self.step_into((x, *args), out, states))
        return out

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        if not self.in_place(x_seq):
            return super().multi_step_forward(x_seq, *args, **kwargs)
        states = self._owned_states(x_seq[0])
        out = self.step_buffer("out", x_seq.shape, x_seq)
        for t in range(x_seq.shape[0]):
            states = self.step_into((x_seq[t], *(a[t] for a in args)), out[t], states)
        self._keep(states)
        return out

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
