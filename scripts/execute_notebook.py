r"""Execute a notebook in place at a preset (default ``lab``) and strip run-specific metadata.

This is how notebooks are committed: with the outputs of a real ``lab`` run, no papermill
parameter cell, no timing metadata. Usage (from the repository root)::

    CORRLIB_DATA=../shared/data .venv/bin/python scripts/execute_notebook.py \
        notebooks/00_basics.ipynb
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import papermill as pm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--preset", default="lab")
    args = ap.parse_args(argv)
    os.environ["CORRLIB_PRESET"] = args.preset  # the parameters cell reads it; nothing is injected
    os.environ.setdefault("TQDM_DISABLE", "1")
    for nb_path in args.notebooks:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / nb_path.name
            pm.execute_notebook(
                str(nb_path),
                str(out),
                cwd=str(nb_path.parent),
                progress_bar=False,
                kernel_name="python3",
            )
            nb = nbformat.read(out, as_version=4)
        nb.metadata.pop("papermill", None)
        nb.metadata.get("widgets", {}).clear()
        stderr = []
        for i, cell in enumerate(nb.cells):
            cell.metadata.pop("papermill", None)
            cell.metadata.pop("execution", None)
            if cell.cell_type == "code" and any(o.get("name") == "stderr" for o in cell.outputs):
                stderr.append(i)
        if stderr:
            print(
                f"{nb_path}: cells {stderr} wrote to stderr; "
                "fix them (warnings, progress bars) before committing."
            )
            return 1
        nbformat.write(nb, nb_path)
        print(f"{nb_path}: executed at preset={args.preset} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
