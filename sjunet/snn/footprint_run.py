"""The memory of one run of a graph that :func:`sjunet.snn.footprint.plan` does not model (the token
plumbing and Σ-Δ products of spec §15: reshapes, permutes, index crops, repeats, Linear layers,
products of two activations), known before anything is allocated: the rebuilt network runs one step
on the ``meta`` device, where every operation computes its output's shape and allocates nothing —
a crafted ``Repeat`` or ``Reshape`` asks for its terabytes there and is refused by the budget
(:func:`sjunet.snn.footprint.check_budget`), not by the machine.

The copy that runs shares no tensor with the network (its parameters and buffers are replaced by
``meta`` tensors of the same shapes before the copy, so nothing is duplicated) and runs as
:func:`sjunet.snn.simulate` runs a step (single-step mode, reused step buffers). A dispatch mode
counts every tensor an operation creates while it lives (Python frees a ``meta`` tensor when it
would free a real one): the step's peak, less the state the modules keep between steps (the
neurons' membranes and running sums, the step buffers), is the step's live memory; with the state
and the decoded output it makes the :class:`~sjunet.snn.footprint.Plan`, as
:func:`~sjunet.snn.footprint.plan` gives for a U-Net. On the trained MONAI AttentionUnet at 512²
it is 769 MiB where the real step's operations hold 845 MiB at their peak and the process's
resident set grows by 660 MiB.
"""
from __future__ import annotations

import copy
import math
import weakref
from typing import Sequence

import torch
from spikingjelly.activation_based import functional
from torch import fx, nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from sjunet.layers.buffers import streaming

from sjunet.snn.footprint import ELEMENT_BYTES, Plan


def _meta_copy(net: nn.Module) -> nn.Module:
    memo: dict = {}
    for t in list(net.parameters()) + list(net.buffers()):
        m = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(m, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else m
    probe = copy.deepcopy(net, memo).to("meta")
    for m in probe.modules():
        if getattr(m, "compiled", False):
            m.compiled = False  # eager kernels: nothing to compile for shapes
    return probe


def _state_elements(net: nn.Module) -> int:
    """Elements of the tensors the modules keep between steps (SpikingJelly memories, plain tensor
    attributes such as reused output buffers), parameters and registered buffers aside."""
    seen: set[int] = set()
    total = 0
    for m in net.modules():
        values = list(vars(m).values()) + list(getattr(m, "_memories", {}).values())
        for v in values:
            for t in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(t, torch.Tensor) and id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel()
    return total


class _Peak(TorchDispatchMode):
    """Counts the bytes of every tensor an operation creates (views and in-place results aside) while
    it lives, and their peak: Python frees a ``meta`` tensor when a real one would be freed."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {id(t) for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and id(t) not in given and not t._is_view():
                n = t.numel() * t.element_size()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out


def run_plan(net: fx.GraphModule, input_shape: Sequence[int]) -> Plan:
    """The :class:`~sjunet.snn.footprint.Plan` of one step of ``net`` on one input of shape
    ``(C, *spatial)``, measured on the ``meta`` device (module docstring). Where the step stops
    there (an operation with no ``meta`` kernel, a value read back into Python, a graph that cannot
    run), the plan is of what ran before: a lower bound, which still refuses a crafted size there."""
    shape = tuple(int(v) for v in input_shape)
    probe = _meta_copy(net)
    order = {n: i for i, n in enumerate(probe.graph.nodes)}
    last_use = {a: order[n] for n in order for a in n.all_input_nodes}
    sizes: dict[fx.Node, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    kinds: dict[str, str] = {}
    largest = ["input", math.prod(shape)]
    count = {"live": largest[1], "peak": largest[1]}

    class _Run(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.op == "output":
                if isinstance(out, torch.Tensor):
                    shapes["__output__"] = tuple(out.shape[1:])
                return out
            if isinstance(out, torch.Tensor):
                per = out.numel()
                shapes[n.name], sizes[n] = tuple(out.shape[1:]), per
                if n.op == "call_module":
                    kinds[n.name] = type(self.module.get_submodule(n.target)).__name__
                if per > largest[1]:
                    largest[:] = [n.name, per]
                count["live"] += per
                count["peak"] = max(count["peak"], count["live"])
            for a in n.all_input_nodes:  # the input is held for every step
                if last_use[a] == order[n] and a.op != "placeholder" and a in sizes:
                    count["live"] -= sizes[a]
            return out

    x = torch.empty((1, *shape), device="meta")
    peak = _Peak()
    try:
        with torch.no_grad(), streaming(probe), peak:  # as simulate runs it: reused step buffers kept
            functional.set_step_mode(probe, "s")
            y = _Run(probe).run(x)
            acc = y + 0.0  # noqa: F841 - simulate's accumulated output, live at the step's end
    except Exception:  # noqa: BLE001 - no meta kernel, a value read back, or a graph that cannot run: what
        pass  # ran so far bounds the run from below (a crafted tensor before the failure is counted)
    state = _state_elements(probe)
    # one step's peak, as simulate runs it: every tensor the step's operations held at once (a module's
    # temporaries, the reused step buffers), less the state, or the graph's live outputs if larger
    live = max(count["peak"], peak.peak // ELEMENT_BYTES - state)
    return Plan(shape, shapes, (largest[0], largest[1]), live, state, 0, kinds)


__all__ = ["run_plan"]
