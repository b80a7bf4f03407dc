"""``sjunet bench NAME``: a benchmark of ``benchmarks/`` (same as ``python -m sjunet.benchmarks NAME``)."""
from __future__ import annotations

import click


@click.command(short_help="Run a benchmark (python -m sjunet.benchmarks).")
@click.argument("name")
@click.option("--profile", type=click.Choice(["smoke", "cpu", "gpu", "paper"]), default="cpu", show_default=True)
@click.option("--model", default=None, type=click.Path(),
              help="ANN checkpoint for the one-model benchmarks (default: the benchmark trains or caches its own)")
@click.option("--data", default=None, type=click.Path(),
              help="the data directory (default: generated data for the smoke profile)")
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU")
@click.option("--dataset", default=None,
              help="dataset(s) of the per-dataset tables (default: the profile's)")
@click.option("--only", default=None,
              help="comma-separated subset of the rows (zoo: architectures; ladderstudy: ladders; default: all)")
def bench(name, profile, model, data, device, dataset, only):
    """Run a benchmark from benchmarks/ (same as `python -m sjunet.benchmarks NAME`)."""
    from sjunet.benchmarks.__main__ import BENCHMARKS, main as bench_main

    if name not in BENCHMARKS:
        raise click.BadParameter(f"unknown benchmark {name!r}; choose one of {', '.join(sorted(BENCHMARKS))}",
                                 param_hint="NAME")
    args = [name, "--profile", profile, "--device", device] + (["--model", model] if model else []) + \
        (["--data", data] if data else []) + (["--dataset", dataset] if dataset else []) + \
        (["--only", only] if only else [])
    bench_main(args)
