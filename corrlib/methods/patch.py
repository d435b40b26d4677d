"""Chapter 01's patch networks used as dense descriptors (MC-CNN fast, DeepDesc)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corrlib._check import check_choice, check_image, check_int
from corrlib.color import rgb_to_grey
from corrlib.matching import FeatureGrid
from corrlib.methods.base import (
    FROM_CHECKPOINT,
    DescriptorMethod,
    register_method,
    require_checkpoint,
    resolution_tag,
    setting_from_checkpoint,
)
from corrlib.models.handcrafted import resize_longer_side
from corrlib.models.patch import load_patch_model

__all__ = ["LearnedPatchMethod"]


class LearnedPatchMethod(DescriptorMethod):
    """A patch network from chapter 01 used as a dense descriptor (MC-CNN fast or DeepDesc).

    ``checkpoint`` is a file written by :func:`corrlib.models.patch.export_patch_model` (chapter
    01 saves one per architecture). MC-CNN fast is fully convolutional: its L2-normalised features
    at every pixel are the descriptor. DeepDesc describes ``P x P`` patches centred on a grid of
    stride ``stride`` pixels. Images are converted to grey and resized to ``max_side`` first
    (default: the setting recorded in the checkpoint by chapter 01, else the original size).
    """

    DESCRIPTOR_ARCHS = ("mccnn-fast", "deepdesc")

    def __init__(
        self,
        checkpoint=None,
        max_side: int | str | None = FROM_CHECKPOINT,
        matcher: str = "argmax_subpixel",
        stride: int = 4,
        cache_size: int = 128,
        arch: str | None = None,
    ):
        if max_side not in (None, FROM_CHECKPOINT):  # checked before any file is read
            check_int(max_side, "max_side", 1)
        checkpoint = require_checkpoint(checkpoint, arch or "mccnn-fast", "01_patch")
        self.model = load_patch_model(checkpoint)
        max_side, setting = setting_from_checkpoint(
            max_side, "max_side", getattr(self.model, "eval_settings", {}), checkpoint, "01_patch"
        )
        if max_side is not None:
            check_int(max_side, "max_side", 1)
        check_choice(self.model.arch, f"architecture of {checkpoint}", self.DESCRIPTOR_ARCHS)
        if arch is not None and arch != self.model.arch:
            raise ValueError(
                f"{checkpoint} holds a '{self.model.arch}' model, not '{arch}'; pass the matching "
                "checkpoint."
            )
        self.name = f"{self.model.arch}@{resolution_tag(max_side)}"
        self.description = (
            f"{self.model.arch} features from {checkpoint}, {setting}, nearest neighbour "
            f"({matcher})"
        )
        super().__init__(matcher, cache_size)
        self.max_side, self.stride = max_side, stride

    @torch.no_grad()
    def _describe_image(self, img: torch.Tensor):
        check_image(img, "image", batched=False)
        rgb, ratio = resize_longer_side(img, self.max_side)
        grey = rgb_to_grey(rgb)[None, None]  # (1, 1, H, W) in [0, 1]
        if hasattr(self.model, "features"):  # MC-CNN: dense, one descriptor per pixel
            feat = self.model.image_features(grey)[0]
            return feat, FeatureGrid((0.0, 0.0), (1.0, 1.0)).in_original(ratio)
        p, s = self.model.patch_size, self.stride
        padded = F.pad(grey, (p // 2,) * 4, mode="replicate")
        cols = F.unfold(padded, p, stride=s)  # (1, P*P, L)
        h = (padded.shape[-2] - p) // s + 1
        w = (padded.shape[-1] - p) // s + 1
        patches = cols[0].T.reshape(-1, 1, p, p)
        desc = torch.cat(
            [self.model.describe(patches[i : i + 1024]) for i in range(0, len(patches), 1024)]
        )
        # window j spans original pixels [j*s - p/2, j*s + p/2): centre at j*s - 0.5
        return desc.T.reshape(-1, h, w), FeatureGrid(
            (-0.5, -0.5), (float(s), float(s))
        ).in_original(ratio)


for _name in LearnedPatchMethod.DESCRIPTOR_ARCHS:
    register_method(_name, lambda _n=_name, **kw: LearnedPatchMethod(arch=_n, **kw))
