"""Conversion is right, not only running: convergence to the ANN, per-part scaling, refusals."""
import pytest
import torch
from spikingjelly.activation_based import functional
from torch import nn

from sjunet.calibration import calibrate
from sjunet.conversion.recipe import StaticInputSynapse, convert, convert_stock, load_snn
from sjunet.models import UNet
from sjunet.neurons import MultiThresholdNode, set_recording
from sjunet.snn.simulation import simulate

from helpers import SkewedSkipNet, batches

T_STEPS = [10, 100, 1000]


@pytest.fixture(scope="module")
def skewed():
    net = SkewedSkipNet().eval()
    data = batches(4)
    stats = calibrate(net, data, p=99.9, progress=False)
    return net, data, stats


def _err(snn, net, x, T):
    ref = net(x).detach()
    out = simulate(snn, x, T, chunk=100)
    return {t: float((o - ref).abs().mean()) for t, o in out.items()}, float(ref.abs().mean())


def test_parts_really_differ_in_scale(skewed):
    _, _, stats = skewed
    assert stats.scale("relu1") / stats.scale("relu2") > 10


def test_connection_wise_converges_layer_wise_does_not(skewed):
    net, data, stats = skewed
    x = data[0]
    conn, scale = _err(convert(net, stats, norm="connection"), net, x, T_STEPS)
    layer, _ = _err(convert(net, stats, norm="layer"), net, x, T_STEPS)
    assert conn[10] > conn[100] > conn[1000]
    assert conn[1000] < 0.005 * scale  # converged to the ANN within 0.5 % of the output magnitude
    assert layer[1000] > 20 * conn[1000]  # layer-wise converges to a different network
    assert layer[1000] > 0.2 * scale


def test_layer_after_skip_rates(skewed):
    """The neuron right after the concatenation: its rate × λ tracks the ANN activation only
    with connection-wise normalization."""
    net, data, stats = skewed
    x = data[1]
    ann_act = {}
    h = net.relu3.register_forward_hook(lambda m, i, o: ann_act.setdefault("relu3", o.detach()))
    net(x)
    h.remove()
    lam = stats.scale("relu3")
    errs = {}
    for norm in ("connection", "layer"):
        snn = convert(net, stats, norm=norm)
        functional.set_step_mode(snn, "m")
        functional.reset_net(snn)
        set_recording(snn, True)
        T = 400
        with torch.no_grad():
            snn(x.unsqueeze(0).expand(T, *x.shape))
        rate = snn.get_submodule("relu3").output_flow() / T * lam
        errs[norm] = float((rate - ann_act["relu3"]).abs().mean())
        functional.reset_net(snn)
    assert errs["connection"] < 0.02 * float(ann_act["relu3"].mean())
    assert errs["layer"] > 10 * errs["connection"]


def test_per_part_scaling_channel_by_channel(skewed):
    net, _, stats = skewed
    snn = convert(net, stats, norm="connection")
    w, w_snn = net.conv3.weight.detach(), snn.get_submodule("conv3").weight.detach()
    l1, l2, l3 = stats.scale("relu1"), stats.scale("relu2"), stats.scale("relu3")
    # part 1 = channels 0..2 (skip, unit λ1); part 2 = channels 3..7 (linear up-conv, carries λ2)
    assert torch.allclose(w_snn[:, :3], w[:, :3] * l1 / l3, rtol=1e-5)
    assert torch.allclose(w_snn[:, 3:], w[:, 3:] * l2 / l3, rtol=1e-5)
    assert torch.allclose(snn.get_submodule("conv3").bias, net.conv3.bias / l3, rtol=1e-5)
    # the up-convolution keeps its weights, b̃ = b/λ_in (linear stage, spec §5)
    assert torch.allclose(snn.get_submodule("up").weight, net.up.weight)
    assert torch.allclose(snn.get_submodule("up").bias, net.up.bias / l2, rtol=1e-5)
    # output layer in ANN units
    assert torch.allclose(snn.get_submodule("head").weight, net.head.weight * l3, rtol=1e-5)
    assert torch.allclose(snn.get_submodule("head").bias, net.head.bias)
    # layer-wise: one factor for the whole concatenation
    lw = convert(net, stats, norm="layer").get_submodule("conv3").weight.detach()
    lc = stats.scale("cat")
    assert torch.allclose(lw, w * lc / l3, rtol=1e-5)
    parts = snn.record.conversion.layers["conv3"]["parts"]
    assert [(p["start"], p["stop"]) for p in parts] == [(0, 3), (3, 8)]


def test_up_relu_variant_becomes_a_neuron_and_converges():
    net = SkewedSkipNet(up_relu=True, seed=3).eval()
    data = batches(3)
    stats = calibrate(net, data, progress=False)
    snn = convert(net, stats)
    assert isinstance(snn.get_submodule("up_act"), MultiThresholdNode)
    err, scale = _err(snn, net, data[0], [10, 1000])
    assert err[1000] < err[10] and err[1000] < 0.01 * scale


def test_mt_beats_if_at_equal_T(skewed):
    net, data, stats = skewed
    mt, _ = _err(convert(net, stats, neuron="mt"), net, data[0], [10, 50])
    if_, _ = _err(convert(net, stats, neuron="if"), net, data[0], [10, 50])
    assert mt[10] < if_[10] / 2 and mt[50] < if_[50] / 2


def test_unet_with_batchnorm_folds_and_converges():
    torch.manual_seed(0)
    net = UNet(base_width=4, depth=2, batch_norm=True)
    net.train()
    with torch.no_grad():  # give BN non-trivial running statistics
        for x in batches(4, b=4, seed=5):
            net(x)
    net.eval()
    data = batches(3)
    snn = convert(net, calibrate(net, data, progress=False))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in snn.modules())
    err, scale = _err(snn, net, data[0], [10, 1000])
    assert err[1000] < err[10] and err[1000] < 0.01 * scale


def test_multi_step_and_step_by_step_identical(skewed):
    net, data, stats = skewed
    snn = convert(net, stats)
    x = torch.cat(data[:2])
    a = simulate(snn, x, [3, 17, 40], mode="multi", chunk=7, fuse=False)
    b = simulate(snn, x, [3, 17, 40], mode="step", fuse=False)  # fused synapses: tests/snn/test_fusion.py
    for t in a:
        assert torch.equal(a[t], b[t])
    # batch size changes between calls are safe (state reset per call)
    c = simulate(snn, x[:1], [17], mode="multi")[17]
    assert torch.allclose(c, a[17][:1], atol=1e-6)


def test_first_layer_computed_once_per_image(skewed):
    net, data, stats = skewed
    snn = convert(net, stats)
    first = snn.get_submodule("conv1")
    assert isinstance(first, StaticInputSynapse)
    calls = []
    h = first.layer.register_forward_hook(lambda *a: calls.append(1))
    simulate(snn, data[0], 40, mode="multi", chunk=8)
    simulate(snn, data[0], 40, mode="step")
    h.remove()
    assert len(calls) == 2


def test_save_reload_runs_without_ann(skewed, tmp_path):
    net, data, stats = skewed
    path = tmp_path / "snn.pt"
    snn = convert(net, stats, output=path)
    del net
    snn2, rec = load_snn(path)
    assert rec["conversion"]["options"]["norm"] == "connection"
    a, b = simulate(snn, data[0], 20)[20], simulate(snn2, data[0], 20)[20]
    assert torch.equal(a, b)
