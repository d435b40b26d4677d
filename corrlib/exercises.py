"""Automatic checks for the notebooks' exercises.

Each ``check_*`` takes the student's function, runs it on cases with known answers (built from
corrlib's reference implementations) and returns a one-line verdict: ``"pass: ..."``,
``"not attempted yet: ..."`` (the function raised ``NotImplementedError``) or ``"wrong: ..."``
saying what differs. It never raises, so a notebook runs top to bottom before it is solved.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "check_affine_grid",
    "check_census",
    "check_contrastive_loss",
    "check_fpr95",
    "check_kernel_soft_argmax",
    "check_margin_hinge",
    "check_pck",
    "check_smoothness_loss",
    "check_zncc",
]


def _run(fn: Callable, *args):
    try:
        return fn(*args), None
    except NotImplementedError:
        return None, "not attempted yet: replace the `raise NotImplementedError` with your code."
    except Exception as e:  # a student's bug is reported, not raised
        return None, f"wrong: your function raised {type(e).__name__}: {e}"


def _as_float(got) -> tuple[float | None, str | None]:
    """A student's return value as a float, or a "wrong: ..." verdict (never raises)."""
    try:
        return float(got), None
    except Exception:  # None, a string, a tensor of several numbers...
        return None, f"wrong: expected a single number, got {type(got).__name__}."


def check_census(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> str:
    """``fn(gray (H, W) float, radius) -> bits (K, H, W) bool`` with ``K = (2r+1)^2 - 1``.

    Bit order: window offsets in row-major order (dy, then dx), centre skipped; bit is
    ``I(q) < I(p)``; outside the image the value is replicated from the border.
    """
    from corrlib.models.handcrafted import census_bits

    g = torch.Generator().manual_seed(0)
    gray = torch.rand(9, 11, generator=g)
    want = census_bits(gray, 1)
    got, err = _run(fn, gray.clone(), 1)
    if err:
        return err
    if not isinstance(got, torch.Tensor):
        return f"wrong: expected a tensor, got {type(got).__name__}."
    if tuple(got.shape) != tuple(want.shape):
        return f"wrong: shape {tuple(got.shape)}, expected {tuple(want.shape)} ((2r+1)^2 - 1 bits per pixel)."
    bad = (got.detach().cpu().bool() != want).float().mean().item()
    if bad > 0:
        return f"wrong: {bad:.1%} of the bits differ (check the comparison direction and the bit order)."
    return "pass: your census transform matches corrlib's on a random 9x11 image."


def check_pck(fn: Callable[[torch.Tensor, torch.Tensor, float], float]) -> str:
    """``fn(pred (N, 2), gt (N, 2), threshold) -> fraction of points within threshold (<=)``."""
    gt = torch.tensor([[10.0, 10.0], [20.0, 5.0], [0.0, 0.0], [7.0, 3.0]])
    # distances 5, 5.5, 1.41, 10: the boundary ones are exact in float32, so `<=` is testable
    pred = gt + torch.tensor([[3.0, 4.0], [0.0, 5.5], [1.0, 1.0], [6.0, 8.0]])
    cases = [(5.0, 0.5), (5.5, 0.75), (1.0, 0.0), (10.0, 1.0)]
    for thr, want in cases:
        got, err = _run(fn, pred.clone(), gt.clone(), thr)
        if err:
            return err
        got, err = _as_float(got)
        if err:
            return err
        if not abs(got - want) <= 1e-6:  # `not <=`: a NaN is wrong too
            return f"wrong: threshold {thr} gave {got:.3f}, expected {want:.3f} (distance <= threshold counts as correct)."
    return "pass: your PCK agrees on four thresholds, including the boundary case."


def check_zncc(fn: Callable[[torch.Tensor, torch.Tensor], float]) -> str:
    """``fn(a (K,), b (K,)) -> zero-normalised cross-correlation in [-1, 1]``."""
    g = torch.Generator().manual_seed(1)
    a = torch.rand(25, generator=g)
    cases = [(a, 3 * a + 1, 1.0), (a, -a, -1.0)]
    b = torch.rand(25, generator=g)
    ac, bc = a - a.mean(), b - b.mean()
    cases.append((a, b, float((ac @ bc) / (ac.norm() * bc.norm()))))
    for x, y, want in cases:
        got, err = _run(fn, x.clone(), y.clone())
        if err:
            return err
        got, err = _as_float(got)
        if err:
            return err
        if not abs(got - want) <= 1e-4:  # `not <=`: a NaN is wrong too
            return f"wrong: got {got:.4f}, expected {want:.4f} (subtract the means, divide by both norms)."
    return "pass: ZNCC is invariant to gain and offset, and your function shows it."


def check_fpr95(fn: Callable[[torch.Tensor, torch.Tensor], float]) -> str:
    """``fn(scores (N,), labels (N,) bool) -> FPR at 95 % recall`` (scores: higher = more alike)."""
    from corrlib.metrics import fpr_at_recall

    g = torch.Generator().manual_seed(2)
    labels = torch.rand(200, generator=g) < 0.5
    scores = labels.float() + 0.8 * torch.randn(200, generator=g)
    want = float(fpr_at_recall(scores, labels, 0.95))
    got, err = _run(fn, scores.clone(), labels.clone())
    if err:
        return err
    got, err = _as_float(got)
    if err:
        return err
    if not abs(got - want) <= 1e-6:
        return (f"wrong: got {got:.4f}, expected {want:.4f}. Lower the threshold until 95 % of the positives "
                "score at or above it, then count the fraction of negatives at or above it.")
    return "pass: your FPR95 matches corrlib.metrics.fpr_at_recall on 200 random scores."


def check_margin_hinge(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> str:
    """``fn(s_pos (B,), s_neg (B,), margin) -> mean(max(0, margin + s_neg - s_pos))`` (MC-CNN fast)."""
    s_pos = torch.tensor([0.9, 0.1, 0.5, 0.3])
    s_neg = torch.tensor([0.1, 0.2, 0.45, 0.6])
    want = float(torch.clamp(0.2 + s_neg - s_pos, min=0).mean())  # [0, 0.3, 0.15, 0.5] -> 0.2375
    got, err = _run(fn, s_pos.clone().requires_grad_(True), s_neg.clone(), 0.2)
    if err:
        return err
    if not isinstance(got, torch.Tensor) or got.dim() != 0:
        return "wrong: return a scalar tensor (the mean over the batch), so that it can be back-propagated."
    value = float(got.detach())
    if not abs(value - want) <= 1e-6:
        return f"wrong: got {value:.4f}, expected {want:.4f} (a pair costs nothing once s_pos exceeds s_neg by the margin)."
    if not got.requires_grad:
        return "wrong: the value is right but no gradient flows; use torch operations (torch.clamp), not Python floats."
    return "pass: your hinge loss matches MC-CNN's on four pairs, including one already beyond the margin."


def check_affine_grid(fn: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]) -> str:
    """``fn(theta (B, 2, 3), size=(H, W)) -> grid (B, H, W, 2)``: normalised output pixel centres
    (``align_corners=False``) mapped by ``theta`` to input coordinates, last dim (x, y)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    theta = torch.eye(2, 3).expand(2, -1, -1) + 0.3 * torch.randn(2, 2, 3, generator=g)
    size = (5, 7)
    want = F.affine_grid(theta, [2, 1, *size], align_corners=False)
    got, err = _run(fn, theta.clone(), size)
    if err:
        return err
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        return f"wrong: expected a tensor of shape {tuple(want.shape)} (B, H, W, 2), got {shape}."
    if torch.allclose(got, want, atol=1e-5):
        return "pass: your grid equals torch.nn.functional.affine_grid(..., align_corners=False)."
    if torch.allclose(got, F.affine_grid(theta, [2, 1, *size], align_corners=True), atol=1e-5):
        return "wrong: this is the align_corners=True grid; pixel centres are at (2x + 1) / W - 1, not 2x / (W - 1) - 1."
    if torch.allclose(got.flip(-1), want, atol=1e-5):
        return "wrong: the last dimension must be (x, y), not (y, x)."
    return "wrong: values differ from affine_grid; build the (x, y, 1) pixel-centre grid, then multiply by theta transposed."


def check_contrastive_loss(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> str:
    """``fn(d (N,), s (N,) bool, margin) -> 1/(2N) sum(s d^2 + (1 - s) max(0, m - d)^2)`` (UCN)."""
    d = torch.tensor([0.2, 0.5, 0.3, 1.4, 0.9])
    s = torch.tensor([True, True, False, False, False])
    m = 1.0
    want = float((s * d**2 + (~s) * torch.clamp(m - d, min=0) ** 2).sum() / (2 * len(d)))
    got, err = _run(fn, d.clone(), s.clone(), m)
    if err:
        return err
    value, err = _as_float(got.detach() if isinstance(got, torch.Tensor) else got)
    if err:
        return err
    if not abs(value - want) <= 1e-6:
        return (f"wrong: got {value:.4f}, expected {want:.4f}: positives cost d^2, negatives max(0, m - d)^2 "
                "(zero beyond the margin), and the sum is divided by 2N.")
    return "pass: your loss matches UCN's correspondence contrastive loss, including a negative beyond the margin."


def check_kernel_soft_argmax(fn: Callable[[torch.Tensor, float, float], torch.Tensor]) -> str:
    """``fn(scores (H, W), sigma, beta) -> (2,)`` (x, y): SFNet's kernel soft argmax of one score map.

    Gaussian window of ``sigma`` cells centred on the hard argmax, multiplied with the scores, then
    a softmax with temperature ``beta`` and the expected cell.
    """
    from corrlib.matching import kernel_soft_argmax

    scores = torch.zeros(12, 16)
    scores[3, 4], scores[9, 13], scores[4, 5] = 1.0, 0.97, 0.9  # a second peak far away, a neighbour near
    want = kernel_soft_argmax(scores[None, None], 2.0, 0.05)[0, 0]
    got, err = _run(fn, scores.clone(), 2.0, 0.05)
    if err:
        return err
    try:
        got = torch.as_tensor(got, dtype=torch.float32).detach().cpu().reshape(-1)
    except Exception:
        return f"wrong: expected (x, y), got {type(got).__name__}."
    if got.numel() != 2:
        return f"wrong: expected two numbers (x, y), got {got.numel()}."
    if torch.allclose(got, want.flip(0), atol=1e-3) and not torch.allclose(got, want, atol=1e-3):
        return "wrong: your (x, y) are swapped: x is the column, y the row."
    if not torch.allclose(got, want, atol=1e-3):
        return (f"wrong: got ({got[0]:.3f}, {got[1]:.3f}), expected ({want[0]:.3f}, {want[1]:.3f}); "
                "centre the Gaussian on the hard argmax and divide the windowed scores by beta before the softmax.")
    return "pass: your kernel soft argmax ignores the distant second peak and weighs the near neighbour, as SFNet's does."


def check_smoothness_loss(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> str:
    """``fn(flow (B, 2, h, w), mask (B, 1, h, w)) -> sum M (|dF/dx| + |dF/dy|) / (sum M + 1)``, batch mean."""
    from corrlib.losses import flow_smoothness_loss

    g = torch.Generator().manual_seed(0)
    flow = torch.randn(2, 2, 6, 7, generator=g)
    mask = (torch.rand(2, 1, 6, 7, generator=g) > 0.4).float()
    want = float(flow_smoothness_loss(flow, mask))
    got, err = _run(fn, flow.clone(), mask.clone())
    if err:
        return err
    value, err = _as_float(got.detach() if isinstance(got, torch.Tensor) else got)
    if err:
        return err
    if not abs(value - want) <= 1e-4:
        return (f"wrong: got {value:.4f}, expected {want:.4f}: use forward differences (F(x+1) - F(x), zero in the last column and row), "
                "L1 over both flow components and both directions, weight by the mask, divide by (sum of the mask + 1) "
                "per pair, then average over the batch.")
    return "pass: your smoothness term matches corrlib's flow_smoothness_loss."
