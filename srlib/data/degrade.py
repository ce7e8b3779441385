"""Making LR images from HR images, as the SR papers do, and caching them on disk.

The bicubic degradation of every published SR table (SRCNN, EDSR, RCAN, NLSN,
DLSN, ...):

1. crop the HR image so that its height and width are multiples of the scale
   (top-left corner kept), MATLAB's ``modcrop``;
2. shrink it with MATLAB's ``imresize(HR, 1/scale, 'bicubic')`` (antialiased
   bicubic, :func:`srlib.imresize.imresize`);
3. round to 8 bit once, as saving the LR image to PNG does.

Computing LR images takes a moment for large sets, so :class:`LRCache` keeps
them as PNG files keyed by the SHA-256 of the HR file, the scale, the
degradation and :data:`CACHE_VERSION`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable

import torch

from ..imresize import imresize
from .io import ImageReadError, decode_image, load_image, read_file_bytes, save_image

__all__ = [
    "CACHE_VERSION",
    "DEGRADATIONS",
    "CacheWarning",
    "crop_to_multiple",
    "bicubic_degrade",
    "default_cache_dir",
    "LRCache",
    "make_lr_pair",
]

#: Bump when the LR computation changes, so that old cache files are not reused.
CACHE_VERSION = 1


class CacheWarning(UserWarning):
    """The LR cache cannot be written; srlib goes on without it."""


def _check_scale(scale, minimum: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < minimum:
        raise ValueError(f"scale must be an integer >= {minimum}, got {scale!r}")
    return scale


def crop_to_multiple(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop an image so that its height and width are multiples of ``scale``.

    Keeps the top-left corner: ``hr[..., :H - H % scale, :W - W % scale]``, as
    MATLAB's ``modcrop`` in the SR papers' evaluation code does.

    Args:
        hr: tensor ``(..., H, W)``, e.g. uint8 RGB ``(3, H, W)`` or ``(N, 3, H, W)``.
        scale: integer >= 1.

    Returns:
        A view of ``hr`` of shape ``(..., H - H % scale, W - W % scale)``.

    Raises:
        ValueError: ``scale`` is not a positive integer, or the image is
            smaller than ``scale`` in either dimension.
    """
    _check_scale(scale, 1)
    if hr.dim() < 2:
        raise ValueError(f"crop_to_multiple needs a tensor (..., H, W), got shape {tuple(hr.shape)}")
    height, width = hr.shape[-2:]
    if height < scale or width < scale:
        raise ValueError(f"image {height}x{width} is smaller than the scale {scale}; nothing is left after cropping")
    return hr[..., : height - height % scale, : width - width % scale]


def bicubic_degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The standard bicubic LR image: MATLAB ``imresize(HR, 1/scale, 'bicubic')``, rounded to 8 bit.

    Args:
        hr: uint8 RGB ``(3, H, W)`` or ``(N, 3, H, W)``, 0..255, with ``H`` and
            ``W`` multiples of ``scale`` (use :func:`crop_to_multiple` first).
            Any device.
        scale: integer downscaling factor >= 2.

    Returns:
        uint8 LR image ``(3, H/scale, W/scale)`` or ``(N, 3, H/scale, W/scale)``,
        same device, rounded once (half away from zero) as a saved PNG.

    Raises:
        ValueError: ``scale`` is not an integer >= 2; ``H`` or ``W`` is not a
            multiple of ``scale``; the tensor is not RGB ``(3, H, W)`` / ``(N, 3, H, W)``.
        TypeError: ``hr`` is not uint8.

    Source: the degradation of SRCNN/EDSR/RCAN/NLSN/DLSN (DLSN eq. 1 with D =
    bicubic downsampling), MATLAB ``imresize`` reproduced by :mod:`srlib.imresize`.
    """
    _check_scale(scale, 2)
    if hr.dtype != torch.uint8:
        raise TypeError(f"bicubic_degrade expects a uint8 HR image (0..255), got {hr.dtype}; use to_uint8 first")
    if hr.dim() not in (3, 4) or hr.shape[-3] != 3:
        raise ValueError(f"bicubic_degrade expects RGB (3, H, W) or (N, 3, H, W), got {tuple(hr.shape)}")
    height, width = hr.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(
            f"HR size {height}x{width} is not a multiple of the scale {scale}; "
            f"call crop_to_multiple(hr, {scale}) first (as the papers do)"
        )
    return imresize(hr, scale=1.0 / scale)


#: Degradations known to :class:`LRCache`, by name: ``f(hr_uint8, scale) -> lr_uint8``.
DEGRADATIONS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "bicubic": bicubic_degrade,
}


def default_cache_dir() -> Path:
    """Where LR images are cached: ``$SRLIB_CACHE`` or ``~/.cache/srlib/lr``."""
    env = os.environ.get("SRLIB_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "srlib" / "lr"


class LRCache:
    """On-disk cache of LR images, made from HR files with a named degradation.

    A cache file is ``<cache_dir>/<h[:2]>/<h>_x<scale>_<degradation>_v<CACHE_VERSION>.png``
    where ``h`` is the SHA-256 of the HR file's bytes: editing or replacing an
    HR image, changing the scale or the degradation, or a new
    :data:`CACHE_VERSION` all give a new key.  Files are written atomically,
    so several DataLoader workers can share one cache.

    A cache file that cannot be read or has the wrong size is recomputed.  If
    the cache folder cannot be written, a :class:`CacheWarning` is given once
    and LR images are computed in memory from then on.

    Args:
        cache_dir: cache folder; default ``$SRLIB_CACHE`` or ``~/.cache/srlib/lr``.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.enabled = True

    def __repr__(self) -> str:
        return f"LRCache(cache_dir={str(self.cache_dir)!r}, enabled={self.enabled})"

    def path_for(self, hr_sha256: str, scale: int, degradation: str = "bicubic") -> Path:
        """The cache file for an HR file's SHA-256 (hex), a scale and a degradation name."""
        return self.cache_dir / hr_sha256[:2] / f"{hr_sha256}_x{scale}_{degradation}_v{CACHE_VERSION}.png"

    def _read(self, path: Path, shape: tuple[int, ...]) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lr = load_image(path)
        except ImageReadError:
            return None  # corrupt or truncated cache file: recompute it
        return lr if tuple(lr.shape) == shape else None

    def _write(self, lr: torch.Tensor, path: Path) -> None:
        try:
            save_image(lr, path)
        except OSError as error:
            self.enabled = False
            warnings.warn(
                f"cannot write the LR cache in {self.cache_dir} ({error.strerror or error}); "
                "LR images will be computed in memory each time. Set SRLIB_CACHE to a writable folder "
                "to cache them.",
                CacheWarning,
                stacklevel=3,
            )

    def get_lr(
        self, hr_path: str | os.PathLike, scale: int, degradation: str = "bicubic"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cropped HR, LR) pair for an HR image file.

        Args:
            hr_path: the HR image file.
            scale: integer >= 2.
            degradation: a name in :data:`DEGRADATIONS` (``"bicubic"``).

        Returns:
            ``(hr, lr)``: uint8 RGB tensors on the CPU, ``hr`` of shape
            ``(3, s*h, s*w)`` (cropped to a multiple of the scale) and ``lr``
            of shape ``(3, h, w)``.

        Raises:
            ValueError: bad scale, unknown degradation, image smaller than the scale.
            ImageReadError: the HR file cannot be read.
        """
        _check_scale(scale, 2)
        if degradation not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {degradation!r}; known: {', '.join(DEGRADATIONS)}")
        hr_path = Path(hr_path)
        data = read_file_bytes(hr_path)
        hr = crop_to_multiple(decode_image(data, hr_path), scale).contiguous()
        lr_shape = (3, hr.shape[-2] // scale, hr.shape[-1] // scale)
        path = self.path_for(hashlib.sha256(data).hexdigest(), scale, degradation)
        if self.enabled:
            cached = self._read(path, lr_shape)
            if cached is not None:
                return hr, cached
        lr = DEGRADATIONS[degradation](hr, scale)
        if self.enabled:
            self._write(lr, path)
        return hr, lr


def make_lr_pair(
    hr_path: str | os.PathLike, scale: int, degradation: str = "bicubic", cache: LRCache | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hr_cropped, lr)`` uint8 pair for a file, through ``cache`` when given, else computed in memory."""
    if cache is not None:
        return cache.get_lr(hr_path, scale, degradation)
    _check_scale(scale, 2)
    if degradation not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {degradation!r}; known: {', '.join(DEGRADATIONS)}")
    hr = crop_to_multiple(load_image(hr_path), scale).contiguous()
    return hr, DEGRADATIONS[degradation](hr, scale)
