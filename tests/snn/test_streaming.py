"""Streaming simulation (issue 29): buffers reused across steps, stages that allocate nothing per
step, and multi-step chunks chosen by memory — all giving the numbers they gave before."""
import pytest
import torch
from spikingjelly.activation_based import functional
from torch import fx, nn

from sjunet.calibration import calibrate
from sjunet.conversion.recipe import convert
from sjunet.layers.buffers import Buffered, release_buffers, streaming
from sjunet.layers.stages import ChannelAffine, Center, Concat, Pad, SpikingMaxPool2d
from sjunet.models import UNet
from sjunet.neurons import MultiThresholdNode
from sjunet.snn.simulation import auto_chunk, memory_chunk, run_steps, simulate


@pytest.fixture(scope="module")
def snn():
    torch.manual_seed(0)
    ann = UNet(base_width=4, depth=2, pool="max").eval()
    x = torch.rand(2, 1, 32, 32)
    return convert(ann, calibrate(ann, [x], progress=False)), x


def test_buffers_are_reused_only_while_streaming_and_only_for_single_call_modules():
    n = MultiThresholdNode()
    x = torch.rand(2, 3)
    with torch.no_grad():
        a, b = n(x), n(x)
        assert a.data_ptr() != b.data_ptr()  # by hand: every output stays valid
        with streaming(n):
            c, d = n(x), n(x)
            assert c.data_ptr() == d.data_ptr()  # streaming: one buffer, valid until the next step
        assert not n.streaming
    release_buffers(n)
    assert "_workspace" not in vars(n)
    seen = []  # a monitor (SpikingJelly's OutputMonitor / AttributeMonitor keep references)
    n.register_forward_hook(lambda m, i, o: seen.append((o, m.v)))
    with torch.no_grad(), streaming(n):
        n(x), n(x)
    assert seen[0][0] is not seen[1][0] and seen[0][1] is not seen[1][1]  # fresh tensors for it

    class Twice(nn.Module):  # one neuron called at two places: its calls would share a buffer
        def __init__(self):
            super().__init__()
            self.n, self.m = MultiThresholdNode(), MultiThresholdNode()

        def forward(self, x):
            return self.m(self.n(x)) + self.n(x)

    class Leaves(fx.Tracer):
        def is_leaf_module(self, m, name):
            return True

    root = Twice()
    gm = fx.GraphModule(root, Leaves().trace(root))
    with streaming(gm) as on:
        assert on == [gm.m]


def test_streamed_simulation_equals_step_by_step_by_hand_and_both_modes(snn):
    """simulate streams (buffers reused, states in place); its outputs equal a hand-run single-step
    loop without streaming, and multi-step mode at any chunk (auto included) gives the same (the
    modules as they are: fused synapses give these numbers within rounding, tests/snn/test_fusion.py)."""
    snn, x = snn
    got = simulate(snn, x, [1, 3, 5], post=False, fuse=False)
    functional.reset_net(snn)
    functional.set_step_mode(snn, "s")
    acc = 0.0
    with torch.no_grad():
        by_hand = {}
        for t in range(1, 6):
            acc = acc + snn(x)
            by_hand[t] = acc / t
    functional.reset_net(snn)
    for t in (1, 3, 5):
        assert torch.equal(got[t], by_hand[t])
    for chunk in ("auto", 1, 2, 4):
        multi = simulate(snn, x, [1, 3, 5], mode="multi", chunk=chunk, post=False, fuse=False)
        for t in (1, 3, 5):
            assert torch.allclose(multi[t], got[t], atol=1e-5), (chunk, t)
    with pytest.raises(ValueError, match="chunk must be a positive integer or 'auto'"):
        simulate(snn, x, 2, mode="multi", chunk=0)
    release_buffers(snn)
    assert not any("_workspace" in vars(m) for m in snn.modules())


def test_chunk_by_memory(snn, monkeypatch):
    """chunk="auto": as many steps as keep a chunk's largest tensor within the cache budget; a given
    chunk: at most that many."""
    import sjunet.snn.simulation as simulation

    snn, x = snn
    assert memory_chunk(1, 7) == 7 and memory_chunk(1 << 40, 7) == 1
    functional.reset_net(snn)
    functional.set_step_mode(snn, "s")
    sizes = []

    class Sizes(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor) and n.op != "placeholder":
                sizes.append(out.numel() * out.element_size())
            return out

    with torch.no_grad():
        Sizes(snn).run(x)
    functional.reset_net(snn)
    largest = max(sizes)
    for budget, chunk in [(int(3.5 * largest), 3), (largest - 1, 1), (100 * largest, 20)]:  # a quarter of the cache
        monkeypatch.setattr(simulation, "cache_bytes", lambda device="cpu", b=budget: 4 * b)
        assert auto_chunk(snn, x, 20) == chunk
    # a chunk given is at most what memory allows: where one step fills the cache, chunk=8 runs single
    # steps (the crossover: a chunk there is slower per step), with the same numbers
    monkeypatch.setattr(simulation, "cache_bytes", lambda device="cpu": 4 * (largest - 1))
    calls = []
    conv = [m for m in snn.modules() if isinstance(m, nn.Conv2d)][-1]  # (the first sees the static input once)
    handle = conv.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))  # batch, x steps
    try:
        capped = simulate(snn, x, 8, mode="multi", chunk=8, fuse=False)[8]  # (fused: test_fusion.py)
        assert calls == [len(x)] * 8, calls  # eight single steps
        calls.clear()
        exact = simulate(snn, x, 8, mode="multi", chunk=8, cap_chunk=False)[8]
        assert len(calls) < 8 and max(calls) > len(x), calls  # chunks of steps in one call
    finally:
        handle.remove()
    assert torch.equal(capped, exact)


def test_stages_write_into_buffers_with_the_same_numbers():
    """Concatenation, gains, centring, padding and the spiking max-pool, streamed in place, equal
    their out-of-place forms (what runs under autograd) at every step and in multi-step mode."""
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(5, 2, 6, 8, 8, generator=g)
    stages = [ChannelAffine.of(torch.rand(6, generator=g), torch.randn(6, generator=g)), Center(3),
              Pad((1, 2, 0, 3)), Pad((2, 1, 1, 1), "replicate"), Pad((1, 1, 2, 0), "reflect"), Pad((0, 0, 0, 0))]
    for m in stages:
        with torch.no_grad(), streaming(m):
            fast = [m(x).clone() for x in xs]
        slow = [m(x.clone().requires_grad_()).detach() for x in xs]
        assert all(torch.equal(a, b) for a, b in zip(fast, slow)), m
    c = Concat(1)
    with torch.no_grad(), streaming(c):
        assert torch.equal(c(xs[0], xs[1]), torch.cat([xs[0], xs[1]], 1))
        c.step_mode = "m"
        assert torch.equal(c(xs, xs), torch.cat([xs, xs], 2))
    pool = SpikingMaxPool2d(2)
    with torch.no_grad(), streaming(pool):
        fast = [pool(x).clone() for x in xs]
    functional.reset_net(pool)
    slow = [pool(x.clone().requires_grad_()).detach() for x in xs]
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))
    functional.reset_net(pool)
    pool.step_mode = "m"
    with torch.no_grad(), streaming(pool):
        multi = torch.cat([pool(xs[:2]), pool(xs[2:])])
    assert torch.equal(multi, torch.stack(fast))  # step by step in place: exactly single-step mode
    assert isinstance(pool, Buffered)


def test_run_steps_keeps_recording_exact(snn):
    """Recorders stream too: the spike counts of a streamed run equal those of one without."""
    from sjunet.neurons import set_recording

    snn, x = snn
    counts = []
    for stream in (True, False):
        functional.reset_net(snn)
        set_recording(snn, True)
        with torch.no_grad():
            if stream:
                run_steps(snn, x, 4, chunk="auto")
            else:
                functional.set_step_mode(snn, "s")
                for _ in range(4):
                    snn(x)
        counts.append({n: m.spike_count.clone() for n, m in snn.named_modules() if hasattr(m, "quantum")})
        set_recording(snn, False)
    functional.reset_net(snn)
    assert counts[0].keys() == counts[1].keys() and all(torch.equal(counts[0][k], counts[1][k]) for k in counts[0])
