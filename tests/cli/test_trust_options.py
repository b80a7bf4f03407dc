"""Bad input is one clear line before any work: resume-state names and contents, --opt values, image
sizes a U-Net cannot take, -o paths, absurd --T, results JSON that is not a result."""
import json

import pytest
import torch
from click.testing import CliRunner

from sjunet.cli.main import main
from sjunet.data import get_dataset
from sjunet.training.run import last_path, run_outputs

DATA = ["-d", "demo-seg", "--opt", "size=32", "--opt", "num_items=8"]
NET = ["--width", "4", "--depth", "2", "--batch-size", "4"]


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _ok(args):
    r = _run(args)
    assert r.exit_code == 0, r.output
    return r.output


def _refused(args, *needles):
    """Exit code 2 and exactly one ``Error:`` line (no traceback) holding every needle."""
    r = _run(args)
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust")
    ann, stats, snn = d / "ann.pt", d / "stats.h5", d / "snn.safetensors"
    _ok(["train", *DATA, *NET, "--epochs", "1", "-o", ann])
    _ok(["calibrate", "-m", ann, *DATA, "-o", stats])
    _ok(["convert", "-m", ann, "--stats", stats, "-o", snn])
    return d, ann, stats, snn


# ----------------------------------------------------------------------------- 1. .last.pt names

def test_state_file_is_named_after_the_whole_output(tmp_path):
    assert last_path(tmp_path / "m.pt").name == "m.pt.last.pt"
    assert last_path(tmp_path / "m.safetensors").name == "m.safetensors.last.pt"


def test_force_on_one_output_keeps_another_outputs_state(tmp_path):
    state = last_path(tmp_path / "m.pt")
    state.write_bytes(b"the resume state of train -o m.pt")
    with run_outputs(tmp_path / "m.safetensors", force=True):
        pass
    assert state.read_bytes() == b"the resume state of train -o m.pt"


# ----------------------------------------------------------------------------- 2. crafted .last.pt

@pytest.fixture
def stopped_run(tmp_path):
    out = tmp_path / "r.pt"
    _ok(["train", *DATA, *NET, "--epochs", "2", "--max-iters", "1", "-o", out])
    return out, last_path(out)


@pytest.mark.parametrize("tamper, needle", [
    (lambda s: {**s, "order": 1e9}, "order"),
    (lambda s: {**s, "order": torch.zeros(2, dtype=torch.int64)}, "order"),
    (lambda s: {**s, "epoch": 10 ** 9}, "epoch"),
    (lambda s: {**s, "iteration": -1}, "iteration"),
    (lambda s: {k: v for k, v in s.items() if k != "rng"}, "missing rng"),
    (lambda s: {**s, "generator": torch.zeros(3)}, "generator"),
    (lambda s: [1, 2, 3], "not a dict"),
])
def test_crafted_resume_state_is_one_line(stopped_run, tamper, needle):
    out, last = stopped_run
    torch.save(tamper(torch.load(last, weights_only=True)), last)
    _refused(["train", *DATA, *NET, "--epochs", "2", "--resume", "-o", out],
             str(last), "the resume state is corrupt or not from this run", needle, "without --resume")


# ----------------------------------------------------------------------------- 3. --opt values

def test_boolean_options_are_parsed_strictly():
    assert get_dataset("demo-seg", None, "train", flip="no").flip is False
    assert get_dataset("demo-seg", None, "train", flip="ON").flip is True
    assert get_dataset("demo-seg", None, "train", cache="off").cache is False


@pytest.mark.parametrize("opts, needles", [
    (["-d", "demo-seg", "--opt", "flip=maybe"], ["flip", "true or false"]),
    (["-d", "demo-denoise", "--opt", "crop=abc"], ["crop", "[height, width]"]),
    (["-d", "demo-denoise", "--opt", "samples_per_epoch=-1"], ["samples_per_epoch", "1..10000000"]),
    (["-d", "em", "--opt", "val_images=0"], ["val_images", "1..100000"]),
    (["-d", "demo-seg", "--opt", "size=1e6"], ["size", "16..4096"]),
    (["-d", "demo-seg", "--opt", "colour=1"], ["unknown option", "valid options: size, num_items"]),
    (["-d", "demo-seg", "--opt", "=1"], ["KEY=VALUE"]),
])
def test_bad_dataset_options_are_one_line(tmp_path, opts, needles):
    _refused(["train", *opts, *NET, "--epochs", "1", "-o", tmp_path / "x.pt"], *needles)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- 4. image sizes

@pytest.mark.parametrize("opts, depth, needles", [
    (["--opt", "size=24"], 4, ["24×24", "multiples of 16 (2**4)", "--opt size="]),
    ([], 7, ["64×64", "multiples of 128 (2**7) and at least 128"]),
])
def test_images_that_cannot_pass_the_unet_are_refused_before_training(tmp_path, opts, depth, needles):
    _refused(["train", "-d", "demo-seg", *opts, "--width", "4", "--depth", str(depth), "--epochs", "1",
              "-o", tmp_path / "x.pt"], "cannot pass a depth-", *needles)
    assert not (tmp_path / "x.pt").exists()


def test_calibration_data_must_fit_the_ann(pipe, tmp_path):
    _, ann, _, _ = pipe
    _refused(["calibrate", "-m", ann, "-d", "demo-seg", "--opt", "size=18", "-o", tmp_path / "s.h5"],
             "18×18", "multiples of 4")


# ----------------------------------------------------------------------------- 5. -o paths

@pytest.mark.parametrize("command", ["evaluate", "convert"])
def test_output_paths_that_are_directories_or_under_files(pipe, tmp_path, command):
    _, ann, stats, snn = pipe
    args = {"evaluate": ["evaluate", "-m", ann, *DATA, "--limit", "1"],
            "convert": ["convert", "-m", ann, "--stats", stats]}[command]
    _refused([*args, "-o", f"{tmp_path / 'newdir'}/"], "is a directory", "give a file name")
    assert not (tmp_path / "newdir").exists()
    (tmp_path / "file").write_text("x")
    _refused([*args, "-o", tmp_path / "file" / "sub.json"], "is a file, not a directory")


def test_demo_out_must_be_a_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    _refused(["demo", "--out", tmp_path / "f"], "is a file, not a directory")


# ----------------------------------------------------------------------------- 6. --T

def test_absurd_T_is_refused_up_front(pipe, tmp_path):
    _, ann, _, snn = pipe
    for args in (["evaluate", "--snn", snn, *DATA], ["energy", "--snn", snn, *DATA],
                 ["finetune", "--snn", snn, *DATA, "-o", tmp_path / "ft.safetensors"],
                 ["train", "--spiking", *DATA, *NET, "-o", tmp_path / "d.safetensors"]):
        _refused([*args, "--T", "1000000"], "--T 1000000", "≤ 100000")
    assert not list(tmp_path.iterdir())


def test_expensive_T_warns_with_the_cost(pipe):
    _, _, _, snn = pipe
    out = _ok(["evaluate", "--snn", snn, *DATA, "--limit", "1", "--T", "1001"])
    assert "warning: T = 1001 steps: about 1001× an ANN pass per image" in out


# ----------------------------------------------------------------------------- 7. results JSON

@pytest.mark.parametrize("text, needle", [
    ("[1, 2, 3]", "JSON list, not an object"),
    ("[" * 100000, "nested deeper"),
    ('{"split": "test"}', "no 'T'"),
    ('{"T": {"10": 3}}', "T[10] is int"),
    ('{"T": {"ten": {}}}', "not a positive number of steps"),
    ("not json", "invalid JSON"),
])
@pytest.mark.parametrize("kind", ["metric-vs-T", "metric-vs-energy"])
def test_results_that_are_not_results_are_one_line(tmp_path, text, needle, kind):
    bad = tmp_path / "r.json"
    bad.write_text(text)
    if kind == "metric-vs-energy" and needle == "T[10] is int":
        needle = "lacks its 'energy' and 'metrics'"
    _refused(["plot", kind, bad, "-o", tmp_path / "p.png"], str(bad), needle)
    assert not (tmp_path / "p.png").exists()


def test_a_real_result_still_plots(pipe, tmp_path):
    _, ann, _, snn = pipe
    res = tmp_path / "r.json"
    _ok(["evaluate", "-m", ann, "--snn", snn, *DATA, "--limit", "1", "--T", "2", "4", "-o", res])
    assert json.loads(res.read_text())["T"]
    _ok(["plot", "metric-vs-T", res, "-o", tmp_path / "p.png"])
