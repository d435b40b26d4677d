"""Colour conversion and intensity normalisation shared by descriptors, patch data and methods.

Convention: RGB images are ``(3, H, W)`` or ``(B, 3, H, W)``, uint8 in ``[0, 255]`` or float in
``[0, 1]``; grey is ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` as float32 in ``[0, 1]``.
"""

from __future__ import annotations

import torch

from corrlib._check import check_image

__all__ = ["LUMA_WEIGHTS", "rgb_to_grey", "standardize_images"]

#: ITU-R BT.601 luma weights of R, G, B.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def rgb_to_grey(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Luma of an RGB image.

    Args:
        image: ``(3, H, W)`` or ``(B, 3, H, W)``, uint8 (0..255) or float (0..1).
        name: the argument's name in error messages.

    Returns:
        float32 ``(H, W)`` or ``(B, H, W)`` in ``[0, 1]``.

    Example:
        >>> rgb_to_grey(torch.full((3, 1, 2), 255, dtype=torch.uint8))
        tensor([[1., 1.]])
    """
    check_image(image, name)
    if image.dtype == torch.uint8:
        x = image.float() / 255.0
    elif image.is_floating_point():
        x = image.float()
    else:
        raise ValueError(
            f"Argument {name} must be float (values in [0, 1]) or uint8, got dtype {image.dtype}."
        )
    w = x.new_tensor(LUMA_WEIGHTS).view(3, 1, 1)
    return (x * w).sum(dim=-3).clamp(0.0, 1.0)


def standardize_images(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Each image minus its mean intensity, divided by its standard deviation.

    MC-CNN's preprocessing (Zbontar & LeCun's code, ``preprocess_kitti.lua``:
    ``img:add(-img:mean()):div(img:std())`` on every KITTI image): the statistics are those of
    the whole image, so the patches cut from it afterwards share them. The standard deviation is
    the unbiased one (Torch's ``std``, divided by ``n - 1``); a constant image (its standard
    deviation within rounding of zero) maps to zeros.

    Args:
        images: float ``(H, W)`` (one image) or ``(B, C, H, W)`` (statistics per batch item, over
            its ``C x H x W`` values).
        name: the argument's name in error messages.

    Returns:
        float ``images``' shape: zero mean and unit standard deviation per image.

    Example:
        >>> x = standardize_images(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        >>> round(float(x.mean()), 6), round(float(x.std()), 6)
        (0.0, 1.0)
    """
    if images.dim() not in (2, 4) or not images.is_floating_point():
        raise ValueError(
            f"Argument {name} must be a float (H, W) image or a (B, C, H, W) batch, got "
            f"{images.dtype} of shape {tuple(images.shape)}."
        )
    dims = (0, 1) if images.dim() == 2 else (1, 2, 3)
    mean = images.mean(dim=dims, keepdim=True)
    if images.numel() == 0 or (images.numel() if images.dim() == 2 else images[0].numel()) < 2:
        return torch.zeros_like(images)
    std = images.std(dim=dims, keepdim=True)
    # a constant image: its std is rounding noise (summation order), so it maps to zeros
    flat = std <= 16 * torch.finfo(images.dtype).eps * mean.abs().clamp_min(1.0)
    return (images - mean) / std.masked_fill(flat, float("inf"))
