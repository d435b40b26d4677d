"""PASCAL VOC 2011 trainval photographs: RTN's synthetic-stage images (no annotation is read).

The official tar ``VOCtrainval_25-May-2011.tar`` unpacks with a ``TrainVal/`` prefix; either
layout under the data root (``root=None``: ``$CORRLIB_DATA``) is accepted::

    <root>/TrainVal/VOCdevkit/VOC2011/          (as the tar unpacks)   or
    <root>/VOCdevkit/VOC2011/
        JPEGImages/<id>.jpg
        ImageSets/Main/{train,val,trainval}.txt   one id per line

RTN's code warps every trainval image (11,540) in its synthetic stage (Kim et al., NeurIPS
2018; ``../shared/research/wave2-spec.md``, the RTN training table). Everingham et al., *The
PASCAL Visual Object Classes Challenge 2011 Results*.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from corrlib._check import check_choice, check_int
from corrlib.data._common import (
    DatasetNotFoundError,
    download_and_extract,
    item_index,
    require_file,
    resolve_data_root,
)
from corrlib.data.images import read_image

__all__ = ["VOC2011_FILENAME", "VOC2011_MD5", "VOC2011_URL", "VOC2011Images"]

#: The official trainval tar and its MD5 (torchvision's record of the same file).
VOC2011_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2011/VOCtrainval_25-May-2011.tar"
VOC2011_FILENAME = "VOCtrainval_25-May-2011.tar"
VOC2011_MD5 = "6c3384ef61512963050cb5d687e5bf1e"


class VOC2011Images(Dataset):
    """The photographs of PASCAL VOC 2011 ``split`` (``ImageSets/Main``), as uint8 ``(3, H, W)``.

    Args:
        root: the data root (see the module docstring for the two accepted layouts).
        split: ``"train"``, ``"val"`` or ``"trainval"``.
        transform: applied to each image.
        download: fetch and extract :data:`VOC2011_URL` (1.7 GB, MD5-checked) when missing.
        max_side: downscale (antialiased) so that the longer side is at most this (None: as
            stored; VOC photographs are about 500 x 375).

    ``ids`` lists the split's image ids in file order.
    """

    NAME = "PASCAL VOC 2011"
    SPLITS = ("train", "val", "trainval")
    TREE = """
<root>/TrainVal/VOCdevkit/VOC2011/   (or <root>/VOCdevkit/VOC2011/)
  JPEGImages/<id>.jpg
  ImageSets/Main/{train,val,trainval}.txt   one id per line
"""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "trainval",
        transform=None,
        download: bool = False,
        *,
        max_side: int | None = None,
    ) -> None:
        self.root = resolve_data_root(root)
        self.split = check_choice(split, "split", self.SPLITS)
        self.transform = transform
        self.max_side = None if max_side is None else check_int(max_side, "max_side", 1)
        if download and self._folder_or_none() is None:
            download_and_extract(
                VOC2011_URL, self.root, VOC2011_FILENAME, md5=VOC2011_MD5, marker="TrainVal"
            )
        folder = self._folder_or_none()
        if folder is None:
            looked = ", ".join(str(c) for c in self._candidates())
            raise DatasetNotFoundError(
                f"{self.NAME}: no VOC2011 folder with JPEGImages/ found; looked in {looked}.\n"
                f"Expected layout:\n{self.TREE.strip()}\nHow to get it: {self._how_to_get()}."
            )
        self.folder = folder
        split_file = require_file(
            folder / "ImageSets" / "Main" / f"{split}.txt", self.NAME, self._how_to_get()
        )
        self.ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]

    def _candidates(self) -> list[Path]:
        return [
            self.root / "TrainVal" / "VOCdevkit" / "VOC2011",
            self.root / "VOCdevkit" / "VOC2011",
        ]

    def _folder_or_none(self) -> Path | None:
        return next((c for c in self._candidates() if (c / "JPEGImages").is_dir()), None)

    def _how_to_get(self) -> str:
        return (
            f"pass download=True (fetches {VOC2011_URL}, 1.7 GB, MD5 {VOC2011_MD5}), or download "
            f"it by hand and extract it into {self.root}: tar -xf {VOC2011_FILENAME} -C {self.root}"
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> torch.Tensor:
        name = self.ids[item_index(index, len(self), f"{self.NAME} {self.split}")]
        path = require_file(
            self.folder / "JPEGImages" / f"{name}.jpg", self.NAME, self._how_to_get()
        )
        img = read_image(path)
        h, w = img.shape[-2:]
        if self.max_side is not None and max(h, w) > self.max_side:
            s = self.max_side / max(h, w)
            size = (max(1, round(h * s)), max(1, round(w * s)))
            img = (
                F.interpolate(
                    img[None].float(),
                    size=size,
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )[0]
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
        return self.transform(img) if self.transform is not None else img

    def __repr__(self) -> str:
        return f"VOC2011Images(split={self.split!r}, len={len(self)}, max_side={self.max_side})"
