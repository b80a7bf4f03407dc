"""ANN training (``sjunet train``): the U-Net of spec §2 — or any U-Net built by ``arch``
(``package.module:factory`` + ``arch_kwargs``, e.g. MONAI's BasicUNet) — on a task's dataset.

Paper optimisers are the defaults: RMSprop, lr 1e-3 for segmentation; Adam, lr 1e-5 for
denoising (both overridable). The loop is :func:`sjunet.training.loop.fit`: it validates on the dataset's
``val`` split (carved from the training images, never the test images) after each epoch (or
every ``val_every`` steps) and keeps the best checkpoint, written atomically with its model
config, task, data description, options, fingerprint and provenance. ``<output>.last.pt`` holds
everything ``--resume`` needs to continue bit-identically; ``max_minutes`` / ``max_iters`` stop a
run at any iteration (both count training only: set-up and validation before the first step are
timed and reported, not charged). Checkpoints are selected on the dataset's headline metric
(:attr:`sjunet.tasks.SegmentationTask.metric`: ``f1_vessel``, ``f1_membrane``, ``miou``, ``psnr``).
Segmentation's cross-entropy takes ``class_weights`` (``"auto"``: inverse class frequency when a
binary task's foreground is under 20 % of the training pixels, :func:`sjunet.tasks.resolve_class_weights`),
recorded in the checkpoint's options. An existing output is refused unless ``force`` or ``resume``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from sjunet.evaluation import degenerate
from sjunet.evaluation.degenerate import check_model
from sjunet.io import ANN_KIND, model_fingerprint, provenance, torch_save_atomic
from sjunet.models import UNet, UNetConfig
from sjunet.models.external import build_arch
from sjunet.rng import seed_everything
from sjunet.tasks import describe_weights, parse_class_weights, resolve_class_weights, task_for, task_to_dict
from sjunet.training.loop import LoopOptions, TrainingError, check_options, fit
from sjunet.training.run import SCHEDULES, make_optimizer, make_schedule, run_outputs, train_val_datasets

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
    pool: str = "avg"
    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"
    max_minutes: float | None = None
    max_iters: int | None = None
    val_every: int | None = None
    val_limit: int | None = None
    dataset_options: dict = field(default_factory=dict)
    #: learning-rate schedule ("constant": the paper's; "cosine": decay to lr/100 over the run)
    schedule: str = "constant"
    #: iterations of linear warm-up from lr/10 (0: none)
    warmup: int = 0
    #: clip each step's gradient norm to this (None: off)
    grad_clip: float | None = None
    #: segmentation loss weights: "auto" (inverse class frequency when a binary task's foreground is under
    #: 20 % of the training pixels), "none", or "w1,w2,…" (:func:`sjunet.tasks.resolve_class_weights`)
    class_weights: str = "auto"
    #: how validation feeds images to the network (:func:`sjunet.evaluation.protocol.make_protocol`: a name
    #: or a dict): None, whole images; ``{"name": "patch", "patch": 128, "stride": 128}`` for a network of
    #: one input size (a ViT's position embeddings)
    protocol: dict | str | None = None


def say(progress: bool, message: str) -> None:
    """A progress line (stdout, beside the progress bars) when ``progress`` and on the main process."""
    from tqdm.auto import tqdm

    from sjunet import distributed

    if progress and distributed.world().main:
        tqdm.write(message)


def build_network(train_ds, task, width: int = 16, depth: int = 4, batch_norm: bool = False, up_relu: bool = False,
                  pool: str = "avg", arch: str | None = None, arch_kwargs: dict | None = None):
    """The randomly initialised network ``train`` trains for ``train_ds``: ``--arch``'s factory, else
    sjunet's U-Net sized to the data (segmentation: one output per class; denoising: the noise map).
    Volumes (``train_ds.spatial_dims == 3``): sjunet's U-Net in 3-D; an ``--arch`` model is built as
    its arguments say (e.g. MONAI's ``spatial_dims=3``).
    Returns ``(model, UNetConfig or None, {"factory", "kwargs"} or None)``."""
    if arch is not None:
        return build_arch(arch, arch_kwargs), None, {"factory": arch, "kwargs": dict(arch_kwargs or {})}
    out_channels = task.num_classes if task.kind == "segmentation" else train_ds.in_channels
    config = UNetConfig(train_ds.in_channels, out_channels, width, depth, batch_norm, up_relu, pool,
                        spatial_dims=int(getattr(train_ds, "spatial_dims", 2)))
    return UNet(config), config, None


def check_volume_fits(model, train_ds):
    """Volumes: refuse (one line, before any step) training items whose sides are not multiples of
    the network's per-axis size multiples (:func:`sjunet.snn.model.size_rule`: D, H, W). A
    network whose multiples cannot be probed is left to fail on its own. Images: nothing (the CLI
    checks sjunet's U-Net, as before). Returns the volume network's size multiples (None for images
    or when they cannot be probed), which validation reuses."""
    from sjunet.data import check_fits
    from sjunet.layers.dims import spatial_dims
    from sjunet.snn import size_rule

    nd = int(getattr(train_ds, "spatial_dims", 2))
    if nd == 2:
        return None
    if spatial_dims(model, nd) != nd:
        raise ValueError(f"{getattr(train_ds, 'name', 'the dataset')} holds {nd}-D volumes but the network is "
                         f"{spatial_dims(model, nd)}-D; build it for {nd} spatial dimensions (e.g. spatial_dims={nd})")
    try:
        multiple = size_rule(model, train_ds.in_channels)
    except Exception:  # noqa: BLE001 - no probe: the network reports its own size errors
        return None
    check_fits(train_ds, multiple, padded=False, what="the network")
    return multiple


def train(opts: TrainOptions | None = None, resume: bool = False, progress: bool = True, force: bool = False,
          **kwargs) -> tuple[torch.nn.Module, dict]:
    """Train a U-Net; returns ``(model, summary)``: the model with the best validation's weights
    (eval mode; on the other ranks of a torchrun, as the loop left it) — the checkpoint written to
    ``opts.output`` at every new best holds the same — and :func:`sjunet.training.loop.fit`'s summary plus
    ``output``, ``best_epoch``, ``best_val``, ``task`` (the task record) and ``class_weights``.
    Raises :class:`sjunet.training.loop.DivergedError` on a non-finite loss or score."""
    from dataclasses import replace

    from sjunet import distributed

    started = time.monotonic()
    opts = opts or TrainOptions(**kwargs)
    w = distributed.init(opts.device)
    opts = replace(opts, device=distributed.device_for(opts.device))  # "auto" resolved, a GPU per rank
    check_options(lr=opts.lr, width=opts.width, depth=opts.depth, val_limit=opts.val_limit)
    parse_class_weights(opts.class_weights)
    if opts.schedule not in SCHEDULES:
        raise ValueError(f"unknown --schedule {opts.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if opts.warmup < 0:
        raise ValueError(f"--warmup must be a non-negative number of iterations, got {opts.warmup}")
    loop_opts = LoopOptions(epochs=opts.epochs, batch_size=opts.batch_size, seed=opts.seed,
                            max_minutes=opts.max_minutes, max_iters=opts.max_iters, val_every=opts.val_every,
                            device=opts.device, progress=progress, desc="train", grad_clip=opts.grad_clip)
    with run_outputs(opts.output, force=force, resume=resume, what="model checkpoint") as (output, last):
        say(progress, f"train: reading {opts.dataset} (loading and preprocessing the images)…")
        seed_everything(opts.seed)
        train_ds, val_ds = train_val_datasets(opts.dataset, opts.data, opts.seed, opts.dataset_options)
        task = task_for(train_ds)
        weights, weights_record = resolve_class_weights(opts.class_weights, task, train_ds)
        task.class_weights = weights
        loop_opts.metric = task.metric
        say(progress, f"train: {len(train_ds)} training items, {len(val_ds)} validation items; checkpoints are "
                      f"selected on validation {task.metric}; {describe_weights(weights_record, task)}"
                      + (f"; set-up took {(time.monotonic() - started) / 60:.2f} min (not counted by the budgets)"
                         if opts.max_minutes is not None else ""))
        model, config, arch = build_network(train_ds, task, opts.width, opts.depth, opts.batch_norm, opts.up_relu,
                                            opts.pool, opts.arch, opts.arch_kwargs)
        multiple = check_volume_fits(model, train_ds)  # volumes: probed once, not at every validation
        model = model.to(opts.device)
        opt_name, default_lr = DEFAULT_OPTIMISER[task.kind]
        opt_name = opts.optimizer or opt_name
        lr = opts.lr if opts.lr is not None else default_lr
        optimizer = make_optimizer(opt_name, model.parameters(), lr)
        total = opts.epochs * -(-len(train_ds) // opts.batch_size)
        scheduler = make_schedule(optimizer, opts.schedule, total, opts.warmup, lr)  # --max-iters is a budget

        net = model
        if w.active:  # DDP averages the gradients over the ranks (spec §13)
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[int(opts.device.split(":")[1])] if opts.device.startswith("cuda") else None)

        def step(x, y):
            return task.loss(net(x), y)

        def validate():
            from sjunet.evaluation import evaluate_model

            val = evaluate_model(model, val_ds, task, device=opts.device, limit=opts.val_limit, progress=False,
                                 multiple=multiple, protocol=opts.protocol)
            return task.score(val), val

        kept: dict = {}  # the best so far in memory: what is returned

        def save_best(entry: dict, history: list) -> None:
            kept["state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            # one class everywhere / a constant image on the validation images: recorded, so every later
            # command repeats the warning (sjunet.evaluation.degenerate)
            kept["degenerate"] = check_model(model, val_ds, device=opts.device, multiple=multiple, protocol=opts.protocol)
            torch_save_atomic({
                "kind": ANN_KIND,
                "model_config": config.to_dict() if config is not None else None,
                "arch": arch,
                "state_dict": kept["state"],
                "fingerprint": model_fingerprint(model),
                "task": task_to_dict(task),
                "dataset": {"name": opts.dataset, **train_ds.describe()},
                "options": {**asdict(opts), "optimizer": opt_name, "lr": lr, "class_weights": weights_record},
                "epoch": entry["epoch"],
                "iteration": entry["iteration"],
                "step": entry["step"],
                "at": entry["at"],
                "val": entry["val"],
                "score": entry["score"],
                "history": history,
                degenerate.KEY: kept["degenerate"],
                "provenance": provenance(),
            }, output)

        identity = {"dataset": opts.dataset, "dataset_options": dict(opts.dataset_options),
                    "batch_size": opts.batch_size, "optimizer": opt_name, "lr": lr, "seed": opts.seed,
                    "schedule": opts.schedule, "warmup": opts.warmup, "grad_clip": opts.grad_clip,
                    "epochs": opts.epochs if opts.schedule == "cosine" else None,  # the cosine spans the epochs
                    "model_config": config.to_dict() if config is not None else arch,
                    "class_weights": list(weights) if weights is not None else None}
        summary = fit(model, step, train_ds, validate, loop_opts, save_best, optimizer=optimizer, scheduler=scheduler,
                      last=last,
                      kind=ANN_KIND + "-last", resume=resume, identity=identity, output=output,
                      started=started)
    best = summary["best"]
    if best is None:
        raise TrainingError(f"no validation score was measured, so nothing was written to {output}")
    if kept:
        model.load_state_dict(kept["state"])
    elif w.main:  # resumed, no new best: the interrupted run's, in the output
        from sjunet.io import load_checkpoint

        model.load_state_dict(load_checkpoint(output, ANN_KIND)["state_dict"])
    model.eval()
    if "degenerate" not in kept and w.main:  # resumed, no new best: the check of the checkpoint kept
        kept["degenerate"] = check_model(model, val_ds, device=opts.device, multiple=multiple, protocol=opts.protocol)
    return model, {**summary, "output": str(output), "best_epoch": best["epoch"], "best_val": best["val"],
                   "task": task_to_dict(task), "class_weights": weights_record,
                   "degenerate": kept.get("degenerate")}
