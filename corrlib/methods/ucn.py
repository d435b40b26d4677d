"""Chapter 03's Universal Correspondence Network as a dense descriptor."""

from __future__ import annotations

import torch

from corrlib._check import check_int
from corrlib.methods.base import (
    FROM_CHECKPOINT,
    DescriptorMethod,
    network_input,
    register_method,
    require_checkpoint,
    resolution_tag,
    setting_from_checkpoint,
)
from corrlib.models.ucn import load_ucn

__all__ = ["UCNMethod"]


class UCNMethod(DescriptorMethod):
    """A Universal Correspondence Network (chapter 03) as a dense descriptor, nearest neighbour.

    ``checkpoint`` is a file written by :func:`corrlib.models.ucn.export_ucn` (notebook 03
    exports one per ablation variant); ``model`` passes a :class:`corrlib.models.ucn.UCN`
    directly instead. Each image is resized so its longer side is ``max_side`` (None: kept;
    default: the setting recorded in the checkpoint by the chapter that trained it, so the number
    matches the chapter's, else the original size) and both sides are multiples of the network's
    stride; the resize is folded into the feature
    grid, so keypoints and flows are in original pixels. Matching (keypoints: ``matcher``;
    TSS: dense nearest-neighbour flow) reuses :class:`DescriptorMethod`'s cache and flow.
    Choy et al., *Universal Correspondence Network*, NeurIPS 2016.
    """

    def __init__(
        self,
        checkpoint=None,
        max_side: int | str | None = FROM_CHECKPOINT,
        matcher: str = "argmax_subpixel",
        cache_size: int = 128,
        model=None,
    ):
        if max_side not in (None, FROM_CHECKPOINT):  # checked before any file is read
            check_int(max_side, "max_side", 1)
        if model is None:
            model = load_ucn(require_checkpoint(checkpoint, "ucn", "03_ucn"))
        max_side, setting = setting_from_checkpoint(
            max_side, "max_side", getattr(model, "eval_settings", {}), checkpoint, "03_ucn"
        )
        if max_side is not None:
            check_int(max_side, "max_side", 1)
        if max_side is not None and max_side < model.stride:
            raise ValueError(
                f"Argument max_side must be None or an int >= the network's stride "
                f"{model.stride}, got {max_side!r}."
            )
        self.model = model.eval()
        variant = model.variant
        self.name = f"ucn@{resolution_tag(max_side)}"
        source = checkpoint if checkpoint is not None else "an in-memory model"
        what = "UCN" if variant is None else f"UCN ({variant})"
        self.description = (
            f"{what} features from {source}, {setting}, nearest neighbour ({matcher})"
        )
        DescriptorMethod.__init__(self, matcher, cache_size)
        self.max_side, self.stride = max_side, model.stride
        self.kwargs = {}

    @torch.no_grad()
    def _describe_image(self, img: torch.Tensor):
        h, w = img.shape[-2:]
        x = network_input(img, max_side=self.max_side, stride=self.stride)
        size = tuple(x.shape[-2:])
        p = next(self.model.parameters(), None)
        feat, _ = self.model(x[None].to(p.device if p is not None else "cpu"))
        grid = self.model.feature_grid(size).in_original((size[1] / w, size[0] / h))
        return feat[0].float().cpu(), grid


register_method("ucn", lambda **kw: UCNMethod(**kw))
