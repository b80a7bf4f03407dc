"""torchrun / DDP (spec §13): two gloo processes on the CPU give the parameters of one process on
the concatenated batch, for `train` and `finetune`, and the same metrics for `evaluate`."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sjunet.cli.main import main

DATA = ["-d", "demo-seg", "--opt", "size=32", "--opt", "num_items=8"]
NET = ["--width", "4", "--depth", "2"]


def _sjunet() -> str:
    exe = Path(sys.executable).with_name("sjunet")
    return str(exe) if exe.exists() else shutil.which("sjunet")


def _torchrun(args, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python",
           _sjunet(), *[str(a) for a in args]]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    if p.returncode != 0 and "Signal 6 (SIGABRT)" in p.stderr:
        # seen under load on the 2-core machine, never alone: a worker aborting in gloo's set-up or
        # teardown; one retry, and a second failure is a failure. The aborted attempt may have written
        # its output already, so the retry replaces it (--force)
        p = subprocess.run([*cmd, "--force"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _one(args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def _state(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    ann, stats, snn = d / "ann.pt", d / "stats.h5", d / "snn.safetensors"
    _one(["train", *DATA, *NET, "--epochs", "2", "--batch-size", "4", "--optimizer", "adam", "--lr", "5e-3",
          "-o", ann])
    _one(["calibrate", "-m", ann, *DATA, "-o", stats])
    _one(["convert", "-m", ann, "--stats", stats, "-o", snn])
    return d, ann, snn


def test_two_processes_train_like_one_on_the_whole_batch(tmp_path):
    common = ["train", *DATA, *NET, "--epochs", "2", "--max-iters", "3", "--batch-size", "4", "--optimizer", "adam",
              "--lr", "1e-3", "--seed", "3"]
    _one([*common, "-o", tmp_path / "one.pt"])
    p = _torchrun([*common, "-o", tmp_path / "two.pt"], tmp_path)
    assert p.stdout.count("best:") == 1  # one rank prints
    a, b = _state(tmp_path / "one.pt.last.pt"), _state(tmp_path / "two.pt.last.pt")
    assert a["step"] == b["step"] == 3
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-5, rtol=1e-4), k
    assert _state(tmp_path / "two.pt")["provenance"]["world_size"] == 2
    assert _state(tmp_path / "one.pt")["provenance"]["world_size"] == 1
    assert abs(a["history"][-1]["score"] - b["history"][-1]["score"]) < 1e-6  # validation merged across ranks


def test_two_processes_finetune_like_one_on_the_whole_batch(tmp_path, converted):
    _, _, snn = converted
    common = ["finetune", "--snn", snn, *DATA, "--T", "2", "--epochs", "1", "--max-iters", "2", "--batch-size", "4",
              "--lr", "1e-3", "--seed", "1"]
    _one([*common, "-o", tmp_path / "one.safetensors"])
    _torchrun([*common, "-o", tmp_path / "two.safetensors"], tmp_path)
    a, b = _state(tmp_path / "one.safetensors.last.pt"), _state(tmp_path / "two.safetensors.last.pt")
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-5, rtol=1e-4), k


def test_two_processes_evaluate_like_one(tmp_path, converted):
    _, ann, snn = converted
    common = ["evaluate", "-m", ann, "--snn", snn, *DATA, "--T", "2", "4"]
    _one([*common, "-o", tmp_path / "one.json"])
    _torchrun([*common, "-o", tmp_path / "two.json"], tmp_path)
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert a["ann"] == b["ann"]
    for t in ("2", "4"):
        assert a["T"][t] == b["T"][t]
    assert b["provenance"]["world_size"] == 2
