"""Loading an ANN checkpoint written by ``sjunet train``: data in, a model out, no code chosen by the file.

The file never names code to run: sjunet's own U-Net is rebuilt from its config; other models only
from :data:`ALLOWED_ARCHITECTURES` (exact ``module:Class`` strings looked up in this table) or
from the ``--arch`` the user typed. The declared architecture is built on the ``meta`` device and
checked against the stored tensors before anything is allocated, and the fingerprint is
mandatory.
"""
from __future__ import annotations

import importlib
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sjunet.io import ANN_KIND, ArtifactError, file_fingerprint, load_checkpoint, model_fingerprint, nonfinite
from sjunet.models.arch_kwargs import check_arch_kwargs
from sjunet.models.external import ModelInfo, build_arch, load_weights, parse_arch_kwargs, resolve_arch
from sjunet.models.offline import no_network
from sjunet.models.unet import UNet, UNetConfig

#: the model classes a checkpoint may name without the user confirming them with ``--arch``: exact
#: ``module:Class`` strings, looked up in this table (never by walking the string's attributes)
ALLOWED_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "sjunet.models.fcn:SpikingFCNNet": ("sjunet.models.fcn", "SpikingFCNNet"),
    "sjunet.models.unet:UNet": ("sjunet.models.unet", "UNet"),
    "sjunet.models.zoo_nets:PadCatUNet": ("sjunet.models.zoo_nets", "PadCatUNet"),
    "sjunet.models.nnunet:plain_conv_unet": ("sjunet.models.nnunet", "plain_conv_unet"),
    "sjunet.models.nnunet:anisotropic_plain_conv_unet": ("sjunet.models.nnunet", "anisotropic_plain_conv_unet"),
    "sjunet.models.nnunet:residual_encoder_unet": ("sjunet.models.nnunet", "residual_encoder_unet"),
    "monai.networks.nets:BasicUNet": ("monai.networks.nets", "BasicUNet"),
    "monai.networks.nets:UNet": ("monai.networks.nets", "UNet"),
    "monai.networks.nets:AttentionUnet": ("monai.networks.nets", "AttentionUnet"),
    "sjunet.models.zoo_nets:unetr": ("sjunet.models.zoo_nets", "unetr"),
    "segmentation_models_pytorch:Unet": ("segmentation_models_pytorch", "Unet"),
}

#: limits on what a checkpoint may declare before anything is allocated
MAX_KWARGS_BYTES = 64 * 1024
MAX_KWARGS_DEPTH = 8


def _plain_kwargs(value: Any, where: str, depth: int = 0) -> None:
    """Architecture keyword arguments from a file: JSON-like values only (no tensors, no callables)."""
    if depth > MAX_KWARGS_DEPTH:
        raise ArtifactError(f"{where}: the architecture's arguments are nested deeper than {MAX_KWARGS_DEPTH}")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ArtifactError(f"{where}: an architecture argument name is not a string ({k!r})")
            _plain_kwargs(v, where, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _plain_kwargs(v, where, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ArtifactError(f"{where}: an architecture argument is not finite ({value})")
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise ArtifactError(f"{where}: an architecture argument is a {type(value).__name__}, not plain data")


def _checkpoint_arch(path: Path, ckpt: dict, trust_arch: str | None) -> tuple[Any, dict]:
    """The constructor and keyword arguments of a checkpoint's ``arch`` record.

    The file never chooses code: its factory string must be one of :data:`ALLOWED_ARCHITECTURES`
    (exactly; the class is taken from that table) or the exact ``--arch`` the user passed, which
    is then resolved by :func:`resolve_arch` as on the command line.
    """
    arch = ckpt["arch"]
    if not isinstance(arch, dict) or not isinstance(arch.get("factory"), str):
        raise ArtifactError(f"{path}: the checkpoint's 'arch' record is malformed (no factory string)")
    factory, kwargs = arch["factory"], arch.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ArtifactError(f"{path}: the checkpoint's architecture arguments are not a mapping")
    _plain_kwargs(kwargs, str(path))
    if len(repr(kwargs)) > MAX_KWARGS_BYTES:
        raise ArtifactError(f"{path}: the checkpoint's architecture arguments are implausibly large")
    if factory in ALLOWED_ARCHITECTURES:
        kwargs = check_arch_kwargs(factory, kwargs, str(path))  # before anything is imported
        mod_name, cls_name = ALLOWED_ARCHITECTURES[factory]
        try:
            with no_network(f"importing {mod_name} for {path}"):
                ctor = getattr(importlib.import_module(mod_name), cls_name)
        except ImportError as e:
            raise ArtifactError(f"{path}: the checkpoint's architecture {factory} needs {mod_name.split('.')[0]} "
                                f"({e}); install it (pip install -e '.[zoo]')") from None
        return ctor, kwargs
    if trust_arch is not None and factory == trust_arch:
        return resolve_arch(trust_arch), kwargs
    shown = factory if len(factory) <= 120 and factory.isprintable() else repr(factory[:120])
    if trust_arch is not None:
        raise ArtifactError(f"{path}: the checkpoint was made with the architecture {shown}, not --arch {trust_arch}; "
                            "pass the same --arch (and --arch-kwargs) it was trained with")
    raise ArtifactError(f"{path}: the checkpoint names the architecture {shown}, which sjunet does not build "
                        "from a file (it builds only " + ", ".join(ALLOWED_ARCHITECTURES) + "); if you trust it, "
                        f"pass --arch {shown} yourself")


def _state_dict_record(path: Path, ckpt: dict) -> dict[str, torch.Tensor]:
    sd = ckpt.get("state_dict")
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                        for k, v in sd.items()):
        raise ArtifactError(f"{path}: the checkpoint's state_dict is missing or not a mapping of names to tensors")
    return sd


def _fits(path: Path, ctor: Any, kwargs: dict, sd: dict[str, torch.Tensor]) -> None:
    """Build the architecture on the ``meta`` device (nothing allocated) and check every parameter
    and buffer against the tensors the file holds, before the real model is built: a record that
    declares a network larger than its tensors (depth 1000, width 60000) is refused here."""
    try:
        with torch.device("meta"), no_network(f"building the architecture of {path}"):
            probe = ctor(**kwargs)
    except ArtifactError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a constructor on a file's arguments
        raise ArtifactError(f"{path}: the checkpoint's architecture record does not build "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if not isinstance(probe, nn.Module):
        raise ArtifactError(f"{path}: the checkpoint's architecture does not build a torch.nn.Module")
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in sd.items()}
    if want.keys() != have.keys():
        missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
        raise ArtifactError(f"{path}: the checkpoint's tensors do not fit its architecture record "
                            f"(missing {missing[:3]}, unexpected {extra[:3]})")
    bad = [k for k in want if want[k] != have[k]]
    if bad:
        raise ArtifactError(f"{path}: the checkpoint's tensors do not fit its architecture record "
                            f"({bad[0]}: {have[bad[0]]} stored, {want[bad[0]]} declared)")


def load_ann(path: str | os.PathLike, trust_arch: str | None = None) -> tuple[nn.Module, dict]:
    """Load an ANN checkpoint written by :func:`sjunet.training.ann.train`; returns ``(model, checkpoint)``.

    Nothing in the file chooses code: sjunet's own U-Net is built from its config, other models
    only from :data:`ALLOWED_ARCHITECTURES` or the user's own ``trust_arch`` (the CLI's ``--arch``).
    The declared architecture is first built on the ``meta`` device and checked against the
    stored tensors (nothing larger than the file is ever allocated). The fingerprint is mandatory:
    the model's is recomputed and compared with the stored one, so a checkpoint whose tensors
    changed after it was written (a bit flip, an edit) is refused. The hash is unkeyed: it detects
    corruption and accidental edits, not who made the file.
    """
    path = Path(path)
    ckpt = load_checkpoint(path, ANN_KIND)
    stored = ckpt.get("fingerprint")
    if not (isinstance(stored, str) and re.fullmatch(r"[0-9a-f]{16}", stored)):
        raise ArtifactError(f"{path}: the checkpoint has no valid fingerprint, so its integrity cannot be checked; "
                            "sjunet refuses it — retrain it with `sjunet train` (or use --arch/--weights)")
    sd = _state_dict_record(path, ckpt)
    bad = nonfinite(sd)
    if bad:
        raise ArtifactError(f"{path}: tensor {bad!r} holds NaN or infinite values — the checkpoint is corrupt or "
                            "came from a diverged run; retrain it (or use an earlier checkpoint)")
    if ckpt.get("arch") is not None:
        ctor, kwargs = _checkpoint_arch(path, ckpt, trust_arch)
    else:
        config = ckpt.get("model_config")
        if not isinstance(config, dict):
            raise ArtifactError(f"{path}: the checkpoint has neither an 'arch' nor a 'model_config' record")
        _plain_kwargs(config, str(path))
        try:
            cfg = UNetConfig(**config)
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"{path}: the checkpoint's model_config is invalid ({e})") from None
        ctor, kwargs = UNet, {"config": cfg}
    _fits(path, ctor, kwargs, sd)
    try:
        with no_network(f"building the model of {path}"):
            model = ctor(**kwargs)
        model.load_state_dict(sd)
    except ArtifactError:
        raise
    except Exception as e:  # noqa: BLE001 - shapes were checked; anything left is a malformed record
        raise ArtifactError(f"{path}: the checkpoint does not rebuild its model "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    model.eval()
    actual = model_fingerprint(model)
    if stored != actual:
        raise ArtifactError(f"{path}: integrity check failed — the weights hash to {actual}, the checkpoint "
                            f"says {stored}; the file was altered or corrupted after it was written")
    return model, ckpt


def load_model(path: str | Path | None = None, arch: str | None = None, arch_kwargs: dict | str | None = None,
               weights: str | Path | None = None) -> tuple[nn.Module, ModelInfo]:
    """The ANN of ``sjunet`` CLI verbs: an sjunet checkpoint (``path``), or ``arch`` (+ kwargs) with
    ``weights`` (a state_dict file). Returns ``(model in eval mode, info)``."""
    if arch is not None and path is not None:
        if weights is not None:
            raise ValueError("give -m/--model (an sjunet checkpoint) or --arch with --weights, not both")
        model, ckpt = load_ann(path, trust_arch=arch)  # --arch confirms the checkpoint's own factory
        return model, _info(path, ckpt)
    if arch is not None:
        kwargs = parse_arch_kwargs(arch_kwargs)
        model = build_arch(arch, kwargs)
        source = {"arch": arch, "arch_kwargs": kwargs}
        if weights is not None:
            load_weights(model, weights)
            source.update(weights=str(weights), weights_file=file_fingerprint(weights))
        model.eval()
        return model, ModelInfo(source, model_fingerprint(model))
    if weights is not None:
        raise ValueError("--weights needs --arch (the architecture to load the state_dict into)")
    if path is None:
        raise ValueError("give -m/--model (an sjunet checkpoint) or --arch with --weights")
    model, ckpt = load_ann(path)
    return model, _info(path, ckpt)


def _info(path, ckpt: dict) -> ModelInfo:
    source = {"path": str(path), "file": file_fingerprint(path)}
    if ckpt.get("arch"):
        source.update(arch=ckpt["arch"]["factory"], arch_kwargs=ckpt["arch"].get("kwargs"))
    return ModelInfo(source, ckpt["fingerprint"], ckpt.get("task"), ckpt.get("model_config"), ckpt)
