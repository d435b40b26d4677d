"""Object proposals: the candidate regions that SCNet and Proposal Flow match.

A proposal is a box ``(x0, y0, x1, y1)`` in pixels, 0-based, corners inclusive of the pixel
extent (``x1 - x0`` is the width); a set of proposals is a float tensor ``(N, 4)``. Box algebra
(IoU, area) is :mod:`torchvision.ops`.

Generators (Han et al., *SCNet*, ICCV 2017, Sec. 5 compares them; Proposal Flow, CVPR 2016):

* :func:`selective_search` (SS, Uijlings et al., IJCV 2013): OpenCV contrib's implementation
  (``pip install opencv-contrib-python-headless``, the ``proposals`` extra) in its fast or
  quality mode; without OpenCV, a stand-in from scikit-image (Felzenszwalb regions at several
  scales and the unions of adjacent regions, no hierarchical grouping), announced by a warning.
  The SCNet paper used Randomized Prim's (RP) for its main tables, which no package provides;
  it used SS itself for PASCAL Parts.
* :func:`uniform_boxes` (US, uniform sampling of position, scale and aspect: the paper's worst
  case) and :func:`sliding_boxes` (SW, a regular multi-scale grid).

The SCNet code then removes boxes that touch the image border unless they cover nearly all of it
(:func:`remove_boundary_boxes`) and, for training, keeps the *active* source proposals: mostly
inside the object and holding at least one keypoint (:func:`active_proposals`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torchvision.ops import box_area, box_iou

from corrlib._check import check_choice, check_image, check_int, check_shape

__all__ = [
    "PROPOSAL_METHODS",
    "active_proposals",
    "box_ioa",
    "box_iou",
    "boxes_containing",
    "flip_boxes",
    "make_proposals",
    "remove_boundary_boxes",
    "scale_boxes",
    "selective_search",
    "sliding_boxes",
    "uniform_boxes",
]

#: Proposal generators by name (the SCNet paper's abbreviations, lower case).
PROPOSAL_METHODS = ("ss", "us", "sw")


def _check_boxes(boxes: torch.Tensor, name: str = "boxes") -> None:
    check_shape(boxes, ("N", 4), name)


def _check_size(size, name: str = "size") -> tuple[int, int]:
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in size)
    ):
        raise ValueError(f"Argument {name} must be (H, W) with positive ints, got {size!r}.")
    return int(size[0]), int(size[1])


def _dedupe_sorted(boxes: np.ndarray) -> np.ndarray:
    """Unique integer boxes in lexicographic order: a deterministic set whatever order a
    generator returned them in (OpenCV's selective search ranks with a random number)."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4)
    return np.unique(boxes.astype(np.int64), axis=0)


def _subsample(boxes: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """At most ``n`` of ``boxes``, drawn without replacement with ``seed`` (order kept)."""
    if boxes.shape[0] <= n:
        return boxes
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(boxes.shape[0], generator=g)[:n].sort().values
    return boxes[keep]


def remove_boundary_boxes(
    boxes: torch.Tensor, size: tuple[int, int], margin: float = 0.01, cover: float = 0.9
) -> torch.Tensor:
    """Drop boxes that touch the image border, unless they cover nearly the whole image.

    As SCNet's ``remove_boundary_box``: a box touches the border when one of its sides lies
    within ``margin * W`` (or ``* H``) of the image's edge; such boxes are fragments cut by the
    frame, except a box covering at least ``cover`` of the image's width and height.

    Args:
        boxes: ``(N, 4)`` ``(x0, y0, x1, y1)`` pixels.
        size: the image's ``(H, W)``.
        margin: the border band, as a fraction of the side.
        cover: boxes at least this fraction of both sides are kept.

    Returns:
        The kept boxes, ``(M, 4)``, in their order.
    """
    _check_boxes(boxes)
    h, w = _check_size(size)
    mx, my = margin * w, margin * h
    touches = (
        (boxes[:, 0] <= mx)
        | (boxes[:, 1] <= my)
        | (boxes[:, 2] >= w - mx)
        | (boxes[:, 3] >= h - my)
    )
    whole = ((boxes[:, 2] - boxes[:, 0]) >= cover * w) & ((boxes[:, 3] - boxes[:, 1]) >= cover * h)
    return boxes[~touches | whole]


def _felzenszwalb_boxes(image: np.ndarray, min_size: int) -> np.ndarray:
    """Boxes of Felzenszwalb regions at 4 scales and of each pair of adjacent regions."""
    from skimage.segmentation import felzenszwalb

    out = []
    for k in (50, 100, 200, 400):
        labels = felzenszwalb(image, scale=k, sigma=0.8, min_size=min_size)
        n = int(labels.max()) + 1
        ys, xs = np.indices(labels.shape)
        flat = labels.ravel()
        x0 = np.full(n, np.inf)
        y0 = np.full(n, np.inf)
        x1 = np.full(n, -np.inf)
        y1 = np.full(n, -np.inf)
        np.minimum.at(x0, flat, xs.ravel())
        np.minimum.at(y0, flat, ys.ravel())
        np.maximum.at(x1, flat, xs.ravel() + 1)
        np.maximum.at(y1, flat, ys.ravel() + 1)
        region = np.stack([x0, y0, x1, y1], 1)
        out.append(region)
        pairs = np.concatenate(
            [
                np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
                np.stack([labels[:-1].ravel(), labels[1:].ravel()], 1),
            ]
        )
        pairs = np.unique(np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1), axis=0)
        a, b = region[pairs[:, 0]], region[pairs[:, 1]]
        out.append(
            np.stack(
                [
                    np.minimum(a[:, 0], b[:, 0]),
                    np.minimum(a[:, 1], b[:, 1]),
                    np.maximum(a[:, 2], b[:, 2]),
                    np.maximum(a[:, 3], b[:, 3]),
                ],
                1,
            )
        )
    return np.concatenate(out)


def selective_search(
    image: torch.Tensor,
    n: int = 1000,
    *,
    mode: str = "fast",
    min_side: int = 8,
    remove_boundary: bool = True,
    seed: int = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """Selective-search proposals of one image.

    Uijlings et al., *Selective Search for Object Recognition*, IJCV 2013, through OpenCV
    contrib (``cv2.ximgproc.segmentation``; one thread, so it runs the same everywhere). The
    boxes are deduplicated and put in a fixed order (OpenCV ranks them with random numbers), the
    border fragments removed (:func:`remove_boundary_boxes`), boxes with a side under
    ``min_side`` pixels dropped, and, when more than ``n`` remain, ``n`` drawn with ``seed``.

    Args:
        image: ``(3, H, W)`` uint8 or float in ``[0, 1]``.
        n: the most proposals returned.
        mode: ``"fast"`` (OpenCV's fast mode: about 600-900 boxes on a 300 x 200 image in
            0.3 s on one core) or ``"quality"`` (more boxes, about 4x slower).
        min_side: the smallest width and height kept, in pixels.
        remove_boundary: drop border fragments.
        seed: the draw when more than ``n`` boxes remain.
        backend: ``"opencv"``, ``"skimage"`` (the stand-in of the module docstring) or
            ``"auto"`` (OpenCV when installed, else the stand-in with a ``UserWarning``).

    Returns:
        ``(M, 4)`` float32 boxes ``(x0, y0, x1, y1)`` in pixels, ``M <= n``.

    Raises:
        ImportError: ``backend="opencv"`` without ``opencv-contrib-python(-headless)``; the
            message says what to install.
    """
    check_image(image, "image")
    check_int(n, "n", 1)
    check_choice(mode, "mode", ("fast", "quality"))
    check_choice(backend, "backend", ("auto", "opencv", "skimage"))
    arr = image.detach().cpu()
    if arr.dtype != torch.uint8:
        arr = (arr.float().clamp(0, 1) * 255).round().to(torch.uint8)
    rgb = np.ascontiguousarray(arr.permute(1, 2, 0).numpy())
    h, w = rgb.shape[:2]
    cv2 = None
    if backend in ("auto", "opencv"):
        try:
            import cv2  # type: ignore[import-not-found]

            cv2.ximgproc.segmentation  # noqa: B018 (contrib is needed, not plain OpenCV)
        except (ImportError, AttributeError) as e:
            cv2 = None
            if backend == "opencv":
                raise ImportError(
                    "selective_search(backend='opencv') needs OpenCV's contrib modules: "
                    "pip install opencv-contrib-python-headless (or pip install "
                    "'corrlib[proposals]'); backend='skimage' runs without it."
                ) from e
            warnings.warn(
                "OpenCV contrib (cv2.ximgproc) is not installed: selective_search falls back to "
                "scikit-image Felzenszwalb regions (no hierarchical grouping; fewer, coarser "
                "boxes). Install opencv-contrib-python-headless for selective search proper.",
                UserWarning,
                stacklevel=2,
            )
    if cv2 is not None:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
            ss.setBaseImage(np.ascontiguousarray(rgb[:, :, ::-1]))
            (
                ss.switchToSelectiveSearchFast
                if mode == "fast"
                else ss.switchToSelectiveSearchQuality
            )()
            rects = np.asarray(ss.process(), dtype=np.int64).reshape(-1, 4)
        finally:
            cv2.setNumThreads(threads)
        raw = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1)
    else:
        raw = _felzenszwalb_boxes(rgb, min_size=20)
    boxes = torch.from_numpy(_dedupe_sorted(raw)).float()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_side) & ((boxes[:, 3] - boxes[:, 1]) >= min_side)
    boxes = boxes[keep]
    if remove_boundary:
        boxes = remove_boundary_boxes(boxes, (h, w))
    return _subsample(boxes, n, seed)


def uniform_boxes(
    size: tuple[int, int], n: int = 1000, *, min_side: int = 8, seed: int = 0
) -> torch.Tensor:
    """Uniformly sampled boxes (US): centre uniform in the image, side lengths log-uniform in
    ``[min_side, side]``, clipped to the image. The SCNet paper's worst proposal method.

    Args:
        size: the image's ``(H, W)``.
        n: the number of boxes.
        min_side: the smallest side length, pixels.
        seed: the sampling seed.

    Returns:
        ``(n, 4)`` float32 boxes ``(x0, y0, x1, y1)`` in pixels.
    """
    h, w = _check_size(size)
    check_int(n, "n", 1)
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 4, generator=g, dtype=torch.float64)
    cx, cy = u[:, 0] * w, u[:, 1] * h
    lo = math.log(min(min_side, w)), math.log(min(min_side, h))
    bw = torch.exp(lo[0] + u[:, 2] * (math.log(w) - lo[0]))
    bh = torch.exp(lo[1] + u[:, 3] * (math.log(h) - lo[1]))
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return boxes.float()


def sliding_boxes(
    size: tuple[int, int],
    n: int = 1000,
    *,
    scales: tuple[float, ...] = (0.15, 0.25, 0.4, 0.6, 0.85),
    aspects: tuple[float, ...] = (0.5, 1.0, 2.0),
    seed: int = 0,
) -> torch.Tensor:
    """Sliding-window boxes (SW): for each scale (side of a square box as a fraction of
    ``sqrt(H W)``) and aspect ratio (width / height), windows on a grid with half-window
    stride; ``n`` of them drawn with ``seed`` when there are more.

    Args:
        size: the image's ``(H, W)``.
        n: the most boxes returned.
        scales: window sizes, fractions of ``sqrt(H * W)``.
        aspects: width / height of the windows.
        seed: the draw when the grid holds more than ``n`` windows.

    Returns:
        ``(M, 4)`` float32 boxes ``(x0, y0, x1, y1)`` in pixels, ``M <= n``.
    """
    h, w = _check_size(size)
    check_int(n, "n", 1)
    out = []
    for s in scales:
        for a in aspects:
            side = s * math.sqrt(h * w)
            bw, bh = min(side * math.sqrt(a), w), min(side / math.sqrt(a), h)
            xs = torch.arange(0.0, w - bw + 1e-6, max(bw / 2, 1.0))
            ys = torch.arange(0.0, h - bh + 1e-6, max(bh / 2, 1.0))
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            out.append(torch.stack([gx.ravel(), gy.ravel(), gx.ravel() + bw, gy.ravel() + bh], 1))
    return _subsample(torch.cat(out).float(), n, seed)


def make_proposals(
    image: torch.Tensor, method: str = "ss", n: int = 1000, *, seed: int = 0
) -> torch.Tensor:
    """Proposals of ``image (3, H, W)`` by ``method`` (:data:`PROPOSAL_METHODS`): ``"ss"``
    (:func:`selective_search`, fast mode), ``"us"`` (:func:`uniform_boxes`) or ``"sw"``
    (:func:`sliding_boxes`). Returns ``(M, 4)`` float32 boxes, ``M <= n``."""
    check_choice(method, "method", PROPOSAL_METHODS)
    check_image(image, "image")
    size = (int(image.shape[-2]), int(image.shape[-1]))
    if method == "ss":
        return selective_search(image, n, seed=seed)
    if method == "us":
        return uniform_boxes(size, n, seed=seed)
    return sliding_boxes(size, n, seed=seed)


def scale_boxes(boxes: torch.Tensor, from_size, to_size) -> torch.Tensor:
    """Boxes of an image of ``from_size (H, W)`` in the same image resized to ``to_size``
    (pixel-extent corners scale by the size ratio). Returns ``(N, 4)``."""
    _check_boxes(boxes)
    (h0, w0), (h1, w1) = _check_size(from_size, "from_size"), _check_size(to_size, "to_size")
    s = boxes.new_tensor([w1 / w0, h1 / h0, w1 / w0, h1 / h0])
    return boxes * s


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Boxes of the horizontally mirrored image of ``width`` pixels: ``x -> W - x`` (corners
    swap). Returns ``(N, 4)``."""
    _check_boxes(boxes)
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


def box_ioa(boxes: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Intersection over the *box's own* area: ``|box ∩ region| / |box|``.

    Args:
        boxes: ``(N, 4)``.
        region: ``(M, 4)``.

    Returns:
        ``(N, M)`` in ``[0, 1]`` (0 for an empty box).
    """
    _check_boxes(boxes)
    _check_boxes(region, "region")
    lt = torch.maximum(boxes[:, None, :2], region[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], region[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / box_area(boxes)[:, None].clamp(min=1e-12)


def boxes_containing(boxes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``(N, P)`` bool: does box ``i`` contain point ``p`` (``(P, 2)`` pixels, x then y;
    borders included)?"""
    _check_boxes(boxes)
    check_shape(points, ("P", 2), "points")
    x, y = points[None, :, 0], points[None, :, 1]
    return (
        (x >= boxes[:, None, 0])
        & (x <= boxes[:, None, 2])
        & (y >= boxes[:, None, 1])
        & (y <= boxes[:, None, 3])
    )


def active_proposals(
    boxes: torch.Tensor, object_box: torch.Tensor, keypoints: torch.Tensor, ioa: float = 0.75
) -> torch.Tensor:
    """SCNet's active proposals (``crop_active_boxset``): mostly on the object, with a keypoint.

    Args:
        boxes: ``(N, 4)`` proposals.
        object_box: ``(4,)`` the object's box.
        keypoints: ``(P, 2)`` the visible keypoints, pixels (x, y).
        ioa: the least fraction of a proposal's area inside the object box (code: 0.75).

    Returns:
        ``(N,)`` bool.
    """
    check_shape(object_box, (4,), "object_box")
    inside = box_ioa(boxes, object_box[None])[:, 0] > ioa
    has_kp = boxes_containing(boxes, keypoints).any(1)
    return inside & has_kp
