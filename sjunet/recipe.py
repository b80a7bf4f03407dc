"""Conversion as a SpikingJelly ``ann2snn`` recipe (spec §5), run by ``ann2snn.Converter``.

:class:`SpikingUNetRecipe` subclasses ``FXConversionRecipe``; each lifecycle hook does one thing:

========================  =========================================================================
``validate``              check options (normalization, neuron, ladder)
``before_trace``          refuse statistics of another model (fingerprint); hand over an eval copy
``after_trace``           fold BatchNorm; refuse an unsupported graph, naming the node
``insert_observers``      nothing: statistics come from the calibration stage's HDF5
``calibrate``             turn the statistics into a :class:`~sjunet.normalization.NormalizationPlan`
``replace``               rescale weights; ReLU → :class:`~sjunet.neurons.MultiThresholdNode`; first
                          layer → :class:`StaticInputSynapse`; SpikingJelly multi-step adapters
``finalize``              eval mode, conversion record attached, reset cache invalidated
========================  =========================================================================

:func:`convert` is the library entry point (``sjunet convert``); :func:`convert_stock` converts
the same ANN with SpikingJelly's stock ``RateCodingRecipe`` (IF, percentile) as the peer.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from spikingjelly.activation_based import ann2snn, base, functional
from spikingjelly.activation_based.ann2snn.recipes.base import replace_submodule
from spikingjelly.activation_based.ann2snn.recipes.step_mode_adapters import (
    _RATE_CODING_STATELESS_MODULE_TYPES,
    adapt_step_mode_graph,
)
from torch import fx, nn

from sjunet.calibration.observe import fold_bn
from sjunet.calibration.store import CalibrationStats, read_stats
from sjunet.graph import check_supported, kind_of, module_of
from sjunet.io import SNN_KIND, ArtifactError, load_checkpoint, model_fingerprint, provenance, torch_save_atomic
from sjunet.neurons import MultiThresholdNode, threshold_ladder, validate_ladder
from sjunet.normalization import NORMS, NormalizationPlan, apply_plan, plan_normalization

NEURONS = ("mt", "if")


@dataclass(frozen=True)
class ConversionOptions:
    """Options of :func:`convert`. ``thresholds=None`` means (2, 1, 0.5, 0.25) for MT and (1.0,) for IF."""

    norm: str = "connection"
    neuron: str = "mt"
    thresholds: tuple[float, ...] | None = None
    v_init: str | float = "half"

    def initial_potential(self) -> float:
        """Membrane potential after reset: ``"half"`` = θ_N/2 (half the smallest threshold, which
        turns the floor quantiser into rounding and removes the systematic under-estimate of rates
        at small T; Bu et al., ICLR 2022), ``"zero"`` = 0 (the paper), or a number (normalised units)."""
        if self.v_init == "half":
            return self.ladder()[-1] / 2
        if self.v_init == "zero":
            return 0.0
        try:
            return float(self.v_init)
        except (TypeError, ValueError):
            raise ValueError(f"--v-init takes 'half', 'zero' or a number, got {self.v_init!r}") from None

    def ladder(self) -> tuple[float, ...]:
        if self.thresholds is not None:
            return validate_ladder(self.thresholds)
        return threshold_ladder(4, 2.0) if self.neuron == "mt" else (1.0,)

    def check(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown --norm {self.norm!r}: choose one of {', '.join(NORMS)}")
        if self.neuron not in NEURONS:
            raise ValueError(f"unknown --neuron {self.neuron!r}: choose one of {', '.join(NEURONS)}")
        ladder = self.ladder()
        if self.neuron == "if" and len(ladder) != 1:
            raise ValueError(f"--neuron if takes exactly one threshold, got {ladder}")


class StaticInputSynapse(base.MemoryModule):
    """The first (analog) synaptic layer under static coding: computed once per image, not T times.

    Multi-step: if the input sequence is an ``expand`` of one image (stride 0 along T), the layer
    runs on ``x_seq[0]`` and the result is expanded; otherwise every step is computed. Single-step:
    the output for the same input tensor object is cached until ``reset()``.
    """

    def __init__(self, layer: nn.Module, step_mode: str = "s") -> None:
        super().__init__()
        self.layer = layer
        self.step_mode = step_mode
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def supported_step_mode(self):
        return ("s", "m")

    def reset(self) -> None:
        self._cache = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "m":
            if x.stride(0) != 0:  # not a static sequence: compute every step
                return self.layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])
            base = x._base if x._base is not None else x
            y = self._cached(base, lambda: self.layer(x[0]))
            return y.unsqueeze(0).expand(x.shape[0], *y.shape)
        return self._cached(x, lambda: self.layer(x))

    def _cached(self, key: torch.Tensor, compute) -> torch.Tensor:
        # The cache holds a reference to ``key``, so identity cannot be confused with a new
        # tensor at a reused address; it is cleared by reset() (functional.reset_net).
        if torch.is_grad_enabled():
            return compute()
        if self._cache is None or self._cache[0] is not key:
            self._cache = (key, compute())
        return self._cache[1]


class SpikingUNetRecipe(ann2snn.FXConversionRecipe):
    """Multi-threshold neurons + layer-/connection-wise normalization from HDF5 statistics."""

    def __init__(self, stats: CalibrationStats, options: ConversionOptions | None = None) -> None:
        super().__init__()
        self.stats = stats
        self.options = options or ConversionOptions()
        self.plan: NormalizationPlan | None = None
        self.ann_fingerprint: str | None = None

    def validate(self, converter) -> None:
        self.options.check()

    def before_trace(self, converter, ann: nn.Module) -> nn.Module:
        self.ann_fingerprint = model_fingerprint(ann)
        self.stats.check_model(self.ann_fingerprint)
        return copy.deepcopy(ann).eval()

    def after_trace(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        gm = fold_bn(fx_model)
        check_supported(gm)
        return gm

    def insert_observers(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        return fx_model

    def calibrate(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        self.plan = plan_normalization(fx_model, self.stats, self.options.norm)
        return fx_model

    def replace(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        assert self.plan is not None
        apply_plan(fx_model, self.plan)
        ladder, v0 = self.options.ladder(), self.options.initial_potential()
        for node in list(fx_model.graph.nodes):
            k = kind_of(fx_model, node)
            if k == "relu":
                replace_submodule(fx_model, node.target, MultiThresholdNode(ladder, v_init=v0))
            elif k == "synaptic" and node.args[0].op == "placeholder":
                layer = module_of(fx_model, node)
                replace_submodule(fx_model, node.target, StaticInputSynapse(layer))
        fx_model.recompile()
        return adapt_step_mode_graph(fx_model, context=type(self).__name__,
                                     wrap_module_types=_RATE_CODING_STATELESS_MODULE_TYPES)

    def finalize(self, converter, fx_model: fx.GraphModule) -> nn.Module:
        # ReLU node name -> module path of the neuron that replaced it
        targets = {n.name: n.target for n in fx_model.graph.nodes if n.op == "call_module"}
        for n in fx_model.graph.nodes:
            n.type = None  # string annotations (PEP 563) break GraphModule pickling on some torch versions
        fx_model.recompile()
        fx_model.eval()
        functional.invalidate_reset_cache(fx_model)
        fx_model.sjunet_conversion = {
            "options": {**asdict(self.options), "thresholds": list(self.options.ladder()),
                        "v_init_value": self.options.initial_potential()},
            "ann_fingerprint": self.ann_fingerprint,
            "stats_fingerprint": self.stats.model_fingerprint,
            "layers": {n: {"role": l.role, "out_unit": l.out_unit, "neuron": targets.get(l.relu),
                           "after_cat": len(l.parts) > 1, "parts": [asdict(p) for p in l.parts]}
                       for n, l in self.plan.layers.items()},
        }
        return fx_model


def convert(
    model: nn.Module,
    stats: CalibrationStats | str | Path,
    norm: str = "connection",
    neuron: str = "mt",
    thresholds: Sequence[float] | None = None,
    output: str | Path | None = None,
    sources: dict | None = None,
    v_init: str | float = "half",
) -> fx.GraphModule:
    """Convert ``model`` into a Spiking-UNet with SpikingJelly's converter and our recipe.

    ``stats`` is a :class:`CalibrationStats` or the path of an HDF5 file from ``sjunet calibrate``;
    statistics of another model are refused. Returns a ``GraphModule`` in single-step mode;
    with ``output``, saves it (atomically) with its provenance, see :func:`save_snn`.
    """
    stats_path = None
    if not isinstance(stats, CalibrationStats):
        stats_path = Path(stats)
        stats = read_stats(stats_path)
    options = ConversionOptions(norm, neuron, tuple(thresholds) if thresholds else None, v_init)
    snn = ann2snn.Converter(SpikingUNetRecipe(stats, options), device="cpu").convert(model)
    if output is not None:
        save_snn(snn, output, {**(sources or {}), "stats": str(stats_path) if stats_path else None,
                               "calibration": {"data": stats.data, "options": stats.options}},
                 model_config=getattr(getattr(model, "config", None), "to_dict", lambda: None)())
    return snn


def convert_stock(model: nn.Module, data: Iterable, mode: str = "99.9%", neuron_factory=None) -> fx.GraphModule:
    """The peer: SpikingJelly's stock ``RateCodingRecipe`` (IF neurons, soft reset, VoltageScalers,
    EMA of per-batch percentiles) on a copy of ``model``."""
    recipe = ann2snn.RateCodingRecipe(dataloader=data, mode=mode, neuron_factory=neuron_factory)
    snn = ann2snn.Converter(recipe, device="cpu").convert(copy.deepcopy(model).eval())
    snn.eval()
    functional.invalidate_reset_cache(snn)
    snn.sjunet_conversion = {"options": {"norm": "stock-rate-coding", "neuron": "if", "mode": mode},
                             "ann_fingerprint": model_fingerprint(model)}
    return snn


def save_snn(snn: fx.GraphModule, path: str | Path, sources: dict | None = None, model_config: dict | None = None) -> Path:
    """Save a converted SNN (the whole GraphModule, reloadable without the ANN) with provenance."""
    conv = getattr(snn, "sjunet_conversion", {})
    record = {
        "kind": SNN_KIND,
        "snn": snn,
        "conversion": conv,
        "model_config": model_config,
        "provenance": provenance(sources=sources or {}),
    }
    return torch_save_atomic(record, path)


def load_snn(path: str | Path) -> tuple[fx.GraphModule, dict]:
    """Load an SNN saved by :func:`save_snn`; returns ``(snn, record)``."""
    rec = load_checkpoint(path, SNN_KIND)
    snn = rec["snn"]
    if not isinstance(snn, nn.Module):
        raise ArtifactError(f"{path}: SNN record holds no module")
    snn.eval()
    functional.invalidate_reset_cache(snn)
    return snn, rec
