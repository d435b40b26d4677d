"""Time every hand-crafted descriptor on one 320x240 image (CPU).

Usage: ``python benchmarks/bench_handcrafted.py [--repeats 5]``. Prints, per method, the median
time to describe the image, the descriptor dimension ``C`` and the map size ``h x w``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from skimage import data

from corrlib.models.handcrafted import DESCRIPTORS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255  # (3, 512, 512)
    img = F.interpolate(img[None], size=(240, 320), mode="bilinear", antialias=True)[0]
    print(f"image (3, 240, 320), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'method':<10} {'time (ms)':>10} {'C':>5} {'map (h x w)':>12}")
    for name, describe in DESCRIPTORS.items():
        desc, _ = describe(img)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            desc, _ = describe(img)
            times.append(time.perf_counter() - start)
        c, h, w = desc.shape
        print(f"{name:<10} {1e3 * statistics.median(times):>10.1f} {c:>5} {f'{h} x {w}':>12}")


if __name__ == "__main__":
    main()
