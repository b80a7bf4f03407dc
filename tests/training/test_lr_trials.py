"""``--lr auto``'s trials on a clock (:mod:`sjunet.training.lr_trials`): validations counted, a subset when
the whole split does not fit, a trial that beats the input kept. Fake clocks: no timings."""
from __future__ import annotations

import torch
from torch import nn

from sjunet.training.lr_trials import LR_TRIAL_SHARE, lr_range_test, plan_trials


def test_plan_keeps_validations_within_half_of_the_trials_share():
    # 3 min budget: a quarter is 45 s, half of it (22.5 s) for validations
    whole = plan_trials(3.0, val_seconds=4.0, val_images=4)  # 4 trials × 4 s = 16 s: the whole split fits
    assert whole.val_items is None and whole.train_seconds == (45 - 16) / 4
    subset = plan_trials(3.0, val_seconds=8.0, val_images=4)  # 2 s an image: 5 validations of 2 images = 20 s
    assert subset.val_items == 2 and subset.train_seconds == (45 - 20) / 4 and not subset.skip
    skipped = plan_trials(3.0, val_seconds=40.0, val_images=4)  # 10 s an image: not one image fits
    assert skipped.skip and "10.0 s" in skipped.skip
    assert plan_trials(None, 40.0, 4).val_items is None  # no budget: validate on everything


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _problem():
    torch.manual_seed(0)
    net = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(net.weight)
    data = [(torch.ones(1), torch.ones(1)) for _ in range(64)]
    return net, data


def test_trials_with_their_validations_stay_within_the_share_by_the_clock():
    """An iteration takes 1 s and a validation 2 s an image (4 images): with --max-minutes 3 the
    plan validates on a subset and the trials — training and every validation, the input's on the
    same subset included — end within a quarter of the budget by the clock."""
    clock = _Clock()
    net, data = _problem()
    seen = []

    def step(x, y):
        clock.now += 1.0
        return ((net(x) - y) ** 2).mean()

    def validate(limit):
        seen.append(limit)
        clock.now += 2.0 * (4 if limit is None else limit)
        return -abs(float(net.weight.detach()) - 1.0), {}

    plan = plan_trials(3.0, val_seconds=8.0, val_images=4)
    r = lr_range_test(net, step, data, validate, optimizer="sgd", candidates=(1e-3, 1e-2, 1e-1, 3e-1), iters=50,
                      max_seconds=plan.train_seconds * 4, val_items=plan.val_items, baseline=-1.0, clock=clock)
    assert r.seconds <= 3.0 * 60 * LR_TRIAL_SHARE and clock.now == r.seconds
    assert seen == [2] * 5 and r.val_items == 2  # the input and each of the 4 trials, on the same 2 images
    assert all(1 <= n < 50 for n in r.iters.values())  # each rate trained, cut by its time share


def test_a_trial_that_beats_the_input_is_kept():
    """The best trial beats the input: training continues from its weights and optimiser state at
    its rate; the network itself is back at the input's weights. When none beats the input, the
    fallback rate is used and nothing is kept."""
    net, data = _problem()

    def step(x, y):
        return ((net(x) - y) ** 2).mean()

    def validate(limit):  # closer to w = 1 is better; the input (w = 0) scores -1
        return -abs(float(net.weight.detach()) - 1.0), {}

    r = lr_range_test(net, step, data, validate, optimizer="sgd", candidates=(1e-3, 1e-1), iters=10)
    assert r.lr == 1e-1 and r.kept == 1e-1 and r.input_score == -1.0
    assert abs(float(r.state["model"]["weight"]) - 1.0) < 0.2 and "state" in r.state["optimizer"]
    assert float(net.weight.detach()) == 0.0  # restored: the caller loads the kept state
    none = lr_range_test(net, step, data, validate, optimizer="sgd", candidates=(1e-3, 1e-1), iters=10,
                         baseline=0.5, fallback=3e-2)  # a bar no trial reaches
    assert none.lr == 3e-2 and none.kept is None and none.state is None
