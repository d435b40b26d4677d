"""Chapter 01 recipe: learn to compare patches (MC-CNN, DeepCompare, DeepDesc) on real pairs.

Two data settings (``Config.data``). ``"papers"`` (the ``paper`` preset): MC-CNN trains on KITTI
2012 training scenes and is tested on held-out KITTI scenes, as in Zbontar & LeCun; DeepCompare
and DeepDesc train on Brown et al.'s Liberty patches and are tested on the 100,000 labelled
pairs of Notre Dame and Yosemite (FPR95), as in Zagoruyko & Komodakis and Simo-Serra et al.
``"photos"`` (``lab``, ``smoke``; offline): training pairs from the Middlebury 2014 Motorcycle
stereo pair (scikit-image) and synthetic warps of scikit-image photographs; test pairs from two
*held-out* sources with real ground truth: the Middlebury 2006 Aloe stereo pair and the graffiti
viewpoint pair with its homography (OpenCV samples). Pairs follow MC-CNN's sampling (Zbontar &
LeCun, JMLR 2016, Sec. 3.1): a positive within ``p_hi`` pixels of the true match, a negative
``n_lo..n_hi`` pixels away.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from corrlib import distributed
from corrlib._check import check_choice
from corrlib.color import standardize_images
from corrlib.data import (
    KITTI2012Stereo,
    PatchPairs,
    PhotoTourPairs,
    StereoPair,
    SyntheticPairs,
    gather_patches,
    load_aloe,
    load_graffiti,
    load_motorcycle,
    sample_homography_pairs,
    sample_stacked,
    sample_stereo_pairs,
    sample_synthetic_pairs,
    skimage_photos,
    stereo_offsets,
    stereo_references,
)
from corrlib.exercises import as_number, run_student
from corrlib.losses import contrastive_hinge, hard_mining, label_hinge, margin_ranking_hinge
from corrlib.metrics import bad_pixel_rate, fpr_at_recall, pr_auc
from corrlib.models.patch import PATCH_MODELS, PatchModel, patch_model
from corrlib.recipes._common import TrainingConfig, config_getter, make_presets, optim
from corrlib.stereo import (
    census_cost_volume,
    cost_volume_from_features,
    cost_volume_from_pairs,
    disparity_wta,
    zncc_cost_volume,
)
from corrlib.train import Trainer, seed_everything

__all__ = [
    "ARCHS",
    "CHAPTER",
    "DATA_SETTINGS",
    "HANDCRAFTED_PATCH_SCORES",
    "MCCNN_KITTI_AUGMENT",
    "PRESETS",
    "TRAINABLE",
    "Config",
    "PatchAugment",
    "PatchData",
    "PatchPool",
    "StereoSampler",
    "augmentation_for",
    "build_model",
    "build_patch_data",
    "check_fpr95",
    "check_hardest_negative_hinge",
    "config",
    "handcrafted_patch_scores",
    "patch_loss",
    "patch_size_for",
    "pool_for",
    "standardized_input",
    "stereo_benchmark",
    "stereo_disparity",
    "stereo_errors",
    "train_main",
    "train_patch_model",
    "training_sets",
    "verification_metrics",
    "verification_scores",
]

CHAPTER = "01_patch"
#: Every patch network of the chapter (:data:`corrlib.models.patch.PATCH_MODELS` order).
ARCHS = (
    "mccnn-fast",
    "mccnn-accurate",
    "2ch",
    "2ch-deep",
    "siamese",
    "pseudo-siamese",
    "2ch-2stream",
    "siamese-spp",
    "deepdesc",
)


@dataclass(frozen=True)
class PatchAugment:
    """MC-CNN's per-example patch augmentation (``make_patch`` in its ``main.lua``); the defaults
    are its code's KITTI 2012/2015 options (:data:`MCCNN_KITTI_AUGMENT`).

    For each reference (its positive and its negative pair alike) one draw of: rotation
    ``phi ~ U[-rotate, rotate]`` degrees, scale ``s ~ U[scale, 1]`` with horizontal factor
    ``U[hscale, 1]``, horizontal shear ``U[-hshear, hshear]``, brightness ``U[-brightness,
    brightness]`` (added) and contrast ``U[1/contrast, contrast]`` (multiplied, then the
    brightness added). Patch ``a`` and patch ``b`` take the same geometric map about their
    centres and contrast; ``b``'s brightness differs from ``a``'s by ``U[-d_brightness,
    d_brightness]``. The map sends a source offset ``p`` (pixels from the patch centre, x then y)
    to ``M p`` with ``M = shear @ rotation @ scale`` (the code's order, OpenCV's forward map);
    the patch samples the source at ``M^-1 q``, bicubically (OpenCV's ``INTER_CUBIC``, which the
    code asks for, and PyTorch's ``bicubic`` share the kernel, ``a = -0.75``). Brightness is in
    the images' units: MC-CNN applies it to standardised images (``mccnn_input_norm="image"``).
    The options MC-CNN's code leaves at the identity on KITTI (``-trans 0``, no flips,
    ``-d_rotate 0``, ``-d_hscale 1``, ``-d_hshear 0``, ``-d_vtrans 0``, ``-d_contrast 1``) are
    not parameters here.

    Our patches are warped from a larger pre-cut patch (:meth:`margin` pixels more on each side,
    itself sampled bilinearly from the image), where the code warps the image itself: the values
    are interpolated twice, a slight extra smoothing.
    """

    rotate: float = 7.0
    scale: float = 1.0
    hscale: float = 0.9
    hshear: float = 0.1
    brightness: float = 0.7
    contrast: float = 1.3
    d_brightness: float = 0.3
    #: the warp's interpolation: ``"bicubic"`` (the code's) or ``"bilinear"``
    interp: str = "bicubic"

    def __post_init__(self):
        check_choice(self.interp, "interp", ("bicubic", "bilinear"))
        if not (0 < self.scale <= 1 and 0 < self.hscale <= 1 and self.contrast >= 1):
            raise ValueError(
                "PatchAugment needs 0 < scale <= 1, 0 < hscale <= 1 and contrast >= 1 (as "
                f"MC-CNN's code asserts), got {self}."
            )
        for name in ("rotate", "hshear", "brightness", "d_brightness"):
            if getattr(self, name) < 0:
                raise ValueError(f"PatchAugment.{name} must be >= 0, got {getattr(self, name)}.")

    def margin(self, size: int) -> int:
        """Pixels to cut beyond a ``size`` patch on each side so that every warped sample and
        the neighbours its interpolation reads (4 x 4 bicubic, 2 x 2 bilinear) stay inside (the
        farthest corner under the largest draw)."""
        half = (size - 1) / 2
        phi = math.radians(min(self.rotate, 45.0))
        reach = half * (1 + self.hshear) * (math.cos(phi) + math.sin(phi))
        reach /= self.scale * self.hscale
        return max(0, math.ceil(reach - half)) + (2 if self.interp == "bicubic" else 1)

    def draw(self, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """One draw per reference for a batch of ``n`` pairs (``n`` even: rows ``j`` and
        ``j + n / 2`` are a reference's positive and negative and share it): ``{"inverse": (n, 2,
        2) M^-1, "contrast": (n,), "brightness_a": (n,), "brightness_b": (n,)}``."""
        if n % 2:
            raise ValueError(
                f"PatchAugment needs an even number of pairs (B / 2 references), got {n}."
            )
        half = n // 2

        def uniform(lo: float, hi: float) -> torch.Tensor:
            v = lo + (hi - lo) * torch.rand(half, generator=gen, dtype=torch.float64)
            return torch.cat((v, v))

        phi = torch.deg2rad(uniform(-self.rotate, self.rotate))
        s = uniform(self.scale, 1.0)
        sx, sy = s * uniform(self.hscale, 1.0), s
        shear = uniform(-self.hshear, self.hshear)
        brightness = uniform(-self.brightness, self.brightness)
        contrast = uniform(1 / self.contrast, self.contrast)
        brightness_b = brightness + uniform(-self.d_brightness, self.d_brightness)
        # M = shear @ rotation @ scale, rotation = [[c, s], [-s, c]] (the code's); in closed form
        # M^-1 = scale^-1 @ rotation^T @ [[1, -shear], [0, 1]]
        c, si = torch.cos(phi), torch.sin(phi)
        inverse = torch.stack(
            (
                torch.stack((c / sx, (-c * shear - si) / sx), -1),
                torch.stack((si / sy, (-si * shear + c) / sy), -1),
            ),
            -2,
        )
        return {
            "inverse": inverse,
            "contrast": contrast,
            "brightness_a": brightness,
            "brightness_b": brightness_b,
        }

    def apply(
        self, a: torch.Tensor, b: torch.Tensor, size: int, params: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Warp pre-cut patches ``a, b (B, 1, Q, Q)`` (``Q >= size + 2 margin(size)``) with the
        drawn ``params`` (:meth:`draw`) to ``(B, 1, size, size)``, then relight them."""
        if a.shape != b.shape or a.dim() != 4:
            raise ValueError(
                f"PatchAugment needs patches a, b of one shape (B, 1, Q, Q), got "
                f"{tuple(a.shape)} and {tuple(b.shape)}."
            )
        n, q = a.shape[0], a.shape[-1]
        if q < size + 2 * self.margin(size):
            raise ValueError(
                f"PatchAugment needs patches of at least {size + 2 * self.margin(size)} px for "
                f"{size} px outputs, got {q}: build the pool with pool_for(arch, cfg, sets)."
            )
        src = self.offsets(size, params)  # (B, size^2, 2) pixels from the patch centre
        grid = (src / ((q - 1) / 2)).reshape(n, size, size, 2).to(a.device, a.dtype)
        warp = dict(mode=self.interp, padding_mode="border", align_corners=True)
        return self.relight(F.grid_sample(a, grid, **warp), F.grid_sample(b, grid, **warp), params)

    @staticmethod
    def offsets(size: int, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Where each pixel of a ``size x size`` output patch samples its source: float64
        ``(B, size^2, 2)`` offsets (x, y) in pixels from the patch centre, row-major, ``M^-1 q``
        for output offset ``q`` (``params=None``: ``(1, size^2, 2)``, the identity)."""
        r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        vv, uu = torch.meshgrid(r, r, indexing="ij")
        q = torch.stack((uu, vv), -1).reshape(-1, 2)  # (size^2, 2) x, y from the centre
        if params is None:
            return q[None]
        return torch.einsum("nij,kj->nki", params["inverse"], q)

    @staticmethod
    def relight(
        a: torch.Tensor, b: torch.Tensor, params: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``patch * contrast + brightness`` per row (``b`` with its own brightness)."""

        def per_row(v: torch.Tensor) -> torch.Tensor:
            return v.to(a.device, a.dtype)[:, None, None, None]

        gain = per_row(params["contrast"])
        return a * gain + per_row(params["brightness_a"]), b * gain + per_row(
            params["brightness_b"]
        )

    def __call__(
        self, a: torch.Tensor, b: torch.Tensor, size: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`apply` with a fresh :meth:`draw` from ``gen``."""
        return self.apply(a, b, size, self.draw(a.shape[0], gen))


#: MC-CNN's KITTI augmentation (jzbontar/mc-cnn ``main.lua``, the KITTI 2012/2015 options
#: ``-rotate 7 -scale 1 -hscale 0.9 -hshear 0.1 -brightness 0.7 -contrast 1.3 -d_brightness
#: 0.3``): :class:`PatchAugment`'s defaults, as the config's dict.
MCCNN_KITTI_AUGMENT = dataclasses.asdict(PatchAugment())


@dataclass(frozen=True, kw_only=True)
class Config(TrainingConfig):
    """Chapter 01's settings; the defaults are the papers' (sources beside each value).

    Data: patch pairs sampled from Motorcycle (stereo, ``train_stereo_scale``) and
    ``synthetic_images`` synthetic warps; tests on Aloe (``test_stereo_scale``) and graffiti.
    ``p_hi, n_lo, n_hi``: MC-CNN's positive/negative offsets (pixels). ``patch_size``: DeepCompare
    and DeepDesc patches; ``mccnn_patch``: MC-CNN's receptive field; ``mccnn_fc_units``,
    ``mccnn_fc_layers``: MC-CNN accurate's decision head (``fc_layers`` of
    :class:`~corrlib.models.patch.MCCNNAccurate`: hidden layers + the output layer; paper: 4 + 1,
    KITTI; ``lab``/``smoke``: 2 + 1). ``mccnn_input_norm``: MC-CNN's ``input_norm`` (paper:
    ``"image"``, each image standardised; ``lab``/``smoke``: ``"shift"``). ``mining``:
    DeepDesc's hard mining ratio. ``max_disp``: stereo search range; ``willow_limit``: PF-WILLOW
    pairs (None: all).
    """

    #: checkpoints written before MC-CNN's image standardisation and augmentation existed were
    #: trained with the shift and without augmentation (every preset then)
    LEGACY_SETTINGS: ClassVar[dict] = {
        "recipe": {
            "mccnn_input_norm": "shift",
            "mccnn_augment": None,
            "mccnn_sampling": "pool",
            "mccnn_epochs": None,
            "mccnn_lr_epochs": 11,
        },
        "model": {"input_norm": "shift"},
    }
    EVAL_FIELDS: ClassVar[tuple[str, ...]] = (
        "archs",
        "brown_test",
        "test_stereo_scale",
        "max_disp",
        "willow_limit",
    )

    archs: tuple = ARCHS
    # "papers": KITTI 2012 for MC-CNN (Zbontar & LeCun, JMLR 2016, Sec. 4), Brown's Liberty for
    # DeepCompare and DeepDesc, which both train on one scene and test on the other two
    # (Zagoruyko & Komodakis, CVPR 2015, Sec. 4.1; Simo-Serra et al., ICCV 2015, Sec. 4.1);
    # "photos": the offline pairs (see the module docstring)
    data: str = "papers"
    brown_train: str = "liberty"
    brown_test: tuple = ("notredame", "yosemite")
    # Brown training pairs drawn from Liberty's 3-D point labels (half matches); the pool keeps
    # each distinct 64 px patch once, uint8: at most 0.8 GB at 100,000
    n_train_brown: int = 100000
    # KITTI 2012 scenes used of each split (None: all; train 154, val 40, see KITTI2012_SPLITS)
    kitti_scenes: int | None = None
    train_stereo_scale: float = 1.0
    # KITTI 2012 at full resolution, as MC-CNN is evaluated
    test_stereo_scale: float = 1.0
    synthetic_images: int = 400
    # MC-CNN's training pairs with mccnn_sampling="pool" (lab, smoke): drawn once (offsets
    # included) and cut as patches; unused with "online"
    n_train_stereo: int = 100000
    n_train_synthetic: int = 50000
    n_test: int = 50000
    # MC-CNN KITTI 2012 sampling (Zbontar & LeCun, JMLR 2016; official main.lua options)
    p_hi: float = 1.0
    n_lo: float = 4.0
    n_hi: float = 10.0
    # DeepCompare/DeepDesc compare 64x64 patches; MC-CNN 9x9 (4 conv layers, KITTI)
    patch_size: int = 64
    mccnn_patch: int = 9
    mccnn_fc_units: int = 384
    # MC-CNN accurate's decision head: fc_layers counts the hidden Linear(., 384)+ReLU layers and
    # the output Linear(384, 1). Official KITTI: -l2 4 hidden layers, so 5 (jzbontar/mc-cnn
    # main.lua:77, the network at :670-674); Middlebury uses -l2 3 (main.lua:123), so 4.
    mccnn_fc_layers: int = 5
    # MC-CNN's input: "image" standardises each image (zero mean, unit std) before patches are
    # cut, as MC-CNN's code does to every KITTI image (jzbontar/mc-cnn preprocess_kitti.lua:
    # img:add(-img:mean()):div(img:std())); "shift": minus 0.5 (lab and smoke, our choice: the
    # committed runs)
    mccnn_input_norm: str = "image"
    # MC-CNN's training augmentation (PatchAugment fields): its code's KITTI options,
    # MCCNN_KITTI_AUGMENT; None: none (lab and smoke, our choice: the committed runs)
    mccnn_augment: dict | None = field(default_factory=lambda: dict(MCCNN_KITTI_AUGMENT))
    # how MC-CNN's examples are drawn: "online" (the code's main.lua: every valid pixel of the
    # train scenes is a reference, fresh offsets and augmentation each time it is drawn,
    # StereoSampler) or "pool" (n_train_stereo pairs drawn once and cut: lab and smoke)
    mccnn_sampling: str = "online"
    # online: MC-CNN trains mccnn_epochs passes over its references (batch_size / 2 per step),
    # the learning rate divided by 10 after mccnn_lr_epochs (main.lua: 14 epochs, lr / 10 from
    # epoch 12 on); None: the steps and schedule of steps/optim
    mccnn_epochs: int | None = 14
    mccnn_lr_epochs: int = 11
    width_mult: float = 1.0
    batch_size: int = 128
    steps: dict = field(default_factory=lambda: {"default": 100000})
    optim: dict = field(
        default_factory=lambda: {
            # MC-CNN: SGD, momentum 0.9, lr 0.002 (fast) / 0.003 (accurate), batch 128
            "mccnn-fast": optim(
                "sgd", 0.002, momentum=0.9, schedule="step", step_size=85000, gamma=0.1
            ),
            "mccnn-accurate": optim(
                "sgd", 0.003, momentum=0.9, schedule="step", step_size=85000, gamma=0.1
            ),
            # DeepCompare release: (A)SGD lr 0.1, momentum 0.9, weight decay 5e-4 (plain SGD here)
            "default": optim("sgd", 0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine"),
            "deepdesc": optim("sgd", 0.01, momentum=0.9, schedule="cosine"),
        }
    )
    log_every: int = 100
    ckpt_every: int = 10000
    mining: float = 2.0
    # MC-CNN's KITTI disparity range (official main.lua: disp_max 228)
    max_disp: int = 228
    willow_limit: int | None = None

    @property
    def steps_description(self) -> str | None:
        """The steps per model in words where ``steps`` does not say them (chapter 08's tables):
        MC-CNN's epochs when it samples online; None otherwise."""
        if self.mccnn_sampling != "online" or not self.mccnn_epochs:
            return None
        others = ", ".join(f"{k} {v:,}" for k, v in self.steps.items() if not k.startswith("mccnn"))
        return (
            f"MC-CNN {self.mccnn_epochs} passes over every reference, {self.batch_size // 2} a "
            f"step (lr / 10 after {self.mccnn_lr_epochs}), others: {others}"
        )

    @property
    def data_description(self) -> str:
        """What the preset trains and tests on, in words (chapter 08's table of presets)."""
        if self.data == "papers":
            how = [
                *(["every valid pixel, fresh offsets"] if self.mccnn_sampling == "online" else []),
                *(["each image standardised"] if self.mccnn_input_norm == "image" else []),
                *(["the code's augmentation"] if self.mccnn_augment else []),
            ]
            return (
                f"MC-CNN: KITTI 2012 train scenes{''.join(', ' + h for h in how)} (test: val "
                f"scenes); DeepCompare, DeepDesc: Brown {self.brown_train} (test: "
                f"{', '.join(self.brown_test)})"
            )
        return "Motorcycle + synthetic warps (test: Aloe, graffiti)"


#: Chapter 01's data settings (``Config.data``): the papers' datasets, or the offline photographs.
DATA_SETTINGS = ("papers", "photos")


PRESETS = make_presets(
    Config(),
    lab=dict(
        data="photos",
        train_stereo_scale=0.5,
        test_stereo_scale=0.25,
        synthetic_images=24,
        n_train_stereo=16000,
        n_train_synthetic=8000,
        n_test=4000,
        patch_size=32,
        mccnn_fc_units=128,
        mccnn_fc_layers=3,  # 2 hidden + output, as the committed notebooks were run
        mccnn_input_norm="shift",
        mccnn_augment=None,
        mccnn_sampling="pool",
        mccnn_epochs=None,
        width_mult=0.5,
        steps={"default": 600, "mccnn-fast": 1200, "mccnn-accurate": 1200, "deepdesc": 400},
        optim={
            "default": optim("adam", 1e-3, schedule="cosine"),
            "mccnn-accurate": optim("adam", 3e-3, schedule="cosine"),
        },
        log_every=25,
        ckpt_every=100,
        max_disp=64,
    ),
    smoke=dict(
        data="photos",
        train_stereo_scale=0.25,
        test_stereo_scale=0.125,
        synthetic_images=4,
        n_train_stereo=1000,
        n_train_synthetic=600,
        n_test=600,
        patch_size=32,
        mccnn_fc_units=64,
        mccnn_fc_layers=3,
        mccnn_input_norm="shift",
        mccnn_augment=None,
        mccnn_sampling="pool",
        mccnn_epochs=None,
        width_mult=0.25,
        batch_size=32,
        steps={"default": 6},
        optim={"default": optim("adam", 1e-3, schedule="cosine")},
        log_every=2,
        ckpt_every=0,
        max_disp=32,
        willow_limit=6,
    ),
)


#: ``config(preset)``: the chapter's :class:`Config` at a preset (a deep copy; frozen).
config = config_getter(PRESETS)


#: photographs used to make synthetic training pairs (never PF-WILLOW/TSS images)
TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@dataclass
class PatchPool:
    """Training pairs of several sources stacked at one patch size, paired by reference.

    ``patches`` ``(U, 1, P + 2 margin, P + 2 margin)``: every patch once (uint8 when every
    source stores 8-bit patches, as Brown's do at 64 px: 4 KiB a patch; else float32, in
    ``[0, 1]`` or standardised); ``index_a``,
    ``index_b`` ``(N,)``: each pair's rows; ``label``: ``(N,)`` bool; ``pos``, ``neg``: ``(M,)``
    pair indices such that ``pos[j]`` and ``neg[j]`` share their reference patch (MC-CNN's
    example pairs). :attr:`a` and :attr:`b` give the pairs' patches as float32.
    ``standardized``: the patches were cut from standardised images (the input of an MC-CNN
    with ``input_norm="image"``), not in ``[0, 1]``. ``margin``: the stored patches are
    ``P + 2 margin`` pixels, concentric, so that :class:`PatchAugment` can warp them; batches
    and :attr:`a`, :attr:`b` are ``P x P`` (centre crops without augmentation).
    """

    patches: torch.Tensor
    index_a: torch.Tensor
    index_b: torch.Tensor
    label: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor
    standardized: bool = False
    margin: int = 0

    def _rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Stored rows as float32, centre-cropped to ``P x P``."""
        out = gather_patches(self.patches, rows)
        m = self.margin
        return out[..., m : out.shape[-2] - m, m : out.shape[-1] - m] if m else out

    @property
    def a(self) -> torch.Tensor:
        """The first patch of every pair, float32 ``(N, 1, P, P)`` in the sources' range."""
        return self._rows(self.index_a)

    @property
    def b(self) -> torch.Tensor:
        """The second patch of every pair, float32 ``(N, 1, P, P)``."""
        return self._rows(self.index_b)

    @staticmethod
    def from_pairs(
        sets: list[PatchPairs], size: int, *, standardize: bool = False, margin: int = 0
    ) -> PatchPool:
        """Stack the patches of several pair sets at one size, pairing positives with negatives.

        Args:
            sets: :class:`corrlib.data.PatchPairs` (or :class:`corrlib.data.PhotoTourPairs`)
                whose first half are positives and second half one negative per positive, in
                the same order (as the samplers make them; else ``ValueError``).
            size: the patch side ``P`` in pixels.
            standardize: patches cut from standardised images
                (``patch_table(size, standardize=True)``), for an MC-CNN with
                ``input_norm="image"`` (:func:`pool_for` decides from the config).
            margin: also keep ``margin`` pixels around each patch (``PatchPairs`` only: Brown's
                patches have no surroundings), for :class:`PatchAugment`.

        Returns:
            A :class:`PatchPool`: the sets' patch tables (:meth:`PatchPairs.patch_table`) stacked
            once (uint8 only when all are), ``index_a``/``index_b`` and ``label`` ``(N,)`` over
            all sets, and ``pos``, ``neg`` ``(M,)`` int64 pair indices (``M = N / 2``).
        """
        for s in sets:
            n_pos = int(s.label.sum())
            if (
                not (s.label[:n_pos].all() and not s.label[n_pos:].any())
                or len(s.label) != 2 * n_pos
            ):
                raise ValueError(
                    "PatchPool needs pair sets with positives first and one negative per positive."
                )
        if margin and any(not isinstance(s, PatchPairs) for s in sets):
            raise ValueError(
                "PatchPool margin > 0 needs pairs cut from images (PatchPairs); Brown's stored "
                "patches have no surroundings to warp: build their pool with margin=0."
            )
        tables = [s.patch_table(size + 2 * margin, standardize=standardize) for s in sets]
        if any(t.dtype != torch.uint8 for t, _, _ in tables):  # one dtype: float32 in [0, 1]
            tables = [
                (gather_patches(t, torch.arange(len(t))), ia, ib)
                if t.dtype == torch.uint8
                else (t, ia, ib)
                for t, ia, ib in tables
            ]
        patches, index_a, index_b, label, pos, neg, base, rows = [], [], [], [], [], [], 0, 0
        for s, (table, ia, ib) in zip(sets, tables):
            n_pos = int(s.label.sum())
            patches.append(table)
            index_a.append(ia + rows)
            index_b.append(ib + rows)
            label.append(s.label)
            pos.append(torch.arange(n_pos) + base)
            neg.append(torch.arange(n_pos) + base + n_pos)
            base += len(s.label)
            rows += len(table)
        return PatchPool(
            torch.cat(patches),
            torch.cat(index_a),
            torch.cat(index_b),
            torch.cat(label),
            torch.cat(pos),
            torch.cat(neg),
            standardize,
            margin,
        )

    def batch_fn(self, batch_size: int, augment: PatchAugment | None = None):
        """A resumable ``batch_fn(step, generator)`` for :class:`corrlib.train.Trainer`.

        Each batch holds ``batch_size // 2`` references: their positives first, then their
        negatives.

        Args:
            batch_size: the pairs per batch ``B`` (even; an odd one gives ``B - 1`` pairs).
            augment: warp and relight each reference's patches (MC-CNN's augmentation, drawn
                from the same generator after the references); needs a pool built with
                ``margin >= augment.margin(P)``. None: the patches as cut.

        Returns:
            ``fn(step, generator) -> batch``: references drawn uniformly with replacement from
            ``generator``; ``batch`` is ``{"a": (B, 1, P, P), "b": (B, 1, P, P), "label": (B,)
            bool}``, rows ``j`` and ``j + B / 2`` sharing their reference patch.
        """
        half = batch_size // 2
        size = self.patches.shape[-1] - 2 * self.margin
        if augment is not None and self.margin < augment.margin(size):
            raise ValueError(
                f"this augmentation needs a pool margin of {augment.margin(size)} px around the "
                f"{size} px patches, the pool has {self.margin}: build it with "
                "pool_for(arch, cfg, sets)."
            )

        def fn(step: int, gen: torch.Generator) -> dict:
            j = torch.randint(len(self.pos), (half,), generator=gen)
            rows = torch.cat((self.pos[j], self.neg[j]))
            if augment is None:
                a, b = self._rows(self.index_a[rows]), self._rows(self.index_b[rows])
            else:
                a = gather_patches(self.patches, self.index_a[rows])
                b = gather_patches(self.patches, self.index_b[rows])
                a, b = augment(a, b, size, gen)
            return {"a": a, "b": b, "label": self.label[rows]}

        fn.shard = _reference_shard(half)
        return fn


def _reference_shard(half: int):
    """``shard(batch, rank, world)`` of a batch of ``half`` references (positives, then their
    negatives): each process keeps its references' positives and negatives, so a rank's batch
    has the same "positives, then negatives" layout (:mod:`corrlib.distributed`)."""

    def shard(batch: dict, rank: int, world: int) -> dict:
        if half % world:
            raise ValueError(
                f"a patch batch of {half} references does not split into {world} equal "
                f"slices; use a batch size that is a multiple of {2 * world}."
            )
        per = half // world
        keep = torch.cat(
            (
                torch.arange(rank * per, (rank + 1) * per),
                half + torch.arange(rank * per, (rank + 1) * per),
            )
        )
        return {k: v[keep] for k, v in batch.items()}

    return shard


@dataclass
class StereoSampler:
    """MC-CNN's training examples drawn online, as its code draws them (``main.lua``).

    Every left pixel of the training scenes that :func:`corrlib.data.stereo_references` accepts
    is a reference. A batch draws ``B / 2`` references uniformly with replacement (the code
    visits them in a new random order each epoch: the same number of visits on average); each
    gets a fresh positive offset ``U[-p_hi, p_hi]`` and negative offset ``+-U[n_lo, n_hi]``
    along the row, and (with ``augment``) a fresh :class:`PatchAugment` draw; its three
    ``size x size`` patches are sampled from the views themselves (bilinear without
    augmentation, the augmentation's interpolation with it, border padding): one interpolation,
    as the code's. ``left``, ``right``: the scenes' views stacked ``(S, 1, Hm, Wm)``,
    replicate-padded to the largest, in the model's input domain (``standardized``: each view
    standardised on its own before padding, else in ``[0, 1]``); ``ref_scene``, ``ref_xy``
    (x, y), ``ref_d``: every reference, ``(R,)``, ``(R, 2)``, ``(R,)``.
    """

    left: torch.Tensor
    right: torch.Tensor
    ref_scene: torch.Tensor
    ref_xy: torch.Tensor
    ref_d: torch.Tensor
    size: int
    p_hi: float
    n_lo: float
    n_hi: float
    standardized: bool = False

    @staticmethod
    def from_scenes(
        scenes: list, size: int, *, standardize: bool, p_hi: float, n_lo: float, n_hi: float
    ) -> StereoSampler:
        """Index every reference of ``scenes`` (:class:`corrlib.data.StereoPair`)."""
        stereo_offsets(0, 0, p_hi=p_hi, n_lo=n_lo, n_hi=n_hi)  # checks the offsets
        hm = max(int(p.left.shape[0]) for p in scenes)
        wm = max(int(p.left.shape[1]) for p in scenes)
        views: dict[str, list] = {"left": [], "right": []}
        scene, xy, d = [], [], []
        for i, pair in enumerate(scenes):
            for name in ("left", "right"):
                view = getattr(pair, name).float()
                view = standardize_images(view) if standardize else view
                pad = (0, wm - view.shape[1], 0, hm - view.shape[0])
                views[name].append(F.pad(view[None, None], pad, mode="replicate")[0])
            refs, disp = stereo_references(pair, n_hi=n_hi)
            scene.append(torch.full((len(refs),), i, dtype=torch.int32))
            xy.append(refs.to(torch.int32))
            d.append(disp)
        if not sum(len(t) for t in scene):
            raise ValueError(
                "StereoSampler: no pixel of these scenes can serve as a reference (valid "
                "disparity with its candidates inside the image)."
            )
        return StereoSampler(
            torch.stack(views["left"]),
            torch.stack(views["right"]),
            torch.cat(scene),
            torch.cat(xy),
            torch.cat(d),
            size,
            p_hi,
            n_lo,
            n_hi,
            standardize,
        )

    def __len__(self) -> int:
        return int(self.ref_scene.numel())

    def steps_per_epoch(self, batch_size: int) -> int:
        """Steps of one pass over the references, ``B / 2`` a step, as MC-CNN's epoch loop
        (``for t = 1, N - bs/2, bs/2``: ``(N - 1) // (B / 2)`` batches, at least 1)."""
        return max(1, (len(self) - 1) // max(1, batch_size // 2))

    def batch_fn(self, batch_size: int, augment: PatchAugment | None = None):
        """A resumable ``batch_fn(step, generator)`` for :class:`corrlib.train.Trainer`, with the
        layout of :meth:`PatchPool.batch_fn` (rows ``j`` and ``j + B / 2``: a reference's
        positive and negative, sharing its ``a`` patch). Everything is drawn from ``generator``:
        references, offsets, then the augmentation."""
        half = batch_size // 2
        size = self.size
        mode = augment.interp if augment is not None else "bilinear"

        def fn(step: int, gen: torch.Generator) -> dict:
            j = torch.randint(len(self), (half,), generator=gen)
            o = stereo_offsets(
                half, half, p_hi=self.p_hi, n_lo=self.n_lo, n_hi=self.n_hi, generator=gen
            )
            rows = torch.cat((j, j))
            xy = self.ref_xy[rows].double()
            centre_b = torch.stack((xy[:, 0] - self.ref_d[rows].double() + o, xy[:, 1]), 1)
            params = augment.draw(2 * half, gen) if augment is not None else None
            offsets = PatchAugment.offsets(size, params)  # (1 or B, size^2, 2)
            scenes = self.ref_scene[rows].long()
            shape = (2 * half, size, size, 2)
            pts_a = (xy[:, None, :] + offsets).float().reshape(shape)
            pts_b = (centre_b[:, None, :] + offsets).float().reshape(shape)
            a = sample_stacked(self.left, scenes, pts_a, mode)[:, None]
            b = sample_stacked(self.right, scenes, pts_b, mode)[:, None]
            if params is not None:
                a, b = augment.relight(a, b, params)
            return {"a": a, "b": b, "label": torch.arange(2 * half) < half}

        fn.shard = _reference_shard(half)
        return fn


@dataclass
class PatchData:
    """Everything chapter 01 trains and tests on (see :func:`build_patch_data`).

    ``train_by_family``: with the papers' data, ``{"mccnn": [...], "descriptor": [...]}``: the
    sets each family trains on (MC-CNN on KITTI: the train scenes themselves when it samples
    online, ``cfg.mccnn_sampling``, else pairs drawn from them; DeepCompare and DeepDesc on
    Brown); None when
    every architecture trains on every set of ``train`` (the offline photographs).
    """

    train: list
    test: dict
    stereo_train: object
    stereo_test: object
    graffiti: object
    info: dict = field(default_factory=dict)
    train_by_family: dict | None = None
    #: ``{test set: its protocol}``, for result rows
    protocol: dict = field(default_factory=dict)
    #: what the stereo scores cover (:attr:`stereo_tests`), for result rows
    stereo_test_name: str = ""
    #: every held-out stereo pair the stereo scores average over (:func:`stereo_benchmark`):
    #: with the papers' data the KITTI 2012 val scenes used, else ``[stereo_test]``; the first is
    #: ``stereo_test`` (the one drawn)
    stereo_tests: list = field(default_factory=list)

    def __post_init__(self):
        if not self.stereo_tests:
            self.stereo_tests = [self.stereo_test]

    def train_for(self, arch: str) -> list:
        """The training pair sets of ``arch`` (one of :data:`corrlib.models.patch.PATCH_MODELS`):
        what :meth:`PatchPool.from_pairs` stacks for it."""
        check_choice(arch, "arch", PATCH_MODELS)
        if self.train_by_family is None:
            return self.train
        return self.train_by_family["mccnn" if arch.startswith("mccnn") else "descriptor"]


def _sampling(cfg) -> dict:
    """MC-CNN's positive/negative offsets of ``cfg``, as the samplers take them."""
    return {"p_hi": cfg.p_hi, "n_lo": cfg.n_lo, "n_hi": cfg.n_hi}


def _sampled_protocol(cfg) -> str:
    return f"patch verification, MC-CNN sampling (N_lo={cfg.n_lo:g}, N_hi={cfg.n_hi:g})"


def _kitti_sets(
    cfg, root, split: str, scale: float, n: int, g: torch.Generator, sampling: dict, draw=True
):
    """``(pairs, scenes)``: ``n`` pairs (positives first) spread over the split's scenes (none
    with ``draw=False``: the scenes only, for :class:`StereoSampler`)."""
    ds = KITTI2012Stereo(root, split, scale=scale)
    count = len(ds) if cfg.kitti_scenes is None else min(len(ds), cfg.kitti_scenes)
    scenes = [ds[i] for i in range(count)]
    if not draw:
        return [], scenes
    per = max(2, 2 * (n // (2 * count)))  # even: one negative per positive in every scene
    return [sample_stereo_pairs(sc, per, generator=g, **sampling) for sc in scenes], scenes


def _stack_pairs(sets: list[PatchPairs], source: str) -> PatchPairs:
    """One :class:`PatchPairs` holding every pair of ``sets`` (their images side by side)."""
    images, ia, ib, xy, a_b, label, offset = [], [], [], [], [], [], []
    for s in sets:
        base = len(images)
        images += s.images
        ia.append(s.img_a_index + base)
        ib.append(s.img_b_index + base)
        xy.append(s.xy_a)
        a_b.append(s.A_b)
        label.append(s.label)
        offset.append(s.offset if s.offset is not None else torch.zeros(len(s), 2))
    return PatchPairs(
        images,
        torch.cat(ia),
        torch.cat(xy),
        torch.cat(ib),
        torch.cat(a_b),
        torch.cat(label),
        source=source,
        offset=torch.cat(offset),
        patch_size=sets[0].patch_size,
    )


def _mccnn_train(cfg: Config, data_root, g: torch.Generator) -> tuple[list, list]:
    """``(sets, scenes)``: MC-CNN's training sets (the KITTI train scenes themselves when it
    samples online, else the pairs drawn from them) and the scenes."""
    online = cfg.mccnn_sampling == "online"
    pairs, scenes = _kitti_sets(
        cfg,
        data_root,
        "train",
        cfg.train_stereo_scale,
        cfg.n_train_stereo,
        g,
        _sampling(cfg),
        draw=not online,
    )
    return (scenes if online else pairs), scenes


def _papers_data(cfg: Config, data_root, seed: int, g, sampling) -> PatchData:
    online = cfg.mccnn_sampling == "online"
    mccnn_train, train_scenes = _mccnn_train(cfg, data_root, g)
    # the val pairs from a generator of their own (seed + 1): the same test pairs however
    # MC-CNN's training examples are drawn (online or a pool of any size)
    g_val = torch.Generator().manual_seed(seed + 1)
    kitti_val, val_scenes = _kitti_sets(
        cfg, data_root, "val", cfg.test_stereo_scale, cfg.n_test, g_val, sampling
    )
    brown = _brown_train(cfg, data_root, seed)
    test = {"kitti 2012 val (stereo)": _stack_pairs(kitti_val, "KITTI 2012 val scenes")}
    for name in cfg.brown_test:
        test[f"{name} (brown)"] = PhotoTourPairs(data_root, name, train=False)
    info = {
        "train": (
            f"MC-CNN: {len(train_scenes)} KITTI 2012 train scenes at scale "
            f"{cfg.train_stereo_scale:g}; DeepCompare/DeepDesc: Brown {cfg.brown_train} "
            f"({len(brown)} pairs from its 3-D points)"
        ),
        "test": (
            f"patch pairs of the {len(val_scenes)} KITTI 2012 val scenes, Brown "
            f"{', '.join(cfg.brown_test)} (their official labelled pairs); stereo maps on the "
            f"{len(val_scenes)} val scenes"
        ),
        "n_train": (
            f"MC-CNN: every valid pixel of {len(train_scenes)} scenes, drawn online; "
            f"DeepCompare/DeepDesc: {len(brown)} pairs"
            if online
            else sum(len(t) for t in mccnn_train) + len(brown)
        ),
        "n_test": {k: len(v) for k, v in test.items()},
    }
    protocol = {
        k: "patch verification, Brown's official pairs (m50 list)"
        if k.endswith("(brown)")
        else _sampled_protocol(cfg)
        for k in test
    }
    return PatchData(
        [*mccnn_train, brown],
        test,
        train_scenes[0],
        val_scenes[0],
        load_graffiti(data_root),
        info,
        {"mccnn": mccnn_train, "descriptor": [brown]},
        protocol,
        f"KITTI 2012 stereo ({len(val_scenes)} val scenes, mean over scenes)",
        val_scenes,
    )


def build_patch_data(cfg: Config, data_root=None, seed: int = 0) -> PatchData:
    """Sample the train and held-out test pairs of chapter 01 from ``cfg`` (a preset config).

    ``cfg.data == "photos"``: train on Motorcycle (stereo, scale ``cfg.train_stereo_scale``) and
    synthetic warps of :data:`TRAIN_PHOTOS`; test on Aloe (stereo, ``cfg.test_stereo_scale``)
    and graffiti (homography). ``"papers"``: train MC-CNN on the KITTI 2012 train scenes
    (:class:`corrlib.data.KITTI2012Stereo`; sampled online, or ``cfg.n_train_stereo`` pairs
    spread over them with ``cfg.mccnn_sampling="pool"``) and the other
    families on ``cfg.n_train_brown`` pairs of Brown's ``cfg.brown_train``
    (:class:`corrlib.data.PhotoTourPairs`; see :meth:`PatchData.train_for`); test on
    ``cfg.n_test`` pairs of the KITTI val scenes and on the official 100,000 pairs of each of
    ``cfg.brown_test``; ``stereo_train``/``stereo_test`` are the first train and val scenes and
    ``stereo_tests`` every val scene used (the stereo scores average over them). Train and test
    images are disjoint in both.

    Args:
        cfg: the chapter's :class:`Config` (its fields used: ``train_stereo_scale``,
            ``test_stereo_scale``, ``synthetic_images``, ``n_train_stereo``,
            ``n_train_synthetic``, ``n_test``, ``p_hi``, ``n_lo``, ``n_hi``).
        data_root: the folder that holds the Aloe and graffiti data (None: ``$CORRLIB_DATA``).
        seed: the seed of the synthetic warps and of every pair sampler.

    Returns:
        A :class:`PatchData`: ``train`` (two :class:`corrlib.data.PatchPairs`: Motorcycle, then
        synthetic), ``test`` (``{"aloe (stereo)": ..., "graffiti (homography)": ...}``),
        ``stereo_train``/``stereo_test`` (the Motorcycle and Aloe stereo pairs: grey
        ``(H, W)`` float in ``[0, 1]``, disparity and validity), ``stereo_tests``
        (``[stereo_test]``; the KITTI val scenes with the papers' data), ``graffiti`` (its
        homography pair) and ``info`` (keys ``train``, ``test``, ``n_train``, ``n_test``).
    """
    check_choice(cfg.data, "data", DATA_SETTINGS)
    g = torch.Generator().manual_seed(seed)
    sampling = _sampling(cfg)
    if cfg.data == "papers":
        return _papers_data(cfg, data_root, seed, g, sampling)
    moto = load_motorcycle(scale=cfg.train_stereo_scale)
    synth = SyntheticPairs(
        skimage_photos(TRAIN_PHOTOS),
        size=(160, 160),
        kind="mixed",
        strength=0.4,
        n_pairs=cfg.synthetic_images,
        n_kps=64,
        seed=seed,
    )
    train = [
        sample_stereo_pairs(moto, cfg.n_train_stereo, generator=g, **sampling),
        sample_synthetic_pairs(synth, cfg.n_train_synthetic, generator=g, **sampling),
    ]
    aloe = load_aloe(data_root, scale=cfg.test_stereo_scale)
    graf = load_graffiti(data_root)
    test = {
        "aloe (stereo)": sample_stereo_pairs(aloe, cfg.n_test, generator=g, **sampling),
        "graffiti (homography)": sample_homography_pairs(graf, cfg.n_test, generator=g, **sampling),
    }
    info = {
        "train": (
            f"Motorcycle {tuple(moto.size)} + {cfg.synthetic_images} synthetic warps of "
            f"{', '.join(TRAIN_PHOTOS)}"
        ),
        "test": f"Aloe {tuple(aloe.size)} and graffiti 1->3",
        "n_train": sum(len(t) for t in train),
        "n_test": {k: len(v) for k, v in test.items()},
    }
    protocol = {k: _sampled_protocol(cfg) for k in test}
    return PatchData(train, test, moto, aloe, graf, info, None, protocol, "Aloe stereo")


def training_sets(cfg: Config, arch: str, data_root=None, seed: int = 0) -> list:
    """The training pair sets of ``arch`` alone: ``build_patch_data(...).train_for(arch)``, the
    same pairs, without reading what ``arch`` does not train on (with the papers' data, MC-CNN
    needs no Brown scene and the other families no KITTI scene)."""
    check_choice(arch, "arch", PATCH_MODELS)
    check_choice(cfg.data, "data", DATA_SETTINGS)
    if cfg.data == "photos":
        return build_patch_data(cfg, data_root, seed).train_for(arch)
    if arch.startswith("mccnn"):  # drawn first from the seeded generator, as in build_patch_data
        return _mccnn_train(cfg, data_root, torch.Generator().manual_seed(seed))[0]
    return [_brown_train(cfg, data_root, seed)]


def _brown_train(cfg: Config, data_root, seed: int) -> PhotoTourPairs:
    return PhotoTourPairs(
        data_root, cfg.brown_train, train=True, n_pairs=2 * (cfg.n_train_brown // 2), seed=seed
    )


def patch_size_for(arch: str, cfg: Config) -> int:
    """MC-CNN compares patches of its receptive field; the other families ``cfg.patch_size``.

    Args:
        arch: one of :data:`corrlib.models.patch.PATCH_MODELS`.
        cfg: the chapter's :class:`Config` (its fields used: ``mccnn_patch``, ``patch_size``).

    Returns:
        The patch side ``P`` in pixels.
    """
    check_choice(arch, "arch", PATCH_MODELS)
    return cfg.mccnn_patch if arch.startswith("mccnn") else cfg.patch_size


def standardized_input(arch: str, cfg: Config) -> bool:
    """Whether ``arch`` trains on patches cut from standardised images: MC-CNN with
    ``cfg.mccnn_input_norm == "image"`` (the other families take patches in ``[0, 1]``)."""
    check_choice(arch, "arch", PATCH_MODELS)
    return arch.startswith("mccnn") and cfg.mccnn_input_norm == "image"


def augmentation_for(arch: str, cfg: Config) -> PatchAugment | None:
    """MC-CNN's training augmentation at ``cfg`` (``cfg.mccnn_augment``; None: none); the other
    families train on the patches as cut. Warns when it is asked for on patches in ``[0, 1]``
    (``mccnn_input_norm="shift"``): its brightness and contrast are meant for standardised
    images."""
    check_choice(arch, "arch", PATCH_MODELS)
    if not arch.startswith("mccnn") or not cfg.mccnn_augment:
        return None
    if cfg.mccnn_input_norm != "image":
        warnings.warn(
            "mccnn_augment's brightness and contrast are MC-CNN's, for standardised images; "
            "with mccnn_input_norm='shift' they act on [0, 1] patches, far stronger.",
            stacklevel=2,
        )
    return PatchAugment(**cfg.mccnn_augment)


def pool_for(arch: str, cfg: Config, sets: list) -> PatchPool | StereoSampler:
    """The training examples of ``arch`` (``sets``: :meth:`PatchData.train_for`'s).

    MC-CNN with ``cfg.mccnn_sampling == "online"``: a :class:`StereoSampler` over the stereo
    scenes ``sets`` (what ``train_for`` gives then). Otherwise the pairs of ``sets`` stacked at
    :func:`patch_size_for` with the input :func:`standardized_input` says and the margin
    :func:`augmentation_for` needs (:meth:`PatchPool.from_pairs`)."""
    size = patch_size_for(arch, cfg)
    augment = augmentation_for(arch, cfg)
    check_choice(cfg.mccnn_sampling, "mccnn_sampling", ("online", "pool"))
    if arch.startswith("mccnn") and cfg.mccnn_sampling == "online":
        if not sets or not all(isinstance(s, StereoPair) for s in sets):
            raise ValueError(
                "mccnn_sampling='online' draws MC-CNN's examples from stereo scenes (StereoPair: "
                "the papers' data, data='papers'); these training sets are patch pairs: use "
                "mccnn_sampling='pool'."
            )
        return StereoSampler.from_scenes(
            sets,
            size,
            standardize=standardized_input(arch, cfg),
            p_hi=cfg.p_hi,
            n_lo=cfg.n_lo,
            n_hi=cfg.n_hi,
        )
    return PatchPool.from_pairs(
        sets,
        size,
        standardize=standardized_input(arch, cfg),
        margin=augment.margin(size) if augment is not None else 0,
    )


def _model_kwargs(arch: str, cfg: Config) -> dict:
    if arch == "mccnn-fast":
        return {"layers": (cfg.mccnn_patch - 1) // 2, "input_norm": cfg.mccnn_input_norm}
    if arch == "mccnn-accurate":
        return {
            "layers": (cfg.mccnn_patch - 1) // 2,
            "fc_units": cfg.mccnn_fc_units,
            "fc_layers": cfg.mccnn_fc_layers,
            "input_norm": cfg.mccnn_input_norm,
        }
    if arch == "deepdesc":
        return {"patch_size": cfg.patch_size, "width_mult": cfg.width_mult}
    return {
        "patch_size": cfg.patch_size,
        "width_mult": cfg.width_mult,
    }  # the kind is the registry name


def build_model(arch: str, cfg: Config) -> PatchModel:
    """The registered model ``arch`` at the preset's sizes.

    Args:
        arch: one of :data:`corrlib.models.patch.PATCH_MODELS`.
        cfg: the chapter's :class:`Config` (its fields used: ``mccnn_patch``, ``mccnn_fc_units``,
            ``mccnn_fc_layers``, ``patch_size``, ``width_mult``).

    Returns:
        A new, randomly initialised :class:`~corrlib.models.patch.PatchModel`:
        ``model(a, b) -> (B,)`` for patches ``a``, ``b`` float ``(B, 1, P, P)``, ``P`` from
        :func:`patch_size_for`.
    """
    kw = _model_kwargs(arch, cfg)
    model = patch_model(arch, **kw)
    # chapter 01 evaluates the descriptors on PF-WILLOW at the original resolution; exported with
    # the weights, this is the mccnn-fast / deepdesc methods' default
    model.eval_settings = {"max_side": None}
    return model


def patch_loss(
    arch: str,
    model: PatchModel,
    batch: dict,
    *,
    margin: float = 0.2,
    desc_margin: float = 4.0,
    mining: float = 1.0,
):
    """The loss each paper trains with, on a batch of positives then negatives.

    MC-CNN fast: hinge on the score difference of the pair sharing a reference (margin 0.2);
    MC-CNN accurate: binary cross-entropy; DeepCompare: hinge on labels +-1; DeepDesc: L2
    distance for positives, ``max(0, C - d)`` for negatives, keeping the hardest ``1/mining``.
    Returns ``(loss, logs)``.

    Args:
        arch: one of :data:`corrlib.models.patch.PATCH_MODELS` (picks the loss).
        model: the patch network, ``model(a, b) -> (B,)``.
        batch: ``{"a": (B, 1, P, P), "b": (B, 1, P, P), "label": (B,) bool}`` float patches, the
            ``B / 2`` positives first and row ``j + B / 2`` the negative of row ``j``'s
            reference (:meth:`PatchPool.batch_fn`).
        margin: MC-CNN fast's hinge margin.
        desc_margin: DeepDesc's margin ``C`` on the descriptor distance.
        mining: DeepDesc's mining ratio (1: no mining); the other losses ignore it.

    Returns:
        ``(loss, logs)``: a scalar tensor and ``{"rank_acc": float}``, the fraction of all
        ``B/2 x B/2`` (positive, negative) combinations of the batch whose match scores are
        ordered correctly (positive above negative).
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
    cfg: Config,
    pool: PatchPool | StereoSampler,
    *,
    ckpt_path=None,
    seed: int = 0,
    device: str = "auto",
    mining: float | None = None,
    progress: bool = False,
    steps: int | None = None,
):
    """Train one architecture with :class:`corrlib.train.Trainer`.

    Resumes from ``ckpt_path`` if a checkpoint is there (finished runs return at once).

    Args:
        arch: one of :data:`corrlib.models.patch.PATCH_MODELS`.
        cfg: the chapter's :class:`Config` (its fields used: ``batch_size``, ``steps``, ``optim``,
            ``log_every``, ``ckpt_every``, ``mining``, ``mccnn_augment`` and those of
            :func:`build_model`, ``mccnn_input_norm`` among them).
        pool: the training examples of ``arch`` at ``cfg`` (:func:`pool_for`: a
            :class:`PatchPool` at its patch size, input domain and augmentation margin, or
            MC-CNN's :class:`StereoSampler`; a pool in another domain is refused). With a
            sampler and ``cfg.mccnn_epochs``, the steps are ``mccnn_epochs`` passes over its
            references and the learning rate drops tenfold after ``mccnn_lr_epochs``.
        ckpt_path: the checkpoint file (None: no checkpoints, no resume).
        seed: seeds the initialisation and the batches.
        device: ``"auto"`` or a torch device string.
        mining: DeepDesc's mining ratio for :func:`patch_loss` (None: ``cfg.mining`` for
            DeepDesc, the paper's; 1: no mining); recorded with the checkpoint.
        progress: show a progress bar.
        steps: the number of steps (None: ``cfg.steps``, or MC-CNN's epochs with a sampler).

    Returns:
        ``(model, history, seconds)``: the trained :class:`~corrlib.models.patch.PatchModel` in
        ``eval()`` mode on the training device, the Trainer's history rows (``{"step", "loss",
        "lr", "seconds", "rank_acc"}``) and this call's wall time.
    """
    seed_everything(seed)  # the model's initialisation
    model = build_model(arch, cfg)
    if pool.standardized != model.standardized_patches:
        want = "standardised images" if model.standardized_patches else "images in [0, 1]"
        raise ValueError(
            f"{arch} at this config takes patches cut from {want}, but the pool's patches are "
            f"{'standardised' if pool.standardized else 'in [0, 1]'}: build the pool with "
            "pool_for(arch, cfg, sets)."
        )
    if mining is None:
        mining = cfg.mining if arch == "deepdesc" else 1.0
    if mining != 1.0 and distributed.world_size() > 1:
        warnings.warn(
            f"{arch}: hard mining keeps the hardest pairs of each process's slice, not of the "
            "whole batch, so this run differs from one process at the global batch; train it on "
            "one process for that equality.",
            stacklevel=2,
        )
    config = cfg.train_config(
        arch, seed=seed, device=device, steps=steps, settings={"mining": mining}
    )
    if isinstance(pool, StereoSampler) and cfg.mccnn_epochs is not None and steps is None:
        # MC-CNN's code: mccnn_epochs passes over every reference, lr / 10 (once) after
        # mccnn_lr_epochs; the optim entry's schedule is replaced
        epochs, drop = cfg.mccnn_epochs, cfg.mccnn_lr_epochs
        if not (isinstance(epochs, int) and isinstance(drop, int) and 1 <= drop and epochs >= 1):
            raise ValueError(
                f"mccnn_epochs and mccnn_lr_epochs must be ints >= 1, got {epochs!r} and {drop!r}."
            )
        if epochs > 2 * drop:
            raise ValueError(
                f"mccnn_epochs={epochs} > 2 * mccnn_lr_epochs={drop}: the step schedule would "
                "divide the learning rate a second time, which MC-CNN's code does not."
            )
        per_epoch = pool.steps_per_epoch(cfg.batch_size)
        config = dataclasses.replace(
            config,
            steps=epochs * per_epoch,
            schedule="step" if drop < epochs else "constant",
            step_size=drop * per_epoch,
            gamma=0.1,
        )
    trainer = Trainer(
        model,
        lambda m, batch: patch_loss(arch, m, batch, mining=mining),
        pool.batch_fn(cfg.batch_size, augmentation_for(arch, cfg)),
        config,
        ckpt_path=ckpt_path,
        progress=progress,
    )
    t0 = time.perf_counter()
    history = trainer.fit(resume=True)
    model.eval()
    return model, history, time.perf_counter() - t0


@torch.no_grad()
def verification_scores(
    model: PatchModel, pairs: PatchPairs, size: int, batch: int = 2048
) -> torch.Tensor:
    """``match_score`` of every pair (higher = more alike): ``(N,)``.

    Args:
        model: a patch network (put in ``eval()`` mode; runs on its parameters' device).
        pairs: ``N`` labelled patch pairs (:class:`corrlib.data.PatchPairs`).
        size: the patch side ``P`` the model compares (:func:`patch_size_for`).
        batch: pairs per forward pass.

    Returns:
        Float ``(N,)`` scores on the CPU, in the order of ``pairs``.
    """
    model.eval()
    # patches once (cut from standardised images when the model takes those); float per batch
    table, index_a, index_b = pairs.patch_table(size, standardize=model.standardized_patches)
    device = next(model.parameters()).device
    return torch.cat(
        [
            model.match_score(
                gather_patches(table, index_a[i : i + batch]).to(device),
                gather_patches(table, index_b[i : i + batch]).to(device),
            ).cpu()
            for i in range(0, len(index_a), batch)
        ]
    )


def _census_bits(p: torch.Tensor) -> torch.Tensor:
    centre = p[..., p.shape[-2] // 2, p.shape[-1] // 2][..., None, None]
    return (p < centre).flatten(1)


#: hand-crafted patch similarities (higher = more alike) on ``(N, 1, P, P)`` patches
HANDCRAFTED_PATCH_SCORES = {
    "ssd": lambda a, b: -((a - b) ** 2).flatten(1).sum(1),
    "zncc": lambda a, b: F.cosine_similarity(
        (a - a.mean((2, 3), keepdim=True)).flatten(1),
        (b - b.mean((2, 3), keepdim=True)).flatten(1),
        dim=1,
        eps=1e-6,
    ),
    "census": lambda a, b: -(_census_bits(a) != _census_bits(b)).float().sum(1),
}


def handcrafted_patch_scores(pairs: PatchPairs, kind: str, size: int) -> torch.Tensor:
    """Similarity of each pair by a hand-crafted measure: ``ssd``, ``zncc`` or census Hamming.

    Args:
        pairs: ``N`` labelled patch pairs (:class:`corrlib.data.PatchPairs`).
        kind: a key of :data:`HANDCRAFTED_PATCH_SCORES` (``"ssd"``, ``"zncc"``, ``"census"``).
        size: the patch side ``P`` in pixels.

    Returns:
        Float ``(N,)`` scores, higher = more alike: minus the sum of squared differences, the
        ZNCC in ``[-1, 1]``, or minus the Hamming distance of the patches' census bits (each
        pixel against the patch centre).
    """
    check_choice(kind, "kind", HANDCRAFTED_PATCH_SCORES)
    table, index_a, index_b = pairs.patch_table(size)
    score = HANDCRAFTED_PATCH_SCORES[kind]
    chunk = 8192  # float copies of a chunk at a time, not of every pair
    return torch.cat(
        [
            score(
                gather_patches(table, index_a[i : i + chunk]),
                gather_patches(table, index_b[i : i + chunk]),
            )
            for i in range(0, len(index_a), chunk)
        ]
    )


def verification_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """FPR95 (false-positive rate at 95 % recall; lower is better) and PR-AUC.

    Args:
        scores: float ``(N,)`` pair scores, higher = more alike (e.g. :func:`verification_scores`).
        labels: ``(N,)`` bool, True for a matching pair.

    Returns:
        ``{"fpr95": float, "pr_auc": float}``: :func:`corrlib.metrics.fpr_at_recall` at 0.95 and
        :func:`corrlib.metrics.pr_auc` (average precision; higher is better), both in ``[0, 1]``.
    """
    return {
        "fpr95": float(fpr_at_recall(scores, labels, 0.95)),
        "pr_auc": float(pr_auc(scores, labels)),
    }


@torch.no_grad()
def stereo_disparity(method, pair, max_disp: int, *, window: int = 0) -> torch.Tensor:
    """Winner-takes-all disparity ``(H, W)`` of the left image.

    ``method``: a trained MC-CNN (fast: cosine of dense features; accurate: its learned decision
    on every disparity), or ``"census"``/``"zncc"`` (hand-crafted costs, radius 4 = 9x9 windows,
    like MC-CNN's 9x9 patches; ``window`` sums scores over a box as classic aggregation would).

    Args:
        method: a trained MC-CNN (:class:`~corrlib.models.patch.MCCNNFast` or
            :class:`~corrlib.models.patch.MCCNNAccurate`; runs on its parameters' device), or
            ``"census"`` or ``"zncc"``.
        pair: a rectified stereo pair (e.g. ``PatchData.stereo_test``) with ``left``, ``right``
            grey float ``(H, W)`` in ``[0, 1]`` (an MC-CNN with ``input_norm="image"``
            standardises each view itself, :meth:`~corrlib.models.patch.MCCNNFast.image_features`).
        max_disp: the largest disparity searched, in pixels (``D = max_disp + 1`` candidates).
        window: hand-crafted costs only: average the scores over a ``(2 window + 1)^2`` box
            (0: per pixel); ignored for an MC-CNN.

    Returns:
        Float ``(H, W)`` integer-valued disparities of the left image in pixels
        (``x_right = x_left - d``), on the CPU; 0 where no disparity is defined.
    """
    if isinstance(method, str):
        check_choice(method, "method", ("census", "zncc"))
        volume_fn = census_cost_volume if method == "census" else zncc_cost_volume
        vol = volume_fn(pair.left, pair.right, max_disp, radius=4, window=window)
        vol = vol if vol.dim() == 4 else vol[None]
        return disparity_wta(vol)[0]
    model = method.eval()
    device = next(model.parameters()).device
    # each view prepared on its own (MC-CNN's standardisation uses that image's statistics)
    fl = model.image_features(pair.left[None, None].to(device))
    fr = model.image_features(pair.right[None, None].to(device))
    if model.output == "similarity":
        vol = cost_volume_from_features(fl, fr, max_disp)
    else:
        vol = cost_volume_from_pairs(fl, fr, max_disp, model.decision)
    return disparity_wta(vol)[0].cpu()


def stereo_benchmark(method, pairs: list, max_disp: int, *, window: int = 0, first=None) -> dict:
    """Bad-pixel rates of ``method`` over every stereo pair of ``pairs``, averaged over pairs
    (each pair's rate over its valid pixels, then the mean: the KITTI devkit's averaging over
    images).

    Args:
        method: what :func:`stereo_disparity` takes (a trained MC-CNN, ``"census"``, ``"zncc"``).
        pairs: rectified stereo pairs (e.g. ``PatchData.stereo_tests``).
        max_disp: the largest disparity searched, in pixels.
        window: hand-crafted costs only, see :func:`stereo_disparity`.
        first: the disparity ``(H, W)`` of ``pairs[0]`` when already computed (not recomputed).

    Returns:
        ``{"bad1": float, "bad3": float, "pairs": int, "per_pair": [{"bad1", "bad3"}, ...]}``:
        the means over pairs (lower is better) and each pair's rates, in order.
    """
    if not pairs:
        raise ValueError("stereo_benchmark needs at least one stereo pair, got none.")
    per_pair = []
    for i, pair in enumerate(pairs):
        disp = first if i == 0 and first is not None else None
        if disp is None:
            disp = stereo_disparity(method, pair, max_disp, window=window)
        per_pair.append(stereo_errors(disp, pair))
    mean = {k: sum(e[k] for e in per_pair) / len(per_pair) for k in ("bad1", "bad3")}
    return {**mean, "pairs": len(per_pair), "per_pair": per_pair}


def stereo_errors(disp: torch.Tensor, pair) -> dict:
    """Middlebury bad-pixel rates (> 1 px and > 3 px) over the valid ground truth.

    Args:
        disp: float ``(H, W)`` disparities of the left image in pixels (e.g.
            :func:`stereo_disparity`).
        pair: the stereo pair, with ``disparity`` float ``(H, W)`` and ``valid`` bool ``(H, W)``.

    Returns:
        ``{"bad1": float, "bad3": float}``: fractions in ``[0, 1]`` (lower is better; NaN
        without valid pixels), :func:`corrlib.metrics.bad_pixel_rate`.
    """
    return {
        f"bad{t:g}": float(bad_pixel_rate(disp, pair.disparity, pair.valid, t)) for t in (1.0, 3.0)
    }


def check_fpr95(fn: Callable[[torch.Tensor, torch.Tensor], float]) -> str:
    """``fn(scores (N,), labels (N,) bool) -> FPR at 95 % recall`` (scores: higher = more alike).

    Args:
        fn: the student's FPR95, ``fn(scores, labels)`` with ``scores`` float ``(N,)`` and
            ``labels`` bool ``(N,)``, returning a number (a float or a 0-dim tensor) in
            ``[0, 1]``.

    Returns:
        A one-line verdict: ``"pass: ..."``, ``"wrong: ..."`` (more than 1e-6 from
        :func:`corrlib.metrics.fpr_at_recall` on 200 random scores) or
        ``"not attempted yet: ..."``.
    """
    from corrlib.metrics import fpr_at_recall

    g = torch.Generator().manual_seed(2)
    labels = torch.rand(200, generator=g) < 0.5
    scores = labels.float() + 0.8 * torch.randn(200, generator=g)
    want = float(fpr_at_recall(scores, labels, 0.95))
    got, err = run_student(fn, scores.clone(), labels.clone())
    if err:
        return err
    got, err = as_number(got)
    if err:
        return err
    if not abs(got - want) <= 1e-6:
        return (
            f"wrong: got {got:.4f}, expected {want:.4f}. Lower the threshold until 95 % of the "
            "positives score at or above it, then count the fraction of negatives at or above it."
        )
    return "pass: your FPR95 matches corrlib.metrics.fpr_at_recall on 200 random scores."


def check_hardest_negative_hinge(
    fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
) -> str:
    """``fn(s_pos (B,), s_neg (B, K), margin)``: MC-CNN's hinge changed to mine the hardest of ``K``
    negatives of each reference: ``mean_b max(0, margin + max_k s_neg[b, k] - s_pos[b])``.

    Args:
        fn: the student's loss, ``fn(s_pos, s_neg, margin)`` with ``s_pos`` float ``(B,)``
            scores of the positives, ``s_neg`` float ``(B, K)`` scores of each reference's ``K``
            negatives and ``margin`` a float, returning a 0-dim tensor that carries the gradient.

    Returns:
        A one-line verdict: ``"pass: ..."``, ``"wrong: ..."`` (including the mean over the
        negatives instead of their maximum, or a value without gradient) or
        ``"not attempted yet: ..."``.
    """
    s_pos = torch.tensor([0.9, 0.1, 0.5, 0.3])
    s_neg = torch.tensor([[0.1, 0.75, 0.2], [0.2, 0.0, 0.1], [0.45, 0.3, 0.5], [0.6, 0.0, 0.0]])
    terms = [max(0.0, 0.2 + max(row) - p) for p, row in zip(s_pos.tolist(), s_neg.tolist())]
    want = sum(terms) / len(terms)  # independent reference: plain Python
    got, err = run_student(fn, s_pos.clone().requires_grad_(True), s_neg.clone(), 0.2)
    if err:
        return err
    if not isinstance(got, torch.Tensor) or got.dim() != 0:
        return (
            "wrong: return a scalar tensor (the mean over the batch), so that it can be "
            "back-propagated."
        )
    value = float(got.detach())
    mean_neg = float(torch.clamp(0.2 + s_neg.mean(1) - s_pos, min=0).mean())
    if abs(value - mean_neg) <= 1e-6:
        return (
            "wrong: this averages the negatives; mining keeps the hardest (highest-scoring) "
            "negative of each reference."
        )
    if not abs(value - want) <= 1e-6:
        return (
            f"wrong: got {value:.4f}, expected {want:.4f} (max over the K negatives, then the "
            "hinge, then the mean)."
        )
    if not got.requires_grad:
        return (
            "wrong: the value is right but no gradient flows; use torch operations (amax, clamp), "
            "not Python floats."
        )
    return "pass: only the hardest negative of each reference is pushed below the positive."


# ------------------------------------------------------------------------------ corrlib train

#: What ``corrlib train --chapter 01_patch --variant ...`` trains (the first is the default).
TRAINABLE = (
    "mccnn-fast",
    "deepdesc",
    *(a for a in PATCH_MODELS if a not in ("mccnn-fast", "deepdesc")),
)


def train_main(run, variant: str | None = None, *, progress: bool = True):
    """Train one architecture as the notebook does (same data, settings and checkpoint file, so
    the notebook reuses it) and export the descriptor networks for ``corrlib eval``.

    Returns a :class:`~corrlib.recipes._common.TrainedModel`."""
    from corrlib.models.patch import export_patch_model
    from corrlib.recipes._common import TrainedModel, export_on_main

    arch = variant or TRAINABLE[0]
    check_choice(arch, "variant", TRAINABLE)
    cfg = run.cfg
    pool = pool_for(arch, cfg, training_sets(cfg, arch, run.root, run.seed))
    ckpt = run.ckpt_dir / f"{arch}.ckpt"
    model, history, seconds = train_patch_model(
        arch,
        cfg,
        pool,
        ckpt_path=ckpt,
        seed=run.seed,
        device=run.device,
        mining=cfg.mining if arch == "deepdesc" else 1.0,
        progress=progress,
    )
    exported = None
    if arch in ("mccnn-fast", "deepdesc"):  # descriptor networks: usable on any image pair
        exported = export_on_main(export_patch_model, run.ckpt_dir / f"{arch}.pt", model, {})
    return TrainedModel(model, history, seconds, ckpt, exported, arch if exported else None)
