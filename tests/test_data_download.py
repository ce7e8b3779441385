"""Tests for srlib.data.download against a local HTTP server (no internet needed)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import re
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from srlib.data import (
    ChecksumError,
    DatasetCountWarning,
    DownloadError,
    UnsafeArchiveError,
    download_dataset,
    list_images,
    load_image,
)
from srlib.data.download import is_archive_url


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (value, 255 - value, 7)).save(buffer, format="PNG")
    return buffer.getvalue()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        pass


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path/served`` over HTTP on 127.0.0.1; yields (folder, base_url)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _zip_archive(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return path


def _targz_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return path


SET5_MEMBERS = {f"pack/Set5_HR/img{i}.png": _png(40 * i) for i in range(5)}
SET5_MEMBERS["pack/README.txt"] = b"five test images"
SET5_MEMBERS["pack/Set5_LR/x2/img0.png"] = _png(1)
SET5_MEMBERS["pack/Set5_LR/x2/img1.png"] = _png(2)


def test_zip_with_correct_checksum_is_installed(server, tmp_path):
    served, base = server
    archive = _zip_archive(served / "set5.zip", SET5_MEMBERS)
    root = tmp_path / "root"
    path = download_dataset("set5", root, url=f"{base}/set5.zip", sha256=_sha256(archive), progress=False)
    assert path == root / "benchmark" / "Set5"
    assert [p.name for p in list_images(path)] == [f"img{i}.png" for i in range(5)]
    assert (path / "img3.png").read_bytes() == SET5_MEMBERS["pack/Set5_HR/img3.png"]
    assert load_image(path / "img1.png")[:, 0, 0].tolist() == [40, 215, 7]
    assert sorted(p.name for p in root.iterdir()) == ["benchmark"]  # no temporary files left

    archive.unlink()  # already installed: returned without touching the network
    assert download_dataset("Set5", root, url=f"{base}/set5.zip", sha256="0" * 64, progress=False) == path


def test_tar_gz_train_set_is_installed_under_train(server, tmp_path):
    served, base = server
    members = {f"T91/t{i}.png": _png(i) for i in range(91)}
    archive = _targz_archive(served / "t91.tar.gz", members)
    path = download_dataset("T91", tmp_path / "root", url=f"{base}/t91.tar.gz", sha256=_sha256(archive),
                            progress=False)
    assert path == tmp_path / "root" / "train" / "T91"
    assert len(list_images(path)) == 91


def test_registry_archive_folder_is_used(server, tmp_path, monkeypatch):
    served, base = server
    import srlib.data.download as download_module
    from srlib.data.registry import DATASETS

    path = served / "bsr.tgz"
    with tarfile.open(path, "w:gz") as bundle:
        for split, count in (("val", 4), ("train", 6)):
            for i in range(count):
                data = _png(i)
                info = tarfile.TarInfo(f"./BSR/images/{split}/{i}.jpg")
                info.size = len(data)
                bundle.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("BSR/source/lib.so")  # outside the HR folder: skipped, not extracted
        link.type = tarfile.SYMTYPE
        link.linkname = "lib.so.1"
        bundle.addfile(link)
    patched = dataclasses.replace(DATASETS["B100"], url=f"{base}/bsr.tgz", sha256=_sha256(path),
                                  archive_folder="BSR/images/val")
    monkeypatch.setattr(download_module, "get_dataset_info", lambda name: patched)
    with pytest.warns(DatasetCountWarning, match="4 images but B100 has 100"):
        installed = download_dataset("B100", tmp_path / "root", progress=False)
    assert installed == tmp_path / "root" / "benchmark" / "B100"
    assert sorted(p.name for p in list_images(installed)) == [f"{i}.jpg" for i in range(4)]
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["benchmark"]


def test_wrong_checksum_raises_and_leaves_nothing(server, tmp_path):
    served, base = server
    archive = _zip_archive(served / "set5.zip", SET5_MEMBERS)
    root = tmp_path / "root"
    root.mkdir()
    url = f"{base}/set5.zip"
    with pytest.raises(ChecksumError) as info:
        download_dataset("Set5", root, url=url, sha256="ab" * 32, progress=False)
    message = str(info.value)
    assert "ab" * 32 in message and _sha256(archive) in message and url in message
    assert list(root.iterdir()) == []


def test_checksum_error_in_a_new_root_removes_the_root(server, tmp_path):
    served, base = server
    _zip_archive(served / "set5.zip", SET5_MEMBERS)
    with pytest.raises(ChecksumError):
        download_dataset("Set5", tmp_path / "fresh", url=f"{base}/set5.zip", sha256="cd" * 32, progress=False)
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("evil_name", ["../evil.png", "pack/../../evil.png", "/tmp/evil-srlib-test.png"])
def test_zip_members_escaping_the_folder_are_rejected(server, tmp_path, evil_name):
    served, base = server
    members = dict(SET5_MEMBERS)
    members[evil_name] = _png(9)
    archive = _zip_archive(served / "evil.zip", members)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(evil_name))):
        download_dataset("Set5", root, url=f"{base}/evil.zip", sha256=_sha256(archive), progress=False)
    assert list(root.iterdir()) == []
    assert not (tmp_path / "evil.png").exists()


def test_tar_links_are_rejected(server, tmp_path):
    served, base = server
    path = served / "link.tar.gz"
    with tarfile.open(path, "w:gz") as bundle:
        link = tarfile.TarInfo("Set5/escape.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        bundle.addfile(link)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(UnsafeArchiveError, match="'Set5/escape.png' is a link or special file"):
        download_dataset("Set5", root, url=f"{base}/link.tar.gz", sha256=_sha256(path), progress=False)
    assert list(root.iterdir()) == []


def test_missing_checksum_needs_explicit_verify_false(server, tmp_path):
    served, base = server
    _zip_archive(served / "set5.zip", SET5_MEMBERS)
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="verify=False"):
        download_dataset("Set5", root, url=f"{base}/set5.zip", progress=False)
    assert not root.exists()
    with pytest.warns(UserWarning, match="not verified"):
        path = download_dataset("Set5", root, url=f"{base}/set5.zip", verify=False, progress=False)
    assert len(list_images(path)) == 5


def test_http_error_names_the_url(server, tmp_path):
    _served, base = server
    url = f"{base}/does-not-exist.zip"
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DownloadError) as info:
        download_dataset("Set5", root, url=url, sha256="0" * 64, progress=False)
    assert url in str(info.value) and "404" in str(info.value)
    assert list(root.iterdir()) == []


def test_unreachable_server_names_the_url(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/set5.zip"
    with pytest.raises(DownloadError, match=url.replace(".", r"\.")):
        download_dataset("Set5", tmp_path / "root", url=url, sha256="0" * 64, progress=False)
    assert not (tmp_path / "root").exists()


def test_datasets_without_archive_explain_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="by hand"):
        download_dataset("Manga109", tmp_path / "root", progress=False)
    assert not (tmp_path / "root").exists()


def test_is_archive_url():
    assert is_archive_url("https://x.org/a/B.ZIP")
    assert is_archive_url("https://x.org/a/b.tar.gz?download=true")
    assert is_archive_url("https://x.org/b.tgz")
    assert not is_archive_url("http://www.manga109.org/en/download.html")
    assert not is_archive_url("http://x.org/ScSR.rar")
