"""Baselines: no motion, hand-crafted descriptors and CNN backbone features, matched by nearest
neighbour."""

from __future__ import annotations

import torch

from corrlib._check import check_choice, check_int, check_shape
from corrlib.geometry import pixel_grid
from corrlib.matching import MATCHERS, FeatureGrid
from corrlib.methods.base import (
    CorrespondenceMethod,
    DescriptorMethod,
    network_input,
    register_method,
    resolution_tag,
    scale_points,
)
from corrlib.models import backbones, handcrafted

__all__ = ["BackboneMethod", "HandcraftedMethod", "IdentityMethod"]


class IdentityMethod(CorrespondenceMethod):
    """The no-motion baseline: each source point maps to the same relative position in the target.

    ``x_t = (x_s + 0.5) * W_t / W_s - 0.5`` (and likewise for y). PF-WILLOW objects are roughly
    centred and of similar size, so this is a strong floor every matcher must beat.
    """

    name = "identity"
    description = "source keypoints rescaled by the image-size ratio"

    def match(self, src_img, trg_img, src_kps, *, src_key=None, trg_key=None):
        check_shape(src_kps, ("N", 2), "src_kps")
        return scale_points(src_kps.float(), src_img.shape[-2:], trg_img.shape[-2:])

    def flow(self, src_img, trg_img, *, src_key=None, trg_key=None):
        h, w = src_img.shape[-2:]
        base = pixel_grid((h, w))
        return (scale_points(base, (h, w), trg_img.shape[-2:]) - base).permute(2, 0, 1)


class HandcraftedMethod(DescriptorMethod):
    """Nearest-neighbour matching of a hand-crafted dense descriptor (no regulariser).

    Descriptors are computed once per image (cached by file name, ``cache_size`` images), after
    resizing the image so its longer side is ``max_side`` (None: original resolution).
    """

    def __init__(
        self,
        descriptor: str,
        max_side: int | None = None,
        matcher: str = "argmax_subpixel",
        cache_size: int = 128,
        **kwargs,
    ):
        check_choice(descriptor, "descriptor", handcrafted.DESCRIPTORS)
        if max_side is not None:
            check_int(max_side, "max_side", 1)
        super().__init__(matcher, cache_size)
        self.descriptor = descriptor
        self.name = f"{descriptor}@{resolution_tag(max_side)}"
        size = "original resolution" if max_side is None else f"longer side {max_side} px"
        self.description = (
            f"dense {descriptor} descriptors at {size}, nearest neighbour ({matcher})"
        )
        self.max_side, self.kwargs = max_side, kwargs

    def _describe_image(self, img: torch.Tensor):
        return handcrafted.describe(img, self.descriptor, max_side=self.max_side, **self.kwargs)


class BackboneMethod(DescriptorMethod):
    """Nearest-neighbour matching of CNN backbone features (:mod:`corrlib.models.backbones`).

    Each image is resized (bilinear, antialiased) so its longer side is ``max_side`` and each side
    is a multiple of the tap's stride (one cell is then exactly ``stride`` resized pixels); the
    tap's map is placed in the image with :meth:`FeatureGrid.for_map` composed with the resize
    (:meth:`FeatureGrid.in_original`), so keypoints stay in original pixels. Source descriptors
    are sampled bilinearly at the keypoints and matched by cosine over the whole target map
    (``matcher``, one of :data:`corrlib.matching.MATCHERS`). Features are cached per image
    (``cache_size`` images), like :class:`HandcraftedMethod`.

    ``arch`` and ``weights`` go to :func:`corrlib.models.backbones.backbone`; ``tap=None`` uses
    the architecture's first default tap (``layer3``, ``conv4_3``, ``block3``), ``concat=True``
    the hypercolumn of the default taps. Without ImageNet weights, ``weights="auto"`` falls
    back (loudly) to the offline backbone: :attr:`name` then says ``backbone-offline`` and
    :attr:`weights_source` says why. ``model`` evaluates a ready :class:`Backbone` instead.
    """

    def __init__(
        self,
        arch: str = "resnet101",
        *,
        tap: str | None = None,
        weights: str = "auto",
        concat: bool = False,
        max_side: int | None = 320,
        matcher: str = "argmax_subpixel",
        cache_size: int = 128,
        device: str = "cpu",
        model=None,
    ):
        check_choice(matcher, "matcher", MATCHERS)
        if model is None:
            check_choice(arch, "arch", backbones.BACKBONES)
            taps = None if concat else (tap or backbones.DEFAULT_TAPS[arch][0],)
            model = backbones.backbone(arch, taps=taps, weights=weights, concat=concat)
        if not isinstance(model, backbones.Backbone):
            raise TypeError(
                "Argument model must be a corrlib.models.backbones.Backbone, got "
                f"{type(model).__name__}."
            )
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.tap = None if model.concat else (tap if tap in model.taps else model.taps[0])
        self.stride = model.out_stride if model.concat else model.strides[self.tap]
        self.weights_source = model.weights_source
        self.name = f"backbone-{model.arch}@{resolution_tag(max_side)}"
        what = "+".join(model.taps) if model.concat else self.tap
        self.description = (
            f"{model.arch} {what} features ({model.weights_source}), nearest neighbour ({matcher})"
        )
        if max_side is not None and (
            isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < self.stride
        ):
            raise ValueError(
                f"Argument max_side must be None or an int >= the stride {self.stride}, got "
                f"{max_side!r}."
            )
        DescriptorMethod.__init__(self, matcher, cache_size)
        self.max_side = max_side
        self.kwargs = {}

    @torch.no_grad()
    def _describe_image(self, img: torch.Tensor):
        h, w = img.shape[-2:]
        rgb = network_input(img, max_side=self.max_side, stride=self.stride)
        size = tuple(rgb.shape[-2:])
        out = self.model(rgb[None].to(self.device))
        feat = (out if self.model.concat else out[self.tap])[0].float().cpu()  # (C, h', w')
        grid = FeatureGrid.for_map(tuple(feat.shape[-2:]), size).in_original(
            (size[1] / w, size[0] / h)
        )
        return feat, grid


def _no_checkpoint(name: str, kwargs: dict) -> dict:
    """``kwargs``, or a ``ValueError`` if it passes a checkpoint to method ``name`` (untrained)."""
    if kwargs.get("checkpoint") is not None:
        raise ValueError(
            f"Method '{name}' takes no checkpoint (it has no trained weights), got "
            f"{str(kwargs['checkpoint'])!r}; drop --checkpoint (checkpoint=...). The learned "
            "methods mccnn-fast, deepdesc, ucn and sfnet load one."
        )
    kwargs.pop("checkpoint", None)
    return kwargs


@register_method("identity")
def _identity(**kwargs) -> IdentityMethod:
    _no_checkpoint("identity", kwargs)  # other keywords (e.g. max_side) do not apply: ignored
    return IdentityMethod()


for _name in handcrafted.DESCRIPTORS:
    register_method(_name, lambda _n=_name, **kw: HandcraftedMethod(_n, **_no_checkpoint(_n, kw)))
for _name in backbones.BACKBONES:
    register_method(
        f"backbone-{_name}",
        lambda _a=_name, **kw: BackboneMethod(_a, **_no_checkpoint(f"backbone-{_a}", kw)),
    )
