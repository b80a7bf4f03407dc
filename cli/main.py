"""``sjunet`` command line: one thin click command per library function of the same name.

The CLI owns paths, loading, printing and exit codes; the library works on objects. Errors a user
can fix (a wrong file, a bad option, an unsupported model, incompatible data) end the command with
one line and exit code 2; a run that fails (a diverged loss) with one line and exit code 1.
"""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from sjunet.io import ArtifactError


class InputError(click.ClickException):
    """A one-line error about the user's input (exit code 2)."""

    exit_code = 2


def _fail_cleanly(fn):
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


def _sigterm(signum, frame):  # a terminated run unwinds: temporaries removed, locks released
    sys.exit(128 + signum)


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


def _dataset_options(dataset: str, pairs: tuple[str, ...]) -> dict:
    """``--opt`` pairs parsed and checked against dataset ``dataset``'s options (declared types and
    ranges, strict booleans) before any work; one line for a bad one."""
    from sjunet.data import check_dataset_options

    options = _parse_options(pairs)
    check_dataset_options(dataset, options)
    return options


#: time steps above which a command warns of the cost, and above which it refuses
T_WARN, T_MAX = 1000, 100_000


def _check_T(steps, flag: str = "--T") -> None:
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


def _check_fits(ds, net, padded: bool, what: str, multiple: int | None = None) -> None:
    """Refuse, before the work, images of ``ds`` that cannot pass ``net`` (its size multiple)."""
    from sjunet.data import check_fits
    from sjunet.snn import size_rule

    if multiple is None:
        try:
            multiple = size_rule(net, getattr(ds, "in_channels", None))
        except Exception:  # noqa: BLE001 - unknown multiple: the library's own check applies
            return
    check_fits(ds, multiple, padded=padded, what=what)


def _check_training_data(dataset: str, data, seed: int, options: dict, multiple: int, what: str) -> None:
    """The training items (as they go in, unpadded) fit a network of size ``multiple`` (before the
    run starts; validation images are padded, so any size passes)."""
    from sjunet.data import check_fits, get_dataset

    check_fits(get_dataset(dataset, data, "train", seed=seed, **options), multiple, padded=False, what=what)


dataset_opt = click.option("--dataset", "-d", default="em", show_default=True,
                           help="dataset name: em, drive, camseq, bsd, set12, bsd68, cbsd68, demo-seg, demo-denoise "
                                "(volumes, for 3-D U-Nets: em3d, demo-seg3d)")
data_opt = click.option("--data", type=click.Path(), default=None,
                        help="dataset directory (or the parent data directory, e.g. ../shared/data)")
opt_opt = click.option("--opt", multiple=True, help="dataset option KEY=VALUE (JSON value), repeatable; e.g. --opt crop=128")


model_opts = [
    click.option("--model", "-m", type=click.Path(), default=None, help="ANN checkpoint from `sjunet train`"),
    click.option("--arch", default=None, help="your own U-Net: package.module:factory, e.g. monai.networks.nets:BasicUNet"),
    click.option("--arch-kwargs", default=None, help="JSON keyword arguments of the --arch factory"),
    click.option("--weights", type=click.Path(), default=None, help="state_dict file of the --arch model (weights only)"),
    click.option("--random-weights", is_flag=True,
                 help="with --arch and no --weights: use the randomly initialised model on purpose (benchmarks)"),
]

#: the one-line refusal of --arch without --weights (a random model converts and evaluates "fine")
ARCH_NEEDS_WEIGHTS = ("--arch needs --weights (a state_dict file): without it the model has random weights "
                      "(pass --random-weights to use them on purpose, e.g. for benchmarks)")


def _model_options(fn):
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


def _force_option(fn):
    return click.option("--force", is_flag=True, help="replace an existing output (default: refuse it)")(fn)


def _load_ann(model, arch, arch_kwargs, weights, required: bool = True):
    """The ANN of -m or --arch/--weights, or (None, None) when neither is given and not required."""
    from sjunet.models.checkpoint import load_model

    if model is None and arch is None:
        if required:
            raise InputError("give the ANN: -m/--model (an sjunet checkpoint) or --arch with --weights")
        return None, None
    return load_model(model, arch, arch_kwargs, weights)


def _ann_channels(ann, info) -> tuple[int | None, int | None]:
    """(input, output) channels of an ANN: from its sjunet config, else its first and last conv."""
    from torch import nn

    if info is not None and info.config:
        return int(info.config["in_channels"]), int(info.config["out_channels"])
    convs = [m for m in ann.modules() if isinstance(m, nn.Conv2d)]
    return (convs[0].in_channels if convs else None), None


def _claim_output(path, force: bool) -> None:
    """Refuse an existing output unless --force; check the directory is writable, before the work."""
    from sjunet.io import OutputExistsError, check_writable

    if path is None:
        return
    check_writable(path)
    if Path(path).exists() and not force:
        raise OutputExistsError(f"output {path} exists: refusing to overwrite it; pass --force to replace it "
                                "(or choose another -o)")


@click.group()
@click.version_option(package_name="sjunet")
def main() -> None:
    """sjunet: train a U-Net, calibrate, convert it into a Spiking-UNet, simulate and evaluate it."""
    signal.signal(signal.SIGTERM, _sigterm)


def _budget_options(fn):
    """--max-minutes, --max-iters, --val-every, --resume and --force (shared by train and finetune)."""
    for option in reversed([
        click.option("--max-minutes", type=float, default=None,
                     help="time budget of the training (and of finetune's lr-auto trials, at most a quarter of it); "
                          "loading the data and validating the input are not counted: stop at the first iteration "
                          "past it, validate and save (--resume continues)"),
        click.option("--max-iters", type=int, default=None,
                     help="iteration budget, counted from the start of the run (any epoch size); finetune's lr-auto "
                          "trials count against it (at most a quarter; skipped when too small)"),
        click.option("--val-every", type=int, default=None, help="validate every N iterations (default: each epoch)"),
        click.option("--resume", is_flag=True, help="continue from <output>.last.pt, e.g. runs/ann.pt.last.pt (bit-identical to an uninterrupted run)"),
        click.option("--force", is_flag=True, help="replace an existing output (default: refuse it)"),
    ]):
        fn = option(fn)
    return fn


def _run_loop(fn, *args, **kwargs):
    """Run a training entry point; a run that diverged or validated nothing exits non-zero with one line."""
    from sjunet.loop import TrainingError

    try:
        return fn(*args, **kwargs)
    except TrainingError as e:
        raise click.ClickException(str(e)) from e


def _is_main() -> bool:
    from sjunet.distributed import world

    return world().main


def _stop_note(s: dict) -> str:
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


def _headline(s: dict, entry: dict) -> str:
    return f"validation {s.get('metric', 'score')} {entry['score']:.4f}"


class_weights_opt = click.option(
    "--class-weights", default="auto", show_default=True,
    help="segmentation loss weights: auto (inverse class frequency of the training labels when a binary task's "
         "foreground is under 20% of the pixels, else none), none, or w1,w2 (one per class); training only")


@main.command()
@dataset_opt
@data_opt
@click.option("-o", "--output", default="runs/ann.pt", show_default=True, type=click.Path())
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--lr", type=float, default=None, help="default: paper's (1e-3 segmentation, 1e-5 denoising)")
@click.option("--optimizer", type=click.Choice(["rmsprop", "adam", "sgd"]), default=None,
              help="default: paper's (RMSprop segmentation, Adam denoising)")
@click.option("--width", default=16, show_default=True, help="base width (paper: 64)")
@click.option("--depth", default=4, show_default=True)
@click.option("--batch-norm/--no-batch-norm", default=False, show_default=True)
@click.option("--up-relu/--no-up-relu", default=False, show_default=True, help="ReLU after each up-convolution")
@click.option("--pool", type=click.Choice(["avg", "max"]), default="avg", show_default=True,
              help="down-sampling of sjunet's U-Net (the paper: avg)")
@click.option("--arch", default=None, help="train another U-Net instead: package.module:factory")
@click.option("--arch-kwargs", default=None, help="JSON keyword arguments of the --arch factory")
@click.option("--schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True)
@click.option("--warmup", default=0, show_default=True, help="iterations of linear learning-rate warm-up")
@click.option("--grad-clip", type=float, default=None, help="clip each step's gradient norm to this")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU")
@click.option("--spiking", is_flag=True, help="train a Spiking-UNet directly (surrogate gradient through time; "
                                               "-o is then an SNN file) instead of the ANN")
@click.option("--neuron", type=click.Choice(["mt", "ml", "rs", "lif"]), default="mt", show_default=True,
              help="with --spiking: the training-time neuron (mt: multi-threshold; ml: multi-level; rs: real spike; "
                   "lif: Spiking-FCN's)")
@click.option("--T", "T", type=int, default=4, show_default=True, help="with --spiking: time steps")
@class_weights_opt
@_budget_options
@opt_opt
@_fail_cleanly
def train(dataset, data, output, epochs, batch_size, lr, optimizer, width, depth, batch_norm, up_relu, pool, arch,
          arch_kwargs, schedule, warmup, grad_clip, seed, device, spiking, neuron, T, class_weights, max_minutes,
          max_iters, val_every, resume, force, opt):
    """Train the ANN U-Net (or, with --spiking, a Spiking-UNet directly); keeps the best checkpoint on the
    validation split."""
    from sjunet.io import check_writable
    from sjunet.models.external import parse_arch_kwargs
    from sjunet.training import TrainOptions, train as train_fn

    from sjunet.tasks import parse_class_weights

    dataset_options = _dataset_options(dataset, opt)
    parse_class_weights(class_weights)
    if spiking:
        _check_T([T])
    check_writable(output)
    if arch is None and depth is not None and 0 < depth <= 16:
        _check_training_data(dataset, data, seed, dataset_options, 2 ** depth,
                             f"a depth-{depth} {'Spiking-' if spiking else ''}U-Net")
    if spiking:
        from sjunet.direct import DirectOptions, train_spiking

        if batch_norm or up_relu:
            raise InputError("--batch-norm/--up-relu are ANN options; a directly trained Spiking-UNet has neither")
        dopts = DirectOptions(dataset=dataset, data=data, output=output, neuron=neuron, T=T, epochs=epochs,
                              batch_size=batch_size, lr=lr if lr is not None else 1e-3,
                              optimizer=optimizer or "adam", width=width, depth=depth, pool=pool, arch=arch,
                              arch_kwargs=parse_arch_kwargs(arch_kwargs), seed=seed, device=device,
                              max_minutes=max_minutes, max_iters=max_iters, val_every=val_every,
                              grad_clip=grad_clip if grad_clip is not None else 1.0,
                              dataset_options=dataset_options, class_weights=class_weights)
        _, s = _run_loop(train_spiking, dopts, resume=resume, force=force)
        best = s["best"]
        if _is_main():
            click.echo(f"{_stop_note(s)}best: {best['at']} ({_headline(s, best)}): {json.dumps(best['val'])}"
                       f"  -> {output}")
        return
    opts = TrainOptions(dataset=dataset, data=data, output=output, epochs=epochs, batch_size=batch_size, lr=lr,
                        optimizer=optimizer, width=width, depth=depth, batch_norm=batch_norm, up_relu=up_relu,
                        pool=pool, arch=arch, arch_kwargs=parse_arch_kwargs(arch_kwargs), seed=seed, device=device,
                        max_minutes=max_minutes, max_iters=max_iters, val_every=val_every,
                        dataset_options=dataset_options, schedule=schedule, warmup=warmup, grad_clip=grad_clip,
                        class_weights=class_weights)
    _, s = _run_loop(train_fn, opts, resume=resume, force=force)
    best = s["best"]
    if _is_main():
        click.echo(f"{_stop_note(s)}best: {best['at']} ({_headline(s, best)}): {json.dumps(best['val'])}"
                   f"  -> {output}")


@main.command()
@_model_options
@dataset_opt
@data_opt
@click.option("--split", default="train", show_default=True, help="calibration split (the paper: training set)")
@click.option("--percentile", "-p", default=99.9, show_default=True)
@click.option("--positive-only", is_flag=True, help="percentile over positive values only (default: all values)")
@click.option("--batch-size", default=4, show_default=True)
@click.option("--max-batches", type=int, default=None, help="default: the whole split")
@click.option("-o", "--output", default="runs/stats.h5", show_default=True, type=click.Path())
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU")
@_force_option
@opt_opt
@_fail_cleanly
def calibrate(model, arch, arch_kwargs, weights, dataset, data, split, percentile, positive_only, batch_size,
              max_batches, output, device, force, opt):
    """Record whole-set activation statistics (percentile, max, mean, histograms) to HDF5."""
    import warnings

    from torch.utils.data import DataLoader

    from sjunet.calibration import calibrate as calibrate_fn
    from sjunet.data import get_dataset
    from sjunet.evaluation import check_compatible

    if batch_size < 1 or (max_batches is not None and max_batches < 1):
        raise InputError("--batch-size and --max-batches must be positive integers")
    dataset_options = _dataset_options(dataset, opt)
    _claim_output(output, force)
    ann, info = _load_ann(model, arch, arch_kwargs, weights)
    ds = get_dataset(dataset, data, split, **dataset_options)
    check_compatible(ds, *_ann_channels(ann, info), info.task)
    _check_fits(ds, ann, padded=False, what="the ANN")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead layers are listed below
        stats = calibrate_fn(ann, loader, output=output, p=percentile, positive_only=positive_only,
                             max_batches=max_batches, device=device,
                             data_description={"dataset": dataset, "split": split, **ds.describe(),
                                               "model": info.to_record()})
    relus = {k: v for k, v in stats.nodes.items() if v.role in ("relu", "cat", "add")}
    click.echo(f"{len(stats.nodes)} tensors recorded ({len(relus)} ReLU/cat/add scales); "
               f"λ range {min(v.percentile for v in relus.values()):.4g}..{max(v.percentile for v in relus.values()):.4g}")
    for name, v in stats.dead.items():
        click.echo(f"dead layer {name} ({v.role}): p{v.p:g} = {v.raw_percentile:.3g}, max = {v.max:.3g} — it never "
                   f"(or almost never) fires on this data; λ = {v.percentile:.3g} ({v.fallback} fallback)")
    from sjunet.calibration.approximation import gap_line, gap_refusal

    if gap_line(stats.approximation):
        click.echo(gap_line(stats.approximation) + (" — above the conversion threshold: `sjunet convert` will need "
                                                     "--accept-gap" if gap_refusal(stats.approximation) else ""))
    click.echo(f"-> {output}")


@main.command()
@_model_options
@click.option("--stats", "-s", required=True, type=click.Path(), help="HDF5 from `sjunet calibrate`")
@click.option("--norm", type=click.Choice(["connection", "layer"]), default="connection", show_default=True)
@click.option("--neuron", type=click.Choice(["mt", "if", "ml", "rs"]), default="mt", show_default=True,
              help="mt: multi-threshold; if: integrate-and-fire; ml, rs: the paper's peers (sjunet.peer_neurons)")
@click.option("--thresholds", default=None,
              help="comma-separated ladder, largest first (default 2,1,0.5,0.25 for mt, 1 for if and rs, 3,2,1 for ml), "
                   "or a name: paper (2,1,0.5,0.25) or theorem (0.5,0.25,0.125,0.0625: Theorem 3.1's optimum for the "
                   "normalised [0, 1] — better at T = 1–4)")
@click.option("--v-init", default="half", show_default=True,
              help="membrane potential after reset: half (θ_min/2, rounding), zero (the paper) or a number")
@click.option("--task", type=click.Choice(["segmentation", "denoising"]), default=None,
              help="what the --arch model does (recorded in the SNN; sjunet checkpoints know it)")
@click.option("--accept-gap", is_flag=True,
              help="convert even when the instance/group/layer norms' fixed deviations cost the ANN more than the "
                   "thresholds (pixel agreement < 0.98, or relative error > 0.1); `sjunet finetune` recovers most of it")
@click.option("-o", "--output", default="runs/snn.safetensors", show_default=True, type=click.Path())
@_force_option
@_fail_cleanly
def convert(model, arch, arch_kwargs, weights, stats, norm, neuron, thresholds, v_init, task, accept_gap, output, force):
    """Convert the ANN into a Spiking-UNet with SpikingJelly's converter and the sjunet recipe."""
    from sjunet.recipe import ConversionOptions, convert as convert_fn

    try:
        from sjunet.neurons import LADDERS

        ladder = LADDERS[thresholds] if thresholds in LADDERS else (
            tuple(float(t) for t in thresholds.split(",")) if thresholds else None)
    except ValueError:
        raise InputError(f"--thresholds takes comma-separated numbers or a name ({', '.join(LADDERS)}), "
                         f"got {thresholds!r}") from None
    ConversionOptions(norm, neuron, ladder, v_init).check()
    _claim_output(output, force)
    ann, info = _load_ann(model, arch, arch_kwargs, weights)
    snn = convert_fn(ann, stats, norm=norm, neuron=neuron, thresholds=ladder, v_init=v_init,
                     model_info=info.to_record(), accept_gap=accept_gap)
    snn.record.task = info.task or ({"kind": task} if task else None)
    from sjunet.recipe import save_snn

    save_snn(snn, output, {"model": info.to_record(), "stats": str(stats)})
    conv = snn.record.conversion
    click.echo(f"converted ({norm}-wise, {neuron}): {len(conv.neurons)} neuron layers, {len(conv.gains)} gains, "
               f"{len(conv.dead_layers)} dead-layer fallbacks -> {output}")
    if conv.approximations:
        from sjunet.calibration.approximation import gap_line

        gap = conv.approximation_gap
        click.echo(gap_line({**gap, "nodes": conv.approximations})
                   + (" — above the thresholds, accepted (--accept-gap)" if gap.get("accepted") else ""))


@main.command()
@_model_options
@click.option("--snn", type=click.Path(), default=None, help="converted SNN")
@dataset_opt
@data_opt
@click.option("--split", default="test", show_default=True)
@click.option("--T", "T", multiple=True, default=("10,20,50,100",), show_default=True,
              help="time steps: --T 10 20 50 100, --T 10,20 or --T 10 --T 20")
@click.argument("more_t", nargs=-1, type=int, metavar="")
@click.option("--mode", type=click.Choice(["multi", "step"]), default="step", show_default=True,
              help="step-by-step (memory independent of T; the faster one on CPU) or multi-step (layer by layer, "
                   "chunks of --chunk steps; try it on a GPU)")
@click.option("--chunk", default=4, show_default=True)
@click.option("--limit", type=int, default=None, help="evaluate only the first N images")
@click.option("--protocol", type=click.Choice(["whole", "tiled", "patch"]), default="whole", show_default=True,
              help="whole: each image padded to the size rule and run once (tiled only when over the memory budget); "
                   "tiled: always in tiles; patch: the paper's overlapping windows, averaged (--patch, --stride)")
@click.option("--patch", type=int, default=None, help="--protocol patch: window side (default: the dataset's, DRIVE 48)")
@click.option("--stride", type=int, default=None, help="--protocol patch: window step, 1..--patch (default: the dataset's, DRIVE 16)")
@click.option("--tile", type=int, default=None, help="tile core side in pixels (default: from the memory budget)")
@click.option("--tile-overlap", type=int, default=None,
              help="margin of a tile in pixels, rounded up to the size rule (default 32; the receptive field's radius "
                   "makes tiles equal whole images)")
@click.option("--max-pixels", type=int, default=None,
              help="input pixels per network call above which an image is tiled (default: 2^26 activation elements, "
                   "or a quarter of a GPU's free memory, over the network's largest activation (+ an SNN's state) "
                   "per pixel)")
@click.option("--pad", type=click.Choice(["reflect", "zero"]), default=None,
              help="padding up to the size rule (default: reflect; zero for --protocol patch)")
@click.option("-o", "--output", type=click.Path(), default=None, help="write metrics JSON here")
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU")
@_force_option
@opt_opt
@_fail_cleanly
def evaluate(model, arch, arch_kwargs, weights, snn, dataset, data, split, T, more_t, mode, chunk, limit, protocol,
             patch, stride, tile, tile_overlap, max_pixels, pad, output, device, force, opt):
    """Metrics of an ANN and/or SNN (metric vs T, agreement with the ANN) on whole images (or tiles, or
    the paper's patches: --protocol); under torchrun the images are split across the processes and the
    metrics merged."""
    from sjunet import distributed
    from sjunet.data import get_dataset
    from sjunet.evaluation import (check_compatible, check_options, check_protocol, evaluate as evaluate_fn,
                                   make_protocol)
    from sjunet.snn import size_rule
    from sjunet.io import file_fingerprint, provenance, write_json

    distributed.init(device)
    device = distributed.device_for(device)  # "auto" resolved, a GPU per rank under torchrun
    T = _steps(T, more_t)
    check_options(T, chunk, limit)
    window = dict(tile=tile, overlap=tile_overlap, max_pixels=max_pixels, patch=patch, stride=stride, pad=pad)
    defaults = type("Defaults", (), {"eval_patch": (patch or 48, min(16, patch or 48)), "name": dataset})
    make_protocol(protocol, defaults, **window)  # the options alone, before any work
    if snn is None and model is None and arch is None:
        raise InputError("give --model/--arch (an ANN), --snn (a converted SNN) or both")
    if snn is not None:
        _check_T(T)
    dataset_options = _dataset_options(dataset, opt)
    _claim_output(output, force)
    from sjunet.recipe import load_snn

    net, rec = load_snn(snn) if snn is not None else (None, None)
    ann, info = _load_ann(model, arch, arch_kwargs, weights, required=False)
    ds = get_dataset(dataset, data, split, **dataset_options)
    proto = make_protocol(protocol, ds, **window)  # --patch/--stride default to the dataset's eval_patch
    result: dict = {"split": split}
    if ann is not None:
        check_compatible(ds, *_ann_channels(ann, info), info.task, what="the ANN")
        if proto.name == "patch":  # whole images and tiles are padded to the size rule: any size passes
            try:
                multiple = size_rule(ann, ds.in_channels)
            except Exception:  # noqa: BLE001 - unknown multiple: the evaluation's own check applies
                multiple = 1
            check_protocol(proto, multiple)
        result["model"] = info.to_record()
    if net is not None:
        conv = rec.get("conversion") or {}
        check_compatible(ds, conv.get("input_channels"), conv.get("output_channels"), rec.get("task"), what="the SNN")
        check_protocol(proto, size_rule(net))
        if ann is not None and conv.get("ann_fingerprint") not in (None, info.fingerprint):
            raise InputError(f"{snn} was converted from model {conv.get('ann_fingerprint')}, not from this ANN "
                             f"({info.fingerprint}); pixel agreement would be meaningless")
        result["snn"] = {"path": str(snn), "file": file_fingerprint(snn), "conversion": conv.get("options"),
                         "mode": mode, "chunk": chunk, "device": device}
    result.update(evaluate_fn(ds, ann, net, T, mode, chunk, limit, device=device, protocol=proto))
    result["provenance"] = provenance()
    if distributed.world().main:
        if output is not None:
            write_json(result, output)
        click.echo(format_result(result))
        click.echo("protocol: " + json.dumps(result["protocol"]))


def _steps(T: tuple[str, ...], more: tuple[int, ...]) -> list[int]:
    try:
        steps = [int(v) for t in T for v in str(t).replace(",", " ").split()] + list(more)
    except ValueError as e:
        raise click.BadParameter(f"--T takes positive integers: {e}") from e
    if not steps or min(steps) < 1:
        raise click.BadParameter(f"--T takes positive integers, got {steps}")
    return sorted(set(steps))


def format_result(r: dict) -> str:
    rows = []
    if "ann" in r:
        rows.append(("ANN", r["ann"]))
    for t, m in r.get("T", {}).items():
        rows.append((f"SNN T={t}", m))
    if not rows:
        return json.dumps(r, indent=2)
    keys = [k for k in rows[-1][1] if isinstance(rows[-1][1][k], float) and k != "num_images" and not k.startswith("iou_")]
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" if k in m else "" for k in keys) + " |")
    if "timing" in r:
        lines.append("timing: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r["timing"].items()}))
    return "\n".join(lines)


@main.command()
@click.option("--snn", required=True, type=click.Path(exists=True), help="converted SNN from `sjunet convert`")
@dataset_opt
@data_opt
@click.option("--T", "T", default=10, show_default=True, help="time steps to fine-tune (and validate) at; 1 works")
@click.option("-o", "--output", default="runs/snn_ft.safetensors", show_default=True, type=click.Path())
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=4, show_default=True)
@click.option("--lr", default=None, help="learning rate, or auto (a short trial of 1e-5…3e-4 on the validation split); default: the library's (the paper: 1e-6)")
@click.option("--optimizer", type=click.Choice(["adam", "rmsprop", "sgd"]), default="adam", show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True)
@click.option("--loss", type=click.Choice(["label", "distill", "both"]), default=None,
              help="label loss (Eq. 11/12), distillation from the ANN the SNN came from, or both (default: the library's)")
@click.option("--layer-weight", type=float, default=None, help="weight of per-layer rate distillation (0: off)")
@click.option("--warmup", type=int, default=None, help="iterations of linear learning-rate warm-up")
@click.option("--grad-clip", type=float, default=None, help="clip each step's gradient norm to this")
@click.option("--energy-penalty", type=float, default=None,
              help="spike budget: add β × (SOP-convention energy / ANN energy) to the loss (0: off)")
@click.option("--method", type=click.Choice(["flow", "bptt"]), default="flow", show_default=True,
              help="spiking flow (Algorithm 1) or, for comparison, BPTT with a surrogate gradient")
@click.option("--chunk", default=1, show_default=True, help="steps per multi-step chunk of the no-grad simulation (1: single-step mode, memory independent of T)")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU")
@class_weights_opt
@_budget_options
@opt_opt
@_fail_cleanly
def finetune(snn, dataset, data, T, output, epochs, batch_size, lr, optimizer, schedule, loss, layer_weight, warmup,
             grad_clip, energy_penalty, method, chunk, seed, device, class_weights, max_minutes, max_iters, val_every,
             resume, force, opt):
    """Fine-tune a converted SNN with spiking flow; the output is the best of the input and every validation."""
    from sjunet.flow import FinetuneOptions, finetune as finetune_fn
    from sjunet.io import check_writable
    from sjunet.tasks import parse_class_weights

    _check_T([T])
    dataset_options = _dataset_options(dataset, opt)
    parse_class_weights(class_weights)
    check_writable(output)
    if lr is not None and lr != "auto":
        try:
            lr = float(lr)
        except ValueError:
            raise InputError(f"--lr takes a number or auto, got {lr!r}") from None
    given = {k: v for k, v in dict(lr=lr, loss=loss, layer_weight=layer_weight, warmup=warmup, grad_clip=grad_clip,
                                   energy_penalty=energy_penalty).items() if v is not None}
    from sjunet.recipe import load_snn

    opts = FinetuneOptions(dataset=dataset, data=data, output=output, T=T, epochs=epochs,
                           batch_size=batch_size, optimizer=optimizer, schedule=schedule, method=method,
                           chunk=chunk, seed=seed, max_minutes=max_minutes, max_iters=max_iters, val_every=val_every,
                           device=device, dataset_options=dataset_options, class_weights=class_weights, **given)
    net, _ = load_snn(snn)
    _, s = _run_loop(finetune_fn, net, opts, resume=resume, force=force)
    if not _is_main():
        return
    before, best = s["baseline"], s["best"]
    metric = s.get("metric", "score")
    click.echo(f"{_stop_note(s)}before: {json.dumps(before['val'])}\nbest:   {json.dumps(best['val'])}")
    if s["improved"]:
        click.echo(f"fine-tuning improved on the converted SNN: validation {metric} {before['score']:.4f} -> "
                   f"{best['score']:.4f} (+{s['improvement']:.4f}) at {best['at']}  -> {output}")
    else:
        tried = [h["score"] for h in s["history"] if h["at"] != "input"]
        seen = f"best fine-tuned validation {metric} {max(tried):.4f}" if tried else "no fine-tuned model was validated"
        click.echo(f"fine-tuning did not improve on the converted SNN ({seen} vs {before['score']:.4f} before); "
                   f"the output is the input SNN  -> {output}")


@main.command()
@click.option("--task", type=click.Choice(["seg", "denoise", "seg3d"]), default="seg", show_default=True,
              help="seg, denoise: 2-D images; seg3d: volumes (a 3-D U-Net on demo-seg3d; figure: middle slices)")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path())
@click.option("--epochs", default=None, type=int, help="default: 30 (seg) / 15 (denoise) / 12 (seg3d)")
@click.option("--T", "T", multiple=True, default=("5,10,20",), show_default=True)
@click.argument("more_t", nargs=-1, type=int, metavar="")
@click.option("--opt", multiple=True, help="demo data option KEY=VALUE, e.g. --opt size=32 --opt num_items=8 (quick)")
@_fail_cleanly
def demo(task, out, epochs, T, more_t, opt):
    """The whole pipeline on built-in demo data (no download): train → calibrate → convert → evaluate →
    a figure of the predictions; prints the results, where every output went and what the words mean."""
    from sjunet.demo import run_demo
    from sjunet.io import check_writable

    from sjunet.demo import DEMOS

    steps = _steps(T, more_t)
    _check_T(steps)
    dataset_options = _dataset_options(DEMOS[task]["dataset"], opt)
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out {out} is a file, not a directory: give a directory for the demo's files "
                         "(e.g. --out runs/demo)")
    check_writable(Path(out) / task / "report.md")
    click.echo(f"demo {task}: training a small U-Net, calibrating, converting and simulating; everything goes to "
               f"{Path(out) / task}/")
    r = run_demo(task, out, epochs=epochs, T=steps, dataset_options=dataset_options)
    click.echo(r["report"])
    click.echo("\noutputs:")
    width = max(len(k) for k in r["outputs"])
    for what, path in r["outputs"].items():
        click.echo(f"  {what:<{width}}  {path}")
    click.echo("\nlegend:")
    for line in r["legend"]:
        click.echo(f"  {line}")


@main.group()
def plot() -> None:
    """Figures: activation-vs-rate (paper Fig. 3), metric-vs-T, metric-vs-energy, calibration histograms."""


@plot.command("activation-vs-rate")
@click.option("--model", "-m", required=True, type=click.Path(exists=True), help="ANN checkpoint")
@click.option("--snn", multiple=True, required=True, type=click.Path(exists=True),
              help="converted SNN(s), repeatable (e.g. layer-wise and connection-wise)")
@dataset_opt
@data_opt
@click.option("--T", "T", default=20, show_default=True)
@click.option("--images", "n_images", default=1, show_default=True, help="number of test images")
@click.option("--layer", "layers", multiple=True, help="layers to plot (default: every layer after a skip concatenation)")
@click.option("--style", type=click.Choice(["density", "scatter"]), default="density", show_default=True)
@click.option("-o", "--output", default="runs/activation_vs_rate.png", show_default=True, type=click.Path(),
              help="PNG, or .svg/.pdf")
@_force_option
@opt_opt
@_fail_cleanly
def plot_activation_vs_rate(model, snn, dataset, data, T, n_images, layers, style, output, force, opt):
    """ANN activation vs SNN firing rate per neuron, with fitted slope and correlation."""
    from sjunet.models.checkpoint import load_ann
    from sjunet.plots import plot as plot_fn
    from sjunet.recipe import load_snn

    _check_T([T])
    dataset_options = _dataset_options(dataset, opt)
    _claim_output(output, force)
    ann, _ = load_ann(model)
    r = plot_fn("activation-vs-rate", model=ann, snn=[load_snn(p)[0] for p in snn], dataset=dataset, data=data, T=T,
                n_images=n_images, layers=list(layers) or None, style=style, output=output,
                dataset_options=dataset_options)
    for layer, per in r.items():
        click.echo(f"{layer}: " + "  ".join(f"{lab}: slope {v['slope']:.3f} r {v['r']:.3f}" for lab, v in per.items()))
    click.echo(f"-> {output}")


@plot.command("metric-vs-T")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--metric", default=None, help="metric key (default: every f1_* / psnr / miou)")
@click.option("-o", "--output", default="runs/metric_vs_T.png", show_default=True, type=click.Path())
@_force_option
@_fail_cleanly
def plot_metric_vs_t(results, metric, output, force):
    """Metric against T from `sjunet evaluate` JSON files."""
    from sjunet.curves import load_results
    from sjunet.plots import plot as plot_fn

    _claim_output(output, force)
    plot_fn("metric-vs-T", results=[load_results(p) for p in results], stems=[Path(p).stem for p in results],
            metric=metric, output=output)
    click.echo(f"-> {output}")


@plot.command("metric-vs-energy")
@click.argument("frontiers", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--metric", default=None, help="metric key (default: the hard class's F1, mIoU or PSNR)")
@click.option("--label", "labels", multiple=True, help="one label per frontier (default: from each SNN's record)")
@click.option("-o", "--output", default="runs/metric_vs_energy.png", show_default=True, type=click.Path())
@_force_option
@_fail_cleanly
def plot_metric_vs_energy(frontiers, metric, labels, output, force):
    """Metric against energy (paper, SOP, NeuroBench conventions) from `sjunet energy -o` frontiers."""
    from sjunet.plots import plot as plot_fn

    from sjunet.curves import load_results

    _claim_output(output, force)
    plot_fn("metric-vs-energy", frontiers=[load_results(p, "frontier") for p in frontiers],
            stems=[Path(p).stem for p in frontiers], metric=metric, labels=list(labels) or None, output=output)
    click.echo(f"-> {output}")


@plot.command("predictions")
@click.option("-m", "--model", "models", multiple=True, help="an ANN checkpoint, as LABEL=PATH or PATH (label U-Net)")
@click.option("--snn", "snns", multiple=True, required=True,
              help="an SNN file as LABEL=PATH[@T] (repeat; T defaults to --T)")
@dataset_opt
@data_opt
@click.option("--split", default="test", show_default=True)
@click.option("--image", "images", multiple=True, type=int, default=(0,), show_default=True,
              help="test image index (repeat for several rows)")
@click.option("--T", "T", type=int, default=10, show_default=True, help="time steps of SNNs given without @T")
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU")
@click.option("-o", "--output", default="runs/predictions.png", show_default=True, type=click.Path())
@_force_option
@opt_opt
@_fail_cleanly
def plot_predictions(models, snns, dataset, data, split, images, T, device, output, force, opt):
    """The paper's Figures 4/5: input, ground truth and each system's output for chosen images."""
    from sjunet.data import get_dataset
    from sjunet.models.checkpoint import load_ann
    from sjunet.predictions import predictions, predictions_figure
    from sjunet.recipe import load_snn
    from sjunet.tasks import task_for

    def split_label(spec: str, default: str) -> tuple[str, str]:
        label, sep, path = spec.rpartition("=")
        return (label, path) if sep and label else (default, spec)

    plan = []
    for spec in models:
        label, path = split_label(spec, "U-Net")
        plan.append((label, path, None))
    for spec in snns:
        label, path = split_label(spec, Path(spec).stem)
        path, at, steps = path.rpartition("@") if "@" in path else (path, "", "")
        try:
            t = int(steps) if at else T
        except ValueError as e:
            raise InputError(f"--snn {spec}: the part after @ must be a number of time steps") from e
        if t < 1:
            raise InputError(f"--snn {spec}: T must be positive")
        plan.append((label, path, t))
    for label, path, _ in plan:
        if not Path(path).is_file():
            raise InputError(f"{label}: no such file {path}")
    _check_T([t for _, _, t in plan if t is not None] or [T])
    dataset_options = _dataset_options(dataset, opt)
    _claim_output(output, force)
    ds = get_dataset(dataset, data, split, **dataset_options)
    systems = {label: (load_ann(path)[0] if t is None else load_snn(path)[0], t) for label, path, t in plan}
    rows = predictions(systems, ds, list(images), device=device)
    predictions_figure(rows, task_for(ds), output, title=f"{dataset} ({split})")
    for r in rows:
        click.echo(f"image {r['index']}: " + "  ".join(f"{k} {v:.4f}" for k, v in r["scores"].items()))
    click.echo(f"-> {output}")


@plot.command("histograms")
@click.argument("stats", type=click.Path(exists=True))
@click.option("-o", "--output", default="runs/histograms.png", show_default=True, type=click.Path())
@_force_option
@_fail_cleanly
def plot_histograms(stats, output, force):
    """Per-layer activation histograms from the calibration HDF5, percentile marked."""
    from sjunet.plots import plot as plot_fn

    from sjunet.calibration.store import read_stats

    _claim_output(output, force)
    plot_fn("histograms", stats=read_stats(stats), output=output)
    click.echo(f"-> {output}")


@main.command()
@click.option("--snn", required=True, type=click.Path())
@_model_options
@dataset_opt
@data_opt
@click.option("--split", default="test", show_default=True)
@click.option("--T", "T", multiple=True, default=("1,2,4,8,16",), show_default=True,
              help="time steps, all from one simulation: --T 1 2 4 8 16 or --T 20")
@click.argument("more_t", nargs=-1, type=int, metavar="")
@click.option("--limit", type=int, default=None)
@click.option("--mode", type=click.Choice(["multi", "step"]), default="step", show_default=True)
@click.option("--chunk", default=4, show_default=True)
@click.option("-o", "--output", type=click.Path(), default=None, help="write the frontier as JSON")
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU")
@_force_option
@opt_opt
@_fail_cleanly
def energy(snn, model, arch, arch_kwargs, weights, dataset, data, split, T, more_t, limit, mode, chunk, output, device,
           force, opt):
    """Metric and energy at every T (spikes, events, synaptic operations, MACs; paper, SOP and NeuroBench
    conventions beside the ANN): the accuracy–energy frontier."""
    from sjunet.data import get_dataset
    from sjunet.energy import energy_frontier
    from sjunet.energy_report import frontier_table
    from sjunet.evaluation import check_compatible, check_options
    from sjunet.io import file_fingerprint, provenance, write_json
    from sjunet.recipe import load_snn

    T = _steps(T, more_t)
    check_options(T, chunk, limit)
    _check_T(T)
    dataset_options = _dataset_options(dataset, opt)
    _claim_output(output, force)
    net, rec = load_snn(snn)
    ann, info = _load_ann(model, arch, arch_kwargs, weights, required=False)
    ds = get_dataset(dataset, data, split, **dataset_options)
    conv = rec.get("conversion") or {}
    check_compatible(ds, conv.get("input_channels"), conv.get("output_channels"), rec.get("task"), what="the SNN")
    if ann is not None and conv.get("ann_fingerprint") not in (None, info.fingerprint):
        raise InputError(f"the ANN ({info.fingerprint}) is not the one {snn} was converted from "
                         f"({conv.get('ann_fingerprint')}); give that one, or none (MACs from the SNN's graph)")
    r = energy_frontier(net, ds, T, ann=ann, limit=limit, mode=mode, chunk=chunk, device=device)
    r["snn"] = {"path": str(snn), "file": file_fingerprint(snn), "conversion": conv.get("options"),
                "finetune": bool(rec.get("finetune"))}
    r["model"] = info.to_record() if info else None
    r["dataset"] = {"name": dataset, "split": split, **ds.describe()}
    if output is not None:
        write_json({**r, "provenance": provenance(options={"T": T, "limit": limit, "mode": mode, "chunk": chunk})},
                   output)
    click.echo(frontier_table(r, label="fine-tuned SNN" if rec.get("finetune") else "SNN"))


@main.command()
@click.argument("name")
@click.option("--profile", type=click.Choice(["smoke", "cpu", "gpu", "paper"]), default="cpu", show_default=True)
@click.option("--model", default=None, type=click.Path())
@click.option("--data", default=None, type=click.Path())
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU")
@click.option("--dataset", default=None, help="dataset of the one-dataset tables (ladders, energy, ablation)")
@click.option("--only", default=None, help="comma-separated subset of the rows (zoo: architectures)")
def bench(name, profile, model, data, device, dataset, only):
    """Run a benchmark from benchmarks/ (same as `python -m sjunet.benchmarks NAME`)."""
    from sjunet.benchmarks.__main__ import BENCHMARKS, main as bench_main

    if name not in BENCHMARKS:
        raise click.BadParameter(f"unknown benchmark {name!r}; choose one of {', '.join(sorted(BENCHMARKS))}",
                                 param_hint="NAME")
    args = [name, "--profile", profile, "--device", device] + (["--model", model] if model else []) + \
        (["--data", data] if data else []) + (["--dataset", dataset] if dataset else []) + \
        (["--only", only] if only else [])
    bench_main(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
