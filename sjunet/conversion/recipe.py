"""Conversion as a SpikingJelly ``ann2snn`` recipe (spec §5, §11), run by ``ann2snn.Converter``.

:class:`SpikingUNetRecipe` subclasses ``FXConversionRecipe``; each lifecycle hook does one thing:

========================  =========================================================================
``validate``              check options (normalization, neuron, ladder)
``before_trace``          refuse statistics of another model (fingerprint); hand SpikingJelly the
                          canonical graph (:func:`sjunet.graph.canonical.canonical_graph`: any U-Net's ReLU
                          spellings, BatchNorm, dropout, interpolation, padding made uniform)
``after_trace``           check SpikingJelly's trace names nodes as the statistics do; refuse an
                          unsupported graph, naming the node
``insert_observers``      nothing: statistics come from the calibration stage's HDF5
``calibrate``             turn the statistics into a :class:`~sjunet.conversion.normalization.NormalizationPlan`
``replace``               rescale weights; gains on identity edges; ReLU → neuron (from the neuron
                          factory; LeakyReLU / PReLU → its signed neuron, :func:`build_neuron`); MaxPool → :class:`~sjunet.layers.stages.SpikingMaxPool2d`; first layers
                          → :class:`~sjunet.layers.static_synapse.StaticInputSynapse`; SpikingJelly step-mode
                          adaptation (multi-step layers)
``finalize``              eval mode; a :class:`~sjunet.snn.model.SpikingUNet` with its typed record
========================  =========================================================================

:func:`convert` is the library entry point (``sjunet convert``) and works on any ``nn.Module``;
:func:`convert_stock` converts the same ANN with SpikingJelly's stock ``RateCodingRecipe`` (IF,
percentile) as the peer. :func:`save_snn` / :func:`load_snn` write and read SNN files
(:mod:`sjunet.snn.file`: tensors + a plain record, no pickles).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from spikingjelly.activation_based import ann2snn, functional
from spikingjelly.activation_based.ann2snn.recipes.base import replace_submodule
from torch import fx, nn

from sjunet.calibration.gap import (GAP_MAX_RELATIVE_ERROR, GAP_MAX_RELATIVE_ERROR_SEGMENTATION, GAP_MIN_AGREEMENT,
                                    gap_blocker, gap_reasons, gap_refusal)
from sjunet.calibration.reader import read_stats
from sjunet.calibration.store import CalibrationStats
from sjunet.conversion.normalization import NORMS, NormalizationPlan, apply_plan, plan_normalization
from sjunet.graph import (Trace, UnsupportedGraphError, all_blockers, canonical_graph, check_supported, kind_of,
                          module_of, refusal_message, relu_slope, signature, size_multiple, size_multiples,
                          stages_are_leaves, tensor_shapes)
from sjunet.io import ArtifactError, file_fingerprint, model_fingerprint, provenance
from sjunet.layers.dims import set_spatial_dims
from sjunet.layers.stages import ChannelAffine, Normalize, SpikingMaxPool2d
from sjunet.neurons import FACTORIES, NeuronFactory, StaticInputSynapse, named_ladder, validate_ladder
from sjunet.snn import Conversion, SNNRecord, SpikingUNet
from sjunet.snn import file as snnfile

NEURONS = tuple(FACTORIES)


@dataclass(frozen=True)
class ConversionOptions:
    """Options of :func:`convert`. ``thresholds=None`` means the neuron's default ladder
    ((2, 1, 0.5, 0.25) for MT, (1,) for IF)."""

    norm: str = "connection"
    neuron: str = "mt"
    thresholds: tuple[float, ...] | None = None
    v_init: str | float = "half"

    def initial_potential(self) -> float:
        """Membrane potential after reset: ``"half"`` = θ_N/2 (half the smallest threshold, which
        turns the floor quantiser into rounding and removes the systematic under-estimate of rates
        at small T; Bu et al., ICLR 2022), ``"zero"`` = 0 (the paper), or a finite number
        (normalised units)."""
        if self.v_init == "half":
            return self.ladder()[-1] / 2
        if self.v_init == "zero":
            return 0.0
        try:
            v = float(self.v_init)
        except (TypeError, ValueError):
            raise ValueError(f"--v-init takes 'half', 'zero' or a number, got {self.v_init!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"--v-init must be finite, got {self.v_init!r}")
        return v

    def ladder(self) -> tuple[float, ...]:
        if self.thresholds is not None:
            return validate_ladder(self.thresholds)
        return FACTORIES[self.neuron][0] if self.neuron in FACTORIES else (1.0,)

    def check(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown --norm {self.norm!r}: choose one of {', '.join(NORMS)}")
        if self.neuron not in FACTORIES:
            raise ValueError(f"unknown --neuron {self.neuron!r}: choose one of {', '.join(FACTORIES)}")
        ladder = self.ladder()
        if self.neuron == "if" and len(ladder) != 1:
            raise ValueError(f"--neuron if takes exactly one threshold, got {ladder}")
        self.initial_potential()

    def factory(self) -> NeuronFactory:
        return FACTORIES[self.neuron][1](self.ladder(), self.initial_potential())


class SpikingUNetRecipe(ann2snn.FXConversionRecipe):
    """Neurons from a factory + layer-/connection-wise normalization from HDF5 statistics."""

    def __init__(self, stats: CalibrationStats, options: ConversionOptions | None = None,
                 neuron_factory: NeuronFactory | None = None, accept_gap: bool = False) -> None:
        super().__init__()
        self.accept_gap = accept_gap
        self.approximations: list[dict] = []
        self.stats = stats
        self.options = options or ConversionOptions()
        self.neuron_factory = neuron_factory
        self.plan: NormalizationPlan | None = None
        self.ann_fingerprint: str | None = None
        self.canonical: Trace | None = None
        self.graph_record: dict | None = None
        self.shapes: dict | None = None

    def validate(self, converter) -> None:
        self.options.check()

    def before_trace(self, converter, ann: nn.Module) -> nn.Module:
        self.ann_fingerprint = model_fingerprint(ann)
        self.stats.check_model(self.ann_fingerprint)
        shape = self.stats.data.get("input_shape")
        if not shape:
            raise ArtifactError("the statistics do not record the calibration input shape; re-run `sjunet calibrate`")
        self.canonical = canonical_graph(ann, shape, check=False)
        gap = gap_blocker(self.canonical.gm, self.stats.approximation, self.accept_gap)
        if self.canonical.blockers:  # every blocker at once, the approximation gap included
            raise UnsupportedGraphError(refusal_message(type(ann).__name__, all_blockers(
                self.canonical.gm, self.canonical.blockers + ([gap] if gap else []))))
        if gap is not None:
            raise ApproximationGapError(f"cannot convert {type(ann).__name__}: {gap.detail}")
        return self.canonical.gm

    def after_trace(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        if signature(fx_model) != signature(self.canonical.gm):
            raise RuntimeError("internal error: SpikingJelly's trace of the canonical graph names nodes differently")
        check_supported(fx_model)
        self.approximations = fix_deviations(fx_model, self.stats)
        set_spatial_dims(fx_model)
        return fx_model

    def insert_observers(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        return fx_model

    def calibrate(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        self.shapes = tensor_shapes(fx_model, self.stats.data["input_shape"])
        max_output = (self.neuron_factory or self.options.factory())("probe").max_output
        self.plan = plan_normalization(fx_model, self.stats, self.options.norm, self.shapes, max_output)
        return fx_model

    def replace(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        assert self.plan is not None
        apply_plan(fx_model, self.plan)
        _insert_gains(fx_model, self.plan)
        set_spatial_dims(fx_model)  # the gains broadcast over the network's spatial axes
        factory = self.neuron_factory or self.options.factory()
        for node in list(fx_model.graph.nodes):
            k = kind_of(fx_model, node)
            if k == "relu":
                replace_submodule(fx_model, node.target, build_neuron(factory, node.name,
                                                                      relu_slope(module_of(fx_model, node))))
            elif k == "maxpool":
                replace_submodule(fx_model, node.target, SpikingMaxPool2d.from_maxpool(module_of(fx_model, node)))
            elif k == "synaptic" and node.args[0].op == "placeholder":
                replace_submodule(fx_model, node.target, StaticInputSynapse(module_of(fx_model, node)))
        fx_model.recompile()
        self.graph_record = snnfile.graph_spec(fx_model)
        return snnfile.adapt(fx_model)

    def finalize(self, converter, fx_model: fx.GraphModule) -> nn.Module:
        for n in fx_model.graph.nodes:
            n.type = None
        fx_model.recompile()
        fx_model.eval()
        functional.invalidate_reset_cache(fx_model)
        return SpikingUNet.adopt(fx_model, SNNRecord(conversion=Conversion.from_dict(self.record()),
                                                     graph=self.graph_record, post=list(self.canonical.post)))

    def record(self) -> dict:
        """The conversion record (JSON-able): options, plan summary, fingerprints, graph facts."""
        gm, plan = self.canonical.gm, self.plan
        targets = {n.name: n.target for n in gm.graph.nodes if n.op == "call_module"}
        kinds = {n.name: kind_of(gm, n) for n in gm.graph.nodes}
        inputs = {n.name: n.args[0].name for n in gm.graph.nodes if kinds[n.name] == "synaptic"}
        shape = self.stats.data["input_shape"]
        out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        opts = self.options
        nd = len(shape) - 2
        # volumes: the multiple of each axis (an anisotropic U-Net pools some axes less)
        per_axis = {} if nd == 2 else {"size_multiples": list(size_multiples(self.shapes, tuple(shape[2:])))}
        return per_axis | {
            "options": {**asdict(opts), "thresholds": list(opts.ladder()), "v_init_value": opts.initial_potential(),
                        "neuron_factory": None if self.neuron_factory is None else getattr(
                            self.neuron_factory, "__name__", type(self.neuron_factory).__name__)},
            "ann_fingerprint": self.ann_fingerprint,
            "stats_fingerprint": self.stats.model_fingerprint,
            "layers": {n: {"role": ls.role, "out_unit": ls.out_unit,
                           "neuron": targets.get(ls.relu) if ls.relu else None,
                           "after_cat": kinds.get(inputs[n]) == "cat", "parts": [asdict(p) for p in ls.parts]}
                       for n, ls in plan.layers.items()},
            "neurons": {targets[r]: {"relu": r, "lambda": lam, "fallback": self.stats.nodes[r].fallback,
                                     "cap": plan.caps.get(r), "negative_slope": _slope_record(gm, r)}
                        for r, lam in plan.neurons.items()},
            "gains": [{"source": g.source, "consumer": g.consumer, "min": float(g.gain.min()),
                       "max": float(g.gain.max())} for g in plan.gains],
            "dead_layers": sorted(self.stats.dead),
            "trace_decisions": self.canonical.decisions,
            "specialised": self.canonical.specialised,
            "size_rule": self.canonical.size_rule,
            "post": self.canonical.post,
            "input_channels": int(shape[1]),
            "output_channels": int(self.shapes[out.name][0]),
            "example_shape": list(shape),
            "size_multiple": size_multiple(self.shapes, tuple(shape[2:])),
            "approximations": self.approximations,
            "approximation_gap": _gap_record(self.stats.approximation, self.accept_gap) if self.approximations else None,
        }


class ApproximationGapError(ValueError):
    """Fixing the deviations of the model's norms costs the ANN more than the refusal thresholds
    (:func:`sjunet.calibration.gap.gap_refusal`) and the gap was not accepted."""


def fix_deviations(gm: fx.GraphModule, stats: CalibrationStats) -> list[dict]:
    """Replace every :class:`~sjunet.layers.stages.Normalize` node of ``gm`` (a norm's per-sample division)
    by the fixed deviation σ̂ of the statistics: 1/σ̂ folded into the norm's affine when that is its
    only user (node erased), else the node becomes a ``ChannelAffine(1/σ̂)`` (same name). Returns
    the conversion record's ``approximations``; statistics without σ̂ for a norm are refused."""
    out = []
    for node in list(gm.graph.nodes):
        m = module_of(gm, node)
        if not isinstance(m, Normalize):
            continue
        ts = stats.nodes.get(node.name)
        if ts is None or ts.sigma is None:
            raise ArtifactError(
                f"the statistics carry no fixed deviation for norm node {node.name!r} ({m.kind}): they were written "
                "before sjunet converted instance/group/layer norms, or not by `sjunet calibrate`; re-run it")
        sigma = torch.as_tensor(ts.sigma, dtype=torch.float64).reshape(-1)
        entry = {"node": node.name, "kind": m.kind, "groups": m.groups, "channels": int(sigma.numel()), "eps": m.eps,
                 "sigma_min": float(sigma.min()), "sigma_max": float(sigma.max()), "folded_into": None}
        users = list(node.users)
        affine = module_of(gm, users[0]) if len(users) == 1 else None
        if isinstance(affine, ChannelAffine) and affine.channels == sigma.numel():
            affine.scale.data /= sigma.to(affine.scale.dtype)
            entry["folded_into"] = users[0].name
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        else:
            replace_submodule(gm, node.target, ChannelAffine.of((1 / sigma).float()))
        out.append(entry)
    if out:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return out


def _gap_record(approximation: dict | None, accepted: bool) -> dict:
    """The conversion record's ``approximation_gap``: calibration's measurement, the thresholds,
    and whether it exceeded them (then it was accepted: otherwise there is no SNN)."""
    a = approximation or {}
    exceeds = gap_refusal(approximation) is not None
    return {k: a.get(k) for k in ("relative_error", "worst_sample_relative_error", "agreement", "samples",
                                  "held_out", "holdout", "estimated_on", "interval", "degenerate")} | {
        "thresholds": {"min_agreement": GAP_MIN_AGREEMENT, "max_relative_error": GAP_MAX_RELATIVE_ERROR,
                       "max_relative_error_segmentation": GAP_MAX_RELATIVE_ERROR_SEGMENTATION},
        "exceeds_thresholds": exceeds, "reasons": gap_reasons(a) if exceeds else [],
        "accepted": bool(accepted and exceeds)}


def build_neuron(factory: NeuronFactory, relu_name: str, negative_slope=None) -> nn.Module:
    """The neuron replacing relu node ``relu_name``: ``factory(relu_name)``, or for a leaky ReLU /
    PReLU (``negative_slope`` α, a number or a per-channel tensor) ``factory(relu_name,
    negative_slope=α)``; a factory that does not take the keyword is refused in one line."""
    if negative_slope is None:
        return factory(relu_name)
    try:
        return factory(relu_name, negative_slope=negative_slope)
    except TypeError as e:
        if "negative_slope" not in str(e):
            raise
        raise UnsupportedGraphError(
            f"cannot convert node {relu_name!r}: it is a leaky ReLU / PReLU and the neuron factory "
            f"{getattr(factory, '__name__', type(factory).__name__)} takes no negative_slope; give a factory "
            "that builds a signed neuron (sjunet.neurons.mt_factory does)") from None


def _slope_record(gm: fx.GraphModule, relu: str):
    """α of relu node ``relu`` for the conversion record: None (ReLU), a number, or a list per channel."""
    node = next(n for n in gm.graph.nodes if n.name == relu)
    a = relu_slope(module_of(gm, node))
    return a.tolist() if isinstance(a, torch.Tensor) else a


def _insert_gains(gm: fx.GraphModule, plan: NormalizationPlan) -> None:
    """A :class:`~sjunet.layers.stages.ChannelAffine` gain on every edge the plan could not fold."""
    nodes = {n.name: n for n in gm.graph.nodes}
    done = set()
    for g in plan.gains:
        if (g.source, g.consumer) in done:
            continue
        done.add((g.source, g.consumer))
        src, consumer = nodes[g.source], nodes[g.consumer]
        path = f"gain_{g.source}_to_{g.consumer}"
        gm.add_submodule(path, ChannelAffine.of(g.gain.float()))
        with gm.graph.inserting_before(consumer):
            gain = gm.graph.call_module(path, (src,))
        consumer.replace_input_with(src, gain)
    gm.recompile()


def convert(
    model: nn.Module,
    stats: CalibrationStats | str | Path,
    norm: str = "connection",
    neuron: str = "mt",
    thresholds: Sequence[float] | str | None = None,
    output: str | Path | None = None,
    sources: dict | None = None,
    v_init: str | float = "half",
    neuron_factory: NeuronFactory | None = None,
    model_info: dict | None = None,
    accept_gap: bool = False,
) -> SpikingUNet:
    """Convert ``model`` (any ``nn.Module`` the converter understands) into a Spiking-UNet with
    SpikingJelly's converter and our recipe.

    ``stats`` is a :class:`CalibrationStats` (``sjunet.calibrate(model, batches)``) or the path of
    an HDF5 file from ``sjunet calibrate``; statistics of another model are refused.
    ``thresholds``: the ladder, largest first, or a name of :data:`sjunet.neurons.base.LADDERS`
    (``"theorem"``: Theorem 3.1's (0.5, 0.25, 0.125, 0.0625), for T = 1–4). ``neuron_factory`` (``factory(relu_name) -> module``, a :class:`~sjunet.neurons.base.SpikingNeuron`;
    for leaky ReLU / PReLU nodes ``factory(relu_name, negative_slope=α)``) replaces the ``neuron``
    name's factory. Instance / group / layer norms are converted with the fixed deviations σ̂ of
    the statistics (:mod:`sjunet.calibration.approximation`); when the gap that costs the ANN
    (measured by calibration on data not used to fit σ̂) fails the gate (:mod:`sjunet.calibration.gap`:
    segmentation outputs: pixel agreement below 0.98 or relative logit error above 0.2; others:
    relative L2 error above 0.1; a degenerate ANN) the conversion is refused with
    :class:`ApproximationGapError` unless ``accept_gap`` — or, when the model has other blockers,
    with them all in one :class:`~sjunet.errors.UnsupportedGraphError`; the record keeps the
    approximations and the gap (``approximations``, ``approximation_gap``). Returns a :class:`~sjunet.snn.model.SpikingUNet`
    (a ``GraphModule`` in single-step mode with its typed record); with ``output``, also saves it
    (atomically) with its provenance, see :func:`save_snn`.
    """
    stats_path = None
    if not isinstance(stats, CalibrationStats):
        stats_path = Path(stats)
        stats = read_stats(stats_path)
    options = ConversionOptions(norm, neuron, named_ladder(thresholds) if thresholds else None, v_init)
    with stages_are_leaves():
        snn = ann2snn.Converter(SpikingUNetRecipe(stats, options, neuron_factory, accept_gap),
                                device="cpu").convert(model)
    if model_info is None:
        cfg = getattr(model, "config", None)
        model_info = {"sjunet_config": cfg.to_dict()} if hasattr(cfg, "to_dict") else {"class": type(model).__name__}
    snn.record.model = model_info
    if output is not None:
        save_snn(snn, output, {**(sources or {}), "stats": str(stats_path) if stats_path else None,
                               "calibration": {"data": stats.data, "options": stats.options}})
    return snn


def convert_stock(model: nn.Module, data: Iterable, mode: str = "99.9%", neuron_factory=None) -> SpikingUNet:
    """The peer: SpikingJelly's stock ``RateCodingRecipe`` (IF neurons, soft reset, VoltageScalers,
    EMA of per-batch percentiles) on a copy of ``model``. Its record holds the options and the
    ANN's fingerprint only (no graph record: it cannot be saved as an SNN file, and no size
    multiple: evaluation takes the ANN's)."""
    recipe = ann2snn.RateCodingRecipe(dataloader=data, mode=mode, neuron_factory=neuron_factory)
    snn = ann2snn.Converter(recipe, device="cpu").convert(copy.deepcopy(model).eval())
    snn.eval()
    functional.invalidate_reset_cache(snn)
    record = SNNRecord(conversion=Conversion.from_dict({
        "options": {"norm": "stock-rate-coding", "neuron": "if", "mode": mode}, "ann_fingerprint": model_fingerprint(model)}))
    return SpikingUNet.adopt(snn, record)


def save_snn(snn: SpikingUNet, path: str | Path, sources: dict | None = None, model_config: dict | None = None,
             extra: dict | None = None) -> Path:
    """Save a converted (or fine-tuned) SNN: its tensors and its record's network fields
    (:data:`sjunet.snn.model.SNNRecord.SAVED`, which rebuild it: :mod:`sjunet.snn.file`), with a fresh
    provenance of ``sources``. ``extra`` adds or replaces record fields of the file only (e.g.
    ``finetune``); ``model_config`` adds ``model.sjunet_config``. The network is reset, not changed."""
    if not isinstance(snn, SpikingUNet):
        raise ArtifactError(f"save_snn takes a SpikingUNet (from sjunet.convert or load_snn), not a "
                            f"{type(snn).__name__}")
    rec = snn.record.to_dict()
    if rec["graph"] is None:
        raise ArtifactError("this SNN carries no graph record (was it made by sjunet.convert?); cannot save it")
    if model_config is not None:
        rec["model"] = {**(rec["model"] or {}), "sjunet_config": model_config}
    functional.reset_net(snn)
    record = {**rec, **(extra or {}), "provenance": provenance(sources=sources or {})}
    return snnfile.save(snn, path, record)


def load_snn(path: str | Path) -> tuple[SpikingUNet, dict]:
    """Load an SNN saved by :func:`save_snn` (verified, rebuilt from data); returns ``(snn, record)``:
    the :class:`~sjunet.snn.model.SpikingUNet` (its typed record from the file's, ``source`` the file's
    path and fingerprint) and the file's record as read."""
    snn, rec = snnfile.load(path)
    snn = SpikingUNet.adopt(snn, SNNRecord.from_dict(rec))
    snn.source = {"path": str(path), "fingerprint": file_fingerprint(path)}
    functional.invalidate_reset_cache(snn)
    return snn, rec


__all__ = ["ApproximationGapError", "ConversionOptions", "NEURONS", "SpikingUNetRecipe", "convert", "convert_stock",
           "load_snn", "save_snn"]
