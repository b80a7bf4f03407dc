"""Constant folding for the canonical rewrites (spec §15, issue 26; run first by
:func:`sjunet.graph.canonical_rewrite.rewrite`): every computation that does not depend on the
input's values — a relative-position bias gathered from its table, a shifted-window attention mask
built from the (specialised) input shape and filled in place, a position embedding — is evaluated
once on the example's shape and becomes one registered buffer; later rewrites see every constant
as a ``get_attr`` (:func:`is_constant`, :func:`constant_value`)."""
from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from sjunet.graph.canonical_ops import free_path
from sjunet.graph.refusals import source_line


def _attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


_SHAPE_ATTRS = ("shape", "device", "dtype", "ndim")
_SHAPE_METHODS = ("size", "dim", "numel", "ndimension")


def _reads_shape_only(n: fx.Node) -> bool:
    return ((n.op == "call_function" and n.target is getattr and len(n.args) == 2 and n.args[1] in _SHAPE_ATTRS)
            or (n.op == "call_method" and n.target in _SHAPE_METHODS))


def value_dependent(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes whose values depend on the input's values (not only on its shape)."""
    dep: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if n.op == "placeholder" or (not _reads_shape_only(n) and any(a in dep for a in n.all_input_nodes)):
            dep.add(n)
    return dep


def _buffer(gm: fx.GraphModule, value: torch.Tensor, name: str = "sigma_constant") -> str:
    path = free_path(gm, name)
    gm.register_buffer(path, value.detach().clone())
    return path


def fold_constants(gm: fx.GraphModule, example_shape=None, notes: list | None = None) -> None:
    """Evaluate every tensor that does not depend on the input's values — on the model's constants
    alone, or also on the input's *shape* (a window mask, a bias cropped to the token count), then
    on the example input's shape, noted in ``notes`` — and put it in one registered buffer; plain
    tensor attributes that torch.fx stowed away become buffers too. Later stages see every constant
    as a ``get_attr`` of a real buffer."""
    dep = value_dependent(gm)
    registered = {k for k, _ in gm.named_buffers()} | {k for k, _ in gm.named_parameters()}
    wanted = {n for n in gm.graph.nodes if n not in dep and n.op != "output" and any(u in dep for u in n.users)
              and not (n.op == "get_attr" and n.target in registered)}
    if not wanted:
        return
    values: dict[fx.Node, Any] = {}

    class _Run(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in wanted:
                values[n] = out
            return out

    p = next(iter(gm.parameters()), None)
    shape = tuple(example_shape) if example_shape is not None else None
    if shape is None:
        return
    x = torch.zeros((1, *shape[1:]), dtype=p.dtype if p is not None else torch.float32)
    try:
        with torch.no_grad():
            _Run(gm).run(x)
    except Exception:  # noqa: BLE001 - the graph does not run here: nothing folded (refused later if it matters)
        return
    for n, value in values.items():
        if not isinstance(value, torch.Tensor):
            continue
        for u in list(n.users):  # its in-place fills (``m[:, :h] = 1``) are in the folded value
            if _is_fill(u) and u.args[0] is n and not u.users:
                gm.graph.erase_node(u)
        with gm.graph.inserting_before(n):
            new = gm.graph.get_attr(_buffer(gm, value.detach()))
        new.stack_trace = n.stack_trace
        n.replace_all_uses_with(new)
        if notes is not None and any(a not in registered and a.op != "get_attr" for a in n.all_input_nodes):
            notes.append({"node": new.name, "op": "constant", "arg": "value", "value": list(value.shape),
                          "input_shape": list(shape), "where": source_line(n).strip(" ()")})
    gm.graph.eliminate_dead_code()
    if _drop_dead_fills(gm, dep):
        gm.graph.eliminate_dead_code()


def _is_fill(n: fx.Node) -> bool:
    return n.op == "call_function" and n.target is operator.setitem and bool(n.args)


def _drop_dead_fills(gm: fx.GraphModule, dep: set[fx.Node]) -> bool:
    """In-place fills (``mask[:, h, w] = cnt``: ``operator.setitem``, which dead-code elimination keeps)
    of a constant tensor that nothing reads any more — its value was folded into a buffer; whether any."""
    dropped = False
    for n in reversed(list(gm.graph.nodes)):
        target = n.args[0] if _is_fill(n) else None
        if isinstance(target, fx.Node) and target not in dep and not n.users and all(map(_is_fill, target.users)):
            gm.graph.erase_node(n)
            dropped = True
    return dropped


def is_constant(gm: fx.GraphModule, a) -> bool:
    """A python number or a ``get_attr`` tensor (after :func:`fold_constants`)."""
    return not isinstance(a, fx.Node) or a.op == "get_attr"


def constant_value(gm: fx.GraphModule, a):
    return _attr(gm, a.target).detach() if isinstance(a, fx.Node) else a


__all__ = ["constant_value", "fold_constants", "is_constant", "value_dependent"]
