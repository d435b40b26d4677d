"""Stereo matching helpers: disparity cost volumes, winner-takes-all, hand-crafted baselines.

Convention: a rectified pair ``(left, right)``; the disparity ``d >= 0`` lives on the *left*
image's grid and ``x_right = x_left - d`` on the same row (Middlebury, KITTI). A cost volume is
a *similarity* volume ``(B, D, H, W)`` with ``D = max_disp + 1`` candidates ``d = 0..max_disp``
(higher = more alike); ``volume[:, d, y, x]`` compares left pixel ``(x, y)`` with right pixel
``(x - d, y)`` and is ``-inf`` where that comparison is impossible (``x - d`` outside the image,
or a descriptor window leaving it). A volume of costs (lower = better) becomes one by negation.
Scharstein & Szeliski, *A taxonomy and evaluation of dense two-frame stereo correspondence
algorithms*, IJCV 2002 (matching cost, aggregation, WTA, sub-pixel refinement).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from corrlib._check import check_shape, check_tensor
from corrlib.metrics import bad_pixel_rate
from corrlib.models.handcrafted import census_descriptors, zncc_descriptors

__all__ = [
    "bad_pixel_rate",
    "census_cost_volume",
    "cost_volume_from_features",
    "cost_volume_from_pairs",
    "disparity_wta",
    "zncc_cost_volume",
]


def _check_max_disp(max_disp: int, width: int) -> int:
    if isinstance(max_disp, bool) or not isinstance(max_disp, int) or max_disp < 0:
        raise ValueError(f"Argument max_disp must be an int >= 0, got {max_disp!r}.")
    if max_disp >= width:
        raise ValueError(f"Argument max_disp must be < the image width {width}, got {max_disp}.")
    return max_disp


def _check_pair(f_left: torch.Tensor, f_right: torch.Tensor) -> tuple[int, int, int, int]:
    b, c, h, w = check_shape(f_left, ("B", "C", "H", "W"), "f_left").values()
    check_shape(f_right, (b, c, h, w), "f_right")
    return b, c, h, w


def _mask_left_columns(volume: torch.Tensor) -> torch.Tensor:
    """Set ``volume[:, d, :, x] = -inf`` where ``x - d < 0`` (in place, returns it)."""
    d_max, w = volume.shape[1], volume.shape[-1]
    d = torch.arange(d_max, device=volume.device)[:, None]
    x = torch.arange(w, device=volume.device)[None, :]
    outside = (x < d)[None, :, None, :]  # (1, D, 1, W)
    return volume.masked_fill_(outside, float("-inf"))


def cost_volume_from_features(
    f_left: torch.Tensor, f_right: torch.Tensor, max_disp: int
) -> torch.Tensor:
    """Dot-product similarity volume of two feature maps of a rectified pair.

    ``f_left, f_right (B, C, H, W)`` (normalise them first for cosine scores), ``max_disp`` an
    int in ``[0, W)``. Returns ``(B, D, H, W)``, ``D = max_disp + 1``:
    ``volume[b, d, y, x] = <f_left[b, :, y, x], f_right[b, :, y, x - d]>``, and ``-inf`` where
    ``x - d < 0``. As MC-CNN fast's dot product (Zbontar & LeCun, JMLR 2016).

    Example:
        >>> f = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)
        >>> cost_volume_from_features(f, f, 1)[0, :, 0]
        tensor([[1., 4., 9.],
                [-inf, 2., 6.]])
    """
    b, _, h, w = _check_pair(f_left, f_right)
    _check_max_disp(max_disp, w)
    dtype = torch.promote_types(f_left.dtype, f_right.dtype)
    volume = torch.zeros(b, max_disp + 1, h, w, dtype=dtype, device=f_left.device)
    for d in range(max_disp + 1):
        volume[:, d, :, d:] = (f_left[..., d:] * f_right[..., : w - d]).sum(1)
    return _mask_left_columns(volume)


def cost_volume_from_pairs(
    f_left: torch.Tensor,
    f_right: torch.Tensor,
    max_disp: int,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Similarity volume scored by a learned (or any) function of the two feature maps.

    ``f_left, f_right (B, C, H, W)``; for each ``d`` in ``0..max_disp``,
    ``score_fn(f_left, fr_shifted)`` must return ``(B, H, W)`` scores (higher = more alike),
    where ``fr_shifted[..., x] = f_right[..., x - d]`` (zeros where ``x - d < 0``; those columns
    are set to ``-inf`` afterwards). ``score_fn`` must act per pixel (e.g. 1x1 convolutions, as
    the fully connected decision layers of MC-CNN accurate, Zbontar & LeCun, JMLR 2016).
    Returns ``(B, max_disp + 1, H, W)``; with ``score_fn = lambda a, b: (a * b).sum(1)`` it equals
    :func:`cost_volume_from_features`.

    Example:
        >>> f = torch.rand(1, 4, 3, 8)
        >>> vol = cost_volume_from_pairs(f, f, 2, lambda a, b: -(a - b).abs().sum(1))
        >>> tuple(vol.shape), bool((vol[:, 0] == 0).all())
        ((1, 3, 3, 8), True)
    """
    b, _, h, w = _check_pair(f_left, f_right)
    _check_max_disp(max_disp, w)
    if not callable(score_fn):
        raise TypeError(f"Argument score_fn must be callable, got {type(score_fn).__name__}.")
    slices = []
    for d in range(max_disp + 1):
        shifted = F.pad(f_right[..., : w - d], (d, 0))  # (B, C, H, W), x -> x - d
        s = score_fn(f_left, shifted)
        check_shape(s, (b, h, w), f"score_fn output (d={d})")
        slices.append(s)
    return _mask_left_columns(torch.stack(slices, dim=1).clone())


def disparity_wta(volume: torch.Tensor, subpixel: bool = False) -> torch.Tensor:
    """Winner-takes-all disparity: argmax over ``D`` of a similarity volume ``(B, D, H, W)``.

    Returns ``(B, H, W)`` float disparities in pixels. Ties go to the smallest disparity. With
    ``subpixel`` the integer winner ``d`` (``0 < d < D - 1``, finite neighbours, not all three
    equal) is refined by the vertex of the parabola through ``s(d-1), s(d), s(d+1)``:
    ``d + (s(d-1) - s(d+1)) / (2 (s(d-1) - 2 s(d) + s(d+1)))``, an offset in ``[-0.5, 0.5]``
    (Scharstein & Szeliski, IJCV 2002, Sec. 5.4). Pixels whose whole column is ``-inf`` get 0.

    Example:
        >>> vol = -(torch.arange(5.0) - 2.3).pow(2).reshape(1, 5, 1, 1)  # a parabola peaking at 2.3
        >>> disparity_wta(vol).flatten().tolist(), round(float(disparity_wta(vol, True)), 4)
        ([2.0], 2.3)
    """
    check_shape(volume, ("B", "D", "H", "W"), "volume")
    best = volume.argmax(dim=1)  # (B, H, W)
    disp = best.to(volume.dtype if volume.is_floating_point() else torch.float32)
    n_disp = volume.shape[1]
    if not subpixel or n_disp < 3:
        return disp
    idx = best.clamp(1, n_disp - 2)[:, None]  # (B, 1, H, W)
    s_m = volume.gather(1, idx - 1)[:, 0].double()
    s_0 = volume.gather(1, idx)[:, 0].double()
    s_p = volume.gather(1, idx + 1)[:, 0].double()
    denom = s_m - 2 * s_0 + s_p
    ok = (best > 0) & (best < n_disp - 1) & torch.isfinite(s_m) & torch.isfinite(s_p)
    ok = ok & (s_0 >= s_m) & (s_0 >= s_p) & (denom < 0)
    safe = torch.where(ok, denom, torch.full_like(denom, -1.0))
    delta = torch.where(ok, (s_m - s_p) / (2 * safe), torch.zeros_like(denom))
    return disp + delta.to(disp.dtype)


def _as_rgb(img: torch.Tensor, name: str) -> torch.Tensor:
    """``(H, W)`` grey -> ``(3, H, W)`` (luma of equal channels is the grey value); RGB as is."""
    check_tensor(img, name)
    if img.dim() == 2:
        return img.expand(3, -1, -1)
    if img.dim() == 3 and img.shape[0] == 3:
        return img
    raise ValueError(
        f"Argument {name} must have shape (H, W) (grey) or (3, H, W) (RGB), got shape "
        f"{tuple(img.shape)}."
    )


def _aggregate(volume: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of the finite scores in a ``(2 window + 1)^2`` box; ``-inf`` stays ``-inf``."""
    if window == 0:
        return volume
    finite = torch.isfinite(volume)
    k = 2 * window + 1
    num = F.avg_pool2d(torch.where(finite, volume, torch.zeros_like(volume)), k, 1, window)
    den = F.avg_pool2d(finite.to(volume.dtype), k, 1, window)
    return torch.where(finite, num / den.clamp_min(1e-12), volume)


def _descriptor_volume(left, right, max_disp, radius, window, describe) -> torch.Tensor:
    left, right = _as_rgb(left, "left"), _as_rgb(right, "right")
    if left.shape != right.shape:
        raise ValueError(
            f"Arguments left and right must have the same shape, got {tuple(left.shape)} and "
            f"{tuple(right.shape)}."
        )
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"Argument window must be an int >= 0, got {window!r}.")
    d_l, _ = describe(
        left, radius=radius, step=1
    )  # (C, H - 2r, W - 2r), cell (i, j) = pixel (i + r, j + r)
    d_r, _ = describe(right, radius=radius, step=1)
    _check_max_disp(max_disp, d_l.shape[-1])
    inner = cost_volume_from_features(d_l[None], d_r[None], max_disp)  # (1, D, H - 2r, W - 2r)
    inner = _aggregate(inner, window)
    return F.pad(inner, (radius, radius, radius, radius), value=float("-inf"))  # (1, D, H, W)


def census_cost_volume(
    left: torch.Tensor, right: torch.Tensor, max_disp: int, radius: int = 3, window: int = 0
) -> torch.Tensor:
    """Census similarity volume ``(1, D, H, W)``: ``1 - 2 Hamming / n_bits`` per disparity.

    ``left, right``: grey ``(H, W)`` or RGB ``(3, H, W)`` (float in ``[0, 1]`` or uint8) of a
    rectified pair. Built from :func:`corrlib.models.handcrafted.census_descriptors` with step 1
    (Zabih & Woodfill, ECCV 1994). Border: a census window must lie inside both images, so
    ``volume[..., y, x]`` is ``-inf`` in the outer ``radius`` rows and columns of the left image
    and wherever ``x - d < radius``; ``torch.isfinite(volume).any(1)`` tells where a disparity
    exists. ``window > 0`` averages the finite scores over a ``(2 window + 1)^2`` box (the
    correlation window of Zabih & Woodfill; 0: per pixel). Per pixel, every local maximum of the
    grey image has the all-ones code and matches every other one perfectly, so WTA on a
    ``window=0`` volume is ambiguous there (about one pixel in ``(2 radius + 1)^2`` on noise).
    ``D = max_disp + 1``, ``max_disp < W - 2 radius``.

    Example:
        >>> img = torch.rand(40, 50, generator=torch.Generator().manual_seed(0))
        >>> vol = census_cost_volume(img, img, max_disp=4, radius=2, window=1)  # window: no ties
        >>> tuple(vol.shape), disparity_wta(vol)[0, 2:-2, 2:-2].unique().tolist()
        ((1, 5, 40, 50), [0.0])
    """
    return _descriptor_volume(left, right, max_disp, radius, window, census_descriptors)


def zncc_cost_volume(
    left: torch.Tensor, right: torch.Tensor, max_disp: int, radius: int = 3, window: int = 0
) -> torch.Tensor:
    """ZNCC similarity volume ``(1, D, H, W)``: zero-normalised cross-correlation in ``[-1, 1]``.

    Inputs, border (``-inf``), ``window`` and ``D`` as :func:`census_cost_volume`; built from
    :func:`corrlib.models.handcrafted.zncc_descriptors` (a flat window scores 0). Invariant to
    a gain and offset of brightness between the two images.

    Example:
        >>> img = torch.rand(30, 40, generator=torch.Generator().manual_seed(0))
        >>> vol = zncc_cost_volume(img, 0.5 * img + 0.2, max_disp=3, radius=2)
        >>> round(float(vol[0, 0, 10, 10]), 4)  # d = 0: the same window, up to gain and offset
        1.0
    """
    return _descriptor_volume(left, right, max_disp, radius, window, zncc_descriptors)
