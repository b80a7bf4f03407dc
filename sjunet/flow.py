"""Fine-tuning a converted Spiking-UNet with spiking flow (paper §3.4, Algorithm 1; spec §7).

One iteration on a batch (x, y):

1. **Simulate** T steps without autograd, recording per neuron layer l the accumulated input
   current I_in^l = Σ_t I^l(t) and output flow I_out^l = Σ_t o^l(t) (paper Eq. 9–10).
2. **One differentiable pass** over the same graph on accumulated quantities
   (:class:`FlowPass`): a synaptic layer maps the measured I_out of its sources to
   Î_in^l = W̃ I_out^(l−1) + T·b̃ (the first layer gets T·x); a neuron layer passes on a tensor
   whose value is the measured I_out^l and whose gradient with respect to Î_in^l is the gate
   p^l = [I_in^l > 0] (straight-through, stored as booleans).
3. **Loss on the output flow** (:func:`flow_loss`): segmentation — cross-entropy with logits
   I_in^L / T (paper Eq. 11 writes I_in^L; dividing by T is a temperature T that keeps logits in
   the ANN's units so one learning rate serves every T); denoising — MAE between I_in^L / T and
   the noise map (paper Eq. 12).
4. **Update** W̃ and b̃; thresholds stay fixed.

Memory is the no-grad simulation plus one ANN-sized set of activations: it does not grow with T.
Defaults differ from the paper deliberately: Adam with lr 1e-4 and cosine decay (the paper's
1e-6 is far too slow on CPU budgets), best checkpoint chosen on a validation split carved from
the training images. :func:`finetune` runs the shared loop :func:`sjunet.loop.fit` with the
converted SNN's own validation score as the bar: its output is never worse on validation than
its input (when nothing beats the input, the output is the input SNN, and its record says so).

``method="bptt"`` trains the same network through time with a SpikingJelly surrogate gradient,
for cost comparison only (memory grows linearly with T).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import fx, nn

from sjunet.neurons import StaticInputSynapse, is_neuron
from sjunet.simulation import FlowRecord, record_flow
from sjunet.tasks import Task

METHODS = ("flow", "bptt")


def _affine_sum(m: nn.Module, inp: torch.Tensor, T: float) -> torch.Tensor:
    """W̃·inp + T·b̃ for a Conv2d / ConvTranspose2d (the layer summed over T steps)."""
    if isinstance(m, nn.ConvTranspose2d):
        y = F.conv_transpose2d(inp, m.weight, None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
    elif isinstance(m, nn.Conv2d):
        y = F.conv2d(inp, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
    else:
        raise TypeError(f"not a synaptic layer: {type(m).__name__}")
    if m.bias is not None:
        y = y + (T * m.bias).view(1, -1, 1, 1)
    return y


class _StraightThroughFlow(torch.autograd.Function):
    """Forward: the measured I_out (no copy). Backward: grad · p with p = [I_in > 0] kept as booleans,
    so a neuron layer adds no float tensor to the autograd graph."""

    @staticmethod
    def forward(ctx, i_hat, i_out, gate):
        ctx.save_for_backward(gate)
        return i_out.view_as(i_out)

    @staticmethod
    def backward(ctx, grad):
        (gate,) = ctx.saved_tensors
        return grad * gate, None, None


class FlowPass(fx.Interpreter):
    """Step 2: the differentiable pass over the SNN's graph on accumulated quantities.

    Returns Î_in^L (the output layer's accumulated input current). ``self.currents`` holds
    Î_in^l of every neuron layer (for checking against the recorded I_in).
    """

    def __init__(self, snn: fx.GraphModule, record: FlowRecord, keep_currents: bool = False) -> None:
        super().__init__(snn)
        self.record = record
        self.keep_currents = keep_currents
        self.currents: dict[str, torch.Tensor] = {}

    def call_module(self, target, args, kwargs):
        m = self.fetch_attr(target)
        T = self.record.T
        if is_neuron(m):
            i_hat = args[0]
            if self.keep_currents:
                self.currents[target] = i_hat
            return _StraightThroughFlow.apply(i_hat, self.record.outputs[target], self.record.gates[target])
        if isinstance(m, StaticInputSynapse):
            return _affine_sum(m.layer, T * args[0], T)
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return _affine_sum(m, args[0], T)
        if hasattr(m, "flow"):  # sjunet stages: gains, affine, max-pool of counts, interpolation, padding
            return m.flow(*args, T=T, **kwargs)
        return super().call_module(target, args, kwargs)  # average pooling, concatenation (linear, no bias)


def flow_forward(snn: fx.GraphModule, x: torch.Tensor, T: int, chunk: int = 1) -> torch.Tensor:
    """Steps 1–2: returns Î_in^L / T with the flow gradient attached."""
    rec = record_flow(snn, x, T, chunk)
    functional.set_step_mode(snn, "s")
    return FlowPass(snn, rec).run(x) / T


def bptt_forward(snn: fx.GraphModule, x: torch.Tensor, T: int) -> torch.Tensor:
    """The BPTT baseline: T multi-step steps with autograd through time (surrogate spikes)."""
    functional.reset_net(snn)
    functional.set_step_mode(snn, "m")
    neurons = [m for m in snn.modules() if is_neuron(m)]
    for m in neurons:
        m.surrogate_gradient = True
    try:
        out = snn(x.unsqueeze(0).expand(T, *x.shape)).mean(0)
    finally:
        for m in neurons:
            m.surrogate_gradient = False
    return out


def flow_loss(task: Task, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Step 3, the fine-tuning loss on the output flow (paper Eq. 11 and 12).

    ``output`` is the output layer's accumulated input current divided by T, Î_in^L / T, as
    :func:`flow_forward` (and :func:`bptt_forward`) return it — the division by T happens there.

    * segmentation (Eq. 11): cross-entropy with logits I_in^L / T. The paper writes the logits as
      I_in^L; dividing by T is a temperature T that keeps the logits in the ANN's units, so one
      learning rate serves every T;
    * denoising (Eq. 12): mean absolute error between I_in^L / T and the true noise map.

    Both are ``task.loss`` (:mod:`sjunet.tasks`), the ANN's training loss, on these quantities.
    """
    return task.loss(output, target)


def finetune_loss(snn, task: Task, x: torch.Tensor, y: torch.Tensor, T: int, method: str = "flow",
                  chunk: int = 1) -> torch.Tensor:
    """Steps 1–3 on a batch: the output flow (or the BPTT output) and :func:`flow_loss` on it."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    out = flow_forward(snn, x, T, chunk) if method == "flow" else bptt_forward(snn, x, T)
    return flow_loss(task, out, y)


def train_step(snn, optimizer, task: Task, x, y, T: int, method: str = "flow", chunk: int = 1) -> float:
    """One fine-tuning iteration (steps 1–4 of Algorithm 1) outside the loop; returns the loss."""
    loss = finetune_loss(snn, task, x, y, T, method, chunk)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    functional.reset_net(snn)
    return float(loss.detach())


@dataclass
class FinetuneOptions:
    snn: str
    dataset: str
    data: str | None = None
    output: str = "runs/snn_ft.pt"
    T: int = 10
    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-4
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


SCHEDULES = ("cosine", "constant")


def finetune_record(record: dict) -> dict | None:
    """The fine-tuning part of an SNN file's record (``None`` for a converted, not fine-tuned SNN):
    ``kept`` (``"input"`` or where the best validation was), ``score``, ``input_score``,
    ``improvement``, ``val``, ``input_val``, ``options``, ``history``…"""
    ft = record.get("finetune")
    return ft if isinstance(ft, dict) else None


def finetune(opts: FinetuneOptions | None = None, resume: bool = False, progress: bool = True, force: bool = False,
             **kwargs) -> dict:
    """``sjunet finetune``: fine-tune a converted SNN at T steps with :func:`sjunet.loop.fit`.

    The converted SNN's validation score, measured before the first step, is the bar: the output
    is always written and is the best of {the input SNN, every validation}. Returns the loop's
    summary plus ``output``, ``before`` (the input's metrics), ``best`` (``at``, ``epoch``,
    ``iteration``, ``val``, ``score``), ``kept`` (``"input"`` or where the best was) and
    ``improved``. Raises :class:`sjunet.loop.DivergedError` on a non-finite loss or score.
    """
    from sjunet.evaluation import evaluate_snn
    from sjunet.io import SNN_KIND, file_fingerprint
    from sjunet.loop import (LoopOptions, check_options, fit, make_optimizer, run_outputs, seed_everything,
                             train_val_datasets)
    from sjunet.recipe import load_snn, save_snn, snn_size_multiple
    from sjunet.tasks import task_for

    started = time.monotonic()
    opts = opts or FinetuneOptions(**kwargs)
    if opts.method not in METHODS:
        raise ValueError(f"unknown --method {opts.method!r}; choose one of {', '.join(METHODS)}")
    if opts.schedule not in SCHEDULES:
        raise ValueError(f"unknown --schedule {opts.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    check_options(lr=opts.lr, T=opts.T, chunk=opts.chunk, val_limit=opts.val_limit)
    loop_opts = LoopOptions(epochs=opts.epochs, batch_size=opts.batch_size, seed=opts.seed,
                            max_minutes=opts.max_minutes, max_iters=opts.max_iters, val_every=opts.val_every,
                            device=opts.device, progress=progress, desc=f"finetune {opts.method} T={opts.T}",
                            train_mode=False)
    if Path(opts.snn).resolve() == Path(opts.output).resolve():
        raise ValueError(f"the output {opts.output} is the input SNN: choose another -o")
    with run_outputs(opts.output, force=force, resume=resume, what="fine-tuned SNN") as (output, last):
        seed_everything(opts.seed)
        snn, rec = load_snn(opts.snn)
        snn.to(opts.device)
        source_fingerprint = file_fingerprint(opts.snn)
        train_ds, val_ds = train_val_datasets(opts.dataset, opts.data, opts.seed, opts.dataset_options)
        task = task_for(train_ds)
        multiple = snn_size_multiple(snn, rec)
        params = [p for p in snn.parameters() if p.requires_grad]
        optimizer = make_optimizer(opts.optimizer, params, opts.lr)
        total = opts.epochs * math.ceil(len(train_ds) / opts.batch_size)
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=opts.lr * 0.01)
                 if opts.schedule == "cosine" else None)

        def step(x, y):
            return finetune_loss(snn, task, x, y, opts.T, opts.method, opts.chunk)

        def validate():
            r = evaluate_snn(snn, val_ds, [opts.T], task, chunk=4, limit=opts.val_limit, multiple=multiple,
                             progress=False, device=opts.device)
            val = r["T"][str(opts.T)]
            return task.score(val), val

        baseline: dict = {}

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
                "options": asdict(opts), "source_snn_fingerprint": source_fingerprint, "history": history,
            }
            on_cpu = all(t.device.type == "cpu" for t in snn.state_dict().values())
            save_snn(snn if on_cpu else _cpu_copy(snn), output, extra={"finetune": record},
                     sources={"snn": opts.snn, "snn_fingerprint": source_fingerprint, "dataset": train_ds.describe()})

        identity = {"snn_fingerprint": source_fingerprint, "dataset": opts.dataset,
                    "dataset_options": dict(opts.dataset_options), "T": opts.T, "method": opts.method,
                    "batch_size": opts.batch_size, "optimizer": opts.optimizer, "lr": opts.lr,
                    "schedule": opts.schedule, "seed": opts.seed,
                    "epochs": opts.epochs if sched is not None else None}  # the cosine spans the epochs
        summary = fit(snn, step, train_ds, validate, loop_opts, save_best, optimizer=optimizer, scheduler=sched,
                      last=last, kind=SNN_KIND + "-finetune-last", resume=resume, baseline=True,
                      identity=identity, output=output, started=started)
        functional.reset_net(snn)
    best, base = summary["best"], summary["baseline"]
    return {**summary, "output": str(output), "before": base["val"] if base else None,
            "kept": best["at"] if best else None}


def _cpu_copy(snn: nn.Module) -> nn.Module:
    """A CPU copy of ``snn`` (reset) with the ``sjunet_*`` records it carries (a GraphModule's
    deepcopy keeps only its modules and graph)."""
    import copy

    functional.reset_net(snn)
    out = copy.deepcopy(snn).cpu()
    for k, v in vars(snn).items():
        if k.startswith("sjunet_"):
            setattr(out, k, copy.deepcopy(v))
    return out
