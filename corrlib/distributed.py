"""Multi-process training helpers (``torchrun``): who am I, how many are we, and my batch slice.

Under ``torchrun --nproc_per_node=N`` every process runs the same script with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`init_from_env`
joins the process group they describe (NCCL on CUDA, gloo on the CPU); everything else here works
the same with one process and no group at all, so code calls it unconditionally.

corrlib's data convention makes multi-process training equal to one process: a step's batch is
drawn from a generator seeded by ``(seed, step)``, so every rank draws the *same global batch*
and keeps its slice (:func:`shard_batch`). With per-sample-mean losses, the gradient averaged over
ranks (DistributedDataParallel) is the gradient of the global batch, and a run on N processes ends
with the parameters of one process at the global batch (``tests/test_distributed.py`` checks it
with 2 gloo processes on the CPU), resumable exactly like a single-process run.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "barrier",
    "init_from_env",
    "is_main",
    "local_rank",
    "rank",
    "shard_batch",
    "world_size",
]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if _active() else 1


def local_rank() -> int:
    """This process's rank on its machine (``$LOCAL_RANK``; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on rank 0 (the process that writes files and prints)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (a no-op without a process group)."""
    if _active() and world_size() > 1:
        dist.barrier()


def init_from_env(device: str = "auto") -> bool:
    """Join the process group that ``torchrun`` describes in the environment.

    Returns True when a group of more than one process is (now) active. Without ``WORLD_SIZE``
    (or with ``WORLD_SIZE=1``) nothing is done and False is returned. The backend is NCCL when
    ``device`` is CUDA (``"auto"`` with a GPU), else gloo; on CUDA this process's GPU becomes
    ``cuda:$LOCAL_RANK``.
    """
    if _active():
        return world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError(
            "WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; run one process."
        )
    cuda = torch.cuda.is_available() and str(device).split(":")[0] in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo")
    return world_size() > 1


def _leading(batch, found: list) -> None:
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            raise ValueError(
                "shard_batch: the batch holds a 0-d tensor, which has no per-sample axis; give "
                "the batch_fn a .shard(batch, rank, world) function."
            )
        found.append(batch.shape[0])
    elif isinstance(batch, dict):
        for v in batch.values():
            _leading(v, found)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            _leading(v, found)


def _slice(batch, lo: int, hi: int):
    if isinstance(batch, torch.Tensor):
        return batch[lo:hi]
    if isinstance(batch, dict):
        return {k: _slice(v, lo, hi) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_slice(v, lo, hi) for v in batch]
    if isinstance(batch, tuple):
        moved = [_slice(v, lo, hi) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else tuple(moved)
    return batch


def shard_batch(batch, rank: int, world: int):
    """This rank's contiguous slice of a global batch: every tensor of the (nested dict / list /
    tuple) batch is cut along its leading, per-sample axis; other leaves are kept whole.

    The leading sizes must all be equal and divisible by ``world``: a ``ValueError`` says which
    sizes were found and what to do (a batch size that is a multiple of the number of processes,
    or a ``batch_fn.shard`` for batches whose tensors are not all per-sample).

    Example:
        >>> b = {"x": torch.arange(8).reshape(4, 2), "y": torch.arange(4)}
        >>> shard_batch(b, 1, 2)["y"].tolist()
        [2, 3]
    """
    if world == 1:
        return batch
    sizes: list[int] = []
    _leading(batch, sizes)
    if not sizes:
        raise ValueError(
            "shard_batch: the batch holds no tensor to split between processes (e.g. one pair "
            "per step); train it on one process, or give the batch_fn a "
            ".shard(batch, rank, world) function."
        )
    n = sizes[0]
    if any(s != n for s in sizes):
        raise ValueError(
            f"shard_batch: the batch's tensors have different leading sizes {sorted(set(sizes))}; "
            "every tensor must be per-sample along dim 0, or give the batch_fn a "
            ".shard(batch, rank, world) function."
        )
    if n % world:
        raise ValueError(
            f"shard_batch: a global batch of {n} does not split into {world} equal slices; use a "
            f"batch size that is a multiple of the number of processes ({world})."
        )
    per = n // world
    return _slice(batch, rank * per, (rank + 1) * per)
