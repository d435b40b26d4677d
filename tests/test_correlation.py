"""Tests for corrlib.correlation: dense, local and chunked correlation against loop references."""

import itertools
import math

import pytest
import torch

import corrlib.correlation as C
from corrlib.correlation import (
    NN_TIE_RTOL,
    DenseCorrelation,
    chunk_rows_for_budget,
    dense_correlation,
    dense_nearest_neighbour,
    iter_correlation_chunks,
    l2_normalize,
    local_correlation,
    nearest_neighbour_vectors,
)

D = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed=0, dtype=D):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def dense_loop(f_src, f_trg, normalize):
    """Slow reference: corr[b, ys * Ws + xs, yt, xt] = <f_src[b, :, ys, xs], f_trg[b, :, yt, xt]>"""
    b, _, hs, ws = f_src.shape
    ht, wt = f_trg.shape[-2:]
    out = torch.zeros(b, hs * ws, ht, wt, dtype=f_src.dtype)
    for i in range(b):
        for ys in range(hs):
            for xs in range(ws):
                a = f_src[i, :, ys, xs]
                for yt in range(ht):
                    for xt in range(wt):
                        t = f_trg[i, :, yt, xt]
                        s = torch.dot(a, t)
                        if normalize:
                            s = s / (a.norm() * t.norm())
                        out[i, ys * ws + xs, yt, xt] = s
    return out


def first_within(scores, tol):
    """Reference tie rule on scores ``(..., T)``: the first index within ``tol`` of the max."""
    ok = scores >= scores.amax(-1, keepdim=True) - tol
    return ok.to(torch.uint8).argmax(-1)  # argmax returns the FIRST maximal index


def local_loop(f1, f2, r, normalize):
    """Slow reference of local_correlation with explicit bounds checks (zero outside f2)."""
    b, c, h, w = f1.shape
    k = 2 * r + 1
    out = torch.zeros(b, k * k, h, w, dtype=f1.dtype)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        if not (0 <= x + dx < w and 0 <= y + dy < h):
                            continue
                        a, t = f1[i, :, y, x], f2[i, :, y + dy, x + dx]
                        s = (
                            torch.dot(a, t) / (a.norm() * t.norm())
                            if normalize
                            else torch.dot(a, t) / c
                        )
                        out[i, (dy + r) * k + (dx + r), y, x] = s
    return out


class TestL2Normalize:
    def test_known_answer_and_unit_norm(self):
        torch.testing.assert_close(
            l2_normalize(torch.tensor([[3.0, 4.0]]), dim=-1), torch.tensor([[0.6, 0.8]])
        )
        f = rand(2, 5, 3, 4)
        torch.testing.assert_close(l2_normalize(f).norm(dim=1), torch.ones(2, 3, 4, dtype=D))

    def test_zero_vector_stays_zero(self):
        out = l2_normalize(torch.zeros(1, 3, 2, 2))
        assert torch.equal(out, torch.zeros(1, 3, 2, 2))

    def test_error(self):
        with pytest.raises(TypeError, match=r"Argument feat must be a torch\.Tensor"):
            l2_normalize([1.0, 2.0])


class TestDenseCorrelation:
    @pytest.mark.parametrize("normalize", [True, False])
    def test_against_loop(self, normalize):
        f_src, f_trg = rand(2, 4, 3, 2, seed=1), rand(2, 4, 2, 5, seed=2)
        corr = dense_correlation(f_src, f_trg, normalize)
        assert corr.shape == (2, 3 * 2, 2, 5)
        torch.testing.assert_close(corr, dense_loop(f_src, f_trg, normalize))

    def test_cosine_range(self):
        corr = dense_correlation(rand(1, 8, 4, 4, seed=3), rand(1, 8, 5, 3, seed=4))
        assert corr.min() >= -1 - 1e-12 and corr.max() <= 1 + 1e-12
        f = rand(1, 8, 3, 3, seed=5)
        self_corr = dense_correlation(f, f).reshape(1, 9, 9)
        torch.testing.assert_close(
            torch.diagonal(self_corr, dim1=1, dim2=2), torch.ones(1, 9, dtype=D)
        )

    def test_layout_known_answer(self):
        # one-hot code per cell; the target is the source shifted right by one cell
        f_src = torch.eye(6, dtype=D).reshape(6, 2, 3).unsqueeze(0)  # (1, C=6, Hs=2, Ws=3)
        f_trg = torch.zeros_like(f_src)
        f_trg[..., 1:] = f_src[..., :-1]
        corr = dense_correlation(f_src, f_trg, normalize=False)
        # source cell (x=1, y=1) -> row 1 * 3 + 1 = 4; its code sits at target (x=2, y=1)
        expected = torch.zeros(2, 3, dtype=D)
        expected[1, 2] = 1
        torch.testing.assert_close(corr[0, 4], expected)
        assert corr[0, 2].abs().sum() == 0  # source (2, 0) was shifted out of the target

    def test_module(self):
        f_src, f_trg = rand(1, 3, 2, 2, seed=6), rand(1, 3, 2, 2, seed=7)
        torch.testing.assert_close(
            DenseCorrelation(False)(f_src, f_trg), dense_correlation(f_src, f_trg, False)
        )
        torch.testing.assert_close(
            DenseCorrelation()(f_src, f_trg), dense_correlation(f_src, f_trg)
        )

    def test_gradcheck(self):
        f_src = rand(1, 3, 2, 2, seed=8).requires_grad_()
        f_trg = rand(1, 3, 2, 3, seed=9).requires_grad_()
        assert torch.autograd.gradcheck(dense_correlation, (f_src, f_trg))

    def test_errors(self):
        with pytest.raises(
            ValueError,
            match=(
                r"Argument f_trg must have shape \(1, 3, Ht, Wt\);"
                r" dim 1 should be 3, got shape \(1, 4, 2, 2\)"
            ),
        ):
            dense_correlation(torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 2, 2))
        with pytest.raises(
            ValueError,
            match=(
                r"Argument f_src must have shape \(B, C, Hs, Ws\) \(4 dims\),"
                r" got shape \(3, 2, 2\)"
            ),
        ):
            dense_correlation(torch.zeros(3, 2, 2), torch.zeros(1, 3, 2, 2))


class TestLocalCorrelation:
    @pytest.mark.parametrize("radius", [0, 1, 2])
    @pytest.mark.parametrize("normalize", [False, True])
    def test_against_loop(self, radius, normalize):
        f1, f2 = rand(2, 3, 4, 5, seed=1), rand(2, 3, 4, 5, seed=2)
        out = local_correlation(f1, f2, radius, normalize)
        assert out.shape == (2, (2 * radius + 1) ** 2, 4, 5)
        torch.testing.assert_close(out, local_loop(f1, f2, radius, normalize))

    def test_zero_padding_known_answer(self):
        f = torch.ones(1, 2, 3, 3)
        out = local_correlation(f, f, 1)
        # channel (dy + 1) * 3 + (dx + 1); dx = dy = +1 -> channel 8: zero in the last row/column
        torch.testing.assert_close(out[0, 8], torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 0]]))
        torch.testing.assert_close(out[0, 4], torch.ones(3, 3))  # dx = dy = 0
        torch.testing.assert_close(out[0].sum(0), torch.tensor([[4.0, 6, 4], [6, 9, 6], [4, 6, 4]]))

    def test_channel_layout_finds_the_shift(self):
        # f2(x, y) = f1(x - 2, y + 1): the match of f1(x, y) is at dx = +2, dy = -1
        r, k = 2, 5
        f1 = rand(1, 16, 6, 7, seed=3)
        f2 = torch.zeros_like(f1)
        f2[:, :, :-1, 2:] = f1[:, :, 1:, :-2]
        out = local_correlation(f1, f2, r, normalize=True)
        best = out[0, :, 2:5, 1:4].argmax(0)  # interior cells where the match exists
        assert (best == (-1 + r) * k + (2 + r)).all()

    def test_gradcheck(self):
        f1 = rand(1, 2, 3, 3, seed=4).requires_grad_()
        f2 = rand(1, 2, 3, 3, seed=5).requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: local_correlation(a, b, 1), (f1, f2))
        assert torch.autograd.gradcheck(lambda a, b: local_correlation(a, b, 1, True), (f1, f2))

    def test_errors(self):
        f = torch.zeros(1, 2, 3, 3)
        with pytest.raises(ValueError, match=r"Argument radius must be an int >= 0, got -1\."):
            local_correlation(f, f, -1)
        with pytest.raises(ValueError, match=r"Argument radius must be an int >= 0, got 1\.5\."):
            local_correlation(f, f, 1.5)
        with pytest.raises(
            ValueError,
            match=(
                r"Argument f2 must have shape \(1, 2, 3, 3\);"
                r" dim 3 should be 3, got shape \(1, 2, 3, 4\)"
            ),
        ):
            local_correlation(f, torch.zeros(1, 2, 3, 4), 1)


class TestChunks:
    def test_chunk_rows_known_answers(self):
        assert chunk_rows_for_budget(1000, 10_000) == 2
        assert chunk_rows_for_budget(1000, 4000) == 1
        assert chunk_rows_for_budget(1000, 100) == 1  # one row over the budget is still one chunk
        assert chunk_rows_for_budget(1000, 16_000, element_size=8) == 2

    def test_chunk_rows_errors(self):
        with pytest.raises(ValueError, match=r"Argument max_bytes must be positive, got 0\."):
            chunk_rows_for_budget(10, 0)
        with pytest.raises(ValueError, match=r"Argument n_trg must be positive, got 0\."):
            chunk_rows_for_budget(0, 100)

    @pytest.mark.parametrize("dtype", [torch.float32, D])
    @pytest.mark.parametrize("rows_per_block", [1, 3, 7, 100])
    def test_blocks_respect_budget_and_concatenate(self, dtype, rows_per_block):
        f_src, f_trg = rand(2, 5, 4, 5, seed=1, dtype=dtype), rand(2, 5, 3, 4, seed=2, dtype=dtype)
        row_bytes = 2 * 3 * 4 * torch.tensor([], dtype=dtype).element_size()  # B * Ht * Wt scores
        budget = rows_per_block * row_bytes + row_bytes // 2
        blocks = list(iter_correlation_chunks(f_src, f_trg, budget))
        starts = [rows.start for rows, _ in blocks]
        assert starts == list(range(0, 20, min(rows_per_block, 20)))
        for rows, block in blocks:
            assert block.shape == (2, rows.stop - rows.start, 12)
            assert block.nbytes <= budget
        full = torch.cat([block for _, block in blocks], dim=1)
        torch.testing.assert_close(full, dense_correlation(f_src, f_trg).flatten(2))

    def test_unnormalised(self):
        f_src, f_trg = rand(1, 3, 2, 3, seed=3), rand(1, 3, 2, 2, seed=4)
        full = torch.cat(
            [b for _, b in iter_correlation_chunks(f_src, f_trg, 64, normalize=False)], dim=1
        )
        torch.testing.assert_close(
            full, dense_correlation(f_src, f_trg, normalize=False).flatten(2)
        )

    def test_budget_below_one_row_yields_single_rows(self):
        blocks = list(iter_correlation_chunks(rand(1, 2, 2, 2), rand(1, 2, 3, 3), max_bytes=1))
        assert [(r.start, r.stop) for r, _ in blocks] == [(0, 1), (1, 2), (2, 3), (3, 4)]


class TestDenseNearestNeighbour:
    @pytest.mark.parametrize("max_bytes", [1, 200, 2**20])
    def test_equals_argmax_of_full_correlation(self, max_bytes):
        f_src, f_trg = rand(2, 6, 5, 4, seed=5), rand(2, 6, 3, 7, seed=6)
        idx, score = dense_nearest_neighbour(f_src, f_trg, max_bytes)
        full = dense_correlation(f_src, f_trg).flatten(2)
        assert idx.shape == (2, 20) and idx.dtype == torch.long
        # full.argmax(-1) comes from another summation order: compare with the tie rule instead
        # (no score of these Gaussian features lies near the 1e-6 boundary)
        assert torch.equal(idx, first_within(full, NN_TIE_RTOL))
        torch.testing.assert_close(score, full.max(-1).values)

    def test_known_answer_mirror(self):
        f = torch.eye(6).reshape(1, 6, 2, 3)
        idx, score = dense_nearest_neighbour(f, f.flip(-1))
        assert idx.tolist() == [[2, 1, 0, 5, 4, 3]]
        torch.testing.assert_close(score, torch.ones(1, 6))

    def test_empty_source(self):
        idx, score = dense_nearest_neighbour(torch.zeros(2, 3, 0, 4), torch.rand(2, 3, 2, 2))
        assert idx.shape == (2, 0) and score.shape == (2, 0)

    def test_errors(self):
        with pytest.raises(ValueError, match=r"Argument f_trg must have shape \(1, 3, Ht, Wt\)"):
            dense_nearest_neighbour(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, 2))


# --------------------------------------------------------------------------------------------
# the tie rule: ties are constructed exactly, so none of these depends on the CPU or the BLAS
# --------------------------------------------------------------------------------------------


def census_like(b, hw, n_codes, n_bits=24, seed=0, palette=1234, dtype=torch.float32):
    """``(B, n_bits, H, W)`` features whose cells take one of ``n_codes`` random +-1 codes
    (palette drawn with seed ``palette``; scaled by ``1 / sqrt(n_bits)`` as census descriptors
    are), so most scores are exact ties; and the integer codes ``(B, H*W, n_bits)`` for an exact
    reference. With two palettes the best scores tie between DIFFERENT codes (same Hamming
    distance, other signs), whose float sums round differently in different summation orders."""
    codes = torch.randint(0, 2, (n_codes, n_bits), generator=gen(palette)) * 2 - 1  # (K, n_bits)
    pick = torch.randint(0, n_codes, (b, hw[0] * hw[1]), generator=gen(seed))
    codes = codes[pick]  # (B, H*W, n_bits)
    feat = (codes.to(dtype) / n_bits**0.5).transpose(1, 2).reshape(b, n_bits, *hw)
    return feat, codes


def exact_first_best(codes_src, codes_trg):
    """Smallest target index of the best integer dot product (exact: 1 - 2 H / n up to scale)."""
    dots = codes_src @ codes_trg.transpose(1, 2)  # (B, S, T) int64, no rounding at all
    return dots.argmax(-1)  # the FIRST maximal index


class TestNearestNeighbourTieRule:
    @pytest.mark.parametrize("dtype", [torch.float32, D])
    @pytest.mark.parametrize("normalize", [True, False])
    @pytest.mark.parametrize("palette", [7, 1234])  # 1234: the source's (identical codes)
    def test_census_ties_chunked_equals_full_and_smallest_index(self, dtype, normalize, palette):
        f_src, c_src = census_like(2, (6, 7), n_codes=6, seed=1, dtype=dtype)
        f_trg, c_trg = census_like(2, (9, 10), n_codes=6, seed=2, palette=palette, dtype=dtype)
        want = exact_first_best(c_src, c_trg)
        dots = c_src @ c_trg.transpose(1, 2)  # exact integers: n_bits - 2 Hamming
        best = dots.amax(-1)
        n_best = (dots == best[..., None]).sum(-1)
        assert n_best.min() >= 2 and n_best.float().mean() > 5  # the data is full of exact ties
        assert (best == 24).all() if palette == 1234 else (best < 24).all()
        row_bytes = 2 * 90 * 16
        results = [
            dense_nearest_neighbour(f_src, f_trg, max_bytes, normalize)
            for max_bytes in (1, row_bytes, 7 * row_bytes + 5, 4096, 2**30)
        ]
        for idx, score in results:
            assert torch.equal(idx, want)
            assert torch.equal(score, results[0][1]) and score.dtype == dtype
        torch.testing.assert_close(results[0][1], (best / 24).to(dtype))  # 1 - 2 H / n_bits

    def test_any_matmul_error_within_the_bound_gives_the_same_answer(self, monkeypatch):
        # a different BLAS (CPU, thread count, chunk shape) only changes the fast float64 scores
        # within the a-priori bound; simulate the worst: noise that favours the LAST tied target
        f_src, c_src = census_like(1, (8, 8), n_codes=4, seed=3)
        f_trg, c_trg = census_like(1, (8, 9), n_codes=4, seed=4)
        want = exact_first_best(c_src, c_trg)
        real = C._approx_scores
        n_bits = f_src.shape[1]
        amp = 1.5 * n_bits * 2.0**-53  # unit vectors: scale 1; the code assumes < 4 C u in all

        def biased(a, t):
            s = real(a, t)
            ramp = torch.linspace(-1, 1, s.shape[-1], dtype=s.dtype)
            return s + amp * ramp  # later targets look better: a plain argmax picks the last tie

        def noisy(a, t):
            s = real(a, t)
            return s + amp * (2 * torch.rand(s.shape, generator=gen(s.shape[1]), dtype=s.dtype) - 1)

        for fake in (biased, noisy):
            monkeypatch.setattr(C, "_approx_scores", fake)
            s = fake(
                C._float64_rows(f_src.flatten(2).transpose(1, 2), True, torch.device("cpu"), "x"),
                C._float64_rows(
                    f_trg.flatten(2).transpose(1, 2), True, torch.device("cpu"), "y"
                ).transpose(1, 2),
            )
            if fake is biased:
                assert not torch.equal(s.argmax(-1), want)  # the noise does flip a plain argmax
            for max_bytes in (1, 3000, 2**30):
                assert torch.equal(dense_nearest_neighbour(f_src, f_trg, max_bytes)[0], want)

    def test_scores_differing_in_the_last_bits_tie_to_the_smallest_index(self):
        # every target is a permutation of the same six values and the query is all ones, so the
        # exact scores are equal, but float64 sums in channel order differ in the last bits:
        # (0.1 + 0.2) + 0.3 = 0.6000000000000001 while (0.3 + 0.2) + 0.1 = 0.6
        v = [0.1, 0.2, 0.3, 0.7, 1.1, 1e-3]
        perms = list(itertools.permutations(range(6)))[::7]  # 103 targets
        perms.sort(key=lambda p: sum_in_order([v[i] for i in p]))  # the lowest float sum first
        sums = [sum_in_order([v[i] for i in p]) for p in perms]
        assert sums[0] < max(sums)  # built: a plain argmax would not pick target 0
        targets = torch.tensor([[v[i] for i in p] for p in perms], dtype=D)  # (T, 6)
        query = torch.ones(1, 1, 6, dtype=D)
        for order in (targets, targets.flip(0)):
            f_trg = order.T.reshape(1, 6, 1, -1)
            for max_bytes in (1, 2**30):
                idx, score = nearest_neighbour_vectors(query, f_trg, max_bytes, normalize=False)
                assert idx.tolist() == [[0]]  # all within the tolerance: the first target
                assert score.item() == sum_in_order(order[0].tolist())  # the channel-order sum
            idx, _ = nearest_neighbour_vectors(query, f_trg, normalize=True)
            assert idx.tolist() == [[0]]

    def test_tolerance_is_relative_and_documented(self):
        v = torch.tensor([0.5, 0.25, 2.0, 1.0], dtype=D)  # sums exactly (binary fractions)
        query = torch.ones(1, 1, 4, dtype=D)
        tol = NN_TIE_RTOL * 2.0 * float(v.norm())  # NN_TIE_RTOL |a| max_t |b_t|, up to the bump
        for bump, winner in ((0.3 * tol, 0), (3.0 * tol, 2)):
            decoy = v.clone()
            decoy[2] += bump  # target 2 scores M + bump: tied (first wins) if bump <= tol
            f_trg = torch.stack((v, v.flip(0), decoy, v)).T.reshape(1, 4, 2, 2)
            assert nearest_neighbour_vectors(query, f_trg, normalize=False)[0].item() == winner
            big = nearest_neighbour_vectors(1e8 * query, 1e8 * f_trg, normalize=False)[0].item()
            assert big == winner  # scaling both sides scales the tolerance with them

    @pytest.mark.parametrize(("offset", "winner"), [(0.0, 0), (-1.0, 1)])
    def test_score_exactly_on_the_tolerance_boundary(self, monkeypatch, offset, winner):
        # s(0) = 1 - 1e-6 = M - tol exactly (a tie); one ulp lower it is not. Only the exact
        # rescoring can tell, and it must be reached whatever the chunking
        calls = []
        real = C._resolve_near_ties
        monkeypatch.setattr(C, "_resolve_near_ties", lambda *a: calls.append(1) or real(*a))
        low = math.nextafter(1 - 1e-6, -math.inf) if offset else 1 - 1e-6
        f_trg = torch.tensor([low, 1.0], dtype=D).reshape(1, 1, 1, 2)
        query = torch.ones(1, 3, 1, dtype=D)
        for max_bytes in (1, 2**30):
            idx, _ = nearest_neighbour_vectors(query, f_trg, max_bytes, normalize=False)
            assert idx.tolist() == [[winner] * 3]
        assert calls  # the boundary case went through the exact rescoring

    def test_zero_vectors_tie_everywhere_without_rescoring(self, monkeypatch):
        monkeypatch.setattr(C, "_resolve_near_ties", lambda *a: pytest.fail("rescored"))
        f_src = torch.zeros(1, 5, 3, 4)
        f_src[0, :, 1, 1] = 1.0
        f_trg = torch.rand(1, 5, 4, 6, generator=gen(5))
        idx, score = dense_nearest_neighbour(f_src, f_trg)
        assert torch.equal(idx[0, :5], torch.zeros(5, dtype=torch.long)) and torch.equal(
            score[0, :5], torch.zeros(5)
        )
        f_trg = torch.zeros(1, 5, 4, 6)  # all scores are exactly 0, ties everywhere
        assert torch.equal(
            dense_nearest_neighbour(f_src, f_trg)[0], torch.zeros(1, 12, dtype=torch.long)
        )

    def test_a_query_does_not_depend_on_the_others(self):
        f_src, _ = census_like(1, (5, 6), n_codes=3, seed=6)
        f_trg, _ = census_like(1, (7, 7), n_codes=3, seed=7)
        queries = f_src.flatten(2).transpose(1, 2)  # (1, 30, C)
        idx, score = nearest_neighbour_vectors(queries, f_trg)
        for sub in (torch.tensor([4]), torch.tensor([29, 0, 17]), torch.arange(30).flip(0)):
            i, s = nearest_neighbour_vectors(queries[:, sub], f_trg)
            assert torch.equal(i, idx[:, sub]) and torch.equal(s, score[:, sub])
        assert torch.equal(dense_nearest_neighbour(f_src, f_trg)[0], idx)

    def test_errors(self):
        f = torch.zeros(1, 2, 2, 2)
        with pytest.raises(ValueError, match=r"Argument f_trg must be finite"):
            dense_nearest_neighbour(f, torch.full((1, 2, 2, 2), float("nan")))
        with pytest.raises(ValueError, match=r"Argument max_bytes must be positive, got 0\."):
            dense_nearest_neighbour(f, f, max_bytes=0)
        with pytest.raises(ValueError, match=r"Argument query must have shape \(B, N, C\)"):
            nearest_neighbour_vectors(torch.zeros(2, 2), f)


def sum_in_order(values):
    """IEEE float64 (Python floats) ``((v0 + v1) + v2) + ...``: the order the tie rule defines."""
    acc = 0.0
    for x in values:
        acc = acc + x * 1.0
    return acc


def test_correlation_soft_argmax_votes_and_losses_stay_float32_under_autocast():
    # mixed precision speeds up the trunks; these must not run in bfloat16
    from corrlib.hough import hough_vote
    from corrlib.matching import kernel_soft_argmax, soft_argmax
    from corrlib.models.sfnet import sfnet_loss

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 8, 5, 5, generator=g), torch.randn(2, 8, 5, 5, generator=g)
    plain = dense_correlation(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.einsum("bcs,bct->bst", a.flatten(2), b.flatten(2)).dtype == torch.bfloat16
        corr = dense_correlation(a.bfloat16(), b.bfloat16())
        assert corr.dtype == torch.float32 and dense_correlation(a, b).dtype == torch.float32
        torch.testing.assert_close(dense_correlation(a, b), plain)
        assert local_correlation(a, b, 1).dtype == torch.float32
        assert soft_argmax(corr).dtype == torch.float32
        assert kernel_soft_argmax(corr).dtype == torch.float32
        f = torch.rand(3, 4, generator=g, dtype=torch.float32).bfloat16()
        bins = torch.randint(0, 5, (3, 4), generator=g)
        assert hough_vote(f, bins, torch.ones(3, 4, dtype=torch.bool), 5).dtype == torch.float32
    assert callable(sfnet_loss) and sfnet_loss.__wrapped__ is not None
