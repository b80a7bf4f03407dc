"""``sjunet finetune``: spiking-flow fine-tuning of an SNN file
(:func:`sjunet.training.finetuning.finetune`)."""
from __future__ import annotations

import json

import click

from sjunet.cli.options import (InputError, budget_options, check_T, class_weights_opt, data_opt, dataset_opt,
                                fail_cleanly, is_main, memory_budget_option, opt_opt, parse_dataset_options, run_loop,
                                stop_note, warn_broken)


@click.command(short_help="Fine-tune a converted SNN with spiking flow.")
@click.option("--snn", required=True, type=click.Path(exists=True), help="converted SNN from `sjunet convert`")
@dataset_opt
@data_opt
@click.option("--T", "T", default=10, show_default=True, help="time steps to fine-tune (and validate) at; 1 works")
@click.option("-o", "--output", default="runs/snn_ft.safetensors", show_default=True, type=click.Path())
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=4, show_default=True)
@click.option("--lr", default="auto", show_default=True,
              help="learning rate, or auto: a short trial of 1e-5, 3e-5, 1e-4, 3e-4 (at most a quarter of "
                   "--max-minutes by the clock, validations included; a trial that beats the input is continued "
                   "from) — the paper: 1e-6")
@click.option("--optimizer", type=click.Choice(["adam", "rmsprop", "sgd"]), default="adam", show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True)
@click.option("--loss", type=click.Choice(["label", "distill", "both"]), default="label", show_default=True,
              help="label loss (Eq. 11/12), distillation from the ANN the SNN came from, or both")
@click.option("--layer-weight", type=float, default=0.0, show_default=True,
              help="weight of per-layer rate distillation (0: off)")
@click.option("--warmup", type=int, default=0, show_default=True, help="iterations of linear learning-rate warm-up")
@click.option("--grad-clip", type=float, default=None,
              help="clip each step's gradient norm to this (default: none, no clipping)")
@click.option("--energy-penalty", type=float, default=0.0, show_default=True,
              help="spike budget: add β × (SOP-convention energy / ANN energy) to the loss (0: off)")
@click.option("--method", type=click.Choice(["flow", "bptt"]), default="flow", show_default=True,
              help="spiking flow (Algorithm 1) or, for comparison, BPTT with a surrogate gradient")
@click.option("--chunk", default=1, show_default=True, help="steps per multi-step chunk of the no-grad simulation (1: single-step mode, memory independent of T; more: at most that many, by memory)")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU")
@class_weights_opt
@budget_options
@opt_opt
@memory_budget_option
@fail_cleanly
def finetune(snn, dataset, data, T, output, epochs, batch_size, lr, optimizer, schedule, loss, layer_weight, warmup,
             grad_clip, energy_penalty, method, chunk, seed, device, class_weights, max_minutes, max_iters, val_every,
             resume, force, opt):
    """Fine-tune a converted SNN with spiking flow; the output is the best of the input and every validation."""
    from sjunet.io import check_writable
    from sjunet.tasks import parse_class_weights
    from sjunet.training.finetuning import FinetuneOptions
    from sjunet.training.finetuning import finetune as finetune_fn

    check_T([T])
    dataset_options = parse_dataset_options(dataset, opt)
    parse_class_weights(class_weights)
    check_writable(output)
    if lr is not None and lr != "auto":
        try:
            lr = float(lr)
        except ValueError:
            raise InputError(f"--lr takes a number or auto, got {lr!r}") from None
    given = {k: v for k, v in dict(lr=lr, loss=loss, layer_weight=layer_weight, warmup=warmup, grad_clip=grad_clip,
                                   energy_penalty=energy_penalty).items() if v is not None}
    from sjunet.conversion.recipe import load_snn

    opts = FinetuneOptions(dataset=dataset, data=data, output=output, T=T, epochs=epochs,
                           batch_size=batch_size, optimizer=optimizer, schedule=schedule, method=method,
                           chunk=chunk, seed=seed, max_minutes=max_minutes, max_iters=max_iters, val_every=val_every,
                           device=device, dataset_options=dataset_options, class_weights=class_weights, **given)
    net, _ = load_snn(snn)
    warn_broken(net.record.conversion.to_dict(), what=f"the ANN {snn} was converted from")
    _, s = run_loop(finetune_fn, net, opts, resume=resume, force=force)
    if not is_main():
        return
    before, best = s["baseline"], s["best"]
    metric = s.get("metric", "score")
    click.echo(f"{stop_note(s)}before: {json.dumps(before['val'])}\nbest:   {json.dumps(best['val'])}")
    if s["improved"]:
        click.echo(f"fine-tuning improved on the converted SNN: validation {metric} {before['score']:.4f} -> "
                   f"{best['score']:.4f} (+{s['improvement']:.4f}) at {best['at']}  -> {output}")
    else:
        tried = [h["score"] for h in s["history"] if h["at"] != "input"]
        seen = f"best fine-tuned validation {metric} {max(tried):.4f}" if tried else "no fine-tuned model was validated"
        click.echo(f"fine-tuning did not improve on the converted SNN ({seen} vs {before['score']:.4f} before); "
                   f"the output is the input SNN  -> {output}")
