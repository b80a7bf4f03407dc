"""Cost of one simulation step against one ANN forward pass (same process, interleaved, medians).

    python -m sjunet.benchmarks step_cost --profile cpu [--model runs/em/ann.pt --data ../shared/data]

For sjunet's U-Net (``--model``, else random weights) and MONAI's ``BasicUNet`` (its defaults:
LeakyReLU + instance norm; random weights), on one whole image (an EM test image with ``--data``):
the ANN forward, as given and channels-last (the layout the fused SNN runs in: the like-for-like
comparison); the SNN (connection-wise MT) in single-step mode — the default evaluation mode, its
synapses fused with their neurons where they can be (:mod:`sjunet.snn.fusion`) — the same unfused
(the default before), how far the two differ (float rounding), eager and with the compiled step kernels (``torch.compile``; skipped with the reason where no
compiler is present, and its compile time reported); multi-step mode with the chunk chosen by
memory (``auto``) and at chunks of at most 1, 2, 4 and T (what ``--chunk`` gives: fewer steps where
memory says a chunk is slower); SpikingJelly's stock ``RateCodingRecipe`` SNN (multi-step, chunk 4).
Each as seconds per image and one step in ANN forwards.

Then the profile's breakdown (``torch.profiler``, :func:`benchmarks.common.step_breakdown`): the
share of convolutions, neurons (the ANN: activations) and plumbing in a step, and the crossover
of multi-step chunks of exactly 2, 4 and 8 steps against single steps over image sizes (what
``chunk="auto"``, and the cap on a given chunk, are chosen by).
Timings only; nothing is asserted.
"""
from __future__ import annotations

PROFILES = {
    "smoke": dict(T=2, reps=1, size=32, width=4, depth=2, crossover=[16, 32], compile=False),
    "cpu": dict(T=8, reps=5, size=512, width=16, depth=4, crossover=[64, 128, 256, 512], compile=True),
    "gpu": dict(T=20, reps=10, size=512, width=16, depth=4, crossover=[128, 256, 512, 1024], compile=True),
    "paper": dict(T=20, reps=10, size=512, width=64, depth=4, crossover=[128, 256, 512], compile=True),
}


def _models(p: dict, model: str | None):
    """(name, ANN) of the profile: sjunet's U-Net (or ``model``) and MONAI's BasicUNet when installed."""
    import torch

    from sjunet.models import UNet
    from sjunet.models.checkpoint import load_ann

    torch.manual_seed(0)
    out = [("sjunet U-Net" if not model else f"sjunet U-Net ({model})",
            load_ann(model)[0] if model else UNet(base_width=p["width"], depth=p["depth"]))]
    note = None
    try:
        from monai.networks.nets import BasicUNet

        w = p["width"]
        out.append(("MONAI BasicUNet (defaults: LeakyReLU, instance norm)", BasicUNet(
            spatial_dims=2, in_channels=1, out_channels=2, features=(w, w, 2 * w, 4 * w, 8 * w, w))))
    except ImportError as e:
        note = f"MONAI BasicUNet: not measured (monai is not installed: {e})"
    return [(n, m.eval()) for n, m in out], note


def _snn(ann, x, device: str):
    from sjunet.calibration import calibrate
    from sjunet.conversion.recipe import convert

    stats = calibrate(ann, [x], progress=False, device=device)
    return convert(ann, stats, accept_gap=True).to(device)  # random-weight norms: the gap is not the point


def _rows(name: str, ann, x, p: dict, device: str, sync) -> dict:
    """Timings, compile time and breakdown of one model."""
    import copy
    import time

    import torch

    from sjunet.conversion.recipe import convert_stock
    from sjunet.neurons import is_neuron, set_compiled
    from sjunet.snn.fusion import chains as fusion_chains
    from sjunet.snn.fusion import fused
    from sjunet.snn.simulation import auto_chunk, simulate

    from .common import interleaved_medians, step_breakdown

    T = p["T"]
    snn = _snn(ann, x, device)
    ann_cl = copy.deepcopy(ann).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    runner = fused(snn, x)
    chains = len(fusion_chains(snn)) if runner is not None else 0
    runs = {"ANN forward": lambda: ann(x),
            "ANN forward, channels-last": lambda: ann_cl(x_cl),
            "SNN single-step (default), eager": lambda: simulate(snn, x, T, mode="step"),
            "SNN single-step, unfused (the default before)": lambda: simulate(snn, x, T, mode="step", fuse=False)}
    compiled, why, compile_s = None, None, None
    if not p["compile"]:
        why = "not measured in this profile"
    else:
        compiled = copy.deepcopy(snn)
        why = set_compiled(compiled, True)
        if why is None:
            t0 = time.perf_counter()
            simulate(compiled, x, 1, mode="step")  # compiles the kernels (once per process)
            compile_s = time.perf_counter() - t0
            runs["SNN single-step, compiled kernels"] = lambda: simulate(compiled, x, T, mode="step")
        else:
            compiled = None
    runs["SNN multi-step, chunk auto"] = lambda: simulate(snn, x, T, mode="multi")
    for c in sorted({1, 2, 4, T}):  # what a user asking for chunk c gets: at most c, by memory
        runs[f"SNN multi-step, chunk ≤ {c}"] = (lambda c=c: simulate(snn, x, T, mode="multi", chunk=c))
    stock_note = None
    if str(device) == "cpu" and name.startswith("sjunet"):
        try:
            peer = convert_stock(ann, [x]).to(device)
            runs["stock RateCodingRecipe SNN, multi-step chunk 4"] = lambda: simulate(
                peer, x, T, mode="multi", chunk=4, cap_chunk=False)
        except Exception as e:  # noqa: BLE001 - the peer does not convert every model
            stock_note = f"stock converter: {type(e).__name__}: {str(e)[:100]}"
    with torch.no_grad():
        med, times = interleaved_medians(runs, p["reps"], sync)
        parts = {"ANN forward": step_breakdown(lambda: ann(x)),
                 "SNN single-step, eager": step_breakdown(lambda: simulate(snn, x, T, mode="step"))}
        if compiled is not None:
            parts["SNN single-step, compiled"] = step_breakdown(lambda: simulate(compiled, x, T, mode="step"))
        ref = simulate(snn, x, [1, 2, T], fuse=False)
        got = simulate(snn, x, [1, 2, T])
    rounding = {t: {"max_abs": float((got[t] - ref[t]).abs().max()), "scale": float(ref[t].abs().max()),
                    "differ": float(((got[t] - ref[t]).abs() > 1e-6).float().mean())} for t in ref}
    return {"model": name, "medians": med, "times": times, "compile_s": compile_s, "compile_note": why,
            "auto_chunk": auto_chunk(snn, x, T), "breakdown": parts, "stock_note": stock_note,
            "fused_layers": chains, "neuron_layers": sum(1 for m in snn.modules() if is_neuron(m)),
            "rounding": rounding}


def _crossover(ann, p: dict, device: str, sync) -> list[dict]:
    """Per-step cost of multi-step chunks over single steps, by image size (sjunet's U-Net)."""
    import torch

    from sjunet.snn.simulation import auto_chunk, simulate

    from .common import interleaved_medians

    T = max(p["T"], 8)
    rows = []
    for size in p["crossover"]:
        x = torch.rand(1, 1, size, size, device=device)
        snn = _snn(ann, x, device)
        runs = {"step": lambda: simulate(snn, x, T, mode="step"), "auto": lambda: simulate(snn, x, T, mode="multi")}
        for c in (2, 4, 8):
            runs[c] = (lambda c=c: simulate(snn, x, T, mode="multi", chunk=c, cap_chunk=False))  # exactly c
        with torch.no_grad():
            med, _ = interleaved_medians(runs, max(2, p["reps"] - 2), sync)
        rows.append({"size": size, "step_s": med["step"] / T, "auto_chunk": auto_chunk(snn, x, T),
                     "ratios": {str(k): v / med["step"] for k, v in med.items()}})
    return rows


def run(profile: str = "cpu", model: str | None = None, data: str | None = None, device: str = "cpu") -> dict:
    import torch

    from sjunet.layers.buffers import cache_bytes

    from .common import PARTS, write_results

    p = PROFILES[profile]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    models, monai_note = _models(p, model)
    if data:
        from sjunet.data import get_dataset

        x = get_dataset("em", data, "test")[0][0].unsqueeze(0)
        what = "EM test image 0"
    else:
        x = torch.rand(1, 1, p["size"], p["size"])
        what = "random image"
    x = x.to(device)
    T = p["T"]
    results = []
    for name, ann in models:
        results.append(_rows(name, ann.to(device), x, p, device, sync))
    lines = [f"Step cost ({profile} profile, device {device}, {what} {tuple(x.shape)}, T={T}, medians of {p['reps']} "
             f"interleaved repetitions, {torch.get_num_threads()} threads)", ""]
    for r in results:
        med = r["medians"]
        ann_s = med["ANN forward"]
        lines += [f"### {r['model']}", "", "| run | s/image | s per step | step / ANN forward |", "|---|---|---|---|"]
        for k, v in med.items():
            steps = 1 if k.startswith("ANN forward") else T
            label = f"{k} (chunk {r['auto_chunk']})" if k.endswith("chunk auto") and r["auto_chunk"] else k
            lines.append(f"| {label} | {v:.4f} | {v / steps:.4f} | {v / steps / ann_s:.3f} |")
        lines.append("")
        if r["compile_s"] is not None:
            lines.append(f"Compiled kernels: first compiled run (T=1, compiling) took {r['compile_s']:.1f} s.")
        else:
            lines.append(f"Compiled kernels: skipped — {r['compile_note']}.")
        if r["stock_note"]:
            lines.append(r["stock_note"])
        lines.append("")
        if r["fused_layers"]:
            lines.append(f"Fused synapses (the default single step, `sjunet.snn.fusion`): {r['fused_layers']} of "
                         f"{r['neuron_layers']} neuron layers, channels-last. Against the unfused run (the same "
                         "network, the same image): " + "; ".join(
                             f"T={t}: max |Δ| {d['max_abs']:.2g} (outputs up to {d['scale']:.2g}), "
                             f"{100 * d['differ']:.2f} % of outputs differ" for t, d in r["rounding"].items())
                         + " — float rounding: a membrane at a threshold fires one step apart.")
        else:
            why = (f"fewer than half of {r['neuron_layers']} neuron layers fed by a fusable convolution"
                   if str(device) == "cpu" else "a CPU with oneDNN only")
            lines.append(f"Fused synapses: not used ({why}); the default single step is the unfused one.")
        lines += ["", "Profile breakdown (torch.profiler, share of the run's CPU time; ANN: activations as 'neuron'):",
                  "", "| run | " + " | ".join(PARTS) + " |", "|---|" + "---|" * len(PARTS)]
        for k, b in r["breakdown"].items():
            lines.append(f"| {k} | " + " | ".join(f"{100 * b[part]:.1f} %" for part in PARTS) + " |")
        lines.append("")
    cross = _crossover(models[0][1], p, device, sync)
    lines += [f"### Crossover: multi-step chunks against single steps ({models[0][0]}, random images; per-step time "
              f"÷ single-step per-step time; cache budget {cache_bytes(device) / 2**20:.0f} MiB)", "",
              "| image | single step (s) | chunk 2 | chunk 4 | chunk 8 | auto (its chunk) |", "|---|---|---|---|---|---|"]
    for c in cross:
        rt = c["ratios"]
        lines.append(f"| {c['size']}² | {c['step_s']:.4f} | {rt['2']:.3f} | {rt['4']:.3f} | {rt['8']:.3f} | "
                     f"{rt['auto']:.3f} ({c['auto_chunk']}) |")
    if monai_note:
        lines += ["", monai_note]
    table = "\n".join(lines)
    path = write_results("step_cost", profile, table, {"profile": profile, "settings": p, "model": model,
                                                       "input": what, "results": results, "crossover": cross})
    return {"table": table, "path": str(path)}
