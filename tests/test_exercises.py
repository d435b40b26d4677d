"""Exercise checkers (corrlib.exercises): right answers pass, plausible mistakes are caught."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from corrlib.exercises import as_number, run_student
from corrlib.recipes.basics import check_census, check_pck, check_zncc

# ------------------------------------------------------------------------------------------------
# reference solutions (written independently of corrlib) and plausible mistakes
# ------------------------------------------------------------------------------------------------


def _census(gray, r, *, pad="replicate", less=True, order="yx"):
    h, w = gray.shape
    if pad == "replicate":
        padded = F.pad(gray[None, None], (r, r, r, r), mode="replicate")[0, 0]
    else:
        padded = F.pad(gray, (r, r, r, r), value=0.0)
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
    if order == "xy":  # column-major: dx outer
        offsets = sorted(offsets, key=lambda o: (o[1], o[0]))
    bits = []
    for dy, dx in offsets:
        q = padded[r + dy : r + dy + h, r + dx : r + dx + w]
        bits.append(q < gray if less else q > gray)
    return torch.stack(bits)


def census_loop(gray, r):
    """Slow, obvious: clamp the neighbour's coordinates into the image (= replicate padding)."""
    h, w = gray.shape
    out = torch.zeros((2 * r + 1) ** 2 - 1, h, w, dtype=torch.bool)
    for y in range(h):
        for x in range(w):
            k = 0
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    if dy == 0 and dx == 0:
                        continue
                    qy, qx = min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)
                    out[k, y, x] = bool(gray[qy, qx] < gray[y, x])
                    k += 1
    return out


def pck_ok(pred, gt, threshold):
    return ((pred - gt).norm(dim=-1) <= threshold).float().mean().item()


def pck_squared(pred, gt, threshold):  # also right: compare squared distances
    return float(((pred - gt) ** 2).sum(-1).le(threshold**2).double().mean())


def zncc_ok(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def zncc_std(a, b):  # also right: mean of products of standardised values
    return ((a - a.mean()) / a.std(unbiased=False) * (b - b.mean()) / b.std(unbiased=False)).mean()


def _not_attempted(*args):
    raise NotImplementedError


def _crashes(*args):
    raise IndexError("list index out of range")


# ------------------------------------------------------------------------------------------------
# census
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [lambda g, r: _census(g, r), lambda g, r: _census(g, r).to(torch.uint8)],
    ids=["bool", "uint8-bits"],
)
def test_census_pass(fn):
    assert check_census(fn).startswith("pass")


def test_census_reference_matches_slow_loop():
    gray = torch.rand(6, 7, generator=torch.Generator().manual_seed(3))
    for r in (1, 2):
        assert torch.equal(_census(gray, r), census_loop(gray, r))
    assert check_census(census_loop).startswith("pass")


@pytest.mark.parametrize(
    "mistake",
    [
        lambda g, r: _census(g, r, less=False),  # inverted comparison
        lambda g, r: ~_census(g, r),  # inverted bits (>= instead of <)
        lambda g, r: _census(g, r, order="xy"),  # wrong bit order
        lambda g, r: _census(g, r).flip(0),  # reversed bit order
        lambda g, r: _census(g, r, pad="zeros"),  # zero padding instead of replicate
    ],
    ids=["inverted-comparison", "inverted-bits", "column-major", "reversed", "zero-padding"],
)
def test_census_wrong_bits(mistake):
    verdict = check_census(mistake)
    assert verdict.startswith("wrong: ") and "of the bits differ" in verdict


def test_census_less_or_equal_is_wrong():
    # replicated borders compare a pixel with itself: `<=` then sets bits that `<` does not
    verdict = check_census(lambda g, r: ~_census(g, r, less=False))
    assert verdict.startswith("wrong: ") and "bits differ" in verdict


def test_census_wrong_shape_and_type():
    with_centre = check_census(lambda g, r: torch.zeros(9, *g.shape, dtype=torch.bool))
    assert (
        with_centre == "wrong: shape (9, 9, 11), expected (8, 9, 11) ((2r+1)^2 - 1 bits per pixel)."
    )
    channels_last = check_census(lambda g, r: _census(g, r).permute(1, 2, 0))
    assert channels_last.startswith("wrong: shape (9, 11, 8)")
    assert (
        check_census(lambda g, r: _census(g, r).tolist()) == "wrong: expected a tensor, got list."
    )


def test_census_not_attempted_and_crash():
    assert check_census(_not_attempted).startswith("not attempted yet")
    verdict = check_census(_crashes)
    assert verdict == "wrong: your function raised IndexError: list index out of range"


# ------------------------------------------------------------------------------------------------
# PCK
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        pck_ok,
        pck_squared,
        lambda p, g, t: ((p - g).norm(dim=-1) <= t).float().mean(),  # a 0-dim tensor is fine
        lambda p, g, t: sum(math.dist(a, b) <= t for a, b in zip(p.tolist(), g.tolist())) / len(p),
        lambda p, g, t: ((p.double() - g.double()).norm(dim=-1) <= t).double().mean().item(),
    ],
    ids=["norm", "squared", "tensor", "python-loop", "float64"],
)
def test_pck_pass(fn):
    assert check_pck(fn).startswith("pass")


@pytest.mark.parametrize(
    ("mistake", "expected"),
    [
        (
            lambda p, g, t: ((p - g).norm(dim=-1) < t).float().mean().item(),
            "threshold 5.0 gave 0.250",
        ),
        (lambda p, g, t: (p - g).norm(dim=-1).mean().item(), "threshold 5.0 gave 5.479"),
        (lambda p, g, t: float((p - g).norm(dim=-1).mean() <= t), "threshold 5.0 gave 0.000"),
        (
            lambda p, g, t: ((p - g).abs().sum(-1) <= t).float().mean().item(),
            "threshold 5.0 gave 0.250",
        ),
        (lambda p, g, t: ((p - g).norm(dim=-1) <= t).sum().item(), "threshold 5.0 gave 2.000"),
    ],
    ids=["strict-less", "mean-distance", "mean-then-threshold", "l1-distance", "count"],
)
def test_pck_wrong(mistake, expected):
    verdict = check_pck(mistake)
    assert verdict.startswith("wrong: ") and expected in verdict
    assert verdict.endswith("(distance <= threshold counts as correct).")


def test_pck_not_a_number_and_nan():
    assert check_pck(lambda p, g, t: "half") == "wrong: expected a single number, got str."
    assert check_pck(lambda p, g, t: None) == "wrong: expected a single number, got NoneType."
    per_point = check_pck(lambda p, g, t: (p - g).norm(dim=-1) <= t)  # forgot the mean
    assert per_point == "wrong: expected a single number, got Tensor."
    assert check_pck(lambda p, g, t: float("nan")).startswith("wrong: threshold 5.0 gave nan")


def test_pck_not_attempted_and_crash():
    assert check_pck(_not_attempted) == (
        "not attempted yet: replace the `raise NotImplementedError` with your code."
    )
    assert check_pck(_crashes).startswith("wrong: your function raised IndexError")


# ------------------------------------------------------------------------------------------------
# ZNCC
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [zncc_ok, zncc_std, lambda a, b: torch.corrcoef(torch.stack((a, b)))[0, 1]],
    ids=["centred-cosine", "standardised", "corrcoef"],
)
def test_zncc_pass(fn):
    assert check_zncc(fn).startswith("pass")


@pytest.mark.parametrize(
    "mistake",
    [
        lambda a, b: float(a @ b / (a.norm() * b.norm())),  # forgot the mean subtraction
        lambda a, b: float((a - a.mean()) @ (b - b.mean())),  # forgot the normalisation
        lambda a, b: float((a - a.mean()) @ (b - b.mean()) / (a.norm() * b.norm())),  # raw norms
        lambda a, b: -zncc_ok(a, b),  # sign flipped
    ],
    ids=["no-mean", "no-norm", "uncentred-norms", "negated"],
)
def test_zncc_wrong(mistake):
    verdict = check_zncc(mistake)
    assert (
        verdict.startswith("wrong: got ") and "subtract the means, divide by both norms" in verdict
    )


def test_zncc_not_a_number_and_nan():
    assert check_zncc(lambda a, b: None) == "wrong: expected a single number, got NoneType."
    assert check_zncc(lambda a, b: a * b) == "wrong: expected a single number, got Tensor."
    assert check_zncc(lambda a, b: float("nan")) == (
        "wrong: got nan, expected 1.0000 (subtract the means, divide by both norms)."
    )


def test_zncc_not_attempted_and_crash():
    assert check_zncc(_not_attempted).startswith("not attempted yet")
    assert check_zncc(_crashes).startswith("wrong: your function raised IndexError")


# ------------------------------------------------------------------------------------------------
# checkers never raise
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("check", [check_census, check_pck, check_zncc])
@pytest.mark.parametrize(
    "fn",
    [
        lambda *a: None,
        lambda *a: "x",
        lambda *a: [1, 2],
        lambda *a: torch.zeros(3),
        lambda *a: torch.tensor(float("nan")),
        lambda *a: 1 / 0,
        lambda *a: (_ for _ in ()).throw(RuntimeError("boom")),
        lambda: 0,  # wrong signature: TypeError when called
    ],
    ids=["none", "str", "list", "vector", "nan", "zero-division", "runtime-error", "signature"],
)
def test_checkers_never_raise(check, fn):
    verdict = check(fn)
    assert isinstance(verdict, str) and verdict.startswith("wrong: ")
    assert "\n" not in verdict  # a one-line verdict


def test_student_inputs_are_copies():
    # a student who modifies the inputs in place must not corrupt the next case
    def pck_inplace(pred, gt, threshold):
        pred -= gt
        return (pred.norm(dim=-1) <= threshold).float().mean().item()

    def census_inplace(gray, r):
        out = _census(gray, r)
        gray.zero_()
        return out

    assert check_pck(pck_inplace).startswith("pass")
    assert check_census(census_inplace).startswith("pass")


# ------------------------------------------------------------------------------------------------
# chapter 01 checkers
# ------------------------------------------------------------------------------------------------


def test_check_fpr95_verdicts():
    from corrlib.metrics import fpr_at_recall
    from corrlib.recipes.patch import check_fpr95

    assert check_fpr95(lambda s, lab: fpr_at_recall(s, lab, 0.95)).startswith("pass")
    assert check_fpr95(lambda s, lab: fpr_at_recall(s, lab, 0.90)).startswith("wrong")
    assert check_fpr95(lambda s, lab: fpr_at_recall(-s, lab, 0.95)).startswith(
        "wrong"
    )  # inverted scores
    assert check_fpr95(lambda s, lab: None).startswith("wrong")

    def todo(s, lab):
        raise NotImplementedError

    assert check_fpr95(todo).startswith("not attempted yet")


def test_check_hardest_negative_hinge_verdicts():
    from corrlib.recipes.patch import check_hardest_negative_hinge as check

    assert check(lambda p, n, m: torch.clamp(m + n.amax(1) - p, min=0).mean()).startswith("pass")
    assert "averages the negatives" in check(
        lambda p, n, m: torch.clamp(m + n.mean(1) - p, min=0).mean()
    )
    assert check(lambda p, n, m: torch.clamp(m + n.amin(1) - p, min=0).mean()).startswith(
        "wrong"
    )  # easiest
    assert check(lambda p, n, m: torch.clamp(m + n.amax(1) - p, min=0).sum()).startswith(
        "wrong"
    )  # sum
    assert "scalar tensor" in check(
        lambda p, n, m: float(torch.clamp(m + n.amax(1) - p, min=0).mean().detach())
    )
    assert "raised" in check(lambda p, n, m: 1 / 0)
    # MC-CNN's one-negative hinge from corrlib is not the answer
    from corrlib.losses import margin_ranking_hinge

    assert check(lambda p, n, m: margin_ranking_hinge(p, n[:, 0], m)).startswith("wrong")


def test_check_projective_grid_verdicts():
    from corrlib.geometry import affine_grid, homography_grid
    from corrlib.recipes.stn import check_projective_grid as check

    assert check(lambda h, s: homography_grid(h, s)).startswith("pass")
    assert "(x, y)" in check(lambda h, s: homography_grid(h, s).flip(-1))
    assert "without the division" in check(lambda h, s: affine_grid(h[:, :2], s))
    assert check(lambda h, s: homography_grid(h, s)[:, :-1]).startswith(
        "wrong: expected a tensor of shape"
    )
    assert check(lambda h, s: (_ for _ in ()).throw(NotImplementedError())).startswith(
        "not attempted"
    )


def test_check_double_margin_loss_verdicts():
    from corrlib.recipes.ucn import check_double_margin_loss as check

    def right(d, s, m_pos, m_neg):
        return (
            s * torch.clamp(d - m_pos, min=0) ** 2 + (~s) * torch.clamp(m_neg - d, min=0) ** 2
        ).sum() / (2 * len(d))

    assert check(right).startswith("pass")
    assert "the cell above" in check(
        lambda d, s, mp, mn: (
            (s * d**2 + (~s) * torch.clamp(mn - d, min=0) ** 2).sum() / (2 * len(d))
        )
    )
    assert check(lambda d, s, mp, mn: 2 * right(d, s, mp, mn)).startswith(
        "wrong"
    )  # mean instead of 1/(2N)
    assert check(lambda d, s, mp, mn: None).startswith("wrong")


def test_check_box_soft_argmax_verdicts():
    from corrlib.matching import kernel_soft_argmax
    from corrlib.recipes.sfnet import check_box_soft_argmax as check

    def right(scores, radius, beta):
        h, w = scores.shape
        py, px = divmod(int(scores.argmax()), w)
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32),
            torch.arange(w, dtype=torch.float32),
            indexing="ij",
        )
        box = ((xs - px).abs() <= radius) & ((ys - py).abs() <= radius)
        p = F.softmax((box * scores).flatten() / beta, 0).reshape(h, w)
        return torch.stack(((p * xs).sum(), (p * ys).sum()))

    assert check(right).startswith("pass")
    assert check(lambda s, r, b: right(s, r, b).flip(0)).startswith(
        "wrong: your (x, y) are swapped"
    )
    # corrlib's Gaussian kernel soft argmax is not the answer
    assert check(lambda s, r, b: kernel_soft_argmax(s[None, None], float(r), b)[0, 0]).startswith(
        "wrong"
    )
    assert check(lambda s, r, b: (_ for _ in ()).throw(NotImplementedError())).startswith(
        "not attempted"
    )
    assert check(lambda s, r, b: "x").startswith("wrong")


def test_check_central_smoothness_verdicts():
    from corrlib.losses import flow_smoothness_loss
    from corrlib.recipes.sfnet import check_central_smoothness as check

    def central(flow, mask):
        p = F.pad(flow, (1, 1, 1, 1))
        dx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2
        dy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2
        per = (dx.abs() + dy.abs()).sum(1, keepdim=True)
        return ((mask * per).sum((1, 2, 3)) / (mask.sum((1, 2, 3)) + 1)).mean()

    assert check(central).startswith("pass")
    assert check(flow_smoothness_loss).startswith(
        "wrong"
    )  # corrlib's forward differences are not the answer
    assert check(lambda f, m: (_ for _ in ()).throw(NotImplementedError())).startswith(
        "not attempted"
    )


def test_shared_helpers():
    assert run_student(lambda x: x + 1, 1) == (2, None)
    assert run_student(lambda: 1 / 0)[1].startswith("wrong: your function raised ZeroDivisionError")
    assert as_number(torch.tensor(2.5)) == (2.5, None)
    assert as_number("x")[1] == "wrong: expected a single number, got str."
