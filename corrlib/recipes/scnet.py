"""Chapter 04 recipe: SCNet-A, -AG and -AG+ learn region matching from keypoint-annotated pairs.

Han et al., *SCNet: Learning Semantic Correspondence*, ICCV 2017. Ground truth for proposal
matches comes from the keypoints (a TPS warps each source proposal into the target; IoU with
the target's proposals labels the matches: :func:`corrlib.models.scnet.proposal_ground_truth`),
and the hinge loss of the authors' code trains the embedding(s) on a frozen trunk.

Data by preset:

* ``lab`` / ``smoke``: the shared PF-WILLOW sub-classes, in two image-disjoint folds per
  sub-class (its first and second halves of images, sorted by name). A model trains on the
  official pairs whose two images are both in one fold and is tested on the pairs of the other
  fold, so every reported pair is made of images the model never saw; the two folds' models
  together cover the 200 within-fold pairs (of 450: the other pairs mix the folds).
* ``paper``: PF-PASCAL's training split (NC-Net's list), VGG-16 (ImageNet) at 224 x 224, 500
  proposals per image for training and 1000 for testing; tested on PF-PASCAL's test split
  (``pf-pascal`` protocol, the SCNet code's alpha at 224) and on all of PF-WILLOW (transfer).
  SCNet used Randomized Prim's proposals, which no package provides; selective search stands in
  (the paper used it for PASCAL Parts).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from corrlib._check import check_choice
from corrlib.data import PFPascal, PFWillow
from corrlib.eval import evaluate_keypoints
from corrlib.exercises import run_student
from corrlib.methods import CorrespondenceMethod
from corrlib.methods.scnet import SCNetMethod, input_image, proposals_of
from corrlib.metrics import miou_at_k, pcr_curve
from corrlib.models.scnet import (
    AGPLUS_MODES,
    VARIANTS,
    SCNet,
    proposal_ground_truth,
    scnet_hinge_loss,
)
from corrlib.proposals import PROPOSAL_METHODS, flip_boxes, scale_boxes
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
    "PRESETS",
    "PUBLISHED_PF_PASCAL",
    "TRAINABLE",
    "ChapterData",
    "Config",
    "FoldSplit",
    "FoldedMethod",
    "PairSubset",
    "RegionPairs",
    "build_scnet",
    "chapter_data",
    "check_box_transfer",
    "checkpoint_name",
    "config",
    "evaluate_pck",
    "evaluate_regions",
    "make_batch_fn",
    "object_box",
    "pascal_data",
    "prepare_pairs",
    "scnet_loss",
    "scnet_method",
    "train_main",
    "train_scnet",
    "trained_method",
    "willow_folds",
]

CHAPTER = "04_scnet"

#: SCNet's Table 1 (PF-PASCAL, PCK@0.1 with alpha at 224 x 224, 1000 RP proposals, the paper's
#: 1351-pair test list; not the NC-Net split corrlib reads): method -> (value, source).
PUBLISHED_PF_PASCAL = {
    "NAM (HOG)": (52.5, "SCNet poster Table 1 (row label inferred)"),
    "PHM (HOG)": (60.3, "SCNet poster Table 1 (row label inferred)"),
    "LOM (HOG)": (62.5, "SCNet poster Table 1 (row label inferred)"),
    "UCN (retrained)": (55.6, "SCNet paper text and poster"),
    "SCNet-A": (66.3, "SCNet paper text and poster"),
    "SCNet-AG": (69.7, "SCNet poster Table 1 (69.2 in other notes: unresolved)"),
    "SCNet-AG+": (72.2, "SCNet paper text and poster"),
}


@dataclass(frozen=True, kw_only=True)
class Config(TrainingConfig):
    """Chapter 04's settings; the defaults are the paper's (Han et al., ICCV 2017, Sec. 4-5, and
    the authors' code where the text is silent).

    ``data``: ``"pf-pascal"`` (train split) or ``"pf-willow-folds"`` (see the module
    docstring); ``trunk``/``tap``/``trunk_weights``: the frozen trunk (paper: VGG-16 ImageNet,
    ``pool4``; ``conv4_3`` here, which ``pool4`` pools); ``pool``/``dim``: ROI pooling side and
    embedding size (paper 7 and 2048); ``input_size``: images resized to it (224 x 224);
    ``proposals``, ``train_proposals``/``test_proposals`` (paper: 500/1000 RP; selective search
    here); ``iou_pos``/``iou_neg``: the loss's thresholds (code 0.5/0.2, chosen; the paper's
    text 0.6/0.4); ``margin``; ``rectify_ag`` (paper: rectified; code: raw cosine for AG);
    ``agplus_mode`` (:data:`corrlib.models.scnet.AGPLUS_MODES`); ``mirror``: horizontally
    flipped copies of the training pairs (the code's ``mirror_PF_PASCAL``); ``box_margin``:
    PF-WILLOW has no object box, so the keypoints' box grows by this fraction of its size on each
    side; ``tps_reg``: the ground-truth TPS's ridge; ``willow_limit``/``pascal_limit``: test pairs
    (None: all).
    """

    EVAL_FIELDS: ClassVar[tuple[str, ...]] = (
        "variants",
        "test_proposals",
        "willow_limit",
        "pascal_limit",
        "ablation_proposals",
    )

    variants: tuple = VARIANTS
    data: str = "pf-pascal"
    trunk: str = "vgg16"
    tap: str = "conv4_3"
    trunk_weights: str = "auto"
    pool: int = 7
    dim: int = 2048
    input_size: tuple = (224, 224)
    proposals: str = "ss"
    train_proposals: int = 500
    test_proposals: int = 1000
    iou_pos: float = 0.5
    iou_neg: float = 0.2
    margin: float = 1.0
    negatives: str = "hardest"
    rectify_ag: bool = True
    agplus_mode: str = "joint"
    mirror: bool = True
    box_margin: float = 0.1
    tps_reg: float = 1e-3
    #: training pairs per fold (None: all; ``smoke`` keeps a few)
    train_limit: int | None = None
    # the paper: SGD, lr 0.001, weight decay 0.0005, one pair per step (code: lr 1e-4, 200
    # epochs); 1400 mirrored pairs x 10 epochs here
    steps: dict = field(default_factory=lambda: {"default": 14000})
    optim: dict = field(
        default_factory=lambda: {"default": optim("sgd", 1e-3, momentum=0.9, weight_decay=5e-4)}
    )
    log_every: int = 200
    ckpt_every: int = 1000
    seeds: int = 3
    willow_limit: int | None = None
    pascal_limit: int | None = None
    #: proposal methods of the test-time proposal ablation (NAM, PHM and SCNet-AG)
    ablation_proposals: tuple = ("ss", "sw", "us")


PRESETS = make_presets(
    Config(),
    # PF-WILLOW folds; HOG as the frozen trunk (box matching on it beat the offline CNN trunk's
    # block3, measured: mean matched IoU 0.18 vs 0.12 untrained), a small embedding; Adam (SGD
    # at 1e-3 barely moves in a lab's steps)
    lab=dict(
        data="pf-willow-folds",
        trunk="hog",
        tap="hog",
        pool=4,
        dim=256,
        negatives="random",
        train_proposals=500,
        test_proposals=500,
        steps={"default": 150},
        optim={"default": optim("adam", 1e-3, weight_decay=5e-4)},
        log_every=25,
        ckpt_every=50,
    ),
    smoke=dict(
        data="pf-willow-folds",
        trunk="hog",
        tap="hog",
        negatives="random",
        pool=2,
        dim=16,
        input_size=(96, 96),
        train_proposals=60,
        test_proposals=60,
        mirror=False,
        steps={"default": 3},
        optim={"default": optim("adam", 1e-3)},
        log_every=1,
        ckpt_every=0,
        seeds=2,
        train_limit=3,
        willow_limit=4,
        ablation_proposals=("ss", "us"),
    ),
)

#: The ``lab`` setting when torchvision's ImageNet VGG-16 is in the torch hub cache: the paper's
#: frozen trunk (VGG-16 ``conv4_3``, which the paper's ``pool4`` pools) in place of HOG; the rest of
#: the lab (folds, 500 proposals, the small embedding, 150 Adam steps) unchanged.
LAB_IMAGENET = LabImageNet(
    "vgg16",
    {"trunk": "vgg16", "tap": "conv4_3", "trunk_weights": "imagenet"},
    "VGG-16 conv4_3 at 224 x 224, the paper's frozen trunk, in place of HOG",
)

#: ``config(preset)``: the chapter's :class:`Config` at a preset (a deep copy; frozen). At
#: ``lab``, :data:`LAB_IMAGENET` applies when the ImageNet file is in the torch hub cache.
config = config_getter(PRESETS, LAB_IMAGENET)


# ------------------------------------------------------------------------------------------ data


def object_box(kps: torch.Tensor, bbox: torch.Tensor | None, size, margin: float) -> torch.Tensor:
    """The object's box ``(4,)``: ``bbox`` when annotated, else the keypoints' box grown by
    ``margin`` of its width (height) on each side, clipped to the image of ``size (H, W)``."""
    if bbox is not None:
        return bbox.float()
    lo, hi = kps.min(0).values, kps.max(0).values
    pad = (hi - lo) * margin
    h, w = size
    lo = (lo - pad).clamp(min=0)
    hi = torch.minimum(hi + pad, torch.tensor([w - 1.0, h - 1.0]))
    return torch.cat([lo, hi]).float()


class PairSubset(torch.utils.data.Dataset):
    """The pairs ``indices`` of a keypoint dataset (items unchanged, ``pair_index`` the
    dataset's), for :func:`corrlib.eval.evaluate_keypoints`; results name the benchmark
    (``BENCHMARK``), and their pair count marks them as a subset of it."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)
        self.split = getattr(dataset, "split", None)
        self.BENCHMARK = getattr(dataset, "BENCHMARK", None) or type(dataset).__name__

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[self.indices[i]]

    @property
    def pairs(self) -> list:
        """The dataset's pair records of these pairs (names for a pair chooser); [] if it has
        none."""
        records = getattr(self.dataset, "pairs", None)
        return [] if records is None else [records[i] for i in self.indices]


@dataclass(frozen=True)
class FoldSplit:
    """PF-WILLOW in two image-disjoint folds: ``fold_of[image name] -> 0 | 1`` and, per fold,
    the dataset indices of the pairs whose two images both lie in it."""

    fold_of: dict
    pairs: tuple  # (indices of fold 0, indices of fold 1)

    def test_indices(self) -> list[int]:
        """Every within-fold pair (each tested by the other fold's model), sorted."""
        return sorted(self.pairs[0] + self.pairs[1])


def willow_folds(dataset: PFWillow) -> FoldSplit:
    """Split PF-WILLOW's images into two folds per sub-class (the first half of the sorted
    names, then the second) and its pairs into the two within-fold sets (cross-fold pairs are
    used by neither)."""
    by_cat: dict[str, set] = {}
    for p in dataset.pairs:
        by_cat.setdefault(p.category, set()).update((p.src_name, p.trg_name))
    fold_of = {}
    for names in by_cat.values():
        names = sorted(names)
        for i, n in enumerate(names):
            fold_of[n] = 0 if i < len(names) / 2 else 1
    pairs: tuple[list, list] = ([], [])
    for i, p in enumerate(dataset.pairs):
        if fold_of[p.src_name] == fold_of[p.trg_name]:
            pairs[fold_of[p.src_name]].append(i)
    return FoldSplit(fold_of, (pairs[0], pairs[1]))


@dataclass
class RegionPairs:
    """Training (or region-evaluation) pairs prepared once for every model of the chapter.

    ``images[name]`` (and ``images[name + "|flip"]`` when mirrored): ``{"x": (3, H, W) input,
    "boxes": (N, 4) input pixels, "fmap": trunk map or None}``; ``pairs``: dicts with
    ``a``/``b`` image keys and the ground truth of :func:`proposal_ground_truth` (``iou``,
    ``active``, ``gt_boxes``), plus the source dataset index ``index``.
    """

    images: dict
    pairs: list
    seconds: float = 0.0
    trunk: str | None = None

    def attach_trunk(self, model: SCNet) -> None:
        """Compute every image's frozen trunk map once (shared by all models on that trunk;
        recomputed for another trunk)."""
        key = f"{model.config['trunk']}/{model.tap}/{model.weights_source}"
        fresh = key != self.trunk
        self.trunk = key
        for st in self.images.values():
            if fresh or st.get("fmap") is None:
                st["fmap"] = model.feature_map(st["x"][None].to(model.device)).cpu()


def prepare_pairs(
    dataset, indices: Sequence[int], cfg: Config, *, n_proposals: int, mirror: bool
) -> RegionPairs:
    """Images at ``cfg.input_size``, their proposals, and proposal-match ground truth per pair.

    Proposals are computed on the original images (cached by name, shared with the methods)
    and scaled with the image; mirrored pairs flip both images, boxes and keypoints.

    Args:
        dataset: a keypoint dataset (PF-WILLOW or PF-PASCAL items).
        indices: its pairs to prepare.
        cfg: the chapter's config (``input_size``, ``proposals``, ``box_margin``, ``tps_reg``).
        n_proposals: proposals per image.
        mirror: add the horizontally flipped copy of every pair.

    Returns:
        A :class:`RegionPairs`.
    """
    t0 = time.perf_counter()
    size = tuple(cfg.input_size)
    h, w = size
    images: dict = {}
    pairs = []
    no_box = isinstance(dataset, PFWillow)
    for idx in indices:
        item = dataset[idx]
        per_side = {}
        for side in ("src", "trg"):
            name, img, orig = item[f"{side}_name"], item[f"{side}_img"], item[f"{side}_size"]
            sx, sy = w / orig[1], h / orig[0]
            kps = item[f"{side}_kps"] * torch.tensor([sx, sy])
            box = object_box(
                item[f"{side}_kps"],
                None if no_box else item.get(f"{side}_bbox"),
                orig,
                cfg.box_margin,
            ) * torch.tensor([sx, sy, sx, sy])
            if name not in images:
                boxes = scale_boxes(proposals_of(img, cfg.proposals, n_proposals, name), orig, size)
                x = input_image(img, size)
                images[name] = {"x": x, "boxes": boxes, "fmap": None}
                if mirror:
                    images[name + "|flip"] = {
                        "x": x.flip(-1),
                        "boxes": flip_boxes(boxes, w),
                        "fmap": None,
                    }
            per_side[side] = (name, kps, box)
        flips = (False, True) if mirror else (False,)
        for flip in flips:
            (na, ka, ba), (nb, kb, _) = per_side["src"], per_side["trg"]
            if flip:
                na, nb = na + "|flip", nb + "|flip"
                ka = torch.stack([w - 1 - ka[:, 0], ka[:, 1]], 1)
                kb = torch.stack([w - 1 - kb[:, 0], kb[:, 1]], 1)
                ba = torch.stack([w - ba[2], ba[1], w - ba[0], ba[3]])
            gt = proposal_ground_truth(
                images[na]["boxes"], images[nb]["boxes"], ka, kb, ba, size, reg=cfg.tps_reg
            )
            pairs.append({"a": na, "b": nb, "index": idx, "flip": flip, **gt})
    return RegionPairs(images, pairs, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ training


def build_scnet(variant: str, cfg: Config) -> SCNet:
    """A new SCNet of ``variant`` at the preset's sizes; its ``eval_settings`` (the proposals
    the chapter tests with) travel with :func:`corrlib.models.scnet.export_scnet`."""
    check_choice(variant, "variant", VARIANTS)
    check_choice(cfg.proposals, "proposals", PROPOSAL_METHODS)
    check_choice(cfg.agplus_mode, "agplus_mode", AGPLUS_MODES)
    model = SCNet(
        variant,
        trunk=cfg.trunk,
        tap=cfg.tap,
        trunk_weights=cfg.trunk_weights,
        pool=cfg.pool,
        dim=cfg.dim,
        input_size=tuple(cfg.input_size),
        rectify_ag=cfg.rectify_ag,
        agplus_mode=cfg.agplus_mode,
    )
    model.eval_settings = {"proposals": cfg.proposals, "n_proposals": cfg.test_proposals}
    return model


def make_batch_fn(data: RegionPairs) -> Callable:
    """One training pair per step (as the paper) and the seed of its random negatives, drawn
    from the step's generator (so a resumed run is exact)."""

    def fn(step: int, g: torch.Generator) -> dict:
        pair = int(torch.randint(len(data.pairs), (1,), generator=g))
        return {"pair": pair, "neg_seed": int(torch.randint(2**31 - 1, (1,), generator=g))}

    return fn


def scnet_loss(model: SCNet, data: RegionPairs, batch: dict, cfg: Config):
    """The hinge loss of one pair (:func:`corrlib.models.scnet.scnet_hinge_loss`), with the
    pair's cached trunk maps and proposals."""
    p = data.pairs[batch["pair"]]
    a, b = data.images[p["a"]], data.images[p["b"]]
    dev = model.device
    out = model(a["fmap"].to(dev), b["fmap"].to(dev), a["boxes"].to(dev), b["boxes"].to(dev))
    return scnet_hinge_loss(
        out["score"],
        p["iou"].to(dev),
        p["active"].to(dev),
        iou_pos=cfg.iou_pos,
        iou_neg=cfg.iou_neg,
        margin=cfg.margin,
        negatives=cfg.negatives,
        generator=torch.Generator().manual_seed(int(batch["neg_seed"])),
    )


def train_scnet(
    variant: str,
    cfg: Config,
    data: RegionPairs,
    ckpt_path=None,
    seed: int = 0,
    device: str = "auto",
    *,
    fold: int | None = None,
    steps: int | None = None,
    progress: bool = False,
) -> tuple[SCNet, list[dict], float]:
    """Train one SCNet ``variant`` on ``data`` with :class:`corrlib.train.Trainer`.

    Args:
        variant: one of :data:`corrlib.models.scnet.VARIANTS`.
        cfg: the chapter's config.
        data: training pairs of :func:`prepare_pairs` (trunk maps attached here if missing).
        ckpt_path: the checkpoint file (None: none; resuming is exact).
        seed: seeds the initialisation and the pair order.
        device: ``"auto"`` or a torch device string.
        fold: the PF-WILLOW fold trained on (recorded with the checkpoint's settings).
        steps: overrides ``cfg.steps``.
        progress: show a progress bar.

    Returns:
        ``(model, history, seconds)``: the model in eval mode, the history rows (``loss``,
        ``positives``, ``negatives``, ``pos_score``, ``neg_score``) and this call's wall time.
    """
    seed_everything(seed)
    model = build_scnet(variant, cfg)
    data.attach_trunk(model)
    config = cfg.train_config(
        variant, seed=seed, device=device, steps=steps, settings={"fold": fold}
    )

    def loss_fn(m, batch):
        return scnet_loss(m, data, batch, cfg)

    trainer = Trainer(
        model, loss_fn, make_batch_fn(data), config, ckpt_path=ckpt_path, progress=progress
    )
    t0 = time.perf_counter()
    history = trainer.fit(resume=True)
    model.eval()
    return model, history, time.perf_counter() - t0


# ---------------------------------------------------------------------------------- evaluation


class FoldedMethod(CorrespondenceMethod):
    """Two methods, one per fold: a pair is handled by the method of the fold it was *not*
    trained on (``methods[f]`` trained on fold ``f`` handles the images of fold ``1 - f``)."""

    def __init__(self, methods: Sequence[CorrespondenceMethod], fold_of: dict):
        self.methods, self.fold_of = list(methods), fold_of
        self.name = methods[0].name
        self.description = f"{methods[0].description}; one model per fold, tested across"

    def method_for(self, src_key) -> CorrespondenceMethod:
        """The method that never trained on image ``src_key``."""
        if src_key not in self.fold_of:
            raise KeyError(f"{src_key!r} is in no fold of this split.")
        return self.methods[1 - self.fold_of[src_key]]

    def match(self, src_img, trg_img, src_kps, *, src_key=None, trg_key=None):
        m = self.method_for(src_key)
        return m.match(src_img, trg_img, src_kps, src_key=src_key, trg_key=trg_key)

    def region_matches(self, src_img, trg_img, *, src_key=None, trg_key=None):
        """:meth:`corrlib.methods.scnet.ProposalMethod.region_matches` of the right fold's
        method."""
        m = self.method_for(src_key)
        return m.region_matches(src_img, trg_img, src_key=src_key, trg_key=trg_key)


def scnet_method(models, fold_of: dict | None, cfg: Config, proposals: str | None = None):
    """The registered SCNet method of one model, or a :class:`FoldedMethod` of two (fold 0's
    then fold 1's), at the chapter's test proposals."""
    kw = {"proposals": proposals or cfg.proposals, "n_proposals": cfg.test_proposals}
    if isinstance(models, SCNet):
        return SCNetMethod(model=models, **kw)
    return FoldedMethod([SCNetMethod(model=m, **kw) for m in models], fold_of)


def evaluate_pck(method, dataset, indices=None, protocol: str = "pf-willow", *, progress=False):
    """PCK of ``method`` on the pairs ``indices`` of ``dataset`` (None: all) under
    ``protocol``: a :class:`corrlib.eval.KeypointResult`."""
    ds = dataset if indices is None else PairSubset(dataset, indices)
    return evaluate_keypoints(method, ds, protocol, progress=progress)


@torch.no_grad()
def evaluate_regions(method, dataset, data: RegionPairs, k_max: int = 100) -> dict:
    """Region matching quality of ``method`` on the (unmirrored) pairs of ``data``.

    ``data`` must hold the method's proposals (:func:`prepare_pairs` with the same proposal
    method and number, at the same input size): each active source proposal is matched to its
    best-scoring target proposal, and the IoU of that box with the ground-truth box is scored.

    Returns:
        ``{"pcr": (101,) PCR curve over t = 0 ... 1, "miou": (k_max,) mIoU@k averaged over
        pairs, "pcr_auc": float, "miou_auc": float, "matches": int}`` (AuCs as means of the
        curves, in ``[0, 1]``).
    """
    ious, curves = [], []
    for p in data.pairs:
        if p["flip"]:
            continue
        item = dataset[p["index"]]
        r = method.region_matches(
            item["src_img"], item["trg_img"], src_key=item["src_name"], trg_key=item["trg_name"]
        )
        if r["boxes_a"].shape != data.images[p["a"]]["boxes"].shape:
            raise ValueError(
                f"{method.name}: its proposals of {item['src_name']} differ from the prepared "
                "pairs'; prepare them with the method's proposal setting."
            )
        act = p["active"]
        if not act.any():
            continue
        conf, best = r["scores"][act].max(1)
        iou = p["iou"][act].gather(1, best[:, None])[:, 0]
        ious.append(iou)
        curves.append(miou_at_k(iou, conf, k_max))
    iou_all = torch.cat(ious) if ious else torch.zeros(0)
    pcr = pcr_curve(iou_all)
    miou = torch.stack(curves).mean(0) if curves else torch.full((k_max,), float("nan"))
    return {
        "pcr": pcr,
        "miou": miou,
        "pcr_auc": float(pcr.mean()),
        "miou_auc": float(miou.mean()),
        "matches": int(iou_all.numel()),
    }


def pascal_data(root):
    """The ``paper`` preset's data: PF-PASCAL's train and test splits (raises the dataset's
    error, naming the folder and URL, when absent)."""
    return PFPascal(root, split="train"), PFPascal(root, split="test")


@dataclass
class ChapterData:
    """What chapter 04 trains and tests on at a preset (:func:`chapter_data`).

    ``train[fold]``: :class:`RegionPairs` per fold (``folds`` = ``(0, 1)`` on PF-WILLOW folds,
    ``(None,)`` for the ``paper`` preset's single PF-PASCAL training set); ``split``: the
    :class:`FoldSplit` (None for ``paper``); ``willow_test``: the PF-WILLOW pairs reported
    (the held-out within-fold pairs, or all); ``pascal_test``: PF-PASCAL's test split (``paper``
    only, else None)."""

    train: dict
    folds: tuple
    split: FoldSplit | None
    willow_test: list
    pascal_test: object = None


def chapter_data(cfg: Config, willow: PFWillow, root=None) -> ChapterData:
    """Prepare the training sets of ``cfg.data`` and the test pairs.

    Args:
        cfg: the chapter's config (``data``, ``train_limit``, ``willow_limit``, proposals...).
        willow: PF-WILLOW (tested on at every preset).
        root: the data root holding ``PF-PASCAL/`` (``paper`` only).

    Returns:
        A :class:`ChapterData`.
    """
    check_choice(cfg.data, "data", ("pf-willow-folds", "pf-pascal"))
    if cfg.data == "pf-willow-folds":
        split = willow_folds(willow)
        train = {
            fold: prepare_pairs(
                willow,
                split.pairs[fold][: cfg.train_limit],
                cfg,
                n_proposals=cfg.train_proposals,
                mirror=cfg.mirror,
            )
            for fold in (0, 1)
        }
        return ChapterData(train, (0, 1), split, split.test_indices()[: cfg.willow_limit])
    pascal_train, pascal_test = pascal_data(root)
    idx = list(range(len(pascal_train)))[: cfg.train_limit]
    train = {
        None: prepare_pairs(
            pascal_train, idx, cfg, n_proposals=cfg.train_proposals, mirror=cfg.mirror
        )
    }
    return ChapterData(
        train, (None,), None, list(range(len(willow)))[: cfg.willow_limit], pascal_test
    )


def checkpoint_name(variant: str, fold: int | None) -> str:
    """``"AG-fold0"`` (a fold's model) or ``"AG"`` (the ``paper`` preset's one model)."""
    return variant if fold is None else f"{variant}-fold{fold}"


def trained_method(
    models: dict,
    variant: str,
    seed: int,
    data: ChapterData,
    cfg: Config,
    proposals: str | None = None,
):
    """The method of one trained variant and seed: the two folds' models as a
    :class:`FoldedMethod` (each pair handled by the model that never saw its images), or the
    ``paper`` preset's single model. ``models`` is keyed ``(variant, seed, fold)``."""
    if data.split is None:
        return scnet_method(models[variant, seed, None], None, cfg, proposals)
    pair = [models[variant, seed, f] for f in data.folds]
    return scnet_method(pair, data.split.fold_of, cfg, proposals)


# ----------------------------------------------------------------------------------- exercises


def check_box_transfer(fn: Callable) -> str:
    """``fn(point (2,), box_a (4,), box_b (4,)) -> (2,)``: move a point of box a to the same
    relative position in box b (boxes ``x0, y0, x1, y1``).

    Returns:
        ``"pass: ..."``, ``"wrong: ..."`` or ``"not attempted yet: ..."``.
    """
    cases = [
        ((10.0, 20.0), (0.0, 0.0, 40.0, 40.0), (100.0, 100.0, 120.0, 180.0)),
        ((5.0, 5.0), (5.0, 5.0, 15.0, 25.0), (0.0, 50.0, 30.0, 60.0)),
        ((33.0, 7.5), (30.0, 0.0, 36.0, 10.0), (-6.0, 2.0, 6.0, 4.0)),
    ]
    for pt, ba, bb in cases:
        rx, ry = (pt[0] - ba[0]) / (ba[2] - ba[0]), (pt[1] - ba[1]) / (ba[3] - ba[1])
        want = (bb[0] + rx * (bb[2] - bb[0]), bb[1] + ry * (bb[3] - bb[1]))  # plain Python
        got, err = run_student(fn, torch.tensor(pt), torch.tensor(ba), torch.tensor(bb))
        if err:
            return err
        try:
            g = [float(v) for v in torch.as_tensor(got).reshape(-1)]
        except (TypeError, ValueError):
            return f"wrong: return a tensor of 2 numbers (x, y), got {type(got).__name__}."
        if len(g) != 2 or abs(g[0] - want[0]) > 1e-4 or abs(g[1] - want[1]) > 1e-4:
            return (
                f"wrong: point {pt} in box {ba} should go to ({want[0]:g}, {want[1]:g}) in box "
                f"{bb}, got {g}: keep the point's relative position (x - x0) / (x1 - x0)."
            )
    return "pass: a point keeps its relative position in the matched box (box-to-box transfer)."


# ------------------------------------------------------------------------------ corrlib train

#: What ``corrlib train --chapter 04_scnet --variant ...`` trains (the first is the default).
TRAINABLE = ("AG", "A", "AG+")


def train_main(run, variant: str | None = None, *, progress: bool = True):
    """Train one variant as the notebook does: at ``smoke``/``lab`` one model per PF-WILLOW fold
    (the model returned and exported is fold 0's), at ``paper`` one model on PF-PASCAL; same
    checkpoint files, so the notebook reuses them. SCNet trains one pair per step: run it on one
    process (several processes are refused with that reason). Returns a
    :class:`~corrlib.recipes._common.TrainedModel`."""
    from corrlib.data import PFWillow
    from corrlib.models.scnet import export_scnet
    from corrlib.recipes._common import TrainedModel, export_on_main

    name = variant or TRAINABLE[0]
    check_choice(name, "variant", TRAINABLE)
    cfg = run.cfg
    data = chapter_data(cfg, PFWillow(run.root), run.root)
    total, first = 0.0, None
    for fold in data.folds:
        ckpt = run.ckpt_dir / f"{checkpoint_name(name, fold)}.pt"
        model, history, seconds = train_scnet(
            name,
            cfg,
            data.train[fold],
            ckpt,
            seed=run.seed,
            device=run.device,
            fold=fold,
            progress=progress,
        )
        total += seconds
        first = first or (model, history, ckpt, fold)
    model, history, ckpt, fold = first
    exported = export_on_main(
        export_scnet, run.ckpt_dir / f"{checkpoint_name(name, fold)}.scnet.pt", model
    )
    return TrainedModel(model, history, total, ckpt, exported, f"scnet-{name.lower()}")
