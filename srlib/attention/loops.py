"""Loop versions: every attention equation of srlib evaluated literally, in float64, with Python loops.

These functions are written from the papers' formulas, one position (and one
key) at a time, independently of the reshapes, ``bmm``, ``unfold`` / ``fold``,
gathers and blocked softmaxes of the library.  They are slow - ``O((H W)^2)``
Python operations and more - and only meant for maps of a few dozen to a few
hundred pixels, but each line reads like the equation it implements.  Tests,
notebooks and graded exercises check the fast implementations against this
one file, and the registry names the module-level versions
(:func:`srlib.attention.registry.register_attention`'s ``loops=``), so the
contract tests compare every registered module with its equation.

The only vectorised operations allowed here are a dot product or a sum over
channels (``torch.dot``, ``(a * b).sum()``, adding a ``(C,)`` vector into an
output pixel); everything else - positions, keys, patches, kernel taps,
chunks, rounds - is a Python loop.  Inputs are converted to float64 and
outputs are float64 tensors.  Softmaxes are computed as
``exp(l_k - m) / sum_k' exp(l_k' - m)`` with ``m = max_k l_k``: the same
fraction as ``exp(l_k) / sum_k' exp(l_k')``, shifted so that no ``exp``
overflows (:func:`softmax_loops`).

Functional loop versions (already-embedded maps):

* :func:`embedding_loops` - one embedding layer (1x1 or 3x3 conv, optional PReLU);
* :func:`dense_attention_loops` - CSNLN eq. 1-2 (in-scale non-local attention);
* :func:`region_cells_loops`, :func:`region_attention_loops` - eq. 1-2 inside
  each cell of a region grid (CSNLN Sec. 4.2);
* :func:`pad_to_multiple_loops`, :func:`bilinear_downscale_loops`,
  :func:`window_loops`, :func:`cross_scale_similarity_loops`,
  :func:`naive_cross_scale_eq2_loops` (CSNLN supplement eq. 2),
  :func:`pixel_cross_scale_eq3_loops` (CSNLN eq. 3 = supplement eq. 3),
  :func:`cross_scale_eq4_loops` (CSNLN eq. 4);
* :func:`unit_keys_loops`, :func:`spherical_codes_loops` (spherical LSH),
  :func:`sparse_attention_loops` (NLSN's non-local sparse attention);
* :func:`gram_schmidt_loops`, :func:`superbit_projections_loops`,
  :func:`superbit_codes_loops` (super-bit LSH, DLSN Algorithm 1 lines 5-8),
  :func:`learned_scorer_loops` (eq. 11), :func:`learnable_attention_loops`
  (DLSN's global learnable attention, eq. 9-18);
* :func:`input_attention_loops`, :func:`multi_reference_match_loops` (AMRSR's
  INPUTATT and REFATT, Algorithm 1), :func:`transfer_patches_loops` (SRNTT's
  texture swap with overlap averaging).

Module-level loop versions, ``fn(module, x) -> out`` with the module's own
weights (the ``loops=`` of the registry; equal to ``module(x)`` in eval mode):
:func:`non_local_loops`, :func:`region_non_local_loops`,
:func:`naive_cross_scale_loops`, :func:`pixel_cross_scale_loops`,
:func:`cross_scale_loops`, :func:`nlsa_loops`, :func:`nlsa_dense_loops`, :func:`gla_loops`,
:func:`multi_reference_loops` (``fn(module, x, references)``).

Sources: Y. Mei, Y. Fan, Y. Zhou, L. Huang, T. S. Huang, H. Shi, "Image
Super-Resolution with Cross-Scale Non-Local Attention and Exhaustive
Self-Exemplars Mining", CVPR 2020 (CSNLN; eq. 1-4 and supplement eq. 2-3);
Y. Mei, Y. Fan, Y. Zhou, "Image Super-Resolution with Non-Local Sparse
Attention", CVPR 2021 (NLSN); A. Andoni et al., "Practical and Optimal LSH for
Angular Distance", NeurIPS 2015 (spherical LSH).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from srlib.attention.lsh import (
    bucket_count,
    cpu_generator,
    neighbour_chunk_offsets,
    random_rotations,
)

__all__ = [
    "CROSS_SCALE_KEY_NORM_EPS",
    "SPARSE_KEY_NORM_EPS",
    "bilinear_downscale_loops",
    "cross_scale_eq4_loops",
    "cross_scale_loops",
    "cross_scale_similarity_loops",
    "dense_attention_loops",
    "embedding_loops",
    "gla_loops",
    "gram_schmidt_loops",
    "input_attention_loops",
    "learnable_attention_loops",
    "learned_scorer_loops",
    "multi_reference_loops",
    "multi_reference_match_loops",
    "naive_cross_scale_eq2_loops",
    "naive_cross_scale_loops",
    "nlsa_dense_loops",
    "nlsa_loops",
    "non_local_loops",
    "pad_to_multiple_loops",
    "pixel_cross_scale_eq3_loops",
    "pixel_cross_scale_loops",
    "region_attention_loops",
    "region_cells_loops",
    "region_non_local_loops",
    "softmax_loops",
    "sparse_attention_loops",
    "spherical_codes_loops",
    "superbit_codes_loops",
    "superbit_projections_loops",
    "transfer_patches_loops",
    "unit_keys_loops",
    "window_loops",
]

DTYPE = torch.float64
# Lower bound of a key (patch) norm in CSNLN's similarity (the official code's ``escape_NaN``).
CROSS_SCALE_KEY_NORM_EPS = 1e-4
# Lower bound of a key norm in NLSN (``eps`` of the official ``F.normalize``).
SPARSE_KEY_NORM_EPS = 5e-5


def _float64(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, as float64 on the CPU."""
    return t.detach().to(device="cpu", dtype=DTYPE)


def softmax_loops(logits: list[float]) -> list[float]:
    """``exp(l_k) / sum_k' exp(l_k')`` for a list of logits, literally (shifted by the largest one).

    Args:
        logits: Python floats ``l_1 .. l_K`` (``K >= 1``).

    Returns:
        The ``K`` weights, non-negative, summing to 1.  Subtracting
        ``m = max_k l_k`` from every logit leaves the fraction unchanged and
        keeps ``exp`` from overflowing.
    """
    top = max(logits)
    exps = [math.exp(value - top) for value in logits]
    denominator = sum(exps)
    return [e / denominator for e in exps]


def _logsumexp_loops(logits: list[float]) -> float:
    """``log sum_k exp(l_k)``, literally (shifted by the largest logit)."""
    top = max(logits)
    return top + math.log(sum(math.exp(value - top) for value in logits))


# ----------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------


def embedding_loops(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One embedding layer by hand: a 'same' zero-padded ``k x k`` convolution, then an optional PReLU or ReLU.

    ``y[n, o, i, j] = b_o + sum_{a, b} W[o, :, a, b] . x[n, :, i + a - r, j + b - r]``
    (``r = (k - 1) / 2``, terms outside the map are zero; the dot product runs
    over the input channels), then ``y if y >= 0 else alpha_o * y`` when the
    layer ends with a PReLU (``max(y, 0)`` with a ReLU).  ``k = 1`` gives the 1x1 embeddings of CSNLN
    (theta, delta, psi) and NLSN's value embedding; ``k = 3`` NLSN's
    query/key embedding.

    Args:
        layer: a ``Sequential(conv[, PReLU | ReLU])`` built by
            :func:`srlib.attention._common.embedding`, or a bare ``nn.Conv2d``
            (odd kernel, stride 1, no dilation, one group, 'same' zero padding, with or without bias).
        x: ``(N, C_in, H, W)`` float map.

    Returns:
        ``(N, C_out, H, W)`` float64.

    Raises:
        ValueError: a layer of another form.
    """
    layers = list(layer) if isinstance(layer, nn.Sequential) else [layer]
    conv = layers[0]
    relu = len(layers) > 1 and isinstance(layers[1], nn.ReLU)
    prelu = layers[1] if len(layers) > 1 and not relu else None
    if (
        not isinstance(conv, nn.Conv2d) or len(layers) > 2 or (prelu is not None and not isinstance(prelu, nn.PReLU))
        or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1
        or conv.kernel_size[0] != conv.kernel_size[1] or conv.kernel_size[0] % 2 == 0
        or conv.padding != (conv.kernel_size[0] // 2,) * 2 or conv.padding_mode != "zeros"
    ):
        raise ValueError(f"embedding_loops expects Sequential(odd 'same' Conv2d[, PReLU | ReLU]), got {layer!r}")
    weight = _float64(conv.weight)  # (C_out, C_in, k, k)
    bias = _float64(conv.bias) if conv.bias is not None else torch.zeros(weight.shape[0], dtype=DTYPE)  # (C_out,)
    x = _float64(x)  # (N, C_in, H, W)
    n_images, _, height, width = x.shape
    c_out, _, size, _ = weight.shape
    radius = (size - 1) // 2
    slopes = _float64(prelu.weight) if prelu is not None else None  # (1,) or (C_out,)
    y = torch.zeros(n_images, c_out, height, width, dtype=DTYPE)  # (N, C_out, H, W)
    for n in range(n_images):
        for o in range(c_out):
            for i in range(height):
                for j in range(width):
                    total = float(bias[o])
                    for a in range(size):
                        for b in range(size):
                            row, col = i + a - radius, j + b - radius
                            if 0 <= row < height and 0 <= col < width:
                                total += float(torch.dot(weight[o, :, a, b], x[n, :, row, col]))
                    if slopes is not None and total < 0:
                        total *= float(slopes[o if slopes.numel() > 1 else 0])
                    if relu:
                        total = max(total, 0.0)
                    y[n, o, i, j] = total
    return y


# ----------------------------------------------------------------------------------------------
# In-scale non-local attention (CSNLN eq. 1-2) and its region grid
# ----------------------------------------------------------------------------------------------


def dense_attention_loops(
    query_map: torch.Tensor, key_map: torch.Tensor, value_map: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSNLN eq. 1-2 literally: loops over the query pixels ``(i, j)`` and the key pixels ``(g, h)``.

    ::

        Z_{i,j} = sum_{g,h} exp(phi(X_ij, X_gh)) / sum_{u,v} exp(phi(X_ij, X_uv)) * psi(X_gh)   (1)
        phi(X_ij, X_gh) = theta(X_ij)^T delta(X_gh)                                               (2)

    No ``1/sqrt(C_e)`` scaling.  The keys may come from a map of another size
    than the queries (``H_k x W_k``), e.g. NLSN's normalised keys.

    Args:
        query_map: ``theta(X)``, ``(N, C_e, H, W)``.
        key_map: ``delta(X)``, ``(N, C_e, H_k, W_k)``.
        value_map: ``psi(X)``, ``(N, C_v, H_k, W_k)``.

    Returns:
        ``(Z, weights)``: ``Z`` ``(N, C_v, H, W)`` float64 and the weights
        ``(N, H, W, H_k, W_k)``, ``weights[n, i, j, g, h]`` the fraction of
        eq. 1 (row ``i*W + j``, column ``g*W_k + h`` of the ``(N, HW, H_k W_k)``
        matrix of :func:`srlib.attention.non_local_attention`).

    Source: CSNLN (Mei et al., CVPR 2020) eq. 1-2 (= supplement eq. 1).
    """
    query_map, key_map, value_map = _float64(query_map), _float64(key_map), _float64(value_map)
    n_images, _, height, width = query_map.shape
    key_h, key_w = key_map.shape[-2:]
    z = torch.zeros(n_images, value_map.shape[1], height, width, dtype=DTYPE)  # (N, C_v, H, W)
    weights = torch.zeros(n_images, height, width, key_h, key_w, dtype=DTYPE)  # (N, H, W, H_k, W_k)
    keys = [(g, h) for g in range(key_h) for h in range(key_w)]
    for n in range(n_images):
        for i in range(height):
            for j in range(width):
                phi = [float(torch.dot(query_map[n, :, i, j], key_map[n, :, g, h])) for g, h in keys]  # eq. 2
                for (g, h), weight in zip(keys, softmax_loops(phi)):  # the fraction of eq. 1
                    weights[n, i, j, g, h] = weight
                    z[n, :, i, j] += weight * value_map[n, :, g, h]  # (C_v,)
    return z, weights


def region_cells_loops(length: int, parts: int) -> list[tuple[int, int]]:
    """The documented cut of ``length`` pixels into ``parts`` cells: the first ``length % parts`` are one longer.

    Returns ``parts`` ``(start, stop)`` pairs covering ``0 .. length - 1``
    (the rule of :func:`torch.tensor_split` and :func:`srlib.attention.region_grid`).
    """
    sizes = [length // parts + (1 if k < length % parts else 0) for k in range(parts)]
    starts = [sum(sizes[:k]) for k in range(parts)]
    return [(start, start + size) for start, size in zip(starts, sizes)]


def region_attention_loops(
    query_map: torch.Tensor, key_map: torch.Tensor, value_map: torch.Tensor, regions: tuple[int, int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Region-based IS-NL: eq. 1-2 applied to each cell of a ``rows x cols`` grid separately.

    Every query pixel attends to the pixels of its own cell only; the cells
    are those of :func:`region_cells_loops` in both directions, row by row.

    Args:
        query_map, key_map: ``(N, C_e, H, W)``.
        value_map: ``(N, C_v, H, W)``.
        regions: ``(rows, cols)`` with ``H >= rows`` and ``W >= cols``.

    Returns:
        ``(Z, cell_weights)``: ``Z`` ``(N, C_v, H, W)`` float64 and, per cell
        (row by row), the ``(N, h_c, w_c, h_c, w_c)`` weights of
        :func:`dense_attention_loops` inside it.

    Source: CSNLN (Mei et al., CVPR 2020) Sec. 4.2 "Multi-Branch Exemplars"
    (region-based IS-NL, after SAN), eq. 1-2 inside each region.
    """
    query_map, key_map, value_map = _float64(query_map), _float64(key_map), _float64(value_map)
    n_images, _, height, width = query_map.shape
    z = torch.zeros(n_images, value_map.shape[1], height, width, dtype=DTYPE)  # (N, C_v, H, W)
    cell_weights = []
    for r0, r1 in region_cells_loops(height, regions[0]):
        for c0, c1 in region_cells_loops(width, regions[1]):
            cell = (slice(None), slice(None), slice(r0, r1), slice(c0, c1))
            z[cell], weights = dense_attention_loops(query_map[cell], key_map[cell], value_map[cell])
            cell_weights.append(weights)  # (N, r1 - r0, c1 - c0, r1 - r0, c1 - c0)
    return z, cell_weights


# ----------------------------------------------------------------------------------------------
# Cross-scale attention (CSNLN eq. 3-4, supplement eq. 2-3)
# ----------------------------------------------------------------------------------------------


def pad_to_multiple_loops(t: torch.Tensor, scale: int, mode: str = "replicate") -> torch.Tensor:
    """Pad ``(N, C, H, W)`` at the bottom and right to multiples of ``scale``, pixel by pixel.

    Output row ``y`` is input row ``min(y, H - 1)`` (``"replicate"``: repeat
    the last row) or ``y if y < H else 2 (H - 1) - y`` (``"reflect"``: mirror
    without repeating the edge); the same for columns.

    Returns:
        ``(N, C, s ceil(H/s), s ceil(W/s))`` float64.

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in ("replicate", "reflect"):
        raise ValueError(f"mode must be 'replicate' or 'reflect', got {mode!r}")
    t = _float64(t)
    height, width = t.shape[-2:]
    padded_h, padded_w = math.ceil(height / scale) * scale, math.ceil(width / scale) * scale

    def source(index: int, length: int) -> int:
        if index < length:
            return index
        return length - 1 if mode == "replicate" else 2 * (length - 1) - index

    out = torch.zeros(*t.shape[:2], padded_h, padded_w, dtype=DTYPE)  # (N, C, Hp, Wp)
    for y in range(padded_h):
        for x in range(padded_w):
            out[:, :, y, x] = t[:, :, source(y, height), source(x, width)]  # (N, C)
    return out


def bilinear_downscale_loops(x: torch.Tensor, scale: int, pad_mode: str = "replicate") -> torch.Tensor:
    """``Y = X down-s``, CSNLN's bilinear downscale (``align_corners=False``, no antialiasing), by hand.

    The map is padded to a multiple of ``s`` (:func:`pad_to_multiple_loops`);
    output pixel ``(g, h)`` samples the padded map at
    ``((g + 1/2) s - 1/2, (h + 1/2) s - 1/2)`` by bilinear interpolation
    between its four neighbours (at ``s = 2`` the mean of the ``2 x 2`` block,
    at ``s = 3`` the centre pixel of the ``3 x 3`` block).

    Args:
        x: ``(N, C, H, W)`` float map.
        scale: ``s >= 1``.
        pad_mode: ``"replicate"`` or ``"reflect"``.

    Returns:
        ``(N, C, ceil(H/s), ceil(W/s))`` float64.

    Source: CSNLN (Mei et al., CVPR 2020) Sec. 3 ("bilinear interpolation") and
    the official code (``F.interpolate(..., mode="bilinear")``).
    """
    padded = pad_to_multiple_loops(x, scale, pad_mode)  # (N, C, Hp, Wp)
    padded_h, padded_w = padded.shape[-2:]
    small_h, small_w = padded_h // scale, padded_w // scale
    out = torch.zeros(*padded.shape[:2], small_h, small_w, dtype=DTYPE)  # (N, C, Hp/s, Wp/s)

    def taps(index: int, length: int) -> tuple[int, int, float]:
        """The two source pixels of output ``index`` along one axis, and the weight of the second."""
        position = (index + 0.5) * scale - 0.5
        first = math.floor(position)
        return first, min(first + 1, length - 1), position - first

    for g in range(small_h):
        y0, y1, wy = taps(g, padded_h)
        for h in range(small_w):
            x0, x1, wx = taps(h, padded_w)
            out[:, :, g, h] = (
                (1 - wy) * (1 - wx) * padded[:, :, y0, x0] + (1 - wy) * wx * padded[:, :, y0, x1]
                + wy * (1 - wx) * padded[:, :, y1, x0] + wy * wx * padded[:, :, y1, x1]
            )  # (N, C)
    return out


def window_loops(t: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    """The ``size x size`` window of ``t`` ``(C, H, W)`` whose top-left pixel is ``(top, left)``; zero outside.

    Returns ``(C, size, size)`` (a patch "centred on ``(i, j)``" with an odd
    ``p`` is ``window_loops(t, i - (p-1)/2, j - (p-1)/2, p)``).
    """
    c, height, width = t.shape
    out = torch.zeros(c, size, size, dtype=DTYPE)  # (C, size, size)
    for a in range(size):
        for b in range(size):
            y, x = top + a, left + b
            if 0 <= y < height and 0 <= x < width:
                out[:, a, b] = t[:, y, x]  # (C,)
    return out


def cross_scale_similarity_loops(query_patch: torch.Tensor, key_patch: torch.Tensor, softmax_scale: float) -> float:
    """CSNLN's similarity ``phi(q, k) = softmax_scale * <q, k> / max(||k||, 1e-4)``.

    ``query_patch`` and ``key_patch`` are ``(C', p, p)`` (``p = 1`` for a
    pixel); the sums run over all ``C' p^2`` entries.  Keys are normalised,
    queries are not (official code).
    """
    key_norm = math.sqrt(float((key_patch * key_patch).sum()))
    return softmax_scale * float((query_patch * key_patch).sum()) / max(key_norm, CROSS_SCALE_KEY_NORM_EPS)


def _pixel_weights_loops(
    query_pixel: torch.Tensor, key_map: torch.Tensor, softmax_scale: float
) -> list[tuple[int, int, float]]:
    """``softmax_{g,h}(phi(X_ij, Y_gh))``: the weights one query pixel gives every pixel of the key map.

    ``query_pixel`` is ``X_ij`` ``(C',)``, ``key_map`` is ``Y`` ``(C', h, w)``;
    returns ``[(g, h, a_gh), ...]`` over the keys in row-major order.  The
    weights of supplement eq. 2 and of eq. 3 (``phi`` of
    :func:`cross_scale_similarity_loops`).
    """
    h, w = key_map.shape[-2:]
    keys = [(g, k) for g in range(h) for k in range(w)]
    logits = [cross_scale_similarity_loops(query_pixel, key_map[:, g, k], softmax_scale)
              for g, k in keys]  # phi(X_ij, Y_gk)
    return [(g, k, a) for (g, k), a in zip(keys, softmax_loops(logits))]


def naive_cross_scale_eq2_loops(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, softmax_scale: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSNLN supplement eq. 2, naive cross-scale attention: keys *and values* from the downscaled map.

    ``Z_ij = sum_{g,h} softmax_{g,h}(phi(X_ij, Y_gh)) psi(Y_gh)``, ``phi`` of
    :func:`cross_scale_similarity_loops`.

    Args:
        query: ``theta(X)``, ``(N, C', H, W)``.
        key: ``delta(Y)``, ``(N, C', h, w)``.
        value: ``psi(Y)``, ``(N, C, h, w)``.
        softmax_scale: the temperature (10 in CSNLN).

    Returns:
        ``(Z, weights)``: ``Z`` ``(N, C, H, W)`` float64 and the weights
        ``(N, h*w, H, W)`` (key index ``g*w + h`` first; they sum to 1 over dim 1).

    Source: CSNLN (Mei et al., CVPR 2020), supplementary file, eq. 2.
    """
    query, key, value = _float64(query), _float64(key), _float64(value)
    n_images, _, height, width = query.shape
    h, w = key.shape[-2:]
    out = torch.zeros(n_images, value.shape[1], height, width, dtype=DTYPE)  # (N, C, H, W)
    attention = torch.zeros(n_images, h * w, height, width, dtype=DTYPE)  # (N, h*w, H, W)
    for n in range(n_images):
        for i in range(height):
            for j in range(width):
                for g, k, a in _pixel_weights_loops(query[n, :, i, j], key[n], softmax_scale):
                    out[n, :, i, j] += a * value[n, :, g, k]  # (C,), psi(Y_gk)
                    attention[n, g * w + k, i, j] = a
    return out, attention


def _check_multiple(query: torch.Tensor, scale: int) -> None:
    height, width = query.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(
            f"the loop versions of eq. 3-4 take a map whose size is a multiple of the scale {scale}, got "
            f"{height}x{width}; pad it first with pad_to_multiple_loops (as the modules do) and crop the output"
        )


def pixel_cross_scale_eq3_loops(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: int, softmax_scale: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSNLN eq. 3 (= supplement eq. 3), pixel-to-patch: one LR similarity weights one ``s x s`` HR block.

    ``Z^{sxs}_{si,sj} = sum_{g,h} softmax_{g,h}(phi(X_ij, Y_gh)) psi(X^{sxs}_{sg,sh})``:
    the ``s x s`` output block of query ``(i, j)`` is the weighted sum of the
    ``s x s`` blocks of ``psi(X)`` whose top-left pixels are ``(sg, sh)``.

    Args:
        query: ``theta(X)``, ``(N, C', H, W)``, ``H`` and ``W`` multiples of ``s``
            (pad with :func:`pad_to_multiple_loops` first).
        key: ``delta(Y)``, ``(N, C', H/s, W/s)``.
        value: ``psi(X)``, ``(N, C, H, W)``.
        scale: ``s``.
        softmax_scale: the temperature (10 in CSNLN).

    Returns:
        ``(Z, weights)``: ``Z`` ``(N, C, sH, sW)`` float64 and the weights
        ``(N, (H/s)(W/s), H, W)``.

    Raises:
        ValueError: ``H`` or ``W`` not a multiple of ``s``.

    Source: CSNLN (Mei et al., CVPR 2020) eq. 3; supplementary file eq. 3.
    """
    _check_multiple(query, scale)
    query, key, value = _float64(query), _float64(key), _float64(value)
    s = scale
    n_images, _, height, width = query.shape
    h, w = key.shape[-2:]
    out = torch.zeros(n_images, value.shape[1], s * height, s * width, dtype=DTYPE)  # (N, C, sH, sW)
    attention = torch.zeros(n_images, h * w, height, width, dtype=DTYPE)  # (N, h*w, H, W)
    for n in range(n_images):
        for i in range(height):
            for j in range(width):
                for g, k, a in _pixel_weights_loops(query[n, :, i, j], key[n], softmax_scale):
                    block = value[n, :, s * g : s * g + s, s * k : s * k + s]  # (C, s, s), X^{sxs}_{sg,sk}
                    out[n, :, s * i : s * i + s, s * j : s * j + s] += a * block  # Z^{sxs}_{si,sj}
                    attention[n, g * w + k, i, j] = a
    return out, attention


def cross_scale_eq4_loops(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: int,
    patch_size: int,
    softmax_scale: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSNLN eq. 4, patch-based cross-scale attention; returns the overlapped SUM, the count and the weights.

    ``Z^{sp x sp}_{si,sj} = sum_{g,h} softmax_{g,h}(phi(X^{pxp}_{ij}, Y^{pxp}_{gh})) psi(X^{sp x sp}_{sg,sh})``
    with centred, zero-padded patches: the ``p x p`` query and key patches are
    centred on their pixel; the ``(sp) x (sp)`` value patch "at ``(sg, sh)``"
    is centred on the ``s x s`` block whose top-left pixel is ``(sg, sh)``,
    i.e. it starts at ``(sg - s(p-1)/2, sh - s(p-1)/2)``.  Every output patch
    is added where it lands; ``count`` says how many landed on each pixel
    (divide by it for the ``"overlap"`` normalisation, by 6 for the official
    ``"constant6"``).  ``p = 1`` is eq. 3.

    Args:
        query: ``theta(X)``, ``(N, C', H, W)``, ``H`` and ``W`` multiples of ``s``
            (pad with :func:`pad_to_multiple_loops` first).
        key: ``delta(Y)``, ``(N, C', H/s, W/s)``.
        value: ``psi(X)``, ``(N, C, H, W)``.
        scale: ``s``.
        patch_size: ``p``, odd.
        softmax_scale: the temperature (10 in CSNLN).

    Returns:
        ``(summed, count, weights)``: ``(N, C, sH, sW)`` float64 sums of the
        pasted patches, the ``(sH, sW)`` number of patches on each pixel, and
        the ``(N, (H/s)(W/s), H, W)`` weights.

    Raises:
        ValueError: ``H`` or ``W`` not a multiple of ``s``.

    Source: CSNLN (Mei et al., CVPR 2020) eq. 4 and Sec. 4.1; patch placement
    as in the official code (``conv_transpose2d`` with stride ``s``, padding ``s(p-1)/2``).
    """
    _check_multiple(query, scale)
    query, key, value = _float64(query), _float64(key), _float64(value)
    s, p = scale, patch_size
    n_images, _, height, width = query.shape
    h, w = key.shape[-2:]
    r = (p - 1) // 2
    out = torch.zeros(n_images, value.shape[1], s * height, s * width, dtype=DTYPE)  # (N, C, sH, sW)
    count = torch.zeros(s * height, s * width, dtype=DTYPE)  # (sH, sW)
    attention = torch.zeros(n_images, h * w, height, width, dtype=DTYPE)  # (N, h*w, H, W)
    keys = [(g, k) for g in range(h) for k in range(w)]
    for n in range(n_images):
        key_patches = [window_loops(key[n], g - r, k - r, p) for g, k in keys]  # (C', p, p) each, Y^{pxp}_{gk}
        value_patches = [window_loops(value[n], s * g - s * r, s * k - s * r, s * p)
                         for g, k in keys]  # (C, sp, sp) each, X^{sp x sp}_{sg,sk}
        for i in range(height):
            for j in range(width):
                query_patch = window_loops(query[n], i - r, j - r, p)  # (C', p, p), X^{pxp}_{ij}
                logits = [cross_scale_similarity_loops(query_patch, kp, softmax_scale) for kp in key_patches]
                weights = softmax_loops(logits)
                z = sum(a * vp for a, vp in zip(weights, value_patches))  # (C, sp, sp), Z^{sp x sp}_{si,sj}
                for (g, k), a in zip(keys, weights):
                    attention[n, g * w + k, i, j] = a
                for a in range(s * p):
                    for b in range(s * p):
                        y, x = s * i - s * r + a, s * j - s * r + b
                        if 0 <= y < s * height and 0 <= x < s * width:
                            out[n, :, y, x] += z[:, a, b]  # (C,)
                            if n == 0:
                                count[y, x] += 1
    return out, count, attention


# ----------------------------------------------------------------------------------------------
# Non-local sparse attention (NLSN)
# ----------------------------------------------------------------------------------------------


def unit_keys_loops(key_map: torch.Tensor, eps: float = SPARSE_KEY_NORM_EPS) -> torch.Tensor:
    """NLSN's key normalisation, pixel by pixel: ``k_hat = k / max(||k||, eps)`` over the channels.

    ``(N, C_e, H, W)`` -> ``(N, C_e, H, W)`` float64 (``eps`` 5e-5, the official
    ``F.normalize``; a zero key stays zero).
    """
    key_map = _float64(key_map)
    out = torch.zeros_like(key_map)  # (N, C_e, H, W)
    n_images, _, height, width = key_map.shape
    for n in range(n_images):
        for i in range(height):
            for j in range(width):
                k = key_map[n, :, i, j]  # (C_e,)
                out[n, :, i, j] = k / max(math.sqrt(float(torch.dot(k, k))), eps)
    return out


def spherical_codes_loops(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Spherical LSH codes ``argmax(concat[x A_r, -x A_r])``, literally; the first maximum wins ties.

    Args:
        x: ``(N, L, D)`` vectors.
        rotations: ``(D, R, b/2)`` projections ``A_r`` (:func:`srlib.attention.lsh.random_rotations`).

    Returns:
        ``(N, R, L)`` int64 codes in ``[0, b)``: code ``a < b/2`` means
        ``+a_a`` had the largest projection, ``a + b/2`` means ``-a_a`` had.

    Source: Andoni et al., NeurIPS 2015; as used by NLSN (Mei et al., CVPR 2021).
    """
    x, rotations = _float64(x).tolist(), _float64(rotations).tolist()  # x[n][l][d], rotations[d][r][a]
    n_images, length, dim = len(x), len(x[0]), len(rotations)
    n_rounds, half = len(rotations[0]), len(rotations[0][0])
    codes = torch.zeros(n_images, n_rounds, length, dtype=torch.int64)  # (N, R, L)
    for n in range(n_images):
        for r in range(n_rounds):
            for pos in range(length):
                proj = [sum(x[n][pos][d] * rotations[d][r][a] for d in range(dim)) for a in range(half)]
                both = proj + [-value for value in proj]  # concat[x A_r, -x A_r]
                codes[n, r, pos] = max(range(2 * half), key=lambda c, both=both: (both[c], -c))
    return codes


def sparse_attention_loops(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rotations: torch.Tensor,
    chunk_size: int,
    chunks_before: int = 1,
    chunks_after: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NLSN's non-local sparse attention, step by step with Python loops over positions::

        for each image and round r:
            code(l)  = argmax concat[k_hat(l) A_r, -k_hat(l) A_r]         k_hat = k / max(|k|, 5e-5)
            sorted   = positions sorted by (code, position)                 (a stable sort)
            chunks   = consecutive runs of m sorted positions (the last one shorter)
            for every query l in chunk c:
                keys     = positions of the chunks c + o, o in neighbour_chunk_offsets (cyclic, each once)
                lse_r(l) = log sum_j exp(q(l) . k_hat(j))
                out_r(l) = sum_j exp(q(l) . k_hat(j) - lse_r(l)) v(j)
        out(l) = sum_r softmax_r(lse_r(l)) out_r(l)

    The last chunk simply holds fewer positions: that is the masking of the
    padded keys (zero weight) and the dropping of the padded queries.
    Queries are used raw, keys L2-normalised, no ``1/sqrt(d)``, no self-mask.

    Args:
        query: ``(N, C_e, H, W)``.
        key: ``(N, C_e, H, W)`` (normalised here).
        value: ``(N, C_v, H, W)``.
        rotations: ``(C_e, R, b/2)`` hash projections, one set per round.
        chunk_size: ``m``, positions per chunk.
        chunks_before, chunks_after: neighbour chunks (NLSN: 1 and 1), see
            :func:`srlib.attention.lsh.neighbour_chunk_offsets`.

    Returns:
        ``(out, codes)``: ``(N, C_v, H, W)`` float64 and the ``(N, R, H, W)``
        int64 bucket codes.

    Source: NLSN (Mei et al., CVPR 2021) and its official code; the
    conventions (stable sort, masked padding, distinct neighbour chunks) are
    those documented in :mod:`srlib.attention.sparse` and :mod:`srlib.attention.lsh`.
    """
    key_hat = unit_keys_loops(key)  # (N, C_e, H, W)
    n_images, _, height, width = query.shape
    pixels = [(i, j) for i in range(height) for j in range(width)]  # position l = i*W + j
    codes = spherical_codes_loops(
        torch.stack([torch.stack([key_hat[n, :, i, j] for i, j in pixels]) for n in range(n_images)]), rotations
    )  # (N, R, L), from the unit keys
    # The attention over the codes: learnable_attention_loops without a learned term is NLSA's.
    out = learnable_attention_loops(query, key, value, codes, chunk_size, chunks_before=chunks_before,
                                    chunks_after=chunks_after)  # (N, C_v, H, W)
    return out, codes.reshape(n_images, rotations.shape[1], height, width)


# ----------------------------------------------------------------------------------------------
# Module-level loop versions (the registry's loops=): fn(module, x) -> out
# ----------------------------------------------------------------------------------------------


def non_local_loops(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:class:`~srlib.attention.NonLocalAttention` by loops: ``(N, C, H, W)`` -> ``Z`` ``(N, C, H, W)`` float64.

    ``theta``, ``delta``, ``psi`` = the module's ``query_embed``, ``key_embed``,
    ``value_embed`` (:func:`embedding_loops`), then CSNLN eq. 1-2
    (:func:`dense_attention_loops`); no residual.

    Source: CSNLN (Mei et al., CVPR 2020) eq. 1-2.
    """
    query = embedding_loops(module.query_embed, x)  # (N, C_e, H, W), theta(X)
    key = embedding_loops(module.key_embed, x)  # (N, C_e, H, W), delta(X)
    value = embedding_loops(module.value_embed, x)  # (N, C, H, W), psi(X)
    return dense_attention_loops(query, key, value)[0]  # (N, C, H, W)


def region_non_local_loops(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:class:`~srlib.attention.RegionNonLocalAttention` by loops: eq. 1-2 inside each cell of ``module.regions``.

    ``(N, C, H, W)`` -> ``(N, C, H, W)`` float64; embeddings as :func:`non_local_loops`.

    Source: CSNLN (Mei et al., CVPR 2020) Sec. 4.2, eq. 1-2 per region.
    """
    query = embedding_loops(module.query_embed, x)  # (N, C_e, H, W)
    key = embedding_loops(module.key_embed, x)  # (N, C_e, H, W)
    value = embedding_loops(module.value_embed, x)  # (N, C, H, W)
    return region_attention_loops(query, key, value, module.regions)[0]  # (N, C, H, W)


def naive_cross_scale_loops(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:class:`~srlib.attention.NaiveCrossScaleAttention` by loops: ``(N, C, H, W)`` -> ``(N, C, H, W)`` float64.

    ``Y`` = :func:`bilinear_downscale_loops` of ``x`` (``module.scale``,
    ``module.pad_mode``); queries ``theta(X)``, keys ``delta(Y)``, values
    ``psi(Y)``; then supplement eq. 2 (:func:`naive_cross_scale_eq2_loops`).

    Source: CSNLN (Mei et al., CVPR 2020), supplementary file, eq. 2.
    """
    small = bilinear_downscale_loops(x, module.scale, module.pad_mode)  # (N, C, h, w), Y
    query = embedding_loops(module.query_embed, x)  # (N, C', H, W), theta(X)
    key = embedding_loops(module.key_embed, small)  # (N, C', h, w), delta(Y)
    value = embedding_loops(module.value_embed, small)  # (N, C, h, w), psi(Y)
    return naive_cross_scale_eq2_loops(query, key, value, module.softmax_scale)[0]  # (N, C, H, W)


def _cross_scale_maps(module: nn.Module, x: torch.Tensor):
    """``theta(X)`` and ``psi(X)`` padded to a multiple of ``s``, and ``delta(Y)``; and ``(H, W)``."""
    height, width = x.shape[-2:]
    small = bilinear_downscale_loops(x, module.scale, module.pad_mode)  # (N, C, h, w), Y
    query = embedding_loops(module.query_embed, x)  # (N, C', H, W), theta(X)
    key = embedding_loops(module.key_embed, small)  # (N, C', h, w), delta(Y)
    value = embedding_loops(module.value_embed, x)  # (N, C, H, W), psi(X)
    query = pad_to_multiple_loops(query, module.scale, module.pad_mode)  # (N, C', sh, sw)
    value = pad_to_multiple_loops(value, module.scale, module.pad_mode)  # (N, C, sh, sw)
    return query, key, value, (height, width)


def pixel_cross_scale_loops(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:class:`~srlib.attention.PixelCrossScaleAttention` by loops: ``(N, C, H, W)`` -> ``(N, C, sH, sW)`` float64.

    Queries ``theta(X)`` and values ``psi(X)`` (padded to a multiple of ``s``
    with ``module.pad_mode``), keys ``delta(Y)`` of the bilinear downscale;
    CSNLN eq. 3 (:func:`pixel_cross_scale_eq3_loops`) on the padded map, the
    output cropped to ``(sH, sW)``.

    Source: CSNLN (Mei et al., CVPR 2020) eq. 3 (= supplement eq. 3).
    """
    query, key, value, (height, width) = _cross_scale_maps(module, x)
    s = module.scale
    out, _ = pixel_cross_scale_eq3_loops(query, key, value, s, module.softmax_scale)  # (N, C, s Hp, s Wp)
    return out[..., : s * height, : s * width]  # (N, C, sH, sW)


def cross_scale_loops(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:class:`~srlib.attention.CrossScaleAttention` by loops: ``(N, C, H, W)`` -> ``(N, C, sH, sW)`` float64.

    As :func:`pixel_cross_scale_loops` with CSNLN eq. 4
    (:func:`cross_scale_eq4_loops`, ``module.patch_size``); the overlapped sum
    is divided by the number of patches on each pixel of the padded grid
    (``normalization="overlap"``) or by 6 (``"constant6"``), then cropped.

    Source: CSNLN (Mei et al., CVPR 2020) eq. 4 and Sec. 4.1.
    """
    query, key, value, (height, width) = _cross_scale_maps(module, x)
    s = module.scale
    summed, count, _ = cross_scale_eq4_loops(query, key, value, s, module.patch_size, module.softmax_scale)
    out = summed / count if module.normalization == "overlap" else summed / 6.0  # (N, C, s Hp, s Wp)
    return out[..., : s * height, : s * width]  # (N, C, sH, sW)


def nlsa_loops(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:class:`~srlib.attention.NonLocalSparseAttention` by loops: ``(N, C, H, W)`` -> ``(N, C, H, W)`` float64.

    ``q = query_key_embed(x)`` (3x3 conv, :func:`embedding_loops`) gives the
    queries and, normalised, the keys; ``v = value_embed(x)``; then
    :func:`sparse_attention_loops` with ``module.chunk_size`` and one
    neighbour chunk on each side.

    Fixed rotations: those the module draws in eval mode, i.e.
    ``random_rotations(C_e, module.n_rounds, b, generator=cpu_generator(module.seed))``
    with ``b = bucket_count(H*W, module.chunk_size, n_buckets=module.n_buckets)``
    (float32 numbers from the CPU generator, widened to float64).  So this
    equals ``module.eval()(x)``, and ``module(x, generator=module.seed)``.

    Source: NLSN (Mei et al., CVPR 2021).
    """
    match = embedding_loops(module.query_key_embed, x)  # (N, C_e, H, W), queries and keys
    value = embedding_loops(module.value_embed, x)  # (N, C, H, W)
    if getattr(module, "hashing", "spherical") == "superbit":  # the same attention over super-bit codes
        return learnable_attention_loops(match, match, value, _eval_codes_loops(module, match), module.chunk_size)
    height, width = x.shape[-2:]
    n_buckets = bucket_count(height * width, module.chunk_size, n_buckets=module.n_buckets)
    rotations = random_rotations(
        match.shape[1], module.n_rounds, n_buckets, generator=cpu_generator(module.seed), dtype=DTYPE
    )  # (C_e, R, b/2)
    return sparse_attention_loops(match, match, value, rotations, module.chunk_size)[0]  # (N, C, H, W)


def nlsa_dense_loops(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:class:`~srlib.attention.DenseMatchAttention` by loops: ``(N, C, H, W)`` -> ``(N, C, H, W)`` float64.

    NLSA's embeddings (:func:`nlsa_loops`), keys normalised
    (:func:`unit_keys_loops`), then dense attention over all positions
    (:func:`dense_attention_loops`): ``softmax_l'(q(l) . k_hat(l')) v(l')``.

    Source: NLSN supplementary file, Table 1 ("Non-Local"); embeddings of NLSN (Mei et al., CVPR 2021).
    """
    match = embedding_loops(module.query_key_embed, x)  # (N, C_e, H, W)
    value = embedding_loops(module.value_embed, x)  # (N, C, H, W)
    return dense_attention_loops(match, unit_keys_loops(match), value)[0]  # (N, C, H, W)


# ----------------------------------------------------------------------------------------------
# Super-bit LSH and global learnable attention (DLSN)
# ----------------------------------------------------------------------------------------------


def gram_schmidt_loops(vectors: list[list[float]]) -> list[list[float]]:
    """Classical Gram-Schmidt, literally: ``u_k = h_k - sum_{i<k} (h_k . e_i) e_i``, ``e_k = u_k / |u_k|``.

    Args:
        vectors: ``P`` vectors of ``D`` numbers each (``P <= D``, linearly independent).

    Returns:
        ``P`` orthonormal vectors (lists of floats), in the same order.

    Source: DLSN Algorithm 1 line 6 ("orthogonalize H via Gram-Schmidt process").
    """
    basis: list[list[float]] = []
    for h in vectors:
        u = list(h)
        for e in basis:
            dot = sum(a * b for a, b in zip(h, e))
            u = [a - dot * b for a, b in zip(u, e)]
        norm = math.sqrt(sum(a * a for a in u))
        basis.append([a / norm for a in u])
    return basis


def superbit_projections_loops(draw: torch.Tensor, mode: str = "superbit") -> torch.Tensor:
    """Super-bit directions from a Gaussian draw by Gram-Schmidt loops (DLSN Algorithm 1 lines 5-6).

    Args:
        draw: ``(R, D, b)`` Gaussian numbers; column ``[r, :, k]`` is the ``k``-th
            raw direction of round ``r`` (row ``k`` of the paper's ``H``).
        mode: ``"superbit"`` - Gram-Schmidt of each block of ``D`` consecutive
            directions (all of them when ``b <= D``); ``"orthonormal"`` - all ``b``
            (requires ``b <= D``); ``"official"`` - for ``b > D``, Gram-Schmidt of
            the ``D`` rows of the ``(D, b)`` matrix instead (what
            ``torch.nn.init.orthogonal_`` returns), else as ``"orthonormal"``.

    Returns:
        ``(D, R, b)`` float64 directions, the layout of
        :func:`srlib.attention.lsh.superbit_projections`.

    Source: DLSN Algorithm 1; Ji et al., "Super-Bit LSH", NeurIPS 2012 (blocks).
    """
    draw = _float64(draw)
    n_rounds, dim, n_buckets = draw.shape
    if mode == "orthonormal" and n_buckets > dim:
        raise ValueError(f"mode 'orthonormal' needs b <= D, got b = {n_buckets}, D = {dim}")
    out = torch.zeros(dim, n_rounds, n_buckets, dtype=DTYPE)  # (D, R, b)
    for r in range(n_rounds):
        columns = [[float(draw[r, d, k]) for d in range(dim)] for k in range(n_buckets)]  # b vectors in D dims
        if n_buckets > dim and mode == "official":
            rows = gram_schmidt_loops([[columns[k][d] for k in range(n_buckets)] for d in range(dim)])  # D rows of b
            columns = [[rows[d][k] for d in range(dim)] for k in range(n_buckets)]
        else:
            directions = []
            for start in range(0, n_buckets, dim):  # one block when b <= D
                directions += gram_schmidt_loops(columns[start:start + dim])
            columns = directions
        for k in range(n_buckets):
            for d in range(dim):
                out[d, r, k] = columns[k][d]
    return out


def superbit_codes_loops(x: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """Super-bit codes ``argmax_k (m_k . x)`` literally (DLSN eq. 12, Algorithm 1 lines 7-8); first maximum wins ties.

    Args:
        x: ``(N, L, D)`` vectors.
        projections: ``(D, R, b)`` directions ``m_k`` of each round.

    Returns:
        ``(N, R, L)`` int64 codes in ``[0, b)``.
    """
    x, projections = _float64(x).tolist(), _float64(projections).tolist()  # x[n][l][d], projections[d][r][k]
    n_images, length, dim = len(x), len(x[0]), len(projections)
    n_rounds, n_buckets = len(projections[0]), len(projections[0][0])
    codes = torch.zeros(n_images, n_rounds, length, dtype=torch.int64)  # (N, R, L)
    for n in range(n_images):
        for r in range(n_rounds):
            for pos in range(length):
                proj = [sum(x[n][pos][d] * projections[d][r][k] for d in range(dim)) for k in range(n_buckets)]
                codes[n, r, pos] = max(range(n_buckets), key=lambda k, proj=proj: (proj[k], -k))
    return codes


def learned_scorer_loops(scorer: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The learned scorer of eq. 11 position by position: ``W_2 relu(W_1 f + b_1) + b_2``.

    Args:
        scorer: ``Sequential(Linear(C, h), ReLU, Linear(h, P))``.
        features: ``(N, C, H, W)`` (``phi_l(x)``).

    Returns:
        ``(N, P, H, W)`` float64.
    """
    w1, b1 = _float64(scorer[0].weight), _float64(scorer[0].bias)  # (h, C), (h,)
    w2, b2 = _float64(scorer[2].weight), _float64(scorer[2].bias)  # (P, h), (P,)
    features = _float64(features)
    n_images, _, height, width = features.shape
    out = torch.zeros(n_images, w2.shape[0], height, width, dtype=DTYPE)  # (N, P, H, W)
    for n in range(n_images):
        for i in range(height):
            for j in range(width):
                f = features[n, :, i, j]  # (C,)
                hidden = [max(float(torch.dot(w1[u], f)) + float(b1[u]), 0.0) for u in range(w1.shape[0])]
                for p in range(w2.shape[0]):
                    out[n, p, i, j] = sum(float(w2[p, u]) * hidden[u] for u in range(w1.shape[0])) + float(b2[p])
    return out


def learnable_attention_loops(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    codes: torch.Tensor,
    chunk_size: int,
    learned: torch.Tensor | None = None,
    learned_form: str = "none",
    fixed_scores: bool = True,
    round_weighting: str = "logsumexp",
    chunks_before: int = 1,
    chunks_after: int = 1,
) -> torch.Tensor:
    """DLSN's global learnable attention (Algorithm 1, eq. 9-18) over given bucket codes, with loops::

        for each image and round r:
            sorted = positions sorted by (code_r, position); chunks of m sorted positions
            for every query i in chunk c, window = the positions of chunks c + o (o in neighbour offsets)
                s(i, j)  = [q(i) . k_hat(j)] + s_l(i, j)                       eq. 9-10
                  s_l(i, j) = learned[i][slot of j in i's window]   ("paper", eq. 11 / line 24)
                  s_l(i, j) = learned[j][slot of i in its chunk]    ("official" code)
                out_r(i) = sum_j softmax_j(s(i, j)) v(j)                         eq. 14
                lse_r(i) = log sum_j exp s(i, j);  S_r(i) = sum_j s(i, j)
        out(i) = sum_r w_r(i) out_r(i)                                            eq. 17
            w_r = softmax_r(lse_r)   ("logsumexp", official)  or  S_r / sum_r' S_r'   ("score_sum", eq. 18)

    Args:
        query, key: ``(N, C_e, H, W)`` (keys normalised here, ``k / max(|k|, 5e-5)``).
        value: ``(N, C_v, H, W)``.
        codes: ``(N, R, L)`` bucket codes (e.g. :func:`superbit_codes_loops` of the unit keys).
        chunk_size: ``m``.
        learned: ``(N, P, H, W)`` learned scores (:func:`learned_scorer_loops`) or None.
        learned_form: ``"none"``, ``"paper"`` or ``"official"``.
        fixed_scores: include ``q . k_hat``.
        round_weighting: ``"logsumexp"`` or ``"score_sum"``.
        chunks_before, chunks_after: neighbour chunks (DLSN: 1 and 1).

    Returns:
        ``(N, C_v, H, W)`` float64.

    Source: DLSN (Su et al.), Algorithm 1 and eq. 9-18; official code ``laoyangui/DLSN``
    ``src/model/attention.py`` for the ``"official"`` form and the logsumexp weights.
    """
    query, value = _float64(query), _float64(value)
    key_hat = unit_keys_loops(key)  # (N, C_e, H, W)
    n_images, _, height, width = query.shape
    c_v = value.shape[1]
    n_rounds = codes.shape[1]
    length = height * width
    pixels = [(i, j) for i in range(height) for j in range(width)]  # position l = i*W + j
    out = torch.zeros(n_images, c_v, height, width, dtype=DTYPE)  # (N, C_v, H, W)
    for n in range(n_images):
        q = [query[n, :, i, j].tolist() for i, j in pixels]  # q[l][d]
        k_hat = [key_hat[n, :, i, j].tolist() for i, j in pixels]  # k_hat[l][d]
        v = [value[n, :, i, j].tolist() for i, j in pixels]  # v[l][c]
        s_l = [_float64(learned)[n, :, i, j].tolist() for i, j in pixels] if learned is not None else None
        round_out, round_lse, round_sum = [], [], []
        for r in range(n_rounds):
            code = codes[n, r].tolist()
            ordered = sorted(range(length), key=lambda pos, code=code: (code[pos], pos))  # stable sort
            chunks = [ordered[start : start + chunk_size] for start in range(0, length, chunk_size)]
            offsets = neighbour_chunk_offsets(len(chunks), chunks_before, chunks_after)
            outs, lses, sums = [None] * length, [None] * length, [None] * length
            for c, chunk in enumerate(chunks):
                window = [(k * chunk_size + t, pos)  # (slot in the window, key position)
                          for k, o in enumerate(offsets) for t, pos in enumerate(chunks[(c + o) % len(chunks)])]
                for query_slot, i in enumerate(chunk):
                    scores = []
                    for slot, j in window:
                        score = sum(a * b for a, b in zip(q[i], k_hat[j])) if fixed_scores else 0.0  # eq. 10
                        if learned_form == "paper":
                            score += s_l[i][slot]  # the query's network output for this key slot
                        elif learned_form == "official":
                            score += s_l[j][query_slot]  # the key's network output for the query's slot
                        scores.append(score)
                    lse = _logsumexp_loops(scores)
                    lses[i], sums[i] = lse, sum(scores)
                    outs[i] = [sum(math.exp(s - lse) * v[j][ch] for s, (_, j) in zip(scores, window))
                               for ch in range(c_v)]
            round_out.append(outs)
            round_lse.append(lses)
            round_sum.append(sums)
        for pos, (i, j) in enumerate(pixels):
            if round_weighting == "score_sum":
                total = sum(round_sum[r][pos] for r in range(n_rounds))
                shares = [round_sum[r][pos] / total for r in range(n_rounds)]  # eq. 18
            else:
                shares = softmax_loops([round_lse[r][pos] for r in range(n_rounds)])  # softmax_r(lse_r)
            for ch in range(c_v):
                out[n, ch, i, j] = sum(shares[r] * round_out[r][pos][ch] for r in range(n_rounds))  # eq. 17
    return out


def _eval_codes_loops(module: nn.Module, match: torch.Tensor) -> torch.Tensor:
    """The bucket codes ``module`` uses in eval mode, by loops: its seeded draw, Gram-Schmidt, argmax."""
    height, width = match.shape[-2:]
    hashing = getattr(module, "hashing", "spherical")
    n_buckets = bucket_count(height * width, module.chunk_size, n_buckets=module.n_buckets, hashing=hashing)
    dim = match.shape[1]
    unit = unit_keys_loops(match)  # (N, C_e, H, W)
    vectors = unit.flatten(2).transpose(1, 2)  # (N, L, C_e), position l = i*W + j
    if hashing == "spherical":
        rotations = random_rotations(dim, module.n_rounds, n_buckets, generator=cpu_generator(module.seed), dtype=DTYPE)
        return spherical_codes_loops(vectors, rotations)  # (N, R, L)
    draw = torch.randn((module.n_rounds, dim, n_buckets), generator=cpu_generator(module.seed), dtype=torch.float32)
    return superbit_codes_loops(vectors, superbit_projections_loops(draw, module.superbit_mode))  # (N, R, L)


def gla_loops(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:class:`~srlib.attention.learnable.GlobalLearnableAttention` by loops: ``(N, C, H, W)`` -> ``(N, C, H, W)`` float64.

    Algorithm 1 of DLSN with the module's weights: ``q = query_key_embed(x)``
    (line 2), hash codes of the unit ``q`` from the module's eval-mode draw
    (the Gaussian ``H`` drawn from ``cpu_generator(module.seed)`` exactly as
    :func:`srlib.attention.lsh.superbit_projections` draws it, then
    :func:`superbit_projections_loops`, :func:`superbit_codes_loops`; lines
    5-8), ``v = value_embed(x)`` (line 18), ``s_l`` by
    :func:`learned_scorer_loops` of ``learned_embed(x)`` (lines 17, 24), then
    :func:`learnable_attention_loops`.  Equals ``module.eval()(x)``.

    Source: DLSN (Su et al.), Algorithm 1.
    """
    match = embedding_loops(module.query_key_embed, x)  # (N, C_e, H, W)
    value = embedding_loops(module.value_embed, x)  # (N, C, H, W)
    learned = None
    if module.learned_score != "none":
        learned = learned_scorer_loops(module.learned_scorer, embedding_loops(module.learned_embed, x))  # (N, P, H, W)
    codes = _eval_codes_loops(module, match)  # (N, R, L)
    return learnable_attention_loops(
        match, match, value, codes, module.chunk_size, learned=learned, learned_form=module.learned_score,
        fixed_scores=module.fixed_score, round_weighting=module.round_weighting,
    )


# ----------------------------------------------------------------------------------------------
# Multi-reference attention (AMRSR): INPUTATT, REFATT, texture transfer
# ----------------------------------------------------------------------------------------------


def _patch_vector_loops(feature: torch.Tensor, n: int, i: int, j: int, size: int, padded: bool) -> list[float]:
    """The ``size x size`` window centred at ``(i, j)`` of image ``n``, channel-major, zeros outside (``padded``)."""
    radius = size // 2
    _, channels, height, width = feature.shape
    vector = []
    for c in range(channels):
        for a in range(size):
            for b in range(size):
                row, col = i + a - radius, j + b - radius
                inside = 0 <= row < height and 0 <= col < width
                if not inside and not padded:
                    raise ValueError("a reference patch must lie inside the reference")
                vector.append(float(feature[n, c, row, col]) if inside else 0.0)
    return vector


def _cosine_loops(a: list[float], b: list[float], eps: float = 1e-6) -> float:
    """``a . b / (max(|a|, eps) max(|b|, eps))``."""
    norm_a = max(math.sqrt(sum(v * v for v in a)), eps)
    norm_b = max(math.sqrt(sum(v * v for v in b)), eps)
    return sum(x * y for x, y in zip(a, b)) / (norm_a * norm_b)


def input_attention_loops(query: torch.Tensor, reference: torch.Tensor, patch_size: int, centres=None):
    """INPUTATT (AMRSR Alg. 1 lines 15-20) by loops: the best reference patch of every input position.

    ``s_k(x, y) = <q(x, y) / |q(x, y)|, P_k / |P_k|>`` over the patches ``P_k``
    (``p x p``, wholly inside the reference) whose centres are in ``centres``
    (default: all), the input patches zero-padded; the first maximum wins ties.

    Args:
        query: ``(N, C, H, W)``; reference: ``(N, C, H_m, W_m)``.
        patch_size: ``p``.
        centres: a list of ``(u, v)`` patch centres to search (one part), in order.

    Returns:
        ``(best, similarity)``: ``best[n][x][y] = (u, v)``, ``similarity[n][x][y]`` the cosine (nested lists).
    """
    query, reference = _float64(query), _float64(reference)
    radius = patch_size // 2
    n_images, _, height, width = query.shape
    if centres is None:
        centres = [(u, v) for u in range(radius, reference.shape[2] - radius)
                   for v in range(radius, reference.shape[3] - radius)]
    best = [[[None] * width for _ in range(height)] for _ in range(n_images)]
    similarity = [[[None] * width for _ in range(height)] for _ in range(n_images)]
    for n in range(n_images):
        patches = [_patch_vector_loops(reference, n, u, v, patch_size, padded=False) for u, v in centres]
        for x in range(height):
            for y in range(width):
                q = _patch_vector_loops(query, n, x, y, patch_size, padded=True)
                scores = [_cosine_loops(q, p) for p in patches]  # line 16
                k = max(range(len(scores)), key=lambda t, scores=scores: (scores[t], -t))  # line 18
                best[n][x][y], similarity[n][x][y] = centres[k], scores[k]
    return best, similarity


def multi_reference_match_loops(query, references, patch_size=3, n_subvectors=1, reference_parts=1):
    """AMRSR's hierarchy by loops: INPUTATT per part of each reference, then REFATT per sub-vector (Alg. 1 lines 5-12).

    For every reference ``m`` and part ``r`` (patch centres in one cell of
    :func:`srlib.attention.multi_reference.part_grid`), INPUTATT gives each input
    position its best patch; REFATT then picks, for sub-vector ``j`` (the ``j``-th
    group of ``C / N_C`` channels), the candidate whose patch's sub-vector ``j`` has
    the highest cosine with the input patch's sub-vector ``j`` - first over the
    parts of ``m`` (line 9), then over the references (line 12).

    Returns:
        ``choice[n][j][x][y] = (m, u, v)`` and ``similarity[n][j][x][y]`` (nested lists).
    """
    from srlib.attention.multi_reference import part_grid

    radius = patch_size // 2
    query = _float64(query)
    references = [_float64(r) for r in references]
    n_images, channels, height, width = query.shape
    group = channels * patch_size * patch_size // n_subvectors  # numbers per sub-vector of a patch
    per_reference = []  # [m] -> choice[n][j][x][y] = (u, v), score
    for m, reference in enumerate(references):
        cells = part_grid(reference.shape[2] - 2 * radius, reference.shape[3] - 2 * radius, reference_parts)
        candidates = []  # [r] -> best[n][x][y] (u, v), from INPUTATT on part r
        for top, bottom, left, right in cells:
            centres = [(u + radius, v + radius) for u in range(top, bottom) for v in range(left, right)]
            candidates.append(input_attention_loops(query, reference, patch_size, centres)[0])
        chosen = [[[[None] * width for _ in range(height)] for _ in range(n_subvectors)] for _ in range(n_images)]
        for n in range(n_images):
            for x in range(height):
                for y in range(width):
                    q = _patch_vector_loops(query, n, x, y, patch_size, padded=True)
                    for j in range(n_subvectors):
                        best = None
                        for candidate in candidates:  # REFATT over the parts of reference m (line 9)
                            u, v = candidate[n][x][y]
                            p = _patch_vector_loops(reference, n, u, v, patch_size, padded=False)
                            score = _cosine_loops(q[j * group:(j + 1) * group], p[j * group:(j + 1) * group])
                            if best is None or score > best[1]:
                                best = ((u, v), score)
                        chosen[n][j][x][y] = best
        per_reference.append(chosen)
    choice = [[[[None] * width for _ in range(height)] for _ in range(n_subvectors)] for _ in range(n_images)]
    similarity = [[[[None] * width for _ in range(height)] for _ in range(n_subvectors)] for _ in range(n_images)]
    for n in range(n_images):
        for j in range(n_subvectors):
            for x in range(height):
                for y in range(width):
                    best_m = max(range(len(references)),  # REFATT over the references (line 12), first wins ties
                                 key=lambda m, n=n, j=j, x=x, y=y: (per_reference[m][n][j][x][y][1], -m))
                    (u, v), score = per_reference[best_m][n][j][x][y]
                    choice[n][j][x][y], similarity[n][j][x][y] = (best_m, u, v), score
    return choice, similarity


def transfer_patches_loops(choice, values, patch_size: int, stride: int = 1) -> torch.Tensor:
    """Texture transfer by loops: paste each chosen ``(p s) x (p s)`` window and divide by the overlap count.

    Output pixel ``(a, b)`` is the mean, over the input positions ``(x, y)`` whose
    window covers it, of ``values[m][c, (u - p//2) s + (a - (x - p//2) s), (v - p//2) s + (b - (y - p//2) s)]``
    for ``(m, u, v)`` the choice of ``(x, y)`` (channel group ``j`` from sub-vector ``j``).

    Args:
        choice: ``choice[n][j][x][y] = (m, u, v)`` (:func:`multi_reference_match_loops`).
        values: ``N_M`` maps ``(N, C_v, s H_m, s W_m)``.
        patch_size: ``p``; stride: ``s``.

    Returns:
        ``(N, C_v, s H, s W)`` float64.
    """
    values = [_float64(v) for v in values]
    n_images, n_subvectors = len(choice), len(choice[0])
    height, width = len(choice[0][0]), len(choice[0][0][0])
    c_v = values[0].shape[1]
    group, window, radius = c_v // n_subvectors, patch_size * stride, patch_size // 2
    out = torch.zeros(n_images, c_v, stride * height, stride * width, dtype=DTYPE)
    count = torch.zeros(stride * height, stride * width, dtype=DTYPE)
    for x in range(height):
        for y in range(width):
            for a in range(window):
                for b in range(window):
                    row, col = (x - radius) * stride + a, (y - radius) * stride + b
                    if 0 <= row < stride * height and 0 <= col < stride * width:
                        count[row, col] += 1
    for n in range(n_images):
        for j in range(n_subvectors):
            for x in range(height):
                for y in range(width):
                    m, u, v = choice[n][j][x][y]
                    for a in range(window):
                        for b in range(window):
                            row, col = (x - radius) * stride + a, (y - radius) * stride + b
                            if 0 <= row < stride * height and 0 <= col < stride * width:
                                for c in range(j * group, (j + 1) * group):
                                    out[n, c, row, col] += values[m][n, c, (u - radius) * stride + a,
                                                                     (v - radius) * stride + b]
    return out / count


def multi_reference_loops(module: nn.Module, x: torch.Tensor, references) -> torch.Tensor:
    """:class:`~srlib.attention.multi_reference.MultiReferenceAttention` by loops: ``(N, C, H, W)`` float64.

    Embeddings (if any) by :func:`embedding_loops`, the hierarchy by
    :func:`multi_reference_match_loops`, the paste by :func:`transfer_patches_loops`,
    then the gate ``W`` = mean over sub-vectors of the chosen similarities.
    Input parts do not appear: they change what is held in memory, not the answer.

    Source: AMRSR supplement Algorithm 1; SRNTT.
    """
    if module.embed:
        query = embedding_loops(module.query_key_embed, x)
        keys = [embedding_loops(module.query_key_embed, r) for r in references]
        values = [embedding_loops(module.value_embed, r) for r in references]
    else:
        query, keys, values = _float64(x), [_float64(r) for r in references], [_float64(r) for r in references]
    choice, similarity = multi_reference_match_loops(
        query, keys, module.patch_size, module.n_subvectors, module.reference_parts)
    out = transfer_patches_loops(choice, values, module.patch_size)
    if module.gate:
        n_images, n_sub = len(similarity), len(similarity[0])
        height, width = len(similarity[0][0]), len(similarity[0][0][0])
        for n in range(n_images):
            for x in range(height):
                for y in range(width):
                    out[n, :, x, y] *= sum(similarity[n][j][x][y] for j in range(n_sub)) / n_sub
    return out
