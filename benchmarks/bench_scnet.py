"""Proposal and Hough-vote timings of chapter 04 (CPU, one thread for the proposals).

Usage: ``CORRLIB_DATA=../shared/data python benchmarks/bench_scnet.py [--images 10]``.

* Proposals per image on PF-WILLOW images (original size, about 300 x 200): selective search
  (OpenCV contrib, fast mode; and the scikit-image stand-in), sliding windows, uniform boxes.
* The vote per pair at 224 x 224 for N x N matches (N = 60, 300, 500, 1000): corrlib's
  ``index_add`` vote, forward and forward + backward, and, where it fits in memory, the explicit
  kernel ``K @ w`` it replaces (the ratio is printed beside it; K has (N^2)^2 entries).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from corrlib.data import PFWillow, resolve_data_root
from corrlib.models.scnet import hough_bins, hough_kernel, hough_vote
from corrlib.proposals import selective_search, sliding_boxes, uniform_boxes


def _time(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _bench_vote(n: int, g: torch.Generator) -> str:
    xy = torch.rand(n, 2, generator=g) * 150
    boxes = torch.cat([xy, xy + 20 + torch.rand(n, 2, generator=g) * 70], 1)
    f = torch.rand(n, n, generator=g, requires_grad=True)
    t_bins = _time(lambda: hough_bins(boxes, boxes, (224, 224), (224, 224)))
    bins, valid, nb = hough_bins(boxes, boxes, (224, 224), (224, 224))
    t_fwd = _time(lambda: hough_vote(f, bins, valid, nb))
    t_bwd = _time(lambda: (f * hough_vote(f, bins, valid, nb)).sum().backward())
    line = (
        f"  N={n:5d} ({n * n:>9,d} matches): bins {t_bins * 1000:7.1f} ms, vote "
        f"{t_fwd * 1000:6.2f} ms, vote fwd+bwd {t_bwd * 1000:6.2f} ms"
    )
    if n <= 60:
        k = hough_kernel(bins, valid)
        w = ((f.detach() - 0.4).clamp(min=0) * valid).reshape(-1).double()
        t_k = _time(lambda: k @ w)
        line += f"; explicit K @ w {t_k * 1000:.2f} ms (x{t_k / t_fwd:.1f} the vote; K built once)"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    args = parser.parse_args()
    willow = PFWillow(resolve_data_root(None))
    names = sorted({p.src_name for p in willow.pairs})[: args.images]
    images = [willow._read_image(n) for n in names]
    print(f"proposals on {len(images)} PF-WILLOW images (torch threads {torch.get_num_threads()})")
    for label, fn in (
        ("selective search (OpenCV, fast)", lambda im: selective_search(im, 1000)),
        (
            "selective search (skimage stand-in)",
            lambda im: selective_search(im, 1000, backend="skimage"),
        ),
        ("sliding windows", lambda im: sliding_boxes(tuple(im.shape[-2:]), 1000)),
        ("uniform", lambda im: uniform_boxes(tuple(im.shape[-2:]), 1000)),
    ):
        secs, counts = [], []
        for im in images:
            t0 = time.perf_counter()
            counts.append(fn(im).shape[0])
            secs.append(time.perf_counter() - t0)
        print(
            f"  {label:38s} {statistics.median(secs) * 1000:8.1f} ms/image (median), "
            f"{min(counts)}-{max(counts)} boxes"
        )
    print("Hough vote per pair, 224 x 224 (median of 5)")
    g = torch.Generator().manual_seed(0)
    for n in (60, 300, 500, 1000):
        print(_bench_vote(n, g))


if __name__ == "__main__":
    main()
