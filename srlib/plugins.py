"""Plugins: Python files, outside the package, that register attention modules or models.

A plugin is an ordinary ``.py`` file whose import registers things with
:func:`srlib.attention.register_attention` or :func:`srlib.models.register_model`::

    # my_attention.py
    from torch import nn
    from srlib.attention import register_attention

    @register_attention("my_attention", kind="in_scale")
    class MyAttention(nn.Module):
        ...

It is loaded with :func:`load_plugins` (``srlib train/eval/upscale --plugin
my_attention.py``, or the ``SRLIB_PLUGINS`` environment variable, read by
:func:`plugins_from_environment`).  ``srlib train`` records the absolute paths
of its plugins in the checkpoint (``"plugins"``), and
:func:`srlib.checkpoint.model_from_checkpoint` loads them again before
rebuilding the model.

Each file is imported once per process under a module name derived from its
resolved path (:func:`plugin_module_name`), so loading it again - from the
command line, the environment and a checkpoint - is a no-op.

Loading a plugin runs its code: only load files you trust.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Mapping

__all__ = ["PluginError", "PLUGINS_ENV", "load_plugins", "plugin_module_name", "plugins_from_environment"]

PLUGINS_ENV = "SRLIB_PLUGINS"

PathLike = str | os.PathLike


class PluginError(ValueError):
    """A plugin file cannot be loaded (missing, not a Python file, or it raises when imported)."""


def plugin_module_name(path: PathLike) -> str:
    """The module name a plugin file is imported under: stable for one resolved path.

    ``srlib_plugin_<stem>_<12 hex digits of the SHA-1 of the resolved path>``, so
    two files with the same name in different folders do not collide.
    """
    resolved = Path(path).expanduser().resolve()
    stem = re.sub(r"\W", "_", resolved.stem) or "plugin"
    digest = hashlib.sha1(str(resolved).encode("utf-8")).hexdigest()[:12]
    return f"srlib_plugin_{stem}_{digest}"


def load_plugins(paths: PathLike | Iterable[PathLike] | None) -> list[str]:
    """Import plugin files (each at most once per process).

    Args:
        paths: plugin files (``.py``); a single path is accepted too; ``None``
            or empty loads nothing.

    Returns:
        The resolved absolute paths, as strings, in the order given (duplicates
        dropped) - what :class:`srlib.train.TrainConfig` records in ``plugins``.

    Raises:
        PluginError: a file does not exist, is not a Python file, or raises
            when imported (a syntax error, a missing import, a registration
            that clashes with another); the message names the file and what to
            do.  Files before it in ``paths`` stay loaded.
    """
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    loaded: list[str] = []
    for given in paths:
        path = Path(given).expanduser().resolve()
        if str(path) in loaded:
            continue
        _load_one(given, path)
        loaded.append(str(path))
    return loaded


def _load_one(given: PathLike, path: Path) -> None:
    name = plugin_module_name(path)
    if name in sys.modules:
        return  # already imported from this file: a no-op
    if not path.exists():
        raise PluginError(
            f"plugin file {given} does not exist (resolved to {path}); check the path given to --plugin "
            f"or {PLUGINS_ENV}"
        )
    if not path.is_file():
        raise PluginError(f"plugin {given} is not a file; pass the .py file that registers the attention or model")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {path} is not a Python file; a plugin is a .py file that registers "
                          "attention modules or models")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing, as a regular import does (dataclasses, pickling need it)
    try:
        spec.loader.exec_module(module)
    except BaseException as err:
        sys.modules.pop(name, None)
        if not isinstance(err, Exception):  # KeyboardInterrupt, SystemExit: not the plugin's fault to report
            raise
        detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else "no message"
        raise PluginError(
            f"plugin {path} failed to import ({type(err).__name__}: {detail}); fix the file, "
            f"or leave it out of --plugin / {PLUGINS_ENV}"
        ) from err


def plugins_from_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """The plugin files listed in ``SRLIB_PLUGINS`` (``os.pathsep``-separated), not loaded yet.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        The paths as written (empty entries dropped); ``[]`` when unset.
    """
    value = (os.environ if environ is None else environ).get(PLUGINS_ENV, "")
    return [item for item in value.split(os.pathsep) if item.strip()]
