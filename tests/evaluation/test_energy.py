"""Energy counting (spec §8): spikes, exact fan-out / SOPs, MACs, both energy conventions."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import nn

from sjunet.calibration import calibrate
from sjunet.conversion.recipe import convert, save_snn
from sjunet.evaluation.energy import E_AC, E_MAC, ann_macs, conv_macs, count_energy, count_energy_on, spike_counts
from sjunet.evaluation.fanout import _compose, fanout_maps, stage_reach
from sjunet.evaluation.report import energy_table
from sjunet.models import UNet
from sjunet.neurons import MultiThresholdNode
from sjunet.snn.simulation import record_flow

from helpers import SkewedSkipNet, batches


class TinyNet(nn.Module):
    """x → conv1(1→2, 3x3, pad 1) → ReLU → conv2(2→3, 3x3, pad 1) → ReLU → head(3→1, 1x1)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(2, 3, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.head = nn.Conv2d(3, 1, 1)
        for m in (self.conv1, self.conv2, self.head):  # positive weights: no dead layer to calibrate
            m.weight.data = 0.1 + torch.rand(m.weight.shape, generator=g)
            m.bias.data.fill_(0.1)

    def forward(self, x):
        return self.head(self.relu2(self.conv2(self.relu1(self.conv1(x)))))


@pytest.fixture(scope="module")
def tiny():
    """The tiny SNN with forced, known spikes: conv1 and conv2 get zero weights and a bias, so
    every neuron receives a constant current per step. With the MT ladder (2, 1, 0.5, 0.25):
    0.75 → 0.5+0.25 (2 spikes/step), 0.25 → 1, 2.0 → 1, 0.0 → 0, 3.75 → 2+1+0.5+0.25 (4)."""
    net = TinyNet().eval()
    stats = calibrate(net, batches(2, b=1, size=4), progress=False)
    snn = convert(net, stats, thresholds="paper")  # the hand counts below are the paper's ladder's
    with torch.no_grad():
        snn.conv1.layer.weight.zero_()
        snn.conv1.layer.bias.copy_(torch.tensor([0.75, 0.25]))
        snn.conv2.weight.zero_()
        snn.conv2.bias.copy_(torch.tensor([2.0, 0.0, 3.75]))
    return net, snn


@pytest.fixture(scope="module")
def skewed():
    net = SkewedSkipNet().eval()
    data = batches(2, b=2)
    stats = calibrate(net, data, progress=False)
    return net, data, stats


# ------------------------------------------------------------------------- hand counts


def test_fanout_map_of_3x3_pad1_conv_on_4x4(tiny):
    _, snn = tiny
    fo = fanout_maps(snn, (1, 4, 4))
    per_position = torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], dtype=torch.float64)
    assert torch.equal(fo["relu1"].map, 3 * per_position)  # corner 4, edge 6, interior 9 × C_out = 3
    assert torch.equal(fo["relu2"].map, torch.ones(4, 4, dtype=torch.float64))  # 1x1 head, 1 channel
    assert fo["relu1"].targets == {"conv2": 18.75} and fo["relu2"].targets == {"head": 1.0}


def test_hand_count_spikes_sops_macs_energy(tiny):
    net, snn = tiny
    T = 3
    x = torch.rand(1, 1, 4, 4)
    r = count_energy(snn, net, [x], T)
    l1, l2 = r.layers
    assert (l1.name, l2.name) == ("relu1", "relu2")
    # relu1: 16 neurons x 2 spikes + 16 x 1 spike per step; fan-out Σ = 3 x (4·4 + 8·6 + 4·9) = 300
    assert l1.neurons == 32 and l1.spikes == 48 * T and l1.sops == 3 * 300 * T
    assert l1.rate == pytest.approx(48 / 32) and l1.fanout_mean == pytest.approx(300 / 16)
    # relu2: 16 x (1 + 0 + 4) spikes per step into the 1x1, 1-channel head: one synapse each
    assert l2.neurons == 48 and l2.spikes == 80 * T and l2.sops == 80 * T
    assert r.spikes == 128 * T and r.sops == (900 + 80) * T
    assert r.first_layer_macs == 1 * 9 * 2 * 16  # C_in·k²·C_out·H·W, once per image
    assert r.first_layer_macs_every_step == T * 288
    assert r.ann_macs == 288 + 2 * 9 * 3 * 16 + 3 * 1 * 16  # conv1 + conv2 + head = 1200
    assert r.energy_paper_J == pytest.approx(288 * 4.6e-12 + 384 * 0.9e-12, rel=1e-12)
    assert r.energy_sop_J == pytest.approx(288 * 4.6e-12 + 2940 * 0.9e-12, rel=1e-12)
    assert r.energy_ann_J == pytest.approx(1200 * 4.6e-12, rel=1e-12)
    assert r.ratios["paper"] == pytest.approx(r.energy_paper_J / r.energy_ann_J)
    assert r.ratios["sop"] == pytest.approx(r.energy_sop_J / r.energy_ann_J)
    # other unit costs, and per-image averaging over several batches
    r2 = count_energy(snn, net, [torch.rand(2, 1, 4, 4), (torch.rand(1, 1, 4, 4), None)], T, e_mac=2.0, e_ac=0.5)
    assert r2.images == 3 and r2.spikes == r.spikes and r2.sops == r.sops
    assert r2.energy_paper_J == 288 * 2.0 + 384 * 0.5 and r2.energy_sop_J == 288 * 2.0 + 2940 * 0.5
    assert r2.energy_ann_J == 1200 * 2.0
    d = r2.to_dict()
    json.dumps(d)
    assert set(d["conventions"]) == {"paper", "sop", "neurobench", "ann"}
    assert d["sops_per_spike"] == pytest.approx(2940 / 384)
    # graded events: every relu1 neuron is non-zero every step (2 channels), relu2's channels 0 and 2;
    # NeuroBench: one MAC per event per synapse reached, however many thresholds fired
    assert l1.events == 32 * T and l1.synaptic_events == 2 * 300 * T and l1.nonzero == 1.0
    assert l2.events == 32 * T and l2.synaptic_events == 32 * T and l2.nonzero == pytest.approx(2 / 3)
    assert r.energy_neurobench_J == pytest.approx((288 + 632 * T) * 4.6e-12, rel=1e-12)
    assert r.ratios["neurobench"] == pytest.approx(r.energy_neurobench_J / r.energy_ann_J)
    table = energy_table(r)
    assert "| relu1 | 32 | 144 |" in table and "paper convention" in table and "SOP convention" in table


# -------------------------------------------------------------- composed fan-out (linear stages)


def _reach_count(x: torch.Tensor, stages) -> int:
    for f in stages:
        x = (f(x) > 0).to(x.dtype)  # reachability: clamp to 1 after every stage
    return int(x.sum())


def _brute_force_map(h, w, paths) -> torch.Tensor:
    """Per position: one-hot, propagated through each path of (ones-kernel stages, C_out)."""
    out = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            x = torch.zeros(1, 1, h, w, dtype=torch.float64)
            x[0, 0, i, j] = 1
            out[i, j] = sum(c * _reach_count(x, stages) for stages, c in paths)
    return out


def test_composed_fanout_avgpool_and_upconv_cat(skewed):
    net, _, stats = skewed
    snn = convert(net, stats)
    fo = fanout_maps(snn, (1, 16, 16))
    ones3 = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    conv3x3 = lambda x: F.conv2d(x, ones3, padding=1)  # noqa: E731
    # relu1 (16x16, 3 ch): AvgPool(2) → conv2 (5 out) and cat → conv3 (4 out)
    want1 = _brute_force_map(16, 16, [([lambda x: F.avg_pool2d(x, 2), conv3x3], 5), ([conv3x3], 4)])
    assert torch.equal(fo["relu1"].map, want1)
    assert fo["relu1"].map[8, 8] == 9 * 5 + 9 * 4
    # relu2 (8x8, 5 ch): 2x2/s2 up-conv → cat → 3x3 conv3 (4 out): 16·C_out in the interior
    up = lambda x: F.conv_transpose2d(x, torch.ones(1, 1, 2, 2, dtype=torch.float64), stride=2)  # noqa: E731
    want2 = _brute_force_map(8, 8, [([up, conv3x3], 4)])
    assert torch.equal(fo["relu2"].map, want2)
    assert fo["relu2"].map[3, 3] == 16 * 4 and fo["relu2"].map[0, 3] == 12 * 4 and fo["relu2"].map[0, 0] == 9 * 4
    assert set(fo["relu2"].targets) == {"conv3"}
    assert torch.equal(fo["relu3"].map, torch.full((16, 16), 2.0, dtype=torch.float64))  # 1x1 head, 2 classes


class StagesNet(nn.Module):
    """conv → ReLU a → MaxPool → conv → ReLU b → nearest 2x → replicate pad → 3x3 conv (no pad)
    → + a (identity shortcut, with a gain) → ReLU z → 1x1 head."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 3, 3, padding=1)
        self.c3, self.head = nn.Conv2d(3, 2, 3), nn.Conv2d(2, 1, 1)
        for m in (self.c1, self.c2, self.c3, self.head):
            m.weight.data = 0.1 + torch.rand(m.weight.shape, generator=g)
            m.bias.data.fill_(0.05)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(F.max_pool2d(a, 2)))
        u = F.pad(F.interpolate(b, scale_factor=2, mode="nearest"), (1, 1, 1, 1), mode="replicate")
        return self.head(torch.relu(self.c3(u) + a))


def test_fanout_through_maxpool_upsample_pad_and_identity_edges():
    net = StagesNet().eval()
    snn = convert(net, calibrate(net, batches(2, size=8), progress=False))
    assert snn.record.conversion.gains  # λ_a ≠ λ_z: the shortcut carries a gain
    fo = fanout_maps(snn, (1, 8, 8))
    mp = next(k for k in fo if k not in ("relu", "relu_1", "relu_2"))
    ones3 = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    # a: into the max-pool (compared, no synapse) and the identity edge into z: 1 per spike
    assert torch.equal(fo["relu"].map, torch.ones(8, 8, dtype=torch.float64))
    # the max-pool's events: 3x3 conv c2 (padding 1, 3 out) on the 4x4 pooled map
    assert torch.equal(fo[mp].map, _brute_force_map(4, 4, [([lambda x: F.conv2d(x, ones3, padding=1)], 3)]))
    # b (4x4): nearest 2x → replicate pad 1 → 3x3 conv (no pad), 2 out
    want = _brute_force_map(4, 4, [([lambda x: F.interpolate(x, scale_factor=2, mode="nearest"),
                                     lambda x: F.pad(x, (1, 1, 1, 1), mode="replicate"),
                                     lambda x: F.conv2d(x, ones3)], 2)])
    assert torch.equal(fo["relu_1"].map, want)
    assert fo["relu_1"].map[1, 1] == 2 * 16  # a 2x2 block's 4x4 neighbourhood, 2 channels
    assert torch.equal(fo["relu_2"].map, torch.ones(8, 8, dtype=torch.float64))  # 1x1 head, 1 class
    r = count_energy(snn, net, batches(1, size=8), 8)
    names = [layer.name for layer in r.layers]
    assert mp in names and r.sops > 0 and r.spikes > 0


@pytest.mark.parametrize("stages", [
    [nn.Conv2d(1, 1, 3, stride=2, padding=1)],
    [nn.Conv2d(1, 1, 3, padding=2, dilation=2, padding_mode="reflect")],
    [nn.Conv2d(1, 1, (3, 5), padding="same", padding_mode="replicate")],
    [nn.Conv2d(1, 1, 4, padding="same", padding_mode="circular")],
    [nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1), nn.Conv2d(1, 1, 3, padding=1)],
    [nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True), nn.ConvTranspose2d(1, 1, 2, stride=2),
     nn.Conv2d(1, 1, 3, stride=2)],
    [nn.AvgPool2d(2), nn.AvgPool2d(2), nn.ConvTranspose2d(1, 1, 4, stride=2, padding=1), nn.Conv2d(1, 1, 3, padding=1)],
])
def test_separable_reachability_matches_brute_force(stages):
    h, w = 9, 8
    for m in stages:
        if hasattr(m, "weight"):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    stages = [m.double() for m in stages]
    with torch.no_grad():
        shapes = [(h, w)]
        x = torch.zeros(1, 1, h, w, dtype=torch.float64)
        for m in stages:
            x = m(x)
            shapes.append(tuple(x.shape[-2:]))
        rh, rw = torch.eye(h, dtype=torch.bool), torch.eye(w, dtype=torch.bool)
        for m, a, b in zip(stages, shapes, shapes[1:]):
            sh, sw = stage_reach(m, a, b)
            rh, rw = _compose(rh, sh), _compose(rw, sw)
        got = torch.outer(rh.sum(1).double(), rw.sum(1).double())
        want = _brute_force_map(h, w, [(stages, 1)])
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------- MACs


def _conv_formula(model: nn.Module, x: torch.Tensor) -> int:
    total = []
    hooks = [m.register_forward_hook(lambda m, i, o: total.append(conv_macs(m, i[0].shape, o.shape)))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return sum(total)


def test_ann_macs_maccounter_matches_formula():
    unet = UNet(in_channels=1, out_channels=2, base_width=4, depth=2).eval()
    got = ann_macs(unet, (1, 16, 24))
    assert got == _conv_formula(unet, torch.rand(1, 1, 16, 24))
    # by hand: enc 1→4, 4→4 at 16x24; 4→8, 8→8 at 8x12; bottom 8→16, 16→16 at 4x6;
    # up 16→8 (2x2 on 4x6), dec 16→8, 8→8 at 8x12; up 8→4 (2x2 on 8x12), dec 8→4, 4→4 at 16x24; head 4→2
    a, b, c = 16 * 24, 8 * 12, 4 * 6
    hand = (9 * (1 * 4 + 4 * 4) * a + 9 * (4 * 8 + 8 * 8) * b + 9 * (8 * 16 + 16 * 16) * c
            + 4 * 16 * 8 * c + 9 * (16 * 8 + 8 * 8) * b + 4 * 8 * 4 * b + 9 * (8 * 4 + 4 * 4) * a + 4 * 2 * a)
    assert got == hand
    # BatchNorm is not counted (folded at conversion); MACs do not depend on weights
    assert ann_macs(UNet(in_channels=1, out_channels=2, base_width=4, depth=2, batch_norm=True), (1, 16, 24)) == hand


def test_ann_macs_value_independent():
    """SpikingJelly's stock rule drops a conv whose input or weight is all 0/1 (a dead layer)."""
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter

    net = TinyNet().eval()
    with torch.no_grad():
        net.conv1.weight.zero_()
        net.conv1.bias.zero_()
    stock = MACCounter()
    with torch.no_grad(), DispatchCounterMode([stock]):
        net(torch.rand(1, 1, 4, 4))
    # conv1 (all-zero weights count as "binary") and conv2 (all-zero input) dropped: head only
    assert stock.get_total() == 3 * 16
    assert ann_macs(net, (1, 4, 4)) == 1200


def test_first_layer_macs_formula(skewed):
    net, data, stats = skewed
    snn = convert(net, stats)
    r = count_energy(snn, net, [data[0][:1]], 2)
    assert r.first_layer_macs == 1 * 9 * 3 * 16 * 16
    assert r.ann_macs == _conv_formula(net, data[0][:1]) == 97728


# ------------------------------------------------------------------ spikes vs flow / decomposition


def test_if_spikes_equal_output_flow(skewed):
    net, data, stats = skewed
    snn = convert(net, stats, neuron="if")
    T = 12
    r = count_energy(snn, net, data, T)
    flows = [record_flow(snn, x, T) for x in data]
    n_img = sum(x.shape[0] for x in data)
    for layer in r.layers:
        flow = sum(float(f.outputs[layer.name].sum()) for f in flows) / n_img
        assert layer.spikes == pytest.approx(flow, rel=1e-9) and layer.spikes > 0
    # SOPs = Σ spikes × fan-out at each position, with the public pieces
    fo = fanout_maps(snn, (1, 16, 16))
    sops = sum(float((c.double().sum((0, 1)) * fo[n].map).sum())
               for x in data for n, c in spike_counts(snn, x, T).items())
    assert r.sops == pytest.approx(sops / n_img, rel=1e-12)


def test_mt_spikes_equal_threshold_decomposition(skewed):
    net, data, stats = skewed
    snn = convert(net, stats, neuron="mt", thresholds="paper")  # the 4-bit decomposition below: (2, 1, 0.5, 0.25)
    outs: dict[str, list] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: outs.setdefault(name, []).append(o.detach()))
             for name, m in snn.named_modules() if isinstance(m, MultiThresholdNode)]
    T = 10
    r = count_energy(snn, net, [data[0]], T, chunk=3)
    for h in hooks:
        h.remove()
    for layer in r.layers:
        # [T, B, C, H, W] (a single step, the chunk's memory probe: [B, C, H, W]); batch 2 leaves out
        # count_energy's one-step shape probe (batch 1)
        steps = [v if v.dim() == 5 else v.unsqueeze(0) for v in outs[layer.name]]
        o = torch.cat([v for v in steps if v.shape[1] == data[0].shape[0]])
        assert o.shape[0] == T
        k = torch.round(o / 0.25).to(torch.int64)
        assert torch.equal(k.double() * 0.25, o.double())
        popcount = sum(((k >> i) & 1).sum() for i in range(4))
        assert layer.spikes == float(popcount) / data[0].shape[0]
    assert r.spikes > r.layers[0].neurons  # graded: several threshold spikes per step occur
    # the network is left clean: reset, recording off
    assert all(not m.record for m in snn.modules() if isinstance(m, MultiThresholdNode))


def test_synop_counter_sees_no_mt_spikes(skewed):
    """Why SpikingJelly's SynOpCounter is not used: graded MT spikes are not binary, so every
    conv after the first is counted as dense MACs at every step (module docstring)."""
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    net, data, stats = skewed
    snn = convert(net, stats)
    x, T = data[0][:1], 4
    functional.set_step_mode(snn, "m")
    functional.reset_net(snn)
    syn, mac = SynOpCounter(), MACCounter()
    with torch.no_grad(), DispatchCounterMode([syn, mac]):
        snn(x.unsqueeze(0).expand(T, *x.shape))
    functional.reset_net(snn)
    first = 9 * 3 * 256
    assert syn.get_total() == 0
    assert mac.get_total() == first + T * (97728 - first)
    r = count_energy(snn, net, [x], T)
    assert 0 < r.sops < mac.get_total()


# ----------------------------------------------------------------------------- library verb


def test_energy_on_a_dataset_pads_to_the_size_multiple():
    from sjunet.data import get_dataset

    opts = {"size": 30, "num_items": 2}  # 30 is not a multiple of 2**depth = 4: padded to 32
    unet = UNet(in_channels=1, out_channels=2, base_width=4, depth=2).eval()
    train = get_dataset("demo-seg", None, "train", **opts)
    stats = calibrate(unet, [train[i][0].unsqueeze(0)[..., :28, :28] for i in range(2)], progress=False)
    snn = convert(unet, stats)
    test = get_dataset("demo-seg", None, "test", **opts)
    r = count_energy_on(snn, test, T=2, limit=2)
    assert r.images == 2 and r.T == 2 and r.meta["size_multiple"] == 4
    assert r.first_layer_macs == 1 * 9 * 4 * 32 * 32
    assert r.ann_macs == ann_macs(unet, (1, 32, 32))  # from the SNN's own graph = SpikingJelly's count
    assert r.layers[0].neurons == 4 * 32 * 32
    r2 = count_energy_on(snn, test, T=2, ann=unet, limit=1)
    assert r2.ann_macs == r.ann_macs
    assert json.loads(json.dumps(r.to_dict()))["ratios"]["sop"] == pytest.approx(r.ratios["sop"])


def test_several_T_from_one_simulation_equal_separate_counts(skewed):
    net, data, stats = skewed
    snn = convert(net, stats)
    many = count_energy(snn, net, data, [1, 3, 7], chunk=2)
    for t in (1, 3, 7):
        one = count_energy(snn, net, data, t, chunk=1)
        assert many[t].spikes == one.spikes and many[t].sops == one.sops and many[t].events == one.events
        assert many[t].energy_neurobench_J == pytest.approx(one.energy_neurobench_J)
    assert many[1].spikes < many[3].spikes < many[7].spikes


def test_frontier_metrics_and_energy_match_their_separate_runs():
    from sjunet.data import get_dataset
    from sjunet.evaluation import evaluate_snn
    from sjunet.evaluation.energy import energy_frontier
    from sjunet.evaluation.report import frontier_table

    opts = {"size": 32, "num_items": 4}
    unet = UNet(in_channels=1, out_channels=2, base_width=4, depth=2).eval()
    train = get_dataset("demo-seg", None, "train", **opts)
    snn = convert(unet, calibrate(unet, [train[i][0].unsqueeze(0) for i in range(2)], progress=False))
    test = get_dataset("demo-seg", None, "test", **opts)
    f = energy_frontier(snn, test, [1, 2, 4], ann=unet, limit=2)
    ev = evaluate_snn(snn, test, [1, 2, 4], reference=unet, limit=2, progress=False)
    sep = count_energy_on(snn, test, [1, 2, 4], ann=unet, limit=2)
    for t in (1, 2, 4):
        assert f["T"][str(t)]["metrics"] == ev["T"][str(t)]
        assert f["T"][str(t)]["energy"]["sops"] == pytest.approx(sep[t].sops)
        assert f["T"][str(t)]["energy"]["ratios"]["sop"] == pytest.approx(sep[t].ratios["sop"])
    assert f["ann"] == ev["ann"]
    assert "NeuroBench" in frontier_table(f) and "| ANN |" in frontier_table(f)
    assert "Columns:" in frontier_table(f) and "Columns:" not in frontier_table(f, legend=False)
    key = f["metric"]
    zero = {**f, "ann": {**f["ann"], key: 0.0}}  # a broken ANN scores 0: its ratios are "—", never nan
    rows = [line for line in frontier_table(zero).splitlines() if line.startswith("| SNN |")]
    assert rows and all(line.split("|")[4].strip() == "—" for line in rows) and "nan" not in frontier_table(zero)
