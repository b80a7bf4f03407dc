"""The converted network is one typed object (spec §14): :class:`sjunet.snn.model.SpikingUNet`."""
import copy

import pytest
import torch
from spikingjelly.activation_based import functional
from torch.utils.data import DataLoader

from sjunet.calibration import calibrate
from sjunet.conversion.recipe import convert, convert_stock, load_snn, save_snn
from sjunet.snn import Conversion, SNNRecord, SpikingUNet, size_rule
from sjunet.snn.simulation import simulate

from helpers import SkewedSkipNet, batches

DEMO = {"size": 32, "num_items": 8}


@pytest.fixture(scope="module")
def skewed():
    net = SkewedSkipNet().eval()
    data = batches(4)
    snn = convert(net, calibrate(net, data, p=99.9, progress=False))
    return net, data, snn


@pytest.fixture(scope="module")
def tiny_unet():
    """An untrained width-4 depth-2 U-Net for demo-seg, converted (fine-tuning needs no trained ANN)."""
    from sjunet.data import get_dataset
    from sjunet.models import UNet, UNetConfig

    torch.manual_seed(0)
    ann = UNet(UNetConfig(1, 2, 4, 2)).eval()
    ds = get_dataset("demo-seg", None, "train", seed=0, **DEMO)
    snn = convert(ann, calibrate(ann, DataLoader(ds, batch_size=4), progress=False))
    snn.record.task = {"kind": "segmentation", "num_classes": 2}
    return ann, snn


def _same_outputs(a, b, x, T=4):
    oa, ob = simulate(a, x, T), simulate(b, x, T)
    return all(torch.equal(oa[t], ob[t]) for t in oa)


def test_convert_returns_a_spiking_unet_with_a_typed_record(skewed):
    net, data, snn = skewed
    assert isinstance(snn, SpikingUNet) and isinstance(snn.record, SNNRecord)
    conv = snn.record.conversion
    assert isinstance(conv, Conversion)
    assert conv.norm == "connection" and conv.neuron == "mt" and conv.thresholds == "auto"
    assert conv.ladders and all(c["thresholds"] == sorted(c["thresholds"], reverse=True) for c in conv.ladders.values())
    assert conv.lambdas and all(v > 0 for v in conv.lambdas.values())
    assert isinstance(conv.gains, list) and isinstance(conv.layers, dict)
    assert conv.input_channels == 1 and conv.output_channels == net(data[0]).shape[1]
    assert conv.approximations == [] and conv.approximation_gap is None
    assert snn.record.graph["modules"] and snn.record.post == [] and snn.record.finetune is None
    assert snn.record.size.multiple == conv.size_multiple == size_rule(snn)
    # to_dict gives back exactly the recipe's record (the file's `conversion`)
    assert Conversion.from_dict(conv.to_dict()).to_dict() == conv.to_dict()
    assert list(conv.to_dict()) == list(conv.keys)


def test_copies_and_moves_keep_the_record_and_the_numbers(skewed):
    _, data, snn = skewed
    x = data[0]
    dup = copy.deepcopy(snn)
    assert isinstance(dup, SpikingUNet) and dup.record == snn.record and dup.record is not snn.record
    assert list(dup.state_dict()) == list(snn.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(dup.state_dict().values(), snn.state_dict().values()))
    assert _same_outputs(snn, dup, x)
    dup.record.conversion.options["changed"] = True  # a deep copy: the original's record is its own
    assert "changed" not in snn.record.conversion.options
    moved = dup.to("cpu")
    assert moved is dup and moved.record is dup.record
    shallow = copy.copy(snn)
    assert isinstance(shallow, SpikingUNet) and shallow.record is snn.record and _same_outputs(snn, shallow, x)
    functional.reset_net(dup)
    functional.set_step_mode(dup, "m")
    out = dup(x.unsqueeze(0).expand(2, *x.shape))
    functional.set_step_mode(dup, "s")
    functional.reset_net(dup)
    assert out.shape[0] == 2


def test_data_parallel_wrapping_works(skewed, tmp_path):
    import torch.distributed as dist

    _, data, snn = skewed
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        dup = copy.deepcopy(snn)
        ddp = torch.nn.parallel.DistributedDataParallel(dup)
        assert isinstance(ddp.module, SpikingUNet) and ddp.module.record == snn.record
        functional.reset_net(ddp.module)
        assert torch.equal(ddp(data[0]), snn(data[0]))
        functional.reset_net(snn)
        functional.reset_net(dup)
    finally:
        dist.destroy_process_group()


def test_save_load_round_trip_keeps_record_and_outputs(skewed, tmp_path):
    _, data, snn = skewed
    path = save_snn(snn, tmp_path / "snn.safetensors", {"note": "round trip"})
    back, rec = load_snn(path)
    assert isinstance(back, SpikingUNet)
    assert back.record.to_dict() == snn.record.to_dict()
    assert back.record.conversion.to_dict() == rec["conversion"]
    assert back.record.provenance["sources"]["note"] == "round trip"
    assert back.source["path"] == str(path) and len(back.source["fingerprint"]) == 16
    assert set(back.state_dict()) == set(snn.state_dict())
    assert back.fingerprint() == snn.fingerprint()
    same = snn.rebuilt()  # what the file rebuilds, without the file: the same modules in the same order
    assert list(same.state_dict()) == list(back.state_dict()) and same.record == back.record.__class__(
        **{**vars(back.record), "provenance": None})
    assert _same_outputs(snn, same, data[1])
    assert _same_outputs(snn, back, data[1], T=8)
    # a second save of the loaded network writes the same network record
    again, rec2 = load_snn(save_snn(back, tmp_path / "again.safetensors"))
    assert {k: rec2[k] for k in SNNRecord.SAVED} == {k: rec[k] for k in SNNRecord.SAVED}


def test_size_rule_is_one_function(skewed, tiny_unet):
    net, _, snn = skewed
    ann, usnn = tiny_unet
    assert size_rule(ann) == 4 == size_rule(usnn)  # declared (2**depth) and recorded agree
    assert size_rule(net) == size_rule(snn)  # probed and recorded agree
    stock = convert_stock(net, batches(2))
    assert isinstance(stock, SpikingUNet) and stock.record.conversion.norm == "stock-rate-coding"
    with pytest.raises(ValueError, match="records no size multiple"):
        size_rule(stock)
    with pytest.raises(Exception, match="no graph record"):
        save_snn(stock, "unused.safetensors")


def test_finetune_takes_the_object_and_returns_one(tiny_unet, tmp_path):
    from sjunet.training.finetuning import FinetuneOptions, finetune

    _, snn = tiny_unet
    before = {k: v.clone() for k, v in snn.state_dict().items()}
    out = tmp_path / "ft.safetensors"
    ft, summary = finetune(snn, FinetuneOptions(dataset="demo-seg", dataset_options=DEMO, output=str(out), T=2,
                                                epochs=1, batch_size=4, lr=1e-3, max_iters=2, val_limit=2,
                                                class_weights="none"), progress=False)
    assert isinstance(ft, SpikingUNet) and ft is not snn
    assert all(torch.equal(before[k], v) for k, v in snn.state_dict().items())  # the input is not changed
    assert snn.record.finetune is None
    assert ft.record.finetune["kept"] == summary["kept"] and ft.record.finetune["history"]
    assert summary["output"] == str(out) and ft.source["path"] == str(out)
    # the returned network is what the run wrote (the best), record included
    written, rec = load_snn(out)
    assert written.source["fingerprint"] == ft.source["fingerprint"]
    sd = ft.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in written.state_dict().items())
    assert written.fingerprint() == ft.fingerprint()
    x = torch.rand(1, 1, 32, 32)
    assert _same_outputs(written, ft, x, T=2)
    with pytest.raises(TypeError, match="SpikingUNet"):
        finetune(torch.nn.Identity(), FinetuneOptions(dataset="demo-seg", output=str(tmp_path / "x.safetensors")))


def test_a_module_named_like_a_spiking_unet_attribute_is_refused_in_one_line():
    from torch import nn

    from sjunet.io import ArtifactError

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.record = nn.Conv2d(1, 1, 1)  # the generated forward would call SpikingUNet.record
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.record(x))

    net = Net().eval()
    with pytest.raises(ArtifactError, match=r"^module 'record' of the network has the name of a SpikingUNet attribute"):
        convert(net, calibrate(net, [torch.rand(2, 1, 8, 8)], progress=False))
