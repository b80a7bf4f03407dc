"""What :mod:`sjunet.graph` (tracing, kinds, checks) and :mod:`sjunet.canonical` (rewrites) both
need, in a leaf module so neither imports the other both ways: the synaptic layer types, a
:class:`Blocker` (one reason a model cannot convert), the model's source line of a node
(:func:`_where`), a call target's name and a node's module."""
from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn

from sjunet import dims

#: the synaptic layers of the spatial dimensionalities converted (:data:`sjunet.dims.SUPPORTED`)
SYNAPTIC_TYPES = tuple(dims.layer(op, nd) for nd in dims.SUPPORTED for op in ("conv", "conv_t"))


@dataclass
class Blocker:
    """One reason a model cannot be converted: the node, the model's source line, a short label
    (for the summary) and the cause with its remedy."""

    node: str
    op: str
    where: str
    label: str
    detail: str

    def line(self) -> str:
        return f"node {self.node!r} ({self.op}){self.where}: {self.detail}"


def _where(node: fx.Node) -> str:
    """The model's source line that created ``node`` (the last frame outside torch and sjunet)."""
    lines = (node.stack_trace or "").strip().splitlines()
    frames = [(lines[i].strip(), lines[i + 1].strip()) for i in range(len(lines) - 1)
              if lines[i].strip().startswith("File ")]
    user = [f for f in frames if "/torch/" not in f[0] and "/sjunet/" not in f[0]]
    if not user:
        return ""
    loc, code = user[-1]
    loc = loc.replace("File ", "").replace('"', "")
    if "site-packages/" in loc:  # an installed package: its path from the package on
        loc = loc.split("site-packages/", 1)[1]
    return f" ({loc}: {code})"


def _target_name(target) -> str:
    return getattr(target, "__name__", str(target))


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


__all__ = ["SYNAPTIC_TYPES", "Blocker", "module_of"]
