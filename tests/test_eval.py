"""Tests of corrlib.eval (method registry, keypoint and TSS evaluation, result files)."""

import csv
import json
import os

import pytest
import torch

from corrlib import eval as ev
from corrlib.data import PFWillow
from corrlib.methods import IdentityMethod, base
from corrlib.metrics import get_protocol
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
    # pf-pascal: dx / W of the target image = 10 / 120 = 0.083 -> wrong at 0.05, right at 0.1
    assert res.pck(0.05) == 0.0
    assert res.pck(0.1) == pytest.approx(1.0)


def test_pf_pascal_dataset_uses_the_square_resize_protocol():
    assert ev.DATASETS["pf-pascal"][1] == "pf-pascal"
    proto = get_protocol(ev.DATASETS["pf-pascal"][1])
    assert (proto.resolution, proto.normalizer) == ("square", "image")
    # a vertical offset of 7 px on the 80 x 120 target: 7 / 80 = 0.0875 <= 0.1 but > 0.05;
    # the former max-side rule (7 / 120 = 0.058) is kept as pf-pascal-maxside
    pairs = []
    for i in range(2):
        p = _pair(i)
        p["trg_kps"][:, 1] += 7.0
        pairs.append(p)
    res = ev.evaluate_keypoints("identity", _PairList(pairs), "pf-pascal", progress=False)
    assert (res.pck(0.05), res.pck(0.1)) == (0.0, pytest.approx(1.0))
    # 9 px: 9 / 80 = 0.1125 wrong under pf-pascal, 9 / 120 = 0.075 right under the max side
    for p in pairs:
        p["trg_kps"][:, 1] += 2.0
    res = ev.evaluate_keypoints("identity", _PairList(pairs), "pf-pascal", progress=False)
    old = ev.evaluate_keypoints("identity", _PairList(pairs), "pf-pascal-maxside", progress=False)
    assert (res.pck(0.1), old.pck(0.1)) == (0.0, pytest.approx(1.0))


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
        assert res.pck(0.05) == pytest.approx(1.0)  # 1 px each axis on 80 x 120: 0.015
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
    # this run's own folder, in the kit's layout; the staging folder is gone
    assert res.flows_dir == tmp_path / res.run_id
    assert [p.name for p in tmp_path.iterdir()] == [res.run_id]
    assert (res.flows_dir / "JODS" / "car_01_02" / "flow1.flo").exists()
    scores = (res.flows_dir / "JODS" / "scores.csv").read_text()
    assert scores.startswith("Row,Src,Ref,SegIUR,Flip,T1")
    # FG3DCar's pair is nearly aligned; the PASCAL pair is flipped (flip_gt = 1): even with the
    # source mirrored, identity misses it at T5 (the bikes sit ~38 px apart vertically)
    assert res.per_subset["FG3DCar"]["PCK@0.05"] > 0.9
    assert res.per_subset["PASCAL"]["PCK@0.05"] < 0.05


# ---------------------------------------------------------------- empty benchmarks, bad limits


def test_empty_benchmark_is_an_error_not_a_table():
    with pytest.raises(ValueError, match=r"_PairList: no pair to evaluate \(the dataset has 0"):
        ev.evaluate_keypoints("identity", _PairList([]), progress=False)


@pytest.mark.parametrize("limit", [0, -3, 1.5, True])
def test_limit_must_select_a_pair(limit):
    with pytest.raises(ValueError, match=r"Argument limit must be an int >= 1"):
        ev.evaluate_keypoints("identity", _PairList([_pair(0)]), limit=limit, progress=False)
    with pytest.raises(ValueError, match=r"Argument limit must be an int >= 1"):
        ev.evaluate_tss("identity", "/nonexistent", limit=limit, progress=False)


# ------------------------------------------------------------------ atomic, strict JSON writers


def _result_with_nan():
    res = ev.evaluate_keypoints("identity", _PairList([_pair(i) for i in range(2)]), progress=False)
    res.summary["alphas"]["0.1"]["per_category"]["empty"] = float("nan")
    res.summary["extra"] = [float("inf"), -float("inf"), torch.tensor([1.5, float("nan")])]
    return res


def test_metrics_json_is_strict_json(tmp_path):
    paths = ev.write_keypoint_result(_result_with_nan(), tmp_path, run_id="run-1")

    def refuse(token):
        raise AssertionError(f"bare {token} in metrics.json")

    meta = json.loads(paths["metrics"].read_text(), parse_constant=refuse)
    assert meta["run_id"] == "run-1"
    assert meta["summary"]["alphas"]["0.1"]["per_category"]["empty"] is None
    assert meta["summary"]["extra"] == [None, None, [1.5, None]]
    assert ev.strict_json({"a": (float("nan"), 1)}, indent=None) == '{"a": [null, 1]}'


def test_result_files_are_replaced_atomically(tmp_path):
    res = ev.evaluate_keypoints("identity", _PairList([_pair(i) for i in range(3)]), progress=False)
    paths = ev.write_keypoint_result(res, tmp_path)
    old = paths["predictions"].read_text()
    with open(paths["predictions"]) as reader:  # a reader of the earlier file ...
        small = ev.evaluate_keypoints("identity", _PairList([_pair(9)]), progress=False)
        ev.write_keypoint_result(small, tmp_path)
        assert (
            reader.read() == old
        )  # ... still reads it whole: the file was replaced, not rewritten
    assert len(paths["predictions"].read_text().splitlines()) == 1 + 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json",
        "metrics.md",
        "predictions.csv",
    ]  # no temporary file left

    bad = ev.evaluate_keypoints("identity", _PairList([_pair(1)]), progress=False)
    bad.rows[0]["unknown_column"] = 1  # fails while the csv is built: nothing is touched
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="unknown_column"):
        ev.write_keypoint_result(bad, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# --------------------------------------------------------- TSS: each run scores its own flows


class _ZeroFlow(ev.CorrespondenceMethod):
    """No motion in pixels (unlike identity, which rescales): a different score on TSS."""

    name = "zero"

    def __init__(self, on_first_flow=None):
        self.on_first_flow = on_first_flow

    def flow(self, src_img, trg_img, *, src_key=None, trg_key=None):
        if self.on_first_flow is not None:
            hook, self.on_first_flow = self.on_first_flow, None
            hook()
        return torch.zeros(2, *src_img.shape[-2:])


@pytest.fixture
def tss_two_pairs(data_root, tmp_path):
    """A data root whose TSS/FG3DCar holds two pairs (the shared pair and a copy, 001_005b)."""
    real = data_root / "TSS" / "TSS_CVPR2016" / "FG3DCar" / "001_005"
    sub = tmp_path / "root" / "TSS" / "TSS_CVPR2016" / "FG3DCar"
    sub.mkdir(parents=True)
    for name in ("001_005", "001_005b"):
        os.symlink(real, sub / name)
    return tmp_path / "root"


@pytest.mark.realdata
def test_tss_never_scores_stale_or_concurrent_flows(tss_two_pairs, tmp_path):
    out = tmp_path / "flows"
    kw = dict(subsets=("FG3DCar",), progress=False)
    alone = ev.evaluate_tss(_ZeroFlow(), tss_two_pairs, None, limit=1, **kw)
    assert [r["pair"] for r in alone.rows] == ["001_005", "001_005"]

    # an earlier run left identity flows for both pairs (in this and in the old flat layout)
    first = ev.evaluate_tss("identity", tss_two_pairs, out, **kw)
    assert len(first.rows) == 4
    (out / "FG3DCar").mkdir()
    os.symlink(first.flows_dir / "FG3DCar" / "001_005b", out / "FG3DCar" / "001_005b")

    # and a concurrent run writes into the same folder while this one runs
    inner = {}

    def concurrent():
        inner["res"] = ev.evaluate_tss("identity", tss_two_pairs, out, **kw)

    res = ev.evaluate_tss(_ZeroFlow(concurrent), tss_two_pairs, out, limit=1, **kw)
    assert [r["pair"] for r in res.rows] == ["001_005", "001_005"]  # its own pair only
    assert res.per_subset == alone.per_subset
    assert inner["res"].per_subset == first.per_subset
    assert len({first.run_id, inner["res"].run_id, res.run_id}) == 3
    assert res.flows_dir == out / res.run_id and not any(out.glob(".tmp-*"))
    assert res.csv["FG3DCar"] == (res.flows_dir / "FG3DCar" / "scores.csv").read_text()


@pytest.mark.realdata
def test_tss_failed_run_leaves_no_folder(tss_two_pairs, tmp_path):
    class Broken(_ZeroFlow):
        def flow(self, *a, **k):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ev.evaluate_tss(Broken(), tss_two_pairs, tmp_path / "o", subsets=("FG3DCar",))
    assert list((tmp_path / "o").iterdir()) == []
    with pytest.raises(ValueError, match=r"run_id must be a folder name"):
        ev.evaluate_tss("identity", tss_two_pairs, tmp_path / "o", run_id="../x")
    (tmp_path / "o" / "taken").mkdir()
    with pytest.raises(ValueError, match=r"taken exists already"):
        ev.evaluate_tss("identity", tss_two_pairs, tmp_path / "o", run_id="taken")


def test_run_ids_are_unique_and_sortable():
    ids = [ev.new_run_id() for _ in range(3)]
    assert len(set(ids)) == 3 and ids == sorted(ids)
    assert ids[0].endswith(f"-p{os.getpid()}")


# ------------------------------------------------------------------------- output folders


def test_prepare_out_dir(tmp_path, monkeypatch):
    assert ev.prepare_out_dir(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the write test leaves nothing
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=rf"--out {tmp_path / 'f'} is a file, not a folder"):
        ev.prepare_out_dir(tmp_path / "f")
    with pytest.raises(ValueError, match=rf"lies under {tmp_path / 'f'}, which is a file"):
        ev.prepare_out_dir(tmp_path / "f" / "sub" / "dir", "--out")

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ev.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(ValueError, match=r"out_dir .*ro is not a writable folder.*Permission"):
        ev.prepare_out_dir(tmp_path / "ro", "out_dir")


# ------------------------------------------------------------- method argument validation


@pytest.mark.parametrize("name", ["identity", "zncc", "sift", "backbone-offline"])
def test_untrained_methods_refuse_a_checkpoint(name, tmp_path):
    with pytest.raises(ValueError, match=rf"Method '{name}' takes no checkpoint"):
        ev.get_method(name, checkpoint=tmp_path / "x.pt")


@pytest.mark.parametrize("name", ["zncc", "ucn", "sfnet", "mccnn-fast"])
@pytest.mark.parametrize("max_side", [0, -5])
def test_max_side_checked_before_anything_is_loaded(name, max_side):
    with pytest.raises(ValueError, match=r"Argument max_side must be an int >= 1"):
        ev.get_method(name, max_side=max_side)


def test_ucn_max_side_below_its_stride():
    from corrlib.models.ucn import UCN

    model = UCN(dim=8, trunk_widths=(8, 8, 8))
    with pytest.raises(ValueError, match=rf"max_side must be .* stride {model.stride}, got 1"):
        ev.get_method("ucn", model=model, max_side=1)
