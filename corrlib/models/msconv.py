"""Multi-scale convolutions, a flow + foreground head and a parametric control (chapter 07).

Ufer, Lui, Schwarz, Warkentin, Ommer, *Multi-Scale Convolutions for Learning Context Aware Feature
Representations*, arXiv 1906.06978, 2019. Only the abstract could be read and no code exists, so
everything here is **a reconstruction from the abstract; the equations are ours**, each choice a
named option (``../shared/research/wave2-spec.md`` section 3 tags them [D]):

* :class:`MSConv2d`, "a learned mixture of differently strided convolutions": for rates ``R``
  (multiples of the layer's own dilation), ``y = sum_r alpha_r * conv_{W_r, r}(x) + b`` with
  ``alpha = softmax_r(beta)`` per output channel. ``mode="dilated"`` samples the input on grids
  of spacing ``r`` (resolution kept); ``mode="strided"`` convolves with stride ``r`` and
  upsamples back (bilinear). ``shared_weights`` uses one ``W`` for every rate (the parameter
  count of one convolution, plus ``|R| * C_out`` mixing logits). With one rate it **is** the
  convolution it replaces. :func:`swap_convs` puts it into a trunk's stage.
* :class:`MSFeatureNet`: a :func:`corrlib.models.backbones.backbone` trunk whose last used stage
  has its 3x3 convolutions swapped for :class:`MSConv2d` (initialised from the trunk's weights);
  the earlier stages stay frozen, so their output can be cached (:meth:`MSFeatureNet.prefix`).
  Output: L2-normalised dense features for nearest-neighbour matching.
* :class:`FlowForegroundHead`, "a semantic flow network ... jointly predicts the foreground":
  from the dense correlation of two feature maps, a soft-argmax flow refined by a small
  encoder-decoder that also outputs a foreground logit per source cell.
* :class:`ParametricHead`: the same inputs, pooled to one affine (6) or 3x3 TPS (18) warp: the
  parametric-transformation models the abstract compares against.

Flows are in **feature cells** on the source grid, ``(x, y)``, 0-based cell centres:
``target_cell = source_cell + flow``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
from corrlib.correlation import dense_correlation
from corrlib.geometry import (
    normalized_to_pixel,
    pixel_grid,
    pixel_to_normalized,
    tps_basis,
    tps_lattice,
)
from corrlib.matching import soft_argmax
from corrlib.models.backbones import DEFAULT_TAPS, Backbone, backbone

__all__ = [
    "HEADS",
    "MIXINGS",
    "MODES",
    "MSCONV_FORMAT",
    "FlowForegroundHead",
    "MSConv2d",
    "MSFeatureNet",
    "ParametricHead",
    "build_head",
    "charbonnier",
    "export_msconv",
    "load_msconv",
    "msconv_net",
    "sparse_flow_loss",
    "swap_convs",
]

#: How "differently strided" is read: dilations on one grid, or strides with upsampling.
MODES = ("dilated", "strided")
#: How the per-rate weights are normalised: softmax over rates per output channel, independent
#: sigmoids per rate and channel, or one softmax weight per rate shared by every channel.
MIXINGS = ("softmax", "sigmoid", "scalar")
#: The heads on top of the features: the flow + foreground network, and the parametric controls.
HEADS = ("flow", "affine", "tps")
#: Format tag of :func:`export_msconv` files.
MSCONV_FORMAT = "corrlib.msconv/1"


# ------------------------------------------------------------------------------------- the layer


class MSConv2d(nn.Module):
    """A learned mixture of one convolution applied at several rates (Ufer et al. 2019, as we read
    the abstract).

    ``y = sum_{r in rates} alpha_r * conv(x; W_r, stride, dilation = d * r) + b`` (``mode=
    "dilated"``, padding ``d * r * (k - 1) / 2``: every rate gives the output size of the plain
    convolution), or ``conv(x; W_r, stride = stride * r, dilation = d)`` upsampled (bilinear) to
    the plain convolution's output size (``mode="strided"``). ``alpha (R, C_out)``:
    ``softmax`` over the rates of the logits ``beta`` per output channel (``mixing="softmax"``,
    init 0: a uniform mixture), ``sigmoid(beta)`` (``"sigmoid"``), or one softmax weight per
    rate for every channel (``"scalar"``). ``shared_weights``: one kernel ``W`` for every rate
    (the parameters of one convolution plus the mixing logits); else one per rate, each
    initialised to the same kernel. The bias is added once, after the mixture.

    With ``rates=(1,)`` and softmax mixing the layer **equals** ``nn.Conv2d(in, out, k, stride,
    padding=d * (k - 1) / 2, dilation=d)`` with the same weights.

    Args:
        in_channels, out_channels: channels ``C_in``, ``C_out``.
        kernel_size: an odd square kernel size ``k``.
        stride: the base stride.
        dilation: the base dilation ``d`` (rates multiply it).
        rates: the distinct positive integer rates ``R``.
        mode: one of :data:`MODES`.
        shared_weights: one kernel for every rate.
        mixing: one of :data:`MIXINGS`.
        bias: learn a bias.
        base_weight: None (default): the mixing logits start at 0, a uniform mixture; else the
            initial weight of rate 1 (the others share the rest), so a layer made from a trained
            convolution starts close to it (softmax or scalar mixing; rates must hold 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        rates: Sequence[int] = (1, 2, 4),
        *,
        mode: str = "dilated",
        shared_weights: bool = True,
        mixing: str = "softmax",
        bias: bool = True,
        base_weight: float | None = None,
    ):
        super().__init__()
        check_int(kernel_size, "kernel_size", 1)
        if kernel_size % 2 == 0:
            raise ValueError(f"Argument kernel_size must be odd, got {kernel_size}.")
        rates = tuple(int(r) for r in rates)
        if not rates or min(rates) < 1 or len(set(rates)) != len(rates):
            raise ValueError(f"Argument rates must be distinct integers >= 1, got {rates}.")
        check_choice(mode, "mode", MODES)
        check_choice(mixing, "mixing", MIXINGS)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.dilation = int(kernel_size), int(stride), int(dilation)
        self.rates, self.mode, self.mixing = rates, mode, mixing
        self.shared_weights = bool(shared_weights)
        shape = (self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)
        n_kernels = 1 if self.shared_weights else len(rates)
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(shape)) for _ in range(n_kernels))
        for w in self.weights:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Conv2d's default initialisation
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None
        logits = len(rates) if mixing == "scalar" else (len(rates), self.out_channels)
        self.mix_logits = nn.Parameter(torch.zeros(logits))
        self.base_weight = None if base_weight is None else float(base_weight)
        if base_weight is not None:
            if mixing == "sigmoid" or 1 not in rates or len(rates) < 2:
                raise ValueError(
                    "Argument base_weight needs softmax or scalar mixing and rates holding 1 and "
                    f"another rate, got mixing={mixing!r}, rates={rates}."
                )
            if not 0 < base_weight < 1:
                raise ValueError(f"Argument base_weight must be in (0, 1), got {base_weight}.")
            # softmax logits giving rate 1 the weight base_weight, the others equal shares
            others = (1 - base_weight) / (len(rates) - 1)
            with torch.no_grad():
                self.mix_logits[rates.index(1)] = math.log(base_weight / others)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rates: Sequence[int] = (1, 2, 4), **kwargs) -> MSConv2d:
        """An :class:`MSConv2d` with ``conv``'s shape, stride, dilation, weights and bias.

        Args:
            conv: a square, odd-sized ``nn.Conv2d`` with ``groups=1`` and "same" padding
                ``dilation * (k - 1) / 2``.
            rates: the rates.
            **kwargs: ``mode``, ``shared_weights``, ``mixing``, ``base_weight``.

        Returns:
            The new layer; with ``rates=(1,)`` it computes exactly what ``conv`` computes.
        """
        k = conv.kernel_size
        if (
            k[0] != k[1]
            or k[0] % 2 == 0
            or conv.groups != 1
            or conv.stride[0] != conv.stride[1]
            or conv.dilation[0] != conv.dilation[1]
            or tuple(conv.padding) != (conv.dilation[0] * (k[0] - 1) // 2,) * 2
        ):
            raise ValueError(
                f"MSConv2d.from_conv needs a square odd kernel, groups=1, equal strides and "
                f"'same' padding, got {conv}."
            )
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            k[0],
            conv.stride[0],
            conv.dilation[0],
            rates,
            bias=conv.bias is not None,
            **kwargs,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            for w in layer.weights:
                w.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def mixture_weights(self) -> torch.Tensor:
        """The weights ``alpha`` of the rates: ``(R, C_out)`` (``"scalar"``: expanded)."""
        if self.mixing == "sigmoid":
            alpha = torch.sigmoid(self.mix_logits)
        else:
            alpha = torch.softmax(self.mix_logits, dim=0)
        if self.mixing == "scalar":
            alpha = alpha[:, None].expand(-1, self.out_channels)
        return alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C_in, H, W)`` -> ``(B, C_out, H', W')``, ``H'`` that of the plain convolution."""
        check_shape(x, ("B", self.in_channels, "H", "W"), "x")
        k, s, d = self.kernel_size, self.stride, self.dilation
        h_out = (x.shape[-2] - 1) // s + 1
        w_out = (x.shape[-1] - 1) // s + 1
        alpha = self.mixture_weights()
        out = None
        for i, r in enumerate(self.rates):
            w = self.weights[0 if self.shared_weights else i]
            if self.mode == "dilated":
                y = F.conv2d(x, w, None, s, d * r * (k - 1) // 2, d * r)
            else:
                y = F.conv2d(x, w, None, s * r, d * (k - 1) // 2, d)
                if r > 1:
                    y = _upsample_strided(y, r, (h_out, w_out))
            term = alpha[i].view(1, -1, 1, 1) * y
            out = term if out is None else out + term
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, dilation={self.dilation}, rates={self.rates}, "
            f"mode={self.mode!r}, shared_weights={self.shared_weights}, mixing={self.mixing!r}"
            + ("" if self.base_weight is None else f", base_weight={self.base_weight}")
        )


def _upsample_strided(y: torch.Tensor, r: int, size: tuple[int, int]) -> torch.Tensor:
    """Bring the output of a convolution with ``r`` times the stride back to the plain one's grid.

    Coarse cell ``j`` sits where plain cell ``r * j`` does (both convolutions centre their
    kernels at the input positions ``stride * index``), so plain cell ``i`` reads the coarse map
    at ``i / r`` (bilinear, border values repeated): not ``F.interpolate(align_corners=False)``,
    which assumes block centres and shifts by ``(r - 1) / 2`` cells.
    """
    hc, wc = y.shape[-2:]
    h, w = size
    xs = (2 * (torch.arange(w, device=y.device, dtype=y.dtype) / r) + 1) / wc - 1
    ys = (2 * (torch.arange(h, device=y.device, dtype=y.dtype) / r) + 1) / hc - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None].expand(
        y.shape[0], -1, -1, -1
    )
    return F.grid_sample(y, grid, mode="bilinear", padding_mode="border", align_corners=False)


def swap_convs(module: nn.Module, rates: Sequence[int] = (1, 2, 4), **kwargs) -> list[str]:
    """Replace, in place, every square odd ``k >= 3`` ``nn.Conv2d`` inside ``module`` by an
    :class:`MSConv2d` initialised from it (:meth:`MSConv2d.from_conv`); 1x1 convolutions stay.

    Args:
        module: e.g. a trunk's last stage (``net.stages["block3"]``, a ResNet's ``layer3``).
        rates: the rates of every new layer (multiples of each convolution's own dilation).
        **kwargs: ``mode``, ``shared_weights``, ``mixing``, ``base_weight`` of :class:`MSConv2d`.

    Returns:
        The dotted names (inside ``module``) of the swapped convolutions, in module order.
        Raises ``ValueError`` when there is none.
    """
    swapped = []
    for name, child in list(module.named_modules()):
        if not isinstance(child, nn.Conv2d) or child.kernel_size[0] < 3:
            continue
        parent = module
        *path, last = name.split(".")
        for p in path:
            parent = getattr(parent, p)
        setattr(parent, last, MSConv2d.from_conv(child, rates, **kwargs))
        swapped.append(name)
    if not swapped:
        raise ValueError(
            f"swap_convs found no 3x3 (or larger) nn.Conv2d in {type(module).__name__}."
        )
    return swapped


# ------------------------------------------------------------------------------ the feature net


class MSFeatureNet(nn.Module):
    """Dense features of a trunk whose last stage mixes scales (build one with :func:`msconv_net`).

    ``trunk``'s stages up to ``stage`` run; the stages before ``stage`` are frozen (their output,
    :meth:`prefix`, can be cached), ``stage`` is trainable with its 3x3 convolutions swapped for
    :class:`MSConv2d`. Output features are L2-normalised per cell.

    Attributes:
        stride: the feature map's stride in pixels.
        channels: ``C``.
        config: the settings that rebuild it (:func:`msconv_net`'s arguments).
        swapped: names of the swapped convolutions inside the stage.
        variant: a label (e.g. ``"multi-scale"``), or None.
        eval_settings: how the chapter evaluates it (``{"max_side": ...}``).
    """

    def __init__(self, trunk: Backbone, stage: str, config: dict, swapped: list[str], variant=None):
        super().__init__()
        names = list(trunk.stages)
        check_choice(stage, "stage", names)
        self.trunk, self.stage = trunk, stage
        self.frozen_stages = names[: names.index(stage)]
        self.stride = trunk.strides[stage]
        self.channels = trunk.channels[stage]
        self.config, self.swapped, self.variant = dict(config), list(swapped), variant
        self.eval_settings: dict = {}
        self.weights_source = trunk.weights_source
        for name in self.frozen_stages:
            trunk.stages[name].requires_grad_(False)
        trunk.stages[stage].requires_grad_(True)

    def train(self, mode: bool = True) -> MSFeatureNet:
        super().train(mode)
        for name in self.frozen_stages:  # frozen stages (and their batch norms) stay in eval
            self.trunk.stages[name].eval()
        return self

    @torch.no_grad()
    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen stages' output: ``images (B, 3, H, W)`` float in ``[0, 1]`` ->
        ``(B, C_pre, h', w')`` (what :meth:`from_prefix` takes; cache it for a fixed image set)."""
        check_shape(images, ("B", 3, "H", "W"), "images")
        x = (images - self.trunk.mean) / self.trunk.std
        for name in self.frozen_stages:
            x = self.trunk.stages[name](x)
        return x

    def from_prefix(self, pre: torch.Tensor) -> torch.Tensor:
        """The trainable stage on a :meth:`prefix` output -> unit features ``(B, C, h, w)``."""
        return F.normalize(self.trunk.stages[self.stage](pre), dim=1, eps=1e-6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, 3, H, W)`` float in ``[0, 1]`` -> unit features ``(B, C, H/s, W/s)``."""
        return self.from_prefix(self.prefix(images))

    def msconv_layers(self) -> dict[str, MSConv2d]:
        """``{name: layer}`` of the stage's :class:`MSConv2d` layers, in order."""
        stage = self.trunk.stages[self.stage]
        return {n: m for n, m in stage.named_modules() if isinstance(m, MSConv2d)}

    @torch.no_grad()
    def mixture_weights(self) -> dict[str, torch.Tensor]:
        """``{layer name: alpha (R, C_out)}``: the learned weight of every rate, per channel."""
        return {n: m.mixture_weights().detach().cpu() for n, m in self.msconv_layers().items()}

    def feature_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The ``(h, w)`` of the feature map of an ``(H, W)`` image (measured once per size)."""
        key = tuple(int(v) for v in image_size)
        cache = self.__dict__.setdefault("_sizes", {})
        if key not in cache:
            p = next(self.parameters())
            was_training = self.training
            self.eval()  # a probe must not update batch-norm statistics
            with torch.no_grad():
                cache[key] = tuple(self(torch.zeros(1, 3, *key, device=p.device)).shape[-2:])
            self.train(was_training)
        return cache[key]


def msconv_net(
    arch: str = "offline",
    *,
    trunk_weights: str = "offline",
    stage: str | None = None,
    rates: Sequence[int] = (1, 2, 4),
    mode: str = "dilated",
    shared_weights: bool = True,
    mixing: str = "softmax",
    base_weight: float | None = None,
    variant: str | None = None,
) -> MSFeatureNet:
    """Build an :class:`MSFeatureNet`: ``arch``'s trunk with ``stage``'s convolutions swapped.

    Args:
        arch: a :data:`corrlib.models.backbones.BACKBONES` name (``"offline"``: the compact
            offline trunk, whose weights ship with corrlib; ``"resnet101"`` etc. at ``paper``).
        trunk_weights: the trunk's weights (``"offline"``, ``"imagenet"``, ``"auto"`` with its
            loud fallback, ``"none"``: random, as a file's weights are loaded over it).
        stage: the stage to swap and train (None: the backbone's first default tap: ``block3`` for
            the offline trunk, ``layer3`` for ResNets, ``conv4_3`` for VGG-16).
        rates: the rates of every :class:`MSConv2d` (``(1,)``: the trunk itself).
        mode, shared_weights, mixing, base_weight: as :class:`MSConv2d` (with a single rate,
            ``base_weight`` is ignored and the mixing is softmax, so the net is the trunk itself:
            a sigmoid weight of 0.5 would halve every swapped convolution).
        variant: a label recorded with the model.

    Returns:
        The net in ``eval()`` mode; ``config`` holds these arguments, with the weights actually
        used in ``weights_source``.
    """
    stage = stage or DEFAULT_TAPS[arch][0]
    trunk = backbone(arch, taps=(stage,), weights=trunk_weights, trainable=False)
    if trunk.arch != arch:  # the loud ImageNet fallback happened: the offline trunk's last stage
        stage = trunk.taps[-1]
    rates = tuple(int(r) for r in rates)
    base = base_weight if len(rates) > 1 else None
    if len(rates) == 1:  # one rate: softmax mixing makes the layer the convolution itself
        mixing = "softmax"
    swapped = swap_convs(
        trunk.stages[stage],
        rates,
        mode=mode,
        shared_weights=shared_weights,
        mixing=mixing,
        base_weight=base,
    )
    config = {
        "arch": trunk.arch,
        "stage": stage,
        "rates": tuple(int(r) for r in rates),
        "mode": mode,
        "shared_weights": bool(shared_weights),
        "mixing": mixing,
        "base_weight": base,
    }
    return MSFeatureNet(trunk, stage, config, swapped, variant).eval()


# ------------------------------------------------------------------------------------- the heads


def _cell_grid(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """``(1, 2, h, w)`` cell coordinates (x, y)."""
    return pixel_grid((h, w), device=like.device, dtype=like.dtype).permute(2, 0, 1)[None]


def _correlation_cues(
    f_src: torch.Tensor, f_trg: torch.Tensor, top_k: int, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(soft-argmax flow (B, 2, h, w) in cells, top-k scores (B, k, h, w))`` of unit features."""
    b, _, h, w = f_src.shape
    corr = dense_correlation(f_src, f_trg, normalize=False)  # (B, h*w, ht, wt)
    target = soft_argmax(corr, beta)  # (B, h*w, 2) cells of the target
    flow = target.transpose(1, 2).reshape(b, 2, h, w) - _cell_grid(h, w, f_src)
    top = corr.flatten(2).topk(min(top_k, corr[0, 0].numel()), dim=-1).values  # (B, h*w, k)
    return flow, top.transpose(1, 2).reshape(b, -1, h, w)


def _head_input(head: nn.Module, f_src: torch.Tensor, f_trg: torch.Tensor):
    """A head's input: ``(x = [project(f_src), flow0 / (w, h), top-k scores], flow0 (B, 2, h, w)
    in cells, scale (1, 2, 1, 1) = (w, h))`` for unit features ``(B, C, h, w)`` of one size."""
    b, c, h, w = check_shape(f_src, ("B", "C", "h", "w"), "f_src").values()
    check_shape(f_trg, (b, c, h, w), "f_trg")
    flow0, top = _correlation_cues(f_src, f_trg, head.top_k, head.beta)
    scale = flow0.new_tensor([w, h]).view(1, 2, 1, 1)
    return torch.cat((head.project(f_src), flow0 / scale, top), dim=1), flow0, scale


def _conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.ReLU(inplace=True))


class FlowForegroundHead(nn.Module):
    """Semantic flow and foreground from two feature maps (our reading of the abstract's network).

    Cues per source cell: the soft-argmax flow over the dense correlation (temperature ``beta``),
    the ``top_k`` best correlation scores (how sure the match is) and a 1x1 projection of the
    source features. A two-level encoder-decoder turns them into a flow residual (2 channels,
    zero-initialised, so the head starts at the soft-argmax flow) and a foreground logit.

    ``forward(f_src, f_trg)`` with unit features ``(B, C, h, w)`` (both maps of one size) ->
    ``(flow (B, 2, h, w) in source cells, fg_logit (B, 1, h, w))``.
    """

    kind = "flow"

    def __init__(self, channels: int, width: int = 64, top_k: int = 8, beta: float = 0.05):
        super().__init__()
        self.top_k, self.beta = int(top_k), float(beta)
        self.config = {
            "channels": int(channels),
            "width": int(width),
            "top_k": int(top_k),
            "beta": float(beta),
        }
        self.project = nn.Conv2d(channels, width // 2, 1)
        c_in = width // 2 + 2 + self.top_k
        self.enc1 = nn.Sequential(_conv_block(c_in, width), _conv_block(width, width))
        self.enc2 = nn.Sequential(_conv_block(width, width, 2), _conv_block(width, width))
        self.dec = nn.Sequential(_conv_block(2 * width, width), _conv_block(width, width))
        self.out_flow = nn.Conv2d(width, 2, 3, 1, 1)
        self.out_fg = nn.Conv2d(width, 1, 3, 1, 1)
        nn.init.zeros_(self.out_flow.weight)
        nn.init.zeros_(self.out_flow.bias)

    def forward(self, f_src: torch.Tensor, f_trg: torch.Tensor):
        x, flow0, scale = _head_input(self, f_src, f_trg)
        h, w = f_src.shape[-2:]
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        up = F.interpolate(e2, size=(h, w), mode="bilinear", align_corners=False)
        d = self.dec(torch.cat((e1, up), dim=1))
        return flow0 + self.out_flow(d) * scale, self.out_fg(d)


class ParametricHead(nn.Module):
    """The parametric control: one global warp fitted to the soft-argmax matches, with learned
    per-cell weights.

    From the same cues as :class:`FlowForegroundHead` a small network predicts a weight
    ``w_p = softplus(.)`` per source cell (its last layer zero-initialised: uniform weights at
    start); the warp is the weighted least-squares fit of the soft-argmax targets ``q_p``,
    ``min sum_p w_p |T(p) - q_p|^2`` in normalised coordinates: ``kind="affine"`` (6 parameters)
    or ``kind="tps"`` (the targets of a 3x3 control lattice,
    :func:`corrlib.geometry.tps_basis`); a small ridge ``reg`` towards no motion keeps the fit
    regular. The fit is differentiable,
    so training teaches the network which matches to trust while the deformation stays
    parametric. (A global regression from pooled features, as in chapter 02's STN, did not learn
    even exact affine warps in the ``lab`` budget: mean pooling discards where each cue is.)
    ``forward`` -> ``(flow (B, 2, h, w) in cells, None)``: no foreground.
    """

    def __init__(
        self,
        channels: int,
        kind: str = "affine",
        width: int = 64,
        top_k: int = 8,
        beta: float = 0.05,
        reg: float = 1e-3,
    ):
        super().__init__()
        check_choice(kind, "kind", HEADS[1:])
        self.kind, self.top_k, self.beta, self.reg = kind, int(top_k), float(beta), float(reg)
        self.config = {
            "channels": int(channels),
            "kind": kind,
            "width": int(width),
            "top_k": int(top_k),
            "beta": float(beta),
            "reg": float(reg),
        }
        self.project = nn.Conv2d(channels, width // 2, 1)
        c_in = width // 2 + 2 + self.top_k
        self.weight_net = nn.Sequential(
            _conv_block(c_in, width), _conv_block(width, width), nn.Conv2d(width, 1, 3, 1, 1)
        )
        nn.init.zeros_(self.weight_net[-1].weight)
        nn.init.zeros_(self.weight_net[-1].bias)
        self.register_buffer("lattice", tps_lattice(3), persistent=False)

    def forward(self, f_src: torch.Tensor, f_trg: torch.Tensor):
        x, flow0, _ = _head_input(self, f_src, f_trg)
        b, _, h, w = f_src.shape
        weight = F.softplus(self.weight_net(x)).flatten(1) + 1e-4  # (B, h*w)
        cells = _cell_grid(h, w, f_src)[0].permute(1, 2, 0).reshape(-1, 2)  # (h*w, 2)
        norm = pixel_to_normalized(cells, (h, w))  # (h*w, 2)
        q = pixel_to_normalized(cells + flow0.flatten(2).transpose(1, 2), (h, w))  # (B, h*w, 2)
        if self.kind == "affine":
            basis = torch.cat((norm, torch.ones_like(norm[:, :1])), dim=1)  # (h*w, 3)
            identity = torch.cat((torch.eye(2), torch.zeros(1, 2))).to(norm)  # [x, y, 1] @ I
        else:
            basis = tps_basis(self.lattice.double().cpu(), (h, w)).to(norm)  # (h*w, 9)
            identity = self.lattice.to(norm)  # the lattice's own targets: no motion
        target = torch.stack(
            [_weighted_fit(basis, weight[i], q[i], identity, self.reg) for i in range(b)]
        )  # (B, h*w, 2)
        flow = normalized_to_pixel(target, (h, w)) - cells
        return flow.transpose(1, 2).reshape(b, 2, h, w), None


def _weighted_fit(
    basis: torch.Tensor, weight: torch.Tensor, q: torch.Tensor, identity: torch.Tensor, reg: float
) -> torch.Tensor:
    """``basis @ c`` for ``c = argmin_c sum_p weight_p |basis_p c - q_p|^2 + lam |c - identity|^2``
    with ``lam = reg * trace / K`` of the weighted Gram matrix (a ridge towards no motion that
    keeps the system regular), float64, one unbatched solve (see
    :func:`corrlib.geometry.tps_fit`)."""
    a = basis.double()
    wa = a * weight.double()[:, None]
    gram = a.T @ wa
    k = a.shape[1]
    lam = reg * float(gram.detach().diagonal().sum()) / k + 1e-12
    eye = torch.eye(k, dtype=a.dtype, device=a.device)
    coef = torch.linalg.solve(gram + lam * eye, wa.T @ q.double() + lam * identity.double())
    return (a @ coef).to(q.dtype)


def build_head(kind: str, channels: int, **kwargs) -> nn.Module:
    """A head of :data:`HEADS`: ``"flow"`` (:class:`FlowForegroundHead`) or ``"affine"``/``"tps"``
    (:class:`ParametricHead`); ``kwargs``: ``width``, ``top_k``, ``beta``."""
    check_choice(kind, "kind", HEADS)
    if kind == "flow":
        return FlowForegroundHead(channels, **kwargs)
    return ParametricHead(channels, kind, **kwargs)


# ------------------------------------------------------------------------------------ the losses


def charbonnier(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """The robust penalty ``sqrt(x^2 + eps^2) - eps``, elementwise (0 at 0, ~|x| far away)."""
    return (x.pow(2) + eps * eps).sqrt() - eps


def sparse_flow_loss(
    flow: torch.Tensor,
    src_cells: torch.Tensor,
    trg_cells: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Charbonnier end-point error of a dense flow at sparse correspondences.

    ``flow (B, 2, h, w)`` in cells on the source grid; ``src_cells``/``trg_cells`` ``(B, N, 2)``
    integer cells (x, y) of the correspondences (mined or exact); ``weight (B, N)`` (None: 1; 0
    marks padding). Returns the weighted mean over the correspondences of
    ``charbonnier(|src + flow(src) - trg|_2)``, a scalar (0 attached to the graph if no weight).
    """
    dims = check_shape(flow, ("B", 2, "h", "w"), "flow")
    b, h, w = dims["B"], dims["h"], dims["w"]
    n = check_shape(src_cells, (b, "N", 2), "src_cells")["N"]
    check_shape(trg_cells, (b, n, 2), "trg_cells")
    weight = torch.ones(b, n, device=flow.device) if weight is None else weight.to(flow.dtype)
    if n and (
        src_cells.min() < 0 or src_cells[..., 0].max() > w - 1 or src_cells[..., 1].max() > h - 1
    ):
        raise ValueError(
            f"Argument src_cells must lie on the {w}x{h} grid (0 <= x <= {w - 1}, 0 <= y <= "
            f"{h - 1}), got x in [{float(src_cells[..., 0].min())}, "
            f"{float(src_cells[..., 0].max())}], y in [{float(src_cells[..., 1].min())}, "
            f"{float(src_cells[..., 1].max())}]."
        )
    idx = (src_cells[..., 1].long() * w + src_cells[..., 0].long()).clamp(0, h * w - 1)
    at = torch.gather(flow.flatten(2), 2, idx[:, None].expand(-1, 2, -1)).transpose(1, 2)
    err = (src_cells.to(flow.dtype) + at - trg_cells.to(flow.dtype)).norm(dim=-1)
    total = weight.sum()
    if float(total) == 0:
        return flow.sum() * 0.0
    return (charbonnier(err) * weight).sum() / total


# ---------------------------------------------------------------------------------- export, load


def export_msconv(
    path,
    net: MSFeatureNet,
    head: nn.Module | None = None,
    metrics: dict | None = None,
    eval_settings: dict | None = None,
):
    """Save a trained :class:`MSFeatureNet` (and optionally its head) for :func:`load_msconv`.

    Args:
        path: the file to write (atomically).
        net: the feature net (its ``config``, ``variant`` and weights are saved).
        head: a :func:`build_head` head trained on ``net``'s features (None: features only).
        metrics: numbers recorded beside the weights.
        eval_settings: how the chapter evaluates it (``{"max_side": 160}``; None:
            ``net.eval_settings``), the registered methods' defaults.

    Returns:
        The path written; tensors, numbers and strings only (``weights_only`` loading).
    """
    state = {
        "format": MSCONV_FORMAT,
        "config": dict(net.config),
        "variant": net.variant,
        "weights_source": net.weights_source,
        "model": net.state_dict(),
        "head": None
        if head is None
        else {"config": dict(head.config), "kind": head.kind, "state": head.state_dict()},
        "metrics": finite_metrics(metrics),
        "eval": check_eval_settings(net.eval_settings if eval_settings is None else eval_settings),
    }
    return save_checkpoint(path, state)


def load_msconv(path) -> tuple[MSFeatureNet, nn.Module | None]:
    """Rebuild and load (strict) what :func:`export_msconv` saved: ``(net, head or None)``, in
    eval mode. The trunk is built with random weights (``trunk_weights="none"``) and then loaded
    from the file, so no other download or file is needed."""
    state = read_model_file(path, MSCONV_FORMAT, "an exported multi-scale feature net")
    cfg = dict(state["config"])
    try:
        net = msconv_net(cfg.pop("arch"), trunk_weights="none", variant=state.get("variant"), **cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{path}: its settings {state['config']!r} do not build a net ({e})."
        ) from e
    load_state_strict(net, state["model"], path)
    net.weights_source = f"trained in chapter 07 from {state.get('weights_source', '?')}"
    net.eval_settings = check_eval_settings(state.get("eval"), path)
    head = None
    if state.get("head") is not None:
        h = state["head"]
        cfg_h = dict(h["config"])
        channels = cfg_h.pop("channels")
        cfg_h.pop("kind", None)
        head = build_head(h["kind"], channels, **cfg_h)
        load_state_strict(head, h["state"], path, part="head")
        head.eval()
    return net.eval(), head
