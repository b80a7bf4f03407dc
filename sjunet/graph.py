"""What the converter understands of an FX graph (spec §5, §11): tracing, node kinds, refusals,
one recorder.

:func:`canonical_graph` turns any FX-traceable U-Net (sjunet's own, MONAI, segmentation_models_
pytorch, hand-written) into the *canonical graph* every later stage works on — calibration, the
normalization plan, the SpikingJelly recipe, energy and plots:

1. :func:`trace` — ``torch.fx`` symbolic tracing, with two additions third-party U-Nets need:
   ``torch.jit.isinstance(proxy, torch.Tensor)`` is true (MONAI's ``UpCat`` asks it of its skip
   input), and control flow on *shapes* (MONAI pads a skip when sizes differ) is decided on an
   example input of the given shape and recorded (:attr:`Trace.decisions`). Control flow on
   tensor *values* is refused, naming the node and the source line.
2. :func:`sjunet.canonical.canonicalize` — every ReLU spelling becomes a ``nn.ReLU`` /
   ``nn.Hardtanh(0, a)`` module, identities and dropout disappear, BatchNorm is folded into the
   convolution before it (a lone BatchNorm becomes a per-channel affine stage), ``F.interpolate``
   and ``F.pad`` become :mod:`sjunet.stages` modules, shape arithmetic feeding an interpolation
   becomes a reference tensor, and output-side ops (sigmoid/softmax) are stripped and recorded.
3. a plain retrace, so node names are exactly those SpikingJelly's converter sees when it traces
   the canonical graph (statistics are keyed by node name);
4. :func:`check_supported` — anything left that has no faithful spiking counterpart is refused
   with an error that names the node and the remedy.

Node kinds (:func:`kind_of`): ``input``, ``output``, ``synaptic`` (Conv2d / ConvTranspose2d),
``relu``, ``pool`` (AvgPool2d), ``maxpool``, ``resample``, ``pad``, ``affine``, ``cat`` (channel
concatenation), ``add``, ``shape``, ``neuron`` / ``analog`` (in a converted SNN), ``other``.
"""
from __future__ import annotations

import contextlib
import copy
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import fx, nn

from sjunet.stages import ChannelAffine, Pad, Resample, SpikingMaxPool2d

SYNAPTIC_TYPES = (nn.Conv2d, nn.ConvTranspose2d)
CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
PASS_KINDS = ("pool", "maxpool", "resample", "pad")  # per-channel, unit passes through


class UnsupportedGraphError(ValueError):
    """The ANN contains an operation that has no faithful spiking counterpart here."""


# ----------------------------------------------------------------------------------- tracing

@dataclass
class Trace:
    """A traced model: the graph module and the shape decisions taken while tracing."""

    gm: fx.GraphModule
    decisions: list[dict] = field(default_factory=list)
    post: list[dict] = field(default_factory=list)
    example_shape: tuple[int, ...] | None = None


def _where(node: fx.Node) -> str:
    """The model's source line that created ``node`` (the last frame outside torch and sjunet)."""
    lines = (node.stack_trace or "").strip().splitlines()
    frames = [(lines[i].strip(), lines[i + 1].strip()) for i in range(len(lines) - 1)
              if lines[i].strip().startswith("File ")]
    user = [f for f in frames if "/torch/" not in f[0] and "/sjunet/" not in f[0]]
    if not user:
        return ""
    loc, code = user[-1]
    loc = loc.replace("File ", "").replace('"', "")
    return f" ({loc}: {code})"


class _ShapeProxy(fx.Proxy):
    """A proxy whose ``len()`` is evaluated on the example input (``len(x.shape)`` in MONAI)."""

    def __len__(self) -> int:
        return len(self.tracer._evaluate(self.node))

    def __getattr__(self, k: str) -> "fx.proxy.Attribute":
        return _ShapeAttribute(self, k)


class _ShapeAttribute(fx.proxy.Attribute):
    def __len__(self) -> int:
        return len(self.tracer._evaluate(self.node))


class _Tracer(fx.Tracer):
    """``fx.Tracer`` that decides control flow on shapes by evaluating the graph built so far on
    an example input (values of tensors are never used to decide)."""

    def __init__(self, example: torch.Tensor | None) -> None:
        super().__init__()
        self.example = example
        self.decisions: list[dict] = []
        self.record_stack_traces = True
        self._evaluating = False

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
        if isinstance(value, torch.Tensor):
            raise UnsupportedGraphError(
                f"cannot convert node {node.name!r}{_where(node)}: data-dependent control flow (an `if` on "
                "tensor values) has no fixed spiking graph; rewrite the model without it (torch.where) ")
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
    tracer = _Tracer(example)
    try:
        with _patched_jit_isinstance():
            graph = tracer.trace(m)
    except UnsupportedGraphError:
        raise
    except (fx.proxy.TraceError, TypeError, NotImplementedError) as e:
        raise UnsupportedGraphError(
            f"cannot convert {type(model).__name__}: torch.fx cannot trace it ({str(e).splitlines()[0]}); "
            "sjunet converts models whose forward is a fixed graph of tensor operations") from None
    return Trace(fx.GraphModule(tracer.root, graph, type(model).__name__), tracer.decisions, [], shape)


def _is_sjunet_leaf(m: nn.Module) -> bool:
    from sjunet.neurons import StaticInputSynapse, is_neuron

    return isinstance(m, (Resample, Pad, ChannelAffine, SpikingMaxPool2d, StaticInputSynapse)) or is_neuron(m)


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
    for n in g.nodes:
        n.type = None
    return fx.GraphModule(gm, g, gm.__class__.__name__)


def canonical_graph(model: nn.Module, example_shape: Iterable[int] | None = None) -> Trace:
    """The canonical graph of ``model`` (module docstring, steps 1–4)."""
    from sjunet.canonical import canonicalize

    tr = trace(model, example_shape)
    tr.post = canonicalize(tr.gm)
    tr.gm = retrace(tr.gm)
    check_supported(tr.gm)
    return tr


def signature(gm: fx.GraphModule) -> list[tuple[str, str, str]]:
    """(name, op, target) of every node: two graphs with the same signature key statistics alike."""
    return [(n.name, n.op, str(n.target)) for n in gm.graph.nodes]


# ------------------------------------------------------------------------------------- kinds

def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def relu_cap(m: nn.Module) -> float | None:
    """The cap ``a`` of a ``Hardtanh(0, a)`` / ``ReLU6`` (None for a plain ReLU)."""
    return float(m.max_val) if isinstance(m, nn.Hardtanh) else None


def _is_relu_module(m: nn.Module) -> bool:
    return type(m) is nn.ReLU or (isinstance(m, nn.Hardtanh) and float(m.min_val) == 0.0 and float(m.max_val) > 0)


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
        if isinstance(m, SYNAPTIC_TYPES) and not isinstance(m, (nn.Conv1d, nn.Conv3d)):
            return "synaptic"
        if _is_relu_module(m):
            return "relu"
        if isinstance(m, nn.AvgPool2d):
            return "pool"
        if isinstance(m, (nn.MaxPool2d, SpikingMaxPool2d)):
            return "maxpool"
        if isinstance(m, Resample):
            return "resample"
        if isinstance(m, Pad):
            return "pad"
        if isinstance(m, ChannelAffine):
            return "affine"
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
    "LeakyReLU": "negative outputs have no spike-rate counterpart; retrain with nn.ReLU",
    "PReLU": "negative outputs have no spike-rate counterpart; retrain with nn.ReLU",
    "ELU": "negative outputs have no spike-rate counterpart; retrain with nn.ReLU",
    "SELU": "negative outputs have no spike-rate counterpart; retrain with nn.ReLU",
    "CELU": "negative outputs have no spike-rate counterpart; retrain with nn.ReLU",
    "GELU": "it is not piecewise linear, so rates cannot represent it; retrain with nn.ReLU",
    "SiLU": "it is not piecewise linear, so rates cannot represent it; retrain with nn.ReLU",
    "Mish": "it is not piecewise linear, so rates cannot represent it; retrain with nn.ReLU",
    "Tanh": "it is not piecewise linear, so rates cannot represent it; retrain with nn.ReLU",
    "Sigmoid": "only at the output can a sigmoid be applied to the decoded result; inside the network retrain with nn.ReLU",
    "Softmax": "only at the output can a softmax be applied to the decoded result",
    "InstanceNorm2d": "its statistics depend on each input, so it cannot be folded into fixed weights; use BatchNorm2d and retrain",
    "GroupNorm": "its statistics depend on each input, so it cannot be folded into fixed weights; use BatchNorm2d and retrain",
    "LayerNorm": "its statistics depend on each input, so it cannot be folded into fixed weights; use BatchNorm2d and retrain",
    "LocalResponseNorm": "it divides by input-dependent values; remove it and retrain",
    "MultiheadAttention": "attention multiplies activations with each other, which rates cannot do; use a convolutional U-Net",
    "Linear": "fully connected layers are not supported in this U-Net converter; use a 1x1 Conv2d",
}


def _refusal(gm: fx.GraphModule, node: fx.Node) -> str:
    where = f"node {node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)})"
    m = module_of(gm, node)
    if m is not None:
        name = type(m).__name__
        if name in _REMEDY:
            return f"cannot convert {where}: {name} — {_REMEDY[name]}."
        if isinstance(m, nn.Hardtanh):
            return f"cannot convert {where}: Hardtanh({m.min_val}, {m.max_val}) — only Hardtanh(0, a) is a (capped) ReLU."
        if isinstance(m, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose3d)):
            return f"cannot convert {where}: {name} — only 2-D images (Conv2d/ConvTranspose2d) are supported."
        return (f"cannot convert {where}: {name} is not one of Conv2d, ConvTranspose2d, BatchNorm2d, ReLU, "
                "AvgPool2d, MaxPool2d, Upsample, padding, Dropout/Identity, cat or add — replace it or retrain.")
    t = getattr(node.target, "__name__", str(node.target))
    for key in ("leaky_relu", "prelu", "gelu", "silu", "elu", "mish", "tanh", "sigmoid", "softmax", "layer_norm",
                "group_norm", "instance_norm"):
        if key in t.lower():
            return (f"cannot convert {where}: {t} is not a ReLU (only ReLU/ReLU6/Hardtanh(0,a) map onto spike rates; "
                    "sigmoid/softmax only at the output); retrain with ReLU.")
    if node.target is operator.getitem:
        return (f"cannot convert {where}: indexing or slicing activations (cropping) is not supported; pad the "
                "other tensor instead, or crop the input image")
    if node.target in (operator.mul, torch.mul, operator.truediv, torch.div, operator.sub, torch.sub):
        return (f"cannot convert {where}: multiplying, dividing or subtracting activations is not a spiking "
                "operation; fold constant factors into the weights.")
    return (f"cannot convert {where}: only convolutions, BatchNorm, ReLU, pooling, interpolation, padding, "
            "channel concatenation and residual addition are supported.")


def check_supported(gm: fx.GraphModule) -> None:
    """Raise :class:`UnsupportedGraphError` naming the first node the converter cannot handle."""
    for node in gm.graph.nodes:
        k = kind_of(gm, node)
        where = f"node {node.name!r}"
        if k == "other":
            raise UnsupportedGraphError(_refusal(gm, node))
        if k == "shape":
            raise UnsupportedGraphError(
                f"cannot convert {where}: it computes with tensor shapes in a way sjunet cannot follow (only "
                "interpolation to another tensor's size, `size=t.shape[-2:]`, is understood)")
        if k == "cat" and node.op == "call_function" and cat_dim(node) not in (1, -3):
            raise UnsupportedGraphError(
                f"cannot convert {where}: concatenation along dim {cat_dim(node)}; only the channel dimension "
                "(dim=1) joins spike paths")
        if k == "add":
            ins = tensor_inputs(node)
            if len(ins) != 2 or len(node.args) != 2 or node.kwargs:
                raise UnsupportedGraphError(
                    f"cannot convert {where}: only the sum of two activation tensors is a join; adding a "
                    "constant shifts every neuron's input — fold it into the preceding bias")
        if k == "output":
            outs = node.args[0]
            if not isinstance(outs, fx.Node):
                raise UnsupportedGraphError(
                    f"cannot convert {where}: the network returns {type(outs).__name__}; sjunet converts models "
                    "with one output tensor (drop deep-supervision heads before converting)")
        if k in ("synaptic", "pool", "maxpool") and node.op == "call_module":
            m = module_of(gm, node)
            if isinstance(m, nn.AvgPool2d) and m.divisor_override is not None:
                raise UnsupportedGraphError(f"cannot convert {where}: AvgPool2d(divisor_override=...) is not supported")
            if isinstance(m, nn.MaxPool2d) and m.return_indices:
                raise UnsupportedGraphError(f"cannot convert {where}: MaxPool2d(return_indices=True) is not supported")
        if k in ("relu", "synaptic", "pool", "maxpool", "resample", "pad", "affine", "cat", "add"):
            for a in tensor_inputs(node):
                if kind_of(gm, a) in ("shape", "other"):
                    raise UnsupportedGraphError(
                        f"cannot convert {where}: its input {a.name!r} is computed from shapes, not activations")


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
    """``(C, H, W)`` of every tensor node of ``gm`` (single-step mode) for one input of shape
    ``input_shape`` (``(C, H, W)`` or ``(B, C, H, W)``), computed on the ``meta`` device."""
    shape = tuple(int(s) for s in input_shape)[-3:]
    m = copy.deepcopy(gm).to("meta")
    shapes: dict[str, tuple[int, ...]] = {}

    def keep(name, value):
        if isinstance(value, torch.Tensor):
            shapes[name] = tuple(value.shape[1:])

    Recorder(m, keep).run(torch.zeros((1, *shape), device="meta"))
    return shapes


def size_multiple(shapes: dict[str, tuple[int, ...]], input_hw: tuple[int, int]) -> int:
    """The factor H and W must be multiples of: the input size over the smallest feature map
    (a power of two for U-Nets: 2^depth)."""
    smallest = min((min(s[-2:]) for s in shapes.values() if len(s) == 3 and min(s[-2:]) > 0), default=min(input_hw))
    factor = max(1, min(input_hw) // max(1, smallest))
    return 1 << (factor - 1).bit_length() if factor & (factor - 1) else factor
