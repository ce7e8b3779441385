"""Run records: writing, reading, refusing, and the shipped records agree with their commands."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from srlib.checkpoint import save_checkpoint
from srlib.cli import build_parser, train_config_from_args
from srlib.models import build_model
from srlib.plugins import load_plugins
from srlib.runs import RunRecordError, load_run_record, write_run_record
from srlib.train import TrainConfig, preset_config, same_training_config

ROOT = Path(__file__).resolve().parent.parent
RECORDS = sorted((ROOT / "data" / "checkpoints" / "runs").rglob("*.json"))


def _fake_run(folder: Path, steps=3) -> TrainConfig:
    config = preset_config("smoke", model="edsr_baseline", scale=2, steps=steps)
    model = build_model("edsr_baseline", 2, **config.model_options)
    folder.mkdir(parents=True)
    save_checkpoint(folder / "checkpoint.pt", {
        "format": "srlib-checkpoint-v1", "model_name": "edsr_baseline", "scale": 2, "model_options": {},
        "model_state": model.state_dict(), "step": steps, "train_seconds": 1.234, "config": config.to_dict(),
        "history": {"step": [1, 2, 3], "loss": [0.3, 0.2, 0.1], "val_step": [3], "val_psnr": [30.0]}})
    (folder / "metrics.json").write_text(json.dumps({"steps": steps, "datasets": {}}))
    return config


def test_write_and_load_a_record(tmp_path):
    config = _fake_run(tmp_path / "run")
    written = write_run_record(tmp_path / "run", tmp_path / "records" / "run.json", "srlib train --preset smoke")
    loaded = load_run_record(tmp_path / "records" / "run.json")
    assert loaded == written
    assert loaded["config"] == config.to_dict() and loaded["step"] == 3 and loaded["train_seconds"] == 1.2
    assert loaded["history"]["val_psnr"] == [30.0] and loaded["command"] == "srlib train --preset smoke"


def test_same_training_config_compares_what_trains():
    config = preset_config("smoke", model="edsr_baseline", scale=2, steps=3)
    assert same_training_config(config.to_dict(), config)
    assert same_training_config({**config.to_dict(), "data_roots": ["/elsewhere"]}, config)
    assert not same_training_config({**config.to_dict(), "steps": 4}, config)
    assert not same_training_config({**config.to_dict(), "model_options": {"n_feats": 5}}, config)


def test_unfinished_runs_and_foreign_files_are_refused(tmp_path):
    _fake_run(tmp_path / "run")
    (tmp_path / "run" / "metrics.json").unlink()
    with pytest.raises(RunRecordError, match="no metrics.json: finish the run"):
        write_run_record(tmp_path / "run", tmp_path / "out.json", "x")
    assert not (tmp_path / "out.json").exists()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RunRecordError, match="is not JSON"):
        load_run_record(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "srlib-run-record-v1", "command": "x"}))
    with pytest.raises(RunRecordError, match="lacks config, step"):
        load_run_record(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError):
        load_run_record(tmp_path / "missing.json")


@pytest.mark.parametrize("path", RECORDS, ids=[f"{p.parent.name}/{p.stem}" for p in RECORDS])
def test_shipped_record_is_what_its_command_trains(path, scratch_registries, monkeypatch):
    monkeypatch.chdir(ROOT)  # commands name plug-in files relative to the repository
    record = load_run_record(path)
    argv = shlex.split(record["command"])
    assert argv[:2] == ["srlib", "train"], record["command"]
    args = build_parser().parse_args(argv[1:])
    assert args.out == f"runs/{path.parent.name}/{path.stem}", "the command writes the run the record names"
    from_command = train_config_from_args(args, plugins=load_plugins(args.plugin or []))
    assert same_training_config(record["config"], from_command), (record["config"], from_command.to_dict())
    assert record["step"] == record["config"]["steps"] == record["metrics"]["steps"]
    assert set(record["metrics"]["datasets"]) == set(record["config"]["final_sets"])
    assert len(record["history"]["step"]) == len(record["history"]["loss"]) > 0


RUN_CHECKPOINTS = sorted((ROOT / "data" / "checkpoints" / "runs").rglob("*.pt"))


@pytest.mark.parametrize("path", RUN_CHECKPOINTS, ids=[f"{p.parent.name}/{p.stem}" for p in RUN_CHECKPOINTS])
def test_shipped_run_checkpoint_is_the_run_its_record_describes(path):
    """A checkpoint kept beside a run record is slim, under 5 MB, and holds that run's configuration and steps."""
    from srlib.checkpoint import load_checkpoint, model_from_checkpoint

    assert path.stat().st_size < 5 * 1000**2
    record = load_run_record(path.with_suffix(".json"))
    payload = load_checkpoint(path)  # weights_only=True inside
    assert "optimizer_state" not in payload
    assert payload["config"] == record["config"] and payload["step"] == record["step"]
    assert payload["model_name"] == record["config"]["model"]
    model_from_checkpoint(payload, expected_model=record["config"]["model"], expected_scale=record["config"]["scale"])
