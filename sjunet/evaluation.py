"""Evaluation of an ANN and/or a converted SNN on a test split (``sjunet evaluate``).

Images are evaluated whole, reflect-padded to a multiple of the U-Net's 2^depth and cropped
back; datasets that declare ``eval_patch = (patch, stride)`` (DRIVE) are cut into overlapping
patches and recomposed with overlaps averaged. The SNN is simulated once up to max(T) and
decoded at every requested T (spec §6); its predictions are compared with the ANN's (pixel
agreement) when both are given. Results are JSON with provenance.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sjunet.data.patches import predict_by_patches
from sjunet.distributed import merge_meter, resolve_device, shard
from sjunet.simulation import simulate
from sjunet.tasks import Task, task_for

Outputs = dict  # key (None for the ANN, T for the SNN) -> output tensor


def size_multiple(module: nn.Module, in_channels: int | None = None) -> int:
    """H and W of ``module``'s input must be multiples of this: a converted SNN's record, the
    U-Net's ``2**depth``, or, for any other model, the input size over its smallest feature map
    (from its canonical graph on a 256x256 probe)."""
    conv = getattr(module, "sjunet_conversion", None)
    if conv and conv.get("size_multiple"):
        return int(conv["size_multiple"])
    if conv is not None:
        raise ValueError("this SNN records no size multiple (not converted by sjunet.convert): pass multiple=, "
                         "the ANN's")
    m = getattr(module, "size_multiple", None)
    if isinstance(m, int) and m > 0:
        return m
    cfg = getattr(module, "config", None)
    if getattr(cfg, "depth", None) is not None:
        return 2 ** int(cfg.depth)
    from sjunet.graph import canonical_graph, size_multiple as graph_multiple, tensor_shapes

    c = in_channels or next((m.in_channels for m in module.modules() if isinstance(m, nn.Conv2d)), 1)
    gm = canonical_graph(module, (1, c, 256, 256)).gm
    return graph_multiple(tensor_shapes(gm, (c, 256, 256)), (256, 256))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad [B, C, H, W] on the bottom/right to multiples of ``multiple`` (reflect when possible)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _padded_call(fn: Callable[[torch.Tensor], Outputs], x: torch.Tensor, multiple: int) -> Outputs:
    h, w = x.shape[-2:]
    return {k: v[..., :h, :w] for k, v in fn(pad_to_multiple(x, multiple)).items()}


def _patched_call(fn: Callable[[torch.Tensor], Outputs], x: torch.Tensor, patch: int, stride: int) -> Outputs:
    keys: list = []
    sizes: list[int] = []

    def packed(p: torch.Tensor) -> torch.Tensor:
        out = fn(p)
        keys[:] = list(out)
        sizes[:] = [v.shape[1] for v in out.values()]
        return torch.cat(list(out.values()), dim=1)

    y = predict_by_patches(packed, x, patch=patch, stride=stride)
    return dict(zip(keys, torch.split(y, sizes, dim=1)))


def predict(fn: Callable[[torch.Tensor], Outputs], x: torch.Tensor, dataset, multiple: int) -> Outputs:
    """Apply ``fn`` to a whole image batch the way ``dataset`` asks (padding or patches)."""
    patching = getattr(dataset, "eval_patch", None)
    if patching:
        return _patched_call(fn, x, *patching)
    return _padded_call(fn, x, multiple)


def ann_fn(model: nn.Module) -> Callable[[torch.Tensor], Outputs]:
    @torch.no_grad()
    def fn(x):
        return {None: model(x)}
    return fn


def snn_fn(snn: nn.Module, T: Sequence[int], mode: str = "step", chunk: int = 4,
           on_checkpoint=None) -> Callable[[torch.Tensor], Outputs]:
    def fn(x):
        return simulate(snn, x, T, mode=mode, chunk=chunk, on_checkpoint=on_checkpoint)
    return fn


def _items(dataset, limit: int | None):
    """The first ``limit`` items as batches of one; under torchrun, this rank's share of them
    (the metric accumulators are merged afterwards, :func:`sjunet.distributed.merge_meter`)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in shard(range(n)):
        x, y = dataset[i]
        yield x.unsqueeze(0), y.unsqueeze(0)


def check_options(T: Sequence[int] | None = None, chunk: int | None = None, limit: int | None = None) -> None:
    """One clear line for nonsensical evaluation options (before any work)."""
    if T is not None and (not list(T) or min(int(t) for t in T) < 1):
        raise ValueError(f"--T takes positive integers, got {list(T)}")
    if chunk is not None and int(chunk) < 1:
        raise ValueError(f"--chunk must be a positive integer, got {chunk}")
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


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset, task: Task | None = None, device: str = "cpu",
                   limit: int | None = None, progress: bool = True) -> dict[str, float]:
    """Metrics of an ANN on ``dataset`` (whole images)."""
    task = task or task_for(dataset)
    check_options(limit=limit)
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    meter = task.new_meter()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    multiple = size_multiple(model, dataset.in_channels)
    for x, y in tqdm(_items(dataset, limit), total=n, desc="evaluate ANN", disable=not progress, leave=False):
        x, y = x.to(device), y.to(device)
        out = predict(ann_fn(model), x, dataset, multiple)[None]
        meter.update(out.cpu(), task.meter_target(x.cpu(), y.cpu()))
    model.train(was_training)
    merge_meter(meter)
    return meter.result()


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def evaluate_snn(snn: nn.Module, dataset, T: Sequence[int], task: Task | None = None, reference: nn.Module | None = None,
                 mode: str = "step", chunk: int = 4, limit: int | None = None, multiple: int | None = None,
                 progress: bool = True, device: str = "cpu", on_checkpoint=None) -> dict:
    """Metrics of an SNN at every T in ``T`` (one simulation up to max T per image), with pixel
    agreement against ``reference`` (the ANN) when given, and timings. ``on_checkpoint(t, x)``
    is called at every requested step of every simulated input (:func:`sjunet.simulation.simulate`)."""
    task = task or task_for(dataset)
    check_options(T, chunk, limit)
    device = resolve_device(device)
    multiple = multiple or size_multiple(snn)
    T = sorted(set(int(t) for t in T))
    meters = {t: task.new_meter() for t in T}
    ann_meter = task.new_meter() if reference is not None else None
    t_snn = t_ann = 0.0
    n = len(dataset) if limit is None else min(limit, len(dataset))
    snn.to(device)
    if reference is not None:
        reference.to(device).eval()
    for x, y in tqdm(_items(dataset, limit), total=n, desc=f"evaluate SNN T<={max(T)}", disable=not progress, leave=False):
        x = x.to(device)
        ref = None
        if reference is not None:
            t0 = time.perf_counter()
            ref = predict(ann_fn(reference), x, dataset, multiple)[None]
            _sync(device)
            t_ann += time.perf_counter() - t0
            ref = ref.cpu()
            ann_meter.update(ref, task.meter_target(x.cpu(), y))
        t0 = time.perf_counter()
        outs = predict(snn_fn(snn, T, mode, chunk, on_checkpoint), x, dataset, multiple)
        _sync(device)
        t_snn += time.perf_counter() - t0
        for t in T:
            meters[t].update(outs[t].cpu(), task.meter_target(x.cpu(), y), reference=ref)
    for m in [*meters.values(), *([ann_meter] if ann_meter is not None else [])]:
        merge_meter(m)
    result = {"T": {str(t): meters[t].result() for t in T},
              "timing": {"images": n, "snn_seconds_per_image": t_snn / max(n, 1), "max_T": max(T),
                         "snn_seconds_per_step": t_snn / max(n, 1) / max(T)}}
    if ann_meter is not None:
        result["ann"] = ann_meter.result()
        result["timing"]["ann_seconds_per_image"] = t_ann / max(n, 1)
        result["timing"]["step_cost_vs_ann"] = result["timing"]["snn_seconds_per_step"] / max(t_ann / max(n, 1), 1e-12)
    return result


def evaluate(
    dataset,
    model: nn.Module | None = None,
    snn: nn.Module | None = None,
    T: Sequence[int] = (10, 20, 50, 100),
    mode: str = "step",
    chunk: int = 4,
    limit: int | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> dict:
    """``sjunet evaluate`` on objects: metrics of an ANN and/or an SNN on a dataset object, the SNN
    at every T with pixel agreement against the ANN when both are given."""
    if model is None and snn is None:
        raise ValueError("give an ANN (model), a converted SNN (snn) or both")
    device = resolve_device(device)
    task = task_for(dataset)
    result: dict = {"dataset": {"name": getattr(dataset, "name", None), **(dataset.describe()
                                                                            if hasattr(dataset, "describe") else {})}}
    if snn is not None:
        result.update(evaluate_snn(snn, dataset, T, task, reference=model, mode=mode, chunk=chunk, limit=limit,
                                   progress=progress, device=device))
    else:
        result["ann"] = evaluate_model(model.to(device), dataset, task, device=device, limit=limit, progress=progress)
    return result
