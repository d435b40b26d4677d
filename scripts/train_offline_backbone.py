r"""Train corrlib's offline backbone: a compact CNN that stands in when ImageNet weights are absent.

Usage (from the repository root; CPU, a few minutes)::

    .venv/bin/python scripts/train_offline_backbone.py  # -> runs/offline_backbone/
    .venv/bin/python scripts/train_offline_backbone.py \
        --out corrlib/models/weights/offline_backbone.pt

What it does:

* **data**: :class:`corrlib.data.SyntheticPairs` on scikit-image's bundled photographs
  (:func:`corrlib.data.skimage_photos`, no download), random homographies, with exact dense
  flow; each image of a pair gets its own random photometric jitter (gain, contrast, colour
  balance, gamma, sometimes grey) so the features do not rely on exact colours. No PF-WILLOW,
  PF-PASCAL or TSS image is ever used for training.
* **model**: :class:`corrlib.models.backbones.OfflineNet` (``block3``, stride 8, 128-D) inside a
  :class:`~corrlib.models.backbones.Backbone` (ImageNet input normalisation included).
* **loss**: the correspondence contrastive loss of the Universal Correspondence Network (Choy et
  al., NeurIPS 2016): for every source cell whose true match lies inside the target, the
  L2-normalised descriptors of the match are pulled together (``d_pos^2``) and the hardest
  negative, the most similar target cell farther than ``--radius`` pixels from the true match, is
  pushed beyond ``--margin`` (``max(0, margin - d_neg)^2``).
* **loop**: :class:`corrlib.train.Trainer` (Adam, cosine schedule, deterministic seed; the data of
  step ``k`` depends only on ``(seed, k)``), checkpoints in ``--work-dir`` so a killed run resumes.
* **export**: the weights and their metadata (architecture, script, seed, steps, data, date,
  training time, measured PF-WILLOW PCK when the data is found) via
  :func:`corrlib.train.save_checkpoint`, float16, about 1.2 MB.

Then update ``OfflineWeights.SYNTHETIC_UCN_V1`` in ``corrlib/models/backbones.py`` (sha256 and
metrics, both printed at the end) if you replace the shipped file.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from corrlib.correlation import l2_normalize
from corrlib.data import SKIMAGE_PHOTOS, SyntheticPairs, skimage_photos
from corrlib.geometry import pixel_grid
from corrlib.matching import FeatureGrid, sample_descriptors
from corrlib.models.backbones import _OFFLINE_FORMAT, OfflineNet, OfflineWeights, backbone
from corrlib.train import TrainConfig, Trainer, history_to_csv, save_checkpoint, seed_everything

REPO = Path(__file__).resolve().parents[1]


def correspondence_contrastive_loss(
    f_src: torch.Tensor,
    f_trg: torch.Tensor,
    flow: torch.Tensor,
    valid: torch.Tensor,
    *,
    radius: float,
    margin: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """UCN's correspondence contrastive loss with hardest negatives (Choy et al., NeurIPS 2016).

    ``f_src``, ``f_trg`` ``(B, C, h, w)`` maps of images of ``(H, W)`` pixels; ``flow (B, 2, H, W)``
    src->trg in pixels and ``valid (B, H, W)`` (the match lies inside the target). Anchors are the
    source cells (centres from :meth:`FeatureGrid.for_map`); positives are the target descriptors
    sampled bilinearly at the true matches; the negative of an anchor is its nearest target cell
    (in descriptor distance) among those farther than ``radius`` pixels from the true match.
    Returns ``(loss, logs)`` with ``pos``, ``neg`` (the two terms) and ``acc`` (fraction of
    anchors whose nearest target cell lies within ``radius``).
    """
    b, _, h, w = f_src.shape
    size = tuple(flow.shape[-2:])
    grid = FeatureGrid.for_map((h, w), size)
    pix = (
        grid.to_pixels(pixel_grid((h, w), device=f_src.device)).reshape(1, -1, 2).expand(b, -1, -1)
    )  # (B, hw, 2)
    fl = sample_descriptors(
        flow, pix
    )  # (B, hw, 2): flow at the cell centres (pixel = cell at stride 1)
    ok = sample_descriptors(valid[:, None].float(), pix)[..., 0] > 0.999  # (B, hw)
    tgt = pix + fl  # true matches, target pixels
    anchor = l2_normalize(f_src.flatten(2).transpose(1, 2), dim=-1)  # (B, hw, C)
    pos = l2_normalize(sample_descriptors(f_trg, grid.to_cells(tgt)), dim=-1)  # (B, hw, C)
    trg = l2_normalize(f_trg.flatten(2), dim=1)  # (B, C, hw)
    d_pos = (anchor - pos).norm(dim=-1)
    d_all = (2 - 2 * torch.bmm(anchor, trg)).clamp_min(1e-8).sqrt()  # (B, hw, hw)
    near = torch.cdist(tgt, pix) <= radius  # (B, hw, hw): target cells too close to be negatives
    d_neg = d_all.masked_fill(near, float("inf")).min(dim=-1).values
    n = ok.sum().clamp_min(1)
    l_pos = (d_pos.square() * ok).sum() / n
    l_neg = (F.relu(margin - d_neg).square() * ok).sum() / n
    with torch.no_grad():
        best = d_all.argmin(dim=-1, keepdim=True)
        acc = (near.gather(-1, best)[..., 0] & ok).sum() / n
    return l_pos + l_neg, {"pos": l_pos.item(), "neg": l_neg.item(), "acc": acc.item()}


def _jitter(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random photometric change of one ``(3, H, W)`` image in ``[0, 1]`` (drawn from ``g``)."""

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    mean = img.mean()
    img = (img - mean) * u(0.6, 1.4, 1) + mean  # contrast
    img = img * u(0.6, 1.4, 1) * u(0.85, 1.15, 3).view(3, 1, 1)  # gain and colour balance
    img = img.clamp(0, 1) ** float(u(0.7, 1.4, 1))  # gamma
    if float(u(0, 1, 1)) < 0.2:  # grey
        img = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).expand(3, -1, -1)
    return img.clamp(0, 1).contiguous()


def make_pool(data: SyntheticPairs) -> dict:
    """Every pair of ``data`` as stacked tensors (images uint8 to save memory)."""
    items = [data[i] for i in range(len(data))]
    return {
        "src": torch.stack([(s["src_img"] * 255).round().to(torch.uint8) for s in items]),
        "trg": torch.stack([(s["trg_img"] * 255).round().to(torch.uint8) for s in items]),
        "flow": torch.stack([s["flow"] for s in items]),
        "valid": torch.stack([s["flow_valid"] for s in items]),
    }


def make_batch_fn(pool: dict, batch_size: int):
    """``batch_fn(step, g)``: ``batch_size`` pairs of ``pool`` drawn with ``g``, each image
    jittered."""

    def batch_fn(step: int, g: torch.Generator) -> dict:
        idx = torch.randint(0, len(pool["src"]), (batch_size,), generator=g)
        return {
            "src": torch.stack([_jitter(pool["src"][i].float() / 255, g) for i in idx]),
            "trg": torch.stack([_jitter(pool["trg"][i].float() / 255, g) for i in idx]),
            "flow": pool["flow"][idx],
            "valid": pool["valid"][idx],
        }

    return batch_fn


def evaluate_pfwillow(model, data_root) -> dict | None:
    """PF-WILLOW PCK (all pairs, ``pf-willow`` protocol) of ``model``, or None without the data."""
    from corrlib.data import PFWillow, resolve_data_root
    from corrlib.data._common import DatasetNotFoundError
    from corrlib.eval import evaluate_keypoints
    from corrlib.methods import BackboneMethod

    try:
        ds = PFWillow(resolve_data_root(data_root))
    except (DatasetNotFoundError, FileNotFoundError, ValueError) as e:
        print(f"PF-WILLOW not found ({e}); PCK not measured.")
        return None
    res = evaluate_keypoints(
        BackboneMethod(model=model.eval(), max_side=320), ds, "pf-willow", progress=False
    )
    pairs = len({r["pair_index"] for r in res.rows})
    categories = ", ".join(sorted(res.summary["alphas"]["0.1"]["per_category"]))
    return {
        "dataset": f"PF-WILLOW ({pairs} pairs of the shared subset: {categories})",
        "protocol": (
            "pf-willow (alpha * max side of the keypoints' bounding box), "
            "BackboneMethod max_side=320, argmax_subpixel"
        ),
        **{f"PCK@{a}": round(res.pck(a), 4) for a in (0.05, 0.1, 0.15)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", default="runs/offline_backbone/offline_backbone.pt", help="weights file to write"
    )
    p.add_argument(
        "--work-dir", default="runs/offline_backbone", help="training checkpoint and history"
    )
    p.add_argument("--steps", type=int, default=400)
    p.add_argument(
        "--pool",
        type=int,
        default=768,
        help="synthetic pairs generated once, then drawn with jitter",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="side of the square training images")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--radius", type=float, default=12.0, help="negatives lie farther than this (pixels)"
    )
    p.add_argument("--margin", type=float, default=1.0)
    p.add_argument(
        "--strength", type=float, default=0.6, help="homography strength of SyntheticPairs"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-root", default=None, help="for the final PF-WILLOW measurement only")
    p.add_argument("--no-eval", action="store_true", help="skip the PF-WILLOW measurement")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    arch = dict(OfflineWeights.SYNTHETIC_UCN_V1.value.arch)
    photos = list(SKIMAGE_PHOTOS)
    data = SyntheticPairs(
        skimage_photos(photos), size=(args.size, args.size), kind="homography",
        strength=args.strength, n_pairs=args.pool, n_kps=0, seed=args.seed,
    )  # fmt: skip
    t0 = time.perf_counter()
    pool = make_pool(data)
    data_seconds = time.perf_counter() - t0
    print(f"generated {args.pool} synthetic pairs in {data_seconds:.0f} s", flush=True)
    seed_everything(args.seed)
    model = backbone("offline", weights="none", trainable=True)  # block3, random init, seeded

    def loss_fn(m, batch):
        feats = m(torch.cat((batch["src"], batch["trg"])))["block3"]
        f_src, f_trg = feats.chunk(2)
        return correspondence_contrastive_loss(
            f_src, f_trg, batch["flow"], batch["valid"], radius=args.radius, margin=args.margin
        )

    cfg = TrainConfig(
        steps=args.steps, lr=args.lr, optimizer="adam", schedule="cosine",
        warmup_steps=min(50, args.steps - 1), grad_clip=5.0, log_every=50, seed=args.seed,
        device="cpu", ckpt_every=200,
    )  # fmt: skip
    work = Path(args.work_dir)

    def print_log(h: list[dict]) -> None:
        last = h[-1]
        print(
            f"step {last['step']:5d}  loss {last.get('loss', float('nan')):.4f}  "
            f"acc {last.get('acc', float('nan')):.3f}  {last['seconds']:.0f} s",
            flush=True,
        )

    batch_fn = make_batch_fn(pool, args.batch_size)
    trainer = Trainer(
        model, loss_fn, batch_fn, cfg, ckpt_path=work / "train.pt", progress=False, on_log=print_log
    )
    t0, c0 = time.perf_counter(), time.process_time()
    history = trainer.fit()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    history_to_csv(history, work / "history.csv")
    train_seconds = float(history[-1]["seconds"])
    print(
        f"trained {cfg.steps} steps: {train_seconds:.0f} s of optimisation; "
        f"this call: {wall:.0f} s wall, {cpu:.0f} s CPU ({torch.get_num_threads()} threads)"
    )

    model.eval()
    pck = None if args.no_eval else evaluate_pfwillow(model, args.data_root)
    if pck:
        print(
            "PF-WILLOW PCK@0.05/0.1/0.15 = "
            f"{pck['PCK@0.05']:.4f}/{pck['PCK@0.1']:.4f}/{pck['PCK@0.15']:.4f}"
        )
    net = OfflineNet(**arch)
    net.load_state_dict(
        {k.removeprefix("stages."): v for k, v in model.state_dict().items()}, strict=True
    )
    meta = {
        "arch": {
            "class": "corrlib.models.backbones.OfflineNet",
            **arch,
            "taps": {"block1": [2, 32], "block2": [4, 64], "block3": [8, 128]},
        },
        "script": "scripts/train_offline_backbone.py",
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "work_dir", "data_root")},
        "seed": args.seed,
        "steps": args.steps,
        "data": (
            f"SyntheticPairs(skimage_photos({photos}), size=({args.size}, {args.size}), "
            f"kind='homography', strength={args.strength}, n_pairs={args.pool}, seed={args.seed}); "
            f"{args.steps} batches of {args.batch_size} "
            "pairs drawn from them, each image with random photometric jitter; "
            "no benchmark images"
        ),
        "loss": (
            "UCN correspondence contrastive loss, "
            f"hardest negative beyond {args.radius} px, margin {args.margin}"
        ),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(cpu, 1),
        "data_seconds": round(data_seconds, 1),
        "machine": (
            f"{platform.machine()} CPU, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}"
        ),
        "date": datetime.date.today().isoformat(),
        "pf_willow": pck,
        "final_loss": round(float(history[-1].get("loss", float("nan"))), 4),
    }
    out = save_checkpoint(
        Path(args.out),
        {
            "format": _OFFLINE_FORMAT,
            "model": {k: v.half() for k, v in net.state_dict().items()},
            "meta": meta,
        },
    )
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB), sha256 {digest}")


if __name__ == "__main__":
    main()
