"""Synthetic warped pairs with exact ground truth (corrlib.data.synthetic)."""

from __future__ import annotations

import pytest
import torch

from corrlib.data.synthetic import SKIMAGE_PHOTOS, SyntheticPairs, skimage_photos
from corrlib.geometry import pixel_grid, transfer_kps_with_flow, warp_with_flow

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (48, 64)  # (H, W): small, so every test stays well under a second
KINDS = ("affine", "homography", "tps", "mixed")


def _smooth_image(h: int, w: int) -> torch.Tensor:
    """A float RGB image of gentle ramps and waves (bilinear resampling keeps it accurate)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack((x, y, 0.5 + 0.4 * torch.sin(6 * x) * torch.cos(5 * y)))


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(3, 60, 80, generator=g) * 255).to(torch.uint8)  # uint8 input
    return [noise, _smooth_image(70, 90), torch.rand(3, 50, 50, generator=g)]


def _pairs(images, kind="affine", **kw) -> SyntheticPairs:
    kw = {"size": SIZE, "n_pairs": 4, "n_kps": 12, **kw}
    return SyntheticPairs(images, kind=kind, **kw)


# ------------------------------------------------------------------------------------------------
# smoke: keys, shapes, dtypes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sample_layout(images, kind):
    ds = _pairs(images, kind)
    assert len(ds) == 4
    h, w = SIZE
    s = ds[1]
    assert set(s) == {
        "src_img", "trg_img", "flow", "flow_valid", "trg_flow", "trg_flow_valid",
        "src_kps", "trg_kps", "category", "pair_index", "src_size", "trg_size",
    }  # fmt: skip
    for key in ("src_img", "trg_img"):
        assert s[key].shape == (3, h, w) and s[key].dtype == torch.float32
        assert 0 <= s[key].min() and s[key].max() <= 1
    for key in ("flow", "trg_flow"):
        assert s[key].shape == (2, h, w) and s[key].dtype == torch.float32
        assert torch.isfinite(s[key]).all()
    for key in ("flow_valid", "trg_flow_valid"):
        assert s[key].shape == (h, w) and s[key].dtype == torch.bool
        assert s[key].float().mean() > 0.3  # a moderate warp keeps most of the image
    for key in ("src_kps", "trg_kps"):
        assert s[key].shape == (12, 2) and s[key].dtype == torch.float32
    assert s["pair_index"] == 1
    assert s["src_size"] == s["trg_size"] == SIZE
    if kind == "mixed":
        assert s["category"] in {"synthetic-affine", "synthetic-homography", "synthetic-tps"}
    else:
        assert s["category"] == f"synthetic-{kind}"


def test_mixed_draws_several_kinds(images):
    ds = _pairs(images, "mixed", size=(24, 32), n_pairs=6, n_kps=4)
    cats = {ds[i]["category"] for i in range(6)}
    assert cats <= {"synthetic-affine", "synthetic-homography", "synthetic-tps"}
    assert len(cats) >= 2


def test_transform_is_applied(images):
    def transform(sample: dict) -> dict:
        sample["extra"] = sample["pair_index"] * 10
        return sample

    s = _pairs(images, transform=transform)[2]
    assert s["extra"] == 20


def test_works_with_a_dataloader(images):
    batch = next(iter(torch.utils.data.DataLoader(_pairs(images, "homography"), batch_size=2)))
    assert batch["src_img"].shape == (2, 3, *SIZE)
    assert batch["src_kps"].shape == (2, 12, 2)
    assert batch["category"] == ["synthetic-homography"] * 2


# ------------------------------------------------------------------------------------------------
# determinism
# ------------------------------------------------------------------------------------------------


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_per_seed_and_index(images, kind):
    a = _pairs(images, kind, seed=3)
    torch.manual_seed(123)  # the global RNG must not matter
    first = a[2]
    torch.manual_seed(456)
    _assert_same(first, a[2])  # same object, read twice
    _assert_same(first, _pairs(images, kind, seed=3)[2])  # a fresh object, same seed
    other = a[3]
    assert not torch.equal(first["trg_kps"], other["trg_kps"])
    assert not torch.equal(first["trg_img"], other["trg_img"])
    reseeded = _pairs(images, kind, seed=4)[2]
    assert not torch.equal(first["trg_kps"], reseeded["trg_kps"])


# ------------------------------------------------------------------------------------------------
# known answers: the ground truth is right
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_flows_transfer_keypoints(images, kind):
    ds = _pairs(images, kind)
    for i in range(len(ds)):
        s = ds[i]
        fwd = transfer_kps_with_flow(s["flow"][None], s["src_kps"][None])[0]
        assert (fwd - s["trg_kps"]).abs().max() < 1e-2, (i, s["category"])
        back = transfer_kps_with_flow(s["trg_flow"][None], s["trg_kps"][None])[0]
        assert (back - s["src_kps"]).abs().max() < 1e-2, (i, s["category"])


@pytest.mark.parametrize("kind", KINDS)
def test_flows_are_mutually_inverse(images, kind):
    # flow(trg_flow(p) + p) + trg_flow(p) = 0 wherever both are valid (dense check of both)
    s = _pairs(images, kind)[0]
    # the src->trg flow read at p + trg_flow(p), for every trg pixel p
    landed, ok = warp_with_flow(s["flow"][None], s["trg_flow"][None])
    ok = ok[0, 0] & s["trg_flow_valid"]
    assert ok.float().mean() > 0.3
    assert ((landed[0] + s["trg_flow"])[:, ok]).abs().max() < 0.05


@pytest.mark.parametrize("kind", KINDS)
def test_images_agree_with_the_flow(images, kind):
    ds = _pairs(images, kind)
    for i in range(len(ds)):
        s = ds[i]
        warped, valid = warp_with_flow(s["src_img"][None], s["trg_flow"][None])
        valid = valid[0, 0]
        assert valid.float().mean() > 0.3
        assert (warped[0] - s["trg_img"])[:, valid].abs().mean() < 1e-4, (i, s["category"])
        # a full pixel or more outside the source, the target is black (zero padding)
        h, w = SIZE
        x, y = pixel_grid(SIZE).permute(2, 0, 1) + s["trg_flow"]
        far = (x <= -1) | (x >= w) | (y <= -1) | (y >= h)
        assert not (far & s["trg_flow_valid"]).any()
        assert s["trg_img"][:, far].abs().sum() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_keypoints_inside_both_images(images, kind):
    h, w = SIZE
    ds = _pairs(images, kind, strength=1.0, n_kps=30)
    for i in range(len(ds)):
        s = ds[i]
        for key in ("src_kps", "trg_kps"):
            kps = s[key]
            assert (kps >= 0).all(), key
            assert (kps[:, 0] <= w - 1).all() and (kps[:, 1] <= h - 1).all(), key


@pytest.mark.parametrize("kind", KINDS)
def test_zero_strength_is_the_identity(kind):
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (3, *SIZE), dtype=torch.uint8, generator=g)
    s = SyntheticPairs([img], size=SIZE, kind=kind, strength=0.0, n_pairs=1, n_kps=8)[0]
    # the image already has the target size: crop = whole image, resize = identity
    assert (s["src_img"] - img.float() / 255).abs().max() < 1e-6
    assert (s["trg_img"] - s["src_img"]).abs().max() < 1e-5
    assert s["flow"].abs().max() < 1e-4 and s["trg_flow"].abs().max() < 1e-4
    assert s["flow_valid"].all() and s["trg_flow_valid"].all()
    assert (s["src_kps"] - s["trg_kps"]).abs().max() < 1e-4


def test_float_and_uint8_images_give_the_same_pair():
    g = torch.Generator().manual_seed(2)
    img = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=g)
    a = SyntheticPairs([img], size=(32, 32), n_pairs=1)[0]
    b = SyntheticPairs([img.float() / 255], size=(32, 32), n_pairs=1)[0]
    assert (a["trg_img"] - b["trg_img"]).abs().max() < 1e-6
    assert torch.equal(a["trg_kps"], b["trg_kps"])


# ------------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_rectangle_mask_follows_an_identity_warp(kind):
    h, w = SIZE
    img = _smooth_image(h, w)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[10:30, 20:50] = True  # rows 10..29, columns 20..49
    s = SyntheticPairs([img], size=SIZE, kind=kind, strength=0.0, n_pairs=1, masks=[mask])[0]
    for key in ("src_mask", "trg_mask"):
        m = s[key]
        assert m.shape == (h, w) and m.dtype == torch.bool, key
        assert m[20, 35] and m[10, 20] and m[29, 49], key  # inside, incl. corners
        assert not m[5, 5] and not m[9, 35] and not m[20, 50] and not m[40, 60], key  # outside
        assert torch.equal(m, mask), key


def test_mask_is_warped_with_the_image():
    # a mask equal to a thresholded image channel must stay equal to it after the warp
    img = _smooth_image(60, 80)
    mask = img[0] > 0.5  # the right half of the image (the x ramp)
    img[:] = mask.float()  # all three channels = the mask
    s = SyntheticPairs([img], size=SIZE, kind="homography", n_pairs=1, masks=[mask])[0]
    inside = s["trg_flow_valid"]
    assert s["trg_mask"].any() and not s["trg_mask"].all()
    agree = (s["trg_mask"] == (s["trg_img"][0] > 0.5))[inside]
    assert agree.float().mean() > 0.99  # only boundary pixels may differ by rounding
    h, w = SIZE
    pts = pixel_grid(SIZE) + s["trg_flow"].permute(1, 2, 0)
    beyond = (
        (pts[..., 0] < -0.5)
        | (pts[..., 0] > w - 0.5)
        | (pts[..., 1] < -0.5)
        | (pts[..., 1] > h - 0.5)
    )
    assert not s["trg_mask"][beyond].any()  # beyond the source image's edge: background


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_unknown_kind(images):
    with pytest.raises(
        ValueError,
        match=(
            r"Unknown value 'spline' for argument kind\. "
            r"Valid values are \{affine, homography, tps, mixed\}\."
        ),
    ):
        SyntheticPairs(images, kind="spline")


def test_empty_images():
    with pytest.raises(
        ValueError, match=r"Argument images is empty: give at least one \(3, H, W\) image\."
    ):
        SyntheticPairs([])


def test_grey_image(images):
    with pytest.raises(
        ValueError, match=r"Argument images\[1\] must have 3 channels \(RGB\).*grey image"
    ):
        SyntheticPairs([images[0], torch.rand(1, 20, 20)])
    with pytest.raises(ValueError, match=r"Argument images\[0\] must have shape \(3, H, W\)"):
        SyntheticPairs([torch.rand(20, 20)])


def test_masks_length_mismatch(images):
    with pytest.raises(
        ValueError, match=r"masks and images must have the same length, got 1 and 3\."
    ):
        SyntheticPairs(images, masks=[torch.zeros(10, 10)])


@pytest.mark.parametrize("index", [4, 100, -1])
def test_index_out_of_range(images, index):
    ds = _pairs(images)
    with pytest.raises(IndexError, match=rf"index {index} out of range for 4 pairs"):
        ds[index]


def test_strength_out_of_range(images):
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\], got 1\.5"):
        _pairs(images, strength=1.5)  # checked at construction


# ------------------------------------------------------------------------------------------------
# scikit-image photographs
# ------------------------------------------------------------------------------------------------


def test_skimage_photos():
    photos = skimage_photos(("chelsea", "colorwheel"))
    assert len(photos) == 2
    for p in photos:
        assert p.dtype == torch.uint8 and p.dim() == 3 and p.shape[0] == 3
        assert p.is_contiguous()
    assert photos[0].shape == (3, 300, 451)  # chelsea the cat, 451 x 300 px
    assert photos[0].float().std() > 10  # a real photo, not a blank
    assert set(SKIMAGE_PHOTOS) >= {"astronaut", "chelsea", "coffee"}


def test_skimage_photos_feed_the_dataset():
    s = SyntheticPairs(skimage_photos(("coffee",)), size=(32, 40), n_pairs=1, n_kps=5)[0]
    assert s["src_img"].shape == (3, 32, 40) and s["src_img"].std() > 0.05


def test_skimage_photos_unknown_name():
    valid = ", ".join(SKIMAGE_PHOTOS)
    with pytest.raises(
        ValueError,
        match=rf"Unknown value 'lena' for argument names\. Valid values are \{{{valid}\}}\.",
    ):
        skimage_photos(("chelsea", "lena"))


def test_cycle_images_uses_every_image_in_turn():
    """RTN's synthetic stage warps each photograph once: pair i comes from image i mod N."""
    images = [torch.full((3, 40, 40), v, dtype=torch.uint8) for v in (10, 120, 240)]
    ds = SyntheticPairs(images, size=(32, 32), n_pairs=6, n_kps=0, cycle_images=True)
    means = [round(float(ds[i]["src_img"].mean()) * 255) for i in range(6)]
    assert means == [10, 120, 240, 10, 120, 240]
    drawn = SyntheticPairs(images, size=(32, 32), n_pairs=30, n_kps=0)
    assert len({round(float(drawn[i]["src_img"].mean()) * 255) for i in range(30)}) == 3
