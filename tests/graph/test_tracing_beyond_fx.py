"""Issue 26, items 3 and 6: tracing what torch.fx cannot, and size rules derived from the sizes they
were checked on.

Modules created inside ``forward`` (MONAI's ResNet builds an AvgPool there) are installed as fresh
submodules; shape values read as concrete numbers (``np.array(x.shape)``, ``int(shape[1])``,
einops) are specialised on the example input like padding sizes; a model torch.fx still cannot
trace is one line naming the model's file and line. The size rule of specialised constants is the
congruence class of the calibration size (a U-Net that crops its skips with unpadded convolutions
holds for 8k + 4, not for multiples of 8), so the calibration size always passes."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sjunet.calibration import calibrate
from sjunet.conversion.recipe import convert
from sjunet.graph import UnsupportedGraphError, canonical_graph, check_input_size, kind_of
from sjunet.snn.simulation import simulate


def _data(n=2, b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, 1, size, size, generator=g) for _ in range(n)]


def _snn(net, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(net, calibrate(net, data, progress=False))


# ------------------------------------------------------------- modules created inside forward


class _PoolMadeInForward(nn.Module):
    """MONAI ResNet's ``_downsample_basic_block``: the pooling layer is built while forward runs."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = nn.AvgPool2d(kernel_size=1, stride=2)(y)  # created here, on every call
        return self.b(F.interpolate(y, scale_factor=2.0))


def test_module_created_in_forward_is_installed_and_converts():
    net = _PoolMadeInForward().eval()
    tr = canonical_graph(net, (1, 1, 16, 16))
    assert [(c["type"], c["parameters"]) for c in tr.created] == [("AvgPool2d", 0)]
    assert "test_tracing_beyond_fx.py" in tr.created[0]["where"] and "nn.AvgPool2d(" in tr.created[0]["where"]
    assert any(kind_of(tr.gm, n) == "pool" for n in tr.gm.graph.nodes)
    x = _data(1)[0]
    with torch.no_grad():
        ref = net(x)
        assert torch.allclose(tr.gm(x), ref, atol=1e-6)
    out = simulate(_snn(net, _data()), x, [256])[256]
    assert float((out - ref).abs().mean() / ref.abs().mean()) < 0.05


class _ConvMadeInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        return nn.Conv2d(2, 2, 1)(torch.relu(self.a(x)))  # new random weights on every call


def test_module_with_parameters_created_in_forward_is_a_blocker_naming_its_line():
    with pytest.raises(UnsupportedGraphError) as e:
        canonical_graph(_ConvMadeInForward().eval(), (1, 1, 8, 8))
    msg = str(e.value)
    assert msg.splitlines()[0] == "cannot convert _ConvMadeInForward: 1 blocker: module created in forward", msg
    assert "test_tracing_beyond_fx.py, line" in msg and "new random weights on every call" in msg
    assert "create it in __init__" in msg


def test_monai_flexible_unet_resnet_is_traced_exactly():
    """FlexibleUNet(resnet18) was refused by torch.fx (its ResNet builds an AvgPool in forward) with no
    node or line; now it traces, and its zero-padded shortcuts are 1×1 convolutions [I; 0]."""
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    net = nets.FlexibleUNet(in_channels=1, out_channels=2, backbone="resnet18", pretrained=False, spatial_dims=2,
                            decoder_channels=(16, 8, 8, 4, 4)).eval()
    tr = canonical_graph(net, (1, 1, 32, 32))
    assert [c["type"] for c in tr.created] == ["AvgPool2d"] * 3 and all("resnet.py, line" in c["where"] for c in tr.created)
    assert sum(n.target.startswith("zero_channels_") for n in tr.gm.graph.nodes if n.op == "call_module") == 3
    x = _data(1, size=32)[0]
    with torch.no_grad():
        assert torch.allclose(tr.gm(x), net(x), atol=1e-5)


class _ZeroShortcut(nn.Module):
    """A strided residual block whose shortcut pools and appends zero channels (MONAI ResNet "A")."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 4, 3, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        s = F.avg_pool2d(y, 1, 2)
        s = torch.cat([s.data, torch.zeros(s.size(0), 2, *s.shape[2:], dtype=s.dtype, device=s.device)], dim=1)
        return self.head(F.interpolate(torch.relu(self.b(y) + s), scale_factor=2.0))


def test_zero_padded_shortcut_converts_and_approaches_the_ann():
    torch.manual_seed(1)
    net = _ZeroShortcut().eval()
    x = _data(1)[0]
    with torch.no_grad():
        ref = net(x)
    out = simulate(_snn(net, _data()), x, [16, 256])
    err = {t: float((o - ref).abs().mean() / ref.abs().mean()) for t, o in out.items()}
    assert err[256] < err[16] and err[256] < 0.05, err


# ---------------------------------------------------------- shape values as concrete numbers


class _NumpySizeCheck(nn.Module):
    """SwinUNETR's ``_check_input_size``: ``np.array`` of the input's shape, a Python-level check."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 2, 1)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        if (np.array(x.shape[2:]) % 4).any():
            raise ValueError("H and W must be multiples of 4")
        y = self.pool(self.pool(torch.relu(self.a(x))))
        return self.b(F.interpolate(y, scale_factor=4.0))


class _IntSizedPool(nn.Module):
    """``int()`` of a shape feeding a constant: the pooling kernel changes with the input size."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        k = int(x.shape[-1]) // 4
        y = F.avg_pool2d(torch.relu(self.a(x)), k)
        return F.interpolate(y, scale_factor=float(k))


def test_numpy_and_int_of_shapes_are_specialised_with_an_honest_size_rule():
    tr = canonical_graph(_NumpySizeCheck().eval(), (1, 1, 16, 16))
    assert [(s["op"], s["value"]) for s in tr.specialised] == [("numpy", [16, 16])]
    assert "np.array(x.shape[2:])" in tr.specialised[0]["where"]
    # the check changes nothing in the graph: the rule is the graph's multiple, checked on other sizes
    assert tr.size_rule["multiple"] == 4 and tr.size_rule["checked"] == [[16, 16], [20, 24], [24, 20]]
    tr = canonical_graph(_IntSizedPool().eval(), (1, 1, 16, 16))
    assert [(s["op"], s["value"]) for s in tr.specialised] == [("int", 16)]
    assert tr.size_rule["shape"] == [16, 16] and not tr.size_rule.get("multiple")  # the kernel is 16 // 4


class _Rearranged(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        from einops import rearrange

        return rearrange(torch.relu(self.a(x)), "b (g c) h w -> b (c g) h w", g=2)


def test_einops_and_item_assignment_trace():
    pytest.importorskip("einops")
    net = _Rearranged().eval()
    x = _data(1)[0]
    tr = canonical_graph(net, (1, 1, 16, 16))  # a channel shuffle: traced, then plumbing stages (spec §15)
    assert any(kind_of(tr.gm, n) == "plumbing" for n in tr.gm.graph.nodes)
    with torch.no_grad():
        assert torch.allclose(tr.gm(x), net(x))
    from sjunet.graph.tracing import trace

    tr = trace(net, (1, 1, 16, 16))
    assert torch.allclose(tr.gm(x), net(x)) and any(s["op"] == "shape" for s in tr.specialised)

    class Mask(nn.Module):  # SwinUNETR's compute_mask: a constant built from shapes by item assignment
        def forward(self, x):
            m = torch.zeros((1, 1, x.shape[2], x.shape[3]), device=x.device)
            m[:, :, : x.shape[2] // 2] = 1.0
            return x * m

    tr = trace(Mask().eval(), (1, 1, 8, 8))
    assert torch.allclose(tr.gm(x), Mask()(x))
    # converted: the filled mask is folded into a buffer and its fills, read by nothing, are dropped
    # (they used to stay behind as "shape arithmetic", refusing SwinUNETR)
    class AddMask(nn.Module):  # SwinUNETR adds its mask to the attention logits
        def forward(self, x):
            m = torch.zeros((1, 1, x.shape[2], x.shape[3]), device=x.device)
            m[:, :, : x.shape[2] // 2] = 1.0
            return x + m

    masked = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), AddMask(), nn.Conv2d(2, 1, 1)).eval()
    x = torch.rand(2, 1, 8, 8)
    snn = convert(masked, calibrate(masked, [x], progress=False))
    with torch.no_grad():
        assert torch.allclose(simulate(snn, x, [64])[64], masked(x), atol=0.05)


class _NotInstalled(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = [nn.Conv2d(1, 1, 1)]  # a plain list: torch.fx cannot name the module

    def forward(self, x):
        return self.blocks[0](x)


def test_untraceable_model_is_one_line_naming_its_file_and_line():
    with pytest.raises(UnsupportedGraphError) as e:
        canonical_graph(_NotInstalled().eval(), (1, 1, 8, 8))
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert msg.startswith("cannot convert _NotInstalled: torch.fx cannot trace it (NameError: ")
    assert "test_tracing_beyond_fx.py, line" in msg and "in forward: return self.blocks[0](x)" in msg, msg


# ------------------------------------------------------ size rules from the sizes they were checked on


class _CropUNet(nn.Module):
    """The original U-Net's layout: unpadded 3x3 convolutions, skips cropped to the upsampled size
    with a negative ``F.pad`` computed from shapes."""

    def __init__(self, w=2):
        super().__init__()

        def double(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3), nn.ReLU(), nn.Conv2d(o, o, 3), nn.ReLU())

        self.d1, self.d2, self.mid = double(1, w), double(w, 2 * w), double(2 * w, 4 * w)
        self.up2, self.u2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), double(4 * w, 2 * w)
        self.up1, self.u1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), double(2 * w, w)
        self.head, self.pool = nn.Conv2d(w, 2, 1), nn.MaxPool2d(2)

    @staticmethod
    def crop(skip, x):
        dy, dx = skip.size(2) - x.size(2), skip.size(3) - x.size(3)
        return F.pad(skip, [-(dx // 2), -(dx - dx // 2), -(dy // 2), -(dy - dy // 2)])

    def forward(self, x):
        a = self.d1(x)
        b = self.d2(self.pool(a))
        c = self.mid(self.pool(b))
        u = self.up2(c)
        u = self.u2(torch.cat([self.crop(b, u), u], 1))
        u = self.up1(u)
        return self.head(self.u1(torch.cat([self.crop(a, u), u], 1)))


def test_crop_unet_size_rule_holds_for_the_sizes_it_was_checked_on():
    torch.manual_seed(0)
    net = _CropUNet().eval()
    tr = canonical_graph(net, (1, 1, 92, 92))
    rule = tr.size_rule
    assert rule["checked"] == [[92, 92], [100, 108], [108, 100]]
    assert rule["multiple"] == 8 and rule["remainders"] == [4, 4]
    for sizes in rule["checked"] + [[84, 116]]:
        check_input_size(rule, sizes)  # the calibration size and every size checked pass
    with pytest.raises(ValueError, match=r"^input 96x96 does not fit .*H, W of the form 8k \+ 4[^\n]*$"):
        check_input_size(rule, (96, 96))
    snn = _snn(net, _data(1, b=1, size=92))
    x = _data(1, b=1, size=92, seed=3)[0]
    assert simulate(snn, x, [4])[4].shape == net(x).shape  # its own calibration size is taken


def test_a_global_pooling_branch_does_not_set_the_size_multiple():
    """Squeeze-excitation pools to one pixel at any input size: the size multiple comes from the
    strides (here one pooling: 2), not from that pixel (it was 32 for a 32x32 example, so an
    EfficientNet encoder calibrated on whole 512² images refused 128² fine-tuning crops)."""
    from sjunet.graph import feature_maps, size_multiple, tensor_shapes

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1)

        def forward(self, x):
            return x * torch.sigmoid(self.fc(self.pool(x)))

    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), SE(4), nn.Conv2d(4, 2, 1)).eval()
    gm = canonical_graph(net, (1, 1, 32, 32)).gm
    shapes = tensor_shapes(gm, (1, 32, 32))
    assert size_multiple(shapes, (32, 32)) == 32  # the pooled pixel taken for a stride product
    assert size_multiple(feature_maps(gm, shapes), (32, 32)) == 2
    snn = convert(net, calibrate(net, [torch.rand(2, 1, 32, 32)], progress=False))
    assert snn.record.conversion.size_multiple == 2
