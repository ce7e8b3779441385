"""Training: the smoke preset runs end to end, checkpoints are atomic and resumable."""

from __future__ import annotations

import json

import pytest
import torch

from srlib.checkpoint import load_checkpoint
from srlib.train import PRESETS, TrainingError, preset_config, train


def _config(**overrides):
    base = dict(steps=12, checkpoint_every=6, val_every=0, log_every=1, final_sets=("Set5",))
    base.update(overrides)
    return preset_config("smoke", **base)


def test_resumed_run_continues_the_loss_curve_exactly(tmp_path):
    full = train(_config(), tmp_path / "full", progress=False, write_report=False)

    half = train(_config(), tmp_path / "split", progress=False, write_report=False, stop_after=6)
    assert half["step"] == 6
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["step"] == 6
    resumed = train(_config(), tmp_path / "split", resume=True, progress=False, write_report=False)

    assert resumed["step"] == full["step"] == 12
    assert resumed["history"]["step"] == full["history"]["step"]
    # The second half sees the same batches with the same optimizer state: same losses.
    torch.testing.assert_close(
        torch.tensor(resumed["history"]["loss"]), torch.tensor(full["history"]["loss"]), rtol=1e-5, atol=1e-7
    )
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model_state"]
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["model_state"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_loss_decreases_and_checkpoint_holds_everything_needed(tmp_path):
    result = train(_config(steps=30, checkpoint_every=30), tmp_path, progress=False, write_report=False)
    losses = result["history"]["loss"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    for key in ("model_state", "optimizer_state", "scheduler_state", "step", "rng_state", "config", "history"):
        assert key in payload
    assert payload["config"]["model"] == "edsr_baseline" and payload["scale"] == 2


def test_existing_checkpoint_is_never_overwritten_without_resume(tmp_path):
    train(_config(steps=2, checkpoint_every=2), tmp_path, progress=False, write_report=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(TrainingError, match="--resume"):
        train(_config(steps=2), tmp_path, progress=False, write_report=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_with_other_settings_is_refused(tmp_path):
    train(_config(steps=2, checkpoint_every=2), tmp_path, progress=False, write_report=False)
    with pytest.raises(TrainingError, match="scale"):
        train(_config(steps=4, scale=3), tmp_path, resume=True, progress=False, write_report=False)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(TrainingError, match="does not exist"):
        train(_config(), tmp_path, resume=True, progress=False)


def test_report_scores_model_and_bicubic(tmp_path):
    result = train(_config(steps=4, checkpoint_every=0), tmp_path, progress=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == result["metrics"]
    row = metrics["datasets"]["Set5"]
    assert row["bicubic"]["images"] == row["model"]["images"] == 5
    assert abs(row["bicubic"]["psnr"] - 33.649) < 0.01
    assert row["gain_db"] == pytest.approx(row["model"]["psnr"] - row["bicubic"]["psnr"])
    assert (tmp_path / "comparison.png").stat().st_size > 10_000


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(TrainingError, match="unknown preset"):
        preset_config("huge")
    with pytest.raises(TrainingError, match="unknown training options"):
        preset_config("quick", epochs=3)
    with pytest.raises(TrainingError, match="bicubic"):
        train(_config(model="bicubic", model_options={}), tmp_path, progress=False)


def test_presets_are_complete_configs():
    for name in PRESETS:
        cfg = preset_config(name)
        assert cfg.steps > 0 and cfg.batch_size > 0
    assert preset_config("quick").model_options == {"n_feats": 32, "n_blocks": 4}


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, monkeypatch):
    calls = {"n": 0}
    original_step = torch.optim.Adam.step

    def interrupting_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", interrupting_step)
    with pytest.raises(TrainingError, match="--resume"):
        train(_config(steps=12, checkpoint_every=0), tmp_path, progress=False, write_report=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4
    monkeypatch.setattr(torch.optim.Adam, "step", original_step)
    result = train(_config(steps=12, checkpoint_every=0), tmp_path, resume=True, progress=False, write_report=False)
    assert result["step"] == 12


def test_each_model_gets_its_own_preset_settings_and_tiled_validation(tmp_path):
    from srlib.train import MODEL_PRESETS

    config = preset_config("smoke", model="csnln", steps=2, val_every=0, checkpoint_every=0, val_max_images=1)
    assert config.model_options == MODEL_PRESETS["smoke"]["csnln"]["model_options"]
    assert config.val_tile == MODEL_PRESETS["smoke"]["csnln"]["val_tile"]
    # A full-size Set5 image would exceed the attention memory guard untiled; tiles keep it small.
    result = train(config, tmp_path, progress=False, write_report=False)
    assert result["step"] == 2
    assert 0 < result["history"]["val_psnr"][-1] < 100
    # An explicit model_options override still wins over the preset.
    assert preset_config("smoke", model="csnln", model_options={"n_feats": 4}).model_options == {"n_feats": 4}


def test_final_validation_on_a_reported_set_equals_an_independent_evaluation(tmp_path):
    # When the validation set is scored in full by the report, its score is reused as the last
    # validation PSNR; it must be exactly what a separate evaluation of the saved model gives.
    from srlib.checkpoint import model_from_checkpoint
    from srlib.evaluate import evaluate

    config = _config(steps=3, checkpoint_every=0, max_train_images=2)
    config.val_max_images = None  # every Set5 image, as the report scores them
    result = train(config, tmp_path, progress=False)
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    assert payload["history"]["val_step"] == [3]
    reported = result["metrics"]["datasets"]["Set5"]["model"]["psnr"]
    assert payload["history"]["val_psnr"] == [reported]
    model = model_from_checkpoint(payload)
    assert evaluate(model, ["Set5"], 2, progress=False)["Set5"]["psnr"] == pytest.approx(reported, abs=1e-9)
