"""Middlebury ``.flo`` optical-flow files (Baker et al., IJCV 2011).

Layout: float32 magic ``202021.25`` (bytes ``PIEH``), int32 width, int32 height, then
``height * width * 2`` float32 values, row-major, ``u`` and ``v`` interleaved, little-endian.
Pixels with unknown flow hold huge values (above ``1e9``, usually ``1e10``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["FLO_MAGIC", "UNKNOWN_FLOW_THRESHOLD", "read_flo", "write_flo"]

FLO_MAGIC = np.float32(202021.25)
UNKNOWN_FLOW_THRESHOLD = 1e9


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.flo`` file into an ``(H, W, 2)`` float32 array (u, v in pixels).

    Unknown-flow pixels keep their stored value (``> 1e9``); see ``UNKNOWN_FLOW_THRESHOLD``.
    Raises ``ValueError`` naming the file for a wrong magic number, an implausible size or a
    truncated body.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Flow file {path} does not exist.")
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12:
            raise ValueError(
                f"{path} is not a .flo file: only {len(header)} bytes, need a 12-byte header."
            )
        magic = np.frombuffer(header[:4], "<f4")[0]
        if magic != FLO_MAGIC:
            raise ValueError(
                f"{path} is not a Middlebury .flo file: magic number {magic!r}, expected 202021.25 "
                "(file corrupt, or not a .flo file)."
            )
        w, h = (int(v) for v in np.frombuffer(header[4:], "<i4"))
        if not (0 < w < 100_000 and 0 < h < 100_000):
            raise ValueError(f"{path}: implausible flow size {w}x{h} in the header (corrupt file).")
        body = f.read()
    need = w * h * 2 * 4
    if len(body) < need:
        raise ValueError(
            f"{path} is truncated: header says {w}x{h} (needs {need} bytes of flow), found "
            f"{len(body)} bytes. Re-download or re-extract the dataset."
        )
    return np.frombuffer(body[:need], "<f4").reshape(h, w, 2).copy()


def write_flo(path: str | os.PathLike, flow: np.ndarray) -> None:
    """Write an ``(H, W, 2)`` array as a ``.flo`` file (atomically: temp file, then rename)."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"Argument flow must have shape (H, W, 2), got shape {flow.shape}.")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    h, w = flow.shape[:2]
    with open(tmp, "wb") as f:
        f.write(np.float32(FLO_MAGIC).astype("<f4").tobytes())
        f.write(np.array([w, h], "<i4").tobytes())
        f.write(flow.astype("<f4").tobytes())
    os.replace(tmp, path)
