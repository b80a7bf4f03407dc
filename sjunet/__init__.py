"""sjunet: turn a trained U-Net into a Spiking-UNet (Li et al., "Deep Spiking-UNet for Image Processing").

Public API (each also a CLI verb of the same name, see ``sjunet --help``)::

    train, evaluate, calibrate, convert, simulate, finetune, energy, plot

Heavy submodules are imported lazily so ``import sjunet`` is cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "train": "sjunet.train",
    "evaluate": "sjunet.evaluate",
    "calibrate": "sjunet.calibration",
    "convert": "sjunet.recipe",
    "simulate": "sjunet.simulate",
    "finetune": "sjunet.flow",
    "energy": "sjunet.energy",
    "plot": "sjunet.plots",
    "UNet": "sjunet.models",
    "UNetConfig": "sjunet.models",
    "MultiThresholdNode": "sjunet.neurons",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sjunet' has no attribute {name!r}")
