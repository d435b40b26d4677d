"""Image and mask files -> tensors (PIL underneath).

Convention: images are ``torch.uint8`` tensors ``(3, H, W)``, RGB, values 0..255; masks are
``torch.bool`` tensors ``(H, W)``, ``True`` on the foreground.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["read_image", "read_mask"]

# Modes whose last channel is alpha (dropped for masks; PIL drops it for RGB conversion).
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def _open(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Image file {path} does not exist (check the path or the data root)."
        )
    try:
        img = Image.open(path)
        img.load()  # decode now, so a truncated file fails here and not later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(
            f"Image file {path} is corrupt or not an image ({err}); re-download or re-extract it."
        ) from err
    return img


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as an RGB ``torch.uint8`` tensor ``(3, H, W)``.

    Grey, palette and other modes are converted to RGB; an alpha channel is dropped. Raises
    ``FileNotFoundError`` naming the path when it is missing and ``ValueError`` naming it when
    the file is corrupt. Example: ``read_image("PF-WILLOW/PF-dataset/car(G)/Cars_006a.png")``.
    """
    img = _open(path)
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def read_mask(path: str | os.PathLike) -> torch.Tensor:
    """Read a mask image as a ``torch.bool`` tensor ``(H, W)``: nonzero pixel = foreground.

    Palette images are judged by their stored index (TSS's JODS masks hold indices 0/1), colour
    images by any nonzero colour channel; alpha is ignored. Errors as :func:`read_image`.
    """
    img = _open(path)
    arr = np.asarray(img)
    if arr.ndim == 3:  # (H, W, C)
        if img.mode in _ALPHA_MODES:
            arr = arr[..., :-1]
        arr = arr.any(axis=-1)
    return torch.from_numpy(arr != 0)
