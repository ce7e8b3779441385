"""Cross-scale non-local attention (CS-NL): borrow HR detail from larger copies of a patch.

Source: Y. Mei, Y. Fan, Y. Zhou, L. Huang, T. S. Huang and H. Shi, "Image
Super-Resolution with Cross-Scale Non-Local Attention and Exhaustive
Self-Exemplars Mining", CVPR 2020 (paper eq. 3-4, Sec. 4.1, Fig. 2) and its
supplementary file (eq. 1-3).  Official code:
github.com/SHI-Labs/Cross-Scale-Non-Local-Attention (class ``CrossScaleAttention``).

The idea.  Natural images repeat themselves across scales: a small patch often
has a larger, sharper twin elsewhere in the same image.  Downscale the feature
map ``X`` (``H x W``) by ``s`` to ``Y = X down-s`` (``H/s x W/s``).  A pixel
``Y[g, h]`` *summarises* the ``s x s`` block ``X^{sxs}[sg, sh]`` of ``X``.  If
a query ``X[i, j]`` looks like ``Y[g, h]``, then that ``s x s`` block of ``X``
is a plausible ``s``-times-larger version of the query: paste it at the
``s x s`` output block ``(si, sj)``.  The output is ``s`` times larger than ``X``.

Three versions, all with the same similarity (below):

* **naive** (supplement eq. 2) - keys *and values* come from ``Y``:
  ``Z[i,j] = sum_{g,h} softmax_{g,h}(phi(X[i,j], Y[g,h])) psi(Y[g,h])``;
  output ``(N, C, H, W)``.  Summarising downscaled features loses the high
  frequencies the module is meant to find (supplement Table 1).
  -> :func:`naive_cross_scale_attention`
* **pixel-to-patch** (paper eq. 3 = supplement eq. 3) - keys from ``Y``,
  values are the ``s x s`` HR blocks of ``X``:
  ``Z^{sxs}[si,sj] = sum_{g,h} softmax_{g,h}(phi(X[i,j], Y[g,h])) psi(X^{sxs}[sg,sh])``;
  output ``(N, C, sH, sW)``, blocks do not overlap.
  -> :func:`pixel_cross_scale_attention`
* **patch-based** (paper eq. 4) - ``p x p`` query patches are matched with
  ``p x p`` key patches of ``Y``; the weights paste ``(sp) x (sp)`` value
  patches of ``X``, which now overlap and are averaged:
  ``Z^{sp x sp}[si,sj] = sum_{g,h} softmax_{g,h}(phi(X^{pxp}[i,j], Y^{pxp}[g,h])) psi(X^{sp x sp}[sg,sh])``.
  ``p = 1`` is eq. 3.  -> :func:`cross_scale_attention`, :class:`CrossScaleAttention`

Conventions (those of the official code):

* ``Y`` is the **bilinear** downscale, ``F.interpolate(..., mode="bilinear",
  align_corners=False)`` without antialiasing.  That samples ``X`` at
  ``(s*g + (s-1)/2, s*h + (s-1)/2)``: at ``s = 2`` it is the mean of each
  ``2 x 2`` block, at ``s = 3`` it simply *picks the centre pixel* of each
  ``3 x 3`` block, at ``s = 4`` it averages the central ``2 x 2`` of each
  ``4 x 4`` block.  See :func:`bilinear_downscale`.
* Similarity ``phi(q, k) = softmax_scale * <q, k> / max(||k||, 1e-4)``: key
  patches are L2-normalised over all their ``C' p^2`` entries (the norm is
  clamped at ``1e-4`` so that all-zero patches do not divide by zero), queries
  are **not** normalised, the softmax temperature ``softmax_scale`` is 10.
  Patches are centred on their position; outside the map they are zero
  ('same' zero padding: ``(p-1)/2`` LR pixels for queries and keys,
  ``s (p-1)/2`` HR pixels for values).
* A ``(sp) x (sp)`` patch "at ``(sg, sh)``" is centred on the ``s x s`` block
  whose top-left pixel is ``(sg, sh)``: rows ``sg - s(p-1)/2 ... sg + s(p+1)/2 - 1``.
  For ``p = 1`` it is that block itself, so eq. 4 reduces to eq. 3.

Where the official code and the paper differ, and what this module does:

* **Overlap averaging.**  The paper says only that output regions "are now
  densely overlapped".  The code sums the overlapping ``(3s) x (3s)`` patches
  with ``conv_transpose2d(stride=s, padding=s)`` and divides by a constant 6;
  the true number of patches covering an output pixel is 9 inside the map,
  6 along the borders and 4 in the corners. In issue #3 of the official
  repository the maintainer first calls the constant a normaliser that other
  values (4, 6, 9) would also serve, then agrees that the exact average of the
  overlapping maps would divide by 9.
  ``normalization="overlap"`` (default here) divides every pixel by its true
  count (:func:`overlap_count`), so the output is a mean of convex combinations
  of value patches.  ``normalization="constant6"`` divides by 6 as the released
  code does (interior values come out 1.5 times too large, corners 2/3); it is
  there so that a notebook can compare both.  With ``p = 1`` the count is 1.
* **Batching.**  The official code loops over the images of a batch; here the
  whole batch is one grouped ``conv2d`` / ``conv_transpose2d``.
* **Sizes not divisible by s.**  The official code crashes.  Here the maps are
  padded at the bottom and right to the next multiple of ``s`` (``pad_mode``
  ``"replicate"``, the default, or ``"reflect"``), attended, and the output is
  cropped back to ``(sH, sW)``.  Padded pixels can be matched and pasted like
  any others; the returned attention keeps all ``ceil(H/s) ceil(W/s)`` keys.
* **Maps smaller than the patch.**  Handled by the zero 'same' padding, exactly
  as for border patches: a ``1 x 1`` map works and gives an ``s x s`` output.
  Only an empty map (``H`` or ``W`` = 0) is an error.

Memory.  The score tensor has one entry per (key, query) pair:
``(N, (H/s)(W/s), H, W)``, i.e. it grows with the fourth power of the image
side (a 256 x 256 feature map at x2 has 16384 x 65536 scores: 4 GiB in
float32, 8 GiB with the softmax weights).  Every attention function here
estimates that first (:func:`cross_scale_attention_bytes`) and raises :class:`AttentionMemoryError` (shared with
:mod:`srlib.attention.non_local`) before allocating anything when it exceeds
``max_attention_bytes`` - by default ``MEMORY_FRACTION`` (half) of the memory
free on the input's device (``/proc/meminfo`` MemAvailable, or
``torch.cuda.mem_get_info``); ``math.inf`` turns the guard off.
The cure is tiled inference, e.g. ``srlib eval --tile 256``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from srlib.attention._common import (
    AttentionMemoryError,
    channel_reduction,
    check_feature_map,
    check_map,
    check_query_key_value,
    choice,
    embedding,
    guard_memory,
    memory_limit,
    normalize_activation,
    optional_bytes,
    positive_int,
    positive_real,
)
from srlib.attention.non_local import attention_matrix_bytes
from srlib.attention.registry import register_attention

__all__ = [
    "NORMALIZATIONS",
    "PAD_MODES",
    "AttentionMemoryError",
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
]

# How overlapping (sp) x (sp) output patches are averaged (see the module docstring).
NORMALIZATIONS = ("overlap", "constant6")
# How a map is padded at the bottom/right to a multiple of the scale.
PAD_MODES = ("replicate", "reflect")
# Lower bound of a key patch's L2 norm before dividing by it (official code: ``escape_NaN``).
KEY_NORM_EPS = 1e-4
# The official code divides the overlapped sum by this constant.
OFFICIAL_OVERLAP_DIVISOR = 6.0


# ----------------------------------------------------------------------------------------------
# Checks and small helpers
# ----------------------------------------------------------------------------------------------


def _check_patch_size(patch_size) -> int:
    if isinstance(patch_size, bool) or not isinstance(patch_size, numbers.Integral) or patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(
            f"patch_size must be a positive odd integer (1, 3, 5, ...) so that a patch is centred "
            f"on its pixel, got {patch_size!r}"
        )
    return int(patch_size)


def _check_softmax_scale(softmax_scale) -> float:
    return positive_real("softmax_scale", softmax_scale, "10 in CSNLN")


def _check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    return choice(name, value, choices)


def _check_triplet(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    for name, x in (("query", query), ("key", key), ("value", value)):
        check_map(name, x)
    check_query_key_value(query, key, value, channel_dim=1)


def _check_cross_scale_inputs(
    what: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale, softmax_scale,
    pad_mode: str, max_attention_bytes: float | None,
) -> tuple[int, float]:
    """Checks shared by eq. 3 and eq. 4: shapes, ``scale``, ``softmax_scale``, ``pad_mode``, memory.

    Returns the validated ``(scale, softmax_scale)``; raises as the public functions document.
    """
    _check_triplet(query, key, value)
    scale = positive_int("scale", scale)
    softmax_scale = _check_softmax_scale(softmax_scale)
    _check_choice("pad_mode", pad_mode, PAD_MODES)
    height, width = query.shape[-2:]
    if tuple(value.shape[-2:]) != (height, width):
        raise ValueError(f"value must have the query's size {height}x{width}, got {tuple(value.shape[-2:])}")
    _check_lr_key_size(key, height, width, scale)
    h, w = key.shape[-2:]
    _guard_memory(f"{what} (scale {scale})", query, h * w, (scale * h, scale * w), max_attention_bytes, scale)
    return scale, softmax_scale


def _check_lr_key_size(key: torch.Tensor, height: int, width: int, scale: int) -> None:
    expected = (math.ceil(height / scale), math.ceil(width / scale))
    if tuple(key.shape[-2:]) != expected:
        raise ValueError(
            f"key must be the x{scale} downscaled map of the {height}x{width} query, i.e. "
            f"{expected[0]}x{expected[1]} = (ceil(H/s), ceil(W/s)), got "
            f"{key.shape[-2]}x{key.shape[-1]}; compute it with bilinear_downscale(x, {scale})"
        )


def pad_to_multiple(x: torch.Tensor, scale: int, mode: str = "replicate") -> torch.Tensor:
    """Pad a feature map at the bottom and right so that H and W become multiples of ``scale``.

    Args:
        x: ``(N, C, H, W)`` floating-point map, any value range.
        scale: the multiple ``s`` (>= 1).
        mode: ``"replicate"`` (repeat the last row/column; works for any size)
            or ``"reflect"`` (mirror without repeating the edge; needs the
            padding to be smaller than the map, i.e. ``H, W > s - 1`` suffices).

    Returns:
        ``(N, C, s*ceil(H/s), s*ceil(W/s))``; ``x`` itself when nothing is padded.

    Raises:
        ValueError: ``x`` is not a non-empty ``(N, C, H, W)`` float map, a bad
            ``scale`` or ``mode``, or ``"reflect"`` on a map too small to mirror.
    """
    check_map("x", x)
    scale = positive_int("scale", scale)
    _check_choice("pad_mode", mode, PAD_MODES)
    height, width = x.shape[-2:]
    pad_bottom = -height % scale
    pad_right = -width % scale
    if pad_bottom == 0 and pad_right == 0:
        return x
    if mode == "reflect" and (pad_bottom >= height or pad_right >= width):
        raise ValueError(
            f"cannot reflect-pad a {height}x{width} map by ({pad_bottom}, {pad_right}) pixels to a "
            f"multiple of {scale}: reflection needs the padding to be smaller than the map; use "
            f"pad_mode='replicate'"
        )
    return F.pad(x, (0, pad_right, 0, pad_bottom), mode=mode)  # (N, C, Hp, Wp)


def bilinear_downscale(x: torch.Tensor, scale: int, pad_mode: str = "replicate") -> torch.Tensor:
    """``Y = X down-s``: the bilinear downscale that CSNLN uses for its keys.

    The map is first padded to a multiple of ``scale`` (:func:`pad_to_multiple`),
    then resized with ``F.interpolate(mode="bilinear", align_corners=False)``
    (no antialiasing), as in the official code.  Output pixel ``(g, h)`` samples
    the input at ``(s*g + (s-1)/2, s*h + (s-1)/2)``: the mean of each ``2 x 2``
    block at ``s = 2``, the centre pixel of each ``3 x 3`` block at ``s = 3``.

    Args:
        x: ``(N, C, H, W)`` floating-point map, any value range.
        scale: the downscaling factor ``s`` (>= 1).
        pad_mode: ``"replicate"`` or ``"reflect"``, used when ``H`` or ``W`` is
            not a multiple of ``s``.

    Returns:
        ``(N, C, ceil(H/s), ceil(W/s))``, same dtype and device.

    Raises:
        ValueError: see :func:`pad_to_multiple`.

    Source: paper Sec. 3 ("Downsampling operation in this paper is bilinear
    interpolation") and Sec. 4.1.
    """
    padded = pad_to_multiple(x, scale, pad_mode)  # (N, C, Hp, Wp)
    if scale == 1:
        return padded
    size = (padded.shape[-2] // scale, padded.shape[-1] // scale)
    return F.interpolate(padded, size=size, mode="bilinear", align_corners=False)  # (N, C, Hp/s, Wp/s)


def overlap_count(
    height: int,
    width: int,
    scale: int,
    patch_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """How many ``(sp) x (sp)`` output patches cover each output pixel (eq. 4 aggregation).

    The query at LR position ``(i, j)`` writes a ``(sp) x (sp)`` patch centred
    on the output block ``(si, sj)``.  Folding all-ones patches (``F.fold``,
    stride ``s``, padding ``s(p-1)/2``) counts, for every output pixel, the
    patches that cover it.  For ``p = 3`` the count is 9 inside, 6 along the
    borders and 4 in the corners (per axis: 2 in the first and last ``s`` rows,
    3 elsewhere); for ``p = 1`` it is 1 everywhere.  When a map is padded to a
    multiple of ``s`` before attending, the count of the *padded* grid applies
    (the padded queries paste patches too), cropped with the output.

    Args:
        height, width: size of the query map (LR grid), a multiple of ``scale``
            or not - the count does not care.
        scale: ``s`` (>= 1).
        patch_size: ``p``, odd.
        dtype, device: of the returned tensor.

    Returns:
        ``(s*height, s*width)`` tensor of positive integers stored as ``dtype``.

    Raises:
        ValueError: non-positive sizes, bad ``scale`` or ``patch_size``.
    """
    height = positive_int("height", height)
    width = positive_int("width", width)
    scale = positive_int("scale", scale)
    patch_size = _check_patch_size(patch_size)
    kernel = scale * patch_size
    padding = scale * (patch_size - 1) // 2
    ones = torch.ones(1, kernel * kernel, height * width, dtype=dtype, device=device)  # (1, (sp)^2, H*W)
    count = F.fold(
        ones, output_size=(scale * height, scale * width), kernel_size=kernel, stride=scale, padding=padding
    )  # (1, 1, sH, sW)
    return count[0, 0]  # (sH, sW)


# ----------------------------------------------------------------------------------------------
# Memory guard (same accounting and default limit as srlib.attention.non_local)
# ----------------------------------------------------------------------------------------------


def cross_scale_attention_bytes(
    batch: int, height: int, width: int, scale: int, dtype: torch.dtype = torch.float32
) -> int:
    """Peak bytes of the cross-scale attention: scores and softmax weights, ``(N, h*w, Hp, Wp)`` each.

    ``h, w = ceil(H/s), ceil(W/s)`` keys and ``Hp, Wp = s*h, s*w`` (the padded
    query map).  These two tensors dominate memory and grow with ``(HW)^2``; the
    accounting is that of :func:`srlib.attention.non_local.attention_matrix_bytes`
    (training roughly doubles it again for the gradients).

    Args:
        batch: ``N``.
        height, width: the query (LR feature) map size ``H, W``.
        scale: ``s``.
        dtype: element type of the scores (that of the query).

    Returns:
        ``2 * N * h*w * Hp*Wp * itemsize`` bytes (``int``).

    Raises:
        ValueError: non-positive sizes or scale.
    """
    batch = positive_int("batch", batch)
    height = positive_int("height", height)
    width = positive_int("width", width)
    scale = positive_int("scale", scale)
    keys = math.ceil(height / scale) * math.ceil(width / scale)
    queries = keys * scale * scale
    return attention_matrix_bytes(batch, queries, keys, dtype)


def _guard_memory(
    what: str,
    query: torch.Tensor,
    num_keys: int,
    padded_size: tuple[int, int],
    max_attention_bytes: float | None,
    scale: int | None = None,
) -> None:
    """Raise :class:`AttentionMemoryError` before allocating scores that would not fit.

    The scores and weights are ``(N, num_keys, Hp, Wp)``; the limit is
    ``max_attention_bytes`` or, when None, ``MEMORY_FRACTION`` of
    :func:`~srlib.attention._common.available_memory_bytes` on the query's
    device (no check when that is unknown, e.g. on MPS).  With ``scale`` given
    (cross-scale keys, ``num_keys = Hp Wp / s^2``) the message also says which
    square tile would fit for one image.
    """
    n, _, height, width = query.shape
    padded_h, padded_w = padded_size
    needed = attention_matrix_bytes(n, padded_h * padded_w, num_keys, query.dtype)
    limit = memory_limit(query.device, max_attention_bytes)
    if limit is None or needed <= limit[0]:
        return
    shape = (n, num_keys, padded_h, padded_w)
    dtype_name = str(query.dtype).replace("torch.", "")
    fitting_tile = ""
    if scale is not None:
        # One T x T map holds 2 (T/s)^2 T^2 scores and weights: solve for T, round down to a multiple of s.
        side = (limit[0] * scale * scale / (2 * query.element_size())) ** 0.25
        side = int(side) // scale * scale
        if side >= scale:
            fitting_tile = f"; at this limit one map of up to {side}x{side} pixels fits"
    guard_memory(
        needed, query.device, max_attention_bytes,
        f"{what} on {n} feature map(s) of {height}x{width} pixels",
        "The scores grow with the fourth power of the image side: use tiled inference "
        f"(`srlib eval --tile T` with a small enough T{fitting_tile}), a smaller input or batch, or "
        "raise the limit with max_attention_bytes.",
        holding=f" for its {shape} {dtype_name} scores and softmax weights",
    )


# ----------------------------------------------------------------------------------------------
# Functional cores (already-embedded maps)
# ----------------------------------------------------------------------------------------------


def _normalized_key_patches(key: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``p x p`` patches of ``key`` ('same' zero padding), each L2-normalised.

    ``(N, C', h, w)`` -> ``(N, C' p^2, h*w)``; column ``g*w + h`` is the patch
    centred on ``(g, h)`` divided by ``max(||patch||, 1e-4)``.
    """
    patches = F.unfold(key, patch_size, padding=(patch_size - 1) // 2)  # (N, C'p^2, h*w)
    norms = patches.norm(dim=1, keepdim=True).clamp_min(KEY_NORM_EPS)  # (N, 1, h*w)
    return patches / norms  # (N, C'p^2, h*w)


def naive_cross_scale_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    softmax_scale: float = 10.0,
    return_attention: bool = False,
    *,
    max_attention_bytes: float | None = None,
):
    """Naive cross-scale attention, supplement eq. 2: keys *and values* from the downscaled map.

    ``Z[i,j] = sum_{g,h} softmax_{g,h}(phi(X[i,j], Y[g,h])) psi(Y[g,h])`` with
    ``phi(q, k) = softmax_scale * <q, k> / max(||k||, 1e-4)`` (the similarity
    of the proposed versions, so that they can be compared).  The output has
    the resolution of the queries: the values were downscaled, so no HR detail
    can come back.

    Args:
        query: ``theta(X)``, ``(N, C', H, W)`` float, any range.
        key: ``delta(Y)``, ``(N, C', h, w)`` - normally ``Y`` = :func:`bilinear_downscale` of ``X``;
            any ``h, w`` works.
        value: ``psi(Y)``, ``(N, C, h, w)``, same ``h, w`` as ``key``.
        softmax_scale: temperature multiplying the similarities (10 in CSNLN).
        return_attention: also return the attention weights.
        max_attention_bytes: limit in bytes for the ``(N, h*w, H, W)`` scores plus weights;
            ``None`` = half of the free memory; ``math.inf`` = no check.

    Returns:
        ``Z`` ``(N, C, H, W)``; with ``return_attention`` also the weights
        ``(N, h*w, H, W)`` (key index ``g*w + h`` first; they sum to 1 over dim 1).

    Raises:
        ValueError: wrong shapes, dtypes or devices; bad ``softmax_scale``.
        AttentionMemoryError: the scores would exceed the memory limit.

    Source: Mei et al., CVPR 2020, supplementary eq. 2.
    """
    _check_triplet(query, key, value)
    softmax_scale = _check_softmax_scale(softmax_scale)
    if tuple(value.shape[-2:]) != tuple(key.shape[-2:]):
        raise ValueError(
            f"naive attention takes keys and values from the same downscaled map, so they need the "
            f"same size; got key {tuple(key.shape[-2:])} and value {tuple(value.shape[-2:])}"
        )
    n, _, height, width = query.shape
    c_v = value.shape[1]
    h, w = key.shape[-2:]
    _guard_memory("naive cross-scale attention", query, h * w, (height, width), max_attention_bytes)
    queries = query.flatten(2).transpose(1, 2)  # (N, H*W, C')
    keys = _normalized_key_patches(key, 1)  # (N, C', h*w)
    scores = softmax_scale * torch.bmm(queries, keys)  # (N, H*W, h*w), eq. 2 phi(X_ij, Y_gh)
    attention = scores.softmax(dim=-1)  # (N, H*W, h*w), normalised over the keys (g, h)
    values = value.flatten(2).transpose(1, 2)  # (N, h*w, C), psi(Y_gh)
    out = torch.bmm(attention, values)  # (N, H*W, C)
    out = out.transpose(1, 2).reshape(n, c_v, height, width)  # (N, C, H, W)
    if return_attention:
        return out, attention.transpose(1, 2).reshape(n, h * w, height, width)  # (N, h*w, H, W)
    return out


def pixel_cross_scale_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: int,
    softmax_scale: float = 10.0,
    return_attention: bool = False,
    *,
    pad_mode: str = "replicate",
    max_attention_bytes: float | None = None,
):
    """Pixel-to-patch cross-scale attention, paper eq. 3: one LR similarity weights one ``s x s`` HR block.

    ``Z^{sxs}[si,sj] = sum_{g,h} softmax_{g,h}(phi(X[i,j], Y[g,h])) psi(X^{sxs}[sg,sh])``.
    Written with matrix products: the ``s x s`` blocks of ``psi(X)`` are the
    channels of ``pixel_unshuffle(psi(X), s)`` (one block per LR position
    ``(g, h)``), and ``pixel_shuffle`` puts the weighted blocks back in place.
    The output blocks do not overlap.  Equals :func:`cross_scale_attention`
    with ``patch_size=1`` (a different implementation, tested against it).

    Args:
        query: ``theta(X)``, ``(N, C', H, W)`` float, any range, any ``H, W``.
        key: ``delta(Y)``, ``(N, C', ceil(H/s), ceil(W/s))`` - compute ``Y`` with
            :func:`bilinear_downscale` (same ``pad_mode``).
        value: ``psi(X)``, ``(N, C, H, W)``.
        scale: ``s`` (>= 1), the output is ``s`` times larger.
        softmax_scale: temperature (10 in CSNLN).
        return_attention: also return the attention weights.
        pad_mode: ``"replicate"`` or ``"reflect"``; query and value are padded at
            the bottom/right to a multiple of ``s`` and the output is cropped back.
        max_attention_bytes: limit in bytes for scores plus weights; ``None`` =
            half of the free memory; ``math.inf`` = no check.

    Returns:
        ``Z`` ``(N, C, s*H, s*W)``; with ``return_attention`` also the weights
        ``(N, ceil(H/s) ceil(W/s), H, W)`` (they sum to 1 over dim 1).

    Raises:
        ValueError: wrong shapes, dtypes or devices; bad ``scale``,
            ``softmax_scale`` or ``pad_mode``.
        AttentionMemoryError: the scores would exceed the memory limit.

    Source: Mei et al., CVPR 2020, eq. 3 (= supplementary eq. 3).
    """
    scale, softmax_scale = _check_cross_scale_inputs(
        "pixel-to-patch cross-scale attention", query, key, value, scale, softmax_scale, pad_mode,
        max_attention_bytes,
    )
    n, _, height, width = query.shape
    c_v = value.shape[1]
    h, w = key.shape[-2:]
    query = pad_to_multiple(query, scale, pad_mode)  # (N, C', Hp, Wp), Hp = s*h
    value = pad_to_multiple(value, scale, pad_mode)  # (N, C, Hp, Wp)
    padded_h, padded_w = query.shape[-2:]

    queries = query.flatten(2).transpose(1, 2)  # (N, Hp*Wp, C'), X_ij
    keys = _normalized_key_patches(key, 1)  # (N, C', h*w), Y_gh / ||Y_gh||
    scores = softmax_scale * torch.bmm(queries, keys)  # (N, Hp*Wp, h*w), phi(X_ij, Y_gh)
    attention = scores.softmax(dim=-1)  # (N, Hp*Wp, h*w), normalised over (g, h)
    blocks = F.pixel_unshuffle(value, scale)  # (N, C*s*s, h, w): channel c*s*s + a*s + b = psi(X)[c, sg+a, sh+b]
    blocks = blocks.flatten(2).transpose(1, 2)  # (N, h*w, C*s*s), X^{sxs}_{sg,sh}
    out = torch.bmm(attention, blocks)  # (N, Hp*Wp, C*s*s), Z^{sxs}_{si,sj}
    out = out.transpose(1, 2).reshape(n, c_v * scale * scale, padded_h, padded_w)  # (N, C*s*s, Hp, Wp)
    out = F.pixel_shuffle(out, scale)  # (N, C, s*Hp, s*Wp), block (i, j) -> rows si..si+s-1
    out = out[..., : scale * height, : scale * width]  # (N, C, sH, sW)
    if return_attention:
        attention = attention.transpose(1, 2).reshape(n, h * w, padded_h, padded_w)  # (N, h*w, Hp, Wp)
        return out, attention[..., :height, :width]  # (N, h*w, H, W)
    return out


def cross_scale_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: int,
    patch_size: int = 3,
    softmax_scale: float = 10.0,
    normalization: str = "overlap",
    return_attention: bool = False,
    *,
    pad_mode: str = "replicate",
    max_attention_bytes: float | None = None,
):
    """Patch-based cross-scale attention, paper eq. 4 (CSNLN's CS-NL module without its embeddings).

    ``Z^{sp x sp}[si,sj] = sum_{g,h} softmax_{g,h}(phi(X^{pxp}[i,j], Y^{pxp}[g,h])) psi(X^{sp x sp}[sg,sh])``,
    then every output pixel is divided by the number of patches that overlap
    on it (``normalization="overlap"``) or by 6 (``"constant6"``, the official
    code).  ``patch_size=1`` is eq. 3 (:func:`pixel_cross_scale_attention`).

    Steps (as in the official code, but the whole batch at once via ``groups=N``):

    1. key patches: the ``p x p`` patches of ``Y`` ('same' zero padding),
       each L2-normalised (norm clamped at 1e-4) -> ``N * h*w`` conv kernels;
    2. scores: ``conv2d`` of the zero-padded query map with those kernels, i.e.
       the dot product of every query patch ``X^{pxp}[i,j]`` with every key
       patch -> ``(N, h*w, Hp, Wp)``; times ``softmax_scale``; softmax over keys;
    3. values: the ``(sp) x (sp)`` patches of ``psi(X)`` at stride ``s``
       (zero padding ``s(p-1)/2``), one per key position ``(g, h)``;
    4. aggregation: ``conv_transpose2d(weights, value patches, stride=s,
       padding=s(p-1)/2)`` pastes, for every query ``(i, j)``, the weighted sum
       of value patches centred on output block ``(si, sj)`` and adds overlaps;
    5. divide by :func:`overlap_count` (or 6), crop the padding away.

    Args:
        query: ``theta(X)``, ``(N, C', H, W)`` float, any range, any ``H, W >= 1``.
        key: ``delta(Y)``, ``(N, C', ceil(H/s), ceil(W/s))`` - compute ``Y`` with
            :func:`bilinear_downscale` (same ``pad_mode``).
        value: ``psi(X)``, ``(N, C, H, W)``.
        scale: ``s`` (>= 1); the output is ``s`` times larger.
        patch_size: ``p``, odd (1, 3 - CSNLN's choice - 5, ...).  Maps smaller than
            ``p`` are fine: patches are zero outside the map.
        softmax_scale: temperature (10 in CSNLN).
        normalization: ``"overlap"`` (divide by the true count, default) or
            ``"constant6"`` (divide by 6 as the released code; meant for ``p = 3``).
        return_attention: also return the attention weights.
        pad_mode: ``"replicate"`` or ``"reflect"``; query and value are padded at
            the bottom/right to a multiple of ``s``, the output is cropped back.
        max_attention_bytes: limit in bytes for scores plus weights; ``None`` =
            half of the free memory; ``math.inf`` = no check.

    Returns:
        ``Z`` ``(N, C, s*H, s*W)``; with ``return_attention`` also the weights
        ``(N, ceil(H/s) ceil(W/s), H, W)`` (key index ``g*w + h``; they sum to 1 over dim 1).

    Raises:
        ValueError: wrong shapes, dtypes or devices; bad ``scale``, ``patch_size``,
            ``softmax_scale``, ``normalization`` or ``pad_mode``.
        AttentionMemoryError: the scores would exceed the memory limit (raised
            before anything large is allocated).

    Source: Mei et al., CVPR 2020, eq. 4 and Sec. 4.1; aggregation and key
    normalisation as in the official ``CrossScaleAttention``.
    """
    patch_size = _check_patch_size(patch_size)
    _check_choice("normalization", normalization, NORMALIZATIONS)
    scale, softmax_scale = _check_cross_scale_inputs(
        f"cross-scale attention (patch {patch_size})", query, key, value, scale, softmax_scale, pad_mode,
        max_attention_bytes,
    )
    n, c_qk, height, width = query.shape
    c_v = value.shape[1]
    h, w = key.shape[-2:]
    query = pad_to_multiple(query, scale, pad_mode)  # (N, C', Hp, Wp), Hp = s*h
    value = pad_to_multiple(value, scale, pad_mode)  # (N, C, Hp, Wp)
    padded_h, padded_w = query.shape[-2:]
    radius = (patch_size - 1) // 2  # LR 'same' padding of p x p patches
    value_kernel = scale * patch_size  # sp
    value_padding = scale * radius  # HR 'same' padding of (sp) x (sp) patches at stride s

    # 1. Key patches Y^{pxp}_{gh} / ||.||, as N*h*w conv kernels.
    keys = _normalized_key_patches(key, patch_size)  # (N, C'p^2, h*w)
    keys = keys.transpose(1, 2).reshape(n * h * w, c_qk, patch_size, patch_size)  # (N*h*w, C', p, p)
    # 2. Scores: every query patch against every key patch of the same image (groups = images).
    scores = F.conv2d(
        query.reshape(1, n * c_qk, padded_h, padded_w), keys, padding=radius, groups=n
    )  # (1, N*h*w, Hp, Wp)
    scores = softmax_scale * scores.reshape(n, h * w, padded_h, padded_w)  # (N, h*w, Hp, Wp), phi
    attention = scores.softmax(dim=1)  # (N, h*w, Hp, Wp), normalised over the keys (g, h)
    # 3. Value patches X^{sp x sp}_{sg,sh}, one per key position, as conv_transpose kernels.
    values = F.unfold(value, value_kernel, stride=scale, padding=value_padding)  # (N, C(sp)^2, h*w)
    values = values.transpose(1, 2).reshape(n * h * w, c_v, value_kernel, value_kernel)  # (N*h*w, C, sp, sp)
    # 4. Paste the weighted value patches around output block (si, sj) and add the overlaps.
    out = F.conv_transpose2d(
        attention.reshape(1, n * h * w, padded_h, padded_w), values,
        stride=scale, padding=value_padding, groups=n,
    )  # (1, N*C, s*Hp, s*Wp)
    out = out.reshape(n, c_v, scale * padded_h, scale * padded_w)  # (N, C, s*Hp, s*Wp)
    # 5. Average the overlaps, crop the padding.
    if normalization == "overlap":
        count = overlap_count(padded_h, padded_w, scale, patch_size, dtype=out.dtype, device=out.device)
        out = out / count  # (N, C, s*Hp, s*Wp)
    else:
        out = out / OFFICIAL_OVERLAP_DIVISOR  # (N, C, s*Hp, s*Wp)
    out = out[..., : scale * height, : scale * width]  # (N, C, sH, sW)
    if return_attention:
        return out, attention[..., :height, :width]  # (N, h*w, H, W)
    return out


# ----------------------------------------------------------------------------------------------
# Module with learned embeddings
# ----------------------------------------------------------------------------------------------


@dataclass
class CrossScaleDetails:
    """The attention weights of a cross-scale attention call, for plots (``return_details=True``).

    Attributes:
        weights: ``(N, h*w, H, W)``: ``weights[n, g*w + k, i, j]`` is what query
            pixel ``(i, j)`` of the ``H x W`` map gives to key ``(g, k)`` of the
            ``h x w = ceil(H/s) x ceil(W/s)`` downscaled map; sums to 1 over dim 1.
        key_size: ``(h, w)``, to reshape dim 1 into the key map.
    """

    weights: torch.Tensor
    key_size: tuple[int, int]


class _CrossScaleEmbeddings(nn.Module):
    """The three 1x1-conv embeddings and the options shared by the cross-scale modules.

    Its ``__init__`` is that of :class:`PixelCrossScaleAttention` and
    :class:`NaiveCrossScaleAttention` (the registry reads their options from
    this signature); :class:`CrossScaleAttention`, which documents the
    options, adds ``patch_size`` and ``normalization``.

    Raises:
        ValueError: a bad option, or ``channels // reduction < 1``.
    """

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        reduction: int = 2,
        softmax_scale: float = 10.0,
        activation: str = "prelu",
        pad_mode: str = "replicate",
        max_attention_bytes: float | None = None,
    ):
        super().__init__()
        channels, reduction = channel_reduction(channels, reduction)
        self.channels = channels
        self.scale = positive_int("scale", scale)
        self.reduction = reduction
        self.softmax_scale = _check_softmax_scale(softmax_scale)
        self.activation = normalize_activation(activation)
        self.pad_mode = choice("pad_mode", pad_mode, PAD_MODES)
        self.max_attention_bytes = optional_bytes(max_attention_bytes)
        embed_channels = channels // reduction
        self.query_embed = embedding(channels, embed_channels, self.activation)  # theta
        self.key_embed = embedding(channels, embed_channels, self.activation)  # delta
        self.value_embed = embedding(channels, channels, self.activation)  # psi

    def _embed_hr_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``theta(X)``, ``delta(Y)`` (``Y`` = the bilinear downscale of ``X``) and ``psi(X)``."""
        check_feature_map(self, x, self.channels)
        query = self.query_embed(x)  # (N, C', H, W), theta(X)
        key = self.key_embed(bilinear_downscale(x, self.scale, self.pad_mode))  # (N, C', h, w), delta(Y)
        value = self.value_embed(x)  # (N, C, H, W), psi(X)
        # The embeddings act pixel by pixel, so embedding then padding (inside the core) equals
        # padding then embedding.
        return query, key, value

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, scale={self.scale}, reduction={self.reduction}, "
            f"softmax_scale={self.softmax_scale}, activation={self.activation!r}, pad_mode={self.pad_mode!r}"
        )


@register_attention(
    "cross_scale", kind="cross_scale", loops="srlib.attention.loops:cross_scale_loops", guarded=True,
    bench={"cross_scale": {"scale": 2, "patch_size": 3}},
)
class CrossScaleAttention(_CrossScaleEmbeddings):
    """CSNLN's cross-scale non-local attention module: ``(N, C, H, W)`` -> ``(N, C, sH, sW)``.

    Data flow (``C' = C // reduction``, ``h, w = ceil(H/s), ceil(W/s)``)::

        x ──> query_embed (1x1 conv C->C' + PReLU) ─────────────────> theta(X)  (N, C', H, W)
        x ──> bilinear_downscale(s) ──> key_embed (C->C' + PReLU) ──> delta(Y)  (N, C', h, w)
        x ──> value_embed (1x1 conv C->C + PReLU) ──────────────────> psi(X)    (N, C, H, W)
        cross_scale_attention(theta(X), delta(Y), psi(X), s, p) ────> Z         (N, C, sH, sW)

    As in the official code, the keys embed the *downscaled* input (downscale,
    then embed).  The output is the attention result only - CSNLN combines it
    with the other branches in its fusion block.

    Args:
        channels: ``C``, feature channels in and out (128 in CSNLN).
        scale: ``s`` (>= 1), the output is ``s`` times larger.
        patch_size: ``p`` of eq. 4, odd (3 in CSNLN; 1 gives eq. 3).
        reduction: ``C' = C // reduction`` channels for queries and keys (2 in CSNLN).
        softmax_scale: softmax temperature (10 in CSNLN).
        normalization: ``"overlap"`` (true overlap count, default) or
            ``"constant6"`` (the official division by 6).
        activation: ``"prelu"`` (CSNLN) or ``"none"`` after each 1x1 conv.
        pad_mode: ``"replicate"`` or ``"reflect"`` padding to a multiple of ``s``
            when ``H`` or ``W`` is not one; the output is cropped back.
        max_attention_bytes: limit in bytes for scores plus weights; ``None`` =
            half of the free memory at every call (see the module docstring).

    Layers (checkpoint keys): ``query_embed``, ``key_embed``, ``value_embed``,
    each ``Sequential(1x1 conv[, PReLU])``.

    Forward ``forward(x, return_details=False)``:
        ``x`` float ``(N, C, H, W)`` (any range, any ``H, W >= 1``) ->
        ``(N, C, s*H, s*W)``; with ``return_details=True`` also a
        :class:`CrossScaleDetails` (weights ``(N, ceil(H/s) ceil(W/s), H, W)``).

    Raises:
        ValueError: bad options (construction), or ``x`` not ``(N, C, H, W)``
            with ``C = channels`` and the module's dtype and device (forward).
        AttentionMemoryError: the scores would exceed the memory limit.

    Source: Mei et al., CVPR 2020, Fig. 2, eq. 4 and Sec. 4.1.
    """

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        patch_size: int = 3,
        reduction: int = 2,
        softmax_scale: float = 10.0,
        normalization: str = "overlap",
        activation: str = "prelu",
        pad_mode: str = "replicate",
        max_attention_bytes: float | None = None,
    ):
        super().__init__(channels, scale, reduction, softmax_scale, activation, pad_mode, max_attention_bytes)
        self.patch_size = _check_patch_size(patch_size)
        self.normalization = choice("normalization", normalization, NORMALIZATIONS)

    def forward(self, x: torch.Tensor, return_details: bool = False):
        query, key, value = self._embed_hr_values(x)  # (N, C', H, W), (N, C', h, w), (N, C, H, W)
        result = cross_scale_attention(
            query, key, value, self.scale, self.patch_size, self.softmax_scale, self.normalization,
            return_details, pad_mode=self.pad_mode, max_attention_bytes=self.max_attention_bytes,
        )
        if return_details:
            out, weights = result  # (N, C, sH, sW), (N, h*w, H, W)
            return out, CrossScaleDetails(weights=weights, key_size=tuple(key.shape[-2:]))
        return result  # (N, C, sH, sW)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, patch_size={self.patch_size}, normalization={self.normalization!r}"


@register_attention(
    "cross_scale_pixel", kind="cross_scale", loops="srlib.attention.loops:pixel_cross_scale_loops", guarded=True,
    bench={"cross_scale_pixel": {"scale": 2}},
)
class PixelCrossScaleAttention(_CrossScaleEmbeddings):
    """Pixel-to-patch cross-scale attention (paper eq. 3): one LR similarity weights one ``s x s`` HR block.

    The embeddings of :class:`CrossScaleAttention` (same layers, same keys)
    around :func:`pixel_cross_scale_attention`, the matrix-product
    implementation of eq. 3 (blocks do not overlap).  Equals
    ``CrossScaleAttention(patch_size=1)`` with the same weights.

    Args:
        channels, scale, reduction, softmax_scale, activation, pad_mode,
        max_attention_bytes: as in :class:`CrossScaleAttention`.

    Forward ``forward(x, return_details=False)``: ``(N, C, H, W)`` ->
    ``(N, C, s*H, s*W)`` (with a :class:`CrossScaleDetails` when asked).

    Raises:
        ValueError: bad options, or ``x`` not ``(N, channels, H, W)`` of the module's dtype and device.
        AttentionMemoryError: the scores would exceed the memory limit.

    Source: Mei et al., CVPR 2020, eq. 3 (= supplementary eq. 3).
    """

    def forward(self, x: torch.Tensor, return_details: bool = False):
        query, key, value = self._embed_hr_values(x)  # (N, C', H, W), (N, C', h, w), (N, C, H, W)
        result = pixel_cross_scale_attention(
            query, key, value, self.scale, self.softmax_scale, return_details,
            pad_mode=self.pad_mode, max_attention_bytes=self.max_attention_bytes,
        )
        if return_details:
            out, weights = result  # (N, C, sH, sW), (N, h*w, H, W)
            return out, CrossScaleDetails(weights=weights, key_size=tuple(key.shape[-2:]))
        return result  # (N, C, sH, sW)


@register_attention(
    "cross_scale_naive", kind="in_scale", loops="srlib.attention.loops:naive_cross_scale_loops", guarded=True,
    bench={"cross_scale_naive": {"scale": 2}},
)
class NaiveCrossScaleAttention(_CrossScaleEmbeddings):
    """Naive cross-scale attention (supplement eq. 2): keys *and values* from the downscaled map.

    ``Z[i,j] = sum_{g,h} softmax_{g,h}(phi(X[i,j], Y[g,h])) psi(Y[g,h])`` with
    ``Y = bilinear_downscale(X, s)``: the output keeps the query's resolution
    ``(N, C, H, W)`` (so its kind is ``"in_scale"``: a model that needs an
    ``s`` times larger map upsamples it) and no HR detail can come back.  The
    attention is :func:`naive_cross_scale_attention`; the layers are those of
    :class:`CrossScaleAttention`, so both have exactly the same parameters.

    Args:
        channels, scale, reduction, softmax_scale, activation, pad_mode,
        max_attention_bytes: as in :class:`CrossScaleAttention`.

    Forward ``forward(x, return_details=False)``:
        ``x`` float ``(N, C, H, W)`` -> ``(N, C, H, W)`` (any ``H, W >= 1``);
        with ``return_details=True`` also a :class:`CrossScaleDetails`.

    Raises:
        ValueError: bad options, or ``x`` not ``(N, channels, H, W)`` of the module's dtype and device.
        AttentionMemoryError: the ``(N, ceil(H/s) ceil(W/s), H, W)`` scores would
            exceed the memory limit.

    Source: Mei et al., CVPR 2020, supplementary file, eq. 2 and Table 1.
    """

    def forward(self, x: torch.Tensor, return_details: bool = False):
        check_feature_map(self, x, self.channels)
        small = bilinear_downscale(x, self.scale, self.pad_mode)  # (N, C, ceil(H/s), ceil(W/s)), Y
        result = naive_cross_scale_attention(
            self.query_embed(x),  # (N, C', H, W), theta(X)
            self.key_embed(small),  # (N, C', h, w), delta(Y)
            self.value_embed(small),  # (N, C, h, w), psi(Y)
            self.softmax_scale, return_details, max_attention_bytes=self.max_attention_bytes,
        )
        if return_details:
            out, weights = result  # (N, C, H, W), (N, h*w, H, W)
            return out, CrossScaleDetails(weights=weights, key_size=tuple(small.shape[-2:]))
        return result  # (N, C, H, W)
