"""Model size and cost: parameter counts and FLOPs, for the tables in the README and notebooks.

FLOPs are counted by running one forward pass under
``torch.utils.flop_counter.FlopCounterMode``, which counts the matrix
operations (convolutions, matrix products, batched matrix products, attention)
and counts **2 FLOPs per multiply-add**: a 3x3 convolution from ``C_in`` to
``C_out`` channels on an ``H x W`` output costs ``2 * 9 * C_in * C_out * H * W``.
Element-wise work (bias, ReLU, additions, pixel shuffle, the index gathers of
bicubic resizing) is not counted, so the bicubic model shows 0.  Papers often
quote multiply-adds ("Mult-Adds", "MACs"), which are half of these numbers.

Fused attention.  ``torch.nn.functional.scaled_dot_product_attention`` reaches
a kernel that PyTorch's own FLOP table does not know on CPU
(``aten._scaled_dot_product_flash_attention_for_cpu``; also the "overrideable"
back-end and MPS kernels), so the dense attention's fused path counted as 0.
:func:`flop_counter` adds formulas for those kernels, counted from the shapes
the kernel receives: ``2 B H Lq Lk (E + E_v)`` for ``softmax(Q K^T) V`` with
``Q`` ``(B, H, Lq, E)``, ``K`` ``(B, H_k, Lk, E)``, ``V`` ``(B, H_k, Lk, E_v)``
(the two matrix products; the softmax is element-wise), and
``2 B H Lq Lk (3 E + 2 E_v)`` for the backward pass (five products: the
scores recomputed, the gradients of the weights, of ``V``, of ``Q`` and of
``K``).  They count what the kernel multiplies: srlib's fused dense attention
pads its ``C // reduction`` query and key channels to ``C`` with zeros before
the call (see :func:`srlib.attention.non_local.non_local_attention`), and
those products are counted; the attention's declared arithmetic
(:func:`srlib.attention.registry.attention_multiply_adds`), which the
benchmark uses, counts the equations and leaves the padding out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_parameters", "flop_counter", "model_device", "model_summary"]

_ATEN = torch.ops.aten


def _sdpa_heads(query_shape, key_shape, value_shape) -> tuple[int, int, int, int, int, int]:
    """``(B, H, Lq, Lk, E, E_v)`` of an attention call on 4-D ``(B, H, L, E)`` query, key and value shapes.

    Key and value may have fewer heads than the query (grouped-query attention:
    each key/value head serves ``H / H_k`` query heads); the products still
    run for all ``H`` query heads.
    """
    batch, heads, queries, width = query_shape
    keys = key_shape[-2]
    value_width = value_shape[-1]
    if len(key_shape) != 4 or len(value_shape) != 4 or key_shape[-1] != width or value_shape[-2] != keys:
        raise ValueError(f"attention shapes do not fit: query {tuple(query_shape)}, key {tuple(key_shape)}, "
                         f"value {tuple(value_shape)}")
    return batch, heads, queries, keys, width, value_width


def _sdpa_forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``softmax(Q K^T * scale) V``: ``2 B H Lq Lk E`` for the scores, ``2 B H Lq Lk E_v`` for the sum."""
    batch, heads, queries, keys, width, value_width = _sdpa_heads(query_shape, key_shape, value_shape)
    return 2 * batch * heads * queries * keys * (width + value_width)


def _sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the attention's backward pass: five ``(Lq, Lk)``-sized products.

    Scores recomputed ``Q K^T`` (``E``), the weights' gradient ``dO V^T``
    (``E_v``), ``dV = P^T dO`` (``E_v``), ``dQ = dS K`` (``E``) and ``dK = dS^T Q``
    (``E``): ``2 B H Lq Lk (3 E + 2 E_v)``.
    """
    batch, heads, queries, keys, width, value_width = _sdpa_heads(query_shape, key_shape, value_shape)
    return 2 * batch * heads * queries * keys * (3 * width + 2 * value_width)


def _fused_attention_formulas() -> dict:
    """Formulas for the fused attention kernels that ``torch.utils.flop_counter`` has none for (this torch)."""
    from torch.utils.flop_counter import flop_registry

    wanted = {
        "_scaled_dot_product_flash_attention_for_cpu": _sdpa_forward_flops,
        "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_backward_flops,
        "_scaled_dot_product_fused_attention_overrideable": _sdpa_forward_flops,
        "_scaled_dot_product_fused_attention_overrideable_backward": _sdpa_backward_flops,
        "_scaled_dot_product_attention_math_for_mps": _sdpa_forward_flops,
    }
    formulas = {}
    for name, formula in wanted.items():
        op = getattr(_ATEN, name, None)
        if op is not None and op not in flop_registry and op.default not in flop_registry:
            formulas[op] = formula
    return formulas


def flop_counter(display: bool = False) -> FlopCounterMode:
    """A ``torch.utils.flop_counter.FlopCounterMode`` that also counts the fused attention kernels.

    Use it as ``with flop_counter() as counter: model(x)``, then
    ``counter.get_total_flops()`` (2 FLOPs per multiply-add).  Besides
    PyTorch's own table (convolutions, ``mm``, ``bmm``, CUDA attention
    kernels...) it counts the CPU flash-attention kernel of
    ``scaled_dot_product_attention`` (forward and backward), the
    "overrideable" back-end kernel and the MPS math kernel, from their input
    shapes (see the module docstring).  Kernels this torch already counts keep
    PyTorch's formula.

    Args:
        display: print PyTorch's table when the block ends.
    """
    return FlopCounterMode(display=display, custom_mapping=_fused_attention_formulas())


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
        attention, as counted by :func:`flop_counter` (``FlopCounterMode`` plus
        the fused attention kernels it misses); element-wise operations are
        not included.

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
        with torch.no_grad(), flop_counter() as counter:
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
