"""``sjunet convert``: an ANN and its statistics into an SNN file
(:func:`sjunet.conversion.recipe.convert`)."""
from __future__ import annotations

import click

from sjunet.cli.options import InputError, ann_from_options, claim_output, fail_cleanly, force_option, model_options


@click.command()
@model_options
@click.option("--stats", "-s", required=True, type=click.Path(), help="HDF5 from `sjunet calibrate`")
@click.option("--norm", type=click.Choice(["connection", "layer"]), default="connection", show_default=True)
@click.option("--neuron", type=click.Choice(["mt", "if", "ml", "rs"]), default="mt", show_default=True,
              help="mt: multi-threshold; if: integrate-and-fire; ml, rs: the paper's peers (sjunet.neurons.peers)")
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
                   "gate allows (segmentation: pixel agreement < 0.98 or relative logit error > 0.2; otherwise "
                   "relative error > 0.1; a degenerate ANN); `sjunet finetune` recovers most of it")
@click.option("-o", "--output", default="runs/snn.safetensors", show_default=True, type=click.Path())
@force_option
@fail_cleanly
def convert(model, arch, arch_kwargs, weights, stats, norm, neuron, thresholds, v_init, task, accept_gap, output, force):
    """Convert the ANN into a Spiking-UNet with SpikingJelly's converter and the sjunet recipe."""
    from sjunet.conversion.recipe import ConversionOptions, convert as convert_fn

    try:
        from sjunet.neurons import LADDERS

        ladder = LADDERS[thresholds] if thresholds in LADDERS else (
            tuple(float(t) for t in thresholds.split(",")) if thresholds else None)
    except ValueError:
        raise InputError(f"--thresholds takes comma-separated numbers or a name ({', '.join(LADDERS)}), "
                         f"got {thresholds!r}") from None
    ConversionOptions(norm, neuron, ladder, v_init).check()
    claim_output(output, force)
    ann, info = ann_from_options(model, arch, arch_kwargs, weights)
    snn = convert_fn(ann, stats, norm=norm, neuron=neuron, thresholds=ladder, v_init=v_init,
                     model_info=info.to_record(), accept_gap=accept_gap)
    snn.record.task = info.task or ({"kind": task} if task else None)
    from sjunet.conversion.recipe import save_snn

    save_snn(snn, output, {"model": info.to_record(), "stats": str(stats)})
    conv = snn.record.conversion
    click.echo(f"converted ({norm}-wise, {neuron}): {len(conv.neurons)} neuron layers, {len(conv.gains)} gains, "
               f"{len(conv.dead_layers)} dead-layer fallbacks -> {output}")
    if conv.approximations:
        from sjunet.calibration.gap import gap_line

        gap = conv.approximation_gap
        click.echo(gap_line({**gap, "nodes": conv.approximations})
                   + (f" — fails the gate ({'; '.join(gap.get('reasons') or [])}), accepted (--accept-gap)"
                      if gap.get("accepted") else ""))
