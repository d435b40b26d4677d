"""Dense hand-crafted descriptors: the pre-deep baselines of semantic correspondence.

Every descriptor is a function ``<name>_descriptors(image, ...) -> (desc, grid)``:

* ``image``: an RGB tensor ``(3, H, W)``, float in ``[0, 1]`` or ``uint8`` (scaled to ``[0, 1]``);
  the grey-level methods use its luma ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601).
* ``desc``: a float32 map ``(C, h, w)``, one ``C``-vector per cell, finite even on flat images.
* ``grid``: a :class:`~corrlib.matching.FeatureGrid` giving the pixel centre of each descriptor's
  support, ``pixel = origin + step * cell`` (pixels 0-based, ``(x, y)``, centres at integers).

All maps are *valid*: a cell exists only where its whole support lies inside the image, so an
image smaller than one support raises ``ValueError``. Matching
(:func:`match_keypoints_handcrafted`, :func:`dense_flow_handcrafted`) scores descriptors by
cosine similarity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from corrlib._check import check_choice, check_image, check_int, check_shape
from corrlib.color import rgb_to_grey
from corrlib.correlation import dense_nearest_neighbour, l2_normalize
from corrlib.geometry import pixel_grid
from corrlib.matching import FeatureGrid, sample_descriptors, transfer_keypoints

__all__ = [
    "DESCRIPTORS",
    "cell_flow_to_pixel_flow",
    "census_bits",
    "census_descriptors",
    "daisy_descriptors",
    "dense_descriptors",
    "dense_flow_handcrafted",
    "describe",
    "flow_from_descriptors",
    "hog_descriptors",
    "match_keypoints_handcrafted",
    "raw_patch_descriptors",
    "resize_longer_side",
    "sift_descriptors",
    "zncc_descriptors",
]

HOG_BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")
DAISY_NORMALIZATIONS = ("l1", "l2", "daisy", "off")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _to_float_image(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Checked ``(3, H, W)`` image as float32 in ``[0, 1]``."""
    check_image(image, name, batched=False)
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    if not image.is_floating_point():
        raise ValueError(
            f"Argument {name} must be float (values in [0, 1]) or uint8, got dtype {image.dtype}."
        )
    return image.float()


def _to_grey(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """``(3, H, W)`` RGB -> ``(H, W)`` float32 luma in ``[0, 1]``."""
    check_image(image, name, batched=False)
    return rgb_to_grey(image, name)


def _check_min_size(
    size: tuple[int, int], min_size: tuple[int, int], method: str, why: str
) -> None:
    (h, w), (mh, mw) = size, min_size
    if h < mh or w < mw:
        raise ValueError(
            f"Image is too small for {method}: got (H, W) = ({h}, {w}), need at least "
            f"({mh}, {mw}) ({why})."
        )


def _window_vectors(grey: torch.Tensor, radius: int, step: int) -> torch.Tensor:
    """Grey values of every ``(2r+1)^2`` window, window centres ``r + step * cell``.

    ``grey (H, W)`` -> ``(K, h, w)`` with ``K = (2r+1)^2`` in row-major window order.
    """
    k = 2 * radius + 1
    h_img, w_img = grey.shape
    h, w = (h_img - k) // step + 1, (w_img - k) // step + 1
    cols = F.unfold(grey[None, None], kernel_size=k, stride=step)  # (1, K, h*w)
    return cols.reshape(k * k, h, w)


def _patch_setup(
    image: torch.Tensor, radius: int, step: int, method: str
) -> tuple[torch.Tensor, FeatureGrid]:
    check_int(radius, "radius", 1)
    check_int(step, "step", 1)
    grey = _to_grey(image)
    k = 2 * radius + 1
    _check_min_size(tuple(grey.shape), (k, k), method, f"one {k}x{k} window")
    grid = FeatureGrid((float(radius), float(radius)), (float(step), float(step)))
    return _window_vectors(grey, radius, step), grid


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"Argument {name} must be an int or a (rows, cols) pair, got {value!r}.")
    for v in pair:
        check_int(v, name, 1)
    return pair


# --------------------------------------------------------------------------------------------
# descriptors
# --------------------------------------------------------------------------------------------


def raw_patch_descriptors(
    image: torch.Tensor, radius: int = 3, step: int = 1
) -> tuple[torch.Tensor, FeatureGrid]:
    """Raw grey patches: the ``(2r+1)^2`` grey values around each pixel, L2-normalised.

    ``image (3, H, W)`` -> ``desc ((2r+1)^2, h, w)`` with ``h = (H - 2r - 1) // step + 1``;
    channel ``dy * (2r+1) + dx`` holds pixel ``(x - r + dx, y - r + dy)``. Grid: origin
    ``(r, r)``, step ``(step, step)``. The cosine of two descriptors is the normalised
    cross-correlation (without mean removal) of the windows; a black window gives zeros.

    Example:
        >>> desc, grid = raw_patch_descriptors(torch.rand(3, 20, 30), radius=2)
        >>> tuple(desc.shape), grid.origin
        ((25, 16, 26), (2.0, 2.0))
    """
    win, grid = _patch_setup(image, radius, step, "raw_patch")
    return l2_normalize(win, dim=0), grid


def zncc_descriptors(
    image: torch.Tensor, radius: int = 3, step: int = 1
) -> tuple[torch.Tensor, FeatureGrid]:
    """Zero-mean, unit-norm grey windows: their dot product IS the ZNCC of the two windows.

    ``image (3, H, W)`` -> ``desc ((2r+1)^2, h, w)``, layout and grid as
    :func:`raw_patch_descriptors`. ``<d(p), d'(q)> = sum (I - mean I)(I' - mean I') /
    (||I - mean I|| ||I' - mean I'||)``, the zero-normalised cross-correlation of the windows at
    ``p`` and ``q`` (invariant to affine changes of brightness ``a I + b``, ``a > 0``). A flat
    window, whose ZNCC is undefined, gives the zero vector (score 0 against everything).

    Example:
        >>> desc, grid = zncc_descriptors(torch.rand(3, 20, 30))
        >>> tuple(desc.shape)
        (49, 14, 24)
    """
    win, grid = _patch_setup(image, radius, step, "zncc")
    return l2_normalize(win - win.mean(dim=0, keepdim=True), dim=0), grid


def census_descriptors(
    image: torch.Tensor, radius: int = 3, step: int = 1
) -> tuple[torch.Tensor, FeatureGrid]:
    """Census transform (Zabih & Woodfill, ECCV 1994) coded so that cosine = 1 - 2 Hamming / n.

    Bit ``[I(q) < I(p)]`` for every ``q`` of the ``(2r+1)^2`` window around ``p`` except ``p``
    itself, coded as ``+-1 / sqrt(n_bits)`` with ``n_bits = (2r+1)^2 - 1``. Every descriptor is
    a unit vector, and ``<d(p), d'(q)> = 1 - 2 H / n_bits`` with ``H`` the Hamming distance of
    the two census strings, so cosine matching is Hamming matching. Invariant to any monotonic
    change of brightness. ``image (3, H, W)`` -> ``desc (n_bits, h, w)``; grid as
    :func:`raw_patch_descriptors`. Known weakness: every local maximum (minimum) of the grey
    image has the same all-ones (all-zeros) code, so such pixels cannot be told apart; Zabih &
    Woodfill sum Hamming distances over a correlation window to resolve this.

    Example:
        >>> desc, _ = census_descriptors(torch.rand(3, 20, 30), radius=1)
        >>> tuple(desc.shape), round(float(desc[:, 0, 0].norm()), 6)
        ((8, 18, 28), 1.0)
    """
    win, grid = _patch_setup(image, radius, step, "census")
    k2 = win.shape[0]
    centre = k2 // 2
    others = torch.cat((win[:centre], win[centre + 1 :]))  # (n_bits, h, w)
    bits = others < win[centre : centre + 1]
    n_bits = k2 - 1
    return (2.0 * bits.float() - 1.0) / math.sqrt(n_bits), grid


def census_bits(gray: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Census bits of every pixel of a grey image, borders replicated (the exercise's reference).

    ``gray (H, W)`` float -> ``(K, H, W)`` bool with ``K = (2r+1)^2 - 1``: bit ``[I(q) < I(p)]``
    for the window offsets in row-major order (dy, then dx), the centre skipped.

    Example:
        >>> census_bits(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), 1)[:, 0, 1].tolist()
        [True, False, False, True, False, False, False, False]
    """
    check_shape(gray, ("H", "W"), "gray")
    r = check_int(radius, "radius", 1)
    h, w = gray.shape
    padded = F.pad(gray[None, None].float(), (r, r, r, r), mode="replicate")[0, 0]
    k = 2 * r + 1
    shifted = [
        padded[dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k) if (dy, dx) != (r, r)
    ]
    return torch.stack(shifted) < gray.float()[None]


def hog_descriptors(
    image: torch.Tensor,
    orientations: int = 9,
    pixels_per_cell: int | tuple[int, int] = 8,
    cells_per_block: int | tuple[int, int] = 2,
    block_norm: str = "L2-Hys",
) -> tuple[torch.Tensor, FeatureGrid]:
    """Histogram of Oriented Gradients (Dalal & Triggs, CVPR 2005) via ``skimage.feature.hog``.

    One descriptor per block of ``cells_per_block`` cells of ``pixels_per_cell`` pixels (pairs
    are ``(rows, cols)``, as in scikit-image), computed on the grey image:
    ``image (3, H, W)`` -> ``desc (b_r * b_c * orientations, h, w)`` with
    ``h = H // c_r - b_r + 1``, ``w = W // c_c - b_c + 1`` (the last ``H % c_r`` rows and
    ``W % c_c`` columns are ignored), channels ordered (cell row, cell col, orientation).

    Grid: skimage's cell ``i`` covers pixels ``c * i ... c * i + c - 1``, so block ``j`` spans
    ``c * j ... c * (j + b) - 1`` and is centred at ``c * j + (b * c - 1) / 2``: origin
    ``((b_c c_c - 1) / 2, (b_r c_r - 1) / 2)``, step ``(c_c, c_r)`` (7.5 and 8 by default).

    Example:
        >>> desc, grid = hog_descriptors(torch.rand(3, 64, 100))
        >>> tuple(desc.shape), grid.origin, grid.step
        ((36, 7, 11), (7.5, 7.5), (8.0, 8.0))
    """
    from skimage.feature import hog

    check_int(orientations, "orientations", 1)
    c_r, c_c = _pair(pixels_per_cell, "pixels_per_cell")
    b_r, b_c = _pair(cells_per_block, "cells_per_block")
    check_choice(block_norm, "block_norm", HOG_BLOCK_NORMS)
    grey = _to_grey(image)
    _check_min_size(tuple(grey.shape), (b_r * c_r, b_c * c_c), "hog", "one block of cells")
    blocks = hog(
        grey.cpu().double().numpy(),
        orientations=orientations,
        pixels_per_cell=(c_r, c_c),
        cells_per_block=(b_r, b_c),
        block_norm=block_norm,
        feature_vector=False,
    )  # (h, w, b_r, b_c, orientations)
    h, w = blocks.shape[:2]
    desc = torch.from_numpy(np.ascontiguousarray(blocks)).float().permute(2, 3, 4, 0, 1)
    desc = desc.reshape(-1, h, w).to(image.device)  # (b_r * b_c * orientations, h, w)
    origin = ((b_c * c_c - 1) / 2, (b_r * c_r - 1) / 2)
    return desc, FeatureGrid(origin, (float(c_c), float(c_r)))


def daisy_descriptors(
    image: torch.Tensor,
    step: int = 4,
    radius: int = 15,
    rings: int = 3,
    histograms: int = 8,
    orientations: int = 8,
    normalization: str = "l1",
) -> tuple[torch.Tensor, FeatureGrid]:
    """DAISY (Tola et al., TPAMI 2010) via ``skimage.feature.daisy`` on the grey image.

    ``image (3, H, W)`` -> ``desc ((rings * histograms + 1) * orientations, h, w)`` with
    ``h = ceil((H - 2 radius) / step)``, ``w = ceil((W - 2 radius) / step)`` (200-D, and
    ``h = ceil((H - 30) / 4)``, by default). Grid: skimage centres descriptor ``(i, j)`` on pixel
    ``(radius + step j, radius + step i)``: origin ``(radius, radius)``, step ``(step, step)``.
    (Its forward-difference gradients sit half a pixel right of / below the pixel that stores
    them; the shift is the same in every DAISY map, so it cancels when two maps are matched.)

    Example:
        >>> desc, grid = daisy_descriptors(torch.rand(3, 40, 50), step=5, radius=10)
        >>> tuple(desc.shape), grid.origin
        ((200, 4, 6), (10.0, 10.0))
    """
    from skimage.feature import daisy

    check_int(step, "step", 1)
    check_int(radius, "radius", 1)
    check_int(rings, "rings", 1)
    check_int(histograms, "histograms", 1)
    check_int(orientations, "orientations", 1)
    check_choice(normalization, "normalization", DAISY_NORMALIZATIONS)
    grey = _to_grey(image)
    side = 2 * radius + 1
    _check_min_size(tuple(grey.shape), (side, side), "daisy", f"one disc of radius {radius}")
    out = daisy(
        grey.cpu().double().numpy(),
        step=step,
        radius=radius,
        rings=rings,
        histograms=histograms,
        orientations=orientations,
        normalization=normalization,
    )  # (h, w, C)
    desc = torch.from_numpy(np.ascontiguousarray(out)).float().permute(2, 0, 1).contiguous()
    return desc.to(image.device), FeatureGrid((float(radius), float(radius)), (float(step),) * 2)


def sift_descriptors(
    image: torch.Tensor, bin_size: int = 4, step: int = 2, clip: float = 0.2
) -> tuple[torch.Tensor, FeatureGrid]:
    """Dense SIFT (Lowe, IJCV 2004; dense, upright, single-scale as in SIFT Flow, Liu et al. 2011).

    Steps, all vectorised: grey image; central-difference gradients (replicated border); each
    gradient's magnitude split linearly between the two nearest of 8 orientation bins (bin ``o``
    at angle ``2 pi o / 8`` from +x towards +y, image axes); spatial pooling into 4x4 cells of
    ``b = bin_size`` pixels with bilinear (triangular, half-width ``b``) weights, i.e. each pixel
    votes into the 2x2 nearest cell centres; L2-normalise, clip at ``clip``, L2-normalise again.
    No Gaussian window and no dominant orientation (dense SIFT is upright).

    ``image (3, H, W)`` -> ``desc (128, h, w)``, channel ``(4 * cell_y + cell_x) * 8 + o``, with
    ``h = (H - 5 b + 1) // step + 1`` (the support of one descriptor is ``5 b - 1`` pixels: the
    four cells of ``b`` plus the triangular tails). Cell centres lie at ``centre + (i - 1.5) b``;
    grid: origin ``(2.5 b - 1, 2.5 b - 1)`` (9 by default; half-integer for odd ``b``), step
    ``(step, step)``.

    Example:
        >>> desc, grid = sift_descriptors(torch.rand(3, 32, 40))
        >>> tuple(desc.shape), grid.origin, grid.step
        ((128, 7, 11), (9.0, 9.0), (2.0, 2.0))
    """
    b = check_int(bin_size, "bin_size", 1)
    check_int(step, "step", 1)
    if not clip > 0:
        raise ValueError(f"Argument clip must be > 0, got {clip}.")
    grey = _to_grey(image)
    support = 5 * b - 1
    _check_min_size(
        tuple(grey.shape), (support, support), "sift", f"one {support}x{support} support"
    )
    h_img, w_img = grey.shape
    h, w = (h_img - support) // step + 1, (w_img - support) // step + 1

    # gradients and soft orientation binning: (8, H, W)
    pad = F.pad(grey[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]  # (H + 2, W + 2)
    gx = (pad[1:-1, 2:] - pad[1:-1, :-2]) / 2
    gy = (pad[2:, 1:-1] - pad[:-2, 1:-1]) / 2
    mag = torch.hypot(gx, gy)
    t = torch.atan2(gy, gx).remainder(2 * math.pi) * (8 / (2 * math.pi))  # bin position in [0, 8)
    bins = torch.arange(8, dtype=grey.dtype, device=grey.device).view(8, 1, 1)
    d = (t - bins).remainder(8)
    d = torch.minimum(d, 8 - d)  # circular distance in bins
    oriented = (1 - d).clamp_min(0) * mag  # (8, H, W)

    # triangular pooling: pooled[:, u, v] = cell histogram of the cell centred on pixel
    # (v + b - 1, u + b - 1); valid convolution with the separable kernel 1 - |d| / b
    tri = 1 - (torch.arange(2 * b - 1, dtype=grey.dtype, device=grey.device) - (b - 1)).abs() / b
    pooled = F.conv2d(oriented[None], tri.view(1, 1, -1, 1).expand(8, 1, -1, 1), groups=8)
    pooled = F.conv2d(pooled, tri.view(1, 1, 1, -1).expand(8, 1, 1, -1), groups=8)[0]

    # descriptor (i, j) has its cell (cy, cx) centred at pooled index (step i + b cy, step j + b cx)
    cells = [
        pooled[
            :,
            b * cy : b * cy + step * (h - 1) + 1 : step,
            b * cx : b * cx + step * (w - 1) + 1 : step,
        ]
        for cy in range(4)
        for cx in range(4)
    ]
    desc = torch.stack(cells).reshape(128, h, w)  # (16, 8, h, w) -> (128, h, w)
    desc = l2_normalize(desc, dim=0).clamp_max(clip)
    desc = l2_normalize(desc, dim=0)
    origin = 2.5 * b - 1
    return desc, FeatureGrid((origin, origin), (float(step), float(step)))


DESCRIPTORS: dict[str, Callable[..., tuple[torch.Tensor, FeatureGrid]]] = {
    "raw_patch": raw_patch_descriptors,
    "zncc": zncc_descriptors,
    "census": census_descriptors,
    "hog": hog_descriptors,
    "daisy": daisy_descriptors,
    "sift": sift_descriptors,
}


def dense_descriptors(
    image: torch.Tensor, method: str, **kwargs
) -> tuple[torch.Tensor, FeatureGrid]:
    """``DESCRIPTORS[method](image, **kwargs)``: ``(3, H, W)`` -> ``(desc (C, h, w), grid)``.

    Example:
        >>> desc, grid = dense_descriptors(torch.rand(3, 32, 32), "census", radius=2)
        >>> tuple(desc.shape)
        (24, 28, 28)
    """
    check_choice(method, "method", DESCRIPTORS)
    return DESCRIPTORS[method](image, **kwargs)


# --------------------------------------------------------------------------------------------
# matching
# --------------------------------------------------------------------------------------------


def resize_longer_side(
    image: torch.Tensor, max_side: int | None
) -> tuple[torch.Tensor, tuple[float, float]]:
    """Float ``(3, H, W)`` resized so that ``max(H', W') = max_side``; returns the ``(sx, sy)``
    size ratios ``(W' / W, H' / H)`` (``x' = (x + 0.5) sx - 0.5``, ``align_corners=False``)."""
    img = _to_float_image(image)
    if max_side is None:
        return img, (1.0, 1.0)
    check_int(max_side, "max_side", 1)
    h, w = img.shape[-2:]
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return img, (1.0, 1.0)
    out = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0].clamp(0, 1), (size[1] / w, size[0] / h)


def describe(
    image: torch.Tensor, method: str, *, max_side: int | None = None, **kwargs
) -> tuple[torch.Tensor, FeatureGrid]:
    """Descriptors of ``image`` after an optional resize, with their grid in ORIGINAL pixels.

    ``image (3, H, W)``; the image is resized so its longer side is ``max_side`` (bilinear,
    antialiased; ``None`` keeps it) and the resize is folded into the returned
    :class:`~corrlib.matching.FeatureGrid`, so callers never rescale keypoints. ``kwargs`` go to
    ``DESCRIPTORS[method]``. Returns ``(desc (C, h, w), grid)``.

    Example:
        >>> desc, grid = describe(torch.rand(3, 40, 60), "zncc", max_side=30, radius=2)
        >>> tuple(desc.shape), grid.step
        ((25, 16, 26), (2.0, 2.0))
    """
    check_choice(method, "method", DESCRIPTORS)
    img, ratio = resize_longer_side(image, max_side)
    desc, grid = DESCRIPTORS[method](img, **kwargs)
    return desc, grid.in_original(ratio)


def match_keypoints_handcrafted(
    src_img: torch.Tensor,
    trg_img: torch.Tensor,
    src_kps: torch.Tensor,
    method: str,
    *,
    max_side: int | None = None,
    matcher: str = "argmax_subpixel",
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transfer source keypoints to the target by matching hand-crafted descriptors.

    ``src_img (3, Hs, Ws)``, ``trg_img (3, Ht, Wt)``; ``src_kps (N, 2)`` (x, y) pixels in the
    source. If ``max_side`` is given, both images are first resized (bilinear, antialiased) so
    that their longer side is ``max_side``; the descriptor grids are composed with the resize,
    so keypoints and predictions stay in ORIGINAL pixels. ``kwargs`` go to the descriptor
    (``DESCRIPTORS[method]``); matching is :func:`corrlib.matching.transfer_keypoints` with
    cosine scores and ``matcher`` (one of ``corrlib.matching.MATCHERS``).

    Returns ``(trg_kps (N, 2) pixels in the original target, score (N,) best cosine)``; zero
    keypoints give empty tensors.

    Example:
        >>> img = torch.rand(3, 40, 40)
        >>> kps = torch.tensor([[20.0, 18.0]])
        >>> pred, score = match_keypoints_handcrafted(img, img, kps, "zncc", matcher="argmax")
        >>> pred.tolist(), round(float(score), 3)
        ([[20.0, 18.0]], 1.0)
    """
    check_choice(method, "method", DESCRIPTORS)
    _to_float_image(src_img, "src_img")
    _to_float_image(trg_img, "trg_img")
    n = check_shape(src_kps, ("N", 2), "src_kps")["N"]
    kps = src_kps if src_kps.is_floating_point() else src_kps.float()
    if n == 0:
        return kps.new_zeros(0, 2), kps.new_zeros(0)
    f_src, grid_src = describe(src_img, method, max_side=max_side, **kwargs)
    f_trg, grid_trg = describe(trg_img, method, max_side=max_side, **kwargs)
    pred, score = transfer_keypoints(
        f_src[None], f_trg[None], kps[None], grid_src, grid_trg, matcher, normalize=True
    )
    return pred[0], score[0]


def cell_flow_to_pixel_flow(
    flow: torch.Tensor, grid: FeatureGrid, size: tuple[int, int]
) -> torch.Tensor:
    """Upsample a flow defined on feature cells to every pixel of the image.

    ``flow (2, h, w)`` in pixels, sampled at the cell centres ``grid.to_pixels(cell)`` of an
    image of ``size = (H, W)``; returns ``(2, H, W)``, bilinear between cell centres (exact for
    an affine flow) and constant beyond the outermost centres.

    Example:
        >>> grid = FeatureGrid((1.0, 1.0), (2.0, 2.0))  # cell centres on pixels 1, 3, 5, 7
        >>> flow = torch.zeros(2, 4, 4)
        >>> flow[0] = torch.tensor([1.0, 3.0, 5.0, 7.0])  # u = x at the cell centres
        >>> cell_flow_to_pixel_flow(flow, grid, (8, 8))[0, 0].tolist()
        [1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    """
    check_shape(flow, (2, "h", "w"), "flow")
    h_img, w_img = size
    cells = grid.to_cells(pixel_grid(size, device=flow.device, dtype=flow.dtype))  # (H, W, 2)
    out = sample_descriptors(flow[None], cells.reshape(1, -1, 2))  # (1, H*W, 2)
    return out[0].T.reshape(2, h_img, w_img)


def dense_flow_handcrafted(
    src_img: torch.Tensor,
    trg_img: torch.Tensor,
    method: str,
    *,
    max_side: int | None = None,
    max_bytes: int = 256 * 2**20,
    **kwargs,
) -> torch.Tensor:
    """Dense source -> target flow by nearest-neighbour matching of hand-crafted descriptors.

    ``src_img (3, Hs, Ws)``, ``trg_img (3, Ht, Wt)``. Each source cell takes its best target
    cell (cosine, :func:`corrlib.correlation.dense_nearest_neighbour`, chunked to ``max_bytes``;
    targets within ``1e-6`` of the best cosine, e.g. the many exact ties of census codes, go to
    the first in row-major order: the flow does not depend on ``max_bytes``, nor the choice
    among ties on the CPU or BLAS); the displacement between the two cell centres (pixels, via
    the two grids) is upsampled to every source pixel with :func:`cell_flow_to_pixel_flow`.
    ``max_side`` and ``kwargs`` as in :func:`match_keypoints_handcrafted`.

    Returns ``flow (2, Hs, Ws)`` in original pixels, ``p_trg = p_src + flow(p_src)``.

    Example:
        >>> img = torch.rand(3, 24, 24)
        >>> flow = dense_flow_handcrafted(img, img, "zncc")
        >>> tuple(flow.shape), float(flow.abs().max())
        ((2, 24, 24), 0.0)
    """
    check_choice(method, "method", DESCRIPTORS)
    f_src, grid_src = describe(src_img, method, max_side=max_side, **kwargs)
    f_trg, grid_trg = describe(trg_img, method, max_side=max_side, **kwargs)
    return flow_from_descriptors(
        f_src, grid_src, f_trg, grid_trg, tuple(src_img.shape[-2:]), max_bytes=max_bytes
    )


def flow_from_descriptors(
    f_src: torch.Tensor,
    grid_src: FeatureGrid,
    f_trg: torch.Tensor,
    grid_trg: FeatureGrid,
    src_size: tuple[int, int],
    *,
    max_bytes: int = 256 * 2**20,
) -> torch.Tensor:
    """Dense nearest-neighbour flow from two descriptor maps (see :func:`dense_flow_handcrafted`).

    ``f_src (C, hs, ws)``, ``f_trg (C, ht, wt)`` with their grids (pixels of the original images);
    ``src_size = (Hs, Ws)``. Returns ``flow (2, Hs, Ws)`` in pixels, ``p_trg = p_src + flow``.
    Nearest neighbours and their tie rule (the smallest target index among cosines within
    ``1e-6`` of the best) are :func:`corrlib.correlation.dense_nearest_neighbour`'s: the result
    does not depend on ``max_bytes``.
    """
    check_shape(f_src, ("C", "hs", "ws"), "f_src")
    check_shape(f_trg, (f_src.shape[0], "ht", "wt"), "f_trg")
    _, hs, ws = f_src.shape
    wt = f_trg.shape[-1]
    idx, _ = dense_nearest_neighbour(f_src[None], f_trg[None], max_bytes=max_bytes)  # (1, hs*ws)
    idx = idx[0]
    trg_cells = torch.stack((idx % wt, idx // wt), dim=-1).to(f_src.dtype)  # (hs*ws, 2)
    src_cells = pixel_grid((hs, ws), device=f_src.device).reshape(-1, 2)  # row-major (x, y)
    cell_flow = grid_trg.to_pixels(trg_cells) - grid_src.to_pixels(src_cells)  # (hs*ws, 2)
    cell_flow = cell_flow.T.reshape(2, hs, ws)
    return cell_flow_to_pixel_flow(cell_flow, grid_src, tuple(src_size))
