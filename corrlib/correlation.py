"""Correlation of feature maps: global (all pairs), local (a window) and memory-bounded chunks.

Convention: features ``(B, C, H, W)``; the dense correlation of a source map ``(Hs, Ws)`` with a
target map ``(Ht, Wt)`` is laid out ``(B, Hs*Ws, Ht, Wt)``: one target score map per source
location, source locations in row-major (y, x) order (source cell ``(x, y)`` is row
``y * Ws + x``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from corrlib._check import check_shape, check_tensor

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
    """L2 normalisation along ``dim`` (the channels of ``(B, C, H, W)`` features by default).

    Vectors shorter than ``eps`` are divided by ``eps`` (a zero vector stays zero).

    Example:
        >>> l2_normalize(torch.tensor([[3.0, 4.0]]), dim=-1)
        tensor([[0.6000, 0.8000]])
    """
    check_tensor(feat, "feat")
    return feat / feat.norm(dim=dim, keepdim=True).clamp_min(eps)


def dense_correlation(f_src: torch.Tensor, f_trg: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Correlation of every source location with every target location.

    ``f_src (B, C, Hs, Ws)``, ``f_trg (B, C, Ht, Wt)``. With ``normalize`` both are L2-normalised
    per location first, so scores are cosine similarities in ``[-1, 1]``; otherwise they are raw
    dot products. Returns ``(B, Hs*Ws, Ht, Wt)``: ``corr[b, y * Ws + x]`` is the score map of
    source cell ``(x, y)`` over the target.

    Example:
        >>> f = torch.eye(4).reshape(1, 4, 2, 2)  # one-hot code of each of the 4 cells
        >>> dense_correlation(f, f).shape
        torch.Size([1, 4, 2, 2])
        >>> dense_correlation(f, f)[0, 3]  # source cell (1, 1) matches target cell (1, 1) only
        tensor([[0., 0.],
                [0., 1.]])
    """
    b, c, _, _ = check_shape(f_src, ("B", "C", "Hs", "Ws"), "f_src").values()
    check_shape(f_trg, (b, c, "Ht", "Wt"), "f_trg")
    ht, wt = f_trg.shape[-2:]
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

    ``f1, f2 (B, C, H, W)``, ``radius`` an int ``r >= 0``. Returns ``(B, (2r+1)^2, H, W)``:
    channel ``(dy + r) * (2r+1) + (dx + r)`` holds ``<f1(x, y), f2(x + dx, y + dy)> / C`` (mean
    over channels), or with ``normalize`` the cosine of the L2-normalised features (no ``/ C``);
    where ``(x + dx, y + dy)`` falls outside ``f2`` the score is 0 (zero padding).
    Dosovitskiy et al., *FlowNet*, ICCV 2015.

    Example:
        >>> f = torch.ones(1, 2, 3, 3)
        >>> local_correlation(f, f, radius=1)[0, 0]  # dx = dy = -1: zero in the top row and left column
        tensor([[0., 0., 0.],
                [0., 1., 1.],
                [0., 1., 1.]])
    """
    b, c, h, w = check_shape(f1, ("B", "C", "H", "W"), "f1").values()
    check_shape(f2, (b, c, h, w), "f2")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise ValueError(f"Argument radius must be an int >= 0, got {radius!r}.")
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
    """How many rows of ``n_trg`` elements of ``element_size`` bytes fit in ``max_bytes``.

    At least 1 (a single row larger than the budget is still returned as one chunk).

    Example:
        >>> chunk_rows_for_budget(n_trg=1000, max_bytes=10_000)  # 4-byte floats: 4000 B a row
        2
    """
    if max_bytes <= 0:
        raise ValueError(f"Argument max_bytes must be positive, got {max_bytes}.")
    if n_trg <= 0:
        raise ValueError(f"Argument n_trg must be positive, got {n_trg}.")
    if element_size <= 0:
        raise ValueError(f"Argument element_size must be positive, got {element_size}.")
    return max(1, int(max_bytes // (n_trg * element_size)))


def iter_correlation_chunks(
    f_src: torch.Tensor, f_trg: torch.Tensor, max_bytes: int = 256 * 2**20, normalize: bool = True
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, corr)`` blocks of :func:`dense_correlation` within a memory budget.

    ``f_src (B, C, Hs, Ws)``, ``f_trg (B, C, Ht, Wt)``. ``corr`` is ``(B, len(rows), Ht*Wt)``
    for the source locations ``rows`` (a slice of the row-major ``Hs*Ws``); concatenated along
    dim 1 the blocks give ``dense_correlation(f_src, f_trg, normalize).flatten(2)``. No block is
    larger than ``max_bytes``, unless a single source location (``B * Ht * Wt`` scores) is.
    """
    b, c, _, _ = check_shape(f_src, ("B", "C", "Hs", "Ws"), "f_src").values()
    check_shape(f_trg, (b, c, "Ht", "Wt"), "f_trg")
    if normalize:
        f_src, f_trg = l2_normalize(f_src), l2_normalize(f_trg)
    src = f_src.flatten(2).transpose(1, 2)  # (B, S, C)
    trg = f_trg.flatten(2)  # (B, C, T)
    step = chunk_rows_for_budget(max(1, b * trg.shape[-1]), max_bytes, src.element_size())
    for start in range(0, src.shape[1], step):
        rows = slice(start, min(start + step, src.shape[1]))
        yield rows, src[:, rows] @ trg


def dense_nearest_neighbour(
    f_src: torch.Tensor, f_trg: torch.Tensor, max_bytes: int = 256 * 2**20, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best target location for every source location, computed chunk by chunk.

    ``f_src (B, C, Hs, Ws)``, ``f_trg (B, C, Ht, Wt)``. Returns ``(index (B, Hs*Ws) long,
    score (B, Hs*Ws))``; ``index`` is row-major in the target map (``y * Wt + x``), and equals
    ``dense_correlation(...).flatten(2).argmax(-1)``. Each block of scores stays within
    ``max_bytes`` (see :func:`iter_correlation_chunks`); the normalised copies of the features
    come on top.

    Example:
        >>> f = torch.eye(4).reshape(1, 4, 2, 2)
        >>> dense_nearest_neighbour(f, f.flip(-1))[0]  # the target is mirrored left-right
        tensor([[1, 0, 3, 2]])
    """
    b = check_shape(f_src, ("B", "C", "Hs", "Ws"), "f_src")["B"]
    idx, score = [], []
    for _, block in iter_correlation_chunks(f_src, f_trg, max_bytes, normalize):
        s, i = block.max(dim=-1)
        idx.append(i)
        score.append(s)
    if not idx:  # no source location
        return torch.zeros(b, 0, dtype=torch.long, device=f_src.device), f_src.new_zeros(b, 0)
    return torch.cat(idx, dim=1), torch.cat(score, dim=1)
