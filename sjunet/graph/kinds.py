"""Node kinds: what each node of an FX graph is to the converter (:func:`kind_of`).

``input``, ``output``, ``synaptic`` (Conv2d/3d / ConvTranspose2d/3d), ``relu``, ``pool`` (AvgPool2d/3d,
adaptive / global average pooling), ``maxpool``, ``resample``, ``pad``, ``affine``, ``cat`` (channel
concatenation), ``add``, ``center`` / ``normalize`` (instance / group / layer norm: the exact mean
subtraction, and the division by the deviation — per sample in the ANN, fixed from calibration in the
SNN, :mod:`sjunet.calibration.approximation`), ``shape``, ``neuron`` / ``analog`` (in a converted SNN),
``other``; for Σ-Δ neurons and transformer plumbing (spec §15): ``sigma`` (an activation of the Σ-Δ
table, :class:`~sjunet.neurons.sigma_delta_functions.Smooth`), ``product`` (a product of two
activations, :class:`~sjunet.neurons.sigma_delta_functions.Product`), ``plumbing`` (reshape, permute,
index, repeat, roll: :mod:`sjunet.layers.plumbing`), ``constant`` (adding a constant tensor: a bias
current), ``scale`` (multiplying by a constant number); ``nn.Linear`` is ``synaptic``. Plus the small questions every later stage asks of a node: its module, a call target's
name, a cat's parts and dimension, the tensor inputs, the users that read its values.

The layer types of each spatial dimensionality come from one table (:mod:`sjunet.layers.dims`): a
new dimensionality is a row there, not an edit here.
"""
from __future__ import annotations

import operator

import torch
from torch import fx, nn

from sjunet.layers import dims
from sjunet.layers.stages import AdaptiveAvgPool, Center, ChannelAffine, Normalize, Pad, Resample, SpikingMaxPool2d
from sjunet.layers.plumbing import PLUMBING_TYPES, AddConstant, Scale
from sjunet.layers.static_synapse import StaticInputSynapse
from sjunet.neurons import is_neuron
from sjunet.neurons.sigma_delta_functions import Product, Smooth

#: the synaptic layers: convolutions of the spatial dimensionalities converted
#: (:data:`sjunet.layers.dims.SUPPORTED`) and ``nn.Linear`` (over the last dimension: tokens)
SYNAPTIC_TYPES = tuple(dims.layer(op, nd) for nd in dims.SUPPORTED for op in ("conv", "conv_t")) + (nn.Linear,)
AVG_POOL_TYPES = tuple(dims.layer("avg_pool", nd) for nd in dims.SUPPORTED)
MAX_POOL_TYPES = tuple(dims.layer("max_pool", nd) for nd in dims.SUPPORTED)
CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
PASS_KINDS = ("pool", "maxpool", "resample", "pad")  # per-channel, unit passes through


def target_name(target) -> str:
    """The name of a call target (a function's ``__name__``, a method's name)."""
    return getattr(target, "__name__", str(target))


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module a ``call_module`` node runs (None for any other node)."""
    return gm.get_submodule(node.target) if node.op == "call_module" else None


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


#: module types and their kinds, checked in this order (after neurons, synapses and ReLUs)
_MODULE_KINDS = (
    ((*AVG_POOL_TYPES, AdaptiveAvgPool), "pool"),
    ((*MAX_POOL_TYPES, SpikingMaxPool2d), "maxpool"),
    (Resample, "resample"),
    (Pad, "pad"),
    (ChannelAffine, "affine"),
    (Center, "center"),
    (Normalize, "normalize"),  # the ANN's per-sample division (calibration only; folded at conversion)
    (Smooth, "sigma"),
    (Product, "product"),
    (PLUMBING_TYPES, "plumbing"),
    (AddConstant, "constant"),
    (Scale, "scale"),
)


def kind_of(gm: fx.GraphModule, node: fx.Node) -> str:
    """The node's kind (module docstring)."""
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
        kind = next((k for types, k in _MODULE_KINDS if isinstance(m, types)), None)
        if kind is not None:
            return kind
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
