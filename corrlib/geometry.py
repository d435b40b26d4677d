"""Coordinate conventions, parametric warps as sampling grids, dense flow and keypoint transfer.

Conventions (used everywhere in corrlib):

* **Pixels**: 0-based, ``(x, y)`` order, pixel centres at integers; an image of width ``W``
  spans ``[-0.5, W - 0.5]``. Keypoints are ``(B, N, 2)`` or ``(N, 2)`` tensors in pixels.
* **Normalised**: ``[-1, 1]`` with ``align_corners=False`` (PyTorch's default): the left edge of
  the image is ``-1`` and the right edge ``+1``, so ``x_n = (2 x + 1) / W - 1``.
* **Sampling grids** ``(B, H, W, 2)`` (x, y) in normalised coordinates of the *input* image, as
  :func:`torch.nn.functional.grid_sample` takes them; a parametric warp maps *output* coordinates
  to *input* coordinates (backward warping).
* **Flow** ``(B, 2, H, W)``: defined on the grid of the image it starts from (``src``), in
  pixels; channel 0 is ``u`` (x), channel 1 is ``v`` (y); ``p_trg = p_src + flow(p_src)``.
  A synthetic pair made by ``trg = grid_sample(src, grid)`` therefore has
  ``flow_trg_to_src = grid_to_flow(grid, src_size)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from corrlib._check import check_choice, check_shape

__all__ = [
    "WARP_KINDS",
    "RandomWarp",
    "affine_grid",
    "flow_to_grid",
    "grid_to_flow",
    "homography_from_points",
    "homography_grid",
    "normalized_to_pixel",
    "pixel_grid",
    "pixel_to_normalized",
    "sample_random_warp",
    "tps_fit",
    "tps_grid",
    "tps_transform",
    "transfer_kps_with_flow",
    "transfer_kps_with_inverse_flow",
    "warp_with_flow",
]

WARP_KINDS = ("affine", "homography", "tps")


def _size_tensor(size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    h, w = size
    return torch.tensor([w, h], dtype=like.dtype, device=like.device)


def pixel_to_normalized(pts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel coordinates ``(..., 2)`` (x, y) of an image of ``size=(H, W)`` -> ``[-1, 1]``.

    Example: ``pixel_to_normalized(torch.tensor([[0., 0.]]), (4, 4))`` gives ``[[-0.75, -0.75]]``.
    """
    if pts.shape[-1] != 2:
        raise ValueError(f"Argument pts must have shape (..., 2), got shape {tuple(pts.shape)}.")
    wh = _size_tensor(size, pts)
    return (2 * pts + 1) / wh - 1


def normalized_to_pixel(pts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pixel_to_normalized`: ``(..., 2)`` in ``[-1, 1]`` -> pixels."""
    if pts.shape[-1] != 2:
        raise ValueError(f"Argument pts must have shape (..., 2), got shape {tuple(pts.shape)}.")
    wh = _size_tensor(size, pts)
    return ((pts + 1) * wh - 1) / 2


def pixel_grid(size: tuple[int, int], *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel coordinates of every pixel centre: ``(H, W, 2)``, last dim (x, y)."""
    h, w = size
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype),
        torch.arange(w, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack((xs, ys), dim=-1)


def _normalized_grid(size: tuple[int, int], *, device=None, dtype=torch.float32) -> torch.Tensor:
    return pixel_to_normalized(pixel_grid(size, device=device, dtype=dtype), size)


def affine_grid(theta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sampling grid ``(B, H, W, 2)`` of an affine map ``theta`` ``(B, 2, 3)``.

    ``theta`` maps normalised output coordinates to normalised input coordinates
    (``align_corners=False``), exactly as :func:`torch.nn.functional.affine_grid`.
    """
    b = check_shape(theta, ("B", 2, 3), "theta")["B"]
    return F.affine_grid(theta, [b, 1, size[0], size[1]], align_corners=False)


def _apply_homography(h: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """``h (B, 3, 3)`` applied to ``pts (B, N, 2)``."""
    ones = torch.ones_like(pts[..., :1])
    p = torch.cat((pts, ones), dim=-1) @ h.transpose(1, 2)
    w = p[..., 2:]
    w = torch.where(w.abs() < 1e-8, torch.full_like(w, 1e-8), w)
    return p[..., :2] / w


def homography_grid(h: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sampling grid ``(B, H, W, 2)`` of a homography ``h`` ``(B, 3, 3)``.

    ``h`` maps normalised output coordinates (x, y, 1) to normalised input coordinates.
    """
    b = check_shape(h, ("B", 3, 3), "h")["B"]
    base = _normalized_grid(size, device=h.device, dtype=h.dtype).reshape(1, -1, 2).expand(b, -1, -1)
    return _apply_homography(h, base).reshape(b, size[0], size[1], 2)


def homography_from_points(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Direct linear transform: the ``(B, 3, 3)`` homography taking ``src`` to ``dst``.

    ``src``, ``dst``: ``(B, N, 2)`` with ``N >= 4`` corresponding points (any one convention).
    Hartley & Zisserman, *Multiple View Geometry*, Alg. 4.1 (without normalisation: use it on
    normalised coordinates).
    """
    b, n = check_shape(src, ("B", "N", 2), "src").values()
    check_shape(dst, (b, n, 2), "dst")
    if n < 4:
        raise ValueError(f"Argument src must hold at least 4 points, got {n}.")
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack((x, y, ones, zeros, zeros, zeros, -u * x, -u * y, -u), dim=-1)
    rows_v = torch.stack((zeros, zeros, zeros, x, y, ones, -v * x, -v * y, -v), dim=-1)
    a = torch.cat((rows_u, rows_v), dim=1).double()  # (B, 2N, 9)
    _, _, vh = torch.linalg.svd(a)
    h = vh[:, -1].reshape(b, 3, 3)
    h = h / h[:, 2:3, 2:3]
    return h.to(src.dtype)


def _tps_kernel(d2: torch.Tensor) -> torch.Tensor:
    # U(r) = r^2 log r^2, with U(0) = 0
    return d2 * torch.log(d2.clamp_min(1e-12))


def tps_fit(ctrl: torch.Tensor, target: torch.Tensor, reg: float = 0.0) -> torch.Tensor:
    """Fit a thin-plate spline with ``f(ctrl_k) = target_k``.

    ``ctrl``, ``target``: ``(B, K, 2)``. Returns parameters ``(B, K + 3, 2)``: K kernel weights
    then the affine part (constant, x, y). ``reg`` is a ridge on the kernel (0 interpolates).
    Bookstein, *Principal warps*, TPAMI 1989.
    """
    b, k = check_shape(ctrl, ("B", "K", 2), "ctrl").values()
    check_shape(target, (b, k, 2), "target")
    d2 = torch.cdist(ctrl, ctrl).pow(2)
    kmat = _tps_kernel(d2) + reg * torch.eye(k, dtype=ctrl.dtype, device=ctrl.device)
    p = torch.cat((torch.ones_like(ctrl[..., :1]), ctrl), dim=-1)  # (B, K, 3)
    top = torch.cat((kmat, p), dim=2)
    bottom = torch.cat((p.transpose(1, 2), torch.zeros(b, 3, 3, dtype=ctrl.dtype, device=ctrl.device)), dim=2)
    lmat = torch.cat((top, bottom), dim=1)  # (B, K+3, K+3)
    rhs = torch.cat((target, torch.zeros(b, 3, 2, dtype=ctrl.dtype, device=ctrl.device)), dim=1)
    return torch.linalg.solve(lmat.double(), rhs.double()).to(ctrl.dtype)


def tps_transform(pts: torch.Tensor, ctrl: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply a fitted thin-plate spline to ``pts (B, N, 2)``; returns ``(B, N, 2)``."""
    k = ctrl.shape[1]
    u = _tps_kernel(torch.cdist(pts, ctrl).pow(2))  # (B, N, K)
    p = torch.cat((torch.ones_like(pts[..., :1]), pts), dim=-1)  # (B, N, 3)
    return u @ params[:, :k] + p @ params[:, k:]


def tps_grid(ctrl: torch.Tensor, target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sampling grid ``(B, H, W, 2)`` of the TPS taking output ``ctrl`` to input ``target``.

    Both ``(B, K, 2)`` in normalised coordinates.
    """
    params = tps_fit(ctrl, target)
    b = ctrl.shape[0]
    base = _normalized_grid(size, device=ctrl.device, dtype=ctrl.dtype).reshape(1, -1, 2).expand(b, -1, -1)
    return tps_transform(base, ctrl, params).reshape(b, size[0], size[1], 2)


def grid_to_flow(grid: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """Sampling grid ``(B, H, W, 2)`` (normalised, into an image of ``input_size``) -> flow.

    Returns ``(B, 2, H, W)`` in pixels on the output grid: ``flow(p) = pix(grid(p)) - p``.
    """
    b, h, w = check_shape(grid, ("B", "H", "W", 2), "grid").values()
    target = normalized_to_pixel(grid, input_size)
    base = pixel_grid((h, w), device=grid.device, dtype=grid.dtype)
    return (target - base).permute(0, 3, 1, 2)


def flow_to_grid(flow: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """Flow ``(B, 2, H, W)`` in pixels -> normalised sampling grid ``(B, H, W, 2)``."""
    _, _, h, w = check_shape(flow, ("B", 2, "H", "W"), "flow").values()
    base = pixel_grid((h, w), device=flow.device, dtype=flow.dtype)
    return pixel_to_normalized(base + flow.permute(0, 2, 3, 1), input_size)


def warp_with_flow(
    image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward-warp ``image (B, C, Hi, Wi)`` with ``flow (B, 2, H, W)`` into the flow's grid.

    ``out(p) = image(p + flow(p))``. Returns ``(warped (B, C, H, W), valid (B, 1, H, W) bool)``;
    ``valid`` is False where the sample point falls outside ``[0, Wi-1] x [0, Hi-1]`` or the flow
    is not finite. Invalid pixels are filled by border replication (never silently zero).
    """
    b, c, hi, wi = check_shape(image, ("B", "C", "Hi", "Wi"), "image").values()
    check_shape(flow, (b, 2, "H", "W"), "flow")
    check_choice(mode, "mode", ("bilinear", "nearest"))
    finite = torch.isfinite(flow).all(dim=1, keepdim=True)
    flow = torch.where(finite, flow, torch.zeros_like(flow))
    grid = flow_to_grid(flow, (hi, wi))
    out = F.grid_sample(image, grid.to(image.dtype), mode=mode, padding_mode="border", align_corners=False)
    pts = pixel_grid(flow.shape[-2:], device=flow.device, dtype=flow.dtype) + flow.permute(0, 2, 3, 1)
    inside = (pts[..., 0] >= 0) & (pts[..., 0] <= wi - 1) & (pts[..., 1] >= 0) & (pts[..., 1] <= hi - 1)
    return out, inside.unsqueeze(1) & finite


def _sample_at(field: torch.Tensor, kps: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of ``field (B, C, H, W)`` at pixel ``kps (B, N, 2)`` -> ``(B, N, C)``."""
    grid = pixel_to_normalized(kps, field.shape[-2:]).unsqueeze(1).to(field.dtype)  # (B, 1, N, 2)
    out = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0].transpose(1, 2)


def transfer_kps_with_flow(flow: torch.Tensor, kps: torch.Tensor) -> torch.Tensor:
    """Move keypoints along a flow defined on their own image's grid.

    ``flow (B, 2, H, W)`` src->trg in pixels, ``kps (B, N, 2)`` pixels in src. Returns
    ``(B, N, 2)`` pixels in trg: ``kps + flow(kps)`` with bilinear (sub-pixel) sampling.
    """
    b = check_shape(flow, ("B", 2, "H", "W"), "flow")["B"]
    check_shape(kps, (b, "N", 2), "kps")
    return kps + _sample_at(flow, kps).to(kps.dtype)


def transfer_kps_with_inverse_flow(
    flow: torch.Tensor, kps: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Move keypoints *against* a flow: ``kps`` live in the flow's target image.

    ``flow (B, 2, H, W)`` src->trg (on the src grid), ``kps (B, N, 2)`` pixels in trg, optional
    ``valid (B, 1, H, W)``. For each keypoint the src pixel whose flow lands nearest to it is
    found; the answer is refined by subtracting the flow's residual there (one fixed-point step),
    so it is sub-pixel wherever the flow is locally smooth. Returns ``(B, N, 2)`` pixels in src.
    """
    b, _, h, w = check_shape(flow, ("B", 2, "H", "W"), "flow").values()
    check_shape(kps, (b, "N", 2), "kps")
    base = pixel_grid((h, w), device=flow.device, dtype=flow.dtype).reshape(1, -1, 2)
    landed = base + flow.permute(0, 2, 3, 1).reshape(b, -1, 2)  # (B, HW, 2)
    if valid is not None:
        check_shape(valid, (b, 1, h, w), "valid")
        landed = torch.where(valid.reshape(b, -1, 1), landed, torch.full_like(landed, float("inf")))
    landed = torch.nan_to_num(landed, nan=float("inf"))
    out = []
    for i in range(b):
        d = torch.cdist(kps[i].to(flow.dtype), landed[i])  # (N, HW)
        idx = d.argmin(dim=1)
        start = base[0, idx]  # (N, 2)
        residual = kps[i].to(flow.dtype) - landed[i, idx]
        out.append(start + residual)
    return torch.stack(out).to(kps.dtype)


@dataclass
class RandomWarp:
    """A batch of random parametric warps, in normalised coordinates (output -> input).

    ``matrix (B, 3, 3)`` for ``affine``/``homography``; ``ctrl``/``target (B, K, 2)`` for ``tps``.
    Use :meth:`grid` to sample the warped image and :meth:`inverse_grid` for the reverse map
    (exact for affine/homography; a TPS fitted to the reversed dense map for ``tps``, accurate to
    a small fraction of a pixel at typical strengths).
    """

    kind: str
    matrix: torch.Tensor | None = None
    ctrl: torch.Tensor | None = None
    target: torch.Tensor | None = None

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        if self.kind == "tps":
            return tps_grid(self.ctrl, self.target, size)
        return homography_grid(self.matrix, size)

    def inverse(self) -> RandomWarp:
        if self.kind != "tps":
            return RandomWarp(self.kind, matrix=torch.linalg.inv(self.matrix.double()).to(self.matrix.dtype))
        # dense reverse fit: map a 12x12 lattice forward and fit the TPS from the images back
        b = self.ctrl.shape[0]
        lattice = _normalized_grid((12, 12), device=self.ctrl.device, dtype=self.ctrl.dtype)
        lattice = lattice.reshape(1, -1, 2).expand(b, -1, -1)
        params = tps_fit(self.ctrl, self.target)
        moved = tps_transform(lattice, self.ctrl, params)
        return RandomWarp("tps", ctrl=moved, target=lattice.clone())

    def inverse_grid(self, size: tuple[int, int]) -> torch.Tensor:
        return self.inverse().grid(size)

    def transform_points(self, pts: torch.Tensor) -> torch.Tensor:
        """Map normalised output points ``(B, N, 2)`` to normalised input points."""
        if self.kind == "tps":
            return tps_transform(pts, self.ctrl, tps_fit(self.ctrl, self.target))
        return _apply_homography(self.matrix, pts)


def sample_random_warp(
    batch: int,
    kind: str = "affine",
    strength: float = 0.5,
    *,
    generator: torch.Generator | None = None,
    dtype=torch.float32,
) -> RandomWarp:
    """Draw ``batch`` random warps of one ``kind`` in ``WARP_KINDS``.

    ``strength`` in ``[0, 1]`` scales every range: ``affine`` rotation up to 30*s degrees, log-scale
    up to 0.3*s, shear and translation up to 0.3*s (normalised units); ``homography`` moves the
    four corners of the image by up to 0.35*s each (as in DeTone et al. 2016); ``tps`` moves a
    3x3 lattice of control points by up to 0.25*s (as the TPS of Rocco et al. 2017).
    """
    check_choice(kind, "kind", WARP_KINDS)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"Argument strength must be in [0, 1], got {strength}.")

    def u(*shape, r):
        return (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * r

    s = strength
    if kind == "affine":
        ang = u(batch, r=math.radians(30) * s)
        sc = torch.exp(u(batch, r=0.3 * s))
        sh = u(batch, r=0.3 * s)
        t = u(batch, 2, r=0.3 * s)
        cos, sin = torch.cos(ang), torch.sin(ang)
        m = torch.zeros(batch, 3, 3, dtype=torch.float64)
        m[:, 0, 0], m[:, 0, 1] = sc * cos, sc * (-sin + sh * cos)
        m[:, 1, 0], m[:, 1, 1] = sc * sin, sc * (cos + sh * sin)
        m[:, :2, 2] = t
        m[:, 2, 2] = 1
        return RandomWarp("affine", matrix=m.to(dtype))
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    if kind == "homography":
        src = corners.expand(batch, -1, -1)
        dst = src + u(batch, 4, 2, r=0.35 * s)
        return RandomWarp("homography", matrix=homography_from_points(src, dst).to(dtype))
    lattice = torch.stack(
        torch.meshgrid(torch.linspace(-1, 1, 3, dtype=torch.float64), torch.linspace(-1, 1, 3, dtype=torch.float64), indexing="xy"),
        dim=-1,
    ).reshape(1, 9, 2).expand(batch, -1, -1)
    return RandomWarp("tps", ctrl=lattice.to(dtype).clone(), target=(lattice + u(batch, 9, 2, r=0.25 * s)).to(dtype))
