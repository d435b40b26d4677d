"""Tests of the series runner: papermill execution, result gathering, dashboard, failures."""

import json

import nbformat
import pytest

from corrlib.series import SeriesError, build_dashboard, gather_results, record_results, run_series

ROW = {
    "chapter": "01_test",
    "method": "m",
    "dataset": "D",
    "metric": "PCK@0.1",
    "value": 0.5,
    "protocol": "p",
    "preset": "smoke",
    "published": 0.6,
    "published_source": "paper, Tab. 1",
}


def _notebook(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'preset = "lab"\ndata_root = None\ndevice = "auto"\nseed = 0\nout_dir = None'
    )
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


def test_record_and_gather(tmp_path):
    record_results(tmp_path, "01_test", [ROW, {**ROW, "value": float("nan")}])
    rows = gather_results(tmp_path)
    assert rows[0]["value"] == 0.5 and rows[1]["value"] is None


def test_record_rejects_incomplete_rows(tmp_path):
    with pytest.raises(ValueError, match=r"lacks keys \['published'"):
        record_results(
            tmp_path,
            "x",
            [{k: v for k, v in ROW.items() if k not in ("published", "published_source")}],
        )


def test_dashboard_files(tmp_path):
    paths = build_dashboard(
        [ROW, {**ROW, "method": "n", "published": None, "published_source": None}],
        tmp_path,
        preset="smoke",
    )
    md = paths["markdown"].read_text()
    assert "| 01_test | D | PCK@0.1 | m | 0.500 | 0.600 | p | paper, Tab. 1 |" in md
    assert paths["figure"].stat().st_size > 1000
    assert json.loads(paths["json"].read_text())["preset"] == "smoke"


@pytest.mark.slow
def test_run_series_passes_parameters_and_names_failures(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    body = (
        "from corrlib.series import record_results\n"
        "row = dict(chapter='01_ok', method='m', dataset='D', metric='M', value=float(seed), "
        "protocol='p',\n"
        "           preset=preset, published=None, published_source=None)\n"
        "record_results(out_dir, '01_ok', [row])"
    )
    _notebook(nbdir / "01_ok.ipynb", body)
    res = run_series("smoke", tmp_path / "out", seed=3, notebook_dir=nbdir, log=lambda *a: None)
    assert res.rows == [{**json.loads(json.dumps(res.rows[0])), "value": 3.0, "preset": "smoke"}]
    assert (tmp_path / "out" / "dashboard.png").exists()
    assert (tmp_path / "out" / "notebooks" / "01_ok.ipynb").exists()

    _notebook(nbdir / "02_bad.ipynb", "x = 1\nraise RuntimeError('boom in chapter 2')")
    with pytest.raises(
        SeriesError,
        match=(
            r"02_bad\.ipynb failed in cell 2 of 2 \(starting 'x = 1'\): "
            r"RuntimeError: boom in chapter 2"
        ),
    ):
        run_series("smoke", tmp_path / "out2", notebook_dir=nbdir, log=lambda *a: None)


def test_run_series_rejects_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match=r"Valid values are \{smoke, lab, paper\}"):
        run_series("quick", tmp_path)
