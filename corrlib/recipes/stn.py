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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

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
from corrlib.exercises import run_student
from corrlib.geometry import sample_random_warp
from corrlib.models.stn import STCNN, PairAligner, digit_cnn, photometric_loss, st_cnn
from corrlib.recipes._common import TrainingConfig, config_getter, make_presets, optim
from corrlib.train import Trainer, seed_everything

__all__ = [
    "CHAPTER",
    "DIGIT_MODELS",
    "PRESETS",
    "TRAINABLE",
    "Config",
    "DigitData",
    "aligner_errors",
    "build_digit_data",
    "build_digit_model",
    "check_projective_grid",
    "classification_loss",
    "config",
    "synthetic_pair_batch_fn",
    "test_error",
    "train_digit_classifier",
    "train_main",
    "train_pair_aligner",
    "transformed_examples",
]

CHAPTER = "02_stn"


@dataclass(frozen=True, kw_only=True)
class Config(TrainingConfig):
    """Chapter 02's settings. Defaults: Jaderberg et al., NeurIPS 2015, Sec. 4.1 and Appendix A
    (our reading): R, RTS, P, E; CNN and ST-CNN with Aff, Proj and 16-point TPS transformers;
    SGD, batch 256, base lr 0.01 divided by 10 every 50k of 150k iterations, no weight decay;
    all of MNIST.

    ``n_train``/``n_test``: digits used (None: all). ``aligner_*``: the pair aligner of section 5
    (photometric loss on synthetic pairs; our addition). ``n_examples``: digits drawn in figures.
    """

    EVAL_FIELDS: ClassVar[tuple[str, ...]] = ("distortions", "models", "n_examples")

    distortions: tuple = ("R", "RTS", "P", "E")
    models: tuple = ("cnn", "st-cnn-affine", "st-cnn-projective", "st-cnn-tps")
    n_train: int | None = None
    n_test: int | None = None
    cnn_channels: tuple = (32, 32)
    loc_channels: tuple = (20, 20)
    loc_hidden: int = 50
    tps_lattice: int = 4
    st_out_size: int = 28
    batch_size: int = 256
    steps: dict = field(default_factory=lambda: {"default": 150000})
    optim: dict = field(
        default_factory=lambda: {
            "default": optim("sgd", 0.01, momentum=0.9, schedule="step", step_size=50000, gamma=0.1)
        }
    )
    log_every: int = 500
    ckpt_every: int = 5000
    aligner_kind: str = "affine"
    aligner_strength: float = 0.5
    aligner_norm: str = "l2"
    aligner_steps: int = 20000
    n_examples: int = 8


PRESETS = make_presets(
    Config(),
    lab=dict(
        models=("cnn", "st-cnn-affine", "st-cnn-tps"),
        cnn_channels=(16, 32),
        loc_channels=(8, 16),
        loc_hidden=32,
        batch_size=64,
        steps={"default": 800},
        optim={"default": optim("adam", 2e-3, schedule="cosine")},
        log_every=50,
        ckpt_every=200,
        aligner_steps=400,
    ),
    smoke=dict(
        models=("cnn", "st-cnn-affine", "st-cnn-tps"),
        n_train=512,
        n_test=256,
        cnn_channels=(16, 32),
        loc_channels=(8, 16),
        loc_hidden=32,
        batch_size=32,
        steps={"default": 4},
        optim={"default": optim("adam", 2e-3, schedule="cosine")},
        log_every=2,
        ckpt_every=0,
        aligner_steps=4,
    ),
)


#: ``config(preset)``: the chapter's :class:`Config` at a preset (a deep copy; frozen).
config = config_getter(PRESETS)


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
        """The training digits distorted by ``kind`` (use its ``batch_fn``).

        Args:
            kind: one of :data:`corrlib.data.digits.DISTORTIONS` (``"R"``, ``"RTS"``, ``"P"``,
                ``"E"``).
            seed: the seed of the dataset's fixed (item-indexed) distortions; ``batch_fn`` draws
                fresh ones from the Trainer's generator instead.

        Returns:
            A :class:`~corrlib.data.digits.DistortedDigits` over ``train`` (items
            ``(image (1, S, S) float in [0, 1], label)``, ``S`` the distortion's canvas).
        """
        return DistortedDigits(self.train.images, self.train.labels, kind, seed)


def build_digit_data(cfg: Config, data_root=None, seed: int = 0) -> DigitData:
    """Load MNIST and fix the distorted test sets of ``cfg.distortions`` (a preset config).

    ``cfg.n_train``/``cfg.n_test``: the first that many digits of each split (``None``: all).
    Offline, with only MNIST's test files, train and test are disjoint parts of the official test
    set (``info["warning"]`` says so; see :func:`corrlib.data.digits.load_mnist`).

    Args:
        cfg: the chapter's :class:`Config` (its fields used: ``distortions``, ``n_train``,
            ``n_test``).
        data_root: the folder that holds ``MNIST/raw`` (None: ``$CORRLIB_DATA``).
        seed: the seed of the fixed test distortions.

    Returns:
        A :class:`DigitData`: ``train``/``test`` :class:`~corrlib.data.digits.DigitSet`
        (images float32 ``(N, 1, 28, 28)`` in ``[0, 1]``, labels int64 ``(N,)``), ``test_sets``
        ``{kind: DistortedDigits}`` and ``info`` (keys ``n_train``, ``n_test``,
        ``official_split``, ``source``, ``test_seed`` and, for an unofficial split,
        ``warning``).
    """
    train = load_mnist(data_root, "train").subset(cfg.n_train)
    test = load_mnist(data_root, "test").subset(cfg.n_test)
    kinds = tuple(cfg.distortions)
    for k in kinds:
        check_choice(k, "cfg.distortions", DISTORTIONS)
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


def build_digit_model(model_name: str, kind: str, cfg: Config) -> nn.Module:
    """The classifier ``model_name`` (:data:`DIGIT_MODELS`) for digits distorted by ``kind``.

    The input side is the distortion's canvas (42 for RTS, else 28); an ST-CNN's transformer
    outputs ``cfg.st_out_size`` pixels to its CNN.

    Args:
        model_name: one of :data:`DIGIT_MODELS`.
        kind: the distortion, one of :data:`corrlib.data.digits.DISTORTIONS`.
        cfg: the chapter's :class:`Config` (its fields used: ``cnn_channels``, ``st_out_size``,
            ``loc_channels``, ``loc_hidden``, ``tps_lattice``).

    Returns:
        A new, randomly initialised :class:`~corrlib.models.stn.DigitCNN` or
        :class:`~corrlib.models.stn.STCNN`: ``images (B, 1, S, S) -> logits (B, 10)``, with ``S``
        the canvas side.
    """
    check_choice(model_name, "model_name", DIGIT_MODELS)
    check_choice(kind, "kind", DISTORTIONS)
    in_size = DISTORTION_CANVAS[kind]
    if model_name == "cnn":
        return digit_cnn(in_size=in_size, channels=tuple(cfg.cnn_channels))
    return st_cnn(
        model_name.removeprefix("st-cnn-"),
        in_size=in_size,
        out_size=cfg.st_out_size,
        cnn_channels=tuple(cfg.cnn_channels),
        loc_channels=tuple(cfg.loc_channels),
        loc_hidden=cfg.loc_hidden,
        tps_lattice_size=cfg.tps_lattice,
    )


def classification_loss(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
    """Cross-entropy (the paper's multinomial cross-entropy) on ``(images, labels)``.

    Args:
        model: a classifier, ``images -> logits (B, 10)``.
        batch: ``(images (B, 1, S, S) float in [0, 1], labels (B,) int64)``.

    Returns:
        ``(loss, logs)``: the mean cross-entropy (a scalar tensor) and ``{"acc": float}``, the
        batch's accuracy in ``[0, 1]``.
    """
    x, y = batch
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    return loss, {"acc": (logits.argmax(1) == y).float().mean().item()}


def train_digit_classifier(
    model_name: str,
    kind: str,
    cfg: Config,
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

    Every step draws ``cfg.batch_size`` training digits and fresh distortions from the
    Trainer's generator (resumable). Optimiser and schedule: ``cfg.optim`` (entry
    ``model_name`` or ``"default"``), steps ``cfg.steps`` likewise (or ``steps``). Resumes from
    ``ckpt_path`` if a checkpoint is there (a finished one returns at once); ``stop_after`` stops
    (and checkpoints) after that many steps of this call, as an interruption would. The model is
    returned in ``eval()`` mode, on the training device.

    Args:
        model_name: one of :data:`DIGIT_MODELS`.
        kind: the distortion, one of :data:`corrlib.data.digits.DISTORTIONS`.
        cfg: the chapter's :class:`Config` (its fields used: ``batch_size``, ``steps``, ``optim``,
            ``log_every``, ``ckpt_every`` and those of :func:`build_digit_model`).
        data: the chapter's data (:func:`build_digit_data`); only ``data.train`` is used.
        ckpt_path: the checkpoint file (None: no checkpoints, no resume).
        seed: seeds the initialisation, the batches and the distortions.
        device: ``"auto"`` or a torch device string.
        progress: show a progress bar.
        steps: the number of steps (None: ``cfg.steps``).
        stop_after: stop after that many steps of this call (None: run to the end).

    Returns:
        ``(model, history, seconds)``: the classifier (``(B, 1, S, S) -> logits (B, 10)``), the
        Trainer's history rows (``{"step", "loss", "lr", "seconds", "acc"}``) and this call's
        wall time.
    """
    seed_everything(seed)  # the model's initialisation
    model = build_digit_model(model_name, kind, cfg)
    config = cfg.train_config(model_name, seed=seed, device=device, steps=steps)
    batch_fn = data.train_set(kind, seed).batch_fn(cfg.batch_size)
    trainer = Trainer(
        model, classification_loss, batch_fn, config, ckpt_path=ckpt_path, progress=progress
    )
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
        return torch.cat(
            [
                model(images[i : i + batch].to(device)).argmax(1).cpu()
                for i in range(0, len(images), batch)
            ]
        )
    finally:
        model.train(was_training)


def test_error(model: nn.Module, data: DigitData, kind: str, batch: int = 1000) -> float:
    """Error rate (fraction in ``[0, 1]``) of ``model`` on the fixed distorted test set ``kind``.

    Args:
        model: a classifier, ``images (B, 1, S, S) -> logits (B, 10)`` (its train/eval mode is
            restored afterwards).
        data: the chapter's data (:func:`build_digit_data`).
        kind: a key of ``data.test_sets``.
        batch: images per forward pass.

    Returns:
        The fraction of misclassified test digits (NaN for an empty test set).
    """
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

    Args:
        model: an ST-CNN (:class:`~corrlib.models.stn.STCNN`; a plain CNN raises ``ValueError``);
            its train/eval mode is restored afterwards.
        images: float ``(B, 1, S, S)`` in ``[0, 1]``, ``S`` the transformer's input side
            (``model.st.in_size``).

    Returns:
        ``(inputs, transformed)``: ``images`` ``(B, 1, S, S)`` and the transformer's outputs
        ``(B, 1, s, s)``, ``s`` its output side (``cfg.st_out_size``).
    """
    if not isinstance(model, STCNN):
        raise ValueError(
            "Argument model must be an ST-CNN (corrlib.models.stn.STCNN), got "
            f"{type(model).__name__}; a plain CNN has no transformer."
        )
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


def synthetic_pair_batch_fn(
    images: torch.Tensor, batch_size: int, kind: str = "affine", strength: float = 0.5
):
    """A resumable ``batch_fn(step, generator) -> (src, trg)`` of synthetic pairs.

    ``src``: random digits from ``images (N, 1, S, S)``; ``trg = grid_sample(src, warp.grid)`` with
    a random warp of the geometry family matching ``kind`` (affine, homography for
    ``projective``, a 3x3-lattice TPS for ``tps``; :func:`corrlib.geometry.sample_random_warp`
    at ``strength``). An aligner that maps ``trg`` coordinates to ``src`` by that warp aligns
    the pair exactly.

    Args:
        images: float ``(N, 1, S, S)`` digits in ``[0, 1]``.
        batch_size: the pairs per batch ``B``.
        kind: the aligner's kind, ``"affine"``, ``"projective"`` or ``"tps"``.
        strength: the warp strength, in ``[0, 1]``.

    Returns:
        ``fn(step, generator) -> (src, trg)``, both ``(B, 1, S, S)`` in ``images``' dtype;
        ``trg`` is ``src`` resampled bilinearly (normalised coordinates, ``align_corners=False``,
        zeros outside ``src``). Every draw comes from ``generator``.
    """
    warp_kind = _PAIR_WARPS[check_choice(kind, "kind", tuple(_PAIR_WARPS))]
    check_shape(images, ("N", 1, "S", "S"), "images")
    size = tuple(images.shape[-2:])

    def fn(step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        src = images[idx]
        grid = sample_random_warp(batch_size, warp_kind, strength, generator=generator).grid(size)
        trg = F.grid_sample(
            src, grid.to(src.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return src, trg

    return fn


def train_pair_aligner(
    cfg: Config,
    data: DigitData,
    *,
    seed: int = 0,
    device: str = "auto",
    ckpt_path=None,
    progress: bool = False,
    steps: int | None = None,
) -> tuple[PairAligner, list[dict], float]:
    """Train a :class:`PairAligner` of ``cfg.aligner_kind`` with a photometric loss.

    Synthetic pairs of the training digits (:func:`synthetic_pair_batch_fn`, warp strength
    ``cfg.aligner_strength``), loss ``cfg.aligner_norm`` between the warped ``src`` and
    ``trg``: no correspondence labels. Returns ``(aligner (eval mode), history, seconds)``.

    Args:
        cfg: the chapter's :class:`Config` (its fields used: ``aligner_kind``,
            ``aligner_strength``, ``aligner_norm``, ``aligner_steps``, ``loc_channels``,
            ``loc_hidden``, ``tps_lattice``, ``batch_size``, ``optim`` (entry ``"aligner"`` or
            ``"default"``), ``log_every``, ``ckpt_every``).
        data: the chapter's data (:func:`build_digit_data`); pairs are made from
            ``data.train.images`` ``(N, 1, 28, 28)``.
        seed: seeds the initialisation and the batches.
        device: ``"auto"`` or a torch device string.
        ckpt_path: the checkpoint file (None: no checkpoints, no resume).
        progress: show a progress bar.
        steps: the number of steps (None: ``cfg.aligner_steps``).

    Returns:
        ``(aligner, history, seconds)``: the :class:`~corrlib.models.stn.PairAligner`
        (``(src, trg) (B, 1, 28, 28) -> (warped_src (B, 1, 28, 28), params)``) in ``eval()``
        mode on the training device, the Trainer's history rows (``{"step", "loss", "lr",
        "seconds", "identity_loss"}``) and this call's wall time.
    """
    kind = cfg.aligner_kind
    seed_everything(seed)
    model = PairAligner(
        kind,
        28,
        loc_channels=tuple(cfg.loc_channels),
        loc_hidden=cfg.loc_hidden,
        tps_lattice_size=cfg.tps_lattice,
    )
    config = cfg.train_config("aligner", seed=seed, device=device, steps=steps or cfg.aligner_steps)
    batch_fn = synthetic_pair_batch_fn(
        data.train.images, cfg.batch_size, kind, cfg.aligner_strength
    )

    def loss_fn(m: PairAligner, batch) -> tuple[torch.Tensor, dict]:
        src, trg = batch
        warped, _ = m(src, trg)
        loss = photometric_loss(warped, trg, cfg.aligner_norm)
        return loss, {"identity_loss": photometric_loss(src, trg, cfg.aligner_norm).item()}

    trainer = Trainer(model, loss_fn, batch_fn, config, ckpt_path=ckpt_path, progress=progress)
    t0 = time.perf_counter()
    history = trainer.fit(resume=True)
    model.eval()
    return model, history, time.perf_counter() - t0


@torch.no_grad()
def aligner_errors(
    model: PairAligner, data: DigitData, cfg: Config, *, n: int = 512, seed: int = 0
) -> dict:
    """Photometric error on ``n`` fixed held-out test pairs: before (identity) and after alignment.

    Returns ``{"identity": ..., "aligned": ...}`` (``cfg.aligner_norm`` means); the pairs are
    made from the clean test digits, as in training.

    Args:
        model: a :class:`~corrlib.models.stn.PairAligner` (its ``kind`` picks the warps; its
            train/eval mode is restored afterwards).
        data: the chapter's data (:func:`build_digit_data`); pairs are made from
            ``data.test.images`` ``(N, 1, 28, 28)``.
        cfg: the chapter's :class:`Config` (its fields used: ``aligner_strength``,
            ``aligner_norm``).
        n: the number of test pairs.
        seed: the seed of the pairs (the same seed gives the same pairs).

    Returns:
        ``{"identity": float, "aligned": float}``: the mean photometric error between ``src``
        and ``trg``, and between the aligned ``src`` and ``trg``.
    """
    fn = synthetic_pair_batch_fn(data.test.images, n, model.kind, cfg.aligner_strength)
    src, trg = fn(0, torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        warped, _ = model(src.to(device), trg.to(device))
    finally:
        model.train(was_training)
    norm = cfg.aligner_norm
    return {
        "identity": float(photometric_loss(src, trg, norm)),
        "aligned": float(photometric_loss(warped.cpu(), trg, norm)),
    }


def check_projective_grid(fn: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]) -> str:
    """``fn(h (B, 3, 3), size=(H, W)) -> grid (B, H, W, 2)``: the affine grid generator changed into
    a projective one: ``(x_s, y_s) = (h11 x + h12 y + h13, h21 x + h22 y + h23) /
    (h31 x + h32 y + h33)`` at every normalised output pixel centre (``align_corners=False``),
    last dim (x, y).

    Args:
        fn: the student's grid generator, ``fn(h, size)`` with ``h`` float ``(B, 3, 3)``
            (normalised output coordinates to normalised input coordinates) and ``size`` the
            output ``(H, W)``, returning the sampling grid ``(B, H, W, 2)`` (x, y) in normalised
            coordinates.

    Returns:
        A one-line verdict: ``"pass: ..."``, ``"wrong: ..."`` (the shape, swapped (y, x), a
        missing division or other values; checked on two random ``h`` at ``(5, 7)``) or
        ``"not attempted yet: ..."``.
    """
    g = torch.Generator().manual_seed(3)
    h = torch.eye(3).expand(2, -1, -1) + 0.2 * torch.randn(2, 3, 3, generator=g)
    size = (5, 7)
    xs = (2 * torch.arange(7.0) + 1) / 7 - 1  # independent reference: an explicit loop
    ys = (2 * torch.arange(5.0) + 1) / 5 - 1
    want = torch.zeros(2, 5, 7, 2)
    for b in range(2):
        for i, y in enumerate(ys.tolist()):
            for j, x in enumerate(xs.tolist()):
                u, v, w = (h[b] @ torch.tensor([x, y, 1.0])).tolist()
                want[b, i, j] = torch.tensor([u / w, v / w])
    got, err = run_student(fn, h.clone(), size)
    if err:
        return err
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        return f"wrong: expected a tensor of shape {tuple(want.shape)} (B, H, W, 2), got {shape}."
    got = got.detach().float()
    if torch.allclose(got, want, atol=1e-4):
        return "pass: your projective grid divides by the third coordinate at every pixel centre."
    if torch.allclose(got.flip(-1), want, atol=1e-4):
        return "wrong: the last dimension must be (x, y), not (y, x)."
    no_div = torch.einsum(
        "bjk,hwk->bhwj",
        h[:, :2],
        torch.stack((*torch.meshgrid(xs, ys, indexing="xy"), torch.ones(5, 7)), -1),
    )
    if torch.allclose(got, no_div, atol=1e-4):
        return (
            "wrong: this is h applied without the division by h31 x + h32 y + h33 (the affine case "
            "only)."
        )
    return (
        "wrong: values differ; build (x, y, 1) at the pixel centres (2x + 1) / W - 1, multiply by "
        "h, divide by the third row."
    )


# ------------------------------------------------------------------------------ corrlib train

#: What ``corrlib train --chapter 02_stn --variant ...`` trains (the first is the default):
#: the unsupervised pair aligner, or one digit classifier ``<model>-<distortion>``.
TRAINABLE = ("aligner", *(f"{m}-{k}" for m in DIGIT_MODELS for k in DISTORTIONS))


def train_main(run, variant: str | None = None, *, progress: bool = True):
    """Train the pair aligner or one digit classifier as the notebook does (same checkpoint
    file, so the notebook reuses it). Returns a :class:`~corrlib.recipes._common.TrainedModel`
    (nothing exported: MNIST models are not correspondence methods)."""
    from corrlib.recipes._common import TrainedModel

    name = variant or TRAINABLE[0]
    check_choice(name, "variant", TRAINABLE)
    cfg = run.cfg
    data = build_digit_data(cfg, run.root, run.seed)
    ckpt = run.ckpt_dir / f"{name}.ckpt"
    if name == "aligner":
        model, history, seconds = train_pair_aligner(
            cfg, data, seed=run.seed, device=run.device, ckpt_path=ckpt, progress=progress
        )
    else:
        model_name, kind = name.rsplit("-", 1)
        model, history, seconds = train_digit_classifier(
            model_name, kind, cfg, data, ckpt, run.seed, run.device, progress=progress
        )
    return TrainedModel(model, history, seconds, ckpt)
