"""Verification metrics (ROC, PR AUC, FPR at a recall) and the stereo bad-pixel rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics  # noqa: F401 (imported once here, so no single test pays for it)
import torch

from corrlib.metrics import bad_pixel_rate, fpr_at_recall, pr_auc, roc_curve

# 20 pairs, best score first: 10 matches (1) and 10 non-matches (0)
SCORES20 = [20.0 - i for i in range(20)]
LABELS20 = [1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0]


def _brute_fpr_at_recall(scores: np.ndarray, labels: np.ndarray, recall: float) -> float:
    """Every threshold t (accept score >= t): the smallest FPR among those with TPR >= recall."""
    pos, neg = labels.sum(), (~labels).sum()
    best = math.inf
    for t in np.unique(scores):
        acc = scores >= t
        tpr, fpr = (acc & labels).sum() / pos, (acc & ~labels).sum() / neg
        if tpr >= recall - 1e-12:
            best = min(best, fpr)
    return float(best)


# --- roc_curve ---------------------------------------------------------------------------------


def test_roc_curve_hand_counted():
    fpr, tpr, thr = roc_curve(SCORES20, LABELS20)
    assert len(thr) == 21 and math.isinf(thr[0]) and (np.diff(thr[1:]) < 0).all()
    # after accepting the top k pairs: TP = matches among them, FP = non-matches among them
    tp = np.concatenate(([0], np.cumsum(LABELS20)))
    fp = np.concatenate(([0], np.cumsum(1 - np.asarray(LABELS20))))
    np.testing.assert_allclose(tpr, tp / 10)
    np.testing.assert_allclose(fpr, fp / 10)


def test_roc_curve_matches_brute_force_counts():
    g = np.random.default_rng(0)
    scores = np.round(g.normal(size=200), 1)  # many ties
    labels = g.random(200) < 0.4
    fpr, tpr, thr = roc_curve(scores, labels)
    for f, t, th in zip(fpr[1:], tpr[1:], thr[1:]):
        acc = scores >= th
        assert t == pytest.approx((acc & labels).sum() / labels.sum())
        assert f == pytest.approx((acc & ~labels).sum() / (~labels).sum())
    assert len(thr) == len(np.unique(scores)) + 1  # one point per distinct score, none dropped


def test_roc_curve_ties_enter_together():
    fpr, tpr, _ = roc_curve([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0])
    assert fpr.tolist() == [0.0, 1.0] and tpr.tolist() == [0.0, 1.0]


def test_roc_curve_accepts_torch_and_bool():
    a = roc_curve(torch.tensor(SCORES20), torch.tensor(LABELS20).bool())
    b = roc_curve(np.asarray(SCORES20), np.asarray(LABELS20))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# --- pr_auc ------------------------------------------------------------------------------------


def test_pr_auc_hand_counted():
    # precision at each recall step (a new match found): sum over matches of (1/P) * precision
    labels = np.asarray(LABELS20)
    ranks = np.flatnonzero(labels) + 1  # 1-based rank of each match
    expected = np.mean(np.arange(1, 11) / ranks)
    assert pr_auc(SCORES20, LABELS20) == pytest.approx(expected)


def test_pr_auc_perfect_and_all_tied():
    assert pr_auc([3.0, 2.0, 1.0, 0.0], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert pr_auc([1.0] * 4, [1, 0, 0, 0]) == pytest.approx(0.25)  # one threshold: the prevalence


# --- fpr_at_recall -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recall", "expected"),
    [
        (0.95, 0.9),  # 9.5 matches -> all 10 -> rank 19, after 9 non-matches
        (1.0, 0.9),
        (0.8, 0.4),  # 8th match at rank 12, after 4 non-matches
        (0.5, 0.1),  # 5th match at rank 6, after 1 non-match
        (0.1, 0.0),  # the best pair is a match
    ],
)
def test_fpr_at_recall_hand_counted(recall, expected):
    assert fpr_at_recall(SCORES20, LABELS20, recall) == pytest.approx(expected)


def test_fpr_at_recall_default_is_95():
    assert fpr_at_recall(SCORES20, LABELS20) == fpr_at_recall(SCORES20, LABELS20, 0.95)


def test_fpr_at_recall_ties_are_order_independent():
    # scores 3, 2, 2, 2, 1: the tied group holds a match and both non-matches
    scores = np.array([3.0, 2.0, 2.0, 2.0, 1.0])
    labels = np.array([1, 1, 0, 0, 1])
    # 2 of 3 matches need the tied group, which brings both non-matches: FPR = 1
    assert fpr_at_recall(scores, labels, 0.6) == 1.0
    perm = np.array([4, 2, 0, 3, 1])
    assert fpr_at_recall(scores[perm], labels[perm], 0.6) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fpr_at_recall_agrees_with_threshold_sweep(seed):
    g = np.random.default_rng(seed)
    n = 300
    labels = g.random(n) < 0.5
    scores = np.round(g.normal(size=n) + 1.5 * labels, 1)  # informative, with ties
    for recall in (0.3, 0.5, 0.8, 0.95, 0.99, 1.0):
        assert fpr_at_recall(scores, labels, recall) == pytest.approx(
            _brute_fpr_at_recall(scores, labels, recall)
        )


def test_fpr_at_recall_exact_recall_hit():
    # 20 matches: 95% is exactly 19, reached at rank 19 (no non-match before it)
    scores = np.arange(40.0)[::-1]
    labels = np.array([1] * 19 + [0] * 5 + [1] + [0] * 15)
    assert fpr_at_recall(scores, labels, 0.95) == 0.0
    assert fpr_at_recall(scores, labels, 1.0) == pytest.approx(5 / 20)


@pytest.mark.parametrize("fn", [roc_curve, pr_auc, fpr_at_recall])
def test_single_class_is_an_error(fn):
    with pytest.raises(ValueError, match="both positives and negatives, got 4 positives of 4"):
        fn([0.1, 0.2, 0.3, 0.4], [1, 1, 1, 1])
    with pytest.raises(ValueError, match="got 0 positives of 3"):
        fn([0.1, 0.2, 0.3], [False, False, False])


def test_bad_inputs():
    with pytest.raises(ValueError, match="labels must have shape"):
        roc_curve([0.1, 0.2], [1, 0, 1])
    with pytest.raises(ValueError, match="scores must have shape"):
        roc_curve([[0.1, 0.2]], [[1, 0]])
    with pytest.raises(ValueError, match="bool or 0/1"):
        roc_curve([0.1, 0.2], [2, 0])
    with pytest.raises(ValueError, match="finite"):
        roc_curve([0.1, float("nan")], [1, 0])
    with pytest.raises(ValueError, match=r"recall must be in \(0, 1\]"):
        fpr_at_recall([0.1, 0.2], [1, 0], recall=0.0)


# --- bad_pixel_rate ----------------------------------------------------------------------------


def test_bad_pixel_rate_hand_counted():
    gt = torch.tensor([[10.0, 10.0, 10.0], [10.0, 10.0, 10.0]])
    disp = torch.tensor([[10.0, 11.0, 12.5], [7.0, 10.5, 9.0]])  # errors 0, 1, 2.5, 3, 0.5, 1
    assert bad_pixel_rate(disp, gt, None, 1.0) == pytest.approx(2 / 6)  # > 1: 2.5 and 3 (1 is not)
    assert bad_pixel_rate(disp, gt, None, 3.0) == 0.0
    assert bad_pixel_rate(disp, gt, None, 0.0) == pytest.approx(5 / 6)
    valid = torch.tensor([[True, True, True], [False, True, True]])
    assert bad_pixel_rate(disp, gt, valid, 1.0) == pytest.approx(1 / 5)


def test_bad_pixel_rate_nonfinite_and_batched():
    gt = torch.tensor([[[1.0, float("inf"), 3.0, 4.0]]])  # (B, H, W); inf = no ground truth
    disp = torch.tensor([[[1.0, 0.0, float("nan"), 4.0]]])
    assert bad_pixel_rate(disp, gt, None, 1.0) == pytest.approx(1 / 3)  # NaN counts as bad
    assert math.isnan(bad_pixel_rate(disp, gt, torch.zeros(1, 1, 4, dtype=torch.bool), 1.0))


def test_bad_pixel_rate_errors():
    with pytest.raises(ValueError, match="gt must have shape"):
        bad_pixel_rate(torch.zeros(2, 3), torch.zeros(3, 2), None, 1.0)
    with pytest.raises(ValueError, match="valid must have shape"):
        bad_pixel_rate(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        bad_pixel_rate(torch.zeros(2, 3), torch.zeros(2, 3), None, -1.0)
    with pytest.raises(TypeError, match=r"disp must be a torch\.Tensor"):
        bad_pixel_rate(np.zeros((2, 3)), torch.zeros(2, 3), None, 1.0)
