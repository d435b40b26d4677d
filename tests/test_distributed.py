"""Two processes equal one: DistributedDataParallel through corrlib's Trainer (gloo, CPU).

Each rank draws the step's global batch from the ``(seed, step)`` generator and keeps its slice;
DDP averages the gradients. After 3 steps the parameters (and the logged losses) must equal those
of one process trained at the global batch, up to float rounding (the gradient is summed in
another order, so the comparison has a tolerance, never bit equality). A resumed 2-process run
must equal an uninterrupted one.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from corrlib import distributed
from corrlib.train import TrainConfig, Trainer, load_checkpoint, seed_everything

from ._net import free_port

GLOBAL_BATCH = 8
STEPS = 3


def _model() -> nn.Module:
    seed_everything(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.Flatten()
    )


def _batch_fn(step: int, g: torch.Generator):
    x = torch.randn(GLOBAL_BATCH, 3, 6, 6, generator=g)
    y = torch.randn(GLOBAL_BATCH, 4 * 36, generator=g)
    return {"x": x, "y": y, "idx": torch.arange(GLOBAL_BATCH)}


def _loss_fn(model, batch):
    # per-sample mean, as DDP's gradient averaging needs; calls a submodule, not model.forward,
    # like most chapters' losses: the Trainer's DDP wrapper must still synchronise it
    feats = model[1](model[0](batch["x"]))
    out = model[3](model[2](feats))
    loss = ((out - batch["y"]) ** 2).mean()
    logs = {"feat_mean": float(feats.detach().mean())}
    if int(batch["idx"][0]) == 0:  # only the slice holding sample 0 logs this (rank 0 of 2)
        logs["holds_first"] = float(batch["idx"].numel())
    return loss, logs


def _config(**kw) -> TrainConfig:
    return TrainConfig(steps=STEPS, lr=0.05, optimizer="sgd", log_every=1, device="cpu", **kw)


def _worker(rank: int, world: int, port: int, out_dir: str, stop_after: int | None) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu")
    try:
        ckpt = os.path.join(out_dir, "ddp.pt")
        if stop_after is not None:  # "interrupted": a checkpoint at that step, then a new process
            first = Trainer(
                _model(), _loss_fn, _batch_fn, _config(), ckpt_path=ckpt, progress=False
            )
            first.fit(stop_after=stop_after)
            del first
        trainer = Trainer(_model(), _loss_fn, _batch_fn, _config(), ckpt_path=ckpt, progress=False)
        trainer.fit()
        # every rank ends with the same parameters (DDP keeps them in step)
        flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        torch.distributed.all_gather(gathered, flat)
        assert all(torch.equal(gathered[0], g) for g in gathered)
        del trainer
    finally:
        # DistributedDataParallel must be gone before its process group (else gloo aborts)
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _run_two(tmp_path, stop_after=None) -> dict:
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), stop_after), nprocs=2, join=True)
    return load_checkpoint(tmp_path / "ddp.pt")


@pytest.fixture(scope="module")
def single_process():
    torch.set_num_threads(1)
    trainer = Trainer(_model(), _loss_fn, _batch_fn, _config(), progress=False)
    trainer.fit()
    return trainer


def test_two_gloo_processes_equal_one_at_the_global_batch(tmp_path, single_process):
    state = _run_two(tmp_path)
    assert state["finished"] and state["step"] == STEPS
    one = single_process.model.state_dict()
    worst = max(float((state["model"][k] - one[k]).abs().max()) for k in one)
    print(f"largest parameter difference, 2 processes vs 1: {worst:.2e}")
    for k in one:
        torch.testing.assert_close(state["model"][k], one[k], rtol=1e-6, atol=1e-6)
    # the history holds the global batch's means, as the single process logged them
    for a, b in zip(state["history"], single_process.history, strict=True):
        assert a["step"] == b["step"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
        assert a["feat_mean"] == pytest.approx(b["feat_mean"], rel=1e-5, abs=1e-7)
        # a key only some ranks log is averaged over those ranks (rank 0 holds 4 of the 8)
        assert a["holds_first"] == GLOBAL_BATCH / 2 and b["holds_first"] == GLOBAL_BATCH


def test_a_resumed_two_process_run_equals_an_uninterrupted_one(tmp_path, single_process):
    state = _run_two(tmp_path, stop_after=1)
    one = single_process.model.state_dict()
    for k in one:
        torch.testing.assert_close(state["model"][k], one[k], rtol=1e-6, atol=1e-6)


def test_shard_batch_splits_every_tensor_and_refuses_what_it_cannot_split():
    batch = {"a": torch.arange(6), "b": [torch.zeros(6, 2)], "name": "pair", "k": 3}
    part = distributed.shard_batch(batch, 2, 3)
    assert part["a"].tolist() == [4, 5] and part["b"][0].shape == (2, 2)
    assert part["name"] == "pair" and part["k"] == 3
    assert distributed.shard_batch(batch, 0, 1) is batch
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        distributed.shard_batch({"a": torch.arange(5)}, 0, 2)
    with pytest.raises(ValueError, match="different leading sizes"):
        distributed.shard_batch({"a": torch.arange(4), "b": torch.zeros(3)}, 0, 2)
    with pytest.raises(ValueError, match="one process"):
        distributed.shard_batch({"pair": 7}, 0, 2)
    with pytest.raises(ValueError, match="0-d tensor"):
        distributed.shard_batch({"a": torch.arange(4), "w": torch.tensor(1.0)}, 0, 2)


def test_without_a_process_group_everything_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.init_from_env()
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main()
    distributed.barrier()  # a no-op
