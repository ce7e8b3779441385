"""Tests for srlib.data.degrade: modcrop, the bicubic degradation and the LR cache."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import srlib.data.degrade as degrade_module
from srlib.data import (
    CacheWarning,
    LRCache,
    bicubic_degrade,
    crop_to_multiple,
    default_cache_dir,
    load_image,
    save_image,
)
from srlib.imresize import imresize


def _random_uint8(*shape, seed=0):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ---------------------------------------------------------------------------
# crop_to_multiple


def test_crop_to_multiple_keeps_the_top_left_corner():
    image = _random_uint8(3, 13, 17)
    cropped = crop_to_multiple(image, 4)
    assert cropped.shape == (3, 12, 16)
    assert torch.equal(cropped, image[:, :12, :16])
    assert crop_to_multiple(image, 1).shape == image.shape
    batch = _random_uint8(2, 3, 10, 9)
    assert crop_to_multiple(batch, 3).shape == (2, 3, 9, 9)
    assert crop_to_multiple(_random_uint8(3, 12, 12), 3).shape == (3, 12, 12)


@pytest.mark.parametrize("scale", [0, -2, 2.0, True, "2"])
def test_crop_to_multiple_rejects_bad_scales(scale):
    with pytest.raises(ValueError, match="scale"):
        crop_to_multiple(_random_uint8(3, 8, 8), scale)


def test_crop_to_multiple_rejects_images_smaller_than_the_scale():
    with pytest.raises(ValueError, match="smaller"):
        crop_to_multiple(_random_uint8(3, 3, 8), 4)


# ---------------------------------------------------------------------------
# bicubic_degrade


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_degrade_equals_imresize(scale):
    hr = _random_uint8(3, 12 * scale, 7 * scale, seed=scale)
    lr = bicubic_degrade(hr, scale)
    assert lr.dtype == torch.uint8 and lr.shape == (3, 12, 7)
    assert torch.equal(lr, imresize(hr, scale=1 / scale))


def test_bicubic_degrade_batch_matches_single_images():
    batch = _random_uint8(2, 3, 12, 18, seed=5)
    lr = bicubic_degrade(batch, 3)
    assert lr.shape == (2, 3, 4, 6)
    for index in range(2):
        assert torch.equal(lr[index], bicubic_degrade(batch[index], 3))


def test_bicubic_degrade_of_a_constant_image_is_constant():
    hr = torch.full((3, 16, 16), 77, dtype=torch.uint8)
    assert torch.equal(bicubic_degrade(hr, 4), torch.full((3, 4, 4), 77, dtype=torch.uint8))


def test_bicubic_degrade_asks_for_crop_when_not_divisible():
    with pytest.raises(ValueError, match="crop_to_multiple"):
        bicubic_degrade(_random_uint8(3, 13, 12), 2)


@pytest.mark.parametrize("scale", [1, 2.0, True, 0])
def test_bicubic_degrade_needs_an_integer_scale_of_at_least_2(scale):
    with pytest.raises(ValueError, match="scale"):
        bicubic_degrade(_random_uint8(3, 12, 12), scale)


def test_bicubic_degrade_rejects_float_and_non_rgb():
    with pytest.raises(TypeError, match="uint8"):
        bicubic_degrade(torch.rand(3, 8, 8), 2)
    with pytest.raises(ValueError, match="RGB"):
        bicubic_degrade(_random_uint8(1, 8, 8), 2)


# ---------------------------------------------------------------------------
# LRCache


@pytest.fixture
def counting(monkeypatch):
    """Count calls of the bicubic degradation used by the cache."""
    calls = []

    def counted(hr, scale):
        calls.append(scale)
        return bicubic_degrade(hr, scale)

    monkeypatch.setitem(degrade_module.DEGRADATIONS, "bicubic", counted)
    return calls


@pytest.fixture
def hr_file(tmp_path):
    path = tmp_path / "hr" / "photo.png"
    save_image(_random_uint8(3, 26, 37, seed=11), path)
    return path


def test_cache_miss_then_hit(tmp_path, hr_file, counting):
    cache = LRCache(tmp_path / "cache")
    hr, lr = cache.get_lr(hr_file, 2)
    assert counting == [2]
    expected_hr = crop_to_multiple(load_image(hr_file), 2)
    assert torch.equal(hr, expected_hr)
    assert torch.equal(lr, bicubic_degrade(expected_hr, 2))
    files = list((tmp_path / "cache").rglob("*.png"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns

    hr_again, lr_again = LRCache(tmp_path / "cache").get_lr(hr_file, 2)  # a fresh object: only the disk is shared
    assert counting == [2]  # not recomputed
    assert torch.equal(hr_again, hr) and torch.equal(lr_again, lr)
    assert files[0].stat().st_mtime_ns == stamp


def test_corrupt_cache_file_is_recomputed(tmp_path, hr_file, counting):
    cache = LRCache(tmp_path / "cache")
    _, lr = cache.get_lr(hr_file, 3)
    (cached,) = list((tmp_path / "cache").rglob("*.png"))
    cached.write_bytes(cached.read_bytes()[:40])  # truncated
    _, lr_again = cache.get_lr(hr_file, 3)
    assert counting == [3, 3]
    assert torch.equal(lr_again, lr)
    assert torch.equal(load_image(cached), lr)  # repaired on disk

    save_image(torch.zeros(3, 5, 5, dtype=torch.uint8), cached)  # readable but the wrong size
    _, lr_third = cache.get_lr(hr_file, 3)
    assert counting == [3, 3, 3] and torch.equal(lr_third, lr)


def test_cache_key_depends_on_scale_content_and_version(tmp_path, hr_file, counting, monkeypatch):
    cache = LRCache(tmp_path / "cache")
    _, lr2 = cache.get_lr(hr_file, 2)
    _, lr4 = cache.get_lr(hr_file, 4)
    assert lr2.shape == (3, 13, 18) and lr4.shape == (3, 6, 9)
    assert counting == [2, 4]
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 2

    save_image(_random_uint8(3, 26, 37, seed=12), hr_file)  # new content, same file name
    _, lr2_new = cache.get_lr(hr_file, 2)
    assert counting == [2, 4, 2] and not torch.equal(lr2_new, lr2)

    monkeypatch.setattr(degrade_module, "CACHE_VERSION", degrade_module.CACHE_VERSION + 1)
    cache.get_lr(hr_file, 2)
    assert counting == [2, 4, 2, 2]
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 4


def test_unwritable_cache_warns_once_and_still_works(tmp_path, hr_file, counting):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cache = LRCache(blocker / "cache")
    with pytest.warns(CacheWarning, match="SRLIB_CACHE"):
        hr, lr = cache.get_lr(hr_file, 2)
    assert torch.equal(lr, bicubic_degrade(hr, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is given only once
        _, lr_again = cache.get_lr(hr_file, 2)
    assert torch.equal(lr_again, lr) and counting == [2, 2]


def test_cache_rejects_unknown_degradation(tmp_path, hr_file):
    with pytest.raises(ValueError, match="bicubic"):
        LRCache(tmp_path / "cache").get_lr(hr_file, 2, degradation="gaussian-blur")


def test_default_cache_dir_follows_srlib_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SRLIB_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    assert LRCache().cache_dir == tmp_path / "mine"
    monkeypatch.delenv("SRLIB_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "srlib", "lr")


def test_gray_hr_file_gives_rgb_pair(tmp_path, counting):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    Image.fromarray(gray).save(tmp_path / "gray.png")
    hr, lr = LRCache(tmp_path / "cache").get_lr(tmp_path / "gray.png", 2)
    assert hr.shape == (3, 8, 8) and lr.shape == (3, 4, 4)
    assert torch.equal(lr[0], lr[1]) and torch.equal(lr[1], lr[2])

