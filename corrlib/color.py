"""Colour conversion shared by descriptors, patch data and methods (one grey conversion).

Convention: RGB images are ``(3, H, W)`` or ``(B, 3, H, W)``, uint8 in ``[0, 255]`` or float in
``[0, 1]``; grey is ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` as float32 in ``[0, 1]``.
"""

from __future__ import annotations

import torch

from corrlib._check import check_image

__all__ = ["LUMA_WEIGHTS", "rgb_to_grey"]

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
