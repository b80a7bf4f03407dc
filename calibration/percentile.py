"""Whole-set percentile estimation in two streaming passes (spec §4).

Pass 1 (:meth:`StreamingPercentile.observe_range`) accumulates min, max, sum and count.
Pass 2 (:meth:`StreamingPercentile.observe_hist`) counts values into ``nbins`` equal bins over
``[min(0, min), max]`` with exact integer counts (``torch.bincount``).

The percentile is the nearest-rank order statistic x_(k), k = ceil(p/100 · n) (numpy's
``method='inverted_cdf'``). The estimate interpolates linearly inside the bin holding x_(k), so

    |λ̂ − x_(k)| ≤ bin width = (max − min(0, min)) / nbins            (the stated error bound)

which :meth:`StreamingPercentile.error_bound` returns and the tests check against numpy on the
concatenated data. With the default 2^16 bins that is 1.5e-5 of the range.
"""
from __future__ import annotations

import math

import numpy as np
import torch

_CHUNK = 1 << 22


class StreamingPercentile:
    """Two-pass whole-set percentile, min/max/mean/count and a histogram of one tensor stream."""

    def __init__(self, nbins: int = 1 << 16, positive_only: bool = False, magnitude: bool = False) -> None:
        if nbins < 2:
            raise ValueError(f"nbins must be >= 2, got {nbins}")
        self.nbins = int(nbins)
        self.positive_only = positive_only
        #: take |x| (the scale of a signed tensor: a linear stage, a residual join)
        self.magnitude = magnitude
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.channels: int | None = None
        self.hist: np.ndarray | None = None

    # -- pass 1 ---------------------------------------------------------------------------
    def _values(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().reshape(-1)
        if self.magnitude:
            x = x.abs()
        if self.positive_only:
            x = x[x > 0]
        return x.float()

    def observe_range(self, x: torch.Tensor) -> None:
        if x.dim() >= 2:
            self.channels = int(x.shape[1])
        v = self._values(x)
        if v.numel() == 0:
            return
        if not torch.isfinite(v).all():
            raise ValueError("non-finite activation values (NaN/inf) while calibrating")
        self.count += v.numel()
        self.total += float(v.double().sum())
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))

    # -- pass 2 ---------------------------------------------------------------------------
    @property
    def lo(self) -> float:
        return min(0.0, self.min)

    @property
    def hi(self) -> float:
        return self.max if self.max > self.lo else self.lo + 1.0

    @property
    def bin_width(self) -> float:
        return (self.hi - self.lo) / self.nbins

    def observe_hist(self, x: torch.Tensor) -> None:
        if self.count == 0:
            return
        if self.hist is None:
            self.hist = np.zeros(self.nbins, dtype=np.int64)
        v = self._values(x)
        scale = self.nbins / (self.hi - self.lo)
        for start in range(0, v.numel(), _CHUNK):
            idx = ((v[start:start + _CHUNK] - self.lo) * scale).long().clamp_(0, self.nbins - 1)
            self.hist += torch.bincount(idx, minlength=self.nbins).cpu().numpy()

    # -- results --------------------------------------------------------------------------
    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def percentile(self, p: float) -> float:
        """The p-th percentile (nearest rank), within :meth:`error_bound` of the exact value."""
        if self.count == 0:
            return float("nan")
        if self.hist is None:
            raise RuntimeError("percentile() needs the histogram pass (observe_hist) first")
        if int(self.hist.sum()) != self.count:
            raise RuntimeError("the histogram pass saw different data than the range pass")
        k = max(1, math.ceil(p / 100.0 * self.count))  # 1-based rank of x_(k)
        cum = np.cumsum(self.hist)
        b = int(np.searchsorted(cum, k))  # first bin whose cumulative count reaches k
        before = int(cum[b - 1]) if b > 0 else 0
        frac = (k - before) / self.hist[b]
        est = self.lo + (b + frac) * self.bin_width
        return float(min(max(est, self.min), self.max))  # the exact value lies in [min, max]

    def error_bound(self) -> float:
        """Upper bound of |estimate − exact nearest-rank percentile|: one bin width."""
        return self.bin_width

    def coarse_histogram(self, bins: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Histogram for plots: ``bins`` counts (fine bins summed) and their ``bins+1`` edges."""
        assert self.hist is not None
        factor = max(1, self.nbins // bins)
        n = self.nbins // factor
        counts = self.hist[: n * factor].reshape(n, factor).sum(1)
        edges = self.lo + np.arange(n + 1) * factor * self.bin_width
        return counts, edges
