"""Chapter 06's SFNet: dense semantic flow from a trained model."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from corrlib._check import check_choice, check_int, check_shape
from corrlib.geometry import transfer_kps_with_flow
from corrlib.methods.base import (
    CorrespondenceMethod,
    FeatureCache,
    flow_to_original,
    network_input,
    register_method,
    require_checkpoint,
    scale_points,
)
from corrlib.models.sfnet import ARGMAX_MODES, load_sfnet

__all__ = ["GEOMETRIES", "SFNetMethod"]

#: Test-time geometries of :class:`SFNetMethod` (the first is the default).
GEOMETRIES = ("corrlib", "official")


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
    ``max_bytes``: the flow is computed in blocks of source cells whose score block (one tap's)
    stays within this many bytes (:meth:`corrlib.models.sfnet.SFNet.chunked_matches`; both taps'
    blocks, their product and the soft argmax's temporaries make the peak about 6-8 times that;
    64 MiB: one block up to a ~64 x 64 grid); None holds the whole correlation (the training
    path).

    ``geometry``: ``"corrlib"`` (default; the above) or ``"official"``, the authors' test
    geometry, to use beside any comparison with SFNet's published numbers. With ``S`` =
    ``image_size`` and ``P`` = the model's grid stride (one grid cell), both images are resized
    (as above) to the content size ``S - 2P`` (288 for 320 at stride 16), zero-padded (black) by
    ``P`` on every side back to ``S``, the flow is computed on the padded grid, the outer ring
    of grid cells (the padding exactly) is dropped, and the inner grid is placed in the content
    frame and upsampled to it: its cell ``i`` is content pixel ``P * i + (P - 1) / 2``, and
    bilinear upsampling with ``align_corners=False`` puts each cell at that centre; the flow,
    in pixels, is the same in the padded and content frames (both shift by ``P``). Then, as
    above, it is mapped back to original pixels. The authors (``custom_dataset.py:112-119``,
    ``eval_pascal.py:76-84``) instead multiply the cropped grid's normalised target positions
    by ``(w/2)/(w/2-1) = w/(w-2)`` (10/9 for ``w = 20`` cells): exactly this padded-to-content
    change of coordinates in the ``align_corners=False`` convention; their final upsampling with
    ``align_corners=True`` then puts the outer inner cells at the content's border pixels, half
    a cell off from their centres (here they stay at their centres, corrlib's convention).
    The authors also evaluate target -> source (target keypoints transferred into the source);
    that is the PCK protocol's ``direction``, not this method's business.
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
        geometry: str = "corrlib",
        max_bytes: int | None = 64 * 2**20,
    ):
        check_choice(geometry, "geometry", GEOMETRIES)
        if max_bytes is not None:
            check_int(max_bytes, "max_bytes", 1)
        self.max_bytes = max_bytes
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
        if max_side is not None and max_side % model.grid_stride:
            near = max(model.grid_stride, round(max_side / model.grid_stride) * model.grid_stride)
            raise ValueError(
                f"Argument max_side (--max-side) must be a multiple of the network's grid stride "
                f"{model.grid_stride} (SFNet resizes both images to max_side x max_side), got "
                f"{max_side}; try {near}."
            )
        grid = model.grid_size(size)  # raises if not a multiple of the grid stride
        self.image_size, self.argmax, self.geometry = size, argmax, geometry
        self.pad = 0
        if geometry == "official":
            if min(grid) < 3:
                raise ValueError(
                    f"geometry='official' drops the grid's outer ring: image_size {size} gives a "
                    f"{grid[0]}x{grid[1]} grid; it needs at least 3x3 cells."
                )
            self.pad = int(model.grid_stride)
        #: The frame the flow lives in: ``image_size``, or its content (``image_size - 2P``).
        self.frame_size = (size[0] - 2 * self.pad, size[1] - 2 * self.pad)
        tags = [f"{size[0]}x{size[1]}"]
        if geometry != "corrlib":
            tags.append(f"{geometry}-geometry")
        if argmax is not None and argmax != model.argmax:
            tags.append(f"{argmax}-argmax")
        self.name = "sfnet@" + ",".join(tags)
        variant = model.variant
        what = "SFNet" if variant is None else f"SFNet ({variant})"
        where = (
            ""
            if geometry == "corrlib"
            else f" (official geometry: {self.frame_size[0]}x{self.frame_size[1]} padded by "
            f"{self.pad})"
        )
        self.description = (
            f"{what} on {model.trunk.arch} ({model.trunk.weights_source}), {size[0]}x{size[1]}"
            f"{where}, {argmax or model.argmax} argmax"
        )
        self.cache = FeatureCache(cache_size)

    @torch.no_grad()
    def _features(self, img: torch.Tensor, key=None) -> dict:
        def compute():
            x = network_input(img, size=self.frame_size)
            if self.pad:
                x = F.pad(x, (self.pad,) * 4, value=0.0)  # black, as the authors' Pad(16)
            return self.model.trunk_features(x[None].to(self.device))

        return self.cache.get(key, compute)

    @torch.no_grad()
    def resized_flow(self, src_img, trg_img, *, src_key=None, trg_key=None) -> torch.Tensor:
        """Flow ``(2, H, W)`` src->trg in pixels of the resized images, ``frame_size``.

        ``frame_size`` is ``image_size`` (``geometry="corrlib"``) or the content ``image_size -
        2P`` of the padded images (``"official"``: the grid's outer ring dropped, see the class).
        """
        out = self.model.forward_features(
            self._features(src_img, src_key),
            self._features(trg_img, trg_key),
            self.image_size,
            self.argmax,
            max_bytes=self.max_bytes,
            reverse=False,  # only the source->target flow is read
        )
        if not self.pad:
            return out.flow_pixels("st", self.image_size)[0].float().cpu()
        flow = out.flow_pixels("st")[..., 1:-1, 1:-1]  # (1, 2, h-2, w-2): the content's cells
        flow = F.interpolate(flow, size=self.frame_size, mode="bilinear", align_corners=False)
        return flow[0].float().cpu()

    def match(self, src_img, trg_img, src_kps, *, src_key=None, trg_key=None):
        check_shape(src_kps, ("N", 2), "src_kps")
        flow = self.resized_flow(src_img, trg_img, src_key=src_key, trg_key=trg_key)
        kps = scale_points(src_kps.float(), src_img.shape[-2:], self.frame_size)
        moved = transfer_kps_with_flow(flow[None], kps[None])[0]
        return scale_points(moved, self.frame_size, trg_img.shape[-2:])

    def flow(self, src_img, trg_img, *, src_key=None, trg_key=None):
        flow = self.resized_flow(src_img, trg_img, src_key=src_key, trg_key=trg_key)
        return flow_to_original(flow, self.frame_size, src_img.shape[-2:], trg_img.shape[-2:])


register_method("sfnet", lambda **kw: SFNetMethod(**kw))
