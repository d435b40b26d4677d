"""PF-WILLOW: fake data in the real layout (tmp_path), then the shared real subset."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
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


def _edit_csv(root: Path, line: int, column: int | None, value: str | None = None) -> Path:
    """Set ``column`` (0-based) of ``line`` (1-based) of the fake pair list to ``value``; with
    ``column=None``, drop the row's last keypoint from each of its four lists (N 10 -> 9)."""
    path = root / "PF-WILLOW/test_pairs_pf.csv"
    rows = list(csv.reader(path.read_text().splitlines()))
    if column is None:
        n = (len(rows[line - 1]) - 2) // 4
        vals = rows[line - 1][2:]
        # drop keypoint 10 of each list: XA10, YA10, XB10, YB10 (38 columns for N = 10)
        rows[line - 1] = rows[line - 1][:2] + [v for i, v in enumerate(vals) if i % n != n - 1]
    else:
        rows[line - 1][column] = value
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_row_with_fewer_keypoints_than_the_header(fake_root):
    _edit_csv(fake_root, 3, None)  # 38 columns (N = 9) under a 42-column header
    with pytest.raises(ValueError) as err:
        PFWillow(fake_root)
    msg = str(err.value)
    assert "test_pairs_pf.csv, line 3: 38 columns, i.e. 9 keypoints" in msg
    assert "the header has 42 columns (10 keypoints)" in msg


def test_row_with_fewer_keypoints_than_the_first_row(tmp_path):
    root = make_fake_pfwillow(tmp_path, header=False)
    _edit_csv(root, 2, None)
    with pytest.raises(ValueError, match=r"line 2: 38 columns.*line 1 \(the first pair\) has 42"):
        PFWillow(root)


@pytest.mark.parametrize(
    ("column", "value", "name", "what"),
    [
        (2 + 10 + 3, "nan", "YA4", "is NaN"),  # a source keypoint
        (2 + 20, "NaN", "XB1", "is NaN"),  # a target keypoint
        (2 + 20, "inf", "XB1", "is not finite"),
        (2 + 30, "-Infinity", "YB1", "is not finite"),
        (2, "1e39", "XA1", "is not finite"),  # finite in float64, inf in float32
    ],
)
def test_non_finite_coordinate_names_file_line_and_column(fake_root, column, value, name, what):
    _edit_csv(fake_root, 2, column, value)
    with pytest.raises(ValueError) as err:
        PFWillow(fake_root)
    msg = str(err.value)
    assert f"test_pairs_pf.csv, line 2, column {column + 1} ({name}): keypoint coordinate" in msg
    assert f"{value!r} {what}" in msg and "re-download" in msg


def test_non_finite_coordinate_without_header_names_the_position(tmp_path):
    root = make_fake_pfwillow(tmp_path, header=False)
    _edit_csv(root, 1, 2 + 20, "inf")
    with pytest.raises(ValueError, match=r"line 1, column 23 \(XB1\)"):
        PFWillow(root)


@pytest.mark.parametrize("text", ["", "\n\n", "imageA,imageB," + ",".join(["XA"] * 40) + "\n"])
def test_empty_or_header_only_pair_list_is_an_error(fake_root, text):
    path = fake_root / "PF-WILLOW/test_pairs_pf.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        PFWillow(fake_root)
    assert f"{path} lists no pair" in str(err.value) and "empty benchmark" in str(err.value)


@pytest.mark.parametrize(
    ("column", "value", "ok"),
    [
        (2 + 20, "15", True),  # 1-based 15 = 0-based 14 = W - 1 + 1 px (image W = 14)
        (2 + 20, "15.01", False),
        (2 + 20, "0", True),  # 0-based -1: one pixel outside, allowed
        (2 + 20, "-0.01", False),
        (2 + 30, "11.5", False),  # y: image H = 10, 0-based 10.5 > 9 + 1
        (2 + 9, "1e30", False),  # a source keypoint (XA10) far away
    ],
)
def test_keypoint_outside_its_image(fake_root, column, value, ok):
    _edit_csv(fake_root, 2, column, value)
    ds = PFWillow(fake_root)  # the pair list alone is valid
    if ok:
        assert ds[0]["trg_kps"].shape == (10, 2)
        return
    with pytest.raises(ValueError) as err:
        ds[0]
    msg = str(err.value)
    assert msg.startswith("PF-WILLOW pair 0 (PF-dataset/car(G)/Cars_001a.png -> ")
    assert "test_pairs_pf.csv, line 2)" in msg and "1 px tolerance" in msg
    side, k = ("source", 9) if column < 22 else ("target", 0)
    assert f"{side} keypoint {k} (0-based)" in msg and "lies outside the" in msg
    assert ds[1]["src_kps"].shape == (10, 2)  # other pairs still load


def test_keypoint_outside_message_example(fake_root):
    _edit_csv(fake_root, 2, 2 + 20, "250")
    with pytest.raises(ValueError) as err:
        PFWillow(fake_root)[0]
    assert str(err.value) == (
        "PF-WILLOW pair 0 (PF-dataset/car(G)/Cars_001a.png -> PF-dataset/car(G)/Cars_002b.png; "
        "test_pairs_pf.csv, line 2): target keypoint 0 (0-based) at (x=249, y=1) lies outside "
        "the 14x10 (W x H) image PF-dataset/car(G)/Cars_002b.png (0-based pixel centres 0..13 x "
        "0..9, 1 px tolerance); MATLAB 1-based columns XB1, YB1 hold 250, 2. The pair list does "
        "not match the images or is corrupt: re-download "
        "https://www.di.ens.fr/willow/research/cnngeometric/other_resources/test_pairs_pf.csv "
        "(and https://www.di.ens.fr/willow/research/proposalflow/dataset/PF-dataset.zip)."
    )


def test_pairs_record_their_line(fake_root):
    assert [p.info["line"] for p in PFWillow(fake_root).pairs] == [2, 3]


def test_utf8_names_in_a_non_utf8_locale(tmp_path):
    """The pair list is UTF-8 whatever the locale (the review's 'ascii codec' crash)."""
    root = make_fake_pfwillow(tmp_path)
    base = root / "PF-WILLOW"
    (base / "PF-dataset/car(G)").rename(base / "PF-dataset/车(G)")
    path = base / "test_pairs_pf.csv"
    path.write_text(path.read_text().replace("car(G)", "车(G)"), encoding="utf-8")
    code = (
        "import locale, sys; from corrlib.data import PFWillow; "
        "print(locale.getpreferredencoding(False), ascii(PFWillow(sys.argv[1]).categories))"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code, os.fsdecode(root)],
        env=env,
        capture_output=True,
        text=True,
        encoding="ascii",
        errors="replace",
        check=False,
    )
    assert out.returncode == 0, out.stderr
    encoding, categories = out.stdout.split(maxsplit=1)
    assert categories.strip() == ascii(["车(G)"])
    if encoding.lower().replace("-", "") == "utf8":
        pytest.skip("this Python runs in UTF-8 mode even with LC_ALL=C (nothing to test)")


def _valid_mat(path: Path) -> Path:
    scipy.io.savemat(path, {"pts_coord": _pts(0)})
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.write_bytes(bytes(range(256)) * 4),  # garbage
        lambda p: p.write_bytes(b""),  # empty
        lambda p: p.write_text("<html><body>404 Not Found</body></html>"),  # an error page
        lambda p: p.write_bytes(_valid_mat(p).read_bytes()[:200]),  # truncated
        lambda p: p.write_bytes(_valid_mat(p).read_bytes()[:140]),  # header and a bit
    ],
    ids=["garbage", "empty", "html", "truncated", "truncated-short"],
)
def test_read_pfwillow_kps_unreadable_file(tmp_path, make):
    path = tmp_path / "Cars_001a.mat"
    make(path)
    with pytest.raises(ValueError) as err:
        read_pfwillow_kps(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: the file is truncated or not a MATLAB .mat file (")
    assert "re-download it (see the PF-WILLOW docs" in msg


def test_read_pfwillow_kps_object_array_and_nan(tmp_path):
    path = tmp_path / "x.mat"
    obj = np.empty((2, 2), dtype=object)
    obj[:] = "a"
    scipy.io.savemat(path, {"pts_coord": obj})
    with pytest.raises(ValueError, match=r"x\.mat: 'pts_coord' is not a numeric array"):
        read_pfwillow_kps(path)
    scipy.io.savemat(path, {"pts_coord": np.full((2, 10), np.nan)})
    with pytest.raises(ValueError, match=r"x\.mat: every 'pts_coord' value is NaN or infinite"):
        read_pfwillow_kps(path)
    pts = _pts(0)
    pts[1, 3] = np.inf
    scipy.io.savemat(path, {"pts_coord": pts})
    with pytest.raises(ValueError, match=r"x\.mat: keypoint 3 \(0-based\) of 'pts_coord'"):
        read_pfwillow_kps(path)
    assert read_pfwillow_kps(_valid_mat(path))[0].tolist() == [0.0, 1.0]  # still 0-based


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


def test_pair_list_paths_outside_the_dataset_are_refused(tmp_path, data_root):
    import shutil

    from corrlib.data import PFWillow

    folder = tmp_path / "PF-WILLOW"
    shutil.copytree(data_root / "PF-WILLOW", folder, ignore=shutil.ignore_patterns("*.png"))
    lines = (folder / "test_pairs_pf.csv").read_text().splitlines()
    first = lines[1].split(",")
    first[0] = "../../escape/" + first[0]
    (folder / "test_pairs_pf.csv").write_text("\n".join([lines[0], ",".join(first)]) + "\n")
    with pytest.raises(ValueError, match="lies outside the dataset folder"):
        PFWillow(tmp_path)[0]
