"""The first hour with sjunet (issue 20): checkpoints are selected on the dataset's headline metric
(vessel F1, not the background-dominated mean F1), budgets bound everything they claim (the
``lr auto`` trials count against ``--max-iters``), a run says why it stopped, ``--arch`` without
``--weights`` is refused, class weights are computed and recorded, and ``sjunet demo`` draws its
predictions and says where everything went. Tiny demo data throughout."""
import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sjunet.cli.main import main
from sjunet.cli.options import ARCH_NEEDS_WEIGHTS
from sjunet.tasks import DenoisingTask, SegmentationTask, resolve_class_weights, task_for
from sjunet.training.loop import LoopOptions, fit

DATA = ["-d", "demo-seg", "--opt", "size=32", "--opt", "num_items=8"]
NET = ["--width", "4", "--depth", "2", "--batch-size", "4"]


def _cli(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _ok(args):
    r = _cli(args)
    assert r.exit_code == 0, r.output
    return r.output


# ------------------------------------------------------------------------- 1. the headline metric

def test_headline_metric_of_each_dataset():
    from sjunet.data import get_dataset
    from sjunet.data.em import EMDataset
    from sjunet.tasks import _declared_foreground

    assert task_for(get_dataset("demo-seg", None, "val", size=32, num_items=2)).metric == "f1_vessel"
    assert _declared_foreground(EMDataset, EMDataset.CLASS_NAMES) == 0  # membrane, declared
    assert SegmentationTask(2, ("membrane", "interior"), 0).metric == "f1_membrane"
    assert SegmentationTask(2, ("background", "vessel"), 1).metric == "f1_vessel"
    assert SegmentationTask(11).metric == "miou" and DenoisingTask(1).metric == "psnr"


class _Items(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.full((1,), float(i)), torch.zeros(1)


def test_selection_uses_the_headline_metric_not_the_mean_f1(tmp_path):
    """The reported case: the mean F1 of both classes rises while the vessel F1 falls (0.3634 →
    0.3593): not an improvement; the run keeps the input and its messages name the metric."""
    task = SegmentationTask(2, ("background", "vessel"), 1)
    vals = [{"f1_background": 0.9500, "f1_vessel": 0.3634, "accuracy": 0.9},
            {"f1_background": 0.9800, "f1_vessel": 0.3593, "accuracy": 0.95}]
    mean = [sum(v[k] for k in ("f1_background", "f1_vessel")) / 2 for v in vals]
    assert mean[1] > mean[0] and task.score(vals[1]) < task.score(vals[0])
    calls = []

    def validate():
        v = vals[min(len(calls), len(vals) - 1)]
        calls.append(1)
        return task.score(v), v

    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    saves = []
    s = fit(model, lambda x, y: ((model(x) - y) ** 2).mean(), _Items(), validate,
            LoopOptions(epochs=1, batch_size=4, progress=False, metric=task.metric),
            lambda entry, history: saves.append(entry["at"]), optimizer=opt, last=tmp_path / "m.last.pt",
            kind="toy-last", baseline=True)
    assert not s["improved"] and s["best"]["at"] == "input" and saves == ["input"]
    assert s["metric"] == "f1_vessel" and s["best"]["score"] == pytest.approx(0.3634)
    assert s["stopped"] == "epochs" and s["stopped_message"] == "stopped: --epochs 1 reached after 1 iteration"


# ------------------------------------------------------------------------- 2. budgets and stop reasons

@pytest.fixture(scope="module")
def snn_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("fh")
    ann, stats, snn = d / "ann.pt", d / "stats.h5", d / "snn.safetensors"
    _ok(["train", *DATA, *NET, "--epochs", "1", "--class-weights", "none", "-o", str(ann)])
    _ok(["calibrate", "-m", str(ann), *DATA, "-o", str(stats)])
    _ok(["convert", "-m", str(ann), "--stats", str(stats), "-o", str(snn)])
    return snn


@pytest.mark.parametrize("max_iters,trial_iters", [(40, 2), (10, 0)])
def test_max_iters_bounds_the_lr_trials(snn_file, tmp_path, monkeypatch, max_iters, trial_iters):
    """--max-iters 40: the trials take a quarter (2 iterations × 4 rates) and training the rest (32);
    --max-iters 10: too small for trials (skipped, lr 1e-4), training takes all 10."""
    from sjunet.conversion.recipe import load_snn
    from sjunet.training import finetuning

    calls = []
    real = finetuning.finetune_loss

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(finetuning, "finetune_loss", counting)
    opts = finetuning.FinetuneOptions(dataset="demo-seg", output=str(tmp_path / "ft.safetensors"),
                                      dataset_options={"size": 32, "num_items": 8}, T=2, epochs=100,
                                      batch_size=1, max_iters=max_iters, class_weights="none")
    _, s = finetuning.finetune(load_snn(snn_file)[0], opts, progress=False)
    assert len(calls) == max_iters  # every iteration of trials and training together
    assert s["lr_trial_iters"] == trial_iters and s["step"] == max_iters - 4 * trial_iters
    assert s["stopped"] == "max_iters" and s["stopped_message"].startswith(f"stopped: --max-iters {max_iters} reached")
    if trial_iters == 0:
        assert s["lr"] == finetuning.LR_FALLBACK and s["lr_trials"] is None
    assert set(s["timing"]) == {"setup", "lr_trials", "baseline_validation", "training"}


def test_stop_reason_and_metric_are_printed(tmp_path):
    out = _ok(["train", *DATA, *NET, "--epochs", "1", "--max-iters", "100", "-o", str(tmp_path / "a.pt")])
    assert "stopped: --epochs 1 reached after 2 iterations (before --max-iters 100)" in out
    assert "(validation f1_vessel " in out and "selection: f1_vessel" in out
    assert "time: set-up" in out and "count lr trials and training only" in out


# ------------------------------------------------------------------------- 3. --arch without --weights

def test_arch_without_weights_is_refused(tmp_path):
    arch = ["--arch", "sjunet.models.fcn:SpikingFCNNet", "--arch-kwargs", '{"width": 4}']
    for verb in (["calibrate", *arch, *DATA, "-o", str(tmp_path / "s.h5")],
                 ["convert", *arch, "--stats", str(tmp_path / "s.h5"), "-o", str(tmp_path / "x.safetensors")],
                 ["evaluate", *arch, *DATA],
                 ["energy", "--snn", str(tmp_path / "x.safetensors"), *arch, *DATA]):
        r = CliRunner().invoke(main, verb)
        assert r.exit_code == 2, (verb[0], r.output)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert lines == [f"Error: {ARCH_NEEDS_WEIGHTS}"], (verb[0], r.output)
    assert not (tmp_path / "s.h5").exists()
    # on purpose: allowed
    _ok(["calibrate", *arch, "--random-weights", *DATA, "--max-batches", "1", "-o", str(tmp_path / "s.h5")])


# ------------------------------------------------------------------------- 4. class weights

class _Labels(torch.utils.data.Dataset):
    def __init__(self, fraction):
        self.y = torch.zeros(10, 10, dtype=torch.long)
        self.y.view(-1)[: int(100 * fraction)] = 1

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.zeros(1, 10, 10), self.y


def test_class_weights_inverse_frequency_and_rule():
    task = SegmentationTask(2, ("background", "vessel"), 1)
    w, rec = resolve_class_weights("auto", task, _Labels(0.1))
    assert rec["frequencies"] == pytest.approx([0.9, 0.1])
    assert w == pytest.approx((0.2, 1.8)) and sum(w) / 2 == pytest.approx(1.0)  # 1/f, mean 1
    assert "inverse class frequency" in rec["rule"]
    w, rec = resolve_class_weights("auto", task, _Labels(0.3))  # the foreground is not rare
    assert w is None and "not under 20%" in rec["rule"]
    assert resolve_class_weights("none", task, _Labels(0.1))[0] is None
    assert resolve_class_weights("1,5", task, _Labels(0.1))[0] == (1.0, 5.0)
    with pytest.raises(ValueError, match="2 classes"):
        resolve_class_weights("1,2,3", task, _Labels(0.1))
    # the loss uses them: a wrong foreground pixel costs more than a wrong background one
    task.class_weights = (0.2, 1.8)
    out = torch.zeros(1, 2, 1, 2)
    out[0, 0] = 1.0  # predicts background everywhere
    assert task.loss(out, torch.tensor([[[1, 1]]])) == pytest.approx(
        SegmentationTask(2).loss(out, torch.tensor([[[1, 1]]])))  # one class present: the weighted mean is the same
    mixed = torch.tensor([[[0, 1]]])
    assert task.loss(out, mixed) > SegmentationTask(2).loss(out, mixed)


def test_class_weights_recorded_in_the_checkpoint(tmp_path):
    from sjunet.models.checkpoint import load_ann

    _ok(["train", *DATA, *NET, "--epochs", "1", "--class-weights", "1,4", "-o", str(tmp_path / "w.pt")])
    opts = load_ann(tmp_path / "w.pt")[1]["options"]
    assert opts["class_weights"]["weights"] == [1.0, 4.0] and opts["class_weights"]["rule"] == "given"
    out = _ok(["train", *DATA, *NET, "--epochs", "1", "-o", str(tmp_path / "a.pt")])  # default: auto
    rec = load_ann(tmp_path / "a.pt")[1]["options"]["class_weights"]
    assert rec["spec"] == "auto" and len(rec["frequencies"]) == 2 and "class weights" in out
    r = _cli(["train", *DATA, "--class-weights", "heavy", "-o", str(tmp_path / "b.pt")])
    assert r.exit_code == 2 and "--class-weights" in r.output


# ------------------------------------------------------------------------- 5. the demo

def test_demo_draws_its_predictions_and_says_where_everything_went(tmp_path):
    out = _ok(["demo", "--epochs", "1", "--T", "2", "--opt", "size=32", "--opt", "num_items=6", "--out", str(tmp_path)])
    figure = tmp_path / "seg" / "predictions.png"
    assert figure.read_bytes()[:4] == b"\x89PNG"
    assert str(figure) in out and str(tmp_path / "seg" / "snn_layer.safetensors") in out
    for word in ("MT:", "T:", "layer-wise", "agreement:", "PSNR against the ANN (dB):"):
        assert word in out, word
    assert "agreement" in (tmp_path / "seg" / "report.md").read_text()
    json.loads((tmp_path / "seg" / "summary.json").read_text())


def test_every_demo_takes_the_same_quick_options():
    """``--quick`` and ``--opt size=… --opt num_items=…`` mean the same for every demo task: each demo
    data set takes both, in every split."""
    from sjunet.data import get_dataset
    from sjunet.demo import DEMOS, QUICK

    for task, cfg in DEMOS.items():
        for opts in (QUICK[task]["dataset_options"], {"size": 32, "num_items": 3}):
            for split in ("train", "val", "test"):
                ds = get_dataset(cfg["dataset"], None, split, **opts)
                assert 1 <= len(ds) <= max(opts["num_items"], 64), (task, split)
                x, _ = ds[0]
                assert max(x.shape[1:]) <= max(opts["size"], 64)


def test_a_demo_replaces_its_folder_only_when_it_completes(tmp_path, monkeypatch):
    """A demo stopped midway leaves the previous run's folder as it was (no mix of old and new
    files); the next complete run replaces it whole."""
    import sjunet.demo as demo

    old = tmp_path / "seg"
    old.mkdir()
    (old / "report.md").write_text("the previous run")

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "evaluate", stopped)
    tiny = {"size": 32, "num_items": 4}
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo("seg", tmp_path, epochs=1, T=(1,), progress=False, images=1, dataset_options=tiny)
    assert sorted(p.name for p in old.iterdir()) == ["report.md"] and (old / "report.md").read_text() == "the previous run"
    monkeypatch.undo()
    r = demo.run_demo("seg", tmp_path, epochs=1, T=(1,), progress=False, images=1, dataset_options=tiny)
    assert "the previous run" not in (old / "report.md").read_text() and (old / "ann.pt").exists()
    assert r["outputs"]["ANN checkpoint"] == str(old / "ann.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["seg"]  # no partial or old folder left


def test_a_degenerate_model_is_named_and_recorded(tmp_path, monkeypatch):
    """One class everywhere (or a constant image) is detected on the validation data; ``train``
    records the reason in its checkpoint, so every later command can repeat it."""
    from sjunet.data import get_dataset
    from sjunet.evaluation.degenerate import KEY, check_model, recorded, warning_line

    val = get_dataset("demo-seg", None, "val", size=32, num_items=4)

    class Const(nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x):
            return self.out.expand(x.shape[0], -1, *x.shape[2:])

    one_class = Const(torch.tensor([2.0, -1.0]).view(1, 2, 1, 1))
    reason = check_model(one_class, val, multiple=1)
    assert reason == "it predicts one class ('background') on every pixel of 4 images"
    assert "looks broken" in warning_line(reason) and "background" in warning_line(reason)
    torch.manual_seed(0)
    assert check_model(nn.Conv2d(1, 2, 3, padding=1), val, multiple=1) is None  # random weights: both classes
    den = get_dataset("demo-denoise", None, "val", size=32, num_items=2)
    assert "same constant" in check_model(Const(torch.zeros(1, 1, 1, 1)), den, multiple=1)
    assert check_model(nn.Conv2d(1, 1, 3, padding=1), den, multiple=1) is None

    class OneSize(Const):  # a model of one input size (a ViT's position embeddings) sees its windows only
        def forward(self, x):
            assert x.shape[-2:] == (16, 16), x.shape
            return super().forward(x)

    assert check_model(OneSize(one_class.out), get_dataset("demo-seg", None, "val", size=40, num_items=2),
                       multiple=16, protocol={"name": "patch", "patch": 16, "stride": 16}) == (
        "it predicts one class ('background') on every pixel of 2 images")

    import sjunet.training.ann as training

    monkeypatch.setattr(training, "check_model", lambda *a, **k: "it predicts one class ('background')")
    out = tmp_path / "ann.pt"
    _, summary = training.train(training.TrainOptions(dataset="demo-seg", dataset_options={"size": 32, "num_items": 4},
                                                      output=str(out), epochs=1, width=4, depth=2, batch_size=4),
                                progress=False)
    ckpt = torch.load(out, weights_only=True)
    assert summary["degenerate"] == ckpt[KEY] == recorded(ckpt) == "it predicts one class ('background')"


def test_every_command_repeats_a_broken_model_warning(snn_file, tmp_path):
    """A checkpoint that ``train`` found broken: ``calibrate``, ``convert``, ``finetune`` and ``energy``
    each say so in one line, and carry the note into what they write."""
    from sjunet.conversion.recipe import load_snn
    from sjunet.calibration.reader import read_stats
    from sjunet.evaluation.degenerate import KEY

    ckpt = torch.load(snn_file.parent / "ann.pt", weights_only=True)
    ckpt[KEY] = "it predicts one class ('background') on every pixel of 8 images"
    ann = tmp_path / "ann.pt"
    torch.save(ckpt, ann)
    stats, snn = tmp_path / "stats.h5", tmp_path / "snn.safetensors"
    outs = [_ok(["calibrate", "-m", str(ann), *DATA, "-o", str(stats)]),
            _ok(["convert", "-m", str(ann), "--stats", str(stats), "-o", str(snn)]),
            _ok(["finetune", "--snn", str(snn), *DATA, "--T", "1", "--lr", "1e-4", "--max-iters", "1",
                 "-o", str(tmp_path / "ft.safetensors")]),
            _ok(["energy", "--snn", str(snn), "-m", str(ann), *DATA, "--T", "1", "--limit", "1"])]
    for out in outs:
        lines = [line for line in out.splitlines() if "looks broken" in line]
        assert len(lines) == 1 and "one class ('background')" in lines[0], out
    assert read_stats(stats).data[KEY] == ckpt[KEY]
    assert load_snn(snn)[1]["conversion"][KEY] == ckpt[KEY]
