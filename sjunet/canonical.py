"""Graph rewrites that make every U-Net look alike to the converter (step 2 of
:func:`sjunet.graph.canonical_graph`; spec §11). Each rewrite keeps the network's function exactly.

* every module called more than once gets its own copy (a ResNet block calls one ``ReLU`` twice:
  two neuron layers need two states);
* identities vanish: ``nn.Identity``, Dropout of every kind (eval mode), ``F.dropout``,
  ``.contiguous()``, ``.clone()``, ``.detach()``;
* ReLU in every spelling (``F.relu``, ``torch.relu``, ``.relu()``, in-place variants,
  ``nn.ReLU(inplace=True)``, ``F.relu6``, ``F.hardtanh(x, 0, a)``) becomes a ``nn.ReLU`` or
  ``nn.Hardtanh(0, a)`` module — one node the recipe can replace with a neuron;
* ``torch.add`` / ``+=`` / ``.add()`` become ``operator.add``; ``torch.concat`` becomes ``torch.cat``;
* ``F.max_pool2d`` / ``F.avg_pool2d`` become ``nn.MaxPool2d`` / ``nn.AvgPool2d`` modules;
* ``F.interpolate`` / ``nn.Upsample*`` become :class:`~sjunet.stages.Resample` (an interpolation to
  another tensor's size, ``size=t.shape[-2:]``, takes ``t`` as a reference input, so no shape
  arithmetic is left in the graph); ``F.pad`` and padding modules become :class:`~sjunet.stages.Pad`;
* output-side ops (sigmoid, softmax, log-softmax after the last layer) are stripped and returned,
  to be applied to the decoded output;
* BatchNorm folds into the Conv2d / ConvTranspose2d before it (when that convolution feeds nothing
  else); any other BatchNorm becomes a per-channel :class:`~sjunet.stages.ChannelAffine` stage.
"""
from __future__ import annotations

import copy
import operator
from collections import Counter

import torch
import torch.nn.functional as F
from torch import fx, nn

from sjunet.graph import SYNAPTIC_TYPES, UnsupportedGraphError, module_of
from sjunet.stages import ChannelAffine, Pad, Resample

_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                     nn.FeatureAlphaDropout)
_IDENTITY_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
_IDENTITY_METHODS = {"contiguous", "clone", "detach"}
_RELU_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_}
_RELU_METHODS = {"relu", "relu_"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}
_UPSAMPLE_MODULES = (nn.Upsample,)  # UpsamplingNearest2d / UpsamplingBilinear2d are subclasses
_PAD_MODULES = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d)
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
        if type(m) is nn.ReLU and m.inplace:
            gm.get_submodule(n.target).inplace = False
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


def _shape_source(node) -> tuple[fx.Node, tuple[int, ...]] | None:
    """``(t, dims)`` if ``node`` is ``t.shape`` / ``t.size()`` (dims: all) or an indexing of it."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        return node.args[0], tuple(range(4))
    if node.op == "call_method" and node.target == "size":
        if len(node.args) == 1:
            return node.args[0], tuple(range(4))
        if len(node.args) == 2 and isinstance(node.args[1], int):
            return node.args[0], ((node.args[1] % 4),)
    if node.op == "call_function" and node.target is operator.getitem:
        src = _shape_source(node.args[0])
        if src is None:
            return None
        t, dims = src
        idx = node.args[1]
        if isinstance(idx, (int, slice)):
            picked = dims[idx]
            return t, (picked,) if isinstance(idx, int) else tuple(picked)
    return None


def _size_reference(size) -> fx.Node | None:
    """The tensor ``t`` if ``size`` is ``t``'s spatial size (``t.shape[-2:]``, ``(t.shape[2], t.shape[3])``…)."""
    if isinstance(size, fx.Node):
        src = _shape_source(size)
        return src[0] if src is not None and src[1] == (2, 3) else None
    if isinstance(size, (tuple, list)) and len(size) == 2:
        srcs = [_shape_source(s) for s in size]
        if all(s is not None and len(s[1]) == 1 for s in srcs) and srcs[0][0] is srcs[1][0] \
                and (srcs[0][1][0], srcs[1][1][0]) == (2, 3):
            return srcs[0][0]
    return None


_POOL_FUNCTIONS = {F.max_pool2d: "max", torch.max_pool2d: "max", F.avg_pool2d: "avg", torch._C._nn.avg_pool2d: "avg"}


def _pool_module(n: fx.Node) -> nn.Module:
    kind = _POOL_FUNCTIONS[n.target]
    k, stride, pad = _arg(n, 1, "kernel_size"), _arg(n, 2, "stride"), _arg(n, 3, "padding", 0)
    if kind == "max":
        return nn.MaxPool2d(k, stride or None, pad, _arg(n, 4, "dilation", 1), _arg(n, 6, "return_indices", False),
                            _arg(n, 5, "ceil_mode", False))
    return nn.AvgPool2d(k, stride or None, pad, _arg(n, 4, "ceil_mode", False), _arg(n, 5, "count_include_pad", True),
                        _arg(n, 6, "divisor_override"))


def _resample_and_pad(gm: fx.GraphModule) -> None:
    for n in list(gm.graph.nodes):
        m = module_of(gm, n)
        if n.op == "call_function" and n.target in _POOL_FUNCTIONS:
            _replace_with_module(gm, n, _pool_module(n), (n.args[0],))
            continue
        if isinstance(m, _UPSAMPLE_MODULES):
            _replace_with_module(gm, n, Resample(m.mode, m.scale_factor, m.size, m.align_corners), (n.args[0],))
        elif isinstance(m, _PAD_MODULES):
            mode = {nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate",
                    nn.CircularPad2d: "circular"}.get(type(m), "constant")
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
                raise UnsupportedGraphError(f"cannot convert node {n.name!r}: interpolation with antialias=True")
            if mode not in Resample.MODES:
                raise UnsupportedGraphError(
                    f"cannot convert node {n.name!r}: interpolation mode {mode!r}; use nearest or bilinear")
            ref = _size_reference(size) if size is not None else None
            if size is not None and ref is None and (isinstance(size, fx.Node) or any(
                    isinstance(s, fx.Node) for s in size)):
                raise UnsupportedGraphError(
                    f"cannot convert node {n.name!r}: its output size is computed from shapes in a way sjunet cannot "
                    "follow; use scale_factor or size=t.shape[-2:] of another tensor t")
            stage = Resample(mode, scale, None if ref is not None else size, align)
            _replace_with_module(gm, n, stage, (n.args[0], ref) if ref is not None else (n.args[0],))
        elif n.op == "call_function" and n.target in (F.pad, torch._C._nn.pad):
            pad, mode, value = _arg(n, 1, "pad"), _arg(n, 2, "mode", "constant"), _arg(n, 3, "value", None)
            if mode == "constant" and value not in (None, 0, 0.0):
                continue  # refused by check_supported
            if isinstance(pad, fx.Node) or any(isinstance(p, fx.Node) for p in pad):
                raise UnsupportedGraphError(f"cannot convert node {n.name!r}: padding amounts computed from shapes")
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


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedGraphError(
            "cannot convert a BatchNorm2d without running statistics (track_running_stats=False): its "
            "normalization depends on each batch")
    scale = (bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
    return scale.detach(), shift.detach()


def fold_bn_into(conv: nn.Module, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (eval mode) into the Conv2d / ConvTranspose2d ``conv`` before it, in place."""
    scale, shift = _bn_affine(bn)
    with torch.no_grad():
        w = conv.weight
        if isinstance(conv, nn.ConvTranspose2d):
            g = conv.groups
            w.copy_((w.view(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
                     * scale.view(g, 1, -1, 1, 1)).view_as(w))
        else:
            w.mul_(scale.view(-1, 1, 1, 1))
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
        new_bias = bias * scale + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)


def _batchnorm(gm: fx.GraphModule) -> None:
    for n in list(gm.graph.nodes):
        bn = module_of(gm, n)
        if not isinstance(bn, nn.BatchNorm2d):
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
            raise UnsupportedGraphError(f"node {n.name!r}: {e}") from None


def canonicalize(gm: fx.GraphModule) -> list[dict]:
    """Rewrite ``gm`` in place (module docstring); returns the stripped output-side ops."""
    _unshare(gm)
    _remove_identities(gm)
    _relus(gm)
    _adds_and_cats(gm)
    _resample_and_pad(gm)
    post = _strip_post(gm)
    _batchnorm(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return post
