"""Tests for srlib.checkpoint: safe, atomic, self-describing checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from srlib.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    CheckpointMismatchError,
    TRAINING_STATE_KEYS,
    checkpoint_payload,
    export_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from srlib.models import build_model

UNPICKLED = []


def _record_unpickling(tag):
    UNPICKLED.append(tag)
    return tag


class RunsCodeWhenUnpickled:
    """An object whose unpickling calls a function: what weights_only loading must refuse."""

    def __reduce__(self):
        return (_record_unpickling, ("code ran",))


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return build_model("edsr_baseline", 2, n_feats=8, n_blocks=2)


@pytest.fixture()
def saved(tmp_path, model):
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, checkpoint_payload(model, step=7, config={"lr": 1e-4}, history={"loss": [0.5, 0.4]}))
    return path


def test_round_trip_gives_identical_outputs(saved, model):
    payload = load_checkpoint(saved)
    assert payload["format"] == CHECKPOINT_FORMAT
    assert payload["model_name"] == "edsr_baseline" and payload["scale"] == 2
    assert payload["model_options"] == {"n_feats": 8, "n_blocks": 2, "res_scale": 1.0}
    assert payload["step"] == 7 and payload["config"] == {"lr": 1e-4} and payload["history"]["loss"] == [0.5, 0.4]

    loaded = model_from_checkpoint(saved, expected_model="edsr_baseline", expected_scale=2)
    assert not loaded.training
    assert (loaded.model_name, loaded.scale, loaded.options) == (model.model_name, model.scale, model.options)
    lr = torch.rand(1, 3, 9, 7)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(lr), model(lr))
    # A payload already in memory works as well as a path.
    assert torch.equal(model_from_checkpoint(payload).head.weight, model.head.weight)


def test_save_is_atomic_and_overwrites(tmp_path, model):
    path = tmp_path / "deep" / "folder" / "ckpt.pt"
    save_checkpoint(path, checkpoint_payload(model, step=1))
    save_checkpoint(path, checkpoint_payload(model, step=2))
    assert load_checkpoint(path)["step"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]  # no temp files left


def test_unloadable_payload_is_refused_before_writing(tmp_path, model, saved):
    before = saved.read_bytes()
    bad = checkpoint_payload(model, rng_state={"numpy": np.zeros(3)})
    with pytest.raises(TypeError, match="numpy"):
        save_checkpoint(saved, bad)
    assert saved.read_bytes() == before  # the previous checkpoint is untouched
    assert sorted(p.name for p in saved.parent.iterdir()) == ["checkpoint.pt"]
    with pytest.raises(ValueError, match="model_state"):
        save_checkpoint(tmp_path / "x.pt", {"model_name": "bicubic", "scale": 2, "model_options": {}})


def test_missing_file_and_folder(tmp_path, saved):
    missing = tmp_path / "nowhere" / "checkpoint.pt"
    with pytest.raises(CheckpointError, match="no checkpoint at .*nowhere"):
        load_checkpoint(missing)
    with pytest.raises(CheckpointError, match="folder.*checkpoint.pt"):
        load_checkpoint(saved.parent)
    assert issubclass(CheckpointError, ValueError)


def test_truncated_and_garbage_files(tmp_path, saved):
    data = saved.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)


def test_other_formats_are_rejected(tmp_path, model):
    bare_state = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), bare_state)
    with pytest.raises(CheckpointError, match="not an srlib checkpoint"):
        load_checkpoint(bare_state)
    future = tmp_path / "future.pt"
    torch.save({**checkpoint_payload(model), "format": "srlib-checkpoint-v99"}, future)
    with pytest.raises(CheckpointError, match="srlib-checkpoint-v99"):
        load_checkpoint(future)
    incomplete = tmp_path / "incomplete.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model_name": "bicubic"}, incomplete)
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(incomplete)


def test_arbitrary_objects_are_not_unpickled(tmp_path, model):
    path = tmp_path / "evil.pt"
    torch.save({**checkpoint_payload(model), "extra": RunsCodeWhenUnpickled()}, path)
    UNPICKLED.clear()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused"):
        model_from_checkpoint(path)
    assert UNPICKLED == []  # nothing in the file was executed


def test_wrong_scale_or_model(saved):
    with pytest.raises(CheckpointMismatchError) as info:
        model_from_checkpoint(saved, expected_scale=4)
    message = str(info.value)
    assert str(saved) in message and "edsr_baseline x2" in message and "x4" in message and "--scale 2" in message
    with pytest.raises(CheckpointMismatchError, match="bicubic"):
        model_from_checkpoint(saved, expected_model="bicubic")
    assert issubclass(CheckpointMismatchError, CheckpointError)


def test_state_dict_mismatch_lists_keys(tmp_path, model):
    payload = checkpoint_payload(model)
    payload["model_options"] = {**payload["model_options"], "n_blocks": 3}
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: body\.2\.conv1\.bias"):
        model_from_checkpoint(payload)

    payload = checkpoint_payload(model)
    payload["model_state"] = dict(payload["model_state"], extra_weight=torch.zeros(1))
    del payload["model_state"]["tail.bias"]
    path = save_checkpoint(tmp_path / "edited.pt", payload)
    with pytest.raises(CheckpointMismatchError) as info:
        model_from_checkpoint(path)
    assert "tail.bias" in str(info.value) and "extra_weight" in str(info.value)

    payload = checkpoint_payload(model)
    payload["model_options"] = {**payload["model_options"], "n_feats": 4}
    with pytest.raises(CheckpointMismatchError, match="shape"):
        model_from_checkpoint(payload)


def test_unbuildable_options_are_a_mismatch(model):
    payload = checkpoint_payload(model)
    payload["model_options"] = {**payload["model_options"], "attention": True}
    with pytest.raises(CheckpointMismatchError, match="attention"):
        model_from_checkpoint(payload)


def test_parameter_free_model_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "bicubic.pt", checkpoint_payload(build_model("bicubic", 3)))
    loaded = model_from_checkpoint(path, expected_scale=3)
    assert loaded.model_name == "bicubic" and loaded.scale == 3


def _training_payload(model):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 8, 8)).mean().backward()
    optimizer.step()
    return checkpoint_payload(
        model, optimizer_state=optimizer.state_dict(), rng_state={"torch": torch.get_rng_state()},
        step=1, config={"steps": 1}, history={"loss": [0.5]},
    )


def test_export_drops_training_state_and_keeps_outputs(tmp_path, model):
    source = save_checkpoint(tmp_path / "checkpoint.pt", _training_payload(model))
    report = export_checkpoint(source, tmp_path / "slim.pt")
    slim = load_checkpoint(tmp_path / "slim.pt")
    assert sorted(report["dropped"]) == ["optimizer_state", "rng_state"]
    assert not set(TRAINING_STATE_KEYS) & set(slim)
    assert slim["config"] == {"steps": 1} and slim["history"] == {"loss": [0.5]} and slim["step"] == 1
    assert report["bytes"] < report["source_bytes"]
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(model_from_checkpoint(tmp_path / "slim.pt")(x), model.eval()(x), rtol=0, atol=0)


def test_export_half_precision_is_close_and_smaller(tmp_path, model):
    source = save_checkpoint(tmp_path / "checkpoint.pt", _training_payload(model))
    full = export_checkpoint(source, tmp_path / "slim.pt")
    half = export_checkpoint(source, tmp_path / "half.pt", half=True)
    assert half["bytes"] < full["bytes"]
    restored = model_from_checkpoint(tmp_path / "half.pt")
    assert all(p.dtype == torch.float32 for p in restored.parameters())
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model.eval()(x), rtol=0, atol=5e-3)


def test_export_refuses_bad_sources(tmp_path, model):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path / "out.pt")
    source = save_checkpoint(tmp_path / "checkpoint.pt", checkpoint_payload(model))
    with pytest.raises(ValueError, match="overwrite its source"):
        export_checkpoint(source, source)
    broken = checkpoint_payload(model)
    broken["model_state"] = {k: v for k, v in broken["model_state"].items() if "tail" not in k}
    save_checkpoint(tmp_path / "broken.pt", broken)
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        export_checkpoint(tmp_path / "broken.pt", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
