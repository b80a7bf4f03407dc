"""The shapes and the memory of one run of a converted network on one input, known before anything
is allocated (the per-input half of :mod:`sjunet.snn.shapes`).

* :func:`plan` — the shape of every node, computed from the module arithmetic of the vocabulary
  (convolutions, transposed convolutions, pools, resampling, padding, adaptive pooling, channel
  joins) exactly as torch computes it, so what torch would refuse is refused here in one line
  naming the node and the field; and no tensor may be larger than the input along any axis beyond
  :func:`sjunet.snn.shapes.slack` — a U-Net's feature maps never are (they shrink and are restored
  to the input's size), so a field that makes one larger is not a converted U-Net's;
* :meth:`Plan.bytes` / :func:`check_budget` — the state of the memory modules (neurons, spiking
  max-pools, static input caches), the live tensors of one step (liveness over the graph's order)
  and the largest convolution workspace, × the batch, × the chunk in multi-step mode, against
  :func:`memory_budget`: half of the machine's RAM by default; ``--memory-budget`` (:func:`budget_of`)
  or ``SJUNET_MEMORY_BUDGET`` set another.

:func:`sjunet.snn.simulation.check_run` runs both before a network rebuilt from a record runs; a
token graph (spec §15), which :func:`plan` does not model, is planned by one step on the ``meta``
device (:mod:`sjunet.snn.footprint_run`) and checked against the same budget.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from sjunet.snn.record import short_repr
from sjunet.snn.shapes import TOKEN_TYPES, RecordError, axis_names, cat_args, per_axis, refs, show_shape, slack

#: bytes per element of a simulated tensor (float32)
ELEMENT_BYTES = 4
#: the memory budget by default: this fraction of the machine's RAM
BUDGET_FRACTION = 0.5
#: environment variable that sets the memory budget (bytes, or with a K/M/G/T suffix)
BUDGET_ENV = "SJUNET_MEMORY_BUDGET"
_CONV = ("Conv2d", "Conv3d")
_CONV_T = ("ConvTranspose2d", "ConvTranspose3d")
_POOLS = ("AvgPool2d", "AvgPool3d", "SpikingMaxPool2d")
#: module types whose output shape this planner does not follow (the token plumbing and Σ-Δ products of
#: spec §15): a graph with one of them, or with a function other than ``torch.cat`` / ``operator.add``,
#: raises :class:`Unmodelled` — its run is planned by one step on the ``meta`` device instead
#: (:func:`sjunet.snn.footprint_run.run_plan`)
UNMODELLED = TOKEN_TYPES


class Unmodelled(Exception):
    """The graph has a node :func:`plan` does not model (:data:`UNMODELLED`)."""


class BudgetError(ValueError):
    """A run would need more memory than the budget allows."""


@dataclass
class Plan:
    """Shapes and memory of one run of a graph on one input (:func:`plan`); elements per image."""

    input_shape: tuple[int, ...]
    shapes: dict[str, tuple[int, ...]]
    largest: tuple[str, int]  #: (node, elements) of the largest tensor
    live: int  #: the most elements live at once during one step (liveness over the graph's order)
    state: int  #: elements of the memory modules' state, kept across steps
    workspace: int  #: the largest convolution's unfolded input (im2col), when it needs one
    nodes: dict[str, str] = field(default_factory=dict, repr=False)  #: node -> module type

    def bytes(self, batch: int = 1, mode: str = "step", chunk: int | str = 1) -> int:
        """Bytes a run holds at its peak: ``batch`` inputs, ``chunk`` steps at once in multi-step mode."""
        # "auto" chunks by memory (a fraction of the cache), so one step bounds its peak
        steps = max(1, int(chunk)) if mode == "multi" and chunk != "auto" else 1
        out = self.shapes.get("__output__", (0,))
        acc = 2 * math.prod(out)  # the decoded output's accumulator and one step's output
        return ELEMENT_BYTES * max(1, int(batch)) * (self.state + steps * (self.live + self.workspace) + acc)


def _out_len(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool = False) -> int:
    """torch's output length of a convolution / pool window (``ceil_mode`` as pools compute it)."""
    span = n + 2 * p - d * (k - 1) - 1
    if ceil_mode:
        out = -(-span // s) + 1
        if (out - 1) * s >= n + p:
            out -= 1
        return out
    return span // s + 1


_STATE = {"MultiThresholdNode": 4, "SignedMultiThresholdNode": 5, "RealSpikeNode": 5, "LIFNode": 4}


def _state_factor(t: str, a: dict) -> int:
    """State tensors a neuron keeps per output element (membrane, recorded flow and counts, charge
    or per-level membranes), conservatively."""
    if t == "MultiLevelNode":
        return 5 + len(a.get("thresholds") or [1])
    return _STATE.get(t, 5)


def _module_shape(t: str, a: dict, ins: list[tuple[int, ...]], where: str, nd: int) -> tuple[tuple[int, ...], int]:
    """(output shape, workspace elements) of a module on inputs of shapes ``ins`` ((C, *spatial))."""
    shape = ins[0]
    c, sizes = shape[0], shape[1:]
    axes = axis_names(nd)
    if len(sizes) != nd:
        raise RecordError(f"{where}: its input has {len(sizes)} spatial axes, the network {nd}")
    if t == "StaticInputSynapse":
        return _module_shape(*a["layer"], ins, where, nd)
    if t in _CONV or t in _CONV_T:
        if a["in_channels"] != c:
            raise RecordError(f"{where}: in_channels is {a['in_channels']} but its input has {c} channels")
        k, s, d = (per_axis(a[f], nd, f"{where}: {f}") for f in ("kernel_size", "stride", "dilation"))
        out = []
        if t in _CONV_T:
            p, op = per_axis(a["padding"], nd, where), per_axis(a["output_padding"], nd, where)
            for i, n in enumerate(sizes):
                m = (n - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1
                if m < 1:
                    raise RecordError(f"{where}: padding {short_repr(a['padding'])} leaves no output of a {n}-long input "
                                      f"along {axes[i]}")
                out.append(m)
            work = 0
        else:
            if a["padding"] == "same":
                if any(v != 1 for v in s):
                    raise RecordError(f"{where}: padding 'same' needs stride 1, got {short_repr(a['stride'])}")
                p = tuple((d[i] * (k[i] - 1)) // 2 for i in range(nd))
                same = True
            else:
                p = (0,) * nd if a["padding"] == "valid" else per_axis(a["padding"], nd, where)
                same = False
            for i, n in enumerate(sizes):
                span = d[i] * (k[i] - 1) + 1
                if n + 2 * p[i] < span:
                    raise RecordError(f"{where}: its kernel spans {span} (dilation {d[i]} × (kernel_size {k[i]} − 1) "
                                      f"+ 1) but its padded input is only {n + 2 * p[i]} long along {axes[i]}")
                if a["padding_mode"] == "reflect" and p[i] >= n or a["padding_mode"] == "circular" and p[i] > n:
                    raise RecordError(f"{where}: padding {p[i]} ({a['padding_mode']}) must be smaller than its "
                                      f"{n}-long input along {axes[i]}")
                out.append(n if same else _out_len(n, k[i], s[i], p[i], d[i]))
            work = c * math.prod(k) * math.prod(out) if math.prod(k) > 1 else 0
        return (int(a["out_channels"]), *out), work
    if t in _POOLS:
        k = per_axis(a["kernel_size"], nd, where)
        s = per_axis(a["stride"] if a["stride"] is not None else a["kernel_size"], nd, where)
        p, d = per_axis(a["padding"], nd, where), per_axis(a.get("dilation", 1), nd, where)
        out = []
        for i, n in enumerate(sizes):
            span = d[i] * (k[i] - 1) + 1
            if n + 2 * p[i] < span:
                raise RecordError(f"{where}: kernel_size {short_repr(a['kernel_size'])} spans {span} but its input is "
                                  f"only {n + 2 * p[i]} long (padded) along {axes[i]}")
            out.append(_out_len(n, k[i], s[i], p[i], d[i], a["ceil_mode"]))
        return (c, *out), 0
    if t == "Resample":
        if len(ins) == 2:
            ref = ins[1][1:]
            if len(ref) != nd:
                raise RecordError(f"{where}: its reference has {len(ref)} spatial axes, the network {nd}")
            return (c, *ref), 0
        if a["size"] is not None:
            return (c, *(int(v) for v in per_axis(a["size"], nd, f"{where}: size"))), 0
        sf = per_axis(a["scale_factor"], nd, f"{where}: scale_factor")
        out = [int(math.floor(n * float(sf[i]))) for i, n in enumerate(sizes)]
        if min(out) < 1:
            raise RecordError(f"{where}: scale_factor {short_repr(a['scale_factor'])} leaves no output of a "
                              f"{show_shape(sizes)} input")
        return (c, *out), 0
    if t == "Pad":
        pad, out = a["pad"], list(sizes)
        for j in range(len(pad) // 2):
            i = nd - 1 - j
            before, after = pad[2 * j], pad[2 * j + 1]
            n = sizes[i]
            if n + before + after < 1 or before <= -n or after <= -n:
                raise RecordError(f"{where}: pad {short_repr(pad)} crops more than the {n}-long input along {axes[i]}")
            if a["mode"] == "reflect" and max(before, after) >= n or a["mode"] == "circular" and max(before, after) > n:
                raise RecordError(f"{where}: pad {short_repr(pad)} ({a['mode']}) must be smaller than the {n}-long input "
                                  f"along {axes[i]}")
            out[i] = n + before + after
        return (c, *out), 0
    if t == "AdaptiveAvgPool":
        out = []
        for i, (n, v) in enumerate(zip(sizes, a["output_size"])):
            if v is not None and v > n:
                raise RecordError(f"{where}: output_size {short_repr(a['output_size'])} is larger than its {show_shape(sizes)} "
                                  f"input along {axes[i]} (a global pool shrinks)")
            out.append(n if v is None else int(v))
        return (c, *out), 0
    if t == "Center":
        if c % a["groups"]:
            raise RecordError(f"{where}: groups {a['groups']} does not divide its input's {c} channels")
        return shape, 0
    if t == "ChannelAffine":
        if a["channels"] != c:
            raise RecordError(f"{where}: channels is {a['channels']} but its input has {c} channels")
        return shape, 0
    ch = a.get("channels")
    if isinstance(ch, int) and not isinstance(ch, bool) and ch not in (c, 0, 1):
        raise RecordError(f"{where}: channels is {ch} but its input has {c} channels")
    return shape, 0  # neurons keep the shape


_FIELD = {"Resample": "its size (scale_factor / size / reference)", "Pad": "pad", "AdaptiveAvgPool": "output_size",
          "Conv2d": "padding", "Conv3d": "padding", "ConvTranspose2d": "stride / kernel_size",
          "ConvTranspose3d": "stride / kernel_size", "StaticInputSynapse": "padding"}


def plan(nodes: list[dict], modules: dict[str, tuple[str, dict]], input_shape: Sequence[int]) -> Plan:
    """Shapes and memory of the graph ``(nodes, modules)`` (checked, :func:`sjunet.snn.file.check_graph`) on one
    input of shape ``(C, *spatial)``; a node torch would refuse, or one larger than the input beyond
    :func:`slack`, raises one-line :class:`RecordError` naming it and its field."""
    shape = tuple(int(v) for v in input_shape)
    nd = len(shape) - 1
    limit = [n + slack(n) for n in shape[1:]]
    shapes: dict[str, tuple[int, ...]] = {}
    kinds: dict[str, str] = {}
    last_use: dict[str, int] = {}
    for i, e in enumerate(nodes):
        for n in refs(e["args"]) + refs(e["kwargs"]):
            last_use[n] = i
    live = state = work = 0
    peak = 0
    largest = (nodes[0]["name"], math.prod(shape))
    for i, e in enumerate(nodes):
        name, op = e["name"], e["op"]
        if op == "placeholder":
            shapes[name] = shape
            live = math.prod(shape)
            last_use[name] = len(nodes)  # the input is held for every step
            continue
        ins = [shapes[n] for n in refs(e["args"])]
        if op == "output":
            shapes["__output__"] = ins[0]
            continue
        w = 0
        if op == "call_module" and modules[e["target"]][0] in UNMODELLED or op == "call_function" and e["target"] not in (
                "torch.cat", "operator.add"):
            raise Unmodelled(f"graph node {name!r}")
        if op == "call_module":
            t, a = modules[e["target"]]
            where = f"graph node {name!r} (module {e['target']!r}, {t})"
            out, w = _module_shape(t, a, ins, where, nd)
            kinds[name] = t
        elif e["target"] == "torch.cat":
            parts, dim = cat_args(e)
            ps = [shapes[n] for n in parts]
            d = dim if dim >= 0 else dim + nd + 2
            if d != 1:
                raise RecordError(f"graph node {name!r}: torch.cat dim {dim} is not the channel dimension")
            if any(p[1:] != ps[0][1:] for p in ps):
                raise RecordError(f"graph node {name!r}: torch.cat joins parts of different sizes "
                                  f"({', '.join(show_shape(p[1:]) for p in ps)})")
            out = (sum(p[0] for p in ps), *ps[0][1:])
            t, where = "cat", f"graph node {name!r}"
        else:
            if ins[0] != ins[1]:
                raise RecordError(f"graph node {name!r}: operator.add of tensors of different shapes "
                                  f"({show_shape(ins[0])} and {show_shape(ins[1])})")
            out, t, where = ins[0], "add", f"graph node {name!r}"
        for j, (m, cap) in enumerate(zip(out[1:], limit)):
            if m > cap:
                raise RecordError(
                    f"{where}: {_FIELD.get(t, 'its arguments')} would make a {show_shape(out[1:])} tensor from a "
                    f"{show_shape(shape[1:])} input, larger than the input along {axis_names(nd)[j]}: a converted U-Net's "
                    "feature maps never are — the record is not one sjunet wrote")
        n_out = math.prod(out)
        shapes[name] = out
        if n_out > largest[1]:
            largest = (name, n_out)
        if op == "call_module":
            if t == "SpikingMaxPool2d":
                state += math.prod(ins[0]) + 2 * n_out
            elif t == "StaticInputSynapse":
                state += n_out
            elif t not in _FIELD and t not in _POOLS and t not in ("Center", "ChannelAffine"):
                state += _state_factor(t, modules[e["target"]][1]) * n_out
        live += n_out
        peak = max(peak, live)
        work = max(work, w)
        for n in set(refs(e["args"]) + refs(e["kwargs"])):
            if last_use.get(n) == i:
                live -= math.prod(shapes[n])
    return Plan(shape, shapes, largest, peak, state, work, kinds)


# ----------------------------------------------------------------------------- the budget


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str | int | float, what: str = BUDGET_ENV) -> int:
    """``"16G"``, ``"512M"``, ``"1.5T"`` or a number of bytes → bytes (one-line ValueError)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
        if not m:
            raise ValueError(f"{what} takes a size such as 16G, 512M or a number of bytes, got {text!r}")
        value, unit = float(m.group(1)), m.group(2).upper()
    out = int(value * _UNITS[unit])
    if not math.isfinite(value) or out < 1:
        raise ValueError(f"{what} must be a positive size, got {text!r}")
    return out


def machine_memory() -> int:
    """Physical RAM of this machine, in bytes (0 when unknown)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 0


_GIVEN: contextvars.ContextVar[int | None] = contextvars.ContextVar("sjunet_memory_budget", default=None)


@contextlib.contextmanager
def budget_of(nbytes: int | None) -> Iterator[None]:
    """Within this block the memory budget is ``nbytes`` (None: the default; the CLI's ``--memory-budget``)."""
    token = _GIVEN.set(nbytes)
    try:
        yield
    finally:
        _GIVEN.reset(token)


def memory_budget(device: Any = "cpu") -> tuple[int, str]:
    """``(bytes, where it comes from)``: the budget given (:func:`budget_of`, ``--memory-budget``),
    else ``SJUNET_MEMORY_BUDGET`` when set, else :data:`BUDGET_FRACTION` of the machine's RAM (of a
    GPU's memory for a CUDA device)."""
    if _GIVEN.get() is not None:
        return _GIVEN.get(), "--memory-budget"
    env = os.environ.get(BUDGET_ENV)
    if env:
        return parse_bytes(env), f"{BUDGET_ENV}={env}"
    if str(device).startswith("cuda"):
        try:
            import torch

            total = torch.cuda.get_device_properties(torch.device(device)).total_memory
            return int(total * BUDGET_FRACTION), f"half of the GPU's {total / 2**30:.0f} GiB"
        except Exception:  # noqa: BLE001 - no CUDA: the machine's RAM
            pass
    ram = machine_memory() or (16 << 30)
    return int(ram * BUDGET_FRACTION), f"half of this machine's {ram / 2**30:.0f} GiB of RAM"


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def check_budget(p: Plan, batch: int = 1, mode: str = "step", chunk: int | str = 1, device: Any = "cpu",
                 budget: int | None = None) -> int:
    """Bytes the run of plan ``p`` needs; one-line :class:`BudgetError` when over the budget."""
    need = p.bytes(batch, mode, chunk)
    limit, source = (budget, "the given budget") if budget is not None else memory_budget(device)
    if need > limit:
        node, n = p.largest
        raise BudgetError(
            f"this SNN would need about {_gib(need)} for a {batch}x{show_shape(p.input_shape)} input (its largest tensor, "
            f"node {node!r}: {_gib(ELEMENT_BYTES * n * batch)}), more than the memory budget of {_gib(limit)} "
            f"({source}); evaluate smaller inputs (--protocol tiled, --max-pixels) or raise the budget "
            f"({BUDGET_ENV}=64G or --memory-budget)")
    return need


__all__ = ["BUDGET_ENV", "BUDGET_FRACTION", "BudgetError", "ELEMENT_BYTES", "Plan", "UNMODELLED", "Unmodelled", "budget_of", "check_budget",
           "machine_memory", "memory_budget", "parse_bytes", "plan"]
