"""PF-WILLOW (Proposal Flow "PF-dataset", Ham et al., CVPR 2016): 900 test pairs, 10 keypoints.

Five object classes split into ten sub-classes by viewpoint and background (``car(G)``,
``duck(S)``, ...); every pair joins two images of one sub-class. The keypoints of the pair list
and of the per-image ``.mat`` files are MATLAB 1-based; corrlib converts them once, with
:func:`~corrlib.data._common.matlab_to_zero_based`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import scipy.io
import torch

from corrlib.data._common import (
    KeypointPair,
    PairDataset,
    download_and_extract,
    download_url,
    make_pair_item,
    matlab_to_zero_based,
    resolve_data_root,
)

__all__ = ["PFWILLOW_IMAGES_URL", "PFWILLOW_PAIRS_URL", "PFWillow", "read_pfwillow_kps"]

PFWILLOW_IMAGES_URL = "https://www.di.ens.fr/willow/research/proposalflow/dataset/PF-dataset.zip"
PFWILLOW_PAIRS_URL = (
    "https://www.di.ens.fr/willow/research/cnngeometric/other_resources/test_pairs_pf.csv"
)
_PAIR_LIST = "test_pairs_pf.csv"


def read_pfwillow_kps(path: str | os.PathLike) -> torch.Tensor:
    """Keypoints of one PF-WILLOW image from its ``.mat`` file: ``(N, 2)`` float32, 0-based.

    The file holds ``pts_coord`` (2 x N, row 0 = x, row 1 = y, MATLAB 1-based).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PF-WILLOW annotation {path} does not exist.")
    mat = scipy.io.loadmat(path)
    if "pts_coord" not in mat or mat["pts_coord"].ndim != 2 or mat["pts_coord"].shape[0] != 2:
        raise ValueError(
            f"{path} has no 2 x N array 'pts_coord' (keys: "
            f"{sorted(k for k in mat if not k.startswith('__'))}); the file is corrupt or not a "
            "PF-WILLOW annotation."
        )
    kps = torch.as_tensor(mat["pts_coord"].T, dtype=torch.float32)  # (N, 2) (x, y)
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
        """
        cls._check_split(split)
        folder = resolve_data_root(root) / cls.FOLDER
        path = cls._require_file(folder / _PAIR_LIST, folder)
        pairs = []
        with open(path, newline="") as f:
            for lineno, row in enumerate(csv.reader(f), start=1):
                if not row or (lineno == 1 and not _is_number(row[2] if len(row) > 2 else "")):
                    continue  # blank line or header
                if len(row) < 6 or (len(row) - 2) % 4:
                    raise ValueError(
                        f"{path}, line {lineno}: expected imageA, imageB and 4 equal keypoint "
                        f"lists (XA, YA, XB, YB: 2 + 4 N columns), got {len(row)} columns. The "
                        "file is corrupt or not a PF-WILLOW pair list; re-download "
                        f"{PFWILLOW_PAIRS_URL}."
                    )
                n = (len(row) - 2) // 4
                try:
                    vals = torch.tensor([float(v) for v in row[2:]], dtype=torch.float32).reshape(
                        4, n
                    )
                except ValueError as err:
                    raise ValueError(
                        f"{path}, line {lineno}: non-numeric keypoint coordinate ({err})."
                    ) from err
                src = matlab_to_zero_based(torch.stack([vals[0], vals[1]], dim=1))  # (N, 2)
                trg = matlab_to_zero_based(torch.stack([vals[2], vals[3]], dim=1))
                src_name, trg_name = row[0].strip(), row[1].strip()
                pairs.append(
                    KeypointPair(
                        src_name, trg_name, Path(src_name).parent.name, src_kps=src, trg_kps=trg
                    )
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
        return make_pair_item(
            src_img=self._read_image(p.src_name),
            trg_img=self._read_image(p.trg_name),
            src_kps=p.src_kps.clone(),
            trg_kps=p.trg_kps.clone(),
            src_bbox=None,  # no box annotation: keypoint box
            trg_bbox=None,
            category=p.category,
            src_name=p.src_name,
            trg_name=p.trg_name,
            pair_index=index,
            flip=False,
        )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
