"""PF-PASCAL: fake data in the real layout (tmp_path), then the shared pair lists (no images)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from corrlib.data import (
    PFPASCAL_CATEGORIES,
    DatasetNotFoundError,
    PFPascal,
    pair_overlap,
    read_image,
    read_pfpascal_annotation,
)

NAN = float("nan")
IMG = "PF-dataset-PASCAL/JPEGImages/{}.jpg"
# image -> (class, (H, W), MATLAB 1-based kps (K = 4 slots, NaN = invisible), 1-based bbox)
ANNOTATIONS = {
    "2008_000001": ("aeroplane", (6, 8), [[3, 2], [NAN, NAN], [5, 4], [7, 5]], [2, 1, 5, 5]),
    "2008_000002": ("aeroplane", (7, 10), [[4, 3], [6, 6], [NAN, NAN], [9, 7]], [1, 1, 10, 7]),
    "2009_000003": ("car", (5, 9), [[1, 1], [2, 2], [3, 3]], [1, 1, 9, 5]),
    "2009_000004": ("car", (6, 9), [[4, 1], [NAN, NAN], [6, 3]], [2, 1, 8, 6]),
}


def make_fake_pfpascal(root: Path) -> Path:
    base = root / "PF-PASCAL"
    (base / "image_pairs").mkdir(parents=True)
    (base / "PF-dataset-PASCAL" / "JPEGImages").mkdir(parents=True)
    for name, (cls, (h, w), kps, bbox) in ANNOTATIONS.items():
        ramp = np.linspace(0, 255, w, dtype=np.uint8)  # horizontal ramp: a flip is visible
        Image.fromarray(np.stack([np.tile(ramp, (h, 1))] * 3, axis=-1)).save(
            base / IMG.format(name)
        )
        d = base / "PF-dataset-PASCAL" / "Annotations" / cls
        d.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(
            d / f"{name}.mat",
            {
                "kps": np.array(kps, dtype=np.float64),
                "bbox": np.array([bbox], dtype=np.float64),
                "class": cls,
            },
        )
    a, b, c, d = (IMG.format(n) for n in ANNOTATIONS)
    (base / "image_pairs" / "train_pairs.csv").write_text(
        f"source_image,target_image,class,flip\n{a},{b},1,0\n{a},{b},1,1\n{c},{d},7,0\n"
    )
    (base / "image_pairs" / "val_pairs.csv").write_text(
        f"source_image,target_image,class,flip\n{b},{a},1,0\n"
    )
    (base / "image_pairs" / "test_pairs.csv").write_text(
        "source_image,target_image,class,XA,YA,XB,YB\n"
        f"{a},{b},1,3;5;7,2;4;5,4;6;9,3;6;7\n"
        f"{c},{d},7,1;3,1;3,4;6,1;3\n"
    )
    return root


@pytest.fixture
def fake_root(tmp_path) -> Path:
    return make_fake_pfpascal(tmp_path)


def test_test_split(fake_root):
    ds = PFPascal(fake_root, "test")
    assert len(ds) == 2 and ds.categories == ["aeroplane", "car"]
    s = ds[0]
    assert s["src_img"].shape == (3, 6, 8) and s["trg_img"].shape == (3, 7, 10)
    assert s["src_size"] == (6, 8) and s["trg_size"] == (7, 10)
    # CSV is MATLAB 1-based: (3, 2) -> (2, 1)
    assert s["src_kps"].tolist() == [[2.0, 1.0], [4.0, 3.0], [6.0, 4.0]]
    assert s["trg_kps"].tolist() == [[3.0, 2.0], [5.0, 5.0], [8.0, 6.0]]
    assert s["src_bbox"].tolist() == [1.0, 0.0, 4.0, 4.0]  # from the .mat, 1-based -> 0-based
    assert s["src_name"] == "PF-dataset-PASCAL/JPEGImages/2008_000001.jpg"
    assert s["category"] == "aeroplane" and s["flip"] is False and s["pair_index"] == 0
    assert ds[1]["category"] == "car"


def test_train_keypoints_are_visible_intersection(fake_root):
    s = PFPascal(fake_root, "train")[0]
    # slots 0 and 3 are visible in both images
    assert s["src_kps"].tolist() == [[2.0, 1.0], [6.0, 4.0]]
    assert s["trg_kps"].tolist() == [[3.0, 2.0], [8.0, 6.0]]
    assert s["flip"] is False
    car = PFPascal(fake_root, "train")[2]
    assert car["src_kps"].tolist() == [[0.0, 0.0], [2.0, 2.0]] and car["category"] == "car"


def test_flip_known_value_both(fake_root):
    ds = PFPascal(fake_root, "train")
    plain, flipped = ds[0], ds[1]
    assert flipped["flip"] is True
    # source width 8: x -> 8 - 1 - x; (2, 1) -> (5, 1); box [1, 0, 4, 4] -> [3, 0, 6, 4]
    assert flipped["src_kps"].tolist() == [[5.0, 1.0], [1.0, 4.0]]
    assert flipped["src_bbox"].tolist() == [3.0, 0.0, 6.0, 4.0]
    assert torch.equal(flipped["src_img"], plain["src_img"].flip(dims=[2]))
    # default flip_mode="both": target width 10, (3, 2) -> (6, 2); box [0, 0, 9, 6] stays
    assert flipped["trg_kps"].tolist() == [[6.0, 2.0], [1.0, 6.0]]
    assert flipped["trg_bbox"].tolist() == [0.0, 0.0, 9.0, 6.0]
    assert torch.equal(flipped["trg_img"], plain["trg_img"].flip(dims=[2]))
    # pairs keep the unflipped list entry
    assert ds.pairs[1].flip is True and ds.pairs[1].src_kps is None


def test_flip_source_only(fake_root):
    ds = PFPascal(fake_root, "train", flip_mode="source")
    plain, flipped = ds[0], ds[1]
    assert flipped["src_kps"].tolist() == [[5.0, 1.0], [1.0, 4.0]]
    assert torch.equal(flipped["trg_kps"], plain["trg_kps"])
    assert torch.equal(flipped["trg_img"], plain["trg_img"])
    with pytest.raises(ValueError, match="flip_mode"):
        PFPascal(fake_root, "train", flip_mode="target")


def test_val_split_and_transform(fake_root):
    ds = PFPascal(fake_root, "val", transform=lambda s: s["src_name"])
    assert len(ds) == 1 and ds[0] == "PF-dataset-PASCAL/JPEGImages/2008_000002.jpg"


def test_read_pfpascal_annotation(fake_root):
    kps, bbox = read_pfpascal_annotation(
        fake_root / "PF-PASCAL/PF-dataset-PASCAL/Annotations/aeroplane/2008_000001.mat"
    )
    assert kps.shape == (4, 2) and kps[1].isnan().all() and kps[0].tolist() == [2.0, 1.0]
    assert bbox.tolist() == [1.0, 0.0, 4.0, 4.0]


def test_keypoint_count_mismatch_names_file_and_line(fake_root):
    path = fake_root / "PF-PASCAL/image_pairs/test_pairs.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("4;6,1;3", "4,1;3")  # XB loses a value
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"test_pairs\.csv, line 3") as err:
        PFPascal(fake_root, "test")
    assert "XA 2, YA 2, XB 1, YB 2" in str(err.value)


def test_bad_class_index(fake_root):
    path = fake_root / "PF-PASCAL/image_pairs/val_pairs.csv"
    path.write_text(path.read_text().replace(",1,0", ",21,0"))
    with pytest.raises(ValueError, match="class '21'"):
        PFPascal.read_pairs(fake_root, "val")


def test_missing_images_clear_error_but_pairs_work(fake_root):
    shutil.rmtree(fake_root / "PF-PASCAL/PF-dataset-PASCAL")
    with pytest.raises(DatasetNotFoundError) as err:
        PFPascal(fake_root, "test")
    msg = str(err.value)
    assert (
        "PF-dataset-PASCAL/JPEGImages" in msg
        and "PF-dataset-PASCAL.zip" in msg
        and "download=True" in msg
    )
    assert len(PFPascal.read_pairs(fake_root, "test")) == 2
    assert pair_overlap(fake_root) == {
        "pairs": 2, "against_pairs": 3, "images": 4, "against_images": 4, "shared_images": 4,
        "pairs_sharing_an_image": 2, "pairs_in_against": 2,
    }  # fmt: skip


def test_pair_overlap_unordered(fake_root):
    out = pair_overlap(fake_root, "val", against="train")
    assert out["pairs_in_against"] == 1  # (b, a) in val matches (a, b) in train


def test_leak_free_test_split_drops_the_pairs_trained_on(fake_root):
    # both fake test pairs are training pairs: none is leak-free
    assert PFPascal.read_pairs(fake_root, "test-leakfree") == []
    train = fake_root / "PF-PASCAL/image_pairs/train_pairs.csv"
    first_test = PFPascal.read_pairs(fake_root, "test")[0]
    lines = train.read_text().splitlines()
    kept = [
        line
        for line in lines
        if not {first_test.src_name, first_test.trg_name} <= set(line.split(","))
    ]
    train.write_text("\n".join(kept) + "\n")
    free = PFPascal(fake_root, "test-leakfree")
    assert len(free) == 1 and free.pairs[0].src_name == first_test.src_name
    assert free[0]["src_kps"].shape == first_test.src_kps.shape
    train.unlink()  # the leak-free list needs the training list
    with pytest.raises(DatasetNotFoundError, match=r"train_pairs\.csv"):
        PFPascal(fake_root, "test-leakfree")


def test_missing_image_file_named(fake_root):
    (fake_root / "PF-PASCAL" / IMG.format("2008_000002")).unlink()
    with pytest.raises(DatasetNotFoundError, match=r"2008_000002\.jpg"):
        PFPascal(fake_root, "test")[0]


def test_missing_annotation_named(fake_root):
    (fake_root / "PF-PASCAL/PF-dataset-PASCAL/Annotations/car/2009_000004.mat").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"car/2009_000004\.mat"):
        PFPascal(fake_root, "test")[1]


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="PF-PASCAL"):
        PFPascal(tmp_path, "val")


def test_categories_constant():
    assert len(PFPASCAL_CATEGORIES) == 20 and PFPASCAL_CATEGORIES[6] == "car"


def _set_test_row(root: Path, column: str, text: str) -> Path:
    """Replace the ``column`` list (XA, YA, XB or YB) of the first test row (line 2)."""
    path = root / "PF-PASCAL/image_pairs/test_pairs.csv"
    lines = path.read_text().splitlines()
    head, cells = lines[1].split(",")[:3], lines[1].split(",")[3:]
    cells[("XA", "YA", "XB", "YB").index(column)] = text
    lines[1] = ",".join(head + cells)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("column", "text", "value"),
    [("XA", "3;nan;7", 2), ("YB", "3;6;inf", 3), ("XB", "-Infinity;6;9", 1), ("YA", "2;1e39;5", 2)],
)
def test_non_finite_test_keypoint_names_file_line_column(fake_root, column, text, value):
    _set_test_row(fake_root, column, text)
    with pytest.raises(ValueError) as err:
        PFPascal(fake_root, "test")
    msg = str(err.value)
    assert f"test_pairs.csv, line 2, column {column}, value {value}: coordinate" in msg
    assert "is not finite" in msg and "marks no missing one" in msg


@pytest.mark.parametrize("split", ["test", "train", "val"])
def test_header_only_pair_list_is_an_error(fake_root, split):
    path = fake_root / f"PF-PASCAL/image_pairs/{split}_pairs.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError) as err:
        PFPascal.read_pairs(fake_root, split)
    assert f"{path} lists no pair" in str(err.value) and "empty benchmark" in str(err.value)


def test_short_row_names_file_and_line(fake_root):
    path = fake_root / "PF-PASCAL/image_pairs/val_pairs.csv"
    path.write_text(path.read_text().replace(",1,0", ",1"))
    with pytest.raises(ValueError, match=r"val_pairs\.csv, line 2: the row has no \['flip'\]"):
        PFPascal.read_pairs(fake_root, "val")


def test_test_keypoint_outside_its_image(fake_root):
    _set_test_row(fake_root, "XB", "4;6;11")  # 1-based 11 = 0-based 10 = W - 1 + 1: allowed
    assert PFPascal(fake_root, "test")[0]["trg_kps"][2, 0] == 10.0
    _set_test_row(fake_root, "XB", "4;6;11.5")
    ds = PFPascal(fake_root, "test")
    with pytest.raises(ValueError) as err:
        ds[0]
    assert str(err.value).startswith(
        "PF-PASCAL test pair 0 (PF-dataset-PASCAL/JPEGImages/2008_000001.jpg -> "
        "PF-dataset-PASCAL/JPEGImages/2008_000002.jpg; image_pairs/test_pairs.csv, line 2): "
        "target keypoint 2 (0-based) at (x=10.5, y=6) lies outside the 10x7 (W x H) image "
    )
    assert ds[1]["src_kps"].shape == (2, 2)


def _annotation_path(root: Path, cls: str, name: str) -> Path:
    return root / "PF-PASCAL/PF-dataset-PASCAL/Annotations" / cls / f"{name}.mat"


def test_train_keypoint_outside_its_image_names_the_annotation(fake_root):
    path = _annotation_path(fake_root, "aeroplane", "2008_000001")
    kps = np.array(ANNOTATIONS["2008_000001"][2], dtype=np.float64)
    kps[3] = (7.0, 9.0)  # y = 8 (0-based) in an image of height 6
    scipy.io.savemat(path, {"kps": kps, "bbox": np.array([[2, 1, 5, 5]], np.float64)})
    with pytest.raises(ValueError) as err:
        PFPascal(fake_root, "train")[0]
    msg = str(err.value)
    assert "Annotations/aeroplane/2008_000001.mat): source keypoint 1 (0-based)" in msg
    kps[3] = (np.nan, np.nan)  # invisible (the documented marker): fine, and dropped
    scipy.io.savemat(path, {"kps": kps, "bbox": np.array([[2, 1, 5, 5]], np.float64)})
    assert PFPascal(fake_root, "train")[0]["src_kps"].tolist() == [[2.0, 1.0]]


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.write_bytes(bytes(range(190, 256)) * 8),
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
        lambda p: p.write_bytes(p.read_bytes()[:150]),
        lambda p: p.write_bytes(b""),
    ],
    ids=["garbage", "truncated-half", "truncated-header", "empty"],
)
def test_unreadable_annotation_names_file_and_fix(fake_root, make):
    path = _annotation_path(fake_root, "car", "2009_000004")
    make(path)
    with pytest.raises(ValueError) as err:
        PFPascal(fake_root, "test")[1]
    msg = str(err.value)
    assert msg.startswith(f"{path}: the file is truncated or not a MATLAB .mat file (")
    assert "re-download it (see the PF-PASCAL docs" in msg


def test_annotation_object_array_and_inf(fake_root):
    path = _annotation_path(fake_root, "car", "2009_000004")
    obj = np.empty((3, 2), dtype=object)
    obj[:] = "x"
    scipy.io.savemat(path, {"kps": obj, "bbox": np.array([[2, 1, 8, 6]], np.float64)})
    with pytest.raises(ValueError, match=r"2009_000004\.mat: 'kps' is not a numeric array"):
        read_pfpascal_annotation(path)
    kps = np.array([[4, 1], [np.inf, 2], [6, 3]], np.float64)
    scipy.io.savemat(path, {"kps": kps, "bbox": np.array([[2, 1, 8, 6]], np.float64)})
    with pytest.raises(ValueError, match=r"2009_000004\.mat: 'kps' slot 1 \(0-based\) is \[inf"):
        read_pfpascal_annotation(path)
    scipy.io.savemat(path, {"kps": kps[[0, 2]], "bbox": np.array([[2, 1, np.nan, 6]])})
    with pytest.raises(ValueError, match=r"2009_000004\.mat: 'bbox' \[2\.0, 1\.0, nan, 6\.0\] is"):
        read_pfpascal_annotation(path)


@pytest.mark.realdata
def test_real_pfpascal_pairs(data_root):
    test = PFPascal.read_pairs(data_root, "test")
    assert len(test) == 299
    assert len(PFPascal.read_pairs(data_root, "train")) == 2940
    assert len(PFPascal.read_pairs(data_root, "val")) == 308
    assert {p.category for p in test} == set(PFPASCAL_CATEGORIES)
    assert all(p.src_kps.shape == p.trg_kps.shape and p.src_kps.shape[0] >= 4 for p in test)
    assert test[0].src_kps[0].tolist() == pytest.approx([252.631662, 57.181333], abs=1e-4)
    overlap = pair_overlap(data_root)
    assert overlap["pairs"] == 299 and overlap["against_pairs"] == 2940
    assert 0 <= overlap["pairs_in_against"] <= overlap["pairs_sharing_an_image"] <= 299
    # 95 test rows are training pairs (unordered); the leak-free list keeps the other 204
    assert overlap["pairs_in_against"] == 95
    free = PFPascal.read_pairs(data_root, "test-leakfree")
    assert len(free) == 204 and pair_overlap(data_root, "test-leakfree")["pairs_in_against"] == 0


@pytest.mark.realdata
def test_real_pfpascal_images_absent_clear_error(data_root):
    if (data_root / "PF-PASCAL/PF-dataset-PASCAL/JPEGImages").is_dir():
        s = PFPascal(data_root, "test")[0]
        assert read_image(data_root / "PF-PASCAL" / s["src_name"]).shape == s["src_img"].shape
        return
    with pytest.raises(DatasetNotFoundError, match="JPEGImages"):
        PFPascal(data_root, "test")


def test_download_fetches_the_three_published_lists(tmp_path, monkeypatch):
    import corrlib.data.pfpascal as mod

    fetched = []
    monkeypatch.setattr(mod, "download_and_extract", lambda *a, **k: None)
    monkeypatch.setattr(mod, "download_url", lambda url, dest, sha256: fetched.append(dest.name))
    with pytest.raises(DatasetNotFoundError):  # nothing really arrived
        PFPascal(tmp_path, "test-leakfree", download=True)
    assert fetched == ["train_pairs.csv", "val_pairs.csv", "test_pairs.csv"]
