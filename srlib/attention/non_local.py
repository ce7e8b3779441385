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
  embeddings of the official CSNLN code: ``query_embed`` (the paper's theta),
  ``key_embed`` (delta) and ``value_embed`` (psi), registered as ``"non_local"``;
* :func:`region_non_local_attention` / :class:`RegionNonLocalAttention` - the
  "region-based" IS-NL of the CSNLN paper (Sec. 4.2, "Multi-Branch Exemplars",
  following SAN): the map is cut into a grid of cells and attention stays
  inside each cell;
* a memory guard (:func:`check_attention_memory`, built on the shared
  :func:`srlib.attention._common.guard_memory`) that refuses to build an
  explicit attention matrix that would not fit, with :class:`AttentionMemoryError`.

Paper versus official code (SHI-Labs/Cross-Scale-Non-Local-Attention): the code's
IS-NL embeddings are 1x1 convolutions followed by PReLU (``C -> C/2`` for theta
and delta, ``C -> C`` for psi), the softmax runs over the whole tensor it is
given (no region grid, unlike the paper's text) and there is no residual
connection inside the module.  Those are this module's defaults, except that
the region grid is offered as :class:`RegionNonLocalAttention` (``"region_non_local"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from srlib.attention._common import (
    MEMORY_FRACTION,
    AttentionMemoryError,
    available_memory_bytes,
    channel_reduction,
    check_feature_map,
    check_query_key_value,
    embedding,
    guard_memory,
    memory_limit,
    normalize_activation,
    optional_bytes,
    positive_int,
)
from srlib.attention.registry import register_attention

__all__ = [
    "IMPLEMENTATIONS",
    "MEMORY_FRACTION",
    "AttentionDetails",
    "AttentionMemoryError",
    "NonLocalAttention",
    "RegionAttentionDetails",
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

# The explicit path holds two (N, Lq, Lk) matrices at its peak: the scores Q K^T and the
# softmax weights (softmax is not computed in place).
_MATRICES_HELD = 2


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
    limit = memory_limit(device, max_attention_bytes)
    if limit is None or needed <= limit[0]:
        return needed
    if map_size is not None:
        h, w = map_size
        where = f"{batch} feature map(s) of {h}x{w} pixels ({query_length} positions each)"
    else:
        where = f"{batch} sequence(s) of {query_length} queries and {key_length} keys"
    dtype_name = str(dtype).replace("torch.", "")
    # A square T x T map holds 2 * T^4 scores and weights per image: solve for T.
    itemsize = torch.empty((), dtype=dtype).element_size()
    side = int((limit[0] / (2 * itemsize * max(batch, 1))) ** 0.25)
    tile_hint = f"`srlib eval --tile {side}` or smaller" if side >= 8 else "`srlib eval --tile` with small tiles"
    return guard_memory(
        needed, device, max_attention_bytes,
        f"explicit non-local attention on {where}",
        "Use implementation='fused' (no attention matrix is stored), region-based attention "
        "(RegionNonLocalAttention, attention inside each cell of a grid), or tiled inference "
        f"({tile_hint}: at this limit a map of up to {side}x{side} positions fits); "
        "or raise the limit with max_attention_bytes.",
        holding=f" for its ({batch}, {query_length}, {key_length}) {dtype_name} scores and softmax weights",
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
    check_query_key_value(query, key, value, channel_dim=2)
    if key.shape[1] != value.shape[1]:
        raise ValueError(
            f"key and value must have the same length L (one value per key position), got "
            f"{key.shape[1]} and {value.shape[1]}"
        )


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


def _check_regions(regions, height: int, width: int) -> tuple[int, int]:
    """Validate a ``(rows, cols)`` region grid against an ``height x width`` map."""
    message = f"regions must be a pair (rows, cols) of positive integers, got {regions!r}"
    try:
        rows, cols = regions
        rows, cols = positive_int("regions", rows), positive_int("regions", cols)
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


@dataclass
class AttentionDetails:
    """The attention weights of a dense attention call, for plots (``return_details=True``).

    Attributes:
        weights: ``(N, Lq, Lk)`` softmax weights; row ``q`` (query position
            ``i*W + j``) holds what that query gives to every key position
            (index ``g*W + h``), non-negative and summing to 1.
        map_size: ``(H, W)`` of the query map, to reshape a row into an image.
    """

    weights: torch.Tensor
    map_size: tuple[int, int]


@dataclass
class RegionAttentionDetails:
    """The per-cell attention weights of region-based attention (``return_details=True``).

    Attributes:
        cells: the ``rows * cols`` cells of :func:`region_grid`, row by row, as
            ``(row_slice, col_slice)`` pairs.
        weights: one ``(N, l, l)`` tensor per cell (``l`` = pixels of that
            cell, flattened row by row), rows summing to 1.
    """

    cells: list[tuple[slice, slice]]
    weights: list[torch.Tensor]


class _EmbeddedAttention(nn.Module):
    """Shared part of the dense modules: the query / key / value embeddings and the input check.

    Its ``__init__`` is that of :class:`NonLocalAttention` (the registry reads
    the options from this signature, where they are documented);
    :class:`RegionNonLocalAttention` adds ``regions``.

    Raises:
        ValueError: a bad option, or ``channels // reduction < 1``.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 2,
        activation: str = "prelu",
        implementation: str = "explicit",
        max_attention_bytes: float | None = None,
    ):
        super().__init__()
        channels, reduction = channel_reduction(channels, reduction)
        _check_implementation(implementation)
        self.channels = channels
        self.reduction = reduction
        self.embed_channels = channels // reduction
        self.activation = normalize_activation(activation)
        self.implementation = implementation
        self.max_attention_bytes = optional_bytes(max_attention_bytes)

        self.query_embed = embedding(channels, self.embed_channels, self.activation)  # theta of eq. 2
        self.key_embed = embedding(channels, self.embed_channels, self.activation)  # delta of eq. 2
        self.value_embed = embedding(channels, channels, self.activation)  # psi of eq. 1

    @property
    def memory_guarded(self) -> bool:
        """Whether forward passes are guarded: the explicit path holds the ``(HW)^2`` matrix, the fused one does not."""
        return self.implementation == "explicit"

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Check ``x`` and return ``(theta(X), delta(X), psi(X))``: ``(N, C_e, H, W)`` twice and ``(N, C, H, W)``.

        Raises:
            ValueError: ``x`` is not a ``(N, channels, H, W)`` float map of the module's dtype and device.
        """
        check_feature_map(self, x, self.channels)
        return self.query_embed(x), self.key_embed(x), self.value_embed(x)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, reduction={self.reduction}, activation={self.activation!r}, "
            f"implementation={self.implementation!r}"
        )


def non_local_multiply_adds(shape: tuple[int, int, int, int], options: dict) -> int:
    """Multiply-adds of one :class:`NonLocalAttention` forward pass on an ``(N, C, H, W)`` map (CSNLN eq. 1-2).

    With ``L = H W`` positions and ``C_e = C // reduction``:

    * embeddings, three 1x1 convolutions: ``theta`` and ``delta`` ``C -> C_e``,
      ``psi`` ``C -> C``: ``N L (2 C C_e + C^2)``;
    * eq. 2, ``phi = theta^T delta`` for every pair: ``N L^2 C_e``;
    * eq. 1, the softmax-weighted sum of ``psi``: ``N L^2 C``.

    Both implementations compute the same equations; the fused kernel pads the
    queries and keys to ``C`` channels (zeros), work the equations do not need
    and this count leaves out.  Softmax, PReLU and biases are element-wise and
    not counted.  ``options``: the module's complete options (``reduction``).
    """
    n, c, h, w = shape
    c_e = c // options["reduction"]
    positions = h * w
    embeddings = n * positions * (2 * c * c_e + c * c)  # theta, delta: C -> C_e; psi: C -> C
    scores = n * positions * positions * c_e  # eq. 2 for every (query, key) pair
    weighted = n * positions * positions * c  # eq. 1: attention (L, L) times values (L, C)
    return embeddings + scores + weighted


@register_attention(
    "non_local", kind="in_scale", loops="srlib.attention.loops:non_local_loops", guarded=True,
    bench={"dense_explicit": {"implementation": "explicit"}, "dense_fused": {"implementation": "fused"}},
    multiply_adds=non_local_multiply_adds,
)
class NonLocalAttention(_EmbeddedAttention):
    """In-scale non-local attention over the whole feature map (CSNLN eq. 1-2).

    Args:
        channels: C, channels of the input map X (and of the output Z).
        reduction: the query/key embeddings have ``C_e = C // reduction``
            channels (default 2, as in the official CSNLN code).
        activation: ``"prelu"`` (default: each embedding is 1x1 conv + PReLU,
            as in the official CSNLN code) or ``"none"`` (plain 1x1
            convolutions, as in the paper's formula).
        implementation: ``"explicit"`` (default) or ``"fused"``, see
            :func:`non_local_attention`.  Both compute the same function; change
            it at any time through the attribute of the same name.
        max_attention_bytes: memory limit of the explicit path in bytes (None:
            a fraction of the free memory on the input's device, see
            :func:`check_attention_memory`; ``math.inf``: no limit).

    Layers (the names are the checkpoint keys) and the paper's symbols:
        ``query_embed`` - theta of eq. 2, the query embedding of ``X_{i,j}``: 1x1 conv C -> C_e (+ PReLU);
        ``key_embed`` - delta of eq. 2, the key embedding of ``X_{g,h}`` and ``X_{u,v}``: 1x1 conv C -> C_e (+ PReLU);
        ``value_embed`` - psi of eq. 1, the value transform of ``X_{g,h}``: 1x1 conv C -> C (+ PReLU).
        Each is ``Sequential(conv[, PReLU])`` (keys ``query_embed.0.weight`` ...).
        The similarity ``phi = theta^T delta`` (eq. 2) and the softmax have no
        parameters and no ``1/sqrt(C_e)`` scaling.  There is no residual: the
        model adds the output to its input if it wants one.

    Forward ``forward(x, return_details=False)``:
        ``x``: ``(N, C, H, W)`` float feature map on the module's device and
        dtype.  Returns Z of eq. 1, ``(N, C, H, W)``.  With
        ``return_details=True`` returns ``(Z, details)``, an
        :class:`AttentionDetails` whose ``weights`` are ``(N, H*W, H*W)``: row
        ``i*W + j`` holds the weights pixel ``(i, j)`` gives to every pixel
        ``(g, h)`` (index ``g*W + h``), summing to 1 (always computed by the
        explicit path, which holds the matrix).

    Raises:
        ValueError: bad constructor arguments; an input that is not
            ``(N, C, H, W)`` of the module's dtype and device.
        AttentionMemoryError: the explicit ``(N, HW, HW)`` matrix would exceed
            the memory limit (the message says what to do instead).

    Source: CSNLN (Mei et al., CVPR 2020) Sec. 3, eq. 1-2; embedding sizes and
    PReLU from the official code (SHI-Labs/Cross-Scale-Non-Local-Attention).
    """

    def forward(self, x: torch.Tensor, return_details: bool = False):
        query, key, value = self.embed(x)  # (N, C_e, H, W), (N, C_e, H, W), (N, C, H, W)
        n, _, h, w = x.shape
        implementation = "explicit" if return_details else self.implementation
        result = non_local_attention(
            query.flatten(2).transpose(1, 2),  # (N, HW, C_e), theta(X_{i,j})
            key.flatten(2).transpose(1, 2),  # (N, HW, C_e), delta(X_{g,h})
            value.flatten(2).transpose(1, 2),  # (N, HW, C), psi(X_{g,h})
            implementation=implementation, return_attention=return_details,
            max_attention_bytes=self.max_attention_bytes, map_size=(h, w),
        )
        z, weights = result if return_details else (result, None)  # z: (N, HW, C)
        z = z.transpose(1, 2).reshape(n, self.channels, h, w)  # (N, C, H, W), Z of eq. 1
        if return_details:
            return z, AttentionDetails(weights=weights, map_size=(h, w))  # weights: (N, HW, HW)
        return z


def region_non_local_multiply_adds(shape: tuple[int, int, int, int], options: dict) -> int:
    """Multiply-adds of one :class:`RegionNonLocalAttention` forward pass (CSNLN Sec. 4.2; eq. 1-2 in each cell).

    The embeddings of :func:`non_local_multiply_adds`, ``N L (2 C C_e + C^2)``,
    then eq. 1-2 inside every cell of the grid: a cell of ``l`` pixels costs
    ``N l^2 (C_e + C)``.  The cells of :func:`region_grid` are ``r_i x c_j``
    pixels, so ``sum l^2 = (sum_i r_i^2) (sum_j c_j^2)``.

    Raises:
        ValueError: a grid the map cannot be cut into (as the module's forward).
    """
    n, c, h, w = shape
    c_e = c // options["reduction"]
    rows, cols = _check_regions(options["regions"], h, w)
    # _even_blocks: (start, stop, cells) runs of `cells` equal cells of (stop - start) // cells pixels each.
    row_squares = sum(cells * ((stop - start) // cells) ** 2 for start, stop, cells in _even_blocks(h, rows))
    col_squares = sum(cells * ((stop - start) // cells) ** 2 for start, stop, cells in _even_blocks(w, cols))
    cell_squares = row_squares * col_squares  # sum over the cells of l^2, l = r_i c_j pixels
    embeddings = n * h * w * (2 * c * c_e + c * c)  # theta, delta: C -> C_e; psi: C -> C
    return embeddings + n * cell_squares * (c_e + c)  # eq. 2 scores and eq. 1 sums inside each cell


@register_attention(
    "region_non_local", kind="in_scale", loops="srlib.attention.loops:region_non_local_loops", guarded=True,
    bench={"region": {"regions": [2, 2]}},
    multiply_adds=region_non_local_multiply_adds,
)
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
        channels, reduction, activation, implementation, max_attention_bytes:
            as in :class:`NonLocalAttention`.
        regions: ``(rows, cols)`` of the grid (default ``(2, 2)``).  Any map with
            ``H >= rows`` and ``W >= cols`` works; when the grid does not divide
            the map, cells differ in size by at most one pixel (no padding).

    Layers: ``query_embed``, ``key_embed``, ``value_embed`` exactly as in
    :class:`NonLocalAttention`, so a state dict moves between the two classes.

    Forward ``forward(x, return_details=False)``:
        ``(N, C, H, W)`` -> ``(N, C, H, W)``; with ``return_details=True`` also a
        :class:`RegionAttentionDetails` (the weights inside every cell).

    Raises:
        ValueError: bad constructor arguments or grid; an input that is not
            ``(N, C, H, W)`` of the module's dtype and device; a map smaller than the grid.
        AttentionMemoryError: an explicit per-cell batch would exceed the limit.

    Source: CSNLN (Mei et al., CVPR 2020) Sec. 4.2 "Multi-Branch Exemplars"
    (region-based IS-NL, after SAN); eq. 1-2 inside each region.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 2,
        activation: str = "prelu",
        implementation: str = "explicit",
        max_attention_bytes: float | None = None,
        regions: tuple[int, int] = (2, 2),
    ):
        super().__init__(channels, reduction, activation, implementation, max_attention_bytes)
        self.regions = _check_regions(regions, math.inf, math.inf)

    def forward(self, x: torch.Tensor, return_details: bool = False):
        check_feature_map(self, x, self.channels)
        _check_regions(self.regions, x.shape[2], x.shape[3])  # before any work is spent on the embeddings
        query, key, value = self.embed(x)  # (N, C_e, H, W), (N, C_e, H, W), (N, C, H, W)
        z = region_non_local_attention(
            query, key, value, regions=self.regions, implementation=self.implementation,
            max_attention_bytes=self.max_attention_bytes,
        )  # (N, C, H, W)
        if not return_details:
            return z
        cells = region_grid(x.shape[2], x.shape[3], self.regions)
        weights = []
        for rows, cols in cells:
            _, cell_weights = non_local_attention(
                query[:, :, rows, cols].flatten(2).transpose(1, 2),  # (N, l, C_e)
                key[:, :, rows, cols].flatten(2).transpose(1, 2),  # (N, l, C_e)
                value[:, :, rows, cols].flatten(2).transpose(1, 2),  # (N, l, C)
                return_attention=True, max_attention_bytes=self.max_attention_bytes,
            )
            weights.append(cell_weights)  # (N, l, l)
        return z, RegionAttentionDetails(cells=cells, weights=weights)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, regions={self.regions}"
