"""Finding datasets on disk.

srlib looks for a dataset in a list of *data roots*, in this order:

1. folders given by the user (``--data-root``, the ``extra`` argument);
2. the folders in the environment variable ``SRLIB_DATA`` (``:``-separated);
3. the repository's own ``data/`` folder (which ships Set5, Set14 and T91).

Inside each root these layouts are tried, with the images either directly in
the folder or in an ``HR/`` subfolder (the EDSR layout)::

    <root>/<Name>/            <root>/<Name>/HR/
    <root>/benchmark/<Name>/  <root>/benchmark/<Name>/HR/
    <root>/train/<Name>/      <root>/train/<Name>/HR/

The first root holding images wins.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence, Union

import srlib

from .registry import DATASETS, DatasetInfo, get_dataset_info, is_archive_url

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetNotFoundError",
    "DatasetCountWarning",
    "DataRoots",
    "data_roots",
    "repository_data_dir",
    "list_images",
    "find_dataset",
    "dataset_report",
]

#: File extensions treated as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm")

RootsLike = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], None]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not in any data root; the message says where srlib looked and how to get it."""


class DatasetCountWarning(UserWarning):
    """A dataset folder holds a different number of images than the registry expects."""


class DataRoots(list):
    """The existing data roots, in search order (a ``list[Path]``).

    ``missing`` holds the roots that were configured but do not exist; they are
    not searched but are named in error messages.
    """

    def __init__(self, existing: Iterable[str | os.PathLike] = (), missing: Iterable[str | os.PathLike] = ()):
        super().__init__(Path(path) for path in existing)
        self.missing: list[Path] = [Path(path) for path in missing]


def repository_data_dir() -> Path:
    """The ``data/`` folder next to the ``srlib`` package (it may not exist in an installed copy)."""
    return Path(srlib.__file__).resolve().parent.parent / "data"


def _split_paths(value: RootsLike) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, str):
        return [Path(part).expanduser() for part in value.split(os.pathsep) if part.strip()]
    if isinstance(value, os.PathLike):
        return [Path(value).expanduser()]
    paths: list[Path] = []
    for item in value:
        paths.extend(_split_paths(item))
    return paths


def _dedupe_and_split(candidates: Iterable[Path]) -> DataRoots:
    seen: set[Path] = set()
    existing: list[Path] = []
    missing: list[Path] = []
    for path in candidates:
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        (existing if path.is_dir() else missing).append(path)
    return DataRoots(existing, missing)


def data_roots(extra: RootsLike = None) -> DataRoots:
    """The folders searched for datasets, in order.

    Order: ``extra`` (from ``--data-root``), then ``SRLIB_DATA``, then the
    repository's ``data/`` folder (only when it exists).  Duplicates (the same
    folder reached twice) are dropped, keeping the first.  Roots that do not
    exist are left out of the list but kept in its ``missing`` attribute for
    error messages.

    Args:
        extra: a path, a ``:``-separated string of paths, or a list of paths;
            ``~`` is expanded.

    Returns:
        :class:`DataRoots`, a ``list[Path]`` of existing folders with a
        ``missing`` attribute.
    """
    candidates = _split_paths(extra)
    candidates += _split_paths(os.environ.get("SRLIB_DATA", ""))
    repo_data = repository_data_dir()
    if repo_data.is_dir():
        candidates.append(repo_data)
    return _dedupe_and_split(candidates)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside a folder, sorted by name.

    Extensions png, jpg, jpeg, bmp, tif, tiff, ppm count, in any case; hidden
    files (names starting with ``.``) and subfolders are skipped.

    Args:
        folder: the folder to list.

    Returns:
        Sorted list of paths (empty when the folder holds no images).

    Raises:
        FileNotFoundError: the folder does not exist.
        NotADirectoryError: the path is a file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"cannot list images: folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot list images: {folder} is not a folder")
    return sorted(
        entry
        for entry in folder.iterdir()
        if not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file()
    )


# Folder names other copies use for the same sets (searched after the canonical name).
_FOLDER_ALIASES: dict[str, tuple[str, ...]] = {
    "B100": ("BSD100", "BSDS100"),
    "BSD200": ("BSDS200",),
}


def _folder_names(name: str, info: DatasetInfo | None) -> list[str]:
    """Folder names to try: the canonical name, its usual aliases, else the name as given."""
    if info is None:
        return [name]
    names = [info.name, *_FOLDER_ALIASES.get(info.name, ())]
    if name.lower() not in {candidate.lower() for candidate in names}:
        names.append(name)
    return names


def _candidate_folders(root: Path, folder_names: list[str]) -> list[Path]:
    folders: list[Path] = []
    for folder_name in folder_names:
        for base in (root / folder_name, root / "benchmark" / folder_name, root / "train" / folder_name):
            folders += [base, base / "HR"]
    return folders


def _how_to_get(name: str, info: DatasetInfo | None) -> str:
    if info is None:
        known = ", ".join(DATASETS)
        return (
            f"{name!r} is not in srlib's registry (known: {known}); put its HR images in "
            f"<root>/benchmark/{name}/ and point srlib at <root> with SRLIB_DATA or --data-root."
        )
    place = (
        f"DIR/{info.kind}/{info.name}/; then point srlib at DIR with the environment variable "
        f"SRLIB_DATA=DIR or the option --data-root DIR."
    )
    if not is_archive_url(info.url):
        return f"To get it: obtain it from {info.url} and put the HR images in {place}"
    unverified = "" if info.sha256 else " with verification turned off (no checksum is published for it)"
    return (
        f"To get it: run `srlib data --download {info.name} --root DIR`{unverified} "
        f"(downloads {info.url}), or download it yourself and extract the HR images into {place}"
    )


def _normalise_roots(roots: RootsLike | DataRoots) -> DataRoots:
    if isinstance(roots, DataRoots):
        return roots
    return data_roots(roots)


def find_dataset(name: str, roots: RootsLike | DataRoots = None) -> Path:
    """The folder holding a dataset's HR images.

    Searches each root in order (see the module docstring for the layouts) and
    returns the first folder holding images.

    Args:
        name: dataset name, any case; registry names and aliases (``BSD100``)
            are recognised.  Unknown names are still searched for, but get no
            count check.
        roots: extra roots (``--data-root``: a path, ``:``-separated string
            or list) searched before ``SRLIB_DATA`` and the repository's
            ``data/``, i.e. the search order is ``data_roots(roots)``; ``None``
            for ``data_roots()``.  A :class:`DataRoots` instance is searched
            exactly as given (``DataRoots([folder])`` searches one folder only).

    Returns:
        Path of the folder whose files are the HR images.

    Raises:
        DatasetNotFoundError: (a ``FileNotFoundError``) no root holds the set;
            the message lists every folder searched (and roots that do not
            exist, and folders that exist but hold no images) and how to get
            the data.

    Warns:
        DatasetCountWarning: the folder holds a different number of images
            than the registry expects (the folder is still returned).
    """
    try:
        info: DatasetInfo | None = get_dataset_info(name)
    except ValueError:
        info = None
    display = info.name if info is not None else str(name)
    search = _normalise_roots(roots)
    folder_names = _folder_names(str(name), info)
    searched: list[Path] = []
    empty: list[Path] = []
    for root in search:
        for folder in _candidate_folders(root, folder_names):
            searched.append(folder)
            if not folder.is_dir():
                continue
            images = list_images(folder)
            if images:
                if info is not None and len(images) != info.images:
                    warnings.warn(
                        f"{folder} holds {len(images)} images but {info.name} has {info.images}; "
                        "it may be an incomplete or different copy, so scores will not be comparable "
                        "with published tables",
                        DatasetCountWarning,
                        stacklevel=2,
                    )
                return folder
            if not (folder / "HR").is_dir():
                empty.append(folder)
    lines = [f"dataset {display} was not found."]
    if empty:
        lines.append("These folders exist but are empty (they hold no png/jpg/jpeg/bmp/tif/tiff/ppm files):")
        lines += [f"  {folder}" for folder in empty]
    if searched:
        lines.append("Folders searched:")
        lines += [f"  {folder}" for folder in searched]
    else:
        lines.append("No data root exists, so nothing was searched.")
    if search.missing:
        lines.append("Data roots that do not exist (skipped):")
        lines += [f"  {root}" for root in search.missing]
    lines.append(_how_to_get(str(name), info))
    raise DatasetNotFoundError("\n".join(lines))


def dataset_report(roots: RootsLike | DataRoots = None) -> list[dict]:
    """Which registry datasets are available, for the ``srlib data`` command.

    Args:
        roots: as in :func:`find_dataset`.

    Returns:
        One dict per registry dataset, in registry order:
        ``{"name": str, "found": bool, "path": str | None, "images": int | None,
        "expected": int, "url": str}``; ``images`` is the number of image
        files found (``None`` when not found).
    """
    search = _normalise_roots(roots)
    report = []
    for info in DATASETS.values():
        entry = {"name": info.name, "found": False, "path": None, "images": None,
                 "expected": info.images, "url": info.url}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DatasetCountWarning)
                folder = find_dataset(info.name, search)
        except DatasetNotFoundError:
            pass
        else:
            entry.update(found=True, path=str(folder), images=len(list_images(folder)))
        report.append(entry)
    return report
