"""Model size and cost: parameter counts and FLOPs, for the tables in the README and notebooks.

FLOPs are counted by running one forward pass under
``torch.utils.flop_counter.FlopCounterMode``, which counts the matrix
operations (convolutions, matrix products, batched matrix products, attention)
and counts **2 FLOPs per multiply-add**: a 3x3 convolution from ``C_in`` to
``C_out`` channels on an ``H x W`` output costs ``2 * 9 * C_in * C_out * H * W``.
Element-wise work (bias, ReLU, additions, pixel shuffle, the index gathers of
bicubic resizing) is not counted, so the bicubic model shows 0.  Papers often
quote multiply-adds ("Mult-Adds", "MACs"), which are half of these numbers.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "count_flops", "model_summary", "model_device"]


def model_device(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of a model's first parameter or buffer, or ``default`` if it has none.

    Parameter-free models (``bicubic``) run wherever their input is.
    """
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device(default)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model``.

    Args:
        model: any ``nn.Module``.
        trainable_only: count only parameters with ``requires_grad``.

    Returns:
        The total number of elements of the parameters (buffers such as
        EDSR's fixed RGB mean are not parameters and are not counted).
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(
    model: nn.Module, lr_size: Sequence[int] = (64, 64), device: torch.device | str | None = None
) -> int:
    """FLOPs of one forward pass on a single ``(1, 3, h, w)`` LR input.

    Args:
        model: a super-resolution model taking float32 ``(N, 3, h, w)``; a
            model that takes references (:func:`srlib.models.takes_references`) is given one random
            reference of the HR size ``(1, 3, s*h, s*w)``.
        lr_size: ``(h, w)`` of the LR input in pixels.
        device: where to run the pass; default: the model's device.  The
            model is not moved: give a device only when the model already is,
            or use the default.

    Returns:
        FLOPs (2 per multiply-add) of convolutions, matrix products and
        attention, as counted by ``FlopCounterMode``; element-wise operations
        are not included.

    Raises:
        ValueError: ``lr_size`` is not two positive integers.
    """
    if len(lr_size) != 2 or min(int(s) for s in lr_size) < 1:
        raise ValueError(f"lr_size must be (h, w) with positive integers, got {tuple(lr_size)!r}")
    h, w = (int(s) for s in lr_size)
    device = torch.device(device) if device is not None else model_device(model)
    lr = torch.zeros(1, 3, h, w, device=device)
    was_training = model.training
    model.eval()
    try:
        inputs = (lr,)
        from srlib.models.registry import takes_references

        if takes_references(model):
            scale = int(getattr(model, "scale", 1))
            reference = torch.rand(1, 3, scale * h, scale * w, generator=torch.Generator().manual_seed(0))
            inputs = (lr, [reference.to(device)])
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_summary(
    model: nn.Module, lr_sizes: Iterable[Sequence[int]] = ((64, 64), (128, 128), (256, 256))
) -> list[dict]:
    """Parameters and FLOPs of a model at several LR input sizes, one row per size.

    Args:
        model: a built model (with ``model_name`` and ``scale`` from
            :func:`srlib.models.build_model`; plain modules work too).
        lr_sizes: LR input sizes ``(h, w)`` to count FLOPs at.

    Returns:
        A list of dicts, one per size, with keys ``model`` (name), ``scale``,
        ``lr_size`` (``(h, w)``), ``sr_size`` (``(s*h, s*w)``), ``params``
        (int), ``flops`` (int, 2 per multiply-add) and ``gflops`` (float,
        ``flops / 1e9``).  Ready for ``pandas.DataFrame(rows)`` or a Markdown
        table.
    """
    name = getattr(model, "model_name", type(model).__name__)
    scale = int(getattr(model, "scale", 1))
    params = count_parameters(model)
    rows = []
    for size in lr_sizes:
        h, w = (int(s) for s in size)
        flops = count_flops(model, (h, w))
        rows.append(
            {
                "model": name,
                "scale": scale,
                "lr_size": (h, w),
                "sr_size": (scale * h, scale * w),
                "params": params,
                "flops": flops,
                "gflops": flops / 1e9,
            }
        )
    return rows
