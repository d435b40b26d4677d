"""Tests of the series runner: papermill execution, result gathering, dashboard, failures."""

import json

import nbformat
import papermill
import pytest
from nbclient.exceptions import DeadKernelError

from corrlib.cli import main
from corrlib.series import (
    SeriesError,
    build_dashboard,
    check_device,
    gather_results,
    record_results,
    run_series,
)

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
    assert "| 01_test | smoke | D | PCK@0.1 | m | 0.500 | 0.600 | p | paper, Tab. 1 |" in md
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


def test_record_results_is_strict_json(tmp_path):
    path = record_results(tmp_path, "01_test", [{**ROW, "value": float("inf"), "published": None}])

    def refuse(token):
        raise AssertionError(f"bare {token}")

    assert json.loads(path.read_text(), parse_constant=refuse)[0]["value"] is None
    assert [p.name for p in path.parent.iterdir()] == ["01_test.json"]  # no temporary file


def _fake_series(tmp_path, monkeypatch, behaviour):
    """Notebooks 00_a and 01_b; papermill patched to run ``behaviour(src, dest, params)``."""
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    for name in ("00_a", "01_b"):
        _notebook(nbdir / f"{name}.ipynb", "pass")
    ran = []

    def execute(src, dest, parameters, **kw):
        ran.append(src)
        behaviour(src, dest, parameters)

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    return nbdir, ran


def _records(src, dest, params):
    chapter = src.rsplit("/", 1)[-1][:-6]
    record_results(
        params["out_dir"], chapter, [{**ROW, "chapter": chapter, "preset": params["preset"]}]
    )


def test_dashboard_holds_this_runs_metrics_only(tmp_path, monkeypatch):
    nbdir, _ = _fake_series(tmp_path, monkeypatch, _records)
    out = tmp_path / "out"
    logs = []
    res = run_series("paper", out, notebook_dir=nbdir, log=logs.append)
    assert [r["chapter"] for r in res.rows] == ["00_a", "01_b"]
    record_results(out, "99_old", [{**ROW, "chapter": "99_old", "preset": "lab"}])

    res = run_series("smoke", out, notebooks=["00"], notebook_dir=nbdir, log=logs.append)
    assert [(r["chapter"], r["preset"]) for r in res.rows] == [("00_a", "smoke")]
    assert [p.name for p in res.metrics_files] == ["00_a.json"]
    md = (out / "dashboard.md").read_text()
    assert "# Results dashboard (preset: smoke)" in md
    assert "Built from this run's metrics files only: `metrics/00_a.json`." in md
    assert "| 00_a | smoke |" in md and "01_b" not in md.split("Built from")[1]
    assert "99_old" not in md
    results = json.loads((out / "results.json").read_text())
    assert results["sources"] == ["00_a.json"] and len(results["rows"]) == 1
    assert "not in the dashboard (left by an earlier call): 01_b.json, 99_old.json" in logs[-1]


def test_dashboard_names_every_preset_it_shows(tmp_path):
    rows = [ROW, {**ROW, "chapter": "02_x", "preset": "paper"}]
    md = build_dashboard(rows, tmp_path, preset="smoke")["markdown"].read_text()
    assert "(preset: paper, smoke)" in md and "| 02_x | paper |" in md


def test_dead_kernel_is_a_series_error(tmp_path, monkeypatch, capsys):
    def die(src, dest, params):
        if "01_b" in src:
            raise DeadKernelError("Kernel died")
        _records(src, dest, params)

    nbdir, _ = _fake_series(tmp_path, monkeypatch, die)
    out = tmp_path / "out"
    with pytest.raises(SeriesError) as e:
        run_series("smoke", out, notebook_dir=nbdir, log=lambda *a: None)
    msg = str(e.value)
    assert "Notebook 01_b.ipynb could not be run to the end (DeadKernelError: Kernel died)" in msg
    assert "The kernel died" in msg and f"{out / 'notebooks' / '01_b.ipynb'}" in msg
    assert not (out / "dashboard.md").exists()

    argv = ["series", "--preset", "smoke", "--out", str(out), "--notebooks-dir", str(nbdir)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "corrlib series: error: Notebook 01_b.ipynb could not be run" in err
    assert "Traceback" not in err


def test_other_execution_errors_are_series_errors(tmp_path, monkeypatch):
    def broken(src, dest, params):
        raise OSError("No such kernel named python3")

    nbdir, _ = _fake_series(tmp_path, monkeypatch, broken)
    with pytest.raises(
        SeriesError, match=r"00_a\.ipynb could not be run .*OSError: No such kernel"
    ):
        run_series("smoke", tmp_path / "out", notebook_dir=nbdir, log=lambda *a: None)


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "CPU", "cuda:", ""])
def test_device_is_checked_before_running(device, tmp_path, monkeypatch, capsys):
    nbdir, ran = _fake_series(tmp_path, monkeypatch, _records)
    argv = ["series", "--preset", "smoke", "--out", str(tmp_path / "o"), "--device", device]
    assert main([*argv, "--notebooks-dir", str(nbdir)]) == 2
    assert f"Unknown device {device!r} (--device): pass auto, cpu, cuda, cuda:N" in (
        capsys.readouterr().err
    )
    assert ran == [] and not (tmp_path / "o").exists()


def test_valid_devices():
    for d in ("auto", "cpu", "cuda", "cuda:0", "cuda:11", "mps"):
        assert check_device(d) == d


def test_out_that_is_a_file(tmp_path, monkeypatch, capsys):
    nbdir, ran = _fake_series(tmp_path, monkeypatch, _records)
    (tmp_path / "afile").write_text("x")
    argv = ["series", "--preset", "smoke", "--out", str(tmp_path / "afile")]
    assert main([*argv, "--notebooks-dir", str(nbdir)]) == 2
    assert f"--out {tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    assert ran == []


@pytest.mark.slow
def test_real_dead_kernel_names_the_notebook(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "03_crash.ipynb", "import os\nos._exit(3)")
    with pytest.raises(SeriesError, match=r"03_crash\.ipynb could not be run .*DeadKernelError"):
        run_series("smoke", tmp_path / "out", notebook_dir=nbdir, log=lambda *a: None)
