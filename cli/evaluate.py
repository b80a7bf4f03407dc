"""``sjunet evaluate``: metrics of an ANN and/or an SNN on a split
(:func:`sjunet.evaluation.loops.evaluate`)."""
from __future__ import annotations

import json

import click

from sjunet.cli.options import (InputError, ann_channels, ann_from_options, check_T, chunk_option, claim_output,
                                data_opt, dataset_opt, fail_cleanly, force_option, memory_budget_option, model_options,
                                opt_opt, parse_dataset_options, parse_steps, writing)


@click.command(short_help="Metrics of an ANN and/or SNN at every T.")
@model_options
@click.option("--snn", type=click.Path(), default=None, help="converted SNN (default: none, the ANN only)")
@dataset_opt
@data_opt
@click.option("--split", default="test", show_default=True)
@click.option("--T", "T", multiple=True, default=("10,20,50,100",), show_default=True,
              help="time steps: --T 10 20 50 100, --T 10,20 or --T 10 --T 20")
@click.argument("more_t", nargs=-1, type=int, metavar="")
@click.option("--mode", type=click.Choice(["multi", "step"]), default="step", show_default=True,
              help="step-by-step (memory independent of T; the faster one on CPU) or multi-step (layer by layer, "
                   "chunks of --chunk steps; try it on a GPU)")
@chunk_option
@click.option("--compile", "compiled", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True, help="run the neurons' step kernels compiled by torch.compile (the same numbers): auto where the "
                   "evaluation is long enough to pay for the compile and a compiler is present")
@click.option("--fuse/--no-fuse", default=True, show_default=True,
              help="single steps on a CPU: convolutions add into the membranes of the neurons they feed, channels-last "
                   "(the same numbers within float rounding; --no-fuse: the modules as they are)")
@click.option("--limit", type=int, default=None, help="evaluate only the first N images (default: all)")
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
@click.option("-o", "--output", type=click.Path(), default=None,
              help="write metrics JSON here (default: print them only)")
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU")
@force_option
@opt_opt
@memory_budget_option
@fail_cleanly
def evaluate(model, arch, arch_kwargs, weights, snn, dataset, data, split, T, more_t, mode, chunk, compiled, fuse, limit,
             protocol, patch, stride, tile, tile_overlap, max_pixels, pad, output, device, force, opt):
    """Metrics of an ANN and/or SNN (metric vs T, agreement with the ANN) on whole images (or tiles, or
    the paper's patches: --protocol); under torchrun the images are split across the processes and the
    metrics merged."""
    from sjunet import distributed
    from sjunet.data import get_dataset
    from sjunet.evaluation import check_compatible, check_options, check_protocol, make_protocol
    from sjunet.evaluation import evaluate as evaluate_fn
    from sjunet.io import file_fingerprint, provenance, write_json
    from sjunet.snn import size_rule

    distributed.init(device)
    device = distributed.device_for(device)  # "auto" resolved, a GPU per rank under torchrun
    T = parse_steps(T, more_t)
    check_options(T, chunk, limit)
    window = dict(tile=tile, overlap=tile_overlap, max_pixels=max_pixels, patch=patch, stride=stride, pad=pad)
    defaults = type("Defaults", (), {"eval_patch": (patch or 48, min(16, patch or 48)), "name": dataset})
    make_protocol(protocol, defaults, **window)  # the options alone, before any work
    if snn is None and model is None and arch is None:
        raise InputError("give --model/--arch (an ANN), --snn (a converted SNN) or both")
    if snn is not None:
        check_T(T)
    dataset_options = parse_dataset_options(dataset, opt)
    claim_output(output, force)
    from sjunet.conversion.recipe import load_snn

    net, rec = load_snn(snn) if snn is not None else (None, None)
    ann, info = ann_from_options(model, arch, arch_kwargs, weights, required=False)
    ds = get_dataset(dataset, data, split, **dataset_options)
    proto = make_protocol(protocol, ds, **window)  # --patch/--stride default to the dataset's eval_patch
    result: dict = {"split": split}
    if ann is not None:
        check_compatible(ds, *ann_channels(ann, info), info.task, what="the ANN")
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
                         "mode": mode, "chunk": chunk, "compile": compiled, "fuse": fuse, "device": device}
    with writing(output, force):
        result.update(evaluate_fn(ds, ann, net, T, mode, chunk, limit, device=device, protocol=proto,
                                  compiled={"on": True, "off": False}.get(compiled, "auto"), fuse=fuse))
        result["provenance"] = provenance()
        if distributed.world().main and output is not None:
            write_json(result, output)
    if distributed.world().main:
        click.echo(format_result(result))
        click.echo("protocol: " + json.dumps(result["protocol"]))


def format_result(r: dict) -> str:
    rows = []
    if "ann" in r:
        rows.append(("ANN", r["ann"]))
    for t, m in r.get("T", {}).items():
        rows.append((f"SNN T={t}", m))
    if not rows:
        return json.dumps(r, indent=2)
    from sjunet.metrics import metric_label

    keys = [k for k in rows[-1][1] if isinstance(rows[-1][1][k], float) and k != "num_images" and not k.startswith("iou_")]
    lines = ["| model | " + " | ".join(metric_label(k) for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(("—" if m[k] != m[k] else f"{m[k]:.4f}") if k in m else ""
                                                 for k in keys) + " |")
    if "timing" in r:
        lines.append("timing: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r["timing"].items()}))
    return "\n".join(lines)
