"""Energy reports as Markdown: one SNN at one T (:func:`energy_table`) and the metric–energy
frontier over T (:func:`frontier_table`), every convention beside the ANN."""
from __future__ import annotations

from sjunet.evaluation.energy import EnergyReport
from sjunet.metrics import metric_label

CONVENTION_KEYS = {"paper": "energy_paper_J", "sop": "energy_sop_J", "neurobench": "energy_neurobench_J"}


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}"


def energy_table(report: EnergyReport) -> str:
    """One row per source layer, then the totals, the energies and the SNN/ANN ratios."""
    r = report
    lines = [f"Energy per image (T = {r.T}, {r.images} image{'s' if r.images != 1 else ''}; "
             f"E_MAC = {r.e_mac * 1e12:g} pJ, E_AC = {r.e_ac * 1e12:g} pJ)", "",
             "| layer | neurons | spikes | rate (spikes/neuron/step) | non-zero outputs (per neuron/step) | "
             "mean fan-out | SOPs |", "|---|---:|---:|---:|---:|---:|---:|"]
    for layer in r.layers:
        lines.append(f"| {layer.name} | {_fmt(layer.neurons)} | {_fmt(layer.spikes)} | {layer.rate:.4f} | "
                     f"{layer.nonzero:.4f} | {layer.fanout_mean:.1f} | {_fmt(layer.sops)} |")
    neurons = sum(layer.neurons for layer in r.layers)
    lines.append(f"| **total** | {_fmt(neurons)} | {_fmt(r.spikes)} | "
                 f"{r.spikes / (neurons * r.T) if neurons else 0:.4f} | "
                 f"{r.events / (neurons * r.T) if neurons else 0:.4f} | "
                 f"{r.sops / r.spikes if r.spikes else 0:.1f} per spike | {_fmt(r.sops)} |")
    lines += ["", "| quantity | value |", "|---|---:|",
              f"| first-layer MACs (once per image) | {_fmt(r.first_layer_macs)} |",
              f"| first-layer MACs if recomputed every step | {_fmt(r.first_layer_macs_every_step)} |",
              f"| ANN MACs | {_fmt(r.ann_macs)} |",
              f"| Σ-Δ neuron evaluations (functions, products: MAC cost) | {_fmt(r.neuron_ops)} |",
              f"| MACs of layers fed by graded currents | {_fmt(r.graded_macs)} |",
              f"| spikes | {_fmt(r.spikes)} |",
              f"| SOPs (ACs) | {_fmt(r.sops)} |",
              f"| graded events / synaptic events | {_fmt(r.events)} / {_fmt(r.synaptic_events)} |",
              f"| energy, paper convention (MAC_first·E_MAC + spikes·E_AC) | {r.energy_paper_J:.4e} J |",
              f"| energy, SOP convention (MAC_first·E_MAC + SOPs·E_AC) | {r.energy_sop_J:.4e} J |",
              f"| energy, NeuroBench convention (MAC_first·E_MAC + events·fan-out·E_MAC) | "
              f"{r.energy_neurobench_J:.4e} J |",
              f"| energy, ANN (MACs·E_MAC) | {'–' if r.energy_ann_J is None else f'{r.energy_ann_J:.4e} J'} |"]
    for k, v in r.ratios.items():
        lines.append(f"| SNN/ANN energy, {k} convention | {v:.4f} |")
    for k, v in r.mac_share.items():
        lines.append(f"| not accumulate (MAC-cost), {k} convention: share of operations / of energy | "
                     f"{100 * v['ops']:.1f} % / {100 * v['energy']:.1f} % |")
    return "\n".join(lines)


def metric_key(metrics: dict, frontier: dict | None = None) -> str:
    """The metric a frontier is drawn for: the data set's headline metric the frontier records
    (:attr:`sjunet.tasks.SegmentationTask.metric`); for records without one, the hard class's F1
    (binary), mIoU, else PSNR."""
    if frontier is not None and frontier.get("metric") in metrics:
        return frontier["metric"]
    f1 = [k for k in metrics if k.startswith("f1_")]
    if f1:
        return min(f1, key=lambda k: metrics[k])
    return "miou" if "miou" in metrics else "psnr"


def frontier_table(frontier: dict, label: str = "SNN", key: str | None = None, legend: bool = True) -> str:
    """Metric and energy (× ANN, three conventions) at every T of
    :func:`sjunet.evaluation.energy.energy_frontier`, with :data:`FRONTIER_LEGEND` under it (``legend``)."""
    per_t = frontier["T"]
    first = next(iter(per_t.values()))
    key = key or metric_key(frontier.get("ann") or first["metrics"], frontier)
    ann = (frontier.get("ann") or {}).get(key)
    lines = [f"| model | T | {metric_label(key)} | × ANN | spikes/img | SOPs/img | paper E × ANN | SOP E × ANN | "
             "NeuroBench E × ANN | not accumulate: ops / energy (SOP) |", "|---|---|---|---|---|---|---|---|---|---|"]
    if ann is not None:
        lines.append(f"| ANN | — | {ann:.4f} | 1.000 | — | — | 1 | 1 | 1 | 100 % / 100 % |")
    for t, v in per_t.items():
        m, e = v["metrics"][key], v["energy"]
        r = e["ratios"]
        share = (e.get("mac_share") or {}).get("sop")
        lines.append(f"| {label} | {t} | {m:.4f} | {_ratio(m, ann)} | {_fmt(e['spikes'])} | "
                     f"{_fmt(e['sops'])} | {_num(r.get('paper'))} | {_num(r.get('sop'))} | {_num(r.get('neurobench'))} | "
                     + (f"{100 * share['ops']:.1f} % / {100 * share['energy']:.1f} % |" if share else "— |"))
    return "\n".join(lines) + ("\n\n" + FRONTIER_LEGEND if legend else "")


#: what the columns of :func:`frontier_table` mean (printed under it; README "Energy, three conventions")
FRONTIER_LEGEND = (
    "Columns: T — time steps simulated; × ANN — the SNN's metric over the ANN's (— when the ANN scores 0); "
    "spikes/img — threshold crossings per image over all T steps; SOPs/img — synaptic operations per image "
    "(each spike × the synapses it reaches); E × ANN — the SNN's energy per image over the ANN's "
    "(E_MAC 4.6 pJ, E_AC 0.9 pJ): paper = first-layer MACs + one AC per spike (the paper's Table 5), "
    "SOP = first-layer MACs + one AC per synaptic operation, NeuroBench = first-layer MACs + one MAC per "
    "graded event × fan-out; not accumulate — the share of operations and of SOP-convention energy that are "
    "multiply-accumulates (the first layer, Σ-Δ evaluations and products, graded layers) rather than accumulates "
    "(README, \"Energy, three conventions\").")


def _ratio(m: float, ann: float | None) -> str:
    """``m / ann`` to 3 decimals, or "—" when the ANN's score is missing or 0 (not ``nan``)."""
    return f"{m / ann:.3f}" if ann else "—"


def _num(v: float | None) -> str:
    return "—" if v is None or v != v else f"{v:.4f}"
