"""Run the notebook series with papermill and gather every chapter's results into a dashboard.

Each notebook takes the parameters ``preset``, ``data_root``, ``device``, ``seed`` and ``out_dir``
and calls :func:`record_results` with its metrics; :func:`run_series` executes the notebooks in
order, collects ``<out>/metrics/*.json`` into ``<out>/results.json`` and draws ``dashboard.md``
and ``dashboard.png`` (each method's number beside the published one, protocol named).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from corrlib.presets import check_preset

__all__ = [
    "RESULT_FIELDS",
    "SeriesError",
    "build_dashboard",
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
    """A notebook of the series failed; the message names the notebook and the cell."""


def record_results(out_dir, chapter: str, rows: list[dict]) -> Path:
    """Write one chapter's result rows to ``<out_dir>/metrics/<chapter>.json`` (atomically).

    Every row needs the keys in :data:`RESULT_FIELDS`; ``value`` must be a number (NaN allowed).
    """
    clean = []
    for i, r in enumerate(rows):
        missing = [k for k in RESULT_FIELDS if k not in r]
        if missing:
            raise ValueError(
                f"Result row {i} of chapter {chapter} lacks keys {missing}; every row needs "
                f"{list(RESULT_FIELDS)}."
            )
        v = float(r["value"])
        clean.append({**r, "value": None if math.isnan(v) else v})
    path = Path(out_dir) / "metrics" / f"{chapter}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean, indent=1))
    os.replace(tmp, path)
    return path


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


def gather_results(out_dir) -> list[dict]:
    """All rows recorded under ``<out_dir>/metrics``, in chapter order."""
    rows = []
    for p in sorted((Path(out_dir) / "metrics").glob("*.json")):
        rows += json.loads(p.read_text())
    return rows


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
    rows: list[dict]
    out_dir: Path
    seconds: dict


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
    Raises :class:`SeriesError` naming the notebook and cell that failed.
    """
    import papermill as pm

    check_preset(preset)
    out = Path(out_dir).resolve()
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    nbs = find_notebooks(notebook_dir)
    if notebooks:
        nbs = [p for p in nbs if any(k in p.name for k in notebooks)]
        if not nbs:
            raise ValueError(
                f"No notebook matches {notebooks}; available: "
                f"{[p.name for p in find_notebooks(notebook_dir)]}."
            )
    if data_root is not None:
        data_root = str(Path(data_root).resolve())
    params = {
        "preset": preset,
        "data_root": data_root,
        "device": device,
        "seed": seed,
        "out_dir": str(out),
    }
    seconds = {}
    for nb in nbs:
        dest = out / "notebooks" / nb.name
        log(f"[series] {nb.name} at preset={preset} ...")
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
        seconds[nb.name] = round(time.perf_counter() - t0, 1)
        log(f"[series] {nb.name} done in {seconds[nb.name]} s")
    rows = gather_results(out)
    build_dashboard(rows, out, preset=preset, seconds=seconds)
    return SeriesResult(rows, out, seconds)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def build_dashboard(
    rows: list[dict], out_dir, *, preset: str | None = None, seconds: dict | None = None
) -> dict[str, Path]:
    """Write ``results.json``, ``dashboard.md`` and ``dashboard.png`` under ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({"preset": preset, "seconds": seconds or {}, "rows": rows}, indent=1)
    )
    lines = [f"# Results dashboard (preset: {preset})", ""]
    if seconds:
        lines += (
            ["| notebook | seconds |", "|---|---|"]
            + [f"| {k} | {v} |" for k, v in seconds.items()]
            + [""]
        )
    lines += [
        "| chapter | dataset | metric | method | ours | published | protocol | published source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['chapter']} | {r['dataset']} | {r['metric']} | {r['method']} | "
            f"{_fmt(r['value'])} | {_fmt(r['published'])} | {r['protocol']} | "
            f"{r['published_source'] or '-'} |"
        )
    lines += [
        "",
        "Published numbers are quoted only with their source; a blank means none could be sourced.",
    ]
    (out / "dashboard.md").write_text("\n".join(lines) + "\n")

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
        ax.set_yticks(y, [f"{r['method']} (ch {r['chapter'][:2]})" for r in g], fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_title(f"{ds}: {metric}  [{proto}]", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"corrlib results (preset {preset})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(out / "dashboard.png", dpi=90)
    plt.close(fig)
    return {
        "json": out / "results.json",
        "markdown": out / "dashboard.md",
        "figure": out / "dashboard.png",
    }
