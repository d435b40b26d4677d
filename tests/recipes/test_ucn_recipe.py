"""Tests of the chapter-03 recipe: pair pools, resumable batches, UCN training, export,
evaluation."""

from __future__ import annotations

import pytest
import torch

from corrlib import eval as ev
from corrlib.matching import FeatureGrid
from corrlib.methods import UCNMethod
from corrlib.models.ucn import export_ucn, load_ucn
from corrlib.recipes import get_config
from corrlib.recipes import ucn as recipe
from tests.recipes._seeding import initial_params, same_state


@pytest.fixture(scope="module")
def cfg():
    return get_config("03_ucn", "smoke")


def _images(n=2, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.nn.functional.avg_pool2d(torch.rand(n, 3, size, size, generator=g), 3, 1, 1)
    return [(im * 255).to(torch.uint8) for im in imgs]


@pytest.fixture(scope="module")
def pool():
    return recipe.build_pair_pool(_images(), 3, (32, 32), kind="affine", strength=0.3, seed=0)


def test_pair_pool_layout_and_reverse(pool):
    assert len(pool) == 3 and pool.size == (32, 32)
    assert (
        pool.src.dtype == torch.uint8
        and pool.flow.shape == (3, 2, 32, 32)
        and pool.flow_valid.dtype == torch.bool
    )
    a, b, flow, valid = pool.pair(1)
    ra, rb, rflow, rvalid = pool.pair(1, reverse=True)
    assert torch.equal(a, rb) and torch.equal(b, ra) and torch.equal(rflow, pool.trg_flow[1])
    assert (
        torch.equal(flow, pool.flow[1])
        and torch.equal(valid, pool.flow_valid[1])
        and torch.equal(rvalid, pool.trg_flow_valid[1])
    )
    assert a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    again = recipe.build_pair_pool(_images(), 3, (32, 32), kind="affine", strength=0.3, seed=0)
    assert torch.equal(again.flow, pool.flow)  # deterministic in the seed


def test_random_crops_are_square_and_deterministic():
    imgs = _images(2, 40)
    a = recipe.random_crops(imgs, 5, min_frac=0.5, generator=torch.Generator().manual_seed(1))
    b = recipe.random_crops(imgs, 5, min_frac=0.5, generator=torch.Generator().manual_seed(1))
    assert len(a) == 5 and all(x.shape[1] == x.shape[2] >= 20 for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="min_frac in"):
        recipe.random_crops(imgs, 2, min_frac=0.0)


def test_batches_are_deterministic_and_positives_follow_the_flow(pool, cfg):
    model = recipe.build_ucn("hard-negatives", cfg)
    grid = model.feature_grid(pool.size)
    fn = recipe.make_batch_fn(pool, grid, cfg)
    b1 = fn(5, torch.Generator().manual_seed(11))
    b2 = fn(5, torch.Generator().manual_seed(11))
    assert all(torch.equal(b1[k], b2[k]) for k in b1)
    n, p = cfg.batch_size, cfg.points
    assert b1["src"].shape == (n, 3, 32, 32) and b1["pos_src"].shape == b1["neg_random"].shape == (
        n,
        p,
        2,
    )
    # without reversal or jitter, each positive is its pixel moved by the exact flow
    one = cfg.replace(batch_size=1, jitter=0.0)
    fn1 = recipe.make_batch_fn(pool, grid, one)
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        i = int(torch.randint(len(pool), (1,), generator=torch.Generator().manual_seed(seed)))
        batch = fn1(0, gen)
        px, qx = grid.to_pixels(batch["pos_src"][0]), grid.to_pixels(batch["pos_trg"][0])
        a, _, flow, valid = pool.pair(i, reverse=not torch.equal(batch["src"][0], pool.pair(i)[0]))
        assert torch.equal(batch["src"][0], a)
        idx = px.round().long()
        assert valid[idx[:, 1], idx[:, 0]].all()
        assert torch.allclose(qx, px + flow[:, idx[:, 1], idx[:, 0]].T, atol=1e-4)
    radius = cfg.radius_px / grid.step[0]
    assert ((b1["neg_random"] - b1["pos_trg"]).norm(dim=-1) > radius).all()


@pytest.mark.parametrize("mining", ["hard", "random"])
def test_ucn_loss_is_finite_and_differentiable(pool, cfg, mining):
    torch.manual_seed(0)
    model = recipe.build_ucn("hard-negatives+st", cfg)
    batch = recipe.make_batch_fn(pool, model.feature_grid(pool.size), cfg)(
        0, torch.Generator().manual_seed(0)
    )
    loss, logs = recipe.ucn_loss(model, batch, mining=mining, margin=1.0, radius=1.0)
    loss.backward()
    assert torch.isfinite(loss) and 0.0 <= logs["nn_acc"] <= 1.0 and logs["d_pos"] >= 0
    assert model.st.loc.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="Valid values are"):
        recipe.ucn_loss(model, batch, mining="semi", margin=1.0, radius=1.0)


def test_ucn_loss_mining_rules(pool, cfg):
    torch.manual_seed(0)
    model = recipe.build_ucn("hard-negatives", cfg)
    batch = recipe.make_batch_fn(pool, model.feature_grid(pool.size), cfg)(
        0, torch.Generator().manual_seed(0)
    )
    base, base_logs = recipe.ucn_loss(model, batch, mining="hard", margin=1.0, radius=1.0)
    same, _ = recipe.ucn_loss(
        model, batch, mining="hard", margin=1.0, radius=1.0, rule="hardest-outside"
    )
    assert torch.equal(base, same) and "neg_frac" not in base_logs  # the default is today's
    loss, logs = recipe.ucn_loss(
        model, batch, mining="hard", margin=1.0, radius=1.0, rule="nn-if-far"
    )
    loss.backward()
    assert torch.isfinite(loss) and 0.0 <= logs["neg_frac"] <= 1.0
    with pytest.raises(ValueError, match="Valid values are"):
        recipe.ucn_loss(model, batch, mining="hard", margin=1.0, radius=1.0, rule="nn")


def test_every_preset_mines_hardest_outside():
    for preset in ("paper", "lab", "smoke"):
        assert get_config("03_ucn", preset).mining_rule == "hardest-outside"


@pytest.fixture(scope="module")
def warm_adam():
    """The first Adam step of a process lazily imports torch._dynamo (about 2 s); pay it once
    here."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p])
    p.sum().backward()
    opt.step()


def test_train_resume_export_and_load_roundtrip(tmp_path, pool, cfg, warm_adam):
    ckpt = tmp_path / "ucn.ckpt"
    model, hist, _ = recipe.train_ucn(
        "hard-negatives+st", cfg, ckpt, seed=0, device="cpu", pool=pool, steps=2
    )
    assert hist[-1]["step"] == 2 and model.variant == "hard-negatives+st" and not model.training
    again, hist2, _ = recipe.train_ucn(
        "hard-negatives+st", cfg, ckpt, seed=0, device="cpu", pool=pool, steps=2
    )
    assert [r["loss"] for r in hist2] == [r["loss"] for r in hist]
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters())
    )  # loaded, not retrained
    path = export_ucn(tmp_path / "ucn.pt", model, metrics={"pck": 0.5, "bad": float("nan")})
    loaded = load_ucn(path)
    assert loaded.variant == "hard-negatives+st" and loaded.use_st
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(loaded(x)[0], model(x)[0])
    with pytest.raises(ValueError, match="Valid values are"):
        recipe.train_ucn("hard", cfg, pool=pool)


def test_export_and_load_reject_what_they_cannot_rebuild(tmp_path):
    from corrlib.checkpoint import save_checkpoint
    from corrlib.models.ucn import UCN, UCNTrunk

    with pytest.raises(ValueError, match="custom trunk cannot be rebuilt"):
        export_ucn(tmp_path / "x.pt", UCN(UCNTrunk((4, 4)), dim=4))
    save_checkpoint(tmp_path / "y.pt", {"model": {}})
    with pytest.raises(ValueError, match=r"y\.pt is not an exported UCN"):
        load_ucn(tmp_path / "y.pt")


class _PatchTrunk(torch.nn.Module):
    """Raw 3x3 colour patches and their negatives at stride 1: a discriminative untrained trunk."""

    stride, out_channels = 1, 54

    def forward(self, x):
        b, _, h, w = x.shape
        p = torch.nn.functional.unfold(x - x.mean((2, 3), keepdim=True), 3, padding=1).reshape(
            b, 27, h, w
        )
        return torch.cat((p, -p), 1)


def _patch_ucn():
    from corrlib.models.ucn import UCN

    model = UCN(_PatchTrunk(), dim=54, use_st=False)
    with torch.no_grad():  # identity head: features are the normalised patches, split by sign
        torch.nn.init.dirac_(model.st.weight)
        model.adapt.weight.copy_(torch.eye(54).reshape(54, 54, 1, 1))
    return model.eval()


def test_ucn_method_matches_a_translated_image():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 64, 80, generator=g), 3, 1, 1)[0]
    shifted = torch.roll(img, shifts=(4, 6), dims=(1, 2))  # content moves by (+6, +4) px
    kps = torch.tensor([[30.0, 20.0], [50.0, 40.0], [20.5, 30.5]])
    m = UCNMethod(model=_patch_ucn())
    assert (m.match(img, shifted, kps) - (kps + torch.tensor([6.0, 4.0]))).abs().max() < 0.5
    flow = m.flow(img, shifted)
    assert flow.shape == (2, 64, 80)
    assert torch.allclose(
        flow[:, 10:50, 10:70].median(dim=-1).values.median(dim=-1).values, torch.tensor([6.0, 4.0])
    )
    small = UCNMethod(
        model=_patch_ucn(), max_side=40
    )  # resized: predictions still in original pixels
    assert small.describe(img)[0].shape[-2:] == (32, 40)
    assert (small.match(img, shifted, kps) - (kps + torch.tensor([6.0, 4.0]))).abs().max() < 2.5


def test_ucn_method_from_a_checkpoint_uses_the_model_features(tmp_path):
    from corrlib.matching import transfer_keypoints
    from corrlib.models.ucn import UCN

    torch.manual_seed(0)
    model = UCN(dim=16, trunk_widths=(8, 16), variant="hard-negatives+st").eval()  # stride 2
    path = export_ucn(tmp_path / "m.pt", model)
    m = ev.get_method("ucn", checkpoint=path)
    assert m.name.startswith("ucn@") and "hard-negatives+st" in m.description
    img, trg = torch.rand(3, 40, 48), torch.rand(3, 40, 48)
    kps = torch.tensor([[10.0, 12.0], [30.5, 20.0]])
    with torch.no_grad():
        feat, _ = model(torch.stack((img, trg)))
    grid = model.feature_grid((40, 48))
    want, _ = transfer_keypoints(feat[:1], feat[1:], kps[None], grid, grid)
    assert torch.allclose(m.match(img, trg, kps), want[0], atol=1e-5)
    assert m.flow(img, trg, src_key="a", trg_key="b").shape == (2, 40, 48)
    assert len(m.cache) == 2  # both keyed images are cached
    m._describe_image = lambda img: pytest.fail("a cached image was described again")
    assert m.describe(img, "a") is m.describe(img, "a")


def test_ucn_method_needs_a_checkpoint(tmp_path):
    assert "ucn" in ev.available_methods()
    with pytest.raises(
        FileNotFoundError, match=r"Method 'ucn' needs a trained checkpoint.*--checkpoint"
    ):
        ev.get_method("ucn")
    with pytest.raises(FileNotFoundError, match="needs a trained checkpoint"):
        ev.get_method("ucn", checkpoint=tmp_path / "missing.pt")


def test_evaluate_synthetic_scores_and_chance_level(pool):
    out = recipe.evaluate_synthetic(ev.get_method("identity"), pool, n_points=16, seed=0)
    assert out["points"] == 48 and set(out) >= {
        "pck@0.05",
        "pck@0.1",
        "random_pck@0.1",
        "mean_error_px",
    }
    assert (
        0 <= out["random_pck@0.1"] <= out["pck@0.1"] <= 1
    )  # mild affine warps: no motion beats chance
    assert out == recipe.evaluate_synthetic(ev.get_method("identity"), pool, n_points=16, seed=0)


def test_smoke_preset_is_smaller_than_lab():
    smoke, lab, paper = (get_config("03_ucn", p) for p in ("smoke", "lab", "paper"))
    for variant in recipe.VARIANTS:
        assert smoke.steps_for(variant) < lab.steps_for(variant) < paper.steps_for(variant)
    assert smoke.size[0] <= lab.size[0] <= paper.size[0]
    assert smoke.variants == lab.variants == paper.variants == recipe.VARIANTS


@pytest.mark.realdata
def test_pfwillow_and_tss_evaluation_smoke(data_root):
    from corrlib.models.ucn import UCN

    torch.manual_seed(0)
    model = UCN(dim=8, trunk_widths=(8, 8, 8)).eval()
    res = recipe.evaluate_ucn_pfwillow(model, data_root, limit=2, max_side=64)
    assert (
        res.summary["alphas"]["0.1"]["all"] >= 0 and len({r["pair_index"] for r in res.rows}) == 2
    )
    tss = recipe.evaluate_ucn_tss(model, data_root, max_side=64, subsets=("JODS",), limit=1)
    assert 0 <= tss.mean_accuracy <= 1 and tss.per_subset["JODS"]["rows"] >= 1


@pytest.mark.parametrize("variant", ["hard-negatives", "hard-negatives+st"])
def test_train_seeds_before_building_the_model(monkeypatch, cfg, pool, variant):
    args = (recipe.train_ucn, variant, cfg)
    a = initial_params(monkeypatch, recipe, 11, *args, seed=0, device="cpu", pool=pool)
    b = initial_params(monkeypatch, recipe, 22, *args, seed=0, device="cpu", pool=pool)
    c = initial_params(monkeypatch, recipe, 11, *args, seed=1, device="cpu", pool=pool)
    assert same_state(a, b) and not same_state(a, c)


def test_backbone_trunk_exports_and_reloads_with_its_weights(tmp_path):
    """A UCN on a corrlib backbone (the paper's GoogLeNet; here a random ResNet-18 for speed):
    the export rebuilds the backbone from the file, weights included, and says what they were."""
    from corrlib.models.backbones import backbone
    from corrlib.models.ucn import UCN

    torch.manual_seed(0)
    trunk = backbone("resnet18", taps=("layer2",), weights="none", trainable=True)
    model = UCN(trunk, dim=16, variant="hard-negatives+st").eval()
    assert model.config["trunk"] == {"arch": "resnet18", "tap": "layer2"} and model.stride == 8
    path = export_ucn(tmp_path / "ucn.pt", model)
    loaded = load_ucn(path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0])
    # trained with the model (a trainable trunk): the file says so beside the starting weights
    assert loaded.trunk.weights_source == "random init (NOT pretrained), fine-tuned with the model"


def test_keypoint_pool_batches_follow_the_annotations(tmp_path):
    """CUB keypoint pairs (fake official layout): resized pool, and batches whose positives are
    annotated keypoints of the pair (either direction), drawn with replacement."""
    from tests.fake_layouts import write_cub2011

    write_cub2011(tmp_path)
    cfg = get_config("03_ucn", "paper").replace(
        size=(32, 48), cub_pairs_per_class=2, batch_size=3, points=20
    )
    pool = recipe.train_pool(cfg, 0, tmp_path)
    assert isinstance(pool, recipe.KeypointPool) and len(pool) == 4
    assert pool.images.shape[1:] == (3, 32, 48) and pool.images.dtype == torch.uint8
    assert "CUB-200-2011 train pairs" in recipe.describe_pool(pool)
    # keypoints scale with the images (80 x 60 -> 48 x 32), pixel centres kept
    item = recipe.CUB2011Pairs(tmp_path, "train", pairs_per_class=2)[0]
    expected = (item["src_kps"] + 0.5) * torch.tensor([48 / 80, 32 / 60]) - 0.5
    torch.testing.assert_close(pool.kps_src[0], expected)
    grid = FeatureGrid((1.5, 1.5), (4.0, 4.0))
    fn = recipe.make_batch_fn(pool, grid, cfg)
    batch = fn(0, torch.Generator().manual_seed(0))
    again = fn(0, torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # resumable: the step's generator
    assert batch["src"].shape == (3, 3, 32, 48) and batch["pos_src"].shape == (3, 20, 2)
    annotated = {tuple(v) for k in pool.kps_src + pool.kps_trg for v in grid.to_cells(k).tolist()}
    assert all(tuple(v) in annotated for v in batch["pos_src"].reshape(-1, 2).tolist())
    import matplotlib.pyplot as plt

    fig = recipe.show_training_pair(pool, 0)
    assert len(fig.axes) == 2
    plt.close(fig)
