"""Real image pairs with geometric ground truth, and labelled patch-pair datasets drawn from them.

Pairs (each with its citation in ``source``):

* :func:`load_motorcycle`: Middlebury 2014 *Motorcycle*, bundled with scikit-image (offline).
* :func:`load_aloe`: Middlebury 2006 *Aloe*, OpenCV's sample copy under the data root.
* :func:`load_graffiti`: Oxford *graf* 1 -> 3 with its homography, OpenCV's sample copy.

Expected layout under the data root (``root=None``: ``$CORRLIB_DATA``)::

    <root>/opencv-samples/
        aloeL.jpg  aloeR.jpg  aloeGT.png     (left, right, left-image disparity)
        graf1.png  graf3.png  H1to3p.xml     (homography graf1 -> graf3, OpenCV FileStorage)

Patch pairs (:class:`PatchPairs`) store *locations*, not pixels: a patch centre ``xy_a`` in image
a and an affine map ``A_b`` from patch coordinates to image-b pixels, so every model extracts
patches at its own size with :meth:`PatchPairs.patches`. The samplers follow MC-CNN's scheme
(Zbontar & LeCun, *Stereo matching by training a convolutional neural network to compare image
patches*, JMLR 2016, Sec. 3.1): a positive sits at the true match plus a small offset, a negative
at an offset of ``n_lo..n_hi`` pixels. :class:`PhotoTourPairs` wraps Brown et al.'s patch data.

Conventions: pixels 0-based ``(x, y)``, centres at integers (:mod:`corrlib.geometry`); disparity
on the left image's grid with ``x_right = x_left - d``; grey images float32 ``(H, W)`` in
``[0, 1]`` (luma ``0.299 R + 0.587 G + 0.114 B``), RGB images uint8 ``(3, H, W)``.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from corrlib._check import check_choice, check_shape, check_tensor
from corrlib.color import rgb_to_grey, standardize_images
from corrlib.data._common import DatasetNotFoundError, require_file, resolve_data_root
from corrlib.data.images import read_image
from corrlib.data.synthetic import SyntheticPairs
from corrlib.geometry import pixel_to_normalized, transfer_kps_with_flow

__all__ = [
    "ALOE_GT_SCALE",
    "OPENCV_SAMPLES",
    "PHOTOTOUR_NAMES",
    "HomographyPair",
    "PatchPairs",
    "PhotoTourPairs",
    "StereoPair",
    "gather_patches",
    "load_aloe",
    "load_graffiti",
    "load_motorcycle",
    "read_opencv_matrix",
    "sample_homography_pairs",
    "sample_stacked",
    "sample_stereo_pairs",
    "sample_synthetic_pairs",
    "stereo_offsets",
    "stereo_references",
]

#: Folder of OpenCV's sample images under the data root.
OPENCV_SAMPLES = "opencv-samples"

#: ``aloeGT.png`` stores ``ALOE_GT_SCALE * disparity`` (0 = unknown); measured, see
#: :func:`load_aloe`.
ALOE_GT_SCALE = 1.0

#: The three scenes of Brown et al.'s patch data, as :class:`torchvision.datasets.PhotoTour`
#: names them.
PHOTOTOUR_NAMES = ("liberty", "notredame", "yosemite")

# the archives torchvision's PhotoTour downloads (named in the offline error message; the host
# serves them over http only, as torchvision fetches them)
_PHOTOTOUR_URL = "http://icvl.ee.ic.ac.uk/vbalnt/{name}.zip"
_OPENCV_TREE = """
<root>/opencv-samples/
    aloeL.jpg  aloeR.jpg  aloeGT.png
    graf1.png  graf3.png  H1to3p.xml
"""
_OPENCV_HOW = (
    "these files ship with OpenCV's samples (samples/data in the OpenCV source tree, or Debian's "
    "opencv-data package); copy them into {folder}, or point the data root at a folder that has "
    "opencv-samples/ (e.g. ../shared/data)."
)


# --------------------------------------------------------------------------------------------
# Pairs with ground truth
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class StereoPair:
    """A rectified stereo pair with ground-truth disparity of the left image.

    ``left``, ``right``: float32 grey ``(H, W)`` in ``[0, 1]``; ``left_rgb``, ``right_rgb``: uint8
    ``(3, H, W)``; ``disparity``: float32 ``(H, W)`` pixels, ``x_right = x_left - d`` (unknown
    pixels hold 0 and are False in ``valid``); ``valid``: bool ``(H, W)``; ``name``; ``source``
    (citation).
    """

    left: torch.Tensor
    right: torch.Tensor
    left_rgb: torch.Tensor
    right_rgb: torch.Tensor
    disparity: torch.Tensor
    valid: torch.Tensor
    name: str
    source: str

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return (int(self.left.shape[0]), int(self.left.shape[1]))


@dataclass(eq=False)
class HomographyPair:
    """Two views of a plane and the homography between them.

    ``img1``, ``img3``: float32 grey ``(H, W)`` in ``[0, 1]``; ``img1_rgb``, ``img3_rgb``: uint8
    ``(3, H, W)``; ``H``: float64 ``(3, 3)`` mapping img1 pixels to img3 pixels
    (``(x3, y3, 1) ~ H (x1, y1, 1)``, 0-based); ``name``; ``source`` (citation).
    """

    img1: torch.Tensor
    img3: torch.Tensor
    img1_rgb: torch.Tensor
    img3_rgb: torch.Tensor
    H: torch.Tensor
    name: str
    source: str


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 or float-0..255 ``(3, H, W)`` -> float32 ``(H, W)`` in ``[0, 1]``."""
    return rgb_to_grey(rgb.float() / 255.0)


def _check_scale(scale: float) -> float:
    scale = float(scale)
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"Argument scale must be in (0, 1] (a downscale factor), got {scale}.")
    return scale


def _out_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of ``(C, H, W)`` float (area-like for downscaling)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[
        0
    ]


def _resize_disparity(
    disp: torch.Tensor, valid: torch.Tensor, size: tuple[int, int], max_spread: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid-aware downscale of a disparity map; values rescaled to the new width.

    Each output pixel is the antialiasing-filter-weighted mean of the *valid* input disparities
    under it. It is valid only when every input pixel under the filter is valid and their
    weighted standard deviation is at most ``max_spread`` input pixels (no depth discontinuity
    under it): conservative, an averaged foreground/background edge is never reported.
    """
    if tuple(disp.shape) == tuple(size):
        return disp, valid
    v = valid.float()
    d = torch.where(valid, disp, torch.zeros_like(disp))
    stack = _resize(torch.stack((d * v, d * d * v, v)), size)
    frac = stack[2]
    mean = stack[0] / frac.clamp_min(1e-6)
    var = (stack[1] / frac.clamp_min(1e-6) - mean**2).clamp_min(0)
    ok = (frac > 1 - 1e-4) & (var <= max_spread**2)
    sx = size[1] / disp.shape[1]  # x_out = (x_in + 0.5) sx - 0.5: differences scale by sx
    out = torch.where(ok, mean * sx, torch.zeros_like(mean))
    return out.float(), ok


def _stereo_pair(
    left_rgb: torch.Tensor,
    right_rgb: torch.Tensor,
    disp: torch.Tensor,
    valid: torch.Tensor,
    scale: float,
    name: str,
    source: str,
) -> StereoPair:
    size = _out_size(tuple(disp.shape), _check_scale(scale))
    rgb_l = _resize(left_rgb.float(), size)
    rgb_r = _resize(right_rgb.float(), size)
    disp, valid = _resize_disparity(disp, valid, size)
    return StereoPair(
        left=_luma(rgb_l),
        right=_luma(rgb_r),
        left_rgb=rgb_l.round().clamp(0, 255).to(torch.uint8),
        right_rgb=rgb_r.round().clamp(0, 255).to(torch.uint8),
        disparity=disp,
        valid=valid,
        name=name if scale == 1 else f"{name}@{scale:g}",
        source=source,
    )


def load_motorcycle(scale: float = 1.0) -> StereoPair:
    """Middlebury 2014 *Motorcycle* from scikit-image (bundled, no download): a 500 x 741 pair.

    ``skimage.data.stereo_motorcycle()`` returns ``(left, right, disp)``: uint8 ``(500, 741, 3)``
    images (the full-resolution pair downscaled 4x by scikit-image) and a float32 ``(500, 741)``
    disparity of the *left* image (its docstring says ``(500, 741, 3)`` and NaN for unknown;
    the array is 2-D and unknown pixels are ``+inf``: 27,226 of 370,500 (7.3%), spread over
    the image, e.g. occluded regions beside foreground edges; no NaN, no zero). Known
    disparities span 7.19..59.91 px. Checked here: warping the right image to the left with
    ``x_right = x_left - d`` gives a mean absolute grey error of 0.029 on known pixels (0.172
    with the opposite sign, 0.145 with no warp, 0.058 when read as the right image's disparity).

    ``scale`` in ``(0, 1]`` downscales both images (antialiased) and the disparity (valid-aware,
    multiplied by the width ratio, see ``_resize_disparity``; fewer pixels are valid).
    Scharstein et al., *High-resolution stereo datasets with subpixel-accurate ground truth*,
    GCPR 2014.

    Example:
        >>> pair = load_motorcycle(scale=0.25)
        >>> pair.size, pair.disparity.dtype
        ((125, 185), torch.float32)
    """
    import skimage.data

    left, right, disp = skimage.data.stereo_motorcycle()
    disp_t = torch.from_numpy(np.ascontiguousarray(disp, dtype=np.float32))
    valid = torch.isfinite(disp_t)
    return _stereo_pair(
        torch.from_numpy(left.copy()).permute(2, 0, 1),
        torch.from_numpy(right.copy()).permute(2, 0, 1),
        torch.where(valid, disp_t, torch.zeros_like(disp_t)),
        valid,
        scale,
        "motorcycle",
        "Middlebury 2014 Motorcycle (Scharstein et al., GCPR 2014), via "
        "skimage.data.stereo_motorcycle",
    )


def _opencv_file(root: Path, name: str) -> Path:
    folder = root / OPENCV_SAMPLES
    return require_file(
        folder / name, "OpenCV samples", _OPENCV_HOW.format(folder=folder), tree=_OPENCV_TREE
    )


def load_aloe(data_root: str | os.PathLike | None = None, scale: float = 1.0) -> StereoPair:
    """Middlebury 2006 *Aloe* (full size, 1110 x 1282) from ``<data_root>/opencv-samples/``.

    ``aloeGT.png`` is an 8-bit disparity map of the *left* image; 0 means unknown (3.5% of the
    pixels) and a stored value ``v > 0`` is a disparity of ``v / ALOE_GT_SCALE = v`` pixels
    (known values 43..211). The factor was measured, not assumed: warping the right image to
    the left with ``d = v / s`` (``x_right = x_left - d``), the mean absolute grey error over
    pixels with ``v > 0`` is 0.034 for ``s = 1``, against 0.119 (``s = 2``), 0.124 (3), 0.125
    (4), 0.125 (1/2), 0.142 (1/3), 0.150 (1/4), 0.129 with no warp and 0.140 with the sign
    flipped; a finer sweep of ``s`` in ``[0.8, 1.25]`` has its minimum at 1.0 (0.064 at
    ``s = 0.95``, 0.066 at 1.05). Read as a disparity of the right image it gives 0.070, so it
    belongs to the left one.
    ``tests/data/test_patches.py`` re-checks this on the file. ``scale``: as
    :func:`load_motorcycle`. Missing files raise ``DatasetNotFoundError`` naming the folder.
    Hirschmüller & Scharstein, *Evaluation of cost functions for stereo matching*, CVPR 2007.
    """
    root = resolve_data_root(data_root)
    paths = [_opencv_file(root, n) for n in ("aloeL.jpg", "aloeR.jpg", "aloeGT.png")]
    gt = np.asarray(Image.open(paths[2]))
    if gt.ndim != 2:
        raise ValueError(
            f"{paths[2]}: expected a single-channel disparity PNG, got shape {gt.shape}."
        )
    raw = torch.from_numpy(gt.astype(np.float32))
    valid = raw > 0
    return _stereo_pair(
        read_image(paths[0]),
        read_image(paths[1]),
        raw / ALOE_GT_SCALE,
        valid,
        scale,
        "aloe",
        "Middlebury 2006 Aloe (Hirschmüller & Scharstein, CVPR 2007), OpenCV sample copy",
    )


def read_opencv_matrix(path: str | os.PathLike, name: str | None = None) -> np.ndarray:
    """Read a matrix from an OpenCV FileStorage XML file (``type_id="opencv-matrix"``).

    ``name``: the node's tag (default: the first matrix in the file). Returns a float64
    ``(rows, cols)`` array. Standard library only (``xml.etree``), no OpenCV.
    """
    path = Path(path)
    root = ET.parse(path).getroot()
    nodes = [n for n in root if n.get("type_id") == "opencv-matrix"]
    if name is not None:
        nodes = [n for n in nodes if n.tag == name]
    if not nodes:
        what = f"matrix '{name}'" if name is not None else "opencv-matrix node"
        raise ValueError(f"{path}: no {what} found.")
    node = nodes[0]
    rows, cols = int(node.findtext("rows")), int(node.findtext("cols"))
    values = np.array((node.findtext("data") or "").split(), dtype=np.float64)
    if values.size != rows * cols:
        raise ValueError(f"{path}: matrix {node.tag} has {values.size} values for {rows} x {cols}.")
    return values.reshape(rows, cols)


def load_graffiti(data_root: str | os.PathLike | None = None) -> HomographyPair:
    """The Oxford *graffiti* viewpoint pair 1 -> 3 (640 x 800) and its ground-truth homography.

    Reads ``graf1.png``, ``graf3.png`` and ``H1to3p.xml`` (matrix ``H13``) from
    ``<data_root>/opencv-samples/``. ``H`` maps 0-based graf1 pixels to graf3 pixels: warping
    graf3 onto graf1's grid with it gives a mean absolute grey error of 0.066 on the overlap,
    against 0.073 with ``H`` read in 1-based coordinates and 0.249 with no warp (measured).
    Mikolajczyk et al., *A comparison of affine region detectors*, IJCV 2005.
    """
    root = resolve_data_root(data_root)
    p1, p3, ph = (_opencv_file(root, n) for n in ("graf1.png", "graf3.png", "H1to3p.xml"))
    rgb1, rgb3 = read_image(p1), read_image(p3)
    h = torch.from_numpy(read_opencv_matrix(ph, "H13"))
    return HomographyPair(
        img1=_luma(rgb1),
        img3=_luma(rgb3),
        img1_rgb=rgb1,
        img3_rgb=rgb3,
        H=h,
        name="graffiti-1to3",
        source=(
            "Oxford affine dataset, graf 1->3 (Mikolajczyk et al., IJCV 2005), OpenCV sample copy"
        ),
    )


def _apply_homography(h: torch.Tensor, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``h (3, 3)`` on ``pts (N, 2)`` -> ``(H(p) (N, 2), Jacobian (N, 2, 2))``, float64."""
    h, pts = h.double(), pts.double()
    ph = torch.cat((pts, torch.ones_like(pts[:, :1])), 1) @ h.T  # (N, 3)
    w = ph[:, 2:]
    q = ph[:, :2] / w
    # d q / d p = (H[:2, :2] - q H[2, :2]) / w
    jac = (h[:2, :2][None] - q[:, :, None] * h[2, :2][None, None]) / w[:, :, None]
    return q, jac


# --------------------------------------------------------------------------------------------
# Patch pairs
# --------------------------------------------------------------------------------------------


def gather_patches(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` ``(K,)`` of a patch table ``(U, 1, P, P)`` as float32 ``(K, 1, P, P)``: a
    uint8 table (8-bit patches kept as they are stored) is divided by 255, into ``[0, 1]``; a
    float one is gathered as it is (``[0, 1]``, or standardised values for a table read with
    ``standardize=True``; see :meth:`PatchPairs.patch_table`)."""
    out = table[index]
    return out.float().div_(255.0) if out.dtype == torch.uint8 else out


class PatchPairs(Dataset):
    """Labelled pairs of patch *locations* in a list of grey images.

    Args:
        images: float32 grey images ``(H, W)`` (sizes may differ).
        img_a_index, img_b_index: ``(N,)`` int, which image each patch comes from.
        xy_a: ``(N, 2)`` centre of patch a in pixels of its image (axis-aligned, 1:1 scale).
        A_b: ``(N, 2, 3)`` affine map from patch coordinates to image-b pixels:
            ``p_b = A_b[:, :, :2] @ (u, v) + A_b[:, :, 2]``, where ``(u, v)`` is the offset from
            the patch centre in pixels of image a. A translation for stereo; the local
            linearisation of a homography or flow elsewhere, so that positives are rectified.
        label: ``(N,)`` bool, True for a matching pair.
        source: where the pairs come from (citations).
        offset: optional ``(N, 2)`` displacement of patch b's centre from the true match, in
            image-b pixels (what the sampler drew).
        patch_size: the size ``__getitem__`` returns.

    ``patches(size)`` -> ``(a, b)``, each ``(N, 1, size, size)`` float32, sampled bilinearly with
    border padding in one batched ``grid_sample`` and cached per size (``8 N size^2`` bytes).
    ``dataset[i]`` is ``(a[i], b[i], label[i])`` at ``patch_size``.

    Example:
        >>> img = torch.arange(100.0).reshape(10, 10)  # img(x, y) = x + 10 y
        >>> shift = torch.tensor([[[1.0, 0.0, 6.0], [0.0, 1.0, 4.0]]])  # patch b centred at (6, 4)
        >>> pp = PatchPairs([img], torch.tensor([0]), torch.tensor([[4.0, 4.0]]), torch.tensor([0]),
        ...                 shift, torch.tensor([True]))
        >>> a, b = pp.patches(3)
        >>> a[0, 0]
        tensor([[33., 34., 35.],
                [43., 44., 45.],
                [53., 54., 55.]])
        >>> (b - a).unique().tolist()  # patch b is patch a moved two pixels right
        [2.0]
    """

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        img_a_index: torch.Tensor,
        xy_a: torch.Tensor,
        img_b_index: torch.Tensor,
        A_b: torch.Tensor,
        label: torch.Tensor,
        *,
        source: str = "",
        offset: torch.Tensor | None = None,
        patch_size: int = 32,
    ) -> None:
        if len(images) == 0:
            raise ValueError("Argument images is empty: give at least one (H, W) grey image.")
        for i, img in enumerate(images):
            check_shape(img, ("H", "W"), f"images[{i}]")
        n = check_shape(label, ("N",), "label")["N"]
        check_shape(img_a_index, (n,), "img_a_index")
        check_shape(img_b_index, (n,), "img_b_index")
        check_shape(xy_a, (n, 2), "xy_a")
        check_shape(A_b, (n, 2, 3), "A_b")
        for idx, name in ((img_a_index, "img_a_index"), (img_b_index, "img_b_index")):
            if n and (int(idx.min()) < 0 or int(idx.max()) >= len(images)):
                raise ValueError(f"Argument {name} must index images (0..{len(images) - 1}).")
        if offset is not None:
            check_shape(offset, (n, 2), "offset")
        self.images = [img.float() for img in images]
        self.img_a_index, self.img_b_index = img_a_index.long(), img_b_index.long()
        self.xy_a, self.A_b = xy_a.float(), A_b.float()
        self.label, self.offset, self.source = label.bool(), offset, source
        self.patch_size = _check_size(patch_size)
        self._cache: dict[tuple[int, bool], torch.Tensor] = {}

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(self)
        if not -n <= int(index) < n:
            raise IndexError(f"PatchPairs has {n} pairs; index {index} is out of range.")
        a, b = self.patches(self.patch_size)
        return a[index], b[index], self.label[index]

    def __repr__(self) -> str:
        return (
            f"PatchPairs(n={len(self)}, positives={int(self.label.sum())}, "
            f"images={len(self.images)}, patch_size={self.patch_size})"
        )

    def patch_coords(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel positions of every patch sample: two ``(N, size, size, 2)`` tensors (x, y).

        Patch sample ``(i, j)`` (row, column) has patch coordinates
        ``(u, v) = (j - (size - 1) / 2, i - (size - 1) / 2)``.
        """
        size = _check_size(size)
        r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        vv, uu = torch.meshgrid(r, r, indexing="ij")
        uv = torch.stack((uu, vv), -1)  # (S, S, 2)
        pts_a = self.xy_a[:, None, None, :] + uv
        pts_b = (
            torch.einsum("nij,abj->nabi", self.A_b[:, :, :2], uv) + self.A_b[:, None, None, :, 2]
        )
        return pts_a, pts_b

    def patches(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Both patches of every pair: ``(a, b)``, each ``(N, 1, size, size)`` float32 (cached;
        views of :meth:`patch_table`'s table)."""
        table, _, _ = self.patch_table(size)
        n = len(self)
        return table[:n], table[n:]

    def patch_table(
        self, size: int, *, standardize: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The patches once, and each pair's rows: ``(table, index_a, index_b)``.

        ``table`` ``(U, 1, size, size)`` (float32 here: every sampled patch, the ``a`` patches
        first), ``index_a``/``index_b`` ``(N,)`` int64 rows of each pair's patches. Read rows with
        :func:`gather_patches`. Cached per size and ``standardize``.

        ``standardize``: cut the patches from the images standardised each on its own
        (:func:`corrlib.color.standardize_images`: MC-CNN's preprocessing, the input of an
        MC-CNN with ``input_norm="image"``) instead of from the images in ``[0, 1]``.
        """
        size = _check_size(size)
        key = (size, bool(standardize))
        if key not in self._cache:
            pts_a, pts_b = self.patch_coords(size)
            images = [standardize_images(im) for im in self.images] if standardize else self.images
            out = _sample_patches(
                images,
                torch.cat((self.img_a_index, self.img_b_index)),
                torch.cat((pts_a, pts_b)),
            )
            self._cache[key] = out[:, None]
        n = len(self)
        return self._cache[key], torch.arange(n), torch.arange(n, 2 * n)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"Argument size must be an int >= 1, got {size!r}.")
    return size


#: Patch samples per ``grid_sample`` call (bounds the temporary grid: 16 Mi samples, 128 MiB).
_MAX_SAMPLES_PER_CALL = 1 << 24


def _sample_patches(
    images: list[torch.Tensor], index: torch.Tensor, pts: torch.Tensor
) -> torch.Tensor:
    """Bilinear, border-padded samples ``(K, S, S)`` of ``images[index[k]]`` at
    ``pts (K, S, S, 2)``.

    One batched ``grid_sample`` call (per 16 Mi samples): the images are stacked as a batch, each
    replicate-padded to the largest size (which keeps border padding exact), and the patches of
    each image are laid side by side in its batch entry.
    """
    k, s = pts.shape[0], pts.shape[1]
    if k == 0:
        return pts.new_zeros(0, s, s)
    hm = max(int(img.shape[0]) for img in images)
    wm = max(int(img.shape[1]) for img in images)
    padded = [
        F.pad(img[None, None], (0, wm - img.shape[1], 0, hm - img.shape[0]), mode="replicate")[0]
        for img in images
    ]
    stack = torch.stack(padded)  # (M, 1, Hm, Wm)
    step = max(1, _MAX_SAMPLES_PER_CALL // (s * s))
    return torch.cat(
        [sample_stacked(stack, index[i : i + step], pts[i : i + step]) for i in range(0, k, step)]
    )


def sample_stacked(
    stack: torch.Tensor, index: torch.Tensor, pts: torch.Tensor, mode: str = "bilinear"
) -> torch.Tensor:
    """Patches ``(K, S, S)`` of images ``stack[index[k]]`` sampled at ``pts (K, S, S, 2)``
    (pixels, x then y), border padding, in one ``grid_sample`` call: the patches of an image lie
    side by side in its batch entry.

    Args:
        stack: ``(M, 1, Hm, Wm)`` images, replicate-padded to one size (which keeps the border
            padding of each exact).
        index: int64 ``(K,)`` image of each patch.
        pts: ``(K, S, S, 2)`` sample positions in pixels of the images.
        mode: ``grid_sample``'s interpolation (``"bilinear"``, ``"bicubic"``).
    """
    m, _, hm, wm = stack.shape
    k, s = pts.shape[0], pts.shape[1]
    counts = torch.bincount(index, minlength=m)
    order = torch.argsort(index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(index)
    rank[order] = torch.arange(k) - starts[index[order]]  # slot of each patch in its image's entry
    slots = int(counts.max())
    grid = pts.new_zeros(m, slots, s, s, 2)
    grid[index, rank] = pixel_to_normalized(pts, (hm, wm))
    out = F.grid_sample(
        stack,
        grid.reshape(m, slots * s, s, 2),
        mode=mode,
        padding_mode="border",
        align_corners=False,
    )  # (M, 1, slots * S, S)
    return out.reshape(m, slots, s, s)[index, rank]


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------


def _gen(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _check_offsets(p_hi: float, n_lo: float, n_hi: float) -> None:
    if not 0 <= p_hi <= n_lo <= n_hi:
        raise ValueError(
            "Arguments must satisfy 0 <= p_hi <= n_lo <= n_hi (positives within p_hi of the "
            f"match, negatives n_lo..n_hi away), got p_hi={p_hi}, n_lo={n_lo}, n_hi={n_hi}."
        )


def _split(n: int, pos_fraction: float) -> tuple[int, int]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"Argument n must be an int >= 0, got {n!r}.")
    if not 0.0 <= pos_fraction <= 1.0:
        raise ValueError(f"Argument pos_fraction must be in [0, 1], got {pos_fraction}.")
    n_pos = round(n * pos_fraction)
    return n_pos, n - n_pos


def _uniform(shape: tuple[int, ...], lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)


def stereo_offsets(
    n_pos: int,
    n_neg: int,
    *,
    p_hi: float,
    n_lo: float,
    n_hi: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MC-CNN's offsets along the row from the true match (pixels, float64 ``(n_pos + n_neg,)``):
    ``n_pos`` positives ``U[-p_hi, p_hi]``, then ``n_neg`` negatives ``+-U[n_lo, n_hi]`` with a
    random sign (the draws :func:`sample_stereo_pairs` makes; ``0 <= p_hi <= n_lo <= n_hi`` is
    checked). ``generator=None``: a fresh one seeded with 0."""
    _check_offsets(p_hi, n_lo, n_hi)
    gen = _gen(generator)
    o_pos = _uniform((n_pos,), -p_hi, p_hi, gen)
    sign = torch.where(torch.rand(n_neg, generator=gen) < 0.5, -1.0, 1.0).double()
    return torch.cat((o_pos, sign * _uniform((n_neg,), n_lo, n_hi, gen)))


def _offsets_2d(n_pos, n_neg, p_hi, n_lo, n_hi, gen) -> torch.Tensor:
    o_pos = _uniform((n_pos, 2), -p_hi, p_hi, gen)
    radius = _uniform((n_neg,), n_lo, n_hi, gen)
    angle = _uniform((n_neg,), 0.0, 2 * math.pi, gen)
    o_neg = radius[:, None] * torch.stack((torch.cos(angle), torch.sin(angle)), 1)
    return torch.cat((o_pos, o_neg))


def _references(n_pos: int, n_neg: int) -> torch.Tensor:
    """Row -> reference index: positives use refs 0..n_pos-1, negatives 0..n_neg-1."""
    return torch.cat((torch.arange(n_pos), torch.arange(n_neg)))


def _draw(mask: torch.Tensor, n: int, gen: torch.Generator, what: str) -> torch.Tensor:
    """``n`` pixels ``(n, 2)`` (x, y) drawn uniformly (with replacement) where ``mask (H, W)``."""
    flat = mask.flatten().nonzero()[:, 0]
    if n and flat.numel() == 0:
        raise ValueError(f"No pixel can serve as a reference: {what}.")
    pick = flat[torch.randint(max(flat.numel(), 1), (n,), generator=gen)] if n else flat[:0]
    w = mask.shape[1]
    return torch.stack((pick % w, pick // w), 1).double()


_MCCNN = "MC-CNN sampling (Zbontar & LeCun, JMLR 2016, Sec. 3.1)"


def _reference_mask(pair: StereoPair, n_hi: float, margin: int) -> torch.Tensor:
    """``(H, W)`` bool: the left pixels that can serve as MC-CNN references (valid finite
    disparity ``d``, ``margin`` px inside the image, and ``x - d +- n_hi`` ``margin`` px inside
    the right image)."""
    h, w = pair.size
    disp = pair.disparity.double()
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    ok = pair.valid & torch.isfinite(disp)
    ok &= (xs >= margin) & (xs <= w - 1 - margin) & (ys >= margin) & (ys <= h - 1 - margin)
    ok &= (xs - disp - n_hi >= margin) & (xs - disp + n_hi <= w - 1 - margin)
    return ok


def stereo_references(
    pair: StereoPair, *, n_hi: float = 10.0, margin: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every left pixel of ``pair`` that can serve as an MC-CNN reference, with its disparity:
    the pixels :func:`sample_stereo_pairs` draws from (same rule, same arguments).

    Returns:
        ``(xy, d)``: int64 ``(R, 2)`` pixel positions (x, y), row-major order, and float32
        ``(R,)`` their ground-truth disparities in pixels (``x_right = x - d``).
    """
    ok = _reference_mask(pair, n_hi, margin)
    flat = ok.flatten().nonzero()[:, 0]
    w = ok.shape[1]
    xy = torch.stack((flat % w, flat // w), 1)
    return xy, pair.disparity.flatten()[flat].float()


def sample_stereo_pairs(
    pair: StereoPair,
    n: int,
    *,
    p_hi: float = 1.0,
    n_lo: float = 4.0,
    n_hi: float = 10.0,
    margin: int = 5,
    pos_fraction: float = 0.5,
    patch_size: int = 11,
    generator: torch.Generator | None = None,
) -> PatchPairs:
    """Positive and negative patch pairs from a stereo pair, as MC-CNN trains on them.

    A reference is a left pixel ``(x, y)`` with valid disparity ``d``, at least ``margin`` pixels
    from the border, whose candidates ``x - d +- n_hi`` stay ``margin`` inside the right image.
    Its positive is at ``(x - d + o_pos, y)`` with ``o_pos ~ U[-p_hi, p_hi]``, its negative at
    ``(x - d + o_neg, y)`` with ``|o_neg| ~ U[n_lo, n_hi]`` and a random sign (continuous
    offsets, bilinear sampling). Rows ``0..n_pos-1`` are positives, the rest negatives, with
    ``n_pos = round(n * pos_fraction)``; row ``i`` and row ``n_pos + i`` share their reference
    (MC-CNN's pair of examples per reference). Images: ``[left, right]``; ``A_b`` is a pure
    translation; ``offset`` holds ``(o, 0)``. Defaults are MC-CNN's KITTI 2012 values
    (``dataset_pos = 1``, ``dataset_neg_low = 4``, ``dataset_neg_high = 10``); the 11 x 11
    default patch is its Middlebury accurate network's (KITTI's accurate network uses 9 x 9).
    ``generator=None`` uses a fresh one seeded with 0.

    Example:
        >>> pair = load_motorcycle(scale=0.25)
        >>> pp = sample_stereo_pairs(pair, 100, generator=torch.Generator().manual_seed(0))
        >>> len(pp), int(pp.label.sum()), tuple(pp.patches(9)[0].shape)
        (100, 50, (100, 1, 9, 9))
    """
    _check_offsets(p_hi, n_lo, n_hi)
    n_pos, n_neg = _split(n, pos_fraction)
    gen = _gen(generator)
    disp = pair.disparity.double()
    ok = _reference_mask(pair, n_hi, margin)
    refs = _draw(ok, max(n_pos, n_neg), gen, f"no valid disparity {margin} px from the borders")
    rows = _references(n_pos, n_neg)
    xy = refs[rows]  # (N, 2)
    d = disp[xy[:, 1].long(), xy[:, 0].long()]
    o = stereo_offsets(n_pos, n_neg, p_hi=p_hi, n_lo=n_lo, n_hi=n_hi, generator=gen)
    a_b = torch.zeros(n_pos + n_neg, 2, 3, dtype=torch.float64)
    a_b[:, 0, 0] = a_b[:, 1, 1] = 1.0
    a_b[:, 0, 2] = xy[:, 0] - d + o
    a_b[:, 1, 2] = xy[:, 1]
    n_all = n_pos + n_neg
    return PatchPairs(
        [pair.left, pair.right],
        torch.zeros(n_all, dtype=torch.long),
        xy.float(),
        torch.ones(n_all, dtype=torch.long),
        a_b.float(),
        torch.arange(n_all) < n_pos,
        source=f"{pair.name}: {_MCCNN}; {pair.source}",
        offset=torch.stack((o, torch.zeros_like(o)), 1).float(),
        patch_size=patch_size,
    )


def sample_homography_pairs(
    pair: HomographyPair,
    n: int,
    *,
    p_hi: float = 1.0,
    n_lo: float = 4.0,
    n_hi: float = 10.0,
    margin: int = 16,
    pos_fraction: float = 0.5,
    patch_size: int = 32,
    generator: torch.Generator | None = None,
) -> PatchPairs:
    """MC-CNN-style pairs from a homography pair, patch b rectified by the local homography.

    A reference is an img1 pixel ``p`` at least ``margin`` pixels from the border whose match
    ``H(p)`` lies ``margin + n_hi`` pixels inside img3. Patch b is centred at ``H(p) + o`` with
    ``o ~ U[-p_hi, p_hi]^2`` (positives) or ``|o| ~ U[n_lo, n_hi]`` in a uniform direction
    (negatives), offsets in img3 pixels; ``A_b = [J_H(p) | H(p) + o]`` with ``J_H(p)`` the
    Jacobian of ``H`` at ``p``, so a positive's patch b is img3 resampled into img1's frame (as
    the rectified patches of Brown et al., TPAMI 2011). Rows, ``offset``, ``generator`` as
    :func:`sample_stereo_pairs`; images ``[img1, img3]``.
    """
    _check_offsets(p_hi, n_lo, n_hi)
    n_pos, n_neg = _split(n, pos_fraction)
    gen = _gen(generator)
    (h1, w1), (h3, w3) = pair.img1.shape, pair.img3.shape
    ys, xs = torch.meshgrid(
        torch.arange(h1, dtype=torch.float64), torch.arange(w1, dtype=torch.float64), indexing="ij"
    )
    q, _ = _apply_homography(pair.H, torch.stack((xs, ys), -1).reshape(-1, 2))
    q = q.reshape(h1, w1, 2)
    inner = margin + n_hi
    ok = (xs >= margin) & (xs <= w1 - 1 - margin) & (ys >= margin) & (ys <= h1 - 1 - margin)
    ok &= (q[..., 0] >= inner) & (q[..., 0] <= w3 - 1 - inner)
    ok &= (q[..., 1] >= inner) & (q[..., 1] <= h3 - 1 - inner)
    refs = _draw(ok, max(n_pos, n_neg), gen, "no img1 pixel maps inside img3 away from its borders")
    xy = refs[_references(n_pos, n_neg)]
    q, jac = _apply_homography(pair.H, xy)
    o = _offsets_2d(n_pos, n_neg, p_hi, n_lo, n_hi, gen)
    n_all = n_pos + n_neg
    return PatchPairs(
        [pair.img1, pair.img3],
        torch.zeros(n_all, dtype=torch.long),
        xy.float(),
        torch.ones(n_all, dtype=torch.long),
        torch.cat((jac, (q + o)[:, :, None]), 2).float(),
        torch.arange(n_all) < n_pos,
        source=f"{pair.name}: {_MCCNN}, 2-D offsets, rectified by H; {pair.source}",
        offset=o.float(),
        patch_size=patch_size,
    )


def sample_synthetic_pairs(
    dataset: SyntheticPairs,
    n: int,
    *,
    p_hi: float = 1.0,
    n_lo: float = 4.0,
    n_hi: float = 10.0,
    pos_fraction: float = 0.5,
    indices: Sequence[int] | None = None,
    patch_size: int = 32,
    generator: torch.Generator | None = None,
) -> PatchPairs:
    """MC-CNN-style pairs from :class:`~corrlib.data.SyntheticPairs` samples (exact matches).

    A reference is a keypoint of a sample (``src_kps[k]`` in ``src_img``, true match
    ``trg_kps[k]`` in ``trg_img``), drawn uniformly over the samples ``indices`` (default: all)
    and their keypoints. Patch b is centred at ``trg_kps[k] + o`` (offsets and rows as
    :func:`sample_homography_pairs`) and rectified by the Jacobian of the src -> trg map
    ``p + flow(p)`` at the keypoint (central differences of the bilinear flow, +-1 px). Images:
    ``[src_0, trg_0, src_1, trg_1, ...]`` (grey) of the samples used, in ``indices`` order.
    Offsets may move patch b past the image border (border padding).
    """
    if not isinstance(dataset, SyntheticPairs):
        raise TypeError(f"Argument dataset must be a SyntheticPairs, got {type(dataset).__name__}.")
    _check_offsets(p_hi, n_lo, n_hi)
    n_pos, n_neg = _split(n, pos_fraction)
    gen = _gen(generator)
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if not indices:
        raise ValueError("Argument indices is empty: give at least one sample index.")
    if dataset.n_kps == 0:
        raise ValueError("The SyntheticPairs dataset has n_kps = 0: no keypoints to sample.")
    n_ref = max(n_pos, n_neg)
    which = torch.randint(len(indices), (n_ref,), generator=gen)
    kp = torch.randint(dataset.n_kps, (n_ref,), generator=gen)
    o = _offsets_2d(n_pos, n_neg, p_hi, n_lo, n_hi, gen)
    images, ref_xy, ref_q, ref_jac = (
        [],
        torch.zeros(n_ref, 2),
        torch.zeros(n_ref, 2),
        torch.zeros(n_ref, 2, 2),
    )
    for j, idx in enumerate(indices):
        sample = dataset[idx]
        images += [_luma(sample["src_img"] * 255), _luma(sample["trg_img"] * 255)]
        sel = (which == j).nonzero()[:, 0]
        if sel.numel() == 0:
            continue
        src = sample["src_kps"][kp[sel]].double()  # (k, 2)
        flow = sample["flow"][None].double()
        cols = []
        for e in (
            torch.tensor([1.0, 0.0], dtype=torch.float64),
            torch.tensor([0.0, 1.0], dtype=torch.float64),
        ):
            plus = transfer_kps_with_flow(flow, (src + e)[None])[0]
            minus = transfer_kps_with_flow(flow, (src - e)[None])[0]
            cols.append((plus - minus) / 2)  # d (p + flow) / d e
        ref_xy[sel] = src.float()
        ref_q[sel] = sample["trg_kps"][kp[sel]].float()
        ref_jac[sel] = torch.stack(cols, 2).float()  # (k, 2, 2), column j = derivative along axis j
    rows = _references(n_pos, n_neg)
    img_a = 2 * which[rows]
    centre = ref_q[rows].double() + o
    return PatchPairs(
        images,
        img_a,
        ref_xy[rows],
        img_a + 1,
        torch.cat((ref_jac[rows].double(), centre[:, :, None]), 2).float(),
        torch.arange(n_pos + n_neg) < n_pos,
        source=(
            f"SyntheticPairs({dataset.kind}, strength {dataset.strength}): {_MCCNN}, 2-D offsets"
        ),
        offset=o.float(),
        patch_size=patch_size,
    )


# --------------------------------------------------------------------------------------------
# Brown et al.'s patch data
# --------------------------------------------------------------------------------------------


class PhotoTourPairs(Dataset):
    """Brown et al.'s patch pairs (Liberty, Notre Dame, Yosemite) as ``(a, b, label)``.

    A thin wrapper over :class:`torchvision.datasets.PhotoTour` (64 x 64 grey patches of DoG
    interest points, rectified for scale and orientation). Layout under the data root::

        <root>/PhotoTour/
            liberty/       (liberty.zip unzipped: patches*.bmp, info.txt, m50_*.txt)
            liberty.pt     (torchvision's tensor cache, written on first use)

    ``train=False``: the scene's 100,000 labelled evaluation pairs (``m50_100000_100000_0.txt``,
    half matches), the pairs FPR95 is reported on. ``train=True``: ``n_pairs`` pairs drawn with
    ``seed`` from the 3-D point labels, half matches (two different patches of one point) and
    half non-matches (patches of two different points). Items are ``(a, b, label)``: float32
    ``(1, size, size)`` in ``[0, 1]`` (resized with antialiasing when ``size != 64``) and a bool.
    ``download=True`` lets torchvision fetch the archive (network); offline, a missing scene
    raises ``DatasetNotFoundError`` saying what to fetch. ``pairs`` ``(N, 2)`` holds the patch
    indices, ``labels`` ``(N,)`` (alias ``label``) the labels. In the training pairs each
    non-match shares its first patch with the match of the same row in the first half (rows
    ``i`` and ``N/2 + i``: MC-CNN's pair of examples per reference), so they can feed
    :class:`corrlib.recipes.patch.PatchPool` like :class:`PatchPairs`. :meth:`patch_table` gives
    each distinct patch once (uint8 at 64 px) with every pair's rows, read in batches with
    :func:`gather_patches`; :meth:`patches` copies every pair's patches to float32 (a new copy
    per call: small sets only).
    Brown, Hua & Winder, *Discriminative learning of local image descriptors*, TPAMI 2011.
    """

    FOLDER = "PhotoTour"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        name: str = "liberty",
        train: bool = True,
        download: bool = False,
        *,
        size: int = 64,
        n_pairs: int = 100_000,
        seed: int = 0,
    ) -> None:
        check_choice(name, "name", PHOTOTOUR_NAMES)
        self.size = _check_size(size)
        self.name, self.train = name, bool(train)
        self.folder = resolve_data_root(root) / self.FOLDER
        cached, unzipped = self.folder / f"{name}.pt", self.folder / name
        if not download and not cached.is_file() and not unzipped.is_dir():
            url = _PHOTOTOUR_URL.format(name=name)
            raise DatasetNotFoundError(
                f"PhotoTour ({name}): neither {unzipped} nor {cached} exists.\nExpected layout:\n"
                f"{self.folder}/\n    {name}/    ({name}.zip unzipped)\n"
                f"How to get it: pass download=True (needs the network), or fetch {url} by hand "
                f"and unzip it into {unzipped}."
            )
        # imported here, after the offline check: torchvision.datasets takes seconds to import
        from torchvision.datasets import PhotoTour

        self.folder.mkdir(parents=True, exist_ok=True)
        base = PhotoTour(str(self.folder), name=name, train=self.train, download=download)
        self.data = base.data  # (P, 64, 64) uint8
        if self.train:
            self.pairs, self.labels = _label_pairs(base.labels, n_pairs, seed)
        else:
            self.pairs, self.labels = base.matches[:, :2].long(), base.matches[:, 2].bool()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _patch(self, i: int) -> torch.Tensor:
        p = self.data[i].float()[None] / 255.0  # (1, 64, 64)
        return _resize(p, (self.size, self.size)) if self.size != p.shape[-1] else p

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i, j = self.pairs[index].tolist()
        return self._patch(i), self._patch(j), self.labels[index]

    @property
    def label(self) -> torch.Tensor:
        """``(N,)`` bool: :attr:`labels` under :class:`PatchPairs`' name."""
        return self.labels

    def patches(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Both patches of every pair: ``(a, b)``, each ``(N, 1, size, size)`` float32 in
        ``[0, 1]``, resized with antialiasing from 64 px when ``size != 64``.

        A new per-pair copy on every call (16 KiB a 64 px patch: 3.3 GB for 100,000 pairs);
        training and scoring read :meth:`patch_table` in batches instead.
        """
        table, index_a, index_b = self.patch_table(size)
        return gather_patches(table, index_a), gather_patches(table, index_b)

    def patch_table(
        self, size: int, *, standardize: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every distinct patch the pairs use, once, and each pair's rows:
        ``(table, index_a, index_b)`` (cached per size and ``standardize``).

        ``table`` ``(U, 1, size, size)``: at 64 px the scene's own uint8 patches (1 byte a
        pixel, no copy per pair: 4 KiB a patch), at another size float32 in ``[0, 1]`` resized
        with antialiasing; ``index_a``/``index_b`` ``(N,)`` int64 rows. Read rows as float32 in
        ``[0, 1]`` with :func:`gather_patches`.

        ``standardize``: the input of an MC-CNN with ``input_norm="image"``. Brown's patches
        come without their source images, so each stored 64 px patch is standardised on its own
        (the nearest to MC-CNN's per-image statistics there is), then resized; the table is then
        float32.
        """
        size = _check_size(size)
        cache = self.__dict__.setdefault("_patch_cache", {})
        key = (size, bool(standardize))
        if key not in cache:
            used, inverse = torch.unique(self.pairs.flatten(), return_inverse=True)
            p = self.data[used][:, None]  # (U, 1, 64, 64) uint8
            if standardize:  # each stored 64 px patch's statistics, before any resize
                p = torch.cat([standardize_images(c.float() / 255.0) for c in p.split(4096)])
            if size != p.shape[-1]:
                resize = dict(size=(size, size), mode="bilinear", antialias=True)
                p = torch.cat(
                    [F.interpolate(gather_patches(c, slice(None)), **resize) for c in p.split(4096)]
                )
            inverse = inverse.view(-1, 2)
            cache[key] = (p, inverse[:, 0].contiguous(), inverse[:, 1].contiguous())
        return cache[key]

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return (
            f"PhotoTourPairs(name={self.name!r}, split={split}, len={len(self)}, size={self.size})"
        )


def _label_pairs(labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` index pairs (half matching) from per-patch 3-D point ``labels (P,)``."""
    check_tensor(labels, "labels")
    gen = torch.Generator().manual_seed(int(seed))
    n_pos, n_neg = _split(n, 0.5)
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    group = torch.repeat_interleave(torch.arange(len(counts)), counts)  # group of order[k]
    multi = (counts[group] >= 2).nonzero()[:, 0]  # sorted positions in a point with >= 2 patches
    if n_pos and multi.numel() == 0:
        raise ValueError("No 3-D point has two patches: cannot draw matching pairs.")
    k = multi[torch.randint(max(multi.numel(), 1), (n_pos,), generator=gen)] if n_pos else multi[:0]
    g = group[k]
    shift = 1 + (torch.rand(n_pos, generator=gen) * (counts[g] - 1)).long().clamp_max(counts[g] - 2)
    partner = starts[g] + (k - starts[g] + shift) % counts[g]
    pos = torch.stack((order[k], order[partner]), 1)
    # each non-match keeps the reference patch of the match in its row (n_neg <= n_pos)
    neg_a = (
        pos[torch.arange(n_neg) % max(n_pos, 1), 0]
        if n_pos
        else torch.randint(len(labels), (n_neg,), generator=gen)
    )
    neg_b = torch.randint(len(labels), (n_neg,), generator=gen)
    for _ in range(100):  # redraw the few that hit the same point
        same = labels[neg_a] == labels[neg_b]
        if not same.any():
            break
        neg_b[same] = torch.randint(len(labels), (int(same.sum()),), generator=gen)
    else:
        raise ValueError(
            "Could not draw non-matching pairs: nearly all patches share one 3-D point."
        )
    pairs = torch.cat((pos, torch.stack((neg_a, neg_b), 1)))
    return pairs.long(), torch.arange(n_pos + n_neg) < n_pos
