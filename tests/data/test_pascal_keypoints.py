"""PASCAL VOC 2011 keypoint pairs (Bourdev et al.'s annotations) on a fake official layout."""

from __future__ import annotations

import pytest
import torch

from corrlib.data import PASCAL_KEYPOINTS_URL, DatasetNotFoundError, PascalKeypointPairs
from corrlib.data import pascal_keypoints as module
from tests.fake_layouts import write_pascal_keypoints


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pascal")
    write_pascal_keypoints(root)
    return root


def test_offline_error_names_the_folder_and_the_archive(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        PascalKeypointPairs(tmp_path)
    msg = str(info.value)
    assert "annotations" in msg and PASCAL_KEYPOINTS_URL in msg
    (tmp_path / "PASCAL-Berkeley" / "annotations").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no VOC2011 folder"):
        PascalKeypointPairs(tmp_path)  # the photographs are missing: VOC 2011's own message


def test_download_fetches_the_annotations_and_the_photographs(tmp_path, monkeypatch):
    calls = []

    def fake(url, root, filename, sha256=None, **kw):
        calls.append((url, filename, kw.get("marker")))
        write_pascal_keypoints(tmp_path)

    monkeypatch.setattr(module, "download_and_extract", fake)
    monkeypatch.setattr("corrlib.data.voc.download_and_extract", fake)
    ds = PascalKeypointPairs(tmp_path, "val", download=True, pairs_per_class=5)
    assert calls[0] == (PASCAL_KEYPOINTS_URL, "voc2011_keypoints_Feb2012.tgz", "annotations")
    assert len(ds) == 4  # 2 categories x the 2 ordered pairs of their 2 val images


def test_pairs_are_one_category_visible_keypoints_no_repeats_and_seeded(pascal_root):
    ds = PascalKeypointPairs(pascal_root, "train", pairs_per_class=5, seed=3)
    assert ds.categories() == ["car", "person"]
    keys = [(p.src_name, p.trg_name) for p in ds.pairs]
    assert len(set(keys)) == len(keys)  # no pair twice
    per = {c: [p for p in ds.pairs if p.category == c] for c in ds.categories()}
    assert len(per["car"]) == 5  # 4 train images: 12 ordered pairs, 5 kept
    # person: the 2010 image is left out (uncurated), so 3 train images, 6 ordered pairs, 5 kept
    assert len(per["person"]) == 5
    assert all("2010_" not in p.src_name + p.trg_name for p in per["person"])
    for p in ds.pairs:
        assert p.src_name != p.trg_name and p.info["keypoints"] == ["K0", "K1", "K2", "K3", "K4"]
    again = PascalKeypointPairs(pascal_root, "train", pairs_per_class=5, seed=3)
    assert keys == [(p.src_name, p.trg_name) for p in again.pairs]
    other = PascalKeypointPairs(pascal_root, "train", pairs_per_class=5, seed=4)
    assert keys != [(p.src_name, p.trg_name) for p in other.pairs]


def test_items_keypoints_correspond_zero_based_with_the_voc_box(pascal_root):
    ds = PascalKeypointPairs(pascal_root, "train", pairs_per_class=3)
    item = ds[0]
    assert item["src_img"].shape == (3, 60, 80) and item["src_kps"].shape == (5, 2)
    # views of one scene shifted by 4 px per image: so are their keypoints (1-based in the file)
    ka = int(ds.pairs[0].src_name[-7:-4])
    kb = int(ds.pairs[0].trg_name[-7:-4])
    torch.testing.assert_close(
        item["src_kps"][:, 0] - item["trg_kps"][:, 0], torch.full((5,), 4.0 * (kb - ka))
    )
    torch.testing.assert_close(item["src_bbox"], torch.tensor([2.0, 3.0, 72.0, 53.0]))


def test_corrupt_annotations_and_too_few_keypoints_are_named(tmp_path):
    ann = write_pascal_keypoints(tmp_path)
    with pytest.raises(ValueError, match="lower min_common"):
        PascalKeypointPairs(tmp_path, "train", min_common=6)
    bad = ann / "car" / "2008_000000_1.xml"
    bad.write_text(bad.read_text().replace('x="', 'x="a'))
    with pytest.raises(ValueError, match=r"2008_000000_1\.xml: <keypoint> has x='a"):
        PascalKeypointPairs(tmp_path, "train")
    bad.write_text("<annotation><image>2008_000000</image>")
    with pytest.raises(ValueError, match=r"2008_000000_1\.xml is not valid XML"):
        PascalKeypointPairs(tmp_path, "train")
