"""Training throughput (patch pairs per second) of every chapter-01 architecture on this machine.

Usage: .venv/bin/python benchmarks/bench_patch_training.py [--preset lab] [--steps 20] [--threads N]
Times forward + backward + optimiser step on random patches of the preset's sizes (data loading
excluded), after 3 warm-up steps; prints one line per architecture.
"""

from __future__ import annotations

import argparse
import time

import torch

from corrlib.recipes import get_config
from corrlib.recipes.patch import build_model, patch_loss, patch_size_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="lab")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_config("01_patch", args.preset)
    bs = cfg.batch_size
    print(f"preset {args.preset}: batch {bs}, torch threads {torch.get_num_threads()}")
    print(f"{'architecture':16s} {'patch':>5s} {'params':>9s} {'pairs/s':>9s}")
    for arch in cfg.archs:
        size = patch_size_for(arch, cfg)
        model = build_model(arch, cfg)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        g = torch.Generator().manual_seed(0)
        batch = {
            "a": torch.rand(bs, 1, size, size, generator=g),
            "b": torch.rand(bs, 1, size, size, generator=g),
            "label": torch.arange(bs) < bs // 2,
        }
        for i in range(args.steps + 3):
            if i == 3:
                t0 = time.perf_counter()
            loss, _ = patch_loss(arch, model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        rate = args.steps * bs / (time.perf_counter() - t0)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{arch:16s} {size:5d} {n_params:9,d} {rate:9.0f}")


if __name__ == "__main__":
    main()
