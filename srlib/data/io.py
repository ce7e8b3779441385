"""Reading and writing images as tensors, with every conversion made explicit.

SR benchmarks are small sets of PNG files, but they are not uniform: Set14's
``bridge.png`` is grayscale, copies found online carry alpha channels, palettes
or 16-bit samples.  A silent ``Image.convert("RGB")`` hides such differences,
and they move PSNR.  :func:`load_image` therefore handles each PIL mode on
purpose and says (with an :class:`ImageConversionWarning`) whenever information
is thrown away.

Conventions (the library's layout):

* on disk and for metrics: ``uint8`` RGB ``(3, H, W)``, values 0..255;
* inside models: ``float32`` RGB in [0, 1], ``(3, H, W)`` or ``(N, 3, H, W)``;
* float -> 8 bit is ``floor(clamp(x, 0, 1) * 255 + 0.5)`` (round half up),
  the same quantisation :func:`srlib.metrics.quantize` applies.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from srlib.utils import atomic_write

__all__ = [
    "ImageReadError",
    "ImageConversionWarning",
    "load_image",
    "decode_image",
    "read_file_bytes",
    "save_image",
    "to_float",
    "to_uint8",
]


class ImageReadError(ValueError):
    """An image file is missing, empty, truncated, corrupt or not an image.

    The message names the file and the reason.
    """


class ImageConversionWarning(UserWarning):
    """Loading an image threw information away (alpha, 16-bit precision, colour space)."""


# Modes holding one gray channel; replicated to R = G = B without a warning.
_GRAY_MODES = {"L", "1"}
# 16/32-bit integer gray modes; reduced to 8 bit by round(value / 257).
_WIDE_GRAY_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def _warn(message: str) -> None:
    warnings.warn(message, ImageConversionWarning, stacklevel=3)


def _drop_alpha(rgba: Image.Image, source: str, description: str) -> np.ndarray:
    """RGB of an ``RGBA`` / ``LA`` image; warns unless alpha is fully opaque.

    The colour values are kept as stored (no compositing onto a background).
    """
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.size and alpha.min() < 255:
        transparent = int((alpha < 255).sum())
        _warn(
            f"{source}: {description}; {transparent} of {alpha.size} pixels are not fully opaque. "
            "The alpha channel was dropped and the stored colours kept. "
            "Save the image as RGB to silence this warning."
        )
    array = np.asarray(rgba)
    if rgba.mode == "LA":
        return np.repeat(array[:, :, :1], 3, axis=2)
    return array[:, :, :3]


def _wide_gray_to_rgb(img: Image.Image, source: str) -> np.ndarray:
    values = np.asarray(img).astype(np.int64)
    low, high = int(values.min(initial=0)), int(values.max(initial=0))
    if low < 0 or high > 65535:
        _warn(f"{source}: mode {img.mode} values span [{low}, {high}]; clipped to the 16-bit range [0, 65535]")
        values = values.clip(0, 65535)
    _warn(
        f"{source}: 16-bit gray image (mode {img.mode}) reduced to 8 bit by round(value / 257); "
        "precision below one 8-bit level is dropped"
    )
    # round(v / 257) with ties up, in integers: floor((2 v + 257) / 514).
    gray8 = ((2 * values + 257) // 514).astype(np.uint8)
    return np.repeat(gray8[:, :, None], 3, axis=2)


def _float_to_rgb(img: Image.Image, source: str) -> np.ndarray:
    values = np.asarray(img, dtype=np.float64)
    finite = values[np.isfinite(values)]
    low = float(finite.min()) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 0.0
    if low >= 0.0 and high <= 1.0:
        _warn(f"{source}: 32-bit float (mode F) image with values in [0, 1] quantised to 8 bit (x * 255, round half up)")
        gray8 = np.floor(np.nan_to_num(values, nan=0.0).clip(0, 1) * 255 + 0.5)
    else:
        _warn(
            f"{source}: 32-bit float (mode F) image with values in [{low:g}, {high:g}] read as 0..255 levels, "
            "clamped and rounded to 8 bit"
        )
        gray8 = np.floor(np.nan_to_num(values, nan=0.0).clip(0, 255) + 0.5)
    return np.repeat(gray8.astype(np.uint8)[:, :, None], 3, axis=2)


def _to_rgb_array(img: Image.Image, source: str) -> np.ndarray:
    """Convert a fully loaded PIL image to an ``(H, W, 3)`` uint8 array, mode by mode."""
    mode = img.mode
    if mode in ("RGB", "L") and "transparency" in img.info:  # a colour key (PNG tRNS chunk)
        return _drop_alpha(img.convert("RGBA"), source, f"mode {mode} with a transparent colour key")
    if mode == "RGB":
        return np.asarray(img)
    if mode in _GRAY_MODES:
        return np.asarray(img.convert("RGB"))
    if mode in ("RGBA", "LA"):
        return _drop_alpha(img, source, f"mode {mode} has an alpha channel")
    if mode == "PA":
        return _drop_alpha(img.convert("RGBA"), source, "mode PA has an alpha channel")
    if mode == "P":
        if "transparency" in img.info:
            return _drop_alpha(img.convert("RGBA"), source, "mode P has transparent palette entries")
        return np.asarray(img.convert("RGB"))
    if mode in _WIDE_GRAY_MODES:
        return _wide_gray_to_rgb(img, source)
    if mode == "F":
        return _float_to_rgb(img, source)
    # CMYK, YCbCr, LAB, HSV, RGBX, ...: let PIL convert, but say so.
    try:
        converted = img.convert("RGB")
    except (ValueError, OSError) as error:
        raise ImageReadError(f"cannot read image {source}: PIL cannot convert mode {mode} to RGB ({error})") from error
    _warn(f"{source}: mode {mode} converted to RGB by PIL; colours may differ slightly from other readers")
    return np.asarray(converted)


def decode_image(data: bytes, source: str | os.PathLike = "<bytes>") -> torch.Tensor:
    """Decode the bytes of an image file into a uint8 RGB tensor.

    :func:`load_image` reads a file and calls this; it is public so that code
    which already holds the bytes (for example to hash them) decodes exactly
    the bytes it hashed.

    Args:
        data: the complete content of an image file (PNG, JPEG, BMP, TIFF, PPM, ...).
        source: name used in messages (normally the file path).

    Returns:
        uint8 RGB tensor ``(3, H, W)``, values 0..255, on the CPU.

    Raises:
        ImageReadError: empty data, not an image, truncated or corrupt data,
            or a mode PIL cannot convert.

    Warns:
        ImageConversionWarning: alpha dropped, 16-bit reduced to 8 bit, or a
            colour space converted (see :func:`load_image`).
    """
    source = str(source)
    if len(data) == 0:
        raise ImageReadError(f"cannot read image {source}: the file is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        raise ImageReadError(
            f"cannot read image {source}: not an image format PIL recognises "
            f"({len(data)} bytes starting with {data[:8]!r})"
        ) from error
    except Exception as error:  # PIL raises assorted types for broken headers
        raise ImageReadError(f"cannot read image {source}: broken header ({type(error).__name__}: {error})") from error
    with img:
        if img.format == "PNG":
            # verify() walks every chunk and its CRC up to IEND, so a PNG cut
            # short after its pixel data is caught too.  It consumes the
            # image object, hence the second open.
            try:
                with Image.open(io.BytesIO(data)) as checker:
                    checker.verify()
            except Exception as error:
                raise ImageReadError(
                    f"cannot read image {source}: the PNG file is truncated or corrupt ({type(error).__name__}: {error})"
                ) from error
        try:
            img.load()  # force the full decode: lazy PIL images hide truncation until used
        except Exception as error:
            raise ImageReadError(
                f"cannot read image {source}: the file is truncated or corrupt ({type(error).__name__}: {error})"
            ) from error
        array = _to_rgb_array(img, source)
    if img.mode in ("RGB", "RGBA") and img.format == "PNG" and _is_16bit_png(data):
        _warn(
            f"{source}: 16-bit per channel {img.mode} PNG; PIL keeps only the high byte of each sample, "
            "so precision below one 8-bit level is dropped (values are truncated, not rounded)"
        )
    array = np.array(array, dtype=np.uint8, order="C")  # a writable copy PIL does not share
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _is_16bit_png(data: bytes) -> bool:
    """True when a PNG's IHDR declares 16 bits per sample (byte 24 of the file)."""
    return len(data) > 24 and data[12:16] == b"IHDR" and data[24] == 16


def read_file_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a file, with :class:`ImageReadError` (naming the file) when it cannot be read."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError as error:
        raise ImageReadError(f"cannot read image {path}: the file does not exist") from error
    except IsADirectoryError as error:
        raise ImageReadError(f"cannot read image {path}: it is a folder, not a file") from error
    except OSError as error:
        raise ImageReadError(f"cannot read image {path}: {error.strerror or error}") from error


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a uint8 RGB tensor ``(3, H, W)``.

    PIL modes are handled explicitly:

    * ``RGB``: as stored;
    * ``L`` and ``1`` (gray): replicated to three channels, no warning;
    * ``LA``, ``RGBA``, ``PA`` and ``P`` with transparency: alpha dropped (the
      stored colours are kept, not composited), with an
      :class:`ImageConversionWarning` unless every pixel is fully opaque;
    * ``P`` (palette): expanded to RGB;
    * ``I;16``, ``I;16B``, ``I`` (16-bit gray): reduced to 8 bit by
      ``round(value / 257)`` with a warning; 16-bit RGB PNGs (which PIL reduces
      to their high byte) also warn;
    * ``F`` (float): values in [0, 1] are scaled by 255, others read as levels,
      both rounded, with a warning;
    * anything else (``CMYK``, ``YCbCr``, ...): converted by PIL with a warning.

    EXIF orientation tags are ignored: pixels are returned as stored.

    Args:
        path: the image file.

    Returns:
        uint8 RGB tensor ``(3, H, W)``, values 0..255, on the CPU.

    Raises:
        ImageReadError: (a ``ValueError``) the file is missing, is a folder,
            is empty, is not an image, or is truncated/corrupt; the message
            names the file and the reason.
    """
    path = Path(path)
    data = read_file_bytes(path)
    return decode_image(data, path)


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 image(s) 0..255 -> float32 in [0, 1] (``x / 255``).

    Args:
        image: uint8 tensor of any shape, e.g. ``(3, H, W)`` or ``(N, 3, H, W)``.

    Returns:
        float32 tensor, same shape and device.

    Raises:
        TypeError: the input is not uint8 (converting twice is a common bug).
    """
    if image.dtype != torch.uint8:
        raise TypeError(f"to_float expects a uint8 image (0..255), got {image.dtype}; is it already in [0, 1]?")
    return image.to(torch.float32) / 255.0


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """float image(s) in [0, 1] -> uint8 0..255, as saving to PNG does.

    Values are clamped to [0, 1] and rounded half up:
    ``floor(clamp(x, 0, 1) * 255 + 0.5)``, computed in float64 so that it
    matches :func:`srlib.metrics.quantize` exactly.

    Args:
        image: floating tensor of any shape, e.g. ``(3, H, W)`` or ``(N, 3, H, W)``.

    Returns:
        uint8 tensor, same shape and device.

    Raises:
        TypeError: the input is not floating point.
        ValueError: the input contains NaN.
    """
    if not image.is_floating_point():
        raise TypeError(f"to_uint8 expects a floating image in [0, 1], got {image.dtype}")
    if torch.isnan(image).any():
        raise ValueError("to_uint8: the image contains NaN values; check the model output before saving it")
    return torch.floor(image.to(torch.float64).clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)


def save_image(image: torch.Tensor, path: str | os.PathLike) -> None:
    """Write an RGB image to a PNG file, atomically.

    The PNG is written to a temporary file in the target folder and moved into
    place with ``os.replace``, so a crash never leaves a half-written file.
    Missing parent folders are created.

    Args:
        image: uint8 RGB ``(3, H, W)`` (0..255), or floating RGB ``(3, H, W)``
            in [0, 1] (quantised with :func:`to_uint8`).  Any device.
        path: destination; must end in ``.png``.

    Raises:
        ValueError: wrong shape, NaN values, or a path not ending in ``.png``.
        TypeError: a dtype other than uint8 or floating.
        OSError: the folder cannot be created or written.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_image writes PNG files; give a path ending in .png, got {path}")
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"save_image expects an RGB tensor (3, H, W), got {shape}")
    if image.dtype != torch.uint8:
        if not image.is_floating_point():
            raise TypeError(f"save_image expects uint8 (0..255) or float in [0, 1], got {image.dtype}")
        image = to_uint8(image)
    array = image.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    with atomic_write(path) as stream:
        Image.fromarray(array).save(stream, format="PNG")
