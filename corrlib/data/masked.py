"""Images with binary foreground masks, for mask-supervised matching (SFNet).

SFNet (Lee et al., *SFNet: Learning Object-aware Semantic Correspondence*, CVPR 2019) learns
from foreground masks of images deformed by synthetic warps: the warped source mask must agree
with the target mask. This module gives two sources of ``(image, mask)`` items with one item
layout, and :func:`masked_pairs`, which turns either into warped pairs with ``src_mask`` and
``trg_mask`` (through :class:`corrlib.data.SyntheticPairs`):

* :class:`VOCMasks`: PASCAL VOC 2012 segmentation (official layout, ``download=True``).
* :class:`FashionComposites`: offline; real Fashion-MNIST product photographs (on a uniform
  background, so their masks are exact) composited onto real photographs.

Item layout (both sources): a dict with ``image`` (uint8 ``(3, H, W)``), ``mask`` (bool
``(H, W)``, ``True`` on the foreground), ``name`` (str) and ``classes`` (sorted list of the class
indices present); :class:`FashionComposites` adds ``label`` (int).
"""

from __future__ import annotations

import colorsys
import functools
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from corrlib._check import check_choice, check_shape
from corrlib.data._common import (
    DatasetNotFoundError,
    download_and_extract,
    item_index,
    require_file,
    resolve_data_root,
)
from corrlib.data.digits import DIGIT_SPLITS, load_fashion_mnist
from corrlib.data.images import _open, read_image
from corrlib.data.synthetic import SyntheticPairs

__all__ = [
    "FASHION_CLASSES",
    "FASHION_MASK_THRESHOLD",
    "HELDOUT_BACKGROUNDS",
    "TRAIN_BACKGROUNDS",
    "VOC_CLASSES",
    "VOC_FILENAME",
    "VOC_MD5",
    "VOC_URL",
    "FashionComposites",
    "VOCMasks",
    "fashion_mask",
    "load_backgrounds",
    "masked_pairs",
    "read_voc_segmentation",
]

# --------------------------------------------------------------------------------------------
# PASCAL VOC 2012
# --------------------------------------------------------------------------------------------

#: The official VOC 2012 train+val archive (1.9 GB).
VOC_URL = "https://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
VOC_FILENAME = "VOCtrainval_11-May-2012.tar"
#: No SHA-256 is published; this MD5 is the one torchvision records for :data:`VOC_URL`.
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
#: Class names by index of ``SegmentationClass`` (0 background, 1..20 objects; 255 is "void").
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
_VOID = 255


def read_voc_segmentation(path: str | os.PathLike) -> torch.Tensor:
    """Read a VOC ``SegmentationClass`` PNG as its class indices: uint8 ``(H, W)``.

    The official files are palette (``"P"``) images whose stored index is the class: 0
    background, 1..20 the :data:`VOC_CLASSES`, 255 void. A colour (RGB) copy has lost the
    indices and is refused with a ``ValueError`` naming the file; so is any index in 21..254.
    """
    img = _open(path)
    if img.mode not in ("P", "L"):
        raise ValueError(
            f"{path}: a VOC segmentation must be a palette ('P') PNG of class indices as in the "
            f"official SegmentationClass/ folder, got mode {img.mode!r} (converted to colour?). "
            "Re-extract it from the official tar."
        )
    labels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    bad = (labels > len(VOC_CLASSES) - 1) & (labels != _VOID)
    if bad.any():
        raise ValueError(
            f"{path}: values {sorted(set(labels[bad].tolist()))} are not VOC class indices "
            "(0..20, 255 void). Is it a SegmentationObject file instead of SegmentationClass?"
        )
    return labels


class VOCMasks(Dataset):
    """PASCAL VOC 2012 segmentation images with binary foreground masks.

    Args:
        root: data root holding ``VOCdevkit/`` (``None``: ``$CORRLIB_DATA``). Also accepted: the
            ``VOCdevkit`` folder itself, or the ``VOC2012`` folder itself.
        split: one of ``("train", "val", "trainval")`` (``ImageSets/Segmentation/<split>.txt``).
        transform: optional callable applied to the item dict.
        download: fetch and extract the official tar (:data:`VOC_URL`, 1.9 GB, checked against
            :data:`VOC_MD5`) into ``root`` first, unless the folder is already there. The tar is
            kept next to what it extracted.
        void_as: ``"foreground"`` (default) or ``"background"``: where the void value 255 goes.
        exclude: image ids to leave out (e.g. the PF-PASCAL evaluation images, which are VOC
            images: :func:`corrlib.data.pfpascal_voc_ids`); :attr:`excluded` counts those
            dropped.

    Foreground = class index 1..20, plus void (255) when ``void_as="foreground"``. VOC draws
    void as a band about 5 px wide over every object outline (and over whole objects that are
    too hard to label), so it borders objects: counting it as foreground makes the mask cover
    the whole object up to a slightly dilated outline and keeps "difficult" objects masked;
    ``"background"`` gives eroded masks and drops the objects labelled void entirely.

    Items: ``{"image": uint8 (3, H, W), "mask": bool (H, W), "name": id, "classes": sorted list
    of the class indices (1..20) present}``.
    """

    NAME = "PASCAL VOC 2012"
    SPLITS = ("train", "val", "trainval")
    VOID_AS = ("foreground", "background")
    TREE = """
<root>/VOCdevkit/VOC2012/
  JPEGImages/<id>.jpg
  SegmentationClass/<id>.png          palette PNG: 0 background, 1..20 classes, 255 void
  ImageSets/Segmentation/{train,val,trainval}.txt   one id per line
"""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        transform: Callable[[dict], Any] | None = None,
        download: bool = False,
        *,
        void_as: str = "foreground",
        exclude=None,
    ) -> None:
        self.root = resolve_data_root(root)
        self.split = check_choice(split, "split", self.SPLITS)
        self.void_as = check_choice(void_as, "void_as", self.VOID_AS)
        self.transform = transform
        if download:
            self.download()
        self.folder = self._find_folder(self.root)
        split_file = self.folder / "ImageSets" / "Segmentation" / f"{split}.txt"
        require_file(split_file, self.NAME, self._how_to_get(self.root), tree=self.TREE)
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        drop = set(exclude or ())
        self.ids = [i for i in ids if i not in drop]
        self.excluded = len(ids) - len(self.ids)

    @staticmethod
    def _candidates(root: Path) -> list[Path]:
        return [root / "VOCdevkit" / "VOC2012", root / "VOC2012", root]

    @classmethod
    def _how_to_get(cls, root: Path) -> str:
        return (
            f"pass download=True (fetches the official {VOC_FILENAME}, 1.9 GB, from {VOC_URL} "
            f"and extracts it into {root}), or download that tar by hand and extract it there: "
            f"tar -xf {VOC_FILENAME} -C {root}"
        )

    @classmethod
    def _find_folder(cls, root: Path) -> Path:
        candidates = cls._candidates(root)
        for folder in candidates:
            if (folder / "JPEGImages").is_dir() and (folder / "SegmentationClass").is_dir():
                return folder
        looked = ", ".join(str(c) for c in candidates)
        raise DatasetNotFoundError(
            f"{cls.NAME}: no VOC2012 folder (with JPEGImages/ and SegmentationClass/) found; "
            f"looked in {looked}.\nExpected layout:\n{cls.TREE.strip()}\n"
            f"How to get it: {cls._how_to_get(root)}."
        )

    def download(self) -> None:
        """Fetch and extract the official tar into :attr:`root` (skipped if the data is there)."""
        try:
            self._find_folder(self.root)
            return
        except DatasetNotFoundError:
            pass
        download_and_extract(
            VOC_URL, self.root, VOC_FILENAME, md5=VOC_MD5, marker="VOCdevkit/VOC2012"
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Any:
        name = self.ids[item_index(index, len(self), f"{self.NAME} {self.split}")]
        how = self._how_to_get(self.root)
        img_path = require_file(self.folder / "JPEGImages" / f"{name}.jpg", self.NAME, how)
        seg_path = require_file(self.folder / "SegmentationClass" / f"{name}.png", self.NAME, how)
        image = read_image(img_path)
        labels = read_voc_segmentation(seg_path)
        if tuple(labels.shape) != tuple(image.shape[1:]):
            raise ValueError(
                f"{seg_path} is {tuple(labels.shape)} but its image {img_path} is "
                f"{tuple(image.shape[1:])}; the files do not belong together. Re-extract them."
            )
        mask = (labels >= 1) & (labels < len(VOC_CLASSES))
        if self.void_as == "foreground":
            mask |= labels == _VOID
        classes = sorted(c for c in torch.unique(labels).tolist() if 1 <= c < len(VOC_CLASSES))
        item = {"image": image, "mask": mask, "name": name, "classes": classes}
        return self.transform(item) if self.transform is not None else item

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"void_as={self.void_as!r}, len={len(self)})"
        )


# --------------------------------------------------------------------------------------------
# Fashion-MNIST composites
# --------------------------------------------------------------------------------------------

#: Fashion-MNIST class names by label.
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: A Fashion-MNIST pixel (0..255) belongs to the object when it is at least this value.
FASHION_MASK_THRESHOLD = 8
#: Backgrounds of the "train" split: scikit-image's bundled photographs and textures (grey
#: textures are repeated to 3 channels). All load offline.
TRAIN_BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel")
#: Held-out backgrounds of the "test" split: scikit-learn's ``load_sample_images()``.
HELDOUT_BACKGROUNDS = ("china", "flower")
_BACKGROUNDS = {"train": TRAIN_BACKGROUNDS, "test": HELDOUT_BACKGROUNDS}


def fashion_mask(image: torch.Tensor) -> torch.Tensor:
    """Exact foreground mask of a Fashion-MNIST item: uint8 ``(28, 28)`` -> bool ``(28, 28)``.

    Pixels ``>= FASHION_MASK_THRESHOLD`` (8), holes filled (``scipy.ndimage.binary_fill_holes``),
    then only the largest 4-connected component is kept (drops specks of scanner noise). The
    items sit on a uniform black background, so this is the object's silhouette. Measured on
    the 10,000 test items: of the pixels ``> 0``, 5.4 % fall outside the mask (they hold 0.15 %
    of the total intensity: faint halo and specks), and hole filling adds pixels equal to 1.4 %
    of that count; mean mask area 48 % of the 28x28 frame (smallest 7.7 %).
    """
    from scipy import ndimage

    check_shape(image, ("H", "W"), "image")
    if image.dtype != torch.uint8:
        raise TypeError(f"Argument image must be uint8 (values 0..255), got {image.dtype}.")
    mask = ndimage.binary_fill_holes(image.numpy() >= FASHION_MASK_THRESHOLD)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        mask = labels == 1 + int(sizes.argmax())
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))


@functools.lru_cache(maxsize=4)
def _fashion_items(root: str | None, split: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(images uint8 (N, 28, 28), labels (N,) int64, info)``, decoded once per process."""
    try:
        data = load_fashion_mnist(root, split)
    except DatasetNotFoundError as err:
        if "apt-get install dataset-fashion-mnist" in str(err):
            raise
        raise DatasetNotFoundError(
            f"{err} FashionComposites needs Fashion-MNIST: apt-get install "
            "dataset-fashion-mnist, or torchvision.datasets.FashionMNIST(<data root>, "
            "download=True)."
        ) from err
    images = (data.images[:, 0] * 255).round().to(torch.uint8)
    return images, data.labels, dict(data.info)


@functools.lru_cache(maxsize=2)
def _backgrounds(split: str) -> tuple[torch.Tensor, ...]:
    """The background photographs of ``split``, uint8 ``(3, H, W)``, loaded once per process."""
    out = []
    if split == "train":
        import skimage.data

        for name in TRAIN_BACKGROUNDS:
            arr = np.asarray(getattr(skimage.data, name)())
            out.append(arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2))
    else:
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        by_name = {Path(f).stem: img for f, img in zip(sample.filenames, sample.images)}
        out = [by_name[name] for name in HELDOUT_BACKGROUNDS]
    return tuple(torch.from_numpy(a[..., :3].copy()).permute(2, 0, 1).contiguous() for a in out)


def load_backgrounds(split: str = "train") -> list[torch.Tensor]:
    """The backgrounds of :class:`FashionComposites` ``split``: uint8 ``(3, H, W)`` tensors.

    ``"train"``: :data:`TRAIN_BACKGROUNDS`; ``"test"``: :data:`HELDOUT_BACKGROUNDS`; offline.
    """
    return list(_backgrounds(check_choice(split, "split", DIGIT_SPLITS)))


def _crop_resize(
    img: torch.Tensor, size: tuple[int, int], u_scale: float, u_x: float, u_y: float
) -> torch.Tensor:
    """Crop of ``img`` with the aspect of ``size``, ``0.5 + 0.5 u_scale`` times the largest such
    crop, at relative position ``(u_x, u_y)``, resized (bilinear) to ``size``: float ``(C, h, w)``
    on the 0..255 scale."""
    _, height, width = img.shape
    h, w = size
    s = min(height / h, width / w) * (0.5 + 0.5 * u_scale)
    ch, cw = max(1, round(h * s)), max(1, round(w * s))
    y0, x0 = round(u_y * (height - ch)), round(u_x * (width - cw))
    crop = img[:, y0 : y0 + ch, x0 : x0 + cw].float()[None]
    down = ch > h or cw > w
    return F.interpolate(crop, size=size, mode="bilinear", antialias=down, align_corners=False)[0]


_N_DRAWS = 15  # random numbers drawn per composite (see FashionComposites._render)


class FashionComposites(Dataset):
    """Real objects with exact masks on real backgrounds: Fashion-MNIST items pasted on photos.

    Args:
        root: data root for :func:`corrlib.data.load_fashion_mnist` (``<root>/FashionMNIST/raw``,
            else Debian's ``/usr/share/datasets/fashion-mnist``); ``None``: ``$CORRLIB_DATA`` or
            Debian's folder.
        split: ``"train"`` (Fashion-MNIST train items on :data:`TRAIN_BACKGROUNDS`) or ``"test"``
            (test items on :data:`HELDOUT_BACKGROUNDS`): the two never share an object or a
            background photograph.
        n_images: number of items; item ``i`` is a deterministic function of ``(seed, i)``.
        size: ``(H, W)`` of the images, both sides >= 16.
        scale: range of the object's longer side, as a fraction of the shorter canvas side;
            ``0 < lo <= hi <= 1``.
        seed: seed of the draws.
        transform: optional callable applied to the item dict.

    Item ``i``: an object drawn uniformly from the split's Fashion-MNIST items (any class) and a
    background photograph. Background: a random crop (``U(0.5, 1)`` times the largest crop with
    the aspect of ``size``; for a square canvas, of the photo's shorter side) resized to
    ``size``. Object: the bounding box of its :func:`fashion_mask`, resized (bilinear; antialiased
    when shrinking) so its longer side is ``U(scale)`` times the shorter canvas side; colour =
    item intensity x a random RGB tint (HSV: any hue, saturation ``U(0.2, 0.8)``, value
    ``U(0.7, 1)``) x ``(0.75 + 0.25 texture)``, texture a grey crop of another background of the
    split, so objects are not flat. Its mask is resized bilinearly and thresholded at 0.5, and
    the composite is ``where(mask, object, background)`` with that binary mask, so the mask is
    exact by construction: every pixel outside it is the background crop's pixel. The object
    lies fully inside the canvas, its top-left corner at ``U(0.25, 0.75)`` of the free range on
    each axis (biased to the centre). With the default ``scale`` a mask covers on average 20 % of
    the canvas (5th-95th percentile 8-36 %, measured on 500 items of each split).

    Items: ``{"image": uint8 (3, H, W), "mask": bool (H, W), "label": int, "name":
    "fashion-<split>-<i>", "classes": [label], "background_name": str}`` (the photograph the
    background was cut from). Fashion-MNIST and the backgrounds are decoded
    once per process (cached; the first construction takes about 2 s); then an item at 160x160
    renders in about 2 ms (500 items: 0.85 s on 2 CPU cores). ``info`` is Fashion-MNIST's
    :attr:`DigitSet.info`.

    Offline fallback of :func:`load_fashion_mnist`: where the folder it reads holds only the
    official test files (e.g. a ``<root>/FashionMNIST/raw`` with only ``t10k-*``, which is read
    before Debian's folder), "train" and "test" are disjoint stratified 8,000/2,000 parts of the
    10,000 test items: still disjoint, but not the official split. ``info["official"]`` is then
    False and a ``UserWarning`` repeats ``info["warning"]``; pass a root without
    ``FashionMNIST/`` to use Debian's full set.
    """

    SPLITS = DIGIT_SPLITS

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        n_images: int = 500,
        size: tuple[int, int] = (160, 160),
        scale: tuple[float, float] = (0.45, 0.8),
        seed: int = 0,
        transform: Callable[[dict], Any] | None = None,
    ) -> None:
        self.split = check_choice(split, "split", self.SPLITS)
        if int(n_images) != n_images or n_images < 1:
            raise ValueError(f"Argument n_images must be an integer >= 1, got {n_images}.")
        if len(size) != 2 or min(size) < 16:
            raise ValueError(
                f"Argument size must be (H, W) with both sides >= 16, got {tuple(size)}."
            )
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(
                f"Argument scale must be (lo, hi) with 0 < lo <= hi <= 1 (fractions of the "
                f"shorter canvas side), got {tuple(scale)}."
            )
        try:
            self.root: Path | None = resolve_data_root(root)
        except DatasetNotFoundError:
            self.root = None  # load_fashion_mnist then reads Debian's folder
        self.n_images, self.seed, self.transform = int(n_images), int(seed), transform
        self.size = (int(size[0]), int(size[1]))
        self.scale = (float(scale[0]), float(scale[1]))
        self._images, self._labels, self.info = _fashion_items(
            None if self.root is None else str(self.root), self.split
        )
        if not self.info.get("official", True):
            warnings.warn(self.info.get("warning", "unofficial split"), UserWarning, stacklevel=2)
        self.backgrounds = _backgrounds(self.split)
        self.background_names = _BACKGROUNDS[self.split]

    def __len__(self) -> int:
        return self.n_images

    def __getitem__(self, index: int) -> Any:
        out = self._render(item_index(index, len(self), "FashionComposites"))
        item = {k: out[k] for k in ("image", "mask", "label", "name", "classes", "background_name")}
        return self.transform(item) if self.transform is not None else item

    def _render(self, index: int) -> dict[str, Any]:
        """Item ``index`` plus what made it: ``background`` (uint8 ``(3, H, W)``, the crop before
        pasting), ``object_index`` (into the split's Fashion-MNIST items), ``background_name``,
        ``box`` (``(x0, y0, w, h)`` of the pasted object)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        u = torch.rand(_N_DRAWS, generator=gen, dtype=torch.float64).tolist()
        h, w = self.size
        n_obj, n_bg = len(self._labels), len(self.backgrounds)
        k = min(int(u[0] * n_obj), n_obj - 1)
        b = min(int(u[1] * n_bg), n_bg - 1)
        bg = _crop_resize(self.backgrounds[b], self.size, u[2], u[3], u[4])
        background = bg.round().clamp(0, 255).to(torch.uint8)

        # object: the bounding box of its exact mask, resized
        item = self._images[k]
        mask28 = fashion_mask(item)
        if mask28.any():
            rows = torch.nonzero(mask28.any(1)).flatten()
            cols = torch.nonzero(mask28.any(0)).flatten()
            y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        else:  # a blank item (none in Fashion-MNIST): nothing gets pasted
            y0, y1, x0, x1 = 0, item.shape[0], 0, item.shape[1]
        stack = torch.stack((item[y0:y1, x0:x1].float() / 255, mask28[y0:y1, x0:x1].float()))
        lo, hi = self.scale
        f = (lo + (hi - lo) * u[5]) * min(h, w) / max(y1 - y0, x1 - x0)
        oh = min(h, max(1, round((y1 - y0) * f)))
        ow = min(w, max(1, round((x1 - x0) * f)))
        stack = F.interpolate(
            stack[None], size=(oh, ow), mode="bilinear", antialias=f < 1, align_corners=False
        )[0]
        intensity, obj_mask = stack[0].clamp(0, 1), stack[1] > 0.5

        # colour: tint x texture (a grey crop of another background of the split)
        tint = torch.tensor(colorsys.hsv_to_rgb(u[6], 0.2 + 0.6 * u[7], 0.7 + 0.3 * u[8]))
        t = (b + 1 + min(int(u[9] * (n_bg - 1)), n_bg - 2)) % n_bg if n_bg > 1 else b
        texture = _crop_resize(self.backgrounds[t], (oh, ow), u[10], u[11], u[12]).mean(0) / 255
        obj = 255 * intensity[None] * tint[:, None, None] * (0.75 + 0.25 * texture[None])

        # paste, biased to the centre
        py = round((h - oh) * (0.25 + 0.5 * u[13]))
        px = round((w - ow) * (0.25 + 0.5 * u[14]))
        region = background[:, py : py + oh, px : px + ow]
        pasted = torch.where(obj_mask, obj.round().clamp(0, 255).to(torch.uint8), region)
        image = background.clone()
        image[:, py : py + oh, px : px + ow] = pasted
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[py : py + oh, px : px + ow] = obj_mask
        label = int(self._labels[k])
        return {
            "image": image,
            "mask": mask,
            "label": label,
            "name": f"fashion-{self.split}-{index}",
            "classes": [label],
            "background": background,
            "object_index": k,
            "background_name": self.background_names[b],
            "box": (px, py, ow, oh),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, n_images={self.n_images}, "
            f"size={self.size}, scale={self.scale}, seed={self.seed})"
        )


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


def masked_pairs(
    source: Sequence[dict],
    n_pairs: int,
    size: tuple[int, int],
    *,
    kind: str = "affine",
    strength: float = 0.5,
    seed: int = 0,
    max_images: int = 2000,
    n_kps: int = 20,
    transform: Callable[[dict], dict] | None = None,
) -> SyntheticPairs:
    """Warped pairs with masks from a source of ``{"image", "mask"}`` items (SFNet's training data).

    Reads the first ``min(len(source), max_images)`` items of ``source`` (a :class:`VOCMasks`,
    a :class:`FashionComposites`, or any sequence of such dicts; all are held in memory, so
    mind ``max_images`` for large VOC images) and returns
    ``SyntheticPairs(images, size, kind, strength, n_pairs, n_kps, seed, masks=masks)``: each
    pair is a random crop of one image resized to ``size`` and its warp; the mask is cropped and
    warped alongside (bilinear, threshold 0.5), giving ``src_mask``/``trg_mask`` bool
    ``(H, W)`` next to the exact flows. ``kind``: ``"affine"``, ``"homography"``, ``"tps"`` or
    ``"mixed"``.
    """
    if int(max_images) != max_images or max_images < 1:
        raise ValueError(f"Argument max_images must be an integer >= 1, got {max_images}.")
    n = min(len(source), int(max_images))
    if n == 0:
        raise ValueError("Argument source is empty: give a dataset with at least one item.")
    images, masks = [], []
    for i in range(n):
        item = source[i]
        if not isinstance(item, dict) or "image" not in item or "mask" not in item:
            raise ValueError(
                f"Argument source must yield dicts with 'image' (3, H, W) and 'mask' (H, W); "
                f"item {i} is {type(item).__name__}"
                + (f" with keys {sorted(item)}" if isinstance(item, dict) else "")
                + ". Drop a transform that changes the item layout."
            )
        image, mask = item["image"], item["mask"]
        check_shape(mask, tuple(image.shape[1:]), f"source[{i}]['mask']")
        images.append(image)
        masks.append(mask)
    return SyntheticPairs(
        images,
        size=size,
        kind=kind,
        strength=strength,
        n_pairs=n_pairs,
        n_kps=n_kps,
        seed=seed,
        masks=masks,
        transform=transform,
    )
