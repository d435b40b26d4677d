"""Tests of the chapter-06 recipe: masked pair pools, cached features, SFNet training, resume,
export, eval."""

from __future__ import annotations

import pytest
import torch

from corrlib import eval as ev
from corrlib.data import DatasetNotFoundError, PairPool, load_fashion_mnist
from corrlib.methods import SFNetMethod
from corrlib.models.sfnet import export_sfnet, load_sfnet
from corrlib.recipes import get_config
from corrlib.recipes import sfnet as recipe
from tests.recipes._seeding import initial_params, same_state

try:
    load_fashion_mnist(None, "test")
    HAVE_FASHION = True
except DatasetNotFoundError:
    HAVE_FASHION = False
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist"
)


@pytest.fixture(scope="module")
def cfg():
    c = get_config("06_sfnet", "smoke")
    return c.replace(
        images=12, pairs=12, test_images=4, test_pairs=4, steps={"default": 4}, ckpt_every=2
    )


@pytest.fixture(scope="module")
def pools(cfg):
    if not HAVE_FASHION:
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    train, test = recipe.build_pool(cfg, "train"), recipe.build_pool(cfg, "test")
    model = recipe.build_model(cfg)
    return recipe.cache_trunk_features(train, model), recipe.cache_trunk_features(test, model)


@needs_fashion
def test_pool_layout_masks_trimmed_and_deterministic(cfg, pools):
    train, test = pools
    assert len(train) == 12 and train.size == (64, 64) and train.src.dtype == torch.uint8
    assert train.src_mask.dtype == torch.bool and train.flow.shape == (12, 2, 64, 64)
    assert not (
        train.src_mask & ~train.flow_valid
    ).any()  # object pixels leaving the target are dropped
    assert 0.02 < train.src_mask.float().mean() < 0.6
    again = recipe.build_pool(cfg, "train")
    assert torch.equal(again.src, train.src) and torch.equal(again.trg_mask, train.trg_mask)
    assert not torch.equal(test.src[:4], train.src[:4])  # held-out objects and backgrounds
    assert (
        set(train.feats_src) == set(recipe.build_model(cfg).taps)
        and train.feats_src["block3"].dtype == torch.float16
    )


@needs_fashion
def test_batches_are_resumable_and_directions_swap(cfg, pools):
    train, _ = pools
    fn = recipe.make_batch_fn(train, cfg)
    a = fn(3, torch.Generator().manual_seed(7))
    b = fn(3, torch.Generator().manual_seed(7))
    assert (
        torch.equal(a["mask_src"], b["mask_src"])
        and a["feats_src"]["block2"].dtype == torch.float32
    )
    assert a["mask_src"].shape == (cfg.batch_size, 64, 64)
    # over a few steps both directions occur: a reversed row carries the pool's target mask as its
    # source
    rows = [fn(s, torch.Generator().manual_seed(s)) for s in range(6)]
    masks = {
        tuple(b["mask_src"][i].flatten()[::97].tolist())
        for b in rows
        for i in range(cfg.batch_size)
    }
    trg = {tuple(m.float().flatten()[::97].tolist()) for m in train.trg_mask}
    src = {tuple(m.float().flatten()[::97].tolist()) for m in train.src_mask}
    assert masks & trg - src and masks & src - trg
    with pytest.raises(
        ValueError, match=r"no cached trunk features; call cache_trunk_features\(pool, model\)"
    ):
        bare = PairPool(
            **{
                k: getattr(train, k)
                for k in ("src", "trg", "flow", "flow_valid", "src_mask", "trg_mask")
            }
        )
        recipe.make_batch_fn(bare, cfg)


@needs_fashion
def test_training_lowers_the_loss_on_a_fixed_batch():
    c = get_config("06_sfnet", "smoke").replace(
        images=4,
        pairs=4,
        batch_size=4,
        steps={"default": 40},
        optim={"default": {"optimizer": "adam", "lr": 3e-3}},
        log_every=40,
        ckpt_every=0,
    )
    assert c.train_config("full", seed=0).lr == 3e-3
    pool = recipe.build_pool(c, "train")
    recipe.cache_trunk_features(pool, recipe.build_model(c))
    model0 = recipe.build_model(c)
    fn = recipe.make_batch_fn(pool, c)
    batch = fn(0, torch.Generator().manual_seed(0))

    def loss_of(m):
        with torch.no_grad():
            out = m.forward_features(batch["feats_src"], batch["feats_trg"], pool.size)
            return recipe.sfnet_loss(out, batch["mask_src"], batch["mask_trg"])[0].item()

    model, hist, _ = recipe.train_sfnet("full", c, pool, device="cpu")
    assert loss_of(model) < loss_of(model0)
    assert {"mask", "flow", "smooth", "epe_px"} <= set(hist[-1])


@needs_fashion
def test_interrupt_and_resume_equals_one_run(cfg, pools, tmp_path):
    train, _ = pools
    whole, _, _ = recipe.train_sfnet("no-smooth-loss", cfg, train, device="cpu")
    ckpt = tmp_path / "run.pt"
    _, h1, _ = recipe.train_sfnet(
        "no-smooth-loss", cfg, train, ckpt_path=ckpt, device="cpu", stop_after=2
    )
    assert ckpt.is_file() and h1[-1]["step"] == 2
    resumed, h2, _ = recipe.train_sfnet("no-smooth-loss", cfg, train, ckpt_path=ckpt, device="cpu")
    assert h2[-1]["step"] == 4
    for p, q in zip(whole.adapt.parameters(), resumed.adapt.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


@needs_fashion
def test_export_load_and_registered_method(cfg, pools, tmp_path):
    train, test = pools
    model, _, _ = recipe.train_sfnet("full", cfg, train, device="cpu", steps=2)
    assert model.variant == "full" and model.image_size == (64, 64)  # recorded by the constructor
    path = export_sfnet(tmp_path / "sfnet.pt", model, metrics={"x": 1.0})
    loaded = load_sfnet(path)
    assert loaded.variant == "full" and loaded.image_size == (64, 64)
    for p, q in zip(model.adapt.state_dict().values(), loaded.adapt.state_dict().values()):
        assert torch.equal(p, q)
    a = recipe.evaluate_synthetic(model, test)
    b = recipe.evaluate_synthetic(loaded, test)
    assert a == b and 0 <= a["pck@0.05"] <= 1 and a["pixels"] > 0
    method = ev.get_method("sfnet", checkpoint=str(path))
    img = (torch.rand(3, 50, 70) * 255).to(torch.uint8)
    kps = torch.tensor([[10.0, 20.0], [60.0, 5.0]])
    assert method.match(img, img, kps).shape == (2, 2)
    flow = method.flow(img, (torch.rand(3, 40, 30) * 255).to(torch.uint8))
    assert flow.shape == (2, 50, 70) and torch.isfinite(flow).all()
    with pytest.raises(ValueError, match="not an exported SFNet"):
        torch.save({"format": "x"}, tmp_path / "bad.pt")
        load_sfnet(tmp_path / "bad.pt")


def test_method_needs_a_checkpoint():
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        ev.get_method("sfnet")


def test_method_on_identical_images_returns_the_keypoints():
    import skimage.data

    model = recipe.build_model(get_config("06_sfnet", "smoke"), argmax="hard")
    method = SFNetMethod(model=model, image_size=(128, 128))
    img = (
        torch.from_numpy(skimage.data.astronaut().copy()).permute(2, 0, 1)[:, ::2, ::2].contiguous()
    )  # (3, 256, 256)
    kps = torch.tensor([[60.0, 80.0], [180.0, 120.0], [128.0, 200.0]])
    pred = method.match(img, img, kps, src_key="a", trg_key="a")
    assert (pred - kps).norm(dim=-1).max() < 0.05 * 256  # identical images: (almost) zero flow
    flow = method.flow(img, img, src_key="a", trg_key="a")
    assert flow.shape == (2, 256, 256) and flow.abs().median() < 4


def test_variants_and_errors():
    assert recipe.variant_settings("no-flow-loss")[1]["flow"] == 0.0
    assert recipe.variant_settings("soft-argmax")[0] == "soft"
    with pytest.raises(ValueError, match="variant"):
        recipe.variant_settings("hard-argmax")  # evaluation only: a hard argmax cannot be trained
    with pytest.raises(ValueError, match="source"):
        recipe.build_pool(get_config("06_sfnet", "smoke"), source="coco")


def test_voc_source_builds_pools_and_online_pairs(tmp_path):
    """The ``paper`` data path on a tiny fake VOC tree: materialised pool and online pairs."""
    from tests.data.test_masked import _fake_voc

    _fake_voc(tmp_path)
    c = get_config("06_sfnet", "smoke").replace(
        source="voc", images=1, pairs=3, size=(32, 32), exclude_pfpascal=False
    )
    pool = recipe.build_pool(c, "train", data_root=tmp_path)
    assert len(pool) == 3 and pool.src.shape == (3, 3, 32, 32)
    online = recipe.build_online(c, "train", data_root=tmp_path)
    assert len(online) == recipe.ONLINE_PAIRS
    batch = recipe.make_batch_fn(online, c.replace(jitter=0.2))(0, torch.Generator().manual_seed(0))
    assert (
        batch["src"].shape == (c.batch_size, 3, 32, 32) and batch["mask_src"].dtype == torch.float32
    )


def _fake_pfpascal_lists(root, test_image: str) -> None:
    folder = root / "PF-PASCAL" / "image_pairs"
    folder.mkdir(parents=True)
    jpg = "PF-dataset-PASCAL/JPEGImages/{}.jpg"
    (folder / "val_pairs.csv").write_text(
        "source_image,target_image,class,flip\n"
        f"{jpg.format('2008_000001')},{jpg.format('2008_000002')},7,0\n"
    )
    (folder / "test_pairs.csv").write_text(
        "source_image,target_image,class,XA,YA,XB,YB\n"
        f"{jpg.format(test_image)},{jpg.format('2008_000003')},7,1;2,1;2,1;2,1;2\n"
    )


def test_voc_training_images_leave_out_pfpascal_evaluation_images(tmp_path):
    from tests.data.test_masked import IDS, _fake_voc

    _fake_voc(tmp_path)
    c = get_config("06_sfnet", "smoke").replace(source="voc", images=1, pairs=3, size=(32, 32))
    with pytest.raises(DatasetNotFoundError, match="exclude_pfpascal=False"):
        recipe.build_pool(c, "train", data_root=tmp_path)  # the lists are needed
    _fake_pfpascal_lists(tmp_path, "2008_000009")  # no VOC training image is a PF-PASCAL one
    images = recipe._voc_images(c, tmp_path, "train")
    assert images.excluded == 0 and images.ids == [IDS[0]]
    assert recipe._voc_images(c, tmp_path, "test").ids == [IDS[1]]  # held-out: VOC's val
    other = tmp_path / "other"
    _fake_voc(other)
    _fake_pfpascal_lists(other, IDS[0])  # the training image is a PF-PASCAL test image
    images = recipe._voc_images(c, other, "train")
    assert images.excluded == 1 and images.ids == []


def test_flip_pair_keeps_the_flow_consistent():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(8.0).view(1, 1, 8).expand(1, 6, 8)
    flow = torch.zeros(2, 6, 8)
    flow[0] = 2.0  # every source pixel moves 2 right
    item = {
        "src_img": torch.rand(3, 6, 8, generator=g),
        "trg_img": torch.rand(3, 6, 8, generator=g),
        "src_mask": x[0] < 3,
        "trg_mask": x[0] < 5,
        "flow": flow,
        "flow_valid": x[0] < 6,
        "trg_flow_valid": x[0] > 1,
    }
    f = recipe._flip_pair(item)
    assert torch.all(f["flow"][0] == -2.0) and torch.equal(f["src_mask"], item["src_mask"].flip(-1))
    back = recipe._flip_pair(f)
    assert all(torch.equal(back[k], item[k]) for k in item)


@needs_fashion
def test_online_training_resumes_exactly(tmp_path):
    c = get_config("06_sfnet", "smoke").replace(
        cache_features=False, jitter=0.1, steps={"default": 4}, ckpt_every=2
    )
    online = recipe.build_online(c, "train")
    whole, _, _ = recipe.train_sfnet("full", c, online, device="cpu")
    ckpt = tmp_path / "online.pt"
    recipe.train_sfnet("full", c, online, ckpt_path=ckpt, device="cpu", stop_after=2)
    resumed, hist, _ = recipe.train_sfnet("full", c, online, ckpt_path=ckpt, device="cpu")
    assert hist[-1]["step"] == 4
    for p, q in zip(whole.adapt.parameters(), resumed.adapt.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


@needs_fashion
def test_train_trunk_needs_online_data_and_moves_the_trunk(cfg, pools):
    train, _ = pools
    c = cfg.replace(train_trunk=True, steps={"default": 2})
    with pytest.raises(ValueError, match="online"):
        recipe.train_sfnet("full", c, train, device="cpu")
    before = recipe.build_model(c).trunk.state_dict()
    model, _, _ = recipe.train_sfnet("full", c, recipe.build_online(c, "train"), device="cpu")
    after = model.trunk.state_dict()
    assert any(
        not torch.equal(before[k], after[k].cpu()) for k in before if before[k].is_floating_point()
    )


@needs_fashion
def test_train_seeds_before_building_the_model(monkeypatch, cfg, pools):
    args = (recipe.train_sfnet, "full", cfg, pools[0])
    a = initial_params(monkeypatch, recipe, 11, *args, seed=0, device="cpu")
    b = initial_params(monkeypatch, recipe, 22, *args, seed=0, device="cpu")
    c = initial_params(monkeypatch, recipe, 11, *args, seed=1, device="cpu")
    assert same_state(a, b) and not same_state(a, c)
