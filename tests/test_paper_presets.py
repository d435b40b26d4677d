"""Every training chapter's ``paper`` preset, end to end, on fake copies of the official layouts.

The ``paper`` presets train on downloads of gigabytes on a GPU, so CI cannot run them as they
are. These tests keep what makes each one the paper's (its data sources and their official
on-disk layout, its backbone architecture and weights setting, its optimiser, schedule and
losses) and shrink only counts and sizes (steps, images, pairs, batch, image size), then run
``train_main`` exactly as ``corrlib train --preset paper`` does and check that a model trained,
its loss is finite and, where the chapter exports one, the export loads.

Backbones whose ``paper`` weights are ``"imagenet"`` (chapter 03: GoogLeNet; chapters 06 and
07: ResNet-101) get a
randomly initialised file of the right name in a scratch torch hub cache, so the ImageNet code
path runs; nothing here is an ImageNet result. ``"auto"`` backbones (chapters 04 and 05: VGG-16)
take the documented offline fallback, with its warning.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from corrlib.methods import get_method
from corrlib.recipes import get_config, recipe_for
from corrlib.recipes._common import ChapterRun
from corrlib.train import load_checkpoint
from tests.data.test_digits import _fake_split
from tests.data.test_pfpascal import make_fake_pfpascal
from tests.data.test_pfwillow import make_fake_pfwillow
from tests.fake_layouts import (
    write_cub2011,
    write_graffiti,
    write_kitti2012,
    write_pascal_keypoints,
    write_phototour,
    write_voc2011,
    write_voc2012,
)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def _mnist(root: Path) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _fake_split(raw, "train", 64, seed=0)
    _fake_split(raw, "t10k", 32, seed=1)


def _random_imagenet_file(hub: Path, arch: str) -> None:
    """A randomly initialised torchvision ``arch`` saved under its ImageNet file name."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    hub.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    extra = {
        "googlenet": {"aux_logits": True, "init_weights": True},
        "vgg16": {},
    }.get(arch, {"zero_init_residual": True})  # the ResNets
    model = torchvision.models.get_model(arch, weights=None, **extra)
    torch.save(model.state_dict(), hub / Path(weights.url).name)


#: Per chapter: the fake data it reads, then the counts and sizes shrunk for CI (nothing else).
SHRINK = {
    "01_patch": dict(
        mccnn_epochs=None,  # the 2 steps below, not 14 passes over every reference
        n_train_stereo=40,
        n_test=40,
        n_train_brown=40,
        kitti_scenes=2,
        steps={"default": 2},
        batch_size=8,
        log_every=1,
        ckpt_every=0,
        willow_limit=1,
    ),
    "02_stn": dict(steps={"default": 2}, aligner_steps=2, batch_size=8, log_every=1, ckpt_every=0),
    "03_ucn": dict(
        steps={"default": 2},
        cub_pairs_per_class=3,
        size=(64, 64),
        pool_pairs=4,
        crops=4,
        points=16,
        batch_size=2,
        test_pairs=2,
        test_points=8,
        log_every=1,
        ckpt_every=0,
    ),
    "04_scnet": dict(
        steps={"default": 2},
        input_size=(64, 64),
        train_proposals=20,
        test_proposals=20,
        train_limit=2,
        pascal_limit=1,
        willow_limit=1,
        log_every=1,
        ckpt_every=0,
    ),
    "05_rtn": dict(
        steps={"default": 2, "synthetic": 2, "weak": 2},
        input_size=(64, 64),
        synthetic_pairs=4,
        weak_images=4,
        weak_pairs=2,
        batch_size=2,
        test_pairs=2,
        test_points=8,
        composite_test_pairs=2,
        log_every=1,
        ckpt_every=0,
    ),
    "06_sfnet": dict(
        steps={"default": 2},
        images=1,
        pairs=2,
        test_images=1,
        test_pairs=2,
        size=(64, 64),
        eval_size=(64, 64),
        batch_size=2,
        log_every=1,
        ckpt_every=0,
    ),
    "07_multiscale": dict(
        steps={"default": 2, "flow": 2, "affine": 2},
        images=6,
        cross_pairs=2,
        synthetic_pairs=4,
        size=(64, 64),
        batch_size=2,
        points=8,
        test_images=2,
        test_pairs=2,
        cross_test_pairs=2,
        test_points=8,
        mining_willow_pairs=1,
        max_side=64,
        log_every=1,
        ckpt_every=0,
    ),
}


def _fake_data(chapter: str, root: Path, hub: Path) -> None:
    if chapter == "01_patch":
        write_kitti2012(root)
        for name in ("liberty", "notredame", "yosemite"):
            write_phototour(root, name)
        write_graffiti(root)
    if chapter == "02_stn":
        _mnist(root)
    if chapter == "03_ucn":
        write_cub2011(root)
        _random_imagenet_file(hub, "googlenet")
    if chapter in ("04_scnet", "05_rtn", "06_sfnet", "07_multiscale"):
        make_fake_pfpascal(root)
        make_fake_pfwillow(root)
    if chapter == "05_rtn":
        write_voc2011(root)  # the synthetic stage's photographs
    if chapter in ("06_sfnet", "07_multiscale"):
        write_voc2012(root)
    if chapter in ("06_sfnet", "07_multiscale"):
        _random_imagenet_file(hub, "resnet101")


@pytest.mark.parametrize("chapter", sorted(SHRINK))
def test_paper_preset_trains_end_to_end_on_the_official_layouts(
    chapter, tmp_path, monkeypatch, one_thread
):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    root = tmp_path / "data"
    root.mkdir()
    _fake_data(chapter, root, hub)
    paper = get_config(chapter, "paper")
    shrink = dict(SHRINK[chapter])
    # schedules shrink with the steps: warm-up and decay points within the 2 steps
    shrink["optim"] = {
        name: {
            **o,
            **({"warmup_steps": 1} if "warmup_steps" in o else {}),
            **({"step_size": 1} if "step_size" in o else {}),
        }
        for name, o in paper.optim.items()
    }
    cfg = paper.replace(**shrink)
    # only counts and sizes change: data sources, backbone, optimiser and losses are the paper's
    for key in ("data", "source", "photos", "weak_data", "trunk", "arch", "trunk_weights"):
        if hasattr(paper, key):
            assert getattr(cfg, key) == getattr(paper, key), key
    for name, o in paper.optim.items():
        for key in ("optimizer", "lr", "momentum", "weight_decay", "schedule", "gamma"):
            assert cfg.optim[name].get(key) == o.get(key), (name, key)
    out = tmp_path / "runs"
    ckpt_dir = out / "checkpoints" / chapter / "paper" / "seed0"
    run = ChapterRun(chapter, "paper", 0, cfg, root, torch.device("cpu"), out, ckpt_dir)
    trained = recipe_for(chapter).train_main(run, progress=False)
    losses = [row["loss"] for row in trained.history if "loss" in row]
    assert losses and all(math.isfinite(v) for v in losses)
    assert trained.checkpoint.is_file() and load_checkpoint(trained.checkpoint)["finished"]
    if trained.exported is not None:
        # the export is what `corrlib eval --method M --checkpoint FILE` reads: it loads and matches
        method = get_method(trained.method, checkpoint=trained.exported)
        img = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
        kps = torch.tensor([[20.0, 30.0], [40.0, 10.0]])
        assert method.match(img, img, kps).shape == (2, 2)
    if chapter == "01_patch":  # MC-CNN's preprocessing travels with the exported network
        from corrlib.models.patch import load_patch_model

        assert load_patch_model(trained.exported).input_norm == "image"


def test_every_training_chapter_has_its_paper_preset_run_here():
    from tests.test_presets import TRAINING_CHAPTERS

    assert sorted(SHRINK) == sorted(TRAINING_CHAPTERS)


def test_ucn_paper_preset_also_trains_on_pascal_keypoints(tmp_path, monkeypatch, one_thread):
    """``data="pascal"``: UCN's PASCAL training set (Bourdev et al.'s keypoints on VOC 2011),
    end to end on its fake official layout, the rest of the ``paper`` preset unchanged."""
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    root = tmp_path / "data"
    write_pascal_keypoints(root)
    make_fake_pfwillow(root)
    _random_imagenet_file(hub, "googlenet")
    paper = get_config("03_ucn", "paper")
    shrink = dict(SHRINK["03_ucn"], pascal_pairs_per_class=3, data="pascal")
    shrink["optim"] = {
        name: {**o, **({"warmup_steps": 1} if "warmup_steps" in o else {})}
        for name, o in paper.optim.items()
    }
    cfg = paper.replace(**shrink)
    assert "PASCAL VOC 2011 train keypoint pairs" in cfg.data_description
    out = tmp_path / "runs"
    run = ChapterRun(
        "03_ucn", "paper", 0, cfg, root, torch.device("cpu"), out, out / "ckpt" / "seed0"
    )
    recipe = recipe_for("03_ucn")
    pool = recipe.train_pool(cfg, 0, root)
    assert isinstance(pool, recipe.KeypointPool) and len(pool) == 6  # 3 per category
    trained = recipe.train_main(run, progress=False)
    losses = [row["loss"] for row in trained.history if "loss" in row]
    assert losses and all(math.isfinite(v) for v in losses)
