"""The order of the Σ-Δ rewrites of :mod:`sjunet.graph.canonical_sigma` (:func:`rewrite`, run by
:func:`sjunet.graph.canonical.canonicalize`), and which of their stages are specialised to the
example's shape (the size rule)."""
from __future__ import annotations

import operator

import torch
from torch import fx, nn

from sjunet.graph.canonical_sigma import _kind, full_shapes, functional_linear, plumbing, products, smooth_activations
from sjunet.graph.constants import fold_constants
from sjunet.graph.kinds import module_of
from sjunet.graph.refusals import source_line
from sjunet.layers.dims import set_spatial_dims
from sjunet.layers.plumbing import Index, Permute, Repeat, Reshape, Roll


_REWRITTEN = (Reshape, Permute, Index, Repeat, Roll)


def _candidates(gm: fx.GraphModule) -> bool:
    """Whether anything here applies (a plain CNN skips the shape runs)."""
    for n in gm.graph.nodes:
        if n.op in ("call_method", "call_function") and n.target not in (operator.add, torch.cat, operator.getitem) \
                or (n.op == "call_module" and (_kind(gm, n) or isinstance(module_of(gm, n), nn.LayerNorm))):
            return True
        if n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[0], fx.Node) \
                and n.args[0].op != "call_function":
            return True
    return False


def rewrite(gm: fx.GraphModule, example_shape, blockers: list | None = None, specialised: list | None = None) -> None:
    """All of the above, in order (constants first: later rewrites see them as ``get_attr``). A
    ``view`` becomes a ``reshape`` first: the same values, and valid after the ``.contiguous()`` that
    :func:`sjunet.graph.canonical.canonicalize` removed. Stages whose sizes come from the example's
    shape (a reshape to its token count, a crop computed from shapes, a mask built for its windows)
    are appended to ``specialised`` — found by running the graph at twice the example's spatial size
    too (all of them when it does not run there) — so the size rule holds the conversion to sizes it
    was checked on."""
    if not _candidates(gm):
        return
    for n in gm.graph.nodes:
        if n.op == "call_method" and n.target == "view" and not any(
                isinstance(a, torch.dtype) for a in n.args[1:]):
            n.target = "reshape"
    notes: list = [] if specialised is not None else None
    set_spatial_dims(gm)  # per-channel stages (a norm's affine) broadcast over 3-D volumes too when run below
    fold_constants(gm, example_shape, notes)
    functional_linear(gm, blockers)
    gm.recompile()
    if example_shape is None:
        smooth_activations(gm, {}, blockers)
        products(gm, {}, blockers)
        return
    try:
        one = full_shapes(gm, example_shape, 1)
    except Exception as e:  # noqa: BLE001 - the model does not run on the example: that is the one cause
        from sjunet.errors import UnsupportedGraphError

        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UnsupportedGraphError(
            f"cannot convert: the model fails on a {'x'.join(map(str, example_shape))} input ({type(e).__name__}: "
            f"{first}); calibrate on inputs of a size it accepts") from None
    smooth_activations(gm, one, blockers)
    products(gm, one, blockers)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    one = full_shapes(gm, example_shape, 1)
    try:
        two = full_shapes(gm, example_shape, 2)
    except Exception:  # noqa: BLE001 - a size specialised on a batch of one: every batch-moving op refused
        two = {}
    plumbing(gm, one, two, blockers)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    if notes is None:
        return
    shape = list(example_shape)
    bigger = shape[:2] + [2 * v for v in shape[2:]]
    try:
        other = full_shapes(gm, bigger, 1)
    except Exception:  # noqa: BLE001 - it runs on the example's size only
        other = {}
    for n in gm.graph.nodes:
        m = module_of(gm, n)
        if not isinstance(m, _REWRITTEN) or isinstance(m, (Permute, Roll)):  # a permutation holds at any size
            continue
        if other and other.get(n.name) is not None and other.get(n.args[0].name) is not None:
            if isinstance(m, Reshape) and other[n.name] == one[n.name]:
                continue  # the same shape at both sizes (a channel vector of squeeze-excitation)
            if isinstance(m, Repeat) and _ratios(one, n) == _ratios(other, n):
                continue
            if isinstance(m, Index) and _same_cut(one, other, n):
                continue
        notes.append({"node": n.name, "op": type(m).__name__, "arg": "spec", "value": m.spec(),
                      "input_shape": shape, "where": source_line(n).strip(" ()")})
    specialised.extend(notes)


def _ratios(shapes: dict, n: fx.Node) -> list:
    a, b = shapes[n.args[0].name], shapes[n.name]
    return [q / p for p, q in zip(a, b)] if len(a) == len(b) else []


def _same_cut(one: dict, other: dict, n: fx.Node) -> bool:
    """An index that cuts the same amount from its input at both sizes (a fixed crop, a channel slice)
    holds at any size; one that keeps a size computed from the example does not."""
    a_in, a_out = one.get(n.args[0].name), one.get(n.name)
    b_in, b_out = other.get(n.args[0].name), other.get(n.name)
    if None in (a_in, a_out, b_in, b_out) or len(a_in) != len(b_in) or len(a_out) != len(b_out):
        return False
    return [i - o for i, o in zip(a_in, a_out)] == [i - o for i, o in zip(b_in, b_out)] if len(a_in) == len(
        a_out) else a_out == b_out
