"""Chapter 05's recipe at smoke size: data, two-stage training with resume, evaluation."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from corrlib.methods import get_method
from corrlib.recipes import rtn as recipe
from tests._cli import eval_checkpoint


@pytest.fixture(scope="module")
def cfg():
    return recipe.config("smoke")


@pytest.fixture(scope="module")
def data(cfg):
    pool = recipe.synthetic_pool(cfg, 0)
    test = recipe.heldout_pool(cfg, 0)
    weak = recipe.composite_pairs(cfg, "train", 6, 0)
    weak_test = recipe.composite_pairs(cfg, "test", 4, 1)
    m = recipe.build_rtn("full", cfg)
    for p in (pool, test, weak, weak_test):
        p.cache_features(m.features)
    return pool, test, weak, weak_test


def test_composite_pairs_are_different_objects_of_one_class(cfg):
    pairs = recipe.composite_pairs(cfg, "train", 10, 0)
    assert len(pairs) == 10 and pairs.src_mask.shape == (10, 64, 64)
    assert not torch.equal(pairs.src[0], pairs.trg[0])
    box = pairs.src_box[0]
    ys, xs = torch.nonzero(pairs.src_mask[0], as_tuple=True)
    assert box.tolist() == [
        xs.min().item(),
        ys.min().item(),
        xs.max().item() + 1,
        ys.max().item() + 1,
    ]


def test_box_label_mask():
    m = recipe.box_label_mask(torch.tensor([[4.0, 0.0, 12.0, 8.0]]), (4, 4), 4)
    # cell centres at 1.5, 5.5, 9.5, 13.5: x in [4, 12) -> cells 1, 2; y in [0, 8) -> 0, 1
    assert m[0].int().tolist() == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_two_stage_training_resumes_and_evaluates(cfg, data, tmp_path):
    pool, test, weak, weak_test = data
    models, hist, _ = recipe.train_rtn("full", cfg, pool, weak, tmp_path, seed=0, device="cpu")
    assert set(models) == {"synthetic", "weak"} and set(hist) == {"synthetic", "weak"}
    assert "centre_wins" in hist["weak"][-1] and "epe_cells" in hist["synthetic"][-1]
    # stage 2 trains only G at smoke (weak_trains="geo"): the re-extraction is stage 1's
    for k, v in models["synthetic"].reextractors.state_dict().items():
        assert_close(models["weak"].reextractors.state_dict()[k], v)
    again, _, _ = recipe.train_rtn("full", cfg, pool, weak, tmp_path, seed=0, device="cpu")
    assert_close(again["weak"].state_dict(), models["weak"].state_dict())
    r = recipe.evaluate_synthetic(models["weak"], test, 2, 8)
    assert 0 <= r["pck@0.05"] <= 1 and r["points"] == 8 * len(test)
    m = recipe.evaluate_masks(models["weak"], weak_test, 0)
    assert 0 <= m["mask_iou"] <= 1 and m["pairs"] == 4
    w = recipe.evaluate_weak(models["weak"], weak_test, cfg)
    assert w["weak_loss"] > 0 and 0 <= w["centre_wins"] <= 1


def test_identity_iterations_give_identity_mask_transfer(cfg, data):
    _, _, _, weak_test = data
    model = recipe.build_rtn("full", cfg)
    flow0 = torch.zeros(len(weak_test), 2, 64, 64)
    warped = recipe.warp_mask(weak_test.trg_mask, flow0)
    assert torch.equal(warped >= 0.5, weak_test.trg_mask)
    r = recipe.evaluate_masks(model, weak_test, 0)
    inter = (weak_test.trg_mask & weak_test.src_mask).flatten(1).sum(1).float()
    union = (weak_test.trg_mask | weak_test.src_mask).flatten(1).sum(1).float()
    assert r["mask_iou"] == pytest.approx(float((inter / union).mean()), abs=1e-6)


def test_check_window_softmax_loss():
    def right(s, c):
        return -torch.log_softmax(s, 0)[c]

    def wrong(s, c):
        return -s[c]

    def todo(s, c):
        raise NotImplementedError

    assert recipe.check_window_softmax_loss(right).startswith("pass")
    assert recipe.check_window_softmax_loss(wrong).startswith("wrong")
    assert recipe.check_window_softmax_loss(todo).startswith("not attempted")


@pytest.mark.realdata
def test_cli_evaluates_an_exported_rtn(cfg, data_root, tmp_path, capsys):
    from corrlib.models.rtn import export_rtn

    model = recipe.build_rtn("full", cfg)
    model.eval_settings = {"iterations": 2}
    path = export_rtn(tmp_path / "full.rtn.pt", model)
    assert eval_checkpoint("rtn", path, data_root, tmp_path / "run") == 0
    captured = capsys.readouterr()
    assert "rtn@64x64,K=2" in captured.out + captured.err
    assert get_method("rtn", checkpoint=path, iterations=0).name == "rtn@64x64,K=0"


def test_paper_weak_pairs_come_from_pfpascal_with_the_codes_4x_augmentation(cfg, tmp_path):
    from tests.data.test_pfpascal import make_fake_pfpascal

    root = make_fake_pfpascal(tmp_path)
    pairs = recipe.weak_pairs(cfg.replace(weak_data="pf-pascal"), 0, root)
    assert len(pairs) == 3 * 4 and pairs.src_mask is None  # 3 training pairs x 4
    assert pairs.src.shape == (12, 3, 64, 64) and pairs.src.dtype == torch.uint8
    # the mirrored copy: the same image flipped, its box mirrored (x -> W - x)
    assert torch.equal(pairs.src[1], pairs.src[0].flip(-1))
    b0, b1 = pairs.src_box[0], pairs.src_box[1]
    assert_close(b1, torch.stack([64 - b0[2], b0[1], 64 - b0[0], b0[3]]))
    # the swapped copy: source and target exchanged
    assert torch.equal(pairs.src[2], pairs.trg[0]) and torch.equal(pairs.trg[2], pairs.src[0])
    composites = recipe.weak_pairs(cfg, 0)
    assert len(composites) == cfg.weak_pairs and composites.src_mask is not None
