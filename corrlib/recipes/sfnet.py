"""Chapter 06 recipe: train SFNet from foreground masks and evaluate it on real benchmarks.

Training pairs are images with foreground masks, each deformed by a random warp
(:func:`corrlib.data.masked_pairs`; affine by default, TPS as an option). The mask source is
PASCAL VOC 2012 (:class:`corrlib.data.VOCMasks`, the paper's data, downloadable) or, offline,
:class:`corrlib.data.FashionComposites`: real Fashion-MNIST product photographs with exact masks
composited onto real photographs (training and test items and backgrounds disjoint; never a
PF-WILLOW or TSS image). Object pixels that a warp pushes out of the other image are removed
from both masks (the paper's rule), so the mask loss never asks for a match that cannot exist.

The frozen trunk's features of the whole pool are computed once (:class:`PairPool`), so a
training step runs only the adaptation layers, the correlation, the argmax and the losses.
:data:`VARIANTS` are the ablations: the full model, a plain soft argmax instead of the kernel
soft argmax, and each loss term removed; ``"hard-argmax"`` is the full model evaluated with a
hard argmax (it cannot be trained: a hard argmax has no gradient).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from corrlib._check import check_choice
from corrlib.data import (
    TSS,
    DatasetNotFoundError,
    FashionComposites,
    PairPool,
    VOCMasks,
    iter_tss,
    masked_pairs,
    pfpascal_voc_ids,
    photometric_jitter,
    resolve_data_root,
)
from corrlib.eval import transfer_mask
from corrlib.exercises import as_number, run_student
from corrlib.metrics import mask_iou
from corrlib.models.sfnet import LOSS_WEIGHTS, SFNet, sfnet, sfnet_loss
from corrlib.recipes._common import (
    LabImageNet,
    TrainingConfig,
    config_getter,
    make_presets,
    optim,
)
from corrlib.train import Trainer, seed_everything

__all__ = [
    "CHAPTER",
    "EVAL_ONLY",
    "LAB_IMAGENET",
    "MASK_SOURCES",
    "ONLINE_PAIRS",
    "PRESETS",
    "TRAINABLE",
    "VARIANTS",
    "Config",
    "build_model",
    "build_online",
    "build_pool",
    "cache_trunk_features",
    "check_box_soft_argmax",
    "check_central_smoothness",
    "config",
    "evaluate_mask_transfer",
    "evaluate_synthetic",
    "foreground_epe",
    "make_batch_fn",
    "train_main",
    "train_sfnet",
    "transfer_mask",
    "variant_settings",
]

#: Trainable ablation rows: (argmax, loss weights).
VARIANTS = ("full", "soft-argmax", "no-mask-loss", "no-flow-loss", "no-smooth-loss")
_SETTINGS = {
    "full": ("kernel", {}),
    "soft-argmax": ("soft", {}),
    "no-mask-loss": ("kernel", {"mask": 0.0}),
    "no-flow-loss": ("kernel", {"flow": 0.0}),
    "no-smooth-loss": ("kernel", {"smooth": 0.0}),
}
#: Rows evaluated from the full model without training: another argmax, or no training at all.
EVAL_ONLY = ("hard-argmax", "untrained")
#: Where training masks come from.
MASK_SOURCES = ("fashion", "voc")
CHAPTER = "06_sfnet"


@dataclass(frozen=True, kw_only=True)
class Config(TrainingConfig):
    """Chapter 06's settings; the defaults are SFNet's (Lee et al., CVPR 2019, as in the
    authors' code): PASCAL VOC 2012 segmentation masks, 320 x 320, affine warps; Adam, lr 3e-5,
    batch 16, 40 epochs (lr x 0.2 at epoch 30); frozen ImageNet ResNet-101 (layer3, layer4); two
    residual adaptation blocks (5x5, 3x3); sigma 5, beta 0.02 (inverse 50); loss weights mask 3 /
    flow 16 / smooth 0.5; masks binarised at 0.1. Our warp family
    (:func:`corrlib.geometry.sample_random_warp`, strength 0.5) replaces theta = I + N(0, 0.15^2).

    ``source``: mask source (:data:`MASK_SOURCES`); ``images``/``pairs``: training images and
    pooled pairs (``test_*``: held out); ``cache_features``: compute the frozen trunk's features
    of the pool once (else online pairs with fresh warps, flips and ``jitter``); ``train_trunk``:
    also fine-tune the trunk (an experiment). ``interrupt_at``: the notebook stops the main run
    there and resumes it. ``eval_size``: the image size at evaluation. ``exclude_pfpascal``: VOC
    training images leave out PF-PASCAL's val and test images (the authors' code; needs the
    PF-PASCAL pair lists).
    """

    EVAL_FIELDS: ClassVar[tuple[str, ...]] = (
        "variants",
        "test_images",
        "test_pairs",
        "interrupt_at",
        "willow_limit",
        "tss_subsets",
        "tss_limit",
        "eval_size",
        "n_examples",
    )

    variants: tuple = VARIANTS
    source: str = "voc"
    images: int = 1464
    pairs: int = 64  # online training: only the pool shown in the notebook
    test_images: int = 200
    test_pairs: int = 200
    cache_features: bool = False
    jitter: float = 0.1
    train_trunk: bool = False
    size: tuple = (320, 320)
    kind: str = "affine"
    strength: float = 0.5
    arch: str = "resnet101"
    trunk_weights: str = "imagenet"
    #: leave PF-PASCAL's val and test images out of the VOC training masks (the authors' code)
    exclude_pfpascal: bool = True
    kernels: tuple = (5, 3)
    blocks: int = 2
    sigma: float = 5.0
    beta: float = 0.02
    mask_threshold: float = 0.1
    loss_weights: dict | None = None  # None: LOSS_WEIGHTS
    batch_size: int = 16
    # 1464 VOC train images / 16 = 92 steps an epoch: 40 epochs, lr x 0.2 after epoch 30
    steps: dict = field(default_factory=lambda: {"default": 3660})
    optim: dict = field(
        default_factory=lambda: {
            "default": optim("adam", 3e-5, schedule="step", step_size=2745, gamma=0.2)
        }
    )
    log_every: int = 50
    ckpt_every: int = 500
    interrupt_at: int | None = None
    willow_limit: int | None = None
    tss_subsets: tuple = ("FG3DCar", "JODS", "PASCAL")
    tss_limit: int | None = None
    eval_size: tuple = (320, 320)
    #: the ablation over 3 seeds (mean ± standard error; :mod:`corrlib.stats`)
    seeds: int = 3
    n_examples: int = 3


PRESETS = make_presets(
    Config(),
    # 600 composites (160 px objects on 192 px crops of real photographs), one affine warp each; the
    # trunk's features of the pool are computed once (no photometric jitter then); offline backbone
    # (strides 4, 8) on a 24 x 24 grid; 3x3 adaptation (5x5 costs 2x here); every variant trains
    # the same 70 steps (about 20 s each on a 2-core CPU), over 3 seeds (15 runs)
    lab=dict(
        source="fashion",
        images=600,
        pairs=600,
        test_images=64,
        test_pairs=64,
        cache_features=True,
        jitter=0.0,
        size=(192, 192),
        arch="offline",
        trunk_weights="auto",
        kernels=(3, 3),
        batch_size=8,
        steps={"default": 70},
        optim={"default": optim("adam", 1e-3, schedule="cosine")},
        log_every=10,
        ckpt_every=35,
        interrupt_at=35,
        eval_size=(192, 192),
    ),
    smoke=dict(
        source="fashion",
        images=8,
        pairs=8,
        test_images=4,
        test_pairs=4,
        cache_features=True,
        jitter=0.0,
        size=(64, 64),
        arch="offline",
        trunk_weights="offline",
        kernels=(3, 3),
        blocks=1,
        batch_size=2,
        steps={"default": 3},
        optim={"default": optim("adam", 1e-3)},
        log_every=1,
        ckpt_every=2,
        interrupt_at=2,
        willow_limit=6,
        tss_subsets=("JODS",),
        tss_limit=1,
        eval_size=(64, 64),
        n_examples=2,
        seeds=2,
    ),
)


#: The ``lab`` setting when torchvision's ImageNet ResNet-101 is in the torch hub cache: the paper's
#: frozen trunk (``layer3`` and ``layer4``; a 12 x 12 grid at 192 px) in place of the offline one.
#: The paper's adaptation (two residual 5x5 and 3x3 blocks of 1024 and 2048 channels: 128 M
#: trainable parameters, 1.3 GB per checkpoint with Adam's state, measured) cannot train 10 runs on
#: a laptop CPU; one 1x1 block per tap (5.3 M parameters, 0.2 s a step at batch 8 on 2 cores,
#: measured) can. Two seeds and 100 PF-WILLOW pairs keep the evaluation of every model, each
#: running ResNet-101 on every image, within the 10 minutes.
LAB_IMAGENET = LabImageNet(
    "resnet101",
    {
        "arch": "resnet101",
        "trunk_weights": "imagenet",
        "kernels": (1, 1),
        "blocks": 1,
        "images": 400,
        "pairs": 400,
        "seeds": 2,
        "willow_limit": 100,
    },
    "ResNet-101 layer3 + layer4 (the paper's frozen trunk) with one 1x1 adaptation block per "
    "tap, 400 pairs, 2 seeds, 100 PF-WILLOW pairs",
)

#: ``config(preset)``: the chapter's :class:`Config` at a preset (a deep copy; frozen). At
#: ``lab``, :data:`LAB_IMAGENET` applies when the ImageNet file is in the torch hub cache.
config = config_getter(PRESETS, LAB_IMAGENET)


def variant_settings(variant: str, weights: dict | None = None) -> tuple[str, dict]:
    """``(argmax, loss weights)`` of a trainable ``variant`` (``weights``: the base weights).

    Args:
        variant: one of :data:`VARIANTS`.
        weights: the base loss weights ``{"mask", "flow", "smooth"}`` (None:
            :data:`corrlib.models.sfnet.LOSS_WEIGHTS`).

    Returns:
        ``(argmax, weights)``: ``"kernel"`` or ``"soft"``, and a new dict of the base weights with
        the variant's dropped term set to 0.
    """
    check_choice(variant, "variant", VARIANTS)
    argmax, drop = _SETTINGS[variant]
    return argmax, {**(weights or LOSS_WEIGHTS), **drop}


# ------------------------------------------------------------------------------------------ data


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def cache_trunk_features(pool: PairPool, model: SFNet, batch_size: int = 32) -> PairPool:
    """Compute ``model``'s frozen trunk features of every image of ``pool`` once (on its device).

    Every variant shares the frozen trunk, so a training step then runs only the adaptation
    layers, the correlation, the argmax and the losses.

    Args:
        pool: the pairs, uint8 ``src``/``trg`` ``(N, 3, H, W)`` (e.g. :func:`build_pool`).
        model: an :class:`~corrlib.models.sfnet.SFNet`; its
            :meth:`~corrlib.models.sfnet.SFNet.trunk_features` run on its parameters' device.
        batch_size: images per trunk call.

    Returns:
        ``pool`` itself, with ``feats_src``/``feats_trg`` ``{tap: (N, C_t, h_t, w_t)}`` float16
        on the CPU (taps finer than the correlation grid are pooled to it).
    """
    return pool.cache_features(
        model.trunk_features, device=_device_of(model), batch_size=batch_size
    )


def _voc_images(cfg: Config, data_root, split: str) -> VOCMasks:
    """VOC 2012's masked images of ``split`` (``train``; ``test`` reads VOC's ``val``). With
    ``cfg.exclude_pfpascal`` the training images leave out every image of PF-PASCAL's val and
    test lists (as SFNet's code does), which needs those lists: without them it is an error that
    says how to get them or how to turn the exclusion off."""
    if split != "train":
        return VOCMasks(data_root, split="val")
    exclude = None
    if cfg.exclude_pfpascal:
        try:
            exclude = pfpascal_voc_ids(data_root)
        except DatasetNotFoundError as e:
            raise DatasetNotFoundError(
                "SFNet's VOC training images must leave out PF-PASCAL's val and test images "
                "(cfg.exclude_pfpascal=True, as the authors' code does), but the PF-PASCAL pair "
                f"lists are missing: {str(e).splitlines()[0]} Fetch them with "
                "PFPascal(root, download=True), or set cfg.replace(exclude_pfpascal=False) for "
                "a run that is not evaluated on PF-PASCAL."
            ) from e
    return VOCMasks(data_root, split="train", exclude=exclude)


def build_pool(
    cfg: Config, split: str = "train", *, source: str | None = None, data_root=None, seed: int = 0
) -> PairPool:
    """The pairs of a preset ``cfg`` from a mask ``source``.

    ``split="train"`` or ``"test"`` (held-out objects and backgrounds / VOC's ``val``).
    ``cfg`` keys: ``images`` (how many masked images), ``pairs``, ``size``, ``kind``
    (``"affine"`` or ``"tps"``), ``strength``.

    Args:
        cfg: the chapter's :class:`Config` (its fields used: ``source``, ``images``, ``pairs``
            for ``"train"``, ``test_images``, ``test_pairs`` for ``"test"``, ``size``, ``kind``,
            ``strength``).
        split: ``"train"`` or ``"test"``.
        source: the mask source, one of :data:`MASK_SOURCES` (None: ``cfg.source``).
        data_root: the folder that holds the data (None: ``$CORRLIB_DATA``).
        seed: the seed of the images and warps (the test split adds 1000).

    Returns:
        A :class:`PairPool` of ``N`` pairs at ``(H, W) = cfg.size``: ``src``/``trg`` uint8
        ``(N, 3, H, W)``, ``flow``/``trg_flow`` ``(N, 2, H, W)`` (pixels, each on its source's
        grid), ``flow_valid``/``trg_flow_valid`` and ``src_mask``/``trg_mask`` ``(N, H, W)``
        bool; each mask keeps only the object pixels that land inside the other image.
    """
    source = source or cfg.source
    check_choice(source, "source", MASK_SOURCES)
    check_choice(split, "split", ("train", "test"))
    size = tuple(cfg.size)
    n_images = cfg.images if split == "train" else cfg.test_images
    n_pairs = cfg.pairs if split == "train" else cfg.test_pairs
    offset = 0 if split == "train" else 1000
    if source == "fashion":
        images = FashionComposites(
            data_root, split=split, n_images=n_images, size=size, seed=seed + offset
        )
    else:
        images = _voc_images(cfg, data_root, split)
    ds = masked_pairs(
        images,
        n_pairs,
        size,
        kind=cfg.kind,
        strength=cfg.strength,
        seed=seed + offset,
        max_images=n_images,
        n_kps=0,
    )
    info = (
        f"{n_pairs} {cfg.kind} warps (strength {cfg.strength}) of {n_images} {source} images at "
        f"{size} ({split})"
    )
    pool = PairPool.from_dataset(ds, n_pairs, info)
    pool.src_mask = (
        pool.src_mask & pool.flow_valid
    )  # object pixels that stay inside the other image
    pool.trg_mask = pool.trg_mask & pool.trg_flow_valid
    return pool


def build_online(
    cfg: Config, split: str = "train", *, source: str | None = None, data_root=None, seed: int = 0
):
    """Fresh warps every step (the paper draws new ones every epoch): a lazy pair source.

    Holds the masked images (up to ``cfg.images``) in memory and draws pair ``i`` on demand,
    deterministic in ``(seed, i)``; :func:`make_batch_fn` picks random indices among 2**62, so
    no pair repeats in practice and resuming is exact. Use it with ``cfg.cache_features``
    False: the trunk then runs in every step (on the GPU: the ``paper`` preset).

    Args:
        cfg: the chapter's :class:`Config` (its fields used: ``source``, ``images``, ``size``,
            ``kind``, ``strength``).
        split: ``"train"`` or ``"test"`` (VOC: ``val``).
        source: the mask source, one of :data:`MASK_SOURCES` (None: ``cfg.source``).
        data_root: the folder that holds the data (None: ``$CORRLIB_DATA``).
        seed: the seed of the images and warps.

    Returns:
        A lazy :class:`corrlib.data.SyntheticPairs` of :data:`ONLINE_PAIRS` pairs at
        ``(H, W) = cfg.size``; item ``i``: ``src_img``/``trg_img`` float32 ``(3, H, W)`` in
        ``[0, 1]``, ``flow``/``trg_flow`` ``(2, H, W)`` (pixels, each on its source's grid),
        ``flow_valid``/``trg_flow_valid`` and ``src_mask``/``trg_mask`` ``(H, W)`` bool, ...
    """
    source = source or cfg.source
    check_choice(source, "source", MASK_SOURCES)
    check_choice(split, "split", ("train", "test"))
    size = tuple(cfg.size)
    if source == "fashion":
        images = FashionComposites(
            data_root, split=split, n_images=cfg.images, size=size, seed=seed
        )
    else:
        images = _voc_images(cfg, data_root, split)
    return masked_pairs(
        images,
        ONLINE_PAIRS,
        size,
        kind=cfg.kind,
        strength=cfg.strength,
        seed=seed,
        max_images=cfg.images,
        n_kps=0,
    )


#: Number of distinct pairs an online source can draw (indices are sampled, never enumerated).
ONLINE_PAIRS = 2**62


def _flip_pair(item: dict) -> dict:
    """Mirror a pair left-right: images, masks, both flows (x component negated) and keypoints."""
    out = dict(item)
    for k in ("src_img", "trg_img", "src_mask", "trg_mask", "flow_valid", "trg_flow_valid"):
        out[k] = item[k].flip(-1)
    for k in ("flow", "trg_flow"):
        if k in item:
            flow = item[k].flip(-1).clone()
            flow[0] = -flow[0]
            out[k] = flow
    w = item["src_img"].shape[-1]
    for k in ("src_kps", "trg_kps"):
        if k in item and len(item[k]):
            kps = item[k].clone()
            kps[:, 0] = w - 1 - kps[:, 0]
            out[k] = kps
    return out


def make_batch_fn(data, cfg: Config) -> Callable:
    """A resumable ``batch_fn(step, generator)`` for :class:`corrlib.train.Trainer`.

    ``data`` is a :class:`PairPool` with cached features (:func:`cache_trunk_features`; each
    pair in a random direction) or an online source of :func:`build_online` (fresh warps, a
    left-right flip with probability 0.5 and photometric jitter ``cfg.jitter`` per image,
    as the paper augments). A batch: ``feats_src``/``feats_trg`` ``{tap: (B, C, h, w)}``
    float32 (cached) or ``src``/``trg`` ``(B, 3, H, W)`` (online), ``mask_src``/``mask_trg``
    ``(B, H, W)`` float, ``flow`` ``(B, 2, H, W)`` and ``flow_valid`` (for the logged error
    only).

    Args:
        data: a :class:`PairPool` with ``feats_src``/``feats_trg`` and masks (:func:`build_pool`,
            then :func:`cache_trunk_features`; else ``ValueError``), or a source of
            :func:`build_online`.
        cfg: the chapter's :class:`Config` (its fields used: ``batch_size``, ``jitter`` (online
            only)).

    Returns:
        ``fn(step, generator) -> batch`` of ``B = cfg.batch_size`` pairs, every draw from
        ``generator``; ``batch`` is a dict with ``feats_src``/``feats_trg``
        ``{tap: (B, C_t, h_t, w_t)}`` float32 (cached) or ``src``/``trg`` float ``(B, 3, H, W)``
        in ``[0, 1]`` (online); ``mask_src``/``mask_trg`` float ``(B, H, W)`` in ``{0, 1}``
        (foreground that lands inside the other image); ``flow`` ``(B, 2, H, W)`` src->trg on
        the src grid, in pixels; ``flow_valid`` bool ``(B, H, W)``: foreground source pixels
        whose flow is known (in a cached batch, False for the whole of a reversed pair, whose
        ``flow`` is still the forward one).
    """
    bsz = cfg.batch_size
    if not isinstance(data, PairPool):
        return _online_batch_fn(data, cfg)
    pool = data
    if not pool.feats_src:
        raise ValueError(
            "The pool has no cached trunk features; call cache_trunk_features(pool, model) first, "
            "or train online (build_online)."
        )

    def fn(step: int, g: torch.Generator) -> dict:
        idx = torch.randint(len(pool), (bsz,), generator=g)
        rev = torch.rand(bsz, generator=g) < 0.5
        fa = {
            t: torch.where(
                rev.view(-1, 1, 1, 1), pool.feats_trg[t][idx], pool.feats_src[t][idx]
            ).float()
            for t in pool.feats_src
        }
        fb = {
            t: torch.where(
                rev.view(-1, 1, 1, 1), pool.feats_src[t][idx], pool.feats_trg[t][idx]
            ).float()
            for t in pool.feats_src
        }
        ma = torch.where(rev.view(-1, 1, 1), pool.trg_mask[idx], pool.src_mask[idx]).float()
        mb = torch.where(rev.view(-1, 1, 1), pool.src_mask[idx], pool.trg_mask[idx]).float()
        # the exact flow is known for the forward direction only; reversed pairs are not measured
        valid = pool.flow_valid[idx] & ~rev.view(-1, 1, 1) & pool.src_mask[idx]
        return {
            "feats_src": fa,
            "feats_trg": fb,
            "mask_src": ma,
            "mask_trg": mb,
            "flow": pool.flow[idx],
            "flow_valid": valid,
        }

    return fn


def _online_batch_fn(ds, cfg: Config) -> Callable:
    bsz, amount = cfg.batch_size, cfg.jitter

    def fn(step: int, g: torch.Generator) -> dict:
        items = []
        for _ in range(bsz):
            it = ds[int(torch.randint(len(ds), (), generator=g))]
            if bool(torch.rand((), generator=g) < 0.5):
                it = _flip_pair(it)
            items.append(it)
        return {
            "src": torch.stack([photometric_jitter(it["src_img"], amount, g) for it in items]),
            "trg": torch.stack([photometric_jitter(it["trg_img"], amount, g) for it in items]),
            "mask_src": torch.stack([(it["src_mask"] & it["flow_valid"]).float() for it in items]),
            "mask_trg": torch.stack(
                [(it["trg_mask"] & it["trg_flow_valid"]).float() for it in items]
            ),
            "flow": torch.stack([it["flow"] for it in items]),
            "flow_valid": torch.stack([it["flow_valid"] & it["src_mask"] for it in items]),
        }

    return fn


# ------------------------------------------------------------------------------ model, loss, train


def build_model(
    cfg: Config,
    *,
    argmax: str = "kernel",
    trunk_weights: str | None = None,
    variant: str | None = None,
) -> SFNet:
    """SFNet at the preset's settings, recording ``variant``.

    Args:
        cfg: the chapter's :class:`Config` (its fields used: ``arch`` (the backbone),
            ``trunk_weights``, ``kernels``, ``blocks``, ``sigma``, ``beta``, ``size``).
        argmax: the model's argmax, one of :data:`corrlib.models.sfnet.ARGMAX_MODES`.
        trunk_weights: the backbone's weights (None: ``cfg.trunk_weights``).
        variant: a label recorded with the model (the ablation row), or None.

    Returns:
        A new :class:`~corrlib.models.sfnet.SFNet` (frozen trunk, randomly initialised
        adaptation layers): ``model(src, trg)`` with ``(B, 3, H, W)`` images returns an
        :class:`~corrlib.models.sfnet.SFNetOutput`.
    """
    return sfnet(
        arch=cfg.arch,
        trunk_weights=trunk_weights or cfg.trunk_weights,
        kernels=cfg.kernels,
        blocks=cfg.blocks,
        sigma=cfg.sigma,
        beta=cfg.beta,
        argmax=argmax,
        image_size=tuple(cfg.size),
        variant=variant,
    )


def foreground_epe(out, batch) -> float:
    """Mean end-point error (pixels) of the source->target flow on measured foreground cells.

    Args:
        out: the model's :class:`~corrlib.models.sfnet.SFNetOutput` on ``batch``.
        batch: a batch of :func:`make_batch_fn`: ``mask_src`` ``(B, H, W)`` (gives the image
            size), ``flow`` ``(B, 2, H, W)`` src->trg in pixels and ``flow_valid`` ``(B, H, W)``
            bool.

    Returns:
        The mean Euclidean ``||flow_pred - flow||`` over the ``flow_valid`` pixels, the
        predicted flow upsampled to ``(H, W)``
        (:meth:`~corrlib.models.sfnet.SFNetOutput.flow_pixels`); NaN when no pixel is valid.
    """
    size = tuple(batch["mask_src"].shape[-2:])
    pred = out.flow_pixels("st", size)
    err = (pred - batch["flow"]).norm(dim=1)
    valid = batch["flow_valid"]
    return float(err[valid].mean()) if valid.any() else float("nan")


def train_sfnet(
    variant: str,
    cfg: Config,
    pool: PairPool,
    ckpt_path=None,
    seed: int = 0,
    device: str = "auto",
    *,
    steps: int | None = None,
    stop_after: int | None = None,
    progress: bool = False,
    on_log: Callable[[list], None] | None = None,
) -> tuple[SFNet, list[dict], float]:
    """Train one ablation ``variant`` with :class:`corrlib.train.Trainer`.

    ``pool``: a :class:`PairPool` with cached trunk features of a model of the same ``cfg`` (the
    trunk is frozen and identical for every variant), or an online source of :func:`build_online`
    (the trunk runs in every step). ``cfg.train_trunk`` (an experiment, not the paper) also
    fine-tunes the trunk; it needs online data. Resumes from ``ckpt_path``; ``stop_after`` ends
    this call early (an interruption: call again to resume). The log has the loss terms and
    ``epe_px``, the flow's error on foreground pixels of the pairs (ground truth used only to
    measure).

    Args:
        variant: one of :data:`VARIANTS`.
        cfg: the chapter's :class:`Config` (its fields used: ``loss_weights``,
            ``mask_threshold``, ``train_trunk``, ``size``, ``steps``, ``optim``, ``log_every``,
            ``ckpt_every`` and those of :func:`build_model` and :func:`make_batch_fn`).
        pool: the training data, as :func:`make_batch_fn` takes it.
        ckpt_path: the checkpoint file (None: no checkpoints, no resume).
        seed: seeds the initialisation and the batches.
        device: ``"auto"`` or a torch device string.
        steps: the number of steps (None: ``cfg.steps``).
        stop_after: stop after that many steps of this call (None: run to the end).
        progress: show a progress bar.
        on_log: called with the history after each new row (e.g. a live plot).

    Returns:
        ``(model, history, seconds)``: the trained :class:`~corrlib.models.sfnet.SFNet` in
        ``eval()`` mode on the training device, the Trainer's history rows (``{"step", "loss",
        "lr", "seconds", "mask", "flow", "smooth", "epe_px"}``) and this call's wall time.
    """
    argmax, weights = variant_settings(variant, cfg.loss_weights)
    seed_everything(seed)
    model = build_model(cfg, argmax=argmax, variant=variant)
    if cfg.train_trunk:  # fine-tune the trunk too (an experiment; SFNet freezes it)
        if isinstance(pool, PairPool):
            raise ValueError(
                "cfg.train_trunk needs online training data (build_online): cached trunk features "
                "cannot change."
            )
        model.trunk.requires_grad_(True)
    config = cfg.train_config(variant, seed=seed, device=device, steps=steps)

    size = tuple(cfg.size)

    def loss_fn(m, batch):
        if "feats_src" in batch:
            out = m.forward_features(batch["feats_src"], batch["feats_trg"], size)
        else:
            out = m(batch["src"], batch["trg"])
        loss, terms = sfnet_loss(
            out, batch["mask_src"], batch["mask_trg"], weights, cfg.mask_threshold
        )
        with torch.no_grad():
            terms["epe_px"] = foreground_epe(out, batch)
        return loss, terms

    trainer = Trainer(
        model,
        loss_fn,
        make_batch_fn(pool, cfg),
        config,
        ckpt_path=ckpt_path,
        progress=progress,
        on_log=on_log,
    )
    t0 = time.perf_counter()
    history = trainer.fit(resume=True, stop_after=stop_after)
    model.eval()
    return model, history, time.perf_counter() - t0


# ------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate_synthetic(
    model: SFNet,
    pool: PairPool,
    alphas=(0.05, 0.1),
    argmax: str | None = None,
    batch_size: int = 16,
) -> dict:
    """Flow accuracy on held-out masked pairs with exact ground truth (foreground pixels).

    ``pck@<alpha>``: share of foreground source pixels (that stay inside the target) whose
    predicted match is within ``alpha * max(H, W)`` of the truth; ``epe_px`` the mean error;
    ``identity_pck@<alpha>`` scores the zero flow on the same pixels. Uses the pool's cached
    features when present. ``argmax`` overrides the model's (e.g. ``"hard"``).

    Args:
        model: an :class:`~corrlib.models.sfnet.SFNet` (runs on its parameters' device).
        pool: held-out pairs with masks (:func:`build_pool` with ``split="test"``, optionally
            :func:`cache_trunk_features` of the same trunk); scored src->trg with ``flow``
            ``(N, 2, H, W)`` in pixels on ``flow_valid & src_mask`` ``(N, H, W)``.
        alphas: PCK thresholds, as fractions of ``max(H, W)``.
        argmax: ``"kernel"``, ``"soft"`` or ``"hard"`` (None: the model's).
        batch_size: pairs per forward pass.

    Returns:
        ``{"epe_px": float, "pixels": int, "pck@<alpha>": float, "identity_pck@<alpha>": float,
        ...}`` (one pair of keys per alpha, ``f"{alpha:g}"``), errors in pixels of the target.
    """
    h, w = pool.size
    dev = _device_of(model)
    errs, zero_errs = [], []
    for i in range(0, len(pool), batch_size):
        sl = slice(i, i + batch_size)
        if pool.feats_src:
            fa = {t: f[sl].to(dev).float() for t, f in pool.feats_src.items()}
            fb = {t: f[sl].to(dev).float() for t, f in pool.feats_trg.items()}
            out = model.forward_features(fa, fb, pool.size, argmax, reverse=False)
        else:
            src, trg = pool.src[sl].to(dev).float() / 255, pool.trg[sl].to(dev).float() / 255
            out = model(src, trg, argmax, reverse=False)
        pred = out.flow_pixels("st", pool.size).cpu()
        valid = pool.flow_valid[sl] & pool.src_mask[sl]
        gt = pool.flow[sl]
        errs.append((pred - gt).norm(dim=1)[valid])
        zero_errs.append(gt.norm(dim=1)[valid])
    err, zero = torch.cat(errs), torch.cat(zero_errs)
    res = {"epe_px": float(err.mean()), "pixels": int(err.numel())}
    for a in alphas:
        res[f"pck@{a:g}"] = float((err <= a * max(h, w)).float().mean())
        res[f"identity_pck@{a:g}"] = float((zero <= a * max(h, w)).float().mean())
    return res


@torch.no_grad()
def evaluate_mask_transfer(
    method, data_root=None, subsets=("FG3DCar", "JODS", "PASCAL"), limit: int | None = None
) -> dict:
    """Mean IoU, over TSS pairs and both directions, of :func:`transfer_mask` against the truth.

    The truth is the true source mask. Also ``"identity_iou"``: the target mask resized onto the
    source (no motion). Returns ``{"iou": ..., "identity_iou": ..., "rows": n, "per_subset":
    {subset: iou}}``.

    Args:
        method: a :class:`corrlib.eval.CorrespondenceMethod` with a dense flow (see
            :func:`transfer_mask`).
        data_root: the folder that holds ``TSS/`` (None: ``$CORRLIB_DATA``).
        subsets: the TSS subsets evaluated.
        limit: pairs per subset, from the first (None: all); each pair counts twice (both
            directions).

    Returns:
        ``{"iou": float, "identity_iou": float, "rows": int, "per_subset": {subset: float}}``:
        IoUs in ``[0, 1]`` averaged over the ``rows`` pair directions (``per_subset``: the
        method's IoU only, subsets with rows only). Raises ``ValueError`` when no pair was
        evaluated.
    """
    root = resolve_data_root(data_root)
    ious, ids, per = [], [], {}
    for subset in subsets:
        sub = []
        for s, ka, kb in iter_tss(TSS(root, subsets=(subset,)), limit):
            pred = transfer_mask(
                method, s["src_img"], s["trg_img"], s["trg_mask"], src_key=ka, trg_key=kb
            )
            sub.append(float(mask_iou(pred, s["src_mask"].bool())))
            still = (
                F.interpolate(
                    s["trg_mask"].float()[None, None],
                    size=tuple(s["src_mask"].shape),
                    mode="nearest",
                )[0, 0]
                > 0.5
            )
            ids.append(float(mask_iou(still, s["src_mask"].bool())))
        ious += sub
        if sub:
            per[subset] = float(sum(sub) / len(sub))
    if not ious:
        raise ValueError(
            f"No TSS pair was evaluated in {root} for subsets {tuple(subsets)} with limit={limit}; "
            "give a limit >= 1 and existing subsets."
        )
    return {
        "iou": sum(ious) / len(ious),
        "identity_iou": sum(ids) / len(ids),
        "rows": len(ious),
        "per_subset": per,
    }


def check_box_soft_argmax(fn: Callable[[torch.Tensor, int, float], torch.Tensor]) -> str:
    """``fn(scores (H, W), radius, beta) -> (2,)`` (x, y): the kernel soft argmax with its Gaussian
    changed into a box: the window is 1 on cells within ``radius`` cells of the hard argmax in both
    x and y, 0 elsewhere; then ``softmax(window * scores / beta)`` and the expected cell.

    Args:
        fn: the student's box soft argmax, ``fn(scores, radius, beta)`` with ``scores`` float
            ``(H, W)`` (one source cell's correlation over the target grid), ``radius`` an int
            in cells and ``beta`` the softmax temperature, returning the expected cell ``(2,)``
            (x, y) in cells (0-based, cell centres at integers).

    Returns:
        A one-line verdict: ``"pass: ..."``, ``"wrong: ..."`` (including swapped (y, x)) or
        ``"not attempted yet: ..."``.
    """
    scores = torch.zeros(12, 16)
    scores[3, 4], scores[9, 13], scores[4, 5], scores[3, 7] = 1.0, 0.97, 0.9, 0.8
    py, px = 3, 4  # the hard argmax (row, column)
    weights = torch.zeros(12, 16)
    for y in range(12):  # independent reference: an explicit loop
        for x in range(16):
            inside = abs(x - px) <= 2 and abs(y - py) <= 2
            weights[y, x] = math.exp((scores[y, x].item() if inside else 0.0) / 0.05)
    weights = weights / weights.sum()
    want = torch.stack(
        ((weights.sum(0) * torch.arange(16.0)).sum(), (weights.sum(1) * torch.arange(12.0)).sum())
    )
    got, err = run_student(fn, scores.clone(), 2, 0.05)
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
        return (
            f"wrong: got ({got[0]:.3f}, {got[1]:.3f}), expected ({want[0]:.3f}, {want[1]:.3f}); "
            "the box keeps cells with |x - x*| <= r and |y - y*| <= r (the 0.8 at 3 cells is "
            "outside for r = 2)."
        )
    return (
        "pass: your box window keeps the near neighbour and drops both the far peak and the cell 3 "
        "columns away."
    )


def check_central_smoothness(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> str:
    """``fn(flow (B, 2, h, w), mask (B, 1, h, w))``: the smoothness term above changed to the
    authors' central differences ``(F(x+1) - F(x-1)) / 2`` (and in y), zero outside the grid,
    then ``sum M (|dF/dx| + |dF/dy|) / (sum M + 1)`` per pair and the batch mean.

    Args:
        fn: the student's smoothness term, ``fn(flow, mask)`` with ``flow`` float
            ``(B, 2, h, w)`` on the correlation grid and ``mask`` float ``(B, 1, h, w)`` in
            ``{0, 1}``, returning a scalar (a 0-dim tensor or a float).

    Returns:
        A one-line verdict: ``"pass: ..."``, ``"wrong: ..."`` (more than 1e-4 from an
        explicit-loop reference) or ``"not attempted yet: ..."``.
    """
    g = torch.Generator().manual_seed(0)
    flow = torch.randn(2, 2, 6, 7, generator=g)
    mask = (torch.rand(2, 1, 6, 7, generator=g) > 0.4).float()

    def at(b, c, y, x):
        return flow[b, c, y, x].item() if 0 <= y < 6 and 0 <= x < 7 else 0.0

    per_pair = []
    for b in range(2):  # independent reference: explicit loops
        total = 0.0
        for y in range(6):
            for x in range(7):
                if mask[b, 0, y, x]:
                    for c in range(2):
                        total += (
                            abs(at(b, c, y, x + 1) - at(b, c, y, x - 1)) / 2
                            + abs(at(b, c, y + 1, x) - at(b, c, y - 1, x)) / 2
                        )
        per_pair.append(total / (mask[b].sum().item() + 1))
    want = sum(per_pair) / 2
    got, err = run_student(fn, flow.clone(), mask.clone())
    if err:
        return err
    value, err = as_number(got.detach() if isinstance(got, torch.Tensor) else got)
    if err:
        return err
    if not abs(value - want) <= 1e-4:
        return (
            f"wrong: got {value:.4f}, expected {want:.4f}: (F(x+1) - F(x-1)) / 2 with zeros "
            "outside the grid, L1 over both components, weighted by the mask, divided by (sum of "
            "the mask + 1) per pair, averaged over the batch."
        )
    return (
        "pass: central differences, as in the authors' code; try them on a flow that alternates "
        "from cell to cell."
    )


# ------------------------------------------------------------------------------ corrlib train

#: What ``corrlib train --chapter 06_sfnet --variant ...`` trains (the first is the default).
TRAINABLE = VARIANTS


def train_main(run, variant: str | None = None, *, progress: bool = True):
    """Train one variant as the notebook does (cached trunk features when the preset caches
    them, else online pairs; same checkpoint file, so the notebook reuses it) and export it for
    ``corrlib eval --method sfnet``. Returns a :class:`~corrlib.recipes._common.TrainedModel`."""
    from corrlib.models.sfnet import export_sfnet
    from corrlib.recipes._common import TrainedModel, export_on_main

    name = variant or TRAINABLE[0]
    check_choice(name, "variant", TRAINABLE)
    cfg = run.cfg
    if cfg.cache_features:
        pool = build_pool(cfg, "train", data_root=run.root, seed=run.seed)
        data = cache_trunk_features(pool, build_model(cfg).to(run.device))
    else:
        data = build_online(cfg, "train", data_root=run.root, seed=run.seed)
    ckpt = run.ckpt_dir / f"{name}.ckpt"
    model, history, seconds = train_sfnet(
        name, cfg, data, ckpt, run.seed, run.device, progress=progress
    )
    exported = export_on_main(export_sfnet, run.ckpt_dir / f"{name}.pt", model)
    return TrainedModel(model, history, seconds, ckpt, exported, "sfnet")
