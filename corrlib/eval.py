"""Evaluate correspondence methods on the benchmarks: the engine behind ``corrlib eval``.

A *method* (:mod:`corrlib.methods`) turns an image pair into correspondences; the registry's
:func:`get_method`, :func:`available_methods` and :func:`register_method` are re-exported here.
:func:`evaluate_keypoints` runs a method over a keypoint benchmark under a named PCK protocol;
:func:`evaluate_tss` writes dense flows in the TSS evaluation kit's layout, into a folder of its
own run, and scores them (only them) exactly as the kit does. Result files are written
atomically and ``metrics.json`` is strict JSON (:func:`write_keypoint_result`, :func:`strict_json`).
All keypoints are pixels, 0-based, (x, y), in the *original* images.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from tqdm.auto import tqdm

from corrlib import data
from corrlib._check import check_choice, check_int, check_shape, check_tensor
from corrlib.checkpoint import atomic_write_text
from corrlib.data import TSS, PairPool, iter_tss, resolve_data_root, sample_valid_pixels
from corrlib.flo import write_flo
from corrlib.losses import warp_by_flow
from corrlib.methods import CorrespondenceMethod, available_methods, get_method, register_method
from corrlib.metrics import PCKEvaluator, evaluate_tss_results, get_protocol, tss_scores_csv

__all__ = [
    "DATASETS",
    "FULL_TEST_PAIRS",
    "TSS_FLIP_HANDLING",
    "CorrespondenceMethod",
    "KeypointResult",
    "TSSResult",
    "available_methods",
    "evaluate_keypoints",
    "evaluate_pairs",
    "evaluate_tss",
    "get_method",
    "load_dataset",
    "new_run_id",
    "prepare_out_dir",
    "register_method",
    "result_rows",
    "strict_json",
    "transfer_mask",
    "unmirror_source_flow",
    "write_keypoint_result",
]

#: dataset name -> (class name in corrlib.data, PCK protocol name, default split)
DATASETS = {
    "pf-willow": ("PFWillow", "pf-willow", "test"),
    "pf-pascal": ("PFPascal", "pf-pascal", "test"),
    "spair-71k": ("SPair71k", "spair-71k", "test"),
    "tss": ("TSS", "tss", "test"),
}


def load_dataset(name: str, data_root=None, split: str | None = None, **kwargs):
    """Instantiate a benchmark by its CLI name.

    Args:
        name: ``pf-willow``, ``pf-pascal``, ``spair-71k`` or ``tss`` (the keys of :data:`DATASETS`).
        data_root: the folder that holds the benchmarks (None: ``$CORRLIB_DATA``).
        split: the split to load (None: the benchmark's default in :data:`DATASETS`, ``"test"``).
        **kwargs: passed on to the dataset class (e.g. ``subsets`` of :class:`corrlib.data.TSS`).

    Returns:
        The :mod:`corrlib.data` dataset (e.g. :class:`corrlib.data.PFWillow`); each item is a dict
        of one image pair (keys: see the class).
    """
    check_choice(name, "dataset", DATASETS)
    cls_name, _, default_split = DATASETS[name]
    return getattr(data, cls_name)(data_root, split=split or default_split, **kwargs)


@dataclass
class KeypointResult:
    """Outcome of :func:`evaluate_keypoints`: metrics summary, per-keypoint rows, wall time, and
    the dataset's ``split`` (None when the dataset has none)."""

    method: str
    dataset: str
    protocol: str
    summary: dict
    rows: list[dict] = field(repr=False)
    seconds: float
    markdown: str = field(repr=False, default="")
    split: str | None = None
    #: one dict per pair: ``pair_index``, ``category``, ``n_points``, ``pck@<alpha>`` and, for
    #: SPair-71k, ``difficulty`` (its flags: viewpoint/scale variation, truncation, occlusion)
    pairs: list[dict] = field(repr=False, default_factory=list)

    @property
    def n_pairs(self) -> int:
        """The pairs scored (pairs with at least one scored keypoint)."""
        return int(self.summary["n_pairs"])

    def pck(self, alpha: float, category: str | None = None) -> float | None:
        """Headline PCK at ``alpha`` (overall under the protocol's aggregation, or one category).

        Args:
            alpha: one of the protocol's PCK thresholds (e.g. ``0.1``), looked up as
                ``f"{alpha:g}"`` in ``summary["alphas"]`` (another value raises ``KeyError``).
            category: a category of the benchmark (None: the overall score).

        Returns:
            The fraction of correct keypoints, in ``[0, 1]``; None for a category with no
            scored keypoint (an empty benchmark raises in :func:`evaluate_keypoints`).
        """
        entry = self.summary["alphas"][_alpha_key(alpha)]
        return entry["all"] if category is None else entry["per_category"][category]

    def pck_per_pair(self, alpha: float, where=None) -> float | None:
        """The mean over pairs of each pair's PCK at ``alpha`` (SPair-71k's "per-pair" number,
        beside its per-category headline); ``where(pair dict) -> bool`` selects pairs. None when
        no pair with keypoints is selected."""
        key = f"pck@{_alpha_key(alpha)}"
        vals = [p[key] for p in self.pairs if p["n_points"] > 0 and (where is None or where(p))]
        return sum(vals) / len(vals) if vals else None

    def difficulty_breakdown(self, alpha: float) -> dict:
        """Per-pair mean PCK at ``alpha`` for each value of each difficulty flag (SPair-71k):
        ``{flag: {value: {"pck": float | None, "pairs": int}}}``; ``{}`` without flags."""
        out: dict = {}
        for p in self.pairs:
            for flag, value in p.get("difficulty", {}).items():
                out.setdefault(flag, {}).setdefault(int(value), None)
        for flag, values in out.items():
            for value in values:
                sel = lambda p, f=flag, v=value: p.get("difficulty", {}).get(f) == v  # noqa: E731
                n = sum(1 for p in self.pairs if sel(p) and p["n_points"] > 0)
                values[value] = {"pck": self.pck_per_pair(alpha, sel), "pairs": n}
        return {f: dict(sorted(v.items())) for f, v in sorted(out.items())}


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

    Args:
        method: a :class:`CorrespondenceMethod`, or the name of a registered one (built with
            ``method_kwargs``). Per pair it is called as ``match(img_a (3, Ha, Wa), img_b (3, Hb,
            Wb), kps_a (N, 2)) -> (N, 2)``: keypoints of image a predicted in image b.
        dataset: a keypoint benchmark (e.g. :func:`load_dataset`) whose items hold
            ``src_img``/``trg_img`` ``(3, H, W)``, ``src_kps``/``trg_kps`` ``(N, 2)``,
            ``src_name``/``trg_name``, ``src_size``/``trg_size`` ``(H, W)``, optionally
            ``src_bbox``/``trg_bbox``, ``category`` and ``pair_index``.
        protocol: a PCK protocol name (:func:`corrlib.metrics.get_protocol`).
        limit: the number of pairs evaluated, from the first (None: all).
        progress: show a progress bar.
        method_kwargs: keyword arguments of the method's factory, when ``method`` is a name.

    Returns:
        A :class:`KeypointResult`: ``summary`` (:meth:`corrlib.metrics.PCKEvaluator.summary`),
        ``rows`` (one dict per transferred keypoint: ``pair_index``, ``source_image`` (the image
        whose keypoints were transferred), ``target_image``, ``keypoint_index``, ``pred_x``,
        ``pred_y``, ``gt_x``, ``gt_y`` (pixels of the target image, rounded to 3 decimals),
        ``category``), ``seconds`` (wall time) and ``markdown`` (the metrics table).

    Raises:
        ValueError: if a pair's two images have different numbers of keypoints, if ``limit`` is
            not None or an int >= 1, or if there is no pair to evaluate (an empty dataset, e.g.
            a pair list with a header only): an empty benchmark has no score.
    """
    if limit is not None:
        check_int(limit, "limit", 1)
    if isinstance(method, str):
        method = get_method(method, **(method_kwargs or {}))
    proto = get_protocol(protocol)
    evaluator = PCKEvaluator(proto)
    # a subset of a benchmark (e.g. chapter 04's held-out folds) reports the benchmark's name
    bench = getattr(dataset, "BENCHMARK", None) or type(dataset).__name__
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise ValueError(
            f"{type(dataset).__name__}: no pair to evaluate (the dataset has {len(dataset)} "
            "pairs); check its pair list or split."
        )
    rows, pairs = [], []
    t0 = time.perf_counter()
    for i in tqdm(
        range(n),
        desc=f"{method.name} on {bench}",
        disable=not progress,
        leave=False,
    ):
        s = dataset[i]
        a, b = ("src", "trg") if proto.direction == "src->trg" else ("trg", "src")
        query, gt = s[f"{a}_kps"], s[f"{b}_kps"]
        if query.shape != gt.shape:
            raise ValueError(
                f"Pair {s['pair_index']} ({s['src_name']} -> {s['trg_name']}): {query.shape[0]} "
                f"source keypoints but {gt.shape[0]} target keypoints; the pair list is "
                "inconsistent."
            )
        pred = method.match(
            s[f"{a}_img"], s[f"{b}_img"], query, src_key=s[f"{a}_name"], trg_key=s[f"{b}_name"]
        )
        pair = evaluator.add(
            pred, gt, category=s["category"], image_size=s[f"{b}_size"], bbox=s.get(f"{b}_bbox")
        )
        pair["pair_index"] = s["pair_index"]
        if "difficulty" in s:
            pair["difficulty"] = dict(s["difficulty"])
        pairs.append(pair)
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
    return KeypointResult(
        method.name,
        bench,
        proto.name,
        evaluator.summary(),
        rows,
        seconds,
        evaluator.to_markdown(),
        getattr(dataset, "split", None),
        pairs,
    )


def new_run_id() -> str:
    """A fresh run id: the local start time to the microsecond and the process id.

    E.g. ``20250101-120000-123456-p4242``; ids sort by start time and two runs (two processes,
    or two calls of one process) never share one. :func:`evaluate_tss` names its flow folder
    after it and ``corrlib eval`` records it in ``metrics.json``.
    """
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}-p{os.getpid()}"


def prepare_out_dir(path, what: str = "--out") -> Path:
    """Check that ``path`` can be the output folder of a run, create it, and return it.

    Run before any work, so a bad output folder costs nothing: ``ValueError`` naming ``path``
    (as ``what``, e.g. the CLI option) if it is a file, lies under a file, cannot be created,
    or is not writable (a file is created in it and removed, which also catches read-only
    mounts and immutable folders that permission bits do not show).
    """
    out = Path(path).expanduser()
    probe = out
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        if probe == out:
            raise ValueError(
                f"{what} {out} is a file, not a folder; pass a folder (created if missing)."
            )
        raise ValueError(
            f"{what} {out} lies under {probe}, which is a file, not a folder; pass a folder path."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".corrlib-write-test-"):
            pass
    except OSError as e:
        reason = e.strerror or str(e)
        raise ValueError(
            f"{what} {out} is not a writable folder ({type(e).__name__}: {reason}); pass a "
            "folder you can write to."
        ) from None
    return out


def _check_run_id(run_id: str) -> str:
    ok = (
        isinstance(run_id, str)
        and run_id not in ("", ".", "..")
        and not run_id.startswith(".")
        and all(c.isalnum() or c in "._-" for c in run_id)
    )
    if not ok:
        raise ValueError(
            f"Argument run_id must be a folder name of letters, digits, '.', '_' and '-' (not "
            f"starting with '.'), got {run_id!r}."
        )
    return run_id


def _json_safe(o):
    """``o`` as plain JSON values: non-finite floats become None, tensors lists, others str."""
    if o is None or isinstance(o, (str, bool)):
        return o
    if isinstance(o, numbers.Integral):
        return int(o)
    if isinstance(o, numbers.Real):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, dict):
        return {(k if isinstance(k, (str, int)) else str(k)): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, torch.Tensor):
        return _json_safe(o.tolist())
    return str(o)


def strict_json(obj, indent: int | None = 2) -> str:
    """``obj`` as strict (RFC 8259) JSON text: NaN and infinities, anywhere in the structure,
    become ``null``; tensors become lists; other non-JSON values their ``str``."""
    return json.dumps(_json_safe(obj), indent=indent, allow_nan=False)


PREDICTION_FIELDS = (
    "pair_index",
    "source_image",
    "target_image",
    "keypoint_index",
    "pred_x",
    "pred_y",
    "gt_x",
    "gt_y",
    "category",
)


def write_keypoint_result(
    result: KeypointResult, out_dir, *, run_id: str | None = None
) -> dict[str, Path]:
    """Write ``predictions.csv``, ``metrics.md`` and ``metrics.json`` under ``out_dir``.

    Each file is written atomically (a temporary file in ``out_dir``, then ``os.replace``), so no
    reader ever sees a half-written or interleaved file, and ``metrics.json`` is written last:
    when it names a run, the other two files are that run's. ``metrics.json`` is strict JSON
    (NaN, e.g. of an empty category, is ``null``). Files of the same names are replaced; keeping
    two runs out of one folder is the caller's job (``corrlib eval`` refuses an ``--out`` that
    holds another run's results unless ``--overwrite`` is given, and locks it while it runs).

    Args:
        result: what :func:`evaluate_keypoints` returned.
        out_dir: the folder to write into (created if missing; existing files are replaced).
        run_id: recorded as ``run_id`` in ``metrics.json`` (None: a :func:`new_run_id`).

    Returns:
        The written files: ``{"predictions": <out_dir>/predictions.csv, "metrics":
        <out_dir>/metrics.json, "table": <out_dir>/metrics.md}`` (:class:`pathlib.Path` values).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "predictions": out / "predictions.csv",
        "metrics": out / "metrics.json",
        "table": out / "metrics.md",
    }
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(PREDICTION_FIELDS))
    w.writeheader()
    w.writerows(result.rows)
    atomic_write_text(paths["predictions"], buf.getvalue())
    head = (
        f"# {result.method} on {result.dataset}\n\n{result.markdown}\n\nWall time: "
        f"{result.seconds:.1f} s\n"
    )
    atomic_write_text(paths["table"], head)
    meta = {
        "run_id": run_id or new_run_id(),
        "method": result.method,
        "dataset": result.dataset,
        "protocol": result.protocol,
        "pairs": len({r["pair_index"] for r in result.rows}),
        "seconds": round(result.seconds, 2),
        "summary": result.summary,
        "coordinates": "pixels, 0-based, (x, y), in the original target image",
    }
    if any("difficulty" in p for p in result.pairs):  # SPair-71k: both means and the flags
        alphas = [float(a) for a in result.summary["alphas"]]
        meta["per_pair_mean"] = {f"{a:g}": result.pck_per_pair(a) for a in alphas}
        meta["difficulty"] = {f"{a:g}": result.difficulty_breakdown(a) for a in alphas}
    atomic_write_text(paths["metrics"], strict_json(meta) + "\n")
    return paths


#: the ways :func:`evaluate_tss` treats a pair whose ``flip_gt.txt`` holds 1
TSS_FLIP_HANDLING = ("mirror-source", "none")


def unmirror_source_flow(flow: torch.Tensor) -> torch.Tensor:
    """Carry a flow predicted from a horizontally mirrored source back onto the original source.

    A method matched ``src.flip(-1)`` (the source mirrored left-right) to the target and returned
    ``flow`` on the mirrored source's grid. Source pixel ``(x, y)`` is mirrored pixel
    ``(W - 1 - x, y)`` (0-based pixel centres), whose match in the target is that pixel plus
    ``flow[:, y, W - 1 - x]``; so on the original grid::

        f_x(x, y) = W - 1 - 2 x + flow[0, y, W - 1 - x]
        f_y(x, y) =               flow[1, y, W - 1 - x]

    The target is not touched: the result still points into the original target image.

    Args:
        flow: ``(2, H, W)`` src->trg flow in pixels, ``(x, y)`` order, ``p_trg = p_src + flow``,
            on the mirrored source's grid. ``NaN`` (unknown) stays ``NaN`` at the mirrored pixel.

    Returns:
        ``(2, H, W)`` the same correspondences on the original source grid (floating point: an
        integer input is returned as float32).

    Example:
        >>> unmirror_source_flow(torch.zeros(2, 1, 4))[0]
        tensor([[ 3.,  1., -1., -3.]])
    """
    check_tensor(flow, "flow")
    w = check_shape(flow, (2, "H", "W"), "flow")["W"]
    if not flow.is_floating_point():
        flow = flow.float()
    back = flow.flip(-1)  # back[:, y, x] = flow[:, y, W - 1 - x]
    x = torch.arange(w, dtype=flow.dtype, device=flow.device)
    return torch.stack([(w - 1) - 2 * x + back[0], back[1]])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _tss_pairs(rows: list[dict]) -> tuple[int, int]:
    """Numbers of pairs and of flipped pairs (``flip`` = 1) among the kit's rows."""
    pairs = {(r.get("subset"), r["pair"]): int(r["flip"]) for r in rows}
    return len(pairs), sum(pairs.values())


def _tss_subset_entry(rows: list[dict]) -> dict:
    """``per_subset`` entry of :class:`TSSResult` for one subset's (non-empty) rows."""
    plain = [r for r in rows if int(r["flip"]) == 0]
    n_pairs, n_flipped = _tss_pairs(rows)
    return {
        "PCK@0.05": float(sum(r["T5"] for r in rows) / len(rows)),
        "PCK@0.05 w/o flip": float(sum(r["T5"] for r in plain) / len(plain)) if plain else None,
        "IoU": float(sum(r["seg_iou"] for r in rows) / len(rows)),
        "rows": len(rows),
        "pairs": n_pairs,
        "flipped pairs": n_flipped,
    }


@dataclass
class TSSResult:
    """Outcome of :func:`evaluate_tss`: the kit's rows, per-subset means, wall time, and where
    this run's flows are (``flows_dir``, None when they went to a temporary folder).

    The official kit (``EvalToolMATLAB/RunEvaluation.m``) labels the rows of flipped pairs
    (``flip_gt.txt`` = 1) and reports two means: ``Average`` over all rows and ``w/o flip`` over
    the rows of pairs with flip 0. Both are here, overall (:attr:`mean_accuracy`,
    :attr:`mean_accuracy_without_flip`) and per subset, with the counts behind them.

    Attributes:
        method: the method's name.
        rows: the kit's rows, two flow fields per pair (:func:`corrlib.metrics.evaluate_tss_results`
            plus ``subset``); ``flip`` is the pair's ``flip_gt.txt``.
        per_subset: ``{subset: {"PCK@0.05": Average (T5 over all rows), "PCK@0.05 w/o flip":
            T5 over flip-0 rows (None without one), "IoU": mean mask IoU, "rows": flow fields,
            "pairs": pairs, "flipped pairs": pairs with flip 1}}``, subsets with rows only.
        seconds: wall time.
        csv: ``{subset: the kit's scores.csv text}`` (its last lines: ``Average``, ``w/o flip``).
        flows_dir: ``<out_dir>/<run_id>``, None when the flows went to a temporary folder.
        run_id: the name of this run's flow folder.
        flip: how flipped pairs were treated: ``"mirror-source"`` (the source of each direction
            mirrored before matching, the flow carried back) or ``"none"`` (the kit's raw scores).
    """

    method: str
    rows: list[dict] = field(repr=False)
    per_subset: dict
    seconds: float
    csv: dict = field(repr=False, default_factory=dict)
    flows_dir: Path | None = None
    run_id: str | None = None
    flip: str = "mirror-source"

    @property
    def mean_accuracy(self) -> float:
        """The kit's ``Average``: mean flow accuracy over all rows at its T5 threshold (0.05 x the
        longer side of the image the flow points into); NaN without rows."""
        vals = [r["T5"] for r in self.rows]
        return sum(vals) / len(vals) if vals else float("nan")

    @property
    def mean_accuracy_without_flip(self) -> float | None:
        """The kit's ``w/o flip``: mean T5 over the rows of pairs with flip 0 (None if none)."""
        vals = [r["T5"] for r in self.rows if int(r["flip"]) == 0]
        return sum(vals) / len(vals) if vals else None

    @property
    def n_flow_fields(self) -> int:
        """Number of scored flow fields (rows; two per pair)."""
        return len(self.rows)

    @property
    def n_pairs(self) -> int:
        """Number of scored pairs (over all subsets)."""
        return _tss_pairs(self.rows)[0]

    @property
    def n_flipped_pairs(self) -> int:
        """Number of scored pairs whose ``flip_gt.txt`` holds 1."""
        return _tss_pairs(self.rows)[1]

    def summary(self) -> str:
        """One line for humans: the kit's ``Average`` and ``w/o flip`` T5 with what they cover,
        e.g. ``TSS PCK@0.05 0.512 (Average over 6 flow fields of 3 pairs; 1 flipped pair,
        source mirrored) · w/o flip 0.634 (4 flow fields of 2 pairs)``."""
        n_pairs, n_flipped = _tss_pairs(self.rows)
        if n_flipped == 0:
            flips = "no flipped pair"
        elif self.flip == "mirror-source":
            flips = f"{_plural(n_flipped, 'flipped pair')}, source mirrored"
        else:
            flips = (
                f"{_plural(n_flipped, 'flipped pair')}, flip pairs not handled (kit's raw scores)"
            )
        line = (
            f"TSS PCK@0.05 {self.mean_accuracy:.3f} (Average over "
            f"{_plural(self.n_flow_fields, 'flow field')} of {_plural(n_pairs, 'pair')}; {flips})"
        )
        plain = [r for r in self.rows if int(r["flip"]) == 0]
        if not plain:
            return line + " · w/o flip n/a (no pair without flip)"
        n_plain = _tss_pairs(plain)[0]
        return (
            f"{line} · w/o flip {self.mean_accuracy_without_flip:.3f} "
            f"({_plural(len(plain), 'flow field')} of {_plural(n_plain, 'pair')})"
        )


def evaluate_tss(
    method: CorrespondenceMethod | str,
    data_root=None,
    out_dir=None,
    *,
    subsets=("FG3DCar", "JODS", "PASCAL"),
    limit: int | None = None,
    progress: bool = True,
    method_kwargs: dict | None = None,
    run_id: str | None = None,
    flip: str = "mirror-source",
) -> TSSResult:
    """Predict dense flow both ways for TSS pairs and score them as the official kit does.

    Each call writes its flows into a folder of its own, in the kit's input layout::

        <out_dir>/<run_id>/<subset>/<pair>/flow1.flo, flow2.flo   (and <subset>/scores.csv)

    and scores only that folder with :func:`corrlib.metrics.evaluate_tss_results`, so flows left
    in ``out_dir`` by an earlier run, or written there by a concurrent one, are never read. The
    folder is filled as ``<out_dir>/.tmp-<run_id>`` and renamed to ``<run_id>`` once every
    subset is scored (a ``<run_id>`` folder is always complete); on an error it is removed.
    Masks are derived from forward-backward consistency (the kit's rule when a method predicts
    none). ``limit`` caps the number of pairs per subset.

    Flipped pairs (``flip_gt.txt`` = 1: the objects face opposite ways, the ground truth maps
    across the mirror). With ``flip="mirror-source"`` (the default, the published practice) the
    source of each direction of such a pair is mirrored left-right before matching
    (``method.flow(src.flip(-1), trg, src_key=src_key + "#mirrored", trg_key=trg_key)``) and the
    flow is carried back onto the original source grid with :func:`unmirror_source_flow`, so the
    written flows and the scores are on the original images. This is what weakalign does with
    the ``flip_img_A`` column of its ``test_pairs_tss.csv``; DenseMatching's
    ``--flipping_condition True`` mirrors the same image (the one its flow lives on) but picks
    the orientation itself rather than reading ``flip_gt.txt``. ``flip="none"`` matches the
    images as they are: the kit's raw scoring, where such pairs score near 0. The kit
    (``EvalToolMATLAB/RunEvaluation.m``) only labels flipped rows and reports both ``Average``
    (all rows) and ``w/o flip`` (rows with flip 0); both are in the result.

    Args:
        method: a :class:`CorrespondenceMethod` with a dense ``flow(src_img (3, Hs, Ws),
            trg_img (3, Ht, Wt)) -> (2, Hs, Ws)`` (src->trg on the source grid, in pixels), or
            the name of a registered one (built with ``method_kwargs``).
        data_root: the folder that holds ``TSS/TSS_CVPR2016`` (None: ``$CORRLIB_DATA``).
        out_dir: the folder under which this run's flow folder is made (None: a temporary
            folder, deleted afterwards).
        subsets: the TSS subsets evaluated (:data:`corrlib.data.TSS_SUBSETS`).
        limit: pairs per subset, from the first (None: all); both directions of a pair count once.
        progress: show a progress bar.
        method_kwargs: keyword arguments of the method's factory, when ``method`` is a name.
        run_id: the name of this run's folder (None: :func:`new_run_id`); ``ValueError`` if
            ``<out_dir>/<run_id>`` exists already.
        flip: how pairs with ``flip_gt.txt`` = 1 are matched: ``"mirror-source"`` (mirror the
            source, carry the flow back) or ``"none"`` (as they are; the kit's raw scores).

    Returns:
        A :class:`TSSResult`: ``rows`` (two per pair, the keys of
        :func:`corrlib.metrics.evaluate_tss_results` plus ``subset``), ``per_subset``
        (``{subset: {"PCK@0.05": Average over all rows, "PCK@0.05 w/o flip": mean over flip-0
        rows or None, "IoU": ..., "rows": flow fields, "pairs": ..., "flipped pairs": ...}}``,
        only subsets with rows), ``seconds`` (wall time), ``csv`` (``{subset: scores.csv
        text}``, ending with the kit's ``Average`` and ``w/o flip`` lines), ``flows_dir``
        (``<out_dir>/<run_id>``, None without ``out_dir``), ``run_id`` and ``flip``; overall
        means in :attr:`TSSResult.mean_accuracy` and :attr:`TSSResult.mean_accuracy_without_flip`,
        one line in :meth:`TSSResult.summary`.

    Raises:
        ValueError: if ``limit`` is not None or an int >= 1, ``flip`` is not one of
            ``"mirror-source"``, ``"none"``, or no pair was found to evaluate.
    """
    check_choice(flip, "flip", TSS_FLIP_HANDLING)
    if limit is not None:
        check_int(limit, "limit", 1)
    run_id = _check_run_id(run_id) if run_id is not None else new_run_id()
    if isinstance(method, str):
        method = get_method(method, **(method_kwargs or {}))
    root = resolve_data_root(data_root)
    tmp = tempfile.TemporaryDirectory() if out_dir is None else None
    parent = Path(tmp.name if tmp is not None else out_dir)
    final, staging = parent / run_id, parent / f".tmp-{run_id}"
    if final.exists() or staging.exists():
        raise ValueError(f"{final} exists already: pass another run_id (or none).")
    staging.mkdir(parents=True)
    try:
        t0 = time.perf_counter()
        rows, per_subset, csvs, n_flows = [], {}, {}, 0
        for subset in subsets:
            ds = TSS(root, subsets=(subset,))
            items = iter_tss(ds, limit)
            (staging / subset).mkdir()
            for s, key_a, key_b in tqdm(
                items, desc=f"{method.name} on TSS/{subset}", disable=not progress, leave=False
            ):
                if s["flip"] and flip == "mirror-source":
                    key = None if key_a is None else f"{key_a}#mirrored"
                    mirrored = method.flow(
                        s["src_img"].flip(-1), s["trg_img"], src_key=key, trg_key=key_b
                    )
                    flow = unmirror_source_flow(mirrored)
                else:
                    flow = method.flow(s["src_img"], s["trg_img"], src_key=key_a, trg_key=key_b)
                name = "flow1.flo" if s["direction"] == "1to2" else "flow2.flo"
                d = staging / subset / s["pair"]
                d.mkdir(exist_ok=True)
                write_flo(d / name, flow.permute(1, 2, 0).cpu().numpy())
                n_flows += 1
            gt_dir = root / "TSS" / "TSS_CVPR2016" / subset
            sub_rows = evaluate_tss_results(staging / subset, gt_dir)
            for r in sub_rows:
                r["subset"] = subset
            rows += sub_rows
            csvs[subset] = tss_scores_csv(sub_rows)
            (staging / subset / "scores.csv").write_text(csvs[subset])
            if sub_rows:
                per_subset[subset] = _tss_subset_entry(sub_rows)
        if n_flows == 0:
            raise ValueError(
                f"TSS: no pair to evaluate in subsets {list(subsets)} under "
                f"{root / 'TSS' / 'TSS_CVPR2016'}."
            )
        seconds = time.perf_counter() - t0
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if tmp is not None:
            tmp.cleanup()
    flows_dir = final if tmp is None else None
    return TSSResult(method.name, rows, per_subset, seconds, csvs, flows_dir, run_id, flip)


#: The official test sets' sizes in pairs, per dataset class: ``(display name, pairs)``. A number
#: on fewer pairs is on a subset and is never set beside a published one. Sources: PF-WILLOW 900
#: pairs (Ham et al. CVPR 2016, 10 sub-classes x 90 ordered pairs), PF-PASCAL test 299 (the
#: SCNet/NC-Net list), SPair-71k test 12,234 (Min et al. 2019), TSS 400 (Taniai et al. CVPR 2016).
FULL_TEST_PAIRS = {
    "PFWillow": ("PF-WILLOW", 900),
    "PFPascal": ("PF-PASCAL", 299),
    "SPair71k": ("SPair-71k", 12234),
    "TSS": ("TSS", 400),
}


def _protocol_text(name: str) -> str:
    p = get_protocol(name)
    return (
        f"{p.name}: alpha * {p.normalizer}, {p.direction}, {p.aggregation}, {p.resolution} "
        "resolution"
    )


def result_rows(
    results,
    *,
    chapter: str,
    method: str,
    preset: str,
    alphas=None,
    baseline: bool = False,
    published: dict | None = None,
    note: str | None = None,
) -> list[dict]:
    """Dashboard rows (:func:`corrlib.series.record_results`) of one method's result(s).

    Args:
        results: a :class:`KeypointResult` or :class:`TSSResult`, or a list of them (one per
            seed, same benchmark and pairs): the value is then the mean over seeds, ``spread``
            its standard error and ``seeds`` their number (:func:`corrlib.stats.mean_sem`).
        chapter, method, preset: the row's labels (``method``: the table's row name).
        alphas: the PCK thresholds reported (None: all of the protocol's; keypoint results).
        baseline: the row margins are measured against (the identity baseline).
        published: ``{metric: (value, source)}``: a published number for that metric, given only
            when protocol and pair set are the published ones (the dashboard also refuses it on
            a subset).
        note: a short qualifier shown by the dashboard.

    Returns:
        One row per metric: keypoint results give ``PCK@<alpha>``; TSS gives ``PCK@0.05`` (the
        kit's ``Average``) and ``PCK@0.05 w/o flip``. Each row has ``n`` (pairs), ``n_unit``,
        ``n_full`` (the official test set's pairs, None for another split) and the protocol.

    Raises:
        ValueError: if the results differ in benchmark, protocol or pairs, or the list is empty.
    """
    from corrlib.stats import mean_sem

    many = isinstance(results, (list, tuple))
    group = list(results) if many else [results]
    if not group:
        raise ValueError("result_rows: no result given.")
    first = group[0]
    tss = isinstance(first, TSSResult)
    if tss:
        keys = {(type(r).__name__, r.flip, r.n_pairs, r.n_flow_fields) for r in group}
    else:
        keys = {(type(r).__name__, r.dataset, r.protocol, r.n_pairs, r.split) for r in group}
    if len(keys) != 1:
        raise ValueError(
            f"result_rows: the results of '{method}' differ in benchmark, protocol or pairs "
            f"({sorted(map(str, keys))}); one row averages seeds of one evaluation only."
        )
    if tss:
        dataset, n_full = "TSS", FULL_TEST_PAIRS["TSS"][1]
        protocol = "tss: official kit T5 = alpha 0.05 * max(H, W), both directions, flip pairs " + (
            "mirrored" if first.flip == "mirror-source" else "not handled"
        )
        metrics = {
            "PCK@0.05": [r.mean_accuracy for r in group],
            "PCK@0.05 w/o flip": [r.mean_accuracy_without_flip for r in group],
        }
        n = first.n_pairs
    else:
        dataset, n_full = FULL_TEST_PAIRS.get(first.dataset, (first.dataset, None))
        if first.split not in (None, "test"):
            n_full = None
        protocol = _protocol_text(first.protocol)
        use = alphas if alphas is not None else get_protocol(first.protocol).alphas
        metrics = {f"PCK@{a:g}": [r.pck(a) for r in group] for a in use}
        n = first.n_pairs
    rows = []
    for metric, values in metrics.items():
        if any(v is None for v in values):
            continue  # e.g. no TSS pair without flip among these
        mean, se = mean_sem(values)
        pub_value, pub_source = (published or {}).get(metric, (None, None))
        rows.append(
            {
                "chapter": chapter,
                "method": method,
                "dataset": dataset,
                "metric": metric,
                "value": mean,
                "protocol": protocol,
                "preset": preset,
                "published": pub_value,
                "published_source": pub_source,
                "n": n,
                "n_unit": "pairs",
                "n_full": n_full,
                "baseline": baseline,
                "note": note,
                "spread": se if many else None,
                "seeds": len(group) if many else None,
            }
        )
    return rows


# ------------------------------------------------------------------ synthetic pairs, mask transfer


@torch.no_grad()
def evaluate_pairs(
    method: CorrespondenceMethod,
    pool: PairPool,
    n_points: int = 128,
    alphas=(0.05, 0.1),
    *,
    seed: int = 0,
) -> dict:
    """Matching accuracy of ``method`` on pairs with exact ground truth (held-out warps).

    ``n_points`` source pixels with a valid flow per pair (drawn with ``seed``) are transferred
    with ``method.match``; a prediction is correct within ``alpha * max(H, W)`` pixels.
    ``random_pck`` scores uniform random predictions on the same points (chance level).

    Args:
        method: a :class:`CorrespondenceMethod` (``match`` takes ``(3, H, W)`` images in
            ``[0, 1]`` and ``(n_points, 2)`` pixels).
        pool: pairs with exact flows (:class:`corrlib.data.PairPool`); only src->trg is scored.
        n_points: source pixels per pair, drawn among those with a valid flow.
        alphas: PCK thresholds, as fractions of ``max(H, W)``.
        seed: the seed of the points and of the random predictions.

    Returns:
        ``{"points": int, "mean_error_px": float, "pck@<alpha>": float,
        "random_pck@<alpha>": float, ...}`` (one pair of keys per alpha, ``f"{alpha:g}"``),
        errors in target pixels and PCKs in ``[0, 1]``.
    """
    g = torch.Generator().manual_seed(seed)
    h, w = pool.size
    errs, rand_errs = [], []
    for i in range(len(pool)):
        a, b, flow, valid = pool.pair(i)
        p = sample_valid_pixels(valid, n_points, g)
        gt = p + flow[:, p[:, 1].long(), p[:, 0].long()].T
        pred = method.match(a, b, p, src_key=None, trg_key=None)
        errs.append((pred.cpu() - gt).norm(dim=-1))
        rnd = torch.rand(n_points, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
        rand_errs.append((rnd - gt).norm(dim=-1))
    err, rerr = torch.cat(errs), torch.cat(rand_errs)
    out = {"points": int(err.numel()), "mean_error_px": float(err.mean())}
    for alpha in alphas:
        t = alpha * max(h, w)
        out[f"pck@{alpha:g}"] = float((err <= t).float().mean())
        out[f"random_pck@{alpha:g}"] = float((rerr <= t).float().mean())
    return out


@torch.no_grad()
def transfer_mask(
    method: CorrespondenceMethod,
    src_img: torch.Tensor,
    trg_img: torch.Tensor,
    trg_mask: torch.Tensor,
    *,
    src_key=None,
    trg_key=None,
) -> torch.Tensor:
    """The source's foreground predicted by warping the target's mask with ``method``'s flow.

    ``out(p) = M_t(p + F_st(p)) > 0.5`` (bilinear; outside the target: background): what SFNet's
    mask consistency compares with the source mask, and weakalign's label transfer.
    ``trg_mask (Ht, Wt)`` -> bool ``(Hs, Ws)``.

    Args:
        method: a :class:`CorrespondenceMethod` with a dense
            ``flow(src_img, trg_img) -> (2, Hs, Ws)`` (src->trg on the source grid, pixels).
        src_img: the source image ``(3, Hs, Ws)`` (uint8 or float in ``[0, 1]``, as the method
            takes it).
        trg_img: the target image ``(3, Ht, Wt)``.
        trg_mask: the target's foreground ``(Ht, Wt)`` (bool or 0/1).
        src_key, trg_key: the images' cache keys for the method (None: no caching).

    Returns:
        Bool ``(Hs, Ws)``: the predicted source foreground.
    """
    flow = method.flow(src_img, trg_img, src_key=src_key, trg_key=trg_key)
    return warp_by_flow(trg_mask.float()[None, None], flow[None].float())[0, 0] > 0.5
