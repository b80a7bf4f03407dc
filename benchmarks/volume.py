"""3-D U-Nets on volumes: conversion, fine-tuning, memory and energy (spec §14).

    python -m sjunet.benchmarks volume --profile smoke|cpu [--data ../shared/data] [--device cuda] [--only a,b]

Per architecture — MONAI ``BasicUNet(spatial_dims=3, act="relu", norm="batch")``, MONAI
``BasicUNet(spatial_dims=3)`` with its defaults (LeakyReLU + InstanceNorm: the conversion fixes the
norms' deviations, so the *approximation gap* — the metric of the ANN the SNN implements beside the
original ANN's — is a column, as in :mod:`.zoo`) and nnU-Net's ``PlainConvUNet`` in 3-D with
BatchNorm3d/ReLU and an anisotropic first stage (kernel (1, 3, 3), stride (1, 1, 1), then pooling
strides (1, 2, 2) and (2, 2, 2): :func:`sjunet.models.nnunet.anisotropic_plain_conv_unet`):

* the ANN, trained briefly on random crops of the training block, and its test metric — the task's
  headline metric (``task.metric``: membrane F1 on ``em3d``), on the whole test volume
  ([1, 30, 512, 256]: padded per axis to the network's size multiples, tiled where memory needs
  it, cropped back);
* the connection-wise MT conversion at T = 2, 4, 8 (value, × ANN, voxel agreement with the ANN),
  from one simulation that also counts the energy (:func:`sjunet.evaluation.energy.energy_frontier`): the
  SNN / ANN energy ratio at T = 4 under the paper's convention (first-layer MACs + spikes × E_AC);
* spiking-flow fine-tuning at T = 2 (:func:`sjunet.training.finetuning.finetune`, a minutes budget), × ANN;
* the peak memory of one training step on a batch of training crops: spiking flow and BPTT at
  T = 2 and T = 8, each figure in its own process (as :mod:`.flow_vs_bptt`: on the CPU the peak
  resident set above the state after set-up, with large blocks returned to the OS when freed so
  it tracks the live tensors; on CUDA ``max_memory_allocated``), as a ratio to one ANN training
  step — flow's ratio stays flat in T, BPTT's grows with it.

Profiles: ``smoke`` (``demo-seg3d``, tiny, one architecture, memory at T = 2 only) and ``cpu``
(``em3d``; width 8, ANN training ~4 min and fine-tuning ~2 min per architecture, under ~40 min
for the three on one core). Every stage is cached per architecture under
``results/volume-<profile>/<arch>/`` (ANN, statistics, SNNs) and a finished architecture's row is
reused when the settings and the ANN fingerprint match, so an interrupted run resumes where it
stopped (delete an architecture's directory to run it again).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

#: name -> (architecture factory, kwargs given the base width w)
ARCHITECTURES = {
    "monai-BasicUNet-3d": ("monai.networks.nets:BasicUNet", lambda w: dict(
        spatial_dims=3, in_channels=1, out_channels=2, act="relu", norm="batch",
        features=(w, w, 2 * w, 4 * w, 8 * w, w))),
    "monai-BasicUNet-3d-defaults": ("monai.networks.nets:BasicUNet", lambda w: dict(
        spatial_dims=3, in_channels=1, out_channels=2, features=(w, w, 2 * w, 4 * w, 8 * w, w))),
    "nnunet-PlainConvUNet-3d-anisotropic": ("sjunet.models.nnunet:anisotropic_plain_conv_unet", lambda w: dict(
        input_channels=1, num_classes=2, n_stages=4, base_features=w)),
    # issue 26 (Σ-Δ neurons): attention gates, and a transformer encoder of one input size (evaluated by
    # non-overlapping tiles of that size covering the whole test volume)
    "monai-AttentionUnet-3d": ("monai.networks.nets:AttentionUnet", lambda w: dict(
        spatial_dims=3, in_channels=1, out_channels=2, channels=(w, 2 * w, 4 * w, 8 * w, 16 * w), strides=(2, 2, 2, 2))),
    "monai-UNETR-3d": ("sjunet.models.zoo_nets:unetr", lambda w: dict(
        in_channels=1, out_channels=2, img_size=(16, 64, 64), spatial_dims=3, feature_size=w, hidden_size=12 * w,
        mlp_dim=24 * w, num_heads=4), {"protocol": {"name": "tiled", "tile": 16, "overlap": 0}}),
}

PROFILES = {
    "smoke": dict(dataset="demo-seg3d", data_options={"size": [32, 32, 32], "num_items": 4}, train_options={},
                  width=4, epochs=1, train_minutes=None, T=[2, 4, 8], energy_T=4, ft_T=2, ft_epochs=1,
                  ft_minutes=None, ft_iters=1, limit=1, batch=2, lr=5e-3, trial_iters=1, memory_T=[2],
                  memory_batch=1, archs=["monai-BasicUNet-3d-defaults"]),
    # crops of 16 sections: BasicUNet pools every axis 4 times (multiples of 16 per axis)
    "cpu": dict(dataset="em3d", data_options={}, train_options={"crop": [16, 64, 64], "samples_per_epoch": 64},
                width=8, epochs=200, train_minutes=4.0, T=[2, 4, 8], energy_T=4, ft_T=2, ft_epochs=50,
                ft_minutes=2.0, ft_iters=None, limit=None, batch=4, lr=2e-3, trial_iters=10, memory_T=[2, 8],
                memory_batch=2),
    # issue 26's 3-D rows: the cpu profile's budget, without the memory columns
    "sigma": dict(dataset="em3d", data_options={}, train_options={"crop": [16, 64, 64], "samples_per_epoch": 64},
                  width=8, epochs=200, train_minutes=4.0, T=[2, 4, 8], energy_T=8, ft_T=2, ft_epochs=50,
                  ft_minutes=2.0, ft_iters=None, limit=None, batch=4, lr=2e-3, trial_iters=10, memory_T=[],
                  memory_batch=2, archs=["monai-AttentionUnet-3d", "monai-UNETR-3d"]),
}


def _ann(name: str, p: dict, out: Path, data, device: str):
    """The architecture's ANN: cached in ``out/ann.pt`` when trained with the same options."""
    from sjunet.training import TrainOptions

    from .common import cached_ann

    factory, kwargs = ARCHITECTURES[name][:2]
    path = out / "ann.pt"
    opts = TrainOptions(dataset=p["dataset"], data=data, output=str(path), epochs=p["epochs"], batch_size=p["batch"],
                        optimizer="adam", lr=p["lr"], max_minutes=p["train_minutes"], device=device, seed=0,
                        dataset_options={**p["data_options"], **p["train_options"]}, arch=factory,
                        arch_kwargs=kwargs(p["width"]), protocol=_protocol(name))
    return cached_ann(opts, factory)  # the benchmark chose the factory, not the file


def _protocol(name: str) -> dict | None:
    """How the architecture is evaluated: None (whole volumes, tiled where memory needs it), or its own
    (a network of one input size: non-overlapping tiles of that size)."""
    return (ARCHITECTURES[name][2:] or [{}])[0].get("protocol")


def _row(name: str, p: dict, out: Path, data, device: str) -> dict:
    from sjunet.conversion.recipe import convert, load_snn, save_snn
    from sjunet.data import get_dataset
    from sjunet.evaluation import evaluate_model, evaluate_snn
    from sjunet.evaluation.energy import energy_frontier
    from sjunet.snn import size_rule
    from sjunet.tasks import task_for
    from sjunet.training.finetuning import FinetuneOptions, finetune

    from .common import cached_stats
    from .zoo import _implemented_ann

    t0 = time.perf_counter()
    ann, ckpt = _ann(name, p, out, data, device)
    minutes = {"train": ckpt.get("history", [{}])[-1].get("minutes")}
    train_options = {**p["data_options"], **p["train_options"]}
    stats = cached_stats(ann, out / "stats.h5", p["dataset"], data, train_options, device, batch_size=p["batch"])
    test = get_dataset(p["dataset"], data, "test", **p["data_options"])
    task = task_for(test)
    multiples = size_rule(ann, test.in_channels)
    row: dict = {"arch": name, "ann_fingerprint": ckpt["fingerprint"], "metric": task.metric,
                 "params": sum(x.numel() for x in ann.parameters()), "size_multiples": list(multiples),
                 "test_shape": list(test[0][0].shape)}
    snn = convert(ann, stats, norm="connection", neuron="mt", accept_gap=True)  # the gap is a column
    snn.record.task = ckpt.get("task")
    snn_path = save_snn(snn, out / "snn_connection.safetensors", {"model": str(out / "ann.pt")})
    steps = sorted(set(p["T"]) | {p["energy_T"]})
    t1 = time.perf_counter()
    # one simulation: metrics at every T (whole volume, padded per axis to the SNN's size multiples) and energy
    frontier = energy_frontier(snn, test, steps, ann=ann, limit=p["limit"], device=device, protocol=_protocol(name))
    minutes["evaluate"] = (time.perf_counter() - t1) / 60
    row["ann"] = frontier["ann"]
    row["connection"] = {t: v["metrics"] for t, v in frontier["T"].items()}
    row["energy"] = {t: v["energy"] for t, v in frontier["T"].items()}
    row["protocol"] = frontier["protocol"]
    approx = snn.record.conversion.approximations or []
    row["approximations"] = approx
    if approx:  # the ANN the SNN implements (fixed deviations), on the same test volume
        row["approx_ann"] = evaluate_model(_implemented_ann(load_snn(snn_path)[0]), test, task, device=device,
                                           limit=p["limit"], progress=False, protocol=_protocol(name))
    t1 = time.perf_counter()
    ft_path = out / f"snn_ft_T{p['ft_T']}.safetensors"
    _, s = finetune(load_snn(snn_path)[0], FinetuneOptions(dataset=p["dataset"], data=data, output=str(ft_path), T=p["ft_T"],
                                 epochs=p["ft_epochs"], batch_size=p["batch"], max_minutes=p["ft_minutes"],
                                 max_iters=p.get("ft_iters"), device=device, dataset_options=train_options,
                                 lr_trial_iters=p.get("trial_iters", 20), val_limit=p["limit"],
                                 protocol=_protocol(name)),
                 progress=False, force=True)
    minutes["finetune"] = (time.perf_counter() - t1) / 60
    ft = evaluate_snn(load_snn(ft_path)[0], test, [p["ft_T"]], task, limit=p["limit"], progress=False,
                      device=device, protocol=_protocol(name))  # × ANN only: no second ANN pass over the volume
    row["finetuned"] = ft["T"][str(p["ft_T"])]
    row["finetune"] = {"improved": s["improved"], "best_at": s["best"]["at"], "steps": s.get("step")}
    t1 = time.perf_counter()
    row["memory"] = _memory(name, p, out, data, device, snn_path)
    minutes["memory"] = (time.perf_counter() - t1) / 60
    minutes["total"] = (time.perf_counter() - t0) / 60
    row["minutes"] = minutes
    return row


def _memory(name: str, p: dict, out: Path, data, device: str, snn_path: Path) -> dict:
    """Peak memory of one training step: the ANN's, and spiking flow / BPTT of the converted SNN at
    each of the profile's ``memory_T`` (each in its own process)."""
    from .common import run_worker

    cuda = str(device).startswith("cuda")
    common = {"arch": name, "out": str(out), "snn": str(snn_path), "dataset": p["dataset"], "data": data,
              "options": {**p["data_options"], **p["train_options"]}, "batch": p["memory_batch"],
              "device": device, "live": not cuda}
    rows = [run_worker(__spec__.name, {**common, "method": "ann"})]
    for T in p["memory_T"]:
        for method in ("flow", "bptt"):
            rows.append(run_worker(__spec__.name, {**common, "method": method, "T": T}))
    ann = rows[0]["peak_increase_mb"]
    ratios = {m: {str(r["T"]): r["peak_increase_mb"] / max(ann, 1e-9) for r in rows[1:] if r["method"] == m}
              for m in ("flow", "bptt")}
    return {"ann_mb": ann, "memory": rows[0]["memory"], "rows": rows, "ratio": ratios}


def worker(cfg: dict) -> dict:
    """One training step's peak memory (module docstring), printed as a JSON line."""
    from .common import live_memory_allocator, measure_steps, training_step

    live = bool(cfg.get("live")) and live_memory_allocator()  # before torch allocates anything
    import torch

    from sjunet.conversion.recipe import load_snn
    from sjunet.data import get_dataset
    from sjunet.models.checkpoint import load_ann
    from sjunet.tasks import task_for

    torch.manual_seed(0)
    device = cfg["device"]
    ds = get_dataset(cfg["dataset"], cfg["data"], "train", seed=0, **cfg["options"])
    items = [ds[i] for i in range(cfg["batch"])]
    x = torch.stack([a for a, _ in items]).to(device)
    y = torch.stack([b for _, b in items]).to(device)
    task = task_for(ds)
    method, T = cfg["method"], cfg.get("T", 0)
    if method == "ann":
        ann = load_ann(Path(cfg["out"]) / "ann.pt", trust_arch=ARCHITECTURES[cfg["arch"]][0])[0].to(device)
        step = training_step(method, task, x, y, ann=ann)
    else:
        step = training_step(method, task, x, y, T, snn=load_snn(cfg["snn"])[0].to(device))
    # two steps: the first also allocates the optimiser's state
    return {"method": method, "T": T, "batch": list(x.shape), **measure_steps(step, device, 1, live)}


def run(profile: str = "cpu", model=None, data=None, device: str = "cpu", only: str | None = None) -> dict:
    """The volume table on the profile's dataset; ``only``: comma-separated architecture names."""
    from .common import architecture_table

    p = dict(PROFILES[profile])
    return architecture_table("volume", profile, p, ARCHITECTURES, lambda name, out: _row(name, p, out, data, device),
                              lambda rows: _table(rows, p), only)


def _table(rows: list[dict], p: dict) -> str:
    from .common import ratio

    key = rows[0]["metric"]
    lines = [f"3-D U-Nets on {p['dataset']} ({key} on the whole test volume; cells: value (× ANN, voxel agreement "
             f"with the ANN); width {p['width']}, ANN {p['train_minutes']} min, fine-tuning {p['ft_minutes']} min at "
             f"T = {p['ft_T']}; connection-wise MT)", "",
             "| architecture | ANN | ANN the SNN implements (approximation gap) | "
             + " | ".join(f"T={t}" for t in p["T"]) + f" | fine-tuned T={p['ft_T']} | energy SNN/ANN "
             f"T={p['energy_T']} (paper) | not accumulate: share of energy, paper / SOP |",
             "|---|---|---|" + "---|" * (len(p["T"]) + 3)]
    for r in rows:
        a = r["ann"][key]
        gap = f"{r['approx_ann'][key]:.4f} ({ratio(r['approx_ann'][key], a):.3f})" if r.get("approx_ann") else "exact"
        cells = [f"{r['connection'][str(t)][key]:.4f} ({ratio(r['connection'][str(t)][key], a):.3f}, "
                 f"{100 * r['connection'][str(t)].get('agreement', float('nan')):.1f} %)" for t in p["T"]]
        ft = r["finetuned"][key]
        e = r["energy"][str(p["energy_T"])]["ratios"].get("paper", float("nan"))
        sh = r["energy"][str(p["energy_T"])].get("mac_share") or {}
        share = (f"{100 * sh['paper']['energy']:.1f} % / {100 * sh['sop']['energy']:.1f} %" if sh else "–")
        lines.append(f"| {r['arch']} | {a:.4f} | {gap} | " + " | ".join(cells) +
                     f" | {ft:.4f} ({ratio(ft, a):.3f}) | {e:.3f} | {share} |")
    mem = rows[0]["memory"]
    Ts = p["memory_T"]
    lines += ["", f"Peak memory of one training step ({mem['memory']}; batch of "
                  f"{'x'.join(map(str, mem['rows'][0]['batch']))})" + (", × one ANN training step:" if Ts else ":"),
              "", "| architecture | ANN step MB |" + "".join(f" flow T={t} |" for t in Ts)
              + "".join(f" BPTT T={t} |" for t in Ts), "|---|---|" + "---|" * (2 * len(Ts))]
    for r in rows:
        m = r["memory"]
        lines.append(f"| {r['arch']} | {m['ann_mb']:.0f} |" + "".join(f" {m['ratio']['flow'][str(t)]:.2f} |" for t in Ts)
                     + "".join(f" {m['ratio']['bptt'][str(t)]:.2f} |" for t in Ts))
    lines += ["", "| architecture | parameters | size multiples (D, H, W) | test protocol | minutes (training to its best "
                  "checkpoint / evaluate / fine-tune / memory / whole row) |", "|---|---|---|---|---|"]
    for r in rows:
        m, pr = r["minutes"], r["protocol"]
        proto = pr["protocol"] + (f" ({pr['windows_per_image']:.0f} tiles)" if pr["protocol"] == "tiled" else "")
        lines.append(f"| {r['arch']} | {r['params']:,} | {'x'.join(map(str, r['size_multiples']))} | {proto} | "
                     f"{(m.get('train') or 0):.1f} / {m['evaluate']:.1f} / {m['finetune']:.1f} / {m['memory']:.1f} / "
                     f"{m['total']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
