import pytest
import torch
from spikingjelly.activation_based import functional

from sjunet.neurons import IFNode, MultiThresholdNode, mt_step, set_recording, threshold_ladder


def _sequential_reference(x_seq, thresholds):
    """The spec §3 pseudo-code, literally, on Python floats."""
    v, outs, spikes = 0.0, [], 0
    for x in x_seq:
        v += x
        o = 0.0
        for th in thresholds:
            if v >= th:
                v -= th
                o += th
                spikes += 1
        outs.append(o)
    return outs, v, spikes


def test_threshold_ladder():
    assert threshold_ladder(4) == (2.0, 1.0, 0.5, 0.25)
    assert threshold_ladder(1, 1.0) == (1.0,)
    with pytest.raises(ValueError):
        threshold_ladder(0)
    with pytest.raises(ValueError):
        MultiThresholdNode((1.0, 2.0))  # not largest first


def test_hand_worked_spike_train():
    n = MultiThresholdNode()
    set_recording(n)
    # step 1: V=3.8 -> spikes at 2,1,.5,.25 -> o=3.75, residue .05
    # step 2: V=.05+.3=.35 -> spike at .25 -> o=.25, residue .1
    # step 3: V=.1+1.2=1.3 -> spikes at 1, .25 -> o=1.25, residue .05
    # step 4: V=.05-0.5=-.45 -> nothing
    xs = [3.8, 0.3, 1.2, -0.5]
    outs = [float(n(torch.tensor([x]))) for x in xs]
    assert outs == pytest.approx([3.75, 0.25, 1.25, 0.0])
    assert float(n.v) == pytest.approx(-0.45)
    assert float(n.input_current()) == pytest.approx(sum(xs))
    assert float(n.output_flow()) == pytest.approx(5.25)
    assert float(n.spike_count) == 4 + 1 + 2
    functional.reset_net(n)
    assert n.v == 0.0 and n.acc_output == 0.0


def test_at_most_one_spike_per_threshold_and_ge():
    n = MultiThresholdNode()
    assert float(n(torch.tensor([100.0]))) == 3.75  # capped: one spike per threshold
    functional.reset_net(n)
    assert float(n(torch.tensor([0.25]))) == 0.25  # >= fires exactly at threshold
    i = IFNode()
    assert float(i(torch.tensor([1.0]))) == 1.0
    assert float(i(torch.tensor([0.99]))) == 0.0


@pytest.mark.parametrize("ladder", [(2.0, 1.0, 0.5, 0.25), (1.0,), (1.5, 1.0, 0.3), (3.0, 1.0)])
def test_matches_sequential_definition(ladder):
    g = torch.Generator().manual_seed(0)
    xs = (torch.rand(30, generator=g) * 4 - 1).tolist()
    ref, v_ref, count_ref = _sequential_reference(xs, ladder)
    n = MultiThresholdNode(ladder)
    set_recording(n)
    outs = [float(n(torch.tensor([x]))) for x in xs]
    assert outs == pytest.approx(ref, abs=1e-6)
    assert float(n.v) == pytest.approx(v_ref, abs=1e-5)
    assert float(n.spike_count) == count_ref


def test_multi_step_equals_step_by_step_exactly():
    x = torch.randn(12, 3, 5, 5) * 2
    n = MultiThresholdNode(step_mode="m")
    set_recording(n, True)
    out_m = n(x)
    state_m = (n.v.clone(), n.input_current().clone(), n.output_flow().clone(), n.spike_count.clone())
    functional.reset_net(n)
    n.step_mode = "s"
    out_s = torch.stack([n(x[t]) for t in range(x.shape[0])])
    assert torch.equal(out_m, out_s)
    assert torch.equal(state_m[0], n.v)
    assert torch.allclose(state_m[1], n.input_current(), atol=1e-5)
    assert torch.allclose(state_m[1], x.sum(0), atol=1e-5)
    assert torch.equal(state_m[2], n.output_flow()) or torch.allclose(state_m[2], n.output_flow(), atol=1e-5)
    assert torch.equal(state_m[3], n.spike_count)


def test_theorem_3_1_halving_ladder_error():
    """Theorem 3.1: for V ~ U[0,1] the halving ladder with smallest threshold 2^-N has mean
    quantisation error 1/2^(N+1); other ladders of N thresholds do worse."""
    v = torch.rand(400_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for N in (1, 2, 3, 4, 5):
        ladder = threshold_ladder(N, top=0.5)  # 1/2, 1/4, …, 2^-N
        o, _, _ = mt_step(v, torch.zeros_like(v), ladder)
        err = float((v - o).mean())
        assert err == pytest.approx(2.0 ** -(N + 1), rel=0.01)
    halving = float((v - mt_step(v, torch.zeros_like(v), threshold_ladder(3, 0.5))[0]).mean())
    for other in [(0.6, 0.3, 0.1), (0.5, 0.3, 0.2), (0.4, 0.2, 0.1), (0.75, 0.5, 0.25)]:
        err = float((v - mt_step(v, torch.zeros_like(v), other)[0]).mean())
        assert err > halving * 1.05, other


def test_output_flow_is_exact_integer_quanta_and_widens_before_overflow():
    from sjunet.neurons import MultiThresholdNode

    n = MultiThresholdNode((2.0, 1.0, 0.5, 0.25))
    n.record = True
    x = torch.full((3,), 3.9)  # saturates: 3.75 per step
    for _ in range(2200):  # 15 quanta × 2200 steps > 32767: int16 would overflow
        n(x)
    assert n.acc_output.dtype == torch.int32
    assert torch.equal(n.output_flow(), torch.full((3,), 3.75 * 2200))
    m = MultiThresholdNode((1.0, 0.4))  # not halving: a float accumulator
    m.record = True
    m(torch.tensor([1.5]))
    assert m.acc_output.is_floating_point() and float(m.output_flow()) == pytest.approx(1.4)


def test_named_ladders_and_the_theorem_ladder_quantises_the_unit_interval_finer():
    """``thresholds="theorem"`` is Theorem 3.1's ladder for a membrane in [0, 1]: one MT step of
    V in [0, 0.95] (rounding start, v0 = θ_min/2; its cap is 0.9375) errs by at most 1/32 against 1/8
    for the paper's ladder, whose top threshold 2 never fires below 1; unknown names are refused in
    one line."""
    import pytest

    from sjunet.neurons import LADDERS, mt_step, named_ladder

    assert named_ladder("theorem") == (0.5, 0.25, 0.125, 0.0625) and named_ladder("paper") == (2.0, 1.0, 0.5, 0.25)
    assert named_ladder([1, 0.5]) == (1.0, 0.5) and named_ladder(None) is None
    with pytest.raises(ValueError, match="unknown threshold ladder 'fine'; name one of paper, theorem"):
        named_ladder("fine")
    v = torch.linspace(0, 0.95, 2001)
    errs = {}
    for name, ladder in LADDERS.items():
        o, _, _ = mt_step(v, torch.full_like(v, ladder[-1] / 2), ladder)
        errs[name] = float((o - v).abs().max())
    assert errs["theorem"] <= 1 / 32 + 1e-6 and errs["paper"] >= 1 / 8 - 1e-3


# ------------------------------------------------------------------ the in-place step (issue 29)

def _cases():
    """(name, module factory, reference step ``ref(x, state) -> (o, state, n)``, initial state)."""
    from sjunet.neurons import MultiLevelNode, RealSpikeNode, SignedMultiThresholdNode, signed_mt_step
    from sjunet.neurons.peers import ML_REFERENCE, RS_REFERENCE, ml_step, rs_step

    def mt(ladder, v0):
        return (lambda: MultiThresholdNode(ladder, v_init=v0),
                lambda x, s: (lambda o, v, n: (o, v, n))(*mt_step(x, s, ladder, count_spikes=True)),
                lambda x: torch.full_like(x, v0))

    def signed(ladder, alpha):
        def ref(x, s):
            o, v, ch, n = signed_mt_step(x, s[0], s[1], ladder, alpha, count_spikes=True)
            return o, (v, ch), n
        return (lambda: SignedMultiThresholdNode(ladder, negative_slope=alpha, v_init=0.03), ref,
                lambda x: (torch.full_like(x, 0.03), 0.0))

    def ml(kw):
        m = MultiLevelNode(**kw)
        return (lambda: MultiLevelNode(**kw),
                lambda x, s: ml_step(x, s, m.thresholds, m.decay, m.reset_mode, m.amplitude), m._v0)

    def rs(kw):
        m = RealSpikeNode(**kw)
        amp = torch.linspace(0.5, 1.5, 3).view(-1, 1, 1)

        def make():
            n = RealSpikeNode(**kw)
            n.amplitude.data = amp.reshape(-1).clone()
            return n
        return make, lambda x, s: rs_step(x, s, amp, m.threshold, m.decay, m.reset_mode), \
            lambda x: torch.full_like(x, m.v_init)

    return {"mt paper": mt((2.0, 1.0, 0.5, 0.25), 0.125), "mt theorem": mt((0.5, 0.25, 0.125, 0.0625), 0.0),
            "mt halving, θ_N not a power of two": mt((1.5, 0.75, 0.375), 0.1), "if": mt((1.0,), 0.5),
            "mt, not halving": mt((1.5, 1.0, 0.3), 0.0), "signed": signed((2.0, 1.0, 0.5, 0.25), 0.1),
            "prelu per channel": signed((0.5, 0.25, 0.125, 0.0625), torch.tensor([0.1, -0.3, 1.7])),
            "signed, not halving": signed((1.5, 1.0, 0.3), 0.2), "ml": ml({}), "ml reference": ml(ML_REFERENCE),
            "rs": rs({}), "rs reference": rs(RS_REFERENCE)}


@pytest.mark.parametrize("case", list(_cases()))
@pytest.mark.parametrize("mode", ["s", "m"])
def test_in_place_step_equals_the_reference_step_bit_for_bit(case, mode):
    """The module's in-place step (SpikingNeuron.step_into: state updated in place, output into a
    reused buffer) gives exactly the numbers of the pure *_step function, on random inputs with
    values at and around the thresholds, in both step modes, streaming or not, recording or not."""
    from sjunet.layers.buffers import streaming

    make, ref, init = _cases()[case]
    g = torch.Generator().manual_seed(7)
    xs = torch.randn(7, 2, 3, 6, 5, generator=g) * 1.5
    xs[1, 0, 0] = 0.25  # exactly a threshold of several ladders
    state = init(xs[0])
    want, count = [], 0
    for x in xs:
        o, state, n = ref(x, state)
        want.append(o)
        count = count + n
    for stream, record in [(True, False), (False, True)]:
        n = make()
        n.step_mode = mode
        set_recording(n, record)
        with torch.no_grad(), streaming(n, stream):
            got = [n(x).clone() for x in xs] if mode == "s" else list(torch.cat([n(xs[:3]).clone(), n(xs[3:]).clone()]))
        assert all(torch.equal(a, b) for a, b in zip(got, want)), (case, stream, record)
        v = state[0] if isinstance(state, tuple) else state
        assert torch.equal(n.v, v)
        if record:
            assert torch.equal(n.spike_count, count)
            assert torch.allclose(n.output_flow(), torch.stack(want).sum(0), atol=1e-4)


def test_in_place_step_over_cache_tiles_equals_the_reference():
    """A layer larger than a cache tile runs the eager kernel tile by tile: still the same numbers."""
    from sjunet.layers.buffers import streaming, tiles
    from sjunet.neurons import SignedMultiThresholdNode, signed_mt_step

    xs = torch.randn(2, 1, 16, 320, 320, generator=torch.Generator().manual_seed(3))
    assert len(tiles(xs[0].numel(), 4, 6)) > 1
    n, s = MultiThresholdNode((0.5, 0.25, 0.125, 0.0625), v_init=0.03), SignedMultiThresholdNode(v_init=0.1)
    with torch.no_grad(), streaming(n), streaming(s):
        got = [(n(x).clone(), s(x).clone()) for x in xs]
    v, w, ch = torch.full_like(xs[0], 0.03), torch.full_like(xs[0], 0.1), 0.0
    for x, (a, b) in zip(xs, got):
        o, v, _ = mt_step(x, v, n.thresholds)
        q, w, ch, _ = signed_mt_step(x, w, ch, s.thresholds, 0.01)
        assert torch.equal(a, o) and torch.equal(b, q)


def test_compiled_kernels_equal_the_eager_ones():
    """The optional compiled path (torch.compile, inductor) runs the same kernels fused: the same
    numbers; where no compiler is present it is refused with the reason and the neurons stay eager."""
    from sjunet.neurons.base import compile_status, set_compiled
    from sjunet.neurons import SignedMultiThresholdNode

    why = compile_status()
    if why is not None:
        n = MultiThresholdNode()
        assert set_compiled(n) == why and not n.compiled
        pytest.skip(why)
    xs = torch.randn(4, 2, 4, 9, 7, generator=torch.Generator().manual_seed(1)) * 2
    for make in (lambda: MultiThresholdNode(v_init=0.125), lambda: SignedMultiThresholdNode(negative_slope=0.1)):
        eager, fused = make(), make()
        assert set_compiled(fused) is None and fused.compiled
        with torch.no_grad():
            for x in xs:
                assert torch.equal(eager(x), fused(x))
        assert torch.equal(eager.v, fused.v)
