"""Tests of the CUB-200-2011 keypoint pairs on a fake copy of the official layout."""

from __future__ import annotations

import pytest
import torch

from corrlib.data import CUB2011_MD5, CUB2011_URL, CUB2011Pairs, DatasetNotFoundError
from corrlib.data import cub as cub_module
from tests.fake_layouts import write_cub2011


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub")
    write_cub2011(root)
    return root


def test_offline_error_names_the_file_and_the_archive(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        CUB2011Pairs(tmp_path)
    msg = str(info.value)
    assert "images.txt" in msg and CUB2011_URL in msg and CUB2011_MD5 in msg


def test_download_fetches_the_md5_checked_archive(tmp_path, monkeypatch):
    calls = []

    def fake(url, root, filename, sha256=None, **kw):
        calls.append((url, filename, kw.get("md5"), kw.get("marker")))
        write_cub2011(root)

    monkeypatch.setattr(cub_module, "download_and_extract", fake)
    ds = CUB2011Pairs(tmp_path, "test", download=True)
    assert calls == [(CUB2011_URL, "CUB_200_2011.tgz", CUB2011_MD5, "CUB_200_2011")]
    assert len(ds) == 4  # 2 species x the 2 ordered pairs of their 2 test images


def test_pairs_are_one_species_visible_parts_no_repeats_and_seeded(cub_root):
    ds = CUB2011Pairs(cub_root, "train", pairs_per_class=4, seed=3)
    assert len(ds) == 8 and ds.categories() == ["001.Bird_1", "002.Bird_2"]
    keys = [(p.src_name, p.trg_name) for p in ds.pairs]
    assert len(set(keys)) == len(keys)  # no pair twice
    for p in ds.pairs:
        assert p.src_name.split("/")[1] == p.trg_name.split("/")[1]  # one species
        assert p.info["parts"] == list(range(1, 14))  # parts 14, 15 are never visible
    again = CUB2011Pairs(cub_root, "train", pairs_per_class=4, seed=3)
    assert keys == [(p.src_name, p.trg_name) for p in again.pairs]
    other = CUB2011Pairs(cub_root, "train", pairs_per_class=4, seed=4)
    assert keys != [(p.src_name, p.trg_name) for p in other.pairs]


def test_items_keypoints_correspond_and_boxes(cub_root):
    ds = CUB2011Pairs(cub_root, "train", pairs_per_class=2)
    item = ds[0]
    assert item["src_img"].shape == (3, 60, 80) and item["src_kps"].shape == (13, 2)
    # the fake images are views of one scene shifted by 4 px per image: so are their parts
    a, b = ds.pairs[0].info["ids"]
    shift = 4.0 * ((b - 1) % 5 - (a - 1) % 5)
    torch.testing.assert_close(
        item["src_kps"][:, 0] - item["trg_kps"][:, 0], torch.full((13,), shift)
    )
    torch.testing.assert_close(item["src_bbox"], torch.tensor([2.0, 3.0, 75.0, 54.0]))


def test_corrupt_rows_and_too_few_parts_are_named(tmp_path):
    base = write_cub2011(tmp_path)
    with pytest.raises(ValueError, match="lower min_common"):
        CUB2011Pairs(tmp_path, "train", min_common=14)
    (base / "bounding_boxes.txt").write_text("1 2.0 3.0\n")
    with pytest.raises(ValueError, match=r"bounding_boxes\.txt, line 1: expected 5 fields"):
        CUB2011Pairs(tmp_path, "train")
