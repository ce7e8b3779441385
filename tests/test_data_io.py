"""Tests for srlib.data.io: PIL modes, broken files, save/load round trips, quantisation."""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from srlib.data import (
    ImageConversionWarning,
    ImageReadError,
    load_image,
    save_image,
    to_float,
    to_uint8,
)
from srlib.metrics import quantize

RNG = np.random.default_rng(1234)


def _load_without_warnings(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_image(path)


def _load_expecting_warning(path, fragment):
    with pytest.warns(ImageConversionWarning) as record:
        image = load_image(path)
    messages = [str(w.message) for w in record if issubclass(w.category, ImageConversionWarning)]
    assert any(str(path) in m and fragment in m.replace(str(path), "") for m in messages), messages
    return image


def _as_hwc(image: torch.Tensor) -> np.ndarray:
    assert image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3
    return image.permute(1, 2, 0).numpy()


def _png_16bit_rgb(path, pixels: np.ndarray) -> None:
    """Write a 16-bit-per-channel RGB PNG by hand (PIL cannot write one)."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------
# modes


def test_rgb_png_is_read_exactly(tmp_path):
    pixels = RNG.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    image = _load_without_warnings(tmp_path / "rgb.png")
    assert image.shape == (3, 7, 9)
    np.testing.assert_array_equal(_as_hwc(image), pixels)


def test_gray_L_is_replicated_without_warning(tmp_path):
    gray = RNG.integers(0, 256, (5, 6), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    image = _load_without_warnings(tmp_path / "gray.png")
    for channel in range(3):
        np.testing.assert_array_equal(image[channel].numpy(), gray)


def test_bilevel_mode_1_maps_to_0_and_255(tmp_path):
    bits = Image.new("1", (4, 3), 0)
    bits.putpixel((1, 2), 1)
    bits.save(tmp_path / "bits.png")
    image = _load_without_warnings(tmp_path / "bits.png")
    expected = np.zeros((3, 4), dtype=np.uint8)
    expected[2, 1] = 255
    for channel in range(3):
        np.testing.assert_array_equal(image[channel].numpy(), expected)


def test_LA_opaque_is_silent_and_transparent_warns(tmp_path):
    gray = RNG.integers(0, 256, (4, 5), dtype=np.uint8)
    opaque = np.stack([gray, np.full_like(gray, 255)], axis=-1)
    Image.fromarray(opaque, mode="LA").save(tmp_path / "la_opaque.png")
    np.testing.assert_array_equal(_load_without_warnings(tmp_path / "la_opaque.png")[1].numpy(), gray)

    see_through = opaque.copy()
    see_through[0, 0, 1] = 10
    Image.fromarray(see_through, mode="LA").save(tmp_path / "la_alpha.png")
    image = _load_expecting_warning(tmp_path / "la_alpha.png", "alpha")
    for channel in range(3):
        np.testing.assert_array_equal(image[channel].numpy(), gray)


def test_RGBA_alpha_dropped_keeping_stored_colours(tmp_path):
    rgba = RNG.integers(0, 256, (6, 4, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(_as_hwc(_load_without_warnings(tmp_path / "opaque.png")), rgba[..., :3])

    rgba[2, 3, 3] = 0  # one fully transparent pixel: its colour is kept as stored
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "transparent.png")
    image = _load_expecting_warning(tmp_path / "transparent.png", "alpha channel was dropped")
    np.testing.assert_array_equal(_as_hwc(image), rgba[..., :3])


def test_palette_P_is_expanded(tmp_path):
    palette_colours = np.array([[255, 0, 0], [0, 128, 255], [17, 34, 51]], dtype=np.uint8)
    indices = RNG.integers(0, 3, (5, 7), dtype=np.uint8)
    img = Image.fromarray(indices, mode="P")
    img.putpalette(palette_colours.flatten().tolist())
    img.save(tmp_path / "palette.png")
    image = _load_without_warnings(tmp_path / "palette.png")
    np.testing.assert_array_equal(_as_hwc(image), palette_colours[indices])


def test_palette_with_transparency_warns(tmp_path):
    palette_colours = np.array([[10, 20, 30], [200, 100, 50]], dtype=np.uint8)
    indices = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    img = Image.fromarray(indices, mode="P")
    img.putpalette(palette_colours.flatten().tolist())
    img.save(tmp_path / "palette_t.png", transparency=0)
    image = _load_expecting_warning(tmp_path / "palette_t.png", "transparent palette entries")
    np.testing.assert_array_equal(_as_hwc(image), palette_colours[indices])


def test_gray_with_transparent_colour_key_warns(tmp_path):
    gray = np.array([[5, 9, 5]], dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "key.png", transparency=9)
    image = _load_expecting_warning(tmp_path / "key.png", "1 of 3 pixels")
    assert image.tolist() == [[[5, 9, 5]]] * 3


def test_16bit_gray_png_rounds_value_over_257(tmp_path):
    values = np.array([[0, 128, 129, 257], [385, 386, 65535, 40000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "gray16.png")
    with Image.open(tmp_path / "gray16.png") as check:
        assert check.mode.startswith("I")
    image = _load_expecting_warning(tmp_path / "gray16.png", "16-bit")
    expected = np.floor(values.astype(np.float64) / 257 + 0.5).astype(np.uint8)
    assert expected.tolist() == [[0, 0, 1, 1], [1, 2, 255, 156]]
    for channel in range(3):
        np.testing.assert_array_equal(image[channel].numpy(), expected)


def test_16bit_rgb_png_warns_about_precision(tmp_path):
    pixels = np.array([[[65535, 0, 40000], [256, 512, 1024]]], dtype=np.uint16)
    _png_16bit_rgb(tmp_path / "rgb16.png", pixels)
    image = _load_expecting_warning(tmp_path / "rgb16.png", "16-bit")
    np.testing.assert_array_equal(_as_hwc(image), (pixels >> 8).astype(np.uint8))


def test_cmyk_is_converted_with_warning(tmp_path):
    Image.new("CMYK", (3, 2), (0, 255, 0, 0)).save(tmp_path / "cmyk.tiff")
    image = _load_expecting_warning(tmp_path / "cmyk.tiff", "CMYK")
    assert image.shape == (3, 2, 3)
    assert image[:, 0, 0].tolist() == [255, 0, 255]


def test_float_F_in_unit_range_is_scaled(tmp_path):
    values = np.array([[0.0, 0.5, 1.0], [0.25, 1 / 255, 0.999]], dtype=np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "float.tiff")
    image = _load_expecting_warning(tmp_path / "float.tiff", "mode F")
    expected = np.floor(values.astype(np.float64) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(image[0].numpy(), expected)


# ---------------------------------------------------------------------------
# broken files


def _good_png_bytes(tmp_path) -> bytes:
    Image.fromarray(RNG.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "good.png")
    return (tmp_path / "good.png").read_bytes()


def _assert_read_error(path, reason_fragment):
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message
    assert reason_fragment in message.replace(str(path), "")
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    _assert_read_error(tmp_path / "nope.png", "does not exist")


def test_folder_instead_of_file(tmp_path):
    _assert_read_error(tmp_path, "folder")


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    _assert_read_error(tmp_path / "empty.png", "empty")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("these are not pixels\n")
    _assert_read_error(tmp_path / "notes.png", "not an image")


@pytest.mark.parametrize("keep", ["half", "without_end"])
def test_truncated_png(tmp_path, keep):
    data = _good_png_bytes(tmp_path)
    cut = len(data) // 2 if keep == "half" else len(data) - 20  # the pixel data may be complete here
    (tmp_path / "cut.png").write_bytes(data[:cut])
    _assert_read_error(tmp_path / "cut.png", "truncated")


def test_corrupt_png_data(tmp_path):
    data = bytearray(_good_png_bytes(tmp_path))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    (tmp_path / "corrupt.png").write_bytes(bytes(data))
    _assert_read_error(tmp_path / "corrupt.png", "corrupt")


def test_truncated_jpeg(tmp_path):
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    _assert_read_error(tmp_path / "cut.jpg", "truncated")


# ---------------------------------------------------------------------------
# save / quantise


def test_uint8_save_load_round_trip_is_exact(tmp_path):
    image = torch.from_numpy(RNG.integers(0, 256, (3, 11, 13), dtype=np.uint8))
    save_image(image, tmp_path / "sub" / "out.png")
    assert torch.equal(_load_without_warnings(tmp_path / "sub" / "out.png"), image)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out.png"]  # no temp file left


def test_float_save_quantises_half_up_and_clamps(tmp_path):
    levels = torch.tensor([-0.3, 0.0, 0.5 / 255, 127.5 / 255, 0.49 / 255, 1.0, 1.7], dtype=torch.float32)
    image = levels.view(1, 1, -1).repeat(3, 2, 1)
    save_image(image, tmp_path / "float.png")
    loaded = load_image(tmp_path / "float.png")
    assert loaded[0, 0].tolist() == [0, 0, 1, 128, 0, 255, 255]
    assert torch.equal(loaded, to_uint8(image))


def test_save_overwrites_atomically_and_checks_arguments(tmp_path):
    target = tmp_path / "x.png"
    save_image(torch.zeros(3, 2, 2, dtype=torch.uint8), target)
    save_image(torch.full((3, 2, 2), 200, dtype=torch.uint8), target)
    assert load_image(target).unique().tolist() == [200]
    with pytest.raises(ValueError, match=r"\.png"):
        save_image(torch.zeros(3, 2, 2, dtype=torch.uint8), tmp_path / "x.jpg")
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        save_image(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), target)
    with pytest.raises(TypeError):
        save_image(torch.zeros(3, 2, 2, dtype=torch.int32), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_to_float_and_to_uint8_round_trip_all_levels():
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(2, 3, 1, 1)
    as_float = to_float(levels)
    assert as_float.dtype == torch.float32 and as_float.shape == (2, 3, 16, 16)
    assert float(as_float.min()) == 0.0 and float(as_float.max()) == 1.0
    assert torch.equal(to_uint8(as_float), levels)


def test_to_uint8_matches_metrics_quantize():
    values = torch.rand(3, 9, 9, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2
    assert torch.equal(to_uint8(values).to(torch.float64), quantize(values))


def test_conversions_reject_wrong_dtypes():
    with pytest.raises(TypeError):
        to_float(torch.zeros(3, 2, 2))
    with pytest.raises(TypeError):
        to_uint8(torch.zeros(3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.tensor([float("nan")]))
