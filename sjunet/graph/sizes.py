"""The size rule of a trace (spec §11, §14): for which input sizes the constants specialised on the
example input's shape hold (:func:`size_rule_of_trace`), the refusal of any other size
(:func:`check_input_size`), and a graph's size multiple(s) from its feature-map shapes
(:func:`size_multiple`, :func:`size_multiples`: per axis for volumes, so an anisotropic U-Net that
does not pool its depth axis asks only H, W to be multiples)."""
from __future__ import annotations

from typing import Iterable

from torch import nn

from sjunet.graph.record import tensor_shapes
from sjunet.graph.tracing import Trace, trace
from sjunet.layers import dims


def size_rule_of_trace(model: nn.Module, tr: Trace) -> dict:
    """The input sizes the specialised constants (and shape decisions) of ``tr`` hold for: spatial
    sizes that are multiples of the graph's size multiple on every axis (per axis for volumes:
    ``multiples``, D, H, W) when tracing again at two other such sizes gives the same constants and
    decisions, else only the example's size."""
    shape = tuple(tr.example_shape)
    nd = len(shape) - 2
    hw = list(shape[-nd:])
    exact = {"shape": hw, "example_shape": list(shape),
             "nodes": sorted({s["node"] for s in tr.specialised})}
    try:
        shapes = tensor_shapes(tr.gm, shape)
        ms = [size_multiple(shapes, tuple(hw))] * 2 if nd == 2 else list(size_multiples(shapes, tuple(hw)))
    except Exception:
        return exact
    key = (lambda t: ([(s["node"], s["value"]) for s in t.specialised], [(d["node"], d["value"]) for d in t.decisions]))
    checked = [hw]
    for k in range(2):  # 2-D: (H + m, W + 2m), (H + 2m, W + m)
        other = (*shape[:-nd], *(v + (1 + (j + k) % 2) * m for j, (v, m) in enumerate(zip(hw, ms))))
        try:
            if key(trace(model, other)) != key(tr):
                return exact
        except Exception:
            return exact
        checked.append(list(other[-nd:]))
    rule = {**exact, "shape": None, "multiple": max(ms), "checked": checked}
    return rule if nd == 2 else {**rule, "multiples": ms}


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
        if any(v % m for v, m in zip(sizes, ms)):
            if nd == 2 and not rule.get("multiples"):
                m = ms[0]
                raise ValueError(
                    f"input {shown} does not fit this conversion: the constants computed from shapes (nodes {nodes}) "
                    f"were specialised on a {ex} input and hold for H, W multiples of {m}; pad the input to a "
                    f"multiple of {m}")
            raise ValueError(
                f"input {shown} does not fit this conversion: the constants computed from shapes (nodes {nodes}) were "
                f"specialised on a {ex} input and hold for {', '.join(dims.axes(nd))} multiples of {dims.show(ms)} "
                f"(per axis); pad the input to multiples of {dims.show(ms)}")
    elif rule.get("shape") and sizes != [int(v) for v in rule["shape"]]:
        raise ValueError(
            f"input {shown} does not fit this conversion: the constants computed from shapes (nodes {nodes}) hold only "
            f"for the {ex} input they were specialised on; convert again with calibration data of this size")



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
