"""Tests of the KITTI 2012 stereo loader on a fake copy of the official layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from corrlib.data import KITTI2012_SPLITS, KITTI2012_URL, DatasetNotFoundError, KITTI2012Stereo
from corrlib.data import kitti as kitti_module
from tests.fake_layouts import KITTI_DISP, KITTI_SIZE, write_kitti2012


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti")
    write_kitti2012(root)
    return root


def test_offline_error_names_the_file_the_url_and_the_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        KITTI2012Stereo(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "KITTI2012" / "training" / "image_0" / "000000_10.png") in msg
    assert KITTI2012_URL in msg and "download=True" in msg and "disp_noc" in msg
    assert not (tmp_path / "KITTI2012").exists()  # nothing written


def test_download_fetches_the_official_archive(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, root, filename, sha256, **kw):
        calls.append((url, filename, kw.get("marker")))
        write_kitti2012(tmp_path, scenes=194)

    monkeypatch.setattr(kitti_module, "download_and_extract", fake_download)
    ds = KITTI2012Stereo(tmp_path, "all", download=True)
    assert calls == [(KITTI2012_URL, "data_stereo_flow.zip", "training")] and len(ds) == 194
    KITTI2012Stereo(tmp_path, "all", download=True)  # present: no second download
    assert len(calls) == 1


def test_splits_disparity_and_validity(kitti_root):
    sizes = {s: len(KITTI2012Stereo(kitti_root, s)) for s in ("train", "val", "all")}
    assert sizes == {"train": 154, "val": 40, "all": 194}  # MC-CNN's code: 40 held out
    assert not set(KITTI2012_SPLITS["train"]) & set(KITTI2012_SPLITS["val"])
    pair = KITTI2012Stereo(kitti_root, "val")[0]
    assert pair.name == "kitti2012-000004" and pair.size == KITTI_SIZE
    assert pair.left.dtype == torch.float32 and pair.left_rgb.shape == (3, *KITTI_SIZE)
    d = int(KITTI_DISP)
    assert not pair.valid[:, :d].any() and pair.valid[:, d:].all()
    assert torch.all(pair.disparity[pair.valid] == KITTI_DISP)  # the PNG stores d * 256
    # the views agree under x_right = x_left - d
    torch.testing.assert_close(pair.left[:, d:], pair.right[:, :-d])
    half = KITTI2012Stereo(kitti_root, "val", scale=0.5)[0]
    assert half.size == (20, 48) and torch.allclose(
        half.disparity[half.valid], torch.tensor(KITTI_DISP / 2)
    )


def test_missing_scene_and_bad_disparity_are_named(tmp_path):
    root = write_kitti2012(tmp_path, scenes=194).parent
    (tmp_path / "KITTI2012" / "training" / "disp_noc" / "000003_10.png").unlink()
    ds = KITTI2012Stereo(root, "train")
    with pytest.raises(DatasetNotFoundError, match=r"000003_10\.png.*unzip"):
        ds[3]
    assert KITTI2012_SPLITS["train"][4] == 6  # scenes 4 and 5 are held out
    bad = tmp_path / "KITTI2012" / "training" / "disp_noc" / "000006_10.png"
    Image.fromarray(np.zeros(KITTI_SIZE, dtype=np.uint8)).save(bad)
    with pytest.raises(ValueError, match=r"000006_10\.png: expected a 16-bit"):
        ds[4]
    with pytest.raises(IndexError, match="154 pairs"):
        ds[154]
    with pytest.raises(ValueError, match="Unknown value 'test'"):
        KITTI2012Stereo(root, "test")


def test_grey_views_by_default_colour_on_request(tmp_path):
    write_kitti2012(tmp_path, colour=True)
    grey = KITTI2012Stereo(tmp_path, "val")[0]
    colour = KITTI2012Stereo(tmp_path, "val", colour=True)[0]
    assert torch.equal(grey.left_rgb[0], grey.left_rgb[1])  # image_0 repeated on 3 channels
    torch.testing.assert_close(colour.left, grey.left)  # the fake colour views are grey copies
    (tmp_path / "KITTI2012" / "training" / "colored_1" / "000004_10.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="colored_1"):
        KITTI2012Stereo(tmp_path, "val", colour=True)[0]
    assert KITTI2012Stereo(tmp_path, "val")[0].size == KITTI_SIZE  # grey needs no colour file
