"""Shared plumbing for the benchmark datasets: data root, missing-data errors, downloads.

Every dataset takes a ``root``: the folder that *holds* the dataset folders (the same data root
for all, e.g. ``../shared/data`` holds ``PF-WILLOW/``, ``PF-PASCAL/``, ``TSS/``, ``SPair-71k/``).
``root=None`` means :func:`resolve_data_root`: the ``CORRLIB_DATA`` environment variable.

Downloads use only the standard library (``urllib``): resumable through an HTTP ``Range`` request
into a ``.part`` file, verified with SHA-256 (or MD5 where only that is published), then renamed
atomically, so an interrupted or corrupt download never looks like a finished one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from corrlib._check import check_choice, check_image, check_shape
from corrlib.data.images import read_image

__all__ = [
    "DATA_ENV",
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
_USER_AGENT = "corrlib-dataset-downloader/0.1 (python urllib)"
# urllib.error.URLError and ConnectionError are OSError subclasses; other OSErrors (disk full,
# permission denied) are local problems and are deliberately not reported as network failures.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


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


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _manual_instructions(url: str, dest: Path) -> str:
    return (
        f"Download it by hand: fetch {url} (browser, wget or curl) and save it as {dest}, "
        "then run again (an archive next to its dataset folder is extracted automatically)."
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
    """The published checksums to verify: ``{"sha256": ..., "md5": ...}`` (given ones only)."""
    return {name: v.lower() for name, v in (("sha256", sha256), ("md5", md5)) if v is not None}


def _matches(path: Path, sha256: str | None, md5: str | None) -> bool:
    expected = _expected(sha256, md5)
    if not expected:
        return True
    return _digests(path, tuple(expected)) == expected


def _check_hash(path: Path, url: str, sha256: str | None, md5: str | None = None) -> None:
    expected = _expected(sha256, md5)
    if not expected:
        actual = sha256_file(path)
        warnings.warn(
            f"Downloaded {url} has SHA-256 {actual}; no published checksum exists for this file, "
            "so its integrity could not be verified. Keep this hash to detect later changes.",
            UserWarning,
            stacklevel=3,
        )
        return
    actual = _digests(path, tuple(expected))
    for name, want in expected.items():
        if actual[name] != want:
            path.unlink(missing_ok=True)
            label = {"sha256": "SHA-256", "md5": "MD5"}[name]
            raise ValueError(
                f"Checksum mismatch for {url}: expected {label} {want}, got {actual[name]}. "
                "The corrupt file was deleted; download again. If it keeps happening the file on "
                "the server has changed: check the dataset's web page."
            )


def download_url(
    url: str,
    dest_path: str | os.PathLike,
    sha256: str | None = None,
    *,
    md5: str | None = None,
    timeout: float = 30,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest_path`` (resumable, verified, atomic) and return the path.

    Bytes go to ``dest_path + ".part"``; a leftover ``.part`` from an interrupted run is resumed
    with an HTTP ``Range`` request (restarted if the server ignores it). The finished file is
    checked against ``sha256`` (mismatch: deleted, ``ValueError`` naming both hashes) and only then
    renamed to ``dest_path``. ``md5`` is checked the same way, for files whose publisher gives only
    an MD5 (both may be given; each given one must match); an MD5 match counts as verified, so it
    gives no warning. With neither, the computed SHA-256 is reported in a ``UserWarning``, as
    there is no published checksum to compare with. An existing ``dest_path`` that matches the
    given checksums (or any file, when none is given) is kept: no download.
    Network failures raise ``DatasetNotFoundError`` with manual download instructions; the
    ``.part`` file is kept so the next call resumes.
    """
    dest = Path(dest_path)
    if dest.is_file():
        if _matches(dest, sha256, md5):
            return dest
        dest.unlink()  # wrong content: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for _attempt in range(2):  # a second attempt only after the server refused the resume range
        start = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": _USER_AGENT}
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=timeout
            ) as resp:
                if start and resp.status != 206:  # server ignored the Range header: start over
                    start = 0
                length = resp.headers.get("Content-Length")
                total = start + int(length) if length is not None else None
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
                    for chunk in iter(lambda: resp.read(_CHUNK), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
            if total is not None and part.stat().st_size < total:
                raise DatasetNotFoundError(
                    f"Download of {url} stopped early ({part.stat().st_size} of {total} bytes); "
                    f"call again to resume from {part}. " + _manual_instructions(url, dest)
                )
            break
        except urllib.error.HTTPError as err:
            if err.code == 416 and start:  # our .part is not a prefix the server accepts
                part.unlink()
                continue
            raise DatasetNotFoundError(
                f"Could not download {url}: HTTP {err.code} {err.reason}. "
                + _manual_instructions(url, dest)
            ) from err
        except _NETWORK_ERRORS as err:
            raise DatasetNotFoundError(
                f"Could not download {url} ({type(err).__name__}: {err}); are you offline? "
                + _manual_instructions(url, dest)
            ) from err
    _check_hash(part, url, sha256, md5)
    os.replace(part, dest)
    return dest


def _archive_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    raise ValueError(
        f"Cannot extract {path}: unknown archive type; supported are .zip, .tar.gz, .tgz and .tar."
    )


def _safe_target(base: Path, member: str, archive: Path) -> Path:
    target = (base / member).resolve()
    if member.startswith(("/", "\\")) or os.path.isabs(member) or not target.is_relative_to(base):
        raise ValueError(
            f"Refusing to extract {archive}: member '{member}' would be written outside {base} "
            "(path traversal). The archive is corrupt or malicious: delete it and download it "
            "again from the official URL."
        )
    return target


def _move_merge(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; where both are folders, merge ``src`` into ``dst``."""
    if dst.is_dir() and src.is_dir():
        for child in src.iterdir():
            _move_merge(child, dst / child.name)
        src.rmdir()
    else:
        if dst.is_dir():
            shutil.rmtree(dst)
        os.replace(src, dst)


def extract_archive(path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a ``.zip``, ``.tar.gz``/``.tgz`` or ``.tar`` archive into folder ``dest``.

    Every member is checked first: one that would land outside ``dest`` (``../x``, an absolute
    path, a link pointing out) raises ``ValueError`` and nothing is written. Extraction goes to a
    temporary folder inside ``dest`` that is moved into place at the end, so an interrupted
    extraction leaves no half-filled dataset folder. Returns ``dest``.
    """
    path, dest = Path(path), Path(dest)
    kind = _archive_kind(path)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest)).resolve()
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    _safe_target(tmp, name, path)
                zf.extractall(tmp)
        else:
            with tarfile.open(path) as tf:
                for member in tf.getmembers():
                    target = _safe_target(tmp, member.name, path)
                    if member.issym() or member.islnk():
                        link_base = target.parent if member.issym() else tmp
                        _safe_target(link_base, member.linkname, path)
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(tmp, filter="data")
                else:  # Python < 3.10.12: members were checked above
                    tf.extractall(tmp)
        for child in list(tmp.iterdir()):
            _move_merge(child, dest / child.name)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise ValueError(
            f"Cannot extract {path}: the archive is corrupt or truncated ({err}). Delete it and "
            "download it again."
        ) from err
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
    nothing. The archive is kept next to what it extracted. ``sha256`` and ``md5`` are checked as
    in :func:`download_url`. Returns the marker folder.
    """
    root = Path(root)
    target = root / (marker if marker is not None else _archive_stem(filename))
    if target.is_dir():
        return target
    archive = download_url(url, root / filename, sha256, md5=md5, progress=progress)
    extract_archive(archive, root)
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
        path = self.folder / name
        self._require_file(path, self.folder)
        return read_image(path)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, len={len(self)})"
        )


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
