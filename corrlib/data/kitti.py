"""KITTI 2012 stereo: the training pairs with ground-truth disparity, MC-CNN's training data.

Expected layout under the data root (``root=None``: ``$CORRLIB_DATA``), the official archive
``data_stereo_flow.zip`` unzipped as it comes::

    <root>/KITTI2012/
        training/
            image_0/000000_10.png ... 000193_10.png   (left, 8-bit grey)
            image_1/000000_10.png ... 000193_10.png   (right, 8-bit grey)
            disp_noc/000000_10.png ...                (16-bit; disparity * 256, 0 = unknown)
            disp_occ/000000_10.png ...                (the same with occluded pixels)
            colored_0/ colored_1/ ...                 (colour views; colour=True)

Only frame ``_10`` of each of the 194 training scenes has ground truth. The test scenes have
none (KITTI's server scores them), so nothing here reads ``testing/``.
Geiger, Lenz & Urtasun, *Are we ready for autonomous driving? The KITTI vision benchmark
suite*, CVPR 2012.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from corrlib._check import check_choice
from corrlib.data._common import DatasetNotFoundError, download_and_extract, resolve_data_root
from corrlib.data.images import read_image
from corrlib.data.patches import StereoPair, _stereo_pair

__all__ = ["KITTI2012_SPLITS", "KITTI2012_URL", "KITTI2012_VAL_SCENES", "KITTI2012Stereo"]

#: The official archive (about 2 GB, registration on the KITTI site asks for an e-mail). No
#: checksum is published: the first download records its SHA-256 in
#: ``KITTI2012/.corrlib-downloads.json`` and later downloads are checked against it.
KITTI2012_URL = "https://s3.eu-central-1.amazonaws.com/avg-kitti/data_stereo_flow.zip"

#: The 40 held-out scenes of :data:`KITTI2012_SPLITS` (``"val"``). MC-CNN's code
#: (``preprocess_kitti.lua``) holds out 40 of the 194 training scenes at random for validation
#: (``perm = torch.randperm(194)``, ``te = perm[1..40]``, under Lua Torch's seed 42) and trains on
#: the other 154. Its permutation cannot be reproduced outside Lua Torch, so these 40 were drawn
#: once with ``numpy.random.RandomState(0).permutation(194)[:40]`` and are listed here: the
#: code's sizes, not its scenes.
KITTI2012_VAL_SCENES = (
    4, 5, 7, 12, 18, 22, 26, 33, 37, 44, 45, 55, 56, 61, 71, 74, 89, 92, 98, 108,
    113, 122, 123, 125, 131, 149, 154, 155, 160, 163, 169, 175, 176, 177, 178, 179, 180, 182,
    184, 193,
)  # fmt: skip

#: Scenes of each split. The 194 training scenes are the only ones with public ground truth;
#: MC-CNN's reported errors come from KITTI's server. ``"train"``: 154 scenes (as many as MC-CNN's
#: code trains on), ``"val"``: the 40 held out (:data:`KITTI2012_VAL_SCENES`), so that a held-out
#: error can be computed locally; ``"all"``: every one. Each in increasing order.
KITTI2012_SPLITS = {
    "train": tuple(i for i in range(194) if i not in KITTI2012_VAL_SCENES),
    "val": KITTI2012_VAL_SCENES,
    "all": tuple(range(194)),
}

_SOURCE = "KITTI 2012 stereo (Geiger et al., CVPR 2012)"


class KITTI2012Stereo(Dataset):
    """The KITTI 2012 training pairs of ``split`` as :class:`~corrlib.data.patches.StereoPair`.

    Args:
        root: the data root (``None``: ``$CORRLIB_DATA``); the files live in ``root/KITTI2012``.
        split: one of :data:`KITTI2012_SPLITS`.
        transform: applied to each :class:`StereoPair` (None: returned as is).
        download: fetch and unzip :data:`KITTI2012_URL` when missing (needs internet; 2 GB).
        scale: downscale factor in ``(0, 1]`` of images and disparity (as
            :func:`~corrlib.data.patches.load_motorcycle`).
        occluded: ground truth with occluded pixels (``disp_occ``) instead of ``disp_noc``.
        colour: read the colour views (``colored_0``/``colored_1``, both required) instead of
            the grey ones MC-CNN trains on (``image_0``/``image_1``, the default).

    ``dataset[i]`` reads scene ``scenes[i]``: grey views in ``[0, 1]``, disparity in pixels of
    the left image (``x_right = x_left - d``), ``valid`` where the PNG is non-zero. Missing files
    raise :class:`~corrlib.data.DatasetNotFoundError` naming the file and how to get it.
    """

    FOLDER = "KITTI2012"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        transform=None,
        download: bool = False,
        *,
        scale: float = 1.0,
        occluded: bool = False,
        colour: bool = False,
    ) -> None:
        check_choice(split, "split", tuple(KITTI2012_SPLITS))
        self.folder = resolve_data_root(root) / self.FOLDER
        self.split, self.transform, self.scale = split, transform, scale
        self.gt_dir = "disp_occ" if occluded else "disp_noc"
        self.views = ("colored_0", "colored_1") if colour else ("image_0", "image_1")
        self.scenes = list(KITTI2012_SPLITS[split])
        if download and not self._present():
            download_and_extract(
                KITTI2012_URL, self.folder, "data_stereo_flow.zip", None, marker="training"
            )
        if not self._present():
            raise DatasetNotFoundError(
                f"KITTI 2012: {self._path(self.views[0], self.scenes[0])} does not exist.\n"
                f"Expected layout:\n{self.folder}/\n    training/image_0/000000_10.png ...\n"
                f"    training/image_1/  training/{self.gt_dir}/\n"
                f"How to get it: pass download=True (needs internet, about 2 GB), or download "
                f"{KITTI2012_URL} (the 'stereo 2012' development kit page of "
                f"https://www.cvlibs.net/datasets/kitti/) and unzip it into {self.folder}."
            )

    def _path(self, kind: str, scene: int):
        return self.folder / "training" / kind / f"{scene:06d}_10.png"

    def _present(self) -> bool:
        return self._path(self.views[0], self.scenes[0]).is_file()

    def __len__(self) -> int:
        return len(self.scenes)

    def __repr__(self) -> str:
        return f"KITTI2012Stereo(split={self.split!r}, len={len(self)}, gt={self.gt_dir!r})"

    def _require(self, kind: str, scene: int):
        path = self._path(kind, scene)
        if not path.is_file():
            raise DatasetNotFoundError(
                f"KITTI 2012: {path} is missing (scene {scene} of split {self.split!r}); the "
                f"archive was not fully unzipped: unzip {KITTI2012_URL} into {self.folder} again."
            )
        return path

    def _view(self, kind: str, scene: int) -> torch.Tensor:
        """``(3, H, W)`` uint8 (a grey view repeated on the three channels)."""
        return read_image(self._require(kind, scene))

    def __getitem__(self, index: int) -> StereoPair:
        if not -len(self) <= int(index) < len(self):
            raise IndexError(
                f"KITTI2012Stereo has {len(self)} pairs; index {index} is out of range."
            )
        scene = self.scenes[index]
        gt_path = self._require(self.gt_dir, scene)
        gt = np.asarray(Image.open(gt_path))
        if gt.ndim != 2 or gt.dtype not in (np.uint16, np.int32):
            raise ValueError(
                f"{gt_path}: expected a 16-bit single-channel disparity PNG (KITTI's format: "
                f"disparity * 256), got {gt.dtype} with shape {gt.shape}; re-download "
                f"{KITTI2012_URL}."
            )
        raw = torch.from_numpy(gt.astype(np.float32))
        left, right = self._view(self.views[0], scene), self._view(self.views[1], scene)
        if left.shape != right.shape or tuple(left.shape[-2:]) != tuple(raw.shape):
            raise ValueError(
                f"KITTI 2012 scene {scene}: left {tuple(left.shape)}, right {tuple(right.shape)} "
                f"and disparity {tuple(raw.shape)} differ in size; re-download {KITTI2012_URL}."
            )
        valid = raw > 0
        pair = _stereo_pair(
            left, right, raw / 256.0, valid, self.scale, f"kitti2012-{scene:06d}", _SOURCE
        )
        return self.transform(pair) if self.transform is not None else pair
