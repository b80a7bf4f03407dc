"""``sjunet demo``: the whole pipeline on built-in demo data (:func:`sjunet.demo.run_demo`)."""
from __future__ import annotations

from pathlib import Path

import click

from sjunet.cli.options import InputError, check_T, fail_cleanly, parse_dataset_options, parse_steps, writing


@click.command(short_help="The whole pipeline on built-in data, no download.")
@click.option("--task", type=click.Choice(["seg", "denoise", "seg3d"]), default="seg", show_default=True,
              help="seg, denoise: 2-D images; seg3d: volumes (a 3-D U-Net on demo-seg3d; figure: middle slices)")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path())
@click.option("--epochs", default=None, type=int,
              help="default: 30 (seg) / 15 (denoise) / 12 (seg3d); with --quick: 12 / 6 / 8")
@click.option("--T", "T", multiple=True, default=None,
              help="time steps to simulate (default: 1 2 4 8; with --quick: 1 2 4)")
@click.argument("more_t", nargs=-1, type=int, metavar="")
@click.option("--quick", is_flag=True,
              help="a small run of the same steps, for every task: fewer, smaller items and epochs (the table says "
                   "it is a quick run)")
@click.option("--opt", multiple=True,
              help="demo data option KEY=VALUE, repeatable; every demo task takes size and num_items "
                   "(e.g. --opt size=32 --opt num_items=8)")
@fail_cleanly
def demo(task, out, epochs, T, more_t, quick, opt):
    """The whole pipeline on built-in demo data (no download): train → calibrate → convert → evaluate →
    a figure of the predictions; prints the results, where every output went and what the words mean."""
    from sjunet.demo import run_demo
    from sjunet.io import check_writable

    from sjunet.demo import DEMOS

    steps = parse_steps(T, more_t) if T or more_t else None
    if steps:
        check_T(steps)
    dataset_options = parse_dataset_options(DEMOS[task]["dataset"], opt)
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out {out} is a file, not a directory: give a directory for the demo's files "
                         "(e.g. --out runs/demo)")
    check_writable(Path(out) / task / "report.md")
    check_writable(Path(out) / f".{task}.partial" / "report.md")  # the run's fresh folder
    click.echo(f"demo {task}: training a small U-Net, calibrating, converting and simulating; everything goes to "
               f"{Path(out) / task}/")
    with writing(Path(out) / task / "report.md", force=True):  # the demo replaces its folder; one demo at a time
        r = run_demo(task, out, epochs=epochs, T=steps, dataset_options=dataset_options, quick=quick)
    click.echo(r["report"])
    click.echo("\noutputs:")
    width = max(len(k) for k in r["outputs"])
    for what, path in r["outputs"].items():
        click.echo(f"  {what:<{width}}  {path}")
    click.echo("\nlegend:")
    for line in r["legend"]:
        click.echo(f"  {line}")
