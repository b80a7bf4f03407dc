"""The shared training loop (sjunet.training.loop.fit) on a toy model: resume at any iteration is bit-identical,
non-finite numbers stop the run before the update, the starting score is the bar, the state file is
plain data."""
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from sjunet.io import load_checkpoint
from sjunet.rng import rng_preserved, rng_state, set_rng_state
from sjunet.training.loop import DivergedError, LoopOptions, check_options, fit

KIND = "toy-last"


class Toy(torch.utils.data.Dataset):
    """Items depend on (epoch, index), like the real datasets' augmentation."""

    def __init__(self, n=10):
        self.n, self.epoch, self.epochs_seen = n, 0, []

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(1000 * self.epoch + i)
        x = torch.randn(3, generator=g)
        return x, x.sum(0, keepdim=True) * 0.5


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.3), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12)
    return model, opt, sched


def _step(model, fail_at=None, counter=None):
    def step(x, y):
        # python, numpy and torch (dropout) randomness all enter the step
        noise = random.random() * 1e-3 + float(np.random.rand()) * 1e-3
        if counter is not None:
            counter.append(1)
            if fail_at is not None and len(counter) == fail_at:
                return torch.tensor(float("nan"), requires_grad=True)
        return ((model(x) - y) ** 2).mean() + noise
    return step


def _validate(model, scores=None):
    calls = []

    def validate():
        calls.append(1)
        torch.rand(5)  # validation draws random numbers: must not change what training draws
        np.random.rand()
        if scores is not None:
            s = scores[min(len(calls) - 1, len(scores) - 1)]
            return s, {"score": s}
        model.eval()
        with torch.no_grad():
            loss = float(((model(torch.ones(1, 3)) - 1.5) ** 2).mean())
        return -loss, {"loss": loss}
    return validate


def _run(tmp_path, resume=False, saves=None, scores=None, baseline=False, fail_at=None, model_opt=None, **opts):
    model, opt, sched = model_opt or _setup()
    saves = saves if saves is not None else []
    options = LoopOptions(**{"epochs": 3, "batch_size": 3, "seed": 5, "progress": False, **opts})
    summary = fit(model, _step(model, fail_at, []), Toy(), _validate(model, scores), options,
                  lambda entry, history: saves.append(entry), optimizer=opt, scheduler=sched,
                  last=tmp_path / "x.last.pt", kind=KIND, resume=resume, baseline=baseline,
                  identity={"lr": 1e-2}, output=tmp_path / "x.pt")
    return model, opt, summary


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: 3 epochs of 4 iterations (10 items, batch 3)."""
    seed_all()
    model, opt, summary = _run(tmp_path_factory.mktemp("ref"))
    return model.state_dict(), opt.state_dict(), summary


def seed_all():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.mark.parametrize("stop_at", [1, 4, 5, 7, 11])
def test_resume_at_any_iteration_is_bit_identical(tmp_path, reference, stop_at):
    seed_all()
    _, _, first = _run(tmp_path, max_iters=stop_at)
    assert first["stopped"] == "max_iters" and first["step"] == stop_at
    random.seed(123)  # whatever happens in between: the state file restores every generator
    np.random.seed(123)
    torch.manual_seed(123)
    model, opt, second = _run(tmp_path, resume=True)  # fresh model and optimiser, as a new process has
    ref_model, ref_opt, ref_summary = reference
    assert second["stopped"] == "epochs" and second["step"] == 12
    for k, v in ref_model.items():
        assert torch.equal(model.state_dict()[k], v), k
    for k, v in ref_opt["state"].items():
        for name, t in v.items():
            assert torch.equal(opt.state_dict()["state"][k][name], t), (k, name)
    # every end-of-epoch validation of the reference is in the resumed run's history, with the same score
    ends = {h["at"]: h["score"] for h in second["history"] if h["at"].count(",") == 0}
    assert ends == {h["at"]: h["score"] for h in ref_summary["history"]}


def test_val_every_does_not_change_training(tmp_path, reference):
    seed_all()
    model, _, summary = _run(tmp_path, val_every=2)
    assert [h["step"] for h in summary["history"]] == [2, 4, 6, 8, 10, 12]
    for k, v in reference[0].items():
        assert torch.equal(model.state_dict()[k], v), k


def test_epoch_order_is_a_permutation_per_epoch(tmp_path):
    seen = []

    class Recording(Toy):
        def __getitem__(self, i):
            seen.append((self.epoch, i))
            return super().__getitem__(i)

    model, opt, sched = _setup()
    data = Recording()
    fit(model, _step(model), data, _validate(model), LoopOptions(epochs=2, batch_size=3, progress=False),
        lambda e, h: None, optimizer=opt, last=tmp_path / "x.last.pt", kind=KIND)
    assert data.epochs_seen == [0, 1]
    for epoch in (0, 1):
        assert sorted(i for e, i in seen if e == epoch) == list(range(10))
    assert [i for e, i in seen if e == 0] != [i for e, i in seen if e == 1]


def test_nan_loss_stops_before_the_update(tmp_path):
    saves = []
    seed_all()
    model, _, _ = _run(tmp_path / "five", max_iters=5)  # where the diverging run must be left
    seed_all()
    with pytest.raises(DivergedError) as err:
        crashed = _setup()
        _run(tmp_path, saves=saves, fail_at=6, model_opt=crashed)
    e = err.value
    assert (e.epoch, e.iteration, e.step) == (1, 2, 6)
    assert "epoch 2, iteration 2/4" in str(e) and "lower --lr" in str(e)
    assert "x.pt holds the best so far (epoch 1)" in str(e)
    assert len(saves) == 1  # epoch 1 was validated and saved; nothing after
    for k, v in model.state_dict().items():  # the NaN step did not touch the weights
        assert torch.equal(crashed[0].state_dict()[k], v), k
    assert load_checkpoint(tmp_path / "x.last.pt", KIND)["step"] == 4  # the state file is the last good one


def test_nan_loss_before_any_validation_says_nothing_written(tmp_path):
    with pytest.raises(DivergedError, match="nothing was written"):
        _run(tmp_path, fail_at=2)
    assert not (tmp_path / "x.last.pt").exists()


def test_nonfinite_validation_is_an_error(tmp_path):
    with pytest.raises(DivergedError, match="validation score is nan"):
        _run(tmp_path, scores=[0.5, math.nan])
    with pytest.raises(DivergedError, match="input model"):
        _run(tmp_path, scores=[math.inf], baseline=True)


def test_the_starting_score_is_the_bar(tmp_path):
    saves = []
    _, _, s = _run(tmp_path, saves=saves, scores=[0.9, 0.5, 0.8, 0.7], baseline=True)
    assert [e["at"] for e in saves] == ["input"]
    assert s["best"]["at"] == "input" and not s["improved"]
    assert s["improvement"] == 0.0
    assert s["baseline"]["score"] == 0.9 and [h["score"] for h in s["history"]] == [0.9, 0.5, 0.8, 0.7]

    saves = []
    _, _, s = _run(tmp_path / "b", saves=saves, scores=[0.5, 0.4, 0.8, 0.7], baseline=True)
    assert [e["at"] for e in saves] == ["input", "epoch 2"]
    assert s["improved"] and s["improvement"] == pytest.approx(0.3)


def test_displacing_the_input_needs_the_margin(tmp_path):
    """With ``min_gain`` a validation must beat the input by more than that fraction of its score;
    once a fine-tuned checkpoint is the best, any gain over it counts."""
    saves = []
    _, _, s = _run(tmp_path, saves=saves, scores=[0.5, 0.5004, 0.4], baseline=True, min_gain=1e-3)
    assert [e["at"] for e in saves] == ["input"] and not s["improved"]  # +0.08 %: noise, the input stays
    saves = []
    _, _, s = _run(tmp_path / "b", saves=saves, scores=[0.5, 0.5006, 0.5007], baseline=True, min_gain=1e-3)
    assert [e["at"] for e in saves] == ["input", "epoch 1", "epoch 2"] and s["improved"]


def test_bar_survives_resume(tmp_path):
    saves = []
    _run(tmp_path, saves=saves, scores=[0.9, 0.5], baseline=True, max_iters=4)
    _, _, s = _run(tmp_path, saves=saves, scores=[0.6, 0.95], resume=True)
    assert [e["at"] for e in saves] == ["input", "epoch 3"]
    assert s["baseline"]["score"] == 0.9 and s["best"]["score"] == 0.95 and s["improved"]


def test_state_file_is_plain_data(tmp_path):
    _run(tmp_path, max_iters=5)
    state = torch.load(tmp_path / "x.last.pt", weights_only=True)
    assert state["kind"] == KIND and (state["epoch"], state["iteration"], state["step"]) == (1, 1, 5)
    for key in ("state_dict", "optimizer", "scheduler", "order", "generator", "rng", "best", "history", "identity"):
        assert key in state
    assert isinstance(state["order"], torch.Tensor) and sorted(state["order"].tolist()) == list(range(10))


def test_resume_refuses_other_options(tmp_path):
    _run(tmp_path, max_iters=2)
    model, opt, sched = _setup()
    with pytest.raises(ValueError, match="lr"):
        fit(model, _step(model), Toy(), _validate(model), LoopOptions(epochs=3, batch_size=3, progress=False),
            lambda e, h: None, optimizer=opt, last=tmp_path / "x.last.pt", kind=KIND, resume=True,
            identity={"lr": 1.0})


def test_max_minutes_stops_at_the_next_iteration(tmp_path):
    _, _, s = _run(tmp_path, max_minutes=1e-9)
    assert s["stopped"] == "max_minutes" and s["step"] == 1
    assert len(s["history"]) == 1 and s["history"][0]["at"] == "epoch 1, iteration 1/4"


def test_the_budget_clock_keeps_the_final_validation_inside_max_minutes(tmp_path, monkeypatch):
    """--max-minutes counts validations: the run stops when one more iteration and the final
    validation would pass it. A fake clock: an iteration takes 1 s, a validation 20 s; with a
    budget of 1 min and a 20 s baseline validation (not charged), the run ends — final validation
    included — within 60 s of the first step, and no later than it had to."""
    import sjunet.training.loop as loop

    now = [0.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: now[0])
    model, opt, sched = _setup()
    inner, validate = _step(model), _validate(model)

    def step(x, y):
        now[0] += 1.0
        return inner(x, y)

    def timed_validate():
        now[0] += 20.0
        return validate()

    options = LoopOptions(epochs=100, batch_size=3, seed=5, progress=False, max_minutes=1.0)
    s = fit(model, step, Toy(), timed_validate, options, lambda e, h: None, optimizer=opt, scheduler=sched,
            last=tmp_path / "x.last.pt", kind=KIND, baseline=True, identity={"lr": 1e-2})
    assert s["stopped"] == "max_minutes"
    charged = s["timing"]["training"] * 60  # from the first step: iterations and every later validation
    assert charged <= 60.0 and charged + 1.0 + 20.0 > 60.0  # it stopped in time, and not early
    assert s["timing"]["baseline_validation"] * 60 == 20.0


def test_rng_state_round_trip():
    saved = rng_state()
    a = (random.random(), float(np.random.rand()), torch.rand(2))
    set_rng_state(saved)
    b = (random.random(), float(np.random.rand()), torch.rand(2))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])
    with rng_preserved():
        torch.rand(100)
        np.random.rand(100)
    c = torch.rand(2)
    set_rng_state(saved)
    random.random(), np.random.rand(), torch.rand(2)
    assert torch.equal(c, torch.rand(2))


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=0), dict(lr=0.0), dict(lr=-1e-3),
                                 dict(max_minutes=0.0), dict(max_minutes=-1.0), dict(max_iters=0),
                                 dict(val_every=-2), dict(lr=math.nan)])
def test_nonsense_options_refused(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match="--" + name.replace("_", "-")):
        check_options(**bad)
