"""Trustworthy runs, end to end on tiny demo data: resume is bit-identical, divergence writes nothing and
exits non-zero, outputs are not overwritten by accident, budgets stop within an epoch, and fine-tuning
never returns something worse than its input."""
import pytest
import torch
from click.testing import CliRunner

from sjunet.cli.main import main
from sjunet.io import load_checkpoint, output_guard
from sjunet.models.checkpoint import load_ann
from sjunet.training import TrainOptions, train
from sjunet.training.loop import DivergedError

DATA = ["-d", "demo-seg", "--opt", "size=32", "--opt", "num_items=8"]
NET = ["--width", "4", "--depth", "2"]


def _cli(args):
    return CliRunner().invoke(main, args)


def _ok(args):
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def _opts(output, **kw):
    return TrainOptions(**{"dataset": "demo-seg", "dataset_options": {"size": 32, "num_items": 8}, "width": 4,
                           "depth": 2, "batch_size": 2, "epochs": 2, "output": str(output), **kw})


def _state(path):
    return load_checkpoint(path)["state_dict"]


def test_train_resume_mid_epoch_equals_uninterrupted(tmp_path):
    """(a) 2 epochs in one go vs. stopped by --max-iters in the middle of epoch 2, then --resume."""
    whole, split = tmp_path / "whole.pt", tmp_path / "split.pt"
    _, s = train(_opts(whole), progress=False)
    assert s["stopped"] == "epochs" and s["step"] == 8  # 8 items, batch 2: 4 iterations per epoch
    text = _ok(["train", *DATA, *NET, "--batch-size", "2", "--epochs", "2", "--max-iters", "6", "-o", str(split)])
    assert "--max-iters" in text and "-> " in text
    state = load_checkpoint(tmp_path / "split.pt.last.pt")
    assert (state["epoch"], state["iteration"], state["step"]) == (1, 2, 6)
    _ok(["train", *DATA, *NET, "--batch-size", "2", "--epochs", "2", "--resume", "-o", str(split)])
    a, b = load_checkpoint(tmp_path / "whole.pt.last.pt"), load_checkpoint(tmp_path / "split.pt.last.pt")
    assert b["step"] == 8
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for k, v in a["optimizer"]["state"].items():
        for name, t in v.items():
            assert torch.equal(b["optimizer"]["state"][k][name], t), (k, name)
    # the end-of-epoch validations agree too, and both best checkpoints load (fingerprint verified)
    ends = lambda st: {h["at"]: h["score"] for h in st["history"] if "iteration" not in h["at"]}  # noqa: E731
    assert ends(a) == ends(b) and len(ends(a)) == 2
    load_ann(whole), load_ann(split)


def test_resume_with_other_options_is_refused(tmp_path):
    out = tmp_path / "a.pt"
    _ok(["train", *DATA, *NET, "--batch-size", "2", "--epochs", "2", "--max-iters", "1", "-o", str(out)])
    r = _cli(["train", *DATA, *NET, "--batch-size", "4", "--epochs", "2", "--resume", "-o", str(out)])
    assert r.exit_code != 0 and "batch_size" in r.output and "-> " not in r.output


def test_nan_loss_is_an_error_and_writes_nothing(tmp_path):
    """(b) lr 1e6 makes the loss NaN within the first epoch."""
    out = tmp_path / "nan.pt"
    try:
        train(_opts(out, lr=1e6, batch_size=4), progress=False)
        raise AssertionError("no DivergedError")
    except DivergedError as e:
        assert "lower --lr" in str(e) and "nothing was written" in str(e) and e.epoch == 0
    assert not out.exists() and not (tmp_path / "nan.pt.last.pt").exists()
    r = _cli(["train", *DATA, *NET, "--batch-size", "4", "--lr", "1e6", "-o", str(out)])
    assert r.exit_code != 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1 and "diverged" in lines[0]
    assert "->" not in r.output and not out.exists()


def test_nan_later_keeps_the_best_so_far(tmp_path, monkeypatch):
    """A NaN in epoch 2 stops the run; the epoch-1 checkpoint stays, and the message says so."""
    from sjunet.tasks import SegmentationTask

    calls = []
    loss = SegmentationTask.loss

    def nan_on_third(self, output, target):
        calls.append(1)
        value = loss(self, output, target)
        return value * float("nan") if len(calls) == 3 else value

    monkeypatch.setattr(SegmentationTask, "loss", nan_on_third)
    out = tmp_path / "m.pt"
    r = _cli(["train", *DATA, *NET, "--batch-size", "4", "--epochs", "3", "-o", str(out)])
    assert r.exit_code != 0 and "epoch 2, iteration 1/2" in r.output and "holds the best so far (epoch 1)" in r.output
    assert load_ann(out)[1]["epoch"] == 0


def test_existing_output_refused_unless_force_and_locked_output_refused(tmp_path):
    """(c)"""
    out = tmp_path / "a.pt"
    _ok(["train", *DATA, *NET, "--epochs", "1", "--seed", "1", "-o", str(out)])
    first = out.read_bytes()
    r = _cli(["train", *DATA, *NET, "--epochs", "1", "-o", str(out)])
    assert r.exit_code != 0 and "--force" in r.output and out.read_bytes() == first
    _ok(["train", *DATA, *NET, "--epochs", "1", "--seed", "2", "--force", "-o", str(out)])
    assert load_ann(out)[1]["options"]["seed"] == 2
    # an unfinished run's state is not clobbered either
    (tmp_path / "b.pt.last.pt").write_bytes(b"state of an unfinished run")
    r = _cli(["train", *DATA, *NET, "--epochs", "1", "-o", str(tmp_path / "b.pt")])
    assert r.exit_code != 0 and "--resume" in r.output
    # a second run on an output that another run holds is refused
    locked = tmp_path / "c.pt"
    with output_guard(locked):
        r = _cli(["train", *DATA, *NET, "--epochs", "1", "-o", str(locked)])
        assert r.exit_code != 0 and "another sjunet run" in r.output and not locked.exists()
    _ok(["train", *DATA, *NET, "--epochs", "1", "-o", str(locked)])  # released


def test_nonsense_options_and_unwritable_output_refused_up_front(tmp_path):
    out = tmp_path / "x.pt"
    for bad in (["--epochs", "0"], ["--batch-size", "0"], ["--lr", "0"], ["--lr", "-1e-3"],
                ["--max-minutes", "0"], ["--max-minutes", "-2"], ["--max-iters", "0"]):
        r = _cli(["train", *DATA, *NET, *bad, "-o", str(out)])
        assert r.exit_code != 0 and bad[0] in r.output and "Traceback" not in r.output, (bad, r.output)
        assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1, r.output
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = _cli(["train", *DATA, *NET, "-o", str(blocker / "ann.pt")])
    assert r.exit_code != 0 and "cannot write" in r.output and "epoch" not in r.output
    assert not out.exists()


def test_max_minutes_stops_after_one_iteration(tmp_path):
    """(d) an epoch of 8 iterations and a budget of 0.6 ms: one iteration, then validate and save."""
    out = tmp_path / "t.pt"
    text = _ok(["train", *DATA, *NET, "--batch-size", "1", "--epochs", "2", "--max-minutes", "0.00001", "-o", str(out)])
    assert "--max-minutes" in text
    model, ckpt = load_ann(out)
    assert ckpt["step"] == 1 and ckpt["at"] == "epoch 1, iteration 1/8"
    state = load_checkpoint(tmp_path / "t.pt.last.pt")
    assert (state["epoch"], state["iteration"], state["step"]) == (0, 1, 1)
    # and resuming it continues to the same weights as an uninterrupted run
    _ok(["train", *DATA, *NET, "--batch-size", "1", "--epochs", "1", "--resume", "-o", str(out)])
    whole = tmp_path / "w.pt"
    _ok(["train", *DATA, *NET, "--batch-size", "1", "--epochs", "1", "-o", str(whole)])
    a, b = _state(tmp_path / "t.pt.last.pt"), _state(tmp_path / "w.pt.last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A converted SNN of a tiny ANN trained for 2 epochs."""
    d = tmp_path_factory.mktemp("snn")
    ann, stats, snn = d / "ann.pt", d / "stats.h5", d / "snn.pt"
    _ok(["train", *DATA, *NET, "--epochs", "2", "--batch-size", "4", "--optimizer", "adam", "--lr", "5e-3",
         "-o", str(ann)])
    _ok(["calibrate", "-m", str(ann), *DATA, "-o", str(stats)])
    _ok(["convert", "-m", str(ann), "--stats", str(stats), "-o", str(snn)])
    return snn


def test_finetune_never_returns_worse_than_its_input(tmp_path, converted):
    """(e) an absurd lr wrecks the SNN; the output is the input SNN and its record says so."""
    from sjunet.conversion.recipe import load_snn
    from sjunet.data import get_dataset
    from sjunet.evaluation import evaluate_snn
    from sjunet.tasks import task_for
    from sjunet.training.finetuning import finetune_record

    snn, ft = converted, tmp_path / "ft.pt"
    text = _ok(["finetune", "--snn", str(snn), *DATA, "--T", "3", "--epochs", "2", "--batch-size", "4",
                "--lr", "10", "--optimizer", "sgd", "--schedule", "constant", "-o", str(ft)])
    rec = finetune_record(load_snn(ft)[1])
    # selection is on the headline metric (f1_vessel): this tiny input SNN finds no vessels (F1 0), so a wrecked
    # network that marks everything as vessel may beat it; either way the output is never worse than the input
    assert rec["score"] >= rec["input_score"] and rec["metric"] == "f1_vessel"
    if rec["kept"] == "input":
        assert "fine-tuning did not improve on the converted SNN" in text and "the output is the input SNN" in text
        assert rec["improvement"] == 0.0 and len(rec["history"]) == 1  # nothing later beat the input
    else:
        assert "fine-tuning improved on the converted SNN: validation f1_vessel" in text
    # the output's validation score is the converted SNN's (>=, and here equal)
    val = get_dataset("demo-seg", None, "val", size=32, num_items=8)
    task = task_for(val)
    score = lambda path: task.score(evaluate_snn(load_snn(path)[0], val, [3], task, multiple=4,  # noqa: E731
                                                 progress=False)["T"]["3"])
    assert score(ft) >= score(snn)
    # an existing fine-tuning output is refused too
    r = _cli(["finetune", "--snn", str(snn), *DATA, "--T", "3", "--epochs", "1", "-o", str(ft)])
    assert r.exit_code != 0 and "--force" in r.output


@pytest.mark.parametrize("lr", ["1e-3", "auto"])
def test_finetune_resume_mid_epoch_equals_uninterrupted(tmp_path, converted, lr):
    """The fine-tuning loop is the same loop: cosine schedule, eval-mode SNN, stop after 3 of 4 iterations;
    with lr auto the resumed run keeps the rate the interrupted one chose (no new trials)."""
    args = ["finetune", "--snn", str(converted), *DATA, "--T", "2", "--epochs", "2", "--batch-size", "2",
            "--lr", lr, "--val-every", "3"]
    # --max-iters bounds lr auto's trials too (a budget of 3 or 8 skips them, lr 1e-4): give the uninterrupted
    # run a budget as well (8 = its whole length), so both choose the rate the same way
    _ok([*args, *(["--max-iters", "8"] if lr == "auto" else []), "-o", str(tmp_path / "whole.pt")])
    _ok([*args, "--max-iters", "3", "-o", str(tmp_path / "split.pt")])
    _ok([*args, "--resume", "-o", str(tmp_path / "split.pt")])
    a, b = load_checkpoint(tmp_path / "whole.pt.last.pt"), load_checkpoint(tmp_path / "split.pt.last.pt")
    assert a["step"] == b["step"] == 8 and a["scheduler"]["last_epoch"] == 8
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert [h["score"] for h in a["history"]] == [h["score"] for h in b["history"]]


def test_finetune_nan_keeps_the_input(tmp_path, converted, monkeypatch):
    import sjunet.training.flow

    calls = []
    flow_loss = sjunet.training.flow.flow_loss

    def nan_on_second(task, output, target, T):
        calls.append(1)
        value = flow_loss(task, output, target, T)
        return value * float("nan") if len(calls) == 2 else value

    monkeypatch.setattr(sjunet.training.flow, "flow_loss", nan_on_second)
    out = tmp_path / "ft.pt"
    r = _cli(["finetune", "--snn", str(converted), *DATA, "--T", "2", "--batch-size", "4", "--lr", "1e-4", "-o", str(out)])
    assert r.exit_code != 0 and "diverged" in r.output and "holds the best so far (the input)" in r.output
    assert "->" not in r.output and out.exists()


def test_finetune_auto_lr_and_distillation_record_their_choice(tmp_path, converted):
    from sjunet.conversion.recipe import load_snn
    from sjunet.training.finetuning import LR_CANDIDATES

    out = tmp_path / "ft.safetensors"
    text = _ok(["finetune", "--snn", str(converted), *DATA, "--T", "1", "--batch-size", "4", "--epochs", "1",
                "--lr", "auto", "--loss", "both", "--layer-weight", "0.5", "--warmup", "2", "--grad-clip", "1.0",
                "-o", str(out)])
    rec = load_snn(out)[1]["finetune"]
    assert rec["lr"] in LR_CANDIDATES and set(map(float, rec["lr_trials"])) == set(LR_CANDIDATES)
    assert rec["options"]["loss"] == "both" and "fine-tuning" in text
    r = _cli(["finetune", "--snn", str(converted), *DATA, "--T", "1", "--lr", "fast", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--lr" in r.output
