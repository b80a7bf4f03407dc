"""``sjunet calibrate``: whole-set activation statistics of an ANN to HDF5
(:func:`sjunet.calibration.observe.calibrate`)."""
from __future__ import annotations

import click

from sjunet.cli.options import (InputError, ann_channels, ann_from_options, check_images_fit, claim_output, data_opt,
                                dataset_opt, fail_cleanly, force_option, model_options, opt_opt, parse_dataset_options,
                                warn_broken, writing)


@click.command(short_help="Record activation statistics (λ, histograms) to HDF5.")
@model_options
@dataset_opt
@data_opt
@click.option("--split", default="train", show_default=True, help="calibration split (the paper: training set)")
@click.option("--percentile", "-p", default=99.9, show_default=True)
@click.option("--positive-only", is_flag=True, help="percentile over positive values only (default: all values)")
@click.option("--batch-size", default=4, show_default=True)
@click.option("--max-batches", type=int, default=None, help="default: the whole split")
@click.option("-o", "--output", default="runs/stats.h5", show_default=True, type=click.Path())
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU")
@force_option
@opt_opt
@fail_cleanly
def calibrate(model, arch, arch_kwargs, weights, dataset, data, split, percentile, positive_only, batch_size,
              max_batches, output, device, force, opt):
    """Record whole-set activation statistics (percentile, max, mean, histograms) to HDF5."""
    import warnings

    from torch.utils.data import DataLoader

    from sjunet.calibration import calibrate as calibrate_fn
    from sjunet.data import get_dataset
    from sjunet.distributed import resolve_device
    from sjunet.evaluation import check_compatible

    if batch_size < 1 or (max_batches is not None and max_batches < 1):
        raise InputError("--batch-size and --max-batches must be positive integers")
    dataset_options = parse_dataset_options(dataset, opt)
    claim_output(output, force)
    ann, info = ann_from_options(model, arch, arch_kwargs, weights)
    ds = get_dataset(dataset, data, split, **dataset_options)
    check_compatible(ds, *ann_channels(ann, info), info.task)
    check_images_fit(ds, ann, padded=False, what="the ANN")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    from sjunet.evaluation.degenerate import KEY, check_model, recorded

    # a broken ANN (one class everywhere, a constant image): as train recorded it, or seen on this data
    broken = recorded(info.checkpoint) or check_model(ann, ds, device=resolve_device(device))
    with writing(output, force), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead layers are listed below
        stats = calibrate_fn(ann, loader, output=output, p=percentile, positive_only=positive_only,
                             max_batches=max_batches, device=device,
                             data_description={"dataset": dataset, "split": split, **ds.describe(),
                                               "model": info.to_record(), **({KEY: broken} if broken else {})})
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
    warn_broken({KEY: broken})
    click.echo(f"-> {output}")
