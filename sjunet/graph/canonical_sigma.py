"""Canonical rewrites for Σ-Δ neurons and transformer plumbing (spec §15, issue 26): part of step 2
of :func:`sjunet.graph.canonical.canonical_graph`, run by :func:`sjunet.graph.canonical.canonicalize` after the
output-side ops are stripped. Each rewrite keeps the network's function exactly.

* **constants** (:func:`sjunet.graph.constants.fold_constants`, first): every computation that does
  not depend on the input — a relative-position bias, a shifted-window attention mask, a position
  embedding — is evaluated once and becomes one buffer;
* **activations** (:func:`smooth_activations`): SiLU, GELU (both approximations), ELU, CELU, SELU,
  sigmoid, tanh, hardswish, hardsigmoid, Mish, softplus and softmax in every spelling (module,
  ``F.`` / ``torch.`` function, tensor method, in-place variant), ``x * sigmoid(x)`` (Swish), and a
  layer norm over trailing dimensions (channels-last tokens; over (C, H, W) it stays the fixed-σ̂
  route of :mod:`sjunet.graph.canonical_norms`) become one :class:`~sjunet.neurons.sigma_delta_functions.Smooth` module
  each — later a :class:`~sjunet.neurons.sigma_delta.SigmaDeltaNode`. A softmax's dimension is stored
  negative (counted from the end), so it means the same axis whatever is prepended (time);
* **products and constants in arithmetic** (:func:`products`): ``a * b`` / ``torch.mul`` /
  ``.mul()`` of two activations, ``@`` / ``matmul`` / ``bmm`` / ``mm`` and two-operand ``einsum``
  become a :class:`~sjunet.neurons.sigma_delta_functions.Product`; multiplying or dividing by a constant
  number a :class:`~sjunet.layers.plumbing.Scale`; adding or subtracting a constant tensor or number an
  :class:`~sjunet.layers.plumbing.AddConstant` (a bias current);
* **plumbing** (:func:`plumbing`): ``view`` / ``reshape`` / ``flatten`` / ``unflatten`` /
  ``squeeze`` / ``unsqueeze`` → :class:`~sjunet.layers.plumbing.Reshape`; ``permute`` / ``transpose`` /
  ``.t()`` / ``movedim`` → :class:`~sjunet.layers.plumbing.Permute`; static indexing and slicing,
  ``narrow`` and the parts of ``chunk`` / ``split`` / ``unbind`` → :class:`~sjunet.layers.plumbing.Index`;
  ``repeat`` / ``expand`` / ``expand_as`` → :class:`~sjunet.layers.plumbing.Repeat`; ``torch.roll`` →
  :class:`~sjunet.layers.plumbing.Roll`; float casts vanish. Where the batch goes is *measured*: the graph
  is run on the ``meta`` device with a batch of one and of two, and the one dimension that doubles
  is the batch's (an operation that mixes or drops the batch is refused, naming it);
* ``F.linear`` with the model's constant weights becomes ``nn.Linear`` (a synaptic layer, like a
  convolution over the last dimension).
"""
from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from sjunet.graph.canonical_ops import add_blocker, free_path, node_arg, replace_with_module
from sjunet.graph.constants import constant_value, is_constant
from sjunet.graph.kinds import module_of, target_name
from sjunet.layers.plumbing import AddConstant, Index, Permute, Repeat, Reshape, Roll, Scale, item_data
from sjunet.neurons.sigma_delta_functions import Product, Smooth


# ----------------------------------------------------------------------------------- shapes

def full_shapes(gm: fx.GraphModule, example_shape, batch: int) -> dict[str, tuple[int, ...] | None]:
    """The full shape of every tensor node (the batch included, wherever it sits) for an input of
    ``example_shape`` with ``batch`` samples (zeros, no gradient: cheaper than the ``meta`` device for
    the small example inputs of calibration, and no copy of the model); None where a node is no tensor.
    The python values of non-tensor nodes (sizes) are kept in :data:`VALUES`."""
    shapes: dict[str, tuple[int, ...] | None] = {}

    class _Run(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            shapes[n.name] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
            if isinstance(out, (int, float, torch.Size)) or (isinstance(out, (tuple, list)) and all(
                    isinstance(v, int) for v in out)):
                VALUES[n.name] = out
            return out

    p = next(iter(gm.parameters()), None)
    x = torch.zeros((batch, *tuple(example_shape)[1:]), dtype=p.dtype if p is not None else torch.float32,
                    device=p.device if p is not None else "cpu")
    with torch.no_grad():
        _Run(gm).run(x)
    return shapes


#: python values (ints, sizes) of the non-tensor nodes of the last :func:`full_shapes` run
VALUES: dict[str, Any] = {}


def batch_dim(one: tuple[int, ...] | None, two: tuple[int, ...] | None) -> int | None:
    """The dimension of a tensor that doubles from a batch of one to a batch of two (None: none, or
    several, or the shapes are not comparable)."""
    if one is None or two is None or len(one) != len(two):
        return None
    grown = [i for i, (a, b) in enumerate(zip(one, two)) if a != b]
    return grown[0] if len(grown) == 1 and two[grown[0]] == 2 * one[grown[0]] else None


# ----------------------------------------------------------------------------------- activations

_MODULES = {nn.SiLU: "silu", nn.GELU: "gelu", nn.ELU: "elu", nn.CELU: "celu", nn.SELU: "selu", nn.Sigmoid: "sigmoid",
            nn.Tanh: "tanh", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.Mish: "mish",
            nn.Softplus: "softplus", nn.Softmax: "softmax"}
_FUNCTIONS = {F.silu: "silu", F.gelu: "gelu", F.elu: "elu", F.elu_: "elu", torch.celu: "celu", F.celu: "celu",
              F.selu: "selu", torch.selu: "selu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
              torch.tanh: "tanh", F.tanh: "tanh", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
              F.mish: "mish", F.softplus: "softplus", torch.softmax: "softmax", F.softmax: "softmax",
              torch._C._nn.gelu: "gelu", torch._C._nn.silu: "silu", torch._C._nn.hardswish: "hardswish",
              torch._C._nn.hardsigmoid: "hardsigmoid", torch._C._nn.mish: "mish", torch._C._nn.softplus: "softplus",
              torch._C._nn.elu: "elu", torch.sigmoid_: "sigmoid", torch.tanh_: "tanh", torch.selu_: "selu",
              torch.celu_: "celu"}
_METHODS = {"sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh", "tanh_": "tanh", "softmax": "softmax"}
_SIGMOIDS = ("sigmoid",)


def _params_of(name: str, n: fx.Node, m: nn.Module | None, rank: int | None) -> dict:
    """The table parameters of activation node ``n`` (module ``m`` or a call)."""
    if name == "gelu":
        return {"approximate": getattr(m, "approximate", None) or node_arg(n, 1, "approximate", "none")}
    if name in ("elu", "celu"):
        return {"alpha": float(m.alpha if m is not None else node_arg(n, 1, "alpha", 1.0))}
    if name == "softplus":
        return {"beta": float(m.beta if m is not None else node_arg(n, 1, "beta", 1.0)),
                "threshold": float(m.threshold if m is not None else node_arg(n, 2, "threshold", 20.0))}
    if name == "softmax":
        dim = m.dim if m is not None else node_arg(n, 1, "dim")
        if not isinstance(dim, int) or rank is None:
            raise KeyError("softmax without an explicit dimension")
        return {"dim": dim - rank if dim >= 0 else dim}
    return {}


def _kind(gm: fx.GraphModule, n: fx.Node) -> str | None:
    m = module_of(gm, n)
    if m is not None:
        return _MODULES.get(type(m))
    if n.op == "call_function":
        return _FUNCTIONS.get(n.target)
    if n.op == "call_method":
        return _METHODS.get(n.target)
    return None


def smooth_activations(gm: fx.GraphModule, shapes: dict, blockers: list | None = None) -> None:
    """Every activation spelling (module docstring) → :class:`Smooth`; ``x * sigmoid(x)`` → SiLU;
    a trailing-dimension layer norm → Smooth("layer_norm")."""
    for n in list(gm.graph.nodes):
        name = _kind(gm, n)
        if name is None or not n.args or not isinstance(n.args[0], fx.Node) or is_constant(gm, n.args[0]):
            continue
        m = module_of(gm, n)
        shape = shapes.get(n.args[0].name)
        try:
            params = _params_of(name, n, m, len(shape) if shape else None)
        except KeyError as e:
            add_blocker(blockers, n, name, f"{name} {e.args[0]}: give the dimension")
            continue
        if name == "softmax" and n.kwargs.get("dtype") is not None:
            add_blocker(blockers, n, name, "softmax with a dtype argument; drop it")
            continue
        new = replace_with_module(gm, n, Smooth(name, params), (n.args[0],))
        shapes[new.name] = shapes.get(n.name)
        if name in _SIGMOIDS:
            _swish(gm, new)
    for n in list(gm.graph.nodes):
        if n.op == "call_function" and n.target in (F.layer_norm, torch.layer_norm):
            _layer_norm(gm, n, blockers)
        elif isinstance(module_of(gm, n), nn.LayerNorm):
            _layer_norm(gm, n, blockers)


def _swish(gm: fx.GraphModule, sig: fx.Node) -> None:
    """``x * sigmoid(x)`` (either order, any mul spelling) → Smooth("silu") on x."""
    x = sig.args[0]
    for u in list(sig.users):
        if _is_mul(u) and len(sig.users) == 1 and set(_operands(u)) == {x, sig}:
            replace_with_module(gm, u, Smooth("silu"), (x,))
            gm.graph.erase_node(sig)


def _layer_norm(gm: fx.GraphModule, n: fx.Node, blockers) -> None:
    m = module_of(gm, n)
    if m is not None:
        shape, eps, w, b = tuple(m.normalized_shape), m.eps, m.weight, m.bias
    else:
        shape, eps = node_arg(n, 1, "normalized_shape"), node_arg(n, 4, "eps", 1e-5)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        w, b = node_arg(n, 2, "weight"), node_arg(n, 3, "bias")
        if any(isinstance(v, fx.Node) and v.op != "get_attr" for v in (w, b)) or isinstance(eps, fx.Node) \
                or any(isinstance(v, fx.Node) for v in shape):
            add_blocker(blockers, n, "layer_norm with computed arguments", "a layer norm whose weights, shape or eps are "
                   "computed rather than the model's constants; use nn.LayerNorm")
            return
        w = constant_value(gm, w) if w is not None else None
        b = constant_value(gm, b) if b is not None else None
    features = int(math.prod(shape)) if (w is not None or b is not None) else 0
    smooth = Smooth("layer_norm", {"dims": len(shape), "eps": float(eps), "features": features})
    if features:
        with torch.no_grad():
            smooth.weight.copy_(w.detach().reshape(-1) if w is not None else torch.ones(features))
            smooth.bias.copy_(b.detach().reshape(-1) if b is not None else torch.zeros(features))
    replace_with_module(gm, n, smooth, (n.args[0],))


# ----------------------------------------------------------------------------------- products

_MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}
_MUL_METHODS = {"mul", "mul_"}
_MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.bmm, torch.mm}
_MATMUL_METHODS = {"matmul", "bmm", "mm"}
_DIV = ({operator.truediv, operator.itruediv, torch.div, torch.true_divide}, {"div", "div_", "true_divide"})
_ADD = ({operator.add, operator.iadd, torch.add}, {"add", "add_"})
_SUB = ({operator.sub, operator.isub, torch.sub}, {"sub", "sub_"})


def _is(n: fx.Node, spec) -> bool:
    functions, methods = spec
    return (n.op == "call_function" and n.target in functions) or (n.op == "call_method" and n.target in methods)


def _is_mul(n: fx.Node) -> bool:
    return _is(n, (_MUL_FUNCTIONS, _MUL_METHODS))


def _operands(n: fx.Node) -> list:
    return [a for a in n.args[:2]]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def products(gm: fx.GraphModule, shapes: dict, blockers: list | None = None) -> None:
    """Products of two activations → :class:`Product`; constants in arithmetic → :class:`Scale` /
    :class:`AddConstant` (module docstring). ``shapes``: :func:`full_shapes` (activations are the
    input-dependent tensors; shape arithmetic stays as it is)."""

    def is_constant(gm, a):  # noqa: F811 - here: not an activation tensor
        return not isinstance(a, fx.Node) or a.op == "get_attr" or (a.name in shapes and shapes[a.name] is None)

    for n in list(gm.graph.nodes):
        if n.op not in ("call_function", "call_method") or n.kwargs.get("out") is not None:
            continue
        if _is_mul(n) and len(n.args) == 2 and not n.kwargs:
            a, b = n.args
            if isinstance(a, fx.Node) and isinstance(b, fx.Node) and not is_constant(gm, a) and not is_constant(gm, b):
                replace_with_module(gm, n, Product("mul"), (a, b))
            elif _number(a) or _number(b):
                x, c = (b, a) if _number(a) else (a, b)
                if isinstance(x, fx.Node) and not is_constant(gm, x) and c != 0:
                    replace_with_module(gm, n, Scale(float(c)), (x,))
        elif _is(n, _DIV) and len(n.args) == 2 and not n.kwargs and _number(n.args[1]) and n.args[1] != 0 \
                and isinstance(n.args[0], fx.Node) and not is_constant(gm, n.args[0]):
            replace_with_module(gm, n, Scale(1.0 / float(n.args[1])), (n.args[0],))
        elif _is(n, (_MATMUL_FUNCTIONS, _MATMUL_METHODS)) and len(n.args) == 2 and not n.kwargs:
            a, b = n.args
            if all(isinstance(v, fx.Node) and not is_constant(gm, v) for v in (a, b)):
                replace_with_module(gm, n, Product("matmul"), (a, b))
        elif n.op == "call_function" and n.target is torch.einsum:
            eq, ops = n.args[0], list(n.args[1:])
            if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
                ops = list(ops[0])
            if isinstance(eq, str) and len(ops) == 2 and all(isinstance(v, fx.Node) and not is_constant(gm, v)
                                                             for v in ops):
                try:
                    replace_with_module(gm, n, Product("einsum", eq), tuple(ops))
                except ValueError as e:
                    add_blocker(blockers, n, "einsum", f"einsum {eq!r}: {e}")
        elif (_is(n, _ADD) or _is(n, _SUB)) and len(n.args) == 2 and n.kwargs.get("alpha", 1) == 1:
            a, b = n.args
            sign = -1.0 if _is(n, _SUB) else 1.0
            const = [is_constant(gm, v) for v in (a, b)]
            if const[0] == const[1]:
                if sign < 0 and not const[0] and all(isinstance(v, fx.Node) for v in (a, b)):  # a − b: a join
                    with gm.graph.inserting_before(n):
                        path = free_path(gm, f"{n.name}_negate")
                        gm.add_submodule(path, Scale(-1.0))
                        neg = gm.graph.call_module(path, (b,))
                        neg.stack_trace = n.stack_trace
                        add = gm.graph.call_function(operator.add, (a, neg))
                        add.stack_trace = n.stack_trace
                    n.replace_all_uses_with(add)
                    gm.graph.erase_node(n)
                continue
            x, c = (b, a) if const[0] else (a, b)
            if (sign < 0 and const[0]) or (isinstance(c, fx.Node) and c.op != "get_attr") or not (
                    isinstance(c, fx.Node) or _number(c)):  # c − x, or a number computed from shapes
                continue
            value = constant_value(gm, c)
            value = torch.as_tensor(value, dtype=torch.float32) if not isinstance(value, torch.Tensor) else value
            replace_with_module(gm, n, AddConstant.of(sign * value.float()), (x,))


# ----------------------------------------------------------------------------------- plumbing

_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_RESHAPE_FUNCTIONS = {torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze, torch.unflatten}
_PERMUTE_METHODS = {"permute", "transpose", "t", "movedim", "swapaxes", "swapdims"}
_PERMUTE_FUNCTIONS = {torch.permute, torch.transpose, torch.t, torch.movedim, torch.swapaxes, torch.swapdims}
_CAST_METHODS = {"float", "to", "type_as", "type"}
_SPLITS = ({torch.chunk, torch.split, torch.unbind}, {"chunk", "split", "unbind"})


def _perm(n: fx.Node, rank: int) -> list[int] | None:
    t = target_name(n.target)
    args = list(n.args[1:])
    if t == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        if not dims:
            dims = n.kwargs.get("dims", [])
        return [int(d) % rank for d in dims]
    order = list(range(rank))
    if t in ("transpose", "swapaxes", "swapdims"):
        d0, d1 = (int(node_arg(n, 1, "dim0")) % rank, int(node_arg(n, 2, "dim1")) % rank)
        order[d0], order[d1] = order[d1], order[d0]
        return order
    if t == "t":
        return order[::-1] if rank == 2 else order
    if t == "movedim":
        src, dst = node_arg(n, 1, "source"), node_arg(n, 2, "destination")
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        src, dst = [s % rank for s in src], [d % rank for d in dst]
        rest = [d for d in order if d not in src]
        out = [None] * rank
        for s, d in zip(src, dst):
            out[d] = s
        it = iter(rest)
        return [v if v is not None else next(it) for v in out]
    return None


def _static_items(idx) -> list | None:
    """The index as plain data; bounds computed from shapes take their value on the example."""
    items = idx if isinstance(idx, tuple) else (idx,)

    def concrete(v):
        return VALUES.get(v.name) if isinstance(v, fx.Node) else v

    items = tuple(slice(concrete(i.start), concrete(i.stop), concrete(i.step)) if isinstance(i, slice)
                  else concrete(i) if isinstance(i, fx.Node) else i for i in items)
    if any(isinstance(i, slice) and any(v is not None and type(v) is not int for v in (i.start, i.stop, i.step))
           for i in items):
        return None
    try:
        return [item_data(i) for i in items]
    except ValueError:
        return None


def _split_item(parent: fx.Node, i: int, shape: tuple[int, ...]) -> list | None:
    """The static index of part ``i`` of a ``chunk`` / ``split`` / ``unbind`` of a tensor of ``shape``."""
    t = target_name(parent.target)
    rank = len(shape)
    if t == "unbind":
        dim = int(node_arg(parent, 1, "dim", 0)) % rank
        return [item_data(slice(None))] * dim + [item_data(int(i))]
    dim = int(node_arg(parent, 2, "dim", 0)) % rank
    n = shape[dim]
    if t == "chunk":
        k = int(node_arg(parent, 1, "chunks"))
        size = -(-n // k)
        bounds = [(j, min(j + size, n)) for j in range(0, n, size)]
    else:
        sizes = node_arg(parent, 1, "split_size_or_sections")
        if isinstance(sizes, int):
            bounds = [(j, min(j + sizes, n)) for j in range(0, n, sizes)]
        else:
            starts = [sum(sizes[:j]) for j in range(len(sizes))]
            bounds = [(s, s + z) for s, z in zip(starts, sizes)]
    start, stop = bounds[i]
    return [item_data(slice(None))] * dim + [item_data(slice(start, stop, None))]


def plumbing(gm: fx.GraphModule, one: dict, two: dict, blockers: list | None = None) -> None:
    """Reshaping, re-indexing, copying and casting of activations → plumbing stages (module
    docstring); ``one`` / ``two``: :func:`full_shapes` for a batch of one and of two."""

    def _swap(gm, n, module, args):  # replace_with_module, keeping the shapes under the new node's name
        name = n.name
        new = replace_with_module(gm, n, module, args)
        for d in (one, two):
            if name in d:
                d[new.name] = d[name]
        return new

    for n in list(gm.graph.nodes):
        if n.op not in ("call_function", "call_method") or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        x = n.args[0]
        if is_constant(gm, x) or one.get(n.name) is None:
            continue
        t = n.target
        stage = None
        why = None
        if (n.op == "call_method" and t in _CAST_METHODS) or (n.op == "call_function" and t is torch.Tensor.float):
            if one.get(n.name) == one.get(x.name):
                n.replace_all_uses_with(x)
                gm.graph.erase_node(n)
            continue
        if (n.op == "call_method" and t in _RESHAPE_METHODS) or (n.op == "call_function" and t in _RESHAPE_FUNCTIONS):
            bd = batch_dim(one.get(n.name), two.get(n.name))
            stage = Reshape(one[n.name], bd) if bd is not None else None
            why = "it mixes the batch with other dimensions (or drops it)"
        elif (n.op == "call_method" and t in _PERMUTE_METHODS) or (n.op == "call_function" and t in _PERMUTE_FUNCTIONS):
            order = _perm(n, len(one[x.name]))
            stage = Permute(order) if order is not None else None
        elif n.op == "call_function" and t is operator.getitem:
            if _is(x, _SPLITS) and isinstance(n.args[1], int) and one.get(x.args[0].name):
                items = _split_item(x, n.args[1], one[x.args[0].name])
                src = x.args[0]
            else:
                items, src = _static_items(n.args[1]), x
            if one.get(n.name) is None:
                continue
            if items is None or batch_dim(one.get(n.name), two.get(n.name)) is None:
                add_blocker(blockers, n, "indexing the batch" if items else "dynamic indexing",
                       "indexing that drops or mixes the batch, or that is computed from values, has no per-sample "
                       "form; index with constant ints and slices that keep the batch")
                continue
            _swap(gm, n, Index(items), (src,))
            continue
        elif n.op == "call_method" and t == "narrow" or n.op == "call_function" and t is torch.narrow:
            dim, start, length = int(node_arg(n, 1, "dim")), int(node_arg(n, 2, "start")), int(node_arg(n, 3, "length"))
            dim %= len(one[x.name])
            stage = Index([item_data(slice(None))] * dim + [item_data(slice(start, start + length, None))])
        elif n.op == "call_method" and t in ("repeat", "expand", "expand_as") or n.op == "call_function" and t is \
                torch.Tensor.repeat:
            a, b = one[x.name], one[n.name]
            if len(a) == len(b) and all(q % p == 0 for p, q in zip(a, b)) and (
                    t == "repeat" or all(p in (1, q) for p, q in zip(a, b))):
                reps = [q // p for p, q in zip(a, b)]
                bd = batch_dim(one.get(x.name), two.get(x.name))
                stage = Repeat(reps) if bd is not None and reps[bd] == 1 else None
            why = "it repeats along the batch or changes the rank"
        elif n.op == "call_function" and t is torch.roll:
            shifts, rdims = node_arg(n, 1, "shifts"), node_arg(n, 2, "dims")
            shifts = [shifts] if isinstance(shifts, int) else list(shifts)
            rdims = [rdims] if isinstance(rdims, int) else list(rdims or [])
            if rdims and len(shifts) == len(rdims):
                stage = Roll(shifts, rdims)
        else:
            continue
        if stage is None:
            add_blocker(blockers, n, f"reshaping ({target_name(t)})", f"{target_name(t)} of activations: "
                   f"{why or 'its arguments are not constants sjunet could read'}; keep the batch in one dimension")
            continue
        if isinstance(stage, Permute) and batch_dim(one.get(n.name), two.get(n.name)) is None:
            add_blocker(blockers, n, "batch", "this operation loses track of the batch")
            continue
        _swap(gm, n, stage, (x,))


# ----------------------------------------------------------------------------------- linear layers

def functional_linear(gm: fx.GraphModule, blockers: list | None = None) -> None:
    """``F.linear(x, W, b)`` with the model's constant W, b → ``nn.Linear``."""
    for n in list(gm.graph.nodes):
        if not (n.op == "call_function" and n.target in (F.linear, torch._C._nn.linear)):
            continue
        w, b = node_arg(n, 1, "weight"), node_arg(n, 2, "bias")
        if not (isinstance(w, fx.Node) and w.op == "get_attr") or (b is not None and not (
                isinstance(b, fx.Node) and b.op == "get_attr")):
            add_blocker(blockers, n, "linear with computed weights", "F.linear whose weights are computed rather than the "
                   "model's constants has no fixed synapses; use nn.Linear")
            continue
        W = constant_value(gm, w)
        lin = nn.Linear(W.shape[1], W.shape[0], bias=b is not None)
        with torch.no_grad():
            lin.weight.copy_(W)
            if b is not None:
                lin.bias.copy_(constant_value(gm, b))
        replace_with_module(gm, n, lin, (n.args[0],))
