"""Threshold ladders chosen per layer from the calibration histograms (spec §3; paper Theorem 3.1).

After normalisation (spec §5) a neuron layer's input is ``x = a / λ``: the layer's activation in
units of its calibration percentile λ. One step of a multi-threshold neuron with ladder
θ_1 > … > θ_N and initial potential V_0 outputs ``q(x)``: the greedy sum of the thresholds that
``V_0 + x`` reaches, largest first (:func:`one_step`). For a halving ladder that is ``x`` rounded
(V_0 = θ_N/2) or floored (V_0 = 0) to a multiple of the step θ_N, capped at Σθ = 2θ_1 − θ_N per
step. Two errors follow, and they behave differently in T:

* **resolution** — |x − q(x)| ≤ θ_N/2 below the cap: at T steps the rate code refines it to about
  θ_N/(2T), so it is what limits T = 1–2;
* **saturation** — values above the cap are clipped at every step, whatever T: the plateau of the
  capped ladders (Theorem 3.1's (0.5, …, 0.0625) caps a step at 0.9375, and agreement with the
  ANN levels off below 1 however long the SNN runs).

:func:`choose_ladder` picks, for one layer's distribution (the histogram ``calibrate`` stores,
:func:`histogram_points`), a halving ladder of powers of two (a spike of weight 2^k is one
accumulate: the weight scaling is a shift, spec §8):

1. the **top** threshold θ_1 = the smallest power of two whose cap 2θ_1 − θ_N reaches the layer's
   largest calibration value (``max / λ``; at most :data:`MAX_TOP`): no calibration value
   saturates, so nothing caps the rate code and agreement keeps rising with T;
2. the **number of levels** N = the fewest — the coarsest step, the fewest spikes — whose expected
   one-step error under the layer's distribution, RMS error / RMS value (zeros included), is at
   most ``tolerance`` (:data:`TOLERANCE`, 5 %; at most :data:`MAX_LEVELS` levels). A layer whose
   values are small against its λ — sparse deep layers, whose percentile is set by a few large
   values — gets a finer step than a dense one.

Measured (``python -m sjunet.benchmarks ladderstudy``, ``benchmarks/results/SUMMARY-cpu.md``):
at T = 1 this keeps 0.999–1.002 × the ANN's F1 on EM and DRIVE where Theorem 3.1's ladder keeps
0.977–0.990 ×, for 1–1.3 × its synaptic operations. Two alternatives measured worse and are not
offered: the same step (1/16 or 1/32) in every layer (EM needs finer steps in its sparse layers),
and one error budget shared by all layers so as to spend the fewest synaptic operations (it
coarsened DRIVE's expensive first layers and lost 2 % of its F1 at T = 1).

:func:`expected_error` is the objective (one step, V_0 included: ``"half"`` = θ_N/2 rounds), and
:func:`layer_ladders` applies the choice to every neuron of a conversion. ``tests/test_ladders.py``
checks the bound: the chosen ladder's error, simulated by the MT neuron itself on values drawn
from the histogram, is within the tolerance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

#: the default tolerance of :func:`choose_ladder`: expected one-step RMS error ≤ this × the RMS value
TOLERANCE = 0.05
#: most levels a chosen ladder may have (a step of top / 2^(MAX_LEVELS − 1))
MAX_LEVELS = 8
#: the highest top threshold a chosen ladder may have (normalised units: 16 λ)
MAX_TOP = 16.0
#: the finest step a chosen ladder may have (normalised units)
MIN_STEP = 2.0 ** -8
#: points per histogram bin of :func:`histogram_points` (uniform within each bin)
POINTS_PER_BIN = 8


def one_step(x: np.ndarray, ladder: Sequence[float], v_init: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One MT step from membrane ``v_init`` with input ``x`` (spec §3): ``(output, spikes)``, the
    greedy sum of the thresholds ``v_init + x`` reaches (largest first, reset by subtraction) and
    how many fired. Negative inputs give 0 (a ReLU's neuron)."""
    v = np.asarray(x, dtype=np.float64) + v_init
    out = np.zeros_like(v)
    spikes = np.zeros_like(v)
    for th in ladder:
        fire = v >= th
        v = np.where(fire, v - th, v)
        out += np.where(fire, th, 0.0)
        spikes += fire
    return out, spikes


def initial_potential(ladder: Sequence[float], v_init: str | float = "half") -> float:
    """V_0 of ``v_init`` (``"half"``: θ_N/2, ``"zero"``: 0, or a number) for ``ladder``."""
    if v_init == "half":
        return float(ladder[-1]) / 2
    if v_init == "zero":
        return 0.0
    return float(v_init)


def histogram_points(histogram: np.ndarray, bin_edges: np.ndarray, scale: float = 1.0, mean: float | None = None,
                     per_bin: int = POINTS_PER_BIN) -> tuple[np.ndarray, np.ndarray]:
    """The distribution of a stored calibration histogram as weighted points ``(x, w)``, ``x`` in
    units of ``scale`` (λ), ``w`` summing to 1: ``per_bin`` evenly spaced points in every bin
    (values uniform within a bin). Negative values (a signed tensor) count by magnitude.

    The first bin of a ReLU's histogram, [0, w), holds its exact zeros — typically 15–99 % of
    all values — and a few small positives; spread uniformly it would invent an error of w/4 on
    every zero. With the tensor's ``mean`` (in the same units as the edges) the bin is split:
    the positives it must hold for the mean to come out (uniform in (0, w)), the rest exactly 0."""
    h = np.asarray(histogram, dtype=np.float64)
    e = np.asarray(bin_edges, dtype=np.float64) / float(scale)
    if h.size == 0 or h.sum() <= 0 or e.size != h.size + 1:
        return np.zeros(1), np.ones(1)
    p = h / h.sum()
    frac = (np.arange(per_bin) + 0.5) / per_bin
    x = (e[:-1, None] + (e[1:] - e[:-1])[:, None] * frac[None, :]).ravel()
    w = np.repeat(p / per_bin, per_bin)
    zeros = 0.0
    if mean is not None and e[0] == 0.0 and math.isfinite(mean):
        rest = float(np.sum(p[1:] * (e[1:-1] + e[2:]) / 2))  # the mean the other bins carry
        positives = min(p[0], max(0.0, (float(mean) / float(scale) - rest) / (e[1] / 2)))
        zeros = p[0] - positives
        w[:per_bin] = positives / per_bin
    keep = w > 0
    x, w = np.abs(x[keep]), w[keep]
    if zeros > 0:
        x, w = np.concatenate([[0.0], x]), np.concatenate([[zeros], w])
    return x, w


def expected_error(ladder: Sequence[float], x: np.ndarray, w: np.ndarray, v_init: str | float = "half") -> dict:
    """Expected one-step error of ``ladder`` under the distribution ``(x, w)`` (normalised units):
    ``mae`` E|x − q(x)|, ``rmse``, ``saturated`` P(x > cap), ``spikes`` E[threshold crossings],
    ``mean_abs`` E|x| and ``rms`` the RMS value (the signal the error is compared with)."""
    v0 = initial_potential(ladder, v_init)
    q, s = one_step(x, ladder, v0)
    err = x - q
    cap = float(sum(ladder))
    return {"mae": float(np.sum(w * np.abs(err))), "rmse": float(math.sqrt(np.sum(w * err**2))),
            "saturated": float(np.sum(w[x > cap])), "spikes": float(np.sum(w * s)),
            "mean_abs": float(np.sum(w * np.abs(x))), "rms": float(math.sqrt(np.sum(w * x**2)))}


def halving(top: float, levels: int) -> tuple[float, ...]:
    """The halving ladder (top, top/2, …) of ``levels`` thresholds (Theorem 3.1's rule)."""
    return tuple(float(top) * 0.5**i for i in range(int(levels)))


def cap_top(peak: float, levels: int) -> float:
    """The smallest power-of-two top threshold whose ladder of ``levels`` halving thresholds can
    output ``peak`` in one step (cap 2θ_1 − θ_N ≥ peak), at most :data:`MAX_TOP`."""
    top = 2.0 ** -8
    while top < MAX_TOP and 2 * top - top * 0.5 ** (levels - 1) < peak:
        top *= 2
    return top


@dataclass(frozen=True)
class LadderChoice:
    """A layer's chosen ladder and why: ``ladder``, ``v_init`` (V_0, normalised), the one-step
    error (``mae``, ``rmse``, ``saturated``), ``spikes`` per value per step, ``mean_abs`` and
    ``rms`` of the values, ``relative`` (rmse / rms), the ``tolerance`` it had to meet and ``met``
    whether it did (False only when :data:`MAX_LEVELS` or :data:`MIN_STEP` stopped the search
    first), and ``peak`` (max / λ)."""

    ladder: tuple[float, ...]
    v_init: float
    mae: float
    rmse: float
    saturated: float
    spikes: float
    mean_abs: float
    rms: float
    tolerance: float
    met: bool
    peak: float

    @property
    def relative(self) -> float:
        """The relative one-step error: RMS error / RMS value (0 for a layer with no signal)."""
        return self.rmse / self.rms if self.rms > 0 else 0.0

    def to_dict(self) -> dict:
        return {"thresholds": list(self.ladder), "v_init": self.v_init, "relative": self.relative,
                "tolerance": self.tolerance, "met": self.met, "mae": self.mae, "rmse": self.rmse, "rms": self.rms,
                "mean_abs": self.mean_abs, "saturated": self.saturated, "spikes": self.spikes, "peak": self.peak}


def choose_ladder(x: np.ndarray, w: np.ndarray, peak: float, tolerance: float = TOLERANCE,
                  v_init: str | float = "half", max_levels: int = MAX_LEVELS) -> LadderChoice:
    """The ladder of one layer (module docstring): the top covers ``peak`` (the largest value, in
    units of λ), and the fewest levels whose expected one-step RMS error under ``(x, w)`` is at
    most ``tolerance`` × the RMS value. A layer with no signal (dead) gets one level."""
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise ValueError(f"the ladder tolerance must be a number in (0, 1), got {tolerance!r}")
    peak = float(peak) if math.isfinite(peak) and peak > 0 else 1.0
    choice = None
    for levels in range(1, max_levels + 1):
        ladder = halving(cap_top(peak, levels), levels)
        e = expected_error(ladder, x, w, v_init)
        rel = e["rmse"] / e["rms"] if e["rms"] > 0 else 0.0
        choice = LadderChoice(ladder, initial_potential(ladder, v_init), e["mae"], e["rmse"], e["saturated"],
                              e["spikes"], e["mean_abs"], e["rms"], float(tolerance), rel <= tolerance, peak)
        if choice.met or ladder[-1] <= MIN_STEP:
            break
    return choice


def layer_ladders(stats, scales: Mapping[str, float], tolerance: float = TOLERANCE,
                  v_init: str | float = "half") -> dict[str, LadderChoice]:
    """:func:`choose_ladder` for every neuron: ``scales`` maps a ReLU node to the λ its layer is
    normalised by; its histogram, mean and extremes come from ``stats``
    (:class:`~sjunet.calibration.store.CalibrationStats`)."""
    out = {}
    for relu, lam in scales.items():
        ts = stats.nodes[relu]
        x, w = histogram_points(ts.histogram, ts.bin_edges, lam, ts.mean)
        peak = max(abs(float(ts.max)), abs(float(ts.min))) / lam if lam > 0 else 1.0
        out[relu] = choose_ladder(x, w, peak, tolerance, v_init)
    return out


__all__ = ["LadderChoice", "MAX_LEVELS", "MAX_TOP", "MIN_STEP", "TOLERANCE", "cap_top", "choose_ladder",
           "expected_error", "halving", "histogram_points", "initial_potential", "layer_ladders", "one_step"]
