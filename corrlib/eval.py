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
from corrlib._check import check_choice, check_int
from corrlib.checkpoint import atomic_write_text
from corrlib.data import TSS, iter_tss, resolve_data_root
from corrlib.flo import write_flo
from corrlib.methods import CorrespondenceMethod, available_methods, get_method, register_method
from corrlib.metrics import PCKEvaluator, evaluate_tss_results, get_protocol, tss_scores_csv

__all__ = [
    "DATASETS",
    "CorrespondenceMethod",
    "KeypointResult",
    "TSSResult",
    "available_methods",
    "evaluate_keypoints",
    "evaluate_tss",
    "get_method",
    "load_dataset",
    "new_run_id",
    "prepare_out_dir",
    "register_method",
    "strict_json",
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
    """Outcome of :func:`evaluate_keypoints`: metrics summary, per-keypoint rows, wall time."""

    method: str
    dataset: str
    protocol: str
    summary: dict
    rows: list[dict] = field(repr=False)
    seconds: float
    markdown: str = field(repr=False, default="")

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
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise ValueError(
            f"{type(dataset).__name__}: no pair to evaluate (the dataset has {len(dataset)} "
            "pairs); check its pair list or split."
        )
    rows = []
    t0 = time.perf_counter()
    for i in tqdm(
        range(n),
        desc=f"{method.name} on {type(dataset).__name__}",
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
        evaluator.add(
            pred, gt, category=s["category"], image_size=s[f"{b}_size"], bbox=s.get(f"{b}_bbox")
        )
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
        type(dataset).__name__,
        proto.name,
        evaluator.summary(),
        rows,
        seconds,
        evaluator.to_markdown(),
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
    atomic_write_text(paths["metrics"], strict_json(meta) + "\n")
    return paths


@dataclass
class TSSResult:
    """Outcome of :func:`evaluate_tss`: the kit's rows, per-subset means, wall time, and where
    this run's flows are (``flows_dir``, None when they went to a temporary folder)."""

    method: str
    rows: list[dict] = field(repr=False)
    per_subset: dict
    seconds: float
    csv: dict = field(repr=False, default_factory=dict)
    flows_dir: Path | None = None
    run_id: str | None = None

    @property
    def mean_accuracy(self) -> float:
        """Mean flow accuracy over all rows at the kit's T5 threshold (0.05 x the image's longer
        side)."""
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
    run_id: str | None = None,
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

    Returns:
        A :class:`TSSResult`: ``rows`` (two per pair, the keys of
        :func:`corrlib.metrics.evaluate_tss_results` plus ``subset``), ``per_subset``
        (``{subset: {"PCK@0.05": ..., "IoU": ..., "rows": n}}``, only subsets with rows),
        ``seconds`` (wall time), ``csv`` (``{subset: scores.csv text}``), ``flows_dir``
        (``<out_dir>/<run_id>``, None without ``out_dir``) and ``run_id``.

    Raises:
        ValueError: if ``limit`` is not None or an int >= 1, or no pair was found to evaluate.
    """
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
                per_subset[subset] = {
                    "PCK@0.05": sum(r["T5"] for r in sub_rows) / len(sub_rows),
                    "IoU": sum(r["seg_iou"] for r in sub_rows) / len(sub_rows),
                    "rows": len(sub_rows),
                }
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
    return TSSResult(method.name, rows, per_subset, seconds, csvs, flows_dir, run_id)
