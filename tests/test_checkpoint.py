"""Tests for srlib.checkpoint: safe, atomic, self-describing checkpoints."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap

import numpy as np
import pytest
import torch

from srlib.attention.registry import available_attention
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
from srlib.plugins import PluginError, load_plugins, plugin_module_name, plugins_from_environment

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


# -- plugins: files outside the package that register attention modules or models -----------------

GATE_PLUGIN = textwrap.dedent('''
    import torch
    from torch import nn
    from srlib.attention import register_attention

    with open(__file__ + ".imports", "a") as log:  # one line per execution of this file
        log.write("imported\\n")


    @register_attention("plugin_gate", kind="in_scale")
    class PluginGate(nn.Module):
        """A 1x1 sigmoid gate: the smallest in-scale attention."""

        def __init__(self, channels, reduction=2):
            super().__init__()
            self.gate = nn.Conv2d(channels, channels, 1)

        def forward(self, x, return_details=False):
            out = x * torch.sigmoid(self.gate(x))
            return (out, {}) if return_details else out
''')


def test_load_plugins_imports_once_and_returns_absolute_paths(tmp_path, monkeypatch, scratch_registries):
    plugin = tmp_path / "gate.py"
    plugin.write_text(GATE_PLUGIN)
    monkeypatch.chdir(tmp_path)
    assert "plugin_gate" not in available_attention()
    assert load_plugins(["gate.py"]) == [str(plugin.resolve())]
    assert "plugin_gate" in available_attention("in_scale")
    module = sys.modules[plugin_module_name(plugin)]
    # Loading again (relative or absolute, a single path, a duplicate) is a no-op.
    assert load_plugins([plugin, "gate.py"]) == [str(plugin.resolve())]
    assert load_plugins(str(plugin)) == [str(plugin.resolve())]
    assert sys.modules[plugin_module_name(plugin)] is module
    assert (tmp_path / "gate.py.imports").read_text() == "imported\n"
    assert load_plugins(None) == [] and load_plugins([]) == []
    # Same file name in another folder: another module, no clash of module names.
    assert plugin_module_name(tmp_path / "other" / "gate.py") != plugin_module_name(plugin)


def test_plugin_errors_name_the_file(tmp_path, scratch_registries):
    missing = tmp_path / "nowhere" / "attention.py"
    with pytest.raises(PluginError, match=r"plugin file .*nowhere.attention\.py does not exist.*--plugin"):
        load_plugins([missing])
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('the plugin is not finished')\n")
    with pytest.raises(PluginError) as info:
        load_plugins([broken])
    message = str(info.value)
    assert str(broken) in message and "RuntimeError: the plugin is not finished" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value.__cause__, RuntimeError)
    assert plugin_module_name(broken) not in sys.modules
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def oops(:\n")
    with pytest.raises(PluginError, match=r"syntax\.py failed to import \(SyntaxError"):
        load_plugins([syntax])
    # Once fixed, the same file loads (a failed import leaves nothing behind).
    broken.write_text(GATE_PLUGIN)
    assert load_plugins([broken]) == [str(broken.resolve())]
    assert "plugin_gate" in available_attention()
    (tmp_path / "folder.py").mkdir()
    with pytest.raises(PluginError, match="folder.py is not a file"):
        load_plugins([tmp_path / "folder.py"])


def test_plugins_from_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SRLIB_PLUGINS", raising=False)
    assert plugins_from_environment() == []
    value = os.pathsep.join([str(tmp_path / "a.py"), "", str(tmp_path / "b.py")])
    monkeypatch.setenv("SRLIB_PLUGINS", value)
    assert plugins_from_environment() == [str(tmp_path / "a.py"), str(tmp_path / "b.py")]
    assert plugins_from_environment({"SRLIB_PLUGINS": "x.py"}) == ["x.py"]


def _plugin_attention_checkpoint(tmp_path):
    """A checkpoint of NLSN with the attention of a plugin file, recording that file."""
    plugin = tmp_path / "plugins" / "gate.py"
    plugin.parent.mkdir(parents=True, exist_ok=True)
    plugin.write_text(GATE_PLUGIN)
    paths = load_plugins([plugin])
    torch.manual_seed(0)
    model = build_model("nlsn", 2, n_feats=8, n_blocks=1, attention_every=1, attention="plugin_gate")
    path = save_checkpoint(tmp_path / "run" / "checkpoint.pt", checkpoint_payload(model, plugins=paths))
    return plugin, path, model.eval()


def test_model_from_checkpoint_never_imports_the_recorded_plugins(tmp_path, scratch_registries):
    """A checkpoint records its plugin files but loading it runs no code: the error names what to load."""
    plugin, path, model = _plugin_attention_checkpoint(tmp_path)
    assert load_checkpoint(path)["plugins"] == [str(plugin.resolve())]
    scratch_registries()  # a new process: the plugin and what it registered are gone
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(path)
    message = str(info.value)
    assert str(plugin.resolve()) in message and "not loaded" in message and "--plugin" in message
    assert "plugin_gate" in message and not isinstance(info.value, CheckpointMismatchError)
    assert "plugin_gate" not in available_attention()  # nothing was imported
    load_plugins([plugin])
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        assert torch.equal(model_from_checkpoint(path)(x), model(x))
    # A slim export keeps the record.
    export_checkpoint(path, tmp_path / "slim.pt")
    assert load_checkpoint(tmp_path / "slim.pt")["plugins"] == [str(plugin.resolve())]


def test_checkpoint_whose_plugin_file_is_gone_names_it(tmp_path, scratch_registries):
    plugin, path, model = _plugin_attention_checkpoint(tmp_path)
    moved = tmp_path / "elsewhere" / "gate.py"
    moved.parent.mkdir()
    shutil.move(plugin, moved)
    scratch_registries()  # a new process: the plugin and what it registered are gone
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(path)
    message = str(info.value)
    assert str(plugin) in message and "missing" in message and "put it back" in message
    assert "--plugin" in message and "plugin_gate" in message
    # A copy loaded beforehand from its new place stands in for the missing file.
    load_plugins([moved])
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        assert torch.equal(model_from_checkpoint(path)(x), model(x))


def test_malformed_plugin_record_is_refused(tmp_path, scratch_registries):
    payload = checkpoint_payload(build_model("edsr_baseline", 2, n_feats=8, n_blocks=1), plugins="gate.py")
    with pytest.raises(CheckpointError, match="malformed 'plugins'"):
        model_from_checkpoint(payload)
