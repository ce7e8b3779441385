"""Run records: a finished training run as one small JSON file, shipped in git.

A training run (``srlib train ... --out DIR``) leaves a checkpoint of about a megabyte and a
``metrics.json``. Notebooks that compare several runs need only their configuration, loss
and validation history and final scores, so those are shipped as *run records* beside the
checkpoints (``data/checkpoints/runs/``), each with the exact command that made it. A fresh
clone can then re-execute a notebook in full without the runs, and anybody can retrain one
and compare::

    {
      "format": "srlib-run-record-v1",
      "command": "srlib train --model nlsn --preset quick --scale 2 --steps 400 ...",
      "config": {...},            # TrainConfig.to_dict() of the run
      "step": 400,                # optimiser steps done
      "train_seconds": 1638.7,    # time in optimiser steps, s
      "history": {"step": [...], "loss": [...], "val_step": [...], "val_psnr": [...]},
      "metrics": {...}            # the run's metrics.json
    }
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .utils import atomic_write

__all__ = ["RUN_RECORD_FORMAT", "RunRecordError", "write_run_record", "load_run_record"]

RUN_RECORD_FORMAT = "srlib-run-record-v1"
_KEYS = ("command", "config", "step", "train_seconds", "history", "metrics")


class RunRecordError(ValueError):
    """A run folder that is not finished, or a record file that is not a run record."""


def _repository_relative(path: str) -> str:
    repository = Path(__file__).resolve().parent.parent
    resolved = Path(path).resolve()
    return str(resolved.relative_to(repository)) if resolved.is_relative_to(repository) else path


def write_run_record(run_dir: str | os.PathLike, path: str | os.PathLike, command: str) -> dict:
    """Write the record of the finished run in ``run_dir`` to ``path`` (JSON) and return it.

    Args:
        run_dir: folder written by ``srlib train --out``, holding ``checkpoint.pt`` and ``metrics.json``.
        path: the JSON file to write (its folder is created).
        command: the command that trained the run, recorded verbatim.

    Plug-in files inside the repository are recorded relative to it (``notebooks/topk_attention.py``).

    Raises:
        RunRecordError: ``run_dir`` lacks ``checkpoint.pt`` or ``metrics.json`` (the run did not finish).
    """
    from .checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    missing = [name for name in ("checkpoint.pt", "metrics.json") if not (run_dir / name).exists()]
    if missing:
        raise RunRecordError(f"{run_dir} has no {' or '.join(missing)}: finish the run "
                             f"(`srlib train ... --out {run_dir} --resume`) before recording it")
    saved = load_checkpoint(run_dir / "checkpoint.pt")
    config = dict(saved["config"])
    if config.get("plugins"):  # paths inside the repository are recorded relative to it, not to this machine
        config["plugins"] = [_repository_relative(p) for p in config["plugins"]]
    record = {
        "format": RUN_RECORD_FORMAT,
        "command": command,
        "config": config,
        "step": int(saved["step"]),
        "train_seconds": round(float(saved.get("train_seconds", 0.0)), 1),
        "history": saved["history"],
        "metrics": json.loads((run_dir / "metrics.json").read_text()),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as handle:
        handle.write(json.dumps(record, indent=1) + "\n")
    return record


def load_run_record(path: str | os.PathLike) -> dict:
    """Read a run record written by :func:`write_run_record`.

    Returns:
        The record: ``command`` (str), ``config`` (dict, ``TrainConfig.to_dict()``), ``step``
        (int), ``train_seconds`` (float, s), ``history`` (lists ``step``, ``loss``,
        ``val_step``, ``val_psnr`` in dB) and ``metrics`` (the run's ``metrics.json``).

    Raises:
        FileNotFoundError: no file at ``path``.
        RunRecordError: the file is not JSON or not a run record (names the missing keys).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no run record at {path}")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunRecordError(f"{path} is not JSON ({err}); it should be a file written by write_run_record") from None
    if not isinstance(record, dict) or record.get("format") != RUN_RECORD_FORMAT:
        raise RunRecordError(f"{path} is not a run record (format {RUN_RECORD_FORMAT!r} expected)")
    missing = [key for key in _KEYS if key not in record]
    if missing:
        raise RunRecordError(f"{path} lacks {', '.join(missing)}; re-record it with write_run_record")
    return record
