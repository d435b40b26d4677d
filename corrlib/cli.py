"""Command line: ``corrlib eval``, ``corrlib series``, ``corrlib methods`` (also
``python -m corrlib``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _add_eval(sub):
    p = sub.add_parser(
        "eval", help="evaluate a method on a benchmark (PCK or the TSS kit's scores)"
    )
    p.add_argument("--method", required=True, help="registered method name (see `corrlib methods`)")
    p.add_argument("--dataset", required=True, help="pf-willow, pf-pascal, spair-71k or tss")
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding PF-WILLOW/, TSS/, ... (default: $CORRLIB_DATA)",
    )
    p.add_argument("--out", required=True, help="output folder for predictions and metrics")
    p.add_argument(
        "--split", default=None, help="dataset split (default: the benchmark's test split)"
    )
    p.add_argument(
        "--protocol", default=None, help="PCK protocol name (default: the dataset's own)"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="evaluate only the first N pairs (per subset for tss)",
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="resize images so the longer side is this (hand-crafted methods)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="trained model file for learned methods (e.g. mccnn-fast, deepdesc from notebook 01)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_series(sub):
    p = sub.add_parser(
        "series", help="run the notebook series with papermill and build the results dashboard"
    )
    p.add_argument("--preset", required=True, help="smoke, lab or paper")
    p.add_argument(
        "--out", required=True, help="output folder (executed notebooks, metrics, dashboard)"
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding PF-WILLOW/, TSS/, ... (default: $CORRLIB_DATA)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--notebooks",
        nargs="*",
        default=None,
        help="only notebooks whose name contains one of these",
    )
    p.add_argument(
        "--notebooks-dir",
        default=None,
        help="where the NN_*.ipynb notebooks are (default: the repository's)",
    )


def _method_kwargs(args) -> dict:
    kw = (
        {"max_side": args.max_side}
        if args.max_side is not None and args.method != "identity"
        else {}
    )
    if args.checkpoint is not None:
        kw["checkpoint"] = args.checkpoint
    return kw


def _run_eval(args) -> int:
    from corrlib import eval as ev
    from corrlib.data import resolve_data_root

    root = resolve_data_root(args.data_root)
    method = ev.get_method(args.method, **_method_kwargs(args))
    if args.dataset == "tss":
        res = ev.evaluate_tss(
            method, root, Path(args.out) / "flows", limit=args.limit, progress=not args.no_progress
        )
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "method": res.method,
            "dataset": "TSS",
            "protocol": "tss (official kit, PCK@0.05 = T5)",
            "seconds": round(res.seconds, 2),
            "per_subset": res.per_subset,
            "mean_pck@0.05": res.mean_accuracy,
        }
        (out / "metrics.json").write_text(json.dumps(meta, indent=2))
        lines = ["| subset | PCK@0.05 | IoU | rows |", "|---|---|---|---|"]
        lines += [
            f"| {k} | {v['PCK@0.05']:.3f} | {v['IoU']:.3f} | {v['rows']} |"
            for k, v in res.per_subset.items()
        ]
        (out / "metrics.md").write_text(
            f"# {res.method} on TSS\n\n"
            + "\n".join(lines)
            + f"\n\nWall time: {res.seconds:.1f} s\n"
        )
        print("\n".join(lines))
        print(f"wall time {res.seconds:.1f} s; flows and the kit's scores.csv in {out / 'flows'}")
        return 0
    ds = ev.load_dataset(args.dataset, root, args.split)
    protocol = args.protocol or ev.DATASETS[args.dataset][1]
    res = ev.evaluate_keypoints(
        method, ds, protocol, limit=args.limit, progress=not args.no_progress
    )
    paths = ev.write_keypoint_result(res, args.out)
    print(res.markdown)
    print(f"wall time {res.seconds:.1f} s; wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _run_series(args) -> int:
    from corrlib.series import run_series

    res = run_series(
        args.preset,
        args.out,
        data_root=args.data_root,
        device=args.device,
        seed=args.seed,
        notebooks=args.notebooks,
        notebook_dir=args.notebooks_dir,
    )
    print(
        f"[series] {len(res.rows)} result rows; dashboard: {res.out_dir / 'dashboard.md'} and "
        "dashboard.png"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``corrlib`` command."""
    parser = argparse.ArgumentParser(prog="corrlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_eval(sub)
    _add_series(sub)
    sub.add_parser("methods", help="list the registered methods")
    args = parser.parse_args(argv)
    from corrlib.data import DatasetNotFoundError
    from corrlib.series import SeriesError

    try:
        if args.command == "eval":
            return _run_eval(args)
        if args.command == "series":
            return _run_series(args)
        from corrlib.eval import available_methods

        print("\n".join(available_methods()))
        return 0
    except (DatasetNotFoundError, SeriesError, ValueError, FileNotFoundError) as e:
        print(f"corrlib {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
