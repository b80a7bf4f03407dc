r"""Σ-Δ neurons (spec §15): ladder spikes whose rate tends to f(mean input) for any f, and to the
product of two mean inputs.

**One idea, one family.** A neuron keeps running sums of what it received and emits ladder spikes
that make the running sum of what it *sent* track a target computed from those sums:

==========================  ===============================  =======================================
member                      target Y_t                       emitted
==========================  ===============================  =======================================
MT neuron (ReLU, §3)        A_t (its membrane: V = A − S)    unsigned ladder, floor
signed MT (leaky ReLU)      f_α(M_t), M_t the signed charge  f_α(M_t) − f_α(M_{t−1})
spiking max-pool (§11)      maxpool(S_t) of input sums       the difference itself (graded)
:class:`SigmaDeltaNode`     t · f(A_t / t)                   Q(Y_t − S_{t−1} + V_0)
:class:`SigmaDeltaProduct`  t · g(A_t / t, B_t / t)          Q(Y_t − S_{t−1} + V_0)
==========================  ===============================  =======================================

with A_t = Σ_{τ≤t} I_τ the input sums, S_t the sum of everything sent, and **Q the signed ladder
quantiser** of the signed MT neuron (:func:`sjunet.neurons.signed.signed_mt_step`): the MT ladder
θ_1 > … > θ_N, mirrored below its dead zone [0, θ_N), at most one spike per threshold and sign per
step; with a halving ladder Q(V) = θ_N · clamp(floor(V / θ_N), −(2^N − 1), 2^N − 1). Q is signed
for every f, non-negative ones included: t·f(A_t/t) need not grow with t (the mean input can
fall), and a neuron that can take back a spike keeps |Y_t − S_t| small whatever the input does.
For f = ReLU the neuron is the MT neuron plus that correction (identical while its input sums stay
non-negative, ``tests/test_sigma_delta.py``); for positively homogeneous f (ReLU, leaky ReLU)
t·f(A_t/t) = f(A_t) and no clock is needed; every other f needs t.

**Exact in the limit.** V_t = Y_t − S_{t−1} + V_0 and S_t = S_{t−1} + Q(V_t), so Y_t − S_t + V_0 is
the quantiser's residue, in [0, θ_N) wherever the ladder can follow (|V_t| within its range, which
a saturated step restores later: the residue is carried, not lost). With V_0 = θ_N/2 (the
recipe's ``v_init="half"``) |Y_T − S_T| ≤ θ_N/2, so the rate S_T / T = f(A_T / T) + O(θ_N / T) for
*any* input sequence. **At T = 1** S_1 = Q(f(x) + V_0): the ANN with its activation quantised to
the ladder (rounded with V_0 = θ_N/2, floored with 0, capped at Σθ).

**Where t comes from.** Each neuron layer counts its own steps since its last reset (the memory
``steps``, one integer for the layer: every element advances together) — what any simulator or
neuromorphic core has as its clock; nothing is passed in, so the neuron drops into any graph.

**Units.** Values on the wire are in normalised units, as everywhere in sjunet: an input current
I stands for the ANN value λ_in · I (``in_scale``: the unit of the tensor feeding the neuron —
per channel along dim 1 where it differs, e.g. after a concatenation — for a product, ``a_scale``
and ``b_scale``), and an output spike of 1 stands for λ_out (``out_scale``, from calibration of f's
output: the 99.9th percentile of |f| where f is signed). So the neuron computes, in ANN units,

    Y_t = t · f(λ_in ⊙ A_t / t) / λ_out,     Y_t = t · g(λ_a A_t / t, λ_b B_t / t) / λ_out.

The input needs no unit of its own: it is summed, never quantised, so a Σ-Δ neuron takes the
unit its input already has (no gain on the edge).

**Numerics.** A_t and S_t are float32. S_t is a sum of ladder values: with a halving ladder whole
multiples of θ_N, exact below 2^24 quanta. A_t accumulates T float32 additions; its rounding error
over T is far below the quantiser's θ_N / T (measured against float64 on fluctuating inputs: 3e-8
of the mean input at T = 256, 4096 and 65536, against θ_N / T = 6e-5 at T = 4096 and 4e-6 at
65536), so a float32 spike count differs from the float64 one only where a rounding boundary lies
within that error, by one quantum (``tests/test_sigma_delta.py``).

**Modes.** Single-step (``[B, …]``) and multi-step (``[T, B, …]``, SpikingJelly's ``"m"``) give the
same spikes: multi-step evaluates every target of the chunk in one batched call of f, then
quantises step by step (Q needs S_{t−1}).

**Fine-tuning.** Spiking flow (spec §7) needs the derivative of what the neuron passes on with
respect to its accumulated input: the vector-Jacobian product of T·f(λ_in Î/T)/λ_out at the
measured I_in = A_T, i.e. f'(mean input) in place of the ReLU mask (:meth:`flow_vjp`, by autograd,
so a new f needs no derivative of its own; for a product, each input gets g's partial derivative
at the other's mean). BPTT (for comparison only) passes gradients straight through Q.

**Cost.** Messages are ladder spikes (accumulates downstream), but every layer evaluates f (or g)
once per step on its whole state: :meth:`SigmaDeltaNode.evaluations` and
:meth:`SigmaDeltaProduct.evaluations` count those operations (MACs for a matrix product), which
energy counts at MAC cost in every convention.

SpikingJelly 2's ``ann2snn.operators`` (``TDSiLU``, ``SNNMatrixOperator`` …) are a different
construction: graded (float) outputs whose cumulative sum is f of the cumulative input sum, which
is the ANN value only when the inputs are built to sum to it over the run; a rate code needs f of
the *mean*, and ladder spikes on the wire, hence these neurons.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from sjunet.neurons.base import SpikingNeuron, ThresholdLadder, validate_ladder
from sjunet.neurons.sigma_delta_functions import (FUNCTIONS, PRODUCTS, check_equation, check_params, lookup, product,
                                          product_macs)
from sjunet.neurons.signed import _signed_charge


def signed_ladder(v: torch.Tensor, thresholds: Sequence[float], count_spikes: bool = False):
    """Q(v): the signed ladder quantiser (module docstring) — ``(q, n)``, ``n`` the spikes of both
    signs (``None`` unless ``count_spikes``)."""
    return _signed_charge(v, thresholds, count_spikes)


def sigma_delta_target(f, acc: torch.Tensor, t, in_scale=1.0, out_scale: float = 1.0) -> torch.Tensor:
    r"""The target cumulative output of an activation neuron (spec §15):
    :math:`Y_t = t \cdot f(\lambda_{in} \odot A_t / t) / \lambda_{out}` (``t`` a number, or a tensor
    broadcasting against ``acc``)."""
    return f(acc * (in_scale / t)) * (t / out_scale)


def sigma_delta_product_target(g, acc_a: torch.Tensor, acc_b: torch.Tensor, t, a_scale=1.0, b_scale=1.0,
                               out_scale: float = 1.0) -> torch.Tensor:
    r"""The target cumulative output of a product neuron (spec §15):
    :math:`Y_t = t \cdot g(\lambda_a A_t / t, \lambda_b B_t / t) / \lambda_{out}` — for a bilinear g,
    :math:`\lambda_a \lambda_b\, g(A_t, B_t) / (t \lambda_{out})`."""
    return g(acc_a * (a_scale / t), acc_b * (b_scale / t)) * (t / out_scale)


def sigma_delta_step(target: torch.Tensor, sent, thresholds: Sequence[float], v_init: float = 0.0,
                     count_spikes: bool = False):
    r"""One step of a Σ-Δ neuron given its target Y_t (module docstring):

    .. math::

        V_t = Y_t - S_{t-1} + V_0,\qquad s_t = Q(V_t),\qquad S_t = S_{t-1} + s_t

    Returns ``(s_t, S_t, n)``, ``n`` the threshold crossings of both signs (``None`` unless
    ``count_spikes``)."""
    s, n = signed_ladder(target - sent + v_init, thresholds, count_spikes)
    return s, s + sent, n


def _scale(value, name: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


class _SigmaDelta(ThresholdLadder, SpikingNeuron):
    """What both Σ-Δ neurons share: ladder, V_0, λ_out, the memories and the step loop."""

    n_inputs = 1

    def __init__(self, thresholds: Sequence[float], v_init: float, out_scale: float, step_mode: str) -> None:
        super().__init__(v_threshold=1.0, v_reset=None, step_mode=step_mode)
        self.thresholds = validate_ladder(thresholds)
        #: V_0: θ_N/2 rounds (the recipe's "half"), 0 floors
        self.v_init = float(v_init)
        if not math.isfinite(self.v_init):
            raise ValueError(f"v_init must be finite, got {v_init!r}")
        self.out_scale = _scale(out_scale, "out_scale")
        self.set_reset_value("v", 0.0)  # v holds A_t, the input sum
        self.v = 0.0
        self._init_interface()
        self.register_memory("sent", 0.0)  # S_t
        self.register_memory("steps", 0)  # t, this layer's clock

    # -- the per-member part: inputs' sums -> target
    def target(self, accs: Sequence[torch.Tensor], t) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _quantise(self, y: torch.Tensor, sent):
        if self.surrogate_gradient and torch.is_grad_enabled():  # BPTT: straight through Q
            v = y - sent + self.v_init
            s, _ = signed_ladder(v.detach(), self.thresholds, False)
            s = s + (v - v.detach())
            return s, sent + s, None
        return sigma_delta_step(y, sent, self.thresholds, self.v_init, self.record_spikes)

    def _count(self, count, events, n, s):
        if n is None:
            return count, events
        e = (s != 0).to(s.dtype)
        return (n if isinstance(count, float) else count + n), (e if isinstance(events, float) else events + e)

    def _split(self, states):
        a, acc_out, count, events, sent, steps, *rest = states
        return a, acc_out, count, events, sent, steps, rest

    def single_step_functional_forward(self, inputs, states, **kwargs):
        a, acc_out, count, events, sent, steps, rest = self._split(states)
        accs = self._accumulate(inputs, (a, *rest))
        t = steps + 1
        s, sent, n = self._quantise(self.target(accs, t), sent)
        count, events = self._count(count, events, n, s)
        return (s,), (accs[0], acc_out, count, events, sent, t, *accs[1:])

    def multi_step_functional_forward(self, inputs, states, **kwargs):
        a, acc_out, count, events, sent, steps, rest = self._split(states)
        T = inputs[0].shape[0]
        if T == 0:
            return (inputs[0][:0],), states
        starts = self._materialize(tuple(x[0] for x in inputs), (a, *rest))
        seqs = [start.unsqueeze(0) + torch.cumsum(x, 0) for start, x in zip(starts, inputs)]
        ts = torch.arange(steps + 1, steps + T + 1, dtype=seqs[0].dtype, device=seqs[0].device)
        ys = self.target_sequence(seqs, ts)  # every step's target in one batched evaluation
        outs = []
        for y in ys:  # Q needs S_{t-1}: step by step, the same arithmetic as single-step mode
            s, sent, n = self._quantise(y, sent)
            count, events = self._count(count, events, n, s)
            outs.append(s)
        return (torch.stack(outs),), (seqs[0][-1], acc_out, count, events, sent, steps + T,
                                      *(q[-1] for q in seqs[1:]))

    def target_sequence(self, seqs: Sequence[torch.Tensor], ts: torch.Tensor) -> torch.Tensor:
        """Targets of a chunk: ``seqs`` the sums [T, B, …], ``ts`` the steps [T]; f sees [T·B, …]."""
        flat = [q.flatten(0, 1) for q in seqs]
        rank = seqs[0].dim() - 1
        t = ts.repeat_interleave(seqs[0].shape[1]).view(-1, *([1] * (rank - 1)))
        y = self.target(flat, t)
        return y.unflatten(0, (seqs[0].shape[0], -1))

    @staticmethod
    def _materialize(xs, accs):
        return tuple(torch.zeros_like(x) if isinstance(acc, float) else acc for x, acc in zip(xs, accs))

    def _accumulate(self, xs, accs):
        return tuple(x if isinstance(acc, float) else acc + x for x, acc in zip(xs, accs))

    # -- the neuron interface
    def _sums(self) -> tuple[torch.Tensor, ...]:
        if isinstance(self.v, float) or isinstance(self.sent, float):
            raise RuntimeError("output_flow() / input_current() need a simulation since the last reset")
        return (self.v,)

    def output_flow(self) -> torch.Tensor:
        """I_out = S_T, everything sent since the last reset (exact: no separate accumulator)."""
        self._sums()
        return self.sent

    def input_current(self) -> torch.Tensor:
        """I_in = A_T (for a product: the first input's; :meth:`flow_inputs` has both)."""
        return self._sums()[0]

    def flow_inputs(self) -> tuple[torch.Tensor, ...]:
        """The accumulated inputs spiking flow keeps for :meth:`flow_vjp` (A_T; a product: A_T, B_T)."""
        return self._sums()

    def flow_vjp(self, grad: torch.Tensor, inputs: Sequence[torch.Tensor], T: int) -> tuple[torch.Tensor, ...]:
        """The gradient of the passed-on flow T·f(λ_in Î/T)/λ_out with respect to each accumulated
        input, at the measured ones (``inputs``), times ``grad``: f'(mean input) for the ReLU mask."""
        with torch.enable_grad():
            zs = [z.detach().requires_grad_(True) for z in inputs]
            y = self.target(zs, T)
            return torch.autograd.grad(y, zs, grad)

    def activation(self, *xs: torch.Tensor) -> torch.Tensor:
        """The ANN this neuron's rate stands for, in normalised units (the target at t = 1)."""
        return self.target(xs, 1)


class SigmaDeltaNode(_SigmaDelta):
    """A Σ-Δ neuron for an activation f of :data:`sjunet.neurons.sigma_delta_functions.FUNCTIONS` (module
    docstring): its rate tends to f(mean input) with error O(θ_N / T).

    Args:
        function: the table's name of f (``"silu"``, ``"gelu"``, ``"softmax"``, ``"layer_norm"`` …).
        params: f's parameters (``{"approximate": "tanh"}``, ``{"dim": -1}`` …), checked against the table.
        thresholds: the ladder, largest first (the MT neurons' of the conversion).
        v_init: V_0 (θ_N/2: rounding, the recipe's default; 0: floor).
        in_scale: λ_in, the unit of the input current — a number, or a [C] tensor per channel along
            dim 1 (then the buffer ``in_scale``, ``channels`` = C).
        out_scale: λ_out, the unit of one output spike (f's calibrated scale).
        channels: C for a per-channel λ_in (0: a number); set from a tensor ``in_scale``.

    A norm's affine (``params["features"]`` > 0) is the buffers ``weight`` and ``bias`` (fixed in
    fine-tuning, as a PReLU's slope). Memories: ``v`` = A_t, ``sent`` = S_t, ``steps`` = t,
    ``spike_count`` / ``event_count`` (with ``record_spikes``)."""

    def __init__(self, function: str = "silu", params: dict | None = None,
                 thresholds: Sequence[float] = (2.0, 1.0, 0.5, 0.25), v_init: float = 0.0, in_scale=1.0,
                 out_scale: float = 1.0, channels: int = 0, step_mode: str = "s") -> None:
        super().__init__(thresholds, v_init, out_scale, step_mode)
        lookup(function)
        self.function = function
        self.params = check_params(function, params)
        self._f = FUNCTIONS[function]
        values = None
        if isinstance(in_scale, torch.Tensor):
            values = in_scale.detach().reshape(-1).double()
            if values.numel() == 1:
                in_scale, values = float(values), None
            else:
                channels, in_scale = values.numel(), 1.0
        if type(channels) is not int or channels < 0:
            raise ValueError(f"channels must be a non-negative integer, got {channels!r}")
        self.channels = channels
        if channels:
            self.register_buffer("in_scale", torch.ones(channels))
            if values is not None:
                if not bool(torch.isfinite(values).all() and (values > 0).all()):
                    raise ValueError("in_scale must be positive and finite in every channel")
                self.in_scale.copy_(values)
        else:
            self.in_scale = _scale(in_scale, "in_scale")
        features = self.params.get("features", 0) if self._f.features else 0
        if features:
            self.register_buffer("weight", torch.ones(features))
            self.register_buffer("bias", torch.zeros(features))
        else:
            self.weight = self.bias = None

    def extra_repr(self) -> str:
        s = f"[{self.channels} channels]" if self.channels else self.in_scale
        return (f"function={self.function}, params={self.params}, thresholds={self.thresholds}, in_scale={s}, "
                f"out_scale={self.out_scale:g}, v_init={self.v_init}, step_mode={self.step_mode}")

    def spec(self) -> dict:
        return {"function": self.function, "params": dict(self.params), "thresholds": list(self.thresholds),
                "v_init": self.v_init, "in_scale": 1.0 if self.channels else self.in_scale,
                "out_scale": self.out_scale, "channels": self.channels}

    def f(self, x: torch.Tensor) -> torch.Tensor:
        """f in ANN units."""
        return self._f.fn(x, self.params, self.weight, self.bias)

    def _in(self, x: torch.Tensor):
        s = self.in_scale
        if isinstance(s, torch.Tensor):  # per channel along dim 1 of a step tensor [B, C, …]
            return s.to(x.dtype).view(-1, *([1] * (x.dim() - 2)))
        return s

    def target(self, accs, t) -> torch.Tensor:
        a = accs[0]
        return sigma_delta_target(self.f, a, t, self._in(a), self.out_scale)

    def evaluations(self, in_shape: Sequence[int]) -> int:
        """Evaluations of f per step for an input of ``in_shape`` (one per element; batch included)."""
        return int(math.prod(in_shape))


class SigmaDeltaProduct(_SigmaDelta):
    """A two-input Σ-Δ neuron whose rate tends to g(mean a, mean b) for the bilinear g of ``op``
    (:data:`sjunet.neurons.sigma_delta_functions.PRODUCTS`: ``mul`` — gates, squeeze-excitation —,
    ``matmul`` and ``einsum`` — attention): module docstring. Called as ``neuron(a, b)``.

    Args:
        op, equation: the product (``equation`` for ``einsum`` only, e.g. ``"bhqd,bhkd->bhqk"``).
        thresholds, v_init, out_scale: as :class:`SigmaDeltaNode`.
        a_scale, b_scale: the units λ_a, λ_b of the two inputs (numbers: where the units of an input
            differ along a dimension the conversion puts a gain before it).

    Memories: ``v`` = A_t, ``acc_b`` = B_t, ``sent``, ``steps``, the counts."""

    n_inputs = 2

    def __init__(self, op: str = "mul", equation: str | None = None,
                 thresholds: Sequence[float] = (2.0, 1.0, 0.5, 0.25), v_init: float = 0.0, a_scale: float = 1.0,
                 b_scale: float = 1.0, out_scale: float = 1.0, step_mode: str = "s") -> None:
        super().__init__(thresholds, v_init, out_scale, step_mode)
        if op not in PRODUCTS:
            raise ValueError(f"unknown product {op!r}; one of {', '.join(PRODUCTS)}")
        if (equation is not None) != (op == "einsum"):
            raise ValueError("an einsum product takes an equation, and only an einsum product does")
        self.op = op
        self.equation = check_equation(equation) if op == "einsum" else None
        self.a_scale = _scale(a_scale, "a_scale")
        self.b_scale = _scale(b_scale, "b_scale")
        self.register_memory("acc_b", 0.0)

    def extra_repr(self) -> str:
        eq = f", equation={self.equation!r}" if self.equation else ""
        return (f"op={self.op}{eq}, thresholds={self.thresholds}, a_scale={self.a_scale:g}, b_scale={self.b_scale:g}, "
                f"out_scale={self.out_scale:g}, v_init={self.v_init}, step_mode={self.step_mode}")

    def spec(self) -> dict:
        return {"op": self.op, "equation": self.equation, "thresholds": list(self.thresholds), "v_init": self.v_init,
                "a_scale": self.a_scale, "b_scale": self.b_scale, "out_scale": self.out_scale}

    def g(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return product(self.op, a, b, self.equation)

    def target(self, accs, t) -> torch.Tensor:
        a, b = accs
        return sigma_delta_product_target(self.g, a, b, t, self.a_scale, self.b_scale, self.out_scale)

    def target_sequence(self, seqs, ts):
        if self.op == "mul":  # broadcasting works on [T, B, …] as on [T·B, …]
            t = ts.view(-1, *([1] * (seqs[0].dim() - 1)))
            return self.target(seqs, t)
        return torch.stack([self.target((a, b), float(t)) for a, b, t in zip(seqs[0], seqs[1], ts.tolist())])

    def materialize_states(self, inputs, states, step_mode):
        x = inputs[0][0] if step_mode == "m" else inputs[0]
        v = states[0]
        if isinstance(v, torch.Tensor) and (v.shape != x.shape or v.dtype != x.dtype):
            v = 0.0
        return (v, *states[1:])

    def _sums(self):
        (a,) = super()._sums()
        if isinstance(self.acc_b, float):
            raise RuntimeError("output_flow() / input_current() need a simulation since the last reset")
        return a, self.acc_b

    def evaluations(self, a_shape: Sequence[int], b_shape: Sequence[int]) -> int:
        """Multiply-accumulates of g per step for inputs of these shapes (batch included)."""
        return product_macs(self.op, a_shape, b_shape, self.equation)


SIGMA_DELTA_TYPES = (SigmaDeltaNode, SigmaDeltaProduct)


def is_sigma_delta(m) -> bool:
    """Whether ``m`` is a Σ-Δ neuron (evaluates a function or product every step)."""
    return isinstance(m, SIGMA_DELTA_TYPES)
