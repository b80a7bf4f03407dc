"""Cost of calibration against one plain ANN forward pass over the same batches (issue 20).

    python -m sjunet.benchmarks calibration --profile cpu [--model runs/em/ann.pt] [--data ../shared/data]

Builds (or loads ``--model``) a U-Net and N batches — smoke: 4 tiny batches of demo data; cpu/gpu:
40 EM crops of 128² as 10 batches of 4 when ``--data`` is given, else random data of that shape —
then times, interleaved, 3 repetitions each (after one untimed warm-up of each), medians: one plain
ANN forward over all batches (``torch.no_grad``, eval), ``sjunet.calibrate(model, batches)``, and
SpikingJelly's stock converter (``sjunet.conversion.recipe.convert_stock``, its calibration included; CPU
only) where it converts the model. Reports each as a ratio to the ANN forward (the target of
issue 29: calibrate ≤ 1.5×), and the profile's breakdown of both runs (conv / activation /
plumbing / the estimators' statistics, :func:`benchmarks.common.step_breakdown`). Timings only;
nothing here is asserted.
"""
from __future__ import annotations


PROFILES = {
    "smoke": dict(batches=4, batch=2, size=32, width=4, depth=2, reps=2),
    "cpu": dict(batches=10, batch=4, size=128, width=16, depth=4, reps=3),
    "gpu": dict(batches=10, batch=4, size=128, width=16, depth=4, reps=3),
}


def _batches(profile: str, p: dict, data: str | None, in_channels: int) -> tuple[list, str]:
    import torch
    from torch.utils.data import DataLoader

    from sjunet.data import get_dataset

    n = p["batches"] * p["batch"]
    if profile == "smoke":
        ds = get_dataset("demo-seg", None, "train", size=p["size"], num_items=n)
        what = f"demo-seg, {n} images of {p['size']}²"
    elif data:
        ds = get_dataset("em", data, "train", crop=p["size"], samples_per_epoch=n)
        what = f"EM train, {n} random crops of {p['size']}²"
    else:
        g = torch.Generator().manual_seed(0)
        xs = [torch.rand(p["batch"], in_channels, p["size"], p["size"], generator=g) for _ in range(p["batches"])]
        return xs, f"random, {n} inputs of {p['size']}² (EM's shape)"
    xs = [b[0] if isinstance(b, (list, tuple)) else b for b in DataLoader(ds, batch_size=p["batch"], shuffle=False)]
    return xs, what


def run(profile: str = "cpu", model: str | None = None, data: str | None = None, device: str = "cpu") -> dict:
    import torch
    from sjunet.calibration import calibrate

    from sjunet.conversion.recipe import convert_stock
    from sjunet.models import UNet
    from sjunet.models.checkpoint import load_ann

    from .common import write_results

    p = PROFILES[profile]
    torch.manual_seed(0)
    ann = load_ann(model)[0] if model else UNet(base_width=p["width"], depth=p["depth"])
    ann = ann.eval().to(device)
    in_channels = getattr(getattr(ann, "config", None), "in_channels", 1)
    xs, what = _batches(profile, p, data, in_channels)
    xs = [x.to(device) for x in xs]
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def forward():
        with torch.no_grad():
            for x in xs:
                ann(x)

    runs = {"ANN forward (eval, no_grad)": forward,
            "sjunet.calibrate": lambda: calibrate(ann, xs, progress=False, device=device)}
    stock_note = None
    if str(device) == "cpu":
        try:
            convert_stock(ann, xs)
            runs["stock RateCodingRecipe (convert_stock, calibration included)"] = lambda: convert_stock(ann, xs)
        except Exception as e:  # noqa: BLE001 - the peer does not convert every model
            stock_note = f"stock converter: does not convert this model ({type(e).__name__}: {str(e)[:120]})"
    else:
        stock_note = "stock converter: not timed (it runs on the CPU only)"
    from .common import PARTS, interleaved_medians, step_breakdown

    med, times = interleaved_medians(runs, p["reps"], sync)
    ann_s = next(iter(med.values()))
    parts = {"ANN forward": step_breakdown(forward),
             "sjunet.calibrate": step_breakdown(lambda: calibrate(ann, xs, progress=False, device=device))}
    lines = [(f"Calibration cost ({profile} profile, device {device}, {what}, {len(xs)} batches of {xs[0].shape[0]}, "
              f"model {model or 'random-weight U-Net'}, medians of {p['reps']} interleaved repetitions, "
              f"{torch.get_num_threads()} threads)"), "",
             "| run | s (median) | × one ANN forward | all repetitions (s) |", "|---|---|---|---|"]
    for k, v in med.items():
        lines.append(f"| {k} | {v:.4f} | {v / ann_s:.2f} | {', '.join(f'{t:.4f}' for t in times[k])} |")
    if stock_note:
        lines += ["", stock_note]
    names = [*PARTS, "statistics"]
    lines += ["", "Profile breakdown (torch.profiler, share of the run's CPU time; 'neuron': the ANN's activations; "
              "'statistics': the estimators' work on the recorded tensors):", "",
              "| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k, b in parts.items():
        lines.append(f"| {k} | " + " | ".join(f"{100 * b.get(n, 0.0):.1f} %" for n in names) + " |")
    table = "\n".join(lines)
    path = write_results("calibration", profile, table, {
        "profile": profile, "settings": p, "model": model, "data": what, "device": str(device), "times": times,
        "medians": med, "ratios": {k: v / ann_s for k, v in med.items()}, "stock_note": stock_note,
        "breakdown": parts})
    return {"table": table, "path": str(path)}
