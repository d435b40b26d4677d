"""TSS (Taniai et al., CVPR 2016): 400 image pairs with dense ground-truth flow and masks.

Three subsets: ``FG3DCar`` (cars), ``JODS`` (cars, planes, horses) and ``PASCAL`` (PASCAL VOC
images). Every pair folder holds both directions: ``flowN`` lives on ``imageN``'s grid and points
into the other image; ``maskN`` is ``imageN``'s foreground; ``flip_gt.txt`` says whether the two
objects face opposite ways (the flow then maps across the mirror: it is *not* undone).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from corrlib._check import check_choice
from corrlib.data._common import PairDataset, download_and_extract, resolve_data_root
from corrlib.data.images import read_mask, shown_path
from corrlib.flo import UNKNOWN_FLOW_THRESHOLD, read_flo

__all__ = ["TSS", "TSS_SUBSETS", "TSS_URL", "TSSPair", "iter_tss", "read_tss_flow"]

#: No publisher checksum exists: the zip's SHA-256 is recorded at the first download in
#: ``TSS/.corrlib-downloads.json`` and later downloads are checked against it.
TSS_URL = "https://taniai.space/projects/cvpr16_dccs/data/TSS_CVPR2016.zip"
TSS_SUBSETS = ("FG3DCar", "JODS", "PASCAL")
_DIRECTIONS = ("1to2", "2to1")
_PAIR_FILES = (
    "image1.png",
    "image2.png",
    "flow1.flo",
    "flow2.flo",
    "mask1.png",
    "mask2.png",
    "flip_gt.txt",
)


@dataclass(frozen=True)
class TSSPair:
    """One TSS pair folder: ``subset/name``, and its ``flip_gt.txt`` flag."""

    subset: str
    name: str
    flip: bool


def read_tss_flow(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a TSS ``.flo`` as ``flow`` float32 ``(2, H, W)`` (pixels) and ``valid`` bool ``(H, W)``.

    Unknown pixels (stored as about ``1e10``; anything above ``UNKNOWN_FLOW_THRESHOLD`` or not
    finite) are ``NaN`` in ``flow`` and ``False`` in ``valid``. A file with no known pixel at all
    raises ``ValueError`` naming it (no ground truth: the TSS kit would divide by zero).
    """
    arr = read_flo(path)  # (H, W, 2)
    valid = np.isfinite(arr).all(axis=-1) & (np.abs(arr) < UNKNOWN_FLOW_THRESHOLD).all(axis=-1)
    if not valid.any():
        raise ValueError(
            f"{shown_path(path)} holds no ground-truth flow: all {valid.size} pixels are unknown "
            "(NaN, infinite or above 1e9), so it cannot score anything (the TSS kit would divide "
            f"by zero). The file is corrupt: re-extract the dataset ({TSS_URL})."
        )
    arr = np.where(valid[..., None], arr, np.float32(np.nan)).astype(np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), torch.from_numpy(valid)


class TSS(PairDataset):
    """TSS dense-flow pairs; each item is one *direction* of one pair (``len = 2 x pairs``).

    Expected layout (``root`` is the data root that holds ``TSS/``)::

        <root>/TSS/TSS_CVPR2016/
        ├── FG3DCar/001_005/   image1.png image2.png flow1.flo flow2.flo
        │                      mask1.png mask2.png flip_gt.txt (pair.txt)
        ├── JODS/car_01_02/ ...
        └── PASCAL/bike_01_03/ ...

    Item ``2 k`` is pair ``k`` from image 1 to image 2 (``direction="1to2"``: ``src`` = image1,
    ``flow`` = flow1), item ``2 k + 1`` the reverse (``"2to1"``). Items are dicts: ``src_img``/
    ``trg_img`` uint8 ``(3, H, W)``; ``flow`` float32 ``(2, Hs, Ws)`` on the source grid, in pixels,
    ``p_trg = p_src + flow`` (the corrlib convention), ``NaN`` where unknown; ``flow_valid`` bool
    ``(Hs, Ws)``; ``src_mask``/``trg_mask`` bool ``(H, W)`` foreground; ``flip`` (the pair's
    ``flip_gt.txt``: the objects face opposite ways); ``subset``; ``pair`` (folder name);
    ``direction``; ``src_size``/``trg_size`` ``(H, W)``; ``pair_index`` (``k``, shared by both
    directions); ``category`` (= subset).

    Args:
        root: data root (``None``: ``$CORRLIB_DATA``).
        split: ``"test"`` (TSS has no other).
        subsets: any of :data:`TSS_SUBSETS`.
        transform: callable applied to each item dict.
        download: fetch the official archive when missing (needs internet).

    Paper: Taniai, Sinha and Sato, "Joint Recovery of Dense Correspondence and Cosegmentation in
    Two Images", CVPR 2016.
    """

    NAME = "TSS"
    FOLDER = "TSS/TSS_CVPR2016"
    SPLITS = ("test",)
    TREE = """\
<root>/TSS/TSS_CVPR2016/{FG3DCar,JODS,PASCAL}/<pair>/
    image1.png image2.png flow1.flo flow2.flo mask1.png mask2.png flip_gt.txt"""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "test",
        subsets: tuple[str, ...] | list[str] | str = TSS_SUBSETS,
        transform=None,
        download: bool = False,
    ) -> None:
        subsets = (subsets,) if isinstance(subsets, str) else tuple(subsets)
        if not subsets:
            raise ValueError(f"Argument subsets must name at least one of {TSS_SUBSETS}, got ().")
        self.subsets = tuple(check_choice(s, "subsets", TSS_SUBSETS) for s in subsets)
        super().__init__(root, split, transform, download)

    @classmethod
    def _how_to_get(cls, folder: Path) -> str:
        return (
            f"pass download=True (needs internet), or download {TSS_URL} and unzip it into "
            f"{folder.parent} (giving {folder})."
        )

    def download(self) -> None:
        """Fetch and extract ``TSS_CVPR2016.zip`` into ``<root>/TSS``; skipped if it exists."""
        download_and_extract(TSS_URL, self.folder.parent, "TSS_CVPR2016.zip", None)

    def _check_exists(self) -> None:
        self._require_folder(self.folder, self.folder)
        for subset in self.subsets:
            self._require_folder(self.folder / subset, self.folder)

    @classmethod
    def read_pairs(
        cls,
        root: str | os.PathLike | None = None,
        split: str = "test",
        subsets: tuple[str, ...] = TSS_SUBSETS,
    ) -> list[TSSPair]:
        """List the pair folders of ``subsets`` (sorted) with their flip flags; no image read.

        Hidden folders (a name starting with ``.``, e.g. ``.ipynb_checkpoints``) are skipped.
        """
        cls._check_split(split)
        folder = resolve_data_root(root) / cls.FOLDER
        pairs = []
        for subset in subsets:
            check_choice(subset, "subsets", TSS_SUBSETS)
            sub = cls._require_folder(folder / subset, folder)
            # hidden folders (.ipynb_checkpoints, .DS_Store-like clutter) are not pairs
            for d in sorted(p for p in sub.iterdir() if p.is_dir() and not p.name.startswith(".")):
                flip_path = cls._require_file(d / "flip_gt.txt", folder)
                text = flip_path.read_bytes().decode("utf-8", "replace").strip()
                if text not in ("0", "1"):
                    raise ValueError(
                        f"{shown_path(flip_path)} must hold 0 or 1, got {text!r}; re-extract the "
                        "dataset."
                    )
                pairs.append(TSSPair(subset, d.name, text == "1"))
        return pairs

    @property
    def pairs(self) -> list[TSSPair]:
        """The pair folders of the chosen subsets (parsed once, then cached)."""
        if self._pairs is None:
            self._pairs = self.read_pairs(self.root, self.split, self.subsets)
        return self._pairs

    def __len__(self) -> int:
        return 2 * len(self.pairs)

    @property
    def categories(self) -> list[str]:
        """The chosen subsets (TSS's categories)."""
        return list(self.subsets)

    def _load(self, index: int) -> dict:
        k, d = divmod(index, 2)
        p = self.pairs[k]
        pair_dir = self.folder / p.subset / p.name
        for name in _PAIR_FILES:
            self._require_file(pair_dir / name, self.folder)
        s, t = (1, 2) if d == 0 else (2, 1)
        src_img = self._read_image(f"{p.subset}/{p.name}/image{s}.png")
        trg_img = self._read_image(f"{p.subset}/{p.name}/image{t}.png")
        flow, valid = read_tss_flow(pair_dir / f"flow{s}.flo")
        src_mask, trg_mask = (
            read_mask(pair_dir / f"mask{s}.png"),
            read_mask(pair_dir / f"mask{t}.png"),
        )
        src_size = (int(src_img.shape[1]), int(src_img.shape[2]))
        trg_size = (int(trg_img.shape[1]), int(trg_img.shape[2]))
        for what, got, want in (
            (f"flow{s}.flo", tuple(flow.shape[1:]), src_size),
            (f"mask{s}.png", tuple(src_mask.shape), src_size),
            (f"mask{t}.png", tuple(trg_mask.shape), trg_size),
        ):
            if got != want:
                raise ValueError(
                    f"{pair_dir / what} is {got[0]}x{got[1]} (H x W) but its image is "
                    f"{want[0]}x{want[1]}; the pair folder is corrupt: re-extract the dataset."
                )
        return {
            "src_img": src_img,
            "trg_img": trg_img,
            "flow": flow,
            "flow_valid": valid,
            "src_mask": src_mask,
            "trg_mask": trg_mask,
            "flip": p.flip,
            "subset": p.subset,
            "pair": p.name,
            "direction": _DIRECTIONS[d],
            "src_size": src_size,
            "trg_size": trg_size,
            "pair_index": k,
            "category": p.subset,
        }


def iter_tss(dataset: TSS, limit: int | None = None):
    """Yield ``(sample, src_key, trg_key)`` for the items of ``dataset``, at most ``limit`` pairs.

    Both directions of a pair are kept together; the keys name the images
    (``"<subset>/<pair>/image1"``) so a method can cache per-image work across directions.
    """
    pairs: set[tuple[str, str]] = set()
    for i in range(len(dataset)):
        s = dataset[i]
        subset = s["subset"]
        key = (subset, s["pair"])
        if limit is not None and key not in pairs and len(pairs) >= limit:
            continue
        pairs.add(key)
        one, two = f"{subset}/{s['pair']}/image1", f"{subset}/{s['pair']}/image2"
        yield (s, one, two) if s["direction"] == "1to2" else (s, two, one)
