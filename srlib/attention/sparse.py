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
from typing import NamedTuple

import torch
from torch import nn

from srlib.attention.lsh import (
    DEFAULT_CHUNK_SIZE,
    bucket_count,
    cpu_generator,
    neighbour_chunk_offsets,
    sort_by_code,
    spherical_lsh,
)
from srlib.attention.non_local import check_same_dtype_and_device

__all__ = [
    "KEY_NORM_EPS",
    "NonLocalSparseAttention",
    "SparseAttentionDetails",
    "non_local_sparse_attention",
    "normalize_keys",
]

# Lower bound of a key's L2 norm before dividing by it (``eps`` of ``F.normalize`` in the NLSN code).
KEY_NORM_EPS = 5e-5
# Score entries (queries x keys, over the whole batch) computed at once: 2**20 is 4 MiB in float32.
# The chunks of a round are attended in blocks of about this size (at least one chunk per block),
# so no tensor of all the scores of a round exists.
_BLOCK_SCORE_ENTRIES = 2**20


class SparseAttentionDetails(NamedTuple):
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
            and dtype); pass them back as ``rotations=`` to repeat the call exactly.
    """

    codes: torch.Tensor
    round_outputs: torch.Tensor
    round_weights: torch.Tensor
    round_logsumexp: torch.Tensor
    n_buckets: int
    rotations: torch.Tensor


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_maps(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a feature map shaped (N, C, H, W), got {shape}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if min(t.shape) == 0:
            raise ValueError(f"{name} is empty, shape {tuple(t.shape)}; every dimension must be at least 1")
    if query.shape[1] != key.shape[1]:
        raise ValueError(
            f"query and key must have the same number of channels (they are compared by dot products), "
            f"got {query.shape[1]} and {key.shape[1]}"
        )
    n, _, h, w = query.shape
    for name, t in (("key", key), ("value", value)):
        if t.shape[0] != n or tuple(t.shape[2:]) != (h, w):
            raise ValueError(
                f"{name} must share the query's batch size and size (N, H, W) = {(n, h, w)}, "
                f"got {(t.shape[0], *t.shape[2:])}"
            )
    check_same_dtype_and_device(query, key, value)


def _attend_round(
    q_rows: torch.Tensor,
    k_rows: torch.Tensor,
    v_rows: torch.Tensor,
    order: torch.Tensor,
    chunk_size: int,
    chunks_before: int,
    chunks_after: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One hashing round: attend inside the chunks of the sorted sequence, a block of chunks at a time.

    Args:
        q_rows, k_rows: ``(N * L, C_e)`` queries and unit keys; position ``l``
            of image ``n`` is row ``n * L + l``.
        v_rows: ``(N * L, C_v)`` values, same rows.
        order: ``(N, L)`` int64, the position at each sorted slot of this round.
        chunk_size, chunks_before, chunks_after: as in :func:`non_local_sparse_attention`.

    Returns:
        ``(out, lse)``: the round's ``(N * L, C_v)`` output and ``(N * L,)``
        log-normalisers, back in row (position) order.
    """
    n, length = order.shape
    device = order.device
    n_chunks = math.ceil(length / chunk_size)
    offsets = neighbour_chunk_offsets(n_chunks, chunks_before, chunks_after)  # K distinct chunk offsets
    # Row of every sorted slot; the padded slots at the end repeat the last row (masked as keys, dropped as queries).
    rows = order + torch.arange(n, device=device)[:, None] * length  # (N, L)
    rows = torch.cat([rows, rows[:, -1:].expand(n, n_chunks * chunk_size - length)], dim=1)  # (N, nc m)
    # The round's sorted sequences, cut into chunks.
    q_chunks = q_rows.index_select(0, rows.flatten()).view(n, n_chunks, chunk_size, -1)  # (N, nc, m, C_e)
    k_chunks = k_rows.index_select(0, rows.flatten()).view(n, n_chunks, chunk_size, -1)  # (N, nc, m, C_e)
    v_chunks = v_rows.index_select(0, rows.flatten()).view(n, n_chunks, chunk_size, -1)  # (N, nc, m, C_v)
    # Chunks seen by each chunk; which of them see the padded last chunk.
    neighbours = (torch.arange(n_chunks)[:, None] + torch.tensor(offsets)[None, :]) % n_chunks  # (nc, K), CPU
    sees_padding = (neighbours == n_chunks - 1).any(dim=1) & (n_chunks * chunk_size > length)  # (nc,), CPU
    neighbours_here = neighbours.to(device)  # (nc, K)
    slots = torch.arange(chunk_size, device=device)  # (m,)
    block = max(1, _BLOCK_SCORE_ENTRIES // (n * chunk_size * len(offsets) * chunk_size))  # chunks per block

    out = v_rows.new_empty(n * length, v_rows.shape[1])  # (N L, C_v); every row is written once below
    lse = v_rows.new_empty(n * length)  # (N L,)
    for first in range(0, n_chunks, block):
        last = min(first + block, n_chunks)
        size = last - first  # B chunks in this block
        # The block's queries, and the keys / values of each chunk's neighbourhood (own chunk first).
        seen = neighbours_here[first:last].flatten()  # (B K,)
        q = q_chunks[:, first:last]  # (N, B, m, C_e)
        k = k_chunks.index_select(1, seen).view(n, size, -1, k_chunks.shape[-1])  # (N, B, K m, C_e)
        v = v_chunks.index_select(1, seen).view(n, size, -1, v_chunks.shape[-1])  # (N, B, K m, C_v)
        # Scores q . k_hat; padded key slots (all in the last chunk) get -inf, i.e. zero weight.
        scores = q @ k.transpose(-1, -2)  # (N, B, m, K m)
        if bool(sees_padding[first:last].any()):
            key_valid = neighbours_here[first:last, :, None] * chunk_size + slots < length  # (B, K, m)
            scores.masked_fill_(~key_valid.view(1, size, 1, -1), float("-inf"))
        # Softmax and log-normaliser, in place: w = exp(s - max), lse = max + log sum w, out = (w v) / sum w.
        top = scores.detach().amax(dim=-1, keepdim=True)  # (N, B, m, 1); lse and out do not depend on it
        weights = scores.sub_(top).exp_()  # (N, B, m, K m)
        total = weights.sum(dim=-1, keepdim=True)  # (N, B, m, 1)
        block_out = (weights @ v) / total  # (N, B, m, C_v)
        block_lse = top + total.log()  # (N, B, m, 1)
        # Store each real query slot's result at its position's row (padded slots are the block's last ones).
        kept = min(last * chunk_size, length) - first * chunk_size  # real slots per image in this block
        real_rows = rows[:, first * chunk_size : first * chunk_size + kept].flatten()  # (N kept,)
        out.index_copy_(0, real_rows, block_out.flatten(1, 2)[:, :kept].flatten(0, 1))
        lse.index_copy_(0, real_rows, block_lse.flatten(1)[:, :kept].flatten())
    return out, lse


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

    Returns:
        ``(N, C_v, H, W)`` output, same dtype and device as the inputs;
        with ``return_details=True`` the pair ``(output, details)``.
        Differentiable with respect to query, key and value (the bucket
        assignment itself is piecewise constant).

    Memory: each query meets ``K m`` keys per round, ``K = 1 + chunks_before
    + chunks_after`` (fewer when there are fewer chunks), so there are
    ``K m R L`` scores per image instead of ``L^2``: for a 100x100 map, 4
    rounds and m = 144, 17 M against 100 M for dense attention.  They are
    never all held at once: the rounds run one after the other, each one a
    block of chunks at a time (about 2**20 scores, 4 MiB in float32, per
    block), and each round is merged into the result as soon as it is done.
    What remains is linear in ``L``: the hash projections ``(N, R, L, b)``
    (briefly), a few ``(N, L, C)`` copies of the inputs and outputs, and,
    with ``return_details=True``, every round's output.

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
    n_rounds = _check_positive_int("n_rounds", n_rounds)
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    chunks_before = _check_positive_int("chunks_before", chunks_before, minimum=0)
    chunks_after = _check_positive_int("chunks_after", chunks_after, minimum=0)
    n, _, h, w = query.shape
    c_v = value.shape[1]
    length = h * w
    if rotations is not None and n_buckets is None and isinstance(rotations, torch.Tensor) and rotations.dim() == 3:
        n_buckets = 2 * rotations.shape[2]  # the rotations fix b; spherical_lsh checks the rest
    n_buckets = bucket_count(length, chunk_size, n_buckets=n_buckets)

    q = query.flatten(2).transpose(1, 2)  # (N, L, C_e)
    k = key.flatten(2).transpose(1, 2)  # (N, L, C_e)
    v = value.flatten(2).transpose(1, 2)  # (N, L, C_v)
    k = normalize_keys(k)  # (N, L, C_e), unit keys

    # 1. Hash: one code per position and round (from the keys; the direction is all that matters).
    codes, rotations = spherical_lsh(k, n_rounds, n_buckets, generator=generator, rotations=rotations)  # (N, R, L)
    # 2. Sort each round by code (stable): order[n, r, s] is the position at sorted slot s.
    order, _ = sort_by_code(codes)  # (N, R, L)
    # One row per position (row n L + l), so that chunks can be gathered by row number.
    q_rows = q.reshape(n * length, -1)  # (N L, C_e)
    k_rows = k.reshape(n * length, -1)  # (N L, C_e)
    v_rows = v.reshape(n * length, c_v)  # (N L, C_v)
    # 3. Attend inside the chunks and their neighbours, one round after the other (see _attend_round).
    # 4. Combine the rounds as they come: out = sum_r softmax_r(lse_r) out_r over the rounds so far,
    #    and lse = log sum_r exp(lse_r), their joint log-normaliser.
    outputs, lses = [], []  # every round's result, kept only for the details
    combined = combined_lse = None  # (N L, C_v), (N L,)
    for r in range(n_rounds):
        round_out, round_lse = _attend_round(
            q_rows, k_rows, v_rows, order[:, r], chunk_size, chunks_before, chunks_after
        )  # (N L, C_v), (N L,)
        if return_details:
            outputs.append(round_out)
            lses.append(round_lse)
        if combined is None:
            combined, combined_lse = round_out, round_lse
            continue
        # Round r's share against the rounds before it: exp(lse_r) / (exp(lse) + exp(lse_r)).
        share = torch.sigmoid(round_lse - combined_lse)  # (N L,)
        combined = torch.lerp(combined, round_out, share.unsqueeze(-1))  # (N L, C_v)
        combined_lse = torch.logaddexp(combined_lse, round_lse)  # (N L,)

    output = combined.view(n, length, c_v).transpose(1, 2).reshape(n, c_v, h, w)  # (N, C_v, H, W)
    if not return_details:
        return output
    round_outputs = torch.stack([o.view(n, length, c_v) for o in outputs], dim=1)  # (N, R, L, C_v)
    round_lse = torch.stack([x.view(n, length) for x in lses], dim=1)  # (N, R, L)
    details = SparseAttentionDetails(
        codes=codes.reshape(n, n_rounds, h, w),
        round_outputs=round_outputs.transpose(2, 3).reshape(n, n_rounds, c_v, h, w),
        round_weights=torch.softmax(round_lse, dim=1).reshape(n, n_rounds, h, w),
        round_logsumexp=round_lse.reshape(n, n_rounds, h, w),
        n_buckets=n_buckets,
        rotations=rotations,
    )
    return output, details


class NonLocalSparseAttention(nn.Module):
    """The NLSA block of NLSN: embeddings, sparse attention and a scaled residual.

    ``out = x + res_scale * NLSA(match(x), match(x), assembly(x))``, where the
    queries and keys are the same match embedding (the keys normalised inside
    :func:`non_local_sparse_attention`).

    Args:
        channels: C, channels of the input map.
        reduction: the match embedding has ``C // reduction`` channels (>= 1
            required; NLSN: 4).
        chunk_size: positions per chunk (NLSN: 144).
        n_rounds: hashing rounds (NLSN: 4).
        n_buckets: buckets per round, even >= 2, or None for NLSN's rule
            (:func:`srlib.attention.lsh.bucket_count`, at least 2).
        res_scale: factor of the attention branch in the residual sum (the
            NLSN network passes 0.1).
        seed: integer seed of the hash rotations (see "Randomness").

    Layers (the names are the checkpoint keys):
        ``match_embedding`` - 3x3 conv (padding 1, bias) C -> C // reduction,
        no activation: queries and keys;
        ``assembly_embedding`` - 1x1 conv (bias) C -> C, no activation: values.

    Randomness.  ``forward(x, generator=None, return_details=False)``:

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
        :class:`SparseAttentionDetails` of the attention branch (before the
        residual).

    Raises:
        ValueError: bad constructor arguments (non-positive sizes, ``C //
            reduction < 1``, odd ``n_buckets``); an input that is not
            ``(N, C, H, W)``; a generator on a non-CPU device.
        TypeError: a non-integer ``seed``, a non-real ``res_scale``, a
            generator that is neither a ``torch.Generator`` nor an integer.

    Source: NLSN (Mei et al., CVPR 2021); layer sizes from the official code.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 4,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        n_rounds: int = 4,
        n_buckets: int | None = None,
        res_scale: float = 1.0,
        seed: int = 0,
    ):
        super().__init__()
        channels = _check_positive_int("channels", channels)
        reduction = _check_positive_int("reduction", reduction)
        if channels // reduction < 1:
            raise ValueError(
                f"channels // reduction must be at least 1 (the match embedding's channels), got "
                f"{channels} // {reduction} = 0; use reduction <= channels"
            )
        self.channels = channels
        self.reduction = reduction
        self.embed_channels = channels // reduction
        self.chunk_size = _check_positive_int("chunk_size", chunk_size)
        self.n_rounds = _check_positive_int("n_rounds", n_rounds)
        if n_buckets is not None:
            bucket_count(1, n_buckets=n_buckets)  # checks: even, >= 2
        self.n_buckets = n_buckets
        if isinstance(res_scale, bool) or not isinstance(res_scale, numbers.Real):
            raise TypeError(f"res_scale must be a real number, got {res_scale!r}")
        self.res_scale = float(res_scale)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)
        self._train_generator = cpu_generator(self.seed)

        self.match_embedding = nn.Conv2d(channels, self.embed_channels, kernel_size=3, padding=1)  # queries, keys
        self.assembly_embedding = nn.Conv2d(channels, channels, kernel_size=1)  # values

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
        generator: torch.Generator | int | None = None,
        return_details: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, SparseAttentionDetails]:
        match, assembly = self.embed(x)  # (N, C_e, H, W) queries and keys; (N, C, H, W) values
        source = self._rotation_source(generator)
        result = non_local_sparse_attention(
            match, match, assembly, n_rounds=self.n_rounds, chunk_size=self.chunk_size,
            n_buckets=self.n_buckets, generator=source, return_details=return_details,
        )
        attended, details = result if return_details else (result, None)  # attended: (N, C, H, W)
        out = x + self.res_scale * attended  # (N, C, H, W)
        if return_details:
            return out, details
        return out

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Check ``x`` and return its match and assembly embeddings.

        ``x`` float ``(N, C, H, W)`` -> ``(match (N, C // reduction, H, W),
        assembly (N, C, H, W))``: the match embedding gives the queries and,
        once normalised, the keys; the assembly embedding gives the values.

        Raises:
            ValueError: ``x`` is not a ``(N, channels, H, W)`` tensor.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects a (N, {self.channels}, H, W) feature map, got {shape}")
        return self.match_embedding(x), self.assembly_embedding(x)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, reduction={self.reduction}, chunk_size={self.chunk_size}, "
            f"n_rounds={self.n_rounds}, n_buckets={self.n_buckets}, res_scale={self.res_scale}, seed={self.seed}"
        )
