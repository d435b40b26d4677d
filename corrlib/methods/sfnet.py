"""Chapter 06's SFNet: dense semantic flow from a trained model."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from corrlib._check import check_choice, check_int, check_shape
from corrlib.geometry import pixel_grid, transfer_kps_with_flow
from corrlib.methods.base import (
    CorrespondenceMethod,
    FeatureCache,
    network_input,
    register_method,
    require_checkpoint,
    scale_points,
)
from corrlib.models.sfnet import ARGMAX_MODES, load_sfnet

__all__ = ["SFNetMethod"]


class SFNetMethod(CorrespondenceMethod):
    """SFNet (chapter 06): dense semantic flow from a trained :class:`corrlib.models.sfnet.SFNet`.

    Both images are resized (bilinear, antialiased; aspect ratio not kept, as SFNet does) to
    ``image_size`` (default: the size the model was trained at), the flow source->target is
    computed on the correlation grid with the model's argmax (or ``argmax``), upsampled to the
    resized source and mapped back to original pixels: keypoints move by the flow sampled at
    their position (bilinear), and :meth:`flow` gives the dense flow on the original source
    grid. The frozen trunk's features are cached per image (``cache_size`` images).
    ``checkpoint``: a file of :func:`corrlib.models.sfnet.export_sfnet`; ``model``: an SFNet.
    ``max_side`` (the CLI's ``--max-side``) is ``image_size=(max_side, max_side)``.
    Lee et al., *SFNet: Learning Object-aware Semantic Correspondence*, CVPR 2019.
    """

    def __init__(
        self,
        checkpoint=None,
        image_size=None,
        argmax: str | None = None,
        cache_size: int = 128,
        model=None,
        device: str = "cpu",
        max_side: int | None = None,
    ):
        if max_side is not None:
            if image_size is not None:
                raise ValueError("Give image_size or max_side, not both.")
            check_int(max_side, "max_side", 1)
            image_size = (max_side, max_side)
        if image_size is not None:
            sides = (image_size,) * 2 if isinstance(image_size, int) else tuple(image_size)
            if len(sides) != 2:
                raise ValueError(f"Argument image_size must be S or (H, W), got {image_size!r}.")
            if any(
                isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in sides
            ):
                raise ValueError(f"Argument image_size must hold ints >= 1, got {image_size!r}.")
        if model is None:
            model = load_sfnet(require_checkpoint(checkpoint, "sfnet", "06_sfnet"), device=device)
        if argmax is not None:
            check_choice(argmax, "argmax", ARGMAX_MODES)
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        size = image_size or model.image_size or (320, 320)
        size = (size, size) if isinstance(size, int) else tuple(size)
        model.grid_size(size)  # raises if not a multiple of the grid stride
        self.image_size, self.argmax = size, argmax
        self.name = "sfnet"
        variant = model.variant
        what = "SFNet" if variant is None else f"SFNet ({variant})"
        self.description = (
            f"{what} on {model.trunk.arch} ({model.trunk.weights_source}), {size[0]}x{size[1]}, "
            f"{argmax or model.argmax} argmax"
        )
        self.cache = FeatureCache(cache_size)

    @torch.no_grad()
    def _features(self, img: torch.Tensor, key=None) -> dict:
        def compute():
            x = network_input(img, size=self.image_size)
            return self.model.trunk_features(x[None].to(self.device))

        return self.cache.get(key, compute)

    @torch.no_grad()
    def resized_flow(self, src_img, trg_img, *, src_key=None, trg_key=None) -> torch.Tensor:
        """Flow ``(2, S, S)`` src->trg in pixels of the resized images (``image_size``)."""
        out = self.model.forward_features(
            self._features(src_img, src_key),
            self._features(trg_img, trg_key),
            self.image_size,
            self.argmax,
        )
        return out.flow_pixels("st", self.image_size)[0].float().cpu()

    def match(self, src_img, trg_img, src_kps, *, src_key=None, trg_key=None):
        check_shape(src_kps, ("N", 2), "src_kps")
        flow = self.resized_flow(src_img, trg_img, src_key=src_key, trg_key=trg_key)
        kps = scale_points(src_kps.float(), src_img.shape[-2:], self.image_size)
        moved = transfer_kps_with_flow(flow[None], kps[None])[0]
        return scale_points(moved, self.image_size, trg_img.shape[-2:])

    def flow(self, src_img, trg_img, *, src_key=None, trg_key=None):
        flow = self.resized_flow(src_img, trg_img, src_key=src_key, trg_key=trg_key)
        target = pixel_grid(self.image_size).permute(2, 0, 1) + flow  # (2, S, S) resized-trg pixels
        hs, ws = src_img.shape[-2:]
        target = F.interpolate(target[None], size=(hs, ws), mode="bilinear", align_corners=False)[0]
        target = scale_points(target.permute(1, 2, 0), self.image_size, trg_img.shape[-2:])
        return target.permute(2, 0, 1) - pixel_grid((hs, ws)).permute(2, 0, 1)


register_method("sfnet", lambda **kw: SFNetMethod(**kw))
