"""Grade a student's notebook: run it headless, read every exercise check's verdict.

Each exercise of the series ends in a check cell, ``print(check_<name>(my_<name>))``, whose
check (``corrlib.recipes.<chapter>.check_<name>``) compares the student's function with an
independent reference on fixed cases and prints one line: ``pass: ...``, ``wrong: ...`` or
``not attempted yet: ...``. :func:`grade_notebook` executes a notebook with papermill (at the
``smoke`` preset by default: seconds, no training beyond the smallest runs), reads those lines
from the executed copy and returns one row per exercise; :func:`grade_markdown` renders them as
a table. ``corrlib grade`` writes ``grades.md`` and ``grades.json``.

A check cannot be passed by handing it corrlib's own function: :func:`corrlib.exercises.run_student`
answers "wrong" for any function defined inside corrlib.

Solutions mode (instructors): :func:`load_solutions` reads a file of reference solutions
(``instructor/solutions.py``: functions named as the stubs, ``my_<name>``) and
:func:`apply_solutions` puts each in place of its stub; ``corrlib grade NOTEBOOK --solutions
FILE`` grades that solved copy, which doubles as the solution sheet.
"""

from __future__ import annotations

import ast
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from corrlib.checkpoint import atomic_write_text
from corrlib.presets import check_preset

__all__ = [
    "ExerciseGrade",
    "apply_solutions",
    "grade_markdown",
    "grade_notebook",
    "load_solutions",
    "read_grades",
    "write_grades",
]

_CHECK_CALL = re.compile(r"print\(\s*(check_\w+)\(")
_VERDICT = re.compile(r"^(pass|wrong|not attempted yet):", re.MULTILINE)


@dataclass(frozen=True)
class ExerciseGrade:
    """One exercise: ``check`` (the check's name), ``status`` (``"pass"``, ``"wrong"``, ``"not
    attempted"`` or ``"no verdict"`` when the cell printed none, e.g. it was deleted or
    raised), ``message`` (the verdict line) and ``cell`` (0-based index in the notebook)."""

    check: str
    status: str
    message: str
    cell: int


def _stream_text(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            text = out.get("text", "")
            parts.append("".join(text) if isinstance(text, list) else text)
        elif out.get("output_type") == "error":
            parts.append(f"error: {out.get('ename')}: {out.get('evalue')}")
    return "".join(parts)


def read_grades(executed: dict) -> list[ExerciseGrade]:
    """The exercise verdicts of an executed notebook (``nbformat`` JSON as a dict)."""
    grades = []
    for i, cell in enumerate(executed.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        m = _CHECK_CALL.search(source)
        if not m:
            continue
        text = _stream_text(cell)
        v = _VERDICT.search(text)
        if v is None:
            line = text.strip().splitlines()[-1] if text.strip() else "no output"
            grades.append(ExerciseGrade(m.group(1), "no verdict", line[:300], i))
            continue
        line = text[v.start() :].splitlines()[0]
        status = "not attempted" if v.group(1) == "not attempted yet" else v.group(1)
        grades.append(ExerciseGrade(m.group(1), status, line, i))
    return grades


def load_solutions(path) -> dict[str, str]:
    """Reference solutions from a Python file: ``{name: source}`` of every top-level function
    whose name starts with ``my_``, each preceded by the file's top-level imports (so a solution
    runs in a cell that lacks them).

    Raises:
        FileNotFoundError: no such file. ValueError: it does not parse, or defines no ``my_``
        function.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such solutions file (e.g. instructor/solutions.py).")
    text = file.read_text()
    try:
        tree = ast.parse(text, filename=str(file))
    except SyntaxError as e:
        raise ValueError(f"{file}: not valid Python ({e.msg}, line {e.lineno}).") from e
    imports = [
        ast.get_source_segment(text, node)
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
    ]
    found = {
        node.name: "\n".join([*imports, "", "", ast.get_source_segment(text, node)])
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("my_")
    }
    if not found:
        raise ValueError(f"{file}: defines no function named my_<exercise>.")
    return found


def apply_solutions(notebook: dict, solutions: dict[str, str]) -> tuple[dict, list[str]]:
    """A copy of ``notebook`` (``nbformat`` JSON as a dict) with each exercise stub replaced.

    A stub is a top-level ``def my_<name>(...)`` in a code cell that holds a check call; it is
    replaced, lines and all, by ``solutions[my_<name>]`` (:func:`load_solutions`). The rest of
    the cell (imports, the ``print(check_...)`` line) stays.

    Returns:
        ``(solved copy, names replaced)``.
    """
    import copy

    solved = copy.deepcopy(notebook)
    replaced = []
    for cell in solved.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        if not _CHECK_CALL.search(source):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue  # a student's broken cell is graded as it is
        lines = source.split("\n")
        stubs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in solutions]
        for node in sorted(stubs, key=lambda n: n.lineno, reverse=True):
            start = node.lineno - 1 - len(node.decorator_list)
            lines[start : node.end_lineno] = solutions[node.name].split("\n")
            replaced.append(node.name)
        cell["source"] = "\n".join(lines)
    return solved, sorted(replaced)


def grade_notebook(
    notebook,
    *,
    preset: str = "smoke",
    data_root=None,
    out_dir=None,
    timeout_s: int = 900,
    solutions=None,
) -> tuple[list[ExerciseGrade], Path]:
    """Execute ``notebook`` headless and read its exercise verdicts.

    Args:
        notebook: the student's ``.ipynb``.
        preset: the preset it runs at (``smoke``: seconds; the checks do not depend on it).
        data_root: passed to the notebook's ``data_root`` parameter (None: its default).
        out_dir: where the executed copy goes (None: next to ``notebook`` as
            ``<name>.graded.ipynb``).
        timeout_s: the longest a cell may run.
        solutions: a file of reference solutions (:func:`load_solutions`): grade the notebook
            with every stub replaced (the solution sheet; written as
            ``<name>.solved.ipynb`` beside the graded copy). None: grade it as it is.

    Returns:
        ``(grades, executed copy)``. If a cell raises, the run stops there (as papermill does)
        and every exercise without a verdict says where and why.

    Raises:
        FileNotFoundError: if ``notebook`` does not exist.
    """
    import nbformat
    import papermill as pm

    check_preset(preset)
    nb = Path(notebook)
    if not nb.is_file():
        raise FileNotFoundError(f"{nb}: no such notebook; pass the student's .ipynb file.")
    dest = (Path(out_dir) if out_dir else nb.parent) / f"{nb.stem}.graded.ipynb"
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = nb
    if solutions is not None:
        solved, _ = apply_solutions(json.loads(nb.read_text()), load_solutions(solutions))
        source = dest.parent / f"{nb.stem}.solved.ipynb"
        atomic_write_text(source, json.dumps(solved, indent=1, ensure_ascii=False) + "\n")
    params = {"preset": preset}
    if data_root is not None:
        params["data_root"] = str(Path(data_root).resolve())
    stopped = None
    try:
        pm.execute_notebook(
            str(source),
            str(dest),
            parameters=params,
            cwd=str(nb.parent.resolve()),
            progress_bar=False,
            kernel_name="python3",
            execution_timeout=timeout_s,
        )
    except pm.PapermillExecutionError as e:  # later exercises then read "no verdict"
        stopped = (
            f"the notebook stopped at cell {e.cell_index} of the executed copy: {e.ename}: "
            f"{e.evalue}"
        )
    executed = nbformat.read(str(dest), as_version=4)
    grades = read_grades(executed)
    if stopped:
        grades = [
            g if g.status != "no verdict" else ExerciseGrade(g.check, g.status, stopped, g.cell)
            for g in grades
        ]
    return grades, dest


def grade_markdown(grades: list[ExerciseGrade], notebook: str = "") -> str:
    """A markdown table of ``grades`` with a summary line (passed / total)."""
    passed = sum(g.status == "pass" for g in grades)
    lines = [
        f"# Grades{f' of {notebook}' if notebook else ''}",
        "",
        f"{passed} of {len(grades)} exercises pass.",
        "",
        "| # | check | status | verdict |",
        "|---|---|---|---|",
    ]
    for k, g in enumerate(grades, start=1):
        msg = g.message.replace("|", "\\|")
        lines.append(f"| {k} | `{g.check}` | {g.status} | {msg} |")
    return "\n".join(lines) + "\n"


def write_grades(grades: list[ExerciseGrade], out_dir, notebook: str) -> dict[str, Path]:
    """Write ``grades.md`` and ``grades.json`` (atomically) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "notebook": notebook,
        "graded_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "passed": sum(g.status == "pass" for g in grades),
        "total": len(grades),
        "exercises": [asdict(g) for g in grades],
    }
    atomic_write_text(out / "grades.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(out / "grades.md", grade_markdown(grades, notebook))
    return {"json": out / "grades.json", "markdown": out / "grades.md"}
