"""Graph rewrites that make every U-Net look alike to the converter (step 2 of
:func:`sjunet.graph.canonical_graph`; spec §11). Each rewrite keeps the network's function exactly.

* every module called more than once gets its own copy (a ResNet block calls one ``ReLU`` twice:
  two neuron layers need two states);
* identities vanish: ``nn.Identity``, Dropout of every kind (eval mode), ``F.dropout``,
  ``.contiguous()``, ``.clone()``, ``.detach()``;
* ReLU in every spelling (``F.relu``, ``torch.relu``, ``.relu()``, in-place variants,
  ``nn.ReLU(inplace=True)``, ``F.relu6``, ``F.hardtanh(x, 0, a)``) becomes a ``nn.ReLU`` or
  ``nn.Hardtanh(0, a)`` module — one node the recipe can replace with a neuron; leaky ReLUs
  (``F.leaky_relu``, ``nn.LeakyReLU(inplace=True)``, ``nn.RReLU`` in eval mode: slope
  (lower + upper)/2) become ``nn.LeakyReLU(α)``, ``F.prelu`` with a stored weight a ``nn.PReLU``;
* ``torch.add`` / ``+=`` / ``.add()`` become ``operator.add``; ``torch.concat`` becomes ``torch.cat``;
  ``torch.stack([a, b, …]).sum(0)`` (smp's FPN merge) becomes ``a + b + …``;
* ``F.max_pool2d`` / ``F.avg_pool2d`` become ``nn.MaxPool2d`` / ``nn.AvgPool2d`` modules;
* ``F.interpolate`` / ``nn.Upsample*`` become :class:`~sjunet.stages.Resample` (an interpolation to
  another tensor's size, ``size=t.shape[-2:]``, takes ``t`` as a reference input, so no shape
  arithmetic is left in the graph); ``F.pad`` and padding modules become :class:`~sjunet.stages.Pad`;
* output-side ops (sigmoid, softmax, log-softmax after the last layer) are stripped and returned,
  to be applied to the decoded output;
* functional convolutions and batch norms with constant tensors (``F.conv2d(x, self.weight, …)``,
  ``F.batch_norm(x, self.running_mean, …, training=False)``, as EfficientNet's "same"-padding convs and
  timm's ``BatchNormAct2d`` write them) become ``nn.Conv2d`` / ``nn.ConvTranspose2d`` /
  ``nn.BatchNorm2d`` modules holding those tensors;
* ``nn.AdaptiveAvgPool2d``, ``F.adaptive_avg_pool2d`` and ``x.mean((2, 3), keepdim=True)`` become
  :class:`~sjunet.stages.AdaptiveAvgPool` (sizes computed from shapes were made constants by the
  tracer, on the example input);
* instance / group / layer norm (``nn.InstanceNorm2d``, ``nn.GroupNorm``, ``nn.LayerNorm`` over
  (C, H, W) with a per-channel-constant affine, ``F.instance_norm`` / ``F.group_norm`` /
  ``F.layer_norm`` with constant weights) become :class:`~sjunet.stages.Center` →
  :class:`~sjunet.stages.Normalize` → :class:`~sjunet.stages.ChannelAffine` (γ, β; absent without an
  affine): still the exact ANN (per-sample deviation) until conversion fixes the deviation from
  calibration (:mod:`sjunet.calibration.approximation`); an instance norm with running statistics
  (eval mode) is a BatchNorm;
* BatchNorm folds into the Conv2d / ConvTranspose2d before it (when that convolution feeds nothing
  else); any other BatchNorm becomes a per-channel :class:`~sjunet.stages.ChannelAffine` stage.

A rewrite that meets something it cannot convert leaves the node as it is and adds a
:class:`~sjunet.graph.Blocker` to the list it is given, so every blocker is reported at once.
"""
from __future__ import annotations

import copy
import operator
from collections import Counter

import torch
import torch.nn.functional as F
from torch import fx, nn

from sjunet import dims
from sjunet.errors import UnsupportedGraphError
from sjunet.graph_base import SYNAPTIC_TYPES, Blocker, _target_name, _where, module_of
from sjunet.stages import AdaptiveAvgPool, Center, ChannelAffine, Normalize, Pad, Resample

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


def _arg(node: fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _free_path(gm: fx.GraphModule, name: str) -> str:
    path, k = name, 0
    while hasattr(gm, path):
        k += 1
        path = f"{name}_{k}"
    return path


def _replace_with_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, args: tuple) -> fx.Node:
    """A new ``call_module`` node running ``module`` on ``args`` in place of ``node``."""
    path = _free_path(gm, node.name)
    gm.add_submodule(path, module)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(path, args)
    new.stack_trace = node.stack_trace
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def _unshare(gm: fx.GraphModule) -> None:
    uses = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    seen: Counter = Counter()
    for n in gm.graph.nodes:
        if n.op == "call_module" and uses[n.target] > 1:
            seen[n.target] += 1
            if seen[n.target] > 1:
                path = _free_path(gm, n.name)
                gm.add_submodule(path, copy.deepcopy(gm.get_submodule(n.target)))
                n.target = path


def _remove_identities(gm: fx.GraphModule) -> None:
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


def _relus(gm: fx.GraphModule) -> None:
    for n in list(gm.graph.nodes):
        m = module_of(gm, n)
        if type(m) in (nn.ReLU, nn.LeakyReLU) and m.inplace:
            m.inplace = False
        elif isinstance(m, nn.RReLU):  # eval mode: a leaky ReLU with the mean slope
            _replace_with_module(gm, n, nn.LeakyReLU((float(m.lower) + float(m.upper)) / 2), (n.args[0],))
        elif (n.op == "call_function" and n.target in _LEAKY_FUNCTIONS) or (
                n.op == "call_method" and n.target in _LEAKY_METHODS):
            _replace_with_module(gm, n, nn.LeakyReLU(float(_arg(n, 1, "negative_slope", 0.01))), (n.args[0],))
        elif n.op == "call_function" and n.target in _PRELU_FUNCTIONS and isinstance(_arg(n, 1, "weight"), fx.Node) \
                and _arg(n, 1, "weight").op == "get_attr":
            w = _fetch(gm, _arg(n, 1, "weight"))
            prelu = nn.PReLU(w.numel())
            prelu.weight.data.copy_(w.detach().reshape(-1))
            _replace_with_module(gm, n, prelu, (n.args[0],))
        elif isinstance(m, nn.Hardtanh) and m.inplace:
            m.inplace = False
        elif (n.op == "call_function" and n.target in _RELU_FUNCTIONS) or (
                n.op == "call_method" and n.target in _RELU_METHODS):
            _replace_with_module(gm, n, nn.ReLU(), (n.args[0],))
        elif n.op == "call_function" and n.target in (F.relu6,):
            _replace_with_module(gm, n, nn.ReLU6(), (n.args[0],))
        elif n.op == "call_function" and n.target in (F.hardtanh, F.hardtanh_):
            lo, hi = _arg(n, 1, "min_val", -1.0), _arg(n, 2, "max_val", 1.0)
            _replace_with_module(gm, n, nn.Hardtanh(float(lo), float(hi)), (n.args[0],))


def _adds_and_cats(gm: fx.GraphModule) -> None:
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


def _stack_sums(gm: fx.GraphModule) -> None:
    """``torch.stack([a, b, …]).sum(dim=0)`` (smp's FPN merge) → ``a + b + …``: the same sum, as
    joins the converter understands (each ``add`` gets its own per-connection units)."""
    for n in list(gm.graph.nodes):
        if not (n.op == "call_function" and n.target is torch.stack and len(n.users) == 1):
            continue
        parts, dim = _arg(n, 0, "tensors"), _arg(n, 1, "dim", 0)
        user = next(iter(n.users))
        is_sum = ((user.op == "call_method" and user.target == "sum") or
                  (user.op == "call_function" and user.target is torch.sum))
        if not (is_sum and isinstance(parts, (list, tuple)) and len(parts) >= 2 and dim == 0
                and all(isinstance(p, fx.Node) for p in parts)):
            continue
        sum_dim = _arg(user, 1, "dim", None)
        if sum_dim not in (0, (0,), [0]) or _arg(user, 2, "keepdim", False) or user.kwargs.get("dtype"):
            continue
        with gm.graph.inserting_before(user):
            acc = parts[0]
            for p in parts[1:]:
                acc = gm.graph.call_function(operator.add, (acc, p))
        user.replace_all_uses_with(acc)
        gm.graph.erase_node(user)
        gm.graph.erase_node(n)


def _shape_source(node, rank: int = 4) -> tuple[fx.Node, tuple[int, ...]] | None:
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
        src = _shape_source(node.args[0], rank)
        if src is None:
            return None
        t, dims = src
        idx = node.args[1]
        if isinstance(idx, (int, slice)):
            picked = dims[idx]
            return t, (picked,) if isinstance(idx, int) else tuple(picked)
    return None


def _size_reference(size, nd: int = 2) -> fx.Node | None:
    """The tensor ``t`` if ``size`` is ``t``'s spatial size (``t.shape[-2:]``, ``(t.shape[2], t.shape[3])``…;
    volumes: ``t.shape[2:]``, ``t.shape[-3:]``…; ``nd`` spatial axes)."""
    spatial = tuple(range(2, 2 + nd))
    if isinstance(size, fx.Node):
        src = _shape_source(size, nd + 2)
        return src[0] if src is not None and src[1] == spatial else None
    if isinstance(size, (tuple, list)) and len(size) == nd:
        srcs = [_shape_source(s, nd + 2) for s in size]
        if all(s is not None and len(s[1]) == 1 for s in srcs) and all(s[0] is srcs[0][0] for s in srcs) \
                and tuple(s[1][0] for s in srcs) == spatial:
            return srcs[0][0]
    return None


_POOL_FUNCTIONS = {F.max_pool2d: ("max", 2), torch.max_pool2d: ("max", 2), F.avg_pool2d: ("avg", 2),
                   torch._C._nn.avg_pool2d: ("avg", 2), F.max_pool3d: ("max", 3), torch.max_pool3d: ("max", 3),
                   F.avg_pool3d: ("avg", 3), torch._C._nn.avg_pool3d: ("avg", 3)}


def _pool_module(n: fx.Node) -> nn.Module:
    kind, nd = _POOL_FUNCTIONS[n.target]
    k, stride, pad = _arg(n, 1, "kernel_size"), _arg(n, 2, "stride"), _arg(n, 3, "padding", 0)
    if kind == "max":
        return dims.layer("max_pool", nd)(k, stride or None, pad, _arg(n, 4, "dilation", 1),
                                          _arg(n, 6, "return_indices", False), _arg(n, 5, "ceil_mode", False))
    return dims.layer("avg_pool", nd)(k, stride or None, pad, _arg(n, 4, "ceil_mode", False),
                                      _arg(n, 5, "count_include_pad", True), _arg(n, 6, "divisor_override"))


def _block(blockers: list | None, n: fx.Node, label: str, detail: str) -> None:
    """Note that ``n`` cannot be converted (raise when no list is kept)."""
    if blockers is None:
        raise UnsupportedGraphError(f"cannot convert node {n.name!r}{_where(n)}: {detail}")
    blockers.append(Blocker(n.name, f"{n.op} {_target_name(n.target)}", _where(n), label, detail))


def _fetch(gm: fx.GraphModule, a) -> torch.Tensor | None:
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


def _functional_layers(gm: fx.GraphModule, blockers: list | None = None, nd: int = 2) -> None:
    """``F.conv2d`` / ``F.conv_transpose2d`` / ``F.batch_norm`` (and their 3-D forms) with constant
    tensors → modules (``nd``: the network's spatial dimensions, for ``F.batch_norm``)."""
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target not in (_CONV_FUNCTIONS | _CONV_T_FUNCTIONS | _BN_FUNCTIONS):
            continue
        try:
            if n.target in _BN_FUNCTIONS:
                mean, var = _fetch(gm, _arg(n, 1, "running_mean")), _fetch(gm, _arg(n, 2, "running_var"))
                weight, bias = _fetch(gm, _arg(n, 3, "weight")), _fetch(gm, _arg(n, 4, "bias"))
                training, eps = _arg(n, 5, "training", False), _arg(n, 7, "eps", 1e-5)
                if training is not False or mean is None or var is None or isinstance(eps, fx.Node):
                    _block(blockers, n, "batch statistics", "batch_norm normalizes with each batch's statistics "
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
                _replace_with_module(gm, n, bn.eval(), (n.args[0],))
                continue
            weight, bias = _fetch(gm, _arg(n, 1, "weight")), _fetch(gm, _arg(n, 2, "bias"))
            transposed = n.target in _CONV_T_FUNCTIONS
            stride, padding = _arg(n, 3, "stride", 1), _arg(n, 4, "padding", 0)
            if transposed:
                output_padding, groups, dilation = _arg(n, 5, "output_padding", 0), _arg(n, 6, "groups", 1), \
                    _arg(n, 7, "dilation", 1)
            else:
                dilation, groups = _arg(n, 5, "dilation", 1), _arg(n, 6, "groups", 1)
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
            _replace_with_module(gm, n, conv.to(weight.dtype), (n.args[0],))
        except KeyError:
            _block(blockers, n, f"{_target_name(n.target)} with computed weights",
                   f"{_target_name(n.target)} whose weights (or geometry) are computed rather than the model's "
                   "constant tensors has no fixed synapses; use nn.Conv2d/3d / nn.BatchNorm2d/3d")


_ADAPTIVE_AVG_FUNCTIONS = {F.adaptive_avg_pool2d: 2, torch._C._nn.adaptive_avg_pool2d: 2,
                           F.adaptive_avg_pool3d: 3, torch._C._nn.adaptive_avg_pool3d: 3}


def _spatial_mean(n: fx.Node, nd: int = 2) -> bool:
    """``x.mean((2, 3), keepdim=True)`` / ``torch.mean(x, dim=[-2, -1], keepdim=True)`` (volumes:
    ``(2, 3, 4)``; ``nd`` spatial axes)."""
    if not ((n.op == "call_method" and n.target == "mean") or (n.op == "call_function" and n.target is torch.mean)):
        return False
    axes = _arg(n, 1, "dim")
    keep = _arg(n, 2, "keepdim", False)
    if not isinstance(axes, (list, tuple)) or keep is not True or n.kwargs.get("dtype") is not None:
        return False
    return (sorted(int(d) % (nd + 2) for d in axes if isinstance(d, int)) == list(range(2, nd + 2))
            and len(axes) == nd)


def _adaptive_pools(gm: fx.GraphModule, blockers: list | None = None, nd: int = 2) -> None:
    for n in list(gm.graph.nodes):
        m = module_of(gm, n)
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            _replace_with_module(gm, n, AdaptiveAvgPool(m.output_size, spatial_dims=dims.module_dims(m)),
                                 (n.args[0],))
        elif n.op == "call_function" and n.target in _ADAPTIVE_AVG_FUNCTIONS:
            size = _arg(n, 1, "output_size")
            if isinstance(size, fx.Node) or (isinstance(size, (list, tuple)) and any(
                    isinstance(v, fx.Node) for v in size)):
                _block(blockers, n, "pool size from shapes", "adaptive pooling to a size computed from shapes "
                       "sjunet could not evaluate; give the input shape or a constant size")
                continue
            _replace_with_module(gm, n, AdaptiveAvgPool(size, spatial_dims=_ADAPTIVE_AVG_FUNCTIONS[n.target]),
                                 (n.args[0],))
        elif _spatial_mean(n, nd):
            _replace_with_module(gm, n, AdaptiveAvgPool(1, spatial_dims=nd), (n.args[0],))


def _resample_and_pad(gm: fx.GraphModule, blockers: list | None = None, nd: int = 2) -> None:
    for n in list(gm.graph.nodes):
        m = module_of(gm, n)
        if n.op == "call_function" and n.target in _POOL_FUNCTIONS:
            _replace_with_module(gm, n, _pool_module(n), (n.args[0],))
            continue
        if isinstance(m, _UPSAMPLE_MODULES):
            _replace_with_module(gm, n, Resample(m.mode, m.scale_factor, m.size, m.align_corners), (n.args[0],))
        elif isinstance(m, _PAD_MODULES):
            mode = next((v for t, v in _PAD_MODES if isinstance(m, t)), "constant")
            if mode == "constant" and float(getattr(m, "value", 0.0)) != 0.0:
                continue  # refused by check_supported: a constant other than 0 is no linear stage
            _replace_with_module(gm, n, Pad(m.padding, mode), (n.args[0],))
        elif n.op == "call_function" and n.target in (F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear):
            size, scale = _arg(n, 1, "size"), _arg(n, 2, "scale_factor")
            mode = _arg(n, 3, "mode", "nearest")
            align = _arg(n, 4, "align_corners")
            if n.target is F.upsample_bilinear:
                mode, align = "bilinear", True
            if _arg(n, 6, "antialias", False):
                _block(blockers, n, "antialias", "interpolation with antialias=True")
                continue
            if mode not in Resample.MODES:
                _block(blockers, n, f"interpolation mode {mode!r}", f"interpolation mode {mode!r}; use nearest, "
                       "bilinear or trilinear")
                continue
            ref = _size_reference(size, nd) if size is not None else None
            if size is not None and ref is None and (isinstance(size, fx.Node) or any(
                    isinstance(s, fx.Node) for s in size)):
                _block(blockers, n, "size from shapes", "its output size is computed from shapes in a way sjunet "
                       "cannot follow; use scale_factor or size=t.shape[-2:] of another tensor t")
                continue
            stage = Resample(mode, scale, None if ref is not None else size, align)
            _replace_with_module(gm, n, stage, (n.args[0], ref) if ref is not None else (n.args[0],))
        elif n.op == "call_function" and n.target in (F.pad, torch._C._nn.pad):
            pad, mode, value = _arg(n, 1, "pad"), _arg(n, 2, "mode", "constant"), _arg(n, 3, "value", None)
            if mode == "constant" and value not in (None, 0, 0.0):
                continue  # refused by check_supported
            if isinstance(pad, fx.Node) or any(isinstance(p, fx.Node) for p in pad):
                _block(blockers, n, "padding from shapes", "padding amounts computed from shapes sjunet could not "
                       "evaluate (give the calibration input shape)")
                continue
            _replace_with_module(gm, n, Pad(pad, mode), (n.args[0],))


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
            op["dim"] = int(_arg(n, 1, "dim", 1))
        return op
    if n.op == "call_method" and n.target in ("sigmoid", "softmax", "log_softmax"):
        op = {"op": n.target}
        if n.target != "sigmoid":
            op["dim"] = int(_arg(n, 1, "dim", 1))
        return op
    return None


def _strip_post(gm: fx.GraphModule) -> list[dict]:
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


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedGraphError(
            f"cannot convert a {type(bn).__name__} without running statistics (track_running_stats=False): its "
            "normalization depends on each batch")
    scale = (bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
    return scale.detach(), shift.detach()


def fold_bn_into(conv: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` (eval mode) into the Conv2d/3d / ConvTranspose2d/3d ``conv`` before it, in place."""
    scale, shift = _bn_affine(bn)
    with torch.no_grad():
        w = conv.weight
        ones = [1] * (w.dim() - 2)  # the kernel's spatial axes
        if isinstance(conv, dims.CONV_T_TYPES):
            g = conv.groups
            w.copy_((w.view(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
                     * scale.view(g, 1, -1, *ones)).view_as(w))
        else:
            w.mul_(scale.view(-1, 1, *ones))
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
        new_bias = bias * scale + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)


def _batchnorm(gm: fx.GraphModule, blockers: list | None = None) -> None:
    for n in list(gm.graph.nodes):
        bn = module_of(gm, n)
        if not isinstance(bn, (nn.BatchNorm2d, nn.BatchNorm3d)):
            continue
        src = n.args[0]
        conv = module_of(gm, src) if isinstance(src, fx.Node) else None
        try:
            if isinstance(conv, SYNAPTIC_TYPES) and len(src.users) == 1:
                fold_bn_into(conv, bn)
                n.replace_all_uses_with(src)
                gm.graph.erase_node(n)
            else:
                _replace_with_module(gm, n, ChannelAffine.of(*_bn_affine(bn)), (src,))
        except UnsupportedGraphError as e:
            if blockers is None:
                raise UnsupportedGraphError(f"node {n.name!r}: {e}") from None
            _block(blockers, n, "BatchNorm without running statistics", str(e).replace("cannot convert ", "", 1))


_NORM_FUNCTIONS = {F.instance_norm: "instance_norm", F.group_norm: "group_norm", F.layer_norm: "layer_norm",
                   torch.group_norm: "group_norm", torch.layer_norm: "layer_norm"}  # same argument order


def _norm_chain(gm: fx.GraphModule, n: fx.Node, kind: str, groups: int, eps: float, weight, bias) -> None:
    """``Center(groups)`` → ``Normalize(groups, eps)`` → ``ChannelAffine(γ, β)`` (no affine when
    neither is given) in place of the norm node ``n``."""
    chain: list[tuple[str, nn.Module]] = [("center", Center(groups)), ("normalize", Normalize(groups, eps, kind))]
    if weight is not None or bias is not None:
        ref = weight if weight is not None else bias
        scale = weight.detach().reshape(-1) if weight is not None else torch.ones(ref.numel(), dtype=ref.dtype)
        chain.append(("affine", ChannelAffine.of(scale, None if bias is None else bias.detach().reshape(-1))))
    x = n.args[0]
    with gm.graph.inserting_before(n):
        for suffix, m in chain:
            path = _free_path(gm, f"{n.name}_{suffix}")
            gm.add_submodule(path, m)
            x = gm.graph.call_module(path, (x,))
            x.stack_trace = n.stack_trace
    n.replace_all_uses_with(x)
    gm.graph.erase_node(n)


def _per_channel(t: torch.Tensor | None, what: str) -> tuple[torch.Tensor | None, str | None]:
    """A LayerNorm's (C, H, W) affine tensor as a per-channel [C] one, or why it is not one."""
    if t is None:
        return None, None
    flat = t.detach().reshape(t.shape[0], -1)
    if not bool(torch.all(flat == flat[:, :1])):
        return None, (f"its {what} varies over positions (H, W): a per-position scale is no per-channel stage and "
                      "depends on the input size; use GroupNorm(1, C) (the same normalization with a per-channel "
                      "affine) and retrain, or remove the elementwise affine")
    return flat[:, 0].clone(), None


def _norms(gm: fx.GraphModule, blockers: list | None = None, nd: int = 2) -> None:
    """Instance / group / layer norm → Center, Normalize, ChannelAffine (module docstring)."""
    for n in list(gm.graph.nodes):
        m = module_of(gm, n)
        fn = _NORM_FUNCTIONS.get(n.target) if n.op == "call_function" else None
        if not (isinstance(m, (nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)) or fn):
            continue
        label = type(m).__name__ if m is not None else fn
        try:
            if isinstance(m, (nn.InstanceNorm2d, nn.InstanceNorm3d)) or fn == "instance_norm":
                if m is not None:
                    mean, var, weight, bias = m.running_mean, m.running_var, m.weight, m.bias
                    per_sample, eps, channels = not m.track_running_stats, m.eps, m.num_features
                else:
                    mean, var = _fetch(gm, _arg(n, 1, "running_mean")), _fetch(gm, _arg(n, 2, "running_var"))
                    weight, bias = _fetch(gm, _arg(n, 3, "weight")), _fetch(gm, _arg(n, 4, "bias"))
                    per_sample, eps = _arg(n, 5, "use_input_stats", True), _arg(n, 7, "eps", 1e-5)
                    channels = None
                if not per_sample and mean is not None and var is not None:  # running statistics: a BatchNorm
                    bn = dims.layer("batch_norm", dims.module_dims(m) if m is not None else nd)(
                        mean.numel(), eps=float(eps), affine=weight is not None or bias is not None)
                    bn.running_mean.copy_(mean.detach())
                    bn.running_var.copy_(var.detach())
                    if bn.affine:
                        bn.weight.data.copy_(weight.detach() if weight is not None else torch.ones_like(mean))
                        bn.bias.data.copy_(bias.detach() if bias is not None else torch.zeros_like(mean))
                    _replace_with_module(gm, n, bn.eval(), (n.args[0],))
                    continue
                groups = channels if channels is not None else (weight if weight is not None else bias).numel() \
                    if (weight is not None or bias is not None) else None
                if groups is None:
                    raise KeyError("instance_norm without weight: the channel count is unknown")
                _norm_chain(gm, n, "instance_norm", int(groups), float(eps), weight, bias)
            elif isinstance(m, nn.GroupNorm) or fn == "group_norm":
                if m is not None:
                    groups, eps, weight, bias = m.num_groups, m.eps, m.weight, m.bias
                else:
                    groups, eps = _arg(n, 1, "num_groups"), _arg(n, 4, "eps", 1e-5)
                    weight, bias = _fetch(gm, _arg(n, 2, "weight")), _fetch(gm, _arg(n, 3, "bias"))
                if not isinstance(groups, int) or isinstance(eps, fx.Node):
                    raise KeyError("group_norm with computed arguments")
                _norm_chain(gm, n, "group_norm", groups, float(eps), weight, bias)
            else:
                if m is not None:
                    shape, eps, weight, bias = tuple(m.normalized_shape), m.eps, m.weight, m.bias
                else:
                    shape, eps = _arg(n, 1, "normalized_shape"), _arg(n, 4, "eps", 1e-5)
                    weight, bias = _fetch(gm, _arg(n, 2, "weight")), _fetch(gm, _arg(n, 3, "bias"))
                    shape = (shape,) if isinstance(shape, int) else tuple(shape)
                if len(shape) != nd + 1 or not all(isinstance(v, int) for v in shape) or isinstance(eps, fx.Node):
                    _block(blockers, n, label, f"{label} over the last {len(shape)} dimension(s) {list(shape)}: sjunet "
                           "converts a layer norm over (C, H, W) of an image or (C, D, H, W) of a volume "
                           "(GroupNorm(1, C)); normalizing over "
                           "positions or channels alone (channels-last use) has no per-channel form — use GroupNorm "
                           "and retrain")
                    continue
                w, why = _per_channel(weight, "weight")
                b, why_b = _per_channel(bias, "bias")
                if why or why_b:
                    _block(blockers, n, label, f"{label}: {why or why_b}")
                    continue
                _norm_chain(gm, n, "layer_norm", 1, float(eps), w, b)
        except KeyError:
            _block(blockers, n, f"{label} with computed arguments",
                   f"{label} whose weights, groups or eps are computed rather than the model's constants (or an "
                   "instance_norm without weights, whose channel count is unknown) cannot be converted; use the "
                   "nn module (nn.InstanceNorm2d/3d / nn.GroupNorm)")


def canonicalize(gm: fx.GraphModule, blockers: list | None = None) -> list[dict]:
    """Rewrite ``gm`` in place (module docstring); returns the stripped output-side ops. Nodes it
    cannot rewrite are added to ``blockers`` (without a list: raise at the first)."""
    nd = dims.spatial_dims(gm)  # the network's (its convolutions'): 2 for images, 3 for volumes
    _unshare(gm)
    _remove_identities(gm)
    _relus(gm)
    _adds_and_cats(gm)
    _stack_sums(gm)
    _functional_layers(gm, blockers, nd)
    _adaptive_pools(gm, blockers, nd)
    _resample_and_pad(gm, blockers, nd)
    post = _strip_post(gm)
    _norms(gm, blockers, nd)
    _batchnorm(gm, blockers)
    dims.set_spatial_dims(gm, nd)  # per-channel stages broadcast over nd spatial axes
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return post
