"""``corrlib train``: any chapter's model at a preset, resumable, and under torchrun.

The torchrun test launches the real command line with 2 gloo processes on the CPU and checks that
the checkpoint equals the single-process run's (chapter 05: its losses are masked means, so it
also checks the Trainer's ``loss_weight``; chapter 02: plain per-sample means).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from corrlib import cli
from corrlib.recipes import chapter_setup, chapters, get_config, recipe_for
from corrlib.recipes._common import apply_overrides, normalize_overrides, overrides_tag
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


def test_set_changes_config_fields_into_a_folder_of_their_own(
    tmp_path, capsys, data_root, one_thread
):
    out = tmp_path / "runs"
    base = ["--chapter", "02_stn", "--preset", "smoke", "--out", str(out)]
    base += ["--data-root", str(data_root)]
    sets = ["--set", "aligner_steps=3", "--set", "log_every=1"]
    assert _train(*base, *sets) == 0
    tag = overrides_tag({"aligner_steps": 3, "log_every": 1})
    folder = out / "checkpoints" / "02_stn" / f"smoke{tag}"
    assert tag.startswith("+") and len(tag) == 9
    assert json.loads((folder / "overrides.json").read_text()) == {
        "aligner_steps": 3,
        "log_every": 1,
    }
    [ckpt] = (folder / "seed0").glob("*.ckpt")
    assert load_checkpoint(ckpt)["step"] == 3
    capsys.readouterr()
    # the preset's own folder is untouched; an unknown field or a wrong kind is refused
    assert not (out / "checkpoints" / "02_stn" / "smoke").exists()
    assert _train(*base, "--set", "stepz=3") == 2
    assert "has no field 'stepz'" in capsys.readouterr().err
    assert _train(*base, "--set", "steps=3") == 2
    assert "steps is {'default'" in capsys.readouterr().err
    assert _train(*base, "--set", "steps") == 2
    assert "write FIELD=VALUE" in capsys.readouterr().err
    assert _train(*base, "--set", "log_every=1", "--set", "log_every=2") == 2
    assert "--set log_every is given twice" in capsys.readouterr().err


def test_overrides_in_chapter_setup_and_their_kinds(tmp_path, data_root):
    run = chapter_setup(
        "03_ucn",
        "smoke",
        data_root=data_root,
        out_dir=tmp_path,
        overrides='{"size": [48, 48], "data": "synthetic"}',  # JSON text, as papermill's -p gives
    )
    assert run.cfg.size == (48, 48) and run.overrides == {"data": "synthetic", "size": (48, 48)}
    tag = overrides_tag({"data": "synthetic", "size": (48, 48)})
    assert run.ckpt_dir.parent.name == "smoke" + tag and run.results_name == "03_ucn" + tag
    assert "config overrides: data='synthetic', size=(48, 48)" in run.describe()
    # the same changes written otherwise: one folder; other changes in the same folder: refused
    again = chapter_setup(
        "03_ucn",
        "smoke",
        data_root=data_root,
        out_dir=tmp_path,
        overrides={"size": (48, 48), "data": "synthetic"},
    )
    assert again.ckpt_dir == run.ckpt_dir
    (run.ckpt_dir.parent / "overrides.json").write_text('{"size": [40, 40]}')
    with pytest.raises(ValueError, match="records other overrides than this run's"):
        chapter_setup(
            "03_ucn", "smoke", data_root=data_root, out_dir=tmp_path, overrides=again.overrides
        )
    plain = chapter_setup("03_ucn", "smoke", data_root=data_root, out_dir=tmp_path, overrides={})
    assert plain.ckpt_dir.parent.name == "smoke" and "overrides" not in plain.describe()
    assert plain.results_name == "03_ucn"
    cfg = plain.cfg
    assert apply_overrides(cfg, None) is cfg and apply_overrides(cfg, "") is cfg
    assert apply_overrides(cfg, {"willow_limit": 3}).willow_limit == 3  # None field: any value
    assert apply_overrides(cfg, {"willow_limit": None}).willow_limit is None  # "int | None"
    # an int for a float is a float, so both spellings share a folder
    assert apply_overrides(cfg, {"margin": 2}).margin == 2.0
    norm = normalize_overrides
    assert overrides_tag(norm(cfg, {"margin": 1})) == overrides_tag(norm(cfg, {"margin": 1.0}))
    for bad, match in (
        ({"margin": True}, r"True \(bool\) is not a number"),
        ({"batch_size": 2.5}, r"2\.5 \(float\) is not an int"),
        ({"data": None}, "is not allowed: the field takes no None"),
        ({"size": 3}, "is not a sequence"),
        ("{size: 3}", "not a JSON object"),
        ("[1, 2]", "must be a dict"),
        ('[["margin", 2.0]]', "must be a dict"),
        ({"stepz": 3}, "has no field 'stepz'"),
    ):
        with pytest.raises(ValueError, match=match):
            apply_overrides(cfg, bad)
        if isinstance(bad, str):  # papermill's text: the same errors through chapter_setup
            with pytest.raises(ValueError, match=match):
                chapter_setup(
                    "03_ucn", "smoke", data_root=data_root, out_dir=tmp_path, overrides=bad
                )


def test_dict_overrides_merge_into_the_presets_at_every_depth():
    paper = get_config("03_ucn", "paper")
    cfg = apply_overrides(paper, {"optim": {"default": {"lr": 1e-4}}})
    want = {**paper.optim["default"], "lr": 1e-4}  # SGD, cosine, weight decay, warm-up kept
    assert cfg.optim["default"] == want and paper.optim["default"]["lr"] == 1e-3
    lab = get_config("01_patch", "lab")
    steps = apply_overrides(lab, {"steps": {"default": 50}}).steps
    assert steps == {**lab.steps, "default": 50} and steps["mccnn-fast"] == lab.steps["mccnn-fast"]
    # nothing of the caller's dicts is shared with the frozen config
    change = {"optim": {"default": {"lr": 1e-4}}}
    cfg = apply_overrides(paper, change)
    change["optim"]["default"]["lr"] = 5.0
    assert cfg.optim["default"]["lr"] == 1e-4
