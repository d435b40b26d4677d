"""Image and mask files -> tensors (PIL underneath), and keypoint-inside-image checks.

Convention: images are ``torch.uint8`` tensors ``(3, H, W)``, RGB, values 0..255; masks are
``torch.bool`` tensors ``(H, W)``, ``True`` on the foreground.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "KEYPOINT_TOLERANCE",
    "first_point_outside",
    "point_outside_text",
    "read_image",
    "read_mask",
    "shown_path",
]

# Modes whose last channel is alpha (dropped for masks; PIL drops it for RGB conversion).
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
# 16-bit greyscale modes: PIL's convert("RGB") clips them at 255, so read_image scales them.
_GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
#: How far (pixels) an annotated keypoint may lie outside its image (annotation rounding).
KEYPOINT_TOLERANCE = 1.0


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as printable text: bytes that are not UTF-8 appear as ``\\xNN`` escapes.

    A name with such bytes (decoded with surrogates by Python) would make an error message that
    cannot be printed or written as UTF-8; this one always can.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _bomb_message(path: Path, err: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(err))
    n = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    limit = Image.MAX_IMAGE_PIXELS
    return (
        f"Image file {shown_path(path)} has {n}, more than Pillow's decompression-bomb limit "
        f"(PIL.Image.MAX_IMAGE_PIXELS = {limit:,}); it was not decoded, since a small file that "
        "expands this much can exhaust the memory. If you trust the file, raise the limit before "
        "reading it: `import PIL.Image; PIL.Image.MAX_IMAGE_PIXELS = <pixels>` (None switches "
        "the check off)."
    )


def _open(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Image file {shown_path(path)} does not exist (check the path or the data root)."
        )
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit: refuse those files as well
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()  # decode now, so a truncated file fails here and not later
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(_bomb_message(path, err)) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(
            f"Image file {shown_path(path)} is corrupt or not an image ({err}); re-download or "
            "re-extract it."
        ) from err
    return img


def _grey16_to_rgb8(img: Image.Image, path: str | os.PathLike) -> np.ndarray:
    """A 16-bit greyscale image (``I;16*``, or ``I`` holding 0..65535) as ``(H, W, 3)`` uint8,
    scaled by the type's maximum: ``round(x / 257)`` (65535 -> 255), never clipped."""
    arr = np.asarray(img).astype(np.int64)  # any byte order -> native integers
    if img.mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError(
            f"Image file {shown_path(path)} is a 32-bit integer image with values "
            f"{arr.min()}..{arr.max()}, outside the 16-bit range 0..65535 that read_image "
            "scales to 8 bits; convert it to an 8-bit (or 16-bit) image first."
        )
    grey = np.rint(arr / 257.0).astype(np.uint8)  # (H, W)
    return np.repeat(grey[..., None], 3, axis=-1)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as an RGB ``torch.uint8`` tensor ``(3, H, W)``.

    Grey, palette and other modes are converted to RGB; an alpha channel is dropped. 16-bit
    greyscale (modes ``I;16``, ``I;16B``, and ``I`` holding 0..65535) is scaled to 8 bits by
    the type's maximum (``round(x / 257)``), not clipped; 16-bit RGB is reduced by Pillow.
    Raises ``FileNotFoundError`` naming the path when it is missing and ``ValueError`` naming
    it when the file is corrupt, or larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (a possible
    decompression bomb; the message says how to raise the limit). Example:
    ``read_image("PF-WILLOW/PF-dataset/car(G)/Cars_006a.png")``.
    """
    img = _open(path)
    if img.mode in _GREY16_MODES or img.mode == "I":
        arr = _grey16_to_rgb8(img, path)
    else:
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


def first_point_outside(
    kps: torch.Tensor, size: tuple[int, int], tolerance: float = KEYPOINT_TOLERANCE
) -> int | None:
    """Index of the first keypoint of ``kps`` ``(N, 2)`` (0-based pixels, (x, y)) outside an
    image of ``size`` ``(H, W)``, or None when all are inside.

    Inside means ``-tolerance <= x <= W - 1 + tolerance`` and likewise for y (pixel centres run
    0..W-1); a NaN or infinite coordinate is outside.
    """
    h, w = size
    x, y = kps[:, 0].double(), kps[:, 1].double()
    inside = (x >= -tolerance) & (x <= w - 1 + tolerance)
    inside &= (y >= -tolerance) & (y <= h - 1 + tolerance)
    bad = (~inside).nonzero()
    return int(bad[0]) if bad.numel() else None


def point_outside_text(
    kps: torch.Tensor,
    index: int,
    size: tuple[int, int],
    image: str,
    tolerance: float = KEYPOINT_TOLERANCE,
) -> str:
    """``"keypoint 3 at (x=.., y=..) lies outside the W x H image <image> (...)"`` for errors."""
    h, w = size
    x, y = (float(v) for v in kps[index])
    return (
        f"keypoint {index} (0-based) at (x={x:g}, y={y:g}) lies outside the {w}x{h} (W x H) image "
        f"{shown_path(image)} (0-based pixel centres 0..{w - 1} x 0..{h - 1}, {tolerance:g} px "
        "tolerance)"
    )
