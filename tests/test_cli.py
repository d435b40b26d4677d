"""Tests of the corrlib command line."""

import json
import subprocess
import sys
import textwrap

import pytest

from corrlib.checkpoint import save_checkpoint
from corrlib.cli import main


def test_methods_lists_registry(capsys):
    assert main(["methods"]) == 0
    assert "daisy" in capsys.readouterr().out.split()


def test_python_m_corrlib_help():
    out = subprocess.run(
        [sys.executable, "-m", "corrlib", "--help"], capture_output=True, text=True, check=True
    )
    assert "eval" in out.stdout and "series" in out.stdout


def test_missing_dataset_folder_says_what_to_do(tmp_path, capsys):
    code = main(
        [
            "eval",
            "--method",
            "identity",
            "--dataset",
            "pf-willow",
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "PF-WILLOW" in err and str(tmp_path) in err
    assert "download=True" in err or "http" in err


def test_unknown_dataset(tmp_path, capsys):
    code = main(
        [
            "eval",
            "--method",
            "identity",
            "--dataset",
            "willow",
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "Valid values are {pf-willow, pf-pascal, spair-71k, tss}" in capsys.readouterr().err


def test_unknown_preset(tmp_path, capsys):
    assert main(["series", "--preset", "fast", "--out", str(tmp_path)]) == 2
    assert "Unknown value 'fast' for argument preset" in capsys.readouterr().err


@pytest.mark.realdata
def test_eval_pfwillow_writes_outputs(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "eval",
            "--method",
            "sift",
            "--dataset",
            "pf-willow",
            "--data-root",
            str(data_root),
            "--out",
            str(out),
            "--limit",
            "3",
            "--max-side",
            "128",
            "--no-progress",
        ]
    )
    assert code == 0
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["method"] == "sift@128" and meta["pairs"] == 3
    lines = (out / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("pair_index,source_image,target_image,keypoint_index,pred_x,pred_y")
    assert len(lines) == 1 + 30
    assert "wall time" in capsys.readouterr().out


@pytest.mark.realdata
def test_eval_tss(data_root, tmp_path):
    code = main(
        [
            "eval",
            "--method",
            "identity",
            "--dataset",
            "tss",
            "--data-root",
            str(data_root),
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 0
    meta = json.loads((tmp_path / "metrics.json").read_text())
    assert set(meta["per_subset"]) == {"FG3DCar", "JODS", "PASCAL"}
    assert meta["flows"] == f"flows/{meta['run_id']}"
    assert [p.name for p in (tmp_path / "flows").iterdir()] == [meta["run_id"]]
    assert (tmp_path / meta["flows"] / "JODS" / "scores.csv").is_file()


def test_eval_sfnet_checkpoint_on_tss(data_root, tmp_path):
    from corrlib.models.sfnet import export_sfnet
    from corrlib.recipes import get_config
    from corrlib.recipes import sfnet as recipe

    cfg = get_config("06_sfnet", "smoke")
    ckpt = export_sfnet(tmp_path / "sfnet.pt", recipe.build_model(cfg, variant="untrained"))
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--method",
            "sfnet",
            "--checkpoint",
            str(ckpt),
            "--dataset",
            "tss",
            "--data-root",
            str(data_root),
            "--out",
            str(out),
            "--max-side",
            "64",
            "--limit",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    assert any(out.rglob("flow1.flo")) and any(out.rglob("scores.csv"))


def _eval(out, data_root, *extra, method="identity", dataset="pf-willow"):
    argv = ["eval", "--method", method, "--dataset", dataset, "--data-root", str(data_root)]
    return main([*argv, "--out", str(out), "--no-progress", *extra])


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a method is built or a dataset loaded."""
    import corrlib.eval as ev

    def fail(*a, **k):
        raise AssertionError("work started before the options were checked")

    for name in ("get_method", "load_dataset", "evaluate_keypoints", "evaluate_tss"):
        monkeypatch.setattr(ev, name, fail)


def test_out_is_checked_before_any_work(tmp_path, capsys, no_work):
    (tmp_path / "afile").write_text("keep me")
    assert _eval(tmp_path / "afile", tmp_path) == 2
    assert f"--out {tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    assert _eval(tmp_path / "afile" / "sub", tmp_path) == 2
    assert f"lies under {tmp_path / 'afile'}, which is a file" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "keep me"


@pytest.mark.parametrize(
    "option,value", [("--limit", "0"), ("--limit", "-3"), ("--max-side", "0"), ("--max-side", "-5")]
)
def test_limit_and_max_side_must_be_positive(option, value, tmp_path, capsys, no_work):
    with pytest.raises(SystemExit) as e:
        _eval(tmp_path / "o", tmp_path, f"{option}={value}", method="ucn")
    assert e.value.code == 2
    assert f"argument {option}: must be an integer >= 1, got {value}" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["identity", "sift", "backbone-offline"])
def test_checkpoint_for_a_method_that_takes_none(method, tmp_path, capsys):
    # the data root is empty: the error comes before any data is read
    assert (
        _eval(tmp_path / "o", tmp_path, "--checkpoint", str(tmp_path / "m.pt"), method=method) == 2
    )
    err = capsys.readouterr().err
    assert f"Method '{method}' takes no checkpoint" in err and "drop --checkpoint" in err
    assert "Traceback" not in err and "PF-WILLOW" not in err


def test_checkpoint_that_does_not_build_names_the_file(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "ucn_nomodel.pt", {"format": "corrlib.ucn/1"})
    assert _eval(tmp_path / "o", tmp_path, "--checkpoint", str(ckpt), method="ucn") == 2
    err = capsys.readouterr().err
    assert f"cannot be built from --checkpoint {ckpt}: KeyError: 'config'" in err
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    assert _eval(tmp_path / "o", tmp_path, "--checkpoint", str(tmp_path / "garbage.pt")) == 2
    assert "takes no checkpoint" in capsys.readouterr().err
    code = _eval(
        tmp_path / "o", tmp_path, "--checkpoint", str(tmp_path / "garbage.pt"), method="ucn"
    )
    assert code == 2
    assert f"{tmp_path / 'garbage.pt'} cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--split", "train"], ["--protocol", "pf-willow"]])
def test_tss_takes_no_split_or_protocol(extra, tmp_path, capsys, no_work):
    assert _eval(tmp_path / "o", tmp_path, *extra, dataset="tss") == 2
    err = capsys.readouterr().err
    assert f"{extra[0]} cannot be used with --dataset tss: TSS has one split" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.realdata
def test_second_run_into_one_out_needs_overwrite(data_root, tmp_path, capsys):
    out = tmp_path / "o"
    assert _eval(out, data_root, "--limit", "2") == 0
    first = json.loads((out / "metrics.json").read_text())
    # the results; the lock file is rewritten by every run that takes it (pid, start second)
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".corrlib-eval.lock"}

    assert _eval(out, data_root, "--limit", "1") == 2
    err = capsys.readouterr().err
    assert f"--out {out} already holds the results of another run (run {first['run_id']}: " in err
    assert "identity on PFWillow" in err and "--overwrite" in err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".corrlib-eval.lock"}
    assert after == files  # untouched

    assert _eval(out, data_root, "--limit", "1", "--overwrite") == 0
    second = json.loads((out / "metrics.json").read_text())
    assert second["run_id"] != first["run_id"] and second["pairs"] == 1
    assert len((out / "predictions.csv").read_text().splitlines()) == 1 + 10

    # a TSS run replacing a keypoint run: nothing of the earlier run is left to mix with
    assert _eval(out, data_root, "--overwrite", "--limit", "1", dataset="tss") == 0
    third = json.loads((out / "metrics.json").read_text())
    assert not (out / "predictions.csv").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        ".corrlib-eval.lock",
        "flows",
        "metrics.json",
        "metrics.md",
    ]
    assert [p.name for p in (out / "flows").iterdir()] == [third["run_id"]]


_HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from corrlib.cli import _locked_out
    with _locked_out(Path(sys.argv[1])):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def test_a_running_eval_locks_its_out(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        assert _eval(out, tmp_path) == 2
        err = capsys.readouterr().err
        assert f"--out {out} is in use by another corrlib eval run (pid {child.pid}" in err
    finally:
        child.communicate("\n", timeout=60)
    assert _eval(out, tmp_path) == 2  # lock released: now the missing data is reported
    assert "PF-WILLOW" in capsys.readouterr().err


@pytest.mark.realdata
def test_two_concurrent_evals_into_one_out_do_not_mix(data_root, tmp_path):
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "corrlib", "eval", "--dataset", "pf-willow", "--no-progress"]
    cmd += ["--data-root", str(data_root), "--out", str(out)]
    runs = [
        subprocess.Popen([*cmd, "--method", "identity", "--limit", str(n)], stderr=subprocess.PIPE)
        for n in (3, 4)
    ]
    results = [(p.wait(timeout=300), p.stderr.read().decode()) for p in runs]
    assert sorted(rc for rc, _ in results) == [0, 2]
    err = next(e for rc, e in results if rc == 2)
    assert "is in use by another corrlib eval run" in err or "already holds the results" in err
    meta = json.loads((out / "metrics.json").read_text())
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 10 * meta["pairs"]
    assert meta["pairs"] in (3, 4) and sorted(p.name for p in out.iterdir()) == [
        ".corrlib-eval.lock",
        "metrics.json",
        "metrics.md",
        "predictions.csv",
    ]


def test_hidden_leftovers_are_not_results(tmp_path):
    from corrlib.cli import _earlier_results

    (tmp_path / "flows" / ".tmp-20250101-000000-000000-p1").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("the user's own file")
    assert _earlier_results(tmp_path) == []
    (tmp_path / "flows" / "20250101-000000-000000-p1").mkdir()
    (tmp_path / "metrics.md").write_text("# x")
    assert _earlier_results(tmp_path) == ["metrics.md", "flows"]
