"""Dashboard rows from evaluation results: pair counts, subsets, seeds."""

from __future__ import annotations

import pytest

from corrlib import eval as ev


@pytest.fixture(scope="module")
def willow(data_root):
    from corrlib.data import PFWillow

    return PFWillow(data_root)


def test_keypoint_rows_name_pairs_and_subset(willow):
    res = ev.evaluate_keypoints("identity", willow, "pf-willow", limit=4, progress=False)
    rows = ev.result_rows(
        res, chapter="00_basics", method="identity", preset="smoke", baseline=True
    )
    assert [r["metric"] for r in rows] == ["PCK@0.05", "PCK@0.1", "PCK@0.15"]
    r = rows[1]
    assert r["dataset"] == "PF-WILLOW" and r["n"] == 4 and r["n_full"] == 900
    assert r["value"] == res.pck(0.1) and r["spread"] is None and r["baseline"] is True
    assert r["protocol"].startswith("pf-willow: alpha * kps_box")


def test_seed_rows_average_with_standard_error(willow):
    a = ev.evaluate_keypoints("identity", willow, "pf-willow", limit=3, progress=False)
    b = ev.evaluate_keypoints(
        "daisy", willow, "pf-willow", limit=3, progress=False, method_kwargs={"max_side": 64}
    )
    rows = ev.result_rows([a, b], chapter="x", method="m", preset="smoke", alphas=(0.1,))
    (r,) = rows
    assert r["seeds"] == 2 and r["value"] == pytest.approx((a.pck(0.1) + b.pck(0.1)) / 2)
    assert r["spread"] == pytest.approx(abs(a.pck(0.1) - b.pck(0.1)) / 2)
    c = ev.evaluate_keypoints("identity", willow, "pf-willow", limit=2, progress=False)
    with pytest.raises(ValueError, match="differ"):
        ev.result_rows([a, c], chapter="x", method="m", preset="smoke")


def test_tss_rows_report_both_averages_and_pairs(data_root):
    res = ev.evaluate_tss("identity", data_root, progress=False)
    rows = ev.result_rows(res, chapter="00", method="identity", preset="smoke")
    by = {r["metric"]: r for r in rows}
    assert by["PCK@0.05"]["value"] == res.mean_accuracy
    assert by["PCK@0.05 w/o flip"]["value"] == res.mean_accuracy_without_flip
    assert by["PCK@0.05"]["n"] == 3 and by["PCK@0.05"]["n_full"] == 400
    assert "flip pairs mirrored" in by["PCK@0.05"]["protocol"]
