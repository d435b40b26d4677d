"""Chapter 07's multi-scale features (nearest neighbour) and their flow + foreground head."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corrlib._check import check_int, check_shape
from corrlib.geometry import transfer_kps_with_flow
from corrlib.methods.base import (
    FROM_CHECKPOINT,
    CorrespondenceMethod,
    DescriptorMethod,
    FeatureCache,
    flow_to_original,
    network_input,
    refuse_max_side,
    register_method,
    require_checkpoint,
    resolution_tag,
    scale_points,
    setting_from_checkpoint,
)
from corrlib.models.msconv import load_msconv

__all__ = ["MSConvMethod", "MSFlowMethod"]

_CHAPTER = "07_multiscale"


def _what(net) -> str:
    rates = net.config.get("rates")
    label = net.variant or f"rates {rates}"
    return f"{label} ({net.config.get('arch')}, {net.config.get('mode')} rates {rates})"


class MSConvMethod(DescriptorMethod):
    """Multi-scale convolution features (chapter 07) matched by nearest neighbour.

    ``checkpoint``: a file of :func:`corrlib.models.msconv.export_msconv`; ``model``: an
    :class:`corrlib.models.msconv.MSFeatureNet` instead. Each image is resized so its longer side
    is ``max_side`` (None: kept; default: the setting recorded in the file) and both sides are
    multiples of the stride; keypoints and flows are in original pixels. Ufer et al., arXiv
    1906.06978, 2019 (reconstructed from the abstract).
    """

    def __init__(
        self,
        checkpoint=None,
        max_side: int | str | None = FROM_CHECKPOINT,
        matcher: str = "argmax_subpixel",
        cache_size: int = 128,
        model=None,
    ):
        if max_side not in (None, FROM_CHECKPOINT):
            check_int(max_side, "max_side", 1)
        if model is None:
            model, _ = load_msconv(require_checkpoint(checkpoint, "msconv", _CHAPTER))
        max_side, setting = setting_from_checkpoint(
            max_side, "max_side", getattr(model, "eval_settings", {}), checkpoint, _CHAPTER
        )
        if max_side is not None:
            check_int(max_side, "max_side", model.stride)
        self.model = model.eval()
        self.name = f"msconv@{resolution_tag(max_side)}"
        source = checkpoint if checkpoint is not None else "an in-memory model"
        self.description = (
            f"multi-scale conv features {_what(model)} from {source}, {setting}, nearest "
            f"neighbour ({matcher})"
        )
        DescriptorMethod.__init__(self, matcher, cache_size)
        self.max_side, self.stride = max_side, model.stride
        self.kwargs = {}

    @torch.no_grad()
    def _describe_image(self, img: torch.Tensor):
        from corrlib.matching import FeatureGrid

        h, w = img.shape[-2:]
        x = network_input(img, max_side=self.max_side, stride=self.stride)
        p = next(self.model.parameters())
        feat = self.model(x[None].to(p.device))[0].float().cpu()
        size = tuple(x.shape[-2:])
        grid = FeatureGrid.for_map(tuple(feat.shape[-2:]), size)
        return feat, grid.in_original((size[1] / w, size[0] / h))


class MSFlowMethod(CorrespondenceMethod):
    """The flow head of chapter 07 (or its parametric control) on multi-scale features.

    Both images are resized (bilinear, antialiased, aspect ratio not kept) to ``image_size``
    (default: the size recorded in the file, the training size; 128 for a file without one); the
    CLI's ``--max-side`` is refused (the head runs at its trained size); the head's flow in cells is
    converted to pixels (``cell = (pixel - (s - 1) / 2) / s``), upsampled to the resized source
    and mapped back to original pixels. :meth:`foreground` gives the head's foreground
    probability on the original source grid (the flow head only). ``checkpoint``: a file of
    :func:`corrlib.models.msconv.export_msconv` with a head; or ``model=(net, head)``.
    """

    def __init__(
        self,
        checkpoint=None,
        image_size=None,
        cache_size: int = 128,
        model=None,
        max_side: int | None = None,
    ):
        refuse_max_side(max_side, "msconv-flow")
        if model is None:
            model = load_msconv(require_checkpoint(checkpoint, "msconv-flow", _CHAPTER))
        net, head = model
        if head is None:
            raise ValueError(
                f"{checkpoint or 'The model'} holds features only, no flow head; use method "
                "'msconv' for them, or export the head with export_msconv(path, net, head)."
            )
        size = image_size or net.eval_settings.get("image_size") or 128
        size = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
        if size[0] % net.stride or size[1] % net.stride:
            raise ValueError(
                f"Argument image_size must be a multiple of the network's stride {net.stride}, "
                f"got {size}."
            )
        self.net, self.head, self.image_size = net.eval(), head.eval(), size
        self.name = f"msconv-{head.kind}@{size[0]}x{size[1]}"
        self.description = (
            f"chapter 07 {head.kind} head on {_what(net)}, images resized to {size[0]}x{size[1]}"
        )
        self.cache = FeatureCache(cache_size)

    @torch.no_grad()
    def _features(self, img, key):
        def compute():
            x = network_input(img, size=self.image_size)
            p = next(self.net.parameters())
            return self.net(x[None].to(p.device))

        return self.cache.get(key, compute)

    @torch.no_grad()
    def resized_outputs(self, src_img, trg_img, *, src_key=None, trg_key=None):
        """``(flow (2, H, W) in pixels of image_size, foreground probability (H, W) or None)``."""
        fs, ft = self._features(src_img, src_key), self._features(trg_img, trg_key)
        flow_cells, fg = self.head(fs, ft)
        s = self.net.stride
        flow = (
            F.interpolate(
                flow_cells * s, size=self.image_size, mode="bilinear", align_corners=False
            )[0]
            .float()
            .cpu()
        )
        if fg is not None:
            fg = (
                F.interpolate(
                    torch.sigmoid(fg), size=self.image_size, mode="bilinear", align_corners=False
                )[0, 0]
                .float()
                .cpu()
            )
        return flow, fg

    def match(self, src_img, trg_img, src_kps, *, src_key=None, trg_key=None):
        check_shape(src_kps, ("N", 2), "src_kps")
        flow, _ = self.resized_outputs(src_img, trg_img, src_key=src_key, trg_key=trg_key)
        kps = scale_points(src_kps.float(), src_img.shape[-2:], self.image_size)
        moved = transfer_kps_with_flow(flow[None], kps[None])[0]
        return scale_points(moved, self.image_size, trg_img.shape[-2:])

    def flow(self, src_img, trg_img, *, src_key=None, trg_key=None):
        flow, _ = self.resized_outputs(src_img, trg_img, src_key=src_key, trg_key=trg_key)
        return flow_to_original(flow, self.image_size, src_img.shape[-2:], trg_img.shape[-2:])

    def foreground(self, src_img, trg_img, *, src_key=None, trg_key=None):
        """The source's foreground probability ``(Hs, Ws)`` in ``[0, 1]`` (None: no fg head)."""
        _, fg = self.resized_outputs(src_img, trg_img, src_key=src_key, trg_key=trg_key)
        if fg is None:
            return None
        size = tuple(src_img.shape[-2:])
        return F.interpolate(fg[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


register_method("msconv", lambda **kw: MSConvMethod(**kw))
register_method("msconv-flow", lambda **kw: MSFlowMethod(**kw))
