"""TSS: fake data in the real layout (tmp_path), then the shared three pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corrlib.data import TSS, DatasetNotFoundError, TSSPair, read_tss_flow, write_flo

# subset -> pair -> (size of image1, size of image2, flip)
PAIRS = {
    "FG3DCar": {"001_005": ((6, 8), (6, 8), 0), "002_003": ((4, 4), (4, 5), 0)},
    "JODS": {"car_01_02": ((5, 7), (6, 7), 0)},
    "PASCAL": {"bike_01_03": ((5, 6), (5, 6), 1)},
}


def make_fake_tss(root: Path) -> Path:
    base = root / "TSS" / "TSS_CVPR2016"
    for subset, pairs in PAIRS.items():
        for name, (s1, s2, flip) in pairs.items():
            d = base / subset / name
            d.mkdir(parents=True)
            for k, (h, w) in ((1, s1), (2, s2)):
                Image.fromarray(np.full((h, w, 3), 40 * k, np.uint8)).save(d / f"image{k}.png")
                flow = np.full((h, w, 2), float(k), np.float32)
                flow[0, 0] = (1.5, -2.0)
                flow[1, 1] = 1e10  # unknown
                write_flo(d / f"flow{k}.flo", flow)
                mask = np.zeros((h, w), np.uint8)
                mask[1:, 1:] = 1
                if subset == "JODS":  # palette masks holding indices 0/1, as in the real JODS
                    Image.fromarray(mask, mode="P").save(d / f"mask{k}.png")
                else:
                    Image.fromarray(mask * 255).save(d / f"mask{k}.png")
            (d / "flip_gt.txt").write_text(str(flip))
            (d / "pair.txt").write_text("Image1,Image2\na.jpg,b.jpg\n")
    return root


@pytest.fixture
def fake_root(tmp_path) -> Path:
    return make_fake_tss(tmp_path)


def test_len_directions_and_keys(fake_root):
    ds = TSS(fake_root)
    assert len(ds) == 8 and ds.categories == ["FG3DCar", "JODS", "PASCAL"]
    assert ds.pairs[0] == TSSPair("FG3DCar", "001_005", False)
    items = [ds[i] for i in range(len(ds))]
    assert [(s["pair"], s["direction"]) for s in items[:4]] == [
        ("001_005", "1to2"), ("001_005", "2to1"), ("002_003", "1to2"), ("002_003", "2to1"),
    ]  # fmt: skip
    assert [s["pair_index"] for s in items] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert set(items[0]) == {
        "src_img", "trg_img", "flow", "flow_valid", "src_mask", "trg_mask", "flip", "subset",
        "pair", "direction", "src_size", "trg_size", "pair_index", "category",
    }  # fmt: skip
    assert items[6]["flip"] is True and items[0]["flip"] is False
    assert items[4]["category"] == items[4]["subset"] == "JODS"


def test_flow_on_source_grid_with_nan_unknowns(fake_root):
    ds = TSS(fake_root, subsets=("JODS",))
    fwd, bwd = ds[0], ds[1]
    assert fwd["src_size"] == (5, 7) and fwd["trg_size"] == (6, 7)
    assert fwd["flow"].shape == (2, 5, 7) and fwd["flow"].dtype == torch.float32
    assert bwd["flow"].shape == (2, 6, 7) and bwd["src_img"].shape == (3, 6, 7)
    assert fwd["flow"][:, 0, 0].tolist() == [1.5, -2.0]
    assert fwd["flow"][:, 1, 1].isnan().all() and not fwd["flow_valid"][1, 1]
    assert fwd["flow_valid"].sum() == 5 * 7 - 1 and fwd["flow_valid"].dtype == torch.bool
    assert fwd["flow"][0, 2, 2] == 1.0 and bwd["flow"][0, 2, 2] == 2.0  # flow1 vs flow2
    assert torch.equal(fwd["trg_img"], bwd["src_img"])


def test_masks_palette_and_grey(fake_root):
    for subset in ("JODS", "FG3DCar"):
        s = TSS(fake_root, subsets=subset)[0]
        assert s["src_mask"].dtype == torch.bool and s["src_mask"].shape == s["src_size"]
        assert not s["src_mask"][0, 0] and s["src_mask"][1, 1]
        assert s["trg_mask"].shape == s["trg_size"]


def test_transform(fake_root):
    ds = TSS(fake_root, subsets=["PASCAL"], transform=lambda s: s["direction"])
    assert [ds[0], ds[1]] == ["1to2", "2to1"]


def test_bad_subset_and_split(fake_root):
    with pytest.raises(ValueError, match="Unknown value 'CUB' for argument subsets"):
        TSS(fake_root, subsets=("CUB",))
    with pytest.raises(ValueError, match="argument split"):
        TSS(fake_root, "train")


def test_missing_folder_and_file(fake_root, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DatasetNotFoundError) as err:
        TSS(empty)
    assert str(empty / "TSS" / "TSS_CVPR2016") in str(err.value) and "TSS_CVPR2016.zip" in str(
        err.value
    )
    (fake_root / "TSS/TSS_CVPR2016/PASCAL/bike_01_03/flow2.flo").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"bike_01_03/flow2\.flo"):
        TSS(fake_root, subsets="PASCAL")[0]


def test_flow_size_mismatch(fake_root):
    write_flo(
        fake_root / "TSS/TSS_CVPR2016/PASCAL/bike_01_03/flow1.flo", np.zeros((3, 3, 2), np.float32)
    )
    with pytest.raises(ValueError, match=r"flow1\.flo is 3x3"):
        TSS(fake_root, subsets="PASCAL")[0]


def test_bad_flip_file(fake_root):
    (fake_root / "TSS/TSS_CVPR2016/PASCAL/bike_01_03/flip_gt.txt").write_text("yes")
    with pytest.raises(ValueError, match="must hold 0 or 1"):
        TSS(fake_root, subsets="PASCAL")


def test_read_tss_flow(tmp_path):
    flow = np.zeros((2, 3, 2), np.float32)
    flow[0, 1] = (1e10, 1e10)
    flow[1, 2] = (np.inf, 0.0)
    write_flo(tmp_path / "f.flo", flow)
    out, valid = read_tss_flow(tmp_path / "f.flo")
    assert out.shape == (2, 2, 3)
    assert valid.tolist() == [[True, False, True], [True, True, False]]
    assert out[:, ~valid].isnan().all() and (out[:, valid] == 0).all()


@pytest.mark.parametrize("fill", [np.nan, 1e10, np.inf])
def test_flow_without_any_ground_truth_is_an_error(fake_root, fill):
    path = fake_root / "TSS/TSS_CVPR2016/JODS/car_01_02/flow2.flo"
    write_flo(path, np.full((6, 7, 2), fill, np.float32))
    with pytest.raises(ValueError) as err:
        read_tss_flow(path)
    msg = str(err.value)
    assert msg.startswith(f"{path} holds no ground-truth flow: all 42 pixels are unknown")
    assert "divide by zero" in msg
    ds = TSS(fake_root, subsets="JODS")
    assert ds[0]["flow_valid"].any()  # the other direction is fine
    with pytest.raises(ValueError, match=r"car_01_02/flow2\.flo holds no ground-truth flow"):
        ds[1]


def test_hidden_folders_are_not_pairs(fake_root):
    stray = fake_root / "TSS/TSS_CVPR2016/FG3DCar/.ipynb_checkpoints"
    stray.mkdir()
    (stray / "notes.txt").write_text("jupyter clutter")
    (fake_root / "TSS/TSS_CVPR2016/PASCAL/.hidden").mkdir()
    ds = TSS(fake_root)
    assert [p.name for p in ds.pairs] == ["001_005", "002_003", "car_01_02", "bike_01_03"]
    assert len(ds) == 8


@pytest.mark.realdata
def test_real_tss(data_root):
    ds = TSS(data_root)
    assert len(ds) == 6
    assert [(p.subset, p.name, p.flip) for p in ds.pairs] == [
        ("FG3DCar", "001_005", False), ("JODS", "car_01_02", False), ("PASCAL", "bike_01_03", True),
    ]  # fmt: skip
    for i in range(len(ds)):
        s = ds[i]
        h, w = s["src_size"]
        assert s["src_img"].shape == (3, h, w) and s["trg_img"].shape == (3, *s["trg_size"])
        assert s["flow"].shape == (2, h, w) and s["flow_valid"].shape == (h, w)
        assert s["src_mask"].shape == (h, w) and s["trg_mask"].shape == s["trg_size"]
        valid = s["flow_valid"]
        assert 0.2 < valid.float().mean() < 0.8
        assert not (valid & ~s["src_mask"]).any()  # ground truth only on the foreground
        assert s["flip"] == (s["subset"] == "PASCAL")
