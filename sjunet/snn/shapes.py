"""What a converted network's own shapes allow: every record field bounded by them, checked at load.

An SNN file's record is data from the file (:mod:`sjunet.snn.file`) and its hash is unkeyed. A
record whose every value lies inside the vocabulary's limits (:mod:`sjunet.snn.record`) can still
ask for gigabytes: a size rule of 256 per axis pads a 16x32x32 volume to 256³, a resample by 12,
a pad of 4096 or an adaptive pool to 16384 grows one tensor a thousandfold, a crop of 4096 or a
dilation of 64 fails inside torch. Three checks, each naming the node and the field:

* **at load** (:func:`check_record`): the conversion's size fields (``size_multiple``,
  ``size_multiples``, ``size_rule``, ``example_shape``, the channel counts) have their types, and a
  size multiple is at most the spatial reduction the graph performs (the product of its strides
  along each axis, rounded up to a power of two, as :func:`sjunet.graph.size_multiples` records
  it; the calibration size where a global pool or a fixed-size resample makes the smallest map);
  a convolution pads at most its kernel's extent (``dilation × (kernel_size − 1)``), a pool at most
  half its window (torch's own rule);
* **per input shape** (:func:`sjunet.snn.footprint.plan`): the shape of every node, computed from the module
  arithmetic of the vocabulary (convolutions, transposed convolutions, pools, resampling, padding,
  adaptive pooling, channel joins) exactly as torch computes it, so what torch would refuse is
  refused here in one line; and no tensor may be larger than the input along any axis beyond
  :func:`slack` — a U-Net's feature maps never are (they shrink and are restored to the input's
  size), so a field that makes one larger is not a converted U-Net's;
* **memory** (:func:`sjunet.snn.footprint.check_budget`): the state of the memory modules (neurons, spiking max-pools,
  static input caches), the live tensors of one step (liveness over the graph's order) and the
  largest convolution workspace, × the batch, × the chunk in multi-step mode, against
  :func:`~sjunet.snn.footprint.memory_budget` (half of the machine's RAM by default;
  ``--memory-budget``, or ``SJUNET_MEMORY_BUDGET``).

:mod:`sjunet.snn.file` runs the first at load (:func:`check_record`, here); the other two are
:mod:`sjunet.snn.footprint`, run by :func:`sjunet.snn.simulation.check_run` before a network rebuilt
from a record runs on an input shape (cached per network and shape).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from sjunet.io import ArtifactError
from sjunet.snn.record import MAX_CHANNELS, MAX_NAME, MAX_NODES, MAX_SIZE, short_repr

#: the largest a recorded input axis may be (calibration example, shape-specialised size)
MAX_INPUT_AXIS = 1 << 20

_AXES = {1: ("W",), 2: ("H", "W"), 3: ("D", "H", "W")}
_CONV = ("Conv2d", "Conv3d")
_CONV_T = ("ConvTranspose2d", "ConvTranspose3d")
_POOLS = ("AvgPool2d", "AvgPool3d", "SpikingMaxPool2d")


class RecordError(ArtifactError):
    """A record field asks for something the network's own shapes do not allow."""


def slack(n: int) -> int:
    """How much larger than the input (``n`` along an axis) a tensor may be: max(16, n/4) — room for
    a padding convolution's border, never for an amplification."""
    return max(16, int(n) // 4)


def axis_names(nd: int) -> tuple[str, ...]:
    return _AXES.get(nd, tuple(f"axis {i}" for i in range(nd)))


def show_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in shape)


# ----------------------------------------------------------------------------- the graph


def spatial_dims(modules: dict[str, tuple[str, dict]]) -> int:
    """Spatial dimensions of a checked graph's modules (3 when any module is a volume's, else 2)."""
    for t, a in modules.values():
        if t == "StaticInputSynapse":
            t, a = a["layer"]
        if t.endswith("3d") or a.get("spatial_dims") == 3:
            return 3
        if t == "AdaptiveAvgPool" and len(a["output_size"]) == 3:
            return 3
        for key in ("kernel_size", "stride", "padding", "dilation"):
            v = a.get(key)
            if isinstance(v, (list, tuple)) and len(v) == 3:
                return 3
    return 2


def per_axis(v: Any, nd: int, what: str) -> tuple:
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return tuple(v) * nd
        if len(v) != nd:
            raise RecordError(f"{what} gives {len(v)} values for a network of {nd} spatial axes")
        return tuple(v)
    return (v,) * nd


def refs(a: Any) -> list[str]:
    """Node names an argument refers to (``{"node": n}``, tuples and lists of them)."""
    if isinstance(a, dict):
        if "node" in a:
            return [a["node"]]
        return [n for v in a.get("tuple", []) for n in refs(v)]
    if isinstance(a, list):
        return [n for v in a for n in refs(v)]
    return []


def cat_args(e: dict) -> tuple[list[str], int]:
    args, kwargs = e["args"]["tuple"], e["kwargs"]["dict"]
    parts = args[0] if args else kwargs["tensors"]
    dim = args[1] if len(args) == 2 else kwargs.get("dim", 0)
    return refs(parts), dim


# ----------------------------------------------------------------------------- load-time bounds


def _module_bounds(path: str, t: str, a: dict, nd: int) -> None:
    """Field bounds of one module that hold whatever the input: padding within the kernel."""
    where = f"module {path!r} ({t})"
    if t == "StaticInputSynapse":
        return _module_bounds(path, *a["layer"], nd)
    if t in _CONV and not isinstance(a["padding"], str):
        k, d, p = (per_axis(a[f], nd, f"{where}: {f}") for f in ("kernel_size", "dilation", "padding"))
        for i in range(nd):
            if p[i] > d[i] * (k[i] - 1):
                raise RecordError(f"{where}: padding {short_repr(a['padding'])} is more than dilation × (kernel_size − 1) "
                                  f"= {d[i] * (k[i] - 1)} along {axis_names(nd)[i]}: a convolution never pads beyond "
                                  "its kernel's extent — the record is not one sjunet wrote")
    if t in _CONV_T:
        k, d, p = (per_axis(a[f], nd, f"{where}: {f}") for f in ("kernel_size", "dilation", "padding"))
        s, op = per_axis(a["stride"], nd, f"{where}: stride"), per_axis(a["output_padding"], nd, f"{where}: output_padding")
        for i in range(nd):
            if p[i] > d[i] * (k[i] - 1):
                raise RecordError(f"{where}: padding {short_repr(a['padding'])} is more than dilation × (kernel_size − 1) "
                                  f"= {d[i] * (k[i] - 1)} along {axis_names(nd)[i]} — the record is not one sjunet wrote")
            if op[i] >= max(s[i], d[i]):
                raise RecordError(f"{where}: output_padding {short_repr(a['output_padding'])} must be smaller than the "
                                  f"stride or the dilation along {axis_names(nd)[i]}")
    if t in _POOLS:
        k = per_axis(a["kernel_size"], nd, f"{where}: kernel_size")
        d = per_axis(a.get("dilation", 1), nd, f"{where}: dilation")
        p = per_axis(a["padding"], nd, f"{where}: padding")
        for i in range(nd):
            if p[i] > (d[i] * (k[i] - 1) + 1) // 2:
                raise RecordError(f"{where}: padding {short_repr(a['padding'])} is more than half of its window "
                                  f"({d[i] * (k[i] - 1) + 1}) along {axis_names(nd)[i]}")
    if t == "AdaptiveAvgPool" and len(a["output_size"]) != nd:
        raise RecordError(f"{where}: output_size {short_repr(a['output_size'])} has {len(a['output_size'])} axes, the "
                          f"network {nd}")
    if t == "Pad" and len(a["pad"]) > 2 * nd:
        raise RecordError(f"{where}: pad {short_repr(a['pad'])} pads {len(a['pad']) // 2} axes, the network's tensors "
                          f"have {nd} spatial axes (a pad of the channels is not a U-Net's)")


#: module types of token graphs (the plumbing and Σ-Δ products of spec §15) whose output shapes follow
#: their arguments, not strides: their sizes are specialised to the calibration size
TOKEN_TYPES = ("Reshape", "Permute", "Index", "Repeat", "Linear", "SigmaDeltaProduct")


def reductions(nodes: list[dict], modules: dict[str, tuple[str, dict]], nd: int) -> tuple[tuple[float, ...], bool]:
    """``(reduction per axis, fixed)``: the largest product of strides (over resampling factors)
    along each axis on any path of the graph, and whether some node has a fixed size (a global
    pool, a resample to a fixed size) — then the smallest map is not a stride product."""
    factor: dict[str, tuple[float, ...]] = {}
    fixed = False
    best = [1.0] * nd
    for e in nodes:
        name, op = e["name"], e["op"]
        ins = [factor[n] for n in refs(e["args"]) + refs(e["kwargs"]) if n in factor]
        f = tuple(max(v[i] for v in ins) for i in range(nd)) if ins else (1.0,) * nd
        if op == "call_module":
            t, a = modules[e["target"]]
            if t == "StaticInputSynapse":
                t, a = a["layer"]
            if t in _CONV or t in _POOLS:
                s = per_axis(a["stride"] if a.get("stride") is not None else a["kernel_size"], nd, name)
                f = tuple(v * s[i] for i, v in enumerate(f))
            elif t in _CONV_T:
                s = per_axis(a["stride"], nd, name)
                f = tuple(v / s[i] for i, v in enumerate(f))
            elif t == "Resample" and a.get("scale_factor") is not None:
                s = per_axis(a["scale_factor"], nd, name)
                f = tuple(v / s[i] for i, v in enumerate(f))
            elif t == "Resample" and len(e["args"]["tuple"]) == 2:
                f = factor.get(refs(e["args"]["tuple"][1])[0], f)
            elif t == "Resample" or t == "AdaptiveAvgPool" or t in TOKEN_TYPES:
                fixed = True  # token plumbing (spec §15): windows and token counts fixed by the calibration size
        elif op == "call_function" and e["target"] not in ("torch.cat", "operator.add"):
            fixed = True
        factor[name] = f
        best = [max(b, v) for b, v in zip(best, f)]
    return tuple(best), fixed


def _pow2(v: float) -> int:
    n = max(1, math.ceil(v - 1e-9))
    return 1 << (n - 1).bit_length()


def _int(v: Any, lo: int, hi: int, what: str) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise RecordError(f"{what} must be an integer in {lo}..{hi}, got {short_repr(v)}")
    return v


def _ints(v: Any, n: int, lo: int, hi: int, what: str) -> list[int]:
    if not isinstance(v, list) or len(v) != n:
        raise RecordError(f"{what} must be a list of {n} integers (one per spatial axis of this network), got "
                          f"{short_repr(v)}")
    return [_int(u, lo, hi, what) for u in v]


def graph_input_channels(nodes: list[dict], modules: dict[str, tuple[str, dict]]) -> int | None:
    """The channels the graph's first layer takes (None when no convolution reads the input directly)."""
    x = nodes[0]["name"]
    for e in nodes:
        if e["op"] == "call_module" and x in refs(e["args"]):
            t, a = modules[e["target"]]
            if t == "StaticInputSynapse":
                t, a = a["layer"]
            if t in _CONV or t in _CONV_T:
                return int(a["in_channels"])
    return None


def check_record(record: dict, nodes: list[dict], modules: dict[str, tuple[str, dict]]) -> int:
    """Check the conversion's size fields and every module's input-independent bounds against the
    graph (module docstring); returns the graph's spatial dimensions. One-line :class:`RecordError`."""
    nd = spatial_dims(modules)
    for path, (t, a) in modules.items():
        _module_bounds(path, t, a, nd)
    conv = record.get("conversion") or {}
    if not isinstance(conv, dict):
        return nd
    example = conv.get("example_shape")
    if example is not None:
        example = _ints(example, nd + 2, 1, MAX_INPUT_AXIS, "conversion.example_shape (batch, channels and sizes)")
    for key in ("input_channels", "output_channels"):
        if conv.get(key) is not None:
            _int(conv[key], 1, MAX_CHANNELS, f"conversion.{key}")
    takes = graph_input_channels(nodes, modules)
    if conv.get("input_channels") is not None and takes is not None and conv["input_channels"] != takes:
        raise RecordError(f"conversion.input_channels is {conv['input_channels']} but the graph's first layer takes "
                          f"{takes} channels")
    red, fixed = reductions(nodes, modules, nd)
    bound = [_pow2(r) for r in red]
    if fixed:  # the smallest map may be a global pool's: the calibration size bounds the multiple
        bound = [max(b, _pow2(example[2 + i]) if example else MAX_SIZE) for i, b in enumerate(bound)]
    why = (f"the graph reduces its input at most {show_shape(bound)}-fold ({', '.join(axis_names(nd))}: the product of "
           "its strides)")
    if conv.get("size_multiple") is not None:
        _int(conv["size_multiple"], 1, max(bound),
             f"conversion.size_multiple ({why})")
    if conv.get("size_multiples") is not None:
        for i, m in enumerate(_ints(conv["size_multiples"], nd, 1, MAX_SIZE, "conversion.size_multiples")):
            if m > bound[i]:
                raise RecordError(f"conversion.size_multiples {short_repr(conv['size_multiples'])}: {m} along "
                                  f"{axis_names(nd)[i]} is more than {why}")
    rule = conv.get("size_rule")
    if rule is not None:
        _check_size_rule(rule, nd, bound, why)
    return nd


def _check_size_rule(rule: Any, nd: int, bound: list[int], why: str) -> None:
    if not isinstance(rule, dict):
        raise RecordError(f"conversion.size_rule must be an object, got {short_repr(rule)}")
    if rule.get("shape") is not None:
        _ints(rule["shape"], nd, 1, MAX_INPUT_AXIS, "conversion.size_rule.shape")
    if rule.get("example_shape") is not None:
        _ints(rule["example_shape"], nd + 2, 1, MAX_INPUT_AXIS, "conversion.size_rule.example_shape")
    if rule.get("multiple") is not None:
        _int(rule["multiple"], 1, max(bound), f"conversion.size_rule.multiple ({why})")
    if rule.get("multiples") is not None:
        for i, m in enumerate(_ints(rule["multiples"], nd, 1, MAX_SIZE, "conversion.size_rule.multiples")):
            if m > bound[i]:
                raise RecordError(f"conversion.size_rule.multiples: {m} along {axis_names(nd)[i]} is more than {why}")
    names = rule.get("nodes")
    if names is not None and not (isinstance(names, list) and len(names) <= MAX_NODES
                                  and all(isinstance(n, str) and len(n) <= MAX_NAME for n in names)):
        raise RecordError("conversion.size_rule.nodes must be a list of node names")


__all__ = ["MAX_INPUT_AXIS", "RecordError", "TOKEN_TYPES", "axis_names", "cat_args", "check_record", "graph_input_channels", "per_axis",
           "reductions", "refs", "show_shape", "slack", "spatial_dims"]
