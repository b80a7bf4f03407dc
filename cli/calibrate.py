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
@click.option("--gap-split", default="val", show_default=True,
              help="instance/group/layer norms only: the split their approximation gap is measured on, never used to "
                   "fit their deviations (the calibration split then leaves its images out); 'none': cross-validate "
                   "on the calibration split")
@click.option("-o", "--output", default="runs/stats.h5", show_default=True, type=click.Path())
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU")
@force_option
@opt_opt
@fail_cleanly
def calibrate(model, arch, arch_kwargs, weights, dataset, data, split, percentile, positive_only, batch_size,
              max_batches, gap_split, output, device, force, opt):
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
    ds, gap_ds, gap_note = _gap_split(ann, ds, dataset, data, split, gap_split, dataset_options)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    gap_loader = DataLoader(gap_ds, batch_size=batch_size, shuffle=False) if gap_ds is not None else None
    from sjunet.evaluation.degenerate import KEY, check_model, recorded

    # a broken ANN (one class everywhere, a constant image): as train recorded it, or seen on this data
    broken = recorded(info.checkpoint) or check_model(ann, ds, device=resolve_device(device))
    with writing(output, force), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead layers are listed below
        stats = calibrate_fn(ann, loader, output=output, p=percentile, positive_only=positive_only,
                             max_batches=max_batches, device=device, gap_data=gap_loader,
                             gap_description=f"{gap_split}-split" if gap_ds is not None else None,
                             data_description={"dataset": dataset, "split": split, **ds.describe(),
                                               "model": info.to_record(), **({KEY: broken} if broken else {}),
                                               **({"gap_split": gap_split, "gap_data": gap_ds.describe()}
                                                  if gap_ds is not None else {})})
    relus = {k: v for k, v in stats.nodes.items() if v.role in ("relu", "cat", "add")}
    click.echo(f"{len(stats.nodes)} tensors recorded ({len(relus)} ReLU/cat/add scales); "
               f"λ range {min(v.percentile for v in relus.values()):.4g}..{max(v.percentile for v in relus.values()):.4g}")
    for name, v in stats.dead.items():
        click.echo(f"dead layer {name} ({v.role}): p{v.p:g} = {v.raw_percentile:.3g}, max = {v.max:.3g} — it never "
                   f"(or almost never) fires on this data; λ = {v.percentile:.3g} ({v.fallback} fallback)")
    from sjunet.calibration.gap import gap_line, gap_refusal

    if gap_line(stats.approximation):
        if gap_note:
            click.echo(gap_note)
        click.echo(gap_line(stats.approximation) + (" — fails the conversion gate: `sjunet convert` will refuse it "
                                                     "unless --accept-gap (or use --norms exact: no gap)"
                                                     if gap_refusal(stats.approximation) else ""))
    warn_broken({KEY: broken})
    click.echo(f"-> {output}")


def _gap_split(ann, ds, dataset: str, data, split: str, gap_split: str, options: dict):
    """``(calibration dataset, gap dataset or None, note)``: for a model with instance/group/layer norms
    the approximation gap is measured on ``gap_split`` (whole images, as evaluation reads them), which
    the calibration split then leaves out (``holdout_val``) so no image both fits the deviations and
    judges them; other models, ``--gap-split none`` or a gap split equal to the calibration split:
    no gap dataset (cross-validation on the calibration split)."""
    from sjunet.calibration.approximation import norm_nodes
    from sjunet.data import get_dataset
    from sjunet.graph import canonical_graph
    from sjunet.training.run import TRAIN_ONLY_OPTIONS, _keyword_options

    if gap_split == "none":
        return ds, None, None
    x = ds[0][0] if isinstance(ds[0], (tuple, list)) else ds[0]
    if not norm_nodes(canonical_graph(ann, (1, *x.shape), check=False).gm):
        return ds, None, None
    if gap_split == split:
        return ds, None, (f"--gap-split {gap_split} is the calibration split: the approximation gap is "
                          "cross-validated on it instead")
    try:
        gap_ds = get_dataset(dataset, data, gap_split, **{k: v for k, v in options.items() if k not in TRAIN_ONLY_OPTIONS})
    except Exception as e:  # noqa: BLE001 - a dataset without that split: cross-validation, said so
        return ds, None, f"no {gap_split!r} split to measure the approximation gap on ({e}): cross-validated instead"
    note = f"approximation gap measured on the {len(gap_ds)} {gap_split} item(s), never used to fit the deviations"
    if split == "train" and gap_split == "val" and "holdout_val" in _keyword_options(dataset) \
            and "holdout_val" not in options:
        ds = get_dataset(dataset, data, split, **{**options, "holdout_val": True})
        note += " (the calibration split leaves them out: holdout_val)"
    return ds, gap_ds, note
