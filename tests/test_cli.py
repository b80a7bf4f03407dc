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
    assert ann.exists() and (run_dir / "ann.last.pt").exists()
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
    assert "SOPs" in text
    _ok(["plot", "metric-vs-T", str(out), "-o", str(run_dir / "m.png")])
    _ok(["plot", "histograms", str(stats), "-o", str(run_dir / "h.png")])
    assert (run_dir / "m.png").read_bytes()[:4] == b"\x89PNG"
    ft = run_dir / "ft.pt"
    _ok(["finetune", "--snn", str(snn), *DATA, "--T", "2", "--epochs", "1", "--batch-size", "4", "-o", str(ft)])
    assert ft.exists()


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
