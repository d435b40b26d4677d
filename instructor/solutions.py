"""Reference solutions of the series' checked exercises (instructors only).

One function per exercise, named as the notebook's stub (``my_<name>``) and written the way a
student would: plain torch, without corrlib. ``corrlib grade NOTEBOOK --solutions
instructor/solutions.py`` puts each one in place of its stub, runs the notebook and grades it:
the solved copy is a solution sheet, and every check must pass (``tests/test_solutions.py``
checks that on every notebook, running only the exercise cells). Leave this folder out of the
copy of the repository you hand to students.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- 00_basics


def my_census(gray, r):
    h, w = gray.shape
    padded = F.pad(gray[None, None], (r, r, r, r), mode="replicate")[0, 0]
    bits = [
        padded[dy : dy + h, dx : dx + w] < gray
        for dy in range(2 * r + 1)
        for dx in range(2 * r + 1)
        if (dy, dx) != (r, r)
    ]
    return torch.stack(bits)


def my_pck(pred, gt, threshold):
    return ((pred - gt).norm(dim=-1) <= threshold).float().mean()


def my_zncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return (a @ b) / (a.norm() * b.norm())


# ----------------------------------------------------------------------------- 01_patch


def my_fpr95(scores, labels):
    order = torch.argsort(scores, descending=True)
    s, lab = scores[order], labels[order]
    positives, negatives = int(lab.sum()), int((~lab).sum())
    tp = torch.cumsum(lab.int(), 0)
    fp = torch.cumsum((~lab).int(), 0)
    # thresholds are distinct scores: look only at the last element of each run of ties
    last = torch.ones_like(lab)
    last[:-1] = s[1:] != s[:-1]
    reached = (tp >= 0.95 * positives) & last
    first = int(reached.nonzero()[0, 0])
    return fp[first].item() / negatives


def my_hardest_negative_hinge(s_pos, s_neg, margin):
    return torch.clamp(margin + s_neg.amax(dim=1) - s_pos, min=0).mean()


# ----------------------------------------------------------------------------- 02_stn


def my_projective_grid(h, size):
    rows, cols = size
    xs = (2 * torch.arange(cols, dtype=h.dtype) + 1) / cols - 1
    ys = (2 * torch.arange(rows, dtype=h.dtype) + 1) / rows - 1
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack((x, y, torch.ones_like(x)), dim=-1)  # (H, W, 3)
    mapped = torch.einsum("bij,hwj->bhwi", h, points)
    return mapped[..., :2] / mapped[..., 2:]


# ----------------------------------------------------------------------------- 03_ucn


def my_double_margin_loss(d, s, m_pos, m_neg):
    pos = torch.clamp(d - m_pos, min=0) ** 2
    neg = torch.clamp(m_neg - d, min=0) ** 2
    return torch.where(s, pos, neg).sum() / (2 * len(d))


# ----------------------------------------------------------------------------- 04_scnet


def my_box_transfer(point, box_a, box_b):
    relative = (point - box_a[:2]) / (box_a[2:] - box_a[:2])
    return box_b[:2] + relative * (box_b[2:] - box_b[:2])


# ----------------------------------------------------------------------------- 05_rtn


def my_window_loss(scores, centre):
    return -torch.log_softmax(scores, dim=0)[centre]


# ----------------------------------------------------------------------------- 06_sfnet


def my_box_soft_argmax(scores, radius, beta):
    h, w = scores.shape
    peak = int(scores.argmax())
    py, px = peak // w, peak % w
    ys = torch.arange(h).view(-1, 1)
    xs = torch.arange(w).view(1, -1)
    window = ((ys - py).abs() <= radius) & ((xs - px).abs() <= radius)
    p = torch.softmax((window * scores).flatten() / beta, dim=0).view(h, w)
    return torch.stack(((p.sum(0) * xs[0]).sum(), (p.sum(1) * ys[:, 0]).sum()))


def my_central_smoothness(flow, mask):
    padded = F.pad(flow, (1, 1, 1, 1))  # zeros outside the grid
    dx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    dy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    per_cell = (dx.abs() + dy.abs()).sum(1, keepdim=True)  # (B, 1, h, w)
    per_pair = (per_cell * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) + 1)
    return per_pair.mean()


# ----------------------------------------------------------------------------- 07_multiscale


def my_ms_conv(x, weight, bias, logits, rates):
    alpha = torch.softmax(logits, dim=0)
    out = sum(
        alpha[i].view(1, -1, 1, 1) * F.conv2d(x, weight, None, padding=r, dilation=r)
        for i, r in enumerate(rates)
    )
    return out + bias.view(1, -1, 1, 1)


def my_mutual_nn(corr):
    forward = corr.argmax(dim=1)
    backward = corr.argmax(dim=0)
    sources = torch.arange(corr.shape[0])
    keep = backward[forward] == sources
    return sources[keep], forward[keep]


# ----------------------------------------------------------------------------- 08_full_training


def my_rank_loss_scale(count, counts):
    return count * len(counts) / sum(counts)
