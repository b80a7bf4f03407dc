"""The graph rewrites of the canonical graph, but the norms (:mod:`.canonical_norms`); each keeps the
network's function exactly, and :func:`sjunet.graph.canonical.canonicalize` runs them in order.

* every module called more than once gets its own copy (a ResNet block calls one ``ReLU`` twice:
  two neuron layers need two states) — :func:`unshare`;
* identities vanish: ``nn.Identity``, Dropout of every kind (eval mode), ``F.dropout``,
  ``.contiguous()``, ``.clone()``, ``.detach()`` — :func:`remove_identities`;
* ReLU in every spelling (``F.relu``, ``torch.relu``, ``.relu()``, in-place variants,
  ``nn.ReLU(inplace=True)``, ``F.relu6``, ``F.hardtanh(x, 0, a)``) becomes a ``nn.ReLU`` or
  ``nn.Hardtanh(0, a)`` module — one node the recipe can replace with a neuron; leaky ReLUs
  (``F.leaky_relu``, ``nn.LeakyReLU(inplace=True)``, ``nn.RReLU`` in eval mode: slope
  (lower + upper)/2) become ``nn.LeakyReLU(α)``, ``F.prelu`` with a stored weight a ``nn.PReLU`` —
  :func:`relus`;
* ``torch.add`` / ``+=`` / ``.add()`` become ``operator.add``; ``torch.concat`` becomes ``torch.cat``;
  ``torch.stack([a, b, …]).sum(0)`` (smp's FPN merge) becomes ``a + b + …`` — :func:`adds_and_cats`,
  :func:`stack_sums`;
* functional convolutions and batch norms with constant tensors (``F.conv2d(x, self.weight, …)``,
  ``F.batch_norm(x, self.running_mean, …, training=False)``, as EfficientNet's "same"-padding convs and
  timm's ``BatchNormAct2d`` write them) become ``nn.Conv2d`` / ``nn.ConvTranspose2d`` /
  ``nn.BatchNorm2d`` modules holding those tensors — :func:`functional_layers`;
* ``nn.AdaptiveAvgPool2d``, ``F.adaptive_avg_pool2d`` and ``x.mean((2, 3), keepdim=True)`` become
  :class:`~sjunet.layers.stages.AdaptiveAvgPool` (sizes computed from shapes were made constants by the
  tracer, on the example input) — :func:`adaptive_pools`;
* ``F.max_pool2d`` / ``F.avg_pool2d`` become ``nn.MaxPool2d`` / ``nn.AvgPool2d`` modules;
  ``F.interpolate`` / ``nn.Upsample*`` become :class:`~sjunet.layers.stages.Resample` (an interpolation
  to another tensor's size, ``size=t.shape[-2:]``, takes ``t`` as a reference input, so no shape
  arithmetic is left in the graph); ``F.pad`` and padding modules become
  :class:`~sjunet.layers.stages.Pad` — :func:`resample_and_pad`;
* output-side ops (sigmoid, softmax, log-softmax after the last layer) are stripped and returned,
  to be applied to the decoded output (:func:`strip_post`, :func:`apply_post`).

A rewrite that meets something it cannot convert leaves the node as it is and adds a
:class:`~sjunet.graph.refusals.Blocker` to the list it is given (:func:`add_blocker`), so every
blocker is reported at once. The graph-editing helpers shared with :mod:`.canonical_norms` are here
(:func:`node_arg`, :func:`constant_of`, :func:`free_path`, :func:`replace_with_module`).
"""
from __future__ import annotations

import copy
import operator
from collections import Counter

import torch
import torch.nn.functional as F
from torch import fx, nn

from sjunet.errors import UnsupportedGraphError
from sjunet.graph.kinds import module_of, target_name
from sjunet.graph.refusals import Blocker, source_line
from sjunet.graph.tracing import size_reference
from sjunet.layers import dims
from sjunet.layers.stages import AdaptiveAvgPool, Pad, Resample

_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                     nn.FeatureAlphaDropout)
_IDENTITY_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
_IDENTITY_METHODS = {"contiguous", "clone", "detach"}
_RELU_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_}
_RELU_METHODS = {"relu", "relu_"}
_LEAKY_FUNCTIONS = {F.leaky_relu, F.leaky_relu_, torch._C._nn.leaky_relu, torch._C._nn.leaky_relu_}
_LEAKY_METHODS = {"leaky_relu", "leaky_relu_"}
_PRELU_FUNCTIONS = {F.prelu, torch.prelu}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}
_UPSAMPLE_MODULES = (nn.Upsample,)  # UpsamplingNearest2d / UpsamplingBilinear2d are subclasses
_PAD_MODULES = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d,
                nn.ZeroPad3d, nn.ConstantPad3d, nn.ReflectionPad3d, nn.ReplicationPad3d, nn.CircularPad3d)
_PAD_MODES = ((nn.modules.padding._ReflectionPadNd, "reflect"), (nn.modules.padding._ReplicationPadNd, "replicate"),
              (nn.modules.padding._CircularPadNd, "circular"))
_POST_MODULES = {nn.Sigmoid: "sigmoid", nn.Softmax: "softmax", nn.LogSoftmax: "log_softmax"}
_POST_FUNCTIONS = {torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.softmax: "softmax", F.softmax: "softmax",
                   F.log_softmax: "log_softmax", torch.log_softmax: "log_softmax"}


def node_arg(node: fx.Node, i: int, name: str, default=None):
    """Argument ``i`` of ``node``, given by position or as keyword ``name``."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def free_path(gm: fx.GraphModule, name: str) -> str:
    """``name``, or ``name_k`` for the first k that no attribute of ``gm`` holds."""
    path, k = name, 0
    while hasattr(gm, path):
        k += 1
        path = f"{name}_{k}"
    return path


def replace_with_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, args: tuple) -> fx.Node:
    """A new ``call_module`` node running ``module`` on ``args`` in place of ``node``."""
    path = free_path(gm, node.name)
    gm.add_submodule(path, module)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(path, args)
    new.stack_trace = node.stack_trace
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def unshare(gm: fx.GraphModule) -> None:
    uses = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    seen: Counter = Counter()
    for n in gm.graph.nodes:
        if n.op == "call_module" and uses[n.target] > 1:
            seen[n.target] += 1
            if seen[n.target] > 1:
                path = free_path(gm, n.name)
                gm.add_submodule(path, copy.deepcopy(gm.get_submodule(n.target)))
                n.target = path


def remove_identities(gm: fx.GraphModule) -> None:
    for n in list(gm.graph.nodes):
        if n.op == "call_function" and n.target is torch._assert and not n.users:  # decided while tracing
            gm.graph.erase_node(n)
            continue
        m = module_of(gm, n)
        ident = (isinstance(m, _IDENTITY_MODULES)
                 or (n.op == "call_function" and n.target in _IDENTITY_FUNCTIONS)
                 or (n.op == "call_method" and n.target in _IDENTITY_METHODS and len(n.args) == 1))
        if ident and n.args and isinstance(n.args[0], fx.Node):
            n.replace_all_uses_with(n.args[0])
            gm.graph.erase_node(n)


def relus(gm: fx.GraphModule) -> None:
    for n in list(gm.graph.nodes):
        m = module_of(gm, n)
        if type(m) in (nn.ReLU, nn.LeakyReLU) and m.inplace:
            m.inplace = False
        elif isinstance(m, nn.RReLU):  # eval mode: a leaky ReLU with the mean slope
            replace_with_module(gm, n, nn.LeakyReLU((float(m.lower) + float(m.upper)) / 2), (n.args[0],))
        elif (n.op == "call_function" and n.target in _LEAKY_FUNCTIONS) or (
                n.op == "call_method" and n.target in _LEAKY_METHODS):
            replace_with_module(gm, n, nn.LeakyReLU(float(node_arg(n, 1, "negative_slope", 0.01))), (n.args[0],))
        elif n.op == "call_function" and n.target in _PRELU_FUNCTIONS and isinstance(node_arg(n, 1, "weight"), fx.Node) \
                and node_arg(n, 1, "weight").op == "get_attr":
            w = constant_of(gm, node_arg(n, 1, "weight"))
            prelu = nn.PReLU(w.numel())
            prelu.weight.data.copy_(w.detach().reshape(-1))
            replace_with_module(gm, n, prelu, (n.args[0],))
        elif isinstance(m, nn.Hardtanh) and m.inplace:
            m.inplace = False
        elif (n.op == "call_function" and n.target in _RELU_FUNCTIONS) or (
                n.op == "call_method" and n.target in _RELU_METHODS):
            replace_with_module(gm, n, nn.ReLU(), (n.args[0],))
        elif n.op == "call_function" and n.target in (F.relu6,):
            replace_with_module(gm, n, nn.ReLU6(), (n.args[0],))
        elif n.op == "call_function" and n.target in (F.hardtanh, F.hardtanh_):
            lo, hi = node_arg(n, 1, "min_val", -1.0), node_arg(n, 2, "max_val", 1.0)
            replace_with_module(gm, n, nn.Hardtanh(float(lo), float(hi)), (n.args[0],))


def adds_and_cats(gm: fx.GraphModule) -> None:
    for n in list(gm.graph.nodes):
        if n.op == "call_function" and n.target in _ADD_FUNCTIONS and not n.kwargs.get("alpha", 1) != 1:
            if len(n.args) == 2 and not n.kwargs:
                n.target = operator.add
        elif n.op == "call_method" and n.target in _ADD_METHODS and len(n.args) == 2 and not n.kwargs:
            with gm.graph.inserting_before(n):
                new = gm.graph.call_function(operator.add, tuple(n.args))
            n.replace_all_uses_with(new)
            gm.graph.erase_node(n)
        elif n.op == "call_function" and n.target in (torch.concat, torch.concatenate):
            n.target = torch.cat


def stack_sums(gm: fx.GraphModule) -> None:
    """``torch.stack([a, b, …]).sum(dim=0)`` (smp's FPN merge) → ``a + b + …``: the same sum, as
    joins the converter understands (each ``add`` gets its own per-connection units)."""
    for n in list(gm.graph.nodes):
        if not (n.op == "call_function" and n.target is torch.stack and len(n.users) == 1):
            continue
        parts, dim = node_arg(n, 0, "tensors"), node_arg(n, 1, "dim", 0)
        user = next(iter(n.users))
        is_sum = ((user.op == "call_method" and user.target == "sum") or
                  (user.op == "call_function" and user.target is torch.sum))
        if not (is_sum and isinstance(parts, (list, tuple)) and len(parts) >= 2 and dim == 0
                and all(isinstance(p, fx.Node) for p in parts)):
            continue
        sum_dim = node_arg(user, 1, "dim", None)
        if sum_dim not in (0, (0,), [0]) or node_arg(user, 2, "keepdim", False) or user.kwargs.get("dtype"):
            continue
        with gm.graph.inserting_before(user):
            acc = parts[0]
            for p in parts[1:]:
                acc = gm.graph.call_function(operator.add, (acc, p))
        user.replace_all_uses_with(acc)
        gm.graph.erase_node(user)
        gm.graph.erase_node(n)


_POOL_FUNCTIONS = {F.max_pool2d: ("max", 2), torch.max_pool2d: ("max", 2), F.avg_pool2d: ("avg", 2),
                   torch._C._nn.avg_pool2d: ("avg", 2), F.max_pool3d: ("max", 3), torch.max_pool3d: ("max", 3),
                   F.avg_pool3d: ("avg", 3), torch._C._nn.avg_pool3d: ("avg", 3)}


def _pool_module(n: fx.Node) -> nn.Module:
    kind, nd = _POOL_FUNCTIONS[n.target]
    k, stride, pad = node_arg(n, 1, "kernel_size"), node_arg(n, 2, "stride"), node_arg(n, 3, "padding", 0)
    if kind == "max":
        return dims.layer("max_pool", nd)(k, stride or None, pad, node_arg(n, 4, "dilation", 1),
                                          node_arg(n, 6, "return_indices", False), node_arg(n, 5, "ceil_mode", False))
    return dims.layer("avg_pool", nd)(k, stride or None, pad, node_arg(n, 4, "ceil_mode", False),
                                      node_arg(n, 5, "count_include_pad", True), node_arg(n, 6, "divisor_override"))


def add_blocker(blockers: list | None, n: fx.Node, label: str, detail: str) -> None:
    """Note that ``n`` cannot be converted (raise when no list is kept)."""
    if blockers is None:
        raise UnsupportedGraphError(f"cannot convert node {n.name!r}{source_line(n)}: {detail}")
    blockers.append(Blocker(n.name, f"{n.op} {target_name(n.target)}", source_line(n), label, detail))


def constant_of(gm: fx.GraphModule, a) -> torch.Tensor | None:
    """The constant tensor of a ``get_attr`` node (None for None); raises KeyError otherwise."""
    if a is None:
        return None
    if not (isinstance(a, fx.Node) and a.op == "get_attr"):
        raise KeyError(a)
    obj = gm
    for part in a.target.split("."):
        obj = getattr(obj, part)
    return obj.detach()


_CONV_FUNCTIONS = {F.conv2d, torch.conv2d, F.conv3d, torch.conv3d}
_CONV_T_FUNCTIONS = {F.conv_transpose2d, torch.conv_transpose2d, F.conv_transpose3d, torch.conv_transpose3d}
_BN_FUNCTIONS = {F.batch_norm}


def functional_layers(gm: fx.GraphModule, blockers: list | None = None, nd: int = 2) -> None:
    """``F.conv2d`` / ``F.conv_transpose2d`` / ``F.batch_norm`` (and their 3-D forms) with constant
    tensors → modules (``nd``: the network's spatial dimensions, for ``F.batch_norm``)."""
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target not in (_CONV_FUNCTIONS | _CONV_T_FUNCTIONS | _BN_FUNCTIONS):
            continue
        try:
            if n.target in _BN_FUNCTIONS:
                mean, var = constant_of(gm, node_arg(n, 1, "running_mean")), constant_of(gm, node_arg(n, 2, "running_var"))
                weight, bias = constant_of(gm, node_arg(n, 3, "weight")), constant_of(gm, node_arg(n, 4, "bias"))
                training, eps = node_arg(n, 5, "training", False), node_arg(n, 7, "eps", 1e-5)
                if training is not False or mean is None or var is None or isinstance(eps, fx.Node):
                    add_blocker(blockers, n, "batch statistics", "batch_norm normalizes with each batch's statistics "
                           "(training=True or no running statistics), which fixed weights cannot do; use running "
                           "statistics (eval mode, track_running_stats=True)")
                    continue
                bn = dims.layer("batch_norm", nd)(mean.numel(), eps=float(eps),
                                                  affine=weight is not None or bias is not None)
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                if bn.affine:
                    bn.weight.data.copy_(weight if weight is not None else torch.ones_like(mean))
                    bn.bias.data.copy_(bias if bias is not None else torch.zeros_like(mean))
                replace_with_module(gm, n, bn.eval(), (n.args[0],))
                continue
            weight, bias = constant_of(gm, node_arg(n, 1, "weight")), constant_of(gm, node_arg(n, 2, "bias"))
            transposed = n.target in _CONV_T_FUNCTIONS
            stride, padding = node_arg(n, 3, "stride", 1), node_arg(n, 4, "padding", 0)
            if transposed:
                output_padding, groups, dilation = node_arg(n, 5, "output_padding", 0), node_arg(n, 6, "groups", 1), \
                    node_arg(n, 7, "dilation", 1)
            else:
                dilation, groups = node_arg(n, 5, "dilation", 1), node_arg(n, 6, "groups", 1)
            if weight.dim() - 2 not in dims.SUPPORTED or any(isinstance(v, fx.Node) or (isinstance(v, (list, tuple)) and any(
                    isinstance(u, fx.Node) for u in v)) for v in (stride, padding, dilation, groups)):
                raise KeyError(n)
            k = tuple(weight.shape[2:])
            if transposed:
                conv = dims.layer("conv_t", weight.dim() - 2)(weight.shape[0], weight.shape[1] * groups, k, stride,
                                                              padding, output_padding, groups, bias is not None,
                                                              dilation)
            else:
                conv = dims.layer("conv", weight.dim() - 2)(weight.shape[1] * groups, weight.shape[0], k, stride,
                                                            padding, dilation, groups, bias is not None)
            with torch.no_grad():
                conv.weight.copy_(weight)
                if bias is not None:
                    conv.bias.copy_(bias)
            replace_with_module(gm, n, conv.to(weight.dtype), (n.args[0],))
        except KeyError:
            add_blocker(blockers, n, f"{target_name(n.target)} with computed weights",
                   f"{target_name(n.target)} whose weights (or geometry) are computed rather than the model's "
                   "constant tensors has no fixed synapses; use nn.Conv2d/3d / nn.BatchNorm2d/3d")


_ADAPTIVE_AVG_FUNCTIONS = {F.adaptive_avg_pool2d: 2, torch._C._nn.adaptive_avg_pool2d: 2,
                           F.adaptive_avg_pool3d: 3, torch._C._nn.adaptive_avg_pool3d: 3}


def _spatial_mean(n: fx.Node, nd: int = 2) -> bool:
    """``x.mean((2, 3), keepdim=True)`` / ``torch.mean(x, dim=[-2, -1], keepdim=True)`` (volumes:
    ``(2, 3, 4)``; ``nd`` spatial axes)."""
    if not ((n.op == "call_method" and n.target == "mean") or (n.op == "call_function" and n.target is torch.mean)):
        return False
    axes = node_arg(n, 1, "dim")
    keep = node_arg(n, 2, "keepdim", False)
    if not isinstance(axes, (list, tuple)) or keep is not True or n.kwargs.get("dtype") is not None:
        return False
    return (sorted(int(d) % (nd + 2) for d in axes if isinstance(d, int)) == list(range(2, nd + 2))
            and len(axes) == nd)


def adaptive_pools(gm: fx.GraphModule, blockers: list | None = None, nd: int = 2) -> None:
    for n in list(gm.graph.nodes):
        m = module_of(gm, n)
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            replace_with_module(gm, n, AdaptiveAvgPool(m.output_size, spatial_dims=dims.module_dims(m)),
                                 (n.args[0],))
        elif n.op == "call_function" and n.target in _ADAPTIVE_AVG_FUNCTIONS:
            size = node_arg(n, 1, "output_size")
            if isinstance(size, fx.Node) or (isinstance(size, (list, tuple)) and any(
                    isinstance(v, fx.Node) for v in size)):
                add_blocker(blockers, n, "pool size from shapes", "adaptive pooling to a size computed from shapes "
                       "sjunet could not evaluate; give the input shape or a constant size")
                continue
            replace_with_module(gm, n, AdaptiveAvgPool(size, spatial_dims=_ADAPTIVE_AVG_FUNCTIONS[n.target]),
                                 (n.args[0],))
        elif _spatial_mean(n, nd):
            replace_with_module(gm, n, AdaptiveAvgPool(1, spatial_dims=nd), (n.args[0],))


def resample_and_pad(gm: fx.GraphModule, blockers: list | None = None, nd: int = 2) -> None:
    for n in list(gm.graph.nodes):
        m = module_of(gm, n)
        if n.op == "call_function" and n.target in _POOL_FUNCTIONS:
            replace_with_module(gm, n, _pool_module(n), (n.args[0],))
            continue
        if isinstance(m, _UPSAMPLE_MODULES):
            replace_with_module(gm, n, Resample(m.mode, m.scale_factor, m.size, m.align_corners), (n.args[0],))
        elif isinstance(m, _PAD_MODULES):
            mode = next((v for t, v in _PAD_MODES if isinstance(m, t)), "constant")
            if mode == "constant" and float(getattr(m, "value", 0.0)) != 0.0:
                continue  # refused by check_supported: a constant other than 0 is no linear stage
            replace_with_module(gm, n, Pad(m.padding, mode), (n.args[0],))
        elif n.op == "call_function" and n.target in (F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear):
            size, scale = node_arg(n, 1, "size"), node_arg(n, 2, "scale_factor")
            mode = node_arg(n, 3, "mode", "nearest")
            align = node_arg(n, 4, "align_corners")
            if n.target is F.upsample_bilinear:
                mode, align = "bilinear", True
            if node_arg(n, 6, "antialias", False):
                add_blocker(blockers, n, "antialias", "interpolation with antialias=True")
                continue
            if mode not in Resample.MODES:
                add_blocker(blockers, n, f"interpolation mode {mode!r}", f"interpolation mode {mode!r}; use nearest, "
                       "bilinear or trilinear")
                continue
            ref = size_reference(size, nd) if size is not None else None
            if size is not None and ref is None and (isinstance(size, fx.Node) or any(
                    isinstance(s, fx.Node) for s in size)):
                add_blocker(blockers, n, "size from shapes", "its output size is computed from shapes in a way sjunet "
                       "cannot follow; use scale_factor or size=t.shape[-2:] of another tensor t")
                continue
            stage = Resample(mode, scale, None if ref is not None else size, align)
            replace_with_module(gm, n, stage, (n.args[0], ref) if ref is not None else (n.args[0],))
        elif n.op == "call_function" and n.target in (F.pad, torch._C._nn.pad):
            pad, mode, value = node_arg(n, 1, "pad"), node_arg(n, 2, "mode", "constant"), node_arg(n, 3, "value", None)
            if mode == "constant" and value not in (None, 0, 0.0):
                continue  # refused by check_supported
            if isinstance(pad, fx.Node) or any(isinstance(p, fx.Node) for p in pad):
                add_blocker(blockers, n, "padding from shapes", "padding amounts computed from shapes sjunet could not "
                       "evaluate (give the calibration input shape)")
                continue
            replace_with_module(gm, n, Pad(pad, mode), (n.args[0],))


def _post_op(gm: fx.GraphModule, n: fx.Node) -> dict | None:
    m = module_of(gm, n)
    if m is not None and type(m) in _POST_MODULES:
        op = {"op": _POST_MODULES[type(m)]}
        if op["op"] != "sigmoid":
            op["dim"] = 1 if m.dim is None else int(m.dim)
        return op
    if n.op == "call_function" and n.target in _POST_FUNCTIONS:
        op = {"op": _POST_FUNCTIONS[n.target]}
        if op["op"] != "sigmoid":
            op["dim"] = int(node_arg(n, 1, "dim", 1))
        return op
    if n.op == "call_method" and n.target in ("sigmoid", "softmax", "log_softmax"):
        op = {"op": n.target}
        if n.target != "sigmoid":
            op["dim"] = int(node_arg(n, 1, "dim", 1))
        return op
    return None


def strip_post(gm: fx.GraphModule) -> list[dict]:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    post: list[dict] = []
    while isinstance(out.args[0], fx.Node):
        n = out.args[0]
        op = _post_op(gm, n)
        if op is None or len(n.users) != 1:
            break
        post.insert(0, op)
        out.args = (n.args[0],)
        gm.graph.erase_node(n)
    return post


def apply_post(post: list[dict], y: torch.Tensor) -> torch.Tensor:
    """Apply the stripped output-side ops to a decoded output ``y`` (in ANN units)."""
    for op in post:
        if op["op"] == "sigmoid":
            y = torch.sigmoid(y)
        elif op["op"] == "softmax":
            y = torch.softmax(y, dim=op["dim"])
        elif op["op"] == "log_softmax":
            y = torch.log_softmax(y, dim=op["dim"])
        else:
            raise ValueError(f"unknown output op {op['op']!r}")
    return y


_ZERO_FACTORIES = (torch.zeros,)


def _is_zeros(n) -> bool:
    return isinstance(n, fx.Node) and n.op == "call_function" and n.target in _ZERO_FACTORIES


def zero_channel_cats(gm: fx.GraphModule, example_shape) -> None:
    """``torch.cat([x, torch.zeros(n, c, *x.shape[2:])], dim=1)`` — MONAI ResNet's zero-padded
    shortcut (``shortcut_type="A"``: resnet18/34, so FlexibleUNet(resnet18)) — is ``x`` with ``c`` zero
    channels: a fixed 1×1 convolution [I; 0] without bias, exactly. A synaptic layer the normalisation
    folds like any other (it costs one accumulate per spike and output channel, as counted). Needs
    the channel counts, so the example input's shape; without it nothing is rewritten."""
    from sjunet.graph.kinds import CAT_FUNCTIONS, cat_dim, cat_parts
    from sjunet.graph.record import tensor_shapes

    cats = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in CAT_FUNCTIONS
            and cat_dim(n) == 1 and any(_is_zeros(p) for p in cat_parts(n))
            and sum(not _is_zeros(p) for p in cat_parts(n)) == 1]
    if not cats or example_shape is None:
        return
    shapes = tensor_shapes(gm, example_shape)
    nd = len(tuple(example_shape)) - 2
    for n in cats:
        parts = cat_parts(n)
        if any(p.name not in shapes for p in parts) or n.name not in shapes:
            continue
        x = next(p for p in parts if not _is_zeros(p))
        offset = sum(shapes[p.name][0] for p in parts[:parts.index(x)])
        c_in, c_out = shapes[x.name][0], shapes[n.name][0]
        conv = dims.layer("conv", nd)(c_in, c_out, 1, bias=False)
        ref = next((p for p in gm.parameters()), None)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[offset + torch.arange(c_in), torch.arange(c_in)] = 1.0
        if ref is not None:
            conv.to(dtype=ref.dtype, device=ref.device)
        path = f"zero_channels_{n.name}"
        gm.add_submodule(path, conv)
        with gm.graph.inserting_before(n):
            new = gm.graph.call_module(path, (x,))
        new.meta, new.stack_trace = dict(n.meta), n.stack_trace
        n.replace_all_uses_with(new)
        gm.graph.erase_node(n)
    gm.graph.eliminate_dead_code()
    gm.recompile()
