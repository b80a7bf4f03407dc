"""Metric curves: against the number of steps T (:func:`metric_vs_T`) and against energy, the
accuracy–energy frontier (:func:`metric_vs_energy`). Matplotlib (Agg), files written atomically
through :func:`sjunet.plots.figures.save_figure`."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt

from sjunet.metrics import metric_label
from sjunet.plots.figures import NORM_LABELS as _NORM_LABELS, save_figure

#: panel titles of the energy conventions (spec §12; README "Energy, three conventions")
CONVENTION_TITLES = {"paper": "paper: first-layer MACs + spikes (no fan-out)",
                     "sop": "SOP: first-layer MACs + spikes × fan-out",
                     "neurobench": "NeuroBench: graded events × fan-out as MACs"}


#: the largest results file read (an `sjunet evaluate` / `energy` JSON is a few kB)
MAX_RESULTS_BYTES = 64 * 1024 * 1024
#: deepest nesting accepted in a results file (real ones nest 5 levels)
MAX_RESULTS_DEPTH = 32

_WRITE_WITH = {"results": "`sjunet evaluate -o FILE`", "frontier": "`sjunet energy --T 1 2 4 8 -o FILE`"}


def _depth_ok(text: str) -> bool:
    """Nesting of JSON ``text`` at most :data:`MAX_RESULTS_DEPTH` (counted outside strings), before parsing."""
    depth, in_str, esc = 0, False, False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_RESULTS_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _is_num(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _check_metrics(m: Any, where: str) -> None:
    if not isinstance(m, dict):
        raise ValueError(f"{where} is {type(m).__name__}, not an object of metrics")


def check_results(obj: Any, kind: str = "results") -> dict:
    """``obj`` has the structure of an ``sjunet evaluate`` result (``kind="results"``: an object with
    ``T`` — step counts to metric objects — and/or ``ann``, a metric object) or an ``sjunet energy``
    frontier (``kind="frontier"``: ``T`` maps step counts to objects with ``metrics`` and numeric
    ``energy``); raises ``ValueError`` saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"it holds a JSON {type(obj).__name__ if obj is not None else 'null'}, not an object")
    per_t = obj.get("T")
    if per_t is None and kind == "results" and "ann" not in obj:
        raise ValueError("no 'T' (per-T metrics) or 'ann' entry")
    if kind == "frontier" and per_t is None:
        raise ValueError("no 'T' entry (the per-T energy and metrics)")
    if per_t is not None:
        if not isinstance(per_t, dict) or (kind == "frontier" and not per_t):
            raise ValueError("'T' is not an object of step counts")
        for t, v in per_t.items():
            if not t.isdigit() or not 0 < int(t) <= 10 ** 9:
                raise ValueError(f"'T' has a key {t[:20]!r}, not a positive number of steps")
            if kind == "results":
                _check_metrics(v, f"T[{t}]")
            else:
                if not isinstance(v, dict) or not isinstance(v.get("energy"), dict) or not isinstance(v.get("metrics"), dict):
                    raise ValueError(f"T[{t}] lacks its 'energy' and 'metrics' objects")
                from sjunet.evaluation.report import CONVENTION_KEYS

                for k in CONVENTION_KEYS.values():
                    e = v["energy"].get(k)
                    if e is None or not _is_num(e):
                        raise ValueError(f"T[{t}].energy lacks the number {k}")
    if obj.get("ann") is not None:
        _check_metrics(obj["ann"], "ann")
    for key in ("snn",):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise ValueError(f"'{key}' is not an object")
    conv = (obj.get("snn") or {}).get("conversion")
    if conv is not None and not isinstance(conv, dict):
        raise ValueError("'snn.conversion' is not an object")
    return obj


def load_results(path: str | os.PathLike, kind: str = "results") -> dict:
    """Read a results JSON file (``kind="results"``: ``sjunet evaluate -o``; ``"frontier"``:
    ``sjunet energy -o``) and check its structure (:func:`check_results`). Anything else — not
    UTF-8, not JSON, too large or too deeply nested, a list, missing entries — is one
    :class:`sjunet.io.ArtifactError` line naming the file."""
    from sjunet.io import ArtifactError

    p = Path(path)
    hint = f"write one with {_WRITE_WITH.get(kind, _WRITE_WITH['results'])}"
    what = "an `sjunet energy` frontier" if kind == "frontier" else "an `sjunet evaluate` results file"
    try:
        if not p.is_file():
            raise ArtifactError(f"{p}: no such results file ({hint})")
        size = p.stat().st_size
        if size > MAX_RESULTS_BYTES:
            raise ArtifactError(f"{p}: {size} bytes is too large for {what}; {hint}")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"{p}: not {what} (not UTF-8 text); {hint}") from None
    except OSError as e:
        raise ArtifactError(f"{p}: cannot read it ({e.strerror or e})") from None
    if not _depth_ok(text):
        raise ArtifactError(f"{p}: not {what} (JSON nested deeper than {MAX_RESULTS_DEPTH} levels); {hint}")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ArtifactError(f"{p}: not {what} (invalid JSON: {first}); {hint}") from None
    try:
        return check_results(obj, kind)
    except (ValueError, AttributeError, TypeError) as e:
        raise ArtifactError(f"{p}: not {what} ({' '.join(str(e).split())[:200]}); {hint}") from None


def _checked(results: Sequence, stems: Sequence[str] | None, kind: str = "results") -> list[tuple[dict, str | None]]:
    """Each result (a dict: the library takes objects; files are read by :func:`load_results`, as
    the CLI does) checked, beside its fallback name (``stems``: the CLI passes the file stems)."""
    out = []
    for i, r in enumerate(results):
        if not isinstance(r, Mapping):
            raise TypeError(f"give {kind} as dicts (read a file with sjunet.plots.curves.load_results), got "
                            f"{type(r).__name__}")
        out.append((check_results(dict(r), kind), stems[i] if stems is not None and i < len(stems) else None))
    return out


def _label_of(res: dict, stem: str | None, i: int) -> str:
    conv = (res.get("snn") or {}).get("conversion") or {}
    if conv.get("norm"):
        lab = _NORM_LABELS.get(str(conv["norm"]), str(conv["norm"]))
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
        keys += [k for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys]
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
    stems: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Metric against T (log x) of ``sjunet evaluate`` results (dicts; :func:`load_results` reads a
    file), one line per SNN result, the ANN as a horizontal dashed line. ``metric=None``: every
    ``f1_*`` metric for binary segmentation, ``psnr`` for denoising, ``miou`` for multi-class (one
    panel per metric). Labels: ``labels``, else each result's conversion (norm, neuron), else its
    name in ``stems`` (the CLI passes the file names), else ``result i``.

    Returns ``{metric: {label: {"T": [...], "values": [...], "ann": value or None}}}``.
    """
    if isinstance(results, Mapping):
        results = [results]
    loaded = _checked(results, stems)
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
            pts = sorted((int(t), float(v[m])) for t, v in per_t.items() if _is_num(v.get(m)) and v.get(m) is not None)
            ann = (res.get("ann") or {}).get(m)
            ann = ann if _is_num(ann) else None
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
        ax.set_ylabel(metric_label(m))
        ax.set_title(metric_label(m), fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if len(loaded) > 3:  # many lines: the legend goes beside the panel, not over the curves
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        else:
            ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title or f"SNN {', '.join(metric_label(m) for m in metrics)} vs number of time steps T (dashed: ANN)",
                 fontsize=11)
    save_figure(fig, output)
    return out



def _frontier_label(f: dict, stem: str | None, i: int) -> str:
    snn = f.get("snn") or {}
    conv = snn.get("conversion") or {}
    norm = str(conv["norm"]) if conv.get("norm") else None
    lab = _NORM_LABELS.get(norm, norm or stem or f"SNN {i + 1}") if norm else (stem or f"SNN {i + 1}")
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
    stems: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Metric against energy per image (log x), one panel per convention (paper, SOP, NeuroBench),
    one curve per frontier (dicts of ``sjunet energy -o``; :func:`load_results` reads a file with
    ``kind="frontier"``; points labelled by T; ``stems``: fallback names), the ANN as a star. Returns ``{convention: {label: {"energy": [...], "metric": [...], "T": [...]}}}``."""
    from sjunet.evaluation.report import CONVENTION_KEYS, metric_key

    loaded = _checked(frontiers, stems, "frontier")
    if not loaded:
        raise ValueError("give at least one frontier (sjunet energy -o FILE)")
    if labels is not None and len(labels) != len(loaded):
        raise ValueError(f"{len(labels)} labels for {len(loaded)} frontiers")
    names = list(labels) if labels is not None else [_frontier_label(f, s, i) for i, (f, s) in enumerate(loaded)]
    for (f, stem), i in zip(loaded, range(len(loaded))):
        if "T" not in f or not all("energy" in v for v in f["T"].values()):
            raise ValueError("not an energy frontier (write one with `sjunet energy --T 1 2 4 8 -o FILE`)")
        for t, v in f["T"].items():
            lacking = [k for k in CONVENTION_KEYS.values() if not isinstance(v["energy"].get(k), (int, float))
                       or isinstance(v["energy"].get(k), bool)]
            if lacking:
                raise ValueError(f"{stem or f'frontier {i + 1}'}: T={t} lacks the energy {', '.join(lacking)} "
                                 "(write it with this sjunet's `sjunet energy -o FILE`)")

    def numeric(d: Any) -> dict:
        return {k: v for k, v in (d or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    first = loaded[0][0]
    metric = metric or metric_key(numeric(first.get("ann")) or numeric(next(iter(first["T"].values()))["metrics"]),
                                  first)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    out: dict[str, dict[str, Any]] = {}
    for ax, (conv, key) in zip(axes, CONVENTION_KEYS.items()):
        out[conv] = {}
        anns = set()
        for i, ((f, _), name) in enumerate(zip(loaded, names)):
            ts = sorted(f["T"], key=int)
            e = [f["T"][t]["energy"][key] for t in ts]
            m = [numeric(f["T"][t]["metrics"]).get(metric, float("nan")) for t in ts]
            out[conv][name] = {"energy": e, "metric": m, "T": [int(t) for t in ts]}
            c = colors[i % len(colors)]
            ax.plot(e, m, "o-", color=c, lw=1.5, ms=4, label=name)
            for t, x, y in zip(ts, e, m):
                ax.annotate(f"T={t}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, color=c)
            ann_m = numeric(f.get("ann")).get(metric)
            ann_e = f["T"][ts[0]]["energy"].get("energy_ann_J")
            if ann_m is not None and ann_e and (round(ann_e, 18), round(ann_m, 6)) not in anns:
                anns.add((round(ann_e, 18), round(ann_m, 6)))
                ax.plot([ann_e], [ann_m], "*", color="k", ms=12, label=f"ANN ({ann_m:.4g})" if len(anns) == 1 else None)
        ax.set_xscale("log")
        ax.set_xlabel(f"energy per image (J), {conv} convention")
        ax.set_ylabel(metric_label(metric))
        ax.set_title(CONVENTION_TITLES.get(conv, conv), fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title or f"{metric_label(metric)} against energy per image (log scale); star: the ANN; "
                 "points: time steps T", fontsize=11)
    save_figure(fig, output)
    return out
