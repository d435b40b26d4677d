"""Command line: ``corrlib eval``, ``corrlib train``, ``corrlib series``, ``corrlib grade``,
``corrlib methods`` (also ``python -m corrlib``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

__all__ = ["main"]

_EVAL_DESCRIPTION = """\
Evaluate a method on a benchmark (PCK, or the TSS kit's scores).

Output: --out holds the results of one run. A keypoint benchmark writes predictions.csv,
metrics.md and metrics.json; TSS writes metrics.md, metrics.json and the kit's flows and
scores.csv under flows/<run-id>/ (scored from that folder only). Every file is written
atomically and metrics.json last; it names the run (run_id) and is strict JSON (NaN -> null).

One run per --out: --out is checked before any work (a file, a path under a file or a folder
that cannot be written is refused), is locked while the run lasts (a second run into the same
--out stops at once with an error), and an --out that already holds another run's results
(metrics.json, metrics.md, predictions.csv or flows/) is refused unless --overwrite is given;
then the earlier results are replaced once this run has finished (they stay untouched if it
fails), so the folder never mixes two runs.
"""

_SERIES_DESCRIPTION = """\
Run the notebook series with papermill and build the results dashboard.

The dashboard (dashboard.md, dashboard.png, results.json) is built only from the metrics files
that the notebooks of this call wrote (<out>/metrics/<chapter>.json); metrics left in --out by
an earlier call are not merged, and the files used are printed. Each dashboard row shows its
preset. Executed notebooks go to <out>/notebooks/ and the notebooks keep their checkpoints
under <out>/checkpoints/ (where a later call into the same --out may reuse them).
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _add_data_root(p) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding PF-WILLOW/, TSS/, ... (default: $CORRLIB_DATA)",
    )


def _add_eval(sub):
    p = sub.add_parser(
        "eval",
        help="evaluate a method on a benchmark (PCK or the TSS kit's scores)",
        description=_EVAL_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--method", required=True, help="registered method name (see `corrlib methods`)")
    p.add_argument("--dataset", required=True, help="pf-willow, pf-pascal, spair-71k or tss")
    _add_data_root(p)
    p.add_argument(
        "--out",
        required=True,
        help="output folder of this run (created if missing; see above for what it holds)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier run in --out (refused without it)",
    )
    p.add_argument(
        "--split",
        default=None,
        help="dataset split (default: the benchmark's test split; not for tss)",
    )
    p.add_argument(
        "--protocol",
        default=None,
        help="PCK protocol name (default: the dataset's own; not for tss, scored by its kit)",
    )
    p.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        help="evaluate only the first N >= 1 pairs (per subset for tss)",
    )
    p.add_argument(
        "--max-side",
        type=_positive_int,
        default=None,
        help="resize images so the longer side is this (>= 1; methods that resize). Default: "
        "a learned method uses the setting its chapter evaluated with (recorded in the "
        "checkpoint), the others their own default; the method's name carries the resolution "
        "(daisy@160, daisy@original) and the first line printed says which setting was used",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="trained model file of a learned method (mccnn-fast, deepdesc, ucn, sfnet); "
        "other methods take none",
    )
    p.add_argument(
        "--tss-flip",
        default="mirror-source",
        choices=("mirror-source", "none"),
        help="TSS pairs with flip_gt = 1: mirror the source before matching and map the flow "
        "back (mirror-source, the published practice: weakalign) or score them as predicted "
        "(none, the kit's raw scores). Both of the kit's averages (Average, w/o flip) are "
        "reported either way",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


_TRAIN_DESCRIPTION = """\
Train one chapter's model at a preset, exactly as its notebook does, resumably.

Checkpoints go where the notebook keeps them, <out>/checkpoints/<chapter>/<preset>/seed<seed>/,
so the notebook run with out_dir=<out> (or `corrlib series --out <out>`) reuses them instead of
training again. `--set FIELD=VALUE` changes one config field, as a notebook's config_overrides
parameter does; such a run keeps its checkpoints in <preset>+<8 hex digits of the overrides>/,
with overrides.json beside them, so it never mixes with the preset's own run.

A killed or interrupted run resumes from its last checkpoint when the same command is given
again, and ends with the same parameters as an uninterrupted one. A checkpoint written with other
settings is refused (the error names the file and the fields). Two runs of the same model into the
same --out are refused while one is running.

Several processes (one per GPU, or CPU processes with gloo):

    torchrun --standalone --nproc_per_node=2 -m corrlib \\
        train --chapter 06_sfnet --preset paper --out runs

Every process draws the same global batch of each step and trains on its slice, with
DistributedDataParallel averaging the gradients: the run equals one process at the global batch
(tests/test_distributed.py checks it). Rank 0 writes the checkpoints and the exported model. The
global batch must split evenly between the processes; SCNet (one pair per step) runs on one
process.

The exported model (if the chapter's model is a correspondence method) is evaluated with the
`corrlib eval` command printed at the end.
"""


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train one chapter's model at a preset (resumable; torchrun for several processes)",
        description=_TRAIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--chapter", required=True, help="01_patch, 02_stn, ..., 07_multiscale")
    p.add_argument("--preset", required=True, help="smoke, lab or paper")
    p.add_argument(
        "--variant",
        default=None,
        help="which model of the chapter (default: its main one; an unknown name lists them)",
    )
    p.add_argument("--out", required=True, help="run folder (checkpoints under <out>/checkpoints)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change one config field (repeatable; VALUE a Python literal, else a string), as a "
        "notebook's config_overrides: e.g. --set data=pascal --set 'size=(320, 320)'",
    )
    _add_data_root(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _parse_sets(items: list[str]) -> dict:
    """``["FIELD=VALUE", ...]`` as ``{FIELD: value}``: VALUE read as a Python literal
    (:func:`ast.literal_eval`: numbers, strings, tuples, dicts, None, booleans), else kept as
    the string it is."""
    import ast

    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set {item!r}: write FIELD=VALUE, e.g. --set data=pascal.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        if name.strip() in out:
            raise ValueError(f"--set {name.strip()} is given twice; give each field once.")
        out[name.strip()] = value
    return out


def _finish_distributed(ok: bool) -> None:
    """Leave the process group (several processes only). After a success every rank waits for the
    others first; after an error it leaves at once (a barrier could wait forever for a rank that
    failed elsewhere)."""
    from corrlib import distributed

    if distributed.world_size() <= 1:
        return
    import gc

    import torch.distributed as dist

    gc.collect()  # DistributedDataParallel must be gone before its process group
    if ok:
        dist.barrier()
    dist.destroy_process_group()


def _run_train(args) -> int:
    from corrlib import distributed
    from corrlib.recipes import chapter_setup, chapters, recipe_for

    trainable = [c for c in chapters() if hasattr(recipe_for(c), "train_main")]
    if args.chapter not in trainable:
        raise ValueError(
            f"--chapter {args.chapter!r} has no model to train; choose one of {trainable}."
        )
    recipe = recipe_for(args.chapter)
    variant = args.variant or recipe.TRAINABLE[0]
    if variant not in recipe.TRAINABLE:
        raise ValueError(
            f"--variant {variant!r} is not a model of {args.chapter}; choose one of "
            f"{list(recipe.TRAINABLE)}."
        )
    distributed.init_from_env(args.device)
    main, world = distributed.is_main(), distributed.world_size()
    if world > 1 and args.chapter == "04_scnet":
        _finish_distributed(ok=True)
        raise ValueError(
            "--chapter 04_scnet trains one pair per step, which does not split between "
            "processes: run it on one process (without torchrun)."
        )
    ok = False
    try:
        run = chapter_setup(
            args.chapter,
            args.preset,
            data_root=args.data_root,
            device=args.device,
            seed=args.seed,
            out_dir=args.out,
            overrides=_parse_sets(args.set),
        )
        with contextlib.ExitStack() as stack:
            refusal = ""
            if main:
                run.ckpt_dir.mkdir(parents=True, exist_ok=True)
                try:
                    stack.enter_context(
                        _locked_out(
                            run.ckpt_dir,
                            f".corrlib-train-{variant}.lock",
                            "corrlib train run",
                            "folder ",
                        )
                    )
                except ValueError as e:
                    refusal = str(e)
            if world > 1:  # every rank stops when rank 0 could not take the lock
                import torch.distributed as dist

                shared = [refusal]
                dist.broadcast_object_list(shared, src=0)
                refusal = shared[0]
            if refusal:
                raise ValueError(refusal)
            if main:
                procs = f"{world} processes" if world > 1 else "1 process"
                print(
                    f"[train] {args.chapter} {variant} at {args.preset}, seed {args.seed}, on "
                    f"{run.device} ({procs}); checkpoints in {run.ckpt_dir}"
                )
            result = recipe.train_main(run, variant, progress=main and not args.no_progress)
        ok = True
    finally:
        _finish_distributed(ok)
    if main:
        rows = [r for r in result.history if "loss" in r]
        if rows:
            first, last = rows[0], rows[-1]
            print(
                f"[train] step {last['step']}: loss {first['loss']:.4g} (step {first['step']}) -> "
                f"{last['loss']:.4g}; {result.seconds:.1f} s in this call"
            )
        print(f"[train] checkpoint: {result.checkpoint}")
        if result.exported is not None:
            print(f"[train] exported: {result.exported}")
            print(
                f"[train] evaluate: corrlib eval --method {result.method} --checkpoint "
                f"{result.exported} --dataset pf-willow --out <folder>"
            )
    return 0


def _add_series(sub):
    p = sub.add_parser(
        "series",
        help="run the notebook series with papermill and build the results dashboard",
        description=_SERIES_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", required=True, help="smoke, lab or paper")
    p.add_argument(
        "--out", required=True, help="output folder (executed notebooks, metrics, dashboard)"
    )
    _add_data_root(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
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


def _add_grade(sub):
    p = sub.add_parser(
        "grade",
        help="run a student's notebook headless and report each exercise's verdict",
        description="Run a student's notebook with papermill (default preset: smoke) and read "
        "the verdict of every exercise check (pass, wrong, not attempted, no verdict). Writes "
        "grades.md and grades.json into --out and the executed copy beside them.",
    )
    p.add_argument("notebook", help="the student's .ipynb")
    p.add_argument("--out", required=True, help="folder for grades.md, grades.json and the copy")
    p.add_argument("--preset", default="smoke", help="smoke (default), lab or paper")
    p.add_argument("--data-root", default=None, help="the notebook's data_root parameter")
    p.add_argument(
        "--solutions",
        default=None,
        help="instructors: a file of reference solutions (instructor/solutions.py); each stub "
        "is replaced before grading and the solved copy is kept (the solution sheet)",
    )


def _run_grade(args) -> int:
    from corrlib.grading import grade_markdown, grade_notebook, write_grades

    grades, executed = grade_notebook(
        args.notebook,
        preset=args.preset,
        data_root=args.data_root,
        out_dir=args.out,
        solutions=args.solutions,
    )
    paths = write_grades(grades, args.out, Path(args.notebook).name)
    print(grade_markdown(grades, Path(args.notebook).name))
    print(f"wrote {paths['markdown']}, {paths['json']} and the executed copy {executed}")
    return 0


def _method_kwargs(args) -> dict:
    kw = (
        {"max_side": args.max_side}
        if args.max_side is not None and args.method != "identity"
        else {}
    )
    if args.checkpoint is not None:
        kw["checkpoint"] = args.checkpoint
    return kw


def _build_method(ev, args):
    """The method of ``--method``; errors of its construction (a checkpoint of another model or
    configuration, a bad option) become a ``ValueError`` that names the checkpoint."""
    try:
        return ev.get_method(args.method, **_method_kwargs(args))
    except (TypeError, KeyError, RuntimeError) as e:
        what = f" from --checkpoint {args.checkpoint}" if args.checkpoint else ""
        raise ValueError(
            f"Method '{args.method}' cannot be built{what}: {type(e).__name__}: {e}. "
            + (
                "The file does not hold what this method expects; pass a checkpoint exported "
                "for it."
                if args.checkpoint
                else "Check the options given to it."
            )
        ) from e


_LOCK_NAME = ".corrlib-eval.lock"
_RESULT_NAMES = ("metrics.json", "metrics.md", "predictions.csv", "flows")


@contextlib.contextmanager
def _locked_out(
    out: Path, name: str = _LOCK_NAME, what: str = "corrlib eval run", label: str = "--out "
):
    """Hold an exclusive lock on ``<out>/<name>`` (default ``.corrlib-eval.lock``) while one run
    writes ``out``.

    The lock is the operating system's (``flock``; ``msvcrt.locking`` on Windows), so it goes
    away with the process: a crashed run never leaves ``out`` locked.
    """
    path = out / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ValueError(f"--out {out} is not writable ({e.strerror or e}).") from None
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        try:
            holder = path.read_text().strip() or "unknown"
        except OSError:
            holder = "unknown"
        os.close(fd)
        raise ValueError(
            f"{label}{out} is in use by another {what} ({holder}); two runs cannot share it: "
            "wait for it to finish or pass another --out."
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()}, started {stamp}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _earlier_results(out: Path) -> list[str]:
    """The result files of another run in ``out`` (hidden leftovers of a killed run, such as
    ``flows/.tmp-<run-id>``, do not count; they are removed when this run succeeds)."""
    found = []
    for name in _RESULT_NAMES:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            if any(not q.name.startswith(".") for q in p.iterdir()):
                found.append(name)
        elif p.exists() or p.is_symlink():
            found.append(name)
    return found


def _describe_earlier(out: Path) -> str:
    try:
        meta = json.loads((out / "metrics.json").read_text())
        return f"run {meta.get('run_id', '?')}: {meta['method']} on {meta['dataset']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "an earlier run"


def _remove_earlier(out: Path, keep_flows: str | None) -> None:
    """Delete another run's results from ``out`` (metrics.json first: it marks a run as done)."""
    for name in ("metrics.json", "metrics.md", "predictions.csv"):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    flows = out / "flows"
    if flows.is_symlink() or flows.is_file():
        flows.unlink()
    elif flows.is_dir():
        for p in flows.iterdir():
            if p.name == keep_flows:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def _run_eval(args) -> int:
    from corrlib import eval as ev
    from corrlib._check import check_choice
    from corrlib.checkpoint import atomic_write_text
    from corrlib.data import resolve_data_root

    tss = args.dataset == "tss"
    if tss:
        given = [o for o, v in (("--split", args.split), ("--protocol", args.protocol)) if v]
        if given:
            raise ValueError(
                f"{' and '.join(given)} cannot be used with --dataset tss: TSS has one split (its "
                "test pairs) and is scored by its own evaluation kit's protocol (flow PCK@0.05 = "
                f"T5, mask IoU). Drop {' and '.join(given)}."
            )
    else:
        check_choice(args.dataset, "dataset", ev.DATASETS)
    root = resolve_data_root(args.data_root)
    out = ev.prepare_out_dir(args.out, "--out")
    with _locked_out(out):
        earlier = _earlier_results(out)
        if earlier and not args.overwrite:
            raise ValueError(
                f"--out {out} already holds the results of another run ({_describe_earlier(out)}; "
                f"{', '.join(earlier)}). Pass --overwrite to replace them, or choose another "
                "--out."
            )
        method = _build_method(ev, args)
        print(f"method {method.name}: {method.description or 'no description'}")
        run_id = ev.new_run_id()
        progress = not args.no_progress
        if tss:
            res = ev.evaluate_tss(
                method,
                root,
                out / "flows",
                limit=args.limit,
                progress=progress,
                run_id=run_id,
                flip=args.tss_flip,
            )
            _remove_earlier(out, keep_flows=run_id)
            lines = [
                "| subset | PCK@0.05 (Average) | PCK@0.05 (w/o flip) | IoU | pairs | flipped "
                "pairs | flow fields |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]

            def cell(v):
                return "n/a" if v is None else f"{v:.3f}"

            lines += [
                f"| {k} | {cell(v['PCK@0.05'])} | {cell(v['PCK@0.05 w/o flip'])} | "
                f"{cell(v['IoU'])} | {v['pairs']} | {v['flipped pairs']} | {v['rows']} |"
                for k, v in res.per_subset.items()
            ]
            summary = res.summary()
            atomic_write_text(
                out / "metrics.md",
                f"# {res.method} on TSS\n\nMethod: {method.description}\n\n"
                + "\n".join(lines)
                + f"\n\n{summary}\n\nWall time: {res.seconds:.1f} s\n",
            )
            meta = {
                "run_id": run_id,
                "method": res.method,
                "method_description": method.description,
                "dataset": "TSS",
                "protocol": "tss (official kit, PCK@0.05 = T5)",
                "flip_handling": res.flip,
                "seconds": round(res.seconds, 2),
                "per_subset": res.per_subset,
                "mean_pck@0.05": res.mean_accuracy,
                "mean_pck@0.05_without_flip": res.mean_accuracy_without_flip,
                "pairs": res.n_pairs,
                "flipped_pairs": res.n_flipped_pairs,
                "flow_fields": res.n_flow_fields,
                "flows": f"flows/{run_id}",
            }
            atomic_write_text(out / "metrics.json", ev.strict_json(meta) + "\n")
            print("\n".join(lines))
            print(summary)
            print(
                f"wall time {res.seconds:.1f} s; flows and the kit's scores.csv in {res.flows_dir}"
            )
            return 0
        ds = ev.load_dataset(args.dataset, root, args.split)
        protocol = args.protocol or ev.DATASETS[args.dataset][1]
        res = ev.evaluate_keypoints(method, ds, protocol, limit=args.limit, progress=progress)
        _remove_earlier(out, keep_flows=None)
        paths = ev.write_keypoint_result(res, out, run_id=run_id)
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
    """Entry point of the ``corrlib`` command.

    Returns the exit status: 0 on success, 2 for a usage or input error (the message, on
    stderr, names the option or file and what to do; argparse's own errors exit 2 too).
    """
    parser = argparse.ArgumentParser(prog="corrlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_eval(sub)
    _add_train(sub)
    _add_series(sub)
    _add_grade(sub)
    sub.add_parser("methods", help="list the registered methods")
    args = parser.parse_args(argv)
    from corrlib.data import DatasetNotFoundError
    from corrlib.series import SeriesError

    try:
        if args.command == "eval":
            return _run_eval(args)
        if args.command == "train":
            return _run_train(args)
        if args.command == "series":
            return _run_series(args)
        if args.command == "grade":
            return _run_grade(args)
        from corrlib.eval import available_methods

        print("\n".join(available_methods()))
        return 0
    except (DatasetNotFoundError, SeriesError, ValueError, FileNotFoundError) as e:
        print(f"corrlib {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
