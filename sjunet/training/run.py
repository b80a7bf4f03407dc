"""What a run needs around the training loop (:func:`sjunet.training.loop.fit`), shared by ANN
training, fine-tuning and direct training: its outputs guarded for its whole duration
(:func:`run_outputs`, :func:`last_path`), the training and validation splits
(:func:`train_val_datasets`), the optimiser and the learning-rate schedule (:func:`make_optimizer`,
:func:`make_schedule`)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

from sjunet.io import OutputExistsError, output_guard

#: dataset options that shape training items only (not passed to the validation split)
TRAIN_ONLY_OPTIONS = ("samples_per_epoch", "crop", "patch", "holdout_val")


SCHEDULES = ("cosine", "constant")


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; choose adam, rmsprop or sgd")


def make_schedule(optimizer, schedule: str, total: int, warmup: int, lr: float):
    """Per-iteration learning rate (train and finetune): a linear warm-up from lr/10 over ``warmup`` iterations, then
    cosine decay to lr/100 over the rest of the run (``schedule="cosine"``) or constant."""
    from torch.optim import lr_scheduler

    if schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=lr * 0.01)
    elif warmup:
        main = lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    else:
        return None
    if not warmup:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def _keyword_options(name: str) -> set[str]:
    import inspect

    from sjunet.data import DATASETS

    cls = DATASETS.get(name)
    if cls is None:
        return set()
    return {p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY}


def train_val_datasets(name: str, root, seed: int, options: dict | None = None):
    """The ``train`` split (without the validation images where the dataset can hold them out:
    ``holdout_val=True`` unless the options say otherwise) and the ``val`` split (without the
    training-only options ``samples_per_epoch``, ``crop``, ``patch``). Returns ``(train, val)``."""
    from sjunet.data import get_dataset

    opts = {"seed": seed, **(options or {})}
    if "holdout_val" in _keyword_options(name):
        opts.setdefault("holdout_val", True)  # validate on images the model never trains on
    train = get_dataset(name, root, "train", **opts)
    val = get_dataset(name, root, "val", **{k: v for k, v in opts.items() if k not in TRAIN_ONLY_OPTIONS})
    return train, val


def last_path(output: str | Path) -> Path:
    """``runs/ann.pt`` → ``runs/ann.pt.last.pt``: the resumable state beside an output, named after the
    whole output name, so ``m.pt`` and ``m.safetensors`` never share (or destroy) each other's state."""
    output = Path(output)
    return output.with_name(output.name + ".last.pt")


@contextlib.contextmanager
def run_outputs(output: str | Path, force: bool = False, resume: bool = False,
                what: str = "output") -> Iterator[tuple[Path, Path]]:
    """Guard the outputs of a run for its whole duration; yields ``(output, last)``.

    :func:`sjunet.io.output_guard` on ``output`` (writable directory, an existing file refused
    unless ``force`` or ``resume``, an exclusive lock against a second run), plus the same rule for
    ``<output>.last.pt`` (:func:`last_path`): an unfinished run's state is not overwritten without ``force``. A fresh
    run (not ``resume``) removes a stale ``.last.pt`` at once, so a later ``--resume`` can never
    continue an older run into this run's output. ``resume`` needs the ``.last.pt`` file.
    """
    from sjunet import distributed

    output = Path(output)
    last = last_path(output)
    if not distributed.world().main:  # under torchrun only rank 0 guards and writes the outputs; if its
        distributed.barrier()  # checks fail, torchrun ends the other ranks
        yield output, last
        return
    with output_guard(output, force=force, resume=resume, what=what) as out:
        if resume:
            if not last.is_file():
                raise FileNotFoundError(f"--resume: no {last} to resume from (run without --resume first)")
        elif last.exists():
            if not force:
                raise OutputExistsError(f"{last} exists (the state of an unfinished run): pass --resume to continue "
                                        "it or --force to start over (or choose another -o)")
            last.unlink()
        distributed.barrier()
        yield out, last
