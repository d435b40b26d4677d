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
