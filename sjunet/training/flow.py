"""Fine-tuning a converted Spiking-UNet with spiking flow (paper §3.4, Algorithm 1; spec §7).

One iteration on a batch (x, y):

1. **Simulate** T steps without autograd, recording per neuron layer l the accumulated input
   current I_in^l = Σ_t I^l(t) and output flow I_out^l = Σ_t o^l(t) (paper Eq. 9–10).
2. **One differentiable pass** over the same graph on accumulated quantities
   (:class:`FlowPass`): a synaptic layer maps the measured I_out of its sources to
   Î_in^l = W̃ I_out^(l−1) + T·b̃ (the first layer gets T·x); a neuron layer passes on a tensor
   whose value is the measured I_out^l and whose gradient with respect to Î_in^l is the gate
   p^l = [I_in^l > 0] (straight-through, stored as booleans) — for a signed neuron (leaky ReLU,
   PReLU) the leaky derivative, 1 where I_in^l > 0 and α elsewhere (α fixed).
3. **Loss on the output flow** (:func:`flow_loss`): segmentation — cross-entropy with logits
   I_in^L / T (paper Eq. 11 writes I_in^L; dividing by T is a temperature T that keeps logits in
   the ANN's units so one learning rate serves every T); denoising — MAE between I_in^L / T and
   the noise map (paper Eq. 12). Optionally (:mod:`sjunet.training.distill`) distillation from the ANN the
   SNN was converted from (rebuilt from the SNN itself) on the output and on every layer's rate.
4. **Update** W̃ and b̃ (optionally after a linear learning-rate warm-up, with the gradient norm
   clipped); thresholds stay fixed.

Memory is the no-grad simulation plus one ANN-sized set of activations: it does not grow with T.
This module is the method (steps 1–4 on a batch: :func:`finetune_loss`, :func:`train_step`);
``sjunet finetune`` is :func:`sjunet.training.finetuning.finetune`, which runs it in the shared loop
:func:`sjunet.training.loop.fit` with the converted SNN's own validation score as the bar: its output
is never worse on validation than its input (when nothing beats the input, the output is the input
SNN, and its record says so). Defaults differ from the paper deliberately: Adam with cosine decay
and ``lr="auto"`` — a short trial of 1e-5 … 3e-4 on the validation split
(:func:`sjunet.training.lr_trials.lr_range_test`), chosen over fixed rates and over distillation by
the ablation ``python -m sjunet.benchmarks ftrecipe`` at widths 16 and 64 — where the paper's 1e-6 is
far too slow on CPU budgets; the label loss alone (distillation from the ANN is an option,
``loss="both"``); the best checkpoint chosen on a validation split carved from the training images.

``method="bptt"`` trains the same network through time with a SpikingJelly surrogate gradient,
for cost comparison only (memory grows linearly with T).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from spikingjelly.activation_based import functional
from torch import fx, nn

from sjunet.graph import SYNAPTIC_TYPES
from sjunet.layers import dims
from sjunet.neurons import SpikingNeuron, StaticInputSynapse, is_neuron
from sjunet.snn.simulation import FlowRecord, record_flow
from sjunet.tasks import Task
from sjunet.training.distill import LOSSES, Teacher, distill_loss, layer_loss

METHODS = ("flow", "bptt")


def _affine_sum(m: nn.Module, inp: torch.Tensor, T: float) -> torch.Tensor:
    """W̃·inp + T·b̃ for a Conv / ConvTranspose of 2-D images or 3-D volumes, or a Linear (the layer
    summed over T steps); the functional of the layer's own dimensionality (:func:`sjunet.layers.dims.functional`)."""
    if isinstance(m, nn.Linear):
        return torch.nn.functional.linear(inp, m.weight, None if m.bias is None else T * m.bias)
    if not isinstance(m, nn.modules.conv._ConvNd):
        raise TypeError(f"not a synaptic layer: {type(m).__name__}")
    nd = len(m.kernel_size)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        y = dims.functional("conv_t", nd)(inp, m.weight, None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
    else:
        y = dims.functional("conv", nd)(inp, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
    if m.bias is not None:
        y = y + (T * m.bias).view(1, -1, *([1] * nd))
    return y


class _StraightThroughFlow(torch.autograd.Function):
    """Forward: the measured I_out (no copy). Backward: grad · p with p = [I_in > 0] kept as booleans,
    so a neuron layer adds no float tensor to the autograd graph. ``slope`` (the neuron's
    ``activation_gradient``) turns the gate into the ANN activation's derivative: the gate itself for
    a ReLU, 1 / α for a leaky ReLU or PReLU (whose α stays fixed: it is a buffer, not a parameter)."""

    @staticmethod
    def forward(ctx, i_hat, i_out, gate, slope=None):
        ctx.save_for_backward(gate)
        ctx.slope = slope
        return i_out.view_as(i_out)

    @staticmethod
    def backward(ctx, grad):
        (gate,) = ctx.saved_tensors
        return grad * (gate if ctx.slope is None else ctx.slope(gate)), None, None, None


class _SigmaDeltaFlow(torch.autograd.Function):
    """A Σ-Δ neuron in the flow pass. Forward: the measured I_out. Backward: the vector-Jacobian
    product of T·f(λ_in Î/T)/λ_out (or of the product g) at the measured accumulated inputs
    (:meth:`~sjunet.neurons.sigma_delta.SigmaDeltaNode.flow_vjp`): f' at the mean input for the
    ReLU's gate, each factor's mean for a product's."""

    @staticmethod
    def forward(ctx, neuron, T, i_out, sums, *i_hats):
        ctx.neuron, ctx.T, ctx.sums = neuron, T, sums
        return i_out.view_as(i_out)

    @staticmethod
    def backward(ctx, grad):
        return (None, None, None, None, *ctx.neuron.flow_vjp(grad, ctx.sums, ctx.T))


class FlowPass(fx.Interpreter):
    """Step 2: the differentiable pass over the SNN's graph on accumulated quantities.

    Returns Î_in^L (the output layer's accumulated input current). ``self.currents`` holds
    Î_in^l of every neuron layer (for checking against the recorded I_in).
    """

    def __init__(self, snn: fx.GraphModule, record: FlowRecord, keep_currents: bool = False,
                 keep_outputs: bool = False) -> None:
        super().__init__(snn)
        self.record = record
        self.keep_currents = keep_currents
        self.keep_outputs = keep_outputs
        self.currents: dict[str, torch.Tensor] = {}
        #: the straight-through I_out^l of every neuron layer (gradient via the gate), with keep_outputs
        self.outputs: dict[str, torch.Tensor] = {}

    def call_module(self, target, args, kwargs):
        m = self.fetch_attr(target)
        T = self.record.T
        if is_neuron(m) and hasattr(m, "flow_vjp"):
            if self.keep_currents:
                self.currents[target] = args[0]
            out = _SigmaDeltaFlow.apply(m, T, self.record.outputs[target], self.record.gates[target], *args)
            if self.keep_outputs:
                self.outputs[target] = out
            return out
        if is_neuron(m):
            i_hat = args[0]
            if self.keep_currents:
                self.currents[target] = i_hat
            slope = None if type(m).activation_gradient is SpikingNeuron.activation_gradient else m.activation_gradient
            out = _StraightThroughFlow.apply(i_hat, self.record.outputs[target], self.record.gates[target], slope)
            if self.keep_outputs:
                self.outputs[target] = out
            return out
        if isinstance(m, StaticInputSynapse):
            return _affine_sum(m.layer, T * args[0], T)
        if isinstance(m, SYNAPTIC_TYPES):
            return _affine_sum(m, args[0], T)
        if hasattr(m, "flow"):  # sjunet stages: gains, affine, max-pool of counts, interpolation, padding
            return m.flow(*args, T=T, **kwargs)
        return super().call_module(target, args, kwargs)  # average pooling, concatenation (linear, no bias)


class FlowModule(nn.Module):
    """Step 2 as a module (so DistributedDataParallel can wrap it, spec §13): ``forward(x, record)``
    runs :class:`FlowPass` over ``snn`` and returns ``(Î_in^L, {neuron: straight-through I_out^l})``."""

    def __init__(self, snn: fx.GraphModule, keep_outputs: bool = False) -> None:
        super().__init__()
        self.snn = snn
        self.keep_outputs = keep_outputs

    def forward(self, x: torch.Tensor, record: FlowRecord):
        functional.set_step_mode(self.snn, "s")
        p = FlowPass(self.snn, record, keep_outputs=self.keep_outputs)
        return p.run(x), p.outputs


def flow_forward(snn: fx.GraphModule, x: torch.Tensor, T: int, chunk: int = 1, keep_outputs: bool = False,
                 count_spikes: bool = False, runner: nn.Module | None = None):
    """Steps 1–2: returns Î_in^L (accumulated over T steps) with the flow gradient attached; with
    ``keep_outputs`` ``(Î_in^L, {neuron: straight-through I_out^l}, {neuron: spike counts or None})``.

    The no-grad simulation runs on ``snn`` itself; the differentiable pass on ``runner`` (a
    :class:`FlowModule` of ``snn``, or its DistributedDataParallel wrapper under torchrun)."""
    rec = record_flow(snn, x, T, chunk, count_spikes=count_spikes)
    out, outputs = (runner or FlowModule(snn, keep_outputs))(x, rec)
    return (out, outputs, rec.spikes) if keep_outputs else out


def bptt_forward(snn: fx.GraphModule, x: torch.Tensor, T: int) -> torch.Tensor:
    """The BPTT baseline: T multi-step steps with autograd through time (surrogate spikes);
    returns the accumulated output current I_in^L, as :func:`flow_forward`."""
    functional.reset_net(snn)
    functional.set_step_mode(snn, "m")
    neurons = [m for m in snn.modules() if is_neuron(m)]
    for m in neurons:
        m.surrogate_gradient = True
    try:
        out = snn(x.unsqueeze(0).expand(T, *x.shape)).sum(0)
    finally:
        for m in neurons:
            m.surrogate_gradient = False
    return out


def flow_loss(task: Task, i_in: torch.Tensor, target: torch.Tensor, T: int) -> torch.Tensor:
    """Step 3, the fine-tuning loss on the output flow (paper Eq. 11 and 12).

    ``i_in`` is the output layer's accumulated input current Î_in^L, as :func:`flow_forward`
    (and :func:`bptt_forward`) return it.

    * segmentation (Eq. 11): cross-entropy with logits I_in^L / T. The paper writes the logits as
      I_in^L; dividing by T is a temperature T that keeps the logits in the ANN's units, so one
      learning rate serves every T;
    * denoising (Eq. 12): mean absolute error between I_in^L / T and the true noise map.

    Both are ``task.loss`` (:mod:`sjunet.tasks`), the ANN's training loss, on I_in^L / T.
    """
    return task.loss(i_in / T, target)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the fine-tuning objective: the label loss (:func:`flow_loss`), distillation of
    the output from the ANN and of every layer's rate (:mod:`sjunet.training.distill`)."""

    label: float = 1.0
    distill: float = 0.0
    layer: float = 0.0
    #: β of the spike-budget penalty on the SOP-convention energy ratio (:class:`SopPenalty`)
    energy: float = 0.0

    @classmethod
    def of(cls, loss: str, layer: float = 0.0, energy: float = 0.0) -> "LossWeights":
        if loss not in LOSSES:
            raise ValueError(f"unknown --loss {loss!r}; choose one of {', '.join(LOSSES)}")
        for flag, v in (("--layer-weight", layer), ("--energy-penalty", energy)):
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{flag} must be a non-negative number, got {v}")
        return cls(label=0.0 if loss == "distill" else 1.0, distill=0.0 if loss == "label" else 1.0, layer=layer,
                   energy=energy)

    @property
    def needs_teacher(self) -> bool:
        return self.distill > 0 or self.layer > 0


class SopPenalty:
    """The spike budget: a differentiable estimate of the SOP-convention energy ratio of a batch.

    SOPs are Σ_l Σ_positions spikes^l × F^l (fan-out maps, :mod:`sjunet.evaluation.fanout`). Their surrogate
    is the output flow in quanta, S = Σ_l Σ_positions (I_out^l / θ_N^l) × F^l, whose gradient
    reaches every layer through the flow pass's straight-through gate; it is scaled by the batch's
    measured SOPs / S (no gradient), so the penalty's value is the measured ratio
    SOPs·E_AC / (ANN MACs·E_MAC) (the analog first layer and spiking max-pools left out) and its
    gradient pushes every layer's flow down in proportion to its fan-out."""

    def __init__(self, snn: fx.GraphModule) -> None:
        self.snn = snn
        self.cache: dict[tuple[int, ...], tuple[dict, float]] = {}

    def structure(self, shape: tuple[int, ...]):
        if shape not in self.cache:
            from sjunet.evaluation.energy import graph_macs
            from sjunet.evaluation.fanout import fanout_maps, node_shapes

            shapes = node_shapes(self.snn, shape)
            self.cache[shape] = (fanout_maps(self.snn, shape, shapes), float(graph_macs(self.snn, shapes)))
        return self.cache[shape]

    def __call__(self, x: torch.Tensor, flows: dict[str, torch.Tensor], spikes: dict[str, torch.Tensor]) -> torch.Tensor:
        from sjunet.evaluation.energy import E_AC, E_MAC

        maps, macs = self.structure(tuple(int(s) for s in x.shape[1:]))
        surrogate, measured = 0.0, 0.0
        for name, flow in flows.items():
            fo = maps[name]
            f = fo.map.to(flow.device, flow.dtype)
            m = self.snn.get_submodule(name)
            q = m.quantum
            # a Σ-Δ neuron's flow is signed (it takes spikes back): its spikes are the size of what it sent
            spent = flow.abs() if hasattr(m, "flow_vjp") else flow
            surrogate = surrogate + (fo.collapse(spent) / q * f).sum()
            measured += fo.weigh(spikes[name])[1]
        scale = measured / max(float(surrogate.detach()), 1e-12)
        return surrogate * scale * E_AC / (x.shape[0] * macs * E_MAC)


def finetune_loss(snn, task: Task, x: torch.Tensor, y: torch.Tensor, T: int, method: str = "flow",
                  chunk: int = 1, teacher: Teacher | None = None, weights: LossWeights = LossWeights(),
                  penalty: SopPenalty | None = None, runner: nn.Module | None = None) -> torch.Tensor:
    """Steps 1–3 on a batch: the output flow (or the BPTT output) and the weighted objective
    (``runner``: the differentiable pass's module, see :func:`flow_forward`)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if weights.needs_teacher and teacher is None:
        raise ValueError("distillation needs the teacher (the input SNN run as its ANN)")
    if weights.energy and (method != "flow" or penalty is None):
        raise ValueError("the spike budget (--energy-penalty) needs the flow method and its SopPenalty")
    layered = (weights.layer > 0 or weights.energy > 0) and method == "flow"
    rates = spikes = None
    if method == "flow":
        out = flow_forward(snn, x, T, chunk, keep_outputs=layered, count_spikes=weights.energy > 0, runner=runner)
        if layered:
            out, rates, spikes = out
    else:
        out = bptt_forward(snn, x, T)
    loss = weights.label * flow_loss(task, out, y, T) if weights.label else 0.0
    if weights.needs_teacher:
        t_out, acts = teacher(x)
        if weights.distill:
            loss = loss + weights.distill * distill_loss(task.kind, out / T, t_out)
        if weights.layer and rates is not None:
            loss = loss + weights.layer * layer_loss({k: v / T for k, v in rates.items()}, acts)
    if weights.energy:
        loss = loss + weights.energy * penalty(x, rates, spikes)
    return loss


def train_step(snn, optimizer, task: Task, x, y, T: int, method: str = "flow", chunk: int = 1) -> float:
    """One fine-tuning iteration (steps 1–4 of Algorithm 1) outside the loop; returns the loss."""
    loss = finetune_loss(snn, task, x, y, T, method, chunk)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    functional.reset_net(snn)
    return float(loss.detach())
