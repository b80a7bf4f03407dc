"""What an SNN file's record may ask for: limits, and the check of every module's arguments as data.

Used by :mod:`sjunet.snn.file` before anything is built (module docstring there): a record's hash is
unkeyed, so a crafted record can carry a correct ``content_sha256``, and its contents are checked
as data — types, sane sizes, a fixed vocabulary of module types.
"""
from __future__ import annotations

import inspect
import math
import re
import reprlib
from typing import Any

from torch import fx, nn

from sjunet.io import ArtifactError
from sjunet.layers import plumbing
from sjunet.layers.plumbing import AddConstant, Index, Permute, Repeat, Reshape, Roll, Scale
from sjunet.layers.stages import MAX_GROUPS, AdaptiveAvgPool, Center, ChannelAffine, Pad, Resample, SpikingMaxPool2d
from sjunet.neurons import NEURON_TYPES, StaticInputSynapse
from sjunet.neurons.sigma_delta_functions import PRODUCTS, check_equation, check_params

#: the stage modules an SNN file may hold (by class name)
STAGES = {c.__name__: c for c in (Resample, Pad, SpikingMaxPool2d, AdaptiveAvgPool, Center, Reshape, Permute, Index,
                                  Repeat, Roll, AddConstant, Scale)}


# ------------------------------------------------------------------ what a record may ask for
#
# A record is data from the file; its hash is unkeyed, so a crafted record can carry a correct
# ``content_sha256``. Everything below is checked as data, before any module, graph or tensor is
# built: types (ints are ints, bools are bools), sane sizes, a node vocabulary, and the module
# parameters' shapes against the tensors actually in the file (modules are first built on the
# ``meta`` device, which allocates nothing).

MAX_RECORD_CHARS = 64 * 2**20  #: the record's JSON text
MAX_DEPTH = 64  #: nesting of the record's JSON (a real record: under 10)
MAX_NODES = 10_000  #: graph nodes, and declared modules (a large U-Net: a few thousand)
MAX_NAME = 256  #: characters of a node name or a module path
MAX_CHANNELS = 65_536  #: channels of a convolution or a gain (neuron integers: at most 2^20)
MAX_KERNEL = 64  #: kernel size, stride, dilation, output padding of a convolution or a pooling
MAX_CONV_PADDING = 1024
MAX_POOL_PADDING = 64
MAX_PAD = 4096  #: each amount of a Pad stage (negative: cropping)
MAX_SCALE = 64.0  #: a Resample's scale factor
MAX_SIZE = 16_384  #: a Resample's output size, per side
MAX_THRESHOLDS = 32  #: entries of a neuron's list argument (threshold ladder, v_init per level)
#: magnitude of a neuron's number (a threshold, v_init, a decay, a slope: normalised units, about 1)
MAX_NEURON_VALUE = 1e6
MAX_CAT_PARTS = 1024
MAX_PARAMS = 2**28  #: parameter elements of a graph built without the file's tensors to compare with
MAX_FEATURES = 1 << 20  #: in / out features of a Linear layer

SEGMENT = re.compile(r"[A-Za-z0-9_]+\Z")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
NODE_OPS = ("placeholder", "call_module", "call_function", "output")
NODE_KEYS = {"name", "op", "args", "kwargs", "target"}
#: placeholder targets become the generated forward's argument name
BAD_ARG_NAMES = {"self", "torch", "operator", "getattr"}
BUILD_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError, OverflowError,
                 RecursionError, MemoryError, AssertionError, NotImplementedError)


#: the names :class:`sjunet.snn.model.SpikingUNet` adds to a GraphModule (checked there): no top-level module takes them
SNN_OWN_NAMES = frozenset({"adopt", "fingerprint", "rebuilt", "record", "source"})


def _module_attributes() -> tuple[frozenset, frozenset]:
    """Names a module path segment must not take: attributes of nn.Module (any level) and of
    fx.GraphModule (top level), which setattr would clobber."""
    plain = set(dir(nn.Module)) | set(vars(nn.Module()))
    top = set(dir(fx.GraphModule)) | plain | set(vars(fx.GraphModule(nn.Module(), fx.Graph())))  # built from nothing
    return frozenset(top | SNN_OWN_NAMES), frozenset(plain)


TOP_RESERVED, SUB_RESERVED = _module_attributes()

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 40, 40, 4, 3, 2


def short_repr(v: Any) -> str:
    """A short one-line rendering of a value from the file, for messages."""
    return _REPR.repr(v)


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, shortened."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _int(v: Any, lo: int, hi: int, what: str) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ArtifactError(f"{what} must be an integer in {lo}..{hi}, got {short_repr(v)}")
    return v


def _ints(v: Any, lo: int, hi: int, what: str, lengths: tuple[int, ...] = (2,)) -> int | tuple[int, ...]:
    """An int, or a list of ints of one of ``lengths`` (as a tuple)."""
    if isinstance(v, list):
        if len(v) not in lengths:
            raise ArtifactError(f"{what} must be an integer or a list of {' or '.join(map(str, lengths))} integers, "
                                f"got {short_repr(v)}")
        return tuple(_int(u, lo, hi, what) for u in v)
    return _int(v, lo, hi, what)


def _number(v: Any, what: str) -> float | int:
    """A finite JSON number (not a bool)."""
    if type(v) is int and abs(v) <= 2**53:
        return v
    if type(v) is float and math.isfinite(v):
        return v
    raise ArtifactError(f"{what} must be a finite number, got {short_repr(v)}")


def _bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise ArtifactError(f"{what} must be true or false, got {short_repr(v)}")
    return v


def _choice(v: Any, options: tuple, what: str) -> Any:
    if not isinstance(v, str) or v not in options:
        raise ArtifactError(f"{what} must be one of {', '.join(map(repr, options))}, got {short_repr(v)}")
    return v


def _keys(args: Any, required: set[str], what: str) -> dict:
    if not isinstance(args, dict):
        raise ArtifactError(f"{what}: the arguments must be a JSON object, got {short_repr(args)}")
    missing, extra = sorted(required - set(args)), sorted(set(args) - required)
    if missing:
        raise ArtifactError(f"{what}: argument {missing[0]!r} is missing")
    if extra:
        raise ArtifactError(f"{what}: unexpected argument {short_repr(extra[0])}")
    return args


_CONV_ARGS = {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
              "padding_mode"}
_CONV_T_ARGS = {"in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding",
                "groups", "bias", "dilation", "padding_mode"}
_CONV_KEYS = {"Conv2d": _CONV_ARGS, "ConvTranspose2d": _CONV_T_ARGS,
              "Conv3d": _CONV_ARGS, "ConvTranspose3d": _CONV_T_ARGS}
#: spatial dimensions of the module types that name theirs (per-axis arguments: lists of that length)
_TYPE_DIMS = {"Conv2d": 2, "ConvTranspose2d": 2, "AvgPool2d": 2, "Conv3d": 3, "ConvTranspose3d": 3, "AvgPool3d": 3}


def _conv_args(t: str, args: Any, what: str) -> dict:
    a = _keys(args, _CONV_KEYS[t], what)
    n = (_TYPE_DIMS[t],)
    out = {"in_channels": _int(a["in_channels"], 1, MAX_CHANNELS, f"{what}: in_channels"),
           "out_channels": _int(a["out_channels"], 1, MAX_CHANNELS, f"{what}: out_channels"),
           "groups": _int(a["groups"], 1, MAX_CHANNELS, f"{what}: groups"),
           "kernel_size": _ints(a["kernel_size"], 1, MAX_KERNEL, f"{what}: kernel_size", n),
           "stride": _ints(a["stride"], 1, MAX_KERNEL, f"{what}: stride", n),
           "dilation": _ints(a["dilation"], 1, MAX_KERNEL, f"{what}: dilation", n),
           "bias": _bool(a["bias"], f"{what}: bias")}
    if out["in_channels"] % out["groups"] or out["out_channels"] % out["groups"]:
        raise ArtifactError(f"{what}: groups={out['groups']} does not divide the channels "
                            f"({out['in_channels']} in, {out['out_channels']} out)")
    if t in ("Conv2d", "Conv3d") and isinstance(a["padding"], str):
        out["padding"] = _choice(a["padding"], ("same", "valid"), f"{what}: padding")
    else:
        out["padding"] = _ints(a["padding"], 0, MAX_CONV_PADDING, f"{what}: padding", n)
    if t.startswith("ConvTranspose"):
        out["output_padding"] = _ints(a["output_padding"], 0, MAX_KERNEL, f"{what}: output_padding", n)
        out["padding_mode"] = _choice(a["padding_mode"], ("zeros",), f"{what}: padding_mode")
    else:
        out["padding_mode"] = _choice(a["padding_mode"], ("zeros", "reflect", "replicate", "circular"),
                                      f"{what}: padding_mode")
    return out


def _pool_args(t: str, args: Any, what: str) -> dict:
    avg = t in ("AvgPool2d", "AvgPool3d")
    extra = {"ceil_mode", "count_include_pad"} if avg else {"ceil_mode", "dilation"}
    optional = set() if avg else {"spatial_dims"}  # a spiking max-pool of volumes names its dimensions
    a = _keys(args, {"kernel_size", "stride", "padding"} | extra | (optional & set(args) if isinstance(args, dict)
                                                                   else set()), what)
    nd = _TYPE_DIMS.get(t) or (_int(a["spatial_dims"], 2, 3, f"{what}: spatial_dims") if "spatial_dims" in a else 2)
    n = (nd,)
    out = {"kernel_size": _ints(a["kernel_size"], 1, MAX_KERNEL, f"{what}: kernel_size", n),
           "stride": None if a["stride"] is None else _ints(a["stride"], 1, MAX_KERNEL, f"{what}: stride", n),
           "padding": _ints(a["padding"], 0, MAX_POOL_PADDING, f"{what}: padding", n),
           "ceil_mode": _bool(a["ceil_mode"], f"{what}: ceil_mode")}
    if avg:
        out["count_include_pad"] = _bool(a["count_include_pad"], f"{what}: count_include_pad")
    else:
        out["dilation"] = _ints(a["dilation"], 1, MAX_KERNEL, f"{what}: dilation", n)
        if "spatial_dims" in a:
            out["spatial_dims"] = nd
    return out


def _resample_args(args: Any, what: str) -> dict:
    a = _keys(args, {"mode", "scale_factor", "size", "align_corners"}, what)
    out = {"mode": _choice(a["mode"], Resample.MODES, f"{what}: mode"), "scale_factor": None, "size": None,
           "align_corners": None if a["align_corners"] is None else _bool(a["align_corners"], f"{what}: align_corners")}
    scale, size = a["scale_factor"], a["size"]
    if scale is not None:
        for s in (scale if isinstance(scale, list) and len(scale) in (1, 2, 3) else [scale]):
            if not 0 < _number(s, f"{what}: scale_factor") <= MAX_SCALE:
                raise ArtifactError(f"{what}: scale_factor must be in (0, {MAX_SCALE:g}], got {short_repr(s)}")
        out["scale_factor"] = scale
    if size is not None:
        out["size"] = _ints(size, 1, MAX_SIZE, f"{what}: size", (1, 2, 3))
    if scale is not None and size is not None:
        raise ArtifactError(f"{what}: give scale_factor or size, not both")
    return out


def _pad_args(args: Any, what: str) -> dict:
    a = _keys(args, {"pad", "mode"}, what)
    pad = a["pad"]
    if not isinstance(pad, list) or len(pad) not in (2, 4, 6):
        raise ArtifactError(f"{what}: pad must be a list of 2, 4 or 6 integers, got {short_repr(pad)}")
    return {"pad": [_int(p, -MAX_PAD, MAX_PAD, f"{what}: pad") for p in pad],
            "mode": _choice(a["mode"], Pad.MODES, f"{what}: mode")}


def _center_args(args: Any, what: str) -> dict:
    """A norm's centring (:class:`~sjunet.layers.stages.Center`): ``groups`` an integer in 1..65536."""
    return {"groups": _int(_keys(args, {"groups"}, what)["groups"], 1, MAX_GROUPS, f"{what}: groups")}


def _neuron_value(v: Any, default: Any, what: str) -> Any:
    """A neuron argument, of the kind its default has: a bool, a short string, a finite number
    (|int| <= 2^20) or a short list of numbers; None where the default is None."""
    if isinstance(default, bool):
        return _bool(v, what)
    if isinstance(default, str):
        if not isinstance(v, str) or len(v) > 64:
            raise ArtifactError(f"{what} must be a short string, got {short_repr(v)}")
        return v
    if v is None and (default is None or default is inspect.Parameter.empty):
        return v
    if isinstance(v, list) and not isinstance(default, str):
        if not 1 <= len(v) <= MAX_THRESHOLDS:
            raise ArtifactError(f"{what} must be a list of 1..{MAX_THRESHOLDS} numbers, got {short_repr(v)}")
        return [_neuron_number(u, what) for u in v]
    if type(v) is int:
        return _int(v, -(2**20), 2**20, what)
    return _neuron_number(v, what)


def _neuron_number(v: Any, what: str) -> float | int:
    """A neuron's number: finite and within ±:data:`MAX_NEURON_VALUE` (normalised units: a threshold
    is about 1; a larger value overflows float32 membranes or never lets a neuron fire)."""
    v = _number(v, what)
    if abs(v) > MAX_NEURON_VALUE:
        raise ArtifactError(f"{what} must be within ±{MAX_NEURON_VALUE:g} (normalised units: a threshold is about 1), "
                            f"got {short_repr(v)}")
    return v


def _neuron_args(cls: type, args: Any, what: str) -> dict:
    if not isinstance(args, dict):
        raise ArtifactError(f"{what}: the arguments must be a JSON object, got {short_repr(args)}")
    params = {k: p for k, p in inspect.signature(cls).parameters.items()
              if k != "step_mode" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for k, v in args.items():
        if k not in params:
            raise ArtifactError(f"{what}: unexpected argument {short_repr(k)}")
        _neuron_value(v, params[k].default, f"{what}: {k}")
    return dict(args)


def _sigma_args(t: str, args: Any, what: str) -> dict:
    """A Σ-Δ neuron's arguments: the function a name of the table with its parameters checked against
    it (:func:`~sjunet.neurons.sigma_delta_functions.check_params`), or a product and its equation;
    the ladder, V_0 and the units as numbers."""
    if t == "SigmaDeltaNode":
        a = _keys(args, {"function", "params", "thresholds", "v_init", "in_scale", "out_scale", "channels"}, what)
        try:
            params = check_params(a["function"], a["params"])
        except ValueError as e:
            raise ArtifactError(f"{what}: {first_line(e)}") from None
        out = {"function": a["function"], "params": params, "channels": _int(a["channels"], 0, MAX_CHANNELS,
                                                                                    f"{what}: channels")}
        scales = ("in_scale", "out_scale")
    else:
        a = _keys(args, {"op", "equation", "thresholds", "v_init", "a_scale", "b_scale", "out_scale"}, what)
        out = {"op": _choice(a["op"], PRODUCTS, f"{what}: op"), "equation": None}
        if a["equation"] is not None:
            try:
                out["equation"] = check_equation(a["equation"])
            except ValueError as e:
                raise ArtifactError(f"{what}: {first_line(e)}") from None
        scales = ("a_scale", "b_scale", "out_scale")
    for k in scales:
        v = _number(a[k], f"{what}: {k}")
        if not v > 0:
            raise ArtifactError(f"{what}: {k} must be positive, got {short_repr(v)}")
        out[k] = v
    th = a["thresholds"]
    if not isinstance(th, list) or not 1 <= len(th) <= MAX_THRESHOLDS:
        raise ArtifactError(f"{what}: thresholds must be a list of 1..{MAX_THRESHOLDS} numbers")
    out["thresholds"] = [_number(v, f"{what}: thresholds") for v in th]
    out["v_init"] = _number(a["v_init"], f"{what}: v_init")
    return out


def _ints_list(v: Any, lo: int, hi: int, what: str, most: int = plumbing.MAX_RANK) -> list[int]:
    if not isinstance(v, list) or not 1 <= len(v) <= most:
        raise ArtifactError(f"{what} must be a list of 1..{most} integers, got {short_repr(v)}")
    return [_int(u, lo, hi, what) for u in v]


def _plumbing_args(t: str, args: Any, what: str) -> dict:
    """A plumbing stage's arguments (:mod:`sjunet.layers.plumbing`) as plain data of sane size."""
    big, rank = plumbing.MAX_SIZE, plumbing.MAX_RANK
    if t == "Reshape":
        a = _keys(args, {"shape", "batch_dim"}, what)
        shape = _ints_list(a["shape"], 1, big, f"{what}: shape")
        return {"shape": shape, "batch_dim": _int(a["batch_dim"], 0, len(shape) - 1, f"{what}: batch_dim")}
    if t == "Permute":
        return {"dims": _ints_list(_keys(args, {"dims"}, what)["dims"], 0, rank - 1, f"{what}: dims")}
    if t == "Index":
        items = _keys(args, {"items"}, what)["items"]
        if not isinstance(items, list) or not 1 <= len(items) <= rank + 2:
            raise ArtifactError(f"{what}: items must be a list of 1..{rank + 2} index items")
        for v in items:
            ok = isinstance(v, list) and v and v[0] in plumbing.ITEM_KINDS and all(
                u is None or (type(u) is int and abs(u) <= big) for u in v[1:])
            if not ok:
                raise ArtifactError(f"{what}: index item {short_repr(v)} is not one of {plumbing.ITEM_KINDS}")
        return {"items": items}
    if t == "Repeat":
        return {"repeats": _ints_list(_keys(args, {"repeats"}, what)["repeats"], 1, 4096, f"{what}: repeats")}
    if t == "Roll":
        a = _keys(args, {"shifts", "dims"}, what)
        return {"shifts": _ints_list(a["shifts"], -big, big, f"{what}: shifts"),
                "dims": _ints_list(a["dims"], -rank, rank, f"{what}: dims")}
    if t == "AddConstant":
        shape = _keys(args, {"shape"}, what)["shape"]
        if not isinstance(shape, list) or len(shape) > rank:
            raise ArtifactError(f"{what}: shape must be a list of at most {rank} sizes")
        shape = [_int(v, 1, big, f"{what}: shape") for v in shape]
        if math.prod(shape) > big:
            raise ArtifactError(f"{what}: a constant of {math.prod(shape)} values (at most {big})")
        return {"shape": shape}
    v = _number(_keys(args, {"factor"}, what)["factor"], f"{what}: factor")
    if v == 0:
        raise ArtifactError(f"{what}: factor must be non-zero")
    return {"factor": v}


_PLUMBING_TYPES = ("Reshape", "Permute", "Index", "Repeat", "Roll", "AddConstant", "Scale")
_SIGMA_TYPES = ("SigmaDeltaNode", "SigmaDeltaProduct")


def check_module(spec: Any, what: str, nested: bool = False) -> tuple[str, dict]:
    """``(type, constructor kwargs)`` of a module spec, every argument checked (see the limits above)."""
    if not isinstance(spec, dict) or set(spec) != {"type", "args"}:
        raise ArtifactError(f"{what}: a module must be an object with 'type' and 'args', got {short_repr(spec)}")
    t, args = spec["type"], spec["args"]
    if not isinstance(t, str):
        raise ArtifactError(f"{what}: the module type must be a string, got {short_repr(t)}")
    if t == "StaticInputSynapse" and not nested:
        a = _keys(args, {"layer"}, what)
        lt, largs = check_module(a["layer"], f"{what} (its layer)", nested=True)
        if lt not in _CONV_KEYS:
            raise ArtifactError(f"{what}: a static input synapse wraps a Conv2d/3d or ConvTranspose2d/3d, not {lt!r}")
        return t, {"layer": (lt, largs)}
    if t in _SIGMA_TYPES and t in NEURON_TYPES and not nested:
        return t, _sigma_args(t, args, what)
    if t in NEURON_TYPES and not nested:
        return t, _neuron_args(NEURON_TYPES[t], args, what)
    if t in _PLUMBING_TYPES and not nested:
        return t, _plumbing_args(t, args, what)
    if t == "Linear" and not nested:
        a = _keys(args, {"in_features", "out_features", "bias"}, what)
        return t, {"in_features": _int(a["in_features"], 1, MAX_FEATURES, f"{what}: in_features"),
                   "out_features": _int(a["out_features"], 1, MAX_FEATURES, f"{what}: out_features"),
                   "bias": _bool(a["bias"], f"{what}: bias")}
    if t == "ChannelAffine" and not nested:
        a = _keys(args, {"channels", "shift"} | ({"spatial_dims"} & set(args) if isinstance(args, dict) else set()),
                  what)
        out = {"channels": _int(a["channels"], 1, MAX_CHANNELS, f"{what}: channels"),
               "shift": _bool(a["shift"], f"{what}: shift")}
        if "spatial_dims" in a:  # volumes (images: absent)
            out["spatial_dims"] = _int(a["spatial_dims"], 2, 3, f"{what}: spatial_dims")
        return t, out
    if t == "Resample" and not nested:
        return t, _resample_args(args, what)
    if t == "Center" and not nested:
        return t, _center_args(args, what)
    if t == "Pad" and not nested:
        return t, _pad_args(args, what)
    if t in ("SpikingMaxPool2d", "AvgPool2d", "AvgPool3d") and not nested:
        return t, _pool_args(t, args, what)
    if t == "AdaptiveAvgPool" and not nested:
        size = _keys(args, {"output_size"}, what)["output_size"]
        if not isinstance(size, list) or len(size) not in (2, 3):
            raise ArtifactError(f"{what}: output_size must be a list of 2 or 3 sizes, got {short_repr(size)}")
        return t, {"output_size": [None if s is None else _int(s, 1, MAX_SIZE, f"{what}: output_size") for s in size]}
    if t in _CONV_KEYS:
        return t, _conv_args(t, args, what)
    raise ArtifactError(f"{what}: unknown module type {short_repr(t)}")


def check_ladder_record(conversion: Any) -> None:
    """The conversion record's ladder fields, which people and tables read: ``options.thresholds`` —
    a list of at most :data:`MAX_THRESHOLDS` positive finite numbers, ``"auto"`` (a ladder per
    layer) or absent — and ``ladders`` — absent, null, or per ReLU node an object whose
    ``thresholds`` is such a list and whose other values are numbers or booleans. Files written
    before per-layer ladders carry a list and no ``ladders``: they pass as they are."""
    if not isinstance(conversion, dict):
        return
    options = conversion.get("options")
    th = options.get("thresholds") if isinstance(options, dict) else None

    def ladder(v: Any, what: str) -> None:
        if not isinstance(v, list) or not 1 <= len(v) <= MAX_THRESHOLDS:
            raise ArtifactError(f"{what} must be a list of 1 to {MAX_THRESHOLDS} thresholds, got {short_repr(v)}")
        for t in v:
            if not _number(t, what) > 0:
                raise ArtifactError(f"{what} must be positive, got {short_repr(t)}")

    if th is not None and th != "auto":
        ladder(th, "conversion.options.thresholds")
    ladders = conversion.get("ladders")
    if ladders is None:
        return
    if not isinstance(ladders, dict) or len(ladders) > MAX_NODES:
        raise ArtifactError(f"conversion.ladders must be an object (ReLU node -> its ladder), got {short_repr(ladders)}")
    for node, choice in ladders.items():
        what = f"conversion.ladders[{short_repr(node)}]"
        if not isinstance(choice, dict):
            raise ArtifactError(f"{what} must be an object, got {short_repr(choice)}")
        ladder(choice.get("thresholds"), f"{what}.thresholds")
        for k, v in choice.items():
            if k != "thresholds" and not isinstance(v, bool):
                _number(v, f"{what}.{short_repr(k)}")


def construct(t: str, args: dict) -> nn.Module:
    if t == "StaticInputSynapse":
        return StaticInputSynapse(construct(*args["layer"]))
    if t in NEURON_TYPES:
        return NEURON_TYPES[t](**args)
    if t == "ChannelAffine":
        return ChannelAffine(**args)
    if t in STAGES:
        return STAGES[t](**args)
    return getattr(nn, t)(**args)


def build_module(spec: dict, what: str = "module") -> nn.Module:
    """The module of a :func:`~sjunet.snn.file.module_spec` (types from the fixed vocabulary only, every argument
    checked before anything is built; a bad spec raises :class:`ArtifactError`)."""
    t, args = check_module(spec, what)
    try:
        return construct(t, args)
    except BUILD_ERRORS as e:
        raise ArtifactError(f"{what}: cannot build {t} ({type(e).__name__}: {first_line(e)})") from None
