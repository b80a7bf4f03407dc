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
from sjunet.graph import (Trace, UnsupportedGraphError, all_blockers, canonical_graph, check_supported,
                          feature_maps, kind_of, module_of, refusal_message, relu_slope, signature, size_multiple, size_multiples,
                          stages_are_leaves, tensor_shapes)
from sjunet.io import DEGENERATE_KEY, ArtifactError, file_fingerprint, model_fingerprint, provenance
from sjunet.conversion.ladders import TOLERANCE as LADDER_TOLERANCE
from sjunet.conversion.ladders import LadderChoice, layer_ladders
from sjunet.layers.dims import set_spatial_dims
from sjunet.layers.plumbing import Scale
from sjunet.layers.stages import ChannelAffine, Normalize, SpikingMaxPool2d
from sjunet.neurons import (AUTO, FACTORIES, NeuronFactory, StaticInputSynapse, named_ladder, per_layer_factory,
                            validate_ladder)
from sjunet.neurons.sigma_delta import SigmaDeltaNode, SigmaDeltaProduct
from sjunet.neurons.sigma_delta_functions import Smooth
from sjunet.snn import Conversion, SNNRecord, SpikingUNet
from sjunet.snn import file as snnfile
from sjunet.snn.record import MAX_NEURON_VALUE

NEURONS = tuple(FACTORIES)


#: how instance / group / layer norms convert (:attr:`ConversionOptions.norms`)
NORM_ROUTES = ("fixed", "exact")


@dataclass(frozen=True)
class ConversionOptions:
    """Options of :func:`convert`. ``thresholds``: a ladder (largest first), ``"auto"`` (one ladder
    per layer, chosen from its calibration histogram: :mod:`sjunet.conversion.ladders`, within
    ``ladder_tolerance``) or ``None``: the neuron's default (:data:`sjunet.neurons.FACTORIES`:
    ``"auto"`` for MT, (1,) for IF)."""

    norm: str = "connection"
    neuron: str = "mt"
    thresholds: tuple[float, ...] | str | None = None
    v_init: str | float = "half"
    ladder_tolerance: float = LADDER_TOLERANCE
    #: instance / group / layer norms over (C, H, W): ``fixed`` — the division by a deviation σ̂ fixed
    #: from calibration, folded into the affine (local, cheap; an approximation gap); ``exact`` — a Σ-Δ
    #: group-norm neuron that divides by each sample's own deviation (no gap; non-local, one evaluation
    #: per element and step)
    norms: str = "fixed"

    @property
    def per_layer(self) -> bool:
        """Whether each layer gets its own ladder (``thresholds="auto"``, or the neuron's default is)."""
        return self.resolved() == AUTO

    def resolved(self) -> tuple[float, ...] | str:
        """The ladder asked for: the given one, or the neuron's default."""
        if self.thresholds is not None:
            return self.thresholds
        return FACTORIES[self.neuron][0] if self.neuron in FACTORIES else (1.0,)

    def initial_potential(self, ladder: Sequence[float] | None = None) -> float:
        """Membrane potential after reset: ``"half"`` = θ_N/2 (half the smallest threshold, which
        turns the floor quantiser into rounding and removes the systematic under-estimate of rates
        at small T; Bu et al., ICLR 2022), ``"zero"`` = 0 (the paper), or a finite number
        (normalised units). ``ladder``: a layer's own (per-layer ladders)."""
        if self.v_init == "half":
            ladder = ladder or self.ladder()
            return ladder[-1] / 2 if ladder else 0.0
        if self.v_init == "zero":
            return 0.0
        try:
            v = float(self.v_init)
        except (TypeError, ValueError):
            raise ValueError(f"--v-init takes 'half', 'zero' or a number, got {self.v_init!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"--v-init must be finite, got {self.v_init!r}")
        if abs(v) > MAX_NEURON_VALUE:
            raise ValueError(f"--v-init must be within ±{MAX_NEURON_VALUE:g} (normalised units: a threshold is about 1), "
                             f"got {self.v_init!r}")
        return v

    def ladder(self) -> tuple[float, ...] | None:
        """The one ladder of every layer (``None`` with per-layer ladders)."""
        r = self.resolved()
        return None if r == AUTO else validate_ladder(named_ladder(r))

    def check(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown --norm {self.norm!r}: choose one of {', '.join(NORMS)}")
        if self.neuron not in FACTORIES:
            raise ValueError(f"unknown --neuron {self.neuron!r}: choose one of {', '.join(FACTORIES)}")
        if self.norms not in NORM_ROUTES:
            raise ValueError(f"unknown --norms {self.norms!r}: choose one of {', '.join(NORM_ROUTES)}")
        if not (isinstance(self.ladder_tolerance, (int, float)) and 0 < self.ladder_tolerance < 1):
            raise ValueError(f"--ladder-tolerance must be a number in (0, 1), got {self.ladder_tolerance!r}")
        if self.per_layer:
            if self.neuron != "mt":
                raise ValueError(f"--thresholds {AUTO} (a ladder per layer) is for MT neurons; --neuron {self.neuron} "
                                 "takes a fixed ladder")
            self.initial_potential((1.0,))
            return
        ladder = self.ladder()
        if self.neuron == "if" and len(ladder) != 1:
            raise ValueError(f"--neuron if takes exactly one threshold, got {ladder}")
        self.initial_potential()

    def factory(self, ladders: "dict[str, LadderChoice] | None" = None) -> NeuronFactory:
        """The neuron factory: the ladder's, or with per-layer ``ladders`` each layer's own."""
        if ladders is not None:
            return per_layer_factory({relu: (c.ladder, self.initial_potential(c.ladder)) for relu, c in ladders.items()})
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
        self.ladders: dict[str, LadderChoice] | None = None  # per-layer ladders (thresholds "auto")
        self.factory: NeuronFactory | None = None

    def validate(self, converter) -> None:
        self.options.check()

    def before_trace(self, converter, ann: nn.Module) -> nn.Module:
        self.ann_fingerprint = model_fingerprint(ann)
        self.stats.check_model(self.ann_fingerprint)
        shape = self.stats.data.get("input_shape")
        if not shape:
            raise ArtifactError("the statistics do not record the calibration input shape; re-run `sjunet calibrate`")
        self.canonical = canonical_graph(ann, shape, check=False)
        # --norms exact: Σ-Δ group-norm neurons, no approximation gap to gate
        gap = (gap_blocker(self.canonical.gm, self.stats.approximation, self.accept_gap)
               if self.options.norms == "fixed" else None)
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
        if self.options.norms == "exact":
            exact_norms(fx_model)
        else:
            self.approximations = fix_deviations(fx_model, self.stats)
        set_spatial_dims(fx_model)
        return fx_model

    def insert_observers(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        return fx_model

    def calibrate(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        self.shapes = tensor_shapes(fx_model, self.stats.data["input_shape"])
        relus = {n.name: relu_slope(module_of(fx_model, n)) for n in fx_model.graph.nodes
                 if kind_of(fx_model, n) == "relu"}
        if self.neuron_factory is None and self.options.per_layer:
            # each layer's ladder from its histogram in units of its percentile (a capped ReLU's λ may
            # then shrink to cap / the ladder's max output: its saturation is the cap)
            self.ladders = layer_ladders(self.stats, {r: self.stats.scale(r) for r in relus},
                                         self.options.ladder_tolerance, self.options.v_init)
        self.factory = self.neuron_factory or self.options.factory(self.ladders)
        tops: dict[str, float] = {}

        def max_output(relu: str) -> float:
            if relu not in tops:
                tops[relu] = build_neuron(self.factory, relu, relus.get(relu)).max_output
            return tops[relu]

        self.plan = plan_normalization(fx_model, self.stats, self.options.norm, self.shapes, max_output)
        return fx_model

    def replace(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        assert self.plan is not None
        apply_plan(fx_model, self.plan)
        _insert_gains(fx_model, self.plan)
        _fold_scales(fx_model)
        set_spatial_dims(fx_model)  # the gains broadcast over the network's spatial axes
        factory = self.factory
        # Σ-Δ neurons (signed, spec §15) take one ladder: the conversion's, or with per-layer ReLU ladders the
        # uncapped halving ladder (1, ..., 0.0625): its residue is carried to the next step, so a cap would only
        # delay it; their λ_out is their node's calibrated scale
        ladder = self.options.ladder() or named_ladder("uncapped")
        v0 = self.options.initial_potential(ladder)
        for node in list(fx_model.graph.nodes):
            k = kind_of(fx_model, node)
            if k == "sigma":
                replace_submodule(fx_model, node.target, sigma_delta_neuron(module_of(fx_model, node),
                                                                             self.plan.sigma[node.name], ladder, v0))
            elif k == "product":
                m = module_of(fx_model, node)
                a, b, out, _ = self.plan.products[node.name]
                replace_submodule(fx_model, node.target, SigmaDeltaProduct(m.op, m.equation, ladder, v0, a, b, out))
            elif k == "relu":
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
        maps = feature_maps(gm, self.shapes)  # global-pooling branches aside: one pixel at any size
        per_axis = {} if nd == 2 else {"size_multiples": list(size_multiples(maps, tuple(shape[2:])))}
        return per_axis | {
            "options": {**asdict(opts), "thresholds": AUTO if opts.per_layer else list(opts.ladder()),
                        "v_init_value": None if opts.per_layer else opts.initial_potential(),
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
            # per-layer ladders: each layer's choice and its expected one-step error (sjunet.conversion.ladders)
            "ladders": None if self.ladders is None else {r: c.to_dict() for r, c in self.ladders.items()},
            "sigma_delta": {targets[n]: {"node": n, "function": f, "in_unit_min": float(u.min()),
                                         "in_unit_max": float(u.max()), "lambda": lam}
                            for n, (u, lam, f) in plan.sigma.items()}
                           | {targets[n]: {"node": n, "product": op, "a_unit": a, "b_unit": b, "lambda": lam}
                              for n, (a, b, lam, op) in plan.products.items()},
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
            "size_multiple": size_multiple(maps, tuple(shape[2:])),
            "approximations": self.approximations,
            "approximation_gap": _gap_record(self.stats.approximation, self.accept_gap) if self.approximations else None,
            # a broken ANN (one class everywhere, a constant image), as calibration recorded it: repeated downstream
            **({DEGENERATE_KEY: self.stats.data[DEGENERATE_KEY]} if self.stats.data.get(DEGENERATE_KEY) else {}),
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


def exact_norms(gm: fx.GraphModule) -> None:
    """The ``exact`` route of the norms: every :class:`~sjunet.layers.stages.Normalize` (a norm's
    per-sample division, after its exact centring) becomes a Σ-Δ group-norm activation of the same
    groups and eps (no affine: the affine stage after it stays), so the SNN divides by each sample's
    own deviation and there is no approximation gap."""
    for node in list(gm.graph.nodes):
        m = module_of(gm, node)
        if isinstance(m, Normalize):
            replace_submodule(gm, node.target, Smooth("group_norm", {"groups": m.groups, "eps": m.eps}))
    gm.recompile()


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


def sigma_delta_neuron(m: nn.Module, units: tuple, ladder, v_init: float) -> SigmaDeltaNode:
    """The Σ-Δ neuron of a :class:`~sjunet.neurons.sigma_delta_functions.Smooth` node: its function,
    the ladder and V_0 of the conversion, λ_in = the input's unit (a number, or per channel), λ_out =
    the node's calibrated scale; a norm's affine copied."""
    u_in, lam = units[:2]
    in_scale = float(u_in[0]) if bool(torch.all(u_in == u_in[0])) else u_in.float()
    neuron = SigmaDeltaNode(m.function, m.params, ladder, v_init, in_scale=in_scale, out_scale=lam)
    if m.weight is not None:
        neuron.weight.copy_(m.weight.detach())
        neuron.bias.copy_(m.bias.detach())
    return neuron


def _fold_scales(gm: fx.GraphModule) -> None:
    """A multiplication by a constant number is a unit (the plan scaled it): a positive one leaves no
    stage, a negative one a sign flip."""
    for node in list(gm.graph.nodes):
        m = module_of(gm, node)
        if isinstance(m, Scale) and kind_of(gm, node) == "scale" and not node.target.startswith("gain_"):
            if m.factor > 0:
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
            else:
                replace_submodule(gm, node.target, Scale(-1.0))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _insert_gains(gm: fx.GraphModule, plan: NormalizationPlan) -> None:
    """A gain on every edge the plan could not fold: a number (:class:`~sjunet.layers.plumbing.Scale`,
    any tensor) where it is uniform, else per channel (:class:`~sjunet.layers.stages.ChannelAffine`)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    done = set()
    for g in plan.gains:
        if (g.source, g.consumer) in done:
            continue
        done.add((g.source, g.consumer))
        src, consumer = nodes[g.source], nodes[g.consumer]
        path = f"gain_{g.source}_to_{g.consumer}"
        uniform = bool(torch.all(g.gain == g.gain[0]))
        gm.add_submodule(path, Scale(float(g.gain[0])) if uniform else ChannelAffine.of(g.gain.float()))
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
    ladder_tolerance: float = LADDER_TOLERANCE,
    norms: str = "fixed",
) -> SpikingUNet:
    """Convert ``model`` (any ``nn.Module`` the converter understands) into a Spiking-UNet with
    SpikingJelly's converter and our recipe.

    ``norms``: how instance / group / layer norms over (C, H, W) convert — ``"fixed"`` (a deviation
    fixed from calibration, with its approximation gap) or ``"exact"`` (Σ-Δ group-norm neurons, no
    gap; :class:`ConversionOptions`). Smooth activations, products and transformer plumbing always
    convert (Σ-Δ neurons and linear stages, spec §15).

    ``stats`` is a :class:`CalibrationStats` (``sjunet.calibrate(model, batches)``) or the path of
    an HDF5 file from ``sjunet calibrate``; statistics of another model are refused.
    ``thresholds``: ``None`` — the neuron's default: for MT ``"auto"``, one ladder per layer chosen from
    its calibration histogram (:mod:`sjunet.conversion.ladders`: halving powers of two whose top covers
    the layer's maximum, the fewest levels whose expected one-step error is within
    ``ladder_tolerance`` of the layer's RMS value; recorded in ``conversion.ladders``) — or a name of
    :data:`sjunet.neurons.base.LADDERS` (``"paper"``: (2, 1, 0.5, 0.25), the paper tables';
    ``"theorem"``: Theorem 3.1's (0.5, 0.25, 0.125, 0.0625); ``"uncapped"``), or the ladder itself,
    largest first. ``neuron_factory`` (``factory(relu_name) -> module``, a :class:`~sjunet.neurons.base.SpikingNeuron`;
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
    if isinstance(thresholds, str) and thresholds != AUTO:
        thresholds = named_ladder(thresholds)
    elif thresholds is not None and not isinstance(thresholds, str):
        thresholds = tuple(float(t) for t in thresholds)
    options = ConversionOptions(norm, neuron, thresholds, v_init, ladder_tolerance, norms)
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
