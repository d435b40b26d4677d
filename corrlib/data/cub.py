"""Caltech-UCSD Birds-200-2011 (CUB): keypoint pairs of birds of one species, UCN's training data.

Expected layout under the data root (``root=None``: ``$CORRLIB_DATA``), the official archive
``CUB_200_2011.tgz`` extracted as it comes::

    <root>/CUB_200_2011/
        images.txt                 <image id> <path under images/>
        train_test_split.txt       <image id> <1: train, 0: test>
        image_class_labels.txt     <image id> <class id 1..200>
        classes.txt                <class id> <name>
        bounding_boxes.txt         <image id> <x> <y> <width> <height>
        parts/part_locs.txt        <image id> <part id 1..15> <x> <y> <visible 0/1>
        images/<class>/<name>.jpg

CUB has no official pair list (UCN evaluated on WarpNet's cleaned test pairs, of which no
maintained copy was found; see ``../shared/research/anchors.md`` 3.6), so this module defines
one and says how: for each species, the ordered pairs of two different images of the split are
shuffled with ``seed`` (``torch.Generator``) and the first ``pairs_per_class`` with at least
``min_common`` parts visible in both are kept (no pair twice); a pair's keypoints are those
parts, in part order. Part locations are read as 0-based pixel positions, as other public
loaders do (the dataset's README does not state a base). Boxes are
``(x, y, x + width - 1, y + height - 1)``.
Wah, Branson, Welinder, Perona & Belongie, *The Caltech-UCSD Birds-200-2011 Dataset*, 2011.
"""

from __future__ import annotations

from pathlib import Path

import torch

from corrlib.data._common import (
    DrawnPairDataset,
    KeypointPair,
    download_and_extract,
)

__all__ = ["CUB2011_MD5", "CUB2011_URL", "CUB2011Pairs"]

#: The official archive (CaltechDATA) and its published MD5.
CUB2011_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB2011_MD5 = "97eceeb196236b17998738112f37df78"

_FILES = (
    "images.txt",
    "train_test_split.txt",
    "image_class_labels.txt",
    "bounding_boxes.txt",
    "parts/part_locs.txt",
)


def _read_rows(path: Path, width: int, what: str) -> list[list[str]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < width:
                raise ValueError(
                    f"{path}, line {line_no}: expected {width} fields ({what}), got "
                    f"{line.strip()!r}. The file is corrupt or not CUB-200-2011's: re-download "
                    f"{CUB2011_URL}."
                )
            rows.append(parts)
    return rows


class CUB2011Pairs(DrawnPairDataset):
    """CUB-200-2011 keypoint pairs (see the module docstring for the pair rule).

    Args:
        root: the data root (``None``: ``$CORRLIB_DATA``); files in ``root/CUB_200_2011``.
        split: ``"train"`` or ``"test"`` (the official image split).
        transform: applied to each item.
        download: fetch and extract :data:`CUB2011_URL` (MD5-checked) when missing.
        pairs_per_class: ordered pairs drawn per species (None: 20).
        min_common: the fewest parts visible in both images a pair must have.
        seed: the seed of the draw.

    Items have the keypoint-pair layout of :mod:`corrlib.data` (0-based pixels, (x, y)).
    """

    NAME = "CUB-200-2011"
    FOLDER = "CUB_200_2011"
    SPLITS = ("train", "test")
    PAIRS_PER_CLASS = 20
    TREE = """
<root>/CUB_200_2011/
    images.txt  train_test_split.txt  image_class_labels.txt  bounding_boxes.txt
    parts/part_locs.txt  images/<class>/<name>.jpg
"""

    @classmethod
    def _how_to_get(cls, folder: Path) -> str:
        return (
            f"pass download=True (needs internet, 1.1 GB), or download {CUB2011_URL} (MD5 "
            f"{CUB2011_MD5}) and extract it into {folder.parent} (giving {folder})."
        )

    def download(self) -> None:
        download_and_extract(
            CUB2011_URL, self.root, "CUB_200_2011.tgz", md5=CUB2011_MD5, marker=self.FOLDER
        )

    def _check_exists(self) -> None:
        for name in _FILES:
            self._require_file(self.folder / name, self.folder)

    def _annotations(self):
        f = self.folder
        images = {int(r[0]): r[1] for r in _read_rows(f / "images.txt", 2, "id, path")}
        train = {int(r[0]): r[1] == "1" for r in _read_rows(f / _FILES[1], 2, "id, is_train")}
        label = {int(r[0]): int(r[1]) for r in _read_rows(f / _FILES[2], 2, "id, class")}
        boxes = {
            int(r[0]): [float(v) for v in r[1:5]]
            for r in _read_rows(f / _FILES[3], 5, "id, x, y, width, height")
        }
        parts: dict[int, dict[int, tuple[float, float]]] = {}
        for r in _read_rows(f / _FILES[4], 5, "image id, part id, x, y, visible"):
            if r[4] == "1":
                parts.setdefault(int(r[0]), {})[int(r[1])] = (float(r[2]), float(r[3]))
        return images, train, label, boxes, parts

    def _draw_pairs(self) -> list[KeypointPair]:
        images, train, label, boxes, parts = self._annotations()
        want = self.split == "train"
        by_class: dict[int, list[int]] = {}
        for i in sorted(images):
            if train.get(i) == want:
                by_class.setdefault(label[i], []).append(i)
        g = torch.Generator().manual_seed(self.seed)
        out = []
        for c in sorted(by_class):
            ids = by_class[c]
            if len(ids) < 2:
                continue
            candidates = [(a, b) for a in ids for b in ids if a != b]
            kept = 0
            for k in torch.randperm(len(candidates), generator=g).tolist():
                if kept == self.pairs_per_class:
                    break
                sa, sb = candidates[k]
                common = sorted(set(parts.get(sa, {})) & set(parts.get(sb, {})))
                if len(common) < self.min_common:
                    continue
                kept += 1
                out.append(
                    KeypointPair(
                        src_name=f"images/{images[sa]}",
                        trg_name=f"images/{images[sb]}",
                        category=images[sa].split("/")[0],
                        src_kps=torch.tensor([parts[sa][p] for p in common]),
                        trg_kps=torch.tensor([parts[sb][p] for p in common]),
                        src_bbox=_box(boxes[sa]),
                        trg_bbox=_box(boxes[sb]),
                        info={"parts": common, "ids": (sa, sb)},
                    )
                )
        if not out:
            raise ValueError(
                f"{self.NAME} {self.split}: no pair of one species has {self.min_common} parts "
                f"visible in both images; lower min_common or check {self.folder / _FILES[4]}."
            )
        return out

    def _load(self, index: int) -> dict:
        p = self.pairs[index]
        return p.item(self._read_image(p.src_name), self._read_image(p.trg_name), index)


def _box(xywh: list[float]) -> torch.Tensor:
    x, y, w, h = xywh
    return torch.tensor([x, y, x + w - 1.0, y + h - 1.0], dtype=torch.float32)
