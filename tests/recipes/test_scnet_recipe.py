"""Chapter 04's recipe: folds, data preparation, training and evaluation on PF-WILLOW (smoke)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from corrlib.methods import get_method
from corrlib.recipes import scnet as recipe
from tests._cli import eval_checkpoint


@pytest.fixture(scope="module")
def willow(data_root):
    from corrlib.data import PFWillow

    return PFWillow(data_root)


@pytest.mark.realdata
def test_folds_are_image_disjoint(willow):
    split = recipe.willow_folds(willow)
    assert len(split.pairs[0]) == len(split.pairs[1]) == 100
    for fold in (0, 1):
        for i in split.pairs[fold]:
            p = willow.pairs[i]
            assert split.fold_of[p.src_name] == split.fold_of[p.trg_name] == fold
    images = [{n for n, f in split.fold_of.items() if f == k} for k in (0, 1)]
    assert not images[0] & images[1] and len(images[0]) == len(images[1]) == 25


@pytest.mark.realdata
def test_train_resume_and_folded_evaluation(willow, tmp_path):
    cfg = recipe.config("smoke")
    split = recipe.willow_folds(willow)
    data = recipe.prepare_pairs(willow, split.pairs[0][:2], cfg, n_proposals=40, mirror=True)
    assert len(data.pairs) == 4 and all(p["iou"].shape[0] == 40 or True for p in data.pairs)
    ckpt = tmp_path / "ag.pt"
    full, hist, _ = recipe.train_scnet("AG", cfg, data, seed=0, device="cpu", fold=0, steps=4)
    recipe.train_scnet("AG", cfg, data, ckpt, seed=0, device="cpu", fold=0, steps=4)
    again, _, _ = recipe.train_scnet("AG", cfg, data, ckpt, seed=0, device="cpu", fold=0, steps=4)
    assert_close(again.state_dict(), full.state_dict())  # the finished checkpoint is returned
    assert {"loss", "positives", "negatives"} <= set(hist[-1])
    other, _, _ = recipe.train_scnet("AG", cfg, data, seed=1, device="cpu", fold=1, steps=1)
    folded = recipe.scnet_method([full, other], split.fold_of, cfg)
    fold1_src = willow.pairs[split.pairs[1][0]].src_name
    assert folded.method_for(fold1_src) is folded.methods[0]  # trained on fold 0
    with pytest.raises(KeyError, match="no fold"):
        folded.method_for("PF-dataset/nowhere.png")
    idx = split.pairs[1][:2]
    res = recipe.evaluate_pck(folded, willow, idx)
    assert res.n_pairs == 2 and res.dataset == "PFWillow"
    regions = recipe.prepare_pairs(willow, idx, cfg, n_proposals=cfg.test_proposals, mirror=False)
    r = recipe.evaluate_regions(folded, willow, regions, k_max=10)
    assert 0 <= r["pcr_auc"] <= 1 and r["miou"].shape == (10,)


@pytest.mark.realdata
def test_cli_evaluates_an_exported_scnet(willow, data_root, tmp_path, capsys):
    from corrlib.models.scnet import export_scnet

    cfg = recipe.config("smoke")
    model = recipe.build_scnet("AG", cfg)
    path = export_scnet(tmp_path / "ag.scnet.pt", model)
    assert eval_checkpoint("scnet-ag", path, data_root, tmp_path / "run") == 0
    captured = capsys.readouterr()
    assert "scnet-ag@96x96" in captured.out + captured.err
    with pytest.raises(ValueError, match="--method scnet-ag"):
        get_method("scnet-a", checkpoint=path)


def test_untrained_baselines_are_registered():
    assert get_method("nam").name == "nam-hog@224x224"
    assert get_method("phm", input_size=(96, 128)).name == "phm-hog@128x96"
    with pytest.raises(ValueError, match="proposals"):
        get_method("nam", proposals="rp")


def test_object_box_grows_keypoint_box():
    kps = torch.tensor([[10.0, 20.0], [30.0, 60.0]])
    assert_close(recipe.object_box(kps, None, (100, 100), 0.1), torch.tensor([8.0, 16, 32, 64]))
    assert_close(recipe.object_box(kps, None, (62, 31), 0.1), torch.tensor([8.0, 16, 30, 61]))
    box = torch.tensor([1.0, 2, 3, 4])
    assert recipe.object_box(kps, box, (100, 100), 0.1) is not None


def test_check_box_transfer():
    def right(p, a, b):
        return b[:2] + (p - a[:2]) / (a[2:] - a[:2]) * (b[2:] - b[:2])

    def wrong(p, a, b):
        return p - a[:2] + b[:2]

    def todo(p, a, b):
        raise NotImplementedError

    assert recipe.check_box_transfer(right).startswith("pass")
    assert recipe.check_box_transfer(wrong).startswith("wrong")
    assert recipe.check_box_transfer(todo).startswith("not attempted")


def test_paper_data_path_on_a_fake_pfpascal(tmp_path):
    from corrlib.data import PFPascal
    from tests.data.test_pfpascal import make_fake_pfpascal

    root = make_fake_pfpascal(tmp_path)
    cfg = recipe.config("smoke").replace(
        data="pf-pascal", proposals="us", train_proposals=30, test_proposals=30
    )
    stand_in = PFPascal(root, "test")  # PF-WILLOW's place: only its pairs are counted here
    data = recipe.chapter_data(cfg, stand_in, root)
    assert data.folds == (None,) and data.split is None and len(data.pascal_test) == 2
    assert len(data.train[None].pairs) == 3  # 3 training pairs, mirroring off at smoke
    models = {}
    for v in ("A", "AG"):
        models[v, 0, None], _, _ = recipe.train_scnet(
            v, cfg, data.train[None], seed=0, device="cpu", fold=None, steps=2
        )
    method = recipe.trained_method(models, "AG", 0, data, cfg)
    res = recipe.evaluate_pck(method, data.pascal_test, None, "pf-pascal")
    assert res.n_pairs == 2 and res.protocol == "pf-pascal"
    assert recipe.checkpoint_name("AG", None) == "AG"
    assert recipe.checkpoint_name("AG", 1) == "AG-fold1"


def test_max_side_is_explained_or_used():
    assert get_method("nam", max_side=128).name == "nam-hog@128x128"
    with pytest.raises(ValueError, match="does not apply to SCNet"):
        get_method("scnet-ag", max_side=128)
    with pytest.raises(ValueError, match="does not apply to RTN"):
        get_method("rtn", max_side=128)
