"""Per-layer threshold ladders (:mod:`sjunet.conversion.ladders`): the error bound they promise, their cap,
and what ``convert`` records."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sjunet
from sjunet.conversion.ladders import choose_ladder, expected_error, halving, histogram_points, one_step
from sjunet.models import UNet
from sjunet.neurons import MultiThresholdNode


def _histogram(rng, zeros: float = 0.6, n: int = 200_000, scale: float = 0.15, bins: int = 128):
    """A ReLU-like sample (exact zeros, then an exponential body with a tail) and its histogram."""
    v = np.where(rng.random(n) < zeros, 0.0, rng.exponential(scale, n))
    h, e = np.histogram(v, bins=bins, range=(0.0, float(v.max())))
    return v, h, e


def _simulate(ladder, v_init, x: np.ndarray, T: int) -> np.ndarray:
    """The MT neuron itself (SpikingJelly node) under constant input ``x`` for T steps: its rate."""
    node = MultiThresholdNode(ladder, v_init=v_init)
    xt = torch.as_tensor(x, dtype=torch.float64)
    total = torch.zeros_like(xt)
    for _ in range(T):
        total += node(xt)
    return (total / T).numpy()


def test_histogram_points_keep_the_zeros_and_the_mean():
    rng = np.random.default_rng(0)
    v, h, e = _histogram(rng)
    x, w = histogram_points(h, e, 1.0, mean=float(v.mean()))
    assert abs(w.sum() - 1) < 1e-9
    assert abs(float(np.sum(w * x)) - v.mean()) < 1e-3 * v.mean()
    assert x[0] == 0.0 and abs(w[0] - (v == 0).mean()) < 0.01  # the exact zeros stay zeros


@pytest.mark.parametrize("zeros,scale", [(0.6, 0.15), (0.9, 0.03), (0.2, 0.4)])
def test_chosen_ladder_meets_its_error_bound_simulated_by_the_neuron(zeros, scale):
    """The ladder's error bound: the chosen ladder's expected one-step RMS error under the layer's
    distribution is at most tolerance × its RMS value, and the MT neuron itself, fed the values the
    histogram was made of, makes that error in its first step (within the histogram's binning);
    one level fewer would not meet the tolerance (the fewest levels, the fewest spikes)."""
    rng = np.random.default_rng(1)
    v, h, e = _histogram(rng, zeros, scale=scale)
    lam = float(np.percentile(v, 99.9))
    x, w = histogram_points(h, e, lam, mean=float(v.mean()))
    for tol in (0.1, 0.05, 0.02):
        c = choose_ladder(x, w, peak=float(v.max()) / lam, tolerance=tol)
        assert c.met and c.rmse <= tol * c.rms + 1e-12
        sample = v[:100_000] / lam
        sim = np.sqrt(np.mean((sample - _simulate(c.ladder, c.v_init, sample, 1)) ** 2)) / np.sqrt(np.mean(sample**2))
        assert sim <= tol * 1.1 and abs(sim - c.relative) <= 0.1 * c.relative, (tol, sim, c.relative)
        if len(c.ladder) > 1:
            fewer = choose_ladder(x, w, float(v.max()) / lam, tolerance=tol, max_levels=len(c.ladder) - 1)
            assert not fewer.met
        assert c.ladder == halving(c.ladder[0], len(c.ladder))  # powers of two: a spike is a shift
        assert np.log2(c.ladder[0]) == round(np.log2(c.ladder[0]))


def test_tighter_tolerance_means_more_levels_never_fewer():
    rng = np.random.default_rng(2)
    v, h, e = _histogram(rng)
    x, w = histogram_points(h, e, float(np.percentile(v, 99.9)), mean=float(v.mean()))
    levels = [len(choose_ladder(x, w, 2.0, tolerance=t).ladder) for t in (0.2, 0.1, 0.05, 0.02)]
    assert levels == sorted(levels) and levels[-1] > levels[0]


def test_the_cap_covers_every_calibration_value_so_the_rate_keeps_converging():
    """No plateau: the chosen ladder's one-step cap reaches the layer's largest value, so the rate
    of every calibration value converges to it as T grows (error below θ_N / T); Theorem 3.1's
    ladder caps at 0.9375 and stays off on the tail whatever T."""
    rng = np.random.default_rng(3)
    v, h, e = _histogram(rng, 0.5, scale=0.3)
    lam = float(np.percentile(v, 99.9))
    peak = float(v.max()) / lam
    assert peak > 1.5
    x, w = histogram_points(h, e, lam, mean=float(v.mean()))
    c = choose_ladder(x, w, peak)
    assert sum(c.ladder) >= peak and c.saturated == 0.0
    tail = np.linspace(1.0, peak, 50)
    for T in (8, 64):
        assert np.abs(_simulate(c.ladder, c.v_init, tail, T) - tail).max() <= c.ladder[-1] / T + 1e-9
    theorem = _simulate((0.5, 0.25, 0.125, 0.0625), 0.03125, tail, 64)
    assert np.abs(theorem - tail).max() > 0.5  # capped: the plateau


def test_one_step_is_the_neurons_first_step():
    x = np.linspace(0, 3, 301)
    for ladder, v0 in (((2.0, 1.0, 0.5, 0.25), 0.125), ((1.0, 0.5, 0.25, 0.125, 0.0625), 0.0)):
        out, spikes = one_step(x, ladder, v0)
        assert np.allclose(out, _simulate(ladder, v0, x, 1))
        assert expected_error(ladder, x, np.full_like(x, 1 / x.size), v0)["spikes"] == pytest.approx(spikes.mean())


def test_convert_defaults_to_per_layer_ladders_and_keeps_the_named_ones(tmp_path):
    torch.manual_seed(0)
    net = UNet(in_channels=1, out_channels=2, base_width=4, depth=2).eval()
    g = torch.Generator().manual_seed(0)
    stats = sjunet.calibrate(net, [torch.rand(2, 1, 16, 16, generator=g) for _ in range(2)], progress=False)
    snn = sjunet.convert(net, stats)
    conv = snn.record.conversion
    assert conv.options["thresholds"] == "auto" and set(conv.ladders) == {v["relu"] for v in conv.neurons.values()}
    nodes = {n: m for n, m in snn.named_modules() if isinstance(m, MultiThresholdNode)}
    for path, info in conv.neurons.items():
        assert list(nodes[path].thresholds) == conv.ladders[info["relu"]]["thresholds"]
        assert nodes[path].v_init == nodes[path].thresholds[-1] / 2
    loaded, rec = sjunet.load_snn(sjunet.save_snn(snn, tmp_path / "snn.safetensors"))
    x = torch.rand(1, 1, 16, 16, generator=g)
    assert torch.equal(sjunet.simulate(loaded, x, T=[3])[3], sjunet.simulate(snn, x, T=[3])[3])
    paper = sjunet.convert(net, stats, thresholds="paper")
    assert paper.record.conversion.options["thresholds"] == [2.0, 1.0, 0.5, 0.25] and paper.record.conversion.ladders is None
    assert all(m.thresholds == (2.0, 1.0, 0.5, 0.25) for m in paper.modules() if isinstance(m, MultiThresholdNode))
    with pytest.raises(ValueError, match="for MT neurons"):
        sjunet.convert(net, stats, neuron="if", thresholds="auto")
