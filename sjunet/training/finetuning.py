"""``sjunet finetune`` (paper §3.4, spec §7): fine-tune a converted SNN with the spiking flow of
:mod:`sjunet.training.flow` in the shared loop (:func:`sjunet.training.loop.fit`), with the converted
SNN's own validation score as the bar: the output is never worse on validation than the input.

``lr="auto"`` (the default) tries each of :data:`~sjunet.training.lr_trials.LR_CANDIDATES` for a few
iterations (:mod:`sjunet.training.lr_trials`: by the clock, validations included, at most a quarter
of the budgets and counted against them; a trial that beats the input is continued from); a
fine-tuned checkpoint replaces the input only when it beats it by more than :data:`MIN_GAIN` of its
score.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from spikingjelly.activation_based import functional
from torch import nn
from tqdm.auto import tqdm

from sjunet.snn.model import SpikingUNet, input_fingerprint, size_rule
from sjunet.training.distill import Teacher
from sjunet.training.flow import METHODS, FlowModule, LossWeights, SopPenalty, finetune_loss
from sjunet.training.lr_trials import (LR_CANDIDATES, LR_FALLBACK, LR_TRIAL_ITERS, LR_TRIAL_SHARE,  # noqa: F401
                                       lr_range_test, plan_lr_trials, plan_trials)

#: a fine-tuned checkpoint replaces the input only when it beats the input's validation score by
#: more than this fraction of it: smaller gains are the validation images' noise (measured: +0.010 dB
#: on BSD validation crops came with −0.015 dB on BSD68; every gain above 0.1 % in the fine-tuning
#: tables carried over to the test images with its sign)
MIN_GAIN = 1e-3


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
    #: a learning rate, or "auto": the best of :data:`LR_CANDIDATES` after a short trial each
    #: (:func:`sjunet.training.lr_trials.lr_range_test`);
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
    #: how validation feeds images to the SNN (as :attr:`sjunet.training.ann.TrainOptions.protocol`)
    protocol: dict | str | None = None


def finetune_record(record: dict) -> dict | None:
    """The fine-tuning part of an SNN file's record (``None`` for a converted, not fine-tuned SNN):
    ``kept`` (``"input"`` or where the best validation was), ``score``, ``input_score``,
    ``improvement``, ``val``, ``input_val``, ``options``, ``history``…"""
    ft = record.get("finetune")
    return ft if isinstance(ft, dict) else None


def finetune(snn: SpikingUNet, opts: FinetuneOptions | None = None, resume: bool = False, progress: bool = True,
             force: bool = False, **kwargs) -> tuple[SpikingUNet, dict]:
    """``sjunet finetune``: fine-tune a converted SNN at T steps with :func:`sjunet.training.loop.fit`.

    ``snn`` (a :class:`~sjunet.snn.model.SpikingUNet`: from :func:`sjunet.conversion.recipe.convert`, or read by
    :func:`sjunet.conversion.recipe.load_snn`) is not changed: a copy is trained. The converted SNN's
    validation score, measured before the first step, is the bar: the output is the best of {the
    input SNN, every validation}, written to ``opts.output`` at every new best (a long run never
    loses its result) and returned. Returns ``(the fine-tuned SpikingUNet, summary)``: the network
    holds the best weights and its record's ``finetune`` (what the file's record holds; on the
    other ranks of a torchrun, the network as the loop left it). The summary is the loop's
    summary plus ``output``, ``before`` (the input's metrics), ``best`` (``at``, ``epoch``,
    ``iteration``, ``val``, ``score``), ``kept`` (``"input"`` or where the best was) and
    ``improved``, ``metric`` (the selection metric's name: ``f1_vessel``…), ``stopped_message``,
    ``timing`` (minutes of ``setup``, ``lr_trials``, ``baseline_validation``, ``training``) and
    ``class_weights``. Raises :class:`sjunet.training.loop.DivergedError` on a non-finite loss or score.

    Budgets: ``max_minutes`` and ``max_iters`` bound the optimisation — the ``lr="auto"`` trials
    (by the clock, their validations included: at most a quarter of either,
    :func:`~sjunet.training.lr_trials.plan_trials`, :func:`~sjunet.training.lr_trials.plan_lr_trials`)
    and the training iterations with their validations together; loading the data and validating
    the input SNN are not counted (they are timed and reported: ``timing``). A trial that beats
    the input is continued from (``lr_kept``). The summary adds ``lr_trial_images`` (validation
    images each trial was scored on; ``None``: all) and ``lr_trials_input`` (the input's score on them).
    """
    from sjunet.conversion.recipe import load_snn, save_snn
    from sjunet.data import check_fits
    from sjunet.evaluation import check_compatible, evaluate_snn
    from sjunet.io import SNN_KIND, file_fingerprint
    from sjunet.rng import seed_everything
    from sjunet.tasks import describe_weights, parse_class_weights, resolve_class_weights, task_for
    from sjunet.training.loop import LoopOptions, check_options, fit
    from sjunet.training.run import SCHEDULES, make_optimizer, make_schedule, run_outputs, train_val_datasets

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

        def validate(limit: int | None = None):
            lim = opts.val_limit if limit is None else (limit if opts.val_limit is None else min(limit, opts.val_limit))
            r = evaluate_snn(snn, val_ds, [opts.T], task, limit=lim, multiple=multiple,
                             progress=False, device=opts.device, protocol=opts.protocol)
            val = r["T"][str(opts.T)]
            return task.score(val), val

        lr, trials, result = opts.lr, None, None
        measured: dict = {}  # the input's validation (score, metrics), measured before the trials
        per_rate, why = plan_lr_trials(opts.max_iters, opts.lr_trial_iters) if auto_lr else (0, "")
        trial_minutes = input_minutes = 0.0
        n_val = len(val_ds) if opts.val_limit is None else min(opts.val_limit, len(val_ds))
        if auto_lr and resume:  # the rate the interrupted run chose (its trials are not repeated)
            lr = _resumed_lr(last)
        elif auto_lr and per_rate == 0:
            lr = LR_FALLBACK
            say(f"--lr auto: {why}")
        elif auto_lr:
            say(f"finetune: validating the input SNN on {n_val} validation images (its {task.metric} is the bar, "
                "and what a trial's validation costs)…")
            t_input = time.monotonic()
            measured["input"] = validate()
            input_minutes = (time.monotonic() - t_input) / 60
            plan = plan_trials(opts.max_minutes, input_minutes * 60, n_val)
            if plan.skip:
                lr = LR_FALLBACK
                say(f"--lr auto: {plan.skip}")
            else:
                on = f"the first {plan.val_items} of {n_val} validation images" if plan.val_items else \
                    f"all {n_val} validation images"
                say(f"--lr auto: trying {len(LR_CANDIDATES)} learning rates ({', '.join(f'{c:g}' for c in LR_CANDIDATES)}),"
                    f" up to {per_rate} iterations each" + (f" — {why}" if why else "")
                    + (f"; at most {plan.seconds / 60:.2f} min by the clock, validations included (a quarter of "
                       f"--max-minutes)" if plan.seconds is not None else "")
                    + f"; each validated on {on}…")
                result = lr_range_test(snn, step, train_ds, validate, opts.optimizer, iters=per_rate,
                                       batch_size=opts.batch_size, seed=opts.seed, grad_clip=opts.grad_clip,
                                       device=opts.device, progress=show, baseline=measured["input"][0],
                                       max_seconds=None if plan.train_seconds is None
                                       else plan.train_seconds * len(LR_CANDIDATES),
                                       val_items=plan.val_items, min_gain=MIN_GAIN)
                lr, trials, trial_minutes = result.lr, result.scores, result.seconds / 60
                if result.state is not None:  # the best trial beat the input: training continues from it
                    snn.load_state_dict(result.state["model"])
                say(f"learning-rate trials (validation {task.metric} on {on}; the input: {result.input_score:.4f}): "
                    + ", ".join(f"{k:g}: {v:.4f}" for k, v in trials.items()) + f" -> {lr:g}"
                    + (f" (it beat the input: training continues from its weights)" if result.kept is not None
                       else " (no trial beat the input: the recipe's rate, from the input)")
                    + f"  ({trial_minutes:.2f} min)")
        if result is not None:  # the iterations the trials ran (a clock may have cut them short)
            loop_opts.reserved_iters = sum(result.iters.values())
        elif auto_lr and resume and opts.max_iters is not None:  # the same plan on --resume: one budget
            loop_opts.reserved_iters = per_rate * len(LR_CANDIDATES)
        loop_opts.reserved_minutes = trial_minutes
        loop_opts.validation_minutes = input_minutes  # what the run's final validation will take
        optimizer = make_optimizer(opts.optimizer, params, lr)
        if result is not None and result.state is not None:
            optimizer.load_state_dict(result.state["optimizer"])  # the kept trial's moments, at its rate
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
        def validate_once():  # the input's validation, measured before the trials, is not repeated by fit
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
    timing["setup"] = max(0.0, timing["setup"] - trial_minutes - input_minutes)
    timing["baseline_validation"] = timing.get("baseline_validation", 0.0) + input_minutes
    timing["lr_trials"] = trial_minutes
    return snn, {**summary, "output": str(output), "before": base["val"] if base else None,
                 "kept": best["at"] if best else None, "lr": lr, "lr_trials": trials, "lr_trial_iters": per_rate,
                 "lr_kept": result.kept if result is not None else None,
                 "lr_trial_images": result.val_items if result is not None else None,
                 "lr_trials_input": result.input_score if result is not None else None,
                 "timing": timing, "class_weights": weights_record}


def _resumed_lr(last: Path) -> float:
    """The learning rate an interrupted fine-tuning run chose (its optimiser's initial rate)."""
    from sjunet.io import SNN_KIND, load_checkpoint

    group = load_checkpoint(last, SNN_KIND + "-finetune-last")["optimizer"]["param_groups"][0]
    return float(group.get("initial_lr", group["lr"]))
