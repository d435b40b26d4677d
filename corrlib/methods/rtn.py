"""Chapter 05's Recurrent Transformer Network as a dense-flow method."""

from __future__ import annotations

import torch

from corrlib._check import check_int, check_shape
from corrlib.geometry import transfer_kps_with_flow
from corrlib.methods.base import (
    FROM_CHECKPOINT,
    CorrespondenceMethod,
    FeatureCache,
    flow_to_original,
    network_input,
    refuse_max_side,
    register_method,
    require_checkpoint,
    scale_points,
    setting_from_checkpoint,
)
from corrlib.models.rtn import RTN, load_rtn

__all__ = ["RTNMethod"]


class RTNMethod(CorrespondenceMethod):
    """A trained :class:`corrlib.models.rtn.RTN` (chapter 05): dense flow, keypoints by the flow.

    Both images are resized (bilinear, antialiased; the aspect ratio is not kept) to the model's
    ``input_size``; the recurrence runs ``iterations`` steps (default: the count recorded by the
    chapter, else the trained schedule; weights are shared by all steps, so any count works) and
    the final field's translation, upsampled to the resized source, is mapped back to original
    pixels. Keypoints move by the flow sampled at their position. The trunk's maps are cached per
    image.

    Args:
        checkpoint: a file of :func:`corrlib.models.rtn.export_rtn`.
        model: an :class:`~corrlib.models.rtn.RTN` instead of a file.
        iterations: recurrent steps at test time (``FROM_CHECKPOINT``: the recorded setting).
        cache_size: images whose trunk maps are kept.
        max_side: refused (the CLI's ``--max-side``): RTN runs at its trained input size.
    """

    def __init__(
        self,
        checkpoint=None,
        *,
        model: RTN | None = None,
        iterations=FROM_CHECKPOINT,
        cache_size: int = 128,
        max_side: int | None = None,
    ):
        refuse_max_side(max_side, "RTN")
        if iterations not in (None, FROM_CHECKPOINT):
            check_int(iterations, "iterations", 0)
        if model is None:
            model = load_rtn(require_checkpoint(checkpoint, "rtn", "05_rtn"))
        rec = getattr(model, "eval_settings", {})
        if iterations == FROM_CHECKPOINT and "iterations" not in rec:
            iterations, note = None, "iterations: the trained schedule (none recorded)"
        else:
            iterations, note = setting_from_checkpoint(
                iterations, "iterations", rec, checkpoint, "05_rtn"
            )
        self.model, self.iterations = model.eval(), iterations
        h, w = model.input_size
        steps = sum(model.schedule(iterations))
        self.name = f"rtn@{w}x{h}" + ("" if iterations is None else f",K={steps}")
        what = "RTN" if model.variant is None else f"RTN ({model.variant})"
        source = checkpoint if checkpoint is not None else "an in-memory model"
        self.description = (
            f"{what} from {source} on {model.trunk.arch} ({model.weights_source}), {w}x{h}, "
            f"{steps} steps ({note})"
        )
        self.cache = FeatureCache(cache_size)

    @torch.no_grad()
    def _features(self, img, key=None) -> dict:
        def compute():
            x = network_input(img, size=self.model.input_size)
            return self.model.features(x[None].to(self.model.device))

        return self.cache.get(key, compute) if key is not None else compute()

    @torch.no_grad()
    def resized_flow(self, src_img, trg_img, *, src_key=None, trg_key=None) -> torch.Tensor:
        """Flow ``(2, H, W)`` src->trg in pixels of the resized images (``input_size``)."""
        out = self.model(
            self._features(src_img, src_key), self._features(trg_img, trg_key), self.iterations
        )
        flow = RTN.flow_pixels(out["field"], out["stride"], self.model.input_size)
        return flow[0].float().cpu()

    def match(self, src_img, trg_img, src_kps, *, src_key=None, trg_key=None):
        check_shape(src_kps, ("N", 2), "src_kps")
        size = self.model.input_size
        flow = self.resized_flow(src_img, trg_img, src_key=src_key, trg_key=trg_key)
        kps = scale_points(src_kps.float(), src_img.shape[-2:], size)
        moved = transfer_kps_with_flow(flow[None], kps[None])[0]
        return scale_points(moved, size, trg_img.shape[-2:])

    def flow(self, src_img, trg_img, *, src_key=None, trg_key=None):
        flow = self.resized_flow(src_img, trg_img, src_key=src_key, trg_key=trg_key)
        return flow_to_original(flow, self.model.input_size, src_img.shape[-2:], trg_img.shape[-2:])


register_method("rtn", lambda **kw: RTNMethod(**kw))
