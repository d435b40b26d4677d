"""Tests for corrlib.matching: argmax variants, mutual nearest neighbours and keypoint transfer."""

import math

import pytest
import torch

from corrlib.correlation import dense_correlation
from corrlib.matching import (
    MATCHERS,
    REFINE_METHODS,
    FeatureGrid,
    KernelSoftArgmax,
    hard_argmax,
    kernel_soft_argmax,
    mutual_nearest_neighbours,
    refine_subpixel,
    sample_descriptors,
    soft_argmax,
    transfer_keypoints,
)

D = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def peak_map(h, w, peaks, dtype=D):
    """``(1, 1, h, w)`` zeros with ``{(x, y): value}`` peaks."""
    m = torch.zeros(1, 1, h, w, dtype=dtype)
    for (x, y), v in peaks.items():
        m[0, 0, y, x] = v
    return m


def one_hot_codes(h, w, shift=(0, 0)):
    """``(1, h*w, h, w)`` features: cell (x, y) carries the one-hot code of cell (x - sx, y - sy).

    With ``shift = (sx, sy)`` the content of source cell ``c`` sits at target cell ``c + shift``;
    cells whose code would come from outside get a zero vector.
    """
    sx, sy = shift
    f = torch.zeros(1, h * w, h, w, dtype=D)
    for y in range(h):
        for x in range(w):
            xs, ys = x - sx, y - sy
            if 0 <= xs < w and 0 <= ys < h:
                f[0, ys * w + xs, y, x] = 1
    return f


def rbf_codes(h, w, offset=(0.0, 0.0), sigma=1.0):
    """Smooth position codes: channel k at cell p is exp(-|p + offset - c_k|^2 / (2 sigma^2))."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=D), torch.arange(w, dtype=D), indexing="ij")
    p = torch.stack((xs, ys), -1).reshape(-1, 2)  # centres c_k, row-major
    q = p + torch.tensor(offset, dtype=D)
    code = torch.exp(-(torch.cdist(q, p) ** 2) / (2 * sigma**2))  # (HW cells, K channels)
    return code.T.reshape(1, h * w, h, w)


# --------------------------------------------------------------------------- FeatureGrid


class TestFeatureGrid:
    def test_stride_16_origin(self):
        grid = FeatureGrid.for_map((14, 14), (224, 224))
        assert grid.origin == (7.5, 7.5) and grid.step == (16.0, 16.0)
        # cell 0 spans pixels [-0.5, 15.5]: its centre is 7.5
        torch.testing.assert_close(
            grid.to_pixels(torch.tensor([0.0, 0.0])), torch.tensor([7.5, 7.5])
        )
        torch.testing.assert_close(
            grid.to_pixels(torch.tensor([13.0, 2.0])), torch.tensor([215.5, 39.5])
        )

    def test_non_square_and_non_integer_stride(self):
        grid = FeatureGrid.for_map((3, 4), (12, 10))  # x stride 2.5, y stride 4
        assert grid.step == (2.5, 4.0) and grid.origin == (0.75, 1.5)
        # the map's edges coincide with the image edges (align_corners=False)
        torch.testing.assert_close(
            grid.to_pixels(torch.tensor([-0.5, -0.5])), torch.tensor([-0.5, -0.5])
        )
        torch.testing.assert_close(
            grid.to_pixels(torch.tensor([3.5, 2.5])), torch.tensor([9.5, 11.5])
        )

    def test_round_trip(self):
        grid = FeatureGrid.for_map((7, 9), (60, 50))
        cells = torch.rand(2, 5, 2, generator=gen(), dtype=D) * 10 - 1
        torch.testing.assert_close(grid.to_cells(grid.to_pixels(cells)), cells)
        torch.testing.assert_close(grid.to_pixels(grid.to_cells(cells)), cells)

    def test_identity_grid(self):
        grid = FeatureGrid.for_map((5, 6), (5, 6))
        assert grid.origin == (0.0, 0.0) and grid.step == (1.0, 1.0)

    def test_errors(self):
        with pytest.raises(
            ValueError,
            match=(
                r"Arguments map_size and image_size must be positive,"
                r" got \(0, 4\) and \(8, 8\)\."
            ),
        ):
            FeatureGrid.for_map((0, 4), (8, 8))


# --------------------------------------------------------------------------- argmax variants


class TestHardArgmax:
    def test_known_peaks(self):
        corr = torch.zeros(2, 3, 4, 5)
        peaks = [[(0, 0), (4, 3), (2, 1)], [(1, 3), (3, 0), (0, 2)]]
        for b, row in enumerate(peaks):
            for s, (x, y) in enumerate(row):
                corr[b, s, y, x] = 1.0 + s
        out = hard_argmax(corr)
        assert out.shape == (2, 3, 2) and out.dtype == torch.float32
        assert out.tolist() == [[list(map(float, p)) for p in row] for row in peaks]

    def test_against_loop_and_ties(self):
        corr = torch.randint(0, 3, (2, 4, 3, 5), generator=gen()).double()  # many ties
        out = hard_argmax(corr)
        for b in range(2):
            for s in range(4):
                best, pos = -1.0, None
                for y in range(3):
                    for x in range(5):  # the first maximum in row-major order
                        if corr[b, s, y, x] > best:
                            best, pos = float(corr[b, s, y, x]), [x, y]
                assert out[b, s].tolist() == pos

    def test_error(self):
        with pytest.raises(
            ValueError,
            match=(
                r"Argument corr must have shape \(B, S, Ht, Wt\) \(4 dims\),"
                r" got shape \(3, 4, 5\)\."
            ),
        ):
            hard_argmax(torch.zeros(3, 4, 5))


class TestSoftArgmax:
    def test_peaked_map_equals_argmax(self):
        corr = torch.rand(3, 4, 6, 7, generator=gen(), dtype=D) * 0.5
        corr.view(3 * 4, -1)[torch.arange(12), torch.randint(0, 42, (12,), generator=gen(1))] = 1.0
        torch.testing.assert_close(soft_argmax(corr), hard_argmax(corr), rtol=0, atol=1e-6)

    def test_known_answers(self):
        # a uniform map gives the centre; two equal peaks give their midpoint
        torch.testing.assert_close(
            soft_argmax(torch.zeros(1, 1, 5, 8, dtype=D)), torch.tensor([[[3.5, 2.0]]], dtype=D)
        )
        corr = peak_map(9, 9, {(1, 2): 1.0, (7, 6): 1.0})
        torch.testing.assert_close(soft_argmax(corr), torch.tensor([[[4.0, 4.0]]], dtype=D))

    def test_against_loop(self):
        corr = torch.randn(2, 3, 4, 5, generator=gen(2), dtype=D)
        beta = 0.7
        out = soft_argmax(corr, beta)
        for b in range(2):
            for s in range(3):
                z, ex, ey = 0.0, 0.0, 0.0
                for y in range(4):
                    for x in range(5):
                        e = math.exp(float(corr[b, s, y, x]) / beta)
                        z, ex, ey = z + e, ex + e * x, ey + e * y
                torch.testing.assert_close(out[b, s], torch.tensor([ex / z, ey / z], dtype=D))

    def test_gradcheck(self):
        corr = torch.randn(1, 2, 3, 4, generator=gen(3), dtype=D, requires_grad=True)
        assert torch.autograd.gradcheck(lambda c: soft_argmax(c, 0.5), (corr,))

    def test_errors(self):
        with pytest.raises(ValueError, match="Argument beta must be positive, got 0"):
            soft_argmax(torch.zeros(1, 1, 2, 2), beta=0)
        with pytest.raises(ValueError, match=r"Argument corr must have shape \(B, S, Ht, Wt\)"):
            soft_argmax(torch.zeros(1, 2, 2))


class TestKernelSoftArgmax:
    def test_distant_second_peak_biases_soft_argmax_only(self):
        corr = peak_map(20, 20, {(3, 4): 1.0, (16, 15): 0.95})
        # plain soft argmax: weights e^(1/0.02) : e^(0.95/0.02), the second peak pulls by
        # e^-2.5 / (1 + e^-2.5) = 7.6 % of the distance (13, 11)
        w2 = math.exp(-2.5) / (1 + math.exp(-2.5))
        biased = soft_argmax(corr)
        torch.testing.assert_close(
            biased, torch.tensor([[[3 + 13 * w2, 4 + 11 * w2]]], dtype=D), rtol=0, atol=1e-3
        )
        assert biased[0, 0, 0] > 3.9  # off by about a cell
        # the Gaussian window around (3, 4) removes the distant peak
        torch.testing.assert_close(
            kernel_soft_argmax(corr), torch.tensor([[[3.0, 4.0]]], dtype=D), rtol=0, atol=1e-6
        )

    def test_against_loop(self):
        corr = torch.rand(2, 2, 5, 6, generator=gen(), dtype=D)
        sigma, beta = 1.5, 0.3
        out = kernel_soft_argmax(corr, sigma, beta)
        for b in range(2):
            for s in range(2):
                px, py = hard_argmax(corr)[b, s].tolist()
                z, ex, ey = 0.0, 0.0, 0.0
                for y in range(5):
                    for x in range(6):
                        k = math.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sigma**2))
                        e = math.exp(k * float(corr[b, s, y, x]) / beta)
                        z, ex, ey = z + e, ex + e * x, ey + e * y
                torch.testing.assert_close(out[b, s], torch.tensor([ex / z, ey / z], dtype=D))

    def test_large_sigma_is_soft_argmax(self):
        corr = torch.rand(1, 3, 4, 4, generator=gen(1), dtype=D)
        torch.testing.assert_close(
            kernel_soft_argmax(corr, sigma=1e6, beta=0.2), soft_argmax(corr, 0.2)
        )

    def test_module(self):
        corr = torch.rand(1, 3, 4, 4, generator=gen(2), dtype=D)
        torch.testing.assert_close(
            KernelSoftArgmax(2.0, 0.1)(corr), kernel_soft_argmax(corr, 2.0, 0.1)
        )

    def test_gradcheck(self):
        corr = torch.rand(1, 2, 4, 5, generator=gen(3), dtype=D)
        corr[0, 0, 1, 2] = corr[0, 1, 3, 0] = (
            2.0  # a clear maximum: the window does not move under eps
        )
        corr.requires_grad_()
        assert torch.autograd.gradcheck(lambda c: kernel_soft_argmax(c, 1.5, 0.5), (corr,))

    def test_errors(self):
        with pytest.raises(ValueError, match="Argument sigma must be positive, got -1"):
            kernel_soft_argmax(torch.zeros(1, 1, 2, 2), sigma=-1)


class TestRefineSubpixel:
    def test_quadratic_bump_is_exact(self):
        ys, xs = torch.meshgrid(
            torch.arange(7.0, dtype=D), torch.arange(9.0, dtype=D), indexing="ij"
        )
        peaks = [(4.3, 2.8), (1.5, 5.0), (6.0, 3.45)]
        corr = torch.stack([1 - 0.05 * (xs - x0) ** 2 - 0.08 * (ys - y0) ** 2 for x0, y0 in peaks])[
            None
        ]
        out = refine_subpixel(corr, hard_argmax(corr))
        torch.testing.assert_close(out, torch.tensor([peaks], dtype=D), rtol=0, atol=1e-9)

    @pytest.mark.parametrize("sigma", [1.0, 1.5, 3.0])
    def test_gaussian_bump_within_a_tenth_of_a_cell(self, sigma):
        ys, xs = torch.meshgrid(torch.arange(11.0), torch.arange(11.0), indexing="ij")
        for x0, y0 in [(5.3, 4.8), (4.55, 6.45), (6.0, 5.0)]:
            corr = torch.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * sigma**2))[None, None]
            out = refine_subpixel(corr, hard_argmax(corr))
            assert (out[0, 0] - torch.tensor([x0, y0])).abs().max() < 0.05

    def test_border_peak_keeps_the_cell_on_that_axis(self):
        corr = peak_map(4, 5, {(0, 2): 1.0, (1, 2): 0.5, (0, 1): 0.5, (0, 3): 0.9})
        out = refine_subpixel(corr, hard_argmax(corr))
        # x: no left neighbour -> 0
        # y: parabola through 0.5, 1, 0.9 -> (0.5 - 0.9) / (2 (0.5 - 2 + 0.9))
        torch.testing.assert_close(out, torch.tensor([[[0.0, 2 + 0.4 / 1.2]]], dtype=D))

    def test_flat_map_and_batch(self):
        corr = torch.zeros(2, 3, 4, 4, dtype=D)
        cells = torch.tensor([[[1.0, 1.0], [2.0, 3.0], [0.0, 0.0]]] * 2, dtype=D)
        torch.testing.assert_close(refine_subpixel(corr, cells), cells)

    def test_offsets_stay_within_half_a_cell(self):
        corr = torch.rand(2, 5, 6, 6, generator=gen(), dtype=D)
        cells = torch.randint(0, 6, (2, 5, 2), generator=gen(1)).double()  # not necessarily maxima
        out = refine_subpixel(corr, cells)
        assert ((out - cells).abs() <= 0.5).all()

    def test_softmax_method_keeps_the_old_behaviour(self):
        corr = peak_map(5, 5, {(2, 2): 1.0, (3, 2): 0.99})
        beta = 0.02
        w = 1 / (1 + math.exp(-0.01 / beta) + 7 * math.exp(-1 / beta))  # weight of the centre
        out = refine_subpixel(corr, hard_argmax(corr), beta, method="softmax")
        torch.testing.assert_close(
            out[0, 0, 0], torch.tensor(2 + (1 - w), dtype=D), rtol=0, atol=1e-6
        )
        assert REFINE_METHODS == ("quadratic", "softmax")

    def test_gradcheck(self):
        corr = torch.rand(1, 2, 4, 4, generator=gen(2), dtype=D)
        corr[0, 0, 1, 2] = corr[0, 1, 2, 1] = 2.0
        cells = hard_argmax(corr)
        corr.requires_grad_()
        assert torch.autograd.gradcheck(lambda c: refine_subpixel(c, cells), (corr,))

    def test_errors(self):
        corr = torch.zeros(1, 2, 3, 4)
        with pytest.raises(
            ValueError,
            match=(
                r"Argument cells must lie in the 4x3 \(Wt x Ht\) map,"
                r" got x in \[0, 4\] and y in \[0, 1\]\."
            ),
        ):
            refine_subpixel(corr, torch.tensor([[[0.0, 0.0], [4.0, 1.0]]]))
        with pytest.raises(
            ValueError,
            match=(
                r"Argument cells must have shape \(1, 2, 2\);"
                r" dim 1 should be 2, got shape \(1, 3, 2\)"
            ),
        ):
            refine_subpixel(corr, torch.zeros(1, 3, 2))
        with pytest.raises(
            ValueError,
            match=(
                r"Unknown value 'cubic' for argument method\. Valid values "
                r"are \{quadratic, softmax\}\."
            ),
        ):
            refine_subpixel(corr, torch.zeros(1, 2, 2), method="cubic")


# --------------------------------------------------------------------------- matches


class TestMutualNearestNeighbours:
    def test_hand_made_2x2(self):
        # 2x2 source map (S = 4) against a 2x2 target map (T = 4); rows: sources, columns: targets
        scores = torch.tensor(
            [
                [0.9, 0.1, 0.0, 0.2],  # s0 -> t0, t0's best is s0: mutual
                [0.1, 0.8, 0.3, 0.0],  # s1 -> t1, t1's best is s1: mutual
                [0.7, 0.2, 0.4, 0.1],  # s2 -> t0, but t0 prefers s0: NOT mutual
                [0.0, 0.1, 0.2, 0.6],  # s3 -> t3: mutual
            ]
        )
        idx, mutual = mutual_nearest_neighbours(scores.reshape(1, 4, 2, 2))
        assert idx.tolist() == [[0, 1, 0, 3]]
        assert mutual.tolist() == [[True, True, False, True]]
        assert idx.dtype == torch.long and mutual.dtype == torch.bool

    def test_against_loop(self):
        f_src, f_trg = (
            torch.randn(2, 4, 3, 3, generator=gen()),
            torch.randn(2, 4, 2, 4, generator=gen(1)),
        )
        corr = dense_correlation(f_src, f_trg)
        idx, mutual = mutual_nearest_neighbours(corr)
        flat = corr.flatten(2)
        for b in range(2):
            for s in range(9):
                t = int(flat[b, s].argmax())
                assert int(idx[b, s]) == t
                assert bool(mutual[b, s]) == (int(flat[b, :, t].argmax()) == s)

    def test_identical_features_are_all_mutual(self):
        f = torch.randn(1, 8, 3, 4, generator=gen(2))
        idx, mutual = mutual_nearest_neighbours(dense_correlation(f, f))
        assert idx.tolist() == [list(range(12))] and mutual.all()

    def test_empty(self):
        idx, mutual = mutual_nearest_neighbours(torch.zeros(2, 0, 3, 3))
        assert idx.shape == (2, 0) and mutual.shape == (2, 0)

    def test_error(self):
        with pytest.raises(ValueError, match=r"Argument corr must have shape \(B, S, Ht, Wt\)"):
            mutual_nearest_neighbours(torch.zeros(4, 4))


class TestSampleDescriptors:
    def test_against_loop(self):
        feat = torch.randn(2, 3, 4, 5, generator=gen(), dtype=D)
        cells = torch.rand(2, 6, 2, generator=gen(1), dtype=D) * torch.tensor([4.0, 3.0], dtype=D)
        out = sample_descriptors(feat, cells)
        assert out.shape == (2, 6, 3)
        for b in range(2):
            for n in range(6):
                x, y = cells[b, n].tolist()
                x0, y0 = math.floor(x), math.floor(y)
                ref = torch.zeros(3, dtype=D)
                for dy, wy in ((0, 1 - (y - y0)), (1, y - y0)):
                    for dx, wx in ((0, 1 - (x - x0)), (1, x - x0)):
                        ref += wx * wy * feat[b, :, min(y0 + dy, 3), min(x0 + dx, 4)]
                torch.testing.assert_close(out[b, n], ref)

    def test_cell_centres_are_exact(self):
        feat = torch.randn(1, 3, 4, 5, generator=gen(2), dtype=D)
        out = sample_descriptors(
            feat, torch.tensor([[[0.0, 0.0], [4.0, 3.0], [2.0, 1.0]]], dtype=D)
        )
        torch.testing.assert_close(out[0], feat[0, :, [0, 3, 1], [0, 4, 2]].T)

    def test_empty_and_errors(self):
        assert sample_descriptors(torch.zeros(2, 3, 4, 4), torch.zeros(2, 0, 2)).shape == (2, 0, 3)
        with pytest.raises(ValueError, match=r"Argument cells must have shape \(2, N, 2\)"):
            sample_descriptors(torch.zeros(2, 3, 4, 4), torch.zeros(1, 5, 2))


class TestTransferKeypoints:
    @pytest.mark.parametrize("matcher", MATCHERS)
    def test_one_hot_codes_with_a_known_shift(self, matcher):
        # source map 5x6 cells at stride 8; target map 5x6 cells at stride 16;
        # content moves (+2, -1) cells
        f_src, f_trg = one_hot_codes(5, 6), one_hot_codes(5, 6, shift=(2, -1))
        g_src, g_trg = FeatureGrid.for_map((5, 6), (40, 48)), FeatureGrid.for_map((5, 6), (80, 96))
        cells = torch.tensor([[[0.0, 1.0], [3.0, 4.0], [1.0, 2.0]]], dtype=D)
        kps = g_src.to_pixels(cells)  # cell centres in source pixels: 3.5 + 8 * cell
        out, score = transfer_keypoints(f_src, f_trg, kps, g_src, g_trg, matcher)
        expected = g_trg.to_pixels(cells + torch.tensor([2.0, -1.0], dtype=D))  # 7.5 + 16 * cell
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(score, torch.ones(1, 3, dtype=D))
        assert out.dtype == kps.dtype

    @pytest.mark.parametrize("matcher", MATCHERS)
    def test_smooth_codes_sub_cell_shift(self, matcher):
        # target cell p carries the code of source position p + (0.3, -0.4): source cell q is found
        # at q - (0.3, -0.4). Cosine scores of these codes fall off slowly (0.94 at the best cell,
        # ~0.9 next to it), so the soft matchers need a warmer beta than 0.02 to see the fraction
        # (at 0.02 both are within 0.1 of the integer cell); the kernel window also pulls towards
        # the integer cell.
        f_src, f_trg = rbf_codes(9, 9), rbf_codes(9, 9, offset=(0.3, -0.4))
        grid = FeatureGrid((0.0, 0.0), (1.0, 1.0))
        kps = torch.tensor([[[4.0, 4.0], [3.0, 5.0]]], dtype=D)
        out, _ = transfer_keypoints(f_src, f_trg, kps, grid, grid, matcher, sigma=2.0, beta=0.1)
        truth = kps - torch.tensor([0.3, -0.4], dtype=D)
        err = (out - truth).abs().max()
        tol = {"argmax_subpixel": 0.1, "soft_argmax": 0.05, "kernel_soft_argmax": 0.25}
        if matcher == "argmax":
            torch.testing.assert_close(out, truth.round())
        else:
            assert err < tol[matcher]

    def test_batch_and_unnormalised(self):
        f_src = torch.cat((one_hot_codes(4, 4), one_hot_codes(4, 4)))
        f_trg = torch.cat((one_hot_codes(4, 4, (1, 0)), one_hot_codes(4, 4, (0, 1))))
        grid = FeatureGrid((0.0, 0.0), (1.0, 1.0))
        kps = torch.tensor([[[1.0, 1.0]], [[2.0, 2.0]]], dtype=D)
        out, score = transfer_keypoints(f_src, f_trg, kps, grid, grid, "argmax", normalize=False)
        torch.testing.assert_close(out, torch.tensor([[[2.0, 1.0]], [[2.0, 3.0]]], dtype=D))
        torch.testing.assert_close(score, torch.ones(2, 1, dtype=D))

    def test_gradient_flows_for_soft_matchers(self):
        f_src = torch.randn(1, 8, 4, 4, generator=gen(), dtype=D, requires_grad=True)
        f_trg = torch.randn(1, 8, 4, 4, generator=gen(1), dtype=D, requires_grad=True)
        grid = FeatureGrid((0.0, 0.0), (1.0, 1.0))
        out, _ = transfer_keypoints(
            f_src, f_trg, torch.tensor([[[1.5, 2.0]]], dtype=D), grid, grid, "soft_argmax", beta=0.5
        )
        out.sum().backward()
        assert f_src.grad.abs().sum() > 0 and f_trg.grad.abs().sum() > 0

    @pytest.mark.parametrize("matcher", MATCHERS)
    def test_empty_keypoints(self, matcher):
        grid = FeatureGrid((0.0, 0.0), (1.0, 1.0))
        out, score = transfer_keypoints(
            torch.rand(2, 3, 4, 4),
            torch.rand(2, 3, 5, 5),
            torch.zeros(2, 0, 2),
            grid,
            grid,
            matcher,
        )
        assert out.shape == (2, 0, 2) and score.shape == (2, 0)

    def test_errors(self):
        grid = FeatureGrid((0.0, 0.0), (1.0, 1.0))
        f = torch.zeros(1, 3, 4, 4)
        with pytest.raises(ValueError) as e:
            transfer_keypoints(f, f, torch.zeros(1, 2, 2), grid, grid, "nearest")
        assert str(e.value) == (
            "Unknown value 'nearest' for argument matcher. "
            "Valid values are {argmax, argmax_subpixel, soft_argmax, kernel_soft_argmax}."
        )
        with pytest.raises(
            ValueError,
            match=r"Argument kps_src must have shape \(1, N, 2\) \(3 dims\), got shape \(2, 2\)\.",
        ):
            transfer_keypoints(f, f, torch.zeros(2, 2), grid, grid)
        with pytest.raises(
            ValueError,
            match=(
                r"Argument f_trg must have shape \(1, 3, Ht, Wt\);"
                r" dim 1 should be 3, got shape \(1, 5, 4, 4\)"
            ),
        ):
            transfer_keypoints(f, torch.zeros(1, 5, 4, 4), torch.zeros(1, 2, 2), grid, grid)
        with pytest.raises(ValueError, match=r"Argument f_src must have shape \(B, C, Hs, Ws\)"):
            transfer_keypoints(torch.zeros(3, 4, 4), f, torch.zeros(1, 2, 2), grid, grid)
