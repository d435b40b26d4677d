"""The instructors' reference solutions: every checked exercise of every notebook passes with
them, and ``apply_solutions`` replaces only the stubs."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from corrlib.grading import _CHECK_CALL, _VERDICT, apply_solutions, load_solutions

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = REPO / "instructor" / "solutions.py"


def _source(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _exercise_cells(nb: dict) -> list[str]:
    return [
        _source(c)
        for c in nb["cells"]
        if c["cell_type"] == "code" and _CHECK_CALL.search(_source(c))
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_passes_with_the_reference_solutions(path):
    nb = json.loads(path.read_text())
    stubs = [c for c in _exercise_cells(nb) if "raise NotImplementedError" in c]
    assert stubs, f"{path.name} has no exercise"
    solved, replaced = apply_solutions(nb, load_solutions(SOLUTIONS))
    cells = _exercise_cells(solved)
    assert len(replaced) == len(stubs) and all("NotImplementedError" not in c for c in cells)
    namespace: dict = {}
    for code in cells:  # the exercise cells alone, in order, sharing one namespace
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"<{path.name}>", "exec"), namespace)
        verdict = _VERDICT.search(out.getvalue())
        assert verdict and verdict.group(1) == "pass", f"{path.name}: {out.getvalue().strip()}"


def test_apply_solutions_replaces_only_the_stub():
    cell = (
        "from corrlib.recipes.basics import check_pck\n\n\n"
        "def my_pck(pred, gt, threshold):\n    raise NotImplementedError\n\n\n"
        "print(check_pck(my_pck))"
    )
    nb = {
        "cells": [{"cell_type": "code", "source": cell}, {"cell_type": "markdown", "source": "x"}]
    }
    solved, replaced = apply_solutions(
        nb, {"my_pck": "def my_pck(pred, gt, threshold):\n    return 1.0"}
    )
    assert replaced == ["my_pck"]
    out = solved["cells"][0]["source"]
    assert out.startswith("from corrlib.recipes.basics import check_pck")
    assert "return 1.0" in out and "NotImplementedError" not in out
    assert out.rstrip().endswith("print(check_pck(my_pck))")
    assert nb["cells"][0]["source"] == cell  # the input is not changed


def test_load_solutions_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such solutions file"):
        load_solutions(tmp_path / "missing.py")
    bad = tmp_path / "bad.py"
    bad.write_text("def my_x(:\n")
    with pytest.raises(ValueError, match="not valid Python"):
        load_solutions(bad)
    empty = tmp_path / "empty.py"
    empty.write_text("import torch\n\n\ndef helper():\n    return 1\n")
    with pytest.raises(ValueError, match="no function named my_"):
        load_solutions(empty)
    sols = load_solutions(SOLUTIONS)
    assert sols["my_zncc"].startswith("import torch") and "def my_zncc(a, b):" in sols["my_zncc"]
