"""``sjunet train``: the ANN U-Net (:func:`sjunet.training.ann.train`) or, with ``--spiking``, a
Spiking-UNet trained directly (:func:`sjunet.training.direct.train_spiking`)."""
from __future__ import annotations

import json

import click

from sjunet.cli.options import (InputError, budget_options, check_T, class_weights_opt, data_opt, dataset_opt,
                                fail_cleanly, headline, is_main, opt_opt, parse_dataset_options, run_loop, stop_note,
                                warn_broken)


def _check_training_data(dataset: str, data, seed: int, options: dict, multiple: int, what: str) -> None:
    """The training items (as they go in, unpadded) fit a network of size ``multiple`` (before the
    run starts; validation images are padded, so any size passes)."""
    from sjunet.data import check_fits, get_dataset

    check_fits(get_dataset(dataset, data, "train", seed=seed, **options), multiple, padded=False, what=what)


@click.command(short_help="Train the ANN U-Net (or --spiking: an SNN).")
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
@click.option("--pool", type=click.Choice(["avg", "max"]), default="avg", show_default=True,
              help="down-sampling of sjunet's U-Net (the paper: avg)")
@click.option("--arch", default=None,
              help="train another U-Net instead: package.module:factory (default: none, sjunet's U-Net)")
@click.option("--arch-kwargs", default=None,
              help="JSON keyword arguments of the --arch factory (default: none, the factory's defaults)")
@click.option("--schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True)
@click.option("--warmup", default=0, show_default=True, help="iterations of linear learning-rate warm-up")
@click.option("--grad-clip", type=float, default=None,
              help="clip each step's gradient norm to this (default: none, no clipping; 1.0 with --spiking)")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU")
@click.option("--spiking", is_flag=True, help="train a Spiking-UNet directly (surrogate gradient through time; "
                                               "-o is then an SNN file) instead of the ANN")
@click.option("--neuron", type=click.Choice(["mt", "ml", "rs", "lif"]), default="mt", show_default=True,
              help="with --spiking: the training-time neuron (mt: multi-threshold; ml: multi-level; rs: real spike; "
                   "lif: Spiking-FCN's)")
@click.option("--T", "T", type=int, default=4, show_default=True, help="with --spiking: time steps")
@class_weights_opt
@budget_options
@opt_opt
@fail_cleanly
def train(dataset, data, output, epochs, batch_size, lr, optimizer, width, depth, batch_norm, up_relu, pool, arch,
          arch_kwargs, schedule, warmup, grad_clip, seed, device, spiking, neuron, T, class_weights, max_minutes,
          max_iters, val_every, resume, force, opt):
    """Train the ANN U-Net (or, with --spiking, a Spiking-UNet directly); keeps the best checkpoint on the
    validation split."""
    from sjunet.io import check_writable
    from sjunet.models.external import parse_arch_kwargs
    from sjunet.training import TrainOptions
    from sjunet.training import train as train_fn

    from sjunet.tasks import parse_class_weights

    dataset_options = parse_dataset_options(dataset, opt)
    parse_class_weights(class_weights)
    if spiking:
        check_T([T])
    check_writable(output)
    if arch is None and depth is not None and 0 < depth <= 16:
        _check_training_data(dataset, data, seed, dataset_options, 2 ** depth,
                             f"a depth-{depth} {'Spiking-' if spiking else ''}U-Net")
    if spiking:
        from sjunet.training.direct import DirectOptions, train_spiking

        if batch_norm or up_relu:
            raise InputError("--batch-norm/--up-relu are ANN options; a directly trained Spiking-UNet has neither")
        dopts = DirectOptions(dataset=dataset, data=data, output=output, neuron=neuron, T=T, epochs=epochs,
                              batch_size=batch_size, lr=lr if lr is not None else 1e-3,
                              optimizer=optimizer or "adam", width=width, depth=depth, pool=pool, arch=arch,
                              arch_kwargs=parse_arch_kwargs(arch_kwargs), seed=seed, device=device,
                              max_minutes=max_minutes, max_iters=max_iters, val_every=val_every,
                              grad_clip=grad_clip if grad_clip is not None else 1.0,
                              dataset_options=dataset_options, class_weights=class_weights)
        _, s = run_loop(train_spiking, dopts, resume=resume, force=force)
        best = s["best"]
        if is_main():
            click.echo(f"{stop_note(s)}best: {best['at']} ({headline(s, best)}): {json.dumps(best['val'])}"
                       f"  -> {output}")
        return
    opts = TrainOptions(dataset=dataset, data=data, output=output, epochs=epochs, batch_size=batch_size, lr=lr,
                        optimizer=optimizer, width=width, depth=depth, batch_norm=batch_norm, up_relu=up_relu,
                        pool=pool, arch=arch, arch_kwargs=parse_arch_kwargs(arch_kwargs), seed=seed, device=device,
                        max_minutes=max_minutes, max_iters=max_iters, val_every=val_every,
                        dataset_options=dataset_options, schedule=schedule, warmup=warmup, grad_clip=grad_clip,
                        class_weights=class_weights)
    _, s = run_loop(train_fn, opts, resume=resume, force=force)
    best = s["best"]
    if is_main():
        click.echo(f"{stop_note(s)}best: {best['at']} ({headline(s, best)}): {json.dumps(best['val'])}"
                   f"  -> {output}")
        warn_broken({"model_degenerate": s.get("degenerate")}, what=f"the ANN ({output})")
