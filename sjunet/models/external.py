"""Bring your own U-Net: build an architecture from ``package.module:factory`` + keyword arguments
and load its weights from a plain ``state_dict`` file (``torch.load(weights_only=True)``).

The architecture comes from the command line (``--arch``, ``--arch-kwargs``), never from a file:
an SNN file records it for information only, and is rebuilt from its own graph record
(:mod:`sjunet.snn.file`), so opening a file never imports or calls code it names.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sjunet.io import ArtifactError, nonfinite, torch_load_data
from sjunet.models.offline import no_network


@dataclass
class ModelInfo:
    """What sjunet knows of an ANN besides its module: where it came from and what it is for."""

    source: dict[str, Any]
    fingerprint: str
    task: dict | None = None  # {"kind": "segmentation", "num_classes": 2} … (sjunet checkpoints)
    config: dict | None = None  # sjunet UNetConfig
    checkpoint: dict = field(default_factory=dict, repr=False)

    def to_record(self) -> dict:
        rec = {**self.source, "fingerprint": self.fingerprint}
        if self.config is not None:
            rec["sjunet_config"] = self.config
        return rec


def parse_arch_kwargs(text: str | dict | None) -> dict:
    """``--arch-kwargs`` JSON object → dict (one clear line when it is not an object)."""
    if text is None or isinstance(text, dict):
        return dict(text or {})
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--arch-kwargs must be a JSON object, e.g. '{{\"in_channels\": 1}}' ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"--arch-kwargs must be a JSON object, got {type(value).__name__}")
    return value


def resolve_arch(spec: str):
    """The factory the user named with ``--arch package.module:factory`` (imported, not called).

    Only ever called with a string the user typed (``--arch``), or with a checkpoint's factory
    string that equals it exactly (:func:`sjunet.models.checkpoint.load_ann`): a file never names code to run."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"--arch takes package.module:factory (e.g. monai.networks.nets:BasicUNet), got {spec!r}")
    mod_name, attr = spec.split(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"--arch {spec}: cannot import {mod_name} ({e}); install it (e.g. pip install -e '.[zoo]')") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ValueError(f"--arch {spec}: {mod_name} has no {attr}")
    if not callable(factory):
        raise ValueError(f"--arch {spec}: {attr} is not callable")
    return factory


def build_arch(spec: str, kwargs: dict | None = None) -> nn.Module:
    """``build_arch("monai.networks.nets:BasicUNet", {"spatial_dims": 2, ...})``: import the module,
    call the factory with the keyword arguments (the network switched off: sjunet downloads nothing,
    :mod:`sjunet.models.offline`), check it returns an ``nn.Module``."""
    with no_network(f"--arch {spec}"):
        factory = resolve_arch(spec)
        try:
            model = factory(**(kwargs or {}))
        except TypeError as e:
            raise ValueError(f"--arch {spec}: the factory does not take these --arch-kwargs ({e})") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"--arch {spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(obj.get(key), dict):
                return _state_dict_of(obj[key], path)
    raise ArtifactError(f"{path}: holds no state_dict (a dict of tensors, or one under 'state_dict'/'model')")


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a ``state_dict`` file (``weights_only=True``) into ``model``; a mismatch is one line."""
    path = Path(path)
    sd = _state_dict_of(torch_load_data(path), path)
    bad = nonfinite(sd)
    if bad:
        raise ArtifactError(f"{path}: tensor {bad!r} holds NaN or infinite values — the weights are corrupt or "
                            "came from a diverged run")
    try:
        model.load_state_dict(sd)
    except RuntimeError:
        stripped = {k.split(".", 1)[1] if k.startswith(("module.", "model.")) else k: v for k, v in sd.items()}
        try:
            model.load_state_dict(stripped)
        except RuntimeError as e:
            msg = " ".join(str(e).split())
            raise ArtifactError(f"{path}: the weights do not fit --arch ({msg[:300]})") from None
    return model
