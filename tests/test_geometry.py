"""Tests for corrlib.geometry: conventions, parametric grids, flow and keypoint transfer."""

import math

import pytest
import torch
import torch.nn.functional as F

from corrlib.geometry import (
    WARP_KINDS,
    RandomWarp,
    affine_grid,
    flow_to_grid,
    grid_to_flow,
    homography_from_points,
    homography_grid,
    normalized_to_pixel,
    pixel_grid,
    pixel_to_normalized,
    sample_random_warp,
    tps_fit,
    tps_grid,
    tps_transform,
    transfer_kps_with_flow,
    transfer_kps_with_inverse_flow,
    warp_with_flow,
)

D = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def identity_grid(size, dtype=D):
    return pixel_to_normalized(pixel_grid(size, dtype=dtype), size)[None]


def affine_flow(size, a, t, dtype=D):
    """Flow of p -> A p + t on a grid of ``size``: ``(1, 2, H, W)``."""
    p = pixel_grid(size, dtype=dtype)
    return (p @ torch.as_tensor(a, dtype=dtype).T + torch.as_tensor(t, dtype=dtype) - p).permute(
        2, 0, 1
    )[None]


def bilinear_loop(img, x, y):
    """Slow bilinear sample of ``img (C, H, W)`` at pixel (x, y) inside the image."""
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    _, h, w = img.shape
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = min(max(x0 + dx, 0), w - 1), min(max(y0 + dy, 0), h - 1)
            out += wx * wy * img[:, yi, xi]
    return out


# --------------------------------------------------------------------------- conventions


class TestPixelNormalized:
    def test_known_values(self):
        pts = torch.tensor([[0.0, 0.0], [-0.5, -0.5], [3.5, 3.5], [1.5, 1.5], [3.0, 0.0]])
        out = pixel_to_normalized(pts, (4, 4))
        expected = torch.tensor(
            [[-0.75, -0.75], [-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [0.75, -0.75]]
        )
        torch.testing.assert_close(out, expected)

    def test_x_uses_width_and_y_uses_height(self):
        out = pixel_to_normalized(torch.tensor([0.0, 0.0]), (2, 8))  # H=2, W=8
        torch.testing.assert_close(out, torch.tensor([-0.875, -0.5]))
        torch.testing.assert_close(
            normalized_to_pixel(torch.tensor([1.0, 1.0]), (2, 8)), torch.tensor([7.5, 1.5])
        )

    def test_round_trip_any_leading_shape(self):
        pts = torch.rand(2, 3, 5, 2, generator=gen(), dtype=D) * 40 - 5
        for size in [(7, 13), (1, 1), (240, 320)]:
            n = pixel_to_normalized(pts, size)
            assert n.shape == pts.shape
            torch.testing.assert_close(normalized_to_pixel(n, size), pts, rtol=0, atol=1e-12)
            torch.testing.assert_close(
                pixel_to_normalized(normalized_to_pixel(pts, size), size), pts, rtol=0, atol=1e-12
            )

    def test_matches_grid_sample_convention(self):
        # sampling an image at the normalised coordinates of pixel (x, y) returns that pixel
        img = torch.rand(1, 1, 5, 7, generator=gen(), dtype=D)
        grid = identity_grid((5, 7))
        torch.testing.assert_close(F.grid_sample(img, grid, align_corners=False), img)

    def test_integer_pixels_give_float(self):
        out = pixel_to_normalized(torch.tensor([[0, 3]]), (4, 4))
        assert out.is_floating_point()
        torch.testing.assert_close(out, torch.tensor([[-0.75, 0.75]]))

    def test_errors(self):
        with pytest.raises(
            ValueError, match=r"Argument pts must have shape \(\.\.\., 2\), got shape \(4, 3\)\."
        ):
            pixel_to_normalized(torch.zeros(4, 3), (4, 4))
        with pytest.raises(
            ValueError, match=r"Argument pts must have shape \(\.\.\., 2\), got shape \(\)\."
        ):
            normalized_to_pixel(torch.tensor(1.0), (4, 4))
        with pytest.raises(TypeError, match=r"Argument pts must be a torch\.Tensor"):
            pixel_to_normalized([0.0, 0.0], (4, 4))


class TestPixelGrid:
    def test_against_loop(self):
        g = pixel_grid((3, 4))
        assert g.shape == (3, 4, 2) and g.dtype == torch.float32
        for y in range(3):
            for x in range(4):
                assert g[y, x].tolist() == [x, y]

    def test_dtype(self):
        assert pixel_grid((2, 2), dtype=D).dtype == D


# --------------------------------------------------------------------------- parametric grids


class TestAffineGrid:
    def test_identity_is_the_pixel_grid(self):
        theta = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]], dtype=D)
        grid = affine_grid(theta, (5, 7))
        assert grid.shape == (1, 5, 7, 2)
        torch.testing.assert_close(
            normalized_to_pixel(grid, (5, 7))[0], pixel_grid((5, 7), dtype=D)
        )

    @pytest.mark.parametrize("kx, ky", [(2, 0), (0, -1), (3, 2)])
    def test_integer_translation(self, kx, ky):
        h, w = 6, 8
        theta = torch.tensor([[[1.0, 0, 2 * kx / w], [0, 1.0, 2 * ky / h]]], dtype=D)
        grid = affine_grid(theta, (h, w))
        torch.testing.assert_close(
            normalized_to_pixel(grid, (h, w))[0],
            pixel_grid((h, w), dtype=D) + torch.tensor([kx, ky], dtype=D),
        )
        # grid_sample with the grid reproduces the shifted image exactly in the interior
        img = torch.rand(1, 3, h, w, generator=gen(), dtype=D)
        out = F.grid_sample(img, grid, align_corners=False)
        ys, xs = slice(max(0, -ky), h - max(0, ky)), slice(max(0, -kx), w - max(0, kx))
        ys_in, xs_in = slice(ys.start + ky, ys.stop + ky), slice(xs.start + kx, xs.stop + kx)
        torch.testing.assert_close(out[..., ys, xs], img[..., ys_in, xs_in], rtol=0, atol=1e-12)

    def test_batch(self):
        theta = torch.eye(2, 3).expand(3, 2, 3)
        assert affine_grid(theta, (2, 4)).shape == (3, 2, 4, 2)

    def test_error(self):
        with pytest.raises(
            ValueError,
            match=r"Argument theta must have shape \(B, 2, 3\) \(3 dims\), got shape \(2, 3\)\.",
        ):
            affine_grid(torch.eye(2, 3), (4, 4))
        with pytest.raises(
            ValueError,
            match=(
                r"Argument theta must have shape \(B, 2, 3\); "
                r"dim 1 should be 2, got shape \(1, 3, 3\)\."
            ),
        ):
            affine_grid(torch.eye(3)[None], (4, 4))


class TestHomographyGrid:
    def test_affine_matrix_equals_affine_grid(self):
        m = torch.tensor([[[1.1, 0.2, 0.1], [-0.15, 0.9, -0.05], [0, 0, 1]]], dtype=D)
        torch.testing.assert_close(
            homography_grid(m, (6, 9)), affine_grid(m[:, :2], (6, 9)), rtol=0, atol=1e-12
        )

    def test_against_loop(self):
        h = torch.tensor([[[1.0, 0.1, 0.05], [0.02, 0.95, -0.1], [0.1, -0.2, 1.0]]], dtype=D)
        grid = homography_grid(h, (3, 4))
        for y in range(3):
            for x in range(4):
                xn, yn = (2 * x + 1) / 4 - 1, (2 * y + 1) / 3 - 1
                p = h[0] @ torch.tensor([xn, yn, 1.0], dtype=D)
                torch.testing.assert_close(grid[0, y, x], p[:2] / p[2])

    def test_gradcheck(self):
        h = torch.tensor(
            [[[1.0, 0.1, 0.05], [0.02, 0.95, -0.1], [0.1, -0.2, 1.0]]], dtype=D, requires_grad=True
        )
        assert torch.autograd.gradcheck(lambda m: homography_grid(m, (3, 4)), (h,))

    def test_scale_invariance(self):
        h = torch.tensor([[[1.0, 0.1, 0.05], [0.02, 0.95, -0.1], [0.1, -0.2, 1.0]]], dtype=D)
        torch.testing.assert_close(homography_grid(3 * h, (4, 4)), homography_grid(h, (4, 4)))

    def test_point_at_infinity_keeps_sign_and_is_finite(self):
        # w = 0 on the line x = 0 in normalised units: no inf/nan, and the sign of w is kept
        h = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]]], dtype=D)
        grid = homography_grid(h, (1, 3))  # x_n = -2/3, 0, 2/3
        assert torch.isfinite(grid).all()
        torch.testing.assert_close(
            grid[0, 0, 0], torch.tensor([1.0, 0.0], dtype=D)
        )  # (-2/3) / (-2/3)

    def test_error(self):
        with pytest.raises(ValueError, match=r"Argument h must have shape \(B, 3, 3\)"):
            homography_grid(torch.eye(3), (4, 4))


class TestHomographyFromPoints:
    H = torch.tensor([[[1.1, 0.05, 0.1], [-0.08, 0.9, -0.2], [0.15, -0.1, 1.0]]], dtype=D)

    @staticmethod
    def apply(h, pts):
        p = torch.cat((pts, torch.ones_like(pts[..., :1])), -1) @ h.transpose(1, 2)
        return p[..., :2] / p[..., 2:]

    def test_four_points_exact(self):
        src = torch.tensor([[[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]], dtype=D)
        est = homography_from_points(src, self.apply(self.H, src))
        torch.testing.assert_close(est, self.H, rtol=0, atol=1e-10)
        assert est.dtype == D and est.shape == (1, 3, 3)

    def test_pixel_coordinates_are_well_conditioned(self):
        # Hartley normalisation: large pixel coordinates recover the homography in float32 too
        s = torch.diag(torch.tensor([320.0, 240.0, 1.0], dtype=D))[None]
        h_pix = s @ self.H @ torch.linalg.inv(s)
        src = torch.tensor([[[10.0, 20.0], [600.0, 15.0], [620.0, 470.0], [5.0, 460.0]]], dtype=D)
        dst = self.apply(h_pix, src)
        est = homography_from_points(src.float(), dst.float())
        assert est.dtype == torch.float32
        torch.testing.assert_close(self.apply(est.double(), src), dst, rtol=0, atol=0.05)

    def test_ten_noisy_points(self):
        src = torch.rand(1, 10, 2, generator=gen(1), dtype=D) * 2 - 1
        dst = self.apply(self.H, src) + 1e-4 * torch.randn(1, 10, 2, generator=gen(2), dtype=D)
        est = homography_from_points(src, dst)
        torch.testing.assert_close(est, self.H, rtol=0, atol=5e-3)
        test = torch.rand(1, 50, 2, generator=gen(3), dtype=D) * 2 - 1
        torch.testing.assert_close(
            self.apply(est, test), self.apply(self.H, test), rtol=0, atol=1e-3
        )

    def test_batch(self):
        src = torch.rand(3, 6, 2, generator=gen(4), dtype=D)
        hs = self.H.expand(3, 3, 3).clone()
        hs[1, 0, 2] += 0.3
        est = homography_from_points(src, self.apply(hs, src))
        torch.testing.assert_close(est, hs, rtol=0, atol=1e-8)

    def test_errors(self):
        with pytest.raises(ValueError) as e:
            homography_from_points(torch.rand(1, 3, 2), torch.rand(1, 3, 2))
        assert str(e.value) == "Argument src must hold at least 4 points, got 3."
        with pytest.raises(
            ValueError,
            match=(
                r"Argument dst must have shape \(1, 5, 2\); "
                r"dim 1 should be 5, got shape \(1, 4, 2\)"
            ),
        ):
            homography_from_points(torch.rand(1, 5, 2), torch.rand(1, 4, 2))


# --------------------------------------------------------------------------- thin-plate splines


def tps_loop(pts, ctrl, params):
    """Slow TPS evaluation: sum_k w_k U(|p - c_k|) + a0 + a1 x + a2 y, U(r) = r^2 log r^2."""
    k = ctrl.shape[0]
    out = torch.zeros(pts.shape[0], 2, dtype=pts.dtype)
    for n in range(pts.shape[0]):
        acc = params[k] + pts[n, 0] * params[k + 1] + pts[n, 1] * params[k + 2]
        for j in range(k):
            r2 = float(((pts[n] - ctrl[j]) ** 2).sum())
            acc = acc + (r2 * math.log(r2) if r2 > 0 else 0.0) * params[j]
        out[n] = acc
    return out


class TestTps:
    ctrl = torch.tensor(
        [[[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [0.1, 0.2], [-0.4, 0.5]]], dtype=D
    )

    def test_interpolates_control_points(self):
        target = self.ctrl + 0.2 * torch.randn(1, 6, 2, generator=gen(), dtype=D)
        params = tps_fit(self.ctrl, target)
        assert params.shape == (1, 9, 2)
        torch.testing.assert_close(
            tps_transform(self.ctrl, self.ctrl, params), target, rtol=0, atol=1e-12
        )

    def test_interpolates_many_control_points_in_float32(self):
        ctrl = torch.rand(1, 64, 2, generator=gen(5)) * 2 - 1
        target = ctrl + 0.05 * torch.randn(1, 64, 2, generator=gen(6))
        out = tps_transform(ctrl, ctrl, tps_fit(ctrl, target))
        torch.testing.assert_close(out, target, rtol=0, atol=1e-4)

    def test_identity(self):
        params = tps_fit(self.ctrl, self.ctrl)
        pts = torch.rand(1, 20, 2, generator=gen(), dtype=D) * 3 - 1.5
        torch.testing.assert_close(tps_transform(pts, self.ctrl, params), pts, rtol=0, atol=1e-12)
        torch.testing.assert_close(
            tps_grid(self.ctrl, self.ctrl, (5, 6)), identity_grid((5, 6)), rtol=0, atol=1e-12
        )

    def test_reproduces_affine_maps(self):
        a = torch.tensor([[1.2, -0.3], [0.25, 0.8]], dtype=D)
        t = torch.tensor([0.1, -0.2], dtype=D)
        params = tps_fit(self.ctrl, self.ctrl @ a.T + t)
        torch.testing.assert_close(
            params[:, :6], torch.zeros(1, 6, 2, dtype=D), rtol=0, atol=1e-10
        )  # no bending
        pts = torch.rand(1, 30, 2, generator=gen(7), dtype=D) * 4 - 2
        torch.testing.assert_close(
            tps_transform(pts, self.ctrl, params), pts @ a.T + t, rtol=0, atol=1e-10
        )

    def test_against_loop(self):
        target = self.ctrl + 0.2 * torch.randn(1, 6, 2, generator=gen(8), dtype=D)
        params = tps_fit(self.ctrl, target)
        pts = torch.rand(1, 7, 2, generator=gen(9), dtype=D) * 2 - 1
        torch.testing.assert_close(
            tps_transform(pts, self.ctrl, params)[0], tps_loop(pts[0], self.ctrl[0], params[0])
        )

    def test_grid_against_transform(self):
        target = self.ctrl + 0.2 * torch.randn(1, 6, 2, generator=gen(8), dtype=D)
        grid = tps_grid(self.ctrl, target, (4, 5))
        pts = identity_grid((4, 5)).reshape(1, -1, 2)
        torch.testing.assert_close(
            grid.reshape(1, -1, 2), tps_transform(pts, self.ctrl, tps_fit(self.ctrl, target))
        )

    def test_regularised_fit_smooths(self):
        target = self.ctrl + 0.2 * torch.randn(1, 6, 2, generator=gen(), dtype=D)
        exact = tps_fit(self.ctrl, target)
        smooth = tps_fit(self.ctrl, target, reg=10.0)
        assert smooth[:, :6].abs().sum() < exact[:, :6].abs().sum()

    def test_gradcheck(self):
        target = self.ctrl + 0.2 * torch.randn(1, 6, 2, generator=gen(), dtype=D)
        params = tps_fit(self.ctrl, target).requires_grad_()
        pts = (torch.rand(1, 4, 2, generator=gen(3), dtype=D) * 1.6 - 0.8).requires_grad_()
        assert torch.autograd.gradcheck(lambda p, w: tps_transform(p, self.ctrl, w), (pts, params))

    def test_grid_gradcheck_in_the_target(self):
        # what a network regressing TPS parameters (Rocco et al. 2017) back-propagates through
        target = (self.ctrl + 0.1 * torch.randn(1, 6, 2, generator=gen(), dtype=D)).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: tps_grid(self.ctrl, t, (3, 3)), (target,))

    def test_errors(self):
        with pytest.raises(
            ValueError,
            match=(
                r"Argument target must have shape \(1, 6, 2\); "
                r"dim 1 should be 6, got shape \(1, 5, 2\)"
            ),
        ):
            tps_fit(self.ctrl, self.ctrl[:, :5])
        params = tps_fit(self.ctrl, self.ctrl)
        with pytest.raises(
            ValueError,
            match=(
                r"Argument params must have shape \(1, 9, 2\); "
                r"dim 1 should be 9, got shape \(1, 8, 2\)"
            ),
        ):
            tps_transform(self.ctrl, self.ctrl, params[:, :8])
        with pytest.raises(ValueError, match=r"Argument pts must have shape \(1, N, 2\)"):
            tps_transform(torch.zeros(5, 2, dtype=D), self.ctrl, params)


# --------------------------------------------------------------------------- flow


class TestGridFlow:
    def test_identity_grid_is_zero_flow(self):
        flow = grid_to_flow(identity_grid((4, 6)), (4, 6))
        assert flow.shape == (1, 2, 4, 6)
        torch.testing.assert_close(flow, torch.zeros(1, 2, 4, 6, dtype=D), rtol=0, atol=1e-12)

    def test_known_answer_into_another_size(self):
        # every output pixel reads input pixel (0, 0) of a 10x20 image: flow = -p
        grid = pixel_to_normalized(torch.zeros(1, 3, 4, 2, dtype=D), (10, 20))
        flow = grid_to_flow(grid, (10, 20))
        torch.testing.assert_close(flow, -pixel_grid((3, 4), dtype=D).permute(2, 0, 1)[None])

    def test_inverse_of_each_other(self):
        flow = 3 * torch.randn(2, 2, 5, 7, generator=gen(), dtype=D)
        for size in [(5, 7), (9, 4)]:
            torch.testing.assert_close(
                grid_to_flow(flow_to_grid(flow, size), size), flow, rtol=0, atol=1e-12
            )
        grid = torch.rand(2, 5, 7, 2, generator=gen(1), dtype=D) * 2 - 1
        torch.testing.assert_close(
            flow_to_grid(grid_to_flow(grid, (8, 3)), (8, 3)), grid, rtol=0, atol=1e-12
        )

    def test_errors(self):
        with pytest.raises(ValueError, match=r"Argument grid must have shape \(B, H, W, 2\)"):
            grid_to_flow(torch.zeros(1, 2, 4, 4), (4, 4))
        with pytest.raises(
            ValueError,
            match=(
                r"Argument flow must have shape \(B, 2, H, W\); "
                r"dim 1 should be 2, got shape \(1, 4, 4, 2\)"
            ),
        ):
            flow_to_grid(torch.zeros(1, 4, 4, 2), (4, 4))


class TestWarpWithFlow:
    def test_zero_flow_is_identity(self):
        img = torch.rand(2, 3, 5, 6, generator=gen(), dtype=D)
        out, valid = warp_with_flow(img, torch.zeros(2, 2, 5, 6, dtype=D))
        torch.testing.assert_close(out, img, rtol=0, atol=1e-12)
        assert valid.shape == (2, 1, 5, 6) and valid.dtype == torch.bool and valid.all()

    @pytest.mark.parametrize("mode", ["bilinear", "nearest"])
    def test_constant_integer_flow_shifts(self, mode):
        h, w, u, v = 5, 6, 2, -1
        img = torch.rand(1, 2, h, w, generator=gen(), dtype=D)
        flow = torch.zeros(1, 2, h, w, dtype=D)
        flow[:, 0], flow[:, 1] = u, v
        out, valid = warp_with_flow(img, flow, mode)
        for y in range(h):
            for x in range(w):
                inside = 0 <= x + u <= w - 1 and 0 <= y + v <= h - 1
                assert bool(valid[0, 0, y, x]) == inside
                xs, ys = min(max(x + u, 0), w - 1), min(max(y + v, 0), h - 1)  # border replication
                torch.testing.assert_close(out[0, :, y, x], img[0, :, ys, xs], rtol=0, atol=1e-12)

    def test_fractional_flow_against_loop(self):
        img = torch.rand(1, 2, 6, 8, generator=gen(1), dtype=D)
        flow = (
            torch.rand(1, 2, 4, 5, generator=gen(2), dtype=D) * 2
        )  # the flow grid may differ in size
        out, valid = warp_with_flow(img, flow)
        assert out.shape == (1, 2, 4, 5) and valid.all()
        for y in range(4):
            for x in range(5):
                ref = bilinear_loop(
                    img[0], x + float(flow[0, 0, y, x]), y + float(flow[0, 1, y, x])
                )
                torch.testing.assert_close(out[0, :, y, x], ref)

    def test_non_finite_flow_is_invalid(self):
        img = torch.rand(1, 1, 4, 4, generator=gen(), dtype=D)
        flow = torch.zeros(1, 2, 4, 4, dtype=D)
        flow[0, 0, 1, 2] = float("nan")
        flow[0, 1, 3, 0] = float("inf")
        out, valid = warp_with_flow(img, flow)
        assert torch.isfinite(out).all()
        assert not valid[0, 0, 1, 2] and not valid[0, 0, 3, 0] and int(valid.sum()) == 14

    def test_gradcheck(self):
        img = torch.rand(1, 2, 4, 5, generator=gen(), dtype=D, requires_grad=True)
        flow = (0.2 + 0.6 * torch.rand(1, 2, 3, 3, generator=gen(1), dtype=D)).requires_grad_()
        assert torch.autograd.gradcheck(lambda i, f: warp_with_flow(i, f)[0], (img, flow))

    def test_errors(self):
        img = torch.zeros(1, 3, 4, 4)
        with pytest.raises(
            ValueError,
            match=(
                r"Unknown value 'bicubic' for argument mode\. "
                r"Valid values are \{bilinear, nearest\}\."
            ),
        ):
            warp_with_flow(img, torch.zeros(1, 2, 4, 4), "bicubic")
        with pytest.raises(
            ValueError,
            match=(
                r"Argument flow must have shape \(1, 2, H, W\); "
                r"dim 0 should be 1, got shape \(2, 2, 4, 4\)"
            ),
        ):
            warp_with_flow(img, torch.zeros(2, 2, 4, 4))
        with pytest.raises(ValueError, match=r"Argument image must have shape \(B, C, Hi, Wi\)"):
            warp_with_flow(torch.zeros(3, 4, 4), torch.zeros(1, 2, 4, 4))


class TestTransferKpsWithFlow:
    def test_constant_flow(self):
        flow = torch.zeros(1, 2, 6, 6, dtype=D)
        flow[:, 0], flow[:, 1] = 1.5, -2.0
        kps = torch.tensor([[[0.0, 0.0], [2.3, 4.7], [5.0, 5.0]]], dtype=D)
        torch.testing.assert_close(
            transfer_kps_with_flow(flow, kps), kps + torch.tensor([1.5, -2.0], dtype=D)
        )

    def test_linear_flow_exact_at_sub_pixel_keypoints(self):
        a, t = [[1.1, 0.2], [-0.1, 0.9]], [3.0, -1.5]
        flow = affine_flow((8, 10), a, t)
        kps = torch.tensor([[[0.25, 0.5], [3.7, 6.2], [9.0, 7.0], [4.5, 0.0]]], dtype=D)
        expected = kps @ torch.tensor(a, dtype=D).T + torch.tensor(t, dtype=D)
        torch.testing.assert_close(transfer_kps_with_flow(flow, kps), expected, rtol=0, atol=1e-12)

    def test_against_loop(self):
        flow = torch.randn(2, 2, 5, 6, generator=gen(), dtype=D)
        kps = torch.rand(2, 4, 2, generator=gen(1), dtype=D) * torch.tensor([5.0, 4.0], dtype=D)
        out = transfer_kps_with_flow(flow, kps)
        for b in range(2):
            for n in range(4):
                x, y = kps[b, n].tolist()
                torch.testing.assert_close(out[b, n], kps[b, n] + bilinear_loop(flow[b], x, y))

    def test_empty_keypoints(self):
        out = transfer_kps_with_flow(torch.zeros(2, 2, 4, 4), torch.zeros(2, 0, 2))
        assert out.shape == (2, 0, 2)

    def test_errors(self):
        with pytest.raises(
            ValueError,
            match=(
                r"Argument kps must have shape \(1, N, 2\); "
                r"dim 0 should be 1, got shape \(2, 3, 2\)"
            ),
        ):
            transfer_kps_with_flow(torch.zeros(1, 2, 4, 4), torch.zeros(2, 3, 2))
        with pytest.raises(ValueError, match=r"Argument flow must have shape \(B, 2, H, W\)"):
            transfer_kps_with_flow(torch.zeros(2, 4, 4), torch.zeros(1, 3, 2))


class TestTransferKpsWithInverseFlow:
    def test_constant_flow_exact(self):
        flow = torch.zeros(1, 2, 8, 8, dtype=D)
        flow[:, 0], flow[:, 1] = 2.5, -1.25
        src = torch.tensor([[[1.0, 3.0], [4.3, 5.9], [0.2, 6.6]]], dtype=D)
        trg = src + torch.tensor([2.5, -1.25], dtype=D)
        torch.testing.assert_close(
            transfer_kps_with_inverse_flow(flow, trg), src, rtol=0, atol=1e-9
        )

    def test_affine_flow(self):
        a, t = (
            torch.tensor([[1.15, 0.1], [-0.05, 0.9]], dtype=D),
            torch.tensor([2.0, -1.0], dtype=D),
        )
        flow = affine_flow((20, 24), a, t)
        src = (
            torch.rand(1, 30, 2, generator=gen(), dtype=D) * torch.tensor([20.0, 16.0], dtype=D) + 2
        )
        est = transfer_kps_with_inverse_flow(flow, src @ a.T + t)
        assert (est - src).norm(dim=-1).max() < 0.05  # the brief; Newton makes it exact:
        torch.testing.assert_close(est, src, rtol=0, atol=1e-6)

    def test_smooth_flow_round_trip(self):
        p = pixel_grid((24, 24), dtype=D)
        disp = torch.stack((1.5 * torch.sin(p[..., 1] / 5), 1.2 * torch.cos(p[..., 0] / 6)), -1)
        flow = disp.permute(2, 0, 1)[None]
        src = torch.rand(1, 25, 2, generator=gen(1), dtype=D) * 16 + 4
        trg = transfer_kps_with_flow(flow, src)
        est = transfer_kps_with_inverse_flow(flow, trg)
        assert (est - src).norm(dim=-1).max() < 0.05

    def test_float32(self):
        flow = affine_flow((10, 10), [[1.1, 0], [0, 1.1]], [0.5, 0.5]).float()
        src = torch.tensor([[[3.3, 4.4]]])
        est = transfer_kps_with_inverse_flow(flow, src * 1.1 + 0.5)
        assert est.dtype == torch.float32
        torch.testing.assert_close(est, src, rtol=0, atol=1e-4)

    def test_invalid_and_nan_pixels_are_not_used(self):
        flow = torch.zeros(1, 2, 10, 10, dtype=D)
        flow[:, 0] = 3.0
        kps = torch.tensor([[[8.0, 5.0]]], dtype=D)  # true source (5, 5)
        # a decoy: pixel (0, 0) with a flow that lands exactly on the keypoint, marked invalid
        flow[0, :, 0, 0] = torch.tensor([8.0, 5.0], dtype=D)
        valid = torch.ones(1, 1, 10, 10, dtype=torch.bool)
        valid[0, 0, 0, 0] = False
        torch.testing.assert_close(
            transfer_kps_with_inverse_flow(flow, kps, valid), torch.tensor([[[5.0, 5.0]]], dtype=D)
        )
        # the same with a NaN decoy landing nearby and no mask
        flow[0, :, 0, 0] = float("nan")
        out = transfer_kps_with_inverse_flow(flow, kps)
        torch.testing.assert_close(out, torch.tensor([[[5.0, 5.0]]], dtype=D))

    def test_invalid_true_source_uses_nearest_valid_neighbour(self):
        flow = torch.zeros(1, 2, 10, 10, dtype=D)
        flow[:, 0] = 3.0
        valid = torch.ones(1, 1, 10, 10, dtype=torch.bool)
        valid[0, 0, 5, 5] = False  # the source itself is masked: its neighbours' flow still answers
        out = transfer_kps_with_inverse_flow(flow, torch.tensor([[[8.0, 5.0]]], dtype=D), valid)
        torch.testing.assert_close(out, torch.tensor([[[5.0, 5.0]]], dtype=D))

    def test_no_valid_pixel_gives_nan(self):
        flow = torch.zeros(2, 2, 4, 4, dtype=D)
        valid = torch.ones(2, 1, 4, 4, dtype=torch.bool)
        valid[1] = False
        out = transfer_kps_with_inverse_flow(flow, torch.ones(2, 3, 2, dtype=D), valid)
        assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()

    def test_empty_keypoints(self):
        out = transfer_kps_with_inverse_flow(torch.zeros(2, 2, 4, 4), torch.zeros(2, 0, 2))
        assert out.shape == (2, 0, 2)

    def test_errors(self):
        with pytest.raises(
            ValueError,
            match=(
                r"Argument valid must have shape \(1, 1, 4, 4\); "
                r"dim 2 should be 4, got shape \(1, 1, 3, 4\)"
            ),
        ):
            transfer_kps_with_inverse_flow(
                torch.zeros(1, 2, 4, 4),
                torch.zeros(1, 2, 2),
                torch.ones(1, 1, 3, 4, dtype=torch.bool),
            )
        with pytest.raises(ValueError, match=r"Argument kps must have shape \(1, N, 2\)"):
            transfer_kps_with_inverse_flow(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 3))


# --------------------------------------------------------------------------- random warps

#: Measured error of RandomWarp.inverse() for tps (max over 20 seeds x 2 warps of the distance
#: between p and inverse(forward(p)) for pixels of a 64x64 image that land inside): 0.0016 at
#: strength 0.5, 0.0098 at strength 1.0 (normalised units; 0.25 px / 1.2 px in a 240 px image).
TPS_INVERSE_TOL = {0.5: 0.003, 1.0: 0.015}


def round_trip_error(warp, size, inverse):
    """max |p - inverse(forward(p))| over the pixels p whose forward image lies inside."""
    fwd = warp.grid(size).reshape(warp.grid(size).shape[0], -1, 2)
    back = inverse.transform_points(fwd)
    base = identity_grid(size, fwd.dtype).reshape(1, -1, 2)
    inside = (fwd.abs() <= 1).all(-1)
    return (back - base).norm(dim=-1)[inside].max().item()


class TestRandomWarp:
    @pytest.mark.parametrize("kind", ["affine", "homography"])
    def test_inverse_exact(self, kind):
        warp = sample_random_warp(4, kind, 1.0, generator=gen(1))
        assert round_trip_error(warp, (32, 32), warp.inverse()) < 1e-4
        # the grids compose to the identity: sample the inverse grid at the forward grid
        size = (32, 32)
        inv = warp.inverse_grid(size).permute(0, 3, 1, 2)
        composed = F.grid_sample(inv, warp.grid(size), align_corners=False, padding_mode="border")
        fwd = warp.grid(size)
        ok = (fwd.abs() < 1 - 2 / 32).all(-1)  # away from the edge, where border padding kicks in
        err = (composed.permute(0, 2, 3, 1) - identity_grid(size, torch.float32)).norm(dim=-1)[ok]
        # bilinear interpolation of the inverse grid is exact for an affine map; a homography is
        # not linear, so there the residual is the interpolation error, not the inverse's
        assert err.max() < (1e-5 if kind == "affine" else 5e-3)

    @pytest.mark.parametrize("strength", [0.5, 1.0])
    def test_tps_inverse_tolerance(self, strength):
        errs = []
        for seed in range(5):
            warp = sample_random_warp(2, "tps", strength, generator=gen(seed))
            errs.append(round_trip_error(warp, (32, 32), warp.inverse()))
        assert max(errs) < TPS_INVERSE_TOL[strength]

    @pytest.mark.parametrize("kind", WARP_KINDS)
    def test_inverse_grid_is_exact(self, kind):
        warp = sample_random_warp(2, kind, 1.0, generator=gen(3))
        size = (24, 20)
        inv = warp.inverse_grid(size)
        assert inv.shape == (2, 24, 20, 2) and inv.dtype == torch.float32
        back = warp.transform_points(inv.reshape(2, -1, 2))
        torch.testing.assert_close(
            back,
            identity_grid(size, torch.float32).reshape(1, -1, 2).expand(2, -1, -1),
            rtol=0,
            atol=1e-5,
        )

    @pytest.mark.parametrize("kind", WARP_KINDS)
    def test_grid_matches_transform_points(self, kind):
        warp = sample_random_warp(2, kind, 0.7, generator=gen(4), dtype=D)
        pts = identity_grid((5, 4)).reshape(1, -1, 2).expand(2, -1, -1)
        torch.testing.assert_close(warp.grid((5, 4)).reshape(2, -1, 2), warp.transform_points(pts))

    @pytest.mark.parametrize("kind", WARP_KINDS)
    def test_strength_zero_is_identity(self, kind):
        warp = sample_random_warp(3, kind, 0.0, generator=gen())
        torch.testing.assert_close(
            warp.grid((6, 7)),
            identity_grid((6, 7), torch.float32).expand(3, -1, -1, -1),
            rtol=0,
            atol=1e-6,
        )

    @pytest.mark.parametrize("kind", WARP_KINDS)
    def test_reproducible_with_generator(self, kind):
        a = sample_random_warp(2, kind, 0.5, generator=gen(11))
        b = sample_random_warp(2, kind, 0.5, generator=gen(11))
        c = sample_random_warp(2, kind, 0.5, generator=gen(12))
        torch.testing.assert_close(a.grid((4, 4)), b.grid((4, 4)), rtol=0, atol=0)
        assert not torch.allclose(a.grid((4, 4)), c.grid((4, 4)))

    def test_parameter_ranges(self):
        aff = sample_random_warp(50, "affine", 1.0, generator=gen())
        assert aff.matrix.shape == (50, 3, 3)
        torch.testing.assert_close(aff.matrix[:, 2], torch.tensor([0.0, 0.0, 1.0]).expand(50, 3))
        assert aff.matrix[:, :2, 2].abs().max() <= 0.3
        det = torch.linalg.det(aff.matrix[:, :2, :2].double())
        assert (det > math.exp(-0.6) - 1e-6).all() and (
            det < math.exp(0.6) + 1e-6
        ).all()  # shear keeps det
        hom = sample_random_warp(50, "homography", 1.0, generator=gen())
        torch.testing.assert_close(hom.matrix[:, 2, 2], torch.ones(50))
        corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]).expand(
            50, -1, -1
        )
        assert (hom.transform_points(corners) - corners).abs().max() <= 0.35 + 1e-5
        tps = sample_random_warp(50, "tps", 1.0, generator=gen())
        assert tps.ctrl.shape == (50, 9, 2) and (tps.target - tps.ctrl).abs().max() <= 0.25

    def test_dtype(self):
        for kind in WARP_KINDS:
            warp = sample_random_warp(1, kind, 0.5, generator=gen(), dtype=D)
            assert warp.grid((3, 3)).dtype == D and warp.inverse_grid((3, 3)).dtype == D

    def test_affine_inverse_of_inverse(self):
        warp = sample_random_warp(2, "homography", 1.0, generator=gen(), dtype=D)
        torch.testing.assert_close(warp.inverse().inverse().matrix, warp.matrix)

    def test_errors(self):
        with pytest.raises(ValueError) as e:
            sample_random_warp(1, "spline")
        assert str(e.value) == (
            "Unknown value 'spline' for argument kind. Valid values are {affine, homography, tps}."
        )
        with pytest.raises(ValueError, match=r"Argument strength must be in \[0, 1\], got 1.5\."):
            sample_random_warp(1, "affine", 1.5)
        with pytest.raises(ValueError, match="Unknown value 'perspective' for argument kind"):
            RandomWarp("perspective", matrix=torch.eye(3)[None])
        with pytest.raises(ValueError, match="A 'tps' RandomWarp needs ctrl and target"):
            RandomWarp("tps", matrix=torch.eye(3)[None])
        with pytest.raises(ValueError, match="A 'affine' RandomWarp needs a matrix"):
            RandomWarp("affine")
        with pytest.raises(ValueError, match=r"Argument matrix must have shape \(B, 3, 3\)"):
            RandomWarp("homography", matrix=torch.eye(3))


def test_tps_fit_survives_thread_count_change():
    """torch 2.14.1 + MKL: a batched float64 solve of this size fails after set_num_threads."""
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.set_num_threads(max(2, n))
        warp = sample_random_warp(2, "tps", 0.5, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(warp.inverse().target).all()  # fits a 16x16-point TPS per batch item
    finally:
        torch.set_num_threads(n)
