"""Recurrent Transformer Networks: a locally-varying affine field, refined step by step.

Kim, Lin, Jeon, Min, Sohn, *Recurrent Transformer Networks for Semantic Correspondence*,
NeurIPS 2018 (arXiv 1810.12155). Each source cell ``p`` carries an affine transform
``T_p = [A_p | f_p]`` into the target. One recurrent step:

1. **re-extract** the target's features under the field: sample the target's map at the nine
   points ``p + f_p + A_p (u, v)``, ``(u, v) in {-1, 0, 1}^2`` (units: cells), tile them into a
   ``3H x 3W`` map and apply a 3 x 3 convolution of stride 3 (:func:`reextract`), so cell ``p``
   sees its affinely warped neighbourhood;
2. correlate the source's features with the re-extracted target in a ``(2r+1)^2`` window
   (the *constrained correlation*, :func:`constrained_correlation`);
3. regress a **residual** update ``T^k = T^(k-1) + G(C)`` with one network ``G`` shared by all
   steps (:class:`GeoUNet`, its last convolution zero-initialised so the first update is 0).

Two levels (coarse stride, then twice finer; the field is upsampled between them, translations
doubled) as in the authors' code (``init_RTNs.m``: 2 steps at stride 16, 3 at stride 8); the flow
is the field's translation. Conventions: fields are ``(B, 6, H, W)`` on the source's feature grid,
channels ``[a11, a12, fx, a21, a22, fy]``, ``(x, y)`` order, translations in *cells* of the current
level (pixels = cells x stride); the identity field is ``A = I, f = 0``. The losses are
:func:`weak_classification_loss` (no correspondences: the window centre must win inside the source
object's box) and :func:`translation_l1_loss` (synthetic warps with exact flow).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from corrlib._check import check_int, check_shape
from corrlib.checkpoint import (
    check_eval_settings,
    finite_metrics,
    load_state_strict,
    read_model_file,
    save_checkpoint,
)
from corrlib.correlation import l2_normalize, local_correlation
from corrlib.models.backbones import FALLBACK, TAPS, backbone

__all__ = [
    "CENTRE",
    "RTN",
    "RTN_FORMAT",
    "GeoUNet",
    "constrained_correlation",
    "export_rtn",
    "identity_field",
    "load_rtn",
    "neighbourhood_points",
    "normalise_window",
    "reextract",
    "translation_l1_loss",
    "upsample_field",
    "weak_classification_loss",
]

RTN_FORMAT = "corrlib.rtn/1"
#: The window's centre channel for radius 4 (81 channels): ``(dy + 4) * 9 + (dx + 4)`` at 0.
CENTRE = 40


def identity_field(b: int, h: int, w: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """The identity field ``(B, 6, H, W)``: ``A = I``, ``f = 0``."""
    field = torch.zeros(b, 6, h, w, device=device, dtype=dtype)
    field[:, 0] = 1.0
    field[:, 4] = 1.0
    return field


def neighbourhood_points(field: torch.Tensor) -> torch.Tensor:
    """The nine sample points ``p + f_p + A_p (u, v)`` of every cell, in cells.

    Args:
        field: ``(B, 6, H, W)``.

    Returns:
        ``(B, 9, H, W, 2)`` points ``(x, y)`` in cells of the grid; index ``k = (v + 1) * 3 +
        (u + 1)`` (row-major over the 3 x 3 neighbourhood).
    """
    _, h, w = check_shape(field, ("B", 6, "H", "W"), "field").values()
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=field.dtype, device=field.device),
        torch.arange(w, dtype=field.dtype, device=field.device),
        indexing="ij",
    )
    a11, a12, fx, a21, a22, fy = field.unbind(1)  # each (B, H, W)
    pts = []
    for v in (-1.0, 0.0, 1.0):
        for u in (-1.0, 0.0, 1.0):
            x = xs + fx + a11 * u + a12 * v
            y = ys + fy + a21 * u + a22 * v
            pts.append(torch.stack([x, y], -1))
    return torch.stack(pts, 1)


def reextract(pre: torch.Tensor, field: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Target features re-extracted under ``field``: ``conv`` (3 x 3, stride 3 on the tiled
    samples) over each cell's affinely warped neighbourhood of ``pre``, then L2-normalised.

    Samples are bilinear with zeros outside the map, so under the identity field the result is
    exactly ``conv(pre)`` with zero padding 1 (normalised).

    Args:
        pre: ``(B, C, H, W)`` the target's map before the re-extraction convolution.
        field: ``(B, 6, H, W)`` on the same grid.
        conv: a ``Conv2d(C, D, 3)`` (its stride and padding are ignored).

    Returns:
        ``(B, D, H, W)`` unit-norm features.
    """
    b, _, h, w = check_shape(pre, ("B", "C", "H", "W"), "pre").values()
    check_shape(field, (b, 6, h, w), "field")
    pts = neighbourhood_points(field)  # (B, 9, H, W, 2) cells
    grid = torch.stack(
        [(2 * pts[..., 0] + 1) / w - 1, (2 * pts[..., 1] + 1) / h - 1], -1
    )  # align_corners=False normalised coordinates of the cell centres
    # tile: sample (u, v) of cell (x, y) goes to (3 y + v + 1, 3 x + u + 1)
    grid = grid.reshape(b, 3, 3, h, w, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, 3 * h, 3 * w, 2)
    samples = F.grid_sample(pre, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return l2_normalize(F.conv2d(samples, conv.weight, conv.bias, stride=3))


def constrained_correlation(src: torch.Tensor, trg: torch.Tensor, radius: int = 4) -> torch.Tensor:
    """``C_p(u, v) = <D^s_p, D^t_{p + (u, v)}>`` for ``|u|, |v| <= radius``: raw cosines of unit
    features, ``(B, (2r+1)^2, H, W)``, channel ``(v + r)(2r + 1) + (u + r)``, 0 outside the map
    (:func:`corrlib.correlation.local_correlation`; measured faster with autograd at the lab's
    sizes than one ``unfold``, 0.05 s vs 0.15 s forward + backward at 4 x 64 x 32 x 32)."""
    return local_correlation(src, trg, radius, normalize=True)


def normalise_window(corr: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """``C / sqrt(sum_window C^2 + eps)`` (the code's ``L2norm_Layer``), the input of ``G``."""
    return corr / torch.sqrt((corr**2).sum(1, keepdim=True) + eps)


def upsample_field(field: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The field on a finer grid of ``size``: bilinear (``align_corners=False``), translations
    scaled by the grid ratio (cells shrink), ``A`` unchanged (it maps cells to cells)."""
    h0, w0 = field.shape[-2:]
    up = F.interpolate(field, size=size, mode="bilinear", align_corners=False)
    scale = up.new_tensor([1, 1, size[1] / w0, 1, 1, size[0] / h0]).view(1, 6, 1, 1)
    return up * scale


def _block(c_in: int, c_out: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class GeoUNet(nn.Module):
    """The geometric matching network ``G``: a U-Net from the normalised window correlation to a
    6-channel field update, shared by every step (the code keeps one copy of its weights).

    Encoder blocks of two convolutions (the first ``first_kernel`` wide; the code 9 x 9) with
    max pooling between them, a decoder of bilinear upsampling, skip concatenation and two
    convolutions, and a final convolution **initialised to zero**, so the first update is 0 and
    training starts from the identity field.

    Args:
        in_channels: the window size ``(2r+1)^2``.
        widths: channels per encoder level (the code 64-128-256-512 + a 512 bottleneck).
        first_kernel: the first convolution's kernel size.
    """

    def __init__(self, in_channels: int = 81, widths: tuple = (32, 64, 128), first_kernel: int = 5):
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        chans = [in_channels, *self.widths]
        self.down = nn.ModuleList(
            _block(chans[i], chans[i + 1], first_kernel if i == 0 else 3)
            for i in range(len(self.widths))
        )
        self.up = nn.ModuleList(
            _block(self.widths[i + 1] + self.widths[i], self.widths[i])
            for i in reversed(range(len(self.widths) - 1))
        )
        self.out = nn.Conv2d(self.widths[0], 6, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, corr: torch.Tensor) -> torch.Tensor:
        """``corr (B, in_channels, H, W)`` -> the update ``(B, 6, H, W)`` (any ``H``, ``W``)."""
        skips, x = [], corr
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.out(x)


class RTN(nn.Module):
    """A Recurrent Transformer Network on a frozen trunk.

    Args:
        trunk: a :func:`corrlib.models.backbones.backbone` name (``"offline"``: the offline
            trunk; the paper's best is ResNet-101, the code VGG-19).
        levels: the trunk's taps from coarse to fine, each twice finer than the previous (the
            offline trunk: ``("block3", "block2")``, strides 8 and 4).
        steps: recurrent steps per level (the code: 2 then 3).
        radius: the correlation window's radius (the code: 4, a 9 x 9 window).
        widths: :class:`GeoUNet` widths.
        affine: estimate ``A`` (False: a translation-only field, ``A = I`` throughout).
        trunk_weights: ``weights=`` of the backbone.
        input_size: ``(H, W)`` the images are resized to.
        geo_kernel: the size of ``G``'s first convolution (the code: 9).

    Per level, the re-extraction convolution (``reextractors[level]``, 3 x 3) starts as the
    identity on the centre sample (so the first features are the trunk's own) and learns to use
    the neighbourhood, which is where ``A`` acts; the source's features are the same convolution
    under the identity field, so source and target stay comparable (the code likewise derives both
    from one VGG convolution).
    """

    def __init__(
        self,
        trunk: str = "offline",
        levels: tuple = ("block3", "block2"),
        steps: tuple = (2, 3),
        radius: int = 4,
        widths: tuple = (32, 64, 128),
        affine: bool = True,
        trunk_weights: str = "auto",
        input_size: tuple = (160, 160),
        geo_kernel: int = 9,
    ):
        super().__init__()
        levels, steps = tuple(levels), tuple(int(s) for s in steps)
        if len(levels) != len(steps) or not levels:
            raise ValueError(
                f"Arguments levels and steps must have the same non-zero length, got {levels} "
                f"and {steps}."
            )
        for s in steps:
            check_int(s, "steps", 0)
        check_int(radius, "radius", 1)
        self.trunk = backbone(trunk, taps=levels, weights=trunk_weights)
        fell_back = self.trunk.arch == FALLBACK and trunk != FALLBACK and trunk in TAPS
        if not set(levels) <= set(self.trunk.strides) and fell_back:
            # "auto" fell back to the offline trunk (it warned): as many of its taps, in the
            # requested coarse-to-fine order (conv5_3, conv4_3 -> block3, block2)
            coarse_first = sorted(TAPS[FALLBACK], key=lambda t: -TAPS[FALLBACK][t][0])
            if len(levels) <= len(coarse_first) and all(t in TAPS[trunk] for t in levels):
                rank = sorted(range(len(levels)), key=lambda i: -TAPS[trunk][levels[i]][0])
                mapped = [""] * len(levels)
                for k, i in enumerate(rank):
                    mapped[i] = coarse_first[k]
                levels = tuple(mapped)
                self.trunk = backbone(FALLBACK, taps=levels, weights="offline")
        if not set(levels) <= set(self.trunk.strides):
            raise ValueError(
                f"The trunk built for {trunk!r} ({self.trunk.arch}) has no taps {levels}; name "
                "the fallback's taps (offline: block3, block2) or provide the weights."
            )
        strides = [self.trunk.strides[t] for t in levels]
        for a, b in itertools.pairwise(strides):
            if a != 2 * b:
                raise ValueError(
                    f"Each level must be twice finer than the last, got strides {strides}."
                )
        self.levels, self.steps, self.radius, self.affine = levels, steps, radius, bool(affine)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.reextractors = nn.ModuleDict()
        for t in levels:
            c = self.trunk.channels[t]
            conv = nn.Conv2d(c, c, 3, padding=1)
            with torch.no_grad():
                conv.weight.zero_()
                conv.weight[:, :, 1, 1] = torch.eye(c)
                conv.bias.zero_()
            self.reextractors[t] = conv
        self.geo = GeoUNet((2 * radius + 1) ** 2, widths, geo_kernel)
        self.config = {
            "trunk": self.trunk.arch,
            "levels": list(levels),
            "steps": list(steps),
            "radius": radius,
            "widths": list(widths),
            "affine": self.affine,
            "input_size": list(self.input_size),
            "geo_kernel": int(geo_kernel),
        }
        self.variant: str | None = None
        self.eval_settings: dict = {}

    @property
    def weights_source(self) -> str:
        return self.trunk.weights_source

    @property
    def device(self) -> torch.device:
        return self.geo.out.weight.device

    def train(self, mode: bool = True) -> RTN:
        super().train(mode)
        self.trunk.eval()
        return self

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images (B, 3, H, W)`` float in ``[0, 1]`` -> the frozen trunk's maps per level."""
        return self.trunk(images)

    def schedule(self, iterations: int | None = None) -> tuple[int, ...]:
        """Steps per level for ``iterations`` in total (None: the trained ``steps``): the coarse
        levels keep their trained counts while they last, the finest takes the rest."""
        if iterations is None:
            return self.steps
        check_int(iterations, "iterations", 0)
        out, left = [], iterations
        for i, s in enumerate(self.steps):
            take = left if i == len(self.steps) - 1 else min(left, s)
            out.append(take)
            left -= take
        return tuple(out)

    def forward(
        self, src_feats: dict, trg_feats: dict, iterations: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the recurrence.

        Args:
            src_feats: :meth:`features` of the sources.
            trg_feats: :meth:`features` of the targets.
            iterations: total steps (None: the trained schedule; 0: the identity field).

        Returns:
            ``{"field": (B, 6, h, w) the final field at the finest level, "stride": int,
            "corr": (B, (2r+1)^2, h, w) the raw cosines that fed the last update (the code's
            weak loss reads these; None with 0 steps), "fields": [every step's field]}``.
        """
        plan = self.schedule(iterations)
        field, corr, fields = None, None, []
        for level, n in zip(self.levels, plan):
            conv = self.reextractors[level]
            s_pre, t_pre = src_feats[level].float(), trg_feats[level].float()
            b, _, h, w = s_pre.shape
            if field is None:
                field = identity_field(b, h, w, device=s_pre.device, dtype=s_pre.dtype)
            else:
                field = upsample_field(field, (h, w))
            src = reextract(s_pre, identity_field(b, h, w, device=s_pre.device), conv)
            for _ in range(n):
                corr = constrained_correlation(src, reextract(t_pre, field, conv), self.radius)
                update = self.geo(normalise_window(corr))
                if not self.affine:
                    update = update * update.new_tensor([0, 0, 1, 0, 0, 1]).view(1, 6, 1, 1)
                field = field + update
                fields.append(field)
        stride = self.trunk.strides[self.levels[-1]]
        return {"field": field, "stride": stride, "corr": corr, "fields": fields}

    def final_correlation(self, src_feats: dict, trg_feats: dict, field: torch.Tensor):
        """The raw window cosines at the finest level under ``field`` (the weak loss's
        ``weak_on="final"`` option: the correlation *after* the last update)."""
        level = self.levels[-1]
        conv = self.reextractors[level]
        s_pre, t_pre = src_feats[level].float(), trg_feats[level].float()
        b, _, h, w = s_pre.shape
        src = reextract(s_pre, identity_field(b, h, w, device=s_pre.device), conv)
        return constrained_correlation(src, reextract(t_pre, field, conv), self.radius)

    def window_at_field(self, src_feats: dict, trg_feats: dict, field: torch.Tensor):
        """Raw cosines between each source cell and the target's features (re-extracted at the
        identity) sampled at ``p + f_p + (u, v)`` for the window's offsets: the window anchored
        at each cell's *own* translation (``weak_window="own"`` of chapter 05's recipe), so the
        weak loss can only lower itself by moving ``f_p`` to a local peak of similarity, not by
        scattering the neighbours' fields. ``(B, (2r+1)^2, H, W)`` at the finest level."""
        level = self.levels[-1]
        conv = self.reextractors[level]
        s_pre, t_pre = src_feats[level].float(), trg_feats[level].float()
        b, _, h, w = s_pre.shape
        ident = identity_field(b, h, w, device=s_pre.device)
        src, trg = reextract(s_pre, ident, conv), reextract(t_pre, ident, conv)
        r = self.radius
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=field.dtype, device=field.device),
            torch.arange(w, dtype=field.dtype, device=field.device),
            indexing="ij",
        )
        offs = torch.arange(-r, r + 1, dtype=field.dtype, device=field.device)
        dv, du = torch.meshgrid(offs, offs, indexing="ij")  # (k, k): channel (v + r) k + (u + r)
        x = xs + field[:, 2]  # (B, H, W)
        y = ys + field[:, 5]
        px = x[:, None] + du.reshape(1, -1, 1, 1)  # (B, K, H, W)
        py = y[:, None] + dv.reshape(1, -1, 1, 1)
        grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], -1)
        kk = grid.shape[1]
        sampled = F.grid_sample(
            trg,
            grid.reshape(b, kk * h, w, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        ).reshape(b, -1, kk, h, w)
        return (src[:, :, None] * sampled).sum(1)

    @staticmethod
    def flow_pixels(field: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
        """The field's translation as a dense flow ``(B, 2, H, W)`` in pixels of an image of
        ``size``: cells x stride, upsampled bilinearly (``align_corners=False``: cell ``j`` at
        pixel ``stride * j + (stride - 1) / 2``)."""
        flow = field[:, [2, 5]] * stride
        return F.interpolate(flow, size=tuple(size), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------- losses


def weak_classification_loss(
    corr: torch.Tensor, label_mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """RTN's weakly supervised loss: at each labelled source cell the window centre is the class.

    ``L = mean over labelled cells of -log softmax(C / temperature)[centre]``, the softmax over the
    window's ``(2r+1)^2`` raw cosines (the code: temperature 1, so a perfect cell still costs
    ``log(1 + 80 / e^2) ~ 2.47`` with radius 4). Labels: cells inside the source object's box
    (the code rasterises PF-PASCAL's box); no correspondence is used.

    Args:
        corr: ``(B, K, H, W)`` raw cosines (``K`` odd square, centre ``K // 2``).
        label_mask: ``(B, H, W)`` bool, the labelled cells.
        temperature: divides the logits.

    Returns:
        The scalar loss (0 with a gradient path when nothing is labelled).
    """
    b, k, h, w = check_shape(corr, ("B", "K", "H", "W"), "corr").values()
    check_shape(label_mask, (b, h, w), "label_mask")
    logp = F.log_softmax(corr / temperature, dim=1)[:, k // 2]  # (B, H, W)
    if not label_mask.any():
        return corr.sum() * 0.0
    return -logp[label_mask].mean()


def translation_l1_loss(
    field: torch.Tensor,
    stride: int,
    gt_flow: torch.Tensor,
    gt_valid: torch.Tensor,
    *,
    return_count: bool = False,
):
    """The synthetic stage's supervised loss: mean ``|f * stride - flow_gt|`` (both components,
    pixels) over the cells whose ground truth is valid, the ground truth sampled at the cell
    centres (the code sums instead; a mean keeps the scale independent of the grid).

    Args:
        field: ``(B, 6, h, w)``.
        stride: pixels per cell.
        gt_flow: ``(B, 2, H, W)`` exact flow in pixels on the source image.
        gt_valid: ``(B, H, W)`` bool.
        return_count: also return the number of cells averaged (for a mean over several
            processes' batches: :class:`corrlib.train.Trainer`'s ``loss_weight``).

    Returns:
        The scalar loss (pixels), or ``(loss, cells)`` with ``return_count``.
    """
    _, _, h, w = field.shape
    pred = field[:, [2, 5]] * stride
    cy = (torch.arange(h, device=field.device) * stride + (stride - 1) / 2).round().long()
    cx = (torch.arange(w, device=field.device) * stride + (stride - 1) / 2).round().long()
    cy = cy.clamp(max=gt_flow.shape[-2] - 1)
    cx = cx.clamp(max=gt_flow.shape[-1] - 1)
    gt = gt_flow[:, :, cy][:, :, :, cx]
    valid = gt_valid[:, cy][:, :, cx]
    count = int(valid.sum())
    loss = pred.sum() * 0.0 if count == 0 else (pred - gt).abs().sum(1)[valid].mean() / 2
    return (loss, count) if return_count else loss


# --------------------------------------------------------------------------------- save, load


def export_rtn(path, model: RTN, metrics: dict | None = None, eval_settings=None):
    """Save a trained :class:`RTN` (weights and the settings that rebuild it; the trunk is
    rebuilt from its name and must be available where it is loaded). Returns the path."""
    if not isinstance(model, RTN):
        raise TypeError(f"export_rtn saves an RTN, got {type(model).__name__}.")
    state = {
        "format": RTN_FORMAT,
        "config": dict(model.config),
        "variant": model.variant,
        "weights_source": model.weights_source,
        "model": {k: v for k, v in model.state_dict().items() if not k.startswith("trunk.")},
        "metrics": finite_metrics(metrics),
        "eval": check_eval_settings(
            model.eval_settings if eval_settings is None else eval_settings
        ),
    }
    return save_checkpoint(path, state)


def load_rtn(path) -> RTN:
    """Rebuild an :class:`RTN` saved by :func:`export_rtn` (its trunk from the recorded name,
    offline weights or ImageNet from the cache) and load its weights strictly, in eval mode."""
    state = read_model_file(path, RTN_FORMAT, "an exported RTN")
    cfg = dict(state["config"])
    weights = "offline" if cfg.get("trunk") == "offline" else "imagenet"
    try:
        model = RTN(
            trunk=cfg["trunk"],
            levels=tuple(cfg["levels"]),
            steps=tuple(cfg["steps"]),
            radius=cfg["radius"],
            widths=tuple(cfg["widths"]),
            affine=cfg["affine"],
            trunk_weights=weights,
            input_size=tuple(cfg["input_size"]),
            geo_kernel=cfg["geo_kernel"],
        )
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: its settings {cfg!r} do not build an RTN ({e}).") from e
    trunk = {k: v for k, v in model.state_dict().items() if k.startswith("trunk.")}
    load_state_strict(model, {**trunk, **state["model"]}, path)
    model.variant = state.get("variant")
    model.eval_settings = check_eval_settings(state.get("eval"), path)
    return model.eval()
