"""Synthetic training pairs: real images warped by random parametric transforms.

Each pair has exact dense ground truth (the warp is known), so chapters can train and test
matching without annotated data (as in Rocco et al., CVPR 2017 and Choy et al., NeurIPS 2016).
Offline image sources: scikit-image's bundled photographs (:data:`SKIMAGE_PHOTOS`) or any list of
``(3, H, W)`` images. Keep training and test images disjoint: pass different image lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from corrlib._check import check_choice, check_image
from corrlib.geometry import (
    WARP_KINDS,
    grid_to_flow,
    normalized_to_pixel,
    pixel_grid,
    pixel_to_normalized,
    sample_random_warp,
)

__all__ = [
    "SKIMAGE_PHOTOS",
    "SyntheticPairs",
    "photometric_jitter",
    "skimage_photos",
    "sklearn_photos",
]

#: scikit-image photographs that ship with the package (no download needed).
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "colorwheel",
)


def skimage_photos(names: Sequence[str] = SKIMAGE_PHOTOS) -> list[torch.Tensor]:
    """Load bundled scikit-image RGB photographs as uint8 ``(3, H, W)`` tensors."""
    import skimage.data

    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        check_choice(name, "names", SKIMAGE_PHOTOS)
    out = []
    for name in names:
        arr = getattr(skimage.data, name)()
        out.append(torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1).contiguous())
    return out


def sklearn_photos() -> list[torch.Tensor]:
    """scikit-learn's bundled ``china`` and ``flower`` photographs as uint8 ``(3, H, W)``: held
    out from every chapter's training photographs (:func:`skimage_photos`).

    Returns:
        A list of two uint8 ``(3, H, W)`` tensors (RGB, ``H, W = 427, 640``).
    """
    from sklearn.datasets import load_sample_images

    imgs = load_sample_images().images
    return [torch.from_numpy(a[..., :3].copy()).permute(2, 0, 1).contiguous() for a in imgs]


def photometric_jitter(
    img: torch.Tensor, amount: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random photometric change of ``img (3, H, W)`` float in ``[0, 1]``: gain, per-channel gain,
    gamma.

    Five uniform draws in ``[-amount, amount]`` from ``generator``: a global gain ``1 + u0``,
    channel gains ``1 + u/2`` and a gamma ``exp(u4)``; ``amount=0`` returns ``img`` unchanged.
    """
    if amount <= 0:
        return img
    u = (torch.rand(5, generator=generator) * 2 - 1) * amount
    gain = (1 + u[0]) * (1 + 0.5 * u[1:4])
    return (img * gain.reshape(3, 1, 1).to(img.dtype)).clamp(0, 1).pow(math.exp(float(u[4])))


def _resize_crop(img: torch.Tensor, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Random crop of the largest region with the aspect of ``size``, resized to ``size``."""
    _, h, w = img.shape
    th, tw = size
    scale = min(h / th, w / tw)
    ch, cw = int(th * scale), int(tw * scale)
    y0 = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
    x0 = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
    crop = img[:, y0 : y0 + ch, x0 : x0 + cw].float().unsqueeze(0)
    return F.interpolate(crop, size=size, mode="bilinear", antialias=True, align_corners=False)[0]


class SyntheticPairs(Dataset):
    """Pairs ``(src, trg = warp(src))`` with dense flow, validity masks and keypoints.

    Args:
        images: source images, uint8 or float ``(3, H, W)`` (e.g. :func:`skimage_photos`).
        size: ``(H, W)`` of both images of a pair.
        kind: one of ``("affine", "homography", "tps", "mixed")``; mixed draws one per pair.
        strength: in ``[0, 1]``, see :func:`corrlib.geometry.sample_random_warp`.
        n_pairs: number of pairs (each deterministic given ``seed`` and its index).
        n_kps: keypoints per pair, drawn where the source point lands inside the target.
        masks: optional foreground masks ``(H, W)`` aligned with ``images``; warped alongside.
        transform: optional callable applied to the sample dict.
        cycle_images: pair ``i`` warps image ``i % len(images)`` (every image used, as RTN's code
            warps each VOC photograph once), instead of an image drawn at random per pair.

    A sample is a dict: ``src_img``, ``trg_img`` (float32 ``(3, H, W)`` in ``[0, 1]``),
    ``flow`` (``(2, H, W)`` src->trg in pixels, on the src grid), ``flow_valid`` (``(H, W)`` bool:
    the point lands inside trg), ``trg_flow`` (``(2, H, W)`` trg->src, on the trg grid, exact) and
    ``trg_flow_valid``, ``src_kps``/``trg_kps`` (``(n_kps, 2)`` pixels), ``src_mask``/``trg_mask``
    when masks are given, ``category`` (``"synthetic-<kind>"``), ``pair_index``, ``src_size``,
    ``trg_size``. Both flows are exact for every kind (the TPS inverse is solved by Newton's
    method in :meth:`corrlib.geometry.RandomWarp.inverse_grid`).
    """

    KINDS = (*WARP_KINDS, "mixed")

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        size: tuple[int, int] = (240, 240),
        kind: str = "affine",
        strength: float = 0.5,
        n_pairs: int = 100,
        n_kps: int = 20,
        seed: int = 0,
        masks: Sequence[torch.Tensor] | None = None,
        transform: Callable[[dict], dict] | None = None,
        *,
        cycle_images: bool = False,
    ):
        check_choice(kind, "kind", self.KINDS)
        if len(images) == 0:
            raise ValueError("Argument images is empty: give at least one (3, H, W) image.")
        for i, img in enumerate(images):
            check_image(img, f"images[{i}]", batched=False)
        if len(size) != 2 or min(size) < 16:
            raise ValueError(
                f"Argument size must be (H, W) with both sides >= 16, got {tuple(size)}."
            )
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"Argument strength must be in [0, 1], got {strength}.")
        if n_pairs < 1 or n_kps < 0:
            raise ValueError(
                f"Arguments n_pairs >= 1 and n_kps >= 0 are required, got {n_pairs} and {n_kps}."
            )
        if masks is not None and len(masks) != len(images):
            raise ValueError(
                f"Arguments masks and images must have the same length, got {len(masks)} and "
                f"{len(images)}."
            )
        self.images, self.masks = list(images), None if masks is None else list(masks)
        self.size, self.kind, self.strength = tuple(size), kind, strength
        self.n_pairs, self.n_kps, self.seed, self.transform = n_pairs, n_kps, seed, transform
        self.cycle_images = bool(cycle_images)

    def __len__(self) -> int:
        return self.n_pairs

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n_pairs:
            raise IndexError(f"index {index} out of range for {self.n_pairs} pairs")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        k = (
            index % len(self.images)
            if self.cycle_images
            else int(torch.randint(0, len(self.images), (1,), generator=gen))
        )
        kind = self.kind
        if kind == "mixed":
            kind = WARP_KINDS[int(torch.randint(0, len(WARP_KINDS), (1,), generator=gen))]
        img = self.images[k]
        img = img.float() / 255 if img.dtype == torch.uint8 else img.float()
        stack = img
        if self.masks is not None:
            stack = torch.cat((img, self.masks[k].float()[None]), 0)
        src = _resize_crop(stack, self.size, gen)
        warp = sample_random_warp(1, kind, self.strength, generator=gen)
        grid = warp.grid(self.size)  # trg -> src, normalised
        trg = F.grid_sample(
            src[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )[0]
        trg_flow = grid_to_flow(grid, self.size)[0]
        inside_src = self._inside(trg_flow)
        inv_grid = warp.inverse_grid(self.size)  # src -> trg, normalised
        flow = grid_to_flow(inv_grid, self.size)[0]
        inside_trg = self._inside(flow)
        src_kps, trg_kps = self._keypoints(warp, gen)
        sample = {
            "src_img": src[:3].clamp(0, 1),
            "trg_img": trg[:3].clamp(0, 1),
            "flow": flow,
            "flow_valid": inside_trg,
            "trg_flow": trg_flow,
            "trg_flow_valid": inside_src,
            "src_kps": src_kps,
            "trg_kps": trg_kps,
            "category": f"synthetic-{kind}",
            "pair_index": index,
            "src_size": self.size,
            "trg_size": self.size,
        }
        if self.masks is not None:
            sample["src_mask"] = src[3] > 0.5
            sample["trg_mask"] = trg[3] > 0.5
        return self.transform(sample) if self.transform is not None else sample

    def _inside(self, flow: torch.Tensor) -> torch.Tensor:
        """``(H, W)`` bool: ``p + flow(p)`` lies in ``[0, W-1] x [0, H-1]`` (as in
        warp_with_flow)."""
        h, w, eps = *self.size, 1e-3  # eps absorbs float rounding of an identity warp
        pts = pixel_grid(self.size, dtype=flow.dtype) + flow.permute(1, 2, 0)
        x, y = pts[..., 0], pts[..., 1]
        return (x >= -eps) & (x <= w - 1 + eps) & (y >= -eps) & (y <= h - 1 + eps)

    def _keypoints(self, warp, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints drawn in trg (uniform, 4 px from the border) whose source lies inside src."""
        h, w = self.size
        want, kept_trg, kept_src = self.n_kps, [], []
        for _ in range(10):
            cand = torch.rand(4 * want, 2, generator=gen) * torch.tensor([w - 9.0, h - 9.0]) + 4
            src_n = warp.transform_points(pixel_to_normalized(cand, self.size)[None])[0]
            src = normalized_to_pixel(src_n, self.size)
            ok = (src[:, 0] >= 4) & (src[:, 0] <= w - 5) & (src[:, 1] >= 4) & (src[:, 1] <= h - 5)
            kept_trg.append(cand[ok])
            kept_src.append(src[ok])
            if sum(len(k) for k in kept_trg) >= want:
                break
        trg_kps = torch.cat(kept_trg)[:want]
        src_kps = torch.cat(kept_src)[:want]
        if len(trg_kps) < want:
            raise RuntimeError(
                f"Could place only {len(trg_kps)} of {want} keypoints inside both images of a "
                f"{self.kind} warp at strength {self.strength}; lower strength or n_kps, or "
                "enlarge size."
            )
        return src_kps.float(), trg_kps.float()
