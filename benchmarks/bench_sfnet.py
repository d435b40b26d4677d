"""SFNet training throughput (pairs per second) and peak memory of one step, on this machine.

Usage: .venv/bin/python benchmarks/bench_sfnet.py [--size 320] [--batch 4] [--steps 5] [--threads N]
                                                  [--arch offline resnet101] [--kernels 5 3]

For each backbone and each of two paths it runs, in a FRESH subprocess (so peak memory is that
path's alone), 2 warm-up steps then ``--steps`` timed steps on random images of ``--size``:

* ``corr+ksa``: the correlation of both levels (ReLU cosine, product, normalisation) and the
  kernel soft argmax both ways, forward and backward, from fixed adapted features;
* ``step``: a whole training step: frozen trunk forward, adaptation layers, correlation, kernel
  soft argmax, the three SFNet losses, backward and Adam.

Peak memory is the process's peak resident set (``ru_maxrss``) after the timed steps minus
the resident set before the first step (model, data and libraries loaded): the extra memory
one step needs. The ResNet-101 trunk is randomly initialised when ImageNet weights are absent
(same architecture and cost). Timings depend on the other load of the machine: run it alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(
    arch: str, path: str, size: int, batch: int, steps: int, kernels: tuple[int, int]
) -> dict:
    from corrlib.models.backbones import backbone
    from corrlib.models.sfnet import OFFLINE_TAPS, SFNet, sfnet_loss

    torch.manual_seed(0)
    if arch == "offline":
        trunk = backbone("offline", taps=OFFLINE_TAPS, weights="offline")
        model = SFNet(trunk, kernels=kernels, grid_stride=8)
    else:
        trunk = backbone(arch, taps=("layer3", "layer4"), weights="none")
        model = SFNet(trunk, kernels=kernels)
    model.train()
    src, trg = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)
    mask = torch.zeros(batch, size, size)
    mask[:, size // 4 : 3 * size // 4, size // 5 : 4 * size // 5] = 1
    h, w = model.grid_size((size, size))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 3e-5)
    with torch.no_grad():
        fa, fb = model.trunk_features(src), model.trunk_features(trg)
        la = [a.detach() for a in model.adapted(fa, (h, w))]
        lb = [b.detach() for b in model.adapted(fb, (h, w))]

    def corr_ksa():
        a = [x.clone().requires_grad_(True) for x in la]
        raw = model.correlate(a, lb)
        st = raw / (raw.flatten(2).norm(dim=-1)[..., None, None] + 1e-6)
        ts = raw.reshape(batch, h * w, h * w).transpose(1, 2).reshape(batch, h * w, h, w)
        ts = ts / (ts.flatten(2).norm(dim=-1)[..., None, None] + 1e-6)
        (model.match(st, "kernel").sum() + model.match(ts, "kernel").sum()).backward()

    def step():
        out = model(src, trg)
        loss, _ = sfnet_loss(out, mask, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()

    fn = corr_ksa if path == "corr+ksa" else step
    for _ in range(2):
        fn()
    base = _rss_mb()
    peak_before = _peak_mb()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sec = (time.perf_counter() - t0) / steps
    return {
        "arch": arch,
        "path": path,
        "size": size,
        "batch": batch,
        "grid": f"{h}x{w}",
        "threads": torch.get_num_threads(),
        "sec_per_step": sec,
        "pairs_per_s": batch / sec,
        "peak_extra_mb": max(0.0, _peak_mb() - base),
        "peak_grew": _peak_mb() > peak_before,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--arch", nargs="+", default=["offline", "resnet101"])
    ap.add_argument("--kernels", type=int, nargs=2, default=[5, 3])
    ap.add_argument("--one", nargs=2, metavar=("ARCH", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        res = run_one(
            args.one[0], args.one[1], args.size, args.batch, args.steps, tuple(args.kernels)
        )
        print(json.dumps(res))
        return
    print(
        f"SFNet at {args.size}x{args.size}, batch {args.batch}, kernels {args.kernels}, "
        f"{args.steps} timed steps, one subprocess each"
    )
    print(
        f"{'backbone':10s} {'path':9s} {'grid':>6s} {'s/step':>7s} {'pairs/s':>8s} {'peak MB':>8s}"
    )
    for arch in args.arch:
        for path in ("corr+ksa", "step"):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                arch,
                path,
                "--size",
                str(args.size),
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
                "--kernels",
                *map(str, args.kernels),
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = (
                subprocess.run(cmd, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            r = json.loads(out)
            print(
                f"{arch:10s} {path:9s} {r['grid']:>6s} {r['sec_per_step']:7.3f} "
                f"{r['pairs_per_s']:8.2f} {r['peak_extra_mb']:8.0f}"
            )


if __name__ == "__main__":
    main()
