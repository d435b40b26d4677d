"""Presets: one papermill parameter ``preset`` picks a whole configuration per chapter.

* ``smoke``: seconds, for CI; proves the code path runs, not that the numbers mean anything.
* ``lab``: a 2-core laptop CPU in at most 10 minutes, with a meaningful result on real data.
* ``paper``: a GPU, the paper's hyperparameters and data (each value cites where it comes from).
"""

from __future__ import annotations

import copy
import os

from corrlib._check import check_choice

__all__ = ["CHAPTERS", "PRESETS", "PRESET_ENV", "check_preset", "default_preset", "get_config"]

PRESETS = ("smoke", "lab", "paper")
#: Environment variable that sets a notebook's default preset (nbval runs use it).
PRESET_ENV = "CORRLIB_PRESET"

HANDCRAFTED = ("zncc", "census", "hog", "daisy", "sift")

CHAPTERS: dict[str, dict[str, dict]] = {
    "00_basics": {
        "smoke": {
            "methods": ("identity", *HANDCRAFTED),
            "pf_willow_limit": 12,  # pairs
            "max_side": 96,  # images resized so the longer side is this (None: original)
            "tss_max_side": 64,
            "tss_subsets": ("JODS",),
        },
        "lab": {
            "methods": ("identity", *HANDCRAFTED),
            "pf_willow_limit": None,  # every pair of the available sub-classes
            "max_side": None,  # PF-WILLOW images are at most 300 px: original resolution
            "tss_max_side": 200,
            "tss_subsets": ("FG3DCar", "JODS", "PASCAL"),
        },
        "paper": {
            # Proposal Flow (Ham et al., CVPR 2016) evaluates at the original resolution.
            "methods": ("identity", *HANDCRAFTED),
            "pf_willow_limit": None,
            "max_side": None,
            "tss_max_side": None,
            "tss_subsets": ("FG3DCar", "JODS", "PASCAL"),
        },
    },
    "01_patch": {
        "smoke": {
            "archs": ("mccnn-fast", "mccnn-accurate", "2ch", "2ch-deep", "siamese", "pseudo-siamese", "2ch-2stream", "siamese-spp", "deepdesc"),
            "train_stereo_scale": 0.25, "test_stereo_scale": 0.125, "synthetic_images": 4,
            "n_train_stereo": 1000, "n_train_synthetic": 600, "n_test": 600,
            "p_hi": 1.0, "n_lo": 4.0, "n_hi": 10.0,
            "patch_size": 32, "mccnn_patch": 9, "mccnn_fc_units": 64, "width_mult": 0.25,
            "batch_size": 32, "steps": {"default": 6}, "log_every": 2, "ckpt_every": 0,
            "optim": {"default": {"optimizer": "adam", "lr": 1e-3}},
            "mining": 2.0, "max_disp": 32, "willow_limit": 6,
        },
        "lab": {
            "archs": ("mccnn-fast", "mccnn-accurate", "2ch", "2ch-deep", "siamese", "pseudo-siamese", "2ch-2stream", "siamese-spp", "deepdesc"),
            "train_stereo_scale": 0.5, "test_stereo_scale": 0.25, "synthetic_images": 24,
            "n_train_stereo": 16000, "n_train_synthetic": 8000, "n_test": 4000,
            "p_hi": 1.0, "n_lo": 4.0, "n_hi": 10.0,
            "patch_size": 32, "mccnn_patch": 9, "mccnn_fc_units": 128, "width_mult": 0.5,
            "batch_size": 128, "steps": {"default": 600, "mccnn-fast": 1200, "mccnn-accurate": 1200, "deepdesc": 400},
            "log_every": 25, "ckpt_every": 100,
            "optim": {"default": {"optimizer": "adam", "lr": 1e-3}, "mccnn-accurate": {"optimizer": "adam", "lr": 3e-3}},
            "mining": 2.0, "max_disp": 64, "willow_limit": None,
        },
        "paper": {
            "archs": ("mccnn-fast", "mccnn-accurate", "2ch", "2ch-deep", "siamese", "pseudo-siamese", "2ch-2stream", "siamese-spp", "deepdesc"),
            "train_stereo_scale": 1.0, "test_stereo_scale": 0.5, "synthetic_images": 400,
            "n_train_stereo": 100000, "n_train_synthetic": 50000, "n_test": 50000,  # patch tensors are cached: ~5 GB at 64 px
            # MC-CNN KITTI 2012 sampling (Zbontar & LeCun, JMLR 2016; official main.lua options)
            "p_hi": 1.0, "n_lo": 4.0, "n_hi": 10.0,
            # DeepCompare/DeepDesc compare 64x64 patches; MC-CNN 9x9 (4 conv layers, KITTI)
            "patch_size": 64, "mccnn_patch": 9, "mccnn_fc_units": 384, "width_mult": 1.0,
            "batch_size": 128, "steps": {"default": 100000}, "log_every": 100, "ckpt_every": 2000,
            "optim": {
                # MC-CNN: SGD, momentum 0.9, lr 0.002 (fast) / 0.003 (accurate), batch 128
                "mccnn-fast": {"optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "schedule": "step", "step_size": 85000, "gamma": 0.1},
                "mccnn-accurate": {"optimizer": "sgd", "lr": 0.003, "momentum": 0.9, "schedule": "step", "step_size": 85000, "gamma": 0.1},
                # DeepCompare release: (A)SGD lr 0.1, momentum 0.9, weight decay 5e-4 (plain SGD here)
                "default": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
                "deepdesc": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9},
            },
            "mining": 2.0, "max_disp": 128, "willow_limit": None,
        },
    },
}


def check_preset(preset: str) -> str:
    """Validate a preset name; the error lists the valid ones."""
    if not isinstance(preset, str):
        raise TypeError(f"Argument preset must be a string, one of {{{', '.join(PRESETS)}}}; got {preset!r}.")
    return check_choice(preset, "preset", PRESETS)


def default_preset() -> str:
    """``$CORRLIB_PRESET`` if set and non-empty (validated), else ``"lab"``: a notebook's default."""
    return check_preset(os.environ.get(PRESET_ENV) or "lab")


def get_config(chapter: str, preset: str) -> dict:
    """A copy of one chapter's configuration at one preset."""
    check_choice(chapter, "chapter", CHAPTERS)
    return copy.deepcopy(CHAPTERS[chapter][check_preset(preset)])
