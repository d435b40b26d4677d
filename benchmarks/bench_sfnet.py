"""SFNet training throughput (pairs per second) and peak memory of one step, on this machine.

Usage: .venv/bin/python benchmarks/bench_sfnet.py [--size 320] [--batch 4] [--steps 5] [--threads N]
                                                  [--arch offline resnet101] [--kernels 5 3]

For each backbone and each of two paths it runs, in a FRESH subprocess (so peak memory is that
path's alone), 2 warm-up steps then ``--steps`` timed steps on random images of ``--size``:

* ``corr+ksa``: the correlation of both levels (ReLU cosine, product, normalisation) and the
  kernel soft argmax both ways, forward and backward, from fixed adapted features;
* ``step``: a whole training step: frozen trunk forward, adaptation layers, correlation, kernel
  soft argmax, the three SFNet losses, backward and Adam;
* ``step-bf16``: the same step with the frozen trunk under bfloat16 autocast (the CPU's or the
  GPU's); everything after it in float32 (``corrlib._check.full_precision``);
* ``step-cached``: the same step from trunk features computed once (a frozen trunk and images
  that no augmentation changes: what ``cache_features`` does in chapter 06).

``--paths`` picks among them (default: all four). The step paths print their speed-up over
``step`` measured in the same call.

Peak memory is the process's peak resident set (``ru_maxrss``) after the timed steps minus
the resident set before the first step (model, data and libraries loaded): the extra memory
one step needs. The ResNet-101 trunk is randomly initialised when ImageNet weights are absent
(same architecture and cost). Timings depend on the other load of the machine: run it alone.

Measured (2-core CPU, 2 threads, ResNet-101 at 320 x 320, batch 4, 3 timed steps; 2026-12-06):
``step`` 5.22 s, ``step-bf16`` 4.97 s (x1.05: this CPU has no native bfloat16 arithmetic),
``step-cached`` 4.08 s (x1.28), extra peak memory 363-375 MB each.
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

    def step_from(feats_src, feats_trg):
        out = model.forward_features(feats_src, feats_trg, (size, size))
        loss, _ = sfnet_loss(out, mask, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def step_bf16():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            fs, ft = model.trunk_features(src), model.trunk_features(trg)
        step_from({k: v.float() for k, v in fs.items()}, {k: v.float() for k, v in ft.items()})

    def step_cached():
        step_from(fa, fb)

    fn = {"corr+ksa": corr_ksa, "step": step, "step-bf16": step_bf16, "step-cached": step_cached}[
        path
    ]
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
    ap.add_argument("--paths", nargs="+", default=["corr+ksa", "step", "step-bf16", "step-cached"])
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
        f"{'backbone':10s} {'path':11s} {'grid':>6s} {'s/step':>7s} {'pairs/s':>8s} "
        f"{'peak MB':>8s} {'vs step':>8s}"
    )
    for arch in args.arch:
        base = None
        for path in args.paths:
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
            if path == "step":
                base = r["sec_per_step"]
            ratio = f"x{base / r['sec_per_step']:.2f}" if base and path.startswith("step") else "-"
            print(
                f"{arch:10s} {path:11s} {r['grid']:>6s} {r['sec_per_step']:7.3f} "
                f"{r['pairs_per_s']:8.2f} {r['peak_extra_mb']:8.0f} {ratio:>8s}"
            )


if __name__ == "__main__":
    main()
