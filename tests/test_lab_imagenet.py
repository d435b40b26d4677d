"""A `lab` run takes ImageNet features when torchvision's file is in the torch hub cache.

The cache here is a scratch folder with an empty file of the right name: only the choice of
setting is tested (no weights are loaded, and nothing here is ever reported as ImageNet's).
"""

from __future__ import annotations

import pytest

from corrlib.recipes import chapter_setup, get_config, recipe_for
from corrlib.recipes._common import LAB_TRUNK_ENV

CHAPTERS = {"03_ucn": "googlenet", "04_scnet": "vgg16"}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(LAB_TRUNK_ENV, "auto")
    return tmp_path / "torch" / "hub" / "checkpoints"


def _place(hub, chapter):
    setting = recipe_for(chapter).config.lab_imagenet
    hub.mkdir(parents=True, exist_ok=True)
    setting.file().write_bytes(b"")
    return setting


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_lab_uses_imagenet_only_when_its_file_is_cached(hub, chapter, tmp_path, monkeypatch):
    setting = recipe_for(chapter).config.lab_imagenet
    assert setting.arch == CHAPTERS[chapter]
    offline = get_config(chapter, "lab")
    run = chapter_setup(chapter, "lab", data_root=tmp_path, out_dir=tmp_path / "runs")
    assert "trunk: the offline fallback" in run.trunk and setting.fetch_command() in run.trunk
    assert run.ckpt_dir.parent.name == "lab"
    _place(hub, chapter)
    cfg = get_config(chapter, "lab")
    for key, value in setting.overrides.items():
        assert getattr(cfg, key) == value
    assert cfg != offline
    run = chapter_setup(chapter, "lab", data_root=tmp_path, out_dir=tmp_path / "runs")
    assert run.trunk.startswith(f"trunk: ImageNet {setting.arch}")
    assert run.trunk in run.describe() and str(tmp_path) not in run.describe()
    assert run.ckpt_dir.parent.name == "lab-imagenet"  # never mixed with the offline lab's
    # the other presets never change, and the environment can force the offline lab
    assert get_config(chapter, "paper") == recipe_for(chapter).PRESETS["paper"]
    assert get_config(chapter, "smoke") == recipe_for(chapter).PRESETS["smoke"]
    monkeypatch.setenv(LAB_TRUNK_ENV, "offline")
    assert get_config(chapter, "lab") == offline


def test_requiring_imagenet_without_the_file_says_how_to_fetch_it(hub, monkeypatch):
    monkeypatch.setenv(LAB_TRUNK_ENV, "imagenet")
    with pytest.raises(FileNotFoundError, match=r"vgg16.*IMAGENET1K_V1"):
        get_config("04_scnet", "lab")
    monkeypatch.setenv(LAB_TRUNK_ENV, "sometimes")
    with pytest.raises(ValueError, match=LAB_TRUNK_ENV):
        get_config("04_scnet", "lab")
    # chapters without an ImageNet lab setting ignore the choice
    assert get_config("06_sfnet", "lab") == recipe_for("06_sfnet").PRESETS["lab"]
