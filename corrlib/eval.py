"""Evaluate correspondence methods on the benchmarks: the engine behind ``corrlib eval``.

A *method* turns an image pair into correspondences. :func:`register_method` adds one to the
registry (chapters register their trained models the same way); :func:`evaluate_keypoints` runs a
method over a keypoint benchmark under a named PCK protocol; :func:`evaluate_tss` writes dense
flows in the TSS evaluation kit's layout and scores them exactly as the kit does.
All keypoints are pixels, 0-based, (x, y), in the *original* images.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from corrlib._check import check_choice, check_image, check_shape
from corrlib.metrics import PCKEvaluator, evaluate_tss_results, get_protocol, tss_scores_csv

__all__ = [
    "DATASETS",
    "CorrespondenceMethod",
    "DescriptorMethod",
    "HandcraftedMethod",
    "IdentityMethod",
    "KeypointResult",
    "LearnedPatchMethod",
    "TSSResult",
    "available_methods",
    "evaluate_keypoints",
    "evaluate_tss",
    "get_method",
    "load_dataset",
    "register_method",
    "write_keypoint_result",
]

#: dataset name -> (class name in corrlib.data, PCK protocol name, default split)
DATASETS = {
    "pf-willow": ("PFWillow", "pf-willow", "test"),
    "pf-pascal": ("PFPascal", "pf-pascal", "test"),
    "spair-71k": ("SPair71k", "spair-71k", "test"),
    "tss": ("TSS", "tss", "test"),
}


class CorrespondenceMethod:
    """Interface of an evaluable method. Subclasses implement :meth:`match` and maybe :meth:`flow`.

    ``src_key``/``trg_key`` identify an image (its file name) so a method may cache per-image work.
    """

    name = "method"
    description = ""

    def match(self, src_img: torch.Tensor, trg_img: torch.Tensor, src_kps: torch.Tensor, *, src_key=None, trg_key=None) -> torch.Tensor:
        """``src_img (3, Hs, Ws)``, ``trg_img (3, Ht, Wt)``, ``src_kps (N, 2)`` -> ``(N, 2)`` in trg."""
        raise NotImplementedError

    def flow(self, src_img: torch.Tensor, trg_img: torch.Tensor, *, src_key=None, trg_key=None) -> torch.Tensor:
        """Dense flow ``(2, Hs, Ws)`` src->trg in pixels (for TSS)."""
        raise NotImplementedError(f"Method '{self.name}' predicts keypoints only; it has no dense flow for TSS.")


_REGISTRY: dict[str, Callable[..., CorrespondenceMethod]] = {}


def register_method(name: str, factory: Callable[..., CorrespondenceMethod] | None = None):
    """Register ``factory(**kwargs) -> CorrespondenceMethod`` under ``name`` (usable as decorator)."""

    def deco(f):
        _REGISTRY[name] = f
        return f

    return deco(factory) if factory is not None else deco


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str, **kwargs) -> CorrespondenceMethod:
    """Build a registered method; unknown names list the registered ones."""
    check_choice(name, "method", available_methods())
    return _REGISTRY[name](**kwargs)


def _scale_points(pts: torch.Tensor, from_size, to_size) -> torch.Tensor:
    """Map pixels between two resolutions of one image (pixel centres preserved)."""
    (h0, w0), (h1, w1) = from_size, to_size
    s = pts.new_tensor([w1 / w0, h1 / h0])
    return (pts + 0.5) * s - 0.5


def _network_input(img: torch.Tensor, *, size=None, max_side: int | None = None, stride: int = 1) -> torch.Tensor:
    """``img (3, H, W)`` uint8 or float -> float ``(3, H', W')`` in ``[0, 1]`` for a network.

    ``size``: exactly ``(H', W')``; else the longer side scaled to ``max_side`` (None: kept) and
    both sides rounded to multiples of ``stride`` (at least one stride). Bilinear, antialiased.
    """
    import torch.nn.functional as F

    check_image(img, "image", batched=False)
    x = img.float() / 255 if img.dtype == torch.uint8 else img.float()
    h, w = x.shape[-2:]
    if size is None:
        scale = 1.0 if max_side is None else max_side / max(h, w)
        size = (max(stride, round(h * scale / stride) * stride), max(stride, round(w * scale / stride) * stride))
    if tuple(size) != (h, w):
        x = F.interpolate(x[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)
    return x


class IdentityMethod(CorrespondenceMethod):
    """The no-motion baseline: each source point maps to the same relative position in the target.

    ``x_t = (x_s + 0.5) * W_t / W_s - 0.5`` (and likewise for y). PF-WILLOW objects are roughly
    centred and of similar size, so this is a strong floor every matcher must beat.
    """

    name = "identity"
    description = "source keypoints rescaled by the image-size ratio"

    def match(self, src_img, trg_img, src_kps, *, src_key=None, trg_key=None):
        check_shape(src_kps, ("N", 2), "src_kps")
        return _scale_points(src_kps.float(), src_img.shape[-2:], trg_img.shape[-2:])

    def flow(self, src_img, trg_img, *, src_key=None, trg_key=None):
        from corrlib.geometry import pixel_grid

        h, w = src_img.shape[-2:]
        base = pixel_grid((h, w))
        return (_scale_points(base, (h, w), trg_img.shape[-2:]) - base).permute(2, 0, 1)


class DescriptorMethod(CorrespondenceMethod):
    """Dense descriptors matched by nearest neighbour, computed once per image.

    Subclasses implement ``_describe_image(img) -> (desc (C, h, w), FeatureGrid in original
    pixels)``; :meth:`describe` caches it by image key (``cache_size`` images), :meth:`match`
    transfers keypoints with :func:`corrlib.matching.transfer_keypoints` (``matcher``) and
    :meth:`flow` gives dense nearest-neighbour flow.
    """

    def __init__(self, matcher: str = "argmax_subpixel", cache_size: int = 128):
        from corrlib.matching import MATCHERS

        self.matcher = check_choice(matcher, "matcher", MATCHERS)
        self.cache_size = cache_size
        self._cache: OrderedDict = OrderedDict()

    def _describe_image(self, img: torch.Tensor):
        raise NotImplementedError

    def describe(self, img: torch.Tensor, key=None):
        """``(desc (C, h, w), FeatureGrid in original pixels)`` of one image, cached by ``key``."""
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        out = self._describe_image(img)
        if key is not None:
            self._cache[key] = out
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    def match(self, src_img, trg_img, src_kps, *, src_key=None, trg_key=None):
        from corrlib.matching import transfer_keypoints

        check_image(src_img, "src_img", batched=False)
        check_image(trg_img, "trg_img", batched=False)
        check_shape(src_kps, ("N", 2), "src_kps")
        ds, gs = self.describe(src_img, src_key)
        dt, gt = self.describe(trg_img, trg_key)
        pred, _ = transfer_keypoints(ds[None], dt[None], src_kps[None].float(), gs, gt, self.matcher)
        return pred[0]

    def flow(self, src_img, trg_img, *, src_key=None, trg_key=None):
        from corrlib.models.handcrafted import flow_from_descriptors

        ds, gs = self.describe(src_img, src_key)
        dt, gt = self.describe(trg_img, trg_key)
        return flow_from_descriptors(ds, gs, dt, gt, tuple(src_img.shape[-2:]))


class HandcraftedMethod(DescriptorMethod):
    """Nearest-neighbour matching of a hand-crafted dense descriptor (no regulariser).

    Descriptors are computed once per image (cached by file name, ``cache_size`` images), after
    resizing the image so its longer side is ``max_side`` (None: original resolution).
    """

    def __init__(self, descriptor: str, max_side: int | None = None, matcher: str = "argmax_subpixel", cache_size: int = 128, **kwargs):
        from corrlib.models import handcrafted

        check_choice(descriptor, "descriptor", handcrafted.DESCRIPTORS)
        super().__init__(matcher, cache_size)
        self.name = descriptor
        self.description = f"dense {descriptor} descriptors, nearest neighbour ({matcher})"
        self.max_side, self.kwargs = max_side, kwargs
        self._hc = handcrafted

    def _describe_image(self, img: torch.Tensor):
        return self._hc.describe(img, self.name, max_side=self.max_side, **self.kwargs)


class LearnedPatchMethod(DescriptorMethod):
    """A patch network from chapter 01 used as a dense descriptor (MC-CNN fast or DeepDesc).

    ``checkpoint`` is a file written by :func:`corrlib.recipes.patch.export_patch_model` (chapter
    01 saves one per architecture). MC-CNN fast is fully convolutional: its L2-normalised features
    at every pixel are the descriptor. DeepDesc describes ``P x P`` patches centred on a grid of
    stride ``stride`` pixels. Images are converted to grey and resized to ``max_side`` first.
    """

    DESCRIPTOR_ARCHS = ("mccnn-fast", "deepdesc")

    def __init__(self, checkpoint=None, max_side: int | None = None, matcher: str = "argmax_subpixel", stride: int = 4, cache_size: int = 128, arch: str | None = None):
        from corrlib.recipes.patch import load_patch_model

        if checkpoint is None or not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f"Method '{arch}' needs a trained checkpoint: pass checkpoint=... (CLI: --checkpoint FILE). "
                f"Notebook 01 exports one per architecture to <out_dir>/checkpoints/01_patch/<preset>/<arch>.pt (out_dir defaults to runs/); got {checkpoint!r}."
            )
        self.model = load_patch_model(checkpoint)
        check_choice(self.model.arch, f"architecture of {checkpoint}", self.DESCRIPTOR_ARCHS)
        if arch is not None and arch != self.model.arch:
            raise ValueError(f"{checkpoint} holds a '{self.model.arch}' model, not '{arch}'; pass the matching checkpoint.")
        self.name = self.model.arch
        self.description = f"{self.name} features from {checkpoint}, nearest neighbour ({matcher})"
        super().__init__(matcher, cache_size)
        self.max_side, self.stride = max_side, stride

    @torch.no_grad()
    def _describe_image(self, img: torch.Tensor):
        import torch.nn.functional as F

        from corrlib.matching import FeatureGrid
        from corrlib.models.handcrafted import resize_longer_side

        check_image(img, "image", batched=False)
        rgb, ratio = resize_longer_side(img, self.max_side)
        grey = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None, None]  # (1, 1, H, W)
        if hasattr(self.model, "features"):  # MC-CNN: dense, one descriptor per pixel
            pad = (self.model.receptive_field - 1) // 2
            feat = self.model.features(F.pad(grey, (pad,) * 4, mode="replicate"))[0]
            return feat, FeatureGrid((0.0, 0.0), (1.0, 1.0)).in_original(ratio)
        p, s = self.model.patch_size, self.stride
        padded = F.pad(grey, (p // 2,) * 4, mode="replicate")
        cols = F.unfold(padded, p, stride=s)  # (1, P*P, L)
        h = (padded.shape[-2] - p) // s + 1
        w = (padded.shape[-1] - p) // s + 1
        patches = cols[0].T.reshape(-1, 1, p, p)
        desc = torch.cat([self.model.describe(patches[i : i + 1024]) for i in range(0, len(patches), 1024)])
        # window j spans original pixels [j*s - p/2, j*s + p/2): centre at j*s - 0.5
        return desc.T.reshape(-1, h, w), FeatureGrid((-0.5, -0.5), (float(s), float(s))).in_original(ratio)


register_method("identity", lambda **kw: IdentityMethod())
for _name in ("raw_patch", "zncc", "census", "hog", "daisy", "sift"):
    register_method(_name, lambda _n=_name, **kw: HandcraftedMethod(_n, **kw))
for _name in LearnedPatchMethod.DESCRIPTOR_ARCHS:
    register_method(_name, lambda _n=_name, **kw: LearnedPatchMethod(arch=_n, **kw))


def load_dataset(name: str, data_root=None, split: str | None = None, **kwargs):
    """Instantiate a benchmark by its CLI name (``pf-willow``, ``pf-pascal``, ``spair-71k``, ``tss``)."""
    from corrlib import data

    check_choice(name, "dataset", DATASETS)
    cls_name, _, default_split = DATASETS[name]
    return getattr(data, cls_name)(data_root, split=split or default_split, **kwargs)


@dataclass
class KeypointResult:
    """Outcome of :func:`evaluate_keypoints`: metrics summary, per-keypoint rows, wall time."""

    method: str
    dataset: str
    protocol: str
    summary: dict
    rows: list[dict] = field(repr=False)
    seconds: float
    markdown: str = field(repr=False, default="")

    def pck(self, alpha: float, category: str | None = None) -> float:
        """Headline PCK at ``alpha`` (overall under the protocol's aggregation, or one category)."""
        entry = self.summary["alphas"][_alpha_key(alpha)]
        return entry["all"] if category is None else entry["per_category"][category]


def _alpha_key(alpha: float) -> str:
    return f"{alpha:g}"


def evaluate_keypoints(
    method: CorrespondenceMethod | str,
    dataset,
    protocol: str = "pf-willow",
    *,
    limit: int | None = None,
    progress: bool = True,
    method_kwargs: dict | None = None,
) -> KeypointResult:
    """Run ``method`` on every pair of a keypoint ``dataset`` and score it under ``protocol``.

    The protocol's ``direction`` decides which image's keypoints are transferred: ``src->trg``
    moves source keypoints into the target and measures there. ``limit`` evaluates only the first
    ``limit`` pairs (quick runs).
    """
    if isinstance(method, str):
        method = get_method(method, **(method_kwargs or {}))
    proto = get_protocol(protocol)
    evaluator = PCKEvaluator(proto)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    rows = []
    t0 = time.perf_counter()
    for i in tqdm(range(n), desc=f"{method.name} on {type(dataset).__name__}", disable=not progress, leave=False):
        s = dataset[i]
        a, b = ("src", "trg") if proto.direction == "src->trg" else ("trg", "src")
        query, gt = s[f"{a}_kps"], s[f"{b}_kps"]
        if query.shape != gt.shape:
            raise ValueError(
                f"Pair {s['pair_index']} ({s['src_name']} -> {s['trg_name']}): {query.shape[0]} source "
                f"keypoints but {gt.shape[0]} target keypoints; the pair list is inconsistent."
            )
        pred = method.match(s[f"{a}_img"], s[f"{b}_img"], query, src_key=s[f"{a}_name"], trg_key=s[f"{b}_name"])
        evaluator.add(pred, gt, category=s["category"], image_size=s[f"{b}_size"], bbox=s.get(f"{b}_bbox"))
        for k in range(pred.shape[0]):
            rows.append(
                {
                    "pair_index": s["pair_index"],
                    "source_image": s[f"{a}_name"],
                    "target_image": s[f"{b}_name"],
                    "keypoint_index": k,
                    "pred_x": round(float(pred[k, 0]), 3),
                    "pred_y": round(float(pred[k, 1]), 3),
                    "gt_x": round(float(gt[k, 0]), 3),
                    "gt_y": round(float(gt[k, 1]), 3),
                    "category": s["category"],
                }
            )
    seconds = time.perf_counter() - t0
    return KeypointResult(method.name, type(dataset).__name__, proto.name, evaluator.summary(), rows, seconds, evaluator.to_markdown())


def write_keypoint_result(result: KeypointResult, out_dir) -> dict[str, Path]:
    """Write ``predictions.csv``, ``metrics.json`` and ``metrics.md`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"predictions": out / "predictions.csv", "metrics": out / "metrics.json", "table": out / "metrics.md"}
    with open(paths["predictions"], "w", newline="") as f:
        fields = ["pair_index", "source_image", "target_image", "keypoint_index", "pred_x", "pred_y", "gt_x", "gt_y", "category"]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(result.rows)
    meta = {
        "method": result.method,
        "dataset": result.dataset,
        "protocol": result.protocol,
        "pairs": len({r["pair_index"] for r in result.rows}),
        "seconds": round(result.seconds, 2),
        "summary": result.summary,
        "coordinates": "pixels, 0-based, (x, y), in the original target image",
    }
    paths["metrics"].write_text(json.dumps(meta, indent=2, default=_json_default))
    head = f"# {result.method} on {result.dataset}\n\n{result.markdown}\n\nWall time: {result.seconds:.1f} s\n"
    paths["table"].write_text(head)
    return paths


def _json_default(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


@dataclass
class TSSResult:
    """Outcome of :func:`evaluate_tss`: the kit's rows, per-subset means, wall time."""

    method: str
    rows: list[dict] = field(repr=False)
    per_subset: dict
    seconds: float
    csv: dict = field(repr=False, default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        """Mean flow accuracy at the kit's 5-pixel threshold (PCK@0.05) over all rows."""
        vals = [r["T5"] for r in self.rows]
        return sum(vals) / len(vals) if vals else float("nan")


def evaluate_tss(
    method: CorrespondenceMethod | str,
    data_root=None,
    out_dir=None,
    *,
    subsets=("FG3DCar", "JODS", "PASCAL"),
    limit: int | None = None,
    progress: bool = True,
    method_kwargs: dict | None = None,
) -> TSSResult:
    """Predict dense flow both ways for TSS pairs and score them as the official kit does.

    Flows are written as ``<out_dir>/<subset>/<pair>/flow1.flo, flow2.flo`` (the kit's input
    layout) and scored by :func:`corrlib.metrics.evaluate_tss_results`; masks are derived from
    forward-backward consistency (the kit's rule when a method predicts none).
    ``limit`` caps the number of pairs per subset.
    """
    import tempfile

    from corrlib.data import TSS, iter_tss, resolve_data_root
    from corrlib.data.flo import write_flo

    if isinstance(method, str):
        method = get_method(method, **(method_kwargs or {}))
    root = resolve_data_root(data_root)
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory()
        out_dir = tmp.name
    out = Path(out_dir)
    t0 = time.perf_counter()
    rows, per_subset, csvs = [], {}, {}
    for subset in subsets:
        ds = TSS(root, subsets=(subset,))
        items = iter_tss(ds, limit)
        for s, key_a, key_b in tqdm(items, desc=f"{method.name} on TSS/{subset}", disable=not progress, leave=False):
            flow = method.flow(s["src_img"], s["trg_img"], src_key=key_a, trg_key=key_b)
            name = "flow1.flo" if s["direction"] == "1to2" else "flow2.flo"
            d = out / subset / s["pair"]
            d.mkdir(parents=True, exist_ok=True)
            write_flo(d / name, flow.permute(1, 2, 0).cpu().numpy())
        gt_dir = root / "TSS" / "TSS_CVPR2016" / subset
        sub_rows = evaluate_tss_results(out / subset, gt_dir)
        for r in sub_rows:
            r["subset"] = subset
        rows += sub_rows
        csvs[subset] = tss_scores_csv(sub_rows)
        (out / subset / "scores.csv").write_text(csvs[subset])
        if sub_rows:
            per_subset[subset] = {
                "PCK@0.05": sum(r["T5"] for r in sub_rows) / len(sub_rows),
                "IoU": sum(r["seg_iou"] for r in sub_rows) / len(sub_rows),
                "rows": len(sub_rows),
            }
    seconds = time.perf_counter() - t0
    if tmp is not None:
        tmp.cleanup()
    return TSSResult(method.name, rows, per_subset, seconds, csvs)


# ------------------------------------------------------------------------- CNN backbones

from corrlib.models.backbones import BACKBONES as _BACKBONES  # noqa: E402 (kept with its section)


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
        from corrlib.matching import MATCHERS
        from corrlib.models import backbones

        check_choice(matcher, "matcher", MATCHERS)
        if model is None:
            check_choice(arch, "arch", backbones.BACKBONES)
            taps = None if concat else (tap or backbones.DEFAULT_TAPS[arch][0],)
            model = backbones.backbone(arch, taps=taps, weights=weights, concat=concat)
        if not isinstance(model, backbones.Backbone):
            raise TypeError(f"Argument model must be a corrlib.models.backbones.Backbone, got {type(model).__name__}.")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.tap = None if model.concat else (tap if tap in model.taps else model.taps[0])
        self.stride = model.out_stride if model.concat else model.strides[self.tap]
        self.weights_source = model.weights_source
        self.name = f"backbone-{model.arch}"
        what = "+".join(model.taps) if model.concat else self.tap
        self.description = f"{model.arch} {what} features ({model.weights_source}), nearest neighbour ({matcher})"
        if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < self.stride):
            raise ValueError(f"Argument max_side must be None or an int >= the stride {self.stride}, got {max_side!r}.")
        DescriptorMethod.__init__(self, matcher, cache_size)
        self.max_side = max_side
        self.kwargs = {}

    @torch.no_grad()
    def _describe_image(self, img: torch.Tensor):
        from corrlib.matching import FeatureGrid

        h, w = img.shape[-2:]
        rgb = _network_input(img, max_side=self.max_side, stride=self.stride)
        size = tuple(rgb.shape[-2:])
        out = self.model(rgb[None].to(self.device))
        feat = (out if self.model.concat else out[self.tap])[0].float().cpu()  # (C, h', w')
        grid = FeatureGrid.for_map(tuple(feat.shape[-2:]), size).in_original((size[1] / w, size[0] / h))
        return feat, grid


__all__ += ["BackboneMethod"]
for _name in _BACKBONES:
    register_method(f"backbone-{_name}", lambda _a=_name, **kw: BackboneMethod(_a, **kw))


# ------------------------------------------------------------------------------ chapter 03: UCN


class UCNMethod(LearnedPatchMethod):
    """A Universal Correspondence Network (chapter 03) as a dense descriptor, nearest neighbour.

    ``checkpoint`` is a file written by :func:`corrlib.recipes.ucn.export_ucn` (notebook 03
    exports one per ablation variant); ``model`` passes a :class:`corrlib.models.ucn.UCN`
    directly instead. Each image is resized so its longer side is ``max_side`` (None: kept) and
    both sides are multiples of the network's stride; the resize is folded into the feature
    grid, so keypoints and flows are in original pixels. Matching (keypoints: ``matcher``;
    TSS: dense nearest-neighbour flow) reuses :class:`LearnedPatchMethod`'s cache and flow.
    Choy et al., *Universal Correspondence Network*, NeurIPS 2016.
    """

    def __init__(self, checkpoint=None, max_side: int | None = None, matcher: str = "argmax_subpixel", cache_size: int = 128, model=None):
        if model is None:
            if checkpoint is None or not Path(checkpoint).is_file():
                raise FileNotFoundError(
                    "Method 'ucn' needs a trained checkpoint: pass checkpoint=... (CLI: --checkpoint FILE). "
                    "Notebook 03 exports one per variant to <out_dir>/checkpoints/03_ucn/<preset>/<variant>.pt "
                    f"(out_dir defaults to runs/); got {checkpoint!r}."
                )
            from corrlib.recipes.ucn import load_ucn

            model = load_ucn(checkpoint)
        self.model = model.eval()
        variant = getattr(model, "variant", None)
        self.name = "ucn"
        source = checkpoint if checkpoint is not None else "an in-memory model"
        what = "UCN" if variant is None else f"UCN ({variant})"
        self.description = f"{what} features from {source}, nearest neighbour ({matcher})"
        DescriptorMethod.__init__(self, matcher, cache_size)
        self.max_side, self.stride = max_side, model.stride
        self.kwargs = {}

    @torch.no_grad()
    def _describe_image(self, img: torch.Tensor):
        h, w = img.shape[-2:]
        x = _network_input(img, max_side=self.max_side, stride=self.stride)
        size = tuple(x.shape[-2:])
        p = next(self.model.parameters(), None)
        feat, _ = self.model(x[None].to(p.device if p is not None else "cpu"))
        grid = self.model.feature_grid(size).in_original((size[1] / w, size[0] / h))
        return feat[0].float().cpu(), grid


register_method("ucn", lambda **kw: UCNMethod(**kw))
__all__ += ["UCNMethod"]


# ---------------------------------------------------------------------------- chapter 06: SFNet


class SFNetMethod(CorrespondenceMethod):
    """SFNet (chapter 06): dense semantic flow from a trained :class:`corrlib.models.sfnet.SFNet`.

    Both images are resized (bilinear, antialiased; aspect ratio not kept, as SFNet does) to
    ``image_size`` (default: the size the model was trained at), the flow source->target is
    computed on the correlation grid with the model's argmax (or ``argmax``), upsampled to the
    resized source and mapped back to original pixels: keypoints move by the flow sampled at
    their position (bilinear), and :meth:`flow` gives the dense flow on the original source
    grid. The frozen trunk's features are cached per image (``cache_size`` images).
    ``checkpoint``: a file of :func:`corrlib.recipes.sfnet.export_sfnet`; ``model``: an SFNet.
    ``max_side`` (the CLI's ``--max-side``) is ``image_size=(max_side, max_side)``.
    Lee et al., *SFNet: Learning Object-aware Semantic Correspondence*, CVPR 2019.
    """

    def __init__(
        self, checkpoint=None, image_size=None, argmax: str | None = None, cache_size: int = 128, model=None,
        device: str = "cpu", max_side: int | None = None,
    ):
        from corrlib.models.sfnet import ARGMAX_MODES

        if max_side is not None:
            if image_size is not None:
                raise ValueError("Give image_size or max_side, not both.")
            image_size = (int(max_side), int(max_side))
        if model is None:
            if checkpoint is None or not Path(checkpoint).is_file():
                raise FileNotFoundError(
                    "Method 'sfnet' needs a trained checkpoint: pass checkpoint=... (CLI: --checkpoint FILE). "
                    "Notebook 06 exports one per variant to <out_dir>/checkpoints/06_sfnet/<preset>/<variant>.pt "
                    f"(out_dir defaults to runs/); got {checkpoint!r}."
                )
            from corrlib.recipes.sfnet import load_sfnet

            model = load_sfnet(checkpoint, device=device)
        if argmax is not None:
            check_choice(argmax, "argmax", ARGMAX_MODES)
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        size = image_size or getattr(model, "image_size", None) or (320, 320)
        size = (size, size) if isinstance(size, int) else tuple(size)
        model.grid_size(size)  # raises if not a multiple of the grid stride
        self.image_size, self.argmax = size, argmax
        self.name = "sfnet"
        variant = getattr(model, "variant", None)
        what = "SFNet" if variant is None else f"SFNet ({variant})"
        self.description = f"{what} on {model.trunk.arch} ({model.trunk.weights_source}), {size[0]}x{size[1]}, {argmax or model.argmax} argmax"
        self.cache_size = cache_size
        self._cache: OrderedDict = OrderedDict()

    @torch.no_grad()
    def _features(self, img: torch.Tensor, key=None) -> dict:
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        x = _network_input(img, size=self.image_size)
        feats = self.model.trunk_features(x[None].to(self.device))
        if key is not None:
            self._cache[key] = feats
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return feats

    @torch.no_grad()
    def resized_flow(self, src_img, trg_img, *, src_key=None, trg_key=None) -> torch.Tensor:
        """Flow ``(2, S, S)`` src->trg in pixels of the resized images (``image_size``)."""
        out = self.model.forward_features(self._features(src_img, src_key), self._features(trg_img, trg_key), self.image_size, self.argmax)
        return out.flow_pixels("st", self.image_size)[0].float().cpu()

    def match(self, src_img, trg_img, src_kps, *, src_key=None, trg_key=None):
        from corrlib.geometry import transfer_kps_with_flow

        check_shape(src_kps, ("N", 2), "src_kps")
        flow = self.resized_flow(src_img, trg_img, src_key=src_key, trg_key=trg_key)
        kps = _scale_points(src_kps.float(), src_img.shape[-2:], self.image_size)
        moved = transfer_kps_with_flow(flow[None], kps[None])[0]
        return _scale_points(moved, self.image_size, trg_img.shape[-2:])

    def flow(self, src_img, trg_img, *, src_key=None, trg_key=None):
        import torch.nn.functional as F

        from corrlib.geometry import pixel_grid

        flow = self.resized_flow(src_img, trg_img, src_key=src_key, trg_key=trg_key)
        target = pixel_grid(self.image_size).permute(2, 0, 1) + flow  # (2, S, S) resized-trg pixels
        hs, ws = src_img.shape[-2:]
        target = F.interpolate(target[None], size=(hs, ws), mode="bilinear", align_corners=False)[0]
        target = _scale_points(target.permute(1, 2, 0), self.image_size, trg_img.shape[-2:])
        return target.permute(2, 0, 1) - pixel_grid((hs, ws)).permute(2, 0, 1)


register_method("sfnet", lambda **kw: SFNetMethod(**kw))
__all__ += ["SFNetMethod"]
