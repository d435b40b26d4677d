"""Learning to compare patches: MC-CNN, DeepCompare and DeepDesc, one interface.

Every model takes a pair of grey patches ``a, b (B, 1, P, P)`` with values in ``[0, 1]`` and
returns one value per pair, ``(B,)``. The class attribute ``output`` says what it is:

* ``"similarity"`` (MC-CNN fast, a cosine) and ``"logit"`` (MC-CNN accurate, DeepCompare):
  higher = more alike;
* ``"distance"`` (DeepDesc, an L2 distance between descriptors): smaller = more alike.

``match_score(a, b)`` is always "higher = more alike" (the output, or minus the distance), so
metrics can rank pairs from any model the same way. ``patch_size`` is the size a model expects
(``None``: any size from ``min_patch_size`` up).

Normalisation, done inside every model:

* MC-CNN, ``input_norm="shift"`` (the default): subtracts 0.5, a fixed pointwise shift, so
  the dense ``features`` of an image equal the features of its patches. ``input_norm="image"``:
  MC-CNN's own preprocessing, each whole image standardised
  (:func:`corrlib.color.standardize_images`, as ``preprocess_kitti.lua`` does). ``features``
  and ``image_features`` then standardise the image they are given, and ``forward`` takes
  patches cut from standardised images (``PatchPairs.patch_table(size, standardize=True)``):
  :attr:`PatchModel.standardized_patches` says which a model expects.
* DeepCompare and DeepDesc subtract each patch's mean, as the DeepCompare release does ("input
  patches in [0;1] range before mean subtraction", github.com/szagoruyko/cvpr15deepcompare).

Which loss trains which model: :func:`corrlib.losses.margin_ranking_hinge` for MC-CNN fast,
``torch.nn.functional.binary_cross_entropy_with_logits`` for MC-CNN accurate,
:func:`corrlib.losses.label_hinge` for DeepCompare, :func:`corrlib.losses.contrastive_hinge`
(with :func:`corrlib.losses.hard_mining`) for DeepDesc.

Papers: Zbontar & LeCun, *Stereo matching by training a convolutional neural network to compare
image patches*, JMLR 2016; Zagoruyko & Komodakis, *Learning to compare image patches via
convolutional neural networks*, CVPR 2015; Simo-Serra et al., *Discriminative learning of deep
convolutional feature point descriptors*, ICCV 2015.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from corrlib._check import check_choice, check_int, check_shape
from corrlib.checkpoint import (
    check_eval_settings,
    finite_metrics,
    load_state_strict,
    read_model_file,
    save_checkpoint,
)
from corrlib.color import standardize_images
from corrlib.correlation import l2_normalize

__all__ = [
    "DEEPCOMPARE_KINDS",
    "DEEPCOMPARE_PATCH_SIZES",
    "MCCNN_INPUT_NORMS",
    "OUTPUTS",
    "PATCH_FORMAT",
    "PATCH_MODELS",
    "SPP_LEVELS",
    "DeepCompare",
    "DeepDesc",
    "MCCNNAccurate",
    "MCCNNFast",
    "PatchModel",
    "deepcompare",
    "deepdesc",
    "export_patch_model",
    "load_patch_model",
    "mccnn_accurate",
    "mccnn_fast",
    "patch_model",
    "spatial_pyramid_pool",
]

OUTPUTS = ("similarity", "logit", "distance")
DEEPCOMPARE_KINDS = ("2ch", "2ch-deep", "siamese", "pseudo-siamese", "2ch-2stream", "siamese-spp")
DEEPCOMPARE_PATCH_SIZES = (32, 64)
SPP_LEVELS = (1, 2, 4)
#: MC-CNN's input normalisations: ``"shift"`` (minus 0.5) or ``"image"`` (each image standardised)
MCCNN_INPUT_NORMS = ("shift", "image")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _check_width(width_mult: float) -> float:
    if (
        isinstance(width_mult, bool)
        or not isinstance(width_mult, (int, float))
        or not width_mult > 0
    ):
        raise ValueError(f"Argument width_mult must be a number > 0, got {width_mult!r}.")
    return float(width_mult)


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, round(channels * width_mult))


def _subtract_patch_mean(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, P, P)`` minus the mean of each patch (each channel of each pair)."""
    return x - x.mean(dim=(-2, -1), keepdim=True)


def _centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size x size`` window of ``(B, C, P, P)`` (top-left offset
    ``(P - size) // 2``)."""
    o = (x.shape[-1] - size) // 2
    return x[..., o : o + size, o : o + size]


def spatial_pyramid_pool(x: torch.Tensor, levels: Sequence[int] = SPP_LEVELS) -> torch.Tensor:
    """Spatial pyramid max pooling of ``(B, C, H, W)`` to ``(B, C * sum(n * n for n in levels))``.

    Level ``n`` max-pools the map into an ``n x n`` grid of bins (``adaptive_max_pool2d``; a map
    smaller than ``n`` repeats cells), so any ``H, W >= 1`` gives the same length. Bins are
    flattened channel-major within a level, levels in order. He et al., *Spatial pyramid
    pooling in deep convolutional networks*, ECCV 2014.

    Example:
        >>> spatial_pyramid_pool(torch.zeros(2, 8, 5, 7)).shape  # 8 * (1 + 4 + 16)
        torch.Size([2, 168])
    """
    check_shape(x, ("B", "C", "H", "W"), "x")
    return torch.cat([F.adaptive_max_pool2d(x, n).flatten(1) for n in levels], dim=1)


# A tower is a list of layers: ("conv", out_channels, kernel, stride) followed by ReLU, or
# ("pool", kernel, ceil_mode) a max-pooling with stride = kernel.
_Spec = Sequence[tuple]

# DeepCompare layer sizes for 64x64 pairs: the paper, and the authors' Torch models
# (training/models/{2ch,2chdeep,2ch2stream,siam}.lua in github.com/szagoruyko/cvpr15deepcompare).
_TOWER_2CH: _Spec = (
    ("conv", 96, 7, 3),
    ("pool", 2, False),
    ("conv", 192, 5, 1),
    ("pool", 2, False),
    ("conv", 256, 3, 1),
)  # 64 -> 1x1
_TOWER_2CH_DEEP: _Spec = (
    ("conv", 96, 4, 3),
    *[("conv", 96, 3, 1)] * 3,
    ("pool", 2, True),
    *[("conv", 192, 3, 1)] * 3,
)  # 64 -> 2x2 (ceil-mode pooling)
_TOWER_STREAM: _Spec = (
    ("conv", 96, 5, 1),
    ("pool", 2, False),
    ("conv", 96, 3, 1),
    ("pool", 2, False),
    ("conv", 192, 3, 1),
    ("conv", 192, 3, 1),
)  # 32 -> 2x2


def _tower_size(spec: _Spec, size: int, padded: set[int]) -> int:
    """Output side of ``spec`` on a ``size x size`` input (0 if the map vanishes)."""
    for i, layer in enumerate(spec):
        if layer[0] == "conv":
            _, _, k, s = layer
            pad = k // 2 if i in padded else 0
            size = (size + 2 * pad - k) // s + 1 if size + 2 * pad >= k else 0
        elif size >= layer[1]:  # max-pooling, stride = kernel
            k, ceil = layer[1], layer[2]
            size = (-(-(size - k) // k) if ceil else (size - k) // k) + 1
        else:
            size = 0
        if size <= 0:
            return 0
    return size


def _padding_for(spec: _Spec, size: int, pad_all: bool) -> set[int]:
    """Convolutions to zero-pad ('same') so that ``spec`` keeps a non-empty map at ``size``.

    ``pad_all``: every convolution but the first. Otherwise the fewest trailing ones, none when
    the unpadded tower fits (the paper's towers at their design size).
    """
    convs = [i for i, layer in enumerate(spec) if layer[0] == "conv"]
    if pad_all:
        return set(convs[1:])
    for n in range(len(convs)):
        padded = set(convs[len(convs) - n :])
        if _tower_size(spec, size, padded):
            return padded
    raise ValueError(f"A patch of {size} pixels is too small for this tower.")  # pragma: no cover


def _build_tower(
    spec: _Spec, in_channels: int, width_mult: float, padded: set[int]
) -> tuple[nn.Sequential, int]:
    """``nn.Sequential`` of ``spec`` (ReLU after every conv); returns it and its output channels."""
    layers: list[nn.Module] = []
    c = in_channels
    for i, layer in enumerate(spec):
        if layer[0] == "conv":
            _, out, k, s = layer
            out = _scaled(out, width_mult)
            layers += [
                nn.Conv2d(c, out, k, stride=s, padding=k // 2 if i in padded else 0),
                nn.ReLU(),
            ]
            c = out
        else:
            layers.append(nn.MaxPool2d(layer[1], ceil_mode=layer[2]))
    return nn.Sequential(*layers), c


def _mlp(sizes: Sequence[int], conv1x1: bool = False) -> nn.Sequential:
    """Fully connected layers ``sizes[0] -> ... -> sizes[-1]``, ReLU between.

    ``conv1x1``: as 1x1 convolutions (the same maps, applied at every cell of a feature map).
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Conv2d(n_in, n_out, 1) if conv1x1 else nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------


class PatchModel(nn.Module):
    """A patch-pair comparator: ``forward(a, b) -> (B,)`` and ``match_score`` (higher = alike).

    Subclasses set ``output`` (one of :data:`OUTPUTS`), ``patch_size`` (``None``: any size) and
    ``min_patch_size``.
    """

    output: str = "similarity"
    patch_size: int | None = None
    min_patch_size: int = 1
    #: the :data:`PATCH_MODELS` name of this network (set by each class in ``__init__``)
    arch: str = ""
    #: keyword arguments that rebuild this network with :func:`patch_model` (set in ``__init__``)
    config: dict
    #: True when ``forward`` takes patches cut from standardised images (MC-CNN with
    #: ``input_norm="image"``: read them with ``patch_table(size, standardize=True)``); False
    #: when it takes patches in ``[0, 1]``
    standardized_patches: bool = False

    def _record(self, arch: str, **config: Any) -> None:
        self.arch, self.config = arch, dict(config)
        #: How chapter 01 evaluates it as a dense descriptor; set by :func:`load_patch_model`.
        self.eval_settings: dict = {}

    def _check_patches(
        self, x: torch.Tensor, name: str, n: int | str = "B", p: int | str = "P"
    ) -> tuple[int, int]:
        """Check ``x (B, 1, P, P)`` against this model's patch sizes; returns ``(B, P)``."""
        check_shape(x, (n, 1, p, p), name)
        n, p = x.shape[0], x.shape[-1]
        if self.patch_size is not None and p != self.patch_size:
            raise ValueError(
                f"Argument {name} must have shape (B, 1, {self.patch_size}, {self.patch_size}) for "
                f"this {type(self).__name__} (patch_size={self.patch_size}), got shape "
                f"{tuple(x.shape)}."
            )
        if p < self.min_patch_size:
            raise ValueError(
                f"Argument {name} must hold patches of at least {self.min_patch_size} pixels for "
                f"this {type(self).__name__}, got shape {tuple(x.shape)}."
            )
        return n, p

    def _check_pair(self, a: torch.Tensor, b: torch.Tensor) -> int:
        """Check ``a, b (B, 1, P, P)`` (same shape); returns ``P``."""
        n, p = self._check_patches(a, "a")
        check_shape(b, (n, 1, p, p), "b")
        return p

    def match_score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``(B,)`` scores, higher = more alike: ``forward`` or, for distances, ``-forward``."""
        out = self(a, b)
        return -out if self.output == "distance" else out


# --------------------------------------------------------------------------------------------
# MC-CNN
# --------------------------------------------------------------------------------------------


def _mccnn_tower(features: int, layers: int, kernel: int, relu_last: bool) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Conv2d(1 if i == 0 else features, features, kernel))
        if relu_last or i < layers - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


class _MCCNN(PatchModel):
    """Shared part of the two MC-CNN nets: the unpadded tower, its input normalisation
    (``input_norm``, one of :data:`MCCNN_INPUT_NORMS`) and its dense evaluation."""

    def __init__(
        self, features: int, layers: int, kernel: int, relu_last: bool, input_norm: str = "shift"
    ):
        super().__init__()
        check_int(features, "features", 1)
        check_int(layers, "layers", 1)
        check_int(kernel, "kernel", 1)
        check_choice(input_norm, "input_norm", MCCNN_INPUT_NORMS)
        self.n_features = features
        self.receptive_field = layers * (kernel - 1) + 1
        self.min_patch_size = self.receptive_field
        self.input_norm = input_norm
        self.standardized_patches = input_norm == "image"
        self.tower = _mccnn_tower(features, layers, kernel, relu_last)

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """The tower's input for whole images ``(B, 1, H, W)`` in ``[0, 1]``: minus 0.5
        (``"shift"``) or each image standardised (``"image"``)."""
        check_shape(image, ("B", 1, "H", "W"), "image")
        return standardize_images(image, "image") if self.standardized_patches else image - 0.5

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        """The tower on prepared input ``x (B, 1, H, W)``: ``(B, F, H - rf + 1, W - rf + 1)``."""
        rf = self.receptive_field
        check_shape(x, ("B", 1, "H", "W"), "image")
        if min(x.shape[-2:]) < rf:
            raise ValueError(
                f"Argument image must be at least {rf}x{rf} (the receptive field), "
                f"got shape {tuple(x.shape)}."
            )
        return self._describe(self.tower(x))

    def _describe(self, tower_out: torch.Tensor) -> torch.Tensor:
        return tower_out

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Dense features of ``image (B, 1, H, W)`` in ``[0, 1]`` (prepared first, see
        :meth:`prepare`): ``(B, F, H - rf + 1, W - rf + 1)`` (``rf = receptive_field``; ``H - 2L``
        for 3x3 kernels); cell ``(x, y)`` describes the window whose top-left pixel is
        ``(x, y)``."""
        return self._dense(self.prepare(image))

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """Dense features at every pixel of ``image (B, 1, H, W)`` in ``[0, 1]``: ``(B, F, H, W)``.

        The image is prepared (:meth:`prepare`, statistics of the image itself), then
        replicate-padded by ``(rf - 1) // 2`` on each side, so cell ``(x, y)`` describes the
        window centred on pixel ``(x, y)`` (odd receptive fields).
        """
        pad = (self.receptive_field - 1) // 2
        return self._dense(F.pad(self.prepare(image), (pad,) * 4, mode="replicate"))

    def _patch_features(
        self, a: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(B, F, 1, 1)`` of the central receptive-field window of each patch
        (patches in ``[0, 1]``, or cut from standardised images when
        :attr:`standardized_patches`)."""
        self._check_pair(a, b)
        rf = self.receptive_field
        shift = 0.0 if self.standardized_patches else 0.5
        return self._dense(_centre_crop(a, rf) - shift), self._dense(_centre_crop(b, rf) - shift)


class MCCNNFast(_MCCNN):
    """MC-CNN fast: a shared unpadded conv tower, L2-normalised features, cosine score.

    ``layers`` convolutions ``kernel x kernel`` with ``features`` maps, ReLU between them (none
    after the last). A patch of ``receptive_field = layers * (kernel - 1) + 1`` pixels (9 for
    the defaults) gives one feature vector; larger patches are centre-cropped to it (top-left
    offset ``(P - receptive_field) // 2``). Features are unit length. ``input_norm``: see the
    module notes (:data:`MCCNN_INPUT_NORMS`). Zbontar & LeCun, JMLR 2016 (KITTI: 4 layers, 64
    maps, 3x3).
    """

    output = "similarity"

    def __init__(
        self, features: int = 64, layers: int = 4, kernel: int = 3, input_norm: str = "shift"
    ):
        super().__init__(features, layers, kernel, relu_last=False, input_norm=input_norm)
        self._record(
            "mccnn-fast", features=features, layers=layers, kernel=kernel, input_norm=input_norm
        )

    def _describe(self, tower_out: torch.Tensor) -> torch.Tensor:
        # unit length: cosine similarities are plain dot products of the features
        return l2_normalize(tower_out, dim=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(B,)`` of patches ``a, b (B, 1, P, P)``, ``P >= receptive_field``:
        in ``[0, 1]``, or cut from standardised images when :attr:`standardized_patches`
        (``input_norm="image"``)."""
        fa, fb = self._patch_features(a, b)
        return (fa * fb).sum(1).flatten()


class MCCNNAccurate(_MCCNN):
    """MC-CNN accurate: a shared conv tower, concatenated features, fully connected decision.

    Tower as :class:`MCCNNFast` but with ReLU after every convolution (and no normalisation);
    the two ``F``-vectors are concatenated (``2F``) and passed through ``fc_layers`` fully
    connected layers: ``fc_layers - 1`` of ``fc_units`` with ReLU, then one to a single logit
    (train with binary cross-entropy on logits). The fully connected layers are stored as 1x1
    convolutions, so :meth:`decision` also runs on dense feature maps. Zbontar & LeCun, JMLR
    2016 (112 maps, 384 units).
    """

    output = "logit"

    def __init__(
        self,
        features: int = 112,
        layers: int = 4,
        kernel: int = 3,
        fc_units: int = 384,
        fc_layers: int = 3,
        input_norm: str = "shift",
    ):
        super().__init__(features, layers, kernel, relu_last=True, input_norm=input_norm)
        check_int(fc_units, "fc_units", 1)
        check_int(fc_layers, "fc_layers", 1)
        self.head = _mlp([2 * features] + [fc_units] * (fc_layers - 1) + [1], conv1x1=True)
        self._record(
            "mccnn-accurate",
            features=features,
            layers=layers,
            kernel=kernel,
            fc_units=fc_units,
            fc_layers=fc_layers,
            input_norm=input_norm,
        )

    def decision(self, f_left: torch.Tensor, f_right: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, H, W)`` of the fully connected layers at every cell of two feature maps.

        ``f_left, f_right (B, F, H, W)`` from :meth:`features`; for a stereo cost volume pass
        ``f_right`` shifted by the disparity. Cell ``(x, y)`` compares ``f_left[..., y, x]`` with
        ``f_right[..., y, x]``.
        """
        check_shape(f_left, ("B", self.n_features, "H", "W"), "f_left")
        check_shape(f_right, tuple(f_left.shape), "f_right")
        return self.head(torch.cat([f_left, f_right], dim=1)).squeeze(1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logit ``(B,)`` of patches ``a, b (B, 1, P, P)``, ``P >= receptive_field`` (in
        ``[0, 1]``, or cut from standardised images when :attr:`standardized_patches`)."""
        return self.decision(*self._patch_features(a, b)).flatten()


def mccnn_fast(
    *, features: int = 64, layers: int = 4, kernel: int = 3, input_norm: str = "shift"
) -> MCCNNFast:
    """MC-CNN fast (cosine of tower features); see :class:`MCCNNFast`.

    Example:
        >>> net = mccnn_fast(features=8)
        >>> net(torch.rand(2, 1, 9, 9), torch.rand(2, 1, 9, 9)).shape
        torch.Size([2])
        >>> net.features(torch.rand(1, 1, 20, 30)).shape
        torch.Size([1, 8, 12, 22])
    """
    return MCCNNFast(features, layers, kernel, input_norm)


def mccnn_accurate(
    *,
    features: int = 112,
    layers: int = 4,
    kernel: int = 3,
    fc_units: int = 384,
    fc_layers: int = 3,
    input_norm: str = "shift",
) -> MCCNNAccurate:
    """MC-CNN accurate (tower + fully connected decision); see :class:`MCCNNAccurate`.

    Example:
        >>> net = mccnn_accurate(features=8, fc_units=16)
        >>> f = net.features(torch.rand(1, 1, 20, 30))
        >>> net.decision(f, f).shape
        torch.Size([1, 12, 22])
    """
    return MCCNNAccurate(features, layers, kernel, fc_units, fc_layers, input_norm)


# --------------------------------------------------------------------------------------------
# DeepCompare
# --------------------------------------------------------------------------------------------


class DeepCompare(PatchModel):
    """DeepCompare: a network that outputs a decision value for a patch pair (higher = match).

    ``kind`` (layer notation of the paper: C(n, k, s) conv, P(k, k) max-pool, F(n) fully
    connected; ReLU after every layer but the last):

    * ``"2ch"``: the pair as 2 channels; C(96,7,3)-P(2,2)-C(192,5,1)-P(2,2)-C(256,3,1)-F(256)-F(1).
    * ``"2ch-deep"``: 2 channels; C(96,4,3), three C(96,3,1), P(2,2) (ceil), three C(192,3,1),
      F(768)-F(1) (the authors' ``2chdeep.lua``).
    * ``"siamese"``: the 2ch tower with 1 channel, shared by both patches; the two descriptors
      (256 each) concatenated, F(512)-F(1).
    * ``"pseudo-siamese"``: as siamese, but each patch has its own tower.
    * ``"2ch-2stream"``: central-surround; two unshared 2-channel streams
      C(96,5,1)-P(2,2)-C(96,3,1)-P(2,2)-C(192,3,1)-C(192,3,1), one on the central ``P/2`` crop
      at full resolution, one on the whole pair average-pooled by 2; concatenated, F(768)-F(1).
    * ``"siamese-spp"``: siamese with spatial pyramid pooling (:data:`SPP_LEVELS`) after the
      tower, F(512)-F(1); its tower zero-pads every convolution after the first, so any
      ``P >= 16`` works, whatever ``patch_size`` says (it only has to be ``>= 16``).

    The layers above are the paper's for ``patch_size=64``. For ``patch_size=32`` they stay the
    same, except that the fewest trailing convolutions are zero-padded ('same') to keep the
    final map non-empty: the final map is then 2x2 for every kind (64: 1x1 for 2ch and the
    siamese towers, 2x2 for 2ch-deep and 2ch-2stream), and the first fully connected layer's
    input is sized to it. ``width_mult`` scales every conv width and hidden FC size (1 = paper).
    Output: decision values ``(B,)``, trained with :func:`corrlib.losses.label_hinge`.
    Zagoruyko & Komodakis, CVPR 2015.
    """

    output = "logit"

    def __init__(self, kind: str, patch_size: int = 64, width_mult: float = 1.0):
        super().__init__()
        check_choice(kind, "kind", DEEPCOMPARE_KINDS)
        if kind == "siamese-spp":
            check_int(patch_size, "patch_size", 16)
        elif patch_size not in DEEPCOMPARE_PATCH_SIZES:
            raise ValueError(
                f"Argument patch_size must be one of {DEEPCOMPARE_PATCH_SIZES}, got {patch_size!r}."
            )
        width_mult = _check_width(width_mult)
        self.kind = kind
        self._record(kind, patch_size=patch_size, width_mult=width_mult)
        self.patch_size = None if kind == "siamese-spp" else patch_size
        self.min_patch_size = 16 if kind == "siamese-spp" else patch_size
        s = functools.partial(_scaled, width_mult=width_mult)
        if kind == "2ch-2stream":
            spec, size, in_ch, n_towers, hidden = _TOWER_STREAM, patch_size // 2, 2, 2, 768
        elif kind == "2ch-deep":
            spec, size, in_ch, n_towers, hidden = _TOWER_2CH_DEEP, patch_size, 2, 1, 768
        elif kind == "2ch":
            spec, size, in_ch, n_towers, hidden = _TOWER_2CH, patch_size, 2, 1, 256
        else:  # siamese family: one tower per patch (shared unless pseudo-siamese)
            spec, size, in_ch, hidden = _TOWER_2CH, patch_size, 1, 512
            n_towers = 2 if kind == "pseudo-siamese" else 1
        padded = _padding_for(spec, size, pad_all=kind == "siamese-spp")
        towers = [_build_tower(spec, in_ch, width_mult, padded) for _ in range(n_towers)]
        self.towers = nn.ModuleList(t for t, _ in towers)
        channels = towers[0][1]
        if kind == "siamese-spp":
            per_tower = channels * sum(n * n for n in SPP_LEVELS)
        else:
            per_tower = channels * _tower_size(spec, size, padded) ** 2
        per_pair = per_tower * (1 if kind in ("2ch", "2ch-deep") else 2)
        self.decision = _mlp([per_pair, s(hidden), 1])

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Decision values ``(B,)`` of patches ``a, b (B, 1, P, P)``; higher = more alike."""
        p = self._check_pair(a, b)
        a, b = _subtract_patch_mean(a), _subtract_patch_mean(b)
        k = self.kind
        if k in ("2ch", "2ch-deep"):
            f = self.towers[0](torch.cat([a, b], dim=1)).flatten(1)
        elif k == "2ch-2stream":
            x = torch.cat([a, b], dim=1)  # (B, 2, P, P)
            centre = _centre_crop(x, p // 2)  # (B, 2, P/2, P/2), full resolution
            surround = F.avg_pool2d(x, 2)  # (B, 2, P/2, P/2), whole patch at half resolution
            f = torch.cat(
                [self.towers[0](centre).flatten(1), self.towers[1](surround).flatten(1)], 1
            )
        elif k == "siamese-spp":
            f = torch.cat([spatial_pyramid_pool(self.towers[0](x)) for x in (a, b)], dim=1)
        else:
            tower_b = self.towers[-1]  # the shared tower, or the second one (pseudo-siamese)
            f = torch.cat([self.towers[0](a).flatten(1), tower_b(b).flatten(1)], dim=1)
        return self.decision(f).squeeze(1)


def deepcompare(kind: str, *, patch_size: int = 64, width_mult: float = 1.0) -> DeepCompare:
    """A DeepCompare network (``kind`` in :data:`DEEPCOMPARE_KINDS`); see :class:`DeepCompare`.

    Example:
        >>> net = deepcompare("2ch", patch_size=32, width_mult=0.25)
        >>> net(torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32)).shape
        torch.Size([3])
    """
    return DeepCompare(kind, patch_size, width_mult)


# --------------------------------------------------------------------------------------------
# DeepDesc
# --------------------------------------------------------------------------------------------


def _l2_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """L2 pooling ``sqrt(sum of squares)`` over non-overlapping ``k x k`` windows."""
    return (F.avg_pool2d(x * x, k) * (k * k)).clamp_min(1e-12).sqrt()


def _subtractive_norm(x: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Subtract the mean over a ``k x k`` neighbourhood and all channels (uniform weights).

    Near the border the mean is over the pixels inside the map only.
    """
    mean = F.avg_pool2d(
        x.mean(1, keepdim=True), k, stride=1, padding=k // 2, count_include_pad=False
    )
    return x - mean


class DeepDesc(PatchModel):
    """DeepDesc: a Siamese descriptor net; ``forward`` returns the L2 distance of descriptors.

    Three layers (Simo-Serra et al., ICCV 2015, for 64x64 patches): conv 7x7 (32) -
    tanh - L2 pooling 2x2 - subtractive normalisation 5x5; conv 6x6 (64) - tanh - L2 pooling
    3x3 - subtractive normalisation 5x5; conv 5x5 (``dim``) - tanh - L2 pooling 4x4 ->
    ``(B, dim)`` (64 -> 58 -> 29 -> 24 -> 8 -> 4 -> 1). For ``patch_size=32`` the second
    pooling is left out (32 -> 26 -> 13 -> 8 -> 4 -> 1). The subtractive normalisation here
    uses uniform weights over the window and all channels. ``width_mult`` scales the 32 and 64
    maps. Train with :func:`corrlib.losses.contrastive_hinge` and
    :func:`corrlib.losses.hard_mining`.
    """

    output = "distance"

    def __init__(self, dim: int = 128, patch_size: int = 64, width_mult: float = 1.0):
        super().__init__()
        check_int(dim, "dim", 1)
        if patch_size not in DEEPCOMPARE_PATCH_SIZES:
            raise ValueError(
                f"Argument patch_size must be one of {DEEPCOMPARE_PATCH_SIZES}, got {patch_size!r}."
            )
        width_mult = _check_width(width_mult)
        self.patch_size = self.min_patch_size = patch_size
        self.dim = dim
        self._record("deepdesc", dim=dim, patch_size=patch_size, width_mult=width_mult)
        c1, c2 = _scaled(32, width_mult), _scaled(64, width_mult)
        self.conv1 = nn.Conv2d(1, c1, 7)
        self.conv2 = nn.Conv2d(c1, c2, 6)
        self.conv3 = nn.Conv2d(c2, dim, 5)
        self.pools = (2, 3 if patch_size == 64 else 1, 4)

    def describe(self, patches: torch.Tensor) -> torch.Tensor:
        """Descriptors ``(B, dim)`` of ``patches (B, 1, P, P)`` in ``[0, 1]``,
        ``P = patch_size``."""
        self._check_patches(patches, "patches")
        x = _subtract_patch_mean(patches)
        p1, p2, p3 = self.pools
        x = _subtractive_norm(_l2_pool(torch.tanh(self.conv1(x)), p1))
        x = torch.tanh(self.conv2(x))
        x = _subtractive_norm(_l2_pool(x, p2) if p2 > 1 else x)
        x = _l2_pool(torch.tanh(self.conv3(x)), p3)  # (B, dim, 1, 1)
        return x.flatten(1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """L2 distance ``(B,)`` between the descriptors of ``a, b (B, 1, P, P)``; smaller =
        alike."""
        self._check_pair(a, b)
        return torch.linalg.vector_norm(self.describe(a) - self.describe(b), dim=1)


def deepdesc(*, dim: int = 128, patch_size: int = 64, width_mult: float = 1.0) -> DeepDesc:
    """DeepDesc descriptor network; see :class:`DeepDesc`.

    Example:
        >>> net = deepdesc(patch_size=32)
        >>> net.describe(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 128])
        >>> net.match_score(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)).shape
        torch.Size([2])
    """
    return DeepDesc(dim, patch_size, width_mult)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

PATCH_MODELS: dict[str, Callable[..., PatchModel]] = {
    "mccnn-fast": mccnn_fast,
    "mccnn-accurate": mccnn_accurate,
    **{kind: functools.partial(deepcompare, kind) for kind in DEEPCOMPARE_KINDS},
    "deepdesc": deepdesc,
}


def patch_model(name: str, *, weights=None, **kwargs: Any) -> PatchModel:
    """Build the registered patch model ``name`` (a key of :data:`PATCH_MODELS`) with ``kwargs``.

    ``weights``: a file written by :func:`export_patch_model`; the network is then rebuilt from
    the file's own settings (``kwargs`` must be empty), loaded ``strict`` and put in eval mode,
    and ``name`` must match the file's architecture.

    Example:
        >>> patch_model("siamese", patch_size=32).output
        'logit'
        >>> patch_model("sift")  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        ValueError: Unknown value 'sift' for argument name. Valid values are {mccnn-fast,
        mccnn-accurate, 2ch, 2ch-deep, siamese, pseudo-siamese, 2ch-2stream, siamese-spp,
        deepdesc}.
    """
    check_choice(name, "name", PATCH_MODELS)
    if weights is not None:
        if kwargs:
            raise ValueError(f"Give weights= or model settings, not both (got {sorted(kwargs)}).")
        model = load_patch_model(weights)
        if model.arch != name:
            raise ValueError(
                f"{weights} holds a '{model.arch}' model, not '{name}'; pass the matching file."
            )
        return model
    return PATCH_MODELS[name](**kwargs)


#: ``format`` tag of files written by :func:`export_patch_model`.
PATCH_FORMAT = "corrlib.patch/1"


def export_patch_model(
    path, model: PatchModel, metrics: dict | None = None, eval_settings: dict | None = None
) -> Path:
    """Save a trained patch network with the settings that rebuild it (:func:`load_patch_model`).

    Args:
        path: the file to write (atomically; parent folders are created).
        model: a :class:`PatchModel` built by :func:`patch_model` or one of the builders.
        metrics: numbers to record beside the weights (non-finite entries are dropped).
        eval_settings: how the chapter evaluates it as a dense descriptor (``{"max_side": None}``;
            None: ``model.eval_settings``), the defaults of the ``mccnn-fast``/``deepdesc``
            methods.

    Returns:
        The path written.
    """
    if not isinstance(model, PatchModel):
        raise TypeError(f"Argument model must be a PatchModel, got {type(model).__name__}.")
    state = {
        "format": PATCH_FORMAT,
        "arch": model.arch,
        "kwargs": dict(model.config),
        "model": model.state_dict(),
        "metrics": finite_metrics(metrics),
        "eval": check_eval_settings(
            model.eval_settings if eval_settings is None else eval_settings
        ),
    }
    return save_checkpoint(path, state)


def load_patch_model(path) -> PatchModel:
    """Rebuild a network saved by :func:`export_patch_model`, load it (strict), eval mode.

    The returned model's :attr:`PatchModel.arch` says which :data:`PATCH_MODELS` entry it is.
    """
    state = read_model_file(
        path, PATCH_FORMAT, "an exported patch network", legacy_keys=("arch", "kwargs")
    )
    arch = state["arch"]
    if arch not in PATCH_MODELS:
        raise ValueError(
            f"{path} holds an unknown patch architecture {arch!r}; valid: {sorted(PATCH_MODELS)}."
        )
    try:
        model = PATCH_MODELS[arch](**state["kwargs"])
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{path}: its settings {state['kwargs']!r} do not build a '{arch}' network ({e})."
        ) from e
    load_state_strict(model, state["model"], path)
    model.eval_settings = check_eval_settings(state.get("eval"), path)
    return model.eval()
