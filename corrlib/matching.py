"""From correlation to matches: argmax variants, mutual nearest neighbours, keypoint transfer.

Convention: a correlation ``(B, S, Ht, Wt)`` holds one score map over the target feature grid for
each of ``S`` queries. Grid coordinates are ``(x, y)`` in feature cells (0-based, cell centres
at integers). :class:`FeatureGrid` turns cells into image pixels (0-based, x then y).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from corrlib._check import check_choice, check_shape
from corrlib.correlation import l2_normalize

__all__ = [
    "MATCHERS",
    "FeatureGrid",
    "KernelSoftArgmax",
    "hard_argmax",
    "kernel_soft_argmax",
    "mutual_nearest_neighbours",
    "refine_subpixel",
    "sample_descriptors",
    "soft_argmax",
    "transfer_keypoints",
]

MATCHERS = ("argmax", "argmax_subpixel", "soft_argmax", "kernel_soft_argmax")


@dataclass(frozen=True)
class FeatureGrid:
    """Where the cells of a feature map lie in the image: ``pixel = origin + step * cell``.

    ``origin`` and ``step`` are ``(x, y)`` pairs in pixels. :meth:`for_map` gives the grid of a
    map of ``(h, w)`` cells covering an image of ``(H, W)`` pixels (``align_corners=False``).
    """

    origin: tuple[float, float]
    step: tuple[float, float]

    @staticmethod
    def for_map(map_size: tuple[int, int], image_size: tuple[int, int]) -> FeatureGrid:
        (h, w), (hi, wi) = map_size, image_size
        sx, sy = wi / w, hi / h
        return FeatureGrid(((sx - 1) / 2, (sy - 1) / 2), (sx, sy))

    def to_pixels(self, cells: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` cell coordinates -> pixels."""
        o = cells.new_tensor(self.origin)
        s = cells.new_tensor(self.step)
        return o + s * cells

    def to_cells(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` pixels -> (fractional) cell coordinates."""
        o = pixels.new_tensor(self.origin)
        s = pixels.new_tensor(self.step)
        return (pixels - o) / s


def _cell_coords(h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(h, device=like.device, dtype=like.dtype)
    xs = torch.arange(w, device=like.device, dtype=like.dtype)
    return xs, ys


def hard_argmax(corr: torch.Tensor) -> torch.Tensor:
    """Cell of the maximum of each score map: ``corr (B, S, Ht, Wt)`` -> ``(B, S, 2)`` (x, y)."""
    _, _, _, w = check_shape(corr, ("B", "S", "Ht", "Wt"), "corr").values()
    idx = corr.flatten(2).argmax(dim=-1)
    return torch.stack((idx % w, idx // w), dim=-1).to(corr.dtype)


def soft_argmax(corr: torch.Tensor, beta: float = 0.02) -> torch.Tensor:
    """Expected cell under ``softmax(corr / beta)``: ``(B, S, Ht, Wt)`` -> ``(B, S, 2)``.

    ``beta`` is the softmax temperature (SFNet, Lee et al. CVPR 2019, use 0.02). Differentiable,
    but biased towards the centre when the score map is multi-modal.
    """
    b, s, h, w = check_shape(corr, ("B", "S", "Ht", "Wt"), "corr").values()
    p = F.softmax(corr.flatten(2) / beta, dim=-1).reshape(b, s, h, w)
    xs, ys = _cell_coords(h, w, corr)
    return torch.stack(((p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)), dim=-1)


def kernel_soft_argmax(corr: torch.Tensor, sigma: float = 5.0, beta: float = 0.02) -> torch.Tensor:
    """Kernel soft argmax (SFNet, Lee et al. CVPR 2019, Eq. 3-4).

    The score map is multiplied by a Gaussian window ``k(p) = exp(-|p - p*|^2 / (2 sigma^2))``
    centred on its hard argmax ``p*`` (cells), then a softmax with temperature ``beta`` gives
    weights whose expected position is returned: ``(B, S, Ht, Wt)`` -> ``(B, S, 2)`` (x, y) cells.
    Defaults are the paper's (sigma = 5 cells, beta = 0.02).
    """
    b, s, h, w = check_shape(corr, ("B", "S", "Ht", "Wt"), "corr").values()
    peak = hard_argmax(corr).detach()  # (B, S, 2)
    xs, ys = _cell_coords(h, w, corr)
    dx2 = (xs.view(1, 1, 1, w) - peak[..., 0, None, None]) ** 2
    dy2 = (ys.view(1, 1, h, 1) - peak[..., 1, None, None]) ** 2
    kernel = torch.exp(-(dx2 + dy2) / (2 * sigma**2))
    return soft_argmax(kernel * corr, beta)


class KernelSoftArgmax(torch.nn.Module):
    """Module form of :func:`kernel_soft_argmax`."""

    def __init__(self, sigma: float = 5.0, beta: float = 0.02):
        super().__init__()
        self.sigma, self.beta = sigma, beta

    def forward(self, corr: torch.Tensor) -> torch.Tensor:
        return kernel_soft_argmax(corr, self.sigma, self.beta)


def refine_subpixel(corr: torch.Tensor, cells: torch.Tensor, beta: float = 0.02) -> torch.Tensor:
    """Refine integer maxima ``cells (B, S, 2)`` by a soft-argmax over their 3x3 neighbourhood."""
    b, s, h, w = check_shape(corr, ("B", "S", "Ht", "Wt"), "corr").values()
    pad = F.pad(corr.reshape(b * s, 1, h, w), (1, 1, 1, 1), value=float("-inf"))
    cx = cells[..., 0].long().reshape(-1)
    cy = cells[..., 1].long().reshape(-1)
    offs = torch.arange(-1, 2, device=corr.device)
    oy, ox = torch.meshgrid(offs, offs, indexing="ij")
    n = torch.arange(b * s, device=corr.device)[:, None]
    patch = pad[n, 0, (cy[:, None] + 1 + oy.reshape(1, -1)), (cx[:, None] + 1 + ox.reshape(1, -1))]  # (BS, 9)
    wgt = F.softmax(patch / beta, dim=-1)
    dx = (wgt * ox.reshape(1, -1).to(corr.dtype)).sum(-1)
    dy = (wgt * oy.reshape(1, -1).to(corr.dtype)).sum(-1)
    return cells + torch.stack((dx, dy), -1).reshape(b, s, 2)


def mutual_nearest_neighbours(corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest neighbours and which of them are mutual.

    ``corr (B, S, Ht, Wt)`` with the ``S`` sources forming a full feature map. Returns
    ``(index (B, S) long, mutual (B, S) bool)``: ``index`` is the best target cell (row-major)
    of each source; ``mutual`` is True where that target's best source is the source itself.
    """
    check_shape(corr, ("B", "S", "Ht", "Wt"), "corr")
    flat = corr.flatten(2)  # (B, S, T)
    fwd = flat.argmax(dim=2)  # (B, S)
    bwd = flat.argmax(dim=1)  # (B, T)
    back = torch.gather(bwd, 1, fwd)
    src = torch.arange(flat.shape[1], device=corr.device).expand_as(fwd)
    return fwd, back == src


def sample_descriptors(feat: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Bilinear sample ``feat (B, C, H, W)`` at fractional ``cells (B, N, 2)`` -> ``(B, N, C)``."""
    b, c, h, w = check_shape(feat, ("B", "C", "H", "W"), "feat").values()
    check_shape(cells, (b, "N", 2), "cells")
    wh = cells.new_tensor([w, h])
    grid = ((2 * cells + 1) / wh - 1).unsqueeze(1).to(feat.dtype)
    out = F.grid_sample(feat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0].transpose(1, 2)


def transfer_keypoints(
    f_src: torch.Tensor,
    f_trg: torch.Tensor,
    kps_src: torch.Tensor,
    grid_src: FeatureGrid,
    grid_trg: FeatureGrid,
    matcher: str = "argmax_subpixel",
    *,
    sigma: float = 5.0,
    beta: float = 0.02,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict where source keypoints land in the target by matching dense descriptors.

    ``f_src (B, C, Hs, Ws)``, ``f_trg (B, C, Ht, Wt)``; ``kps_src (B, N, 2)`` pixels in the source
    image; ``grid_src``/``grid_trg`` place the maps' cells in their images. The source descriptor
    is sampled bilinearly at each keypoint, scored against every target cell (cosine if
    ``normalize``) and reduced by ``matcher`` (one of ``MATCHERS``).
    Returns ``(kps_trg (B, N, 2) pixels in the target, score (B, N) best similarity)``.
    """
    check_choice(matcher, "matcher", MATCHERS)
    b, c, _, _ = check_shape(f_src, ("B", "C", "Hs", "Ws"), "f_src").values()
    _, _, ht, wt = check_shape(f_trg, (b, c, "Ht", "Wt"), "f_trg").values()
    check_shape(kps_src, (b, "N", 2), "kps_src")
    if kps_src.shape[1] == 0:
        return kps_src.new_zeros(b, 0, 2), kps_src.new_zeros(b, 0)
    desc = sample_descriptors(f_src, grid_src.to_cells(kps_src.to(f_src.dtype)))  # (B, N, C)
    trg = f_trg
    if normalize:
        desc, trg = l2_normalize(desc, dim=-1), l2_normalize(f_trg)
    corr = torch.einsum("bnc,bct->bnt", desc, trg.flatten(2)).reshape(b, -1, ht, wt)
    score = corr.flatten(2).max(dim=-1).values
    if matcher == "argmax":
        cells = hard_argmax(corr)
    elif matcher == "argmax_subpixel":
        cells = refine_subpixel(corr, hard_argmax(corr), beta)
    elif matcher == "soft_argmax":
        cells = soft_argmax(corr, beta)
    else:
        cells = kernel_soft_argmax(corr, sigma, beta)
    return grid_trg.to_pixels(cells).to(kps_src.dtype), score
