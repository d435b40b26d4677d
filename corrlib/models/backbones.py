"""CNN feature extractors with named taps: VGG-16, ResNet-18/34/50/101, GoogLeNet and an offline
fallback.

A :class:`Backbone` maps images ``(B, 3, H, W)``, float in ``[0, 1]``, to a dict of feature maps,
one per *tap* (a named point inside the network), or, with ``concat=True``, to one hypercolumn
tensor: every later tap upsampled (bilinear, ``align_corners=False``) to the resolution of the
first tap and concatenated along channels, as SFNet (Lee et al., CVPR 2019) and DHPF (Min et al.,
ECCV 2020) combine ResNet layers. ImageNet mean/std normalisation happens inside ``forward``.

Taps (stride in pixels, channels):

============= ==========================================================================
``vgg16``     ``conv3_3`` (4, 256), ``conv4_3`` (8, 512), ``conv5_3`` (16, 512), after ReLU
``resnet18``  ``layer1`` (4, 64), ``layer2`` (8, 128), ``layer3`` (16, 256), ``layer4`` (32, 512)
``resnet34``  as ``resnet18``
``resnet50``  ``layer1`` (4, 256), ``layer2`` (8, 512), ``layer3`` (16, 1024), ``layer4`` (32, 2048)
``resnet101`` as ``resnet50``
``googlenet`` ``inception3b`` (8, 480), ``inception4a`` (16, 512): UCN's trunk (Choy et al. 2016,
              "GoogLeNet up to inception4a" per a re-implementation citing its supplementary)
``offline``   ``block1`` (2, 32), ``block2`` (4, 64), ``block3`` (8, 128): :class:`OfflineNet`
============= ==========================================================================

Convention: a map of ``(h, w)`` cells covers the ``(H, W)`` input with ``h = ceil(H / stride)``
(exactly ``H / stride`` when ``H`` is a multiple of the stride); place its cells in the image
with :meth:`corrlib.matching.FeatureGrid.for_map`. Batch norm is always frozen
(:class:`torchvision.ops.FrozenBatchNorm2d`: running statistics and affine parameters are
buffers) and, unless ``trainable=True``, every parameter has ``requires_grad=False``.

Weights (``weights=`` of :func:`backbone`):

* ``"imagenet"``: torchvision's ImageNet-1K weights (``IMAGENET1K_V1``), read from the torch hub
  cache (``<torch.hub.get_dir()>/checkpoints/<file>``) or downloaded there; offline and not cached,
  :class:`PretrainedWeightsNotFoundError` names the file, its URL and the folder to put it in.
* ``"auto"``: ImageNet if the file is cached (downloaded only with ``allow_download=True``), else
  the documented offline fallback (below), announced by a ``UserWarning`` and a printed banner.
* ``"offline"``: the fallback itself (:data:`FALLBACK`), shipped with corrlib.
* ``"none"``: random initialisation; ``weights_source`` says ``"random init (NOT pretrained)"``.

``Backbone.weights_source`` always says which of these a model holds.

**The offline fallback, chosen by measurement.** Without network access there are no ImageNet
weights. The candidates were scored by nearest-neighbour matching of their features (cosine,
sub-pixel argmax; :class:`corrlib.methods.BackboneMethod` or ``HandcraftedMethod``, images resized
to a longer side of 320) on ALL 450 pairs of the shared PF-WILLOW subset (sub-classes car(G),
car(S), duck(S), motorbike(M), winebottle(wC); 50 images), PCK under the ``pf-willow`` protocol
(threshold ``alpha * max(h, w)`` of the keypoints' bounding box), with
``benchmarks/bench_backbone_fallback.py`` (random inits drawn after ``torch.manual_seed(0)``;
wall times on a shared 2-core CPU, reading the pairs included, indicative only):

=============================================  ========  =======  ========  ========
option                                         PCK@0.05  PCK@0.1  PCK@0.15  time (s)
=============================================  ========  =======  ========  ========
identity (no motion; the floor)                0.061     0.185    0.349     28
(a) resnet18 layer3, random init               0.032     0.096    0.151     68
(a) resnet50 layer3, random init               0.047     0.127    0.215     37
(a) resnet101 layer3, random init              0.040     0.152    0.290     14
(a) vgg16 conv4_3, random init                 0.039     0.087    0.134     16
control: (a) resnet101 on BLANK grey images    0.050     0.177    0.348     15
(b) daisy (hand-crafted, 200-D)                0.071     0.119    0.165     13
(b) sift (dense, hand-crafted, 128-D)          0.063     0.107    0.152     8
(c) offline block3 (trained here, 1.15 MB)     0.048     0.089    0.135     5
=============================================  ========  =======  ========  ========

Reading the table: no offline option beats the no-motion identity at PCK@0.1. The best
(a), random ResNet-101 (0.152; 0.133 with seed 1), does not match appearance: on the same
pairs with BOTH images replaced by uniform grey it scores 0.177. Zero padding through about 90
random convolutions makes its features a code of the position in the image, so nearest neighbour
returns roughly the same relative position, a noisy identity, and real appearance only
lowers it. Among options that match appearance, DAISY is best (0.119), then SIFT, then the
trained net (c) (0.089). :data:`FALLBACK` is nevertheless (c), ``"offline"``: ``auto`` must
return a ``Backbone``, a network whose feature maps carry gradients and can be trained on
(DAISY is not one), and (c) is a learned feature of 1.15 MB, not a positional artefact, that
runs in 0.03 s per 320x240 image on this CPU (ResNet-101 to ``layer3``: 0.9 s). For
*evaluating* without ImageNet weights, prefer the ``daisy`` method. (Trained by
``scripts/train_offline_backbone.py``; see ``corrlib/models/weights/README.md``.)

Example:
    >>> bb = backbone("resnet18", weights="none", taps=("layer3", "layer4"))
    >>> feats = bb(torch.rand(1, 3, 64, 64))
    >>> {k: tuple(v.shape) for k, v in feats.items()}
    {'layer3': (1, 256, 4, 4), 'layer4': (1, 512, 2, 2)}
    >>> bb.strides, bb.weights_source
    ({'layer3': 16, 'layer4': 32}, 'random init (NOT pretrained)')
"""

from __future__ import annotations

import enum
import hashlib
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from corrlib._check import check_choice, check_shape

__all__ = [
    "BACKBONES",
    "DEFAULT_TAPS",
    "FALLBACK",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TAPS",
    "WEIGHTS",
    "Backbone",
    "OfflineNet",
    "OfflineWeights",
    "PretrainedWeightsNotFoundError",
    "backbone",
    "imagenet_weights",
    "imagenet_weights_path",
    "load_offline_weights",
]

#: Architectures :func:`backbone` builds.
BACKBONES = ("vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "googlenet", "offline")
#: Values of ``weights=``.
WEIGHTS = ("auto", "imagenet", "none", "offline")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESNET_SMALL = {"layer1": (4, 64), "layer2": (8, 128), "layer3": (16, 256), "layer4": (32, 512)}
_RESNET_LARGE = {"layer1": (4, 256), "layer2": (8, 512), "layer3": (16, 1024), "layer4": (32, 2048)}
#: ``name -> {tap: (stride, channels)}``, taps in forward order.
TAPS: dict[str, dict[str, tuple[int, int]]] = {
    "vgg16": {"conv3_3": (4, 256), "conv4_3": (8, 512), "conv5_3": (16, 512)},
    "resnet18": _RESNET_SMALL,
    "resnet34": _RESNET_SMALL,
    "resnet50": _RESNET_LARGE,
    "resnet101": _RESNET_LARGE,
    "googlenet": {"inception3b": (8, 480), "inception4a": (16, 512)},
    "offline": {"block1": (2, 32), "block2": (4, 64), "block3": (8, 128)},
}
#: Taps used when ``taps=None``.
DEFAULT_TAPS: dict[str, tuple[str, ...]] = {
    "vgg16": ("conv4_3",),
    "resnet18": ("layer3", "layer4"),
    "resnet34": ("layer3", "layer4"),
    "resnet50": ("layer3", "layer4"),
    "resnet101": ("layer3", "layer4"),
    "googlenet": ("inception4a",),
    "offline": ("block3",),
}
#: The architecture ``weights="auto"`` falls back to when ImageNet weights are absent.
FALLBACK = "offline"

_RANDOM = "random init (NOT pretrained)"
_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_OFFLINE_FORMAT = "corrlib.backbones.offline/1"


class PretrainedWeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable; the message says where to put
    them."""


# ------------------------------------------------------------------------------------ module


class Backbone(nn.Module):
    """A feature extractor with named taps (build one with :func:`backbone`).

    ``stages`` is an ordered ``{name: module}``; each tap is the output of the stage of that
    name. Stages after the deepest tap are dropped, so only what is needed runs.

    Attributes:
        arch: architecture name (one of :data:`BACKBONES`).
        taps: tap names in forward order.
        strides, channels: ``{tap: int}``.
        concat: whether ``forward`` returns one concatenated tensor.
        out_stride, out_channels: stride and channels of that tensor (the first tap's stride,
            the sum of the channels).
        weights_source: what the weights are: ``"imagenet (torchvision ...)"``, ``"offline
            fallback: ..."`` or ``"random init (NOT pretrained)"``.
    """

    def __init__(
        self,
        stages: dict[str, nn.Module],
        taps: tuple[str, ...],
        *,
        arch: str,
        specs: dict[str, tuple[int, int]],
        concat: bool = False,
        weights_source: str = _RANDOM,
    ):
        super().__init__()
        names = list(stages)
        for t in taps:
            check_choice(t, "taps", [n for n in names if n in specs])
        taps = tuple(sorted(set(taps), key=names.index))
        last = max(names.index(t) for t in taps)
        self.stages = nn.ModuleDict(OrderedDict((n, stages[n]) for n in names[: last + 1]))
        self.arch, self.taps, self.concat = arch, taps, bool(concat)
        self.strides = {t: specs[t][0] for t in taps}
        self.channels = {t: specs[t][1] for t in taps}
        self.out_stride = self.strides[taps[0]]
        self.out_channels = sum(self.channels.values())
        self.weights_source = weights_source
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def trainable(self) -> bool:
        """Whether any parameter requires grad."""
        return any(p.requires_grad for p in self.parameters())

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        """``images (B, 3, H, W)`` float in ``[0, 1]`` -> ``{tap: (B, C_tap, h_tap, w_tap)}``.

        With ``concat``: one ``(B, sum C_tap, h_0, w_0)`` tensor at the first tap's resolution.
        """
        check_shape(images, ("B", 3, "H", "W"), "images")
        if not images.is_floating_point():
            raise ValueError(
                f"Argument images must be float in [0, 1], got dtype {images.dtype}; "
                "convert uint8 images with images.float() / 255."
            )
        x = (images - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self.strides:
                out[name] = x
        if not self.concat:
            return out
        size = out[self.taps[0]].shape[-2:]
        maps = [out[self.taps[0]]]
        maps += [
            F.interpolate(out[t], size=size, mode="bilinear", align_corners=False)
            for t in self.taps[1:]
        ]
        return torch.cat(maps, dim=1)

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, taps={self.taps}, concat={self.concat}, "
            f"weights_source={self.weights_source!r}"
        )


# ------------------------------------------------------------------------- architectures


def _torchvision_stages(name: str, state_dict: dict | None) -> OrderedDict:
    """Stages of a torchvision model (weights loaded strictly when given)."""
    import torchvision
    from torchvision.ops import FrozenBatchNorm2d

    if (
        name == "vgg16"
    ):  # the convolutional part only: the classifier (120 M parameters) is never used
        from torchvision.models.vgg import cfgs, make_layers

        f = make_layers(cfgs["D"], batch_norm=False)
        for m in f.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if state_dict is not None:
            extra = sorted({k.split(".")[0] for k in state_dict} - {"features", "classifier"})
            if extra:
                raise ValueError(
                    f"The VGG-16 state dict has unexpected entries {extra}; expected torchvision's "
                    "vgg16 layout."
                )
            f.load_state_dict(
                {
                    k.removeprefix("features."): v
                    for k, v in state_dict.items()
                    if k.startswith("features.")
                },
                strict=True,
            )
        # ReLU after conv3_3, conv4_3, conv5_3 at indices 15, 22, 29
        return OrderedDict(conv3_3=f[:16], conv4_3=f[16:23], conv5_3=f[23:30])
    if name == "googlenet":
        return _googlenet_stages(state_dict)
    model = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return OrderedDict(
        stem=stem,
        layer1=model.layer1,
        layer2=model.layer2,
        layer3=model.layer3,
        layer4=model.layer4,
    )


class _GoogLeNetInput(nn.Module):
    """ImageNet-normalised input -> ``2 x - 1``, what torchvision's ImageNet GoogLeNet expects
    (its ``transform_input=True``, applied to an image ``x`` in ``[0, 1]``)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.std / 0.5) + (self.mean - 0.5) / 0.5


def _freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``module`` by a :class:`FrozenBatchNorm2d` holding its
    statistics and affine parameters (in place; returns ``module``)."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            _freeze_batch_norm(child)
    return module


def _googlenet_stages(state_dict: dict | None) -> OrderedDict:
    """torchvision's GoogLeNet up to ``inception4a`` (the classifier and auxiliary heads of the
    ImageNet file are dropped; batch norm frozen after loading)."""
    import torchvision

    model = torchvision.models.GoogLeNet(
        aux_logits=state_dict is not None, transform_input=False, init_weights=False
    )
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    else:  # random: He initialisation, so activations keep their scale through frozen (identity)
        for m in model.modules():  # batch norm, as the other random backbones here
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    _freeze_batch_norm(model)
    stem = nn.Sequential(
        _GoogLeNetInput(), model.conv1, model.maxpool1, model.conv2, model.conv3, model.maxpool2
    )
    return OrderedDict(
        stem=stem,
        inception3b=nn.Sequential(model.inception3a, model.inception3b),
        inception4a=nn.Sequential(model.maxpool3, model.inception4a),
    )


def _conv(
    c_in: int, c_out: int, stride: int = 1, dilation: int = 1, relu: bool = True
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation)
    ]
    return [*layers, nn.ReLU(inplace=True)] if relu else layers


class OfflineNet(nn.Module):
    """The compact fully convolutional descriptor net of the offline fallback.

    Three blocks of 3x3 convolutions with ReLU, each starting with a stride-2 convolution:
    ``block1`` (stride 2, ``widths[0]`` channels), ``block2`` (stride 4, ``widths[1]``) and
    ``block3`` (stride 8, ``widths[2]``). ``block3`` adds one dilated 3x3 convolution per entry
    of ``context`` (its dilation) and ends with a 1x1 convolution without ReLU: the descriptor.
    With the defaults: 9 convolutions, 0.6 M parameters (shipped as float16), a receptive field
    of 107 pixels. Trained by ``scripts/train_offline_backbone.py`` with a correspondence
    contrastive loss (UCN, Choy et al., NeurIPS 2016) on synthetic warps of scikit-image's
    photographs. Use it through :func:`backbone` (``name="offline"``), which adds the input
    normalisation and the taps.
    """

    def __init__(
        self, widths: tuple[int, int, int] = (32, 64, 128), context: tuple[int, ...] = (2, 2)
    ):
        super().__init__()
        a, b, c = widths
        self.widths, self.context = tuple(widths), tuple(context)
        self.block1 = nn.Sequential(*_conv(3, a, 2), *_conv(a, a))
        self.block2 = nn.Sequential(*_conv(a, b, 2), *_conv(b, b))
        ctx = [m for d in self.context for m in _conv(c, c, dilation=d)]
        self.block3 = nn.Sequential(*_conv(b, c, 2), *_conv(c, c), *ctx, nn.Conv2d(c, c, 1))

    def stages(self) -> OrderedDict:
        return OrderedDict(block1=self.block1, block2=self.block2, block3=self.block3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, 3, H, W)`` -> descriptors ``(B, widths[2], H/8, W/8)``."""
        return self.block3(self.block2(self.block1(x)))


# ------------------------------------------------------------------------------ weights


@dataclass(frozen=True)
class _WeightsEntry:
    file: str
    sha256: str
    script: str
    arch: dict
    metrics: dict = field(default_factory=dict)


class OfflineWeights(enum.Enum):
    """Weights shipped with corrlib (``corrlib/models/weights/``), torchvision-style.

    Each entry carries its file, SHA-256, the script that trained it, the architecture
    arguments of :class:`OfflineNet` and its measured PF-WILLOW PCK (``pf-willow`` protocol,
    all 450 pairs of the shared subset, :class:`corrlib.methods.BackboneMethod` at
    ``max_side=320``).
    """

    SYNTHETIC_UCN_V1 = _WeightsEntry(
        file="offline_backbone.pt",
        sha256="09e29b71c0b654174ce4d681274cb7339bb35881697c2f9f42602e2e3e7fc3f7",
        script="scripts/train_offline_backbone.py",
        arch={"widths": (32, 64, 128), "context": (2, 2)},
        metrics={
            "pf-willow PCK@0.05": 0.0476,
            "pf-willow PCK@0.1": 0.0891,
            "pf-willow PCK@0.15": 0.1351,
        },
    )

    @property
    def path(self) -> Path:
        return _WEIGHTS_DIR / self.value.file

    def describe(self) -> str:
        pck = self.value.metrics.get("pf-willow PCK@0.1")
        return f"OfflineWeights.{self.name} ({self.value.file}; PF-WILLOW PCK@0.1 = {pck:.3f})"


def load_offline_weights(
    entry: OfflineWeights = OfflineWeights.SYNTHETIC_UCN_V1, path=None
) -> tuple[OfflineNet, dict]:
    """Build :class:`OfflineNet` and load ``entry``'s shipped file (or ``path``) strictly.

    The shipped file is checked against the entry's SHA-256. Returns ``(net in eval mode, meta)``
    where ``meta`` is the metadata stored in the file (training script, seed, steps, data, date,
    measured PCK).
    """
    from corrlib.checkpoint import load_checkpoint

    file = Path(path) if path is not None else entry.path
    if not file.is_file():
        raise FileNotFoundError(
            f"The offline backbone weights {file} are missing; corrlib ships them (reinstall it), "
            f"or recreate them with {entry.value.script} --out {file}."
        )
    if path is None and entry.value.sha256:
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        if digest != entry.value.sha256:
            raise ValueError(
                f"{file} has SHA-256 {digest}, not {entry.value.sha256} as "
                f"OfflineWeights.{entry.name} records: the file was changed (retrained?). Restore "
                "it, or update the entry's sha256 and metrics if the change is intended."
            )
    state = load_checkpoint(file)
    if state.get("format") != _OFFLINE_FORMAT:
        raise ValueError(
            f"{file} is not an offline backbone file (format {state.get('format')!r}, expected "
            f"{_OFFLINE_FORMAT!r})."
        )
    arch = state["meta"]["arch"]
    net = OfflineNet(widths=tuple(arch["widths"]), context=tuple(arch["context"]))
    net.load_state_dict({k: v.float() for k, v in state["model"].items()}, strict=True)
    return net.eval(), state["meta"]


def imagenet_weights(name: str):
    """torchvision's ImageNet-1K weights enum entry of ``name`` (``IMAGENET1K_V1``)."""
    import torchvision.models as tvm

    check_choice(name, "name", BACKBONES[:-1])
    enums = {
        "vgg16": tvm.VGG16_Weights,
        "resnet18": tvm.ResNet18_Weights,
        "resnet34": tvm.ResNet34_Weights,
        "resnet50": tvm.ResNet50_Weights,
        "resnet101": tvm.ResNet101_Weights,
        "googlenet": tvm.GoogLeNet_Weights,
    }
    return enums[name].IMAGENET1K_V1


def imagenet_weights_path(name: str) -> Path:
    """Where torch hub caches ``name``'s ImageNet file:
    ``<torch.hub.get_dir()>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet_weights(name).url).name


def _display_path(path: Path) -> str:
    """``path`` with the home folder written ``~`` (printed banners carry no user's folder)."""
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home) :] if home not in ("", "/") and text.startswith(home) else text


def _missing_imagenet(name: str, why: str) -> PretrainedWeightsNotFoundError:
    w, path = imagenet_weights(name), imagenet_weights_path(name)
    return PretrainedWeightsNotFoundError(
        f"ImageNet weights for {name} ({type(w).__name__}.{w.name}) are not available: {why}. "
        f"Download {w.url} on a machine with internet and place it as {path} (folder "
        f"{path.parent}; the torch hub cache, see torch.hub.get_dir()); or use weights='auto' for "
        "the offline fallback."
    )


def _imagenet_state_dict(name: str, allow_download: bool) -> dict:
    w, path = imagenet_weights(name), imagenet_weights_path(name)
    if not path.is_file() and not allow_download:
        raise _missing_imagenet(
            name, f"{path.name} is not in the torch hub cache and allow_download=False"
        )
    try:
        return w.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as e:  # offline: URLError, socket errors, a refused or truncated download
        raise _missing_imagenet(
            name, f"{path.name} is not cached and downloading it failed ({type(e).__name__}: {e})"
        ) from e


# ------------------------------------------------------------------------------ builder


def _offline_backbone(taps, concat: bool, weights: str, source: str | None = None) -> Backbone:
    if weights == "none":
        net, source = OfflineNet(**OfflineWeights.SYNTHETIC_UCN_V1.value.arch), _RANDOM
    else:
        net, _ = load_offline_weights()
        source = source or f"offline fallback: {OfflineWeights.SYNTHETIC_UCN_V1.describe()}"
    return Backbone(
        net.stages(),
        taps or DEFAULT_TAPS["offline"],
        arch="offline",
        specs=TAPS["offline"],
        concat=concat,
        weights_source=source,
    )


def _announce_fallback(name: str, taps, reason: str) -> str:
    entry = OfflineWeights.SYNTHETIC_UCN_V1
    m = entry.value.metrics
    fb = TAPS[FALLBACK]
    lines = [
        f"ImageNet weights for {name} are "
        f"{'UNUSABLE' if ' was refused: ' in reason else 'ABSENT'} ({reason}).",
        f"Using the OFFLINE FALLBACK instead: '{FALLBACK}' = {entry.describe()},",
        "a small CNN trained by corrlib on synthetic warps of scikit-image photos; NOT an ImageNet "
        "model.",
        f"Measured on PF-WILLOW (450 pairs, pf-willow protocol): PCK@0.05/0.1/0.15 = "
        f"{m['pf-willow PCK@0.05']:.3f}/{m['pf-willow PCK@0.1']:.3f}/{m['pf-willow PCK@0.15']:.3f} "
        "(no-motion identity baseline: 0.061/0.185/0.349; for evaluation alone the hand-crafted "
        "'daisy' method scores higher).",
        f"Its taps are {list(DEFAULT_TAPS[FALLBACK])} (strides "
        f"{[fb[t][0] for t in DEFAULT_TAPS[FALLBACK]]}), not the requested "
        f"{list(taps or DEFAULT_TAPS[name])}: read Backbone.taps/strides/channels.",
        f"For ImageNet weights put {Path(imagenet_weights(name).url).name} into "
        f"{_display_path(imagenet_weights_path(name).parent)} (from {imagenet_weights(name).url}).",
    ]
    bar = "=" * 100
    print("\n".join([bar, *(f"!! {line}" for line in lines), bar]))
    return " ".join(lines)


def backbone(
    name: str,
    *,
    taps: tuple[str, ...] | list[str] | None = None,
    weights: str = "auto",
    concat: bool = False,
    trainable: bool = False,
    allow_download: bool | None = None,
) -> Backbone:
    """Build a :class:`Backbone` (in ``eval()`` mode) with named taps and the requested weights.

    Args:
        name: one of :data:`BACKBONES`.
        taps: tap names (see :data:`TAPS`); ``None`` uses :data:`DEFAULT_TAPS` (``conv4_3`` for
            VGG-16, ``layer3`` and ``layer4`` for ResNets, ``block3`` for ``offline``).
        weights: one of :data:`WEIGHTS` (see the module docstring). ``"auto"`` falls back to
            :data:`FALLBACK` with a ``UserWarning`` when ImageNet weights are absent: the
            returned model is then that architecture, with ITS taps, strides and channels.
        concat: return one hypercolumn tensor (later taps upsampled to the first tap's size).
        trainable: leave ``requires_grad=True`` on the parameters (batch norm stays frozen).
        allow_download: may ImageNet weights be downloaded? Default: yes for ``"imagenet"``,
            no for ``"auto"`` (which then only looks in the torch hub cache).

    Raises:
        PretrainedWeightsNotFoundError: ``weights="imagenet"`` without a cached or downloadable
            file.
        ValueError: an unknown name, tap or weights value.
    """
    check_choice(name, "name", BACKBONES)
    check_choice(weights, "weights", WEIGHTS)
    if isinstance(taps, str):
        taps = (taps,)
    if taps is not None:
        taps = tuple(taps)
        if not taps:
            raise ValueError("Argument taps must name at least one tap, got an empty sequence.")
        for t in taps:
            check_choice(t, "taps", TAPS[name])
    if name == "offline":
        if weights == "imagenet":
            raise ValueError(
                "The offline backbone has no ImageNet weights; use weights='offline' (or 'auto') "
                "or 'none'."
            )
        model = _offline_backbone(taps, concat, weights)
    elif weights == "none":
        model = Backbone(
            _torchvision_stages(name, None),
            taps or DEFAULT_TAPS[name],
            arch=name,
            specs=TAPS[name],
            concat=concat,
        )
    elif weights == "offline":
        model = _offline_backbone(None, concat, "offline")
    else:
        w = imagenet_weights(name)
        download = (weights == "imagenet") if allow_download is None else bool(allow_download)
        try:
            state = _imagenet_state_dict(name, download)
        except PretrainedWeightsNotFoundError as e:
            if weights == "imagenet":
                raise
            cached = imagenet_weights_path(name)
            if cached.exists():  # there, but refused (unsafe pickle, corrupt, wrong hash)
                reason = (
                    f"{_display_path(cached)} exists but was refused: "
                    f"{str(e).splitlines()[0][:300]}"
                )
            else:
                reason = f"{_display_path(cached)} not found" + (
                    "" if download else ", downloads not allowed"
                )
            warnings.warn(_announce_fallback(name, taps, reason), UserWarning, stacklevel=2)
            model = _offline_backbone(None, concat, "offline")
        else:
            source = f"imagenet (torchvision {type(w).__name__}.{w.name})"
            stages = _torchvision_stages(name, state)
            model = Backbone(
                stages,
                taps or DEFAULT_TAPS[name],
                arch=name,
                specs=TAPS[name],
                concat=concat,
                weights_source=source,
            )
    model.requires_grad_(trainable)
    return model.eval()
