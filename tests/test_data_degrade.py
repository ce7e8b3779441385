"""Tests for srlib.data.degrade: modcrop, the bicubic, BD and DN degradations and the LR cache."""

from __future__ import annotations

import hashlib
import math
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
from srlib.data.datasets import BenchmarkDataset, TrainPatchDataset
from srlib.data.degrade import (
    BD_KERNEL_SIZES,
    Degradation,
    as_degradation,
    bd_degrade,
    bd_kernel,
    dn_degrade,
    dn_seed,
    make_lr_pair,
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



# ---------------------------------------------------------------------------
# BD: blur-downscale (Prepare_TestData_HR_LR.m of RDN / RCAN)


def test_bd_kernel_is_the_scripts_7x7_gaussian_summing_to_one():
    kernel = bd_kernel(3)
    assert kernel.shape == (7, 7) and kernel.dtype == torch.float64
    assert BD_KERNEL_SIZES == {3: 7}
    assert math.isclose(float(kernel.sum()), 1.0, rel_tol=0, abs_tol=1e-15)
    assert torch.equal(kernel, kernel.flip(0)) and torch.equal(kernel, kernel.T)
    # fspecial('gaussian', 7, 1.6), written out: exp(-(x^2 + y^2) / (2 * 1.6^2)) / sum.
    raw = [[math.exp(-(x * x + y * y) / (2 * 1.6**2)) for x in range(-3, 4)] for y in range(-3, 4)]
    total = sum(map(sum, raw))
    expected = torch.tensor([[v / total for v in row] for row in raw], dtype=torch.float64)
    assert torch.allclose(kernel, expected, rtol=0, atol=1e-15)
    assert abs(float(kernel[3, 3]) - 0.0655556) < 1e-6


def _bd_reference(hr: torch.Tensor) -> torch.Tensor:
    """BD x3 as the script does it, one pixel at a time in float64: replicate-pad, correlate, round, sample."""
    kernel = bd_kernel(3).tolist()
    channels, height, width = hr.shape
    image = hr.to(torch.float64).tolist()
    out = torch.zeros(channels, height // 3, width // 3, dtype=torch.uint8)
    for c in range(channels):
        for i, row in enumerate(range(1, height, 3)):  # MATLAB rows 2, 5, 8, ... (1-based)
            for j, col in enumerate(range(1, width, 3)):  # columns 2, 5, 8, ...
                total = 0.0
                for dy in range(-3, 4):
                    for dx in range(-3, 4):
                        y = min(max(row + dy, 0), height - 1)  # 'replicate' border
                        x = min(max(col + dx, 0), width - 1)
                        total += kernel[dy + 3][dx + 3] * image[c][y][x]
                out[c, i, j] = math.floor(min(max(total, 0.0), 255.0) + 0.5)  # imfilter on uint8 rounds
    return out


def test_bd_degrade_equals_a_literal_loop_of_the_script():
    hr = _random_uint8(3, 12, 15, seed=3)
    lr = bd_degrade(hr, 3)
    assert lr.dtype == torch.uint8 and lr.shape == (3, 4, 5)
    assert torch.equal(lr, _bd_reference(hr))


def test_bd_degrade_batches_constants_and_devices():
    batch = _random_uint8(2, 3, 9, 6, seed=4)
    lr = bd_degrade(batch, 3)
    assert lr.shape == (2, 3, 3, 2)
    for index in range(2):
        assert torch.equal(lr[index], bd_degrade(batch[index], 3))
    constant = torch.full((3, 9, 9), 201, dtype=torch.uint8)
    assert torch.equal(bd_degrade(constant, 3), torch.full((3, 3, 3), 201, dtype=torch.uint8))


@pytest.mark.parametrize("scale", [2, 4, 5])
def test_bd_refuses_a_scale_without_a_kernel(scale, tmp_path, hr_file):
    hr = _random_uint8(3, 20 * scale, 20 * scale)
    for call in (lambda: bd_degrade(hr, scale), lambda: bd_kernel(scale), lambda: Degradation("bd").check_scale(scale),
                 lambda: LRCache(tmp_path / "cache").get_lr(hr_file, scale, "bd")):
        with pytest.raises(ValueError, match=f"x3 only.*x{scale}"):
            call()
    assert not (tmp_path / "cache").exists()  # refused before anything was computed


def test_bd_checks_its_input_like_bicubic():
    with pytest.raises(TypeError, match="uint8"):
        bd_degrade(torch.rand(3, 9, 9), 3)
    with pytest.raises(ValueError, match="crop_to_multiple"):
        bd_degrade(_random_uint8(3, 10, 9), 3)
    with pytest.raises(ValueError, match="RGB"):
        bd_degrade(_random_uint8(1, 9, 9), 3)


# ---------------------------------------------------------------------------
# DN: noise-downscale


def test_dn_is_repeatable_per_file_and_differs_between_sigmas(tmp_path, hr_file):
    first = LRCache(tmp_path / "one").get_lr(hr_file, 2, Degradation("dn", noise_sigma=15))[1]
    again = LRCache(tmp_path / "two").get_lr(hr_file, 2, "dn_s15")[1]  # another cache: recomputed
    in_memory = make_lr_pair(hr_file, 2, "dn_s15")[1]
    assert torch.equal(first, again) and torch.equal(first, in_memory)
    hr = crop_to_multiple(load_image(hr_file), 2)
    bicubic = bicubic_degrade(hr, 2)
    assert not torch.equal(first, bicubic)
    noise = first.double() - bicubic.double()
    assert 10 < float(noise.std()) < 20  # sigma 15 on 0..255, a little less where clipped
    other = make_lr_pair(hr_file, 2, "dn_s10")[1]
    assert not torch.equal(other, first)


def test_dn_noise_depends_on_the_file_and_follows_dn_seed(tmp_path, hr_file):
    digest = hashlib.sha256(hr_file.read_bytes()).hexdigest()
    hr = crop_to_multiple(load_image(hr_file), 2)
    _, lr = make_lr_pair(hr_file, 2, "dn_s15")
    assert torch.equal(lr, dn_degrade(hr, 2, 15, seed=dn_seed(digest, 2, 15.0)))
    assert dn_seed(digest, 2, 15) != dn_seed(digest, 2, 10) != dn_seed(digest, 3, 10)
    assert 0 <= dn_seed(digest, 2, 15) < 2**63
    twin = tmp_path / "twin.png"  # the same pixels in a file with other bytes: another noise field
    Image.open(hr_file).save(twin, compress_level=1)
    assert torch.equal(load_image(twin), load_image(hr_file))
    assert hashlib.sha256(twin.read_bytes()).hexdigest() != digest
    assert not torch.equal(make_lr_pair(twin, 2, "dn_s15")[1], lr)


def test_dn_with_sigma_zero_is_bicubic(hr_file):
    hr, lr = make_lr_pair(hr_file, 3, Degradation("dn", noise_sigma=0))
    assert torch.equal(lr, bicubic_degrade(hr, 3))
    assert torch.equal(dn_degrade(hr, 3, 0.0, seed=1), bicubic_degrade(hr, 3))


def test_dn_rounds_and_clips_to_uint8():
    hr = torch.zeros(3, 8, 8, dtype=torch.uint8)
    hr[:, :, 4:] = 255
    lr = dn_degrade(hr, 2, 40.0, seed=torch.Generator().manual_seed(0))
    noise = torch.randn((3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = bicubic_degrade(hr, 2).double() + 40 * noise  # (3, 4, 4), below 0 and above 255 in places
    assert (expected < 0).any() and (expected > 255).any()
    assert lr.dtype == torch.uint8
    assert torch.equal(lr, torch.floor(expected.clamp(0, 255) + 0.5).to(torch.uint8))


@pytest.mark.parametrize("sigma", [-1, -0.5, float("nan"), float("inf")])
def test_dn_refuses_a_negative_or_non_finite_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        Degradation("dn", noise_sigma=sigma)
    with pytest.raises(ValueError, match="sigma"):
        dn_degrade(_random_uint8(3, 8, 8), 2, sigma, seed=0)


def test_dn_needs_a_seed_source():
    with pytest.raises(ValueError, match="SHA-256"):
        Degradation("dn", noise_sigma=5).apply(_random_uint8(3, 8, 8), 2)
    with pytest.raises(TypeError, match="seed"):
        dn_degrade(_random_uint8(3, 8, 8), 2, 5, seed="0")


# ---------------------------------------------------------------------------
# Degradation: names, parameters, cache keys


def test_degradation_keys_parse_back_and_validate():
    for degradation, key in ((Degradation(), "bicubic"), (Degradation("bd"), "bd"),
                             (Degradation("dn", 15), "dn_s15"), (Degradation("dn", 12.5), "dn_s12.5"),
                             (Degradation("dn", 0), "dn_s0"), (Degradation("dn", -0.0), "dn_s0")):
        assert degradation.key == str(degradation) == key
        assert Degradation.parse(key) == as_degradation(key) == degradation
    assert as_degradation("BD") == Degradation("bd")
    assert Degradation("dn", 15).noise_sigma == 15.0 and isinstance(Degradation("dn", 15).noise_sigma, float)
    with pytest.raises(ValueError, match="bicubic, bd, dn"):
        Degradation("gaussian")
    with pytest.raises(ValueError, match="--noise"):
        as_degradation("dn")
    with pytest.raises(ValueError, match="dn degradation only"):
        Degradation("bicubic", noise_sigma=5)
    with pytest.raises(ValueError, match="dn_s15"):
        as_degradation("dn_sfifteen")
    with pytest.raises(TypeError, match="number"):
        Degradation("dn", noise_sigma="15")


def test_cache_key_differs_between_degradations_and_parameters(tmp_path, hr_file):
    cache = LRCache(tmp_path / "cache")
    digest = "ab" * 32
    names = [cache.path_for(digest, 3, d).name for d in ("bicubic", "bd", "dn_s15", "dn_s10", Degradation("dn", 10.5))]
    assert len(set(names)) == 5
    # The bicubic key is the one srlib has always used: existing caches stay valid.
    assert names[0] == f"{digest}_x3_bicubic_v{degrade_module.CACHE_VERSION}.png"
    assert cache.path_for(digest, 3) == cache.path_for(digest, 3, Degradation("bicubic"))

    pairs = {key: cache.get_lr(hr_file, 3, key)[1] for key in ("bicubic", "bd", "dn_s15", "dn_s10")}
    files = sorted(path.name.split("_x3_")[1] for path in (tmp_path / "cache").rglob("*.png"))
    assert files == [f"{key}_v{degrade_module.CACHE_VERSION}.png" for key in ("bd", "bicubic", "dn_s10", "dn_s15")]
    for key, lr in pairs.items():
        assert torch.equal(cache.get_lr(hr_file, 3, key)[1], lr)  # read back from its own file
    assert len({bytes(lr.numpy()) for lr in pairs.values()}) == 4


def test_datasets_pass_the_degradation_through(tmp_path):
    root = tmp_path / "data"
    for stem, seed in (("one", 1), ("two", 2)):
        save_image(_random_uint8(3, 30, 27, seed=seed), root / "benchmark" / "Mine" / f"{stem}.png")
    cache = LRCache(tmp_path / "cache")
    bench = BenchmarkDataset("Mine", 3, roots=root, cache=cache, degradation="bd")
    sample = bench[0]
    assert bench.degradation == Degradation("bd") and "degradation='bd'" in repr(bench)
    assert torch.equal(sample["lr"], bd_degrade(sample["hr"], 3))
    noisy = BenchmarkDataset("Mine", 3, roots=root, cache=False, degradation=Degradation("dn", 20))[1]
    assert torch.equal(noisy["lr"], make_lr_pair(root / "benchmark" / "Mine" / "two.png", 3, "dn_s20")[1])
    with pytest.raises(ValueError, match="x3 only"):
        BenchmarkDataset("Mine", 2, roots=root, degradation="bd")

    patches = TrainPatchDataset("Mine", scale=3, lr_patch=4, samples_per_epoch=2, roots=root, cache=cache,
                                degradation="bd", progress=False)
    assert torch.equal(patches.lr_images[0], bd_degrade(patches.hr_images[0], 3))
    with pytest.raises(ValueError, match="x3 only"):
        TrainPatchDataset("Mine", scale=4, lr_patch=4, roots=root, degradation="bd", progress=False)
