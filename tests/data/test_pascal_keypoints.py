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
    keys = [(p.src_name, p.trg_name, p.info["objects"]) for p in ds.pairs]
    assert len(set(keys)) == len(keys)  # no pair of objects twice
    per = {c: [p for p in ds.pairs if p.category == c] for c in ds.categories()}
    assert len(per["car"]) == 5  # 5 objects in 4 train images: 18 ordered pairs, 5 kept
    # person: the 2010 image is left out (uncurated), so 3 train images, 6 ordered pairs, 5 kept
    assert len(per["person"]) == 5
    assert all("2010_" not in p.src_name + p.trg_name for p in per["person"])
    for p in ds.pairs:
        assert p.src_name != p.trg_name and p.info["keypoints"] == ["K0", "K1", "K2", "K3", "K4"]
    # the 2007 object (in no Main list) and the uncurated person are counted, not used
    assert ds.excluded == {
        "2007 image (in no Main list)": 1,
        "not in this split": 4,
        "person of 2010 or 2011 (not curated)": 1,
    }
    many = PascalKeypointPairs(pascal_root, "train", pairs_per_class=100)
    cars = [p for p in many.pairs if p.category == "car"]
    assert len(cars) == 18  # every ordered pair of objects in two different images, once
    assert all("2007_" not in p.src_name + p.trg_name for p in many.pairs)
    again = PascalKeypointPairs(pascal_root, "train", pairs_per_class=5, seed=3)
    assert keys == [(p.src_name, p.trg_name, p.info["objects"]) for p in again.pairs]
    other = PascalKeypointPairs(pascal_root, "train", pairs_per_class=5, seed=4)
    assert keys != [(p.src_name, p.trg_name, p.info["objects"]) for p in other.pairs]


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
    # absolute positions: the file's 1-based x, y minus 1
    import xml.etree.ElementTree as ET

    image = ds.pairs[0].src_name[len("JPEGImages/") : -len(".jpg")]
    voc_id = ds.pairs[0].info["objects"][0]
    root = ET.parse(
        pascal_root / "PASCAL-Berkeley" / "annotations" / "car" / f"{image}_{voc_id}.xml"
    )
    raw = [(float(k.get("x")), float(k.get("y"))) for k in root.iter("keypoint")][:5]
    if ds.pairs[0].category != "car":  # the first pair is a car pair (categories in order)
        raise AssertionError(ds.pairs[0].category)
    torch.testing.assert_close(item["src_kps"], torch.tensor(raw) - 1.0)


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
    bad.write_text(
        "<annotation><image>2008_000000</image><voc_id>one</voc_id><category>car</category>"
        '<visible_bounds height="1" width="1" xmin="1" ymin="1"/></annotation>'
    )
    with pytest.raises(ValueError, match=r"<voc_id> is 'one', not an object number"):
        PascalKeypointPairs(tmp_path, "train")
    (tmp_path / "Main").mkdir()
    for f in (ann / "car").glob("*.xml"):
        f.unlink()
    for f in (ann / "person").glob("*.xml"):
        f.unlink()
    with pytest.raises(ValueError, match=r"no <category>/<image>_<object>\.xml file under"):
        PascalKeypointPairs(tmp_path, "train")


def test_annotations_of_no_split_image_are_named(tmp_path):
    ann = write_pascal_keypoints(tmp_path)
    main = tmp_path / "TrainVal" / "VOCdevkit" / "VOC2011" / "ImageSets" / "Main"
    (main / "train.txt").write_text("2011_999999\n")
    with pytest.raises(ValueError, match=r"none of the 14 annotation files names an image"):
        PascalKeypointPairs(tmp_path, "train")
    assert len(list(ann.glob("*/*.xml"))) == 14
