"""Correspondence methods: "an image pair in, correspondences out", and their registry.

A *method* turns an image pair into correspondences: :meth:`CorrespondenceMethod.match` moves
keypoints, :meth:`CorrespondenceMethod.flow` gives a dense flow (for TSS). Each model family
has one adapter module in :mod:`corrlib.methods` that registers its names with
:func:`register_method`; :func:`get_method` builds one by name (the CLI's ``--method``).

Convention: keypoints are pixels, 0-based, (x, y), in the *original* images; flows are
``(2, Hs, Ws)`` on the source grid in pixels, pointing into the target.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from corrlib._check import check_choice, check_image, check_shape
from corrlib.matching import MATCHERS, sample_descriptors, transfer_keypoints
from corrlib.models.handcrafted import flow_from_descriptors

__all__ = [
    "CorrespondenceMethod",
    "DescriptorMethod",
    "FeatureCache",
    "available_methods",
    "flow_to_original",
    "get_method",
    "network_input",
    "refuse_max_side",
    "register_method",
    "require_checkpoint",
    "resolution_tag",
    "scale_points",
    "setting_from_checkpoint",
]

#: The ``max_side`` default of learned methods: the value their chapter evaluated with, recorded
#: in the exported file (see :func:`setting_from_checkpoint`).
FROM_CHECKPOINT = "checkpoint"


def resolution_tag(max_side: int | None) -> str:
    """How a method's name carries its input resolution: ``"original"`` or the longer side.

    A method's number depends on the resolution it matches at (DAISY on PF-WILLOW: 0.128 at the
    original size, 0.173 at 320 px), so the name says it: ``daisy@160``, ``daisy@original``.
    """
    return "original" if max_side is None else str(max_side)


def setting_from_checkpoint(value, key: str, recorded: dict, checkpoint, chapter: str):
    """Resolve a learned method's setting and say where it came from.

    Args:
        value: the caller's value, or :data:`FROM_CHECKPOINT` for "the setting the chapter that
            trained the checkpoint evaluated with".
        key: the setting's name (``"max_side"``).
        recorded: the evaluation settings stored in the exported file (may be empty).
        checkpoint: the file (for the message), or None for an in-memory model.
        chapter: the chapter that exports such files (``"03_ucn"``).

    Returns:
        ``(value, note)``: the value used and a short note for the method's description.
    """
    if value != FROM_CHECKPOINT:
        return value, f"{key}={value} (given)"
    where = "in the checkpoint" if checkpoint is not None else "with the model"
    if key in recorded:
        return recorded[
            key
        ], f"{key}={recorded[key]} (recorded {where}: chapter {chapter}'s setting)"
    return None, f"{key}=None (original resolution: no setting recorded {where})"


class CorrespondenceMethod:
    """Interface of an evaluable method. Subclasses implement :meth:`match` and maybe :meth:`flow`.

    ``src_key``/``trg_key`` identify an image (its file name) so a method may cache per-image work.
    """

    name = "method"
    description = ""

    def match(
        self,
        src_img: torch.Tensor,
        trg_img: torch.Tensor,
        src_kps: torch.Tensor,
        *,
        src_key=None,
        trg_key=None,
    ) -> torch.Tensor:
        """``src_img (3, Hs, Ws)``, ``trg_img (3, Ht, Wt)``, ``src_kps (N, 2)`` -> ``(N, 2)`` in
        trg."""
        raise NotImplementedError

    def flow(
        self, src_img: torch.Tensor, trg_img: torch.Tensor, *, src_key=None, trg_key=None
    ) -> torch.Tensor:
        """Dense flow ``(2, Hs, Ws)`` src->trg in pixels (for TSS)."""
        raise NotImplementedError(
            f"Method '{self.name}' predicts keypoints only; it has no dense flow for TSS."
        )


_REGISTRY: dict[str, Callable[..., CorrespondenceMethod]] = {}


def register_method(name: str, factory: Callable[..., CorrespondenceMethod] | None = None):
    """Register ``factory(**kwargs) -> CorrespondenceMethod`` under ``name`` (usable as
    decorator)."""

    def deco(f):
        _REGISTRY[name] = f
        return f

    return deco(factory) if factory is not None else deco


def available_methods() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str, **kwargs) -> CorrespondenceMethod:
    """Build a registered method; unknown names list the registered ones."""
    check_choice(name, "method", available_methods())
    return _REGISTRY[name](**kwargs)


def scale_points(pts: torch.Tensor, from_size, to_size) -> torch.Tensor:
    """Map pixels between two resolutions of one image (pixel centres preserved).

    Args:
        pts: ``(..., 2)`` pixels (x, y), 0-based, in an image of ``from_size = (H0, W0)``.
        from_size, to_size: ``(H, W)`` of the two resolutions.

    Returns:
        ``(..., 2)``: ``(p + 0.5) * (W1 / W0, H1 / H0) - 0.5``.
    """
    (h0, w0), (h1, w1) = from_size, to_size
    s = pts.new_tensor([w1 / w0, h1 / h0])
    return (pts + 0.5) * s - 0.5


def network_input(
    img: torch.Tensor, *, size=None, max_side: int | None = None, stride: int = 1
) -> torch.Tensor:
    """An image resized for a network (bilinear, antialiased).

    Args:
        img: ``(3, H, W)``, uint8 or float in ``[0, 1]``.
        size: exactly ``(H', W')``; else the longer side scaled to ``max_side`` (None: kept) and
            both sides rounded to multiples of ``stride`` (at least one stride).

    Returns:
        float ``(3, H', W')`` in ``[0, 1]``.
    """
    check_image(img, "image", batched=False)
    x = img.float() / 255 if img.dtype == torch.uint8 else img.float()
    h, w = x.shape[-2:]
    if size is None:
        scale = 1.0 if max_side is None else max_side / max(h, w)
        size = (
            max(stride, round(h * scale / stride) * stride),
            max(stride, round(w * scale / stride) * stride),
        )
    if tuple(size) != (h, w):
        x = F.interpolate(
            x[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True
        )[0].clamp(0, 1)
    return x


def flow_to_original(flow: torch.Tensor, frame_size, src_size, trg_size) -> torch.Tensor:
    """A flow computed between two images resized to ``frame_size``, on the original source grid.

    Args:
        flow: ``(2, h, w)`` src->trg in pixels of the resized frame (``(h, w) = frame_size``).
        frame_size: ``(h, w)`` both images were resized to.
        src_size: the original source's ``(Hs, Ws)``.
        trg_size: the original target's ``(Ht, Wt)``.

    Returns:
        ``(2, Hs, Ws)`` src->trg in original target pixels: the target positions are upsampled
        bilinearly (``align_corners=False``) to the source grid and rescaled to the target.
    """
    from corrlib.geometry import pixel_grid

    frame_size = tuple(int(v) for v in frame_size)
    hs, ws = (int(v) for v in src_size)
    target = pixel_grid(frame_size).permute(2, 0, 1) + flow  # (2, h, w) resized-trg pixels
    target = F.interpolate(target[None], size=(hs, ws), mode="bilinear", align_corners=False)[0]
    target = scale_points(target.permute(1, 2, 0), frame_size, tuple(trg_size))
    return target.permute(2, 0, 1) - pixel_grid((hs, ws)).permute(2, 0, 1)


def refuse_max_side(max_side, model: str) -> None:
    """Raise when the CLI's ``--max-side`` is given to a method that runs at its trained input
    size (SCNet, RTN): the message says why and what to do."""
    if max_side is not None:
        raise ValueError(
            f"--max-side (max_side) does not apply to {model}: it resizes both images to the "
            "input size it was trained at (recorded in the checkpoint); drop the option."
        )


class FeatureCache:
    """A small LRU cache of per-image work (features), keyed by the image's file name.

    ``get(key, compute)`` returns the cached value of ``key`` or stores ``compute()``; a
    ``None`` key is never cached. At most ``size`` entries are kept (least recently used out).
    """

    def __init__(self, size: int = 128):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"Argument cache_size must be an int >= 0, got {size!r}.")
        self.size = size
        self._items: OrderedDict = OrderedDict()

    def get(self, key, compute: Callable):
        if key is not None and key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = compute()
        if key is not None and self.size > 0:
            self._items[key] = value
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)


def require_checkpoint(checkpoint, method: str, chapter: str) -> Path:
    """The ``checkpoint`` path of a learned method, or a ``FileNotFoundError`` that says what to
    pass.

    ``chapter`` names the notebook that exports such files (``"01_patch"``).
    """
    if checkpoint is None or not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"Method '{method}' needs a trained checkpoint: pass checkpoint=... "
            f"(CLI: --checkpoint FILE). Notebook {chapter} exports one per model to "
            f"<out_dir>/checkpoints/{chapter}/<preset>/seed<k>/<name>.pt (the series writes them "
            f"under results/<preset>/); got {checkpoint!r}."
        )
    return Path(checkpoint)


class DescriptorMethod(CorrespondenceMethod):
    """Dense descriptors matched by nearest neighbour, computed once per image.

    Subclasses implement ``_describe_image(img) -> (desc (C, h, w), FeatureGrid in original
    pixels)``; :meth:`describe` caches it by image key (``cache_size`` images), :meth:`match`
    transfers keypoints with :func:`corrlib.matching.transfer_keypoints` (``matcher``) and
    :meth:`flow` gives dense nearest-neighbour flow.
    """

    def __init__(self, matcher: str = "argmax_subpixel", cache_size: int = 128):
        self.matcher = check_choice(matcher, "matcher", MATCHERS)
        self.cache = FeatureCache(cache_size)

    def _describe_image(self, img: torch.Tensor):
        raise NotImplementedError

    def describe(self, img: torch.Tensor, key=None):
        """``(desc (C, h, w), FeatureGrid in original pixels)`` of one image, cached by ``key``."""
        return self.cache.get(key, lambda: self._describe_image(img))

    def match(self, src_img, trg_img, src_kps, *, src_key=None, trg_key=None):
        check_image(src_img, "src_img", batched=False)
        check_image(trg_img, "trg_img", batched=False)
        check_shape(src_kps, ("N", 2), "src_kps")
        ds, gs = self.describe(src_img, src_key)
        dt, gt = self.describe(trg_img, trg_key)
        pred, _ = transfer_keypoints(
            ds[None], dt[None], src_kps[None].float(), gs, gt, self.matcher
        )
        return pred[0]

    def flow(self, src_img, trg_img, *, src_key=None, trg_key=None):
        ds, gs = self.describe(src_img, src_key)
        dt, gt = self.describe(trg_img, trg_key)
        return flow_from_descriptors(ds, gs, dt, gt, tuple(src_img.shape[-2:]))

    def score_map(self, src_img, trg_img, point, *, src_key=None, trg_key=None):
        """Cosine similarity of one source point's descriptor with every target cell.

        Args:
            src_img, trg_img: ``(3, H, W)`` images.
            point: ``(2,)`` source pixel ``(x, y)``, 0-based; the descriptor is sampled
                bilinearly there, as :meth:`match` does.

        Returns:
            ``(scores (h, w) in [-1, 1], FeatureGrid)``: the grid places the target cells in the
            target image (pixels), e.g. for drawing the map over it.
        """
        check_shape(point, (2,), "point")
        ds, gs = self.describe(src_img, src_key)
        dt, gt = self.describe(trg_img, trg_key)
        cell = gs.to_cells(point.float().reshape(1, 1, 2))
        q = F.normalize(sample_descriptors(ds[None].float(), cell)[0, 0], dim=0)  # (C,)
        scores = torch.einsum("c,chw->hw", q, F.normalize(dt.float(), dim=0))
        return scores, gt
