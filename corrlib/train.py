"""A small training loop every chapter uses: exact resume, atomic checkpoints, history.

The loop is one readable class, :class:`Trainer`, driven by three functions you write:

* ``batch_fn(step, generator) -> batch``: the data of optimisation step ``step`` (0-based),
  drawn with ``generator``, a CPU ``torch.Generator`` seeded from ``(config.seed, step)``;
* ``loss_fn(model, batch) -> (loss, logs)``: a scalar loss tensor and a dict of floats to log;
* ``val_fn(model) -> dict[str, float]`` (optional): run under ``model.eval()`` and ``no_grad``.

Convention: ``step`` counts finished optimisation steps; step ``k`` of the schedule is the
``(k+1)``-th update. Because the data of a step depends only on ``(seed, step)`` and the
checkpoint holds the model, optimizer, grad scaler, history and every RNG state (python, numpy,
torch, CUDA), a run that is stopped or killed and then resumed ends with the same parameters, bit
for bit on CPU, as a run that was never interrupted (on GPU up to non-deterministic kernels).

Checkpoints are written atomically (temporary file, ``fsync``, ``os.replace``) and hold only
tensors, numbers, strings, ``None`` and lists/tuples/dicts of them, so they load with
``torch.load(..., weights_only=True)``: no pickled code is ever executed. A checkpoint records
its run (the full config and the model's class and settings) and is resumed or reused only by the
same run: any other seed, lr, steps, ... is a ``ValueError`` naming the file and the differences
(see :class:`Trainer`).

Notebooks use :func:`train_or_load`: load a finished checkpoint, else train (resuming an
unfinished one).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from corrlib import distributed
from corrlib._check import check_choice, check_float, check_int
from corrlib.checkpoint import atomic_open, load_checkpoint, save_checkpoint

__all__ = [
    "TrainConfig",
    "Trainer",
    "batches_from_dataset",
    "check_same_run",
    "history_to_csv",
    "history_to_json",
    "load_checkpoint",
    "lr_at",
    "make_optimizer",
    "model_info",
    "pick_device",
    "plot_history",
    "remove_stale_temps",
    "save_checkpoint",
    "seed_everything",
    "train_or_load",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Keys every training row of the history has (plus the ``logs`` of ``loss_fn``).
ROW_KEYS = ("step", "loss", "lr", "seconds")
#: A ``loss_fn`` log under this key (not logged) is the number of elements its loss averages. With
#: several processes each rank's loss is weighted by its share of the global count, so the
#: gradient is that of the global batch's mean even when the ranks' slices hold different numbers
#: of valid cells; one process ignores it.
LOSS_WEIGHT = "loss_weight"
#: Marks a checkpoint written by :class:`Trainer`.
CKPT_FORMAT = "corrlib.train/1"


# ----------------------------------------------------------------------------------- devices


def _available_devices() -> list[str]:
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """The device to train on: ``"auto"`` picks CUDA, else MPS, else CPU.

    An explicit ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"`` is checked: an unavailable one
    raises ``ValueError`` listing the devices that are available.

    Example:
        >>> pick_device("cpu")
        device(type='cpu')
        >>> pick_device("gpu")  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        ValueError: Unknown value 'gpu' for argument device. Valid values are {auto, cpu, cuda,
        mps}.
    """
    name = str(device)
    check_choice(name.split(":")[0], "device", DEVICES)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"Argument device must look like 'cuda' or 'cuda:1', got '{name}'."
        ) from None
    available = _available_devices()
    if dev.type == "cuda" and (
        not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()
    ):
        raise ValueError(
            f"Argument device is '{name}' but that CUDA device is not available; available: "
            f"{available}."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"Argument device is '{name}' but MPS is not available; available: {available}."
        )
    return dev


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (CPU and every CUDA device).

    Example:
        >>> seed_everything(0); a = torch.rand(2)
        >>> seed_everything(0); torch.equal(a, torch.rand(2))
        True
    """
    check_int(seed, "seed", 0, 2**32 - 1)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the global legacy RNG is what user code draws from)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def _generator(*parts) -> torch.Generator:
    """A CPU generator seeded from a hash of ``parts`` (so nearby seeds give unrelated streams)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def _get_rng_state() -> dict:
    """Every global RNG state as tensors and numbers (safe for ``weights_only`` loading)."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "has_gauss_next": py_gauss is not None,
            "gauss_next": 0.0 if py_gauss is None else float(py_gauss),
        },
    }
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    gauss = p["gauss_next"] if p["has_gauss_next"] else None
    random.setstate((p["version"], tuple(p["state"].tolist()), gauss))


# ------------------------------------------------------------------------------------ config


@dataclass
class TrainConfig:
    """Everything that defines a training run (checked on creation).

    ``steps`` optimisation steps of ``optimizer`` at peak learning rate ``lr``, shaped by
    ``schedule`` (see :func:`lr_at`) after ``warmup_steps`` of linear warm-up. ``grad_clip``
    clips the global gradient norm. ``amp`` uses mixed precision on CUDA (bf16 where supported,
    else fp16 with a ``GradScaler``) and is ignored with a warning elsewhere. A history row is
    written every ``log_every`` steps, ``val_fn`` runs every ``val_every`` steps (0: only at the
    end) and a checkpoint is saved every ``ckpt_every`` steps (0: only at the end).
    """

    steps: int
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    step_size: int | None = None
    gamma: float = 0.1
    warmup_steps: int = 0
    grad_clip: float | None = None
    amp: bool = False
    log_every: int = 10
    val_every: int = 0
    ckpt_every: int = 0
    seed: int = 0
    device: str = "auto"
    #: The chapter's settings that shape the run beyond the optimiser (batch size, data, loss
    #: weights, model sizes; :meth:`corrlib.recipes.TrainingConfig.train_config` fills it): recorded
    #: in every checkpoint and compared when one is resumed or reused. None: not recorded.
    recipe: dict | None = None
    #: What settings added after older checkpoints were written were in those runs: ``{"recipe":
    #: {key: value}, "model": {key: value}}`` (keys of ``recipe``, keys of the model's
    #: ``config``); a key missing from a checkpoint counts as this value when compared (and only
    #: then). Not itself compared.
    legacy: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_int(self.steps, "config.steps", 1)
        check_float(self.lr, "config.lr", 0.0, low_open=True)
        check_choice(self.optimizer, "config.optimizer", OPTIMIZERS)
        check_float(self.momentum, "config.momentum", 0.0, 1.0, high_open=True)
        check_float(self.weight_decay, "config.weight_decay", 0.0)
        check_choice(self.schedule, "config.schedule", SCHEDULES)
        if self.schedule == "step" and self.step_size is None:
            raise ValueError(
                "Argument config.step_size is required with schedule='step' (decay by gamma every "
                "step_size steps)."
            )
        if self.step_size is not None:
            check_int(self.step_size, "config.step_size", 1)
        check_float(self.gamma, "config.gamma", 0.0, 1.0, low_open=True)
        check_int(self.warmup_steps, "config.warmup_steps", 0, self.steps - 1)
        if self.grad_clip is not None:
            check_float(self.grad_clip, "config.grad_clip", 0.0, low_open=True)
        if not isinstance(self.amp, bool):
            raise ValueError(f"Argument config.amp must be True or False, got {self.amp!r}.")
        check_int(self.log_every, "config.log_every", 1)
        check_int(self.val_every, "config.val_every", 0)
        check_int(self.ckpt_every, "config.ckpt_every", 0)
        check_int(self.seed, "config.seed", 0, 2**32 - 1)
        check_choice(str(self.device).split(":")[0], "config.device", DEVICES)
        if self.recipe is not None and not isinstance(self.recipe, dict):
            raise ValueError(
                f"Argument config.recipe must be a dict or None, got {type(self.recipe).__name__}."
            )


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate of optimisation step ``step`` (0-based) under ``config``.

    Warm-up ramps linearly to ``lr`` over the first ``warmup_steps`` steps (``lr / W`` at step 0,
    ``lr`` at step ``W - 1``). After it, with ``t`` steps since warm-up out of ``T``:
    ``constant`` keeps ``lr``; ``cosine`` is ``lr * (1 + cos(pi t / T)) / 2`` (near 0 at the end);
    ``step`` multiplies by ``gamma`` every ``step_size`` steps.

    Example:
        >>> cfg = TrainConfig(steps=10, lr=1.0, schedule="step", step_size=4, gamma=0.5)
        >>> [lr_at(cfg, k) for k in (0, 3, 4, 8)]
        [1.0, 1.0, 0.5, 0.25]
    """
    warm = config.warmup_steps
    if step < warm:
        return config.lr * (step + 1) / warm
    t, total = step - warm, config.steps - warm
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * t / total))
    if config.schedule == "step":
        return config.lr * config.gamma ** (t // config.step_size)
    return config.lr


def _fused(params: list) -> dict:
    """``{"fused": True}`` when PyTorch has a fused Adam kernel for ``params`` (float tensors of
    one CPU or CUDA device, torch >= 2.4), else ``{}``. One pass over every parameter instead of
    a loop of small operations: Adam's step on SFNet's 128 M adaptation parameters takes 0.15 s
    instead of 0.68 s on a 2-core CPU (``benchmarks/bench_sfnet.py``); the update is the same
    up to float rounding."""
    kinds = {p.device.type for p in params}
    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    ok = (
        version >= (2, 4)
        and len(kinds) == 1
        and kinds <= {"cpu", "cuda"}
        and all(p.is_floating_point() for p in params)
    )
    return {"fused": True} if ok else {}


def _keep_kernel_choice(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict``: keep the kernel :func:`make_optimizer` chose for this machine.

    Loading restores the saved param groups, ``fused`` included, so a checkpoint written with
    the loop kernel (or on a machine without the fused one) would switch the kernel silently,
    and under a ``GradScaler`` a fused optimizer turned unfused fails. Each group's ``fused`` is
    set back, and Adam's ``step`` counters are moved where that kernel keeps them (the
    parameter's device when fused, the CPU otherwise; float32): the update is the same.
    """
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return
    fused = bool(optimizer.defaults.get("fused"))
    for group in optimizer.param_groups:
        group["fused"] = fused or None
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st and torch.is_tensor(st.get("step")):
                device = p.device if fused else torch.device("cpu")
                st["step"] = st["step"].to(device=device, dtype=torch.float32)


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of ``config`` (``optimizer``, ``lr``, ``momentum``, ``weight_decay``) over
    ``params`` (an iterable of tensors, not param-group dicts); Adam and AdamW use PyTorch's
    fused kernel when it applies (:func:`_fused`)."""
    params = list(params)
    if config.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=config.lr, weight_decay=config.weight_decay, **_fused(params)
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=config.lr, weight_decay=config.weight_decay, **_fused(params)
        )
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _to_device(batch, device: torch.device):
    """Move every tensor of a (nested) tensor / dict / list / tuple batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_to_device(v, device) for v in batch]
    if isinstance(batch, tuple):
        moved = [_to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else tuple(moved)
    return batch


# ------------------------------------------------------------------- checkpoint <-> run checks

#: :class:`TrainConfig` fields that a checkpoint may differ in and still be resumed or reused:
#: they do not change the trained parameters (``device``: moving a run, e.g. from the CPU to a GPU,
#: keeps it exact only up to the devices' numerics). Every other field is compared.
UNCHECKED_FIELDS = ("log_every", "ckpt_every", "device")
#: Model attributes that :func:`model_info` records, besides the class name.
MODEL_INFO_ATTRS = ("arch", "variant", "config")
_FIX = "Delete the file, pass another ckpt_path, or pass the same settings."


def _plain(x):
    """``x`` as checkpoint-safe plain data (tuples as lists, unknown objects as their repr)."""
    if x is None or type(x) in (bool, int, float, str):
        return x
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return repr(x)


def model_info(model: nn.Module) -> dict:
    """What identifies ``model`` in a checkpoint: ``{"class": <class name>}`` plus its ``arch``
    and ``variant`` (if strings) and its ``config`` (if a dict), as plain data.

    Example:
        >>> model_info(nn.Linear(2, 1))
        {'class': 'Linear'}
    """
    info = {"class": type(model).__name__}
    for attr in MODEL_INFO_ATTRS:
        value = getattr(model, attr, None)
        if (attr == "config" and isinstance(value, dict)) or (
            attr != "config" and isinstance(value, str)
        ):
            info[attr] = _plain(value)
    return info


def _short(e: BaseException, limit: int = 400) -> str:
    detail = " ".join(str(e).split())
    return detail if len(detail) <= limit else detail[:limit] + " ..."


def _differences(name: str, recorded, requested, legacy: dict | None = None) -> list[str]:
    """``"<name>: recorded ..., requested ..."`` for each differing entry (dicts one level deep;
    a key missing from ``recorded`` counts as its ``legacy`` value when it has one)."""
    if recorded == requested:
        return []
    if isinstance(recorded, dict) and isinstance(requested, dict):
        old = {
            k: _plain(v) for k, v in (legacy or {}).items() if k not in recorded and k in requested
        }
        recorded = {**old, **recorded}
        return [
            f"{name}[{k!r}]: recorded {recorded.get(k)!r}, requested {requested.get(k)!r}"
            for k in sorted(set(recorded) | set(requested))
            if recorded.get(k) != requested.get(k)
        ]
    return [f"{name}: recorded {recorded!r}, requested {requested!r}"]


def check_same_run(state: dict, config: TrainConfig, model: nn.Module, path) -> None:
    """Raise ``ValueError`` unless the checkpoint ``state`` (read from ``path``) was written by the
    run that ``config`` and ``model`` describe, so resuming or reusing it gives that run's model.

    Compared: every :class:`TrainConfig` field except :data:`UNCHECKED_FIELDS` (a field missing
    from an older checkpoint counts as its default, a key missing from its ``recipe`` or model
    ``config`` as its ``config.legacy`` value), the model's :func:`model_info` (where the
    checkpoint records one), and the steps done, which may not exceed ``config.steps``. The
    message names the file, each differing field with its recorded and requested values, and the
    fix.
    """
    if state.get("format") != CKPT_FORMAT:
        raise ValueError(
            f"{path} is not a corrlib.train checkpoint (format {state.get('format')!r}, expected "
            f"{CKPT_FORMAT!r}). {_FIX}"
        )
    saved = state.get("config") or {}
    diffs = []
    for field in dataclasses.fields(TrainConfig):
        if field.name in UNCHECKED_FIELDS or field.name == "legacy":  # legacy: how to compare
            continue
        default = None if field.default is dataclasses.MISSING else field.default
        diffs += _differences(
            f"config.{field.name}",
            _plain(saved.get(field.name, default)),
            _plain(getattr(config, field.name)),
            config.legacy.get(field.name),
        )
    if state.get("model_info") is not None:
        recorded, current = state["model_info"], model_info(model)
        for key in sorted(set(recorded) | set(current), key=["class", *MODEL_INFO_ATTRS].index):
            diffs += _differences(
                f"model {key}",
                recorded.get(key),
                current.get(key),
                config.legacy.get("model") if key == "config" else None,
            )
    done = int(state.get("step", 0))
    if done > config.steps:
        diffs.append(f"it has done {done} steps, more than the {config.steps} requested")
    if diffs:
        raise ValueError(
            f"Checkpoint {path} was written by another run, so it is neither resumed nor reused: "
            f"{'; '.join(diffs)}. {_FIX} (Not compared: {', '.join(UNCHECKED_FIELDS)}.)"
        )


def _load_weights(model: nn.Module, weights: dict, path) -> None:
    """``model.load_state_dict(weights, strict=True)``; a mismatch is a ``ValueError`` naming
    ``path`` and what differs."""
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"Checkpoint {path}: its model weights do not fit this {type(model).__name__} (another "
            f"architecture or size): {_short(e).rstrip('.')}. {_FIX}"
        ) from e


def remove_stale_temps(path) -> list[Path]:
    """Remove ``<name>.tmp-<pid>`` files next to ``path`` that a killed save left behind.

    Only files whose writer ``pid`` is no longer alive are removed (POSIX ``os.kill(pid, 0)``);
    a live process's (another training saving to the same path) and this process's are kept.
    Does nothing on other systems. Returns the removed files.
    """
    path = Path(path)
    if os.name != "posix" or not path.parent.is_dir():
        return []
    removed = []
    prefix = f"{path.name}.tmp-"
    for tmp in path.parent.iterdir():
        pid_text = tmp.name[len(prefix) :]
        if not tmp.name.startswith(prefix) or not pid_text.isdigit() or not tmp.is_file():
            continue
        pid = int(pid_text)
        if pid in (0, os.getpid()):
            continue
        try:
            os.kill(pid, 0)
        except OverflowError:  # not a process id
            continue
        except ProcessLookupError:  # no such process: its save died half-way
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # e.g. PermissionError: alive, another user's
            pass
    return removed


# ----------------------------------------------------------------------------------- trainer


class Trainer:
    """Train ``model`` for ``config.steps`` steps; :meth:`fit` resumes from ``ckpt_path``.

    Args:
        model: the ``nn.Module``; moved to ``pick_device(config.device)``. Seed its
            initialisation yourself (:func:`seed_everything`) before building it.
        loss_fn: ``loss_fn(model, batch) -> (loss, logs)``: a scalar tensor and a dict of floats
            (a bare loss tensor is accepted too).
        batch_fn: ``batch_fn(step, generator) -> batch``; draw every random number of the batch
            from ``generator`` (seeded from ``(config.seed, step)``). Tensors in the batch
            (nested dicts/lists/tuples too) are moved to the device.
        config: a :class:`TrainConfig`.
        ckpt_path: where checkpoints go (``None``: no checkpoints, no resume).
        val_fn: ``val_fn(model) -> dict[str, float]``, run under ``model.eval()`` and
            ``torch.no_grad()``; its keys enter the history prefixed ``val_``.
        progress: show a ``tqdm`` progress bar (turn it off in committed notebooks).
        on_log: ``on_log(history)`` after each new or updated history row (e.g. a live plot).

    Checkpoints belong to one run. A checkpoint records the full config and the model's
    :func:`model_info` (class name, ``arch``, ``variant``, ``config``); it is resumed, or returned
    at once when finished, only if it was written by the same run. Every config field except
    ``log_every``, ``ckpt_every`` and ``device`` (:data:`UNCHECKED_FIELDS`, which do not change
    the parameters) must match, and so must the model info: a different ``seed``, ``lr``,
    ``optimizer``, schedule, ``val_every`` (``val_fn`` may draw random numbers), ``amp``, ... is a
    ``ValueError`` that names the file, each differing field with its recorded and requested
    values, and the fix. So is a different ``steps``: the schedule depends on it, and a
    checkpoint never yields a model trained longer than asked. Weights that do not fit the model
    (another architecture or size) are a ``ValueError`` naming the file and the mismatch; a
    truncated or corrupt file is one too (:func:`load_checkpoint`). Give each run its own
    ``ckpt_path`` (put the seed and the settings in it). Saving removes ``<name>.tmp-<pid>``
    files that a killed save left behind (:func:`remove_stale_temps`).

    Example:
        >>> seed_everything(0)
        >>> model = nn.Linear(2, 1)
        >>> def batch_fn(step, g):
        ...     x = torch.randn(16, 2, generator=g)
        ...     return x, x.sum(1, keepdim=True)
        >>> def loss_fn(model, batch):
        ...     x, y = batch
        ...     return nn.functional.mse_loss(model(x), y), {}
        >>> cfg = TrainConfig(steps=100, lr=0.1, log_every=50, device="cpu")
        >>> history = Trainer(model, loss_fn, batch_fn, cfg, progress=False).fit()
        >>> [row["step"] for row in history], history[-1]["loss"] < 0.01
        ([50, 100], True)
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        batch_fn: Callable[[int, torch.Generator], object],
        config: TrainConfig,
        *,
        ckpt_path=None,
        val_fn: Callable[[nn.Module], dict] | None = None,
        progress: bool = True,
        on_log: Callable[[list], None] | None = None,
    ):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Argument config must be a TrainConfig, got {type(config).__name__}.")
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"Argument model must be a torch.nn.Module, got {type(model).__name__}."
            )
        self.config = config
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.device = pick_device(config.device)
        if self.world > 1 and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", distributed.local_rank())
        self.model = model.to(self.device)
        self.loss_fn, self.batch_fn, self.val_fn, self.on_log = loss_fn, batch_fn, val_fn, on_log
        self.ckpt_path = None if ckpt_path is None else Path(ckpt_path)
        self.progress = progress
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                "Argument model has no parameters that require grad; nothing to train."
            )
        self.optimizer = make_optimizer(params, config)
        self.amp_dtype = None
        if config.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif config.amp:
            warnings.warn(
                f"config.amp=True is ignored on device '{self.device}': mixed precision is only "
                "used on CUDA.",
                stacklevel=2,
            )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        # several processes (torchrun): the loss computation runs inside DistributedDataParallel,
        # which averages the gradients over the ranks during backward. The wrapper's forward is
        # loss_fn itself, so loss functions that call model methods other than forward (most
        # chapters' do) are synchronised too.
        self._ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            _sync_batch_norm(self.model, self.device)
            self._ddp = DistributedDataParallel(
                _LossModule(self.model, loss_fn),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.step = 0
        self.history: list[dict] = []
        self._pending = {"sums": {}, "counts": {}}  # logs since the last history row
        self._seconds = 0.0  # training time over every call of fit
        self._rng: dict | None = None  # RNG states when the last fit returned

    # -------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        """The checkpoint: model, optimizer, scaler, step, history, RNG states, the full config
        and what identifies the model (:func:`model_info`)."""
        return {
            "format": CKPT_FORMAT,
            "step": self.step,
            "finished": self.step >= self.config.steps,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": [dict(r) for r in self.history],
            "pending": {
                "sums": dict(self._pending["sums"]),
                "counts": dict(self._pending["counts"]),
            },
            "seconds": self._seconds,
            "rng": _get_rng_state(),
            "config": dataclasses.asdict(self.config),
            "model_info": model_info(self.model),
        }

    def load_state_dict(self, state: dict, path=None) -> None:
        """Restore a :meth:`state_dict` (RNG states included); the model is loaded strictly.

        ``ValueError`` (naming ``path``, default ``ckpt_path``) if the state was written by another
        run (see the class docstring for the fields compared) or its tensors do not fit the model.
        """
        where = path if path is not None else (self.ckpt_path or "the checkpoint state")
        check_same_run(state, self.config, self.model, where)
        _load_weights(self.model, state["model"], where)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, RuntimeError, KeyError) as e:
            raise ValueError(
                f"Checkpoint {where}: the saved optimizer state does not fit this model's "
                f"trainable parameters ({_short(e)}); it was written by another set-up (e.g. "
                f"other layers frozen). {_FIX}"
            ) from e
        _keep_kernel_choice(self.optimizer)
        if self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.history = [dict(r) for r in state["history"]]
        self._pending = {
            "sums": dict(state["pending"]["sums"]),
            "counts": dict(state["pending"]["counts"]),
        }
        self._seconds = float(state["seconds"])
        _set_rng_state(state["rng"])

    def save(self) -> None:
        """Save :meth:`state_dict` to ``ckpt_path`` (atomically). With several processes only
        rank 0 writes, and every rank waits until the file is complete."""
        if self.ckpt_path is None:
            raise ValueError(
                "This Trainer has no ckpt_path; pass ckpt_path=... to save checkpoints."
            )
        if self.rank == 0:
            remove_stale_temps(self.ckpt_path)
            save_checkpoint(self.ckpt_path, self.state_dict())
        distributed.barrier()

    # ---------------------------------------------------------------------------- loop

    def fit(self, resume: bool = True, stop_after: int | None = None) -> list[dict]:
        """Train up to ``config.steps`` steps and return the history.

        With ``resume`` and an existing ``ckpt_path``, continue from that checkpoint (a finished
        one returns at once); without, continue from this Trainer's state (a new one seeds every
        RNG with ``config.seed`` and starts at step 0). ``stop_after`` stops after that many steps
        of this call and saves a checkpoint, as if the run had been interrupted. An exception
        (or a kill) loses the steps since the last checkpoint: resuming redoes them exactly.

        History rows: ``{"step", "loss", "lr", "seconds", **logs}`` every ``log_every`` steps
        (means over the steps since the previous row; ``lr`` of the last step; ``seconds`` of
        training so far), validation metrics as ``val_<key>`` merged into the row of their step.
        """
        cfg = self.config
        if stop_after is not None:
            check_int(stop_after, "stop_after", 1)
        if resume and self.ckpt_path is not None and self.ckpt_path.is_file():
            self.load_state_dict(load_checkpoint(self.ckpt_path), self.ckpt_path)
        elif self.step == 0:
            seed_everything(cfg.seed)
        elif self._rng is not None:
            _set_rng_state(self._rng)
        if self.step >= cfg.steps:
            return self.history
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)

        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not self.progress or self.rank != 0,
        )
        self.model.train()
        last = time.perf_counter()
        try:
            while self.step < end:
                self._train_step()
                now = time.perf_counter()
                self._seconds += now - last
                last = now
                bar.update(1)
                s = self.step
                if s % cfg.log_every == 0 or (s == cfg.steps and self._pending["counts"]):
                    self._log_row()
                    bar.set_postfix(loss=f"{self.history[-1]['loss']:.4g}")
                if self.val_fn is not None and (
                    (cfg.val_every and s % cfg.val_every == 0) or s == cfg.steps
                ):
                    self._validate()
                if self.ckpt_path is not None and (
                    s == end or (cfg.ckpt_every and s % cfg.ckpt_every == 0)
                ):
                    self.save()
                last = time.perf_counter()  # validation and saving are not training time
        finally:
            bar.close()
        self._rng = _get_rng_state()
        return self.history

    def _train_step(self) -> None:
        cfg, k = self.config, self.step
        batch = self.batch_fn(k, _generator("batch", cfg.seed, k))
        if self.world > 1:  # every rank drew the same global batch: keep this rank's slice
            shard = getattr(self.batch_fn, "shard", distributed.shard_batch)
            batch = shard(batch, self.rank, self.world)
        batch = _to_device(batch, self.device)
        lr = lr_at(cfg, k)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            out = self._ddp(batch) if self._ddp is not None else self.loss_fn(self.model, batch)
        loss, logs = (out, {}) if isinstance(out, torch.Tensor) else out
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not isinstance(logs, dict):
            raise ValueError(
                "loss_fn must return (scalar loss tensor, logs dict), got "
                f"({type(loss).__name__} of shape {tuple(getattr(loss, 'shape', ()))}, "
                f"{type(logs).__name__})."
            )
        reserved = [key for key in logs if key in ROW_KEYS]
        if reserved:
            raise ValueError(
                f"loss_fn logs may not use the keys {reserved}: {ROW_KEYS} are reserved."
            )
        logs = dict(logs)
        weight = float(logs.pop(LOSS_WEIGHT, 1.0))
        value = loss.item()
        if self.world > 1:  # the history holds global-batch means, as one process would log
            # a rank's slice may lack a kind of sample, and its loss_fn then some log keys: agree
            # on the union of the keys first, then reduce a (weighted sum, weight) pair per key
            gathered: list = [None] * self.world
            torch.distributed.all_gather_object(gathered, sorted(logs))
            keys = sorted({k for ks in gathered for k in ks})
            local = [weight, value * weight]
            for key in keys:
                local += [float(logs[key]) * weight, weight] if key in logs else [0.0, 0.0]
            sums = torch.tensor(local, dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(sums)
            total, sums = float(sums[0]), sums.tolist()
            if total > 0:
                value = sums[1] / total
                logs = {
                    key: sums[2 + 2 * i] / sums[3 + 2 * i]
                    for i, key in enumerate(keys)
                    if sums[3 + 2 * i] > 0
                }
                # DDP averages gradients over ranks: scale so the average weighs each rank by
                # its share of the global count (1 when every rank averages as many elements)
                loss = loss * (weight * self.world / total)
        if not math.isfinite(value):
            raise FloatingPointError(
                f"The loss is {value} at step {k}; lower config.lr or set config.grad_clip."
            )
        self.scaler.scale(loss).backward()
        if cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        sums, counts = self._pending["sums"], self._pending["counts"]
        for key, v in {"loss": value, **logs}.items():
            sums[key] = sums.get(key, 0.0) + float(v)
            counts[key] = counts.get(key, 0) + 1

    def _log_row(self) -> None:
        sums, counts = self._pending["sums"], self._pending["counts"]
        row = {
            "step": self.step,
            "loss": sums.pop("loss") / counts.pop("loss"),
            "lr": lr_at(self.config, self.step - 1),
        }
        row["seconds"] = round(self._seconds, 3)
        row.update({k: sums[k] / counts[k] for k in sums})
        self._pending = {"sums": {}, "counts": {}}
        self.history.append(row)
        if self.on_log is not None:
            self.on_log(self.history)

    def _validate(self) -> None:
        if self.rank != 0:  # rank 0 validates and writes the history that is saved
            return
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = self.val_fn(self.model)
        finally:
            self.model.train()
        vals = {(k if k.startswith("val_") else f"val_{k}"): float(v) for k, v in metrics.items()}
        if self.history and self.history[-1]["step"] == self.step:
            self.history[-1].update(vals)
        else:
            self.history.append({"step": self.step, "seconds": round(self._seconds, 3), **vals})
        if self.on_log is not None:
            self.on_log(self.history)


def _sync_batch_norm(model: nn.Module, device: torch.device) -> None:
    """Trainable BatchNorm layers under several processes: on GPUs they become SyncBatchNorm
    (statistics over the global batch, as one process computes them); on the CPU PyTorch has no
    SyncBatchNorm, so each process normalises its own slice and the run is *not* equal to one
    process at the global batch: say so."""
    bn = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and not isinstance(m, nn.SyncBatchNorm)
        and any(p.requires_grad for p in m.parameters(recurse=False))
    ]
    if not bn:
        return
    if device.type == "cuda":
        for name, child in list(model.named_children()):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        return
    shown = ", ".join(bn[:3]) + (", ..." if len(bn) > 3 else "")
    warnings.warn(
        f"{len(bn)} trainable BatchNorm layer(s) ({shown}) "
        f"train on {device} with several processes: PyTorch's SyncBatchNorm needs GPUs, so each "
        "process normalises its own slice of the batch and the run differs from one process at "
        "the global batch. Train on GPUs, or on one process, for that equality.",
        stacklevel=3,
    )


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module's forward, for DistributedDataParallel."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


# ------------------------------------------------------------------------------------- data


def batches_from_dataset(
    dataset, batch_size: int, *, seed: int = 0, drop_last: bool = True, collate_fn=None
) -> Callable:
    """A stateless ``batch_fn`` over a map-style ``dataset`` (``len`` and ``__getitem__``).

    Every epoch visits the items in a permutation seeded by ``(seed, epoch)``; step ``k`` is
    batch ``k % B`` of epoch ``k // B`` (``B`` batches per epoch), so any step can be drawn
    directly, which makes resuming exact. ``drop_last=False`` keeps a smaller last batch.
    Items are stacked with ``collate_fn`` (default ``torch.utils.data.default_collate``).

    Example:
        >>> data = torch.utils.data.TensorDataset(torch.arange(5.0))
        >>> batch_fn = batches_from_dataset(data, 2)
        >>> [len(batch_fn(k, None)[0]) for k in range(3)]  # 2 batches per epoch, then epoch 1
        [2, 2, 2]
    """
    check_int(batch_size, "batch_size", 1)
    check_int(seed, "seed", 0)
    n = len(dataset)
    per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    if per_epoch == 0:
        raise ValueError(
            f"Argument dataset has {n} items, fewer than batch_size={batch_size}; "
            "use a smaller batch_size or drop_last=False."
        )
    collate = collate_fn or torch.utils.data.default_collate
    cache: dict[int, torch.Tensor] = {}

    def batch_fn(step: int, generator: torch.Generator | None = None):
        epoch, pos = divmod(step, per_epoch)
        if epoch not in cache:
            cache.clear()  # only the current epoch's permutation is kept
            cache[epoch] = torch.randperm(n, generator=_generator("data", seed, epoch))
        idx = cache[epoch][pos * batch_size : (pos + 1) * batch_size]
        return collate([dataset[i] for i in idx.tolist()])

    batch_fn.batches_per_epoch = per_epoch
    return batch_fn


# ---------------------------------------------------------------------------------- history


def _history_keys(history: list[dict]) -> list[str]:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    return keys


def history_to_csv(history: list[dict], path) -> Path:
    """Write the history as CSV (one column per key, empty where a row lacks it), atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(
        text, fieldnames=_history_keys(history), restval="", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(history)
    path = Path(path)
    with atomic_open(path) as f:
        f.write(text.getvalue().encode())
    return path


def history_to_json(history: list[dict], path) -> Path:
    """Write the history as a JSON list of rows, atomically."""
    path = Path(path)
    with atomic_open(path) as f:
        f.write(json.dumps(history, indent=1).encode())
    return path


def plot_history(history: list[dict], keys=("loss",), ax=None):
    """Plot ``keys`` of the history against ``step`` (each only where its rows have it); returns
    ``ax``."""
    import matplotlib.pyplot as plt

    if isinstance(keys, str):
        keys = (keys,)
    available = [k for k in _history_keys(history) if k != "step"]
    for key in keys:
        check_choice(key, "keys", available)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    for key in keys:
        rows = [r for r in history if key in r]
        style = "o-" if key.startswith("val_") else "-"
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], style, label=key, markersize=3)
    ax.set_xlabel("step")
    ax.legend()
    return ax


# ------------------------------------------------------------------------------ train or load


def train_or_load(
    model: nn.Module,
    ckpt_path,
    train: Callable[[], list],
    *,
    config: TrainConfig,
    retrain: bool = False,
) -> tuple[list, bool]:
    """Load a finished checkpoint into ``model``, or call ``train()``; returns
    ``(history, trained)``.

    ``train`` must train this ``model`` with a :class:`Trainer` of ``config`` whose ``ckpt_path``
    is ``ckpt_path`` (an unfinished checkpoint is then resumed) and return the history. A
    checkpoint, finished or not, is used only if it was written by the same run: ``config`` and
    the model are compared with what it records, as :class:`Trainer` does (:func:`check_same_run`),
    and a difference is a ``ValueError`` naming the file and the fields, never a silent reuse.
    ``retrain=True`` moves an existing checkpoint to ``<name>.old`` and trains again. The model
    is loaded strictly (a ``ValueError`` naming the file if the weights do not fit) and returned
    in ``eval()`` mode either way; one line is printed saying which happened.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"Argument config must be a TrainConfig, got {type(config).__name__}.")
    path = Path(ckpt_path)
    if retrain and path.exists():
        old = path.with_name(path.name + ".old")
        os.replace(path, old)
        print(f"[train_or_load] retrain=True: moved {path} to {old.name}; training.")
    elif path.is_file():
        state = load_checkpoint(path)
        check_same_run(state, config, model, path)
        if state.get("finished"):
            _load_weights(model, state["model"], path)
            model.eval()
            print(
                f"[train_or_load] loaded finished checkpoint {path} (step {state['step']}); "
                "retrain=True trains again."
            )
            return state["history"], False
        print(f"[train_or_load] resuming unfinished checkpoint {path} from step {state['step']}.")
    else:
        print(f"[train_or_load] no checkpoint at {path}; training.")
    history = train()
    model.eval()
    return history, True
