"""Tests of the PASCAL VOC 2011 photographs (RTN's synthetic stage) on a fake official layout."""

from __future__ import annotations

import pytest
import torch

from corrlib.data import VOC2011_MD5, VOC2011_URL, DatasetNotFoundError, VOC2011Images
from corrlib.data import voc as voc_module
from tests.fake_layouts import write_voc2011


def test_reads_the_tars_layout_splits_and_downscales(tmp_path):
    write_voc2011(tmp_path)
    ds = VOC2011Images(tmp_path)
    assert len(ds) == 6 and ds.ids[0] == "2011_000000"
    assert [len(VOC2011Images(tmp_path, s)) for s in ("train", "val")] == [4, 2]
    img = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 90, 120)
    small = VOC2011Images(tmp_path, max_side=60)[0]
    assert small.shape == (3, 45, 60)
    assert abs(small.float().mean() - img.float().mean()) < 2  # a downscaled copy, not a crop


def test_missing_data_names_the_folders_and_the_tar(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        VOC2011Images(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "TrainVal" / "VOCdevkit" / "VOC2011") in msg
    assert VOC2011_URL in msg and VOC2011_MD5 in msg and "download=True" in msg


def test_download_fetches_the_md5_checked_tar(tmp_path, monkeypatch):
    calls = []

    def fake(url, root, filename, sha256=None, **kw):
        calls.append((url, filename, kw.get("md5"), kw.get("marker")))
        write_voc2011(root)

    monkeypatch.setattr(voc_module, "download_and_extract", fake)
    assert len(VOC2011Images(tmp_path, download=True)) == 6
    assert calls == [(VOC2011_URL, "VOCtrainval_25-May-2011.tar", VOC2011_MD5, "TrainVal")]
    VOC2011Images(tmp_path, download=True)  # present: nothing fetched again
    assert len(calls) == 1
