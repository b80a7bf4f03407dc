"""Σ-Δ neurons (spec §15, issue 26): rate → f(mean input) for every f of the table, products and
group functions, with error O(θ_N / T); T = 1 is the ANN quantised to the ladder.

Everything here is measured on the neuron alone (no conversion): the bound |Y_T − S_T| ≤ θ_N/2 of
the module docstring for fluctuating inputs, against literal re-implementations of the docstring's
equations, and the numerics of float32 over long T."""
import math

import pytest
import torch
from spikingjelly.activation_based import functional

from sjunet.neurons import MultiThresholdNode
from sjunet.neurons.sigma_delta import SigmaDeltaNode, SigmaDeltaProduct, sigma_delta_step
from sjunet.neurons.sigma_delta_functions import FUNCTIONS, check_equation, check_params, product_macs

PAPER = (2.0, 1.0, 0.5, 0.25)
THEOREM = (0.5, 0.25, 0.125, 0.0625)
#: parameters that make each entry's test non-trivial (defaults otherwise)
PARAMS = {"leaky_relu": {"negative_slope": 0.1}, "elu": {"alpha": 1.3}, "celu": {"alpha": 0.7},
          "gelu": {"approximate": "tanh"}, "softplus": {"beta": 2.0, "threshold": 5.0}, "softmax": {"dim": -1},
          "layer_norm": {"dims": 1, "features": 6}, "group_norm": {"groups": 2, "features": 6}}


def _node(name, thresholds=PAPER, v_init=None, in_scale=2.0, x=None, **kw):
    """A neuron for ``name`` whose λ_out is the 99.9th percentile of |f| on the ANN values of ``x``
    (calibration, as the recipe does)."""
    n = SigmaDeltaNode(name, PARAMS.get(name), thresholds, thresholds[-1] / 2 if v_init is None else v_init,
                       in_scale=in_scale, **kw)
    if n.weight is not None:  # a norm with a non-trivial affine
        g = torch.Generator().manual_seed(1)
        n.weight.copy_(0.5 + torch.rand(n.weight.shape, generator=g))
        n.bias.copy_(torch.randn(n.bias.shape, generator=g) * 0.3)
    if x is not None:
        y = n.f(x * n._in(x))
        n.out_scale = max(float(torch.quantile(y.abs().flatten(), 0.999)), 1e-3)
    return n


def _inputs(name, T, seed=0, noise=0.5):
    """A [T, B, 6] current: a per-element mean in [-1, 1] plus zero-mean noise that makes the partial
    sums wander (channels: 6, so group_norm has 2 groups of 3 and layer_norm 6 features)."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.rand(8, 6, generator=g) * 2 - 1
    return mean + noise * torch.randn(T, 8, 6, generator=g), mean


def _run(node, xs, mode="s", chunk=4):
    functional.reset_net(node)
    node.step_mode = mode
    if mode == "s":
        out = torch.stack([node(*(x[t] for x in xs)) for t in range(xs[0].shape[0])])
    else:
        out = torch.cat([node(*(x[i:i + chunk] for x in xs)) for i in range(0, xs[0].shape[0], chunk)])
    return out


# ---------------------------------------------------------------------------- the equations

def _reference(target, T, thresholds, v0):
    """The docstring's equations literally, on float64, with the ladder as comparison loops:
    V = Y_t − S + V_0; positive spikes s_i = [V ≥ θ_i], negative s_i = [θ_N − V > θ_i] (mirrored)."""
    lo = thresholds[-1]
    sent, outs = None, []
    for t in range(1, T + 1):
        y = target(t)
        sent = torch.zeros_like(y) if sent is None else sent
        v = y - sent + v0
        m = torch.zeros_like(v)
        for th in thresholds:
            s = (v - m >= th).double()
            m = m + th * s
        for th in thresholds:
            s = (lo - (v - m) > th).double()
            m = m - th * s
        sent = sent + m
        outs.append(m)
    return torch.stack(outs)


@pytest.mark.parametrize("name", ["silu", "gelu", "softmax", "layer_norm", "elu"])
@pytest.mark.parametrize("thresholds", [PAPER, (1.5, 1.0, 0.3)])
def test_step_matches_the_equations(name, thresholds):
    """The module (halving: the fused floor quantiser; other ladders: its loop) against the docstring
    written out, for fluctuating inputs, V_0 = θ_N/2 and a per-element mean."""
    T = 24
    x, _ = _inputs(name, T, seed=3)
    node = _node(name, thresholds, x=x[0])
    out = _run(node, [x]).double()
    acc = torch.cumsum(x.double(), 0)

    def target(t):
        w = None if node.weight is None else node.weight.double()
        b = None if node.bias is None else node.bias.double()
        return t * FUNCTIONS[name].fn(acc[t - 1] * node.in_scale / t, node.params, w, b) / node.out_scale

    ref = _reference(target, T, thresholds, thresholds[-1] / 2)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_step_function_by_hand():
    """sigma_delta_step on the paper ladder, V_0 = 0: Y = 0.8 -> V = 0.8 -> 0.75 (0.5 + 0.25 fire);
    then Y = 0.3 (the mean fell) -> V = 0.3 − 0.75 = −0.45 -> the mirrored ladder takes back
    0.5 (θ_N − V = 0.7 > 0.5; then V = 0.05: 0.25 − 0.05 = 0.2 > 0.25 is false): s = −0.5, S = 0.25."""
    s, sent, n = sigma_delta_step(torch.tensor([0.8]), 0.0, PAPER, 0.0, count_spikes=True)
    assert s.item() == 0.75 and sent.item() == 0.75 and n.item() == 2
    s, sent, n = sigma_delta_step(torch.tensor([0.3]), sent, PAPER, 0.0, count_spikes=True)
    assert s.item() == -0.5 and sent.item() == 0.25 and n.item() == 1


# ---------------------------------------------------------------------------- convergence

@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_rate_tends_to_f_of_the_mean_input(name):
    """For every f of the table: after T steps of a fluctuating input, |Y_T − S_T| ≤ θ_N/2, i.e. the
    rate S_T/T is f(A_T/T)/λ_out within θ_N/(2T) — measured at T = 1 … 256 (so the error at 256 is
    at most 1/16 of the bound at 16)."""
    T = 256
    x, _ = _inputs(name, T)
    node = _node(name, x=x.mean(0))
    node.step_mode = "m"
    functional.reset_net(node)
    lo = PAPER[-1]
    t, errors = 0, {}
    for stop in (1, 4, 16, 64, 256):
        node(x[t:stop])
        t = stop
        mean = x[:stop].double().sum(0) / stop
        w = None if node.weight is None else node.weight.double()
        b = None if node.bias is None else node.bias.double()
        want = FUNCTIONS[name].fn(mean * node.in_scale, node.params, w, b) / node.out_scale
        errors[stop] = float((node.output_flow().double() / stop - want).abs().max())
        assert errors[stop] <= lo / (2 * stop) * (1 + 1e-3) + 1e-6, (stop, errors)
    assert errors[256] <= lo / 32  # measured: the error at 256 is within 1/16 of the bound at 16


@pytest.mark.parametrize("name", ["silu", "sigmoid", "softmax", "layer_norm", "tanh"])
@pytest.mark.parametrize("v_init,rounding", [(0.0625 / 2, torch.round), (0.0, torch.floor)])
def test_one_step_is_the_ann_quantised_to_the_ladder(name, v_init, rounding):
    """At T = 1 the output is f(x)/λ_out quantised to the theorem ladder: rounded with V_0 = θ_N/2,
    floored with V_0 = 0, capped at ±Σθ (round: half-up, as floor(y/θ + 1/2))."""
    x, _ = _inputs(name, 1, seed=5)
    node = _node(name, THEOREM, v_init=v_init, x=x[0])
    out = _run(node, [x])[0]
    y = node.activation(x[0]) / THEOREM[-1]
    k = torch.floor(y + 0.5) if rounding is torch.round else torch.floor(y)
    want = k.clamp(-15, 15) * THEOREM[-1]
    assert torch.equal(out, want)


def test_relu_entry_is_the_mt_neuron_with_a_correction():
    """f = ReLU (homogeneous: Y_t = relu(A_t)): while the input sums stay non-negative it fires as the MT
    neuron on the same ladder and V_0; when the mean turns negative it takes its spikes back (the MT
    neuron cannot: its flow keeps what it sent)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 4, 5, generator=g) * 1.5  # non-negative currents
    sd = SigmaDeltaNode("relu", thresholds=PAPER, v_init=0.125)
    mt = MultiThresholdNode(PAPER, v_init=0.125)
    assert torch.equal(_run(sd, [x]), _run(mt, [x]))
    down = torch.cat([torch.full((5, 4, 5), 1.0), torch.full((15, 4, 5), -1.0)])  # mean −0.5 after 20 steps
    _run(sd, [down])
    assert float(sd.output_flow().abs().max()) <= 0.125  # relu(−10) = 0, within θ_N/2
    mt.record = True
    _run(mt, [down])
    assert float(mt.output_flow().min()) >= 4.75  # what it sent in the first steps stays


# ---------------------------------------------------------------------------- products

def _product_case(op):
    g = torch.Generator().manual_seed(2)
    if op == "mul":  # squeeze-excitation: [B, C, H, W] * [B, C, 1, 1]
        shapes, eq = ((2, 3, 4, 4), (2, 3, 1, 1)), None
    elif op == "matmul":  # attention: [B, h, N, d] @ [B, h, d, N]
        shapes, eq = ((2, 2, 5, 3), (2, 2, 3, 5)), None
    else:
        shapes, eq = ((2, 2, 5, 3), (2, 2, 5, 3)), "bhqd,bhkd->bhqk"
    means = [torch.rand(s, generator=g) for s in shapes]
    return means, eq, g


@pytest.mark.parametrize("op", ["mul", "matmul", "einsum"])
def test_product_rate_tends_to_the_product_of_mean_inputs(op):
    """A product neuron's S_T is g(λ_a A_T/T, λ_b B_T/T)·T/λ_out within θ_N/2 for fluctuating inputs,
    so its rate is the product of the two mean inputs within θ_N/(2T); units undone on both inputs."""
    means, eq, g = _product_case(op)
    T = 128
    xs = [m + 0.4 * torch.randn(T, *m.shape, generator=g) for m in means]
    node = SigmaDeltaProduct(op, eq, PAPER, 0.125, a_scale=1.5, b_scale=0.5)
    ann = node.g(means[0] * 1.5, means[1] * 0.5)
    node.out_scale = float(ann.abs().max())
    node.step_mode = "m"
    functional.reset_net(node)
    for stop, t in ((4, 0), (32, 4), (128, 32)):
        node(*(x[t:stop] for x in xs))
        a, b = (x[:stop].double().sum(0) / stop for x in xs)
        want = node.g(a * 1.5, b * 0.5) / node.out_scale
        err = float((node.output_flow().double() / stop - want).abs().max())
        assert err <= 0.25 / (2 * stop) + 1e-6, (stop, err)


@pytest.mark.parametrize("op", ["mul", "matmul", "einsum"])
def test_modes_agree_and_reset(op):
    """Single-step and multi-step (uneven chunks) give the same spikes and states; a reset restarts
    the clock and the sums."""
    means, eq, g = _product_case(op)
    xs = [m + 0.3 * torch.randn(7, *m.shape, generator=g) for m in means]
    node = SigmaDeltaProduct(op, eq, THEOREM, 0.03125, out_scale=0.8)
    one = _run(node, xs, "s")
    state = (node.steps, node.output_flow().clone(), *[t.clone() for t in node.flow_inputs()])
    many = _run(node, xs, "m", chunk=3)
    assert torch.equal(one, many)
    assert node.steps == state[0] == 7 and torch.equal(node.output_flow(), state[1])
    assert all(torch.allclose(a, b) for a, b in zip(node.flow_inputs(), state[2:]))
    functional.reset_net(node)
    assert node.steps == 0 and isinstance(node.sent, float)


@pytest.mark.parametrize("name", ["gelu", "softmax", "group_norm"])
def test_activation_modes_agree(name):
    x, _ = _inputs(name, 9, seed=4)
    node = _node(name, THEOREM, x=x[0], in_scale=torch.linspace(0.5, 2.0, 6)) if name != "group_norm" else \
        _node(name, THEOREM, x=x[0])
    x4 = x.unsqueeze(-1) if name == "group_norm" else x  # group norm: [B, C, L]
    assert torch.equal(_run(node, [x4], "s"), _run(node, [x4], "m", chunk=4))


# ---------------------------------------------------------------------------- numerics, flow, counts

def test_float32_over_long_runs():
    """T = 4096, fluctuating inputs: the float32 neuron against the same neuron on float64 inputs. The
    float32 input sums' error, over T, is a hundredth of the quantiser's θ_N/T or less (measured:
    3e-8 against 6e-5), so the spike counts agree except where a rounding boundary falls within
    float32's resolution (then by one quantum), and S stays within θ_N/2 of the exact target (up to that error)."""
    T = 4096
    x, _ = _inputs("silu", T, seed=7, noise=1.0)
    node = _node("silu", x=x.mean(0))
    node.step_mode = "m"
    functional.reset_net(node)
    node(x)
    s32, a32 = node.output_flow().double(), node.input_current().double()
    functional.reset_net(node)
    node(x.double())
    s64, a64 = node.output_flow(), node.input_current()
    lo = PAPER[-1]
    assert float((a32 - a64).abs().max()) / T <= 0.01 * lo / T
    assert float((s32 - s64).abs().max()) <= lo and int((s32 != s64).sum()) <= 2
    exact = T * torch.nn.functional.silu(a64 * node.in_scale / T) / node.out_scale
    assert float((s32 - exact).abs().max()) <= lo / 2 + 0.01 * lo  # the bound, up to the sums' float32 error


def test_flow_gradient_is_f_prime_at_the_mean_input():
    """flow_vjp of an activation neuron: grad · f'(λ_in A/T) · λ_in / λ_out; of a product: each input
    gets the other's mean times the units (g bilinear)."""
    node = SigmaDeltaNode("gelu", thresholds=PAPER, in_scale=2.0, out_scale=0.5)
    a = torch.randn(3, 4) * 5
    grad = torch.randn(3, 4)
    (got,) = node.flow_vjp(grad, (a,), 10)
    z = (a * 2.0 / 10).requires_grad_(True)
    (fprime,) = torch.autograd.grad(torch.nn.functional.gelu(z).sum(), z)
    assert torch.allclose(got, grad * fprime * 2.0 / 0.5, atol=1e-6)
    prod = SigmaDeltaProduct("mul", thresholds=PAPER, a_scale=2.0, b_scale=3.0, out_scale=4.0)
    A, B = torch.randn(3, 4), torch.randn(3, 4)
    ga, gb = prod.flow_vjp(grad, (A, B), 8)
    assert torch.allclose(ga, grad * 2.0 * 3.0 * B / (8 * 4.0), atol=1e-6)
    assert torch.allclose(gb, grad * 2.0 * 3.0 * A / (8 * 4.0), atol=1e-6)


def test_spike_and_event_counts():
    """spike_count = threshold crossings of both signs (popcount of |k| on a halving ladder), events =
    non-zero outputs; both only with record_spikes."""
    x, _ = _inputs("tanh", 12, seed=8)
    node = _node("tanh", x=x[0])
    node.record_spikes = True
    out = _run(node, [x])
    k = (out / PAPER[-1]).round().abs().long()
    bits = sum(((k >> i) & 1) for i in range(4)).sum(0).float()
    assert torch.equal(node.spike_count, bits)
    assert torch.equal(node.event_count, (out != 0).float().sum(0))


def test_a_chain_of_neurons_converges_with_T():
    """x → SiLU neuron → (a weighted sum) → sigmoid neuron, and the product of the two (a gate):
    the decoded rate's error against the ANN silu(x)·sigmoid(w·silu(x)) falls with T — measured:
    error at T = 256 at most half the error at T = 16 (both well above float noise)."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(64, 8, generator=g)
    w = torch.randn(8, 8, generator=g) / 3
    h = torch.nn.functional.silu(x)
    ann = h * torch.sigmoid(h @ w)
    lam1, lam2 = float(h.abs().max()), 1.0
    lam3 = float(ann.abs().max())
    n1 = SigmaDeltaNode("silu", thresholds=THEOREM, v_init=1 / 32, out_scale=lam1)
    n2 = SigmaDeltaNode("sigmoid", thresholds=THEOREM, v_init=1 / 32, in_scale=lam1, out_scale=lam2)
    n3 = SigmaDeltaProduct("mul", thresholds=THEOREM, v_init=1 / 32, a_scale=lam1, b_scale=lam2, out_scale=lam3)
    errors = {}
    for T in (16, 256):
        for n in (n1, n2, n3):
            functional.reset_net(n)
        acc = 0
        for _ in range(T):
            s1 = n1(x)
            acc = acc + n3(s1, n2(s1 @ w))
        errors[T] = float((acc / T * lam3 - ann).abs().mean())
    assert errors[256] <= errors[16] / 2 and errors[16] > 1e-4, errors


# ---------------------------------------------------------------------------- data, not code

def test_spec_rebuilds_the_neuron():
    """A neuron rebuilt from spec() and its state dict (what an SNN file holds) runs identically."""
    x, _ = _inputs("layer_norm", 6, seed=11)
    node = _node("layer_norm", x=x[0], in_scale=torch.linspace(0.5, 1.5, 6))
    again = SigmaDeltaNode(**node.spec())
    again.load_state_dict(node.state_dict())
    assert torch.equal(_run(node, [x]), _run(again, [x]))
    prod = SigmaDeltaProduct("einsum", "bqd,bkd->bqk", PAPER, 0.125, 1.5, 0.5, 2.0)
    assert SigmaDeltaProduct(**prod.spec()).spec() == prod.spec()


@pytest.mark.parametrize("name,params,match", [
    ("gelu", {"approximate": "erf"}, "must be one of"), ("softmax", {"dim": 1.0}, "integer"),
    ("elu", {"alpha": float("nan")}, "number"), ("silu", {"beta": 1}, "takes no parameter"),
    ("os.system", None, "unknown"), ("layer_norm", {"eps": -1}, r"\[0, 1\]")])
def test_parameters_are_checked(name, params, match):
    with pytest.raises(ValueError, match=match):
        check_params(name, params)


@pytest.mark.parametrize("eq", ["ab,bc", "ab,bc,cd->ad", "a...b,bc->ac", "ab,bc->az", "ab,bc->aa", 3])
def test_einsum_equations_are_checked(eq):
    with pytest.raises(ValueError):
        check_equation(eq)


def test_product_macs():
    assert product_macs("mul", (2, 3, 4, 4), (2, 3, 1, 1)) == 96
    assert product_macs("matmul", (2, 4, 5, 3), (2, 4, 3, 5)) == 2 * 4 * 5 * 3 * 5
    assert product_macs("einsum", (2, 4, 5, 3), (2, 4, 7, 3), "bhqd,bhkd->bhqk") == 2 * 4 * 5 * 3 * 7
    assert math.prod((2, 3)) == SigmaDeltaNode("silu").evaluations((2, 3))
