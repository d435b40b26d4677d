"""Real pairs with ground truth, patch-pair datasets and their samplers (corrlib.data.patches)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.datasets  # noqa: F401 (slow first import, paid once at collection)
from PIL import Image

import corrlib.data.patches as P
from corrlib.color import standardize_images
from corrlib.data import DatasetNotFoundError, SyntheticPairs
from corrlib.data.patches import (
    ALOE_GT_SCALE,
    HomographyPair,
    PatchPairs,
    PhotoTourPairs,
    StereoPair,
    gather_patches,
    load_aloe,
    load_graffiti,
    load_motorcycle,
    read_opencv_matrix,
    sample_homography_pairs,
    sample_stereo_pairs,
    sample_synthetic_pairs,
)
from corrlib.geometry import pixel_grid, warp_with_flow


def _texture(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth random grey texture in [0, 1] (bilinear resampling of it is accurate)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, h // 4 + 2, w // 4 + 2, generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0, 0].clamp(0, 1)


def _translation_pair(h: int = 48, w: int = 80, d0: int = 6) -> StereoPair:
    """``right(x) = left(x + d0)``: constant disparity ``d0`` everywhere."""
    base = _texture(h, w + d0)
    left, right = base[:, :w], base[:, d0 : d0 + w]
    rgb = (left * 255).to(torch.uint8).expand(3, -1, -1)
    return StereoPair(
        left=left,
        right=right,
        left_rgb=rgb,
        right_rgb=rgb,
        disparity=torch.full((h, w), float(d0)),
        valid=torch.ones(h, w, dtype=torch.bool),
        name="shift",
        source="test",
    )


def _homography_pair(h: int = 64, w: int = 80) -> HomographyPair:
    """img3 = img1 seen through a mild homography ``hom`` (img1 pixels -> img3 pixels)."""
    img1 = _texture(h, w, seed=1)
    hom = torch.tensor(
        [[0.9, 0.1, 6.0], [-0.08, 1.05, 2.0], [2e-4, -1e-4, 1.0]], dtype=torch.float64
    )
    q = pixel_grid((h, w), dtype=torch.float64).reshape(-1, 2)  # img3 pixels
    p, _ = P._apply_homography(torch.linalg.inv(hom), q)  # where they come from in img1
    flow = (p - q).reshape(h, w, 2).permute(2, 0, 1)[None].float()
    img3, _ = warp_with_flow(img1[None, None], flow)
    rgb = torch.zeros(3, h, w, dtype=torch.uint8)
    return HomographyPair(img1, img3[0, 0], rgb, rgb, hom, "fake-homography", "test")


def test_docstring_examples_run():
    assert doctest.testmod(P).failed == 0


# --- PatchPairs --------------------------------------------------------------------------------


def _ramp(h: int, w: int) -> torch.Tensor:
    """img(x, y) = x + 100 y: bilinear sampling of it is exact inside the image."""
    xy = pixel_grid((h, w))
    return xy[..., 0] + 100 * xy[..., 1]


def test_patches_known_answer_on_a_linear_image():
    img = _ramp(30, 40)
    a_b = torch.tensor(
        [[[0.8, -0.3, 20.5], [0.2, 1.1, 14.25]], [[1.0, 0.0, 10.0], [0.0, 1.0, 9.0]]]
    )
    pp = PatchPairs(
        [img],
        torch.tensor([0, 0]),
        torch.tensor([[12.0, 10.0], [15.5, 12.5]]),
        torch.tensor([0, 0]),
        a_b,
        torch.tensor([True, False]),
        patch_size=5,
    )
    a, b = pp.patches(5)
    assert a.shape == b.shape == (2, 1, 5, 5)
    pts_a, pts_b = pp.patch_coords(5)
    torch.testing.assert_close(a[:, 0], pts_a[..., 0] + 100 * pts_a[..., 1])
    torch.testing.assert_close(b[:, 0], pts_b[..., 0] + 100 * pts_b[..., 1])
    # patch coordinates: row i, column j -> (u, v) = (j - 2, i - 2)
    assert pts_a[0, 0, 0].tolist() == [10.0, 8.0] and pts_a[0, 4, 1].tolist() == [11.0, 12.0]
    u, v = 1.0, -2.0  # column 3, row 0
    expected = a_b[0, :, :2] @ torch.tensor([u, v]) + a_b[0, :, 2]
    torch.testing.assert_close(pts_b[0, 0, 3], expected)


def test_patches_border_padding_and_mixed_image_sizes():
    big, small = _ramp(20, 30), _ramp(8, 10) + 5000
    pp = PatchPairs(
        [big, small],
        torch.tensor([0, 1]),
        torch.tensor([[29.0, 19.0], [9.0, 7.0]]),  # bottom-right corner of each image
        torch.tensor([1, 0]),
        torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]] * 2),
        torch.tensor([True, True]),
    )
    a, _ = pp.patches(3)
    # beyond the corner: the corner value repeated (border padding), also for the smaller image
    assert a[0, 0, 2, 2] == big[19, 29] and a[0, 0, 0, 0] == big[18, 28]
    assert a[1, 0, 2, 2] == small[7, 9] and a[1, 0, 1, 2] == small[7, 9]
    assert a[1, 0, 0, 0] == small[6, 8]


def test_patches_cached_per_size_and_getitem():
    pair = _translation_pair()
    pp = sample_stereo_pairs(pair, 6, patch_size=9)
    a9 = pp.patches(9)
    table, index_a, index_b = pp.patch_table(9)
    assert pp.patch_table(9)[0] is table  # sampled once per size
    assert a9[0].data_ptr() == pp.patches(9)[0].data_ptr() == table.data_ptr()  # views of it
    assert torch.equal(table[index_b], a9[1]) and torch.equal(gather_patches(table, index_a), a9[0])
    assert pp.patches(5)[0].shape == (6, 1, 5, 5)
    a, b, label = pp[0]
    assert a.shape == b.shape == (1, 9, 9) and label.dtype == torch.bool and bool(label)
    assert len(pp) == 6 and "positives=3" in repr(pp)


def test_patch_table_standardized_cuts_from_each_image_standardised_on_its_own():
    pair = _translation_pair()
    pp = sample_stereo_pairs(pair, 6, patch_size=9)
    table, index_a, index_b = pp.patch_table(9, standardize=True)
    assert pp.patch_table(9, standardize=True)[0] is table  # cached apart from [0, 1] patches
    assert pp.patch_table(9)[0] is not table
    scaled = PatchPairs(
        [standardize_images(im) for im in pp.images],
        pp.img_a_index,
        pp.xy_a,
        pp.img_b_index,
        pp.A_b,
        pp.label,
    )
    want, _, _ = scaled.patch_table(9)
    torch.testing.assert_close(table, want)
    assert torch.equal(index_a, torch.arange(6)) and torch.equal(index_b, torch.arange(6, 12))
    with pytest.raises(IndexError, match="6 pairs"):
        pp[6]


def test_patches_chunked_sampling_is_identical(monkeypatch):
    pp = sample_stereo_pairs(_translation_pair(), 30)
    whole = pp.patches(9)
    monkeypatch.setattr(P, "_MAX_SAMPLES_PER_CALL", 81 * 7)  # 7 patches per grid_sample call
    chunked = sample_stereo_pairs(_translation_pair(), 30).patches(9)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


def test_patchpairs_checks_its_inputs():
    img = torch.zeros(10, 10)
    ok = dict(
        img_a_index=torch.zeros(2, dtype=torch.long),
        xy_a=torch.zeros(2, 2),
        img_b_index=torch.zeros(2, dtype=torch.long),
        A_b=torch.zeros(2, 2, 3),
        label=torch.ones(2, dtype=torch.bool),
    )
    with pytest.raises(ValueError, match=r"A_b must have shape \(2, 2, 3\)"):
        PatchPairs([img], **{**ok, "A_b": torch.zeros(2, 3, 3)})
    with pytest.raises(ValueError, match=r"img_b_index must index images \(0..0\)"):
        PatchPairs([img], **{**ok, "img_b_index": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="images is empty"):
        PatchPairs([], **ok)
    with pytest.raises(ValueError, match="size must be an int >= 1"):
        PatchPairs([img], **ok).patches(0)


# --- stereo sampler ----------------------------------------------------------------------------


def test_stereo_positives_identical_for_a_translation_pair():
    pair = _translation_pair()
    pp = sample_stereo_pairs(pair, 40, p_hi=0.0, generator=torch.Generator().manual_seed(0))
    a, b = pp.patches(11)
    pos = pp.label
    assert int(pos.sum()) == 20
    assert (a[pos] - b[pos]).abs().max() < 1e-5
    assert (a[~pos] - b[~pos]).abs().mean() > 0.02  # negatives differ


def test_stereo_negatives_are_offset_by_the_sampled_amount():
    pair, d0 = _translation_pair(), 6.0
    pp = sample_stereo_pairs(
        pair, 60, p_hi=1.0, n_lo=4.0, n_hi=10.0, generator=torch.Generator().manual_seed(1)
    )
    pos, o = pp.label, pp.offset
    x, y = pp.xy_a[:, 0], pp.xy_a[:, 1]
    torch.testing.assert_close(pp.A_b[:, 0, 2], x - d0 + o[:, 0])
    torch.testing.assert_close(pp.A_b[:, 1, 2], y)
    assert torch.equal(pp.A_b[:, :, :2], torch.eye(2).expand(60, 2, 2))
    assert (o[pos, 0].abs() <= 1.0).all() and (o[:, 1] == 0).all()
    assert ((o[~pos, 0].abs() >= 4.0) & (o[~pos, 0].abs() <= 10.0)).all()
    assert (o[~pos, 0] > 0).any() and (o[~pos, 0] < 0).any()  # both signs
    assert torch.equal(pp.xy_a[:30], pp.xy_a[30:])  # row i and row n_pos + i share the reference
    # patch b of a negative is the left image shifted by the offset: right(x - d0 + o) = left(x + o)
    shifted = PatchPairs([pair.left], pp.img_a_index, pp.xy_a + o, pp.img_a_index, pp.A_b, pp.label)
    _, b = pp.patches(9)
    inside = pp.xy_a[:, 0] + o[:, 0] + 4 <= 80 - 1  # left(x + o) exists (right sees further right)
    assert inside.sum() > 40
    torch.testing.assert_close(b[inside], shifted.patches(9)[0][inside], atol=1e-5, rtol=0)


def test_stereo_references_respect_validity_and_margin():
    pair = _translation_pair()
    pair.valid[:, :40] = False
    pp = sample_stereo_pairs(pair, 50, margin=5)
    x, y = pp.xy_a[:, 0], pp.xy_a[:, 1]
    assert (
        (x >= 40).all() and (x <= 80 - 1 - 5).all() and (y >= 5).all() and (y <= 48 - 1 - 5).all()
    )
    assert (x - 6 + 10 <= 80 - 1 - 5).all()  # the farthest negative stays margin inside


def test_stereo_sampler_is_deterministic_per_seed():
    pair = _translation_pair()

    def draw(seed):
        return sample_stereo_pairs(pair, 20, generator=torch.Generator().manual_seed(seed))

    p1, p2, p3 = draw(5), draw(5), draw(6)
    assert torch.equal(p1.xy_a, p2.xy_a) and torch.equal(p1.A_b, p2.A_b)
    assert torch.equal(p1.patches(7)[1], p2.patches(7)[1])
    assert not torch.equal(p1.A_b, p3.A_b)
    assert torch.equal(
        sample_stereo_pairs(pair, 8).A_b, sample_stereo_pairs(pair, 8).A_b
    )  # default


def test_stereo_sampler_ratio_and_errors():
    pair = _translation_pair()
    pp = sample_stereo_pairs(pair, 10, pos_fraction=0.3)
    assert pp.label.tolist() == [True] * 3 + [False] * 7
    assert len(sample_stereo_pairs(pair, 0)) == 0
    with pytest.raises(ValueError, match="0 <= p_hi <= n_lo <= n_hi"):
        sample_stereo_pairs(pair, 4, p_hi=5.0, n_lo=4.0)
    with pytest.raises(ValueError, match="pos_fraction must be in"):
        sample_stereo_pairs(pair, 4, pos_fraction=1.5)
    pair.valid[:] = False
    with pytest.raises(ValueError, match="No pixel can serve as a reference"):
        sample_stereo_pairs(pair, 4)


# --- homography sampler ------------------------------------------------------------------------


def test_homography_jacobian_matches_finite_differences():
    hom = _homography_pair().H
    pts = torch.tensor([[10.0, 20.0], [50.5, 7.25]], dtype=torch.float64)
    _, jac = P._apply_homography(hom, pts)
    e = 1e-5
    for k in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[k] = e
        fd = (P._apply_homography(hom, pts + step)[0] - P._apply_homography(hom, pts - step)[0]) / (
            2 * e
        )
        torch.testing.assert_close(jac[:, :, k], fd)


def test_homography_positives_rectified():
    pair = _homography_pair()
    pp = sample_homography_pairs(
        pair, 40, p_hi=0.0, margin=8, generator=torch.Generator().manual_seed(0)
    )
    a, b = pp.patches(9)
    pos = pp.label
    err = (a - b).abs().mean((1, 2, 3))
    assert (
        err[pos].max() < 0.04
    )  # two bilinear resamplings (making img3, sampling b); measured 0.026
    assert err[~pos].mean() > 10 * err[pos].mean()
    plain = pp.A_b.clone()
    plain[:, :, :2] = torch.eye(2)  # the same centres, not rectified
    a2, b2 = PatchPairs(
        pp.images, pp.img_a_index, pp.xy_a, pp.img_b_index, plain, pp.label
    ).patches(9)
    assert err[pos].mean() < 0.6 * (a2 - b2).abs().mean((1, 2, 3))[pos].mean()  # 0.015 vs 0.039
    q, jac = P._apply_homography(pair.H, pp.xy_a.double())
    torch.testing.assert_close(pp.A_b[:, :, 2], (q + pp.offset.double()).float())
    torch.testing.assert_close(pp.A_b[:, :, :2], jac.float())
    r = pp.offset[~pos].norm(dim=1)
    assert ((r >= 4 - 1e-5) & (r <= 10 + 1e-5)).all()


def test_homography_sampler_deterministic():
    pair = _homography_pair()
    p1 = sample_homography_pairs(pair, 10, margin=8, generator=torch.Generator().manual_seed(3))
    p2 = sample_homography_pairs(pair, 10, margin=8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(p1.A_b, p2.A_b) and torch.equal(p1.xy_a, p2.xy_a)


# --- synthetic sampler -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic() -> SyntheticPairs:
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(2, 3, 8, 10, generator=g)
    images = list(
        F.interpolate(coarse, size=(48, 60), mode="bicubic", align_corners=False).clamp(0, 1)
    )
    return SyntheticPairs(images, size=(48, 64), kind="affine", strength=0.3, n_pairs=2, n_kps=10)


def test_synthetic_positives_at_the_true_match(synthetic):
    pp = sample_synthetic_pairs(synthetic, 40, p_hi=0.0, generator=torch.Generator().manual_seed(0))
    assert len(pp.images) == 4 and torch.equal(pp.img_b_index, pp.img_a_index + 1)
    a, b = pp.patches(7)
    err = (a - b).abs().mean((1, 2, 3))
    pos = pp.label
    assert err[pos].mean() < 0.02
    assert err[~pos].mean() > 2 * err[pos].mean()
    for k in range(len(pp)):  # patch centres are the dataset's keypoints (+ offset)
        sample = synthetic[int(pp.img_a_index[k]) // 2]
        i = int((sample["src_kps"] - pp.xy_a[k]).norm(dim=1).argmin())
        torch.testing.assert_close(pp.xy_a[k], sample["src_kps"][i])
        torch.testing.assert_close(
            pp.A_b[k, :, 2], sample["trg_kps"][i] + pp.offset[k], atol=1e-4, rtol=0
        )


def test_synthetic_sampler_deterministic_and_checked(synthetic):
    p1 = sample_synthetic_pairs(synthetic, 8, generator=torch.Generator().manual_seed(2))
    p2 = sample_synthetic_pairs(synthetic, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(p1.A_b, p2.A_b) and torch.equal(p1.img_a_index, p2.img_a_index)
    with pytest.raises(TypeError, match="must be a SyntheticPairs"):
        sample_synthetic_pairs([1, 2], 4)
    with pytest.raises(ValueError, match="indices is empty"):
        sample_synthetic_pairs(synthetic, 4, indices=[])


# --- loaders: errors and file formats ----------------------------------------------------------


def test_read_opencv_matrix(tmp_path):
    path = tmp_path / "m.xml"
    path.write_text(
        '<?xml version="1.0"?>\n<opencv_storage>\n<K type_id="opencv-matrix"><rows>2</rows>'
        "<cols>3</cols><dt>d</dt><data>\n 1 2 3\n 4e-1 5 -6.5 </data></K>\n</opencv_storage>\n"
    )
    np.testing.assert_array_equal(read_opencv_matrix(path), [[1, 2, 3], [0.4, 5, -6.5]])
    assert read_opencv_matrix(path, "K").dtype == np.float64
    with pytest.raises(ValueError, match="no matrix 'H13' found"):
        read_opencv_matrix(path, "H13")


@pytest.mark.parametrize("loader", [load_aloe, load_graffiti])
def test_missing_opencv_samples_name_the_folder(tmp_path, loader):
    with pytest.raises(DatasetNotFoundError, match="opencv-samples") as info:
        loader(tmp_path)
    assert str(tmp_path / "opencv-samples") in str(info.value)


def test_scale_is_checked():
    with pytest.raises(ValueError, match=r"scale must be in \(0, 1\]"):
        load_motorcycle(scale=2.0)


# --- PhotoTour -----------------------------------------------------------------------------------


def test_phototour_offline_raises_with_instructions(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="download=True") as info:
        PhotoTourPairs(tmp_path, name="yosemite", download=False)
    msg = str(info.value)
    assert "yosemite.zip" in msg and str(tmp_path / "PhotoTour" / "yosemite") in msg
    assert not (tmp_path / "PhotoTour").exists()  # nothing written
    with pytest.raises(ValueError, match="Unknown value 'paris' for argument name"):
        PhotoTourPairs(tmp_path, name="paris")


@pytest.fixture
def fake_phototour(tmp_path):
    """torchvision's cache file ``<root>/PhotoTour/liberty.pt``: (patches, point ids, matches)."""
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (12, 64, 64), generator=g, dtype=torch.uint8)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 4, 5, 5, 5])
    matches = torch.tensor([[0, 1, 1], [2, 5, 0], [9, 11, 1], [3, 8, 0]])
    (tmp_path / "PhotoTour").mkdir()
    torch.save((data, labels, matches), tmp_path / "PhotoTour" / "liberty.pt")
    return tmp_path, data, labels


def test_phototour_test_split_uses_the_match_list(fake_phototour):
    root, data, _ = fake_phototour
    ds = PhotoTourPairs(root, "liberty", train=False)
    assert len(ds) == 4 and ds.labels.tolist() == [True, False, True, False]
    a, b, label = ds[1]
    assert a.shape == (1, 64, 64) and a.dtype == torch.float32 and not bool(label)
    torch.testing.assert_close(a[0], data[2].float() / 255)
    torch.testing.assert_close(b[0], data[5].float() / 255)
    small = PhotoTourPairs(root, "liberty", train=False, size=32)
    assert (
        small[0][0].shape == (1, 32, 32)
        and 0 <= float(small[0][0].min()) <= float(small[0][0].max()) <= 1
    )


def test_phototour_train_pairs_from_point_labels(fake_phototour):
    root, _, labels = fake_phototour
    ds = PhotoTourPairs(root, "liberty", train=True, n_pairs=40, seed=1)
    assert len(ds) == 40 and int(ds.labels.sum()) == 20
    i, j = ds.pairs[:, 0], ds.pairs[:, 1]
    assert (labels[i] == labels[j]).tolist() == ds.labels.tolist()
    assert (i != j).all()
    assert torch.equal(PhotoTourPairs(root, "liberty", n_pairs=40, seed=1).pairs, ds.pairs)


# --- scikit-image's Motorcycle (bundled, offline) ------------------------------------------------


@pytest.fixture(scope="module")
def motorcycle() -> StereoPair:
    return load_motorcycle()


def test_motorcycle_facts(motorcycle):
    p = motorcycle
    assert (
        p.size == (500, 741) and p.left.dtype == torch.float32 and p.left_rgb.shape == (3, 500, 741)
    )
    assert p.left_rgb.dtype == torch.uint8 and 0 <= float(p.left.min()) <= float(p.left.max()) <= 1
    assert int((~p.valid).sum()) == 27226 and (p.disparity[~p.valid] == 0).all()
    d = p.disparity[p.valid]
    assert 7.1 < float(d.min()) < 7.3 and 59.8 < float(d.max()) < 60.0
    assert "Scharstein" in p.source


def _stereo_error(left, right, disp, mask) -> float:
    flow = torch.zeros(1, 2, *left.shape)
    flow[0, 0] = -disp  # x_right = x_left - d
    warped, inside = warp_with_flow(right[None, None], flow)
    m = mask & inside[0, 0]
    return float((warped[0, 0] - left).abs()[m].mean())


def test_motorcycle_disparity_convention(motorcycle):
    p = motorcycle
    good = _stereo_error(p.left, p.right, p.disparity, p.valid)
    assert good < 0.04  # measured 0.029
    assert _stereo_error(p.left, p.right, -p.disparity, p.valid) > 4 * good  # sign flipped
    assert _stereo_error(p.left, p.right, 0 * p.disparity, p.valid) > 4 * good  # no warp


def test_motorcycle_downscaled(motorcycle):
    q = load_motorcycle(scale=0.5)
    assert q.size == (250, 370) and q.name == "motorcycle@0.5"
    assert float(q.disparity[q.valid].max()) == pytest.approx(60.0 * 370 / 741, abs=0.2)
    assert 0.6 < float(q.valid.float().mean()) < float(motorcycle.valid.float().mean())
    assert _stereo_error(q.left, q.right, q.disparity, q.valid) < 0.04


def test_motorcycle_mccnn_pairs(motorcycle):
    pp = sample_stereo_pairs(motorcycle, 400, generator=torch.Generator().manual_seed(0))
    a, b = pp.patches(11)
    err = (a - b).abs().mean((1, 2, 3))
    assert err[pp.label].mean() < 0.6 * err[~pp.label].mean()


# --- real shared data ----------------------------------------------------------------------------


@pytest.mark.realdata
def test_aloe_disparity_scale_factor_is_measured(data_root):
    """The stored value v is v / ALOE_GT_SCALE pixels of disparity: that factor warps best."""
    pair = load_aloe(data_root)
    raw = torch.from_numpy(
        np.asarray(Image.open(data_root / "opencv-samples" / "aloeGT.png")).astype(np.float32)
    )
    torch.testing.assert_close(pair.disparity, raw / ALOE_GT_SCALE)
    left, right, raw = (
        pair.left[::3],
        pair.right[::3],
        raw[::3],
    )  # every 3rd row: rows are independent
    known = raw > 0
    factors = (1 / 4, 1 / 3, 1 / 2, 1.0, 2.0, 3.0, 4.0)
    errors = {s: _stereo_error(left, right, raw / s, known) for s in factors}
    best = min(errors, key=errors.get)
    assert best == ALOE_GT_SCALE
    others = [e for s, e in errors.items() if s != best]
    assert errors[best] < 0.5 * min(others)  # measured 0.034 vs >= 0.119
    assert errors[best] < 0.5 * _stereo_error(left, right, 0 * raw, known)  # no warp: 0.129
    assert errors[best] < 0.5 * _stereo_error(
        left, right, -raw / best, known
    )  # sign flipped: 0.140


@pytest.mark.realdata
def test_aloe_loader(data_root):
    pair = load_aloe(data_root, scale=0.25)
    assert pair.size == (278, 320) and "Middlebury 2006" in pair.source
    d = pair.disparity[pair.valid]
    assert 43 * 0.25 - 1 < float(d.min()) and float(d.max()) < 211 * 0.25 + 1
    assert _stereo_error(pair.left, pair.right, pair.disparity, pair.valid) < 0.05


@pytest.fixture(scope="module")
def graffiti(request) -> HomographyPair:
    return load_graffiti(request.getfixturevalue("data_root"))


@pytest.mark.realdata
def test_graffiti_homography_beats_identity(graffiti):
    g = graffiti
    assert g.H.dtype == torch.float64 and g.H.shape == (3, 3) and g.img1.shape == (640, 800)
    assert g.H[0, 2].item() == pytest.approx(225.67123) and g.H[2, 2].item() == 1.0
    p = pixel_grid(tuple(g.img1.shape), dtype=torch.float64).reshape(-1, 2)
    q, _ = P._apply_homography(g.H, p)
    flow = (q - p).reshape(640, 800, 2).permute(2, 0, 1)[None].float()

    def err(f: torch.Tensor) -> float:
        warped, inside = warp_with_flow(g.img3[None, None], f)
        return float((warped[0, 0] - g.img1).abs()[inside[0, 0]].mean())

    with_h, identity = err(flow), err(torch.zeros_like(flow))
    assert with_h < 0.5 * identity  # measured 0.066 vs 0.249


@pytest.mark.realdata
def test_graffiti_rectified_positives_closer_than_negatives(graffiti):
    pp = sample_homography_pairs(graffiti, 300, generator=torch.Generator().manual_seed(0))
    a, b = pp.patches(32)
    err = (a - b).abs().mean((1, 2, 3))
    assert err[pp.label].mean() < 0.7 * err[~pp.label].mean()  # measured about 0.065 vs 0.146
    # rectification matters: the same centres without the local affine part match worse
    plain = pp.A_b.clone()
    plain[:, :, :2] = torch.eye(2)
    unrect = PatchPairs(pp.images, pp.img_a_index, pp.xy_a, pp.img_b_index, plain, pp.label)
    a2, b2 = unrect.patches(32)
    assert err[pp.label].mean() < (a2 - b2).abs().mean((1, 2, 3))[pp.label].mean()
    assert math.isfinite(float(err.sum()))


def test_phototour_reads_the_official_layout_and_stacks_patches(tmp_path):
    from tests.fake_layouts import write_phototour

    write_phototour(tmp_path, "notredame")  # bmp sheet, info.txt, m50 list: as unzipped
    test = PhotoTourPairs(tmp_path, "notredame", train=False)
    assert len(test) == 48 and test.label.tolist() == [True, False] * 24
    a, b = test.patches(64)
    assert a.shape == (48, 1, 64, 64)
    for i in (0, 5, 47):
        torch.testing.assert_close(a[i], test[i][0])
        torch.testing.assert_close(b[i], test[i][1])
    # the patches once, as stored: uint8 rows of the distinct patches the pairs use
    table, _, index_b = test.patch_table(64)
    assert table.dtype == torch.uint8 and len(table) == len(torch.unique(test.pairs))
    assert test.patch_table(64)[0] is table
    assert torch.equal(gather_patches(table, index_b), b) and a.dtype == torch.float32
    small_a, _ = test.patches(32)
    assert small_a.shape == (48, 1, 32, 32) and test.patch_table(32)[0].dtype == torch.float32
    torch.testing.assert_close(
        small_a[5], PhotoTourPairs(tmp_path, "notredame", False, size=32)[5][0]
    )
    # standardised (the input of an MC-CNN with input_norm="image"): each patch on its own
    std_table, _, std_b = test.patch_table(64, standardize=True)
    assert std_table.dtype == torch.float32 and len(std_table) == len(table)
    torch.testing.assert_close(std_table[std_b], standardize_images(b))
    train = PhotoTourPairs(tmp_path, "notredame", train=True, n_pairs=30, seed=2)
    assert train.label.tolist() == [True] * 15 + [False] * 15
    # each non-match keeps the reference patch of the match in its row: MC-CNN's layout
    assert torch.equal(train.pairs[:15, 0], train.pairs[15:, 0])
