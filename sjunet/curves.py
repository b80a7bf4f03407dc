"""Metric curves: against the number of steps T (:func:`metric_vs_T`) and against energy, the
accuracy–energy frontier (:func:`metric_vs_energy`). Matplotlib (Agg), files written atomically
through :func:`sjunet.plots.save_figure`."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt

from sjunet.plots import _NORM_LABELS, save_figure


def _load_result(r) -> tuple[dict, str | None]:
    if isinstance(r, Mapping):
        return dict(r), None
    p = Path(r)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such results file (write one with `sjunet evaluate -o`)")
    return json.loads(p.read_text()), p.stem


def _label_of(res: dict, stem: str | None, i: int) -> str:
    conv = (res.get("snn") or {}).get("conversion") or {}
    if conv.get("norm"):
        lab = _NORM_LABELS.get(conv["norm"], conv["norm"])
        if conv.get("neuron"):
            lab += f" ({str(conv['neuron']).upper()})"
        return lab
    return stem or f"result {i + 1}"


def default_metrics(result: Mapping) -> list[str]:
    """``f1_*`` keys (binary segmentation), else ``psnr`` (denoising), else ``miou`` (multi-class),
    else the first numeric metric."""
    per_t = result.get("T") or {}
    keys: list[str] = []
    for m in list(per_t.values()) + [result.get("ann") or {}]:
        keys += [k for k, v in m.items() if isinstance(v, (int, float)) and k not in keys]
    f1 = [k for k in keys if k.startswith("f1_")]
    if f1:
        return f1
    for k in ("psnr", "miou"):
        if k in keys:
            return [k]
    keys = [k for k in keys if k not in ("num_images",)]
    if not keys:
        raise ValueError("the result holds no numeric metric")
    return keys[:1]


def metric_vs_T(
    results: Sequence,
    metric: str | Sequence[str] | None = None,
    output: str | os.PathLike = "metric_vs_T.png",
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Metric against T (log x) of ``sjunet evaluate`` results (paths or dicts), one line per SNN
    result, the ANN as a horizontal dashed line. ``metric=None``: every ``f1_*`` metric for binary
    segmentation, ``psnr`` for denoising, ``miou`` for multi-class (one panel per metric).

    Returns ``{metric: {label: {"T": [...], "values": [...], "ann": value or None}}}``.
    """
    if isinstance(results, (str, os.PathLike, Mapping)):
        results = [results]
    loaded = [_load_result(r) for r in results]
    if not loaded:
        raise ValueError("give at least one result")
    if labels is not None and len(labels) != len(loaded):
        raise ValueError(f"{len(labels)} labels for {len(loaded)} results")
    metrics = [metric] if isinstance(metric, str) else list(metric) if metric else default_metrics(loaded[0][0])
    names = list(labels) if labels is not None else [_label_of(r, s, i) for i, (r, s) in enumerate(loaded)]
    for i, n in enumerate(names):  # make labels unique
        if names.count(n) > 1:
            names[i] = f"{n} [{loaded[i][1] or i + 1}]"

    out: dict[str, dict[str, Any]] = {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False, layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m in zip(axes[0], metrics):
        out[m] = {}
        anns = []
        all_T: list[int] = []
        for i, ((res, _), name) in enumerate(zip(loaded, names)):
            per_t = res.get("T") or {}
            pts = sorted((int(t), float(v[m])) for t, v in per_t.items() if m in v)
            ann = (res.get("ann") or {}).get(m)
            out[m][name] = {"T": [t for t, _ in pts], "values": [v for _, v in pts],
                            "ann": float(ann) if ann is not None else None}
            if ann is not None:
                anns.append((name, float(ann), colors[i % len(colors)]))
            if pts:
                c = colors[i % len(colors)]
                ax.plot([t for t, _ in pts], [v for _, v in pts], "o-", color=c, lw=1.6, ms=4, label=name)
                all_T += [t for t, _ in pts]
        if not any(v["values"] for v in out[m].values()) and not anns:
            raise ValueError(f"metric {m!r} is in none of the results")
        distinct = sorted({round(a, 6) for _, a, _ in anns})
        if len(distinct) == 1:
            ax.axhline(anns[0][1], color="k", ls="--", lw=1.2, label=f"ANN ({anns[0][1]:.4g})")
        else:
            for name, a, c in anns:
                ax.axhline(a, color=c, ls="--", lw=1.0, label=f"ANN for {name} ({a:.4g})")
        if all_T:
            ax.set_xscale("log")
            ts = sorted(set(all_T))
            ax.set_xticks(ts)
            ax.set_xticklabels([str(t) for t in ts])
            ax.minorticks_off()
        ax.set_xlabel("time steps T")
        ax.set_ylabel(m)
        ax.set_title(m, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if len(loaded) > 3:  # many lines: the legend goes beside the panel, not over the curves
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        else:
            ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title or f"SNN {', '.join(metrics)} vs number of time steps T (dashed: ANN)", fontsize=11)
    save_figure(fig, output)
    return out



def _frontier_label(f: dict, stem: str | None, i: int) -> str:
    snn = f.get("snn") or {}
    conv = snn.get("conversion") or {}
    lab = _NORM_LABELS.get(conv.get("norm"), conv.get("norm") or stem or f"SNN {i + 1}")
    if conv.get("neuron"):
        lab += f" ({str(conv['neuron']).upper()})"
    if snn.get("finetune"):
        lab += ", fine-tuned"
    return lab


def metric_vs_energy(
    frontiers: Sequence,
    metric: str | None = None,
    output: str | os.PathLike = "metric_vs_energy.png",
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Metric against energy per image (log x), one panel per convention (paper, SOP, NeuroBench),
    one curve per frontier (``sjunet energy -o`` JSON paths or dicts; points labelled by T), the
    ANN as a star. Returns ``{convention: {label: {"energy": [...], "metric": [...], "T": [...]}}}``."""
    from sjunet.energy_report import CONVENTION_KEYS, metric_key

    loaded = [_load_result(f) for f in frontiers]
    if not loaded:
        raise ValueError("give at least one frontier (sjunet energy -o FILE)")
    if labels is not None and len(labels) != len(loaded):
        raise ValueError(f"{len(labels)} labels for {len(loaded)} frontiers")
    names = list(labels) if labels is not None else [_frontier_label(f, s, i) for i, (f, s) in enumerate(loaded)]
    for f, _ in loaded:
        if "T" not in f or not all("energy" in v for v in f["T"].values()):
            raise ValueError("not an energy frontier (write one with `sjunet energy --T 1 2 4 8 -o FILE`)")
    first = loaded[0][0]
    metric = metric or metric_key(first.get("ann") or next(iter(first["T"].values()))["metrics"])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    out: dict[str, dict[str, Any]] = {}
    for ax, (conv, key) in zip(axes, CONVENTION_KEYS.items()):
        out[conv] = {}
        anns = set()
        for i, ((f, _), name) in enumerate(zip(loaded, names)):
            ts = sorted(f["T"], key=int)
            e = [f["T"][t]["energy"][key] for t in ts]
            m = [f["T"][t]["metrics"].get(metric, float("nan")) for t in ts]
            out[conv][name] = {"energy": e, "metric": m, "T": [int(t) for t in ts]}
            c = colors[i % len(colors)]
            ax.plot(e, m, "o-", color=c, lw=1.5, ms=4, label=name)
            for t, x, y in zip(ts, e, m):
                ax.annotate(f"T={t}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, color=c)
            ann_m = (f.get("ann") or {}).get(metric)
            ann_e = f["T"][ts[0]]["energy"].get("energy_ann_J")
            if ann_m is not None and ann_e and (round(ann_e, 18), round(ann_m, 6)) not in anns:
                anns.add((round(ann_e, 18), round(ann_m, 6)))
                ax.plot([ann_e], [ann_m], "*", color="k", ms=12, label=f"ANN ({ann_m:.4g})" if len(anns) == 1 else None)
        ax.set_xscale("log")
        ax.set_xlabel(f"energy per image (J), {conv} convention")
        ax.set_ylabel(metric)
        ax.set_title(conv, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title or f"{metric} against energy (log scale); star: the ANN", fontsize=11)
    save_figure(fig, output)
    return out
