"""Benchmark runner: ``python -m benchmarks <name> --profile smoke|cpu|paper`` (or ``sjunet bench``)."""
from __future__ import annotations

import argparse
import importlib

#: name -> module (its ``run``) or (module, function)
BENCHMARKS = {
    "flow": ".flow_vs_bptt",
    "conversion": ".conversion",
    "finetune": ".finetune_table",
    "ftrecipe": (".finetune_table", "recipe"),
    "ftladder": (".finetune_table", "ladder"),
    "step_cost": ".step_cost",
    "tables12": (".paper_tables", "tables12"),
    "ladders": (".paper_tables", "ladders"),
    "ladderstudy": ".ladder_study",
    "demos": ".demos",
    "energy": ".energy_frontier",
    "ablation": (".paper_tables", "ablation"),
    "zoo": ".zoo",
    "peers": ".peer_table",
    "calibration": ".calibration_cost",
    "protocol": ".protocol_cost",
    "volume": ".volume",
    "gap": ".gap",
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("name", choices=sorted(BENCHMARKS))
    ap.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "gpu", "paper", "sigma"])
    ap.add_argument("--model", default=None, help="ANN checkpoint (default: a random-weight U-Net)")
    ap.add_argument("--data", default=None, help="data directory (default: random inputs)")
    ap.add_argument("--device", default="auto", help="auto: CUDA when available, else CPU")
    ap.add_argument("--dataset", default=None, help="dataset of the one-dataset tables (ladders, energy, ablation, zoo)")
    ap.add_argument("--only", default=None, help="comma-separated subset of a benchmark's rows (zoo: architectures)")
    a = ap.parse_args(argv)
    from sjunet.distributed import resolve_device

    a.device = resolve_device(a.device)
    target = BENCHMARKS[a.name]
    mod_name, fn_name = target if isinstance(target, tuple) else (target, "run")
    module = importlib.import_module(mod_name, __package__)
    fn = getattr(module, fn_name)
    profiles = getattr(module, {"recipe": "RECIPE_PROFILES", "ladder": "LADDER_PROFILES"}.get(fn_name, "PROFILES"), {})
    if profiles and a.profile not in profiles:
        ap.error(f"{a.name} has no {a.profile!r} profile (it has {', '.join(profiles)})")
    kw = {"device": a.device} if "device" in fn.__code__.co_varnames else {}
    if a.dataset is not None:
        if "dataset" not in fn.__code__.co_varnames:
            ap.error(f"{a.name} takes no --dataset (its profile fixes the data)")
        kw["dataset"] = a.dataset
    if a.only is not None:
        if "only" not in fn.__code__.co_varnames:
            ap.error(f"{a.name} takes no --only")
        kw["only"] = a.only
    r = fn(a.profile, model=a.model, data=a.data, **kw)
    print(r["table"])
    print(f"\n-> {r['path']}")


if __name__ == "__main__":
    main()
