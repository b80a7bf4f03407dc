"""``sjunet demo``: the whole pipeline on built-in data, no download (a few minutes on 2 CPU cores).

``--task seg`` / ``denoise``: 2-D images; ``--task seg3d``: volumes (``demo-seg3d``, sjunet's U-Net
in 3-D, under a minute on one core), its figure showing the middle slice of each volume.

train (demo data) → evaluate ANN → calibrate (99.9 %, whole training split) → convert
(connection-wise and layer-wise, MT neurons) → evaluate the SNNs at several T with agreement →
a figure of the predictions (input, label, ANN, each SNN at the largest T) → a report, every
output path, and :data:`LEGEND` (what the report's words mean).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch.utils.data import DataLoader

from sjunet.calibration import calibrate
from sjunet.conversion.recipe import convert, save_snn
from sjunet.data import get_dataset
from sjunet.evaluation import evaluate
from sjunet.io import provenance, write_json
from sjunet.training import TrainOptions, train

DEMOS = {
    "seg": dict(dataset="demo-seg", epochs=30, batch_size=8, width=8, depth=3, lr=2e-3, optimizer="adam"),
    "denoise": dict(dataset="demo-denoise", epochs=15, batch_size=8, width=8, depth=3, lr=1e-3, optimizer="adam"),
    # volumes: sjunet's U-Net in 3-D (Conv3d, AvgPool3d, ConvTranspose3d) on 16×32×32 procedural volumes
    "seg3d": dict(dataset="demo-seg3d", epochs=12, batch_size=4, width=4, depth=2, lr=5e-3, optimizer="adam"),
}


#: what the words of the demo's report mean (printed after it)
LEGEND = (
    ("MT: the multi-threshold neuron (the paper's: it fires graded spikes of 2, 1, 0.5 or 0.25 × its layer's scale "
     "in one step)"),
    "T: time steps the SNN is simulated for (more steps: closer to the ANN, more spikes)",
    ("connection-wise / layer-wise: how each layer's weights are normalised by the recorded activation scales "
     "(per connection, i.e. per input of a join, or one scale per layer)"),
    "agreement: the fraction of pixels where the SNN's class equals the ANN's",
    "psnr_vs_reference: the PSNR (dB) of the SNN's output against the ANN's output (higher: closer to the ANN)",
    "f1_<class>, miou, accuracy, psnr, ssim: metrics against the ground truth on the demo's test split",
)


def run_demo(task: str = "seg", out: str | Path = "runs/demo", epochs: int | None = None,
             T: Sequence[int] = (5, 10, 20), progress: bool = True, images: int = 3,
             dataset_options: dict | None = None) -> dict:
    """Run the demo pipeline; every artifact lands under ``out/<task>`` (replaced by each run: the
    demo owns that directory); ``dataset_options`` go to the demo data set (e.g. ``size``, ``num_items``
    for a quick run). Returns ``results``, ``report``, ``out``, ``outputs`` (what → path,
    every file written) and ``legend``."""
    if task not in DEMOS:
        raise ValueError(f"unknown demo task {task!r}; choose one of {', '.join(DEMOS)}")
    cfg = dict(DEMOS[task])
    if epochs is not None:
        cfg["epochs"] = epochs
    out = Path(out) / task
    ann_path, stats_path = out / "ann.pt", out / "stats.h5"
    opts = dict(dataset_options or {})
    ann, summary = train(TrainOptions(output=str(ann_path), dataset_options=opts, **cfg), progress=progress,
                         force=True)
    ds = get_dataset(cfg["dataset"], None, "train", seed=0, **opts)
    stats = calibrate(ann, DataLoader(ds, batch_size=16), output=stats_path, progress=progress,
                      data_description={"dataset": cfg["dataset"], "split": "train", **ds.describe()})
    test = get_dataset(cfg["dataset"], None, "test", seed=0, **opts)
    results: dict = {}
    lines = [f"demo {task}: {cfg['dataset']}, U-Net width {cfg['width']} depth {cfg['depth']}, {cfg['epochs']} epochs", ""]
    snns = {}
    for norm in ("connection", "layer"):
        snn = convert(ann, stats, norm=norm)
        snn.record.task = summary["task"]
        save_snn(snn, out / f"snn_{norm}.safetensors", {"model": str(ann_path), "stats": str(stats_path)})
        r = evaluate(test, ann, snn, T, progress=progress)
        write_json({**r, "provenance": provenance()}, out / f"eval_{norm}.json")
        results[norm], snns[norm] = r, snn
    lines += _table(results)
    figure = out / "predictions.png"
    _figure(ann, snns, test, max(T), figure, images,
            f"demo {task}: {cfg['dataset']} test {'volumes' if getattr(test, 'spatial_dims', 2) == 3 else 'images'}")
    report = "\n".join(lines)
    (out / "report.md").write_text(report + "\n\n" + "\n".join(f"* {line}" for line in LEGEND) + "\n")
    write_json({k: {kk: vv for kk, vv in v.items() if kk in ("ann", "T", "timing")} for k, v in results.items()},
               out / "summary.json")
    outputs = {"ANN checkpoint": ann_path, "calibration statistics": stats_path,
               **{f"SNN, {norm}-wise": out / f"snn_{norm}.safetensors" for norm in results},
               **{f"metrics, {norm}-wise (JSON)": out / f"eval_{norm}.json" for norm in results},
               f"figure: input, label, ANN, SNNs at T={max(T)}": figure,
               "report (this table + legend)": out / "report.md", "summary (JSON)": out / "summary.json"}
    return {"results": results, "report": report, "out": str(out), "legend": list(LEGEND),
            "outputs": {k: str(v) for k, v in outputs.items()}}


def _figure(ann, snns: dict, test, T: int, output: Path, images: int, title: str) -> Path:
    """Figures 4/5 for the demo (:mod:`sjunet.plots.predictions`): the first ``images`` test images."""
    from sjunet.plots.predictions import predictions, predictions_figure
    from sjunet.tasks import task_for

    systems = {"ANN": (ann, None)}
    for norm, snn in snns.items():
        systems[f"SNN {norm}-wise T={T}"] = (snn, T)
    rows = predictions(systems, test, list(range(min(images, len(test)))))
    return predictions_figure(rows, task_for(test), output, title=title)


def _table(results: dict) -> list[str]:
    first = next(iter(results.values()))
    keys = [k for k, v in first["ann"].items() if isinstance(v, float) and k != "num_images" and not k.startswith(("iou_", "jaccard_"))]
    keys = keys + ["agreement" if "agreement" in next(iter(first["T"].values())) else "psnr_vs_reference"]
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines.append("| ANN | " + " | ".join(f"{first['ann'][k]:.4f}" if k in first["ann"] else "—" for k in keys) + " |")
    for norm, r in results.items():
        for t, m in r["T"].items():
            lines.append(f"| SNN {norm}-wise MT, T={t} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in keys) + " |")
    return lines
