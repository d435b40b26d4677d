"""PF-WILLOW: fake data in the real layout (tmp_path), then the shared real subset."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from corrlib.data import DATA_ENV, DatasetNotFoundError, PFWillow, read_image, read_pfwillow_kps

KEYS = {
    "src_img", "trg_img", "src_kps", "trg_kps", "src_bbox", "trg_bbox", "src_size", "trg_size",
    "category", "src_name", "trg_name", "pair_index", "flip",
}  # fmt: skip

# sub-class -> image name -> (H, W); keypoints are generated from the index
IMAGES = {"car(G)": {"Cars_001a": (12, 16), "Cars_002b": (10, 14)}, "duck(S)": {"duck_01": (9, 11)}}


def _pts(k: int) -> np.ndarray:
    """MATLAB 1-based pts_coord (2, 10) of the k-th image: x = 1 + i + k, y = 2 + i / 2."""
    i = np.arange(10, dtype=np.float64)
    return np.stack([1 + i * 0.5 + k, 2 + i * 0.5])


def make_fake_pfwillow(root: Path, header: bool = True) -> Path:
    base = root / "PF-WILLOW"
    rows, k = [], 0
    for sub, images in IMAGES.items():
        d = base / "PF-dataset" / sub
        d.mkdir(parents=True)
        pts = {}
        for name, (h, w) in images.items():
            arr = np.full((h, w, 3), 10 * k, dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{name}.png")
            pts[name] = _pts(k)
            scipy.io.savemat(d / f"{name}.mat", {"pts_coord": pts[name]})
            k += 1
        for a in images:
            for b in images:
                if a != b:
                    vals = [*pts[a][0], *pts[a][1], *pts[b][0], *pts[b][1]]
                    rows.append(
                        [f"PF-dataset/{sub}/{a}.png", f"PF-dataset/{sub}/{b}.png"]
                        + [f"{v:.6f}" for v in vals]
                    )
    with open(base / "test_pairs_pf.csv", "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(
                ["imageA", "imageB"]
                + [f"{c}{i}" for c in ("XA", "YA", "XB", "YB") for i in range(1, 11)]
            )
        w.writerows(rows)
    return root


@pytest.fixture
def fake_root(tmp_path) -> Path:
    return make_fake_pfwillow(tmp_path)


def test_items(fake_root):
    ds = PFWillow(fake_root)
    assert len(ds) == 2 and ds.categories == ["car(G)"]
    s = ds[0]
    assert set(s) == KEYS
    assert s["src_img"].dtype == torch.uint8 and s["src_img"].shape == (3, 12, 16)
    assert s["trg_img"].shape == (3, 10, 14)
    assert s["src_kps"].dtype == torch.float32 and s["src_kps"].shape == (10, 2)
    assert s["src_size"] == (12, 16) and s["trg_size"] == (10, 14)
    assert s["src_name"] == "PF-dataset/car(G)/Cars_001a.png"
    assert s["trg_name"] == "PF-dataset/car(G)/Cars_002b.png"
    assert s["category"] == "car(G)" and s["pair_index"] == 0 and s["flip"] is False
    assert ds[-1]["pair_index"] == 1
    with pytest.raises(IndexError):
        ds[2]


def test_one_based_to_zero_based_known_value(fake_root):
    s = PFWillow(fake_root)[0]
    # image 0: pts_coord x = 1 + 0.5 i, y = 2 + 0.5 i (MATLAB) -> 0-based x = 0.5 i, y = 1 + 0.5 i
    assert s["src_kps"][0].tolist() == [0.0, 1.0]
    assert s["src_kps"][9].tolist() == pytest.approx([4.5, 5.5])
    assert s["trg_kps"][0].tolist() == [1.0, 1.0]  # image 1: x shifted by one


def test_bbox_is_keypoint_box(fake_root):
    s = PFWillow(fake_root)[0]
    assert torch.allclose(s["src_bbox"], torch.tensor([0.0, 1.0, 4.5, 5.5]))
    assert s["src_bbox"].dtype == torch.float32 and s["trg_bbox"].shape == (4,)


def test_csv_matches_mat(fake_root):
    ds = PFWillow(fake_root)
    for p in ds.pairs:
        assert torch.allclose(p.src_kps, ds.read_image_kps(p.src_name), atol=1e-5)
        assert torch.allclose(p.trg_kps, ds.read_image_kps(p.trg_name), atol=1e-5)


def test_csv_without_header(tmp_path):
    ds = PFWillow(make_fake_pfwillow(tmp_path, header=False))
    assert len(ds) == 2 and ds.pairs[0].src_kps[0].tolist() == [0.0, 1.0]


def test_transform_applied(fake_root):
    ds = PFWillow(fake_root, transform=lambda s: {**s, "src_img": s["src_img"].float() / 255})
    assert ds[0]["src_img"].dtype == torch.float32


def test_root_from_env(fake_root, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(fake_root))
    assert len(PFWillow()) == 2


def test_bad_split(fake_root):
    with pytest.raises(ValueError, match="Unknown value 'train' for argument split"):
        PFWillow(fake_root, "train")


def test_missing_folder_names_folder_and_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        PFWillow(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "PF-WILLOW") in msg and "download=True" in msg and "PF-dataset.zip" in msg
    assert "test_pairs_pf.csv" in msg  # the drawn tree


def test_missing_image_names_file(fake_root):
    (fake_root / "PF-WILLOW/PF-dataset/car(G)/Cars_002b.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"Cars_002b\.png"):
        PFWillow(fake_root)[0]


def test_bad_row_names_file_and_line(fake_root):
    path = fake_root / "PF-WILLOW/test_pairs_pf.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0]  # drop the last YB value
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"test_pairs_pf\.csv, line 3") as err:
        PFWillow(fake_root)
    assert "2 + 4 N columns" in str(err.value)


def test_read_pfwillow_kps_bad_file(tmp_path):
    scipy.io.savemat(tmp_path / "x.mat", {"other": np.zeros((2, 10))})
    with pytest.raises(ValueError, match="pts_coord"):
        read_pfwillow_kps(tmp_path / "x.mat")


@pytest.mark.realdata
def test_real_pfwillow(data_root):
    ds = PFWillow(data_root)
    assert len(ds) == 450 and len(ds.categories) == 5
    first = ds.pairs[0]
    assert first.src_name == "PF-dataset/car(G)/Cars_006a.png"
    assert first.trg_name == "PF-dataset/car(G)/Cars_007a.png"
    sizes, mat_kps = {}, {}
    for p in ds.pairs:
        for name, kps in ((p.src_name, p.src_kps), (p.trg_name, p.trg_kps)):
            if name not in sizes:
                sizes[name] = read_image(ds.folder / name).shape[1:]
                mat_kps[name] = ds.read_image_kps(name)
            h, w = sizes[name]
            assert kps.shape == (10, 2)
            assert torch.allclose(kps, mat_kps[name], atol=1e-5)  # CSV == per-image .mat
            assert (
                (kps >= -0.5).all()
                and (kps[:, 0] <= w - 0.5).all()
                and (kps[:, 1] <= h - 0.5).all()
            )
    s = ds[0]
    assert s["src_size"] == tuple(sizes[first.src_name]) and s["category"] == "car(G)"
