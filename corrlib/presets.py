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
    "02_stn": {
        "smoke": {
            "distortions": ("R", "RTS", "P", "E"),
            "models": ("cnn", "st-cnn-affine", "st-cnn-tps"),
            "n_train": 512, "n_test": 256,  # digits (None: all)
            "cnn_channels": (16, 32), "loc_channels": (8, 16), "loc_hidden": 32,
            "tps_lattice": 4, "st_out_size": 28,
            "batch_size": 32, "steps": {"default": 4}, "log_every": 2, "ckpt_every": 0,
            "optim": {"default": {"optimizer": "adam", "lr": 2e-3, "schedule": "cosine"}},
            "aligner_kind": "affine", "aligner_strength": 0.5, "aligner_norm": "l2", "aligner_steps": 4,
            "n_examples": 8,
        },
        "lab": {
            # Measured (one thread, shared 2-core CPU, offline 8,000/2,000 split): 12 models train in
            # 290 s of CPU (410 s wall under load); test error CNN / ST-Aff / ST-TPS:
            # R 10.4 / 6.6 / 6.0 %, RTS 18.7 / 7.8 / 8.0 %, P 25.4 / 8.9 / 8.0 %, E 11.0 / 6.3 / 5.3 %.
            "distortions": ("R", "RTS", "P", "E"),
            "models": ("cnn", "st-cnn-affine", "st-cnn-tps"),
            "n_train": None, "n_test": None,
            "cnn_channels": (16, 32), "loc_channels": (8, 16), "loc_hidden": 32,
            "tps_lattice": 4, "st_out_size": 28,
            "batch_size": 64, "steps": {"default": 800}, "log_every": 50, "ckpt_every": 200,
            "optim": {"default": {"optimizer": "adam", "lr": 2e-3, "schedule": "cosine"}},
            "aligner_kind": "affine", "aligner_strength": 0.5, "aligner_norm": "l2", "aligner_steps": 400,
            "n_examples": 8,
        },
        "paper": {
            # Jaderberg et al., NeurIPS 2015, Sec. 4.1 and Appendix A (our reading): R, RTS, P, E;
            # CNN and ST-CNN with Aff, Proj and 16-point TPS transformers; SGD, batch 256, base lr
            # 0.01 divided by 10 every 50k of 150k iterations, no weight decay; all of MNIST.
            "distortions": ("R", "RTS", "P", "E"),
            "models": ("cnn", "st-cnn-affine", "st-cnn-projective", "st-cnn-tps"),
            "n_train": None, "n_test": None,
            "cnn_channels": (32, 32), "loc_channels": (20, 20), "loc_hidden": 50,
            "tps_lattice": 4, "st_out_size": 28,
            "batch_size": 256, "steps": {"default": 150000}, "log_every": 500, "ckpt_every": 5000,
            "optim": {"default": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "schedule": "step", "step_size": 50000, "gamma": 0.1}},
            "aligner_kind": "affine", "aligner_strength": 0.5, "aligner_norm": "l2", "aligner_steps": 20000,
            "n_examples": 8,
        },
    },
    "03_ucn": {
        # Universal Correspondence Network (Choy et al., NeurIPS 2016): the ablation of its Sec. 4
        # (random vs hard negatives, then + convolutional spatial transformer) trained on warps of
        # scikit-image photographs (exact dense ground truth), tested on held-out synthetic pairs,
        # PF-WILLOW and TSS.
        "smoke": {
            "variants": ("random-negatives", "hard-negatives", "hard-negatives+st"),
            "size": (32, 32), "pool_pairs": 4, "crops": 4, "kind": "affine", "strength": 0.4, "jitter": 0.1,
            "trunk_widths": (8, 8, 8), "dim": 8, "st_kernel": 3, "st_dilation": 1,
            "batch_size": 2, "points": 16, "margin": 1.0, "radius_px": 4.0,
            "steps": 2, "optimizer": "adam", "momentum": 0.9, "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant", "warmup_steps": 0,
            "log_every": 1, "ckpt_every": 0,
            "test_pairs": 2, "test_points": 16,
            "willow_limit": 4, "max_side": 64, "tss_max_side": 64, "tss_subsets": ("JODS",), "tss_limit": 1,
        },
        "lab": {
            "variants": ("random-negatives", "hard-negatives", "hard-negatives+st"),
            # 192 pairs (any warp family, strength 0.5) cut from 64 random crops of 4 photographs, 128 px
            "size": (128, 128), "pool_pairs": 192, "crops": 64, "kind": "mixed", "strength": 0.5, "jitter": 0.2,
            "trunk_widths": (16, 48, 96), "dim": 64, "st_kernel": 3, "st_dilation": 1,
            # thousands of correspondences per batch (UCN's point): 4 pairs x 256 positives, 1 negative each
            "batch_size": 4, "points": 256, "margin": 1.0, "radius_px": 8.0,
            "steps": 150, "optimizer": "adam", "momentum": 0.9, "lr": 1e-3, "weight_decay": 0.0, "schedule": "cosine", "warmup_steps": 0,
            "log_every": 25, "ckpt_every": 50,
            "test_pairs": 24, "test_points": 64,
            "willow_limit": None, "max_side": 160, "tss_max_side": 160, "tss_subsets": ("FG3DCar", "JODS", "PASCAL"), "tss_limit": None,
        },
        "paper": {
            "variants": ("random-negatives", "hard-negatives", "hard-negatives+st"),
            # The paper trains on real annotated pairs (KITTI; PASCAL and CUB-2011 keypoints) with
            # ImageNet-pretrained GoogLeNet layers as the trunk (Sec. 4), loss Eq. 1, hard negatives and
            # the conv spatial transformer. Here: synthetic warps of the same photographs at 256 px, a
            # larger trunk and Caffe-style SGD (our choices; pass a pretrained trunk to UCN(trunk=...)
            # to follow the paper). The pool is held in memory (~2.5 GB at 256 px).
            "size": (256, 256), "pool_pairs": 1000, "crops": 500, "kind": "mixed", "strength": 0.5, "jitter": 0.2,
            "trunk_widths": (64, 128, 256), "dim": 128, "st_kernel": 3, "st_dilation": 1,
            "batch_size": 8, "points": 1024, "margin": 1.0, "radius_px": 16.0,  # margin 1 with unit features (our choice)
            "steps": 20000, "optimizer": "sgd", "momentum": 0.9, "lr": 1e-3, "weight_decay": 5e-4, "schedule": "cosine", "warmup_steps": 500,
            "log_every": 100, "ckpt_every": 1000,
            "test_pairs": 200, "test_points": 256,
            "willow_limit": None, "max_side": None, "tss_max_side": None, "tss_subsets": ("FG3DCar", "JODS", "PASCAL"), "tss_limit": None,
        },
    },

    "06_sfnet": {
        # SFNet (Lee et al., CVPR 2019): a frozen backbone, adaptation layers, kernel soft argmax,
        # trained from foreground masks of warped images; the ablations of its Sec. 5 (argmax kind,
        # each loss term removed). Offline the masks come from Fashion-MNIST objects composited on
        # scikit-image photographs (corrlib.data.FashionComposites); "paper" uses PASCAL VOC 2012.
        "smoke": {
            "variants": ("full", "soft-argmax", "no-mask-loss", "no-flow-loss", "no-smooth-loss"),
            "source": "fashion", "images": 8, "pairs": 8, "test_images": 4, "test_pairs": 4, "cache_features": True, "jitter": 0.0, "train_trunk": False,
            "size": (64, 64), "kind": "affine", "strength": 0.5,
            "arch": "offline", "weights": "offline", "kernels": (3, 3), "blocks": 1,
            "sigma": 5.0, "beta": 0.02, "mask_threshold": 0.1, "loss_weights": None,
            "batch_size": 2, "steps": {"default": 3}, "lr": 1e-3, "schedule": "constant", "step_size": None, "gamma": 0.1,
            "log_every": 1, "ckpt_every": 2, "interrupt_at": 2,
            "willow_limit": 6, "tss_subsets": ("JODS",), "tss_limit": 1, "eval_size": (64, 64),
            "n_examples": 2,
        },
        "lab": {
            "variants": ("full", "soft-argmax", "no-mask-loss", "no-flow-loss", "no-smooth-loss"),
            # 600 composites (160 px objects on 192 px crops of real photographs), one affine warp each
            # the trunk's features of the pool are computed once (no photometric jitter then)
            "source": "fashion", "images": 600, "pairs": 600, "test_images": 64, "test_pairs": 64, "cache_features": True, "jitter": 0.0, "train_trunk": False,
            "size": (192, 192), "kind": "affine", "strength": 0.5,
            # offline backbone (strides 4, 8) on a 24 x 24 grid; 3x3 adaptation (5x5 costs 2x here);
            # every variant trains the same 200 steps (about 45 s each on a 2-core CPU)
            "arch": "offline", "weights": "auto", "kernels": (3, 3), "blocks": 2,
            "sigma": 5.0, "beta": 0.02, "mask_threshold": 0.1, "loss_weights": None,
            "batch_size": 8, "steps": {"default": 200}, "lr": 1e-3, "schedule": "cosine", "step_size": None, "gamma": 0.1,
            "log_every": 20, "ckpt_every": 80, "interrupt_at": 100,
            "willow_limit": None, "tss_subsets": ("FG3DCar", "JODS", "PASCAL"), "tss_limit": None,
            "eval_size": (192, 192), "n_examples": 3,
        },
        "paper": {
            "variants": ("full", "soft-argmax", "no-mask-loss", "no-flow-loss", "no-smooth-loss"),
            # PASCAL VOC 2012 segmentation masks (the paper's data), 320 x 320, affine warps;
            # authors' code: Adam, lr 3e-5, batch 16, 40 epochs (lr x 0.2 at epoch 30), frozen
            # ImageNet ResNet-101 (layer3, layer4), two residual adaptation blocks (5x5, 3x3),
            # sigma 5, beta 0.02 (inverse 50), weights mask 3 / flow 16 / smooth 0.5. Our warp family
            # (corrlib.geometry.sample_random_warp, strength 0.5) replaces theta = I + N(0, 0.15^2).
            # training draws fresh warps every step, with flips and photometric jitter (online: the
            # trunk runs in every step); "pairs" is only the pool shown in the notebook
            "source": "voc", "images": 1464, "pairs": 64, "test_images": 200, "test_pairs": 200, "cache_features": False, "jitter": 0.1, "train_trunk": False,
            "size": (320, 320), "kind": "affine", "strength": 0.5,
            "arch": "resnet101", "weights": "imagenet", "kernels": (5, 3), "blocks": 2,
            "sigma": 5.0, "beta": 0.02, "mask_threshold": 0.1, "loss_weights": None,
            # 1464 VOC train images / 16 = 92 steps an epoch: 40 epochs, lr x 0.2 after epoch 30
            "batch_size": 16, "steps": {"default": 3660}, "lr": 3e-5, "schedule": "step", "step_size": 2745, "gamma": 0.2,
            "log_every": 50, "ckpt_every": 500, "interrupt_at": None,
            "willow_limit": None, "tss_subsets": ("FG3DCar", "JODS", "PASCAL"), "tss_limit": None,
            "eval_size": (320, 320), "n_examples": 3,
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
