"""PASCAL VOC 2011 keypoint pairs (Bourdev et al.'s annotations), UCN's PASCAL training data.

Expected layout under the data root (``root=None``: ``$CORRLIB_DATA``): the keypoint archive
``voc2011_keypoints_Feb2012.tgz`` extracted into ``PASCAL-Berkeley/`` (it unpacks to
``annotations/``), and the VOC 2011 trainval photographs as chapter 05 reads them
(:class:`corrlib.data.VOC2011Images`: ``TrainVal/VOCdevkit/VOC2011/`` as the tar unpacks, or
``VOCdevkit/VOC2011/``)::

    <root>/PASCAL-Berkeley/annotations/<category>/<image id>_<object>.xml
    <root>/TrainVal/VOCdevkit/VOC2011/JPEGImages/<image id>.jpg
    <root>/TrainVal/VOCdevkit/VOC2011/ImageSets/Main/{train,val}.txt

One annotation file describes one object: ``<image>`` (the VOC image id), ``<voc_id>`` (the
object's 1-based index in the VOC annotation), ``<category>``, ``<visible_bounds xmin ymin width
height>`` (the VOC box, 1-based pixels) and ``<keypoints>`` of ``<keypoint name visible x y
z>``. Coordinates are read in VOC's convention, 1-based, and returned 0-based (minus 1); the
boxes as ``(xmin - 1, ymin - 1, xmin - 1 + width, ymin - 1 + height)``. Only keypoints with
``visible="1"`` are used; a name given twice in one file keeps its first position.

Splits follow VOC 2011's own image split (``ImageSets/Main/{train,val}.txt``). Those lists hold
the images of 2008 to 2011 only, so the annotated objects of ``2007_*`` images (VOC 2007's
segmentation images, kept in VOC 2011's ``Segmentation`` lists) are left out of both splits;
:attr:`PascalKeypointPairs.excluded` counts what is left out and why. That also keeps VOC 2007's
photographs, where Willow's cars and motorbikes (PF-WILLOW) come from, out of training. A UCN
trained on these pairs must not be scored on PF-PASCAL or SPair-71k: their images are VOC 2007 to
2012 photographs, some of them these. UCN's list of
pairs (Choy et al., NeurIPS 2016, its PASCAL experiments follow Long et al.'s protocol) was not
found in a maintained copy, so this module defines its pairs and says how: for each category,
ordered pairs of two objects in different images of the split are drawn with ``seed``
(``torch.Generator``), at most ``50 * pairs_per_class`` draws, and the first ``pairs_per_class``
distinct pairs with at least ``min_common`` keypoint names visible in both are kept; a pair's
keypoints are those names, in sorted order. Person objects of 2010 and 2011 images are left
out: the annotators' README says they "are not curated and therefore are of lower quality".
Bourdev, Maji, Brox & Malik, *Detecting people using mutually consistent poselet activations*,
ECCV 2010 (the keypoint annotations); Everingham et al., *The PASCAL Visual Object Classes
Challenge 2011*.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from corrlib.data._common import (
    DrawnPairDataset,
    KeypointPair,
    download_and_extract,
    require_file,
)
from corrlib.data.images import read_image, shown_path
from corrlib.data.voc import VOC2011Images

__all__ = ["PASCAL_KEYPOINTS_URL", "PascalKeypointPairs"]

#: Bourdev et al.'s keypoint annotations of PASCAL VOC 2011 train+val objects (Berkeley poselets
#: page). No checksum is published: the first download records its SHA-256 in
#: ``PASCAL-Berkeley/.corrlib-downloads.json`` and later downloads are checked against it.
PASCAL_KEYPOINTS_URL = (
    "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/shape/poselets/"
    "voc2011_keypoints_Feb2012.tgz"
)


def _float(node: ET.Element, name: str, path: Path) -> float:
    value = node.get(name)
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(
            f"{shown_path(path)}: <{node.tag}> has {name}={value!r}, not a number. The file is "
            "corrupt or not one of Bourdev et al.'s annotations: extract "
            "voc2011_keypoints_Feb2012.tgz again."
        ) from None


def read_keypoint_annotation(path: str | os.PathLike) -> dict:
    """One of Bourdev et al.'s annotation files.

    Returns:
        ``{"image": str, "voc_id": int, "category": str, "bbox": (4,) float32 0-based
        (x0, y0, x1, y1), "keypoints": {name: (x, y)}}``: the visible keypoints, 0-based pixels.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(
            f"{shown_path(path)} is not valid XML ({err}); extract voc2011_keypoints_Feb2012.tgz "
            "again."
        ) from None
    image, category = root.findtext("image"), root.findtext("category")
    bounds = root.find("visible_bounds")
    if not image or not category or bounds is None:
        raise ValueError(
            f"{shown_path(path)} lacks <image>, <category> or <visible_bounds>: not one of "
            "Bourdev et al.'s annotations; extract voc2011_keypoints_Feb2012.tgz again."
        )
    x0, y0 = _float(bounds, "xmin", path) - 1.0, _float(bounds, "ymin", path) - 1.0
    box = [x0, y0, x0 + _float(bounds, "width", path), y0 + _float(bounds, "height", path)]
    keypoints = {}
    for kp in root.iter("keypoint"):
        if kp.get("visible") == "1" and kp.get("name") and kp.get("name") not in keypoints:
            keypoints[kp.get("name")] = (_float(kp, "x", path) - 1.0, _float(kp, "y", path) - 1.0)
    voc_id = (root.findtext("voc_id") or "0").strip()
    if not voc_id.isdigit():
        raise ValueError(
            f"{shown_path(path)}: <voc_id> is {voc_id!r}, not an object number; extract "
            "voc2011_keypoints_Feb2012.tgz again."
        )
    return {
        "image": image.strip(),
        "voc_id": int(voc_id),
        "category": category.strip(),
        "bbox": torch.tensor(box, dtype=torch.float32),
        "keypoints": keypoints,
    }


class PascalKeypointPairs(DrawnPairDataset):
    """PASCAL VOC 2011 keypoint pairs of one category (see the module docstring for the rule).

    Args:
        root: the data root (``None``: ``$CORRLIB_DATA``): ``PASCAL-Berkeley/annotations/`` and
            the VOC 2011 photographs.
        split: ``"train"`` or ``"val"`` (VOC 2011's image split).
        transform: applied to each item.
        download: fetch and extract :data:`PASCAL_KEYPOINTS_URL` and the VOC 2011 trainval tar
            (:data:`corrlib.data.voc.VOC2011_URL`, MD5-checked) when missing.
        pairs_per_class: ordered pairs kept per category (None: 200).
        min_common: the fewest keypoints visible in both objects a pair must have.
        seed: the seed of the draw.

    Items have the keypoint-pair layout of :mod:`corrlib.data` (0-based pixels, (x, y); the
    boxes are the objects' VOC boxes). Pairs are drawn uniformly over objects, so images with
    many annotated objects of a category contribute more. ``excluded``: how many annotated
    objects were left out, by reason.
    """

    NAME = "PASCAL VOC 2011 keypoints (Bourdev et al.)"
    FOLDER = "PASCAL-Berkeley"
    SPLITS = ("train", "val")
    PAIRS_PER_CLASS = 200
    TREE = """
<root>/PASCAL-Berkeley/annotations/<category>/<image id>_<object>.xml
<root>/TrainVal/VOCdevkit/VOC2011/   (or <root>/VOCdevkit/VOC2011/)
    JPEGImages/<image id>.jpg  ImageSets/Main/{train,val}.txt
"""

    @classmethod
    def _how_to_get(cls, folder: Path) -> str:
        return (
            f"pass download=True (needs internet), or download {PASCAL_KEYPOINTS_URL} and "
            f"extract it into {folder} (giving {folder / 'annotations'}); the photographs are "
            "PASCAL VOC 2011 trainval (corrlib.data.VOC2011Images says how to get them)"
        )

    def download(self) -> None:
        download_and_extract(
            PASCAL_KEYPOINTS_URL,
            self.folder,
            "voc2011_keypoints_Feb2012.tgz",
            marker="annotations",
        )
        VOC2011Images(self.root, self.split, download=True)

    def _check_exists(self) -> None:
        self._require_folder(self.folder / "annotations", self.folder)
        self._voc = VOC2011Images(self.root, self.split)  # its own clear error when missing

    @property
    def voc_folder(self) -> Path:
        """The VOC 2011 folder the photographs are read from."""
        return self._voc.folder

    def _objects(self) -> dict[str, list[dict]]:
        """The split's annotated objects by category (files in sorted order); fills
        :attr:`excluded`."""
        ids = set(self._voc.ids)
        files = sorted((self.folder / "annotations").glob("*/*.xml"))
        if not files:
            raise ValueError(
                f"{self.NAME}: no <category>/<image>_<object>.xml file under "
                f"{shown_path(self.folder / 'annotations')}; {self._how_to_get(self.folder)}."
            )
        old, other, person = (
            "2007 image (in no Main list)",
            "not in this split",
            "person of 2010 or 2011 (not curated)",
        )
        self.excluded = {old: 0, other: 0, person: 0}
        by_category: dict[str, list[dict]] = {}
        for path in files:
            ann = read_keypoint_annotation(path)
            if ann["image"] not in ids:
                self.excluded[old if ann["image"].startswith("2007_") else other] += 1
                continue
            if ann["category"] == "person" and ann["image"][:4] in ("2010", "2011"):
                self.excluded[person] += 1  # not curated (the annotators' README)
                continue
            by_category.setdefault(ann["category"], []).append(ann)
        if not by_category:
            raise ValueError(
                f"{self.NAME}: none of the {len(files)} annotation files names an image of VOC "
                f"2011 {self.split} ({shown_path(self.voc_folder / 'ImageSets' / 'Main')}); "
                "check that both come from the official archives."
            )
        return by_category

    def _draw_pairs(self) -> list[KeypointPair]:
        g = torch.Generator().manual_seed(self.seed)
        out = []
        objects = self._objects()
        for category in sorted(objects):
            objs = objects[category]
            if len({o["image"] for o in objs}) < 2:
                continue
            seen, kept = set(), 0
            draws = torch.randint(len(objs), (50 * self.pairs_per_class, 2), generator=g)
            for a, b in draws.tolist():
                if kept == self.pairs_per_class:
                    break
                oa, ob = objs[a], objs[b]
                if oa["image"] == ob["image"] or (a, b) in seen:
                    continue
                seen.add((a, b))
                common = sorted(set(oa["keypoints"]) & set(ob["keypoints"]))
                if len(common) < self.min_common:
                    continue
                kept += 1
                out.append(
                    KeypointPair(
                        src_name=f"JPEGImages/{oa['image']}.jpg",
                        trg_name=f"JPEGImages/{ob['image']}.jpg",
                        category=category,
                        src_kps=torch.tensor([oa["keypoints"][k] for k in common]),
                        trg_kps=torch.tensor([ob["keypoints"][k] for k in common]),
                        src_bbox=oa["bbox"].clone(),
                        trg_bbox=ob["bbox"].clone(),
                        info={"keypoints": common, "objects": (oa["voc_id"], ob["voc_id"])},
                    )
                )
        if not out:
            raise ValueError(
                f"{self.NAME} {self.split}: no pair of one category has {self.min_common} "
                f"keypoints visible in both objects; lower min_common or check "
                f"{shown_path(self.folder / 'annotations')}."
            )
        return out

    def _photo(self, name: str) -> torch.Tensor:
        return read_image(require_file(self.voc_folder / name, self.NAME, self._voc._how_to_get()))

    def _load(self, index: int) -> dict:
        p = self.pairs[index]
        return p.item(self._photo(p.src_name), self._photo(p.trg_name), index)
