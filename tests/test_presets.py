"""Presets (corrlib.presets) and the chapters' typed configs (corrlib.recipes.<chapter>.Config)."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from corrlib.presets import (
    PRESET_ENV,
    PRESETS,
    check_preset,
    default_preset,
)
from corrlib.recipes import chapters, get_config, recipe_for
from corrlib.recipes._common import TrainingConfig
from corrlib.train import TrainConfig

CHAPTERS = (
    "00_basics",
    "01_patch",
    "02_stn",
    "03_ucn",
    "04_scnet",
    "05_rtn",
    "06_sfnet",
    "07_multiscale",
    "08_full_training",
)
TRAINING_CHAPTERS = CHAPTERS[1:-1]

INVALID_FAST = (
    r"Unknown value 'fast' for argument preset\. Valid values are \{smoke, lab, paper\}\."
)


# ------------------------------------------------------------------------------------------------
# check_preset
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["smoke", "lab", "paper"])
def test_check_preset_accepts(name):
    assert check_preset(name) == name


def test_presets_constant():
    assert PRESETS == ("smoke", "lab", "paper")
    assert PRESET_ENV == "CORRLIB_PRESET"


@pytest.mark.parametrize("bad", ["fast", "Lab", " lab", ""])
def test_check_preset_rejects_unknown(bad):
    with pytest.raises(
        ValueError,
        match=(
            rf"Unknown value '{bad}' for argument preset\. "
            rf"Valid values are \{{smoke, lab, paper\}}\."
        ),
    ):
        check_preset(bad)
    with pytest.raises(ValueError, match=INVALID_FAST):
        check_preset("fast")


@pytest.mark.parametrize("bad", [None, 1, ("lab",), b"lab"])
def test_check_preset_rejects_non_strings(bad):
    msg = f"Argument preset must be a string, one of {{smoke, lab, paper}}; got {bad!r}."
    with pytest.raises(TypeError, match=re.escape(msg)):
        check_preset(bad)


# ------------------------------------------------------------------------------------------------
# default_preset
# ------------------------------------------------------------------------------------------------


def test_default_preset_is_lab_without_env(monkeypatch):
    monkeypatch.delenv(PRESET_ENV, raising=False)
    assert default_preset() == "lab"


@pytest.mark.parametrize("name", ["smoke", "lab", "paper"])
def test_default_preset_reads_env(monkeypatch, name):
    monkeypatch.setenv("CORRLIB_PRESET", name)
    assert default_preset() == name


def test_default_preset_rejects_invalid_env(monkeypatch):
    monkeypatch.setenv("CORRLIB_PRESET", "fast")
    with pytest.raises(ValueError, match=INVALID_FAST):
        default_preset()


# ------------------------------------------------------------------------------------------------
# get_config
# ------------------------------------------------------------------------------------------------


def test_chapters_lists_every_recipe():
    assert chapters() == list(CHAPTERS)
    for chapter in CHAPTERS:
        assert recipe_for(chapter).CHAPTER == chapter


def test_get_config_known_answer():
    cfg = get_config("00_basics", "smoke")
    assert cfg.pf_willow_limit == 12 and cfg.max_side == 96
    assert cfg.methods[0] == "identity" and "census" in cfg.methods
    assert get_config("00_basics", "lab").tss_subsets == ("FG3DCar", "JODS", "PASCAL")


def test_get_config_is_frozen_and_replace_returns_a_changed_copy():
    from corrlib.recipes import basics

    first = get_config("00_basics", "lab")
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.max_side = 1
    changed = first.replace(max_side=1)
    assert changed.max_side == 1 and first.max_side is None
    with pytest.raises(TypeError, match="new_key"):
        first.replace(new_key="x")
    second = get_config("00_basics", "lab")
    assert second.max_side is None
    assert second == basics.PRESETS["lab"]
    assert second is not basics.PRESETS["lab"]


@pytest.mark.parametrize("chapter", TRAINING_CHAPTERS)
def test_get_config_copies_nested_values(chapter):
    # a mutable value inside a preset (the steps and optimiser dicts) must be copied too, not shared
    cfg = get_config(chapter, "smoke")
    before = cfg.steps_for("default"), cfg.optim_for("default")["lr"]
    cfg.steps["default"] = 123456
    cfg.optim["default"]["lr"] = 9.0
    again = get_config(chapter, "smoke")
    assert (again.steps_for("default"), again.optim_for("default")["lr"]) == before
    assert recipe_for(chapter).PRESETS["smoke"] == again
    # nor do the presets share them with each other
    assert get_config(chapter, "paper").steps is not get_config(chapter, "paper").steps


def test_get_config_rejects_unknown_chapter():
    valid = ", ".join(CHAPTERS)
    with pytest.raises(
        ValueError,
        match=rf"Unknown value '99_magic' for argument chapter\. Valid values are \{{{valid}\}}\.",
    ):
        get_config("99_magic", "lab")


def test_get_config_rejects_unknown_preset():
    with pytest.raises(ValueError, match=INVALID_FAST):
        get_config("00_basics", "fast")
    with pytest.raises(TypeError, match="Argument preset must be a string"):
        get_config("00_basics", None)
    for chapter in CHAPTERS:
        with pytest.raises(ValueError, match=INVALID_FAST):
            recipe_for(chapter).config("fast")


# ------------------------------------------------------------------------------------------------
# the configurations themselves
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_chapter_defines_every_preset_as_its_config(chapter):
    module = recipe_for(chapter)
    presets = module.PRESETS
    assert set(presets) == set(PRESETS)
    assert presets["paper"] == module.Config()  # the defaults are the paper's settings
    for name in PRESETS:
        cfg = get_config(chapter, name)
        assert type(cfg) is module.Config, f"{chapter}/{name}"
        assert cfg == presets[name] == module.config(name)


#: The fields in which ``lab`` (a 2-core CPU in minutes) deviates from the paper's settings.
LAB_CHANGES = {
    "00_basics": {"tss_max_side"},
    "01_patch": {
        "train_stereo_scale", "test_stereo_scale", "synthetic_images", "n_train_stereo",
        "n_train_synthetic", "n_test", "patch_size", "mccnn_fc_units", "mccnn_fc_layers",
        "width_mult", "steps", "optim", "log_every", "ckpt_every", "max_disp", "data",
        "mccnn_input_norm", "mccnn_augment", "mccnn_sampling", "mccnn_epochs",
    },
    "02_stn": {
        "models", "cnn_channels", "loc_channels", "loc_hidden", "batch_size", "steps", "optim",
        "log_every", "ckpt_every", "aligner_steps",
    },
    "03_ucn": {
        "data", "trunk", "size", "pool_pairs", "crops", "trunk_widths", "dim", "batch_size",
        "points", "radius_px", "steps", "optim", "log_every", "ckpt_every", "test_pairs",
        "test_points", "max_side", "tss_max_side",
    },
    "04_scnet": {
        "data", "trunk", "tap", "pool", "dim", "negatives", "test_proposals", "steps", "optim",
        "log_every", "ckpt_every",
    },
    "05_rtn": {
        "trunk", "levels", "trunk_weights", "level_steps", "widths", "geo_kernel", "input_size",
        "photos", "synthetic_pairs", "weak_data", "weak_images", "weak_pairs", "weak_window",
        "weak_trains", "weak_temperature", "batch_size", "steps", "optim", "log_every",
        "ckpt_every", "ablation_seeds", "test_pairs", "test_points", "composite_test_pairs",
    },
    "06_sfnet": {
        "source", "images", "pairs", "test_images", "test_pairs", "cache_features", "jitter",
        "size", "arch", "trunk_weights", "kernels", "batch_size", "steps", "optim", "log_every",
        "ckpt_every", "interrupt_at", "eval_size",
    },
    "07_multiscale": {
        "arch", "trunk_weights", "stage", "source", "size", "images", "cross_pairs",
        "synthetic_pairs", "cache_prefix", "batch_size", "points", "head_width", "steps",
        "log_every", "ckpt_every", "test_images", "test_pairs", "cross_test_pairs", "test_points",
        "mining_willow_pairs", "max_side",
    },
    "08_full_training": {"max_side", "patch_max_side"},
}  # fmt: skip


def _changed(cfg, paper) -> set[str]:
    return {
        f.name for f in dataclasses.fields(paper) if getattr(cfg, f.name) != getattr(paper, f.name)
    }


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_lab_differs_from_paper_only_where_intended(chapter):
    paper, lab, smoke = (get_config(chapter, p) for p in ("paper", "lab", "smoke"))
    assert _changed(lab, paper) == LAB_CHANGES[chapter]
    assert _changed(smoke, paper), f"{chapter}: smoke is the paper's config"


def test_only_training_chapters_carry_training_settings():
    assert not hasattr(get_config("00_basics", "lab"), "steps")  # chapter 00 trains nothing
    assert not hasattr(get_config("08_full_training", "lab"), "steps")  # nor does chapter 08
    for chapter in TRAINING_CHAPTERS:
        assert isinstance(get_config(chapter, "lab"), TrainingConfig)


@pytest.mark.parametrize("chapter", TRAINING_CHAPTERS)
def test_every_model_of_every_preset_has_a_valid_train_config(chapter):
    names = {
        "default",
        "aligner",
        "full",
        "cnn",
        "st-cnn-affine",
        "mccnn-fast",
        "mccnn-accurate",
        "deepdesc",
        "hard-negatives",
    }
    for preset in PRESETS:
        cfg = get_config(chapter, preset)
        assert "default" in cfg.steps and "default" in cfg.optim
        for name in names | set(cfg.steps) | set(cfg.optim):
            tc = cfg.train_config(name, seed=3, device="cpu")
            assert isinstance(tc, TrainConfig) and tc.steps == cfg.steps_for(name) and tc.seed == 3
            assert tc.lr == cfg.optim_for(name)["lr"] and tc.log_every == cfg.log_every
        n = cfg.steps_for("default") + 7
        assert cfg.train_config("default", seed=0, steps=n).steps == n  # steps overrides


def test_steps_and_optim_fall_back_to_default():
    cfg = get_config("01_patch", "lab")
    assert (
        cfg.steps_for("mccnn-fast") == 1200 and cfg.steps_for("2ch") == cfg.steps["default"] == 600
    )
    assert cfg.optim_for("mccnn-accurate")["lr"] == 3e-3 and cfg.optim_for("siamese")["lr"] == 1e-3
    cfg.optim_for("siamese")["lr"] = 1.0  # a copy
    assert cfg.optim["default"]["lr"] == 1e-3


def _cost(limit, side):
    """Order 'None' (everything / the original resolution) above any number."""
    return float("inf") if limit is None else limit, float("inf") if side is None else side


def test_smoke_is_smaller_than_lab_and_lab_not_larger_than_paper():
    smoke, lab, paper = (get_config("00_basics", p) for p in PRESETS)
    s_pairs, s_side = _cost(smoke.pf_willow_limit, smoke.max_side)
    l_pairs, l_side = _cost(lab.pf_willow_limit, lab.max_side)
    assert s_pairs <= l_pairs and s_side <= l_side
    assert (s_pairs, s_side) != (l_pairs, l_side)  # strictly smaller in at least one
    s_tss, l_tss, p_tss = (_cost(None, c.tss_max_side)[1] for c in (smoke, lab, paper))
    assert s_tss < l_tss <= p_tss
    assert set(smoke.tss_subsets) < set(lab.tss_subsets) <= set(paper.tss_subsets)
    assert smoke.methods == lab.methods == paper.methods  # every method is exercised


def test_sfnet_presets_and_paper_follows_the_authors_settings():
    from corrlib.models.sfnet import LOSS_WEIGHTS, SFNet, sfnet
    from corrlib.recipes.sfnet import VARIANTS, Config

    cfgs = {p: get_config("06_sfnet", p) for p in PRESETS}
    for c in cfgs.values():
        assert type(c) is Config
        assert set(c.variants) <= set(VARIANTS) and all(s % 8 == 0 for s in c.size)
    paper = cfgs["paper"]
    assert paper == Config()
    # the authors' code: Adam, lr 3e-5, batch 16, sigma 5, beta 0.02, (5, 3) kernels, 320 x 320
    opt = paper.optim_for("full")
    assert (opt["optimizer"], opt["lr"], paper.batch_size, paper.sigma, paper.beta) == (
        "adam",
        3e-5,
        16,
        5.0,
        0.02,
    )
    assert paper.kernels == (5, 3) and tuple(paper.size) == (320, 320) and paper.blocks == 2
    assert paper.mask_threshold == 0.1 and paper.loss_weights is None
    assert LOSS_WEIGHTS == {"mask": 3.0, "flow": 16.0, "smooth": 0.5}
    assert paper.source == "voc" and paper.arch == "resnet101" and paper.trunk_weights == "imagenet"
    # 40 epochs of the 1464 VOC training images, lr x 0.2 after epoch 30
    assert paper.steps_for("full") * paper.batch_size == 40 * 1464
    assert (opt["schedule"], opt["step_size"] * paper.batch_size, opt["gamma"]) == (
        "step",
        30 * 1464,
        0.2,
    )
    # the model's own defaults agree with the paper config
    params = inspect.signature(SFNet).parameters
    assert (params["sigma"].default, params["beta"].default) == (paper.sigma, paper.beta)
    assert inspect.signature(sfnet).parameters["arch"].default == paper.arch
