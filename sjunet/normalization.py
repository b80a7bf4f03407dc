"""Weight normalization for conversion (paper §3.3, Eq. 7–8; spec §5). Pure: graph + statistics → scales.

Every tensor in the SNN carries a per-channel *unit* u: an SNN value v stands for the ANN value
u·v. The input has u = 1 (static coding, λ_input = 1). A synaptic layer l with weights W, bias
b, whose output feeds a ReLU with calibrated scale λ^l, becomes

    W̃[:, c] = W[:, c] · a_c / λ^l,     b̃ = b / λ^l

where a_c is the unit the converter *assumes* for input channel c:

* **connection-wise** (Eq. 8): a_c is the true unit of channel c — for a concatenation, part j's
  channels get λ_j^(l−1), with exact channel ranges for any number and sizes of parts (for
  ConvTranspose2d the input channels are weight dim 0);
* **layer-wise** (Eq. 7): a_c = λ^(l−1) of the input tensor taken as one tensor — for a
  concatenated input the percentile of the concatenation as a whole, so the parts whose true
  unit differs are mis-scaled (the error connection-wise removes).

Linear stages get no neuron: AvgPool passes its input's unit through; a synaptic layer not
followed by a ReLU keeps its weights, b̃ = b / λ_in, and its output carries λ_in (spec §5; if its
input units differ across channels, its own calibrated percentile is used instead). The output
layer (feeding the graph output) gets W̃ = W · a, b̃ = b, so its output is in ANN units.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

from sjunet.calibration.store import CalibrationStats
from sjunet.graph import cat_parts, kind_of, module_of, relu_user

NORMS = ("layer", "connection")


@dataclass
class PartScale:
    """One concatenation part as seen by a synaptic layer's input channels."""

    source: str
    start: int
    stop: int
    true_unit: float
    assumed_unit: float


@dataclass
class LayerScaling:
    """How one synaptic layer's weights are rescaled."""

    name: str
    role: str  # 'neuron' (followed by a ReLU → neuron) | 'linear' | 'output'
    in_units: torch.Tensor = field(repr=False)  # assumed unit per input channel (a_c)
    out_unit: float  # λ^l (1.0 for the output layer)
    parts: list[PartScale] = field(default_factory=list)
    relu: str | None = None


@dataclass
class NormalizationPlan:
    method: str
    layers: dict[str, LayerScaling]
    units: dict[str, torch.Tensor] = field(repr=False)  # true unit per channel of every tensor node


def _uniform(t: torch.Tensor) -> bool:
    return bool(torch.all(t == t[0]))


def plan_normalization(gm: fx.GraphModule, stats: CalibrationStats, method: str = "connection") -> NormalizationPlan:
    """Compute per-layer, per-part scale factors for ``gm`` (BN already folded)."""
    if method not in NORMS:
        raise ValueError(f"unknown normalization {method!r}; choose one of {NORMS}")
    units: dict[str, torch.Tensor] = {}
    layers: dict[str, LayerScaling] = {}
    for node in gm.graph.nodes:
        k = kind_of(gm, node)
        if k == "input":
            c = stats.nodes[node.name].channels if node.name in stats.nodes else 1
            units[node.name] = torch.ones(c, dtype=torch.float64)
        elif k == "synaptic":
            m = module_of(gm, node)
            src = node.args[0]
            true_in = units[src.name]
            if true_in.numel() != m.in_channels:
                raise ValueError(f"channel bookkeeping failed at {node.name}: "
                                 f"{true_in.numel()} units for {m.in_channels} input channels")
            if method == "layer" and kind_of(gm, src) == "cat":
                assumed = torch.full_like(true_in, stats.scale(src.name))
            else:
                assumed = true_in.clone()
            parts = _parts_of(gm, src, units, assumed)
            relu = relu_user(gm, node)
            if relu is not None:
                role, out = "neuron", stats.scale(relu.name)
            elif any(u.op == "output" for u in node.users):
                role, out = "output", 1.0
            else:
                role = "linear"
                out = float(assumed[0]) if _uniform(assumed) else stats.scale(node.name)
            layers[node.name] = LayerScaling(node.name, role, assumed, out, parts, relu.name if relu else None)
            units[node.name] = torch.full((m.out_channels,), out, dtype=torch.float64)
        elif k in ("relu", "pool", "identity"):
            units[node.name] = units[node.args[0].name]
        elif k == "cat":
            units[node.name] = torch.cat([units[p.name] for p in cat_parts(node)])
    return NormalizationPlan(method, layers, units)


def _parts_of(gm, src, units, assumed) -> list[PartScale]:
    if kind_of(gm, src) != "cat":
        u = units[src.name]
        return [PartScale(src.name, 0, u.numel(), float(u[0]), float(assumed[0]))]
    out, start = [], 0
    for p in cat_parts(src):
        n = units[p.name].numel()
        out.append(PartScale(p.name, start, start + n, float(units[p.name][0]), float(assumed[start])))
        start += n
    return out


def apply_plan(gm: fx.GraphModule, plan: NormalizationPlan) -> None:
    """Rescale the synaptic layers of ``gm`` in place according to ``plan``."""
    for name, ls in plan.layers.items():
        node = next(n for n in gm.graph.nodes if n.name == name)
        m = module_of(gm, node)
        scale_weight_inputs(m, ls.in_units / ls.out_unit)
        if m.bias is not None and ls.role != "output":
            m.bias.data /= ls.out_unit


def scale_weight_inputs(m: nn.Module, factor: torch.Tensor) -> None:
    """Multiply the weights of ``m`` per *input* channel (dim 1 for Conv2d, dim 0 for ConvTranspose2d)."""
    f = factor.to(m.weight.dtype)
    if isinstance(m, nn.ConvTranspose2d):
        m.weight.data *= f.view(-1, 1, 1, 1)
    else:
        m.weight.data *= f.view(1, -1, 1, 1)
