"""Synapses that integrate into the membrane (issue 29, :mod:`sjunet.snn.fusion`): a fused
convolution → [centre → affine →] neuron step gives the unfused step's numbers, bit for bit where
the arithmetic is exact, and steps aside wherever it does not hold."""
import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer
from torch import fx, nn

from sjunet.layers.buffers import Buffered, channels_last, flat, streaming
from sjunet.layers.stages import Center, ChannelAffine
from sjunet.neurons import MultiThresholdNode, SignedMultiThresholdNode
from sjunet.snn import fusion
from sjunet.snn.simulation import simulate

pytestmark = pytest.mark.skipif(not fusion.available(), reason="no oneDNN (mkldnn) operators in this torch build")


class _Leaves(fx.Tracer):
    def is_leaf_module(self, m, name):
        return True


def _trace(root: nn.Module) -> fx.GraphModule:
    """A graph of ``root``'s modules as they are (neurons and stages as leaves, as a conversion leaves them)."""
    return fx.GraphModule(root, _Leaves().trace(root))


def _dyadic(shape, scale: int, lo: int, hi: int, g: torch.Generator) -> torch.Tensor:
    """Whole multiples of 2^-scale: sums of their products are exact in float32, in any order."""
    return torch.randint(lo, hi, shape, generator=g).float() / (1 << scale)


class _Chains(nn.Module):
    """conv → MT; conv (stride 2) → centre (2 groups) → affine → signed MT; conv → centre → signed MT."""

    def __init__(self, g: torch.Generator) -> None:
        super().__init__()
        self.c1 = layer.Conv2d(3, 4, 3, padding=1)  # SpikingJelly's: multi-step mode too
        self.n1 = MultiThresholdNode((1.0, 0.5, 0.25))
        self.c2 = layer.Conv2d(4, 4, 3, stride=2, padding=1, dilation=1)
        self.m2 = Center(groups=2)
        self.a2 = ChannelAffine.of(_dyadic((4,), 2, 1, 8, g), _dyadic((4,), 3, -4, 4, g))
        self.n2 = SignedMultiThresholdNode((1.0, 0.5, 0.25), negative_slope=0.25)
        self.c3 = layer.Conv2d(4, 2, 3, padding=2, dilation=2)
        self.m3 = Center(groups=2)
        self.n3 = SignedMultiThresholdNode((0.5, 0.25), negative_slope=0.5)
        self.head = layer.Conv2d(2, 2, 1)
        for c in (self.c1, self.c2, self.c3, self.head):
            c.weight.data = _dyadic(c.weight.shape, 4, -8, 9, g)
            c.bias.data = _dyadic(c.bias.shape, 3, -4, 5, g)

    def forward(self, x):
        y = self.n1(self.c1(x))
        y = self.n2(self.a2(self.m2(self.c2(y))))
        return self.head(self.n3(self.m3(self.c3(y))))


@pytest.fixture(autouse=True)
def small_layers_fuse(monkeypatch):
    """These networks are small: let every layer fuse (a real one fuses from :data:`fusion.MIN_FUSED` on)."""
    monkeypatch.setattr(fusion, "MIN_FUSED", 0)


@pytest.fixture(scope="module")
def net():
    g = torch.Generator().manual_seed(0)
    return _trace(_Chains(g)).eval(), _dyadic((2, 3, 16, 16), 3, 0, 9, g)


def test_fused_steps_equal_the_modules_run_apart_bit_for_bit(net):
    gm, x = net
    chains = fusion.chains(gm)
    assert [len(c) for c in chains] == [2, 4, 3]  # every neuron's synapse fuses, centres and affine included
    runner = fusion.fused(gm, x)
    assert runner is not None and fusion.fused(gm, x) is runner  # built once per network
    got = simulate(gm, x, [1, 2, 5])
    ref = simulate(gm, x, [1, 2, 5], fuse=False)
    for t in ref:
        assert torch.equal(got[t], ref[t]), t
        assert got[t].is_contiguous()  # handed back in the default layout
    # multi-step mode: the probe step runs fused, the chunks after it unfused (the states change layout)
    multi = simulate(gm, x, [1, 2, 5], mode="multi", chunk=2)
    for t in ref:
        assert torch.equal(multi[t], ref[t]), t
    functional.set_step_mode(gm, "s")
    with torch.no_grad(), streaming(gm):  # the fused run steps the network's own neurons, channels-last
        runner(x)
    assert channels_last(gm.n1.v) and channels_last(gm.n2.charge) and channels_last(gm.n3.v)
    functional.reset_net(gm)


def test_small_layers_run_apart(net, monkeypatch):
    gm, x = net
    monkeypatch.setattr(fusion, "MIN_FUSED", 2 * 4 * 16 * 16 + 1)  # just above the first layer's output
    with torch.no_grad(), streaming(gm):
        fusion.fused(gm, x)(x)
    assert not channels_last(gm.n1.v)  # the first layer ran apart, in its input's layout
    functional.reset_net(gm)
    assert torch.equal(simulate(gm, x, 3)[3], simulate(gm, x, 3, fuse=False)[3])


def test_fused_path_steps_aside_for_hooks_and_autograd(net):
    gm, x = net
    ref = simulate(gm, x, 3, fuse=False)[3]
    seen = []
    h = gm.n2.register_forward_pre_hook(lambda m, i: seen.append(i[0].shape))
    try:
        assert torch.equal(simulate(gm, x, 3)[3], ref)
    finally:
        h.remove()
    assert len(seen) == 3  # the hooked neuron ran as a module, every step
    runner = fusion.fused(gm, x)
    with torch.enable_grad():
        y = runner(x.requires_grad_())
    x.requires_grad_(False)
    assert y.requires_grad  # autograd: the modules ran apart


def test_tap_sums_give_the_mean_of_a_convolution_over_positions():
    g = torch.Generator().manual_seed(1)
    for stride, pad, dil, size in [(1, 1, 1, (9, 12)), (2, 1, 1, (10, 7)), (1, 2, 2, (8, 8)), (3, 0, 1, (11, 9))]:
        x = torch.randn(2, 3, *size, generator=g).contiguous(memory_format=torch.channels_last)
        w = torch.randn(5, 3, 3, 3, generator=g)
        y = F.conv2d(x, w, stride=stride, padding=pad, dilation=dil)
        masks = [fusion.tap_mask(n, m, 3, pad, dil, stride) for n, m in zip(size, y.shape[2:])]
        sums = fusion.tap_sums(x, *masks)
        torch.testing.assert_close(torch.einsum("ockl,bckl->bo", w, sums), y.sum((2, 3)), rtol=1e-4, atol=1e-4)


def test_only_networks_mostly_fed_by_fusable_convolutions_run_fused():
    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.n = nn.Conv2d(1, 2, 3, padding=1), MultiThresholdNode()
            self.p, self.m = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), MultiThresholdNode()
            self.q, self.k = nn.Conv2d(2, 2, 3, padding="same"), MultiThresholdNode()

        def forward(self, x):
            return self.k(self.q(self.m(self.p(self.n(self.c(x))))))

    gm = _trace(Half())
    x = torch.rand(1, 1, 8, 8)
    assert len(fusion.chains(gm)) == 1  # reflect padding and padding="same" do not fuse
    assert fusion.fused(gm, x) is None  # one neuron of three: the default layout, as before
    assert fusion.fused(gm, x.double()) is None and fusion.fused(gm, x[0]) is None


def test_buffers_follow_the_layout_of_their_input_and_flatten_in_memory_order():
    class B(Buffered):
        streaming = True

    x = torch.rand(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    b = B().step_buffer("out", x.shape, x)
    assert channels_last(b) and b.shape == x.shape
    assert not channels_last(torch.rand(2, 1, 4, 5).contiguous(memory_format=torch.channels_last))
    v = flat([x, b])
    assert v is not None and v[0].data_ptr() == x.data_ptr() and v[0].numel() == x.numel()
    v[1].copy_(v[0])
    assert torch.equal(b, x)
    assert flat([x, torch.rand(2, 3, 4, 5)]) is None  # mixed layouts: no flat view
