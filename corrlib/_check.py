"""Input checks shared by every public function (one place, one message style).

A bad shape or value raises ``ValueError`` naming the argument, what was expected and what
was given; an unknown string option lists the valid values; a non-tensor raises ``TypeError``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterable, Sequence

import torch

__all__ = [
    "check_choice",
    "check_float",
    "check_image",
    "check_int",
    "check_shape",
    "check_tensor",
    "full_precision",
]


def check_tensor(x: object, name: str) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a tensor; return it.

    Example:
        >>> check_tensor([1, 2], "kps")
        Traceback (most recent call last):
        ...
        TypeError: Argument kps must be a torch.Tensor, got list.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Argument {name} must be a torch.Tensor, got {type(x).__name__}.")
    return x


def check_shape(x: torch.Tensor, pattern: Sequence[str | int], name: str) -> dict[str, int]:
    """Check ``x`` against a shape pattern and return the sizes bound to its letters.

    ``pattern`` holds ints (exact sizes), letters (any size, the same letter the same size)
    and ``"*"`` (any size). Only letters are returned, in pattern order, so read sizes by name
    (``check_shape(...)["B"]``), or unpack ``.values()`` only when every dim is a letter.

    Example:
        >>> check_shape(torch.zeros(2, 5, 2), ("B", "N", 2), "kps")
        {'B': 2, 'N': 5}
        >>> check_shape(torch.zeros(5, 2), ("B", "N", 2), "kps")
        Traceback (most recent call last):
        ...
        ValueError: Argument kps must have shape (B, N, 2) (3 dims), got shape (5, 2).
    """
    check_tensor(x, name)
    expected = "(" + ", ".join(str(p) for p in pattern) + ")"
    if x.dim() != len(pattern):
        raise ValueError(
            f"Argument {name} must have shape {expected} ({len(pattern)} dims), "
            f"got shape {tuple(x.shape)}."
        )
    bound: dict[str, int] = {}
    for dim, (p, size) in enumerate(zip(pattern, x.shape)):
        if isinstance(p, int):
            if size != p:
                raise ValueError(
                    f"Argument {name} must have shape {expected}; dim {dim} should be {p}, "
                    f"got shape {tuple(x.shape)}."
                )
        elif p != "*":
            if p in bound and bound[p] != size:
                raise ValueError(
                    f"Argument {name} must have shape {expected}; dim {dim} ({p}) should be "
                    f"{bound[p]}, got shape {tuple(x.shape)}."
                )
            bound[p] = size
    return bound


def check_choice(value: str, name: str, valid: Iterable[str]) -> str:
    """torchvision-style string option check; returns ``value``.

    Example:
        >>> check_choice("tps", "kind", ("affine", "homography", "tps"))
        'tps'
        >>> check_choice("spline", "kind", ("affine", "tps"))
        Traceback (most recent call last):
        ...
        ValueError: Unknown value 'spline' for argument kind. Valid values are {affine, tps}.
    """
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(
            f"Unknown value '{value}' for argument {name}. Valid values are {{{', '.join(valid)}}}."
        )
    return value


def check_image(
    img: torch.Tensor, name: str = "image", batched: bool | None = None
) -> torch.Tensor:
    """Check an RGB image tensor: ``(3, H, W)`` or ``(B, 3, H, W)`` (``batched`` forces one).

    A grey (1 channel) or RGBA (4 channel) image is refused with a message that says how to
    convert it; returns ``img``.

    Example:
        >>> check_image(torch.zeros(1, 8, 8), "src")  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        ValueError: Argument src must have 3 channels (RGB) in dim 0, got 1 channels (shape (1, 8,
        8)); a grey image: repeat it, e.g. img.expand(3, -1, -1), or load it with
        corrlib.data.read_image.
    """
    check_tensor(img, name)
    if batched is None:
        batched = img.dim() == 4
    want = 4 if batched else 3
    shape = "(B, 3, H, W)" if batched else "(3, H, W)"
    if img.dim() != want:
        raise ValueError(f"Argument {name} must have shape {shape}, got shape {tuple(img.shape)}.")
    c = img.shape[-3]
    if c != 3:
        expand, alpha = (
            ("img.expand(-1, 3, -1, -1)", "img[:, :3]")
            if batched
            else ("img.expand(3, -1, -1)", "img[:3]")
        )
        fix = {
            1: f"a grey image: repeat it, e.g. {expand}, or load it with corrlib.data.read_image",
            4: f"an RGBA image: drop alpha with {alpha}, or load it with corrlib.data.read_image",
        }.get(c, "channels must be RGB")
        raise ValueError(
            f"Argument {name} must have 3 channels (RGB) in dim {want - 3}, got {c} channels "
            f"(shape {tuple(img.shape)}); {fix}."
        )
    return img


def check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    """Raise ``ValueError`` unless ``value`` is an int (not a bool) in ``[low, high]``; return it.

    Example:
        >>> check_int(3, "steps", 1)
        3
        >>> check_int(0, "steps", 1)
        Traceback (most recent call last):
        ...
        ValueError: Argument steps must be an int >= 1, got 0.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"Argument {name} must be an int {rng}, got {value!r}.")
    return value


def check_float(
    value: object,
    name: str,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite number in the interval; return it.

    ``low_open``/``high_open`` exclude the end points.

    Example:
        >>> check_float(0.5, "lr", 0.0, low_open=True)
        0.5
        >>> check_float(0.0, "lr", 0.0, low_open=True)
        Traceback (most recent call last):
        ...
        ValueError: Argument lr must be a number in (0.0, inf), got 0.0.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        lo = f"{'(' if low_open else '['}{low}"
        hi = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
        raise ValueError(f"Argument {name} must be a number in {lo}, {hi}, got {value!r}.")
    return value


_LOW = (torch.float16, torch.bfloat16)


def _up(x):
    return x.float() if isinstance(x, torch.Tensor) and x.dtype in _LOW else x


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def full_precision(fn):
    """Run ``fn`` in float32 even inside ``torch.autocast``: half-precision tensor arguments are
    cast to float32 and autocast is switched off for the call. Mixed precision speeds up the
    trunks; correlations, soft argmaxes, Hough votes and losses stay in float32 (their softmaxes
    and sums lose too much in bfloat16)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = tuple(_up(a) for a in args)
        kwargs = {k: _up(v) for k, v in kwargs.items()}
        devices = {a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        on = [d for d in sorted(devices) if d in ("cpu", "cuda") and _autocast_on(d)]
        if not on:
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for d in on:
                stack.enter_context(torch.autocast(d, enabled=False))
            return fn(*args, **kwargs)

    return wrapper
