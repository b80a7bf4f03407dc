"""Conversion table: ANN vs SNNs (layer-/connection-wise × MT/IF, initial potential) vs the stock
SpikingJelly ``RateCodingRecipe`` peer, at several T, with agreement and step cost.

    python -m sjunet.benchmarks conversion --profile cpu --model runs/em/ann.pt --data ../shared/data

Reuses the calibration file next to the model when its fingerprint matches.
"""
from __future__ import annotations

import time
from pathlib import Path

PROFILES = {
    "smoke": dict(dataset="demo-seg", T=[2, 4, 8], limit=2, dataset_options={"size": 32, "num_items": 16},
                  stock=True, width=8, depth=2, train_epochs=30),
    "cpu": dict(dataset="em", T=[5, 10, 20, 50, 100], limit=None, dataset_options={}, stock=True),
    "paper": dict(dataset="em", T=[5, 10, 20, 50, 100, 200], limit=None, dataset_options={}, stock=True),
}

VARIANTS = [
    ("connection", "mt", "half"), ("connection", "mt", "zero"), ("layer", "mt", "half"), ("layer", "mt", "zero"),
    ("connection", "if", "half"), ("connection", "if", "zero"), ("layer", "if", "half"), ("layer", "if", "zero"),
]


def _model(p: dict, model: str | None, out: Path, data: str | None):
    from sjunet.models.checkpoint import load_ann
    from sjunet.training import TrainOptions, train

    if model is None:
        model = str(out / "ann.pt")
        train(TrainOptions(dataset=p["dataset"], data=data, output=model, epochs=p.get("train_epochs", 2),
                           width=p.get("width", 4), depth=p.get("depth", 2), batch_size=4, optimizer="adam", lr=5e-3,
                           dataset_options=p["dataset_options"]), progress=False, force=True)
    ann, ckpt = load_ann(model)
    return model, ann, ckpt


def _stats(ann, model_path: str, p: dict, data, out: Path, device: str):
    """Statistics beside the model when they match it, else (cached) ones calibrated under ``out``."""
    from .common import cached_stats, matching_stats

    beside = Path(model_path).with_name("stats.h5")
    stats = matching_stats(ann, beside)
    if stats is not None:
        return stats, beside
    path = out / "stats.h5"
    return cached_stats(ann, path, p["dataset"], data, p["dataset_options"], device, batch_size=2), path


def run(profile: str = "cpu", model: str | None = None, data: str | None = None, device: str = "cpu") -> dict:
    from torch.utils.data import DataLoader

    from sjunet.conversion.recipe import convert, convert_stock
    from sjunet.data import get_dataset
    from sjunet.evaluation import evaluate_snn
    from sjunet.tasks import task_for

    from .common import RESULTS, hard_key, ratio, write_metric_figure, write_results

    p = dict(PROFILES[profile])
    out = RESULTS / f"conversion-{profile}"
    out.mkdir(parents=True, exist_ok=True)
    model, ann, ckpt = _model(p, model, out, data)
    stats, stats_path = _stats(ann, model, p, data, out, device)
    test = get_dataset(p["dataset"], data, "test", **p["dataset_options"])
    task = task_for(test)
    multiple = ann.size_multiple
    rows = {}
    t0 = time.perf_counter()
    for norm, neuron, v_init in VARIANTS:
        snn = convert(ann, stats, norm=norm, neuron=neuron, v_init=v_init)
        rows[f"{norm}-wise {neuron.upper()} v0={v_init}"] = evaluate_snn(
            snn, test, p["T"], task, reference=ann, limit=p["limit"], multiple=multiple, progress=False, device=device)
    if p["stock"]:
        train_ds = get_dataset(p["dataset"], data, "train", **p["dataset_options"])
        peer = convert_stock(ann, DataLoader(train_ds, batch_size=2), mode="99.9%")
        rows["stock RateCodingRecipe IF 99.9%"] = evaluate_snn(
            peer, test, p["T"], task, reference=ann, limit=p["limit"], multiple=multiple, progress=False, device=device)
    ann_metrics = next(iter(rows.values()))["ann"]
    keys = [k for k in ann_metrics if k.startswith("f1_")] or ["psnr", "ssim"]
    keys += ["jaccard_" + k[3:] for k in keys if k.startswith("f1_")][:1] + (["accuracy"] if "accuracy" in ann_metrics else [])
    agree = "agreement" if task.kind == "segmentation" else "psnr_vs_reference"
    rk = hard_key(ann_metrics, keys)
    lines = [f"Conversion on {p['dataset']} ({profile} profile; model {Path(model).name}, "
             f"{next(iter(rows.values()))['timing']['images']} test images, device {device})", "",
             "| model | T | " + " | ".join(keys) + f" | {agree} | {rk} SNN/ANN |",
             "|---|---|" + "---|" * (len(keys) + 2)]
    lines.append("| ANN | — | " + " | ".join(f"{ann_metrics[k]:.4f}" for k in keys) + " | — | 1.000 |")
    for name, r in rows.items():
        for t, m in r["T"].items():
            lines.append(f"| {name} | {t} | " + " | ".join(f"{m[k]:.4f}" for k in keys) +
                         f" | {m.get(agree, float('nan')):.4f} | {ratio(m[rk], ann_metrics[rk]):.3f} |")
    lines += ["", "| model | s/image at max T | s per step | step / ANN forward |", "|---|---|---|---|"]
    for name, r in rows.items():
        tm = r["timing"]
        lines.append(f"| {name} | {tm['snn_seconds_per_image']:.2f} | {tm['snn_seconds_per_step']:.4f} | "
                     f"{tm['step_cost_vs_ann']:.2f} |")
    lines.append(f"\nANN: {next(iter(rows.values()))['timing']['ann_seconds_per_image']:.3f} s/image; "
                 f"total {time.perf_counter() - t0:.0f} s")
    table = "\n".join(lines)
    write_metric_figure("conversion", profile, rows, rk, f"Conversion on {p['dataset']}: {rk} vs T (dashed: ANN)")
    path = write_results("conversion", profile, table, {
        "profile": profile, "settings": p, "model": model, "model_fingerprint": ckpt.get("fingerprint"),
        "stats": str(stats_path), "dataset": test.describe(), "results": rows})
    return {"table": table, "results": rows, "path": str(path)}
