"""Input checks shared by every public function (one place, one message style).

A bad shape or value raises ``ValueError`` naming the argument, what was expected and what
was given; an unknown string option lists the valid values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

__all__ = ["check_choice", "check_shape", "check_tensor"]


def check_tensor(x: object, name: str) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Argument {name} must be a torch.Tensor, got {type(x).__name__}.")
    return x


def check_shape(x: torch.Tensor, pattern: Sequence[str | int], name: str) -> dict[str, int]:
    """Check ``x`` against a shape pattern and return the sizes bound to its letters.

    ``pattern`` holds ints (exact sizes), letters (any size, the same letter the same size)
    and ``"*"`` (any size). Example: ``check_shape(kps, ("B", "N", 2), "kps")``.
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
    """torchvision-style string option check."""
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(
            f"Unknown value '{value}' for argument {name}. Valid values are {{{', '.join(valid)}}}."
        )
    return value
