"""Spiking-flow fine-tuning vs BPTT: peak memory and seconds per iteration (issue: fine-tuning).

Same converted network, same batch, for T in the profile's list. Each (method, T) runs in its
own subprocess so every peak-memory figure is its own process's: on the CPU the peak resident
set above the process's state after set-up (the peak window reset after set-up), on CUDA
``torch.cuda.max_memory_allocated`` above the memory allocated after set-up (times
CUDA-synchronised). On the CPU each run is repeated with the live-memory allocator
(:func:`~sjunet.benchmarks.common.live_memory_allocator`): glibc's default keeps freed blocks in a
fragmented heap, so default RSS overstates the live tensors — the live column is the CPU analogue
of the CUDA figure, the default column what a user's process shows. Reported beside them: one ANN
training step (forward + backward + update) and the T-step no-grad simulation alone, so the
flow trainer's cost can be read as a ratio of (simulation + ANN step).

    python -m sjunet.benchmarks flow --profile cpu [--model runs/em/ann.pt --data ../shared/data] [--device cuda]
"""
from __future__ import annotations

import json
import sys

PROFILES = {
    "smoke": dict(T=[2, 4], width=4, depth=2, size=32, batch=2, iters=2),
    "cpu": dict(T=[5, 10, 20, 40], width=16, depth=4, size=128, batch=4, iters=3),
    "paper": dict(T=[5, 10, 20, 40, 100], width=64, depth=4, size=128, batch=4, iters=5),
}


def _setup(cfg: dict):
    import torch

    from sjunet.calibration import calibrate
    from sjunet.conversion.recipe import convert
    from sjunet.models import UNet

    torch.manual_seed(0)
    torch.set_num_threads(cfg.get("threads", 2))
    if cfg.get("model"):
        from sjunet.models.checkpoint import load_ann

        ann, _ = load_ann(cfg["model"])
    else:
        ann = UNet(base_width=cfg["width"], depth=cfg["depth"]).eval()
    g = torch.Generator().manual_seed(1)
    if cfg.get("data"):
        from sjunet.data import get_dataset

        ds = get_dataset("em", cfg["data"], "train", crop=cfg["size"], seed=0)
        items = [ds[i] for i in range(cfg["batch"])]
        x = torch.stack([a for a, _ in items])
        y = torch.stack([b for _, b in items])
    else:
        x = torch.rand(cfg["batch"], ann.config.in_channels, cfg["size"], cfg["size"], generator=g)
        y = torch.randint(0, ann.config.out_channels, (cfg["batch"], cfg["size"], cfg["size"]), generator=g)
    stats = calibrate(ann, [x], progress=False)
    snn = convert(ann, stats)
    return ann, snn, x, y


def worker(cfg: dict) -> dict:
    from .common import live_memory_allocator, measure_steps, training_step

    live = bool(cfg.get("live")) and live_memory_allocator()  # before torch allocates anything
    from sjunet.tasks import SegmentationTask

    ann, snn, x, y = _setup(cfg)
    device = cfg.get("device", "cpu")
    ann, snn, x, y = ann.to(device), snn.to(device), x.to(device), y.to(device)
    method, T = cfg["method"], cfg.get("T", 0)
    step = training_step(method, SegmentationTask(ann.config.out_channels), x, y, T, ann=ann, snn=snn)
    return {"method": method, "T": T, **measure_steps(step, device, cfg["iters"], live)}


def run(profile: str = "cpu", model: str | None = None, data: str | None = None, device: str = "cpu") -> dict:
    from .common import run_worker, write_results

    p = dict(PROFILES[profile])
    common = {k: p[k] for k in ("width", "depth", "size", "batch", "iters")}
    common.update(model=model, data=data, device=device)
    cuda = device.startswith("cuda")
    # on the CPU every (method, T) also runs with the live-memory allocator: RSS then tracks live
    # tensors as CUDA's max_memory_allocated does (its times are not used)
    variants = [False] if cuda else [False, True]
    rows = [run_worker(__spec__.name, {**common, "method": "ann", "live": v}) for v in variants]
    for T in p["T"]:
        for method in ("sim", "flow", "bptt"):
            for v in variants if method != "bptt" else [False]:
                rows.append(run_worker(__spec__.name, {**common, "method": method, "T": T, "live": v}))
    by = {(r["method"], r["T"], bool(r.get("live")) and not cuda): r for r in rows}
    ann, ann_live = by[("ann", 0, False)], by.get(("ann", 0, True))

    def mb(r):
        return r["peak_increase_mb"]

    head = (f"Flow vs BPTT ({profile} profile, device {device}; width {p['width']}, batch {p['batch']} of "
            f"{p['size']}x{p['size']}; memory: {ann['memory']}, peak above the state after set-up; "
            f"ANN training step: +{mb(ann):.0f} MB, {ann['seconds']:.3f} s")
    cols = "| T | flow MB | BPTT MB | flow/ANN mem | BPTT/flow mem |"
    if ann_live is not None:
        head += (f"; 'live': the same runs with large blocks unmapped when freed (glibc), so RSS tracks live "
                 f"tensors as CUDA's max_memory_allocated does: ANN step +{mb(ann_live):.0f} MB")
        cols += " sim MB live | flow MB live | flow/ANN mem live |"
    lines = [head + ")", "", cols + " flow s/it | BPTT s/it | sim s | flow/(sim+ANN step) | BPTT/flow time |",
             "|" + "---|" * (cols.count("|") - 1 + 5)]
    for T in p["T"]:
        f, b, s = by[("flow", T, False)], by[("bptt", T, False)], by[("sim", T, False)]
        cells = [f"{T}", f"{mb(f):.0f}", f"{mb(b):.0f}", f"{mb(f) / max(mb(ann), 1):.2f}",
                 f"{mb(b) / max(mb(f), 1):.1f}"]
        if ann_live is not None:
            fl, sl = by[("flow", T, True)], by[("sim", T, True)]
            cells += [f"{mb(sl):.0f}", f"{mb(fl):.0f}", f"{mb(fl) / max(mb(ann_live), 1):.2f}"]
        cells += [f"{f['seconds']:.3f}", f"{b['seconds']:.3f}", f"{s['seconds']:.3f}",
                  f"{f['seconds'] / (s['seconds'] + ann['seconds']):.2f}", f"{b['seconds'] / f['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    path = write_results("flow", profile, table, {"profile": profile, "settings": {**p, "model": model, "data": data},
                                                  "rows": rows})
    return {"table": table, "rows": rows, "path": str(path)}


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
