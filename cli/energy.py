"""``sjunet energy``: the accuracy–energy frontier of an SNN
(:func:`sjunet.evaluation.energy.energy_frontier`)."""
from __future__ import annotations

import click

from sjunet.cli.options import (InputError, ann_from_options, check_T, chunk_option, claim_output, data_opt,
                                dataset_opt, fail_cleanly, force_option, memory_budget_option, model_options, opt_opt,
                                parse_dataset_options, parse_steps, warn_broken, writing)


@click.command(short_help="Metric and energy at every T (three conventions).")
@click.option("--snn", required=True, type=click.Path())
@model_options
@dataset_opt
@data_opt
@click.option("--split", default="test", show_default=True)
@click.option("--T", "T", multiple=True, default=("1,2,4,8,16",), show_default=True,
              help="time steps, all from one simulation: --T 1 2 4 8 16 or --T 20")
@click.argument("more_t", nargs=-1, type=int, metavar="")
@click.option("--limit", type=int, default=None, help="the first N images of the split (default: all)")
@click.option("--mode", type=click.Choice(["multi", "step"]), default="step", show_default=True)
@chunk_option
@click.option("-o", "--output", type=click.Path(), default=None,
              help="write the frontier as JSON (default: print the table only)")
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU")
@force_option
@opt_opt
@memory_budget_option
@fail_cleanly
def energy(snn, model, arch, arch_kwargs, weights, dataset, data, split, T, more_t, limit, mode, chunk, output, device,
           force, opt):
    """Metric and energy at every T (spikes, events, synaptic operations, MACs; paper, SOP and NeuroBench
    conventions beside the ANN): the accuracy–energy frontier."""
    from sjunet.conversion.recipe import load_snn
    from sjunet.data import get_dataset
    from sjunet.evaluation import check_compatible, check_options
    from sjunet.evaluation.energy import energy_frontier
    from sjunet.evaluation.report import frontier_table
    from sjunet.io import file_fingerprint, provenance, write_json

    T = parse_steps(T, more_t)
    check_options(T, chunk, limit)
    check_T(T)
    dataset_options = parse_dataset_options(dataset, opt)
    claim_output(output, force)
    net, rec = load_snn(snn)
    ann, info = ann_from_options(model, arch, arch_kwargs, weights, required=False)
    ds = get_dataset(dataset, data, split, **dataset_options)
    conv = rec.get("conversion") or {}
    check_compatible(ds, conv.get("input_channels"), conv.get("output_channels"), rec.get("task"), what="the SNN")
    if ann is not None and conv.get("ann_fingerprint") not in (None, info.fingerprint):
        raise InputError(f"the ANN ({info.fingerprint}) is not the one {snn} was converted from "
                         f"({conv.get('ann_fingerprint')}); give that one, or none (MACs from the SNN's graph)")
    from sjunet.distributed import resolve_device
    from sjunet.evaluation.degenerate import KEY, check_model, recorded

    broken = recorded(conv, info.checkpoint if info else None) or (
        check_model(ann, ds, device=resolve_device(device)) if ann is not None else None)
    warn_broken({KEY: broken})
    with writing(output, force):
        r = energy_frontier(net, ds, T, ann=ann, limit=limit, mode=mode, chunk=chunk, device=device)
        r["snn"] = {"path": str(snn), "file": file_fingerprint(snn), "conversion": conv.get("options"),
                    "finetune": bool(rec.get("finetune"))}
        r["model"] = info.to_record() if info else None
        r["dataset"] = {"name": dataset, "split": split, **ds.describe()}
        if output is not None:
            write_json({**r, "provenance": provenance(options={"T": T, "limit": limit, "mode": mode, "chunk": chunk})},
                       output)
    click.echo(frontier_table(r, label="fine-tuned SNN" if rec.get("finetune") else "SNN"))
