"""Checkpoint files: atomic writes and safe (``weights_only``) loading.

Checkpoints are written atomically (temporary file in the same folder, ``fsync``, ``os.replace``)
and hold only tensors, numbers, strings, ``None`` and lists/tuples/dicts of them, so they load
with ``torch.load(..., weights_only=True)``: no pickled code is ever executed. Models load their
trained weights through here (``models`` sit above this module), and so does the training loop.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import torch

from corrlib._check import check_int

__all__ = [
    "atomic_open",
    "atomic_write_text",
    "check_eval_settings",
    "finite_metrics",
    "load_checkpoint",
    "load_state_strict",
    "read_model_file",
    "save_checkpoint",
]


@contextlib.contextmanager
def atomic_open(path: Path):
    """Open ``<path>.tmp-<pid>`` for writing; on success fsync it and ``os.replace`` it to ``path``.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if os.name == "posix":  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


_SAFE_SCALARS = (type(None), bool, int, float, str, torch.dtype, torch.device, torch.Size)


def _check_safe(x, where: str) -> None:
    """Raise ``TypeError`` naming the entry of a state that ``weights_only`` loading would
    refuse."""
    if isinstance(x, torch.Tensor) or type(x) in _SAFE_SCALARS:
        return
    if isinstance(x, dict):
        for k, v in x.items():
            if type(k) not in (str, int):
                raise TypeError(
                    f"Checkpoint state{where} has a key of type {type(k).__name__}; use str or int "
                    "keys."
                )
            _check_safe(v, f"{where}[{k!r}]")
        return
    if type(x) in (list, tuple):
        for i, v in enumerate(x):
            _check_safe(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"Checkpoint state{where} is a {type(x).__name__}; a checkpoint holds only tensors, "
        "numbers, strings, None and lists/tuples/dicts of them (convert numpy values with float() "
        "or torch.as_tensor, store RNG states as tensors)."
    )


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (never a half-written file under that name).

    The state is written to ``<name>.tmp-<pid>`` in the same folder, flushed and fsynced, then
    renamed over ``path`` with ``os.replace``; parent folders are created. ``state`` may hold
    only tensors, numbers, strings, ``None`` and lists/tuples/dicts of them (``TypeError``
    naming the entry otherwise), so :func:`load_checkpoint` can use ``weights_only=True``.
    """
    if not isinstance(state, dict):
        raise TypeError(f"Argument state must be a dict, got {type(state).__name__}.")
    _check_safe(state, "")
    path = Path(path)
    with atomic_open(path) as f:
        torch.save(state, f)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises ``FileNotFoundError`` if ``path`` does not exist and ``ValueError`` if it cannot be
    read (truncated, corrupt or holding pickled objects); both name the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as e:
        raise ValueError(
            f"Checkpoint {path} cannot be read: it is truncated or corrupt (or holds objects other "
            f"than tensors, numbers, strings, lists and dicts). Delete it or restore the previous "
            f"one. ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    if not isinstance(state, dict):
        raise ValueError(
            f"Checkpoint {path} holds a {type(state).__name__}, not a dict; delete it or restore "
            "the previous one."
        )
    return state


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating parent folders; returns the path."""
    path = Path(path)
    with atomic_open(path) as f:
        f.write(text.encode("utf-8"))
    return path


def finite_metrics(metrics: dict | None) -> dict[str, float]:
    """The finite numeric entries of ``metrics`` as floats (what a model file records)."""
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[str(k)] = float(v)
    return out


def read_model_file(path, fmt: str, what: str, *, legacy_keys: tuple[str, ...] = ()) -> dict:
    """Load a trained-model file written by a model module and check its ``format`` tag.

    Args:
        path: the file (``FileNotFoundError`` names it and says which notebook writes such files).
        fmt: the expected ``format`` entry, e.g. ``"corrlib.sfnet/1"``.
        what: what the file should hold, for messages (``"an exported SFNet"``).
        legacy_keys: keys whose presence marks an older file of the same kind (accepted).

    Returns:
        The state dict as saved.
    """
    state = load_checkpoint(path)
    if state.get("format") != fmt and not (legacy_keys and all(k in state for k in legacy_keys)):
        found = state.get("format") or (
            "a training checkpoint" if "optimizer" in state else "no format tag"
        )
        raise ValueError(
            f"{path} is not {what} (format {found!r}, expected {fmt!r}); pass a file that holds "
            "one."
        )
    return state


def load_state_strict(module: torch.nn.Module, state: dict, path, part: str = "model") -> None:
    """``module.load_state_dict(state, strict=True)`` with an error that names the file.

    A missing/unexpected key or a tensor of another shape means the file was written by another
    configuration of the model; the ``ValueError`` says which file and what differs.
    """
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        if len(detail) > 400:
            detail = detail[:400] + " ..."
        raise ValueError(
            f"{path}: the saved {part} weights do not fit a {type(module).__name__} built from the "
            f"file's own settings ({detail}). The file is damaged or was edited; export it again."
        ) from e


def check_eval_settings(settings: dict | None, path=None) -> dict:
    """Evaluation settings stored beside exported weights: ``{"max_side": None or int >= 1}``
    (dense methods; ``"image_size"``: the square input size of chapter 07's heads),
    ``{"proposals": "ss" | "us" | "sw", "n_proposals": int >= 1}`` (the
    region matchers of chapter 04) or ``{"iterations": int >= 0}`` (chapter 05's recurrence).

    A learned method reads them as its defaults, so evaluating a file from the command line
    reproduces the number its chapter printed. Returns a copy; ValueError on other keys or values
    (naming ``path``, the file they were read from, when given).
    """
    settings = dict(settings or {})
    try:
        allowed = ["image_size", "iterations", "max_side", "n_proposals", "proposals"]
        unknown = set(settings) - set(allowed)
        if unknown:
            raise ValueError(f"eval_settings: unknown keys {sorted(unknown)}; allowed: {allowed}.")
        for key in ("image_size", "max_side", "n_proposals"):
            if settings.get(key) is not None:
                check_int(settings[key], f"eval_settings[{key!r}]", 1)
        if settings.get("iterations") is not None:
            check_int(settings["iterations"], "eval_settings['iterations']", 0)
        if "proposals" in settings and settings["proposals"] not in ("ss", "us", "sw"):
            raise ValueError(
                "eval_settings['proposals'] must be 'ss', 'us' or 'sw', got "
                f"{settings['proposals']!r}."
            )
    except ValueError as e:
        if path is None:
            raise
        raise ValueError(f"{path}: its recorded evaluation settings are invalid ({e}).") from e
    return settings
