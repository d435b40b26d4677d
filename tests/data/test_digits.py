"""MNIST-style digits and the STN distortions (corrlib.data.digits), on fake idx files and real
data."""

from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import pytest
import torch

from corrlib.data import digits as D
from corrlib.data._common import DatasetNotFoundError
from corrlib.geometry import homography_from_points, homography_grid, tps_grid

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------
# fake data in the real layout
# ------------------------------------------------------------------------------------------------


def _write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fake_split(folder, prefix: str, n: int, seed: int, gz: bool = False) -> None:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    _write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
    _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)


@pytest.fixture
def test_only_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _fake_split(raw, "t10k", 100, seed=0)
    (raw / "train-labels-idx1-ubyte").write_bytes(
        b""
    )  # labels alone do not count as a training set
    return tmp_path


def test_read_idx_known_answer(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a", arr)
    _write_idx(tmp_path / "b", arr, gz=True)
    for name in ("a", "b.gz"):
        out = D.read_idx(tmp_path / name)
        assert out.dtype == torch.uint8 and torch.equal(out, torch.from_numpy(arr))


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    _write_idx(tmp_path / "a", np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "cut").write_bytes((tmp_path / "a").read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        D.read_idx(tmp_path / "cut")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match="not an idx file"):
        D.read_idx(tmp_path / "png")


def test_official_split_when_training_files_exist(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _fake_split(raw, "train", 30, seed=1, gz=True)
    _fake_split(raw, "t10k", 20, seed=2)
    train, test = D.load_mnist(tmp_path, "train"), D.load_mnist(tmp_path, "test")
    assert (len(train), len(test)) == (30, 20)
    assert train.info["official"] and "warning" not in train.info
    assert train.images.shape == (30, 1, 28, 28) and train.images.dtype == torch.float32
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert train.labels.dtype == torch.int64 and train.labels[:12].tolist() == [*range(10), 0, 1]


def test_test_only_fallback_is_disjoint_stratified_and_loud(test_only_root):
    train, test = D.load_mnist(test_only_root, "train"), D.load_mnist(test_only_root, "test")
    assert (len(train), len(test)) == (80, 20)  # TEST_ONLY_SPLIT proportions (8,000 / 2,000)
    assert (
        torch.bincount(train.labels).tolist() == [8] * 10
        and torch.bincount(test.labels).tolist() == [2] * 10
    )
    for ds in (train, test):
        assert ds.info["official"] is False and "OFFLINE FALLBACK" in ds.info["warning"]
    # disjoint: no test image appears in train, and together they are the whole test file
    flat_tr, flat_te = train.images.flatten(1), test.images.flatten(1)
    assert not (flat_tr[:, None] == flat_te[None]).all(-1).any()
    again = D.load_mnist(test_only_root, "train")  # fixed seed: the same split every time
    assert torch.equal(again.images, train.images)


def test_missing_files_error_names_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="MNIST"):
        D.load_mnist(tmp_path, "train")
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="t10k-images-idx3-ubyte"):
        D.load_mnist(tmp_path, "test")
    with pytest.raises(ValueError, match=r"Unknown value 'val' for argument split"):
        D.load_mnist(tmp_path, "val")


def test_fashion_mnist_torchvision_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    _fake_split(raw, "t10k", 50, seed=3, gz=True)
    test = D.load_fashion_mnist(tmp_path, "test")
    assert len(test) == 10 and test.info["dataset"] == "Fashion-MNIST" and not test.info["official"]


def test_digitset_subset_and_items(test_only_root):
    ds = D.load_mnist(test_only_root, "train")
    sub = ds.subset(5)
    assert len(sub) == 5 and sub.info["subset"] == 5 and ds.subset(None) is ds
    img, label = sub[2]
    assert img.shape == (1, 28, 28) and isinstance(label, int)


# ------------------------------------------------------------------------------------------------
# distortions
# ------------------------------------------------------------------------------------------------


def _digit(b: int = 4) -> torch.Tensor:
    x = torch.zeros(b, 1, 28, 28)
    x[:, :, 6:22, 11:17] = 1.0  # a vertical bar, like a "1"
    x[:, :, 6:10, 8:20] = 1.0  # and a top bar
    return x


@pytest.mark.parametrize(("kind", "side"), [("R", 28), ("RTS", 42), ("P", 28), ("E", 28)])
def test_distort_shapes_and_determinism(kind, side):
    x = _digit()
    a = D.distort_digits(x, kind, torch.Generator().manual_seed(0))
    b = D.distort_digits(x, kind, torch.Generator().manual_seed(0))
    c = D.distort_digits(x, kind, torch.Generator().manual_seed(1))
    assert a.shape == (4, 1, side, side) and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a[0], a[1])  # each image gets its own distortion
    assert 0.0 <= a.min() and a.max() <= 1.0 + 1e-6
    assert D.distort_digits(x, kind, torch.Generator().manual_seed(0), canvas=32).shape == (
        4,
        1,
        32,
        32,
    )


def test_rotation_keeps_the_ink_and_the_centre():
    x = _digit(64)
    y = D.distort_digits(x, "R", torch.Generator().manual_seed(0))
    mass_x, mass_y = x.sum((1, 2, 3)), y.sum((1, 2, 3))
    assert torch.allclose(mass_y, mass_x, rtol=0.03)  # a rotation keeps the area (bilinear: ~)
    # the ink's centre of rotation is the image centre (13.5, 13.5): its distance to it is kept
    grid = torch.arange(28.0) - 13.5

    def radius(img):
        m = img[:, 0]
        cx = (m.sum(1) * grid).sum(-1) / m.sum((1, 2))
        cy = (m.sum(2) * grid).sum(-1) / m.sum((1, 2))
        return torch.hypot(cx, cy)

    assert torch.allclose(radius(y), radius(x), atol=0.3)


def test_rotation_angles_follow_the_papers_range():
    draws = D._draw("R", 4000, torch.Generator().manual_seed(0))
    assert draws.abs().max() <= math.pi / 2
    assert draws.abs().max() > 0.99 * math.pi / 2 and abs(draws.mean()) < 0.05


def test_rts_keeps_the_scaled_frame_inside_the_canvas():
    draws = D._draw("RTS", 2000, torch.Generator().manual_seed(0))
    scale = draws[:, 1]
    assert 0.7 <= scale.min() and scale.max() <= 1.2
    grid = D._grid_from_draws("RTS", draws, 42)
    # the centre of the 42x42 output reads the digit point at -t/s (R^-1 only rotates):
    # |t| <= (42 - 28 s) / 2
    centre = (grid[:, 20, 20] + grid[:, 21, 21]) / 2 * 14  # centred digit pixels
    t_len = centre.norm(dim=-1) * scale.float()
    assert (t_len <= ((42 - 28 * scale) / 2 * math.sqrt(2)).float() + 1e-3).all()


def test_grids_match_the_geometry_reference():
    g = torch.Generator().manual_seed(0)
    e = D._draw("E", 3, g)
    k = D.DISTORTION_PARAMS["E"]["lattice"]
    axis = torch.linspace(-1, 1, k, dtype=torch.float64)
    ctrl = (
        torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1)
        .reshape(1, -1, 2)
        .expand(3, -1, -1)
        .contiguous()
    )
    slow = tps_grid(ctrl, ctrl + e.reshape(3, -1, 2) / 14, (28, 28))
    assert torch.allclose(D._grid_from_draws("E", e, 28), slow.float(), atol=1e-5)
    # P: the four output corners (image edges) read the perturbed, scaled corners
    p = D._draw("P", 2, g)
    grid = D._grid_from_draws("P", p, 28)
    corners = (
        torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64) * 14
    )
    dst = (p[:, :1, None] * corners + p[:, 1:].reshape(2, 4, 2)) / 14  # normalised output corners
    h = homography_from_points(dst, corners.expand(2, -1, -1) / 14).float()
    assert torch.allclose(grid, homography_grid(h, (28, 28)), atol=1e-4)


def test_distort_rejects_bad_input():
    with pytest.raises(
        ValueError,
        match=r"Unknown value 'T' for argument kind\. Valid values are \{R, RTS, P, E\}\.",
    ):
        D.distort_digits(_digit(), "T")
    with pytest.raises(ValueError, match=r"Argument images must have shape \(B, C, 28, 28\)"):
        D.distort_digits(torch.zeros(2, 1, 32, 32), "R")
    with pytest.raises(ValueError, match="float tensor"):
        D.distort_digits(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "R")


def test_empty_batch():
    assert D.distort_digits(torch.zeros(0, 1, 28, 28), "RTS").shape == (0, 1, 42, 42)


# ------------------------------------------------------------------------------------------------
# DistortedDigits
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", D.DISTORTIONS)
def test_distorted_items_are_deterministic_and_match_tensors(kind):
    images, labels = _digit(6) * torch.linspace(0.5, 1, 6)[:, None, None, None], torch.arange(6)
    ds = D.DistortedDigits(images, labels, kind, seed=3)
    side = D.DISTORTION_CANVAS[kind]
    x, y = ds[4]
    assert x.shape == (1, side, side) and y == 4
    fresh = D.DistortedDigits(images, labels, kind, seed=3)
    all_x, all_y = fresh.tensors(chunk=4)  # chunked computation = item by item
    assert torch.allclose(all_x[4], x, atol=1e-6) and torch.equal(all_y, labels)
    # item i depends on (seed, i) only: a prefix of the data gives the same items
    assert torch.allclose(
        D.DistortedDigits(images[:5], labels[:5], kind, seed=3)[4][0], x, atol=1e-6
    )
    assert not torch.allclose(D.DistortedDigits(images, labels, kind, seed=4)[4][0], x)


def test_batch_fn_is_reproducible_from_the_generator():
    ds = D.DistortedDigits(_digit(10), torch.arange(10), "RTS")
    fn = ds.batch_fn(8)
    x1, y1 = fn(0, torch.Generator().manual_seed(5))
    x2, y2 = fn(7, torch.Generator().manual_seed(5))  # only the generator matters
    x3, _ = fn(0, torch.Generator().manual_seed(6))
    assert x1.shape == (8, 1, 42, 42) and y1.shape == (8,) and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    with pytest.raises(ValueError, match="batch_size"):
        ds.batch_fn(0)


def test_distorted_digits_checks_inputs():
    with pytest.raises(ValueError, match=r"Argument labels must have shape \(3\)"):
        D.DistortedDigits(_digit(3), torch.arange(4), "R")
    with pytest.raises(ValueError, match="Argument canvas"):
        D.DistortedDigits(_digit(3), torch.arange(3), "R", canvas=0)


# ------------------------------------------------------------------------------------------------
# real data
# ------------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_mnist_split(data_root):
    train, test = D.load_mnist(data_root, "train"), D.load_mnist(data_root, "test")
    if train.info["official"]:
        assert (len(train), len(test)) == (60000, 10000)
        return
    assert (len(train), len(test)) == D.TEST_ONLY_SPLIT
    assert "OFFLINE FALLBACK" in train.info["warning"]
    counts_tr, counts_te = torch.bincount(train.labels), torch.bincount(test.labels)
    assert torch.all((counts_tr - 4 * counts_te).abs() <= 5)  # stratified 80/20 per class

    def keys(images):  # exact byte content of each image
        return {row.numpy().tobytes() for row in (images * 255).round().to(torch.uint8).flatten(1)}

    assert not keys(train.images) & keys(test.images)  # disjoint


def test_projective_draws_never_fold_inside_the_frame():
    draws = D._draw("P", 500, torch.Generator().manual_seed(0))
    assert not D._folds(D._projective_maps(draws)).any()
    assert draws[:, 1:].abs().max() <= 2 * 5.0 and 0.75 <= draws[:, 0].min()
