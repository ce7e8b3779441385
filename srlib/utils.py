"""Small shared helpers: device choice, quick mode, seeding."""

from __future__ import annotations

import os

import torch

__all__ = ["pick_device", "quick_mode"]


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
