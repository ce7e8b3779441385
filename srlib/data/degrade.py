"""Making LR images from HR images, as the SR papers do, and caching them on disk.

The bicubic degradation (BI) of every published SR table (SRCNN, EDSR, RCAN,
NLSN, DLSN, ...):

1. crop the HR image so that its height and width are multiples of the scale
   (top-left corner kept), MATLAB's ``modcrop``;
2. shrink it with MATLAB's ``imresize(HR, 1/scale, 'bicubic')`` (antialiased
   bicubic, :func:`srlib.imresize.imresize`);
3. round to 8 bit once, as saving the LR image to PNG does.

Two more degradations of the RDN / RCAN / DLSN tables (DLSN Sec. 4.5.2 and
Tables 4-5), made as ``Prepare_TestData_HR_LR.m`` of the RDN and RCAN test code
makes them:

* **BD** (blur-downscale, :func:`bd_degrade`): Gaussian blur with sigma 1.6,
  then one pixel out of every ``scale x scale`` block, x3 only;
* **DN** (noise-downscale, :func:`dn_degrade`): the bicubic LR image plus
  Gaussian noise of a given sigma on the 0..255 scale, rounded to 8 bit.

A degradation with its parameters is a :class:`Degradation`
(``Degradation("dn", noise_sigma=15)``, spelled ``"dn_s15"`` as a string).
Computing LR images takes a moment for large sets, so :class:`LRCache` keeps
them as PNG files keyed by the SHA-256 of the HR file, the scale, the
degradation with its parameters and :data:`CACHE_VERSION`.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..imresize import imresize
from .io import ImageReadError, decode_image, load_image, read_file_bytes, save_image

__all__ = [
    "BD_KERNEL_SIZES",
    "BD_SIGMA",
    "CACHE_VERSION",
    "DEGRADATIONS",
    "CacheWarning",
    "Degradation",
    "LRCache",
    "as_degradation",
    "bd_degrade",
    "bd_kernel",
    "bicubic_degrade",
    "crop_to_multiple",
    "default_cache_dir",
    "dn_degrade",
    "dn_seed",
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


def _check_hr(hr: torch.Tensor, scale: int, what: str) -> None:
    """The checks every degradation makes on its HR input (see :func:`bicubic_degrade`)."""
    if hr.dtype != torch.uint8:
        raise TypeError(f"{what} expects a uint8 HR image (0..255), got {hr.dtype}; use to_uint8 first")
    if hr.dim() not in (3, 4) or hr.shape[-3] != 3:
        raise ValueError(f"{what} expects RGB (3, H, W) or (N, 3, H, W), got {tuple(hr.shape)}")
    height, width = hr.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(
            f"HR size {height}x{width} is not a multiple of the scale {scale}; "
            f"call crop_to_multiple(hr, {scale}) first (as the papers do)"
        )


def _round_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """MATLAB's conversion of a 0..255 float array to uint8: saturate, round half away from zero."""
    return torch.floor(x.clamp(0.0, 255.0) + 0.5).to(torch.uint8)


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
    _check_hr(hr, scale, "bicubic_degrade")
    return imresize(hr, scale=1.0 / scale)


#: Standard deviation of the BD Gaussian blur, in HR pixels (DLSN Sec. 4.5.2, "as in SRMDNF and RCAN").
BD_SIGMA = 1.6

#: Side of the BD blur kernel for each scale BD is defined at.  ``Prepare_TestData_HR_LR.m`` prepares
#: BD data at x3 only, where it sets the kernel to 7x7 (its general rule for odd scales,
#: ``2 * ceil(3 * sigma) + 1``, would give 11x11; even scales take 12x12 and another sampling).
#: No published table uses those, so srlib defines BD at x3 alone.
BD_KERNEL_SIZES: dict[int, int] = {3: 7}


def _bd_kernel_size(scale: int) -> int:
    _check_scale(scale, 2)
    if scale not in BD_KERNEL_SIZES:
        defined = ", ".join(f"x{s}" for s in BD_KERNEL_SIZES)
        raise ValueError(
            f"the BD (blur-downscale) degradation is defined at {defined} only, as the RDN/RCAN script "
            f"Prepare_TestData_HR_LR.m prepares it (sigma {BD_SIGMA}, 7x7 kernel); got x{scale}. "
            "Use the bicubic or dn degradation at this scale"
        )
    return BD_KERNEL_SIZES[scale]


def bd_kernel(scale: int = 3, sigma: float = BD_SIGMA, dtype: torch.dtype = torch.float64,
              device: torch.device | str | None = None) -> torch.Tensor:
    """The Gaussian blur kernel of the BD degradation, MATLAB ``fspecial('gaussian', k, sigma)``.

    ``h(x, y) = exp(-(x^2 + y^2) / (2 sigma^2))`` on the integer offsets
    ``x, y = -(k-1)/2 .. (k-1)/2``, divided by its sum so that it sums to 1
    (a constant image stays constant).  ``fspecial`` also zeroes entries below
    ``eps * max``; with ``k = 7`` and ``sigma = 1.6`` the smallest entry is
    ``exp(-18 / 5.12) = 0.03`` of the largest, so that step changes nothing.

    Args:
        scale: the scale the kernel is for; sets its side ``k`` from
            :data:`BD_KERNEL_SIZES` (x3: 7).
        sigma: standard deviation in HR pixels (default :data:`BD_SIGMA`, 1.6).
        dtype, device: of the returned tensor.

    Returns:
        ``(k, k)`` tensor, non-negative, symmetric, summing to 1.

    Raises:
        ValueError: ``scale`` has no BD kernel (only x3 has one); ``sigma`` is not positive.

    Source: ``imresize_BD`` in ``Prepare_TestData_HR_LR.m``, repositories
    yulunzhang/RCAN (``RCAN_TestCode/``) and yulunzhang/RDN (``RDN_TestCode/``).
    """
    size = _bd_kernel_size(scale)
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0:
        raise ValueError(f"the blur sigma must be a positive number of HR pixels, got {sigma!r}")
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2  # (k,), -3..3 for k = 7
    squared = offsets[:, None] ** 2 + offsets[None, :] ** 2  # (k, k), x^2 + y^2
    kernel = torch.exp(-squared / (2 * sigma**2))  # (k, k), unnormalised Gaussian
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def bd_degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The blur-downscale (BD) LR image of RDN, RCAN and DLSN: Gaussian blur, round, keep one pixel per block.

    As ``imresize_BD`` of ``Prepare_TestData_HR_LR.m`` at x3, in three steps:

    1. ``imfilter(HR, fspecial('gaussian', 7, 1.6), 'replicate')``: the uint8
       HR image is padded by repeating its border pixels (3 on each side) and
       correlated with the 7x7 kernel of :func:`bd_kernel` in float64;
    2. ``imfilter`` on a uint8 image returns uint8: the blurred values are
       rounded half away from zero (and saturated to 0..255);
    3. ``imresize(blurred, 1/3, 'nearest')``: MATLAB maps LR pixel ``u``
       (1-based) to HR position ``3u - 1``, so it keeps rows and columns
       2, 5, 8, ... (1-based), the centre of every 3x3 block; 0-based
       ``blurred[..., 1::3, 1::3]``.

    Args:
        hr: uint8 RGB ``(3, H, W)`` or ``(N, 3, H, W)``, 0..255, with ``H`` and
            ``W`` multiples of ``scale`` (use :func:`crop_to_multiple` first).
            Any device with float64 (CPU, CUDA).
        scale: 3, the only scale BD is defined at (:data:`BD_KERNEL_SIZES`).

    Returns:
        uint8 LR image ``(3, H/3, W/3)`` or ``(N, 3, H/3, W/3)``, same device.

    Raises:
        ValueError: a scale other than 3; ``H`` or ``W`` not a multiple of the
            scale; the tensor is not RGB ``(3, H, W)`` / ``(N, 3, H, W)``.
        TypeError: ``hr`` is not uint8.

    Source: DLSN (Xie et al.) Sec. 4.5.2 and Table 4 (x3, sigma 1.6, "as in SRMDNF
    and RCAN"); the degradation as coded in ``Prepare_TestData_HR_LR.m``
    (``imresize_BD``), repositories yulunzhang/RCAN (``RCAN_TestCode/``) and
    yulunzhang/RDN (``RDN_TestCode/``).  Checked: from the x3 HR images that
    yulunzhang/RDN ships (``RDN_TestCode/HR/Set5/x3``) this gives its
    ``RDN_TestCode/LR/LRBD/Set5/x3`` files bit for bit, and bicubic upscaling
    of it gives DLSN Table 4's bicubic row (Set5 28.78 dB, B100 26.33, Urban100 23.52).
    """
    size = _bd_kernel_size(scale)
    _check_hr(hr, scale, "bd_degrade")
    height, width = hr.shape[-2:]
    pad = size // 2
    kernel = bd_kernel(scale, device=hr.device)  # (k, k), float64, sums to 1
    x = hr.to(torch.float64).reshape(-1, 1, height, width)  # (N*3, 1, H, W), 0..255
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")  # (N*3, 1, H+2p, W+2p), imfilter 'replicate'
    blurred = _round_to_uint8(F.conv2d(x, kernel[None, None]))  # (N*3, 1, H, W), imfilter on uint8
    offset = (scale - 1) // 2  # 1: the centre of each 3x3 block, MATLAB rows 2, 5, 8, ...
    lr = blurred[..., offset::scale, offset::scale]  # (N*3, 1, H/s, W/s), imresize 'nearest'
    return lr.reshape(*hr.shape[:-2], height // scale, width // scale).contiguous()


def _check_noise_sigma(noise_sigma) -> float:
    if isinstance(noise_sigma, bool) or not isinstance(noise_sigma, (int, float)):
        raise TypeError(f"the DN noise sigma must be a number >= 0 (0..255 scale), got {noise_sigma!r}")
    if not math.isfinite(noise_sigma) or noise_sigma < 0:
        raise ValueError(f"the DN noise sigma must be a finite number >= 0 (0..255 scale), got {noise_sigma!r}")
    return float(noise_sigma) + 0.0  # -0.0 -> 0.0, one cache key for sigma 0


def dn_seed(hr_sha256: str, scale: int, noise_sigma: float) -> int:
    """The seed of the DN noise of one HR file: the same file and parameters always give the same LR image.

    ``int.from_bytes(SHA256(f"srlib-dn|{hr_sha256}|x{scale}|sigma={float(noise_sigma)!r}")[:8], "big")``
    reduced modulo ``2**63``: a different file, scale or sigma gives an
    unrelated noise field, and no image shares its noise with another.

    Args:
        hr_sha256: SHA-256 (hex) of the HR file's bytes.
        scale: integer >= 2.
        noise_sigma: noise standard deviation on the 0..255 scale (>= 0).

    Returns:
        An integer in ``[0, 2**63)``, a valid ``torch.Generator`` seed.

    Raises:
        ValueError: bad scale, a negative or non-finite sigma.
        TypeError: ``noise_sigma`` is not a number.
    """
    _check_scale(scale, 2)
    sigma = _check_noise_sigma(noise_sigma)
    text = f"srlib-dn|{hr_sha256}|x{scale}|sigma={sigma!r}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % (1 << 63)


def dn_degrade(hr: torch.Tensor, scale: int, noise_sigma: float, seed: int | torch.Generator) -> torch.Tensor:
    """The noise-downscale (DN) LR image: bicubic LR image plus Gaussian noise, rounded to 8 bit.

    ``LR = uint8(bicubic(HR) + sigma * n)``, with ``n`` standard normal noise,
    one value per LR pixel and channel, drawn in float64 on the CPU from
    ``seed``; the sum is saturated to 0..255 and rounded half away from zero
    (MATLAB's ``uint8``).  ``noise_sigma = 0`` gives :func:`bicubic_degrade`.

    Args:
        hr: uint8 RGB ``(3, H, W)`` or ``(N, 3, H, W)``, 0..255, ``H`` and ``W``
            multiples of ``scale``.  Any device with float64 (CPU, CUDA).
        scale: integer downscaling factor >= 2.
        noise_sigma: noise standard deviation on the 0..255 scale, >= 0
            (DLSN Table 5: 10, 15, 20, 25).
        seed: integer seed or a ``torch.Generator`` (CPU); :class:`LRCache` uses
            :func:`dn_seed` of the HR file, so an image always gets the same noise.

    Returns:
        uint8 LR image ``(3, H/scale, W/scale)`` or ``(N, 3, H/scale, W/scale)``, same device.

    Raises:
        ValueError: bad scale, negative or non-finite sigma, non-RGB input or a
            size that is not a multiple of the scale.
        TypeError: ``hr`` is not uint8; ``noise_sigma`` is not a number; ``seed`` is
            neither an integer nor a Generator.

    Source: DLSN (Xie et al.) Table 5 (Set14 x3, sigma 10-25); ``imresize_DN`` of
    ``Prepare_TestData_HR_LR.m`` (bicubic, then ``uint8(single(LR) + sigma * randn)``),
    repositories yulunzhang/RCAN (``RCAN_TestCode/``) and yulunzhang/RDN (``RDN_TestCode/``).
    The noise values themselves differ from MATLAB's ``randn``.
    """
    sigma = _check_noise_sigma(noise_sigma)
    lr = bicubic_degrade(hr, scale)  # (..., 3, h, w) uint8
    if isinstance(seed, torch.Generator):
        generator = seed
    elif isinstance(seed, int) and not isinstance(seed, bool):
        generator = torch.Generator().manual_seed(seed)
    else:
        raise TypeError(f"seed must be an integer or a torch.Generator, got {type(seed).__name__}")
    noise = torch.randn(lr.shape, generator=generator, dtype=torch.float64)  # (..., 3, h, w), N(0, 1)
    noisy = lr.to(torch.float64) + sigma * noise.to(lr.device)  # (..., 3, h, w), 0..255 plus noise
    return _round_to_uint8(noisy)


#: Degradations known to :class:`LRCache`, by name.  ``"bicubic"`` and ``"bd"`` are
#: ``f(hr_uint8, scale) -> lr_uint8``; ``"dn"`` is ``f(hr_uint8, scale, noise_sigma, seed)``.
DEGRADATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "bicubic": bicubic_degrade,
    "bd": bd_degrade,
    "dn": dn_degrade,
}


def _format_sigma(sigma: float) -> str:
    short = f"{sigma:g}"
    return short if float(short) == sigma else repr(sigma)


@dataclass(frozen=True)
class Degradation:
    """A degradation with its parameters: what turns an HR image into its LR image.

    * ``Degradation("bicubic")``: MATLAB bicubic (:func:`bicubic_degrade`), the default;
    * ``Degradation("bd")``: blur-downscale (:func:`bd_degrade`), x3 only;
    * ``Degradation("dn", noise_sigma=15)``: bicubic plus Gaussian noise of sigma 15
      on the 0..255 scale (:func:`dn_degrade`), seeded per HR file (:func:`dn_seed`).

    Its :attr:`key` (``"bicubic"``, ``"bd"``, ``"dn_s15"``) names it in the LR
    cache and as a string; :meth:`parse` reads it back.

    Attributes:
        name: ``"bicubic"``, ``"bd"`` or ``"dn"`` (a key of :data:`DEGRADATIONS`).
        noise_sigma: DN only: noise standard deviation, 0..255 scale, >= 0 (stored
            as a float); ``None`` for the others.

    Raises:
        ValueError: unknown name; ``dn`` without a sigma, or a negative one;
            a sigma given to another degradation.
        TypeError: a sigma that is not a number.
    """

    name: str = "bicubic"
    noise_sigma: float | None = None

    def __post_init__(self):
        if self.name not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {self.name!r}; known: {', '.join(DEGRADATIONS)}")
        if self.name == "dn":
            if self.noise_sigma is None:
                raise ValueError("the dn degradation needs a noise sigma (0..255 scale), "
                                 "e.g. Degradation('dn', noise_sigma=15), 'dn_s15' or --noise 15")
            object.__setattr__(self, "noise_sigma", _check_noise_sigma(self.noise_sigma))
        elif self.noise_sigma is not None:
            raise ValueError(f"a noise sigma applies to the dn degradation only, not to {self.name!r}; "
                             f"got noise_sigma={self.noise_sigma!r}")

    @property
    def key(self) -> str:
        """The name with its parameters, as in cache file names: ``"bicubic"``, ``"bd"``, ``"dn_s15"``."""
        if self.name == "dn":
            return f"dn_s{_format_sigma(self.noise_sigma)}"
        return self.name

    def __str__(self) -> str:
        return self.key

    @classmethod
    def parse(cls, spec: str) -> Degradation:
        """The degradation a key names: ``"bicubic"``, ``"bd"``, ``"dn_s15"`` (any case).

        Raises:
            ValueError: unknown name, ``"dn"`` without ``_s<sigma>``, a sigma that is not a number >= 0.
            TypeError: ``spec`` is not a string.
        """
        if not isinstance(spec, str):
            raise TypeError(f"a degradation is a name such as 'bicubic', 'bd' or 'dn_s15', got {spec!r}")
        text = spec.strip().lower()
        if text.startswith("dn_s"):
            try:
                sigma = float(text[len("dn_s"):])
            except ValueError:
                raise ValueError(f"cannot read the noise sigma of {spec!r}; write e.g. 'dn_s15'") from None
            return cls("dn", sigma)
        return cls(text)

    def check_scale(self, scale: int) -> int:
        """``scale`` if this degradation is defined there; ValueError otherwise (BD: x3 only)."""
        _check_scale(scale, 2)
        if self.name == "bd":
            _bd_kernel_size(scale)
        return scale

    def apply(self, hr: torch.Tensor, scale: int, hr_sha256: str | None = None) -> torch.Tensor:
        """The LR image of ``hr`` (uint8 RGB ``(3, H, W)`` / ``(N, 3, H, W)``, sides multiples of ``scale``).

        ``hr_sha256`` (hex SHA-256 of the HR file) seeds the DN noise through
        :func:`dn_seed`; DN refuses to run without it (ValueError).  Returns
        uint8 ``(..., 3, H/scale, W/scale)`` on ``hr``'s device.
        """
        self.check_scale(scale)
        function = DEGRADATIONS[self.name]
        if self.name != "dn":
            return function(hr, scale)
        if hr_sha256 is None:
            raise ValueError("the dn degradation seeds its noise from the HR file's SHA-256; pass hr_sha256, "
                             "or call dn_degrade(hr, scale, noise_sigma, seed) with a seed of your own")
        return function(hr, scale, self.noise_sigma, dn_seed(hr_sha256, scale, self.noise_sigma))


def as_degradation(degradation: str | Degradation = "bicubic") -> Degradation:
    """A :class:`Degradation` from itself or its key (``"bicubic"``, ``"bd"``, ``"dn_s15"``).

    Raises:
        ValueError: an unknown name, ``"dn"`` without its sigma (see :meth:`Degradation.parse`).
    """
    if isinstance(degradation, Degradation):
        return degradation
    return Degradation.parse(degradation)


def default_cache_dir() -> Path:
    """Where LR images are cached: ``$SRLIB_CACHE`` or ``~/.cache/srlib/lr``."""
    env = os.environ.get("SRLIB_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "srlib" / "lr"


class LRCache:
    """On-disk cache of LR images, made from HR files with a degradation.

    A cache file is ``<cache_dir>/<h[:2]>/<h>_x<scale>_<key>_v<CACHE_VERSION>.png``
    where ``h`` is the SHA-256 of the HR file's bytes and ``key`` the
    degradation with its parameters (:attr:`Degradation.key`: ``bicubic``,
    ``bd``, ``dn_s15``): editing or replacing an HR image, changing the scale,
    the degradation or its parameters, or a new :data:`CACHE_VERSION` all give
    a new key.  Files are written atomically, so several DataLoader workers
    can share one cache.

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

    def path_for(self, hr_sha256: str, scale: int, degradation: str | Degradation = "bicubic") -> Path:
        """The cache file for an HR file's SHA-256 (hex), a scale and a degradation (or its key)."""
        key = as_degradation(degradation).key
        return self.cache_dir / hr_sha256[:2] / f"{hr_sha256}_x{scale}_{key}_v{CACHE_VERSION}.png"

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
        self, hr_path: str | os.PathLike, scale: int, degradation: str | Degradation = "bicubic"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cropped HR, LR) pair for an HR image file.

        Args:
            hr_path: the HR image file.
            scale: integer >= 2 (BD: 3 only).
            degradation: a :class:`Degradation` or its key (``"bicubic"``,
                ``"bd"``, ``"dn_s15"``); DN noise is seeded from the file's
                SHA-256 (:func:`dn_seed`).

        Returns:
            ``(hr, lr)``: uint8 RGB tensors on the CPU, ``hr`` of shape
            ``(3, s*h, s*w)`` (cropped to a multiple of the scale) and ``lr``
            of shape ``(3, h, w)``.

        Raises:
            ValueError: bad scale, unknown degradation or one not defined at
                this scale, image smaller than the scale.
            ImageReadError: the HR file cannot be read.
        """
        degradation = as_degradation(degradation)
        degradation.check_scale(scale)
        hr_path = Path(hr_path)
        data = read_file_bytes(hr_path)
        hr = crop_to_multiple(decode_image(data, hr_path), scale).contiguous()
        lr_shape = (3, hr.shape[-2] // scale, hr.shape[-1] // scale)
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest, scale, degradation)
        if self.enabled:
            cached = self._read(path, lr_shape)
            if cached is not None:
                return hr, cached
        lr = degradation.apply(hr, scale, hr_sha256=digest)
        if self.enabled:
            self._write(lr, path)
        return hr, lr


def make_lr_pair(
    hr_path: str | os.PathLike,
    scale: int,
    degradation: str | Degradation = "bicubic",
    cache: LRCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hr_cropped, lr)`` uint8 pair for a file, through ``cache`` when given, else computed in memory.

    ``degradation`` is a :class:`Degradation` or its key; see :meth:`LRCache.get_lr`
    for shapes and errors.  Both ways give the same pair (DN noise is seeded from
    the HR file's SHA-256 either way).
    """
    if cache is not None:
        return cache.get_lr(hr_path, scale, degradation)
    degradation = as_degradation(degradation)
    degradation.check_scale(scale)
    hr_path = Path(hr_path)
    data = read_file_bytes(hr_path)
    hr = crop_to_multiple(decode_image(data, hr_path), scale).contiguous()
    return hr, degradation.apply(hr, scale, hr_sha256=hashlib.sha256(data).hexdigest())
