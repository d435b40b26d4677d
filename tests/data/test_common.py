"""Tests for corrlib.data._common (data root, errors, downloads, archives) and corrlib.data.images.

Downloads are served by a local HTTP server on 127.0.0.1 (with Range support): never the network.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corrlib.data import (
    DATA_ENV,
    DatasetNotFoundError,
    download_and_extract,
    download_url,
    extract_archive,
    keypoint_bbox,
    matlab_to_zero_based,
    read_image,
    read_mask,
    require_file,
    require_folder,
    resolve_data_root,
)

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class _Server:
    """Files served from a dict ``path -> bytes``; records the Range header of every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.honour_range = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and server.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- data root


def test_resolve_data_root_argument_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, "/somewhere/else")
    assert resolve_data_root(tmp_path) == tmp_path


def test_resolve_data_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert resolve_data_root() == tmp_path


def test_resolve_data_root_missing_says_both_fixes(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(DatasetNotFoundError, match="CORRLIB_DATA") as err:
        resolve_data_root()
    assert "root=" in str(err.value) and "--data-root" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_require_folder_message(tmp_path):
    missing = tmp_path / "PF-WILLOW"
    with pytest.raises(DatasetNotFoundError) as err:
        require_folder(missing, "PF-WILLOW", "unzip X into Y", tree="PF-WILLOW/\n└── a.csv")
    msg = str(err.value)
    assert str(missing) in msg and "unzip X into Y" in msg and "└── a.csv" in msg
    assert require_folder(tmp_path, "x", "y") == tmp_path


def test_require_file(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    assert require_file(tmp_path / "a.csv", "x", "y") == tmp_path / "a.csv"
    with pytest.raises(DatasetNotFoundError, match=r"b\.csv"):
        require_file(tmp_path / "b.csv", "x", "fetch it")


def test_matlab_to_zero_based_known_value():
    out = matlab_to_zero_based(torch.tensor([[1.0, 1.0], [10.5, 3.0]]))
    assert torch.equal(out, torch.tensor([[0.0, 0.0], [9.5, 2.0]]))


def test_keypoint_bbox_and_empty():
    kps = torch.tensor([[3.0, 7.0], [1.0, 9.0], [5.0, 8.0]])
    assert torch.equal(keypoint_bbox(kps, (20, 30)), torch.tensor([1.0, 7.0, 5.0, 9.0]))
    assert torch.equal(
        keypoint_bbox(torch.zeros(0, 2), (20, 30)), torch.tensor([0.0, 0.0, 29.0, 19.0])
    )


# ---------------------------------------------------------------------------- downloads


def test_download_good_with_hash(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = download_url(server.url("/f.bin"), tmp_path / "f.bin", _sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()
    # an existing, matching file is not fetched again
    download_url(server.url("/f.bin"), dest, _sha(PAYLOAD), progress=False)
    assert len(server.requests) == 1


def test_download_resumes_partial_file(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    dest = download_url(server.url("/f.bin"), tmp_path / "f.bin", _sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", "bytes=1000-")]


def test_download_restarts_after_416(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD + b"too long")  # not a prefix: 416
    dest = download_url(server.url("/f.bin"), tmp_path / "f.bin", _sha(PAYLOAD), progress=True)
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [f"bytes={len(PAYLOAD) + 8}-", None]


def test_download_restarts_when_range_ignored(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage")
    dest = download_url(server.url("/f.bin"), tmp_path / "f.bin", _sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_download_sha_mismatch_deletes_and_names_both(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    wrong = "0" * 64
    with pytest.raises(ValueError, match="Checksum mismatch") as err:
        download_url(server.url("/f.bin"), tmp_path / "f.bin", wrong, progress=False)
    assert wrong in str(err.value) and _sha(PAYLOAD) in str(err.value)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_download_unknown_hash_warns_with_computed_hash(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    with pytest.warns(UserWarning, match=_sha(PAYLOAD)) as rec:
        download_url(server.url("/f.bin"), tmp_path / "f.bin", None, progress=False)
    assert "no published checksum" in str(rec[0].message)


def test_download_unreachable_gives_manual_instructions(tmp_path):
    url = "http://127.0.0.1:9/x.zip"
    with pytest.raises(DatasetNotFoundError) as err:
        download_url(url, tmp_path / "x.zip", timeout=2, progress=False)
    msg = str(err.value)
    assert url in msg and str(tmp_path / "x.zip") in msg and "by hand" in msg


def test_download_http_error(server, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="HTTP 404"):
        download_url(server.url("/missing.zip"), tmp_path / "m.zip", progress=False)


# ---------------------------------------------------------------------------- archives


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar_gz(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return path


def test_extract_zip(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_bytes({"PF-dataset/car/a.txt": b"hello", "PF-dataset/b.txt": b"b"}))
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "PF-dataset" / "car" / "a.txt").read_bytes() == b"hello"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["PF-dataset"]  # no temp folder left


@pytest.mark.parametrize("name", ["a.tar.gz", "a.tgz"])
def test_extract_tar(tmp_path, name):
    archive = _tar_gz(tmp_path / name, {"SPair-71k/Layout/x.txt": b"1"})
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "SPair-71k" / "Layout" / "x.txt").read_text() == "1"


def test_extract_zip_traversal_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes({"ok.txt": b"1", "../evil.txt": b"x"}))
    with pytest.raises(ValueError, match="path traversal"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "ok.txt").exists()  # nothing written


@pytest.mark.parametrize(
    ("members", "links"),
    [({"../../evil.txt": b"x"}, None), ({"/abs.txt": b"x"}, None), ({}, {"link": "../../outside"})],
)
def test_extract_tar_traversal_refused(tmp_path, members, links):
    archive = _tar_gz(tmp_path / "evil.tar.gz", members, links)
    with pytest.raises(ValueError, match="path traversal"):
        extract_archive(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_extract_unknown_type(tmp_path):
    (tmp_path / "a.rar").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.zip, \.tar\.gz"):
        extract_archive(tmp_path / "a.rar", tmp_path / "out")


def test_extract_corrupt_archive(tmp_path):
    (tmp_path / "a.zip").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="corrupt"):
        extract_archive(tmp_path / "a.zip", tmp_path / "out")


def test_download_and_extract_is_idempotent(server, tmp_path):
    server.files["/PF-dataset.zip"] = _zip_bytes({"PF-dataset/a.txt": b"hi"})
    url = server.url("/PF-dataset.zip")
    with pytest.warns(UserWarning, match="no published checksum"):
        out = download_and_extract(url, tmp_path, "PF-dataset.zip", progress=False)
    assert out == tmp_path / "PF-dataset" and (out / "a.txt").read_text() == "hi"
    assert download_and_extract(url, tmp_path, "PF-dataset.zip", progress=False) == out
    assert len(server.requests) == 1  # second call skipped: the marker folder exists


def test_download_and_extract_unexpected_layout(server, tmp_path):
    data = _zip_bytes({"other/a.txt": b"hi"})
    server.files["/PF-dataset.zip"] = data
    with pytest.raises(DatasetNotFoundError, match="did not appear"):
        download_and_extract(
            server.url("/PF-dataset.zip"), tmp_path, "PF-dataset.zip", _sha(data), progress=False
        )


# ---------------------------------------------------------------------------- images


def _save(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> Path:
    img = Image.fromarray(arr)
    if mode is not None:
        img = img.convert(mode)
    img.save(path, **kw)
    return path


def test_read_image_rgb_known_values(tmp_path):
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    img = read_image(_save(tmp_path / "a.png", arr))
    assert img.dtype == torch.uint8 and img.shape == (3, 2, 3)
    assert torch.equal(img, torch.from_numpy(arr).permute(2, 0, 1))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "1"])
def test_read_image_converts_to_rgb(tmp_path, mode):
    arr = np.zeros((4, 5, 3), dtype=np.uint8)
    arr[1, 2] = 255
    img = read_image(_save(tmp_path / "a.png", arr, mode))
    assert img.shape == (3, 4, 5) and img.dtype == torch.uint8
    assert img[:, 1, 2].tolist() == [255, 255, 255] and img[:, 0, 0].tolist() == [0, 0, 0]


def test_read_image_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"bad\.png is corrupt"):
        read_image(tmp_path / "bad.png")
    good = _save(tmp_path / "t.jpg", np.full((32, 32, 3), 128, np.uint8))
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt"):
        read_image(tmp_path / "trunc.jpg")


def test_read_mask_grey_palette_rgb(tmp_path):
    grey = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    assert read_mask(_save(tmp_path / "l.png", grey)).tolist() == [[False, True], [True, False]]
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)  # index 1 drawn black: the index still counts
    pal.save(tmp_path / "p.png")
    m = read_mask(tmp_path / "p.png")
    assert m.dtype == torch.bool and m.tolist() == [[False, True], [True, False]]
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0, 2] = 9
    assert read_mask(_save(tmp_path / "c.png", rgb)).tolist() == [[True, False], [False, False]]
