"""Tests of corrlib.losses: hand-computed values, gradients, label conversion, errors."""

from __future__ import annotations

import pytest
import torch

from corrlib.losses import (
    as_signed_labels,
    contrastive_hinge,
    hard_mining,
    label_hinge,
    margin_ranking_hinge,
)

# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "label",
    [
        torch.tensor([True, False, True]),
        torch.tensor([1, 0, 1]),
        torch.tensor([1.0, 0.0, 1.0]),
        torch.tensor([1, -1, 1]),
        torch.tensor([1.0, -1.0, 1.0]),
    ],
)
def test_as_signed_labels_conventions(label):
    assert torch.equal(as_signed_labels(label), torch.tensor([1.0, -1.0, 1.0]))


def test_as_signed_labels_all_ones_and_all_zeros():
    assert torch.equal(as_signed_labels(torch.ones(2, dtype=torch.long)), torch.ones(2))
    assert torch.equal(as_signed_labels(torch.zeros(2, dtype=torch.long)), -torch.ones(2))


@pytest.mark.parametrize("values", [[0, 2], [-1, 0, 1], [0.5, 1.0]])
def test_as_signed_labels_rejects_other_values(values):
    with pytest.raises(ValueError, match=r"Argument label must hold match labels.*got values"):
        as_signed_labels(torch.tensor(values))


def test_as_signed_labels_rejects_2d():
    with pytest.raises(ValueError, match=r"Argument label must have shape \(B\)"):
        as_signed_labels(torch.ones(2, 1))


# --------------------------------------------------------------------------------------------
# margin_ranking_hinge (MC-CNN fast)
# --------------------------------------------------------------------------------------------


def test_margin_ranking_hinge_known_value():
    s_pos = torch.tensor([0.9, 0.5, 0.3])
    s_neg = torch.tensor([0.1, 0.6, 0.2])
    # max(0, 0.2 + 0.1 - 0.9) = 0, 0.2 + 0.6 - 0.5 = 0.3, 0.2 + 0.2 - 0.3 = 0.1 -> mean 0.4 / 3
    assert torch.isclose(margin_ranking_hinge(s_pos, s_neg), torch.tensor(0.4 / 3))
    # margin 0: only the second pair violates, by 0.1
    assert torch.isclose(margin_ranking_hinge(s_pos, s_neg, margin=0.0), torch.tensor(0.1 / 3))


def test_margin_ranking_hinge_gradient_only_on_violations():
    s_pos = torch.tensor([0.9, 0.5, 0.3], requires_grad=True)
    s_neg = torch.tensor([0.1, 0.6, 0.2], requires_grad=True)
    margin_ranking_hinge(s_pos, s_neg).backward()
    assert torch.allclose(s_pos.grad, torch.tensor([0.0, -1.0, -1.0]) / 3)
    assert torch.allclose(s_neg.grad, torch.tensor([0.0, 1.0, 1.0]) / 3)


def test_margin_ranking_hinge_empty_batch_is_zero_with_graph():
    s = torch.zeros(0, requires_grad=True)
    loss = margin_ranking_hinge(s, torch.zeros(0))
    assert loss.item() == 0.0
    loss.backward()


def test_margin_ranking_hinge_shape_errors():
    with pytest.raises(ValueError, match=r"Argument s_neg must have shape \(3\)"):
        margin_ranking_hinge(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"Argument s_pos must have shape \(B\) \(1 dims\)"):
        margin_ranking_hinge(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(ValueError, match=r"Argument s_pos must be a floating-point tensor"):
        margin_ranking_hinge(torch.zeros(3, dtype=torch.long), torch.zeros(3))


# --------------------------------------------------------------------------------------------
# label_hinge (DeepCompare)
# --------------------------------------------------------------------------------------------


def test_label_hinge_known_value():
    output = torch.tensor([2.0, 0.5, -0.5, 1.5])
    # y = +1, +1, -1, -1: max(0, 1 - 2) = 0, 1 - 0.5 = 0.5, 1 - 0.5 = 0.5, 1 + 1.5 = 2.5
    assert torch.isclose(label_hinge(output, torch.tensor([1, 1, -1, -1])), torch.tensor(3.5 / 4))


def test_label_hinge_label_forms_agree():
    output = torch.tensor([2.0, 0.5, -0.5, 1.5])
    ref = label_hinge(output, torch.tensor([1, 1, -1, -1]))
    for label in (torch.tensor([1, 1, 0, 0]), torch.tensor([True, True, False, False])):
        assert torch.equal(label_hinge(output, label), ref)


def test_label_hinge_gradient():
    output = torch.tensor([2.0, 0.5, -0.5, 1.5], requires_grad=True)
    label_hinge(output, torch.tensor([1, 1, 0, 0])).backward()
    # d/do max(0, 1 - y o) = -y inside the margin, 0 outside
    assert torch.allclose(output.grad, torch.tensor([0.0, -1.0, 1.0, 1.0]) / 4)


def test_label_hinge_errors():
    with pytest.raises(ValueError, match=r"Argument label must have shape \(2\)"):
        label_hinge(torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match=r"Argument label must hold match labels"):
        label_hinge(torch.zeros(2), torch.tensor([0, 2]))
    with pytest.raises(TypeError, match=r"Argument label must be a torch.Tensor, got list"):
        label_hinge(torch.zeros(2), [1, 0])


# --------------------------------------------------------------------------------------------
# contrastive_hinge (DeepDesc)
# --------------------------------------------------------------------------------------------


def test_contrastive_hinge_known_values():
    dist = torch.tensor([0.5, 2.0, 1.0, 5.0])
    label = torch.tensor([1, 1, 0, 0])
    # positives cost d: 0.5, 2.0; negatives max(0, 4 - d): 3.0, 0.0
    per_pair = contrastive_hinge(dist, label, reduction="none")
    assert torch.allclose(per_pair, torch.tensor([0.5, 2.0, 3.0, 0.0]))
    assert torch.isclose(contrastive_hinge(dist, label), torch.tensor(5.5 / 4))
    assert torch.allclose(
        contrastive_hinge(dist, label, margin=6.0, reduction="none"),
        torch.tensor([0.5, 2.0, 5.0, 1.0]),
    )


def test_contrastive_hinge_gradient():
    dist = torch.tensor([0.5, 2.0, 1.0, 5.0], requires_grad=True)
    contrastive_hinge(dist, torch.tensor([True, True, False, False])).backward()
    # positives pull together (+1), active negatives push apart (-1), inactive ones nothing
    assert torch.allclose(dist.grad, torch.tensor([1.0, 1.0, -1.0, 0.0]) / 4)


def test_contrastive_hinge_empty_and_errors():
    assert contrastive_hinge(torch.zeros(0), torch.zeros(0)).item() == 0.0
    assert contrastive_hinge(torch.zeros(0), torch.zeros(0), reduction="none").shape == (0,)
    with pytest.raises(
        ValueError,
        match=r"Unknown value 'sum' for argument reduction. Valid values are \{mean, none\}",
    ):
        contrastive_hinge(torch.zeros(2), torch.ones(2), reduction="sum")
    with pytest.raises(ValueError, match=r"Argument label must have shape \(2\)"):
        contrastive_hinge(torch.zeros(2), torch.ones(2, 1))


# --------------------------------------------------------------------------------------------
# hard_mining (DeepDesc)
# --------------------------------------------------------------------------------------------


def test_hard_mining_known_value_and_mask():
    loss = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.7, 0.3])
    label = torch.tensor([1, 1, 1, 0, 0, 0])
    # positives: keep ceil(3 / 2) = 2 hardest (0.9, 0.5); negatives: ceil(3 / 3) = 1 (0.7)
    mean, kept = hard_mining(loss, label, ratio_pos=2, ratio_neg=3)
    assert torch.equal(kept, torch.tensor([False, True, True, False, True, False]))
    assert torch.isclose(mean, torch.tensor((0.9 + 0.5 + 0.7) / 3))


def test_hard_mining_gradient_only_through_kept_pairs():
    loss = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.7, 0.3], requires_grad=True)
    mean, kept = hard_mining(loss, torch.tensor([1, 1, 1, -1, -1, -1]), ratio_pos=2, ratio_neg=3)
    mean.backward()
    assert torch.allclose(loss.grad, kept.float() / 3)


def test_hard_mining_gradient_reaches_the_inputs_of_the_loss():
    dist = torch.tensor([0.5, 3.0, 1.0, 3.5], requires_grad=True)
    label = torch.tensor([1, 1, 0, 0])
    mean, kept = hard_mining(contrastive_hinge(dist, label, reduction="none"), label, 2, 2)
    mean.backward()
    # hardest positive: d = 3.0 (cost 3.0); hardest negative: d = 1.0 (cost 3.0)
    assert torch.equal(kept, torch.tensor([False, True, True, False]))
    assert torch.allclose(dist.grad, torch.tensor([0.0, 0.5, -0.5, 0.0]))


def test_hard_mining_ratio_one_is_the_plain_mean():
    loss = torch.rand(7)
    label = torch.tensor([1, 0, 1, 1, 0, 0, 1])
    mean, kept = hard_mining(loss, label)
    assert kept.all()
    assert torch.isclose(mean, loss.mean())


def test_hard_mining_empty_class_and_empty_batch():
    mean, kept = hard_mining(torch.tensor([0.2, 0.6, 0.4]), torch.ones(3), ratio_pos=3, ratio_neg=4)
    assert torch.equal(kept, torch.tensor([False, True, False]))  # no negatives: positives only
    assert torch.isclose(mean, torch.tensor(0.6))
    empty = torch.zeros(0, requires_grad=True)
    mean, kept = hard_mining(empty, torch.zeros(0), ratio_neg=2)
    assert mean.item() == 0.0 and kept.shape == (0,) and kept.dtype == torch.bool
    mean.backward()


def test_hard_mining_errors():
    with pytest.raises(
        ValueError, match=r"Argument ratio_neg must be a number >= 1 \(1 = no mining\), got 0.5"
    ):
        hard_mining(torch.zeros(2), torch.ones(2), ratio_neg=0.5)
    with pytest.raises(ValueError, match=r"Argument label must have shape \(2\)"):
        hard_mining(torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match=r"Argument per_pair_loss must have shape \(B\)"):
        hard_mining(torch.zeros(2, 2), torch.ones(2))
