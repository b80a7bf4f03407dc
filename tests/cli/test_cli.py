"""The CLI end to end on tiny demo data: train → calibrate → convert → evaluate → finetune → energy → plot."""
import json

import pytest
from click.testing import CliRunner

from sjunet.cli.main import main

DATA = ["-d", "demo-seg", "--opt", "size=32", "--opt", "num_items=8"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


def _ok(args):
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def test_pipeline(run_dir):
    ann, stats, snn = run_dir / "ann.pt", run_dir / "stats.h5", run_dir / "snn.pt"
    _ok(["train", *DATA, "--epochs", "1", "--width", "4", "--depth", "2", "--batch-size", "4", "-o", str(ann)])
    assert ann.exists() and (run_dir / "ann.pt.last.pt").exists()
    _ok(["train", *DATA, "--epochs", "2", "--width", "4", "--depth", "2", "--batch-size", "4", "-o", str(ann),
         "--resume"])
    _ok(["calibrate", "-m", str(ann), *DATA, "-o", str(stats)])
    _ok(["convert", "-m", str(ann), "--stats", str(stats), "--norm", "connection", "-o", str(snn)])
    out = run_dir / "eval.json"
    text = _ok(["evaluate", "-m", str(ann), "--snn", str(snn), *DATA, "--T", "2", "4", "-o", str(out)])
    assert "SNN T=4" in text
    r = json.loads(out.read_text())
    assert set(r["T"]) == {"2", "4"} and "agreement" in r["T"]["4"] and "provenance" in r
    text = _ok(["energy", "--snn", str(snn), "-m", str(ann), *DATA, "--T", "3", "--limit", "1"])
    assert "SOPs" in text and "NeuroBench" in text
    frontier = run_dir / "frontier.json"
    _ok(["energy", "--snn", str(snn), "-m", str(ann), *DATA, "--T", "1", "2", "4", "--limit", "2", "-o", str(frontier)])
    f = json.loads(frontier.read_text())
    assert set(f["T"]) == {"1", "2", "4"} and f["ann"] and f["T"]["4"]["energy"]["ratios"]["neurobench"] > 0
    _ok(["plot", "metric-vs-energy", str(frontier), "-o", str(run_dir / "me.png")])
    assert (run_dir / "me.png").read_bytes()[:4] == b"\x89PNG"
    _ok(["plot", "metric-vs-T", str(out), "-o", str(run_dir / "m.png")])
    _ok(["plot", "histograms", str(stats), "-o", str(run_dir / "h.png")])
    assert (run_dir / "m.png").read_bytes()[:4] == b"\x89PNG"
    ft = run_dir / "ft.safetensors"
    _ok(["finetune", "--snn", str(snn), *DATA, "--T", "2", "--epochs", "1", "--batch-size", "4", "-o", str(ft)])
    assert ft.exists()
    _ok(["finetune", "--snn", str(snn), *DATA, "--T", "1", "--epochs", "1", "--batch-size", "4", "--energy-penalty",
         "0.5", "-o", str(run_dir / "ft_budget.safetensors")])


def test_clear_errors(run_dir, tmp_path):
    r = CliRunner().invoke(main, ["evaluate", "-d", "em", "--data", str(tmp_path), "--snn", __file__])
    assert r.exit_code != 0 and "Error" in r.output
    r = CliRunner().invoke(main, ["train", "-d", "nonexistent", "--epochs", "1"])
    assert r.exit_code != 0 and "demo-seg" in r.output  # lists the valid names
    bad = tmp_path / "x.h5"
    bad.write_text("x")
    other = tmp_path / "a.pt"
    _ok(["train", *DATA, "--epochs", "1", "--width", "4", "--depth", "2", "-o", str(other)])
    r = CliRunner().invoke(main, ["convert", "-m", str(other), "--stats", str(bad)])
    assert r.exit_code != 0 and "HDF5" in r.output


def test_bring_your_own_unet_from_the_command_line(tmp_path):
    """MONAI's BasicUNet given as --arch/--arch-kwargs with a state_dict file: calibrate → convert →
    evaluate → energy, and the SNN file needs no MONAI to load (its graph is data)."""
    pytest.importorskip("monai")
    import torch
    from monai.networks.nets import BasicUNet

    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "act": "relu", "norm": "batch",
              "features": [4, 4, 8, 8, 16, 4]}
    net = BasicUNet(**kwargs)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    arch = ["--arch", "monai.networks.nets:BasicUNet", "--arch-kwargs", json.dumps(kwargs), "--weights",
            str(tmp_path / "w.pt")]
    stats, snn = tmp_path / "s.h5", tmp_path / "snn.safetensors"
    _ok(["calibrate", *arch, *DATA, "-o", str(stats)])
    text = _ok(["convert", *arch, "--stats", str(stats), "--task", "segmentation", "-o", str(snn)])
    assert "neuron layers" in text
    text = _ok(["evaluate", *arch, "--snn", str(snn), *DATA, "--T", "4", "--limit", "2"])
    assert "agreement" in text
    _ok(["energy", "--snn", str(snn), *DATA, "--T", "2", "--limit", "1"])
    r = CliRunner().invoke(main, ["evaluate", "--arch", "monai.networks.nets:BasicUNet", "--arch-kwargs",
                                  json.dumps({**kwargs, "features": [8, 8, 8, 8, 8, 8]}), "--weights",
                                  str(tmp_path / "w.pt"), *DATA])
    assert r.exit_code == 2 and "do not fit" in r.output
