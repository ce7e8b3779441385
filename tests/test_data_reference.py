"""Tests for srlib.data.reference: group layouts, LR and matching references, seeded training samples,
self-reference geometry, and that no test scene can reach training."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srlib.data import (
    DATASETS,
    REFERENCE_DATASETS,
    SAMPLE_KINDS,
    TRAIN_SCENES,
    DataRoots,
    DatasetCountWarning,
    DatasetNotFoundError,
    ReferenceGroupDataset,
    ReferencePatchDataset,
    SceneLeakError,
    crop_to_multiple,
    find_reference_dataset,
    held_out_scenes,
    list_images,
    list_views,
    load_image,
    read_groups,
    reference_dataset_report,
    repository_data_dir,
    self_reference_crop,
)
from srlib.imresize import imresize

MINI = repository_data_dir() / "refsr" / "MultiViewRef_mini"


def _shared_root() -> Path | None:
    """The course's shared dataset folder (SRLIB_DATA or ../shared/datasets), if it holds refsr/."""
    candidates = [Path(p) for p in os.environ.get("SRLIB_DATA", "").split(os.pathsep) if p.strip()]
    candidates.append(repository_data_dir().parent.parent / "shared" / "datasets")
    for root in candidates:
        if (root / "refsr" / "MultiViewRef").is_dir():
            return root
    return None


SHARED = _shared_root()
needs_shared = pytest.mark.skipif(SHARED is None, reason="the shared refsr/ data is not found; set SRLIB_DATA")


def _write(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    """A random RGB PNG with smooth structure plus noise (so crops of different places differ)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(np.sin(xx / (3 + c) + yy / (5 + c)) * 80 + 120) for c in range(3)], axis=-1)
    array = np.clip(base + rng.integers(-30, 30, size=base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def _u8(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x * 255 + 0.5).to(torch.uint8)


# ---------------------------------------------------------------------------
# registry


def test_registry_lists_the_test_set_and_the_training_scenes():
    expected = {"MultiViewRef": ("test", 18), "MultiViewRef_mini": ("test", 3), "castle-P19": ("train", 19),
                "entry-P10": ("train", 10), "ngp_fox": ("train", 25), "sceaux_castle": ("train", 11),
                "bundler_kermit": ("train", 11), "bundler_et": ("train", 9), "middlebury_cones": ("train", 2),
                "middlebury_teddy": ("train", 2)}
    assert {name: (info.kind, info.count) for name, info in REFERENCE_DATASETS.items()} == expected
    assert set(TRAIN_SCENES) == {name for name, (kind, _) in expected.items() if kind == "train"}
    assert not set(REFERENCE_DATASETS) & set(DATASETS)
    for name, info in REFERENCE_DATASETS.items():
        assert info.name == name and info.citation and info.description and info.licence
        assert info.layout == ("cufed5" if info.kind == "test" else "views")
        assert info.references == (5 if info.kind == "test" else None)
    assert REFERENCE_DATASETS["middlebury_cones"].pattern == "im*.png"
    test_scenes = {s.lower() for i in REFERENCE_DATASETS.values() if i.kind == "test" for s in i.scenes}
    assert not test_scenes & {name.lower() for name in TRAIN_SCENES}


def test_report_and_not_found_message(tmp_path):
    folder = tmp_path / "refsr" / "MultiViewRef"
    for k in range(3):
        _write(folder / f"000_{k}.png", 24, 24, k)
    with pytest.warns(DatasetCountWarning, match="1 groups but MultiViewRef has 18"):
        assert find_reference_dataset("multiviewref", DataRoots([tmp_path])) == folder
    report = {row["name"]: row for row in reference_dataset_report(DataRoots([tmp_path]))}
    assert list(report) == list(REFERENCE_DATASETS)
    assert report["MultiViewRef"] == {"name": "MultiViewRef", "kind": "test", "layout": "cufed5", "unit": "groups",
                                      "found": True, "path": str(folder), "count": 1, "expected": 18,
                                      "problem": None}
    assert not report["castle-P19"]["found"] and report["castle-P19"]["unit"] == "views"
    with pytest.raises(DatasetNotFoundError) as info:
        find_reference_dataset("castle-P19", DataRoots([tmp_path]))
    message = str(info.value)
    assert "no download" in message and str(tmp_path / "refsr" / "train" / "castle-P19") in message
    with pytest.raises(ValueError, match="unknown reference-SR set"):
        find_reference_dataset("CUFED5", DataRoots([tmp_path]))


# ---------------------------------------------------------------------------
# layouts


def test_cufed5_layout_groups_references_in_order_and_reads_the_manifest(tmp_path):
    for k in range(3):
        _write(tmp_path / f"007_{k}.png", 20, 20, k)
    for k in (0, 1, 2, 3, 10, 4, 5, 6, 7, 8, 9):
        _write(tmp_path / f"b_{k}.jpg", 20, 20, 10 + k)
    (tmp_path / "manifest.json").write_text(json.dumps([{"id": "007", "scene": "street"}]))
    groups = read_groups(tmp_path)
    assert [g.name for g in groups] == ["007", "b"]
    assert groups[0].target.name == "007_0.png" and [p.name for p in groups[0].references] == ["007_1.png",
                                                                                                 "007_2.png"]
    assert [int(p.stem.split("_")[1]) for p in groups[1].references] == list(range(1, 11))  # 10 after 9
    assert groups[0].scene == "street" and groups[1].scene == ""


@pytest.mark.parametrize("files,message", [
    (["a_1.png", "a_2.png"], "no target"),
    (["a_0.png", "a_1.png", "a_3.png"], "without gaps"),
    (["a_0.png"], "no reference"),
    (["a_0.png", "a_1.png", "notes.png"], "not named GGG_k"),
    (["a_0.png", "a_1.png", "a_1.jpg"], "two files numbered 1"),
])
def test_cufed5_layout_errors(tmp_path, files, message):
    for seed, name in enumerate(files):
        _write(tmp_path / name, 8, 8, seed)
    with pytest.raises(ValueError, match=message):
        read_groups(tmp_path, "cufed5")


def test_folder_layout(tmp_path):
    for name in ("target.png", "ref_10.png", "ref_2.jpg", "ref_1.png", "ref_b.png"):
        _write(tmp_path / "street" / name, 16, 16, len(name))
    for name in ("target.jpg", "ref_1.png"):
        _write(tmp_path / "garden" / name, 16, 16, len(name))
    (tmp_path / "empty").mkdir()
    groups = read_groups(tmp_path)  # auto: no image directly in the folder
    assert [g.name for g in groups] == ["garden", "street"]
    assert [p.name for p in groups[1].references] == ["ref_1.png", "ref_2.jpg", "ref_10.png", "ref_b.png"]
    assert groups[0].target.name == "target.jpg"
    _write(tmp_path / "park" / "ref_1.png", 16, 16, 0)
    with pytest.raises(ValueError, match="exactly one target"):
        read_groups(tmp_path)
    _write(tmp_path / "park" / "target.png", 16, 16, 1)
    _write(tmp_path / "park" / "extra.png", 16, 16, 2)
    with pytest.raises(ValueError, match="neither target"):
        read_groups(tmp_path)
    with pytest.raises(ValueError, match="unknown group layout"):
        read_groups(tmp_path, "cufed")


# ---------------------------------------------------------------------------
# evaluation groups


@pytest.mark.parametrize("cache", [False, True])
def test_group_item_lr_is_matlab_bicubic_and_matching_is_down_up(tmp_path, cache):
    target = _write(tmp_path / "g_0.png", 37, 50, 0)
    _write(tmp_path / "g_1.png", 30, 45, 1)
    _write(tmp_path / "g_2.png", 43, 22, 2)
    dataset = ReferenceGroupDataset(tmp_path, scale=4, cache=cache)
    item = dataset[0]
    hr = torch.from_numpy(target).permute(2, 0, 1)[:, :36, :48]  # cropped to a multiple of 4
    assert torch.equal(item["hr"], hr)
    assert item["lr"].dtype == torch.uint8 and torch.equal(item["lr"], imresize(hr, scale=1 / 4))
    assert [tuple(r.shape) for r in item["references"]] == [(3, 28, 44), (3, 40, 20)]
    for path, reference, matching in zip(("g_1.png", "g_2.png"), item["references"], item["references_matching"]):
        expected_ref = crop_to_multiple(load_image(tmp_path / path), 4)
        assert torch.equal(reference, expected_ref)
        assert matching.shape == reference.shape and matching.dtype == torch.uint8
        assert torch.equal(matching, imresize(imresize(expected_ref, scale=1 / 4), scale=4))
        assert not torch.equal(matching, reference)  # the blur is real
    assert item["reference_names"] == ["g_1.png", "g_2.png"] and item["name"] == "g"


def test_n_refs_takes_the_first_and_refuses_more_than_a_group_has(tmp_path):
    for k in range(4):
        _write(tmp_path / f"a_{k}.png", 16, 16, k)
    for k in range(3):
        _write(tmp_path / f"b_{k}.png", 16, 16, 10 + k)
    assert ReferenceGroupDataset(tmp_path, 2, n_refs=1)[0]["reference_names"] == ["a_1.png"]
    assert len(ReferenceGroupDataset(tmp_path, 2, n_refs=2)[1]["references"]) == 2
    all_refs = ReferenceGroupDataset(tmp_path, 2)
    assert [len(all_refs[i]["references"]) for i in range(2)] == [3, 2]
    with pytest.raises(ValueError, match=r"n_refs=3 but 1 group\(s\).*b \(2\).*n_refs <= 2"):
        ReferenceGroupDataset(tmp_path, 2, n_refs=3)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="n_refs must be a positive integer"):
            ReferenceGroupDataset(tmp_path, 2, n_refs=bad)


def test_group_dataset_refuses_small_images_scenes_and_unknown_names(tmp_path):
    _write(tmp_path / "a_0.png", 7, 40, 0)
    _write(tmp_path / "a_1.png", 40, 40, 1)
    with pytest.raises(ValueError, match="smaller than 2 x scale"):
        ReferenceGroupDataset(tmp_path, 4)
    with pytest.raises(ValueError, match="training scene"):
        ReferenceGroupDataset("castle-P19", 4)
    with pytest.raises(DatasetNotFoundError, match="neither a registered"):
        ReferenceGroupDataset(str(tmp_path / "nowhere"), 4)


def test_shipped_mini_set_loads_with_its_scenes_and_provenance():
    dataset = ReferenceGroupDataset("MultiViewRef_mini", scale=4)
    assert dataset.folder == MINI and len(dataset) == 3 and dataset.n_refs == 5
    assert [dataset[i]["scene"] for i in range(3)] == ["fountain-P11", "Herz-Jesus-P8", "llff_fern"]
    item = dataset[2]
    assert tuple(item["hr"].shape) == (3, 192, 252) and tuple(item["lr"].shape) == (3, 48, 63)
    assert all(tuple(r.shape) == (3, 192, 252) for r in item["references"])
    total = sum(path.stat().st_size for path in MINI.iterdir())
    assert total < 5 * 2**20
    readme = (MINI / "README.md").read_text()
    manifest = json.loads((MINI / "manifest.json").read_text())
    for group in manifest:
        assert group["license"] in readme
        for name, info in group["files"].items():
            assert (MINI / name).is_file() and info["derived_from"] == f"refsr/MultiViewRef/{name}"
            assert Image.open(MINI / name).size == tuple(info["size"])


def test_data_sha256sums_lists_every_shipped_image_with_its_hash():
    data = repository_data_dir()
    listed = {}
    for line in (data / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.removeprefix("./")] = digest
    shipped = {str(path.relative_to(data)) for folder in ("benchmark", "train", "refsr")
               for path in (data / folder).rglob("*") if path in list_images(path.parent)}
    assert set(listed) == shipped
    for name, digest in listed.items():
        assert hashlib.sha256((data / name).read_bytes()).hexdigest() == digest, f"{name} does not match SHA256SUMS"


@needs_shared
def test_full_multiviewref_groups_and_manifest_scenes_match_the_registry():
    dataset = ReferenceGroupDataset("MultiViewRef", 4, n_refs=5, roots=SHARED)
    assert len(dataset) == 18 and all(len(g.references) == 5 for g in dataset.groups)
    manifest = json.loads((dataset.folder / "manifest.json").read_text())
    assert {g["scene"] for g in manifest} == set(REFERENCE_DATASETS["MultiViewRef"].scenes)
    assert set(REFERENCE_DATASETS["MultiViewRef_mini"].scenes) <= set(REFERENCE_DATASETS["MultiViewRef"].scenes)
    item = dataset[15]  # sacre_coeur: references of other sizes than the target
    assert item["scene"] == "sacre_coeur" and all(r.shape[-1] % 4 == 0 == r.shape[-2] % 4 for r in item["references"])


# ---------------------------------------------------------------------------
# training samples


@pytest.fixture()
def training_folders(tmp_path):
    scene = tmp_path / "scenes" / "courtyard"
    for k in range(4):
        _write(scene / f"{k:04d}.png", 70, 90, k)
    singles = tmp_path / "singles"
    for k in range(2):
        _write(singles / f"img{k}.png", 100, 110, 20 + k)
    _write(singles / "tiny.png", 10, 10, 30)
    return scene, singles


def _patch_dataset(scene, singles, **options):
    settings = {"scenes": [scene], "images": [singles], "scale": 2, "lr_patch": 8, "n_refs": 2,
                "samples_per_epoch": 40, "cache": False, "progress": False}
    settings.update(options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ReferencePatchDataset(**settings)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_training_samples_are_seeded_and_deterministic(training_folders):
    scene, singles = training_folders
    first, again = _patch_dataset(scene, singles, seed=3), _patch_dataset(scene, singles, seed=3)
    assert all(_same(first[i], again[i]) for i in range(12))
    assert _same(first[5], first[5])
    other = _patch_dataset(scene, singles, seed=4)
    assert not all(_same(first[i], other[i]) for i in range(12))
    first.set_epoch(1)
    assert not all(_same(first[i], again[i]) for i in range(12))
    item = again[0]
    assert item["lr"].shape == (3, 8, 8) and item["hr"].shape == (3, 16, 16)
    assert item["references"].shape == item["references_matching"].shape == (2, 3, 16, 16)
    assert item["references"].dtype == torch.float32 and 0 <= float(item["references"].min())
    assert {again[i]["kind"] for i in range(40)} == set(SAMPLE_KINDS)
    batch = next(iter(torch.utils.data.DataLoader(again, batch_size=4)))
    assert batch["references"].shape == (4, 2, 3, 16, 16) and len(batch["kind"]) == 4
    with pytest.raises(IndexError):
        again[40]


def test_multi_view_references_are_crops_of_other_views_of_the_scene(training_folders):
    scene, singles = training_folders
    dataset = _patch_dataset(scene, singles, self_reference_prob=0.0, augment=False, ref_size=20)
    members = dataset.scene_members["courtyard"]
    for i in range(10):
        item = dataset[i]
        assert item["kind"] == "multi-view" and item["source"] == "courtyard"
        k = dataset.paths.index(scene / item["image"])
        top, left, size = item["target_box"].tolist()
        assert torch.equal(_u8(item["hr"]), dataset.hr_images[k][:, top : top + size, left : left + size])
        assert torch.equal(_u8(item["lr"]), dataset.lr_images[k][:, top // 2 : (top + size) // 2,
                                                                 left // 2 : (left + size) // 2])
        views = item["ref_images"].tolist()
        assert len(set(views)) == 2 and k not in views and set(views) <= set(members)
        distances = [abs(members.index(v) - members.index(k)) for v in views]
        assert distances == sorted(distances)  # nearest in capture order first
        for reference, matching, view, (cy, cx, zoom, angle) in zip(
                item["references"], item["references_matching"], views, item["ref_params"].tolist()):
            t, lft = int(cy - 9.5), int(cx - 9.5)
            assert (zoom, angle) == (1.0, 0.0)
            assert torch.equal(_u8(reference), dataset.hr_images[view][:, t : t + 20, lft : lft + 20])
            assert torch.equal(_u8(matching), imresize(imresize(_u8(reference), scale=0.5), scale=2))


def _bilinear(image: np.ndarray, y: float, x: float) -> np.ndarray:
    """Bilinear interpolation of a (3, H, W) array at pixel-index coordinates, clamped at the borders."""
    height, width = image.shape[-2:]
    y, x = min(max(y, 0.0), height - 1.0), min(max(x, 0.0), width - 1.0)
    y0, x0 = math.floor(y), math.floor(x)
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    wy, wx = y - y0, x - x0
    return ((1 - wy) * ((1 - wx) * image[:, y0, x0] + wx * image[:, y0, x1])
            + wy * ((1 - wx) * image[:, y1, x0] + wx * image[:, y1, x1]))


def test_self_reference_comes_from_another_region_of_the_same_image(training_folders):
    scene, singles = training_folders
    dataset = _patch_dataset(scene, singles, self_reference_prob=1.0, augment=False, seed=7)
    assert "tiny.png" not in {p.name for p in dataset.paths}  # too small: skipped with a warning
    for i in range(8):
        item = dataset[i]
        assert item["kind"] == "self-reference" and item["source"] == "singles"
        k = dataset.paths.index(singles / item["image"])
        assert item["ref_images"].tolist() == [k, k]
        image = dataset.hr_images[k]
        top, left, size = item["target_box"].tolist()
        target_centre = (top + (size - 1) / 2, left + (size - 1) / 2)
        for reference, (cy, cx, zoom, angle) in zip(item["references"], item["ref_params"].tolist()):
            assert max(abs(cy - target_centre[0]), abs(cx - target_centre[1])) >= size / 2  # outside the target
            assert 0.8 <= zoom <= 1.25 and abs(angle) <= 30
            assert not torch.equal(_u8(reference), _u8(item["hr"]))
            # the same image, resampled on the documented grid (an independent bilinear evaluation)
            array = image.numpy().astype(np.float64)
            theta = math.radians(angle)
            for r, c in ((0, 0), (3, 11), (15, 15), (9, 2)):
                u, v = c - (size - 1) / 2, r - (size - 1) / 2
                x = cx + zoom * (math.cos(theta) * u - math.sin(theta) * v)
                y = cy + zoom * (math.sin(theta) * u + math.cos(theta) * v)
                expected = np.floor(_bilinear(array, y, x) + 0.5)
                assert np.abs(_u8(reference)[:, r, c].numpy().astype(np.float64) - expected).max() <= 1


def test_self_reference_crop_without_zoom_or_rotation_is_a_plain_crop_and_rotates_exactly():
    image = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    crop = self_reference_crop(image, (5 + 4.5, 12 + 4.5), 10, 1.0, 0.0)
    assert torch.equal(crop, image[:, 5:15, 12:22])
    turned = self_reference_crop(image, (5 + 4.5, 12 + 4.5), 10, 1.0, 90.0)
    # angle 90: out[i, j] = image[cy + (j - c), cx - (i - c)] = crop[j, 9 - i], the crop turned counterclockwise
    assert torch.equal(turned, torch.rot90(image[:, 5:15, 12:22], k=1, dims=(1, 2)))
    with pytest.raises(TypeError):
        self_reference_crop(image.float(), (10, 10), 4, 1.0, 0.0)


def test_training_argument_errors(training_folders):
    scene, singles = training_folders
    with pytest.raises(ValueError, match="multiple of the scale"):
        _patch_dataset(scene, singles, ref_size=15)
    with pytest.raises(ValueError, match="self_reference_prob"):
        _patch_dataset(scene, singles, self_reference_prob=1.5)
    with pytest.raises(ValueError, match="asks for multi-view samples"):
        _patch_dataset(scene, singles, n_refs=4, self_reference_prob=0.5)  # 4 views: 3 others at most
    with pytest.raises(ValueError, match="at least one"):
        ReferencePatchDataset(scenes=(), images=())


# ---------------------------------------------------------------------------
# no test scene in training


@pytest.mark.parametrize("name", ["fountain-P11", "herz_jesus_p8", "NLE_tower", "MultiViewRef"])
def test_training_refuses_a_test_scene_by_name(tmp_path, name):
    for k in range(3):
        _write(tmp_path / name / f"{k}.png", 40, 40, k)
    with pytest.raises(SceneLeakError, match="test scene"):
        ReferencePatchDataset(scenes=[tmp_path / name], scale=2, lr_patch=8, cache=False, progress=False)
    with pytest.raises(SceneLeakError):
        ReferencePatchDataset(scenes=(), images=[tmp_path / name], scale=2, lr_patch=8, cache=False, progress=False)


def test_training_refuses_a_copied_test_file_and_the_test_sets_themselves(tmp_path):
    scene = tmp_path / "my_street"
    for k in range(2):
        _write(scene / f"{k}.png", 60, 60, k)
    shutil.copy(MINI / "003_2.png", scene / "2.png")  # a test view under another name
    with pytest.raises(SceneLeakError, match="byte-identical to the test image MultiViewRef_mini/003_2.png"):
        ReferencePatchDataset(scenes=[scene], scale=2, lr_patch=8, cache=False, progress=False)
    with pytest.raises(SceneLeakError):
        ReferencePatchDataset(scenes=["MultiViewRef"], scale=2, lr_patch=8, cache=False, progress=False)
    with pytest.raises(SceneLeakError):
        ReferencePatchDataset(scenes=(), images=["MultiViewRef_mini"], scale=2, lr_patch=8, progress=False)
    (tmp_path / "other_views").symlink_to(MINI, target_is_directory=True)  # the test folder under another name
    with pytest.raises(SceneLeakError, match="overlaps the test set folder"):
        ReferencePatchDataset(scenes=[tmp_path / "other_views"], scale=2, lr_patch=8, cache=False, progress=False)
    with pytest.raises(SceneLeakError, match="test scene/set 'MultiViewRef_mini'"):
        ReferencePatchDataset(scenes=[MINI], scale=2, lr_patch=8, cache=False, progress=False)
    assert {"fountain-P11", "llff_fern", "sacre_coeur"} <= held_out_scenes()


@needs_shared
def test_no_training_file_or_scene_name_is_a_test_one():
    test_folders = [find_reference_dataset(name, SHARED) for name in ("MultiViewRef", "MultiViewRef_mini")]
    test_digests = {hashlib.sha256(path.read_bytes()).hexdigest() for folder in test_folders
                    for path in list_images(folder)}
    scenes = held_out_scenes(SHARED)
    manifest = json.loads((test_folders[0] / "manifest.json").read_text())
    assert {g["scene"] for g in manifest} <= scenes
    normalise = {"".join(ch for ch in s.lower() if ch.isalnum()) for s in scenes}
    for name in TRAIN_SCENES:
        assert "".join(ch for ch in name.lower() if ch.isalnum()) not in normalise
        folder = find_reference_dataset(name, SHARED)
        for path in list_images(folder):
            assert hashlib.sha256(path.read_bytes()).hexdigest() not in test_digests, f"{path} is a test file"
    assert [p.name for p in list_views(find_reference_dataset("middlebury_teddy", SHARED), "im*.png")] == [
        "im2.png", "im6.png"]


@needs_shared
def test_training_on_the_shared_scenes_shrinks_large_views_and_labels_kinds():
    dataset = ReferencePatchDataset(scenes=["sceaux_castle", "middlebury_cones", "castle-P19"], images=["T91"],
                                    scale=4, lr_patch=12, n_refs=1, max_images=2, samples_per_epoch=30,
                                    roots=SHARED, progress=False)
    sources = dict(zip([p.name for p in dataset.paths], dataset.hr_images))
    assert max(sources["100_7100.jpg"].shape[-2:]) <= 512  # 2832x2128 shrunk to long side 512
    cones = [path.name for path, source in zip(dataset.paths, dataset.sources) if source == "middlebury_cones"]
    assert cones == ["im2.png", "im6.png"]  # the disparity maps are not views
    kinds = {dataset[i]["kind"] for i in range(30)}
    assert kinds == set(SAMPLE_KINDS)
