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
* :mod:`srlib.attention.learnable` - global learnable attention (DLSN: super-bit LSH, learned scores);
* :mod:`srlib.attention.loops` - float64 loop versions, literally from the equations;
* :mod:`srlib.attention._common` - the memory guard, input checks, validators, embeddings;
* :mod:`srlib.attention.contract` - :func:`check_attention`, the contract as a function.

Every public module of this package is imported when the package is (see the
end of this file), so a new mechanism in a new file here registers itself
without an edit to this file.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from srlib.attention._common import (
    MEMORY_FRACTION,
    AttentionMemoryError,
    available_memory_bytes,
    check_feature_map,
)
from srlib.attention.contract import check_attention
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
from srlib.attention.learnable import GlobalLearnableAttention
from srlib.attention.lsh import (
    DEFAULT_CHUNK_SIZE,
    HASHINGS,
    MAX_BUCKETS,
    SUPERBIT_MODES,
    bucket_count,
    combine_rounds,
    cpu_generator,
    draw_projections,
    gather_neighbour_chunks,
    lsh_codes,
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
    superbit_hash,
    superbit_lsh,
    superbit_projections,
    unsort_positions,
)
from srlib.attention.non_local import (
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
from srlib.attention.sparse import (
    DenseMatchAttention,
    NonLocalSparseAttention,
    SparseAttentionDetails,
    non_local_sparse_attention,
    readable_sparse_attention,
)

__all__ = [
    "ATTENTION_KINDS",
    "DEFAULT_CHUNK_SIZE",
    "HASHINGS",
    "IMPLEMENTATIONS",
    "MAX_BUCKETS",
    "MEMORY_FRACTION",
    "NORMALIZATIONS",
    "PAD_MODES",
    "SUPERBIT_MODES",
    "AttentionDetails",
    "AttentionEntry",
    "AttentionMemoryError",
    "CrossScaleAttention",
    "CrossScaleDetails",
    "DenseMatchAttention",
    "GlobalLearnableAttention",
    "NaiveCrossScaleAttention",
    "NonLocalAttention",
    "NonLocalSparseAttention",
    "PixelCrossScaleAttention",
    "RegionAttentionDetails",
    "RegionNonLocalAttention",
    "SparseAttentionDetails",
    "attention_entry",
    "attention_matrix_bytes",
    "attention_options",
    "available_attention",
    "available_memory_bytes",
    "benchmark_cases",
    "bilinear_downscale",
    "bucket_count",
    "build_attention",
    "check_attention",
    "check_attention_memory",
    "check_feature_map",
    "combine_rounds",
    "cpu_generator",
    "cross_scale_attention",
    "cross_scale_attention_bytes",
    "draw_projections",
    "gather_neighbour_chunks",
    "lsh_codes",
    "merge_chunks",
    "naive_cross_scale_attention",
    "neighbour_chunk_offsets",
    "non_local_attention",
    "non_local_sparse_attention",
    "offset_rounds",
    "overlap_count",
    "pad_to_multiple",
    "pixel_cross_scale_attention",
    "random_rotations",
    "readable_sparse_attention",
    "region_grid",
    "region_non_local_attention",
    "register_attention",
    "softmax_with_logsumexp",
    "sort_by_code",
    "sort_positions",
    "spherical_hash",
    "spherical_lsh",
    "split_into_chunks",
    "superbit_hash",
    "superbit_lsh",
    "superbit_projections",
    "unsort_positions",
]

# Register every mechanism of the package: import each public module (a new file needs no edit here).
for _module in _pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module.name}")
