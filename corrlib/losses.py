"""Losses for learning to compare patches: ranking, label and contrastive hinges, hard mining.

Convention: a batch of ``B`` patch pairs gives one score per pair, shape ``(B,)``. Labels are
``(B,)`` and say whether a pair matches: ``bool`` (``True`` = match), integers or floats in
``{0, 1}`` (``1`` = match) or in ``{-1, +1}`` (``+1`` = match); they are converted to
``y in {-1, +1}`` internally (:func:`as_signed_labels`). An empty batch gives a zero loss that
is still attached to the graph, never ``nan``.

* :func:`margin_ranking_hinge`: MC-CNN fast (Zbontar & LeCun, JMLR 2016), similarities.
* :func:`label_hinge`: DeepCompare (Zagoruyko & Komodakis, CVPR 2015), decision values.
* :func:`contrastive_hinge`: DeepDesc (Simo-Serra et al., ICCV 2015), L2 distances.
* :func:`hard_mining`: DeepDesc's mining of the hardest positives and negatives.

Dense-flow losses (SFNet, Lee et al., CVPR 2019), on flows ``(B, 2, h, w)`` in cells of the
feature grid they live on (a cell is one pixel of the ``(h, w)`` grid, (x, y) order) and soft
masks ``(B, 1, h, w)`` in ``[0, 1]``:

* :func:`mask_consistency_loss`: a warped foreground mask must equal the other mask.
* :func:`flow_consistency_loss`: forward then backward flow returns to the start (foreground).
* :func:`flow_smoothness_loss`: first-order total variation of the flow (foreground).
"""

from __future__ import annotations

import math

import torch

from corrlib._check import check_choice, check_shape
from corrlib.geometry import flow_to_grid

__all__ = [
    "as_signed_labels",
    "contrastive_hinge",
    "flow_consistency_loss",
    "flow_smoothness_loss",
    "hard_mining",
    "label_hinge",
    "margin_ranking_hinge",
    "mask_consistency_loss",
    "warp_by_flow",
]

REDUCTIONS = ("mean", "none")


def _check_scores(x: torch.Tensor, name: str, b: int | str = "B") -> int:
    """``x`` must be a floating ``(B,)`` tensor; returns ``B``."""
    n = check_shape(x, (b,), name).get("B", b)
    if not x.is_floating_point():
        raise ValueError(f"Argument {name} must be a floating-point tensor, got dtype {x.dtype}.")
    return int(n)


def _zero(x: torch.Tensor) -> torch.Tensor:
    """A scalar 0 attached to the graph of ``x`` (the loss of an empty batch)."""
    return x.sum() * 0.0


def as_signed_labels(
    label: torch.Tensor, name: str = "label", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Match labels ``(B,)`` as ``y in {-1, +1}`` (``+1`` = the pair matches).

    Accepts ``bool`` (``True`` = match), values in ``{0, 1}`` (``1`` = match) or in ``{-1, +1}``;
    a mix of ``0`` and ``-1``, or any other value, raises ``ValueError``. A tensor of ones only
    is read as all matches in both conventions.

    Example:
        >>> as_signed_labels(torch.tensor([1, 0, 1]))
        tensor([ 1., -1.,  1.])
        >>> as_signed_labels(torch.tensor([True, False]))
        tensor([ 1., -1.])
        >>> as_signed_labels(torch.tensor([-1, 1]))
        tensor([-1.,  1.])
    """
    check_shape(label, ("B",), name)
    if label.dtype == torch.bool:
        return label.to(dtype) * 2 - 1
    values = set(torch.unique(label).tolist())
    if values <= {0, 1}:
        return label.to(dtype) * 2 - 1
    if values <= {-1, 1}:
        return label.to(dtype)
    raise ValueError(
        f"Argument {name} must hold match labels: bool, values in {{0, 1}} or in {{-1, 1}}; "
        f"got values {sorted(values)}."
    )


def margin_ranking_hinge(
    s_pos: torch.Tensor, s_neg: torch.Tensor, margin: float = 0.2
) -> torch.Tensor:
    """Hinge loss of MC-CNN fast: ``mean(max(0, margin + s_neg - s_pos))``.

    ``s_pos (B,)`` are the similarities of matching pairs and ``s_neg (B,)`` of non-matching
    pairs that share the reference patch (pair ``i`` of each is built from the same patch); the
    loss is zero once every positive beats its negative by ``margin``. Returns a scalar.
    Zbontar & LeCun, *Stereo matching by training a convolutional neural network to compare
    image patches*, JMLR 2016 (margin m = 0.2).

    Example:
        >>> margin_ranking_hinge(torch.tensor([0.9, 0.5]), torch.tensor([0.1, 0.6]))
        tensor(0.1500)
    """
    b = _check_scores(s_pos, "s_pos")
    _check_scores(s_neg, "s_neg", b)
    if b == 0:
        return _zero(s_pos) + _zero(s_neg)
    return (margin + s_neg - s_pos).clamp_min(0).mean()


def label_hinge(output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Hinge loss of DeepCompare: ``mean(max(0, 1 - y * output))``.

    ``output (B,)`` are decision values (higher = more alike), ``label (B,)`` match labels in
    any form :func:`as_signed_labels` accepts (``bool``, ``{0, 1}`` or ``{-1, +1}``), converted to
    ``y in {-1, +1}``. Returns a scalar. (The paper adds an L2 weight decay, left to the
    optimiser.) Zagoruyko & Komodakis, *Learning to compare image patches via convolutional
    neural networks*, CVPR 2015.

    Example:
        >>> label_hinge(torch.tensor([2.0, 0.5, -0.5]), torch.tensor([1, 1, 0]))
        tensor(0.3333)
    """
    b = _check_scores(output, "output")
    check_shape(label, (b,), "label")
    if b == 0:
        return _zero(output)
    y = as_signed_labels(label, "label", output.dtype)
    return (1 - y * output).clamp_min(0).mean()


def contrastive_hinge(
    dist: torch.Tensor, label: torch.Tensor, margin: float = 4.0, reduction: str = "mean"
) -> torch.Tensor:
    """DeepDesc's loss on descriptor distances: ``d`` for matches, ``max(0, margin - d)`` otherwise.

    ``dist (B,)`` are L2 distances ``d = ||D(x1) - D(x2)||_2`` (not squared: this is exactly
    the paper's form, linear in ``d`` for positives, a hinge for negatives); ``label (B,)`` match
    labels (see :func:`as_signed_labels`). ``reduction="none"`` returns the per-pair loss
    ``(B,)`` (the input of :func:`hard_mining`), ``"mean"`` its mean (a scalar).
    Simo-Serra et al., *Discriminative learning of deep convolutional feature point
    descriptors*, ICCV 2015 (margin C = 4).

    Example:
        >>> dist, same = torch.tensor([1.0, 1.0, 5.0]), torch.tensor([1, 0, 0])
        >>> contrastive_hinge(dist, same, reduction="none")
        tensor([1., 3., 0.])
    """
    b = _check_scores(dist, "dist")
    check_shape(label, (b,), "label")
    check_choice(reduction, "reduction", REDUCTIONS)
    y = as_signed_labels(label, "label", dist.dtype) if b else dist.new_zeros(0)
    per_pair = torch.where(y > 0, dist, (margin - dist).clamp_min(0))
    if reduction == "none":
        return per_pair
    return per_pair.mean() if b else _zero(dist)


def hard_mining(
    per_pair_loss: torch.Tensor, label: torch.Tensor, ratio_pos: float = 1.0, ratio_neg: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the hardest positives and negatives separately; mean loss over the kept pairs.

    DeepDesc's mining: of the ``s_p`` positive pairs of a batch, forward all and back-propagate
    only the ``ceil(s_p / ratio_pos)`` with the highest loss; likewise the negatives with
    ``ratio_neg``. A ratio of 1 keeps every pair (no mining). ``per_pair_loss (B,)`` is any
    per-pair loss (e.g. ``contrastive_hinge(..., reduction="none")``), ``label (B,)`` match
    labels (see :func:`as_signed_labels`). Ties are broken by ``torch.topk``.

    Returns ``(loss, kept)``: the mean of ``per_pair_loss`` over the kept pairs (a scalar; only
    they receive gradient) and the boolean mask ``kept (B,)``. A class with no pair keeps
    nothing; an empty batch keeps nothing and gives a zero loss attached to the graph.
    Simo-Serra et al., *Discriminative learning of deep convolutional feature point
    descriptors*, ICCV 2015 (mining ratios r_p, r_n).

    Example:
        >>> loss, kept = hard_mining(torch.tensor([0.1, 0.9, 0.5, 0.2]), torch.tensor([1, 1, 0, 0]),
        ...                          ratio_pos=2, ratio_neg=2)
        >>> loss, kept
        (tensor(0.7000), tensor([False,  True,  True, False]))
    """
    b = _check_scores(per_pair_loss, "per_pair_loss")
    check_shape(label, (b,), "label")
    for name, ratio in (("ratio_pos", ratio_pos), ("ratio_neg", ratio_neg)):
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 1:
            raise ValueError(
                f"Argument {name} must be a number >= 1 (1 = no mining), got {ratio!r}."
            )
    kept = torch.zeros(b, dtype=torch.bool, device=per_pair_loss.device)
    if b == 0:
        return _zero(per_pair_loss), kept
    positive = as_signed_labels(label, "label") > 0  # (B,)
    for mask, ratio in ((positive, ratio_pos), (~positive, ratio_neg)):
        index = mask.nonzero().squeeze(1)  # (n,) pairs of this class
        n_keep = math.ceil(index.numel() / ratio)
        if n_keep:
            hardest = per_pair_loss.detach()[index].topk(n_keep).indices
            kept[index[hardest]] = True
    return per_pair_loss[kept].mean(), kept


# ----------------------------------------------------------------------- dense-flow losses (SFNet)


def warp_by_flow(field: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``out(p) = field(p + flow(p))``, bilinear, zero outside: ``(B, C, h', w')``,
    ``(B, 2, h, w)`` -> ``(B, C, h, w)``.

    ``flow`` is in cells of the ``field``'s grid (x then y). Unlike
    :func:`corrlib.geometry.warp_with_flow` (border replication), a point that leaves the grid
    reads 0: a mask warped out of the frame is background, as SFNet needs. Differentiable in
    both arguments.
    """
    b = check_shape(field, ("B", "C", "H", "W"), "field")["B"]
    check_shape(flow, (b, 2, "h", "w"), "flow")
    grid = flow_to_grid(flow, tuple(field.shape[-2:])).to(field.dtype)
    return torch.nn.functional.grid_sample(
        field, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


def _check_flow_mask(flow: torch.Tensor, mask: torch.Tensor, fname: str, mname: str) -> None:
    d = check_shape(flow, ("B", 2, "h", "w"), fname)
    check_shape(mask, (d["B"], 1, d["h"], d["w"]), mname)


def mask_consistency_loss(
    flow_st: torch.Tensor, flow_ts: torch.Tensor, mask_s: torch.Tensor, mask_t: torch.Tensor
) -> torch.Tensor:
    """SFNet's mask consistency (Lee et al., CVPR 2019): warped masks must equal the other mask.

    ``L_mask = sum over both directions of mean_p (M_s(p) - M_t(p + F_st(p)))^2``, averaged over
    the batch. ``flow_st (B, 2, hs, ws)`` lives on the source grid and points into the target
    (cells), ``flow_ts (B, 2, ht, wt)`` the reverse; ``mask_s (B, 1, hs, ws)``, ``mask_t (B, 1,
    ht, wt)`` in ``[0, 1]`` (1 = foreground). Masks are targets (not differentiated).
    """
    _check_flow_mask(flow_st, mask_s, "flow_st", "mask_s")
    _check_flow_mask(flow_ts, mask_t, "flow_ts", "mask_t")
    mask_s, mask_t = mask_s.detach().to(flow_st.dtype), mask_t.detach().to(flow_st.dtype)
    est_s = warp_by_flow(mask_t, flow_st)  # the target mask seen from the source
    est_t = warp_by_flow(mask_s, flow_ts)
    return ((est_s - mask_s) ** 2).mean(dim=(1, 2, 3)).mean() + ((est_t - mask_t) ** 2).mean(
        dim=(1, 2, 3)
    ).mean()


def _fg_mean(per_pixel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_p M(p) x(p) / (sum_p M(p) + 1)`` per pair, then the batch mean (SFNet's
    normalisation)."""
    return ((mask * per_pixel).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) + 1.0)).mean()


def flow_consistency_loss(
    flow_st: torch.Tensor,
    flow_ts: torch.Tensor,
    mask_s: torch.Tensor,
    mask_t: torch.Tensor,
    scale: tuple[float, float] = (1.0, 1.0),
) -> torch.Tensor:
    """SFNet's flow consistency: going there and back must return to the start, on the foreground.

    ``L_flow = sum over both directions of sum_p M_s(p) |s * (F_st(p) + F_ts(p + F_st(p)))|^2 /
    (sum_p M_s(p) + 1)``, averaged over the batch. Shapes as :func:`mask_consistency_loss`; both
    flows are in CELLS (the lookup ``p + F_st(p)`` needs them), and the cycle residual is
    multiplied by ``scale = (s_x, s_y)`` per axis before squaring: SFNet measures it in
    normalised ``[-1, 1]`` units (``scale = (2 / w, 2 / h)``), which its loss weights assume.
    """
    _check_flow_mask(flow_st, mask_s, "flow_st", "mask_s")
    _check_flow_mask(flow_ts, mask_t, "flow_ts", "mask_t")
    mask_s, mask_t = mask_s.detach().to(flow_st.dtype), mask_t.detach().to(flow_st.dtype)
    s = flow_st.new_tensor(scale).view(1, 2, 1, 1)
    cyc_s = (flow_st + warp_by_flow(flow_ts, flow_st)) * s
    cyc_t = (flow_ts + warp_by_flow(flow_st, flow_ts)) * s
    return _fg_mean((cyc_s**2).sum(1, keepdim=True), mask_s) + _fg_mean(
        (cyc_t**2).sum(1, keepdim=True), mask_t
    )


def flow_smoothness_loss(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Foreground total variation of a flow:
    ``sum_p M(p) (|dF/dx| + |dF/dy|)(p) / (sum_p M(p) + 1)``.

    Forward differences (``F(x+1) - F(x)``, zero in the last column/row) of both components,
    L1, at every cell ``p`` whose mask is set; ``flow (B, 2, h, w)``, ``mask (B, 1, h, w)``;
    averaged over the batch. SFNet adds this term for both directions. (The authors' code uses
    central differences ``(F(x+1) - F(x-1)) / 2``, which are blind to a flow that alternates
    from one cell to the next, exactly the noise this term should remove; we use forward ones.)
    """
    _check_flow_mask(flow, mask, "flow", "mask")
    mask = mask.detach().to(flow.dtype)
    dx = torch.zeros_like(flow)
    dy = torch.zeros_like(flow)
    dx[..., :, :-1] = flow[..., :, 1:] - flow[..., :, :-1]
    dy[..., :-1, :] = flow[..., 1:, :] - flow[..., :-1, :]
    return _fg_mean((dx.abs() + dy.abs()).sum(1, keepdim=True), mask)
