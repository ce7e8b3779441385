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
* **Implementation.**  The official code computes eq. 4 with one ``conv2d``
  (the key patches as kernels: matching) and one ``conv_transpose2d`` (the
  value patches as kernels: pasting), one image at a time.  Here that
  formulation is ``implementation="conv"``, the whole batch at once as one
  grouped ``conv2d`` / ``conv_transpose2d``; it is the one notebook 02
  explains.  ``implementation="matmul"`` computes the same sums as matrix
  products over chunks of queries (unfolded query patches times normalised
  key patches, softmax, weights times value patches, ``F.fold`` back with
  stride ``s``), so that only one chunk of scores exists at a time.  The
  default, ``implementation="auto"``, picks one per call
  (:func:`cross_scale_implementation`): the convolutions when the whole score
  map is small (at most :data:`AUTO_CONV_BYTES_PER_IMAGE` per image and
  :data:`AUTO_CONV_BYTES` in all, e.g. CSNLN's 48 x 48 tiles and 24 x 24
  training patches, where they are up to 2x faster on a CPU), the chunked
  products otherwise (at 150 x 150 with 64 channels they are 2.4x faster and
  need a tenth of the memory, ``docs/results/README.md``).
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
float32, 8 GiB with the softmax weights).  The functions that hold it whole
(eq. 3, supplement eq. 2, eq. 4 with ``implementation="conv"``) estimate it
first (:func:`cross_scale_attention_bytes`) and raise :class:`AttentionMemoryError` (shared with
:mod:`srlib.attention.non_local`) before allocating anything when it exceeds
``max_attention_bytes`` - by default ``MEMORY_FRACTION`` (half) of the memory
free on the input's device (``/proc/meminfo`` MemAvailable, or
``torch.cuda.mem_get_info``); ``math.inf`` turns the guard off.
The cure is tiled inference, e.g. ``srlib eval --tile 256``.
Eq. 4 with ``implementation="matmul"`` holds one chunk of queries'
scores at a time (:data:`CHUNK_QUERIES` queries): the same limit picks the chunk
(:func:`cross_scale_chunk_size`) instead of refusing the map, and it refuses
only when not even one query's scores fit.  Under autograd every chunk's
softmax weights are kept for the backward pass, so training still holds one
whole weight map (counted by the guard), as does ``return_attention``.
The default ``implementation="auto"`` takes the convolutions only for maps
whose whole score map is small and fits the limit, so it refuses exactly when
``"matmul"`` would.
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
    "AUTO_CONV_BYTES",
    "AUTO_CONV_BYTES_PER_IMAGE",
    "CHUNK_BYTES",
    "CHUNK_QUERIES",
    "IMPLEMENTATIONS",
    "MIN_CHUNK",
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
    "cross_scale_chunk_size",
    "cross_scale_implementation",
    "cross_scale_multiply_adds",
    "naive_cross_scale_attention",
    "naive_cross_scale_multiply_adds",
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
# The implementations of eq. 4 (cross_scale_attention): "auto" (one of the two others, chosen per
# call by cross_scale_implementation), chunked matrix products, or conv2d / conv_transpose2d over
# the whole map (the official code's formulation).
IMPLEMENTATIONS = ("auto", "matmul", "conv")
# "auto" takes the convolutions when the whole map's scores and weights need at most this per
# image (CSNLN's 32 channels, x2, 1 and 2 threads: conv 0.5x the matmul time at 24 x 24 (0.6 MiB),
# equal at 48 x 48 (10 MiB), 1.5x at 64 x 64 (32 MiB); training steps alike) ...
AUTO_CONV_BYTES_PER_IMAGE = 16 * 2**20
# ... and at most this in all (a large batch of small maps keeps the memory bound of the matmul path).
AUTO_CONV_BYTES = 256 * 2**20
# Matmul path, when no chunk size is given: this many queries per chunk (on one CPU core 512 was
# fastest at S = 100, 150 and 200: the score block stays in cache, the products stay large) ...
CHUNK_QUERIES = 512
# ... fewer when one chunk's score block would exceed these bytes (the softmax weights and value
# patches come on top, see cross_scale_chunk_size) ...
CHUNK_BYTES = 64 * 2**20
# ... but at least this many queries, so that the products stay large.
MIN_CHUNK = 64


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
    pad_mode: str, max_attention_bytes: float | None, guard_full_map: bool = True,
) -> tuple[int, float]:
    """Checks shared by eq. 3 and eq. 4: shapes, ``scale``, ``softmax_scale``, ``pad_mode``, memory.

    With ``guard_full_map`` the whole ``(N, h*w, Hp, Wp)`` score map is guarded
    (:func:`_guard_memory`); the chunked matrix-product path of eq. 4 guards its
    chunks itself (:func:`cross_scale_chunk_size`) and passes False.
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
    if guard_full_map:
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
    """Peak bytes of the whole-map cross-scale paths: scores and softmax weights, ``(N, h*w, Hp, Wp)`` each.

    The whole-map paths are :func:`pixel_cross_scale_attention` and :func:`cross_scale_attention`
    with ``implementation="conv"``; the default matrix-product path holds one
    chunk at a time (:func:`cross_scale_chunk_size`).

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


def _check_chunk_size(chunk_size) -> int | None:
    if chunk_size is None:
        return None
    return positive_int("chunk_size", chunk_size)


def cross_scale_chunk_size(
    batch: int,
    height: int,
    width: int,
    scale: int,
    patch_size: int,
    value_channels: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    max_attention_bytes: float | None = None,
    chunk_size: int | None = None,
    whole_weight_maps: int = 0,
) -> int:
    """How many queries one chunk of the matrix-product eq. 4 takes: the most that fit the memory limit.

    One chunk of ``q`` queries holds, for each of the ``N`` images, its scores
    and softmax weights (``2 q h*w`` numbers) and its weighted value patches
    with their folded copy (at most ``2 q C (sp)^2``), so
    ``q * N * (2 h*w + 2 C (sp)^2) * itemsize`` bytes.  On top of that,
    ``whole_weight_maps`` whole ``(N, h*w, Hp, Wp)`` weight maps may be held
    (1 when autograd records the call - every chunk's softmax weights are kept
    for the backward pass - and 1 more with ``return_attention``).

    The chunk is ``chunk_size`` when given, else :data:`CHUNK_QUERIES`, or
    fewer when their scores would exceed :data:`CHUNK_BYTES` (but at least
    :data:`MIN_CHUNK`); then it is lowered to what the limit leaves, and it is
    at most ``Hp*Wp``.

    Args:
        batch: ``N``.
        height, width: the query map size ``H, W`` (before padding to a multiple of ``s``).
        scale: ``s``.
        patch_size: ``p`` (odd).
        value_channels: ``C`` of ``psi(X)``.
        dtype, device: of the scores (those of the query).
        max_attention_bytes: the limit in bytes (``None``: half of the memory
            free on ``device``; ``math.inf``: none).
        chunk_size: an upper bound in queries, or None.
        whole_weight_maps: how many whole weight maps are held besides the chunk (0, 1 or 2).

    Returns:
        The chunk, an ``int`` in ``1 .. Hp*Wp``.

    Raises:
        ValueError: bad sizes or options.
        AttentionMemoryError: not even one query fits beside the whole weight
            maps; ``needed_bytes`` is what one query would need.
    """
    batch = positive_int("batch", batch)
    height = positive_int("height", height)
    width = positive_int("width", width)
    scale = positive_int("scale", scale)
    patch_size = _check_patch_size(patch_size)
    value_channels = positive_int("value_channels", value_channels)
    chunk_size = _check_chunk_size(chunk_size)
    whole_weight_maps = positive_int("whole_weight_maps", whole_weight_maps, minimum=0)
    h, w = math.ceil(height / scale), math.ceil(width / scale)
    queries = scale * h * scale * w  # Hp * Wp
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_query = batch * (2 * h * w + 2 * value_channels * (scale * patch_size) ** 2) * itemsize
    fixed = whole_weight_maps * batch * h * w * queries * itemsize
    if chunk_size is None:
        chunk_size = min(CHUNK_QUERIES, max(CHUNK_BYTES // (batch * h * w * itemsize), MIN_CHUNK))
    chunk = min(chunk_size, queries)
    limit = memory_limit(device, max_attention_bytes)
    if limit is not None and fixed + chunk * per_query > limit[0]:
        chunk = min(chunk, int((limit[0] - fixed) // per_query)) if limit[0] > fixed else 0
        if chunk < 1:
            kept = ""
            if whole_weight_maps:
                kept = (
                    f" beside {whole_weight_maps} whole ({batch}, {h * w}, {scale * h}, {scale * w}) weight map(s) "
                    "(kept for the backward pass when autograd records the call, and returned with "
                    "return_attention)"
                )
            dtype_name = str(dtype).replace("torch.", "")
            guard_memory(
                fixed + per_query, device, max_attention_bytes,
                f"cross-scale attention (patch {patch_size}, matmul, scale {scale}) on {batch} feature map(s) "
                f"of {height}x{width} pixels",
                "Even a chunk of one query does not fit: use tiled inference (`srlib eval --tile T` with a "
                "small enough T), a smaller input or batch, torch.no_grad() for inference, or raise the limit "
                "with max_attention_bytes.",
                holding=f" for the {dtype_name} scores, weights and value patches of a single query{kept}",
            )
    return chunk


def cross_scale_implementation(
    batch: int,
    height: int,
    width: int,
    scale: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    max_attention_bytes: float | None = None,
    chunk_size: int | None = None,
) -> str:
    """What ``implementation="auto"`` runs for these maps: ``"conv"`` or ``"matmul"``.

    ``"conv"`` when no ``chunk_size`` is asked for and the whole score map and
    its weights (:func:`cross_scale_attention_bytes`) need at most
    :data:`AUTO_CONV_BYTES_PER_IMAGE` per image, at most :data:`AUTO_CONV_BYTES`
    in all, and fit the memory limit; ``"matmul"`` otherwise.  Small maps are
    where the two convolutions beat the chunked products (fewer, larger
    kernels; no ``F.fold`` per chunk); large maps are where the chunked
    products win in time and memory.  Both compute the same function.

    Args:
        batch: ``N``.
        height, width: the query map size ``H, W`` (before padding to a multiple of ``s``).
        scale: ``s``.
        dtype, device: of the scores (those of the query).
        max_attention_bytes: the memory limit in bytes (``None``: half of the
            memory free on ``device``; ``math.inf``: none).
        chunk_size: the ``chunk_size`` option (any value selects ``"matmul"``).

    Returns:
        ``"conv"`` or ``"matmul"``.

    Raises:
        ValueError: non-positive sizes, scale or chunk size.
    """
    if _check_chunk_size(chunk_size) is not None:
        return "matmul"
    needed = cross_scale_attention_bytes(batch, height, width, scale, dtype)
    if needed > AUTO_CONV_BYTES or needed > batch * AUTO_CONV_BYTES_PER_IMAGE:
        return "matmul"
    limit = memory_limit(device, max_attention_bytes)
    return "matmul" if limit is not None and needed > limit[0] else "conv"


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
    implementation: str = "auto",
    chunk_size: int | None = None,
):
    """Patch-based cross-scale attention, paper eq. 4 (CSNLN's CS-NL module without its embeddings).

    ``Z^{sp x sp}[si,sj] = sum_{g,h} softmax_{g,h}(phi(X^{pxp}[i,j], Y^{pxp}[g,h])) psi(X^{sp x sp}[sg,sh])``,
    then every output pixel is divided by the number of patches that overlap
    on it (``normalization="overlap"``) or by 6 (``"constant6"``, the official
    code).  ``patch_size=1`` is eq. 3 (:func:`pixel_cross_scale_attention`).

    Both implementations start from the same patches: the ``p x p`` patches of
    ``Y`` ('same' zero padding), each L2-normalised (norm clamped at 1e-4), and
    the ``(sp) x (sp)`` patches of ``psi(X)`` at stride ``s`` (zero padding
    ``s(p-1)/2``), one per key position ``(g, h)``.

    ``implementation="auto"`` (default) runs one of the two below, chosen per
    call by :func:`cross_scale_implementation`: ``"conv"`` when the whole score
    map is small (faster there), ``"matmul"`` otherwise or when ``chunk_size``
    is given.

    ``implementation="matmul"`` - matrix products over chunks of at
    most ``chunk_size`` queries (row-major positions of the padded query map;
    a chunk may start and end inside a row):

    1. unfold the chunk's ``p x p`` query patches -> ``(N, chunk, C'p^2)``;
    2. scores: ``(chunk, C'p^2) x (C'p^2, h*w)`` product with the normalised
       key patches, times ``softmax_scale``; softmax over the keys;
    3. aggregation: ``(chunk, h*w) x (h*w, C (sp)^2)`` product of the weights
       with the value patches: one weighted ``(sp) x (sp)`` patch per query;
    4. fold the patches back with stride ``s`` (``F.fold``), adding overlaps,
       into the output, which holds the sum of all chunks.

    Only one chunk's ``(N, chunk, h*w)`` scores and weights exist at a time,
    so the memory is bounded by the chunk instead of the whole score map; the
    chunk is chosen to fit the memory limit (:func:`cross_scale_chunk_size`).

    ``implementation="conv"`` - the convolution formulation of the official
    code (the one notebook 02 explains), the whole batch at once via ``groups=N``:
    ``conv2d`` of the zero-padded query map with the key patches as kernels
    gives every score ``(N, h*w, Hp, Wp)`` at once; softmax over the keys;
    ``conv_transpose2d(weights, value patches, stride=s, padding=s(p-1)/2)``
    pastes the weighted value patches centred on every output block
    ``(si, sj)`` and adds the overlaps.  Holds the whole score map (guarded by
    :func:`cross_scale_attention_bytes`).

    Both then divide by :func:`overlap_count` (or 6) and crop the padding away;
    they compute the same function (equal up to rounding, tested in float64).

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
        return_attention: also return the attention weights (the whole map:
            the matmul path then stores it too).
        pad_mode: ``"replicate"`` or ``"reflect"``; query and value are padded at
            the bottom/right to a multiple of ``s``, the output is cropped back.
        max_attention_bytes: memory limit in bytes (``None`` = half of the free
            memory; ``math.inf`` = no check).  ``"conv"``: for the whole score
            map and weights; ``"matmul"``: for one chunk's scores, weights and
            value patches, plus the whole weight map when it is kept (autograd,
            ``return_attention``) - the chunk shrinks to fit; ``"auto"``: takes
            ``"conv"`` only when its whole map fits.
        implementation: ``"auto"`` (default: the faster of the two for the
            map's size), ``"matmul"`` (chunked matrix products) or ``"conv"``
            (``conv2d`` / ``conv_transpose2d`` over the whole map).
        chunk_size: ``"matmul"`` (and ``"auto"``, which it then sends to
            ``"matmul"``) only: at most this many queries per chunk
            (``None``: :data:`CHUNK_QUERIES`, fewer for very large maps, see
            :func:`cross_scale_chunk_size`); the memory limit may lower it.  Any
            value >= 1, it need not divide ``Hp*Wp``.

    Returns:
        ``Z`` ``(N, C, s*H, s*W)``; with ``return_attention`` also the weights
        ``(N, ceil(H/s) ceil(W/s), H, W)`` (key index ``g*w + h``; they sum to 1 over dim 1).

    Raises:
        ValueError: wrong shapes, dtypes or devices; bad ``scale``, ``patch_size``,
            ``softmax_scale``, ``normalization``, ``pad_mode``, ``implementation``
            or ``chunk_size``.
        AttentionMemoryError: ``"conv"``: the score map would exceed the memory
            limit; ``"matmul"`` and ``"auto"``: not even one query's scores fit
            (with the whole weight map where it is kept).  Raised before
            anything large is allocated.

    Source: Mei et al., CVPR 2020, eq. 4 and Sec. 4.1; aggregation and key
    normalisation as in the official ``CrossScaleAttention``
    (SHI-Labs/Cross-Scale-Non-Local-Attention, ``src/model/attention.py``).
    """
    patch_size = _check_patch_size(patch_size)
    _check_choice("normalization", normalization, NORMALIZATIONS)
    _check_choice("implementation", implementation, IMPLEMENTATIONS)
    chunk_size = _check_chunk_size(chunk_size)
    what = f"cross-scale attention (patch {patch_size}, {implementation})"
    scale, softmax_scale = _check_cross_scale_inputs(
        what, query, key, value, scale, softmax_scale, pad_mode, max_attention_bytes,
        guard_full_map=implementation == "conv",  # "auto" takes "conv" only where its whole map fits
    )
    height, width = query.shape[-2:]
    if implementation == "auto":
        implementation = cross_scale_implementation(
            query.shape[0], height, width, scale, query.dtype, query.device, max_attention_bytes, chunk_size
        )
    query = pad_to_multiple(query, scale, pad_mode)  # (N, C', Hp, Wp), Hp = s*h
    value = pad_to_multiple(value, scale, pad_mode)  # (N, C, Hp, Wp)
    padded_h, padded_w = query.shape[-2:]
    if implementation == "conv":
        summed, attention = _cross_scale_conv(query, key, value, scale, patch_size, softmax_scale)
    else:
        records_graph = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        chunk = cross_scale_chunk_size(
            query.shape[0], height, width, scale, patch_size, value.shape[1], query.dtype, query.device,
            max_attention_bytes=max_attention_bytes, chunk_size=chunk_size,
            whole_weight_maps=int(records_graph) + int(return_attention),
        )
        summed, attention = _cross_scale_matmul(
            query, key, value, scale, patch_size, softmax_scale, chunk, return_attention
        )  # (N, C, s*Hp, s*Wp), (N, h*w, Hp, Wp) or None
    # Average the overlaps, crop the padding.
    if normalization == "overlap":
        count = overlap_count(padded_h, padded_w, scale, patch_size, dtype=summed.dtype, device=summed.device)
        out = summed / count  # (N, C, s*Hp, s*Wp)
    else:
        out = summed / OFFICIAL_OVERLAP_DIVISOR  # (N, C, s*Hp, s*Wp)
    out = out[..., : scale * height, : scale * width]  # (N, C, sH, sW)
    if return_attention:
        return out, attention[..., :height, :width]  # (N, h*w, H, W)
    return out


def _cross_scale_conv(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: int, patch_size: int, softmax_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4 as one ``conv2d`` (matching) and one ``conv_transpose2d`` (pasting), before the overlap division.

    ``query`` ``(N, C', Hp, Wp)`` and ``value`` ``(N, C, Hp, Wp)`` already padded
    to a multiple of ``s``, ``key`` ``(N, C', h, w)`` with ``Hp, Wp = s*h, s*w``
    -> the overlapped sum ``(N, C, s*Hp, s*Wp)`` and the weights ``(N, h*w, Hp, Wp)``.

    Source: the official ``CrossScaleAttention.forward`` (one image at a time
    there; here all images at once through ``groups=N``).
    """
    n, c_qk, padded_h, padded_w = query.shape
    c_v = value.shape[1]
    h, w = key.shape[-2:]
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
    return out.reshape(n, c_v, scale * padded_h, scale * padded_w), attention  # (N, C, s*Hp, s*Wp)


def _row_pieces(start: int, stop: int, width: int):
    """Split the row-major positions ``start .. stop-1`` of a ``width``-wide grid into rectangles.

    Yields ``(offset, row, column, rows, columns)``: ``rows x columns`` positions
    whose top-left one is ``(row, column)``, the ``offset``-th of the range.  At
    most three pieces: the end of a first partial row, whole rows, the start of
    a last partial row.
    """
    offset = 0
    position = start
    while position < stop:
        row, column = divmod(position, width)
        if column == 0 and stop - position >= width:  # whole rows
            rows, columns = (stop - position) // width, width
        else:  # a partial row
            rows, columns = 1, min(width - column, stop - position)
        yield offset, row, column, rows, columns
        offset += rows * columns
        position += rows * columns


def _cross_scale_matmul(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: int, patch_size: int,
    softmax_scale: float, chunk: int, return_attention: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eq. 4 as matrix products over chunks of ``chunk`` queries, before the overlap division.

    Inputs as :func:`_cross_scale_conv` (padded to a multiple of ``s``) ->
    the overlapped sum ``(N, C, s*Hp, s*Wp)`` and, with ``return_attention``,
    the weights ``(N, h*w, Hp, Wp)`` (else None).
    """
    n, _, padded_h, padded_w = query.shape
    c_v = value.shape[1]
    h, w = key.shape[-2:]
    radius = (patch_size - 1) // 2  # LR 'same' padding of p x p patches
    value_kernel = scale * patch_size  # sp
    queries = F.unfold(query, patch_size, padding=radius)  # (N, C'p^2, Hp*Wp), X^{pxp}_{ij}
    keys = softmax_scale * _normalized_key_patches(key, patch_size)  # (N, C'p^2, h*w), phi's factor included
    values = F.unfold(value, value_kernel, stride=scale, padding=scale * radius)  # (N, C(sp)^2, h*w), X^{sp x sp}
    # Output with a margin of s(p-1)/2 pixels on every side, so that every pasted patch fits whole.
    margin = scale * radius
    summed = value.new_zeros(n, c_v, scale * padded_h + 2 * margin, scale * padded_w + 2 * margin)
    attention = value.new_empty(n, h * w, padded_h * padded_w) if return_attention else None  # (N, h*w, Hp*Wp)
    for start in range(0, padded_h * padded_w, chunk):
        stop = min(start + chunk, padded_h * padded_w)
        scores = torch.bmm(queries[:, :, start:stop].transpose(1, 2), keys)  # (N, chunk, h*w), phi(X^{pxp}, Y^{pxp})
        weights = scores.softmax(dim=-1)  # (N, chunk, h*w), eq. 4 softmax over (g, h)
        del scores
        if attention is not None:
            attention[:, :, start:stop] = weights.transpose(1, 2)  # (N, h*w, chunk)
        patches = torch.bmm(values, weights.transpose(1, 2))  # (N, C(sp)^2, chunk), eq. 4 sum over (g, h)
        del weights
        for offset, row, column, rows, columns in _row_pieces(start, stop, padded_w):
            pasted = F.fold(
                patches[:, :, offset : offset + rows * columns],
                output_size=(scale * (rows + patch_size - 1), scale * (columns + patch_size - 1)),
                kernel_size=value_kernel, stride=scale,
            )  # (N, C, s(rows + p - 1), s(columns + p - 1)): the patches pasted and overlaps added
            summed[
                :, :, scale * row : scale * (row + rows + patch_size - 1),
                scale * column : scale * (column + columns + patch_size - 1),
            ] += pasted  # query (i, j)'s patch starts at output row s*i - s(p-1)/2, i.e. s*i in the margin frame
    summed = summed[:, :, margin : margin + scale * padded_h, margin : margin + scale * padded_w]  # (N, C, sHp, sWp)
    if attention is not None:
        attention = attention.reshape(n, h * w, padded_h, padded_w)  # (N, h*w, Hp, Wp)
    return summed, attention


# ----------------------------------------------------------------------------------------------
# Arithmetic (the ``multiply_adds=`` declarations of the registered modules)
# ----------------------------------------------------------------------------------------------


def cross_scale_multiply_adds(shape: tuple[int, int, int, int], options: dict) -> int:
    """Multiply-adds of one :class:`CrossScaleAttention` forward pass on an ``(N, C, H, W)`` map.

    With ``C' = C // reduction``, ``h, w = ceil(H/s), ceil(W/s)`` and the map
    padded to ``Hp, Wp = s h, s w`` (the queries eq. 4 runs over before the
    output is cropped back):

    * embeddings, three 1x1 convolutions: ``theta`` ``N H W C C'``, ``delta``
      on the downscaled map ``N h w C C'``, ``psi`` ``N H W C^2``;
    * scores, every ``p x p`` query patch against every normalised key patch:
      ``N Hp Wp hw C' p^2`` (eq. 4, ``phi``);
    * pasting, every query's ``(sp) x (sp)`` output patch as the weighted sum
      of the ``hw`` value patches: ``N Hp Wp hw C (sp)^2`` (eq. 4, the sum).

    The same for both implementations (they compute the same products).  The
    bilinear downscale, the key norms, the softmax, the overlap additions and
    the division are not counted.  ``patch_size=1`` gives eq. 3.

    Source: Mei et al., CVPR 2020, eq. 3-4; layer sizes from Sec. 4.1 and the official code.
    """
    n, c, height, width = shape
    scale, patch = options["scale"], options.get("patch_size", 1)
    c_qk = c // options["reduction"]
    h, w = math.ceil(height / scale), math.ceil(width / scale)
    queries = (scale * h) * (scale * w)  # Hp Wp
    embeddings = n * (height * width * (c * c_qk + c * c) + h * w * c * c_qk)  # theta, psi on X; delta on Y
    scores = n * queries * h * w * c_qk * patch**2  # phi(X^{pxp}, Y^{pxp})
    pasting = n * queries * h * w * c * (scale * patch) ** 2  # sum over (g, h) of weights x psi(X^{sp x sp})
    return embeddings + scores + pasting


def naive_cross_scale_multiply_adds(shape: tuple[int, int, int, int], options: dict) -> int:
    """Multiply-adds of one :class:`NaiveCrossScaleAttention` forward pass on an ``(N, C, H, W)`` map.

    With ``C' = C // reduction`` and ``h, w = ceil(H/s), ceil(W/s)``: the
    embeddings ``theta`` on ``X`` (``N H W C C'``), ``delta`` and ``psi`` on the
    downscaled ``Y`` (``N h w (C C' + C^2)``); then every query pixel against
    every key pixel, ``N H W hw C'`` for the scores and ``N H W hw C`` for the
    weighted values (supplement eq. 2).  The downscale and the softmax are not
    counted.

    Source: Mei et al., CVPR 2020, supplementary eq. 2.
    """
    n, c, height, width = shape
    scale = options["scale"]
    c_qk = c // options["reduction"]
    keys = math.ceil(height / scale) * math.ceil(width / scale)  # h w
    embeddings = n * (height * width * c * c_qk + keys * (c * c_qk + c * c))
    return embeddings + n * height * width * keys * (c_qk + c)


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
    bench={
        # The two implementations named (the default "auto" would switch between them with S).
        "cross_scale": {"scale": 2, "patch_size": 3, "implementation": "matmul"},
        "cross_scale_conv": {"scale": 2, "patch_size": 3, "implementation": "conv"},
    },
    # Besides the default (which takes "conv" on the contract's small maps): the matmul path, in
    # several chunks that start inside rows.
    test_options=[{"chunk_size": 7}],
    multiply_adds=cross_scale_multiply_adds,
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
        max_attention_bytes: memory limit in bytes (``None`` = half of the free
            memory at every call, see the module docstring): for the whole score
            map with ``"conv"``, for one chunk with ``"matmul"``.
        implementation: ``"auto"`` (default: ``"conv"`` for small maps, where
            it is faster, ``"matmul"`` otherwise, see
            :func:`cross_scale_implementation`), ``"matmul"`` (chunked matrix
            products, memory bounded by one chunk) or ``"conv"`` (``conv2d`` /
            ``conv_transpose2d`` over the whole map, as the official code); the
            same function, see :func:`cross_scale_attention`.  Not part of the
            checkpoint: change it at any time through the attribute of the same name.
        chunk_size: ``"matmul"`` and ``"auto"`` (which it then sends to
            ``"matmul"``) only: at most this many queries per chunk
            (``None``: chosen by :func:`cross_scale_chunk_size` from the map and the memory limit).

    Layers (checkpoint keys): ``query_embed``, ``key_embed``, ``value_embed``,
    each ``Sequential(1x1 conv[, PReLU])``.

    Forward ``forward(x, return_details=False)``:
        ``x`` float ``(N, C, H, W)`` (any range, any ``H, W >= 1``) ->
        ``(N, C, s*H, s*W)``; with ``return_details=True`` also a
        :class:`CrossScaleDetails` (weights ``(N, ceil(H/s) ceil(W/s), H, W)``).

    Raises:
        ValueError: bad options (construction), or ``x`` not ``(N, C, H, W)``
            with ``C = channels`` and the module's dtype and device (forward).
        AttentionMemoryError: ``"conv"``: the score map would exceed the memory
            limit; ``"matmul"`` and ``"auto"``: not even a chunk of one query fits.

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
        implementation: str = "auto",
        chunk_size: int | None = None,
    ):
        super().__init__(channels, scale, reduction, softmax_scale, activation, pad_mode, max_attention_bytes)
        self.patch_size = _check_patch_size(patch_size)
        self.normalization = choice("normalization", normalization, NORMALIZATIONS)
        self.implementation = choice("implementation", implementation, IMPLEMENTATIONS)
        self.chunk_size = _check_chunk_size(chunk_size)

    @property
    def memory_guarded(self) -> bool:
        """Whether a large map is refused: ``"conv"`` holds the whole score map; ``"matmul"`` fits its chunk instead.

        The matrix-product path refuses only when not even one query's scores fit
        (:func:`cross_scale_chunk_size`), so under the default limit it runs any
        map that the memory of its inputs and output allows; ``"auto"`` sends
        every map whose score map does not fit to that path.
        """
        return self.implementation == "conv"

    def forward(self, x: torch.Tensor, return_details: bool = False):
        query, key, value = self._embed_hr_values(x)  # (N, C', H, W), (N, C', h, w), (N, C, H, W)
        result = cross_scale_attention(
            query, key, value, self.scale, self.patch_size, self.softmax_scale, self.normalization,
            return_details, pad_mode=self.pad_mode, max_attention_bytes=self.max_attention_bytes,
            implementation=self.implementation, chunk_size=self.chunk_size,
        )
        if return_details:
            out, weights = result  # (N, C, sH, sW), (N, h*w, H, W)
            return out, CrossScaleDetails(weights=weights, key_size=tuple(key.shape[-2:]))
        return result  # (N, C, sH, sW)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, patch_size={self.patch_size}, normalization={self.normalization!r}, "
            f"implementation={self.implementation!r}"
        )


@register_attention(
    "cross_scale_pixel", kind="cross_scale", loops="srlib.attention.loops:pixel_cross_scale_loops", guarded=True,
    bench={"cross_scale_pixel": {"scale": 2}},
    multiply_adds=cross_scale_multiply_adds,  # patch_size 1: eq. 3
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
    multiply_adds=naive_cross_scale_multiply_adds,
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
