"""Tests of the series runner: papermill execution, result gathering, dashboard, failures."""

import json
import re
from pathlib import Path

import matplotlib.image as mpimg
import nbformat
import numpy as np
import papermill
import pytest
import torch
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
    """Rows without the optional fields still render: pairs unknown, no margins."""
    paths = build_dashboard(
        [ROW, {**ROW, "method": "n", "published": None, "published_source": None}],
        tmp_path,
        preset="smoke",
    )
    md = paths["markdown"].read_text()
    assert (
        "## D [p]\n\n| method | chapter | preset | PCK@0.1 | pairs |\n|---|---|---|---|---|\n" in md
    )
    assert (
        "| m | 01_test | smoke | 0.500 | - |\n| published: m [paper, Tab. 1] |  |  | 0.600 |  |\n"
        in md
    )
    assert "| n | 01_test | smoke | 0.500 | - |\n" in md
    # no margin, no baseline
    assert "(" not in md.split("## D [p]")[1].split("Margins (in parentheses)")[0]
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
    assert "| m | 00_a | smoke |" in md and "01_b" not in md.split("Built from")[1]
    assert "99_old" not in md
    results = json.loads((out / "results.json").read_text())
    assert results["sources"] == ["00_a.json"] and len(results["rows"]) == 1
    assert "not in the dashboard (left by an earlier call): 01_b.json, 99_old.json" in logs[-1]


def test_dashboard_names_every_preset_it_shows(tmp_path):
    rows = [ROW, {**ROW, "chapter": "02_x", "preset": "paper"}]
    md = build_dashboard(rows, tmp_path, preset="smoke")["markdown"].read_text()
    assert "(preset: paper, smoke)" in md and "| m | 02_x | paper |" in md
    assert "- Preset `paper` (02_x): " in md and "- Preset `smoke` (01_test): " in md


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


# -- the dashboard as a paper's results table ------------------------------------------------

MINUS = "\u2212"  # margins and negative numbers use the true minus sign
WILLOW = "pf-willow: keypoint box, src->trg, per image"
TSS = "tss: official kit, T5, both directions"


def _row(method, dataset, metric, value, protocol, chapter="00_basics", **kw):
    base = {
        "chapter": chapter,
        "method": method,
        "dataset": dataset,
        "metric": metric,
        "value": value,
        "protocol": protocol,
        "preset": "lab",
        "published": None,
        "published_source": None,
    }
    return {**base, **kw}


def _table_rows():
    """Values are multiples of 1/8 (exact in binary), so every margin is exact too."""
    half = {"n": 450, "n_full": 900}
    alphas = ("PCK@0.05", "PCK@0.1", "PCK@0.15")
    return [
        *[
            _row("identity", "PF-WILLOW", a, v, WILLOW, baseline=True, **half)
            for a, v in zip(alphas, (0.125, 0.25, 0.375))
        ],
        *[
            _row("SIFT flow", "PF-WILLOW", a, v, WILLOW, **half)
            for a, v in zip(alphas, (0.25, 0.5, 0.625))
        ],
        _row(
            "DSP",
            "PF-WILLOW",
            "PCK@0.1",
            0.125,
            WILLOW,
            spread=0.03125,
            seeds=3,
            note="3 seeds, mean ± s.e.",
            published=0.476,
            published_source="Paper A, Tab. 2",
            **half,
        ),
        _row("NC|Net", "PF-WILLOW", "PCK@0.1", 0.75, WILLOW, n=300, n_full=900),
        _row(
            "SFNet",
            "PF-WILLOW",
            "PCK@0.1",
            0.625,
            WILLOW,
            chapter="06_sfnet",
            n=900,
            n_full=900,
            published=0.7,
            published_source="Paper C, Tab. 1",
        ),
        _row(
            "PF-LOM",
            "PF-WILLOW",
            "PCK@0.1",
            float("nan"),
            WILLOW,
            published=0.568,
            published_source="Paper B, Tab. 3",
        ),
        _row("identity", "TSS", "PCK@0.05", 0.25, TSS, baseline=True, n=3, n_full=400),
        _row("SIFT flow", "TSS", "PCK@0.05", 0.75, TSS, n=3, n_full=400),
        _row(
            "CNN",
            "MNIST-RTS",
            "error",
            0.25,
            "distorted MNIST",
            chapter="02_stn",
            baseline=True,
            higher_is_better=False,
            n=10000,
            n_full=10000,
            n_unit="digits",
        ),
        _row(
            "ST-CNN",
            "MNIST-RTS",
            "error",
            0.125,
            "distorted MNIST",
            chapter="02_stn",
            higher_is_better=False,
            n=10000,
            n_full=10000,
            n_unit="digits",
            published=0.012,
            published_source="Paper D, Tab. 1",
        ),
    ]


def _section(md, heading):
    return md.split(heading + "\n", 1)[1].split("\n## ", 1)[0]


def test_dashboard_is_a_results_table(tmp_path):
    md = build_dashboard(
        _table_rows(),
        tmp_path,
        preset="lab",
        seconds={"00_basics.ipynb": 12.5},
        sources=["00_basics.json"],
    )["markdown"].read_text()
    head = md.split("## ")[0]
    assert head.startswith("# Results dashboard (preset: lab)\n")
    assert "- Preset `lab` (00_basics, 02_stn, 06_sfnet): a laptop CPU" in head
    assert "Built from this run's metrics files only: `metrics/00_basics.json`." in head
    assert "| 00_basics.ipynb | 12.5 |" in head
    # sections in order of first appearance
    assert [s.split("\n")[0] for s in md.split("\n## ")[1:]] == [
        f"PF-WILLOW [{WILLOW}]",
        f"TSS [{TSS}]",
        "MNIST-RTS [distorted MNIST]",
    ]

    willow = _section(md, f"## PF-WILLOW [{WILLOW}]")
    table = [ln for ln in willow.splitlines() if ln.startswith("|")]
    assert table == [
        "| method | chapter | preset | PCK@0.05 | PCK@0.1 | PCK@0.15 | pairs | note |",
        "|---|---|---|---|---|---|---|---|",
        "| identity (baseline) | 00_basics | lab | 0.125 | 0.250 | 0.375 "
        "| 450 of 900 pairs (subset) |  |",
        "| SIFT flow | 00_basics | lab | 0.250 (+0.125) | 0.500 (+0.250) | 0.625 (+0.250) "
        "| 450 of 900 pairs (subset) |  |",
        f"| DSP | 00_basics | lab |  | 0.125 ± 0.031 ({MINUS}0.125) |  "
        "| 450 of 900 pairs (subset) | 3 seeds, mean ± s.e. |",
        # other pairs than the baseline's: no margin; the pipe in the name is escaped
        "| NC\\|Net | 00_basics | lab |  | 0.750 |  | 300 of 900 pairs (subset) |  |",
        # another chapter (no baseline of its own): no margin
        "| SFNet | 06_sfnet | lab |  | 0.625 |  | 900 pairs (full set) |  |",
        # complete pair set: the published number right after its method
        "| published: SFNet [Paper C, Tab. 1] |  |  |  | 0.700 |  |  |  |",
    ]
    # a subset: the published number is not beside ours but named under the table
    assert "0.476" not in "\n".join(table)
    assert (
        "- Not shown beside ours (pair set differs: ours is 450 of 900 pairs): "
        "DSP PCK@0.1 0.476 [Paper A, Tab. 2]"
    ) in willow
    # a published-only row: listed, never an n/a in the table
    assert "PF-LOM" not in "\n".join(table) and "n/a" not in md
    assert (
        "Published, not run here:\n\n- PF-LOM PCK@0.1: 0.568 [Paper B, Tab. 3] "
        "(quoted in 00_basics)"
    ) in willow

    tss = _section(md, f"## TSS [{TSS}]")
    assert "| SIFT flow | 00_basics | lab | 0.750 (+0.500) | 3 of 400 pairs (subset) |" in tss

    mnist = _section(md, "## MNIST-RTS [distorted MNIST]")
    assert "| method | chapter | preset | error (lower is better) | pairs |" in mnist
    assert f"| ST-CNN | 02_stn | lab | 0.125 ({MINUS}0.125) | 10000 digits (full set) |" in mnist
    assert "| published: ST-CNN [Paper D, Tab. 1] |  |  | 0.012 |  |" in mnist
    assert md.rstrip().endswith(
        "Margins (in parentheses) are over the row marked baseline (the identity baseline in "
        "the correspondence chapters) of the same chapter and preset on the same pairs; a "
        "difference smaller than two standard errors (where a spread is given) is not evidence. "
        "Published numbers are shown only where protocol and pair set match."
    )


def test_dashboard_tables_are_valid_markdown(tmp_path):
    md = build_dashboard(_table_rows(), tmp_path)["markdown"].read_text()
    for block in md.split("\n\n"):
        rows = [ln for ln in block.splitlines() if ln.startswith("|")]
        if not rows:
            continue
        widths = {len(re.findall(r"(?<!\\)\|", ln)) for ln in rows}
        assert len(widths) == 1, block  # every line has as many cells as the header


def test_dashboard_figure_and_json(tmp_path):
    rows = _table_rows()
    paths = build_dashboard(rows, tmp_path, preset="lab")
    img = mpimg.imread(paths["figure"])
    assert paths["figure"].stat().st_size > 10_000 and img.ndim == 3
    assert img.shape[1] == 1100  # two columns at 100 dpi, about JupyterLab's width
    saved = json.loads(paths["json"].read_text())
    assert set(saved) == {"preset", "seconds", "sources", "rows"}
    assert saved["rows"][0]["n_full"] == 900 and saved["rows"][0]["baseline"] is True
    assert saved["rows"][9]["method"] == "PF-LOM" and "n" not in saved["rows"][9]  # as given
    assert saved["rows"][9]["value"] is None  # the published-only NaN is strict JSON


def test_dashboard_figure_other_scales_and_no_rows(tmp_path):
    rows = [
        _row("a", "D", "seconds", 12.0, "p", higher_is_better=False),
        _row("b", "D", "seconds", float("nan"), "p", higher_is_better=False),
    ]
    fig = build_dashboard(rows, tmp_path / "a")["figure"]
    assert mpimg.imread(fig).shape[1] == 750  # one panel: one column
    md = (tmp_path / "a" / "dashboard.md").read_text()
    assert "| b | 00_basics | lab | n/a | - |" in md  # our run without a number
    empty = build_dashboard([], tmp_path / "b", preset="smoke")
    assert mpimg.imread(empty["figure"]).size > 0
    assert "No result rows." in empty["markdown"].read_text()


def test_record_results_keeps_optional_fields(tmp_path):
    row = {
        **ROW,
        "value": np.float32(0.25),
        "n": np.int64(450),
        "n_full": 900,
        "n_unit": "pairs",
        "higher_is_better": np.bool_(True),
        "baseline": False,
        "note": "1 seed",
        "spread": float("nan"),
        "seeds": 1,
    }
    record_results(tmp_path, "01_test", [row])
    (got,) = gather_results(tmp_path)
    assert got == {**ROW, **row, "value": 0.25, "n": 450, "higher_is_better": True, "spread": None}
    assert type(got["n"]) is int
    record_results(tmp_path, "02_test", [{**ROW, "value": torch.tensor(0.5)}])  # a 0-dim tensor
    assert gather_results(tmp_path, ["02_test.json"])[0]["value"] == 0.5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pairs": 450}, r"has unknown key 'pairs'; allowed keys: \['chapter'.*\['n', 'n_unit'"),
        ({"published_source": None}, r"published=0\.6 has no published_source"),
        ({"n": 0}, r"n must be a positive integer or None, got 0"),
        ({"n": 450.0}, r"n must be a positive integer or None, got 450\.0"),
        ({"n": 901, "n_full": 900}, r"n=901 is more than the full set n_full=900"),
        ({"value": "0.5"}, r"value must be a number or None, got '0\.5'"),
        ({"baseline": 1}, r"baseline must be True or False"),
        ({"spread": -0.1}, r"spread must be a standard error"),
        ({"method": ""}, r"method must be a non-empty string"),
    ],
)
def test_record_refuses_bad_rows(tmp_path, change, message):
    with pytest.raises(ValueError, match=message) as e:
        record_results(tmp_path, "01_test", [ROW, {**ROW, **change}])
    assert re.search(message, str(e.value)) and "Result row 1 of chapter 01_test" in str(e.value)
    assert not (tmp_path / "metrics").exists()  # nothing written


def test_record_refuses_missing_required_key(tmp_path):
    row = {k: v for k, v in ROW.items() if k != "protocol"}
    with pytest.raises(ValueError, match=r"Result row 0 of chapter x lacks keys \['protocol'\]"):
        record_results(tmp_path, "x", [row])


def test_published_only_without_value_is_allowed(tmp_path):
    row = {**ROW, "value": None}
    record_results(tmp_path, "01_test", [row])
    assert gather_results(tmp_path)[0]["value"] is None


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb")),
    ids=lambda p: p.stem,
)
def test_every_notebook_takes_config_overrides_and_records_apart(path):
    """A sweep point (config_overrides) keeps its checkpoints and its metrics file apart."""
    cells = json.loads(path.read_text())["cells"]
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "config_overrides = {}" in "".join(params[0]["source"])
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert re.search(r"chapter_setup\([^)]*overrides=config_overrides", code)
    assert "record_results(out_dir, run.results_name, rows)" in code
