"""``sjunet convert``: an ANN and its statistics into an SNN file
(:func:`sjunet.conversion.recipe.convert`)."""
from __future__ import annotations

import click

from sjunet.cli.options import (InputError, ann_from_options, claim_output, fail_cleanly, force_option, model_options,
                                warn_broken, writing)
from sjunet.conversion.ladders import TOLERANCE


@click.command(short_help="Convert the ANN into a Spiking-UNet (an SNN file).")
@model_options
@click.option("--stats", "-s", required=True, type=click.Path(), help="HDF5 from `sjunet calibrate`")
@click.option("--norm", type=click.Choice(["connection", "layer"]), default="connection", show_default=True)
@click.option("--neuron", type=click.Choice(["mt", "if", "ml", "rs"]), default="mt", show_default=True,
              help="mt: multi-threshold; if: integrate-and-fire; ml, rs: the paper's peers (sjunet.neurons.peers)")
@click.option("--thresholds", default=None,
              help="the threshold ladder. Default for mt: auto — one ladder per layer from its calibration histogram "
                   "(halving powers of two whose top covers the layer's maximum, the fewest levels within "
                   "--ladder-tolerance); for if and rs: 1; for ml: 3,2,1. Or a name: paper (2,1,0.5,0.25, the paper's "
                   "Table 4), theorem (0.5,0.25,0.125,0.0625, Theorem 3.1's optimum for [0, 1]: capped at 0.9375), "
                   "uncapped (1,0.5,0.25,0.125,0.0625); or comma-separated thresholds, largest first")
@click.option("--ladder-tolerance", type=float, default=TOLERANCE, show_default=True,
              help="with --thresholds auto: the largest expected one-step error of a layer, as a fraction of its RMS "
                   "value (smaller: more levels, more spikes, closer to the ANN at T = 1–2)")
@click.option("--v-init", default="half", show_default=True,
              help="membrane potential after reset: half (θ_min/2, rounding), zero (the paper) or a number")
@click.option("--task", type=click.Choice(["segmentation", "denoising"]), default=None,
              help="what the --arch model does, recorded in the SNN (default: the checkpoint's; none for --arch)")
@click.option("--accept-gap", is_flag=True,
              help="convert even when the instance/group/layer norms' fixed deviations cost the ANN more than the "
                   "gate allows (segmentation: pixel agreement < 0.98 or relative logit error > 0.2; otherwise "
                   "relative error > 0.1; a degenerate ANN); `sjunet finetune` recovers most of it (--norms exact: "
                   "no gap to accept)")
@click.option("--norms", type=click.Choice(["fixed", "exact"]), default="fixed", show_default=True,
              help="instance/group/layer norms: fixed (a deviation fixed from calibration: local, an approximation "
                   "gap) or exact (Σ-Δ group-norm neurons: no gap, non-local)")
@click.option("-o", "--output", default="runs/snn.safetensors", show_default=True, type=click.Path())
@force_option
@fail_cleanly
def convert(model, arch, arch_kwargs, weights, stats, norm, neuron, thresholds, ladder_tolerance, v_init, task, accept_gap,
            norms, output, force):
    """Convert the ANN into a Spiking-UNet with SpikingJelly's converter and the sjunet recipe."""
    from sjunet.conversion.recipe import ConversionOptions, convert as convert_fn

    from sjunet.neurons import AUTO, LADDERS

    try:
        ladder = LADDERS[thresholds] if thresholds in LADDERS else thresholds if thresholds == AUTO else (
            tuple(float(t) for t in thresholds.split(",")) if thresholds else None)
    except ValueError:
        raise InputError(f"--thresholds takes comma-separated numbers or a name ({AUTO}, {', '.join(LADDERS)}), "
                         f"got {thresholds!r}") from None
    ConversionOptions(norm, neuron, ladder, v_init, ladder_tolerance, norms).check()
    claim_output(output, force)
    from sjunet.calibration import read_stats
    from sjunet.conversion.recipe import save_snn

    ann, info = ann_from_options(model, arch, arch_kwargs, weights)
    calibration = read_stats(stats)
    with writing(output, force):
        snn = convert_fn(ann, calibration, norm=norm, neuron=neuron, thresholds=ladder, v_init=v_init,
                         model_info=info.to_record(), accept_gap=accept_gap, ladder_tolerance=ladder_tolerance,
                         norms=norms)
        from sjunet.evaluation.degenerate import KEY, recorded

        broken = recorded(snn.record.conversion.extra, info.checkpoint)  # from the statistics, or the checkpoint
        if broken:
            snn.record.conversion.extra[KEY] = broken
        snn.record.task = info.task or ({"kind": task} if task else None)
        save_snn(snn, output, {"model": info.to_record(), "stats": str(stats)})
    conv = snn.record.conversion
    sd = len(conv.sigma_delta or {})
    click.echo(f"converted ({norm}-wise, {neuron}): {len(conv.neurons)} neuron layers"
               + (f" + {sd} Σ-Δ neuron layers (smooth activations, products, norms)" if sd else "")
               + f", {len(conv.gains)} gains, "
               f"{len(conv.dead_layers)} dead-layer fallbacks -> {output}")
    if conv.ladders:
        levels = [len(c["thresholds"]) for c in conv.ladders.values()]
        steps = [c["thresholds"][-1] for c in conv.ladders.values()]
        worst = max(c["relative"] for c in conv.ladders.values())
        click.echo(f"threshold ladders: one per layer (auto), {min(levels)}–{max(levels)} levels, smallest "
                   f"threshold {min(steps):g}–{max(steps):g} of the layer's scale; expected one-step "
                   f"error ≤ {worst:.1%} of each layer's RMS value (tolerance {ladder_tolerance:g}); per layer in the "
                   "file's conversion.ladders")
    else:
        click.echo(f"threshold ladder: {', '.join(f'{t:g}' for t in conv.thresholds or [])} in every layer")
    warn_broken({KEY: broken})
    if conv.approximations:
        from sjunet.calibration.gap import gap_line

        gap = conv.approximation_gap
        click.echo(gap_line({**gap, "nodes": conv.approximations})
                   + (f" — fails the gate ({'; '.join(gap.get('reasons') or [])}), accepted (--accept-gap)"
                      if gap.get("accepted") else ""))
