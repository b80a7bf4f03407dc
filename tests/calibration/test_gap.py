"""Issue 26, items 5 and 6: an honest approximation gap, and every blocker at once, the gap included.

The gap (what fixing the deviations of instance/group/layer norms costs the ANN) is estimated on
samples not used to fit those deviations — given apart (``gap_data``: the validation split) or
cross-validated — with its 95 % interval; segmentation is gated on pixel agreement *and* relative
error; an ANN that predicts one class everywhere (or a constant) is flagged instead of passed; a
model with other blockers hears about its gap in the same refusal. Tiny nets, random inputs."""
import warnings

import pytest
import torch
from torch import nn

from sjunet.calibration import calibrate
from sjunet.calibration.approximation import approximated_graph, measure_gap
from sjunet.calibration.gap import GAP_REMEDY, gap_reasons, gap_refusal
from sjunet.conversion.recipe import ApproximationGapError, convert
from sjunet.graph import UnsupportedGraphError, canonical_graph


class GroupNormNet(nn.Module):
    """conv → GroupNorm → activation → 1×1 head (2 classes); the head's bias splits the classes."""

    def __init__(self, act=torch.relu, control_flow=False):
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1)
        self.act, self.control_flow = act, control_flow

    def forward(self, x):
        y = self.act(self.norm(self.conv(x)))
        if self.control_flow and y.mean() > 0:  # a blocker no construction removes
            y = torch.relu(y)
        return self.head(y)


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    net = GroupNormNet(**kw).eval()
    with torch.no_grad():
        net.conv.bias.zero_()  # σ_s then scales with the input's contrast
        y = net(_data(1, seed=9)[0])
        net.head.bias[1] -= (y[:, 1] - y[:, 0]).quantile(0.3)  # both classes present
    return net


def _data(n=4, b=2, size=16, seed=0, decades=0.0):
    """Random images; ``decades``: their contrast spread over that many powers of ten (a large gap)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        scale = 10 ** (decades * (torch.rand(b, 1, 1, 1, generator=g) - 0.5))
        out.append(scale * torch.rand(b, 1, size, size, generator=g))
    return out


def _calibrate(net, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return calibrate(net, data, progress=False, **kw)


def test_gap_is_measured_on_data_not_used_to_fit_sigma_with_its_interval():
    net, data, held = _net(), _data(4), _data(3, seed=5)
    stats = _calibrate(net, data, gap_data=held, gap_description="validation")
    a = stats.approximation
    assert a["estimated_on"] == "validation" and a["held_out"] and a["samples"] == 6
    # the estimate is that of σ̂ fit on the calibration data alone, measured on the held-out batches
    fit_alone = _calibrate(net, data)
    node = a["nodes"][0]["node"]
    gm = canonical_graph(net, data[0].shape).gm
    approx = approximated_graph(gm, {node: torch.as_tensor(fit_alone.nodes[node].sigma)})
    with torch.no_grad():
        direct = measure_gap([(gm(x), approx(x)) for x in held])
    assert a["relative_error"] == pytest.approx(direct["relative_error"], rel=1e-9)
    assert a["agreement"] == direct["agreement"]
    # the stored σ̂ is refit on both: the same as calibrating on all of it
    both = _calibrate(net, data + held)
    assert torch.allclose(torch.as_tensor(stats.nodes[node].sigma), torch.as_tensor(both.nodes[node].sigma))
    # the point estimate lies in its interval, a bootstrap over the held-out samples
    for key in ("relative_error", "agreement"):
        lo, hi = a["interval"][key]
        assert lo <= a[key] <= hi
    assert a["interval"]["confidence"] == 0.95 and "bootstrap over the 6 samples" in a["interval"]["method"]
    # without held-out batches: cross-validated on the calibration data, said so
    assert fit_alone.approximation["estimated_on"] == "cross-validated calibration"


def test_segmentation_is_gated_on_agreement_and_relative_error():
    a = {"nodes": [{"node": "n"}], "agreement": 0.995, "relative_error": 0.05, "samples": 5, "held_out": True}
    assert gap_reasons(a) == [] and gap_refusal(a) is None
    assert gap_reasons({**a, "agreement": 0.97})[0].startswith("they change 3.00% of the output pixels")
    too_far = gap_refusal({**a, "relative_error": 0.3})  # the argmax held, the logits moved by 30 %
    assert too_far is not None and "relative output error of 0.3 (> 0.2 for segmentation logits)" in too_far
    assert gap_refusal({**a, "relative_error": 0.3}, accept_gap=True) is None
    denoising = {**a, "agreement": None, "relative_error": 0.15}
    assert "(> 0.1)" in gap_refusal(denoising)
    # every refusal names the routes that remove or accept the gap: --norms exact first
    assert GAP_REMEDY in too_far and "--accept-gap" in GAP_REMEDY and "sjunet finetune" in GAP_REMEDY
    assert GAP_REMEDY.index("--norms exact") < GAP_REMEDY.index("--accept-gap")


def test_degenerate_ann_is_flagged_instead_of_passed():
    net = _net()
    with torch.no_grad():
        net.head.bias[1] += 1e3  # class 1 at every pixel: agreement 1.0 whatever the gap
    stats = _calibrate(net, _data(3))
    a = stats.approximation
    assert a["agreement"] == 1.0 and "predicts class 1 at every pixel" in a["degenerate"]
    with pytest.raises(ApproximationGapError, match=r"approximation gap cannot be judged .*every pixel.*--accept-gap"):
        convert(net, stats)
    assert convert(net, stats, accept_gap=True).record.conversion.approximation_gap["accepted"]
    # a constant output (denoising): flagged too
    y = torch.ones(2, 1, 4, 4)
    assert "constant" in measure_gap([(y, y * 0.9)])["degenerate"]
    assert measure_gap([(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4))])["degenerate"] is None


def test_a_blocked_model_hears_its_gap_in_the_same_refusal():
    """Control flow on values stays a blocker: the gap must be listed with it, not after its fix."""
    net, data = _net(control_flow=True), _data(4, decades=4.0)
    with pytest.raises(UnsupportedGraphError) as e:
        _calibrate(net, data)
    msg = str(e.value)
    first, *lines = msg.splitlines()
    assert first.startswith("cannot convert GroupNormNet: 2 blockers: ") and "approximation gap" in first, msg
    assert any("control flow on tensor values" in ln or "data-dependent" in ln for ln in lines), msg
    gap = next(ln for ln in lines if "(approximation gap)" in ln)
    assert "test_gap.py" in gap and "self.norm(" in gap and "--accept-gap" in gap, gap  # the norm's own line


def test_group_norm_silu_lists_the_silu_and_the_gap_at_once():
    """Issue 26: a GroupNorm + SiLU model named only the SiLU; the gap came after its fix. Where SiLU
    converts (Σ-Δ neurons), the gap is what refuses the conversion."""
    net, data = _net(act=nn.functional.silu), _data(4, decades=4.0)
    try:
        stats = _calibrate(net, data)
    except UnsupportedGraphError as e:
        first = str(e).splitlines()[0]
        assert "SiLU" in first and "approximation gap" in first, str(e)
    else:
        with pytest.raises(ApproximationGapError, match="approximation gap too large"):
            convert(net, stats)


def test_a_blocked_model_with_a_small_gap_lists_only_its_blockers():
    net, data = _net(control_flow=True), _data(4, b=3)
    with pytest.raises(UnsupportedGraphError) as e:
        _calibrate(net, data)
    assert str(e.value).splitlines()[0].endswith("1 blocker: control flow on values"), str(e.value)
