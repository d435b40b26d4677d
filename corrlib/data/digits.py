"""MNIST-style digits and the distorted-MNIST variants of the Spatial Transformer paper.

Files (torchvision's layout, so ``torchvision.datasets.MNIST(root, download=True)`` fills it)::

    <data_root>/
      MNIST/raw/
        train-images-idx3-ubyte[.gz]   60,000 training images   (optional, see below)
        train-labels-idx1-ubyte[.gz]
        t10k-images-idx3-ubyte[.gz]    10,000 test images
        t10k-labels-idx1-ubyte[.gz]
      FashionMNIST/raw/                the same four names (or Debian's dataset-fashion-mnist,
                                       /usr/share/datasets/fashion-mnist/)

**Offline fallback.** The shared data of this project holds the MNIST *test* set only. When the
official training images are missing, :func:`load_mnist` splits the 10,000 test images into
DISJOINT parts (8,000 train / 2,000 test, stratified by class, fixed seed) and says so in the
returned :attr:`DigitSet.info` (``official: False`` and a ``warning``): error rates are then not
comparable with published MNIST numbers, which train on the 60,000 training images.
(torchvision's ``MNIST(train=False)`` is not used to read: it refuses to load unless all four
files are present; the idx format is parsed here instead.)

**Distortions** (Jaderberg et al., *Spatial Transformer Networks*, NeurIPS 2015, Sec. 4.1 and
Appendix A; the exact values below are our reading of the paper, written from memory and not
checked against the text, see :data:`DISTORTION_PARAMS`):

* ``R``: rotation by an angle drawn from U(-90°, 90°); 28x28 output.
* ``RTS``: rotation U(-45°, 45°), scale U(0.7, 1.2), placed at a uniformly random position in a
  42x42 canvas (the scaled 28x28 frame stays inside it).
* ``P``: projective: the image is scaled by U(0.75, 1) and its four corners are moved by
  Gaussian noise of std 5 px (truncated at 2 std); a draw whose map would fold inside the 28x28
  frame (its vanishing line crosses it, about 10 % of draws) is drawn again; 28x28 output.
* ``E``: elastic: a thin-plate spline on a 4x4 lattice of control points (the image's corners
  and edges included) whose targets move by Gaussian noise of std 2 px (truncated at 2 std);
  28x28 output.

Convention: every distortion is a backward warp built with :mod:`corrlib.geometry`
(``affine_grid``, ``homography_grid``; the TPS through
:func:`corrlib.geometry.tps_basis`, which equals ``geometry.tps_grid``; normalised
coordinates, ``align_corners=False``) and sampled
bilinearly with zero padding (MNIST's background is 0). Images are float ``(B, 1, 28, 28)`` in
``[0, 1]``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from corrlib._check import check_choice, check_shape, check_tensor
from corrlib.data._common import DatasetNotFoundError, require_folder, resolve_data_root
from corrlib.geometry import (
    affine_grid,
    homography_from_points,
    homography_grid,
    tps_basis,
    tps_lattice,
)

__all__ = [
    "DIGIT_SPLITS",
    "DISTORTIONS",
    "DISTORTION_CANVAS",
    "DISTORTION_PARAMS",
    "FASHION_MNIST_DEBIAN",
    "TEST_ONLY_SPLIT",
    "DigitSet",
    "DistortedDigits",
    "distort_digits",
    "distortion_grid",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
]

DIGIT_SPLITS = ("train", "test")
#: The distortions of STN Sec. 4.1 (paper names): rotated, rotated-translated-scaled,
#: projective, elastic.
DISTORTIONS = ("R", "RTS", "P", "E")
#: Output canvas side (pixels) of each distortion.
DISTORTION_CANVAS = {"R": 28, "RTS": 42, "P": 28, "E": 28}
#: The parameters used (our reading of STN Appendix A; pixels refer to the 28x28 digit).
DISTORTION_PARAMS = {
    "R": {"max_angle_deg": 90.0},
    "RTS": {"max_angle_deg": 45.0, "scale": (0.7, 1.2)},  # anywhere in the canvas (42 px)
    "P": {"scale": (0.75, 1.0), "corner_std_px": 5.0, "truncate_std": 2.0},
    "E": {"lattice": 4, "std_px": 2.0, "truncate_std": 2.0},
}
#: When only the official test set is present: (train, test) sizes of its stratified split.
TEST_ONLY_SPLIT = (8000, 2000)
_SPLIT_SEED = 0
#: Where Debian's ``dataset-fashion-mnist`` package installs its files.
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_DIGIT = 28  # side of an MNIST image


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an idx file (LeCun's MNIST format; ``.gz`` is decompressed) into a tensor.

    Format: two zero bytes, a type byte (``0x08`` = uint8), the number of dims, then each dim as a
    big-endian int32, then the data in C order. The header is checked against the file size, so
    a truncated file raises ``ValueError`` naming it.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number {raw[:4].hex()}).")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = offset + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: header says shape {shape} ({expected} bytes), file "
            f"has {len(raw)} bytes."
        )
    arr = np.frombuffer(raw, dtype, offset=offset).reshape(shape)
    return torch.from_numpy(arr.astype(arr.dtype.newbyteorder("=")).copy())


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(images (N, 1, 28, 28) float32 in [0, 1], labels (N,) int64)``, or None if missing."""
    paths = [_find(folder, name) for name in _FILES[split]]
    if any(p is None for p in paths):
        return None
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.dim() != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{folder}: {split} images {tuple(images.shape)} and labels {tuple(labels.shape)} do "
            "not match."
        )
    return images.unsqueeze(1).float() / 255.0, labels.long()


def _stratified_split(
    labels: torch.Tensor, n_train: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint ``(train_idx, test_idx)``, each class split in proportion ``n_train / N``."""
    g = torch.Generator().manual_seed(seed)
    frac = n_train / len(labels)
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = round(frac * len(idx))
        train.append(idx[:k])
        test.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


@dataclass(eq=False)
class DigitSet:
    """A set of grey digits: ``images (N, 1, 28, 28)`` float32 in ``[0, 1]``, ``labels (N,)`` int64.

    ``info`` says where the data came from; ``info["official"]`` is False (and
    ``info["warning"]`` says why) when the split is not the dataset's official one.
    """

    images: torch.Tensor
    labels: torch.Tensor
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def subset(self, n: int | None) -> DigitSet:
        """The first ``n`` items (``None``: all), keeping ``info``."""
        if n is None or n >= len(self):
            return self
        return DigitSet(self.images[:n], self.labels[:n], {**self.info, "subset": n})


def _load_idx_dataset(folder: Path, split: str, name: str) -> DigitSet:
    check_choice(split, "split", DIGIT_SPLITS)
    has_train = all(_find(folder, f) is not None for f in _FILES["train"])
    if has_train:  # the official split
        data = _read_split(folder, split)
        if data is not None:
            return DigitSet(
                *data, {"dataset": name, "split": split, "source": str(folder), "official": True}
            )
    test = _read_split(folder, "test")
    if test is None:
        raise DatasetNotFoundError(
            f"{name}: no {split} files in {folder}. Expected {', '.join(_FILES[split])} (or .gz). "
            "How to get it: pass download=True, or run torchvision.datasets.MNIST(root, "
            "download=True)."
        )
    # only the official test set is present: split it into disjoint train/test parts
    n_train, n_test = TEST_ONLY_SPLIT
    images, labels = test
    tr, te = _stratified_split(
        labels, round(n_train * len(labels) / (n_train + n_test)), _SPLIT_SEED
    )
    idx = tr if split == "train" else te
    warning = (
        f"OFFLINE FALLBACK: the official {name} training images are not in {folder}; this "
        f"'{split}' set is one part of a stratified {len(tr)}/{len(te)} split (seed {_SPLIT_SEED}) "
        f"of the {len(labels)} official TEST images, disjoint from the other part. Errors measured "
        f"on it are not comparable with published {name} results (trained on the official training "
        "set)."
    )
    info = {
        "dataset": name,
        "split": split,
        "source": str(folder),
        "official": False,
        "warning": warning,
    }
    return DigitSet(images[idx], labels[idx], info)


def load_mnist(
    root: str | os.PathLike | None = None, split: str = "train", *, download: bool = False
) -> DigitSet:
    """MNIST ``split`` (``"train"`` or ``"test"``) from ``<root>/MNIST/raw`` as a :class:`DigitSet`.

    ``root=None``: ``$CORRLIB_DATA``. With only the official test files present, the test set is
    split into disjoint stratified parts (:data:`TEST_ONLY_SPLIT`; see the module docstring and
    ``info["warning"]``). ``download=True`` fetches the files with torchvision first.
    """
    check_choice(split, "split", DIGIT_SPLITS)
    root = resolve_data_root(root)
    if download:
        import torchvision

        for train in (True, False):
            torchvision.datasets.MNIST(root, train=train, download=True)
    folder = require_folder(
        root / "MNIST" / "raw", "MNIST", "pass download=True, or place the four idx files there."
    )
    return _load_idx_dataset(folder, split, "MNIST")


def load_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> DigitSet:
    """Fashion-MNIST ``split`` from ``<root>/FashionMNIST/raw`` or Debian's folder.

    Looks in ``<root>/FashionMNIST/raw`` (torchvision's layout) when ``root`` (or
    ``$CORRLIB_DATA``) is set and holds it, else in :data:`FASHION_MNIST_DEBIAN`
    (``apt-get install dataset-fashion-mnist``). Same idx files and offline fallback as MNIST.
    """
    check_choice(split, "split", DIGIT_SPLITS)
    folders = []
    try:
        folders.append(resolve_data_root(root) / "FashionMNIST" / "raw")
    except DatasetNotFoundError:
        pass
    folders.append(FASHION_MNIST_DEBIAN)
    for folder in folders:
        if folder.is_dir() and (
            _find(folder, _FILES["test"][0]) or _find(folder, _FILES["train"][0])
        ):
            return _load_idx_dataset(folder, split, "Fashion-MNIST")
    raise DatasetNotFoundError(
        f"Fashion-MNIST: no idx files in {' or '.join(str(f) for f in folders)}. How to get it: "
        "apt-get install dataset-fashion-mnist, or torchvision.datasets.FashionMNIST(root, "
        "download=True)."
    )


# --------------------------------------------------------------------------------------------
# Distortions
# --------------------------------------------------------------------------------------------


def _normal_truncated(shape, trunc: float, generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64).clamp(-trunc, trunc)


def _uniform(shape, lo: float, hi: float, generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=generator, dtype=torch.float64)


#: number of random numbers each distortion draws per image
_N_DRAWS = {"R": 1, "RTS": 4, "P": 9, "E": 2 * DISTORTION_PARAMS["E"]["lattice"] ** 2}


def _draw(kind: str, n: int, generator) -> torch.Tensor:
    """The random numbers of ``n`` distortions: ``(n, _N_DRAWS[kind])`` float64 (see
    :func:`_grid_from_draws`)."""
    p = DISTORTION_PARAMS[kind]
    if kind == "R":
        return _uniform((n, 1), -1.0, 1.0, generator) * math.radians(p["max_angle_deg"])
    if kind == "RTS":
        ang = _uniform((n, 1), -1.0, 1.0, generator) * math.radians(p["max_angle_deg"])
        scale = _uniform((n, 1), *p["scale"], generator)
        pos = _uniform((n, 2), -1.0, 1.0, generator)  # position in the free range, scaled later
        return torch.cat((ang, scale, pos), dim=1)
    if kind == "P":
        draws = torch.zeros(n, 9, dtype=torch.float64)
        todo = torch.ones(n, dtype=torch.bool)
        while todo.any():  # a map that would fold inside the frame (~10 % of draws) is drawn again
            m = int(todo.sum())
            scale = _uniform((m, 1), *p["scale"], generator)
            noise = _normal_truncated((m, 8), p["truncate_std"], generator) * p["corner_std_px"]
            draws[todo] = torch.cat((scale, noise), dim=1)
            todo[todo.clone()] = _folds(_projective_maps(draws[todo]))
        return draws
    return (
        _normal_truncated((n, _N_DRAWS["E"]), DISTORTION_PARAMS["E"]["truncate_std"], generator)
        * DISTORTION_PARAMS["E"]["std_px"]
    )


_CORNERS = torch.tensor(
    [[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64
) * (_DIGIT / 2)


def _corners(draws: torch.Tensor) -> torch.Tensor:
    """P: where the digit's corners (centred pixels) land: scaled, plus the noise; ``(n, 4, 2)``."""
    return draws[:, :1, None] * _CORNERS + draws[:, 1:].reshape(-1, 4, 2)


def _projective_maps(draws: torch.Tensor) -> torch.Tensor:
    """P: the backward homographies ``(n, 3, 3)`` (output -> digit, centred pixels) of the draws."""
    return homography_from_points(_corners(draws), _CORNERS.expand(len(draws), -1, -1))


def _folds(h: torch.Tensor) -> torch.Tensor:
    """``(n,)`` bool: the homography's singular line (``w = 0``) crosses the 28x28 frame.

    ``w`` is linear in ``(x, y)``, so it keeps its sign over the frame iff it has one sign at the
    frame's four corners.
    """
    corners = torch.cat((_CORNERS, torch.ones(4, 1, dtype=torch.float64)), dim=1)  # (4, 3)
    return ~(torch.einsum("nj,cj->nc", h[:, 2], corners) > 0).all(dim=1)


def _grid_from_draws(kind: str, draws: torch.Tensor, canvas: int) -> torch.Tensor:
    """Sampling grids ``(n, canvas, canvas, 2)`` float32 into a 28x28 digit from :func:`_draw`
    output.

    Geometry in *centred pixels* (origin at the image centre): a digit pixel ``x`` is at
    ``x - 13.5``; normalised = centred / 14 for the digit and centred / (canvas / 2) for the output.
    """
    n = draws.shape[0]
    half_in, half_out = _DIGIT / 2, canvas / 2
    to_in = torch.diag(torch.tensor([1 / half_in, 1 / half_in, 1.0], dtype=torch.float64))
    from_out = torch.diag(torch.tensor([half_out, half_out, 1.0], dtype=torch.float64))
    if kind == "E":
        k = DISTORTION_PARAMS["E"]["lattice"]
        ctrl = tps_lattice(k, dtype=torch.float64)  # output (= undistorted) lattice, normalised
        # output control point j reads the digit at ctrl_j + noise_j (pixels -> normalised); the
        # TPS grid is linear in those points:
        # tps_basis(ctrl) @ target == geometry.tps_grid(ctrl, target)
        target = ctrl + draws.reshape(n, k * k, 2) / half_in
        grid = torch.einsum("pk,nkc->npc", tps_basis(ctrl, (canvas, canvas)), target)
        return grid.reshape(n, canvas, canvas, 2).float()
    if kind in ("R", "RTS"):
        ang = draws[:, 0]
        scale = torch.ones(n, dtype=torch.float64) if kind == "R" else draws[:, 1]
        # backward map: p_in = R(-a) (p_out - t) / s
        cos, sin = torch.cos(ang), torch.sin(ang)
        h = torch.zeros(n, 3, 3, dtype=torch.float64)
        h[:, 0, 0], h[:, 0, 1] = cos / scale, sin / scale
        h[:, 1, 0], h[:, 1, 1] = -sin / scale, cos / scale
        h[:, 2, 2] = 1.0
        if kind == "RTS":
            free = (canvas - _DIGIT * scale).clamp_min(0) / 2  # the scaled frame stays inside
            t = draws[:, 2:4] * free[:, None]
            h[:, :2, 2] = -(h[:, :2, :2] @ t[..., None])[..., 0]
    else:
        # "P": the scaled corners move by Gaussian noise; backward map output corners -> input
        # corners
        h = _projective_maps(draws)
    h = (to_in @ h @ from_out).float()
    if kind == "P":
        return homography_grid(h, (canvas, canvas))
    return affine_grid(h[:, :2], (canvas, canvas))  # R, RTS are affine (last row 0 0 1)


def _check_kind(kind: str, canvas: int | None) -> int:
    check_choice(kind, "kind", DISTORTIONS)
    canvas = DISTORTION_CANVAS[kind] if canvas is None else canvas
    if isinstance(canvas, bool) or not isinstance(canvas, int) or canvas < 1:
        raise ValueError(f"Argument canvas must be a positive int, got {canvas!r}.")
    return canvas


def distortion_grid(
    kind: str, n: int, generator: torch.Generator | None = None, *, canvas: int | None = None
) -> torch.Tensor:
    """``n`` random sampling grids ``(n, S, S, 2)`` float32 of distortion ``kind`` into a 28x28
    digit.

    ``S = canvas`` (default :data:`DISTORTION_CANVAS`); normalised coordinates,
    ``align_corners=False``, output -> input (backward warping). Deterministic given ``generator``.

    Example:
        >>> distortion_grid("RTS", 2, torch.Generator().manual_seed(0)).shape
        torch.Size([2, 42, 42, 2])
    """
    canvas = _check_kind(kind, canvas)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"Argument n must be an int >= 0, got {n!r}.")
    if n == 0:
        return torch.zeros(0, canvas, canvas, 2)
    return _grid_from_draws(kind, _draw(kind, n, generator), canvas)


def _warp(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    grid = grid.to(device=images.device, dtype=images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def distort_digits(
    images: torch.Tensor,
    kind: str,
    generator: torch.Generator | None = None,
    *,
    canvas: int | None = None,
) -> torch.Tensor:
    """Distort a batch of digits ``images (B, 1, 28, 28)`` (float, background 0) by ``kind``.

    ``kind`` in :data:`DISTORTIONS` (``R``, ``RTS``, ``P``, ``E``; parameters in
    :data:`DISTORTION_PARAMS`). Returns ``(B, 1, S, S)`` with ``S = canvas`` (default 42 for
    ``RTS``, 28 otherwise), sampled bilinearly with zero padding. Every random number comes from
    ``generator`` (CPU), so the same generator state gives the same distortions. Jaderberg et
    al., NeurIPS 2015, Sec. 4.1.

    Example:
        >>> x = torch.zeros(3, 1, 28, 28); x[:, :, 10:18, 12:16] = 1.0
        >>> distort_digits(x, "RTS", torch.Generator().manual_seed(0)).shape
        torch.Size([3, 1, 42, 42])
    """
    check_shape(images, ("B", "C", _DIGIT, _DIGIT), "images")
    if not images.is_floating_point():
        raise ValueError(
            f"Argument images must be a float tensor in [0, 1], got dtype {images.dtype}."
        )
    grid = distortion_grid(kind, images.shape[0], generator, canvas=canvas)
    return _warp(images, grid)


def _item_generator(seed: int, kind: str, i: int) -> torch.Generator:
    digest = hashlib.blake2b(repr(("digits", seed, kind, i)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


class DistortedDigits(Dataset):
    """Digits distorted by one ``kind``; item ``i`` depends only on ``(images[i], kind, seed, i)``.

    Args:
        images: ``(N, 1, 28, 28)`` float in ``[0, 1]``; labels: ``(N,)`` int.
        kind: one of :data:`DISTORTIONS`; seed: the distortions' seed; canvas: output side.

    ``dataset[i]`` is ``(image (1, S, S), label)``: a fixed distortion (a held-out test set).
    :meth:`tensors` gives all items at once (computed once, cached). :meth:`batch_fn` is for
    training: fresh random indices AND fresh distortions at every step, drawn from the
    :class:`corrlib.train.Trainer`'s generator, so training resumes exactly.

    Example:
        >>> ds = DistortedDigits(torch.rand(5, 1, 28, 28), torch.arange(5), "R", seed=1)
        >>> torch.equal(ds[3][0], DistortedDigits(ds.images, ds.labels, "R", seed=1)[3][0])
        True
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        kind: str,
        seed: int = 0,
        *,
        canvas: int | None = None,
    ):
        n = check_shape(images, ("N", 1, _DIGIT, _DIGIT), "images")["N"]
        check_shape(check_tensor(labels, "labels"), (n,), "labels")
        if not images.is_floating_point():
            raise ValueError(
                f"Argument images must be a float tensor in [0, 1], got dtype {images.dtype}."
            )
        self.canvas = _check_kind(kind, canvas)
        self.images, self.labels, self.kind, self.seed = images, labels.long(), kind, seed
        self._cache: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def _distorted(self, idx: list[int]) -> torch.Tensor:
        if not idx:
            return torch.zeros(0, 1, self.canvas, self.canvas)
        draws = torch.cat(
            [_draw(self.kind, 1, _item_generator(self.seed, self.kind, i)) for i in idx]
        )
        grid = _grid_from_draws(self.kind, draws, self.canvas)
        return _warp(self.images[idx], grid)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._cache is not None:
            return self._cache[i], int(self.labels[i])
        return self._distorted([int(i)])[0], int(self.labels[i])

    def tensors(self, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """Every item: ``(images (N, 1, S, S), labels (N,))``; computed in chunks, then cached."""
        if self._cache is None:
            n = len(self)
            parts = [self._distorted(list(range(s, min(s + chunk, n)))) for s in range(0, n, chunk)]
            self._cache = torch.cat(parts) if parts else torch.zeros(0, 1, self.canvas, self.canvas)
        return self._cache, self.labels

    def batch_fn(self, batch_size: int):
        """A resumable ``batch_fn(step, generator) -> (images (B, 1, S, S), labels (B,))``.

        Indices are drawn uniformly with replacement and the distortions afresh, all from
        ``generator`` (the Trainer seeds it from ``(seed, step)``).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Argument batch_size must be an int >= 1, got {batch_size!r}.")

        def fn(step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.randint(len(self), (batch_size,), generator=generator)
            return distort_digits(
                self.images[idx], self.kind, generator, canvas=self.canvas
            ), self.labels[idx]

        return fn
