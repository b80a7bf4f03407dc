"""Weight normalization for conversion (paper §3.3, Eq. 7–8; spec §5, §11). Pure: canonical graph +
statistics → a :class:`NormalizationPlan`.

Every tensor of the SNN carries a per-channel *unit* u: an SNN value v stands for the ANN value
u·v. The network input has u = 1 (static coding). A neuron that replaces a ReLU with calibrated
scale λ (for ``ReLU6``/``Hardtanh(0, a)`` at most a over the neuron's largest output per step,
so saturation is the clip) needs its input in unit λ, since its
threshold 1 stands for λ; the graph output needs unit 1 (ANN units). Those are the *demands*.

A synaptic layer l (Conv2d / ConvTranspose2d) with weights W, bias b becomes

    W̃[:, c] = W[:, c] · a_c / u_l,     b̃ = b / u_l                                   (Eq. 7/8)

where a_c is the unit the layer *assumes* for its input channel c and u_l its output unit:

* **connection-wise** (Eq. 8, :func:`connection_wise_units`): a_c is the true unit of channel c —
  for a concatenation, part j's channels get λ_j, with exact channel ranges for any number and
  size of parts (for ConvTranspose2d the input channels are weight dim 0);
* **layer-wise** (Eq. 7, :func:`layer_wise_units`): one scale per input tensor — a_c = the
  calibrated percentile of the input tensor taken as a whole whenever its true units differ
  across channels (a concatenation), so those parts are mis-scaled (the error Eq. 8 removes).

The output unit u_l is the demand of the layer's only consumer, *folded* into its weights: λ of
the ReLU it feeds, 1 for the output layer, the unit of the ``add`` it feeds (a residual join:
each summand's terminal layer is folded with its own input units and the join's unit, spec §11).
A norm's centring (:class:`~sjunet.layers.stages.Center`) keeps its input's unit, made uniform within
each group by a gain where it is not (:meth:`_Planner.center_unit`); its fixed deviation and affine
are a per-channel affine stage, folded like a lone BatchNorm.
Demands pass through per-channel stages that commute with a positive scale (AvgPool, MaxPool,
interpolation, padding). A layer with several consumers, or none that demands, is a *linear
stage*: it keeps its input's unit (b̃ = b / u_in) when that unit is uniform, else its own
percentile. A lone BatchNorm (a per-channel affine stage) is folded the same way.

Where a demand meets a tensor that cannot fold it — a neuron output used directly by a join (an
identity shortcut), a stage with several consumers — the plan inserts an explicit **gain** on that
edge, true unit / demanded unit per channel (a diagonal synapse: one accumulate per spike).

An ``add`` not followed by a ReLU is a linear join: its unit is chosen so that no gain is needed
where possible (the unit of its first summand that cannot fold), else its own percentile.

**Σ-Δ neurons and plumbing** (spec §15). An activation neuron's output unit is λ_out, the calibrated
scale of its output (|f| where f is signed); its input is summed, never quantised, so it takes the
unit its input has (``in_scale``, per channel where that differs) and only *prefers* its input's own
percentile, which a synaptic layer feeding it alone folds (role ``sigma``). A product neuron's output
unit is its own percentile, its inputs' units are read (``a_scale``, ``b_scale``; a gain makes one
uniform first). Plumbing (reshape, permute, index, repeat, roll) and constant additions keep their
input's unit, uniform (a gain to its largest channel unit first where it is not: their dimensions are
not channels), and pass demands through; a constant is divided by that unit (a bias current); a
multiplication by a constant number scales the unit instead (no stage in the SNN for a positive one).
``nn.Linear`` is a synaptic layer over the last dimension, whose input unit is uniform (a gain first
where it is not). A concatenation along another dimension than 1 joins parts of one uniform unit (gains
to the largest).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import fx, nn

from sjunet.calibration.store import CalibrationStats
from sjunet.graph import (PASS_KINDS, cat_dim, cat_parts, data_users, kind_of, module_of, relu_cap, tensor_inputs,
                          tensor_shapes)

NORMS = ("layer", "connection")
FOLDABLE = ("synaptic", "affine")
#: stages whose input unit must be uniform (their dimensions are not channels): a gain first where not
UNIFORM_KINDS = ("plumbing", "constant", "product")
#: stages a demand passes through (with a uniform unit)
THROUGH_KINDS = (*PASS_KINDS, "plumbing", "constant")


@dataclass
class PartScale:
    """A run of input channels [start, stop) of a synaptic layer with one true and one assumed unit."""

    source: str
    start: int
    stop: int
    true_unit: float
    assumed_unit: float


@dataclass
class LayerScaling:
    """How one synaptic layer's weights are rescaled; ``role``: 'neuron' (feeds a neuron), 'join'
    (folded into a residual add), 'output', 'linear'."""

    name: str
    role: str
    in_units: torch.Tensor = field(repr=False)  # assumed unit per input channel (a_c)
    out_unit: float
    parts: list[PartScale] = field(default_factory=list)
    relu: str | None = None


@dataclass
class Gain:
    """An explicit per-channel gain on the edge ``source`` → ``consumer``."""

    source: str
    consumer: str
    gain: torch.Tensor = field(repr=False)


@dataclass
class NormalizationPlan:
    method: str
    layers: dict[str, LayerScaling]
    units: dict[str, torch.Tensor] = field(repr=False)  # true unit per channel of every tensor node
    gains: list[Gain] = field(default_factory=list)
    affines: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)  # in/out units
    neurons: dict[str, float] = field(default_factory=dict)  # ReLU node -> λ (capped)
    caps: dict[str, float] = field(default_factory=dict)  # ReLU node -> its cap a (ReLU6, Hardtanh(0, a))
    #: Σ-Δ activation node -> (its input's unit per channel, λ_out, the function's name)
    sigma: dict[str, tuple[torch.Tensor, float, str]] = field(default_factory=dict, repr=False)
    #: Σ-Δ product node -> (λ_a, λ_b, λ_out, the product's op)
    products: dict[str, tuple[float, float, float, str]] = field(default_factory=dict)
    #: constant-addition node -> the unit its constant is divided by
    constants: dict[str, float] = field(default_factory=dict)


def _uniform(t: torch.Tensor) -> bool:
    return bool(torch.all(t == t[0]))


def connection_wise_units(true_units: torch.Tensor, input_scale: Callable[[], float]) -> torch.Tensor:
    """Eq. 8: a synaptic layer assumes the true unit of every input channel."""
    return true_units.clone()


def layer_wise_units(true_units: torch.Tensor, input_scale: Callable[[], float]) -> torch.Tensor:
    """Eq. 7: a synaptic layer assumes one unit for its input tensor — its own calibrated
    percentile when the true units differ across channels (a concatenation)."""
    if _uniform(true_units):
        return true_units.clone()
    return torch.full_like(true_units, input_scale())


ASSUMED_UNITS = {"connection": connection_wise_units, "layer": layer_wise_units}


class _Planner:
    def __init__(self, gm: fx.GraphModule, stats: CalibrationStats, method: str, shapes: dict,
                 max_output: "float | Callable[[str], float]" = 1.0) -> None:
        self.gm, self.stats, self.method, self.shapes = gm, stats, method, shapes
        self.max_output = max_output
        self.kinds = {n: kind_of(gm, n) for n in gm.graph.nodes}
        self.units: dict[fx.Node, torch.Tensor] = {}

    def channels(self, n: fx.Node) -> int:
        return int(self.shapes[n.name][0])

    def lam(self, relu: fx.Node) -> float:
        lam = self.stats.scale(relu.name)
        cap = relu_cap(module_of(self.gm, relu))
        if cap is None:
            return lam
        top = self.max_output(relu.name) if callable(self.max_output) else self.max_output
        return min(lam, cap / top)

    def single_user(self, n: fx.Node) -> fx.Node | None:
        users = data_users(self.gm, n)
        return users[0] if len(users) == 1 else None

    def pushable(self, n: fx.Node) -> bool:
        """Whether a demand on ``n`` is met by folding (no gain): a single-user foldable layer or
        join, or a single-user per-channel stage over such a node."""
        if self.single_user(n) is None:
            return False
        k = self.kinds[n]
        if k in FOLDABLE or k == "add":
            return True
        return k in THROUGH_KINDS and self.pushable(n.args[0])

    def consumer_demand(self, c: fx.Node) -> tuple[float, str, str | None] | None:
        """(unit, role, relu) that consumer ``c`` demands of its input, or None."""
        k = self.kinds[c]
        if k == "relu":
            return self.lam(c), "neuron", c.name
        if k == "output":
            return 1.0, "output", None
        if k == "add":
            return self.add_unit(c), "join", None
        if k == "sigma":  # its input's own percentile, where calibration recorded it
            src = c.args[0].name
            return (self.stats.scale(src), "sigma", None) if src in self.stats.nodes else None
        if k in THROUGH_KINDS:
            u = self.single_user(c)
            return self.consumer_demand(u) if u is not None else None
        return None

    def demand(self, n: fx.Node) -> tuple[float, str, str | None] | None:
        u = self.single_user(n)
        return self.consumer_demand(u) if u is not None else None

    def add_unit(self, a: fx.Node) -> float:
        d = self.demand(a)
        if d is not None:
            return d[0]
        for s in tensor_inputs(a):
            if not self.pushable(s):
                u = self.unit(s)
                if _uniform(u):
                    return float(u[0])
        return self.stats.scale(a.name)

    def assumed(self, n: fx.Node) -> torch.Tensor:
        src = n.args[0]
        m = module_of(self.gm, n)
        if isinstance(m, nn.Linear):  # over the last dimension: one unit (a gain first where not uniform)
            return torch.full((m.in_features,), float(self.unit(src).max()), dtype=torch.float64)
        return ASSUMED_UNITS[self.method](self.unit(src), lambda: self.stats.scale(src.name))

    def rank(self, n: fx.Node) -> int:
        return len(self.shapes[n.name]) + 1

    def channel_cat(self, n: fx.Node) -> bool:
        """A concatenation along dim 1 (per-channel units concatenated), not along another dimension."""
        return cat_dim(n) % self.rank(n) == 1 if n.op == "call_function" else True

    def uniform_input(self, n: fx.Node) -> float:
        """The uniform unit a stage of :data:`UNIFORM_KINDS` takes: its input's largest."""
        return float(self.unit(n.args[0]).max())

    def unit(self, n: fx.Node) -> torch.Tensor:
        if n in self.units:
            return self.units[n]
        k = self.kinds[n]
        if k == "input":
            u = torch.ones(self.channels(n), dtype=torch.float64)
        elif k in FOLDABLE:
            d = self.demand(n)
            if d is not None:
                u = torch.full((self.channels(n),), d[0], dtype=torch.float64)
            elif k == "affine":
                u = self.unit(n.args[0])
            else:
                a = self.assumed(n)
                out = float(a[0]) if _uniform(a) else self.stats.scale(n.name)
                u = torch.full((self.channels(n),), out, dtype=torch.float64)
        elif k == "relu":
            u = torch.full((self.channels(n),), self.lam(n), dtype=torch.float64)
        elif k in ("sigma", "product"):
            u = torch.full((self.channels(n),), self.stats.scale(n.name), dtype=torch.float64)
        elif k in ("plumbing", "constant"):
            u = torch.full((self.channels(n),), self.uniform_input(n), dtype=torch.float64)
        elif k == "scale":
            u = self.unit(n.args[0]) * abs(module_of(self.gm, n).factor)
        elif k == "add":
            u = torch.full((self.channels(n),), self.add_unit(n), dtype=torch.float64)
        elif k in PASS_KINDS:
            u = self.unit(n.args[0])
        elif k == "center":
            u = self.center_unit(n)
        elif k == "cat" and self.channel_cat(n):
            u = torch.cat([self.unit(p) for p in cat_parts(n)])
        elif k == "cat":  # along another dimension: one unit, the parts' largest
            top = max(float(self.unit(p).max()) for p in cat_parts(n))
            u = torch.full((self.channels(n),), top, dtype=torch.float64)
        else:
            raise ValueError(f"node {n.name!r} ({k}) carries no unit")
        self.units[n] = u
        return u

    def parts(self, n: fx.Node, assumed: torch.Tensor) -> list[PartScale]:
        src = n.args[0]
        if isinstance(module_of(self.gm, n), nn.Linear):
            return [PartScale(src.name, 0, assumed.numel(), float(assumed[0]), float(assumed[0]))]
        pieces = [(p, self.unit(p)) for p in cat_parts(src)] if self.kinds[src] == "cat" else [(src, self.unit(src))]
        out, start = [], 0
        for p, u in pieces:
            i = 0
            while i < u.numel():
                j = i
                while j + 1 < u.numel() and u[j + 1] == u[i] and assumed[start + j + 1] == assumed[start + i]:
                    j += 1
                out.append(PartScale(p.name, start + i, start + j + 1, float(u[i]), float(assumed[start + i])))
                i = j + 1
            start += u.numel()
        return out

    def center_unit(self, n: fx.Node) -> torch.Tensor:
        """The unit of a :class:`~sjunet.layers.stages.Center` stage: its input's, which must be uniform within
        each group (the mean mixes the group's channels); where it is not (a concatenation of parts of
        different units), the group's largest, reached by a gain on the edge into the stage."""
        u = self.unit(n.args[0])
        groups = module_of(self.gm, n).groups
        g = u.view(groups, -1)
        return g.max(1, keepdim=True).values.expand_as(g).reshape(-1).clone()

    def plan(self) -> NormalizationPlan:
        layers, gains, affines, neurons, caps = {}, [], {}, {}, {}
        sigma, products, constants = {}, {}, {}
        for n in self.gm.graph.nodes:
            k = self.kinds[n]
            if k in ("shape", "output"):
                pass
            else:
                self.unit(n)
            if k == "synaptic":
                m = module_of(self.gm, n)
                a = self.assumed(n)
                if a.numel() != getattr(m, "in_channels", getattr(m, "in_features", None)):
                    raise ValueError(f"channel bookkeeping failed at {n.name}: {a.numel()} units for "
                                     f"{m.in_channels} input channels")
                d = self.demand(n)
                role, relu = (d[1], d[2]) if d is not None else ("linear", None)
                layers[n.name] = LayerScaling(n.name, role, a, float(self.units[n][0]), self.parts(n, a), relu)
            elif k == "affine":
                affines[n.name] = (self.unit(n.args[0]), self.units[n])
            elif k == "relu":
                neurons[n.name] = self.lam(n)
                cap = relu_cap(module_of(self.gm, n))
                if cap is not None:
                    caps[n.name] = cap
            elif k == "sigma":
                sigma[n.name] = (self.unit(n.args[0]), float(self.units[n][0]), module_of(self.gm, n).function)
            elif k == "product":
                a, b = tensor_inputs(n)
                products[n.name] = (float(self.unit(a).max()), float(self.unit(b).max()), float(self.units[n][0]),
                                    module_of(self.gm, n).op)
            elif k == "constant":
                constants[n.name] = float(self.units[n][0])
            if k in UNIFORM_KINDS or (k == "synaptic" and isinstance(module_of(self.gm, n), nn.Linear)) or (
                    k == "cat" and not self.channel_cat(n)):  # uniform inputs: a gain to the largest where not
                for p in tensor_inputs(n):
                    actual = self.unit(p)
                    top = float(actual.max()) if k != "cat" else float(self.units[n][0])
                    if not torch.allclose(actual, torch.full_like(actual, top), rtol=1e-12, atol=0):
                        gains.append(Gain(p.name, n.name, actual / top))
            if k == "center":  # a unit not uniform within a group: a gain before the centring
                actual = self.unit(n.args[0])
                if not torch.equal(actual, self.units[n]):
                    gains.append(Gain(n.args[0].name, n.name, actual / self.units[n]))
            if k in ("relu", "output", "add"):
                required = (self.lam(n) if k == "relu" else 1.0 if k == "output" else self.add_unit(n))
                for p in tensor_inputs(n):
                    actual = self.unit(p)
                    if not torch.allclose(actual, torch.full_like(actual, required), rtol=1e-12, atol=0):
                        gains.append(Gain(p.name, n.name, actual / required))
        return NormalizationPlan(self.method, layers, {n.name: u for n, u in self.units.items()}, gains,
                                 affines, neurons, caps, sigma, products, constants)


def plan_normalization(gm: fx.GraphModule, stats: CalibrationStats, method: str = "connection",
                       shapes: dict[str, tuple[int, ...]] | None = None,
                       max_output: "float | Callable[[str], float]" = 1.0) -> NormalizationPlan:
    """Compute units, per-layer and per-part scale factors and edge gains for the canonical graph
    ``gm`` (BN folded; :func:`sjunet.graph.canonical.canonical_graph`).

    ``max_output``: the neurons' largest output per step in normalised units (the sum of the
    threshold ladder: 3.75 for the paper's MT ladder, 1 for IF), or a function of the ReLU node's
    name giving it per layer (per-layer ladders). A capped ReLU (``ReLU6``, ``Hardtanh(0, a)``) gets
    λ = min(percentile, a / max_output), so a saturated neuron outputs exactly the cap a."""
    if method not in NORMS:
        raise ValueError(f"unknown normalization {method!r}; choose one of {NORMS}")
    if shapes is None:
        shape = stats.data.get("input_shape")
        if not shape:
            raise ValueError("the statistics do not record the input shape; re-run `sjunet calibrate`")
        shapes = tensor_shapes(gm, shape)
    return _Planner(gm, stats, method, shapes, max_output).plan()


def apply_plan(gm: fx.GraphModule, plan: NormalizationPlan) -> None:
    """Rescale the synaptic layers and affine stages of ``gm`` in place according to ``plan``
    (gains are inserted by the recipe)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    for name, ls in plan.layers.items():
        m = module_of(gm, nodes[name])
        scale_weight_inputs(m, ls.in_units / ls.out_unit)
        if m.bias is not None:
            m.bias.data /= ls.out_unit
    for name, (u_in, u_out) in plan.affines.items():
        m = module_of(gm, nodes[name])
        m.scale.data *= (u_in / u_out).to(m.scale.dtype)
        if m.shift is not None:
            m.shift.data /= u_out.to(m.shift.dtype)
    for name, unit in plan.constants.items():  # a bias current, in the unit of the tensor it is added to
        m = module_of(gm, nodes[name])
        m.constant.data /= unit


def scale_weight_inputs(m: nn.Module, factor: torch.Tensor) -> None:
    """Multiply the weights of ``m`` per *input* channel (dim 1 for Conv2d/3d — per group — and
    Linear, dim 0 for ConvTranspose2d/3d)."""
    f = factor.to(m.weight.dtype)
    w = m.weight.data
    if isinstance(m, nn.Linear):
        w *= f.view(1, -1)
        return
    ones = [1] * (w.dim() - 2)  # the kernel's spatial axes
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        w *= f.view(-1, 1, *ones)
    else:
        g = m.groups
        w.copy_((w.view(g, w.shape[0] // g, w.shape[1], *w.shape[2:]) * f.view(g, 1, -1, *ones)).view_as(w))
