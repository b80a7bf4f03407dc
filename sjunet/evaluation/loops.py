"""The evaluation loops (``sjunet evaluate`` on objects): :func:`evaluate_model` (an ANN),
:func:`evaluate_snn` (an SNN at every T, with agreement against the ANN) and :func:`evaluate` (either
or both), under a :class:`~sjunet.evaluation.protocol.Protocol`; ``train`` and ``finetune`` validate
with them too.

The SNN is simulated once up to max(T) and decoded at every requested T (spec §6); its
predictions are compared with the ANN's (pixel agreement) when both are given, the two run on the
same tiles. Results record the protocol (``"protocol"``: name, tile, overlap, patch, stride,
windows per image) and the timings (ANN seconds per image, SNN seconds per image per step).
Progress bars advance per tile / window (ANN) and per simulated step (SNN).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from sjunet.distributed import merge_meter, resolve_device, shard
from sjunet.evaluation.layout import (Outputs, activation_cost, budget, call_shapes, needs_cost, plan, protocol_record,
                                      run_layout, tileable)
from sjunet.evaluation.protocol import Protocol, check_protocol, make_protocol
from sjunet.neurons import compile_pays, is_neuron, set_compiled
from sjunet.snn.model import size_rule
from sjunet.snn.simulation import check_run, simulate
from sjunet.tasks import Task, task_for


def ann_fn(model: nn.Module) -> Callable[[torch.Tensor], Outputs]:
    @torch.no_grad()
    def fn(x):
        return {None: model(x)}
    return fn


def snn_fn(snn: nn.Module, T: Sequence[int], mode: str = "step", chunk: int | str = "auto",
           on_checkpoint=None, fuse: bool = True) -> Callable[[torch.Tensor], Outputs]:
    def fn(x):
        return simulate(snn, x, T, mode=mode, chunk=chunk, on_checkpoint=on_checkpoint, fuse=fuse)
    return fn


def _indices(dataset, limit: int | None) -> tuple[int, list[int]]:
    """The number of images evaluated and this rank's share of them (under torchrun; the metric
    accumulators are merged afterwards, :func:`sjunet.distributed.merge_meter`)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    return n, list(shard(range(n)))


def _items(dataset, limit: int | None):
    """The first ``limit`` items as batches of one (this rank's share under torchrun)."""
    for i in _indices(dataset, limit)[1]:
        x, y = dataset[i]
        yield x.unsqueeze(0), y.unsqueeze(0)


class _Progress:
    """A bar over the units (tiles / windows, or simulated steps) of all images, its total set
    image by image (sizes may differ): it moves from the first call of the network."""

    def __init__(self, images: int, desc: str, unit: str, enabled: bool):
        self.images, self.started, self.done = images, 0, 0
        self.bar = tqdm(total=None, desc=desc, unit=unit, disable=not enabled, leave=False)

    def image(self, units: int) -> None:
        self.started += 1
        self.bar.total = self.done + units * (1 + self.images - self.started)
        self.bar.refresh()

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def check_options(T: Sequence[int] | None = None, chunk: int | str | None = None, limit: int | None = None) -> None:
    """One clear line for nonsensical evaluation options (before any work)."""
    if T is not None and (not list(T) or min(int(t) for t in T) < 1):
        raise ValueError(f"--T takes positive integers, got {list(T)}")
    if chunk is not None and chunk != "auto" and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"--chunk must be a positive integer or 'auto' (chosen by memory), got {chunk}")
    if limit is not None and int(limit) < 1:
        raise ValueError(f"--limit must be a positive integer (or left out for every image), got {limit}")


def check_compatible(dataset, in_channels: int | None, out_channels: int | None, task: dict | None = None,
                     what: str = "the model") -> None:
    """Refuse, with one line, a model that cannot be evaluated on ``dataset``: another task,
    another number of input channels, or an output that is not one channel per class (segmentation)
    / per image channel (denoising)."""
    kind = dataset.task
    name = getattr(dataset, "name", type(dataset).__name__)
    if task and task.get("kind") and task["kind"] != kind:
        raise ValueError(f"{what} was trained for {task['kind']} but {name} is a {kind} dataset; "
                         "choose a matching dataset (-d) or model")
    if in_channels is not None and in_channels != dataset.in_channels:
        raise ValueError(f"{what} takes {in_channels}-channel images but {name} has {dataset.in_channels}-channel "
                         "images; choose a matching dataset or model")
    want = dataset.num_classes if kind == "segmentation" else dataset.in_channels
    unit = "classes" if kind == "segmentation" else "noise channels"
    if out_channels is not None and out_channels != want:
        raise ValueError(f"{what} outputs {out_channels} channels but {name} needs {want} {unit}; choose a "
                         "matching dataset or model")


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def _evaluate_ann(model: nn.Module, dataset, task: Task, device, limit: int | None, progress: bool, p: Protocol,
                  multiple: int | None) -> tuple[dict, dict, float]:
    """(metrics, protocol record, ANN seconds per image of this rank) — network time only."""
    was_training = model.training
    model.eval()
    seconds = 0.0
    try:
        multiple = multiple or size_rule(model, dataset.in_channels)
        check_protocol(p, multiple)
        cost = activation_cost(model, dataset.in_channels, multiple, device) if needs_cost(p) else None
        meter = task.new_meter()
        _, indices = _indices(dataset, limit)
        bar = _Progress(len(indices), "evaluate ANN", "window", progress)
        layouts = []
        try:
            for i in indices:
                x, y = dataset[i]
                x, y = x.unsqueeze(0).to(device), y.unsqueeze(0)
                lay = plan(p, x.shape[2:], multiple, cost, elements=budget(device))
                layouts.append(lay)
                bar.image(lay.windows)
                t0 = time.perf_counter()
                out = run_layout(ann_fn(model), x, lay, p, bar.update)[None]
                _sync(device)
                seconds += time.perf_counter() - t0
                meter.update(out.cpu(), task.meter_target(x.cpu(), y.cpu()))
        finally:
            bar.close()
    finally:
        model.train(was_training)
    merge_meter(meter)
    return meter.result(), protocol_record(p, layouts), seconds / max(len(indices), 1)


def evaluate_model(model: nn.Module, dataset, task: Task | None = None, device: str = "cpu",
                   limit: int | None = None, progress: bool = True, protocol: "Protocol | str | None" = None,
                   multiple: int | None = None) -> dict:
    """Metrics of an ANN on ``dataset`` under ``protocol`` (default: whole images), with
    ``"protocol"`` (:func:`protocol_record`) among them. Validation during ``train`` uses it."""
    task = task or task_for(dataset)
    check_options(limit=limit)
    p = make_protocol(protocol, dataset)
    metrics, record, _ = _evaluate_ann(model, dataset, task, resolve_device(device), limit, progress, p, multiple)
    return {**metrics, "protocol": record}


def evaluate_snn(snn: nn.Module, dataset, T: Sequence[int], task: Task | None = None, reference: nn.Module | None = None,
                 mode: str = "step", chunk: int | str = "auto", limit: int | None = None, multiple: int | None = None,
                 progress: bool = True, device: str = "cpu", on_checkpoint=None,
                 protocol: "Protocol | str | None" = None, compiled: bool | str = "auto", fuse: bool = True) -> dict:
    """Metrics of an SNN at every T in ``T`` (one simulation up to max T per image), with pixel
    agreement against ``reference`` (the ANN, run on the same tiles / windows) when given, the
    protocol and timings. ``on_checkpoint(t, x)`` is called at every requested step of every
    simulated input (:func:`sjunet.snn.simulation.simulate`). ``chunk``: steps per multi-step chunk
    (``"auto"``: by memory). ``compiled``: run the neurons' step kernels compiled by ``torch.compile``
    (``"auto"``: where the run is long enough to pay for the compile and a compiler is present,
    :func:`sjunet.neurons.compile_pays`; the same numbers either way); ``timing.compiled`` says which ran.
    ``fuse``: convolutions fused with the neurons they feed in single steps on a CPU
    (:mod:`sjunet.snn.fusion`; the same numbers within float rounding); False: the modules as they are."""
    task = task or task_for(dataset)
    check_options(T, chunk, limit)
    if compiled not in (True, False, "auto"):
        raise ValueError(f"compiled must be True, False or 'auto', got {compiled!r}")
    p = make_protocol(protocol, dataset)
    device = resolve_device(device)
    multiple = multiple or size_rule(snn)
    check_protocol(p, multiple)
    T = sorted(set(int(t) for t in T))
    meters = {t: task.new_meter() for t in T}
    ann_meter = task.new_meter() if reference is not None else None
    t_snn = t_ann = 0.0
    n, indices = _indices(dataset, limit)
    snn.to(device)
    if reference is not None:
        reference.to(device).eval()
    cost = activation_cost(snn, dataset.in_channels, multiple, device, snn=True, mode=mode,
                           chunk=chunk) if needs_cost(p) else None
    can_tile = tileable(snn)
    if indices:  # the first image's calls: shapes and memory checked before any work (one line naming the field)
        x = dataset[indices[0]][0]
        lay = plan(p, x.shape[1:], multiple, cost, can_tile, budget(device))
        for shape in call_shapes(lay, (1, int(x.shape[0])), p):
            check_run(snn, shape, mode, chunk, device)
    if compiled == "auto":
        pixels = math.prod(dataset[indices[0]][0].shape[1:]) if indices else 0
        compiled = compile_pays(pixels * max(T) * len(indices), device)
    neurons = [m for m in snn.modules() if is_neuron(m)]
    was = [m.compiled for m in neurons]
    if compiled and set_compiled(snn, True) is not None:
        compiled = False  # no compiler here: eager
    bar = _Progress(len(indices), f"evaluate SNN T<={max(T)}", "step", progress)
    steps = (lambda m, inputs, out: bar.update(int(inputs[0].shape[0]) if mode == "multi" else 1))
    hook = snn.register_forward_hook(steps) if progress else None
    layouts = []
    try:
        for i in indices:
            x, y = dataset[i]
            x, y = x.unsqueeze(0).to(device), y.unsqueeze(0)
            lay = plan(p, x.shape[2:], multiple, cost, can_tile, budget(device))
            layouts.append(lay)
            bar.image(lay.calls * max(T))
            ref = None
            if reference is not None:
                t0 = time.perf_counter()
                ref = run_layout(ann_fn(reference), x, lay, p)[None]
                _sync(device)
                t_ann += time.perf_counter() - t0
                ref = ref.cpu()
                ann_meter.update(ref, task.meter_target(x.cpu(), y))
            t0 = time.perf_counter()
            outs = run_layout(snn_fn(snn, T, mode, chunk, on_checkpoint, fuse), x, lay, p)
            _sync(device)
            t_snn += time.perf_counter() - t0
            for t in T:
                meters[t].update(outs[t].cpu(), task.meter_target(x.cpu(), y), reference=ref)
    finally:
        if hook is not None:
            hook.remove()
        bar.close()
        for m, c in zip(neurons, was):
            m.compiled = c
    for m in [*meters.values(), *([ann_meter] if ann_meter is not None else [])]:
        merge_meter(m)
    local = max(len(indices), 1)
    result = {"T": {str(t): meters[t].result() for t in T},
              "protocol": protocol_record(p, layouts),
              "timing": {"images": n, "snn_seconds_per_image": t_snn / local, "max_T": max(T),
                         "snn_seconds_per_step": t_snn / local / max(T), "compiled": bool(compiled)}}
    if ann_meter is not None:
        result["ann"] = ann_meter.result()
        result["timing"]["ann_seconds_per_image"] = t_ann / local
        result["timing"]["step_cost_vs_ann"] = result["timing"]["snn_seconds_per_step"] / max(t_ann / local, 1e-12)
    return result


def evaluate(
    dataset,
    model: nn.Module | None = None,
    snn: nn.Module | None = None,
    T: Sequence[int] = (10, 20, 50, 100),
    mode: str = "step",
    chunk: int | str = "auto",
    limit: int | None = None,
    progress: bool = True,
    device: str = "cpu",
    protocol: "Protocol | str | None" = None,
    compiled: bool | str = "auto",
    fuse: bool = True,
) -> dict:
    """``sjunet evaluate`` on objects: metrics of an ANN and/or an SNN on a dataset object under
    ``protocol`` (default: whole images), the SNN at every T with pixel agreement against the ANN
    when both are given; ``"protocol"`` and ``"timing"`` (per image, and per image per step)."""
    if model is None and snn is None:
        raise ValueError("give an ANN (model), a converted SNN (snn) or both")
    device = resolve_device(device)
    task = task_for(dataset)
    check_options(limit=limit)
    p = make_protocol(protocol, dataset)
    result: dict = {"dataset": {"name": getattr(dataset, "name", None), **(dataset.describe()
                                                                            if hasattr(dataset, "describe") else {})}}
    if snn is not None:
        result.update(evaluate_snn(snn, dataset, T, task, reference=model, mode=mode, chunk=chunk, limit=limit,
                                   progress=progress, device=device, protocol=p, compiled=compiled, fuse=fuse))
    else:
        metrics, record, seconds = _evaluate_ann(model.to(device), dataset, task, device, limit, progress, p, None)
        result.update({"ann": metrics, "protocol": record,
                       "timing": {"images": _indices(dataset, limit)[0], "ann_seconds_per_image": seconds}})
    return result
