"""The approximation gap's gate (spec §11, issue 26): when the fixed deviations of a model's
instance/group/layer norms (:mod:`.approximation`) cost the ANN too much to convert without asking.

A measured gap (:func:`sjunet.calibration.approximation.measure_gap`, as calibration records it) fails
(:func:`gap_reasons`) when a segmentation-like output's pixel agreement is below
:data:`GAP_MIN_AGREEMENT`, when any output's relative L2 error exceeds :data:`GAP_MAX_RELATIVE_ERROR`
(segmentation logits: :data:`GAP_MAX_RELATIVE_ERROR_SEGMENTATION` — the argmax can hold while the logits move), when the ANN is degenerate (one
class everywhere, a constant output: nothing can show a gap), or when it was never measured.
:func:`gap_refusal` is the one line ``convert`` refuses with; :func:`gap_blocker` the same reason as
one :class:`~sjunet.graph.refusals.Blocker` among a model's others, so a model with other blockers
hears about its gap in the same refusal; :func:`gap_line` what ``calibrate`` and ``convert`` print.
"""
from __future__ import annotations

from torch import fx

from sjunet.graph.refusals import Blocker, source_line

GAP_MIN_AGREEMENT = 0.98  #: refuse a segmentation output whose argmax agrees on fewer pixels
GAP_MAX_RELATIVE_ERROR = 0.1  #: refuse any other output (denoising) whose relative L2 error is larger
#: refuse a segmentation output whose logits' relative L2 error is larger, whatever its agreement: the
#: argmax of a confident ANN survives large logit errors that its probabilities, and any input nearer
#: a class boundary, do not (trained EM U-Nets with InstanceNorm measure 0.04–0.11 on validation images)
GAP_MAX_RELATIVE_ERROR_SEGMENTATION = 0.2
CONFIDENCE = 0.95  #: the interval reported with every gap estimate (:func:`~sjunet.calibration.approximation.measure_gap`)

#: what removes or accepts a gap, in every refusal: every norm with a fixed deviation converts exactly
#: (:func:`sjunet.conversion.recipe.exact_norms`), so the exact route is always named first
GAP_REMEDY = ("the exact route removes it: --norms exact (norms=\"exact\": Σ-Δ group-norm neurons dividing by each "
              "sample's own deviation, spec §15; no gap, non-local neurons); otherwise accept it with --accept-gap "
              "(accept_gap=True) and fine-tune: `sjunet finetune` recovers most of it; or calibrate on data closer to "
              "what the model will see")


def _with_interval(a: dict, key: str, fmt: str) -> str:
    value = a.get(key)
    iv = (a.get("interval") or {}).get(key)
    text = format(value, fmt)
    if iv:
        text += f" ({100 * (a['interval'].get('confidence') or CONFIDENCE):.0f} % interval {iv[0]:{fmt}}–{iv[1]:{fmt}})"
    return text


def gap_reasons(approximation: dict) -> list[str]:
    """Why a measured gap fails the gate (empty when it passes), each a clause of the refusal: a
    segmentation-like output whose pixel agreement is below :data:`GAP_MIN_AGREEMENT` *or* whose
    logits' relative error exceeds :data:`GAP_MAX_RELATIVE_ERROR_SEGMENTATION`, any other output whose
    relative error exceeds :data:`GAP_MAX_RELATIVE_ERROR`, a degenerate ANN (its output cannot show a
    gap), or a gap never measured."""
    a = approximation
    agreement, rel = a.get("agreement"), a.get("relative_error")
    if rel is None:
        return ["it was not measured (re-run `sjunet calibrate` to measure it)"]
    out = []
    if a.get("degenerate"):
        out.append(a["degenerate"])
    if agreement is not None and agreement < GAP_MIN_AGREEMENT:
        out.append(f"they change {100 * (1 - agreement):.2f}% of the output pixels (agreement "
                   f"{_with_interval(a, 'agreement', '.4f')} < {GAP_MIN_AGREEMENT})")
    limit = GAP_MAX_RELATIVE_ERROR if agreement is None else GAP_MAX_RELATIVE_ERROR_SEGMENTATION
    if not rel <= limit:
        out.append(f"they give the ANN a relative output error of {_with_interval(a, 'relative_error', '.3g')} "
                   f"(> {limit}{' for segmentation logits' if agreement is not None else ''})")
    return out


def gap_refusal(approximation: dict | None, accept_gap: bool = False) -> str | None:
    """One line refusing a conversion whose approximation gap (:func:`measure_gap`, as recorded by
    calibration) fails the gate (:func:`gap_reasons`) — or was not measured — or None when it passes or
    is accepted. It names every reason, where the gap was measured and what removes it (:data:`GAP_REMEDY`)."""
    if not approximation or not approximation.get("nodes") or accept_gap:
        return None
    why = gap_reasons(approximation)
    if not why:
        return None
    n = len(approximation["nodes"])
    what = f"{n} instance/group/layer norm{'s' if n != 1 else ''} with a fixed deviation"
    if approximation.get("relative_error") is None:
        return f"approximation gap not measured ({what}): re-run `sjunet calibrate` to measure it; {GAP_REMEDY}"
    head = ("approximation gap cannot be judged" if why == [approximation.get("degenerate")]
            else "approximation gap too large")
    return f"{head} ({what}, measured on {_samples(approximation)}): {'; '.join(why)}; {GAP_REMEDY}"


def _samples(a: dict) -> str:
    n = a.get("samples")
    where = a.get("estimated_on")
    if where:
        return f"{n} {where} sample{'s' if n != 1 else ''}"
    return f"{n} {'held-out ' if a.get('held_out') else ''}calibration sample{'s' if n != 1 else ''}"


def gap_line(approximation: dict | None) -> str | None:
    """One line describing the approximation gap (for the CLI), or None without norms."""
    if not approximation or not approximation.get("nodes"):
        return None
    n = len(approximation["nodes"])
    agreement = approximation.get("agreement")
    where = _samples(approximation) + ("" if approximation.get("held_out") else ", in-sample")
    rel = approximation.get("relative_error")
    text = (f"approximation gap ({n} norm{'s' if n != 1 else ''} with fixed deviations, {where}): relative error "
            + (_with_interval(approximation, "relative_error", ".3g") if rel is not None else "not measured"))
    if agreement is not None:
        text += f", pixel agreement {_with_interval(approximation, 'agreement', '.4f')}"
    if approximation.get("degenerate"):
        text += f"; {approximation['degenerate']}"
    return text


def gap_blocker(gm: fx.GraphModule, approximation: dict | None, accept_gap: bool = False) -> Blocker | None:
    """:func:`gap_refusal` as a :class:`~sjunet.graph.refusals.Blocker` at the model's first norm (its
    source line), to be listed with the model's other blockers; None when the gap passes or is accepted."""
    why = gap_refusal(approximation, accept_gap)
    if why is None:
        return None
    first = approximation["nodes"][0]["node"]
    node = next((n for n in gm.graph.nodes if n.name == first), None)
    return Blocker(first, "approximation gap", source_line(node) if node is not None else "", "approximation gap", why)
