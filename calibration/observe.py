"""Observing the ANN for calibration (spec §4): which tensors, the one pass, dead layers."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import fx, nn
from torch.profiler import record_function
from tqdm.auto import tqdm

from sjunet.calibration.approximation import DeviationFit, estimate_gap
from sjunet.calibration.gap import gap_blocker
from sjunet.calibration.percentile import (COARSE_BINS, DEFAULT_BUDGET, Budget, Scratch, StreamingPercentile,
                                           top_capacity)
from sjunet.calibration.store import CalibrationStats, TensorStats, write_stats
from sjunet.graph import (Blocker, Recorder, UnsupportedGraphError, all_blockers, canonical_graph, cat_parts, kind_of,
                          check_input_size, module_of, refusal_message, relu_slope, size_multiples, tensor_shapes)
from sjunet.io import model_fingerprint, provenance


#: the profiler range of the estimators' work (the calibration benchmark's "statistics" share)
STATISTICS = "sjunet.part::statistics"


def trace_for_conversion(model: nn.Module, example_shape: Iterable[int] | None = None) -> fx.GraphModule:
    """The canonical graph the converter sees (:func:`sjunet.graph.canonical.canonical_graph`): node names
    are those of :class:`sjunet.conversion.recipe.SpikingUNetRecipe`'s graph, so statistics keyed by node
    name line up with the conversion."""
    return canonical_graph(model, example_shape).gm


@dataclass(frozen=True)
class RecordedNode:
    name: str
    role: str


def recorded_nodes(gm: fx.GraphModule) -> list[RecordedNode]:
    """The tensors calibration records: the input, every ReLU output, every cat and each of its
    parts, every residual add, every synaptic output not feeding exactly one ReLU (linear stages,
    joins, the output layer), every tensor a synaptic layer reads (layer-wise scales), and for the
    Σ-Δ neurons (spec §15) every activation's output (``sigma``: λ_out, of |f|), its input
    (``sigma-input``: the unit its synaptic layer is folded to) and every product's output (``product``)."""
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
        elif k == "sigma":
            roles[node.name] = "sigma"
            roles.setdefault(node.args[0].name, "sigma-input")
        elif k == "product":
            roles[node.name] = "product"
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


def merged_cats(gm: fx.GraphModule, nodes: list[RecordedNode], signed: dict[str, str]) -> dict[str, list[str]]:
    """The concatenations whose statistics calibration merges from their parts' instead of
    observing them (their values are their parts' values: a quarter of a U-Net's recorded values
    read once instead of twice) -> their parts, in graph order. A part qualifies when its own
    estimator sees exactly its values as the concatenation's does: by magnitude, or a ReLU's output
    (never negative); a leaky ReLU's estimator sees its input, so such a part does not."""
    roles = {r.name: r.role for r in nodes}
    out: dict[str, list[str]] = {}
    for n in gm.graph.nodes:
        if roles.get(n.name) != "cat" or n.name in signed:
            continue
        parts = [q.name for q in cat_parts(n)]
        if all(q in roles and q not in signed and roles[q] != "input" for q in parts):
            out[n.name] = parts
    return out


class _Merges:
    """The concatenations of :func:`merged_cats` in one calibration: each part's top buffer is
    sized for the largest concatenation it is (transitively) part of — known from the first batch,
    so a part's first-batch tensor waits (a copy) until those concatenations have been computed —
    and the concatenations' estimators are built from their parts' at the end (:meth:`unions`)."""

    def __init__(self, merged: dict[str, list[str]]) -> None:
        self.merged = merged
        self.containing: dict[str, set[str]] = {}  # part -> the merged concatenations holding it
        for c in reversed(list(merged)):  # an outer concatenation first: its parts inherit it
            for q in merged[c]:
                self.containing.setdefault(q, set()).update({c} | self.containing.get(c, set()))
        self.numel: dict[str, int] = {}  # first-batch sizes
        self.channels: dict[str, int] = {}
        self.pending: dict[str, list[torch.Tensor]] = {}

    def took(self, t: str, out: torch.Tensor, est: dict, scratch: Scratch, first_batch: bool) -> bool:
        """Whether estimator ``t``'s tensor ``out`` is handled here: a merged concatenation's (never
        observed), or a part's in the first batch (observed once its buffer can be sized)."""
        if t in self.merged:
            if first_batch:
                self.numel.setdefault(t, out.numel())
                self.channels.setdefault(t, int(out.shape[1]))
                self._release(est, scratch)
            return True
        if first_batch and t in self.containing:
            self.numel.setdefault(t, out.numel())
            self.pending.setdefault(t, []).append(out.detach().clone())  # a later in-place op cannot change it
            self._release(est, scratch)
            return True
        return False

    def _release(self, est: dict, scratch: Scratch) -> None:
        for t in list(self.pending):
            cats = self.containing[t]
            if all(c in self.numel for c in cats):
                est[t].share = max(self.numel[c] / self.numel[t] for c in cats)
                for out in self.pending.pop(t):
                    est[t].observe(out, scratch)

    def unions(self, est: dict, p: float, n_batches: int, magnitude: dict[str, bool], **kwargs) -> None:
        """Replace each merged concatenation's estimator by the union of its parts' (in graph order: a
        concatenation of concatenations merges its parts first)."""
        for c, parts in self.merged.items():
            share = max((self.numel[o] / self.numel[c] for o in self.containing.get(c, ())), default=1.0)
            capacity = top_capacity(p, math.ceil(n_batches * self.numel[c] * share))
            est[c] = StreamingPercentile.union([est[q] for q in parts], capacity, self.channels[c], p=p,
                                               magnitude=magnitude[c], **kwargs)


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
    max_buffer: int = DEFAULT_BUDGET,
    gap_data: Iterable | None = None,
    gap_description: str | None = None,
) -> CalibrationStats:
    """Record whole-set activation statistics of ``model`` over ``data`` (spec §4).

    ``model``: any ``nn.Module`` the converter understands (sjunet's U-Net, MONAI, smp…).
    ``data`` yields input batches (or ``(x, y)`` pairs). **One pass** over it: every recorded
    tensor's p-th percentile (nearest rank, numpy's ``method="inverted_cdf"``) is found *exactly*
    from a buffer of its largest values (:mod:`.percentile`: M = floor((1 − p/100)·N) + 2 values,
    N = batches × the tensor's size in the first batch), with min, max, mean, count and a coarse
    histogram in the same pass. Two cases take a second pass over the data, for the tensors
    concerned only: a batch larger than the first broke the bound N where it mattered (the buffer
    is sized again from the exact count: still exact), or the buffers would exceed ``max_buffer``
    values together (huge sets, small p: those tensors fall back to a ``nbins``-bin histogram,
    error ≤ one bin width, recorded per node as ``error_bound``). A tensor whose λ is 0 or not
    finite (a dead layer) gets the fallback of :func:`dead_layer_fallback`, recorded per node
    (``fallback``, ``raw_percentile``) and, for ReLUs, warned about. Signed tensors (linear
    stages, joins, concatenation parts) are measured by magnitude |x|: their λ is a unit, never
    negative. A leaky ReLU / PReLU (role ``relu`` like every neuron layer) is measured on |its
    input| (:func:`signed_relus`). Instance / group / layer norms: the pass also fits each norm's
    fixed deviation σ̂ (stored per node as ``sigma``), and one more forward measures the gap that
    costs the ANN (``approximation``; :func:`~sjunet.calibration.approximation.estimate_gap`) on data
    not used to fit σ̂: ``gap_data`` (batches held apart from ``data``, e.g. the validation split;
    ``gap_description`` names them, "validation") when given, else ``data`` cross-validated — with
    its 95 % interval and a flag for a degenerate ANN. Writes HDF5 to ``output`` when given.

    A model with blockers is refused (:class:`~sjunet.errors.UnsupportedGraphError`) with all of them
    at once — its approximation gap included: with norms, the gap is measured first (the graph runs
    as the ANN) and listed with the others when it fails the gate (:mod:`.gap`).
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
    if not isinstance(first, torch.Tensor) or first.dim() not in (4, 5):
        raise ValueError("calibration batches must be image tensors [B, C, H, W] or volume tensors [B, C, D, H, W], "
                         f"got {getattr(first, 'shape', type(first))}")
    tr = canonical_graph(model, tuple(first.shape), check=False)  # = trace_for_conversion, with the output ops
    gm = tr.gm.to(device)
    fit = DeviationFit(gm)  # instance/group/layer norms: σ̂ fit in the same pass (calibration.approximation)
    if tr.blockers:
        _refuse(model, tr, gm, fit, data, n_batches, device, gap_data, gap_description, progress)
    nodes = recorded_nodes(gm)
    signed = signed_relus(gm)
    budget = Budget(max_buffer)
    magnitude = {r.name: r.role not in ("input", "relu") or r.name in signed for r in nodes}
    merges = _Merges(merged_cats(gm, nodes, signed))  # concatenations whose statistics are their parts' merged
    est = {r.name: StreamingPercentile(p, n_batches, positive_only, nbins=nbins, budget=budget,
                                       magnitude=magnitude[r.name]) for r in nodes}
    # which estimators each node's output feeds: its own, and a leaky node's is its input (signed_relus)
    targets: dict[str, list[str]] = {}
    for r in nodes:
        targets.setdefault(signed.get(r.name, r.name), []).append(r.name)
    out_name = _output_name(gm)
    seen = {"offset": 0, "input_shape": None, "output_shape": None}
    scratch = Scratch()  # the estimators' temporaries, shared: a batch allocates nothing large

    def observe(name, out):
        fit.observe(name, out, seen["offset"])
        for t in targets.get(name, ()):
            with record_function(STATISTICS):
                if not merges.took(t, out, est, scratch, first_batch=seen["offset"] == 0):
                    est[t].observe(out, scratch)
        if name == out_name and isinstance(out, torch.Tensor):
            seen["output_shape"] = list(out.shape[1:])

    _run(gm, observe, data, n_batches, device, seen, "calibrate" if progress else None)
    merges.unions(est, p, n_batches, positive_only=positive_only, nbins=nbins, magnitude=magnitude)

    # the second pass, only where the one pass could not give the exact percentile
    redo: dict[str, StreamingPercentile] = {}
    for name, e in est.items():
        if not e.exact():
            if e.capacity and budget.take(top_capacity(p, e.seen)):  # the bound N failed: size it exactly
                redo[name] = StreamingPercentile(p, positive_only=positive_only, nbins=nbins,
                                                 magnitude=e.magnitude, capacity=top_capacity(p, e.seen))
            else:
                redo[name] = e  # the histogram fallback: observe_hist
    if redo:
        def second(name, out):
            for t in targets.get(name, ()):
                if t in redo:
                    r = redo[t]
                    r.observe(out) if r is not est[t] else r.observe_hist(out)
        _run(gm, second, data, n_batches, device, {"offset": 0}, "calibrate, pass 2" if progress else None)
        est.update(redo)

    stats = {}
    dead = []
    for r in nodes:
        e = est[r.name]
        raw = e.percentile(p)
        lam, fallback = (raw, None) if r.role == "input" else dead_layer_fallback(raw, e.max)
        if fallback and r.role == "relu":
            dead.append(f"{r.name} ({r.role}: p{p:g} = {raw:.3g}, max = {e.max:.3g} -> λ = {lam:.3g})")
        counts, edges = e.coarse_histogram()
        stats[r.name] = TensorStats(
            name=r.name, role=r.role, percentile=lam, p=p, max=e.max, min=e.min, mean=e.mean,
            count=e.count, channels=int(e.channels or 0), error_bound=e.error_bound(p) if e.count else 0.0,
            histogram=counts, bin_edges=edges, fallback=fallback, raw_percentile=raw)
    if dead:
        warnings.warn(f"{len(dead)} tensor(s) never or almost never fire on the calibration data (dead layers: "
                      f"zero in the ANN and the SNN alike); fallback scales used: {'; '.join(dead)}", stacklevel=2)
    approximation = None
    if fit.norms:
        approximation, sigmas = _approximation(gm, tr.post, fit, data, n_batches, device, gap_data, gap_description,
                                               tr.size_rule)
        for k, sigma in sigmas.items():
            stats[k].sigma = sigma.numpy()
    gm.cpu()
    exact = all(t.error_bound == 0 for t in stats.values())
    prov = provenance()
    result = CalibrationStats(
        nodes=stats, model_fingerprint=model_fingerprint(model), p=p,
        data={**(data_description or {}), "batches": n_batches, "input_shape": seen["input_shape"]},
        options={"p": p, "positive_only": positive_only, "nbins": nbins, "estimator":
                 "one pass, exact nearest-rank (numpy inverted_cdf): the floor((1-p/100)*N)+2 largest values kept "
                 "per tensor, error 0" + ("" if exact else
                 "; over the buffer budget: two-pass histogram, |error| <= (max-min(0,min))/nbins (error_bound)"),
                 "histogram": f"coarse, for plots: at most {COARSE_BINS} bins of width 2^e, merged as the range grows",
                 "dead_layer_fallback": "lambda = max if max > 0 else 1"},
        versions=prov["versions"], created=prov["created"],
        graph={"nodes": len(gm.graph.nodes), "output_shape": seen["output_shape"] or []},
        approximation=approximation)
    if output is not None:
        write_stats(result, output)
    return result


def _run(gm: fx.GraphModule, callback, data, n_batches: int, device, seen: dict, desc: str | None) -> None:
    """One forward pass of ``gm`` over the first ``n_batches`` batches, every node's output handed to
    ``callback(name, value)``; keeps the sample offset and the last input shape in ``seen``."""
    rec = Recorder(gm, callback)
    it = _batches_of(data)
    with torch.no_grad():
        for _ in tqdm(range(n_batches), desc=desc, disable=desc is None):
            x = next(it).to(device)
            seen["input_shape"] = list(x.shape)
            rec.run(x)
            seen["offset"] += x.shape[0]


def _approximation(gm: fx.GraphModule, post: list, fit: DeviationFit, data, n_batches: int, device, gap_data,
                   gap_description: str | None, size_rule: dict | None = None) -> tuple[dict, dict]:
    """The approximation record and σ̂ of every norm (:func:`sjunet.calibration.approximation.estimate_gap`):
    on ``gap_data`` when given (padded to the graph's size multiples; sizes the trace's ``size_rule``
    does not hold for are not used), else on the calibration batches cross-validated."""
    batches = (x.to(device) for _, x in zip(range(n_batches), _batches_of(data)))
    if gap_data is None:
        return estimate_gap(gm, post, fit, batches, None, gap_description)
    shape = seen_shape(data)
    multiples = size_multiples(tensor_shapes(gm, shape), tuple(shape[2:]))

    def held_out():
        for x in _batches_of(gap_data):
            check_input_size(size_rule, [-(-n // m) * m for n, m in zip(x.shape[2:], multiples)])  # else: ValueError
            yield x.to(device)

    held = held_out()
    try:
        return estimate_gap(gm, post, fit, batches, held, gap_description, multiples)
    except (RuntimeError, ValueError) as e:  # a graph specialised on the calibration size: cross-validated
        batches = (x.to(device) for _, x in zip(range(n_batches), _batches_of(data)))
        record, sigmas = estimate_gap(gm, post, fit, batches)
        record["holdout"] = (record["holdout"] + f"; the held-out batches did not pass the graph ({type(e).__name__}: "
                             f"{(str(e).splitlines() or [''])[0][:120]}), so they were not used")[:1000]
        return record, sigmas


def seen_shape(data) -> tuple[int, ...]:
    """The shape of the first calibration batch."""
    return tuple(next(iter(_batches_of(data))).shape)


def _refuse(model: nn.Module, tr, gm: fx.GraphModule, fit: DeviationFit, data, n_batches: int, device, gap_data,
            gap_description: str | None, progress: bool) -> None:
    """Raise every blocker of ``model`` at once, its approximation gap included: with norms, σ̂ is fit
    (one pass) and the gap measured (:func:`_approximation`) on the graph as it stands — it runs as the
    ANN — so fixing the other blockers never reveals a gap refusal later."""
    blockers = list(tr.blockers)
    if fit.norms:
        try:
            seen = {"offset": 0}
            _run(gm, lambda name, out: fit.observe(name, out, seen["offset"]), data, n_batches, device, seen,
                 "calibrate (norms of a refused model)" if progress else None)
            approximation, _ = _approximation(gm, tr.post, fit, data, n_batches, device, gap_data, gap_description)
            b = gap_blocker(gm, approximation)
        except Exception as e:  # noqa: BLE001 - a graph that does not run: its other blockers are the news
            first = fit.norms and next(iter(fit.norms))
            b = Blocker(first, "approximation gap", "", "approximation gap",
                        f"not measured: the graph does not run as it stands ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:120]}); `sjunet calibrate` measures it once the other "
                        "blockers are removed")
        if b is not None:
            blockers.append(b)
    raise UnsupportedGraphError(refusal_message(type(model).__name__, all_blockers(gm, blockers)))


def _output_name(gm: fx.GraphModule) -> str:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    return out.args[0].name
