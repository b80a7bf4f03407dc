"""The size rule of a trace (spec §11, §14): for which input sizes the constants specialised on the
example input's shape hold (:func:`size_rule_of_trace`), the refusal of any other size
(:func:`check_input_size`), and a graph's size multiple(s) from its feature-map shapes
(:func:`size_multiple`, :func:`size_multiples`: per axis for volumes, so an anisotropic U-Net that
does not pool its depth axis asks only H, W to be multiples)."""
from __future__ import annotations

from typing import Iterable

from torch import fx, nn

from sjunet.graph.record import tensor_shapes
from sjunet.graph.tracing import Trace, trace
from sjunet.layers import dims


def trace_key(tr: Trace) -> tuple:
    """What must not change from one input size to another for a trace's constants to hold: the
    traced graph — every node's op, target and constant arguments (padding amounts, sizes, anything
    computed from shapes and made concrete, numpy included) — and the shape decisions."""
    nodes = [(n.op, str(n.target), repr(fx.node.map_arg((n.args, n.kwargs), lambda a: a.name)))
             for n in tr.gm.graph.nodes]
    return nodes, [(d["node"], d["value"]) for d in tr.decisions]


def size_rule_of_trace(model: nn.Module, tr: Trace, key: tuple | None = None, only_example: bool = False) -> dict:
    """The input sizes the specialised constants (and shape decisions) of ``tr`` hold for, derived
    from the sizes they were checked on: with m the graph's size multiple on an axis (per axis for
    volumes: ``multiples``, D, H, W), tracing again at the example's size + m and + 2m on every axis
    (2-D: (H + m, W + 2m), (H + 2m, W + m)) must give the same graph and decisions; the rule is then
    every size congruent to the example's modulo m — multiples of m when the example is one, else
    sizes m·k + r (``remainders``: a U-Net with unpadded convolutions that crops its skips is
    checked on 92, 100, 108 and holds for 8k + 4, not for multiples of 8). Otherwise (or when the
    rule would not hold for a size it was checked on) only the example's size. ``key``: the
    :func:`trace_key` of ``tr`` as traced (before its graph was rewritten; default: of ``tr.gm``).
    ``only_example``: the rewrites specialised stages on the example's shape (a reshape to its token
    count, a constant folded from its shape: :func:`sjunet.graph.canonical_rewrite.rewrite`), which a
    new trace does not show — the rule is then the example's size only."""
    shape = tuple(tr.example_shape)
    nd = len(shape) - 2
    hw = list(shape[-nd:])
    exact = {"shape": hw, "example_shape": list(shape),
             "nodes": sorted({s["node"] for s in tr.specialised})}
    if only_example:
        return exact
    try:
        shapes = feature_maps(tr.gm, tensor_shapes(tr.gm, shape))
        ms = [size_multiple(shapes, tuple(hw))] * 2 if nd == 2 else list(size_multiples(shapes, tuple(hw)))
    except Exception:
        return exact
    key = key if key is not None else trace_key(tr)
    checked = [hw]
    for k in range(2):  # 2-D: (H + m, W + 2m), (H + 2m, W + m)
        other = (*shape[:-nd], *(v + (1 + (j + k) % 2) * m for j, (v, m) in enumerate(zip(hw, ms))))
        try:
            if trace_key(trace(model, other)) != key:
                return exact
        except Exception:
            return exact
        checked.append(list(other[-nd:]))
    rule = {**exact, "shape": None, "multiple": max(ms), "checked": checked}
    if nd != 2:
        rule["multiples"] = ms
    remainders = [v % m for v, m in zip(hw, ms)]
    if any(remainders):
        rule["remainders"] = remainders
    try:
        for sizes in checked:  # the rule holds for every size it was derived from, the calibration size first
            check_input_size(rule, sizes)
    except ValueError:
        return exact
    return rule


def rule_text(rule: dict, nd: int) -> str:
    """The sizes a rule of :func:`size_rule_of_trace` holds for, in words (``H, W multiples of 16``,
    ``H, W of the form 8k + 4``, ``D, H, W multiples of 1x2x2 (per axis)``, ``only 92x92``)."""
    if not rule.get("multiple"):
        return f"only {dims.show(rule.get('shape') or [])}"
    ms = [int(v) for v in rule.get("multiples") or [rule["multiple"]] * nd]
    rs = [int(v) for v in rule.get("remainders") or [0] * nd]
    axes = ", ".join(dims.axes(nd))
    if not any(rs):
        return (f"{axes} multiples of {ms[0]}" if len(set(ms)) == 1 and not rule.get("multiples")
                else f"{axes} multiples of {dims.show(ms)} (per axis)")
    forms = [f"{m}k + {r}" if r else f"{m}k" for m, r in zip(ms, rs)]
    return f"{axes} of the form {forms[0]}" if len(set(forms)) == 1 else f"{axes} of the forms {', '.join(forms)}"


def check_input_size(rule: dict | None, hw: Iterable[int]) -> None:
    """Refuse (one line) an input size (the spatial sizes: H, W or D, H, W) the specialised
    constants of a conversion do not hold for."""
    if not rule:
        return
    sizes = [int(v) for v in hw]
    nd = len(sizes)
    shown = dims.show(sizes)
    nodes = ", ".join(rule.get("nodes") or []) or "some"
    example = rule.get("example_shape") or []
    ex = "x".join(str(v) for v in example[-nd:])
    if example and len(example) - 2 != nd:
        raise ValueError(f"input {shown} has {nd} spatial dimension(s); this conversion is of {len(example) - 2}-D "
                         f"inputs ({dims.show(example[2:])} when calibrated)")
    if rule.get("multiple"):
        ms = [int(v) for v in rule.get("multiples") or [rule["multiple"]] * nd]
        rs = [int(v) for v in rule.get("remainders") or [0] * nd]
        if len(ms) != nd or len(rs) != nd or any(m < 1 for m in ms):
            raise ValueError(f"this conversion's size rule does not describe {nd}-D inputs ({rule_text(rule, len(ms))}); "
                             "convert again")
        if any((v - r) % m for v, m, r in zip(sizes, ms, rs)):
            what = rule_text(rule, nd)
            if not any(rs):
                target = (f"a multiple of {ms[0]}" if nd == 2 and not rule.get("multiples")
                          else f"multiples of {dims.show(ms)}")
            else:
                target = "such a size"
            raise ValueError(
                f"input {shown} does not fit this conversion: the constants computed from shapes (nodes {nodes}) were "
                f"specialised on a {ex} input and hold for {what}; pad the input to {target}")
    elif rule.get("shape") and sizes != [int(v) for v in rule["shape"]]:
        raise ValueError(
            f"input {shown} does not fit this conversion: the constants computed from shapes (nodes {nodes}) hold only "
            f"for the {ex} input they were specialised on; convert again with calibration data of this size")


_GLOBAL_POOLS = ("adaptive_avg_pool", "adaptive_max_pool", "AdaptiveAvgPool", "AdaptiveMaxPool")


def _is_global_pool(gm: fx.GraphModule, n: fx.Node, shape: tuple[int, ...] | None) -> bool:
    """An adaptive pool, or a mean / max over the spatial axes, whose output is one pixel."""
    if shape is None or len(shape) < 2 or any(v != 1 for v in shape[1:]):
        return False
    if n.op == "call_module":
        name = type(gm.get_submodule(n.target)).__name__
    elif n.op in ("call_function", "call_method"):
        name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
    else:
        return False
    return any(g in name for g in _GLOBAL_POOLS) or name in ("mean", "amax", "max", "sum")


def feature_maps(gm: fx.GraphModule, shapes: dict[str, tuple[int, ...] | None]) -> dict[str, tuple[int, ...]]:
    """``shapes`` without the maps of global branches: a global pooling's one pixel (squeeze-excitation,
    a pooled context) and what is computed from it alone until it meets a full map again. Their size is
    1 for every input size, so they say nothing of the strides the input must be a multiple of."""
    pooled: set[str] = set()
    for n in gm.graph.nodes:
        ins = [a.name for a in n.all_input_nodes if shapes.get(a.name) is not None]
        if _is_global_pool(gm, n, shapes.get(n.name)) or (ins and all(a in pooled for a in ins)):
            pooled.add(n.name)
    return {k: v for k, v in shapes.items() if v is not None and k not in pooled}


def _pow2(factor: int) -> int:
    return 1 << (factor - 1).bit_length() if factor & (factor - 1) else factor


def size_multiples(shapes: dict[str, tuple[int, ...]], input_sizes: tuple[int, ...]) -> tuple[int, ...]:
    """The factor each spatial axis must be a multiple of: the input size over the smallest feature
    map along that axis (a power of two for U-Nets: 2^(number of poolings along it) — 1 along an axis
    an anisotropic U-Net does not pool)."""
    nd = len(input_sizes)
    out = []
    for i, n in enumerate(input_sizes):
        smallest = min((s[1 + i] for s in shapes.values() if len(s) == nd + 1 and s[1 + i] > 0), default=n)
        out.append(_pow2(max(1, int(n) // max(1, smallest))))
    return tuple(out)


def size_multiple(shapes: dict[str, tuple[int, ...]], input_hw: tuple[int, ...]) -> int:
    """The factor H and W must be multiples of: the input size over the smallest feature map
    (a power of two for U-Nets: 2^depth). Volumes: the largest of :func:`size_multiples`."""
    if len(input_hw) != 2:
        return max(size_multiples(shapes, tuple(input_hw)))
    smallest = min((min(s[-2:]) for s in shapes.values() if len(s) == 3 and min(s[-2:]) > 0), default=min(input_hw))
    factor = max(1, min(input_hw) // max(1, smallest))
    return 1 << (factor - 1).bit_length() if factor & (factor - 1) else factor
