"""Evaluation of an ANN and/or a converted SNN on a test split (``sjunet evaluate``).

Images are evaluated whole, reflect-padded to a multiple of the U-Net's 2^depth and cropped
back; datasets that declare ``eval_patch = (patch, stride)`` (DRIVE) are cut into overlapping
patches and recomposed with overlaps averaged. The SNN is simulated once up to max(T) and
decoded at every requested T (spec §6); its predictions are compared with the ANN's (pixel
agreement) when both are given. Results are JSON with provenance.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sjunet.data.patches import predict_by_patches
from sjunet.simulate import simulate
from sjunet.tasks import Task, task_for

Outputs = dict  # key (None for the ANN, T for the SNN) -> output tensor


def size_multiple(module: nn.Module, default: int = 16) -> int:
    cfg = getattr(module, "config", None)
    return 2 ** cfg.depth if cfg is not None else default


def _padded_call(fn: Callable[[torch.Tensor], Outputs], x: torch.Tensor, multiple: int) -> Outputs:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return {k: v[..., :h, :w] for k, v in fn(x).items()}


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


def snn_fn(snn: nn.Module, T: Sequence[int], mode: str = "step", chunk: int = 4) -> Callable[[torch.Tensor], Outputs]:
    def fn(x):
        return simulate(snn, x, T, mode=mode, chunk=chunk)
    return fn


def _items(dataset, limit: int | None):
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        x, y = dataset[i]
        yield x.unsqueeze(0), y.unsqueeze(0)


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset, task: Task | None = None, device: str = "cpu",
                   limit: int | None = None, progress: bool = True) -> dict[str, float]:
    """Metrics of an ANN on ``dataset`` (whole images)."""
    task = task or task_for(dataset)
    was_training = model.training
    model.eval()
    meter = task.new_meter()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for x, y in tqdm(_items(dataset, limit), total=n, desc="evaluate ANN", disable=not progress, leave=False):
        x, y = x.to(device), y.to(device)
        out = predict(ann_fn(model), x, dataset, size_multiple(model))[None]
        meter.update(out.cpu(), task.meter_target(x.cpu(), y.cpu()))
    model.train(was_training)
    return meter.result()


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def evaluate_snn(snn: nn.Module, dataset, T: Sequence[int], task: Task | None = None, reference: nn.Module | None = None,
                 mode: str = "step", chunk: int = 4, limit: int | None = None, multiple: int = 16,
                 progress: bool = True, device: str = "cpu") -> dict:
    """Metrics of an SNN at every T in ``T`` (one simulation up to max T per image), with pixel
    agreement against ``reference`` (the ANN) when given, and timings."""
    task = task or task_for(dataset)
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
        outs = predict(snn_fn(snn, T, mode, chunk), x, dataset, multiple)
        _sync(device)
        t_snn += time.perf_counter() - t0
        for t in T:
            meters[t].update(outs[t].cpu(), task.meter_target(x.cpu(), y), reference=ref)
    result = {"T": {str(t): meters[t].result() for t in T},
              "timing": {"images": n, "snn_seconds_per_image": t_snn / max(n, 1), "max_T": max(T),
                         "snn_seconds_per_step": t_snn / max(n, 1) / max(T)}}
    if ann_meter is not None:
        result["ann"] = ann_meter.result()
        result["timing"]["ann_seconds_per_image"] = t_ann / max(n, 1)
        result["timing"]["step_cost_vs_ann"] = result["timing"]["snn_seconds_per_step"] / max(t_ann / max(n, 1), 1e-12)
    return result


def evaluate(
    model: str | Path | None = None,
    snn: str | Path | None = None,
    dataset: str = "em",
    data: str | None = None,
    split: str = "test",
    T: Sequence[int] = (10, 20, 50, 100),
    mode: str = "step",
    chunk: int = 4,
    limit: int | None = None,
    output: str | Path | None = None,
    dataset_options: dict | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> dict:
    """Library form of ``sjunet evaluate``: ANN checkpoint and/or SNN file → metrics (JSON)."""
    from sjunet.data import get_dataset
    from sjunet.io import file_fingerprint, load_ann, provenance, write_json
    from sjunet.recipe import load_snn

    if model is None and snn is None:
        raise ValueError("give --model (an ANN checkpoint), --snn (a converted SNN) or both")
    ds = get_dataset(dataset, data, split, **(dataset_options or {}))
    task = task_for(ds)
    result: dict = {"dataset": {"name": dataset, **ds.describe()}, "split": split}
    ann = None
    if model is not None:
        ann, ckpt = load_ann(model)
        result["model"] = {"path": str(model), "fingerprint": ckpt.get("fingerprint"), "file": file_fingerprint(model)}
    if snn is not None:
        net, rec = load_snn(snn)
        conv = rec.get("conversion", {})
        if ann is not None and conv.get("ann_fingerprint") not in (None, result["model"]["fingerprint"]):
            raise ValueError(f"{snn} was converted from model {conv.get('ann_fingerprint')}, not from {model} "
                             f"({result['model']['fingerprint']}); pixel agreement would be meaningless")
        cfg = rec.get("model_config") or {}
        multiple = 2 ** cfg.get("depth", 4)
        result["snn"] = {"path": str(snn), "file": file_fingerprint(snn), "conversion": conv.get("options"),
                         "mode": mode, "chunk": chunk, "device": device}
        result.update(evaluate_snn(net, ds, T, task, reference=ann, mode=mode, chunk=chunk, limit=limit,
                                   multiple=multiple, progress=progress, device=device))
    else:
        result["ann"] = evaluate_model(ann.to(device), ds, task, device=device, limit=limit, progress=progress)
    result["provenance"] = provenance()
    if output is not None:
        write_json(result, output)
    return result
