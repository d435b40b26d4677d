"""Stereo cost volumes, winner-takes-all disparity and the hand-crafted baselines
(corrlib.stereo)."""

from __future__ import annotations

import doctest

import pytest
import torch

import corrlib.metrics
import corrlib.stereo as S
from corrlib.stereo import (
    bad_pixel_rate,
    census_cost_volume,
    cost_volume_from_features,
    cost_volume_from_pairs,
    disparity_wta,
    zncc_cost_volume,
)

INF = float("inf")


def _loop_volume(f_left: torch.Tensor, f_right: torch.Tensor, max_disp: int) -> torch.Tensor:
    """The definition, one pixel at a time."""
    b, _, h, w = f_left.shape
    out = torch.full((b, max_disp + 1, h, w), -INF, dtype=f_left.dtype)
    for i in range(b):
        for d in range(max_disp + 1):
            for y in range(h):
                for x in range(d, w):
                    out[i, d, y, x] = (f_left[i, :, y, x] * f_right[i, :, y, x - d]).sum()
    return out


def _shifted_pair(h: int, w: int, d0: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey random texture: ``right(x) = left(x + d0)``, so ``left(x) = right(x - d0)``
    (disparity d0)."""
    base = torch.rand(h, w + d0, generator=torch.Generator().manual_seed(seed))
    return base[:, :w], base[:, d0 : d0 + w]


def test_docstring_examples_run():
    assert doctest.testmod(S).failed == 0


# --- cost volumes ------------------------------------------------------------------------------


def test_cost_volume_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    fl, fr = torch.randn(2, 3, 3, 6, generator=g), torch.randn(2, 3, 3, 6, generator=g)
    vol = cost_volume_from_features(fl, fr, 3)
    assert vol.shape == (2, 4, 3, 6)
    torch.testing.assert_close(vol, _loop_volume(fl, fr, 3))


def test_cost_volume_minus_inf_exactly_where_x_minus_d_is_outside():
    vol = cost_volume_from_features(torch.rand(1, 2, 3, 6), torch.rand(1, 2, 3, 6), 4)
    d = torch.arange(5)[:, None, None]
    x = torch.arange(6)[None, None, :]
    assert torch.equal(torch.isinf(vol[0]), (x < d).expand(5, 3, 6))
    assert (vol[torch.isinf(vol)] < 0).all()


def test_cost_volume_gradcheck():
    g = torch.Generator().manual_seed(2)
    fl = torch.randn(1, 2, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    fr = torch.randn(1, 2, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)

    def finite(a, b):
        vol = cost_volume_from_features(a, b, 2)
        return vol.masked_fill(torch.isinf(vol), 0.0)

    assert torch.autograd.gradcheck(finite, (fl, fr))


def test_cost_volume_from_pairs_with_dot_product_equals_features():
    g = torch.Generator().manual_seed(1)
    fl, fr = torch.randn(1, 4, 5, 9, generator=g), torch.randn(1, 4, 5, 9, generator=g)
    seen = []

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.append(b)
        return (a * b).sum(1)

    vol = cost_volume_from_pairs(fl, fr, 3, dot)
    torch.testing.assert_close(vol, cost_volume_from_features(fl, fr, 3))
    assert torch.equal(seen[2][..., 2:], fr[..., :-2]) and (seen[2][..., :2] == 0).all()


def test_cost_volume_errors():
    f = torch.rand(1, 2, 3, 5)
    with pytest.raises(ValueError, match="max_disp must be an int >= 0"):
        cost_volume_from_features(f, f, -1)
    with pytest.raises(ValueError, match="max_disp must be an int >= 0"):
        cost_volume_from_features(f, f, True)
    with pytest.raises(ValueError, match="max_disp must be < the image width 5, got 5"):
        cost_volume_from_features(f, f, 5)
    with pytest.raises(ValueError, match=r"f_right must have shape \(1, 2, 3, 5\)"):
        cost_volume_from_features(f, torch.rand(1, 2, 3, 6), 2)
    with pytest.raises(ValueError, match=r"score_fn output \(d=0\) must have shape"):
        cost_volume_from_pairs(f, f, 1, lambda a, b: a * b)
    with pytest.raises(TypeError, match="score_fn must be callable"):
        cost_volume_from_pairs(f, f, 1, 3)


# --- winner takes all --------------------------------------------------------------------------


def test_disparity_wta_argmax_and_ties():
    vol = torch.tensor([0.1, 0.9, 0.9, 0.2]).reshape(1, 4, 1, 1)
    assert disparity_wta(vol).item() == 1.0  # ties -> the smaller disparity
    vol = torch.tensor([[-INF, 0.3, 0.7], [0.5, 0.2, 0.1]]).T.reshape(1, 3, 1, 2)
    assert disparity_wta(vol).flatten().tolist() == [2.0, 0.0]


@pytest.mark.parametrize("peak", [1.0, 2.3, 2.5, 3.49, 4.7])
def test_disparity_wta_subpixel_exact_for_a_parabola(peak):
    vol = -((torch.arange(7.0) - peak) ** 2).reshape(1, 7, 1, 1)
    assert disparity_wta(vol, subpixel=True).item() == pytest.approx(peak, abs=1e-5)


def test_census_without_window_ties_at_local_maxima():
    left, right = _shifted_pair(24, 40, 3)
    vol = census_cost_volume(left, right, 9, radius=2)[0]
    perfect = (vol > 1 - 1e-6).sum(0)  # disparities with a perfect census match, per pixel
    assert perfect.max() > 1  # local maxima of the noise match each other perfectly


def test_disparity_wta_subpixel_leaves_ends_and_inf_alone():
    vol = torch.tensor([[5.0, 3.0, 1.0], [1.0, 3.0, 5.0], [-INF, 4.0, 1.0]]).T.reshape(1, 3, 1, 3)
    assert disparity_wta(vol, subpixel=True).flatten().tolist() == [0.0, 2.0, 1.0]


def test_disparity_wta_shape_error():
    with pytest.raises(ValueError, match=r"volume must have shape \(B, D, H, W\)"):
        disparity_wta(torch.rand(3, 4, 5))


# --- census and ZNCC ---------------------------------------------------------------------------


# census needs a correlation window: per pixel, all local maxima share the all-ones code
@pytest.mark.parametrize(("fn", "window"), [(census_cost_volume, 2), (zncc_cost_volume, 0)])
@pytest.mark.parametrize("d0", [0, 3, 7])
def test_constant_disparity_is_solved_exactly(fn, window, d0):
    h, w, r, max_disp = 24, 40, 2, 9
    left, right = _shifted_pair(h, w, d0)
    vol = fn(left, right, max_disp, radius=r, window=window)
    assert vol.shape == (1, max_disp + 1, h, w)
    disp = disparity_wta(vol)[0]
    inner = disp[r : h - r, r + d0 : w - r]  # pixels whose true match has a full window
    assert (inner == d0).all()


def test_zncc_is_invariant_to_gain_and_offset():
    left, right = _shifted_pair(24, 40, 4, seed=3)
    disp = disparity_wta(zncc_cost_volume(left, 0.6 * right + 0.3, 8, radius=2))[0]
    assert (disp[2:-2, 6:-2] == 4).all()


@pytest.mark.parametrize("fn", [census_cost_volume, zncc_cost_volume])
def test_descriptor_volume_border_is_minus_inf(fn):
    h, w, r, max_disp = 12, 20, 2, 5
    left, right = _shifted_pair(h, w, 2)
    vol = fn(left, right, max_disp, radius=r)[0]  # (D, H, W)
    y = torch.arange(h)[None, :, None]
    x = torch.arange(w)[None, None, :]
    d = torch.arange(max_disp + 1)[:, None, None]
    expected = (y < r) | (y >= h - r) | (x < r) | (x >= w - r) | (x - d < r)
    assert torch.equal(torch.isinf(vol), expected)


@pytest.mark.parametrize("fn", [census_cost_volume, zncc_cost_volume])
def test_window_aggregation_keeps_the_answer_and_the_border(fn):
    left, right = _shifted_pair(24, 40, 5, seed=2)
    plain, agg = fn(left, right, 8, radius=2), fn(left, right, 8, radius=2, window=2)
    assert torch.equal(torch.isinf(plain), torch.isinf(agg))
    assert (disparity_wta(agg)[0, 2:-2, 7:-2] == 5).all()


def test_grey_and_rgb_inputs_agree():
    left, right = _shifted_pair(16, 24, 2)
    grey = census_cost_volume(left, right, 4, radius=1)
    rgb = census_cost_volume(left.expand(3, -1, -1), right.expand(3, -1, -1), 4, radius=1)
    torch.testing.assert_close(grey, rgb)


def test_descriptor_volume_errors():
    img = torch.rand(16, 24)
    with pytest.raises(ValueError, match=r"left must have shape \(H, W\) \(grey\) or \(3, H, W\)"):
        census_cost_volume(torch.rand(1, 16, 24), img, 4)
    with pytest.raises(ValueError, match="left and right must have the same shape"):
        zncc_cost_volume(img, torch.rand(16, 23), 4)
    with pytest.raises(ValueError, match="window must be an int >= 0"):
        zncc_cost_volume(img, img, 4, window=-1)
    with pytest.raises(ValueError, match="max_disp must be < the image width 18"):
        census_cost_volume(img, img, 18, radius=3)  # 24 - 2 * 3 columns of descriptors


def test_bad_pixel_rate_is_the_metrics_one():
    assert bad_pixel_rate is corrlib.metrics.bad_pixel_rate


def test_census_on_motorcycle_beats_zero_disparity():
    """Real pair (bundled with scikit-image): the loader's convention and the volume's agree."""
    from corrlib.data import load_motorcycle

    pair = load_motorcycle(scale=0.25)
    vol = census_cost_volume(pair.left, pair.right, 18, radius=3, window=2)
    disp = disparity_wta(vol, subpixel=True)[0]
    mask = pair.valid & torch.isfinite(vol[0]).any(0)
    bad2 = bad_pixel_rate(disp, pair.disparity, mask, 2.0)
    assert bad2 < 0.15  # measured 0.07
    assert bad_pixel_rate(torch.zeros_like(disp), pair.disparity, mask, 2.0) > 0.9
