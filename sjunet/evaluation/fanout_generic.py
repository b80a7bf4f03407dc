"""Fan-out where the spatial layout ends (issue 26): sources whose spikes travel through token
tensors — reshapes, permutations, indexing, ``nn.Linear``, Σ-Δ product inputs — and the synaptic
layers fed by graded (non-spike) currents.

The exact counter (:mod:`sjunet.evaluation.fanout`) composes per-axis reachability matrices, which needs every
stage on a path to act separately on H and W. A reshape of ``[C, H, W]`` into tokens, a permutation
or a ``Linear`` over the last dimension does not; for a source whose walk meets one, the fan-out of
each of its elements is counted here, backwards from the sinks:

* a spike that reaches a **sink** (a neuron — Σ-Δ product inputs included —, the network output)
  through no synaptic layer costs one accumulate per element it reaches (an identity edge);
* a spike that reaches a **synaptic layer** (Conv, ConvTranspose, Linear) costs one accumulate per
  synapse of that layer it reaches: the layer with all weights set to one, differentiated at its
  input (its vector-Jacobian product with ones counts exactly the outputs each input reaches), is
  the count. That layer is *terminal* here: the spikes' work ends in its synapses;
* in between, index stages (reshape, permute, index, repeat, roll), joins (add, cat) and constant
  additions route the count back by their own vector-Jacobian product (an element copied twice counts
  twice: two synapse sets); per-axis stages (interpolation, padding, pooling) route it through their
  reachability matrices, as the exact counter does;
* what a terminal layer's output feeds without a neuron in between — another synaptic layer — is
  no longer spikes: it is a **graded** current (a transformer's residual stream, a decoder fed by
  tokens). Those layers are evaluated every step on graded values: :func:`graded_layers` lists them
  and energy counts their MACs at every step (a MAC-cost operation in every convention).

The exact counter stays the one used wherever it applies (every convolutional path), so figures of
the U-Nets sjunet converted before do not change.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import fx, nn

from sjunet.layers import dims


def full_shapes(gm: fx.GraphModule, input_shape) -> dict[str, tuple[int, ...]]:
    """The full shape (batch of one included, wherever it sits) of every tensor node of ``gm`` in
    single-step mode, on the ``meta`` device; ``input_shape`` is ``(C, *spatial)`` or ``(B, C, *spatial)``."""
    from spikingjelly.activation_based import functional

    from sjunet.graph.record import Recorder

    shape = tuple(int(s) for s in input_shape)[-(dims.spatial_dims(gm) + 1):]
    m = copy.deepcopy(gm)
    functional.reset_net(m)
    functional.set_step_mode(m, "s")
    m = m.to("meta")
    out: dict[str, tuple[int, ...]] = {}

    def keep(name, value):
        if isinstance(value, torch.Tensor):
            out[name] = tuple(value.shape)

    with torch.no_grad():
        Recorder(m, keep).run(torch.zeros((1, *shape), device="meta"))
    return out


def _structural(m: nn.Module) -> nn.Module:
    """A copy of synaptic layer ``m`` with every weight one and no bias."""
    s = copy.deepcopy(m).to("cpu", torch.float64)
    if hasattr(s, "step_mode"):
        s.step_mode = "s"
    with torch.no_grad():
        s.weight.fill_(1.0)
        if getattr(s, "bias", None) is not None:
            s.bias = None
    return s


def _vjp(fn: Callable, inputs: list[torch.Tensor], wrt: list[int], grad: torch.Tensor) -> torch.Tensor:
    xs = [x.detach().clone().requires_grad_(i in wrt) for i, x in enumerate(inputs)]
    with torch.enable_grad():
        out = fn(*xs)
        grads = torch.autograd.grad(out, [xs[i] for i in wrt], grad, allow_unused=True)
    total = None
    for g in grads:
        if g is not None:
            total = g if total is None else total + g
    return total if total is not None else torch.zeros_like(inputs[wrt[0]])


def element_fanout(gm: fx.GraphModule, source: fx.Node, shapes: dict[str, tuple[int, ...]],
                   classify: Callable[[fx.Node, fx.Node], str],
                   apply: Callable[[fx.Node, list], torch.Tensor]) -> tuple[torch.Tensor, set[str]]:
    """Synapses (and identity-edge accumulates) per element of ``source``'s output, full shape at a
    batch of one, and the terminal synaptic layers reached (module docstring).

    ``classify(u, v)`` (``u`` a user of ``v``): ``"sink"`` (a neuron, the output), ``"compare"`` (a
    spiking max-pool: a spike entering it reaches no synapse), ``"synaptic"``, ``"skip"`` (reads only
    ``v``'s shape) or ``"stage"`` (anything routed by its own vector-Jacobian product); ``apply(u, inputs)`` runs stage ``u`` on tensors standing for its node
    inputs (float64, CPU), structurally where its own weights would scale the count (gains)."""
    cone, stack = [], [source]
    seen = {source}
    while stack:
        v = stack.pop()
        for u in v.users:
            if u in seen or classify(u, v) != "stage":
                continue
            seen.add(u)
            cone.append(u)
            stack.append(u)
    order = [n for n in gm.graph.nodes if n is source or n in seen]
    counts: dict[fx.Node, torch.Tensor] = {}
    terminals: set[str] = set()
    for v in reversed(order):
        c = torch.zeros(shapes[v.name], dtype=torch.float64)
        for u in v.users:
            kind = classify(u, v)
            if kind == "sink":
                c += 1.0
            elif kind == "synaptic":
                m = gm.get_submodule(u.target)
                layer = _structural(getattr(m, "layer", m))
                c += _vjp(layer, [torch.zeros(shapes[v.name], dtype=torch.float64)], [0],
                          torch.ones(shapes[u.name], dtype=torch.float64))
                terminals.add(u.target)
            elif kind == "stage" and u in counts:
                args = [a for a in u.args if isinstance(a, fx.Node)]
                inputs = [torch.zeros(shapes[a.name], dtype=torch.float64) for a in args]
                wrt = [i for i, a in enumerate(args) if a is v]
                c += _vjp(lambda *xs: apply(u, list(xs)), inputs, wrt, counts[u])
        counts[v] = c
    return counts[source], terminals


def graded_layers(gm: fx.GraphModule, starts: set[str], classify: Callable[[fx.Node, fx.Node], str]) -> list[fx.Node]:
    """The synaptic layers fed by the outputs of the layers ``starts`` (module paths) through no
    neuron: evaluated on graded currents every step (module docstring)."""
    out, seen = [], set()
    stack = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in starts]
    while stack:
        v = stack.pop()
        for u in v.users:
            if u in seen:
                continue
            seen.add(u)
            kind = classify(u, v)
            if kind == "synaptic":
                out.append(u)
                stack.append(u)
            elif kind == "stage":
                stack.append(u)
    return [n for n in gm.graph.nodes if n in set(out)]
