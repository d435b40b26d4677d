"""Middlebury .flo reading and writing (corrlib.flo)."""

from __future__ import annotations

import numpy as np
import pytest

from corrlib.flo import read_flo, write_flo


def test_round_trip(tmp_path):
    flow = np.random.default_rng(0).normal(size=(5, 7, 2)).astype(np.float32)
    write_flo(tmp_path / "a.flo", flow)
    out = read_flo(tmp_path / "a.flo")
    assert out.shape == (5, 7, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out, flow)
    assert (tmp_path / "a.flo").stat().st_size == 12 + 5 * 7 * 2 * 4


def test_layout_is_row_major_interleaved(tmp_path):
    flow = np.zeros((2, 3, 2), np.float32)
    flow[1, 2] = (4.0, -5.0)  # row 1, column 2
    write_flo(tmp_path / "a.flo", flow)
    raw = np.fromfile(tmp_path / "a.flo", "<f4")[3:]
    assert raw[(1 * 3 + 2) * 2] == 4.0 and raw[(1 * 3 + 2) * 2 + 1] == -5.0
    header = np.fromfile(tmp_path / "a.flo", "<i4")[1:3]
    assert header.tolist() == [3, 2]  # width, then height


def test_unknown_values_preserved(tmp_path):
    flow = np.ones((3, 4, 2), np.float32)
    flow[0, 0] = 1e10
    write_flo(tmp_path / "a.flo", flow)
    out = read_flo(tmp_path / "a.flo")
    assert out[0, 0].tolist() == [1e10, 1e10] and out[1, 1].tolist() == [1.0, 1.0]


def test_wrong_magic(tmp_path):
    (tmp_path / "bad.flo").write_bytes(np.array([1.0, 0, 0], "<f4").tobytes())
    with pytest.raises(ValueError, match=r"bad\.flo is not a Middlebury \.flo file"):
        read_flo(tmp_path / "bad.flo")


def test_truncated_body(tmp_path):
    write_flo(tmp_path / "a.flo", np.zeros((4, 4, 2), np.float32))
    data = (tmp_path / "a.flo").read_bytes()
    (tmp_path / "t.flo").write_bytes(data[:-8])
    with pytest.raises(ValueError, match=r"t\.flo is truncated"):
        read_flo(tmp_path / "t.flo")


def test_short_header_and_missing(tmp_path):
    (tmp_path / "s.flo").write_bytes(b"PIEH")
    with pytest.raises(ValueError, match="12-byte header"):
        read_flo(tmp_path / "s.flo")
    with pytest.raises(FileNotFoundError, match=r"nope\.flo"):
        read_flo(tmp_path / "nope.flo")


def test_write_rejects_bad_shape(tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        write_flo(tmp_path / "a.flo", np.zeros((4, 4, 3), np.float32))


def test_data_package_re_exports_the_flo_functions():
    import corrlib.data
    import corrlib.flo

    assert (
        corrlib.data.read_flo is corrlib.flo.read_flo
        and corrlib.data.write_flo is corrlib.flo.write_flo
    )
    assert corrlib.flo.FLO_MAGIC == 202021.25 and corrlib.flo.UNKNOWN_FLOW_THRESHOLD == 1e9
