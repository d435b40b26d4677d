"""Evaluation metrics: PCK under an explicit protocol, and the TSS benchmark's scores.

**PCK** (percentage of correct keypoints; Yang & Ramanan, TPAMI 2013): a transferred keypoint
is correct when its Euclidean distance to the ground truth is at most ``alpha * L``. Papers
differ in ``L`` (image, object box or keypoint box), in the image measured in, the resolution
and the averaging, so every number here is computed under a named :class:`PCKProtocol`
(:data:`PROTOCOLS` holds the presets) and :meth:`PCKEvaluator.to_markdown` prints it with
its protocol.

**TSS** (Taniai, Sinha & Sato, *Joint recovery of dense correspondence and cosegmentation in
two images*, CVPR 2016): flow accuracy and foreground IoU, re-implemented step by step from the
official evaluation kit's C++ tool (``EvalToolVC``), including its OpenCV resizing and warping,
so that :func:`evaluate_tss_results` reproduces the kit's ``scores.csv``.

Convention: pixels are 0-based ``(x, y)`` (see :mod:`corrlib.geometry`). Keypoints are
``(N, 2)`` or ``(B, N, 2)`` tensors; TSS flows are ``(H, W, 2)`` numpy arrays (as
:func:`corrlib.flo.read_flo` returns them) or ``(2, H, W)`` tensors, ``u`` then ``v``,
with unknown flow stored as ``1e10`` (anything above ``1e9`` in magnitude).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from corrlib._check import check_choice, check_shape, check_tensor
from corrlib.flo import UNKNOWN_FLOW_THRESHOLD, read_flo

__all__ = [
    "PCK_AGGREGATIONS",
    "PCK_DIRECTIONS",
    "PCK_NORMALIZERS",
    "PCK_RESOLUTIONS",
    "PROTOCOLS",
    "TSS_THRESHOLDS",
    "TSS_UNKNOWN_FLOW",
    "PCKEvaluator",
    "PCKProtocol",
    "bad_pixel_rate",
    "evaluate_tss_results",
    "fpr_at_recall",
    "get_protocol",
    "label_transfer_accuracy",
    "mask_iou",
    "miou_at_k",
    "part_weighted_iou",
    "pck",
    "pck_threshold",
    "pcr_curve",
    "pr_auc",
    "roc_curve",
    "tss_flow_accuracy",
    "tss_masks_from_flows",
    "tss_resize_flow_pair",
    "tss_scores_csv",
]

PCK_DIRECTIONS = ("src->trg", "trg->src")
PCK_NORMALIZERS = ("image", "bbox", "kps_box")
PCK_RESOLUTIONS = ("original", "resized", "square")
PCK_AGGREGATIONS = ("per_image", "per_point", "per_category")

# ---------------------------------------------------------------------------------------------
# PCK
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PCKProtocol:
    """How a PCK number is computed; every field changes the number.

    * ``direction``: ``"src->trg"`` transfers src keypoints into trg and measures there;
      ``"trg->src"`` the reverse. The normaliser is taken in the image measured in.
    * ``normalizer``: ``L`` in ``threshold = alpha * L`` -- ``"image"``: ``max(H, W)`` of that
      image; ``"bbox"``: the longer side of its object bounding box; ``"kps_box"``: the longer
      side of the bounding box of its ground-truth keypoints.
    * ``alphas``: the thresholds reported; ``headline_alpha`` the one quoted as "the" number
      (default: the first).
    * ``resolution``: ``"original"``: distances and ``L`` in original image pixels;
      ``"resized"``: in the network's resized input (e.g. 240 x 240), in which case the caller
      passes sizes, boxes and keypoints at that resolution -- nothing is rescaled here;
      ``"square"``: the caller passes original pixels and the image size ``(H, W)``, and both
      are mapped *anisotropically* to a ``square_side`` x ``square_side`` image
      (``x * S / W``, ``y * S / H``), as the published PF-PASCAL code does when it resizes both
      images to a square; distances and ``L`` are measured there. With ``normalizer="image"``
      (``L = S``) a prediction is correct when ``sqrt((dx / W)^2 + (dy / H)^2) <= alpha``,
      whatever ``S``.
    * ``square_side``: ``S`` of ``resolution="square"`` (required there, refused otherwise).
    * ``aggregation``: ``"per_image"``: mean over pairs of each pair's fraction;
      ``"per_point"``: all points pooled; ``"per_category"``: mean over categories of the
      per-category per-image mean.
    * ``legacy_padded_box`` (``kps_box`` only): reproduce evaluation code that pads keypoint
      arrays with ``-1`` to a fixed length and takes the box over the padded array, so the box
      always contains a point ``(-1, -1)``. The code that has this bug is DHPF's PF-WILLOW
      loader (Min et al., ECCV 2020, ``juhongm999/dhpf`` ``data/pfwillow.py``: ``get_points``
      pads to 40 points with ``-1``, ``get_pckthres`` takes max - min over the padded array;
      juhongm999/dhpf#3, which names CATs too) -- not weakalign, whose ``PFDataset`` takes the box
      over its 10 points without padding. DHPF pads *after* resizing to 240 x 240: with
      ``resolution="square"`` this flag does exactly that (DHPF scales the csv's 1-based
      coordinates by ``S / W``, i.e. ``(x + 1) * S / W`` for corrlib's 0-based ``x``, then adds
      ``(-1, -1)``); this is the ``pf-willow-dhpf-legacy`` preset. With ``resolution="original"``
      the point ``(-1, -1)`` is added to the coordinates passed, in original pixels: corrlib's
      older approximation of the bug, kept so that its numbers stay reproducible, which matches
      no published code (it is more lenient than DHPF's).
    * ``source``: where the protocol is defined.
    """

    name: str
    direction: str
    normalizer: str
    alphas: tuple[float, ...]
    resolution: str = "original"
    aggregation: str = "per_image"
    legacy_padded_box: bool = False
    source: str = ""
    headline_alpha: float | None = None
    square_side: int | None = None

    def __post_init__(self) -> None:
        check_choice(self.direction, "direction", PCK_DIRECTIONS)
        check_choice(self.normalizer, "normalizer", PCK_NORMALIZERS)
        check_choice(self.resolution, "resolution", PCK_RESOLUTIONS)
        check_choice(self.aggregation, "aggregation", PCK_AGGREGATIONS)
        alphas = tuple(float(a) for a in self.alphas)
        if not alphas or not all(a > 0 for a in alphas):
            raise ValueError(
                f"Argument alphas must be a non-empty tuple of positive numbers, got {self.alphas}."
            )
        object.__setattr__(self, "alphas", alphas)
        if (self.resolution == "square") != (self.square_side is not None):
            raise ValueError(
                f"Argument square_side must be given with resolution 'square' and only then, got "
                f"resolution '{self.resolution}' and square_side {self.square_side!r}."
            )
        if self.square_side is not None:
            if isinstance(self.square_side, bool) or int(self.square_side) != self.square_side:
                raise ValueError(f"Argument square_side must be an int, got {self.square_side!r}.")
            if self.square_side < 1:
                raise ValueError(f"Argument square_side must be >= 1, got {self.square_side}.")
            object.__setattr__(self, "square_side", int(self.square_side))
        if self.legacy_padded_box and self.normalizer != "kps_box":
            raise ValueError(
                f"Argument legacy_padded_box applies to normalizer 'kps_box' only, got normalizer "
                f"'{self.normalizer}'."
            )
        if self.headline_alpha is not None and float(self.headline_alpha) not in alphas:
            raise ValueError(
                f"Argument headline_alpha must be one of alphas {alphas}, got "
                f"{self.headline_alpha}."
            )

    @property
    def headline(self) -> float:
        """The alpha quoted as the protocol's main number."""
        return self.alphas[0] if self.headline_alpha is None else float(self.headline_alpha)

    def describe(self) -> str:
        """One line: what ``L`` is, direction, resolution and aggregation."""
        what = {
            "image": "max(H, W) of the image",
            "bbox": "the longer side of the object bounding box",
            "kps_box": "the longer side of the ground-truth keypoints' bounding box",
        }[self.normalizer]
        if self.legacy_padded_box:
            what += " (legacy: box padded to include (-1, -1))"
        measured = "trg" if self.direction == "src->trg" else "src"
        if self.resolution == "square":
            side = self.square_side
            where = f"{measured} image resized to {side} x {side} (anisotropic)"
            res = f"measured at {side} x {side}"
            if self.normalizer == "image":
                res += ", i.e. sqrt((dx/W)^2 + (dy/H)^2) <= alpha in original pixels"
        else:
            where, res = f"{measured} image", f"{self.resolution} resolution"
        return (
            f"threshold alpha * L, L = {what} in the {where} ({self.direction}, {res}, "
            f"distance <= threshold), aggregated {self.aggregation}"
        )


PROTOCOLS: dict[str, PCKProtocol] = {
    "pf-willow": PCKProtocol(
        name="pf-willow",
        direction="src->trg",
        normalizer="kps_box",
        alphas=(0.05, 0.1, 0.15),
        resolution="original",
        aggregation="per_image",
        source="Ham et al., Proposal Flow, CVPR 2016 / TPAMI 2018: PF-WILLOW, PCK with "
        "L = max side of the keypoints' bounding box",
        headline_alpha=0.1,
    ),
    "pf-willow-dhpf-legacy": PCKProtocol(
        name="pf-willow-dhpf-legacy",
        direction="src->trg",
        normalizer="kps_box",
        alphas=(0.05, 0.1, 0.15),
        resolution="square",
        square_side=240,
        aggregation="per_image",
        legacy_padded_box=True,
        source="Min et al., DHPF, ECCV 2020, juhongm999/dhpf data/dataset.py and "
        "data/pfwillow.py: images and keypoints resized to 240 x 240, keypoints padded to 40 "
        "with -1 before the box is taken (juhongm999/dhpf#3; CATs has the same bug). NOT the "
        "PF-WILLOW protocol (see pf-willow): kept to reproduce numbers computed with that code",
        headline_alpha=0.1,
    ),
    "pf-pascal": PCKProtocol(
        name="pf-pascal",
        direction="src->trg",
        normalizer="image",
        alphas=(0.05, 0.1, 0.15),
        resolution="square",
        square_side=240,
        aggregation="per_image",
        source="alpha_img of Han et al., SCNet, ICCV 2017 (eval code: both images resized to "
        "224 x 224, L = 224), as in NC-Net lib/pf_dataset.py pck_procedure 'scnet' (224), DHPF "
        "data/dataset.py (240, src->trg, the direction used here) and SFNet custom_dataset.py "
        "(288): sqrt((dx/W)^2 + (dy/H)^2) <= alpha, the same for any square side",
        headline_alpha=0.1,
    ),
    "pf-pascal-ncnet": PCKProtocol(
        name="pf-pascal-ncnet",
        direction="trg->src",
        normalizer="image",
        alphas=(0.05, 0.1, 0.15),
        resolution="square",
        square_side=224,
        aggregation="per_image",
        source="Rocco et al., NC-Net, NeurIPS 2018, ignacio-rocco/ncnet lib/pf_dataset.py and "
        "lib/eval_util.py, pck_procedure 'scnet' (also weakalign): target keypoints "
        "transferred into the source, both resized to 224 x 224, L = 224",
        headline_alpha=0.1,
    ),
    "pf-pascal-sfnet": PCKProtocol(
        name="pf-pascal-sfnet",
        direction="trg->src",
        normalizer="image",
        alphas=(0.05, 0.1, 0.15),
        resolution="square",
        square_side=288,
        aggregation="per_image",
        source="Lee et al., SFNet, CVPR 2019, cvlab-yonsei/SFNet custom_dataset.py and "
        "eval_pascal.py (eval_type 'image_size'): target keypoints transferred into the "
        "source, keypoints rescaled to 288 x 288, L = 288 (same number as pf-pascal-ncnet)",
        headline_alpha=0.1,
    ),
    "pf-pascal-maxside": PCKProtocol(
        name="pf-pascal-maxside",
        direction="src->trg",
        normalizer="image",
        alphas=(0.05, 0.1, 0.15),
        resolution="original",
        aggregation="per_image",
        source="NOT a published protocol: corrlib's former pf-pascal preset (original "
        "resolution, L = max(H, W)), more lenient than pf-pascal along the shorter side; kept "
        "only to compare with numbers computed under it",
        headline_alpha=0.1,
    ),
    "spair-71k": PCKProtocol(
        name="spair-71k",
        direction="src->trg",
        normalizer="bbox",
        alphas=(0.05, 0.1, 0.15),
        resolution="original",
        aggregation="per_category",
        source="Min et al., SPair-71k, arXiv:1908.10543 (2019): PCK with L = max side of the "
        "object bounding box, per-image mean averaged over categories",
        headline_alpha=0.1,
    ),
    "tss": PCKProtocol(
        name="tss",
        direction="src->trg",
        normalizer="image",
        alphas=(0.05,),
        resolution="original",
        aggregation="per_image",
        source="Taniai et al., CVPR 2016, TSS evaluation kit: dense flow accuracy over the "
        "ground-truth foreground at 5 px on the 100-px scale (see tss_flow_accuracy)",
        headline_alpha=0.05,
    ),
}


def get_protocol(name: str) -> PCKProtocol:
    """The preset :class:`PCKProtocol` called ``name`` (a key of :data:`PROTOCOLS`).

    >>> get_protocol("spair-71k").normalizer
    'bbox'
    """
    check_choice(name, "protocol", PROTOCOLS)
    return PROTOCOLS[name]


def _as_float64(x: object, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().double().cpu()
    try:
        return torch.from_numpy(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise ValueError(f"Argument {name} must be numeric, got {x!r}.") from err


def _image_size(image_size: object) -> tuple[int, int]:
    size = tuple(int(v) for v in image_size)
    if len(size) != 2:
        raise ValueError(f"Argument image_size must be (H, W), got {image_size!r}.")
    return size


def _square_scale(protocol: PCKProtocol, image_size: object) -> tuple[float, float] | None:
    """``(S / W, S / H)`` of a ``"square"`` protocol (None for the other resolutions)."""
    if protocol.resolution != "square":
        return None
    if image_size is None:
        where = "trg" if protocol.direction == "src->trg" else "src"
        raise ValueError(
            f"PCK protocol '{protocol.name}' resizes to {protocol.square_side} x "
            f"{protocol.square_side}; pass image_size=(H, W) of the {where} image."
        )
    h, w = _image_size(image_size)
    return protocol.square_side / w, protocol.square_side / h


def _reference_length(
    protocol: PCKProtocol,
    *,
    image_size: Sequence[int] | None = None,
    bbox: object = None,
    kps: object = None,
) -> float:
    """``L`` of ``protocol`` in pixels of the frame it measures in (see :func:`pck_threshold`)."""
    where = "trg" if protocol.direction == "src->trg" else "src"
    need = {
        "image": f"image_size=(H, W) of the {where} image",
        "bbox": f"bbox=(x0, y0, x1, y1), the object bounding box in the {where} image",
        "kps_box": f"kps=(N, 2), the ground-truth keypoints in the {where} image",
    }[protocol.normalizer]
    given = {"image": image_size, "bbox": bbox, "kps_box": kps}[protocol.normalizer]
    if given is None:
        raise ValueError(
            f"PCK protocol '{protocol.name}' normalises by {protocol.normalizer!r}; pass {need}."
        )
    scale = _square_scale(protocol, image_size)
    if protocol.normalizer == "image":
        size = _image_size(given)
        return float(protocol.square_side) if scale is not None else float(max(size))
    if protocol.normalizer == "bbox":
        box = _as_float64(given, "bbox").flatten()
        if box.numel() != 4:
            raise ValueError(f"Argument bbox must hold 4 numbers (x0, y0, x1, y1), got {given!r}.")
        if scale is not None:
            box = box * box.new_tensor(scale * 2)
        return float(torch.maximum(box[2] - box[0], box[3] - box[1]))
    pts = _as_float64(given, "kps")
    if pts.dim() != 2 or pts.shape[1] != 2:
        raise ValueError(f"Argument kps must have shape (N, 2), got shape {tuple(pts.shape)}.")
    if scale is not None:
        # DHPF scales the csv's 1-based coordinates (x + 1 for corrlib's 0-based x); the shift
        # matters only to the padded point below, every other length is shift-invariant
        pts = (pts + 1.0) * pts.new_tensor(scale)
    if protocol.legacy_padded_box:
        pts = torch.cat((pts, pts.new_tensor([[-1.0, -1.0]])))
    if pts.shape[0] == 0:
        return math.nan
    return float((pts.amax(0) - pts.amin(0)).max())


def pck_threshold(
    protocol: PCKProtocol,
    *,
    alpha: float | None = None,
    image_size: Sequence[int] | None = None,
    bbox: object = None,
    kps: object = None,
) -> float | tuple[float, float]:
    """The PCK distance threshold ``alpha * L`` in pixels under ``protocol``.

    Pass what the protocol's normaliser needs, for the image measured in: ``image_size``
    ``(H, W)`` (``"image"``), ``bbox`` ``(x0, y0, x1, y1)`` (``"bbox"``) or the ground-truth
    ``kps`` ``(N, 2)`` (``"kps_box"``); a missing one raises ``ValueError`` saying which.
    ``alpha`` defaults to ``protocol.headline``. Empty ``kps`` give NaN.

    A ``resolution="square"`` protocol (e.g. ``pf-pascal``) measures in the image resized
    anisotropically to ``S x S``, so its threshold is not one length in original pixels: it
    needs ``image_size`` in every case and returns the pair ``(t_x, t_y) = (alpha * L * W / S,
    alpha * L * H / S)``, the semi-axes of the ellipse of correct predictions in original pixels
    (correct when ``(dx / t_x)^2 + (dy / t_y)^2 <= 1``). For ``pf-pascal`` (``L = S``) that is
    ``(alpha * W, alpha * H)``. Every other protocol returns one number.

    >>> pck_threshold(get_protocol("pf-pascal-maxside"), alpha=0.1, image_size=(300, 500))
    50.0
    >>> pck_threshold(get_protocol("pf-pascal"), alpha=0.1, image_size=(300, 500))
    (50.0, 30.0)
    """
    alpha = protocol.headline if alpha is None else float(alpha)
    length = _reference_length(protocol, image_size=image_size, bbox=bbox, kps=kps)
    scale = _square_scale(protocol, image_size)
    if scale is None:
        return alpha * length
    return alpha * length / scale[0], alpha * length / scale[1]


def pck(
    pred: torch.Tensor,
    gt: torch.Tensor,
    threshold: float | torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fraction of keypoints whose Euclidean distance to the ground truth is ``<= threshold``.

    Args:
        pred, gt: ``(N, 2)`` or ``(B, N, 2)`` keypoints in pixels of the same image.
        threshold: a number or a ``(B,)`` tensor, in pixels (see :func:`pck_threshold`).
        valid: optional ``(N,)`` or ``(B, N)`` bool; invalid points are not counted.

    Returns:
        A scalar tensor, or ``(B,)`` for batched input. A pair with no (valid) keypoint gives
        NaN, never an exception; a NaN prediction counts as wrong.

    >>> pck(torch.zeros(2, 2), torch.tensor([[0.0, 1.0], [0.0, 3.0]]), threshold=1.0)
    tensor(0.5000)
    """
    for x, name in ((pred, "pred"), (gt, "gt")):
        check_tensor(x, name)
        if x.dim() not in (2, 3) or x.shape[-1] != 2:
            raise ValueError(
                f"Argument {name} must have shape (N, 2) or (B, N, 2), got shape {tuple(x.shape)}."
            )
    if pred.shape != gt.shape:
        raise ValueError(
            f"Arguments pred and gt must hold the same keypoints, got pred shape "
            f"{tuple(pred.shape)} and gt shape {tuple(gt.shape)}."
        )
    batched = pred.dim() == 3
    if not batched:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
    dtype = pred.dtype if pred.is_floating_point() else torch.float32
    dist = (pred.to(dtype) - gt.to(dtype)).norm(dim=-1)  # (B, N)
    b, n = dist.shape
    if valid is None:
        valid = torch.ones_like(dist, dtype=torch.bool)
    else:
        check_tensor(valid, "valid")
        expected = (b, n) if batched else (n,)
        if tuple(valid.shape) != expected:
            raise ValueError(
                f"Argument valid must have shape {expected}, got shape {tuple(valid.shape)}."
            )
        valid = valid.bool().reshape(b, n)
    thr = torch.as_tensor(threshold, dtype=dtype, device=dist.device).reshape(-1, 1)  # (B or 1, 1)
    if thr.shape[0] not in (1, b):
        raise ValueError(
            f"Argument threshold must be a number or have shape ({b},), got {threshold!r}."
        )
    correct = ((dist <= thr) & valid).sum(-1).to(dtype)
    out = correct / valid.sum(-1).to(dtype)  # 0 / 0 -> NaN for an empty pair
    return out if batched else out[0]


def _nanmean(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _none_if_nan(value: float) -> float | None:
    """A score for JSON: NaN (a mean over nothing) becomes None (``null``)."""
    return None if math.isnan(value) else value


class PCKEvaluator:
    """Accumulate PCK over pairs under a :class:`PCKProtocol` (or a preset name).

    Call :meth:`add` once per pair with keypoints already transferred into the measured image
    (the protocol's ``direction``), then read :meth:`summary`, :meth:`per_pair` (rows for a
    CSV) or :meth:`to_markdown`. Pairs without keypoints are kept in :meth:`per_pair` with NaN
    and skipped by every average.

    >>> ev = PCKEvaluator("pf-pascal")  # trg image H = 100, W = 200 px
    >>> pred = torch.tensor([[10.0, 10.0], [10.0, 25.0]])  # src kps moved into trg
    >>> gt = torch.tensor([[12.0, 10.0], [10.0, 10.0]])
    >>> row = ev.add(pred, gt, category="car", image_size=(100, 200))
    >>> ev.summary()["alphas"]["0.1"]["all"]  # dx 2 / W = 0.01 ok, dy 15 / H = 0.15 wrong
    0.5
    """

    def __init__(self, protocol: PCKProtocol | str) -> None:
        self.protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
        self._rows: list[dict] = []
        self._correct: list[dict[float, int]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self,
        pred: torch.Tensor,
        gt: torch.Tensor,
        *,
        category: str,
        image_size: Sequence[int] | None = None,
        bbox: object = None,
        valid: torch.Tensor | None = None,
    ) -> dict:
        """Score one pair: ``pred``, ``gt`` ``(N, 2)`` pixels in the measured image.

        ``image_size`` ``(H, W)`` / ``bbox`` ``(x0, y0, x1, y1)`` of the measured image, as the
        normaliser needs (``kps_box`` uses the valid ``gt``); a ``resolution="square"`` protocol
        always needs ``image_size`` (original pixels in, rescaled to the square here). ``valid``
        ``(N,)`` bool is optional. Returns the pair's row (see :meth:`per_pair`).
        """
        check_shape(pred, ("N", 2), "pred")
        check_shape(gt, ("N", 2), "gt")
        if pred.shape != gt.shape:
            raise ValueError(
                f"Arguments pred and gt must hold the same keypoints, got pred shape "
                f"{tuple(pred.shape)} and gt shape {tuple(gt.shape)}."
            )
        pred, gt = pred.detach().double().cpu(), gt.detach().double().cpu()
        if valid is None:
            valid = torch.ones(gt.shape[0], dtype=torch.bool)
        else:
            check_shape(valid, (gt.shape[0],), "valid")
            valid = valid.detach().bool().cpu()
        length = _reference_length(self.protocol, image_size=image_size, bbox=bbox, kps=gt[valid])
        diff = pred - gt
        scale = _square_scale(self.protocol, image_size)
        if scale is not None:  # measured in the image resized to square_side x square_side
            diff = diff * diff.new_tensor(scale)
        dist = diff.norm(dim=-1)[valid]
        n = int(dist.numel())
        row: dict = {"pair": len(self._rows), "category": str(category)}
        row.update({"n_points": n, "ref_length": length})
        correct: dict[float, int] = {}
        for a in self.protocol.alphas:
            correct[a] = int((dist <= a * length).sum())
            row[f"pck@{a:g}"] = correct[a] / n if n else math.nan
        self._rows.append(row)
        self._correct.append(correct)
        return dict(row)

    def per_pair(self) -> list[dict]:
        """One dict per pair: ``pair``, ``category``, ``n_points``, ``ref_length`` (L, pixels of
        the frame measured in: the square for ``resolution="square"``) and ``pck@<alpha>`` for
        every alpha (NaN for an empty pair)."""
        return [dict(r) for r in self._rows]

    def _score(self, idx: list[int], alpha: float, pooled: bool) -> float:
        idx = [i for i in idx if self._rows[i]["n_points"] > 0]
        if pooled:
            n = sum(self._rows[i]["n_points"] for i in idx)
            return sum(self._correct[i][alpha] for i in idx) / n if n else math.nan
        return _nanmean(self._rows[i][f"pck@{alpha:g}"] for i in idx)

    def summary(self) -> dict:
        """Scores for every alpha under the protocol's aggregation, and the counts behind them.

        Returns (JSON-ready; alpha keys are ``f"{alpha:g}"``)::

            {"protocol": str, "aggregation": str, "headline": float,
             "alphas": {"0.1": {"all": float | None,
                                "per_category": {category: float | None}}, ...},
             "n_pairs": int, "n_points": int, "n_skipped": int,
             "categories": {category: {"n_pairs": int, "n_points": int}}}

        ``all`` follows the protocol's aggregation. Within a category, ``per_point`` pools the
        points and the other two aggregations average the pairs. ``n_pairs`` counts pairs with
        keypoints, ``n_skipped`` those without. A score over nothing (an empty evaluator, or a
        category whose pairs have no keypoint) is ``None`` (JSON ``null``), next to its count of
        0, never NaN: the summary always passes ``json.dumps(..., allow_nan=False)``.
        """
        agg = self.protocol.aggregation
        pooled = agg == "per_point"
        cats: dict[str, list[int]] = {}
        for i, r in enumerate(self._rows):
            cats.setdefault(r["category"], []).append(i)

        def counts(idx: list[int]) -> dict:
            used = [i for i in idx if self._rows[i]["n_points"] > 0]
            return {"n_pairs": len(used), "n_points": sum(self._rows[i]["n_points"] for i in used)}

        everything = list(range(len(self._rows)))
        alphas = {}
        for a in self.protocol.alphas:
            per_cat = {c: self._score(idx, a, pooled) for c, idx in cats.items()}
            if agg == "per_category":
                overall = _nanmean(per_cat.values())
            else:
                overall = self._score(everything, a, pooled)
            alphas[f"{a:g}"] = {
                "all": _none_if_nan(overall),
                "per_category": {c: _none_if_nan(v) for c, v in per_cat.items()},
            }
        total = counts(everything)
        return {
            "protocol": self.protocol.name,
            "aggregation": agg,
            "headline": self.protocol.headline,
            "alphas": alphas,
            **total,
            "n_skipped": len(self._rows) - total["n_pairs"],
            "categories": {c: counts(idx) for c, idx in cats.items()},
        }

    def to_markdown(self) -> str:
        """A table (rows: categories and ``all``; columns: PCK@alpha in %) and the protocol."""
        s = self.summary()
        keys = list(s["alphas"])

        def fmt(v: float | None) -> str:
            return "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}"

        def row(label: str, values: list[float], n_pairs: int) -> str:
            return f"| {label} | " + " | ".join(fmt(v) for v in values) + f" | {n_pairs} |"

        lines = [
            "| category | " + " | ".join(f"PCK@{k} (%)" for k in keys) + " | pairs |",
            "|---|" + "---:|" * (len(keys) + 1),
        ]
        for c, n in s["categories"].items():
            lines.append(row(c, [s["alphas"][k]["per_category"][c] for k in keys], n["n_pairs"]))
        lines.append(row("**all**", [s["alphas"][k]["all"] for k in keys], s["n_pairs"]))
        lines += [
            "",
            f"Protocol `{self.protocol.name}`: {self.protocol.describe()}.",
            f"Source: {self.protocol.source or 'not given'}.",
        ]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# TSS (Taniai et al., CVPR 2016): the official evaluation kit, re-implemented
# ---------------------------------------------------------------------------------------------

TSS_UNKNOWN_FLOW = 1e10
TSS_THRESHOLDS = tuple(range(1, 51))
_RESIZE_COEF_BITS = 11  # OpenCV's fixed-point bilinear resize of 8-bit images
_REMAP_TAB_BITS = 5  # OpenCV's remap quantises sample positions to 1/32 pixel


def _flow_hw2(flow: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """``(H, W, 2)`` array or ``(2, H, W)`` tensor -> float32 ``(H, W, 2)`` array."""
    if isinstance(flow, torch.Tensor):
        check_shape(flow, (2, "H", "W"), name)
        return flow.detach().cpu().permute(1, 2, 0).numpy().astype(np.float32)
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(
            f"Argument {name} must be an (H, W, 2) array or a (2, H, W) tensor, got shape "
            f"{flow.shape}."
        )
    return flow.astype(np.float32, copy=False)


def _valid_flow(flow: np.ndarray) -> np.ndarray:
    """Known-flow mask of the kit: ``|u| <= 1e9`` and ``|v| <= 1e9`` (NaN is unknown)."""
    return (np.abs(flow) <= UNKNOWN_FLOW_THRESHOLD).all(axis=-1)


def _flow_error(flow: np.ndarray, flow_gt: np.ndarray) -> np.ndarray:
    """The kit's endpoint error ``(H, W)`` float32; 1000 where exactly one flow is known."""
    d = flow - flow_gt
    with np.errstate(over="ignore", invalid="ignore"):
        err = np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1])
    err[_valid_flow(flow) ^ _valid_flow(flow_gt)] = 1000.0
    return err


def tss_flow_accuracy(
    flow: np.ndarray | torch.Tensor,
    flow_gt: np.ndarray | torch.Tensor,
    other_size: Sequence[int],
    thresholds: Iterable[float] = TSS_THRESHOLDS,
) -> np.ndarray:
    """TSS flow accuracy: the fraction of known-GT pixels with endpoint error ``<= thr``.

    Args:
        flow, flow_gt: ``(H, W, 2)`` arrays or ``(2, H, W)`` tensors on the same image grid,
            pixels; unknown values have magnitude ``> 1e9``.
        other_size: ``(H, W)`` of the image the flow points into; thresholds are on the scale
            where its longer side is 100 pixels: ``thr_t = t / 100 * max(other_size)``.
        thresholds: the ``t`` values (default 1..50; the paper reports t = 5).

    Returns:
        ``(T,)`` float64: ``1 - #{err > thr_t, GT known} / #{GT known}``. The error is float32
        ``sqrt(du^2 + dv^2)``, and 1000 where the estimate is unknown but the GT known, as in
        the kit. A ground truth with no known pixel raises ``ValueError`` (the kit would divide
        by zero).

    >>> gt = np.zeros((4, 6, 2), np.float32)
    >>> tss_flow_accuracy(gt + [3.0, 0.0], gt, other_size=(100, 200), thresholds=(1, 2))
    array([0., 1.])
    """
    flow, flow_gt = _flow_hw2(flow, "flow"), _flow_hw2(flow_gt, "flow_gt")
    if flow.shape != flow_gt.shape:
        raise ValueError(
            f"Arguments flow and flow_gt must share one grid, got shapes {flow.shape} and "
            f"{flow_gt.shape}; resize with tss_resize_flow_pair."
        )
    if len(other_size) != 2:
        raise ValueError(f"Argument other_size must be (H, W), got {other_size!r}.")
    err = _flow_error(flow, flow_gt)
    known = _valid_flow(flow_gt)
    n_known = int(known.sum())
    if not n_known:
        raise ValueError(
            f"Argument flow_gt has no known pixel (all {known.size} are NaN or above 1e9): there "
            "is no ground truth to score against (the TSS kit would divide by zero)."
        )
    err = err[known]
    side = float(max(other_size))
    out = []
    for t in thresholds:
        # the kit compares float32 errors with the threshold cast to float32
        thr = np.float32(float(t) / 100.0 * side)
        out.append(1.0 - np.count_nonzero(err > thr) / n_known)
    return np.asarray(out, dtype=np.float64)


def mask_iou(mask: np.ndarray | torch.Tensor, mask_gt: np.ndarray | torch.Tensor) -> float:
    """Intersection over union of two ``(H, W)`` masks (the TSS kit's ``SegIUR``).

    Bool masks give the usual IoU. Like the kit, 8-bit masks are combined bitwise
    (``count(gt & m) / count(gt | m)`` over nonzero bytes), which is the same for 0/255 masks.
    NaN when both are empty.
    """
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    g = mask_gt.detach().cpu().numpy() if isinstance(mask_gt, torch.Tensor) else np.asarray(mask_gt)
    if m.shape != g.shape or m.ndim != 2:
        raise ValueError(
            f"Arguments mask and mask_gt must be (H, W) of one size, got shapes {m.shape} and "
            f"{g.shape}."
        )
    if m.dtype != g.dtype or m.dtype.kind not in "bu":
        m, g = m != 0, g != 0
    union = np.count_nonzero(m | g)
    return np.count_nonzero(m & g) / union if union else math.nan


def _part_masks(mask, name: str) -> torch.Tensor:
    """``(H, W)`` or ``(K, H, W)`` masks (bool, or probabilities binarised at 0.5) -> bool
    ``(K, H, W)``."""
    t = torch.as_tensor(mask)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(
            f"Argument {name} must be (H, W) or (K, H, W), got shape {tuple(t.shape)}."
        )
    return t > 0.5 if t.dtype != torch.bool else t


def _both_masks(pred, gt) -> tuple[torch.Tensor, torch.Tensor]:
    p, g = _part_masks(pred, "pred"), _part_masks(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(
            f"Arguments pred and gt differ in shape: {tuple(p.shape)} vs {tuple(g.shape)}."
        )
    return p, g


def label_transfer_accuracy(pred, gt) -> float:
    """Label-transfer accuracy (LT-ACC): the share of pixels whose transferred label is right.

    ``pred`` and ``gt``: ``(H, W)`` foreground masks or ``(K, H, W)`` part masks (bool, or
    values binarised at 0.5), one size. The mean over every part channel and pixel of
    ``pred == gt``: the definition of weakalign's Caltech-101 evaluation (Rocco et al., CVPR 2018,
    ``eval_util.py``), where a pixel outside every part counts as background.
    """
    p, g = _part_masks(pred, "pred"), _part_masks(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(
            f"Arguments pred and gt differ in shape: {tuple(p.shape)} vs {tuple(g.shape)}."
        )
    return float((p == g).double().mean())


def part_weighted_iou(pred, gt) -> float:
    """IoU of each part, weighted by the part's share of the true foreground (weakalign's
    ``intersection_over_union``, Rocco et al., CVPR 2018): ``sum_k (|g_k| / sum_j |g_j|) *
    |p_k & g_k| / |p_k | g_k|``. With one part (an ``(H, W)`` mask) it is the plain IoU. NaN when
    the truth is empty."""
    p, g = _part_masks(pred, "pred"), _part_masks(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(
            f"Arguments pred and gt differ in shape: {tuple(p.shape)} vs {tuple(g.shape)}."
        )
    area = g.flatten(1).sum(1).double()
    if float(area.sum()) == 0:
        return math.nan
    inter = (p & g).flatten(1).sum(1).double()
    union = (p | g).flatten(1).sum(1).double().clamp(min=1)
    return float(((area / area.sum()) * inter / union).sum())


def _cv_linear_taps(n_in: int, n_out: int, clamp_weight: bool):
    """Source indices and float32 weights of OpenCV's ``INTER_LINEAR`` resize along one axis.

    Half-pixel centres: ``f = (float)((i + 0.5) * scale - 0.5)``, ``scale = 1 / (n_out / n_in)``.
    Along x, OpenCV zeroes the fraction past either border; along y it clamps the rows only.
    """
    scale = 1.0 / (n_out / n_in)
    f = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = (f - i0.astype(np.float32)).astype(np.float32)
    if clamp_weight:
        out = (i0 < 0) | (i0 >= n_in - 1)
        frac[out] = 0.0
    i1 = np.clip(i0 + 1, 0, n_in - 1)
    i0 = np.clip(i0, 0, n_in - 1)
    return i0, i1, (np.float32(1.0) - frac).astype(np.float32), frac


def _cv_resize(img: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """OpenCV ``cv::resize(..., INTER_LINEAR)`` of an ``(H, W, C)`` float32 or uint8 array.

    float32: separable, horizontal then vertical, each ``a * p0 + b * p1`` in float32.
    uint8: OpenCV's fixed-point path (11-bit weights, integer rows, 16-bit vertical products).
    """
    h, w = int(size[0]), int(size[1])
    x0, x1, ax0, ax1 = _cv_linear_taps(img.shape[1], w, clamp_weight=True)
    y0, y1, by0, by1 = _cv_linear_taps(img.shape[0], h, clamp_weight=False)
    if img.dtype == np.uint8:
        one = 1 << _RESIZE_COEF_BITS
        ax0, ax1 = (np.rint(a * one).astype(np.int64) for a in (ax0, ax1))
        by0, by1 = (np.rint(b * one).astype(np.int64) for b in (by0, by1))
        src = img.astype(np.int64)
        rows = src[:, x0] * ax0[None, :, None] + src[:, x1] * ax1[None, :, None]
        # vertical pass as OpenCV's SSE2 kernel computes it (the kit's build; the scalar
        # formula, round((r0 * b0 + r1 * b1) / 2^22), differs by one grey level at times)
        hi0 = ((rows[y0] >> 4) * by0[:, None, None]) >> 16
        hi1 = ((rows[y1] >> 4) * by1[:, None, None]) >> 16
        return np.clip((hi0 + hi1 + 2) >> 2, 0, 255).astype(np.uint8)
    src = img.astype(np.float32, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        rows = src[:, x0] * ax0[None, :, None] + src[:, x1] * ax1[None, :, None]
        return rows[y0] * by0[:, None, None] + rows[y1] * by1[:, None, None]


def _cv_remap(img: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, border: float) -> np.ndarray:
    """OpenCV ``cv::remap(INTER_LINEAR, BORDER_CONSTANT)`` of a float32 ``(H, W, C)`` image.

    Sample positions are rounded to 1/32 pixel; a neighbour outside the image takes the
    ``border`` value (weighted like any other neighbour).
    """
    tab = 1 << _REMAP_TAB_BITS
    big = np.iinfo(np.int32)
    with np.errstate(invalid="ignore"):
        qx = np.clip(np.rint(map_x.astype(np.float32) * np.float32(tab)), big.min, big.max)
        qy = np.clip(np.rint(map_y.astype(np.float32) * np.float32(tab)), big.min, big.max)
    qx, qy = np.nan_to_num(qx, nan=0).astype(np.int64), np.nan_to_num(qy, nan=0).astype(np.int64)
    sx = np.clip(qx >> _REMAP_TAB_BITS, -32768, 32767)
    sy = np.clip(qy >> _REMAP_TAB_BITS, -32768, 32767)
    fx = ((qx & (tab - 1)) / tab).astype(np.float32)
    fy = ((qy & (tab - 1)) / tab).astype(np.float32)
    wx = (np.float32(1) - fx, fx)
    wy = (np.float32(1) - fy, fy)
    h, w = img.shape[:2]
    out = np.zeros((*map_x.shape, img.shape[2]), np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for dy in (0, 1):
            for dx in (0, 1):
                px, py = sx + dx, sy + dy
                inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
                pix = img[np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)]
                val = np.where(inside[..., None], pix, np.float32(border))
                out = out + val * (wy[dy] * wx[dx])[..., None]
    return out


def _tss_resize_flow(
    flow: np.ndarray, size: Sequence[int], other_old: Sequence[int], other_new: Sequence[int]
) -> np.ndarray:
    """The kit's ``ResizeFlow``: resample the field, rescale the end points, drop mixed pixels."""
    (oh, ow), (nh, nw) = flow.shape[:2], size
    valid = _cv_resize(_valid_flow(flow).astype(np.float32)[..., None], size)[..., 0]
    resized = _cv_resize(flow, size)
    ys, xs = np.mgrid[0:nh, 0:nw]
    new_grid = np.stack((xs, ys), axis=-1).astype(np.float64)
    old_grid = (new_grid * np.array([ow / nw, oh / nh])).astype(np.float32)  # new pixel, old units
    ratio = np.array([other_new[1] / other_old[1], other_new[0] / other_old[0]])
    with np.errstate(over="ignore", invalid="ignore"):
        target = (resized + old_grid).astype(np.float32)  # absolute end point, old units
        resized = (target * ratio).astype(np.float32) - new_grid.astype(np.float32)
    resized[valid != 1.0] = TSS_UNKNOWN_FLOW
    return resized


def tss_resize_flow_pair(
    flow1: np.ndarray | torch.Tensor,
    flow2: np.ndarray | torch.Tensor,
    size1: Sequence[int],
    size2: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Resize a bidirectional flow pair to image sizes ``size1``, ``size2`` as the TSS kit does.

    ``flow1`` ``(H1, W1, 2)`` (image 1 -> 2) and ``flow2`` ``(H2, W2, 2)`` (2 -> 1), arrays or
    ``(2, H, W)`` tensors. Each field is resized bilinearly (OpenCV, half-pixel centres), then
    converted through absolute positions, ``(resize(flow) + old_grid) * (new2 / old2) -
    new_grid`` per axis, with ``old_grid`` the new pixel grid in old units; pixels whose
    bilinearly resized known-mask is not exactly 1 become unknown (``1e10``). Returns float32
    ``(H, W, 2)`` arrays; unchanged copies if both sizes already match.
    """
    f1, f2 = _flow_hw2(flow1, "flow1"), _flow_hw2(flow2, "flow2")
    size1, size2 = tuple(int(s) for s in size1), tuple(int(s) for s in size2)
    old1, old2 = f1.shape[:2], f2.shape[:2]
    if old1 == size1 and old2 == size2:
        return f1.copy(), f2.copy()
    return _tss_resize_flow(f1, size1, old2, size2), _tss_resize_flow(f2, size2, old1, size1)


def tss_masks_from_flows(
    flow1: np.ndarray | torch.Tensor, flow2: np.ndarray | torch.Tensor, thr: float = 20.0
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground masks from forward-backward consistency (the kit's ``computeMaskFromFlow``).

    ``flow1`` ``(H1, W1, 2)`` (1 -> 2), ``flow2`` ``(H2, W2, 2)`` (2 -> 1). The other flow is
    warped back (OpenCV bilinear remap, outside = ``1e10``) and a pixel is foreground where
    ``|flow1(p) + flow2(p + flow1(p))| < thr`` pixels. Returns bool ``(H1, W1)``, ``(H2, W2)``.
    """
    f1, f2 = _flow_hw2(flow1, "flow1"), _flow_hw2(flow2, "flow2")

    def one(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
        ys, xs = np.mgrid[0 : fa.shape[0], 0 : fa.shape[1]].astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            warped = _cv_remap(fb, fa[..., 0] + xs, fa[..., 1] + ys, TSS_UNKNOWN_FLOW)
            return _flow_error(fa, -warped) < thr

    return one(f1, f2), one(f2, f1)


def _read_grey(path: Path) -> np.ndarray | None:
    """A PNG as 8-bit grey (like ``cv::imread(IMREAD_GRAYSCALE)``); None if absent."""
    if not path.is_file():
        return None
    with Image.open(path) as im:
        return np.array(im if im.mode == "L" else im.convert("L"))


def _fit_mask(mask: np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    """The kit's mask resize: bilinear (8-bit) to ``size``, then ``> 128`` -> 255."""
    if mask is None or mask.shape == size:
        return mask
    return np.where(_cv_resize(mask[..., None], size)[..., 0] > 128, 255, 0).astype(np.uint8)


def _read_flow_pair(folder: Path) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    p1, p2 = folder / "flow1.flo", folder / "flow2.flo"
    if not (p1.is_file() and p2.is_file()):
        return None, None
    return read_flo(p1), read_flo(p2)


def _read_pair_names(folder: Path) -> tuple[str, str]:
    """Image names from ``pair.txt``: a header line, then ``name1,name2``."""
    path = folder / "pair.txt"
    if not path.is_file():
        return "", ""
    lines = path.read_text().splitlines()
    names = [*(lines[1].split(",") if len(lines) > 1 else []), "", ""]
    return names[0].strip(), names[1].strip()


def _shown(path: Path) -> str:
    """A path as printable text (bytes that are not UTF-8 as ``\\xNN`` escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _read_flip(folder: Path) -> int:
    path = folder / "flip_gt.txt"
    text = path.read_bytes().decode("utf-8", "replace").split() if path.is_file() else []
    if text and text[0] not in ("0", "1"):
        raise ValueError(
            f"{_shown(path)} must hold 0 or 1, got {text[0]!r}; re-extract the TSS dataset."
        )
    return int(text[0]) if text else 0


def _check_ground_truth(
    gt_dir: Path, flows: tuple[np.ndarray, np.ndarray], masks: tuple[np.ndarray, np.ndarray]
) -> None:
    """Refuse ground truth that cannot score anything: a flow with no known pixel, a mask with
    no foreground (either would make the kit divide by zero)."""
    for k, (flow, mask) in enumerate(zip(flows, masks), start=1):
        if not _valid_flow(flow).any():
            raise ValueError(
                f"{_shown(gt_dir / f'flow{k}.flo')} holds no ground-truth flow: all "
                f"{flow.shape[0] * flow.shape[1]} pixels are unknown (NaN or above 1e9), so the "
                "pair cannot be scored (the TSS kit would divide by zero). The file is corrupt: "
                "re-extract the TSS dataset."
            )
        if not mask.any():
            raise ValueError(
                f"{_shown(gt_dir / f'mask{k}.png')} has no foreground pixel, so the mask IoU "
                "is undefined (the TSS kit would divide by zero). The file is corrupt: "
                "re-extract the TSS dataset."
            )


def evaluate_tss_results(
    results_dir: str | os.PathLike, dataset_dir: str | os.PathLike, *, auto_flip: bool = False
) -> list[dict]:
    """Score a method's TSS results exactly as the official evaluation kit does.

    Expected trees (one TSS subset, e.g. ``FG3DCar``)::

        results_dir/<pair>/flow1.flo, flow2.flo   # image1->2, 2->1 (any resolution)
                           mask1.png, mask2.png   # optional; else from flow consistency
        dataset_dir/<pair>/flow1.flo, flow2.flo, mask1.png, mask2.png, pair.txt, flip_gt.txt

    Per pair (sorted by name; pairs without full ground truth are skipped): masks of another
    size are resized bilinearly and thresholded at ``> 128``; flows are resized with
    :func:`tss_resize_flow_pair`; missing masks come from :func:`tss_masks_from_flows`
    (threshold 20); ``auto_flip`` inverts both masks if that scores higher (the kit's option).
    Missing flows (or masks that cannot be made) score 0, as in the kit. Hidden result folders
    (``.ipynb_checkpoints``) are ignored. A ground-truth flow with no known pixel, or a
    ground-truth mask with no foreground, raises ``ValueError`` naming the file (the kit would
    divide by zero and report NaN).

    Returns:
        Two rows per pair (1->2, then 2->1): ``{"pair", "direction" ("1to2" | "2to1"), "src",
        "ref", "seg_iou", "flip", "T1", ..., "T50"}``, ``T<t>`` from :func:`tss_flow_accuracy`
        with thresholds on the scale of the ``ref`` image. Write them with :func:`tss_scores_csv`.
    """
    results_dir, dataset_dir = Path(results_dir), Path(dataset_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"Results folder {results_dir} does not exist.")
    rows: list[dict] = []
    # hidden folders (.ipynb_checkpoints, ...) are not pair results
    for folder in sorted(p for p in results_dir.iterdir() if p.is_dir() and p.name[:1] != "."):
        gt_dir = dataset_dir / folder.name
        gt1, gt2 = _read_flow_pair(gt_dir)
        mgt1, mgt2 = _read_grey(gt_dir / "mask1.png"), _read_grey(gt_dir / "mask2.png")
        if gt1 is None or mgt1 is None or mgt2 is None:
            continue
        _check_ground_truth(gt_dir, (gt1, gt2), (mgt1, mgt2))
        names = _read_pair_names(gt_dir)
        flip = _read_flip(gt_dir)
        f1, f2 = _read_flow_pair(folder)
        m1, m2 = _read_grey(folder / "mask1.png"), _read_grey(folder / "mask2.png")
        m1, m2 = _fit_mask(m1, mgt1.shape), _fit_mask(m2, mgt2.shape)
        if f1 is not None:
            f1, f2 = tss_resize_flow_pair(f1, f2, gt1.shape[:2], gt2.shape[:2])
        if auto_flip and m1 is not None and m2 is not None:
            keep = mask_iou(m1, mgt1) + mask_iou(m2, mgt2)
            flipped = mask_iou(~m1, mgt1) + mask_iou(~m2, mgt2)
            if keep < flipped:
                m1, m2 = ~m1, ~m2
        if (m1 is None or m2 is None) and f1 is not None:
            b1, b2 = tss_masks_from_flows(f1, f2)
            m1, m2 = np.where(b1, 255, 0).astype(np.uint8), np.where(b2, 255, 0).astype(np.uint8)
        directions = (
            ("1to2", f1, gt1, m1, mgt1, gt2.shape[:2], names),
            ("2to1", f2, gt2, m2, mgt2, gt1.shape[:2], names[::-1]),
        )
        for direction, f, gt, m, mgt, other_size, (src, ref) in directions:
            seg = mask_iou(m, mgt) if m is not None else 0.0  # the kit scores what is missing as 0
            acc = (
                tss_flow_accuracy(f, gt, other_size)
                if f is not None
                else np.zeros(len(TSS_THRESHOLDS))
            )
            row = {"pair": folder.name, "direction": direction, "src": src, "ref": ref}
            row.update({"seg_iou": seg, "flip": flip})
            row.update({f"T{t}": float(a) for t, a in zip(TSS_THRESHOLDS, acc)})
            rows.append(row)
    return rows


def tss_scores_csv(rows: Sequence[dict]) -> str:
    """The kit's ``scores.csv`` text for rows of :func:`evaluate_tss_results`.

    Header ``Row,Src,Ref,SegIUR,Flip,T1..T50``; one line per row, labelled ``<pair>_1to2`` for
    *both* directions (a quirk of the kit: the second line of a pair is 2->1); values with 6
    decimals; then ``Average`` (all rows, Flip column 1) and ``w/o flip`` (rows with flip 0,
    Flip column 0), NaN when there is no such row.
    """
    first = rows[0] if rows else {f"T{t}": 0 for t in TSS_THRESHOLDS}
    keys = sorted((k for k in first if k[:1] == "T" and k[1:].isdigit()), key=lambda k: int(k[1:]))
    lines = [",".join(["Row", "Src", "Ref", "SegIUR", "Flip", *keys])]

    def line(label: str, src: str, ref: str, values: Sequence[float], flip: int) -> str:
        return ",".join(
            [label, src, ref, f"{values[0]:f}", str(flip), *(f"{v:f}" for v in values[1:])]
        )

    def mean(sel: list[dict]) -> list[float]:
        cols = ["seg_iou", *keys]
        return [sum(float(r[c]) for r in sel) / len(sel) if sel else math.nan for c in cols]

    for r in rows:  # the kit labels both directions "_1to2"
        values = [r["seg_iou"], *(r[k] for k in keys)]
        lines.append(line(f"{r['pair']}_1to2", r["src"], r["ref"], values, int(r["flip"])))
    lines.append(line("Average", "-", "-", mean(list(rows)), 1))
    lines.append(line("w/o flip", "-", "-", mean([r for r in rows if int(r["flip"]) == 0]), 0))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Patch verification (match / non-match) and stereo disparity
# ---------------------------------------------------------------------------------------------


def _scores_labels(scores: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``(N,)`` float64 scores and bool labels with both classes present."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().double().numpy()
    try:
        s = np.array(scores, dtype=np.float64)  # a copy: any strides, any sequence
    except (TypeError, ValueError) as err:
        raise ValueError(f"Argument scores must be numeric, got {scores!r}.") from err
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    lab = np.asarray(labels)
    if s.ndim != 1:
        raise ValueError(f"Argument scores must have shape (N,), got shape {s.shape}.")
    if lab.shape != s.shape:
        raise ValueError(
            f"Argument labels must have shape {s.shape} like scores, got shape {lab.shape}."
        )
    if lab.dtype != np.bool_:
        if not np.isin(lab, (0, 1)).all():
            raise ValueError("Argument labels must be bool or 0/1 (1 = the pair matches).")
        lab = lab.astype(bool)
    if not np.isfinite(s).all():
        raise ValueError("Argument scores must be finite; got NaN or inf.")
    n_pos = int(lab.sum())
    if n_pos == 0 or n_pos == lab.size:
        raise ValueError(
            f"Arguments labels must hold both positives and negatives, got {n_pos} positives of "
            f"{lab.size}; rates over a missing class are undefined."
        )
    return s, lab


def roc_curve(scores: object, labels: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of a match / non-match verification: ``(fpr, tpr, thresholds)``.

    Convention: ``scores (N,)`` are similarities (higher = more alike; negate a distance);
    ``labels (N,)`` bool or 0/1, True for a matching pair. A pair is accepted when
    ``score >= threshold``. One point per distinct score (tied scores enter together), from
    ``threshold = inf`` (nothing accepted, ``(0, 0)``) down to the lowest score (``(1, 1)``);
    no point is dropped. Both classes must be present (``ValueError`` otherwise).
    Wraps ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.

    Returns:
        float64 arrays ``fpr``, ``tpr`` (non-decreasing) and ``thresholds`` (decreasing).

    >>> fpr, tpr, thr = roc_curve([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    from sklearn.metrics import roc_curve as _sk_roc_curve

    s, lab = _scores_labels(scores, labels)
    fpr, tpr, thr = _sk_roc_curve(lab, s, drop_intermediate=False)
    return fpr.astype(np.float64), tpr.astype(np.float64), thr.astype(np.float64)


def pr_auc(scores: object, labels: object) -> float:
    """Area under the precision-recall curve as average precision (AP).

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the thresholds (a step sum, not the trapezoidal
    rule, which is optimistic; tied scores enter together). Inputs as :func:`roc_curve`.
    Wraps ``sklearn.metrics.average_precision_score``; used for patch verification in the HPatches
    benchmark (Balntas et al., CVPR 2017).

    >>> pr_auc([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])  # P = 1 at R = 0.5, P = 2/3 at R = 1
    0.8333333333333333
    """
    from sklearn.metrics import average_precision_score

    s, lab = _scores_labels(scores, labels)
    return float(average_precision_score(lab, s))


def fpr_at_recall(scores: object, labels: object, recall: float = 0.95) -> float:
    """False-positive rate at the first threshold whose true-positive rate reaches ``recall``.

    FPR95 of the patch-descriptor literature for ``recall=0.95``: Brown, Hua & Winder, TPAMI
    2011 ("95% error rate"); Zagoruyko & Komodakis (DeepCompare, CVPR 2015); Han et al.
    (MatchNet, CVPR 2015); Balntas et al. (TFeat, BMVC 2016); Tian et al. (L2-Net, CVPR 2017);
    Mishchuk et al. (HardNet, NeurIPS 2017); Zbontar & LeCun report stereo error instead.

    Rule (no interpolation): walk the thresholds from high to low (:func:`roc_curve`, one step
    per distinct score, ties accepted together) and stop at the first, i.e. highest, threshold
    ``t`` with ``TP(t) >= recall * P``; return ``FP(t) / N`` (``P``/``N`` the numbers of
    positives/negatives). This is the smallest FPR of any threshold reaching the recall. Without
    ties it equals the sorted-cumulative-sum rule of common evaluation scripts (sort by score,
    take the shortest prefix holding ``recall * P`` positives, FPR = negatives in it / ``N``);
    with ties those scripts depend on the sort order. Note: some released scripts (e.g.
    MatchNet's ``ErrorRateAt95Recall``) return ``FP / (TP + FP)`` instead, which is a different
    number.

    >>> scores = [20 - i for i in range(20)]  # 20 pairs, best first; 10 matches, 10 non-matches
    >>> labels = [1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0]
    >>> fpr_at_recall(scores, labels, 0.8)  # 8th match at rank 12, after 4 non-matches
    0.4
    """
    if not 0.0 < float(recall) <= 1.0:
        raise ValueError(f"Argument recall must be in (0, 1], got {recall}.")
    fpr, tpr, _ = roc_curve(scores, labels)
    reached = np.flatnonzero(tpr >= float(recall) - 1e-12)
    return float(fpr[reached[0]])


def bad_pixel_rate(
    disp: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None, threshold: float
) -> float:
    """Fraction of valid pixels whose disparity error exceeds ``threshold`` pixels.

    Middlebury's "bad 1.0" / "bad 2.0" (Scharstein & Szeliski, IJCV 2002; reported there as a
    percentage, here as a fraction in ``[0, 1]``): ``#{|disp - gt| > threshold} / #valid``.
    ``disp``, ``gt``: ``(H, W)`` or ``(B, H, W)`` (any shape, the same for both) disparities in
    pixels; ``valid``: bool of the same shape or ``None`` (every pixel). Pixels where ``gt`` is
    not finite are never counted; a non-finite ``disp`` counts as bad. NaN when no pixel is
    counted.

    >>> bad_pixel_rate(torch.tensor([1.0, 2.0, 5.0]), torch.tensor([1.0, 3.5, 2.0]), None, 1.0)
    0.6666666666666666
    """
    check_tensor(disp, "disp")
    check_tensor(gt, "gt")
    if gt.shape != disp.shape:
        raise ValueError(
            f"Argument gt must have shape {tuple(disp.shape)} like disp, got shape "
            f"{tuple(gt.shape)}."
        )
    if float(threshold) < 0:
        raise ValueError(f"Argument threshold must be >= 0, got {threshold}.")
    ok = torch.isfinite(gt)
    if valid is not None:
        check_tensor(valid, "valid")
        if valid.shape != disp.shape:
            raise ValueError(
                f"Argument valid must have shape {tuple(disp.shape)} like disp, got shape "
                f"{tuple(valid.shape)}."
            )
        ok = ok & valid.bool()
    n = int(ok.sum())
    if n == 0:
        return math.nan
    err = (disp.double() - gt.double()).abs()
    bad = ~(err <= float(threshold))  # NaN / inf error -> bad
    return int((bad & ok).sum()) / n


# ------------------------------------------------------------------ region matching (SCNet)


def pcr_curve(match_iou: torch.Tensor, thresholds: torch.Tensor | None = None) -> torch.Tensor:
    """Probability of correct regions: ``PCR(t)`` = fraction of matches with ``1 - IoU < t``.

    Han et al., *SCNet*, ICCV 2017 (Fig. 3; code ``eva_PCR_mIoU_*.m``): each active source
    proposal is matched to its best-scoring target proposal, and its IoU with the proposal's
    ground-truth box in the target is ``match_iou``.

    Args:
        match_iou: ``(M,)`` IoUs of the matches in ``[0, 1]`` (pool pairs by concatenating,
            or average per-pair curves).
        thresholds: ``(T,)`` values of ``t`` (None: ``linspace(0, 1, 101)``).

    Returns:
        ``(T,)`` PCR values in ``[0, 1]`` (0 everywhere when ``M = 0``).

    Example:
        >>> pcr_curve(torch.tensor([1.0, 0.6, 0.2]), torch.tensor([0.1, 0.5, 0.9]))
        tensor([0.3333, 0.6667, 1.0000])
    """
    if thresholds is None:
        thresholds = torch.linspace(0, 1, 101)
    err = 1 - match_iou.double().reshape(-1)
    if err.numel() == 0:
        return torch.zeros(len(thresholds))
    return (err[:, None] < thresholds.double()[None]).double().mean(0).float()


def miou_at_k(match_iou: torch.Tensor, confidence: torch.Tensor, k_max: int = 100) -> torch.Tensor:
    """Mean IoU of the ``k`` most confident matches of one pair, for ``k = 1 ... k_max``.

    SCNet's mIoU@k (Fig. 3): matches ranked by confidence (their score); with fewer than ``k``
    matches, all of them. Average the curves of several pairs for the benchmark's curve.

    Args:
        match_iou: ``(M,)`` IoU of each match with its ground truth.
        confidence: ``(M,)`` the matches' scores (ties ranked by index: stable sort).
        k_max: the largest ``k``.

    Returns:
        ``(k_max,)`` mean IoUs (NaN where ``M = 0``).

    Example:
        >>> miou_at_k(torch.tensor([0.2, 0.8, 0.5]), torch.tensor([0.1, 0.9, 0.5]), 4)
        tensor([0.8000, 0.6500, 0.5000, 0.5000])
    """
    check_shape(confidence, (match_iou.shape[0],), "confidence")
    if match_iou.numel() == 0:
        return torch.full((k_max,), float("nan"))
    order = confidence.double().argsort(descending=True, stable=True)
    ranked = match_iou.double()[order]
    csum = ranked.cumsum(0)
    k = torch.arange(1, k_max + 1)
    n = k.clamp(max=ranked.numel())
    return (csum[n - 1] / n).float()
