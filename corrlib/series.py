"""Run the notebook series with papermill and gather every chapter's results into a dashboard.

Each notebook takes the parameters ``preset``, ``data_root``, ``device``, ``seed``, ``out_dir``
and ``config_overrides`` (a sweep point: its checkpoints go to ``<preset>+<tag>/`` and its
metrics to ``<chapter>+<tag>.json``, :func:`corrlib.recipes.chapter_setup`) and calls
:func:`record_results` with its metrics; :func:`run_series` executes the notebooks in
order, collects the ``<out>/metrics/<chapter>.json`` files that *these* notebooks wrote (never
files left by an earlier call) into ``<out>/results.json`` and draws ``dashboard.md`` and
``dashboard.png``: a paper-style results table per benchmark (methods as rows, metrics as
columns, margins over the chapter's baseline on the same pairs, each row's preset and pair set,
published numbers only where protocol and pair set match) and a bar chart of the same.
Every file is written atomically (temporary file in the same folder, then ``os.replace``) and
the JSON files are strict JSON (NaN and infinities are ``null``).
"""

from __future__ import annotations

import json
import math
import numbers
import re
import textwrap
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corrlib.checkpoint import atomic_open, atomic_write_text
from corrlib.presets import check_preset

__all__ = [
    "LEGEND",
    "OPTIONAL_FIELDS",
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


#: Optional keys of a result row; a row without one is read with the default given here.
#:
#: * ``n`` (int >= 1 or None): how many items the number rests on (pairs, flow fields, patch
#:   pairs, digits, ...); None: not known.
#: * ``n_unit`` (str): what ``n`` counts: "pairs", "flow fields", "patch pairs", "digits", ...
#: * ``n_full`` (int >= 1 or None): the size of the benchmark's full official set under this
#:   protocol (PF-WILLOW 900 pairs, TSS 400 pairs, PF-PASCAL test 299 pairs); ``n < n_full``
#:   means the number is on a *subset*, and a published number is then not shown beside it.
#: * ``higher_is_better`` (bool): False for error rates (FPR95, test error, bad-pixel rates).
#: * ``baseline`` (bool): this row is the reference that the margins of its table are measured
#:   against (the identity baseline of a correspondence chapter), for rows of the same chapter
#:   and preset on the same pairs (same ``n``).
#: * ``note`` (str or None): a short qualifier shown in the table ("3 seeds, mean ± s.e.").
#: * ``spread`` (float >= 0 or None): the standard error of ``value`` over seeds.
#: * ``seeds`` (int >= 1 or None): how many seeds ``value`` averages.
OPTIONAL_FIELDS = {
    "n": None,
    "n_unit": "pairs",
    "n_full": None,
    "higher_is_better": True,
    "baseline": False,
    "note": None,
    "spread": None,
    "seeds": None,
}

_TEXT_FIELDS = ("chapter", "method", "dataset", "metric", "protocol", "preset")
_COUNT_FIELDS = ("n", "n_full", "seeds")
_FLAG_FIELDS = ("higher_is_better", "baseline")


def _real(x) -> float | None:
    """``x`` as a float if it is a real number (Python, NumPy, or a 0-dim array or tensor such
    as ``torch.tensor(0.5)``), else None; booleans are not numbers here."""
    if getattr(x, "ndim", None) == 0 and hasattr(x, "item") and not isinstance(x, numbers.Real):
        x = x.item()
    if isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)):
        return float(x)
    return None


def _check_row(r, where: str) -> dict:
    """``r`` checked against the row schema (:data:`RESULT_FIELDS`, :data:`OPTIONAL_FIELDS`),
    with numbers made plain Python ``float``/``int`` (non-finite ``published``/``spread`` become
    None); only the keys ``r`` has. ``ValueError`` names ``where`` and the offending key."""
    if not isinstance(r, dict):
        raise ValueError(f"{where} is a {type(r).__name__}, not a dict.")
    missing = [k for k in RESULT_FIELDS if k not in r]
    if missing:
        raise ValueError(f"{where} lacks keys {missing}; every row needs {list(RESULT_FIELDS)}.")
    unknown = [k for k in r if k not in RESULT_FIELDS and k not in OPTIONAL_FIELDS]
    if unknown:
        raise ValueError(
            f"{where} has unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)}; allowed keys: {list(RESULT_FIELDS)} "
            f"(required) and {list(OPTIONAL_FIELDS)} (optional)."
        )

    def bad(key, want):
        return ValueError(f"{where}: {key} must be {want}, got {r[key]!r}.")

    out = dict(r)
    for k in _TEXT_FIELDS:
        if not isinstance(r[k], str) or not r[k].strip():
            raise bad(k, "a non-empty string")
    for k in ("value", "published", "spread"):
        if k not in r or r[k] is None:
            continue
        out[k] = _real(r[k])
        if out[k] is None:
            raise bad(k, "a number or None")
        if k != "value" and not math.isfinite(out[k]):
            out[k] = None
    if out.get("spread") is not None and out["spread"] < 0:
        raise bad("spread", "a standard error (>= 0) or None")
    for k in _COUNT_FIELDS:
        if r.get(k) is None:
            continue
        if not isinstance(r[k], numbers.Integral) or isinstance(r[k], (bool, np.bool_)):
            raise bad(k, "a positive integer or None")
        out[k] = int(r[k])
        if out[k] < 1:
            raise bad(k, "a positive integer or None")
    if out.get("n") is not None and out.get("n_full") is not None and out["n"] > out["n_full"]:
        raise ValueError(f"{where}: n={out['n']} is more than the full set n_full={out['n_full']}.")
    for k in _FLAG_FIELDS:
        if k in r:
            if not isinstance(r[k], (bool, np.bool_)):
                raise bad(k, "True or False")
            out[k] = bool(r[k])
    if "n_unit" in r and (not isinstance(r["n_unit"], str) or not r["n_unit"].strip()):
        raise bad("n_unit", 'a non-empty string such as "pairs"')
    for k in ("note", "published_source"):
        if r.get(k) is not None and (not isinstance(r[k], str) or not r[k].strip()):
            raise bad(k, "a non-empty string or None")
    if out["published"] is not None and r["published_source"] is None:
        raise ValueError(
            f"{where}: published={r['published']!r} has no published_source; quote a number "
            "only with where it comes from (paper, table, protocol)."
        )
    return out


def record_results(out_dir, chapter: str, rows: list[dict]) -> Path:
    """Write one chapter's result rows to ``<out_dir>/metrics/<chapter>.json`` (atomically).

    Every row needs the keys in :data:`RESULT_FIELDS` and may have those in
    :data:`OPTIONAL_FIELDS`; any other key is refused. ``value`` must be a number or None (NaN
    allowed, stored as ``null``, like any other non-finite number: the file is strict JSON);
    ``published`` a number or None, and a number only with its ``published_source``. Raises
    ``ValueError`` naming the row and the key when a row breaks these rules (nothing is
    written then).
    """
    clean = [_check_row(r, f"Result row {i} of chapter {chapter}") for i, r in enumerate(rows)]
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


MINUS = "\N{MINUS SIGN}"

#: What each preset's numbers can be read as (one line per preset above the tables).
_PRESET_MEANING = {
    "smoke": "seconds, for CI: proves the code path runs, not what a method achieves",
    "lab": "a laptop CPU in minutes, on real data: meaningful, but smaller than the papers' runs",
    "paper": "a GPU with the papers' hyperparameters and data",
}

LEGEND = (
    "Margins (in parentheses) are over the row marked baseline (the identity baseline in the "
    "correspondence chapters) of the same chapter and preset on the same pairs; "
    "a difference smaller than two standard errors (where a spread is given) is not evidence. "
    "Published numbers are shown only where protocol and pair set match."
)


def _num(v: float) -> str:
    """``v`` with 3 decimals and a true minus sign (U+2212)."""
    return f"{v:.3f}".replace("-", MINUS)


def _signed(v: float) -> str:
    """``v`` with 3 decimals and its sign (``+0.125``, ``−0.125``; ``0.000`` when it rounds to
    zero)."""
    s = f"{v:+.3f}"
    return "0.000" if float(s) == 0 else s.replace("-", MINUS)


def _md(text) -> str:
    """``text`` safe inside a markdown table cell (pipes escaped, one line)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _view(r: dict) -> dict:
    """A checked row with every optional field (defaults filled) and ``value`` None when it is
    not a finite number."""
    v = {**OPTIONAL_FIELDS, **r}
    if v["value"] is not None and not math.isfinite(v["value"]):
        v["value"] = None
    return v


def _subset(r: dict) -> bool:
    return r["n"] is not None and r["n_full"] is not None and r["n"] < r["n_full"]


def _pairs(r: dict) -> str:
    """The pair-set text of a row: ``450 of 900 pairs (subset)``, ``900 pairs (full set)``,
    ``450 pairs``, or ``-`` (unknown)."""
    if r["n"] is None:
        return "-"
    if _subset(r):
        return f"{r['n']} of {r['n_full']} {r['n_unit']} (subset)"
    full = " (full set)" if r["n_full"] is not None else ""
    return f"{r['n']} {r['n_unit']}{full}"


@dataclass
class _Line:
    """One method row of a benchmark table: its (chapter, method, preset) and a row per
    metric."""

    chapter: str
    method: str
    preset: str
    cells: dict = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        return any(c["baseline"] for c in self.cells.values())

    def label(self) -> str:
        return f"{self.method} (ch {self.chapter[:2]}, {self.preset})"


@dataclass
class _Benchmark:
    """The rows of one (dataset, protocol): method lines, metric columns, baselines, and the
    published-only rows (numbers quoted from the literature, not run here)."""

    dataset: str
    protocol: str
    metrics: list = field(default_factory=list)
    lower: dict = field(default_factory=dict)
    lines: list = field(default_factory=list)
    baselines: dict = field(default_factory=dict)
    quoted: list = field(default_factory=list)

    def baseline_of(self, r: dict) -> dict | None:
        """The baseline row ``r``'s margin is measured against (same chapter, preset, metric and
        pairs), or None (also for the baseline row itself)."""
        b = self.baselines.get((r["chapter"], r["preset"], r["metric"], r["n"]))
        return None if b is None or b is r else b


def _benchmarks(rows: list[dict]) -> list[_Benchmark]:
    """``rows`` (checked views) grouped into benchmark tables, in order of first appearance."""
    out: dict[tuple, _Benchmark] = {}
    for r in rows:
        b = out.setdefault((r["dataset"], r["protocol"]), _Benchmark(r["dataset"], r["protocol"]))
        if r["value"] is None and r["published"] is not None:
            b.quoted.append(r)
            continue
        if r["metric"] not in b.metrics:
            b.metrics.append(r["metric"])
            b.lower[r["metric"]] = not r["higher_is_better"]
        key = (r["chapter"], r["method"], r["preset"])
        line = next(
            (
                ln
                for ln in b.lines
                if (ln.chapter, ln.method, ln.preset) == key and r["metric"] not in ln.cells
            ),
            None,
        )
        if line is None:
            line = _Line(*key)
            b.lines.append(line)
        line.cells[r["metric"]] = r
        if r["baseline"] and r["value"] is not None:
            b.baselines.setdefault((r["chapter"], r["preset"], r["metric"], r["n"]), r)
    return list(out.values())


def _value_text(b: _Benchmark, r: dict | None) -> str:
    if r is None:
        return ""
    if r["value"] is None:
        return "n/a"
    s = _num(r["value"])
    if r["spread"] is not None:
        s += f" ± {_num(r['spread'])}"
    base = b.baseline_of(r)
    if base is not None:
        s += f" ({_signed(r['value'] - base['value'])})"
    return s


def _table_md(b: _Benchmark) -> list[str]:
    """The markdown of one benchmark: its table, then what is not shown beside our numbers."""
    lines = [f"## {_md(b.dataset)} [{_md(b.protocol)}]", ""]
    notes = {
        id(ln): list(
            dict.fromkeys(
                c["note"]
                if c["note"] is not None
                else f"{c['seeds']} seed{'s' if c['seeds'] != 1 else ''}"
                for c in ln.cells.values()
                if c["note"] is not None or c["seeds"] is not None
            )
        )
        for ln in b.lines
    }
    has_note = any(notes.values())
    differs = []
    if b.lines:
        head = ["method", "chapter", "preset"]
        head += [m + (" (lower is better)" if b.lower[m] else "") for m in b.metrics]
        head += ["pairs"] + (["note"] if has_note else [])
        lines += ["| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
    for ln in b.lines:
        pair_texts = {m: _pairs(c) for m, c in ln.cells.items()}
        if len(set(pair_texts.values())) == 1:
            pairs = next(iter(pair_texts.values()))
        else:
            pairs = "; ".join(f"{m}: {t}" for m, t in pair_texts.items())
        method = ln.method + (" (baseline)" if ln.is_baseline else "")
        cells = [method, ln.chapter, ln.preset]
        cells += [_value_text(b, ln.cells.get(m)) for m in b.metrics]
        cells += [pairs] + (["; ".join(notes[id(ln)])] if has_note else [])
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
        published: dict[str, dict] = {}
        for m, c in ln.cells.items():
            if c["published"] is None:
                continue
            if _subset(c):
                differs.append(
                    f"- Not shown beside ours (pair set differs: ours is {c['n']} of "
                    f"{c['n_full']} {c['n_unit']}): {ln.method} {m} {_num(c['published'])} "
                    f"[{c['published_source']}]"
                )
            else:
                published.setdefault(c["published_source"], {})[m] = c["published"]
        for source, values in published.items():
            cells = [f"published: {ln.method} [{source}]", "", ""]
            cells += [_num(values[m]) if m in values else "" for m in b.metrics]
            cells += [""] + ([""] if has_note else [])
            lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    if not b.lines:
        lines.append("No run of ours on this benchmark.")
    if differs:
        lines += ["", *differs]
    if b.quoted:
        lines += ["", "Published, not run here:", ""]
        lines += [
            f"- {r['method']} {r['metric']}: {_num(r['published'])} [{r['published_source']}] "
            f"(quoted in {r['chapter']})"
            for r in b.quoted
        ]
    return [*lines, ""]


def _panel_rows(b: _Benchmark, metric: str) -> tuple[list[_Line], list[dict], int]:
    """The method lines with a number for ``metric``, their rows, and how many legend entries
    the panel has (baselines, comparable published numbers, error bars)."""
    lns = [ln for ln in b.lines if metric in ln.cells]
    rows = [ln.cells[metric] for ln in lns]
    entries = sum(r["baseline"] and r["value"] is not None for r in rows)
    entries += any(r["published"] is not None and not _subset(r) for r in rows)
    entries += any(r["spread"] is not None and r["value"] is not None for r in rows)
    return lns, rows, entries


def _panel(ax, b: _Benchmark, metric: str) -> None:
    """Draw one benchmark x metric: a bar per method (the first on top), baselines as dashed
    lines spanning the bars they are margins for, error bars (± 1 s.e.), comparable published
    numbers as diamonds; the legend sits in rows kept free above the bars."""
    lns, rows, entries = _panel_rows(b, metric)
    y = list(range(len(rows)))
    vals = [r["value"] for r in rows]
    ax.barh(
        y,
        [v or 0.0 for v in vals],
        color=["#A0A0A0" if r["baseline"] else "#4C72B0" for r in rows],
        height=0.7,
    )
    err = [(yi, r) for yi, r in zip(y, rows) if r["spread"] is not None and r["value"] is not None]
    if err:
        ax.errorbar(
            [r["value"] for _, r in err],
            [yi for yi, _ in err],
            xerr=[r["spread"] for _, r in err],
            fmt="none",
            ecolor="black",
            capsize=3,
            lw=1,
            label="± 1 s.e. over seeds",
        )
    bases = [r for r in rows if r["baseline"] and r["value"] is not None]
    for base in bases:
        ys = [yi for yi, r in zip(y, rows) if r is base or b.baseline_of(r) is base]
        where = f", ch {base['chapter'][:2]}, {base['preset']}" if len(bases) > 1 else ""
        ax.vlines(
            base["value"],
            min(ys) - 0.45,
            max(ys) + 0.45,
            colors="#333333",
            linestyles="dashed",
            lw=1.2,
            label=f"{base['method']} (baseline{where})",
            zorder=3,
        )
    pub = {yi: r["published"] for yi, r in zip(y, rows) if r["published"] is not None}
    pub = {yi: p for yi, p in pub.items() if not _subset(rows[yi])}
    if pub:
        ax.plot(
            list(pub.values()),
            list(pub),
            "D",
            color="#DD8452",
            markeredgecolor="black",
            label="published (same protocol and pairs)",
            zorder=4,
        )
    shown = [v for v in vals if v is not None] + [r["value"] for r in bases] + list(pub.values())
    if all(0.0 <= v <= 1.0 for v in shown):
        ax.set_xlim(0.0, 1.0)
    else:
        lo, hi = min([0.0, *shown]), max([0.0, *shown])
        ax.set_xlim(lo - (0.3 if lo < 0 else 0.05) * (hi - lo), hi + 0.3 * (hi - lo) + 1e-9)
    x0, x1 = ax.get_xlim()
    pad, room = 0.012 * (x1 - x0), 0.14 * (x1 - x0)
    for yi, r in zip(y, rows):
        if r["value"] is None:
            ax.text(x0 + pad, yi, "n/a", va="center", fontsize=8)
            continue
        if r["value"] < 0:  # a bar to the left of zero: its number left of it
            ax.text(
                r["value"] - (r["spread"] or 0.0) - pad,
                yi,
                _num(r["value"]),
                va="center",
                ha="right",
                fontsize=8,
            )
            continue
        end = r["value"] + (r["spread"] or 0.0)
        if yi in pub and end <= pub[yi] <= end + room:  # keep the text clear of the diamond
            end = pub[yi] + 0.01 * (x1 - x0)
        if end + room > x1:  # no room right of the bar: write inside it
            ax.text(
                r["value"] - pad,
                yi,
                _num(r["value"]),
                va="center",
                ha="right",
                fontsize=8,
                color="white",
                fontweight="bold",
            )
        else:
            ax.text(end + pad, yi, _num(r["value"]), va="center", ha="left", fontsize=8)
    ax.set_yticks(y, [ln.label() for ln in lns], fontsize=8)
    free = 0.6 * entries + 0.2 if entries else 0.0
    ax.set_ylim(len(rows) - 0.5, -0.5 - free)  # first row on top, legend rows above it
    title = f"{b.dataset} — {metric} [{b.protocol}]"
    if len({(r["n"], r["n_full"], r["n_unit"]) for r in rows}) == 1 and _subset(rows[0]):
        title += f" (subset: {rows[0]['n']} of {rows[0]['n_full']} {rows[0]['n_unit']})"
    elif any(_subset(r) for r in rows):
        title += " (some rows on a subset: see the table)"
    ax.set_title(_wrap(title), fontsize=9)
    ax.set_xlabel("lower is better" if b.lower[metric] else "higher is better", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    if entries:
        ax.legend(fontsize=8, loc="upper right", framealpha=0.9, borderaxespad=0.2)


def _wrap(title: str) -> str:
    return textwrap.fill(title, 40)


def _figure(benchmarks: list[_Benchmark], title: str, path: Path) -> None:
    """``dashboard.png``: one panel per benchmark x metric, two columns at most, 100 dpi."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(b, m) for b in benchmarks for m in b.metrics]
    ncols = 1 if len(panels) <= 1 else 2
    nrows = max(1, -(-len(panels) // ncols))

    def height(b, m):
        _, rows, entries = _panel_rows(b, m)
        lines = _wrap(f"{b.dataset} — {m} [{b.protocol}] (some rows on a subset: see the table)")
        free = 0.6 * entries + 0.2 if entries else 0.0
        return 1.0 + 0.3 * (len(rows) + free) + 0.16 * lines.count("\n")

    heights = [
        max([height(*p) for p in panels[r * ncols : (r + 1) * ncols]] or [1.5])
        for r in range(nrows)
    ]
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(11 if ncols == 2 else 7.5, sum(heights) + 0.7),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    if not panels:
        axes.flat[0].text(0.5, 0.5, "no results of ours to plot", ha="center", fontsize=10)
    for ax, (b, m) in zip(axes.flat, panels):
        _panel(ax, b, m)
    total = sum(heights) + 0.7  # inches; the title gets a fixed band of 0.45 in at the top
    fig.suptitle(f"corrlib results (preset {title})", fontsize=11, y=1 - 0.12 / total)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / total))
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def build_dashboard(
    rows: list[dict],
    out_dir,
    *,
    preset: str | None = None,
    seconds: dict | None = None,
    sources: list[str] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``dashboard.md`` and ``dashboard.png`` under ``out_dir``.

    ``dashboard.md`` reads like a paper's results table: one section per benchmark (dataset and
    protocol), methods as rows (each with its chapter and preset), the benchmark's metrics as
    columns, each number with its margin over the baseline row of the same chapter and preset
    on the same pairs (``baseline``, ``n``), the pair set (a subset named as one), and a
    published number on its own line below the method only where the pair set is complete;
    others are listed under the table. ``dashboard.png`` draws the same per benchmark and
    metric. The title names ``preset`` and any other preset of the rows; ``sources``: the
    metrics files the rows came from, listed in both files. Rows are checked like
    :func:`record_results` does (``ValueError``). Every file is written atomically.
    """
    checked = [_check_row(r, f"Dashboard row {i}") for i, r in enumerate(rows)]
    views = [_view(r) for r in checked]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    presets = sorted({r["preset"] for r in views} | ({preset} if preset else set()))
    title = ", ".join(presets) if presets else str(preset)
    atomic_write_text(
        out / "results.json",
        _json({"preset": preset, "seconds": seconds or {}, "sources": sources, "rows": checked}),
    )
    benchmarks = _benchmarks(views)
    lines = [f"# Results dashboard (preset: {title})", ""]
    for p in presets:
        chapters = sorted({r["chapter"] for r in views if r["preset"] == p})
        where = f" ({', '.join(chapters)})" if chapters else ""
        meaning = _PRESET_MEANING.get(p, "a preset this dashboard does not know")
        lines.append(f"- Preset `{p}`{where}: {meaning}.")
    lines.append("")
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
            + [f"| {_md(k)} | {v} |" for k, v in seconds.items()]
            + [""]
        )
    for b in benchmarks:
        lines += _table_md(b)
    if not benchmarks:
        lines += ["No result rows.", ""]
    lines.append(LEGEND)
    atomic_write_text(out / "dashboard.md", "\n".join(lines) + "\n")
    _figure(benchmarks, title, out / "dashboard.png")
    return {
        "json": out / "results.json",
        "markdown": out / "dashboard.md",
        "figure": out / "dashboard.png",
    }
