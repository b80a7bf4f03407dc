"""``sjunet plot predictions`` (the paper's Figures 4/5) on the demo data sets."""
import pytest
from click.testing import CliRunner

from sjunet.cli.main import main

CASES = {"demo-seg": ["--opt", "size=32", "--opt", "num_items=8"],
         "demo-denoise": ["--opt", "crop=32", "--opt", "samples_per_epoch=16", "--opt", "eval_crop=32"]}


def _ok(args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("dataset", list(CASES))
def test_plot_predictions_draws_every_system_with_its_score(tmp_path, dataset):
    data = ["-d", dataset, *CASES[dataset]]
    ann, stats, snn = tmp_path / "ann.pt", tmp_path / "stats.h5", tmp_path / "snn.safetensors"
    _ok(["train", *data, "--width", "4", "--depth", "2", "--epochs", "1", "-o", ann])
    _ok(["calibrate", "-m", ann, *data, "--max-batches", "2", "-o", stats])
    _ok(["convert", "-m", ann, "--stats", stats, "-o", snn])
    out = tmp_path / "fig.png"
    text = _ok(["plot", "predictions", "-m", f"U-Net={ann}", "--snn", f"MT T=2={snn}@2", "--snn", f"MT T=8={snn}@8",
                *data, "--image", "0", "--image", "1", "-o", out])
    assert out.stat().st_size > 1000
    lines = [l for l in text.splitlines() if l.startswith("image ")]
    assert len(lines) == 2 and all("U-Net" in l and "MT T=2" in l and "MT T=8" in l for l in lines)
    r = CliRunner().invoke(main, ["plot", "predictions", "--snn", str(snn), *data, "--image", "999",
                                  "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "out of range" in r.output
