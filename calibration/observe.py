"""Tracing and observing the ANN for calibration (spec §4)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from spikingjelly.activation_based.functional.conv_bn_fusion import fuse_conv_bn_eval_modules
from torch import fx, nn
from tqdm.auto import tqdm

from sjunet.calibration.percentile import StreamingPercentile
from sjunet.calibration.store import CalibrationStats, TensorStats, write_stats
from sjunet.graph import cat_parts, check_supported, kind_of, relu_user
from sjunet.io import model_fingerprint, provenance


def fold_bn(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every Conv→BatchNorm pair (SpikingJelly's fusion; the graph is retraced)."""
    return fuse_conv_bn_eval_modules(gm)


def trace_for_conversion(model: nn.Module) -> fx.GraphModule:
    """The graph the converter sees: an eval-mode deep copy, FX-traced, BatchNorm folded.

    Node names are those of :class:`sjunet.recipe.SpikingUNetRecipe`'s graph (same tracer, same
    fusion), so statistics keyed by node name line up with the conversion.
    """
    m = copy.deepcopy(model).eval()
    gm = fold_bn(fx.symbolic_trace(m))
    check_supported(gm)
    return gm


@dataclass(frozen=True)
class RecordedNode:
    name: str
    role: str


def recorded_nodes(gm: fx.GraphModule) -> list[RecordedNode]:
    """The tensors calibration records: the input, every ReLU output, every cat and each of its
    parts, and every synaptic output not followed by a ReLU (linear stages and the output layer)."""
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
        elif k == "synaptic" and relu_user(gm, node) is None:
            roles.setdefault(node.name, "linear")
    order = [n.name for n in gm.graph.nodes if n.name in roles]
    return [RecordedNode(n, roles[n]) for n in order]


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, callback) -> None:
        super().__init__(gm)
        self.callback = callback

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.callback(n.name, out)
        return out


def _batches_of(data: Iterable) -> Iterable[torch.Tensor]:
    for batch in data:
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        elif isinstance(batch, dict):
            batch = batch.get("input", batch.get("x"))
        yield batch


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

    ``data`` yields input batches (or ``(x, y)`` pairs). Two passes over it: ranges, then
    histograms (percentile error ≤ one bin width of 1/nbins of the range). Writes HDF5 to
    ``output`` when given. A ReLU or concatenation whose λ is 0 or not finite is an error that
    names the node.
    """
    if not 0 < p <= 100:
        raise ValueError(f"percentile p must be in (0, 100], got {p}")
    gm = trace_for_conversion(model).to(device)
    nodes = recorded_nodes(gm)
    roles = {r.name: r.role for r in nodes}
    est = {r.name: StreamingPercentile(nbins, positive_only) for r in nodes}
    data = list(data) if not hasattr(data, "__len__") else data
    n_batches = len(data) if max_batches is None else min(len(data), max_batches)
    if n_batches == 0:
        raise ValueError("the calibration data is empty: give at least one batch")
    input_shape = None
    for pass_no, method in ((1, "observe_range"), (2, "observe_hist")):
        def cb(name, out, method=method):
            if name in est:
                getattr(est[name], method)(out)
        rec = _Recorder(gm, cb)
        it = _batches_of(data)
        with torch.no_grad():
            for i in tqdm(range(n_batches), desc=f"calibrate pass {pass_no}/2", disable=not progress):
                x = next(it).to(device)
                input_shape = list(x.shape)
                rec.run(x)
    stats = {}
    for r in nodes:
        e = est[r.name]
        lam = e.percentile(p)
        if r.role in ("relu", "cat") and not (lam > 0 and torch.isfinite(torch.tensor(lam))):
            raise ValueError(
                f"calibration: the {p}th percentile of node {r.name!r} ({r.role}) is {lam}: the layer "
                "never fires on this data. Use more or other calibration data, or --positive-only.")
        counts, edges = e.coarse_histogram()
        stats[r.name] = TensorStats(
            name=r.name, role=r.role, percentile=lam, p=p, max=e.max, min=e.min, mean=e.mean,
            count=e.count, channels=int(e.channels or 0), error_bound=e.error_bound(),
            histogram=counts, bin_edges=edges)
    prov = provenance()
    result = CalibrationStats(
        nodes=stats, model_fingerprint=model_fingerprint(model), p=p,
        data={**(data_description or {}), "batches": n_batches, "input_shape": input_shape},
        options={"p": p, "positive_only": positive_only, "nbins": nbins, "estimator":
                 "two-pass histogram, nearest-rank, |error| <= (max-min(0,min))/nbins"},
        versions=prov["versions"], created=prov["created"])
    if output is not None:
        write_stats(result, output)
    return result
