"""One recorder (spec §5): run a graph and hand every node's output to a callback — calibration's
statistics, the shapes energy counting and the size rule need, the activations plots draw."""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import torch
from torch import fx

from sjunet.layers import dims


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
    """``(C, H, W)`` (volumes: ``(C, D, H, W)``) of every tensor node of ``gm`` (single-step mode)
    for one input of shape ``input_shape`` (``(C, *spatial)`` or ``(B, C, *spatial)``; the number
    of spatial axes is the graph's own, :func:`sjunet.layers.dims.spatial_dims`), computed on the ``meta``
    device."""
    shape = tuple(int(s) for s in input_shape)[-(dims.spatial_dims(gm) + 1):]
    m = copy.deepcopy(gm).to("meta")
    shapes: dict[str, tuple[int, ...]] = {}

    def keep(name, value):
        if isinstance(value, torch.Tensor):
            shapes[name] = tuple(value.shape[1:])

    Recorder(m, keep).run(torch.zeros((1, *shape), device="meta"))
    return shapes
