"""The functions a Σ-Δ neuron can stand for (spec §15): one table, one line per function.

A Σ-Δ neuron (:mod:`sjunet.neurons.sigma_delta`) replaces an activation ``f`` — elementwise (SiLU, GELU,
ELU …) or of a group of elements (softmax, LayerNorm, an exact GroupNorm) — or a product of two
activations. Nothing in the neuron, the recipe, the SNN file, simulation, flow or energy depends
on which ``f``: **a new function is one entry of** :data:`FUNCTIONS` **plus its test**.

Each entry (:class:`Function`) says

* ``fn(x, p, w, b)`` — ``f`` itself in ANN units (``p``: the checked parameters, ``w``/``b``: the
  optional per-feature weight and bias tensors of a norm, else None). It must be differentiable
  (spiking-flow fine-tuning takes its vector-Jacobian product at the mean input, :func:`vjp`);
* ``params`` — each parameter's kind and range (``("float", lo, hi, default)``, ``("int", lo, hi,
  default)``, ``("choice", options, default)``): an SNN file's record is checked against it
  before anything is built (:func:`check_params`), so a file can name a function of this table
  and its parameters, never code;
* ``signed`` — whether ``f`` takes negative values: its output unit λ_out is then calibrated on
  |f| (the 99.9th percentile, as for every neuron). The quantiser is signed for every ``f`` (a
  neuron takes back spikes when its mean input falls, spec §15), so this flag is about units only;
* ``group`` — ``f`` reads a group of elements (softmax over a dimension, a norm over features):
  a non-local neuron, which the docs say (:data:`GROUP_NOTE`);
* ``homogeneous`` — ``t·f(A/t) = f(A)`` (ReLU, leaky ReLU): no clock needed (informative);
* ``features`` — the parameter holding the length of ``w``/``b`` (norms), or None.

``relu`` and ``leaky_relu`` are in the table for completeness and tests (a Σ-Δ ReLU is the MT
neuron with a signed correction); conversion keeps the MT and signed MT neurons for them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

#: what the docs say of a group neuron
GROUP_NOTE = ("reads the running sums of its whole group (non-local); the fixed-σ̂ norm route stays for hardware "
              "that cannot")

MAX_DIM = 8  #: |dim| of a softmax, trailing dimensions of a layer norm
MAX_FEATURES = 1 << 20  #: elements of a norm's weight / bias


@dataclass(frozen=True)
class Function:
    """One line of the table (module docstring)."""

    fn: Callable[..., torch.Tensor]
    params: dict[str, tuple] = field(default_factory=dict)
    signed: bool = True
    group: bool = False
    homogeneous: bool = False
    features: str | None = None


def _p(kind: str, *rest) -> tuple:
    return (kind, *rest)


def _layer_norm(x, p, w, b):
    shape = x.shape[-p["dims"]:]
    return F.layer_norm(x, shape, None if w is None else w.view(shape), None if b is None else b.view(shape), p["eps"])


def _group_norm(x, p, w, b):
    return F.group_norm(x, p["groups"], w, b, p["eps"])


#: the functions (module docstring); keys are what SNN files and conversion records name
FUNCTIONS: dict[str, Function] = {
    "relu": Function(lambda x, p, w, b: torch.relu(x), signed=False, homogeneous=True),
    "leaky_relu": Function(lambda x, p, w, b: F.leaky_relu(x, p["negative_slope"]),
                           {"negative_slope": _p("float", -1e3, 1e3, 0.01)}, homogeneous=True),
    "silu": Function(lambda x, p, w, b: F.silu(x)),
    "gelu": Function(lambda x, p, w, b: F.gelu(x, approximate=p["approximate"]),
                     {"approximate": _p("choice", ("none", "tanh"), "none")}),
    "elu": Function(lambda x, p, w, b: F.elu(x, p["alpha"]), {"alpha": _p("float", -1e3, 1e3, 1.0)}),
    "celu": Function(lambda x, p, w, b: F.celu(x, p["alpha"]), {"alpha": _p("float", 1e-6, 1e3, 1.0)}),
    "selu": Function(lambda x, p, w, b: F.selu(x)),
    "sigmoid": Function(lambda x, p, w, b: torch.sigmoid(x), signed=False),
    "tanh": Function(lambda x, p, w, b: torch.tanh(x)),
    "hardswish": Function(lambda x, p, w, b: F.hardswish(x)),
    "hardsigmoid": Function(lambda x, p, w, b: F.hardsigmoid(x), signed=False),
    "mish": Function(lambda x, p, w, b: F.mish(x)),
    "softplus": Function(lambda x, p, w, b: F.softplus(x, p["beta"], p["threshold"]),
                         {"beta": _p("float", 1e-6, 1e3, 1.0), "threshold": _p("float", 1e-6, 1e3, 20.0)},
                         signed=False),
    "softmax": Function(lambda x, p, w, b: torch.softmax(x, p["dim"]), {"dim": _p("int", -MAX_DIM, MAX_DIM - 1, -1)},
                        signed=False, group=True),
    "layer_norm": Function(_layer_norm, {"dims": _p("int", 1, MAX_DIM, 1), "eps": _p("float", 0.0, 1.0, 1e-5),
                                         "features": _p("int", 0, MAX_FEATURES, 0)},
                           group=True, features="features"),
    "group_norm": Function(_group_norm, {"groups": _p("int", 1, 65_536, 1), "eps": _p("float", 0.0, 1.0, 1e-5),
                                         "features": _p("int", 0, MAX_FEATURES, 0)},
                           group=True, features="features"),
}


def lookup(name: Any) -> Function:
    """The table entry ``name`` (a ValueError naming the table's functions otherwise)."""
    if not isinstance(name, str) or name not in FUNCTIONS:
        raise ValueError(f"unknown Σ-Δ function {str(name)[:40]!r}; the table has {', '.join(FUNCTIONS)}")
    return FUNCTIONS[name]


def check_params(name: str, params: Any) -> dict:
    """``params`` of function ``name`` checked against its table entry, defaults filled in: ints are
    ints, floats finite and in range, choices from their list; anything else is a ValueError."""
    entry = lookup(name)
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ValueError(f"the parameters of {name} must be an object, got {type(params).__name__}")
    extra = sorted(set(params) - set(entry.params))
    if extra:
        raise ValueError(f"{name} takes no parameter {str(extra[0])[:40]!r}"
                         + (f" (it takes {', '.join(entry.params)})" if entry.params else ""))
    out = {}
    for key, spec in entry.params.items():
        kind, default = spec[0], spec[-1]
        v = params.get(key, default)
        what = f"{name} parameter {key}"
        if kind == "choice":
            if not isinstance(v, str) or v not in spec[1]:
                raise ValueError(f"{what} must be one of {', '.join(map(repr, spec[1]))}, got {str(v)[:40]!r}")
        elif kind == "int":
            if type(v) is not int or not spec[1] <= v <= spec[2]:
                raise ValueError(f"{what} must be an integer in {spec[1]}..{spec[2]}, got {str(v)[:40]}")
        else:
            if type(v) not in (int, float) or not math.isfinite(v) or not spec[1] <= v <= spec[2]:
                raise ValueError(f"{what} must be a number in [{spec[1]:g}, {spec[2]:g}], got {str(v)[:40]}")
            v = float(v)
        out[key] = v
    return out


def evaluate(name: str, params: dict, x: torch.Tensor, weight: torch.Tensor | None = None,
             bias: torch.Tensor | None = None) -> torch.Tensor:
    """``f(x)`` of table entry ``name`` (ANN units; ``params`` as :func:`check_params` returns them)."""
    return FUNCTIONS[name].fn(x, params, weight, bias)


#: the products a two-input Σ-Δ neuron computes: ``mul`` (elementwise, broadcasting: gates,
#: squeeze-excitation), ``matmul`` (``torch.matmul``: Q·Kᵀ, attention·V), ``einsum`` (an equation)
PRODUCTS = ("mul", "matmul", "einsum")
MAX_EQUATION = 64


def check_equation(equation: Any) -> str:
    """An einsum equation of two operands with an explicit output: ``"bhqd,bhkd->bhqk"`` (letters only,
    at most :data:`MAX_EQUATION` characters; no ellipsis), else a ValueError."""
    if not isinstance(equation, str) or len(equation) > MAX_EQUATION:
        raise ValueError(f"an einsum equation must be a string of at most {MAX_EQUATION} characters")
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    ops = lhs.split(",")
    if not arrow or len(ops) != 2 or not all(o.isalpha() and o.isascii() for o in ops) or not (
            out == "" or (out.isalpha() and out.isascii())) or len(set(out)) != len(out) \
            or not set(out) <= set(ops[0]) | set(ops[1]):
        raise ValueError(f"einsum equation {equation[:40]!r} is not of the form 'ab,bc->ac' (two operands, letters, "
                         "an explicit output of their indices)")
    return eq


def product(op: str, a: torch.Tensor, b: torch.Tensor, equation: str | None = None) -> torch.Tensor:
    """The bilinear map ``g(a, b)`` of a product neuron (:data:`PRODUCTS`)."""
    if op == "mul":
        return a * b
    if op == "matmul":
        return torch.matmul(a, b)
    if op == "einsum":
        return torch.einsum(equation, a, b)
    raise ValueError(f"unknown product {op!r}; one of {', '.join(PRODUCTS)}")


def product_macs(op: str, a_shape, b_shape, equation: str | None = None) -> int:
    """Multiply-accumulates of one evaluation of ``g`` on operands of these shapes (one sample or a
    batch, as given): ``mul``: one per output element; ``matmul`` / ``einsum``: the product of every
    index's size (output elements × contraction length)."""
    if op == "mul":
        return int(math.prod(torch.broadcast_shapes(tuple(a_shape), tuple(b_shape))))
    if op == "matmul":
        a, b = list(a_shape), list(b_shape)
        if len(a) == 1:
            a = [1] + a
        if len(b) == 1:
            b = b + [1]
        batch = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
        return int(math.prod(batch) * a[-2] * a[-1] * b[-1])
    lhs = equation.split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for letters, shape in zip(lhs, (a_shape, b_shape)):
        for c, n in zip(letters, shape):
            sizes[c] = max(sizes.get(c, 1), int(n))
    return int(math.prod(sizes.values()))


class Smooth(torch.nn.Module):
    """An activation of the table in the canonical ANN graph (every spelling — ``nn.SiLU``, ``F.gelu``,
    ``x.sigmoid()``, ``x * torch.sigmoid(x)``, a channels-last ``nn.LayerNorm`` … — becomes one): what
    calibration observes and conversion replaces by a :class:`~sjunet.neurons.sigma_delta.SigmaDeltaNode` of
    the same ``function`` and ``params``. A norm's affine is the buffers ``weight`` / ``bias``."""

    def __init__(self, function: str, params: dict | None = None) -> None:
        super().__init__()
        lookup(function)
        self.function = function
        self.params = check_params(function, params)
        features = self.params.get("features", 0) if FUNCTIONS[function].features else 0
        self.register_buffer("weight", torch.ones(features) if features else None)
        self.register_buffer("bias", torch.zeros(features) if features else None)

    @property
    def entry(self) -> Function:
        return FUNCTIONS[self.function]

    def extra_repr(self) -> str:
        return f"function={self.function}, params={self.params}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FUNCTIONS[self.function].fn(x, self.params, self.weight, self.bias)


class Product(torch.nn.Module):
    """A product of two activations in the canonical ANN graph (``a * b``, ``torch.mul``, ``matmul``,
    ``@``, ``bmm``, ``einsum`` of two tensors): replaced at conversion by a
    :class:`~sjunet.neurons.sigma_delta.SigmaDeltaProduct` of the same ``op`` / ``equation``."""

    def __init__(self, op: str = "mul", equation: str | None = None) -> None:
        super().__init__()
        if op not in PRODUCTS:
            raise ValueError(f"unknown product {op!r}; one of {', '.join(PRODUCTS)}")
        self.op = op
        self.equation = check_equation(equation) if op == "einsum" else None

    def extra_repr(self) -> str:
        return f"op={self.op}" + (f", equation={self.equation!r}" if self.equation else "")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return product(self.op, a, b, self.equation)
