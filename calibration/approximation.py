"""Instance / group / layer norm with a fixed deviation (spec §11): the fit, the ANN the SNN
implements, and the approximation gap — estimated on data not used to fit it.

A norm y = (x − μ_s)/σ_s·γ + β (per-sample mean μ_s and deviation σ_s = sqrt(var_s + eps) over a
group of channels and all positions) is canonically :class:`~sjunet.layers.stages.Center` (exact, linear)
→ :class:`~sjunet.layers.stages.Normalize` → :class:`~sjunet.layers.stages.ChannelAffine` (γ, β). Rates cannot
divide by a per-sample σ_s, so conversion divides by a fixed per-channel σ̂ fit on the calibration
set (:func:`fixed_deviation`) and folds 1/σ̂ into the affine. Calibration records the fit's sums
(:class:`DeviationStats`, :class:`DeviationFit`) at every norm during its first pass over the *exact*
ANN, then measures what fixing the deviations costs the ANN itself (:func:`estimate_gap`,
:func:`measure_gap`): the exact ANN against the ANN with fixed deviations (:func:`approximated_graph`)
on samples the σ̂ it uses was not fit on —

* held-out batches given apart (``calibrate(..., gap_data=...)``; ``sjunet calibrate`` gives the
  validation split, whole, and leaves its images out of the calibration split): the estimate is of σ̂
  fit on the calibration set; the stored σ̂ is then refit on both (more data only helps). This is
  the honest estimate: calibration crops, or the very images the ANN was trained on, can misstate
  what whole unseen images cost (issue 26 measured 5-fold estimates 1.3–2.2× below held-out gaps);
* without them, 5-fold cross-validation over the calibration samples (sample i in fold i % 5, each
  output approximated with σ̂ fit on the other folds: every sample held out once at the cost of one
  pass, :func:`cross_validated_outputs`); a single calibration sample is in-sample (``held_out: false``).

Each estimate carries a 95 % percentile-bootstrap interval over its samples (``interval``) and a flag
for a degenerate ANN (``degenerate``: one class at every pixel, or a constant output — agreement
cannot show a gap then). The gate that refuses a conversion on it is :mod:`.gap` (re-exported here).
"""
from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
from torch import fx

from sjunet.calibration.gap import CONFIDENCE
from sjunet.calibration.gap import (  # noqa: F401 - the gate, re-exported where it lived before
    GAP_MAX_RELATIVE_ERROR, GAP_MAX_RELATIVE_ERROR_SEGMENTATION, GAP_MIN_AGREEMENT, GAP_REMEDY, gap_blocker, gap_line,
    gap_reasons, gap_refusal)
from sjunet.graph import Recorder
from sjunet.layers.stages import Normalize

FOLDS = 5  #: cross-validation folds of the gap (sample i is in fold i % FOLDS)


def fixed_deviation(weighted_inverse: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The least-squares fixed deviation σ̂_c per channel from the calibration sums.

    For channel c (in group g) of calibration sample s, the norm's output before its affine is
    (x_s(p) − μ_s)/σ_s at every position p; with a fixed deviation it is (x_s(p) − μ_s)·r,
    r = 1/σ̂_c. The squared output error over the calibration set (γ_c² is a common factor)

        L(r) = Σ_s Σ_p (x_s(p) − μ_s)² (1/σ_s − r)² = P Σ_s w_s (1/σ_s − r)²,
        w_s = mean_p (x_s(p) − μ_s)²   (channel c's energy about its group's mean),

    is a parabola in r; dL/dr = 0 gives

        1/σ̂_c = Σ_s (w_s/σ_s) / Σ_s w_s,   i.e.   σ̂_c = Σ_s w_s / Σ_s (w_s/σ_s)

    (``weight`` = Σ_s w_s, ``weighted_inverse`` = Σ_s w_s/σ_s). For an instance norm w_s = var_s =
    σ_s² − eps, so σ̂ = E[σ_s² − eps]/E[(σ_s² − eps)/σ_s], which is the spec's E[σ_s²]/E[σ_s] as
    eps → 0. Two refinements over that formula, both exact minimisers where it is an approximation:
    eps is kept (it matters when var_s is of the order of eps), and for a group norm each channel
    gets its own σ̂_c weighted by its own energy — at least as good as one σ̂ per group, and free,
    since 1/σ̂ is folded into the per-channel affine anyway. A channel constant on every
    calibration sample (Σ w_s = 0) outputs 0 whatever σ̂ is; it gets σ̂ = sqrt(eps), its σ_s.
    """
    a, w = weighted_inverse.to(torch.float64), weight.to(torch.float64)
    fallback = torch.full_like(w, math.sqrt(eps))
    return torch.where((a > 0) & (w > 0), w / a.clamp_min(torch.finfo(torch.float64).tiny), fallback)


class DeviationStats:
    """The sums :func:`fixed_deviation` needs for one norm node (its :class:`~sjunet.layers.stages.
    Normalize` module), plus Σσ_s and Σσ_s² per group (the spread of σ_s: how much fixing it costs)."""

    def __init__(self, module: Normalize) -> None:
        self.module = module
        self.weighted_inverse = self.weight = self.s1 = self.s2 = None
        self.samples = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """Add samples: ``x`` ([N, C, H, W]) is the norm's input (the centred tensor)."""
        if x.shape[0] == 0:
            return
        m = self.module
        sigma = m.deviation(x).to(torch.float64)  # [N, G]
        n, c = x.shape[:2]
        g = x.to(torch.float64).reshape(n, m.groups, -1)
        centred = (g - g.mean(-1, keepdim=True)).reshape(n, c, -1)
        w = centred.pow(2).mean(-1)  # [N, C]
        sig_c = sigma.repeat_interleave(c // m.groups, dim=1)
        parts = ((w / sig_c).sum(0), w.sum(0), sigma.sum(0), sigma.pow(2).sum(0))
        if self.weight is None:
            self.weighted_inverse, self.weight, self.s1, self.s2 = parts
        else:
            self.weighted_inverse = self.weighted_inverse + parts[0]
            self.weight = self.weight + parts[1]
            self.s1, self.s2 = self.s1 + parts[2], self.s2 + parts[3]
        self.samples += n

    def __add__(self, other: "DeviationStats") -> "DeviationStats":
        out = DeviationStats(self.module)
        for s in (self, other):
            if s.weight is not None:
                for k in ("weighted_inverse", "weight", "s1", "s2"):
                    v = getattr(s, k)
                    setattr(out, k, v if getattr(out, k) is None else getattr(out, k) + v)
                out.samples += s.samples
        return out

    def sigma(self) -> torch.Tensor:
        """σ̂ per channel ([C], float64, on the CPU)."""
        if self.weight is None:
            raise ValueError("no calibration samples reached this norm")
        return fixed_deviation(self.weighted_inverse, self.weight, self.module.eps).cpu()

    def spread(self) -> float:
        """The largest coefficient of variation std(σ_s)/mean(σ_s) over the groups (0: σ_s never
        changes across samples, and fixing it is exact)."""
        mean = self.s1 / self.samples
        var = (self.s2 / self.samples - mean.pow(2)).clamp_min(0)
        return float((var.sqrt() / mean).max())


def norm_nodes(gm: fx.GraphModule) -> dict[str, Normalize]:
    """The :class:`~sjunet.layers.stages.Normalize` nodes of a canonical graph, by node name."""
    return {n.name: gm.get_submodule(n.target) for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), Normalize)}


def approximated_graph(gm: fx.GraphModule, sigmas: dict[str, torch.Tensor]) -> fx.GraphModule:
    """A copy of the canonical graph ``gm`` dividing by the fixed deviations ``sigmas`` (node name
    → σ̂ per channel) instead of each sample's: the ANN the SNN implements."""
    out = copy.deepcopy(gm)
    for name, m in norm_nodes(out).items():
        if name not in sigmas:
            raise ValueError(f"no fixed deviation for norm node {name!r}")
        p = next(iter(out.parameters()), None)
        m.fix(torch.as_tensor(sigmas[name]).to(p.dtype if p is not None else torch.float32))
    return out


def approximated_ann(model: torch.nn.Module, stats) -> fx.GraphModule:
    """The ANN a conversion of ``model`` with ``stats`` (:class:`~sjunet.calibration.store.
    CalibrationStats`) implements: its canonical graph with the recorded σ̂ of every norm."""
    from sjunet.graph import canonical_graph

    gm = canonical_graph(model, stats.data.get("input_shape")).gm
    sigmas = {k: torch.as_tensor(v.sigma) for k, v in stats.nodes.items() if v.sigma is not None}
    return approximated_graph(gm, sigmas).eval()


def segmentation_like(channels: int, post: Iterable[dict]) -> bool:
    """Whether the output is judged by pixel agreement: several channels (argmax), or one channel
    followed by a sigmoid (threshold 0.5, i.e. logit 0)."""
    return channels > 1 or any(op.get("op") == "sigmoid" for op in post)


def _labels(y: torch.Tensor) -> torch.Tensor:
    return y.argmax(1) if y.shape[1] > 1 else (y[:, 0] > 0)



BOOTSTRAP = 1000  #: resamples of the held-out samples behind that interval


@torch.no_grad()
def measure_gap(outputs: Iterable[tuple[torch.Tensor, torch.Tensor]], post: Iterable[dict] = (),
                bootstrap: int = BOOTSTRAP, seed: int = 0) -> dict:
    """The exact ANN's outputs against the approximated ANN's, ``(y, ŷ)`` per batch: relative L2
    error ‖y − ŷ‖/‖y‖ over all samples (and of the worst sample), for segmentation-like outputs
    (:func:`segmentation_like`) the fraction of pixels whose label agrees, each with its
    :data:`CONFIDENCE` interval (``interval``: a percentile bootstrap over the samples — which images
    happen to be held out is the main source of error of a gap measured on a few), and
    ``degenerate``: why the exact ANN's output cannot show a gap (one class at every pixel, or a
    constant output), else None."""
    post = list(post)
    d, r, agree, pixels = [], [], [], []
    seg = None
    classes: set[int] = set()
    lo = hi = None
    for y, z in outputs:
        y, z = y.double(), z.double()
        if seg is None:
            seg = segmentation_like(y.shape[1], post)
        d += (y - z).pow(2).flatten(1).sum(1).tolist()
        r += y.pow(2).flatten(1).sum(1).tolist()
        flat = y.transpose(0, 1).flatten(1)  # [C, samples · positions]
        lo = flat.amin(1) if lo is None else torch.minimum(lo, flat.amin(1))
        hi = flat.amax(1) if hi is None else torch.maximum(hi, flat.amax(1))
        if seg:
            labels = _labels(y)
            agree += (labels == _labels(z)).flatten(1).sum(1).tolist()
            pixels += [labels[0].numel()] * y.shape[0]
            if len(classes) < 2:
                classes.update(int(v) for v in labels.unique())
    if not d:
        raise ValueError("no samples to measure the approximation gap on")
    d_, r_ = torch.tensor(d, dtype=torch.float64), torch.tensor(r, dtype=torch.float64)
    num, den = float(d_.sum()), float(r_.sum())
    per = (d_[r_ > 0] / r_[r_ > 0]).sqrt()
    out = {"relative_error": math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else None),
           "worst_sample_relative_error": float(per.max()) if per.numel() else 0.0,
           "agreement": sum(agree) / sum(pixels) if seg else None, "samples": len(d)}
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(d), (max(1, bootstrap), len(d)), generator=g)
    q = torch.tensor([(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2], dtype=torch.float64)

    def interval(values: torch.Tensor) -> list[float]:
        return [float(v) for v in torch.quantile(values, q)]

    rel = (d_[idx].sum(1) / r_[idx].sum(1).clamp_min(torch.finfo(torch.float64).tiny)).sqrt()
    out["interval"] = {"relative_error": interval(rel) if den > 0 else None,
                       "agreement": interval(torch.tensor(agree, dtype=torch.float64)[idx].sum(1)
                                             / torch.tensor(pixels, dtype=torch.float64)[idx].sum(1)) if seg else None,
                       "confidence": CONFIDENCE,
                       "method": f"percentile bootstrap over the {len(d)} samples ({max(1, bootstrap)} resamples)"}
    out["degenerate"] = None
    if seg and len(classes) == 1:
        c = next(iter(classes))
        what = f"class {c}" if y.shape[1] > 1 else ("the foreground" if c else "the background")
        out["degenerate"] = (f"the ANN predicts {what} at every pixel of these {len(d)} samples, so pixel agreement "
                             "cannot show a gap (untrained or broken weights?)")
    elif bool(((hi - lo) <= 1e-6 * torch.maximum(hi.abs(), lo.abs()).clamp_min(1e-30)).all()):
        out["degenerate"] = (f"the ANN's output is constant over every position of these {len(d)} samples "
                             "(untrained or broken weights?)")
    return out


@torch.no_grad()
def cross_validated_outputs(gm: fx.GraphModule, folds: dict[str, list[DeviationStats]], batches: Iterable[torch.Tensor],
                            ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """``(exact output, approximated output)`` per batch, each sample i approximated with the σ̂ fit
    on the calibration samples of the other folds (fold = i % FOLDS; ``folds``: per norm node, the
    :class:`DeviationStats` of each fold) — every sample is held out once, at the cost of one pass.
    With a single sample there is nothing to hold out: σ̂ is fit on it (in-sample)."""
    names = list(folds)
    whole = {k: sum(folds[k][1:], folds[k][0]) for k in names}
    n_folds = len(folds[names[0]])
    used = [f for f in range(n_folds) if folds[names[0]][f].samples > 0]
    sig = {f: {k: (sum((folds[k][g] for g in used if g != f), DeviationStats(folds[k][f].module))
                   if len(used) > 1 else whole[k]).sigma() for k in names} for f in used}
    approx = approximated_graph(gm, sig[used[0]])
    modules = norm_nodes(approx)
    start = 0
    for x in batches:
        y = gm(x)
        z = torch.empty_like(y)
        fold = torch.arange(start, start + x.shape[0], device=x.device) % n_folds
        for f in fold.unique().tolist():
            for k, m in modules.items():
                m.fix(sig[f][k].to(y.dtype).to(y.device))
            z[fold == f] = approx(x[fold == f])
        start += x.shape[0]
        yield y, z


class DeviationFit:
    """The deviation sums of every norm of a canonical graph, gathered during one pass over the exact
    ANN (:meth:`observe`, fed by calibration's recorder), per fold (sample i in fold i % :data:`FOLDS`)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.norms = norm_nodes(gm)
        self.norm_of = {n.args[0].name: n.name for n in gm.graph.nodes if n.name in self.norms}
        self.folds = {k: [DeviationStats(m) for _ in range(FOLDS)] for k, m in self.norms.items()}

    def observe(self, name: str, out: torch.Tensor, offset: int) -> None:
        """Node ``name``'s output for the samples ``offset``, ``offset + 1``, … (a norm's input: its sums)."""
        if name in self.norm_of:
            fold = torch.arange(offset, offset + out.shape[0], device=out.device) % FOLDS
            for f, d in enumerate(self.folds[self.norm_of[name]]):
                d.add(out[fold == f])

    def whole(self) -> dict[str, DeviationStats]:
        return {k: sum(f[1:], f[0]) for k, f in self.folds.items()}

    def samples(self) -> int:
        return sum(d.samples for d in next(iter(self.folds.values()))) if self.folds else 0


@torch.no_grad()
def estimate_gap(gm: fx.GraphModule, post: list, fit: DeviationFit, batches: Iterable[torch.Tensor],
                 gap_batches: Iterable[torch.Tensor] | None = None, estimated_on: str | None = None,
                 multiples: Iterable[int] | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """The approximation gap, estimated on samples not used to fit the σ̂ it is measured with, and
    the σ̂ to store; returns ``(approximation record, σ̂ per norm node)``.

    With ``gap_batches`` (samples held apart from the calibration set — the validation split, evaluated
    whole as the test images are): σ̂ fit on every calibration sample (``fit``), the gap measured on
    them, then σ̂ refit on both (more data only helps; the estimate is of the σ̂ fit without them).
    Without: ``batches`` (the calibration set again) cross-validated (:func:`cross_validated_outputs`)
    — not used to fit σ̂ either, but the ANN may have been trained on these very samples, and crops
    stand for whole images only as far as the norms' statistics allow. Either way with its
    :data:`CONFIDENCE` interval and the degenerate-output flag (:func:`measure_gap`). Held-out inputs
    of other sizes (whole images after crops) are padded to the graph's size ``multiples`` per axis
    (reflect, as evaluation pads them) and the outputs cropped back."""
    whole = fit.whole()
    if gap_batches is not None:
        approx = approximated_graph(gm, {k: d.sigma() for k, d in whole.items()})
        extra = {k: DeviationStats(m) for k, m in fit.norms.items()}

        def keep(name, value):
            if name in fit.norm_of:
                extra[fit.norm_of[name]].add(value)

        def pair(x):
            sizes, xp = x.shape[2:], pad_to_multiples(x, multiples)
            crop = (..., *(slice(0, n) for n in sizes))
            return Recorder(gm, keep).run(xp)[crop], approx(xp)[crop]

        pairs = (pair(x) for x in gap_batches)
        gap = measure_gap(pairs, post)
        final = {k: whole[k] + extra[k] for k in whole}
        where = estimated_on or "held-out"
        how = (f"sigma fit on the {fit.samples()} calibration samples, the gap measured on {gap['samples']} {where} "
               "samples held apart from them; the stored sigma is refit on both")
        held_out = True
    else:
        gap = measure_gap(cross_validated_outputs(gm, fit.folds, batches), post)
        final = whole
        held_out = sum(d.samples > 0 for d in next(iter(fit.folds.values()))) > 1
        where = "cross-validated calibration" if held_out else "calibration (in-sample)"
        how = (f"{FOLDS}-fold cross-validation over the calibration samples (sample i in fold i % {FOLDS}): each "
               "output compared under sigma fit on the other folds" if held_out
               else "in-sample: a single calibration sample")
    sigmas = {k: d.sigma() for k, d in final.items()}
    record = {"nodes": [{"node": k, "kind": m.kind, "groups": m.groups, "channels": int(sigmas[k].numel()),
                         "eps": m.eps, "spread": final[k].spread()} for k, m in fit.norms.items()],
              **gap, "held_out": held_out, "estimated_on": where, "holdout": how}
    return record, sigmas


def pad_to_multiples(x: torch.Tensor, multiples: Iterable[int] | None) -> torch.Tensor:
    """``x`` ([B, C, *spatial]) padded at the end of each spatial axis to a multiple of that axis's
    entry of ``multiples`` — reflect where the axis is long enough, else replicate — as evaluation
    pads whole images (:func:`sjunet.evaluation.layout.pad_to_multiple`, a layer above this one)."""
    if not multiples:
        return x
    sizes = x.shape[2:]
    pads = [(-int(n)) % max(1, int(m)) for n, m in zip(sizes, multiples)]
    if not any(pads):
        return x
    flat = tuple(v for a in reversed(pads) for v in (0, a))
    return torch.nn.functional.pad(x, flat, mode="reflect" if all(a < n for a, n in zip(pads, sizes)) else "replicate")
