"""The one training loop of sjunet: ANN training (:func:`sjunet.training.train`) and spiking-flow
fine-tuning (:func:`sjunet.flow.finetune`) are two uses of :func:`fit` that differ only in the
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
* **Budgets.** ``max_minutes`` is checked after every iteration (stop at the first iteration
  past it, validate, save); ``max_iters`` counts steps from the start of the run, independent of
  the epoch size; ``val_every`` validates every N steps instead of after each epoch.
* **Non-finite numbers stop the run.** A non-finite loss raises :class:`DivergedError` before
  the update (the weights in memory and on disk are the last good ones); so does a non-finite
  validation score. The message says where and what was (or was not) written.

Helpers shared by both uses: :func:`run_outputs` (refuse an existing output unless force/resume,
check writability, hold the lock for the whole run), :func:`check_options`,
:func:`train_val_datasets` (the training split without the validation images, and the
validation split), :func:`make_optimizer`, :func:`seed_everything`, :func:`format_metrics`.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sjunet.io import ArtifactError, OutputExistsError, output_guard, torch_save_atomic

#: version of the ``.last.pt`` layout written by :func:`fit`
LOOP_VERSION = 1

#: dataset options that shape training items only (not passed to the validation split)
TRAIN_ONLY_OPTIONS = ("samples_per_epoch", "crop", "patch", "holdout_val")


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

    def __post_init__(self) -> None:
        check_options(epochs=self.epochs, batch_size=self.batch_size, max_minutes=self.max_minutes,
                      max_iters=self.max_iters, val_every=self.val_every, grad_clip=self.grad_clip)


# ------------------------------------------------------------------------------- randomness

def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The python, numpy and torch (and CUDA) RNG states as plain data and tensors."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Run a block (validation) without changing what the global generators draw afterwards."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


# ------------------------------------------------------------------------------- shared helpers

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


def format_metrics(d: dict) -> str:
    """``"f1_vessel 0.7123  accuracy 0.9001"``: the float entries of a metrics dict."""
    return "  ".join(f"{k} {v:.4f}" for k, v in d.items() if isinstance(v, float) and k != "num_images")


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


# ------------------------------------------------------------------------------- the resume state

#: keys of a scheduler's state that change as it steps (everything else must equal this run's)
_SCHED_VOLATILE = ("last_epoch", "_step_count", "_last_lr", "_is_initial", "_get_lr_called_within_step")
#: per-parameter optimiser state entries sjunet's optimisers (adam, rmsprop, sgd) write
_OPT_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "momentum_buffer", "grad_avg")
_MAX_PLAIN_NODES = 200_000


class _Corrupt(Exception):
    """Internal: one field of the resume state does not fit the run (the message says which)."""


def _short(v: Any) -> str:
    text = repr(v) if not isinstance(v, torch.Tensor) else f"a {v.dtype} tensor of shape {tuple(v.shape)}"
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _need_int(d: dict, key: str, lo: int, hi: int) -> int:
    v = d[key]
    if not _is_int(v) or not lo <= v <= hi:
        raise _Corrupt(f"{key} is {_short(v)}, expected a whole number in {lo}..{hi}")
    return v


def _need_num(d: dict, key: str, lo: float = -math.inf, hi: float = math.inf, none: bool = False) -> Any:
    v = d[key]
    if v is None and none:
        return v
    if not _is_num(v) or not lo <= v <= hi:
        raise _Corrupt(f"{key} is {_short(v)}, expected a finite number" + (f" ≥ {lo:g}" if lo > -math.inf else ""))
    return v


def _check_plain(v: Any, where: str) -> None:
    """``v`` is plain JSON-like data (None, bool, numbers, strings, lists, str-keyed dicts), bounded in size
    and depth (no tensors: metrics and options are plain)."""
    stack, seen = [(v, 0)], 0
    while stack:
        x, depth = stack.pop()
        seen += 1
        if seen > _MAX_PLAIN_NODES or depth > 32:
            raise _Corrupt(f"{where} is too large or too deeply nested")
        if x is None or isinstance(x, (bool, int, float, str)):
            continue
        if isinstance(x, (list, tuple)):
            stack.extend((y, depth + 1) for y in x)
        elif isinstance(x, dict):
            for k, y in x.items():
                if not isinstance(k, str):
                    raise _Corrupt(f"{where} has a non-string key {_short(k)}")
                stack.append((y, depth + 1))
        else:
            raise _Corrupt(f"{where} holds {_short(x)}, not plain data")


def _check_entry(e: Any, where: str, step: int, per_epoch: int) -> None:
    """One history entry (see :func:`fit`)."""
    if not isinstance(e, dict):
        raise _Corrupt(f"{where} is {_short(e)}, expected a dict")
    want = ("at", "epoch", "iteration", "step", "loss", "val", "score", "minutes")
    missing = [k for k in want if k not in e]
    if missing:
        raise _Corrupt(f"{where} lacks {', '.join(missing)}")
    if not isinstance(e["at"], str) or len(e["at"]) > 200:
        raise _Corrupt(f"{where}.at is {_short(e['at'])}, expected a short string")
    for k, hi in (("epoch", 10**9), ("iteration", per_epoch)):
        if e[k] is not None and (not _is_int(e[k]) or not 0 <= e[k] <= hi):
            raise _Corrupt(f"{where}.{k} is {_short(e[k])}")
    if not _is_int(e["step"]) or not 0 <= e["step"] <= step:
        raise _Corrupt(f"{where}.step is {_short(e['step'])}, expected 0..{step}")
    if e["loss"] is not None and not _is_num(e["loss"]):
        raise _Corrupt(f"{where}.loss is {_short(e['loss'])}")
    if not _is_num(e["score"]):
        raise _Corrupt(f"{where}.score is {_short(e['score'])}, expected a finite number")
    if not _is_num(e["minutes"]) or e["minutes"] < 0:
        raise _Corrupt(f"{where}.minutes is {_short(e['minutes'])}")
    if not isinstance(e["val"], dict):
        raise _Corrupt(f"{where}.val is {_short(e['val'])}, expected a dict of metrics")
    _check_plain(e, where)


def _check_tensor(v: Any, where: str, dtype: torch.dtype | None = None, shape: tuple | None = None) -> torch.Tensor:
    if not isinstance(v, torch.Tensor) or v.layout != torch.strided or v.is_quantized:
        raise _Corrupt(f"{where} is {_short(v)}, expected a tensor")
    if dtype is not None and v.dtype != dtype:
        raise _Corrupt(f"{where} is {_short(v)}, expected dtype {dtype}")
    if shape is not None and tuple(v.shape) != tuple(shape):
        raise _Corrupt(f"{where} is {_short(v)}, expected shape {tuple(shape)}")
    return v


def _check_like(v: Any, template: Any, where: str, volatile: tuple[str, ...] = (), top_lr: float = math.inf,
                step: int = 0) -> None:
    """``v`` has ``template``'s structure (a scheduler's state): equal values except the ``volatile`` keys of
    dicts, which must be of the same type and in range."""
    if isinstance(template, dict):
        if not isinstance(v, dict) or set(v) != set(template):
            raise _Corrupt(f"{where} does not have this run's fields")
        for k in template:
            if k in volatile:
                t, x = template[k], v[k]
                if isinstance(t, bool) or t is None:
                    if type(x) is not type(t):
                        raise _Corrupt(f"{where}.{k} is {_short(x)}")
                elif _is_int(t):
                    if not _is_int(x) or not -1 <= x <= step + 2:
                        raise _Corrupt(f"{where}.{k} is {_short(x)}, expected -1..{step + 2}")
                elif isinstance(t, list):
                    if (not isinstance(x, list) or len(x) != len(t)
                            or not all(_is_num(y) and 0 <= y <= top_lr for y in x)):
                        raise _Corrupt(f"{where}.{k} is {_short(x)}, expected {len(t)} learning rates ≤ {top_lr:g}")
                elif type(x) is not type(t):
                    raise _Corrupt(f"{where}.{k} is {_short(x)}")
            else:
                _check_like(v[k], template[k], f"{where}.{k}", volatile, top_lr, step)
    elif isinstance(template, (list, tuple)):
        if not isinstance(v, (list, tuple)) or len(v) != len(template):
            raise _Corrupt(f"{where} is {_short(v)}, expected {len(template)} entries")
        for i, (x, t) in enumerate(zip(v, template)):
            _check_like(x, t, f"{where}[{i}]", volatile, top_lr, step)
    elif isinstance(template, torch.Tensor):
        _check_tensor(v, where, template.dtype, tuple(template.shape))
    elif type(v) is not type(template) or v != template:
        raise _Corrupt(f"{where} is {_short(v)}, this run's is {_short(template)}")


def _check_rng(r: Any) -> None:
    """The python / numpy / torch RNG states (:func:`rng_state`), tried on throwaway generators."""
    if not isinstance(r, dict) or not {"python", "numpy", "torch"} <= set(r):
        raise _Corrupt("rng lacks the python, numpy or torch state")
    py, n = r["python"], r["numpy"]
    if not isinstance(py, dict) or set(py) != {"version", "state", "gauss"}:
        raise _Corrupt("rng.python does not have the fields of a python RNG state")
    mt = _check_tensor(py["state"], "rng.python.state", torch.int64, (625,))
    if py["version"] != 3 or not _is_int(py["version"]) or not (py["gauss"] is None or _is_num(py["gauss"])):
        raise _Corrupt("rng.python has a wrong version or gauss")
    if int(mt[:624].min()) < 0 or int(mt[:624].max()) >= 2 ** 32 or not 0 <= int(mt[624]) <= 624:
        raise _Corrupt("rng.python.state is out of range")
    try:
        random.Random().setstate((3, tuple(int(v) for v in mt.tolist()), py["gauss"]))
    except (ValueError, TypeError, OverflowError) as e:
        raise _Corrupt(f"rng.python.state is refused ({e})") from None
    if not isinstance(n, dict) or set(n) != {"name", "keys", "pos", "has_gauss", "cached_gaussian"}:
        raise _Corrupt("rng.numpy does not have the fields of a numpy RNG state")
    keys = _check_tensor(n["keys"], "rng.numpy.keys", torch.int64, (624,))
    if n["name"] != "MT19937" or not _is_int(n["pos"]) or not 0 <= n["pos"] <= 624 or n["has_gauss"] not in (0, 1) \
            or not _is_int(n["has_gauss"]) or not _is_num(n["cached_gaussian"]):
        raise _Corrupt("rng.numpy has a wrong name, pos, has_gauss or cached_gaussian")
    if int(keys.min()) < 0 or int(keys.max()) >= 2 ** 32:
        raise _Corrupt("rng.numpy.keys are out of range")
    tstate = _check_tensor(r["torch"], "rng.torch", torch.uint8, tuple(torch.get_rng_state().shape))
    try:
        torch.Generator().set_state(tstate.clone())
    except (RuntimeError, ValueError, TypeError) as e:
        raise _Corrupt(f"rng.torch is refused ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})") from None
    cuda = r.get("cuda")
    if cuda is not None and (not isinstance(cuda, list) or len(cuda) > 64
                             or not all(isinstance(c, torch.Tensor) and c.dtype == torch.uint8 and c.dim() == 1
                                        and c.numel() <= 1 << 20 for c in cuda)):
        raise _Corrupt("rng.cuda is not a list of CUDA generator states")
    if cuda and torch.cuda.is_available() and len(cuda) != torch.cuda.device_count():
        raise _Corrupt(f"rng.cuda holds {len(cuda)} generator states, this machine has {torch.cuda.device_count()} GPUs")


def _check_optimizer(o: Any, optimizer: torch.optim.Optimizer) -> None:
    """The optimiser's state fits this run's optimiser: its param groups equal ours (but the scheduled
    learning rate), each parameter's state has that parameter's shape and dtype."""
    mine = optimizer.state_dict()
    if not isinstance(o, dict) or set(o) != {"state", "param_groups"}:
        raise _Corrupt("optimizer is not an optimiser state")
    groups, state = o["param_groups"], o["state"]
    if not isinstance(groups, list) or len(groups) != len(mine["param_groups"]):
        raise _Corrupt(f"optimizer has {_short(groups)} param groups, this run's optimiser {len(mine['param_groups'])}")
    top = 0.0
    for i, (g, t) in enumerate(zip(groups, mine["param_groups"])):
        if not isinstance(g, dict) or set(g) != set(t):
            raise _Corrupt(f"optimizer.param_groups[{i}] does not have this optimiser's fields")
        base = float(t.get("initial_lr", t["lr"]))
        top = max(top, base)
        for k, x in g.items():
            if k == "lr":
                if not _is_num(x) or not 0 <= x <= base * (1 + 1e-6):
                    raise _Corrupt(f"optimizer.param_groups[{i}].lr is {_short(x)}, expected 0..{base:g}")
            else:
                _check_like(x, t[k], f"optimizer.param_groups[{i}].{k}")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not isinstance(state, dict):
        raise _Corrupt("optimizer.state is not a dict")
    for pid, per in state.items():
        if not _is_int(pid) or not 0 <= pid < len(params):
            raise _Corrupt(f"optimizer.state has a key {_short(pid)}, expected a parameter index 0..{len(params) - 1}")
        if not isinstance(per, dict) or not set(per) <= set(_OPT_STATE_KEYS):
            raise _Corrupt(f"optimizer.state[{pid}] does not hold this optimiser's state")
        p = params[pid]
        for k, v in per.items():
            if k == "momentum_buffer" and v is None:
                continue
            if k == "step":
                t = _check_tensor(v, f"optimizer.state[{pid}].step", shape=())
                if not t.dtype.is_floating_point or not math.isfinite(float(t)) or not 0 <= float(t) <= 1e12:
                    raise _Corrupt(f"optimizer.state[{pid}].step is {_short(v)}")
                continue
            t = _check_tensor(v, f"optimizer.state[{pid}].{k}", p.dtype, tuple(p.shape))
            if not bool(torch.isfinite(t).all()):
                raise _Corrupt(f"optimizer.state[{pid}].{k} holds non-finite numbers")


#: fields of the ``.last.pt`` state (see :func:`fit`'s ``save_last``)
LAST_FIELDS = ("kind", "loop_version", "state_dict", "optimizer", "scheduler", "epoch", "iteration", "step", "order",
               "generator", "rng", "loss_sum", "loss_count", "best", "baseline", "history", "minutes", "identity",
               "num_items")


def _corrupt(last: Path, why: str) -> ArtifactError:
    why = " ".join(str(why).split())[:300]
    return ArtifactError(f"{last}: the resume state is corrupt or not from this run ({why}); remove it or run "
                         "without --resume")


def load_resume_state(last: str | Path, kind: str, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: Any | None, options: LoopOptions, num_items: int,
                      identity: dict | None = None, generator: torch.Generator | None = None) -> dict:
    """Read ``last`` (``weights_only=True``), check **every** field against this run, then load the model,
    optimiser, scheduler and (if given) ``generator`` states; returns the state (its ``rng`` is checked but
    not applied: :func:`set_rng_state`).

    Checked: it is a dict with every field of :data:`LAST_FIELDS`, of this ``kind`` and
    :data:`LOOP_VERSION`; the options that shape the result (``identity``) are this run's; the
    training split has ``num_items`` items; the position (epoch, iteration, step) lies in this run
    (``step == epoch × iterations per epoch + iteration``, ``epoch ≤ options.epochs``); the epoch's
    order is ``None`` or a permutation of ``range(num_items)``; the generator and RNG states have the
    right dtype and shape and are accepted by throwaway generators; the model's tensors have this
    model's names, shapes and dtypes; the optimiser's and scheduler's states have this run's
    structure (shapes of each parameter, learning rates within the schedule); losses, scores and
    the history are finite numbers and plain data. Anything else: :class:`ArtifactError`, one line
    naming the file; nothing is loaded before all of it passed.
    """
    from sjunet.io import torch_load_data

    last = Path(last)
    identity = dict(identity or {})
    saved = torch_load_data(last)
    try:
        if not isinstance(saved, dict):
            raise _Corrupt(f"it holds {type(saved).__name__}, not a dict")
        missing = [k for k in LAST_FIELDS if k not in saved]
        if missing:
            raise _Corrupt("missing " + ", ".join(missing[:6]) + (" …" if len(missing) > 6 else ""))
        if saved["kind"] != kind:
            raise _Corrupt(f"kind {_short(saved['kind'])}, expected {kind!r}")
        if saved["loop_version"] != LOOP_VERSION or not _is_int(saved["loop_version"]):
            raise _Corrupt(f"written by another sjunet version: loop_version {_short(saved['loop_version'])}, "
                           f"this one writes {LOOP_VERSION}; start over with --force")
        was = saved["identity"]
        if not isinstance(was, dict):
            raise _Corrupt(f"identity is {_short(was)}, expected a dict")
        _check_plain(was, "identity")
        changed = sorted(k for k in set(identity) | set(was) if identity.get(k) != was.get(k))
        if changed:
            raise ArtifactError(f"--resume: {last} was made with other options ("
                                + ", ".join(f"{k}: {_short(was.get(k))} then, {_short(identity.get(k))} now"
                                            for k in changed[:5])
                                + (" …" if len(changed) > 5 else "")
                                + "); resume with the same ones or start over with --force")
        if not _is_int(saved["num_items"]) or saved["num_items"] != num_items:
            raise ArtifactError(f"--resume: {last}: the training split has {num_items} items, the run had "
                                f"{_short(saved['num_items'])}; resume with the same data or start over with --force")
        per_epoch = math.ceil(num_items / options.batch_size)
        epoch = _need_int(saved, "epoch", 0, options.epochs)
        iteration = _need_int(saved, "iteration", 0, per_epoch - 1)
        step = _need_int(saved, "step", 0, 10**12)
        if step != epoch * per_epoch + iteration:
            raise _Corrupt(f"step {step} is not epoch {epoch} × {per_epoch} iterations + iteration {iteration}")
        order = saved["order"]
        if order is None:
            if iteration:
                raise _Corrupt(f"no data order for iteration {iteration} of an epoch")
        else:
            _check_tensor(order, "order", torch.int64, (num_items,))
            if not torch.equal(torch.sort(order).values, torch.arange(num_items)):
                raise _Corrupt(f"order is not a permutation of the {num_items} items")
        gen_state = _check_tensor(saved["generator"], "generator", torch.uint8,
                                  tuple(torch.Generator().get_state().shape))
        try:
            torch.Generator().set_state(gen_state.clone())
        except (RuntimeError, ValueError, TypeError):
            raise _Corrupt("generator is not a generator state") from None
        _check_rng(saved["rng"])
        _need_num(saved, "loss_sum")
        _need_int(saved, "loss_count", 0, step)
        _need_num(saved, "minutes", 0.0)
        history = saved["history"]
        if not isinstance(history, list) or len(history) > step + 1:
            raise _Corrupt(f"history is {_short(history)}, expected a list of at most {step + 1} validations")
        for i, e in enumerate(history):
            _check_entry(e, f"history[{i}]", step, per_epoch)
        for k in ("best", "baseline"):
            if saved[k] is not None:
                _check_entry(saved[k], k, step, per_epoch)
        if saved["best"] is None and history:
            raise _Corrupt("history without a best entry")
        sd, mine = saved["state_dict"], model.state_dict()
        if not isinstance(sd, dict) or set(sd) != set(mine):
            raise _Corrupt("state_dict does not have this model's tensors")
        for k, t in mine.items():
            _check_tensor(sd[k], f"state_dict[{k!r}]", t.dtype, tuple(t.shape))
        _check_optimizer(saved["optimizer"], optimizer)
        if scheduler is None:
            if saved["scheduler"] is not None:
                raise _Corrupt("a scheduler state, but this run has no schedule")
        elif saved["scheduler"] is None:
            raise _Corrupt("no scheduler state, but this run has a learning-rate schedule")
        else:
            top = max(float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups) * (1 + 1e-6)
            _check_like(saved["scheduler"], scheduler.state_dict(), "scheduler", _SCHED_VOLATILE, top, step)
        try:
            model.load_state_dict(sd)
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None and saved["scheduler"] is not None:
                scheduler.load_state_dict(saved["scheduler"])
            if generator is not None:
                generator.set_state(gen_state)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
            raise _Corrupt(f"it does not load into this run: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
                from None
    except _Corrupt as e:
        raise _corrupt(last, str(e)) from None
    except RecursionError:
        raise _corrupt(last, "too deeply nested") from None
    return saved


# ------------------------------------------------------------------------------- the loop

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
        last: the ``.last.pt`` path (:func:`last_path`); ``kind``: its checkpoint kind.
        resume: continue from ``last`` (model, optimiser, scheduler, RNG, position, best).
        baseline: validate before the first step and use that score as the bar (fine-tuning);
            without it the bar is −inf.
        identity: options whose change would change the result; a resume with different values
            is refused.
        output: the output path, for messages only.
        started: ``time.monotonic()`` when the run began (default: now); ``max_minutes`` counts
            from it, so loading data and building the model count towards the budget.

    Returns:
        ``history`` (one entry per validation), ``best`` (the best entry, or ``None``),
        ``baseline`` (the ``"input"`` entry or ``None``), ``improved`` (the best beats the bar),
        ``improvement`` (best score − baseline score, when there is a baseline), ``stopped``
        (``"epochs"``, ``"max_iters"`` or ``"max_minutes"``), ``epoch``/``iteration``/``step``
        (the position reached), ``minutes`` (this call), ``minutes_total`` (across resumes),
        ``resumed``.
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
    t0 = time.monotonic() if started is None else started
    st: dict[str, Any] = {"epoch": 0, "iteration": 0, "step": 0, "order": None, "history": [], "best": None,
                          "baseline": None, "loss_sum": 0.0, "loss_count": 0, "minutes_before": 0.0}
    what_out = str(output) if output is not None else "the output"

    def written() -> str:
        b = st["best"]
        if b is None:
            return "nothing was written"
        return f"{what_out} holds the best so far ({'the input' if b['at'] == 'input' else b['at']})"

    def run_validation(epoch: int, iteration: int, at: str | None = None) -> dict:
        with rng_preserved():
            score, val = validate()
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
            tqdm.write(f"{where}: {loss}val {format_metrics(val)}  (score {score:.4f})")
        if st["best"] is None or score > st["best"]["score"]:
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
        st["baseline"] = run_validation(0, 0, at="input")

    stopped = None
    if st["epoch"] >= options.epochs:
        stopped = "epochs"
    elif options.max_iters is not None and st["step"] >= options.max_iters:
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
                elif options.max_iters is not None and st["step"] >= options.max_iters:
                    stopped = "max_iters"
                elif options.max_minutes is not None and (time.monotonic() - t0) / 60 >= options.max_minutes:
                    stopped = "max_minutes"
                if options.max_minutes is not None and w.active:
                    stopped = distributed.decide(stopped)  # rank 0's clock
                due = (stopped is not None or (st["step"] % options.val_every == 0 if options.val_every
                                               else end_of_epoch))
                if due:
                    run_validation(epoch, done_iteration)
                    model.train(options.train_mode)
                if due or end_of_epoch:
                    save_last()
                if stopped is not None or end_of_epoch:
                    break
        finally:
            bar.close()
    best, base = st["best"], st["baseline"]
    return {
        "history": st["history"],
        "best": best,
        "baseline": base,
        "improved": best is not None and (base is None or best["score"] > base["score"]),
        "improvement": best["score"] - base["score"] if best is not None and base is not None else None,
        "stopped": stopped,
        "epoch": st["epoch"], "iteration": st["iteration"], "step": st["step"],
        "minutes": (time.monotonic() - t0) / 60,
        "minutes_total": st["minutes_before"] + (time.monotonic() - t0) / 60,
        "resumed": bool(resume),
    }
