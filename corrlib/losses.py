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
"""

from __future__ import annotations

import math

import torch

from corrlib._check import check_choice, check_shape

__all__ = [
    "as_signed_labels",
    "contrastive_hinge",
    "hard_mining",
    "label_hinge",
    "margin_ranking_hinge",
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


def as_signed_labels(label: torch.Tensor, name: str = "label", dtype: torch.dtype = torch.float32) -> torch.Tensor:
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


def margin_ranking_hinge(s_pos: torch.Tensor, s_neg: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
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
        >>> contrastive_hinge(torch.tensor([1.0, 1.0, 5.0]), torch.tensor([1, 0, 0]), reduction="none")
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
            raise ValueError(f"Argument {name} must be a number >= 1 (1 = no mining), got {ratio!r}.")
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

