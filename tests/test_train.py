"""Training: the smoke preset runs end to end, checkpoints are atomic and resumable."""

from __future__ import annotations

import json

import pytest
import torch

import srlib.train as train_module
from srlib.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, model_from_checkpoint
from srlib.models import build_model, check_lr_batch, register_model
from srlib.models.registry import model_presets
from srlib.train import PRESETS, TrainConfig, TrainingError, preset_config, train

# What every checkpoint written by train() holds, in this order (checkpoint_payload's keys first).
TRAIN_CHECKPOINT_KEYS = [
    "format", "model_name", "scale", "model_options", "model_state", "optimizer_state", "scheduler_state",
    "step", "train_seconds", "rng_state", "config", "history", "plugins",
]


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


def test_loss_decreases_and_checkpoint_holds_everything_needed(tmp_path, monkeypatch):
    # Every checkpoint goes through srlib.checkpoint.checkpoint_payload (one format, one place).
    calls = []
    original = train_module.checkpoint_payload

    def spy(model, **extra):
        calls.append(sorted(extra))
        return original(model, **extra)

    monkeypatch.setattr(train_module, "checkpoint_payload", spy)
    result = train(_config(steps=30, checkpoint_every=30), tmp_path, progress=False, write_report=False)
    losses = result["history"]["loss"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    assert list(payload) == TRAIN_CHECKPOINT_KEYS
    assert calls and all(keys == sorted(TRAIN_CHECKPOINT_KEYS[5:]) for keys in calls)
    assert payload["format"] == CHECKPOINT_FORMAT and payload["model_name"] == "edsr_baseline"
    assert payload["config"]["model"] == "edsr_baseline" and payload["scale"] == 2
    assert payload["model_options"] == {"n_feats": 16, "n_blocks": 2, "res_scale": 1.0}
    assert payload["step"] == 30 and payload["history"]["step"][-1] == 30
    assert payload["plugins"] == [] and payload["config"]["plugins"] is None
    assert TrainConfig.from_dict(payload["config"]) == _config(steps=30, checkpoint_every=30)


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
    with pytest.raises(TrainingError, match="unknown model 'no_such_net'.*edsr_baseline.*--plugin"):
        preset_config("quick", model="no_such_net")
    with pytest.raises(TrainingError, match="bicubic"):
        train(_config(model="bicubic", model_options={}), tmp_path, progress=False)
    with pytest.raises(TrainingError, match="unknown model 'no_such_net'"):
        train(TrainConfig(model="no_such_net"), tmp_path / "unknown", progress=False)
    # A bad validation tile is refused before training, not at the first validation.
    with pytest.raises(TrainingError, match="val_tile"):
        train(_config(val_tile=0), tmp_path / "tile", progress=False)
    assert not (tmp_path / "tile" / "checkpoint.pt").exists()


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
    config = preset_config("smoke", model="csnln", steps=2, val_every=0, checkpoint_every=0, val_max_images=1)
    assert config.model_options == model_presets("csnln", "smoke")["model_options"]
    assert config.val_tile == model_presets("csnln", "smoke")["val_tile"]
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


def test_presets_come_from_the_model_registration(scratch_registries):
    @register_model("preset_toy", presets={
        "smoke": {"model_options": {"width": 5}, "lr_patch": 12, "val_tile": 20, "final_sets": ["Set5"]},
        "full": {"model_options": {"width": 64}},
    })
    def build_preset_toy(scale, width=4):  # never built here: only its presets are read
        return build_model("edsr_baseline", scale, n_feats=width, n_blocks=1)

    smoke = preset_config("smoke", model="preset_toy")
    # The model's settings replace the shared smoke ones (lr_patch 24) ...
    assert (smoke.model_options, smoke.lr_patch, smoke.val_tile, smoke.final_sets) == ({"width": 5}, 12, 20, ("Set5",))
    # ... and the shared ones it does not set stay.
    assert (smoke.steps, smoke.batch_size) == (PRESETS["smoke"]["steps"], PRESETS["smoke"]["batch_size"])
    assert preset_config("full", model="preset_toy").model_options == {"width": 64}
    # A preset the model did not register: the builder's defaults.
    quick = preset_config("quick", model="preset_toy")
    assert quick.model_options == {} and quick.val_tile is None and quick.lr_patch == TrainConfig.lr_patch
    # Overrides win; editing a config in place never changes the registration.
    assert preset_config("smoke", model="preset_toy", lr_patch=8, model_options={"width": 2}).lr_patch == 8
    smoke.model_options["width"] = 99
    assert preset_config("smoke", model="preset_toy").model_options == {"width": 5}
    assert model_presets("preset_toy", "smoke")["model_options"] == {"width": 5}


def test_a_plugin_model_trains_and_its_checkpoint_records_the_plugin(tmp_path, monkeypatch, scratch_registries,
                                                                     write_model_plugin):
    plugin = write_model_plugin(tmp_path / "plugins" / "plugin_net.py", "plugin_net")
    monkeypatch.chdir(plugin.parent)  # a relative path is recorded as the absolute one
    config = preset_config("smoke", model="plugin_net", plugins=["plugin_net.py"], steps=2, val_every=0,
                           checkpoint_every=0)
    assert config.plugins == [str(plugin.resolve())]
    assert config.model_options == {"width": 3} and config.val_tile == 40 and config.final_sets == ("Set5",)
    result = train(config, tmp_path / "run", progress=False, write_report=False)
    payload = load_checkpoint(result["checkpoint"])
    assert list(payload) == TRAIN_CHECKPOINT_KEYS
    assert payload["plugins"] == payload["config"]["plugins"] == [str(plugin.resolve())]
    assert payload["model_name"] == "plugin_net" and payload["model_options"] == {"width": 3}
    model = model_from_checkpoint(payload)
    assert model.model_name == "plugin_net" and tuple(model(torch.rand(1, 3, 5, 6)).shape) == (1, 3, 10, 12)


def test_check_lr_batch_refuses_non_finite_pixels_with_their_count():
    lr = torch.rand(1, 3, 4, 5)
    check_lr_batch(lr)  # finite input passes
    lr[0, 0, 0, :3] = float("nan")
    lr[0, 1, 2, 2] = float("inf")
    lr[0, 2, 3, 4] = float("-inf")
    with pytest.raises(ValueError, match=r"5 non-finite value\(s\) \(3 NaN, 2 infinite\) out of 60"):
        check_lr_batch(lr)
    # Every model's forward checks its input, so NaN never silently becomes a NaN image.
    from srlib.evaluate import super_resolve
    from srlib.models import build_model

    model = build_model("edsr_baseline", 2, n_feats=8, n_blocks=1)
    with pytest.raises(ValueError, match="non-finite"):
        super_resolve(model, lr)
    # Tiled inference checks the whole image before cutting it into tiles.
    image = torch.full((1, 3, 6, 6), 0.5)
    image[0, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\) \(1 NaN, 0 infinite\)"):
        super_resolve(model, image, tile=4, tile_overlap=2)


def test_cpu_bf16_autocasts_the_training_step_only_where_the_cpu_has_bf16(tmp_path, monkeypatch):
    """The quick edsr_baseline preset asks for bf16 on CPU; a CPU without bf16 instructions trains in float32."""
    assert preset_config("quick").cpu_bf16 and not preset_config("smoke").cpu_bf16
    assert not TrainConfig.from_dict({"model": "edsr_baseline"}).cpu_bf16  # an older run's config: float32
    seen = []
    original = build_model

    def spy_build(*args, **kwargs):
        model = original(*args, **kwargs)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
        return model

    monkeypatch.setattr(train_module, "build_model", spy_build)
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: True)
    train(_config(steps=2, checkpoint_every=0, cpu_bf16=True), tmp_path / "bf16", progress=False,
          write_report=False)
    assert seen[0] == torch.bfloat16  # a convolution of the training step's forward pass
    saved = load_checkpoint(tmp_path / "bf16" / "checkpoint.pt")["model_state"]
    assert {value.dtype for value in saved.values()} == {torch.float32}  # float32 weights, bf16 only in the step
    seen.clear()
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bfloat16"):
        train(_config(steps=2, checkpoint_every=0, cpu_bf16=True), tmp_path / "fp32", progress=False,
              write_report=False)
    assert seen and set(seen) == {torch.float32}
