"""Figures of sjunet (``sjunet plot <kind>``): matplotlib with the Agg backend, files written atomically.

The paper's figures drawn from a model and its conversions, each a function returning the numbers it
draws:

* :func:`activation_vs_rate` — the paper's Figure 3: per neuron, the ANN's ReLU activation
  (normalised by the layer's λ) against the SNN's firing rate Σ_t o(t) / T (normalised units),
  for the layers right after a skip concatenation, one column per converted SNN (e.g. layer-wise
  vs connection-wise). A faithful conversion puts the points on the identity line. Each panel
  shows the least-squares fit ``rate = slope · activation + intercept`` (ordinary least squares
  **with** intercept, over every neuron, zeros included) and the Pearson r; the through-origin
  slope is returned too (``slope_origin``). The numbers are also written as JSON next to the figure.
* :func:`histograms` — a grid of per-layer activation histograms from the calibration HDF5 with
  the percentile λ and the maximum marked.

Metric against T and against energy live in :mod:`sjunet.plots.curves`, the predictions figure
(Figures 4/5) in :mod:`sjunet.plots.predictions`; :func:`sjunet.plots.dispatch.plot` dispatches on the
kind name (the library form of ``sjunet plot``).

The output format follows the suffix of ``output`` (``.png`` — the default when there is no
known suffix —, ``.svg``, ``.pdf``); every file goes through :func:`sjunet.io.atomic_path`
(temp file in the same directory, then ``os.replace``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (before pyplot; never opens a window)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from torch import fx, nn  # noqa: E402

from sjunet.plots.figures import save_figure  # noqa: E402
from sjunet.io import write_json  # noqa: E402




def _tight(fig, title_inches: float = 0.7) -> None:
    """tight_layout leaving ``title_inches`` at the top for the (multi-line) suptitle."""
    h = fig.get_figheight()
    fig.tight_layout(rect=(0, 0, 1, 1 - min(0.3, title_inches / h)))


def _sidecar(output: Path) -> Path:
    return output.with_suffix(".json") if output.suffix.lower() != ".json" else output.with_suffix(".fit.json")


# ----------------------------------------------------------------------------- activation vs rate
def _conversion_of(snn: nn.Module, label: str) -> dict:
    from sjunet.snn import record_of

    rec = record_of(snn)
    conv = rec.conversion.to_dict() if rec is not None else None
    if not conv or "layers" not in conv:
        raise ValueError(f"SNN {label!r} carries no sjunet conversion record (layers, λ): "
                         "convert it with sjunet.convert / `sjunet convert`")
    return conv


def _relu_node_of(ann_gm: fx.GraphModule, neuron: str, conv: dict | None = None) -> str:
    """The ANN's ReLU FX node replaced by the neuron at module path ``neuron``."""
    relu = ((conv or {}).get("neurons") or {}).get(neuron, {}).get("relu")
    if relu is not None and any(n.name == relu for n in ann_gm.graph.nodes):
        return relu
    for n in ann_gm.graph.nodes:
        if n.op == "call_module" and n.target == neuron:
            return n.name
    name = neuron.replace(".", "_")
    if any(n.name == name for n in ann_gm.graph.nodes):
        return name
    raise ValueError(f"no ReLU in the ANN's graph for neuron {neuron!r}: is the SNN converted from this model?")


def _select_layers(conv: dict, layers: Sequence[str] | None) -> list[str]:
    """Synaptic layer names (keys of the conversion record) to plot."""
    table = conv["layers"]
    neuron_layers = [k for k, v in table.items() if v.get("neuron")]
    if layers is None:
        chosen = [k for k in neuron_layers if table[k].get("after_cat")]
        if not chosen:
            raise ValueError("no neuron layer follows a skip concatenation in this network; "
                             f"name the layers to plot (neuron layers: {', '.join(neuron_layers)})")
        return chosen
    out = []
    for name in layers:
        hit = [k for k in neuron_layers
               if name in (k, table[k]["neuron"], table[k]["neuron"].replace(".", "_"))]
        if not hit:
            raise ValueError(f"{name!r} is not a neuron layer of the SNN; choose among synaptic layers "
                             f"{', '.join(neuron_layers)} or their neurons "
                             f"{', '.join(table[k]['neuron'] for k in neuron_layers)}")
        out.append(hit[0])
    return out


def fit_line(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least squares ``y = slope·x + intercept`` (with intercept), the through-origin slope
    ``slope_origin`` (Σxy / Σx²), Pearson ``r`` and the number of points ``n``."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    n = int(x.size)
    nan = float("nan")
    if n < 2:
        return {"slope": nan, "intercept": nan, "slope_origin": nan, "r": nan, "n": n}
    xm, ym = x.mean(), y.mean()
    dx, dy = x - xm, y - ym
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    slope = sxy / sxx if sxx > 0 else nan
    intercept = ym - slope * xm if sxx > 0 else nan
    x2 = float(x @ x)
    slope0 = float(x @ y) / x2 if x2 > 0 else nan
    r = sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else nan
    return {"slope": float(slope), "intercept": float(intercept), "slope_origin": float(slope0),
            "r": float(r), "n": n}


def _as_batches(images) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise ValueError(f"images must be [B, C, H, W] or [C, H, W], got shape {tuple(images.shape)}")
        return [images]
    out = []
    for im in images:  # a list of images, possibly of different sizes
        out.extend(_as_batches(im))
    if not out:
        raise ValueError("no images given")
    return out


@torch.no_grad()
def activation_rate_points(
    model: nn.Module,
    snns: Mapping[str, nn.Module],
    images,
    T: int,
    layers: Sequence[str] | None = None,
    chunk: int = 8,
    multiple: int | None = None,
) -> tuple[dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], dict[str, dict]]:
    """Per layer and SNN label, the per-neuron points ``(activation / λ, rate)``.

    Returns ``(points, info)``: ``points[layer][label] = (x, y)`` as float32 arrays over every
    neuron of every image; ``info[layer]`` holds the neuron path, the ANN ReLU node, λ per label
    and the layer's ordinal among neuron layers (1-based, input to output).
    """
    from spikingjelly.activation_based import functional

    from sjunet.calibration.observe import trace_for_conversion
    from sjunet.evaluation import pad_to_multiple
    from sjunet.graph import record_nodes
    from sjunet.snn import size_rule
    from sjunet.snn.simulation import record_flow

    if not snns:
        raise ValueError("give at least one SNN")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    convs = {label: _conversion_of(s, label) for label, s in snns.items()}
    first = next(iter(convs.values()))
    chosen = _select_layers(first, layers)
    for label, conv in convs.items():
        missing = [k for k in chosen if k not in conv["layers"] or not conv["layers"][k].get("neuron")]
        if missing:
            raise ValueError(f"SNN {label!r} has no neuron layer {', '.join(missing)}: are the SNNs "
                             "converted from the same model?")
    batches = _as_batches(images)
    ann_gm = trace_for_conversion(model, batches[0].shape)
    neuron_order = [k for k, v in first["layers"].items() if v.get("neuron")]
    info: dict[str, dict] = {}
    for k in chosen:
        neuron = first["layers"][k]["neuron"]
        info[k] = {"neuron": neuron, "relu": _relu_node_of(ann_gm, neuron, first),
                   "index": neuron_order.index(k) + 1, "after_cat": bool(first["layers"][k].get("after_cat")),
                   "out_unit": {label: float(c["layers"][k]["out_unit"]) for label, c in convs.items()}}
    multiple = multiple or size_rule(model, batches[0].shape[1])
    xs: dict[str, dict[str, list]] = {k: {label: [] for label in snns} for k in chosen}
    ys: dict[str, dict[str, list]] = {k: {label: [] for label in snns} for k in chosen}
    for batch in batches:
        batch = pad_to_multiple(batch.float(), multiple)
        acts = record_nodes(ann_gm, batch, {info[k]["relu"] for k in chosen})
        for label, snn in snns.items():
            mode = next((m.step_mode for m in snn.modules() if hasattr(m, "step_mode")), "s")
            try:
                flow = record_flow(snn, batch, int(T), chunk=chunk)
            finally:
                functional.set_step_mode(snn, mode)  # record_flow leaves multi-step mode on
            for k in chosen:
                act = acts[info[k]["relu"]] / info[k]["out_unit"][label]
                rate = flow.outputs[info[k]["neuron"]]
                if isinstance(rate, float) or rate.shape != act.shape:
                    raise ValueError(f"layer {k}: SNN {label!r} output of shape "
                                     f"{getattr(rate, 'shape', ())} vs ANN activation {tuple(act.shape)}")
                xs[k][label].append(act.flatten().float().numpy())
                ys[k][label].append((rate / T).flatten().float().numpy())
    points = {k: {label: (np.concatenate(xs[k][label]), np.concatenate(ys[k][label])) for label in snns}
              for k in chosen}
    return points, info


def activation_vs_rate(
    model: nn.Module,
    snns: Mapping[str, nn.Module],
    images,
    T: int,
    layers: Sequence[str] | None = None,
    output: str | os.PathLike | None = "activation_vs_rate.png",
    max_points: int = 20000,
    stats=None,
    style: str = "density",
    chunk: int = 8,
    seed: int = 0,
    title: str | None = None,
    multiple: int | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """The paper's Figure 3: ANN activation vs SNN firing rate, per neuron, layer by layer.

    ``snns`` maps a column label (e.g. ``"layer-wise"``, ``"connection-wise"``) to a converted SNN
    of ``model``. ``images`` is [B, C, H, W] (or [C, H, W], or a list of either); H and W are
    padded (reflect) to multiples of ``multiple`` (default: the U-Net's 2^depth, from
    ``model.size_multiple`` or ``model.config.depth``; 1 for other models), and the neurons of
    the padding are plotted with the rest. ``chunk``: time steps simulated per multi-step call. ``layers``: synaptic layer names of the conversion record or the
    module paths of their neurons; default every neuron layer right after a skip concatenation.

    x = ANN ReLU output / λ (λ = the layer's ``out_unit``), y = Σ_t o(t) / T of the neuron that
    replaced the ReLU (same units). One row per layer, one column per SNN. ``style="density"``
    draws a 2-D histogram of every point with a log colour scale; ``"scatter"`` draws a random
    subsample of ``max_points``. Fits use all points: ``slope``/``intercept`` from least squares
    with intercept, ``slope_origin`` through the origin, Pearson ``r``, ``n`` points.

    ``stats`` (optional, a CalibrationStats): if given, its model fingerprint is
    checked against ``model``. Returns ``{layer: {label: {slope, intercept, slope_origin, r, n}}}``
    and, with ``output``, writes the figure and the same numbers as JSON beside it (``.json``).
    """
    if style not in ("density", "scatter"):
        raise ValueError(f"style must be 'density' or 'scatter', got {style!r}")
    if stats is not None:
        from sjunet.calibration.store import CalibrationStats
        from sjunet.io import model_fingerprint

        if not isinstance(stats, CalibrationStats):
            raise TypeError(f"give the statistics as a CalibrationStats (read a file with "
                            f"sjunet.calibration.read_stats), got {type(stats).__name__}")
        stats.check_model(model_fingerprint(model))
    points, info = activation_rate_points(model, snns, images, T, layers, chunk, multiple)
    fits = {k: {label: fit_line(*xy) for label, xy in per.items()} for k, per in points.items()}
    if output is None:
        return fits

    labels = list(snns)
    rows, cols = len(points), len(labels)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 0.6, 3.4 * rows + 0.6), squeeze=False)
    rng = np.random.default_rng(seed)
    for i, (k, per) in enumerate(points.items()):
        # one range per row so the columns compare at a glance
        hi = max(max(float(np.max(x, initial=0)), float(np.max(y, initial=0))) for x, y in per.values())
        hi = max(hi, 1.0) * 1.05
        lo = min(min(float(np.min(x, initial=0)), float(np.min(y, initial=0))) for x, y in per.values())
        lo = min(lo, 0.0) - 0.02 * hi
        for j, label in enumerate(labels):
            ax = axes[i][j]
            x, y = per[label]
            if style == "density":
                edges = np.linspace(lo, hi, 121)
                h, _, _ = np.histogram2d(x, y, bins=[edges, edges])
                h = np.ma.masked_equal(h.T, 0)
                vmax = max(float(h.max()) if h.count() else 1.0, 1.0)
                mesh = ax.pcolormesh(edges, edges, h, norm=LogNorm(vmin=1, vmax=max(vmax, 1.0 + 1e-9)),
                                     cmap="viridis", rasterized=True)
                cb = fig.colorbar(mesh, ax=ax, fraction=0.046, pad=0.03)
                cb.set_label("neurons per bin", fontsize=8)
                cb.ax.tick_params(labelsize=7)
            else:
                idx = rng.choice(x.size, size=max_points, replace=False) if x.size > max_points else slice(None)
                ax.scatter(x[idx], y[idx], s=3, alpha=0.5 if min(x.size, max_points) < 5000 else 0.25, lw=0,
                           color="tab:blue", rasterized=True)
            f = fits[k][label]
            if math.isfinite(f["slope"]):
                ax.plot([lo, hi], [f["slope"] * lo + f["intercept"], f["slope"] * hi + f["intercept"]],
                        color="tab:red", lw=1.2, alpha=0.8, label="least squares", zorder=3)
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="identity", zorder=4)
            sign = "−" if f["intercept"] < 0 else "+"
            ax.text(0.03, 0.97, f"fit: y = {f['slope']:.3f}·x {sign} {abs(f['intercept']):.3f}\n"
                                f"slope {f['slope']:.3f}   r {f['r']:.3f}\nn = {f['n']:,} neurons",
                    transform=ax.transAxes, va="top", ha="left", fontsize=8,
                    bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.85})
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_aspect("equal", adjustable="box")
            ax.tick_params(labelsize=8)
            if i == 0:
                ax.set_title(label, fontsize=11, fontweight="bold")
            if i == rows - 1:
                ax.set_xlabel("ANN activation / λ", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"layer {info[k]['index']} ({k})\nSNN rate Σo(t)/T", fontsize=9)
            if i == 0 and j == cols - 1:
                ax.legend(loc="lower right", fontsize=7, framealpha=0.85)
    where = "in the layers after skip concatenations" if all(info[k]["after_cat"] for k in points) else "per layer"
    fig.suptitle(title or f"ANN activation vs SNN firing rate {where} (T = {T})\n"
                          "least squares with intercept; dashed: identity (ideal conversion)", fontsize=11)
    _tight(fig)
    output = Path(output)
    save_figure(fig, output)
    write_json({"figure": str(output), "kind": "activation-vs-rate", "T": int(T),
                "fit": "least squares with intercept (slope, intercept); slope_origin: through the origin; "
                       "r: Pearson; x = ANN ReLU output / λ, y = Σ_t o(t) / T, all neurons of all images",
                "layers": {k: {**info[k], "fits": fits[k]} for k in fits}, "results": fits},
               _sidecar(output))
    return fits


# ------------------------------------------------------------------------------------- histograms
def histograms(
    stats,
    output: str | os.PathLike = "histograms.png",
    nodes: Sequence[str] | None = None,
    log: bool = True,
    roles: Iterable[str] = ("relu", "cat-part", "cat", "linear"),
    columns: int = 4,
    title: str | None = None,
) -> dict[str, dict[str, float]]:
    """Grid of per-layer activation histograms from calibration statistics (a
    :class:`~sjunet.calibration.CalibrationStats`: ``calibrate``'s result, or ``read_stats`` of the
    HDF5 file ``sjunet calibrate`` writes), with the
    percentile λ (``p99.9 = …``) and the maximum marked. ``nodes``: FX node names (default: the
    nodes whose role is in ``roles``, in graph order: every ReLU, every concatenation and its
    parts, and the linear stages — up-convolutions feeding a concatenation and the output layer;
    the network input is left out). ``log``: logarithmic count axis.

    Returns ``{node: {"percentile", "p", "max", "role"}}``.
    """
    from sjunet.calibration.store import CalibrationStats

    if not isinstance(stats, CalibrationStats):
        raise TypeError(f"give the statistics as a CalibrationStats (read a file with "
                        f"sjunet.calibration.read_stats), got {type(stats).__name__}")
    st = stats
    roles = tuple(roles)
    if nodes is None:
        names = [n for n, s in st.nodes.items() if s.role in roles]
    else:
        unknown = [n for n in nodes if n not in st.nodes]
        if unknown:
            raise ValueError(f"no statistics for node(s) {', '.join(unknown)}; recorded: {', '.join(st.nodes)}")
        names = list(nodes)
    if not names:
        raise ValueError("no node to plot")
    cols = max(1, min(columns, len(names)))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.7 * rows), squeeze=False)
    out = {}
    for ax, name in zip(axes.flat, names):
        s = st.nodes[name]
        counts = np.asarray(s.histogram, dtype=np.float64)
        edges = np.asarray(s.bin_edges, dtype=np.float64)
        ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.7)
        if log:
            ax.set_yscale("log")
        pct = f"{s.p:g}"
        ax.axvline(s.percentile, color="tab:red", lw=1.3, label=f"p{pct} = {s.percentile:.4g}")
        ax.axvline(s.max, color="0.3", lw=1.0, ls="--", label=f"max = {s.max:.4g}")
        ax.set_title(f"{name} ({s.role})", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="best")
        ax.set_xlabel("activation", fontsize=8)
        out[name] = {"percentile": s.percentile, "p": s.p, "max": s.max, "role": s.role}
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    what = st.data.get("name") or st.data.get("dataset") or ""
    fig.suptitle(title or f"Calibration activation histograms{' (' + str(what) + ')' if what else ''}"
                          f" — λ = p{st.p:g} percentile, model {st.model_fingerprint}", fontsize=11)
    _tight(fig)
    save_figure(fig, output)
    return out
