"""Correspondence mining (chapter 07): candidates, the three verifications, pseudo-foreground."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from corrlib.mining import (
    VERIFICATIONS,
    Matches,
    candidate_matches,
    match_precision,
    mine_correspondences,
    pseudo_foreground,
    verify_hough,
    verify_neighbourhood,
    verify_ransac,
)


def _shift_pair(dx=2, dy=3, n=20, c=16, seed=0):
    """Random features and a target that holds the source shifted by (dx, dy) cells, with noise
    elsewhere: every source cell whose shifted cell is inside has an exact match."""
    g = torch.Generator().manual_seed(seed)
    f = F.normalize(torch.randn(c, n, n, generator=g), dim=0)
    t = F.normalize(torch.randn(c, n, n, generator=g), dim=0)
    t[:, dy:, dx:] = f[:, : n - dy, : n - dx]
    xs, ys = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="xy")
    true = torch.stack((xs + dx, ys + dy), -1).float()
    valid = (true[..., 0] < n) & (true[..., 1] < n)
    return f, t, true, valid


@pytest.mark.parametrize("verify", VERIFICATIONS)
def test_mining_an_exact_pair_is_at_least_95_percent_correct(verify):
    f, t, true, valid = _shift_pair()
    m = mine_correspondences(f, t, verify=verify, min_similarity=0.0, stride=8)
    precision, scored = match_precision(m, true, valid)
    assert precision >= 0.95 and scored >= 0.9 * int(valid.sum())


def _with_outliers(n_in=40, n_out=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    src_in = torch.randint(0, 30, (n_in, 2), generator=g).float()
    a = torch.tensor([[1.1, 0.1], [-0.05, 0.9]])
    trg_in = src_in @ a.T + torch.tensor([3.0, -2.0])
    src_out = torch.randint(0, 30, (n_out, 2), generator=g).float()
    trg_out = torch.randint(0, 30, (n_out, 2), generator=g).float() + 40  # far from the model
    src, trg = torch.cat((src_in, src_out)), torch.cat((trg_in, trg_out))
    ones = torch.ones(len(src))
    return Matches(src, trg, ones, ones, (30, 30), (80, 80)), n_in


def test_ransac_keeps_the_affine_inliers_and_drops_outliers():
    m, n_in = _with_outliers()
    kept = verify_ransac(m, threshold=1.0, iterations=200, min_inliers=8, seed=1)
    assert len(kept) == n_in
    assert bool((kept.trg < 40).all())  # no outlier survives
    assert float(kept.confidence.min()) >= 0.0
    # too few inliers: nothing survives
    assert len(verify_ransac(m, threshold=1.0, iterations=200, min_inliers=n_in + 1)) == 0


def test_hough_keeps_the_dominant_translation():
    src = torch.tensor([[x, y] for x in range(5) for y in range(4)], dtype=torch.float32)
    trg = src + torch.tensor([6.0, 2.0])
    stray = torch.tensor([[1.0, 1.0], [9.0, 0.0]])
    m = Matches(
        torch.cat((src, stray[:1])),
        torch.cat((trg, stray[1:])),
        torch.ones(21),
        torch.ones(21),
        (16, 16),
        (16, 16),
    )
    kept = verify_hough(m, stride=8, min_votes=3)
    assert len(kept) >= 18 and not bool(((kept.trg == stray[1]).all(1)).any())
    assert float(kept.confidence.max()) == 1.0


def test_neighbourhood_consistency():
    src = torch.tensor([[x, y] for x in range(3) for y in range(3)], dtype=torch.float32)
    trg = src + 5.0
    trg[4] = torch.tensor([0.0, 14.0])  # the centre disagrees with its 8 neighbours
    lone = torch.tensor([[10.0, 10.0]])  # no neighbour at all
    m = Matches(
        torch.cat((src, lone)), torch.cat((trg, lone)), torch.ones(10), torch.ones(10), (16, 16),
        (16, 16),
    )  # fmt: skip
    kept = verify_neighbourhood(m, radius=1.0, min_fraction=0.5)
    kept_src = {tuple(p) for p in kept.src.long().tolist()}
    assert (1, 1) not in kept_src and (10, 10) not in kept_src and len(kept_src) == 8


def test_candidates_nn_and_mutual():
    f = torch.eye(3).reshape(3, 1, 3)  # three orthogonal cells
    t = torch.tensor([[1.0, 0.9, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 1.0]]).reshape(3, 1, 3)
    nn_ = candidate_matches(f, t, "nn", min_similarity=-1.0)
    mnn = candidate_matches(f, t, "mnn", min_similarity=-1.0)
    assert len(nn_) == 3 and len(mnn) == 2
    assert mnn.src[:, 0].tolist() == [0.0, 2.0] and mnn.trg[:, 0].tolist() == [0.0, 2.0]
    assert len(candidate_matches(f, t, "mnn", min_similarity=0.99)) == 2


def test_pseudo_foreground_is_the_dilated_hull():
    src = torch.tensor([[2.0, 2.0], [6.0, 2.0], [2.0, 6.0], [6.0, 6.0]])
    m = Matches(src, src, torch.ones(4), torch.ones(4), (10, 10), (10, 10))
    fg = pseudo_foreground(m, dilation=0)
    assert int(fg.sum()) == 25 and bool(fg[4, 4]) and not bool(fg[1, 1])
    assert int(pseudo_foreground(m, dilation=1).sum()) == 45  # 7x7 minus the 4 corners
    empty = Matches(
        torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0), torch.zeros(0), (4, 5), (4, 5)
    )
    assert pseudo_foreground(empty).shape == (4, 5) and not pseudo_foreground(empty).any()
    assert math.isnan(
        match_precision(empty, torch.zeros(4, 5, 2), torch.ones(4, 5, dtype=torch.bool))[0]
    )


def test_ransac_on_collinear_matches_keeps_nothing():
    src = torch.stack((torch.arange(12.0), torch.zeros(12)), 1)  # all on one line
    trg = src + torch.tensor([1.0, 2.0])
    m = Matches(src, trg, torch.ones(12), torch.ones(12), (4, 12), (4, 12))
    assert len(verify_ransac(m, threshold=1.0, iterations=50, min_inliers=3)) == 0
