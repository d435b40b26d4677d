"""Correspondence mining between two images of one category, without any annotation.

Chapter 07 (Ufer et al., arXiv 1906.06978, 2019: "geometrically informed correspondence mining",
needing only image category labels; **a reconstruction from the abstract**): candidates are the
(mutual) nearest neighbours of two dense feature maps, filtered by a similarity floor, then
verified geometrically by one of :data:`VERIFICATIONS`:

* ``"ransac"``: one affine model by RANSAC (3-point hypotheses, seeded), inliers within
  ``threshold`` cells of it, kept only if at least ``min_inliers`` agree;
* ``"hough"``: the Proposal Flow / SCNet Hough vote (:mod:`corrlib.hough`) over the cells as
  boxes of one cell each: matches whose translation bin holds at least ``min_votes`` matches;
* ``"neighbourhood"``: local consistency (GMS-like): a match is kept when at least half of the
  candidate matches of its 8 neighbouring source cells land within ``radius`` cells of where the
  same offset would put them (and at least one does).

Every function works on one pair, on the CPU: features ``(C, h, w)`` (move them with
``.cpu()``), cells ``(x, y)`` 0-based, centres at integers. :func:`pseudo_foreground` turns the
verified source cells into a foreground estimate (their convex hull, dilated): the supervision of
chapter 07's foreground head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from corrlib._check import check_choice, check_shape
from corrlib.hough import hough_bins, hough_vote

__all__ = [
    "CANDIDATES",
    "VERIFICATIONS",
    "Matches",
    "candidate_matches",
    "match_precision",
    "mine_correspondences",
    "pseudo_foreground",
    "verify_hough",
    "verify_neighbourhood",
    "verify_ransac",
]

#: Candidate rules: every source cell's nearest neighbour, or mutual nearest neighbours only.
CANDIDATES = ("nn", "mnn")
#: Geometric verifications (``"none"``: keep the candidates).
VERIFICATIONS = ("none", "ransac", "hough", "neighbourhood")


@dataclass
class Matches:
    """Sparse correspondences between two feature maps.

    Attributes:
        src, trg: ``(N, 2)`` float cells ``(x, y)`` in the source / target map.
        score: ``(N,)`` cosine similarity of the two features.
        confidence: ``(N,)`` in ``[0, 1]``: the verification's support (1 for unverified).
        src_size, trg_size: ``(h, w)`` of the two maps.
    """

    src: torch.Tensor
    trg: torch.Tensor
    score: torch.Tensor
    confidence: torch.Tensor
    src_size: tuple[int, int]
    trg_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.src.shape[0])

    def subset(self, keep: torch.Tensor, confidence: torch.Tensor | None = None) -> Matches:
        """The matches where ``keep (N,)`` bool is True (``confidence``: new values, ``(N,)``)."""
        conf = self.confidence if confidence is None else confidence
        return Matches(
            self.src[keep],
            self.trg[keep],
            self.score[keep],
            conf[keep].to(self.score.dtype),
            self.src_size,
            self.trg_size,
        )


def candidate_matches(
    feat_src: torch.Tensor,
    feat_trg: torch.Tensor,
    candidates: str = "mnn",
    min_similarity: float = 0.5,
) -> Matches:
    """Nearest-neighbour candidates between two feature maps.

    Args:
        feat_src: ``(C, h, w)`` source features (L2-normalised here).
        feat_trg: ``(C, ht, wt)`` target features.
        candidates: ``"nn"`` (every source cell's best target cell) or ``"mnn"`` (only mutual
            nearest neighbours).
        min_similarity: drop candidates whose cosine is below it.

    Returns:
        :class:`Matches` (confidence 1), source cells in row-major order. Exact ties between
        target cells go to the first in row-major order.
    """
    c, h, w = check_shape(feat_src, ("C", "h", "w"), "feat_src").values()
    check_shape(feat_trg, (c, "ht", "wt"), "feat_trg")
    check_choice(candidates, "candidates", CANDIDATES)
    ht, wt = feat_trg.shape[-2:]
    a = F.normalize(feat_src.flatten(1).float(), dim=0, eps=1e-6)
    b = F.normalize(feat_trg.flatten(1).float(), dim=0, eps=1e-6)
    corr = a.T @ b  # (h*w, ht*wt)
    best, fwd = corr.max(dim=1)
    keep = best >= min_similarity
    if candidates == "mnn":
        bwd = corr.argmax(dim=0)
        keep &= bwd[fwd] == torch.arange(h * w, device=corr.device)
    idx = keep.nonzero()[:, 0]
    t = fwd[idx]
    src = torch.stack((idx % w, idx // w), dim=1).float()
    trg = torch.stack((t % wt, t // wt), dim=1).float()
    return Matches(src, trg, best[idx], torch.ones(len(idx)), (h, w), (int(ht), int(wt)))


def _affine_from_three(src: torch.Tensor, trg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine maps ``(H, 3, 2)`` (``[x, y, 1] @ M``) through 3 point pairs ``(H, 3, 2)`` each, by
    the adjugate (no LAPACK call), and which hypotheses are non-degenerate ``(H,)``."""
    rows = torch.cat((src, torch.ones_like(src[..., :1])), dim=-1).double()  # (H, 3, 3)
    r1, r2, r3 = rows[:, 0], rows[:, 1], rows[:, 2]
    c1 = torch.linalg.cross(r2, r3)
    det = (r1 * c1).sum(-1)
    inv = torch.stack((c1, torch.linalg.cross(r3, r1), torch.linalg.cross(r1, r2)), dim=-1)
    ok = det.abs() > 1e-6
    inv = inv / torch.where(ok, det, torch.ones_like(det))[:, None, None]
    return inv @ trg.double(), ok


def _affine_least_squares(src: torch.Tensor, trg: torch.Tensor) -> torch.Tensor | None:
    """The least-squares affine map ``(3, 2)`` of ``(N, 2)`` pairs (normal equations, float64,
    adjugate inverse); None when the points are (nearly) collinear."""
    x = torch.cat((src, torch.ones_like(src[:, :1])), dim=1).double()
    gram = x.T @ x
    r1, r2, r3 = gram[0], gram[1], gram[2]
    c1 = torch.linalg.cross(r2, r3)
    det = float((r1 * c1).sum())
    if abs(det) <= 1e-9 * max(1.0, float(gram.abs().max()) ** 3):
        return None
    inv = torch.stack((c1, torch.linalg.cross(r3, r1), torch.linalg.cross(r1, r2)), dim=-1) / det
    return inv @ (x.T @ trg.double())


def verify_ransac(
    matches: Matches,
    threshold: float = 2.0,
    iterations: int = 500,
    min_inliers: int = 8,
    seed: int = 0,
) -> Matches:
    """Keep the inliers of one affine model found by RANSAC (refitted on its inliers once).

    Args:
        matches: the candidates.
        threshold: inlier distance in target cells.
        iterations: 3-point hypotheses drawn (with a generator seeded by ``seed``).
        min_inliers: fewer inliers than this: no match survives.
        seed: the seed of the draws (the result is a function of the inputs and the seed).

    Returns:
        The inliers; confidence ``1 - error / threshold``.
    """
    n = len(matches)
    if n < max(3, min_inliers):
        return matches.subset(torch.zeros(n, dtype=torch.bool))
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(n, generator=g)[:3] for _ in range(iterations)])
    model, ok = _affine_from_three(matches.src[idx], matches.trg[idx])  # (H, 3, 2)
    src1 = torch.cat((matches.src, torch.ones(n, 1)), dim=1).double()
    err = (src1[None] @ model - matches.trg.double()[None]).norm(dim=-1)  # (H, N)
    counts = ((err <= threshold) & ok[:, None]).sum(1)
    best = int(counts.argmax())
    if int(counts[best]) == 0:  # every sample degenerate (collinear): no model
        return matches.subset(torch.zeros(n, dtype=torch.bool))
    inliers = err[best] <= threshold
    refit = _affine_least_squares(matches.src[inliers], matches.trg[inliers])
    if refit is not None:
        err_best = (src1 @ refit - matches.trg.double()).norm(dim=-1)
        if int((err_best <= threshold).sum()) >= int(inliers.sum()):
            inliers, err[best] = err_best <= threshold, err_best
    if int(inliers.sum()) < min_inliers:
        return matches.subset(torch.zeros(n, dtype=torch.bool))
    conf = (1 - err[best] / threshold).clamp(0, 1).float()
    return matches.subset(inliers, conf)


def verify_hough(matches: Matches, stride: float = 8.0, min_votes: int = 3) -> Matches:
    """Keep the matches whose Hough bin (translation, log-scale) holds ``min_votes`` or more.

    Each cell is a box of ``stride`` pixels; :func:`corrlib.hough.hough_bins` (SCNet's binning of
    ``vl_GeoVote.m`` over images of ``h * stride`` by ``w * stride`` pixels) bins each match, and
    :func:`corrlib.hough.hough_vote` with unit weights counts the matches per bin.

    Args:
        matches: the candidates.
        stride: the feature map's stride in pixels (sets the bins' size in cells).
        min_votes: the smallest bin count kept.

    Returns:
        The kept matches; confidence = bin count / the largest bin count.
    """
    n = len(matches)
    if n == 0:
        return matches.subset(torch.zeros(0, dtype=torch.bool))
    half = stride / 2

    def boxes(cells):
        c = cells.double() * stride + (stride - 1) / 2
        return torch.cat((c - half + 0.5, c + half + 0.5), dim=1)

    (h, w), (ht, wt) = matches.src_size, matches.trg_size
    bins, valid, n_bins = hough_bins(
        boxes(matches.src), boxes(matches.trg), (h * stride, w * stride), (ht * stride, wt * stride)
    )
    diag = torch.arange(n)
    bins, valid = bins[diag, diag][None], valid[diag, diag][None]
    ones = torch.ones(1, n, dtype=torch.float64)
    counts = hough_vote(ones, bins, valid, n_bins, sim_thresh=0.0, eps=0.0)[0]
    keep = valid[0] & (counts >= min_votes)
    return matches.subset(keep, (counts / max(float(counts.max()), 1.0)).float())


_OFFSETS = ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1))


def verify_neighbourhood(
    matches: Matches, radius: float = 2.0, min_fraction: float = 0.5
) -> Matches:
    """Keep matches that their neighbours' matches agree with (local consistency, GMS-like).

    For a match ``p -> q`` and each of the 8 neighbouring source cells ``p + o`` that has a
    match ``q'``, the neighbour agrees when ``|q' - (q + o)| <= radius`` cells. A match is kept
    when at least one neighbour agrees and agreeing neighbours are at least ``min_fraction`` of
    the neighbours with a match.

    Returns:
        The kept matches; confidence = the agreeing fraction.
    """
    n = len(matches)
    h, w = matches.src_size
    target = torch.full((h + 2, w + 2, 2), float("nan"))
    sx, sy = matches.src[:, 0].long(), matches.src[:, 1].long()
    target[sy + 1, sx + 1] = matches.trg.float()
    agree = torch.zeros(n)
    present = torch.zeros(n)
    for ox, oy in _OFFSETS:
        q2 = target[sy + 1 + oy, sx + 1 + ox]  # (N, 2), NaN: no match there
        has = ~torch.isnan(q2[:, 0])
        expected = matches.trg.float() + torch.tensor([ox, oy], dtype=torch.float32)
        close = (q2 - expected).norm(dim=1) <= radius
        present += has.float()
        agree += (has & close).float()
    frac = agree / present.clamp(min=1)
    keep = (agree >= 1) & (frac >= min_fraction)
    return matches.subset(keep, frac)


def mine_correspondences(
    feat_src: torch.Tensor,
    feat_trg: torch.Tensor,
    *,
    candidates: str = "mnn",
    verify: str = "hough",
    min_similarity: float = 0.5,
    stride: float = 8.0,
    threshold: float = 2.0,
    iterations: int = 500,
    min_inliers: int = 8,
    min_votes: int = 3,
    min_fraction: float = 0.5,
    seed: int = 0,
) -> Matches:
    """Candidates (:func:`candidate_matches`) then one verification of :data:`VERIFICATIONS`.

    Args:
        feat_src, feat_trg: ``(C, h, w)`` and ``(C, ht, wt)`` features of two images.
        candidates, min_similarity: as :func:`candidate_matches`.
        verify: ``"none"``, ``"ransac"`` (``threshold``, ``iterations``, ``min_inliers``,
            ``seed``), ``"hough"`` (``stride``, ``min_votes``) or ``"neighbourhood"``
            (``threshold`` as the radius, ``min_fraction``).

    Returns:
        The verified :class:`Matches`.
    """
    check_choice(verify, "verify", VERIFICATIONS)
    m = candidate_matches(feat_src, feat_trg, candidates, min_similarity)
    if verify == "ransac":
        return verify_ransac(m, threshold, iterations, min_inliers, seed)
    if verify == "hough":
        return verify_hough(m, stride, min_votes)
    if verify == "neighbourhood":
        return verify_neighbourhood(m, threshold, min_fraction)
    return m


def pseudo_foreground(matches: Matches, dilation: int = 1) -> torch.Tensor:
    """The source foreground suggested by the matches: the convex hull of their source cells,
    dilated by ``dilation`` cells (scikit-image's ``convex_hull_image``, scipy's dilation).

    Returns:
        Bool ``(h, w)`` on the source map; all False without matches (with fewer than 3
        non-collinear cells, the cells themselves, dilated).
    """
    from scipy.ndimage import binary_dilation
    from skimage.morphology import convex_hull_image

    h, w = matches.src_size
    grid = np.zeros((h, w), dtype=bool)
    if len(matches) == 0:
        return torch.zeros(h, w, dtype=torch.bool)
    cells = matches.src.long().numpy()
    grid[cells[:, 1], cells[:, 0]] = True
    hull = grid
    if len(matches) >= 3:
        try:
            hull = convex_hull_image(grid) | grid
        except ValueError:  # collinear: no 2-D hull
            hull = grid
    if dilation > 0:
        hull = binary_dilation(hull, iterations=int(dilation))
    return torch.from_numpy(np.ascontiguousarray(hull))


def match_precision(
    matches: Matches, true_trg: torch.Tensor, valid: torch.Tensor, tolerance: float = 2.0
) -> tuple[float, int]:
    """Share of matches within ``tolerance`` cells of the true target cell.

    Args:
        matches: the matches to score.
        true_trg: ``(h, w, 2)`` the true target cell ``(x, y)`` of every source cell.
        valid: ``(h, w)`` bool: where the truth is known; matches elsewhere are not scored.

    Returns:
        ``(precision, scored)``: NaN precision when no match was scored.
    """
    if len(matches) == 0:
        return float("nan"), 0
    sx, sy = matches.src[:, 0].long(), matches.src[:, 1].long()
    ok = valid[sy, sx]
    if not ok.any():
        return float("nan"), 0
    err = (matches.trg[ok] - true_trg[sy[ok], sx[ok]].float()).norm(dim=1)
    return float((err <= tolerance).float().mean()), int(ok.sum())
