"""Observing the ANN for calibration (spec §4): which tensors, the two passes, dead layers."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from sjunet.calibration.approximation import FOLDS, DeviationStats, cross_validated_outputs, measure_gap, norm_nodes
from sjunet.calibration.percentile import StreamingPercentile
from sjunet.calibration.store import CalibrationStats, TensorStats, write_stats
from sjunet.graph import Recorder, canonical_graph, cat_parts, kind_of, module_of, relu_slope, tensor_shapes
from sjunet.io import model_fingerprint, provenance


def trace_for_conversion(model: nn.Module, example_shape: Iterable[int] | None = None) -> fx.GraphModule:
    """The canonical graph the converter sees (:func:`sjunet.graph.canonical_graph`): node names
    are those of :class:`sjunet.recipe.SpikingUNetRecipe`'s graph, so statistics keyed by node
    name line up with the conversion."""
    return canonical_graph(model, example_shape).gm


@dataclass(frozen=True)
class RecordedNode:
    name: str
    role: str


def recorded_nodes(gm: fx.GraphModule) -> list[RecordedNode]:
    """The tensors calibration records: the input, every ReLU output, every cat and each of its
    parts, every residual add, every synaptic output not feeding exactly one ReLU (linear stages,
    joins, the output layer), and every tensor a synaptic layer reads (layer-wise scales)."""
    roles: dict[str, str] = {}
    for node in gm.graph.nodes:
        k = kind_of(gm, node)
        if k == "input":
            roles[node.name] = "input"
        elif k == "relu":
            roles[node.name] = "relu"
        elif k == "cat":
            roles[node.name] = "cat"
            for p in cat_parts(node):
                roles.setdefault(p.name, "cat-part")
        elif k == "add":
            roles[node.name] = "add"
        elif k == "normalize":  # a norm's division: its fixed deviation σ̂ is stored with it
            roles[node.name] = "norm"
        elif k == "synaptic":
            users = list(node.users)
            if not (len(users) == 1 and kind_of(gm, users[0]) == "relu"):
                roles.setdefault(node.name, "linear")
            roles.setdefault(node.args[0].name, "synaptic-input")
    return [RecordedNode(n.name, roles[n.name]) for n in gm.graph.nodes if n.name in roles]


def signed_relus(gm: fx.GraphModule) -> dict[str, str]:
    """The ``relu`` nodes whose output is signed (LeakyReLU, PReLU) -> their input node.

    Such a node becomes a signed neuron whose ladder is symmetric in the membrane (θ and its
    mirror), so its λ — the unit of both sides — is the percentile of |its input| (the
    pre-activation), recorded under the node's name: below zero the neuron saturates at −Σθ·λ of
    *input*, not of output, and |LeakyReLU_α(x)| would understate the negative tail by 1/α (on small
    random nets with integrate-and-fire neurons that left a 3–14 % error no T removes). For a ReLU
    the two coincide on the positive side."""
    return {n.name: n.args[0].name for n in gm.graph.nodes
            if kind_of(gm, n) == "relu" and relu_slope(module_of(gm, n)) is not None}


def _batches_of(data: Iterable) -> Iterable[torch.Tensor]:
    for batch in data:
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        elif isinstance(batch, dict):
            batch = batch.get("input", batch.get("x"))
        yield batch


def dead_layer_fallback(lam: float, maximum: float) -> tuple[float, str | None]:
    """λ for a tensor whose percentile is 0 or not finite (a layer that never or almost never
    fires on the calibration data): its maximum when that is positive, else 1. It outputs zeros
    in the ANN and the SNN alike, so this is not an error; returns ``(λ, fallback or None)``."""
    if lam > 0 and torch.isfinite(torch.tensor(lam)):
        return lam, None
    if maximum > 0 and torch.isfinite(torch.tensor(maximum)):
        return float(maximum), "max"
    return 1.0, "one"


def calibrate(
    model: nn.Module,
    data: Iterable,
    output: str | None = None,
    p: float = 99.9,
    positive_only: bool = False,
    nbins: int = 1 << 16,
    max_batches: int | None = None,
    data_description: dict | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> CalibrationStats:
    """Record whole-set activation statistics of ``model`` over ``data`` (spec §4).

    ``model``: any ``nn.Module`` the converter understands (sjunet's U-Net, MONAI, smp…).
    ``data`` yields input batches (or ``(x, y)`` pairs). Two passes over it: ranges, then
    histograms (percentile error ≤ one bin width of 1/nbins of the range). A tensor whose λ is
    0 or not finite (a dead layer) gets the fallback of :func:`dead_layer_fallback`, recorded per
    node (``fallback``, ``raw_percentile``) and, for ReLUs, warned about. Signed tensors (linear
    stages, joins, concatenation parts) are measured by magnitude |x|: their λ is a unit, never
    negative. A leaky ReLU / PReLU (role ``relu`` like every neuron layer) is measured on |its
    input| (:func:`signed_relus`). Instance / group / layer norms: pass 1 also fits each norm's
    fixed deviation σ̂ (stored per node as ``sigma``), and one more forward measures the gap that
    costs the ANN, cross-validated (``approximation``; :mod:`.approximation`). Writes HDF5 to
    ``output`` when given.
    """
    from sjunet.distributed import resolve_device

    if not 0 < p <= 100:
        raise ValueError(f"percentile p must be in (0, 100], got {p}")
    device = resolve_device(device)
    data = list(data) if not hasattr(data, "__len__") else data
    n_batches = len(data) if max_batches is None else min(len(data), max_batches)
    if n_batches == 0:
        raise ValueError("the calibration data is empty: give at least one batch")
    first = next(iter(_batches_of(data)))
    if not isinstance(first, torch.Tensor) or first.dim() != 4:
        raise ValueError(f"calibration batches must be image tensors [B, C, H, W], got {getattr(first, 'shape', type(first))}")
    tr = canonical_graph(model, tuple(first.shape))  # = trace_for_conversion, with the output ops
    gm = tr.gm.to(device)
    nodes = recorded_nodes(gm)
    signed = signed_relus(gm)
    est = {r.name: StreamingPercentile(nbins, positive_only,
                                       magnitude=r.role not in ("input", "relu") or r.name in signed)
           for r in nodes}
    feeds: dict[str, list[str]] = {}  # a leaky node's λ is measured on its input (signed_relus)
    for name, src in signed.items():
        feeds.setdefault(src, []).append(name)
    norms = norm_nodes(gm)  # instance/group/layer norms: σ̂ fit during pass 1 (calibration.approximation)
    norm_of = {n.args[0].name: n.name for n in gm.graph.nodes if n.name in norms}
    folds = {k: [DeviationStats(m) for _ in range(FOLDS)] for k, m in norms.items()}  # sample i: fold i % FOLDS
    offset = [0]  # index of the batch's first sample (pass 1)
    input_shape = None
    for pass_no, method in ((1, "observe_range"), (2, "observe_hist")):
        def cb(name, out, method=method):
            if pass_no == 1 and name in norm_of:
                fold = torch.arange(offset[0], offset[0] + out.shape[0], device=out.device) % FOLDS
                for f, d in enumerate(folds[norm_of[name]]):
                    d.add(out[fold == f])
            if name in est and name not in signed:
                getattr(est[name], method)(out)
            for leaky in feeds.get(name, ()):
                getattr(est[leaky], method)(out)
        rec = Recorder(gm, cb)
        it = _batches_of(data)
        with torch.no_grad():
            for _ in tqdm(range(n_batches), desc=f"calibrate pass {pass_no}/2", disable=not progress):
                x = next(it).to(device)
                input_shape = list(x.shape)
                rec.run(x)
                offset[0] += x.shape[0]
    stats = {}
    dead = []
    for r in nodes:
        e = est[r.name]
        raw = e.percentile(p)
        lam, fallback = (raw, None) if r.role == "input" else dead_layer_fallback(raw, e.max)
        if fallback and r.role == "relu":
            dead.append(f"{r.name} ({r.role}: p{p:g} = {raw:.3g}, max = {e.max:.3g} -> λ = {lam:.3g})")
        counts, edges = e.coarse_histogram() if e.hist is not None else (torch.zeros(0).numpy(), torch.zeros(1).numpy())
        stats[r.name] = TensorStats(
            name=r.name, role=r.role, percentile=lam, p=p, max=e.max, min=e.min, mean=e.mean,
            count=e.count, channels=int(e.channels or 0), error_bound=e.error_bound() if e.count else 0.0,
            histogram=counts, bin_edges=edges, fallback=fallback, raw_percentile=raw)
    if dead:
        warnings.warn(f"{len(dead)} tensor(s) never or almost never fire on the calibration data (dead layers: "
                      f"zero in the ANN and the SNN alike); fallback scales used: {'; '.join(dead)}", stacklevel=2)
    approximation = _approximation(gm, tr.post, norms, folds, data, n_batches, device, stats) if norms else None
    shapes = tensor_shapes(gm.cpu(), input_shape)
    prov = provenance()
    result = CalibrationStats(
        nodes=stats, model_fingerprint=model_fingerprint(model), p=p,
        data={**(data_description or {}), "batches": n_batches, "input_shape": input_shape},
        options={"p": p, "positive_only": positive_only, "nbins": nbins, "estimator":
                 "two-pass histogram, nearest-rank, |error| <= (max-min(0,min))/nbins",
                 "dead_layer_fallback": "lambda = max if max > 0 else 1"},
        versions=prov["versions"], created=prov["created"],
        graph={"nodes": len(gm.graph.nodes), "output_shape": list(shapes.get(_output_name(gm), ()))},
        approximation=approximation)
    if output is not None:
        write_stats(result, output)
    return result


def _approximation(gm: fx.GraphModule, post: list, norms: dict, folds: dict, data, n_batches: int, device,
                   stats: dict) -> dict:
    """Store σ̂ (fit on every calibration sample) with each norm node, then measure the gap by
    cross-validation: one more forward of the exact and the approximated ANN, each sample with σ̂
    fit on the other folds (:func:`sjunet.calibration.approximation.cross_validated_outputs`)."""
    whole = {k: sum(folds[k][1:], folds[k][0]) for k in norms}
    for k, d in whole.items():
        stats[k].sigma = d.sigma().numpy()
    held_out = sum(d.samples > 0 for d in next(iter(folds.values()))) > 1
    batches = (x.to(device) for _, x in zip(range(n_batches), _batches_of(data)))
    gap = measure_gap(cross_validated_outputs(gm, folds, batches), post)
    return {"nodes": [{"node": k, "kind": m.kind, "groups": m.groups, "channels": int(whole[k].sigma().numel()),
                       "eps": m.eps, "spread": whole[k].spread()} for k, m in norms.items()],
            **gap, "held_out": held_out,
            "holdout": (f"{FOLDS}-fold cross-validation over the calibration samples (sample i in fold i % {FOLDS}): "
                        "each output compared under sigma fit on the other folds" if held_out
                        else "in-sample: a single calibration sample")}


def _output_name(gm: fx.GraphModule) -> str:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    return out.args[0].name
