"""Tests of corrlib.models.handcrafted: shapes, grids, known answers and loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.feature import corner_harris, corner_peaks, hog

from corrlib.matching import FeatureGrid
from corrlib.models.handcrafted import (
    DESCRIPTORS,
    cell_flow_to_pixel_flow,
    census_descriptors,
    daisy_descriptors,
    dense_descriptors,
    dense_flow_handcrafted,
    hog_descriptors,
    match_keypoints_handcrafted,
    raw_patch_descriptors,
    sift_descriptors,
    zncc_descriptors,
)

METHODS = ("raw_patch", "zncc", "census", "hog", "daisy", "sift")
SHIFT = (5, 3)  # (dx, dy): content at p in src is at p + SHIFT in trg


def _grey_rgb(grey: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` -> ``(3, H, W)`` with equal channels, so the luma is ``grey`` itself."""
    return grey.expand(3, -1, -1).contiguous()


def _cell_centres(desc: torch.Tensor, grid: FeatureGrid) -> torch.Tensor:
    """Pixel centre of every cell of ``desc (C, h, w)``: ``(h, w, 2)`` (x, y)."""
    h, w = desc.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return grid.to_pixels(torch.stack((xs, ys), dim=-1).float())


@pytest.fixture(scope="module")
def shifted_pair():
    """A 96x96 astronaut crop and the same scene translated by SHIFT, plus corner keypoints."""
    big = torch.from_numpy(data.astronaut()).permute(2, 0, 1)  # (3, 512, 512) uint8
    y0, x0, (dx, dy), s = 10, 160, SHIFT, 96
    src = big[:, y0 : y0 + s, x0 : x0 + s]
    trg = big[:, y0 - dy : y0 - dy + s, x0 - dx : x0 - dx + s]
    grey = src.float().mean(0).numpy() / 255
    peaks = corner_peaks(corner_harris(grey), min_distance=4, exclude_border=24, num_peaks=16)
    kps = torch.from_numpy(peaks[:, ::-1].copy()).float()  # (row, col) -> (x, y)
    return src, trg, kps


# --------------------------------------------------------------------------------------------
# common behaviour
# --------------------------------------------------------------------------------------------


def test_registry():
    assert tuple(DESCRIPTORS) == METHODS
    assert "identity" not in DESCRIPTORS


@pytest.mark.parametrize("method", METHODS)
def test_smoke_shapes_dtype_uint8(method):
    img = (torch.rand(3, 53, 61, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    desc, grid = dense_descriptors(img, method)
    assert desc.dtype == torch.float32 and desc.dim() == 3
    assert torch.isfinite(desc).all()
    assert isinstance(grid, FeatureGrid)
    # every cell centre lies inside the image
    centres = _cell_centres(desc, grid)
    assert centres.min() >= 0 and centres[..., 0].max() <= 60 and centres[..., 1].max() <= 52
    # uint8 is the float image scaled to [0, 1]
    desc_f, grid_f = dense_descriptors(img.float() / 255, method)
    assert grid_f == grid
    torch.testing.assert_close(desc, desc_f)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [0.0, 0.5])
def test_flat_image_is_finite(method, value):
    desc, _ = dense_descriptors(torch.full((3, 40, 40), value), method)
    assert desc.dtype == torch.float32 and torch.isfinite(desc).all()


@pytest.mark.parametrize(
    ("method", "kwargs", "expected"),
    [
        ("raw_patch", {"radius": 2, "step": 3}, (25, (37 - 5) // 3 + 1, (50 - 5) // 3 + 1)),
        ("zncc", {}, (49, 31, 44)),
        ("census", {"radius": 1}, (8, 35, 48)),
        ("hog", {}, (36, 37 // 8 - 1, 50 // 8 - 1)),
        ("daisy", {"step": 4, "radius": 10}, (200, math.ceil(17 / 4), math.ceil(30 / 4))),
        ("sift", {"bin_size": 4, "step": 2}, (128, (37 - 19) // 2 + 1, (50 - 19) // 2 + 1)),
        ("sift", {"bin_size": 3, "step": 3}, (128, (37 - 14) // 3 + 1, (50 - 14) // 3 + 1)),
    ],
)
def test_sizes_not_multiple_of_step(method, kwargs, expected):
    desc, _ = dense_descriptors(torch.rand(3, 37, 50), method, **kwargs)
    assert tuple(desc.shape) == expected


@pytest.mark.parametrize(
    ("method", "size"),
    [("raw_patch", 6), ("zncc", 6), ("census", 6), ("hog", 15), ("daisy", 30), ("sift", 18)],
)
def test_tiny_image_raises(method, size):
    with pytest.raises(ValueError, match=f"too small for {method}"):
        dense_descriptors(torch.rand(3, size, 100), method)


@pytest.mark.parametrize("method", METHODS)
def test_wrong_channels_raises(method):
    with pytest.raises(ValueError, match="must have 3 channels"):
        dense_descriptors(torch.rand(1, 40, 40), method)


def test_bad_arguments_raise():
    img = torch.rand(3, 40, 40)
    with pytest.raises(ValueError, match="Unknown value 'identity' for argument method"):
        dense_descriptors(img, "identity")
    with pytest.raises(ValueError, match=r"or uint8, got dtype torch\.int64"):
        dense_descriptors(torch.zeros(3, 40, 40, dtype=torch.int64), "zncc")
    with pytest.raises(ValueError, match="radius must be an int >= 1"):
        census_descriptors(img, radius=0)
    with pytest.raises(ValueError, match="Unknown value 'L3' for argument block_norm"):
        hog_descriptors(img, block_norm="L3")
    with pytest.raises(ValueError, match="must have 3 channels"):
        match_keypoints_handcrafted(img[:1], img, torch.zeros(1, 2), "zncc")
    with pytest.raises(ValueError, match="src_kps must have shape"):
        match_keypoints_handcrafted(img, img, torch.zeros(1, 3), "zncc")


# --------------------------------------------------------------------------------------------
# patch descriptors
# --------------------------------------------------------------------------------------------


def test_raw_patch_known_answer():
    grey = torch.rand(20, 24, generator=torch.Generator().manual_seed(1))
    desc, grid = raw_patch_descriptors(_grey_rgb(grey), radius=2, step=3)
    for i, j in [(0, 0), (2, 3), (5, 6)]:
        x, y = (int(v) for v in grid.to_pixels(torch.tensor([float(j), float(i)])))
        window = grey[y - 2 : y + 3, x - 2 : x + 3].reshape(-1)
        torch.testing.assert_close(desc[:, i, j], window / window.norm())


def test_zncc_dot_product_is_zncc():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.rand(30, 30, generator=gen), torch.rand(30, 30, generator=gen)
    b = 0.5 * a + 0.5 * b  # correlated, so scores cover a range
    da, grid = zncc_descriptors(_grey_rgb(a), radius=3)
    db, _ = zncc_descriptors(_grey_rgb(b), radius=3)
    cells = torch.randint(0, 24, (20, 4), generator=gen)
    for ia, ja, ib, jb in cells.tolist():
        xa, ya = (int(v) for v in grid.to_pixels(torch.tensor([float(ja), float(ia)])))
        xb, yb = (int(v) for v in grid.to_pixels(torch.tensor([float(jb), float(ib)])))
        pa = a[ya - 3 : ya + 4, xa - 3 : xa + 4].double().numpy().ravel()
        pb = b[yb - 3 : yb + 4, xb - 3 : xb + 4].double().numpy().ravel()
        pa, pb = pa - pa.mean(), pb - pb.mean()
        zncc = float(pa @ pb / np.sqrt((pa @ pa) * (pb @ pb)))
        assert float(da[:, ia, ja] @ db[:, ib, jb]) == pytest.approx(zncc, abs=1e-5)


def test_zncc_invariant_to_affine_brightness():
    grey = torch.rand(25, 25, generator=torch.Generator().manual_seed(3)) * 0.5
    d1, _ = zncc_descriptors(_grey_rgb(grey))
    d2, _ = zncc_descriptors(_grey_rgb(1.7 * grey + 0.1))
    torch.testing.assert_close(d1, d2, atol=1e-5, rtol=0)


def test_census_cosine_is_one_minus_twice_normalised_hamming():
    gen = torch.Generator().manual_seed(4)
    a, b = torch.rand(16, 16, generator=gen), torch.rand(16, 16, generator=gen)
    r = 2
    da, grid = census_descriptors(_grey_rgb(a), radius=r)
    db, _ = census_descriptors(_grey_rgb(b), radius=r)
    n_bits = (2 * r + 1) ** 2 - 1

    def bits(img, x, y):
        return [
            bool(img[y + v, x + u] < img[y, x])
            for v in range(-r, r + 1)
            for u in range(-r, r + 1)
            if (u, v) != (0, 0)
        ]

    for ia, ja, ib, jb in torch.randint(0, 12, (20, 4), generator=gen).tolist():
        xa, ya = int(grid.origin[0]) + ja, int(grid.origin[1]) + ia
        xb, yb = int(grid.origin[0]) + jb, int(grid.origin[1]) + ib
        hamming = sum(p != q for p, q in zip(bits(a, xa, ya), bits(b, xb, yb)))
        cosine = float(da[:, ia, ja] @ db[:, ib, jb])
        assert cosine == pytest.approx(1 - 2 * hamming / n_bits, abs=1e-6)


def test_census_is_invariant_to_monotonic_changes_and_degenerate_at_extrema():
    grey = torch.rand(20, 20, generator=torch.Generator().manual_seed(5))
    d1, _ = census_descriptors(_grey_rgb(grey))
    d2, _ = census_descriptors(_grey_rgb(grey**3))
    torch.testing.assert_close(d1, d2)
    # known weakness: every local maximum has the same (all +1) code
    codes = d1.flatten(1).T  # (h*w, n_bits)
    maxima = (codes > 0).all(dim=1)
    assert maxima.sum() >= 2
    assert codes[maxima].unique(dim=0).shape[0] == 1


# --------------------------------------------------------------------------------------------
# HOG and DAISY (scikit-image) grids
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ppc", "cpb"), [((8, 8), (2, 2)), ((6, 5), (3, 2))])
@pytest.mark.parametrize("probe", [(16, 15), (15, 16), (20, 23), (7, 7), (40, 33), (29, 24)])
def test_hog_grid_from_single_pixel_probe(ppc, cpb, probe):
    """A bright pixel at ``probe`` makes gradients at its 4 neighbours only; exactly the blocks
    whose pixel span (centre +- (b c - 1) / 2, from the grid) holds one of them are non-zero."""
    x0, y0 = probe
    img = torch.zeros(3, 50, 61)
    img[:, y0, x0] = 1
    desc, grid = hog_descriptors(img, pixels_per_cell=ppc, cells_per_block=cpb)
    nonzero = desc.abs().sum(0) > 0
    grads = torch.tensor([[x0 - 1, y0], [x0 + 1, y0], [x0, y0 - 1], [x0, y0 + 1]]).float()
    half = torch.tensor([(cpb[1] * ppc[1] - 1) / 2, (cpb[0] * ppc[0] - 1) / 2])
    centres = _cell_centres(desc, grid)  # (h, w, 2)
    inside = ((grads - centres[:, :, None]).abs() <= half).all(-1).any(-1)
    assert nonzero.any()
    assert torch.equal(inside, nonzero)


@pytest.mark.parametrize("size", [(64, 64), (50, 61), (37, 100)])
def test_hog_block_count_and_values_match_skimage(size):
    img = torch.rand(3, *size, generator=torch.Generator().manual_seed(6))
    desc, grid = hog_descriptors(img)
    grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).double().numpy()
    ref = hog(grey, 9, (8, 8), (2, 2), block_norm="L2-Hys", feature_vector=False)
    assert tuple(desc.shape) == (36, *ref.shape[:2])
    assert grid == FeatureGrid((7.5, 7.5), (8.0, 8.0))
    torch.testing.assert_close(desc[:, 1, 2], torch.from_numpy(ref[1, 2]).float().reshape(-1))


@pytest.mark.parametrize(("size", "step", "radius"), [((47, 61), 4, 15), ((40, 33), 3, 10)])
def test_daisy_count(size, step, radius):
    desc, grid = daisy_descriptors(torch.rand(3, *size), step=step, radius=radius)
    h, w = math.ceil((size[0] - 2 * radius) / step), math.ceil((size[1] - 2 * radius) / step)
    assert tuple(desc.shape) == (200, h, w)
    assert grid == FeatureGrid((radius, radius), (step, step))
    # the last centre still has a full disc inside the image
    last = grid.to_pixels(torch.tensor([w - 1.0, h - 1.0]))
    assert last[0] <= size[1] - 1 - radius and last[1] <= size[0] - 1 - radius


@pytest.mark.parametrize("edge", [27, 30, 33])
def test_daisy_grid_from_step_edge(edge):
    """An edge between pixels ``edge - 1`` and ``edge`` (at ``edge - 0.5``): the centre histogram
    peaks on the cell whose grid position is half a pixel left of it (forward differences)."""
    img = torch.zeros(3, 48, 64)
    img[:, :, edge:] = 1
    desc, grid = daisy_descriptors(img, step=1, normalization="off")
    col = int(desc[:8].sum(0).mean(0).argmax())
    assert float(grid.to_pixels(torch.tensor([col, 0.0]))[0]) == edge - 1
    desc, grid = daisy_descriptors(img.transpose(1, 2), step=1, normalization="off")
    row = int(desc[:8].sum(0).mean(1).argmax())
    assert float(grid.to_pixels(torch.tensor([0.0, row]))[1]) == edge - 1


# --------------------------------------------------------------------------------------------
# dense SIFT
# --------------------------------------------------------------------------------------------


def _sift_loop(grey: torch.Tensor, b: int, step: int, clip: float = 0.2) -> torch.Tensor:
    """Slow, obvious dense SIFT: every pixel votes into every (cell, orientation) of every
    descriptor with weight ``tri(dx) tri(dy) * orientation weight * magnitude``."""
    g = grey.double().tolist()
    hh, ww = grey.shape

    def at(x, y):
        return g[min(max(y, 0), hh - 1)][min(max(x, 0), ww - 1)]

    support, origin = 5 * b - 1, 2.5 * b - 1
    h, w = (hh - support) // step + 1, (ww - support) // step + 1
    out = torch.zeros(128, h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            cx, cy = origin + step * j, origin + step * i
            hist = np.zeros((4, 4, 8))
            for y in range(hh):
                for x in range(ww):
                    gx = (at(x + 1, y) - at(x - 1, y)) / 2
                    gy = (at(x, y + 1) - at(x, y - 1)) / 2
                    mag = math.hypot(gx, gy)
                    t = (math.atan2(gy, gx) % (2 * math.pi)) / (2 * math.pi / 8)
                    o0, frac = math.floor(t), t - math.floor(t)
                    for ky in range(4):
                        for kx in range(4):
                            wx = max(0.0, 1 - abs(x - (cx + (kx - 1.5) * b)) / b)
                            wy = max(0.0, 1 - abs(y - (cy + (ky - 1.5) * b)) / b)
                            hist[ky, kx, o0 % 8] += wx * wy * (1 - frac) * mag
                            hist[ky, kx, (o0 + 1) % 8] += wx * wy * frac * mag
            v = hist.ravel()
            v = np.minimum(v / max(np.linalg.norm(v), 1e-6), clip)
            out[:, i, j] = torch.from_numpy(v / max(np.linalg.norm(v), 1e-6))
    return out


@pytest.mark.parametrize(("size", "b", "step"), [((21, 22), 4, 2), ((15, 17), 3, 1)])
def test_sift_matches_loop_reference(size, b, step):
    grey = torch.rand(*size, generator=torch.Generator().manual_seed(7))
    desc, grid = sift_descriptors(_grey_rgb(grey), bin_size=b, step=step)
    ref = _sift_loop(grey, b, step)
    assert desc.shape == ref.shape
    assert grid.origin == (2.5 * b - 1, 2.5 * b - 1)
    torch.testing.assert_close(desc.double(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("ramp", "bin_"), [("x", 0), ("x+y", 1), ("y", 2), ("-x", 4), ("rot90(x)", 6)]
)
def test_sift_ramp_orientation_bins(ramp, bin_):
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    grey = {
        "x": xs,
        "x+y": xs + ys,
        "y": ys,
        "-x": -xs,
        "rot90(x)": torch.rot90(xs, 1, (0, 1)),  # a 90-degree turn moves energy by -2 bins
    }[ramp] / 100 + 0.5
    desc, _ = sift_descriptors(_grey_rgb(grey))
    per_bin = desc.reshape(16, 8, *desc.shape[1:])[..., 1:-1, 1:-1]  # away from the border
    assert (per_bin[:, bin_] > 0.2).all()
    assert per_bin.sum(1).sub(per_bin[:, bin_]).abs().max() < 1e-6


def test_sift_rot90_equivariance():
    """Rotating the image by 90 degrees, (x, y) -> (y, N - 1 - x), permutes the 4x4 cells
    (cell_x, cell_y) -> (cell_y, 3 - cell_x) and shifts every orientation by -2 bins."""
    n = 27
    grey = torch.rand(n, n, generator=torch.Generator().manual_seed(8))
    desc, grid = sift_descriptors(_grey_rgb(grey), step=1)
    desc_rot, grid_rot = sift_descriptors(_grey_rgb(torch.rot90(grey, 1, (0, 1))), step=1)
    assert grid == grid_rot and grid.to_pixels(torch.tensor([8.0, 0.0]))[0] == n - 1 - 9
    a = desc.reshape(4, 4, 8, 9, 9)  # (cell_y, cell_x, o, i, j)
    expected = a.permute(1, 0, 2, 4, 3).flip(0).flip(3).roll(-2, dims=2)
    torch.testing.assert_close(desc_rot.reshape(4, 4, 8, 9, 9), expected, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# matching: keypoints and dense flow
# --------------------------------------------------------------------------------------------


def _shift_errors(shifted_pair, method, **kwargs):
    src, trg, kps = shifted_pair
    pred, score = match_keypoints_handcrafted(src, trg, kps, method, **kwargs)
    assert pred.shape == kps.shape and score.shape == (len(kps),)
    return (pred - kps - torch.tensor(SHIFT, dtype=torch.float32)).abs().max(dim=1).values


@pytest.mark.parametrize("method", ["raw_patch", "zncc", "sift"])
def test_translation_recovered_within_one_pixel(shifted_pair, method):
    assert _shift_errors(shifted_pair, method).max() <= 1.0


def test_translation_census_away_from_extrema(shifted_pair):
    src, _, kps = shifted_pair
    desc, grid = census_descriptors(src)
    cells = grid.to_cells(kps).long()
    codes = desc[:, cells[:, 1], cells[:, 0]]  # (n_bits, N)
    distinct = codes.sum(0).abs() < math.sqrt(codes.shape[0]) - 1e-3  # not all bits equal
    assert distinct.sum() >= 12  # drop local extrema, whose census codes are all equal
    assert _shift_errors(shifted_pair, "census")[distinct].max() <= 1.0


def test_translation_daisy_within_step(shifted_pair):
    err = _shift_errors(shifted_pair, "daisy")
    assert err.max() <= 4 and err.median() <= 1


def test_translation_hog_within_step(shifted_pair):
    # skimage's HOG bins pixels into cells without interpolation: a sub-cell shift is only
    # recovered within a cell (8 px) on the typical keypoint
    assert _shift_errors(shifted_pair, "hog").median() <= 8


def test_hog_shift_by_one_cell_is_exact():
    big = torch.from_numpy(data.astronaut()).permute(2, 0, 1)
    src, trg = big[:, 10:106, 160:256], big[:, 2:98, 152:248]  # trg = src shifted by (8, 8)
    g = torch.arange(2, 8) * 8 + 7.5  # block centres
    kps = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    pred, _ = match_keypoints_handcrafted(src, trg, kps, "hog", matcher="argmax")
    torch.testing.assert_close(pred, kps + 8)


def test_match_zero_keypoints():
    img = torch.rand(3, 40, 40)
    pred, score = match_keypoints_handcrafted(img, img, torch.zeros(0, 2), "sift")
    assert pred.shape == (0, 2) and score.shape == (0,)


def test_match_max_side_maps_back_to_original_pixels():
    big = torch.from_numpy(data.astronaut()).permute(2, 0, 1)
    img = big[:, 10:90, 160:256]  # (3, 80, 96) -> (3, 40, 48) with max_side=48
    # pixel x' of the half-size image is x = 2 x' + 0.5 of the original
    kps = torch.tensor([[20.0, 12.0], [24.0, 20.0], [30.0, 26.0]]) * 2 + 0.5
    pred, score = match_keypoints_handcrafted(img, img, kps, "zncc", max_side=48, matcher="argmax")
    torch.testing.assert_close(pred, kps)
    assert (score > 0.999).all()


def test_match_max_side_translation(shifted_pair):
    assert _shift_errors(shifted_pair, "sift", max_side=64).max() <= 1.0


def test_cell_flow_to_pixel_flow_is_exact_for_affine_flow():
    grid = FeatureGrid((1.5, 2.0), (3.0, 4.0))
    h, w, size = 5, 6, (24, 20)  # cell centres span x in [1.5, 16.5], y in [2, 18]

    def affine(p):
        return torch.stack((0.5 * p[..., 0] + 0.25 * p[..., 1] + 1, 2 - p[..., 0]), dim=0)

    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    flow = affine(grid.to_pixels(torch.stack((xs, ys), -1).float()))  # (2, h, w)
    out = cell_flow_to_pixel_flow(flow, grid, size)
    assert out.shape == (2, *size)
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(20.0), indexing="ij")
    clamped = torch.stack((xs.clamp(1.5, 16.5), ys.clamp(2.0, 18.0)), dim=-1)
    torch.testing.assert_close(out, affine(clamped), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["zncc", "sift"])
def test_dense_flow_translation(shifted_pair, method):
    src, trg, _ = shifted_pair
    flow = dense_flow_handcrafted(src, trg, method)
    assert flow.shape == (2, 96, 96) and flow.dtype == torch.float32
    inner = flow[:, 24:72, 24:72].reshape(2, -1)
    assert inner.median(dim=1).values.tolist() == [5.0, 3.0]
    ok = (inner - torch.tensor([[5.0], [3.0]])).abs().max(dim=0).values <= 1
    assert ok.float().mean() >= 0.95


def test_dense_flow_chunking_and_max_side():
    img = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(9))
    full = dense_flow_handcrafted(img, img, "census", radius=2)
    chunked = dense_flow_handcrafted(img, img, "census", radius=2, max_bytes=4096)
    torch.testing.assert_close(full, chunked)
    small = dense_flow_handcrafted(img, img.flip(-1), "zncc", max_side=25)
    assert small.shape == (2, 40, 50) and torch.isfinite(small).all()


def _census_first_tied_target(desc: torch.Tensor) -> torch.Tensor:
    """For census ``desc (n_bits, h, w)`` matched against itself: per source cell, the SMALLEST
    target cell with the same code (Hamming 0, the best score), from exact integer arithmetic."""
    codes = (desc > 0).flatten(1).T.long() * 2 - 1  # (h*w, n_bits) +-1
    return (codes @ codes.T).argmax(-1)  # integer dot products: argmax gives the first maximum


def test_dense_flow_census_ties_go_to_the_first_target_whatever_the_chunking():
    # the failure reported on another CPU: equal census codes are exact ties, and the chunked and
    # the full matrix products broke them differently. The ties here are exact by construction
    # (integer codes), so this fails on any CPU if the tie rule depends on the summation order.
    from corrlib.correlation import dense_nearest_neighbour

    img = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(9))
    desc, _ = census_descriptors(img, radius=2)  # (24, 36, 46)
    want = _census_first_tied_target(desc)
    assert (
        want != torch.arange(want.numel())
    ).sum() > 20  # many cells share a code with a smaller one
    for max_bytes in (1, 4096, 123_457, 2**28):
        idx, score = dense_nearest_neighbour(desc[None], desc[None], max_bytes=max_bytes)
        assert torch.equal(idx[0], want)
        torch.testing.assert_close(score[0], torch.ones(want.numel()))
    flows = [
        dense_flow_handcrafted(img, img, "census", radius=2, max_bytes=m) for m in (1, 4096, 2**28)
    ]
    assert all(torch.equal(f, flows[0]) for f in flows)
    h, w = desc.shape[-2:]
    src = torch.arange(h * w)
    cell_flow = torch.stack(((want % w - src % w), (want // w - src // w))).float().reshape(2, h, w)
    inner = flows[0][:, 2 : 2 + h, 2 : 2 + w]  # census cell (i, j) is pixel (i + 2, j + 2)
    # the flow points at the first tied target (float32 bilinear upsampling at the cell centres)
    torch.testing.assert_close(inner, cell_flow, rtol=0, atol=1e-4)


def test_match_keypoints_census_ties_do_not_depend_on_the_batch():
    img = torch.rand(3, 30, 36, generator=torch.Generator().manual_seed(9))
    desc, grid = census_descriptors(img, radius=2)
    h, w = desc.shape[-2:]
    want = _census_first_tied_target(desc)
    tied = (want != torch.arange(h * w)).nonzero()[:, 0][
        :12
    ]  # cells whose first tie is another cell
    assert tied.numel() >= 5
    cells = torch.stack((tied % w, tied // w), dim=-1).float()
    kps = grid.to_pixels(cells)
    pred, _ = match_keypoints_handcrafted(img, img, kps, "census", radius=2, matcher="argmax")
    expected = grid.to_pixels(torch.stack((want[tied] % w, want[tied] // w), dim=-1).float())
    assert torch.equal(pred, expected)
    for i in range(len(kps)):  # one keypoint at a time: the same answer, bit for bit
        one, _ = match_keypoints_handcrafted(
            img, img, kps[i : i + 1], "census", radius=2, matcher="argmax"
        )
        assert torch.equal(one[0], pred[i])
