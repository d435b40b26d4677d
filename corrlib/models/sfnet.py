"""SFNet: semantic flow learned from foreground masks (Lee, Kim, Ponce, Ham, CVPR 2019).

A frozen backbone gives two feature levels (ResNet-101 ``layer3`` = conv4-23, stride 16, and
``layer4`` = conv5-3, stride 32); trainable *adaptation layers* refine each level; each level
gives an all-pairs correlation of L2-normalised features, clipped at zero; the two are
multiplied (a match must be good at both levels) and each score map is L2-normalised. The
*kernel soft argmax* turns every score map into a sub-cell match, differentiably, which gives a
dense flow in both directions. Training needs only foreground masks: with the flows, each
image's mask is warped onto the other (:func:`corrlib.losses.mask_consistency_loss`), the
two flows must undo each other on the foreground (:func:`corrlib.losses.flow_consistency_loss`)
and be smooth there (:func:`corrlib.losses.flow_smoothness_loss`); :func:`sfnet_loss` sums
them with the weights of :data:`LOSS_WEIGHTS`.

Conventions: images ``(B, 3, H, W)`` float in ``[0, 1]``; the correlation grid has
``(h, w) = (H / grid_stride, W / grid_stride)`` cells placed by
:meth:`corrlib.matching.FeatureGrid.for_map`; flows ``(B, 2, h, w)`` live on their source's
grid, point into the other image, (x, y) order, in cells unless a name says pixels. Taps finer
than the grid are average-pooled to it before adaptation; coarser taps are adapted, then
upsampled (bilinear), as SFNet does with conv5-3.

The paper's settings (the defaults of :class:`corrlib.recipes.sfnet.Config`, from the authors'
public code, since the paper's tables could not be read here): sigma = 5 cells, beta = 0.02
(softmax temperature; inverse 50), loss weights mask 3, flow 16, smoothness 0.5 on flows in
normalised ``[-1, 1]`` units, masks resized to the grid and binarised at 0.1, two residual
adaptation blocks per level (5x5 convolutions for conv4-23, 3x3 for conv5-3), 320 x 320 images.

Example:
    >>> from corrlib.models.backbones import backbone
    >>> net = SFNet(backbone("resnet18", weights="none", taps=("layer3", "layer4")))
    >>> out = net(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    >>> tuple(out.flow_st.shape), tuple(out.corr.shape), net.grid_stride
    ((1, 2, 4, 4), (1, 16, 4, 4), 16)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from corrlib._check import check_choice, check_shape, full_precision
from corrlib.checkpoint import finite_metrics, load_state_strict, read_model_file, save_checkpoint
from corrlib.correlation import dense_correlation, iter_correlation_chunks, l2_normalize
from corrlib.losses import flow_consistency_loss, flow_smoothness_loss, mask_consistency_loss
from corrlib.matching import FeatureGrid, hard_argmax, kernel_soft_argmax, soft_argmax
from corrlib.models.backbones import Backbone, backbone

__all__ = [
    "ARGMAX_MODES",
    "LOSS_WEIGHTS",
    "OFFLINE_GRID_STRIDE",
    "OFFLINE_TAPS",
    "SFNET_FORMAT",
    "AdaptationBlock",
    "SFNet",
    "SFNetOutput",
    "export_sfnet",
    "flow_cells_to_normalized",
    "load_sfnet",
    "mask_to_grid",
    "sfnet",
    "sfnet_loss",
]

#: How a score map becomes a match: SFNet's kernel soft argmax, a plain soft argmax, a hard argmax.
ARGMAX_MODES = ("kernel", "soft", "hard")
#: SFNet's loss weights (authors' code): mask consistency, flow consistency, smoothness.
LOSS_WEIGHTS = {"mask": 3.0, "flow": 16.0, "smooth": 0.5}
#: Taps of the offline fallback backbone (strides 4 and 8) that play conv4-23 and conv5-3.
OFFLINE_TAPS = ("block2", "block3")
#: Correlation grid stride on the offline backbone: a 192 x 192 image gives 24 x 24 cells,
#: close to the paper's 20 x 20 at 320 x 320 (so sigma = 5 cells covers a similar share).
OFFLINE_GRID_STRIDE = 8


class AdaptationBlock(nn.Module):
    """One residual adaptation block: ``f + ReLU(BN(conv_k(f)))``, channels kept.

    ``(B, C, h, w)`` -> ``(B, C, h, w)``; ``kernel`` odd (padding keeps the size).
    """

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"Argument kernel must be a positive odd int, got {kernel}.")
        self.conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f + F.relu(self.bn(self.conv(f)))


@dataclass
class SFNetOutput:
    """What :meth:`SFNet.forward` returns.

    ``corr_st (B, hs*ws, ht, wt)``: each source cell's normalised score map over the target;
    ``corr_ts (B, ht*wt, hs, ws)`` the reverse (both None when the flows were computed in chunks,
    ``max_bytes``: the full correlation never existed); ``flow_st (B, 2, hs, ws)`` and
    ``flow_ts (B, 2, ht, wt)`` in cells (``flow_ts`` and ``corr_ts`` None when only the forward
    flow was asked for, ``reverse=False``); ``grid_src``/``grid_trg``: :class:`FeatureGrid` of
    each image (pixels).
    """

    corr_st: torch.Tensor | None
    corr_ts: torch.Tensor | None
    flow_st: torch.Tensor
    flow_ts: torch.Tensor | None
    grid_src: FeatureGrid
    grid_trg: FeatureGrid

    @property
    def corr(self) -> torch.Tensor | None:
        """Alias of :attr:`corr_st`."""
        return self.corr_st

    def flow_pixels(
        self, direction: str = "st", size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Flow in pixels ``(B, 2, H, W)`` upsampled (bilinear) to the image ``size`` of its source.

        ``direction`` ``"st"`` (source -> target) or ``"ts"``. ``size=None`` keeps the grid
        (``(B, 2, h, w)``, pixels). Upsampling with ``align_corners=False`` puts each cell at its
        :class:`FeatureGrid` centre, so the result is consistent with :meth:`FeatureGrid.to_pixels`.
        """
        check_choice(direction, "direction", ("st", "ts"))
        if direction == "ts" and self.flow_ts is None:
            raise ValueError(
                "This output has no target->source flow: it was computed with reverse=False; "
                "call forward_features(..., reverse=True) for both directions."
            )
        flow, grid_src, grid_trg = (
            (self.flow_st, self.grid_src, self.grid_trg)
            if direction == "st"
            else (self.flow_ts, self.grid_trg, self.grid_src)
        )
        step = flow.new_tensor(grid_trg.step).view(1, 2, 1, 1)
        # a flow in target cells: pixel displacement = target position - source position
        h, w = flow.shape[-2:]
        cells = torch.stack(
            torch.meshgrid(
                torch.arange(w, dtype=flow.dtype, device=flow.device),
                torch.arange(h, dtype=flow.dtype, device=flow.device),
                indexing="xy",
            )
        )
        src_px = grid_src.to_pixels(cells.permute(1, 2, 0)).permute(2, 0, 1)[None]
        trg_px = flow.new_tensor(grid_trg.origin).view(1, 2, 1, 1) + step * (cells[None] + flow)
        out = trg_px - src_px
        if size is None:
            return out
        return F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)


def mask_to_grid(
    mask: torch.Tensor, size: tuple[int, int], threshold: float | None = 0.1
) -> torch.Tensor:
    """Foreground masks ``(B, H, W)`` or ``(B, 1, H, W)`` -> ``(B, 1, h, w)`` on the correlation
    grid.

    Area-averaged to ``size`` (the fraction of foreground in each cell), then binarised at
    ``threshold`` (SFNet uses 0.1: a cell with any real share of the object counts);
    ``threshold=None`` keeps the fractions.
    """
    if mask.dim() == 3:
        mask = mask[:, None]
    check_shape(mask, ("B", 1, "H", "W"), "mask")
    frac = F.adaptive_avg_pool2d(mask.float(), tuple(size))
    return frac if threshold is None else (frac > threshold).to(frac.dtype)


def flow_cells_to_normalized(flow: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """A flow ``(B, 2, h, w)`` in cells of a grid of ``grid_size = (h', w')`` -> ``[-1, 1]`` units.

    One cell is ``2 / w'`` (x) and ``2 / h'`` (y) normalised units (``align_corners=False``).
    """
    check_shape(flow, ("B", 2, "h", "w"), "flow")
    h, w = grid_size
    return flow * flow.new_tensor([2.0 / w, 2.0 / h]).view(1, 2, 1, 1)


class SFNet(nn.Module):
    """SFNet on a frozen :class:`~corrlib.models.backbones.Backbone` with two (or more) taps.

    Args:
        trunk: the backbone; its parameters are frozen and it stays in ``eval()`` mode.
        kernels: adaptation convolution size per tap (paper: 5 for conv4-23, 3 for conv5-3).
        blocks: residual :class:`AdaptationBlock` s per tap (paper: 2; 0 = no adaptation).
        grid_stride: stride of the correlation grid in pixels (default: the finest tap's).
        sigma, beta: kernel soft argmax window (cells) and softmax temperature.
        argmax: one of :data:`ARGMAX_MODES` (``"hard"`` has no gradient: inference only).
        image_size: the ``(H, W)`` the model is trained at (recorded; the inference size its
            method uses by default), or None.
        variant: a label recorded with the model (the chapter-06 ablation row), or None.

    :attr:`config` holds every argument but the trunk (what :func:`export_sfnet` saves).
    """

    def __init__(
        self,
        trunk: Backbone,
        *,
        kernels: Sequence[int] = (5, 3),
        blocks: int = 2,
        grid_stride: int | None = None,
        sigma: float = 5.0,
        beta: float = 0.02,
        argmax: str = "kernel",
        image_size: tuple[int, int] | None = None,
        variant: str | None = None,
    ):
        super().__init__()
        if not isinstance(trunk, Backbone) or trunk.concat:
            raise TypeError(
                "Argument trunk must be a corrlib Backbone built with concat=False (SFNet "
                "correlates each tap)."
            )
        check_choice(argmax, "argmax", ARGMAX_MODES)
        if len(kernels) != len(trunk.taps):
            raise ValueError(
                f"Argument kernels needs one size per tap {trunk.taps}, got {tuple(kernels)}."
            )
        if sigma <= 0 or beta <= 0 or blocks < 0:
            raise ValueError(
                f"Arguments sigma > 0, beta > 0 and blocks >= 0 are required, got {sigma}, {beta}, "
                f"{blocks}."
            )
        self.trunk = trunk.requires_grad_(False).eval()
        self.taps = tuple(trunk.taps)
        self.grid_stride = int(grid_stride or min(trunk.strides.values()))
        self.adapt = nn.ModuleDict(
            {
                t: nn.Sequential(*[AdaptationBlock(trunk.channels[t], k) for _ in range(blocks)])
                for t, k in zip(self.taps, kernels)
            }
        )
        self.sigma, self.beta, self.argmax = float(sigma), float(beta), argmax
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.variant = variant
        self.config = {
            "kernels": tuple(int(k) for k in kernels),
            "blocks": int(blocks),
            "grid_stride": self.grid_stride,
            "sigma": self.sigma,
            "beta": self.beta,
            "argmax": argmax,
            "image_size": self.image_size,
            "variant": variant,
        }

    @classmethod
    def from_checkpoint(cls, path, device="cpu") -> SFNet:
        """Rebuild a model saved by :func:`export_sfnet` (eval mode); see :func:`load_sfnet`."""
        return load_sfnet(path, device)

    def train(self, mode: bool = True) -> SFNet:
        super().train(mode)
        self.trunk.eval()  # frozen: batch norm statistics never move
        return self

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Cells ``(h, w)`` of the correlation grid for an ``(H, W)`` image.

        Both sides must be multiples of the grid stride and of the coarsest tap's stride (else
        that tap's map, upsampled to the grid, would be misaligned with the finer one).
        """
        h, w = image_size
        s = self.grid_stride
        m = max(s, *self.trunk.strides.values())
        if h % m or w % m:
            raise ValueError(
                f"Image size {tuple(image_size)} must be a multiple of {m} (the grid stride {s} "
                f"and the coarsest tap stride of {self.trunk.arch}); resize the images, e.g. to "
                f"{(max(m, round(h / m) * m), max(m, round(w / m) * m))}."
            )
        return h // s, w // s

    def trunk_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone features ``{tap: (B, C, h_tap, w_tap)}``; taps finer than the grid pooled to it.

        The trunk is frozen (SFNet's setting): no graph is built, and the features can be cached
        to train many steps on fixed images. After ``model.trunk.requires_grad_(True)`` (a
        fine-tuning experiment, not the paper) gradients flow into the trunk too.
        """
        size = self.grid_size(tuple(images.shape[-2:]))
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trunk.trainable):
            feats = self.trunk(images)
        return {
            t: F.adaptive_avg_pool2d(f, size) if f.shape[-1] > size[1] else f
            for t, f in feats.items()
        }

    def adapted(self, feats: dict[str, torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
        """Adaptation layers, then every tap at the grid ``size`` and L2-normalised:
        ``[(B, C_t, h, w)]``."""
        out = []
        for t in self.taps:
            f = self.adapt[t](feats[t])
            if tuple(f.shape[-2:]) != tuple(size):
                f = F.interpolate(f, size=tuple(size), mode="bilinear", align_corners=False)
            out.append(l2_normalize(f))
        return out

    @staticmethod
    def correlate(fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
        """Product over levels of ``ReLU(cosine)``: ``(B, ha*wa, hb, wb)`` (not yet normalised)."""
        corr = None
        for a, b in zip(fa, fb):
            c = F.relu(dense_correlation(a, b, normalize=False))
            corr = c if corr is None else corr * c
        return corr

    def match(self, corr: torch.Tensor, argmax: str | None = None) -> torch.Tensor:
        """Score maps ``(B, S, h, w)`` -> matches ``(B, S, 2)`` (cells) by ``argmax`` (default:
        the model's)."""
        mode = argmax or self.argmax
        check_choice(mode, "argmax", ARGMAX_MODES)
        if mode == "kernel":
            return kernel_soft_argmax(corr, self.sigma, self.beta)
        if mode == "soft":
            return soft_argmax(corr, self.beta)
        return hard_argmax(corr)

    def forward_features(
        self,
        feats_src: dict[str, torch.Tensor],
        feats_trg: dict[str, torch.Tensor],
        image_size: tuple[int, int],
        argmax: str | None = None,
        max_bytes: int | None = None,
        reverse: bool = True,
    ) -> SFNetOutput:
        """:meth:`forward` from cached :meth:`trunk_features` of images of ``image_size`` (both).

        ``reverse=False``: the source->target flow only (inference that reads nothing else: half
        the argmax work, and half the chunked path's correlation blocks); ``flow_ts`` and
        ``corr_ts`` are None then. Training needs both (the losses are bidirectional).

        ``max_bytes``: one pair at a time, each direction's flow in blocks of source cells whose
        scores ``(1, rows, h*w)`` stay within ``max_bytes`` per tap (the peak is a few such
        blocks: both taps', their product, the soft argmax's temporaries; see
        :meth:`chunked_matches`), so
        the full ``(B, h*w, h, w)`` correlation is never held: the output's ``corr_st``/``corr_ts``
        are None. The flows equal the full path's up to float rounding (each block is its own
        matrix product). Meant for inference (no grad); under autograd every block's graph is
        kept, and batch norm in training mode would see one pair at a time.
        """
        size = self.grid_size(image_size)
        h, w = size
        first = next(iter(feats_src.values()))
        b, dtype, device = first.shape[0], first.dtype, first.device
        cells = torch.stack(
            torch.meshgrid(
                torch.arange(w, dtype=dtype, device=device),
                torch.arange(h, dtype=dtype, device=device),
                indexing="xy",
            )
        )
        grid = FeatureGrid.for_map(size, tuple(image_size))
        if max_bytes is not None:  # one pair at a time, blocks of source cells
            flows_st, flows_ts = [], []
            for i in range(b):
                fs = self.adapted({t: f[i : i + 1] for t, f in feats_src.items()}, size)
                ft = self.adapted({t: f[i : i + 1] for t, f in feats_trg.items()}, size)
                flows_st.append(self.chunked_matches(fs, ft, argmax, max_bytes))
                if reverse:
                    flows_ts.append(self.chunked_matches(ft, fs, argmax, max_bytes))
            flow_st = torch.cat(flows_st).transpose(1, 2).reshape(b, 2, h, w) - cells
            flow_ts = (
                torch.cat(flows_ts).transpose(1, 2).reshape(b, 2, h, w) - cells if reverse else None
            )
            return SFNetOutput(None, None, flow_st, flow_ts, grid, grid)
        fs, ft = self.adapted(feats_src, size), self.adapted(feats_trg, size)
        raw = self.correlate(fs, ft)  # (B, hs*ws, ht, wt)
        corr_st = raw / (raw.flatten(2).norm(dim=-1)[..., None, None] + 1e-6)
        flow_st = self.match(corr_st, argmax).transpose(1, 2).reshape(b, 2, h, w) - cells
        if not reverse:
            return SFNetOutput(corr_st, None, flow_st, None, grid, grid)
        raw_ts = raw.reshape(b, h * w, h * w).transpose(1, 2).reshape(b, h * w, h, w)
        corr_ts = raw_ts / (raw_ts.flatten(2).norm(dim=-1)[..., None, None] + 1e-6)
        flow_ts = self.match(corr_ts, argmax).transpose(1, 2).reshape(b, 2, h, w) - cells
        return SFNetOutput(corr_st, corr_ts, flow_st, flow_ts, grid, grid)

    def chunked_matches(
        self,
        fa: list[torch.Tensor],
        fb: list[torch.Tensor],
        argmax: str | None = None,
        max_bytes: int = 64 * 2**20,
    ) -> torch.Tensor:
        """Matches ``(B, h*w, 2)`` (cells, x then y) of every cell of ``fa`` in ``fb``, by blocks.

        ``fa``, ``fb``: :meth:`adapted` features, one ``(B, C_t, h, w)`` per tap. For each block
        of source cells (row-major), the product over taps of ``ReLU(cosine)`` scores
        ``(B, rows, h*w)`` (at most ``max_bytes``, from
        :func:`corrlib.correlation.iter_correlation_chunks`), each row L2-normalised, then the
        model's argmax: the rows of :meth:`forward_features`' full path, a few blocks alive at a
        time instead of the whole ``(B, h*w, h, w)`` correlation and its temporaries.
        """
        h, w = fb[0].shape[-2:]
        blocks = zip(
            *(iter_correlation_chunks(a, c, max_bytes, normalize=False) for a, c in zip(fa, fb))
        )
        out = []
        for parts in blocks:
            raw = None
            for _, block in parts:
                c = F.relu(block)
                raw = c if raw is None else raw * c
            raw = raw / (raw.norm(dim=-1, keepdim=True) + 1e-6)
            out.append(self.match(raw.reshape(raw.shape[0], raw.shape[1], h, w), argmax))
        return torch.cat(out, 1)

    def forward(
        self,
        src: torch.Tensor,
        trg: torch.Tensor,
        argmax: str | None = None,
        max_bytes: int | None = None,
        reverse: bool = True,
    ) -> SFNetOutput:
        """Dense flows both ways between ``src`` and ``trg`` ``(B, 3, H, W)`` (same size, multiple
        of the grid stride); ``max_bytes``: the chunked path of :meth:`forward_features`;
        ``reverse=False``: the source->target flow only (see :meth:`forward_features`)."""
        b = check_shape(src, ("B", 3, "H", "W"), "src")["B"]
        check_shape(trg, (b, 3, src.shape[2], src.shape[3]), "trg")
        size = tuple(src.shape[-2:])
        both = self.trunk_features(torch.cat((src, trg)))
        fa = {t: f[:b] for t, f in both.items()}
        fb = {t: f[b:] for t, f in both.items()}
        return self.forward_features(fa, fb, size, argmax, max_bytes, reverse)


@full_precision
def sfnet_loss(
    out: SFNetOutput,
    mask_src: torch.Tensor,
    mask_trg: torch.Tensor,
    weights: dict[str, float] | None = None,
    mask_threshold: float | None = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SFNet's objective ``w_mask L_mask + w_flow L_flow + w_smooth L_smooth`` and its terms.

    ``mask_src``/``mask_trg``: foreground ``(B, H, W)`` (image resolution; moved to the grid by
    :func:`mask_to_grid`). Flows enter the losses in normalised ``[-1, 1]`` units, the units
    the paper's weights (:data:`LOSS_WEIGHTS`, the default) were set for. A weight of 0 drops
    its term (the ablation). Returns ``(loss, {"mask": ..., "flow": ..., "smooth": ...})``
    (unweighted values, floats).
    """
    if out.flow_ts is None:
        raise ValueError(
            "sfnet_loss needs both flows (its mask and flow terms are bidirectional), but this "
            "output has no target->source flow: compute it with reverse=True (the default)."
        )
    w = dict(LOSS_WEIGHTS if weights is None else weights)
    for k in w:
        check_choice(k, "weights", tuple(LOSS_WEIGHTS))
    size = tuple(out.flow_st.shape[-2:])
    ms, mt = (
        mask_to_grid(mask_src, size, mask_threshold),
        mask_to_grid(mask_trg, size, mask_threshold),
    )
    f_st = flow_cells_to_normalized(out.flow_st, size)
    f_ts = flow_cells_to_normalized(out.flow_ts, size)
    unit = (2.0 / size[1], 2.0 / size[0])  # one cell in normalised units (x, y)
    terms = {
        "mask": mask_consistency_loss(out.flow_st, out.flow_ts, ms, mt),
        "flow": flow_consistency_loss(out.flow_st, out.flow_ts, ms, mt, scale=unit),
        "smooth": flow_smoothness_loss(f_st, ms) + flow_smoothness_loss(f_ts, mt),
    }
    loss = sum(w.get(k, 0.0) * v for k, v in terms.items())
    return loss, {k: float(v.detach()) for k, v in terms.items()}


def sfnet(
    *,
    arch: str = "resnet101",
    trunk_weights: str = "auto",
    taps: Sequence[str] | None = None,
    kernels: Sequence[int] | None = None,
    weights=None,
    **kwargs,
) -> SFNet:
    """Build an :class:`SFNet` on :func:`corrlib.models.backbones.backbone`
    ``(arch, trunk_weights)``.

    Args:
        arch: the backbone architecture (:data:`corrlib.models.backbones.BACKBONES`).
        trunk_weights: the backbone's weights (:data:`corrlib.models.backbones.WEIGHTS`). With
            ``"auto"`` and no ImageNet file the backbone falls back (loudly) to the offline
            network; SFNet then uses its :data:`OFFLINE_TAPS` (strides 4 and 8) and a grid of
            stride :data:`OFFLINE_GRID_STRIDE`.
        taps: default ``layer3, layer4`` (ResNets) or :data:`OFFLINE_TAPS`.
        kernels: adaptation kernel per tap; default the paper's ``(5, 3)``.
        weights: a trained SFNet file (:func:`export_sfnet`): the model is rebuilt from the
            file's own settings (no other argument may be given), loaded strict, eval mode.
        kwargs: go to :class:`SFNet`.

    Returns:
        The model (train mode, trunk frozen) or, with ``weights``, the trained model in eval mode.
    """
    if weights is not None:
        given = {k: v for k, v in kwargs.items()} | {
            k: v for k, v in (("taps", taps), ("kernels", kernels)) if v is not None
        }
        if given or arch != "resnet101" or trunk_weights != "auto":
            raise ValueError(
                "Give weights= (a trained SFNet file) or model settings, not both (got "
                f"{sorted(given)})."
            )
        return load_sfnet(weights)
    default_taps = OFFLINE_TAPS if arch == "offline" else ("layer3", "layer4")
    trunk = backbone(arch, taps=tuple(taps or default_taps), weights=trunk_weights)
    if trunk.arch != arch:  # the offline fallback happened: use its two taps
        trunk = backbone("offline", taps=OFFLINE_TAPS, weights="offline")
        trunk.weights_source = f"{trunk.weights_source} (fallback for {arch})"
    if trunk.arch == "offline":
        kwargs.setdefault("grid_stride", OFFLINE_GRID_STRIDE)
    n = len(trunk.taps)
    return SFNet(trunk, kernels=tuple(kernels or (5, 3)[:n] + (3,) * max(0, n - 2)), **kwargs)


#: ``format`` tag of files written by :func:`export_sfnet`.
SFNET_FORMAT = "corrlib.sfnet/2"


def _trunk_weights_of(trunk: Backbone) -> str | None:
    """The ``trunk_weights`` that rebuild ``trunk`` exactly, or None (its weights must be saved)."""
    if trunk.trainable or trunk.weights_source.startswith("random"):
        return None
    return "offline" if trunk.arch == "offline" else "imagenet"


def export_sfnet(path, model: SFNet, metrics: dict | None = None) -> Path:
    """Save a trained SFNet: its adaptation layers and every setting that rebuilds it.

    A frozen ImageNet or offline trunk is not saved (rebuilt from its source, and the file
    refuses to load onto another one); a random or fine-tuned trunk is saved with the model.

    Args:
        path: the file to write (atomically).
        model: the :class:`SFNet`.
        metrics: numbers recorded beside the weights.

    Returns:
        The path written.
    """
    if not isinstance(model, SFNet):
        raise TypeError(f"Argument model must be an SFNet, got {type(model).__name__}.")
    config = {**model.config, "kernels": list(model.config["kernels"])}
    if config["image_size"] is not None:
        config["image_size"] = list(config["image_size"])
    rebuild = _trunk_weights_of(model.trunk)
    state = {
        "format": SFNET_FORMAT,
        "trunk_arch": model.trunk.arch,
        "trunk_taps": list(model.taps),
        "trunk_weights": rebuild or "none",
        "trunk_source": model.trunk.weights_source,
        "config": config,
        "adapt": model.adapt.state_dict(),
        "metrics": finite_metrics(metrics),
    }
    if rebuild is None:
        state["trunk"] = model.trunk.state_dict()
    return save_checkpoint(path, state)


def load_sfnet(path, device="cpu") -> SFNet:
    """Rebuild an SFNet saved by :func:`export_sfnet` on ``device``, in eval mode."""
    state = read_model_file(path, SFNET_FORMAT, "an exported SFNet")
    c = dict(state["config"])
    trunk = backbone(
        state["trunk_arch"], taps=tuple(state["trunk_taps"]), weights=state["trunk_weights"]
    )
    if trunk.arch != state["trunk_arch"] or (
        state["trunk_weights"] == "imagenet" and not trunk.weights_source.startswith("imagenet")
    ):
        raise ValueError(
            f"{path} was trained on a {state['trunk_arch']} trunk ({state['trunk_source']}) but "
            f"this machine built {trunk.arch} ({trunk.weights_source}); place the same backbone "
            "weights (see corrlib.models.backbones) or retrain."
        )
    if "trunk" in state:
        load_state_strict(trunk, state["trunk"], path, "trunk")
    image_size = None if c.get("image_size") is None else tuple(c["image_size"])
    try:
        model = SFNet(
            trunk,
            kernels=tuple(c["kernels"]),
            blocks=c["blocks"],
            grid_stride=c["grid_stride"],
            sigma=c["sigma"],
            beta=c["beta"],
            argmax=c["argmax"],
            image_size=image_size,
            variant=c.get("variant"),
        )
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: its settings {c!r} do not build an SFNet ({e}).") from e
    load_state_strict(model.adapt, state["adapt"], path, "adaptation")
    return model.to(device).eval()
