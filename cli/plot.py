"""``sjunet plot <kind>``: the figures (:mod:`sjunet.plots`); one subcommand per kind."""
from __future__ import annotations

from pathlib import Path

import click

from sjunet.cli.options import (InputError, check_T, claim_output, data_opt, dataset_opt, fail_cleanly, force_option,
                                memory_budget_option, opt_opt, parse_dataset_options, writing)


@click.group(short_help="Figures: activation vs rate, metric vs T or energy, …")
def plot() -> None:
    """Figures: activation-vs-rate (paper Fig. 3), metric-vs-T, metric-vs-energy, calibration histograms."""


@plot.command("activation-vs-rate", short_help="The paper's Figure 3: ANN activation vs SNN rate.")
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
@force_option
@opt_opt
@memory_budget_option
@fail_cleanly
def plot_activation_vs_rate(model, snn, dataset, data, T, n_images, layers, style, output, force, opt):
    """ANN activation vs SNN firing rate per neuron, with fitted slope and correlation."""
    from sjunet.conversion.recipe import load_snn
    from sjunet.models.checkpoint import load_ann
    from sjunet.plots import plot as plot_fn

    check_T([T])
    dataset_options = parse_dataset_options(dataset, opt)
    claim_output(output, force)
    ann, _ = load_ann(model)
    nets = [load_snn(p)[0] for p in snn]
    with writing(output, force):
        r = plot_fn("activation-vs-rate", model=ann, snn=nets, dataset=dataset, data=data, T=T,
                    n_images=n_images, layers=list(layers) or None, style=style, output=output,
                    dataset_options=dataset_options)
    for layer, per in r.items():
        click.echo(f"{layer}: " + "  ".join(f"{lab}: slope {v['slope']:.3f} r {v['r']:.3f}" for lab, v in per.items()))
    click.echo(f"-> {output}")


@plot.command("metric-vs-T", short_help="Metric against T from `sjunet evaluate` results.")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--metric", default=None, help="metric key (default: every f1_* / psnr / miou)")
@click.option("-o", "--output", default="runs/metric_vs_T.png", show_default=True, type=click.Path())
@force_option
@fail_cleanly
def plot_metric_vs_t(results, metric, output, force):
    """Metric against T from `sjunet evaluate` JSON files."""
    from sjunet.plots import plot as plot_fn
    from sjunet.plots.curves import load_results

    claim_output(output, force)
    loaded = [load_results(p) for p in results]
    with writing(output, force):
        plot_fn("metric-vs-T", results=loaded, stems=[Path(p).stem for p in results], metric=metric, output=output)
    click.echo(f"-> {output}")


@plot.command("metric-vs-energy", short_help="Metric against energy from `sjunet energy` results.")
@click.argument("frontiers", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--metric", default=None, help="metric key (default: the hard class's F1, mIoU or PSNR)")
@click.option("--label", "labels", multiple=True, help="one label per frontier (default: from each SNN's record)")
@click.option("-o", "--output", default="runs/metric_vs_energy.png", show_default=True, type=click.Path())
@force_option
@fail_cleanly
def plot_metric_vs_energy(frontiers, metric, labels, output, force):
    """Metric against energy (paper, SOP, NeuroBench conventions) from `sjunet energy -o` frontiers."""
    from sjunet.plots import plot as plot_fn

    from sjunet.plots.curves import load_results

    claim_output(output, force)
    loaded = [load_results(p, "frontier") for p in frontiers]
    with writing(output, force):
        plot_fn("metric-vs-energy", frontiers=loaded, stems=[Path(p).stem for p in frontiers], metric=metric,
                labels=list(labels) or None, output=output)
    click.echo(f"-> {output}")


@plot.command("predictions", short_help="Figures 4/5: every system's output on test images.")
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
@force_option
@opt_opt
@memory_budget_option
@fail_cleanly
def plot_predictions(models, snns, dataset, data, split, images, T, device, output, force, opt):
    """The paper's Figures 4/5: input, ground truth and each system's output for chosen images."""
    from sjunet.conversion.recipe import load_snn
    from sjunet.data import get_dataset
    from sjunet.models.checkpoint import load_ann
    from sjunet.plots.predictions import predictions, predictions_figure
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
    check_T([t for _, _, t in plan if t is not None] or [T])
    dataset_options = parse_dataset_options(dataset, opt)
    claim_output(output, force)
    ds = get_dataset(dataset, data, split, **dataset_options)
    systems = {label: (load_ann(path)[0] if t is None else load_snn(path)[0], t) for label, path, t in plan}
    with writing(output, force):
        rows = predictions(systems, ds, list(images), device=device)
        predictions_figure(rows, task_for(ds), output, title=f"{dataset} ({split})")
    for r in rows:
        click.echo(f"image {r['index']}: " + "  ".join(f"{k} {v:.4f}" for k, v in r["scores"].items()))
    click.echo(f"-> {output}")


@plot.command("histograms", short_help="Calibration histograms with their λ.")
@click.argument("stats", type=click.Path(exists=True))
@click.option("-o", "--output", default="runs/histograms.png", show_default=True, type=click.Path())
@force_option
@fail_cleanly
def plot_histograms(stats, output, force):
    """Per-layer activation histograms from the calibration HDF5, percentile marked."""
    from sjunet.plots import plot as plot_fn

    from sjunet.calibration.reader import read_stats

    claim_output(output, force)
    calibration = read_stats(stats)
    with writing(output, force):
        plot_fn("histograms", stats=calibration, output=output)
    click.echo(f"-> {output}")
