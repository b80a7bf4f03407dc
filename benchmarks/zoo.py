"""The U-Nets people already have (spec §11), defaults first: the PyTorch-UNet layout (shape-computed
``F.pad`` before each ``cat``, bilinear up-sampling), MONAI ``BasicUNet`` with its defaults
(LeakyReLU + InstanceNorm), nnU-Net's ``PlainConvUNet`` with its defaults (LeakyReLU +
InstanceNorm), then MONAI BasicUNet and UNet (residual units) with BatchNorm/ReLU,
segmentation_models_pytorch Unet(resnet18) and sjunet's own U-Net with MaxPool — each trained
briefly, then calibrated → converted (connection- and layer-wise, MT) → evaluated at several T →
fine-tuned, beside SpikingJelly's stock ``RateCodingRecipe`` where it converts at all. For models
whose conversion approximates (instance/group norm with a fixed deviation), the *approximation
gap* is the metric of the ANN the SNN implements (rebuilt from the SNN) beside the original ANN's.
Every ratio (× ANN) is against the original ANN.

    python -m sjunet.benchmarks zoo --profile smoke|cpu|paper [--data ../shared/data] [--device cuda] [--only a,b]

Every stage is cached per architecture under ``results/zoo-<profile>/<arch>/`` (ANN, statistics)
and a finished architecture's row is reused when the settings and the ANN are unchanged, so an
interrupted run resumes where it stopped (delete an architecture's directory to run it again).
``--dataset`` picks another binary segmentation set than the profile's.
"""
from __future__ import annotations

import time
from pathlib import Path

#: name -> (architecture factory or None for sjunet's U-Net, kwargs given the base width w[, extras]); defaults
#: first. ``extras["fixed_size"]``: a model of one input size (a ViT's position embeddings): calibrated on
#: crops of that size and evaluated by windows of it covering each whole test image (the patch protocol)
ARCHITECTURES = {
    "pytorch-unet-bilinear": ("sjunet.models.zoo_nets:PadCatUNet", lambda w, d: dict(
        n_channels=1, n_classes=2, bilinear=True, width=w, depth=d)),
    "monai-BasicUNet-defaults": ("monai.networks.nets:BasicUNet", lambda w, d: dict(
        spatial_dims=2, in_channels=1, out_channels=2, features=(w, w, 2 * w, 4 * w, 8 * w, w))),
    "nnunet-PlainConvUNet-defaults": ("sjunet.models.nnunet:plain_conv_unet", lambda w, d: dict(
        input_channels=1, num_classes=2, n_stages=d + 1, base_features=w)),
    "sjunet-maxpool": (None, lambda w, d: {}),
    "monai-BasicUNet": ("monai.networks.nets:BasicUNet", lambda w, d: dict(
        spatial_dims=2, in_channels=1, out_channels=2, act="relu", norm="batch",
        features=(w, w, 2 * w, 4 * w, 8 * w, w))),
    "monai-UNet-residual": ("monai.networks.nets:UNet", lambda w, d: dict(
        spatial_dims=2, in_channels=1, out_channels=2, channels=tuple(w * 2 ** i for i in range(d + 1)),
        strides=(2,) * d, num_res_units=2, act="relu", norm="batch")),
    "smp-Unet-resnet18": ("segmentation_models_pytorch:Unet", lambda w, d: dict(  # width 16: smp's defaults
        encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=2,
        decoder_channels=tuple(w * 2 ** i for i in reversed(range(5))))),
    # issue 26: attention gates, squeeze-excitation + SiLU, a transformer encoder (Σ-Δ neurons)
    "monai-AttentionUnet": ("monai.networks.nets:AttentionUnet", lambda w, d: dict(
        spatial_dims=2, in_channels=1, out_channels=2, channels=tuple(w * 2 ** i for i in range(d + 1)),
        strides=(2,) * d)),
    "smp-Unet-efficientnet-b0": ("segmentation_models_pytorch:Unet", lambda w, d: dict(
        encoder_name="efficientnet-b0", encoder_weights=None, in_channels=1, classes=2,
        decoder_channels=tuple(w * 2 ** i for i in reversed(range(5))))),
    "monai-UNETR-2d": ("sjunet.models.zoo_nets:unetr", lambda w, d: dict(  # feature size w, a 12-layer ViT of width 12w
        in_channels=1, out_channels=2, img_size=(128, 128), spatial_dims=2, feature_size=w, hidden_size=12 * w,
        mlp_dim=24 * w, num_heads=4), {"fixed_size": 128}),
}

#: the architectures of issue 26 (Σ-Δ neurons), the rows of profile ``sigma``
SIGMA_ARCHS = ["monai-AttentionUnet", "smp-Unet-efficientnet-b0", "monai-UNETR-2d"]

PROFILES = {
    "smoke": dict(dataset="demo-seg", data_options={"size": 32, "num_items": 8}, train_options={},
                  width=4, depth=3, epochs=8, train_minutes=None, T=[2, 4, 8], layer_T=4, ft_T=2, ft_epochs=1,
                  ft_minutes=None, limit=2, batch=4, lr=5e-3, stock_T=[4, 8], trial_iters=2,
                  archs=["monai-BasicUNet-defaults"],  # LeakyReLU + InstanceNorm: the approximation path
                  coverage=["sjunet-UNet", "monai-AttentionUnet"]),
    "cpu": dict(dataset="em", data_options={}, train_options={"crop": 128, "samples_per_epoch": 160},
                width=16, depth=4, epochs=200, train_minutes=4.0, T=[2, 4, 8, 16], layer_T=16, ft_T=4,
                ft_epochs=50, ft_minutes=3.0, limit=5, batch=4, lr=1e-3, stock_T=[16, 64]),
    # issue 26's rows: the cpu profile's budget (issue 19), fine-tuned at T = 2, with energy shares
    "sigma": dict(dataset="em", data_options={}, train_options={"crop": 128, "samples_per_epoch": 160},
                  width=16, depth=4, epochs=200, train_minutes=4.0, T=[2, 4, 8, 16], layer_T=16, ft_T=2,
                  ft_epochs=50, ft_minutes=3.0, limit=5, batch=4, lr=1e-3, stock_T=[16, 64], archs=SIGMA_ARCHS,
                  energy_T=[4, 8]),
    "gpu": dict(dataset="em", data_options={}, train_options={"crop": 256, "samples_per_epoch": 400},
                width=64, depth=4, epochs=200, train_minutes=5.0, T=[5, 10, 20, 50], layer_T=20, ft_T=5,
                ft_epochs=100, ft_minutes=2.0, limit=None, batch=8, lr=5e-4, stock_T=[20, 50]),
    "paper": dict(dataset="em", data_options={}, train_options={"crop": 256, "samples_per_epoch": 400},
                  width=64, depth=4, epochs=200, train_minutes=10.0, T=[5, 10, 20, 50], layer_T=20, ft_T=5,
                  ft_epochs=100, ft_minutes=5.0, limit=None, batch=8, lr=1e-3, stock_T=[20, 50]),
}


def _ann(name: str, p: dict, out: Path, data, device: str):
    """The architecture's ANN: cached in ``out/ann.pt`` when trained with the same options."""
    from sjunet.training import TrainOptions

    from .common import cached_ann

    factory, kwargs = ARCHITECTURES[name][:2]
    path = out / "ann.pt"
    arch = dict(arch=factory, arch_kwargs=kwargs(p["width"], p["depth"])) if factory else dict(
        pool="max", width=p["width"], depth=p["depth"])
    fixed = (ARCHITECTURES[name][2:] or [{}])[0].get("fixed_size")
    opts = TrainOptions(dataset=p["dataset"], data=data, output=str(path), epochs=p["epochs"], batch_size=p["batch"],
                        optimizer="adam", lr=p["lr"], max_minutes=p["train_minutes"], device=device, seed=0,
                        dataset_options={**p["data_options"], **p["train_options"]},
                        protocol={"name": "patch", "patch": fixed, "stride": fixed} if fixed else None, **arch)
    return cached_ann(opts, factory)  # the benchmark chose the factory, not the file


def _row(name: str, p: dict, out: Path, data, device: str) -> dict:
    from torch.utils.data import DataLoader

    from sjunet.conversion.recipe import convert, convert_stock, load_snn, save_snn
    from sjunet.data import get_dataset
    from sjunet.evaluation import evaluate_snn
    from sjunet.snn import size_rule
    from sjunet.tasks import task_for
    from sjunet.training.finetuning import FinetuneOptions, finetune

    from .common import cached_stats

    t0 = time.perf_counter()
    ann, ckpt = _ann(name, p, out, data, device)
    minutes = {"train": ckpt.get("history", [{}])[-1].get("minutes")}
    fixed = (ARCHITECTURES[name][2:] or [{}])[0].get("fixed_size")
    calib_options = {**p["data_options"], "crop": fixed} if fixed else p["data_options"]
    stats = cached_stats(ann, out / "stats.h5", p["dataset"], data, calib_options, device)
    test = get_dataset(p["dataset"], data, "test", **p["data_options"])
    task = task_for(test)
    ev = dict(reference=ann, limit=p["limit"], progress=False, device=device,
              multiple=fixed or size_rule(ann, 1))
    if fixed:  # whole test images, by windows of the model's one input size
        ev["protocol"] = {"name": "patch", "patch": fixed, "stride": fixed}
    row: dict = {"arch": name, "ann_fingerprint": ckpt["fingerprint"], "params": sum(x.numel() for x in ann.parameters())}
    paths = {}
    for norm in ("connection", "layer"):
        snn = convert(ann, stats, norm=norm, neuron="mt", accept_gap=True)  # the gap is a column of the table
        snn.record.task = ckpt.get("task")
        paths[norm] = save_snn(snn, out / f"snn_{norm}.safetensors", {"model": str(out / "ann.pt")})
        T = p["T"] if norm == "connection" else [p["layer_T"]]
        if norm == "connection" and p.get("energy_T"):  # metrics and energy from one simulation
            from sjunet.evaluation.energy import energy_frontier

            fr = energy_frontier(snn, test, sorted(set(T) | set(p["energy_T"])), ann=ann, limit=p["limit"],
                                 multiple=ev["multiple"], device=device, protocol=ev.get("protocol"))
            row[norm] = {"T": {t: v["metrics"] for t, v in fr["T"].items()}, "ann": fr["ann"]}
            row["energy"] = {t: {k: fr["T"][str(t)]["energy"][k] for k in ("ratios", "mac_share", "neuron_ops",
                                                                           "graded_macs", "spikes", "sops")}
                             for t in p["energy_T"]}
        else:
            row[norm] = evaluate_snn(snn, test, T, task, **ev)
        row["gains"] = len(snn.record.conversion.gains) if norm == "connection" else row["gains"]
        row["spiking_maxpools"] = sum(v["type"] == "SpikingMaxPool2d" for v in snn.record.graph["modules"].values())
    row["ann"] = row["connection"]["ann"]
    approx = (load_snn(paths["connection"])[1].get("conversion") or {}).get("approximations") or []
    row["approximations"] = approx
    if approx and p.get("energy_T"):  # the exact route of the norms: Σ-Δ group-norm neurons, no gap
        exact = convert(ann, stats, norm="connection", neuron="mt", norms="exact")
        row["exact"] = evaluate_snn(exact, test, p["energy_T"], task, **ev)
    if approx:  # the ANN the SNN implements (fixed deviations), on the same test images
        from sjunet.evaluation import evaluate_model

        row["approx_ann"] = evaluate_model(_implemented_ann(load_snn(paths["connection"])[0]), test, task,
                                           device=device, limit=p["limit"], progress=False, multiple=ev["multiple"],
                                           protocol=ev.get("protocol"))  # a ViT's windows, as the others
    t1 = time.perf_counter()
    ft_path = out / f"snn_ft_T{p['ft_T']}.safetensors"
    _, s = finetune(load_snn(paths["connection"])[0], FinetuneOptions(dataset=p["dataset"], data=data, output=str(ft_path),
                                 T=p["ft_T"], epochs=p["ft_epochs"], batch_size=p["batch"], max_minutes=p["ft_minutes"],
                                 device=device, dataset_options={**p["data_options"], **p["train_options"]},
                                 lr_trial_iters=p.get("trial_iters", 20), protocol=ev.get("protocol")),
                 progress=False, force=True)
    minutes["finetune"] = (time.perf_counter() - t1) / 60
    row["finetuned"] = evaluate_snn(load_snn(ft_path)[0], test, [p["ft_T"]], task, **ev)
    row["finetune"] = {"improved": s["improved"], "best_at": s["best"]["at"], "steps": s.get("step")}
    try:
        train = get_dataset(p["dataset"], data, "train", **p["data_options"])
        peer = convert_stock(ann, DataLoader(train, batch_size=2), mode="99.9%")
        row["stock"] = evaluate_snn(peer, test, p["stock_T"], task, **ev)
    except Exception as e:  # noqa: BLE001 - the peer's refusal is a result
        row["stock"], row["stock_error"] = None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    minutes["total"] = (time.perf_counter() - t0) / 60
    row["minutes"] = minutes
    return row


def _implemented_ann(snn):
    """The ANN an SNN implements (its graph with every neuron as its activation), as a module."""
    import torch
    from torch import nn

    from sjunet.snn import size_rule
    from sjunet.snn.model import shape_rule
    from sjunet.training.distill import Teacher

    fixed = (shape_rule(snn) or {}).get("shape")  # a network of one input size: windows of exactly it

    class ImplementedAnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.teacher = Teacher(snn)
            self.net = self.teacher.net  # registered, so .to(device) moves it
            self.size_multiple = tuple(int(v) for v in fixed) if fixed else size_rule(snn)

        def forward(self, x):
            with torch.no_grad():
                return self.teacher(x)[0]

    return ImplementedAnn()


def _lines(row: dict, p: dict, key: str, agree: str) -> str:
    from .common import ratio

    a = row["ann"][key]
    conv = row["connection"]["T"]
    cells = [f"{conv[str(t)][key]:.4f} ({ratio(conv[str(t)][key], a):.3f}, {100 * conv[str(t)].get(agree, float('nan')):.1f} %)"
             if agree == "agreement" else f"{conv[str(t)][key]:.4f} ({ratio(conv[str(t)][key], a):.3f})" for t in p["T"]]
    lay = row["layer"]["T"][str(p["layer_T"])][key]
    ft = row["finetuned"]["T"][str(p["ft_T"])][key]
    if row["stock"] is None:
        stock = "refused¹"
    else:
        stock = ", ".join(f"{row['stock']['T'][str(t)][key]:.4f} (T={t})" for t in p["stock_T"])
    gap = (f"{row['approx_ann'][key]:.4f} ({ratio(row['approx_ann'][key], a):.3f})" if row.get("approx_ann")
           else "exact")
    return (f"| {row['arch']} | {a:.4f} | {gap} | " + " | ".join(cells) + f" | {lay:.4f} ({ratio(lay, a):.3f}) | "
            f"{ft:.4f} ({ratio(ft, a):.3f}) | {stock} |")


def run(profile: str = "cpu", model=None, data=None, device: str = "cpu", dataset: str | None = None,
        only: str | None = None) -> dict:
    """The zoo table on the profile's dataset (or ``dataset``); ``only``: comma-separated names."""
    from .common import architecture_rows, write_results

    p = dict(PROFILES[profile])
    if dataset is not None:
        p["dataset"] = dataset
    rows = architecture_rows("zoo", profile, p, ARCHITECTURES, lambda name, out: _row(name, p, out, data, device),
                             lambda rows: _table(rows, p), only)
    from .zoo_coverage import coverage
    from .zoo_coverage import table as coverage_table

    probed = coverage(p.get("coverage"))  # every configuration: converts, or refused with its causes (seconds)
    table = _table(rows, p) + "\n\nCoverage (canonical graph on a 64×64 input, untrained):\n\n" + coverage_table(probed)
    path = write_results("zoo", profile, table, {"profile": profile, "settings": p, "rows": rows,
                                                 "coverage": probed})
    return {"table": table, "rows": rows, "coverage": probed, "path": str(path)}


def _table(rows: list[dict], p: dict) -> str:
    from .common import ratio

    first = rows[0]["ann"]
    f1 = [k for k in first if k.startswith("f1_")]
    key = min(f1, key=lambda k: first[k]) if f1 else "psnr"
    agree = "agreement" if f1 else "psnr_vs_reference"
    lines = [f"Zoo on {p['dataset']} ({key}; cells: value (× ANN, pixel agreement with the ANN); width {p['width']}, "
             f"ANN {p['train_minutes']} min, fine-tuning {p['ft_minutes']} min at T = {p['ft_T']})", "",
             "| architecture | ANN | ANN the SNN implements (approximation gap) | " +
             " | ".join(f"conn. MT T={t}" for t in p["T"]) +
             f" | layer MT T={p['layer_T']} | fine-tuned T={p['ft_T']} | stock RateCodingRecipe |",
             "|---|---|---|" + "---|" * (len(p["T"]) + 3)]
    lines += [_lines(r, p, key, agree) for r in rows]
    notes = [f"{r['arch']}: {r['stock_error']}" for r in rows if r.get("stock_error")]
    if notes:
        lines += ["", "¹ SpikingJelly's stock converter refused: " + "; ".join(notes)]
    if any(r.get("exact") for r in rows):
        lines += ["", "Norms converted exactly (`norms=\"exact\"`: Σ-Δ group-norm neurons, no approximation gap):", "",
                  "| architecture | " + " | ".join(f"exact T={t}" for t in p["energy_T"]) + " |",
                  "|---|" + "---|" * len(p["energy_T"])]
        for r in rows:
            if r.get("exact"):
                a = r["ann"][key]
                lines.append(f"| {r['arch']} | " + " | ".join(
                    f"{r['exact']['T'][str(t)][key]:.4f} ({ratio(r['exact']['T'][str(t)][key], a):.3f})"
                    for t in p["energy_T"]) + " |")
    if any(r.get("energy") for r in rows):
        lines += ["", "Energy (connection-wise MT conversion; per image; Σ-Δ evaluations and layers fed by graded "
                  "currents at MAC cost in every convention): SNN / ANN energy, and the share of operations / of "
                  "energy that is not accumulate", "",
                  "| architecture | T | paper × ANN | SOP × ANN | NeuroBench × ANN | non-AC ops / energy (paper) | "
                  "non-AC ops / energy (SOP) |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            for t, e in (r.get("energy") or {}).items():
                sh, rt = e["mac_share"], e["ratios"]
                lines.append(f"| {r['arch']} | {t} | {rt['paper']:.3f} | {rt['sop']:.3f} | {rt['neurobench']:.3f} | "
                             f"{100 * sh['paper']['ops']:.1f} % / {100 * sh['paper']['energy']:.1f} % | "
                             f"{100 * sh['sop']['ops']:.1f} % / {100 * sh['sop']['energy']:.1f} % |")
    lines += ["", "| architecture | parameters | gains | spiking max-pools | minutes (training to its best checkpoint / fine-tune / whole row) |",
              "|---|---|---|---|---|"]
    for r in rows:
        m = r["minutes"]
        lines.append(f"| {r['arch']} | {r['params']:,} | {r['gains']} | {r['spiking_maxpools']} | "
                     f"{(m.get('train') or 0):.1f} / {m['finetune']:.1f} / {m['total']:.1f} |")
    return "\n".join(lines)
