"""``sjunet demo``: the whole pipeline on built-in data, no download (how long it takes: the README's
"How long things take", measured by ``python -m sjunet.benchmarks demos``).

``--task seg`` / ``denoise``: 2-D images; ``--task seg3d``: volumes (``demo-seg3d``, sjunet's U-Net
in 3-D), its figure showing the middle slice of each volume. ``--quick`` (:data:`QUICK`): the same
small run for every task.

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
from sjunet.io import DEGENERATE_KEY, provenance, write_json
from sjunet.training import TrainOptions, train

DEMOS = {
    "seg": dict(dataset="demo-seg", epochs=30, batch_size=8, width=8, depth=3, lr=2e-3, optimizer="adam"),
    "denoise": dict(dataset="demo-denoise", epochs=15, batch_size=8, width=8, depth=3, lr=1e-3, optimizer="adam"),
    # volumes: sjunet's U-Net in 3-D (Conv3d, AvgPool3d, ConvTranspose3d) on 16×32×32 procedural volumes
    "seg3d": dict(dataset="demo-seg3d", epochs=12, batch_size=4, width=4, depth=2, lr=5e-3, optimizer="adam"),
}


#: ``--quick``: the same small run for every task (a minute or two on one core): fewer and smaller
#: items, fewer epochs, T = 1, 2, 4. Sized so the network still learns something visible; when it
#: does not (:mod:`sjunet.evaluation.degenerate`), the report says the run is a smoke test whose scores mean
#: nothing.
QUICK = {
    "seg": dict(dataset_options={"size": 48, "num_items": 32}, epochs=12, T=(1, 2, 4)),
    "denoise": dict(dataset_options={"size": 48, "num_items": 64}, epochs=6, T=(1, 2, 4)),
    "seg3d": dict(dataset_options={"size": 16, "num_items": 16}, epochs=8, T=(1, 2, 4)),
}
#: the T of a full demo run
DEMO_T = (1, 2, 4, 8)

#: what the words of the demo's report mean (printed after it)
LEGEND = (
    ("MT: the multi-threshold neuron: in one step it fires graded spikes θ_1 > θ_2 > … (each threshold at most "
     "once, largest first) × its layer's scale; each layer's ladder of thresholds is chosen from its calibration "
     "histogram (sjunet.conversion.ladders; the paper's fixed ladder is 2, 1, 0.5, 0.25: --thresholds paper)"),
    "T: time steps the SNN is simulated for (more steps: closer to the ANN, more spikes)",
    ("connection-wise / layer-wise: how each layer's weights are normalised by the recorded activation scales "
     "(per connection, i.e. per input of a join, or one scale per layer)"),
    "agreement: the fraction of pixels where the SNN's class equals the ANN's (1 = identical predictions)",
    "PSNR against the ANN (dB): the PSNR of the SNN's output against the ANN's output (higher: closer to the ANN)",
    ("F1 (<class>), IoU, mIoU, pixel accuracy (0–1, higher is better), PSNR (dB) and SSIM (0–1): metrics against "
     "the ground truth on the demo's test split"),
)


def run_demo(task: str = "seg", out: str | Path = "runs/demo", epochs: int | None = None,
             T: Sequence[int] | None = None, progress: bool = True, images: int = 3,
             dataset_options: dict | None = None, quick: bool = False) -> dict:
    """Run the demo pipeline. Everything is written into a fresh folder beside ``out/<task>``
    (``out/.<task>.partial``) that replaces ``out/<task>`` only when the run completes — a run
    stopped midway leaves the previous results as they were (and its partial folder, which the next
    run removes). ``quick``: :data:`QUICK`'s small run (``epochs``, ``T`` and ``dataset_options``
    given explicitly override it). ``dataset_options`` go to the demo data set (every demo data set
    takes ``size`` and ``num_items``). Returns ``results``, ``report``, ``out``, ``outputs`` (what →
    path, every file written), ``legend`` and ``warnings`` (a degenerate ANN; a smoke run)."""
    import shutil

    from sjunet.evaluation.degenerate import check_model, warning_line

    if task not in DEMOS:
        raise ValueError(f"unknown demo task {task!r}; choose one of {', '.join(DEMOS)}")
    cfg = dict(DEMOS[task])
    q = QUICK[task] if quick else {}
    opts = {**q.get("dataset_options", {}), **(dataset_options or {})}
    cfg["epochs"] = epochs if epochs is not None else q.get("epochs", cfg["epochs"])
    T = tuple(T) if T else q.get("T", DEMO_T)
    final = Path(out) / task
    work = Path(out) / f".{task}.partial"
    if work.exists():
        shutil.rmtree(work)  # a run stopped midway: the demo's own scratch folder
    work.mkdir(parents=True)
    ann_path, stats_path = work / "ann.pt", work / "stats.h5"
    ann, summary = train(TrainOptions(output=str(ann_path), dataset_options=opts, **cfg), progress=progress,
                         force=True)
    val = get_dataset(cfg["dataset"], None, "val", seed=0, **opts)
    broken = check_model(ann, val)
    warnings = [warning_line(broken, "the demo's ANN")] if broken else []
    if broken:
        warnings.append("this is a smoke run of the pipeline: the ANN did not learn, so its scores and the SNNs' "
                        "mean nothing (run the full demo, without --quick, or give it more --epochs)")
    elif quick:
        warnings.append("a quick run (--quick): the ANN trained for seconds, so its scores are far below the full "
                        "demo's; the SNNs' agreement with it still shows what the conversion keeps")
    ds = get_dataset(cfg["dataset"], None, "train", seed=0, **opts)
    stats = calibrate(ann, DataLoader(ds, batch_size=16), output=stats_path, progress=progress,
                      data_description={"dataset": cfg["dataset"], "split": "train", **ds.describe(),
                                        **({DEGENERATE_KEY: broken} if broken else {})})
    test = get_dataset(cfg["dataset"], None, "test", seed=0, **opts)
    results: dict = {}
    lines = [f"demo {task}: {cfg['dataset']}, U-Net width {cfg['width']} depth {cfg['depth']}, {cfg['epochs']} epochs"
             + (" (--quick)" if quick else ""), ""]
    snns = {}
    for norm in ("connection", "layer"):
        snn = convert(ann, stats, norm=norm)
        snn.record.task = summary["task"]
        save_snn(snn, work / f"snn_{norm}.safetensors", {"model": str(final / "ann.pt"), "stats": str(final / "stats.h5")})
        r = evaluate(test, ann, snn, T, progress=progress)
        write_json({**r, "provenance": provenance()}, work / f"eval_{norm}.json")
        results[norm], snns[norm] = r, snn
    lines += _table(results)
    if warnings:
        lines += [""] + warnings
    _figure(ann, snns, test, max(T), work / "predictions.png", images,
            f"demo {task}: {cfg['dataset']} test {'volumes' if getattr(test, 'spatial_dims', 2) == 3 else 'images'}")
    report = "\n".join(lines)
    (work / "report.md").write_text(report + "\n\n" + "\n".join(f"* {line}" for line in LEGEND) + "\n")
    write_json({**{k: {kk: vv for kk, vv in v.items() if kk in ("ann", "T", "timing")} for k, v in results.items()},
                "warnings": warnings}, work / "summary.json")
    _replace(work, final)
    outputs = {"ANN checkpoint": "ann.pt", "calibration statistics": "stats.h5",
               **{f"SNN, {norm}-wise": f"snn_{norm}.safetensors" for norm in results},
               **{f"metrics, {norm}-wise (JSON)": f"eval_{norm}.json" for norm in results},
               f"figure: input, label, ANN, SNNs at T={max(T)}": "predictions.png",
               "report (this table + legend)": "report.md", "summary (JSON)": "summary.json"}
    return {"results": results, "report": report, "out": str(final), "legend": list(LEGEND), "warnings": warnings,
            "outputs": {k: str(final / v) for k, v in outputs.items()}}


def _replace(work: Path, final: Path) -> None:
    """Put the completed ``work`` folder in the place of ``final`` (the previous run's, if any)."""
    import os
    import shutil

    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(work, final)
    if old.exists():
        shutil.rmtree(old)


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
    """The report's table: every metric (named, with its unit) of the ANN and of each SNN at each T."""
    from sjunet.metrics import metric_label

    first = next(iter(results.values()))
    keys = [k for k, v in first["ann"].items() if isinstance(v, float) and k != "num_images" and not k.startswith(("iou_", "jaccard_"))]
    keys = keys + ["agreement" if "agreement" in next(iter(first["T"].values())) else "psnr_vs_reference"]

    def cell(v) -> str:
        return "—" if v is None or v != v else f"{v:.4f}"

    lines = ["| model | " + " | ".join(metric_label(k) for k in keys) + " |", "|---|" + "---|" * len(keys)]
    lines.append("| ANN | " + " | ".join(cell(first["ann"].get(k)) for k in keys) + " |")
    for norm, r in results.items():
        for t, m in r["T"].items():
            lines.append(f"| SNN {norm}-wise MT, T={t} | " + " | ".join(cell(m.get(k)) for k in keys) + " |")
    return lines
