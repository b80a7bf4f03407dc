"""Tracing (spec §5, §11): ``torch.fx`` symbolic tracing of any U-Net with shape decisions and
specialised sizes — step 1 of :func:`sjunet.graph.canonical.canonical_graph`.

:func:`trace` adds to ``torch.fx`` what third-party U-Nets need (the proxies and patches are
:mod:`.proxies`): ``torch.jit.isinstance(proxy, torch.Tensor)`` is true (MONAI's ``UpCat`` asks it of
its skip input), and control flow on *shapes* (MONAI pads a skip when sizes differ) is decided on an
example input of the given shape and recorded (:attr:`Trace.decisions`). Sizes computed from shapes
— ``F.pad`` amounts (``diffY = x2.size(2) - x1.size(2)``), interpolation sizes, pooling sizes — and
shape values the model reads as numbers (``np.array(x.shape)``, ``int(shape[1])``, einops) become
constants evaluated on that input (:attr:`Trace.specialised`, each with the input shape it holds
for and the model's line); :attr:`Trace.size_rule` says for which input sizes they hold
(:mod:`sjunet.graph.sizes`: where the traced graph is the same), and simulation refuses other sizes.
An interpolation to another tensor's size (``size=t.shape[-2:]``, :func:`size_reference`) is kept as
a reference, not specialised. A module the forward creates while it runs (MONAI's ResNet builds an
``AvgPool`` in ``forward``) is installed as a fresh submodule and recorded (:attr:`Trace.created`);
one with parameters (new random weights on every call) is a blocker. Control flow on tensor
*values* is a blocker, noted with the node and the source line; tracing goes on. A model torch.fx
cannot trace at all is refused in one line naming the model's file and line where it failed.

:func:`retrace` traces a rewritten graph again with a plain ``fx.Tracer`` (sjunet's stages and neurons
as leaves, :func:`stages_are_leaves`), so node names are exactly those SpikingJelly's converter sees.
2-D images ``[N, C, H, W]`` and 3-D volumes ``[N, C, D, H, W]`` trace alike (spec §14).
"""
from __future__ import annotations

import contextlib
import copy
import operator
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from sjunet.errors import UnsupportedGraphError
from sjunet.graph.kinds import target_name
from sjunet.graph.proxies import (ShapeProxy, einops_sees_proxies, patched_factories, patched_jit_isinstance,
                                 proxy_setitem, reachable_modules)
from sjunet.graph.refusals import Blocker, caller_line, frame_line, source_line
from sjunet.layers import dims
from sjunet.layers.stages import AdaptiveAvgPool, Center, ChannelAffine, Normalize, Pad, Resample, SpikingMaxPool2d
from sjunet.layers.static_synapse import StaticInputSynapse
from sjunet.neurons import is_neuron


@dataclass
class Trace:
    """A traced model: the graph module, the shape decisions taken while tracing, and the
    constants specialised on the example input's shape (:attr:`specialised`: padding amounts,
    interpolation sizes, pooling sizes computed from shapes), with the size rule they hold for."""

    gm: fx.GraphModule
    decisions: list[dict] = field(default_factory=list)
    post: list[dict] = field(default_factory=list)
    example_shape: tuple[int, ...] | None = None
    specialised: list[dict] = field(default_factory=list)
    size_rule: dict | None = None
    blockers: list[Blocker] = field(default_factory=list)
    #: modules the forward creates while it runs (installed as fresh submodules: :meth:`_Tracer.path_of_module`)
    created: list[dict] = field(default_factory=list)


#: functions whose size arguments (position, keyword), when computed from shapes, are specialised
#: on the example input's shape
_SHAPE_ARGS: dict[Any, tuple[tuple[int, str], ...]] = {
    F.pad: ((1, "pad"),), torch._C._nn.pad: ((1, "pad"),),
    F.interpolate: ((1, "size"), (2, "scale_factor")), F.upsample: ((1, "size"), (2, "scale_factor")),
    F.upsample_nearest: ((1, "size"), (2, "scale_factor")), F.upsample_bilinear: ((1, "size"), (2, "scale_factor")),
    F.adaptive_avg_pool2d: ((1, "output_size"),), F.adaptive_max_pool2d: ((1, "output_size"),),
    F.avg_pool2d: ((1, "kernel_size"), (2, "stride"), (3, "padding")),
    F.max_pool2d: ((1, "kernel_size"), (2, "stride"), (3, "padding")),
    torch.max_pool2d: ((1, "kernel_size"), (2, "stride"), (3, "padding")),
    F.adaptive_avg_pool3d: ((1, "output_size"),), F.adaptive_max_pool3d: ((1, "output_size"),),
    F.avg_pool3d: ((1, "kernel_size"), (2, "stride"), (3, "padding")),
    F.max_pool3d: ((1, "kernel_size"), (2, "stride"), (3, "padding")),
    torch.max_pool3d: ((1, "kernel_size"), (2, "stride"), (3, "padding")),
}


#: tensor factories that, called with sizes computed from shapes, build a constant on the example's shape
#: (its values recorded as decisions); ``zeros``/``ones``/``full``/``empty``/``arange`` become graph nodes
#: instead (:func:`sjunet.graph.proxies.patched_factories`: a batch size stays a batch size), folded into
#: buffers later where they do not depend on the batch (:func:`sjunet.graph.constants.fold_constants`)
_CONSTANT_FACTORIES = {torch.eye, torch.linspace, torch.tensor}


def _bare(where: str) -> str:
    """A source line `` (path, line N, in f: code)`` without its parentheses."""
    return where[2:-1] if where.startswith(" (") and where.endswith(")") else where.strip()


def _has_proxy(v) -> bool:
    found = []
    fx.node.map_aggregate(v, lambda a: found.append(a) if isinstance(a, fx.Proxy) else None)
    return bool(found)


def _plain_value(v):
    """``v`` as plain ints / floats / lists, or None if it holds a tensor (not a shape)."""
    if isinstance(v, torch.Tensor):
        return None
    if isinstance(v, (tuple, list)):
        out = [_plain_value(u) for u in v]
        return None if any(u is None and w is not None for u, w in zip(out, v)) else out
    return v


class _Tracer(fx.Tracer):
    """``fx.Tracer`` that decides control flow on shapes by evaluating the graph built so far on
    an example input (values of tensors are never used to decide), and specialises sizes computed
    from shapes (padding, interpolation, pooling) to constants on that input."""

    def __init__(self, example: torch.Tensor | None, shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.example = example
        self.shape = shape
        self.decisions: list[dict] = []
        self.specialised: list[dict] = []
        self.blockers: list[Blocker] = []
        self.record_stack_traces = True
        self._evaluating = False
        self.created: list[dict] = []
        self._created_paths: dict[nn.Module, str] = {}
        self._known: set[int] = set()

    def trace(self, root, concrete_args=None):
        self._known = reachable_modules(root)
        return super().trace(root, concrete_args)

    def path_of_module(self, mod: nn.Module) -> str:
        """torch.fx's path of ``mod``, and for a module the forward creates while it runs (MONAI's
        ResNet builds an ``AvgPool`` in ``forward``) a fresh submodule of the root, installed now and
        recorded (:attr:`Trace.created`): the module called is exactly the one the model built. One with
        parameters would get new random weights on every call, which no conversion can keep: a blocker
        naming the line. A module the model holds outside its module tree (a plain list) is torch.fx's
        refusal."""
        if mod in self._created_paths:
            return self._created_paths[mod]
        try:
            return super().path_of_module(mod)
        except NameError:
            if id(mod) in self._known or self._evaluating:
                raise
        name = f"created_in_forward_{len(self.created)}"
        self.root.add_module(name, mod)
        for sub, m in mod.named_modules():
            self._created_paths.setdefault(m, f"{name}.{sub}" if sub else name)
        where = caller_line()
        params = sum(p.numel() for p in mod.parameters())
        self.created.append({"module": name, "type": type(mod).__name__, "parameters": params,
                             "where": _bare(where)})
        if params:
            self.blockers.append(Blocker(
                name, f"call_module {type(mod).__name__}", where, "module created in forward",
                f"{type(mod).__name__} is created inside forward, so its {params} parameters are new random "
                "weights on every call; create it in __init__ (a submodule) and retrain"))
        return name

    def concrete_int(self, node: fx.Node, how: str) -> int | float:
        """``int(p)`` / ``operator.index(p)`` / ``float(p)`` of a proxy (SwinUNETR's ``int(x_shape[1])``): a
        size on the example input, specialised and recorded like :meth:`concrete_array`; a number read
        from the input's values (a tensor, or anything not computed from shapes only) is a blocker."""
        cast = float if how == "float" else int
        value = self._evaluate(node)
        where = caller_line()
        if isinstance(value, torch.Tensor) or not self._shape_only(node):
            self.blockers.append(Blocker(
                node.name, f"{node.op} {target_name(node.target)}", where, "tensor values read while tracing",
                f"{how}() reads the value of an activation tensor, which changes with every input; a spiking graph is "
                "fixed — compute it with torch operations"))
            if isinstance(value, torch.Tensor):
                return cast(value.reshape(-1)[0]) if value.numel() else cast(0)
            return cast(value)
        self.specialised.append({"node": node.name, "op": how, "arg": "value", "value": cast(value),
                                 "input_shape": list(self.shape) if self.shape else None, "where": _bare(where)})
        return cast(value)

    def concrete_shape(self, node: fx.Node) -> tuple:
        """The shape of tensor ``node`` (einops asks it): the batch size as a proxy (``t.size(0)``: the
        graph takes any batch), the other sizes as ints of the example input, specialised and recorded
        like :meth:`concrete_array`."""
        value = self._evaluate(node)
        shape = [int(v) for v in value.shape]
        self.specialised.append({"node": node.name, "op": "shape", "arg": "value", "value": shape,
                                 "input_shape": list(self.shape) if self.shape else None,
                                 "where": _bare(caller_line())})
        return (self.proxy(node).size(0), *shape[1:]) if shape else ()

    def concrete_array(self, node: fx.Node, dtype=None) -> np.ndarray:
        """``np.array(p)`` of a proxy: its value on the example input. A shape (ints) is specialised
        like a padding size and recorded (:attr:`Trace.specialised`, ``op`` ``numpy``: the size rule then
        holds only where the traced graph is the same, :func:`sjunet.graph.sizes.size_rule_of_trace`);
        a tensor's values are a blocker (they change with the input)."""
        value = self._evaluate(node)
        where = caller_line()
        if isinstance(value, torch.Tensor) or not self._shape_only(node):
            self.blockers.append(Blocker(
                node.name, f"{node.op} {target_name(node.target)}", where, "tensor values read while tracing",
                "numpy reads the values of an activation tensor, which change with every input; a spiking "
                "graph is fixed — compute it with torch operations"))
            if isinstance(value, torch.Tensor):
                return np.asarray(value.detach().cpu().numpy(), dtype=dtype)
            return np.asarray(value, dtype=dtype)
        plain = _plain_value(list(value) if isinstance(value, (tuple, list, torch.Size)) else value)
        self.specialised.append({"node": node.name, "op": "numpy", "arg": "array", "value": plain,
                                 "input_shape": list(self.shape) if self.shape else None, "where": _bare(where)})
        return np.asarray(plain, dtype=dtype)

    def create_node(self, *args, **kwargs) -> fx.Node:
        """torch's node, with the stack trace taken by :mod:`traceback` (the frames from the first
        ``forward`` on): torch's own recorder symbolises through ``torch._C._profiler``, whose first
        use imports ``torch._dynamo``/``_inductor`` — 5–7 s of a cold ``calibrate`` on a 2-core
        machine. :func:`source_line` picks the model's own frame from it."""
        record, self.record_stack_traces = self.record_stack_traces, False
        try:
            node = super().create_node(*args, **kwargs)
        finally:
            self.record_stack_traces = record
        if record and not node.stack_trace:
            frames = traceback.extract_stack()[:-1]
            first = next((i for i, f in enumerate(frames) if f.name == "forward"), None)
            if first is not None:
                node.stack_trace = "".join(traceback.StackSummary.from_list(frames[first:]).format()).strip()
        return node

    def _is_reference(self, size) -> bool:
        nodes = fx.node.map_aggregate(size, lambda a: a.node if isinstance(a, fx.Proxy) else a)
        nds = (len(self.shape) - 2,) if self.shape else dims.SUPPORTED
        return any(size_reference(nodes, nd) is not None for nd in nds)

    def _constant(self, v):
        if self.example is None:
            return None
        value = fx.node.map_aggregate(v, lambda a: self._evaluate(a.node) if isinstance(a, fx.Proxy) else a)
        return _plain_value(value)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        if kind == "call_function" and target in _CONSTANT_FACTORIES and not self._evaluating and self.example is not None \
                and _has_proxy((args, kwargs)):  # a tensor built from shapes (a window mask): a constant
            args, kwargs = fx.node.map_aggregate((args, kwargs), lambda a: self._concrete(a.node) if isinstance(
                a, fx.Proxy) else a)
            return target(*args, **kwargs)
        if kind == "call_function" and target is torch._assert and not self._evaluating and args \
                and isinstance(args[0], fx.Proxy) and self.example is not None:
            p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
            value = self._evaluate(args[0].node)  # a shape check (timm): decided on the example, then dropped
            if isinstance(value, torch.Tensor):
                value = bool(value.all()) if value.numel() else True
            self.decisions.append({"node": p.node.name, "value": bool(value), "where": _bare(source_line(p.node))})
            if not value:
                self.blockers.append(Blocker(p.node.name, "call_function _assert", source_line(p.node), "failed assertion",
                                             "the model's own assertion fails on the example input shape; use "
                                             "calibration data of a size the model accepts"))
            return p
        specs = _SHAPE_ARGS.get(target) if kind == "call_function" and not self._evaluating else None
        fixed = []
        if specs:
            args, kwargs = list(args), dict(kwargs)
            for i, key in specs:
                holder, k = (args, i) if len(args) > i else (kwargs, key)
                if k not in kwargs and holder is kwargs:
                    continue
                v = holder[k]
                if not _has_proxy(v) or (key == "size" and self._is_reference(v)):
                    continue
                value = self._constant(v)
                if value is None:
                    continue
                holder[k] = value
                fixed.append((key, value))
            args = tuple(args)
        p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        for key, value in fixed:
            self.specialised.append({"node": p.node.name, "op": target_name(target), "arg": key, "value": value,
                                     "input_shape": list(self.shape) if self.shape else None,
                                     "where": _bare(source_line(p.node))})
        return p

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ShapeProxy(node, self)

    def _shape_only(self, node: fx.Node) -> bool:
        """Whether ``node``'s value depends on the input's shape only (every path from the input
        passes a ``.shape`` / ``.size()`` / ``.dim()`` read)."""
        stack, seen = [node], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "placeholder":
                return False
            if (n.op == "call_function" and n.target is getattr and len(n.args) == 2
                    and n.args[1] in ("shape", "ndim", "device", "dtype")) or (
                    n.op == "call_method" and n.target in ("size", "dim", "numel")):
                continue
            stack.extend(n.all_input_nodes)
        return True

    def _concrete(self, node: fx.Node) -> Any:
        """The value of shape-computed ``node`` on the example, recorded as a decision; a value of
        the input's data is refused (it has no fixed graph)."""
        if not self._shape_only(node):
            raise UnsupportedGraphError(
                f"cannot convert: node {node.name!r}{source_line(node)} turns the input's values into a Python "
                "number; a spiking graph is fixed before it sees data — compute with tensors instead")
        value = self._evaluate(node)
        plain = _plain_value(list(value) if isinstance(value, torch.Size) else value)
        self.decisions.append({"node": node.name, "value": plain, "where": _bare(source_line(node))})
        return value

    def call_module(self, m, forward, args, kwargs):
        if self._evaluating:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def _evaluate(self, node: fx.Node) -> Any:
        if self.example is None:
            raise UnsupportedGraphError(
                f"cannot convert: node {node.name!r}{source_line(node)} needs a concrete value while tracing; give "
                "the input shape (the calibration data's) so shape checks can be decided")
        needed, stack = set(), [node]
        while stack:
            n = stack.pop()
            if n not in needed:
                needed.add(n)
                stack.extend(n.all_input_nodes)
        g, env = fx.Graph(), {}
        for n in self.graph.nodes:
            if n in needed:
                env[n] = g.node_copy(n, lambda a: env[a])
        g.output(env[node])
        self._evaluating = True
        try:
            with torch.no_grad():
                return fx.Interpreter(fx.GraphModule(self.root, g)).run(self.example)
        finally:
            self._evaluating = False

    def to_bool(self, obj: fx.Proxy) -> bool:
        node = obj.node
        value = self._evaluate(node)
        if isinstance(value, torch.Tensor):  # noted, and tracing goes on (one branch) to find the other blockers
            self.blockers.append(Blocker(
                node.name, f"{node.op} {target_name(node.target)}", source_line(node), "control flow on values",
                "data-dependent control flow (an `if` on tensor values) has no fixed spiking graph; rewrite the "
                "model without it (torch.where)"))
            return True
        self.decisions.append({"node": node.name, "value": bool(value), "where": _bare(source_line(node))})
        return bool(value)


def trace(model: nn.Module, example_shape: Iterable[int] | None = None) -> Trace:
    """FX-trace an eval-mode deep copy of ``model`` (see the module docstring, step 1).

    ``example_shape`` (``(B, C, H, W)``) is the input on which shape-dependent control flow is
    decided; the decisions are returned with the graph.
    """
    m = copy.deepcopy(model).eval()
    shape = tuple(int(s) for s in example_shape) if example_shape is not None else None
    example = None
    if shape is not None:
        p = next(iter(m.parameters()), None)
        example = torch.zeros((1, *shape[1:]), dtype=p.dtype if p is not None else torch.float32)
    tracer = _Tracer(example, shape)
    try:
        with patched_jit_isinstance(), patched_factories(), einops_sees_proxies():
            graph = tracer.trace(m)
    except UnsupportedGraphError:
        raise
    except Exception as e:  # any failure of torch.fx: one line naming the model's failing line, never a traceback
        first = (str(e).strip().splitlines() or [""])[0][:160]
        where = _bare(frame_line(traceback.extract_tb(e.__traceback__)))
        raise UnsupportedGraphError(
            f"cannot convert {type(model).__name__}: torch.fx cannot trace it ({type(e).__name__}: {first})"
            + (f" at {where}" if where else "") + "; sjunet converts models whose forward is a fixed graph of tensor "
            "operations") from None
    return Trace(fx.GraphModule(tracer.root, graph, type(model).__name__), tracer.decisions, [], shape,
                 tracer.specialised, None, tracer.blockers, tracer.created)


def _is_sjunet_leaf(m: nn.Module) -> bool:
    from sjunet.layers.plumbing import STAGE_TYPES
    from sjunet.neurons.sigma_delta_functions import Product, Smooth

    return isinstance(m, (Resample, Pad, ChannelAffine, SpikingMaxPool2d, AdaptiveAvgPool, StaticInputSynapse, Center,
                          Normalize, Smooth, Product, *STAGE_TYPES)) \
        or is_neuron(m)


_default_is_leaf = fx.Tracer.is_leaf_module


def _is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
    return _is_sjunet_leaf(m) or _default_is_leaf(self, m, module_qualified_name)


@contextlib.contextmanager
def stages_are_leaves():
    """While active, ``fx.Tracer`` treats sjunet's stage and neuron modules as leaves, as it does
    torch.nn's, and a plain tracer re-traces what :func:`trace` traced (``t[idx] = v`` on a proxy, tensor
    factories sized by shapes). SpikingJelly's converter traces the canonical graph with a plain
    ``fx.Tracer`` and offers no hook for the leaf rule, so the conversion runs inside this context."""
    previous = fx.Tracer.is_leaf_module
    had_setitem = "__setitem__" in vars(fx.Proxy)
    previous_setitem = vars(fx.Proxy).get("__setitem__")
    fx.Tracer.is_leaf_module = _is_leaf_module
    fx.Proxy.__setitem__ = proxy_setitem
    try:
        with patched_factories():
            yield
    finally:
        fx.Tracer.is_leaf_module = previous
        if had_setitem:
            fx.Proxy.__setitem__ = previous_setitem
        else:
            del fx.Proxy.__setitem__


def retrace(gm: fx.GraphModule) -> fx.GraphModule:
    """Trace ``gm`` again with a plain ``fx.Tracer`` (sjunet's modules as leaves) — what
    SpikingJelly's converter does — so node names are the ones it will see."""
    with stages_are_leaves():
        g = fx.Tracer().trace(gm)
    where = {n.name: n.stack_trace for n in gm.graph.nodes if n.stack_trace}
    for n in g.nodes:
        n.type = None
        if n.name in where:  # the model's source lines, for refusals
            n.stack_trace = where[n.name]
    return fx.GraphModule(gm, g, gm.__class__.__name__)


def signature(gm: fx.GraphModule) -> list[tuple[str, str, str]]:
    """(name, op, target) of every node: two graphs with the same signature key statistics alike."""
    return [(n.name, n.op, str(n.target)) for n in gm.graph.nodes]


def shape_source(node, rank: int = 4) -> tuple[fx.Node, tuple[int, ...]] | None:
    """``(t, dims)`` if ``node`` is ``t.shape`` / ``t.size()`` (dims: all) or an indexing of it
    (``rank``: the activations' number of dimensions, 4 for images, 5 for volumes)."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        return node.args[0], tuple(range(rank))
    if node.op == "call_method" and node.target == "size":
        if len(node.args) == 1:
            return node.args[0], tuple(range(rank))
        if len(node.args) == 2 and isinstance(node.args[1], int):
            return node.args[0], ((node.args[1] % rank),)
    if node.op == "call_function" and node.target is operator.getitem:
        src = shape_source(node.args[0], rank)
        if src is None:
            return None
        t, dims = src
        idx = node.args[1]
        if isinstance(idx, (int, slice)):
            picked = dims[idx]
            return t, (picked,) if isinstance(idx, int) else tuple(picked)
    return None


def size_reference(size, nd: int = 2) -> fx.Node | None:
    """The tensor ``t`` if ``size`` is ``t``'s spatial size (``t.shape[-2:]``, ``(t.shape[2], t.shape[3])``…;
    volumes: ``t.shape[2:]``, ``t.shape[-3:]``…; ``nd`` spatial axes)."""
    spatial = tuple(range(2, 2 + nd))
    if isinstance(size, fx.Node):
        src = shape_source(size, nd + 2)
        return src[0] if src is not None and src[1] == spatial else None
    if isinstance(size, (tuple, list)) and len(size) == nd:
        srcs = [shape_source(s, nd + 2) for s in size]
        if all(s is not None and len(s[1]) == 1 for s in srcs) and all(s[0] is srcs[0][0] for s in srcs) \
                and tuple(s[1][0] for s in srcs) == spatial:
            return srcs[0][0]
    return None
