"""The SNN file: tensors + a plain record that rebuilds the graph (no code runs from a file).

An SNN file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file. Its tensors are the
SNN's ``state_dict`` (rescaled weights, biases, gains); its metadata holds one JSON record under
the key ``sjunet``:

* ``kind`` (``"sjunet-snn"``) and ``format`` (:data:`FORMAT`);
* ``graph`` — the converted network's FX graph as data (:func:`graph_spec`): the nodes (op,
  target, arguments referring to other nodes by name) and every module as a type name from a fixed
  vocabulary (Conv2d, ConvTranspose2d, AvgPool2d, the stages of :mod:`sjunet.stages`, the neurons
  of :data:`sjunet.neurons.NEURON_TYPES`, the static input synapse) with its constructor arguments.
  Loading builds those modules, the graph, SpikingJelly's step-mode adaptation, and loads the
  tensors (:func:`build_graph`); a MONAI or smp U-Net's SNN loads without MONAI or smp installed;
* ``conversion`` (options, the normalization plan's summary, fingerprints of the ANN and the
  statistics), ``model`` (the architecture it came from: sjunet config or ``--arch`` factory and
  kwargs — information, never imported on load), ``task``, ``provenance``, ``finetune`` …;
* ``content_sha256`` — a hash over the tensors and the rest of the record, verified on load:
  a flipped bit in a weight or a threshold is refused.
"""
from __future__ import annotations

import hashlib
import json
import operator
import os
from pathlib import Path
from typing import Any

import torch
from spikingjelly.activation_based.ann2snn.recipes.step_mode_adapters import (
    _RATE_CODING_STATELESS_MODULE_TYPES,
    adapt_step_mode_graph,
)
from torch import fx, nn

from sjunet.io import SNN_KIND, ArtifactError, atomic_path, jsonable, tensor_digest
from sjunet.neurons import NEURON_TYPES, StaticInputSynapse, is_neuron
from sjunet.stages import ChannelAffine, Pad, Resample, SpikingMaxPool2d

FORMAT = "sjunet-snn/2"

_FUNCTIONS = {"torch.cat": torch.cat, "operator.add": operator.add}
_FUNCTION_NAMES = {v: k for k, v in _FUNCTIONS.items()}
_STAGES = {c.__name__: c for c in (Resample, Pad, SpikingMaxPool2d)}


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
    if type(m).__name__ in _STAGES and isinstance(m, _STAGES[type(m).__name__]):
        return {"type": type(m).__name__, "args": m.spec()}
    if isinstance(m, nn.ConvTranspose2d):
        return {"type": "ConvTranspose2d", "args": dict(
            in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=_plain(m.kernel_size),
            stride=_plain(m.stride), padding=_plain(m.padding), output_padding=_plain(m.output_padding),
            groups=m.groups, bias=m.bias is not None, dilation=_plain(m.dilation), padding_mode=m.padding_mode)}
    if isinstance(m, nn.Conv2d):
        return {"type": "Conv2d", "args": dict(
            in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=_plain(m.kernel_size),
            stride=_plain(m.stride), padding=_plain(m.padding), dilation=_plain(m.dilation), groups=m.groups,
            bias=m.bias is not None, padding_mode=m.padding_mode)}
    if isinstance(m, nn.AvgPool2d):
        return {"type": "AvgPool2d", "args": dict(
            kernel_size=_plain(m.kernel_size), stride=_plain(m.stride), padding=_plain(m.padding),
            ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad)}
    raise ArtifactError(f"cannot save a {type(m).__name__} module in an SNN file")


def build_module(spec: dict) -> nn.Module:
    """The module of a :func:`module_spec` (types from the fixed vocabulary only)."""
    t, args = spec.get("type"), dict(spec.get("args") or {})
    if t == "StaticInputSynapse":
        return StaticInputSynapse(build_module(args["layer"]))
    if t in NEURON_TYPES:
        return NEURON_TYPES[t](**args)
    if t == "ChannelAffine":
        return ChannelAffine(**args)
    if t in _STAGES:
        return _STAGES[t](**args)
    if t in ("Conv2d", "ConvTranspose2d", "AvgPool2d"):
        for k in ("kernel_size", "stride", "padding", "dilation", "output_padding"):
            if isinstance(args.get(k), list):
                args[k] = tuple(args[k])
        return getattr(nn, t)(**args)
    raise ArtifactError(f"unknown module type {t!r} in the SNN file")


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


def _dec(a: Any, env: dict[str, fx.Node]) -> Any:
    if isinstance(a, list):
        return [_dec(v, env) for v in a]
    if isinstance(a, dict):
        if "node" in a:
            return env[a["node"]]
        if "tuple" in a:
            return tuple(_dec(v, env) for v in a["tuple"])
        if "dict" in a:
            return {k: _dec(v, env) for k, v in a["dict"].items()}
    return a


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


def build_graph(spec: dict) -> fx.GraphModule:
    """Rebuild the (pre-adaptation) GraphModule of a :func:`graph_spec`; no code from the file runs."""
    try:
        modules = {path: build_module(ms) for path, ms in spec["modules"].items()}
        g, env = fx.Graph(), {}
        for e in spec["nodes"]:
            op, args, kwargs = e["op"], tuple(_dec(e["args"], env)), _dec(e["kwargs"], env)
            if op == "call_module" and e["target"] not in modules:
                raise ArtifactError(f"node {e['name']!r} calls an undeclared module")
            if op == "call_function":
                if e["target"] not in _FUNCTIONS:
                    raise ArtifactError(f"node {e['name']!r} calls a function outside the vocabulary: {e['target']!r}")
                target = _FUNCTIONS[e["target"]]
            elif op in ("placeholder", "output", "call_module"):
                target = e["target"]
            else:
                raise ArtifactError(f"node {e['name']!r}: op {op!r} is not allowed in an SNN file")
            node = g.create_node(op, target, args, kwargs, name=e["name"])
            env[e["name"]] = node
        g.lint()
        return fx.GraphModule(modules, g, "SpikingUNet")
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ArtifactError):
            raise
        raise ArtifactError(f"the SNN file's graph record is malformed ({type(e).__name__}: {e})") from None


def adapt(gm: fx.GraphModule) -> fx.GraphModule:
    """SpikingJelly's step-mode adaptation of a converted graph (multi-step layers)."""
    return adapt_step_mode_graph(gm, context="SpikingUNetRecipe", wrap_module_types=_RATE_CODING_STATELESS_MODULE_TYPES)


def _hash(tensors: dict[str, torch.Tensor], record: dict) -> str:
    h = tensor_digest(tensors)
    body = {k: v for k, v in record.items() if k != "content_sha256"}
    h.update(json.dumps(body, sort_keys=True, allow_nan=False).encode())
    return h.hexdigest()


def save(snn: nn.Module, path: str | os.PathLike, record: dict) -> Path:
    """Write ``snn``'s tensors and ``record`` (needs ``record["graph"]``) atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in snn.state_dict().items()}
    record = jsonable({**record, "kind": SNN_KIND, "format": FORMAT})
    record["content_sha256"] = _hash(tensors, record)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"sjunet": json.dumps(record, allow_nan=False)})
    return Path(path)


def load(path: str | os.PathLike) -> tuple[fx.GraphModule, dict]:
    """Read, verify and rebuild an SNN file; returns ``(snn, record)`` (single-step mode, eval)."""
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
    except (SafetensorError, OSError, ValueError) as e:
        try:  # say what it is instead, without running anything from it
            torch_load_data(path)
        except ArtifactError as inner:
            raise ArtifactError(f"{inner} (expected an SNN file written by `sjunet convert`)") from None
        raise ArtifactError(f"{path}: not an SNN file written by `sjunet convert` ({e})") from None
    if "sjunet" not in meta:
        raise ArtifactError(f"{path}: a safetensors file without an sjunet record; not an SNN from `sjunet convert`")
    try:
        record = json.loads(meta["sjunet"])
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: the sjunet record is not valid JSON ({e}); the file is corrupt") from None
    if record.get("kind") != SNN_KIND:
        raise ArtifactError(f"{path}: is a {record.get('kind')!r} file, expected an SNN written by `sjunet convert`")
    if record.get("format") != FORMAT:
        raise ArtifactError(f"{path}: SNN format {record.get('format')!r}, this sjunet reads {FORMAT}; "
                            "regenerate it with `sjunet convert`")
    if record.get("content_sha256") != _hash(tensors, record):
        raise ArtifactError(f"{path}: integrity check failed — its tensors or record changed after it was written "
                            "(content hash mismatch); regenerate it with `sjunet convert`")
    gm = build_graph(record["graph"])
    try:
        gm.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{path}: the tensors do not fit the graph ({str(e).splitlines()[0]})") from None
    snn = adapt(gm)
    snn.eval()
    return snn, record
