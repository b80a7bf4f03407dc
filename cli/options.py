"""What the verbs of the ``sjunet`` command line share: the one-line error (:class:`InputError`, exit
code 2), the decorator that turns the library's errors into it (:func:`fail_cleanly`), the common
options (dataset, data, ``--opt``, the ANN's ``-m``/``--arch``, ``--force``, the budgets) and checks
made before any work (time steps, output paths, image sizes).

The CLI owns paths, loading, printing and exit codes; the library works on objects. Errors a user
can fix (a wrong file, a bad option, an unsupported model, incompatible data) end the command with
one line and exit code 2; a run that fails (a diverged loss) with one line and exit code 1.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import click

from sjunet.io import ArtifactError


class InputError(click.ClickException):
    """A one-line error about the user's input (exit code 2)."""

    exit_code = 2


def fail_cleanly(fn):
    """Turn the library's errors into one-line CLI errors, not tracebacks (module docstring)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **k):
        from sjunet.data.common import DatasetError
        from sjunet.graph import UnsupportedGraphError

        try:
            return fn(*a, **k)
        except click.ClickException:
            raise
        except (ArtifactError, DatasetError, UnsupportedGraphError, ValueError, KeyError, OSError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise InputError(f"{msg}") from e
        except RuntimeError as e:
            raise click.ClickException(" ".join(str(e).split())[:500]) from e
    return wrapper


def _parse_options(pairs: tuple[str, ...]) -> dict:
    out = {}
    for p in pairs:
        if "=" not in p or not p.split("=", 1)[0].strip():
            raise InputError(f"--opt takes KEY=VALUE (e.g. --opt crop=128), got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except (json.JSONDecodeError, RecursionError):
            out[k.strip()] = v
    return out


def parse_dataset_options(dataset: str, pairs: tuple[str, ...]) -> dict:
    """``--opt`` pairs parsed and checked against dataset ``dataset``'s options (declared types and
    ranges, strict booleans) before any work; one line for a bad one."""
    from sjunet.data import check_dataset_options

    options = _parse_options(pairs)
    check_dataset_options(dataset, options)
    return options


#: time steps above which a command warns of the cost, and above which it refuses
T_WARN, T_MAX = 1000, 100_000


def check_T(steps, flag: str = "--T") -> None:
    """Refuse absurd numbers of time steps; warn (stderr, one line) of an expensive one. Each step
    costs about one ANN pass per image."""
    steps = [int(t) for t in steps]
    if not steps or min(steps) < 1:
        raise InputError(f"{flag} must be a positive number of time steps, got {steps}")
    t = max(steps)
    if t > T_MAX:
        raise InputError(f"{flag} {t}: more than {T_MAX} time steps is refused (each step costs about one ANN pass "
                         f"per image: {t} steps ≈ {t}× the ANN's time per image); use {flag} ≤ {T_MAX} (rates "
                         "settle within a few hundred steps)")
    if t > T_WARN:
        click.echo(f"warning: T = {t} steps: about {t}× an ANN pass per image, so this will be slow; "
                   f"use {flag} ≤ {T_WARN} unless you need more", err=True)


def check_images_fit(ds, net, padded: bool, what: str, multiple: int | None = None) -> None:
    """Refuse, before the work, images of ``ds`` that cannot pass ``net`` (its size multiple)."""
    from sjunet.data import check_fits
    from sjunet.snn import size_rule

    if multiple is None:
        try:
            multiple = size_rule(net, getattr(ds, "in_channels", None))
        except Exception:  # noqa: BLE001 - unknown multiple: the library's own check applies
            return
    check_fits(ds, multiple, padded=padded, what=what)


dataset_opt = click.option("--dataset", "-d", default="em", show_default=True,
                           help="dataset name: em, drive, camseq, bsd, set12, bsd68, cbsd68, demo-seg, demo-denoise "
                                "(volumes, for 3-D U-Nets: em3d, demo-seg3d)")
data_opt = click.option("--data", type=click.Path(), default=None,
                        help="dataset directory (or the parent data directory, e.g. ../shared/data); default: "
                             "$SJUNET_DATA (the demo data sets need none)")
opt_opt = click.option("--opt", multiple=True, help="dataset option KEY=VALUE (JSON value), repeatable; e.g. --opt crop=128")


model_opts = [
    click.option("--model", "-m", type=click.Path(), default=None,
                 help="ANN checkpoint from `sjunet train` (default: none; or give --arch with --weights)"),
    click.option("--arch", default=None, help="your own U-Net: package.module:factory, e.g. "
                                                "monai.networks.nets:BasicUNet (default: none; or give -m)"),
    click.option("--arch-kwargs", default=None,
                 help="JSON keyword arguments of the --arch factory (default: none, the factory's defaults)"),
    click.option("--weights", type=click.Path(), default=None,
                 help="state_dict file of the --arch model, weights only (default: none — refused unless "
                      "--random-weights)"),
    click.option("--random-weights", is_flag=True,
                 help="with --arch and no --weights: use the randomly initialised model on purpose (benchmarks)"),
]

#: the one-line refusal of --arch without --weights (a random model converts and evaluates "fine")
ARCH_NEEDS_WEIGHTS = ("--arch needs --weights (a state_dict file): without it the model has random weights "
                      "(pass --random-weights to use them on purpose, e.g. for benchmarks)")


def model_options(fn):
    """-m/--arch/--arch-kwargs/--weights/--random-weights; refuses --arch without --weights (one line)
    unless --random-weights, before anything else runs. The command itself never sees ``random_weights``."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, random_weights=False, **k):
        if k.get("arch") is not None and k.get("weights") is None and k.get("model") is None and not random_weights:
            raise InputError(ARCH_NEEDS_WEIGHTS)
        if random_weights and (k.get("arch") is None or k.get("weights") is not None or k.get("model") is not None):
            raise InputError("--random-weights goes with --arch alone (no --weights, no -m)")
        return fn(*a, **k)

    for option in reversed(model_opts):
        wrapper = option(wrapper)
    return wrapper


def _chunk(ctx, param, value):
    if value == "auto":
        return value
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise click.BadParameter(f"--chunk takes a positive integer or 'auto' (chosen by memory), got {value!r}")
    return n


def chunk_option(fn):
    """``--chunk``: steps per multi-step chunk, or ``auto`` (by memory: :func:`sjunet.snn.simulation.memory_chunk`)."""
    return click.option("--chunk", default="auto", show_default=True, callback=_chunk,
                        help="steps per multi-step chunk (--mode multi): auto — as many as keep a chunk's largest "
                             "tensor in the last-level cache — or a number: at most that many (a chunk outgrowing the "
                             "cache is slower than single steps; the numbers are the same)")(fn)


def force_option(fn):
    return click.option("--force", is_flag=True, help="replace an existing output (default: refuse it)")(fn)


def ann_from_options(model, arch, arch_kwargs, weights, required: bool = True):
    """The ANN of -m or --arch/--weights, or (None, None) when neither is given and not required."""
    from sjunet.models.checkpoint import load_model

    if model is None and arch is None:
        if required:
            raise InputError("give the ANN: -m/--model (an sjunet checkpoint) or --arch with --weights")
        return None, None
    return load_model(model, arch, arch_kwargs, weights)


def ann_channels(ann, info) -> tuple[int | None, int | None]:
    """(input, output) channels of an ANN: from its sjunet config, else its first and last conv."""
    from torch import nn

    if info is not None and info.config:
        return int(info.config["in_channels"]), int(info.config["out_channels"])
    convs = [m for m in ann.modules() if isinstance(m, nn.Conv2d)]
    return (convs[0].in_channels if convs else None), None


def claim_output(path, force: bool) -> None:
    """Refuse an existing output (a dangling symbolic link too) unless --force, and an output that is not
    a regular file even with it; check the directory is writable — before the work, writing nothing."""
    from sjunet.io import OutputExistsError, check_writable, output_exists

    if path is None:
        return
    check_writable(path)
    if output_exists(path) and not force:
        link = " (a symbolic link)" if Path(path).is_symlink() else ""
        raise OutputExistsError(f"output {path} exists{link}: refusing to overwrite it; pass --force to replace it "
                                "(or choose another -o)")


@contextlib.contextmanager
def writing(path, force: bool) -> Iterator[None]:
    """Hold the output's lock (:func:`sjunet.io.output_guard`) while the work runs and the result is
    written, the existence checked again under it: of two runs on one output the second is refused.
    Entered after the inputs are read, so a bad input writes nothing (not even the lock file). Only
    the main process writes (and locks) under torchrun."""
    from sjunet.io import output_guard

    if path is None or not is_main():
        yield
        return
    with output_guard(path, force=force):
        yield


def memory_budget_option(fn):
    """``--memory-budget SIZE`` (e.g. 64G): the memory a run of an SNN may need before it is refused
    (:mod:`sjunet.snn.footprint`; default half of the machine's RAM). The command never sees it."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, memory_budget=None, **k):
        from sjunet.snn.footprint import budget_of, parse_bytes

        try:
            nbytes = None if memory_budget is None else parse_bytes(memory_budget, "--memory-budget")
        except ValueError as e:
            raise InputError(str(e)) from None
        with budget_of(nbytes):
            return fn(*a, **k)

    return click.option("--memory-budget", default=None, metavar="SIZE",
                        help="memory an SNN run may need (e.g. 64G, 512M); estimated from the network and the input "
                             "before anything is allocated (default: half of this machine's RAM)")(wrapper)


def budget_options(fn):
    """--max-minutes, --max-iters, --val-every, --resume and --force (shared by train and finetune)."""
    for option in reversed([
        click.option("--max-minutes", type=float, default=None,
                     help="time budget of the training, validations included (and of finetune's lr-auto trials, at "
                          "most a quarter of it by the clock); loading the data and validating the input are not "
                          "counted: the run stops when one more iteration and its final validation would pass it, "
                          "validates and saves (--resume continues). Default: none, no time limit"),
        click.option("--max-iters", type=int, default=None,
                     help="iteration budget, counted from the start of the run (any epoch size); finetune's lr-auto "
                          "trials count against it (at most a quarter; skipped when too small). Default: none, "
                          "--epochs decides"),
        click.option("--val-every", type=int, default=None, help="validate every N iterations (default: each epoch)"),
        click.option("--resume", is_flag=True, help="continue from <output>.last.pt, e.g. runs/ann.pt.last.pt (bit-identical to an uninterrupted run)"),
        click.option("--force", is_flag=True, help="replace an existing output (default: refuse it)"),
    ]):
        fn = option(fn)
    return fn


def run_loop(fn, *args, **kwargs):
    """Run a training entry point; a run that diverged or validated nothing exits non-zero with one line."""
    from sjunet.training.loop import TrainingError

    try:
        return fn(*args, **kwargs)
    except TrainingError as e:
        raise click.ClickException(str(e)) from e


def is_main() -> bool:
    from sjunet.distributed import world

    return world().main


def stop_note(s: dict) -> str:
    """Why the run stopped and where its time went (two lines), e.g. ``stopped: --epochs 10 reached after
    30 iterations (before --max-iters 100)``."""
    lines = [s["stopped_message"]] if s.get("stopped_message") else []
    t = s.get("timing") or {}
    if t:
        parts = [("set-up", "setup"), ("validation of the input", "baseline_validation"), ("lr trials", "lr_trials"),
                 ("training", "training")]
        lines.append("time: " + ", ".join(f"{name} {t[k]:.2f} min" for name, k in parts
                                          if k in t and (k != "baseline_validation" or s.get("baseline")))
                     + " (--max-minutes and --max-iters count lr trials and training only)")
    return "".join(line + "\n" for line in lines)


def warn_broken(*records, what: str = "the ANN") -> str | None:
    """Repeat, in one line, a broken-model reason recorded in any of ``records`` (a checkpoint, the
    statistics' data description, an SNN's conversion record: :func:`sjunet.evaluation.degenerate.recorded`)."""
    from sjunet.evaluation.degenerate import recorded, warning_line

    reason = recorded(*records)
    if reason and is_main():
        click.echo(warning_line(reason, what))
    return reason


def headline(s: dict, entry: dict) -> str:
    return f"validation {s.get('metric', 'score')} {entry['score']:.4f}"


class_weights_opt = click.option(
    "--class-weights", default="auto", show_default=True,
    help="segmentation loss weights: auto (inverse class frequency of the training labels when a binary task's "
         "foreground is under 20% of the pixels, else none), none, or w1,w2 (one per class); training only")


def parse_steps(T: tuple[str, ...], more: tuple[int, ...]) -> list[int]:
    try:
        steps = [int(v) for t in T for v in str(t).replace(",", " ").split()] + list(more)
    except ValueError as e:
        raise click.BadParameter(f"--T takes positive integers: {e}") from e
    if not steps or min(steps) < 1:
        raise click.BadParameter(f"--T takes positive integers, got {steps}")
    return sorted(set(steps))
