"""Spec §14: conversion of any number of spatial dimensions — 3-D U-Nets (Conv3d, ConvTranspose3d,
Avg/MaxPool3d, trilinear resampling, BatchNorm3d, InstanceNorm3d; anisotropic kernels and strides)
convert with the same guarantees as 2-D: the SNN approaches the ANN as T grows, fan-out and MACs
are per axis, the size rule is per axis, spiking-flow fine-tuning runs, SNN files round-trip, and
volumes evaluate whole or tiled alike. Tiny widths and volumes, random weights, no training. The
2-D behaviour is covered (unchanged) by the existing 2-D tests."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sjunet.calibration import calibrate
from sjunet.conversion.recipe import convert, load_snn, save_snn
from sjunet.evaluation import Protocol, ann_fn, pad_to_multiple, plan, run_layout, snn_fn
from sjunet.evaluation.energy import conv_macs
from sjunet.evaluation.fanout import fanout_maps, stage_reach
from sjunet.graph import UnsupportedGraphError, canonical_graph, kind_of
from sjunet.layers.dims import functional, layer, spatial_dims
from sjunet.layers.stages import SpikingMaxPool, SpikingMaxPool2d
from sjunet.snn.simulation import simulate


def _volumes(n=2, b=2, shape=(8, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, 1, *shape, generator=g) for _ in range(n)]


def _warm_bn(net, shape, seed=1):
    """BatchNorm with non-trivial running statistics: a few training-mode passes on random data."""
    torch.manual_seed(seed)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(2, 1, *shape) * 2)
    return net.eval()


def _convert(net, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(net, calibrate(net, data, progress=False), **kw)


def _errors(net, snn, x, T=(16, 128)):
    """Mean relative error and class (argmax) agreement of the SNN's output at each T."""
    ref = net(x).detach()
    out = simulate(snn, x, list(T), chunk=64)
    scale = float(ref.abs().mean())
    return ({t: float((o - ref).abs().mean()) / scale for t, o in out.items()},
            {t: float((o.argmax(1) == ref.argmax(1)).float().mean()) for t, o in out.items()})


def _approaches(err, agree, bound=0.02):
    lo, hi = min(err), max(err)
    assert err[hi] < err[lo] and err[hi] < bound, err
    assert agree[hi] >= 0.98, agree


# ------------------------------------------------------------------------------ the seam


def test_one_table_names_each_dimensionality():
    assert layer("conv", 3) is nn.Conv3d and layer("conv_t", 2) is nn.ConvTranspose2d
    assert functional("max_pool", 3) is F.max_pool3d and functional("conv_t", 3) is F.conv_transpose3d
    with pytest.raises(ValueError, match="no conv layer for 4 spatial"):
        layer("conv", 4)
    assert SpikingMaxPool is SpikingMaxPool2d  # the name SNN files record
    p = SpikingMaxPool2d.from_maxpool(nn.MaxPool3d((1, 2, 2)))
    assert p.spatial_dims == 3 and p.spec()["spatial_dims"] == 3
    assert p.pool(torch.arange(16.).view(1, 1, 1, 4, 4)).shape == (1, 1, 1, 2, 2)
    assert "spatial_dims" not in SpikingMaxPool2d.from_maxpool(nn.MaxPool2d(2)).spec()  # 2-D files unchanged


# ------------------------------------------------------------------------------ 1. MONAI


def test_monai_basic_unet_3d_batchnorm_approaches_the_ann():
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4), act="relu",
                    norm="batch")
    net = _warm_bn(net, (16, 16, 16))
    data = _volumes(2, shape=(16, 16, 16))
    snn = _convert(net, data)
    kinds = {kind_of(snn, n) for n in snn.graph.nodes}
    assert {"neuron", "maxpool", "synaptic", "cat"} <= kinds, kinds
    assert any(isinstance(m, nn.ConvTranspose3d) for m in snn.modules())
    assert snn.record.conversion.size_multiples == [16, 16, 16]
    err, agree = _errors(net, snn, data[0])
    _approaches(err, agree)


def test_monai_basic_unet_3d_defaults_instance_norm_and_leaky_relu():
    """MONAI's defaults: LeakyReLU(0.1) and InstanceNorm3d(affine) — the norm's centring is exact,
    its deviation fixed from calibration (the converted ANN is the fixed-deviation one)."""
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4)).eval()
    assert any(isinstance(m, nn.InstanceNorm3d) for m in net.modules())
    data = _volumes(2, b=2, shape=(16, 32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = calibrate(net, data, progress=False)
        snn = convert(net, stats, accept_gap=True)
    assert snn.record.conversion.approximations, "the instance norms were not converted"
    # against the ANN the SNN implements (fixed deviations), which conversion records as gap
    x = data[0]
    out = simulate(snn, x, [16, 128], chunk=64)
    assert float((out[128] - out[16]).abs().mean()) > 0
    ref = _fixed_ann(net, stats)(x).detach()
    scale = float(ref.abs().mean())
    err = {t: float((o - ref).abs().mean()) / scale for t, o in out.items()}
    assert err[128] < err[16] and err[128] < 0.03, err
    assert float((out[128].argmax(1) == ref.argmax(1)).float().mean()) >= 0.98


def _fixed_ann(net, stats):
    """The canonical ANN with every norm's deviation fixed (what the SNN approximates)."""
    from sjunet.conversion.recipe import fix_deviations

    gm = canonical_graph(net, stats.data["input_shape"]).gm
    fix_deviations(gm, stats)
    from sjunet.layers.dims import set_spatial_dims

    set_spatial_dims(gm)
    return gm


# ------------------------------------------------------------------------------ 2. nnU-Net


def test_nnunet_plain_conv_unet_3d_anisotropic_approaches_the_ann():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    # nnU-Net's 3-D plan for anisotropic data: the first pooling leaves the depth axis alone
    net = PlainConvUNet(1, 3, (4, 8, 8), nn.Conv3d, [(1, 3, 3), 3, 3], [1, (1, 2, 2), 2], (2, 1, 1), 2, (1, 1),
                        conv_bias=True, norm_op=nn.BatchNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                        nonlin=nn.ReLU, nonlin_kwargs={"inplace": True})
    net = _warm_bn(net, (4, 16, 16))
    data = _volumes(2, shape=(4, 16, 16))
    snn = _convert(net, data)
    assert snn.record.conversion.size_multiples == [2, 4, 4]  # per axis: D pooled once, H and W twice
    first = next(m for m in snn.modules() if isinstance(m, nn.Conv3d))
    assert tuple(first.kernel_size) == (1, 3, 3)
    err, agree = _errors(net, snn, data[0])
    _approaches(err, agree)


# --------------------------------------------------- 3. a hand-written 3-D net: every 3-D layer


class Up3d(nn.Module):
    """PyTorch-UNet's ``Up`` in 3-D: pad the upsampled map to the skip's size (amounts from shapes)."""

    def forward(self, x1, x2):
        dz, dy, dx = (x2.size(i) - x1.size(i) for i in (2, 3, 4))
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2, dz // 2, dz - dz // 2])
        return torch.cat([x2, x1], dim=1)


class Tiny3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.r1 = nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU()
        self.p1 = nn.MaxPool3d(2)
        self.c2, self.r2 = nn.Conv3d(4, 6, 3, padding=1), nn.ReLU()
        self.p2 = nn.AvgPool3d(2)
        self.c3, self.r3 = nn.Conv3d(6, 6, 3, padding=1), nn.ReLU()
        self.up1, self.ru = nn.ConvTranspose3d(6, 6, 2, stride=2), nn.ReLU()
        self.cat1 = Up3d()
        self.c4, self.r4 = nn.Conv3d(12, 4, 3, padding=1), nn.ReLU()
        self.up2 = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        self.c5, self.r5 = nn.Conv3d(8, 4, 3, padding=1), nn.ReLU()
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x):
        a = self.r1(self.b1(self.c1(x)))
        b = self.r2(self.c2(self.p1(a)))
        c = self.r3(self.c3(self.p2(b)))
        d = self.r4(self.c4(self.cat1(self.ru(self.up1(c)), b)))
        e = self.r5(self.c5(torch.cat([a, self.up2(d)], 1)))
        return self.head(e)


@pytest.fixture(scope="module")
def tiny():
    net = _warm_bn(Tiny3d(), (8, 16, 16), seed=3)
    data = _volumes(2, shape=(8, 16, 16), seed=4)
    return net, data, _convert(net, data)


def test_tiny_3d_net_converts_and_approaches_the_ann(tiny):
    net, data, snn = tiny
    types = {type(m).__name__ for m in snn.modules()}
    assert {"Conv3d", "ConvTranspose3d", "AvgPool3d", "SpikingMaxPool2d", "Resample", "Pad"} <= types, types
    assert next(m for m in snn.modules() if isinstance(m, SpikingMaxPool2d)).spatial_dims == 3
    err, agree = _errors(net, snn, data[0], T=(16, 256))
    _approaches(err, agree, bound=0.01)


def test_fanout_and_macs_of_a_conv3d_are_per_axis_products(tiny):
    _, _, snn = tiny
    c5 = next(m for n, m in snn.named_modules() if n.endswith("c5") and isinstance(m, nn.Conv3d))
    # C_in · k_d·k_h·k_w · C_out · D·H·W
    assert conv_macs(c5, (8, 8, 16, 16), (4, 8, 16, 16)) == 8 * 27 * 4 * 8 * 16 * 16
    up = nn.ConvTranspose3d(6, 6, 2, stride=2)
    assert conv_macs(up, (6, 2, 4, 4), (6, 4, 8, 8)) == 6 * 8 * 6 * 2 * 4 * 4
    # reach per axis: a 3x3x3 padding-1 conv reaches 3 outputs per input inside, 2 at an edge
    rd, rh, rw = stage_reach(c5, (8, 16, 16), (8, 16, 16))
    assert rd.shape == (8, 8) and rh.shape == (16, 16) and int(rh.sum(1)[5]) == 3 and int(rd.sum(1)[0]) == 2
    maps = fanout_maps(snn, (1, 8, 16, 16))
    fo = maps["r5"]  # r5 feeds only the 1x1x1 head: 2 synapses per spike everywhere
    assert fo.map.shape == (8, 16, 16) and torch.all(fo.map == 2)
    fo1 = maps["r1"]  # r1 feeds c2 (through the max-pool: its own events) and c5 (3x3x3, 4 outputs)
    assert fo1.map.shape == (8, 16, 16)
    assert float(fo1.map[4, 8, 8]) == 27 * 4 and float(fo1.map[0, 0, 0]) == 8 * 4


def test_size_rule_is_per_axis_and_refuses_in_one_line(tiny):
    net, _, snn = tiny
    rule = snn.record.conversion.size_rule
    assert rule["multiples"] == [4, 4, 4] and rule["example_shape"] == [2, 1, 8, 16, 16]
    assert 2 in simulate(snn, torch.rand(1, 1, 12, 16, 20), 2)  # other multiples of 4: the rule holds
    with pytest.raises(ValueError, match=r"^input 9x16x16 does not fit .*D, H, W multiples of 4x4x4[^\n]*$"):
        simulate(snn, torch.rand(1, 1, 9, 16, 16), 2)
    with pytest.raises(ValueError, match="has 2 spatial dimension"):
        simulate(snn, torch.rand(1, 1, 16, 16), 2)


def test_snn_file_round_trips_a_volume_snn(tiny, tmp_path):
    _, data, snn = tiny
    path = save_snn(snn, tmp_path / "tiny3d.snn")
    back, rec = load_snn(path)
    assert "Conv3d" in {m["type"] for m in rec["graph"]["modules"].values()}
    x = data[1][:1]
    a, b = simulate(snn, x, 8)[8], simulate(back, x, 8)[8]
    assert torch.equal(a, b)


def test_unsupported_dimensions_are_refused_in_one_line():
    class Net1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(1, 2, 3)

        def forward(self, x):
            return torch.relu(self.c(x))

    with pytest.raises(UnsupportedGraphError, match="Conv1d — 1-D signals are not supported"):
        canonical_graph(Net1d().eval(), (1, 1, 16))

    class Nearest3d(nn.Module):  # an interpolation mode with no linear spiking form
        def __init__(self):
            super().__init__()
            self.c = nn.Conv3d(1, 2, 3, padding=1)

        def forward(self, x):
            return F.interpolate(torch.relu(self.c(x)), scale_factor=2, mode="area")

    with pytest.raises(UnsupportedGraphError, match="interpolation mode 'area'"):
        canonical_graph(Nearest3d().eval(), (1, 1, 4, 8, 8))


# ------------------------------------------------------------- 4. spiking-flow fine-tuning


def test_flow_finetune_step_on_a_volume_snn(tiny):
    from sjunet.tasks import SegmentationTask
    from sjunet.training.flow import finetune_loss

    _, data, snn0 = tiny
    snn = load_snn(save_snn(snn0, _tmp_file()))[0]  # a private copy
    x = data[0]
    y = torch.randint(0, 2, (x.shape[0], *x.shape[2:]), generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in snn.named_parameters()}
    opt = torch.optim.SGD(snn.parameters(), lr=0.1)
    loss = finetune_loss(snn, SegmentationTask(2), x, y, 8)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    opt.step()
    changed = [n for n, p in snn.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any("c5" in n for n in changed) and any("c1" in n for n in changed), changed


def _tmp_file():
    import tempfile

    return tempfile.mkdtemp() + "/copy.snn"


# ------------------------------------------------------------- 5. whole-volume evaluation


def test_tiled_volume_equals_whole_volume(tiny):
    net, _, snn = tiny
    assert spatial_dims(snn) == 3
    x = torch.rand(1, 1, 16, 16, 32, generator=torch.Generator().manual_seed(5))
    whole = Protocol("whole")
    tiled = Protocol("tiled", tile=8, overlap=12)
    lay = plan(tiled, x.shape[2:], (4, 4, 4))
    assert lay.kind == "tiled" and lay.padded == (16, 16, 32) and len(lay.tiles) == 2 * 2 * 4
    for fn, atol in ((ann_fn(net), 1e-5), (snn_fn(snn, [8]), 1e-4)):
        a = run_layout(fn, x, plan(whole, x.shape[2:], (4, 4, 4)), whole)
        b = run_layout(fn, x, lay, tiled)
        for k in a:
            assert a[k].shape == (1, 2, 16, 16, 32)
            assert torch.allclose(a[k], b[k], atol=atol), float((a[k] - b[k]).abs().max())


def test_volume_padding_is_per_axis_and_cropped_back(tiny):
    net, _, _ = tiny
    x = torch.rand(1, 1, 6, 13, 16)
    xp = pad_to_multiple(x, (4, 4, 4))
    assert xp.shape == (1, 1, 8, 16, 16) and torch.equal(xp[..., :6, :13, :16], x)
    p = Protocol("whole")
    out = run_layout(ann_fn(net), x, plan(p, x.shape[2:], (4, 4, 4)), p)[None]
    assert out.shape == (1, 2, 6, 13, 16)
    with pytest.raises(ValueError, match="protocol patch evaluates 2-D images"):
        plan(Protocol("patch", patch=8, stride=8), x.shape[2:], (4, 4, 4))
