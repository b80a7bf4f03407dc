"""The SNN file: tensors + a plain record that rebuilds the graph (no code runs from a file).

An SNN file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file. Its tensors are the
SNN's ``state_dict`` (rescaled weights, biases, gains); its metadata holds one JSON record under
the key ``sjunet``:

* ``kind`` (``"sjunet-snn"``) and ``format`` (:data:`FORMAT`);
* ``graph`` — the converted network's FX graph as data (:func:`graph_spec`): the nodes (op,
  target, arguments referring to other nodes by name) and every module as a type name from a fixed
  vocabulary (Conv2d/3d, ConvTranspose2d/3d, AvgPool2d/3d, the stages of :mod:`sjunet.layers.stages`, the neurons
  of :data:`sjunet.neurons.registry.NEURON_TYPES`, the static input synapse) with its constructor arguments.
  Loading builds those modules, the graph, SpikingJelly's step-mode adaptation, and loads the
  tensors (:func:`build_graph`); a MONAI or smp U-Net's SNN loads without MONAI or smp installed;
* ``conversion`` (options, the normalization plan's summary, fingerprints of the ANN and the
  statistics), ``model`` (the architecture it came from: sjunet config or ``--arch`` factory and
  kwargs — information, never imported on load), ``task``, ``provenance``, ``finetune`` …;
* ``content_sha256`` — a hash over the tensors and the rest of the record, verified on load:
  a flipped bit in a weight or a threshold is refused.

The hash is unkeyed, so :func:`load` also checks the record itself as data before building anything
(bounded JSON size and nesting, the node vocabulary, every module argument's type and range, and
every parameter's shape against the file's tensors on the ``meta`` device); anything else is
refused with one line naming the file.
"""
from __future__ import annotations

import json
import keyword
import math
import operator
import os
from pathlib import Path
from typing import Any

import torch
from spikingjelly.activation_based.ann2snn.recipes.step_mode_adapters import (
    _RATE_CODING_STATELESS_MODULE_TYPES,
    _StepModeTensorOp,
    adapt_step_mode_graph,
)
from torch import fx, nn

from sjunet.io import SNN_KIND, ArtifactError, is_safetensors, jsonable, nonfinite, tensor_digest, write_bytes_atomic
from sjunet.layers.stages import ChannelAffine, Concat
from sjunet.neurons import NEURON_TYPES, StaticInputSynapse, is_neuron
from sjunet.snn.record import (BAD_ARG_NAMES, BUILD_ERRORS, IDENT, MAX_CAT_PARTS, MAX_DEPTH, MAX_NAME, MAX_NODES,
                               MAX_PARAMS, MAX_RECORD_CHARS, NODE_KEYS, NODE_OPS, SEGMENT, STAGES, SUB_RESERVED,
                               TOP_RESERVED, check_ladder_record, check_module, construct, first_line, short_repr)
from sjunet.snn.shapes import TOKEN_TYPES, check_record, spatial_dims

FORMAT = "sjunet-snn/2"

_FUNCTIONS = {"torch.cat": torch.cat, "operator.add": operator.add}
_FUNCTION_NAMES = {v: k for k, v in _FUNCTIONS.items()}


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def module_spec(m: nn.Module) -> dict:
    """``{"type": name, "args": {...}}`` of a module of the SNN vocabulary (module docstring)."""
    if isinstance(m, StaticInputSynapse):
        return {"type": "StaticInputSynapse", "args": {"layer": module_spec(m.layer)}}
    if is_neuron(m):
        name = type(m).__name__
        if NEURON_TYPES.get(name) is not type(m):
            raise ArtifactError(f"neuron type {name} is not registered in sjunet.neurons.NEURON_TYPES")
        return {"type": name, "args": m.spec()}
    if isinstance(m, ChannelAffine):
        return {"type": "ChannelAffine", "args": m.spec()}
    if type(m).__name__ in STAGES and isinstance(m, STAGES[type(m).__name__]):
        return {"type": type(m).__name__, "args": m.spec()}
    if isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return {"type": f"ConvTranspose{len(m.kernel_size)}d", "args": dict(
            in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=_plain(m.kernel_size),
            stride=_plain(m.stride), padding=_plain(m.padding), output_padding=_plain(m.output_padding),
            groups=m.groups, bias=m.bias is not None, dilation=_plain(m.dilation), padding_mode=m.padding_mode)}
    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        return {"type": f"Conv{len(m.kernel_size)}d", "args": dict(
            in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=_plain(m.kernel_size),
            stride=_plain(m.stride), padding=_plain(m.padding), dilation=_plain(m.dilation), groups=m.groups,
            bias=m.bias is not None, padding_mode=m.padding_mode)}
    if isinstance(m, nn.Linear):
        return {"type": "Linear", "args": dict(in_features=m.in_features, out_features=m.out_features,
                                               bias=m.bias is not None)}
    if isinstance(m, (nn.AvgPool2d, nn.AvgPool3d)):
        return {"type": "AvgPool2d" if isinstance(m, nn.AvgPool2d) else "AvgPool3d", "args": dict(
            kernel_size=_plain(m.kernel_size), stride=_plain(m.stride), padding=_plain(m.padding),
            ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad)}
    raise ArtifactError(f"cannot save a {type(m).__name__} module in an SNN file")


def _enc(a: Any) -> Any:
    if isinstance(a, fx.Node):
        return {"node": a.name}
    if isinstance(a, tuple):
        return {"tuple": [_enc(v) for v in a]}
    if isinstance(a, list):
        return [_enc(v) for v in a]
    if isinstance(a, dict):
        return {"dict": {k: _enc(v) for k, v in a.items()}}
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    raise ArtifactError(f"cannot store argument {a!r} in an SNN file")


def graph_spec(gm: fx.GraphModule) -> dict:
    """The graph of ``gm`` (before step-mode adaptation) as plain data."""
    nodes, modules = [], {}
    for n in gm.graph.nodes:
        entry = {"name": n.name, "op": n.op, "args": _enc(n.args), "kwargs": _enc(dict(n.kwargs))}
        if n.op == "call_module":
            entry["target"] = n.target
            modules[n.target] = module_spec(gm.get_submodule(n.target))
        elif n.op == "call_function":
            if n.target not in _FUNCTION_NAMES:
                raise ArtifactError(f"cannot save function node {n.name!r} ({n.target}) in an SNN file")
            entry["target"] = _FUNCTION_NAMES[n.target]
        elif n.op in ("placeholder", "output"):
            entry["target"] = n.target
        else:
            raise ArtifactError(f"cannot save node {n.name!r} ({n.op}) in an SNN file")
        nodes.append(entry)
    return {"nodes": nodes, "modules": modules}


def _ref(a: Any, env: dict, what: str) -> str:
    """The name of an earlier node that ``a`` (``{"node": name}``) refers to."""
    if not (isinstance(a, dict) and set(a) == {"node"} and isinstance(a["node"], str)):
        raise ArtifactError(f"{what}: expected a node reference, got {short_repr(a)}")
    if a["node"] not in env:
        raise ArtifactError(f"{what}: refers to an unknown (or later) node {short_repr(a['node'])}")
    return a["node"]


def _wrapped(a: Any, key: str, kind: type, what: str) -> Any:
    if not (isinstance(a, dict) and set(a) == {key} and isinstance(a[key], kind)):
        raise ArtifactError(f"{what} must be {{{key!r}: ...}}, got {short_repr(a)}")
    return a[key]


def _decode(a: Any, env: dict[str, fx.Node]) -> Any:
    """An argument checked by :func:`_check_graph`: node references, tuples, lists and scalars."""
    if isinstance(a, dict):
        if "node" in a:
            return env[a["node"]]
        return tuple(_decode(v, env) for v in a["tuple"])
    if isinstance(a, list):
        return [_decode(v, env) for v in a]
    return a


def _check_path(p: Any, modules: dict) -> None:
    if not isinstance(p, str) or not 0 < len(p) <= MAX_NAME:
        raise ArtifactError(f"module path {short_repr(p)} is not a name of 1..{MAX_NAME} characters")
    parts = p.split(".")
    for i, seg in enumerate(parts):
        if not SEGMENT.match(seg) or seg in (TOP_RESERVED if i == 0 else SUB_RESERVED):
            raise ArtifactError(f"module path {p!r}: {seg!r} is not an allowed module name")
        if i < len(parts) - 1 and ".".join(parts[:i + 1]) in modules:
            raise ArtifactError(f"module path {p!r} lies inside module {'.'.join(parts[:i + 1])!r}")


def check_graph(spec: Any) -> tuple[list[dict], dict[str, tuple[str, dict]]]:
    """Check the graph record as data: its nodes (vocabulary, references to earlier nodes only, one
    input, one output) and modules (:func:`check_module`). Returns the nodes and checked modules."""
    if not isinstance(spec, dict) or set(spec) != {"nodes", "modules"}:
        raise ArtifactError("the graph record must be an object with 'nodes' and 'modules'")
    nodes, mspecs = spec["nodes"], spec["modules"]
    if not isinstance(nodes, list) or not 2 <= len(nodes) <= MAX_NODES:
        raise ArtifactError(f"the graph must list 2..{MAX_NODES} nodes, got "
                            f"{f'{len(nodes)} nodes' if isinstance(nodes, list) else short_repr(nodes)}")
    if not isinstance(mspecs, dict) or len(mspecs) > MAX_NODES:
        raise ArtifactError(f"the graph's modules must be an object of at most {MAX_NODES} entries")
    modules = {}
    for p, ms in mspecs.items():
        _check_path(p, mspecs)
        modules[p] = check_module(ms, f"module {p!r}")
    nd = spatial_dims(modules)
    tokens = any(t in TOKEN_TYPES for t, _ in modules.values())  # a token graph (spec §15) joins other axes too
    env: dict[str, str] = {}  # node name -> op
    called = set()
    for i, e in enumerate(nodes):
        what = f"graph node #{i}"
        if not isinstance(e, dict) or set(e) != NODE_KEYS:
            raise ArtifactError(f"{what} must be an object with keys {', '.join(sorted(NODE_KEYS))}")
        name, op, target = e["name"], e["op"], e["target"]
        if not isinstance(name, str) or len(name) > MAX_NAME or not IDENT.match(name):
            raise ArtifactError(f"{what}: the name {short_repr(name)} is not an identifier")
        if name in env:
            raise ArtifactError(f"{what}: duplicate node name {name!r}")
        what = f"graph node {name!r}"
        if op not in NODE_OPS:
            raise ArtifactError(f"{what}: op {short_repr(op)} is not allowed in an SNN file")
        args = _wrapped(e["args"], "tuple", list, f"{what}: args")
        kwargs = _wrapped(e["kwargs"], "dict", dict, f"{what}: kwargs")
        if (op == "placeholder") != (i == 0) or (op == "output") != (i == len(nodes) - 1):
            raise ArtifactError(f"{what}: the graph must be one input (first), computations, one output (last); "
                                f"found {op!r} at position {i}")
        if op == "placeholder":
            if args or kwargs:
                raise ArtifactError(f"{what}: the input node takes no arguments")
            if (not isinstance(target, str) or len(target) > MAX_NAME or not IDENT.match(target)
                    or keyword.iskeyword(target) or target in BAD_ARG_NAMES):
                raise ArtifactError(f"{what}: the input name {short_repr(target)} is not an allowed identifier")
        elif op == "output":
            if target != "output" or kwargs or len(args) != 1:
                raise ArtifactError(f"{what}: the output node must return one node")
            _ref(args[0], env, what)
        elif op == "call_module":
            if not isinstance(target, str) or target not in modules:
                raise ArtifactError(f"{what} calls an undeclared module {short_repr(target)}")
            most = 2 if modules[target][0] in ("Resample", "SigmaDeltaProduct") else 1
            if modules[target][0] == "SigmaDeltaProduct" and len(args) != 2:
                raise ArtifactError(f"{what}: a product neuron takes two node arguments")
            if kwargs or not 1 <= len(args) <= most:
                raise ArtifactError(f"{what}: module {target!r} ({modules[target][0]}) takes "
                                    f"{'one or two node arguments' if most == 2 else 'one node argument'}")
            for a in args:
                _ref(a, env, what)
            called.add(target)
        elif target == "torch.cat":
            _check_cat(args, kwargs, env, what, nd, tokens)
        elif target == "operator.add":
            if kwargs or len(args) != 2:
                raise ArtifactError(f"{what}: operator.add takes exactly two node arguments")
            for a in args:
                _ref(a, env, what)
        else:
            raise ArtifactError(f"{what} calls a function outside the vocabulary: {short_repr(target)}")
        env[name] = op
    unused = sorted(set(modules) - called)
    if unused:
        raise ArtifactError(f"module {unused[0]!r} is declared but no graph node calls it")
    return nodes, modules


def _check_cat(args: list, kwargs: dict, env: dict, what: str, nd: int = 2, tokens: bool = False) -> None:
    """``torch.cat(parts[, dim])``: parts a list (or tuple) of 1..MAX_CAT_PARTS node references,
    dim the channel dimension (1, or -3 for 4-D image batches, -4 for 5-D volume batches: a
    converted U-Net joins along channels only)."""
    allowed = {"dim"} if args else {"tensors", "dim"}
    if len(args) > 2 or set(kwargs) - allowed or (len(args) == 2 and "dim" in kwargs) or not (args or "tensors" in kwargs):
        raise ArtifactError(f"{what}: torch.cat takes a list of nodes and a dim, got {len(args)} arguments and "
                            f"keywords {sorted(map(str, kwargs))[:4]}")
    parts = args[0] if args else kwargs["tensors"]
    if isinstance(parts, dict) and set(parts) == {"tuple"}:
        parts = parts["tuple"]
    if not isinstance(parts, list) or not 1 <= len(parts) <= MAX_CAT_PARTS:
        raise ArtifactError(f"{what}: torch.cat needs a list of 1..{MAX_CAT_PARTS} nodes, got {short_repr(parts)}")
    for a in parts:
        _ref(a, env, what)
    dim = args[1] if len(args) == 2 else kwargs.get("dim", 0)
    kind = "5-D volume batches [B, C, D, H, W]" if nd == 3 else "4-D image batches [B, C, H, W]"
    if tokens:  # token tensors (spec §15) may join along another axis (channels-last: -1)
        if type(dim) is not int or not -(nd + 2) <= dim < nd + 2:
            raise ArtifactError(f"{what}: torch.cat dim must be an axis of the network's tensors, {-(nd + 2)}..{nd + 1} "
                                f"({kind}), got {short_repr(dim)}")
    elif type(dim) is not int or dim not in (1, -(nd + 1)):
        raise ArtifactError(f"{what}: torch.cat dim must be the channel dimension, 1 or {-(nd + 1)} ({kind}: a "
                            f"converted U-Net joins along channels), got {short_repr(dim)}")


def _meta_check(modules: dict[str, tuple[str, dict]], shapes: dict[str, tuple[int, ...]] | None) -> None:
    """Build every module on the meta device (nothing allocated) and check its parameters and
    buffers: with ``shapes`` (the file's tensors) they must be exactly those names, with fitting
    shapes; without, their total size is bounded by :data:`MAX_PARAMS`. Modules of the same spec
    (and tensor shapes) are checked once."""
    owned: dict[str, dict[str, tuple]] = {}
    for key, shape in (shapes or {}).items():
        parts = key.split(".")
        for i in range(1, len(parts)):
            p = ".".join(parts[:i])
            if p in modules:
                owned.setdefault(p, {})[".".join(parts[i:])] = shape
                break
        else:
            raise ArtifactError(f"the file holds tensor {short_repr(key)}, which no module of the graph has")
    checked: dict[str, int] = {}  # spec and shapes -> parameter elements
    total = 0
    for p, (t, args) in modules.items():
        given = owned.get(p, {})
        key = json.dumps([t, args, sorted(given.items())], sort_keys=True)
        if key not in checked:
            with torch.device("meta"):
                m = _built(t, args, p)
            expected = m.state_dict()
            if shapes is not None:
                missing, extra = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
                if missing:
                    raise ArtifactError(f"module {p!r} ({t}) needs tensor '{p}.{missing[0]}', which the file lacks")
                if extra:
                    raise ArtifactError(f"the file holds tensor {short_repr(p + '.' + extra[0])}, which module {p!r} "
                                        f"({t}) does not have")
                try:
                    m.load_state_dict({k: torch.empty(s, device="meta") for k, s in given.items()}, strict=True)
                except BUILD_ERRORS as e:
                    raise ArtifactError(f"module {p!r}: the file's tensors do not fit it ({first_line(e)})") from None
            checked[key] = sum(v.numel() for v in expected.values())
        total += checked[key]
        if shapes is None and total > MAX_PARAMS:
            raise ArtifactError(f"the graph asks for more than {MAX_PARAMS} parameter elements")


def build_graph(spec: dict, tensors: dict[str, torch.Tensor] | None = None) -> fx.GraphModule:
    """Rebuild the (pre-adaptation) GraphModule of a :func:`graph_spec`; no code from the file runs.

    The record is checked as data first (:func:`_check_graph`); the modules are built on the meta
    device and, with ``tensors`` (the file's), their parameters and buffers must be exactly those
    tensors' names and shapes (without, their total size is bounded) — only then is anything
    built for real (:func:`_meta_check`). Any problem raises one-line :class:`ArtifactError`.
    """
    try:
        nodes, modules = check_graph(spec)
        _meta_check(modules, None if tensors is None else {k: tuple(v.shape) for k, v in tensors.items()})
        built = {p: _built(t, args, p) for p, (t, args) in modules.items()}
        g, env = fx.Graph(), {}
        for e in nodes:
            op = e["op"]
            target = _FUNCTIONS[e["target"]] if op == "call_function" else e["target"]
            args = tuple(_decode(a, env) for a in e["args"]["tuple"])
            kwargs = {k: _decode(v, env) for k, v in e["kwargs"]["dict"].items()}
            env[e["name"]] = g.create_node(op, target, args, kwargs, name=e["name"])
        g.lint()
        return fx.GraphModule(built, g, "SpikingUNet")
    except ArtifactError:
        raise
    except BUILD_ERRORS as e:
        raise ArtifactError(f"the SNN file's graph record is malformed ({type(e).__name__}: {first_line(e)})") from None


def _built(t: str, args: dict, path: str) -> nn.Module:
    try:
        return construct(t, args)
    except BUILD_ERRORS as e:
        raise ArtifactError(f"module {path!r}: cannot build {t} ({type(e).__name__}: {first_line(e)})") from None


def adapt(gm: fx.GraphModule) -> fx.GraphModule:
    """SpikingJelly's step-mode adaptation of a converted graph (multi-step layers), its ``cat``
    adapters then made :class:`~sjunet.layers.stages.Concat` stages (the same op, into a reused buffer)."""
    gm = adapt_step_mode_graph(gm, context="SpikingUNetRecipe", wrap_module_types=_RATE_CODING_STATELESS_MODULE_TYPES)
    for name, m in list(gm.named_children()):
        if isinstance(m, _StepModeTensorOp) and m.op_name == "cat":
            setattr(gm, name, Concat(m.op_kwargs["dim"], step_mode=m.step_mode))
    return gm


def _hash(tensors: dict[str, torch.Tensor], record: dict) -> str:
    h = tensor_digest(tensors)
    body = {k: v for k, v in record.items() if k != "content_sha256"}
    h.update(json.dumps(body, sort_keys=True, allow_nan=False).encode())
    return h.hexdigest()


def save(snn: nn.Module, path: str | os.PathLike, record: dict) -> Path:
    """Write ``snn``'s tensors and ``record`` (needs ``record["graph"]``) atomically (serialised in
    memory, then :func:`sjunet.io.write_bytes_atomic`: a full disk is one line, never a crash)."""
    from safetensors.torch import save as to_bytes

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in snn.state_dict().items()}
    record = jsonable({**record, "kind": SNN_KIND, "format": FORMAT})
    record["content_sha256"] = _hash(tensors, record)
    return write_bytes_atomic(to_bytes(tensors, metadata={"sjunet": json.dumps(record, allow_nan=False)}), path)


def _finite_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ValueError(f"number {s[:20]} is out of range")
    return v


def _no_constant(s: str) -> Any:
    raise ValueError(f"{s} is not a JSON number")


def _too_deep(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return True
        vals = o.values() if isinstance(o, dict) else o
        stack.extend((v, d + 1) for v in vals if isinstance(v, (dict, list)))
    return False


def _parse_record(path: Path, text: Any) -> dict:
    """The sjunet record: a JSON object of bounded size and nesting, finite numbers only."""
    if not isinstance(text, str):
        raise ArtifactError(f"{path}: the sjunet record is not text; the file is corrupt")
    if len(text) > MAX_RECORD_CHARS:
        raise ArtifactError(f"{path}: the sjunet record is {len(text)} characters long (at most {MAX_RECORD_CHARS}); "
                            "not an SNN from `sjunet convert`")
    try:
        record = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
        deep = isinstance(record, (dict, list)) and _too_deep(record, MAX_DEPTH)
    except RecursionError:
        deep = True
    except ValueError as e:  # JSONDecodeError, an integer of thousands of digits, NaN/Infinity
        raise ArtifactError(f"{path}: the sjunet record is not valid JSON ({first_line(e, 200)}); the file is corrupt") from None
    if deep:
        raise ArtifactError(f"{path}: the sjunet record is nested more than {MAX_DEPTH} levels deep; "
                            "not an SNN from `sjunet convert`")
    if not isinstance(record, dict):
        raise ArtifactError(f"{path}: the sjunet record is a JSON {type(record).__name__ if record is not None else 'null'}, "
                            "not an object; not an SNN from `sjunet convert`")
    return record


#: record fields that the loader (and :func:`sjunet.conversion.recipe.load_snn`) reads, with their types
_FIELD_TYPES = {"conversion": (dict, type(None)), "post": (list, type(None)), "model": (dict, type(None)),
                "task": (dict, str, type(None)), "finetune": (dict, type(None)), "provenance": (dict, type(None))}


def load(path: str | os.PathLike) -> tuple[fx.GraphModule, dict]:
    """Read, verify and rebuild an SNN file; returns ``(snn, record)`` (single-step mode, eval).

    A file that is not one, corrupt, changed after writing, or crafted (a record asking for more
    than a real SNN could, in any way: see the limits above) is refused with one-line
    :class:`ArtifactError` naming the file, before anything large is built.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    from sjunet.io import torch_load_data

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError, OverflowError, MemoryError) as e:
        if is_safetensors(path):
            raise ArtifactError(f"{path}: not a valid SNN file — its safetensors header or data is broken "
                                f"({first_line(e, 200)}); regenerate it with `sjunet convert`") from None
        try:  # say what it is instead, without running anything from it
            torch_load_data(path)
        except ArtifactError as inner:
            raise ArtifactError(f"{first_line(inner, 600)} (expected an SNN file written by `sjunet convert`)") from None
        raise ArtifactError(f"{path}: not an SNN file written by `sjunet convert` ({first_line(e)})") from None
    if not isinstance(meta, dict) or "sjunet" not in meta:
        raise ArtifactError(f"{path}: a safetensors file without an sjunet record; not an SNN from `sjunet convert`")
    record = _parse_record(path, meta["sjunet"])
    if record.get("kind") != SNN_KIND:
        raise ArtifactError(f"{path}: is a {short_repr(record.get('kind'))} file, expected an SNN written by `sjunet convert`")
    if record.get("format") != FORMAT:
        raise ArtifactError(f"{path}: SNN format {short_repr(record.get('format'))}, this sjunet reads {FORMAT}; "
                            "regenerate it with `sjunet convert`")
    if not isinstance(record.get("content_sha256"), str) or not isinstance(record.get("graph"), dict):
        raise ArtifactError(f"{path}: the sjunet record lacks its graph or content hash; the file is corrupt")
    for key, types in _FIELD_TYPES.items():
        if not isinstance(record.get(key), types):
            raise ArtifactError(f"{path}: the record's {key!r} has type {type(record[key]).__name__}; the file is corrupt")
    try:
        check_ladder_record(record.get("conversion"))
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {first_line(e, 300)}; the file is corrupt") from None
    for name, t in tensors.items():
        if not t.dtype.is_floating_point or t.dim() > 8:  # a Conv3d's weight: 5-D; a constant: up to 8-D
            raise ArtifactError(f"{path}: tensor {short_repr(name)} is {t.dim()}-D {t.dtype}; an SNN holds "
                                "floating-point tensors of at most 8 dimensions")
    bad = nonfinite(tensors)
    if bad:
        raise ArtifactError(f"{path}: tensor {short_repr(bad)} holds NaN or infinite values — the file is corrupt or "
                            "came from a diverged run; regenerate it with `sjunet convert` (or `sjunet finetune`)")
    try:
        digest = _hash(tensors, record)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise ArtifactError(f"{path}: the sjunet record cannot be verified ({first_line(e)}); the file is corrupt") from None
    if record["content_sha256"] != digest:
        raise ArtifactError(f"{path}: integrity check failed — its tensors or record changed after it was written "
                            "(content hash mismatch); regenerate it with `sjunet convert`")
    try:
        check_record(record, *check_graph(record["graph"]))
        return rebuild(record["graph"], tensors), record
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {first_line(e, 700)}") from None


def rebuild(graph: dict, tensors: dict[str, torch.Tensor]) -> fx.GraphModule:
    """The network of a graph record and its tensors (:func:`build_graph`, the tensors loaded, the
    step-mode adaptation; eval mode): what :func:`load` returns, without a file."""
    gm = build_graph(graph, tensors)
    try:
        gm.load_state_dict(tensors, strict=True)
        snn = adapt(gm)
    except BUILD_ERRORS as e:
        raise ArtifactError(f"the tensors do not fit the graph ({first_line(e)})") from None
    snn.eval()
    return snn
