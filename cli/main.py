"""``sjunet`` command line: one thin click command per library function of the same name."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from sjunet.io import ArtifactError


def _fail_cleanly(fn):
    """Turn the library's input errors into one-line CLI errors (exit code 2), not tracebacks."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **k):
        from sjunet.data.common import DatasetError
        from sjunet.graph import UnsupportedGraphError

        try:
            return fn(*a, **k)
        except (ArtifactError, DatasetError, UnsupportedGraphError, FileNotFoundError, ValueError) as e:
            raise click.ClickException(str(e)) from e
    return wrapper


def _parse_options(pairs: tuple[str, ...]) -> dict:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"--opt takes KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


dataset_opt = click.option("--dataset", "-d", default="em", show_default=True,
                           help="dataset name: em, drive, camseq, bsd, set12, bsd68, cbsd68, demo-seg, demo-denoise")
data_opt = click.option("--data", type=click.Path(), default=None,
                        help="dataset directory (or the parent data directory, e.g. ../shared/data)")
opt_opt = click.option("--opt", multiple=True, help="dataset option KEY=VALUE (JSON value), repeatable; e.g. --opt crop=128")


@click.group()
@click.version_option(package_name="sjunet")
def main() -> None:
    """sjunet: train a U-Net, calibrate, convert it into a Spiking-UNet, simulate and evaluate it."""


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
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--max-minutes", type=float, default=None, help="stop after the epoch that passes this budget")
@click.option("--resume", is_flag=True, help="continue from <output>.last.pt")
@opt_opt
@_fail_cleanly
def train(dataset, data, output, epochs, batch_size, lr, optimizer, width, depth, batch_norm, up_relu, seed,
          device, max_minutes, resume, opt):
    """Train the ANN U-Net; keeps the best checkpoint on the validation split."""
    from sjunet.train import TrainOptions, train as train_fn

    opts = TrainOptions(dataset=dataset, data=data, output=output, epochs=epochs, batch_size=batch_size, lr=lr,
                        optimizer=optimizer, width=width, depth=depth, batch_norm=batch_norm, up_relu=up_relu,
                        seed=seed, device=device, max_minutes=max_minutes, dataset_options=_parse_options(opt))
    s = train_fn(opts, resume=resume)
    click.echo(f"best epoch {s['best_epoch']}: {json.dumps(s['best_val'])}  -> {output}")


@main.command()
@click.option("--model", "-m", required=True, type=click.Path(exists=True), help="ANN checkpoint from `sjunet train`")
@dataset_opt
@data_opt
@click.option("--split", default="train", show_default=True, help="calibration split (the paper: training set)")
@click.option("--percentile", "-p", default=99.9, show_default=True)
@click.option("--positive-only", is_flag=True, help="percentile over positive values only (default: all values)")
@click.option("--batch-size", default=4, show_default=True)
@click.option("--max-batches", type=int, default=None, help="default: the whole split")
@click.option("-o", "--output", default="runs/stats.h5", show_default=True, type=click.Path())
@click.option("--device", default="cpu", show_default=True)
@opt_opt
@_fail_cleanly
def calibrate(model, dataset, data, split, percentile, positive_only, batch_size, max_batches, output, device, opt):
    """Record whole-set activation statistics (percentile, max, mean, histograms) to HDF5."""
    from torch.utils.data import DataLoader

    from sjunet.calibration import calibrate as calibrate_fn
    from sjunet.data import get_dataset
    from sjunet.io import file_fingerprint, load_ann

    ann, _ = load_ann(model)
    ds = get_dataset(dataset, data, split, **_parse_options(opt))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    stats = calibrate_fn(ann, loader, output=output, p=percentile, positive_only=positive_only,
                         max_batches=max_batches, device=device,
                         data_description={"dataset": dataset, "split": split, **ds.describe(),
                                           "model_file": str(model), "model_file_fingerprint": file_fingerprint(model)})
    relus = {k: v for k, v in stats.nodes.items() if v.role in ("relu", "cat")}
    click.echo(f"{len(stats.nodes)} tensors recorded ({len(relus)} ReLU/cat scales); "
               f"λ range {min(v.percentile for v in relus.values()):.4g}..{max(v.percentile for v in relus.values()):.4g} -> {output}")


@main.command()
@click.option("--model", "-m", required=True, type=click.Path(exists=True), help="ANN checkpoint")
@click.option("--stats", "-s", required=True, type=click.Path(exists=True), help="HDF5 from `sjunet calibrate`")
@click.option("--norm", type=click.Choice(["connection", "layer"]), default="connection", show_default=True)
@click.option("--neuron", type=click.Choice(["mt", "if"]), default="mt", show_default=True)
@click.option("--thresholds", default=None, help="comma-separated ladder, largest first (default 2,1,0.5,0.25 for mt, 1 for if)")
@click.option("--v-init", default="half", show_default=True,
              help="membrane potential after reset: half (θ_min/2, rounding), zero (the paper) or a number")
@click.option("-o", "--output", default="runs/snn.pt", show_default=True, type=click.Path())
@_fail_cleanly
def convert(model, stats, norm, neuron, thresholds, v_init, output):
    """Convert the ANN into a Spiking-UNet with SpikingJelly's converter and the sjunet recipe."""
    from sjunet.io import file_fingerprint, load_ann
    from sjunet.recipe import convert as convert_fn

    ladder = tuple(float(t) for t in thresholds.split(",")) if thresholds else None
    ann, ckpt = load_ann(model)
    convert_fn(ann, stats, norm=norm, neuron=neuron, thresholds=ladder, output=output, v_init=v_init,
               sources={"model": str(model), "model_file_fingerprint": file_fingerprint(model),
                        "task": ckpt.get("task"), "dataset": ckpt.get("dataset", {}).get("name")})
    click.echo(f"converted ({norm}-wise, {neuron}) -> {output}")


@main.command()
@click.option("--model", "-m", type=click.Path(exists=True), default=None, help="ANN checkpoint")
@click.option("--snn", type=click.Path(exists=True), default=None, help="converted SNN")
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
@click.option("-o", "--output", type=click.Path(), default=None, help="write metrics JSON here")
@click.option("--device", default="cpu", show_default=True)
@opt_opt
@_fail_cleanly
def evaluate(model, snn, dataset, data, split, T, more_t, mode, chunk, limit, output, device, opt):
    """Metrics of an ANN and/or SNN (metric vs T, agreement with the ANN)."""
    from sjunet.evaluate import evaluate as evaluate_fn

    T = _steps(T, more_t)
    r = evaluate_fn(model, snn, dataset, data, split, T, mode, chunk, limit, output, _parse_options(opt),
                    device=device)
    click.echo(format_result(r))


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
@click.option("--T", "T", default=10, show_default=True, help="time steps to fine-tune (and validate) at")
@click.option("-o", "--output", default="runs/snn_ft.pt", show_default=True, type=click.Path())
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=4, show_default=True)
@click.option("--lr", default=1e-4, show_default=True, help="paper: 1e-6 (far too slow on CPU budgets)")
@click.option("--optimizer", type=click.Choice(["adam", "rmsprop", "sgd"]), default="adam", show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True)
@click.option("--method", type=click.Choice(["flow", "bptt"]), default="flow", show_default=True,
              help="spiking flow (Algorithm 1) or, for comparison, BPTT with a surrogate gradient")
@click.option("--chunk", default=1, show_default=True, help="steps per multi-step chunk of the no-grad simulation (1: single-step mode, memory independent of T)")
@click.option("--seed", default=0, show_default=True)
@click.option("--max-minutes", type=float, default=None)
@click.option("--device", default="cpu", show_default=True)
@click.option("--resume", is_flag=True, help="continue from <output>.last.pt")
@opt_opt
@_fail_cleanly
def finetune(snn, dataset, data, T, output, epochs, batch_size, lr, optimizer, schedule, method, chunk, seed,
             max_minutes, device, resume, opt):
    """Fine-tune a converted SNN with spiking flow; keeps the best checkpoint on validation."""
    from sjunet.flow import FinetuneOptions, finetune as finetune_fn

    opts = FinetuneOptions(snn=snn, dataset=dataset, data=data, output=output, T=T, epochs=epochs,
                           batch_size=batch_size, lr=lr, optimizer=optimizer, schedule=schedule, method=method,
                           chunk=chunk, seed=seed, max_minutes=max_minutes, device=device,
                           dataset_options=_parse_options(opt))
    s = finetune_fn(opts, resume=resume)
    before = s.get("before") or {}
    best = (s.get("best") or {}).get("val", {})
    click.echo(f"before: {json.dumps(before)}\nbest:   {json.dumps(best)}  -> {output}")


@main.command()
@click.option("--task", type=click.Choice(["seg", "denoise"]), default="seg", show_default=True)
@click.option("--out", default="runs/demo", show_default=True, type=click.Path())
@click.option("--epochs", default=None, type=int, help="default: 8 (seg) / 6 (denoise)")
@click.option("--T", "T", multiple=True, default=("5,10,20",), show_default=True)
@click.argument("more_t", nargs=-1, type=int, metavar="")
@_fail_cleanly
def demo(task, out, epochs, T, more_t):
    """The whole pipeline on built-in demo data (no download): train → calibrate → convert → evaluate."""
    from sjunet.demo import run_demo

    r = run_demo(task, out, epochs=epochs, T=_steps(T, more_t))
    click.echo(r["report"])


@main.group()
def plot() -> None:
    """Figures: activation-vs-rate (paper Fig. 3), metric-vs-T, calibration histograms."""


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
@opt_opt
@_fail_cleanly
def plot_activation_vs_rate(model, snn, dataset, data, T, n_images, layers, style, output, opt):
    """ANN activation vs SNN firing rate per neuron, with fitted slope and correlation."""
    from sjunet.plots import plot as plot_fn

    r = plot_fn("activation-vs-rate", model=model, snn=list(snn), dataset=dataset, data=data, T=T,
                n_images=n_images, layers=list(layers) or None, style=style, output=output,
                dataset_options=_parse_options(opt))
    for layer, per in r.items():
        click.echo(f"{layer}: " + "  ".join(f"{lab}: slope {v['slope']:.3f} r {v['r']:.3f}" for lab, v in per.items()))
    click.echo(f"-> {output}")


@plot.command("metric-vs-T")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--metric", default=None, help="metric key (default: every f1_* / psnr / miou)")
@click.option("-o", "--output", default="runs/metric_vs_T.png", show_default=True, type=click.Path())
@_fail_cleanly
def plot_metric_vs_t(results, metric, output):
    """Metric against T from `sjunet evaluate` JSON files."""
    from sjunet.plots import plot as plot_fn

    plot_fn("metric-vs-T", results=list(results), metric=metric, output=output)
    click.echo(f"-> {output}")


@plot.command("histograms")
@click.argument("stats", type=click.Path(exists=True))
@click.option("-o", "--output", default="runs/histograms.png", show_default=True, type=click.Path())
@_fail_cleanly
def plot_histograms(stats, output):
    """Per-layer activation histograms from the calibration HDF5, percentile marked."""
    from sjunet.plots import plot as plot_fn

    plot_fn("histograms", stats=stats, output=output)
    click.echo(f"-> {output}")


@main.command()
@click.option("--snn", required=True, type=click.Path(exists=True))
@click.option("--model", "-m", type=click.Path(exists=True), default=None, help="ANN checkpoint (for its MACs)")
@dataset_opt
@data_opt
@click.option("--split", default="test", show_default=True)
@click.option("--T", "T", default=20, show_default=True)
@click.option("--limit", type=int, default=None)
@click.option("-o", "--output", type=click.Path(), default=None, help="write the report as JSON")
@opt_opt
@_fail_cleanly
def energy(snn, model, dataset, data, split, T, limit, output, opt):
    """Spike counts, synaptic operations, MACs and energy (both conventions) per image."""
    from sjunet.energy import energy as energy_fn, energy_table

    r = energy_fn(snn, dataset, data, T=T, model=model, split=split, limit=limit, output=output,
                  dataset_options=_parse_options(opt))
    click.echo(energy_table(r))


@main.command()
@click.argument("name")
@click.option("--profile", type=click.Choice(["smoke", "cpu", "paper"]), default="cpu", show_default=True)
@click.option("--model", default=None, type=click.Path())
@click.option("--data", default=None, type=click.Path())
@click.option("--device", default="cpu", show_default=True)
@click.option("--dataset", default=None, help="dataset of the one-dataset tables (ladders, energy, ablation)")
def bench(name, profile, model, data, device, dataset):
    """Run a benchmark from benchmarks/ (same as `python -m sjunet.benchmarks NAME`)."""
    from sjunet.benchmarks.__main__ import BENCHMARKS, main as bench_main

    if name not in BENCHMARKS:
        raise click.BadParameter(f"unknown benchmark {name!r}; choose one of {', '.join(sorted(BENCHMARKS))}",
                                 param_hint="NAME")
    args = [name, "--profile", profile, "--device", device] + (["--model", model] if model else []) + \
        (["--data", data] if data else []) + (["--dataset", dataset] if dataset else [])
    bench_main(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
