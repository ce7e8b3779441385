"""Small shared helpers: device choice, quick mode, seeding."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

import torch

__all__ = ["pick_device", "quick_mode", "atomic_write"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one step.

    A crash or an exception inside the ``with`` block leaves ``path`` as it was
    (the temporary file is removed), so a reader never sees a half-written
    checkpoint, image or report.  Parent folders are created.

    Args:
        path: the file to (over)write.
        mode: ``"wb"`` (bytes) or ``"w"`` (text, UTF-8).

    Yields:
        The open temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def pick_device(requested: str | None = None) -> torch.device:
    """Choose where to run: ``requested`` if given, else CUDA, then MPS, then CPU.

    Args:
        requested: ``None`` / ``"auto"`` for automatic choice, or a device
            string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.

    Returns:
        A ``torch.device``.

    Raises:
        RuntimeError: the requested accelerator is not available here.
    """
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was requested but CUDA is not available; use --device cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError(f"device {requested!r} was requested but MPS is not available; use --device cpu")
    return device


def quick_mode() -> bool:
    """True when the environment variable ``SRLIB_QUICK`` is set to a true value.

    Quick mode shrinks data and training so that notebooks and CI finish in
    minutes on a laptop CPU; results are then illustrations, not benchmarks.
    """
    return os.environ.get("SRLIB_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}
