"""Tests of the corrlib command line."""

import json
import subprocess
import sys

import pytest

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
    assert meta["method"] == "sift" and meta["pairs"] == 3
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
