"""What the converter understands of an FX graph (spec §2, §5).

The converter works on any FX-traceable CNN built from Conv2d / ConvTranspose2d / AvgPool2d /
ReLU / BatchNorm2d (folded) / ``torch.cat`` on channels / identities. This module classifies
nodes, refuses anything else with an error that names the node and says what to change, and
propagates channel counts so concatenation parts get exact channel ranges.
"""
from __future__ import annotations

import operator

import torch
from torch import fx, nn

SYNAPTIC_TYPES = (nn.Conv2d, nn.ConvTranspose2d)
POOL_TYPES = (nn.AvgPool2d,)
IDENTITY_TYPES = (nn.Identity, nn.Dropout, nn.Dropout2d)
CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}


class UnsupportedGraphError(ValueError):
    """The ANN contains an operation that has no faithful spiking counterpart here."""


_ADVICE = {
    nn.MaxPool2d: "MaxPool2d has no exact spiking equivalent; use nn.AvgPool2d and retrain",
    nn.BatchNorm2d: "a BatchNorm2d that does not directly follow a Conv2d with a single user cannot be folded",
}


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def kind_of(gm: fx.GraphModule, node: fx.Node, neuron_types: tuple[type, ...] = ()) -> str:
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "call_module":
        m = module_of(gm, node)
        if neuron_types and isinstance(m, neuron_types):
            return "neuron"
        if isinstance(m, SYNAPTIC_TYPES):
            return "synaptic"
        if type(m) is nn.ReLU:
            return "relu"
        if isinstance(m, POOL_TYPES):
            return "pool"
        if isinstance(m, IDENTITY_TYPES):
            return "identity"
        return "other"
    if node.op == "call_function" and node.target in CAT_FUNCTIONS:
        return "cat"
    if node.op == "call_method" and node.target == "contiguous":
        return "identity"
    return "other"


def cat_parts(node: fx.Node) -> list[fx.Node]:
    parts = node.args[0] if node.args else node.kwargs["tensors"]
    return list(parts)


def cat_dim(node: fx.Node) -> int:
    if len(node.args) > 1:
        return int(node.args[1])
    return int(node.kwargs.get("dim", 0))


def check_supported(gm: fx.GraphModule) -> None:
    """Raise :class:`UnsupportedGraphError` naming the first node the converter cannot handle."""
    for node in gm.graph.nodes:
        k = kind_of(gm, node)
        where = f"node {node.name!r} ({node.op} {node.target})"
        if k == "other":
            m = module_of(gm, node)
            if m is not None:
                advice = _ADVICE.get(type(m))
                if advice is None and isinstance(m, nn.Module) and "activation" in type(m).__module__:
                    advice = f"{type(m).__name__} is not ReLU: only ReLU maps onto spike rates; retrain with nn.ReLU"
                advice = advice or f"{type(m).__name__} is not one of Conv2d, ConvTranspose2d, AvgPool2d, ReLU, BatchNorm2d"
            elif node.target in (operator.add, torch.add, operator.iadd):
                advice = "adding two spike paths is not supported; join paths with torch.cat instead"
            elif node.target in (torch.relu, nn.functional.relu):
                advice = "use an nn.ReLU module instead of the functional relu so it can be replaced by a neuron"
            else:
                advice = "only modules Conv2d/ConvTranspose2d/AvgPool2d/ReLU/BatchNorm2d and torch.cat are supported"
            raise UnsupportedGraphError(f"cannot convert {where}: {advice}.")
        if k == "cat" and cat_dim(node) not in (1, -3):
            raise UnsupportedGraphError(
                f"cannot convert {where}: concatenation along dim {cat_dim(node)}; only the channel "
                "dimension (dim=1) is supported")
        if k == "synaptic":
            m = module_of(gm, node)
            if m.groups != 1:
                raise UnsupportedGraphError(f"cannot convert {where}: grouped convolutions are not supported")
            users = list(node.users)
            if any(kind_of(gm, u) == "relu" for u in users) and len(users) > 1:
                raise UnsupportedGraphError(
                    f"cannot convert {where}: its output feeds a ReLU and also other nodes "
                    f"({', '.join(u.name for u in users)}); in an SNN only the spikes leave a neuron layer")
        if k == "relu":
            src = node.args[0]
            if kind_of(gm, src) != "synaptic":
                raise UnsupportedGraphError(
                    f"cannot convert {where}: a ReLU must directly follow a Conv2d/ConvTranspose2d "
                    f"(its input is {src.name!r})")


def relu_user(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The ReLU node fed by synaptic ``node``, if any."""
    for u in node.users:
        if kind_of(gm, u) == "relu":
            return u
    return None


def channel_counts(gm: fx.GraphModule, in_channels: int) -> dict[str, int]:
    """Channel count of every tensor node, propagated without running the graph."""
    ch: dict[str, int] = {}
    for node in gm.graph.nodes:
        k = kind_of(gm, node)
        if k == "input":
            ch[node.name] = in_channels
        elif k == "synaptic":
            ch[node.name] = module_of(gm, node).out_channels
        elif k == "cat":
            ch[node.name] = sum(ch[p.name] for p in cat_parts(node))
        elif k in ("relu", "pool", "identity", "neuron") or (k == "other" and node.op != "get_attr"):
            if node.args and isinstance(node.args[0], fx.Node) and node.args[0].name in ch:
                ch[node.name] = ch[node.args[0].name]
    return ch
