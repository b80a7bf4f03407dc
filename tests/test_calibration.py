import h5py
import numpy as np
import pytest
import torch

from sjunet.calibration import StreamingPercentile, calibrate, read_stats, recorded_nodes, trace_for_conversion
from sjunet.calibration.store import StatsMismatchError
from sjunet.io import model_fingerprint
from sjunet.models import UNet

from helpers import SkewedSkipNet, batches


@pytest.mark.parametrize("p", [50.0, 99.0, 99.9, 100.0])
@pytest.mark.parametrize("nbins", [256, 1 << 16])
def test_streaming_percentile_error_bound(p, nbins):
    g = torch.Generator().manual_seed(0)
    chunks = [torch.relu(torch.randn(20_000, generator=g) * s) for s in (0.5, 1.0, 3.0)]
    est = StreamingPercentile(nbins)
    for c in chunks:
        est.observe_range(c)
    for c in chunks:
        est.observe_hist(c)
    allv = torch.cat(chunks).numpy()
    exact = np.percentile(allv, p, method="inverted_cdf")
    assert abs(est.percentile(p) - exact) <= est.error_bound() + 1e-9
    assert est.error_bound() == pytest.approx(allv.max() / nbins, rel=1e-6)
    assert est.count == allv.size and est.mean == pytest.approx(allv.mean(), rel=1e-6)


def test_whole_set_not_one_batch():
    est = StreamingPercentile()
    data = [torch.full((1000,), 1.0), torch.full((1000,), 10.0)]
    for d in data:
        est.observe_range(d)
    for d in data:
        est.observe_hist(d)
    assert est.percentile(40) == pytest.approx(1.0, abs=est.error_bound())
    assert est.percentile(60) == pytest.approx(10.0, abs=est.error_bound())


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
    from sjunet.recipe import convert
    with pytest.raises(StatsMismatchError):
        convert(other, tmp_path / "s.h5")


@pytest.mark.parametrize("positive_only", [False, True])
def test_dead_layer_falls_back_warns_and_converts(positive_only, tmp_path):
    """A ReLU that never fires is zero in the ANN and the SNN alike: not an error (spec §4)."""
    from sjunet.recipe import convert
    from sjunet.simulation import simulate

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
