"""Chapter 08's recipe: the paper-preset table, finding the exported models, the benchmark table."""

from __future__ import annotations

import pytest
import torch

from corrlib.checkpoint import save_checkpoint
from corrlib.recipes import benchmark as recipe
from corrlib.recipes import chapters, get_config
from corrlib.train import CKPT_FORMAT


def test_paper_preset_rows_read_every_training_chapter_with_a_source():
    trained = [c for c in chapters() if c not in ("00_basics", "08_full_training")]
    rows = recipe.paper_preset_rows({c: get_config(c, "paper") for c in trained})
    assert [r["chapter"] for r in rows] == trained
    by = {r["chapter"]: r for r in rows}
    assert by["06_sfnet"]["backbone"] == "resnet101 (imagenet)"
    assert by["06_sfnet"]["image size"] == "320 x 320" and by["06_sfnet"]["batch"] == "16"
    assert by["04_scnet"]["optimiser"].startswith("sgd lr 0.001")
    assert by["04_scnet"]["data"] == "pf-pascal"
    assert all(r["source"] != "-" for r in rows)
    assert "reconstruction" in by["07_multiscale"]["source"]


def test_exported_models_and_step_times_come_from_the_output_folder(tmp_path):
    seed_dir = tmp_path / "checkpoints" / "06_sfnet" / "lab" / "seed0"
    seed_dir.mkdir(parents=True)
    (seed_dir / "full.pt").write_bytes(b"x")
    save_checkpoint(seed_dir / "full.ckpt", {"format": CKPT_FORMAT, "step": 70, "seconds": 14.0})
    found = recipe.exported_models(tmp_path, "lab")
    assert found == {"SFNet (06)": ("sfnet", seed_dir / "full.pt")}
    assert recipe.exported_models(tmp_path, "lab", lab_imagenet={"06_sfnet": True}) == {}
    assert recipe.lab_step_times(tmp_path, "lab") == {"06_sfnet": pytest.approx(0.2)}
    assert recipe.lab_step_times(tmp_path / "nothing", "lab") == {}


def test_benchmark_table_scores_what_is_present_and_names_what_is_not(data_root, tmp_path):
    cfg = recipe.config("smoke")
    methods = recipe.baseline_methods(cfg.replace(handcrafted=("identity",)))
    table = recipe.evaluate_all(methods, data_root, cfg)
    cells = table["identity"]
    assert cells["PF-WILLOW"].pairs == cfg.willow_limit and 0 <= cells["PF-WILLOW"].value <= 1
    assert cells["TSS"].pairs == 1 and cells["TSS"].result is not None
    text = recipe.results_markdown(table)
    assert "PF-WILLOW PCK@0.1 (pf-willow; 4 of 900 pairs)" in text
    assert str(data_root) not in text
    # an empty data root: every benchmark is absent, with how to fetch it
    empty = recipe.evaluate_all(methods, tmp_path, cfg)
    assert all(c.missing and c.value is None for c in empty["identity"].values())
    assert "PFWillow(root, download=True) fetches it" in empty["identity"]["PF-WILLOW"].missing
    assert str(tmp_path) not in recipe.results_markdown(empty)


def test_check_rank_loss_scale():
    def right(count, counts):
        return count * len(counts) / sum(counts)

    def forgot_the_world(count, counts):
        return count / sum(counts)

    def stub(count, counts):
        raise NotImplementedError

    assert recipe.check_rank_loss_scale(right).startswith("pass")
    assert "multiply by it" in recipe.check_rank_loss_scale(forgot_the_world)
    assert recipe.check_rank_loss_scale(lambda c, cs: 1.0).startswith("wrong")
    assert recipe.check_rank_loss_scale(stub).startswith("not attempted")
    assert recipe.check_rank_loss_scale(lambda c, cs: torch.ones(2)).startswith("wrong")


def test_exported_models_follow_the_lab_trunk_each_chapter_takes_now(tmp_path, monkeypatch):
    """By default a chapter's ``lab`` models are looked for where its notebook writes them now
    (under ``lab-imagenet`` when its ImageNet file is in the torch hub cache, else under
    ``lab``), then in the other lab folder; a model from ``lab-imagenet`` says so in its label."""
    from corrlib.recipes._common import LAB_TRUNK_ENV
    from corrlib.recipes.rtn import LAB_IMAGENET as RTN_IMAGENET
    from corrlib.recipes.sfnet import LAB_IMAGENET as SFNET_IMAGENET
    from corrlib.train import CKPT_FORMAT

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(LAB_TRUNK_ENV, "auto")
    base = tmp_path / "checkpoints"
    for chapter, name, seconds in (("06_sfnet", "full.pt", 7.0), ("05_rtn", "full.rtn.pt", 3.0)):
        for folder, scale in (("lab", 1.0), ("lab-imagenet", 10.0)):
            d = base / chapter / folder / "seed0"
            d.mkdir(parents=True)
            (d / name).write_bytes(b"x")
            ckpt = {"format": CKPT_FORMAT, "step": 10, "seconds": seconds * scale}
            save_checkpoint(d / "run.ckpt", ckpt)
    found = recipe.exported_models(tmp_path, "lab")
    assert found["SFNet (06)"][1] == base / "06_sfnet/lab/seed0/full.pt"
    assert found["RTN (05)"][1] == base / "05_rtn/lab/seed0/full.rtn.pt"
    times = recipe.lab_step_times(tmp_path, "lab")
    assert times == {"05_rtn": pytest.approx(0.3), "06_sfnet": pytest.approx(0.7)}  # one setting
    SFNET_IMAGENET.file().parent.mkdir(parents=True)
    SFNET_IMAGENET.file().write_bytes(b"")  # the choice only: nothing is loaded
    found = recipe.exported_models(tmp_path, "lab")
    assert found["SFNet (06) (ImageNet lab)"][1] == base / "06_sfnet/lab-imagenet/seed0/full.pt"
    assert "SFNet (06)" not in found  # one model a chapter: the setting that runs now
    assert found["RTN (05)"][1] == base / "05_rtn/lab/seed0/full.rtn.pt"  # no VGG-16 file
    assert recipe.lab_step_times(tmp_path, "lab")["06_sfnet"] == pytest.approx(7.0)
    RTN_IMAGENET.file().write_bytes(b"")
    found = recipe.exported_models(tmp_path, "lab")
    assert found["RTN (05) (ImageNet lab)"][1] == base / "05_rtn/lab-imagenet/seed0/full.rtn.pt"
    # a chapter whose ImageNet run has not happened yet: its offline model is still listed
    (base / "05_rtn/lab-imagenet/seed0/full.rtn.pt").unlink()
    assert "RTN (05)" in recipe.exported_models(tmp_path, "lab")
    # requiring ImageNet without a file is not an error here: that folder is read first
    monkeypatch.setenv(LAB_TRUNK_ENV, "imagenet")
    SFNET_IMAGENET.file().unlink()
    assert "SFNet (06) (ImageNet lab)" in recipe.exported_models(tmp_path, "lab")
    monkeypatch.setenv(LAB_TRUNK_ENV, "offline")
    assert recipe.exported_models(tmp_path, "lab")["SFNet (06)"][1] == base / (
        "06_sfnet/lab/seed0/full.pt"
    )
    assert recipe.exported_models(tmp_path, "paper") == {}


def test_steps_text_says_mccnns_epochs_and_the_others_steps():
    from corrlib.recipes import get_config
    from corrlib.recipes.benchmark import steps_text

    assert steps_text(get_config("01_patch", "paper")).startswith("MC-CNN 14 passes over every")
    assert steps_text(get_config("01_patch", "lab")).startswith("default 600, mccnn-fast 1,200")
    assert steps_text(get_config("06_sfnet", "paper")) == "default 3,660"
    assert steps_text(get_config("00_basics", "lab")) == "-"
