"""The canonical graph's rewrites of normalisation layers (step 2 of
:func:`sjunet.graph.canonical.canonical_graph`; spec §11); each keeps the network's function exactly.

* instance / group / layer norm (``nn.InstanceNorm2d``, ``nn.GroupNorm``, ``nn.LayerNorm`` over
  (C, H, W) with a per-channel-constant affine, ``F.instance_norm`` / ``F.group_norm`` /
  ``F.layer_norm`` with constant weights) become :class:`~sjunet.layers.stages.Center` →
  :class:`~sjunet.layers.stages.Normalize` → :class:`~sjunet.layers.stages.ChannelAffine` (γ, β; absent
  without an affine): still the exact ANN (per-sample deviation) until conversion fixes the deviation
  from calibration (:mod:`sjunet.calibration.approximation`); an instance norm with running statistics
  (eval mode) is a BatchNorm — :func:`norm_stages`;
* BatchNorm folds into the Conv2d / ConvTranspose2d before it (when that convolution feeds nothing
  else); any other BatchNorm becomes a per-channel :class:`~sjunet.layers.stages.ChannelAffine` stage —
  :func:`fold_batchnorms`, :func:`fold_bn_into`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from sjunet.errors import UnsupportedGraphError
from sjunet.graph.canonical_ops import add_blocker, constant_of, free_path, node_arg, replace_with_module
from sjunet.graph.kinds import SYNAPTIC_TYPES, module_of
from sjunet.layers import dims
from sjunet.layers.stages import Center, ChannelAffine, Normalize

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


def fold_batchnorms(gm: fx.GraphModule, blockers: list | None = None) -> None:
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
                replace_with_module(gm, n, ChannelAffine.of(*_bn_affine(bn)), (src,))
        except UnsupportedGraphError as e:
            if blockers is None:
                raise UnsupportedGraphError(f"node {n.name!r}: {e}") from None
            add_blocker(blockers, n, "BatchNorm without running statistics", str(e).replace("cannot convert ", "", 1))


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
            path = free_path(gm, f"{n.name}_{suffix}")
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


def norm_stages(gm: fx.GraphModule, blockers: list | None = None, nd: int = 2) -> None:
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
                    mean, var = constant_of(gm, node_arg(n, 1, "running_mean")), constant_of(gm, node_arg(n, 2, "running_var"))
                    weight, bias = constant_of(gm, node_arg(n, 3, "weight")), constant_of(gm, node_arg(n, 4, "bias"))
                    per_sample, eps = node_arg(n, 5, "use_input_stats", True), node_arg(n, 7, "eps", 1e-5)
                    channels = None
                if not per_sample and mean is not None and var is not None:  # running statistics: a BatchNorm
                    bn = dims.layer("batch_norm", dims.module_dims(m) if m is not None else nd)(
                        mean.numel(), eps=float(eps), affine=weight is not None or bias is not None)
                    bn.running_mean.copy_(mean.detach())
                    bn.running_var.copy_(var.detach())
                    if bn.affine:
                        bn.weight.data.copy_(weight.detach() if weight is not None else torch.ones_like(mean))
                        bn.bias.data.copy_(bias.detach() if bias is not None else torch.zeros_like(mean))
                    replace_with_module(gm, n, bn.eval(), (n.args[0],))
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
                    groups, eps = node_arg(n, 1, "num_groups"), node_arg(n, 4, "eps", 1e-5)
                    weight, bias = constant_of(gm, node_arg(n, 2, "weight")), constant_of(gm, node_arg(n, 3, "bias"))
                if not isinstance(groups, int) or isinstance(eps, fx.Node):
                    raise KeyError("group_norm with computed arguments")
                _norm_chain(gm, n, "group_norm", groups, float(eps), weight, bias)
            else:
                if m is not None:
                    shape, eps, weight, bias = tuple(m.normalized_shape), m.eps, m.weight, m.bias
                else:
                    shape, eps = node_arg(n, 1, "normalized_shape"), node_arg(n, 4, "eps", 1e-5)
                    weight, bias = constant_of(gm, node_arg(n, 2, "weight")), constant_of(gm, node_arg(n, 3, "bias"))
                    shape = (shape,) if isinstance(shape, int) else tuple(shape)
                if len(shape) != nd + 1 or not all(isinstance(v, int) for v in shape) or isinstance(eps, fx.Node):
                    continue  # over trailing dimensions (tokens, channels-last): a Σ-Δ layer norm (canonical_sigma)
                w, why = _per_channel(weight, "weight")
                b, why_b = _per_channel(bias, "bias")
                if why or why_b:
                    continue  # an affine over positions: the exact Σ-Δ layer norm (canonical_sigma)
                _norm_chain(gm, n, "layer_norm", 1, float(eps), w, b)
        except KeyError:
            add_blocker(blockers, n, f"{label} with computed arguments",
                   f"{label} whose weights, groups or eps are computed rather than the model's constants (or an "
                   "instance_norm without weights, whose channel count is unknown) cannot be converted; use the "
                   "nn module (nn.InstanceNorm2d/3d / nn.GroupNorm)")
