"""In-scale non-local attention (IS-NL): every pixel looks at every other pixel of the same map.

Source: Y. Mei, Y. Fan, Y. Zhou, L. Huang, T. S. Huang and H. Shi, "Image
Super-Resolution with Cross-Scale Non-Local Attention and Exhaustive
Self-Exemplars Mining", CVPR 2020 (CSNLN), Sec. 3, eq. 1-2 (eq. 1 of the
supplementary material is the same formula)::

    Z_{i,j} = sum_{g,h}  exp(phi(X_{i,j}, X_{g,h})) / sum_{u,v} exp(phi(X_{i,j}, X_{u,v}))  *  psi(X_{g,h})   (1)
    phi(X_{i,j}, X_{g,h}) = theta(X_{i,j})^T delta(X_{g,h})                                               (2)

Read as matrices, with the ``H*W`` positions of one image flattened into
``L = H*W`` rows (row ``i*W + j`` is pixel ``(i, j)``)::

    Q = theta(X)   (L, C_e)     one query per position (i, j)
    K = delta(X)   (L, C_e)     one key per position (g, h) / (u, v)
    V = psi(X)     (L, C_v)     one value per position (g, h)
    A = softmax_rows(Q K^T)     (L, L)   row i: weights over ALL positions, sums to 1
    Z = A V        (L, C_v)

So eq. 1 is "softmax attention" with a scale of exactly 1: there is no
``1 / sqrt(C_e)`` factor as in Transformers.  The cost is what makes it hard to
use on images: ``A`` has ``(H W)^2`` entries per image, e.g. a 96x96 feature map
gives 85 M entries (340 MB in float32) per image and per layer.

This module offers

* :func:`non_local_attention` - the functional core on flattened ``(N, L, C)``
  sequences, with two interchangeable code paths: ``"explicit"`` builds ``A``
  with ``torch.bmm`` and ``softmax`` (and can return it for plotting), ``"fused"``
  calls ``torch.nn.functional.scaled_dot_product_attention`` with ``scale=1.0``,
  which on most back-ends never stores ``A`` as a whole;
* :class:`NonLocalAttention` - the module with the three 1x1-convolution
  embeddings ``theta``, ``delta``, ``psi`` of the official CSNLN code;
* :func:`region_non_local_attention` / :class:`RegionNonLocalAttention` - the
  "region-based" IS-NL of the CSNLN paper (Sec. 4.2, "Multi-Branch Exemplars",
  following SAN): the map is cut into a grid of cells and attention stays
  inside each cell;
* a memory guard (:func:`check_attention_memory`) that refuses to build an
  explicit attention matrix that would not fit, with :class:`AttentionMemoryError`.

Paper versus official code (SHI-Labs/Cross-Scale-Non-Local-Attention): the code's
IS-NL embeddings are 1x1 convolutions followed by PReLU (``C -> C/2`` for theta
and delta, ``C -> C`` for psi), the softmax runs over the whole tensor it is
given (no region grid, unlike the paper's text) and there is no residual
connection inside the module.  Those are this module's defaults, except that
the region grid is offered as :class:`RegionNonLocalAttention`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IMPLEMENTATIONS",
    "MEMORY_FRACTION",
    "AttentionMemoryError",
    "NonLocalAttention",
    "RegionNonLocalAttention",
    "attention_matrix_bytes",
    "available_memory_bytes",
    "check_attention_memory",
    "non_local_attention",
    "region_grid",
    "region_non_local_attention",
]

# The two code paths of :func:`non_local_attention`.
IMPLEMENTATIONS = ("explicit", "fused")

# Default memory guard: the explicit path may use at most this fraction of the memory that is
# free on the input's device (the rest is left for the network's other activations).
MEMORY_FRACTION = 0.5

# The explicit path holds two (N, Lq, Lk) matrices at its peak: the scores Q K^T and the
# softmax weights (softmax is not computed in place).
_MATRICES_HELD = 2

_ACTIVATIONS = ("prelu", None)


class AttentionMemoryError(MemoryError):
    """The explicit attention matrix would exceed the memory limit; raised before allocating it.

    A subclass of :class:`MemoryError`, so ``except MemoryError`` catches it too.

    Attributes:
        needed_bytes: bytes the explicit path would hold (scores and weights).
        limit_bytes: the limit it was compared with.
    """

    def __init__(self, message: str, needed_bytes: int, limit_bytes: float):
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.limit_bytes = limit_bytes


def _format_bytes(count: float) -> str:
    """``1610612736`` -> ``'1.50 GiB'``; binary units, as ``nvidia-smi`` and ``free -h`` use."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.2f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def attention_matrix_bytes(batch: int, query_length: int, key_length: int, dtype: torch.dtype) -> int:
    """Bytes the explicit path holds at its peak: the scores and the softmax weights.

    Args:
        batch: number of attention problems N (images, or images x regions).
        query_length: Lq, positions that ask (``H*W`` for a whole map).
        key_length: Lk, positions that answer (``H*W`` for a whole map).
        dtype: floating dtype of the matrices (that of the inputs).

    Returns:
        ``2 * N * Lq * Lk * itemsize`` in bytes (two ``(N, Lq, Lk)`` matrices).
        Training keeps the weights for the backward pass and adds gradients of
        the same size, so budget about twice as much when gradients are needed.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    return _MATRICES_HELD * int(batch) * int(query_length) * int(key_length) * itemsize


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


def check_attention_memory(
    batch: int,
    query_length: int,
    key_length: int,
    dtype: torch.dtype,
    device: torch.device | str,
    max_attention_bytes: float | None = None,
    map_size: tuple[int, int] | None = None,
) -> int:
    """Raise :class:`AttentionMemoryError` if an explicit ``(N, Lq, Lk)`` attention would not fit.

    Args:
        batch: N, the number of attention problems (images, or images x regions).
        query_length, key_length: Lq and Lk.
        dtype: dtype of the matrices.
        device: where they would be allocated.
        max_attention_bytes: the limit in bytes; None (default) means
            ``MEMORY_FRACTION`` of :func:`available_memory_bytes` of ``device``
            (no check when that is unknown); ``math.inf`` turns the guard off.
        map_size: ``(H, W)`` of the feature map the queries come from; only used
            to make the error message speak in pixels.

    Returns:
        The bytes needed (:func:`attention_matrix_bytes`), when within the limit.

    Raises:
        AttentionMemoryError: the bytes needed exceed the limit.  The message
            names the map size, the bytes needed, the limit and the ways out
            (the fused path, region-based attention, tiled inference).
    """
    needed = attention_matrix_bytes(batch, query_length, key_length, dtype)
    if max_attention_bytes is None:
        available = available_memory_bytes(device)
        if available is None:
            return needed
        limit: float = MEMORY_FRACTION * available
        device_name = torch.device(device)
        limit_source = f"{MEMORY_FRACTION:.0%} of the {_format_bytes(available)} available on {device_name}"
    else:
        limit = float(max_attention_bytes)
        limit_source = "max_attention_bytes"
    if needed <= limit:
        return needed
    if map_size is not None:
        h, w = map_size
        where = f"{batch} feature map(s) of {h}x{w} pixels ({query_length} positions each)"
    else:
        where = f"{batch} sequence(s) of {query_length} queries and {key_length} keys"
    dtype_name = str(dtype).replace("torch.", "")
    # A square T x T map holds 2 * T^4 scores and weights per image: solve for T.
    itemsize = torch.empty((), dtype=dtype).element_size()
    side = int((limit / (2 * itemsize * max(batch, 1))) ** 0.25)
    tile_hint = f"`srlib eval --tile {side}` or smaller" if side >= 8 else "`srlib eval --tile` with small tiles"
    raise AttentionMemoryError(
        f"explicit non-local attention on {where} needs {_format_bytes(needed)} ({needed} bytes) "
        f"for its ({batch}, {query_length}, {key_length}) {dtype_name} scores and softmax weights, "
        f"more than the limit of {_format_bytes(limit)} ({limit_source}). "
        "Use implementation='fused' (no attention matrix is stored), region-based attention "
        "(RegionNonLocalAttention, attention inside each cell of a grid), or tiled inference "
        f"({tile_hint}: at this limit a map of up to {side}x{side} positions fits); "
        "or raise the limit with max_attention_bytes.",
        needed_bytes=needed,
        limit_bytes=limit,
    )


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


def _check_implementation(implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")


def _check_sequences(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() != 3:
            raise ValueError(
                f"{name} must be a (N, L, C) sequence tensor, got shape {tuple(t.shape)}; "
                "flatten a (N, C, H, W) map with x.flatten(2).transpose(1, 2)"
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    if not (query.shape[0] == key.shape[0] == value.shape[0]):
        raise ValueError(
            f"query, key and value must have the same batch size N, got "
            f"{query.shape[0]}, {key.shape[0]} and {value.shape[0]}"
        )
    if query.shape[2] != key.shape[2]:
        raise ValueError(
            f"query and key must have the same number of channels (they are multiplied), got "
            f"{query.shape[2]} and {key.shape[2]}"
        )
    if key.shape[1] != value.shape[1]:
        raise ValueError(
            f"key and value must have the same length L (one value per key position), got "
            f"{key.shape[1]} and {value.shape[1]}"
        )
    check_same_dtype_and_device(query, key, value)


def _fused_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``softmax(query key^T) value`` through ``scaled_dot_product_attention`` with ``scale=1.0``.

    PyTorch's memory-efficient CPU kernel (flash attention) only runs on 4-D
    ``(N, heads, L, C)`` inputs whose query/key and value widths are equal;
    anything else silently falls back to the math path, which materialises the
    ``(Lq, Lk)`` matrix.  So a head dimension is added, the inputs are made
    contiguous, and the narrower side is
    zero-padded to the wider width: zero channels add nothing to ``query key^T``,
    and padded value channels are cropped from the output.  ``(N, Lq, C_e)``,
    ``(N, Lk, C_e)``, ``(N, Lk, C_v)`` -> ``(N, Lq, C_v)``.
    """
    c_e, c_v = query.shape[-1], value.shape[-1]
    width = max(c_e, c_v)
    if c_e < width:
        query = F.pad(query, (0, width - c_e))  # (N, Lq, width), zero channels
        key = F.pad(key, (0, width - c_e))  # (N, Lk, width)
    if c_v < width:
        value = F.pad(value, (0, width - c_v))  # (N, Lk, width)
    # scale=1.0: eq. 2 is a plain dot product, no 1/sqrt(C_e).
    # The kernel also needs the channel dimension contiguous (embeddings flattened from
    # (N, C, H, W) maps arrive transposed).
    query, key, value = (t.contiguous()[:, None] for t in (query, key, value))  # (N, 1, L, width)
    out = F.scaled_dot_product_attention(query, key, value, scale=1.0)  # (N, 1, Lq, width)
    return out[:, 0, :, :c_v]  # (N, Lq, C_v)


def non_local_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    implementation: str = "explicit",
    return_attention: bool = False,
    max_attention_bytes: float | None = None,
    map_size: tuple[int, int] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention without scaling: ``softmax(query key^T) value`` (CSNLN eq. 1-2).

    Args:
        query: ``(N, Lq, C_e)``, the embedded queries ``theta(X_{i,j})``.
        key: ``(N, Lk, C_e)``, the embedded keys ``delta(X_{g,h})``.
        value: ``(N, Lk, C_v)``, the transformed values ``psi(X_{g,h})``.
            All three float tensors of one dtype on one device; the result is
            computed there.  For in-scale attention ``Lq = Lk = H*W``.
        implementation: ``"explicit"`` (``torch.bmm`` + ``softmax``; the
            ``(N, Lq, Lk)`` matrix is materialised, so it can be returned) or
            ``"fused"`` (``scaled_dot_product_attention(..., scale=1.0)``; the
            same function up to rounding, typically without storing the matrix).
        return_attention: also return the softmax weights (explicit path only).
        max_attention_bytes: memory limit of the explicit path, see
            :func:`check_attention_memory` (None: a fraction of the free memory
            on the input's device).  Ignored by the fused path.
        map_size: ``(H, W)`` the sequences were flattened from, for error
            messages only.

    Returns:
        ``out`` of shape ``(N, Lq, C_v)``, same dtype and device as the inputs;
        with ``return_attention=True`` the pair ``(out, attention)`` where
        ``attention`` is ``(N, Lq, Lk)``, each row non-negative and summing to 1
        (row ``q`` holds the weights of eq. 1 for query position ``q``).

    Raises:
        ValueError: unknown ``implementation``; mismatched shapes, dtypes or
            devices; ``return_attention=True`` with ``implementation="fused"``
            (the fused kernel never exposes the weights: use ``"explicit"``).
        TypeError: non-floating inputs.
        AttentionMemoryError: the explicit matrix would exceed the memory limit.

    Source: CSNLN (Mei et al., CVPR 2020) eq. 1-2; the fused kernel is PyTorch's
    ``torch.nn.functional.scaled_dot_product_attention``, whose default scale
    ``1/sqrt(C_e)`` is overridden with 1 because eq. 2 has no scaling.
    """
    _check_implementation(implementation)
    _check_sequences(query, key, value)
    if implementation == "fused":
        if return_attention:
            raise ValueError(
                "return_attention=True needs implementation='explicit': the fused kernel "
                "(scaled_dot_product_attention) never exposes the attention weights"
            )
        return _fused_attention(query, key, value)  # (N, Lq, C_v)

    check_attention_memory(
        query.shape[0], query.shape[1], key.shape[1], query.dtype, query.device,
        max_attention_bytes=max_attention_bytes, map_size=map_size,
    )
    scores = torch.bmm(query, key.transpose(1, 2))  # (N, Lq, Lk), phi of eq. 2 for every pair
    attention = torch.softmax(scores, dim=-1)  # (N, Lq, Lk), the fraction of eq. 1; rows sum to 1
    out = torch.bmm(attention, value)  # (N, Lq, C_v), Z of eq. 1
    if return_attention:
        return out, attention
    return out


def _positive_int(name: str, value) -> int:
    """``value`` as an ``int`` if it is a positive whole number (not a bool), else ValueError."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_regions(regions, height: int, width: int) -> tuple[int, int]:
    """Validate a ``(rows, cols)`` region grid against an ``height x width`` map."""
    message = f"regions must be a pair (rows, cols) of positive integers, got {regions!r}"
    try:
        rows, cols = regions
        rows, cols = _positive_int("regions", rows), _positive_int("regions", cols)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if height < rows or width < cols:
        raise ValueError(
            f"a {height}x{width} feature map cannot be cut into a {rows}x{cols} grid of regions: every "
            f"region needs at least one pixel, so H >= {rows} and W >= {cols} are required; "
            "use fewer regions or the global NonLocalAttention"
        )
    return rows, cols


def _even_blocks(length: int, parts: int) -> list[tuple[int, int, int]]:
    """Cut ``length`` pixels into ``parts`` cells as :func:`torch.tensor_split` does.

    The first ``length % parts`` cells are one pixel longer than the others.
    Returns up to two ``(start, stop, cells)`` blocks, each made of ``cells``
    equal cells, so that each block can be reshaped into its cells.
    """
    small, n_large = divmod(length, parts)
    blocks = []
    if n_large:
        blocks.append((0, n_large * (small + 1), n_large))
    if parts - n_large:
        blocks.append((n_large * (small + 1), length, parts - n_large))
    return blocks


def region_grid(height: int, width: int, regions: tuple[int, int] = (2, 2)) -> list[tuple[slice, slice]]:
    """The cells of a ``rows x cols`` region grid on an ``height x width`` map, row by row.

    Cells are as equal as possible: when ``rows`` does not divide ``height``,
    the first ``height % rows`` rows of cells are one pixel taller than the
    rest (the rule of :func:`torch.tensor_split`); the same for columns.  So
    cell sizes differ by at most one pixel and no padding is needed.

    Args:
        height, width: the map size H, W in pixels.
        regions: ``(rows, cols)`` of the grid.

    Returns:
        ``rows * cols`` pairs ``(row_slice, col_slice)``; ``x[..., r, c]``
        is one cell of a ``(..., H, W)`` tensor.

    Raises:
        ValueError: ``regions`` is not a pair of positive integers, or the map is
            smaller than the grid (``H < rows`` or ``W < cols``).
    """
    rows, cols = _check_regions(regions, height, width)

    def edges(length: int, parts: int) -> list[slice]:
        cuts = []
        for start, stop, cells in _even_blocks(length, parts):
            size = (stop - start) // cells
            cuts += [slice(start + k * size, start + (k + 1) * size) for k in range(cells)]
        return cuts

    return [(r, c) for r in edges(height, rows) for c in edges(width, cols)]


def _attend_equal_cells(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid: tuple[int, int],
    implementation: str,
    max_attention_bytes: float | None,
) -> torch.Tensor:
    """Attention inside each cell of a grid that divides the maps exactly, all cells in one batch."""
    n, _, h, w = query.shape
    rows, cols = grid
    cell_h, cell_w = h // rows, w // cols

    def to_cells(t: torch.Tensor) -> torch.Tensor:
        c = t.shape[1]
        t = t.reshape(n, c, rows, cell_h, cols, cell_w)  # (N, C, rows, cell_h, cols, cell_w)
        t = t.permute(0, 2, 4, 3, 5, 1)  # (N, rows, cols, cell_h, cell_w, C)
        return t.reshape(n * rows * cols, cell_h * cell_w, c)  # (N*rows*cols, cell_h*cell_w, C)

    out = non_local_attention(
        to_cells(query), to_cells(key), to_cells(value), implementation=implementation,
        max_attention_bytes=max_attention_bytes, map_size=(cell_h, cell_w),
    )  # (N*rows*cols, cell_h*cell_w, C_v)
    c_v = out.shape[-1]
    out = out.reshape(n, rows, cols, cell_h, cell_w, c_v)  # (N, rows, cols, cell_h, cell_w, C_v)
    out = out.permute(0, 5, 1, 3, 2, 4)  # (N, C_v, rows, cell_h, cols, cell_w)
    return out.reshape(n, c_v, h, w)  # (N, C_v, H, W)


def region_non_local_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    regions: tuple[int, int] = (2, 2),
    implementation: str = "explicit",
    max_attention_bytes: float | None = None,
) -> torch.Tensor:
    """Non-local attention restricted to each cell of a region grid (CSNLN's region-based IS-NL).

    Every position attends to the positions of its own cell only (softmax over
    the cell), with the cells of :func:`region_grid`.  When the grid divides
    the map, all ``N * rows * cols`` cells go through one batched call; when it
    does not, the map falls into at most four blocks of equal cells (tall/short
    rows x wide/narrow columns) and each block is one batched call.

    Args:
        query: ``(N, C_e, H, W)`` map of embedded queries ``theta(X)``.
        key: ``(N, C_e, H, W)`` map of embedded keys ``delta(X)``.
        value: ``(N, C_v, H, W)`` map of values ``psi(X)``.
        regions: ``(rows, cols)`` of the grid; any ``H >= rows``, ``W >= cols``.
        implementation: ``"explicit"`` or ``"fused"``, see :func:`non_local_attention`.
        max_attention_bytes: memory limit of the explicit path, applied to each
            batched call, see :func:`check_attention_memory`.

    Returns:
        ``(N, C_v, H, W)``, same dtype and device as the inputs.

    Raises:
        ValueError: maps that are not 4-D or do not share N, H, W; a bad grid or
            a map smaller than the grid; an unknown ``implementation``.
        AttentionMemoryError: an explicit call would exceed the memory limit.

    Source: CSNLN (Mei et al., CVPR 2020) Sec. 4.2, "Multi-Branch Exemplars": "The
    IS-NL module is region-based ... we divide the feature maps into region
    grids, where the inter-dependencies are captured independently in each
    grid", after SAN (Dai et al., CVPR 2019).  The paper does not give the grid
    size; the official code uses no grid at all.
    """
    _check_implementation(implementation)
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be a (N, C, H, W) map, got shape {tuple(t.shape)}")
    n, _, h, w = query.shape
    if key.shape[0] != n or value.shape[0] != n or key.shape[2:] != (h, w) or value.shape[2:] != (h, w):
        raise ValueError(
            f"query, key and value maps must share N, H and W, got {tuple(query.shape)}, "
            f"{tuple(key.shape)} and {tuple(value.shape)}"
        )
    rows, cols = _check_regions(regions, h, w)
    band_rows = []
    for r0, r1, n_rows in _even_blocks(h, rows):
        band = []
        for c0, c1, n_cols in _even_blocks(w, cols):
            band.append(
                _attend_equal_cells(
                    query[:, :, r0:r1, c0:c1], key[:, :, r0:r1, c0:c1], value[:, :, r0:r1, c0:c1],
                    (n_rows, n_cols), implementation, max_attention_bytes,
                )
            )  # (N, C_v, r1 - r0, c1 - c0)
        band_rows.append(torch.cat(band, dim=3))  # (N, C_v, r1 - r0, W)
    return torch.cat(band_rows, dim=2)  # (N, C_v, H, W)


def _embedding(in_channels: int, out_channels: int, activation: str | None) -> nn.Module:
    """1x1 convolution (with bias), followed by PReLU (one learned slope, init 0.25) if asked."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)
    if activation == "prelu":
        return nn.Sequential(conv, nn.PReLU())
    return conv


class _EmbeddedAttention(nn.Module):
    """Shared part of the two modules: the theta / delta / psi embeddings and the optional residual."""

    def __init__(
        self,
        channels: int,
        embed_channels: int | None,
        value_channels: int | None,
        residual: bool,
        activation: str | None,
        implementation: str,
        max_attention_bytes: float | None,
    ):
        super().__init__()
        channels = _positive_int("channels", channels)
        if embed_channels is None:
            embed_channels = max(channels // 2, 1)
        if value_channels is None:
            value_channels = channels
        embed_channels = _positive_int("embed_channels", embed_channels)
        value_channels = _positive_int("value_channels", value_channels)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be 'prelu' or None, got {activation!r}")
        _check_implementation(implementation)
        self.channels = channels
        self.embed_channels = embed_channels
        self.value_channels = value_channels
        self.residual = bool(residual)
        self.activation = activation
        self.implementation = implementation
        self.max_attention_bytes = max_attention_bytes

        self.theta = _embedding(channels, embed_channels, activation)  # theta of eq. 2: queries
        self.delta = _embedding(channels, embed_channels, activation)  # delta of eq. 2: keys
        self.psi = _embedding(channels, value_channels, activation)  # psi of eq. 1: values
        if self.residual and value_channels != channels:
            self.output_projection: nn.Module | None = nn.Conv2d(value_channels, channels, kernel_size=1)
        else:
            self.output_projection = None

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__} expects a (N, {self.channels}, H, W) feature map, "
                f"got shape {tuple(x.shape)}"
            )

    def _finish(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Residual step: ``z`` alone, or ``x + output_projection(z)``."""
        if not self.residual:
            return z  # (N, C_v, H, W)
        if self.output_projection is not None:
            z = self.output_projection(z)  # (N, C, H, W)
        return x + z  # (N, C, H, W)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, embed_channels={self.embed_channels}, "
            f"value_channels={self.value_channels}, residual={self.residual}, "
            f"activation={self.activation!r}, implementation={self.implementation!r}"
        )


class NonLocalAttention(_EmbeddedAttention):
    """In-scale non-local attention over the whole feature map (CSNLN eq. 1-2).

    Args:
        channels: C, channels of the input map X.
        embed_channels: C_e, channels of the query/key embeddings (default
            ``channels // 2``, at least 1, as in the official CSNLN code).
        value_channels: C_v, channels of the values (default ``channels``).
        residual: add the input back: ``out = X + Z`` (``X + W_z Z`` with a 1x1
            convolution ``W_z`` from C_v to C when ``C_v != C``).  CSNLN's own
            IS-NL has no residual (default False); the residual form is that of
            Wang et al., "Non-local Neural Networks", CVPR 2018, eq. 6.
        activation: ``"prelu"`` (default: each embedding is 1x1 conv + PReLU,
            as in the official CSNLN code) or None (plain 1x1 convolutions, as
            in the paper's formula).
        implementation: ``"explicit"`` (default) or ``"fused"``, see
            :func:`non_local_attention`.  Both compute the same function; change
            it at any time through the attribute of the same name.
        max_attention_bytes: memory limit of the explicit path in bytes (None:
            a fraction of the free memory on the input's device, see
            :func:`check_attention_memory`; ``math.inf``: no limit).

    Layers (the names are the checkpoint keys) and the paper's symbols:
        ``theta`` - theta of eq. 2, the query embedding of ``X_{i,j}``: 1x1 conv C -> C_e (+ PReLU);
        ``delta`` - delta of eq. 2, the key embedding of ``X_{g,h}`` and ``X_{u,v}``: 1x1 conv C -> C_e (+ PReLU);
        ``psi`` - psi of eq. 1, the value transform of ``X_{g,h}``: 1x1 conv C -> C_v (+ PReLU);
        ``output_projection`` - ``W_z`` (not in CSNLN): 1x1 conv C_v -> C, only with
        ``residual=True`` and ``C_v != C``, else None.
        The similarity ``phi = theta^T delta`` (eq. 2) and the softmax have no
        parameters and no ``1/sqrt(C_e)`` scaling.

    Forward ``forward(x, return_attention=False)``:
        ``x``: ``(N, C, H, W)`` float feature map, any device and dtype matching
        the weights.  Returns ``out``, ``(N, C, H, W)`` with ``residual=True``,
        else Z of eq. 1 with ``(N, C_v, H, W)`` (``= (N, C, H, W)`` by default).
        With ``return_attention=True`` (explicit path only) returns
        ``(out, attention)``, ``attention`` of shape ``(N, H*W, H*W)``: row
        ``i*W + j`` holds the weights pixel ``(i, j)`` gives to every pixel
        ``(g, h)`` (index ``g*W + h``), summing to 1.

    Raises:
        ValueError: bad constructor arguments; an input that is not
            ``(N, C, H, W)``; ``return_attention=True`` with the fused path.
        AttentionMemoryError: the explicit ``(N, HW, HW)`` matrix would exceed
            the memory limit (the message says what to do instead).

    Source: CSNLN (Mei et al., CVPR 2020) Sec. 3, eq. 1-2; embedding sizes and
    PReLU from the official code (SHI-Labs/Cross-Scale-Non-Local-Attention).
    """

    def __init__(
        self,
        channels: int,
        embed_channels: int | None = None,
        value_channels: int | None = None,
        residual: bool = False,
        activation: str | None = "prelu",
        implementation: str = "explicit",
        max_attention_bytes: float | None = None,
    ):
        super().__init__(
            channels, embed_channels, value_channels, residual, activation, implementation, max_attention_bytes
        )

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        self._check_input(x)
        n, _, h, w = x.shape
        query = self.theta(x).flatten(2).transpose(1, 2)  # (N, HW, C_e), theta(X_{i,j})
        key = self.delta(x).flatten(2).transpose(1, 2)  # (N, HW, C_e), delta(X_{g,h})
        value = self.psi(x).flatten(2).transpose(1, 2)  # (N, HW, C_v), psi(X_{g,h})
        result = non_local_attention(
            query, key, value, implementation=self.implementation, return_attention=return_attention,
            max_attention_bytes=self.max_attention_bytes, map_size=(h, w),
        )
        z, attention = result if return_attention else (result, None)  # z: (N, HW, C_v)
        z = z.transpose(1, 2).reshape(n, self.value_channels, h, w)  # (N, C_v, H, W), Z of eq. 1
        out = self._finish(x, z)  # (N, C, H, W) with residual, else (N, C_v, H, W)
        if return_attention:
            return out, attention  # attention: (N, HW, HW)
        return out


class RegionNonLocalAttention(_EmbeddedAttention):
    """Region-based in-scale non-local attention: eq. 1 inside each cell of a grid.

    The embeddings are those of :class:`NonLocalAttention` (1x1 convolutions act
    on each pixel alone, so embedding the whole map and then cutting it into
    cells is the same as embedding each cell); the softmax of eq. 1 then runs
    over the cell of the query pixel instead of the whole map (see
    :func:`region_non_local_attention` and :func:`region_grid`).  The explicit
    matrices shrink from ``(HW)^2`` to about ``(HW)^2 / (rows * cols)`` entries
    per image, and no information crosses cell borders in this layer.

    Args:
        channels, embed_channels, value_channels, residual, activation,
        implementation, max_attention_bytes: as in :class:`NonLocalAttention`.
        regions: ``(rows, cols)`` of the grid (default ``(2, 2)``).  Any map with
            ``H >= rows`` and ``W >= cols`` works; when the grid does not divide
            the map, cells differ in size by at most one pixel (no padding).

    Layers: ``theta``, ``delta``, ``psi``, ``output_projection`` exactly as in
    :class:`NonLocalAttention`, so a state dict moves between the two classes.

    Forward ``forward(x)``:
        ``(N, C, H, W)`` -> ``(N, C, H, W)`` with ``residual=True``, else
        ``(N, C_v, H, W)``.  The per-cell attention weights are not returned;
        call :func:`non_local_attention` with ``return_attention=True`` on one
        cell to look at them.

    Raises:
        ValueError: bad constructor arguments or grid; an input that is not
            ``(N, C, H, W)``; a map smaller than the grid.
        AttentionMemoryError: an explicit per-cell batch would exceed the limit.

    Source: CSNLN (Mei et al., CVPR 2020) Sec. 4.2 "Multi-Branch Exemplars"
    (region-based IS-NL, after SAN); eq. 1-2 inside each region.
    """

    def __init__(
        self,
        channels: int,
        embed_channels: int | None = None,
        value_channels: int | None = None,
        residual: bool = False,
        activation: str | None = "prelu",
        implementation: str = "explicit",
        max_attention_bytes: float | None = None,
        regions: tuple[int, int] = (2, 2),
    ):
        super().__init__(
            channels, embed_channels, value_channels, residual, activation, implementation, max_attention_bytes
        )
        self.regions = _check_regions(regions, math.inf, math.inf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        _check_regions(self.regions, x.shape[2], x.shape[3])  # before any work is spent on the embeddings
        z = region_non_local_attention(
            self.theta(x), self.delta(x), self.psi(x),  # (N, C_e, H, W), (N, C_e, H, W), (N, C_v, H, W)
            regions=self.regions, implementation=self.implementation,
            max_attention_bytes=self.max_attention_bytes,
        )  # (N, C_v, H, W)
        return self._finish(x, z)  # (N, C, H, W) with residual, else (N, C_v, H, W)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, regions={self.regions}"
