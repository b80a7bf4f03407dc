"""3-D end to end through the library: sjunet's U-Net in 3-D, training on volumes, calibration →
conversion → whole-volume evaluation (padded per axis, cropped back), the seg3d demo. One tiny
trained network is shared by the module (trained for a few iterations, once)."""
import pytest
import torch
from torch.utils.data import DataLoader

from sjunet.models.unet import UNet, UNetConfig, build_model

TINY = {"size": [8, 16, 16], "num_items": 4}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from sjunet.calibration import calibrate
    from sjunet.conversion.recipe import convert
    from sjunet.data import get_dataset
    from sjunet.models.checkpoint import load_ann
    from sjunet.training import TrainOptions, train

    out = tmp_path_factory.mktemp("vol") / "ann.pt"
    _, s = train(TrainOptions(dataset="demo-seg3d", output=str(out), epochs=1, batch_size=2, width=4, depth=2,
                           max_iters=3, lr=5e-3, optimizer="adam", dataset_options=TINY, val_limit=1),
              progress=False, force=True)
    ann, ckpt = load_ann(out)
    stats = calibrate(ann, DataLoader(get_dataset("demo-seg3d", None, "train", **TINY), batch_size=2), progress=False)
    return {"path": out, "summary": s, "ann": ann, "ckpt": ckpt, "snn": convert(ann, stats)}


def test_unet3d_builds_and_its_state_dict_round_trips():
    cfg = UNetConfig(base_width=2, depth=2, batch_norm=True, spatial_dims=3)
    net = UNet(cfg).eval()
    flat = UNet(UNetConfig(base_width=2, depth=2, batch_norm=True))
    assert list(net.state_dict()) == list(flat.state_dict())  # the same keys as the 2-D network
    assert net.down[0][0].weight.shape == (2, 1, 3, 3, 3) and isinstance(net.pool[0], torch.nn.AvgPool3d)
    assert isinstance(net.up[0], torch.nn.ConvTranspose3d) and net.size_multiple == (4, 4, 4)
    assert cfg.to_dict()["spatial_dims"] == 3 and "spatial_dims" not in flat.config.to_dict()  # 2-D record unchanged
    x = torch.rand(1, 1, 4, 8, 12)
    again = build_model(cfg.to_dict())
    again.load_state_dict(net.state_dict())
    assert torch.equal(again.eval()(x), net(x)) and net(x).shape == (1, 2, 4, 8, 12)
    for bad in (1, 4, True, 3.0, "3"):
        with pytest.raises(ValueError, match="spatial_dims must be 2"):
            UNetConfig(spatial_dims=bad)


def test_checkpoint_loader_accepts_3d_and_refuses_other_dims_in_one_line(trained, tmp_path):
    from sjunet.io import ArtifactError
    from sjunet.models.checkpoint import load_ann

    assert trained["ckpt"]["model_config"]["spatial_dims"] == 3 and trained["ann"].config.spatial_dims == 3
    ckpt = torch.load(trained["path"], weights_only=False)
    ckpt["model_config"]["spatial_dims"] = 4
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(ArtifactError) as e:
        load_ann(bad)
    assert "spatial_dims" in str(e.value) and "\n" not in str(e.value)


def test_volumes_train_calibrate_convert_and_evaluate_whole(trained):
    from sjunet.data import get_dataset
    from sjunet.evaluation import evaluate_snn

    assert trained["summary"]["best_val"]["num_images"] == 1
    snn = trained["snn"]
    assert snn.record.conversion.size_multiples == [4, 4, 4] and snn.record.size.multiples == (4, 4, 4)
    test = get_dataset("demo-seg3d", None, "test", **TINY)
    r = evaluate_snn(snn, test, [2, 8], reference=trained["ann"], limit=2, progress=False)
    assert set(r["T"]) == {"2", "8"} and r["protocol"]["protocol"] == "whole"
    for m in r["T"].values():
        assert m["num_images"] == 2 and 0.5 < m["agreement"] <= 1 and 0 <= m["f1_object"] <= 1
    assert r["T"]["8"]["agreement"] >= r["T"]["2"]["agreement"] - 0.05


def test_a_depth_that_is_not_a_multiple_is_padded_per_axis_and_cropped_back(trained):
    from sjunet.data import get_dataset
    from sjunet.evaluation import Protocol, evaluate_snn, plan, predict, snn_fn

    odd = get_dataset("demo-seg3d", None, "test", size=[10, 16, 16], num_items=1)  # 10 sections: not a multiple of 4
    x, y = odd[0]
    assert plan(Protocol(), x.shape[1:], (4, 4, 4)).padded == (12, 16, 16)
    out = predict(snn_fn(trained["snn"], [2]), x[None], odd, (4, 4, 4))[2]
    assert out.shape[2:] == y.shape == (10, 16, 16)
    r = evaluate_snn(trained["snn"], odd, [2], reference=trained["ann"], progress=False)
    assert r["T"]["2"]["num_images"] == 1 and r["T"]["2"]["agreement"] > 0.5


def test_training_refuses_crops_that_do_not_fit_the_networks_multiples():
    from sjunet.data import DatasetError, get_dataset
    from sjunet.training import check_volume_fits

    ds = get_dataset("demo-seg3d", None, "train", size=[10, 16, 16], num_items=1)
    with pytest.raises(DatasetError, match="depth 10 must be a multiple of 4"):
        check_volume_fits(UNet(UNetConfig(base_width=2, depth=2, spatial_dims=3)), ds)
    with pytest.raises(ValueError, match="3-D volumes but the network is 2-D"):
        check_volume_fits(UNet(UNetConfig(base_width=2, depth=2)), ds)


def test_anisotropic_nnunet_pools_depth_less():
    pytest.importorskip("dynamic_network_architectures")
    from sjunet.models.checkpoint import ALLOWED_ARCHITECTURES
    from sjunet.models.nnunet import anisotropic_plain_conv_unet
    from sjunet.snn import size_rule

    assert "sjunet.models.nnunet:anisotropic_plain_conv_unet" in ALLOWED_ARCHITECTURES
    net = anisotropic_plain_conv_unet(base_features=2, n_stages=3).eval()
    assert size_rule(net, 1) == (2, 4, 4)
    assert net(torch.rand(1, 1, 2, 4, 4)).shape == (1, 2, 2, 4, 4)


def test_real_spike_amplitudes_fold_into_3d_convolutions():
    from sjunet.neurons.peers import _fold

    torch.manual_seed(0)
    for conv in (torch.nn.Conv3d(4, 3, 3, padding=1, groups=1), torch.nn.Conv3d(4, 4, 1, groups=2),
                 torch.nn.ConvTranspose3d(4, 3, 2, stride=2)):
        a, s = torch.rand(4) + 0.5, torch.rand(1, 4, 2, 4, 4)
        want = conv(s * a.view(1, -1, 1, 1, 1))
        with torch.no_grad():
            _fold(conv, a, "test")
        assert torch.allclose(conv(s), want, atol=1e-5)


def test_demo_seg3d_runs_and_draws_middle_slices(tmp_path):
    from sjunet.demo import DEMOS, run_demo

    assert DEMOS["seg"] == dict(dataset="demo-seg", epochs=30, batch_size=8, width=8, depth=3, lr=2e-3,
                                optimizer="adam")  # the 2-D demos are untouched
    r = run_demo("seg3d", tmp_path, epochs=1, T=(2,), progress=False, images=2, dataset_options=TINY)
    fig = tmp_path / "seg3d" / "predictions.png"
    assert fig.stat().st_size > 1000 and "SNN connection-wise MT, T=2" in r["report"]
    assert set(r["results"]) == {"connection", "layer"}


def test_volume_predictions_are_middle_slices(trained):
    from sjunet.data import get_dataset
    from sjunet.plots.predictions import predictions

    test = get_dataset("demo-seg3d", None, "test", **TINY)
    rows = predictions({"ANN": (trained["ann"], None), "SNN": (trained["snn"], 2)}, test, [0])
    row = rows[0]
    assert row["slice"] == {"axis": "depth", "index": 4, "of": 8}
    assert row["input"].shape == (16, 16, 1) and row["truth"].shape == (16, 16)
    assert all(o.shape == (16, 16) for o in row["outputs"].values())
    assert (row["truth"] == test[0][1][4].numpy()).all()
