"""The first hour: ``sjunet demo``, quick and full, for every task (issue 25).

    python -m sjunet.benchmarks demos --profile cpu [--only seg,denoise,seg3d]

Runs :func:`sjunet.demo.run_demo` exactly as ``sjunet demo --task <task> [--quick]`` does (its
default options), each into its own folder under ``results/demos-<profile>/``, and reports per
run: the wall-clock minutes (on this machine, with whatever else runs on it: the table says how
many CPU threads torch used and the load average before the run), the ANN's headline metric
and the SNN's at each T (× ANN), whether the run was flagged as a smoke run or a broken ANN, and
what the figure shows — for segmentation the share of the figure's pixels each system predicts
as foreground (an all-black figure is 0 for every system), for denoising the spread of each
system's output (0: a constant image). Nothing here is asserted; the figure paths are listed.
"""
from __future__ import annotations

import os
import time

PROFILES = {
    "smoke": dict(runs=[("seg", True)], quick_overrides={"epochs": 1}),
    "cpu": dict(runs=[(t, q) for t in ("seg", "denoise", "seg3d") for q in (True, False)], quick_overrides={}),
}


def _figure_content(ann, snns: dict, test, T: int, images: int = 3) -> dict:
    """What :func:`sjunet.demo._figure` draws, measured: per system the foreground share of its
    predicted pictures (segmentation) or the standard deviation of its output (denoising)."""
    import numpy as np

    from sjunet.plots.predictions import predictions
    from sjunet.tasks import task_for

    systems = {"ANN": (ann, None), **{f"SNN {n}-wise T={T}": (s, T) for n, s in snns.items()}}
    rows = predictions(systems, test, list(range(min(images, len(test)))))
    seg = task_for(test).kind == "segmentation"
    out = {}
    for label in systems:
        pics = np.stack([r["outputs"][label] for r in rows])
        out[label] = float((pics > 0).mean()) if seg else float(pics.std())
    return out


def run(profile: str = "cpu", model=None, data=None, device: str = "cpu", only: str | None = None) -> dict:
    import torch

    from sjunet.data import get_dataset
    from sjunet.demo import DEMOS, QUICK, run_demo
    from sjunet.conversion.recipe import load_snn
    from sjunet.models.checkpoint import load_ann
    from sjunet.metrics import metric_label
    from sjunet.tasks import task_for

    from .common import RESULTS, write_results

    p = PROFILES[profile]
    runs = [(t, q) for t, q in p["runs"] if only is None or t in only.split(",")]
    rows = []
    for task, quick in runs:
        out = RESULTS / f"demos-{profile}" / ("quick" if quick else "full")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        t0 = time.perf_counter()
        r = run_demo(task, out, progress=False, quick=quick, **(p["quick_overrides"] if quick else {}))
        minutes = (time.perf_counter() - t0) / 60
        first = r["results"]["connection"]
        opts = {**(QUICK[task]["dataset_options"] if quick else {})}
        test = get_dataset(DEMOS[task]["dataset"], None, "test", seed=0, **opts)
        key = task_for(test).metric
        ann = load_ann(r["outputs"]["ANN checkpoint"])[0]
        snns = {n: load_snn(r["outputs"][f"SNN, {n}-wise"])[0] for n in ("connection", "layer")}
        T = max(int(t) for t in first["T"])
        content = _figure_content(ann, snns, test, T)
        rows.append({"task": task, "quick": quick, "minutes": minutes, "load_before": load,
                     "threads": torch.get_num_threads(), "metric": key, "ann": first["ann"][key],
                     "snn": {t: v[key] for t, v in first["T"].items()}, "warnings": r["warnings"],
                     "figure": r["outputs"][f"figure: input, label, ANN, SNNs at T={T}"], "figure_content": content})
    lines = [f"Demos ({profile} profile; `sjunet demo --task TASK [--quick]` with its defaults; wall-clock minutes "
             "on this machine as it was — the load average before each run is shown)", "",
             "| task | run | minutes | torch threads | load before | metric | ANN | SNN connection-wise (× ANN) | "
             "figure: foreground share (seg) / output spread (denoise) | flagged |",
             "|---|---|---:|---:|---:|---|---:|---|---|---|"]
    for r in rows:
        snn = ", ".join(f"T={t}: {v:.4f} ({v / r['ann']:.3f})" if r["ann"] else f"T={t}: {v:.4f} (—)"
                        for t, v in r["snn"].items())
        fig = ", ".join(f"{k} {v:.3f}" for k, v in r["figure_content"].items())
        flag = "; ".join("broken ANN (one class / a constant image)" if w.startswith("warning:") else
                         "smoke run" if w.startswith("this is a smoke run") else "quick run" for w in r["warnings"]) or "—"
        load = "—" if r["load_before"] is None else f"{r['load_before']:.1f}"
        lines.append(f"| {r['task']} | {'--quick' if r['quick'] else 'full'} | {r['minutes']:.2f} | {r['threads']} | "
                     f"{load} | {metric_label(r['metric'])} | "
                     f"{r['ann']:.4f} | {snn} | {fig} | {flag} |")
    table = "\n".join(lines)
    path = write_results("demos", profile, table, {"profile": profile, "settings": p, "rows": rows})
    return {"table": table, "path": str(path), "rows": rows}
