"""Chapter 00 recipe: the baselines evaluated in the basics chapter (no training)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from corrlib.exercises import as_number, run_student
from corrlib.recipes._common import ChapterConfig, config_getter, make_presets

__all__ = [
    "CHAPTER",
    "HANDCRAFTED",
    "PRESETS",
    "Config",
    "check_census",
    "check_pck",
    "check_zncc",
    "config",
]

CHAPTER = "00_basics"
#: The hand-crafted dense descriptors compared in chapter 00.
HANDCRAFTED = ("zncc", "census", "hog", "daisy", "sift")


@dataclass(frozen=True, kw_only=True)
class Config(ChapterConfig):
    """Chapter 00's evaluation settings; defaults follow Proposal Flow (Ham et al., CVPR 2016),
    which evaluates at the original resolution.

    ``pf_willow_limit``: pairs evaluated (None: all); ``max_side``: images resized so the longer
    side is this (None: original); ``tss_max_side``/``tss_subsets``: the same for TSS.
    """

    methods: tuple = ("identity", *HANDCRAFTED)
    pf_willow_limit: int | None = None
    max_side: int | None = None
    tss_max_side: int | None = None
    tss_subsets: tuple = ("FG3DCar", "JODS", "PASCAL")


PRESETS = make_presets(
    Config(),
    # PF-WILLOW images are at most 300 px: original resolution; TSS (up to 800 px) at 200 px
    lab=dict(tss_max_side=200),
    smoke=dict(pf_willow_limit=12, max_side=96, tss_max_side=64, tss_subsets=("JODS",)),
)


#: ``config(preset)``: the chapter's :class:`Config` at a preset (a deep copy; frozen).
config = config_getter(PRESETS)


def check_census(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> str:
    """``fn(gray (H, W) float, radius) -> bits (K, H, W) bool`` with ``K = (2r+1)^2 - 1``.

    Bit order: window offsets in row-major order (dy, then dx), centre skipped; bit is
    ``I(q) < I(p)``; outside the image the value is replicated from the border.

    Args:
        fn: the student's census transform, ``fn(gray, radius)`` with ``gray`` float ``(H, W)``
            and ``radius`` an int ``r``, returning bits ``(K, H, W)`` (compared as bool).

    Returns:
        A one-line verdict: ``"pass: ..."``, ``"wrong: ..."`` (what differs from
        :func:`corrlib.models.handcrafted.census_bits` on a random 9x11 image, ``r = 1``) or
        ``"not attempted yet: ..."``.
    """
    from corrlib.models.handcrafted import census_bits

    g = torch.Generator().manual_seed(0)
    gray = torch.rand(9, 11, generator=g)
    want = census_bits(gray, 1)
    got, err = run_student(fn, gray.clone(), 1)
    if err:
        return err
    if not isinstance(got, torch.Tensor):
        return f"wrong: expected a tensor, got {type(got).__name__}."
    if tuple(got.shape) != tuple(want.shape):
        return (
            f"wrong: shape {tuple(got.shape)}, expected {tuple(want.shape)} ((2r+1)^2 - 1 bits per "
            "pixel)."
        )
    bad = (got.detach().cpu().bool() != want).float().mean().item()
    if bad > 0:
        return (
            f"wrong: {bad:.1%} of the bits differ (check the comparison direction and the bit "
            "order)."
        )
    return "pass: your census transform matches corrlib's on a random 9x11 image."


def check_pck(fn: Callable[[torch.Tensor, torch.Tensor, float], float]) -> str:
    """``fn(pred (N, 2), gt (N, 2), threshold) -> fraction of points within threshold (<=)``.

    Args:
        fn: the student's PCK, ``fn(pred, gt, threshold)`` with ``pred``, ``gt`` float ``(N, 2)``
            pixels (x, y) and ``threshold`` a float in pixels, returning a number (a float or a
            0-dim tensor) in ``[0, 1]``.

    Returns:
        A one-line verdict: ``"pass: ..."``, ``"wrong: ..."`` (the first of four thresholds, one
        on the boundary, that disagrees) or ``"not attempted yet: ..."``.
    """
    gt = torch.tensor([[10.0, 10.0], [20.0, 5.0], [0.0, 0.0], [7.0, 3.0]])
    # distances 5, 5.5, 1.41, 10: the boundary ones are exact in float32, so `<=` is testable
    pred = gt + torch.tensor([[3.0, 4.0], [0.0, 5.5], [1.0, 1.0], [6.0, 8.0]])
    cases = [(5.0, 0.5), (5.5, 0.75), (1.0, 0.0), (10.0, 1.0)]
    for thr, want in cases:
        got, err = run_student(fn, pred.clone(), gt.clone(), thr)
        if err:
            return err
        got, err = as_number(got)
        if err:
            return err
        if not abs(got - want) <= 1e-6:  # `not <=`: a NaN is wrong too
            return (
                f"wrong: threshold {thr} gave {got:.3f}, expected {want:.3f} (distance <= "
                "threshold counts as correct)."
            )
    return "pass: your PCK agrees on four thresholds, including the boundary case."


def check_zncc(fn: Callable[[torch.Tensor, torch.Tensor], float]) -> str:
    """``fn(a (K,), b (K,)) -> zero-normalised cross-correlation in [-1, 1]``.

    Args:
        fn: the student's ZNCC, ``fn(a, b)`` with ``a``, ``b`` float ``(K,)`` (flattened
            patches), returning a number (a float or a 0-dim tensor).

    Returns:
        A one-line verdict: ``"pass: ..."``, ``"wrong: ..."`` (a case among gain/offset, negation
        and random vectors that disagrees by more than 1e-4) or ``"not attempted yet: ..."``.
    """
    g = torch.Generator().manual_seed(1)
    a = torch.rand(25, generator=g)
    cases = [(a, 3 * a + 1, 1.0), (a, -a, -1.0)]
    b = torch.rand(25, generator=g)
    ac, bc = a - a.mean(), b - b.mean()
    cases.append((a, b, float((ac @ bc) / (ac.norm() * bc.norm()))))
    for x, y, want in cases:
        got, err = run_student(fn, x.clone(), y.clone())
        if err:
            return err
        got, err = as_number(got)
        if err:
            return err
        if not abs(got - want) <= 1e-4:  # `not <=`: a NaN is wrong too
            return (
                f"wrong: got {got:.4f}, expected {want:.4f} (subtract the means, divide by both "
                "norms)."
            )
    return "pass: ZNCC is invariant to gain and offset, and your function shows it."
