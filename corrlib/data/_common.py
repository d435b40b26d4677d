"""Shared plumbing for the benchmark datasets: data root, missing-data errors, downloads.

Every dataset takes a ``root``: the folder that *holds* the dataset folders (the same data root
for all, e.g. ``../shared/data`` holds ``PF-WILLOW/``, ``PF-PASCAL/``, ``TSS/``, ``SPair-71k/``).
``root=None`` means :func:`resolve_data_root`: the ``CORRLIB_DATA`` environment variable.

Downloads use only the standard library (``urllib``): resumable through an HTTP ``Range`` request
into a ``.part`` file, verified with SHA-256 (or MD5 where only that is published; where the
publisher gives neither, against the SHA-256 recorded at the first download in
``.corrlib-downloads.json``), then renamed atomically, so an interrupted, stalled, truncated or
corrupt download, or a web page served instead of the file, never looks like a finished one.
Archives are extracted into a fresh folder and moved into place without ever replacing or deleting
anything already in the data root.
"""

from __future__ import annotations

import filecmp
import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from corrlib._check import check_choice, check_image, check_int, check_shape
from corrlib.data.images import read_image, shown_path

__all__ = [
    "DATA_ENV",
    "DOWNLOAD_RECORD",
    "DatasetNotFoundError",
    "KeypointPair",
    "PairDataset",
    "download_and_extract",
    "download_url",
    "extract_archive",
    "keypoint_bbox",
    "make_pair_item",
    "matlab_to_zero_based",
    "require_file",
    "require_folder",
    "resolve_data_root",
    "sha256_file",
]

DATA_ENV = "CORRLIB_DATA"
_CHUNK = 1 << 20
_TIMEOUT_S = 30.0  # no byte for this long (connecting or reading): give up
_STALL_S, _STALL_BYTES = 60.0, 16 * 1024  # fewer bytes than this in that many seconds: a stall
_USER_AGENT = "corrlib-dataset-downloader/0.1 (python urllib)"
# urllib.error.URLError and ConnectionError are OSError subclasses; other OSErrors (disk full,
# permission denied) are local problems and are deliberately not reported as network failures.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
# Errors of a truncated or damaged archive; the tar safety filter's refusals are told apart.
_FILTER_ERRORS: tuple[type[Exception], ...] = tuple(
    e for e in (getattr(tarfile, "FilterError", None),) if e is not None
)
_CORRUPT_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset (or one of its files) is not where it should be; the message says how to fix it."""


# --------------------------------------------------------------------------------------------
# Data root and required paths
# --------------------------------------------------------------------------------------------


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """Return the data root: ``root`` if given, else ``$CORRLIB_DATA``.

    Raises ``DatasetNotFoundError`` when neither is set, saying both ways to set it.
    Example: ``resolve_data_root("../shared/data")`` gives ``Path("../shared/data")``.
    """
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    raise DatasetNotFoundError(
        "No data root given. The data root is the folder that holds the dataset folders "
        "(PF-WILLOW/, PF-PASCAL/, TSS/, SPair-71k/). Either pass it explicitly (root=... for a "
        "dataset, data_root= in a config, --data-root on the command line), or set the "
        f"environment variable {DATA_ENV}, e.g. `export {DATA_ENV}=../shared/data` from the "
        "project root."
    )


def _missing_message(
    kind: str, path: Path, dataset_name: str, how_to_get: str, tree: str | None
) -> str:
    msg = f"{dataset_name}: {kind} {path} not found."
    if tree:
        msg += "\nExpected layout:\n" + tree.strip("\n")
    msg += f"\nHow to get it: {how_to_get}"
    return msg


def require_folder(
    path: str | os.PathLike, dataset_name: str, how_to_get: str, *, tree: str | None = None
) -> Path:
    """Return ``path`` if it is a folder, else raise ``DatasetNotFoundError``.

    The message names the exact folder expected, draws ``tree`` (a short picture of the expected
    layout) and repeats ``how_to_get`` (e.g. "pass download=True, or fetch URL and unzip it
    into FOLDER").
    """
    path = Path(path)
    if not path.is_dir():
        raise DatasetNotFoundError(_missing_message("folder", path, dataset_name, how_to_get, tree))
    return path


def require_file(
    path: str | os.PathLike, dataset_name: str, how_to_get: str, *, tree: str | None = None
) -> Path:
    """Like :func:`require_folder` for a single file (a pair list, an image, an annotation)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(_missing_message("file", path, dataset_name, how_to_get, tree))
    return path


# --------------------------------------------------------------------------------------------
# Coordinates
# --------------------------------------------------------------------------------------------


def matlab_to_zero_based(coords: torch.Tensor) -> torch.Tensor:
    """MATLAB 1-based pixel coordinates -> corrlib's 0-based ones (subtract 1).

    The single place where corrlib converts annotation coordinates: MATLAB puts the centre of the
    top-left pixel at ``(1, 1)``, corrlib at ``(0, 0)`` (see :mod:`corrlib.geometry`). Works on
    keypoints ``(N, 2)`` and boxes ``(4,)`` alike (every entry is a coordinate).
    Example: ``matlab_to_zero_based(torch.tensor([[1., 1.]]))`` gives ``[[0., 0.]]``.
    """
    return coords - 1


def keypoint_bbox(kps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Tight box ``(4,)`` = (x0, y0, x1, y1) around keypoints ``(N, 2)``, in pixels.

    Used where a dataset has no box annotation. With no keypoints (``N = 0``) the box is the whole
    image of ``size=(H, W)``: ``(0, 0, W - 1, H - 1)``.
    """
    if kps.shape[0] == 0:
        h, w = size
        return torch.tensor([0.0, 0.0, w - 1.0, h - 1.0], dtype=torch.float32)
    return torch.cat([kps.min(dim=0).values, kps.max(dim=0).values]).to(torch.float32)


@dataclass(frozen=True, eq=False)
class KeypointPair:
    """One row of a keypoint pair list, parsed without loading images.

    Names are paths relative to the dataset folder. Keypoints are ``(N, 2)`` float32, 0-based
    pixels (x, y) of the *unflipped* images, or ``None`` where a dataset keeps them in per-image
    annotation files (PF-PASCAL train/val). Boxes ``(4,)`` likewise, or ``None`` when the pair
    list has none. ``info`` holds dataset-specific extras (SPair-71k difficulty flags).
    """

    src_name: str
    trg_name: str
    category: str
    src_kps: torch.Tensor | None = None
    trg_kps: torch.Tensor | None = None
    src_bbox: torch.Tensor | None = None
    trg_bbox: torch.Tensor | None = None
    flip: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def item(self, src_img: torch.Tensor, trg_img: torch.Tensor, index: int) -> dict[str, Any]:
        """The dataset item of this pair, unflipped (:func:`make_pair_item`): the images given
        (``(3, H, W)`` uint8) and copies of this record's keypoints and boxes (a missing box:
        the keypoints' box)."""

        def copy(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.clone()

        return make_pair_item(
            src_img=src_img,
            trg_img=trg_img,
            src_kps=copy(self.src_kps),
            trg_kps=copy(self.trg_kps),
            src_bbox=copy(self.src_bbox),
            trg_bbox=copy(self.trg_bbox),
            category=self.category,
            src_name=self.src_name,
            trg_name=self.trg_name,
            pair_index=index,
            flip=False,
        )


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------

#: Per-folder record of the SHA-256 of files downloaded without a published checksum (trust on
#: first use): it sits next to the downloaded files and later downloads are checked against it.
DOWNLOAD_RECORD = ".corrlib-downloads.json"
_HTML_SUFFIXES = (".html", ".htm")
_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body")


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _note(message: str) -> None:
    """Say what a download step did (on stderr: shown in terminals and notebooks alike)."""
    print(f"[corrlib download] {message}", file=sys.stderr)


def _manual_instructions(url: str, dest: Path) -> str:
    return (
        f"Download it by hand: fetch {url} (browser, wget or curl) and save it as {dest}, "
        "then run again (an archive next to its dataset folder is extracted automatically)."
    )


def _looks_like_html(path: Path) -> bool:
    """Whether ``path`` holds a web page (a login, error or redirect page saved by mistake)."""
    if path.suffix.lower() in _HTML_SUFFIXES:
        return False
    with open(path, "rb") as f:
        head = f.read(2048)
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    # No archive (PK.., gzip, tar) nor pair list starts with "<"; a web page does.
    return head.startswith(b"<") and any(m in head for m in _HTML_MARKERS)


def _html_message(url: str, dest: Path, evidence: str) -> str:
    return (
        f"Downloading {url} returned a web page (HTML; {evidence}), not the file: the host "
        "answered with a login, error or redirect page, or the URL has moved. Nothing was saved "
        f"as {dest}, so the next call downloads again. Open the URL in a browser to see the page. "
        + _manual_instructions(url, dest)
    )


def _digests(path: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Hex digests ``{name: hex}`` of a file for hashlib algorithms ``names``, in one read."""
    hashes = {name: hashlib.new(name, usedforsecurity=False) for name in names}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            for h in hashes.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashes.items()}


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    """The checksums to verify: ``{"sha256": ..., "md5": ...}`` (given ones only)."""
    return {name: v.lower() for name, v in (("sha256", sha256), ("md5", md5)) if v is not None}


def _record_file(dest: Path) -> Path:
    return dest.parent / DOWNLOAD_RECORD


def _read_records(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"Cannot read the download record {path} ({err}). It holds the SHA-256 of files "
            "corrlib downloaded without a published checksum; repair it, or delete it to record "
            "the next downloads afresh."
        ) from err
    return data


def _recorded_sha256(dest: Path) -> str | None:
    """The SHA-256 recorded for ``dest`` at its first download (trust on first use), if any."""
    entry = _read_records(_record_file(dest)).get(dest.name)
    if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
        return entry["sha256"].lower()
    return None


def _write_record(dest: Path, url: str, sha256: str) -> Path:
    """Record ``dest``'s SHA-256 in the folder's :data:`DOWNLOAD_RECORD` (atomic rewrite)."""
    path = _record_file(dest)
    records = _read_records(path)
    records[dest.name] = {
        "url": url,
        "sha256": sha256,
        "size": dest.stat().st_size,
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total size)`` of a ``Content-Range: bytes a-b/n`` header (``None`` if
    absent)."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if m is None:
        return None, None
    return int(m.group(1)), (None if m.group(2) == "*" else int(m.group(2)))


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass
class _Transfer:
    resumed: bool  # appended to an earlier .part
    size_confirmed: bool  # the server announced the total size and it arrived in full


def _copy_body(
    resp: Any,
    part: Path,
    start: int,
    total: int | None,
    url: str,
    dest: Path,
    *,
    stall_s: float,
    stall_bytes: int,
    progress: bool,
) -> None:
    """Stream ``resp`` into ``part`` (appending after ``start`` bytes); raise on a stall.

    A stall is fewer than ``stall_bytes`` arriving in ``stall_s`` seconds: it catches a server that
    trickles bytes, which the per-read socket timeout alone never trips.
    """
    read = getattr(resp, "read1", resp.read)  # read1: returns what arrived, never waits for 1 MiB
    with (
        open(part, "ab" if start else "wb") as f,
        tqdm(
            total=total,
            initial=start,
            unit="B",
            unit_scale=True,
            desc=dest.name,
            disable=not progress,
        ) as bar,
    ):
        window_start, window_bytes = time.monotonic(), 0
        while chunk := read(_CHUNK):
            f.write(chunk)
            bar.update(len(chunk))
            window_bytes += len(chunk)
            now = time.monotonic()
            if now - window_start >= stall_s:
                if window_bytes < stall_bytes:
                    raise DatasetNotFoundError(
                        f"Download of {url} stalled: only {window_bytes} bytes arrived in the last "
                        f"{now - window_start:.1f} s (the minimum is {stall_bytes} bytes per "
                        f"{stall_s:g} s). The {f.tell()} bytes received so far are kept in {part}; "
                        "call again to resume from there. " + _manual_instructions(url, dest)
                    )
                window_start, window_bytes = now, 0


def _fetch(
    url: str,
    dest: Path,
    part: Path,
    *,
    timeout: float,
    stall_s: float,
    stall_bytes: int,
    progress: bool,
) -> _Transfer:
    """Download ``url`` into ``part``, resuming a leftover ``part`` with an HTTP ``Range``."""
    for _attempt in range(2):  # a second attempt only after a refused or mismatched resume
        start = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": _USER_AGENT}
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=timeout
            ) as resp:
                content_type = resp.headers.get_content_type()
                if content_type == "text/html" and dest.suffix.lower() not in _HTML_SUFFIXES:
                    raise DatasetNotFoundError(
                        _html_message(url, dest, "the server's Content-Type is text/html")
                    )
                length = _int_or_none(resp.headers.get("Content-Length"))
                if start and resp.status == 206:
                    first, total = _content_range(resp.headers.get("Content-Range"))
                    if first is not None and first != start:  # not the range asked for
                        part.unlink()
                        continue
                    if total is None and length is not None:
                        total = start + length
                else:  # no resume asked, or the server ignored the Range header: start over
                    start, total = 0, length
                _copy_body(
                    resp,
                    part,
                    start,
                    total,
                    url,
                    dest,
                    stall_s=stall_s,
                    stall_bytes=stall_bytes,
                    progress=progress,
                )
            size = part.stat().st_size
            if total is not None and size < total:
                raise DatasetNotFoundError(
                    f"Download of {url} stopped early ({size} of {total} bytes); "
                    f"call again to resume from {part}. " + _manual_instructions(url, dest)
                )
            return _Transfer(resumed=start > 0, size_confirmed=total is not None)
        except urllib.error.HTTPError as err:
            if err.code == 416 and start:  # our .part is not a prefix the server accepts
                part.unlink()
                continue
            raise DatasetNotFoundError(
                f"Could not download {url}: HTTP {err.code} {err.reason}. "
                + _manual_instructions(url, dest)
            ) from err
        except TimeoutError as err:  # a read timed out (a connect timeout is a URLError)
            kept = part.stat().st_size if part.is_file() else 0
            raise DatasetNotFoundError(
                f"Download of {url} timed out: no data arrived for {timeout:g} s. The {kept} "
                f"bytes received so far are kept in {part}; call again to resume from there. "
                + _manual_instructions(url, dest)
            ) from err
        except _NETWORK_ERRORS as err:
            resume = (
                f" The partial download {part} is kept; the next call resumes it."
                if part.is_file() and part.stat().st_size
                else ""
            )
            raise DatasetNotFoundError(
                f"Could not download {url} ({type(err).__name__}: {err}); are you offline?"
                f"{resume} " + _manual_instructions(url, dest)
            ) from err
    raise DatasetNotFoundError(  # pragma: no cover - both attempts refused the resume
        f"Could not resume the download of {url} into {part}. " + _manual_instructions(url, dest)
    )


def _verify(
    path: Path, url: str, expected: dict[str, str], record: Path | None, resumed_from: Path | None
) -> None:
    """Check ``path`` against ``expected``; on a mismatch delete it and raise ``ValueError``.

    ``record`` is the download record the SHA-256 came from (``None``: a published checksum).
    """
    actual = _digests(path, tuple(expected))
    for name, want in expected.items():
        if actual[name] == want:
            continue
        path.unlink(missing_ok=True)
        label = {"sha256": "SHA-256", "md5": "MD5"}[name]
        source = f", recorded at its first download in {record}," if record is not None else ","
        resumed = (
            f" The download resumed an earlier partial file {resumed_from}, which was probably "
            "not the start of this file."
            if resumed_from is not None
            else ""
        )
        fix = (
            f"the publisher has changed the file: if you trust the new one, delete the entry "
            f'"{path.name.removesuffix(".part")}" from {record}.'
            if record is not None
            else "the file on the server has changed: check the dataset's web page."
        )
        raise ValueError(
            f"Checksum mismatch for {url}: expected {label} {want}{source} got {actual[name]}."
            f"{resumed} The corrupt file was deleted; call again to download it afresh. If it "
            f"keeps happening {fix}"
        )


@dataclass
class _Downloaded:
    path: Path
    verified: bool  # matched a published or recorded checksum
    sha256: str | None = None  # set when fetched now without a checksum to compare with
    transfer: _Transfer | None = None  # set when fetched now


def _download(
    url: str,
    dest: Path,
    sha256: str | None,
    md5: str | None,
    *,
    record: bool,
    timeout: float,
    stall_s: float,
    stall_bytes: int,
    progress: bool,
) -> _Downloaded:
    expected = _expected(sha256, md5)
    record_file = None
    if not expected and record:
        recorded = _recorded_sha256(dest)
        if recorded is not None:
            expected, record_file = {"sha256": recorded}, _record_file(dest)
    if dest.is_file():
        if expected:
            if _digests(dest, tuple(expected)) == expected:
                return _Downloaded(dest, verified=True)
            what = f"the SHA-256 recorded in {record_file}" if record_file else "its checksum"
            _note(
                f"{dest} does not match {what}; downloading it again from {url} (the file is "
                "replaced once the new copy is verified)."
            )
        elif _looks_like_html(dest):
            _note(f"{dest} is a saved web page (HTML), not the file; downloading it again.")
        else:
            return _Downloaded(dest, verified=False)  # no checksum known: nothing to check
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    transfer = _fetch(
        url,
        dest,
        part,
        timeout=timeout,
        stall_s=stall_s,
        stall_bytes=stall_bytes,
        progress=progress,
    )
    if _looks_like_html(part):
        part.unlink()
        raise DatasetNotFoundError(_html_message(url, dest, "the file starts like a web page"))
    if expected:
        _verify(part, url, expected, record_file, part if transfer.resumed else None)
        os.replace(part, dest)
        return _Downloaded(dest, verified=True, transfer=transfer)
    actual = sha256_file(part)
    os.replace(part, dest)
    return _Downloaded(dest, verified=False, sha256=actual, transfer=transfer)


def _warn_unverified(url: str, got: _Downloaded, recorded_in: Path | None, stacklevel: int) -> None:
    transfer = got.transfer
    assert transfer is not None and got.sha256 is not None
    msg = (
        f"Downloaded {url}, saved as {got.path}, has SHA-256 {got.sha256}; no published "
        "checksum exists for this file, so its integrity could not be verified."
    )
    if transfer.resumed:
        msg += (
            " It was resumed from an earlier partial download; without a checksum only its total "
            "size was checked (an earlier partial file that was not the start of this one would "
            "go unnoticed)."
        )
    if not transfer.size_confirmed:
        msg += (
            " The server sent no Content-Length, so a transfer cut short cannot be detected: the "
            "file may be incomplete."
        )
    if recorded_in is not None:
        msg += (
            f" Its SHA-256 is recorded in {recorded_in}; later downloads are checked against it "
            "(trust on first use)."
        )
    else:
        msg += " It is not recorded as trusted: delete it and download again if in doubt."
    warnings.warn(msg, UserWarning, stacklevel=stacklevel + 1)


def download_url(
    url: str,
    dest_path: str | os.PathLike,
    sha256: str | None = None,
    *,
    md5: str | None = None,
    timeout: float = _TIMEOUT_S,
    stall_s: float = _STALL_S,
    stall_bytes: int = _STALL_BYTES,
    record: bool = True,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest_path`` (resumable, verified, atomic) and return the path.

    Bytes go to ``dest_path + ".part"``; a leftover ``.part`` from an interrupted run is resumed
    with an HTTP ``Range`` request (restarted if the server ignores or refuses it). The finished
    file is checked, and only then renamed to ``dest_path``:

    - against ``sha256`` and/or ``md5`` (an MD5 for files whose publisher gives only that; each
      given one must match). A mismatch deletes the file and raises ``ValueError`` naming both
      hashes (and, after a resume, the ``.part`` it started from);
    - with neither: against the SHA-256 recorded in ``DOWNLOAD_RECORD`` (``.corrlib-downloads.json``
      in the folder of ``dest_path``) by the first download of this file (trust on first use;
      ``record=False`` turns this off). The first download gets a ``UserWarning`` with its
      SHA-256 and is recorded, unless its completeness is in doubt: a resume (only the size was
      checked) or no ``Content-Length`` (a transfer cut short is undetectable); the warning says
      which;
    - a web page (``Content-Type: text/html``, or content starting like HTML: a login, error or
      redirect page) raises ``DatasetNotFoundError`` naming the URL; nothing is kept, so the next
      call downloads again.

    An existing ``dest_path`` is checked against the known checksum (given or recorded) and
    downloaded again, with a message, when it fails (it is replaced only by a verified copy).
    With no checksum known, an existing file is kept unless it is a saved web page.

    ``timeout`` bounds connecting and each read (seconds without any byte); a transfer slower
    than ``stall_bytes`` per ``stall_s`` seconds (a server trickling bytes) is aborted too. A
    stall, a timeout or a network failure raises ``DatasetNotFoundError`` with manual download
    instructions; the ``.part`` file is kept so the next call resumes.
    """
    dest = Path(dest_path)
    got = _download(
        url,
        dest,
        sha256,
        md5,
        record=record,
        timeout=timeout,
        stall_s=stall_s,
        stall_bytes=stall_bytes,
        progress=progress,
    )
    if got.sha256 is not None:  # fetched now, nothing to compare with
        transfer = got.transfer
        trusted = record and transfer is not None and transfer.size_confirmed
        trusted = trusted and not transfer.resumed
        recorded_in = _write_record(dest, url, got.sha256) if trusted else None
        _warn_unverified(url, got, recorded_in, stacklevel=2)
    return got.path


def _archive_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    raise ValueError(
        f"Cannot extract {path}: unknown archive type; supported are .zip, .tar.gz, .tgz and .tar."
    )


class _UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction folder (or a link would point out)."""


class _CorruptArchiveError(ValueError):
    """The archive cannot be read (truncated, not an archive, bad CRC)."""


def _unsafe(archive: Path, what: str) -> _UnsafeArchiveError:
    return _UnsafeArchiveError(
        f"Refusing to extract {archive}: {what} (path traversal). The archive is corrupt or "
        "malicious: delete it and download it again from the official URL."
    )


def _safe_target(base: Path, member: str, archive: Path) -> Path:
    target = (base / member).resolve()
    if member.startswith(("/", "\\")) or os.path.isabs(member) or not target.is_relative_to(base):
        raise _unsafe(archive, f"member '{member}' would be written outside {base}")
    return target


def _check_tar_link(
    member: tarfile.TarInfo, target: Path, base: Path, archive: Path, only: frozenset[str] | None
) -> None:
    """A link must stay inside the archive: a symbolic link resolved from its own folder (as the
    OS does), a hard link from the archive root; with ``only``, inside the installed folders."""
    link = member.linkname
    if link.startswith(("/", "\\")) or os.path.isabs(link):
        raise _unsafe(archive, f"link '{member.name}' points to the absolute path '{link}'")
    resolved = ((target.parent if member.issym() else base) / link).resolve()
    if not resolved.is_relative_to(base):
        raise _unsafe(archive, f"link '{member.name}' -> '{link}' points outside the archive")
    rel = resolved.relative_to(base).parts
    if member.issym() and only is not None and (not rel or rel[0] not in only):
        raise _unsafe(
            archive,
            f"link '{member.name}' -> '{link}' points outside the folders installed from it "
            f"({', '.join(sorted(only))}), possibly into another dataset",
        )


def _extract_into(path: Path, kind: str, tmp: Path, only: frozenset[str] | None) -> None:
    """Check every member of archive ``path``, then extract it all into the empty folder ``tmp``."""
    if kind == "zip":  # zipfile writes links as plain files: only names need checking
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                _safe_target(tmp, name, path)
            zf.extractall(tmp)
        return
    with tarfile.open(path) as tf:
        for member in tf.getmembers():
            target = _safe_target(tmp, member.name, path)
            if member.issym() or member.islnk():
                _check_tar_link(member, target, tmp, path, only)
        if hasattr(tarfile, "data_filter"):  # re-checks every member against the real tree
            tf.extractall(tmp, filter="data")
        else:  # Python < 3.10.12: members were checked above
            tf.extractall(tmp)


def _same_entry(src: Path, dst: Path) -> bool:
    """Whether existing ``dst`` already equals extracted ``src`` (same link, or same bytes)."""
    if src.is_symlink() or dst.is_symlink():
        return src.is_symlink() and dst.is_symlink() and os.readlink(src) == os.readlink(dst)
    return src.is_file() and dst.is_file() and filecmp.cmp(src, dst, shallow=False)


def _merge_new(src: Path, dst: Path, conflicts: list[tuple[Path, Path]], *, move: bool) -> None:
    """Add ``src`` at ``dst`` without replacing or deleting anything that exists there.

    A missing ``dst`` gets ``src`` (moved, when ``move``); two folders are merged entry by entry;
    an existing entry equal to ``src`` is left alone; any other existing entry (other content, a
    file where a folder comes, or the reverse) is a conflict, collected in ``conflicts``.
    """
    if not os.path.lexists(dst):
        if move:
            shutil.move(os.fspath(src), os.fspath(dst))
        return
    if src.is_dir() and not src.is_symlink() and dst.is_dir():
        for child in sorted(src.iterdir()):
            _merge_new(child, dst / child.name, conflicts, move=move)
    elif not _same_entry(src, dst):
        conflicts.append((src, dst))


def _conflict_error(
    archive: Path, tmp: Path, conflicts: list[tuple[Path, Path]]
) -> FileExistsError:
    def kind(p: Path) -> str:
        return "link" if p.is_symlink() else "folder" if p.is_dir() else "file"

    lines = [
        f"  archive {kind(src)} '{src.relative_to(tmp).as_posix()}' vs existing {kind(dst)} {dst}"
        for src, dst in conflicts[:5]
    ]
    more = f"\n  ... and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
    return FileExistsError(
        f"Refusing to extract {archive}: {len(conflicts)} of its entries would replace existing "
        "data (corrlib never overwrites or deletes what is already in the data root):\n"
        + "\n".join(lines)
        + more
        + "\nMove the existing entries away, or extract the archive by hand elsewhere, and call "
        "again."
    )


def extract_archive(
    path: str | os.PathLike, dest: str | os.PathLike, *, only: Iterable[str] | None = None
) -> Path:
    """Extract a ``.zip``, ``.tar.gz``/``.tgz`` or ``.tar`` archive into folder ``dest``.

    Every member is checked first: one that would land outside ``dest`` (``../x``, an absolute
    path) raises ``ValueError`` and nothing is written. Links: a symbolic link must resolve, from
    its own folder, inside the archive (``a/b -> ../c`` is fine, ``a/b -> ../../x`` or ``/etc`` is
    refused), and with ``only`` inside the installed folders; a hard link must name a member.

    The archive is extracted into a fresh hidden folder ``dest/.extract-*`` (same file system),
    then its top-level entries are moved into ``dest`` (only those named in ``only``, an iterable
    of top-level names, when given; the others are left out, with a message). Nothing in ``dest``
    is ever replaced or deleted: folders that exist are merged (new files added, identical files
    left alone), and any entry whose content differs, or a file where a folder exists (or the
    reverse), raises ``FileExistsError`` naming both before anything is moved. An interrupted
    extraction leaves no half-filled dataset folder. Returns ``dest``.
    """
    path, dest = Path(path), Path(dest)
    kind = _archive_kind(path)
    keep = None if only is None else frozenset(only)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest)).resolve()
    try:
        try:
            _extract_into(path, kind, tmp, keep)
        except _FILTER_ERRORS as err:
            raise _unsafe(path, f"member refused by the tar safety filter: {err}") from err
        except _CORRUPT_ERRORS as err:
            raise _CorruptArchiveError(
                f"Cannot extract {path}: the archive is corrupt or truncated ({err}). Delete it "
                "and download it again."
            ) from err
        entries = sorted(tmp.iterdir())
        chosen = [e for e in entries if keep is None or e.name in keep]
        left_out = [e.name for e in entries if keep is not None and e.name not in keep]
        if left_out:
            _note(
                f"{path}: left out top-level entries {left_out} (only {sorted(keep or ())} are "
                f"installed into {dest})."
            )
        conflicts: list[tuple[Path, Path]] = []
        for entry in chosen:  # dry run: refuse before anything is moved
            _merge_new(entry, dest / entry.name, conflicts, move=False)
        if conflicts:
            raise _conflict_error(path, tmp, conflicts)
        for entry in chosen:
            _merge_new(entry, dest / entry.name, conflicts, move=True)
        if conflicts:  # pragma: no cover - something appeared in dest during the move
            raise _conflict_error(path, tmp, conflicts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _archive_stem(filename: str) -> str:
    for ext in (".tar.gz", ".tgz", ".zip", ".tar"):
        if filename.lower().endswith(ext):
            return filename[: -len(ext)]
    return filename


def download_and_extract(
    url: str,
    root: str | os.PathLike,
    filename: str,
    sha256: str | None = None,
    *,
    md5: str | None = None,
    marker: str | None = None,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``root/filename`` and extract it into ``root``; idempotent.

    Skipped when the marker folder ``root/marker`` already exists (default: the archive name
    without its extension, e.g. ``PF-dataset`` for ``PF-dataset.zip``), so calling it again costs
    nothing. Only the marker's top-level folder is installed from the archive, and nothing that
    exists in ``root`` is replaced or deleted (see :func:`extract_archive`). The archive is kept
    next to what it extracted. ``sha256`` and ``md5`` are checked as in :func:`download_url`;
    with neither, the archive's SHA-256 is recorded in ``root/.corrlib-downloads.json`` once it
    has extracted cleanly (trust on first use), and later downloads are checked against it. An
    archive that fails to extract and matched no known checksum (a truncated or wrong file) is
    deleted, so the next call downloads it again. Returns the marker folder.
    """
    root = Path(root)
    marker = marker if marker is not None else _archive_stem(filename)
    target = root / marker
    if target.is_dir():
        return target
    top = Path(marker).parts[0]
    archive = root / filename
    got = _download(
        url,
        archive,
        sha256,
        md5,
        record=True,
        timeout=_TIMEOUT_S,
        stall_s=_STALL_S,
        stall_bytes=_STALL_BYTES,
        progress=progress,
    )
    try:
        extract_archive(archive, root, only=(top,))
    except (_CorruptArchiveError, _UnsafeArchiveError) as err:
        if got.verified:
            raise
        archive.unlink(missing_ok=True)
        raise type(err)(
            f"{err} It matched no known checksum, so it was deleted: the next call downloads it "
            "again."
        ) from err
    if got.sha256 is not None:  # fetched now without a checksum: record it, it extracted cleanly
        transfer = got.transfer
        complete = transfer is not None and transfer.size_confirmed and not transfer.resumed
        checked = _archive_kind(archive) == "zip" or archive.name.lower().endswith(
            (".tar.gz", ".tgz")
        )  # zip and gzip carry CRCs: extracting cleanly proves the bytes arrived intact
        recorded_in = _write_record(archive, url, got.sha256) if complete or checked else None
        _warn_unverified(url, got, recorded_in, stacklevel=2)
    if not target.is_dir():
        raise DatasetNotFoundError(
            f"Extracted {archive} into {root} but the expected folder {target} did not appear; the "
            f"archive layout differs from what corrlib expects. Move its content so that {target} "
            "exists, or report the new layout."
        )
    return target


# --------------------------------------------------------------------------------------------
# Base class of the pair datasets
# --------------------------------------------------------------------------------------------


class PairDataset(torch.utils.data.Dataset):
    """Base of corrlib's pair datasets: ``(root, split, transform, download)`` and shared plumbing.

    Subclasses set ``NAME`` (for messages), ``FOLDER`` (the dataset folder under the data root),
    ``SPLITS``, ``SPLIT_ALIASES``, ``TREE`` (the expected layout, drawn in errors) and
    ``EAGER_PAIRS``, and implement ``_how_to_get``, ``_check_exists``, ``download``,
    ``read_pairs``, ``_load`` and ``categories``.
    ``__getitem__`` returns ``transform(item)`` when a transform is given.
    """

    NAME = ""
    FOLDER = ""
    SPLITS: tuple[str, ...] = ("test",)
    SPLIT_ALIASES: dict[str, str] = {}  # noqa: RUF012 (read-only class constant)
    TREE = ""
    #: Parse the pair list in ``__init__`` (cheap lists: errors show up at construction).
    EAGER_PAIRS = True

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "test",
        transform: Any = None,
        download: bool = False,
    ) -> None:
        self.root = resolve_data_root(root)
        self.split = self._check_split(split)
        self.transform = transform
        self._pairs: list | None = None
        if download:
            self.download()
        self._check_exists()
        if self.EAGER_PAIRS:
            _ = self.pairs

    @classmethod
    def _check_split(cls, split: str) -> str:
        split = cls.SPLIT_ALIASES.get(split, split)
        return check_choice(split, "split", cls.SPLITS + tuple(cls.SPLIT_ALIASES))

    @classmethod
    def _folder(cls, root: str | os.PathLike | None) -> Path:
        return resolve_data_root(root) / cls.FOLDER

    @property
    def folder(self) -> Path:
        """The dataset folder: ``root / FOLDER``."""
        return self.root / self.FOLDER

    @classmethod
    def _how_to_get(cls, folder: Path) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def _require_folder(cls, path: Path, folder: Path) -> Path:
        return require_folder(path, cls.NAME, cls._how_to_get(folder), tree=cls.TREE)

    @classmethod
    def _require_file(cls, path: Path, folder: Path) -> Path:
        return require_file(path, cls.NAME, cls._how_to_get(folder), tree=cls.TREE)

    def _check_exists(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def download(self) -> None:  # pragma: no cover - overridden
        """Fetch the official files into :attr:`folder` (idempotent)."""
        raise NotImplementedError

    @property
    def pairs(self) -> list:
        """The parsed pair list of this split (no image loaded; parsed once, then cached)."""
        if self._pairs is None:
            self._pairs = self.read_pairs(self.root, self.split)
        return self._pairs

    @classmethod
    def read_pairs(cls, root: str | os.PathLike | None = None, split: str = "test") -> list:
        """Parse the pair list of ``split`` under data root ``root`` (needs no image)."""
        raise NotImplementedError  # pragma: no cover - overridden

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Any:
        item = self._load(item_index(index, len(self), f"{self.NAME} {self.split}"))
        return self.transform(item) if self.transform is not None else item

    def _load(self, index: int) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _read_image(self, name: str) -> torch.Tensor:
        """Image ``name`` (relative to :attr:`folder`) as uint8 ``(3, H, W)``; a clear error if
        missing."""
        rel = os.path.normpath(str(name).replace("\\", "/"))
        if os.path.isabs(rel) or rel == ".." or rel.startswith("../"):
            raise ValueError(
                f"{self.NAME}: the pair list names the image {str(name)!r}, which lies outside "
                f"the dataset folder {shown_path(self.folder)}; image paths in a pair list must "
                "be relative and inside it. The pair list is corrupt or not the official one: "
                "re-download it."
            )
        path = self.folder / name
        self._require_file(path, self.folder)
        return read_image(path)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, len={len(self)})"
        )


class DrawnPairDataset(PairDataset):
    """A keypoint-pair dataset without an official pair list: this library draws its pairs.

    Subclasses implement ``_draw_pairs`` (a list of :class:`KeypointPair`: for each class,
    ordered pairs of two images of the split drawn with ``seed``, the first ``pairs_per_class``
    with at least ``min_common`` keypoints visible in both) and document the rule; the draw is
    made once, when the dataset is built (``EAGER_PAIRS``), and cached. ``pairs_per_class=None``
    takes the class's ``PAIRS_PER_CLASS``.
    """

    PAIRS_PER_CLASS = 20

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        transform: Any = None,
        download: bool = False,
        *,
        pairs_per_class: int | None = None,
        min_common: int = 3,
        seed: int = 0,
    ) -> None:
        if pairs_per_class is None:
            pairs_per_class = self.PAIRS_PER_CLASS
        self.pairs_per_class = check_int(pairs_per_class, "pairs_per_class", 1)
        self.min_common = check_int(min_common, "min_common", 1)
        self.seed = int(seed)
        super().__init__(root, split, transform, download)

    @property
    def pairs(self) -> list:
        """The drawn pairs of this split (drawn once, then cached)."""
        if self._pairs is None:
            self._pairs = self._draw_pairs()
        return self._pairs

    @classmethod
    def read_pairs(cls, root=None, split: str = "train") -> list:
        """The pairs of ``split`` with the class's default draw."""
        return cls(root, split).pairs

    def _draw_pairs(self) -> list[KeypointPair]:  # pragma: no cover - overridden
        raise NotImplementedError

    def categories(self) -> list[str]:
        return sorted({p.category for p in self.pairs})


def item_index(index: int, n: int, what: str) -> int:
    """``index`` (negative counts from the end) as ``0 <= i < n``; ``IndexError`` naming ``what``
    otherwise."""
    i = int(index)
    if not -n <= i < n:
        raise IndexError(f"{what} has {n} items; index {index} is out of range.")
    return i % n


def make_pair_item(
    *,
    src_img: torch.Tensor,
    trg_img: torch.Tensor,
    src_kps: torch.Tensor,
    trg_kps: torch.Tensor,
    src_bbox: torch.Tensor | None,
    trg_bbox: torch.Tensor | None,
    category: str,
    src_name: str,
    trg_name: str,
    pair_index: int,
    flip: bool,
) -> dict[str, Any]:
    """Assemble the item dict shared by every keypoint dataset (a missing box -> keypoint box)."""
    check_image(src_img, "src_img", batched=False)
    check_image(trg_img, "trg_img", batched=False)
    n = check_shape(src_kps, ("N", 2), "src_kps")["N"]
    check_shape(trg_kps, (n, 2), "trg_kps")
    src_size = (int(src_img.shape[1]), int(src_img.shape[2]))
    trg_size = (int(trg_img.shape[1]), int(trg_img.shape[2]))
    src_kps = src_kps.to(torch.float32)
    trg_kps = trg_kps.to(torch.float32)
    return {
        "src_img": src_img,
        "trg_img": trg_img,
        "src_kps": src_kps,
        "trg_kps": trg_kps,
        "src_bbox": (
            src_bbox if src_bbox is not None else keypoint_bbox(src_kps, src_size)
        ).float(),
        "trg_bbox": (
            trg_bbox if trg_bbox is not None else keypoint_bbox(trg_kps, trg_size)
        ).float(),
        "src_size": src_size,
        "trg_size": trg_size,
        "category": category,
        "src_name": src_name,
        "trg_name": trg_name,
        "pair_index": int(pair_index),
        "flip": bool(flip),
    }
