"""Tests for corrlib.metrics: PCK protocols and the TSS evaluation kit re-implementation."""

from __future__ import annotations

import csv
import doctest
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import corrlib.metrics as M
from corrlib.flo import write_flo
from corrlib.metrics import (
    PROTOCOLS,
    PCKEvaluator,
    PCKProtocol,
    evaluate_tss_results,
    get_protocol,
    mask_iou,
    pck,
    pck_threshold,
    tss_flow_accuracy,
    tss_masks_from_flows,
    tss_resize_flow_pair,
    tss_scores_csv,
)

KPS = torch.tensor([[10.0, 20.0], [50.0, 30.0], [30.0, 80.0]])  # box 40 x 60


def test_docstring_examples_run():
    assert doctest.testmod(M).failed == 0


# --- pck ---------------------------------------------------------------------------------------


def test_pck_two_of_four_within_threshold():
    gt = torch.tensor([[0.0, 0.0], [10.0, 10.0], [20.0, 5.0], [7.0, 7.0]])
    pred = gt + torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 6.0], [-8.0, 0.0]])  # 1, 5, 6, 8 px
    assert pck(pred, gt, 5.0).item() == pytest.approx(0.5)  # distance 5 == threshold counts
    assert pck(pred, gt, 4.99).item() == pytest.approx(0.25)


def test_pck_batched_with_per_pair_thresholds_and_valid():
    gt = torch.zeros(2, 3, 2)
    pred = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]]).repeat(2, 1, 1)
    out = pck(pred, gt, torch.tensor([1.0, 2.0]))
    assert out.shape == (2,)
    assert torch.allclose(out, torch.tensor([1 / 3, 2 / 3]))
    valid = torch.tensor([[True, False, False], [False, False, True]])
    assert torch.allclose(pck(pred, gt, 2.0, valid=valid), torch.tensor([1.0, 0.0]))


def test_pck_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    gt, pred = torch.rand(4, 7, 2, generator=g) * 50, torch.rand(4, 7, 2, generator=g) * 50
    thr = torch.tensor([5.0, 10.0, 20.0, 40.0])
    loop = [
        sum(math.dist(pred[b, i].tolist(), gt[b, i].tolist()) <= thr[b] for i in range(7)) / 7
        for b in range(4)
    ]
    assert torch.allclose(pck(pred, gt, thr), torch.tensor(loop))


def test_pck_empty_and_nan():
    assert math.isnan(pck(torch.zeros(0, 2), torch.zeros(0, 2), 1.0).item())
    assert torch.isnan(pck(torch.zeros(2, 0, 2), torch.zeros(2, 0, 2), 1.0)).all()
    none = torch.zeros(3, dtype=torch.bool)
    assert math.isnan(pck(torch.zeros(3, 2), torch.zeros(3, 2), 1.0, valid=none).item())
    pred = torch.tensor([[float("nan"), 0.0], [0.0, 0.0]])
    assert pck(pred, torch.zeros(2, 2), 1.0).item() == 0.5  # a NaN prediction is wrong


def test_pck_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"pred shape \(4, 2\) and gt shape \(5, 2\)"):
        pck(torch.zeros(4, 2), torch.zeros(5, 2), 1.0)
    with pytest.raises(ValueError, match=r"Argument pred must have shape \(N, 2\) or \(B, N, 2\)"):
        pck(torch.zeros(4, 3), torch.zeros(4, 3), 1.0)
    with pytest.raises(ValueError, match=r"Argument threshold"):
        pck(torch.zeros(2, 4, 2), torch.zeros(2, 4, 2), torch.ones(3))


# --- protocols ---------------------------------------------------------------------------------


def test_presets():
    w = get_protocol("pf-willow")
    assert (w.normalizer, w.direction, w.alphas, w.resolution, w.aggregation) == (
        "kps_box",
        "src->trg",
        (0.05, 0.1, 0.15),
        "original",
        "per_image",
    )
    assert not w.legacy_padded_box and "Ham" in w.source
    pp = get_protocol("pf-pascal")
    assert (pp.normalizer, pp.direction, pp.resolution, pp.square_side) == (
        "image",
        "src->trg",
        "square",
        240,
    )
    assert all(k in pp.source for k in ("SCNet", "NC-Net", "DHPF", "SFNet", "224", "288"))
    old = get_protocol("pf-pascal-maxside")
    assert (old.normalizer, old.resolution, old.square_side) == ("image", "original", None)
    assert old.source.startswith("NOT a published protocol")
    sf = get_protocol("pf-pascal-sfnet")
    assert (sf.direction, sf.square_side, sf.resolution) == ("trg->src", 288, "square")
    nc = get_protocol("pf-pascal-ncnet")
    assert (nc.direction, nc.square_side) == ("trg->src", 224)
    d = get_protocol("pf-willow-dhpf-legacy")
    assert (d.normalizer, d.resolution, d.square_side, d.legacy_padded_box) == (
        "kps_box",
        "square",
        240,
        True,
    )
    assert "dhpf#3" in d.source
    s = get_protocol("spair-71k")
    assert (s.normalizer, s.aggregation, s.headline) == ("bbox", "per_category", 0.1)
    assert "1908.10543" in s.source
    t = get_protocol("tss")
    assert (t.normalizer, t.alphas) == ("image", (0.05,))
    assert set(PROTOCOLS) == {
        "pf-willow",
        "pf-willow-dhpf-legacy",
        "pf-pascal",
        "pf-pascal-ncnet",
        "pf-pascal-sfnet",
        "pf-pascal-maxside",
        "spair-71k",
        "tss",
    }
    assert all(p.source and p.name == k for k, p in PROTOCOLS.items())


def test_protocol_checks_its_fields():
    with pytest.raises(
        ValueError, match=r"Unknown value 'willow' for argument protocol. Valid values are \{pf-"
    ):
        get_protocol("willow")
    with pytest.raises(
        ValueError, match=r"argument direction. Valid values are \{src->trg, trg->src\}"
    ):
        PCKProtocol("x", "src-trg", "image", (0.1,))
    with pytest.raises(ValueError, match="legacy_padded_box applies to normalizer 'kps_box'"):
        PCKProtocol("x", "src->trg", "image", (0.1,), legacy_padded_box=True)
    with pytest.raises(ValueError, match="headline_alpha"):
        PCKProtocol("x", "src->trg", "image", (0.1,), headline_alpha=0.2)
    with pytest.raises(ValueError, match="alphas"):
        PCKProtocol("x", "src->trg", "image", ())
    with pytest.raises(ValueError, match="square_side must be given with resolution 'square'"):
        PCKProtocol("x", "src->trg", "image", (0.1,), resolution="square")
    with pytest.raises(ValueError, match="square_side must be given with resolution 'square'"):
        PCKProtocol("x", "src->trg", "image", (0.1,), square_side=240)
    with pytest.raises(ValueError, match="square_side must be >= 1"):
        PCKProtocol("x", "src->trg", "image", (0.1,), resolution="square", square_side=0)


@pytest.mark.parametrize(
    ("normalizer", "kwargs", "expected"),
    [
        ("image", {"image_size": (300, 500)}, 50.0),
        ("bbox", {"bbox": (10.0, 20.0, 110.0, 70.0)}, 10.0),  # sides 100 x 50
        ("kps_box", {"kps": KPS}, 6.0),  # sides 40 x 60
    ],
)
def test_pck_threshold_each_normalizer(normalizer, kwargs, expected):
    proto = PCKProtocol("x", "src->trg", normalizer, (0.1, 0.2))
    assert pck_threshold(proto, alpha=0.1, **kwargs) == pytest.approx(expected)
    assert pck_threshold(proto, alpha=0.2, **kwargs) == pytest.approx(2 * expected)
    assert pck_threshold(proto, **kwargs) == pytest.approx(expected)  # headline: first alpha


@pytest.mark.parametrize(
    ("normalizer", "needed"),
    [
        ("image", "image_size=(H, W) of the trg image"),
        ("bbox", "bbox=(x0, y0, x1, y1)"),
        ("kps_box", "kps=(N, 2)"),
    ],
)
def test_pck_threshold_says_what_is_missing(normalizer, needed):
    proto = PCKProtocol("mine", "src->trg", normalizer, (0.1,))
    with pytest.raises(
        ValueError, match=rf"'mine' normalises by '{normalizer}'; pass {re.escape(needed)}"
    ):
        pck_threshold(proto)


def test_legacy_padded_box_inflates_the_box_to_minus_one():
    plain = PCKProtocol("a", "src->trg", "kps_box", (0.1,))
    legacy = PCKProtocol("b", "src->trg", "kps_box", (0.1,), legacy_padded_box=True)
    # box x in [10, 50], y in [20, 80]: side 60; with (-1, -1): x in [-1, 50], y in [-1, 80]: 81
    assert pck_threshold(plain, kps=KPS) == pytest.approx(6.0)
    assert pck_threshold(legacy, kps=KPS) == pytest.approx(8.1)
    # a point already below (-1, -1) leaves the box unchanged
    low = torch.cat((KPS, torch.tensor([[-5.0, -5.0]])))
    assert pck_threshold(legacy, kps=low) == pck_threshold(plain, kps=low)
    assert math.isnan(pck_threshold(plain, kps=torch.zeros(0, 2)))


def _one_pair_pck(name, err, image_size=(375, 500), alpha=0.1):
    """PCK@alpha of one keypoint at (200, 150) predicted with error ``err`` = (dx, dy)."""
    ev = PCKEvaluator(name)
    gt = torch.tensor([[200.0, 150.0]])
    ev.add(gt + torch.tensor([err]), gt, category="c", image_size=image_size)
    return ev.summary()["alphas"][f"{alpha:g}"]["all"]


def test_pf_pascal_is_anisotropic_and_maxside_is_lenient():
    # target 500 (W) x 375 (H), alpha 0.1, error 45 px vertical:
    # pf-pascal: 45 / 375 = 0.12 > 0.1 wrong; pf-pascal-maxside: 45 / max(375, 500) = 0.09 right
    assert _one_pair_pck("pf-pascal", (0.0, 45.0)) == 0.0
    assert _one_pair_pck("pf-pascal-maxside", (0.0, 45.0)) == 1.0
    # 45 px horizontal: 45 / 500 = 0.09 under both
    assert _one_pair_pck("pf-pascal", (45.0, 0.0)) == 1.0
    # the limit: 37.5 px vertical is exactly 0.1 * 375
    assert _one_pair_pck("pf-pascal", (0.0, 37.5)) == 1.0
    assert _one_pair_pck("pf-pascal", (0.0, 37.6)) == 0.0


def test_pf_pascal_diagonal_by_hand():
    # dx = 30, dy = 30 on 500 x 375: sqrt((30/500)^2 + (30/375)^2) = sqrt(0.0036 + 0.0064)
    # = sqrt(0.01) = 0.1 -> right at alpha 0.1 (<=); dx = dy = 31: sqrt(0.01068) = 0.1033 wrong
    # maxside: sqrt(2) * 31 / 500 = 0.0877 right
    assert _one_pair_pck("pf-pascal", (30.0, 30.0)) == 1.0
    assert _one_pair_pck("pf-pascal", (31.0, 31.0)) == 0.0
    assert _one_pair_pck("pf-pascal-maxside", (31.0, 31.0)) == 1.0
    # dx = 40, dy = 24: sqrt(0.0064 + 0.004096) = 0.1024 wrong; at alpha 0.15 right
    assert _one_pair_pck("pf-pascal", (40.0, 24.0)) == 0.0
    assert _one_pair_pck("pf-pascal", (40.0, 24.0), alpha=0.15) == 1.0
    # the square side does not matter: every pf-pascal variant gives the same verdicts
    for name in ("pf-pascal-ncnet", "pf-pascal-sfnet"):
        assert _one_pair_pck(name, (30.0, 30.0)) == 1.0
        assert _one_pair_pck(name, (31.0, 31.0)) == 0.0


def test_pf_pascal_row_and_threshold_are_in_the_square():
    ev = PCKEvaluator("pf-pascal")
    gt = torch.tensor([[200.0, 150.0]])
    row = ev.add(gt + torch.tensor([[0.0, 45.0]]), gt, category="c", image_size=(375, 500))
    assert row["ref_length"] == 240.0  # L = the square side
    # the threshold is the pair (alpha W, alpha H) in original pixels, not one number
    assert pck_threshold(get_protocol("pf-pascal"), alpha=0.1, image_size=(375, 500)) == (
        pytest.approx(50.0),
        pytest.approx(37.5),
    )
    assert pck_threshold(get_protocol("pf-pascal-sfnet"), image_size=(375, 500)) == (
        pytest.approx(50.0),
        pytest.approx(37.5),
    )
    assert pck_threshold(
        get_protocol("pf-pascal-maxside"), alpha=0.1, image_size=(375, 500)
    ) == pytest.approx(50.0)
    with pytest.raises(ValueError, match=r"resizes to 240 x 240; pass image_size=\(H, W\)"):
        pck_threshold(get_protocol("pf-willow-dhpf-legacy"), kps=KPS)
    assert "sqrt((dx/W)^2 + (dy/H)^2) <= alpha" in get_protocol("pf-pascal").describe()


def test_dhpf_legacy_box_by_hand():
    # trg image 300 (W) x 200 (H) -> 240 x 240: x * 0.8, y * 1.2 on the 1-based coordinates
    # KPS (0-based) x in [10, 50], y in [20, 80] -> 1-based x in [11, 51], y in [21, 81]
    # -> x in [8.8, 40.8], y in [25.2, 97.2]; padded with -1: sides 41.8 and 98.2 -> L = 98.2
    d = get_protocol("pf-willow-dhpf-legacy")
    tx, ty = pck_threshold(d, alpha=0.1, image_size=(200, 300), kps=KPS)
    assert (tx, ty) == (pytest.approx(9.82 / 0.8), pytest.approx(9.82 / 1.2))
    # correct box in the same frame: sides 32 and 72 -> L = 72
    plain = PCKProtocol("p", "src->trg", "kps_box", (0.1,), resolution="square", square_side=240)
    assert pck_threshold(plain, image_size=(200, 300), kps=KPS)[0] == pytest.approx(7.2 / 0.8)
    # errors in the 240 frame: dy = 8 px original = 9.6 <= 9.82 right; dy = 8.5 -> 10.2 wrong
    ev = PCKEvaluator(d)
    pred = KPS.clone()
    pred[0, 1] += 8.0
    pred[1, 1] += 8.5
    pred[2, 0] += 12.0  # dx 12 * 0.8 = 9.6 right
    row = ev.add(pred, KPS, category="c", image_size=(200, 300))
    assert row["ref_length"] == pytest.approx(98.2)
    assert row["pck@0.1"] == pytest.approx(2 / 3)
    # the older original-pixel legacy mode keeps its numbers: box padded by (-1, -1) in the
    # coordinates passed, L = 81 px
    old = PCKProtocol("b", "src->trg", "kps_box", (0.1,), legacy_padded_box=True)
    assert pck_threshold(old, kps=KPS) == pytest.approx(8.1)


# --- evaluator -----------------------------------------------------------------------------------


def _three_pairs(aggregation: str) -> PCKEvaluator:
    """Category a: 4/4 and 0/1 correct; category b: 1/5 correct (threshold 10 px)."""
    ev = PCKEvaluator(PCKProtocol("toy", "src->trg", "image", (0.1,), aggregation=aggregation))
    size = (100, 100)

    def add(n_ok: int, n_bad: int, category: str) -> None:
        gt = torch.arange(2 * (n_ok + n_bad), dtype=torch.float32).reshape(-1, 2)
        pred = gt.clone()
        pred[n_ok:, 0] += 20.0
        ev.add(pred, gt, category=category, image_size=size)

    add(4, 0, "a")
    add(0, 1, "a")
    add(1, 4, "b")
    return ev


@pytest.mark.parametrize(
    ("aggregation", "overall", "cat_a"),
    [
        ("per_image", (1.0 + 0.0 + 0.2) / 3, 0.5),
        ("per_point", (4 + 0 + 1) / 10, 4 / 5),
        ("per_category", (0.5 + 0.2) / 2, 0.5),
    ],
)
def test_aggregations_give_their_known_numbers(aggregation, overall, cat_a):
    s = _three_pairs(aggregation).summary()
    entry = s["alphas"]["0.1"]
    assert entry["all"] == pytest.approx(overall)
    assert entry["per_category"]["a"] == pytest.approx(cat_a)
    assert entry["per_category"]["b"] == pytest.approx(0.2)
    assert (s["n_pairs"], s["n_points"], s["n_skipped"]) == (3, 10, 0)
    assert s["categories"] == {
        "a": {"n_pairs": 2, "n_points": 5},
        "b": {"n_pairs": 1, "n_points": 5},
    }
    assert (s["protocol"], s["aggregation"], s["headline"]) == ("toy", aggregation, 0.1)


def test_evaluator_skips_empty_pairs_and_lists_them():
    ev = _three_pairs("per_image")
    ev.add(torch.zeros(0, 2), torch.zeros(0, 2), category="b", image_size=(100, 100))
    s = ev.summary()
    assert s["alphas"]["0.1"]["all"] == pytest.approx(0.4)
    assert (s["n_pairs"], s["n_skipped"]) == (3, 1)
    rows = ev.per_pair()
    assert len(rows) == len(ev) == 4
    assert set(rows[0]) == {"pair", "category", "n_points", "ref_length", "pck@0.1"}
    assert rows[0]["ref_length"] == 100.0 and math.isnan(rows[3]["pck@0.1"])
    empty = PCKEvaluator("pf-willow").summary()
    assert empty["alphas"]["0.1"]["all"] is None and empty["n_pairs"] == 0


def _strict_json(summary: dict) -> dict:
    """The summary as RFC 8259 JSON (bare NaN raises) and back."""
    return json.loads(json.dumps(summary, allow_nan=False))


@pytest.mark.parametrize("aggregation", ["per_image", "per_point", "per_category"])
def test_summary_is_strict_json_with_null_for_nothing_scored(aggregation):
    proto = PCKProtocol("toy", "src->trg", "image", (0.05, 0.1), aggregation=aggregation)
    empty = PCKEvaluator(proto).summary()
    assert _strict_json(empty) == empty
    assert empty["alphas"] == {
        "0.05": {"all": None, "per_category": {}},
        "0.1": {"all": None, "per_category": {}},
    }
    assert (empty["n_pairs"], empty["n_points"], empty["n_skipped"]) == (0, 0, 0)
    ev = _three_pairs(aggregation)
    ev.add(torch.zeros(0, 2), torch.zeros(0, 2), category="c", image_size=(100, 100))
    s = ev.summary()
    assert _strict_json(s) == s
    assert s["alphas"]["0.1"]["per_category"]["c"] is None
    assert s["categories"]["c"] == {"n_pairs": 0, "n_points": 0} and s["n_skipped"] == 1
    assert s["alphas"]["0.1"]["all"] == _three_pairs(aggregation).summary()["alphas"]["0.1"]["all"]
    only_empty = PCKEvaluator(proto)
    only_empty.add(torch.zeros(0, 2), torch.zeros(0, 2), category="c", image_size=(10, 10))
    t = only_empty.summary()
    assert _strict_json(t) == t and t["alphas"]["0.1"]["all"] is None and t["n_skipped"] == 1
    assert "| c | n/a | n/a | 0 |" in only_empty.to_markdown()
    assert "| **all** | n/a | n/a | 0 |" in PCKEvaluator(proto).to_markdown()


def test_summary_of_valid_input_keeps_its_numbers():
    for aggregation in ("per_image", "per_point", "per_category"):
        s = _three_pairs(aggregation).summary()
        assert _strict_json(s) == s
        assert all(isinstance(v["all"], float) for v in s["alphas"].values())


def test_evaluator_normalisers_and_messages():
    gt = KPS.clone()
    pred = gt + torch.tensor([[5.0, 0.0], [7.0, 0.0], [0.0, 9.0]])
    willow = PCKEvaluator("pf-willow")  # L = 60 (keypoint box): thresholds 3, 6, 9
    row = willow.add(pred, gt, category="car")
    assert (row["pck@0.05"], row["pck@0.1"], row["pck@0.15"]) == pytest.approx((0.0, 1 / 3, 1.0))
    spair = PCKEvaluator("spair-71k")  # L = 100 (bbox side): thresholds 5, 10, 15
    row = spair.add(pred, gt, category="car", bbox=torch.tensor([0.0, 0.0, 100.0, 40.0]))
    assert (row["pck@0.05"], row["pck@0.1"]) == pytest.approx((1 / 3, 1.0))
    with pytest.raises(ValueError, match="pass bbox="):
        spair.add(pred, gt, category="car", image_size=(100, 100))
    with pytest.raises(ValueError, match=r"pred shape \(3, 2\) and gt shape \(2, 2\)"):
        willow.add(pred, gt[:2], category="car")


def test_to_markdown_states_the_protocol():
    md = _three_pairs("per_category").to_markdown()
    assert "| category | PCK@0.1 (%) | pairs |" in md
    assert "| a | 50.0 | 2 |" in md and "| b | 20.0 | 1 |" in md
    assert "| **all** | 35.0 | 3 |" in md
    assert "Protocol `toy`" in md and "max(H, W)" in md and "per_category" in md
    assert "Source: " in PCKEvaluator("spair-71k").to_markdown()


# --- TSS: flow accuracy, IoU, resizing, masks --------------------------------------------------


def _gt_flow(h: int = 10, w: int = 20, unknown_rows: int = 2) -> np.ndarray:
    g = np.random.default_rng(0)
    flow = g.uniform(-5, 5, (h, w, 2)).astype(np.float32)
    flow[:unknown_rows] = 1e10  # no ground truth there
    return flow


def test_tss_perfect_flow_scores_one_everywhere():
    gt = _gt_flow()
    acc = tss_flow_accuracy(gt.copy(), gt, other_size=(10, 20))
    assert acc.shape == (50,) and (acc == 1.0).all()


def test_tss_constant_three_pixel_error():
    gt = np.round(_gt_flow(unknown_rows=0) * 4) / 4  # quarter pixels: + 3 is exact in float32
    est = gt.copy()
    est[:, :10] += np.array([3.0, 0.0], np.float32)  # half the pixels off by exactly 3 px
    # max side 200: thr_t = 2 t -> T1 (2 px) counts the 3-px pixels wrong, T2 (4 px) right
    assert tss_flow_accuracy(est, gt, (100, 200), thresholds=(1, 2)).tolist() == [0.5, 1.0]
    # max side 300: thr_1 = 3 px exactly; an error equal to the threshold is correct
    assert tss_flow_accuracy(est, gt, (300, 100), thresholds=(1,)).tolist() == [1.0]


def test_tss_unknown_estimate_counts_as_error_and_unknown_gt_is_ignored():
    gt = _gt_flow(unknown_rows=2)  # 16 known rows of 20 px
    est = gt.copy()
    est[2:6] = 1e10  # 4 of the 8 known rows unknown in the estimate: error 1000
    est[:2] = 0.0  # pixels without ground truth do not count, whatever the estimate
    acc = tss_flow_accuracy(est, gt, (10, 20))
    assert np.allclose(acc, 0.5)


def test_tss_accepts_channel_first_tensors():
    gt = _gt_flow()
    est = gt + np.float32(0.7)
    ref = tss_flow_accuracy(est, gt, (10, 20))
    as_torch = tss_flow_accuracy(
        torch.from_numpy(est).permute(2, 0, 1), torch.from_numpy(gt).permute(2, 0, 1), (10, 20)
    )
    assert np.array_equal(ref, as_torch)
    with pytest.raises(ValueError, match="share one grid"):
        tss_flow_accuracy(est[:5], gt, (10, 20))


def test_tss_ground_truth_without_known_pixel_is_an_error():
    gt = np.full((4, 6, 2), np.nan, np.float32)
    gt[0, 0] = 1e10
    with pytest.raises(ValueError, match=r"flow_gt has no known pixel \(all 24 are NaN"):
        tss_flow_accuracy(np.zeros_like(gt), gt, (4, 6))


def test_mask_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True  # 4 px shared, 12 px in the union
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(a.astype(np.uint8) * 255, b.astype(np.uint8) * 255) == pytest.approx(1 / 3)
    assert mask_iou(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(1 / 3)
    assert math.isnan(mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)))
    with pytest.raises(ValueError, match="mask and mask_gt"):
        mask_iou(a, b[:3])


def test_tss_resize_to_the_same_size_is_identity():
    f1, f2 = _gt_flow(10, 20), _gt_flow(12, 16)
    r1, r2 = tss_resize_flow_pair(f1, f2, (10, 20), (12, 16))
    assert np.array_equal(r1, f1) and np.array_equal(r2, f2)


def test_tss_resize_rescales_flow_and_marks_mixed_pixels_unknown():
    f1 = np.full((20, 40, 2), (4.0, 2.0), np.float32)
    f2 = np.full((20, 40, 2), (-4.0, -2.0), np.float32)
    f1[10, 20] = 1e10
    r1, r2 = tss_resize_flow_pair(f1, f2, (40, 80), (40, 80))  # both images twice as large
    assert r1.shape == (40, 80, 2) and r2.shape == (40, 80, 2)
    unknown = (np.abs(r1) > 1e9).any(-1)
    assert np.allclose(r1[~unknown], (8.0, 4.0)) and np.allclose(r2, (-8.0, -4.0))
    # an upsampled unknown pixel spoils the 4 x 4 output pixels whose taps reach it
    assert unknown.sum() == 16 and unknown[19:23, 39:43].all()


def test_tss_masks_from_consistent_and_inconsistent_flows():
    f1 = np.full((10, 20, 2), (3.0, 0.0), np.float32)
    f2 = np.full((10, 20, 2), (-3.0, 0.0), np.float32)
    m1, m2 = tss_masks_from_flows(f1, f2)
    x = np.arange(20)
    assert (m1 == (x <= 16)[None]).all()  # x + 3 must land inside image 2
    assert (m2 == (x >= 3)[None]).all()
    m1, _ = tss_masks_from_flows(f1, np.full_like(f2, 30.0))  # |3 + 30| >= 20
    assert not m1.any()


# --- TSS: the kit's folder walk and CSV, on a fake tree -------------------------------------------


def _write_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)


def _fake_tss(tmp_path: Path) -> tuple[Path, Path]:
    data, res = tmp_path / "dataset" / "JODS", tmp_path / "results" / "JODS"
    fg = np.zeros((8, 12), bool)
    fg[2:6, 4:8] = True  # 2x-aligned, so the half-resolution mask upsamples back to it
    for pair, flip in (("car_01_02", 0), ("car_03_04", 1)):
        d = data / pair
        d.mkdir(parents=True)
        zero = np.zeros((8, 12, 2), np.float32)
        write_flo(d / "flow1.flo", zero)
        write_flo(d / "flow2.flo", zero)
        _write_mask(d / "mask1.png", fg)
        _write_mask(d / "mask2.png", fg)
        (d / "pair.txt").write_text(f"Image1,Image2\n{pair}_a.jpg,{pair}_b.jpg\n")
        (d / "flip_gt.txt").write_text(str(flip))
    # pair 1: half-resolution zero flows and masks;
    # pair 2: flows only, off by 1.5 px (masks from flows)
    r = res / "car_01_02"
    r.mkdir(parents=True)
    write_flo(r / "flow1.flo", np.zeros((4, 6, 2), np.float32))
    write_flo(r / "flow2.flo", np.zeros((4, 6, 2), np.float32))
    _write_mask(r / "mask1.png", fg[::2, ::2])
    _write_mask(r / "mask2.png", np.zeros((4, 6), bool))
    r = res / "car_03_04"
    r.mkdir(parents=True)
    write_flo(r / "flow1.flo", np.full((8, 12, 2), (1.5, 0.0), np.float32))
    write_flo(r / "flow2.flo", np.full((8, 12, 2), (-1.5, 0.0), np.float32))
    (res / "no_ground_truth").mkdir()  # skipped, as by the kit
    return res, data


def test_evaluate_tss_results_on_a_fake_tree(tmp_path):
    res, data = _fake_tss(tmp_path)
    rows = evaluate_tss_results(res, data)
    assert [(r["pair"], r["direction"]) for r in rows] == [
        ("car_01_02", "1to2"),
        ("car_01_02", "2to1"),
        ("car_03_04", "1to2"),
        ("car_03_04", "2to1"),
    ]
    assert (rows[0]["src"], rows[0]["ref"]) == ("car_01_02_a.jpg", "car_01_02_b.jpg")
    assert (rows[1]["src"], rows[1]["ref"]) == ("car_01_02_b.jpg", "car_01_02_a.jpg")
    assert [r["flip"] for r in rows] == [0, 0, 1, 1]
    assert rows[0]["seg_iou"] == 1.0 and rows[1]["seg_iou"] == 0.0  # upsampled mask; empty mask
    assert all(rows[i][f"T{t}"] == 1.0 for i in (0, 1) for t in range(1, 51))
    # max side 12: thr_1 = 0.12 px < 1.5 px error; thr_13 = 1.56 px >= 1.5
    assert rows[2]["T1"] == 0.0 and rows[2]["T12"] == 0.0 and rows[2]["T13"] == 1.0
    # consistent flows: foreground where both taps of x +- 1.5 lie inside (10 of 12 columns)
    assert rows[2]["seg_iou"] == rows[3]["seg_iou"] == pytest.approx(16 / 80)


@pytest.mark.parametrize("fill", [np.nan, 1e10])
def test_evaluate_tss_results_refuses_a_flow_without_ground_truth(tmp_path, fill):
    res, data = _fake_tss(tmp_path)
    write_flo(data / "car_03_04" / "flow2.flo", np.full((8, 12, 2), fill, np.float32))
    with pytest.raises(ValueError) as err:
        evaluate_tss_results(res, data)
    assert str(err.value).startswith(
        f"{data / 'car_03_04' / 'flow2.flo'} holds no ground-truth flow: all 96 pixels are unknown"
    )


def test_evaluate_tss_results_refuses_an_empty_ground_truth_mask(tmp_path):
    res, data = _fake_tss(tmp_path)
    _write_mask(data / "car_01_02" / "mask1.png", np.zeros((8, 12), bool))
    with pytest.raises(ValueError, match=r"car_01_02/mask1\.png has no foreground pixel"):
        evaluate_tss_results(res, data)


def test_evaluate_tss_results_ignores_hidden_folders_and_checks_flip(tmp_path):
    res, data = _fake_tss(tmp_path)
    expected = evaluate_tss_results(res, data)
    stray = res / ".ipynb_checkpoints"
    stray.mkdir()
    write_flo(stray / "flow1.flo", np.zeros((8, 12, 2), np.float32))
    assert evaluate_tss_results(res, data) == expected
    (data / "car_01_02" / "flip_gt.txt").write_text("yes")
    with pytest.raises(ValueError, match=r"car_01_02/flip_gt\.txt must hold 0 or 1, got 'yes'"):
        evaluate_tss_results(res, data)


def test_tss_rows_are_strict_json(tmp_path):
    rows = evaluate_tss_results(*_fake_tss(tmp_path))
    assert json.loads(json.dumps(rows, allow_nan=False)) == rows


def test_tss_scores_csv_layout(tmp_path):
    rows = evaluate_tss_results(*_fake_tss(tmp_path))
    lines = tss_scores_csv(rows).splitlines()
    assert lines[0] == "Row,Src,Ref,SegIUR,Flip," + ",".join(f"T{t}" for t in range(1, 51))
    assert [ln.split(",")[0] for ln in lines[1:]] == [
        "car_01_02_1to2",
        "car_01_02_1to2",
        "car_03_04_1to2",
        "car_03_04_1to2",
        "Average",
        "w/o flip",
    ]
    assert lines[1].startswith(
        "car_01_02_1to2,car_01_02_a.jpg,car_01_02_b.jpg,1.000000,0,1.000000,"
    )
    avg, no_flip = lines[-2].split(","), lines[-1].split(",")
    assert avg[1:5] == ["-", "-", "0.350000", "1"]  # (1 + 0 + 0.2 + 0.2) / 4
    assert no_flip[1:5] == ["-", "-", "0.500000", "0"]  # pair 1 only
    assert all(len(ln.split(",")) == 55 for ln in lines)


# --- TSS: the official kit's own scores (the oracle) -------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize("subset", ["FG3DCar", "JODS", "PASCAL"])
def test_tss_matches_the_official_kit_scores(data_root, subset):
    tss = data_root / "TSS"
    results = tss / "EvaluationKit_SampleResults" / subset
    if not (results / "scores.csv").is_file():
        pytest.skip(f"{results / 'scores.csv'} not found")
    with open(results / "scores.csv", newline="") as f:
        kit = [r for r in csv.DictReader(f) if r["Row"] not in ("Average", "w/o flip")]
    rows = evaluate_tss_results(results, tss / "TSS_CVPR2016" / subset)
    assert len(rows) == len(kit) >= 2
    columns = [("seg_iou", "SegIUR")] + [(f"T{t}", f"T{t}") for t in range(1, 51)]
    worst = 0.0
    for ours, theirs in zip(rows, kit):
        # the kit labels both rows of a pair "_1to2"; the second one is 2->1
        assert theirs["Row"] == f"{ours['pair']}_1to2"
        assert (ours["src"], ours["ref"], ours["flip"]) == (
            theirs["Src"],
            theirs["Ref"],
            int(theirs["Flip"]),
        )
        for k_ours, k_kit in columns:
            worst = max(worst, abs(ours[k_ours] - float(theirs[k_kit])))
    assert worst <= 1e-4, f"{subset}: max abs difference {worst:.2e} to the kit's scores.csv"


def test_label_transfer_accuracy_and_part_weighted_iou():
    from corrlib.metrics import label_transfer_accuracy, part_weighted_iou

    gt = torch.zeros(4, 4, dtype=torch.bool)
    gt[:2, :2] = True  # 4 pixels
    pred = torch.zeros(4, 4, dtype=torch.bool)
    pred[:2, 1:3] = True  # 2 overlap, union 6
    assert label_transfer_accuracy(pred, gt) == 12 / 16
    assert part_weighted_iou(pred, gt) == pytest.approx(2 / 6)
    # two parts: weights by the true areas (4 and 2 pixels)
    gt2 = torch.zeros(2, 4, 4, dtype=torch.bool)
    gt2[0, :2, :2] = True
    gt2[1, 3, :2] = True
    pred2 = torch.zeros(2, 4, 4)
    pred2[0, :2, :2] = 0.9  # probabilities, binarised at 0.5
    want = (4 / 6) * 1.0 + (2 / 6) * 0.0
    assert part_weighted_iou(pred2, gt2) == pytest.approx(want)
    assert label_transfer_accuracy(pred2, gt2) == (32 - 2) / 32
    assert math.isnan(part_weighted_iou(pred, torch.zeros(4, 4, dtype=torch.bool)))
    with pytest.raises(ValueError, match="differ in shape"):
        label_transfer_accuracy(pred, gt[:3])
