"""Whole-image against patch evaluation: metric and cost per image (issue 20).

    python -m sjunet.benchmarks protocol --profile cpu --data ../shared/data [--dataset drive]

On a data set whose paper protocol cuts test images into windows (DRIVE: 48x48 every 16 pixels,
overlaps averaged), with the paper tables' cached ANN and statistics of the profile
(:mod:`sjunet.benchmarks.paper_tables`): the ANN and the converted SNN (connection-wise MT) at the
profile's T, each evaluated

* **whole** (the default: each image padded to the size rule and run once) on every test image
  of the profile, and
* **patch** (the paper's protocol) on the first ``patch_images`` of them (it costs ~9 network
  passes per pixel), and whole on the same images, so the two metrics compare image for image.

Reported per protocol: the headline metric (ANN, SNN, pixel agreement), seconds per image (ANN
pass; SNN simulation) and the cost of one SNN step in ANN passes over the same image
(``timing.step_cost_vs_ann`` of :func:`sjunet.evaluation.loops.evaluate_snn`: the target of issue 20 is
≤ 1.5 for whole images). Network time only, measured in one process; nothing here is asserted.
"""
from __future__ import annotations

PROFILES = {
    "smoke": dict(dataset="demo-seg", ann_profile="smoke", T=[2], limit=2, patch_images=1, patch=(16, 8)),
    "cpu": dict(dataset="drive", ann_profile="cpu", T=[2, 4], limit=None, patch_images=4, patch=None),
    "gpu": dict(dataset="drive", ann_profile="gpu", T=[2, 4], limit=None, patch_images=4, patch=None),
}


def _row(label: str, images: int, r: dict, key: str, T: int) -> str:
    """One protocol's row at ``T``; the timings (one simulation up to the largest T) on its last row."""
    tm = r["timing"]
    a, s = r["ann"][key], r["T"][str(T)]
    times = (f"{tm['ann_seconds_per_image']:.3f} | {tm['snn_seconds_per_image']:.3f} (T={T}) | "
             f"{tm['step_cost_vs_ann']:.2f}") if T == tm["max_T"] else "| |"
    return f"| {label} | {images} | {T} | {a:.4f} | {s[key]:.4f} | {s.get('agreement', float('nan')):.4f} | {times} |"


def run(profile: str = "cpu", model=None, data=None, device: str = "cpu", dataset: str | None = None) -> dict:
    from sjunet.conversion.recipe import convert
    from sjunet.data import get_dataset
    from sjunet.evaluation import evaluate_snn, make_protocol
    from sjunet.tasks import task_for

    from .common import write_results
    from .tables_common import _prepare

    p = PROFILES[profile]
    _, name, d, ann, stats = _prepare(p["ann_profile"], dataset or p["dataset"], data, device)
    test = get_dataset(d["test"], data, "test", **d["test_opts"])
    task = task_for(test)
    key = task.metric
    snn = convert(ann, stats)
    patch = make_protocol("patch", test, **(dict(patch=p["patch"][0], stride=p["patch"][1]) if p["patch"] else {}))
    common = dict(reference=ann, multiple=ann.size_multiple, progress=False, device=device)
    runs = {
        "whole, every test image": evaluate_snn(snn, test, p["T"], task, limit=p["limit"], **common),
        "whole, the patch images": evaluate_snn(snn, test, p["T"], task, limit=p["patch_images"], **common),
        f"patch {patch.patch}x{patch.patch} stride {patch.stride}": evaluate_snn(
            snn, test, p["T"], task, limit=p["patch_images"], protocol=patch, **common),
    }
    n_all = len(test) if p["limit"] is None else min(p["limit"], len(test))
    images = {k: (n_all if k.startswith("whole, every") else min(p["patch_images"], len(test))) for k in runs}
    lines = [f"Evaluation protocols on {name} ({profile} profile, device {device}; metric {key}; SNN: connection-wise "
             "MT; seconds are network time per image; step cost = SNN seconds per step / ANN seconds, same image)", "",
             "| protocol | images | T | ANN | SNN | agreement | ANN s/image | SNN s/image | SNN step / ANN pass |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, r in runs.items():
        for T in p["T"]:
            lines.append(_row(label, images[label], r, key, T))
    table = "\n".join(lines)
    path = write_results("protocol", profile, table, {"profile": profile, "settings": p, "dataset": name,
                                                      "ann_fingerprint": stats.model_fingerprint,
                                                      "runs": runs, "images": images})
    return {"table": table, "path": str(path)}
