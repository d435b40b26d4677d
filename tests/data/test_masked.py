"""Masked image sources for SFNet (corrlib.data.masked): fake VOC trees, Fashion composites, pairs.

VOC downloads are served by a local HTTP server on 127.0.0.1: never the network. Tests that need
Fashion-MNIST skip when it is not installed.
"""

from __future__ import annotations

import hashlib
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corrlib.data import (
    FASHION_CLASSES,
    HELDOUT_BACKGROUNDS,
    TRAIN_BACKGROUNDS,
    VOC_FILENAME,
    DatasetNotFoundError,
    DigitSet,
    FashionComposites,
    VOCMasks,
    download_url,
    fashion_mask,
    load_backgrounds,
    masked_pairs,
    read_voc_segmentation,
)
from corrlib.data import digits as D
from corrlib.data import masked as M
from corrlib.geometry import warp_with_flow
from tests.data.test_common import _Server

pytestmark = pytest.mark.usefixtures("one_thread")

SKIP_FASHION = "Fashion-MNIST not installed: apt-get install dataset-fashion-mnist"


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def fashion():
    """Skip unless Fashion-MNIST loads (from $CORRLIB_DATA/FashionMNIST/raw or Debian's folder)."""
    try:
        FashionComposites(split="test", n_images=1)
        FashionComposites(split="train", n_images=1)
    except DatasetNotFoundError:
        pytest.skip(SKIP_FASHION)


# ------------------------------------------------------------------------------------------------
# fake VOC tree in the official layout
# ------------------------------------------------------------------------------------------------

IDS = ("2007_000032", "2007_000039")


def _labels(k: int) -> np.ndarray:
    """48x64 class map: a box of class 15 ringed by void (255); the second also a box of 3."""
    lab = np.zeros((48, 64), np.uint8)
    lab[10:38, 14:46] = 255
    lab[12:36, 16:44] = 15
    if k == 1:
        lab[2:8, 50:60] = 3
    return lab


def _save_palette(path: Path, lab: np.ndarray) -> None:
    img = Image.fromarray(lab, mode="P")
    rng = np.random.default_rng(0)
    img.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tolist())
    img.save(path)


def _fake_voc(base: Path) -> Path:
    """Write ``base/VOCdevkit/VOC2012`` with two images; return the VOC2012 folder."""
    voc = base / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for k, name in enumerate(IDS):
        rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(voc / "JPEGImages" / f"{name}.jpg")
        _save_palette(voc / "SegmentationClass" / f"{name}.png", _labels(k))
    sets = voc / "ImageSets" / "Segmentation"
    (sets / "train.txt").write_text(f"{IDS[0]}\n")
    (sets / "val.txt").write_text(f"{IDS[1]}\n")
    (sets / "trainval.txt").write_text("\n".join(IDS) + "\n")
    return voc


def _voc_tar(tmp_path: Path) -> bytes:
    src = tmp_path / "tar-src"
    _fake_voc(src)
    path = tmp_path / "fake.tar"
    with tarfile.open(path, "w") as tf:
        tf.add(src / "VOCdevkit", arcname="VOCdevkit")
    return path.read_bytes()


# ------------------------------------------------------------------------------------------------
# VOCMasks
# ------------------------------------------------------------------------------------------------


def test_voc_items_and_void_both_ways(tmp_path):
    _fake_voc(tmp_path)
    ds = VOCMasks(tmp_path, "trainval")
    assert len(ds) == 2 and ds.ids == list(IDS)
    item = ds[1]
    assert set(item) == {"image", "mask", "name", "classes"}
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 48, 64)
    assert item["mask"].dtype == torch.bool and item["mask"].shape == (48, 64)
    assert item["name"] == IDS[1] and item["classes"] == [3, 15]
    lab = torch.from_numpy(_labels(1))
    assert torch.equal(item["mask"], lab > 0)  # void (255) counts as foreground by default
    bg = VOCMasks(tmp_path, "trainval", void_as="background")[1]["mask"]
    assert torch.equal(bg, (lab > 0) & (lab != 255))
    assert bg.sum() < item["mask"].sum()
    assert ds[-2]["name"] == IDS[0] and ds[0]["classes"] == [15]
    with pytest.raises(IndexError, match="out of range"):
        ds[2]


def test_voc_splits_transform_repr(tmp_path):
    _fake_voc(tmp_path)
    assert VOCMasks(tmp_path, "train").ids == [IDS[0]]
    assert VOCMasks(tmp_path, "val").ids == [IDS[1]]
    ds = VOCMasks(tmp_path, "val", transform=lambda it: it["mask"].sum().item())
    assert ds[0] == int((_labels(1) > 0).sum())
    assert "split='val'" in repr(ds) and "len=1" in repr(ds) and "void_as='foreground'" in repr(ds)
    with pytest.raises(ValueError, match=r"Unknown value 'test' for argument split"):
        VOCMasks(tmp_path, "test")
    with pytest.raises(ValueError, match=r"argument void_as\. Valid values are"):
        VOCMasks(tmp_path, void_as="ignore")


@pytest.mark.parametrize("sub", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_root_variants(tmp_path, sub):
    _fake_voc(tmp_path)
    assert len(VOCMasks(tmp_path / sub, "trainval")) == 2


def test_voc_missing_folder_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        VOCMasks(tmp_path / "data")
    msg = str(err.value)
    assert str(tmp_path / "data" / "VOCdevkit" / "VOC2012") in msg  # where it looked
    assert "SegmentationClass/<id>.png" in msg and "ImageSets/Segmentation" in msg  # layout
    assert "download=True" in msg and M.VOC_URL in msg and f"tar -xf {VOC_FILENAME}" in msg


def test_voc_missing_split_file(tmp_path):
    voc = _fake_voc(tmp_path)
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"val\.txt"):
        VOCMasks(tmp_path, "val")


def test_read_voc_segmentation_refuses_colour_and_bad_values(tmp_path):
    _save_palette(tmp_path / "ok.png", _labels(0))
    assert torch.equal(read_voc_segmentation(tmp_path / "ok.png"), torch.from_numpy(_labels(0)))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="palette"):
        read_voc_segmentation(tmp_path / "rgb.png")
    _save_palette(tmp_path / "bad.png", np.full((4, 4), 21, np.uint8))
    with pytest.raises(ValueError, match=r"\[21\]"):
        read_voc_segmentation(tmp_path / "bad.png")


def test_voc_download_offline_server(server, tmp_path, monkeypatch):
    data = _voc_tar(tmp_path)
    server.files[f"/{VOC_FILENAME}"] = data
    monkeypatch.setattr(M, "VOC_URL", server.url(f"/{VOC_FILENAME}"))
    monkeypatch.setattr(M, "VOC_MD5", hashlib.md5(data).hexdigest())
    root = tmp_path / "data"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a verified MD5: no "no published checksum" warning
        ds = VOCMasks(root, "trainval", download=True)
    assert len(ds) == 2 and ds[0]["mask"].any()
    assert (root / VOC_FILENAME).is_file()  # the archive is kept next to what it extracted
    VOCMasks(root, "train", download=True)
    assert len(server.requests) == 1  # already there: no second download


def test_voc_download_md5_mismatch(server, tmp_path, monkeypatch):
    data = _voc_tar(tmp_path)
    server.files[f"/{VOC_FILENAME}"] = data
    monkeypatch.setattr(M, "VOC_URL", server.url(f"/{VOC_FILENAME}"))
    monkeypatch.setattr(M, "VOC_MD5", "0" * 32)
    root = tmp_path / "data"
    with pytest.raises(ValueError, match="Checksum mismatch") as err:
        VOCMasks(root, download=True)
    assert "0" * 32 in str(err.value) and hashlib.md5(data).hexdigest() in str(err.value)
    assert not (root / VOC_FILENAME).exists() and not (root / f"{VOC_FILENAME}.part").exists()


def test_voc_download_unreachable(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:9/{VOC_FILENAME}"
    monkeypatch.setattr(M, "VOC_URL", url)
    with pytest.raises(DatasetNotFoundError) as err:
        VOCMasks(tmp_path, download=True)
    msg = str(err.value)
    assert url in msg and "offline" in msg and "by hand" in msg


def test_download_url_md5(server, tmp_path):
    payload = b"voc" * 1000
    md5, sha = hashlib.md5(payload).hexdigest(), hashlib.sha256(payload).hexdigest()
    server.files["/f.tar"] = payload
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dest = download_url(server.url("/f.tar"), tmp_path / "f.tar", md5=md5, progress=False)
        download_url(server.url("/f.tar"), dest, sha, md5=md5.upper(), progress=False)
    assert dest.read_bytes() == payload and len(server.requests) == 1  # kept: both match
    dest.write_bytes(b"corrupt")  # an existing file that fails the MD5 is fetched again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        download_url(server.url("/f.tar"), dest, md5=md5, progress=False)
    assert dest.read_bytes() == payload and len(server.requests) == 2
    with pytest.raises(ValueError, match="expected MD5"):
        download_url(server.url("/f.tar"), tmp_path / "g.tar", sha, md5="f" * 32, progress=False)
    assert not (tmp_path / "g.tar").exists()


# ------------------------------------------------------------------------------------------------
# FashionComposites
# ------------------------------------------------------------------------------------------------


def test_fashion_mask_threshold_fill_largest_component():
    img = torch.zeros(28, 28, dtype=torch.uint8)
    img[5:20, 5:20] = 100
    img[9:15, 9:15] = 0  # a hole: filled
    img[24, 24] = 200  # a speck: dropped (not the largest component)
    img[5:20, 20] = 7  # below the threshold of 8
    mask = fashion_mask(img)
    assert mask.dtype == torch.bool and mask.sum() == 15 * 15
    assert mask[12, 12] and not mask[24, 24] and not mask[10, 20]
    with pytest.raises(TypeError, match="uint8"):
        fashion_mask(img.float())


def test_fashion_argument_errors():
    with pytest.raises(ValueError, match=r"Unknown value 'val' for argument split"):
        FashionComposites(split="val")
    with pytest.raises(ValueError, match="size"):
        FashionComposites(size=(8, 64))
    for scale in [(0.0, 0.5), (0.6, 0.5), (0.5, 1.2)]:
        with pytest.raises(ValueError, match="scale"):
            FashionComposites(scale=scale)
    with pytest.raises(ValueError, match="n_images"):
        FashionComposites(n_images=0)


def test_fashion_missing_message(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "FASHION_MNIST_DEBIAN", tmp_path / "not-installed")
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionComposites(tmp_path, "train")


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_fashion_test_only_fallback_warns(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((20, 28, 28), np.uint8)
    images[:, 6:22, 8:20] = 180
    _write_idx(raw / "t10k-images-idx3-ubyte", images)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(20) % 10)
    with pytest.warns(UserWarning, match="OFFLINE FALLBACK"):
        ds = FashionComposites(tmp_path, "train", n_images=2, size=(32, 32))
    assert not ds.info["official"] and ds[0]["mask"].any()


def test_fashion_splits_use_their_own_items_and_backgrounds(monkeypatch):
    """Train items come from Fashion-MNIST train, test items from test (faked: label 1 vs 7)."""
    asked = []

    def fake(root, split):
        asked.append(split)
        images = torch.zeros(5, 1, 28, 28)
        images[:, :, 4:24, 6:22] = 0.8
        label = 1 if split == "train" else 7
        return DigitSet(images, torch.full((5,), label), {"split": split, "official": True})

    M._fashion_items.cache_clear()
    monkeypatch.setattr(M, "load_fashion_mnist", fake)
    try:
        train = FashionComposites(split="train", n_images=8, size=(32, 32))
        test = FashionComposites(split="test", n_images=8, size=(32, 32))
        assert asked == ["train", "test"]
        assert {train[i]["label"] for i in range(8)} == {1}
        assert {test[i]["label"] for i in range(8)} == {7}
        assert {train._render(i)["background_name"] for i in range(8)} <= set(TRAIN_BACKGROUNDS)
        assert {test._render(i)["background_name"] for i in range(8)} <= set(HELDOUT_BACKGROUNDS)
    finally:
        M._fashion_items.cache_clear()


def test_backgrounds_are_disjoint():
    assert not set(TRAIN_BACKGROUNDS) & set(HELDOUT_BACKGROUNDS)
    train, test = load_backgrounds("train"), load_backgrounds("test")
    assert len(train) == len(TRAIN_BACKGROUNDS) and len(test) == len(HELDOUT_BACKGROUNDS)
    for img in train + test:
        assert img.dtype == torch.uint8 and img.dim() == 3 and img.shape[0] == 3
    assert not any(t.shape == s.shape and torch.equal(t, s) for t in test for s in train)


@pytest.mark.usefixtures("fashion")
def test_fashion_items_shapes_and_determinism():
    ds = FashionComposites(split="train", n_images=6, size=(48, 64))
    assert len(ds) == 6 and "split='train'" in repr(ds)
    item = ds[2]
    assert set(item) == {"image", "mask", "label", "name", "classes", "background_name"}
    assert item["background_name"] in TRAIN_BACKGROUNDS
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 48, 64)
    assert item["mask"].dtype == torch.bool and item["mask"].shape == (48, 64)
    assert item["name"] == "fashion-train-2" and item["classes"] == [item["label"]]
    assert 0 <= item["label"] < len(FASHION_CLASSES)
    again = FashionComposites(split="train", n_images=6, size=(48, 64))[2]
    assert torch.equal(again["image"], item["image"]) and torch.equal(again["mask"], item["mask"])
    other = FashionComposites(split="train", n_images=6, size=(48, 64), seed=1)[2]
    assert not torch.equal(other["image"], item["image"])
    assert ds[-4]["name"] == "fashion-train-2"
    with pytest.raises(IndexError):
        ds[6]
    info = FashionComposites(split="test", n_images=1).info
    assert info["split"] == "test" and info["official"]


@pytest.mark.usefixtures("fashion")
@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mask_is_exact(split):
    ds = FashionComposites(split=split, n_images=8)
    for i in range(len(ds)):
        r = ds._render(i)
        img, mask, bg = r["image"], r["mask"], r["background"]
        assert torch.equal(img[:, ~mask], bg[:, ~mask])  # outside the mask: the background
        changed = (img != bg).any(0)
        assert changed[mask].float().mean() > 0.5  # inside: (almost all) object pixels
        x, y, w, h = r["box"]
        assert mask.sum() == mask[y : y + h, x : x + w].sum()  # fully inside the canvas


@pytest.mark.usefixtures("fashion")
def test_fashion_mask_area_fraction():
    ds = FashionComposites(split="train", n_images=40)
    frac = torch.tensor([ds[i]["mask"].float().mean().item() for i in range(len(ds))])
    assert 0.08 < frac.mean() < 0.4
    assert frac.min() > 0.01 and frac.max() < 0.7


# ------------------------------------------------------------------------------------------------
# masked_pairs
# ------------------------------------------------------------------------------------------------


def _check_masked_pair(sample: dict, size: tuple[int, int]) -> None:
    src, trg = sample["src_mask"], sample["trg_mask"]
    assert src.shape == size and trg.shape == size
    assert src.dtype == torch.bool and trg.dtype == torch.bool and src.any()
    # sample src_mask through the exact trg -> src flow: it must agree with trg_mask
    warped, valid = warp_with_flow(src[None, None].float(), sample["trg_flow"][None])
    valid = valid[0, 0] & sample["trg_flow_valid"]
    agree = ((warped[0, 0] > 0.5) == trg)[valid].float().mean()
    assert valid.float().mean() > 0.3 and agree > 0.95


@pytest.mark.parametrize("kind", ["affine", "tps"])
def test_masked_pairs_voc(tmp_path, kind):
    _fake_voc(tmp_path)
    pairs = masked_pairs(VOCMasks(tmp_path, "trainval"), 3, (40, 40), kind=kind, n_kps=5)
    assert len(pairs) == 3 and len(pairs.images) == 2
    for i in range(len(pairs)):
        _check_masked_pair(pairs[i], (40, 40))


@pytest.mark.usefixtures("fashion")
@pytest.mark.parametrize("kind", ["affine", "tps"])
def test_masked_pairs_fashion(kind):
    source = FashionComposites(split="test", n_images=5, size=(64, 64))
    pairs = masked_pairs(source, 3, (64, 64), kind=kind, seed=3, max_images=4)
    assert len(pairs.images) == 4 and pairs[0]["category"] == f"synthetic-{kind}"
    for i in range(len(pairs)):
        _check_masked_pair(pairs[i], (64, 64))


def test_masked_pairs_errors(tmp_path):
    _fake_voc(tmp_path)
    with pytest.raises(ValueError, match="'image'"):
        masked_pairs(VOCMasks(tmp_path, transform=lambda it: it["image"]), 2, (32, 32))
    with pytest.raises(ValueError, match="empty"):
        masked_pairs([], 2, (32, 32))
    with pytest.raises(ValueError, match="max_images"):
        masked_pairs(VOCMasks(tmp_path), 2, (32, 32), max_images=0)
