"""Chapter 01 recipe: learn to compare patches (MC-CNN, DeepCompare, DeepDesc) on real pairs.

Training pairs come from the Middlebury 2014 Motorcycle stereo pair (scikit-image) and synthetic
warps of scikit-image photographs; test pairs from two *held-out* sources with real ground truth:
the Middlebury 2006 Aloe stereo pair and the graffiti viewpoint pair with its homography
(OpenCV samples). Pairs follow MC-CNN's sampling (Zbontar & LeCun, JMLR 2016, Sec. 3.1): a
positive within ``p_hi`` pixels of the true match, a negative ``n_lo..n_hi`` pixels away.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from corrlib._check import check_choice
from corrlib.data import (
    PatchPairs,
    SyntheticPairs,
    load_aloe,
    load_graffiti,
    load_motorcycle,
    sample_homography_pairs,
    sample_stereo_pairs,
    sample_synthetic_pairs,
    skimage_photos,
)
from corrlib.losses import contrastive_hinge, hard_mining, label_hinge, margin_ranking_hinge
from corrlib.metrics import bad_pixel_rate, fpr_at_recall, pr_auc
from corrlib.models.patch import PATCH_MODELS, PatchModel, patch_model
from corrlib.stereo import (
    census_cost_volume,
    cost_volume_from_features,
    cost_volume_from_pairs,
    disparity_wta,
    zncc_cost_volume,
)
from corrlib.train import TrainConfig, Trainer, load_checkpoint, save_checkpoint

__all__ = [
    "HANDCRAFTED_PATCH_SCORES",
    "PatchData",
    "PatchPool",
    "build_patch_data",
    "export_patch_model",
    "handcrafted_patch_scores",
    "load_patch_model",
    "patch_loss",
    "patch_size_for",
    "stereo_disparity",
    "train_patch_model",
    "verification_metrics",
    "verification_scores",
]

#: photographs used to make synthetic training pairs (never PF-WILLOW/TSS images)
TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@dataclass
class PatchPool:
    """Training pairs of several sources stacked at one patch size, paired by reference.

    ``a``, ``b``: ``(N, 1, P, P)``; ``label``: ``(N,)`` bool; ``pos``, ``neg``: ``(M,)`` row indices
    such that ``pos[j]`` and ``neg[j]`` share their reference patch (MC-CNN's example pairs).
    """

    a: torch.Tensor
    b: torch.Tensor
    label: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor

    @staticmethod
    def from_pairs(sets: list[PatchPairs], size: int) -> PatchPool:
        a, b, label, pos, neg, base = [], [], [], [], [], 0
        for s in sets:
            pa, pb = s.patches(size)
            n_pos = int(s.label.sum())
            if not (s.label[:n_pos].all() and not s.label[n_pos:].any()) or len(s.label) != 2 * n_pos:
                raise ValueError("PatchPool needs pair sets with positives first and one negative per positive.")
            a.append(pa)
            b.append(pb)
            label.append(s.label)
            pos.append(torch.arange(n_pos) + base)
            neg.append(torch.arange(n_pos) + base + n_pos)
            base += len(s.label)
        return PatchPool(torch.cat(a), torch.cat(b), torch.cat(label), torch.cat(pos), torch.cat(neg))

    def batch_fn(self, batch_size: int):
        """A resumable ``batch_fn(step, generator)`` for :class:`corrlib.train.Trainer`.

        Each batch holds ``batch_size // 2`` references: their positives first, then their negatives.
        """
        half = batch_size // 2

        def fn(step: int, gen: torch.Generator) -> dict:
            j = torch.randint(len(self.pos), (half,), generator=gen)
            rows = torch.cat((self.pos[j], self.neg[j]))
            return {"a": self.a[rows], "b": self.b[rows], "label": self.label[rows]}

        return fn


@dataclass
class PatchData:
    """Everything chapter 01 trains and tests on (see :func:`build_patch_data`)."""

    train: list[PatchPairs]
    test: dict[str, PatchPairs]
    stereo_train: object
    stereo_test: object
    graffiti: object
    info: dict = field(default_factory=dict)


def build_patch_data(cfg: dict, data_root=None, seed: int = 0) -> PatchData:
    """Sample the train and held-out test pairs of chapter 01 from ``cfg`` (a preset config).

    Train: Motorcycle (stereo, scale ``cfg["train_stereo_scale"]``) and synthetic warps of
    :data:`TRAIN_PHOTOS`. Test: Aloe (stereo, ``cfg["test_stereo_scale"]``) and graffiti
    (homography). Train and test images are disjoint.
    """
    g = torch.Generator().manual_seed(seed)
    sampling = {"p_hi": cfg["p_hi"], "n_lo": cfg["n_lo"], "n_hi": cfg["n_hi"]}
    moto = load_motorcycle(scale=cfg["train_stereo_scale"])
    synth = SyntheticPairs(skimage_photos(TRAIN_PHOTOS), size=(160, 160), kind="mixed", strength=0.4, n_pairs=cfg["synthetic_images"], n_kps=64, seed=seed)
    train = [
        sample_stereo_pairs(moto, cfg["n_train_stereo"], generator=g, **sampling),
        sample_synthetic_pairs(synth, cfg["n_train_synthetic"], generator=g, **sampling),
    ]
    aloe = load_aloe(data_root, scale=cfg["test_stereo_scale"])
    graf = load_graffiti(data_root)
    test = {
        "aloe (stereo)": sample_stereo_pairs(aloe, cfg["n_test"], generator=g, **sampling),
        "graffiti (homography)": sample_homography_pairs(graf, cfg["n_test"], generator=g, **sampling),
    }
    info = {
        "train": f"Motorcycle {tuple(moto.size)} + {cfg['synthetic_images']} synthetic warps of {', '.join(TRAIN_PHOTOS)}",
        "test": f"Aloe {tuple(aloe.size)} and graffiti 1->3",
        "n_train": sum(len(t) for t in train),
        "n_test": {k: len(v) for k, v in test.items()},
    }
    return PatchData(train, test, moto, aloe, graf, info)


def patch_size_for(arch: str, cfg: dict) -> int:
    """MC-CNN compares patches of its receptive field; the other families ``cfg["patch_size"]``."""
    check_choice(arch, "arch", PATCH_MODELS)
    return cfg["mccnn_patch"] if arch.startswith("mccnn") else cfg["patch_size"]


def _model_kwargs(arch: str, cfg: dict) -> dict:
    if arch == "mccnn-fast":
        return {"layers": (cfg["mccnn_patch"] - 1) // 2}
    if arch == "mccnn-accurate":
        return {"layers": (cfg["mccnn_patch"] - 1) // 2, "fc_units": cfg["mccnn_fc_units"]}
    if arch == "deepdesc":
        return {"patch_size": cfg["patch_size"], "width_mult": cfg["width_mult"]}
    return {"patch_size": cfg["patch_size"], "width_mult": cfg["width_mult"]}  # the kind is the registry name


def build_model(arch: str, cfg: dict) -> PatchModel:
    """The registered model ``arch`` at the preset's sizes."""
    kw = _model_kwargs(arch, cfg)
    return patch_model(arch, **kw)


def patch_loss(arch: str, model: PatchModel, batch: dict, *, margin: float = 0.2, desc_margin: float = 4.0, mining: float = 1.0):
    """The loss each paper trains with, on a batch of positives then negatives.

    MC-CNN fast: hinge on the score difference of the pair sharing a reference (margin 0.2);
    MC-CNN accurate: binary cross-entropy; DeepCompare: hinge on labels +-1; DeepDesc: L2
    distance for positives, ``max(0, C - d)`` for negatives, keeping the hardest ``1/mining``.
    Returns ``(loss, logs)``.
    """
    a, b, label = batch["a"], batch["b"], batch["label"]
    out = model(a, b)
    half = len(label) // 2
    if arch == "mccnn-fast":
        loss = margin_ranking_hinge(out[:half], out[half:], margin)
    elif arch == "mccnn-accurate":
        loss = F.binary_cross_entropy_with_logits(out, label.float())
    elif arch == "deepdesc":
        per_pair = contrastive_hinge(out, label, desc_margin, reduction="none")
        loss, _ = hard_mining(per_pair, label, ratio_pos=mining, ratio_neg=mining)
    else:
        loss = label_hinge(out, label)
    with torch.no_grad():
        score = model.match_score(a, b) if model.output == "distance" else out
        acc = ((score[:half].unsqueeze(1) > score[half:].unsqueeze(0)).float().mean()).item()
    return loss, {"rank_acc": acc}


def train_patch_model(
    arch: str,
    cfg: dict,
    pool: PatchPool,
    *,
    ckpt_path=None,
    seed: int = 0,
    device: str = "auto",
    mining: float = 1.0,
    progress: bool = False,
    steps: int | None = None,
):
    """Train one architecture with :class:`corrlib.train.Trainer`; returns ``(model, history, seconds)``.

    Resumes from ``ckpt_path`` if a checkpoint is there (finished runs return at once).
    """
    model = build_model(arch, cfg)
    opt = cfg["optim"].get(arch, cfg["optim"]["default"])
    config = TrainConfig(
        steps=steps or cfg["steps"].get(arch, cfg["steps"]["default"]),
        lr=opt["lr"], optimizer=opt["optimizer"], momentum=opt.get("momentum", 0.9),
        weight_decay=opt.get("weight_decay", 0.0), schedule=opt.get("schedule", "cosine"),
        step_size=opt.get("step_size"), gamma=opt.get("gamma", 0.1),
        log_every=cfg["log_every"], ckpt_every=cfg["ckpt_every"], seed=seed, device=device,
    )
    trainer = Trainer(
        model, lambda m, batch: patch_loss(arch, m, batch, mining=mining), pool.batch_fn(cfg["batch_size"]),
        config, ckpt_path=ckpt_path, progress=progress,
    )
    t0 = time.perf_counter()
    history = trainer.fit(resume=True)
    model.eval()
    return model, history, time.perf_counter() - t0


@torch.no_grad()
def verification_scores(model: PatchModel, pairs: PatchPairs, size: int, batch: int = 2048) -> torch.Tensor:
    """``match_score`` of every pair (higher = more alike): ``(N,)``."""
    model.eval()
    a, b = pairs.patches(size)
    device = next(model.parameters()).device
    return torch.cat([model.match_score(a[i : i + batch].to(device), b[i : i + batch].to(device)).cpu() for i in range(0, len(a), batch)])


def _census_bits(p: torch.Tensor) -> torch.Tensor:
    centre = p[..., p.shape[-2] // 2, p.shape[-1] // 2][..., None, None]
    return (p < centre).flatten(1)


#: hand-crafted patch similarities (higher = more alike) on ``(N, 1, P, P)`` patches
HANDCRAFTED_PATCH_SCORES = {
    "ssd": lambda a, b: -((a - b) ** 2).flatten(1).sum(1),
    "zncc": lambda a, b: F.cosine_similarity((a - a.mean((2, 3), keepdim=True)).flatten(1), (b - b.mean((2, 3), keepdim=True)).flatten(1), dim=1, eps=1e-6),
    "census": lambda a, b: -(_census_bits(a) != _census_bits(b)).float().sum(1),
}


def handcrafted_patch_scores(pairs: PatchPairs, kind: str, size: int) -> torch.Tensor:
    """Similarity of each pair by a hand-crafted measure: ``ssd``, ``zncc`` or census Hamming."""
    check_choice(kind, "kind", HANDCRAFTED_PATCH_SCORES)
    a, b = pairs.patches(size)
    return HANDCRAFTED_PATCH_SCORES[kind](a, b)


def verification_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """FPR95 (false-positive rate at 95 % recall; lower is better) and PR-AUC (average precision)."""
    return {"fpr95": float(fpr_at_recall(scores, labels, 0.95)), "pr_auc": float(pr_auc(scores, labels))}


@torch.no_grad()
def stereo_disparity(method, pair, max_disp: int, *, window: int = 0) -> torch.Tensor:
    """Winner-takes-all disparity ``(H, W)`` of the left image.

    ``method``: a trained MC-CNN (fast: cosine of dense features; accurate: its learned decision
    on every disparity), or ``"census"``/``"zncc"`` (hand-crafted costs, radius 4 = 9x9 windows,
    like MC-CNN's 9x9 patches; ``window`` sums scores over a box as classic aggregation would).
    """
    if isinstance(method, str):
        check_choice(method, "method", ("census", "zncc"))
        volume_fn = census_cost_volume if method == "census" else zncc_cost_volume
        vol = volume_fn(pair.left, pair.right, max_disp, radius=4, window=window)
        vol = vol if vol.dim() == 4 else vol[None]
        return disparity_wta(vol)[0]
    model = method.eval()
    pad = (model.receptive_field - 1) // 2
    device = next(model.parameters()).device
    left = F.pad(pair.left[None, None], (pad,) * 4, mode="replicate").to(device)
    right = F.pad(pair.right[None, None], (pad,) * 4, mode="replicate").to(device)
    fl, fr = model.features(left), model.features(right)
    if model.output == "similarity":
        vol = cost_volume_from_features(fl, fr, max_disp)
    else:
        vol = cost_volume_from_pairs(fl, fr, max_disp, model.decision)
    return disparity_wta(vol)[0].cpu()


def stereo_errors(disp: torch.Tensor, pair) -> dict:
    """Middlebury bad-pixel rates (> 1 px and > 3 px) over the valid ground truth."""
    return {f"bad{t:g}": float(bad_pixel_rate(disp, pair.disparity, pair.valid, t)) for t in (1.0, 3.0)}


def export_patch_model(path, arch: str, cfg: dict, model: PatchModel, metrics: dict | None = None) -> Path:
    """Save a trained model with what is needed to rebuild it (``load_patch_model``)."""
    state = {
        "arch": arch,
        "kwargs": _model_kwargs(arch, cfg),
        "model": model.state_dict(),
        "metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)},
    }
    return save_checkpoint(path, state)


def load_patch_model(path) -> PatchModel:
    """Rebuild and load (strict) a model saved by :func:`export_patch_model`, in eval mode.

    The returned model has an ``arch`` attribute (its :data:`PATCH_MODELS` name).
    """
    state = load_checkpoint(path)
    if "arch" not in state or "kwargs" not in state:
        raise ValueError(f"{path} is not an exported patch model (no 'arch'/'kwargs'); export it with export_patch_model.")
    model = patch_model(state["arch"], **state["kwargs"])
    model.load_state_dict(state["model"], strict=True)
    model.arch = state["arch"]  # which registry entry it is (used by corrlib.eval)
    return model.eval()
