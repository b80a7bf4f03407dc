"""Instance / group / layer norm (spec §11): an exact centring stage, a fixed deviation fit by least
squares on the calibration set, the approximation gap measured, stored, recorded and refused."""
import math
import warnings

import pytest
import torch
from spikingjelly.activation_based import functional
from torch import nn

from sjunet.calibration import calibrate, read_stats, write_stats
from sjunet.calibration.approximation import DeviationStats, approximated_ann, fixed_deviation, gap_line, gap_refusal
from sjunet.conversion.recipe import ApproximationGapError, convert, load_snn, save_snn
from sjunet.evaluation.energy import count_energy
from sjunet.graph import UnsupportedGraphError, canonical_graph
from sjunet.layers.stages import Center, Normalize
from sjunet.snn.simulation import simulate
from sjunet.training.distill import AnnPass
from sjunet.training.flow import FlowPass, record_flow


class NormNet(nn.Module):
    """conv → norm → ReLU → conv → ReLU → 1x1 head (2 classes)."""

    def __init__(self, norm: nn.Module, c: int = 4):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(1, c, 3, padding=1), norm
        self.c2, self.head = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.c2(torch.relu(self.norm(self.conv(x))))))


def _net(norm: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = NormNet(norm)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith("norm."):  # a non-trivial per-channel affine (LayerNorm's: constant over H, W)
                c = torch.rand(p.shape[0]) + 0.5 if name.endswith("weight") else 0.3 * torch.randn(p.shape[0])
                p.copy_(c.view(-1, *[1] * (p.dim() - 1)).expand_as(p))
        y = net.eval()(_data(n=1)[0])  # both classes present: a one-class ANN is flagged as degenerate
        net.head.bias[1] -= (y[:, 1] - y[:, 0]).quantile(0.1)
    return net


def _data(n=4, b=2, size=16, seed=1, contrast=(0.8, 1.2)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        s = contrast[0] + (contrast[1] - contrast[0]) * torch.rand(b, 1, 1, 1, generator=g)
        out.append(s * torch.rand(b, 1, size, size, generator=g))
    return out


def _calibrate(net, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return calibrate(net, data, progress=False)


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------- the stages


def test_center_is_exact_over_time_steps():
    """Σ_t Center(x_t) = Center(Σ_t x_t): the centring of spike currents is exact in the SNN."""
    torch.manual_seed(0)
    x = (torch.rand(7, 3, 4, 5, 6) < 0.3).float() * torch.rand(7, 3, 4, 5, 6)  # [T, B, C, H, W]
    c = Center(2, step_mode="m")
    summed = c(x).sum(0)
    ref = x.sum(0) - x.sum(0).reshape(3, 2, -1).mean(-1).repeat_interleave(2, 1).view(3, 4, 1, 1)
    assert torch.allclose(summed, ref, atol=1e-5)
    assert torch.allclose(c.flow(x.sum(0)), ref, atol=1e-5)
    single = Center(2)
    assert torch.allclose(sum(single(x[t]) for t in range(7)), ref, atol=1e-5)


def test_center_alone_in_an_snn_is_the_anns_centering():
    """conv → GroupNorm (no neuron before the head): the SNN is linear and equals the ANN with the
    fixed deviation at any T — the centring itself loses nothing."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1)).eval()
    data = _data()
    stats = _calibrate(net, data)
    snn = convert(net, stats, accept_gap=True)
    assert any(type(m) is Center for m in snn.modules())
    approx = approximated_ann(net, stats)
    x = data[0]
    for T, out in simulate(snn, x, [1, 3]).items():
        assert torch.allclose(out, approx(x), atol=1e-5), T


def test_fixed_deviation_is_the_least_squares_minimiser():
    """σ̂ of DeviationStats against a brute-force least-squares fit of r = 1/σ̂ per channel on random
    data whose contrast varies across samples (group norm: 2 groups of 3 channels)."""
    torch.manual_seed(0)
    S, C, G, eps = 40, 6, 2, 1e-5
    x = torch.randn(S, C, 5, 7, dtype=torch.float64) * torch.exp(torch.randn(S, 1, 1, 1, dtype=torch.float64))
    x = x + torch.randn(S, C, 1, 1, dtype=torch.float64)
    m = Normalize(G, eps)
    d = DeviationStats(m)
    for chunk in x.split(7):
        d.add(chunk)
    sigma = d.sigma()
    g = x.reshape(S, G, -1)
    mu, sig_s = g.mean(-1, keepdim=True), torch.sqrt(g.var(-1, unbiased=False) + eps)  # [S, G]
    z = (g - mu).reshape(S, C, -1)  # x − μ_s per channel
    for c in range(C):
        zc = z[:, c].reshape(-1, 1)
        target = (z[:, c] / sig_s[:, c // (C // G)].unsqueeze(-1)).reshape(-1, 1)
        r = torch.linalg.lstsq(zc, target).solution.item()
        assert sigma[c].item() == pytest.approx(1 / r, rel=1e-9), c

        def loss(s, zc=zc, target=target):
            return float(((target - zc / s) ** 2).sum())
        best = loss(sigma[c].item())
        assert best <= loss(sigma[c].item() * 1.01) and best <= loss(sigma[c].item() * 0.99)
        assert best < loss(float(sig_s[:, c // (C // G)].mean()))  # better than the mean deviation
    # instance norm, eps -> 0: the spec's σ̂ = E[σ_s²] / E[σ_s]
    m1 = Normalize(C, 1e-12, "instance_norm")
    d1 = DeviationStats(m1)
    d1.add(x)
    s = torch.sqrt(x.reshape(S, C, -1).var(-1, unbiased=False) + 1e-12)
    assert torch.allclose(d1.sigma(), (s ** 2).mean(0) / s.mean(0), rtol=1e-9)
    # a channel constant on every sample: σ̂ = sqrt(eps)
    assert fixed_deviation(torch.zeros(1), torch.zeros(1), 1e-4).item() == pytest.approx(1e-2)


# ------------------------------------------------------------------ calibrate → convert → SNN


@pytest.mark.parametrize("norm,kind", [
    (nn.InstanceNorm2d(4, affine=True), "instance_norm"),
    (nn.GroupNorm(2, 4), "group_norm"),
    (nn.GroupNorm(1, 4), "group_norm"),  # = LayerNorm over (C, H, W) with a per-channel affine
    (nn.LayerNorm([4, 16, 16]), "layer_norm"),
])
def test_norm_nets_calibrate_convert_and_round_trip(norm, kind, tmp_path):
    net = _net(norm)
    data = _data(n=3, b=3, contrast=(0.95, 1.05))  # a small gap: σ_s varies little
    stats = _calibrate(net, data)
    a = stats.approximation
    assert [e["kind"] for e in a["nodes"]] == [kind] and a["held_out"] and a["samples"] == 9  # cross-validated
    assert 0 <= a["relative_error"] < 0.1 and a["agreement"] > 0.98 and not a["degenerate"]
    lo, hi = a["interval"]["relative_error"]
    assert lo <= a["relative_error"] <= hi and a["interval"]["confidence"] == 0.95
    node = a["nodes"][0]["node"]
    assert stats.nodes[node].sigma.shape == (4,) and (stats.nodes[node].sigma > 0).all()
    assert "relative error" in gap_line(a)
    # the HDF5 file round-trips the σ̂ and the gap
    path = write_stats(stats, tmp_path / "stats.h5")
    back = read_stats(path)
    assert back.approximation == a
    assert (back.nodes[node].sigma == stats.nodes[node].sigma).all()
    # the canonical graph is the exact ANN; the SNN converges to the approximated ANN
    x = data[0]
    assert torch.allclose(canonical_graph(net, x.shape).gm(x), net(x), atol=1e-5)
    snn = convert(net, path)
    conv = snn.record.conversion
    assert [e["kind"] for e in conv.approximations] == [kind]
    assert conv.approximation_gap["relative_error"] == a["relative_error"]
    assert not conv.approximation_gap["exceeds_thresholds"]
    assert not any(isinstance(m, Normalize) for m in snn.modules())
    approx = approximated_ann(net, back)(x)
    out = simulate(snn, x, [8, 256])
    assert _rel(out[256], approx) < 0.02 and _rel(out[256], approx) < _rel(out[8], approx)
    # the SNN file keeps the approximations and rebuilds the centring stage
    save_snn(snn, tmp_path / "snn.safetensors")
    snn2, rec = load_snn(tmp_path / "snn.safetensors")
    assert rec["conversion"]["approximations"] == conv.approximations
    assert torch.allclose(simulate(snn2, x, 16)[16], simulate(snn, x, 16)[16], atol=1e-6)
    # its ANN form (distillation's teacher) is the approximated ANN
    functional.set_step_mode(snn2, "s")
    assert torch.allclose(AnnPass(snn2).run(x), approx, atol=1e-4)


class CatNormNet(nn.Module):
    """Two ReLU branches (different λ) concatenated, then one group norm over all channels without an
    affine: the centring needs one unit per group (a gain), the deviation becomes its own affine."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 3, 3, padding=1)
        self.norm, self.head = nn.GroupNorm(1, 6, affine=False), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.head(torch.relu(self.norm(y)))


def test_norm_after_a_cat_gets_a_gain_and_its_own_deviation_stage():
    torch.manual_seed(0)
    net = CatNormNet().eval()
    with torch.no_grad():
        net.b.weight.mul_(5)  # a λ five times a's
    data = _data(n=2, b=3)
    stats = _calibrate(net, data)
    snn = convert(net, stats, accept_gap=True)
    conv = snn.record.conversion
    assert conv.approximations[0]["folded_into"] is None  # no affine: Normalize became ChannelAffine(1/σ̂)
    assert any(g["consumer"].endswith("center") for g in conv.gains)
    x = data[0]
    approx = approximated_ann(net, stats)(x)
    out = simulate(snn, x, [8, 256])
    assert _rel(out[256], approx) < 0.03 and _rel(out[256], approx) < _rel(out[8], approx)


def test_instance_norm_with_running_statistics_is_a_batchnorm():
    torch.manual_seed(0)
    net = _net(nn.InstanceNorm2d(4, affine=True, track_running_stats=True))
    net.norm.running_mean.uniform_(-0.2, 0.2)
    net.norm.running_var.uniform_(0.5, 2)
    stats = _calibrate(net, _data(n=2))
    assert stats.approximation is None  # exact: folded into the convolution
    x = _data(n=1)[0]
    out = simulate(convert(net, stats), x, [256])[256]
    assert _rel(out, net(x)) < 0.03


def test_norm_snn_flow_and_energy():
    net = _net(nn.InstanceNorm2d(4, affine=True))
    data = _data(n=2, b=3)
    snn = convert(net, _calibrate(net, data), accept_gap=True)  # the gap is not what this test is about
    x, T = data[0], 10
    rec = record_flow(snn, x, T, keep_inputs=True)
    functional.set_step_mode(snn, "s")
    fp = FlowPass(snn, rec, keep_currents=True)
    out = fp.run(x)
    for name, cur in fp.currents.items():
        assert torch.allclose(cur, rec.inputs[name], atol=1e-4, rtol=1e-5), name
    assert torch.allclose(out / T, simulate(snn, x, T)[T], atol=1e-5)
    assert torch.allclose(simulate(snn, x, T, mode="multi", chunk=4)[T], simulate(snn, x, T)[T], atol=1e-6)
    r = count_energy(snn, net, [x], T)
    assert r.stage_acs == T * 2 * 4 * 16 * 16  # one Center: 2·C·H·W accumulates per step
    assert r.energy_sop_J > 0 and r.sops > 0


def test_large_gap_is_refused_unless_accepted(tmp_path):
    """Inputs whose contrast varies over four decades: no fixed deviation fits them all."""
    net = _net(nn.InstanceNorm2d(4, affine=True))
    with torch.no_grad():
        net.conv.bias.zero_()  # σ_s then scales with the contrast
    data = _data(n=5, b=2, contrast=(0.0, 1.0))
    for i, x in enumerate(data):
        x.mul_(torch.logspace(-2, 2, 10)[2 * i: 2 * i + 2].view(2, 1, 1, 1))
    stats = _calibrate(net, data)
    a = stats.approximation
    assert a["agreement"] < 0.98, a
    assert gap_refusal(a) is not None and gap_refusal(a, accept_gap=True) is None
    with pytest.raises(ApproximationGapError, match=r"approximation gap too large.*--accept-gap.*sjunet finetune"):
        convert(net, stats)
    snn = convert(net, stats, accept_gap=True)
    gap = snn.record.conversion.approximation_gap
    assert gap["exceeds_thresholds"] and gap["accepted"] and gap["agreement"] == a["agreement"]


def test_non_segmentation_output_refused_on_relative_error():
    a = {"nodes": [{"node": "n"}], "relative_error": 0.2, "agreement": None, "samples": 3, "held_out": False}
    assert "0.2" in gap_refusal(a)
    assert gap_refusal({**a, "relative_error": 0.05}) is None
    assert gap_refusal({**a, "relative_error": None}) is not None  # never measured: refused


def test_stats_without_sigma_are_refused_for_a_norm_model():
    net = _net(nn.GroupNorm(2, 4))
    stats = _calibrate(net, _data(n=2))
    for v in stats.nodes.values():
        v.sigma = None
    stats.approximation = None
    with pytest.raises(Exception, match="no fixed deviation"):
        convert(net, stats)


def test_hdf5_refuses_crafted_sigma_and_approximation(tmp_path):
    import h5py

    from sjunet.io import ArtifactError

    net = _net(nn.GroupNorm(2, 4))
    stats = _calibrate(net, _data(n=2))
    node = stats.approximation["nodes"][0]["node"]
    stats.nodes[node].sigma = stats.nodes[node].sigma.copy()
    stats.nodes[node].sigma[0] = -1.0
    with pytest.raises(ArtifactError, match="positive finite deviation"):
        read_stats(write_stats(stats, tmp_path / "neg.h5"))
    stats.nodes[node].sigma[0] = 1.0
    stats.approximation = {**stats.approximation, "agreement": 1.5}
    with pytest.raises(ArtifactError, match="agreement"):
        read_stats(write_stats(stats, tmp_path / "agree.h5"))
    stats.approximation = {**stats.approximation, "agreement": 1.0}
    path = write_stats(stats, tmp_path / "ok.h5")
    assert read_stats(path).approximation["agreement"] == 1.0
    with h5py.File(path, "r+") as f:  # a sigma on a node the approximation does not list
        del f.attrs["approximation"]
    with pytest.raises(ArtifactError):
        read_stats(path)


def test_files_without_norms_are_unchanged(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    stats = _calibrate(net, _data(n=2))
    assert stats.approximation is None and all(v.sigma is None for v in stats.nodes.values())
    import h5py
    with h5py.File(write_stats(stats, tmp_path / "s.h5"), "r") as f:
        assert "approximation" not in f.attrs
        assert all(set(g) == {"histogram", "bin_edges"} for g in f["nodes"].values())
    snn = convert(net, stats)
    assert snn.record.conversion.approximations == [] and snn.record.conversion.approximation_gap is None


@pytest.mark.parametrize("norm", ["position_affine", "last_dim"])
def test_layer_norms_without_a_per_channel_form_are_sigma_delta_neurons(norm):
    """A layer norm whose affine varies over positions, or over the last dimension only (channels-last
    use), has no per-channel fixed-σ̂ form: it converts exactly, as a Σ-Δ layer-norm neuron (issue 26)."""
    from sjunet.graph import kind_of

    net = _net(nn.LayerNorm([4, 16, 16]) if norm == "position_affine" else nn.LayerNorm(16))
    if norm == "position_affine":
        with torch.no_grad():
            net.norm.weight.copy_(torch.rand(4, 16, 16) + 0.5)
    tr = canonical_graph(net, (1, 1, 16, 16))
    sigma = [n for n in tr.gm.graph.nodes if kind_of(tr.gm, n) == "sigma"]
    assert len(sigma) == 1 and tr.gm.get_submodule(sigma[0].target).function == "layer_norm"
    assert not any(kind_of(tr.gm, n) == "normalize" for n in tr.gm.graph.nodes)


# -------------------------------------------------------------------------- third-party U-Nets


def _converts(net, size=32):
    data = _data(n=3, b=1, size=size)
    stats = _calibrate(net, data)
    assert stats.approximation and stats.approximation["nodes"]
    snn = convert(net, stats, accept_gap=True)
    x = data[0]
    approx = approximated_ann(net, stats)(x)
    assert torch.allclose(AnnPass(snn).run(x), approx, atol=1e-4)
    out = simulate(snn, x, [32])[32]
    assert math.isfinite(_rel(out, approx)) and _rel(out, approx) < 0.5
    return snn


def test_monai_basic_unet_with_instance_norm_converts():
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    net = nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4), act="relu",
                         norm=("instance", {"affine": True})).eval()
    snn = _converts(net)
    assert len(snn.record.conversion.approximations) == 18  # two per conv block


def test_monai_basic_unet_defaults_convert():
    """MONAI's defaults: LeakyReLU + InstanceNorm (the signed neuron from test_leaky)."""
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    net = nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4)).eval()
    _converts(net)


def test_nnunet_plain_conv_unet_converts():
    pytest.importorskip("dynamic_network_architectures")
    from sjunet.models.nnunet import plain_conv_unet

    torch.manual_seed(0)
    net = plain_conv_unet(1, 2, n_stages=3, base_features=4, nonlin="relu").eval()
    snn = _converts(net)
    assert {e["kind"] for e in snn.record.conversion.approximations} == {"instance_norm"}


def test_cli_prints_the_gap_and_refuses_unless_accepted(tmp_path):
    import json

    from click.testing import CliRunner

    from sjunet.cli.main import main

    nets = pytest.importorskip("monai.networks.nets")
    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "act": "relu",
              "norm": ["instance", {"affine": True}], "features": [4, 4, 8, 8, 16, 4]}
    torch.manual_seed(0)
    torch.save(nets.BasicUNet(**kwargs).state_dict(), tmp_path / "w.pt")
    arch = ["--arch", "monai.networks.nets:BasicUNet", "--arch-kwargs", json.dumps(kwargs), "--weights",
            str(tmp_path / "w.pt")]
    data = ["-d", "demo-seg", "--opt", "size=32", "--opt", "num_items=6"]
    stats = tmp_path / "s.h5"
    r = CliRunner().invoke(main, ["calibrate", *arch, *data, "-o", str(stats)], catch_exceptions=False)
    assert r.exit_code == 0 and "approximation gap (18 norms" in r.output and "pixel agreement" in r.output, r.output
    too_large = gap_refusal(read_stats(stats).approximation) is not None
    r = CliRunner().invoke(main, ["convert", *arch, "--stats", str(stats), "-o", str(tmp_path / "a.safetensors")])
    if too_large:
        assert r.exit_code != 0 and "--accept-gap" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    else:
        assert r.exit_code == 0 and "approximation gap" in r.output, r.output
    r = CliRunner().invoke(main, ["convert", *arch, "--stats", str(stats), "--accept-gap", "-o",
                                  str(tmp_path / "b.safetensors")], catch_exceptions=False)
    assert r.exit_code == 0 and "approximation gap" in r.output, r.output
    # the exact route (issue 26): Σ-Δ group-norm neurons, no gap to accept or print
    r = CliRunner().invoke(main, ["convert", *arch, "--stats", str(stats), "--norms", "exact", "-o",
                                  str(tmp_path / "c.safetensors")], catch_exceptions=False)
    assert r.exit_code == 0 and "approximation gap" not in r.output and "18 Σ-Δ neuron layers" in r.output, r.output


@pytest.mark.parametrize("args", [{"groups": 0}, {"groups": 65537}, {"groups": 2.0}, {"groups": True}, {},
                                  {"groups": 2, "eps": 1e-5}])
def test_snn_record_checks_center_arguments(args):
    from sjunet.io import ArtifactError
    from sjunet.snn.record import build_module

    assert isinstance(build_module({"type": "Center", "args": {"groups": 4}}), Center)
    with pytest.raises(ArtifactError, match="Center|groups|argument"):
        build_module({"type": "Center", "args": args})
    with pytest.raises(ArtifactError, match="unknown module type"):  # the per-sample division never enters a file
        build_module({"type": "Normalize", "args": {"groups": 1}})
