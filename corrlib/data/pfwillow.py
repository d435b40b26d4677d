"""PF-WILLOW (Proposal Flow "PF-dataset", Ham et al., CVPR 2016): 900 test pairs, 10 keypoints.

Five object classes split into ten sub-classes by viewpoint and background (``car(G)``,
``duck(S)``, ...); every pair joins two images of one sub-class. The keypoints of the pair list
and of the per-image ``.mat`` files are MATLAB 1-based; corrlib converts them once, with
:func:`~corrlib.data._common.matlab_to_zero_based`.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import scipy.io
import torch

from corrlib.data._common import (
    KeypointPair,
    PairDataset,
    download_and_extract,
    download_url,
    matlab_to_zero_based,
    resolve_data_root,
)
from corrlib.data.images import first_point_outside, point_outside_text, shown_path

__all__ = ["PFWILLOW_IMAGES_URL", "PFWILLOW_PAIRS_URL", "PFWillow", "read_pfwillow_kps"]

#: No publisher checksum exists for either file: the SHA-256 of each is recorded at the first
#: download in ``PF-WILLOW/.corrlib-downloads.json`` and later downloads are checked against it.
PFWILLOW_IMAGES_URL = "https://www.di.ens.fr/willow/research/proposalflow/dataset/PF-dataset.zip"
PFWILLOW_PAIRS_URL = (
    "https://www.di.ens.fr/willow/research/cnngeometric/other_resources/test_pairs_pf.csv"
)
_PAIR_LIST = "test_pairs_pf.csv"


def load_mat(path: Path, dataset: str, fix: str) -> dict:
    """``scipy.io.loadmat(path)``, with every read failure as a ``ValueError`` naming the file.

    scipy reports a truncated or foreign file as ``Unknown mat file type``, ``MatReadError``,
    ``OSError: could not read bytes`` and more, none naming the file; ``dataset`` and ``fix``
    (where to get the file again) complete the message.
    """
    try:
        return scipy.io.loadmat(path)
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5)
        raise ValueError(
            f"{shown_path(path)} is a MATLAB v7.3 (HDF5) .mat file ({err}); {dataset} annotations "
            f"are v5 files: re-download it ({fix})."
        ) from err
    except Exception as err:  # scipy raises many types for a truncated or foreign file
        raise ValueError(
            f"{shown_path(path)}: the file is truncated or not a MATLAB .mat file "
            f"({type(err).__name__}: {err}); re-download it ({fix})."
        ) from err


def numeric_array(value: object, path: Path, key: str, dataset: str, fix: str) -> np.ndarray:
    """``value`` (an entry of a loaded ``.mat``) as float64, or a ``ValueError`` naming it."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{shown_path(path)}: {key!r} is not a numeric array (dtype "
            f"{getattr(value, 'dtype', type(value).__name__)}); the file is corrupt or not a "
            f"{dataset} annotation: re-download it ({fix})."
        ) from err


_WILLOW_FIX = f"see the PF-WILLOW docs, corrlib.data.PFWillow: {PFWILLOW_IMAGES_URL}"


def read_pfwillow_kps(path: str | os.PathLike) -> torch.Tensor:
    """Keypoints of one PF-WILLOW image from its ``.mat`` file: ``(N, 2)`` float32, 0-based.

    The file holds ``pts_coord`` (2 x N, row 0 = x, row 1 = y, MATLAB 1-based). Raises
    ``ValueError`` naming the file when it is truncated or not a ``.mat`` file, lacks a numeric
    2 x N ``pts_coord``, or holds a NaN or infinite coordinate (PF-WILLOW annotates every
    keypoint).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PF-WILLOW annotation {shown_path(path)} does not exist.")
    mat = load_mat(path, "PF-WILLOW", _WILLOW_FIX)
    if "pts_coord" not in mat or mat["pts_coord"].ndim != 2 or mat["pts_coord"].shape[0] != 2:
        raise ValueError(
            f"{shown_path(path)} has no 2 x N array 'pts_coord' (keys: "
            f"{sorted(k for k in mat if not k.startswith('__'))}); the file is corrupt or not a "
            "PF-WILLOW annotation."
        )
    pts = numeric_array(mat["pts_coord"], path, "pts_coord", "PF-WILLOW", _WILLOW_FIX)
    finite = np.isfinite(pts)
    if pts.size and not finite.any():
        raise ValueError(
            f"{shown_path(path)}: every 'pts_coord' value is NaN or infinite, so the image has no "
            f"keypoint; the file is corrupt: re-download it ({_WILLOW_FIX})."
        )
    if not finite.all():
        i = int(np.flatnonzero(~finite.all(axis=0))[0])
        raise ValueError(
            f"{shown_path(path)}: keypoint {i} (0-based) of 'pts_coord' is ({pts[0, i]}, "
            f"{pts[1, i]}); PF-WILLOW annotates every keypoint, so a NaN or infinite coordinate "
            f"means the file is corrupt: re-download it ({_WILLOW_FIX})."
        )
    kps = torch.as_tensor(pts.T, dtype=torch.float32)  # (N, 2) (x, y)
    return matlab_to_zero_based(kps)


class PFWillow(PairDataset):
    """PF-WILLOW keypoint pairs (only split ``"test"``).

    Expected layout (``root`` is the data root that holds ``PF-WILLOW/``)::

        <root>/PF-WILLOW/
        ├── test_pairs_pf.csv      imageA, imageB, 10 XA, 10 YA, 10 XB, 10 YB (by position)
        └── PF-dataset/
            ├── car(G)/Cars_006a.png   + Cars_006a.mat (pts_coord 2 x 10)
            ├── duck(S)/...
            └── ...

    Items are dicts: ``src_img``/``trg_img`` uint8 ``(3, H, W)``; ``src_kps``/``trg_kps`` float32
    ``(N, 2)``, pixels, 0-based, (x, y) (MATLAB 1-based in the files, converted); ``src_bbox``/
    ``trg_bbox`` ``(4,)`` x0, y0, x1, y1: PF-WILLOW has no box annotation, so this is the tight
    box around the keypoints; ``src_size``/``trg_size`` ``(H, W)``; ``category`` the sub-class
    folder (e.g. ``"car(G)"``); ``src_name``/``trg_name`` as in the pair list
    (``"PF-dataset/car(G)/Cars_006a.png"``); ``pair_index``; ``flip`` (always False).
    ``transform``, if given, is applied to the whole dict.

    Args:
        root: data root (``None``: ``$CORRLIB_DATA``).
        split: ``"test"``.
        transform: callable applied to each item dict.
        download: fetch the official files when missing (needs internet).

    Paper: Ham et al., "Proposal Flow", CVPR 2016.
    """

    NAME = "PF-WILLOW"
    FOLDER = "PF-WILLOW"
    SPLITS = ("test",)
    TREE = """\
<root>/PF-WILLOW/
├── test_pairs_pf.csv
└── PF-dataset/<sub-class>/<name>.png (+ <name>.mat)"""

    @classmethod
    def _how_to_get(cls, folder: Path) -> str:
        return (
            "pass download=True (needs internet), or download "
            f"{PFWILLOW_IMAGES_URL} and unzip it into {folder} (giving {folder / 'PF-dataset'}), "
            f"and save {PFWILLOW_PAIRS_URL} as {folder / _PAIR_LIST}."
        )

    def download(self) -> None:
        """Fetch ``PF-dataset.zip`` (extracted) and ``test_pairs_pf.csv``; skips what exists."""
        download_and_extract(PFWILLOW_IMAGES_URL, self.folder, "PF-dataset.zip", None)
        download_url(PFWILLOW_PAIRS_URL, self.folder / _PAIR_LIST, None)

    def _check_exists(self) -> None:
        self._require_folder(self.folder, self.folder)
        self._require_file(self.folder / _PAIR_LIST, self.folder)
        self._require_folder(self.folder / "PF-dataset", self.folder)

    @classmethod
    def read_pairs(
        cls, root: str | os.PathLike | None = None, split: str = "test"
    ) -> list[KeypointPair]:
        """Parse ``test_pairs_pf.csv`` into :class:`KeypointPair` records (0-based keypoints).

        Columns are read by position (the header, if any, is skipped): image A, image B, then N
        x-coordinates of A, N y-coordinates of A, N x of B, N y of B (N = 10 in the official list).
        Raises ``ValueError`` naming the file and line for a row whose column count is not
        ``2 + 4 N`` or whose N differs from the header's (or the first row's), naming the column
        too for a non-numeric, NaN or infinite coordinate (PF-WILLOW has no missing keypoint),
        and naming the file when it lists no pair. ``KeypointPair.info["line"]`` is the row's
        line. Keypoints outside their image are refused when an item is loaded (the image size
        is known then; 1 px tolerance).
        """
        cls._check_split(split)
        folder = resolve_data_root(root) / cls.FOLDER
        path = cls._require_file(folder / _PAIR_LIST, folder)
        rows = _read_csv_rows(path)
        pairs = []
        n_expected, n_from, columns = None, "", None
        for lineno, row in rows:
            if lineno == 1 and not _is_number(row[2] if len(row) > 2 else ""):
                if len(row) >= 6 and (len(row) - 2) % 4 == 0:  # a header fixes N and names
                    n_expected, n_from, columns = (len(row) - 2) // 4, "the header", row
                continue
            if len(row) < 6 or (len(row) - 2) % 4:
                raise ValueError(
                    f"{shown_path(path)}, line {lineno}: expected imageA, imageB and 4 equal "
                    f"keypoint lists (XA, YA, XB, YB: 2 + 4 N columns), got {len(row)} columns. "
                    "The file is corrupt or not a PF-WILLOW pair list; re-download "
                    f"{PFWILLOW_PAIRS_URL}."
                )
            n = (len(row) - 2) // 4
            if n_expected is None:
                n_expected, n_from = n, f"line {lineno} (the first pair)"
            elif n != n_expected:
                raise ValueError(
                    f"{shown_path(path)}, line {lineno}: {len(row)} columns, i.e. {n} keypoints "
                    f"per image, but {n_from} has {2 + 4 * n_expected} columns ({n_expected} "
                    "keypoints); every row of a PF-WILLOW pair list has the same keypoints. The "
                    f"row is corrupt: re-download {PFWILLOW_PAIRS_URL}."
                )
            vals = _parse_row(row, n, path, lineno, columns)  # (4, N)
            src = matlab_to_zero_based(torch.stack([vals[0], vals[1]], dim=1))  # (N, 2)
            trg = matlab_to_zero_based(torch.stack([vals[2], vals[3]], dim=1))
            src_name, trg_name = row[0].strip(), row[1].strip()
            pairs.append(
                KeypointPair(
                    src_name,
                    trg_name,
                    Path(src_name).parent.name,
                    src_kps=src,
                    trg_kps=trg,
                    info={"line": lineno},
                )
            )
        if not pairs:
            raise ValueError(
                f"{shown_path(path)} lists no pair (the file is empty or holds only a header); "
                "an empty benchmark cannot be scored. Re-download it from "
                f"{PFWILLOW_PAIRS_URL}."
            )
        return pairs

    @property
    def categories(self) -> list[str]:
        """Sub-classes present in the pair list, sorted (e.g. ``["car(G)", "car(M)", ...]``)."""
        return sorted({p.category for p in self.pairs})

    def read_image_kps(self, name: str) -> torch.Tensor:
        """Keypoints ``(N, 2)`` (0-based) of image ``name`` (as in the pair list) from its
        ``.mat``."""
        path = (self.folder / name).with_suffix(".mat")
        self._require_file(path, self.folder)
        return read_pfwillow_kps(path)

    def _load(self, index: int) -> dict:
        p = self.pairs[index]
        src_img, trg_img = self._read_image(p.src_name), self._read_image(p.trg_name)
        for side, kps, name, img, xy in (
            ("source", p.src_kps, p.src_name, src_img, ("XA", "YA")),
            ("target", p.trg_kps, p.trg_name, trg_img, ("XB", "YB")),
        ):
            size = (int(img.shape[1]), int(img.shape[2]))
            i = first_point_outside(kps, size)
            if i is not None:
                line = p.info.get("line")
                raise ValueError(
                    f"PF-WILLOW pair {index} ({shown_path(p.src_name)} -> "
                    f"{shown_path(p.trg_name)}; {_PAIR_LIST}, line {line}): {side} "
                    f"{point_outside_text(kps, i, size, name)}; MATLAB 1-based columns "
                    f"{xy[0]}{i + 1}, {xy[1]}{i + 1} hold {kps[i, 0] + 1:g}, {kps[i, 1] + 1:g}. "
                    "The pair list does not match the images or is corrupt: re-download "
                    f"{PFWILLOW_PAIRS_URL} (and {PFWILLOW_IMAGES_URL})."
                )
        return p.item(src_img, trg_img, index)  # no box annotation: the keypoints' box


def _read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank rows of a UTF-8 CSV (a BOM is dropped) with their 1-based line numbers."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [(i, row) for i, row in enumerate(csv.reader(f), start=1) if row]
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(
            f"{shown_path(path)} is not a UTF-8 CSV file ({err}); the file is corrupt or not a "
            f"PF-WILLOW pair list: re-download {PFWILLOW_PAIRS_URL}."
        ) from err


def _parse_row(
    row: list[str], n: int, path: Path, lineno: int, header: list[str] | None
) -> torch.Tensor:
    """The ``4 N`` coordinates of a pair-list row as float32 ``(4, N)``: numbers, all finite."""
    try:
        vals = torch.tensor([float(v) for v in row[2:]], dtype=torch.float32)
    except ValueError as err:
        raise ValueError(
            f"{shown_path(path)}, line {lineno}: non-numeric keypoint coordinate ({err})."
        ) from err
    bad = (~torch.isfinite(vals)).nonzero()
    if bad.numel():
        j = int(bad[0]) + 2  # 0-based column of the row
        name = f"{('XA', 'YA', 'XB', 'YB')[(j - 2) // n]}{(j - 2) % n + 1}"
        if header is not None and header[j].strip():
            name = header[j].strip()
        raise ValueError(
            f"{shown_path(path)}, line {lineno}, column {j + 1} ({name}): keypoint coordinate "
            f"{row[j].strip()!r} is {'NaN' if math.isnan(vals[j - 2]) else 'not finite'}; "
            "PF-WILLOW annotates every keypoint, so a NaN or infinite coordinate means the file is "
            f"corrupt: re-download {PFWILLOW_PAIRS_URL}."
        )
    return vals.reshape(4, n)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
