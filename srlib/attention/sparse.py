"""Non-Local Sparse Attention (NLSA): non-local attention restricted to hash buckets.

Source: Y. Mei, Y. Fan, Y. Zhou, "Image Super-Resolution with Non-Local Sparse
Attention", CVPR 2021 (NLSN), and its supplementary file (Sec. 2: time and
memory against dense non-local attention; Sec. 3: per-round attention maps).
Official code: github.com/HarukiYqM/Non-Local-Sparse-Attention.

The idea.  Dense non-local attention (:mod:`srlib.attention.non_local`) lets
every one of the ``L = H*W`` positions look at all ``L`` positions, which costs
``L^2``.  Most of those weights are tiny: a softmax is dominated by the few
keys most similar to the query.  NLSA first groups positions whose embeddings
point in similar directions (spherical LSH, :mod:`srlib.attention.lsh`) and
lets each query attend only inside its group::

    codes   = LSH(k)                       per round r = 1..R, b buckets
    order   = stable sort of positions by code
    chunks  = the sorted sequence cut into runs of m positions (m = 144)
    keys    = own chunk + previous chunk + next chunk (cyclic): 3m keys per query
    out_r   = softmax over those keys of (q . k_hat) times the values
    out     = sum_r softmax_r(lse_r) out_r      (lse_r: log-normaliser of round r)

so the cost is ``R * L * 3m`` instead of ``L^2``.  A round can miss a good
match that fell into another bucket; several rounds with independent hashes
make that unlikely, and the weights ``softmax_r(lse_r)`` favour the round whose
keys matched best.

Similarity.  As in the official code, keys are L2-normalised and queries are
not: ``s(q, k) = q . k / max(||k||, 5e-5)`` (5e-5 is the ``eps`` of the
official ``F.normalize``), with no ``1/sqrt(d)`` factor and no self-mask (a
position may attend to itself; Reformer masks it because its queries equal
its keys, NLSN does not).  Why normalise the keys: a dot product grows with
the key's norm, so one key of large norm would win the softmax of every query
no matter its direction, while the hash, which only looks at angles, groups
vectors regardless of their norms - their dot products would not be
comparable inside a bucket.  With unit keys the score is ``||q|| cos(q, k)``:
it ranks keys by angle, exactly what the hash groups by, and the query's norm
acts as a per-query temperature (a long query makes a peaked softmax).

Where this module differs from the official code, and why:

* **Tiny maps.**  The official bucket rule ``b = min(L//144 + (L//144) % 2, 128)``
  gives 0 buckets for ``L < 144`` and crashes; here ``b`` is at least 2
  (:func:`srlib.attention.lsh.bucket_count`), and every count can be overridden.
* **Padding.**  When ``L`` is not a multiple of the chunk size the official
  code pads the sorted sequence by repeating its last elements, unmasked, so
  those keys count twice; here the padding is masked and gets zero weight.
* **Few chunks.**  With fewer than 3 chunks the official code's own /
  previous / next chunks coincide and keys are repeated (with 2 chunks the
  other chunk counts twice); here each chunk sees every distinct chunk once.
  With one chunk (``L <= chunk_size``) NLSA is exactly dense attention.
* **Ties.**  The sort is stable (equal codes keep position order); the
  official ``torch.sort`` is not, so the chunk edges inside a bucket vary.
* **Randomness.**  The official code draws fresh rotations from the global RNG
  at every forward, at test time too, so two passes on the same image differ
  (by about 1e-2 in the output).  Here rotations come from an explicit CPU
  generator or seed (see :class:`NonLocalSparseAttention` for the module's policy).

Both implementations process the whole batch at once and share one set of
rotations across the images of a batch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn

from srlib.attention._common import (
    channel_reduction,
    check_feature_map,
    check_map,
    check_query_key_value,
    choice,
    embedding,
    normalize_activation,
    positive_int,
)
from srlib.attention.lsh import (
    DEFAULT_CHUNK_SIZE,
    HASHINGS,
    SUPERBIT_MODES,
    bucket_count,
    combine_rounds,
    cpu_generator,
    gather_neighbour_chunks,
    lsh_codes,
    merge_chunks,
    neighbour_chunk_offsets,
    projection_buckets,
    softmax_with_logsumexp,
    sort_by_code,
    sort_positions,
    spherical_lsh,
    split_into_chunks,
    unsort_positions,
)
from srlib.attention.non_local import AttentionDetails, non_local_attention
from srlib.attention.registry import register_attention

__all__ = [
    "KEY_NORM_EPS",
    "LEARNED_FORMS",
    "ROUND_WEIGHTINGS",
    "DenseMatchAttention",
    "NonLocalSparseAttention",
    "SparseAttentionDetails",
    "non_local_sparse_attention",
    "normalize_keys",
    "readable_sparse_attention",
]

#: Forms of the learned score term ``s_l`` (see :mod:`srlib.attention.learnable`).
LEARNED_FORMS = ("none", "paper", "official")
#: How the hash rounds are combined: NLSN's / DLSN code's ``softmax_r(lse_r)``, or DLSN's eq. 18.
ROUND_WEIGHTINGS = ("logsumexp", "score_sum")
# Lower bound of a key's L2 norm before dividing by it (``eps`` of ``F.normalize`` in the NLSN code).
KEY_NORM_EPS = 5e-5
# Score entries (queries x keys) computed at once: 2**20 is 4 MiB in float32. The chunks of one image and round
# are attended in blocks of about this size (at least one chunk, at most all of them, per block),
# so no tensor of all the scores of a round exists.
_BLOCK_SCORE_ENTRIES = 2**20
_LOG2_E = 1.0 / math.log(2.0)  # log2(e): exp(s) = 2^(s log2(e))
_LN_2 = math.log(2.0)
# Largest query norm ||log2(e) q|| for which the softmax needs no shift: with unit keys every base-2 score lies in
# [-bound, bound], so 2^s' neither overflows nor leaves the normal range (float32: 2^-126 .. 2^128).
_UNSHIFTED_BOUND = {torch.float32: 64.0, torch.float64: 512.0}


@dataclass
class SparseAttentionDetails:
    """What happened inside :func:`non_local_sparse_attention`, for plots and checks.

    Attributes:
        codes: ``(N, R, H, W)`` int64 bucket codes in ``[0, n_buckets)`` (no
            round offsets): ``codes[n, r, i, j]`` is pixel ``(i, j)``'s bucket in round ``r``.
        round_outputs: ``(N, R, C_v, H, W)`` attention output of each round.
        round_weights: ``(N, R, H, W)`` weight of each round in the final sum,
            ``softmax_r(lse_r)``; sums to 1 over ``R``.
        round_logsumexp: ``(N, R, H, W)`` ``lse_r``, log of the sum of
            ``exp(score)`` over the keys a query saw in round ``r``.
        n_buckets: ``b``, buckets per round.
        rotations: ``(C_e, R, b // 2)`` hash projections used (input's device
            and dtype; ``(C_e, R, b)`` for super-bit LSH); pass them back as
            ``rotations=`` to repeat the call exactly.
        hashing: ``"spherical"`` or ``"superbit"``, the hash that made ``codes``.
    """

    codes: torch.Tensor
    round_outputs: torch.Tensor
    round_weights: torch.Tensor
    round_logsumexp: torch.Tensor
    n_buckets: int
    rotations: torch.Tensor
    hashing: str = "spherical"


def _check_maps(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_map(name, t)
    check_query_key_value(query, key, value, channel_dim=1)
    n, _, h, w = query.shape
    for name, t in (("key", key), ("value", value)):
        if t.shape[0] != n or tuple(t.shape[2:]) != (h, w):
            raise ValueError(
                f"{name} must share the query's batch size and size (N, H, W) = {(n, h, w)}, "
                f"got {(t.shape[0], *t.shape[2:])}"
            )


@dataclass(frozen=True)
class _ChunkPlan:
    """Where the chunks of one round and their key windows are, as row numbers of the ``(N L, C)`` inputs.

    The sorted sequence of image ``n`` is cut into ``n_chunks`` chunks of ``m``
    slots (the last one padded by repeating its last row); chunk ``c`` attends
    to the ``K`` chunks ``c - own .. c - own + K - 1`` (cyclic; the distinct
    offsets of :func:`~srlib.attention.lsh.neighbour_chunk_offsets` always form
    such a run).  ``extended`` lists the rows of the chunks ``-own .. n_chunks
    - 1 - own + K - 1`` in that order, so the keys of chunks ``c .. c + B - 1``
    are the ``(B + K - 1) m`` consecutive rows from chunk ``c`` of it, chunk
    ``c + i``'s window is ``K m`` consecutive rows from its ``i``-th chunk
    (``B`` overlapping windows, one strided view, no copy per window), and the
    queries are the ``B m`` rows from its ``own``-th chunk.

    Attributes:
        extended: ``(N, (n_chunks + K - 1) m)`` int64 rows of the extended chunk sequences.
        chunk_size: ``m``.
        n_chunks: chunks per image.
        n_offsets: ``K``, distinct chunks per window.
        own: the part of a window (in memory order) that is the chunk itself.
        block: chunks attended at once (about ``_BLOCK_SCORE_ENTRIES`` scores).
        padded: ``(chunk, part)`` pairs: window part ``part`` (of ``K``) of
            that chunk is the padded last chunk; its slots from ``real_tail`` on are padding.
        real_tail: real slots of the last chunk, ``L - (n_chunks - 1) m``.
    """

    extended: torch.Tensor
    chunk_size: int
    n_chunks: int
    n_offsets: int
    own: int
    block: int
    padded: tuple[tuple[int, int], ...]
    real_tail: int

    @property
    def slots(self) -> int:
        """Sorted slots of all images, padding included: ``N n_chunks m``."""
        return self.extended.shape[0] * self.n_chunks * self.chunk_size


def _window_order(n_chunks: int, chunks_before: int, chunks_after: int) -> tuple[int, list[int]]:
    """``(own, window_slots)``: the part of a chunk's window (memory order, previous chunks first) that is the
    chunk itself, and for each of its ``K`` parts in memory order the index of that offset in
    :func:`~srlib.attention.lsh.neighbour_chunk_offsets` (own chunk first, then previous, then next)."""
    offsets = neighbour_chunk_offsets(n_chunks, chunks_before, chunks_after)  # K distinct offsets, own chunk first
    lo = min(offsets)
    if sorted(offsets) != list(range(lo, lo + len(offsets))):  # holds by construction; the strided windows need it
        raise RuntimeError(f"neighbour chunk offsets {offsets} are not a run of consecutive chunks")
    return -lo, [offsets.index(offset) for offset in range(lo, lo + len(offsets))]


def _chunk_plan(order: torch.Tensor, chunk_size: int, chunks_before: int, chunks_after: int) -> _ChunkPlan:
    """The :class:`_ChunkPlan` of one round, from its ``(N, L)`` sort order."""
    n, length = order.shape
    device = order.device
    n_chunks = math.ceil(length / chunk_size)
    own, parts = _window_order(n_chunks, chunks_before, chunks_after)
    n_offsets = len(parts)
    # Row of every sorted slot; the padded slots at the end repeat the last row (masked as keys, dropped as queries).
    rows = order + torch.arange(n, device=device)[:, None] * length  # (N, L)
    rows = torch.cat([rows, rows[:, -1:].expand(n, n_chunks * chunk_size - length)], dim=1)  # (N, nc m)
    chunks = (torch.arange(n_chunks + n_offsets - 1, device=device) - own) % n_chunks  # (nc + K - 1,) chunk ids
    slots = (chunks[:, None] * chunk_size + torch.arange(chunk_size, device=device)).flatten()  # ((nc + K - 1) m,)
    extended = rows.index_select(1, slots)  # (N, (nc + K - 1) m)
    real_tail = length - (n_chunks - 1) * chunk_size
    padded = ()
    if real_tail < chunk_size:  # chunk c's part j is chunk (c - own + j) % nc: the padded one when that is nc - 1
        padded = tuple(sorted(((n_chunks - 1 + own - j) % n_chunks, j) for j in range(n_offsets)))
    block = min(n_chunks, max(1, _BLOCK_SCORE_ENTRIES // (chunk_size * n_offsets * chunk_size)))
    return _ChunkPlan(extended, chunk_size, n_chunks, n_offsets, own, block, padded, real_tail)


def _windows(rows: torch.Tensor, n_windows: int, window: int, chunk_size: int, column: int, width: int):
    """``(n_windows, K m, width)`` overlapping windows (a view) of columns ``column ..`` of ``rows``.

    ``rows``: ``((n_windows + K - 1) m, W)`` with unit column stride; window ``i``
    is rows ``i m .. i m + K m - 1``.  A row appears in up to ``K`` windows, so
    the view may only be read (batched matrix products read it without a copy).
    """
    row_stride = rows.stride(0)
    return rows.as_strided(
        (n_windows, window, width), (chunk_size * row_stride, row_stride, 1), rows.storage_offset() + column
    )


def _fold_windows(window_grads: torch.Tensor, into: torch.Tensor, n_offsets: int) -> None:
    """Adjoint of :func:`_windows`: add ``(B, K m, C)`` window gradients into ``((B + K - 1) m, C)`` rows ``into``."""
    size, window, channels = window_grads.shape
    chunk_size = window // n_offsets
    parts = window_grads.view(size, n_offsets, chunk_size, channels)  # (B, K, m, C)
    into = into.view(size + n_offsets - 1, chunk_size, channels)  # (B + K - 1, m, C)
    for j in range(n_offsets):
        into[j : j + size] += parts[:, j]


@dataclass(frozen=True)
class _Scoring:
    """How a row of the table of :func:`_row_table` is laid out and scored.

    Columns ``[log2(e) q | k_hat | v | log2(e) s_l]`` (``C_e``, ``C_e``, ``C_v``,
    ``P``).  ``bounded``: the base-2 scores are known to lie in ``[-64, 64]``
    (float32; see :func:`_bounded_scores`), so the softmax needs no shift.
    """

    c_e: int
    c_v: int
    learned_form: str = "none"
    fixed_scores: bool = True
    score_sums: bool = False
    bounded: bool = False

    @property
    def learned_column(self) -> int:
        """First column of ``s_l``."""
        return 2 * self.c_e + self.c_v


def _bounded_scores(table: torch.Tensor, c_e: int, learned_form: str) -> bool:
    """Whether every base-2 score ``log2(e) q . k_hat`` of ``table`` lies within :data:`_UNSHIFTED_BOUND`.

    Keys are unit vectors, so ``|s'| <= ||log2(e) q||``; with no learned term
    and the largest query norm within the bound, ``2^s'`` is a normal number
    for every score and the softmax can skip the row maximum (a pass over the
    scores).  One reduction over the queries and one synchronisation per call.
    """
    limit = _UNSHIFTED_BOUND.get(table.dtype)
    if learned_form != "none" or limit is None or table.shape[0] == 0:
        return False
    with torch.no_grad():
        largest = torch.linalg.vector_norm(table[:, :c_e], dim=1).amax()  # max ||q'||
    return bool(largest <= limit)


def _buffer(scratch: dict | None, name: str, like: torch.Tensor, *shape: int) -> torch.Tensor:
    """An uninitialised ``shape`` tensor of ``like``'s dtype and device; from ``scratch`` when it is a dict.

    A named buffer in ``scratch`` is reused by every later request of the same
    name (grown when too small), so the rounds and blocks of one call do not
    allocate - and fault in - fresh memory each time.  Only for tensors that
    autograd does not keep.
    """
    size = math.prod(shape)
    if scratch is None:
        return like.new_empty(shape)
    buffer = scratch.get(name)
    if buffer is None or buffer.numel() < size:
        buffer = scratch[name] = like.new_empty(size)
    return buffer[:size].view(shape)


def _row_table(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, learned: torch.Tensor | None) -> torch.Tensor:
    """The ``(N L, W)`` table of rows ``[log2(e) q | k_hat | v | log2(e) s_l]`` that :class:`_Blocks` gathers from.

    ``q``, ``k``: ``(N, L, C_e)`` queries and unit keys, ``v``: ``(N, L, C_v)``,
    ``learned``: ``(N L, P)`` or None; ``W = 2 C_e + C_v (+ P)``.  Scores are
    then in base 2, ``s' = log2(e) s``, so that the softmax takes ``2^(s' -
    shift)`` (``exp2``, several times faster than ``exp`` on CPU) for ``exp(s -
    shift / log2(e))``; rounding ``log2(e) q`` costs about what the products
    themselves do.  Differentiable.
    """
    n, length = q.shape[:2]
    # Joined along the channels of the (N, C, L) maps (contiguous there), then one transposing copy to rows.
    channels = torch.cat([(q * _LOG2_E).transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)], dim=1)  # (N, W, L)
    table = channels.transpose(1, 2).contiguous().view(n * length, -1)  # (N L, 2 C_e + C_v), row-contiguous
    if learned is not None:
        table = torch.cat([table, learned * _LOG2_E], dim=1)  # (N L, W)
    return table


class _Blocks:
    """One round's chunks, a block at a time, all views of one gather of the table's rows.

    The rows of :func:`_row_table` are gathered once per round in the order of
    the extended chunk sequences (:class:`_ChunkPlan`), ``(N (nc + K - 1) m, W)``;
    a block's queries, key / value windows and learned scores are then views
    of ``(B + K - 1) m`` consecutive rows of it.
    """

    def __init__(self, table: torch.Tensor, scoring: _Scoring, plan: _ChunkPlan, scratch: dict | None = None):
        self.table, self.scoring, self.plan = table, scoring, plan  # table: (N L, W)
        m = plan.chunk_size
        self.window = plan.n_offsets * m  # K m keys per query
        extended = plan.extended.flatten()  # (N (nc + K - 1) m,)
        self.sorted = torch.index_select(  # (N (nc + K - 1) m, W), the round's rows in chunk order
            table, 0, extended, out=_buffer(scratch, "sorted_rows", table, extended.shape[0], table.shape[1]))
        self.scores = _buffer(scratch, "scores", table, plan.block, m, self.window)  # (B, m, K m), every block's

    def blocks(self):
        """Yield ``(first, last, key_rows, slots)`` per block: chunks ``first .. last - 1`` of one image, the
        range of :attr:`sorted` rows their windows cover and the block's range of sorted slots (of
        :attr:`_ChunkPlan.slots`)."""
        plan, m = self.plan, self.plan.chunk_size
        per_image = plan.extended.shape[1]  # (nc + K - 1) m rows
        for image in range(plan.extended.shape[0]):
            for first in range(0, plan.n_chunks, plan.block):
                last = min(first + plan.block, plan.n_chunks)
                start = image * per_image + first * m
                key_rows = slice(start, start + (last - first + plan.n_offsets - 1) * m)  # (B + K - 1) m rows
                start = (image * plan.n_chunks + first) * m
                yield first, last, key_rows, slice(start, start + (last - first) * m)

    def gather(self, first: int, last: int, key_rows: slice):
        """The block's rows ``((B + K - 1) m, W)``, queries ``(B, m, C_e)`` (base 2) and key / value windows
        ``(B, K m, C_e)``, ``(B, K m, C_v)``: all views of :attr:`sorted`."""
        m, size, c_e = self.plan.chunk_size, last - first, self.scoring.c_e
        rows = self.sorted[key_rows]  # ((B + K - 1) m, W)
        own = self.plan.own * m
        q = rows[own : own + size * m, :c_e].view(size, m, c_e)  # (B, m, C_e), log2(e) q
        k = _windows(rows, size, self.window, m, c_e, c_e)  # (B, K m, C_e)
        v = _windows(rows, size, self.window, m, 2 * c_e, self.scoring.c_v)  # (B, K m, C_v)
        return rows, q, k, v

    def scores_of(self, first: int, last: int, rows, q, k, fill_padding: float | None) -> torch.Tensor:
        """The block's ``(B, m, K m)`` base-2 scores ``log2(e) (q . k_hat [+ s_l])`` (in the reused buffer);
        padded keys set to ``fill_padding`` unless it is None."""
        scoring, m, size = self.scoring, self.plan.chunk_size, last - first
        scores = self.scores[:size]  # (B, m, K m)
        if scoring.fixed_scores:
            torch.bmm(q, k.transpose(1, 2), out=scores)  # s_f = q . k_hat
        if scoring.learned_form != "none":
            column = scoring.learned_column
            if scoring.learned_form == "paper":  # the query's row: one score per key slot of its window
                own = self.plan.own * m
                learned = rows[own : own + size * m, column : column + self.window].view(size, m, self.window)
            else:  # "official": the key's row, read at the query's slot in its chunk
                learned = _windows(rows, size, self.window, m, column, m).transpose(1, 2)  # (B, m, K m)
            if scoring.fixed_scores:
                scores.add_(learned)  # s = s_f + s_l
            else:
                scores.copy_(learned)  # s = s_l alone
        if fill_padding is not None:
            self.fill_padding(scores, first, last, fill_padding)
        return scores

    def fill_padding(self, scores: torch.Tensor, first: int, last: int, value: float) -> None:
        """Set the padded key slots of the block's ``(B, m, K m)`` scores to ``value``."""
        plan, m = self.plan, self.plan.chunk_size
        for chunk, part in plan.padded:
            if first <= chunk < last:
                scores[chunk - first, :, part * m + plan.real_tail : (part + 1) * m] = value


def _window_attention(table: torch.Tensor, scoring: _Scoring, plan: _ChunkPlan, scratch: dict | None = None,
                      reuse_outputs: bool = False):
    """Attention of every chunk over its window, block by block, in sorted-slot order (no autograd).

    The softmax of a row is taken as ``2^(s' - shift) / sum 2^(s' - shift)``
    with ``lse' = shift + log2 sum 2^(s' - shift)``; the shift only has to keep
    ``2^(s' - shift)`` from overflowing and from underflowing at the best key.
    The row maximum is the usual choice and costs a pass over the scores; when
    the scores are ``bounded`` (:func:`_bounded_scores`) no shift is needed.

    ``table``: :func:`_row_table`, laid out as ``scoring`` says; ``scratch``: a
    dict of reusable buffers (:func:`_buffer`) for the block temporaries and, with
    ``reuse_outputs``, the results.  Returns ``(out, lse, score_sum)``: ``(S, C_v)``,
    ``(S,)`` and ``(S,)`` (or None) with ``S = N nc m`` sorted slots, slot ``s`` of
    image ``n`` at row ``n nc m + s`` (padded query slots included).
    """
    blocks = _Blocks(table, scoring, plan, scratch)
    m = plan.chunk_size
    results = scratch if reuse_outputs else None
    out = _buffer(results, "sorted_out", table, plan.slots, scoring.c_v)  # (S, C_v)
    lse = _buffer(results, "sorted_lse", table, plan.slots)  # (S,), base 2 until the end
    score_sum = _buffer(results, "sorted_sum", table, plan.slots) if scoring.score_sums else None  # (S,), base 2
    for first, last, key_rows, slots in blocks.blocks():
        size = last - first
        rows, q, k, v = blocks.gather(first, last, key_rows)
        fill = 0.0 if scoring.score_sums else float("-inf")
        scores = blocks.scores_of(first, last, rows, q, k, fill)  # (B, m, K m), s'
        if scoring.score_sums:  # S = sum_j s(q, k_j) over the real keys of the window (DLSN eq. 18)
            torch.sum(scores, dim=-1, out=score_sum[slots].view(size, m))
            blocks.fill_padding(scores, first, last, float("-inf"))
        block_lse = lse[slots].view(size, m, 1)  # (B, m, 1)
        if scoring.bounded:  # w = 2^s', lse' = log2 sum w
            weights = scores.exp2_()  # (B, m, K m); padded keys: 2^-inf = 0
            total = weights.sum(dim=-1, keepdim=True)  # (B, m, 1)
            torch.log2(total, out=block_lse)
        else:  # w = 2^(s' - max s') = exp(s - max s), lse' = max s' + log2 sum w
            top = scores.amax(dim=-1, keepdim=True)  # (B, m, 1)
            weights = scores.sub_(top).exp2_()  # (B, m, K m)
            total = weights.sum(dim=-1, keepdim=True)  # (B, m, 1)
            torch.add(top, total.log2(), out=block_lse)
        torch.bmm(weights, v, out=out[slots].view(size, m, -1)).div_(total)  # (B, m, C_v), (w v) / sum w
    lse.mul_(_LN_2)  # lse = ln 2 lse'
    if scoring.score_sums:
        score_sum.mul_(_LN_2)
    return out, lse, score_sum


class _WindowAttentionFunction(torch.autograd.Function):
    """:func:`_window_attention` with a backward pass that recomputes each block's weights.

    Nothing of the size of the scores is kept between the passes: the
    backward pass re-gathers each block, recomputes ``p = exp(s - lse)`` from
    the saved log-normalisers and forms the gradients block by block (as
    memory-efficient attention does), adding them into the gradient of the
    table's rows.  With ``g`` the gradient of a query's output, ``g_lse`` /
    ``g_S`` those of its log-normaliser and score sum, and ``D = g . out``:
    ``dL/ds = p (g v^T - D + g_lse) + g_S`` (over real keys), ``dL/dv = p^T g``,
    ``dL/dq = (dL/ds) k_hat``, ``dL/dk_hat = (dL/ds)^T q``, ``dL/ds_l = dL/ds``;
    the table's base-2 columns get ``ln 2`` times theirs.  Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, table, scoring, plan, needs, scratch):
        out, lse, score_sum = _window_attention(table, scoring, plan, scratch)
        ctx.save_for_backward(table, out, lse)
        ctx.setup = (scoring, plan, needs)
        if score_sum is None:
            return out, lse
        return out, lse, score_sum

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_lse, grad_score_sum=None):
        table, out, lse = ctx.saved_tensors
        scoring, plan, (need_qk, need_v, need_learned) = ctx.setup
        blocks = _Blocks(table, scoring, plan)
        c_e, c_v, column = scoring.c_e, scoring.c_v, scoring.learned_column
        m, n_offsets = plan.chunk_size, plan.n_offsets
        need_qk = need_qk and scoring.fixed_scores
        grad_table = torch.zeros_like(table)  # (N L, W), gradients of [log2(e) q | k_hat | v | log2(e) s_l]
        grad_sorted = torch.zeros_like(blocks.sorted)  # gradients of the round's gathered rows
        # In base 2: dL/ds' = ln 2 dL/ds = p (g' v^T - D' + g_lse') + g_S' with g' = ln 2 g, D' = ln 2 D, ...
        grad_out_bits = grad_out * _LN_2  # (S, C_v)
        shift_bits = ((grad_out * out).sum(dim=-1) - grad_lse).mul_(_LN_2)  # (S,), D' - g_lse'
        grad_sum_bits = grad_score_sum * _LN_2 if scoring.score_sums else None  # (S,)
        lse_bits = lse * _LOG2_E  # (S,), base 2 like the scores
        own = plan.own * m
        for first, last, key_rows, slots in blocks.blocks():
            size = last - first
            rows, q, k, v = blocks.gather(first, last, key_rows)
            scores = blocks.scores_of(first, last, rows, q, k, float("-inf"))  # s'
            p = scores.sub_(lse_bits[slots].view(size, m, 1)).exp2_()  # (B, m, K m), the forward's weights
            grads = grad_sorted[key_rows]  # ((B + K - 1) m, W); blocks of one image share K - 1 chunks
            if need_v:  # dL/dv = p^T g
                g = grad_out[slots].view(size, m, c_v)  # (B, m, C_v)
                _fold_windows(torch.bmm(p.transpose(1, 2), g), grads[:, 2 * c_e : 2 * c_e + c_v], n_offsets)
            if need_qk or need_learned:
                grad_s = torch.bmm(grad_out_bits[slots].view(size, m, c_v), v.transpose(1, 2))  # (B, m, K m)
                grad_s.sub_(shift_bits[slots].view(size, m, 1)).mul_(p)  # dL/ds' = p (g' v^T - D' + g_lse')
                if scoring.score_sums:  # d S / d s_j = 1 for every real key
                    grad_s.add_(grad_sum_bits[slots].view(size, m, 1))
                    blocks.fill_padding(grad_s, first, last, 0.0)
                if need_qk:  # dL/dq' = (dL/ds') k_hat, dL/dk_hat = (dL/ds')^T q'
                    grads[own : own + size * m, :c_e] += torch.bmm(grad_s, k).view(size * m, c_e)
                    _fold_windows(torch.bmm(grad_s.transpose(1, 2), q), grads[:, c_e : 2 * c_e], n_offsets)
                if need_learned and scoring.learned_form == "paper":  # the query's row
                    grads[own : own + size * m, column:] += grad_s.view(size * m, blocks.window)
                elif need_learned:  # "official": the key's row, at the query's slot
                    _fold_windows(grad_s.transpose(1, 2), grads[:, column:], n_offsets)
        # Back to the table's rows; a row appears several times (chunks at both ends, padding): their gradients add up.
        grad_table.index_put_((blocks.plan.extended.flatten(),), grad_sorted, accumulate=True)
        return grad_table, None, None, None, None


def _attend_round(
    table: torch.Tensor,
    scoring: _Scoring,
    order: torch.Tensor,
    undo: torch.Tensor,
    chunk_size: int,
    chunks_before: int,
    chunks_after: int,
    needs: tuple[bool, bool, bool] = (True, True, True),
    scratch: dict | None = None,
    reuse_as: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One hashing round: attend inside the chunks of the sorted sequence, a block of chunks at a time.

    Each block of ``B`` chunks gathers the ``(B + K - 1) m`` rows of ``table``
    its windows cover, once; the ``B`` windows of ``K m`` keys are overlapping
    strided views of those rows, so the scores and the weighted values of a
    block are two batched matrix products (``(B, m, C_e) x (B, C_e, K m)`` and
    ``(B, m, K m) x (B, K m, C_v)``) with no per-window copy.  Results are
    written in sorted order and brought back to position order by one gather.

    Args:
        table: ``(N * L, W)`` rows of :func:`_row_table`; position ``l`` of
            image ``n`` is row ``n * L + l``.
        scoring: the table's layout and the scores (:class:`_Scoring`): the
            learned term (for ``"paper"`` its ``K m`` columns in the window's
            memory order, see :func:`_window_order`), whether ``q . k_hat`` is
            used, as in :func:`non_local_sparse_attention`, and whether the sums
            of the scores are returned (else None).
        order, undo: ``(N, L)`` int64, the position at each sorted slot of this
            round and its inverse (:func:`~srlib.attention.lsh.sort_by_code`).
        chunk_size, chunks_before, chunks_after: as in :func:`non_local_sparse_attention`.
        needs: whether the queries / keys, the values and the learned term need
            gradients (when the table does).
        scratch: a dict of buffers the blocks reuse (:func:`_buffer`), or None.
        reuse_as: without autograd, the name under which ``scratch`` keeps the
            returned tensors for the next call with that name (which overwrites
            them); None: fresh tensors.

    Returns:
        ``(out, lse, score_sum)``: the round's ``(N * L, C_v)`` output, ``(N * L,)``
        log-normalisers and ``(N * L,)`` sums of the scores over the keys each
        query saw (for DLSN's eq. 18; None unless ``score_sums``), back in row
        (position) order.  Differentiable with respect to ``table``.
    """
    n = order.shape[0]
    plan = _chunk_plan(order, chunk_size, chunks_before, chunks_after)
    if torch.is_grad_enabled() and table.requires_grad:
        results = _WindowAttentionFunction.apply(table, scoring, plan, needs, scratch)
        reuse_as = None
    else:
        results = _window_attention(table, scoring, plan, scratch, reuse_outputs=reuse_as is not None)
    # Slot s of image n is row n nc m + s of the results; position l sits at slot undo[n, l].
    back = (undo + torch.arange(n, device=undo.device)[:, None] * (plan.n_chunks * chunk_size)).flatten()  # (N L,)
    unsorted = []
    for index, result in enumerate(results[: 3 if scoring.score_sums else 2]):  # (S, C_v), (S,), (S,)
        if reuse_as is None:
            unsorted.append(result.index_select(0, back))
        else:
            buffer = _buffer(scratch, f"{reuse_as}_{index}", result, back.shape[0], *result.shape[1:])
            unsorted.append(torch.index_select(result, 0, back, out=buffer))
    out, lse = unsorted[:2]  # (N L, C_v), (N L,)
    score_sum = unsorted[2] if scoring.score_sums else None  # (N L,)
    return out, lse, score_sum


def normalize_keys(keys: torch.Tensor) -> torch.Tensor:
    """L2-normalise keys along the last dimension, the norm clamped at :data:`KEY_NORM_EPS`.

    ``(..., C_e)`` float -> unit vectors of the same shape (NLSN's ``F.normalize``
    of the keys; a zero key stays zero instead of becoming NaN).
    """
    return keys / keys.norm(dim=-1, keepdim=True).clamp_min(KEY_NORM_EPS)


def non_local_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    n_rounds: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    n_buckets: int | None = None,
    generator: torch.Generator | int | None = None,
    rotations: torch.Tensor | None = None,
    chunks_before: int = 1,
    chunks_after: int = 1,
    return_details: bool = False,
    hashing: str = "spherical",
    superbit_mode: str = "superbit",
    learned_scores: torch.Tensor | None = None,
    learned_form: str = "none",
    fixed_scores: bool = True,
    round_weighting: str = "logsumexp",
) -> torch.Tensor | tuple[torch.Tensor, SparseAttentionDetails]:
    """NLSA on feature maps: hash, sort, attend inside neighbouring chunks, combine rounds.

    For every round ``r``: hash the normalised keys (spherical LSH), stable-sort
    the positions by code, cut the sorted sequence into chunks of
    ``chunk_size``; each query attends to the keys of its own chunk and of
    ``chunks_before`` / ``chunks_after`` neighbouring chunks (cyclic, each
    distinct chunk once, padded keys masked) with weights
    ``softmax(q . k / ||k||)``; results are un-sorted and the rounds combined
    with weights ``softmax_r(lse_r)`` (see the module docstring and
    :mod:`srlib.attention.lsh`).  The hash codes come from the keys, so the
    query of position ``l`` meets the keys that share its *key*'s bucket; in
    NLSN queries and keys are the same embedding, so this is "similar
    positions attend to each other".

    Args:
        query: ``(N, C_e, H, W)`` queries, used as they are (their norm acts
            as a per-query softmax temperature).
        key: ``(N, C_e, H, W)`` keys; L2-normalised over ``C_e`` here (norm
            clamped at ``KEY_NORM_EPS``) before hashing and scoring.
        value: ``(N, C_v, H, W)`` values.  All three: float, one dtype, one
            device (the computation runs there), any value range.
        n_rounds: ``R``, hashing rounds (>= 1; NLSN uses 4).
        chunk_size: ``m``, positions per chunk (>= 1; NLSN: 144).  When
            ``H*W <= m`` there is a single chunk and the result is dense
            non-local attention with normalised keys.
        n_buckets: buckets per round, even >= 2; None: ``2 * rotations.shape[2]``
            when ``rotations`` are given, else NLSN's rule
            ``min(L // m + (L // m) % 2, 128)``, at least 2
            (:func:`srlib.attention.lsh.bucket_count`).
        generator: CPU ``torch.Generator`` (advanced by the draw) or integer
            seed for the random rotations.
        rotations: precomputed ``(C_e, R, b // 2)`` rotations instead (e.g.
            ``details.rotations`` of an earlier call).  Exactly one of
            ``generator`` / ``rotations`` must be given.
        chunks_before, chunks_after: neighbour chunks each chunk attends to
            (>= 0; NLSN: 1 and 1, so ``3 m`` keys per query).
        return_details: also return a :class:`SparseAttentionDetails`.
        hashing: ``"spherical"`` (NLSN, rotations ``(C_e, R, b/2)``) or
            ``"superbit"`` (DLSN, projections ``(C_e, R, b)``, drawn with
            ``superbit_mode``, :data:`~srlib.attention.lsh.SUPERBIT_MODES`);
            ``rotations=`` then holds that hash's projections.
        learned_scores, learned_form, fixed_scores, round_weighting: the
            scoring of DLSN's global learnable attention
            (:mod:`srlib.attention.learnable` builds them; NLSA uses the
            defaults): ``learned_form`` ``"none"`` (no learned term),
            ``"paper"`` (``learned_scores`` ``(N, K_max m, H, W)``: position
            ``l``'s row gives, as a query, a score to each of the ``K_max m``
            key slots of its window, ``K_max = 1 + chunks_before + chunks_after``),
            or ``"official"`` (``learned_scores`` ``(N, m, H, W)``: position
            ``l``'s row gives, as a key, a score to each query slot ``0..m-1``
            of a chunk); the score is ``q . k_hat + s_l`` with
            ``fixed_scores=True``, ``s_l`` alone with ``False``.  ``round_weighting``
            ``"logsumexp"`` (``softmax_r(lse_r)``) or ``"score_sum"`` (DLSN
            eq. 18: ``w_r = S_r / sum_r' S_r'`` with ``S_r`` the sum of the
            scores a query gave in round ``r``; not a convex weighting when
            scores are negative, unbounded near ``sum_r' S_r' = 0``, and NaN
            (0 / 0) at a query whose scores are all 0 in every round, e.g. an
            all-zero query after a ReLU embedding with no learned term).

    Returns:
        ``(N, C_v, H, W)`` output, same dtype and device as the inputs;
        with ``return_details=True`` the pair ``(output, details)``.
        Differentiable with respect to query, key and value (the bucket
        assignment itself is piecewise constant) and ``learned_scores``.

    Memory: each query meets ``K m`` keys per round, ``K = 1 + chunks_before
    + chunks_after`` (fewer when there are fewer chunks), so there are
    ``K m R L`` scores per image instead of ``L^2``: for a 100x100 map, 4
    rounds and m = 144, 17 M against 100 M for dense attention.  They are
    never all held at once: the rounds run one after the other, each one a
    block of chunks of one image at a time (about 2**20 scores, 4 MiB in
    float32, per block), and each round is merged into the result as soon as
    it is done; training keeps no scores either (the backward pass recomputes
    each block's weights from the saved log-normalisers).  What remains is
    linear in ``L``: the hash projections ``(N, R, L, b)`` (briefly), a few
    ``(N, L, C)`` copies of the inputs and outputs, and, with
    ``return_details=True``, every round's output.

    Speed.  A block of ``B`` chunks is two batched matrix products, ``(B, m,
    C_e) x (B, C_e, K m)`` and ``(B, m, K m) x (B, K m, C_v)``, on strided
    views of one gather of the round's rows (the ``B`` windows of ``K m`` keys
    overlap, and are not copied); the softmax runs in base 2 (``exp2``) and,
    when every query is short enough (``||q|| <= 44`` in float32), without the
    row maximum, since unit keys bound every score by ``||q||``.

    Raises:
        ValueError: inputs that are not non-empty float ``(N, C, H, W)`` maps;
            query/key channel mismatch; N, H, W, dtype or device mismatch;
            non-positive ``n_rounds`` / ``chunk_size``; odd or too small
            ``n_buckets``; both or neither of ``generator`` / ``rotations``;
            rotations of the wrong shape.
        TypeError: a generator that is neither a CPU ``torch.Generator`` nor an integer.

    Source: NLSN (Mei et al., CVPR 2021) and its official code; differences
    from that code are listed in the module docstring.
    """
    _check_maps(query, key, value)
    n_rounds = positive_int("n_rounds", n_rounds)
    chunk_size = positive_int("chunk_size", chunk_size)
    chunks_before = positive_int("chunks_before", chunks_before, minimum=0)
    chunks_after = positive_int("chunks_after", chunks_after, minimum=0)
    hashing = choice("hashing", hashing, HASHINGS)
    round_weighting = choice("round_weighting", round_weighting, ROUND_WEIGHTINGS)
    n, _, h, w = query.shape
    c_v = value.shape[1]
    length = h * w
    learned_rows = _learned_rows(learned_scores, learned_form, fixed_scores, query, chunk_size,
                                 1 + chunks_before + chunks_after)  # (N L, P) or None
    if rotations is not None and n_buckets is None and isinstance(rotations, torch.Tensor) and rotations.dim() == 3:
        n_buckets = projection_buckets(rotations, hashing)  # the projections fix b; lsh_codes checks the rest
    n_buckets = bucket_count(length, chunk_size, n_buckets=n_buckets, hashing=hashing)

    q = query.flatten(2).transpose(1, 2)  # (N, L, C_e)
    k = key.flatten(2).transpose(1, 2)  # (N, L, C_e)
    v = value.flatten(2).transpose(1, 2)  # (N, L, C_v)
    k = normalize_keys(k)  # (N, L, C_e), unit keys

    # 1. Hash: one code per position and round (from the keys; the direction is all that matters).
    codes, rotations = lsh_codes(
        k, hashing, n_rounds, n_buckets, generator=generator, projections=rotations, mode=superbit_mode
    )  # (N, R, L)
    # 2. Sort each round by code (stable): order[n, r, s] is the position at sorted slot s.
    order, undo = sort_by_code(codes)  # (N, R, L) each
    if learned_form == "paper":  # the window's K m key slots, from "own, previous, next" to memory order
        n_chunks = math.ceil(length / chunk_size)
        _, parts = _window_order(n_chunks, chunks_before, chunks_after)
        columns = (torch.tensor(parts, device=query.device)[:, None] * chunk_size
                   + torch.arange(chunk_size, device=query.device)).flatten()  # (K m,)
        learned_rows = learned_rows.index_select(1, columns)  # (N L, K m)
    # One row per position (row n L + l), queries, keys, values and learned term side by side, so that a
    # block of chunks is one gather of rows.
    table = _row_table(q, k, v, learned_rows)  # (N L, W)
    by_score_sum = round_weighting == "score_sum"
    scoring = _Scoring(q.shape[2], c_v, learned_form, fixed_scores, by_score_sum,
                       bounded=_bounded_scores(table, q.shape[2], learned_form))
    needs = (query.requires_grad or key.requires_grad, value.requires_grad,
             learned_rows is not None and learned_rows.requires_grad)
    # 3. Attend inside the chunks and their neighbours, one round after the other (see _attend_round).
    # 4. Combine the rounds as they come: out = sum_r softmax_r(lse_r) out_r over the rounds so far,
    #    and lse = log sum_r exp(lse_r), their joint log-normaliser.
    #    (DLSN eq. 18 instead: out = sum_r S_r out_r / sum_r S_r, accumulated as two running sums.)
    # Without autograd and details, the rounds reuse their buffers and are combined in place.
    in_place = not return_details and not (torch.is_grad_enabled() and table.requires_grad)
    scratch = {}  # buffers reused by the blocks and rounds of this call
    outputs, lses, sums = [], [], []  # every round's result, kept only for the details
    combined = combined_lse = None  # (N L, C_v), (N L,)
    for r in range(n_rounds):
        round_out, round_lse, round_sum = _attend_round(
            table, scoring, order[:, r], undo[:, r], chunk_size, chunks_before, chunks_after, needs=needs,
            scratch=scratch, reuse_as=("first" if r == 0 else "round") if in_place else None,
        )  # (N L, C_v), (N L,), (N L,) or None
        if return_details:
            outputs.append(round_out)
            lses.append(round_lse)
            sums.append(round_sum)
        if by_score_sum:  # numerator sum_r S_r out_r and denominator sum_r S_r (eq. 17-18)
            if combined is None:
                combined = round_out.mul_(round_sum.unsqueeze(-1)) if in_place else round_sum.unsqueeze(-1) * round_out
                combined_lse = round_sum
            elif in_place:
                combined.addcmul_(round_out, round_sum.unsqueeze(-1))  # (N L, C_v)
                combined_lse = combined_lse + round_sum
            else:
                combined = combined + round_sum.unsqueeze(-1) * round_out  # (N L, C_v)
                combined_lse = combined_lse + round_sum
            continue
        if combined is None:
            combined, combined_lse = round_out, round_lse
            continue
        # Round r's share against the rounds before it: exp(lse_r) / (exp(lse) + exp(lse_r)).
        share = torch.sigmoid(round_lse - combined_lse)  # (N L,)
        if in_place:
            combined.lerp_(round_out, share.unsqueeze(-1))  # (N L, C_v)
        else:
            combined = torch.lerp(combined, round_out, share.unsqueeze(-1))  # (N L, C_v)
        combined_lse = torch.logaddexp(combined_lse, round_lse)  # (N L,)
    if by_score_sum:
        combined = combined / combined_lse.unsqueeze(-1)  # (N L, C_v), eq. 17 with the weights of eq. 18

    output = combined.view(n, length, c_v).transpose(1, 2).reshape(n, c_v, h, w)  # (N, C_v, H, W)
    if not return_details:
        return output
    round_outputs = torch.stack([o.view(n, length, c_v) for o in outputs], dim=1)  # (N, R, L, C_v)
    round_lse = torch.stack([x.view(n, length) for x in lses], dim=1)  # (N, R, L)
    if by_score_sum:
        round_sums = torch.stack([x.view(n, length) for x in sums], dim=1)  # (N, R, L)
        round_weights = round_sums / round_sums.sum(dim=1, keepdim=True)  # (N, R, L), eq. 18
    else:
        round_weights = torch.softmax(round_lse, dim=1)  # (N, R, L)
    details = SparseAttentionDetails(
        codes=codes.reshape(n, n_rounds, h, w),
        round_outputs=round_outputs.transpose(2, 3).reshape(n, n_rounds, c_v, h, w),
        round_weights=round_weights.reshape(n, n_rounds, h, w),
        round_logsumexp=round_lse.reshape(n, n_rounds, h, w),
        n_buckets=n_buckets,
        rotations=rotations,
        hashing=hashing,
    )
    return output, details


def _learned_rows(
    learned_scores: torch.Tensor | None, learned_form: str, fixed_scores: bool, query: torch.Tensor,
    chunk_size: int, window_chunks: int,
) -> torch.Tensor | None:
    """Check the learned score term of :func:`non_local_sparse_attention` and flatten it to ``(N L, P)`` rows."""
    learned_form = choice("learned_form", learned_form, LEARNED_FORMS)
    if not isinstance(fixed_scores, bool):
        raise TypeError(f"fixed_scores must be True or False, got {fixed_scores!r}")
    if learned_form == "none":
        if learned_scores is not None:
            raise ValueError("learned_scores were given with learned_form='none'; pass learned_form='paper' or 'official'")
        if not fixed_scores:
            raise ValueError("fixed_scores=False with learned_form='none' leaves no score at all; keep one of the two")
        return None
    width = window_chunks * chunk_size if learned_form == "paper" else chunk_size
    n, _, h, w = query.shape
    what = "one score per key slot of the window (K_max * chunk_size)" if learned_form == "paper" else (
        "one score per query slot of a chunk (chunk_size)")
    if not isinstance(learned_scores, torch.Tensor) or tuple(learned_scores.shape) != (n, width, h, w):
        shape = tuple(learned_scores.shape) if isinstance(learned_scores, torch.Tensor) else type(learned_scores).__name__
        raise ValueError(
            f"learned_scores of form {learned_form!r} must be shaped (N, {width}, H, W) = {(n, width, h, w)}, "
            f"{what}; got {shape}"
        )
    if learned_scores.dtype != query.dtype or learned_scores.device != query.device:
        raise ValueError(
            f"learned_scores must share the query's dtype and device ({query.dtype}, {query.device}), "
            f"got {learned_scores.dtype} on {learned_scores.device}"
        )
    return learned_scores.flatten(2).transpose(1, 2).reshape(n * h * w, width)  # (N L, P)


def sparse_attention_multiply_adds(
    batch: int, length: int, query_channels: int, value_channels: int, *, n_rounds: int, chunk_size: int,
    n_buckets: int | None, hashing: str, fixed_scores: bool = True,
) -> int:
    """Multiply-adds of :func:`non_local_sparse_attention` on ``N`` sequences of ``L`` positions (no embeddings).

    Per round (NLSN; the steps of the module docstring):

    * hash: every unit key projected on the round's directions, ``N L C_e P``
      with ``P = b / 2`` rotations (spherical LSH) or ``P = b`` directions
      (super-bit LSH, DLSN eq. 12), ``b`` from :func:`~srlib.attention.lsh.bucket_count`;
    * attend: each of the ``L`` queries meets the ``k = min(K m, L)`` keys of its
      own and its ``K - 1`` neighbouring chunks (``K`` distinct chunks, at most
      3): ``N L k C_e`` for the scores ``q . k_hat`` (left out when
      ``fixed_scores`` is False, DLSN's ``s_l`` alone) and ``N L k C_v`` for the
      weighted values.

    The masked key slots of a padded last chunk, the padded query slots, the
    sort, the softmax and the combination of the rounds are not counted.
    """
    projections = n_buckets // 2 if hashing == "spherical" else n_buckets  # P per round
    n_chunks = math.ceil(length / chunk_size)
    keys = min(len(neighbour_chunk_offsets(n_chunks, 1, 1)) * chunk_size, length)  # k keys per query
    hashing_cost = batch * length * query_channels * projections  # x' = M x per round
    attention = batch * length * keys * ((query_channels if fixed_scores else 0) + value_channels)
    return n_rounds * (hashing_cost + attention)


def nlsa_multiply_adds(shape: tuple[int, int, int, int], options: dict) -> int:
    """Multiply-adds of one :class:`NonLocalSparseAttention` forward pass on an ``(N, C, H, W)`` map.

    With ``L = H W`` and ``C_e = C // reduction``: the embeddings, a 3x3
    convolution ``C -> C_e`` (queries and keys) and a 1x1 convolution ``C -> C``
    (values), ``N L (9 C C_e + C^2)``; then ``n_rounds`` rounds of hashing and
    chunked attention, :func:`sparse_attention_multiply_adds` (``R L 3m`` score
    and value products instead of dense attention's ``L^2``).

    Source: NLSN (Mei et al., CVPR 2021): spherical LSH, attention inside the
    chunk of the query's bucket and its neighbours, rounds combined; layer sizes
    from the official code.
    """
    n, c, h, w = shape
    c_e = c // options["reduction"]
    length = h * w
    buckets = bucket_count(length, options["chunk_size"], n_buckets=options["n_buckets"], hashing=options["hashing"])
    embeddings = n * length * (9 * c * c_e + c * c)  # 3x3 conv C -> C_e, 1x1 conv C -> C
    return embeddings + sparse_attention_multiply_adds(
        n, length, c_e, c, n_rounds=options["n_rounds"], chunk_size=options["chunk_size"], n_buckets=buckets,
        hashing=options["hashing"],
    )


@register_attention(
    "nlsa", kind="in_scale", loops="srlib.attention.loops:nlsa_loops",
    bench={f"nlsa_r{rounds}": {"n_rounds": rounds} for rounds in (1, 2, 4, 8)},
    test_options=[
        {"chunk_size": 8, "n_rounds": 2}, {"chunk_size": 7, "n_rounds": 3, "n_buckets": 4},
        {"chunk_size": 8, "n_rounds": 2, "hashing": "superbit", "n_buckets": 3},
    ],
    multiply_adds=nlsa_multiply_adds,
)
class NonLocalSparseAttention(nn.Module):
    """The NLSA module of NLSN: a shared query/key embedding, a value embedding, sparse attention.

    ``out = NLSA(q, q, v)`` with ``q = query_key_embed(x)`` (queries and keys
    are the same embedding, the keys normalised inside
    :func:`non_local_sparse_attention`) and ``v = value_embed(x)``.  There is
    no residual inside: NLSN adds ``x + res_scale * out`` itself.

    Args:
        channels: C, channels of the input map.
        reduction: the query/key embedding has ``C // reduction`` channels (>= 1
            required; NLSN: 4).
        chunk_size: positions per chunk (NLSN: 144).
        n_rounds: hashing rounds (NLSN: 4).
        n_buckets: buckets per round, even >= 2, or None for NLSN's rule
            (:func:`srlib.attention.lsh.bucket_count`, at least 2).
        seed: integer seed of the hash rotations (see "Randomness").
        activation: ``"none"`` (NLSN: plain convolutions), ``"prelu"`` or ``"relu"`` after each embedding.
        hashing: ``"spherical"`` (NLSN) or ``"superbit"`` (DLSN's super-bit LSH,
            :func:`srlib.attention.lsh.superbit_projections`): the hash is the only difference.
        superbit_mode: how super-bit directions are drawn (:data:`srlib.attention.lsh.SUPERBIT_MODES`).

    Layers (the names are the checkpoint keys):
        ``query_key_embed`` - ``Sequential(3x3 conv (padding 1, bias) C -> C // reduction)``:
        queries and keys (NLSN's ``conv_match``);
        ``value_embed`` - ``Sequential(1x1 conv (bias) C -> C)``: values (NLSN's ``conv_assembly``).

    Randomness.  ``forward(x, return_details=False, *, generator=None)``:

    * with ``generator`` (a CPU ``torch.Generator`` or an integer seed): the
      rotations come from it;
    * else in **eval** mode: from a fresh generator seeded with ``self.seed``
      at every forward, so evaluation is repeatable (same image, same output);
    * else in **training** mode: from a module-owned CPU generator, seeded
      with ``seed`` at construction (and by :meth:`reset_generator`), which
      advances at every call - fresh buckets each step, the same sequence
      from the same seed (its first draw equals the evaluation draw).  Its
      state is not part of the ``state_dict``: a resumed training run starts
      the sequence again unless :meth:`reset_generator` is given a new seed.

    The official NLSN code draws fresh rotations from the global RNG at every
    forward, at test time too, so two passes on one image differ (by about
    1e-2) and reported PSNRs move slightly between runs.

    Forward:
        ``x``: ``(N, C, H, W)`` float map, any size (``H*W`` need not be a
        multiple of the chunk size and may be smaller than one chunk), on the
        module's device and dtype.  Returns ``(N, C, H, W)``; with
        ``return_details=True`` the pair ``(out, details)``, a
        :class:`SparseAttentionDetails`.

    Raises:
        ValueError: bad constructor arguments (non-positive sizes, ``C //
            reduction < 1``, odd ``n_buckets``); an input that is not
            ``(N, C, H, W)`` of the module's dtype and device; a generator on a
            non-CPU device.
        TypeError: a non-integer ``seed``, a generator that is neither a
            ``torch.Generator`` nor an integer.

    Source: NLSN (Mei et al., CVPR 2021); layer sizes from the official code.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 4,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        n_rounds: int = 4,
        n_buckets: int | None = None,
        seed: int = 0,
        activation: str = "none",
        hashing: str = "spherical",
        superbit_mode: str = "superbit",
    ):
        super().__init__()
        channels, reduction = channel_reduction(channels, reduction)
        self.channels = channels
        self.reduction = reduction
        self.embed_channels = channels // reduction
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.n_rounds = positive_int("n_rounds", n_rounds)
        self.hashing = choice("hashing", hashing, HASHINGS)
        self.superbit_mode = choice("superbit_mode", superbit_mode, SUPERBIT_MODES)
        if n_buckets is not None:
            bucket_count(1, n_buckets=n_buckets, hashing=self.hashing)  # checks: even >= 2 (spherical), >= 1
            n_buckets = int(n_buckets)
        self.n_buckets = n_buckets
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)
        self.activation = normalize_activation(activation)
        self._train_generator = cpu_generator(self.seed)

        self.query_key_embed = embedding(channels, self.embed_channels, self.activation, kernel_size=3)
        self.value_embed = embedding(channels, channels, self.activation)

    def reset_generator(self, seed: int | None = None) -> None:
        """Re-seed the training-mode generator (with ``seed``, which also replaces ``self.seed``, or ``self.seed``).

        Raises:
            TypeError: ``seed`` is not an integer.
        """
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
                raise TypeError(f"seed must be an integer, got {seed!r}")
            self.seed = int(seed)
        self._train_generator = cpu_generator(self.seed)

    def _rotation_source(self, generator: torch.Generator | int | None) -> torch.Generator:
        if generator is not None:
            return cpu_generator(generator)
        if self.training:
            return self._train_generator
        return cpu_generator(self.seed)

    def forward(
        self,
        x: torch.Tensor,
        return_details: bool = False,
        *,
        generator: torch.Generator | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, SparseAttentionDetails]:
        match, values = self.embed(x)  # (N, C_e, H, W) queries and keys; (N, C, H, W) values
        source = self._rotation_source(generator)
        return non_local_sparse_attention(
            match, match, values, n_rounds=self.n_rounds, chunk_size=self.chunk_size,
            n_buckets=self.n_buckets, generator=source, return_details=return_details,
            hashing=self.hashing, superbit_mode=self.superbit_mode,
        )  # (N, C, H, W) [, details]

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Check ``x`` and return its query/key and value embeddings.

        ``x`` float ``(N, C, H, W)`` -> ``(query_key (N, C // reduction, H, W),
        value (N, C, H, W))``: the first gives the queries and, once
        normalised, the keys; the second gives the values.

        Raises:
            ValueError: ``x`` is not a ``(N, channels, H, W)`` float map of the module's dtype and device.
        """
        check_feature_map(self, x, self.channels)
        return self.query_key_embed(x), self.value_embed(x)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, reduction={self.reduction}, chunk_size={self.chunk_size}, "
            f"n_rounds={self.n_rounds}, n_buckets={self.n_buckets}, seed={self.seed}, activation={self.activation!r}, "
            f"hashing={self.hashing!r}, superbit_mode={self.superbit_mode!r}"
        )


def nlsa_dense_multiply_adds(shape: tuple[int, int, int, int], options: dict) -> int:
    """Multiply-adds of one :class:`DenseMatchAttention` forward pass on an ``(N, C, H, W)`` map.

    NLSA's embeddings, ``N L (9 C C_e + C^2)`` with ``L = H W`` and ``C_e = C //
    reduction``, then dense attention over all positions (NLSN supplement,
    Table 1 "Non-Local"; CSNLN eq. 1-2 with unit keys): ``N L^2 C_e`` for the
    scores and ``N L^2 C`` for the weighted values.  The fused kernel's zero
    padding of queries and keys to ``C`` channels is not counted.
    """
    n, c, h, w = shape
    c_e = c // options["reduction"]
    length = h * w
    embeddings = n * length * (9 * c * c_e + c * c)  # 3x3 conv C -> C_e, 1x1 conv C -> C
    return embeddings + n * length * length * (c_e + c)  # scores (L, L) and weighted values (L, C)


@register_attention(
    "nlsa_dense", kind="in_scale", loops="srlib.attention.loops:nlsa_dense_loops",
    bench={"nlsa_dense": {}},
    multiply_adds=nlsa_dense_multiply_adds,
)
class DenseMatchAttention(NonLocalSparseAttention):
    """NLSA's embeddings with dense attention: every query attends to every position (no hashing).

    The "Non-Local" column of the NLSN supplement's Table 1, built so that it
    differs from :class:`NonLocalSparseAttention` in nothing but sparsity: the
    same query/key (3x3 conv ``C -> C // reduction``) and value (1x1 conv
    ``C -> C``) embeddings, the same L2-normalised keys and raw queries, no
    scaling; the softmax runs over all ``H*W`` positions.  It is exactly NLSA
    with one bucket, one round and one chunk holding every position
    (``tests/test_attention_sparse.py`` checks that equality).  ``chunk_size``, ``n_rounds``,
    ``n_buckets`` and ``seed`` are accepted and ignored, so the two classes
    share a constructor and a parameter count.

    Forward ``forward(x, return_details=False, *, generator=None)``: ``x`` float
    ``(N, C, H, W)`` -> ``(N, C, H, W)``; time and memory grow with
    ``(H W)^2`` (the fused kernel avoids storing the matrix on CPU and CUDA).
    With ``return_details=True`` also an :class:`~srlib.attention.non_local.AttentionDetails`
    (the ``(N, HW, HW)`` weights, computed explicitly).

    Raises:
        ValueError: ``x`` is not ``(N, C, H, W)`` of the module's dtype and device.

    Source: NLSN supplementary file, Table 1 ("Non-Local"); embeddings as :class:`NonLocalSparseAttention`.
    """

    def forward(self, x: torch.Tensor, return_details: bool = False, *, generator=None):
        match, values = self.embed(x)  # (N, C_e, H, W), (N, C, H, W)
        n, _, height, width = x.shape
        queries = match.flatten(2).transpose(1, 2)  # (N, L, C_e)
        keys = normalize_keys(queries)  # (N, L, C_e), unit keys
        result = non_local_attention(
            queries, keys, values.flatten(2).transpose(1, 2),  # values: (N, L, C)
            implementation="explicit" if return_details else "fused", return_attention=return_details,
            max_attention_bytes=math.inf,
        )
        attended, weights = result if return_details else (result, None)  # (N, L, C)
        attended = attended.transpose(1, 2).reshape(n, self.channels, height, width)  # (N, C, H, W)
        if return_details:
            return attended, AttentionDetails(weights=weights, map_size=(height, width))
        return attended


def readable_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    n_rounds: int,
    chunk_size: int,
    n_buckets: int | None,
    rotations: torch.Tensor,
    chunks_before: int = 1,
    chunks_after: int = 1,
    return_details: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SparseAttentionDetails]:
    """The readable version of :func:`non_local_sparse_attention`: every round and chunk at once, step by step.

    The same function (same inputs, same output, same details) written with
    the :mod:`srlib.attention.lsh` steps in the order of the module docstring,
    each one a whole tensor, without the blocks of chunks and the running
    combination of rounds that keep :func:`non_local_sparse_attention`'s
    memory linear in ``L``:

    1. keys L2-normalised (:func:`normalize_keys`), queries raw;
    2. hash the unit keys (:func:`~srlib.attention.lsh.spherical_lsh`) with the given rotations;
    3. stable-sort every round by code (:func:`~srlib.attention.lsh.sort_by_code`,
       :func:`~srlib.attention.lsh.sort_positions`);
    4. cut into chunks of ``chunk_size``, the last one padded and masked
       (:func:`~srlib.attention.lsh.split_into_chunks`), and give each chunk the
       keys of itself and its neighbours, each distinct chunk once
       (:func:`~srlib.attention.lsh.gather_neighbour_chunks`);
    5. scores ``q . k_hat``, softmax with its log-normaliser, padded keys at
       zero weight (:func:`~srlib.attention.lsh.softmax_with_logsumexp`);
       weighted values;
    6. back to position order (:func:`~srlib.attention.lsh.merge_chunks`,
       :func:`~srlib.attention.lsh.unsort_positions`) and rounds combined with
       ``softmax_r(lse_r)`` (:func:`~srlib.attention.lsh.combine_rounds`).

    Memory: all ``N R n_chunks m (K m)`` scores of all rounds exist at once
    (``K`` neighbour chunks per chunk), so keep it to small maps - notebooks,
    tests, exercises; use :func:`non_local_sparse_attention` in models.

    Args:
        query: ``(N, C_e, H, W)`` queries (used raw).
        key: ``(N, C_e, H, W)`` keys (normalised here).
        value: ``(N, C_v, H, W)`` values; all three float, one dtype, one device.
        n_rounds: ``R`` (>= 1).
        chunk_size: ``m``, positions per chunk (>= 1).
        n_buckets: ``b``, even >= 2, or None for ``2 * rotations.shape[2]``.
        rotations: ``(C_e, R, b // 2)`` hash projections (e.g.
            :func:`~srlib.attention.lsh.random_rotations`, or ``details.rotations``
            of a :func:`non_local_sparse_attention` call: then both give the same result).
        chunks_before, chunks_after: neighbour chunks (>= 0; NLSN: 1 and 1).
        return_details: also return a :class:`SparseAttentionDetails`.

    Returns:
        ``(N, C_v, H, W)``, same dtype and device as the inputs; with
        ``return_details=True`` the pair ``(output, details)``.  Differentiable
        with respect to query, key and value.

    Raises:
        ValueError: as :func:`non_local_sparse_attention` (bad maps, sizes,
            bucket count, rotations of the wrong shape).

    Source: NLSN (Mei et al., CVPR 2021); Reformer (Kitaev et al., ICLR 2020)
    for sort / chunk / neighbour chunks / round combination.
    """
    _check_maps(query, key, value)
    n_rounds = positive_int("n_rounds", n_rounds)
    chunk_size = positive_int("chunk_size", chunk_size)
    chunks_before = positive_int("chunks_before", chunks_before, minimum=0)
    chunks_after = positive_int("chunks_after", chunks_after, minimum=0)
    if not isinstance(rotations, torch.Tensor):
        raise ValueError(f"rotations must be a (C_e, n_rounds, n_buckets // 2) tensor, got {type(rotations).__name__}")
    n, _, h, w = query.shape
    length = h * w
    if n_buckets is None and rotations.dim() == 3:
        n_buckets = 2 * rotations.shape[2]
    n_buckets = bucket_count(length, chunk_size, n_buckets=n_buckets)

    # 1. Flatten the maps to sequences; unit keys, raw queries.
    q = query.flatten(2).transpose(1, 2)  # (N, L, C_e)
    k = normalize_keys(key.flatten(2).transpose(1, 2))  # (N, L, C_e)
    v = value.flatten(2).transpose(1, 2)  # (N, L, C_v)
    # 2. Hash the unit keys: one code per round and position.
    codes, rotations = spherical_lsh(k, n_rounds, n_buckets, rotations=rotations)  # (N, R, L), (C_e, R, b/2)
    # 3. Stable sort of every round by code.
    order, undo = sort_by_code(codes)  # (N, R, L) each
    # 4. Chunks of the sorted sequences; each chunk's keys and values are its own and its neighbours'.
    q_chunks, valid = split_into_chunks(sort_positions(q, order), chunk_size)  # (N, R, nc, m, C_e), (nc, m)
    k_chunks, _ = split_into_chunks(sort_positions(k, order), chunk_size)  # (N, R, nc, m, C_e)
    v_chunks, _ = split_into_chunks(sort_positions(v, order), chunk_size)  # (N, R, nc, m, C_v)
    k_seen = gather_neighbour_chunks(k_chunks, chunks_before, chunks_after)  # (N, R, nc, K m, C_e)
    v_seen = gather_neighbour_chunks(v_chunks, chunks_before, chunks_after)  # (N, R, nc, K m, C_v)
    key_valid = gather_neighbour_chunks(valid, chunks_before, chunks_after, dim=-2)  # (nc, K m)
    # 5. Attend inside each neighbourhood: softmax(q . k_hat) with padded keys at zero weight.
    scores = q_chunks @ k_seen.transpose(-1, -2)  # (N, R, nc, m, K m)
    probabilities, lse = softmax_with_logsumexp(scores, key_valid.unsqueeze(1))  # (N, R, nc, m, K m), (N, R, nc, m)
    out_chunks = probabilities @ v_seen  # (N, R, nc, m, C_v)
    # 6. Drop the padded queries, undo the sort, combine the rounds with softmax_r(lse_r).
    round_outputs = unsort_positions(merge_chunks(out_chunks, length), undo)  # (N, R, L, C_v)
    round_lse = unsort_positions(merge_chunks(lse.unsqueeze(-1), length), undo).squeeze(-1)  # (N, R, L)
    combined, round_weights = combine_rounds(round_outputs, round_lse)  # (N, L, C_v), (N, R, L)

    c_v = value.shape[1]
    output = combined.transpose(1, 2).reshape(n, c_v, h, w)  # (N, C_v, H, W)
    if not return_details:
        return output
    details = SparseAttentionDetails(
        codes=codes.reshape(n, n_rounds, h, w),
        round_outputs=round_outputs.transpose(2, 3).reshape(n, n_rounds, c_v, h, w),
        round_weights=round_weights.reshape(n, n_rounds, h, w),
        round_logsumexp=round_lse.reshape(n, n_rounds, h, w),
        n_buckets=n_buckets,
        rotations=rotations,
    )
    return output, details
