"""Click-to-redraw latency of the correspondence explorer on PF-WILLOW (CPU).

Usage: ``CORRLIB_DATA=../shared/data python benchmarks/bench_explorer.py [--pairs 3]
[--clicks 10]``. For each pair, the first click pays for every method's descriptors of the two
images (cached afterwards); later clicks cost one match per method, the score map and a redraw.
Prints the median and the worst of both; the figure is drawn (Agg) inside the timing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import matplotlib

matplotlib.use("Agg")

import torch

from corrlib import eval as ev
from corrlib.data import PFWillow, resolve_data_root
from corrlib.widgets import CorrespondenceExplorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=10)
    args = parser.parse_args()
    willow = PFWillow(resolve_data_root(None))
    methods = [
        ev.get_method("identity"),
        ev.get_method("daisy", max_side=320),
        ev.get_method("sift", max_side=320),
        ev.get_method("backbone-offline", max_side=320),
    ]
    ex = CorrespondenceExplorer(willow, methods)
    ex.figure()
    g = torch.Generator().manual_seed(0)
    first, later = [], []
    for p in range(args.pairs):
        ex.select_pair(p * 91 % len(willow))
        h, w = ex.item["src_img"].shape[-2:]
        for c in range(args.clicks + 1):
            x, y = (torch.rand(2, generator=g) * torch.tensor([w - 1, h - 1])).tolist()
            t0 = time.perf_counter()
            ex.click(x, y)  # redraws: Agg's draw_idle draws at once, inside the timing
            (first if c == 0 else later).append(time.perf_counter() - t0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; methods "
        f"{', '.join(ex.methods)}; score map: {ex.heat}"
    )
    for name, xs in (("first click of a pair", first), ("later clicks", later)):
        print(
            f"{name:22s} median {1000 * statistics.median(xs):7.0f} ms   worst "
            f"{1000 * max(xs):7.0f} ms   ({len(xs)} clicks)"
        )


if __name__ == "__main__":
    main()
