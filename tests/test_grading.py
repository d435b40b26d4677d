"""The grader runs a notebook headless and reads each exercise check's verdict."""

from __future__ import annotations

import json

import nbformat

from corrlib import cli
from corrlib.exercises import run_student
from corrlib.grading import grade_markdown, read_grades

SOLVED_PCK = """
def my_pck(pred, gt, threshold):
    return float(((pred - gt).norm(dim=1) <= threshold).float().mean())


print(check_pck(my_pck))
"""
WRONG_ZNCC = """
def my_zncc(a, b):
    return float((a * b).sum())  # forgot to subtract the means and normalise


print(check_zncc(my_zncc))
"""
UNTOUCHED_CENSUS = """
def my_census(gray, r):
    raise NotImplementedError


print(check_census(my_census))
"""


def _notebook(path, *cells):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('preset = "lab"\ndata_root = None')
    params.metadata["tags"] = ["parameters"]
    head = nbformat.v4.new_code_cell(
        "from corrlib.recipes.basics import check_census, check_pck, check_zncc"
    )
    nb.cells = [params, head, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, str(path))
    return path


def test_grade_command_reports_each_exercise(tmp_path, capsys):
    nb = _notebook(tmp_path / "student.ipynb", SOLVED_PCK, WRONG_ZNCC, UNTOUCHED_CENSUS)
    out = tmp_path / "grades"
    assert cli.main(["grade", str(nb), "--out", str(out)]) == 0
    data = json.loads((out / "grades.json").read_text())
    assert [(e["check"], e["status"]) for e in data["exercises"]] == [
        ("check_pck", "pass"),
        ("check_zncc", "wrong"),
        ("check_census", "not attempted"),
    ]
    assert data["passed"] == 1 and data["total"] == 3
    table = (out / "grades.md").read_text()
    assert "1 of 3 exercises pass." in table and "| 2 | `check_zncc` | wrong | wrong:" in table
    assert (out / "student.graded.ipynb").is_file()


def test_a_failing_cell_stops_the_run_and_is_named(tmp_path):
    nb = _notebook(tmp_path / "s.ipynb", SOLVED_PCK, "1 / 0", WRONG_ZNCC)
    assert cli.main(["grade", str(nb), "--out", str(tmp_path / "g")]) == 0
    ex = json.loads((tmp_path / "g" / "grades.json").read_text())["exercises"]
    assert ex[0]["status"] == "pass" and ex[1]["status"] == "no verdict"
    assert "stopped at cell 4 of the executed copy: ZeroDivisionError" in ex[1]["message"]


def test_corrlibs_own_function_is_refused():
    from corrlib.geometry import pixel_grid

    got, verdict = run_student(pixel_grid, (2, 2))
    assert got is None and verdict.startswith("wrong: this is corrlib's own function")


def test_read_grades_without_output_and_markdown_escaping():
    nb = {"cells": [{"cell_type": "code", "source": "print(check_x(f))", "outputs": []}]}
    (g,) = read_grades(nb)
    assert g.status == "no verdict" and g.message == "no output"
    assert "a \\| b" in grade_markdown([g.__class__("check_x", "wrong", "a | b", 0)])


def test_missing_notebook_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["grade", str(tmp_path / "nope.ipynb"), "--out", str(tmp_path)]) == 2
    assert "no such notebook" in capsys.readouterr().err


def test_grade_with_solutions_writes_the_solution_sheet(tmp_path, capsys):
    from pathlib import Path

    solutions = Path(__file__).resolve().parents[1] / "instructor" / "solutions.py"
    nb = _notebook(tmp_path / "student.ipynb", SOLVED_PCK, WRONG_ZNCC, UNTOUCHED_CENSUS)
    out = tmp_path / "solved"
    assert cli.main(["grade", str(nb), "--out", str(out), "--solutions", str(solutions)]) == 0
    data = json.loads((out / "grades.json").read_text())
    assert [e["status"] for e in data["exercises"]] == ["pass", "pass", "pass"]
    sheet = json.loads((out / "student.solved.ipynb").read_text())
    assert "raise NotImplementedError" not in json.dumps(sheet)
    assert "3 of 3 exercises pass." in capsys.readouterr().out
