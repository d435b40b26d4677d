"""TSS flipped pairs (``flip_gt.txt`` = 1): mirror-source handling, the kit's two averages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corrlib import eval as ev
from corrlib.flo import read_flo, write_flo

H, W = 8, 12  # the kit's T5 threshold on these images: 0.05 * 12 = 0.6 px


# --------------------------------------------------------------------- unmirror_source_flow


def test_unmirror_zero_flow_is_the_mirror_map():
    out = ev.unmirror_source_flow(torch.zeros(2, 3, 4))
    assert out.shape == (2, 3, 4) and out.dtype == torch.float32
    assert out[0].tolist() == [[3.0, 1.0, -1.0, -3.0]] * 3  # W - 1 - 2x
    assert out[1].tolist() == [[0.0] * 4] * 3


def test_unmirror_constant_flow():
    flow = torch.stack([torch.full((2, 4), 1.0), torch.full((2, 4), 2.0)])
    out = ev.unmirror_source_flow(flow)
    assert out[0].tolist() == [[4.0, 2.0, 0.0, -2.0]] * 2  # 4 - 2x
    assert out[1].tolist() == [[2.0] * 4] * 2


def test_unmirror_reads_the_mirrored_column():
    flow = torch.tensor([[[10.0, 20.0, 30.0, 40.0]], [[1.0, 2.0, 3.0, float("nan")]]])
    out = ev.unmirror_source_flow(flow)
    # f_x(x) = 3 - 2x + f'_x(3 - x): 3 + 40, 1 + 30, -1 + 20, -3 + 10
    assert out[0].tolist() == [[43.0, 31.0, 19.0, 7.0]]
    # f_y(x) = f'_y(3 - x); the unknown (NaN) column moves to x = 0
    assert out[1, 0, 0].isnan() and out[1, 0, 1:].tolist() == [3.0, 2.0, 1.0]
    # the mapping is its own inverse
    back = ev.unmirror_source_flow(out)
    assert torch.equal(back[0], flow[0]) and back[1, 0, :3].tolist() == [1.0, 2.0, 3.0]


def test_unmirror_integer_flow_and_bad_shape():
    assert ev.unmirror_source_flow(torch.zeros(2, 1, 3, dtype=torch.int64))[0].tolist() == [
        [2.0, 0.0, -2.0]
    ]
    with pytest.raises(ValueError, match=r"Argument flow must have shape"):
        ev.unmirror_source_flow(torch.zeros(3, 2, 2))
    with pytest.raises(TypeError, match=r"Argument flow must be a torch.Tensor"):
        ev.unmirror_source_flow(np.zeros((2, 2, 2)))


# ------------------------------------------------------- a synthetic TSS tree with a flip pair


def _mirror_map() -> np.ndarray:
    """``(H, W, 2)`` ground truth of a pair whose image2 is image1 mirrored: x -> W - 1 - x."""
    flow = np.zeros((H, W, 2), np.float32)
    flow[..., 0] = W - 1 - 2 * np.arange(W, dtype=np.float32)
    return flow


def _write_pair(d: Path, img1: np.ndarray, img2: np.ndarray, gt1, gt2, flip: int) -> None:
    d.mkdir(parents=True)
    Image.fromarray(img1).save(d / "image1.png")
    Image.fromarray(img2).save(d / "image2.png")
    for k, gt in ((1, gt1), (2, gt2)):
        gt = gt.copy()
        gt[0, :3] = 1e10  # a few unknown ground-truth pixels, ignored by the kit
        write_flo(d / f"flow{k}.flo", gt)
        mask = np.zeros((H, W), np.uint8)
        mask[2:6, 3:9] = 255
        Image.fromarray(mask).save(d / f"mask{k}.png")
    (d / "flip_gt.txt").write_text(f"{flip}\n")
    (d / "pair.txt").write_text(f"Image1,Image2\n{d.name}_a.jpg,{d.name}_b.jpg\n")


@pytest.fixture
def flip_root(tmp_path) -> Path:
    """JODS/car_flip and PASCAL/bike_flip: image2 = image1 mirrored, mirror-map ground truth
    (flip 1); PASCAL/bike_plain (flip 0): identical images, flow1 zero, flow2 3 px right."""
    base = tmp_path / "data" / "TSS" / "TSS_CVPR2016"
    rng = np.random.default_rng(0)
    for where in ("JODS/car_flip", "PASCAL/bike_flip"):
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        mirror = np.ascontiguousarray(img[:, ::-1])
        _write_pair(base / where, img, mirror, _mirror_map(), _mirror_map(), 1)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    shifted = np.zeros((H, W, 2), np.float32)
    shifted[..., 0] = 3.0
    _write_pair(base / "PASCAL/bike_plain", img, img, np.zeros((H, W, 2), np.float32), shifted, 0)
    return tmp_path / "data"


def _t5(res) -> dict:
    return {(r["pair"], r["direction"]): r["T5"] for r in res.rows}


def _run(root, out, flip, method="identity"):
    return ev.evaluate_tss(method, root, out, subsets=("JODS", "PASCAL"), progress=False, flip=flip)


def test_mirror_source_scores_a_mirrored_pair_perfectly(flip_root, tmp_path):
    res = _run(flip_root, tmp_path / "out", "mirror-source")
    assert res.flip == "mirror-source"
    # identity on the mirrored source is the zero flow: carried back it is the exact mirror map
    assert _t5(res) == {
        ("car_flip", "1to2"): 1.0,
        ("car_flip", "2to1"): 1.0,
        ("bike_flip", "1to2"): 1.0,
        ("bike_flip", "2to1"): 1.0,
        ("bike_plain", "1to2"): 1.0,  # zero flow, zero ground truth
        ("bike_plain", "2to1"): 0.0,  # 3 px off > 0.6 px
    }
    written = read_flo(res.flows_dir / "PASCAL" / "bike_flip" / "flow1.flo")
    assert np.array_equal(written, _mirror_map())  # on the original source grid

    # the kit's two averages and the counts behind them
    assert res.mean_accuracy == pytest.approx(5 / 6)
    assert res.mean_accuracy_without_flip == 0.5
    assert (res.n_flow_fields, res.n_pairs, res.n_flipped_pairs) == (6, 3, 2)
    pascal = res.per_subset["PASCAL"]
    assert pascal["PCK@0.05"] == 0.75 and pascal["PCK@0.05 w/o flip"] == 0.5
    assert (pascal["rows"], pascal["pairs"], pascal["flipped pairs"]) == (4, 2, 1)
    jods = res.per_subset["JODS"]
    assert jods["PCK@0.05"] == 1.0 and jods["PCK@0.05 w/o flip"] is None
    assert (jods["rows"], jods["pairs"], jods["flipped pairs"]) == (2, 1, 1)
    assert res.summary() == (
        "TSS PCK@0.05 0.833 (Average over 6 flow fields of 3 pairs; 2 flipped pairs, source "
        "mirrored) · w/o flip 0.500 (2 flow fields of 1 pair)"
    )
    # the kit's scores.csv ends with its two averages (T5 is column 10: Row,Src,Ref,SegIUR,Flip)
    avg, no_flip = (ln.split(",") for ln in res.csv["PASCAL"].splitlines()[-2:])
    assert (avg[0], avg[9]) == ("Average", "0.750000")
    assert (no_flip[0], no_flip[9]) == ("w/o flip", "0.500000")


def test_without_handling_a_mirrored_pair_scores_zero(flip_root, tmp_path):
    res = _run(flip_root, tmp_path / "out", "none")
    assert res.flip == "none"
    # zero flow against x -> W - 1 - x: every error is an odd number of pixels, >= 1 > 0.6
    t5 = _t5(res)
    assert [t5[(p, d)] for p in ("car_flip", "bike_flip") for d in ("1to2", "2to1")] == [0.0] * 4
    assert res.mean_accuracy == pytest.approx(1 / 6)
    assert res.mean_accuracy_without_flip == 0.5  # flip-0 rows are matched as before
    assert res.per_subset["PASCAL"]["PCK@0.05"] == 0.25
    assert res.summary() == (
        "TSS PCK@0.05 0.167 (Average over 6 flow fields of 3 pairs; 2 flipped pairs, flip pairs "
        "not handled (kit's raw scores)) · w/o flip 0.500 (2 flow fields of 1 pair)"
    )


class _Recorder(ev.CorrespondenceMethod):
    """Records what each ``flow`` call receives; predicts no motion."""

    name = "recorder"

    def __init__(self):
        self.calls = []

    def flow(self, src_img, trg_img, *, src_key=None, trg_key=None):
        self.calls.append((src_key, trg_key, src_img.clone()))
        return torch.zeros(2, *src_img.shape[-2:])


def test_mirrored_source_gets_its_own_cache_key(flip_root, tmp_path):
    rec = _Recorder()
    _run(flip_root, tmp_path / "a", "mirror-source", rec)
    assert [(s, t) for s, t, _ in rec.calls] == [
        ("JODS/car_flip/image1#mirrored", "JODS/car_flip/image2"),
        ("JODS/car_flip/image2#mirrored", "JODS/car_flip/image1"),
        ("PASCAL/bike_flip/image1#mirrored", "PASCAL/bike_flip/image2"),
        ("PASCAL/bike_flip/image2#mirrored", "PASCAL/bike_flip/image1"),
        ("PASCAL/bike_plain/image1", "PASCAL/bike_plain/image2"),
        ("PASCAL/bike_plain/image2", "PASCAL/bike_plain/image1"),
    ]
    d = flip_root / "TSS" / "TSS_CVPR2016" / "PASCAL"
    img1 = torch.from_numpy(np.array(Image.open(d / "bike_flip" / "image1.png"))).permute(2, 0, 1)
    assert torch.equal(rec.calls[2][2], img1.flip(-1))  # the source, mirrored
    plain = torch.from_numpy(np.array(Image.open(d / "bike_plain" / "image1.png")))
    assert torch.equal(rec.calls[4][2], plain.permute(2, 0, 1))  # flip 0: as it is

    rec = _Recorder()
    _run(flip_root, tmp_path / "b", "none", rec)
    assert not any("#" in s for s, _, _ in rec.calls)
    assert torch.equal(rec.calls[2][2], img1)


def test_invalid_flip_names_the_choices():
    with pytest.raises(ValueError) as err:
        ev.evaluate_tss("identity", "/nonexistent", progress=False, flip="mirror")
    assert str(err.value) == (
        "Unknown value 'mirror' for argument flip. Valid values are {mirror-source, none}."
    )


def test_summary_without_flip_zero_rows_and_without_flipped_pairs():
    def row(pair, t5, flip):
        return {"pair": pair, "subset": "PASCAL", "T5": t5, "flip": flip, "seg_iou": 0.0}

    res = ev.TSSResult("m", [row("a", 0.5, 1), row("a", 0.25, 1)], {}, 0.0, flip="none")
    assert res.mean_accuracy_without_flip is None and res.n_flipped_pairs == 1
    assert res.summary() == (
        "TSS PCK@0.05 0.375 (Average over 2 flow fields of 1 pair; 1 flipped pair, flip pairs not "
        "handled (kit's raw scores)) · w/o flip n/a (no pair without flip)"
    )
    res = ev.TSSResult("m", [row("a", 0.5, 0), row("a", 0.25, 0)], {}, 0.0)
    assert res.summary() == (
        "TSS PCK@0.05 0.375 (Average over 2 flow fields of 1 pair; no flipped pair) · w/o flip "
        "0.375 (2 flow fields of 1 pair)"
    )


# ------------------------------------------------------------------------------- the real data


@pytest.mark.realdata
def test_real_flipped_pair_is_matched_across_the_mirror(data_root, tmp_path):
    """identity on the shared pairs. The PASCAL bike pair is flipped; mirrored, the two bikes
    still sit about 37-39 px apart vertically (median endpoint error ~38 px), over the 25 px T5
    threshold: T5 stays 0 either way, but at T15 (75 px) mirror-source matches every pixel and
    the raw identity under a fifth."""
    kw = dict(progress=False)
    raw = ev.evaluate_tss("identity", data_root, tmp_path / "raw", flip="none", **kw)
    mir = ev.evaluate_tss("identity", data_root, tmp_path / "mir", **kw)
    assert (mir.n_pairs, mir.n_flipped_pairs, mir.n_flow_fields) == (3, 1, 6)
    for a, b in zip(raw.rows, mir.rows):
        assert (a["subset"], a["pair"], a["direction"]) == (b["subset"], b["pair"], b["direction"])
        if a["flip"] == 0:  # flip-0 pairs are matched exactly as before
            assert a == b
        else:
            assert a["subset"] == "PASCAL"
            assert a["T15"] < 0.2 and b["T15"] == 1.0
            assert a["T10"] < 0.1 and b["T10"] > 0.8
    assert mir.mean_accuracy_without_flip == raw.mean_accuracy_without_flip
    assert mir.per_subset["PASCAL"]["PCK@0.05 w/o flip"] is None
    assert mir.per_subset["FG3DCar"]["PCK@0.05"] == mir.per_subset["FG3DCar"]["PCK@0.05 w/o flip"]
