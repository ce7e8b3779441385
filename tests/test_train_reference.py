"""srlib train for a reference-based model (srlib.train_reference): data, the step, resuming, the report, bad settings."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from srlib.checkpoint import model_from_checkpoint
from srlib.train import TrainingError, preset_config, train
from srlib.train_reference import split_batch


def _write(path, height, width, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    smooth = np.kron(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)), np.ones((8, 8, 1)))
    Image.fromarray(smooth[:height, :width].astype(np.uint8)).save(path)


@pytest.fixture()
def folders(tmp_path):
    scene = tmp_path / "scenes" / "courtyard"
    for k in range(3):
        _write(scene / f"{k:04d}.png", 96, 112, k)
    singles = tmp_path / "singles"
    for k in range(2):
        _write(singles / f"img{k}.png", 128, 128, 10 + k)
    return scene, singles


def _config(folders, **overrides):
    scene, singles = folders
    settings = dict(model="amrsr", train_scenes=(str(scene),), train_sets=(str(singles),), steps=4, val_every=2,
                    checkpoint_every=2, log_every=1, device="cpu")
    settings.update(overrides)
    return preset_config("smoke", **settings)


def test_the_smoke_preset_of_a_reference_model_trains_at_x4_with_references(folders, tmp_path):
    config = _config(folders)
    assert (config.scale, config.references, config.val_set) == (4, 1, "MultiViewRef_mini")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = train(config, tmp_path / "run", progress=False)
    assert result["step"] == 4 and len(result["history"]["val_psnr"]) == 2
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    entry = metrics["datasets"]["MultiViewRef_mini"]
    assert metrics["takes_references"] and metrics["references"] == 1
    assert entry["model_1_ref"]["n_refs"] == 1 and entry["model_all_refs"]["n_refs"] == 5
    assert len(entry["wrong_scene"]["groups"]) == 3
    assert entry["gain_db"] == pytest.approx(entry["model_all_refs"]["psnr"] - entry["bicubic"]["psnr"])
    model = model_from_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert model.use_references and model.scale == 4


def test_a_resumed_reference_run_equals_the_uninterrupted_one(folders, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        whole = train(_config(folders), tmp_path / "whole", progress=False, write_report=False)
        train(_config(folders), tmp_path / "parts", progress=False, write_report=False, stop_after=2)
        resumed = train(_config(folders), tmp_path / "parts", progress=False, write_report=False, resume=True)
    assert resumed["history"]["loss"] == whole["history"]["loss"]
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["model_state"]
    b = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_single_image_baseline_trains_on_the_same_patches_without_references(folders, tmp_path):
    config = _config(folders, steps=2)
    config.model_options = {**config.model_options, "use_references": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train(config, tmp_path / "base", progress=False)
    metrics = json.loads((tmp_path / "base" / "metrics.json").read_text())
    entry = metrics["datasets"]["MultiViewRef_mini"]
    assert not metrics["takes_references"] and "wrong_scene" not in entry
    assert entry["model_1_ref"]["psnr"] == entry["model_all_refs"]["psnr"]  # it ignores the references


def test_split_batch_gives_the_references_as_a_list_of_batches():
    batch = {"lr": torch.zeros(2, 3, 4, 4), "hr": torch.zeros(2, 3, 16, 16), "references": torch.rand(2, 3, 3, 8, 8)}
    lr, hr, references = split_batch(batch)
    assert len(references) == 3 and torch.equal(references[1], batch["references"][:, 1])
    assert split_batch((lr, hr))[2] is None


def test_bad_reference_settings_are_clear_errors(folders, tmp_path):
    with pytest.raises(TrainingError, match="single-image model"):
        train(preset_config("smoke", references=2), tmp_path / "a")
    with pytest.raises(TrainingError, match="--references K"):
        train(_config(folders, references=0), tmp_path / "b")
    with pytest.raises(TrainingError, match="bicubic LR targets only"):
        train(_config(folders, degradation="dn", noise_sigma=10.0), tmp_path / "c")
    assert not (tmp_path / "b" / "checkpoint.pt").exists()


def test_the_cli_takes_the_reference_options(folders):
    from srlib.cli import build_parser, train_config_from_args

    scene, _ = folders
    args = build_parser().parse_args(["train", "--preset", "smoke", "--model", "amrsr", "--out", "x",
                                      "--references", "3", "--train-scene", str(scene), "--reference-size", "64"])
    config = train_config_from_args(args)
    assert (config.scale, config.references, config.train_scenes, config.reference_size) == (4, 3, (str(scene),), 64)
    default = train_config_from_args(build_parser().parse_args(["train", "--out", "x"]))
    assert default.scale == 2 and default.references is None
