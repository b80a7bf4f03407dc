"""What the converter understands of an FX graph (spec §5, §11): tracing, node kinds, refusals,
one recorder.

:func:`canonical_graph` turns any FX-traceable U-Net (sjunet's own, MONAI, segmentation_models_
pytorch, hand-written) into the *canonical graph* every later stage works on — calibration, the
normalization plan, the SpikingJelly recipe, energy and plots:

1. :func:`trace` — ``torch.fx`` symbolic tracing, with two additions third-party U-Nets need:
   ``torch.jit.isinstance(proxy, torch.Tensor)`` is true (MONAI's ``UpCat`` asks it of its skip
   input), and control flow on *shapes* (MONAI pads a skip when sizes differ) is decided on an
   example input of the given shape and recorded (:attr:`Trace.decisions`). Sizes computed from
   shapes — ``F.pad`` amounts (``diffY = x2.size(2) - x1.size(2)``), interpolation sizes, pooling
   sizes — become constants evaluated on that input (:attr:`Trace.specialised`, each with the input
   shape it holds for); :attr:`Trace.size_rule` says for which input sizes they hold (H, W multiples
   of the graph's size multiple when tracing at two more such sizes gives the same constants, else
   only the example's), and simulation refuses other sizes (:func:`check_input_size`). Control flow
   on tensor *values* is a blocker, noted with the node and the source line; tracing goes on.
2. :func:`sjunet.canonical.canonicalize` — every ReLU spelling becomes a ``nn.ReLU`` /
   ``nn.Hardtanh(0, a)`` module, identities and dropout disappear, BatchNorm is folded into the
   convolution before it (a lone BatchNorm becomes a per-channel affine stage), ``F.interpolate``
   and ``F.pad`` become :mod:`sjunet.stages` modules, shape arithmetic feeding an interpolation
   becomes a reference tensor, and output-side ops (sigmoid/softmax) are stripped and recorded.
3. a plain retrace, so node names are exactly those SpikingJelly's converter sees when it traces
   the canonical graph (statistics are keyed by node name);
4. :func:`check_supported` — anything left that has no faithful spiking counterpart is refused.
   All blockers of a model (from tracing, rewriting and this check) come in one
   :class:`UnsupportedGraphError`: a summary line, then one line per root cause — node, source
   line, cause, remedy (shape arithmetic, constants and reshapes that only feed a refused op are
   not reported again). A model torch.fx cannot trace at all is refused in one line.

Node kinds (:func:`kind_of`): ``input``, ``output``, ``synaptic`` (Conv2d/3d / ConvTranspose2d/3d),
``relu``, ``pool`` (AvgPool2d/3d, adaptive / global average pooling), ``maxpool``, ``resample``, ``pad``, ``affine``, ``cat`` (channel
concatenation), ``add``, ``center`` / ``normalize`` (instance / group / layer norm: the exact mean
subtraction, and the division by the deviation — per sample in the ANN, fixed from calibration in the
SNN, :mod:`sjunet.calibration.approximation`), ``shape``, ``neuron`` / ``analog`` (in a converted SNN),
``other``.

Spatial dimensions (spec §14): 2-D images ``[N, C, H, W]`` and 3-D volumes ``[N, C, D, H, W]``
convert alike — the layers of each dimensionality come from one table (:mod:`sjunet.dims`), and the
size rule holds per axis (``multiples``: D, H, W for volumes, so an anisotropic U-Net that does
not pool its depth axis asks only H, W to be multiples).
"""
from __future__ import annotations

import contextlib
import copy
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import traceback

import torch
import torch.nn.functional as F
from torch import fx, nn

from sjunet import dims
from sjunet.errors import UnsupportedGraphError  # re-exported: sjunet.graph.UnsupportedGraphError
from sjunet.graph_base import SYNAPTIC_TYPES, Blocker, _target_name, _where, module_of  # re-exported
from sjunet.stages import AdaptiveAvgPool, Center, ChannelAffine, Normalize, Pad, Resample, SpikingMaxPool2d

AVG_POOL_TYPES = tuple(dims.layer("avg_pool", nd) for nd in dims.SUPPORTED)
MAX_POOL_TYPES = tuple(dims.layer("max_pool", nd) for nd in dims.SUPPORTED)
CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
PASS_KINDS = ("pool", "maxpool", "resample", "pad")  # per-channel, unit passes through


# ----------------------------------------------------------------------------------- tracing

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


class _ShapeProxy(fx.Proxy):
    """A proxy whose ``len()`` is evaluated on the example input (``len(x.shape)`` in MONAI)."""

    def __len__(self) -> int:
        return len(self.tracer._evaluate(self.node))

    def __getattr__(self, k: str) -> "fx.proxy.Attribute":
        if k == "ndim" and self.tracer.example is not None:  # a tensor's rank does not depend on H, W (einops asks)
            value = self.tracer._evaluate(self.node)
            if isinstance(value, torch.Tensor):
                return value.ndim
        return _ShapeAttribute(self, k)


class _ShapeAttribute(fx.proxy.Attribute):
    def __len__(self) -> int:
        return len(self.tracer._evaluate(self.node))


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

    def create_node(self, *args, **kwargs) -> fx.Node:
        """torch's node, with the stack trace taken by :mod:`traceback` (the frames from the first
        ``forward`` on): torch's own recorder symbolises through ``torch._C._profiler``, whose first
        use imports ``torch._dynamo``/``_inductor`` — 5–7 s of a cold ``calibrate`` on a 2-core
        machine. :func:`_where` picks the model's own frame from it."""
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
        from sjunet.canonical import _size_reference

        nodes = fx.node.map_aggregate(size, lambda a: a.node if isinstance(a, fx.Proxy) else a)
        nds = (len(self.shape) - 2,) if self.shape else dims.SUPPORTED
        return any(_size_reference(nodes, nd) is not None for nd in nds)

    def _constant(self, v):
        if self.example is None:
            return None
        value = fx.node.map_aggregate(v, lambda a: self._evaluate(a.node) if isinstance(a, fx.Proxy) else a)
        return _plain_value(value)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        if kind == "call_function" and target is torch._assert and not self._evaluating and args \
                and isinstance(args[0], fx.Proxy) and self.example is not None:
            p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
            value = self._evaluate(args[0].node)  # a shape check (timm): decided on the example, then dropped
            if isinstance(value, torch.Tensor):
                value = bool(value.all()) if value.numel() else True
            self.decisions.append({"node": p.node.name, "value": bool(value), "where": _where(p.node).strip(" ()")})
            if not value:
                self.blockers.append(Blocker(p.node.name, "call_function _assert", _where(p.node), "failed assertion",
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
            self.specialised.append({"node": p.node.name, "op": _target_name(target), "arg": key, "value": value,
                                     "input_shape": list(self.shape) if self.shape else None,
                                     "where": _where(p.node).strip(" ()")})
        return p

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ShapeProxy(node, self)

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
                f"cannot convert: node {node.name!r}{_where(node)} needs a concrete value while tracing; give "
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
                node.name, f"{node.op} {_target_name(node.target)}", _where(node), "control flow on values",
                "data-dependent control flow (an `if` on tensor values) has no fixed spiking graph; rewrite the "
                "model without it (torch.where)"))
            return True
        self.decisions.append({"node": node.name, "value": bool(value), "where": _where(node).strip(" ()")})
        return bool(value)


def _jit_isinstance(original: Callable) -> Callable:
    def isinstance_(obj, target_type):
        if isinstance(obj, fx.Proxy) and target_type is torch.Tensor:
            return True
        return original(obj, target_type)
    return isinstance_


@contextlib.contextmanager
def _patched_jit_isinstance():
    original = torch.jit.isinstance
    torch.jit.isinstance = _jit_isinstance(original)
    try:
        yield
    finally:
        torch.jit.isinstance = original


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
        with _patched_jit_isinstance():
            graph = tracer.trace(m)
    except UnsupportedGraphError:
        raise
    except Exception as e:  # any failure of torch.fx: one line, never a raw traceback
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise UnsupportedGraphError(
            f"cannot convert {type(model).__name__}: torch.fx cannot trace it ({type(e).__name__}: {first}); "
            "sjunet converts models whose forward is a fixed graph of tensor operations") from None
    return Trace(fx.GraphModule(tracer.root, graph, type(model).__name__), tracer.decisions, [], shape,
                 tracer.specialised, None, tracer.blockers)


def _is_sjunet_leaf(m: nn.Module) -> bool:
    from sjunet.neurons import StaticInputSynapse, is_neuron

    return isinstance(m, (Resample, Pad, ChannelAffine, SpikingMaxPool2d, AdaptiveAvgPool, StaticInputSynapse, Center,
                          Normalize)) \
        or is_neuron(m)


_default_is_leaf = fx.Tracer.is_leaf_module


def _is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
    return _is_sjunet_leaf(m) or _default_is_leaf(self, m, module_qualified_name)


@contextlib.contextmanager
def stages_are_leaves():
    """While active, ``fx.Tracer`` treats sjunet's stage and neuron modules as leaves, as it does
    torch.nn's. SpikingJelly's converter traces the canonical graph with a plain ``fx.Tracer``
    and offers no hook for the leaf rule, so the conversion runs inside this context."""
    previous = fx.Tracer.is_leaf_module
    fx.Tracer.is_leaf_module = _is_leaf_module
    try:
        yield
    finally:
        fx.Tracer.is_leaf_module = previous


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


def canonical_graph(model: nn.Module, example_shape: Iterable[int] | None = None) -> Trace:
    """The canonical graph of ``model`` (module docstring, steps 1–4)."""
    from sjunet.canonical import canonicalize

    tr = trace(model, example_shape)
    found = list(tr.blockers)
    tr.post = canonicalize(tr.gm, found)
    tr.gm = retrace(tr.gm)
    check_supported(tr.gm, type(model).__name__, found)
    if tr.specialised:
        tr.size_rule = _size_rule(model, tr)
    return tr


def _size_rule(model: nn.Module, tr: Trace) -> dict:
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


def signature(gm: fx.GraphModule) -> list[tuple[str, str, str]]:
    """(name, op, target) of every node: two graphs with the same signature key statistics alike."""
    return [(n.name, n.op, str(n.target)) for n in gm.graph.nodes]


# ------------------------------------------------------------------------------------- kinds

def relu_cap(m: nn.Module) -> float | None:
    """The cap ``a`` of a ``Hardtanh(0, a)`` / ``ReLU6`` (None for a plain ReLU)."""
    return float(m.max_val) if isinstance(m, nn.Hardtanh) else None


def relu_slope(m: nn.Module) -> float | torch.Tensor | None:
    """The negative slope α of a ``LeakyReLU`` (a number) or ``PReLU`` (its weight: a number with one
    parameter, else a per-channel [C] tensor, detached); None for a ReLU / capped ReLU."""
    if isinstance(m, nn.LeakyReLU):
        return float(m.negative_slope)
    if isinstance(m, nn.PReLU):
        w = m.weight.detach().reshape(-1).clone()
        return float(w[0]) if w.numel() == 1 else w
    return None


def _is_relu_module(m: nn.Module) -> bool:
    return (type(m) in (nn.ReLU, nn.LeakyReLU, nn.PReLU)
            or (isinstance(m, nn.Hardtanh) and float(m.min_val) == 0.0 and float(m.max_val) > 0))


def _is_shape_node(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target is getattr and len(node.args) == 2 and node.args[1] == "shape":
        return True
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is operator.getitem:
        src = node.args[0]
        return isinstance(src, fx.Node) and _is_shape_node(src)
    return False


def kind_of(gm: fx.GraphModule, node: fx.Node) -> str:
    """The node's kind (module docstring)."""
    from sjunet.neurons import StaticInputSynapse, is_neuron

    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "call_module":
        m = module_of(gm, node)
        if is_neuron(m):
            return "neuron"
        if isinstance(m, StaticInputSynapse):
            return "analog"
        if isinstance(m, SYNAPTIC_TYPES):
            return "synaptic"
        if _is_relu_module(m):
            return "relu"
        if isinstance(m, (*AVG_POOL_TYPES, AdaptiveAvgPool)):
            return "pool"
        if isinstance(m, (*MAX_POOL_TYPES, SpikingMaxPool2d)):
            return "maxpool"
        if isinstance(m, Resample):
            return "resample"
        if isinstance(m, Pad):
            return "pad"
        if isinstance(m, ChannelAffine):
            return "affine"
        if isinstance(m, Center):
            return "center"
        if isinstance(m, Normalize):  # the ANN's per-sample division (calibration only; folded at conversion)
            return "normalize"
        op = getattr(m, "op_name", None)  # SpikingJelly's step-mode tensor op
        if op == "cat":
            return "cat"
        if op in ("shape", "size", "dim"):
            return "shape"
        return "other"
    if node.op == "call_function":
        if node.target in CAT_FUNCTIONS:
            return "cat"
        if node.target is operator.add:
            return "add"
    if _is_shape_node(node):
        return "shape"
    return "other"


def cat_parts(node: fx.Node) -> list[fx.Node]:
    if node.op == "call_module":  # SpikingJelly's step-mode cat: the parts are the arguments
        return list(node.args)
    parts = node.args[0] if node.args else node.kwargs["tensors"]
    return list(parts)


def cat_dim(node: fx.Node) -> int:
    if len(node.args) > 1:
        return int(node.args[1])
    return int(node.kwargs.get("dim", 0))


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """The tensor-valued inputs of ``node`` in argument order (parts of a cat, summands of an add)."""
    if node.op == "call_function" and node.target in CAT_FUNCTIONS:
        return cat_parts(node)
    return [a for a in node.args if isinstance(a, fx.Node)]


def is_reference_use(gm: fx.GraphModule, user: fx.Node, node: fx.Node) -> bool:
    """Whether ``user`` reads only the shape of ``node`` (an interpolation to ``node``'s size)."""
    return (user.op == "call_module" and isinstance(gm.get_submodule(user.target), Resample)
            and user.args[0] is not node)


def data_users(gm: fx.GraphModule, node: fx.Node) -> list[fx.Node]:
    """The users of ``node`` that read its values (not only its shape)."""
    return [u for u in node.users if not is_reference_use(gm, u, node)]


# ----------------------------------------------------------------------------------- refusals

_REMEDY = {
    "ELU": "negative outputs have no spike-rate counterpart; retrain with nn.ReLU",
    "SELU": "negative outputs have no spike-rate counterpart; retrain with nn.ReLU",
    "CELU": "negative outputs have no spike-rate counterpart; retrain with nn.ReLU",
    "GELU": "it is not piecewise linear, so rates cannot represent it; retrain with nn.ReLU",
    "SiLU": "it is not piecewise linear, so rates cannot represent it; retrain with nn.ReLU",
    "Mish": "it is not piecewise linear, so rates cannot represent it; retrain with nn.ReLU",
    "Tanh": "it is not piecewise linear, so rates cannot represent it; retrain with nn.ReLU",
    "Sigmoid": "only at the output can a sigmoid be applied to the decoded result; inside the network retrain with nn.ReLU",
    "Softmax": "only at the output can a softmax be applied to the decoded result",
    "InstanceNorm2d": "sjunet converts instance/group/layer norm written as nn.InstanceNorm2d/3d, nn.GroupNorm, "
                      "nn.LayerNorm over (C, H, W) or (C, D, H, W), or F.instance_norm / F.group_norm / F.layer_norm "
                      "with the model's own weights (a centring plus a deviation fixed from calibration); write it so",
    "GroupNorm": "it is converted as nn.GroupNorm / F.group_norm with the model's own weights; write it so",
    "LayerNorm": "it is converted over (C, H, W) with a per-channel affine (nn.LayerNorm, F.layer_norm); "
                 "write it so, or use GroupNorm(1, C)",
    "LocalResponseNorm": "it divides by input-dependent values; remove it and retrain",
    "MultiheadAttention": "attention multiplies activations with each other, which rates cannot do; use a convolutional U-Net",
    "Linear": "fully connected layers are not supported in this U-Net converter; use a 1x1 Conv2d / Conv3d",
}
_REMEDY["InstanceNorm3d"] = _REMEDY["InstanceNorm2d"]


_SIGMOID_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid}
_PRODUCT_FUNCTIONS = {operator.mul, operator.imul, torch.mul, torch.matmul, operator.matmul, torch.bmm, torch.einsum,
                      torch.baddbmm, torch.mm}
_PRODUCT_METHODS = {"mul", "mul_", "matmul", "bmm", "mm"}
_PLUMBING_FUNCTIONS = {torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze,
                       operator.getitem, getattr, torch.chunk, torch.split, torch.unbind, torch.t}
_PLUMBING_METHODS = {"view", "reshape", "flatten", "transpose", "permute", "squeeze", "unsqueeze", "expand",
                     "expand_as", "view_as", "reshape_as", "chunk", "split", "unbind", "contiguous", "to", "type",
                     "type_as", "float", "size", "dim", "repeat", "unflatten", "t"}
_ATTENTION = ("attention multiplies activations — no construction can convert it (a product of two spike rates "
              "is not a rate of their sum); use a U-Net without attention gates or self-attention and retrain")


def _is_sigmoid(gm: fx.GraphModule, n: fx.Node) -> bool:
    m = module_of(gm, n)
    return (isinstance(m, (nn.Sigmoid, nn.Hardsigmoid)) or (n.op == "call_function" and n.target in _SIGMOID_FUNCTIONS)
            or (n.op == "call_method" and n.target in ("sigmoid", "sigmoid_")))


def _is_product(n: fx.Node) -> bool:
    return ((n.op == "call_function" and n.target in _PRODUCT_FUNCTIONS)
            or (n.op == "call_method" and n.target in _PRODUCT_METHODS))


def _is_plumbing(n: fx.Node) -> bool:
    """Reshaping, indexing and type plumbing: refused, but reported only where nothing else explains it."""
    return ((n.op == "call_function" and n.target in _PLUMBING_FUNCTIONS)
            or (n.op == "call_method" and n.target in _PLUMBING_METHODS) or n.op == "get_attr")


def _is_constant(gm: fx.GraphModule, a) -> bool:
    return not isinstance(a, fx.Node) or a.op == "get_attr" or kind_of(gm, a) == "shape"


def _blocker(node: fx.Node, label: str, detail: str) -> Blocker:
    return Blocker(node.name, f"{node.op} {_target_name(node.target)}", _where(node), label, detail)


def _refusal(gm: fx.GraphModule, node: fx.Node) -> Blocker:
    """Why ``node`` (of kind ``other``) cannot be converted, and what to do."""
    m = module_of(gm, node)
    if m is not None:
        name = type(m).__name__
        if name in _REMEDY:
            return _blocker(node, name, f"{name} — {_REMEDY[name]}.")
        if isinstance(m, nn.Hardtanh):
            return _blocker(node, f"Hardtanh({m.min_val}, {m.max_val})", f"Hardtanh({m.min_val}, {m.max_val}) — "
                            "only Hardtanh(0, a) is a (capped) ReLU.")
        nd = dims.module_dims(m)
        if nd is not None and nd not in dims.SUPPORTED:
            return _blocker(node, name, f"{name} — {nd}-D signals are not supported (2-D images and 3-D volumes: "
                            "Conv2d/3d, ConvTranspose2d/3d are).")
        return _blocker(node, name, f"{name} is not one of Conv2d/3d, ConvTranspose2d/3d, BatchNorm2d/3d, ReLU, "
                        "AvgPool2d/3d, MaxPool2d/3d, adaptive average pooling, Upsample, padding, Dropout/Identity, "
                        "cat or add — replace it or retrain.")
    t = _target_name(node.target)
    if node.op == "get_attr":
        return _blocker(node, "constant tensor", f"the constant tensor {node.target!r} is used as an activation; "
                        "only convolution weights and BatchNorm statistics are understood as constants")
    if _is_product(node):
        ins = [a for a in node.args if isinstance(a, fx.Node)]
        acts = [a for a in ins if not _is_constant(gm, a)]
        if len(acts) == 2 and t in ("mul", "mul_", "imul"):
            a, b = acts
            for x, s in ((a, b), (b, a)):
                if _is_sigmoid(gm, s) and s.args and s.args[0] is x:
                    return _blocker(node, "SiLU/Swish", "x·sigmoid(x) is SiLU/Swish — it is not piecewise linear, "
                                    "so rates cannot represent it; retrain with nn.ReLU.")
            return _blocker(node, "attention (product of activations)",
                            f"multiplying two activations: {_ATTENTION}.")
        if len(acts) >= 2:
            return _blocker(node, "attention (product of activations)", f"{t} of two activations: {_ATTENTION}.")
    for key, label in (("leaky_relu", "LeakyReLU"), ("prelu", "PReLU"), ("gelu", "GELU"), ("silu", "SiLU"),
                       ("elu", "ELU"), ("mish", "Mish"), ("tanh", "Tanh"), ("sigmoid", "Sigmoid"),
                       ("softmax", "Softmax"), ("layer_norm", "LayerNorm"), ("group_norm", "GroupNorm"),
                       ("instance_norm", "InstanceNorm2d")):
        if key in t.lower():
            if label in _REMEDY:
                return _blocker(node, label, f"{t} ({label}) is not a ReLU: {_REMEDY[label]}.")
            return _blocker(node, label, f"{t} is not a ReLU (only ReLU/ReLU6/Hardtanh(0,a) map onto spike rates; "
                            "sigmoid/softmax only at the output); retrain with ReLU.")
    if node.target is operator.getitem:
        return _blocker(node, "cropping", "indexing or slicing activations (cropping) is not supported; pad the "
                        "other tensor instead, or crop the input image")
    if node.target in (operator.mul, torch.mul, operator.truediv, torch.div, operator.sub, torch.sub) or t in (
            "mul", "div", "sub", "truediv"):
        return _blocker(node, t, "multiplying, dividing or subtracting activations is not a spiking operation; fold "
                        "constant factors into the weights.")
    if _is_plumbing(node):
        return _blocker(node, f"reshaping ({t})", f"{t} reshapes or re-indexes activations, which a U-Net converter "
                        "does not follow (flatten/view/permute belong to classifiers and attention)")
    return _blocker(node, t, "only convolutions, BatchNorm, ReLU, pooling, interpolation, padding, channel "
                    "concatenation and residual addition are supported.")


def _check_node(gm: fx.GraphModule, node: fx.Node, shapey: set) -> tuple[Blocker | None, bool]:
    """(the blocker of ``node`` or None, whether it is plumbing: reported only as a root cause)."""
    k = kind_of(gm, node)
    if k == "other" and node in shapey:
        k = "shape"
    if k == "other":
        if node.op == "get_attr" or (_is_sigmoid(gm, node) and len(node.users) == 1
                                     and _is_product(next(iter(node.users)))):
            return _refusal(gm, node), True  # a gate's sigmoid: explained by its product
        return _refusal(gm, node), _is_plumbing(node)
    if k == "shape":
        return _blocker(node, "shape arithmetic", "it computes with tensor shapes in a way sjunet cannot follow "
                        "(only padding, interpolation and pooling sizes are specialised on the example shape, "
                        "and interpolation to another tensor's size, `size=t.shape[-2:]`)"), True
    if k == "cat" and node.op == "call_function" and cat_dim(node) not in (1, -3):
        return _blocker(node, f"cat along dim {cat_dim(node)}", f"concatenation along dim {cat_dim(node)}; only the "
                        "channel dimension (dim=1) joins spike paths"), False
    if k == "add":
        ins = tensor_inputs(node)
        if len(ins) != 2 or len(node.args) != 2 or node.kwargs or any(_is_constant(gm, a) for a in ins):
            return _blocker(node, "adding a constant", "only the sum of two activation tensors is a join; adding a "
                            "constant shifts every neuron's input — fold it into the preceding bias"), False
    if k == "output":
        outs = node.args[0]
        if not isinstance(outs, fx.Node):
            return _blocker(node, "several outputs", f"the network returns {type(outs).__name__}; sjunet converts "
                            "models with one output tensor (drop deep-supervision heads before converting)"), False
    if k in ("synaptic", "pool", "maxpool") and node.op == "call_module":
        m = module_of(gm, node)
        name = type(m).__name__
        if isinstance(m, AVG_POOL_TYPES) and m.divisor_override is not None:
            return _blocker(node, f"{name}(divisor_override)", f"{name}(divisor_override=...) is not "
                            "supported"), False
        if isinstance(m, MAX_POOL_TYPES) and m.return_indices:
            return _blocker(node, f"{name}(return_indices)", f"{name}(return_indices=True) is not supported"), False
    if k in ("relu", "synaptic", "pool", "maxpool", "resample", "pad", "affine", "cat"):
        for a in tensor_inputs(node):
            if isinstance(a, fx.Node) and (a.op == "get_attr" or kind_of(gm, a) == "shape"):
                return _blocker(node, "input from shapes", f"its input {a.name!r} is computed from shapes (or is a "
                                "constant tensor), not activations"), False
    return None, False


def find_blockers(gm: fx.GraphModule, known: Iterable[Blocker] = ()) -> list[Blocker]:
    """Every root cause that keeps ``gm`` from being converted (nodes named in ``known`` were
    reported by an earlier step). Refused nodes joined to each other form groups; a group with a
    real cause (an activation function, a product, a norm…) reports those, and its plumbing —
    shapes, constants, reshapes feeding or fed by them — is not reported again."""
    known_names = {b.node for b in known}
    refused: dict[fx.Node, Blocker | None] = {}
    plumbing: set[fx.Node] = set()
    shapey: set[fx.Node] = set()  # shapes and arithmetic on them only
    for node in gm.graph.nodes:
        if kind_of(gm, node) == "shape" or (node.op in ("call_function", "call_method") and node.all_input_nodes
                                            and all(a in shapey for a in node.all_input_nodes)):
            shapey.add(node)
        if node.name in known_names:
            refused[node] = None
            continue
        b, plumb = _check_node(gm, node, shapey)
        if b is not None:
            refused[node] = b
            if plumb:
                plumbing.add(node)
    parent = {n: n for n in refused}

    def root(n):
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for n in refused:
        for a in n.all_input_nodes:
            if a in refused:
                parent[root(a)] = root(n)
    groups: dict[fx.Node, list[fx.Node]] = {}
    for n in refused:
        groups.setdefault(root(n), []).append(n)
    picked: set[fx.Node] = set()
    for members in groups.values():
        real = [n for n in members if n not in plumbing]
        if real:
            picked.update(real)
            continue
        tensors = [n for n in members if n.op != "get_attr" and kind_of(gm, n) != "shape"]
        first = [n for n in tensors if not any(a in refused and a in tensors for a in n.all_input_nodes)]
        picked.update(first or [n for n in members if not any(a in refused for a in n.all_input_nodes)] or members[:1])
    return [refused[n] for n in gm.graph.nodes if n in picked and refused.get(n) is not None]


MAX_LISTED = 40  #: blockers listed one per line in a refusal (the summary counts all)


def refusal_message(model: str, blockers: list[Blocker]) -> str:
    """One summary line (``cannot convert X: N blockers: …``) and one line per blocker."""
    counts: dict[str, int] = {}
    for b in blockers:
        counts[b.label] = counts.get(b.label, 0) + 1
    summary = ", ".join(f"{k} ×{v}" if v > 1 else k for k, v in counts.items())
    n = len(blockers)
    lines = [f"cannot convert {model}: {n} blocker{'s' if n != 1 else ''}: {summary}"]
    lines += [f"  - {b.line()}" for b in blockers[:MAX_LISTED]]
    if n > MAX_LISTED:
        lines.append(f"  - … and {n - MAX_LISTED} more like the above")
    return "\n".join(lines)


def check_supported(gm: fx.GraphModule, model: str | None = None, known: Iterable[Blocker] = ()) -> None:
    """Raise one :class:`UnsupportedGraphError` listing every blocker of ``gm`` (and ``known``,
    found by earlier steps: tracing, rewriting) — node, source line, cause and remedy."""
    known = list(known)
    blockers = known + find_blockers(gm, known)
    if blockers:
        order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
        blockers.sort(key=lambda b: order.get(b.node, -1))
        raise UnsupportedGraphError(refusal_message(model or type(gm).__name__, blockers))


# ------------------------------------------------------------------------------ one recorder

class Recorder(fx.Interpreter):
    """Run a graph and hand every node's output to ``callback(name, value)`` (calibration,
    shapes for energy, activations for plots)."""

    def __init__(self, gm: fx.GraphModule, callback: Callable[[str, Any], None]) -> None:
        super().__init__(gm)
        self.callback = callback

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.callback(n.name, out)
        return out


@torch.no_grad()
def record_nodes(gm: fx.GraphModule, x: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The outputs of nodes ``names`` of ``gm`` on input ``x`` (detached)."""
    wanted, out = set(names), {}

    def keep(name, value):
        if name in wanted:
            out[name] = value.detach()

    Recorder(gm, keep).run(x)
    missing = wanted - set(out)
    if missing:
        raise ValueError(f"no node(s) {', '.join(sorted(missing))} in the graph")
    return out


@torch.no_grad()
def tensor_shapes(gm: fx.GraphModule, input_shape: Iterable[int]) -> dict[str, tuple[int, ...]]:
    """``(C, H, W)`` (volumes: ``(C, D, H, W)``) of every tensor node of ``gm`` (single-step mode)
    for one input of shape ``input_shape`` (``(C, *spatial)`` or ``(B, C, *spatial)``; the number
    of spatial axes is the graph's own, :func:`sjunet.dims.spatial_dims`), computed on the ``meta``
    device."""
    shape = tuple(int(s) for s in input_shape)[-(dims.spatial_dims(gm) + 1):]
    m = copy.deepcopy(gm).to("meta")
    shapes: dict[str, tuple[int, ...]] = {}

    def keep(name, value):
        if isinstance(value, torch.Tensor):
            shapes[name] = tuple(value.shape[1:])

    Recorder(m, keep).run(torch.zeros((1, *shape), device="meta"))
    return shapes


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
