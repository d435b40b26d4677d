"""Chapter 07's recipe at smoke size: category pairs, mining, metric learning with resume, heads,
methods and the exercise checkers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from corrlib.methods import MSConvMethod, MSFlowMethod, get_method
from corrlib.models.msconv import export_msconv
from corrlib.recipes import multiscale as recipe
from tests._cli import eval_checkpoint


@pytest.fixture(scope="module")
def cfg():
    return recipe.config("smoke")


@pytest.fixture(scope="module")
def data(cfg):
    return recipe.prepare_training_data(cfg)


@pytest.fixture(scope="module")
def test_sets(cfg):
    images = recipe.category_images(cfg, "test")
    return (
        recipe.synthetic_pairs(images, cfg, cfg.test_pairs, seed=1000),
        recipe.cross_instance_pairs(images, cfg.cross_test_pairs, seed=1000),
    )


def test_cross_pairs_are_different_images_of_one_category(cfg):
    images = recipe.category_images(cfg, "train")
    pairs = recipe.cross_instance_pairs(images, 12, seed=3)
    names = {id(it["image"]): it for it in images}
    assert len(pairs) == 12 and pairs.size == tuple(cfg.size)
    for i in range(12):
        assert not torch.equal(pairs.src[i], pairs.trg[i])
        a = next(it for it in images if torch.equal(it["image"], pairs.src[i]))
        b = next(it for it in images if torch.equal(it["image"], pairs.trg[i]))
        assert a["label"] == b["label"] == int(pairs.label[i])
        assert a["background"] != b["background"]
    assert names  # the images carry their background's name
    with pytest.raises(ValueError, match="No category has two images"):
        recipe.cross_instance_pairs(images[:1], 2)


def test_true_cells_follow_the_exact_flow(cfg):
    images = recipe.category_images(cfg, "train")[:4]
    pool = recipe.synthetic_pairs(images, cfg, 2, seed=0)
    pool.flow[0] = 0.0
    pool.flow[0][0] = 8.0  # one cell (8 pixels) to the right everywhere
    pool.flow_valid[0] = True
    cells, valid = recipe.true_cells(pool, 0, (8, 8))
    xs = torch.arange(8.0).expand(8, 8)
    assert_close(cells[..., 0], xs + 1) and bool(valid.all())


def test_training_data_mines_with_the_frozen_trunk(cfg, data):
    assert data.map_size == (8, 8) and len(data.mined) == cfg.cross_pairs
    assert data.usable and data.fg_src.shape == (cfg.cross_pairs, 8, 8)
    assert data.pre["cross_src"].dtype == torch.float16
    # cached: a second call returns the same object
    assert recipe.prepare_training_data(cfg) is data


def test_metric_learning_trains_resumes_exactly_and_exports(cfg, data, tmp_path):
    ckpt = tmp_path / "ms.pt"
    four = cfg.replace(steps={"default": 4})
    straight, hist, _ = recipe.train_features("multi-scale", four, data, seed=0, device="cpu")
    assert {"d_pos", "d_neg", "nn_acc_synthetic", "nn_acc_mined"} <= set(hist[-1])
    recipe.train_features("multi-scale", four, data, ckpt, seed=0, device="cpu", stop_after=2)
    resumed, _, _ = recipe.train_features("multi-scale", four, data, ckpt, seed=0, device="cpu")
    assert_close(resumed.state_dict(), straight.state_dict())
    before = recipe.build_net("multi-scale", cfg).state_dict()
    moved = [k for k in before if not torch.equal(before[k], straight.state_dict()[k])]
    assert moved and all("block3" in k for k in moved)  # only the swapped stage trains


def test_current_mining_mode_trains(cfg, data):
    cur = cfg.replace(mine_with="current")
    _, hist, _ = recipe.train_features("single-scale", cur, data, seed=0, device="cpu")
    assert "mined" in hist[-1] and hist[-1]["mined"] >= 0


def test_heads_train_and_run_as_methods(cfg, data, test_sets, tmp_path):
    synth_test, cross_test = test_sets
    net = recipe.build_net("single-scale", cfg)
    hd = recipe.prepare_head_data(net, data)
    for kind in ("flow", "affine"):
        head, hist, _ = recipe.train_head(kind, cfg, hd, seed=0, device="cpu")
        assert "epe_synthetic" in hist[-1] and ("fg" in hist[-1]) == (kind == "flow")
        method = MSFlowMethod(model=(net, head))
        assert method.name == f"msconv-{kind}@64x64"
        res = recipe.evaluate_synthetic(method, synth_test, cfg)
        assert 0 <= res["pck@0.1"] <= 1 and res["points"] == cfg.test_pairs * cfg.test_points
        mt = recipe.evaluate_mask_transfer(method, cross_test)
        assert mt["pairs"] == cfg.cross_test_pairs and 0 <= mt["lt_acc"] <= 1
        fg = method.foreground(cross_test.src[0], cross_test.trg[0])
        if kind == "flow":
            assert fg.shape == (64, 64) and 0 <= float(fg.min()) <= float(fg.max()) <= 1
            assert recipe.evaluate_foreground(method, cross_test)["rows"] == cfg.cross_test_pairs
        else:
            assert fg is None
    path = export_msconv(tmp_path / "flow.pt", net, head)
    assert get_method("msconv-flow", checkpoint=path).name == "msconv-affine@64x64"
    with pytest.raises(ValueError, match="no flow head"):
        get_method("msconv-flow", checkpoint=export_msconv(tmp_path / "f.pt", net))


def test_identity_flow_transfers_the_mask_unchanged(cfg, test_sets):
    _, cross_test = test_sets
    res = recipe.evaluate_mask_transfer(get_method("identity"), cross_test)
    assert res["lt_acc"] == pytest.approx(res["identity_lt_acc"])
    assert res["iou"] == pytest.approx(res["identity_iou"])


@pytest.mark.realdata
def test_mining_table_and_nn_method_on_real_data(cfg, test_sets, data_root, tmp_path, capsys):
    synth_test, cross_test = test_sets
    net = recipe.build_net("single-scale", cfg)
    rows = recipe.mining_table(cfg, net, synth_test, cross_test, data_root=data_root)
    assert [r["rule"] for r in rows] == [
        "NN", "MNN", "MNN + ransac", "MNN + hough", "MNN + neighbourhood",
    ]  # fmt: skip
    nn_, mnn = rows[0], rows[1]
    assert nn_["matches_per_pair_synthetic"] >= mnn["matches_per_pair_synthetic"]
    assert rows[0]["pairs"]["willow"] == cfg.mining_willow_pairs
    for r in rows[2:]:  # a verification only removes candidates
        assert r["matches_per_pair_cross"] <= mnn["matches_per_pair_cross"]
    method = MSConvMethod(model=net, max_side=cfg.max_side)
    res = recipe.evaluate_pfwillow(method, cfg, data_root=data_root)
    assert res.n_pairs == cfg.willow_limit
    path = export_msconv(tmp_path / "nn.pt", net)
    assert eval_checkpoint("msconv", path, data_root, tmp_path / "out") == 0
    assert "msconv@64" in capsys.readouterr().out


def test_exercise_checkers():
    def mix(x, w, b, logits, rates):
        a = torch.softmax(logits, 0)
        return sum(a[i].view(1, -1, 1, 1) * F.conv2d(x, w, None, 1, r, r) for i, r in
                   enumerate(rates)) + b.view(1, -1, 1, 1)  # fmt: skip

    assert recipe.check_mixture_forward(mix).startswith("pass")
    plain = lambda x, w, b, logits, rates: F.conv2d(x, w, b, 1, 1, 1)  # noqa: E731
    assert "rate-1 convolution alone" in recipe.check_mixture_forward(plain)
    assert recipe.check_mixture_forward(lambda *a: None).startswith("wrong")

    def mnn(corr):
        fwd, bwd = corr.argmax(1), corr.argmax(0)
        src = torch.arange(len(fwd))
        keep = bwd[fwd] == src
        return src[keep], fwd[keep]

    assert recipe.check_mutual_nn(mnn).startswith("pass")
    assert "all nearest neighbours" in recipe.check_mutual_nn(
        lambda c: (torch.arange(5), c.argmax(1))
    )


def test_uncached_trunk_path_trains_like_the_paper_preset(cfg):
    online = cfg.replace(cache_prefix=False)
    data = recipe.prepare_training_data(online)
    assert not data.pre
    batch = recipe.make_metric_batch_fn(data, online)(0, torch.Generator().manual_seed(0))
    assert batch["src"].shape == (online.batch_size, 3, *online.size)
    _, hist, _ = recipe.train_features("multi-scale", online, data, seed=0, device="cpu")
    assert len(hist) == online.steps_for("multi-scale")


def test_paper_preset_swaps_a_resnet_stage():
    paper = recipe.config("paper")
    assert (paper.arch, paper.stage, paper.source) == ("resnet101", "layer3", "voc")
    from corrlib.models.msconv import msconv_net

    net = msconv_net("resnet18", trunk_weights="none", stage="layer3", rates=(1, 2))
    assert net.stride == 16 and len(net.swapped) == 4  # two basic blocks, two 3x3 each
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 256, 4, 4)


def test_current_mining_draws_points_in_both_directions(cfg, data):
    cur = cfg.replace(mine_with="current")
    batch = recipe.make_metric_batch_fn(data, cur)(3, torch.Generator().manual_seed(1))
    picks = batch["pick"][~batch["synthetic"]]
    assert bool(((picks >= 0) & (picks < 1)).all())  # uniform draws, whatever the direction


def test_flow_method_refuses_max_side(cfg, data, tmp_path):
    net = recipe.build_net("single-scale", cfg)
    hd = recipe.prepare_head_data(net, data)
    head, _, _ = recipe.train_head("flow", cfg, hd, seed=0, device="cpu", steps=1)
    path = export_msconv(tmp_path / "h.pt", net, head)
    with pytest.raises(ValueError, match="does not apply to msconv-flow"):
        get_method("msconv-flow", checkpoint=path, max_side=96)
