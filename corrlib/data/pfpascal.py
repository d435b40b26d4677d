"""PF-PASCAL (Ham et al., TPAMI 2018) with the train/val/test split of NCNet (Rocco et al. 2018).

Image pairs over the 20 PASCAL VOC classes; the split lists hold 2,940 train rows (pairs
repeated, swapped and flagged for mirroring as augmentation), 308 val and 299 test pairs. The test
list carries the keypoints; train/val keypoints come from the per-image annotation files.
All coordinates in the files are MATLAB 1-based; corrlib converts them once, with
:func:`~corrlib.data._common.matlab_to_zero_based`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch

from corrlib._check import check_choice
from corrlib.data._common import (
    KeypointPair,
    PairDataset,
    download_and_extract,
    download_url,
    make_pair_item,
    matlab_to_zero_based,
    resolve_data_root,
)
from corrlib.data.images import first_point_outside, point_outside_text, shown_path
from corrlib.data.pfwillow import load_mat, numeric_array

__all__ = [
    "FLIP_MODES",
    "PFPASCAL_CATEGORIES",
    "PFPASCAL_IMAGES_URL",
    "PFPASCAL_PAIRS_SHA256",
    "PFPASCAL_PAIRS_URL",
    "PFPascal",
    "pair_overlap",
    "pfpascal_voc_ids",
    "read_pfpascal_annotation",
]

#: No publisher checksum exists for this zip: its SHA-256 is recorded at the first download in
#: ``PF-PASCAL/.corrlib-downloads.json`` and later downloads are checked against it.
PFPASCAL_IMAGES_URL = (
    "https://www.di.ens.fr/willow/research/proposalflow/dataset/PF-dataset-PASCAL.zip"
)
#: The split lists as published with NCNet (format with ``split``).
PFPASCAL_PAIRS_URL = (
    "https://raw.githubusercontent.com/ignacio-rocco/ncnet/master/datasets/pf-pascal/image_pairs/"
    "{split}_pairs.csv"
)
#: SHA-256 of NCNet's split lists, computed from a verified copy (no checksum is published); they
#: agree with the ``MANIFEST.sha256`` shipped with the shared copy of PF-PASCAL.
PFPASCAL_PAIRS_SHA256 = {
    "train": "e7604e992744706b0ec0ed9fad240b5e0e45f38c13eaf567af0338ec8a50f40f",
    "val": "a9dd7f303abc7ee31c51fe73f39923a6880d4dc9aa4d7af38d5f15a7345407f5",
    "test": "1891bfd52cac67898aa5b65a50818e315e5228b956fdda1baad400e6a89c6fe6",
}
#: The 20 PASCAL VOC classes; the pair lists' ``class`` column is 1-based into this tuple.
PFPASCAL_CATEGORIES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
#: What ``flip=1`` in a train/val row mirrors: both images (NCNet's loader) or the source only.
FLIP_MODES = ("both", "source")
_IMAGES = "PF-dataset-PASCAL"
_FIX = f"see the PF-PASCAL docs, corrlib.data.PFPascal: {PFPASCAL_IMAGES_URL}"


def read_pfpascal_annotation(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``Annotations/<class>/<image>.mat``: keypoints ``(K, 2)`` and box ``(4,)``, 0-based.

    ``kps`` rows are the class's K keypoint slots, ``NaN`` where the point is not visible;
    ``bbox`` is x0, y0, x1, y1. Both are MATLAB 1-based in the file and returned 0-based, float32.
    Raises ``ValueError`` naming the file when it is truncated or not a ``.mat`` file, lacks a
    key, holds a non-numeric array, an infinite keypoint or a non-finite box.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PF-PASCAL annotation {shown_path(path)} does not exist.")
    mat = load_mat(path, "PF-PASCAL", _FIX)
    missing = [k for k in ("kps", "bbox") if k not in mat]
    if missing:
        raise ValueError(
            f"{shown_path(path)} lacks {missing} (keys: "
            f"{sorted(k for k in mat if not k.startswith('__'))}); the file is corrupt or not a "
            "PF-PASCAL annotation."
        )
    kps = numeric_array(mat["kps"], path, "kps", "PF-PASCAL", _FIX).reshape(-1, 2)
    bbox = numeric_array(mat["bbox"], path, "bbox", "PF-PASCAL", _FIX).reshape(-1)
    if bbox.shape != (4,):
        raise ValueError(
            f"{shown_path(path)}: 'bbox' must hold 4 numbers (x0, y0, x1, y1), got {bbox.size}."
        )
    if np.isinf(kps).any():
        i = int(np.flatnonzero(np.isinf(kps).any(axis=1))[0])
        raise ValueError(
            f"{shown_path(path)}: 'kps' slot {i} (0-based) is {kps[i].tolist()}, infinite; only "
            f"NaN marks a keypoint as invisible, so the file is corrupt: re-download it ({_FIX})."
        )
    if not np.isfinite(bbox).all():
        raise ValueError(
            f"{shown_path(path)}: 'bbox' {bbox.tolist()} is not 4 finite numbers (x0, y0, x1, "
            f"y1); the file is corrupt: re-download it ({_FIX})."
        )
    return (
        matlab_to_zero_based(torch.as_tensor(kps, dtype=torch.float32)),
        matlab_to_zero_based(torch.as_tensor(bbox, dtype=torch.float32)),
    )


def _hflip_kps(kps: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror keypoints ``(N, 2)`` of an image of ``width``: x -> W - 1 - x (pixel centres)."""
    out = kps.clone()
    out[:, 0] = width - 1 - kps[:, 0]
    return out


def _hflip_bbox(bbox: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror a box ``(4,)`` x0, y0, x1, y1: the new x0 is the image of the old x1."""
    x0, y0, x1, y1 = bbox.tolist()
    return torch.tensor([width - 1 - x1, y0, width - 1 - x0, y1], dtype=torch.float32)


def _parse_coords(text: str, path: Path, lineno: int, column: str) -> torch.Tensor:
    """A ``;``-separated coordinate list of the test pair list as float32 ``(N,)``: all finite
    (the list marks no missing keypoint, so NaN or inf means a corrupt file)."""
    try:
        vals = torch.tensor([float(v) for v in text.split(";") if v.strip()], dtype=torch.float32)
    except ValueError as err:
        raise ValueError(
            f"{shown_path(path)}, line {lineno}, column {column}: bad coordinate list ({err})."
        ) from err
    bad = (~torch.isfinite(vals)).nonzero()
    if bad.numel():
        k = int(bad[0])
        raise ValueError(
            f"{shown_path(path)}, line {lineno}, column {column}, value {k + 1}: coordinate "
            f"{float(vals[k])} is not finite; the PF-PASCAL pair list holds only annotated "
            "keypoints (it marks no missing one), so a NaN or infinite coordinate means the file "
            "is corrupt: re-download it."
        )
    return vals


class PFPascal(PairDataset):
    """PF-PASCAL keypoint pairs, splits ``"train"``, ``"val"``, ``"test"`` (NCNet's lists).

    Expected layout (``root`` is the data root that holds ``PF-PASCAL/``)::

        <root>/PF-PASCAL/
        ├── image_pairs/
        │   ├── train_pairs.csv   source_image,target_image,class,flip
        │   ├── val_pairs.csv     source_image,target_image,class,flip
        │   └── test_pairs.csv    source_image,target_image,class,XA,YA,XB,YB ("x1;x2;...")
        └── PF-dataset-PASCAL/
            ├── JPEGImages/2007_000027.jpg ...
            └── Annotations/<class>/<image>.mat   kps (K x 2, NaN = invisible), bbox (1 x 4)

    ``class`` is 1-based into :data:`PFPASCAL_CATEGORIES`; all coordinates in the files are
    MATLAB 1-based and converted to 0-based. Test keypoints come from ``test_pairs.csv``; train/val
    keypoints are the slots visible in *both* images' ``.mat`` files. Boxes always come from the
    ``.mat`` files (so ``Annotations/`` is needed for every split).

    Items are dicts: ``src_img``/``trg_img`` uint8 ``(3, H, W)``; ``src_kps``/``trg_kps`` float32
    ``(N, 2)`` pixels, 0-based, (x, y); ``src_bbox``/``trg_bbox`` ``(4,)`` x0, y0, x1, y1;
    ``src_size``/``trg_size`` ``(H, W)``; ``category``; ``src_name``/``trg_name`` as in the list
    (``"PF-dataset-PASCAL/JPEGImages/2011_001407.jpg"``); ``pair_index``; ``flip``.

    Flip: a train/val row with ``flip=1`` is returned mirrored horizontally (x -> W - 1 - x, for
    the image, its keypoints and its box). ``flip_mode="both"`` (default) mirrors both images, as
    NCNet's loader does with these lists (the pair stays geometrically consistent: pure
    augmentation); ``flip_mode="source"`` mirrors only the source, giving a mirrored pair.
    ``item["flip"]`` reports the list's flag; ``pairs`` keeps the unflipped coordinates.

    Args:
        root: data root (``None``: ``$CORRLIB_DATA``).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"test-leakfree"``: the test rows whose
            unordered image pair does not occur in ``train_pairs.csv`` (204 of the 299; 95 test
            rows are training pairs). Report both: ``test`` for comparison with published
            numbers, ``test-leakfree`` for what a model does on pairs it never trained on.
        transform: callable applied to each item dict.
        download: fetch the official files when missing (needs internet).
        flip_mode: ``"both"`` or ``"source"`` (see Flip).

    Paper: Ham et al., "Proposal Flow: Semantic Correspondences from Object Proposals", TPAMI 2018.
    """

    NAME = "PF-PASCAL"
    FOLDER = "PF-PASCAL"
    SPLITS = ("train", "val", "test", "test-leakfree")
    TREE = """\
<root>/PF-PASCAL/
├── image_pairs/{train,val,test}_pairs.csv
└── PF-dataset-PASCAL/
    ├── JPEGImages/<image>.jpg
    └── Annotations/<class>/<image>.mat"""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "test",
        transform=None,
        download: bool = False,
        *,
        flip_mode: str = "both",
    ) -> None:
        self.flip_mode = check_choice(flip_mode, "flip_mode", FLIP_MODES)
        super().__init__(root, split, transform, download)

    @classmethod
    def _how_to_get(cls, folder: Path) -> str:
        return (
            "pass download=True (needs internet), or download "
            f"{PFPASCAL_IMAGES_URL} and unzip it into {folder} (giving {folder / _IMAGES} with "
            "JPEGImages/ and Annotations/), and save the pair lists "
            f"{PFPASCAL_PAIRS_URL.format(split='{train,val,test}')} into {folder / 'image_pairs'}."
        )

    def download(self) -> None:
        """Fetch ``PF-dataset-PASCAL.zip`` (extracted) and the three pair lists; skips what
        exists."""
        download_and_extract(PFPASCAL_IMAGES_URL, self.folder, "PF-dataset-PASCAL.zip", None)
        for split in PFPASCAL_PAIRS_SHA256:  # the published lists (test-leakfree is derived)
            download_url(
                PFPASCAL_PAIRS_URL.format(split=split),
                self.folder / "image_pairs" / f"{split}_pairs.csv",
                PFPASCAL_PAIRS_SHA256[split],
            )

    def _check_exists(self) -> None:
        self._require_folder(self.folder, self.folder)
        for split in _LIST_SPLITS[self.split]:
            self._require_file(self.folder / "image_pairs" / f"{split}_pairs.csv", self.folder)
        self._require_folder(self.folder / _IMAGES / "JPEGImages", self.folder)
        self._require_folder(self.folder / _IMAGES / "Annotations", self.folder)

    @classmethod
    def read_pairs(
        cls, root: str | os.PathLike | None = None, split: str = "test"
    ) -> list[KeypointPair]:
        """Parse ``image_pairs/<split>_pairs.csv`` (needs no image): :class:`KeypointPair` records.

        Test records carry 0-based keypoints; train/val records carry ``flip`` and no keypoints
        (they live in the annotation files); ``info["line"]`` is the row's line. Raises
        ``ValueError`` naming the file and line for a row whose XA, YA, XB, YB lists differ in
        length, hold a NaN or infinite coordinate (the list marks no missing keypoint; only the
        ``.mat`` files mark invisible ones, with NaN) or whose class is not in 1..20, and naming
        the file when it lists no pair. Keypoints outside their image are refused when an item is
        loaded (1 px tolerance).
        """
        split = cls._check_split(split)
        if split == "test-leakfree":
            train = {frozenset((p.src_name, p.trg_name)) for p in cls.read_pairs(root, "train")}
            test = cls.read_pairs(root, "test")
            return [p for p in test if frozenset((p.src_name, p.trg_name)) not in train]
        folder = resolve_data_root(root) / cls.FOLDER
        path = cls._require_file(folder / "image_pairs" / f"{split}_pairs.csv", folder)
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                pairs = cls._parse_list(path, split, csv.DictReader(f))
        except (UnicodeDecodeError, csv.Error) as err:
            raise ValueError(
                f"{shown_path(path)} is not a UTF-8 CSV file ({err}); re-download it from "
                f"{PFPASCAL_PAIRS_URL.format(split=split)}."
            ) from err
        if not pairs:
            raise ValueError(
                f"{shown_path(path)} lists no pair (the file is empty or holds only a header); "
                "an empty benchmark cannot be scored. Re-download it from "
                f"{PFPASCAL_PAIRS_URL.format(split=split)}."
            )
        return pairs

    @classmethod
    def _parse_list(cls, path: Path, split: str, reader: csv.DictReader) -> list[KeypointPair]:
        need = (
            ["source_image", "target_image", "class", "XA", "YA", "XB", "YB"]
            if split == "test"
            else ["source_image", "target_image", "class", "flip"]
        )
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{shown_path(path)}: missing columns {missing} (header: {reader.fieldnames}); "
                f"expected {need}. Re-download it from {PFPASCAL_PAIRS_URL.format(split=split)}."
            )
        pairs: list[KeypointPair] = []
        for row in reader:
            lineno = reader.line_num
            short = [c for c in need if row.get(c) is None]
            if short:
                raise ValueError(
                    f"{shown_path(path)}, line {lineno}: the row has no {short} (fewer columns "
                    f"than the header {reader.fieldnames}). The file is corrupt: re-download it "
                    f"from {PFPASCAL_PAIRS_URL.format(split=split)}."
                )
            try:
                cls_id = int(row["class"])
            except ValueError:
                cls_id = 0
            if not 1 <= cls_id <= len(PFPASCAL_CATEGORIES):
                raise ValueError(
                    f"{shown_path(path)}, line {lineno}: class {row['class']!r} is not a 1-based "
                    f"index into the {len(PFPASCAL_CATEGORIES)} PASCAL VOC classes."
                )
            category = PFPASCAL_CATEGORIES[cls_id - 1]
            src_name, trg_name = row["source_image"].strip(), row["target_image"].strip()
            if split != "test":
                flip = row["flip"].strip() not in ("0", "")
                pairs.append(
                    KeypointPair(src_name, trg_name, category, flip=flip, info={"line": lineno})
                )
                continue
            xa, ya, xb, yb = (
                _parse_coords(row[c], path, lineno, c) for c in ("XA", "YA", "XB", "YB")
            )
            if not len(xa) == len(ya) == len(xb) == len(yb):
                raise ValueError(
                    f"{shown_path(path)}, line {lineno} (pair {len(pairs)}): keypoint lists "
                    f"differ in length (XA {len(xa)}, YA {len(ya)}, XB {len(xb)}, YB "
                    f"{len(yb)}); every source keypoint needs one target keypoint. The file is "
                    "corrupt: re-download it."
                )
            pairs.append(
                KeypointPair(
                    src_name,
                    trg_name,
                    category,
                    src_kps=matlab_to_zero_based(torch.stack([xa, ya], dim=1)),
                    trg_kps=matlab_to_zero_based(torch.stack([xb, yb], dim=1)),
                    info={"line": lineno},
                )
            )
        return pairs

    @property
    def categories(self) -> list[str]:
        """Classes present in this split, in PASCAL VOC order."""
        present = {p.category for p in self.pairs}
        return [c for c in PFPASCAL_CATEGORIES if c in present]

    def _annotation(self, name: str, category: str) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.folder / _IMAGES / "Annotations" / category / (Path(name).stem + ".mat")
        self._require_file(path, self.folder)
        return read_pfpascal_annotation(path)

    def _check_inside(
        self, index: int, p: KeypointPair, kps: torch.Tensor, img: torch.Tensor, name: str, side
    ) -> None:
        """Refuse a keypoint more than 1 px outside its (unflipped) image, naming where it is."""
        size = (int(img.shape[1]), int(img.shape[2]))
        i = first_point_outside(kps, size)
        if i is None:
            return
        if p.src_kps is not None:  # test: from the pair list
            listed = _LIST_SPLITS[self.split][0]
            where = f"image_pairs/{listed}_pairs.csv, line {p.info.get('line')}"
        else:
            where = shown_path(
                Path(_IMAGES) / "Annotations" / p.category / (Path(name).stem + ".mat")
            )
        raise ValueError(
            f"PF-PASCAL {self.split} pair {index} ({shown_path(p.src_name)} -> "
            f"{shown_path(p.trg_name)}; {where}): {side} {point_outside_text(kps, i, size, name)}. "
            "The annotation does not match the image or is corrupt: re-download the dataset "
            f"({_FIX})."
        )

    def _load(self, index: int) -> dict:
        p = self.pairs[index]
        src_img, trg_img = self._read_image(p.src_name), self._read_image(p.trg_name)
        src_all, src_bbox = self._annotation(p.src_name, p.category)
        trg_all, trg_bbox = self._annotation(p.trg_name, p.category)
        if p.src_kps is not None:
            src_kps, trg_kps = p.src_kps.clone(), p.trg_kps.clone()
        else:
            if src_all.shape != trg_all.shape:
                raise ValueError(
                    f"PF-PASCAL annotations of {p.src_name} and {p.trg_name} ({p.category}) have "
                    f"{src_all.shape[0]} and {trg_all.shape[0]} keypoint slots; same-class images "
                    "must have the same number. The annotation files are corrupt: re-extract them."
                )
            visible = ~(src_all.isnan().any(dim=1) | trg_all.isnan().any(dim=1))  # (K,)
            src_kps, trg_kps = src_all[visible], trg_all[visible]
        self._check_inside(index, p, src_kps, src_img, p.src_name, "source")
        self._check_inside(index, p, trg_kps, trg_img, p.trg_name, "target")
        if p.flip:
            src_w = src_img.shape[2]
            src_img = src_img.flip(dims=[2])
            src_kps, src_bbox = _hflip_kps(src_kps, src_w), _hflip_bbox(src_bbox, src_w)
            if self.flip_mode == "both":
                trg_w = trg_img.shape[2]
                trg_img = trg_img.flip(dims=[2])
                trg_kps, trg_bbox = _hflip_kps(trg_kps, trg_w), _hflip_bbox(trg_bbox, trg_w)
        return make_pair_item(
            src_img=src_img.contiguous(),
            trg_img=trg_img.contiguous(),
            src_kps=src_kps,
            trg_kps=trg_kps,
            src_bbox=src_bbox,
            trg_bbox=trg_bbox,
            category=p.category,
            src_name=p.src_name,
            trg_name=p.trg_name,
            pair_index=index,
            flip=p.flip,
        )


#: The list files each split reads.
_LIST_SPLITS = {
    "train": ("train",),
    "val": ("val",),
    "test": ("test",),
    "test-leakfree": ("test", "train"),
}


def pfpascal_voc_ids(root: str | os.PathLike | None = None, splits=("val", "test")) -> set[str]:
    """The VOC image ids (``"2009_000004"``) of PF-PASCAL's ``splits`` lists: the images a model
    trained on VOC must not see when it is evaluated on PF-PASCAL (SFNet's code removes them from
    its VOC training masks). Reads the lists only."""
    ids = set()
    for split in splits:
        for p in PFPascal.read_pairs(root, split):
            ids.update(Path(n).stem for n in (p.src_name, p.trg_name))
    return ids


def pair_overlap(
    root: str | os.PathLike | None = None, split: str = "test", against: str = "train"
) -> dict[str, int]:
    """How much PF-PASCAL's ``split`` pair list overlaps ``against`` (from the CSVs only).

    Returns counts: ``pairs`` / ``against_pairs`` (rows), ``images`` / ``against_images`` (distinct
    images), ``shared_images``, ``pairs_sharing_an_image`` (rows of ``split`` with at least one
    image that also appears in ``against``) and ``pairs_in_against`` (rows of ``split`` whose
    unordered image pair also appears in ``against``). Works without images.
    """
    check_choice(split, "split", PFPascal.SPLITS)
    check_choice(against, "against", PFPascal.SPLITS[:3])
    a = PFPascal.read_pairs(root, split)
    b = PFPascal.read_pairs(root, against)
    a_images = {n for p in a for n in (p.src_name, p.trg_name)}
    b_images = {n for p in b for n in (p.src_name, p.trg_name)}
    b_pairs = {frozenset((p.src_name, p.trg_name)) for p in b}
    return {
        "pairs": len(a),
        "against_pairs": len(b),
        "images": len(a_images),
        "against_images": len(b_images),
        "shared_images": len(a_images & b_images),
        "pairs_sharing_an_image": sum(p.src_name in b_images or p.trg_name in b_images for p in a),
        "pairs_in_against": sum(frozenset((p.src_name, p.trg_name)) in b_pairs for p in a),
    }
