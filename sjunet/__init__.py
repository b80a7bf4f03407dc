"""sjunet: turn a trained U-Net into a Spiking-UNet (Li et al., "Deep Spiking-UNet for Image Processing").

Public API, on objects (the CLI verbs of the same names add paths, loading and printing)::

    calibrate(model, batches) -> stats          convert(model, stats, norm=, neuron=) -> snn (a SpikingUNet)
    simulate(snn, x, T) -> {t: output}          count_energy(snn, ann, batches, T) -> report
    train(opts) -> (model, summary)             finetune(snn, opts) -> (snn, summary)
    size_rule(model_or_snn) -> multiple(s)      evaluate, plot, load_snn, save_snn

Heavy submodules are imported lazily so ``import sjunet`` is cheap. No submodule shares a name
with a public function, so ``sjunet.simulate`` stays the function after ``sjunet.simulation`` is
imported (a submodule import sets the package attribute of its own name).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "train": "sjunet.training",
    "evaluate": "sjunet.evaluation",
    "calibrate": "sjunet.calibration",
    "convert": "sjunet.recipe",
    "simulate": "sjunet.simulation",
    "finetune": "sjunet.flow",
    "count_energy": "sjunet.energy",
    "load_snn": "sjunet.recipe",
    "save_snn": "sjunet.recipe",
    "plot": "sjunet.plots",
    "SpikingUNet": "sjunet.snn",
    "SNNRecord": "sjunet.snn",
    "size_rule": "sjunet.snn",
    "UNet": "sjunet.models",
    "UNetConfig": "sjunet.models",
    "MultiThresholdNode": "sjunet.neurons",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sjunet' has no attribute {name!r}")
