"""Spiking-flow fine-tuning (Algorithm 1): hand-derived gradients, currents, improvement."""
import pytest
import torch
from torch import nn

from sjunet.calibration import calibrate
from sjunet.conversion.recipe import convert
from sjunet.snn.simulation import simulate
from sjunet.tasks import DenoisingTask, SegmentationTask
from sjunet.training.flow import FlowPass, bptt_forward, flow_forward, record_flow

from helpers import SkewedSkipNet, batches


class Chain(nn.Module):
    """x → conv1 (1x1) → ReLU → head (1x1): small enough to derive Algorithm 1 by hand."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 1)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv1.weight.fill_(1.3)
            self.conv1.bias.fill_(-0.2)
            self.head.weight.fill_(0.7)
            self.head.bias.fill_(0.1)

    def forward(self, x):
        return self.head(self.relu(self.conv1(x)))


def test_gradients_equal_hand_derivation():
    net = Chain().eval()
    x = torch.tensor([[[[0.05, 0.4], [0.9, 0.0]]]])
    target = torch.tensor([[[[0.3, 0.1], [0.8, 0.2]]]])
    stats = calibrate(net, [x], progress=False)
    snn = convert(net, stats)
    T = 6
    rec = record_flow(snn, x, T, keep_inputs=True)
    out = flow_forward(snn, x, T) / T  # Î_in^L / T
    loss = ((out - target) ** 2).sum()
    loss.backward()
    # by hand (Algorithm 1): I_in1 = T (w1 x + b1), I_out1 measured, I_L = w2 I_out1 + T b2
    w1, b1 = snn.get_submodule("conv1").layer.weight.item(), snn.get_submodule("conv1").layer.bias.item()
    w2 = snn.get_submodule("head").weight.item()
    i_in1 = T * (w1 * x + b1)
    i_out1 = rec.outputs["relu"]
    assert torch.allclose(rec.inputs["relu"], i_in1, atol=1e-5)
    p = (i_in1 > 0).float()
    i_l = w2 * i_out1 + T * snn.get_submodule("head").bias.item()
    g_out = 2 * (i_l / T - target) / T  # dL/dI_L
    assert torch.allclose(out * T, i_l, atol=1e-5)
    expect = {
        "head.weight": (g_out * i_out1).sum(),
        "head.bias": (g_out * T).sum(),
        "conv1.layer.weight": (g_out * w2 * p * T * x).sum(),
        "conv1.layer.bias": (g_out * w2 * p * T).sum(),
    }
    grads = {n: prm.grad for n, prm in snn.named_parameters()}
    for name, g in expect.items():
        assert grads[name].item() == pytest.approx(g.item(), rel=1e-5, abs=1e-7), name


def test_flow_pass_reproduces_recorded_currents_and_output():
    net = SkewedSkipNet().eval()
    data = batches(3)
    snn = convert(net, calibrate(net, data, progress=False))
    x, T = data[0], 12
    rec = record_flow(snn, x, T, keep_inputs=True)
    from spikingjelly.activation_based import functional
    functional.set_step_mode(snn, "s")
    fp = FlowPass(snn, rec, keep_currents=True)
    out = fp.run(x)
    assert set(fp.currents) == set(rec.inputs)
    for name, cur in fp.currents.items():
        assert torch.allclose(cur, rec.inputs[name], atol=1e-4, rtol=1e-5), name
    sim = simulate(snn, x, T)[T]
    assert torch.allclose(out / T, sim, atol=1e-5)


def test_bptt_baseline_forward_matches_simulation_and_has_gradients():
    net = SkewedSkipNet().eval()
    data = batches(2)
    snn = convert(net, calibrate(net, data, progress=False))
    x, T = data[0], 5
    out = bptt_forward(snn, x, T) / T
    assert torch.allclose(out.detach(), simulate(snn, x, T)[T], atol=1e-5)
    out.sum().backward()
    assert snn.get_submodule("conv3").weight.grad.abs().sum() > 0


def test_loss_choices():
    seg, den = SegmentationTask(2), DenoisingTask(1)
    out = torch.randn(2, 2, 4, 4)
    y = torch.randint(0, 2, (2, 4, 4))
    assert seg.loss(out, y) > 0
    assert den.loss(out[:, :1], out[:, :1]) == 0
