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
from pathlib import Path

import torch
import torch.nn.functional as F

from corrlib._check import check_choice
from corrlib.models.sfnet import LOSS_WEIGHTS, SFNet, sfnet, sfnet_loss
from corrlib.train import TrainConfig, Trainer, load_checkpoint, save_checkpoint, seed_everything

__all__ = [
    "EVAL_ONLY",
    "MASK_SOURCES",
    "ONLINE_PAIRS",
    "VARIANTS",
    "PairPool",
    "build_model",
    "build_online",
    "build_pool",
    "evaluate_mask_transfer",
    "evaluate_synthetic",
    "export_sfnet",
    "load_sfnet",
    "make_batch_fn",
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
CKPT_FORMAT = "corrlib.sfnet/1"


def variant_settings(variant: str, weights: dict | None = None) -> tuple[str, dict]:
    """``(argmax, loss weights)`` of a trainable ``variant`` (``weights``: the base weights)."""
    check_choice(variant, "variant", VARIANTS)
    argmax, drop = _SETTINGS[variant]
    return argmax, {**(weights or LOSS_WEIGHTS), **drop}


# ------------------------------------------------------------------------------------------ data


@dataclass
class PairPool:
    """Masked image pairs held in memory, with the frozen trunk's features once computed.

    ``src``/``trg`` uint8 ``(N, 3, H, W)``; ``src_mask``/``trg_mask`` bool ``(N, H, W)`` (object
    pixels that leave the other image removed); ``flow`` ``(N, 2, H, W)`` src->trg pixels with
    ``flow_valid`` (the exact warp: used only to measure, never to train); ``feats_src`` /
    ``feats_trg``: ``{tap: (N, C, h, w)}`` after :meth:`cache_features`.
    """

    src: torch.Tensor
    trg: torch.Tensor
    src_mask: torch.Tensor
    trg_mask: torch.Tensor
    flow: torch.Tensor
    flow_valid: torch.Tensor
    info: str = ""
    feats_src: dict = field(default_factory=dict, repr=False)
    feats_trg: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return self.src.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.src.shape[-2:])

    @torch.no_grad()
    def cache_features(self, model: SFNet, batch_size: int = 32) -> PairPool:
        """Run ``model``'s frozen trunk (on its device) over every image once; kept float16 on the CPU."""
        device = _device_of(model)
        for name, imgs in (("feats_src", self.src), ("feats_trg", self.trg)):
            parts: dict[str, list] = {}
            for i in range(0, len(self), batch_size):
                x = imgs[i : i + batch_size].to(device).float() / 255
                for t, f in model.trunk_features(x).items():
                    parts.setdefault(t, []).append(f.half().cpu())
            setattr(self, name, {t: torch.cat(v) for t, v in parts.items()})
        return self


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def build_pool(cfg: dict, split: str = "train", *, source: str | None = None, data_root=None, seed: int = 0) -> PairPool:
    """The pairs of a preset ``cfg`` from a mask ``source`` (:data:`MASK_SOURCES`; default ``cfg["source"]``).

    ``split="train"`` or ``"test"`` (held-out objects and backgrounds / VOC's ``val``).
    ``cfg`` keys: ``images`` (how many masked images), ``pairs``, ``size``, ``kind``
    (``"affine"`` or ``"tps"``), ``strength``.
    """
    from corrlib.data import FashionComposites, VOCMasks, masked_pairs

    source = source or cfg["source"]
    check_choice(source, "source", MASK_SOURCES)
    check_choice(split, "split", ("train", "test"))
    size = tuple(cfg["size"])
    n_images = cfg["images"] if split == "train" else cfg["test_images"]
    n_pairs = cfg["pairs"] if split == "train" else cfg["test_pairs"]
    offset = 0 if split == "train" else 1000
    if source == "fashion":
        images = FashionComposites(data_root, split=split, n_images=n_images, size=size, seed=seed + offset)
    else:
        images = VOCMasks(data_root, split="train" if split == "train" else "val")
    ds = masked_pairs(images, n_pairs, size, kind=cfg["kind"], strength=cfg["strength"], seed=seed + offset, max_images=n_images, n_kps=0)
    items = [ds[i] for i in range(n_pairs)]

    def stack(key, u8=False):
        t = torch.stack([it[key] for it in items])
        return (t * 255).round().to(torch.uint8) if u8 else t

    src_mask = stack("src_mask") & stack("flow_valid")  # object pixels that stay inside the other image
    trg_mask = stack("trg_mask") & stack("trg_flow_valid")
    info = f"{n_pairs} {cfg['kind']} warps (strength {cfg['strength']}) of {n_images} {source} images at {size} ({split})"
    return PairPool(stack("src_img", True), stack("trg_img", True), src_mask, trg_mask, stack("flow"), stack("flow_valid"), info)


def build_online(cfg: dict, split: str = "train", *, source: str | None = None, data_root=None, seed: int = 0):
    """Fresh warps every step (the paper draws new ones every epoch): a lazy :class:`corrlib.data.SyntheticPairs`.

    Holds the masked images (up to ``cfg["images"]``) in memory and draws pair ``i`` on demand,
    deterministic in ``(seed, i)``; :func:`make_batch_fn` picks random indices among 2**62, so
    no pair repeats in practice and resuming is exact. Use it with ``cfg["cache_features"]``
    False: the trunk then runs in every step (on the GPU: the ``paper`` preset).
    """
    from corrlib.data import FashionComposites, VOCMasks, masked_pairs

    source = source or cfg["source"]
    check_choice(source, "source", MASK_SOURCES)
    check_choice(split, "split", ("train", "test"))
    size = tuple(cfg["size"])
    if source == "fashion":
        images = FashionComposites(data_root, split=split, n_images=cfg["images"], size=size, seed=seed)
    else:
        images = VOCMasks(data_root, split="train" if split == "train" else "val")
    return masked_pairs(images, ONLINE_PAIRS, size, kind=cfg["kind"], strength=cfg["strength"], seed=seed, max_images=cfg["images"], n_kps=0)


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


def make_batch_fn(data, cfg: dict) -> Callable:
    """A resumable ``batch_fn(step, generator)`` of ``cfg["batch_size"]`` pairs for :class:`corrlib.train.Trainer`.

    ``data`` is a :class:`PairPool` with cached features (:meth:`PairPool.cache_features`; each
    pair in a random direction) or an online source of :func:`build_online` (fresh warps, a
    left-right flip with probability 0.5 and photometric jitter ``cfg["jitter"]`` per image,
    as the paper augments). A batch: ``feats_src``/``feats_trg`` ``{tap: (B, C, h, w)}`` float32
    (cached) or ``src``/``trg`` ``(B, 3, H, W)`` (online), ``mask_src``/``mask_trg`` ``(B, H,
    W)`` float, ``flow`` ``(B, 2, H, W)`` and ``flow_valid`` (for the logged error only).
    """
    bsz = cfg["batch_size"]
    if not isinstance(data, PairPool):
        return _online_batch_fn(data, cfg)
    pool = data
    if not pool.feats_src:
        raise ValueError("The pool has no cached trunk features; call pool.cache_features(model) first, or train online (build_online).")

    def fn(step: int, g: torch.Generator) -> dict:
        idx = torch.randint(len(pool), (bsz,), generator=g)
        rev = torch.rand(bsz, generator=g) < 0.5
        fa = {t: torch.where(rev.view(-1, 1, 1, 1), pool.feats_trg[t][idx], pool.feats_src[t][idx]).float() for t in pool.feats_src}
        fb = {t: torch.where(rev.view(-1, 1, 1, 1), pool.feats_src[t][idx], pool.feats_trg[t][idx]).float() for t in pool.feats_src}
        ma = torch.where(rev.view(-1, 1, 1), pool.trg_mask[idx], pool.src_mask[idx]).float()
        mb = torch.where(rev.view(-1, 1, 1), pool.src_mask[idx], pool.trg_mask[idx]).float()
        # the exact flow is known for the forward direction only; reversed pairs are not measured
        valid = pool.flow_valid[idx] & ~rev.view(-1, 1, 1) & pool.src_mask[idx]
        return {"feats_src": fa, "feats_trg": fb, "mask_src": ma, "mask_trg": mb, "flow": pool.flow[idx], "flow_valid": valid}

    return fn


def _online_batch_fn(ds, cfg: dict) -> Callable:
    from corrlib.data import photometric_jitter

    bsz, amount = cfg["batch_size"], cfg.get("jitter", 0.0)

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
            "mask_trg": torch.stack([(it["trg_mask"] & it["trg_flow_valid"]).float() for it in items]),
            "flow": torch.stack([it["flow"] for it in items]),
            "flow_valid": torch.stack([it["flow_valid"] & it["src_mask"] for it in items]),
        }

    return fn


# ------------------------------------------------------------------------------ model, loss, train


def build_model(cfg: dict, *, argmax: str = "kernel", weights: str | None = None) -> SFNet:
    """SFNet at the preset's settings (backbone ``cfg["arch"]`` with ``cfg["weights"]``)."""
    model = sfnet(
        cfg["arch"], weights=weights or cfg["weights"], kernels=cfg.get("kernels"), blocks=cfg["blocks"],
        sigma=cfg["sigma"], beta=cfg["beta"], argmax=argmax,
    )
    model.image_size = tuple(cfg["size"])
    return model


def _foreground_epe(out, batch) -> float:
    """Mean end-point error (pixels) of the source->target flow on measured foreground cells."""
    size = tuple(batch["mask_src"].shape[-2:])
    pred = out.flow_pixels("st", size)
    err = (pred - batch["flow"]).norm(dim=1)
    valid = batch["flow_valid"]
    return float(err[valid].mean()) if valid.any() else float("nan")


def train_sfnet(
    variant: str,
    cfg: dict,
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
    """Train one ablation ``variant`` with :class:`corrlib.train.Trainer`; returns ``(model, history, seconds)``.

    ``pool``: a :class:`PairPool` with cached trunk features of a model of the same ``cfg`` (the
    trunk is frozen and identical for every variant), or an online source of :func:`build_online`
    (the trunk runs in every step). ``cfg["train_trunk"]`` (an experiment, not the paper) also
    fine-tunes the trunk; it needs online data. Resumes from ``ckpt_path``; ``stop_after`` ends this call
    early (an interruption: call again to resume). The log has the loss terms and ``epe_px``,
    the flow's error on foreground pixels of the pairs (ground truth used only to measure).
    """
    argmax, weights = variant_settings(variant, cfg.get("loss_weights"))
    seed_everything(seed)
    model = build_model(cfg, argmax=argmax)
    if cfg.get("train_trunk", False):  # fine-tune the trunk too (an experiment; SFNet freezes it)
        if isinstance(pool, PairPool):
            raise ValueError("cfg['train_trunk'] needs online training data (build_online): cached trunk features cannot change.")
        model.trunk.requires_grad_(True)
    n_steps = steps or cfg["steps"].get(variant, cfg["steps"]["default"])
    config = TrainConfig(
        steps=n_steps, lr=cfg["lr"], optimizer="adam", schedule=cfg["schedule"],
        step_size=cfg.get("step_size"), gamma=cfg.get("gamma", 0.1),
        log_every=cfg["log_every"], ckpt_every=cfg["ckpt_every"], seed=seed, device=device,
    )

    size = tuple(cfg["size"])

    def loss_fn(m, batch):
        if "feats_src" in batch:
            out = m.forward_features(batch["feats_src"], batch["feats_trg"], size)
        else:
            out = m(batch["src"], batch["trg"])
        loss, terms = sfnet_loss(out, batch["mask_src"], batch["mask_trg"], weights, cfg["mask_threshold"])
        with torch.no_grad():
            terms["epe_px"] = _foreground_epe(out, batch)
        return loss, terms

    trainer = Trainer(model, loss_fn, make_batch_fn(pool, cfg), config, ckpt_path=ckpt_path, progress=progress, on_log=on_log)
    t0 = time.perf_counter()
    history = trainer.fit(resume=True, stop_after=stop_after)
    model.eval()
    model.variant = variant
    return model, history, time.perf_counter() - t0


# --------------------------------------------------------------------------------- export / load


def export_sfnet(path, model: SFNet, cfg: dict, variant: str | None = None, metrics: dict | None = None) -> Path:
    """Save the adaptation layers and what rebuilds the model (:func:`load_sfnet`).

    The frozen trunk is not saved: it is rebuilt from ``cfg["arch"]``/``cfg["weights"]`` (the
    file records the trunk's ``weights_source`` and refuses to load onto another one).
    """
    state = {
        "format": CKPT_FORMAT,
        "arch": cfg["arch"],
        "weights": cfg["weights"],
        "trunk_arch": model.trunk.arch,
        "trunk_source": model.trunk.weights_source,
        "image_size": list(getattr(model, "image_size", cfg["size"])),
        "config": {**model.config, "kernels": list(model.config["kernels"])},
        "variant": variant or getattr(model, "variant", None),
        "adapt": model.adapt.state_dict(),
        "metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)},
    }
    if cfg["weights"] == "none" or model.trunk.trainable:  # random or fine-tuned: not rebuildable from its source
        state["trunk"] = model.trunk.state_dict()
    return save_checkpoint(path, state)


def load_sfnet(path, device="cpu") -> SFNet:
    """Rebuild an SFNet saved by :func:`export_sfnet` (eval mode; ``.variant``, ``.image_size`` set)."""
    state = load_checkpoint(path)
    if state.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path} is not an exported SFNet (format {state.get('format')!r}); export it with export_sfnet.")
    c = state["config"]
    model = sfnet(
        state["arch"], weights=state["weights"], kernels=tuple(c["kernels"]), blocks=c["blocks"],
        grid_stride=c["grid_stride"], sigma=c["sigma"], beta=c["beta"], argmax=c["argmax"],
    )
    if model.trunk.arch != state["trunk_arch"]:
        raise ValueError(
            f"{path} was trained on a {state['trunk_arch']} trunk ({state['trunk_source']}) but this machine "
            f"built {model.trunk.arch} ({model.trunk.weights_source}); place the same backbone weights "
            "(see corrlib.models.backbones) or retrain."
        )
    if "trunk" in state:
        model.trunk.load_state_dict(state["trunk"], strict=True)
    model.adapt.load_state_dict(state["adapt"], strict=True)
    model.variant = state.get("variant")
    model.image_size = tuple(state["image_size"])
    return model.to(device).eval()


# ------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate_synthetic(model: SFNet, pool: PairPool, alphas=(0.05, 0.1), argmax: str | None = None, batch_size: int = 16) -> dict:
    """Flow accuracy on held-out masked pairs with exact ground truth (foreground pixels).

    ``pck@<alpha>``: share of foreground source pixels (that stay inside the target) whose
    predicted match is within ``alpha * max(H, W)`` of the truth; ``epe_px`` the mean error;
    ``identity_pck@<alpha>`` scores the zero flow on the same pixels. Uses the pool's cached
    features when present. ``argmax`` overrides the model's (e.g. ``"hard"``).
    """
    h, w = pool.size
    dev = _device_of(model)
    errs, zero_errs = [], []
    for i in range(0, len(pool), batch_size):
        sl = slice(i, i + batch_size)
        if pool.feats_src:
            fa = {t: f[sl].to(dev).float() for t, f in pool.feats_src.items()}
            fb = {t: f[sl].to(dev).float() for t, f in pool.feats_trg.items()}
            out = model.forward_features(fa, fb, pool.size, argmax)
        else:
            out = model(pool.src[sl].to(dev).float() / 255, pool.trg[sl].to(dev).float() / 255, argmax)
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
def transfer_mask(method, src_img: torch.Tensor, trg_img: torch.Tensor, trg_mask: torch.Tensor, *, src_key=None, trg_key=None) -> torch.Tensor:
    """The source's foreground predicted by warping the target's mask with ``method``'s flow.

    ``out(p) = M_t(p + F_st(p)) > 0.5`` (bilinear; outside the target: background): what SFNet's
    mask consistency compares with the source mask. ``trg_mask (Ht, Wt)`` -> bool ``(Hs, Ws)``.
    """
    from corrlib.losses import warp_by_flow

    flow = method.flow(src_img, trg_img, src_key=src_key, trg_key=trg_key)
    return warp_by_flow(trg_mask.float()[None, None], flow[None].float())[0, 0] > 0.5


@torch.no_grad()
def evaluate_mask_transfer(method, data_root=None, subsets=("FG3DCar", "JODS", "PASCAL"), limit: int | None = None) -> dict:
    """Mean IoU, over TSS pairs and both directions, of :func:`transfer_mask` against the true source mask.

    Also ``"identity_iou"``: the target mask resized onto the source (no motion). Returns
    ``{"iou": ..., "identity_iou": ..., "rows": n, "per_subset": {subset: iou}}``.
    """
    from corrlib.data import TSS, iter_tss, resolve_data_root
    from corrlib.metrics import mask_iou

    root = resolve_data_root(data_root)
    ious, ids, per = [], [], {}
    for subset in subsets:
        sub = []
        for s, ka, kb in iter_tss(TSS(root, subsets=(subset,)), limit):
            pred = transfer_mask(method, s["src_img"], s["trg_img"], s["trg_mask"], src_key=ka, trg_key=kb)
            sub.append(float(mask_iou(pred, s["src_mask"].bool())))
            still = F.interpolate(s["trg_mask"].float()[None, None], size=tuple(s["src_mask"].shape), mode="nearest")[0, 0] > 0.5
            ids.append(float(mask_iou(still, s["src_mask"].bool())))
        ious += sub
        if sub:
            per[subset] = float(sum(sub) / len(sub))
    if not ious:
        raise ValueError(f"No TSS pair was evaluated in {root} for subsets {tuple(subsets)} with limit={limit}; give a limit >= 1 and existing subsets.")
    return {"iou": sum(ious) / len(ious), "identity_iou": sum(ids) / len(ids), "rows": len(ious), "per_subset": per}
