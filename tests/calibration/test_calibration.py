import h5py
import numpy as np
import pytest
import torch

from sjunet.calibration import StreamingPercentile, calibrate, read_stats, recorded_nodes, trace_for_conversion
from sjunet.calibration.percentile import Budget, top_capacity
from sjunet.calibration.store import StatsMismatchError
from sjunet.io import model_fingerprint
from sjunet.models import UNet

from helpers import SkewedSkipNet, batches


def _exact(values, p):
    return float(np.percentile(np.asarray(values, dtype=np.float64), p, method="inverted_cdf"))


@pytest.mark.parametrize("p", [50.0, 99.0, 99.9, 100.0])
@pytest.mark.parametrize("magnitude", [False, True])
def test_streaming_percentile_is_exact(p, magnitude):
    """One pass, a buffer of floor((1-p/100)·N)+2 values: the nearest-rank percentile exactly,
    ties included, with a smaller last batch (the bound N = batches × first batch size)."""
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(20_000, generator=g) * s for s in (0.5, 1.0, 3.0)] + [torch.randn(7_000, generator=g)]
    chunks[1] = (chunks[1] * 8).round() / 8  # many ties
    if not magnitude:
        chunks = [torch.relu(c) for c in chunks]
    est = StreamingPercentile(p, batches=len(chunks), magnitude=magnitude)
    for c in chunks:
        est.observe(c)
    allv = torch.cat(chunks)
    allv = (allv.abs() if magnitude else allv).numpy()
    assert est.capacity == top_capacity(p, 4 * 20_000)
    assert est.exact() and est.error_bound() == 0.0
    assert est.percentile(p) == np.float32(_exact(allv, p))  # exact equality, not a bound
    assert est.count == allv.size and est.mean == pytest.approx(allv.mean(), rel=1e-6)
    assert est.min == allv.min() and est.max == allv.max()
    if p == 99.9:
        assert est.capacity <= 0.001 * 4 * 20_000 + 2  # a thousandth of the bound N is buffered


@pytest.mark.parametrize("p", [99.9, 99.0])
@pytest.mark.parametrize("magnitude", [False, True])
def test_streaming_percentile_fast_paths_stay_exact(p, magnitude):
    """Batches large enough for every fast path (issue 29): the first batch's provisional threshold
    from a strided sample, the block-maximum search, survivors waiting in the buffer's spare room,
    shared scratch temporaries — exact as ever, and equal to the plain path (no scratch)."""
    from sjunet.calibration.percentile import Scratch

    g = torch.Generator().manual_seed(2)
    chunks = [torch.randn(400_000, generator=g) * s for s in (1.0, 0.3, 2.0, 1.0, 0.7)]
    chunks[2] = (chunks[2] * 4).round() / 4  # ties
    chunks[3][::1000] = 50.0  # a batch of outliers: many survivors, the plain comparison
    if not magnitude:
        chunks = [torch.relu(c) for c in chunks]
    fast, plain = (StreamingPercentile(p, batches=len(chunks), magnitude=magnitude) for _ in range(2))
    scratch = Scratch()
    for c in chunks:
        fast.observe(c, scratch)
        plain.observe(c)
    allv = torch.cat(chunks)
    allv = (allv.abs() if magnitude else allv).numpy()
    assert fast.dropped and fast.exact() and fast.percentile(p) == np.float32(_exact(allv, p))
    assert fast.percentile(p) == plain.percentile(p) and fast.count == plain.count == allv.size
    counts, edges = fast.coarse_histogram()
    assert np.array_equal(counts, plain.coarse_histogram()[0]) and counts.sum() == allv.size


def test_a_concatenation_merged_from_its_parts_equals_observing_it():
    """A concatenation's estimator built from its parts' (StreamingPercentile.union; each part's
    buffer sized for the whole with ``share``) equals the one that observes the concatenation:
    exact percentile, count, min, max and histogram; a part that dropped too much is judged so."""
    g = torch.Generator().manual_seed(4)
    a = [torch.relu(torch.randn(2, 3, 64, 64, generator=g)) * 3 for _ in range(4)]
    b = [torch.randn(2, 5, 64, 64, generator=g).abs() * s for s in (1.0, 2.0, 0.5, 1.0)]
    whole = StreamingPercentile(99.9, batches=4, magnitude=True)
    parts = [StreamingPercentile(99.9, batches=4, magnitude=m, share=8 / c) for m, c in ((False, 3), (True, 5))]
    for x, y in zip(a, b):
        whole.observe(torch.cat([x, y], 1))
        parts[0].observe(x)
        parts[1].observe(y)
    u = StreamingPercentile.union(parts, whole.capacity, 8, p=99.9, magnitude=True)
    assert u.exact() and whole.exact() and u.percentile() == whole.percentile()
    assert (u.count, u.min, u.max, u.channels) == (whole.count, whole.min, whole.max, 8)
    assert all(np.array_equal(x, y) for x, y in zip(u.coarse_histogram(), whole.coarse_histogram()))
    small = StreamingPercentile(99.9, batches=4, magnitude=True)  # sized for itself only
    for y in b:
        small.observe(y * 10)  # the largest values of the union are all its own
    assert not StreamingPercentile.union([parts[0], small], whole.capacity, 8, p=99.9, magnitude=True).exact()


def test_bincount_in_slices_per_thread_equals_torch():
    from sjunet.calibration.percentile import bincount

    idx = torch.randint(0, 200, (1 << 19,), generator=torch.Generator().manual_seed(0)).to(torch.int16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert torch.equal(bincount(idx, 201), torch.bincount(idx, minlength=201))
    finally:
        torch.set_num_threads(threads)


def test_positive_only_and_lower_percentiles_within_the_buffer():
    g = torch.Generator().manual_seed(1)
    chunks = [torch.randn(5_000, generator=g) for _ in range(3)]
    est = StreamingPercentile(99.0, batches=3, positive_only=True)
    for c in chunks:
        est.observe(c)
    allv = torch.cat(chunks).numpy()
    pos = allv[allv > 0]
    assert est.count == pos.size and est.percentile() == np.float32(_exact(pos, 99.0))
    assert est.exact(99.5) and est.percentile(99.5) == np.float32(_exact(pos, 99.5))  # m smaller: still held
    assert not est.exact(90.0)  # m beyond the buffer: refused, not guessed
    with pytest.raises(RuntimeError, match="histogram pass"):
        est.percentile(90.0)


def test_a_batch_larger_than_the_first_is_detected():
    """The bound N is checked: a later batch larger than the first can put x_(k) outside the buffer."""
    est = StreamingPercentile(90.0, batches=2)
    est.observe(torch.arange(10.0))
    est.observe(torch.arange(100.0))
    assert est.capacity == top_capacity(90.0, 20) and not est.exact() and est.error_bound() > 0


@pytest.mark.parametrize("p", [50.0, 99.0, 99.9, 100.0])
@pytest.mark.parametrize("nbins", [256, 1 << 16])
def test_histogram_fallback_error_bound(p, nbins):
    """Over the buffer budget: the two-pass histogram, within one bin width of numpy."""
    g = torch.Generator().manual_seed(0)
    chunks = [torch.relu(torch.randn(20_000, generator=g) * s) for s in (0.5, 1.0, 3.0)]
    est = StreamingPercentile(p, batches=3, nbins=nbins, budget=Budget(0))
    for c in chunks:
        est.observe(c)
    assert est.capacity == 0 and not est.exact()
    for c in chunks:
        est.observe_hist(c)
    allv = torch.cat(chunks).numpy()
    assert abs(est.percentile(p) - _exact(allv, p)) <= est.error_bound() + 1e-9
    assert est.error_bound() == pytest.approx(allv.max() / nbins, rel=1e-6)


def test_whole_set_not_one_batch():
    est = StreamingPercentile(40.0, batches=2)
    data = [torch.full((1000,), 1.0), torch.full((1000,), 10.0)]
    for d in data:
        est.observe(d)
    assert est.percentile(40) == 1.0 and est.percentile(60) == 10.0 and est.error_bound(60) == 0.0


def test_coarse_histogram_merges_exactly_as_the_range_grows():
    """Bins of width 2^e merge pairwise when the range grows: the counts are those of one
    histogram over the final edges (values off the edges: odd multiples of 2^-11)."""
    g = torch.Generator().manual_seed(0)
    chunks = [(torch.randint(-40, 40 * s, (3000,), generator=g) * 2 + 1) / 2048.0 for s in (1, 5, 60)]
    chunks.insert(0, torch.zeros(500))  # only zeros first: no width chosen yet
    est = StreamingPercentile(99.0)
    for c in chunks:
        est.observe(c)
    counts, edges = est.coarse_histogram()
    allv = torch.cat(chunks).numpy()
    assert len(counts) <= 256 and len(edges) == len(counts) + 1 and counts.sum() == allv.size
    assert edges[0] <= allv.min() and edges[-1] > allv.max()
    assert np.array_equal(counts, np.histogram(allv, edges)[0])


def _recorded_values(model, data):
    """Every recorded node's values over ``data``, as calibrate measures them (|x| for signed roles)."""
    from sjunet.graph import record_nodes

    gm = trace_for_conversion(model, tuple(data[0].shape))
    nodes = recorded_nodes(gm)
    parts = {r.name: [] for r in nodes}
    for x in data:
        out = record_nodes(gm, x, list(parts))
        for r in nodes:
            v = out[r.name].reshape(-1)
            parts[r.name].append(v if r.role in ("input", "relu") else v.abs())
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


@pytest.mark.parametrize("p", [99.9, 90.0])
def test_calibrate_percentiles_equal_numpy_on_the_whole_set(p):
    m = UNet(base_width=4, depth=2, batch_norm=True).eval()
    data = batches(3, b=3) + [batches(1, b=1, seed=5)[0]]  # a smaller last batch
    s = calibrate(m, data, p=p, progress=False)
    values = _recorded_values(m, data)
    assert set(values) == set(s.nodes)
    for name, t in s.nodes.items():
        v = values[name]
        assert t.raw_percentile == np.float32(_exact(v, p)), name
        assert t.error_bound == 0.0 and t.count == v.size and t.max == v.max()
        assert t.histogram.sum() == t.count
    assert "exact" in s.options["estimator"]


def test_calibrate_second_pass_when_a_bound_fails_or_over_budget():
    """A batch larger than the first: those tensors are sized again from the exact count (still
    exact). No buffer budget: every tensor falls back to the histogram, within its error bound."""
    m = UNet(base_width=4, depth=2).eval()
    data = [batches(1, b=1)[0]] + batches(2, b=4, seed=3)
    values = _recorded_values(m, data)
    s = calibrate(m, data, p=50.0, progress=False)
    for name, t in s.nodes.items():
        assert t.raw_percentile == np.float32(_exact(values[name], 50.0)) and t.error_bound == 0.0, name
    h = calibrate(m, data, p=99.9, progress=False, max_buffer=0, nbins=1024)
    assert "histogram" in h.options["estimator"]
    for name, t in h.nodes.items():
        assert 0 < t.error_bound and abs(t.raw_percentile - _exact(values[name], 99.9)) <= t.error_bound * (1 + 1e-6)


def test_recorded_nodes_cover_relus_cats_and_parts():
    gm = trace_for_conversion(SkewedSkipNet())
    roles = {r.name: r.role for r in recorded_nodes(gm)}
    assert roles["x"] == "input"
    assert roles["relu1"] == "relu" and roles["relu2"] == "relu" and roles["relu3"] == "relu"
    assert roles["cat"] == "cat"
    assert roles["up"] in ("cat-part", "linear")  # the up-convolution (its Identity activation is gone)
    assert roles["head"] == "linear"


def test_hdf5_roundtrip_and_schema(tmp_path):
    m = UNet(base_width=4, depth=2, batch_norm=True).eval()
    out = tmp_path / "stats.h5"
    s = calibrate(m, batches(3), output=out, progress=False, data_description={"dataset": "random"})
    r = read_stats(out)
    assert r.model_fingerprint == model_fingerprint(m) == s.model_fingerprint
    assert list(r.nodes) == list(s.nodes)
    for name, t in s.nodes.items():
        u = r.nodes[name]
        assert u.percentile == t.percentile and u.count == t.count and u.role == t.role
        assert np.array_equal(u.histogram, t.histogram) and u.histogram.sum() == t.count
    with h5py.File(out) as f:
        assert "versions" in f.attrs and "data" in f.attrs and f["nodes/down_0_2"].attrs["p"] == 99.9
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temp file left


def test_fingerprint_refusal(tmp_path):
    m = UNet(base_width=4, depth=2).eval()
    s = calibrate(m, batches(2), output=tmp_path / "s.h5", progress=False)
    other = UNet(base_width=4, depth=2).eval()
    with pytest.raises(StatsMismatchError, match="sjunet calibrate"):
        s.check_model(model_fingerprint(other))
    from sjunet.conversion.recipe import convert
    with pytest.raises(StatsMismatchError):
        convert(other, tmp_path / "s.h5")


@pytest.mark.parametrize("positive_only", [False, True])
def test_dead_layer_falls_back_warns_and_converts(positive_only, tmp_path):
    """A ReLU that never fires is zero in the ANN and the SNN alike: not an error (spec §4)."""
    from sjunet.conversion.recipe import convert
    from sjunet.snn.simulation import simulate

    net = SkewedSkipNet().eval()
    net.conv2.bias.data.fill_(-100.0)  # relu2 never fires
    with pytest.warns(UserWarning, match="relu2"):
        s = calibrate(net, batches(2), progress=False, positive_only=positive_only, output=tmp_path / "s.h5")
    r = read_stats(tmp_path / "s.h5")
    assert set(r.dead) == {"relu2"} and r.nodes["relu2"].fallback == "one" and r.nodes["relu2"].percentile == 1.0
    assert r.nodes["relu1"].fallback is None
    x = batches(1)[0]
    out = simulate(convert(net, s), x, 200)[200]
    ref = net(x).detach()
    assert torch.allclose(out, ref, atol=0.02 * float(ref.abs().mean()))


def test_stats_integrity_and_old_schema(tmp_path):
    from sjunet.io import ArtifactError

    m = UNet(base_width=4, depth=2).eval()
    out = tmp_path / "s.h5"
    calibrate(m, batches(2), output=out, progress=False)
    with h5py.File(out, "r+") as f:  # one stored λ altered
        f["nodes/down_0_1"].attrs["percentile"] = f["nodes/down_0_1"].attrs["percentile"] * 1.001
    with pytest.raises(ArtifactError, match="integrity check failed"):
        read_stats(out)
    with h5py.File(out, "r+") as f:
        f.attrs["schema"] = "sjunet-calibration/1"
    with pytest.raises(ArtifactError, match="re-run `sjunet calibrate`"):
        read_stats(out)


def test_not_an_hdf5_file(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_text("hello")
    from sjunet.io import ArtifactError
    with pytest.raises(ArtifactError, match="not an HDF5"):
        read_stats(bad)
