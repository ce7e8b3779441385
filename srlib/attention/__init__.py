"""Attention modules for super-resolution networks.

* :mod:`srlib.attention.non_local` - in-scale non-local attention (CSNLN eq. 1-2):
  the functional core :func:`non_local_attention` on ``(N, L, C)`` sequences
  (``"explicit"`` and ``"fused"`` code paths), the module :class:`NonLocalAttention`
  on ``(N, C, H, W)`` maps, the region-based variant :class:`RegionNonLocalAttention`,
  and a memory guard that raises :class:`AttentionMemoryError` before an explicit
  attention matrix would exhaust memory.
* :mod:`srlib.attention.cross_scale` - cross-scale attention (CSNLN eq. 3-4 and
  supplement eq. 2-3): the naive version (keys and values from the downscaled
  map), the pixel-to-patch version and the p x p patch-matching version, as
  functions on embedded maps and as the module :class:`CrossScaleAttention`.
"""

from srlib.attention.cross_scale import (
    NORMALIZATIONS,
    PAD_MODES,
    CrossScaleAttention,
    bilinear_downscale,
    cross_scale_attention,
    cross_scale_attention_bytes,
    naive_cross_scale_attention,
    overlap_count,
    pad_to_multiple,
    pixel_cross_scale_attention,
)
from srlib.attention.lsh import (
    DEFAULT_CHUNK_SIZE,
    MAX_BUCKETS,
    bucket_count,
    combine_rounds,
    cpu_generator,
    gather_neighbour_chunks,
    merge_chunks,
    neighbour_chunk_offsets,
    offset_rounds,
    random_rotations,
    softmax_with_logsumexp,
    sort_by_code,
    sort_positions,
    spherical_hash,
    spherical_lsh,
    split_into_chunks,
    unsort_positions,
)
from srlib.attention.non_local import (
    IMPLEMENTATIONS,
    MEMORY_FRACTION,
    AttentionMemoryError,
    NonLocalAttention,
    RegionNonLocalAttention,
    attention_matrix_bytes,
    available_memory_bytes,
    check_attention_memory,
    non_local_attention,
    region_grid,
    region_non_local_attention,
)
from srlib.attention.sparse import (
    NonLocalSparseAttention,
    SparseAttentionDetails,
    non_local_sparse_attention,
)

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
    "NORMALIZATIONS",
    "PAD_MODES",
    "CrossScaleAttention",
    "bilinear_downscale",
    "cross_scale_attention",
    "cross_scale_attention_bytes",
    "naive_cross_scale_attention",
    "overlap_count",
    "pad_to_multiple",
    "pixel_cross_scale_attention",
    "DEFAULT_CHUNK_SIZE",
    "MAX_BUCKETS",
    "bucket_count",
    "combine_rounds",
    "cpu_generator",
    "gather_neighbour_chunks",
    "merge_chunks",
    "neighbour_chunk_offsets",
    "offset_rounds",
    "random_rotations",
    "softmax_with_logsumexp",
    "sort_by_code",
    "sort_positions",
    "spherical_hash",
    "spherical_lsh",
    "split_into_chunks",
    "unsort_positions",
    "NonLocalSparseAttention",
    "SparseAttentionDetails",
    "non_local_sparse_attention",
]
