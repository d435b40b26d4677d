"""Which offline fallback for ImageNet backbones? PF-WILLOW PCK of every candidate (CPU).

Usage: ``python benchmarks/bench_backbone_fallback.py [--data-root ../shared/data] [--every 1]
[--only daisy,offline] [--json out.json]``. Candidates, all matched by nearest neighbour of their
features (cosine, sub-pixel argmax) on images resized to a longer side of 320:

* (a) torchvision ResNet-18/50/101 ``layer3`` and VGG-16 ``conv4_3`` with RANDOM weights
  (``weights="none"``: what one gets without ImageNet weights and without corrlib's fallback);
* (b) the hand-crafted dense DAISY and SIFT descriptors (``corrlib.models.handcrafted``);
* (c) corrlib's offline backbone (``block3``, ``scripts/train_offline_backbone.py``);
* and two references: the identity (no-motion) baseline, and a control that runs (a)'s
  ResNet-101 on the same pairs with both images replaced by uniform grey: no appearance at all,
  so its PCK measures how much the features encode position alone (zero padding makes deep
  random features position codes).

Prints one markdown row per option: PCK@0.05/0.1/0.15 under the ``pf-willow`` protocol, wall
time, weights source. ``--every k`` evaluates every k-th pair (a fixed subset); the default is
every pair (450 on the shared subset; features are cached per image, so 50 images are described).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from corrlib import eval as ev
from corrlib.data import PFWillow, resolve_data_root


class _Blank(torch.utils.data.Dataset):
    """The same pairs with both images replaced by uniform grey: what is left is position alone."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        s = self.ds[i]
        return dict(
            s,
            src_img=torch.full_like(s["src_img"], 128),
            trg_img=torch.full_like(s["trg_img"], 128),
        )


class _Every(torch.utils.data.Dataset):
    """Every ``k``-th item of a dataset (a fixed subset)."""

    def __init__(self, ds, k: int):
        self.ds, self.idx = ds, list(range(0, len(ds), k))

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> dict:
        return self.ds[self.idx[i]]


#: option label -> (registered method, kwargs)
OPTIONS = {
    "identity": ("identity", {}),
    "(a) resnet18 layer3, random init": ("backbone-resnet18", {"weights": "none", "tap": "layer3"}),
    "(a) resnet50 layer3, random init": ("backbone-resnet50", {"weights": "none", "tap": "layer3"}),
    "(a) resnet101 layer3, random init": (
        "backbone-resnet101",
        {"weights": "none", "tap": "layer3"},
    ),
    "(a) vgg16 conv4_3, random init": ("backbone-vgg16", {"weights": "none", "tap": "conv4_3"}),
    "control: (a) resnet101 on BLANK images": (
        "backbone-resnet101",
        {"weights": "none", "tap": "layer3"},
    ),
    "(b) daisy": ("daisy", {"max_side": 320}),
    "(b) sift": ("sift", {"max_side": 320}),
    "(c) offline block3": ("backbone-offline", {"weights": "offline", "tap": "block3"}),
}


def run(options: dict, data_root=None, every: int = 1) -> list[dict]:
    """Evaluate each option on PF-WILLOW and return one row per option."""
    ds = PFWillow(resolve_data_root(data_root))
    if every > 1:
        ds = _Every(ds, every)
    rows = []
    for label, (name, kwargs) in options.items():
        torch.manual_seed(0)  # random-init backbones: the same draw every run
        t0 = time.perf_counter()
        method = ev.get_method(name, **kwargs)
        data = _Blank(ds) if "BLANK" in label else ds
        res = ev.evaluate_keypoints(method, data, "pf-willow", progress=False)
        rows.append(
            {
                "option": label,
                "method": name,
                "pairs": len(ds),
                "PCK@0.05": res.pck(0.05),
                "PCK@0.1": res.pck(0.1),
                "PCK@0.15": res.pck(0.15),
                "seconds": time.perf_counter() - t0,
                "weights": getattr(
                    method, "weights_source", "none (hand-crafted)" if name != "identity" else "-"
                ),
            }
        )
        print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    return (
        f"| {r['option']:<36} | {r['PCK@0.05']:.3f} | {r['PCK@0.1']:.3f} | {r['PCK@0.15']:.3f} "
        f"| {r['seconds']:7.1f} | {r['weights']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--every", type=int, default=1, help="evaluate every k-th pair (1: all)")
    parser.add_argument("--only", default=None, help="comma-separated substrings of option labels")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    options = OPTIONS
    if args.only:
        keys = args.only.split(",")
        options = {k: v for k, v in OPTIONS.items() if any(s in k for s in keys)}
    print(
        f"PF-WILLOW, every {args.every} pair(s), pf-willow protocol, max_side 320, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print("| option | PCK@0.05 | PCK@0.1 | PCK@0.15 | time (s) | weights |")
    print("|---|---|---|---|---|---|")
    rows = run(options, args.data_root, args.every)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
