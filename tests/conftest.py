"""Test-wide settings and fixtures.

* LR images are cached in a temporary folder, never in the home folder;
* ``scratch_registries``: what a test registers (directly or through plugin files)
  is forgotten after it, and can be forgotten mid-test as a new process would;
* ``write_model_plugin``: writes a plugin file that registers a tiny model.
"""

from __future__ import annotations

import string
import sys
import textwrap

import pytest

from srlib.attention.registry import ATTENTION
from srlib.models.registry import MODELS

# A plugin file registering a tiny SR model (conv 3x3 -> ReLU -> conv 3x3 -> pixel shuffle, option
# width=4) under $name, with a smoke preset of its own (width 3, Set5 only, validation tiles of 40).
MODEL_PLUGIN = string.Template(textwrap.dedent('''
    from torch import nn
    from srlib.models import check_lr_batch, register_model


    class PluginNet(nn.Module):
        def __init__(self, scale, width=4):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

        def forward(self, lr):
            check_lr_batch(lr)
            return self.body(lr)


    @register_model("$name", presets={"smoke": {"model_options": {"width": 3}, "final_sets": ["Set5"],
                                                "val_tile": 40}})
    def build_plugin_net(scale, width=4):
        return PluginNet(scale, width)
'''))


@pytest.fixture(autouse=True)
def _temporary_lr_cache(tmp_path_factory, monkeypatch):
    # One cache for the whole session, so each test does not recompute Set5's LR images.
    monkeypatch.setenv("SRLIB_CACHE", str(tmp_path_factory.getbasetemp() / "lr-cache"))


@pytest.fixture()
def scratch_registries(monkeypatch):
    """Model and attention registrations made in a test (directly or by plugins) are forgotten after it.

    The value is ``forget()``: called mid-test, it drops what was registered and
    the plugin modules imported since the test began, as a new process would
    (``SRLIB_PLUGINS`` is unset for the whole test).
    """
    monkeypatch.delenv("SRLIB_PLUGINS", raising=False)
    snapshots = [(registry, dict(registry._entries)) for registry in (MODELS, ATTENTION)]
    before = set(sys.modules)

    def forget():
        for registry, entries in snapshots:
            monkeypatch.setattr(registry, "_entries", dict(entries))
        for name in set(sys.modules) - before:
            if name.startswith("srlib_plugin_"):
                del sys.modules[name]

    forget()
    yield forget
    forget()


@pytest.fixture()
def write_model_plugin():
    """``write(path, name) -> path``: writes a plugin file registering the tiny model ``name`` (see MODEL_PLUGIN)."""

    def write(path, name):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(MODEL_PLUGIN.substitute(name=name))
        return path

    return write
