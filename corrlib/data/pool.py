"""A tensor-backed pool of image pairs: synthetic or masked pairs materialised once, in memory.

Chapters that train on a fixed set of pairs (UCN, SFNet) build one :class:`PairPool` from a pair
dataset (:class:`corrlib.data.SyntheticPairs`, :func:`corrlib.data.masked_pairs`) with
:meth:`PairPool.from_dataset`, then draw batches from it by index. Images are stored as uint8.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["PairPool", "sample_valid_pixels"]


@dataclass
class PairPool:
    """Image pairs held in memory, usable in both directions.

    Attributes:
        src, trg: uint8 ``(N, 3, H, W)``.
        flow: ``(N, 2, H, W)`` src->trg on the src grid, pixels; ``flow_valid (N, H, W)`` bool
            (lands inside trg).
        trg_flow, trg_flow_valid: the same trg->src on the trg grid (or None).
        src_mask, trg_mask: bool ``(N, H, W)`` foreground masks (or None).
        info: what the pool was built from.
        feats_src, feats_trg: ``{tap: (N, C, h, w)}`` float16 after :meth:`cache_features`.
    """

    src: torch.Tensor
    trg: torch.Tensor
    flow: torch.Tensor
    flow_valid: torch.Tensor
    trg_flow: torch.Tensor | None = None
    trg_flow_valid: torch.Tensor | None = None
    src_mask: torch.Tensor | None = None
    trg_mask: torch.Tensor | None = None
    info: str = ""
    feats_src: dict = field(default_factory=dict, repr=False)
    feats_trg: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dataset(cls, dataset, n: int, info: str = "") -> PairPool:
        """Stack items ``0 .. n-1`` of a pair dataset (keys ``src_img``, ``trg_img``, ``flow``,
        ``flow_valid`` and, when present, ``trg_flow``, ``trg_flow_valid``, ``src_mask``,
        ``trg_mask``); float images in ``[0, 1]`` are stored as uint8.

        Args:
            dataset: a pair dataset of one size ``(H, W)`` (e.g.
                :class:`corrlib.data.SyntheticPairs` or :func:`corrlib.data.masked_pairs`) whose
                items hold ``src_img``/``trg_img`` ``(3, H, W)`` (float in ``[0, 1]``, rounded to
                uint8, or uint8), ``flow`` ``(2, H, W)`` src->trg on the src grid in pixels,
                ``flow_valid`` ``(H, W)`` bool and optionally ``trg_flow`` ``(2, H, W)``
                (trg->src, on the trg grid), ``trg_flow_valid``, ``src_mask``/``trg_mask``
                ``(H, W)`` bool.
            n: the number of pairs ``N`` (>= 1; items ``0 .. n-1``).
            info: a description of what the pool was built from.

        Returns:
            A :class:`PairPool` with ``src``/``trg`` uint8 ``(N, 3, H, W)``, ``flow``
            ``(N, 2, H, W)``, ``flow_valid`` ``(N, H, W)`` and the optional fields (None when the
            items lack them).

        Example:
            >>> item = {"src_img": torch.ones(3, 2, 2), "trg_img": torch.zeros(3, 2, 2),
            ...         "flow": torch.zeros(2, 2, 2), "flow_valid": torch.ones(2, 2).bool()}
            >>> pool = PairPool.from_dataset([item, item], 2)
            >>> pool.src.dtype, tuple(pool.src.shape), int(pool.src.max()), pool.trg_flow
            (torch.uint8, (2, 3, 2, 2), 255, None)
        """
        items = [dataset[i] for i in range(n)]
        if not items:
            raise ValueError("Argument n must be >= 1: a pool needs at least one pair.")

        def stack(key, u8=False):
            if key not in items[0]:
                return None
            t = torch.stack([it[key] for it in items])
            return (t * 255).round().to(torch.uint8) if u8 and t.is_floating_point() else t

        return cls(
            stack("src_img", True), stack("trg_img", True), stack("flow"), stack("flow_valid"),
            stack("trg_flow"), stack("trg_flow_valid"), stack("src_mask"), stack("trg_mask"), info,
        )  # fmt: skip

    def __len__(self) -> int:
        return self.src.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of every image."""
        return tuple(self.src.shape[-2:])

    def pair(
        self, i: int, reverse: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(a (3, H, W) float in [0, 1], b, flow a->b (2, H, W), valid (H, W))``.

        Args:
            i: the pair's index, in ``0 .. N-1``.
            reverse: return the pair trg->src (needs ``trg_flow``; else ``ValueError``).

        Returns:
            ``(a, b, flow, valid)``: ``a``, ``b`` float32 ``(3, H, W)`` in ``[0, 1]`` (``src``
            and ``trg``, swapped when ``reverse``); ``flow`` ``(2, H, W)`` a->b on a's grid, in
            pixels (``p_b = p_a + flow(p_a)``); ``valid`` ``(H, W)`` bool, True where ``p_b``
            lies inside ``b``. ``flow`` and ``valid`` are views of the pool's tensors.
        """
        if not reverse:
            return (
                self.src[i].float() / 255,
                self.trg[i].float() / 255,
                self.flow[i],
                self.flow_valid[i],
            )
        if self.trg_flow is None:
            raise ValueError(
                "This pool has no trg->src flow; build it from a dataset whose items have "
                "'trg_flow'."
            )
        return (
            self.trg[i].float() / 255,
            self.src[i].float() / 255,
            self.trg_flow[i],
            self.trg_flow_valid[i],
        )

    @torch.no_grad()
    def cache_features(
        self, extract: Callable[[torch.Tensor], dict], *, device="cpu", batch_size: int = 32
    ) -> PairPool:
        """Run ``extract(images (B, 3, H, W) float in [0, 1]) -> {tap: (B, C, h, w)}`` over every
        image once (on ``device``); the maps are kept float16 on the CPU. Returns the pool.

        Args:
            extract: ``extract(images (B, 3, H, W) float in [0, 1]) -> {tap: (B, C, h, w)}``,
                e.g. a frozen trunk's :meth:`corrlib.models.sfnet.SFNet.trunk_features`; run
                under ``torch.no_grad()``.
            device: where ``extract`` runs (``images`` are moved there).
            batch_size: images per call of ``extract``.

        Returns:
            This pool, with ``feats_src`` and ``feats_trg`` set to ``{tap: (N, C, h, w)}`` float16
            CPU tensors (the features of ``src`` and ``trg``).
        """
        for name, imgs in (("feats_src", self.src), ("feats_trg", self.trg)):
            parts: dict[str, list] = {}
            for i in range(0, len(self), batch_size):
                x = imgs[i : i + batch_size].to(device).float() / 255
                for t, f in extract(x).items():
                    parts.setdefault(t, []).append(f.half().cpu())
            setattr(self, name, {t: torch.cat(v) for t, v in parts.items()})
        return self


def sample_valid_pixels(valid: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` integer pixels ``(x, y)`` drawn uniformly among the True entries of ``valid``.

    Args:
        valid: ``(H, W)`` bool (e.g. a pair's ``flow_valid``); all False: drawn from every pixel.
        n: how many (with replacement only when fewer than ``n`` pixels are valid).
        generator: the source of the draw.

    Returns:
        ``(n, 2)`` float pixels ``(x, y)``, 0-based.
    """
    w = valid.shape[-1]
    weights = valid.flatten().double()
    if weights.sum() == 0:
        weights = torch.ones_like(weights)
    idx = torch.multinomial(weights, n, replacement=int(valid.sum()) < n, generator=generator)
    return torch.stack((idx % w, idx // w), dim=-1).float()
