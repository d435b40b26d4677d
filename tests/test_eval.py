"""Tests of corrlib.eval (method registry, keypoint and TSS evaluation, result files)."""

import csv
import json

import pytest
import torch

from corrlib import eval as ev
from corrlib.data import PFWillow
from corrlib.methods import IdentityMethod, base
from corrlib.models import handcrafted


class _PairList:
    """A minimal keypoint dataset in corrlib's item layout."""

    def __init__(self, pairs):
        self.items = pairs

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _pair(i, src_size=(40, 60), trg_size=(80, 120), n=5, category="cat", offset=0.0):
    g = torch.Generator().manual_seed(i)
    src_kps = torch.rand(n, 2, generator=g) * torch.tensor([src_size[1] - 1.0, src_size[0] - 1.0])
    scale = torch.tensor([trg_size[1] / src_size[1], trg_size[0] / src_size[0]])
    trg_kps = (src_kps + 0.5) * scale - 0.5
    trg_kps[:, 0] += offset
    return {
        "src_img": torch.zeros(3, *src_size, dtype=torch.uint8),
        "trg_img": torch.zeros(3, *trg_size, dtype=torch.uint8),
        "src_kps": src_kps,
        "trg_kps": trg_kps,
        "src_name": f"a{i}.png",
        "trg_name": f"b{i}.png",
        "src_size": src_size,
        "trg_size": trg_size,
        "src_bbox": torch.tensor([0.0, 0.0, src_size[1] - 1.0, src_size[0] - 1.0]),
        "trg_bbox": torch.tensor([0.0, 0.0, trg_size[1] - 1.0, trg_size[0] - 1.0]),
        "category": category,
        "pair_index": i,
        "flip": False,
    }


def test_identity_is_exact_on_rescaled_pairs():
    ds = _PairList([_pair(i) for i in range(4)])
    res = ev.evaluate_keypoints("identity", ds, "pf-willow", progress=False)
    assert res.pck(0.05) == pytest.approx(1.0)
    assert len(res.rows) == 20
    assert res.rows[0]["pred_x"] == pytest.approx(res.rows[0]["gt_x"], abs=1e-3)


def test_identity_misses_by_known_offset():
    # an offset of 10 px in x: outside 0.05 * L for every pair (L = kps box side, here < 120)
    ds = _PairList([_pair(i, offset=10.0) for i in range(3)])
    res = ev.evaluate_keypoints("identity", ds, "pf-pascal", progress=False)
    # pf-pascal: L = max(H, W) of the target image = 120 -> thresholds 6, 12, 18 px
    assert res.pck(0.05) == 0.0
    assert res.pck(0.1) == pytest.approx(1.0)


def test_limit_and_category_breakdown():
    ds = _PairList([_pair(i, category="x" if i % 2 else "y") for i in range(6)])
    res = ev.evaluate_keypoints("identity", ds, "pf-willow", limit=3, progress=False)
    assert {r["pair_index"] for r in res.rows} == {0, 1, 2}
    assert set(res.summary["alphas"]["0.1"]["per_category"]) == {"x", "y"}
    assert res.pck(0.1, "x") == pytest.approx(1.0)


def test_keypoint_count_mismatch_is_reported():
    p = _pair(0)
    p["trg_kps"] = p["trg_kps"][:3]
    with pytest.raises(ValueError, match=r"5 source keypoints but 3 target keypoints"):
        ev.evaluate_keypoints("identity", _PairList([p]), progress=False)


def test_unknown_method_lists_registered_ones():
    with pytest.raises(ValueError, match=r"Unknown value 'siftflow' for argument method.*daisy"):
        ev.get_method("siftflow")
    assert {"identity", "zncc", "census", "hog", "daisy", "sift"} <= set(ev.available_methods())


def test_register_method_makes_it_evaluable():
    class Shift(ev.CorrespondenceMethod):
        name = "shift"

        def match(self, src_img, trg_img, src_kps, *, src_key=None, trg_key=None):
            return IdentityMethod().match(src_img, trg_img, src_kps) + 1.0

    ev.register_method("test-shift", lambda **kw: Shift())
    try:
        res = ev.evaluate_keypoints(
            "test-shift", _PairList([_pair(0)]), "pf-pascal", progress=False
        )
        assert res.pck(0.05) == pytest.approx(1.0)  # sqrt(2) px < 6 px
    finally:
        base._REGISTRY.pop("test-shift")


def test_handcrafted_method_caches_descriptors(monkeypatch):
    m = ev.get_method("zncc")
    calls = []
    real = handcrafted.describe

    def counting(img, name, **kw):
        calls.append(name)
        return real(img, name, **kw)

    monkeypatch.setattr(handcrafted, "describe", counting)
    img = torch.rand(3, 32, 32)
    kps = torch.tensor([[10.0, 12.0]])
    for _ in range(3):
        pred = m.match(img, img, kps, src_key="a", trg_key="a")
    assert len(calls) == 1
    assert pred[0].tolist() == pytest.approx(
        [10.0, 12.0], abs=0.1
    )  # sub-pixel refinement of a self-match


def test_handcrafted_method_rejects_grey_image():
    m = ev.get_method("sift")
    with pytest.raises(ValueError, match=r"src_img must have 3 channels"):
        m.match(torch.rand(1, 32, 32), torch.rand(3, 32, 32), torch.zeros(1, 2))


def test_identity_flow_matches_identity_keypoints():
    src, trg = torch.zeros(3, 20, 30), torch.zeros(3, 40, 45)
    flow = IdentityMethod().flow(src, trg)
    assert flow.shape == (2, 20, 30)
    p = torch.tensor([[7.0, 11.0]])
    moved = p + flow[:, 11, 7]
    assert moved[0].tolist() == pytest.approx(IdentityMethod().match(src, trg, p)[0].tolist())


def test_write_keypoint_result_files(tmp_path):
    res = ev.evaluate_keypoints("identity", _PairList([_pair(i) for i in range(2)]), progress=False)
    paths = ev.write_keypoint_result(res, tmp_path / "out")
    with open(paths["predictions"]) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:6] == [
        "pair_index",
        "source_image",
        "target_image",
        "keypoint_index",
        "pred_x",
        "pred_y",
    ]
    assert len(rows) == 10
    meta = json.loads(paths["metrics"].read_text())
    assert meta["protocol"] == "pf-willow" and meta["pairs"] == 2
    assert "PCK@0.1" in paths["table"].read_text()


@pytest.mark.realdata
def test_pfwillow_identity_known_value(data_root):
    """Regression value measured on the shared 5-sub-class subset (450 pairs)."""
    res = ev.evaluate_keypoints("identity", PFWillow(data_root), "pf-willow", progress=False)
    assert len({r["pair_index"] for r in res.rows}) == 450
    assert res.pck(0.1) == pytest.approx(0.185, abs=0.002)


@pytest.mark.realdata
def test_pfwillow_daisy_known_value_below_identity(data_root):
    """Chapter 00's claim: unregularised DAISY matching stays below the identity floor at 0.1."""
    res = ev.evaluate_keypoints("daisy", PFWillow(data_root), "pf-willow", progress=False)
    assert res.pck(0.1) == pytest.approx(0.128, abs=0.003)
    assert res.pck(0.1) < 0.185 - 0.03


@pytest.mark.realdata
def test_tss_identity_and_files(data_root, tmp_path):
    res = ev.evaluate_tss("identity", data_root, tmp_path, progress=False)
    assert set(res.per_subset) == {"FG3DCar", "JODS", "PASCAL"}
    assert len(res.rows) == 6
    assert (tmp_path / "JODS" / "car_01_02" / "flow1.flo").exists()
    assert (tmp_path / "JODS" / "scores.csv").read_text().startswith("Row,Src,Ref,SegIUR,Flip,T1")
    # FG3DCar's pair is nearly aligned; the PASCAL pair is mirrored (flip_gt = 1)
    assert res.per_subset["FG3DCar"]["PCK@0.05"] > 0.9
    assert res.per_subset["PASCAL"]["PCK@0.05"] < 0.05
