"""Run the notebook series with papermill and gather every chapter's results into a dashboard.

Each notebook takes the parameters ``preset``, ``data_root``, ``device``, ``seed`` and ``out_dir``
and calls :func:`record_results` with its metrics; :func:`run_series` executes the notebooks in
order, collects the ``<out>/metrics/<chapter>.json`` files that *these* notebooks wrote (never
files left by an earlier call) into ``<out>/results.json`` and draws ``dashboard.md`` and
``dashboard.png`` (each method's number beside the published one, protocol and preset named).
Every file is written atomically (temporary file in the same folder, then ``os.replace``) and
the JSON files are strict JSON (NaN and infinities are ``null``).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from corrlib.checkpoint import atomic_open, atomic_write_text
from corrlib.presets import check_preset

__all__ = [
    "RESULT_FIELDS",
    "SeriesError",
    "build_dashboard",
    "check_device",
    "find_notebooks",
    "gather_results",
    "record_results",
    "run_series",
]

#: Keys of one result row. ``published``/``published_source`` may be None (no sourced number).
RESULT_FIELDS = (
    "chapter",
    "method",
    "dataset",
    "metric",
    "value",
    "protocol",
    "preset",
    "published",
    "published_source",
)

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


class SeriesError(RuntimeError):
    """A notebook of the series failed; the message names the notebook, the cell when known, and
    the executed copy."""


def _finite(o):
    """``o`` with every non-finite float (anywhere in lists and dicts) replaced by None."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json(obj) -> str:
    return json.dumps(_finite(obj), indent=1, allow_nan=False, default=str) + "\n"


def record_results(out_dir, chapter: str, rows: list[dict]) -> Path:
    """Write one chapter's result rows to ``<out_dir>/metrics/<chapter>.json`` (atomically).

    Every row needs the keys in :data:`RESULT_FIELDS`; ``value`` must be a number (NaN allowed,
    stored as ``null``, like any other non-finite number: the file is strict JSON).
    """
    clean = []
    for i, r in enumerate(rows):
        missing = [k for k in RESULT_FIELDS if k not in r]
        if missing:
            raise ValueError(
                f"Result row {i} of chapter {chapter} lacks keys {missing}; every row needs "
                f"{list(RESULT_FIELDS)}."
            )
        clean.append({**r, "value": float(r["value"])})
    path = Path(out_dir) / "metrics" / f"{chapter}.json"
    atomic_write_text(path, _json(clean))
    return path


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def check_device(device: str) -> str:
    """Raise ``ValueError`` unless ``device`` is ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or
    ``mps``; return it."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ValueError(
            f"Unknown device {device!r} (--device): pass auto, cpu, cuda, cuda:N (N a GPU index) "
            "or mps."
        )
    return device


def find_notebooks(notebook_dir=None) -> list[Path]:
    """The series' notebooks (``NN_*.ipynb``) in order."""
    d = Path(notebook_dir) if notebook_dir is not None else NOTEBOOK_DIR
    nbs = sorted(p for p in d.glob("[0-9][0-9]_*.ipynb"))
    if not nbs:
        raise FileNotFoundError(
            f"No notebooks named NN_*.ipynb in {d}; pass --notebooks-dir pointing at the "
            "repository's notebooks/."
        )
    return nbs


def gather_results(out_dir, files: Iterable | None = None) -> list[dict]:
    """Rows recorded under ``<out_dir>/metrics``, in chapter (file name) order.

    ``files``: read only these metrics files (paths, or names inside ``<out_dir>/metrics``);
    None reads every ``*.json`` there, whichever run wrote it.
    """
    d = Path(out_dir) / "metrics"
    paths = d.glob("*.json") if files is None else (d / Path(f).name for f in files)
    rows = []
    for p in sorted(paths, key=lambda q: q.name):
        try:
            rows += json.loads(p.read_text())
        except ValueError as e:
            raise ValueError(f"Metrics file {p} is not valid JSON ({e}); delete it.") from None
    return rows


def _metrics_state(out: Path) -> dict[str, tuple]:
    """``{file name: (inode, mtime_ns, size)}`` of ``<out>/metrics/*.json`` (to see what a
    notebook wrote: :func:`record_results` replaces a file, so its inode changes)."""
    state = {}
    for p in (out / "metrics").glob("*.json"):
        try:
            st = p.stat()
        except OSError:
            continue
        state[p.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return state


def _failed_cell(executed: Path, source: Path) -> str:
    """Locate the failing cell of ``executed`` by its position in the ``source`` notebook."""
    import nbformat

    try:
        ran = nbformat.read(executed, as_version=4)
        src = nbformat.read(source, as_version=4)
    except Exception:  # the executed copy may not exist
        return "an unknown cell"
    for cell in ran.cells:
        if any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
            index = next((i for i, c in enumerate(src.cells) if c.source == cell.source), None)
            first = cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ""
            where = f"cell {index + 1}" if index is not None else "a cell"
            return f"{where} of {len(src.cells)} (starting '{first}')"
    return "an unknown cell"


@dataclass
class SeriesResult:
    """Outcome of :func:`run_series`: the dashboard's rows, the output folder, seconds per
    notebook and the metrics files (this call's) the rows came from."""

    rows: list[dict]
    out_dir: Path
    seconds: dict
    metrics_files: list[Path] = field(default_factory=list)


def run_series(
    preset: str,
    out_dir,
    *,
    data_root=None,
    device: str = "auto",
    seed: int = 0,
    notebooks: list[str] | None = None,
    notebook_dir=None,
    log=print,
) -> SeriesResult:
    """Execute the notebooks at ``preset`` into ``<out_dir>/notebooks`` and build the dashboard.

    ``notebooks`` restricts the run to names containing one of the given strings (e.g. ``["00"]``).
    ``preset``, ``device`` and ``out_dir`` are checked before any notebook runs (``ValueError``).
    The dashboard holds only the rows of the metrics files that the notebooks of *this* call
    wrote (``<out_dir>/metrics/<chapter>.json`` created or replaced while they ran); files left
    by an earlier call into the same ``out_dir`` are not merged, and ``log`` names the files
    used. Raises :class:`SeriesError` naming the notebook, the cell (when known) and the
    executed copy if a notebook fails, its kernel dies, or it cannot be run at all.
    """
    import papermill as pm

    from corrlib.eval import prepare_out_dir

    check_preset(preset)
    check_device(device)
    out = prepare_out_dir(Path(out_dir).expanduser().resolve(), "--out")
    nbs = find_notebooks(notebook_dir)
    if notebooks:
        nbs = [p for p in nbs if any(k in p.name for k in notebooks)]
        if not nbs:
            raise ValueError(
                f"No notebook matches {notebooks}; available: "
                f"{[p.name for p in find_notebooks(notebook_dir)]}."
            )
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    if data_root is not None:
        data_root = str(Path(data_root).resolve())
    params = {
        "preset": preset,
        "data_root": data_root,
        "device": device,
        "seed": seed,
        "out_dir": str(out),
    }
    seconds, written = {}, {}
    for nb in nbs:
        dest = out / "notebooks" / nb.name
        log(f"[series] {nb.name} at preset={preset} ...")
        before = _metrics_state(out)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(
                str(nb),
                str(dest),
                parameters=params,
                cwd=str(nb.parent),
                progress_bar=False,
                kernel_name="python3",
            )
        except pm.PapermillExecutionError as e:
            raise SeriesError(
                f"Notebook {nb.name} failed in {_failed_cell(dest, nb)}: {e.ename}: {e.evalue}. "
                f"The executed copy with the traceback is {dest}."
            ) from None
        except Exception as e:  # a dead kernel, a broken notebook file, no kernel, ...
            why = str(e).strip().splitlines()[0] if str(e).strip() else "no message"
            hint = (
                " The kernel died: the notebook process crashed or was killed (often out of "
                "memory, or a crash in native code); run it alone to see where."
                if type(e).__name__ == "DeadKernelError"
                else ""
            )
            raise SeriesError(
                f"Notebook {nb.name} could not be run to the end ({type(e).__name__}: {why})."
                f"{hint} The executed copy, as far as it ran, is {dest}."
            ) from None
        seconds[nb.name] = round(time.perf_counter() - t0, 1)
        new = [n for n, st in _metrics_state(out).items() if before.get(n) != st]
        written.update({n: out / "metrics" / n for n in new})
        log(
            f"[series] {nb.name} done in {seconds[nb.name]} s; "
            + (f"recorded {', '.join(sorted(new))}" if new else "recorded no metrics")
        )
    files = [written[n] for n in sorted(written)]
    stale = sorted(set(_metrics_state(out)) - set(written))
    if stale:
        log(f"[series] not in the dashboard (left by an earlier call): {', '.join(stale)}")
    rows = gather_results(out, files)
    build_dashboard(rows, out, preset=preset, seconds=seconds, sources=[p.name for p in files])
    return SeriesResult(rows, out, seconds, files)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def build_dashboard(
    rows: list[dict],
    out_dir,
    *,
    preset: str | None = None,
    seconds: dict | None = None,
    sources: list[str] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``dashboard.md`` and ``dashboard.png`` under ``out_dir``.

    Each table row names its own preset (a row's ``preset``); the title names ``preset`` and,
    if the rows hold others, those too. ``sources``: the metrics files the rows came from,
    listed in both files. Every file is written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    presets = sorted({str(r.get("preset")) for r in rows} | ({preset} if preset else set()))
    title = ", ".join(presets) if presets else str(preset)
    atomic_write_text(
        out / "results.json",
        _json({"preset": preset, "seconds": seconds or {}, "sources": sources, "rows": rows}),
    )
    lines = [f"# Results dashboard (preset: {title})", ""]
    if sources is not None:
        lines += [
            "Built from this run's metrics files only: "
            + (", ".join(f"`metrics/{n}`" for n in sources) or "none")
            + ".",
            "",
        ]
    if seconds:
        lines += (
            ["| notebook | seconds |", "|---|---|"]
            + [f"| {k} | {v} |" for k, v in seconds.items()]
            + [""]
        )
    lines += [
        "| chapter | preset | dataset | metric | method | ours | published | protocol | "
        "published source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['chapter']} | {r.get('preset')} | {r['dataset']} | {r['metric']} | "
            f"{r['method']} | {_fmt(r['value'])} | {_fmt(r['published'])} | {r['protocol']} | "
            f"{r['published_source'] or '-'} |"
        )
    lines += [
        "",
        "Published numbers are quoted only with their source; a blank means none could be sourced.",
    ]
    atomic_write_text(out / "dashboard.md", "\n".join(lines) + "\n")

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["metric"], r["protocol"]), []).append(r)
    ncols = 1 if len(groups) <= 4 else 2
    items = list(groups.items()) or [(("-", "-", "-"), [])]
    nrows = -(-len(items) // ncols)
    heights = [
        0.9 + 0.22 * max(len(g) for _, g in items[r * ncols : (r + 1) * ncols])
        for r in range(nrows)
    ]
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(7 * ncols, sum(heights) + 0.6),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax in axes.flat[len(items) :]:
        ax.set_axis_off()
    for ax, ((ds, metric, proto), g) in zip(axes.flat, groups.items()):
        y = list(range(len(g)))
        ax.barh(y, [r["value"] or 0.0 for r in g], color="#4C72B0", label="ours")
        pub = [(yi, r["published"]) for yi, r in zip(y, g) if r["published"] is not None]
        if pub:
            ax.plot(
                [p for _, p in pub], [yi for yi, _ in pub], "D", color="#DD8452", label="published"
            )
            ax.legend(fontsize=6, loc="lower right")
        ax.set_yticks(
            y,
            [
                f"{r['method']} (ch {r['chapter'][:2]}"
                + (f", {r.get('preset')})" if len(presets) > 1 else ")")
                for r in g
            ],
            fontsize=7,
        )
        ax.set_xlim(0, 1)
        ax.set_title(f"{ds}: {metric}  [{proto}]", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"corrlib results (preset {title})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    with atomic_open(out / "dashboard.png") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    return {
        "json": out / "results.json",
        "markdown": out / "dashboard.md",
        "figure": out / "dashboard.png",
    }
