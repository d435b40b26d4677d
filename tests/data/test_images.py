"""read_image / read_mask edge cases: 16-bit images, decompression bombs, odd file names."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corrlib.data import read_image, read_mask
from corrlib.data.images import first_point_outside, point_outside_text, shown_path

# 0 .. 65535 in a few steps: scaling gives round(x / 257), clipping would give 255 for x >= 255
GREY16 = np.array([[0, 128, 129, 257], [5000, 32767, 60000, 65535]], dtype=np.uint16)
GREY8 = np.array([[0, 0, 1, 1], [19, 127, 233, 255]], dtype=np.uint8)


def _rgb_of(grey: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.repeat(grey[None], 3, axis=0))


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(GREY16).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    img = read_image(tmp_path / "g.png")
    assert img.dtype == torch.uint8 and img.shape == (3, 2, 4)
    assert torch.equal(img, _rgb_of(GREY8))


def test_16bit_big_endian_and_32bit_grey_are_scaled(tmp_path):
    big = Image.frombytes("I;16B", (4, 2), GREY16.astype(">u2").tobytes())
    big.save(tmp_path / "b.tif")
    Image.fromarray(GREY16.astype(np.int32)).save(tmp_path / "i.tif")
    for name, mode in (("b.tif", "I;16B"), ("i.tif", "I")):
        assert Image.open(tmp_path / name).mode == mode
        assert torch.equal(read_image(tmp_path / name), _rgb_of(GREY8)), name


def test_32bit_grey_outside_the_16bit_range_is_refused(tmp_path):
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "i.tif")
    with pytest.raises(
        ValueError, match=r"i\.tif is a 32-bit integer image with values 0\.\.70000"
    ):
        read_image(tmp_path / "i.tif")


def _write_png16_rgb(path: Path, arr: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )  # fmt: skip


def test_16bit_rgb_png_stays_right(tmp_path):
    arr = np.stack([GREY16, GREY16[:, ::-1], np.full_like(GREY16, 40000)], axis=-1)
    _write_png16_rgb(tmp_path / "c.png", arr)
    img = read_image(tmp_path / "c.png").permute(1, 2, 0).numpy().astype(int)
    assert np.abs(img - np.rint(arr / 257)).max() <= 1  # Pillow keeps the high byte


def test_8bit_modes_unchanged(tmp_path):
    Image.fromarray(GREY8).save(tmp_path / "l.png")
    assert torch.equal(read_image(tmp_path / "l.png"), _rgb_of(GREY8))
    rgba = np.dstack([np.full((2, 4, 3), 7, np.uint8), np.zeros((2, 4), np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert (read_image(tmp_path / "a.png") == 7).all()


@pytest.mark.parametrize(("limit", "kind"), [(9_000, "error"), (15_000, "warning")])
def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch, limit, kind):
    """Pillow raises above 2x its limit and only warns between 1x and 2x: both are refused."""
    Image.fromarray(np.zeros((100, 200), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ValueError) as err:
        read_image(tmp_path / "big.png")
    msg = str(err.value)
    assert msg.startswith(f"Image file {tmp_path / 'big.png'} has 20,000 pixels, more than")
    assert f"PIL.Image.MAX_IMAGE_PIXELS = {limit:,}" in msg
    assert "If you trust the file, raise the limit" in msg
    assert type(err.value.__cause__).__name__ == f"DecompressionBomb{kind.title()}"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    assert read_image(tmp_path / "big.png").shape == (3, 100, 200)  # within the limit


def test_bomb_message_example(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((100, 200), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError) as err:
        read_mask(tmp_path / "big.png")
    assert str(err.value) == (
        f"Image file {tmp_path / 'big.png'} has 20,000 pixels, more than Pillow's "
        "decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS = 1,000); it was not decoded, "
        "since a small file that expands this much can exhaust the memory. If you trust the "
        "file, raise the limit before reading it: `import PIL.Image; PIL.Image.MAX_IMAGE_PIXELS "
        "= <pixels>` (None switches the check off)."
    )


def test_non_utf8_file_name_gives_a_printable_error(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    path = tmp_path / name
    path.write_bytes(b"<html>not an image</html>")
    with pytest.raises(ValueError) as err:
        read_image(path)
    msg = str(err.value)
    msg.encode("utf-8")  # would raise UnicodeEncodeError on a surrogate
    assert "caf\\xe9.png is corrupt or not an image" in msg
    with pytest.raises(FileNotFoundError) as missing:
        read_image(tmp_path / os.fsdecode(b"\xff.png"))
    assert "\\xff.png does not exist" in str(missing.value).encode("utf-8").decode()
    assert shown_path(path).endswith("caf\\xe9.png")


def test_first_point_outside_and_text():
    kps = torch.tensor([[0.0, 0.0], [-1.0, 10.0], [15.0, 5.0], [3.0, float("nan")]])
    assert first_point_outside(kps[:2], (10, 15)) is None  # -1 and H-1+1 are within 1 px
    assert first_point_outside(kps, (10, 15)) == 3
    assert first_point_outside(kps[:3], (10, 14)) == 2
    assert first_point_outside(kps[:3], (10, 14), tolerance=2.0) is None
    assert point_outside_text(kps, 2, (10, 14), "a.png") == (
        "keypoint 2 (0-based) at (x=15, y=5) lies outside the 14x10 (W x H) image a.png "
        "(0-based pixel centres 0..13 x 0..9, 1 px tolerance)"
    )
