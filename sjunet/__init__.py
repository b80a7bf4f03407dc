"""sjunet: turn a trained U-Net into a Spiking-UNet (Li et al., "Deep Spiking-UNet for Image Processing").

Public API, on objects (the CLI verbs of the same names add paths, loading and printing)::

    calibrate(model, batches) -> stats          convert(model, stats, norm=, neuron=) -> snn (a SpikingUNet)
    simulate(snn, x, T) -> {t: output}          count_energy(snn, ann, batches, T) -> report
    train(opts) -> (model, summary)             finetune(snn, opts) -> (snn, summary)
    size_rule(model_or_snn) -> multiple(s)      evaluate, plot, load_snn, save_snn

The package is laid out by pipeline stage, each subpackage importing only from those before it:
leaves (``errors``, ``io``, ``rng``, ``distributed``) → ``layers`` → ``neurons`` → ``graph`` →
``calibration`` → ``snn`` → ``conversion`` → ``data``, ``models`` → ``metrics``, ``tasks`` →
``evaluation`` → ``training`` → ``plots`` → ``benchmarks``, ``demo`` → ``cli`` (README, "Layout").

Heavy submodules are imported lazily so ``import sjunet`` is cheap. No submodule shares a name
with a public function, so ``sjunet.simulate`` stays the function after ``sjunet.snn.simulation`` is
imported (a submodule import sets the package attribute of its own name): hence ``training``,
``evaluation``, ``conversion`` rather than train, evaluate, convert.

The modules of the flat layout before 0.2 (``sjunet.flow``, ``sjunet.recipe``, ``sjunet.dims``…) stay
reachable as attributes for one release (``sjunet.flow.MIN_GAIN``), with a DeprecationWarning naming
their new place (:data:`_MOVED`).
"""
from __future__ import annotations

import importlib
import types
import warnings

__version__ = "0.1.0"

_LAZY = {
    "train": "sjunet.training.ann",
    "evaluate": "sjunet.evaluation.loops",
    "calibrate": "sjunet.calibration.observe",
    "convert": "sjunet.conversion.recipe",
    "simulate": "sjunet.snn.simulation",
    "finetune": "sjunet.training.finetuning",
    "count_energy": "sjunet.evaluation.energy",
    "load_snn": "sjunet.conversion.recipe",
    "save_snn": "sjunet.conversion.recipe",
    "plot": "sjunet.plots.dispatch",
    "SpikingUNet": "sjunet.snn.model",
    "SNNRecord": "sjunet.snn.model",
    "size_rule": "sjunet.snn.model",
    "UNet": "sjunet.models",
    "UNetConfig": "sjunet.models",
    "MultiThresholdNode": "sjunet.neurons.mt",
}

#: old module name (the flat layout) -> the module(s) its names live in now, first the main one
_MOVED = {
    "graph_base": ("sjunet.graph.refusals", "sjunet.graph.kinds"),
    "canonical": ("sjunet.graph.canonical", "sjunet.graph.canonical_ops", "sjunet.graph.canonical_norms"),
    "dims": ("sjunet.layers.dims",),
    "stages": ("sjunet.layers.stages",),
    "static_synapse": ("sjunet.layers.static_synapse",),
    "neuron_base": ("sjunet.neurons.base",),
    "mt_neurons": ("sjunet.neurons.mt",),
    "signed_neurons": ("sjunet.neurons.signed",),
    "peer_neurons": ("sjunet.neurons.peers",),
    "snn_record": ("sjunet.snn.record",),
    "snnfile": ("sjunet.snn.file",),
    "simulation": ("sjunet.snn.simulation",),
    "normalization": ("sjunet.conversion.normalization",),
    "recipe": ("sjunet.conversion.recipe",),
    "fanout": ("sjunet.evaluation.fanout",),
    "energy": ("sjunet.evaluation.energy",),
    "energy_report": ("sjunet.evaluation.report",),
    "loop": ("sjunet.training.loop", "sjunet.training.run", "sjunet.rng", "sjunet.training.resume"),
    "resume_state": ("sjunet.training.resume",),
    "flow": ("sjunet.training.flow", "sjunet.training.finetuning"),
    "distill": ("sjunet.training.distill",),
    "direct": ("sjunet.training.direct",),
    "curves": ("sjunet.plots.curves",),
    "predictions": ("sjunet.plots.predictions",),
    "figures": ("sjunet.plots.figures",),
}

__all__ = sorted(_LAZY)
_VIEWS: dict = {}


class _MovedModule(types.ModuleType):
    """An old module name whose names now live in several modules: attribute lookup tries each."""

    def __init__(self, name: str, parts: tuple[str, ...]) -> None:
        super().__init__(f"sjunet.{name}", f"moved to {', '.join(parts)}")
        self._parts = parts

    def __getattr__(self, attr: str):
        for part in self._parts:
            module = importlib.import_module(part)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} (moved to {', '.join(self._parts)}) has no attribute {attr!r}")

    def __dir__(self):
        return sorted({a for part in self._parts for a in dir(importlib.import_module(part))})


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _MOVED:
        parts = _MOVED[name]
        warnings.warn(f"sjunet.{name} moved to {' and '.join(parts)}; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        if len(parts) == 1:
            return importlib.import_module(parts[0])
        return _VIEWS.setdefault(name, _MovedModule(name, parts))
    raise AttributeError(f"module 'sjunet' has no attribute {name!r}")
