"""Energy as a curve (the paper's Table 5, redone): metric against energy over T, in the paper's,
the SOP and the NeuroBench conventions, for the converted SNN, the spiking-flow fine-tuned SNN and
the spike-budget fine-tuned SNN, beside the ANN — per dataset (EM, DRIVE, BSD68 σ = 25 in the cpu
profile). Each frontier comes from one simulation per test input (:func:`sjunet.evaluation.energy.energy_frontier`).

    python -m sjunet.benchmarks energy --profile cpu --data ../shared/data [--dataset em,drive]

Reported per dataset: the frontier tables, ``energy-<profile>-<dataset>.png`` (metric against
energy, the three conventions), and the cheapest point (SOP convention) within 1 % of the ANN's
metric with its NeuroBench figure. ANNs and statistics are the paper tables' (cached); frontiers
are cached per SNN file fingerprint and settings, so a rerun only computes what is missing.
"""
from __future__ import annotations

import json

PROFILES = {
    "smoke": dict(datasets=["demo-seg"], ann_profile="smoke", T=[1, 2, 4], ft_T=2, ft_minutes=0.05, beta=1.0,
                  limit=2, val_limit=2, batch=4, trial_iters=2),
    "cpu": dict(datasets=["em", "drive", "bsd68"], ann_profile="cpu", T=[1, 2, 4, 8, 16, 50], ft_T=2, ft_minutes=3.0,
                beta=0.5, limit={"drive": 3, "*": 5}, val_limit=None, batch=4),
    "gpu": dict(datasets=["em", "drive", "bsd68"], ann_profile="gpu", T=[1, 2, 4, 8, 16, 50], ft_T=2, ft_minutes=3.0,
                beta=0.5, limit=None, val_limit=None, batch=8),
    "paper": dict(datasets=["em", "drive", "bsd68"], ann_profile="paper", T=[1, 2, 4, 8, 16, 50], ft_T=2,
                  ft_minutes=10.0, beta=0.5, limit=None, val_limit=None, batch=8),
}


def _frontier(snn_path, test, ann, p: dict, cache_path, device: str, limit) -> dict:
    from sjunet.conversion.recipe import load_snn
    from sjunet.evaluation.energy import energy_frontier
    from sjunet.io import file_fingerprint, write_json

    key = {"snn": file_fingerprint(snn_path), "T": p["T"], "limit": limit}
    if cache_path.exists():
        prev = json.loads(cache_path.read_text())
        if prev.get("key") == key:
            return prev
    snn, rec = load_snn(snn_path)
    f = energy_frontier(snn, test, p["T"], ann=ann, limit=limit, device=device)
    f["snn"] = {"path": str(snn_path), "conversion": (rec.get("conversion") or {}).get("options"),
                "finetune": bool(rec.get("finetune"))}
    f["key"] = key
    write_json(f, cache_path)
    return json.loads(cache_path.read_text())


def best_point(frontier: dict, key: str, tolerance: float = 0.01) -> dict | None:
    """The cheapest T (SOP convention) whose metric is within ``tolerance`` of the ANN's."""
    ann = frontier["ann"][key]
    ok = [(v["energy"]["ratios"]["sop"], t, v) for t, v in frontier["T"].items()
          if v["metrics"][key] >= (1 - tolerance) * ann]
    if not ok:
        return None
    sop, t, v = min(ok, key=lambda r: r[0])
    from sjunet.benchmarks.common import ratio

    return {"T": int(t), "metric": v["metrics"][key], "vs_ann": ratio(v["metrics"][key], ann),
            "sop": sop, "neurobench": v["energy"]["ratios"]["neurobench"], "paper": v["energy"]["ratios"]["paper"]}


def run(profile: str = "cpu", model=None, data=None, device: str = "cpu", dataset: str | None = None) -> dict:
    from sjunet.conversion.recipe import convert, save_snn
    from sjunet.data import get_dataset
    from sjunet.evaluation.report import FRONTIER_LEGEND, frontier_table, metric_key
    from sjunet.plots.curves import metric_vs_energy

    from .common import RESULTS, write_results
    from .tables_common import _finetune, _prepare, val_limit

    p = PROFILES[profile]
    names = [n.strip() for n in dataset.split(",")] if dataset else p["datasets"]
    parts, payload, figures = [], {}, {}
    for name in names:
        pa, _, d, ann, stats = _prepare(p["ann_profile"], name, data, device)
        test = get_dataset(d["test"], data, "test", **d["test_opts"])
        out = RESULTS / p["ann_profile"] / name / "energy"
        out.mkdir(parents=True, exist_ok=True)
        snn_path = out / "snn.safetensors"
        snn = convert(ann, stats)
        if not snn_path.exists() or snn.record.conversion.ann_fingerprint != stats.model_fingerprint:
            save_snn(snn, snn_path)
        budget = {"batch": p["batch"], "val_limit": val_limit(p["val_limit"], name), "minutes": p["ft_minutes"],
                  "epochs": 100, **({"trial_iters": p["trial_iters"]} if "trial_iters" in p else {})}
        T = p["ft_T"]
        variants = {"converted": snn_path}
        for label, extra in ((f"fine-tuned (T={T})", {}), (f"spike budget β={p['beta']:g} (T={T})",
                                                           {"energy_penalty": p["beta"]})):
            path = out / f"ft_T{T}{'_budget' if extra else ''}.safetensors"
            if not path.exists():
                _finetune(snn_path, path, d, data, T, device, budget, **extra)
            variants[label] = path
        frontiers = {label: _frontier(path, test, ann, p, out / f"frontier_{path.stem}.json", device,
                                      val_limit(p["limit"], name)) for label, path in variants.items()}
        first = next(iter(frontiers.values()))
        key = metric_key(first["ann"], first)
        fig = RESULTS / f"energy-{profile}-{name}.png"
        metric_vs_energy(list(frontiers.values()), metric=key, output=fig, labels=list(frontiers),
                         title=f"{name}: {key} against energy per image (star: the ANN)")
        figures[name] = str(fig)
        best = {label: best_point(f, key) for label, f in frontiers.items()}
        lines = [f"## {name} ({key}; ANN {frontiers['converted']['ann'][key]:.4f}; "
                 f"{val_limit(p['limit'], name)} test images)", ""]
        for label, f in frontiers.items():
            lines += [f"### {label}", "", frontier_table(f, label=label, key=key, legend=False), ""]
        lines += ["Cheapest point within 1 % of the ANN (SOP convention):", "",
                  "| SNN | T | metric (× ANN) | SOP E × ANN | NeuroBench E × ANN | paper E × ANN |",
                  "|---|---|---|---|---|---|"]
        for label, b in best.items():
            lines.append(f"| {label} | " + (f"{b['T']} | {b['metric']:.4f} ({b['vs_ann']:.3f}) | {b['sop']:.4f} | "
                                            f"{b['neurobench']:.4f} | {b['paper']:.4f} |" if b else "— | none | | | |"))
        lines += ["", f"figure: {fig}"]
        parts.append("\n".join(lines))
        payload[name] = {"frontiers": frontiers, "best": best, "figure": str(fig)}
    table = (f"Energy frontiers ({profile} profile; E_MAC 4.6 pJ, E_AC 0.9 pJ; ratios = SNN/ANN per image)\n\n"
             + FRONTIER_LEGEND + "\n\n" + "\n\n".join(parts))
    path = write_results("energy", profile, table, {"profile": profile, "settings": p, "datasets": payload})
    return {"table": table, "path": str(path), "figures": figures}
