"""Leaky ReLU and PReLU (spec §11): the signed multi-threshold neuron.

:func:`signed_mt_step` / :class:`SignedMultiThresholdNode` — the MT neuron
(:mod:`sjunet.neurons.mt`) with the ladder mirrored below its dead zone and negative spikes of
amplitude α·θ_i (α per channel for PReLU); its rate tends to LeakyReLU_α of the input current,
with the proof in :func:`signed_mt_step`. Factories build it when the recipe passes
``negative_slope`` (:func:`sjunet.neurons.registry.mt_factory`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from sjunet.neurons.base import AdvancedByStep, is_halving
from sjunet.neurons.mt import MultiThresholdNode, popcount


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
        k = torch.floor(v * (1.0 / lo)).clamp_(-levels, levels)
        n = popcount(k.abs().to(torch.int32), len(thresholds)).to(v.dtype) if count_spikes else None
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

    The membrane is :func:`~sjunet.neurons.mt.mt_step`'s with the ladder mirrored below its *dead zone* [0, θ_N): a
    negative spike fires while V < 0 and lifts V by θ_i (reset by addition; at most one spike per
    threshold and sign per step). ``charge`` M is the signed charge emitted so far (M(0) = 0). A spike
    carries amplitude θ_i while M ≥ 0 and α·θ_i while M < 0 — so a negative spike from a neuron whose
    count is below zero outputs −α·θ_i, and a spike that moves M back across zero cancels exactly
    what the earlier ones emitted. With the halving ladder both loops are one signed floor
    quantiser, ``k = clamp(floor(V·(1/θ_N)), −(2^N − 1), 2^N − 1)``, ``m = kθ_N`` (what runs; exact for a
    power-of-two θ_N, see :func:`~sjunet.neurons.mt.mt_step`).
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


def _leaky_into(x: torch.Tensor, negative_slope, out: torch.Tensor) -> torch.Tensor:
    """:func:`leaky` written into ``out`` (the same numbers: x > 0 ? x : x·α)."""
    if isinstance(negative_slope, torch.Tensor):
        return torch.where(x > 0, x, x * _per_channel(negative_slope, x), out=out)
    return torch._C._nn.leaky_relu(x, negative_slope, out=out)


def signed_mt_step_into(x: torch.Tensor, v: torch.Tensor, charge: torch.Tensor, out: torch.Tensor,
                        scratch: torch.Tensor, thresholds: Sequence[float], negative_slope,
                        count_spikes: bool = False) -> torch.Tensor | None:
    """:func:`signed_mt_step` in place, equal to it bit for bit: the membrane ``v`` and the charge M
    (a tensor: zeros before the first step) are updated, o(t) written into ``out``; ``scratch`` is a
    tensor of ``out``'s shape for the step's charge. Returns the spike count when ``count_spikes``.
    With a halving ladder and a scalar α, ten elementwise passes and no allocation."""
    v.add_(x)
    return signed_mt_fire_into(v, charge, out, scratch, thresholds, negative_slope, count_spikes)


def signed_mt_fire_into(v: torch.Tensor, charge: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor,
                        thresholds: Sequence[float], negative_slope, count_spikes: bool = False) -> torch.Tensor | None:
    """:func:`signed_mt_step_into` after V ← V + I(t) (done by a fused synapse, :mod:`sjunet.snn.fusion`)."""
    if is_halving(thresholds):
        lo = thresholds[-1]
        levels = (1 << len(thresholds)) - 1
        m = torch.mul(v, 1.0 / lo, out=scratch).floor_().clamp_(-levels, levels)
        n = popcount(m.abs().to(torch.int32), len(thresholds)).to(v.dtype) if count_spikes else None
        m.mul_(lo)
    else:
        m, n = _signed_charge(v, thresholds, count_spikes)
    v.sub_(m)
    _leaky_into(charge, negative_slope, out)  # f_α(M(t − 1))
    charge.add_(m)  # M(t)
    f_new = _leaky_into(charge, negative_slope, scratch)  # the step's charge m is spent
    torch.sub(f_new, out, out=out)
    return n


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

    inplace_memories = ("v", "charge")

    def step_into(self, xs, out, states):
        """:func:`signed_mt_step_into`, counted as the functional step counts (the same numbers)."""
        return self._signed_kernel(signed_mt_step_into, xs[:1], out, states)

    def fire_into(self, out, states):
        """:func:`signed_mt_fire_into`: :meth:`step_into` with the input current already in the membrane."""
        return self._signed_kernel(signed_mt_fire_into, (), out, states)

    def _signed_kernel(self, fn, xs, out, states):
        v, acc_out, count, events, charge = states
        scratch = self.step_buffer("charge_step", out.shape, out)
        n = self.run_kernel(fn, (*xs, v, charge, out, scratch), self.thresholds, self.negative_slope,
                            self.record_spikes,
                            tile=not (self.record_spikes or isinstance(self.negative_slope, torch.Tensor)))
        if n is not None:
            count = self._accumulate(count, n)
            events = self._accumulate(events, (out != 0).to(out.dtype))
        return [v, acc_out, count, events, charge]

    def _advance(self, x, states):
        v, acc_out, count, events, charge = states
        o, v, charge, n = self._signed_step(x, v, charge)
        if n is not None:
            count = self._accumulate(count, n)
            events = self._accumulate(events, (o != 0).to(o.dtype))
        return o, (v, acc_out, count, events, charge)
