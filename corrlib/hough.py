"""The Hough vote of Proposal Flow / SCNet over matches of boxes (or of feature cells).

Each match of box ``i`` of image a with box ``k`` of image b votes for an offset (translation
and log-scale) bin; a match's geometric support is the summed weight of the matches in its bin.
Written from the SCNet authors' code (``vl_nnhoughvote.m`` / ``vl_GeoVote.m``; every constant
is cited below) with ``index_add``, so autograd gives the exact gradient. Chapter 04 (SCNet-AG,
PHM) votes over proposals; chapter 07 over feature cells (boxes of one cell each) to verify mined
correspondences. Boxes are ``(x0, y0, x1, y1)`` pixels, 0-based, pixel-extent corners.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from corrlib._check import check_shape, full_precision

__all__ = ["SIM_THRESH", "VOTE_EPS", "hough_bins", "hough_kernel", "hough_vote"]

#: Vote weight threshold of the code (``sim_thresh``): a match votes ``max(f - 0.4, 0)``.
SIM_THRESH = 0.4
#: The vote's floor (code: ``+ 0.01``), so a match alone in its bin keeps a score.
VOTE_EPS = 0.01


def _frames(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres ``(N, 2)`` and half sizes ``(N, 2)`` of boxes (``box2frame.m``)."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = ((boxes[:, 2:] - boxes[:, :2]) / 2).clamp(min=1e-6)
    return c, half


def hough_bins(
    boxes_a: torch.Tensor,
    boxes_b: torch.Tensor,
    size_a: tuple[int, int],
    size_b: tuple[int, int],
    *,
    scale_bins: int = 40,
    scale_range: float = 4.0,
    aspect_max: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The offset bin of every match ``(i, k)`` of box ``i`` of image a and box ``k`` of b.

    As ``vl_GeoVote.m``: the bottom-right corner ``P = (W_a, H_a)`` of image a, written in the
    frame of box ``i`` (``rho = (P - c_i) / half_i``), is re-projected through box ``k``
    (``c_k + half_k * rho``), giving a translation vote in ``[0, 2 W_b] x [0, 2 H_b]``; the scale
    vote is ``log2(area_k / area_i)`` in ``[-4, 4]``. Bins: cells of
    ``szCell = max(sqrt(2 W_b * 2 H_b / 8000), 5)``, ``nX = round(2 W_b / szCell * 0.2)``
    (likewise ``nY``; at least 1) and ``scale_bins`` = 40 in scale (0.2 log2-units). A match is
    invalid outside those ranges or when the boxes' aspect ratios differ by a factor of
    ``aspect_max`` = 2 or more. For 224 x 224 images: 18 x 18 x 40 bins.

    Args:
        boxes_a: ``(Na, 4)`` boxes of image a, pixels.
        boxes_b: ``(Nb, 4)`` boxes of image b, pixels.
        size_a: image a's ``(H, W)``.
        size_b: image b's ``(H, W)``.
        scale_bins: bins over the log2 area ratio.
        scale_range: the log2 area ratio range ``[-scale_range, scale_range]``.
        aspect_max: the aspect filter's factor.

    Returns:
        ``(bins, valid, n_bins)``: ``bins (Na, Nb)`` int64 flat bin index (0 where invalid),
        ``valid (Na, Nb)`` bool, and the number of bins.
    """
    check_shape(boxes_a, ("Na", 4), "boxes_a")
    check_shape(boxes_b, ("Nb", 4), "boxes_b")
    (ha, wa), (hb, wb) = size_a, size_b
    ca, sa = _frames(boxes_a.double())
    cb, sb = _frames(boxes_b.double())
    ref = ca.new_tensor([wa, ha])
    rho = (ref - ca) / sa  # (Na, 2)
    vote = cb[None] + sb[None] * rho[:, None]  # (Na, Nb, 2)
    area_a, area_b = sa.prod(1), sb.prod(1)
    vs = torch.log2(area_b[None] / area_a[:, None])  # (Na, Nb)
    cell = max(math.sqrt(2 * wb * 2 * hb / 8000), 5.0)
    nx = max(round(2 * wb / cell * 0.2), 1)
    ny = max(round(2 * hb / cell * 0.2), 1)
    ix = torch.floor(vote[..., 0] / (2 * wb) * nx).long()
    iy = torch.floor(vote[..., 1] / (2 * hb) * ny).long()
    is_ = torch.floor((vs + scale_range) / (2 * scale_range) * scale_bins).long()
    aspect = (sb[:, 0] / sb[:, 1])[None] / (sa[:, 0] / sa[:, 1])[:, None]
    valid = (
        (ix >= 0)
        & (ix < nx)
        & (iy >= 0)
        & (iy < ny)
        & (is_ >= 0)
        & (is_ < scale_bins)
        & (aspect < aspect_max)
        & (aspect > 1 / aspect_max)
    )
    bins = (ix * ny + iy) * scale_bins + is_
    return torch.where(valid, bins, torch.zeros_like(bins)), valid, nx * ny * scale_bins


@full_precision
def hough_vote(
    scores: torch.Tensor,
    bins: torch.Tensor,
    valid: torch.Tensor,
    n_bins: int,
    *,
    sim_thresh: float = SIM_THRESH,
    eps: float = VOTE_EPS,
) -> torch.Tensor:
    """The geometric term ``G(m) = sum_{m' in bin(m)} max(f(m') - sim_thresh, 0) + eps``.

    Every valid match adds its vote weight ``max(f - 0.4, 0)`` to its offset bin (one
    ``index_add`` over the flattened matrix); each match then reads its bin's total, plus the
    floor ``eps`` = 0.01; invalid matches get ``eps``. Differentiable in ``scores`` (the exact
    gradient; the code's hand-written backward restricts the sum to matches with ``f > 0.4``).

    Args:
        scores: ``(Na, Nb)`` appearance scores ``f``.
        bins: ``(Na, Nb)`` int64 bin indices (:func:`hough_bins`).
        valid: ``(Na, Nb)`` bool.
        n_bins: the number of bins.
        sim_thresh: the vote weight's threshold.
        eps: the floor.

    Returns:
        ``(Na, Nb)`` votes ``G``; the SCNet-AG score is ``f * G``.
    """
    check_shape(bins, tuple(scores.shape), "bins")
    check_shape(valid, tuple(scores.shape), "valid")
    weight = F.relu(scores - sim_thresh) * valid
    histo = scores.new_zeros(n_bins).index_add(0, bins.reshape(-1), weight.reshape(-1))
    g = histo[bins] + eps
    return torch.where(valid, g, torch.full_like(g, eps))


def hough_kernel(bins: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The explicit kernel ``K (Na Nb, Na Nb)``: ``K[m, m'] = 1`` when both matches are valid
    and share a bin. ``O((Na Nb)^2)`` memory: for tests and teaching on a few boxes only;
    ``G = K @ max(f - 0.4, 0) + eps`` equals :func:`hough_vote` on valid matches."""
    b, v = bins.reshape(-1), valid.reshape(-1)
    return ((b[:, None] == b[None, :]) & v[:, None] & v[None, :]).to(torch.float64)
