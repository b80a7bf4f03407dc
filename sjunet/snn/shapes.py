"""What a converted network's own shapes allow: every record field bounded by them, and the memory
a run needs, known before anything is allocated.

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
* **per input shape** (:func:`plan`): the shape of every node, computed from the module
  arithmetic of the vocabulary (convolutions, transposed convolutions, pools, resampling, padding,
  adaptive pooling, channel joins) exactly as torch computes it, so what torch would refuse is
  refused here in one line; and no tensor may be larger than the input along any axis beyond
  :func:`slack` — a U-Net's feature maps never are (they shrink and are restored to the input's
  size), so a field that makes one larger is not a converted U-Net's;
* **memory** (:func:`check_budget`): the state of the memory modules (neurons, spiking max-pools,
  static input caches), the live tensors of one step (liveness over the graph's order) and the
  largest convolution workspace, × the batch, × the chunk in multi-step mode, against
  :func:`memory_budget` (half of the machine's RAM by default; ``SJUNET_MEMORY_BUDGET``).

:func:`sjunet.snn.simulation.check_run` runs the last two before a network rebuilt from a record
runs on an input shape (cached per network and shape); :mod:`sjunet.snn.file` runs the first at
load.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from sjunet.io import ArtifactError
from sjunet.snn.record import MAX_CHANNELS, MAX_NAME, MAX_NODES, MAX_SIZE, short_repr as _short

#: bytes per element of a simulated tensor (float32)
ELEMENT_BYTES = 4
#: the memory budget by default: this fraction of the machine's RAM
BUDGET_FRACTION = 0.5
#: environment variable that sets the memory budget (bytes, or with a K/M/G/T suffix)
BUDGET_ENV = "SJUNET_MEMORY_BUDGET"
#: the largest a recorded input axis may be (calibration example, shape-specialised size)
MAX_INPUT_AXIS = 1 << 20

_AXES = {1: ("W",), 2: ("H", "W"), 3: ("D", "H", "W")}
_CONV = ("Conv2d", "Conv3d")
_CONV_T = ("ConvTranspose2d", "ConvTranspose3d")
_POOLS = ("AvgPool2d", "AvgPool3d", "SpikingMaxPool2d")


class RecordError(ArtifactError):
    """A record field asks for something the network's own shapes do not allow."""


class BudgetError(ValueError):
    """A run would need more memory than the budget allows."""


def slack(n: int) -> int:
    """How much larger than the input (``n`` along an axis) a tensor may be: max(16, n/4) — room for
    a padding convolution's border, never for an amplification."""
    return max(16, int(n) // 4)


def _axis_names(nd: int) -> tuple[str, ...]:
    return _AXES.get(nd, tuple(f"axis {i}" for i in range(nd)))


def _show(shape: Sequence[int]) -> str:
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


def _per(v: Any, nd: int, what: str) -> tuple:
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return tuple(v) * nd
        if len(v) != nd:
            raise RecordError(f"{what} gives {len(v)} values for a network of {nd} spatial axes")
        return tuple(v)
    return (v,) * nd


def _refs(a: Any) -> list[str]:
    """Node names an argument refers to (``{"node": n}``, tuples and lists of them)."""
    if isinstance(a, dict):
        if "node" in a:
            return [a["node"]]
        return [n for v in a.get("tuple", []) for n in _refs(v)]
    if isinstance(a, list):
        return [n for v in a for n in _refs(v)]
    return []


def _cat_args(e: dict) -> tuple[list[str], int]:
    args, kwargs = e["args"]["tuple"], e["kwargs"]["dict"]
    parts = args[0] if args else kwargs["tensors"]
    dim = args[1] if len(args) == 2 else kwargs.get("dim", 0)
    return _refs(parts), dim


# ----------------------------------------------------------------------------- load-time bounds


def _module_bounds(path: str, t: str, a: dict, nd: int) -> None:
    """Field bounds of one module that hold whatever the input: padding within the kernel."""
    where = f"module {path!r} ({t})"
    if t == "StaticInputSynapse":
        return _module_bounds(path, *a["layer"], nd)
    if t in _CONV and not isinstance(a["padding"], str):
        k, d, p = (_per(a[f], nd, f"{where}: {f}") for f in ("kernel_size", "dilation", "padding"))
        for i in range(nd):
            if p[i] > d[i] * (k[i] - 1):
                raise RecordError(f"{where}: padding {_short(a['padding'])} is more than dilation × (kernel_size − 1) "
                                  f"= {d[i] * (k[i] - 1)} along {_axis_names(nd)[i]}: a convolution never pads beyond "
                                  "its kernel's extent — the record is not one sjunet wrote")
    if t in _CONV_T:
        k, d, p = (_per(a[f], nd, f"{where}: {f}") for f in ("kernel_size", "dilation", "padding"))
        s, op = _per(a["stride"], nd, f"{where}: stride"), _per(a["output_padding"], nd, f"{where}: output_padding")
        for i in range(nd):
            if p[i] > d[i] * (k[i] - 1):
                raise RecordError(f"{where}: padding {_short(a['padding'])} is more than dilation × (kernel_size − 1) "
                                  f"= {d[i] * (k[i] - 1)} along {_axis_names(nd)[i]} — the record is not one sjunet wrote")
            if op[i] >= max(s[i], d[i]):
                raise RecordError(f"{where}: output_padding {_short(a['output_padding'])} must be smaller than the "
                                  f"stride or the dilation along {_axis_names(nd)[i]}")
    if t in _POOLS:
        k = _per(a["kernel_size"], nd, f"{where}: kernel_size")
        d = _per(a.get("dilation", 1), nd, f"{where}: dilation")
        p = _per(a["padding"], nd, f"{where}: padding")
        for i in range(nd):
            if p[i] > (d[i] * (k[i] - 1) + 1) // 2:
                raise RecordError(f"{where}: padding {_short(a['padding'])} is more than half of its window "
                                  f"({d[i] * (k[i] - 1) + 1}) along {_axis_names(nd)[i]}")
    if t == "AdaptiveAvgPool" and len(a["output_size"]) != nd:
        raise RecordError(f"{where}: output_size {_short(a['output_size'])} has {len(a['output_size'])} axes, the "
                          f"network {nd}")
    if t == "Pad" and len(a["pad"]) > 2 * nd:
        raise RecordError(f"{where}: pad {_short(a['pad'])} pads {len(a['pad']) // 2} axes, the network's tensors "
                          f"have {nd} spatial axes (a pad of the channels is not a U-Net's)")


def reductions(nodes: list[dict], modules: dict[str, tuple[str, dict]], nd: int) -> tuple[tuple[float, ...], bool]:
    """``(reduction per axis, fixed)``: the largest product of strides (over resampling factors)
    along each axis on any path of the graph, and whether some node has a fixed size (a global
    pool, a resample to a fixed size) — then the smallest map is not a stride product."""
    factor: dict[str, tuple[float, ...]] = {}
    fixed = False
    best = [1.0] * nd
    for e in nodes:
        name, op = e["name"], e["op"]
        ins = [factor[n] for n in _refs(e["args"]) + _refs(e["kwargs"]) if n in factor]
        f = tuple(max(v[i] for v in ins) for i in range(nd)) if ins else (1.0,) * nd
        if op == "call_module":
            t, a = modules[e["target"]]
            if t == "StaticInputSynapse":
                t, a = a["layer"]
            if t in _CONV or t in _POOLS:
                s = _per(a["stride"] if a.get("stride") is not None else a["kernel_size"], nd, name)
                f = tuple(v * s[i] for i, v in enumerate(f))
            elif t in _CONV_T:
                s = _per(a["stride"], nd, name)
                f = tuple(v / s[i] for i, v in enumerate(f))
            elif t == "Resample" and a.get("scale_factor") is not None:
                s = _per(a["scale_factor"], nd, name)
                f = tuple(v / s[i] for i, v in enumerate(f))
            elif t == "Resample" and len(e["args"]["tuple"]) == 2:
                f = factor.get(_refs(e["args"]["tuple"][1])[0], f)
            elif t == "Resample" or t == "AdaptiveAvgPool":
                fixed = True
        factor[name] = f
        best = [max(b, v) for b, v in zip(best, f)]
    return tuple(best), fixed


def _pow2(v: float) -> int:
    n = max(1, math.ceil(v - 1e-9))
    return 1 << (n - 1).bit_length()


def _int(v: Any, lo: int, hi: int, what: str) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise RecordError(f"{what} must be an integer in {lo}..{hi}, got {_short(v)}")
    return v


def _ints(v: Any, n: int, lo: int, hi: int, what: str) -> list[int]:
    if not isinstance(v, list) or len(v) != n:
        raise RecordError(f"{what} must be a list of {n} integers (one per spatial axis of this network), got "
                          f"{_short(v)}")
    return [_int(u, lo, hi, what) for u in v]


def graph_input_channels(nodes: list[dict], modules: dict[str, tuple[str, dict]]) -> int | None:
    """The channels the graph's first layer takes (None when no convolution reads the input directly)."""
    x = nodes[0]["name"]
    for e in nodes:
        if e["op"] == "call_module" and x in _refs(e["args"]):
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
    why = (f"the graph reduces its input at most {_show(bound)}-fold ({', '.join(_axis_names(nd))}: the product of "
           "its strides)")
    if conv.get("size_multiple") is not None:
        _int(conv["size_multiple"], 1, max(bound),
             f"conversion.size_multiple ({why})")
    if conv.get("size_multiples") is not None:
        for i, m in enumerate(_ints(conv["size_multiples"], nd, 1, MAX_SIZE, "conversion.size_multiples")):
            if m > bound[i]:
                raise RecordError(f"conversion.size_multiples {_short(conv['size_multiples'])}: {m} along "
                                  f"{_axis_names(nd)[i]} is more than {why}")
    rule = conv.get("size_rule")
    if rule is not None:
        _check_size_rule(rule, nd, bound, why)
    return nd


def _check_size_rule(rule: Any, nd: int, bound: list[int], why: str) -> None:
    if not isinstance(rule, dict):
        raise RecordError(f"conversion.size_rule must be an object, got {_short(rule)}")
    if rule.get("shape") is not None:
        _ints(rule["shape"], nd, 1, MAX_INPUT_AXIS, "conversion.size_rule.shape")
    if rule.get("example_shape") is not None:
        _ints(rule["example_shape"], nd + 2, 1, MAX_INPUT_AXIS, "conversion.size_rule.example_shape")
    if rule.get("multiple") is not None:
        _int(rule["multiple"], 1, max(bound), f"conversion.size_rule.multiple ({why})")
    if rule.get("multiples") is not None:
        for i, m in enumerate(_ints(rule["multiples"], nd, 1, MAX_SIZE, "conversion.size_rule.multiples")):
            if m > bound[i]:
                raise RecordError(f"conversion.size_rule.multiples: {m} along {_axis_names(nd)[i]} is more than {why}")
    names = rule.get("nodes")
    if names is not None and not (isinstance(names, list) and len(names) <= MAX_NODES
                                  and all(isinstance(n, str) and len(n) <= MAX_NAME for n in names)):
        raise RecordError("conversion.size_rule.nodes must be a list of node names")


# ----------------------------------------------------------------------------- shapes per input


@dataclass
class Plan:
    """Shapes and memory of one run of a graph on one input (:func:`plan`); elements per image."""

    input_shape: tuple[int, ...]
    shapes: dict[str, tuple[int, ...]]
    largest: tuple[str, int]  #: (node, elements) of the largest tensor
    live: int  #: the most elements live at once during one step (liveness over the graph's order)
    state: int  #: elements of the memory modules' state, kept across steps
    workspace: int  #: the largest convolution's unfolded input (im2col), when it needs one
    nodes: dict[str, str] = field(default_factory=dict, repr=False)  #: node -> module type

    def bytes(self, batch: int = 1, mode: str = "step", chunk: int = 1) -> int:
        """Bytes a run holds at its peak: ``batch`` inputs, ``chunk`` steps at once in multi-step mode."""
        steps = max(1, int(chunk)) if mode == "multi" else 1
        out = self.shapes.get("__output__", (0,))
        acc = 2 * math.prod(out)  # the decoded output's accumulator and one step's output
        return ELEMENT_BYTES * max(1, int(batch)) * (self.state + steps * (self.live + self.workspace) + acc)


def _out_len(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool = False) -> int:
    """torch's output length of a convolution / pool window (``ceil_mode`` as pools compute it)."""
    span = n + 2 * p - d * (k - 1) - 1
    if ceil_mode:
        out = -(-span // s) + 1
        if (out - 1) * s >= n + p:
            out -= 1
        return out
    return span // s + 1


_STATE = {"MultiThresholdNode": 4, "SignedMultiThresholdNode": 5, "RealSpikeNode": 5, "LIFNode": 4}


def _state_factor(t: str, a: dict) -> int:
    """State tensors a neuron keeps per output element (membrane, recorded flow and counts, charge
    or per-level membranes), conservatively."""
    if t == "MultiLevelNode":
        return 5 + len(a.get("thresholds") or [1])
    return _STATE.get(t, 5)


def _module_shape(t: str, a: dict, ins: list[tuple[int, ...]], where: str, nd: int) -> tuple[tuple[int, ...], int]:
    """(output shape, workspace elements) of a module on inputs of shapes ``ins`` ((C, *spatial))."""
    shape = ins[0]
    c, sizes = shape[0], shape[1:]
    axes = _axis_names(nd)
    if len(sizes) != nd:
        raise RecordError(f"{where}: its input has {len(sizes)} spatial axes, the network {nd}")
    if t == "StaticInputSynapse":
        return _module_shape(*a["layer"], ins, where, nd)
    if t in _CONV or t in _CONV_T:
        if a["in_channels"] != c:
            raise RecordError(f"{where}: in_channels is {a['in_channels']} but its input has {c} channels")
        k, s, d = (_per(a[f], nd, f"{where}: {f}") for f in ("kernel_size", "stride", "dilation"))
        out = []
        if t in _CONV_T:
            p, op = _per(a["padding"], nd, where), _per(a["output_padding"], nd, where)
            for i, n in enumerate(sizes):
                m = (n - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1
                if m < 1:
                    raise RecordError(f"{where}: padding {_short(a['padding'])} leaves no output of a {n}-long input "
                                      f"along {axes[i]}")
                out.append(m)
            work = 0
        else:
            if a["padding"] == "same":
                if any(v != 1 for v in s):
                    raise RecordError(f"{where}: padding 'same' needs stride 1, got {_short(a['stride'])}")
                p = tuple((d[i] * (k[i] - 1)) // 2 for i in range(nd))
                same = True
            else:
                p = (0,) * nd if a["padding"] == "valid" else _per(a["padding"], nd, where)
                same = False
            for i, n in enumerate(sizes):
                span = d[i] * (k[i] - 1) + 1
                if n + 2 * p[i] < span:
                    raise RecordError(f"{where}: its kernel spans {span} (dilation {d[i]} × (kernel_size {k[i]} − 1) "
                                      f"+ 1) but its padded input is only {n + 2 * p[i]} long along {axes[i]}")
                if a["padding_mode"] == "reflect" and p[i] >= n or a["padding_mode"] == "circular" and p[i] > n:
                    raise RecordError(f"{where}: padding {p[i]} ({a['padding_mode']}) must be smaller than its "
                                      f"{n}-long input along {axes[i]}")
                out.append(n if same else _out_len(n, k[i], s[i], p[i], d[i]))
            work = c * math.prod(k) * math.prod(out) if math.prod(k) > 1 else 0
        return (int(a["out_channels"]), *out), work
    if t in _POOLS:
        k = _per(a["kernel_size"], nd, where)
        s = _per(a["stride"] if a["stride"] is not None else a["kernel_size"], nd, where)
        p, d = _per(a["padding"], nd, where), _per(a.get("dilation", 1), nd, where)
        out = []
        for i, n in enumerate(sizes):
            span = d[i] * (k[i] - 1) + 1
            if n + 2 * p[i] < span:
                raise RecordError(f"{where}: kernel_size {_short(a['kernel_size'])} spans {span} but its input is "
                                  f"only {n + 2 * p[i]} long (padded) along {axes[i]}")
            out.append(_out_len(n, k[i], s[i], p[i], d[i], a["ceil_mode"]))
        return (c, *out), 0
    if t == "Resample":
        if len(ins) == 2:
            ref = ins[1][1:]
            if len(ref) != nd:
                raise RecordError(f"{where}: its reference has {len(ref)} spatial axes, the network {nd}")
            return (c, *ref), 0
        if a["size"] is not None:
            return (c, *(int(v) for v in _per(a["size"], nd, f"{where}: size"))), 0
        sf = _per(a["scale_factor"], nd, f"{where}: scale_factor")
        out = [int(math.floor(n * float(sf[i]))) for i, n in enumerate(sizes)]
        if min(out) < 1:
            raise RecordError(f"{where}: scale_factor {_short(a['scale_factor'])} leaves no output of a "
                              f"{_show(sizes)} input")
        return (c, *out), 0
    if t == "Pad":
        pad, out = a["pad"], list(sizes)
        for j in range(len(pad) // 2):
            i = nd - 1 - j
            before, after = pad[2 * j], pad[2 * j + 1]
            n = sizes[i]
            if n + before + after < 1 or before <= -n or after <= -n:
                raise RecordError(f"{where}: pad {_short(pad)} crops more than the {n}-long input along {axes[i]}")
            if a["mode"] == "reflect" and max(before, after) >= n or a["mode"] == "circular" and max(before, after) > n:
                raise RecordError(f"{where}: pad {_short(pad)} ({a['mode']}) must be smaller than the {n}-long input "
                                  f"along {axes[i]}")
            out[i] = n + before + after
        return (c, *out), 0
    if t == "AdaptiveAvgPool":
        out = []
        for i, (n, v) in enumerate(zip(sizes, a["output_size"])):
            if v is not None and v > n:
                raise RecordError(f"{where}: output_size {_short(a['output_size'])} is larger than its {_show(sizes)} "
                                  f"input along {axes[i]} (a global pool shrinks)")
            out.append(n if v is None else int(v))
        return (c, *out), 0
    if t == "Center":
        if c % a["groups"]:
            raise RecordError(f"{where}: groups {a['groups']} does not divide its input's {c} channels")
        return shape, 0
    if t == "ChannelAffine":
        if a["channels"] != c:
            raise RecordError(f"{where}: channels is {a['channels']} but its input has {c} channels")
        return shape, 0
    ch = a.get("channels")
    if isinstance(ch, int) and not isinstance(ch, bool) and ch not in (c, 0, 1):
        raise RecordError(f"{where}: channels is {ch} but its input has {c} channels")
    return shape, 0  # neurons keep the shape


_FIELD = {"Resample": "its size (scale_factor / size / reference)", "Pad": "pad", "AdaptiveAvgPool": "output_size",
          "Conv2d": "padding", "Conv3d": "padding", "ConvTranspose2d": "stride / kernel_size",
          "ConvTranspose3d": "stride / kernel_size", "StaticInputSynapse": "padding"}


def plan(nodes: list[dict], modules: dict[str, tuple[str, dict]], input_shape: Sequence[int]) -> Plan:
    """Shapes and memory of the graph ``(nodes, modules)`` (checked, :func:`sjunet.snn.file.check_graph`) on one
    input of shape ``(C, *spatial)``; a node torch would refuse, or one larger than the input beyond
    :func:`slack`, raises one-line :class:`RecordError` naming it and its field."""
    shape = tuple(int(v) for v in input_shape)
    nd = len(shape) - 1
    limit = [n + slack(n) for n in shape[1:]]
    shapes: dict[str, tuple[int, ...]] = {}
    kinds: dict[str, str] = {}
    last_use: dict[str, int] = {}
    for i, e in enumerate(nodes):
        for n in _refs(e["args"]) + _refs(e["kwargs"]):
            last_use[n] = i
    live = state = work = 0
    peak = 0
    largest = (nodes[0]["name"], math.prod(shape))
    for i, e in enumerate(nodes):
        name, op = e["name"], e["op"]
        if op == "placeholder":
            shapes[name] = shape
            live = math.prod(shape)
            last_use[name] = len(nodes)  # the input is held for every step
            continue
        ins = [shapes[n] for n in _refs(e["args"])]
        if op == "output":
            shapes["__output__"] = ins[0]
            continue
        w = 0
        if op == "call_module":
            t, a = modules[e["target"]]
            where = f"graph node {name!r} (module {e['target']!r}, {t})"
            out, w = _module_shape(t, a, ins, where, nd)
            kinds[name] = t
        elif e["target"] == "torch.cat":
            parts, dim = _cat_args(e)
            ps = [shapes[n] for n in parts]
            d = dim if dim >= 0 else dim + nd + 2
            if d != 1:
                raise RecordError(f"graph node {name!r}: torch.cat dim {dim} is not the channel dimension")
            if any(p[1:] != ps[0][1:] for p in ps):
                raise RecordError(f"graph node {name!r}: torch.cat joins parts of different sizes "
                                  f"({', '.join(_show(p[1:]) for p in ps)})")
            out = (sum(p[0] for p in ps), *ps[0][1:])
            t, where = "cat", f"graph node {name!r}"
        else:
            if ins[0] != ins[1]:
                raise RecordError(f"graph node {name!r}: operator.add of tensors of different shapes "
                                  f"({_show(ins[0])} and {_show(ins[1])})")
            out, t, where = ins[0], "add", f"graph node {name!r}"
        for j, (m, cap) in enumerate(zip(out[1:], limit)):
            if m > cap:
                raise RecordError(
                    f"{where}: {_FIELD.get(t, 'its arguments')} would make a {_show(out[1:])} tensor from a "
                    f"{_show(shape[1:])} input, larger than the input along {_axis_names(nd)[j]}: a converted U-Net's "
                    "feature maps never are — the record is not one sjunet wrote")
        n_out = math.prod(out)
        shapes[name] = out
        if n_out > largest[1]:
            largest = (name, n_out)
        if op == "call_module":
            if t == "SpikingMaxPool2d":
                state += math.prod(ins[0]) + 2 * n_out
            elif t == "StaticInputSynapse":
                state += n_out
            elif t not in _FIELD and t not in _POOLS and t not in ("Center", "ChannelAffine"):
                state += _state_factor(t, modules[e["target"]][1]) * n_out
        live += n_out
        peak = max(peak, live)
        work = max(work, w)
        for n in set(_refs(e["args"]) + _refs(e["kwargs"])):
            if last_use.get(n) == i:
                live -= math.prod(shapes[n])
    return Plan(shape, shapes, largest, peak, state, work, kinds)


# ----------------------------------------------------------------------------- the budget


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str | int | float, what: str = BUDGET_ENV) -> int:
    """``"16G"``, ``"512M"``, ``"1.5T"`` or a number of bytes → bytes (one-line ValueError)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
        if not m:
            raise ValueError(f"{what} takes a size such as 16G, 512M or a number of bytes, got {text!r}")
        value, unit = float(m.group(1)), m.group(2).upper()
    out = int(value * _UNITS[unit])
    if not math.isfinite(value) or out < 1:
        raise ValueError(f"{what} must be a positive size, got {text!r}")
    return out


def machine_memory() -> int:
    """Physical RAM of this machine, in bytes (0 when unknown)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 0


def memory_budget(device: Any = "cpu") -> tuple[int, str]:
    """``(bytes, where it comes from)``: ``SJUNET_MEMORY_BUDGET`` when set, else
    :data:`BUDGET_FRACTION` of the machine's RAM (of a GPU's memory for a CUDA device)."""
    env = os.environ.get(BUDGET_ENV)
    if env:
        return parse_bytes(env), f"{BUDGET_ENV}={env}"
    if str(device).startswith("cuda"):
        try:
            import torch

            total = torch.cuda.get_device_properties(torch.device(device)).total_memory
            return int(total * BUDGET_FRACTION), f"half of the GPU's {total / 2**30:.0f} GiB"
        except Exception:  # noqa: BLE001 - no CUDA: the machine's RAM
            pass
    ram = machine_memory() or (16 << 30)
    return int(ram * BUDGET_FRACTION), f"half of this machine's {ram / 2**30:.0f} GiB of RAM"


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def check_budget(p: Plan, batch: int = 1, mode: str = "step", chunk: int = 1, device: Any = "cpu",
                 budget: int | None = None) -> int:
    """Bytes the run of plan ``p`` needs; one-line :class:`BudgetError` when over the budget."""
    need = p.bytes(batch, mode, chunk)
    limit, source = (budget, "the given budget") if budget is not None else memory_budget(device)
    if need > limit:
        node, n = p.largest
        raise BudgetError(
            f"this SNN would need about {_gib(need)} for a {batch}x{_show(p.input_shape)} input (its largest tensor, "
            f"node {node!r}: {_gib(ELEMENT_BYTES * n * batch)}), more than the memory budget of {_gib(limit)} "
            f"({source}); evaluate smaller inputs (--protocol tiled, --max-pixels) or raise the budget "
            f"({BUDGET_ENV}=64G or --memory-budget)")
    return need


__all__ = ["BudgetError", "Plan", "RecordError", "check_budget", "check_record", "memory_budget", "parse_bytes", "plan",
           "reductions", "slack", "spatial_dims"]
