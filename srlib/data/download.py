"""Downloading a dataset archive, checking it, and installing its HR images.

The steps, each of which leaves nothing behind when it fails:

1. stream the archive with ``urllib`` into a temporary file inside ``root``,
   hashing it on the way (progress bar from ``tqdm``);
2. compare its SHA-256 with the published one (:class:`ChecksumError` on a
   mismatch); an entry without a published checksum is refused unless
   ``verify=False`` is given;
3. extract it (zip or tar, optionally gzip/bz2/xz-compressed) into a temporary
   folder inside ``root`` (only the HR folder when the registry names it),
   refusing members with absolute paths, ``..``, links or device files
   (:class:`UnsafeArchiveError`);
4. move the folder holding the HR images to ``<root>/<kind>/<Name>`` with
   ``os.replace`` (atomic, same file system).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

import srlib

from .locate import DatasetCountWarning, list_images
from .registry import ARCHIVE_SUFFIXES, DatasetInfo, get_dataset_info, is_archive_url

__all__ = [
    "ChecksumError",
    "DownloadError",
    "UnsafeArchiveError",
    "ARCHIVE_SUFFIXES",
    "is_archive_url",
    "sha256_of_file",
    "download_dataset",
]


_CHUNK_BYTES = 1 << 20
_TIMEOUT_SECONDS = 60


class ChecksumError(ValueError):
    """A downloaded archive's SHA-256 differs from the expected one; nothing was installed."""


class DownloadError(OSError):
    """A download failed (network, HTTP error, connection closed early); the message names the URL."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder (absolute path, ``..``, link)."""


def sha256_of_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as lowercase hex (reads in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _has_images(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return bool(list_images(folder)) or ((folder / "HR").is_dir() and bool(list_images(folder / "HR")))


def _fetch(url: str, destination: Path, progress: bool, label: str) -> str:
    """Stream ``url`` into ``destination``; return the SHA-256 of the bytes written."""
    request = urllib.request.Request(url, headers={"User-Agent": f"srlib/{srlib.__version__} (dataset download)"})
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_SECONDS) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with open(destination, "wb") as out, tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress
            ) as bar:
                while True:
                    chunk = response.read(_CHUNK_BYTES)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
    except urllib.error.HTTPError as error:
        raise DownloadError(f"could not download {url}: the server answered HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise DownloadError(f"could not download {url}: {error.reason}; check the network connection") from error
    except (socket.timeout, TimeoutError) as error:
        raise DownloadError(f"could not download {url}: no data for {_TIMEOUT_SECONDS} s (timed out)") from error
    except (ConnectionError, OSError, http.client.HTTPException) as error:
        raise DownloadError(f"could not download {url}: {type(error).__name__}: {error}") from error
    if total is not None and received != total:
        raise DownloadError(
            f"could not download {url}: the connection closed after {received} of {total} bytes; try again"
        )
    return digest.hexdigest()


def _check_member_name(name: str, archive: str) -> None:
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised):
        raise UnsafeArchiveError(f"refusing to extract {archive}: member {name!r} has an absolute path")
    if ".." in PurePosixPath(normalised).parts:
        raise UnsafeArchiveError(f"refusing to extract {archive}: member {name!r} points outside the archive folder (..)")


def _inside(name: str, folder: str | None) -> bool:
    """True when archive member ``name`` lies in ``folder`` (``None``: everything is wanted)."""
    if folder is None:
        return True
    parts = PurePosixPath(name.replace("\\", "/")).parts
    wanted = PurePosixPath(folder).parts
    return tuple(parts[: len(wanted)]) == wanted


def _extract(archive: Path, destination: Path, url: str, folder: str | None = None) -> None:
    """Extract a zip or tar archive into ``destination`` after checking every member.

    Every member name is checked (an absolute path or ``..`` anywhere makes the
    whole archive suspect); with ``folder`` only the members inside it are
    extracted, and those must be plain files or folders.
    """
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            for member in members:
                _check_member_name(member.filename, url)
            bundle.extractall(destination, members=[m for m in members if _inside(m.filename, folder)])
        return
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as bundle:
            wanted = []
            for member in bundle.getmembers():
                _check_member_name(member.name, url)
                if not _inside(member.name, folder):
                    continue
                if not (member.isfile() or member.isdir()):
                    raise UnsafeArchiveError(
                        f"refusing to extract {url}: member {member.name!r} is a link or special file"
                    )
                wanted.append(member)
            if hasattr(tarfile, "data_filter"):
                bundle.extractall(destination, members=wanted, filter="data")
            else:  # Python < 3.11.4: members were checked above
                bundle.extractall(destination, members=wanted)
        return
    raise DownloadError(f"the file downloaded from {url} is neither a zip nor a tar archive")


def _image_folders(tree: Path) -> list[Path]:
    """Every folder under ``tree`` that directly holds images (macOS resource folders skipped)."""
    found = []
    for folder, subfolders, _files in os.walk(tree):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d != "__MACOSX")
        if list_images(folder):
            found.append(Path(folder))
    return found


def _locate_hr_folder(tree: Path, info: DatasetInfo, archive_folder: str | None, url: str) -> Path:
    if archive_folder is not None:
        folder = tree / archive_folder
        if folder.is_dir() and list_images(folder):
            return folder
        candidates = [str(path.relative_to(tree)) for path in _image_folders(tree)]
        raise DownloadError(
            f"the archive from {url} has no images in {archive_folder!r}; folders with images: "
            f"{candidates or 'none'}. The archive layout may have changed: extract it by hand into "
            f"<root>/{info.kind}/{info.name}/"
        )
    candidates = _image_folders(tree)
    if len(candidates) == 1:
        return candidates[0]
    exact = [path for path in candidates if len(list_images(path)) == info.images]
    if len(exact) == 1:
        return exact[0]
    named_hr = [path for path in candidates if path.name.upper() == "HR"]
    if len(named_hr) == 1:
        return named_hr[0]
    listing = ", ".join(f"{path.relative_to(tree)} ({len(list_images(path))} images)" for path in candidates)
    raise DownloadError(
        f"cannot tell which folder of the archive from {url} holds the HR images of {info.name} "
        f"({listing or 'no images at all'}); extract it by hand into <root>/{info.kind}/{info.name}/"
    )


def download_dataset(
    name: str,
    root: str | os.PathLike,
    url: str | None = None,
    sha256: str | None = None,
    verify: bool = True,
    progress: bool = True,
) -> Path:
    """Download a dataset archive, verify it, and install its HR images in ``<root>/<kind>/<Name>``.

    Args:
        name: dataset name or alias, any case (see :data:`srlib.data.DATASETS`).
        root: data root to install into (created if missing); afterwards the
            set is found with ``SRLIB_DATA=root`` or ``--data-root root``.
        url: archive URL to use instead of the registry's.
        sha256: expected SHA-256 (hex); defaults to the registry's value when
            ``url`` is the registry's URL.
        verify: check the SHA-256.  With ``verify=True`` and no known
            checksum the download is refused; pass ``verify=False`` to install
            an unverified archive on purpose.
        progress: show a ``tqdm`` progress bar.

    Returns:
        The folder holding the installed HR images.  If the set is already
        installed there, it is returned without downloading.

    Raises:
        ValueError: unknown name; no checksum to verify against (and
            ``verify=True``); a dataset that must be obtained by hand
            (Manga109, T91's RAR archive).
        ChecksumError: the archive's SHA-256 differs (message: expected,
            actual, URL); nothing is installed and the download is deleted.
        UnsafeArchiveError: a member with an absolute path, ``..`` or a link.
        DownloadError: network or HTTP failure (message names the URL), or an
            archive whose layout does not hold the expected images.
        FileExistsError: the target folder exists but holds no images.

    Warns:
        DatasetCountWarning: the installed folder holds a different number of
            images than the registry expects.
    """
    info = get_dataset_info(name)
    root = Path(root).expanduser()
    target = root / info.kind / info.name
    if _has_images(target):
        return target / "HR" if not list_images(target) else target
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise FileExistsError(
            f"{target} exists but holds no images; remove it (or move it away) and run the download again"
        )

    registry_url = url is None or url == info.url
    url = info.url if url is None else url
    expected = (sha256 or (info.sha256 if registry_url else None) or "").strip().lower() or None
    archive_folder = info.archive_folder if registry_url else None
    if not is_archive_url(url):
        raise ValueError(
            f"{info.name} cannot be downloaded automatically from {url}: it is not a zip or tar archive. "
            f"Get the images from that page by hand and put the HR images in {target}/ "
            f"(or pass url= pointing to a zip/tar archive)."
        )
    if verify and expected is None:
        raise ValueError(
            f"no published SHA-256 is known for {url}, so srlib cannot verify the download of {info.name}. "
            "Pass sha256=... if you know the archive's checksum, or verify=False to install it unverified "
            "at your own risk."
        )
    if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {expected!r}")

    if target.is_dir():
        target.rmdir()  # an empty folder left by an earlier attempt
    created = [path for path in (root, target.parent) if not path.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=root, prefix=f".srlib-{info.name}-", suffix=".part")
    os.close(handle)
    archive = Path(temp_name)
    extract_dir: Path | None = None
    installed = False
    try:
        actual = _fetch(url, archive, progress, label=info.name)
        if verify and actual != expected:
            raise ChecksumError(
                f"SHA-256 mismatch for {info.name} downloaded from {url}: expected {expected}, got {actual}. "
                "The download is corrupt or the file changed upstream; it was deleted and nothing was installed."
            )
        if not verify:
            warnings.warn(
                f"{info.name}: installing an archive whose SHA-256 was not verified (it is {actual}; from {url})",
                UserWarning,
                stacklevel=2,
            )
        extract_dir = Path(tempfile.mkdtemp(dir=root, prefix=f".srlib-{info.name}-extract-"))
        _extract(archive, extract_dir, url, archive_folder)
        source = _locate_hr_folder(extract_dir, info, archive_folder, url)
        os.replace(source, target)
        installed = True
    finally:
        archive.unlink(missing_ok=True)
        if extract_dir is not None:
            shutil.rmtree(extract_dir, ignore_errors=True)
        if not installed:
            for folder in reversed(created):  # remove the folders this call created, innermost first
                try:
                    folder.rmdir()
                except OSError:
                    pass
    count = len(list_images(target))
    if count != info.images:
        warnings.warn(
            f"{target} holds {count} images but {info.name} has {info.images}",
            DatasetCountWarning,
            stacklevel=2,
        )
    return target
