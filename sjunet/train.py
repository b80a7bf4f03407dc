"""ANN training (``sjunet train``): the U-Net of spec §2 on a task's dataset.

Paper optimisers are the defaults: RMSprop, lr 1e-3 for segmentation; Adam, lr 1e-5 for
denoising (both overridable). Each epoch validates on the dataset's ``val`` split (carved from
the training images, never the test images) and keeps the best checkpoint, written atomically
with its model config, task, data description, options, fingerprint and provenance. A
``<output>.last.pt`` file holds the optimiser state so ``--resume`` continues where it stopped.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sjunet.data import get_dataset
from sjunet.evaluate import evaluate_model
from sjunet.io import ANN_KIND, load_checkpoint, model_fingerprint, provenance, torch_save_atomic
from sjunet.models import UNet, UNetConfig
from sjunet.tasks import task_for, task_to_dict

DEFAULT_OPTIMISER = {"segmentation": ("rmsprop", 1e-3), "denoising": ("adam", 1e-5)}


@dataclass
class TrainOptions:
    dataset: str
    data: str | None = None
    output: str = "runs/ann.pt"
    epochs: int = 10
    batch_size: int = 8
    lr: float | None = None
    optimizer: str | None = None
    width: int = 16
    depth: int = 4
    batch_norm: bool = False
    up_relu: bool = False
    seed: int = 0
    device: str = "cpu"
    max_minutes: float | None = None
    val_limit: int | None = None
    dataset_options: dict = field(default_factory=dict)


def _accepts(dataset: str, option: str) -> bool:
    import inspect

    from sjunet.data import DATASETS

    cls = DATASETS.get(dataset)
    return cls is not None and option in inspect.signature(cls.__init__).parameters


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; choose adam, rmsprop or sgd")


def _last_path(output: Path) -> Path:
    return output.with_name(output.stem + ".last.pt")


def train(opts: TrainOptions | None = None, resume: bool = False, progress: bool = True, **kwargs) -> dict:
    """Train a U-Net; returns a summary (best epoch, validation metrics, paths)."""
    opts = opts or TrainOptions(**kwargs)
    seed_everything(opts.seed)
    output = Path(opts.output)
    ds_opts = {"seed": opts.seed, **opts.dataset_options}
    if _accepts(opts.dataset, "holdout_val"):
        ds_opts.setdefault("holdout_val", True)  # validate on images the model never trains on
    train_ds = get_dataset(opts.dataset, opts.data, "train", **ds_opts)
    val_ds = get_dataset(opts.dataset, opts.data, "val", **{k: v for k, v in ds_opts.items()
                                                             if k not in ("samples_per_epoch", "crop", "patch", "holdout_val")})
    task = task_for(train_ds)
    out_channels = task.num_classes if task.kind == "segmentation" else train_ds.in_channels
    config = UNetConfig(train_ds.in_channels, out_channels, opts.width, opts.depth, opts.batch_norm, opts.up_relu)
    model = UNet(config).to(opts.device)
    opt_name, default_lr = DEFAULT_OPTIMISER[task.kind]
    opt_name = opts.optimizer or opt_name
    lr = opts.lr if opts.lr is not None else default_lr
    optimizer = make_optimizer(opt_name, model.parameters(), lr)
    start_epoch, best, history = 0, -math.inf, []
    if resume:
        last = _last_path(output)
        if not last.is_file():
            raise FileNotFoundError(f"--resume: no {last} to resume from (train without --resume first)")
        state = load_checkpoint(last, ANN_KIND + "-last")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        torch.set_rng_state(state["torch_rng"])
    loader_gen = torch.Generator().manual_seed(opts.seed)
    t_start = time.monotonic()
    summary = {"output": str(output), "best_epoch": None, "best_val": None}
    for epoch in range(start_epoch, opts.epochs):
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        loader = DataLoader(train_ds, batch_size=opts.batch_size, shuffle=True, generator=loader_gen, drop_last=False)
        model.train()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{opts.epochs}", disable=not progress, leave=False)
        for x, y in bar:
            x, y = x.to(opts.device), y.to(opts.device)
            loss = task.loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        val = evaluate_model(model, val_ds, task, device=opts.device, limit=opts.val_limit, progress=False)
        score = task.score(val)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val": val, "score": score})
        if progress:
            tqdm.write(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}  val {_fmt(val)}")
        if score > best:
            best = score
            _save_best(model, config, task, train_ds, opts, epoch, val, history, output, opt_name, lr)
            summary.update(best_epoch=epoch, best_val=val)
        torch_save_atomic({"kind": ANN_KIND + "-last", "state_dict": model.state_dict(),
                           "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
                           "history": history, "torch_rng": torch.get_rng_state()}, _last_path(output))
        if opts.max_minutes is not None and (time.monotonic() - t_start) / 60 > opts.max_minutes:
            if progress:
                tqdm.write(f"stopping after epoch {epoch + 1}: --max-minutes {opts.max_minutes} reached")
            break
    summary["history"] = history
    summary["minutes"] = (time.monotonic() - t_start) / 60
    return summary


def _fmt(d: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in d.items() if isinstance(v, float))


def _save_best(model, config, task, train_ds, opts, epoch, val, history, output, opt_name, lr) -> None:
    record = {
        "kind": ANN_KIND,
        "model_config": config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "fingerprint": model_fingerprint(model.cpu()),
        "task": task_to_dict(task),
        "dataset": {"name": opts.dataset, **train_ds.describe()},
        "options": {**asdict(opts), "optimizer": opt_name, "lr": lr},
        "epoch": epoch,
        "val": val,
        "history": list(history),
        "provenance": provenance(),
    }
    model.to(opts.device)
    torch_save_atomic(record, output)
