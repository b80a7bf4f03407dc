"""The paper's peer neurons (Tables 1–2) behind the neuron interface: multi-level (ML) and real spike (RS).

**What the references define** (read as reference data; nothing copied):

* **ML** — Feng, Liu, Tang, Ma, Pan, "Multi-level firing with spiking DS-ResNet", IJCAI 2022. Its
  code, github.com/langfengQ/MLF-DSResNet ``parallel_nets/spike_layer_for_cifar10.py`` (``MLF_unit``,
  ``SpikeFunction{,2,3}``), is the reference here (the paper's text was not at hand, so no equation
  numbers are cited for ML): K = 3 LIF units per neuron, all fed the same input x(t), each with its
  own membrane and threshold V_th^k (0.6, 1.6, 2.6: V_th + (k−1)·a, spaced by the window width a = 1);
  u_k(t) = τ·u_k(t−1)·(1 − s_k(t−1)) + x(t) (τ = 0.25, hard reset to 0), s_k = [u_k > V_th^k]; the
  levels' spikes are summed, o = Σ_k s_k ∈ {0..K} ("union of all spikes"); backward, level k has its
  own rectangular window ∂s_k/∂u_k = [|u_k − V_th^k| < a/2] / a, so the K windows tile the membrane axis.
* **RS** — Guo et al., "Real spike: learning real-valued spikes for spiking neural networks", ECCV
  2022 (its abstract and an excerpt of §1 read; no official code found). Training: the binary spike is
  multiplied by a learnable real value (versions "on different levels"; channel-wise here), õ = a ⊙ s; a is
  folded at inference into the next layer's kernel, W'[:, c] = a_c·W[:, c], so W ⊛ (a ⊙ s) = W' ⊛ s: binary
  spikes, the same function (re-parameterisation, its Sec. 3.3; equation numbers not seen). The LIF and the
  amplitude initialisation come from the same group's follow-up code, github.com/yfguo91/Ternary-Spike
  ``models/spike_layer.py`` (``mem_update``, ``LIFAct``): u ← 0.25·u + x, fire at u > 0.5·V_th
  (V_th = 1), hard reset u·(1 − s), spike × ``fire_ratio`` — a (1, C, 1, 1) parameter initialised to
  ones (commented out there) — and a straight-through clamp (a width-1 rectangular window).

The Spiking-UNet paper names ML and RS (its refs. 16, 17) without parameters, and its code
(github.com/SNNresearch/Spiking-UNet) has neither. **Choices where they all are silent:**

* ``≥`` fires (SpikingJelly's Heaviside and :class:`~sjunet.neurons.mt.MultiThresholdNode`), not the
  references' ``>``: they differ only when the potential equals a threshold exactly.
* **Direct training** (:data:`ML_REFERENCE`, :data:`RS_REFERENCE`): the references' LIF leak τ = 0.25
  and hard reset. **Converted use** (factories ``"ml"``, ``"rs"``; the normalised domain, θ = 1 at
  the layer's percentile activation): IF (decay 1, no leak) with reset by subtraction — a leak loses
  charge and a hard reset loses the residue, both biasing the rate code the normalisation relies on.
* **ML, converted**: K = 3 levels as in the reference, equally spaced θ_k = k (θ_1 = 1, spacing 1 like
  a = 1). Every level integrates the same input, so level k fires at rate min(x/θ_k, 1); each spike
  carries q = 1 / Σ_k θ_k⁻¹ (6/11), which makes the rate transfer q·Σ_k min(x/θ_k, 1) exactly x on
  [0, θ_1] (the calibrated range) and saturate at ``max_output`` = K·q. The recipe's ``v_init`` (a
  potential for the lowest level; ``half`` = θ_1/2) is scaled by θ_k/θ_1 for level k, so ``half``
  starts every level at half its threshold (rounding instead of flooring).
* **RS, converted**: one threshold θ = 1, amplitudes initialised to 1 (as the Ternary code): the
  converted RS network *is* the IF network. Amplitudes learn by BPTT (``method="bptt"``); the flow
  pass passes the measured I_out on, so spiking-flow fine-tuning trains the weights only.
* **RS amplitude shape**: a 1-D parameter [C] applied as [C, 1, …, 1] (broadcast over [N, C, H, W],
  and [T, N, C, H, W] in multi-step). With ``channels=None`` it starts as one layer-wise value and is
  sized to C (same value per channel) by the first input; loading a state dict adopts its size.
* Surrogate: SpikingJelly's ``Rect(alpha=1)`` for both, the references' rectangular window of width 1.
* I_in = Σ_t x(t) is kept in its own memory ``acc_input`` (recorded with ``record``): the identity
  V_T = V_0 + I_in − I_out that MT uses does not hold with a leak or a hard reset.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from spikingjelly.activation_based import surrogate
from torch import fx, nn

from sjunet.layers.dims import CONV_TYPES, CONV_T_TYPES
from sjunet.neurons.base import AdvancedByStep, NeuronFactory, SpikingNeuron, refuse_signed, validate_ladder

RESETS = ("subtract", "zero")
#: the reference MLF unit (langfengQ/MLF-DSResNet): K = 3, LIF τ = 0.25, hard reset, unit spikes
ML_REFERENCE = {"thresholds": (0.6, 1.6, 2.6), "decay": 0.25, "reset": "zero", "amplitude": 1.0}
#: the Real Spike LIF of yfguo91/Ternary-Spike: fire at 0.5, τ = 0.25, hard reset
RS_REFERENCE = {"threshold": 0.5, "decay": 0.25, "reset": "zero"}


def _heaviside(z: torch.Tensor) -> torch.Tensor:
    return (z >= 0).to(z.dtype)


def _check_dynamics(decay: float, reset: str) -> tuple[float, str]:
    decay = float(decay)
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1] (1: IF, no leak), got {decay}")
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    return decay, reset


def ml_step(x: torch.Tensor, v: torch.Tensor, thresholds: Sequence[float], decay: float = 1.0,
            reset: str = "subtract", amplitude: float = 1.0, spike_fn=None):
    r"""One step of the multi-level (ML) neuron: K units with one membrane each, ``v`` [K, *x.shape].

    .. math::

        h_k = \tau\, v_k + I(t),\quad s_k = \Theta(h_k - \theta_k),\quad
        v_k \leftarrow \begin{cases} h_k - \theta_k s_k & \text{subtract}\\ h_k (1 - s_k) & \text{zero}
        \end{cases},\quad o(t) = q \sum_{k=1}^{K} s_k

    With τ = 0.25, ``zero`` reset, θ = (0.6, 1.6, 2.6) and q = 1 this is the reference ``MLF_unit``,
    u_k(t) = τ u_k(t−1)(1 − s_k(t−1)) + x(t), o = Σ_k s_k (``v`` holds the post-reset potential).
    ``spike_fn`` (a SpikingJelly surrogate) makes s_k differentiable; ``None``: Heaviside [z ≥ 0].
    Returns ``(o, v_new, n)`` with n = Σ_k s_k (spikes this step).
    """
    th = torch.tensor(thresholds, dtype=x.dtype, device=x.device).view(-1, *([1] * x.dim()))
    h = v + x if decay == 1.0 else decay * v + x
    s = (spike_fn or _heaviside)(h - th)
    v = h - th * s if reset == "subtract" else h * (1.0 - s)
    n = s.sum(0)
    return (n if amplitude == 1.0 else amplitude * n), v, n


def rs_step(x: torch.Tensor, v: torch.Tensor, amplitude, threshold: float = 1.0, decay: float = 1.0,
            reset: str = "subtract", spike_fn=None):
    r"""One step of the real spike (RS) neuron (Guo et al., ECCV 2022).

    .. math::

        h = \tau\, v + I(t),\quad s = \Theta(h - \theta),\quad
        v \leftarrow \begin{cases} h - \theta s & \text{subtract}\\ h (1 - s) & \text{zero}\end{cases},\quad
        o(t) = a \odot s

    ``amplitude`` a broadcasts against ``x`` (channel-wise: [C, 1, 1]). Returns ``(o, v_new, s)``.
    """
    h = v + x if decay == 1.0 else decay * v + x
    s = (spike_fn or _heaviside)(h - threshold)
    v = h - threshold * s if reset == "subtract" else h * (1.0 - s)
    return amplitude * s, v, s


def _charge_into(x: torch.Tensor, v: torch.Tensor, decay: float) -> None:
    """h = τ·v + I(t) in place (τ = 1: v + I)."""
    (v if decay == 1.0 else v.mul_(decay)).add_(x)


def _fire_into(v: torch.Tensor, th, s: torch.Tensor, reset: str) -> torch.Tensor:
    """s = Θ(h − θ) into ``s`` (a float tensor; ``h ≥ θ`` is ``h − θ ≥ 0`` for finite values) and
    the reset of ``v`` = h in place (the same numbers as the functional steps)."""
    torch.ge(v, th, out=s)
    if reset == "subtract":
        if isinstance(th, torch.Tensor):
            v.addcmul_(s, th, value=-1.0)  # h + (−s)·θ = h − θ·s
        else:
            v.add_(s, alpha=-th)
    else:
        v.mul_(1.0 - s)
    return s


def ml_step_into(x: torch.Tensor, v: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor,
                 thresholds: torch.Tensor, decay: float = 1.0, reset: str = "subtract",
                 amplitude: float = 1.0) -> torch.Tensor:
    """:func:`ml_step` in place, equal to it bit for bit: ``v`` [K, *x.shape] updated, o(t) written
    into ``out``; ``scratch`` has ``v``'s shape, ``thresholds`` is the [K, 1, …] tensor of the levels.
    Returns the spike count n (``out`` itself when the amplitude is 1, else a new tensor)."""
    _charge_into(x, v, decay)
    s = _fire_into(v, thresholds, scratch, reset)
    n = torch.sum(s, 0, out=out)
    if amplitude == 1.0:
        return n
    n = n.clone()
    out.mul_(amplitude)
    return n


def rs_step_into(x: torch.Tensor, v: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor, amplitude,
                 threshold: float = 1.0, decay: float = 1.0, reset: str = "subtract") -> torch.Tensor:
    """:func:`rs_step` in place, equal to it bit for bit: ``v`` updated, o(t) = a ⊙ s written into
    ``out``; returns the spikes s (``scratch``)."""
    _charge_into(x, v, decay)
    s = _fire_into(v, threshold, scratch, reset)
    torch.mul(amplitude, s, out=out)
    return s


def _acc(acc, value: torch.Tensor):
    return value.clone() if isinstance(acc, float) else acc + value


class _PeerNode(AdvancedByStep, SpikingNeuron):
    """Shared bookkeeping of the peers: memories ``v``, ``acc_output`` (Σ o), ``spike_count``
    (Σ spikes), ``event_count`` (Σ [o ≠ 0]), ``acc_input`` (Σ x); recording as in MT."""

    def __init__(self, step_mode: str) -> None:
        super().__init__(v_threshold=1.0, v_reset=None, surrogate_function=surrogate.Rect(alpha=1.0),
                         step_mode=step_mode)
        self._init_interface()
        self.register_memory("acc_input", 0.0)

    def _v0(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _step(self, x, v):  # pragma: no cover - interface
        raise NotImplementedError

    def _spike_fn(self):
        return self.surrogate_function if self.surrogate_gradient and torch.is_grad_enabled() else None

    def materialize_states(self, inputs, states, step_mode):
        x = inputs[0][0] if step_mode == "m" else inputs[0]
        v = states[0]
        v0 = self._v0(x)
        if not isinstance(v, torch.Tensor) or v.shape != v0.shape:
            v = v0
        elif v.dtype != x.dtype or v.device != x.device:
            v = v.to(device=x.device, dtype=x.dtype)
        return (v, *states[1:])

    def output_flow(self) -> torch.Tensor:
        """I_out = Σ_t o(t) since the last reset (needs ``record`` on)."""
        if isinstance(self.acc_output, float):
            raise RuntimeError("output_flow() needs a simulation with recording on (set_recording)")
        return self.acc_output

    def input_current(self) -> torch.Tensor:
        """I_in = Σ_t I(t) since the last reset (needs ``record`` on)."""
        if isinstance(self.acc_input, float):
            raise RuntimeError("input_current() needs a simulation with recording on (set_recording)")
        return self.acc_input

    def _step_into(self, x, v, out):  # pragma: no cover - interface
        raise NotImplementedError

    def step_into(self, xs, out, states):
        """The peer's in-place step (:func:`ml_step_into`, :func:`rs_step_into`), recorded as
        :meth:`_advance` records (the same numbers)."""
        x = xs[0]
        v, acc_out, count, events, acc_in = states
        n = self._step_into(x, v, out)
        if self.record:
            acc_out, acc_in = _acc(acc_out, out), _acc(acc_in, x)
        if self.record_spikes:
            count, events = _acc(count, n), _acc(events, (n != 0).to(n.dtype))
        return [v, acc_out, count, events, acc_in]

    def _advance(self, x, states):
        v, acc_out, count, events, acc_in = states
        o, v, n = self._step(x, v)
        if self.record:
            acc_out, acc_in = _acc(acc_out, o.detach()), _acc(acc_in, x.detach())
        if self.record_spikes:
            n = n.detach()
            count, events = _acc(count, n), _acc(events, (n != 0).to(n.dtype))
        return o, (v, acc_out, count, events, acc_in)



class MultiLevelNode(_PeerNode):
    """The ML neuron (:func:`ml_step`): K units at thresholds ``thresholds`` (ascending, level 1
    first), spikes summed with weight ``amplitude`` (``None``: q = 1/Σ_k θ_k⁻¹, unit rate gain).

    Defaults are the converted use (IF, reset by subtraction, θ = 1, 2, 3); ``MultiLevelNode(
    **ML_REFERENCE)`` is the reference unit for direct training. ``v_init``: one potential for every
    level, or one per level. ``v`` holds the K membranes, shape [K, *input shape].
    """

    def __init__(self, thresholds: Sequence[float] = (1.0, 2.0, 3.0), decay: float = 1.0,
                 reset: str = "subtract", amplitude: float | None = None,
                 v_init: float | Sequence[float] = 0.0, step_mode: str = "s") -> None:
        super().__init__(step_mode)
        th = tuple(float(t) for t in thresholds)
        if not th or any(not (t > 0 and math.isfinite(t)) for t in th) or any(a >= b for a, b in zip(th, th[1:])):
            raise ValueError(f"ML thresholds must be positive, finite and strictly increasing (level 1 first), "
                             f"got {th}")
        self.thresholds = th
        self.decay, self.reset_mode = _check_dynamics(decay, reset)  # not .reset: that is reset()
        q = 1.0 / sum(1.0 / t for t in th) if amplitude is None else float(amplitude)
        if not (q > 0 and math.isfinite(q)):
            raise ValueError(f"the spike amplitude must be a positive number, got {amplitude}")
        self.amplitude = q
        v0 = (float(v_init),) * len(th) if isinstance(v_init, (int, float)) else tuple(float(v) for v in v_init)
        if len(v0) != len(th):
            raise ValueError(f"v_init needs one value per level ({len(th)}), got {len(v0)}")
        self.v_init = v0

    def extra_repr(self) -> str:
        return (f"thresholds={self.thresholds}, decay={self.decay}, reset={self.reset_mode}, "
                f"amplitude={self.amplitude:.6g}, v_init={self.v_init}, step_mode={self.step_mode}, "
                f"record={self.record}")

    @property
    def quantum(self) -> float:
        return self.amplitude

    @property
    def max_output(self) -> float:
        return self.amplitude * len(self.thresholds)

    def spec(self) -> dict:
        return {"thresholds": list(self.thresholds), "decay": self.decay, "reset": self.reset_mode,
                "amplitude": self.amplitude, "v_init": list(self.v_init)}

    def _v0(self, x):
        init = torch.tensor(self.v_init, dtype=x.dtype, device=x.device).view(-1, *([1] * x.dim()))
        return init.expand(len(self.thresholds), *x.shape).clone()

    def _step(self, x, v):
        return ml_step(x, v, self.thresholds, self.decay, self.reset_mode, self.amplitude, self._spike_fn())

    def state_shape(self, name, x):
        return (len(self.thresholds), *x.shape)

    def init_state(self, name, buf, value, x):
        return buf.copy_(torch.tensor(self.v_init, dtype=buf.dtype).view(-1, *([1] * x.dim())).expand_as(buf))

    def _step_into(self, x, v, out):
        th = torch.tensor(self.thresholds, dtype=x.dtype, device=x.device).view(-1, *([1] * x.dim()))
        return self.kernel(ml_step_into)(x, v, out, self.step_buffer("spikes", v.shape, v), th, self.decay,
                                         self.reset_mode, self.amplitude)


class RealSpikeNode(_PeerNode):
    """The RS neuron (:func:`rs_step`): binary spikes times a learnable channel-wise ``amplitude``.

    Defaults are the converted use (IF at θ = 1, reset by subtraction, amplitudes 1: the IF neuron);
    ``RealSpikeNode(**RS_REFERENCE)`` is the reference LIF for direct training.
    :func:`reparameterize_real_spikes` folds the amplitudes into the next convolutions.
    """

    def __init__(self, threshold: float = 1.0, decay: float = 1.0, reset: str = "subtract",
                 v_init: float = 0.0, channels: int | None = None, step_mode: str = "s",
                 init: float = 1.0) -> None:
        super().__init__(step_mode)
        self.threshold = float(threshold)
        if not (self.threshold > 0 and math.isfinite(self.threshold)):
            raise ValueError(f"the threshold must be a positive number, got {threshold}")
        self.decay, self.reset_mode = _check_dynamics(decay, reset)  # not .reset: that is reset()
        self.v_init = float(v_init)
        if channels is not None and int(channels) < 1:
            raise ValueError(f"channels must be a positive integer, got {channels}")
        #: C once sized (given, from the first input, or from a loaded state dict); None: one layer-wise value
        self.channels = None if channels is None else int(channels)
        self.amplitude = nn.Parameter(torch.full((self.channels or 1,), float(init)))

    def extra_repr(self) -> str:
        return (f"threshold={self.threshold}, decay={self.decay}, reset={self.reset_mode}, v_init={self.v_init}, "
                f"channels={self.channels}, step_mode={self.step_mode}, record={self.record}")

    @property
    def quantum(self) -> float:
        a = self.amplitude.detach().abs()
        a = a[a > 0]
        return float(a.min()) if a.numel() else 1.0

    @property
    def max_output(self) -> float:
        return float(self.amplitude.detach().abs().max())

    def spec(self) -> dict:
        return {"threshold": self.threshold, "decay": self.decay, "reset": self.reset_mode, "v_init": self.v_init,
                "channels": self.channels}

    def _size(self, x: torch.Tensor, dim: int) -> None:
        if self.channels is None and x.dim() > dim:
            with torch.no_grad():  # same Parameter object, so an optimizer made before still holds it
                self.amplitude.data = self.amplitude.data.expand(x.shape[dim]).clone()
            self.channels = int(x.shape[dim])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        t = state_dict.get(prefix + "amplitude")
        if self.channels is None and isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape != self.amplitude.shape:
            self.amplitude.data = self.amplitude.data.new_empty(t.shape)
            self.channels = int(t.shape[0])
        elif isinstance(t, torch.Tensor) and t.numel() == 1 and self.amplitude.numel() > 1:
            state_dict[prefix + "amplitude"] = t.reshape(1).expand_as(self.amplitude).clone()  # one value: every channel
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def single_step_forward(self, x, *args, **kwargs):
        self._size(x, 1)
        return super().single_step_forward(x, *args, **kwargs)

    def multi_step_forward(self, x_seq, *args, **kwargs):
        self._size(x_seq, 2)
        return super().multi_step_forward(x_seq, *args, **kwargs)

    def _amp(self, x: torch.Tensor) -> torch.Tensor:
        a = self.amplitude.to(x.dtype)
        return a.view(-1, *([1] * (x.dim() - 2))) if x.dim() >= 2 else a

    def _v0(self, x):
        return torch.full_like(x, self.v_init)

    def _step(self, x, v):
        return rs_step(x, v, self._amp(x), self.threshold, self.decay, self.reset_mode, self._spike_fn())

    def init_state(self, name, buf, value, x):
        return buf.fill_(self.v_init)

    def _step_into(self, x, v, out):
        return self.kernel(rs_step_into)(x, v, out, self.step_buffer("spikes", x.shape, x), self._amp(x),
                                         self.threshold, self.decay, self.reset_mode)


def _fold(conv: nn.Module, a: torch.Tensor, where: str) -> None:
    """Scale the input channels of ``conv`` by ``a`` (in place): conv(a ⊙ s) = conv'(s)."""
    w = conv.weight
    if a.numel() not in (1, conv.in_channels):
        raise ValueError(f"{where}: {a.numel()} amplitudes for a layer of {conv.in_channels} input channels")
    a = a.to(w).expand(conv.in_channels)
    k = w.dim() - 2  # kernel axes (2 for images, 3 for volumes)
    if isinstance(conv, CONV_T_TYPES):  # weight [in, out/groups, *kernel]
        w.mul_(a.view(-1, 1, *([1] * k)))
    else:  # conv weight [out, in/groups, *kernel]: input channel c is group c // in_g, column c % in_g
        g, in_g = conv.groups, w.shape[1]
        w.view(g, w.shape[0] // g, in_g, *w.shape[2:]).mul_(a.view(g, 1, in_g, *([1] * k)))


@torch.no_grad()
def reparameterize_real_spikes(gm: fx.GraphModule) -> list[str]:
    """Real Spike's inference re-parameterisation: fold every :class:`RealSpikeNode`'s amplitudes into
    the convolutions / transposed convolutions (2-D or 3-D) it feeds (W'[:, c] = a_c·W[:, c]) and set them to 1, so the
    network fires binary spikes and computes the same function. Returns the neuron module paths.

    Every user of a real-spike node must be a convolution called only there; otherwise a
    ``ValueError`` names the node and nothing is changed.
    """
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    plan = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), RealSpikeNode):
            continue
        users = list(node.users)
        bad = [u.name for u in users if not (u.op == "call_module" and isinstance(
            modules.get(u.target), CONV_TYPES + CONV_T_TYPES))]
        if not users or bad:
            raise ValueError(f"cannot re-parameterise the real spikes of node {node.name!r} ({node.target}): "
                             f"its output feeds {', '.join(bad) or 'nothing'}; only outputs used by "
                             "convolution / transposed-convolution layers (2-D or 3-D) alone can absorb the amplitudes")
        shared = [u.name for u in users if calls[u.target] > 1]
        if shared:
            raise ValueError(f"cannot re-parameterise the real spikes of node {node.name!r}: its convolution "
                             f"{', '.join(shared)} is also called elsewhere in the graph")
        plan.append((node, users, modules[node.target].amplitude.detach().clone()))
    for node, users, a in plan:
        for u in users:
            _fold(modules[u.target], a, f"node {node.name!r} -> {u.name!r}")
    for node, _, _ in plan:
        modules[node.target].amplitude.fill_(1.0)
    return [node.target for node, _, _ in plan]


def ml_factory(thresholds: Sequence[float] = (3.0, 2.0, 1.0), v_init: float = 0.0) -> NeuronFactory:
    """Factory of converted ML neurons. ``thresholds`` is a ladder as the recipe gives it (largest
    first) and becomes the levels, lowest first; ``v_init`` (for the lowest level) is scaled by
    θ_k/θ_1 for level k (module docstring)."""
    th = tuple(reversed(validate_ladder(thresholds)))
    v0 = tuple(float(v_init) * t / th[0] for t in th)

    def factory(relu_name: str, negative_slope=None) -> MultiLevelNode:
        if negative_slope is not None:
            refuse_signed("ML", relu_name)
        return MultiLevelNode(th, v_init=v0)

    return factory


def rs_factory(thresholds: Sequence[float] = (1.0,), v_init: float = 0.0) -> NeuronFactory:
    """Factory of converted RS neurons: IF at the one threshold, amplitudes 1, sized by the first input."""
    th = validate_ladder(thresholds)
    if len(th) != 1:
        raise ValueError(f"--neuron rs takes exactly one threshold, got {th}")

    def factory(relu_name: str, negative_slope=None) -> RealSpikeNode:
        if negative_slope is not None:
            refuse_signed("RS", relu_name)
        return RealSpikeNode(th[0], v_init=v_init)

    return factory


__all__ = ["ML_REFERENCE", "MultiLevelNode", "RS_REFERENCE", "RealSpikeNode", "ml_factory", "ml_step", "ml_step_into",
           "reparameterize_real_spikes", "rs_factory", "rs_step", "rs_step_into"]
