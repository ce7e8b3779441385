"""Tests for srlib.data.datasets: benchmark pairs and reproducible training patches."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from srlib.data import (
    BenchmarkDataset,
    DatasetNotFoundError,
    TrainPatchDataset,
    bicubic_degrade,
    crop_to_multiple,
    load_image,
    save_image,
    to_uint8,
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Keep LR cache files out of the home folder."""
    monkeypatch.setenv("SRLIB_CACHE", str(tmp_path / "lr-cache"))
    monkeypatch.delenv("SRLIB_DATA", raising=False)


@pytest.fixture
def tiny_root(tmp_path):
    """A data root with a synthetic training set 'Tiny': two usable images and one too small."""
    root = tmp_path / "data"
    generator = torch.Generator().manual_seed(7)
    sizes = {"a_big": (60, 81), "b_mid": (50, 44), "c_small": (12, 14)}
    for stem, (height, width) in sizes.items():
        save_image(torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8),
                   root / "train" / "Tiny" / f"{stem}.png")
    return root


def _tiny(tiny_root, **kwargs):
    options = dict(names="Tiny", scale=2, lr_patch=8, samples_per_epoch=24, roots=tiny_root)
    options.update(kwargs)
    with pytest.warns(UserWarning, match="c_small"):
        return TrainPatchDataset(**options)


# The eight symmetries of a square that flips and a transpose generate.
def _symmetries(patch):
    for flip_h, flip_v, transpose in itertools.product((False, True), repeat=3):
        out = patch
        if flip_h:
            out = out.flip(-1)
        if flip_v:
            out = out.flip(-2)
        if transpose:
            out = out.transpose(-1, -2)
        yield (flip_h, flip_v, transpose), out


def _apply(patch, ops):
    return dict(_symmetries(patch))[ops]


def _undo(patch, ops):
    """Inverse of ``_apply(., ops)``: each step is its own inverse, so undo them in reverse order."""
    flip_h, flip_v, transpose = ops
    if transpose:
        patch = patch.transpose(-1, -2)
    if flip_v:
        patch = patch.flip(-2)
    if flip_h:
        patch = patch.flip(-1)
    return patch


def _locate(dataset, lr_patch_uint8, augmented):
    """All (image, top, left, ops) whose LR crop, transformed by ops, equals the patch."""
    p = dataset.lr_patch
    matches = []
    ops_list = [ops for ops, _ in _symmetries(lr_patch_uint8)] if augmented else [(False, False, False)]
    for k, lr in enumerate(dataset.lr_images):
        windows = lr.unfold(1, p, 1).unfold(2, p, 1)  # (3, rows, cols, p, p): every p x p crop
        for ops in ops_list:
            original = _undo(lr_patch_uint8, ops)
            assert torch.equal(_apply(original, ops), lr_patch_uint8)
            equal = (windows == original[:, None, None]).all(dim=(0, 3, 4))
            matches += [(k, int(top), int(left), ops) for top, left in equal.nonzero()]
    return matches


# ---------------------------------------------------------------------------
# BenchmarkDataset


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_benchmark_dataset_on_shipped_set5(scale):
    dataset = BenchmarkDataset("Set5", scale)
    assert len(dataset) == 5 and dataset.folder.name == "Set5"
    names = []
    for item in dataset:
        names.append(item["name"])
        hr, lr = item["hr"], item["lr"]
        assert hr.dtype == torch.uint8 and lr.dtype == torch.uint8
        assert hr.shape[0] == 3 and hr.shape[1] % scale == 0 and hr.shape[2] % scale == 0
        assert hr.shape == (3, lr.shape[1] * scale, lr.shape[2] * scale)
    assert names == ["baby", "bird", "butterfly", "head", "woman"]
    first = dataset[0]
    full = load_image(dataset.paths[0])
    assert torch.equal(first["hr"], crop_to_multiple(full, scale))
    assert torch.equal(first["lr"], bicubic_degrade(first["hr"], scale))


def test_benchmark_dataset_max_images_cache_and_loader():
    dataset = BenchmarkDataset("set14", 2, cache=False, max_images=2)
    assert len(dataset) == 2 and [p.stem for p in dataset.paths] == ["baboon", "barbara"]
    batch = next(iter(DataLoader(dataset, batch_size=1)))
    assert batch["hr"].shape[0] == 1 and batch["name"] == ["baboon"]


def test_benchmark_dataset_skips_tiny_images(tmp_path):
    folder = tmp_path / "root" / "benchmark" / "Mixed"
    save_image(torch.zeros(3, 20, 20, dtype=torch.uint8), folder / "ok.png")
    save_image(torch.zeros(3, 7, 30, dtype=torch.uint8), folder / "thin.png")
    with pytest.warns(UserWarning, match="thin.png"):
        dataset = BenchmarkDataset("Mixed", 4, roots=tmp_path / "root")
    assert [p.name for p in dataset.paths] == ["ok.png"]


def test_benchmark_dataset_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        BenchmarkDataset("Urban100", 2, roots=tmp_path)
    with pytest.raises(ValueError, match="scale"):
        BenchmarkDataset("Set5", 1)


# ---------------------------------------------------------------------------
# TrainPatchDataset


def test_patch_shapes_and_ranges(tiny_root):
    dataset = _tiny(tiny_root, scale=3, lr_patch=5)
    assert len(dataset) == 24 and len(dataset.hr_images) == 2
    for index in range(len(dataset)):
        lr, hr = dataset[index]
        assert lr.shape == (3, 5, 5) and hr.shape == (3, 15, 15)
        assert lr.dtype == torch.float32 and hr.dtype == torch.float32
        assert 0.0 <= float(lr.min()) and float(lr.max()) <= 1.0
        assert 0.0 <= float(hr.min()) and float(hr.max()) <= 1.0


def test_preloaded_pairs_are_the_bicubic_pairs(tiny_root):
    dataset = _tiny(tiny_root)
    for path, hr, lr in zip(dataset.paths, dataset.hr_images, dataset.lr_images):
        assert torch.equal(hr, crop_to_multiple(load_image(path), 2))
        assert torch.equal(lr, bicubic_degrade(hr, 2))


def test_patches_are_aligned_crops_without_augmentation(tiny_root):
    dataset = _tiny(tiny_root, augment=False)
    s, p = dataset.scale, dataset.lr_patch
    for index in range(8):
        lr, hr = dataset[index]
        lr8, hr8 = to_uint8(lr), to_uint8(hr)
        matches = _locate(dataset, lr8, augmented=False)
        assert matches, "the LR patch is not a crop of any LR image"
        assert any(
            torch.equal(hr8, dataset.hr_images[k][:, s * top : s * (top + p), s * left : s * (left + p)])
            for k, top, left, _ in matches
        )


def test_augmented_patches_stay_aligned(tiny_root):
    dataset = _tiny(tiny_root, augment=True)
    s, p = dataset.scale, dataset.lr_patch
    seen_ops = set()
    for index in range(12):
        lr, hr = dataset[index]
        lr8, hr8 = to_uint8(lr), to_uint8(hr)
        aligned = [
            ops
            for k, top, left, ops in _locate(dataset, lr8, augmented=True)
            if torch.equal(
                hr8, _apply(dataset.hr_images[k][:, s * top : s * (top + p), s * left : s * (left + p)], ops)
            )
        ]
        assert aligned, f"sample {index}: HR patch does not match the LR patch's crop and transform"
        seen_ops.add(aligned[0])
    assert len(seen_ops) > 1  # augmentation really happens


def test_samples_are_repeatable_and_change_with_epoch_and_seed(tiny_root):
    dataset = _tiny(tiny_root)
    again = _tiny(tiny_root)
    for index in (0, 5, 23):
        assert all(torch.equal(a, b) for a, b in zip(dataset[index], dataset[index]))
        assert all(torch.equal(a, b) for a, b in zip(dataset[index], again[index]))
    epoch0 = [dataset[i][1] for i in range(len(dataset))]
    dataset.set_epoch(1)
    epoch1 = [dataset[i][1] for i in range(len(dataset))]
    assert sum(not torch.equal(a, b) for a, b in zip(epoch0, epoch1)) > len(dataset) // 2
    dataset.set_epoch(0)
    assert all(torch.equal(dataset[i][1], epoch0[i]) for i in range(len(dataset)))
    other_seed = _tiny(tiny_root, seed=1)
    assert any(not torch.equal(other_seed[i][1], epoch0[i]) for i in range(len(dataset)))


def test_dataloader_workers_do_not_change_samples(tiny_root):
    dataset = _tiny(tiny_root)
    dataset.set_epoch(3)

    def batches(workers):
        loader = DataLoader(dataset, batch_size=6, shuffle=False, num_workers=workers)
        return [(lr.clone(), hr.clone()) for lr, hr in loader]

    single, multi = batches(0), batches(2)
    assert len(single) == len(multi) == 4
    for (lr_a, hr_a), (lr_b, hr_b) in zip(single, multi):
        assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b)


def test_too_large_patch_raises_with_sizes(tiny_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"6x7.*41|41.*6x7"):
            TrainPatchDataset("Tiny", scale=2, lr_patch=41, roots=tiny_root)


def test_index_out_of_range_and_bad_arguments(tiny_root):
    dataset = _tiny(tiny_root)
    with pytest.raises(IndexError):
        dataset[24]
    with pytest.raises(ValueError, match="lr_patch"):
        TrainPatchDataset("Tiny", lr_patch=0, roots=tiny_root)
    with pytest.raises(ValueError, match="epoch"):
        dataset.set_epoch(-1)


def test_default_training_set_is_the_shipped_t91():
    dataset = TrainPatchDataset(samples_per_epoch=4, lr_patch=16, max_images=3)
    assert dataset.names == ("T91",) and len(dataset.hr_images) == 3
    lr, hr = dataset[0]
    assert lr.shape == (3, 16, 16) and hr.shape == (3, 32, 32)
