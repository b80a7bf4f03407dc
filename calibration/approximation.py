"""Instance / group / layer norm with a fixed deviation (spec §11): the fit, the ANN the SNN
implements, and the approximation gap.

A norm y = (x − μ_s)/σ_s·γ + β (per-sample mean μ_s and deviation σ_s = sqrt(var_s + eps) over a
group of channels and all positions) is canonically :class:`~sjunet.layers.stages.Center` (exact, linear)
→ :class:`~sjunet.layers.stages.Normalize` → :class:`~sjunet.layers.stages.ChannelAffine` (γ, β). Rates cannot
divide by a per-sample σ_s, so conversion divides by a fixed per-channel σ̂ fit on the calibration
set (:func:`fixed_deviation`) and folds 1/σ̂ into the affine. Calibration records the fit's sums
(:class:`DeviationStats`) at every norm during its first pass over the *exact* ANN, then measures
what fixing the deviations costs the ANN itself (:func:`measure_gap`): the exact ANN against the
ANN with fixed deviations (:func:`approximated_graph`) on held-out calibration samples: 5-fold
cross-validation (sample i in fold i % 5), each sample's output approximated with σ̂ fit on the
other folds, so every sample is held out once at the cost of one forward pass
(:func:`cross_validated_outputs`); the stored σ̂ is fit on all samples. With a single calibration
sample the gap is in-sample (``held_out: false``).

Refusal (:func:`gap_refusal`): a segmentation-like output (several channels: argmax; or one
channel followed by a sigmoid: the 0.5 threshold) is refused when the pixel agreement with the
exact ANN is below :data:`GAP_MIN_AGREEMENT` (0.98); any other output when the relative L2 error
exceeds :data:`GAP_MAX_RELATIVE_ERROR` (0.1). ``accept_gap`` accepts it; spiking-flow fine-tuning
(``sjunet finetune``) recovers most of it.
"""
from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
from torch import fx

from sjunet.layers.stages import Normalize

GAP_MIN_AGREEMENT = 0.98  #: refuse a segmentation output whose argmax agrees on fewer pixels
GAP_MAX_RELATIVE_ERROR = 0.1  #: refuse any other output whose relative L2 error is larger
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


@torch.no_grad()
def measure_gap(outputs: Iterable[tuple[torch.Tensor, torch.Tensor]], post: Iterable[dict] = ()) -> dict:
    """The exact ANN's outputs against the approximated ANN's, ``(y, ŷ)`` per batch: relative L2
    error ‖y − ŷ‖/‖y‖ over all samples (and of the worst sample), and for segmentation-like outputs
    (:func:`segmentation_like`) the fraction of pixels whose label agrees."""
    post = list(post)
    num = den = 0.0
    worst = 0.0
    agree = pixels = samples = 0
    seg = None
    for y, z in outputs:
        y, z = y.double(), z.double()
        if seg is None:
            seg = segmentation_like(y.shape[1], post)
        d = (y - z).pow(2).flatten(1).sum(1)
        r = y.pow(2).flatten(1).sum(1)
        num, den = num + float(d.sum()), den + float(r.sum())
        if bool((r > 0).any()):
            worst = max(worst, float((d[r > 0] / r[r > 0]).sqrt().max()))
        samples += int(y.shape[0])
        if seg:
            agree += int((_labels(y) == _labels(z)).sum())
            pixels += _labels(y).numel()
    if samples == 0:
        raise ValueError("no samples to measure the approximation gap on")
    return {"relative_error": math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else None),
            "worst_sample_relative_error": worst, "agreement": agree / pixels if seg else None, "samples": samples}


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


def gap_refusal(approximation: dict | None, accept_gap: bool = False) -> str | None:
    """One line refusing a conversion whose approximation gap (:func:`measure_gap`, as recorded by
    calibration) is too large — or was not measured — or None when it is acceptable or accepted."""
    if not approximation or not approximation.get("nodes") or accept_gap:
        return None
    n = len(approximation["nodes"])
    what = f"{n} instance/group/layer norm{'s' if n != 1 else ''} with a fixed deviation"
    remedy = ("accept it with --accept-gap (accept_gap=True); fine-tuning (`sjunet finetune`) recovers most of it, "
              "or calibrate on data closer to what the model will see")
    agreement, rel = approximation.get("agreement"), approximation.get("relative_error")
    if agreement is not None:
        if agreement < GAP_MIN_AGREEMENT:
            return (f"approximation gap too large: {what} change {100 * (1 - agreement):.2f}% of the output pixels "
                    f"(agreement {agreement:.4f} < {GAP_MIN_AGREEMENT}; relative error "
                    f"{rel if rel is None else f'{rel:.3g}'}) on "
                    f"{_samples(approximation)}; {remedy}")
        return None
    if rel is None or not rel <= GAP_MAX_RELATIVE_ERROR:
        if rel is None:
            return f"approximation gap not measured: {what}; re-run `sjunet calibrate` to measure it, or {remedy}"
        return (f"approximation gap too large: {what} give the ANN a relative output error of {rel:.3g} "
                f"(> {GAP_MAX_RELATIVE_ERROR}) on {_samples(approximation)}; {remedy}")
    return None


def _samples(a: dict) -> str:
    n = a.get("samples")
    return f"{n} {'held-out ' if a.get('held_out') else ''}calibration sample{'s' if n != 1 else ''}"


def gap_line(approximation: dict | None) -> str | None:
    """One line describing the approximation gap (for the CLI), or None without norms."""
    if not approximation or not approximation.get("nodes"):
        return None
    n = len(approximation["nodes"])
    agreement = approximation.get("agreement")
    where = _samples(approximation) + ("" if approximation.get("held_out") else ", in-sample")
    text = f"approximation gap ({n} norm{'s' if n != 1 else ''} with fixed deviations, {where}): relative error " \
           f"{approximation.get('relative_error'):.3g}"
    if agreement is not None:
        text += f", pixel agreement {agreement:.4f}"
    return text
