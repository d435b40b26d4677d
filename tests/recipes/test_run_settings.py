"""A checkpoint records the chapter's run settings and is reused only under the same ones."""

from __future__ import annotations

import pytest

from corrlib.recipes import get_config
from corrlib.recipes import ucn as recipe


@pytest.fixture
def cfg():
    return get_config("03_ucn", "smoke")


def test_run_settings_skip_evaluation_fields(cfg):
    settings = cfg.run_settings()
    assert settings["batch_size"] == cfg.batch_size and settings["margin"] == cfg.margin
    for name in ("steps", "optim", "seeds", "max_side", "willow_limit", "variants"):
        assert name not in settings
    config = cfg.train_config("hard-negatives", seed=0, settings={"extra": 1})
    assert config.recipe == {**settings, "extra": 1}


def test_checkpoint_is_refused_under_other_batch_size(cfg, tmp_path, one_thread):
    path = tmp_path / "u.ckpt"
    recipe.train_ucn("hard-negatives", cfg, path, seed=0, device="cpu", steps=1)
    # an evaluation setting changes nothing: the finished run is reused
    recipe.train_ucn(
        "hard-negatives", cfg.replace(max_side=32), path, seed=0, device="cpu", steps=1
    )
    with pytest.raises(
        ValueError, match=r"config\.recipe\['batch_size'\]: recorded 2, requested 3"
    ):
        recipe.train_ucn(
            "hard-negatives", cfg.replace(batch_size=3), path, seed=0, device="cpu", steps=1
        )
    with pytest.raises(ValueError, match=r"config\.recipe\['margin'\]"):
        recipe.train_ucn(
            "hard-negatives", cfg.replace(margin=0.5), path, seed=0, device="cpu", steps=1
        )


def test_settings_override_a_field():
    cfg = get_config("01_patch", "smoke")
    config = cfg.train_config("deepdesc", seed=0, settings={"mining": 1.0})
    assert cfg.mining != 1.0 and config.recipe["mining"] == 1.0


#: Each training chapter's run settings (the config fields a checkpoint records), as of
#: this test's last update. A new field makes older checkpoints of the chapter unusable
#: unless the chapter's ``LEGACY_SETTINGS`` says what those runs had: add it there, then here.
RUN_SETTINGS = {
    "01_patch": (
        "batch_size",
        "brown_train",
        "data",
        "kitti_scenes",
        "mccnn_augment",
        "mccnn_epochs",
        "mccnn_fc_layers",
        "mccnn_fc_units",
        "mccnn_input_norm",
        "mccnn_lr_epochs",
        "mccnn_patch",
        "mccnn_sampling",
        "mining",
        "n_hi",
        "n_lo",
        "n_test",
        "n_train_brown",
        "n_train_stereo",
        "n_train_synthetic",
        "p_hi",
        "patch_size",
        "synthetic_images",
        "train_stereo_scale",
        "width_mult",
    ),
    "02_stn": (
        "aligner_kind",
        "aligner_norm",
        "aligner_steps",
        "aligner_strength",
        "batch_size",
        "cnn_channels",
        "loc_channels",
        "loc_hidden",
        "n_test",
        "n_train",
        "st_out_size",
        "tps_lattice",
    ),
    "03_ucn": (
        "batch_size",
        "crops",
        "cub_pairs_per_class",
        "data",
        "dim",
        "jitter",
        "kind",
        "margin",
        "mining_rule",
        "pascal_pairs_per_class",
        "points",
        "pool_pairs",
        "radius_px",
        "size",
        "st_dilation",
        "st_kernel",
        "strength",
        "train_trunk",
        "trunk",
        "trunk_tap",
        "trunk_weights",
        "trunk_widths",
    ),
    "04_scnet": (
        "agplus_mode",
        "box_margin",
        "data",
        "dim",
        "input_size",
        "iou_neg",
        "iou_pos",
        "margin",
        "mirror",
        "negatives",
        "pool",
        "proposals",
        "rectify_ag",
        "tap",
        "tps_reg",
        "train_limit",
        "train_proposals",
        "trunk",
        "trunk_weights",
    ),
    "05_rtn": (
        "batch_size",
        "geo_kernel",
        "input_size",
        "kind",
        "level_steps",
        "levels",
        "photos",
        "radius",
        "strength",
        "synthetic_pairs",
        "trunk",
        "trunk_weights",
        "weak_data",
        "weak_images",
        "weak_on",
        "weak_pairs",
        "weak_temperature",
        "weak_trains",
        "weak_window",
        "widths",
    ),
    "06_sfnet": (
        "arch",
        "batch_size",
        "beta",
        "blocks",
        "cache_features",
        "exclude_pfpascal",
        "images",
        "jitter",
        "kernels",
        "kind",
        "loss_weights",
        "mask_threshold",
        "pairs",
        "sigma",
        "size",
        "source",
        "strength",
        "train_trunk",
        "trunk_weights",
    ),
    "07_multiscale": (
        "arch",
        "base_weight",
        "batch_size",
        "beta",
        "cache_prefix",
        "candidates",
        "cross_pairs",
        "fg_dilation",
        "head_width",
        "images",
        "kind",
        "loss_weights",
        "margin",
        "min_fraction",
        "min_inliers",
        "min_similarity",
        "min_votes",
        "mine_with",
        "mixing",
        "mode",
        "points",
        "radius_cells",
        "ransac_iterations",
        "ransac_threshold",
        "shared_weights",
        "size",
        "source",
        "stage",
        "strength",
        "synthetic_fraction",
        "synthetic_pairs",
        "test_points",
        "top_k",
        "trunk_weights",
        "verify",
    ),
}


@pytest.mark.parametrize("chapter", sorted(RUN_SETTINGS))
def test_new_run_settings_say_what_older_checkpoints_had(chapter):
    settings = set(get_config(chapter, "paper").run_settings())
    assert settings == set(RUN_SETTINGS[chapter]), (
        f"{chapter}'s run settings changed: new {sorted(settings - set(RUN_SETTINGS[chapter]))}, "
        f"gone {sorted(set(RUN_SETTINGS[chapter]) - settings)}. Add each new one with the value "
        "older checkpoints were trained with to the chapter's Config.LEGACY_SETTINGS['recipe'], "
        "then update RUN_SETTINGS."
    )


def test_legacy_values_fill_only_missing_keys(tmp_path, cfg, one_thread):
    """A key missing from an old checkpoint counts as its legacy value; a key recorded with
    another value is refused even when the legacy value matches the request."""
    import torch

    path = tmp_path / "u.ckpt"
    recipe.train_ucn("hard-negatives", cfg, path, seed=0, device="cpu", steps=1)
    state = torch.load(path, weights_only=True)
    assert state["config"]["recipe"]["pascal_pairs_per_class"] == 200
    del state["config"]["recipe"]["pascal_pairs_per_class"]  # as written before the field
    torch.save(state, path)
    recipe.train_ucn("hard-negatives", cfg, path, seed=0, device="cpu", steps=1)  # reused
    with pytest.raises(ValueError, match=r"recipe\['pascal_pairs_per_class'\]: recorded 200"):
        recipe.train_ucn(
            "hard-negatives",
            cfg.replace(pascal_pairs_per_class=50),
            path,
            seed=0,
            device="cpu",
            steps=1,
        )
    state["config"]["recipe"]["pascal_pairs_per_class"] = 50  # recorded: compared as it is
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"recipe\['pascal_pairs_per_class'\]: recorded 50"):
        recipe.train_ucn("hard-negatives", cfg, path, seed=0, device="cpu", steps=1)
