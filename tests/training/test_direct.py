"""Direct training of Spiking-UNets (``sjunet train --spiking``) and the Spiking-FCN architecture."""
import pytest
import torch
from click.testing import CliRunner

from sjunet.cli.main import main
from sjunet.conversion.recipe import load_snn
from sjunet.io import load_checkpoint

DATA = ["-d", "demo-seg", "--opt", "size=32", "--opt", "num_items=8"]
NET = ["--width", "4", "--depth", "2"]


def _ok(args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("neuron,node", [("mt", "MultiThresholdNode"), ("ml", "MultiLevelNode"),
                                         ("rs", "RealSpikeNode"), ("lif", "MultiLevelNode")])
def test_train_spiking_writes_a_trained_snn_with_its_training_time_neurons(tmp_path, neuron, node):
    from sjunet.neurons.peers import MultiLevelNode, RealSpikeNode

    out = tmp_path / "dt.safetensors"
    _ok(["train", "--spiking", "--neuron", neuron, "--T", "2", *DATA, *NET, "--epochs", "1", "--batch-size", "4",
         "--seed", "1", "-o", out])
    snn, rec = load_snn(out)
    init, _ = load_snn(tmp_path / "dt.init.safetensors")
    neurons = [m for m in snn.modules() if type(m).__name__ == node]
    assert neurons and rec["conversion"]["options"]["direct_training"]["neuron"] == neuron
    if neuron == "ml":
        assert neurons[0].decay == 0.25 and neurons[0].thresholds == (0.6, 1.6, 2.6)
    if neuron == "lif":
        assert neurons[0].thresholds == (1.0,) and neurons[0].decay == 0.5
    if neuron == "rs":
        assert isinstance(neurons[0], RealSpikeNode) and neurons[0].decay == 0.25
    assert isinstance(neurons[0], (MultiLevelNode, RealSpikeNode)) == (neuron != "mt")
    # the surrogate gradient moved the weights (the last state, whatever validation kept)
    last = load_checkpoint(tmp_path / "dt.safetensors.last.pt")["state_dict"]
    start = dict(init.state_dict())
    assert any(not torch.equal(last[k], start[k]) for k in start if k in last and start[k].is_floating_point())
    assert rec["finetune"]["options"]["method"] == "bptt"
    # a second run on the same output is refused (its initial SNN too)
    r = CliRunner().invoke(main, ["train", "--spiking", "--neuron", neuron, *DATA, *NET, "-o", str(out)])
    assert r.exit_code != 0 and "--force" in r.output


def test_train_spiking_refuses_ann_only_options(tmp_path):
    r = CliRunner().invoke(main, ["train", "--spiking", "--batch-norm", *DATA, "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--batch-norm" in r.output
    r = CliRunner().invoke(main, ["train", "--spiking", "--T", "0", *DATA, "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--T" in r.output


def test_spiking_fcn_converts_and_matches_its_ann():
    """Spiking-FCN's ANN (FCN-8s fusion: bilinear upsampling + adds) converts with sjunet's recipe, and the
    MT SNN approaches the ANN as T grows."""
    from sjunet import calibrate, convert, simulate
    from sjunet.models.fcn import SpikingFCNNet

    torch.manual_seed(0)
    ann = SpikingFCNNet(1, 2, width=4).eval()
    x = torch.rand(2, 1, 32, 32)
    stats = calibrate(ann, [x], progress=False)
    snn = convert(ann, stats)
    with torch.no_grad():
        ref = ann(x)
        out = simulate(snn, x, [4, 64])
    errs = [float((out[T] - ref).abs().mean() / ref.abs().mean()) for T in (4, 64)]
    assert errs[1] < errs[0] and errs[1] < 0.1, errs
