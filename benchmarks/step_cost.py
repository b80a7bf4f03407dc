"""Cost of one simulation step against one ANN forward pass (same process, interleaved, medians).

    python -m sjunet.benchmarks step_cost --profile cpu --model runs/em/ann.pt --data ../shared/data

Measures, on one test image: the ANN forward; our SNN (connection-wise MT) at T steps in
multi-step mode (chunks of 4 and of T) and in single-step mode; SpikingJelly's stock
``RateCodingRecipe`` SNN in its multi-step mode. Reports seconds per image and the cost of one
step in ANN forwards.
"""
from __future__ import annotations


PROFILES = {
    "smoke": dict(T=4, reps=2, size=32, width=4, depth=2),
    "cpu": dict(T=20, reps=5, size=512, width=16, depth=4),
    "paper": dict(T=20, reps=10, size=512, width=64, depth=4),
}


def run(profile: str = "cpu", model: str | None = None, data: str | None = None, device: str = "cpu") -> dict:
    import torch

    from sjunet.calibration import calibrate
    from sjunet.conversion.recipe import convert, convert_stock
    from sjunet.models import UNet
    from sjunet.models.checkpoint import load_ann
    from sjunet.snn.simulation import simulate

    from .common import write_results

    p = PROFILES[profile]
    torch.manual_seed(0)
    if model:
        ann, _ = load_ann(model)
    else:
        ann = UNet(base_width=p["width"], depth=p["depth"]).eval()
    if data:
        from sjunet.data import get_dataset

        x = get_dataset("em", data, "test")[0][0].unsqueeze(0)
    else:
        x = torch.rand(1, ann.config.in_channels, p["size"], p["size"])
    ann, x = ann.to(device), x.to(device)
    stats = calibrate(ann, [x], progress=False, device=device)
    snn = convert(ann, stats).to(device)
    peer = convert_stock(ann, [x]).to(device)
    T = p["T"]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    runs = {
        "ANN forward": lambda: ann(x),
        f"sjunet SNN, multi-step chunk 4, T={T}": lambda: simulate(snn, x, T, mode="multi", chunk=4),
        f"sjunet SNN, multi-step chunk {T}, T={T}": lambda: simulate(snn, x, T, mode="multi", chunk=T),
        f"sjunet SNN, single-step, T={T}": lambda: simulate(snn, x, T, mode="step"),
        f"stock RateCodingRecipe SNN, multi-step chunk 4, T={T}": lambda: simulate(peer, x, T, mode="multi", chunk=4),
    }
    from .common import interleaved_medians

    with torch.no_grad():
        med, times = interleaved_medians(runs, p["reps"], sync)
    ann_s = med["ANN forward"]
    lines = [f"Step cost ({profile} profile, device {device}, input {tuple(x.shape)}, medians of {p['reps']} "
             f"interleaved repetitions, {torch.get_num_threads()} threads)", "",
             "| run | s/image | s per step | step / ANN forward | s/image / (T × ANN) |", "|---|---|---|---|---|"]
    for k, v in med.items():
        steps = 1 if k == "ANN forward" else T
        lines.append(f"| {k} | {v:.4f} | {v / steps:.4f} | {v / steps / ann_s:.3f} | {v / (steps * ann_s):.3f} |")
    table = "\n".join(lines)
    path = write_results("step_cost", profile, table, {"profile": profile, "settings": p, "model": model,
                                                       "times": times, "medians": med})
    return {"table": table, "path": str(path)}
