"""Download and extraction failure modes (corrlib.data._common): stalls, truncation, web pages,
corrupt partial files, trust-on-first-use records, and archives that must not harm the data root.

Every download is served by a local HTTP server on 127.0.0.1 (never the network); timeouts are
scaled down so each test takes at most a couple of seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from corrlib.data import (
    DatasetNotFoundError,
    download_and_extract,
    download_url,
    extract_archive,
)
from corrlib.data._common import DOWNLOAD_RECORD
from corrlib.data.pfpascal import PFPASCAL_PAIRS_SHA256

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes
HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>login</body></html>\n"

Route = Callable[[BaseHTTPRequestHandler], None]


class _Server:
    """A local server whose paths run a ``route(handler)``; records the Range header of each
    request. ``stop`` is set at teardown to release handlers that wait."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                try:
                    route(self)
                except OSError:  # the client gave up (a stall test): nothing to do
                    pass

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
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve(
    body: bytes,
    *,
    content_type: str = "application/octet-stream",
    length: bool = True,
    cut: int | None = None,
) -> Route:
    """Serve ``body`` (honouring ``Range``); ``length=False`` sends no Content-Length (the body
    ends when the connection closes); ``cut`` stops after that many bytes."""

    def route(h: BaseHTTPRequestHandler) -> None:
        start = 0
        rng = h.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                h.send_error(416)
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            h.send_response(200)
        h.send_header("Content-Type", content_type)
        if length:
            h.send_header("Content-Length", str(len(body) - start))
        h.end_headers()
        h.wfile.write(body[start:cut])

    return route


def trickle(body: bytes, stop: threading.Event, delay: float = 0.05) -> Route:
    """Announce the full length, then send one byte every ``delay`` seconds."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for i in range(len(body)):
            if stop.wait(delay):
                return
            h.wfile.write(body[i : i + 1])
            h.wfile.flush()

    return route


def stall(body: bytes, sent: int, stop: threading.Event) -> Route:
    """Send the headers and ``sent`` bytes, then nothing (until teardown)."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[:sent])
        h.wfile.flush()
        stop.wait(5)

    return route


def _records(folder: Path) -> dict:
    path = folder / DOWNLOAD_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


# ---------------------------------------------------------------------------- stalls


def test_trickling_server_is_aborted_and_the_part_resumes(server, tmp_path):
    server.routes["/f.bin"] = trickle(PAYLOAD, server.stop)
    url, dest = server.url("/f.bin"), tmp_path / "f.bin"
    t0 = time.monotonic()
    with pytest.raises(DatasetNotFoundError, match="stalled") as err:
        download_url(url, dest, timeout=1, stall_s=0.5, stall_bytes=1000, progress=False)
    assert time.monotonic() - t0 < 3  # the per-read timeout (1 s) alone never trips
    part = tmp_path / "f.bin.part"
    msg = str(err.value)
    assert url in msg and str(part) in msg and "resume" in msg
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD) and part.read_bytes() == PAYLOAD[:kept]
    server.routes["/f.bin"] = serve(PAYLOAD)  # the server recovers: the next call resumes
    assert download_url(url, dest, _sha(PAYLOAD), progress=False).read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/f.bin", f"bytes={kept}-")


def test_silent_server_times_out_and_keeps_the_part(server, tmp_path):
    server.routes["/f.bin"] = stall(PAYLOAD, 100, server.stop)
    url = server.url("/f.bin")
    t0 = time.monotonic()
    with pytest.raises(DatasetNotFoundError, match="timed out") as err:
        download_url(url, tmp_path / "f.bin", timeout=0.5, progress=False)
    assert time.monotonic() - t0 < 2.5
    part = tmp_path / "f.bin.part"
    assert url in str(err.value) and str(part) in str(err.value) and "resume" in str(err.value)
    assert part.read_bytes() == PAYLOAD[:100]
    assert not (tmp_path / "f.bin").exists()


# ---------------------------------------------------------------------------- truncation


def test_cut_short_without_content_length_fails_the_known_hash(server, tmp_path):
    server.routes["/f.bin"] = serve(PAYLOAD, length=False, cut=len(PAYLOAD) // 2)
    with pytest.raises(ValueError, match="Checksum mismatch"):
        download_url(server.url("/f.bin"), tmp_path / "f.bin", _sha(PAYLOAD), progress=False)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_no_content_length_without_hash_warns_and_is_not_trusted(server, tmp_path):
    server.routes["/f.bin"] = serve(PAYLOAD, length=False)
    with pytest.warns(UserWarning, match="no Content-Length") as rec:
        download_url(server.url("/f.bin"), tmp_path / "f.bin", progress=False)
    msg = str(rec[0].message)
    assert "no published checksum" in msg and "not recorded as trusted" in msg
    assert _records(tmp_path) == {}  # a possibly incomplete file is not trusted


def test_cut_short_with_content_length_keeps_the_part(server, tmp_path):
    server.routes["/f.bin"] = serve(PAYLOAD, cut=3000)
    with pytest.raises(DatasetNotFoundError, match=r"stopped early \(3000 of 10240 bytes\)"):
        download_url(server.url("/f.bin"), tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin.part").stat().st_size == 3000


# ---------------------------------------------------------------------------- web pages


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/zip"])
def test_html_page_is_refused_then_fetched_again(server, tmp_path, content_type):
    server.routes["/PF-dataset.zip"] = serve(HTML, content_type=content_type)
    url, dest = server.url("/PF-dataset.zip"), tmp_path / "PF-dataset.zip"
    with pytest.raises(DatasetNotFoundError, match="web page") as err:
        download_url(url, dest, progress=False)
    assert url in str(err.value) and "login" in str(err.value)
    assert not dest.exists() and not (tmp_path / "PF-dataset.zip.part").exists()
    assert _records(tmp_path) == {}
    good = _zip({"PF-dataset/a.txt": b"hi"})
    server.routes["/PF-dataset.zip"] = serve(good)
    with pytest.warns(UserWarning, match="no published checksum"):
        assert download_url(url, dest, progress=False).read_bytes() == good


def test_existing_html_file_without_hash_is_fetched_again(server, tmp_path, capsys):
    dest = tmp_path / "test_pairs_pf.csv"
    dest.write_bytes(HTML)  # left by an older corrlib: no checksum, but clearly not a CSV
    server.routes["/p.csv"] = serve(b"a,b\n1,2\n", content_type="text/csv")
    with pytest.warns(UserWarning, match="no published checksum"):
        download_url(server.url("/p.csv"), dest, progress=False)
    assert dest.read_bytes() == b"a,b\n1,2\n"
    assert "web page" in capsys.readouterr().err


# ---------------------------------------------------------------------------- partial files


def test_corrupt_part_with_hash_is_deleted_then_fetched_again(server, tmp_path):
    server.routes["/f.bin"] = serve(PAYLOAD)
    part = tmp_path / "f.bin.part"
    part.write_bytes(b"X" * 1000)  # not a prefix of the real file: the server resumes at 1000
    url, dest = server.url("/f.bin"), tmp_path / "f.bin"
    with pytest.raises(ValueError, match="Checksum mismatch") as err:
        download_url(url, dest, _sha(PAYLOAD), progress=False)
    assert "resumed an earlier partial file" in str(err.value) and "deleted" in str(err.value)
    assert not part.exists() and not dest.exists()
    assert download_url(url, dest, _sha(PAYLOAD), progress=False).read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/f.bin", None)  # fetched afresh


def test_resumed_without_hash_says_only_the_size_was_checked(server, tmp_path):
    server.routes["/f.bin"] = serve(PAYLOAD)
    (tmp_path / "f.bin.part").write_bytes(b"X" * 1000)
    with pytest.warns(UserWarning, match="only its total size was checked") as rec:
        download_url(server.url("/f.bin"), tmp_path / "f.bin", progress=False)
    assert "not recorded as trusted" in str(rec[0].message)
    assert _records(tmp_path) == {}


def test_existing_wrong_file_with_hash_is_fetched_again(server, tmp_path, capsys):
    server.routes["/f.bin"] = serve(PAYLOAD)
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"garbage")
    download_url(server.url("/f.bin"), dest, _sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert "does not match" in capsys.readouterr().err
    dest.write_bytes(b"garbage")  # offline now: the old file stays until a verified copy arrives
    with pytest.raises(DatasetNotFoundError):
        download_url("http://127.0.0.1:9/f.bin", dest, _sha(PAYLOAD), timeout=2, progress=False)
    assert dest.read_bytes() == b"garbage"


# ---------------------------------------------------------------------------- trust on first use


def test_first_download_is_recorded_and_a_changed_file_detected(server, tmp_path, capsys):
    server.routes["/f.bin"] = serve(PAYLOAD)
    url, dest = server.url("/f.bin"), tmp_path / "f.bin"
    with pytest.warns(UserWarning, match="trust on first use"):
        download_url(url, dest, progress=False)
    entry = _records(tmp_path)["f.bin"]
    assert entry["sha256"] == _sha(PAYLOAD) and entry["url"] == url
    assert entry["size"] == len(PAYLOAD)
    # an existing file is now checked against the record: a damaged one is fetched again
    dest.write_bytes(b"damaged")
    download_url(url, dest, progress=False)
    assert dest.read_bytes() == PAYLOAD and "does not match" in capsys.readouterr().err
    # the server now serves other bytes: refused, naming the record
    dest.unlink()
    server.routes["/f.bin"] = serve(PAYLOAD[::-1])
    with pytest.raises(ValueError, match="recorded at its first download") as err:
        download_url(url, dest, progress=False)
    assert str(tmp_path / DOWNLOAD_RECORD) in str(err.value)
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()


def test_archive_recorded_after_it_extracts_and_a_truncated_one_deleted(server, tmp_path):
    good = _zip({"PF-dataset/a.txt": b"hi" * 500})
    server.routes["/PF-dataset.zip"] = serve(good, length=False, cut=len(good) - 30)
    url = server.url("/PF-dataset.zip")
    with pytest.raises(ValueError, match="corrupt or truncated") as err:
        download_and_extract(url, tmp_path, "PF-dataset.zip", progress=False)
    assert "deleted" in str(err.value) and not (tmp_path / "PF-dataset.zip").exists()
    assert _records(tmp_path) == {} and not (tmp_path / "PF-dataset").exists()
    server.routes["/PF-dataset.zip"] = serve(good)
    with pytest.warns(UserWarning, match="trust on first use"):
        out = download_and_extract(url, tmp_path, "PF-dataset.zip", progress=False)
    assert (out / "a.txt").read_bytes() == b"hi" * 500
    assert _records(tmp_path)["PF-dataset.zip"]["sha256"] == _sha(good)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".extract")] == []


# ---------------------------------------------------------------------------- extraction


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def _data_root(tmp_path: Path) -> Path:
    """A data root holding a TSS dataset and a PF-WILLOW pair list that must survive."""
    root = tmp_path / "data"
    (root / "TSS" / "TSS_CVPR2016").mkdir(parents=True)
    (root / "TSS" / "TSS_CVPR2016" / "flow1.flo").write_bytes(b"precious")
    (root / "PF-WILLOW").mkdir()
    (root / "PF-WILLOW" / "test_pairs_pf.csv").write_text("official\n")
    return root


def _intact(root: Path) -> bool:
    return (root / "TSS" / "TSS_CVPR2016" / "flow1.flo").read_bytes() == b"precious" and (
        root / "PF-WILLOW" / "test_pairs_pf.csv"
    ).read_text() == "official\n"


EVIL = {"SPair-71k/Layout/large/test.txt": b"1", "TSS": b"not a folder\n"}


def test_download_and_extract_installs_only_its_folder(server, tmp_path, capsys):
    root = _data_root(tmp_path)
    data = _tar({**EVIL, "PF-WILLOW/test_pairs_pf.csv": b"forged\n"})
    server.routes["/SPair-71k.tar.gz"] = serve(data)
    out = download_and_extract(
        server.url("/SPair-71k.tar.gz"), root, "SPair-71k.tar.gz", _sha(data), progress=False
    )
    assert (out / "Layout" / "large" / "test.txt").read_text() == "1"
    assert _intact(root) and (root / "TSS").is_dir()
    assert "left out" in capsys.readouterr().err


def test_extract_refuses_a_file_over_an_existing_folder(tmp_path):
    root = _data_root(tmp_path)
    archive = tmp_path / "SPair-71k.tar.gz"
    archive.write_bytes(_tar(EVIL))
    with pytest.raises(FileExistsError, match="Refusing to extract") as err:
        extract_archive(archive, root)
    msg = str(err.value)
    assert "archive file 'TSS'" in msg and str(root / "TSS") in msg
    assert _intact(root)
    assert not (root / "SPair-71k").exists()  # refused before anything was moved
    assert sorted(p.name for p in root.iterdir()) == ["PF-WILLOW", "TSS"]


def test_extract_merges_new_files_but_never_replaces(tmp_path):
    root = _data_root(tmp_path)
    archive = tmp_path / "w.zip"
    archive.write_bytes(_zip({"PF-WILLOW/test_pairs_pf.csv": b"official\n", "PF-WILLOW/new": b"n"}))
    extract_archive(archive, root)  # identical file left alone, new file added
    assert (root / "PF-WILLOW" / "new").read_bytes() == b"n" and _intact(root)
    archive.write_bytes(_zip({"PF-WILLOW/test_pairs_pf.csv": b"forged\n", "PF-WILLOW/x": b"x"}))
    with pytest.raises(FileExistsError, match=r"test_pairs_pf\.csv"):
        extract_archive(archive, root)
    assert _intact(root) and not (root / "PF-WILLOW" / "x").exists()


def test_internal_relative_symlink_is_allowed(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar({"pkg/c/x.txt": b"x"}, links={"pkg/a/b": "../c"}))
    out = extract_archive(archive, tmp_path / "out")
    link = out / "pkg" / "a" / "b"
    assert link.is_symlink() and (link / "x.txt").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("links", "only", "why"),
    [
        ({"pkg/a/b": "../../../outside"}, None, "points outside the archive"),
        ({"pkg/b": "/etc"}, None, "absolute path"),
        ({"pkg/b": "../TSS"}, ("pkg",), "outside the folders installed"),
    ],
)
def test_escaping_symlinks_are_refused(tmp_path, links, only, why):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar({"pkg/x.txt": b"x", "TSS/y": b"y"}, links=links))
    with pytest.raises(ValueError, match=why):
        extract_archive(archive, tmp_path / "out", only=only)
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------------- recorded hashes


@pytest.mark.realdata
def test_pfpascal_pair_list_hashes_match_the_shared_copy(data_root):
    folder = data_root / "PF-PASCAL" / "image_pairs"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    for split, sha in PFPASCAL_PAIRS_SHA256.items():
        assert _sha((folder / f"{split}_pairs.csv").read_bytes()) == sha
