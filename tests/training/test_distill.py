"""Distillation during fine-tuning: the teacher rebuilt from the SNN is the ANN; the losses move
the SNN towards it; T = 1 works end to end."""
import pytest
import torch

from sjunet.calibration import calibrate
from sjunet.conversion.recipe import convert
from sjunet.evaluation.energy import count_energy
from sjunet.snn.simulation import simulate
from sjunet.tasks import DenoisingTask, SegmentationTask
from sjunet.training.distill import Teacher, distill_loss, layer_loss
from sjunet.training.flow import LossWeights, finetune_loss

from helpers import Relu6Net, ResidualNet, SkewedSkipNet, batches, init_random


@pytest.mark.parametrize("net", [SkewedSkipNet(), init_random(ResidualNet(), 1), init_random(Relu6Net(cap=False), 2)])
def test_teacher_is_the_ann(net):
    net = net.eval()
    data = batches(2)
    stats = calibrate(net, data, progress=False)
    snn = convert(net, stats)
    x = data[0]
    out, acts = Teacher(snn)(x)
    assert torch.allclose(out, net(x).detach() if not isinstance(net, Relu6Net) else torch.logit(net(x).detach()),
                          atol=1e-4, rtol=1e-4)
    lam = {p: v["lambda"] for p, v in snn.record.conversion.neurons.items()}
    assert set(acts) == set(lam)
    # a^l = the ANN's ReLU output / λ: check one layer through a hook on the ANN
    if isinstance(net, SkewedSkipNet):
        seen = {}
        h = net.relu3.register_forward_hook(lambda m, i, o: seen.setdefault("r", o.detach()))
        net(x)
        h.remove()
        assert torch.allclose(acts["relu3"] * lam["relu3"], seen["r"], atol=1e-5)


@pytest.mark.parametrize("loss,layer", [("distill", 0.0), ("both", 1.0)])
def test_distillation_pulls_a_perturbed_snn_back_to_the_ann(loss, layer):
    """Start from an SNN whose weights were disturbed; fine-tuning on the distillation loss alone
    (through the flow pass) brings its output back towards the teacher's."""
    net = SkewedSkipNet().eval()
    data = batches(3)
    snn = convert(net, calibrate(net, data, progress=False))
    teacher = Teacher(snn)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in snn.parameters():
            p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g))
    x, T = torch.cat(data), 8
    task, w = SegmentationTask(2), LossWeights.of(loss, layer=layer)
    y = net(x).argmax(1).detach()

    def gap():
        return float(distill_loss("segmentation", simulate(snn, x, T, post=False)[T], teacher(x)[0]))

    start = gap()
    opt = torch.optim.Adam(snn.parameters(), lr=3e-3)
    for _ in range(25):
        opt.zero_grad()
        finetune_loss(snn, task, x, y, T, teacher=teacher, weights=w).backward()
        opt.step()
    assert gap() < 0.5 * start


def test_losses():
    t = torch.randn(2, 3, 4, 4)
    assert float(distill_loss("segmentation", t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss("segmentation", t + 1.0, t)) == pytest.approx(0.0, abs=1e-6)  # softmax-invariant
    assert float(distill_loss("segmentation", -t, t)) > 0
    assert float(distill_loss("denoising", t + 0.5, t)) == pytest.approx(0.5)
    assert float(layer_loss({"a": t}, {"a": t + 2})) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="--loss"):
        LossWeights.of("mse")
    with pytest.raises(ValueError, match="teacher"):
        finetune_loss(None, DenoisingTask(1), t, t, 2, weights=LossWeights.of("distill"))


def test_t_equals_one_is_first_class():
    """With 4 thresholds one step is a 4-bit activation network: conversion, simulation, the
    flow pass and energy at T = 1."""
    net = SkewedSkipNet().eval()
    data = batches(2)
    snn = convert(net, calibrate(net, data, progress=False))
    x = data[0]
    out = simulate(snn, x, 1)[1]
    assert out.shape == net(x).shape and torch.isfinite(out).all()
    assert float((out.argmax(1) == net(x).argmax(1)).float().mean()) > 0.8
    loss = finetune_loss(snn, SegmentationTask(2), x, net(x).argmax(1).detach(), 1)
    loss.backward()
    assert snn.get_submodule("conv3").weight.grad.abs().sum() > 0
    r = count_energy(snn, net, [x], 1)
    assert r.T == 1 and r.spikes > 0 and r.sops > 0


def test_spike_budget_penalty_is_the_measured_sop_ratio_and_lowers_it():
    from sjunet.training.flow import SopPenalty, flow_forward

    net = SkewedSkipNet().eval()
    data = batches(2)
    snn = convert(net, calibrate(net, data, progress=False), thresholds="paper")
    x, T = torch.cat(data), 4
    pen = SopPenalty(snn)
    _, flows, spikes = flow_forward(snn, x, T, keep_outputs=True, count_spikes=True)
    value = float(pen(x, flows, spikes))
    r = count_energy(snn, None, [x], T)
    sop_only = (r.energy_sop_J - r.first_layer_macs * r.e_mac) / r.energy_ann_J
    assert value == pytest.approx(sop_only, rel=1e-6)
    y = net(x).argmax(1).detach()
    start = {k: v.clone() for k, v in snn.state_dict().items()}
    sops = {}
    for beta in (0.0, 5.0):  # the same fine-tuning with and without the budget
        snn.load_state_dict(start)
        opt = torch.optim.Adam(snn.parameters(), lr=1e-3)
        for _ in range(20):
            opt.zero_grad()
            finetune_loss(snn, SegmentationTask(2), x, y, T, weights=LossWeights.of("label", energy=beta),
                          penalty=pen).backward()
            opt.step()
        sops[beta] = count_energy(snn, None, [x], T).sops
    assert sops[5.0] < 0.85 * sops[0.0] and sops[5.0] < 0.85 * r.sops
