"""A `lab` run takes ImageNet features when torchvision's file is in the torch hub cache.

The cache here is a scratch folder with an empty file of the right name: only the choice of
setting is tested (no weights are loaded, and nothing here is ever reported as ImageNet's).
"""

from __future__ import annotations

import pytest

from corrlib.recipes import chapter_setup, get_config, recipe_for
from corrlib.recipes._common import LAB_TRUNK_ENV

CHAPTERS = {
    "03_ucn": "googlenet",
    "04_scnet": "vgg16",
    "05_rtn": "vgg16",
    "06_sfnet": "resnet101",
    "07_multiscale": "resnet101",
}


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
    assert get_config("02_stn", "lab") == recipe_for("02_stn").PRESETS["lab"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_lab_imagenet_setting_trains_end_to_end(
    chapter, tmp_path, monkeypatch, one_thread, request
):
    """Each chapter's ``lab`` with ImageNet features trains through ``train_main`` on the
    ImageNet architecture (a randomly initialised file: timing and wiring only), shrunk in counts
    and sizes as the ``paper`` presets are in CI, and its export loads and matches."""
    import math

    import torch

    from corrlib.methods import get_method
    from corrlib.models.backbones import Backbone
    from corrlib.recipes._common import ChapterRun
    from corrlib.train import load_checkpoint
    from tests.data.test_pfwillow import make_fake_pfwillow
    from tests.test_paper_presets import SHRINK, _random_imagenet_file

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(LAB_TRUNK_ENV, "imagenet")
    _random_imagenet_file(hub, CHAPTERS[chapter])
    if chapter == "04_scnet":  # its lab trains on PF-WILLOW's folds: the real benchmark
        root = request.getfixturevalue("data_root")
    else:
        root = tmp_path / "data"
        root.mkdir()
        make_fake_pfwillow(root)
    # the ImageNet setting, shrunk in counts and sizes only (as the paper presets in CI)
    cfg = get_config(chapter, "lab").replace(**SHRINK[chapter])
    if chapter == "07_multiscale":  # a random trunk mines nothing trustworthy: keep every match
        cfg = cfg.replace(verify="none", min_similarity=-1.0)
    assert all(
        getattr(cfg, k) == v
        for k, v in recipe_for(chapter).config.lab_imagenet.overrides.items()
        if k not in SHRINK[chapter]
    )
    out = tmp_path / "runs"
    run = ChapterRun(chapter, "lab", 0, cfg, root, torch.device("cpu"), out, out / "ckpt")
    trained = recipe_for(chapter).train_main(run, progress=False)
    losses = [row["loss"] for row in trained.history if "loss" in row]
    assert losses and all(math.isfinite(v) for v in losses)
    assert load_checkpoint(trained.checkpoint)["finished"]
    archs = {m.arch for m in trained.model.modules() if isinstance(m, Backbone)}
    assert archs == {CHAPTERS[chapter]}  # the ImageNet architecture, not the offline fallback
    method = get_method(trained.method, checkpoint=trained.exported)
    img = torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8)
    kps = torch.tensor([[20.0, 30.0], [60.0, 10.0]])
    assert method.match(img, img, kps).shape == (2, 2)
