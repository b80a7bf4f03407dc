"""Whole-set percentile estimation in one streaming pass, exact (spec §4).

The percentile is the nearest-rank order statistic x_(k) of the n values seen, k = ceil(p/100 · n)
(numpy's ``np.percentile(values, p, method="inverted_cdf")``). :class:`StreamingPercentile` finds it
**exactly** in one pass, keeping the ``capacity`` largest values seen so far.

Why a small buffer suffices. x_(k) is the m-th *largest* value, m = n − k + 1. Since
k = ceil(q·n) ≥ q·n (q = p/100), m ≤ (1 − q)·n + 1: for p = 99.9 a thousandth of the data. For
every n' ≤ N, m(n') ≤ (1 − q)·N + 1 < floor((1 − q)·N) + 2 =: M (:func:`top_capacity`; the + 2
also absorbs rounding of (1 − q)·N), so a buffer of M values serves any count up to an upper
bound N known up front — :func:`sjunet.calibration.calibrate` takes N = (number of batches) ×
(the node's numel in the first batch) and checks the bound afterwards (:meth:`exact`).

Invariant (proof by induction over batches): after each batch the buffer holds, as a multiset of
*values*, the top-min(M, seen) values of everything seen. Empty at the start. A batch B arrives
with buffer T = top-M(S) of the values S seen before. (i) top-M(S ∪ B) = top-M(T ∪ B): a value of
S outside T has M values of S at least as large in T, so it is not needed among the top M of
S ∪ B (up to ties, which leave the multiset of values unchanged). (ii) When T is full with
smallest value t, a value v ≤ t of B is not needed either: T already holds M values ≥ v. So the
update keeps top-M(T ∪ B[B > t]) — one comparison over the batch, then a ``topk`` over the few
survivors and the buffer. At the end, if m ≤ M (or nothing was ever dropped: n ≤ M) the m-th
largest value of the buffer *is* x_(k): the estimate has error 0 (:meth:`error_bound`).

When the bound N fails (a later batch larger than the first) :meth:`exact` says whether x_(k)
is still held (m ≤ M); where not, ``calibrate`` observes that tensor again in a second pass with
M from its exact count — exact again. A buffer larger than what :class:`Budget` allows (huge
calibration sets, or small p: M ≈ (1 − q)·n) gets capacity 0: that tensor then needs the second
pass :meth:`StreamingPercentile.observe_hist`, the earlier estimator — ``nbins`` equal bins over
[min(0, min), max], exact integer counts, linear interpolation in the bin of x_(k), error ≤ one
bin width. :meth:`exact` is False then, and :meth:`error_bound` returns that bin width.

The same pass keeps min, max, the sum and count, and a coarse histogram for plots
(:class:`CoarseHistogram`).

**Cost.** Calibration's budget is the ANN forward it rides on, so a batch costs a few passes over
each tensor and allocates nothing large: the temporaries (|x|, bin indices) go into one
:class:`Scratch` shared by every estimator of a calibration; the comparison with t is made on the
maxima of blocks of 64 values first (only blocks holding a survivor are searched, so it reads each
value once and gathers next to nothing); and the first batch, whose buffer is not full yet, takes a
provisional t from a strided sample — kept only when at least M values of the batch exceed it
(then the top M are all above it, invariant (ii)), else the whole batch goes to ``topk``. Survivors
wait in spare room past the top M and ``topk`` runs only when that room is full, so the held values
are always the top ``len`` of everything seen (every value dropped is at most t ≤ every value held).
"""
from __future__ import annotations

import concurrent.futures
import math

import numpy as np
import torch

_CHUNK = 1 << 22  # values per bincount call of the fallback histogram
#: default total number of buffered values of one calibration (all nodes together): 256 MiB of float32
DEFAULT_BUDGET = 1 << 26
#: bins of the coarse histogram stored for plots (at most)
COARSE_BINS = 256
#: values per block of the block-maximum search for values above the buffer's threshold
BLOCK = 64


class Scratch:
    """Temporaries of one calibration, shared by its estimators (they observe one at a time): one
    growing buffer per name and dtype, so a batch allocates nothing large."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, name: str, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, dtype, device)
        t = self._bufs.get(key)
        if t is None or t.numel() < n:
            t = self._bufs[key] = torch.empty(n, dtype=dtype, device=device)
        return t[:n]


class Blocks:
    """A flat tensor ``v`` seen as blocks of :data:`BLOCK` values (and a shorter tail): its min and
    max (:attr:`lo`, :attr:`hi`; one pass) and :meth:`above`, which takes every block's maximum (one
    more pass, when first asked) and then searches only the blocks whose maximum exceeds the
    threshold."""

    def __init__(self, v: torch.Tensor) -> None:
        self.v = v
        lo, hi = torch.aminmax(v)
        self.lo, self.hi = float(lo), float(hi)
        self.maxs: torch.Tensor | None = None

    def above(self, t: float) -> torch.Tensor:
        """The values greater than ``t``, in no particular order (a plain comparison for a small
        tensor, or when most blocks hold one)."""
        v = self.v
        n = v.numel()
        whole = n - n % BLOCK
        if whole < 16 * BLOCK:
            return v[v > t]
        blocks = v[:whole].view(-1, BLOCK)
        if self.maxs is None:
            self.maxs = blocks.amax(1)
        hit = self.maxs > t
        if int(hit.sum()) * 4 > hit.numel():
            return v[v > t]
        cand = blocks[hit].reshape(-1)
        out = cand[cand > t]
        if whole < n:
            tail = v[whole:]
            out = torch.cat([out, tail[tail > t]])
        return out


_POOL: "concurrent.futures.ThreadPoolExecutor | None" = None


def bincount(idx: torch.Tensor, minlength: int) -> torch.Tensor:
    """``torch.bincount`` (serial in PyTorch) of a large CPU tensor counted in one slice per torch
    thread, concurrently (ATen releases the GIL), and summed: the same counts."""
    threads = torch.get_num_threads()
    if threads < 2 or idx.numel() < (1 << 18) or idx.device.type != "cpu":
        return torch.bincount(idx, minlength=minlength)
    global _POOL
    if _POOL is None or _POOL._max_workers < threads - 1:
        _POOL = concurrent.futures.ThreadPoolExecutor(threads - 1, thread_name_prefix="sjunet-bincount")
    parts = idx.tensor_split(threads)
    futures = [_POOL.submit(torch.bincount, part, None, minlength) for part in parts[1:]]
    counts = torch.bincount(parts[0], minlength=minlength)
    for f in futures:
        c = f.result()
        if c.numel() > counts.numel():
            c[:counts.numel()] += counts
            counts = c
        else:
            counts[:c.numel()] += c
    return counts


def top_capacity(p: float, n: int) -> int:
    """M: a buffer size holding the m-th largest value, m = n' − ceil(p/100·n') + 1, for every
    count n' ≤ ``n`` (see the module docstring); never more than ``n``."""
    n = int(n)
    return min(n, math.floor((1.0 - p / 100.0) * n) + 2) if n > 0 else 0


def nearest_rank(p: float, n: int) -> int:
    """k = ceil(p/100 · n) (at least 1): the 1-based rank of the nearest-rank percentile."""
    return max(1, math.ceil(p / 100.0 * n))


class Budget:
    """Values the top buffers of one calibration may hold together; a node whose buffer does not
    fit falls back to the two-pass histogram (it asks once, at its first batch)."""

    def __init__(self, values: int = DEFAULT_BUDGET) -> None:
        self.left = int(values)

    def take(self, n: int) -> bool:
        if n <= self.left:
            self.left -= n
            return True
        return False


class CoarseHistogram:
    """A histogram of at most ``bins`` bins for plots, in one pass over data whose range grows.

    Bins are [i·w, (i+1)·w) for integers i, w = 2^e, covering [min(0, min), max(0, max)]. When the
    range outgrows ``bins`` bins, e increases and bin pairs merge (bin i -> i >> d): bins of width
    2^(e+d) are unions of bins of width 2^e, so the merge is exact and the result does not depend on
    where the range grew. Counts total exactly the values observed, and are exact when min ≥ 0
    (every recorded tensor but the network input: x·2^-e is exact); with negative values x − lo is
    rounded, so a value within one float rounding of a bin edge may be counted in the neighbouring
    bin. Plots only.
    """

    def __init__(self, bins: int = COARSE_BINS) -> None:
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins = int(bins)
        self.e: int | None = None  # bin width 2^e, once the range is not just {0}
        self.a = 0  # index of the first bin
        self.counts = np.zeros(0, dtype=np.int64)
        self.lo = 0.0
        self.hi = 0.0
        self.zeros = 0  # values observed while every value was 0 (no width chosen yet)

    def _nbins(self, e: int) -> int:
        return math.floor(math.ldexp(self.hi, -e)) + 1 - math.floor(math.ldexp(self.lo, -e))

    def add(self, v: torch.Tensor, vmin: float, vmax: float, scratch: "Scratch | None" = None) -> None:
        """Count the values of the flat float tensor ``v`` whose min and max are ``vmin``/``vmax``
        (temporaries in ``scratch`` when given)."""
        self.lo, self.hi = min(self.lo, vmin), max(self.hi, vmax)
        if self.hi <= self.lo:  # only zeros so far
            self.zeros += v.numel()
            return
        e = math.ceil(math.log2((self.hi - self.lo) / self.bins)) if self.e is None else self.e
        while self._nbins(e) > self.bins:
            e += 1
        w = math.ldexp(1.0, e)
        a = math.floor(math.ldexp(self.lo, -e))
        nb = self._nbins(e)
        self._rebin(e, a, nb)
        lo = a * w
        # bin of x: trunc((x − lo)·2^-e) (x ≥ lo, so truncation is floor); int32 + bincount costs a
        # fifth of torch.histc on the CPU
        if scratch is None:
            idx = ((v - lo) if lo else v).mul(math.ldexp(1.0, -e)).to(torch.int32)
        else:
            f = scratch.get("bins", v.numel(), v.dtype, v.device)
            if lo:
                torch.sub(v, lo, out=f).mul_(math.ldexp(1.0, -e))
            else:
                torch.mul(v, math.ldexp(1.0, -e), out=f)
            # indices ≤ nb ≤ 257: int16, the cheapest to convert to and to count (uint8 converts slowly)
            idx = scratch.get("bin_index", v.numel(), torch.int16, v.device).copy_(f)
        c = bincount(idx, minlength=nb + 1).cpu().numpy()
        if len(c) > nb:  # x − lo rounded up onto the upper edge
            c[nb - 1] += c[nb:].sum()
        self.counts += c[:nb]
        if self.zeros:
            self.counts[-a] += self.zeros  # bin [0, w)
            self.zeros = 0

    def merge(self, other: "CoarseHistogram") -> None:
        """Add the counts of ``other`` (another stream's histogram with as many bins): bins of the
        coarser width of the two, widened until they cover the union's range — unions of the finer
        bins, so the merge is as exact as the two histograms."""
        if other.e is None and not other.zeros:
            return  # nothing observed
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        zeros = self.zeros + other.zeros
        if self.hi <= self.lo:
            self.zeros = zeros
            return
        widths = [w for w in (self.e, other.e) if w is not None]
        e = max(widths) if widths else math.ceil(math.log2((self.hi - self.lo) / self.bins))
        while self._nbins(e) > self.bins:
            e += 1
        a = math.floor(math.ldexp(self.lo, -e))
        self._rebin(e, a, self._nbins(e))
        if other.e is not None and len(other.counts):
            idx = (np.arange(other.a, other.a + len(other.counts)) >> (e - other.e)) - a
            np.add.at(self.counts, idx, other.counts)
        self.zeros = 0
        if zeros:
            self.counts[-a] += zeros  # bin [0, w)

    def _rebin(self, e: int, a: int, nb: int) -> None:
        if e == self.e and a == self.a and nb == len(self.counts):
            return  # the usual batch: the range did not grow
        new = np.zeros(nb, dtype=np.int64)
        if self.e is not None and len(self.counts):
            if e == self.e:  # the same width, more bins: a shift
                new[self.a - a:self.a - a + len(self.counts)] = self.counts
            else:
                idx = (np.arange(self.a, self.a + len(self.counts)) >> (e - self.e)) - a
                np.add.at(new, idx, self.counts)
        self.e, self.a, self.counts = e, a, new

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)``: at most ``bins`` counts and one more edge (one bin [0, 1) while every
        value was 0; none when nothing was observed)."""
        if self.e is None:
            if not self.zeros:
                return np.zeros(0, dtype=np.int64), np.zeros(1)
            return np.array([self.zeros], dtype=np.int64), np.array([0.0, 1.0])
        edges = (self.a + np.arange(len(self.counts) + 1)) * math.ldexp(1.0, self.e)
        return self.counts.copy(), edges


class StreamingPercentile:
    """Whole-set nearest-rank percentile (exact, one pass), min/max/mean/count and a coarse
    histogram of one tensor stream (see the module docstring).

    ``p``: the percentile the buffer is sized for. ``batches``: how many batches will be observed;
    the buffer is sized at the first batch for ``batches`` × its size values (an upper bound the
    calibration checks: :meth:`exact`); None keeps every value (exact for any p; tests, small data).
    ``budget``: a shared :class:`Budget` (None: unlimited). ``nbins``: bins of the fallback
    histogram (:meth:`observe_hist`). ``positive_only``: only values > 0 count. ``magnitude``:
    observe |x| (the scale of a signed tensor: a linear stage, a residual join). ``capacity``:
    the buffer size itself (instead of one from ``batches``), e.g. :func:`top_capacity` of a
    count known from an earlier pass.
    """

    def __init__(self, p: float = 99.9, batches: int | None = None, positive_only: bool = False,
                 magnitude: bool = False, nbins: int = 1 << 16, budget: Budget | None = None,
                 coarse_bins: int = COARSE_BINS, capacity: int | None = None, share: float = 1.0) -> None:
        if not 0 < p <= 100:
            raise ValueError(f"percentile p must be in (0, 100], got {p}")
        if nbins < 2:
            raise ValueError(f"nbins must be >= 2, got {nbins}")
        self.p = float(p)
        self.batches = batches
        self.nbins = int(nbins)
        self.positive_only = positive_only
        self.magnitude = magnitude
        self.budget = budget
        self.count = 0  # values counted (after positive_only)
        self.seen = 0  # elements observed (before positive_only): what the buffer bound is about
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.channels: int | None = None
        self._fixed = capacity
        #: the buffer is sized for ``share`` × the batches' values: a part of a concatenation sizes
        #: it for the whole, so the concatenation's estimator can be merged from its parts' (:meth:`union`)
        self.share = float(share)
        self.capacity: int | None = None  # decided at the first batch; 0: histogram fallback, -1: unbounded
        self.dropped = False  # whether a value ever left (or never entered) a full buffer
        self._buf: torch.Tensor | None = None  # the top values (first _fill), then room for survivors
        self._fill = 0
        self._thr: float | None = None  # values at or below it are not needed (invariant (ii)); None: not yet
        self.coarse = CoarseHistogram(coarse_bins)
        self.hist: np.ndarray | None = None  # fallback histogram (observe_hist)

    # -- the one pass ---------------------------------------------------------------------
    def _values(self, x: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
        v = x.detach().reshape(-1)
        if v.dtype != torch.float32 and v.dtype != torch.float64:
            v = v.float()
        if self.magnitude:
            v = v.abs() if scratch is None else torch.abs(v, out=scratch.get("values", v.numel(), v.dtype, v.device))
        if self.positive_only:
            v = v[v > 0]
        return v

    def observe(self, x: torch.Tensor, scratch: Scratch | None = None) -> None:
        """One batch: count, sum, min, max, the coarse histogram and the top buffer. ``scratch``:
        where the temporaries go (:class:`Scratch`; None: fresh tensors)."""
        if x.dim() >= 2:
            self.channels = int(x.shape[1])
        numel = x.numel()
        if self.capacity is None:
            self.capacity = self._capacity(numel)
        self.seen += numel
        v = self._values(x, scratch)
        if v.numel() == 0:
            return
        s = float(v.sum())  # cascade summation in the tensor's dtype (a tenth of the cost of float64)
        if not math.isfinite(s):  # a NaN or inf is there, or a float32 sum overflowed
            if not bool(torch.isfinite(v).all()):
                raise ValueError("non-finite activation values (NaN/inf) while calibrating")
            s = float(v.sum(dtype=torch.float64))
        b = Blocks(v)
        lo, hi = b.lo, b.hi
        self.count += v.numel()
        self.total += s
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.coarse.add(v, lo, hi, scratch)
        if self.capacity:
            self._keep_top(b)

    observe_range = observe  # the first of the two passes of the histogram estimator

    def _capacity(self, numel: int) -> int:
        if self._fixed is None and self.batches is None:
            return -1  # unbounded
        cap = (top_capacity(self.p, math.ceil(self.batches * numel * self.share)) if self._fixed is None
               else int(self._fixed))
        if self.budget is not None and not self.budget.take(cap):
            return 0
        return cap

    @property
    def _top(self) -> torch.Tensor | None:
        """The values held: the top ``len`` of everything seen (module docstring)."""
        return None if self._buf is None else self._buf[:self._fill]

    def _keep_top(self, b: Blocks) -> None:
        cap, v = self.capacity, b.v
        if self._thr is not None:  # full: only values above its smallest can enter (invariant (ii))
            if b.hi <= self._thr:
                self.dropped = True
                return
            v = b.above(self._thr)
            self.dropped = True
        elif self._fill == 0 and 0 < cap < v.numel():
            v, self._thr = self._provisional(b, cap)
        self._append(v)

    def _append(self, v: torch.Tensor) -> None:
        """Add candidates ``v`` to the held values: into the buffer's spare room (``slack`` values
        past the top M, so ``topk`` runs once per ``slack`` survivors, not once per batch), and
        when it is full, keep the top M of both (invariant (i)) and raise the threshold to their
        smallest."""
        cap, fill, n = self.capacity, self._fill, v.numel()
        if cap < 0:  # unbounded: every value
            self._buf = v.clone() if self._buf is None else torch.cat([self._top, v])
            self._fill = self._buf.numel()
            return
        room = cap + min(cap, 1 << 16)
        if self._buf is None:
            self._buf = torch.empty(room, dtype=v.dtype, device=v.device)
        if fill + n <= room:
            self._buf[fill:fill + n] = v
            self._fill = fill + n
            return
        kept = torch.cat([self._buf[:fill], v]).topk(cap, sorted=False).values
        self._buf[:cap] = kept
        self._fill = cap
        self.dropped = True
        self._thr = float(kept.min())

    def _provisional(self, b: Blocks, cap: int) -> tuple[torch.Tensor, float | None]:
        """The first batch's candidates for a buffer of ``cap`` < its size, and the threshold they
        passed: the values above a threshold t from a strided sample when at least ``cap`` of them
        are (the top ``cap`` of the stream then are all above t, now and later: invariant (ii)),
        else every value (and None)."""
        v = b.v
        stride = max(1, v.numel() // max(4 * cap, 1 << 16))
        if stride < 4:
            return v, None
        sample = v[::stride]
        k = min(sample.numel(), 2 * cap // stride + 16)  # twice the expected share: rarely too few
        t = float(sample.topk(k, sorted=False).values.min())
        kept = b.above(t)
        if kept.numel() < cap:
            return v, None
        self.dropped = True
        return kept, t

    @classmethod
    def union(cls, parts: "list[StreamingPercentile]", capacity: int, channels: int | None = None,
              **kwargs) -> "StreamingPercentile":
        """The estimator of the multiset union of the streams of ``parts`` (a concatenation's values
        are its parts' values), without observing it: count, sum, min, max and histogram add up;
        the top buffer is the top ``capacity`` of the parts' buffers — exact as long as each part's
        buffer holds its stream's top ``capacity`` (sized with ``share``) or all of it, and cut to
        the smallest buffer of a part that dropped values otherwise (:meth:`exact` then judges).
        ``kwargs``: the constructor's (p, magnitude, positive_only, …; as the parts')."""
        u = cls(capacity=capacity, **kwargs)
        u.capacity = capacity if all(q.capacity for q in parts) else 0
        u.channels = channels
        for q in parts:
            u.count += q.count
            u.seen += q.seen
            u.total += q.total
            u.min, u.max = min(u.min, q.min), max(u.max, q.max)
            u.coarse.merge(q.coarse)
        tops = [q._top for q in parts if q._top is not None]
        if u.capacity and tops:
            held = min([q._fill for q in parts if q.dropped], default=None)
            keep = capacity if held is None else min(capacity, held)
            merged = torch.cat(tops)
            u.dropped = any(q.dropped for q in parts) or merged.numel() > keep
            u._buf = merged.topk(keep, sorted=False).values if merged.numel() > keep else merged
            u._fill = u._buf.numel()
        return u

    # -- the fallback's second pass -------------------------------------------------------
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
        """Second pass of the histogram fallback (only where :meth:`exact` is False): counts into
        ``nbins`` equal bins over [min(0, min), max] from the first pass."""
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

    def exact(self, p: float | None = None) -> bool:
        """Whether the buffer holds the p-th percentile (default: the ``p`` it was sized for):
        nothing was dropped, or the rank from the top m = n − k + 1 is within the buffer."""
        p = self.p if p is None else p
        if self.count == 0:
            return True
        if not self.capacity or self._top is None:
            return False
        return not self.dropped or self.count - nearest_rank(p, self.count) + 1 <= self._top.numel()

    def percentile(self, p: float | None = None) -> float:
        """The p-th percentile, nearest rank: exact where :meth:`exact`, else from the fallback
        histogram within :meth:`error_bound`."""
        p = self.p if p is None else p
        if self.count == 0:
            return float("nan")
        if self.exact(p):
            m = self.count - nearest_rank(p, self.count) + 1  # x_(k) is the m-th largest
            return float(self._top.topk(m).values[-1])
        if self.hist is None:
            raise RuntimeError("the top buffer does not hold this percentile: it needs the histogram pass "
                               "(observe_hist) first")
        if int(self.hist.sum()) != self.count:
            raise RuntimeError("the histogram pass saw different data than the first pass")
        k = nearest_rank(p, self.count)
        cum = np.cumsum(self.hist)
        b = int(np.searchsorted(cum, k))  # first bin whose cumulative count reaches k
        before = int(cum[b - 1]) if b > 0 else 0
        frac = (k - before) / self.hist[b]
        est = self.lo + (b + frac) * self.bin_width
        return float(min(max(est, self.min), self.max))  # the exact value lies in [min, max]

    def error_bound(self, p: float | None = None) -> float:
        """Upper bound of |estimate − exact nearest-rank percentile|: 0 where :meth:`exact`, else
        one bin width of the fallback histogram."""
        return 0.0 if self.exact(p) else self.bin_width

    def coarse_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """Histogram for plots: ``(counts, edges)`` (:class:`CoarseHistogram`)."""
        return self.coarse.result()
