"""``corrlib train``: any chapter's model at a preset, resumable, and under torchrun.

The torchrun test launches the real command line with 2 gloo processes on the CPU and checks that
the checkpoint equals the single-process run's (chapter 05: its losses are masked means, so it
also checks the Trainer's ``loss_weight``; chapter 02: plain per-sample means).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from corrlib import cli
from corrlib.recipes import chapters, recipe_for
from corrlib.train import CKPT_FORMAT, load_checkpoint

from ._cli import eval_checkpoint
from .test_presets import TRAINING_CHAPTERS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _train(*args) -> int:
    return cli.main(["train", "--no-progress", *args])


def test_every_chapter_with_a_model_can_be_trained():
    trainable = [c for c in chapters() if hasattr(recipe_for(c), "train_main")]
    assert trainable == list(TRAINING_CHAPTERS)
    for c in trainable:
        names = recipe_for(c).TRAINABLE
        assert len(names) == len(set(names)) >= 1


def test_refusals_name_the_choices(tmp_path, capsys):
    assert _train("--chapter", "00_basics", "--preset", "smoke", "--out", str(tmp_path)) == 2
    assert "has no model to train" in capsys.readouterr().err
    assert _train(
        "--chapter", "03_ucn", "--preset", "smoke", "--out", str(tmp_path), "--variant", "big"
    ) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "'big' is not a model of 03_ucn" in err and "hard-negatives+st" in err
    assert _train("--chapter", "03_ucn", "--preset", "huge", "--out", str(tmp_path)) == 2


def test_train_resume_and_evaluate_the_export(tmp_path, capsys, data_root, one_thread):
    out = tmp_path / "runs"
    args = ["--chapter", "03_ucn", "--preset", "smoke", "--out", str(out)]
    args += ["--data-root", str(data_root)]
    assert _train(*args) == 0
    text = capsys.readouterr().out
    ckpt = out / "checkpoints" / "03_ucn" / "smoke" / "seed0" / "hard-negatives+st.ckpt"
    assert f"checkpoint: {ckpt}" in text and "corrlib eval --method ucn" in text
    first = load_checkpoint(ckpt)
    assert first["finished"]
    # the same command again: the finished checkpoint is used, nothing is retrained
    assert _train(*args) == 0
    again = load_checkpoint(ckpt)
    assert again["seconds"] == first["seconds"]
    for k in first["model"]:
        assert torch.equal(first["model"][k], again["model"][k])
    exported = ckpt.with_suffix(".pt")
    assert eval_checkpoint("ucn", exported, data_root, tmp_path / "eval") == 0


def _torchrun(args, env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*cmd, "-m", "corrlib", "train", "--no-progress", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("chapter", "checkpoint"), [("05_rtn", "full-weak.pt"), ("02_stn", "aligner.ckpt")]
)
def test_torchrun_two_processes_equal_one(tmp_path, data_root, chapter, checkpoint):
    env = dict(os.environ, OMP_NUM_THREADS="1", CORRLIB_DATA=str(data_root))
    common = ["--chapter", chapter, "--preset", "smoke", "--data-root", str(data_root)]
    one = tmp_path / "one"
    assert _train(*common, "--out", str(one)) == 0
    two = tmp_path / "two"
    res = _torchrun([*common, "--out", str(two)], env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(2 processes)" in res.stdout
    rel = os.path.join("checkpoints", chapter, "smoke", "seed0", checkpoint)
    a, b = load_checkpoint(one / rel), load_checkpoint(two / rel)
    worst = max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])
    print(f"{chapter}: largest parameter difference, torchrun x2 vs 1 process: {worst:.1e}")
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-5)
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)


@pytest.mark.parametrize("chapter", TRAINING_CHAPTERS)
def test_every_chapter_trains_and_exports_at_smoke(
    tmp_path, capsys, data_root, one_thread, chapter
):
    recipe = recipe_for(chapter)
    out = tmp_path / "runs"
    code = _train("--chapter", chapter, "--preset", "smoke", "--out", str(out),
                  "--data-root", str(data_root))  # fmt: skip
    assert code == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    folder = out / "checkpoints" / chapter / "smoke" / "seed0"
    assert f"checkpoints in {folder}" in text and f"{recipe.TRAINABLE[0]} at smoke" in text
    states = [load_checkpoint(p) for p in sorted(folder.iterdir()) if p.suffix in (".ckpt", ".pt")]
    runs = [s for s in states if s.get("format") == CKPT_FORMAT]  # the Trainer's, not exports
    assert runs and all(s["finished"] and s["step"] >= 1 for s in runs)
    if "exported:" in text:  # a correspondence method: the printed command evaluates it
        exported = text.split("exported: ")[1].split("\n")[0]
        method = text.split("--method ")[1].split(" ")[0]
        assert eval_checkpoint(method, exported, data_root, tmp_path / "eval", limit=1) == 0


def test_torchrun_refuses_scnet_at_once(tmp_path, data_root):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = _torchrun(
        ["--chapter", "04_scnet", "--preset", "smoke", "--out", str(tmp_path),
         "--data-root", str(data_root)],
        env,
    )  # fmt: skip
    assert res.returncode != 0
    assert "trains one pair per step" in res.stderr
    assert not (tmp_path / "checkpoints").exists()  # refused before any preparation
