"""Fine-tuning a converted Spiking-UNet with spiking flow (paper §3.4, Algorithm 1; spec §7).

One iteration on a batch (x, y):

1. **Simulate** T steps without autograd, recording per neuron layer l the accumulated input
   current I_in^l = Σ_t I^l(t) and output flow I_out^l = Σ_t o^l(t) (paper Eq. 9–10).
2. **One differentiable pass** over the same graph on accumulated quantities
   (:class:`FlowPass`): a synaptic layer maps the measured I_out of its sources to
   Î_in^l = W̃ I_out^(l−1) + T·b̃ (the first layer gets T·x); a neuron layer passes on a tensor
   whose value is the measured I_out^l and whose gradient with respect to Î_in^l is the gate
   p^l = [I_in^l > 0] (straight-through, stored as booleans).
3. **Loss on the output flow**: segmentation — cross-entropy with logits I_in^L / T (the
   paper writes I_in^L; dividing by T is a temperature T that keeps logits in the ANN's units
   so one learning rate serves every T); denoising — MAE between I_in^L / T and the noise map
   (paper Eq. 12).
4. **Update** W̃ and b̃; thresholds stay fixed.

Memory is the no-grad simulation plus one ANN-sized set of activations: it does not grow with T.
Defaults differ from the paper deliberately: Adam with lr 1e-4 and cosine decay (the paper's
1e-6 is far too slow on CPU budgets), best checkpoint chosen on a validation split carved from
the training images.

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
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sjunet.neurons import MultiThresholdNode, set_recording
from sjunet.recipe import StaticInputSynapse
from sjunet.simulate import run_steps
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


@dataclass
class FlowRecord:
    """What the no-grad simulation leaves for the differentiable pass."""

    T: int
    outputs: dict[str, torch.Tensor]  # neuron name -> I_out (accumulated output flow)
    gates: dict[str, torch.Tensor]  # neuron name -> bool [I_in > 0]
    inputs: dict[str, torch.Tensor] | None = None  # neuron name -> I_in (only when keep_inputs)


@torch.no_grad()
def record_flow(snn: fx.GraphModule, x: torch.Tensor, T: int, chunk: int = 1, keep_inputs: bool = False) -> FlowRecord:
    """Step 1: simulate T steps recording I_out and the gate [I_in > 0] of every neuron layer.

    ``chunk=1`` runs SpikingJelly's single-step mode, so the simulation holds one step's
    activations (memory independent of T); larger chunks run multi-step chunks (faster per step
    on some machines, more memory). I_in is turned into a boolean gate as soon as the simulation
    ends and then dropped, unless ``keep_inputs``. Spikes are not counted here.
    """
    functional.reset_net(snn)
    neurons = {n: m for n, m in snn.named_modules() if isinstance(m, MultiThresholdNode)}
    set_recording(snn, True, spikes=False)
    try:
        run_steps(snn, x, T, chunk)
        outs = {n: m.acc_output for n, m in neurons.items()}
        gates = {n: m.input_current() > 0 for n, m in neurons.items()}
        ins = {n: m.input_current() for n, m in neurons.items()} if keep_inputs else None
    finally:
        set_recording(snn, False)
        functional.reset_net(snn)  # frees membranes and the I_in accumulators
    return FlowRecord(T, outs, gates, ins)


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
        if isinstance(m, MultiThresholdNode):
            i_hat = args[0]
            if self.keep_currents:
                self.currents[target] = i_hat
            return _StraightThroughFlow.apply(i_hat, self.record.outputs[target], self.record.gates[target])
        if isinstance(m, StaticInputSynapse):
            return _affine_sum(m.layer, T * args[0], T)
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return _affine_sum(m, args[0], T)
        return super().call_module(target, args, kwargs)  # pooling, concatenation, identities


def flow_forward(snn: fx.GraphModule, x: torch.Tensor, T: int, chunk: int = 1) -> torch.Tensor:
    """Steps 1–2: returns Î_in^L / T with the flow gradient attached."""
    rec = record_flow(snn, x, T, chunk)
    functional.set_step_mode(snn, "s")
    return FlowPass(snn, rec).run(x) / T


def bptt_forward(snn: fx.GraphModule, x: torch.Tensor, T: int) -> torch.Tensor:
    """The BPTT baseline: T multi-step steps with autograd through time (surrogate spikes)."""
    functional.reset_net(snn)
    functional.set_step_mode(snn, "m")
    for m in snn.modules():
        if isinstance(m, MultiThresholdNode):
            m.surrogate_gradient = True
    try:
        out = snn(x.unsqueeze(0).expand(T, *x.shape)).mean(0)
    finally:
        for m in snn.modules():
            if isinstance(m, MultiThresholdNode):
                m.surrogate_gradient = False
    return out


def flow_loss(task: Task, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Step 3: the task loss on I_in^L / T (CE for segmentation, MAE for denoising)."""
    return task.loss(output, target)


def train_step(snn, optimizer, task: Task, x, y, T: int, method: str = "flow", chunk: int = 1) -> float:
    """One fine-tuning iteration; returns the loss."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    out = flow_forward(snn, x, T, chunk) if method == "flow" else bptt_forward(snn, x, T)
    loss = flow_loss(task, out, y)
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
    val_limit: int | None = None
    device: str = "cpu"
    dataset_options: dict = field(default_factory=dict)


def finetune(opts: FinetuneOptions | None = None, resume: bool = False, progress: bool = True, **kwargs) -> dict:
    """``sjunet finetune``: fine-tune a converted SNN at T steps; keeps the best on validation."""
    from sjunet.data import get_dataset
    from sjunet.evaluate import evaluate_snn
    from sjunet.io import SNN_KIND, file_fingerprint, load_checkpoint, provenance, torch_save_atomic
    from sjunet.recipe import load_snn
    from sjunet.tasks import task_for
    from sjunet.train import _accepts, make_optimizer, seed_everything

    opts = opts or FinetuneOptions(**kwargs)
    if opts.method not in METHODS:
        raise ValueError(f"unknown --method {opts.method!r}; choose one of {METHODS}")
    seed_everything(opts.seed)
    snn, rec = load_snn(opts.snn)
    snn.to(opts.device)
    ds_opts = {"seed": opts.seed, **opts.dataset_options}
    if _accepts(opts.dataset, "holdout_val"):
        ds_opts.setdefault("holdout_val", True)
    train_ds = get_dataset(opts.dataset, opts.data, "train", **ds_opts)
    val_ds = get_dataset(opts.dataset, opts.data, "val", **{k: v for k, v in ds_opts.items()
                                                             if k not in ("samples_per_epoch", "crop", "patch", "holdout_val")})
    task = task_for(train_ds)
    multiple = 2 ** (rec.get("model_config") or {}).get("depth", 4)
    params = [p for p in snn.parameters() if p.requires_grad]
    optimizer = make_optimizer(opts.optimizer, params, opts.lr)
    loader_gen = torch.Generator().manual_seed(opts.seed)
    iters_per_epoch = math.ceil(len(train_ds) / opts.batch_size)
    total = opts.epochs * iters_per_epoch
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=opts.lr * 0.01)
             if opts.schedule == "cosine" else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0))
    out = Path(opts.output)
    last = out.with_name(out.stem + ".last.pt")
    start, best, history = 0, -math.inf, []

    def validate() -> dict:
        r = evaluate_snn(snn, val_ds, [opts.T], task, chunk=4, limit=opts.val_limit, multiple=multiple,
                         progress=False, device=opts.device)
        return r["T"][str(opts.T)]

    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"--resume: no {last} to resume from")
        st = load_checkpoint(last, SNN_KIND + "-finetune-last")
        snn.load_state_dict(st["state_dict"])
        optimizer.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start, best, history = st["epoch"] + 1, st["best"], st["history"]
    else:
        v0 = validate()
        history.append({"epoch": -1, "val": v0, "score": task.score(v0)})
        if progress:
            tqdm.write(f"before fine-tuning, T={opts.T}: {_fmt(v0)}")
    t0 = time.monotonic()
    summary: dict = {"output": str(out), "before": history[0]["val"] if history else None}
    for epoch in range(start, opts.epochs):
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        loader = DataLoader(train_ds, batch_size=opts.batch_size, shuffle=True, generator=loader_gen)
        losses = []
        bar = tqdm(loader, desc=f"finetune {opts.method} T={opts.T} epoch {epoch + 1}/{opts.epochs}",
                   disable=not progress, leave=False)
        for x, y in bar:
            x, y = x.to(opts.device), y.to(opts.device)
            losses.append(train_step(snn, optimizer, task, x, y, opts.T, opts.method, opts.chunk))
            sched.step()
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
        val = validate()
        score = task.score(val)
        history.append({"epoch": epoch, "loss": sum(losses) / len(losses), "val": val, "score": score})
        if progress:
            tqdm.write(f"epoch {epoch + 1}: loss {history[-1]['loss']:.4f}  val {_fmt(val)}")
        if score > best:
            best = score
            snn.eval()
            torch_save_atomic({
                "kind": SNN_KIND, "snn": _cpu_copy(snn), "conversion": rec.get("conversion", {}),
                "model_config": rec.get("model_config"),
                "finetune": {"options": asdict(opts), "epoch": epoch, "val": val,
                             "source_snn_fingerprint": file_fingerprint(opts.snn), "history": list(history)},
                "provenance": provenance(sources={"snn": opts.snn, "dataset": train_ds.describe()}),
            }, out)
            summary["best"] = {"epoch": epoch, "val": val}
        torch_save_atomic({"kind": SNN_KIND + "-finetune-last", "state_dict": _cpu_copy(snn).state_dict(),
                           "optimizer": optimizer.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
                           "best": best, "history": history}, last)
        if opts.max_minutes is not None and (time.monotonic() - t0) / 60 > opts.max_minutes:
            break
    summary["history"] = history
    summary["minutes"] = (time.monotonic() - t0) / 60
    return summary


def _cpu_copy(snn: nn.Module) -> nn.Module:
    import copy

    functional.reset_net(snn)
    return copy.deepcopy(snn).cpu()


def _fmt(d: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in d.items() if isinstance(v, float))
