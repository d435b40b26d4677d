"""SPair-71k: fake data in the real layout (tmp_path); the shared data has no SPair-71k."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corrlib.data import SPAIR_CATEGORIES, DatasetNotFoundError, SPair71k

# (category, image) -> (H, W)
IMAGES = {("aeroplane", "2008_000008.jpg"): (6, 9), ("aeroplane", "2008_000017.jpg"): (7, 8),
          ("cat", "2009_000100.jpg"): (5, 5), ("cat", "2009_000200.jpg"): (6, 6)}  # fmt: skip


def _ann(src: str, trg: str, cat: str, n: int, **flags) -> dict:
    return {
        "src_imname": src, "trg_imname": trg, "category": cat,
        "src_kps": [[i, i + 1] for i in range(n)], "trg_kps": [[i + 2, i] for i in range(n)],
        "src_bndbox": [0, 1, 5, 4], "trg_bndbox": [1, 1, 6, 5],
        "src_imsize": [9, 6, 3], "trg_imsize": [8, 7, 3],
        "viewpoint_variation": 1, "scale_variation": 0, "truncation": 0, "occlusion": 2,
        "mirror": 1,
        **flags,
    }  # fmt: skip


# split -> [(layout line, pair annotation)]
SPLITS = {
    "trn": [
        ("000001-2008_000008-2008_000017:aeroplane",
         _ann("2008_000008.jpg", "2008_000017.jpg", "aeroplane", 3)),
        ("000002-2009_000100-2009_000200:cat",
         _ann("2009_000100.jpg", "2009_000200.jpg", "cat", 0)),
    ],
    "val": [
        ("000003-2008_000017-2008_000008:aeroplane",
         _ann("2008_000017.jpg", "2008_000008.jpg", "aeroplane", 2)),
    ],
    "test": [
        ("000004-2009_000200-2009_000100:cat",
         _ann("2009_000200.jpg", "2009_000100.jpg", "cat", 4)),
    ],
}  # fmt: skip


def make_fake_spair(root: Path) -> Path:
    base = root / "SPair-71k"
    for (cat, name), (h, w) in IMAGES.items():
        (base / "JPEGImages" / cat).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(base / "JPEGImages" / cat / name)
    (base / "Layout" / "large").mkdir(parents=True)
    for split, rows in SPLITS.items():
        (base / "Layout" / "large" / f"{split}.txt").write_text(
            "".join(line + "\n" for line, _ in rows)
        )
        (base / "PairAnnotation" / split).mkdir(parents=True)
        for line, ann in rows:
            (base / "PairAnnotation" / split / f"{line}.json").write_text(json.dumps(ann))
    return root


@pytest.fixture
def fake_root(tmp_path) -> Path:
    return make_fake_spair(tmp_path)


@pytest.mark.parametrize(("split", "n"), [("trn", 2), ("train", 2), ("val", 1), ("test", 1)])
def test_every_split(fake_root, split, n):
    ds = SPair71k(fake_root, split)
    assert len(ds) == n and len(ds.pairs) == n
    for i in range(n):
        s = ds[i]
        assert s["src_img"].dtype == torch.uint8 and s["src_kps"].shape == s["trg_kps"].shape
        assert s["src_kps"].dtype == torch.float32 and s["pair_index"] == i and s["flip"] is False


def test_item_values_zero_based_unchanged(fake_root):
    ds = SPair71k(fake_root, "trn")
    s = ds[0]
    assert s["src_kps"].tolist() == [[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]]  # no conversion
    assert s["trg_kps"][0].tolist() == [2.0, 0.0]
    assert s["src_bbox"].tolist() == [0.0, 1.0, 5.0, 4.0] and s["trg_bbox"].tolist() == [
        1.0,
        1.0,
        6.0,
        5.0,
    ]
    assert s["src_size"] == (6, 9) and s["trg_size"] == (7, 8)
    assert s["src_name"] == "JPEGImages/aeroplane/2008_000008.jpg" and s["category"] == "aeroplane"
    assert ds.categories == ["aeroplane", "cat"]
    info = ds.pairs[0].info
    assert info["mirror"] == 1 and info["occlusion"] == 2 and info["src_imsize"] == (9, 6, 3)


def test_zero_keypoints_give_empty_tensors(fake_root):
    s = SPair71k(fake_root, "trn")[1]
    assert s["src_kps"].shape == (0, 2) and s["trg_kps"].shape == (0, 2)


def test_transform(fake_root):
    ds = SPair71k(fake_root, "test", transform=lambda s: (s["category"], s["src_kps"].shape[0]))
    assert ds[0] == ("cat", 4)


def test_keypoint_count_mismatch(fake_root):
    line, ann = SPLITS["val"][0]
    ann = {**ann, "trg_kps": ann["trg_kps"][:1]}
    path = fake_root / "SPair-71k" / "PairAnnotation" / "val" / f"{line}.json"
    path.write_text(json.dumps(ann))
    with pytest.raises(ValueError, match="2 source but 1 target keypoints") as err:
        SPair71k(fake_root, "val")[0]
    assert line in str(err.value)


def test_missing_folder_and_missing_json(fake_root, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DatasetNotFoundError) as err:
        SPair71k(empty)
    assert str(empty / "SPair-71k") in str(err.value) and "SPair-71k.tar.gz" in str(err.value)
    line = SPLITS["test"][0][0]
    (fake_root / "SPair-71k" / "PairAnnotation" / "test" / f"{line}.json").unlink()
    with pytest.raises(DatasetNotFoundError, match=line):
        SPair71k(fake_root, "test")[0]


def test_bad_split(fake_root):
    with pytest.raises(ValueError, match="Valid values are"):
        SPair71k(fake_root, "training")


def test_categories_constant():
    assert len(SPAIR_CATEGORIES) == 18 and "sofa" not in SPAIR_CATEGORIES


def _rewrite(root: Path, split: str, **changes) -> Path:
    line, ann = SPLITS[split][0]
    path = root / "SPair-71k" / "PairAnnotation" / split / f"{line}.json"
    path.write_text(json.dumps({**ann, **changes}))  # json writes NaN / Infinity tokens
    return path


@pytest.mark.parametrize(
    ("key", "value", "index"),
    [
        ("src_kps", [[0, 1], [float("nan"), 2], [2, 3]], 1),
        ("trg_kps", [[2, 0], [3, 1], [4, float("inf")]], 2),
    ],
)
def test_non_finite_keypoint_names_file_and_key(fake_root, key, value, index):
    path = _rewrite(fake_root, "trn", **{key: value})
    with pytest.raises(ValueError) as err:
        SPair71k(fake_root, "trn")[0]
    msg = str(err.value)
    assert msg.startswith(f"{path}: '{key}'[{index}] is [") and "not finite" in msg


def test_non_finite_box(fake_root):
    path = _rewrite(fake_root, "val", trg_bndbox=[1, 1, float("inf"), 5])
    with pytest.raises(ValueError, match="'trg_bndbox' must be 4 finite numbers") as err:
        SPair71k(fake_root, "val")[0]
    assert str(path) in str(err.value)


def test_empty_layout_is_an_error(fake_root):
    path = fake_root / "SPair-71k" / "Layout" / "large" / "val.txt"
    path.write_text("\n \n")
    with pytest.raises(ValueError) as err:
        SPair71k(fake_root, "val")
    assert f"{path} lists no pair" in str(err.value) and "empty benchmark" in str(err.value)


def test_keypoint_outside_its_image(fake_root):
    # test pair: source 2009_000200 (6 x 6), target 2009_000100 (5 x 5); W - 1 + 1 px is allowed
    _rewrite(fake_root, "test", trg_kps=[[5, 0], [0, 5], [-1, -1], [2, 2]])
    assert SPair71k(fake_root, "test")[0]["trg_kps"][0].tolist() == [5.0, 0.0]
    _rewrite(fake_root, "test", trg_kps=[[2, 0], [3, 1], [4, 2], [5, 5.5]])
    with pytest.raises(ValueError) as err:
        SPair71k(fake_root, "test")[0]
    msg = str(err.value)
    assert msg.startswith(
        f"SPair-71k test pair 0 (PairAnnotation/test/{SPLITS['test'][0][0]}.json): target "
        "keypoint 3 (0-based) at (x=5, y=5.5) lies outside the 5x5 (W x H) image "
        "JPEGImages/cat/2009_000100.jpg"
    )


def test_per_pair_mean_and_difficulty_breakdown(fake_root, tmp_path):
    # the fake pairs move every keypoint by (+2, -1): a method that knows it scores 1, the
    # identity (2.24 px off, L = 5 px, the target box's longer side) scores 0
    from corrlib.eval import evaluate_keypoints, write_keypoint_result
    from corrlib.methods import CorrespondenceMethod

    class KnowsTheShift(CorrespondenceMethod):
        name = "shift"

        def match(self, src_img, trg_img, src_kps, *, src_key=None, trg_key=None):
            return src_kps + torch.tensor([2.0, -1.0])

    ds = SPair71k(fake_root, "trn")
    assert ds[0]["difficulty"] == {
        "viewpoint_variation": 1, "scale_variation": 0, "truncation": 0, "occlusion": 2,
        "mirror": 1,
    }  # fmt: skip
    exact = evaluate_keypoints(KnowsTheShift(), ds, "spair-71k", progress=False)
    identity = evaluate_keypoints("identity", ds, "spair-71k", progress=False)
    assert [p["pair_index"] for p in exact.pairs] == [0, 1]  # the cat pair has no keypoint
    assert exact.pck_per_pair(0.05) == 1.0 and identity.pck_per_pair(0.15) == 0.0
    assert exact.pck_per_pair(0.1, where=lambda p: p["category"] == "cat") is None
    assert exact.difficulty_breakdown(0.1)["occlusion"] == {2: {"pck": 1.0, "pairs": 1}}
    assert identity.difficulty_breakdown(0.15)["occlusion"] == {2: {"pck": 0.0, "pairs": 1}}
    assert set(exact.difficulty_breakdown(0.1)) == {
        "viewpoint_variation", "scale_variation", "truncation", "occlusion", "mirror",
    }  # fmt: skip
    meta = json.loads(write_keypoint_result(exact, tmp_path / "out")["metrics"].read_text())
    assert meta["per_pair_mean"]["0.1"] == 1.0
    assert meta["difficulty"]["0.1"]["viewpoint_variation"] == {"1": {"pck": 1.0, "pairs": 1}}
