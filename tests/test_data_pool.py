"""Tests of corrlib.data.PairPool: stacking a pair dataset, both directions, cached features."""

from __future__ import annotations

import pytest
import torch

from corrlib.data import PairPool, SyntheticPairs


def _images(n=2, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.nn.functional.avg_pool2d(torch.rand(n, 3, size, size, generator=g), 3, 1, 1)
    return [(im * 255).to(torch.uint8) for im in imgs]


@pytest.fixture(scope="module")
def dataset():
    return SyntheticPairs(
        _images(), size=(24, 32), kind="affine", strength=0.3, n_pairs=4, n_kps=0, seed=0
    )


@pytest.fixture(scope="module")
def masked():
    masks = [torch.zeros(40, 40, dtype=torch.bool) for _ in range(2)]
    for m in masks:
        m[10:30, 12:28] = True
    return SyntheticPairs(
        _images(),
        size=(24, 32),
        kind="affine",
        strength=0.3,
        n_pairs=3,
        n_kps=0,
        seed=1,
        masks=masks,
    )


def test_from_dataset_stacks_items_as_uint8(dataset):
    pool = PairPool.from_dataset(dataset, 3, "three pairs")
    assert len(pool) == 3 and pool.size == (24, 32) and pool.info == "three pairs"
    assert (
        pool.src.shape == pool.trg.shape == (3, 3, 24, 32)
        and pool.src.dtype == pool.trg.dtype == torch.uint8
    )
    assert (
        pool.flow.shape == pool.trg_flow.shape == (3, 2, 24, 32)
        and pool.flow.dtype == torch.float32
    )
    assert (
        pool.flow_valid.shape == pool.trg_flow_valid.shape == (3, 24, 32)
        and pool.flow_valid.dtype == torch.bool
    )
    assert pool.src_mask is None and pool.trg_mask is None  # the dataset has no masks
    assert pool.feats_src == {} and pool.feats_trg == {}
    for i in range(3):
        item = dataset[i]
        assert torch.equal(pool.src[i], (item["src_img"] * 255).round().to(torch.uint8))
        assert torch.equal(pool.flow[i], item["flow"]) and torch.equal(
            pool.trg_flow_valid[i], item["trg_flow_valid"]
        )


def test_from_dataset_keeps_masks_and_rejects_empty(masked):
    pool = PairPool.from_dataset(masked, 3)
    assert (
        pool.src_mask.shape == pool.trg_mask.shape == (3, 24, 32)
        and pool.src_mask.dtype == torch.bool
    )
    assert pool.src_mask.any() and torch.equal(pool.trg_mask[2], masked[2]["trg_mask"])
    with pytest.raises(ValueError, match="n must be >= 1"):
        PairPool.from_dataset(masked, 0)


def test_pair_in_both_directions(dataset):
    pool = PairPool.from_dataset(dataset, 2)
    a, b, flow, valid = pool.pair(1)
    assert a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1 and a.shape == (3, 24, 32)
    assert torch.equal(a, pool.src[1].float() / 255) and torch.equal(b, pool.trg[1].float() / 255)
    assert torch.equal(flow, pool.flow[1]) and torch.equal(valid, pool.flow_valid[1])
    ra, rb, rflow, rvalid = pool.pair(1, reverse=True)
    assert torch.equal(ra, b) and torch.equal(rb, a)
    assert torch.equal(rflow, pool.trg_flow[1]) and torch.equal(rvalid, pool.trg_flow_valid[1])
    one_way = PairPool(pool.src, pool.trg, pool.flow, pool.flow_valid)
    assert torch.equal(one_way.pair(0)[2], pool.flow[0])
    with pytest.raises(ValueError, match="no trg->src flow"):
        one_way.pair(0, reverse=True)


def test_cache_features_runs_once_per_image_in_batches(dataset):
    pool = PairPool.from_dataset(dataset, 4)
    seen = []

    def extract(x):
        seen.append(tuple(x.shape))
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        return {"mean": x.mean(1, keepdim=True), "pooled": torch.nn.functional.avg_pool2d(x, 4)}

    assert pool.cache_features(extract, batch_size=3) is pool
    assert seen == [(3, 3, 24, 32), (1, 3, 24, 32)] * 2  # src then trg, in batches of 3
    assert set(pool.feats_src) == set(pool.feats_trg) == {"mean", "pooled"}
    assert (
        pool.feats_src["pooled"].shape == (4, 3, 6, 8)
        and pool.feats_src["mean"].dtype == torch.float16
    )
    want = (pool.trg.float() / 255).mean(1, keepdim=True).half()
    assert torch.equal(pool.feats_trg["mean"], want)
    assert pool.feats_src["mean"].device.type == "cpu"
