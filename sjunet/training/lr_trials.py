"""``--lr auto``: a short trial of a few learning rates before fine-tuning, on a clock (spec §7).

Each rate of :data:`LR_CANDIDATES` trains a copy of the input for up to :data:`LR_TRIAL_ITERS`
iterations from the same weights and data, then is validated; the best rate is used for training.
The trials spend the fine-tuning budget, so they are bounded by it — by the clock, validations
included (:func:`plan_trials`):

* they take at most :data:`LR_TRIAL_SHARE` (a quarter) of ``--max-minutes`` (and of
  ``--max-iters``: :func:`plan_lr_trials`);
* at most half of that share goes to validating them: a validation image's cost is known from
  the input's validation (measured before, as set-up), so when validating every trial on the whole
  validation split would not fit, the trials are validated on its first ``k`` images — and so is
  the input, once, so the trials are ranked against the input on the same images; when not even
  one image fits, the trials are skipped (the recipe's rate, :data:`LR_FALLBACK`) and the run says
  why;
* the rest is split evenly among the rates as training time (at least one iteration each).

A trial that beats the input (by more than ``min_gain`` of its score) is not thrown away:
training continues from its weights and optimiser state at its rate
(:attr:`TrialResult.state`). When none does, the trials have seen only the first dip of
fine-tuning (measured: at T = 1 on EM every rate is below the input after 20 iterations, and every
rate is above it after 80), which ranks the rates by how little they moved — the recipe's rate is
used instead, from the input's weights.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

#: learning rates ``lr="auto"`` tries, and the iterations it gives each
LR_CANDIDATES = (1e-5, 3e-5, 1e-4, 3e-4)
LR_TRIAL_ITERS = 20
#: the share of a fine-tuning budget (``max_minutes``, ``max_iters``) the ``lr="auto"`` trials may take
LR_TRIAL_SHARE = 0.25
#: the share of the trials' time their validations may take (the rest trains)
LR_VALIDATION_SHARE = 0.5
#: fewer trial iterations per rate than this and the trials are skipped (``--max-iters`` too small)
LR_TRIAL_MIN = 2
#: the rate ``lr="auto"`` uses when the trials are skipped or none beats the input
LR_FALLBACK = 1e-4


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


@dataclass(frozen=True)
class TrialPlan:
    """How the trials spend their time: ``val_items`` validation images per trial (``None``: the
    whole split, the input's score already known), ``train_seconds`` per rate (``None``: no clock),
    ``seconds`` the whole share (``None``: no clock), ``skip`` why they are skipped (``""``: not)."""

    val_items: int | None
    train_seconds: float | None
    seconds: float | None
    skip: str = ""


def plan_trials(max_minutes: float | None, val_seconds: float, val_images: int,
                rates: int = len(LR_CANDIDATES)) -> TrialPlan:
    """The trials' clock (module docstring): ``val_seconds`` the input's whole validation took on
    ``val_images`` images. Without ``max_minutes`` every trial is validated on the whole split."""
    if max_minutes is None:
        return TrialPlan(None, None, None)
    share = max_minutes * 60 * LR_TRIAL_SHARE
    per_image = val_seconds / max(val_images, 1)
    for_validation = share * LR_VALIDATION_SHARE
    if rates * val_seconds <= for_validation:
        items, spent = None, rates * val_seconds
    else:
        items = int(for_validation // ((rates + 1) * per_image)) if per_image > 0 else val_images
        if items < 1:
            return TrialPlan(0, 0.0, share, skip=(
                f"a validation image takes {per_image:.1f} s, so {rates} trials cannot be validated in half of "
                f"a quarter of --max-minutes ({for_validation:.0f} s): trials skipped, lr {LR_FALLBACK:g}"))
        items = min(items, val_images)
        spent = (rates + 1) * items * per_image
    return TrialPlan(items, max(share - spent, 0.0) / rates, share)


@dataclass
class TrialResult:
    """What the trials found: ``lr`` (the rate training uses), ``scores`` (each rate's validation
    score), ``input_score`` (the input's, on the same images), ``val_items`` (images each trial was
    validated on; ``None``: all), ``kept`` (the rate whose trial beat the input and training
    continues from, or ``None``), ``state`` (that trial's ``{"model", "optimizer"}`` state dicts),
    ``iters`` (iterations run per rate), ``seconds`` (by the clock, validations included)."""

    lr: float
    scores: dict = field(default_factory=dict)
    input_score: float | None = None
    val_items: int | None = None
    kept: float | None = None
    state: dict | None = None
    iters: dict = field(default_factory=dict)
    seconds: float = 0.0


def lr_range_test(snn: nn.Module, step, train_ds, validate: Callable, optimizer: str = "adam",
                  candidates=LR_CANDIDATES, iters: int = LR_TRIAL_ITERS, batch_size: int = 4, seed: int = 0,
                  grad_clip: float | None = None, device: str = "cpu", max_seconds: float | None = None,
                  progress: bool = False, baseline: float | None = None, fallback: float = LR_FALLBACK,
                  val_items: int | None = None, min_gain: float = 0.0,
                  clock: Callable[[], float] = time.monotonic) -> TrialResult:
    """Try each learning rate for ``iters`` iterations from the same weights and data, validate,
    and return a :class:`TrialResult`; the weights are restored afterwards, and the global random
    state is left as it was. A trial whose loss is not finite scores −inf; ties (within 1e-6) go
    to the smaller rate. ``max_seconds``: each rate's *training* stops before an iteration that would
    end past its equal share of it (the last iteration's duration; at least one iteration each;
    :func:`plan_trials` leaves the validations out of it).
    ``validate(limit)`` returns ``(score, metrics)`` on the first ``limit`` validation images
    (``None``: all) — each trial is validated on ``val_items``; with a subset, the input is
    validated on it too, otherwise ``baseline`` is the input's score. The best trial is kept
    (``kept``, ``state``) when it beats the input's score by more than ``min_gain`` of it;
    when no trial beats the input, ``fallback`` is returned as the rate."""
    from torch.utils.data import DataLoader

    from sjunet.rng import rng_preserved
    from sjunet.training.run import make_optimizer

    t_start = clock()
    start = {k: v.detach().clone() for k, v in snn.state_dict().items()}
    params = [p for p in snn.parameters() if p.requires_grad]
    result = TrialResult(lr=fallback, val_items=val_items)
    bar = tqdm(total=iters * len(candidates), desc="lr trials", disable=not progress, leave=False)
    best_state = None
    with rng_preserved():
        if val_items is not None or baseline is None:
            result.input_score = float(validate(val_items)[0])
        else:
            result.input_score = float(baseline)
        for lr in candidates:
            bar.set_postfix(lr=f"{lr:g}")
            snn.load_state_dict(start)
            opt = make_optimizer(optimizer, params, lr)
            loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(seed))
            finite, t0, done, last = True, clock(), 0, 0.0
            for i, (x, y) in enumerate(loader):
                # stop before an iteration that would end past this rate's share (the last one's duration)
                if i >= iters or (i and max_seconds is not None
                                  and clock() - t0 + last > max_seconds / len(candidates)):
                    break
                t_iter = clock()
                loss = step(x.to(device), y.to(device))
                if not torch.isfinite(loss.detach()):
                    finite = False
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                last = clock() - t_iter
                done += 1
                bar.update(1)
            result.iters[lr] = done
            result.scores[lr] = float(validate(val_items)[0]) if finite else -math.inf
            if finite and _best(result.scores) == lr:  # the best so far: its weights and optimiser, on the CPU
                best_state = {"lr": lr, "model": {k: v.detach().cpu().clone() for k, v in snn.state_dict().items()},
                              "optimizer": opt.state_dict()}
    bar.close()
    snn.load_state_dict(start)
    best = _best(result.scores)
    if result.scores[best] > result.input_score + min_gain * abs(result.input_score):
        result.lr = best
        if best_state is not None and best_state["lr"] == best:
            result.kept, result.state = best, {"model": best_state["model"], "optimizer": best_state["optimizer"]}
    result.seconds = clock() - t_start
    return result


def _best(scores: dict) -> float:
    """The best rate so far: the highest score, ties (within 1e-6) to the smaller rate."""
    top = max(scores.values())
    return min(lr for lr, v in scores.items() if v >= top - 1e-6)


__all__ = ["LR_CANDIDATES", "LR_FALLBACK", "LR_TRIAL_ITERS", "LR_TRIAL_MIN", "LR_TRIAL_SHARE", "LR_VALIDATION_SHARE",
           "TrialPlan", "TrialResult", "lr_range_test", "plan_lr_trials", "plan_trials"]
