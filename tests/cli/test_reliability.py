"""Bad inputs and faults, end to end through the CLI on demo data (the trust issue): no code runs
from a file, no result is lost, no success without the promised file, one clear line per error."""
import json
import os
import stat

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from sjunet.cli.main import main

DATA = ["-d", "demo-seg", "--opt", "size=32", "--opt", "num_items=8"]
DENOISE = ["-d", "demo-denoise", "--opt", "eval_crop=32", "--limit", "1"]


def run(args, ok=True):
    r = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, r.output
    return r


def fails(args, *needles, code=2):
    """The command fails with one clear line (no traceback) containing every needle."""
    r = run(args, ok=False)
    assert r.exit_code == code, (r.exit_code, r.output)
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = [ln for ln in r.output.strip().splitlines() if ln.startswith("Error")]
    assert len(lines) == 1, r.output
    for n in needles:
        assert n in r.output, (n, r.output)
    return r.output


class _Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    ann, stats, snn = d / "ann.pt", d / "stats.h5", d / "snn.safetensors"
    run(["train", *DATA, "--epochs", "1", "--width", "4", "--depth", "2", "--batch-size", "4", "-o", ann])
    run(["calibrate", "-m", ann, *DATA, "-o", stats])
    run(["convert", "-m", ann, "--stats", stats, "-o", snn])
    return d, ann, stats, snn


# ------------------------------------------------------------------------ files are data, not code

def test_crafted_files_never_run_code(pipeline, tmp_path):
    _, ann, stats, snn = pipeline
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    real = torch.load(ann, weights_only=True)
    torch.save({**real, "payload": _Payload(marker)}, evil)  # a real network with a payload beside it
    fails(["calibrate", "-m", evil, *DATA, "-o", tmp_path / "s.h5"], "refused", "never runs code")
    fails(["evaluate", "--snn", evil, *DATA, "--T", "2"], "refused")
    fails(["convert", "-m", evil, "--stats", stats, "-o", tmp_path / "x.safetensors"], "refused")
    fails(["energy", "--snn", snn, "-m", evil, *DATA, "--T", "2"], "refused")
    out = tmp_path / "ann2.pt"
    torch.save({"payload": _Payload(marker)}, tmp_path / "ann2.pt.last.pt")
    out.write_bytes(ann.read_bytes())
    r = run(["train", *DATA, "--epochs", "2", "--width", "4", "--depth", "2", "-o", out, "--resume"], ok=False)
    assert r.exit_code != 0 and "refused" in r.output
    assert not marker.exists()


def test_old_pickled_snn_is_refused_with_a_way_out(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"kind": "sjunet-snn", "snn": torch.nn.Conv2d(1, 1, 1)}, old)  # a pickled module, as 0.1.0 wrote
    fails(["evaluate", "--snn", old, *DATA, "--T", "2"], "refused", "regenerate")


# ------------------------------------------------------------------------------ integrity checks

def test_bit_flips_are_detected(pipeline, tmp_path):
    _, ann, stats, snn = pipeline
    flipped = tmp_path / "snn.safetensors"
    raw = bytearray(snn.read_bytes())
    raw[-5] ^= 0x10  # a bit of the last tensor
    flipped.write_bytes(bytes(raw))
    fails(["evaluate", "--snn", flipped, *DATA, "--T", "2"], "integrity check failed")
    s2 = tmp_path / "stats.h5"
    s2.write_bytes(stats.read_bytes())
    with h5py.File(s2, "r+") as f:
        name = next(iter(f["nodes"]))
        f["nodes"][name].attrs["percentile"] = float(f["nodes"][name].attrs["percentile"]) * 1.5
    fails(["convert", "-m", ann, "--stats", s2, "-o", tmp_path / "x.safetensors"], "integrity check failed")
    a2 = tmp_path / "ann.pt"
    ck = torch.load(ann, weights_only=True)
    k = next(iter(ck["state_dict"]))
    ck["state_dict"][k] = ck["state_dict"][k].clone()
    ck["state_dict"][k].view(-1)[0] += 1e-3
    torch.save(ck, a2)
    fails(["evaluate", "-m", a2, *DATA], "integrity check failed")


# ----------------------------------------------------------------------------- lost results

def test_existing_outputs_are_refused_unless_force(pipeline, tmp_path):
    d, ann, stats, snn = pipeline
    before = snn.read_bytes()
    fails(["convert", "-m", ann, "--stats", stats, "-o", snn], "exists", "--force")
    assert snn.read_bytes() == before
    fails(["calibrate", "-m", ann, *DATA, "-o", stats], "exists")
    fails(["train", *DATA, "--epochs", "1", "--width", "4", "--depth", "2", "-o", ann], "exists", "--force")
    out = tmp_path / "eval.json"
    out.write_text("{}")
    fails(["evaluate", "--snn", snn, *DATA, "--T", "2", "-o", out], "exists")
    run(["convert", "-m", ann, "--stats", stats, "-o", snn, "--force"])


def test_unwritable_output_is_found_before_the_work(pipeline, tmp_path):
    _, ann, stats, _ = pipeline
    afile = tmp_path / "a-file"
    afile.write_text("x")
    fails(["calibrate", "-m", ann, *DATA, "-o", afile / "s.h5"], "cannot write")  # its "directory" is a file
    fails(["calibrate", "-m", ann, *DATA, "-o", tmp_path], "is a directory")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root)")
        fails(["calibrate", "-m", ann, *DATA, "-o", ro / "s.h5"], "cannot write")
    finally:
        ro.chmod(0o700)


def test_artifacts_have_normal_permissions_and_no_temporaries(pipeline):
    d, ann, stats, snn = pipeline
    old = os.umask(0o022)
    os.umask(old)
    for f in (ann, stats, snn):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~old, f
    assert not list(d.glob(".*.tmp"))
    for lock in d.glob(".*.lock"):  # lock files are kept (race-free locking), never symlinks
        assert lock.is_file() and not lock.is_symlink() and lock.stat().st_size < 100


def test_stale_temporaries_of_a_killed_run_are_removed(pipeline, tmp_path):
    _, ann, stats, _ = pipeline
    stale = tmp_path / ".snn.safetensors.999999999.abcd.tmp"  # a pid that does not exist
    stale.write_bytes(b"half")
    run(["convert", "-m", ann, "--stats", stats, "-o", tmp_path / "snn.safetensors"])
    assert not stale.exists()


# ------------------------------------------------------------------------------ bad options

@pytest.mark.parametrize("extra,needle", [
    (["--chunk", "0"], "--chunk"), (["--chunk", "-1"], "--chunk"), (["--limit", "0"], "--limit"),
    (["--T", "0"], "--T"),
])
def test_bad_evaluation_options(pipeline, extra, needle):
    _, _, _, snn = pipeline
    fails(["evaluate", "--snn", snn, *DATA, "--T", "2", *extra] if "--T" not in extra
          else ["evaluate", "--snn", snn, *DATA, *extra], needle)


@pytest.mark.parametrize("v_init", ["nan", "inf", "abc", "1e308"])
def test_bad_v_init(pipeline, tmp_path, v_init):
    _, ann, stats, _ = pipeline
    fails(["convert", "-m", ann, "--stats", stats, "--v-init", v_init, "-o", tmp_path / "x.safetensors"], "--v-init")
    assert not (tmp_path / "x.safetensors").exists()


def test_json_is_strict(pipeline, tmp_path):
    _, ann, _, snn = pipeline
    out = tmp_path / "e.json"
    run(["evaluate", "-m", ann, "--snn", snn, *DATA, "--T", "1", "-o", out])
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)


# ------------------------------------------------------------------------------ wrong data

def test_incompatible_model_and_data(pipeline, tmp_path):
    _, ann, stats, snn = pipeline
    fails(["evaluate", "-m", ann, *DENOISE], "segmentation", "denoising")
    fails(["evaluate", "--snn", snn, *DENOISE, "--T", "2"], "segmentation")
    fails(["calibrate", "-m", ann, "-d", "demo-denoise", "--opt", "color=true", "-o", tmp_path / "s.h5"],
          "segmentation")


def test_em_labels_stored_as_0_1_and_16bit_images(pipeline, tmp_path):
    """An EM-layout directory with 16-bit images and 0/1 labels reads correctly (not all one class)."""
    _, ann, _, _ = pipeline
    root = tmp_path / "em"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    g = np.random.default_rng(0)
    for i in range(12):
        img = (g.random((32, 32)) * 65535).astype(np.uint16)
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        Image.fromarray((g.random((32, 32)) > 0.5).astype(np.uint8)).save(root / "labels" / f"{i}.png")
    from sjunet.data import get_dataset

    x, y = get_dataset("em", root, "test", test_images=2, val_images=2)[0]
    assert 0.3 < float(x.mean()) < 0.7 and set(torch.unique(y).tolist()) == {0, 1}
    out = tmp_path / "r.json"
    run(["evaluate", "-m", ann, "-d", "em", "--data", root, "--opt", "test_images=2", "--opt", "val_images=2",
         "-o", out])
    r = json.loads(out.read_text())
    assert all(v is not None for v in r["ann"].values())


def test_truncated_image_names_the_file(pipeline, tmp_path):
    _, ann, _, _ = pipeline
    root = tmp_path / "em"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(12):
        Image.fromarray(np.full((32, 32), 100, np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(root / "labels" / f"{i}.png")
    bad = root / "images" / "11.png"
    bad.write_bytes(bad.read_bytes()[:60])
    fails(["evaluate", "-m", ann, "-d", "em", "--data", root, "--opt", "test_images=2", "--opt", "val_images=2"],
          "11.png")
