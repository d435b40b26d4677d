"""Cost of the multi-scale convolution (chapter 07) against the stage it replaces (CPU).

Usage: ``python benchmarks/bench_msconv.py [--batch 16] [--size 128] [--repeat 5]``.

For the offline trunk's ``block3`` (its four 3x3 convolutions swapped; the frozen stages' output
given, as the chapter trains it), the median time of one forward + backward + Adam step, and
of one mining call per verification on a 16 x 16 pair, for each variant. Ratios are to the
single-scale stage measured in the same process (same threads, same inputs): the reference run
beside every number.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from corrlib.mining import VERIFICATIONS, mine_correspondences
from corrlib.models.msconv import msconv_net


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size)
    variants = {
        "single-scale (1,)": dict(rates=(1,)),
        "multi-scale (1, 2, 4) dilated": dict(rates=(1, 2, 4)),
        "multi-scale (1, 2, 4) strided": dict(rates=(1, 2, 4), mode="strided"),
        "multi-scale (1, 2, 4) separate weights": dict(rates=(1, 2, 4), shared_weights=False),
        "large-scale (4,)": dict(rates=(4,)),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.size} x {args.size} images")  # fmt: skip
    ref = None
    for name, kw in variants.items():
        net = msconv_net("offline", trunk_weights="none", **kw).train()
        pre = net.prefix(images)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, 1e-3)

        def step(net=net, pre=pre, opt=opt):
            opt.zero_grad()
            net.from_prefix(pre).square().mean().backward()
            opt.step()

        t = _time(step, args.repeat)
        ref = ref or t
        n = sum(p.numel() for p in params)
        print(f"  {name:40s} {t * 1000:7.1f} ms/step (x{t / ref:.2f}), {n:,} trainable parameters")
    f = torch.nn.functional.normalize(torch.randn(128, 16, 16), dim=0)
    g = torch.nn.functional.normalize(f + 0.5 * torch.randn(128, 16, 16), dim=0)
    base = None
    for verify in VERIFICATIONS:
        t = _time(lambda v=verify: mine_correspondences(f, g, verify=v, min_similarity=0.0), 20)
        base = base or t
        print(f"  mining MNN + {verify:14s} {t * 1000:6.2f} ms/pair (x{t / base:.2f} MNN alone)")


if __name__ == "__main__":
    main()
