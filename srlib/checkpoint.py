"""Checkpoints: one self-describing file per trained model, loaded without running pickled code.

A checkpoint is a plain ``dict`` saved with ``torch.save``::

    {
        "format": "srlib-checkpoint-v1",
        "model_name": "edsr_baseline",          # registry name
        "scale": 2,
        "model_options": {"n_feats": 64, ...},   # build_model(model_name, scale, **model_options)
        "model_state": model.state_dict(),
        # optional: "optimizer_state", "scheduler_state", "step", "rng_state",
        #           "config", "history", "metrics",
        #           "plugins": ["/abs/path/my_attention.py", ...]  # files that register the model
    }

Because it holds only tensors, numbers, strings, lists and dicts, it loads with
``torch.load(..., weights_only=True)``, which refuses to unpickle arbitrary
Python objects (unpickling can execute code, so never load untrusted files any
other way).  :func:`save_checkpoint` checks this before writing and writes
atomically, so an interrupted save never destroys the previous checkpoint.

A model (or an attention inside it) registered by a plugin file
(:mod:`srlib.plugins`) needs that file loaded before the checkpoint is
(``--plugin FILE.py``, ``SRLIB_PLUGINS`` or :func:`srlib.plugins.load_plugins`).
The checkpoint records the files under ``"plugins"``, but loading a checkpoint
never imports them on its own: they are Python code, and a checkpoint must stay
a file that cannot run anything.  Without them, :func:`model_from_checkpoint`
raises a :class:`CheckpointError` that names the files to load.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from srlib.models import build_model
from srlib.models.registry import upgrade_checkpoint
from srlib.utils import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointMismatchError",
    "checkpoint_payload",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "export_checkpoint",
    "load_weights_only",
    "state_mismatch",
    "TRAINING_STATE_KEYS",
]

CHECKPOINT_FORMAT = "srlib-checkpoint-v1"
_REQUIRED_KEYS = ("model_name", "scale", "model_options", "model_state")
# Entries that only matter for resuming a run; export_checkpoint drops them.
TRAINING_STATE_KEYS = ("optimizer_state", "scheduler_state", "rng_state")

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A file cannot be used as an srlib checkpoint (missing, corrupt, unsafe or another format)."""


class CheckpointMismatchError(CheckpointError):
    """A valid checkpoint that does not fit what was asked for (model, scale or weights)."""


def checkpoint_payload(model: nn.Module, **extra: Any) -> dict:
    """Build the checkpoint dict of a model made by :func:`srlib.models.build_model`.

    Args:
        model: a model carrying ``model_name``, ``scale`` and ``options``.
        **extra: optional entries such as ``optimizer_state=opt.state_dict()``,
            ``step=1000``, ``config={...}``, ``history={...}``, ``metrics={...}``.

    Returns:
        The payload dict (tensors are shared with the model, not copied).

    Raises:
        ValueError: the model lacks ``model_name`` / ``scale`` / ``options``
            (build it with ``build_model``).
    """
    missing = [attr for attr in ("model_name", "scale", "options") if not hasattr(model, attr)]
    if missing:
        raise ValueError(
            f"{type(model).__name__} has no {', '.join(missing)}; build models with srlib.models.build_model "
            "so that they can be saved and rebuilt"
        )
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_name": model.model_name,
        "scale": int(model.scale),
        "model_options": dict(model.options),
        "model_state": model.state_dict(),
    }
    payload.update(extra)
    return payload


_SAFE_LEAF_TYPES = (type(None), bool, int, float, complex, str, bytes, torch.Size, torch.dtype, torch.device)


def _find_unsafe_value(value: Any, where: str) -> str | None:
    """Path of the first value ``torch.load(weights_only=True)`` would refuse, or ``None``."""
    if isinstance(value, torch.Tensor) or isinstance(value, _SAFE_LEAF_TYPES):
        return None
    if isinstance(value, (dict, OrderedDict)):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                return f"{where} (key {key!r} of type {type(key).__name__})"
            found = _find_unsafe_value(item, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find_unsafe_value(item, f"{where}[{index}]")
            if found:
                return found
        return None
    return f"{where} (type {type(value).__module__}.{type(value).__name__})"


def save_checkpoint(path: PathLike, payload: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically: temp file in the same folder, then ``os.replace``.

    Args:
        path: destination file, e.g. ``runs/edsr_x2/checkpoint.pt``; parent
            folders are created.
        payload: the checkpoint dict (see the module docstring or
            :func:`checkpoint_payload`); ``"format"`` is added when missing.

    Returns:
        The path written, as a ``Path``.

    Raises:
        ValueError: a required key is missing, or ``"format"`` names another format.
        TypeError: the payload holds a value that ``torch.load(weights_only=True)``
            would refuse (e.g. a NumPy array or a custom object); the message
            names where it is, so that nothing unloadable is ever written.
    """
    path = Path(path)
    payload = dict(payload)
    payload.setdefault("format", CHECKPOINT_FORMAT)
    if payload["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"payload format is {payload['format']!r}, expected {CHECKPOINT_FORMAT!r}")
    missing = [key for key in _REQUIRED_KEYS if key not in payload]
    if missing:
        raise ValueError(f"checkpoint payload for {path} lacks {', '.join(missing)}; see srlib.checkpoint_payload")
    unsafe = _find_unsafe_value(payload, "payload")
    if unsafe:
        raise TypeError(
            f"cannot save {path}: {unsafe} would not load with torch.load(weights_only=True); "
            "store only tensors, numbers, strings, lists and dicts (convert NumPy arrays with torch.from_numpy "
            "and objects to dicts)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        torch.save(payload, handle)
    return path


def load_checkpoint(path: PathLike, map_location: str | torch.device | None = "cpu") -> dict:
    """Read and check an srlib checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: the checkpoint file.
        map_location: where tensors are loaded (default ``"cpu"``, which works
            on every machine).

    Returns:
        The payload dict (see the module docstring).

    Raises:
        CheckpointError: the file does not exist or is a folder; it is
            truncated or not a PyTorch file; it holds objects other than
            tensors and plain data (refused without running them); or it is
            not an srlib checkpoint (no or unknown ``"format"``, required keys
            missing).  The message names the file and what to do.
    """
    path = Path(path)
    if path.is_dir():
        candidates = sorted(p.name for p in path.glob("*.pt"))
        hint = f" (it holds {', '.join(candidates)})" if candidates else ""
        raise CheckpointError(f"{path} is a folder; pass the checkpoint file inside it{hint}")
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: check the path, or train a model first (srlib train)")
    payload = load_weights_only(
        path, map_location, CheckpointError,
        refused_advice="srlib checkpoints never need this; re-save the weights with "
        "srlib.checkpoint.save_checkpoint from a trusted source",
        damaged_advice="re-save or re-download it (an interrupted copy leaves a truncated file)",
    )
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(
            f"{path} is a PyTorch file but not an srlib checkpoint (no 'format' entry); "
            "srlib checkpoints are written by srlib.checkpoint.save_checkpoint / srlib train"
        )
    if payload["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format']!r}, but this srlib reads {CHECKPOINT_FORMAT!r}; "
            "use the srlib version that wrote it, or re-train"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path} is an incomplete srlib checkpoint: it lacks {', '.join(missing)}")
    return payload


def load_weights_only(
    path: Path,
    map_location: str | torch.device | None,
    error: type[Exception],
    refused_advice: str,
    damaged_advice: str,
) -> Any:
    """``torch.load(path, weights_only=True)``; a file it cannot load is one ``error`` naming the file.

    The one safe loader of srlib: checkpoints (:func:`load_checkpoint`) and the
    authors' released weights (:func:`srlib.convert.read_official_state`).

    Args:
        path: an existing file.
        map_location: where tensors are loaded, as for ``torch.load``.
        error: the exception class raised, with the message as its argument.
        refused_advice: what to do with a file that holds Python objects other
            than tensors and plain data (the end of that message).
        damaged_advice: what to do with a file that is not a PyTorch file, or
            is corrupt or truncated (the end of that message).

    Returns:
        What the file holds (tensors, numbers, strings, lists, dicts).

    Raises:
        error: the file holds other Python objects (refused, never unpickled:
            that could run arbitrary code), or ``torch.load`` fails on it.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(err)
        if "global" in reason.lower():
            raise error(
                f"refused to load {path}: it holds Python objects other than tensors and plain data "
                f"({reason}), and unpickling them could run arbitrary code. {refused_advice}"
            ) from err
        raise error(f"{path} is not a PyTorch file or is corrupt ({reason}); {damaged_advice}") from err
    except Exception as err:  # torch.load raises RuntimeError, EOFError, KeyError... on damaged files
        first_sentence = str(err).split(". ")[0][:200]
        raise error(
            f"{path} is not a PyTorch file or is truncated ({type(err).__name__}: {first_sentence}); "
            f"{damaged_advice}"
        ) from err


def _unpickler_reason(err: Exception) -> str:
    """The one informative line of torch's long weights-only refusal message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip()
            if not detail and index + 1 < len(lines):
                detail = lines[index + 1]
            return detail.split(". Please use")[0] or "unsupported content"
    return str(err).splitlines()[0][:200] if str(err) else "unsupported content"


def model_from_checkpoint(
    path_or_payload: PathLike | Mapping[str, Any],
    expected_model: str | None = None,
    expected_scale: int | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Rebuild a model from a checkpoint and load its weights strictly.

    Args:
        path_or_payload: a checkpoint file or a payload already loaded with
            :func:`load_checkpoint`.
        expected_model: registry name the caller needs (e.g. from ``--model``);
            ``None`` accepts any.
        expected_scale: scale the caller needs (e.g. from ``--scale``); ``None``
            accepts any.
        device: where to put the model; default CPU.

    Returns:
        The model in eval mode, with ``model_name``, ``scale`` and ``options``
        from the checkpoint.

    The plugin files the checkpoint records (``"plugins"``, written by ``srlib
    train --plugin``) are never imported here (a checkpoint must not run
    code): load them first (``--plugin``, ``SRLIB_PLUGINS``,
    :func:`srlib.plugins.load_plugins`).

    Raises:
        CheckpointError: the file cannot be read (see :func:`load_checkpoint`);
            the model needs a plugin the checkpoint records and that is not
            loaded (the message names the file and how to load it).
        CheckpointMismatchError: the checkpoint holds another model or scale
            than expected (the message says what it holds and what to do);
            its options cannot be built by this srlib version; or its weights
            do not match the architecture (missing, unexpected or
            differently-shaped keys are listed).
    """
    if isinstance(path_or_payload, Mapping):
        payload, source = dict(path_or_payload), "the given checkpoint payload"
        if payload.get("format") != CHECKPOINT_FORMAT or any(k not in payload for k in _REQUIRED_KEYS):
            raise CheckpointError(f"{source} is not an srlib checkpoint; load files with load_checkpoint")
    else:
        payload, source = load_checkpoint(path_or_payload), f"checkpoint {path_or_payload}"
    name, scale, options = payload["model_name"], int(payload["scale"]), dict(payload["model_options"])
    if expected_model is not None and expected_model != name:
        raise CheckpointMismatchError(
            f"{source} holds {name} x{scale} but {expected_model} was requested: "
            f"pass --model {name}, or use a checkpoint of {expected_model}"
        )
    if expected_scale is not None and int(expected_scale) != scale:
        raise CheckpointMismatchError(
            f"{source} holds {name} x{scale} but x{expected_scale} was requested: "
            f"train a x{expected_scale} model or pass --scale {scale}"
        )
    state = payload["model_state"]
    plugins = _recorded_plugins(payload, source)
    try:
        # Checkpoints of an older layout (e.g. before the attention registry) are mapped onto
        # today's by the function the model registered (see srlib.models.register_model).
        options, state = upgrade_checkpoint(name, options, state)
        model = build_model(name, scale, **options)
    except (TypeError, ValueError) as err:
        if plugins:
            listed = ", ".join(plugins)
            state_of = "missing: put it back or load a copy" if not all(Path(p).exists() for p in plugins) else "not loaded"
            raise CheckpointError(
                f"{source} was trained with the plugin {listed} ({state_of}), and {name} x{scale} cannot be "
                f"built without it ({err}); load it first: --plugin FILE.py, SRLIB_PLUGINS=FILE.py or "
                "srlib.plugins.load_plugins([FILE.py]) (a checkpoint never imports code on its own)"
            ) from err
        raise CheckpointMismatchError(f"{source} holds {name} x{scale} that this srlib cannot build: {err}") from err
    _load_state_strictly(model, state, source)
    if device is not None:
        model.to(device)
    return model.eval()


def _recorded_plugins(payload: Mapping[str, Any], source: str) -> list[str]:
    """The plugin files a payload records (``"plugins"``, else ``config["plugins"]``)."""
    recorded = payload.get("plugins")
    if recorded is None and isinstance(payload.get("config"), Mapping):
        recorded = payload["config"].get("plugins")
    if recorded is None:
        return []
    if isinstance(recorded, str) or not all(isinstance(p, str) for p in recorded):
        raise CheckpointError(f"{source} has a malformed 'plugins' entry {recorded!r}; expected a list of file paths")
    return list(recorded)


def state_mismatch(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """What keeps ``state`` from loading strictly into a model whose ``state_dict()`` is ``expected``.

    Args:
        expected: the model's state dict (key -> tensor).
        state: the weights to load (key -> tensor).

    Returns:
        ``(missing, unexpected, wrong_shape)``, sorted lists of keys: those of
        ``expected`` that ``state`` lacks, those of ``state`` that ``expected``
        lacks, and those of both whose shapes differ.  All three empty:
        ``model.load_state_dict(state, strict=True)`` accepts ``state``.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        key for key in set(state) & set(expected) if tuple(state[key].shape) != tuple(expected[key].shape)
    )
    return missing, unexpected, wrong_shape


def _load_state_strictly(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing, unexpected, wrong_shape = state_mismatch(expected, state)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        if wrong_shape:
            shapes = [f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}" for key in wrong_shape]
            parts.append(f"shape mismatches (checkpoint vs model): {', '.join(shapes)}")
        raise CheckpointMismatchError(
            f"the weights in {source} do not fit {model.model_name} x{model.scale} with options "
            f"{model.options}: {'; '.join(parts)}"
        )
    model.load_state_dict(state, strict=True)


def export_checkpoint(source: PathLike, destination: PathLike, half: bool = False) -> dict:
    """Write a slim copy of a training checkpoint for sharing: weights, options, config, history.

    The optimiser, scheduler and RNG states (:data:`TRAINING_STATE_KEYS`) are
    dropped: they only serve ``srlib train --resume`` and triple the size of a
    model trained with Adam.  The weights are checked to rebuild the model
    before anything is written, and the file is written atomically.

    Args:
        source: a checkpoint written by ``srlib train`` (``checkpoint.pt``).
        destination: the slim file to write, e.g. ``data/checkpoints/csnln_x2.pt``.
        half: store floating-point weights as float16 (half the size; they are
            cast back to float32 when loaded into a model, with a relative
            rounding error of about 5e-4).

    Returns:
        ``{"path", "bytes", "source_bytes", "dropped"}``: the file written, its
        size and the source's size in bytes, and the keys removed.

    Raises:
        CheckpointError: ``source`` is not a loadable srlib checkpoint or its
            weights do not rebuild its model (see :func:`load_checkpoint`,
            :func:`model_from_checkpoint`).
        ValueError: ``destination`` is the same file as ``source``.
    """
    source, destination = Path(source), Path(destination)
    if destination.exists() and destination.resolve() == source.resolve():
        raise ValueError(f"export would overwrite its source {source}; choose another destination")
    payload = load_checkpoint(source)
    model_from_checkpoint(payload)  # refuse to export weights that do not rebuild the model
    dropped = [key for key in TRAINING_STATE_KEYS if key in payload]
    slim = {key: value for key, value in payload.items() if key not in TRAINING_STATE_KEYS}
    if half:
        slim["model_state"] = OrderedDict(
            (k, v.half() if v.is_floating_point() else v) for k, v in payload["model_state"].items()
        )
    save_checkpoint(destination, slim)
    return {"path": destination, "bytes": destination.stat().st_size, "source_bytes": source.stat().st_size,
            "dropped": dropped}
