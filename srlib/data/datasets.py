"""PyTorch datasets: whole benchmark images for evaluation, random patches for training.

* :class:`BenchmarkDataset` gives each image of a benchmark set (Set5, B100,
  ...) as an (HR, LR) pair of uint8 tensors, the HR image cropped to a
  multiple of the scale, exactly what the evaluation protocol compares.
  The LR image is the bicubic one unless another degradation is asked for
  (``degradation="bd"`` or ``Degradation("dn", noise_sigma=15)``, see
  :mod:`srlib.data.degrade`); so are the training patches.
* :class:`TrainPatchDataset` preloads training images and draws aligned
  (LR, HR) patches with flips and transposes, the EDSR recipe.  Every random
  choice comes from a ``torch.Generator`` seeded from ``(seed, epoch, index)``,
  so sample ``i`` of epoch ``e`` is the same whatever the number of DataLoader
  workers, and a run can be repeated exactly.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .degrade import Degradation, LRCache, _check_scale, as_degradation, make_lr_pair
from .io import ImageReadError, to_float
from .locate import RootsLike, find_dataset, list_images
from .registry import get_dataset_info

__all__ = ["BenchmarkDataset", "TrainPatchDataset", "sample_seed"]


def _make_cache(cache: bool | LRCache | None) -> LRCache | None:
    if isinstance(cache, LRCache):
        return cache
    return LRCache() if cache else None


def _check_max_images(max_images: int | None) -> int | None:
    if max_images is None:
        return None
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise ValueError(f"max_images must be a positive integer or None, got {max_images!r}")
    return max_images


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except FileNotFoundError as error:
        raise ImageReadError(f"cannot read image {path}: the file does not exist") from error
    except Exception as error:
        raise ImageReadError(f"cannot read image {path}: {type(error).__name__}: {error}") from error
    return height, width


class BenchmarkDataset(Dataset):
    """The images of a benchmark set as (HR, LR) pairs for evaluation.

    Args:
        name: dataset name (``"Set5"``, ``"B100"``, ...; any case, aliases accepted).
        scale: integer upscaling factor >= 2.
        roots: extra data roots searched first (``--data-root``), then
            ``SRLIB_DATA`` and ``data/``; as in :func:`srlib.data.find_dataset`.
        cache: ``True`` to use the on-disk :class:`LRCache` (default
            location), ``False`` to compute LR images in memory, or an
            :class:`LRCache` instance.
        max_images: keep only the first ``max_images`` images (sorted by file
            name), for quick runs.
        degradation: how the LR images are made: a :class:`srlib.data.degrade.Degradation`
            or its key, ``"bicubic"`` (default), ``"bd"`` (x3 only) or ``"dn_s15"``.

    Item ``i`` is a dict:

    * ``"name"``: file stem (``"baby"``);
    * ``"hr"``: uint8 RGB ``(3, s*h, s*w)``, 0..255, cropped to a multiple of ``s``;
    * ``"lr"``: uint8 RGB ``(3, h, w)``, the LR image made with ``degradation``.

    Images differ in size, so use ``batch_size=1`` with a DataLoader (or
    iterate the dataset directly).

    Attributes:
        name, scale, degradation (a ``Degradation``), folder (the HR folder),
        paths (the image files used).

    Raises:
        DatasetNotFoundError: the set is not found (see :func:`find_dataset`).
        ValueError: bad scale or max_images; a degradation unknown or not
            defined at this scale; no image left.
        ImageReadError: an image header cannot be read.

    Warns:
        UserWarning: images smaller than ``2 * scale`` after cropping are skipped.
    """

    def __init__(
        self,
        name: str,
        scale: int,
        roots: RootsLike = None,
        cache: bool | LRCache = True,
        max_images: int | None = None,
        degradation: str | Degradation = "bicubic",
    ):
        self.scale = _check_scale(scale, 2)
        self.degradation = as_degradation(degradation)
        self.degradation.check_scale(scale)
        max_images = _check_max_images(max_images)
        self.folder = find_dataset(name, roots)
        try:
            self.name = get_dataset_info(name).name
        except ValueError:
            self.name = str(name)
        paths = list_images(self.folder)
        if max_images is not None:
            paths = paths[:max_images]
        usable, too_small = [], []
        for path in paths:
            height, width = _image_size(path)
            if height - height % scale < 2 * scale or width - width % scale < 2 * scale:
                too_small.append(f"{path.name} ({height}x{width})")
            else:
                usable.append(path)
        if too_small:
            warnings.warn(
                f"{self.name}: skipped {len(too_small)} image(s) smaller than 2 x scale = {2 * scale} pixels "
                f"after cropping: {', '.join(too_small)}",
                UserWarning,
                stacklevel=2,
            )
        if not usable:
            raise ValueError(f"{self.name} in {self.folder} has no image large enough for scale {scale}")
        self.paths: list[Path] = usable
        self.cache = _make_cache(cache)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        hr, lr = make_lr_pair(path, self.scale, self.degradation, self.cache)
        return {"name": path.stem, "hr": hr, "lr": lr}

    def __repr__(self) -> str:
        return (f"BenchmarkDataset(name={self.name!r}, scale={self.scale}, degradation={self.degradation.key!r}, "
                f"images={len(self)}, folder={str(self.folder)!r})")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The generator seed of sample ``index`` in ``epoch``: ``seed * 1_000_003 + epoch * 100_003 + index``.

    Reduced modulo ``2**63`` so that any integers give a valid torch seed.
    """
    return (seed * 1_000_003 + epoch * 100_003 + index) % (1 << 63)


class TrainPatchDataset(Dataset):
    """Random aligned (LR, HR) patches from training images, with flips and transposes.

    All (HR, LR) pairs of the named datasets are loaded into memory once
    (uint8; LR images through the :class:`LRCache`).  Sample ``i``:

    1. picks an image uniformly at random;
    2. picks an LR patch ``lr[:, y:y+p, x:x+p]`` uniformly among the positions
       that fit, and the aligned HR patch ``hr[:, s*y:s*(y+p), s*x:s*(x+p)]``;
    3. with ``augment``: flips horizontally, flips vertically and transposes
       (swaps H and W), each with probability 1/2, the same for both patches.

    The randomness of sample ``i`` comes from a ``torch.Generator`` seeded with
    :func:`sample_seed` ``(seed, epoch, i)``, so samples do not depend on the
    number of DataLoader workers or on the order they are drawn in.  Call
    :meth:`set_epoch` before each epoch to draw new patches (with
    ``persistent_workers=True`` the workers keep their own copy, so create the
    DataLoader without it).

    Memory: the whole set is held as uint8 (DIV2K: about 7 GB for HR + LR at x2).

    Args:
        names: a dataset name or a sequence of names (``("T91",)``, ``("DIV2K",)``).
        scale: integer upscaling factor >= 2.
        lr_patch: LR patch side ``p`` in pixels (the HR patch is ``scale * p``).
        samples_per_epoch: ``len(dataset)``, patches per epoch.
        augment: random flips and transposes.
        seed: base seed.
        roots: extra data roots searched first (``--data-root``), then
            ``SRLIB_DATA`` and ``data/``; as in :func:`srlib.data.find_dataset`.
        cache: as in :class:`BenchmarkDataset`.
        max_images: use only the first ``max_images`` images of each dataset.
        progress: show a bar while the images load (``None``: only on a terminal or in a
            notebook, tqdm's default).
        degradation: how the LR images are made, as in :class:`BenchmarkDataset`
            (default ``"bicubic"``; DN noise is fixed per image, not redrawn per patch).

    Item ``i`` is ``(lr, hr)``: float32 RGB in [0, 1], shapes ``(3, p, p)`` and
    ``(3, scale*p, scale*p)``.

    Raises:
        ValueError: bad arguments; no image whose LR is at least ``p x p``
            (the message gives the smallest LR size and ``p``).
        DatasetNotFoundError: a named set is not found.

    Warns:
        UserWarning: once, listing images whose LR is smaller than the patch (skipped).
    """

    def __init__(
        self,
        names: str | Sequence[str] = ("T91",),
        scale: int = 2,
        lr_patch: int = 48,
        samples_per_epoch: int = 1000,
        augment: bool = True,
        seed: int = 0,
        roots: RootsLike = None,
        cache: bool | LRCache = True,
        max_images: int | None = None,
        progress: bool | None = None,
        degradation: str | Degradation = "bicubic",
    ):
        self.names = (names,) if isinstance(names, str) else tuple(names)
        if not self.names:
            raise ValueError("names must list at least one dataset, e.g. ('T91',)")
        self.scale = _check_scale(scale, 2)
        self.degradation = as_degradation(degradation)
        self.degradation.check_scale(scale)
        for label, value in (("lr_patch", lr_patch), ("samples_per_epoch", samples_per_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        max_images = _check_max_images(max_images)
        self.lr_patch = lr_patch
        self.samples_per_epoch = samples_per_epoch
        self.augment = bool(augment)
        self.seed = seed
        self.epoch = 0
        cache_obj = _make_cache(cache)

        paths: list[Path] = []
        self.folders: list[Path] = []
        for name in self.names:
            folder = find_dataset(name, roots)
            self.folders.append(folder)
            found = list_images(folder)
            paths += found[:max_images] if max_images is not None else found

        self.hr_images: list[torch.Tensor] = []
        self.lr_images: list[torch.Tensor] = []
        self.paths: list[Path] = []
        too_small: list[str] = []
        smallest: tuple[int, int] | None = None
        for path in tqdm(paths, desc="loading training images", unit="img", leave=False,
                         disable=None if progress is None else not progress):
            hr, lr = make_lr_pair(path, scale, self.degradation, cache_obj)
            height, width = lr.shape[-2:]
            if smallest is None or height * width < smallest[0] * smallest[1]:
                smallest = (height, width)
            if height < lr_patch or width < lr_patch:
                too_small.append(f"{path.name} (LR {height}x{width})")
                continue
            self.hr_images.append(hr)
            self.lr_images.append(lr)
            self.paths.append(path)
        if not self.hr_images:
            raise ValueError(
                f"no training image of {', '.join(self.names)} is large enough for an LR patch of "
                f"{lr_patch}x{lr_patch} at scale {scale}: the smallest LR image is "
                f"{smallest[0]}x{smallest[1]}; use a smaller lr_patch"
                if smallest is not None
                else f"no training images in {', '.join(str(f) for f in self.folders)}"
            )
        if too_small:
            warnings.warn(
                f"skipped {len(too_small)} training image(s) whose LR is smaller than the "
                f"{lr_patch}x{lr_patch} patch: {', '.join(too_small)}",
                UserWarning,
                stacklevel=2,
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose patches ``__getitem__`` draws (integer >= 0)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(f"sample index {index} out of range [0, {self.samples_per_epoch})")
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, int(index)))

        def draw(high: int) -> int:
            return int(torch.randint(high, (1,), generator=generator))

        k = draw(len(self.hr_images))
        hr, lr = self.hr_images[k], self.lr_images[k]
        p, s = self.lr_patch, self.scale
        top = draw(lr.shape[-2] - p + 1)
        left = draw(lr.shape[-1] - p + 1)
        lr_patch = lr[:, top : top + p, left : left + p]
        hr_patch = hr[:, s * top : s * (top + p), s * left : s * (left + p)]
        if self.augment:
            flip_h, flip_v, transpose = (bool(bit) for bit in torch.randint(2, (3,), generator=generator))
            if flip_h:
                lr_patch, hr_patch = lr_patch.flip(-1), hr_patch.flip(-1)
            if flip_v:
                lr_patch, hr_patch = lr_patch.flip(-2), hr_patch.flip(-2)
            if transpose:
                lr_patch, hr_patch = lr_patch.transpose(-1, -2), hr_patch.transpose(-1, -2)
        return to_float(lr_patch.contiguous()), to_float(hr_patch.contiguous())

    def __repr__(self) -> str:
        return (
            f"TrainPatchDataset(names={self.names}, scale={self.scale}, degradation={self.degradation.key!r}, "
            f"lr_patch={self.lr_patch}, "
            f"images={len(self.hr_images)}, samples_per_epoch={self.samples_per_epoch}, "
            f"augment={self.augment}, seed={self.seed}, epoch={self.epoch})"
        )
