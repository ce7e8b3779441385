"""Attention modules for super-resolution networks, each a registered plug-in.

The registry (:mod:`srlib.attention.registry`) names every mechanism; build one
with :func:`build_attention`, list them with :func:`available_attention` (each
with its kind, loop version and benchmark cases: :func:`attention_entry`), check
a new one with :func:`check_attention`.  Each mechanism registers itself in its
own file, so this docstring keeps no table of them.

Modules:

* :mod:`srlib.attention.non_local` - dense in-scale attention (functional core on
  ``(N, L, C)`` sequences with ``"explicit"`` and ``"fused"`` paths, region grid);
* :mod:`srlib.attention.cross_scale` - cross-scale attention (naive, pixel, patch);
* :mod:`srlib.attention.lsh` - hashing, sorting, chunking and round combination;
* :mod:`srlib.attention.sparse` - non-local sparse attention (NLSN) and its dense twin;
* :mod:`srlib.attention.loops` - float64 loop versions, literally from the equations;
* :mod:`srlib.attention._common` - the memory guard, input checks, validators, embeddings;
* :mod:`srlib.attention.contract` - :func:`check_attention`, the contract as a function.
"""

from srlib.attention._common import (
    MEMORY_FRACTION,
    AttentionMemoryError,
    available_memory_bytes,
    check_feature_map,
)
from srlib.attention.registry import (
    ATTENTION_KINDS,
    AttentionEntry,
    attention_entry,
    attention_options,
    available_attention,
    benchmark_cases,
    build_attention,
    register_attention,
)
from srlib.attention.non_local import (  # noqa: I001 - importing the modules registers them
    IMPLEMENTATIONS,
    AttentionDetails,
    NonLocalAttention,
    RegionAttentionDetails,
    RegionNonLocalAttention,
    attention_matrix_bytes,
    check_attention_memory,
    non_local_attention,
    region_grid,
    region_non_local_attention,
)
from srlib.attention.cross_scale import (
    NORMALIZATIONS,
    PAD_MODES,
    CrossScaleAttention,
    CrossScaleDetails,
    NaiveCrossScaleAttention,
    PixelCrossScaleAttention,
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
from srlib.attention.sparse import (
    DenseMatchAttention,
    NonLocalSparseAttention,
    SparseAttentionDetails,
    non_local_sparse_attention,
    readable_sparse_attention,
)
from srlib.attention.contract import check_attention

__all__ = [
    "ATTENTION_KINDS",
    "AttentionEntry",
    "attention_entry",
    "attention_options",
    "available_attention",
    "benchmark_cases",
    "build_attention",
    "check_attention",
    "register_attention",
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
    "check_feature_map",
    "non_local_attention",
    "region_grid",
    "region_non_local_attention",
    "NORMALIZATIONS",
    "PAD_MODES",
    "CrossScaleAttention",
    "CrossScaleDetails",
    "NaiveCrossScaleAttention",
    "PixelCrossScaleAttention",
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
    "DenseMatchAttention",
    "NonLocalSparseAttention",
    "SparseAttentionDetails",
    "non_local_sparse_attention",
    "readable_sparse_attention",
]
