"""Chapter 03 recipe: train the Universal Correspondence Network on warps of real photographs.

Training pairs are random warps (affine, homography, thin-plate spline) of random crops of
scikit-image's photographs (:data:`TRAIN_PHOTOS`), so every pixel has an exact match: positives
are source pixels with a valid flow mapped by the flow, and negatives are random target cells
or hard negatives mined on the fly (Choy et al., *Universal Correspondence Network*, NeurIPS
2016). The held-out synthetic test uses other photographs (scikit-learn's ``china`` and
``flower``); the real benchmarks are PF-WILLOW (PCK) and TSS (flow accuracy) through the
registered ``ucn`` method. No PF-WILLOW or TSS image is ever used for training.

The ablation of the paper (its Sec. 4) in three rows, :data:`VARIANTS`: random negatives,
hard negatives, hard negatives + convolutional spatial transformer.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from corrlib._check import check_choice
from corrlib.data import SyntheticPairs, photometric_jitter, skimage_photos
from corrlib.matching import FeatureGrid, sample_descriptors
from corrlib.models.ucn import (
    UCN,
    correspondence_contrastive_loss,
    mine_hard_negatives,
    random_negatives,
)
from corrlib.train import TrainConfig, Trainer, load_checkpoint, save_checkpoint, seed_everything

__all__ = [
    "HELDOUT_PHOTOS",
    "TRAIN_PHOTOS",
    "VARIANTS",
    "PairPool",
    "build_pair_pool",
    "build_ucn",
    "evaluate_synthetic",
    "evaluate_ucn_pfwillow",
    "evaluate_ucn_tss",
    "export_ucn",
    "heldout_photos",
    "heldout_pool",
    "load_ucn",
    "make_batch_fn",
    "random_crops",
    "train_pool",
    "train_ucn",
    "ucn_loss",
]

#: The ablation rows: (negatives, spatial transformer) of each variant.
VARIANTS = ("random-negatives", "hard-negatives", "hard-negatives+st")
_VARIANT_SETTINGS = {
    "random-negatives": {"mining": "random", "use_st": False},
    "hard-negatives": {"mining": "hard", "use_st": False},
    "hard-negatives+st": {"mining": "hard", "use_st": True},
}

#: scikit-image photographs the training warps are cut from (as chapter 01).
TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
#: scikit-learn's bundled photographs, held out for the synthetic test.
HELDOUT_PHOTOS = ("china", "flower")

CKPT_FORMAT = "corrlib.ucn/1"


# ------------------------------------------------------------------------------------------ data


def heldout_photos() -> list[torch.Tensor]:
    """scikit-learn's bundled ``china`` and ``flower`` photographs as uint8 ``(3, H, W)``."""
    from sklearn.datasets import load_sample_images

    imgs = load_sample_images().images
    return [torch.from_numpy(a[..., :3].copy()).permute(2, 0, 1).contiguous() for a in imgs]


def random_crops(images: Sequence[torch.Tensor], n: int, *, min_frac: float = 0.4, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """``n`` random square crops of the ``(3, H, W)`` ``images`` (round-robin over the images).

    Each side is a uniform fraction in ``[min_frac, 1]`` of the image's shorter side, placed
    uniformly: more scales and contents than one warp per photograph gives.
    """
    if n < 1 or not 0 < min_frac <= 1:
        raise ValueError(f"Arguments n >= 1 and min_frac in (0, 1] are required, got {n} and {min_frac}.")
    out = []
    for i in range(n):
        img = images[i % len(images)]
        h, w = img.shape[-2:]
        frac = min_frac + (1 - min_frac) * float(torch.rand((), generator=generator))
        side = max(16, int(min(h, w) * frac))
        y0 = int(torch.randint(0, h - side + 1, (), generator=generator))
        x0 = int(torch.randint(0, w - side + 1, (), generator=generator))
        out.append(img[:, y0 : y0 + side, x0 : x0 + side].clone())
    return out


@dataclass
class PairPool:
    """Synthetic pairs held in memory, usable in both directions.

    ``src``/``trg``: uint8 ``(N, 3, H, W)``; ``flow``: ``(N, 2, H, W)`` src->trg on the src grid
    (pixels) with ``valid (N, H, W)`` (lands inside trg); ``trg_flow``/``trg_valid`` the same
    trg->src on the trg grid. ``info`` says what the pool was built from.
    """

    src: torch.Tensor
    trg: torch.Tensor
    flow: torch.Tensor
    valid: torch.Tensor
    trg_flow: torch.Tensor
    trg_valid: torch.Tensor
    info: str = ""

    def __len__(self) -> int:
        return self.src.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.src.shape[-2:])

    def pair(self, i: int, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(a (3, H, W) float in [0, 1], b, flow a->b (2, H, W), valid (H, W))``."""
        a, b, flow, valid = self.src[i], self.trg[i], self.flow[i], self.valid[i]
        if reverse:
            a, b, flow, valid = b, a, self.trg_flow[i], self.trg_valid[i]
        return a.float() / 255, b.float() / 255, flow, valid


def build_pair_pool(
    images: Sequence[torch.Tensor],
    n_pairs: int,
    size: tuple[int, int],
    *,
    kind: str = "mixed",
    strength: float = 0.5,
    n_crops: int = 0,
    seed: int = 0,
) -> PairPool:
    """``n_pairs`` pairs of :class:`corrlib.data.SyntheticPairs` (deterministic in ``seed``).

    With ``n_crops > 0`` the pairs are cut from that many :func:`random_crops` of ``images``.
    """
    g = torch.Generator().manual_seed(seed)
    source = random_crops(images, n_crops, generator=g) if n_crops else list(images)
    ds = SyntheticPairs(source, size=tuple(size), kind=kind, strength=strength, n_pairs=n_pairs, n_kps=0, seed=seed)
    items = [ds[i] for i in range(n_pairs)]

    def stack(key, u8=False):
        t = torch.stack([it[key] for it in items])
        return (t * 255).round().to(torch.uint8) if u8 else t

    info = f"{n_pairs} {kind} warps (strength {strength}) of {len(source)} images at {tuple(size)}"
    return PairPool(
        stack("src_img", True), stack("trg_img", True), stack("flow"), stack("flow_valid"),
        stack("trg_flow"), stack("trg_flow_valid"), info,
    )


@functools.lru_cache(maxsize=4)
def _cached_pool(key: tuple) -> PairPool:
    photos, n_pairs, size, kind, strength, n_crops, seed = key
    return build_pair_pool(skimage_photos(photos), n_pairs, size, kind=kind, strength=strength, n_crops=n_crops, seed=seed)


def train_pool(cfg: dict, seed: int = 0) -> PairPool:
    """The training pool of a preset ``cfg`` (cached in memory: the three variants share it)."""
    key = (TRAIN_PHOTOS, cfg["pool_pairs"], tuple(cfg["size"]), cfg["kind"], cfg["strength"], cfg["crops"], seed)
    return _cached_pool(key)


def heldout_pool(cfg: dict, seed: int = 0) -> PairPool:
    """The held-out synthetic test pairs of a preset ``cfg``: warps of :data:`HELDOUT_PHOTOS`.

    ``cfg["test_pairs"]`` pairs at the training size and warp distribution, cut from as many
    random crops of scikit-learn's photographs (never a training photograph).
    """
    n = cfg["test_pairs"]
    return build_pair_pool(
        heldout_photos(), n, tuple(cfg["size"]), kind=cfg["kind"], strength=cfg["strength"], n_crops=n, seed=seed + 1000
    )


def _sample_points(valid: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """``(n, 2)`` integer pixels (x, y) drawn uniformly among ``valid (H, W)``."""
    w = valid.shape[-1]
    weights = valid.flatten().double()
    if weights.sum() == 0:
        weights = torch.ones_like(weights)
    idx = torch.multinomial(weights, n, replacement=int(valid.sum()) < n, generator=g)
    return torch.stack((idx % w, idx // w), dim=-1).float()


def make_batch_fn(pool: PairPool, grid: FeatureGrid, cfg: dict) -> Callable:
    """A resumable ``batch_fn(step, generator)`` for :class:`corrlib.train.Trainer`.

    Every random draw comes from ``generator``: ``cfg["batch_size"]`` pairs of ``pool`` (each
    in a random direction), ``cfg["points"]`` source pixels with a valid flow per pair, mapped
    to the target by the exact flow, photometric jitter (``cfg["jitter"]``) and one random
    negative per positive (farther than ``cfg["radius_px"]``). ``grid`` is the model's
    :class:`FeatureGrid` (pixels -> cells). A batch: ``src``/``trg`` ``(B, 3, H, W)``,
    ``pos_src``/``pos_trg`` ``(B, P, 2)`` cells of true matches, ``neg_random`` ``(B, P, 2)``
    target cells.
    """
    h, w = pool.size
    map_size = (h // int(grid.step[1]), w // int(grid.step[0]))
    radius = cfg["radius_px"] / grid.step[0]
    bsz, n = cfg["batch_size"], cfg["points"]

    def fn(step: int, g: torch.Generator) -> dict:
        idx = torch.randint(len(pool), (bsz,), generator=g).tolist()
        reverse = (torch.rand(bsz, generator=g) < 0.5).tolist()
        src, trg, ps, pt = [], [], [], []
        for i, rev in zip(idx, reverse):
            a, b, flow, valid = pool.pair(i, rev)
            p = _sample_points(valid, n, g)  # (P, 2) pixels in a
            q = p + flow[:, p[:, 1].long(), p[:, 0].long()].T  # exact at integer pixels
            src.append(photometric_jitter(a, cfg["jitter"], g))
            trg.append(photometric_jitter(b, cfg["jitter"], g))
            ps.append(grid.to_cells(p))
            pt.append(grid.to_cells(q))
        pos_trg = torch.stack(pt)
        return {
            "src": torch.stack(src), "trg": torch.stack(trg), "pos_src": torch.stack(ps), "pos_trg": pos_trg,
            "neg_random": random_negatives(pos_trg, map_size, radius, generator=g),
        }

    return fn


# ------------------------------------------------------------------------------ model, loss, train


def build_ucn(variant: str, cfg: dict) -> UCN:
    """The UCN of an ablation ``variant`` at the preset's sizes (default trunk)."""
    check_choice(variant, "variant", VARIANTS)
    return UCN(
        dim=cfg["dim"], use_st=_VARIANT_SETTINGS[variant]["use_st"], st_kernel=cfg["st_kernel"],
        st_dilation=cfg["st_dilation"], trunk_widths=cfg["trunk_widths"],
    )


def ucn_loss(model: UCN, batch: dict, *, mining: str, margin: float, radius: float) -> tuple[torch.Tensor, dict]:
    """Correspondence contrastive loss of a batch with ``mining`` ``"hard"`` or ``"random"``.

    One negative per positive: the same source point paired with a random target cell
    (``batch["neg_random"]``) or with its hardest negative, mined on the current features
    (``radius`` in cells). Logs: mean positive and negative distances and ``nn_acc``, the
    fraction of points whose true match is nearer than every target cell outside the radius.
    """
    check_choice(mining, "mining", ("hard", "random"))
    b = batch["src"].shape[0]
    feat, _ = model(torch.cat((batch["src"], batch["trg"])))
    f_src, f_trg = feat[:b], feat[b:]
    pos_src, pos_trg = batch["pos_src"], batch["pos_trg"]
    hard = mine_hard_negatives(f_src, f_trg, pos_src, pos_trg, radius)
    neg = hard if mining == "hard" else batch["neg_random"]
    loss = correspondence_contrastive_loss(f_src, f_trg, pos_src, pos_trg, pos_src, neg, margin)
    with torch.no_grad():
        a = sample_descriptors(f_src, pos_src)
        d_pos = (a - sample_descriptors(f_trg, pos_trg)).norm(dim=-1)
        d_hard = (a - sample_descriptors(f_trg, hard)).norm(dim=-1)
        d_neg = (a - sample_descriptors(f_trg, neg)).norm(dim=-1)
    logs = {"d_pos": d_pos.mean().item(), "d_neg": d_neg.mean().item(), "nn_acc": (d_pos < d_hard).float().mean().item()}
    return loss, logs


def train_ucn(
    variant: str,
    cfg: dict,
    ckpt_path=None,
    seed: int = 0,
    device: str = "auto",
    *,
    pool: PairPool | None = None,
    steps: int | None = None,
    progress: bool = False,
) -> tuple[UCN, list[dict], float]:
    """Train one ablation ``variant`` with :class:`corrlib.train.Trainer`; returns ``(model, history, seconds)``.

    Data: ``pool`` (default :func:`train_pool` of ``cfg``); each step draws ``cfg["batch_size"]``
    pairs (either direction) and ``cfg["points"]`` positives per pair from the step's generator,
    so resuming from ``ckpt_path`` is exact. ``seconds`` is this call's wall time (the pool is
    built, or taken from the cache, before the clock starts).
    """
    check_choice(variant, "variant", VARIANTS)
    pool = pool if pool is not None else train_pool(cfg, seed)
    seed_everything(seed)
    model = build_ucn(variant, cfg)
    grid = model.feature_grid(pool.size)
    config = TrainConfig(
        steps=steps or cfg["steps"], lr=cfg["lr"], optimizer=cfg["optimizer"], momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"], schedule=cfg["schedule"], warmup_steps=cfg["warmup_steps"],
        log_every=cfg["log_every"], ckpt_every=cfg["ckpt_every"], seed=seed, device=device,
    )
    mining = _VARIANT_SETTINGS[variant]["mining"]
    radius = cfg["radius_px"] / grid.step[0]

    def loss_fn(m, batch):
        return ucn_loss(m, batch, mining=mining, margin=cfg["margin"], radius=radius)

    trainer = Trainer(model, loss_fn, make_batch_fn(pool, grid, cfg), config, ckpt_path=ckpt_path, progress=progress)
    t0 = time.perf_counter()
    history = trainer.fit(resume=True)
    model.eval()
    model.variant = variant
    return model, history, time.perf_counter() - t0


# --------------------------------------------------------------------------------- export / load


def export_ucn(path, model: UCN, variant: str | None = None, metrics: dict | None = None) -> Path:
    """Save a trained UCN (default trunk) with the config that rebuilds it (:func:`load_ucn`).

    The file holds tensors, numbers and strings only (``weights_only`` loading).
    """
    if not isinstance(model, UCN) or model.config is None:
        raise ValueError("export_ucn saves a UCN with the default trunk; a custom trunk cannot be rebuilt from a checkpoint.")
    state = {
        "format": CKPT_FORMAT,
        "config": dict(model.config),
        "variant": variant or getattr(model, "variant", None),
        "model": model.state_dict(),
        "metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)},
    }
    return save_checkpoint(path, state)


def load_ucn(path) -> UCN:
    """Rebuild and load (strict) a UCN saved by :func:`export_ucn`, in eval mode (``.variant`` set)."""
    state = load_checkpoint(path)
    if state.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path} is not an exported UCN (format {state.get('format')!r}); export it with export_ucn.")
    model = UCN(**state["config"])
    model.load_state_dict(state["model"], strict=True)
    model.variant = state.get("variant")
    return model.eval()


# ------------------------------------------------------------------------------------ evaluation


def _as_method(model_or_method, max_side: int | None = None):
    """A UCN, a checkpoint path (the registered ``ucn`` method) or a method, as a method."""
    from corrlib.eval import CorrespondenceMethod, UCNMethod, get_method

    if isinstance(model_or_method, CorrespondenceMethod):
        return model_or_method
    if isinstance(model_or_method, (str, Path)):
        return get_method("ucn", checkpoint=model_or_method, max_side=max_side)
    return UCNMethod(model=model_or_method, max_side=max_side)


@torch.no_grad()
def evaluate_synthetic(
    model_or_method,
    pool: PairPool,
    n_points: int = 128,
    alphas: Sequence[float] = (0.05, 0.1),
    *,
    seed: int = 0,
) -> dict:
    """Matching accuracy on held-out synthetic pairs with exact ground truth.

    ``model_or_method``: a :class:`UCN` (wrapped in :class:`corrlib.eval.UCNMethod` at the
    pairs' resolution) or any :class:`corrlib.eval.CorrespondenceMethod`. ``n_points`` source
    pixels with a valid flow per pair (drawn with ``seed``) are transferred; a prediction is
    correct within ``alpha * max(H, W)`` pixels. Returns ``{"pck@<alpha>": ...,
    "random_pck@<alpha>": ..., "mean_error_px": ..., "points": ...}``; ``random_pck`` scores
    uniform random predictions on the same points (chance level).
    """
    method = _as_method(model_or_method)
    g = torch.Generator().manual_seed(seed)
    h, w = pool.size
    errs, rand_errs = [], []
    for i in range(len(pool)):
        a, b, flow, valid = pool.pair(i)
        p = _sample_points(valid, n_points, g)
        gt = p + flow[:, p[:, 1].long(), p[:, 0].long()].T
        pred = method.match(a, b, p, src_key=None, trg_key=None)
        errs.append((pred.cpu() - gt).norm(dim=-1))
        rnd = torch.rand(n_points, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
        rand_errs.append((rnd - gt).norm(dim=-1))
    err, rerr = torch.cat(errs), torch.cat(rand_errs)
    out = {"points": int(err.numel()), "mean_error_px": float(err.mean())}
    for alpha in alphas:
        t = alpha * max(h, w)
        out[f"pck@{alpha:g}"] = float((err <= t).float().mean())
        out[f"random_pck@{alpha:g}"] = float((rerr <= t).float().mean())
    return out


def evaluate_ucn_pfwillow(model, data_root=None, limit: int | None = None, max_side: int | None = None, *, progress: bool = False):
    """PCK of UCN nearest-neighbour matching on PF-WILLOW (``limit``: the first pairs only).

    ``model``: a :class:`UCN` or the path of an :func:`export_ucn` checkpoint (the registered
    ``ucn`` method); images are resized to ``max_side`` (None: original). Returns a
    :class:`corrlib.eval.KeypointResult` under the ``pf-willow`` protocol.
    """
    from corrlib.data import PFWillow
    from corrlib.eval import evaluate_keypoints

    return evaluate_keypoints(_as_method(model, max_side), PFWillow(data_root), "pf-willow", limit=limit, progress=progress)


def evaluate_ucn_tss(
    model,
    data_root=None,
    max_side: int | None = None,
    *,
    subsets: Sequence[str] = ("FG3DCar", "JODS", "PASCAL"),
    limit: int | None = None,
    out_dir=None,
    progress: bool = False,
):
    """TSS flow accuracy (the kit's PCK@0.05) of dense UCN nearest-neighbour flow.

    ``model`` as in :func:`evaluate_ucn_pfwillow`; ``limit`` pairs per subset. Returns a
    :class:`corrlib.eval.TSSResult` (:func:`corrlib.eval.evaluate_tss`).
    """
    from corrlib.eval import evaluate_tss

    return evaluate_tss(_as_method(model, max_side), data_root, out_dir, subsets=tuple(subsets), limit=limit, progress=progress)
