"""``sjunet demo``: the whole pipeline on built-in demo data (:func:`sjunet.demo.run_demo`)."""
from __future__ import annotations

from pathlib import Path

import click

from sjunet.cli.options import InputError, check_T, fail_cleanly, parse_dataset_options, parse_steps, writing


@click.command()
@click.option("--task", type=click.Choice(["seg", "denoise", "seg3d"]), default="seg", show_default=True,
              help="seg, denoise: 2-D images; seg3d: volumes (a 3-D U-Net on demo-seg3d; figure: middle slices)")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path())
@click.option("--epochs", default=None, type=int, help="default: 30 (seg) / 15 (denoise) / 12 (seg3d)")
@click.option("--T", "T", multiple=True, default=("5,10,20",), show_default=True)
@click.argument("more_t", nargs=-1, type=int, metavar="")
@click.option("--opt", multiple=True, help="demo data option KEY=VALUE, e.g. --opt size=32 --opt num_items=8 (quick)")
@fail_cleanly
def demo(task, out, epochs, T, more_t, opt):
    """The whole pipeline on built-in demo data (no download): train → calibrate → convert → evaluate →
    a figure of the predictions; prints the results, where every output went and what the words mean."""
    from sjunet.demo import run_demo
    from sjunet.io import check_writable

    from sjunet.demo import DEMOS

    steps = parse_steps(T, more_t)
    check_T(steps)
    dataset_options = parse_dataset_options(DEMOS[task]["dataset"], opt)
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out {out} is a file, not a directory: give a directory for the demo's files "
                         "(e.g. --out runs/demo)")
    check_writable(Path(out) / task / "report.md")
    click.echo(f"demo {task}: training a small U-Net, calibrating, converting and simulating; everything goes to "
               f"{Path(out) / task}/")
    with writing(Path(out) / task / "report.md", force=True):  # the demo replaces its folder; one demo at a time
        r = run_demo(task, out, epochs=epochs, T=steps, dataset_options=dataset_options)
    click.echo(r["report"])
    click.echo("\noutputs:")
    width = max(len(k) for k in r["outputs"])
    for what, path in r["outputs"].items():
        click.echo(f"  {what:<{width}}  {path}")
    click.echo("\nlegend:")
    for line in r["legend"]:
        click.echo(f"  {line}")
