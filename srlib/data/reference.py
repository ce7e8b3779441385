"""Data for reference-based (multi-reference) super-resolution: groups of one HR target and K references.

A reference-based SR model super-resolves an LR target with the help of HR
references showing related content (other views of the same scene), from
which it borrows real high-frequency texture.  This module reads such data
and makes it the way SRNTT does:

* the **target** is cropped to a multiple of the scale and its LR input made
  with MATLAB bicubic (:func:`srlib.data.make_lr_pair`, through the
  :class:`srlib.data.LRCache`), exactly as for single-image SR;
* the **references** stay at full resolution (HR), each cropped to a
  multiple of the scale (top-left corner kept);
* the **matching references** are those references shrunk by the scale with
  the same MATLAB bicubic and enlarged back, ``imresize(imresize(ref, 1/s), s)``
  (:func:`matching_reference`): the input side of the matching is the
  upsampled LR target, so both sides of the patch comparison carry the same
  bicubic blur, while the texture is pasted from the sharp references.

Source: Z. Zhang, Z. Wang, Z. Lin and H. Qi, "Image super-resolution by
neural texture transfer" (SRNTT), CVPR 2019, whose CUFED5 test set gives the
first layout below; the official code, repository ZZUTK/SRNTT, file
``SRNTT/model.py`` (``test``): each reference cropped to a multiple of 4 from
the top-left corner, its features taken at full resolution for swapping and
from ``imresize(imresize(ref, 0.25), 4)`` for matching, against the
bicubic-upsampled LR input.  That code resizes with scipy's bicubic; srlib
uses MATLAB's, the same as for the LR target.  AMRSR (the multi-reference
model srlib implements; its supplement is the specification) builds on
SRNTT's matching and takes these conventions from it.

Layouts of a group set (:func:`read_groups`):

* ``"cufed5"`` - one folder, group ``GGG`` as files ``GGG_0.png`` (the HR
  target) and ``GGG_1.png`` ... ``GGG_K.png`` (its references, numbered 1..K
  without gaps; in CUFED5 and MultiViewRef the most similar / nearest view
  first).  An optional ``manifest.json`` (a list of ``{"id": GGG, "scene":
  ...}``) names each group's scene.  Any image extension of
  :data:`srlib.data.IMAGE_EXTENSIONS`::

      MultiViewRef/000_0.png 000_1.png ... 000_5.png 001_0.png ...

* ``"folders"`` - one folder per group, holding exactly one ``target.<ext>``
  and references ``ref_<key>.<ext>``, ordered by the number ``key``
  (``ref_2`` before ``ref_10``; keys that are not numbers come after the
  numbered ones, in name order); any other image in a group folder is an
  error, subfolders without images are ignored::

      my_groups/street/target.png  my_groups/street/ref_1.png  my_groups/street/ref_2.jpg
      my_groups/garden/target.png  my_groups/garden/ref_1.png

Training (:class:`ReferencePatchDataset`) draws seeded, deterministic samples
of two kinds, each labelled with its ``"kind"`` so that reports can tell them
apart: ``"multi-view"`` (a patch of one view of a training scene, references
cropped from other views of the same scene) and ``"self-reference"`` (the
references cut from another region of the same HR image, with a random change
of scale and rotation; lets single-image sets such as T91 be used).  The
training sources can never be test data: a scene named like a scene of a
test-kind set (``MultiViewRef``'s ``manifest.json`` and the registry), a
folder inside a test set, or a file byte-identical to a test file is refused
with :class:`SceneLeakError`.

The sets and scenes srlib knows are in :data:`srlib.data.REFERENCE_DATASETS`;
they have no download and are looked up in the data roots
(:func:`find_reference_dataset`, :func:`reference_dataset_report`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..imresize import imresize
from .datasets import _check_max_images, _image_size, _make_cache, sample_seed
from .degrade import (
    Degradation,
    LRCache,
    _check_scale,
    as_degradation,
    bicubic_degrade,
    crop_to_multiple,
    make_lr_pair,
)
from .io import decode_image, read_file_bytes, to_float
from .locate import (
    DataRoots,
    DatasetCountWarning,
    DatasetNotFoundError,
    RootsLike,
    data_roots,
    find_dataset,
    list_images,
)
from .registry import (
    DATASET_ALIASES,
    DATASETS,
    REFERENCE_DATASETS,
    ReferenceDatasetInfo,
    get_dataset_info,
    get_reference_dataset_info,
)

__all__ = [
    "GROUP_LAYOUTS",
    "SAMPLE_KINDS",
    "TRAIN_SCENES",
    "ReferenceGroup",
    "ReferenceGroupDataset",
    "ReferencePatchDataset",
    "SceneLeakError",
    "find_reference_dataset",
    "held_out_digests",
    "held_out_scenes",
    "list_views",
    "matching_reference",
    "read_groups",
    "reference_dataset_report",
    "self_reference_crop",
]

#: Layouts :func:`read_groups` reads (``"auto"`` picks one from the folder's content).
GROUP_LAYOUTS = ("cufed5", "folders")

#: The ``"kind"`` label of a training sample.
SAMPLE_KINDS = ("multi-view", "self-reference")

#: The registry's training scenes, the default sources of :class:`ReferencePatchDataset`.
TRAIN_SCENES: tuple[str, ...] = tuple(name for name, info in REFERENCE_DATASETS.items() if info.kind == "train")

_CUFED5_STEM = re.compile(r"^(?P<group>.+)_(?P<index>\d+)$")


class SceneLeakError(ValueError):
    """A training source belongs to a reference-SR test set (by scene name, by folder, or by a byte-identical file)."""


# ---------------------------------------------------------------------------
# the matching side


def matching_reference(reference: torch.Tensor, scale: int) -> torch.Tensor:
    """The reference as the matching sees it: MATLAB ``imresize(imresize(ref, 1/scale), scale)``.

    Shrinks the reference with the bicubic degradation of the LR target
    (:func:`srlib.data.bicubic_degrade`, rounded to 8 bit as a saved LR image)
    and enlarges it back with MATLAB bicubic (rounded to 8 bit), so that it
    carries the same blur as the bicubic-upsampled LR target it is compared to.

    Args:
        reference: uint8 RGB ``(3, H, W)`` or ``(N, 3, H, W)``, 0..255, ``H``
            and ``W`` multiples of ``scale`` (:func:`srlib.data.crop_to_multiple`).
        scale: integer >= 2, the SR scale.

    Returns:
        uint8 tensor of the reference's shape, same device.

    Raises:
        ValueError: bad scale, sides not multiples of the scale, not RGB.
        TypeError: not uint8.

    Source: SRNTT (Zhang et al., CVPR 2019), repository ZZUTK/SRNTT, file
    ``SRNTT/model.py`` (``test``: ``imresize(imresize(ref, .25), 4.)`` before
    matching; scipy's bicubic there, MATLAB's here).
    """
    lr = bicubic_degrade(reference, scale)  # (..., 3, H/s, W/s) uint8
    return imresize(lr, scale=scale)  # (..., 3, H, W) uint8


# ---------------------------------------------------------------------------
# group sets


@dataclass(frozen=True)
class ReferenceGroup:
    """One group of a reference-SR set: an HR target file and its reference files.

    Attributes:
        name: the group's name (``"000"``, or the group folder's name).
        target: the HR target image file.
        references: the reference files, in order (nearest / most similar first).
        scene: the scene shown, from ``manifest.json``; ``""`` when unknown.
    """

    name: str
    target: Path
    references: tuple[Path, ...]
    scene: str = ""


def _manifest_scenes(folder: Path) -> dict[str, str]:
    """``{group id: scene}`` from ``folder/manifest.json`` (empty when there is none)."""
    path = folder / "manifest.json"
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
        return {str(entry["id"]): str(entry.get("scene", "")) for entry in entries}
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(
            f"cannot read {path}: expected a JSON list of {{'id': ..., 'scene': ...}} objects ({error}); "
            "fix or remove the file"
        ) from error


def _read_cufed5(folder: Path) -> list[ReferenceGroup]:
    files: dict[str, dict[int, Path]] = {}
    stray: list[str] = []
    for path in list_images(folder):
        match = _CUFED5_STEM.match(path.stem)
        if match is None:
            stray.append(path.name)
            continue
        group, index = match["group"], int(match["index"])
        members = files.setdefault(group, {})
        if index in members:
            raise ValueError(f"{folder}: group {group} has two files numbered {index}: "
                             f"{members[index].name} and {path.name}; keep one")
        members[index] = path
    if stray:
        raise ValueError(
            f"{folder}: {len(stray)} image(s) not named GGG_k as the CUFED5 layout needs (GGG_0 the target, "
            f"GGG_1 ... GGG_K the references): {', '.join(stray[:5])}; rename or move them"
        )
    scenes = _manifest_scenes(folder)
    groups: list[ReferenceGroup] = []
    for name in sorted(files):
        members = files[name]
        if 0 not in members:
            raise ValueError(f"{folder}: group {name} has no target {name}_0.<ext> (files: "
                             f"{', '.join(p.name for p in members.values())})")
        numbers = sorted(index for index in members if index)
        if not numbers:
            raise ValueError(f"{folder}: group {name} has a target but no reference ({name}_1.<ext> ...)")
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"{folder}: the references of group {name} must be numbered 1..K without gaps; "
                             f"found {numbers}")
        groups.append(ReferenceGroup(name, members[0], tuple(members[i] for i in numbers), scenes.get(name, "")))
    return groups


def _reference_order(path: Path) -> tuple[int, int, str]:
    key = path.stem[len("ref_"):]
    return (0, int(key), path.name) if key.isdigit() else (1, 0, path.name)


def _read_group_folders(folder: Path) -> list[ReferenceGroup]:
    groups: list[ReferenceGroup] = []
    subfolders = sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    for sub in subfolders:
        images = list_images(sub)
        if not images:
            continue
        targets = [path for path in images if path.stem == "target"]
        references = sorted((path for path in images if path.stem.startswith("ref_")), key=_reference_order)
        others = [path.name for path in images if path.stem != "target" and not path.stem.startswith("ref_")]
        if len(targets) != 1:
            raise ValueError(f"{sub}: a group folder needs exactly one target.<ext>, found "
                             f"{[path.name for path in targets] or 'none'}")
        if others:
            raise ValueError(f"{sub}: images that are neither target.<ext> nor ref_<key>.<ext>: {', '.join(others)}")
        if not references:
            raise ValueError(f"{sub}: the group has a target but no reference (ref_1.<ext>, ref_2.<ext>, ...)")
        groups.append(ReferenceGroup(sub.name, targets[0], tuple(references)))
    return groups


def read_groups(folder: str | os.PathLike, layout: str = "auto") -> list[ReferenceGroup]:
    """The groups of a reference-SR set on disk, sorted by group name.

    Args:
        folder: the set's folder.
        layout: ``"cufed5"`` (``GGG_0.png`` target, ``GGG_k.png`` references
            in one folder), ``"folders"`` (``<group>/target.png`` and
            ``<group>/ref_<key>.png``), see the module docstring; ``"auto"``:
            ``"cufed5"`` when the folder holds images itself, else ``"folders"``.

    Returns:
        A list of :class:`ReferenceGroup`, at least one.

    Raises:
        FileNotFoundError / NotADirectoryError: ``folder`` is not a folder.
        ValueError: unknown layout; no group; a file that breaks the naming
            (a stray image, a group without target or references, references
            not numbered 1..K, two targets); an unreadable ``manifest.json``.
    """
    folder = Path(folder)
    images = list_images(folder)  # raises for a missing folder or a file
    if layout == "auto":
        layout = "cufed5" if images else "folders"
    if layout not in GROUP_LAYOUTS:
        raise ValueError(f"unknown group layout {layout!r}; use one of {', '.join(GROUP_LAYOUTS)} or 'auto'")
    groups = _read_cufed5(folder) if layout == "cufed5" else _read_group_folders(folder)
    if not groups:
        raise ValueError(
            f"no reference group in {folder} (layout {layout!r}): expected GGG_0.png + GGG_1.png ... in the folder "
            "(cufed5) or one subfolder per group holding target.png and ref_1.png ... (folders)"
        )
    return groups


def list_views(folder: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """The views of a multi-view scene: the images of ``folder`` whose name matches ``pattern``, sorted.

    ``pattern`` is a glob compared case-insensitively (``"im*.png"`` keeps
    Middlebury's ``im2.png``/``im6.png`` and leaves out its disparity maps).

    Raises:
        FileNotFoundError / NotADirectoryError: as :func:`srlib.data.list_images`.
    """
    return [path for path in list_images(folder) if fnmatch.fnmatchcase(path.name.lower(), pattern.lower())]


# ---------------------------------------------------------------------------
# finding the registry's sets


def _candidate_folders(root: Path, info: ReferenceDatasetInfo) -> list[Path]:
    folders = [root / info.folder, root / "refsr" / info.name, root / "refsr" / "train" / info.name,
               root / "multiview" / info.name, root / info.name]
    unique: list[Path] = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def _count_items(folder: Path, info: ReferenceDatasetInfo) -> int:
    if info.layout == "views":
        return len(list_views(folder, info.pattern))
    return len(read_groups(folder, "cufed5"))


def find_reference_dataset(name: str, roots: RootsLike | DataRoots = None) -> Path:
    """The folder of a registered reference-SR set or scene (:data:`srlib.data.REFERENCE_DATASETS`).

    In each data root (``roots``, then ``SRLIB_DATA``, then the repository's
    ``data/``; a :class:`srlib.data.DataRoots` is searched exactly as given)
    these folders are tried, the first holding images wins::

        <root>/<registry folder>  (refsr/MultiViewRef, multiview/sceaux_castle, ...)
        <root>/refsr/<Name>   <root>/refsr/train/<Name>   <root>/multiview/<Name>   <root>/<Name>

    Args:
        name: a registered name, any case (``"MultiViewRef"``, ``"castle-p19"``).
        roots: extra data roots, as in :func:`srlib.data.find_dataset`.

    Returns:
        The folder.

    Raises:
        ValueError: unknown name.
        DatasetNotFoundError: no root holds it; the message lists the folders
            searched and where to put the set (these sets have no download).

    Warns:
        DatasetCountWarning: a different number of groups / views than the registry says.
    """
    info = get_reference_dataset_info(name)
    search = roots if isinstance(roots, DataRoots) else data_roots(roots)
    searched: list[Path] = []
    for root in search:
        for folder in _candidate_folders(root, info):
            searched.append(folder)
            if not folder.is_dir() or not list_views(folder, info.pattern):
                continue
            count = _count_items(folder, info)
            if count != info.count:
                unit = "views" if info.layout == "views" else "groups"
                warnings.warn(f"{folder} holds {count} {unit} but {info.name} has {info.count}; it may be an "
                              "incomplete or different copy", DatasetCountWarning, stacklevel=2)
            return folder
    lines = [f"reference-SR set {info.name} was not found."]
    lines += ["Folders searched:", *(f"  {folder}" for folder in searched)] if searched else [
        "No data root exists, so nothing was searched."]
    if search.missing:
        lines += ["Data roots that do not exist (skipped):", *(f"  {root}" for root in search.missing)]
    lines.append(f"It has no download: put it in DIR/{info.folder}/ and point srlib at DIR with SRLIB_DATA=DIR "
                 "or --data-root DIR (the course's shared dataset folder holds refsr/ and multiview/).")
    raise DatasetNotFoundError("\n".join(lines))


def reference_dataset_report(roots: RootsLike | DataRoots = None) -> list[dict]:
    """Which reference-SR sets and scenes are found where, for ``srlib data``.

    Returns:
        One dict per entry of :data:`srlib.data.REFERENCE_DATASETS`, in
        registry order: ``{"name", "kind" ("test"/"train"), "layout", "unit"
        ("groups"/"views"), "found": bool, "path": str | None, "count": int |
        None, "expected": int, "problem": str | None}``; ``problem`` is the
        error of a folder that is found but cannot be read as the set.
    """
    search = roots if isinstance(roots, DataRoots) else data_roots(roots)
    report = []
    for info in REFERENCE_DATASETS.values():
        entry = {"name": info.name, "kind": info.kind, "layout": info.layout,
                 "unit": "views" if info.layout == "views" else "groups", "found": False, "path": None,
                 "count": None, "expected": info.count, "problem": None}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DatasetCountWarning)
                folder = find_reference_dataset(info.name, search)
        except DatasetNotFoundError:
            pass
        except ValueError as error:
            entry.update(found=True, problem=str(error))
        else:
            entry.update(found=True, path=str(folder), count=_count_items(folder, info))
        report.append(entry)
    return report


# ---------------------------------------------------------------------------
# keeping test scenes out of training


def _normalise_name(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def _test_folders(roots: RootsLike | DataRoots) -> list[Path]:
    folders = []
    for info in REFERENCE_DATASETS.values():
        if info.kind != "test":
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DatasetCountWarning)
                folders.append(find_reference_dataset(info.name, roots))
        except (DatasetNotFoundError, ValueError):
            pass
    return folders


def held_out_scenes(roots: RootsLike | DataRoots = None) -> frozenset[str]:
    """The scene names no training may use: those of every test-kind reference set.

    The registry's scene lists (``MultiViewRef``: fountain-P11, Herz-Jesus-P8,
    llff_fern, dinoSparseRing, templeSparseRing, sacre_coeur, NLE_tower) plus
    the ``"scene"`` fields of the ``manifest.json`` of every test set found in
    the data roots (``roots`` as in :func:`find_reference_dataset`).
    """
    names = {scene for info in REFERENCE_DATASETS.values() if info.kind == "test" for scene in info.scenes}
    for folder in _test_folders(roots):
        names.update(scene for scene in _manifest_scenes(folder).values() if scene)
    return frozenset(names)


@lru_cache(maxsize=16)
def _folder_digests(folder: str, signature: tuple) -> dict[str, str]:
    return {hashlib.sha256(Path(folder, name).read_bytes()).hexdigest(): f"{Path(folder).name}/{name}"
            for name, _, _ in signature}


def held_out_digests(roots: RootsLike | DataRoots = None) -> dict[str, str]:
    """SHA-256 (hex) of every image of every test-kind reference set found, mapped to ``"<set folder>/<file>"``.

    Hashes are kept per folder for the process (recomputed when a file's size
    or modification time changes).
    """
    digests: dict[str, str] = {}
    for folder in _test_folders(roots):
        signature = tuple((path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in list_images(folder))
        digests.update(_folder_digests(str(folder.resolve()), signature))
    return digests


class _HeldOut:
    """The test sets' scene names, folders and file hashes, gathered once to check training sources."""

    def __init__(self, roots: RootsLike | DataRoots):
        self.scenes = {_normalise_name(scene): scene for scene in held_out_scenes(roots)}
        self.scenes.update({_normalise_name(name): name for name, info in REFERENCE_DATASETS.items()
                            if info.kind == "test"})
        self.folders = [folder.resolve() for folder in _test_folders(roots)]
        self.digests = held_out_digests(roots)

    def check_source(self, name: str, folder: Path) -> None:
        key = _normalise_name(name)
        if key in self.scenes:
            raise SceneLeakError(f"training source {name!r} ({folder}) is the test scene/set {self.scenes[key]!r} "
                                 "of MultiViewRef; training on it would leak the test set into the model")
        resolved = folder.resolve()
        for test_folder in self.folders:
            if resolved == test_folder or test_folder in resolved.parents or resolved in test_folder.parents:
                raise SceneLeakError(f"training folder {folder} overlaps the test set folder {test_folder}")

    def check_file(self, digest: str, path: Path) -> None:
        if digest in self.digests:
            raise SceneLeakError(f"training image {path} is byte-identical to the test image {self.digests[digest]}; "
                                 "remove it from the training scene")


# ---------------------------------------------------------------------------
# evaluation groups


class ReferenceGroupDataset(Dataset):
    """The groups of a reference-SR set, each an HR target, its LR input and K references, for evaluation.

    Args:
        root_or_name: a registered group set (``"MultiViewRef"``,
            ``"MultiViewRef_mini"``; found with :func:`find_reference_dataset`)
            or the path of a folder in one of the layouts of :func:`read_groups`.
        scale: integer SR scale >= 2 (x4 is the field's reference-SR setting).
        n_refs: use the first ``n_refs`` references of each group (nearest /
            most similar first); ``None``: all of them.
        roots: extra data roots, as in :func:`srlib.data.find_dataset`.
        cache: ``True`` (the default :class:`srlib.data.LRCache`), ``False``
            (compute in memory) or an :class:`LRCache`; used for the target's
            LR image and for the references' shrunk copies.
        layout: ``"auto"``, ``"cufed5"`` or ``"folders"`` (see :func:`read_groups`);
            registered sets are ``"cufed5"``.
        max_groups: keep only the first groups (sorted by name), for quick runs.
        degradation: how the target's LR image is made (``"bicubic"``, the
            default and the reference-SR protocol; see :class:`srlib.data.Degradation`).
            The matching references always use bicubic (:func:`matching_reference`).

    Item ``i`` is a dict:

    * ``"name"``: the group name (``"000"``); ``"scene"``: its scene (``""`` when unknown);
    * ``"hr"``: uint8 RGB ``(3, s*h, s*w)``, 0..255, the target cropped to a multiple of ``s``;
    * ``"lr"``: uint8 RGB ``(3, h, w)``, its LR input (MATLAB bicubic by default);
    * ``"references"``: list of ``n_refs`` uint8 RGB ``(3, H_k, W_k)``, full
      resolution, each cropped to a multiple of ``s`` (sizes differ between references);
    * ``"references_matching"``: list of uint8 ``(3, H_k, W_k)``,
      :func:`matching_reference` of each reference;
    * ``"reference_names"``: list of the reference file names.

    Sizes differ between groups: use ``batch_size=1`` with a DataLoader.

    Attributes:
        name, scale, n_refs (the number used; ``None`` when ``n_refs=None`` and
        the groups hold different numbers, each giving all of its own),
        degradation, folder, groups (the :class:`ReferenceGroup` list).

    Raises:
        DatasetNotFoundError: a registered set not found, or a path that is not a folder.
        ValueError: bad scale, n_refs, max_groups or layout; a registered training
            scene (use :class:`ReferencePatchDataset`); ``n_refs`` larger than
            some group's number of references (the message names them); a target
            smaller than ``2 * scale`` or a reference smaller than ``scale``
            after cropping; the naming errors of :func:`read_groups`.
        ImageReadError: an image header cannot be read.
    """

    def __init__(
        self,
        root_or_name: str | os.PathLike,
        scale: int,
        n_refs: int | None = None,
        roots: RootsLike = None,
        cache: bool | LRCache = True,
        layout: str = "auto",
        max_groups: int | None = None,
        degradation: str | Degradation = "bicubic",
    ):
        self.scale = _check_scale(scale, 2)
        self.degradation = as_degradation(degradation)
        self.degradation.check_scale(scale)
        if n_refs is not None and (isinstance(n_refs, bool) or not isinstance(n_refs, int) or n_refs < 1):
            raise ValueError(f"n_refs must be a positive integer or None (all references), got {n_refs!r}")
        max_groups = _check_max_images(max_groups)
        self.folder, self.name, layout = self._resolve(root_or_name, roots, layout)
        groups = read_groups(self.folder, layout)
        if max_groups is not None:
            groups = groups[:max_groups]
        fewest = min(len(group.references) for group in groups)
        if n_refs is not None and n_refs > fewest:
            short = [f"{group.name} ({len(group.references)})" for group in groups if len(group.references) < n_refs]
            raise ValueError(
                f"n_refs={n_refs} but {len(short)} group(s) of {self.name} have fewer references: "
                f"{', '.join(short[:8])}; use n_refs <= {fewest}"
            )
        self.n_refs = fewest if n_refs is None else n_refs
        if n_refs is None and any(len(group.references) != fewest for group in groups):
            self.n_refs = None  # all references of each group (their numbers differ)
        self._check_sizes(groups)
        self.groups: list[ReferenceGroup] = groups
        self.cache = _make_cache(cache)

    @staticmethod
    def _resolve(root_or_name, roots, layout) -> tuple[Path, str, str]:
        if isinstance(root_or_name, str) and root_or_name.strip().lower() in {n.lower() for n in REFERENCE_DATASETS}:
            info = get_reference_dataset_info(root_or_name)
            if info.layout != "cufed5":
                raise ValueError(f"{info.name} is a training scene (a folder of views), not a set of groups; "
                                 "use ReferencePatchDataset to train on it")
            return find_reference_dataset(info.name, roots), info.name, "cufed5" if layout == "auto" else layout
        path = Path(root_or_name).expanduser()
        if not path.is_dir():
            raise DatasetNotFoundError(
                f"{str(root_or_name)!r} is neither a registered reference-SR set "
                f"({', '.join(n for n, i in REFERENCE_DATASETS.items() if i.layout == 'cufed5')}) nor a folder"
            )
        return path, path.name, layout

    def _check_sizes(self, groups: list[ReferenceGroup]) -> None:
        s = self.scale
        for group in groups:
            height, width = _image_size(group.target)
            if height - height % s < 2 * s or width - width % s < 2 * s:
                raise ValueError(f"{self.name}: target {group.target.name} ({height}x{width}) is smaller than "
                                 f"2 x scale = {2 * s} pixels after cropping to a multiple of {s}")
            for path in group.references[: self.n_refs]:
                height, width = _image_size(path)
                if height < s or width < s:
                    raise ValueError(f"{self.name}: reference {path.name} ({height}x{width}) is smaller than "
                                     f"the scale {s}")

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict:
        group = self.groups[index]
        hr, lr = make_lr_pair(group.target, self.scale, self.degradation, self.cache)  # (3, sH, sW), (3, H, W)
        references, matching = [], []
        for path in group.references[: self.n_refs]:
            reference, shrunk = make_lr_pair(path, self.scale, "bicubic", self.cache)  # (3, H_k, W_k), /s
            references.append(reference)
            matching.append(imresize(shrunk, scale=self.scale))  # (3, H_k, W_k), imresize(imresize(ref, 1/s), s)
        return {"name": group.name, "scene": group.scene, "hr": hr, "lr": lr, "references": references,
                "references_matching": matching,
                "reference_names": [path.name for path in group.references[: self.n_refs]]}

    def __repr__(self) -> str:
        return (f"ReferenceGroupDataset(name={self.name!r}, scale={self.scale}, n_refs={self.n_refs}, "
                f"groups={len(self)}, degradation={self.degradation.key!r}, folder={str(self.folder)!r})")


# ---------------------------------------------------------------------------
# training samples


def _downscale_long_side(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """uint8 ``(3, H, W)`` shrunk with PIL Lanczos so that its long side is ``max_side`` (aspect kept)."""
    height, width = image.shape[-2:]
    ratio = max_side / max(height, width)
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))  # PIL order: (W, H)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize(size, Image.LANCZOS)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).contiguous()


def _footprint_half(ref_size: int, zoom: float, angle_deg: float) -> float:
    """Half the side of the axis-aligned box holding the sample points of a zoomed, rotated square."""
    theta = math.radians(angle_deg)
    return zoom * (ref_size - 1) / 2 * (abs(math.cos(theta)) + abs(math.sin(theta)))


def self_reference_crop(image: torch.Tensor, center: tuple[float, float], size: int, zoom: float,
                        angle_deg: float) -> torch.Tensor:
    """A square crop of an image under a change of scale and rotation, sampled bilinearly.

    Output pixel ``(i, j)``, with ``u = j - (size-1)/2`` and ``v = i - (size-1)/2``,
    takes the image value at (pixel-index coordinates, ``x`` to the right,
    ``y`` down, pixel centres at integers)::

        x = c_x + zoom * (cos(a) * u - sin(a) * v)
        y = c_y + zoom * (sin(a) * u + cos(a) * v)

    so ``zoom > 1`` covers a larger region (content looks smaller) and ``a``
    turns the sampling grid clockwise on screen (the content of the crop turns
    counterclockwise: ``a = 90`` gives ``torch.rot90(crop, 1, (1, 2))``).  With ``zoom = 1``,
    ``a = 0`` and ``c = (t + (size-1)/2, l + (size-1)/2)`` it is exactly
    ``image[:, t:t+size, l:l+size]``.  Samples outside the image take the
    nearest border value (``padding_mode="border"``).

    Args:
        image: uint8 RGB ``(3, H, W)``, 0..255.
        center: ``(c_y, c_x)`` in pixels.
        size: output side in pixels (>= 1).
        zoom: scale factor > 0.
        angle_deg: rotation ``a`` in degrees.

    Returns:
        uint8 ``(3, size, size)``, rounded half up, same device.

    Raises:
        TypeError: not uint8.  ValueError: not ``(3, H, W)``, bad size or zoom.

    Source: srlib's own construction (no paper defines self-references), so
    that single-image sets can train a reference model; AMRSR's supplement
    (Sec. 1) augments its data with flips and rotations only.  Sampled with
    ``torch.nn.functional.grid_sample`` (bilinear, ``align_corners=False``).
    """
    if image.dtype != torch.uint8:
        raise TypeError(f"self_reference_crop expects a uint8 image (0..255), got {image.dtype}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"self_reference_crop expects RGB (3, H, W), got {tuple(image.shape)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if not zoom > 0:
        raise ValueError(f"zoom must be > 0, got {zoom!r}")
    height, width = image.shape[-2:]
    cy, cx = float(center[0]), float(center[1])
    half = _footprint_half(size, zoom, angle_deg)
    y0, x0 = max(0, math.floor(cy - half)), max(0, math.floor(cx - half))
    y1, x1 = min(height, math.ceil(cy + half) + 1), min(width, math.ceil(cx + half) + 1)
    if y1 <= y0 or x1 <= x0:  # the whole footprint lies outside: sample the full image (border values)
        y0, x0, y1, x1 = 0, 0, height, width
    region = image[:, y0:y1, x0:x1].to(torch.float64)  # (3, h, w), the box around the footprint
    theta = math.radians(angle_deg)
    offsets = torch.arange(size, dtype=torch.float64, device=image.device) - (size - 1) / 2  # (size,)
    v, u = torch.meshgrid(offsets, offsets, indexing="ij")  # (size, size) each: row offset v, column offset u
    x = cx + zoom * (math.cos(theta) * u - math.sin(theta) * v) - x0  # (size, size), in region pixels
    y = cy + zoom * (math.sin(theta) * u + math.cos(theta) * v) - y0  # (size, size)
    h, w = region.shape[-2:]
    grid = torch.stack(((2 * x + 1) / w - 1, (2 * y + 1) / h - 1), dim=-1)  # (size, size, 2), align_corners=False
    sampled = F.grid_sample(region[None], grid[None], mode="bilinear", padding_mode="border",
                            align_corners=False)[0]  # (3, size, size), 0..255
    return torch.floor(sampled.clamp(0, 255) + 0.5).to(torch.uint8)


def _check_positive_int(label: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label} must be a positive integer, got {value!r}")
    return value


class ReferencePatchDataset(Dataset):
    """Seeded training samples for reference-based SR: a target patch (LR + HR) and K references.

    Every view of the training scenes, and every image of the single-image
    sets, is loaded once (uint8 HR cropped to a multiple of the scale, and its
    LR image).  Sample ``i`` of epoch ``e`` draws everything from a
    ``torch.Generator`` seeded with :func:`srlib.data.sample_seed` ``(seed, e, i)``,
    so it is the same whatever the DataLoader workers (as :class:`srlib.data.TrainPatchDataset`):

    1. a source image and the sample's kind: with ``self_reference_prob=None``
       an image uniformly among all sources, ``"multi-view"`` for a scene view
       and ``"self-reference"`` for an image of ``images``; with a probability
       ``q``, ``"self-reference"`` with probability ``q`` (from ``images``, or
       from the scene views when ``images`` is empty), else ``"multi-view"``;
    2. an LR patch ``p x p`` uniformly among the positions that fit and the
       aligned HR patch ``P = s*p`` (as :class:`srlib.data.TrainPatchDataset`);
    3. ``n_refs`` references, ``R x R`` HR pixels (``ref_size``, default ``P``):

       * ``"multi-view"``: ``n_refs`` distinct other views of the same scene,
         drawn uniformly, ordered by distance in capture (file) order, nearest
         first; from each, the crop centred at the target patch's centre
         (mapped by relative position when the views differ in size) moved by
         a uniform offset of up to ``ref_jitter * R`` pixels in each direction
         and kept inside the view;
       * ``"self-reference"``: ``n_refs`` crops of the same HR image
         (:func:`self_reference_crop`), each with a zoom log-uniform in
         ``zoom_range`` and a rotation uniform in ``[-max_rotation, max_rotation]``
         degrees, centred uniformly among the positions where the whole rotated
         footprint fits, redrawn (up to 16 times) until the centre lies at
         least ``self_offset * P`` pixels (max-norm) from the target patch's
         centre, i.e. outside the target patch for the default 0.5 (if no draw
         does, the admissible centre farthest from the target is taken);

    4. the matching copies :func:`matching_reference` of the reference crops;
    5. with ``augment``: horizontal flip, vertical flip, transpose, each with
       probability 1/2, the same for target and references.

    Our reading of the papers where they leave it open (AMRSR's supplement,
    Sec. 1, says only that the data are augmented by flips and rotations):
    references are crops rather than whole views, to keep memory and matching
    cost small and the batch shapes fixed; the crop sits around the target's
    position because nearby views of a posed capture see about the same
    content at about the same place, while a crop anywhere in the view would
    often show other content.
    Views larger than ``max_side`` (default 512) are first shrunk with PIL
    Lanczos to that long side, as the MultiViewRef and ``refsr/train`` images
    were, so that training and test views have similar detail per pixel (the
    Sceaux photographs are 2832x2128).  The self-reference zoom (0.8..1.25)
    and rotation (+-30 degrees) are moderate changes, a stand-in for the
    change of viewpoint between real views.

    Memory: uint8 HR + LR of every source; the eight default scenes (89 views
    at <= 512 px) take about 47 MB, T91 about 16 MB.

    Args:
        scenes: training scenes: registered names (default :data:`TRAIN_SCENES`:
            castle-P19, entry-P10, ngp_fox, sceaux_castle, bundler_kermit,
            bundler_et, middlebury_cones, middlebury_teddy) or folders of
            views (the scene's name is the folder's name); may be empty.
        images: single-image sets used for self-reference samples: registry names
            (``"T91"``, found with :func:`srlib.data.find_dataset`) or folders.
        scale: integer SR scale >= 2.
        lr_patch: LR patch side ``p``; the HR patch is ``P = scale * p``.
        n_refs: references per sample (>= 1); a scene needs ``n_refs + 1``
            usable views for multi-view samples (scenes with fewer are skipped
            with a warning).
        ref_size: reference side ``R`` in HR pixels, a multiple of ``scale``
            (default ``P``).
        samples_per_epoch: ``len(dataset)``.
        self_reference_prob: ``None`` or a probability in [0, 1], see step 1.
        zoom_range: ``(low, high)``, 0 < low <= high, self-reference zoom range.
        max_rotation: self-reference rotation bound in degrees (>= 0).
        ref_jitter: multi-view crop offset bound as a fraction of ``R`` (>= 0).
        self_offset: least distance of a self-reference centre from the target
            centre, as a fraction of ``P`` (>= 0).
        augment: random flips and transposes.
        seed: base seed (integer).
        roots: extra data roots, as in :func:`srlib.data.find_dataset`.
        cache: as in :class:`ReferenceGroupDataset` (views shrunk by ``max_side``
            are degraded in memory).
        max_side: shrink views whose long side exceeds it; ``None`` keeps them as they are.
        max_images: use only the first views of each scene / images of each set.
        progress: loading bar (``None``: tqdm's default).
        degradation: how the LR targets are made (default ``"bicubic"``).

    Item ``i`` is a dict:

    * ``"lr"``: float32 RGB ``(3, p, p)`` in [0, 1]; ``"hr"``: float32 ``(3, P, P)``;
    * ``"references"``: float32 ``(n_refs, 3, R, R)``, HR crops;
    * ``"references_matching"``: float32 ``(n_refs, 3, R, R)``, their matching copies;
    * ``"kind"``: ``"multi-view"`` or ``"self-reference"``; ``"source"``: scene or set
      name; ``"image"``: the target's file name;
    * ``"target_box"``: int64 ``(3,)``, ``(top, left, P)`` of the HR patch in the
      (cropped, possibly shrunk) source image, before augmentation;
    * ``"ref_params"``: float64 ``(n_refs, 4)``, per reference ``(c_y, c_x, zoom,
      angle_deg)`` in its source image, before augmentation (multi-view: zoom 1, angle 0);
    * ``"ref_images"``: int64 ``(n_refs,)``, index of each reference's source
      image in :attr:`paths` (self-reference: the target's own index).

    Attributes:
        paths, sources (scene / set name per image), hr_images, lr_images, scale,
        lr_patch, n_refs, ref_size, epoch.

    Raises:
        SceneLeakError: a source is a test scene or set, lies in a test set's
            folder, or holds a file byte-identical to a test file.
        ValueError: bad arguments; no source usable for the requested kinds
            (the message says why).
        TypeError: ``seed`` is not an integer.
        DatasetNotFoundError: a named scene or set is not found.

    Warns:
        UserWarning: once per reason, listing skipped views/images (too small,
            scene with too few views).
    """

    def __init__(
        self,
        scenes: str | os.PathLike | Sequence[str | os.PathLike] = TRAIN_SCENES,
        images: str | os.PathLike | Sequence[str | os.PathLike] = (),
        scale: int = 4,
        lr_patch: int = 24,
        n_refs: int = 1,
        ref_size: int | None = None,
        samples_per_epoch: int = 1000,
        self_reference_prob: float | None = None,
        zoom_range: tuple[float, float] = (0.8, 1.25),
        max_rotation: float = 30.0,
        ref_jitter: float = 0.25,
        self_offset: float = 0.5,
        augment: bool = True,
        seed: int = 0,
        roots: RootsLike = None,
        cache: bool | LRCache = True,
        max_side: int | None = 512,
        max_images: int | None = None,
        progress: bool | None = None,
        degradation: str | Degradation = "bicubic",
    ):
        self.scale = _check_scale(scale, 2)
        self.degradation = as_degradation(degradation)
        self.degradation.check_scale(scale)
        self.lr_patch = _check_positive_int("lr_patch", lr_patch)
        self.n_refs = _check_positive_int("n_refs", n_refs)
        self.samples_per_epoch = _check_positive_int("samples_per_epoch", samples_per_epoch)
        patch = scale * lr_patch
        self.ref_size = patch if ref_size is None else _check_positive_int("ref_size", ref_size)
        if self.ref_size % scale:
            raise ValueError(f"ref_size {self.ref_size} must be a multiple of the scale {scale} "
                             "(the matching copy shrinks it by the scale)")
        if self_reference_prob is not None and not (isinstance(self_reference_prob, (int, float))
                                                    and not isinstance(self_reference_prob, bool)
                                                    and 0.0 <= self_reference_prob <= 1.0):
            raise ValueError(f"self_reference_prob must be None or a number in [0, 1], got {self_reference_prob!r}")
        low, high = (float(value) for value in zoom_range)
        if not 0 < low <= high:
            raise ValueError(f"zoom_range must be (low, high) with 0 < low <= high, got {zoom_range!r}")
        for label, value in (("max_rotation", max_rotation), ("ref_jitter", ref_jitter),
                             ("self_offset", self_offset)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        if max_side is not None:
            _check_positive_int("max_side", max_side)
        max_images = _check_max_images(max_images)
        self.self_reference_prob = None if self_reference_prob is None else float(self_reference_prob)
        self.zoom_range, self.max_rotation = (low, high), float(max_rotation)
        self.ref_jitter, self.self_offset = float(ref_jitter), float(self_offset)
        self.augment, self.seed, self.epoch, self.max_side = bool(augment), seed, 0, max_side

        scene_specs = [scenes] if isinstance(scenes, (str, os.PathLike)) else list(scenes)
        image_specs = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        if not scene_specs and not image_specs:
            raise ValueError("give at least one training scene or one single-image set (e.g. images=('T91',))")
        guard = _HeldOut(roots)
        sources: list[tuple[str, Path, list[Path], bool]] = []  # (name, folder, files, is_scene)
        for spec in scene_specs:
            name, folder, files = self._scene_files(spec, roots)
            sources.append((name, folder, files, True))
        for spec in image_specs:
            name, folder, files = self._image_files(spec, roots)
            sources.append((name, folder, files, False))
        for name, folder, _, _ in sources:
            guard.check_source(name, folder)
        cache_obj = _make_cache(cache)

        self.paths: list[Path] = []
        self.sources: list[str] = []
        self.hr_images: list[torch.Tensor] = []
        self.lr_images: list[torch.Tensor] = []
        self.scene_members: dict[str, list[int]] = {}
        self._single: list[int] = []
        small: list[str] = []
        jobs = [(name, path, is_scene) for name, _, files, is_scene in sources
                for path in (files[:max_images] if max_images is not None else files)]
        for name, path, is_scene in tqdm(jobs, desc="loading reference training images", unit="img", leave=False,
                                         disable=None if progress is None else not progress):
            hr, lr = self._load(path, guard, cache_obj)
            if min(hr.shape[-2:]) < max(patch, self.ref_size if is_scene else patch):
                small.append(f"{name}/{path.name} ({hr.shape[-2]}x{hr.shape[-1]})")
                continue
            index = len(self.paths)
            self.paths.append(path)
            self.sources.append(name)
            self.hr_images.append(hr)
            self.lr_images.append(lr)
            if is_scene:
                self.scene_members.setdefault(name, []).append(index)
            else:
                self._single.append(index)
        if small:
            warnings.warn(f"skipped {len(small)} image(s) smaller than the {patch}x{patch} HR patch or the "
                          f"{self.ref_size}x{self.ref_size} reference: {', '.join(small[:10])}",
                          UserWarning, stacklevel=2)
        self._build_pools()

    # -- sources -------------------------------------------------------------

    @staticmethod
    def _scene_files(spec, roots) -> tuple[str, Path, list[Path]]:
        if isinstance(spec, str) and spec.strip().lower() in {n.lower() for n in REFERENCE_DATASETS}:
            info = get_reference_dataset_info(spec)
            if info.kind != "train":
                raise SceneLeakError(f"{info.name} is a test set; it cannot be a training scene")
            folder = find_reference_dataset(info.name, roots)
            return info.name, folder, list_views(folder, info.pattern)
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise DatasetNotFoundError(f"training scene {str(spec)!r} is neither a registered scene "
                                       f"({', '.join(TRAIN_SCENES)}) nor a folder of views")
        files = list_views(folder)
        if not files:
            raise ValueError(f"training scene folder {folder} holds no images")
        return folder.name, folder, files

    @staticmethod
    def _image_files(spec, roots) -> tuple[str, Path, list[Path]]:
        if isinstance(spec, str) and spec.strip().lower() in {n.lower() for n in REFERENCE_DATASETS}:
            raise SceneLeakError(f"{spec} is a reference-SR set; give single-image training sets (e.g. 'T91') "
                                 "as images=")
        known = isinstance(spec, str) and spec.strip().lower() in {n.lower() for n in DATASETS} | set(DATASET_ALIASES)
        if not known and Path(spec).expanduser().is_dir():
            folder = Path(spec).expanduser()
            name = folder.name
        else:
            folder = find_dataset(str(spec), roots)
            name = get_dataset_info(spec).name if known else str(spec)
        files = list_images(folder)
        if not files:
            raise ValueError(f"image folder {folder} holds no images")
        return name, folder, files

    def _load(self, path: Path, guard: _HeldOut, cache: LRCache | None) -> tuple[torch.Tensor, torch.Tensor]:
        data = read_file_bytes(path)
        digest = hashlib.sha256(data).hexdigest()
        guard.check_file(digest, path)
        if self.max_side is not None and max(_image_size(path)) > self.max_side:
            image = _downscale_long_side(decode_image(data, path), self.max_side)  # (3, H', W'), long side max_side
            hr = crop_to_multiple(image, self.scale).contiguous()
            return hr, self.degradation.apply(hr, self.scale, hr_sha256=digest)
        return make_lr_pair(path, self.scale, self.degradation, cache)

    def _self_eligible(self, index: int) -> bool:
        angle = min(self.max_rotation, 45.0)
        half = _footprint_half(self.ref_size, self.zoom_range[1], angle)
        side = min(self.hr_images[index].shape[-2:])
        return side >= 2 * half + 2 and side >= self.scale * self.lr_patch

    def _build_pools(self) -> None:
        few = [f"{name} ({len(members)} usable)" for name, members in self.scene_members.items()
               if len(members) < self.n_refs + 1]
        if few:
            warnings.warn(f"{len(few)} scene(s) have fewer than n_refs + 1 = {self.n_refs + 1} usable views and give "
                          f"no multi-view sample: {', '.join(few)}", UserWarning, stacklevel=3)
        self._multi_view = [index for members in self.scene_members.values() if len(members) >= self.n_refs + 1
                            for index in members]
        singles = self._single if self._single else (
            [index for members in self.scene_members.values() for index in members]
            if self.self_reference_prob else [])
        self._self_pool = [index for index in singles if self._self_eligible(index)]
        if len(self._self_pool) < len(singles):
            warnings.warn(f"{len(singles) - len(self._self_pool)} image(s) are too small for self-references of "
                          f"{self.ref_size} pixels at zoom up to {self.zoom_range[1]} and rotation up to "
                          f"{self.max_rotation} degrees; they give no self-reference sample", UserWarning,
                          stacklevel=3)
        if self.self_reference_prob is None:
            self._pool = [("multi-view", i) for i in self._multi_view] + [("self-reference", i) for i in
                                                                           self._self_pool]
            if not self._pool:
                raise ValueError("no usable training source: no scene with n_refs + 1 large enough views and no "
                                 "image large enough for self-references")
            return
        if self.self_reference_prob < 1 and not self._multi_view:
            raise ValueError(f"self_reference_prob={self.self_reference_prob} asks for multi-view samples, but no "
                             f"scene has n_refs + 1 = {self.n_refs + 1} views of at least "
                             f"{max(self.ref_size, self.scale * self.lr_patch)} pixels")
        if self.self_reference_prob > 0 and not self._self_pool:
            raise ValueError(f"self_reference_prob={self.self_reference_prob} asks for self-reference samples, but "
                             "no image is large enough (lower ref_size, zoom_range or max_rotation)")

    # -- sampling ------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` draws (integer >= 0)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _pick(self, generator: torch.Generator) -> tuple[str, int]:
        def draw(high: int) -> int:
            return int(torch.randint(high, (1,), generator=generator))

        if self.self_reference_prob is None:
            return self._pool[draw(len(self._pool))]
        if float(torch.rand((), generator=generator, dtype=torch.float64)) < self.self_reference_prob:
            return "self-reference", self._self_pool[draw(len(self._self_pool))]
        return "multi-view", self._multi_view[draw(len(self._multi_view))]

    def _multi_view_references(self, index: int, center: tuple[float, float],
                               generator: torch.Generator) -> tuple[torch.Tensor, list, list[int]]:
        members = self.scene_members[self.sources[index]]
        position = members.index(index)
        others = [m for m in members if m != index]
        picks = [others[int(i)] for i in torch.randperm(len(others), generator=generator)[: self.n_refs]]
        picks.sort(key=lambda m: (abs(members.index(m) - position), members.index(m)))  # nearest in capture order
        target_h, target_w = self.hr_images[index].shape[-2:]
        size, crops, params = self.ref_size, [], []
        for m in picks:
            view = self.hr_images[m]  # (3, H_r, W_r)
            height, width = view.shape[-2:]
            jitter = (torch.rand(2, generator=generator, dtype=torch.float64) * 2 - 1) * self.ref_jitter * size
            cy = (center[0] + 0.5) * height / target_h - 0.5 + float(jitter[0])  # same relative position
            cx = (center[1] + 0.5) * width / target_w - 0.5 + float(jitter[1])
            top = min(max(round(cy - (size - 1) / 2), 0), height - size)
            left = min(max(round(cx - (size - 1) / 2), 0), width - size)
            crops.append(view[:, top : top + size, left : left + size])  # (3, R, R)
            params.append((top + (size - 1) / 2, left + (size - 1) / 2, 1.0, 0.0))
        return torch.stack(crops), params, picks  # (K, 3, R, R)

    def _self_references(self, index: int, center: tuple[float, float],
                         generator: torch.Generator) -> tuple[torch.Tensor, list]:
        image = self.hr_images[index]  # (3, H, W)
        height, width = image.shape[-2:]
        size = self.ref_size
        frac = ((size - 1) / 2) % 1  # centres at a + frac: zoom 1 and angle 0 sample whole pixels
        least = self.self_offset * self.scale * self.lr_patch
        log_low, log_high = math.log(self.zoom_range[0]), math.log(self.zoom_range[1])

        def uniform() -> float:
            return float(torch.rand((), generator=generator, dtype=torch.float64))

        crops, params = [], []
        for _ in range(self.n_refs):
            zoom = math.exp(log_low + (log_high - log_low) * uniform())
            angle = (2 * uniform() - 1) * self.max_rotation
            half = _footprint_half(size, zoom, angle)
            ranges = [(math.ceil(half - frac), math.floor(side - 1 - half - frac)) for side in (height, width)]
            best = None
            for _ in range(16):
                cy, cx = (lo + int(torch.randint(hi - lo + 1, (1,), generator=generator)) + frac for lo, hi in ranges)
                if max(abs(cy - center[0]), abs(cx - center[1])) >= least:
                    best = (cy, cx)
                    break
            if best is None:  # the admissible centre farthest from the target's
                corners = [(ry + frac, rx + frac) for ry in ranges[0] for rx in ranges[1]]
                best = max(corners, key=lambda c: max(abs(c[0] - center[0]), abs(c[1] - center[1])))
            crops.append(self_reference_crop(image, best, size, zoom, angle))  # (3, R, R)
            params.append((best[0], best[1], zoom, angle))
        return torch.stack(crops), params  # (K, 3, R, R)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(f"sample index {index} out of range [0, {self.samples_per_epoch})")
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, int(index)))
        kind, k = self._pick(generator)
        hr, lr = self.hr_images[k], self.lr_images[k]  # (3, sH, sW), (3, H, W)
        p, s = self.lr_patch, self.scale
        top = int(torch.randint(lr.shape[-2] - p + 1, (1,), generator=generator))
        left = int(torch.randint(lr.shape[-1] - p + 1, (1,), generator=generator))
        lr_patch = lr[:, top : top + p, left : left + p]  # (3, p, p)
        hr_patch = hr[:, s * top : s * (top + p), s * left : s * (left + p)]  # (3, P, P)
        center = (s * top + (s * p - 1) / 2, s * left + (s * p - 1) / 2)
        if kind == "multi-view":
            references, params, ref_images = self._multi_view_references(k, center, generator)
        else:
            references, params = self._self_references(k, center, generator)
            ref_images = [k] * self.n_refs
        matching = matching_reference(references, s)  # (K, 3, R, R)
        if self.augment:
            flip_h, flip_v, transpose = (bool(bit) for bit in torch.randint(2, (3,), generator=generator))
            tensors = [lr_patch, hr_patch, references, matching]
            if flip_h:
                tensors = [t.flip(-1) for t in tensors]
            if flip_v:
                tensors = [t.flip(-2) for t in tensors]
            if transpose:
                tensors = [t.transpose(-1, -2) for t in tensors]
            lr_patch, hr_patch, references, matching = tensors
        return {
            "lr": to_float(lr_patch.contiguous()),
            "hr": to_float(hr_patch.contiguous()),
            "references": to_float(references.contiguous()),
            "references_matching": to_float(matching.contiguous()),
            "kind": kind,
            "source": self.sources[k],
            "image": self.paths[k].name,
            "target_box": torch.tensor([s * top, s * left, s * p], dtype=torch.int64),
            "ref_params": torch.tensor(params, dtype=torch.float64),  # (K, 4)
            "ref_images": torch.tensor(ref_images, dtype=torch.int64),  # (K,)
        }

    def __repr__(self) -> str:
        return (f"ReferencePatchDataset(scenes={list(self.scene_members)}, images={len(self._single)} single, "
                f"scale={self.scale}, lr_patch={self.lr_patch}, n_refs={self.n_refs}, ref_size={self.ref_size}, "
                f"samples_per_epoch={self.samples_per_epoch}, self_reference_prob={self.self_reference_prob}, "
                f"seed={self.seed}, epoch={self.epoch})")
