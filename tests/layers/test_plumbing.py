"""Transformer plumbing stages (issue 26): exact per step, in single- and multi-step mode alike,
wherever the batch sits, and rebuilt from their plain-data spec."""
import pytest
import torch

from sjunet.layers.plumbing import AddConstant, Index, Permute, Repeat, Reshape, Roll, Scale, item_data

CASES = [  # (stage, single-step input shape, what the ANN does)
    (Reshape([1, 6, 4, 2], 0), (3, 6, 8), lambda x: x.reshape(3, 6, 4, 2)),
    (Reshape([3, 1, 2, 4, 3], 1), (2, 4, 18), lambda x: x.reshape(3, 2, 2, 4, 3)),  # the batch in dim 1
    (Permute([0, 2, 1]), (2, 5, 3), lambda x: x.transpose(1, 2)),
    (Index([item_data(slice(None)), item_data(slice(None)), item_data(slice(1, 4)), item_data(slice(2, 6, 2))]),
     (2, 3, 6, 8), lambda x: x[:, :, 1:4, 2:6:2]),
    (Index([item_data(0)]), (3, 2, 5), lambda x: x[0]),
    (Index([item_data(Ellipsis), item_data(slice(0, 2))]), (2, 3, 4), lambda x: x[..., :2]),
    (Index([item_data(slice(None)), item_data(None)]), (2, 3), lambda x: x[:, None]),
    (Repeat([1, 4, 1, 1]), (2, 1, 3, 3), lambda x: x.repeat(1, 4, 1, 1)),
    (Roll([-1, 2], [1, 2]), (2, 4, 5, 3), lambda x: torch.roll(x, (-1, 2), (1, 2))),
    (Scale(-0.5), (2, 3), lambda x: -0.5 * x),
]


@pytest.mark.parametrize("stage,shape,ann", CASES)
def test_stage_is_exact_in_both_modes(stage, shape, ann):
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(4, *shape, generator=g)
    want = torch.stack([ann(x) for x in xs])
    stage.step_mode = "s"
    assert torch.equal(torch.stack([stage(x) for x in xs]), want)
    stage.step_mode = "m"
    assert torch.equal(stage(xs), want)
    assert torch.equal(stage.flow(xs.sum(0), T=4), ann(xs.sum(0)))
    again = type(stage)(**stage.spec())
    again.load_state_dict(stage.state_dict())
    again.step_mode = "m"
    assert torch.equal(again(xs), want)


def test_add_constant_is_a_bias_current():
    """x + c every step; its flow over T steps adds T·c (a position embedding is a bias)."""
    c = torch.randn(1, 6, 4)
    stage = AddConstant.of(c)
    x = torch.randn(3, 2, 6, 4)
    stage.step_mode = "m"
    assert torch.equal(stage(x), x + c)
    assert torch.allclose(stage.flow(x.sum(0), T=3), (x + c).sum(0))


@pytest.mark.parametrize("bad", [lambda: Reshape([2, 0], 0), lambda: Reshape([2, 3], 2), lambda: Permute([0, 0, 1]),
                                 lambda: Index([["slice", 0, 3, -1]]), lambda: Index([["call", "os.system"]]),
                                 lambda: Repeat([0]), lambda: Roll([1], [1, 2]), lambda: Scale(float("inf"))])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        bad()
