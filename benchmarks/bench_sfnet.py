"""SFNet training throughput (pairs per second) and peak memory of one step, on this machine.

Usage: .venv/bin/python benchmarks/bench_sfnet.py [--size 320] [--batch 4] [--steps 5] [--threads N]
           [--arch offline resnet101] [--kernels 5 3] [--flow-size 640] [--max-bytes 67108864]
           [--authors PATH] [--paths step step-cached ...]

For each backbone and each of two paths it runs, in a FRESH subprocess (so peak memory is that
path's alone), 2 warm-up steps then ``--steps`` timed steps on random images of ``--size``:

* ``corr+ksa``: the correlation of both levels (ReLU cosine, product, normalisation) and the
  kernel soft argmax both ways, forward and backward, from fixed adapted features;
* ``step``: a whole training step: frozen trunk forward, adaptation layers, correlation, kernel
  soft argmax, the three SFNet losses, backward and Adam (as corrlib's Trainer builds it:
  PyTorch's fused Adam where it exists);
* ``step-bf16``: the same step with the frozen trunk under the CPU's bfloat16 autocast;
  everything after it in float32 (``corrlib._check.full_precision``);
* ``step-cached``: the same step from trunk features computed once (a frozen trunk and images
  that no augmentation changes: what ``cache_features`` does in chapter 06).

* ``flow`` / ``flow-full``: inference, the flow path alone: from trunk features computed
  beforehand, the adaptation layers, the correlation and the kernel soft argmax both ways,
  without gradients, at ``--flow-size`` (640: a 40 x 40 grid on ResNet-101). ``flow`` computes
  it in blocks of source cells (``max_bytes``, :meth:`corrlib.models.sfnet.SFNet.chunked_matches`,
  the default of :class:`corrlib.methods.sfnet.SFNetMethod`); ``flow-full`` holds the whole
  correlation, as training does. ``flow-forward``: the chunked path for the source->target
  flow alone (``reverse=False``), what ``SFNetMethod`` runs to transfer keypoints and masks.

With ``--authors PATH`` (a checkout of the authors' code, https://github.com/cvlab-yonsei/SFNet,
GPL-3.0: it is imported from PATH, never copied here) two more paths run their code on the
same machine, sizes, batch and threads:

* ``authors-step``: their training step as their ``train.py`` runs it (``SFNet(...)(src, trg,
  masks)``, their ``loss_function`` with lambdas 3, 16, 0.5, Adam on their adaptation layers);
  its ratio is printed against each of corrlib's step paths;
* ``authors-flow``: their ``SFNet.forward(..., train=False)`` at ``--flow-size`` with their
  feature extractor replaced by the same precomputed trunk features (so it is their flow path
  alone); its extra memory is printed against ``flow`` and ``flow-full``.

Their ResNet-101 is built with ``pretrained=False`` (the same cost; nothing downloads).

``--paths`` picks among them (default: all, the authors' two only with ``--authors``). The step
paths print their speed-up over ``step`` measured in the same call.

Peak memory: the process's peak resident set over the warm-up and timed steps (``VmHWM``,
reset just before them) minus the resident set then (model, data, cached features and
libraries loaded): the memory the steps add, the optimizer's state included. The ResNet-101
trunk is randomly initialised when ImageNet weights are absent
(same architecture and cost). Timings depend on the other load of the machine: run it alone.

Measured on 2026-12-06 (2-core CPU, 2 threads, ResNet-101, batch 4, 3 timed steps, run alone,
``--max-bytes 8388608 --authors <checkout>``), seconds per step and peak memory added:

=============  =========  ======  ===========================  ==============
path           size/grid  s/step  peak MB added (vs authors')  speed vs theirs
=============  =========  ======  ===========================  ==============
step           320 / 20   4.81    2210 (1.01)                  x1.01
step-bf16      320 / 20   4.36    2165 (0.99)                  x1.12
step-cached    320 / 20   3.65    2108 (0.96)                  x1.33
authors-step   320 / 20   4.86    2190
flow           640 / 40   5.73     201 (0.41)                  x0.86
flow-full      640 / 40   4.98     416 (0.84)                  x0.98
authors-flow   640 / 40   4.90     495
=============  =========  ======  ===========================  ==============

A later run of the flow paths alone (same machine and flags, 3 timed steps): ``flow`` 5.70 s,
254 MB (0.47 of the authors' 545 MB in that run), ``flow-forward`` 5.51 s, 161 MB (0.30; x0.91),
``authors-flow`` 4.99 s. The authors' inference computes both directions, so ``flow`` is the
like-for-like row; dropping the reverse flow saves memory more than time, because the
adaptation layers at 40 x 40 dominate the cost.

The steps' memory is mostly Adam's state and the gradients of the 128 M adaptation parameters
(about 1.5 GB on both sides). The chunked flow runs one pair at a time, which costs speed on
this CPU (batch-1 convolutions in the adaptation layers). Run-to-run spread of a step is about
5% here: rerun before reading a 1.3 as a 1.2.
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


def _authors_modules(authors: str):
    """Import the authors' ``model`` and ``custom_loss`` from their checkout at ``authors``."""
    import torchvision

    resnet101 = torchvision.models.resnet101

    def no_download(pretrained=False, **kwargs):  # their FeatureExtraction asks for ImageNet
        return resnet101(weights=None, **kwargs)

    torchvision.models.resnet101 = no_download
    sys.path.insert(0, authors)
    import custom_loss
    import model as their_model

    return their_model, custom_loss


class _CachedTrunk(torch.nn.Module):
    """Stands in for the authors' feature extractor: returns features computed beforehand."""

    def __init__(self, feats: dict[int, tuple]):
        super().__init__()
        self.feats = feats

    def forward(self, images):
        return self.feats[images.data_ptr()]


def run_authors(authors: str, path: str, size: int, batch: int, steps: int, flow_size: int) -> dict:
    their_model, custom_loss = _authors_modules(authors)
    torch.manual_seed(0)
    side = flow_size if path == "authors-flow" else size
    grid = side // 16
    net = their_model.SFNet(grid, grid, beta=50, kernel_sigma=5)
    src, trg = torch.rand(batch, 3, side, side), torch.rand(batch, 3, side, side)
    mask = torch.zeros(batch, 1, grid, grid)
    mask[..., grid // 4 : 3 * grid // 4, grid // 5 : 4 * grid // 5] = 1
    if path == "authors-step":
        net.train()
        args = argparse.Namespace(lambda1=3.0, lambda2=16.0, lambda3=0.5)
        criterion = custom_loss.loss_function(args)
        params = list(net.adap_layer_feat3.parameters()) + list(net.adap_layer_feat4.parameters())
        opt = torch.optim.Adam(params, lr=3e-5)

        def fn():
            out = net(src, trg, mask, mask)
            loss = criterion(out, mask, mask)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()

    else:
        net.eval()
        with torch.no_grad():
            feats = {x.data_ptr(): net.feature_extraction(x) for x in (src, trg)}
        net.feature_extraction = _CachedTrunk(feats)

        def fn():
            with torch.no_grad():
                net(src, trg, train=False)

    return _time(fn, steps) | {
        "arch": "resnet101",
        "path": path,
        "size": side,
        "batch": batch,
        "grid": f"{grid}x{grid}",
        "trainable_params": sum(
            p.numel() for p in net.parameters() if p.requires_grad and p.dim() > 0
        )
        - sum(p.numel() for p in net.feature_extraction.parameters() if p.requires_grad),
    }


def _hwm_mb() -> float:
    """The process's peak resident set since the last :func:`_reset_peak` (``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return _peak_mb()


def _reset_peak() -> bool:
    """Reset the peak resident set to the current one (Linux >= 4.0: ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _time(fn, steps: int) -> dict:
    """Time ``steps`` calls of ``fn`` after 2 warm-up calls; the peak memory they need.

    ``peak_extra_mb``: the peak resident set over the warm-up and timed calls minus the resident
    set before them (model, data, cached features and libraries loaded; the peak is reset there,
    so the set-up's own transients do not count): the memory training or inference adds, the
    optimizer's state and every step's activations included. ``peak_total_mb``: that peak.
    """
    base = _rss_mb()
    exact = _reset_peak()
    for _ in range(2):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sec = (time.perf_counter() - t0) / steps
    peak = _hwm_mb() if exact else _peak_mb()
    return {
        "threads": torch.get_num_threads(),
        "sec_per_step": sec,
        "peak_extra_mb": max(0.0, peak - base),
        "peak_total_mb": peak,
        "peak_reset": exact,
    }


def run_one(
    arch: str,
    path: str,
    size: int,
    batch: int,
    steps: int,
    kernels: tuple[int, int],
    flow_size: int,
    max_bytes: int,
) -> dict:
    from corrlib.models.backbones import backbone
    from corrlib.models.sfnet import OFFLINE_TAPS, SFNet, sfnet_loss
    from corrlib.train import TrainConfig, make_optimizer

    torch.manual_seed(0)
    if arch == "offline":
        trunk = backbone("offline", taps=OFFLINE_TAPS, weights="offline")
        model = SFNet(trunk, kernels=kernels, grid_stride=8)
    else:
        trunk = backbone(arch, taps=("layer3", "layer4"), weights="none")
        model = SFNet(trunk, kernels=kernels)
    if path.startswith("flow"):
        size = flow_size
    model.train(not path.startswith("flow"))
    src, trg = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)
    mask = torch.zeros(batch, size, size)
    mask[:, size // 4 : 3 * size // 4, size // 5 : 4 * size // 5] = 1
    h, w = model.grid_size((size, size))
    # the optimizer corrlib's Trainer builds (Adam with PyTorch's fused kernel where it exists)
    opt = make_optimizer(
        [p for p in model.parameters() if p.requires_grad], TrainConfig(steps=1, lr=3e-5)
    )
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

    def flow(budget, reverse=True):
        def run():
            with torch.no_grad():
                model.forward_features(fa, fb, (size, size), max_bytes=budget, reverse=reverse)

        return run

    fn = {
        "corr+ksa": corr_ksa,
        "step": step,
        "step-bf16": step_bf16,
        "step-cached": step_cached,
        "flow": flow(max_bytes),
        "flow-full": flow(None),
        # what SFNetMethod runs at inference: the source->target flow only, chunked
        "flow-forward": flow(max_bytes, reverse=False),
    }[path]
    return _time(fn, steps) | {
        "arch": arch,
        "path": path,
        "size": size,
        "batch": batch,
        "grid": f"{h}x{w}",
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--flow-size", type=int, default=640)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--arch", nargs="+", default=["offline", "resnet101"])
    ap.add_argument("--kernels", type=int, nargs=2, default=[5, 3])
    ap.add_argument("--max-bytes", type=int, default=64 * 2**20)
    ap.add_argument(
        "--authors", default=None, help="a checkout of github.com/cvlab-yonsei/SFNet (GPL-3.0)"
    )
    ap.add_argument("--paths", nargs="+", default=None)
    ap.add_argument("--one", nargs=2, metavar=("ARCH", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        arch, path = args.one
        if path.startswith("authors"):
            res = run_authors(args.authors, path, args.size, args.batch, args.steps, args.flow_size)
        else:
            res = run_one(
                arch,
                path,
                args.size,
                args.batch,
                args.steps,
                tuple(args.kernels),
                args.flow_size,
                args.max_bytes,
            )
        print(json.dumps(res))
        return
    ours = ["corr+ksa", "step", "step-bf16", "step-cached", "flow", "flow-full", "flow-forward"]
    paths = args.paths or ours + (["authors-step", "authors-flow"] if args.authors else [])
    if any(p.startswith("authors") for p in paths) and not args.authors:
        ap.error("the authors-* paths need --authors PATH (a checkout of their code)")
    print(
        f"SFNet: steps at {args.size}x{args.size}, flow at {args.flow_size}x{args.flow_size}, "
        f"batch {args.batch}, kernels {args.kernels}, {args.steps} timed steps, one subprocess "
        f"each, {args.threads or torch.get_num_threads()} threads"
    )
    print(
        f"{'backbone':10s} {'path':13s} {'grid':>6s} {'s/step':>7s} {'pairs/s':>8s} "
        f"{'peak MB':>8s} {'vs step':>8s}"
    )
    results = {}
    for arch in args.arch:
        for path in paths:
            if path.startswith("authors") and arch != "resnet101":
                continue
            cmd = [sys.executable, __file__, "--one", arch, path]
            for flag in ("size", "flow_size", "batch", "steps", "max_bytes", "threads"):
                value = getattr(args, flag)
                if value is not None:
                    cmd += [f"--{flag.replace('_', '-')}", str(value)]
            cmd += ["--kernels", *map(str, args.kernels)]
            if args.authors:
                cmd += ["--authors", args.authors]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(f"{arch:10s} {path:13s} failed:\n{out.stderr.strip()[-2000:]}")
                continue
            r = results[arch, path] = json.loads(out.stdout.strip().splitlines()[-1])
            base = results.get((arch, "step"))
            ratio = (
                f"x{base['sec_per_step'] / r['sec_per_step']:.2f}"
                if base and path.startswith("step")
                else "-"
            )
            print(
                f"{arch:10s} {path:13s} {r['grid']:>6s} {r['sec_per_step']:7.3f} "
                f"{r['batch'] / r['sec_per_step']:8.2f} {r['peak_extra_mb']:8.0f} {ratio:>8s}"
            )
    theirs = results.get(("resnet101", "authors-step"))
    if theirs:
        print(
            f"\nAgainst the authors' step ({theirs['sec_per_step']:.3f} s, "
            f"{theirs['peak_extra_mb']:.0f} MB extra, {theirs['trainable_params']:,} trainable):"
        )
        for path in ("step", "step-bf16", "step-cached"):
            r = results.get(("resnet101", path))
            if r:
                print(
                    f"  {path:12s} speed x{theirs['sec_per_step'] / r['sec_per_step']:.2f}, "
                    f"extra memory {r['peak_extra_mb'] / max(theirs['peak_extra_mb'], 1):.2f} of "
                    f"theirs ({r['trainable_params']:,} trainable)"
                )
    theirs = results.get(("resnet101", "authors-flow"))
    if theirs:
        print(
            f"\nAgainst the authors' flow path at {theirs['grid']} "
            f"({theirs['sec_per_step']:.3f} s, {theirs['peak_extra_mb']:.0f} MB extra):"
        )
        for path in ("flow", "flow-full", "flow-forward"):  # theirs computes both directions
            r = results.get(("resnet101", path))
            if r:
                share = r["peak_extra_mb"] / max(theirs["peak_extra_mb"], 1)
                print(
                    f"  {path:12s} extra memory {share:.2f} of theirs, "
                    f"speed x{theirs['sec_per_step'] / r['sec_per_step']:.2f}"
                )


if __name__ == "__main__":
    main()
