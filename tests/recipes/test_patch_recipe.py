"""Tests of the chapter-01 recipe: data assembly, losses per architecture, training, evaluation."""

import pytest
import torch

from corrlib import eval as ev
from corrlib.data import PatchPairs, PhotoTourPairs
from corrlib.models.patch import export_patch_model, load_patch_model
from corrlib.recipes import get_config
from corrlib.recipes import patch as recipe
from tests.recipes._seeding import initial_params, same_state


@pytest.fixture(scope="module")
def cfg():
    return get_config("01_patch", "smoke")


def _shift_pairs(n=40, shift=3.0, seed=0):
    """Pairs on one smooth random image: positives at the same point, negatives `shift` px away."""
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 80, 80, generator=g), 5, 1, 2)[0, 0]
    xy = torch.rand(n, 2, generator=g) * 40 + 20
    xy = torch.cat((xy, xy))
    a_b = torch.zeros(2 * n, 2, 3)
    a_b[:, 0, 0] = a_b[:, 1, 1] = 1
    a_b[:, :, 2] = xy
    a_b[n:, 0, 2] += shift
    label = torch.arange(2 * n) < n
    idx = torch.zeros(2 * n, dtype=torch.long)
    return PatchPairs([img], idx, xy, idx, a_b, label)


def test_pool_pairs_positives_with_their_negatives():
    pp, second = _shift_pairs(10), _shift_pairs(5, seed=1)
    pool = recipe.PatchPool.from_pairs([pp, second], 9)
    assert pool.a.shape == (30, 1, 9, 9)
    # each set's pairs keep their own patches after stacking (rows offset by the tables before)
    for rows, pairs in ((slice(0, 20), pp), (slice(20, 30), second)):
        a, b = pairs.patches(9)
        assert torch.equal(pool.a[rows], a) and torch.equal(pool.b[rows], b)
    assert torch.equal(pool.pos, torch.cat((torch.arange(10), torch.arange(20, 25))))
    assert pool.label[pool.pos].all() and not pool.label[pool.neg].any()
    assert torch.equal(pool.a[pool.pos], pool.a[pool.neg])  # same reference patch
    batch = pool.batch_fn(8)(0, torch.Generator().manual_seed(0))
    assert batch["label"].tolist() == [True] * 4 + [False] * 4
    assert torch.equal(batch["a"][:4], batch["a"][4:])


def test_pool_keeps_brown_patches_once_in_uint8_and_scores_in_batches(tmp_path):
    from tests.fake_layouts import write_phototour

    write_phototour(tmp_path, "liberty")
    brown = PhotoTourPairs(tmp_path, "liberty", train=True, n_pairs=30, seed=0)
    pool = recipe.PatchPool.from_pairs([brown], 64)
    # Brown's 8-bit patches once each (4 KiB at 64 px), not two float copies per pair (32 KiB)
    assert pool.patches.dtype == torch.uint8 and len(pool.patches) < 2 * len(brown)
    a, b = brown.patches(64)
    assert torch.equal(pool.a, a) and torch.equal(pool.b, b)
    batch = pool.batch_fn(8)(0, torch.Generator().manual_seed(0))
    assert batch["a"].dtype == torch.float32 and torch.equal(batch["a"][:4], batch["a"][4:])
    # with a float source (sampled stereo patches) the pool holds float32 throughout
    stereo = _shift_pairs(5, seed=1)
    mixed = recipe.PatchPool.from_pairs([brown, stereo], 64)
    assert mixed.patches.dtype == torch.float32 and torch.equal(mixed.a[:30], a)
    sa, sb = stereo.patches(64)
    assert torch.equal(mixed.a[30:], sa) and torch.equal(mixed.b[30:], sb)
    assert torch.equal(mixed.b[:30], b)
    # scores read the table in batches: the same as scoring the float patches at once
    torch.manual_seed(0)
    model = recipe.build_model("deepdesc", recipe.config("paper")).eval()  # 64 px patches
    want = model.match_score(a, b).detach()
    torch.testing.assert_close(recipe.verification_scores(model, brown, 64, batch=7), want)
    ssd = recipe.handcrafted_patch_scores(brown, "ssd", 64)
    torch.testing.assert_close(ssd, recipe.HANDCRAFTED_PATCH_SCORES["ssd"](a, b))


def test_paper_mccnn_trains_on_patches_of_standardised_images(tmp_path):
    paper, lab = recipe.config("paper"), recipe.config("lab")
    assert paper.mccnn_input_norm == "image" and lab.mccnn_input_norm == "shift"
    paper = paper.replace(mccnn_sampling="pool")  # pairs drawn once, as lab does
    assert recipe.standardized_input("mccnn-accurate", paper)
    assert not recipe.standardized_input("deepdesc", paper)
    assert not recipe.standardized_input("mccnn-fast", lab)
    sets = [_shift_pairs(8)]
    pool = recipe.pool_for("mccnn-fast", paper, sets)
    assert pool.standardized
    torch.testing.assert_close(pool.a, sets[0].patch_table(9, standardize=True)[0][:16])
    cfg = paper.replace(batch_size=8, log_every=1, ckpt_every=0)
    model, hist, _ = recipe.train_patch_model("mccnn-fast", cfg, pool, steps=2, device="cpu")
    assert model.input_norm == "image" and len(hist) >= 2
    # scores read the standardised table for such a model
    with torch.no_grad():
        want = model.match_score(pool.a, pool.b)
    torch.testing.assert_close(recipe.verification_scores(model, sets[0], 9), want)
    with pytest.raises(ValueError, match=r"pool_for\(arch, cfg, sets\)"):
        recipe.train_patch_model(
            "mccnn-fast", cfg, recipe.PatchPool.from_pairs(sets, 9), steps=1, device="cpu"
        )


def test_pool_rejects_unpaired_sets():
    pp = _shift_pairs(4)
    pp.label[0] = False
    with pytest.raises(ValueError, match="positives first and one negative per positive"):
        recipe.PatchPool.from_pairs([pp], 9)


@pytest.mark.parametrize("arch", ["mccnn-fast", "mccnn-accurate", "2ch", "siamese-spp", "deepdesc"])
def test_patch_loss_is_finite_and_differentiable(arch, cfg):
    model = recipe.build_model(arch, cfg)
    pool = recipe.PatchPool.from_pairs([_shift_pairs(8)], recipe.patch_size_for(arch, cfg))
    batch = pool.batch_fn(8)(0, torch.Generator().manual_seed(0))
    loss, logs = recipe.patch_loss(arch, model, batch, mining=2.0)
    loss.backward()
    assert torch.isfinite(loss) and 0.0 <= logs["rank_acc"] <= 1.0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_handcrafted_scores_separate_shifted_pairs():
    pp = _shift_pairs(40, shift=4.0)
    for kind in ("ssd", "zncc"):
        m = recipe.verification_metrics(recipe.handcrafted_patch_scores(pp, kind, 9), pp.label)
        assert m["fpr95"] < 0.2 and m["pr_auc"] > 0.9, (kind, m)
    with pytest.raises(ValueError, match="Valid values are"):
        recipe.handcrafted_patch_scores(pp, "sift", 9)


def test_train_resume_and_export_roundtrip(tmp_path, cfg):
    pool = recipe.PatchPool.from_pairs([_shift_pairs(32)], 9)
    model, hist, _ = recipe.train_patch_model(
        "mccnn-fast", cfg, pool, ckpt_path=tmp_path / "m.ckpt", steps=8, device="cpu"
    )
    assert hist[-1]["step"] == 8
    again, hist2, _ = recipe.train_patch_model(
        "mccnn-fast", cfg, pool, ckpt_path=tmp_path / "m.ckpt", steps=8, device="cpu"
    )
    assert [r["loss"] for r in hist2] == [r["loss"] for r in hist]
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters())
    )  # loaded, not retrained
    # seeded before the model is built: a fresh run (no checkpoint) repeats the first exactly
    fresh, hist3, _ = recipe.train_patch_model(
        "mccnn-fast", cfg, pool, ckpt_path=tmp_path / "other.ckpt", steps=8, device="cpu"
    )
    assert [r["loss"] for r in hist3] == [r["loss"] for r in hist]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters()))
    path = export_patch_model(tmp_path / "m.pt", model, {"fpr95": 0.5})
    loaded = load_patch_model(path)
    assert loaded.arch == "mccnn-fast" and loaded.config == model.config
    x = torch.rand(4, 1, 9, 9)
    assert torch.allclose(loaded(x, x), model(x, x))


def test_load_patch_model_rejects_other_files(tmp_path):
    from corrlib.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "x.pt", {"model": {}})
    with pytest.raises(ValueError, match=r"x\.pt is not an exported patch network"):
        load_patch_model(tmp_path / "x.pt")


def test_learned_descriptor_method_matches_a_translated_image(tmp_path, cfg):
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 70, 90, generator=g), 3, 1, 1)[0]
    shifted = torch.roll(img, shifts=(3, 5), dims=(1, 2))  # content moves by (+5, +3) px
    for arch in ("mccnn-fast", "deepdesc"):
        torch.manual_seed(0)
        model = recipe.build_model(arch, cfg)
        path = export_patch_model(tmp_path / f"{arch}.pt", model)
        m = ev.get_method(arch, checkpoint=path, stride=1)
        kps = torch.tensor([[40.0, 30.0], [50.0, 40.0]])
        pred = m.match(img, shifted, kps)
        # an untrained network is still a (random) local descriptor: self-similarity finds the shift
        assert (pred - (kps + torch.tensor([5.0, 3.0]))).abs().max() < 1.5, (arch, pred)
        assert m.flow(img, shifted).shape == (2, 70, 90)


def test_learned_method_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"needs a trained checkpoint.*--checkpoint"):
        ev.get_method("mccnn-fast")
    with pytest.raises(FileNotFoundError, match="needs a trained checkpoint"):
        ev.get_method("deepdesc", checkpoint=tmp_path / "missing.pt")


def test_learned_method_rejects_wrong_architecture(tmp_path, cfg):
    path = export_patch_model(tmp_path / "a.pt", recipe.build_model("2ch", cfg))
    with pytest.raises(ValueError, match="architecture"):
        ev.get_method("deepdesc", checkpoint=path)


def test_stereo_disparity_handcrafted_and_mccnn(cfg):
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(0)
    right = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 40, 70, generator=g), 3, 1, 1)[0, 0]
    left = torch.roll(right, 6, dims=1)  # x_right = x_left - 6
    disp = torch.full((40, 70), 6.0)
    valid = torch.zeros(40, 70, dtype=torch.bool)
    valid[8:-8, 20:-8] = True
    pair = SimpleNamespace(left=left, right=right, disparity=disp, valid=valid)
    for method in ("census", "zncc"):
        d = recipe.stereo_disparity(method, pair, 12)
        assert recipe.stereo_errors(d, pair)["bad1"] < 0.05, method
    model = recipe.build_model("mccnn-fast", cfg)
    d = recipe.stereo_disparity(model, pair, 12)
    assert d.shape == (40, 70)
    with pytest.raises(ValueError, match="Valid values are"):
        recipe.stereo_disparity("sgm", pair, 12)


@pytest.mark.realdata
def test_build_patch_data_smoke(cfg, data_root):
    data = recipe.build_patch_data(cfg, data_root, seed=0)
    assert data.info["n_train"] == cfg.n_train_stereo + cfg.n_train_synthetic
    assert set(data.test) == {"aloe (stereo)", "graffiti (homography)"}
    for pairs in data.test.values():
        assert len(pairs) == cfg.n_test and pairs.label.float().mean() == 0.5


@pytest.mark.parametrize("arch", ["mccnn-fast", "deepdesc"])
def test_train_seeds_before_building_the_model(monkeypatch, cfg, arch):
    pool = recipe.PatchPool.from_pairs([_shift_pairs(8)], recipe.patch_size_for(arch, cfg))
    args = (recipe.train_patch_model, arch, cfg, pool)
    a = initial_params(monkeypatch, recipe, 11, *args, seed=0, device="cpu")
    b = initial_params(monkeypatch, recipe, 22, *args, seed=0, device="cpu")
    c = initial_params(monkeypatch, recipe, 11, *args, seed=1, device="cpu")
    assert same_state(a, b) and not same_state(a, c)


def test_finished_checkpoint_of_another_seed_or_length_is_an_error(tmp_path, cfg):
    """Reliability review finding 7: seed 1 on seed 0's finished checkpoint returned the seed-0
    model, and 50 steps on an 83-step checkpoint the 83-step one."""
    pool = recipe.PatchPool.from_pairs([_shift_pairs(16)], 9)
    ckpt = tmp_path / "m.ckpt"
    recipe.train_patch_model("mccnn-fast", cfg, pool, ckpt_path=ckpt, steps=4, device="cpu")
    with pytest.raises(ValueError, match=r"m\.ckpt .*config\.seed: recorded 0, requested 1\."):
        recipe.train_patch_model(
            "mccnn-fast", cfg, pool, ckpt_path=ckpt, steps=4, seed=1, device="cpu"
        )
    with pytest.raises(ValueError, match=r"config\.steps: recorded 4, requested 3; it has done 4"):
        recipe.train_patch_model("mccnn-fast", cfg, pool, ckpt_path=ckpt, steps=3, device="cpu")
    with pytest.raises(
        ValueError, match=r"model class: recorded 'MCCNNFast', requested 'DeepDesc'"
    ):
        recipe.train_patch_model("deepdesc", cfg, pool, ckpt_path=ckpt, steps=4, device="cpu")


def _head_shapes(model) -> list[tuple[int, int]]:
    convs = [m for m in model.head if isinstance(m, torch.nn.Conv2d)]
    return [(m.in_channels, m.out_channels) for m in convs]


def test_mccnn_accurate_head_is_the_official_kitti_one_at_paper_only():
    paper = get_config("01_patch", "paper")
    assert paper.mccnn_fc_layers == 5  # 4 hidden Linear(., 384) + ReLU, then Linear(384, 1)
    model = recipe.build_model("mccnn-accurate", paper)
    assert _head_shapes(model) == [(224, 384)] + [(384, 384)] * 3 + [(384, 1)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.head) == 4
    assert model.config["fc_layers"] == 5
    for preset, units in (("lab", 128), ("smoke", 64)):  # unchanged: 2 hidden + output
        cfg = get_config("01_patch", preset)
        assert cfg.mccnn_fc_layers == 3
        model = recipe.build_model("mccnn-accurate", cfg)
        feats = model.config["features"]
        assert _head_shapes(model) == [(2 * feats, units), (units, units), (units, 1)]


def test_paper_preset_trains_on_kitti_and_brown_in_their_official_layouts(tmp_path):
    """The ``paper`` preset's data path end to end, on fake copies of the official layouts:
    MC-CNN trains on KITTI 2012 train scenes, DeepDesc on Brown's Liberty; both are scored on
    the held-out KITTI scenes and Brown's Notre Dame and Yosemite lists (counts made tiny)."""
    from tests.fake_layouts import write_graffiti, write_kitti2012, write_phototour
    from tests.test_paper_presets import SHRINK

    write_kitti2012(tmp_path)
    for name in ("liberty", "notredame", "yosemite"):
        write_phototour(tmp_path, name)
    write_graffiti(tmp_path)
    paper = get_config("01_patch", "paper")
    assert paper.data == "papers" and paper.max_disp == 228
    cfg = paper.replace(**SHRINK["01_patch"])  # counts and sizes only
    data = recipe.build_patch_data(cfg, tmp_path, seed=0)
    assert set(data.test) == {"kitti 2012 val (stereo)", "notredame (brown)", "yosemite (brown)"}
    # MC-CNN draws its examples online from the train scenes themselves (the code's sampling)
    assert [s.name for s in data.train_for("mccnn-fast")] == [
        "kitti2012-000000",
        "kitti2012-000001",
    ]
    assert data.train_for("deepdesc") == data.train_for("2ch") == [data.train[-1]]
    # the KITTI test pairs do not depend on how MC-CNN's training examples are drawn
    pooled = recipe.build_patch_data(cfg.replace(mccnn_sampling="pool"), tmp_path, seed=0)
    val = "kitti 2012 val (stereo)"
    assert torch.equal(pooled.test[val].xy_a, data.test[val].xy_a)
    assert len(pooled.train_for("mccnn-fast")[0]) == 20  # 40 pairs over 2 scenes, drawn once
    assert data.stereo_test.name == "kitti2012-000004" and len(data.test["yosemite (brown)"]) == 48
    # corrlib train reads only what one family trains on, and draws the same pairs
    alone = recipe.training_sets(cfg, "mccnn-fast", tmp_path, 0)
    reference = data.train_for("mccnn-fast")
    assert len(alone) == len(reference) == 2
    assert all(torch.equal(a.left, b.left) for a, b in zip(alone, reference))
    [brown] = recipe.training_sets(cfg, "deepdesc", tmp_path, 0)
    assert torch.equal(brown.pairs, data.train_for("deepdesc")[0].pairs)
    kitti_only = tmp_path / "kitti-only"
    write_kitti2012(kitti_only)  # no Brown scene, no graffiti: MC-CNN still trains
    assert len(recipe.training_sets(cfg, "mccnn-accurate", kitti_only, 0)) == 2
    for arch in ("mccnn-fast", "deepdesc"):
        size = recipe.patch_size_for(arch, cfg)
        pool = recipe.pool_for(arch, cfg, data.train_for(arch))
        # MC-CNN's code standardises every KITTI image; the Brown families take [0, 1] patches
        assert pool.standardized == (arch == "mccnn-fast")
        assert isinstance(pool, recipe.StereoSampler) == (arch == "mccnn-fast")
        model, history, _ = recipe.train_patch_model(arch, cfg, pool, seed=0, device="cpu")
        assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
        if arch == "mccnn-fast":  # the stereo map of a standardising MC-CNN
            disp = recipe.stereo_disparity(model, data.stereo_test, 16)
            assert disp.shape == data.stereo_test.left.shape
        for name, pairs in data.test.items():
            scores = recipe.verification_scores(model, pairs, size)
            metrics = recipe.verification_metrics(scores, pairs.label)
            assert scores.shape == (len(pairs),) and 0 <= metrics["fpr95"] <= 1, name
    disp = recipe.stereo_disparity("census", data.stereo_test, 16)
    # the loader's disparity convention agrees with the views: census finds d = 8 inside
    assert float(disp[8:-8, 24:-8].median()) == 8.0
    # the stereo scores average over every val scene used, each scored on its own map
    assert [p.name for p in data.stereo_tests] == ["kitti2012-000004", "kitti2012-000005"]
    assert data.stereo_tests[0] is data.stereo_test and "2 val scenes" in data.stereo_test_name
    result = recipe.stereo_benchmark("census", data.stereo_tests, 16, first=disp)
    each = [
        recipe.stereo_errors(recipe.stereo_disparity("census", p, 16), p) for p in data.stereo_tests
    ]
    assert result["per_pair"] == each and result["pairs"] == 2
    assert result["bad3"] == pytest.approx((each[0]["bad3"] + each[1]["bad3"]) / 2)
    with pytest.raises(ValueError, match="at least one stereo pair"):
        recipe.stereo_benchmark("census", [], 16)


# --------------------------------------------------------------------------------------------
# MC-CNN's augmentation (paper preset)
# --------------------------------------------------------------------------------------------


def test_kitti_augmentation_is_the_codes_and_its_margin_keeps_samples_inside():
    paper = recipe.config("paper")
    augment = recipe.augmentation_for("mccnn-fast", paper)
    assert augment == recipe.PatchAugment(**recipe.MCCNN_KITTI_AUGMENT)
    assert recipe.augmentation_for("deepdesc", paper) is None
    assert recipe.augmentation_for("mccnn-fast", recipe.config("lab")) is None
    m = augment.margin(9)
    assert m == 4  # corners reach 5.45 px from the centre; bicubic reads 2 px beyond
    # the outer ring of the pre-cut patches is never read, whatever the draw
    q = 9 + 2 * m
    patches = torch.rand(64, 1, q, q)
    patches[..., [0, -1], :] = patches[..., :, [0, -1]] = 1e6
    a, b = augment(patches, patches.clone(), 9, torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (64, 1, 9, 9) and a.abs().max() < 10 and b.abs().max() < 10
    with pytest.raises(ValueError, match="at least 17 px"):
        augment(patches[..., 1:-1, 1:-1], patches[..., 1:-1, 1:-1], 9, torch.Generator())
    with pytest.raises(ValueError, match="contrast >= 1"):
        recipe.PatchAugment(contrast=0.5)


def test_augmentation_identity_crops_and_photometric_draws_are_per_reference():
    g = torch.Generator().manual_seed(1)
    patches = torch.rand(8, 1, 13, 13, generator=g)
    crop = patches[..., 2:-2, 2:-2]
    identity = recipe.PatchAugment(
        rotate=0, hscale=1, hshear=0, brightness=0, contrast=1, d_brightness=0
    )
    a, b = identity(patches, patches.flip(0), 9, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, crop, atol=1e-5, rtol=0)
    torch.testing.assert_close(b, crop.flip(0), atol=1e-5, rtol=0)
    light = recipe.PatchAugment(rotate=0, hscale=1, hshear=0, contrast=1)  # brightness only
    a, b = light(patches, patches, 9, torch.Generator().manual_seed(0))
    shift_a = (a - crop).mean((1, 2, 3))
    shift_b = (b - crop).mean((1, 2, 3))
    torch.testing.assert_close(
        a - crop, shift_a[:, None, None, None].expand_as(a), atol=1e-5, rtol=0
    )
    assert shift_a.abs().max() <= 0.7 and (shift_b - shift_a).abs().max() <= 0.3 + 1e-5
    # a reference's positive (row j) and negative (row j + 4) take the same draw
    torch.testing.assert_close(shift_a[:4], shift_a[4:])
    torch.testing.assert_close(shift_b[:4], shift_b[4:])


def test_pool_for_an_augmented_mccnn_keeps_a_margin_and_batches_its_patch_size(tmp_path):
    from tests.fake_layouts import write_phototour

    paper = recipe.config("paper").replace(mccnn_sampling="pool")
    sets = [_shift_pairs(8)]
    pool = recipe.pool_for("mccnn-accurate", paper, sets)
    assert pool.margin == 4 and pool.patches.shape[-1] == 17 and pool.standardized
    torch.testing.assert_close(pool.a, sets[0].patch_table(9, standardize=True)[0][:16])
    augment = recipe.augmentation_for("mccnn-accurate", paper)
    fn = pool.batch_fn(8, augment)
    batch = fn(0, torch.Generator().manual_seed(0))
    again = fn(0, torch.Generator().manual_seed(0))
    assert batch["a"].shape == (8, 1, 9, 9) and torch.equal(batch["a"], again["a"])  # resumable
    assert torch.equal(batch["a"][:4], batch["a"][4:])  # the reference patch, one draw
    plain = pool.batch_fn(8)(0, torch.Generator().manual_seed(0))  # no augmentation: crops
    rows = torch.randint(len(pool.pos), (4,), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain["a"][:4], pool.a[pool.pos[rows]])
    with pytest.raises(ValueError, match="pool margin of 4 px"):
        recipe.PatchPool.from_pairs(sets, 9).batch_fn(8, augment)
    write_phototour(tmp_path, "liberty")
    brown = PhotoTourPairs(tmp_path, "liberty", train=True, n_pairs=30, seed=0)
    with pytest.raises(ValueError, match="no surroundings"):
        recipe.PatchPool.from_pairs([brown], 64, margin=2)


def test_augmentation_warps_and_relights_as_opencv_does_mccnns_make_patch():
    """The code's make_patch: cv.warp_affine(src, dst, m) with the forward map m = shift to the
    patch centre @ shear @ rotation @ scale @ shift from the source centre, bicubic, then
    dst * contrast + brightness. OpenCV on the pre-cut patch is the reference (its bicubic
    weights are tabulated at 1/32 px, hence the tolerance)."""
    import cv2
    import numpy as np

    augment = recipe.PatchAugment(rotate=20, hscale=0.7, hshear=0.3, contrast=1.5)
    size, q = 9, 9 + 2 * augment.margin(9)
    g = torch.Generator().manual_seed(3)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(8, 1, q + 4, q + 4, generator=g), 5, 1)
    ramp = torch.arange(q, dtype=torch.float32)[None, :] * 0.05  # a slope: a wrong map shows
    a, b = smooth + ramp, smooth.flip(0) - ramp.T
    params = augment.draw(8, torch.Generator().manual_seed(1))
    out_a, out_b = augment.apply(a, b, size, params)
    c_src, c_dst = (q - 1) / 2, (size - 1) / 2
    for i in range(8):
        m = np.linalg.inv(params["inverse"][i].numpy())  # the forward map M
        full = np.concatenate([m, (np.array([c_dst, c_dst]) - m @ [c_src, c_src])[:, None]], 1)
        gain, lift_a, lift_b = (
            float(params[k][i]) for k in ("contrast", "brightness_a", "brightness_b")
        )
        for src, out, lift in ((a, out_a, lift_a), (b, out_b, lift_b)):
            want = cv2.warpAffine(src[i, 0].numpy(), full, (size, size), flags=cv2.INTER_CUBIC)
            want = torch.from_numpy(want) * gain + lift
            torch.testing.assert_close(out[i, 0], want, atol=0.01, rtol=0)
    # the draws are the options' ranges, and a reference's two rows share theirs
    assert (params["contrast"] >= 1 / 1.5).all() and (params["contrast"] <= 1.5).all()
    assert torch.equal(params["inverse"][:4], params["inverse"][4:])


def test_checkpoints_from_before_the_input_settings_are_still_reused(tmp_path, cfg):
    """A checkpoint written before mccnn_input_norm / mccnn_augment / input_norm existed was
    trained with the shift and no augmentation: it is reused when those are asked for, and
    refused otherwise (Config.LEGACY_SETTINGS)."""
    from corrlib.checkpoint import load_checkpoint, save_checkpoint

    sets = [_shift_pairs(8)]
    path = tmp_path / "old.ckpt"
    model, _, _ = recipe.train_patch_model(
        "mccnn-fast", cfg, recipe.pool_for("mccnn-fast", cfg, sets), ckpt_path=path, steps=2
    )
    state = load_checkpoint(path)
    for key in ("mccnn_input_norm", "mccnn_augment"):
        del state["config"]["recipe"][key]
    del state["model_info"]["config"]["input_norm"]
    save_checkpoint(path, state)
    again, _, _ = recipe.train_patch_model(
        "mccnn-fast", cfg, recipe.pool_for("mccnn-fast", cfg, sets), ckpt_path=path, steps=2
    )
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    standardized = cfg.replace(mccnn_input_norm="image")
    with pytest.raises(ValueError, match=r"recipe\['mccnn_input_norm'\]: recorded 'shift'"):
        recipe.train_patch_model(
            "mccnn-fast",
            standardized,
            recipe.pool_for("mccnn-fast", standardized, sets),
            ckpt_path=path,
            steps=2,
        )


# --------------------------------------------------------------------------------------------
# MC-CNN's online sampling (paper preset)
# --------------------------------------------------------------------------------------------


def _shifted_scene(d: int = 3, h: int = 30, w: int = 60, seed: int = 0, valid=None):
    """A stereo pair whose right view is the left one moved ``d`` px left (x_right = x - d)."""
    from corrlib.data import StereoPair

    g = torch.Generator().manual_seed(seed)
    wide = torch.nn.functional.avg_pool2d(torch.rand(1, 1, h, w + d, generator=g), 3, 1, 1)[0, 0]
    left, right = wide[:, :w].contiguous(), wide[:, d:].contiguous()  # right(x - d) = left(x)
    rgb = (left * 255).to(torch.uint8).expand(3, h, w)
    ok = torch.ones(h, w, dtype=torch.bool) if valid is None else valid
    disp = torch.full((h, w), float(d))
    return StereoPair(left, right, rgb, rgb, disp, ok, f"shift{d}", "test")


def test_online_sampler_draws_every_reference_with_fresh_offsets_each_step():
    from corrlib.data import stereo_references

    scenes = [_shifted_scene(seed=0), _shifted_scene(d=5, seed=1)]
    sampler = recipe.StereoSampler.from_scenes(
        scenes, 9, standardize=False, p_hi=0.0, n_lo=4.0, n_hi=10.0
    )
    # references: 5 px inside, x - d +- 10 inside too: 20 rows x 30 columns in each scene
    assert len(sampler) == 1200
    assert len(stereo_references(scenes[0], n_hi=10.0)[0]) == 600
    fn = sampler.batch_fn(16)
    batch = fn(0, torch.Generator().manual_seed(0))
    assert batch["a"].shape == batch["b"].shape == (16, 1, 9, 9)
    assert batch["label"].tolist() == [True] * 8 + [False] * 8
    torch.testing.assert_close(batch["a"][:8], batch["a"][8:])  # a reference, two pairs
    # p_hi = 0: the positive is the reference's own match, exactly (the views are shifts)
    torch.testing.assert_close(batch["b"][:8], batch["a"][:8], atol=1e-5, rtol=0)
    assert (batch["b"][8:] - batch["a"][8:]).abs().amax((1, 2, 3)).min() > 0
    again = fn(0, torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # resumable
    other = fn(1, torch.Generator().manual_seed(1))
    assert not torch.equal(batch["b"][8:], other["b"][8:])  # fresh draws each step
    # the augmentation: the same map on both views, b relit within d_brightness of a
    augment = recipe.PatchAugment()
    lit = sampler.batch_fn(16, augment)(0, torch.Generator().manual_seed(0))
    diff = (lit["b"][:8] - lit["a"][:8]).flatten(1)
    assert diff.std(1).max() < 1e-4 and diff.mean(1).abs().max() <= 0.3 + 1e-4
    # sharded over 2 processes: each keeps its references' positives and negatives
    half0 = fn.shard(batch, 0, 2)
    assert torch.equal(half0["a"], batch["a"][[0, 1, 2, 3, 8, 9, 10, 11]])


def test_online_mccnn_trains_for_the_codes_epochs(tmp_path):
    valid = torch.zeros(30, 60, dtype=torch.bool)
    valid[10:12, 20:25] = True  # 10 references
    sampler = recipe.StereoSampler.from_scenes(
        [_shifted_scene(valid=valid)], 9, standardize=True, p_hi=1.0, n_lo=4.0, n_hi=10.0
    )
    assert len(sampler) == 10 and sampler.standardized
    cfg = recipe.config("paper").replace(
        batch_size=8, mccnn_epochs=3, mccnn_lr_epochs=2, log_every=1, ckpt_every=0
    )
    _, history, _ = recipe.train_patch_model(
        "mccnn-fast", cfg, sampler, ckpt_path=tmp_path / "m.ckpt", device="cpu"
    )
    # 3 passes over 10 references, 4 a step: (10 - 1) // 4 = 2 steps a pass, as the code's loop;
    # lr / 10 after 2 passes (4 steps)
    assert sampler.steps_per_epoch(8) == 2 and history[-1]["step"] == 6
    lrs = [row["lr"] for row in history]
    assert lrs[3] == pytest.approx(0.002) and lrs[4] == pytest.approx(0.0002)
    with pytest.raises(ValueError, match="would divide the learning rate a second time"):
        recipe.train_patch_model("mccnn-fast", cfg.replace(mccnn_epochs=5), sampler)
    with pytest.raises(ValueError, match="p_hi <= n_lo <= n_hi"):
        recipe.StereoSampler.from_scenes(
            [_shifted_scene()], 9, standardize=False, p_hi=5.0, n_lo=4.0, n_hi=10.0
        )
    with pytest.raises(ValueError, match="draws MC-CNN's examples from stereo scenes"):
        recipe.pool_for("mccnn-fast", cfg, [_shift_pairs(4)])
