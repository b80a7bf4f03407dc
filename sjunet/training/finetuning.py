"""``sjunet finetune`` (paper §3.4, spec §7): fine-tune a converted SNN with the spiking flow of
:mod:`sjunet.training.flow` in the shared loop (:func:`sjunet.training.loop.fit`), with the converted
SNN's own validation score as the bar: the output is never worse on validation than the input.

``lr="auto"`` (the default) tries each of :data:`LR_CANDIDATES` for a few iterations on the
validation split (:func:`lr_range_test`, :func:`plan_lr_trials`: at most a quarter of the budgets,
counted against them); a fine-tuned checkpoint replaces the input only when it beats it by more than
:data:`MIN_GAIN` of its score.
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
    #: how validation feeds images to the SNN (as :attr:`sjunet.training.ann.TrainOptions.protocol`)
    protocol: dict | str | None = None


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

    from sjunet.rng import rng_preserved
    from sjunet.training.run import make_optimizer

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
    (at most a quarter of either, :func:`plan_lr_trials`) and the training iterations together;
    loading the data and validating the input SNN are not counted (they are timed and reported).
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

        def validate():
            r = evaluate_snn(snn, val_ds, [opts.T], task, chunk=4, limit=opts.val_limit, multiple=multiple,
                             progress=False, device=opts.device, protocol=opts.protocol)
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
