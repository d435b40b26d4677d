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

from corrlib._check import check_shape, check_tensor, full_precision

__all__ = [
    "NN_TIE_RTOL",
    "DenseCorrelation",
    "chunk_rows_for_budget",
    "dense_correlation",
    "dense_nearest_neighbour",
    "iter_correlation_chunks",
    "l2_normalize",
    "local_correlation",
    "nearest_neighbour_vectors",
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


@full_precision
def dense_correlation(
    f_src: torch.Tensor, f_trg: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
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


@full_precision
def local_correlation(
    f1: torch.Tensor, f2: torch.Tensor, radius: int, normalize: bool = False
) -> torch.Tensor:
    """Correlation in a ``(2r+1)^2`` window (FlowNet-style cost volume).

    ``f1, f2 (B, C, H, W)``, ``radius`` an int ``r >= 0``. Returns ``(B, (2r+1)^2, H, W)``:
    channel ``(dy + r) * (2r+1) + (dx + r)`` holds ``<f1(x, y), f2(x + dx, y + dy)> / C`` (mean
    over channels), or with ``normalize`` the cosine of the L2-normalised features (no ``/ C``);
    where ``(x + dx, y + dy)`` falls outside ``f2`` the score is 0 (zero padding).
    Dosovitskiy et al., *FlowNet*, ICCV 2015.

    Example:
        >>> f = torch.ones(1, 2, 3, 3)
        >>> # dx = dy = -1: zero in the top row and left column
        >>> local_correlation(f, f, radius=1)[0, 0]
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
    dim 1 the blocks give ``dense_correlation(f_src, f_trg, normalize).flatten(2)`` up to
    floating-point rounding: each block is its own matrix product, and BLAS may sum the
    channels in an order that depends on the block's shape (and on the CPU), so the last bits
    can differ from the full product. Do not ``argmax`` these blocks when ties matter; use
    :func:`dense_nearest_neighbour`, whose result does not depend on the chunking.
    No block is larger than ``max_bytes``, unless a single source location (``B * Ht * Wt``
    scores) is.
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


#: Relative tolerance of the tie rule of :func:`nearest_neighbour_vectors` (and
#: :func:`dense_nearest_neighbour`): scores within ``NN_TIE_RTOL * |a| * max_t |b_t|`` of the best
#: one are ties, resolved to the smallest target index.
NN_TIE_RTOL = 1e-6

_U64 = 2.0**-53  # unit roundoff of float64
_SUBNORMAL = 2.0**-1074  # smallest positive float64: bounds the error of an underflowing product
_NN_BLOCK_BYTES_PER_SCORE = 16  # a float64 score, its mask and temporaries, within half the budget
_NN_CPU_BLOCK_BYTES = 2**23  # on the CPU, blocks of scores small enough to stay in cache (faster)


def _approx_scores(a_rows: torch.Tensor, trg_t: torch.Tensor) -> torch.Tensor:
    """Fast float64 scores ``(B, R, C) @ (B, C, T)``; any summation order (BLAS) will do."""
    return a_rows @ trg_t


def _ordered_sq_norm(x: torch.Tensor) -> torch.Tensor:
    """``sum_c x[..., c]^2`` of float64 ``x (..., C)``, summed in channel order ``c = 0, 1, ...``.

    Only elementwise operations (each one IEEE-rounded, no reduction kernel), so every entry is
    bitwise the same whatever the shape of ``x`` and whatever the CPU, BLAS or thread count.
    """
    acc = x.new_zeros(x.shape[:-1])
    for k in range(x.shape[-1]):
        acc = acc + x[..., k] * x[..., k]
    return acc


def _ordered_pair_dot(
    a: torch.Tensor,
    b: torch.Tensor,
    bi: torch.Tensor,
    si: torch.Tensor,
    ti: torch.Tensor,
    max_bytes: int,
) -> torch.Tensor:
    """``<a[bi, si], b[bi, ti]>`` for ``K`` index triples, summed in channel order.

    ``a (B, S, C)``, ``b (B, T, C)`` float64. Elementwise operations only (see
    :func:`_ordered_sq_norm`): the value of a pair does not depend on which other pairs are
    computed with it. Gathers about ``max_bytes`` worth of pairs at a time (at least 1024).
    """
    c = a.shape[-1]
    out = a.new_zeros(bi.shape[0])
    step = max(1024, int(max_bytes // (8 * (2 * c + 6))))
    for start in range(0, bi.shape[0], step):
        sl = slice(start, start + step)
        ag, bg = a[bi[sl], si[sl]], b[bi[sl], ti[sl]]  # (k, C) each
        acc = out[sl]
        for k in range(c):
            acc = acc + ag[:, k] * bg[:, k]
        out[sl] = acc
    return out


def _float64_rows(
    x: torch.Tensor, normalize: bool, device: torch.device, name: str
) -> torch.Tensor:
    """``(B, N, C)`` -> contiguous float64 on ``device``, L2-normalised (channel order) if asked."""
    x = x.to(device=device, dtype=torch.float64).contiguous()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"Argument {name} must be finite (no NaN or inf).")
    if normalize:  # as l2_normalize(eps=1e-6), with the norm summed in channel order
        x = x / _ordered_sq_norm(x).sqrt().clamp_min(1e-6)[..., None]
    return x


def nearest_neighbour_vectors(
    query: torch.Tensor, f_trg: torch.Tensor, max_bytes: int = 256 * 2**20, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best target location for each of ``N`` query vectors, with a deterministic tie rule.

    ``query (B, N, C)``, ``f_trg (B, C, Ht, Wt)``, both finite. Returns ``(index (B, N) long,
    score (B, N))``: ``index`` is row-major in the target map (``y * Wt + x``) and ``score``
    (dtype of ``query``) is the score of that target. :func:`dense_nearest_neighbour` is this
    with every source location as a query.

    Tie rule: the score ``s(t)`` of a query ``a`` and target ``b_t`` is their dot product
    (cosine if ``normalize``) evaluated in float64 with the channels summed in the order
    ``c = 0, 1, ..., C-1``. With ``M = max_t s(t)`` and ``tol = NN_TIE_RTOL * |a| * max_t |b_t|``
    (``NN_TIE_RTOL = 1e-6``; ``|a| = |b_t| = 1`` for normalised non-zero vectors), every target
    with ``s(t) >= M - tol`` is tied with the best one, and the SMALLEST such flat index ``t``
    is returned. ``index`` is thus the argmax of the correlation except among near-ties
    (within ``tol``), which resolve to the first of them in row-major order; exact ties (equal
    census codes, a zero vector) always do.

    The result is the same bit for bit whatever ``max_bytes`` (the chunking), which other
    queries come with it, the thread count, the CPU or the BLAS: a float64 matrix product of
    each block of queries gives approximate scores with an a-priori error bound
    (``4 C 2^-53 |a| max_t |b_t|``, far below ``tol``); only a target that these cannot place
    for certain on one side of ``M - tol`` (a score within about ``1e-14`` of that boundary,
    which is rare) makes its row be rescored exactly as defined above, and the returned
    ``score`` is always the order-fixed one. The blocks of scores and masks take about
    ``max_bytes`` at most (at least one query, ``B * Ht * Wt`` scores, at a time); float64
    copies of the queries and of the target map come on top. On ``mps`` (no float64) the work
    is done on the CPU.

    Example:
        >>> f_trg = torch.eye(3).reshape(1, 3, 1, 3)  # three cells with orthogonal codes
        >>> nearest_neighbour_vectors(torch.tensor([[[0.0, 2.0, 0.0], [1.0, 0.0, 1.0]]]), f_trg)
        (tensor([[1, 0]]), tensor([[1.0000, 0.7071]]))
    """
    b, n, c = check_shape(query, ("B", "N", "C"), "query").values()
    check_shape(f_trg, (b, c, "Ht", "Wt"), "f_trg")
    if max_bytes <= 0:
        raise ValueError(f"Argument max_bytes must be positive, got {max_bytes}.")
    device = query.device
    work = torch.device("cpu") if device.type == "mps" else device
    out_dtype = query.dtype if query.is_floating_point() else torch.get_default_dtype()
    if n == 0:
        return torch.zeros(b, 0, dtype=torch.long, device=device), torch.zeros(
            b, 0, dtype=out_dtype, device=device
        )
    if f_trg.shape[-2] * f_trg.shape[-1] == 0:
        raise ValueError(
            f"Argument f_trg must have at least one location, got shape {tuple(f_trg.shape)}."
        )
    a = _float64_rows(query, normalize, work, "query")  # (B, N, C)
    bt = _float64_rows(f_trg.flatten(2).transpose(1, 2), normalize, work, "f_trg")  # (B, T, C)
    index, score = _nearest_rows(a, bt, max_bytes)
    return index.to(device), score.to(device=device, dtype=out_dtype)


def dense_nearest_neighbour(
    f_src: torch.Tensor, f_trg: torch.Tensor, max_bytes: int = 256 * 2**20, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best target location for every source location, computed chunk by chunk.

    ``f_src (B, C, Hs, Ws)``, ``f_trg (B, C, Ht, Wt)``, finite. Returns ``(index (B, Hs*Ws)
    long, score (B, Hs*Ws))``: ``index`` is row-major in the target map (``y * Wt + x``) and
    ``score`` (dtype of ``f_src``) is the score of that target.

    Tie rule (see :func:`nearest_neighbour_vectors`): scores are float64 dot products (cosines
    if ``normalize``) summed in channel order; every target within
    ``tol = NN_TIE_RTOL * |a| * max_t |b_t|`` (``1e-6`` for cosines) of the best score is a tie,
    and the SMALLEST such flat target index wins. So ``index`` is
    ``dense_correlation(...).flatten(2).argmax(-1)`` except among near-ties, and it is the same
    bit for bit whatever ``max_bytes`` (the chunking over source rows), thread count, CPU or
    BLAS. The blocks of scores take about ``max_bytes`` at most (at least one source location,
    ``B * Ht * Wt`` scores, at a time); float64 copies of both feature maps come on top.

    Example:
        >>> f = torch.eye(4).reshape(1, 4, 2, 2)
        >>> dense_nearest_neighbour(f, f.flip(-1))[0]  # the target is mirrored left-right
        tensor([[1, 0, 3, 2]])
        >>> dense_nearest_neighbour(f[..., :1, :1], torch.ones(1, 4, 2, 2))[0]  # a 4-way tie
        tensor([[0]])
    """
    b, c, _, _ = check_shape(f_src, ("B", "C", "Hs", "Ws"), "f_src").values()
    check_shape(f_trg, (b, c, "Ht", "Wt"), "f_trg")
    return nearest_neighbour_vectors(f_src.flatten(2).transpose(1, 2), f_trg, max_bytes, normalize)


def _nearest_rows(
    a: torch.Tensor, bt: torch.Tensor, max_bytes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tie rule of :func:`nearest_neighbour_vectors`, float64 ``a (B, S, C)``, ``bt (B, T, C)``.

    Returns ``(index (B, S) long, score (B, S) float64)``.
    """
    b, n_src, c = a.shape
    n_trg = bt.shape[1]
    # per source row (B, S, 1): the tie tolerance, and delta > |matmul - ordered sum|: each of
    # the two sums is within gamma_C sum_c |a_c b_c| <= ~C u |a| |b_t| of the exact dot product
    # (u = 2^-53, any summation order, with or without FMA), so they differ by < 4 C u scale
    scale = _ordered_sq_norm(a).sqrt() * _ordered_sq_norm(bt).sqrt().amax(-1, keepdim=True)
    tol = (NN_TIE_RTOL * scale)[..., None]
    delta = (4 * c * _U64 * scale + c * _SUBNORMAL * (scale > 0))[..., None]
    lo_off, hi_off = tol + 4 * delta, tol - 4 * delta
    trg_t = bt.transpose(1, 2).contiguous()  # (B, C, T)
    index = torch.empty(b, n_src, dtype=torch.long, device=a.device)
    step = chunk_rows_for_budget(b * n_trg, max_bytes, _NN_BLOCK_BYTES_PER_SCORE)
    if a.device.type == "cpu":
        step = min(step, chunk_rows_for_budget(b * n_trg, _NN_CPU_BLOCK_BYTES, 8))
    for start in range(0, n_src, step):
        rows = slice(start, min(start + step, n_src))
        s = _approx_scores(a[:, rows], trg_t)  # (B, R, T), each within delta of its ordered sum
        m = s.amax(-1, keepdim=True)
        # |m - M| < delta, so below lo a target cannot reach M - tol and at or above hi it
        # surely does (4 delta: the 2 delta of the argument plus the rounding of lo and hi)
        lo, hi = m - lo_off[:, rows], m - hi_off[:, rows]
        first = (s >= lo).view(torch.uint8).argmax(-1)  # (B, R): the first target that may tie
        index[:, rows] = first
        unsure = s.gather(-1, first[..., None]) < hi  # it may also fall short of M - tol
        if bool(unsure.any()):
            bi, ri, _ = unsure.nonzero(as_tuple=True)
            index[bi, ri + start] = _resolve_near_ties(
                a, bt, s, lo, tol[:, rows], bi, ri, start, max_bytes // 2
            )
    bi = torch.arange(b, device=a.device).repeat_interleave(n_src)
    si = torch.arange(n_src, device=a.device).repeat(b)
    score = _ordered_pair_dot(a, bt, bi, si, index.flatten(), max_bytes // 2).reshape(b, n_src)
    return index, score


def _resolve_near_ties(
    a: torch.Tensor,
    bt: torch.Tensor,
    s: torch.Tensor,
    lo: torch.Tensor,
    tol: torch.Tensor,
    bi: torch.Tensor,
    ri: torch.Tensor,
    start: int,
    max_bytes: int,
) -> torch.Tensor:
    """The tie rule for rows that the approximate scores could not settle.

    ``s (B, R, T)``: approximate scores of the block of sources starting at ``start``;
    ``lo``, ``tol (B, R, 1)``; rows ``(bi, ri)`` of the block to settle. Every target of such
    a row at or above ``lo`` (a superset of the maximum and of all its ties) is rescored in
    channel order; ``M`` is their maximum and the smallest target scoring ``>= M - tol`` wins.
    Returns ``(N,)`` target indices, about ``max_bytes`` worth of rows at a time.
    """
    n_trg = s.shape[-1]
    out = torch.empty_like(bi)
    step = max(1, int(max_bytes // (64 * n_trg)))
    for first in range(0, bi.shape[0], step):
        sl = slice(first, first + step)
        b_, r_ = bi[sl], ri[sl]
        row, t = (s[b_, r_] >= lo[b_, r_]).nonzero(as_tuple=True)
        exact = _ordered_pair_dot(a, bt, b_[row], r_[row] + start, t, max_bytes // 2)
        n = b_.shape[0]
        best = exact.new_full((n,), -torch.inf).scatter_reduce(0, row, exact, "amax")
        tied = exact >= best[row] - tol[b_, r_, 0][row]
        none = torch.full((n,), n_trg, dtype=t.dtype, device=t.device)
        out[sl] = none.scatter_reduce(0, row, torch.where(tied, t, n_trg), "amin")
    return out
