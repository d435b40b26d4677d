"""The explorer in a real browser: JupyterLab started headless, a notebook with the explorer
opened in Chromium and driven by Playwright (issue 15).

The notebook shows a pair cut from one photograph with a known shift: the target is the source
moved by ``SHIFT`` pixels, so the place a click must send a point to is known exactly. The test
runs the cells and clicks on the live (ipympl) canvas: two clicks calibrate canvas pixels to image
pixels (the readout under the figure gives the clicked point), then two clicks aimed at chosen
source pixels check that the readout shows the aimed point, that DAISY's match marker lies at the
point minus the shift (within ``TOL_PX``), that it moved with the click, and that the screenshot
was written. Set ``CORRLIB_SCREENSHOT_DIR`` to keep the screenshots (CI does).

Needs the ``playwright`` package (in the ``dev`` extra) and a Chromium: Debian's ``chromium``
package (``scripts/setup.sh`` installs it when run as root), ``$CORRLIB_CHROMIUM``, or
``playwright install chromium``; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ._net import free_port

#: The target is the source shifted by this (dx, dy): a source pixel (x, y) is at (x - 20, y - 10).
SHIFT = (20, 10)
#: DAISY at a longer side of 160 matches on its dense grid: within this many pixels of the truth.
TOL_PX = 3.0
#: Two calibration clicks, as fractions of the canvas (inside the source image, on the left).
CALIB = ((0.25, 0.45), (0.32, 0.62))
#: Then clicks aimed at these source pixels (x, y): textured places where DAISY at 160 px is
#: within 2 px of the truth all around (checked on a 4-px grid of the pair).
TARGETS = ((75.0, 72.0), (50.0, 32.0))

#: The kernel spec the test writes (this Python), so no user-level spec can replace it.
KERNEL = "corrlib-browser-test"

NOTEBOOK_CELLS = [
    "%matplotlib widget",
    """import torch
from skimage import data

from corrlib.eval import get_method
from corrlib.widgets import CorrespondenceExplorer

photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).contiguous()
pair = {
    "src_img": photo[:, 100:260, 100:260],
    "trg_img": photo[:, 110:270, 120:280],  # the source moved by (-20, -10) pixels
    "src_name": "astronaut-a",
    "trg_name": "astronaut-b",
}
explorer = CorrespondenceExplorer(
    [pair], ["identity", get_method("daisy", max_side=160)], heat="daisy@160", figsize=(9, 4)
)
explorer.widget()""",
]

_NUMBER_PAIR = r"\((-?[\d.]+), (-?[\d.]+)\)"


def _chromium() -> str | None:
    """A Chromium executable: $CORRLIB_CHROMIUM or the system's; None: Playwright's own (if
    ``playwright install chromium`` was run)."""
    env = os.environ.get("CORRLIB_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _parse_readout(text: str) -> dict[str, tuple[float, float]]:
    """``{"query": (x, y), "<method>": (x, y), ...}`` from the explorer's readout line."""
    out = {}
    for name, x, y in re.findall(r"([\w@.-]+) " + _NUMBER_PAIR, text):
        out[name] = (float(x), float(y))
    return out


@pytest.fixture(scope="module")
def browser_setup():
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    exe = _chromium()
    if exe is None:
        with playwright_api.sync_playwright() as pw:
            try:
                pw.chromium.launch(headless=True).close()
            except Exception:
                pytest.skip(
                    "no Chromium found: install Debian's chromium (scripts/setup.sh does so as "
                    "root), set CORRLIB_CHROMIUM, or run `.venv/bin/playwright install chromium`"
                )
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed (the notebooks extra)")
    pytest.importorskip("ipympl", reason="ipympl is not installed (the notebooks extra)")
    return playwright_api, exe


@pytest.fixture
def jupyterlab(tmp_path):
    """A headless JupyterLab serving tmp_path; yields (base url, token)."""
    port, token = free_port(), "corrlib-browser-test"
    env = dict(os.environ)
    env.update(
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab-workspaces"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        OMP_NUM_THREADS="1",
    )
    # the kernel is this Python (with corrlib), whatever kernel specs the user's folders hold
    spec = tmp_path / "jupyter-data" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "corrlib browser test",
                "language": "python",
            }
        )
    )
    env["JUPYTER_PATH"] = str(tmp_path / "jupyter-data")
    # no "news" toast over the figure, and no request to the internet for it
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True})
    )
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path}",
            "--LabApp.expose_app_in_browser=True",
            "--ServerApp.port_retries=0",  # never a silent move to another port
            "--allow-root",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise RuntimeError(
                        "JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()
                    ) from None
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _write_notebook(path: Path) -> None:
    cells = [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": f"cell{i}",
            "metadata": {},
            "outputs": [],
            "source": src,
        }
        for i, src in enumerate(NOTEBOOK_CELLS)
    ]
    nb = {
        "cells": cells,
        "metadata": {
            "kernelspec": {
                "display_name": "corrlib browser test",
                "language": "python",
                "name": KERNEL,
            }
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))


def test_click_in_jupyterlab_moves_the_match_marker(browser_setup, jupyterlab, tmp_path):
    playwright_api, exe = browser_setup
    base, token = jupyterlab
    _write_notebook(tmp_path / "explorer.ipynb")
    shots = []
    with playwright_api.sync_playwright() as pw:
        kw = {"executable_path": exe} if exe else {}
        browser = pw.chromium.launch(headless=True, args=["--no-sandbox"], **kw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/lab/tree/explorer.ipynb?token={token}")
            page.wait_for_function(
                "() => window.jupyterapp && document.querySelector('.jp-Notebook')",
                timeout=90_000,
            )
            # the kernel must be up before running: wait until the status says idle
            page.wait_for_function(
                "() => { const w = window.jupyterapp.shell.currentWidget;"
                " return w && w.sessionContext && w.sessionContext.session &&"
                " w.sessionContext.session.kernel &&"
                " w.sessionContext.session.kernel.status === 'idle'; }",
                timeout=90_000,
            )
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            readout = page.locator(".corrlib-explorer-readout")
            readout.wait_for(timeout=120_000)
            canvas = page.locator(".jupyter-matplotlib-canvas-div canvas").last
            canvas.wait_for(timeout=60_000)
            box = canvas.bounding_box()
            assert box and box["width"] > 300, f"the canvas is not drawn: {box}"
            canvas.scroll_into_view_if_needed()

            def click(cx: float, cy: float) -> dict[str, tuple[float, float]]:
                """Click canvas pixel (cx, cy); wait for the readout and the repaint."""
                before, pixels_before = readout.inner_text(), canvas.screenshot()
                canvas.click(position={"x": cx, "y": cy})
                page.wait_for_function(
                    "([sel, old]) => { const e = document.querySelector(sel);"
                    " return e && e.innerText.includes('query (') && e.innerText !== old; }",
                    arg=[".corrlib-explorer-readout", before],
                    timeout=60_000,
                )
                values = _parse_readout(readout.inner_text())
                assert {"query", "identity", "daisy@160"} <= set(values), values
                qx, qy = values["query"]
                assert 0 <= qx <= 159 and 0 <= qy <= 159, f"the click missed the source: {values}"
                assert values["identity"] == pytest.approx((qx, qy), abs=0.051)
                # the kernel has redrawn; wait until the browser has painted the new figure
                deadline = time.monotonic() + 30
                while canvas.screenshot() == pixels_before:
                    assert time.monotonic() < deadline, "the canvas was not repainted"
                    time.sleep(0.2)
                return values

            # two clicks find the map canvas pixel -> image pixel (the layout depends on fonts)
            (c1x, c1y), (c2x, c2y) = ((f[0] * box["width"], f[1] * box["height"]) for f in CALIB)
            q1, q2 = click(c1x, c1y)["query"], click(c2x, c2y)["query"]
            scale_x, scale_y = (q2[0] - q1[0]) / (c2x - c1x), (q2[1] - q1[1]) / (c2y - c1y)
            assert scale_x == pytest.approx(scale_y, rel=0.05), f"stretched: {q1}, {q2}, {box}"
            previous = None
            for k, (tx, ty) in enumerate(TARGETS):
                values = click(c1x + (tx - q1[0]) / scale_x, c1y + (ty - q1[1]) / scale_y)
                qx, qy = values["query"]
                assert abs(qx - tx) <= 1.5 and abs(qy - ty) <= 1.5, (
                    f"aimed at source pixel {(tx, ty)}, the readout says {(qx, qy)}"
                )
                expected = (qx - SHIFT[0], qy - SHIFT[1])
                mx, my = values["daisy@160"]
                err = ((mx - expected[0]) ** 2 + (my - expected[1]) ** 2) ** 0.5
                assert err <= TOL_PX, f"daisy's marker at {(mx, my)}, expected {expected}"
                if previous is not None:  # the marker moved with the click
                    assert (mx - previous[0]) * (tx - TARGETS[k - 1][0]) > 0
                    assert (my - previous[1]) * (ty - TARGETS[k - 1][1]) > 0
                previous = (mx, my)
                time.sleep(0.3)
                readout.scroll_into_view_if_needed()
                shot = tmp_path / f"explorer_after_click_{k + 1}.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                shots.append(shot)
            assert not errors, f"errors in the page: {errors}"
        finally:
            browser.close()
    keep = os.environ.get("CORRLIB_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, Path(keep) / shot.name)
