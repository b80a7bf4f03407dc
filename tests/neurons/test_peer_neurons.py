"""The paper's peer neurons (ML: multi-level firing, RS: real spike) behind the neuron interface:
hand-worked spike trains, step modes, flow identities, specs, re-parameterisation, end to end."""
import json

import pytest
import torch
from click.testing import CliRunner
from spikingjelly.activation_based import functional
from torch import nn

from sjunet.graph import stages_are_leaves
from sjunet.neurons import FACTORIES, NEURON_TYPES, set_recording
from sjunet.neurons.peers import (ML_REFERENCE, RS_REFERENCE, MultiLevelNode, RealSpikeNode, reparameterize_real_spikes,
                                  rs_factory)

Q = 6 / 11  # the converted ML spike value: 1 / (1/1 + 1/2 + 1/3)


def _run(n, xs):
    set_recording(n)
    return [n(x) for x in xs]


def test_registered_with_factories_and_cli():
    assert NEURON_TYPES["MultiLevelNode"] is MultiLevelNode and NEURON_TYPES["RealSpikeNode"] is RealSpikeNode
    assert FACTORIES["ml"][0] == (3.0, 2.0, 1.0) and FACTORIES["rs"][0] == (1.0,)
    ml = FACTORIES["ml"][1](FACTORIES["ml"][0], 0.5)("relu")
    assert ml.thresholds == (1.0, 2.0, 3.0) and ml.v_init == (0.5, 1.0, 1.5)  # half of every level
    assert isinstance(FACTORIES["rs"][1]((1.0,), 0.5)("relu"), RealSpikeNode)
    with pytest.raises(ValueError, match="exactly one threshold"):
        FACTORIES["rs"][1]((2.0, 1.0), 0.0)
    from sjunet.cli.main import main

    text = CliRunner().invoke(main, ["convert", "--help"]).output
    assert "ml" in text and "rs" in text


def test_ml_reference_unit_hand_worked():
    """The reference MLF unit: θ = 0.6, 1.6, 2.6, u ← 0.25·u·(1 − s) + x, o = Σ_k s_k."""
    n = MultiLevelNode(**ML_REFERENCE)
    # t1: h = 2.0 for all levels -> levels 1, 2 fire (2 ≥ 0.6, 1.6; < 2.6): o = 2, v = (0, 0, 2.0)
    # t2: h = 0.25 v + 0.5 = (0.5, 0.5, 1.0): none fires, v = h
    # t3: h = 0.25 v + 3 = (3.125, 3.125, 3.25): all three fire, o = 3, v = 0
    # t4: h = 0.1: none
    xs = [torch.tensor([v]) for v in (2.0, 0.5, 3.0, 0.1)]
    assert [float(o) for o in _run(n, xs)] == [2.0, 0.0, 3.0, 0.0]
    assert n.v[:, 0].tolist() == pytest.approx([0.1, 0.1, 0.1])
    assert float(n.spike_count) == 5 and float(n.event_count) == 2
    assert float(n.input_current()) == pytest.approx(5.6) and float(n.output_flow()) == 5.0


def test_ml_converted_hand_worked_and_level_identity():
    """Converted ML: IF levels θ = 1, 2, 3, reset by subtraction, each spike worth q = 6/11."""
    n = MultiLevelNode()
    assert n.amplitude == pytest.approx(Q) and n.quantum == pytest.approx(Q) and n.max_output == pytest.approx(3 * Q)
    # t1: h = 2.5 -> levels 1, 2 fire; v = (1.5, 0.5, 2.5)
    # t2: h = (2.0, 1.0, 3.0) -> levels 1, 3 fire; v = (1.0, 1.0, 0.0)
    # t3: h = (2.0, 2.0, 1.0) -> levels 1, 2 fire; v = (1.0, 0.0, 1.0)
    # t4: h = (0.5, -0.5, 0.5) -> none
    xs = [torch.tensor([v]) for v in (2.5, 0.5, 1.0, -0.5)]
    assert [float(o) for o in _run(n, xs)] == pytest.approx([2 * Q, 2 * Q, 2 * Q, 0.0])
    assert n.v[:, 0].tolist() == pytest.approx([0.5, -0.5, 0.5])
    assert float(n.spike_count) == 6 and float(n.event_count) == 3
    # reset by subtraction, per level: v_k,T = v_k,0 + I_in − θ_k N_k with N = (3, 2, 1)
    for v, th, count in zip(n.v[:, 0].tolist(), (1, 2, 3), (3, 2, 1)):
        assert v == pytest.approx(float(n.input_current()) - th * count)
    assert float(n.output_flow()) == pytest.approx(6 * Q)
    functional.reset_net(n)
    assert n.v == 0.0 and n.acc_output == 0.0 and n.acc_input == 0.0 and n.spike_count == 0.0


def test_ml_converted_rate_is_unit_gain_on_the_calibrated_range():
    x = torch.linspace(0.05, 1.0, 20)
    n = MultiLevelNode(v_init=(0.5, 1.0, 1.5))  # the factory's "half": rounding on every level
    set_recording(n)
    T = 400
    for _ in range(T):
        n(x)
    assert torch.allclose(n.output_flow() / T, x, atol=3 * Q / T)
    assert float(n.output_flow().max()) / T <= n.max_output


def test_rs_hand_worked_converted_and_reference():
    n = RealSpikeNode(channels=2)
    with torch.no_grad():
        n.amplitude.copy_(torch.tensor([0.5, 2.0]))
    # channel 0: h = 0.6 | 1.2 -> spike, v .2 | 1.7 -> spike, v .7 | 0.5       -> o = 0, .5, .5, 0
    # channel 1: h = 1.2 -> spike, v .2 | 0.5 | 0.5 | 1.4 -> spike, v .4       -> o = 2, 0, 0, 2
    xs = [torch.tensor([a, b]).view(1, 2, 1, 1) for a, b in ((0.6, 1.2), (0.6, 0.3), (1.5, 0.0), (-0.2, 0.9))]
    with torch.no_grad():
        outs = torch.stack([o.flatten() for o in _run(n, xs)])
    assert torch.allclose(outs, torch.tensor([[0, 2], [0.5, 0], [0.5, 0], [0, 2]]))
    assert n.v.flatten().tolist() == pytest.approx([0.5, 0.4])
    assert n.spike_count.flatten().tolist() == [2, 2] and n.event_count.flatten().tolist() == [2, 2]
    assert n.output_flow().flatten().tolist() == pytest.approx([1.0, 4.0])
    assert n.input_current().flatten().tolist() == pytest.approx([2.5, 2.4])
    assert n.quantum == 0.5 and n.max_output == 2.0
    # the reference LIF (fire at 0.5, u ← 0.25 u (1 − s) + x): h = .4 | .5 -> spike | .1 | 1.025 -> spike
    r = RealSpikeNode(**RS_REFERENCE)
    with torch.no_grad():
        outs = [float(o) for o in _run(r, [torch.full((1, 1, 1, 1), v) for v in (0.4, 0.4, 0.1, 1.0)])]
    assert outs == [0.0, 1.0, 0.0, 1.0] and float(r.v) == 0.0


def _neurons():
    return [MultiLevelNode(), MultiLevelNode(**ML_REFERENCE), RealSpikeNode(), RealSpikeNode(**RS_REFERENCE)]


@pytest.mark.parametrize("k", range(4))
def test_multi_step_equals_step_by_step_exactly(k):
    x = torch.randn(12, 3, 4, 5, 5, generator=torch.Generator().manual_seed(k)) * 2
    n = _neurons()[k]
    if isinstance(n, RealSpikeNode):
        n(x[0])  # size the amplitudes, then give them distinct values
        functional.reset_net(n)
        with torch.no_grad():
            n.amplitude.copy_(torch.tensor([0.5, 1.0, 1.5, -0.25]))
    n.step_mode = "m"
    set_recording(n)
    with torch.no_grad():
        out_m = n(x)
    state = [t.clone() for t in (n.v, n.acc_output, n.acc_input, n.spike_count, n.event_count)]
    functional.reset_net(n)
    n.step_mode = "s"
    with torch.no_grad():
        out_s = torch.stack([n(x[t]) for t in range(12)])
    assert torch.equal(out_m, out_s)
    for a, b in zip(state, (n.v, n.acc_output, n.acc_input, n.spike_count, n.event_count)):
        assert torch.equal(a, b)


def test_flow_identities_and_recording_flags():
    x = torch.randn(15, 2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    ml = MultiLevelNode(v_init=(0.5, 1.0, 1.5), step_mode="m")
    set_recording(ml)
    out = ml(x)
    assert torch.allclose(ml.input_current(), x.sum(0), atol=1e-5)
    assert torch.allclose(ml.output_flow(), out.sum(0), atol=1e-5)
    # every level obeys v_k,T = v_k,0 + I_in − θ_k N_k with N_k a whole number of spikes, and q Σ_k N_k = I_out
    counts = [(v0 + ml.input_current() - v) / th for v, th, v0 in zip(ml.v, ml.thresholds, ml.v_init)]
    for c in counts:
        assert torch.allclose(c, c.round(), atol=1e-4) and float(c.min()) > -1e-4
    assert torch.allclose(Q * sum(c.round() for c in counts), ml.output_flow(), atol=1e-4)
    assert torch.equal(sum(c.round() for c in counts), ml.spike_count)

    rs = RealSpikeNode(v_init=0.5, step_mode="m")
    set_recording(rs)
    with torch.no_grad():
        out = rs(x)
        assert rs.amplitude.shape == (3,) and rs.channels == 3  # sized by the first input
        assert torch.allclose(rs.v, 0.5 + rs.input_current() - rs.spike_count, atol=1e-5)  # θ = 1
        assert torch.equal(rs.output_flow(), out.sum(0)) and torch.equal(rs.output_flow(), rs.spike_count)
    # recording off: nothing accumulates, and the flow getters say so
    for n in (MultiLevelNode(), RealSpikeNode()):
        n(x[0])
        assert n.acc_output == 0.0 and n.spike_count == 0.0 and n.event_count == 0.0
        with pytest.raises(RuntimeError, match="recording"):
            n.output_flow()
        with pytest.raises(RuntimeError, match="recording"):
            n.input_current()


def test_spec_round_trips_through_neuron_types():
    sized = RealSpikeNode(decay=0.5, reset="zero", v_init=0.1)
    sized(torch.randn(1, 3, 2, 2))
    with torch.no_grad():
        sized.amplitude.copy_(torch.tensor([0.3, -1.0, 2.0]))
    for n in (MultiLevelNode(), MultiLevelNode(**ML_REFERENCE), MultiLevelNode((0.5, 2.0), v_init=(0.1, 0.2)),
              RealSpikeNode(), RealSpikeNode(channels=4, threshold=0.5), sized):
        spec = json.loads(json.dumps(n.spec()))
        m = NEURON_TYPES[type(n).__name__](**spec)
        assert m.spec() == n.spec()
        m.load_state_dict(n.state_dict())
        assert m.max_output == n.max_output and m.quantum == n.quantum
    # an SNN file's graph record is written at conversion (channels unknown): loading sizes the amplitudes
    lazy = RealSpikeNode(decay=0.5, reset="zero", v_init=0.1)
    lazy.load_state_dict(sized.state_dict())
    assert lazy.channels == 3 and torch.equal(lazy.amplitude, sized.amplitude)
    with pytest.raises(ValueError):
        MultiLevelNode((2.0, 1.0))  # levels go lowest first
    with pytest.raises(ValueError):
        RealSpikeNode(decay=0.0)


def test_surrogate_gradients_per_level_and_amplitudes_learn():
    ml = MultiLevelNode()
    ml.surrogate_gradient = True
    x = torch.tensor([0.3, 1.2, 2.4, 1.6], requires_grad=True)
    o = ml(x)
    assert o.tolist() == pytest.approx([0, Q, 2 * Q, Q])  # forward values unchanged
    o.sum().backward()
    # Rect(1): ∂s_k/∂h = [|h − θ_k| < 1/2]: 0.3 none, 1.2 level 1, 2.4 level 2, 1.6 level 2
    assert x.grad.tolist() == pytest.approx([0, Q, Q, Q])
    rs = RealSpikeNode(channels=2)
    rs.surrogate_gradient = True
    rs.step_mode = "m"
    y = rs(torch.tensor([[1.5, 0.2], [0.9, 0.2], [0.1, 0.7]]).view(3, 1, 2, 1, 1))
    y.sum().backward()
    # channel 0: h = 1.5 -> spike, 1.4 -> spike, 0.5; channel 1: h = 0.2, 0.4, 1.1 -> spike
    assert rs.amplitude.grad.tolist() == [2.0, 1.0]  # ∂Σ(a ⊙ s)/∂a = spikes per channel


class _ConvRSChain(nn.Module):
    """conv → RS → grouped conv → RS → transposed conv (both RS lazily sized)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.rs1 = RealSpikeNode(v_init=0.5)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.rs2 = RealSpikeNode(v_init=0.5)
        self.up = nn.ConvTranspose2d(6, 3, 2, stride=2)

    def forward(self, x):
        return self.up(self.rs2(self.conv2(self.rs1(self.conv1(x)))))


def _simulate(gm, x, T):
    functional.reset_net(gm)
    with torch.no_grad():
        return torch.stack([gm(x) for _ in range(T)])


def test_reparameterization_is_exact_and_leaves_binary_spikes():
    torch.manual_seed(0)
    with stages_are_leaves():
        gm = torch.fx.symbolic_trace(_ConvRSChain()).double()
    x = torch.rand(2, 2, 6, 6, dtype=torch.float64) * 2
    _simulate(gm, x, 1)  # sizes the amplitudes
    with torch.no_grad():
        gm.rs1.amplitude.copy_(torch.tensor([0.5, 1.7, -0.8, 2.2]))
        gm.rs2.amplitude.copy_(torch.linspace(0.3, 1.9, 6))
    before = _simulate(gm, x, 6)
    assert before.abs().sum() > 0
    assert reparameterize_real_spikes(gm) == ["rs1", "rs2"]
    assert torch.equal(gm.rs1.amplitude, torch.ones(4, dtype=torch.float64))
    assert torch.equal(gm.rs2.amplitude, torch.ones(6, dtype=torch.float64))
    spikes = []
    h = gm.rs2.register_forward_hook(lambda m, i, o: spikes.append(o))
    after = _simulate(gm, x, 6)
    h.remove()
    assert torch.allclose(before, after, rtol=1e-12, atol=1e-12)
    assert all(set(s.unique().tolist()) <= {0.0, 1.0} for s in spikes) and any(s.sum() > 0 for s in spikes)


def test_reparameterization_refuses_a_non_convolution_user():
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.rs = nn.Conv2d(1, 2, 1), RealSpikeNode()
            self.conv2 = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            s = self.rs(self.conv1(x))
            return torch.cat([self.conv2(s), s], dim=1)

    with stages_are_leaves():
        gm = torch.fx.symbolic_trace(Branch())
    w = gm.conv2.weight.detach().clone()
    with pytest.raises(ValueError, match="'rs'.*cat"):
        reparameterize_real_spikes(gm)
    assert torch.equal(gm.conv2.weight, w)


@pytest.fixture(scope="module")
def tiny_unet():
    from sjunet.calibration import calibrate
    from sjunet.data import get_dataset
    from sjunet.models import UNet

    torch.manual_seed(0)
    unet = UNet(in_channels=1, out_channels=2, base_width=4, depth=2).eval()
    train = get_dataset("demo-seg", None, "train", size=32, num_items=8)
    stats = calibrate(unet, [train[i][0].unsqueeze(0) for i in range(2)], progress=False)
    return unet, stats, torch.stack([train[i][0] for i in range(2)])


@pytest.mark.parametrize("name,cls", [("ml", MultiLevelNode), ("rs", RealSpikeNode)])  # by name / by factory
def test_convert_save_load_and_finetune_end_to_end(tmp_path, tiny_unet, name, cls):
    from sjunet.conversion.recipe import convert, load_snn, save_snn
    from sjunet.snn.simulation import simulate
    from sjunet.training.finetuning import FinetuneOptions, finetune

    unet, stats, x = tiny_unet
    if name == "ml":
        snn = convert(unet, stats, neuron="ml")
    else:
        snn = convert(unet, stats, neuron_factory=rs_factory(v_init=0.5))
    neurons = [m for m in snn.modules() if isinstance(m, cls)]
    assert neurons and not any(isinstance(m, (MultiLevelNode, RealSpikeNode)) and not isinstance(m, cls)
                               for m in snn.modules())
    with torch.no_grad():
        out = simulate(snn, x, [2, 4])
        assert all(torch.isfinite(o).all() for o in out.values())
        if name == "rs":  # converted RS = IF: amplitudes 1, sized by the simulation
            assert all(m.channels and torch.equal(m.amplitude, torch.ones(m.channels)) for m in neurons)
            with pytest.raises(ValueError, match="cannot re-parameterise"):  # U-Net skips feed cat / pooling
                reparameterize_real_spikes(snn)
        snn.record.task = {"kind": "segmentation"}
        path = save_snn(snn, tmp_path / "snn.safetensors")
        snn2, rec = load_snn(path)
        assert any(v["type"] == cls.__name__ for v in rec["graph"]["modules"].values())
        out2 = simulate(snn2, x, [2, 4])
    for t in (2, 4):
        assert torch.equal(out[t], out2[t])
    from sjunet.evaluation.energy import count_energy

    e = count_energy(snn2, unet, [x], 2)  # spike_count / event_count of the peers feed the energy report
    assert 0 < e.events <= e.spikes and e.sops > 0
    ft = tmp_path / "ft.safetensors"
    _, r = finetune(load_snn(path)[0], FinetuneOptions(dataset="demo-seg", dataset_options={"size": 32, "num_items": 8},
                                 output=str(ft), T=2, epochs=1, batch_size=4, lr=1e-4, max_iters=2, val_limit=2),
                 progress=False)
    assert ft.is_file() and r["output"] == str(ft)
    snn3, rec3 = load_snn(ft)
    assert rec3["finetune"] is not None and any(isinstance(m, cls) for m in snn3.modules())


def test_real_spike_amplitudes_sized_after_a_state_was_saved_still_load_it():
    """A state saved before the first input (one layer-wise amplitude) loads into a sized neuron:
    the value goes to every channel (the lr trials restore such a snapshot after running)."""
    from sjunet.neurons.peers import RealSpikeNode

    n = RealSpikeNode()
    start = {k: v.clone() for k, v in n.state_dict().items()}
    n(torch.rand(2, 3, 4, 4))
    assert n.amplitude.shape == (3,)
    with torch.no_grad():
        n.amplitude.mul_(2)
    n.load_state_dict(start)
    assert n.amplitude.shape == (3,) and torch.equal(n.amplitude.detach(), torch.ones(3))
