"""The resume state ``<output>.last.pt`` checked field by field before a run continues from it.

A ``.last.pt`` file is data (``torch.load(weights_only=True)``), but it is still a file: every field
— types, position ranges, the data order (a permutation of the dataset's indices), RNG and
generator states, model and optimiser tensors, scheduler state, history — is checked against the
run before any of it is used, and any mismatch is one :class:`~sjunet.io.ArtifactError` line
naming the file (:func:`load_resume_state`).
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sjunet.io import ArtifactError

#: version of the ``.last.pt`` layout written by :func:`sjunet.training.loop.fit`
LOOP_VERSION = 1

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
    """One history entry (see :func:`~sjunet.training.loop.fit`)."""
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
    """The python / numpy / torch RNG states (:func:`~sjunet.rng.rng_state`), tried on throwaway generators."""
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


#: fields of the ``.last.pt`` state (see :func:`~sjunet.training.loop.fit`'s ``save_last``)
LAST_FIELDS = ("kind", "loop_version", "state_dict", "optimizer", "scheduler", "epoch", "iteration", "step", "order",
               "generator", "rng", "loss_sum", "loss_count", "best", "baseline", "history", "minutes", "identity",
               "num_items")


def _corrupt(last: Path, why: str) -> ArtifactError:
    why = " ".join(str(why).split())[:300]
    return ArtifactError(f"{last}: the resume state is corrupt or not from this run ({why}); remove it or run "
                         "without --resume")


def load_resume_state(last: str | Path, kind: str, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: Any | None, options: Any, num_items: int,
                      identity: dict | None = None, generator: torch.Generator | None = None) -> dict:
    """Read ``last`` (``weights_only=True``), check **every** field against this run, then load the model,
    optimiser, scheduler and (if given) ``generator`` states; returns the state (its ``rng`` is checked but
    not applied: :func:`~sjunet.rng.set_rng_state`).

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
            if (t.is_floating_point() and sd[k].numel()) and not bool(torch.isfinite(sd[k]).all()):
                raise _Corrupt(f"state_dict[{k!r}] holds NaN or infinite values")
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


