"""SPair-71k (Min et al., 2019): 70,958 keypoint pairs over 18 classes, with difficulty flags.

Each pair has its own JSON annotation (keypoints already matched between the two images, boxes,
image sizes, and flags for viewpoint/scale variation, truncation, occlusion and mirroring).
SPair coordinates are 0-based pixels already: no conversion.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from corrlib.data._common import (
    KeypointPair,
    PairDataset,
    download_and_extract,
    resolve_data_root,
)
from corrlib.data.images import first_point_outside, point_outside_text, shown_path

__all__ = ["SPAIR_CATEGORIES", "SPAIR_DIFFICULTY_FLAGS", "SPAIR_URL", "SPair71k"]

#: No publisher checksum exists: the archive's SHA-256 is recorded at the first download in
#: ``<root>/.corrlib-downloads.json`` and later downloads are checked against it.
SPAIR_URL = "https://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz"
#: The 18 SPair-71k classes (PASCAL VOC without diningtable and sofa).
SPAIR_CATEGORIES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor",
)  # fmt: skip
#: Per-pair difficulty annotations, kept in ``KeypointPair.info``.
SPAIR_DIFFICULTY_FLAGS = (
    "viewpoint_variation",
    "scale_variation",
    "truncation",
    "occlusion",
    "mirror",
)


def _kps_tensor(value: Any, path: Path, key: str) -> torch.Tensor:
    try:
        t = torch.tensor(value, dtype=torch.float32).reshape(-1, 2)  # (N, 2) x, y
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"{shown_path(path)}: '{key}' must be a list of [x, y] pairs ({err})."
        ) from err
    bad = (~torch.isfinite(t).all(dim=1)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(
            f"{shown_path(path)}: '{key}'[{i}] is {t[i].tolist()}, not finite; a SPair-71k pair "
            "annotation lists only matched, visible keypoints, so a NaN or infinite coordinate "
            "means the file is corrupt: re-extract the dataset."
        )
    return t


def _box_tensor(value: Any, path: Path, key: str) -> torch.Tensor:
    try:
        t = torch.tensor(value, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{shown_path(path)}: '{key}' must be [x0, y0, x1, y1] ({err}).") from err
    if t.shape != (4,) or not torch.isfinite(t).all():
        raise ValueError(
            f"{shown_path(path)}: '{key}' must be 4 finite numbers [x0, y0, x1, y1], got {value!r}."
        )
    return t


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{shown_path(path)} is not UTF-8 text ({err}); the file is corrupt: re-extract the "
            "dataset."
        ) from err


class SPair71k(PairDataset):
    """SPair-71k keypoint pairs, splits ``"trn"`` (alias ``"train"``), ``"val"``, ``"test"``.

    Expected layout (``root`` is the data root that holds ``SPair-71k/``)::

        <root>/SPair-71k/
        ├── JPEGImages/<category>/2008_000008.jpg ...
        ├── Layout/large/{trn,val,test}.txt  one pair per line:
        │                                    000001-2008_000008-2008_000017:aeroplane
        └── PairAnnotation/{trn,val,test}/<line>.json

    Each JSON holds ``src_imname``, ``trg_imname``, ``category``, ``src_kps``/``trg_kps`` (matched
    lists of [x, y]), ``src_bndbox``/``trg_bndbox`` ([x0, y0, x1, y1]), ``src_imsize``/
    ``trg_imsize`` ([w, h, c]) and the difficulty flags :data:`SPAIR_DIFFICULTY_FLAGS`. All
    coordinates are 0-based pixels already.

    Items are dicts: ``src_img``/``trg_img`` uint8 ``(3, H, W)``; ``src_kps``/``trg_kps`` float32
    ``(N, 2)`` pixels, 0-based, (x, y); ``src_bbox``/``trg_bbox`` ``(4,)`` from the annotation;
    ``src_size``/``trg_size`` ``(H, W)``; ``category``; ``src_name``/``trg_name``
    (``"JPEGImages/<category>/<imname>"``); ``pair_index``; ``flip`` (always False: SPair's
    ``mirror`` flag marks a mirrored *viewpoint*, nothing is flipped). Difficulty flags are in
    ``pairs[i].info`` (``pairs`` reads every JSON of the split once; ``len`` reads only the layout).
    An empty layout file, a NaN or infinite keypoint or box, and (when an item is loaded) a
    keypoint more than 1 px outside its image raise ``ValueError`` naming the file.

    Args:
        root: data root (``None``: ``$CORRLIB_DATA``).
        split: ``"trn"`` (or ``"train"``), ``"val"``, ``"test"``.
        transform: callable applied to each item dict.
        download: fetch the official archive when missing (needs internet, about 200 MB).

    Paper: Min et al., "SPair-71k: A Large-scale Benchmark for Semantic Correspondence", 2019.
    """

    NAME = "SPair-71k"
    FOLDER = "SPair-71k"
    SPLITS = ("trn", "val", "test")
    SPLIT_ALIASES = {"train": "trn"}  # noqa: RUF012 (read-only class constant)
    EAGER_PAIRS = False  # one JSON per pair: parsed on demand
    TREE = """\
<root>/SPair-71k/
├── JPEGImages/<category>/<image>.jpg
├── Layout/large/{trn,val,test}.txt
└── PairAnnotation/{trn,val,test}/<line>.json"""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "test",
        transform=None,
        download: bool = False,
    ) -> None:
        super().__init__(root, split, transform, download)
        self._lines = self._read_layout(self.folder, self.split)

    @classmethod
    def _how_to_get(cls, folder: Path) -> str:
        return (
            f"pass download=True (needs internet), or download {SPAIR_URL} and extract it into "
            f"{folder.parent} (it unpacks to {folder})."
        )

    def download(self) -> None:
        """Fetch and extract ``SPair-71k.tar.gz`` into the data root; skipped if the folder
        exists."""
        download_and_extract(SPAIR_URL, self.root, "SPair-71k.tar.gz", None)

    def _check_exists(self) -> None:
        self._require_folder(self.folder, self.folder)
        self._require_file(self.folder / "Layout" / "large" / f"{self.split}.txt", self.folder)
        self._require_folder(self.folder / "PairAnnotation" / self.split, self.folder)
        self._require_folder(self.folder / "JPEGImages", self.folder)

    @classmethod
    def _read_layout(cls, folder: Path, split: str) -> list[str]:
        path = cls._require_file(folder / "Layout" / "large" / f"{split}.txt", folder)
        lines = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
        if not lines:
            raise ValueError(
                f"{shown_path(path)} lists no pair (the file is empty); an empty benchmark cannot "
                f"be scored. Re-extract the dataset from {SPAIR_URL}."
            )
        return lines

    @classmethod
    def _read_annotation(cls, folder: Path, split: str, line: str) -> KeypointPair:
        path = cls._require_file(folder / "PairAnnotation" / split / f"{line}.json", folder)
        try:
            ann = json.loads(_read_text(path))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{shown_path(path)} is not valid JSON ({err}); re-extract the dataset."
            ) from err
        if not isinstance(ann, dict):
            raise ValueError(
                f"{shown_path(path)} holds a JSON {type(ann).__name__}, not an object; it is not "
                "a SPair-71k pair annotation: re-extract the dataset."
            )
        need = (
            "src_imname",
            "trg_imname",
            "category",
            "src_kps",
            "trg_kps",
            "src_bndbox",
            "trg_bndbox",
        )
        missing = [k for k in need if k not in ann]
        if missing:
            raise ValueError(
                f"{shown_path(path)} lacks keys {missing}; it is not a SPair-71k pair annotation."
            )
        src_kps = _kps_tensor(ann["src_kps"], path, "src_kps")
        trg_kps = _kps_tensor(ann["trg_kps"], path, "trg_kps")
        if src_kps.shape != trg_kps.shape:
            raise ValueError(
                f"{shown_path(path)}: {src_kps.shape[0]} source but {trg_kps.shape[0]} target "
                "keypoints; every source keypoint needs one target keypoint. Re-extract the "
                "dataset."
            )
        cat = ann["category"]
        info = {k: int(ann[k]) for k in SPAIR_DIFFICULTY_FLAGS if k in ann}
        for k in ("src_imsize", "trg_imsize"):
            if k in ann:
                info[k] = tuple(int(v) for v in ann[k])
        return KeypointPair(
            f"JPEGImages/{cat}/{ann['src_imname']}",
            f"JPEGImages/{cat}/{ann['trg_imname']}",
            cat,
            src_kps=src_kps,
            trg_kps=trg_kps,
            src_bbox=_box_tensor(ann["src_bndbox"], path, "src_bndbox"),
            trg_bbox=_box_tensor(ann["trg_bndbox"], path, "trg_bndbox"),
            info=info,
        )

    @classmethod
    def read_pairs(
        cls, root: str | os.PathLike | None = None, split: str = "test"
    ) -> list[KeypointPair]:
        """Parse the layout and every pair JSON of ``split`` (needs no image)."""
        split = cls._check_split(split)
        folder = resolve_data_root(root) / cls.FOLDER
        return [
            cls._read_annotation(folder, split, line) for line in cls._read_layout(folder, split)
        ]

    def __len__(self) -> int:
        return len(self._lines)

    @property
    def categories(self) -> list[str]:
        """Classes present in this split (from the layout file), in SPair order."""
        present = {line.rsplit(":", 1)[-1] for line in self._lines}
        return [c for c in SPAIR_CATEGORIES if c in present] + sorted(
            present - set(SPAIR_CATEGORIES)
        )

    def _load(self, index: int) -> dict:
        if self._pairs is not None:
            p = self._pairs[index]
        else:
            p = self._read_annotation(self.folder, self.split, self._lines[index])
        src_img, trg_img = self._read_image(p.src_name), self._read_image(p.trg_name)
        for side, kps, name, img in (
            ("source", p.src_kps, p.src_name, src_img),
            ("target", p.trg_kps, p.trg_name, trg_img),
        ):
            size = (int(img.shape[1]), int(img.shape[2]))
            i = first_point_outside(kps, size)
            if i is not None:
                ann = f"PairAnnotation/{self.split}/{self._lines[index]}.json"
                raise ValueError(
                    f"SPair-71k {self.split} pair {index} ({shown_path(ann)}): {side} "
                    f"{point_outside_text(kps, i, size, name)}. The annotation does not match "
                    "the image or is corrupt: re-extract the dataset."
                )
        item = p.item(src_img, trg_img, index)
        # the pair's difficulty flags, for the per-flag breakdown of corrlib.eval
        item["difficulty"] = {f: int(p.info[f]) for f in SPAIR_DIFFICULTY_FLAGS if f in p.info}
        return item
