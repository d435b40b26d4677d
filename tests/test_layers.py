"""The layer contract (pyproject.toml, ``[tool.importlinter]``) holds, and it does catch a
violation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))

pytestmark = pytest.mark.skipif(
    not Path(LINT).exists(), reason="import-linter is not installed (pip install -e '.[dev]')"
)


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(cwd), "HOME": str(cwd)}
    return subprocess.run(
        [LINT, "--no-cache"], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


def test_layer_contract_is_kept():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broken" not in out.stdout.split("Contracts:")[-1].replace("0 broken", "")


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        (
            "corrlib/models/sfnet.py",
            "from corrlib.recipes import sfnet as _upward  # noqa",
            "corrlib layers",
        ),
        ("corrlib/metrics.py", "from corrlib.data import tss as _upward  # noqa", "corrlib layers"),
        (
            "corrlib/methods/sfnet.py",
            "from corrlib.methods import ucn as _sideways  # noqa",
            "adapters do not import",
        ),
    ],
)
def test_layer_contract_fails_on_a_deliberate_violation(tmp_path, module, line, contract):
    copy = tmp_path / "repo"
    shutil.copytree(
        ROOT / "corrlib", copy / "corrlib", ignore=shutil.ignore_patterns("__pycache__", "weights")
    )
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    target = copy / module
    target.write_text(target.read_text() + f"\n{line}\n")
    out = _lint(copy)
    assert out.returncode != 0, out.stdout
    assert "BROKEN" in out.stdout and contract in out.stdout.replace("\n", " "), out.stdout
