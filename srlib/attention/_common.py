"""Plumbing shared by every attention module: the memory guard, input checks, validators, embeddings.

Nothing here is an attention mechanism; it is what each of them needs and must
not write again:

* :class:`AttentionMemoryError` and :func:`guard_memory`, the one memory guard:
  an attention whose score tensors would exceed a limit (by default
  :data:`MEMORY_FRACTION` of the memory free on the input's device) raises
  before allocating them;
* :func:`check_feature_map`, the one input check of a module's ``forward``
  (a ``(N, C, H, W)`` float map with the module's channels, dtype and device),
  and for the functional cores :func:`check_map` (the layout of a map input)
  and :func:`check_query_key_value` (what query, key and value must share:
  batch size, query/key channels, dtype and device);
* validators for options (:func:`positive_int`, :func:`positive_real`,
  :func:`choice`, :func:`optional_bytes`, :func:`channel_reduction`), so a bad
  option gives the same message in every module;
* :func:`embedding`, the one embedding layer: ``nn.Sequential(conv [, PReLU])``,
  so that checkpoints of a module have the same keys with or without the activation;
* :func:`format_bytes` (binary units, as ``nvidia-smi`` and ``free -h`` use).
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "MEMORY_FRACTION",
    "AttentionMemoryError",
    "available_memory_bytes",
    "channel_reduction",
    "check_feature_map",
    "check_map",
    "check_query_key_value",
    "check_same_dtype_and_device",
    "choice",
    "embedding",
    "format_bytes",
    "guard_memory",
    "memory_limit",
    "optional_bytes",
    "positive_int",
    "positive_real",
]

# Default memory guard: score tensors may use at most this fraction of the memory that is free
# on the input's device (the rest is left for the network's other activations).
MEMORY_FRACTION = 0.5

# Activations an embedding may end with (the ``activation`` option of every module).
ACTIVATIONS = ("prelu", "relu", "none")


class AttentionMemoryError(MemoryError):
    """An attention's score tensors would exceed the memory limit; raised before allocating them.

    A subclass of :class:`MemoryError`, so ``except MemoryError`` catches it too.

    Attributes:
        needed_bytes: bytes the attention would hold (scores and weights).
        limit_bytes: the limit it was compared with.
    """

    def __init__(self, message: str, needed_bytes: int, limit_bytes: float):
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.limit_bytes = limit_bytes


def format_bytes(count: float) -> str:
    """``1610612736`` -> ``'1.50 GiB'``; binary units, as ``nvidia-smi`` and ``free -h`` use."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.2f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------
# Validators
# ----------------------------------------------------------------------------------------------


def positive_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer ``>= minimum`` (not a bool, not a float), else ValueError.

    The one integer validator of srlib's attention modules and models (``minimum=0`` for counts
    that may be zero).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def positive_real(name: str, value, hint: str = "") -> float:
    """``value`` as a ``float`` if it is a finite number > 0 (not a bool), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        extra = f" ({hint})" if hint else ""
        raise ValueError(f"{name} must be a positive finite number{extra}, got {value!r}")
    return float(value)


def choice(name: str, value, choices: tuple) -> str:
    """``value`` if it is one of ``choices``, else ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def channel_reduction(channels, reduction) -> tuple[int, int]:
    """Validated ``(channels, reduction)`` of a module whose query/key embeddings have ``channels // reduction`` channels.

    Raises:
        ValueError: ``channels`` or ``reduction`` is not an integer >= 1 (as
            :func:`positive_int` says), or ``channels // reduction`` is 0.
    """
    channels = positive_int("channels", channels)
    reduction = positive_int("reduction", reduction)
    if channels // reduction < 1:
        raise ValueError(
            f"channels // reduction must be at least 1 (the query/key embedding's channels), got "
            f"{channels} // {reduction} = 0; use reduction <= channels"
        )
    return channels, reduction


def optional_bytes(max_attention_bytes) -> float | None:
    """Validate a ``max_attention_bytes`` option: None (the default limit) or a number > 0 (``math.inf``: off)."""
    if max_attention_bytes is None:
        return None
    if isinstance(max_attention_bytes, bool) or not (
        isinstance(max_attention_bytes, numbers.Real) and max_attention_bytes > 0
    ):
        raise ValueError(
            f"max_attention_bytes must be a positive number (math.inf turns the guard off) or None "
            f"(a fraction of the free memory), got {max_attention_bytes!r}"
        )
    return float(max_attention_bytes)


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------


def check_same_dtype_and_device(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    """Raise one ``ValueError`` unless query, key and value share dtype and device.

    Shared by every attention function of :mod:`srlib.attention` (dense,
    cross-scale, sparse), so the message is the same everywhere.

    Raises:
        ValueError: the dtypes or devices differ; the message lists all three.
    """
    if not (query.dtype == key.dtype == value.dtype) or not (query.device == key.device == value.device):
        raise ValueError(
            "query, key and value must share dtype and device, got "
            f"{query.dtype}/{query.device}, {key.dtype}/{key.device} and {value.dtype}/{value.device}"
        )


def check_map(name: str, x) -> None:
    """The layout check of a functional core's map input: ``x`` is a non-empty float ``(N, C, H, W)`` tensor.

    Shared by the cores that take feature maps (cross-scale, sparse) and their
    helpers; the cores that take ``(N, L, C)`` sequences check their own layout.

    Args:
        name: what to call the input in the message (``"query"``, ``"x"``...).
        x: the input.

    Raises:
        ValueError: ``x`` is not a tensor, not 4-D, not floating point, or has
            a dimension of size 0; the message names it and gives its shape or dtype.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a feature map shaped (N, C, H, W), got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if min(x.shape) == 0:
        raise ValueError(f"{name} is empty, shape {tuple(x.shape)}; every dimension must be at least 1")


def check_query_key_value(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, channel_dim: int) -> None:
    """What the three inputs of every attention core must share, checked after the core's own layout checks.

    One batch size ``N`` (dimension 0), one channel count for query and key
    (they are compared by dot products), one dtype and one device.  The sizes
    that depend on the layout (sequence lengths, map sizes) are the core's to check.

    Args:
        query, key, value: ``(N, L, C)`` sequences or ``(N, C, H, W)`` maps,
            their layout already checked.
        channel_dim: the channel dimension: ``2`` for sequences, ``1`` for maps.

    Raises:
        ValueError: the batch sizes differ, query and key have different
            channel counts, or the dtypes or devices differ (see
            :func:`check_same_dtype_and_device`); the message gives the values found.
    """
    if not (query.shape[0] == key.shape[0] == value.shape[0]):
        raise ValueError(
            f"query, key and value must have the same batch size N, got "
            f"{query.shape[0]}, {key.shape[0]} and {value.shape[0]}"
        )
    if query.shape[channel_dim] != key.shape[channel_dim]:
        raise ValueError(
            f"query and key must have the same number of channels (they are compared by dot products), "
            f"got {query.shape[channel_dim]} and {key.shape[channel_dim]}"
        )
    check_same_dtype_and_device(query, key, value)


def check_feature_map(module: nn.Module, x, channels: int, name: str = "x") -> None:
    """The input check of every attention module's ``forward``: ``x`` fits the module.

    Args:
        module: the module (its first parameter gives the expected dtype and
            device; a module without parameters accepts any float dtype/device).
        x: the input.
        channels: ``C`` the module was built for.
        name: what to call the input in the message.

    Raises:
        ValueError: ``x`` is not a tensor, not 4-D ``(N, C, H, W)`` with
            ``C = channels``, empty, not floating point, or of another dtype or
            device than the module's weights; the message says what was found
            and what to do.
    """
    owner = type(module).__name__
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{owner} expects {name} as a (N, {channels}, H, W) feature map, got {shape}")
    if min(x.shape) == 0:
        raise ValueError(f"{owner}: {name} is empty, shape {tuple(x.shape)}; every dimension must be at least 1")
    if not x.is_floating_point():
        raise ValueError(f"{owner} expects a floating-point {name}, got {x.dtype}; convert it with x.float()")
    weight = next(module.parameters(), None)
    if weight is None:
        return
    if x.dtype != weight.dtype:
        raise ValueError(
            f"{owner} holds {weight.dtype} weights but {name} is {x.dtype}; convert one of them "
            f"(module.to({weight.dtype}) or {name}.to({weight.dtype}))"
        )
    if x.device != weight.device:
        raise ValueError(
            f"{owner} lives on {weight.device} but {name} is on {x.device}; move one of them "
            f"(module.to({str(x.device)!r}) or {name}.to({str(weight.device)!r}))"
        )


# ----------------------------------------------------------------------------------------------
# Memory guard
# ----------------------------------------------------------------------------------------------


def _meminfo_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (Linux), or None where there is no such file."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            value, *unit = line.split()[1:]
            return int(value) * (1024 if unit and unit[0].lower() == "kb" else 1)
    return None


def available_memory_bytes(device: torch.device | str) -> int | None:
    """Memory that a new tensor on ``device`` could still use, in bytes, or None if unknown.

    * CUDA: free device memory (``torch.cuda.mem_get_info``) plus what PyTorch's
      caching allocator has reserved but not handed out;
    * CPU: ``MemAvailable`` of ``/proc/meminfo`` on Linux; elsewhere the free
      physical pages from ``os.sysconf`` where the OS reports them;
    * other devices (MPS, XPU, ...): None.

    Args:
        device: a ``torch.device`` or device string.

    Returns:
        Bytes as an ``int``, or None when the amount cannot be read (then the
        default memory guard is off).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type == "cpu":
        available = _meminfo_available()
        if available is not None:
            return available
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def memory_limit(device: torch.device | str, max_attention_bytes: float | None) -> tuple[float, str] | None:
    """The limit a guard compares with, and where it comes from; None when there is none to apply.

    Args:
        device: where the tensors would live.
        max_attention_bytes: an explicit limit in bytes (``math.inf``: off), or
            None for :data:`MEMORY_FRACTION` of :func:`available_memory_bytes`.

    Returns:
        ``(limit_bytes, description)``, or None when ``max_attention_bytes`` is
        None and the free memory of ``device`` cannot be read.

    Raises:
        ValueError: a ``max_attention_bytes`` that is not None or a positive number.
    """
    max_attention_bytes = optional_bytes(max_attention_bytes)
    if max_attention_bytes is not None:
        return max_attention_bytes, "max_attention_bytes"
    available = available_memory_bytes(device)
    if available is None:
        return None
    return MEMORY_FRACTION * available, (
        f"{MEMORY_FRACTION:.0%} of the {format_bytes(available)} available on {torch.device(device)}"
    )


def guard_memory(
    needed: int,
    device: torch.device | str,
    max_attention_bytes: float | None,
    describe: str,
    advice: str,
    holding: str = "",
) -> int:
    """Raise :class:`AttentionMemoryError` if ``needed`` bytes exceed the limit; else return ``needed``.

    Args:
        needed: bytes the attention would hold at its peak (its own accounting).
        device: where they would be allocated.
        max_attention_bytes: see :func:`memory_limit`.
        describe: what would run, e.g. ``"explicit non-local attention on 1 feature map(s) of
            96x96 pixels (9216 positions each)"``.
        advice: the ways out, one or more sentences (tiling with a size that fits, another path...).
        holding: what the bytes are, e.g. ``" for its (1, 9216, 9216) float32 scores and softmax weights"``.

    Returns:
        ``needed``, when within the limit (or when there is no limit to apply).

    Raises:
        AttentionMemoryError: ``needed`` exceeds the limit; the message joins
            ``describe``, the bytes, ``holding``, the limit and ``advice``.
    """
    limit = memory_limit(device, max_attention_bytes)
    if limit is None or needed <= limit[0]:
        return needed
    limit_bytes, source = limit
    raise AttentionMemoryError(
        f"{describe} needs {format_bytes(needed)} ({needed} bytes){holding}, more than the limit of "
        f"{format_bytes(limit_bytes)} ({source}). {advice}",
        needed_bytes=needed,
        limit_bytes=limit_bytes,
    )


# ----------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------


def embedding(in_channels: int, out_channels: int, activation: str = "none", kernel_size: int = 1) -> nn.Sequential:
    """The embedding layer of every attention module: ``Sequential(conv [, PReLU | ReLU])``.

    A ``kernel_size x kernel_size`` convolution with bias and 'same' zero
    padding, followed by a PReLU (one learned slope, init 0.25) when
    ``activation="prelu"`` (CSNLN) or a ReLU when ``activation="relu"`` (DLSN).  Always a ``Sequential``, so the convolution's
    checkpoint keys are ``<name>.0.weight`` / ``<name>.0.bias`` with or without
    the activation (``<name>.1.weight`` is the PReLU slope).

    Raises:
        ValueError: an activation other than ``"prelu"`` / ``"relu"`` / ``"none"``, an even kernel size.
    """
    activation = choice("activation", activation, ACTIVATIONS)
    kernel_size = positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd so that the embedding keeps H and W, got {kernel_size}")
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=kernel_size // 2, bias=True)
    ]
    if activation == "prelu":
        layers.append(nn.PReLU())
    elif activation == "relu":
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def normalize_activation(activation) -> str:
    """``None`` -> ``"none"``; any other value is checked against :data:`ACTIVATIONS`."""
    return choice("activation", "none" if activation is None else activation, ACTIVATIONS)
