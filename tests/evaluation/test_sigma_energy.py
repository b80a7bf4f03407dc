"""Energy of Σ-Δ neurons and token paths (issue 26): fan-outs counted per element where the spatial
layout ends, every Σ-Δ evaluation and every layer fed by graded currents at MAC cost, and the share
of operations and energy that is not accumulate — derived by hand for a small transformer block."""
import math
import warnings

import pytest
import torch
from helpers import TokenBlock

from sjunet.calibration import calibrate
from sjunet.conversion.recipe import convert
from sjunet.evaluation.energy import E_AC, E_MAC, count_energy
from sjunet.evaluation.fanout import fanout_maps


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(2)
    net = TokenBlock().eval()
    g = torch.Generator().manual_seed(0)
    data = [torch.rand(2, 1, 16, 16, generator=g) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return net, convert(net, calibrate(net, data, progress=False)), data[0]


def test_token_fanouts_neuron_operations_and_shares(block):
    """Per element: a LayerNorm neuron reaches qkv's 24 outputs, the second one fc1's 16, GELU fc2's 8,
    attention·V (through a transpose and a reshape) proj's 8, softmax and Q·Kᵀ feed a product neuron
    directly (one accumulate each). Σ-Δ evaluations per step: 2 × 16 × 8 (norms) + 16 × 16 (GELU) +
    2 × 16 × 16 (softmax) + the products' MACs 2 × 16 × 16 × 4 × 2; the up-convolution reads the
    graded residual stream: its 8 × 16 × 4 × 16 MACs every step."""
    net, snn, x = block
    maps = fanout_maps(snn, (1, 16, 16))
    means = {k: round(float(fo.map.mean()), 6) for k, fo in maps.items()}
    assert means["n1_1"] == 24 and means["n2_1"] == 16 and means["gelu"] == 8 and means["matmul"] == 8
    assert means["softmax"] == 1 and means["einsum"] == 1
    T = 3
    r = count_energy(snn, net, [x], T=T)
    per_step = 2 * 16 * 8 + 16 * 16 + 2 * 16 * 16 + 2 * (2 * 16 * 16 * 4)
    assert r.neuron_ops == T * per_step
    assert r.graded_macs == T * 8 * 16 * 4 * 16
    macs = r.first_layer_macs + r.neuron_ops + r.graded_macs
    acs = r.sops + r.stage_acs
    assert math.isclose(r.energy_sop_J, macs * E_MAC + acs * E_AC, rel_tol=1e-9)
    sop = r.mac_share["sop"]
    assert math.isclose(sop["ops"], macs / (macs + acs)) and math.isclose(sop["energy"], macs * E_MAC / r.energy_sop_J)
    assert r.mac_share["neurobench"]["energy"] >= sop["energy"]  # graded events are MACs there too


def test_spike_budget_through_sigma_delta_neurons(block):
    """The spike-budget penalty (flow fine-tuning) counts a Σ-Δ neuron's spikes by the size of its
    signed flow, through per-element fan-outs, and its gradient reaches the weights."""
    from sjunet.training.flow import SopPenalty, flow_forward

    _, snn, x = block
    out, flows, spikes = flow_forward(snn, x, 4, keep_outputs=True, count_spikes=True)
    penalty = SopPenalty(snn)(x, flows, spikes)
    penalty.backward()
    r = count_energy(snn, None, [x], T=4)
    assert math.isclose(float(penalty.detach()), r.sops * E_AC / (r.ann_macs * E_MAC), rel_tol=1e-6)
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in snn.parameters())


def test_a_cnn_keeps_its_exact_counts():
    """No Σ-Δ neuron, no token path: no neuron operations, no graded layers, and the non-accumulate
    share is the analog first layer's alone."""
    from helpers import ResidualNet, init_random

    net = init_random(ResidualNet(), 0)
    g = torch.Generator().manual_seed(0)
    data = [torch.rand(2, 1, 16, 16, generator=g) for _ in range(2)]
    snn = convert(net, calibrate(net, data, progress=False))
    r = count_energy(snn, net, [data[0]], T=4)
    assert r.neuron_ops == 0 and r.graded_macs == 0
    assert math.isclose(r.mac_share["sop"]["ops"], r.first_layer_macs / (r.first_layer_macs + r.sops + r.stage_acs))
