"""The one training loop of sjunet: ANN training (:func:`sjunet.training.ann.train`) and spiking-flow
fine-tuning (:func:`sjunet.training.finetuning.finetune`) are two uses of :func:`fit` that differ only in the
loss of a batch (the *step*) and in what they save.

:func:`fit` owns everything a trustworthy run needs:

* **Order and randomness.** Each epoch's order is a permutation drawn from one explicit
  ``torch.Generator`` seeded with ``seed``; datasets get ``set_epoch(epoch)`` (their augmentation
  is keyed by seed, epoch and index). Validation runs under a saved-and-restored RNG state, so it
  never changes what training draws.
* **Resume to the bit.** ``<output>.last.pt`` (``m.pt`` → ``m.pt.last.pt``) (plain dicts, lists, numbers, strings and tensors:
  loadable with ``weights_only=True``) holds the model, optimiser and scheduler states, the
  position (epoch, iteration within it, global step), the epoch's order, the generator state,
  the python / numpy / torch RNG states, the running loss, the best score and the history. A run
  stopped at any iteration by a budget and resumed ends with exactly the weights of an
  uninterrupted run with the same seed (bit-identical on CPU). Resuming with options that change
  the result (batch size, lr, seed, data…) is refused.
* **Best on validation, the start as the bar.** Every validation that beats the best so far is
  handed to ``save_best`` (which writes atomically). With ``baseline=True`` (fine-tuning) the
  model is validated before the first step and that score is the bar: the output is always
  written and is the best of {input, every validation}; the summary says which and by how much.
  ``min_gain``: to displace the input, a validation must beat it by more than that fraction of
  the input's score (fine-tuning: 0.1 %) — smaller gains are the validation set's noise.
* **Budgets.** They bound the *training*: ``max_minutes`` counts from the first training step
  (set-up — loading, preprocessing — and the baseline validation are not counted; they are
  timed and reported in the summary's ``timing``), and is checked after every iteration: the run
  stops when one more iteration and the validation that ends it (both measured: the last ones'
  durations) would pass it, then validates and saves — so validations count, and the run ends
  within its minutes; ``max_iters`` counts steps from the start of the
  run, independent of the epoch size. Work a caller did for the run before the loop (the
  ``lr auto`` trials of fine-tuning) is charged to the same budgets through
  ``reserved_iters`` / ``reserved_minutes``. ``val_every`` validates every N steps instead of
  after each epoch. The summary says why the run stopped (``stopped``, ``stopped_message``:
  "stopped: --epochs 10 reached after 30 iterations (before --max-iters 100)").
* **Non-finite numbers stop the run.** A non-finite loss raises :class:`DivergedError` before
  the update (the weights in memory and on disk are the last good ones); so does a non-finite
  validation score. The message says where and what was (or was not) written.

Helpers shared by both uses: :func:`check_options`, :func:`format_metrics`; around the loop
(:mod:`sjunet.training.run`): :func:`~sjunet.training.run.run_outputs` (refuse an existing output
unless force/resume, check writability, hold the lock for the whole run),
:func:`~sjunet.training.run.train_val_datasets` (the training split without the validation images,
and the validation split), :func:`~sjunet.training.run.make_optimizer`; seeding and the random
state: :mod:`sjunet.rng`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sjunet.io import torch_save_atomic
from sjunet.rng import rng_preserved, rng_state, set_rng_state
from sjunet.training.resume import LOOP_VERSION, load_resume_state


class TrainingError(RuntimeError):
    """A run that cannot produce a trustworthy result (diverged, nothing validated)."""


class DivergedError(TrainingError):
    """A non-finite loss or validation score; the run stopped at once."""

    def __init__(self, message: str, epoch: int | None = None, iteration: int | None = None,
                 step: int | None = None) -> None:
        super().__init__(message)
        self.epoch, self.iteration, self.step = epoch, iteration, step


# ------------------------------------------------------------------------------- options

def check_options(**values: Any) -> None:
    """Refuse nonsensical run options with one line each: every value given must be positive
    (``None`` means "not set"). Names are written as their CLI flags (``max_minutes`` →
    ``--max-minutes``)."""
    for name, v in values.items():
        if v is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{flag} must be a number, got {v!r}")
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{flag} must be positive, got {v}")
        if isinstance(v, float) and name in ("epochs", "batch_size", "max_iters", "val_every", "val_limit"):
            raise ValueError(f"{flag} must be a whole number, got {v}")


@dataclass
class LoopOptions:
    """What :func:`fit` needs to know about a run (checked on construction)."""

    epochs: int
    batch_size: int
    seed: int = 0
    max_minutes: float | None = None
    max_iters: int | None = None
    val_every: int | None = None
    device: str = "cpu"
    progress: bool = True
    desc: str = "train"
    #: put the model in train mode for the steps (ANN: yes; the converted SNN is stepped in eval mode)
    train_mode: bool = True
    #: clip the gradient norm of each step to this (None: no clipping)
    grad_clip: float | None = None
    #: iterations / minutes of the budgets already spent on the run's behalf before the loop (lr trials)
    reserved_iters: int = 0
    reserved_minutes: float = 0.0
    #: what one validation takes (minutes), when the caller measured it before the loop (fine-tuning's
    #: input, validated before the lr trials): the budget clock keeps room for the final validation
    validation_minutes: float = 0.0
    #: the relative margin a validation must beat the baseline (the input) by to replace it (0: any gain)
    min_gain: float = 0.0
    #: the name of the selection metric, for messages ("f1_vessel"; :attr:`sjunet.tasks.SegmentationTask.metric`)
    metric: str = "score"

    def __post_init__(self) -> None:
        check_options(epochs=self.epochs, batch_size=self.batch_size, max_minutes=self.max_minutes,
                      max_iters=self.max_iters, val_every=self.val_every, grad_clip=self.grad_clip)


def format_metrics(d: dict) -> str:
    """``"f1_vessel 0.7123  accuracy 0.9001"``: the float entries of a metrics dict."""
    return "  ".join(f"{k} {v:.4f}" for k, v in d.items() if isinstance(v, float) and k != "num_images")


# ------------------------------------------------------------------------------- the loop

def stop_message(stopped: str | None, options: LoopOptions, step: int, epoch: int, iteration: int,
                 per_epoch: int, training_minutes: float) -> str:
    """Why a run stopped, for people: ``"stopped: --epochs 10 reached after 30 iterations (before
    --max-iters 100)"``, ``"stopped: --max-iters 100 reached at epoch 4, iteration 2/8 (before --epochs
    10; --resume continues)"``. ``step`` counts training iterations (the ``lr auto`` trials' are in
    ``options.reserved_iters``)."""
    if stopped is None:
        return ""
    trials = f" + {options.reserved_iters} of lr trials" if options.reserved_iters else ""
    where = f"epoch {epoch + 1}, iteration {iteration}/{per_epoch}" if iteration else f"the end of epoch {epoch}"
    if stopped == "epochs":
        before = []
        if options.max_iters is not None:
            before.append(f"--max-iters {options.max_iters}")
        if options.max_minutes is not None:
            before.append(f"--max-minutes {options.max_minutes:g}")
        return (f"stopped: --epochs {options.epochs} reached after {step} iteration{'s' if step != 1 else ''}{trials}"
                + (f" (before {' and '.join(before)})" if before else ""))
    if stopped == "max_iters":
        return (f"stopped: --max-iters {options.max_iters} reached ({step} training iterations{trials}) at {where} "
                f"(before --epochs {options.epochs}; --resume continues)")
    spent = training_minutes + options.reserved_minutes
    return (f"stopped: --max-minutes {options.max_minutes:g} reached after {step} iterations{trials} "
            f"({spent:.2f} min of lr trials and training) at {where} (before --epochs {options.epochs}; "
            "--resume continues)")


def _label(epoch: int, iteration: int, per_epoch: int) -> str:
    """Where a validation happened, for people: ``epoch 2`` or ``epoch 2, iteration 3/8``."""
    if iteration == per_epoch:
        return f"epoch {epoch + 1}"
    return f"epoch {epoch + 1}, iteration {iteration}/{per_epoch}"


def _state_dict(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def fit(
    model: nn.Module,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    train_data,
    validate: Callable[[], tuple[float, dict]],
    options: LoopOptions,
    save_best: Callable[[dict, list], None],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
    last: str | Path,
    kind: str,
    resume: bool = False,
    baseline: bool = False,
    identity: dict | None = None,
    output: str | Path | None = None,
    started: float | None = None,
) -> dict:
    """Train ``model`` on ``train_data``; returns a summary (see below).

    Args:
        step: ``step(x, y) -> loss`` for a batch already on ``options.device``; the loss must
            carry the gradient. :func:`fit` checks it is finite, then does ``zero_grad``,
            ``backward``, ``optimizer.step()`` and ``scheduler.step()`` (per iteration).
        validate: ``validate() -> (score, metrics)``; higher scores are better. Run under
            :func:`rng_preserved`.
        save_best: ``save_best(entry, history)`` writes the output (atomically) for a new best
            ``entry`` (a history entry: ``at``, ``epoch``, ``iteration``, ``step``, ``val``,
            ``score``, …; ``at == "input"`` for the baseline) and the history so far.
        last: the ``.last.pt`` path (:func:`~sjunet.training.run.last_path`); ``kind``: its checkpoint kind.
        resume: continue from ``last`` (model, optimiser, scheduler, RNG, position, best).
        baseline: validate before the first step and use that score as the bar (fine-tuning);
            without it the bar is −inf.
        identity: options whose change would change the result; a resume with different values
            is refused.
        output: the output path, for messages only.
        started: ``time.monotonic()`` when the run began (default: now), for the set-up time
            reported in ``timing``; ``max_minutes`` counts from the first training step.

    Returns:
        ``history`` (one entry per validation), ``best`` (the best entry, or ``None``),
        ``baseline`` (the ``"input"`` entry or ``None``), ``improved`` (the best beats the bar),
        ``improvement`` (best score − baseline score, when there is a baseline), ``stopped``
        (``"epochs"``, ``"max_iters"`` or ``"max_minutes"``), ``stopped_message`` (the sentence),
        ``epoch``/``iteration``/``step`` (the position reached), ``minutes`` (this call),
        ``minutes_total`` (across resumes), ``timing`` (minutes of ``setup``,
        ``baseline_validation`` and ``training`` in this call), ``metric`` (the name of the
        score), ``resumed``.
    """
    from sjunet import distributed

    identity = dict(identity or {})
    n = len(train_data)
    if n == 0:
        raise ValueError("the training split is empty")
    bs = options.batch_size
    w = distributed.world()
    if w.active and bs % w.size:
        raise ValueError(f"--batch-size {bs} (the global batch) must be divisible by the {w.size} processes")
    per_epoch = math.ceil(n / bs)
    show = options.progress and w.main
    model.to(options.device)
    gen = torch.Generator()
    gen.manual_seed(int(options.seed))
    t_fit = time.monotonic()
    t0 = t_fit if started is None else started
    t_train = t_fit  # the budget clock: reset when the training loop starts
    metric = options.metric
    st: dict[str, Any] = {"epoch": 0, "iteration": 0, "step": 0, "order": None, "history": [], "best": None,
                          "baseline": None, "loss_sum": 0.0, "loss_count": 0, "minutes_before": 0.0}
    what_out = str(output) if output is not None else "the output"
    clock = {"validation": options.validation_minutes, "iteration": 0.0}  # minutes of the last ones

    def written() -> str:
        b = st["best"]
        if b is None:
            return "nothing was written"
        return f"{what_out} holds the best so far ({'the input' if b['at'] == 'input' else b['at']})"

    def run_validation(epoch: int, iteration: int, at: str | None = None) -> dict:
        t_val = time.monotonic()
        with rng_preserved():
            score, val = validate()
        measured = (time.monotonic() - t_val) / 60  # what the final validation will take
        clock["validation"] = max(measured, options.validation_minutes) if at else measured
        score = float(score)
        where = at or _label(epoch, iteration, per_epoch)
        if not math.isfinite(score):
            if at:
                raise DivergedError(f"the validation score of the input model is {score}: it produces non-finite "
                                    f"outputs, so there is nothing to fine-tune from; {written()}", None, None, 0)
            raise DivergedError(f"training diverged: the validation score is {score} at {where} (step {st['step']}); "
                                f"try a lower --lr (it was {optimizer.param_groups[0]['lr']:g}); {written()}",
                                epoch, iteration, st["step"])
        entry = {"at": where, "epoch": None if at else epoch, "iteration": None if at else iteration,
                 "step": st["step"], "loss": st["loss_sum"] / st["loss_count"] if st["loss_count"] else None,
                 "val": val, "score": score,
                 "minutes": st["minutes_before"] + (time.monotonic() - t0) / 60}
        st["history"].append(entry)
        st["loss_sum"], st["loss_count"] = 0.0, 0
        if show:
            loss = f"loss {entry['loss']:.4f}  " if entry["loss"] is not None else ""
            tqdm.write(f"{where}: {loss}val {format_metrics(val)}  (selection: {metric} {score:.4f})")
        bar = None if st["best"] is None else st["best"]["score"]
        if bar is not None and st["best"]["at"] == "input" and not at:  # displacing the input needs a margin
            bar += options.min_gain * abs(bar)
        if bar is None or score > bar:
            st["best"] = entry
            if w.main:
                save_best(entry, list(st["history"]))
        return entry

    def save_last() -> None:
        if not w.main:
            return
        torch_save_atomic({
            "kind": kind, "loop_version": LOOP_VERSION,
            "state_dict": _state_dict(model), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": st["epoch"], "iteration": st["iteration"], "step": st["step"],
            "order": st["order"], "generator": gen.get_state(), "rng": rng_state(),
            "loss_sum": st["loss_sum"], "loss_count": st["loss_count"],
            "best": st["best"], "baseline": st["baseline"], "history": st["history"],
            "minutes": st["minutes_before"] + (time.monotonic() - t0) / 60,
            "identity": identity, "num_items": n,
        }, last)

    if resume:
        saved = load_resume_state(last, kind, model=model, optimizer=optimizer, scheduler=scheduler, options=options,
                                  num_items=n, identity=identity, generator=gen)
        set_rng_state(saved["rng"])
        for k in ("epoch", "iteration", "step", "order", "history", "best", "baseline", "loss_sum", "loss_count"):
            st[k] = saved[k]
        st["minutes_before"] = float(saved.get("minutes", 0.0))
        if show:
            where = f"epoch {st['epoch'] + 1}" + (f", iteration {st['iteration']}/{per_epoch}" if st["iteration"] else "")
            tqdm.write(f"resuming at {where} (step {st['step']})")
    elif baseline:
        if show:
            tqdm.write(f"validating the input before any step (its {metric} is the bar to beat)…")
        st["baseline"] = run_validation(0, 0, at="input")
    t_train = time.monotonic()
    timing = {"setup": (t_fit - t0) / 60, "baseline_validation": (t_train - t_fit) / 60}

    def used_iters() -> int:
        return st["step"] + options.reserved_iters

    def used_minutes() -> float:
        return (time.monotonic() - t_train) / 60 + options.reserved_minutes

    def out_of_time() -> bool:
        """Whether one more iteration and the validation that ends the run would pass --max-minutes
        (measured: the last iteration's and the last validation's durations), so the run stops in time."""
        return used_minutes() + clock["iteration"] + clock["validation"] >= options.max_minutes

    stopped = None
    if st["epoch"] >= options.epochs:
        stopped = "epochs"
    elif options.max_iters is not None and used_iters() >= options.max_iters:
        stopped = "max_iters"
    while stopped is None:
        epoch = st["epoch"]
        if st["order"] is None:
            st["order"] = torch.randperm(n, generator=gen)
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(epoch)
        # the order is ours (the global batches; under torchrun each rank takes its share of each); the
        # loader's own generator only keeps it from drawing its base seed from the global torch RNG
        # (which would make a resumed run draw differently from an uninterrupted one)
        rest = st["order"][st["iteration"] * bs:].tolist()
        global_batches = [rest[i:i + bs] for i in range(0, len(rest), bs)]
        sizes = [len(b) for b in global_batches]
        loader = DataLoader(train_data, batch_sampler=[distributed.shard(b, w) for b in global_batches],
                            generator=torch.Generator().manual_seed(int(options.seed)))
        model.train(options.train_mode)
        bar = tqdm(total=per_epoch, initial=st["iteration"], desc=f"{options.desc} epoch {epoch + 1}/{options.epochs}",
                   disable=not show, leave=False)
        recent: list[float] = []
        try:
            for k, (x, y) in enumerate(loader):
                t_iter = time.monotonic()
                x, y = x.to(options.device), y.to(options.device)
                loss = step(x, y)
                value = float(loss.detach())
                if w.active:  # the mean over the global batch, the same on every rank
                    value = distributed.all_sum(value * x.shape[0]) / sizes[k]
                    loss = loss * distributed.batch_weight(x.shape[0], sizes[k], w)
                if not math.isfinite(value):
                    lr = optimizer.param_groups[0]["lr"]
                    raise DivergedError(
                        f"training diverged: the loss is {value} at epoch {epoch + 1}, iteration "
                        f"{st['iteration'] + 1}/{per_epoch} "
                        f"(step {st['step'] + 1}); try a lower --lr (it was {lr:g}); {written()}",
                        epoch, st["iteration"] + 1, st["step"] + 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if options.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                                   options.grad_clip)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                clock["iteration"] = (time.monotonic() - t_iter) / 60
                st["iteration"] += 1
                st["step"] += 1
                st["loss_sum"] += value
                st["loss_count"] += 1
                recent = (recent + [value])[-20:]
                bar.update(1)
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
                done_iteration = st["iteration"]
                end_of_epoch = done_iteration == per_epoch
                if end_of_epoch:
                    st["epoch"], st["iteration"], st["order"] = epoch + 1, 0, None
                if end_of_epoch and st["epoch"] >= options.epochs:
                    stopped = "epochs"
                elif options.max_iters is not None and used_iters() >= options.max_iters:
                    stopped = "max_iters"
                elif options.max_minutes is not None and out_of_time():
                    stopped = "max_minutes"
                if options.max_minutes is not None and w.active:
                    stopped = distributed.decide(stopped)  # rank 0's clock
                due = (stopped is not None or (st["step"] % options.val_every == 0 if options.val_every
                                               else end_of_epoch))
                if due:
                    run_validation(epoch, done_iteration)
                    model.train(options.train_mode)
                    if stopped is None and options.max_minutes is not None:
                        # the next iteration and its final validation would not fit: this one ends the run
                        late = "max_minutes" if out_of_time() else None
                        stopped = distributed.decide(late) if w.active else late
                if due or end_of_epoch:
                    save_last()
                if stopped is not None or end_of_epoch:
                    break
        finally:
            bar.close()
    best, base = st["best"], st["baseline"]
    timing["training"] = (time.monotonic() - t_train) / 60
    message = stop_message(stopped, options, st["step"], st["epoch"], st["iteration"], per_epoch, timing["training"])
    return {
        "history": st["history"],
        "best": best,
        "baseline": base,
        "improved": best is not None and (base is None or best["at"] != "input"),
        "improvement": best["score"] - base["score"] if best is not None and base is not None else None,
        "stopped": stopped,
        "stopped_message": message,
        "metric": metric,
        "timing": timing,
        "epoch": st["epoch"], "iteration": st["iteration"], "step": st["step"],
        "minutes": (time.monotonic() - t0) / 60,
        "minutes_total": st["minutes_before"] + (time.monotonic() - t0) / 60,
        "resumed": bool(resume),
    }
