"""What a checkpoint's architecture arguments may be, per allowed factory — checked before any import.

A checkpoint names its architecture (one of :data:`sjunet.models.checkpoint.ALLOWED_ARCHITECTURES`)
and the keyword arguments to build it with. An allowed factory is not enough: its arguments can
still reach outside the file — segmentation_models_pytorch's ``encoder_name="tu-hf-hub:evil/model"``
makes timm fetch a configuration from a model hub, ``encoder_weights="imagenet"`` downloads weights,
MONAI resolves layer names through its factories. So every argument a file gives is checked
against :data:`SCHEMAS`, a closed list per factory of the argument names it may give and the values
each may take (integers in ranges, booleans, names from fixed sets, encoder names that build
locally: no hub prefix, URL or path), before the factory's package is imported. Anything else is
refused in one line naming the argument; an argument a file does not give takes the factory's
default, and a default that downloads is replaced (``encoder_weights=None``).

Building then runs with network access disabled (:mod:`sjunet.models.offline`): a file never makes
sjunet reach the network, whatever a library does with the values it allows.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from sjunet.io import ArtifactError

#: largest channel count, width or feature count a file may give
MAX_WIDTH = 65_536
MAX_LEVELS = 16
#: largest input side a file may declare (a ViT's fixed input size)
MAX_SIDE = 4096

Check = Callable[[Any, str], None]


def _fail(what: str, expected: str, v: Any) -> None:
    r = repr(v)
    raise ArtifactError(f"{what} is {r if len(r) <= 80 else r[:80] + '…'}, expected {expected}")


def integer(lo: int, hi: int) -> Check:
    def check(v, what):
        if type(v) is not int or not lo <= v <= hi:
            _fail(what, f"an integer in {lo}..{hi}", v)
    return check


def number(lo: float, hi: float) -> Check:
    def check(v, what):
        if type(v) not in (int, float) or not lo <= v <= hi:
            _fail(what, f"a number in [{lo:g}, {hi:g}]", v)
    return check


def boolean(v, what):
    if type(v) is not bool:
        _fail(what, "true or false", v)


def choice(*values: Any, fold: bool = False) -> Check:
    def check(v, what):
        key = v.lower() if fold and isinstance(v, str) else v
        if not any(key == c and type(key) is type(c) for c in values):
            _fail(what, "one of " + ", ".join(repr(c) for c in values), v)
    return check


def integers(lo: int, hi: int, min_len: int = 1, max_len: int = MAX_LEVELS) -> Check:
    return nested(integer(lo, hi), min_len, max_len, items="integers")


def one_of(*checks: Check, expected: str) -> Check:
    def check(v, what):
        for c in checks:
            try:
                c(v, what)
                return
            except ArtifactError:
                continue
        _fail(what, expected, v)
    return check


def nested(inner: Check, min_len: int = 1, max_len: int = MAX_LEVELS, items: str = "entries") -> Check:
    """A list of values each passing ``inner`` (per-level kernel sizes, per-level strides)."""
    def check(v, what):
        if not isinstance(v, (list, tuple)) or not min_len <= len(v) <= max_len:
            _fail(what, f"a list of {min_len}..{max_len} {items}", v)
        for u in v:
            inner(u, what)
    return check


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")


def plain_options(v, what):
    """A layer's option dict: identifier keys, plain scalar values (or short lists of numbers)."""
    if not isinstance(v, dict) or len(v) > 16:
        _fail(what, "an object of at most 16 layer options", v)
    for k, u in v.items():
        if not isinstance(k, str) or not _IDENT.match(k):
            _fail(what, "option names that are identifiers", k)
        if isinstance(u, (list, tuple)):
            if len(u) > 8 or not all(type(x) in (int, float, bool) for x in u):
                _fail(f"{what}.{k}", "a short list of numbers", u)
        elif not (u is None or type(u) in (int, float, bool) or (isinstance(u, str) and _IDENT.match(u))):
            _fail(f"{what}.{k}", "a number, true/false, null or a short name", u)


def layer(*names: str) -> Check:
    """A MONAI layer given as a name from ``names`` or ``[name, {options}]``."""
    name = choice(*names, fold=True)

    def check(v, what):
        if isinstance(v, str):
            return name(v, what)
        if isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str):
            name(v[0], what)
            return plain_options(v[1], what)
        _fail(what, f"a name ({', '.join(names)}) or [name, {{options}}]", v)
    return check


#: encoder names of segmentation_models_pytorch that build without the network: smp's own encoders
#: and ``tu-<timm model>`` (letters, digits, ``_ . -``) — no ``hf-hub:``/``hf_hub:`` prefix, URL or path
_ENCODER = re.compile(r"(tu-)?[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}\Z")


def encoder_name(v, what):
    if not isinstance(v, str) or not _ENCODER.match(v) or re.search(r"hf[-_]hub", v, re.IGNORECASE):
        _fail(what, "an encoder name that builds locally (e.g. resnet18, efficientnet-b0, tu-resnet18: letters, "
                    "digits, _ . - only; no hub prefix, URL or path)", v)


_CH = integer(1, MAX_WIDTH)
_DIMS = integer(1, 3)
_STRIDES = nested(one_of(integer(1, 8), integers(1, 8, 1, 3), expected="a stride or one per axis"))
_KERNEL = one_of(integer(1, 15), integers(1, 15, 1, 3), expected="an odd size or one per axis")
_ACTS = ("relu", "leakyrelu", "prelu", "relu6", "elu", "selu", "celu", "gelu", "sigmoid", "tanh", "swish", "mish",
         "softmax", "logsoftmax")
_NORMS = ("batch", "instance", "group", "layer", "localresponse", "syncbatch")
_SMP_ACTIVATION = choice(None, "sigmoid", "softmax", "softmax2d", "logsoftmax", "identity", "tanh", "argmax",
                         "argmax2d", "clamp")


def _aux_params(v, what):
    if v is None:
        return
    if not isinstance(v, dict):
        _fail(what, "null or an object", v)
    known = {"classes": _CH, "pooling": choice("avg", "max"), "dropout": one_of(choice(None), number(0, 1),
                                                                                 expected="null or a number in [0, 1]"),
             "activation": _SMP_ACTIVATION}
    for k, u in v.items():
        if k not in known:
            _fail(what, f"keys among {', '.join(known)}", k)
        known[k](u, f"{what}.{k}")


_NORM_NAMES = ("batchnorm", "identity", "layernorm", "instancenorm", "inplace")


def _decoder_norm(v, what):
    if isinstance(v, bool) or (isinstance(v, str) and v in _NORM_NAMES):
        return
    if isinstance(v, dict) and isinstance(v.get("type"), str) and v["type"] in _NORM_NAMES:
        return plain_options({k: u for k, u in v.items() if k != "type"}, what)
    _fail(what, f"true/false, one of {', '.join(_NORM_NAMES)} or {{'type': …}}", v)


#: per allowed factory: the arguments a file may give, each with its check
SCHEMAS: dict[str, dict[str, Check]] = {
    "sjunet.models.unet:UNet": {
        "in_channels": _CH, "out_channels": _CH, "base_width": _CH, "depth": integer(1, MAX_LEVELS),
        "batch_norm": boolean, "up_relu": boolean, "pool": choice("avg", "max"), "spatial_dims": integer(2, 3)},
    "sjunet.models.fcn:SpikingFCNNet": {"in_channels": _CH, "out_channels": _CH, "width": _CH},
    "sjunet.models.zoo_nets:PadCatUNet": {
        "n_channels": _CH, "n_classes": _CH, "bilinear": boolean, "width": _CH, "depth": integer(1, MAX_LEVELS)},
    "sjunet.models.nnunet:plain_conv_unet": {
        "input_channels": _CH, "num_classes": _CH, "n_stages": integer(1, MAX_LEVELS), "base_features": _CH,
        "max_features": _CH, "spatial_dims": _DIMS, "norm": choice(None, "instance", "batch"),
        "nonlin": choice("leakyrelu", "relu"), "n_conv_per_stage": integer(1, MAX_LEVELS)},
    "sjunet.models.nnunet:anisotropic_plain_conv_unet": {
        "input_channels": _CH, "num_classes": _CH, "n_stages": integer(1, MAX_LEVELS), "base_features": _CH,
        "max_features": _CH, "norm": choice(None, "instance", "batch"), "nonlin": choice("leakyrelu", "relu"),
        "n_conv_per_stage": integer(1, MAX_LEVELS)},
    "sjunet.models.nnunet:residual_encoder_unet": {
        "input_channels": _CH, "num_classes": _CH, "n_stages": integer(1, MAX_LEVELS), "base_features": _CH,
        "max_features": _CH, "spatial_dims": _DIMS, "norm": choice(None, "instance", "batch"),
        "nonlin": choice("leakyrelu", "relu"), "n_blocks": integer(1, MAX_LEVELS)},
    "monai.networks.nets:BasicUNet": {
        "spatial_dims": _DIMS, "in_channels": _CH, "out_channels": _CH,
        "features": integers(1, MAX_WIDTH, 6, 6), "act": layer(*_ACTS), "norm": layer(*_NORMS), "bias": boolean,
        "dropout": one_of(number(0, 1), layer("dropout", "alphadropout"), expected="a number in [0, 1] or [name, {…}]"),
        "upsample": choice("deconv", "pixelshuffle", "nontrainable")},
    "monai.networks.nets:UNet": {
        "spatial_dims": _DIMS, "dimensions": _DIMS, "in_channels": _CH, "out_channels": _CH,
        "channels": integers(1, MAX_WIDTH, 2), "strides": _STRIDES, "kernel_size": _KERNEL, "up_kernel_size": _KERNEL,
        "num_res_units": integer(0, MAX_LEVELS), "act": layer(*_ACTS), "norm": layer(*_NORMS),
        "dropout": number(0, 1), "bias": boolean, "adn_ordering": lambda v, w: None if (
            isinstance(v, str) and re.fullmatch(r"[NDA]{0,3}", v)) else _fail(w, "letters of N, D, A", v)},
    "monai.networks.nets:AttentionUnet": {  # attention gates: Σ-Δ neurons (spec §15)
        "spatial_dims": _DIMS, "in_channels": _CH, "out_channels": _CH, "channels": integers(1, MAX_WIDTH, 2),
        "strides": _STRIDES, "kernel_size": _KERNEL, "up_kernel_size": _KERNEL, "dropout": number(0, 1)},
    "sjunet.models.zoo_nets:unetr": {  # MONAI's UNETR (a ViT encoder), saying its one input size
        "in_channels": _CH, "out_channels": _CH, "spatial_dims": integer(2, 3),
        "img_size": one_of(integer(1, MAX_SIDE), integers(1, MAX_SIDE, 2, 3), expected="a side or one per axis"),
        "feature_size": _CH, "hidden_size": _CH, "mlp_dim": _CH, "num_heads": integer(1, MAX_WIDTH),
        "proj_type": choice("conv", "perceptron"), "norm_name": layer(*_NORMS), "conv_block": boolean,
        "res_block": boolean, "dropout_rate": number(0, 1), "qkv_bias": boolean},
    "segmentation_models_pytorch:Unet": {
        "encoder_name": encoder_name, "encoder_depth": integer(1, 5), "encoder_weights": choice(None),
        "decoder_use_norm": _decoder_norm, "decoder_use_batchnorm": one_of(boolean, choice("inplace"),
                                                                           expected="true, false or 'inplace'"),
        "decoder_channels": integers(1, MAX_WIDTH, 1, 5), "decoder_attention_type": choice(None, "scse"),
        "decoder_interpolation": choice("nearest", "bilinear", "bicubic", "area", "nearest-exact"),
        "in_channels": _CH, "classes": _CH, "activation": _SMP_ACTIVATION, "aux_params": _aux_params},
}

#: arguments a factory's default would take from the network: filled in when the file gives none
SAFE_DEFAULTS: dict[str, dict[str, Any]] = {"segmentation_models_pytorch:Unet": {"encoder_weights": None}}


def check_arch_kwargs(factory: str, kwargs: dict, where: str) -> dict:
    """The keyword arguments a file gives ``factory``, checked against :data:`SCHEMAS` (module
    docstring) before anything is imported, with :data:`SAFE_DEFAULTS` filled in. One-line
    :class:`~sjunet.io.ArtifactError` naming ``where`` and the argument."""
    schema = SCHEMAS.get(factory)
    if schema is None:
        raise ArtifactError(f"{where}: sjunet has no argument list for the architecture {factory}")
    for k, v in kwargs.items():
        if k not in schema:
            raise ArtifactError(f"{where}: the checkpoint gives {factory} the argument {k!r}, which sjunet does not "
                                f"take from a file (it takes {', '.join(schema)}); if you trust the file, rebuild the "
                                "model yourself with --arch/--arch-kwargs and --weights")
        try:
            schema[k](v, f"architecture argument {k!r}")
        except ArtifactError as e:
            raise ArtifactError(f"{where}: {e} — a file never chooses what sjunet downloads or imports") from None
    return {**SAFE_DEFAULTS.get(factory, {}), **kwargs}


__all__ = ["SCHEMAS", "SAFE_DEFAULTS", "check_arch_kwargs", "encoder_name"]
