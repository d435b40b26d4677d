"""SCNet: region matching with a learned appearance similarity and a trainable Hough vote.

Han, Rezende, Ham, Wong, Cho, Schmid, Ponce, *SCNet: Learning Semantic Correspondence*, ICCV
2017 (arXiv 1705.04043). Proposals (boxes) of two images are the matching primitives. A frozen
trunk, ROI pooling and a fully connected embedding (L2-normalised) give each box a feature
``c``; the appearance score of a match ``m = (r, s)`` is the rectified cosine
``f(m) = max(0, c(r) . c(s))``. The three variants:

* **SCNet-A**: ``z(m) = f(m)``.
* **SCNet-AG**: ``z(m) = f(m) * sum_m' K_mm' f(m')``: the appearance of ``m`` times the votes of
  the matches with the same offset (translation and scale), the probabilistic Hough matching
  (PHM) of Proposal Flow made trainable.
* **SCNet-AG+**: ``z(m) = f(m) * sum_m' K_mm' f_g(m')``: the votes use a second embedding.

The vote follows the authors' code (``vl_nnhoughvote.m`` / ``vl_GeoVote.m``; every constant is
cited in :func:`corrlib.hough.hough_bins` and :func:`corrlib.hough.hough_vote`, shared with
chapter 07's correspondence mining) and is written with ``index_add`` so autograd
gives its exact gradient. Boxes are ``(x0, y0, x1, y1)`` pixels of the network input (the image
resized to ``input_size``), 0-based, pixel-extent corners.

NAM (``z = f``) and PHM (the vote on fixed features) on HOG or trunk features are the untrained
baselines (:func:`box_descriptors`, :func:`proposal_scores`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, roi_align

from corrlib._check import check_choice, check_float, check_int, check_shape
from corrlib.checkpoint import (
    check_eval_settings,
    finite_metrics,
    load_state_strict,
    read_model_file,
    save_checkpoint,
)
from corrlib.geometry import tps_fit, tps_transform
from corrlib.hough import SIM_THRESH, VOTE_EPS, hough_bins, hough_kernel, hough_vote
from corrlib.models.backbones import backbone
from corrlib.models.handcrafted import hog_descriptors
from corrlib.proposals import active_proposals

__all__ = [
    "AGPLUS_MODES",
    "SCNET_FORMAT",
    "SIM_THRESH",
    "VARIANTS",
    "VOTE_EPS",
    "HOGTrunk",
    "SCNet",
    "box_descriptors",
    "export_scnet",
    "hough_bins",
    "hough_kernel",
    "hough_vote",
    "load_scnet",
    "proposal_ground_truth",
    "proposal_scores",
    "rectified_cosine",
    "scnet_hinge_loss",
    "transfer_by_proposals",
    "warp_boxes_tps",
]

#: SCNet's variants: appearance only, appearance + geometry, + a separate geometry embedding.
VARIANTS = ("A", "AG", "AG+")
#: How SCNet-AG+ trains its two embeddings: both (the paper's text), or only the geometry one
#: with the appearance embedding frozen at its random initialisation (the authors' code,
#: ``SCNet_AGplus_init.m`` / ``SCNet_train_plus.m``).
AGPLUS_MODES = ("joint", "freeze_appearance")
#: Format tag of :func:`export_scnet` files.
SCNET_FORMAT = "corrlib.scnet/1"


def rectified_cosine(
    emb_a: torch.Tensor, emb_b: torch.Tensor, rectify: bool = True
) -> torch.Tensor:
    """The appearance score ``f(r, s) = max(0, c(r) . c(s))`` of every box pair.

    Args:
        emb_a: ``(Na, D)`` unit-norm box features of image a.
        emb_b: ``(Nb, D)`` of image b.
        rectify: apply the ReLU (False: the raw cosine, as the code's SCNet-AG does).

    Returns:
        ``(Na, Nb)`` scores.
    """
    s = emb_a @ emb_b.T
    return F.relu(s) if rectify else s


def _roi_features(fmap: torch.Tensor, boxes: torch.Tensor, stride: int, pool: int) -> torch.Tensor:
    """ROI-aligned features ``(N, C * pool * pool)`` of boxes on a ``(1, C, h, w)`` map."""
    rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], 1).to(fmap.dtype)
    out = roi_align(
        fmap, rois, output_size=pool, spatial_scale=1.0 / stride, sampling_ratio=2, aligned=True
    )
    return out.flatten(1)


class HOGTrunk(nn.Module):
    """Dense HOG as a frozen "trunk" with a backbone's interface (tap ``"hog"``, stride 8, 36
    channels): :func:`corrlib.models.handcrafted.hog_descriptors` (8-pixel cells, 2 x 2 blocks,
    L2-Hys) of the image padded by 4 pixels on every side (edge values), so block ``j`` is
    centred on pixel ``8 j + 3.5`` like cell ``j`` of a stride-8 CNN map. Proposal Flow
    describes boxes by HOG; chapter 04's ``lab`` preset learns SCNet's embedding on it."""

    arch = "hog"
    taps = ("hog",)
    strides = {"hog": 8}  # noqa: RUF012 (read-only, as Backbone's)
    channels = {"hog": 36}  # noqa: RUF012
    weights_source = "hand-crafted HOG (no weights)"

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images (B, 3, H, W)`` float in ``[0, 1]`` -> ``{"hog": (B, 36, H / 8, W / 8)}``
        (for ``H``, ``W`` multiples of 8)."""
        check_shape(images, ("B", 3, "H", "W"), "images")
        x = F.pad(images.float(), (4, 4, 4, 4), mode="replicate")
        return {"hog": torch.stack([hog_descriptors(im)[0] for im in x]).to(images.device)}


class SCNet(nn.Module):
    """SCNet-A, -AG or -AG+ on a frozen trunk.

    Args:
        variant: one of :data:`VARIANTS`.
        trunk: a :func:`corrlib.models.backbones.backbone` name (paper: ``"vgg16"``, ImageNet),
            or ``"hog"`` (:class:`HOGTrunk`).
        tap: the trunk's tap (paper: VGG-16 up to ``pool4``, stride 16; here ``conv4_3``,
            stride 8, which ``pool4`` max-pools).
        trunk_weights: ``weights=`` of :func:`~corrlib.models.backbones.backbone` (``"auto"``
            warns loudly and falls back to the offline trunk without ImageNet weights).
        pool: ROI pooling output side (paper 7).
        dim: the embedding's size (paper 2048).
        input_size: ``(H, W)`` the images are resized to (paper 224 x 224).
        rectify_ag: SCNet-AG's appearance term rectified (the paper; False: the code's raw
            cosine).
        agplus_mode: one of :data:`AGPLUS_MODES`.

    Call :meth:`feature_map` once per image, then :meth:`forward` on two maps and their boxes.
    Only the embedding(s) train; the trunk is frozen (the paper: learning it too gave marginal
    gains).
    """

    def __init__(
        self,
        variant: str = "AG",
        *,
        trunk: str = "vgg16",
        tap: str = "conv4_3",
        trunk_weights: str = "auto",
        pool: int = 7,
        dim: int = 2048,
        input_size: tuple[int, int] = (224, 224),
        rectify_ag: bool = True,
        agplus_mode: str = "joint",
    ):
        super().__init__()
        check_choice(variant, "variant", VARIANTS)
        check_choice(agplus_mode, "agplus_mode", AGPLUS_MODES)
        check_int(pool, "pool", 1)
        check_int(dim, "dim", 1)
        self.trunk = (
            HOGTrunk() if trunk == "hog" else backbone(trunk, taps=(tap,), weights=trunk_weights)
        )
        if tap not in self.trunk.strides:  # "auto" fell back to the offline trunk (it warned)
            trunk, tap = self.trunk.arch, self.trunk.taps[0]
        self.tap = tap
        self.stride = self.trunk.strides[tap]
        channels = self.trunk.channels[tap]
        self.variant, self.pool = variant, pool
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.rectify_ag, self.agplus_mode = bool(rectify_ag), agplus_mode
        self.config = {
            "variant": variant,
            "trunk": trunk,
            "tap": tap,
            "pool": pool,
            "dim": dim,
            "input_size": list(self.input_size),
            "rectify_ag": bool(rectify_ag),
            "agplus_mode": agplus_mode,
        }
        self.eval_settings: dict = {}
        self.appearance = nn.Linear(channels * pool * pool, dim)
        self._init(self.appearance)
        self.geometry = None
        if variant == "AG+":
            self.geometry = nn.Linear(channels * pool * pool, dim)
            # the code copies one random FC into both (SCNet_AGplus_init.m)
            self.geometry.load_state_dict(self.appearance.state_dict())
            if agplus_mode == "freeze_appearance":
                self.appearance.requires_grad_(False)

    @staticmethod
    def _init(fc: nn.Linear) -> None:
        # the code: weights 0.01 * randn, bias 0 (SCNet_A_init.m)
        nn.init.normal_(fc.weight, std=0.01)
        nn.init.zeros_(fc.bias)

    @property
    def weights_source(self) -> str:
        """What the trunk's weights are (ImageNet, the offline fallback, or random)."""
        return self.trunk.weights_source

    @property
    def device(self) -> torch.device:
        """Where the embedding's weights are."""
        return self.appearance.weight.device

    def train(self, mode: bool = True) -> SCNet:
        super().train(mode)
        self.trunk.eval()  # frozen, always
        return self

    @torch.no_grad()
    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, 3, H, W)`` float in ``[0, 1]`` at ``input_size`` -> the trunk's
        ``(B, C, H / stride, W / stride)`` map (frozen: no gradient)."""
        return self.trunk(images)[self.tap]

    def embed(self, fmap: torch.Tensor, boxes: torch.Tensor, head: str = "appearance"):
        """Unit-norm box features ``(N, dim)`` of ``boxes (N, 4)`` (input pixels) on ``fmap
        (1, C, h, w)``, by the ``"appearance"`` or ``"geometry"`` embedding."""
        fc = self.appearance if head == "appearance" or self.geometry is None else self.geometry
        pooled = _roi_features(fmap, boxes, self.stride, self.pool)
        return F.normalize(fc(pooled), dim=1)

    def describe_boxes(self, fmap: torch.Tensor, boxes: torch.Tensor) -> dict:
        """The box features of one image, to score against many others: ``{"appearance":
        (N, dim), "geometry": (N, dim) or None}`` (the second for AG+ only)."""
        return {
            "appearance": self.embed(fmap, boxes),
            "geometry": self.embed(fmap, boxes, "geometry") if self.variant == "AG+" else None,
        }

    def score(self, desc_a: dict, desc_b: dict, boxes_a: torch.Tensor, boxes_b: torch.Tensor):
        """Scores of every match from :meth:`describe_boxes` of both images: ``{"appearance":
        f (Na, Nb), "score": z (Na, Nb)}``; ``z = f`` for SCNet-A, else ``f * G`` with the Hough
        vote ``G`` of :func:`hough_vote` on ``f`` (AG) or on the geometry embedding's
        rectified cosine ``f_g`` (AG+)."""
        rect = self.variant != "AG" or self.rectify_ag
        f = rectified_cosine(desc_a["appearance"], desc_b["appearance"], rect)
        if self.variant == "A":
            return {"appearance": f, "score": f}
        voter = f
        if self.variant == "AG+":
            voter = rectified_cosine(desc_a["geometry"], desc_b["geometry"])
        bins, valid, n = hough_bins(boxes_a, boxes_b, self.input_size, self.input_size)
        return {"appearance": f, "score": f * hough_vote(voter, bins, valid, n)}

    def forward(
        self,
        fmap_a: torch.Tensor,
        fmap_b: torch.Tensor,
        boxes_a: torch.Tensor,
        boxes_b: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Scores of every box match (:meth:`describe_boxes` of each image, then :meth:`score`).

        Args:
            fmap_a: ``(1, C, h, w)`` :meth:`feature_map` of image a.
            fmap_b: ``(1, C, h, w)`` of image b.
            boxes_a: ``(Na, 4)`` boxes of a in input pixels.
            boxes_b: ``(Nb, 4)`` boxes of b.

        Returns:
            ``{"appearance": f (Na, Nb), "score": z (Na, Nb)}``.
        """
        return self.score(
            self.describe_boxes(fmap_a, boxes_a),
            self.describe_boxes(fmap_b, boxes_b),
            boxes_a,
            boxes_b,
        )


def export_scnet(path, model: SCNet, metrics: dict | None = None, eval_settings=None):
    """Save a trained :class:`SCNet` (weights, trunk included, and the settings that rebuild it).

    Args:
        path: the file (written atomically).
        model: the model.
        metrics: numbers recorded beside the weights.
        eval_settings: how the chapter evaluates it (e.g. ``{"proposals": "ss",
            "n_proposals": 1000}``; None: ``model.eval_settings``); the ``scnet-*`` methods use
            them as defaults.

    Returns:
        The path written (tensors, numbers and strings only: ``weights_only`` loads it).
    """
    if not isinstance(model, SCNet):
        raise TypeError(f"export_scnet saves an SCNet, got {type(model).__name__}.")
    state = {
        "format": SCNET_FORMAT,
        "config": dict(model.config),
        "weights_source": model.weights_source,
        "model": model.state_dict(),
        "metrics": finite_metrics(metrics),
        "eval": check_eval_settings(
            model.eval_settings if eval_settings is None else eval_settings
        ),
    }
    return save_checkpoint(path, state)


def load_scnet(path) -> SCNet:
    """Rebuild and load (strict) an :class:`SCNet` saved by :func:`export_scnet`, in eval
    mode; its ``weights_source`` is the one recorded (the trunk's weights are in the file)."""
    state = read_model_file(path, SCNET_FORMAT, "an exported SCNet")
    cfg = dict(state["config"])
    try:
        model = SCNet(**{**cfg, "input_size": tuple(cfg["input_size"])}, trunk_weights="none")
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: its settings {cfg!r} do not build an SCNet ({e}).") from e
    load_state_strict(model, state["model"], path)
    if not isinstance(model.trunk, HOGTrunk):
        model.trunk.weights_source = str(state.get("weights_source", "unknown"))
    model.eval_settings = check_eval_settings(state.get("eval"), path)
    return model.eval()


# ------------------------------------------------------------------ untrained baselines (PF)


def box_descriptors(
    image: torch.Tensor,
    boxes: torch.Tensor,
    features: str = "hog",
    *,
    pool: int = 4,
    trunk: nn.Module | None = None,
) -> torch.Tensor:
    """Fixed unit-norm box features ``(N, D)`` for NAM and PHM (Proposal Flow's matchers).

    ``"hog"``: dense HOG (8-pixel cells, 2 x 2 blocks; :func:`hog_descriptors`) ROI-aligned to
    ``pool x pool``, as Proposal Flow describes each box by the HOG of its content; ``"trunk"``:
    the same pooling of a frozen backbone's map (``trunk``, a
    :class:`~corrlib.models.backbones.Backbone` with one tap).

    Args:
        image: ``(3, H, W)`` float in ``[0, 1]``.
        boxes: ``(N, 4)`` pixels of ``image``.
        features: ``"hog"`` or ``"trunk"``.
        pool: the pooled side.
        trunk: the backbone, for ``"trunk"``.

    Returns:
        ``(N, D)`` unit-norm rows.
    """
    check_choice(features, "features", ("hog", "trunk"))
    if features == "hog":
        desc, grid = hog_descriptors(image)
        # the map's cell j is centred at origin + 8 j; shift the boxes onto that lattice
        shift = boxes.new_tensor([grid.origin[0], grid.origin[1]] * 2) - 4.0
        fm, stride = desc[None], 8
        b = boxes - shift
    else:
        if trunk is None:
            raise ValueError("box_descriptors(features='trunk') needs trunk=<a Backbone>.")
        with torch.no_grad():
            fm = next(iter(trunk(image[None].float()).values()))
        stride, b = int(next(iter(trunk.strides.values()))), boxes
    return F.normalize(_roi_features(fm, b.float(), stride, pool), dim=1)


def proposal_scores(
    desc_a: torch.Tensor,
    desc_b: torch.Tensor,
    boxes_a: torch.Tensor,
    boxes_b: torch.Tensor,
    size_a: tuple[int, int],
    size_b: tuple[int, int],
    *,
    vote: bool,
) -> torch.Tensor:
    """NAM (``vote=False``: ``z = f``) or PHM (``z = f * G``) scores ``(Na, Nb)`` of fixed box
    features (``f`` the rectified cosine; ``G`` the vote of :func:`hough_vote`)."""
    f = rectified_cosine(desc_a, desc_b)
    if not vote:
        return f
    bins, valid, n = hough_bins(boxes_a, boxes_b, size_a, size_b)
    return f * hough_vote(f, bins, valid, n)


# ------------------------------------------------------------------------ ground truth, loss


def warp_boxes_tps(
    boxes: torch.Tensor,
    kps_a: torch.Tensor,
    kps_b: torch.Tensor,
    size_b: tuple[int, int],
    reg: float = 1e-3,
) -> torch.Tensor:
    """Where each box of image a lands in image b under a TPS fitted on the keypoints.

    As ``makeGT_PASCAL.m``: the 4 corners are warped, rounded and clipped to b, and the box is
    the mean of the 2 smallest and of the 2 largest warped x (and y). The TPS interpolates
    ``kps_a -> kps_b`` (:func:`corrlib.geometry.tps_fit` with ridge ``reg`` on keypoints
    normalised to the unit square, so 10 keypoints do not fold wildly). With fewer than 3
    keypoints, or all on one line (a TPS is undefined), a per-axis least-squares scale and shift
    stands in.

    Args:
        boxes: ``(N, 4)`` boxes of a, pixels.
        kps_a: ``(K, 2)`` keypoints of a, pixels (x, y), ``K >= 3``.
        kps_b: ``(K, 2)`` the same keypoints in b.
        size_b: image b's ``(H, W)``.
        reg: the ridge.

    Returns:
        ``(N, 4)`` boxes in b.
    """
    check_shape(kps_a, ("K", 2), "kps_a")
    check_shape(kps_b, (kps_a.shape[0], 2), "kps_b")
    hb, wb = size_b
    lo, hi = kps_a.min(0).values, kps_a.max(0).values
    scale = (hi - lo).clamp(min=1.0)
    ctrl = ((kps_a - lo) / scale)[None].double()
    centred = ctrl[0] - ctrl[0].mean(0)
    spread = torch.linalg.svdvals(centred) if kps_a.shape[0] >= 2 else centred.new_zeros(2)
    if kps_a.shape[0] < 3 or float(spread[-1]) < 1e-3 * max(float(spread[0]), 1e-12):
        return _warp_boxes_axis(boxes, kps_a, kps_b, size_b)
    params = tps_fit(ctrl, kps_b[None].double(), reg=reg)
    x0, y0, x1, y1 = boxes.double().unbind(1)
    corners = torch.stack(
        [
            torch.stack([x0, y0], 1),
            torch.stack([x1, y0], 1),
            torch.stack([x0, y1], 1),
            torch.stack([x1, y1], 1),
        ],
        1,
    )  # (N, 4, 2)
    warped = tps_transform(((corners.reshape(-1, 2) - lo) / scale)[None], ctrl, params)[0]
    warped = warped.reshape(-1, 4, 2).round()
    warped[..., 0] = warped[..., 0].clamp(0, wb)
    warped[..., 1] = warped[..., 1].clamp(0, hb)
    xs, ys = warped[..., 0].sort(1).values, warped[..., 1].sort(1).values
    out = torch.stack(
        [xs[:, :2].mean(1), ys[:, :2].mean(1), xs[:, 2:].mean(1), ys[:, 2:].mean(1)], 1
    )
    return out.to(boxes.dtype)


def _warp_boxes_axis(boxes, kps_a, kps_b, size_b) -> torch.Tensor:
    """The fallback of :func:`warp_boxes_tps` when a TPS is undefined (fewer than 3 keypoints,
    or all on one line): per axis, a least-squares scale and shift of the keypoints' coordinates
    (a shift alone along an axis where they do not spread), then round and clip."""
    hb, wb = size_b
    out = boxes.double().clone()
    for axis, cols in ((0, (0, 2)), (1, (1, 3))):
        a, b = kps_a[:, axis].double(), kps_b[:, axis].double()
        if a.numel() >= 2 and float(a.max() - a.min()) > 1.0:
            s = float(((a - a.mean()) * (b - b.mean())).sum() / ((a - a.mean()) ** 2).sum())
        else:
            s = 1.0
        t = float(b.mean() - s * a.mean())
        lo, hi = (out[:, cols[0]] * s + t), (out[:, cols[1]] * s + t)
        limit = wb if axis == 0 else hb
        out[:, cols[0]] = torch.minimum(lo, hi).round().clamp(0, limit)
        out[:, cols[1]] = torch.maximum(lo, hi).round().clamp(0, limit)
    return out.to(boxes.dtype)


def proposal_ground_truth(
    boxes_a: torch.Tensor,
    boxes_b: torch.Tensor,
    kps_a: torch.Tensor,
    kps_b: torch.Tensor,
    object_box_a: torch.Tensor,
    size_b: tuple[int, int],
    *,
    ioa: float = 0.75,
    reg: float = 1e-3,
) -> dict[str, torch.Tensor]:
    """Ground truth for proposal matches (the code's ``PF-PASCAL-code``).

    Args:
        boxes_a: ``(Na, 4)`` proposals of a.
        boxes_b: ``(Nb, 4)`` proposals of b.
        kps_a: ``(K, 2)`` keypoints of a.
        kps_b: ``(K, 2)`` the same keypoints in b.
        object_box_a: ``(4,)`` the object's box in a.
        size_b: image b's ``(H, W)``.
        ioa: active proposals lie at least this much inside the object box.
        reg: the TPS ridge (:func:`warp_boxes_tps`).

    Returns:
        ``{"gt_boxes": (Na, 4), "iou": (Na, Nb), "active": (Na,) bool}``: each proposal of a
        warped into b, its IoU with every proposal of b, and which proposals of a are active
        (:func:`corrlib.proposals.active_proposals`).
    """
    gt = warp_boxes_tps(boxes_a, kps_a, kps_b, size_b, reg)
    return {
        "gt_boxes": gt,
        "iou": box_iou(gt, boxes_b),
        "active": active_proposals(boxes_a, object_box_a, kps_a, ioa),
    }


def scnet_hinge_loss(
    scores: torch.Tensor,
    iou: torch.Tensor,
    active: torch.Tensor,
    *,
    iou_pos: float = 0.5,
    iou_neg: float = 0.2,
    margin: float = 1.0,
    negatives: str = "hardest",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict]:
    """SCNet's hinge loss on the scores of the active rows, as coded (``vl_nnpfloss.m``).

    Positives ``P``: ``IoU > iou_pos``. For a row with ``n_i`` positives, its negatives ``N`` are
    the ``n_i`` highest-*scoring* columns with ``IoU <= iou_neg`` (fewer if fewer exist);
    ``negatives="random"`` draws them uniformly among those columns instead (``generator``).
    ``L = (sum_P max(0, margin - z) + sum_N max(0, margin + z)) / (2 sum_i n_i)``. The code's
    thresholds are 0.5/0.2; the paper's text gives 0.6/0.4.

    Args:
        scores: ``(Na, Nb)`` final scores ``z``.
        iou: ``(Na, Nb)`` IoU of each proposal of a's ground-truth box with each of b's.
        active: ``(Na,)`` bool, the rows that enter the loss.
        iou_pos: positives above this IoU.
        iou_neg: negatives at or below it.
        margin: the hinge margin.
        negatives: ``"hardest"`` (the code) or ``"random"``.
        generator: the random draw of ``"random"``.

    Returns:
        ``(loss, logs)``: the scalar (0 with a gradient path when no row has a positive) and
        ``{"positives": int, "negatives": int, "pos_score": float, "neg_score": float}``.
    """
    check_shape(iou, tuple(scores.shape), "iou")
    check_shape(active, (scores.shape[0],), "active")
    check_float(iou_neg, "iou_neg", 0.0, 1.0)
    check_float(iou_pos, "iou_pos", iou_neg, 1.0)
    pos = (iou > iou_pos) & active[:, None]
    n_pos = pos.sum(1)
    cand = (iou <= iou_neg) & active[:, None]
    check_choice(negatives, "negatives", ("hardest", "random"))
    # the n_i highest-scoring (or randomly ranked) candidates of each row (selection only)
    key = scores.detach()
    if negatives == "random":
        key = torch.rand(scores.shape, generator=generator).to(scores.device)
    ranked = torch.where(cand, key, torch.full_like(key, -math.inf))
    order = ranked.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    )
    neg = cand & (rank < n_pos[:, None])
    total = int(n_pos.sum())
    logs = {"positives": total, "negatives": int(neg.sum())}
    if total == 0:
        logs.update(pos_score=0.0, neg_score=0.0)
        return scores.sum() * 0.0, logs
    loss = (F.relu(margin - scores[pos]).sum() + F.relu(margin + scores[neg]).sum()) / (2 * total)
    logs["pos_score"] = float(scores[pos].detach().mean())
    logs["neg_score"] = float(scores[neg].detach().mean()) if neg.any() else 0.0
    return loss, logs


# --------------------------------------------------------------------------- keypoint transfer


def transfer_by_proposals(
    points: torch.Tensor, boxes_a: torch.Tensor, boxes_b: torch.Tensor, scores: torch.Tensor
) -> torch.Tensor:
    """Move points of image a into b by their most confident containing proposal match.

    Each box ``i`` of a is matched to ``k*(i) = argmax_k z[i, k]`` with confidence
    ``z[i, k*(i)]``. A point takes, among the boxes of a that contain it, the one with the highest
    confidence, and is mapped box to box (``(p - a0) / (a1 - a0) * (b1 - b0) + b0``): Proposal
    Flow's densification at that pixel, without its smoothing. A point inside no box uses the
    box whose centre is nearest.

    Args:
        points: ``(P, 2)`` pixels of a, (x, y).
        boxes_a: ``(Na, 4)``.
        boxes_b: ``(Nb, 4)``.
        scores: ``(Na, Nb)``.

    Returns:
        ``(P, 2)`` pixels of b.
    """
    check_shape(points, ("P", 2), "points")
    check_shape(scores, (boxes_a.shape[0], boxes_b.shape[0]), "scores")
    conf, best = scores.max(1)
    x, y = points[:, 0:1].T, points[:, 1:2].T  # (1, P)
    inside = (
        (x >= boxes_a[:, 0:1])
        & (x <= boxes_a[:, 2:3])
        & (y >= boxes_a[:, 1:2])
        & (y <= boxes_a[:, 3:4])
    )  # (Na, P)
    centres = (boxes_a[:, :2] + boxes_a[:, 2:]) / 2
    dist = torch.cdist(points.double(), centres.double())  # (P, Na)
    # confidence where the box contains the point; else a rank below every containing box
    # by distance (nearest first)
    key = torch.where(inside.T, conf.double()[None].expand_as(dist), -1e6 - dist)
    pick = key.argmax(1)
    a, b = boxes_a[pick], boxes_b[best[pick]]
    rel = (points - a[:, :2]) / (a[:, 2:] - a[:, :2]).clamp(min=1e-6)
    return b[:, :2] + rel * (b[:, 2:] - b[:, :2])
