"""From correlation to matches: argmax variants, mutual nearest neighbours, keypoint transfer.

Convention: a correlation ``(B, S, Ht, Wt)`` holds one score map over the target feature grid for
each of ``S`` queries. Grid coordinates are ``(x, y)`` in feature cells (0-based, cell centres
at integers). :class:`FeatureGrid` turns cells into image pixels (0-based, x then y).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from corrlib._check import check_choice, check_shape, full_precision
from corrlib.correlation import l2_normalize, nearest_neighbour_vectors

__all__ = [
    "MATCHERS",
    "REFINE_METHODS",
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

#: Reductions of a score map to a position, as accepted by :func:`transfer_keypoints`.
MATCHERS = ("argmax", "argmax_subpixel", "soft_argmax", "kernel_soft_argmax")

#: Sub-cell refinements of :func:`refine_subpixel`.
REFINE_METHODS = ("quadratic", "softmax")


@dataclass(frozen=True)
class FeatureGrid:
    """Where the cells of a feature map lie in the image: ``pixel = origin + step * cell``.

    ``origin`` and ``step`` are ``(x, y)`` pairs in pixels. :meth:`for_map` gives the grid of a
    map of ``(h, w)`` cells covering an image of ``(H, W)`` pixels (``align_corners=False``:
    cell 0 of a stride-16 map covers pixels ``[-0.5, 15.5]`` and its centre is pixel 7.5).

    Example:
        >>> grid = FeatureGrid.for_map((14, 14), (224, 224))
        >>> grid.origin, grid.step
        ((7.5, 7.5), (16.0, 16.0))
        >>> grid.to_pixels(torch.tensor([[1.0, 0.0]]))
        tensor([[23.5000,  7.5000]])
    """

    origin: tuple[float, float]
    step: tuple[float, float]

    @staticmethod
    def for_map(map_size: tuple[int, int], image_size: tuple[int, int]) -> FeatureGrid:
        """Grid of a ``map_size=(h, w)`` feature map spanning an ``image_size=(H, W)`` image."""
        (h, w), (hi, wi) = map_size, image_size
        if min(h, w, hi, wi) <= 0:
            raise ValueError(
                "Arguments map_size and image_size must be positive, "
                f"got {tuple(map_size)} and {tuple(image_size)}."
            )
        sx, sy = wi / w, hi / h
        return FeatureGrid(((sx - 1) / 2, (sy - 1) / 2), (sx, sy))

    def in_original(self, ratio: tuple[float, float]) -> FeatureGrid:
        """This grid, built on an image resized by ``ratio = (W'/W, H'/H)``, in ORIGINAL pixels.

        Resizing maps ``x' = (x + 0.5) * r - 0.5`` (``align_corners=False``), so
        ``origin -> (origin + 0.5) / r - 0.5`` and ``step -> step / r``.

        Example:
            >>> FeatureGrid((0.0, 0.0), (1.0, 1.0)).in_original((0.5, 0.5))
            FeatureGrid(origin=(0.5, 0.5), step=(2.0, 2.0))
        """
        origin = tuple((o + 0.5) / r - 0.5 for o, r in zip(self.origin, ratio))
        step = tuple(st / r for st, r in zip(self.step, ratio))
        return FeatureGrid(origin, step)

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
    """Cell of the maximum of each score map: ``corr (B, S, Ht, Wt)`` -> ``(B, S, 2)`` (x, y).

    Exact ties (bitwise equal scores) go to the first cell in row-major order; near-ties are
    decided by the last bits of ``corr``, which depend on how it was computed (BLAS, chunk
    shape, CPU). :func:`corrlib.correlation.nearest_neighbour_vectors` (used by
    :func:`transfer_keypoints`) and :func:`corrlib.correlation.dense_nearest_neighbour` choose
    from the features instead, with a tie rule that does not. Not differentiable.

    Example:
        >>> corr = torch.zeros(1, 1, 3, 4); corr[0, 0, 2, 1] = 1.0  # row y=2, column x=1
        >>> hard_argmax(corr)
        tensor([[[1., 2.]]])
    """
    check_shape(corr, ("B", "S", "Ht", "Wt"), "corr")
    w = corr.shape[-1]
    idx = corr.flatten(2).argmax(dim=-1)
    return torch.stack((idx % w, idx // w), dim=-1).to(corr.dtype)


@full_precision
def soft_argmax(corr: torch.Tensor, beta: float = 0.02) -> torch.Tensor:
    """Expected cell under ``softmax(corr / beta)``: ``(B, S, Ht, Wt)`` -> ``(B, S, 2)`` (x, y).

    ``beta`` is the softmax temperature (SFNet, Lee et al. CVPR 2019, use 0.02). Differentiable,
    but biased towards the mean of the modes when the score map is multi-modal (see
    :func:`kernel_soft_argmax`).

    Example:
        >>> corr = torch.zeros(1, 1, 3, 3); corr[0, 0, 1, 2] = 1.0
        >>> soft_argmax(corr)  # one strong peak: the soft argmax is the argmax
        tensor([[[2., 1.]]])
    """
    check_shape(corr, ("B", "S", "Ht", "Wt"), "corr")
    if beta <= 0:
        raise ValueError(f"Argument beta must be positive, got {beta}.")
    return _expected_cell(corr / beta)


def _expected_cell(logits: torch.Tensor) -> torch.Tensor:
    """Expected (x, y) cell under ``softmax`` over the last dims of ``logits (B, S, Ht, Wt)``."""
    b, s, h, w = logits.shape
    p = F.softmax(logits.flatten(2), dim=-1).reshape(b, s, h, w)
    xs, ys = _cell_coords(h, w, logits)
    return torch.stack(((p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)), dim=-1)


@full_precision
def kernel_soft_argmax(corr: torch.Tensor, sigma: float = 5.0, beta: float = 0.02) -> torch.Tensor:
    """Kernel soft argmax (SFNet, Lee et al. CVPR 2019, Eq. 3-4).

    The score map is multiplied by a Gaussian window ``k(p) = exp(-|p - p*|^2 / (2 sigma^2))``
    centred on its hard argmax ``p*`` (cells), then a softmax with temperature ``beta`` gives
    weights whose expected position is returned: ``(B, S, Ht, Wt)`` -> ``(B, S, 2)`` (x, y) cells.
    A second peak far from ``p*`` (in units of ``sigma``) is suppressed, so it does not pull the
    estimate as it does in :func:`soft_argmax`. Differentiable in ``corr`` (``p*`` is held fixed).
    Defaults are the paper's (sigma = 5 cells, beta = 0.02); scores are expected to be
    non-negative (cosines of ReLU features), since the window pulls every score towards 0.
    """
    check_shape(corr, ("B", "S", "Ht", "Wt"), "corr")
    h, w = corr.shape[-2:]
    if sigma <= 0:
        raise ValueError(f"Argument sigma must be positive, got {sigma}.")
    if beta <= 0:
        raise ValueError(f"Argument beta must be positive, got {beta}.")
    peak = hard_argmax(corr).detach()  # (B, S, 2)
    xs, ys = _cell_coords(h, w, corr)
    # the Gaussian is separable: two small factors instead of a full (B, S, Ht, Wt) kernel
    kx = torch.exp(-((xs.view(1, 1, 1, w) - peak[..., 0, None, None]) ** 2) / (2 * sigma**2)) / beta
    ky = torch.exp(-((ys.view(1, 1, h, 1) - peak[..., 1, None, None]) ** 2) / (2 * sigma**2))
    return _expected_cell(corr * ky * kx)


class KernelSoftArgmax(torch.nn.Module):
    """Module form of :func:`kernel_soft_argmax`."""

    def __init__(self, sigma: float = 5.0, beta: float = 0.02):
        super().__init__()
        self.sigma, self.beta = sigma, beta

    def forward(self, corr: torch.Tensor) -> torch.Tensor:
        return kernel_soft_argmax(corr, self.sigma, self.beta)


def refine_subpixel(
    corr: torch.Tensor, cells: torch.Tensor, beta: float = 0.02, *, method: str = "quadratic"
) -> torch.Tensor:
    """Refine integer maxima ``cells (B, S, 2)`` (x, y) of ``corr (B, S, Ht, Wt)`` to sub-cell.

    ``method="quadratic"`` (default) fits a parabola through the peak and its two neighbours
    along x and along y and moves to its vertex (offset clamped to ``[-0.5, 0.5]``; 0 on an axis
    where the peak touches the border or is not a strict maximum): exact for a quadratic bump;
    for a Gaussian bump of standard deviation ``s`` cells the error per axis is at most 0.095
    (``s = 0.7``), 0.048 (``s = 1``), 0.021 (``s = 1.5``).
    ``method="softmax"`` is the expected offset under a softmax (temperature ``beta``) over
    the 3x3 neighbourhood; it is biased towards the integer cell for small ``beta``.
    ``cells`` are rounded to the nearest cell and must lie in the map. Returns ``(B, S, 2)``.

    Example:
        >>> x = torch.arange(5.0)
        >>> corr = -((x - 2.25) ** 2).reshape(1, 1, 1, 5)  # a parabola with its vertex at x = 2.25
        >>> refine_subpixel(corr, hard_argmax(corr))
        tensor([[[2.2500, 0.0000]]])
    """
    check_shape(corr, ("B", "S", "Ht", "Wt"), "corr")
    b, s, h, w = corr.shape
    check_shape(cells, (b, s, 2), "cells")
    check_choice(method, "method", REFINE_METHODS)
    cx = cells[..., 0].detach().round().long()
    cy = cells[..., 1].detach().round().long()
    if cells.numel() and (cx.min() < 0 or cx.max() >= w or cy.min() < 0 or cy.max() >= h):
        raise ValueError(
            f"Argument cells must lie in the {w}x{h} (Wt x Ht) map, got x in "
            f"[{int(cx.min())}, {int(cx.max())}] and y in [{int(cy.min())}, {int(cy.max())}]."
        )
    if method == "softmax":
        pad = F.pad(corr.reshape(b * s, 1, h, w), (1, 1, 1, 1), value=float("-inf"))
        offs = torch.arange(-1, 2, device=corr.device)
        oy, ox = torch.meshgrid(offs, offs, indexing="ij")
        n = torch.arange(b * s, device=corr.device)[:, None]
        rows = cy.reshape(-1, 1) + 1 + oy.reshape(1, -1)
        cols = cx.reshape(-1, 1) + 1 + ox.reshape(1, -1)
        patch = pad[n, 0, rows, cols]  # (B*S, 9)
        wgt = F.softmax(patch / beta, dim=-1)
        dx = (wgt * ox.reshape(1, -1).to(corr.dtype)).sum(-1).reshape(b, s)
        dy = (wgt * oy.reshape(1, -1).to(corr.dtype)).sum(-1).reshape(b, s)
    else:
        flat = corr.reshape(b, s, h * w)

        def at(ox: int, oy: int) -> torch.Tensor:
            i = (cy + oy).clamp(0, h - 1) * w + (cx + ox).clamp(0, w - 1)
            return torch.gather(flat, 2, i[..., None])[..., 0]

        def vertex(
            lo: torch.Tensor, mid: torch.Tensor, hi: torch.Tensor, inside: torch.Tensor
        ) -> torch.Tensor:
            den = lo - 2 * mid + hi
            ok = inside & (den < 0)
            den = torch.where(ok, den, -torch.ones_like(den))
            off = ((lo - hi) / (2 * den)).clamp(-0.5, 0.5)
            return torch.where(ok, off, torch.zeros_like(off))

        c = at(0, 0)
        dx = vertex(at(-1, 0), c, at(1, 0), (cx > 0) & (cx < w - 1))
        dy = vertex(at(0, -1), c, at(0, 1), (cy > 0) & (cy < h - 1))
    base = torch.stack((cx, cy), dim=-1).to(corr.dtype)
    return base + torch.stack((dx, dy), dim=-1)


def mutual_nearest_neighbours(corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest neighbours and which of them are mutual.

    ``corr (B, S, Ht, Wt)`` with the ``S`` sources forming a full feature map. Returns
    ``(index (B, S) long, mutual (B, S) bool)``: ``index`` is the best target cell (row-major)
    of each source; ``mutual`` is True where that target's best source is the source itself.

    Example:
        >>> corr = torch.tensor([[0.9, 0.1], [0.8, 0.3]]).reshape(1, 2, 1, 2)  # both pick target 0
        >>> mutual_nearest_neighbours(corr)
        (tensor([[0, 0]]), tensor([[ True, False]]))
    """
    check_shape(corr, ("B", "S", "Ht", "Wt"), "corr")
    flat = corr.flatten(2)  # (B, S, T)
    if flat.shape[1] == 0 or flat.shape[2] == 0:
        b, s = flat.shape[:2]
        return torch.zeros(b, s, dtype=torch.long, device=corr.device), torch.zeros(
            b, s, dtype=torch.bool, device=corr.device
        )
    fwd = flat.argmax(dim=2)  # (B, S)
    bwd = flat.argmax(dim=1)  # (B, T)
    back = torch.gather(bwd, 1, fwd)
    src = torch.arange(flat.shape[1], device=corr.device).expand_as(fwd)
    return fwd, back == src


def sample_descriptors(feat: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Bilinear sample ``feat (B, C, H, W)`` at fractional ``cells (B, N, 2)`` -> ``(B, N, C)``.

    ``cells`` are (x, y) in cells (centres at integers); outside the map the border is repeated.

    Example:
        >>> feat = torch.arange(4.0).reshape(1, 1, 1, 4)
        >>> sample_descriptors(feat, torch.tensor([[[1.5, 0.0]]]))
        tensor([[[1.5000]]])
    """
    b, _, h, w = check_shape(feat, ("B", "C", "H", "W"), "feat").values()
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
    ``normalize``) and reduced by ``matcher`` (one of ``MATCHERS``): ``argmax`` (cell centre),
    ``argmax_subpixel`` (argmax + :func:`refine_subpixel`, quadratic), ``soft_argmax``
    (temperature ``beta``) or ``kernel_soft_argmax`` (window ``sigma`` cells, temperature ``beta``).
    The cell of ``argmax`` and ``argmax_subpixel`` is
    :func:`corrlib.correlation.nearest_neighbour_vectors`'s: scores within ``1e-6`` (relative)
    of the best are ties and go to the first cell in row-major order, the same whatever other
    keypoints come in the batch, the CPU or the BLAS.
    Returns ``(kps_trg (B, N, 2) pixels in the target, score (B, N) best similarity)``; zero
    keypoints give empty tensors.
    """
    check_choice(matcher, "matcher", MATCHERS)
    b, c, _, _ = check_shape(f_src, ("B", "C", "Hs", "Ws"), "f_src").values()
    check_shape(f_trg, (b, c, "Ht", "Wt"), "f_trg")
    ht, wt = f_trg.shape[-2:]
    check_shape(kps_src, (b, "N", 2), "kps_src")
    if kps_src.shape[1] == 0:
        return kps_src.new_zeros(b, 0, 2), f_src.new_zeros(b, 0)
    sampled = sample_descriptors(f_src, grid_src.to_cells(kps_src.to(f_src.dtype)))  # (B, N, C)
    desc, trg = sampled, f_trg
    if normalize:
        desc, trg = l2_normalize(sampled, dim=-1), l2_normalize(f_trg)
    corr = torch.einsum("bnc,bct->bnt", desc, trg.flatten(2)).reshape(b, -1, ht, wt)
    score = corr.flatten(2).max(dim=-1).values
    if matcher in ("argmax", "argmax_subpixel"):
        idx, _ = nearest_neighbour_vectors(sampled.detach(), f_trg.detach(), normalize=normalize)
        cells = torch.stack((idx % wt, idx // wt), dim=-1).to(corr.dtype)
        if matcher == "argmax_subpixel":
            cells = refine_subpixel(corr, cells)
    elif matcher == "soft_argmax":
        cells = soft_argmax(corr, beta)
    else:
        cells = kernel_soft_argmax(corr, sigma, beta)
    return grid_trg.to_pixels(cells).to(kps_src.dtype), score
