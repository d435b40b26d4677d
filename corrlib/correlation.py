"""Correlation of feature maps: global (all pairs), local (a window) and memory-bounded chunks.

Convention: features ``(B, C, H, W)``; the dense correlation of a source map ``(Hs, Ws)`` with a
target map ``(Ht, Wt)`` is laid out ``(B, Hs*Ws, Ht, Wt)``: one target score map per source
location, source locations in row-major (y, x) order.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from corrlib._check import check_shape

__all__ = [
    "DenseCorrelation",
    "chunk_rows_for_budget",
    "dense_correlation",
    "dense_nearest_neighbour",
    "iter_correlation_chunks",
    "l2_normalize",
    "local_correlation",
]


def l2_normalize(feat: torch.Tensor, dim: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """Channel-wise L2 normalisation of ``(B, C, H, W)`` features (dim 1 by default)."""
    return feat / feat.norm(dim=dim, keepdim=True).clamp_min(eps)


def dense_correlation(f_src: torch.Tensor, f_trg: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Correlation of every source location with every target location.

    ``f_src (B, C, Hs, Ws)``, ``f_trg (B, C, Ht, Wt)``. With ``normalize`` both are L2-normalised
    per location first, so scores are cosine similarities in ``[-1, 1]``.
    Returns ``(B, Hs*Ws, Ht, Wt)``.
    """
    b, c, _, _ = check_shape(f_src, ("B", "C", "Hs", "Ws"), "f_src").values()
    _, _, ht, wt = check_shape(f_trg, (b, c, "Ht", "Wt"), "f_trg").values()
    if normalize:
        f_src, f_trg = l2_normalize(f_src), l2_normalize(f_trg)
    corr = torch.einsum("bcs,bct->bst", f_src.flatten(2), f_trg.flatten(2))
    return corr.reshape(b, -1, ht, wt)


class DenseCorrelation(torch.nn.Module):
    """Module form of :func:`dense_correlation`."""

    def __init__(self, normalize: bool = True):
        super().__init__()
        self.normalize = normalize

    def forward(self, f_src: torch.Tensor, f_trg: torch.Tensor) -> torch.Tensor:
        return dense_correlation(f_src, f_trg, self.normalize)


def local_correlation(f1: torch.Tensor, f2: torch.Tensor, radius: int, normalize: bool = False) -> torch.Tensor:
    """Correlation in a ``(2r+1)^2`` window (FlowNet-style cost volume).

    ``f1, f2 (B, C, H, W)``. Returns ``(B, (2r+1)^2, H, W)``: channel ``(dy + r) * (2r+1) + (dx + r)``
    holds ``<f1(x, y), f2(x + dx, y + dy)> / C`` (mean over channels unless ``normalize``, which
    L2-normalises and gives cosines); outside ``f2`` the score is 0.
    """
    b, c, h, w = check_shape(f1, ("B", "C", "H", "W"), "f1").values()
    check_shape(f2, (b, c, h, w), "f2")
    if radius < 0:
        raise ValueError(f"Argument radius must be >= 0, got {radius}.")
    if normalize:
        f1, f2 = l2_normalize(f1), l2_normalize(f2)
    k = 2 * radius + 1
    padded = F.pad(f2, (radius, radius, radius, radius))
    out = f1.new_empty(b, k * k, h, w)
    for dy in range(k):
        for dx in range(k):
            out[:, dy * k + dx] = (f1 * padded[:, :, dy : dy + h, dx : dx + w]).sum(1)
    return out if normalize else out / c


def chunk_rows_for_budget(n_trg: int, max_bytes: int, element_size: int = 4) -> int:
    """How many source locations fit in one chunk of a ``(rows, n_trg)`` score block."""
    if max_bytes <= 0:
        raise ValueError(f"Argument max_bytes must be positive, got {max_bytes}.")
    return max(1, int(max_bytes // (n_trg * element_size)))


def iter_correlation_chunks(
    f_src: torch.Tensor, f_trg: torch.Tensor, max_bytes: int = 256 * 2**20, normalize: bool = True
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, corr)`` blocks of :func:`dense_correlation` within a memory budget.

    ``corr`` is ``(B, len(rows), Ht*Wt)`` for source locations ``rows`` (row-major); no block is
    larger than ``max_bytes`` (unless one source row alone is).
    """
    b, c, _, _ = check_shape(f_src, ("B", "C", "Hs", "Ws"), "f_src").values()
    check_shape(f_trg, (b, c, "Ht", "Wt"), "f_trg")
    if normalize:
        f_src, f_trg = l2_normalize(f_src), l2_normalize(f_trg)
    src = f_src.flatten(2).transpose(1, 2)  # (B, S, C)
    trg = f_trg.flatten(2)  # (B, C, T)
    step = chunk_rows_for_budget(b * trg.shape[-1], max_bytes, src.element_size())
    for start in range(0, src.shape[1], step):
        rows = slice(start, min(start + step, src.shape[1]))
        yield rows, src[:, rows] @ trg


def dense_nearest_neighbour(
    f_src: torch.Tensor, f_trg: torch.Tensor, max_bytes: int = 256 * 2**20, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best target location for every source location, computed chunk by chunk.

    Returns ``(index (B, Hs*Ws) long, score (B, Hs*Ws))``; ``index`` is row-major in the target map.
    Peak extra memory stays within ``max_bytes``.
    """
    idx, score = [], []
    for _, block in iter_correlation_chunks(f_src, f_trg, max_bytes, normalize):
        s, i = block.max(dim=-1)
        idx.append(i)
        score.append(s)
    return torch.cat(idx, dim=1), torch.cat(score, dim=1)
