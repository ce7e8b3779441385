"""Tests for srlib.data.registry and srlib.data.locate: names, roots, layouts, messages."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import pytest
from PIL import Image

from srlib.data import (
    DATASETS,
    DataRoots,
    DatasetCountWarning,
    DatasetNotFoundError,
    data_roots,
    dataset_report,
    find_dataset,
    get_dataset_info,
    list_images,
    repository_data_dir,
)


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _tiny_png()


def make_set(folder: Path, count: int, stem: str = "img") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (folder / f"{stem}_{index:03d}.png").write_bytes(PNG)
    return folder


@pytest.fixture(autouse=True)
def no_env_roots(monkeypatch):
    monkeypatch.delenv("SRLIB_DATA", raising=False)


# ---------------------------------------------------------------------------
# registry


def test_registry_contents():
    expected = {"Set5": 5, "Set14": 14, "B100": 100, "Urban100": 100, "Manga109": 109,
                "T91": 91, "BSD200": 200, "DIV2K": 800}
    assert {name: info.images for name, info in DATASETS.items()} == expected
    for name, info in DATASETS.items():
        assert info.name == name
        assert info.kind in ("benchmark", "train")
        assert info.url.startswith(("http://", "https://"))
        assert info.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", info.sha256)
        assert info.citation and info.description
    assert DATASETS["DIV2K"].kind == "train" and DATASETS["Set5"].kind == "benchmark"


def test_get_dataset_info_is_case_insensitive_with_aliases():
    assert get_dataset_info("set5") is DATASETS["Set5"]
    assert get_dataset_info("URBAN100") is DATASETS["Urban100"]
    assert get_dataset_info("BSD100") is DATASETS["B100"]
    assert get_dataset_info("bsds100") is DATASETS["B100"]
    with pytest.raises(ValueError) as info:
        get_dataset_info("Set15")
    for name in DATASETS:
        assert name in str(info.value)


# ---------------------------------------------------------------------------
# list_images


def test_list_images_filters_and_sorts(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.JpEg", "d.bmp", "e.tif", "f.TIFF", "g.ppm", ".hidden.png", "notes.txt"]:
        (tmp_path / name).write_bytes(PNG)
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.JpEg", "d.bmp", "e.tif", "f.TIFF", "g.ppm"]
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")


# ---------------------------------------------------------------------------
# layouts


@pytest.mark.parametrize(
    "relative",
    ["Set5", "benchmark/Set5", "train/Set5", "Set5/HR", "benchmark/Set5/HR", "train/Set5/HR"],
)
def test_layouts(tmp_path, relative):
    folder = make_set(tmp_path / relative, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_dataset("set5", roots=tmp_path) == folder


def test_alias_folder_name_is_found(tmp_path):
    folder = make_set(tmp_path / "benchmark" / "BSD100", 100)
    assert find_dataset("B100", roots=[tmp_path]) == folder
    assert find_dataset("bsds100", roots=[tmp_path]) == folder


def test_unregistered_name_is_searched_without_count_check(tmp_path):
    folder = make_set(tmp_path / "benchmark" / "MyPhotos", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_dataset("MyPhotos", roots=tmp_path) == folder


# ---------------------------------------------------------------------------
# roots and precedence


def test_srlib_data_with_two_roots(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    only_second = make_set(second / "benchmark" / "Set14", 14)
    monkeypatch.setenv("SRLIB_DATA", f"{first}:{second}")
    roots = data_roots()
    assert roots[:2] == [first, second]
    assert find_dataset("Set14") == only_second
    in_first = make_set(first / "Set14", 14)
    assert find_dataset("Set14") == in_first  # earlier root wins


def test_precedence_extra_then_env_then_repository(tmp_path, monkeypatch):
    repo_set5 = repository_data_dir() / "benchmark" / "Set5"
    assert find_dataset("Set5", roots=data_roots()) == repo_set5  # the shipped copy
    env_root, extra_root = tmp_path / "env", tmp_path / "extra"
    env_set5 = make_set(env_root / "benchmark" / "Set5", 5)
    monkeypatch.setenv("SRLIB_DATA", str(env_root))
    assert find_dataset("Set5", roots=data_roots()) == env_set5
    extra_set5 = make_set(extra_root / "Set5", 5)
    roots = data_roots(extra_root)
    assert roots == [extra_root, env_root, repository_data_dir()]
    assert find_dataset("Set5", roots=roots) == extra_set5


def test_data_roots_drops_duplicates_and_remembers_missing(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    missing = tmp_path / "missing"
    monkeypatch.setenv("SRLIB_DATA", f"{root}:{missing}")
    roots = data_roots([root, str(root / "." )])
    assert roots.count(root) == 1 and roots[0] == root
    assert missing not in roots and roots.missing == [missing]
    assert data_roots(f"{root}:{root}")[0] == root and len(data_roots(f"{root}:{root}")) == len(roots)


# ---------------------------------------------------------------------------
# errors and warnings


def test_not_found_message_names_every_folder_and_how_to_get_it(tmp_path):
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    root_a.mkdir()
    root_b.mkdir()
    missing = tmp_path / "not-there"
    with pytest.raises(DatasetNotFoundError) as info:
        find_dataset("Urban100", roots=[root_a, missing, root_b])  # then SRLIB_DATA (unset) and data/
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "Urban100" in message
    for root in (root_a, root_b):
        for layout in ("Urban100", "benchmark/Urban100", "train/Urban100"):
            assert str(root / layout) in message
            assert str(root / layout / "HR") in message
    assert str(missing) in message
    assert str(repository_data_dir() / "benchmark" / "Urban100") in message
    assert "srlib data --download Urban100 --root" in message
    assert DATASETS["Urban100"].url in message
    assert "SRLIB_DATA" in message and "--data-root" in message


def test_wrong_count_warns_but_returns(tmp_path):
    folder = make_set(tmp_path / "benchmark" / "Set14", 13)
    with pytest.warns(DatasetCountWarning, match=r"13 images but Set14 has 14"):
        assert find_dataset("Set14", roots=tmp_path) == folder


def test_empty_folder_is_reported_as_empty(tmp_path):
    empty = tmp_path / "benchmark" / "Set5"
    empty.mkdir(parents=True)
    (empty / "readme.txt").write_text("images go here")
    with pytest.raises(DatasetNotFoundError) as info:
        find_dataset("Set5", roots=DataRoots([tmp_path]))  # exactly this root, not the shipped data/
    message = str(info.value)
    assert "empty" in message and str(empty) in message


def test_empty_folder_in_first_root_does_not_hide_a_later_copy(tmp_path):
    (tmp_path / "a" / "Set5").mkdir(parents=True)
    full = make_set(tmp_path / "b" / "Set5", 5)
    assert find_dataset("Set5", roots=[tmp_path / "a", tmp_path / "b"]) == full
    repo_set5 = repository_data_dir() / "benchmark" / "Set5"
    assert find_dataset("Set5", roots=tmp_path / "a") == repo_set5  # extra roots come before data/, not instead


def test_explicit_data_roots_are_searched_exactly(tmp_path):
    only = make_set(tmp_path / "mine" / "T91", 91)
    assert find_dataset("T91", roots=DataRoots([tmp_path / "mine"])) == only
    with pytest.raises(DatasetNotFoundError):
        find_dataset("Set14", roots=DataRoots([tmp_path / "mine"]))


def test_dataset_report(tmp_path):
    make_set(tmp_path / "benchmark" / "Set5", 5)
    make_set(tmp_path / "train" / "T91", 90)
    report = {entry["name"]: entry for entry in dataset_report(roots=tmp_path)}
    assert list(report) == list(DATASETS)
    assert report["Set5"] == {"name": "Set5", "found": True, "path": str(tmp_path / "benchmark" / "Set5"),
                              "images": 5, "expected": 5, "url": DATASETS["Set5"].url}
    assert report["T91"]["found"] and report["T91"]["images"] == 90 and report["T91"]["expected"] == 91
    assert report["DIV2K"] == {"name": "DIV2K", "found": False, "path": None, "images": None,
                               "expected": 800, "url": DATASETS["DIV2K"].url}
