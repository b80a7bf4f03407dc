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
   the noise map (paper Eq. 12). Optionally (:mod:`sjunet.distill`) distillation from the ANN the
   SNN was converted from (rebuilt from the SNN itself) on the output and on every layer's rate.
4. **Update** W̃ and b̃ (optionally after a linear learning-rate warm-up, with the gradient norm
   clipped); thresholds stay fixed.

Memory is the no-grad simulation plus one ANN-sized set of activations: it does not grow with T.
Defaults differ from the paper deliberately: Adam with cosine decay and ``lr="auto"`` — a short
trial of 1e-5 … 3e-4 on the validation split (:func:`lr_range_test`), chosen over fixed rates and
over distillation by the ablation ``python -m sjunet.benchmarks ftrecipe`` at widths 16 and 64 —
where the paper's 1e-6 is far too slow on CPU budgets; the label loss alone (distillation from
the ANN is an option, ``loss="both"``); the best checkpoint chosen on a validation split carved
from the training images. :func:`finetune` runs the shared loop :func:`sjunet.loop.fit` with the
converted SNN's own validation score as the bar: its output is never worse on validation than
its input (when nothing beats the input, the output is the input SNN, and its record says so).

``method="bptt"`` trains the same network through time with a SpikingJelly surrogate gradient,
for cost comparison only (memory grows linearly with T).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from spikingjelly.activation_based import functional
from torch import fx, nn
from tqdm.auto import tqdm

from sjunet import dims
from sjunet.distill import LOSSES, Teacher, distill_loss, layer_loss
from sjunet.neurons import SpikingNeuron, StaticInputSynapse, is_neuron
from sjunet.graph import SYNAPTIC_TYPES
from sjunet.simulation import FlowRecord, record_flow
from sjunet.snn import SpikingUNet, input_fingerprint, size_rule
from sjunet.tasks import Task

METHODS = ("flow", "bptt")


def _affine_sum(m: nn.Module, inp: torch.Tensor, T: float) -> torch.Tensor:
    """W̃·inp + T·b̃ for a Conv / ConvTranspose of 2-D images or 3-D volumes (the layer summed over
    T steps); the functional of the layer's own dimensionality (:func:`sjunet.dims.functional`)."""
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
    the output from the ANN and of every layer's rate (:mod:`sjunet.distill`)."""

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

    SOPs are Σ_l Σ_positions spikes^l × F^l (fan-out maps, :mod:`sjunet.fanout`). Their surrogate
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
            from sjunet.energy import graph_macs
            from sjunet.fanout import fanout_maps, node_shapes

            shapes = node_shapes(self.snn, shape)
            self.cache[shape] = (fanout_maps(self.snn, shape, shapes), float(graph_macs(self.snn, shapes)))
        return self.cache[shape]

    def __call__(self, x: torch.Tensor, flows: dict[str, torch.Tensor], spikes: dict[str, torch.Tensor]) -> torch.Tensor:
        from sjunet.energy import E_AC, E_MAC

        maps, macs = self.structure(tuple(int(s) for s in x.shape[1:]))
        surrogate, measured = 0.0, 0.0
        for name, flow in flows.items():
            f = maps[name].map.to(flow.device, flow.dtype)
            q = self.snn.get_submodule(name).quantum
            surrogate = surrogate + (flow.sum(dim=(0, 1)) / q * f).sum()
            measured += float((spikes[name].sum(dim=(0, 1)) * f).sum())
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


#: learning rates ``lr="auto"`` tries, and the iterations it gives each
LR_CANDIDATES = (1e-5, 3e-5, 1e-4, 3e-4)
LR_TRIAL_ITERS = 20
#: the share of a fine-tuning budget (``max_minutes``, ``max_iters``) the ``lr="auto"`` trials may take
LR_TRIAL_SHARE = 0.25
#: fewer trial iterations per rate than this and the trials are skipped (``--max-iters`` too small)
LR_TRIAL_MIN = 2
#: the rate ``lr="auto"`` uses when the trials are skipped
LR_FALLBACK = 1e-4
#: a fine-tuned checkpoint replaces the input only when it beats the input's validation score by
#: more than this fraction of it: smaller gains are the validation images' noise (measured: +0.010 dB
#: on BSD validation crops came with −0.015 dB on BSD68; every gain above 0.1 % in the fine-tuning
#: tables carried over to the test images with its sign)
MIN_GAIN = 1e-3


def plan_lr_trials(max_iters: int | None, iters: int = LR_TRIAL_ITERS,
                   candidates=LR_CANDIDATES) -> tuple[int, str]:
    """Iterations per rate of the ``lr="auto"`` trials under an iteration budget, and why when it is
    fewer than ``iters``: the trials take at most :data:`LR_TRIAL_SHARE` of ``max_iters`` (split over
    the rates; they count against it), and are skipped (0) when that leaves fewer than
    :data:`LR_TRIAL_MIN` per rate — then the rate is :data:`LR_FALLBACK`."""
    if max_iters is None:
        return iters, ""
    per = min(iters, int(max_iters * LR_TRIAL_SHARE) // len(candidates))
    if per < LR_TRIAL_MIN:
        return 0, (f"--max-iters {max_iters} is too small for the learning-rate trials (a quarter of it, "
                   f"{int(max_iters * LR_TRIAL_SHARE)}, leaves under {LR_TRIAL_MIN} iterations for each of "
                   f"{len(candidates)} rates): trials skipped, lr {LR_FALLBACK:g}")
    if per < iters:
        return per, (f"{per} iterations per rate (a quarter of --max-iters {max_iters}, counted against it; "
                     f"{iters} without a budget)")
    return per, ""


@dataclass
class FinetuneOptions:
    """Options of :func:`finetune` (the SNN itself is its first argument; ``output`` is where the
    best is written during the run, and ``<output>.last.pt`` what ``resume`` continues from)."""

    dataset: str
    data: str | None = None
    output: str = "runs/snn_ft.safetensors"
    T: int = 10
    epochs: int = 10
    batch_size: int = 4
    #: a learning rate, or "auto": the best of :data:`LR_CANDIDATES` after a short trial each (:func:`lr_range_test`);
    #: "auto" is the default, chosen by the ablation ``python -m sjunet.benchmarks ftrecipe`` (widths 16 and 64)
    lr: float | str = "auto"
    optimizer: str = "adam"
    schedule: str = "cosine"
    method: str = "flow"
    chunk: int = 1
    seed: int = 0
    max_minutes: float | None = None
    max_iters: int | None = None
    val_every: int | None = None
    val_limit: int | None = None
    device: str = "cpu"
    dataset_options: dict = field(default_factory=dict)
    #: objective: "label" (Eq. 11/12), "distill" (from the ANN the SNN came from) or "both"
    loss: str = "label"
    #: weight of the per-layer rate distillation (0: off)
    layer_weight: float = 0.0
    #: iterations of linear learning-rate warm-up (from lr/10)
    warmup: int = 0
    #: clip each step's gradient norm to this (None: off)
    grad_clip: float | None = None
    #: iterations per learning rate of the ``lr="auto"`` trial
    lr_trial_iters: int = LR_TRIAL_ITERS
    #: β of the spike budget: adds β × (SOP-convention energy / ANN energy) to the loss (0: off)
    energy_penalty: float = 0.0
    #: weights of the segmentation loss: "auto", "none" or "w1,w2" (:func:`sjunet.tasks.resolve_class_weights`)
    class_weights: str = "auto"



def lr_range_test(snn: nn.Module, step, train_ds, validate, optimizer: str = "adam", candidates=LR_CANDIDATES,
                  iters: int = LR_TRIAL_ITERS, batch_size: int = 4, seed: int = 0, grad_clip: float | None = None,
                  device: str = "cpu", max_seconds: float | None = None, progress: bool = False,
                  baseline: float | None = None, fallback: float = LR_FALLBACK) -> tuple[float, dict[float, float]]:
    """Try each learning rate for ``iters`` iterations from the same weights and data, validate,
    and return ``(the best, {lr: validation score})``; the weights are restored afterwards, and
    the global random state is left as it was. A trial whose loss is not finite scores −inf.
    Ties (within 1e-6) go to the smaller rate. With ``max_seconds`` each rate's training stops
    after its equal share of that time (at least one iteration each). ``progress`` shows a bar
    over all the trial iterations.

    ``baseline``: the input's validation score. When no trial beats it, the trials have seen only
    the first dip of fine-tuning (measured: at T = 1 on EM every rate is below the input after 20
    iterations, and every rate is above it after 80), which ranks the rates by how little they
    moved — the smallest would win and then learn nothing in the budget. Then ``fallback`` (the
    recipe's rate) is returned instead."""
    from torch.utils.data import DataLoader

    from sjunet.loop import make_optimizer, rng_preserved

    start = {k: v.detach().clone() for k, v in snn.state_dict().items()}
    params = [p for p in snn.parameters() if p.requires_grad]
    scores: dict[float, float] = {}
    bar = tqdm(total=iters * len(candidates), desc="lr trials", disable=not progress, leave=False)
    with rng_preserved():
        for lr in candidates:
            bar.set_postfix(lr=f"{lr:g}")
            snn.load_state_dict(start)
            opt = make_optimizer(optimizer, params, lr)
            loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(seed))
            finite, t0 = True, time.monotonic()
            for i, (x, y) in enumerate(loader):
                if i >= iters or (i and max_seconds is not None
                                  and time.monotonic() - t0 > max_seconds / len(candidates)):
                    break
                loss = step(x.to(device), y.to(device))
                if not torch.isfinite(loss.detach()):
                    finite = False
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                bar.update(1)
            scores[lr] = validate()[0] if finite else -math.inf
    bar.close()
    snn.load_state_dict(start)
    top = max(scores.values())
    if baseline is not None and top <= baseline:
        return fallback, scores
    best = min(lr for lr, v in scores.items() if v >= top - 1e-6)
    return best, scores


def finetune_record(record: dict) -> dict | None:
    """The fine-tuning part of an SNN file's record (``None`` for a converted, not fine-tuned SNN):
    ``kept`` (``"input"`` or where the best validation was), ``score``, ``input_score``,
    ``improvement``, ``val``, ``input_val``, ``options``, ``history``…"""
    ft = record.get("finetune")
    return ft if isinstance(ft, dict) else None


def finetune(snn: SpikingUNet, opts: FinetuneOptions | None = None, resume: bool = False, progress: bool = True,
             force: bool = False, **kwargs) -> tuple[SpikingUNet, dict]:
    """``sjunet finetune``: fine-tune a converted SNN at T steps with :func:`sjunet.loop.fit`.

    ``snn`` (a :class:`~sjunet.snn.SpikingUNet`: from :func:`sjunet.recipe.convert`, or read by
    :func:`sjunet.recipe.load_snn`) is not changed: a copy is trained. The converted SNN's
    validation score, measured before the first step, is the bar: the output is the best of {the
    input SNN, every validation}, written to ``opts.output`` at every new best (a long run never
    loses its result) and returned. Returns ``(the fine-tuned SpikingUNet, summary)``: the network
    holds the best weights and its record's ``finetune`` (what the file's record holds; on the
    other ranks of a torchrun, the network as the loop left it). The summary is the loop's
    summary plus ``output``, ``before`` (the input's metrics), ``best`` (``at``, ``epoch``,
    ``iteration``, ``val``, ``score``), ``kept`` (``"input"`` or where the best was) and
    ``improved``, ``metric`` (the selection metric's name: ``f1_vessel``…), ``stopped_message``,
    ``timing`` (minutes of ``setup``, ``lr_trials``, ``baseline_validation``, ``training``) and
    ``class_weights``. Raises :class:`sjunet.loop.DivergedError` on a non-finite loss or score.

    Budgets: ``max_minutes`` and ``max_iters`` bound the optimisation — the ``lr="auto"`` trials
    (at most a quarter of either, :func:`plan_lr_trials`) and the training iterations together;
    loading the data and validating the input SNN are not counted (they are timed and reported).
    """
    from sjunet.evaluation import check_compatible, evaluate_snn
    from sjunet.data import check_fits
    from sjunet.io import SNN_KIND, file_fingerprint
    from sjunet.loop import (SCHEDULES, LoopOptions, check_options, fit, make_optimizer, make_schedule, run_outputs,
                             seed_everything, train_val_datasets)
    from sjunet.recipe import load_snn, save_snn
    from sjunet.tasks import describe_weights, parse_class_weights, resolve_class_weights, task_for

    started = time.monotonic()
    opts = opts or FinetuneOptions(**kwargs)
    if opts.method not in METHODS:
        raise ValueError(f"unknown --method {opts.method!r}; choose one of {', '.join(METHODS)}")
    if opts.schedule not in SCHEDULES:
        raise ValueError(f"unknown --schedule {opts.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    auto_lr = opts.lr == "auto"
    check_options(lr=None if auto_lr else opts.lr, T=opts.T, chunk=opts.chunk, val_limit=opts.val_limit)
    weights = LossWeights.of(opts.loss, opts.layer_weight, opts.energy_penalty)
    parse_class_weights(opts.class_weights)
    if opts.warmup < 0:
        raise ValueError(f"--warmup must be a non-negative number of iterations, got {opts.warmup}")
    loop_opts = LoopOptions(epochs=opts.epochs, batch_size=opts.batch_size, seed=opts.seed,
                            max_minutes=opts.max_minutes, max_iters=opts.max_iters, val_every=opts.val_every,
                            device=opts.device, progress=progress, desc=f"finetune {opts.method} T={opts.T}",
                            train_mode=False, grad_clip=opts.grad_clip, min_gain=MIN_GAIN)
    if not isinstance(snn, SpikingUNet):
        raise TypeError(f"finetune takes a SpikingUNet (sjunet.convert, or sjunet.load_snn of a file), not a "
                        f"{type(snn).__name__}")
    source = dict(snn.source or {})
    if source.get("path") and Path(source["path"]).resolve() == Path(opts.output).resolve():
        raise ValueError(f"the output {opts.output} is the input SNN: choose another -o")
    from sjunet import distributed

    w = distributed.init(opts.device)
    opts = FinetuneOptions(**{**asdict(opts), "device": distributed.device_for(opts.device)})  # "auto" resolved
    loop_opts.device = opts.device
    show = progress and w.main

    def say(message: str) -> None:
        if show:
            tqdm.write(message)

    with run_outputs(opts.output, force=force, resume=resume, what="fine-tuned SNN") as (output, last):
        say(f"finetune: reading {opts.dataset} (loading and preprocessing the images)…")
        seed_everything(opts.seed)
        snn = copy.deepcopy(snn)  # the caller's network stays as it was
        functional.reset_net(snn)
        snn.to(opts.device)
        source_fingerprint = input_fingerprint(snn)
        train_ds, val_ds = train_val_datasets(opts.dataset, opts.data, opts.seed, opts.dataset_options)
        conv = snn.record.conversion
        check_compatible(train_ds, conv.input_channels, conv.output_channels, snn.record.task, what="the SNN")
        task = task_for(train_ds)
        class_weights, weights_record = resolve_class_weights(opts.class_weights, task, train_ds)
        if class_weights is not None:
            task.class_weights = class_weights
        loop_opts.metric = task.metric
        say(f"finetune: {len(train_ds)} training items, {len(val_ds)} validation items; the output is the best on "
            f"validation {task.metric} of the input SNN and every validation; {describe_weights(weights_record, task)}")
        multiple = size_rule(snn)
        check_fits(train_ds, multiple, padded=False, what="the SNN")  # before any long work
        params = [p for p in snn.parameters() if p.requires_grad]
        teacher = Teacher(snn).to(opts.device) if weights.needs_teacher else None
        penalty = SopPenalty(snn) if weights.energy else None
        runner = FlowModule(snn, keep_outputs=weights.layer > 0 or weights.energy > 0)
        if w.active and opts.method == "flow":  # only the differentiable pass goes through DDP
            runner = torch.nn.parallel.DistributedDataParallel(runner)

        def step(x, y):
            return finetune_loss(snn, task, x, y, opts.T, opts.method, opts.chunk, teacher, weights, penalty,
                                 runner)

        def validate():
            r = evaluate_snn(snn, val_ds, [opts.T], task, chunk=4, limit=opts.val_limit, multiple=multiple,
                             progress=False, device=opts.device)
            val = r["T"][str(opts.T)]
            return task.score(val), val

        lr, trials = opts.lr, None
        measured: dict = {}  # the input's validation (score, metrics), when the lr trials measured it
        per_rate, why = plan_lr_trials(opts.max_iters, opts.lr_trial_iters) if auto_lr else (0, "")
        trial_minutes = 0.0
        if auto_lr and resume:  # the rate the interrupted run chose (its trials are not repeated)
            lr = _resumed_lr(last)
        elif auto_lr and per_rate == 0:
            lr = LR_FALLBACK
            say(f"--lr auto: {why}")
        elif auto_lr:  # the trials take at most a quarter of each budget, and count against it
            say(f"--lr auto: trying {len(LR_CANDIDATES)} learning rates ({', '.join(f'{c:g}' for c in LR_CANDIDATES)}), "
                f"{per_rate} iterations each" + (f" — {why}" if why else "")
                + (f", at most {opts.max_minutes * LR_TRIAL_SHARE:.2f} min of training (a quarter of --max-minutes)"
                   if opts.max_minutes is not None else "")
                + f", each then validated on {task.metric}…")
            t_trials = time.monotonic()
            measured["input"] = validate()  # the bar the trials must beat to rank the rates at all
            input_score = measured["input"][0]
            lr, trials = lr_range_test(snn, step, train_ds, validate, opts.optimizer, iters=per_rate,
                                       batch_size=opts.batch_size, seed=opts.seed, grad_clip=opts.grad_clip,
                                       device=opts.device, max_seconds=None if opts.max_minutes is None
                                       else opts.max_minutes * 60 * LR_TRIAL_SHARE, progress=show,
                                       baseline=input_score)
            trial_minutes = (time.monotonic() - t_trials) / 60
            say(f"learning-rate trials (validation {task.metric}; the input: {input_score:.4f}): " + ", ".join(
                f"{k:g}: {v:.4f}" for k, v in trials.items()) + f" -> {lr:g}"
                + (" (no trial beat the input: the recipe's rate)" if max(trials.values()) <= input_score else "")
                + f"  ({trial_minutes:.2f} min)")
        if auto_lr and (not resume or opts.max_iters is not None):  # the same plan on --resume: one budget
            loop_opts.reserved_iters = per_rate * len(LR_CANDIDATES)
        loop_opts.reserved_minutes = trial_minutes
        optimizer = make_optimizer(opts.optimizer, params, lr)
        total = opts.epochs * math.ceil(len(train_ds) / opts.batch_size)  # --max-iters is a budget, not the length
        sched = make_schedule(optimizer, opts.schedule, total, opts.warmup, lr)

        baseline: dict = {}
        kept: dict = {}  # the best so far in memory (state on the CPU, record): what is returned

        def save_best(entry: dict, history: list) -> None:
            if entry["at"] == "input":
                baseline.update(entry)
            elif not baseline:  # resumed: the input's entry is the first of the history
                baseline.update(history[0])
            record = {
                "kept": entry["at"], "epoch": entry["epoch"], "iteration": entry["iteration"], "step": entry["step"],
                "val": entry["val"], "score": entry["score"],
                "input_val": baseline["val"], "input_score": baseline["score"],
                "improvement": entry["score"] - baseline["score"],
                "options": asdict(opts), "lr": lr, "lr_trials": trials, "metric": task.metric,
                "class_weights": weights_record,
                "source_snn_fingerprint": source_fingerprint, "history": history,
            }
            kept.update(state={k: v.detach().cpu().clone() for k, v in snn.state_dict().items()}, record=record)
            on_cpu = all(t.device.type == "cpu" for t in snn.state_dict().values())
            if not on_cpu:
                functional.reset_net(snn)
            save_snn(snn if on_cpu else copy.deepcopy(snn).cpu(), output, extra={"finetune": record},
                     sources={"snn": source.get("path"), "snn_fingerprint": source_fingerprint,
                              "dataset": train_ds.describe()})

        identity = {"snn_fingerprint": source_fingerprint, "dataset": opts.dataset,
                    "dataset_options": dict(opts.dataset_options), "T": opts.T, "method": opts.method,
                    "batch_size": opts.batch_size, "optimizer": opts.optimizer, "lr": opts.lr,
                    "schedule": opts.schedule, "seed": opts.seed, "loss": opts.loss, "layer_weight": opts.layer_weight,
                    "warmup": opts.warmup, "grad_clip": opts.grad_clip, "energy_penalty": opts.energy_penalty,
                    "epochs": opts.epochs if opts.schedule == "cosine" else None,  # the cosine spans the epochs
                    "class_weights": list(class_weights) if class_weights is not None else None}
        def validate_once():  # the input's validation, measured for the trials, is not repeated by fit
            return measured.pop("input") if "input" in measured else validate()

        summary = fit(snn, step, train_ds, validate_once, loop_opts, save_best, optimizer=optimizer, scheduler=sched,
                      last=last, kind=SNN_KIND + "-finetune-last", resume=resume, baseline=True,
                      identity=identity, output=output, started=started)
        functional.reset_net(snn)
        if kept:
            snn.load_state_dict(kept["state"])
            snn.record.finetune = kept["record"]
        elif summary["best"] is not None and w.main:  # resumed, no new best: the interrupted run's, in the output
            best_snn = load_snn(output)[0].to(opts.device)
            snn.load_state_dict(best_snn.state_dict())
            snn.record.finetune = best_snn.record.finetune
        snn.source = {"path": str(output), "fingerprint": file_fingerprint(output)} if w.main else None
    best, base = summary["best"], summary["baseline"]
    timing = dict(summary["timing"])
    timing["setup"] = max(0.0, timing["setup"] - trial_minutes)
    timing["lr_trials"] = trial_minutes
    return snn, {**summary, "output": str(output), "before": base["val"] if base else None,
                 "kept": best["at"] if best else None, "lr": lr, "lr_trials": trials, "lr_trial_iters": per_rate,
                 "timing": timing, "class_weights": weights_record}


def _resumed_lr(last: Path) -> float:
    """The learning rate an interrupted fine-tuning run chose (its optimiser's initial rate)."""
    from sjunet.io import SNN_KIND, load_checkpoint

    group = load_checkpoint(last, SNN_KIND + "-finetune-last")["optimizer"]["param_groups"][0]
    return float(group.get("initial_lr", group["lr"]))
