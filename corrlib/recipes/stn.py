"""Chapter 02 recipe: spatial transformers on distorted MNIST, and aligning one image to another.

Reproduces the distorted-MNIST experiment of Jaderberg et al., *Spatial Transformer Networks*,
NeurIPS 2015 (Sec. 4.1, Table 1): a CNN and an ST-CNN (the same CNN behind a spatial
transformer) are trained on digits distorted by R, RTS, P or E (:mod:`corrlib.data.digits`),
with fresh distortions at every step, and tested on a fixed, held-out distorted test set. The
recipe also trains a :class:`~corrlib.models.stn.PairAligner` on synthetic pairs with a
photometric loss: a transformer that aligns one image to another, the bridge to correspondence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from corrlib._check import check_choice, check_shape
from corrlib.data.digits import (
    DISTORTION_CANVAS,
    DISTORTIONS,
    DigitSet,
    DistortedDigits,
    load_mnist,
)
from corrlib.geometry import sample_random_warp
from corrlib.models.stn import STCNN, PairAligner, digit_cnn, photometric_loss, st_cnn
from corrlib.train import TrainConfig, Trainer, seed_everything

__all__ = [
    "DIGIT_MODELS",
    "DigitData",
    "aligner_errors",
    "build_digit_data",
    "build_digit_model",
    "classification_loss",
    "synthetic_pair_batch_fn",
    "test_error",
    "train_digit_classifier",
    "train_pair_aligner",
    "transformed_examples",
]

#: Classifiers of the chapter: the CNN baseline and ST-CNNs with the paper's three transforms.
DIGIT_MODELS = ("cnn", "st-cnn-affine", "st-cnn-projective", "st-cnn-tps")
#: The corrlib.geometry warp family used to make synthetic pairs for each aligner kind.
_PAIR_WARPS = {"affine": "affine", "projective": "homography", "tps": "tps"}


@dataclass
class DigitData:
    """Chapter 02's data: clean ``train``/``test`` digits and fixed distorted test sets.

    ``test_sets[kind]`` is a :class:`~corrlib.data.digits.DistortedDigits` over ``test`` with the
    distortions fixed by the build seed; training draws fresh distortions of ``train`` at every
    step (:meth:`train_set` ``.batch_fn``). ``info`` records sizes and, loudly, whether the split
    is MNIST's official one.
    """

    train: DigitSet
    test: DigitSet
    test_sets: dict[str, DistortedDigits]
    info: dict = field(default_factory=dict)

    def train_set(self, kind: str, seed: int = 0) -> DistortedDigits:
        """The training digits distorted by ``kind`` (use its ``batch_fn``)."""
        return DistortedDigits(self.train.images, self.train.labels, kind, seed)


def build_digit_data(cfg: dict, data_root=None, seed: int = 0) -> DigitData:
    """Load MNIST and fix the distorted test sets of ``cfg["distortions"]`` (a preset config).

    ``cfg["n_train"]``/``cfg["n_test"]``: the first that many digits of each split (``None``: all).
    Offline, with only MNIST's test files, train and test are disjoint parts of the official test
    set (``info["warning"]`` says so; see :func:`corrlib.data.digits.load_mnist`).
    """
    train = load_mnist(data_root, "train").subset(cfg["n_train"])
    test = load_mnist(data_root, "test").subset(cfg["n_test"])
    kinds = tuple(cfg["distortions"])
    for k in kinds:
        check_choice(k, "cfg['distortions']", DISTORTIONS)
    test_sets = {k: DistortedDigits(test.images, test.labels, k, seed=seed) for k in kinds}
    info = {
        "n_train": len(train),
        "n_test": len(test),
        "official_split": bool(train.info.get("official")),
        "source": train.info.get("source"),
        "test_seed": seed,
    }
    if "warning" in train.info:
        info["warning"] = train.info["warning"]
    return DigitData(train, test, test_sets, info)


def build_digit_model(model_name: str, kind: str, cfg: dict) -> nn.Module:
    """The classifier ``model_name`` (:data:`DIGIT_MODELS`) for digits distorted by ``kind``.

    The input side is the distortion's canvas (42 for RTS, else 28); an ST-CNN's transformer
    outputs ``cfg["st_out_size"]`` pixels to its CNN.
    """
    check_choice(model_name, "model_name", DIGIT_MODELS)
    check_choice(kind, "kind", DISTORTIONS)
    in_size = DISTORTION_CANVAS[kind]
    if model_name == "cnn":
        return digit_cnn(in_size=in_size, channels=tuple(cfg["cnn_channels"]))
    return st_cnn(
        model_name.removeprefix("st-cnn-"), in_size=in_size, out_size=cfg["st_out_size"],
        cnn_channels=tuple(cfg["cnn_channels"]), loc_channels=tuple(cfg["loc_channels"]),
        loc_hidden=cfg["loc_hidden"], tps_lattice_size=cfg["tps_lattice"],
    )  # fmt: skip


def classification_loss(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
    """Cross-entropy (the paper's multinomial cross-entropy) on ``(images, labels)``; logs accuracy."""
    x, y = batch
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    return loss, {"acc": (logits.argmax(1) == y).float().mean().item()}


def _config(cfg: dict, key: str, seed: int, device: str, steps: int | None) -> TrainConfig:
    opt = cfg["optim"].get(key, cfg["optim"]["default"])
    return TrainConfig(
        steps=steps or cfg["steps"].get(key, cfg["steps"]["default"]),
        lr=opt["lr"], optimizer=opt["optimizer"], momentum=opt.get("momentum", 0.9),
        weight_decay=opt.get("weight_decay", 0.0), schedule=opt.get("schedule", "constant"),
        step_size=opt.get("step_size"), gamma=opt.get("gamma", 0.1),
        log_every=cfg["log_every"], ckpt_every=cfg["ckpt_every"], seed=seed, device=device,
    )  # fmt: skip


def train_digit_classifier(
    model_name: str,
    kind: str,
    cfg: dict,
    data: DigitData,
    ckpt_path=None,
    seed: int = 0,
    device: str = "auto",
    *,
    progress: bool = False,
    steps: int | None = None,
    stop_after: int | None = None,
) -> tuple[nn.Module, list[dict], float]:
    """Train ``model_name`` on digits distorted by ``kind``; returns ``(model, history, seconds)``.

    Every step draws ``cfg["batch_size"]`` training digits and fresh distortions from the
    Trainer's generator (resumable). Optimiser and schedule: ``cfg["optim"]`` (entry
    ``model_name`` or ``"default"``), steps ``cfg["steps"]`` likewise (or ``steps``). Resumes from
    ``ckpt_path`` if a checkpoint is there (a finished one returns at once); ``stop_after`` stops
    (and checkpoints) after that many steps of this call, as an interruption would. The model is
    returned in ``eval()`` mode, on the training device.
    """
    seed_everything(seed)  # the model's initialisation
    model = build_digit_model(model_name, kind, cfg)
    config = _config(cfg, model_name, seed, device, steps)
    batch_fn = data.train_set(kind, seed).batch_fn(cfg["batch_size"])
    trainer = Trainer(model, classification_loss, batch_fn, config, ckpt_path=ckpt_path, progress=progress)
    t0 = time.perf_counter()
    history = trainer.fit(resume=True, stop_after=stop_after)
    model.eval()
    return model, history, time.perf_counter() - t0


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor, batch: int) -> torch.Tensor:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(images[i : i + batch].to(device)).argmax(1).cpu() for i in range(0, len(images), batch)])
    finally:
        model.train(was_training)


def test_error(model: nn.Module, data: DigitData, kind: str, batch: int = 1000) -> float:
    """Error rate (fraction in ``[0, 1]``) of ``model`` on the fixed distorted test set ``kind``."""
    check_choice(kind, "kind", tuple(data.test_sets))
    images, labels = data.test_sets[kind].tensors()
    if len(labels) == 0:
        return float("nan")
    return float((_predict(model, images, batch) != labels).float().mean())


test_error.__test__ = False  # a metric, not a test: keep pytest from collecting it


@torch.no_grad()
def transformed_examples(model: STCNN, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the transformer of an ST-CNN does: ``(inputs (B, 1, S, S), transformed (B, 1, s, s))``.

    ``images (B, 1, S, S)``: distorted digits (e.g. the first items of a test set). Both outputs
    are on the CPU.
    """
    if not isinstance(model, STCNN):
        raise ValueError(f"Argument model must be an ST-CNN (corrlib.models.stn.STCNN), got {type(model).__name__}; a plain CNN has no transformer.")
    check_shape(images, ("B", 1, model.st.in_size, model.st.in_size), "images")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        warped, _ = model.transform(images.to(device))
    finally:
        model.train(was_training)
    return images.cpu(), warped.cpu()


# --------------------------------------------------------------------------------------------
# aligning one image to another
# --------------------------------------------------------------------------------------------


def synthetic_pair_batch_fn(images: torch.Tensor, batch_size: int, kind: str = "affine", strength: float = 0.5):
    """A resumable ``batch_fn(step, generator) -> (src, trg)`` of synthetic pairs.

    ``src``: random digits from ``images (N, 1, S, S)``; ``trg = grid_sample(src, warp.grid)`` with
    a random warp of the geometry family matching ``kind`` (affine, homography for
    ``projective``, a 3x3-lattice TPS for ``tps``; :func:`corrlib.geometry.sample_random_warp`
    at ``strength``). An aligner that maps ``trg`` coordinates to ``src`` by that warp aligns
    the pair exactly.
    """
    warp_kind = _PAIR_WARPS[check_choice(kind, "kind", tuple(_PAIR_WARPS))]
    check_shape(images, ("N", 1, "S", "S"), "images")
    size = tuple(images.shape[-2:])

    def fn(step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        src = images[idx]
        grid = sample_random_warp(batch_size, warp_kind, strength, generator=generator).grid(size)
        trg = F.grid_sample(src, grid.to(src.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        return src, trg

    return fn


def train_pair_aligner(
    cfg: dict, data: DigitData, *, seed: int = 0, device: str = "auto", ckpt_path=None, progress: bool = False, steps: int | None = None
) -> tuple[PairAligner, list[dict], float]:
    """Train a :class:`PairAligner` of ``cfg["aligner_kind"]`` with a photometric loss.

    Synthetic pairs of the training digits (:func:`synthetic_pair_batch_fn`, warp strength
    ``cfg["aligner_strength"]``), loss ``cfg["aligner_norm"]`` between the warped ``src`` and
    ``trg``: no correspondence labels. Returns ``(aligner (eval mode), history, seconds)``.
    """
    kind = cfg["aligner_kind"]
    seed_everything(seed)
    model = PairAligner(kind, 28, loc_channels=tuple(cfg["loc_channels"]), loc_hidden=cfg["loc_hidden"], tps_lattice_size=cfg["tps_lattice"])
    config = _config(cfg, "aligner", seed, device, steps or cfg["aligner_steps"])
    batch_fn = synthetic_pair_batch_fn(data.train.images, cfg["batch_size"], kind, cfg["aligner_strength"])

    def loss_fn(m: PairAligner, batch) -> tuple[torch.Tensor, dict]:
        src, trg = batch
        warped, _ = m(src, trg)
        loss = photometric_loss(warped, trg, cfg["aligner_norm"])
        return loss, {"identity_loss": photometric_loss(src, trg, cfg["aligner_norm"]).item()}

    trainer = Trainer(model, loss_fn, batch_fn, config, ckpt_path=ckpt_path, progress=progress)
    t0 = time.perf_counter()
    history = trainer.fit(resume=True)
    model.eval()
    return model, history, time.perf_counter() - t0


@torch.no_grad()
def aligner_errors(model: PairAligner, data: DigitData, cfg: dict, *, n: int = 512, seed: int = 0) -> dict:
    """Photometric error on ``n`` fixed held-out test pairs: before (identity) and after alignment.

    Returns ``{"identity": ..., "aligned": ...}`` (``cfg["aligner_norm"]`` means); the pairs are
    made from the clean test digits, as in training.
    """
    fn = synthetic_pair_batch_fn(data.test.images, n, model.kind, cfg["aligner_strength"])
    src, trg = fn(0, torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        warped, _ = model(src.to(device), trg.to(device))
    finally:
        model.train(was_training)
    norm = cfg["aligner_norm"]
    return {"identity": float(photometric_loss(src, trg, norm)), "aligned": float(photometric_loss(warped.cpu(), trg, norm))}
