"""Why a model cannot be converted (spec §11): blockers, their messages and the model's source lines.

A :class:`Blocker` is one reason: the node, the model's source line that created it
(:func:`source_line`), a short label and the cause with its remedy. :func:`find_blockers` finds
every root cause left in a canonical graph — shape arithmetic, constants and reshapes that only
feed a refused op are not reported again — and :func:`check_supported` raises them all at once in
one :class:`~sjunet.errors.UnsupportedGraphError`: a summary line (:func:`refusal_message`), then one
line per blocker. Tracing and the rewrites add the blockers they meet to the same list, so a model
gets every blocker in one refusal. A new refusal (an op sjunet cannot convert, with its remedy) is a
case of :func:`_refusal` or an entry of :data:`_REMEDY`.

Source lines are found by identity, not by name: a frame is the library's own when its file lies
inside the installed directories of sjunet's packages (``sjunet``, ``sjunet.cli``,
``sjunet.calibration``, ``sjunet.benchmarks`` — separate folders, see setup.cfg), torch or
SpikingJelly (resolved paths); the model's line is the last frame outside them, wherever the
model's code lives (even under a folder named ``sjunet`` or ``torch``).
"""
from __future__ import annotations

import functools
import importlib.util
import operator
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

from sjunet.errors import UnsupportedGraphError
from sjunet.graph.kinds import AVG_POOL_TYPES, MAX_POOL_TYPES, cat_dim, kind_of, module_of, target_name, tensor_inputs
from sjunet.layers import dims


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


#: the packages whose frames are the library's, not the model's (sjunet's four installed folders; einops,
#: whose ``rearrange`` a model calls as it calls torch)
LIBRARY_PACKAGES = ("sjunet", "sjunet.cli", "sjunet.calibration", "sjunet.benchmarks", "torch", "spikingjelly",
                    "einops")
_FRAME = re.compile(r'File "(.+)", line \d+')


@functools.lru_cache(maxsize=1)
def library_dirs() -> tuple[Path, ...]:
    """The resolved directories of :data:`LIBRARY_PACKAGES` (those installed)."""
    found: list[Path] = []
    for name in LIBRARY_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for d in (spec.submodule_search_locations or []) if spec is not None else []:
            found.append(Path(d).resolve())
    return tuple(found)


@functools.lru_cache(maxsize=4096)
def is_library_file(filename: str) -> bool:
    """Whether ``filename`` (a traceback frame's) lies inside one of :func:`library_dirs`."""
    path = Path(filename)
    if not path.is_absolute():
        return False  # generated code (``<string>``), never a library file on disk
    try:
        path = path.resolve()
    except (OSError, RuntimeError):
        return False
    return any(path.is_relative_to(d) for d in library_dirs())


def _is_library_frame(location: str) -> bool:
    m = _FRAME.match(location)
    return m is not None and is_library_file(m.group(1))


def frame_line(frames: Iterable[traceback.FrameSummary]) -> str:
    """The model's line among ``frames`` (a traceback's or the current stack's): the last one whose
    file is not inside sjunet, torch or SpikingJelly, as `` (path, line N, in f: code)`` — the form of
    :func:`source_line` — or ``""`` when every frame is the library's."""
    user = [f for f in frames if f.filename and not is_library_file(f.filename)]
    if not user:
        return ""
    f = user[-1]
    loc = f.filename.split("site-packages/", 1)[1] if "site-packages/" in f.filename else f.filename
    return f" ({loc}, line {f.lineno}, in {f.name}: {(f.line or '').strip()})"


def caller_line() -> str:
    """The model's line that is running now (:func:`frame_line` of the current stack)."""
    return frame_line(traceback.extract_stack()[:-1])


def source_line(node: fx.Node) -> str:
    """The model's source line that created ``node``: the last frame of its stack trace whose file is
    not inside sjunet, torch or SpikingJelly (:func:`is_library_file`), as `` (path, line N, in f: code)``."""
    lines = (node.stack_trace or "").strip().splitlines()
    frames = [(lines[i].strip(), lines[i + 1].strip()) for i in range(len(lines) - 1)
              if lines[i].strip().startswith("File ")]
    user = [f for f in frames if not _is_library_frame(f[0])]
    if not user:
        return ""
    loc, code = user[-1]
    loc = loc.replace("File ", "").replace('"', "")
    if "site-packages/" in loc:  # an installed package: its path from the package on
        loc = loc.split("site-packages/", 1)[1]
    return f" ({loc}: {code})"


_REMEDY = {
    "InstanceNorm2d": "sjunet converts instance/group/layer norm written as nn.InstanceNorm2d/3d, nn.GroupNorm, "
                      "nn.LayerNorm, or F.instance_norm / F.group_norm / F.layer_norm with the model's own weights; "
                      "write it so",
    "GroupNorm": "it is converted as nn.GroupNorm / F.group_norm with the model's own weights; write it so",
    "LocalResponseNorm": "it divides by input-dependent values; remove it and retrain",
    "MultiheadAttention": "nn.MultiheadAttention is one fused module whose products sjunet does not open; write the "
                          "attention with nn.Linear, matmul / einsum and softmax (as MONAI's SABlock does): those "
                          "convert (Σ-Δ product and softmax neurons)",
}
_REMEDY["InstanceNorm3d"] = _REMEDY["InstanceNorm2d"]
#: where a missing activation goes: one line of the Σ-Δ table
_TABLE = ("it is not in the Σ-Δ table (sjunet.neurons.sigma_delta_functions.FUNCTIONS: SiLU, GELU, ELU, CELU, SELU, "
          "sigmoid, tanh, hardswish, hardsigmoid, Mish, softplus, softmax, layer norm); a new function is one line "
          "there plus its test")


_SIGMOID_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid}
_PRODUCT_FUNCTIONS = {operator.mul, operator.imul, torch.mul, torch.matmul, operator.matmul, torch.bmm, torch.einsum,
                      torch.baddbmm, torch.mm}
_PRODUCT_METHODS = {"mul", "mul_", "matmul", "bmm", "mm"}
_PLUMBING_FUNCTIONS = {torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze,
                       operator.getitem, getattr, torch.chunk, torch.split, torch.unbind, torch.t}
_PLUMBING_METHODS = {"view", "reshape", "flatten", "transpose", "permute", "squeeze", "unsqueeze", "expand",
                     "expand_as", "view_as", "reshape_as", "chunk", "split", "unbind", "contiguous", "to", "type",
                     "type_as", "float", "size", "dim", "repeat", "unflatten", "t"}


def _is_product(n: fx.Node) -> bool:
    return ((n.op == "call_function" and n.target in _PRODUCT_FUNCTIONS)
            or (n.op == "call_method" and n.target in _PRODUCT_METHODS))


def _is_plumbing(n: fx.Node) -> bool:
    """Reshaping, indexing and type plumbing: refused, but reported only where nothing else explains it."""
    return ((n.op == "call_function" and n.target in _PLUMBING_FUNCTIONS)
            or (n.op == "call_method" and n.target in _PLUMBING_METHODS) or n.op == "get_attr")


def _is_constant(gm: fx.GraphModule, a) -> bool:
    return not isinstance(a, fx.Node) or a.op == "get_attr" or kind_of(gm, a) == "shape"


def _blocker(node: fx.Node, label: str, detail: str) -> Blocker:
    return Blocker(node.name, f"{node.op} {target_name(node.target)}", source_line(node), label, detail)


def _refusal(gm: fx.GraphModule, node: fx.Node) -> Blocker:
    """Why ``node`` (of kind ``other``) cannot be converted, and what to do."""
    m = module_of(gm, node)
    if m is not None:
        name = type(m).__name__
        if name in _REMEDY:
            return _blocker(node, name, f"{name} — {_REMEDY[name]}.")
        if isinstance(m, nn.Hardtanh):
            return _blocker(node, f"Hardtanh({m.min_val}, {m.max_val})", f"Hardtanh({m.min_val}, {m.max_val}) — "
                            "only Hardtanh(0, a) is a (capped) ReLU.")
        nd = dims.module_dims(m)
        if nd is not None and nd not in dims.SUPPORTED:
            return _blocker(node, name, f"{name} — {nd}-D signals are not supported (2-D images and 3-D volumes: "
                            "Conv2d/3d, ConvTranspose2d/3d are).")
        return _blocker(node, name, f"{name} is not one of Conv2d/3d, ConvTranspose2d/3d, BatchNorm2d/3d, ReLU, "
                        "AvgPool2d/3d, MaxPool2d/3d, adaptive average pooling, Upsample, padding, Dropout/Identity, "
                        "cat or add — replace it or retrain.")
    t = target_name(node.target)
    if node.op == "get_attr":
        return _blocker(node, "constant tensor", f"the constant tensor {node.target!r} is used as an activation; "
                        "only convolution weights and BatchNorm statistics are understood as constants")
    if _is_product(node):
        return _blocker(node, f"product ({t})", f"{t} of activations that sjunet could not read as a product of two "
                        "activations (or of an activation and a constant number): a Σ-Δ product neuron takes two "
                        "inputs; write it as a * b, matmul or a two-operand einsum.")
    for key, label in (("gelu", "GELU"), ("silu", "SiLU"), ("elu", "ELU"), ("mish", "Mish"), ("tanh", "Tanh"),
                       ("sigmoid", "Sigmoid"), ("softmax", "Softmax"), ("layer_norm", "LayerNorm"),
                       ("group_norm", "GroupNorm"), ("instance_norm", "InstanceNorm2d"), ("log_softmax", "LogSoftmax")):
        if key in t.lower():
            if label in _REMEDY:
                return _blocker(node, label, f"{t} ({label}): {_REMEDY[label]}.")
            return _blocker(node, label, f"{t} with arguments sjunet could not read as constants (a dimension, a "
                            "weight computed from values); give them as constants.")
    if node.target is operator.getitem:
        return _blocker(node, "indexing", "indexing activations with indices computed from values, or indexing the "
                        "batch, has no fixed spiking graph; index with constant ints and slices that keep the batch")
    if node.target in (operator.truediv, torch.div) or t in ("div", "truediv"):
        return _blocker(node, "division by an activation", f"dividing by an activation: {_TABLE}.")
    if node.target in (operator.sub, torch.sub) or t in ("sub", "rsub"):
        return _blocker(node, "subtracting from a constant", "a constant minus an activation; write it as "
                        "-(x - c) or fold the sign into the next layer's weights.")
    if _is_plumbing(node):
        return _blocker(node, f"reshaping ({t})", f"{t} of activations with sizes or indices sjunet could not read "
                        "as constants on the example input, or moving the batch into another dimension; keep the "
                        "batch in one dimension")
    return _blocker(node, t, f"{t} is not one of the operations sjunet converts (convolutions, Linear, norms, ReLU and "
                    f"the Σ-Δ table's activations, products of two activations, pooling, interpolation, padding, "
                    f"reshaping and indexing, cat, add); {_TABLE}.")


def _check_node(gm: fx.GraphModule, node: fx.Node, shapey: set) -> tuple[Blocker | None, bool]:
    """(the blocker of ``node`` or None, whether it is plumbing: reported only as a root cause)."""
    k = kind_of(gm, node)
    if k == "other" and node in shapey:
        k = "shape"
    if k == "other":
        if node.op == "get_attr":
            return _refusal(gm, node), True
        return _refusal(gm, node), _is_plumbing(node)
    if k == "shape":
        return _blocker(node, "shape arithmetic", "it computes with tensor shapes in a way sjunet cannot follow "
                        "(only padding, interpolation and pooling sizes are specialised on the example shape, "
                        "and interpolation to another tensor's size, `size=t.shape[-2:]`)"), True
    if k == "cat" and node.op == "call_function" and cat_dim(node) == 0:
        return _blocker(node, "cat along dim 0", "concatenation along dim 0 (the batch) mixes samples; concatenate "
                        "along a feature dimension"), False
    if k == "add":
        ins = tensor_inputs(node)
        if len(ins) != 2 or len(node.args) != 2 or node.kwargs or any(_is_constant(gm, a) for a in ins):
            return _blocker(node, "adding computed values", "only the sum of two activation tensors is a join, and "
                            "only a constant tensor or number can be added as a bias; this adds values computed from "
                            "shapes"), False
    if k == "output":
        outs = node.args[0]
        if not isinstance(outs, fx.Node):
            return _blocker(node, "several outputs", f"the network returns {type(outs).__name__}; sjunet converts "
                            "models with one output tensor (drop deep-supervision heads before converting)"), False
    if k in ("synaptic", "pool", "maxpool") and node.op == "call_module":
        m = module_of(gm, node)
        name = type(m).__name__
        if isinstance(m, AVG_POOL_TYPES) and m.divisor_override is not None:
            return _blocker(node, f"{name}(divisor_override)", f"{name}(divisor_override=...) is not "
                            "supported"), False
        if isinstance(m, MAX_POOL_TYPES) and m.return_indices:
            return _blocker(node, f"{name}(return_indices)", f"{name}(return_indices=True) is not supported"), False
    if k in ("relu", "synaptic", "pool", "maxpool", "resample", "pad", "affine", "cat", "sigma", "product", "plumbing",
             "constant", "scale"):
        for a in tensor_inputs(node):
            if isinstance(a, fx.Node) and (a.op == "get_attr" or kind_of(gm, a) == "shape" or a in shapey):
                if k == "cat":
                    return _blocker(node, "constant in a cat", f"its input {a.name!r} is a constant tensor made from "
                                    "shapes, not activations; of constants only zero channels (`torch.zeros`, a "
                                    "zero-padded shortcut) are understood — write it so, or use a convolution"), False
                return _blocker(node, "input from shapes", f"its input {a.name!r} is computed from shapes (or is a "
                                "constant tensor), not activations"), False
    return None, False


def _is_metadata(node: fx.Node) -> bool:
    """``t.device`` / ``t.dtype``: what a tensor factory sized from shapes is also given (MONAI)."""
    return node.op == "call_function" and node.target is getattr and node.args[1:] in (("device",), ("dtype",))


def find_blockers(gm: fx.GraphModule, known: Iterable[Blocker] = ()) -> list[Blocker]:
    """Every root cause that keeps ``gm`` from being converted (nodes named in ``known`` were
    reported by an earlier step). Refused nodes joined to each other form groups; a group with a
    real cause (an activation function, a product, a norm…) reports those, and its plumbing —
    shapes, constants, reshapes feeding or fed by them — is not reported again."""
    known_names = {b.node for b in known}
    refused: dict[fx.Node, Blocker | None] = {}
    plumbing: set[fx.Node] = set()
    shapey: set[fx.Node] = set()  # shapes, tensor metadata, and what is computed from them alone (constants)
    for node in gm.graph.nodes:
        if kind_of(gm, node) == "shape" or _is_metadata(node) or (
                node.op in ("call_function", "call_method") and all(a in shapey for a in node.all_input_nodes)):
            shapey.add(node)
        if node.name in known_names:
            refused[node] = None
            continue
        b, plumb = _check_node(gm, node, shapey)
        if b is not None:
            refused[node] = b
            if plumb:
                plumbing.add(node)
    parent = {n: n for n in refused}

    def root(n):
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for n in refused:
        for a in n.all_input_nodes:
            if a in refused:
                parent[root(a)] = root(n)
    groups: dict[fx.Node, list[fx.Node]] = {}
    for n in refused:
        groups.setdefault(root(n), []).append(n)
    picked: set[fx.Node] = set()
    for members in groups.values():
        real = [n for n in members if n not in plumbing]
        if real:
            picked.update(real)
            continue
        tensors = [n for n in members if n.op != "get_attr" and kind_of(gm, n) != "shape"]
        first = [n for n in tensors if not any(a in refused and a in tensors for a in n.all_input_nodes)]
        picked.update(first or [n for n in members if not any(a in refused for a in n.all_input_nodes)] or members[:1])
    return [refused[n] for n in gm.graph.nodes if n in picked and refused.get(n) is not None]


MAX_LISTED = 40  #: blockers listed one per line in a refusal (the summary counts all)


def refusal_message(model: str, blockers: list[Blocker]) -> str:
    """One summary line (``cannot convert X: N blockers: …``) and one line per blocker."""
    counts: dict[str, int] = {}
    for b in blockers:
        counts[b.label] = counts.get(b.label, 0) + 1
    summary = ", ".join(f"{k} ×{v}" if v > 1 else k for k, v in counts.items())
    n = len(blockers)
    lines = [f"cannot convert {model}: {n} blocker{'s' if n != 1 else ''}: {summary}"]
    lines += [f"  - {b.line()}" for b in blockers[:MAX_LISTED]]
    if n > MAX_LISTED:
        lines.append(f"  - … and {n - MAX_LISTED} more like the above")
    return "\n".join(lines)


def all_blockers(gm: fx.GraphModule, known: Iterable[Blocker] = ()) -> list[Blocker]:
    """``known`` (found by earlier steps: tracing, rewriting, calibration's approximation gap) and
    every other blocker of ``gm`` (:func:`find_blockers`), in graph order."""
    known = list(known)
    blockers = known + find_blockers(gm, known)
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    return sorted(blockers, key=lambda b: order.get(b.node, -1))


def check_supported(gm: fx.GraphModule, model: str | None = None, known: Iterable[Blocker] = ()) -> None:
    """Raise one :class:`UnsupportedGraphError` listing every blocker of ``gm`` (and ``known``,
    found by earlier steps: tracing, rewriting, the approximation gap) — node, source line, cause and remedy."""
    blockers = all_blockers(gm, known)
    if blockers:
        raise UnsupportedGraphError(refusal_message(model or type(gm).__name__, blockers))
