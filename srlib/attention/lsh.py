"""Locality-sensitive hashing (LSH) primitives for sparse attention: codes in, sorted chunks out.

Sparse attention with hashing (Reformer; NLSN, CVPR 2021; DLSN) replaces the
dense ``L x L`` softmax of non-local attention by four steps that do not
depend on how the codes were made:

1. **hash** - give every position a bucket code, so that vectors pointing in
   similar directions tend to share a code (:func:`spherical_hash`,
   :func:`spherical_lsh`; several independent *rounds*);
2. **sort** - order the positions of each round by code, stably, so that a
   bucket becomes a run of consecutive positions (:func:`sort_by_code`,
   :func:`sort_positions`), and be able to put results back in place
   (:func:`unsort_positions`, the exact inverse);
3. **chunk** - cut the sorted sequence into chunks of a fixed size (the last
   one padded and its padded keys masked, :func:`split_into_chunks`) and let
   each chunk attend to itself and its neighbours (:func:`gather_neighbour_chunks`);
4. **combine** - attend inside the chunks (:func:`softmax_with_logsumexp`
   keeps the log-normaliser of every query), then merge the rounds with
   weights ``softmax_r(lse_r)`` (:func:`combine_rounds`).

Everything here works on flattened sequences: a map ``(N, C, H, W)`` becomes
``(N, L, C)`` with ``L = H*W`` (position ``i*W + j`` is pixel ``(i, j)``), and
per-round tensors are ``(N, R, L, ...)`` with ``R`` rounds.

Spherical LSH (Andoni et al., "Practical and Optimal LSH for Angular Distance",
NeurIPS 2015; used by Reformer and NLSN).  Draw a random matrix ``A`` with
i.i.d. ``N(0, 1)`` entries of shape ``(D, b/2)``; the code of ``x`` is::

    h(x) = argmax( concat[x A, -x A] )      in {0, ..., b - 1}

i.e. the nearest of the ``b`` points ``+-a_k`` after a random rotation.  The
code only depends on the direction of ``x`` (it is unchanged by ``x -> c x``,
``c > 0``), and two vectors at a small angle get the same code more often than
two vectors at a large angle.  Rounds use independent matrices; stacked they
form the ``(D, R, b/2)`` tensor of :func:`random_rotations`.

Super-bit LSH (J. Ji, J. Li, S. Yan, B. Zhang, Q. Tian, "Super-Bit
Locality-Sensitive Hashing", NeurIPS 2012; used by DLSN, Algorithm 1 lines
5-8 and eq. 12).  Draw a Gaussian ``H`` of ``b`` directions in ``D``
dimensions, orthonormalise them (``M``), and take ``h(x) = argmax(M x)`` over
the ``b`` directions - no ``[x, -x]`` doubling, so ``b`` projections give
``b`` buckets (:func:`superbit_projections`, :func:`superbit_hash`).
Orthogonal directions spread the hyperplanes evenly instead of letting two
random ones nearly coincide; Ji et al. prove that this lowers the variance of
the angle estimate made from the codes.  When ``b > D`` no ``b`` orthonormal
directions exist; see :data:`SUPERBIT_MODES` for the three ways to draw them.
Both hashes feed the same sort / chunk / combine steps: :func:`draw_projections`
and :func:`lsh_codes` choose between them by name (:data:`HASHINGS`).

Randomness.  Rotations are drawn **on the CPU from an explicit CPU
``torch.Generator`` (or an integer seed)** and then moved to the input's device
and dtype, so one seed gives the same rotations - and, up to rounding at exact
ties, the same buckets - on CPU and CUDA, in float32 and float64.  The NLSN
code draws them with the global RNG on the input's device at every call.

Source: Y. Mei, Y. Fan, Y. Zhou, "Image Super-Resolution with Non-Local Sparse
Attention", CVPR 2021 (spherical LSH, attention within bucket chunks and their
neighbours, several hashing rounds weighted by their normalisers); official code
HarukiYqM/Non-Local-Sparse-Attention; N. Kitaev, L. Kaiser, A. Levskaya,
"Reformer: The Efficient Transformer", ICLR 2020 (sort, chunk, neighbour
chunks, rounds combined by their log-normalisers).
"""

from __future__ import annotations

import math
import numbers

import torch

from srlib.attention._common import positive_int

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "HASHINGS",
    "MAX_BUCKETS",
    "SUPERBIT_MODES",
    "bucket_count",
    "combine_rounds",
    "cpu_generator",
    "draw_projections",
    "gather_neighbour_chunks",
    "lsh_codes",
    "merge_chunks",
    "neighbour_chunk_offsets",
    "offset_rounds",
    "orthonormalize_columns",
    "projection_buckets",
    "random_rotations",
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

# Chunk size of the official NLSN code (positions per chunk; also the divisor of the bucket rule).
DEFAULT_CHUNK_SIZE = 144
# Upper bound of the official bucket rule.
MAX_BUCKETS = 128
#: The hash functions the sparse attentions can use: NLSN's spherical LSH and DLSN's super-bit LSH.
HASHINGS = ("spherical", "superbit")
#: How super-bit LSH draws its ``b`` directions in ``D`` dimensions (see :func:`superbit_projections`):
#: ``"superbit"`` - ``ceil(b / D)`` independent blocks of orthonormal directions (Ji et al. 2012, Sec. 3);
#: ``"orthonormal"`` - one orthonormal set, only defined for ``b <= D`` (DLSN Algorithm 1 line 6);
#: ``"official"`` - ``torch.nn.init.orthogonal_`` of a ``(D, b)`` matrix, as the DLSN code does:
#: orthonormal directions for ``b <= D``, orthonormal *rows* (a tight frame, directions not unit) for ``b > D``.
SUPERBIT_MODES = ("superbit", "orthonormal", "official")


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


def _check_bucket_number(name: str, value) -> int:
    """An even bucket count >= 2 (spherical LSH makes codes in pairs ``+a_k`` / ``-a_k``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 2 or value % 2:
        raise ValueError(
            f"{name} must be an even integer >= 2 (spherical LSH draws {name} / 2 random directions "
            f"and uses each with both signs), got {value!r}"
        )
    return int(value)


def _check_rank(name: str, x: torch.Tensor, rank: int, layout: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != rank:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a {rank}-D tensor shaped {layout}, got {shape}")


# ----------------------------------------------------------------------------------------------
# Bucket count and randomness
# ----------------------------------------------------------------------------------------------


def bucket_count(
    length: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_buckets: int = MAX_BUCKETS,
    n_buckets: int | None = None,
    hashing: str = "spherical",
) -> int:
    """Number of hash buckets ``b`` for a sequence of ``length`` positions (NLSN's rule).

    The official NLSN code computes, with ``L = H*W`` and the chunk size 144::

        b = min(L // 144 + (L // 144) % 2, 128)

    i.e. about one bucket per chunk, rounded up to an even number (spherical
    LSH needs an even count), at most 128.  For ``L < 144`` this gives
    ``b = 0`` and the official code crashes (an argmax over zero buckets);
    here the result is never below the smallest valid even count, **2**.
    Examples: ``L = 100 -> 2`` (official: crash), ``144 -> 2``, ``432 -> 4``,
    ``48*48 = 2304 -> 16``, ``100*100 = 10000 -> 70``, ``L >= 18432 -> 128``.

    Args:
        length: ``L``, number of positions (``H*W`` of a feature map), >= 1.
        chunk_size: the divisor of the rule (the chunk size, 144 in NLSN), >= 1.
        max_buckets: the upper bound (128 in NLSN), an even integer >= 2.
        n_buckets: explicit override: when given, it is checked (an even
            integer >= 2 for spherical LSH, any integer >= 1 for super-bit
            LSH) and returned as is, and the rule is not used.
        hashing: ``"spherical"`` or ``"superbit"``; the rule is the same for
            both (DLSN's code copies NLSN's line), only the override's check differs.

    Returns:
        ``b``, an even integer in ``[2, max_buckets]`` (or ``n_buckets``).

    Raises:
        ValueError: ``length`` or ``chunk_size`` not a positive integer; an odd
            or too small ``max_buckets`` or ``n_buckets``.

    Source: official NLSN code (HarukiYqM/Non-Local-Sparse-Attention), the
    ``hash_buckets`` line of the attention's forward; the lower bound 2 is ours.
    """
    length = positive_int("length", length)
    chunk_size = positive_int("chunk_size", chunk_size)
    max_buckets = _check_bucket_number("max_buckets", max_buckets)
    if hashing not in HASHINGS:
        raise ValueError(f"hashing must be one of {', '.join(map(repr, HASHINGS))}, got {hashing!r}")
    if n_buckets is not None:
        if hashing == "superbit":
            return positive_int("n_buckets", n_buckets)
        return _check_bucket_number("n_buckets", n_buckets)
    chunks = length // chunk_size
    return max(min(chunks + chunks % 2, max_buckets), 2)


def cpu_generator(generator: torch.Generator | int) -> torch.Generator:
    """A CPU ``torch.Generator`` from a generator or an integer seed.

    Args:
        generator: a CPU ``torch.Generator`` (returned as is, so drawing from
            the result advances it) or an integer seed (a fresh generator
            seeded with it; seeds may be any integer in ``[-2**63, 2**64)``).

    Returns:
        A ``torch.Generator`` on the CPU.

    Raises:
        TypeError: ``None``, a bool or another non-integer.
        ValueError: a generator on another device (draw on the CPU and move
            the result: the same seed then gives the same numbers everywhere).
    """
    if isinstance(generator, torch.Generator):
        if generator.device.type != "cpu":
            raise ValueError(
                f"the generator must live on the CPU, got one on {generator.device}; random rotations "
                "are drawn on the CPU and moved to the input's device, so that one seed gives the same "
                "buckets on every device: pass torch.Generator() (CPU) or an integer seed"
            )
        return generator
    if isinstance(generator, bool) or not isinstance(generator, numbers.Integral):
        raise TypeError(
            f"randomness must come from an explicit CPU torch.Generator or an integer seed, got {generator!r}"
        )
    return torch.Generator().manual_seed(int(generator))


def random_rotations(
    dim: int,
    n_rounds: int,
    n_buckets: int,
    generator: torch.Generator | int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Random projections of spherical LSH: ``(D, n_rounds, n_buckets // 2)``, entries i.i.d. N(0, 1).

    The numbers are always drawn in float32 on the CPU from ``generator`` and
    then moved to ``device`` and cast to ``dtype``, so one seed gives the same
    rotations on every device and in every dtype.  (The draw has this exact
    shape, in this order: with a given generator state the result is fixed.)

    Args:
        dim: ``D``, channels of the vectors to hash (>= 1).
        n_rounds: ``R``, independent hashing rounds (>= 1).
        n_buckets: ``b``, buckets per round, even and >= 2.
        generator: a CPU ``torch.Generator`` (advanced by the draw) or an
            integer seed, see :func:`cpu_generator`.
        device: where to put the result (default: CPU).
        dtype: floating dtype of the result (default: float32).

    Returns:
        ``(D, R, b // 2)`` tensor; column ``[:, r, k]`` is the direction
        ``a_k`` of round ``r``.

    Raises:
        ValueError: non-positive ``dim`` / ``n_rounds``, odd or too small
            ``n_buckets``, a non-floating ``dtype``, a generator on a non-CPU device.
        TypeError: ``generator`` is neither a generator nor an integer.
    """
    dim = positive_int("dim", dim)
    n_rounds = positive_int("n_rounds", n_rounds)
    n_buckets = _check_bucket_number("n_buckets", n_buckets)
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    rotations = torch.randn(
        (dim, n_rounds, n_buckets // 2), generator=cpu_generator(generator), dtype=torch.float32
    )  # (D, R, b/2), drawn on the CPU
    return rotations.to(device=device if device is not None else "cpu", dtype=dtype or torch.float32)


# ----------------------------------------------------------------------------------------------
# 1. Hash
# ----------------------------------------------------------------------------------------------


_HASH_BLOCK_ELEMENTS = 1 << 22  # projections computed at once by spherical_hash


def spherical_hash(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Spherical LSH codes ``argmax(concat[x A_r, -x A_r])`` for every position and round.

    Args:
        x: ``(N, L, D)`` float vectors to hash (any norm: the code only
            depends on the direction; an all-zero vector gets code 0).
        rotations: ``(D, R, b // 2)`` projections (:func:`random_rotations`);
            moved to ``x``'s device and dtype (the same numbers everywhere).

    Returns:
        ``(N, R, L)`` int64 codes in ``[0, b)`` - round ``r`` of position ``l``
        is ``codes[n, r, l]``; code ``k < b/2`` means ``+a_k`` won, code
        ``k + b/2`` means ``-a_k`` won.  Not differentiable (integers).

    Raises:
        ValueError: ``x`` not 3-D or not floating, ``rotations`` not 3-D, or
            their ``D`` differ.
    """
    # argmax over [x.a_1, ..., x.a_{b/2}, -x.a_1, ..., -x.a_{b/2}] without building that
    # (N, L, b) tensor: the best "+" direction is the largest projection, the best "-" direction
    # the smallest one; ties go to the "+" half, as the first maximum of the concatenation would.
    def codes_of(projections: torch.Tensor) -> torch.Tensor:  # (N, g, L, b/2) -> (N, g, L)
        best_plus = projections.amax(dim=-1)  # (N, g, L)
        best_minus = projections.amin(dim=-1)  # (N, g, L)
        plus = best_plus >= -best_minus  # (N, g, L), the "+" half wins
        index = _first_index_of(projections, torch.where(plus, best_plus, best_minus))  # (N, g, L)
        return torch.where(plus, index, index + projections.shape[-1])

    return _codes_by_round_groups(x, rotations, "rotations", "(D, n_rounds, n_buckets // 2)", codes_of)


def _first_index_of(values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Index of the first entry of each row of ``values`` ``(..., P)`` equal to ``target`` ``(...,)``, int64.

    With ``target`` the row's maximum (or minimum) this is ``argmax`` (``argmin``) with ties going to
    the first index, as ``torch.max`` documents, computed from two vectorised passes (compare, then the
    smallest matching index) instead of a reduction that carries indices, several times slower on CPU.
    A row without a match (a NaN) gives ``P - 1``, so codes stay in range.
    """
    width = values.shape[-1]
    dtype = torch.int16 if 2 * width < 2**15 else torch.int64
    slots = torch.arange(width, device=values.device, dtype=dtype)  # (P,)
    first = torch.add(slots, values != target.unsqueeze(-1), alpha=width).amin(dim=-1)  # (...,), P + i if no match
    return first.clamp_(max=width - 1).long()


def _codes_by_round_groups(x: torch.Tensor, projections: torch.Tensor, name: str, layout: str, codes_of) -> torch.Tensor:
    """Check ``x`` ``(N, L, D)`` and ``projections`` ``(D, R, P)``, project, and code a group of rounds at a time.

    ``codes_of`` maps the ``(N, g, L, P)`` projections of ``g`` rounds to their ``(N, g, L)`` codes.
    Rounds go in groups of at most about 4M projections, which bounds the peak on
    large maps and keeps many rounds of a small input (a collision experiment)
    vectorised.  Returns ``(N, R, L)`` int64 codes.
    """
    _check_rank("x", x, 3, "(N, L, D)")
    _check_rank(name, projections, 3, layout)
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if projections.shape[0] != x.shape[2]:
        raise ValueError(
            f"{name} must have one row per channel of x: x has D = {x.shape[2]} channels, "
            f"{name} have shape {tuple(projections.shape)}"
        )
    projections = projections.to(device=x.device, dtype=x.dtype)
    x = x.detach()
    per_round = max(x.shape[0] * x.shape[1] * projections.shape[2], 1)
    group = max(1, min(projections.shape[1], _HASH_BLOCK_ELEMENTS // per_round))
    codes = [
        codes_of(torch.einsum("nld,drk->nrlk", x, projections[:, start:start + group]))  # (N, g, L)
        for start in range(0, projections.shape[1], group)
    ]
    return torch.cat(codes, dim=1)  # (N, R, L)


def spherical_lsh(
    x: torch.Tensor,
    n_rounds: int,
    n_buckets: int,
    generator: torch.Generator | int | None = None,
    rotations: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw (or take) the rotations and hash: :func:`random_rotations` + :func:`spherical_hash`.

    Args:
        x: ``(N, L, D)`` float vectors.
        n_rounds: ``R`` (>= 1).
        n_buckets: ``b``, even, >= 2 (see :func:`bucket_count` for NLSN's rule).
        generator: CPU ``torch.Generator`` or integer seed for a fresh draw.
        rotations: precomputed ``(D, R, b // 2)`` projections instead of a draw.
            Exactly one of ``generator`` and ``rotations`` must be given.

    Returns:
        ``(codes, rotations)``: ``(N, R, L)`` int64 codes in ``[0, b)`` and the
        ``(D, R, b // 2)`` rotations used (on ``x``'s device, in its dtype), so
        that a call can be repeated exactly.

    Raises:
        ValueError: both or neither of ``generator`` / ``rotations``; rotations
            whose shape does not match ``(D, n_rounds, n_buckets // 2)``; the
            errors of :func:`random_rotations` and :func:`spherical_hash`.
        TypeError: a generator that is neither a ``torch.Generator`` nor an integer.
    """
    return lsh_codes(x, "spherical", n_rounds, n_buckets, generator=generator, projections=rotations)


def offset_rounds(codes: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Make the codes of different rounds disjoint: round ``r`` adds ``r * n_buckets``.

    With offsets, one sort of all ``R * L`` codes of an image puts round 0
    first, then round 1, ... (as in the official code, which sorts them
    together); :func:`sort_by_code` sorts each round separately, which gives
    the same order within each round.

    Args:
        codes: ``(N, R, L)`` integer codes in ``[0, n_buckets)``.
        n_buckets: ``b`` (>= 1).

    Returns:
        ``(N, R, L)`` codes, round ``r`` in ``[r b, (r + 1) b)``.

    Raises:
        ValueError: ``codes`` not 3-D or not integer, bad ``n_buckets``.
    """
    _check_rank("codes", codes, 3, "(N, n_rounds, L)")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
    n_buckets = positive_int("n_buckets", n_buckets)
    offsets = torch.arange(codes.shape[1], device=codes.device, dtype=codes.dtype) * n_buckets  # (R,)
    return codes + offsets.view(1, -1, 1)  # (N, R, L)


# ----------------------------------------------------------------------------------------------
# 1b. Super-bit hash (DLSN) and the choice between the two hashes
# ----------------------------------------------------------------------------------------------


def orthonormalize_columns(matrix: torch.Tensor) -> torch.Tensor:
    """Gram-Schmidt of the columns of ``matrix``, computed as a QR factorisation with signs fixed.

    Classical Gram-Schmidt on the columns ``h_1, ..., h_P`` (in that order)
    gives ``H = Q R`` with ``Q`` orthonormal and ``R`` upper triangular with a
    positive diagonal.  Householder QR (``torch.linalg.qr``) gives the same
    product up to the signs of ``R``'s diagonal; multiplying column ``k`` of
    ``Q`` by ``sign(R_kk)`` gives exactly Gram-Schmidt's ``Q`` (the QR
    factorisation with a positive diagonal is unique for a full-rank ``H``),
    but computed stably: classical Gram-Schmidt loses orthogonality in
    floating point, Householder does not.  ``tests/test_attention_lsh.py``
    compares this with a float64 Gram-Schmidt loop.

    Args:
        matrix: ``(..., D, P)`` float, ``P <= D``, full column rank (true with
            probability 1 for a Gaussian draw).

    Returns:
        ``(..., D, P)`` with orthonormal columns, same dtype and device.

    Raises:
        ValueError: fewer than 2 dimensions, or more columns than rows
            (``P > D``: no ``P`` orthonormal vectors exist in ``D`` dimensions).
    """
    if not isinstance(matrix, torch.Tensor) or matrix.dim() < 2:
        raise ValueError("matrix must be a (..., D, P) tensor")
    if matrix.shape[-1] > matrix.shape[-2]:
        raise ValueError(
            f"cannot orthonormalise {matrix.shape[-1]} columns in {matrix.shape[-2]} dimensions: at most D "
            "orthonormal directions exist in D dimensions"
        )
    q, r = torch.linalg.qr(matrix, mode="reduced")  # (..., D, P), (..., P, P)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))  # (..., P)
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return q * signs.unsqueeze(-2)  # (..., D, P), Gram-Schmidt's Q


def superbit_projections(
    dim: int,
    n_rounds: int,
    n_buckets: int,
    generator: torch.Generator | int,
    mode: str = "superbit",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Super-bit projection directions ``M^T``: ``(D, n_rounds, b)``, column ``[:, r, k]`` the ``k``-th direction.

    Per round, ``b`` Gaussian directions (DLSN Algorithm 1 line 5: ``H``,
    ``b x D``, drawn here as its transpose ``(D, b)``) are made orthogonal
    (line 6).  Whether ``b`` orthonormal directions exist depends on ``b``
    and ``D``; ``mode`` says what to do (:data:`SUPERBIT_MODES`):

    * ``"superbit"`` (default) - the batched super-bit of Ji et al. (NeurIPS
      2012, Sec. 3, "super-bit depth" ``D`` and several independent
      batches): columns ``[0, D)``, ``[D, 2D)``, ... of the draw are
      orthonormalised separately, so each block of at most ``D`` directions is
      orthonormal and different blocks are independent.  For ``b <= D`` there
      is one block: the same as ``"orthonormal"``.
    * ``"orthonormal"`` - one orthonormal set of ``b`` directions (the paper's
      Algorithm 1 taken literally); ``b > D`` raises ``ValueError``.
    * ``"official"`` - what the DLSN code's ``torch.nn.init.orthogonal_(torch.empty(D, b))``
      produces (``laoyangui/DLSN``, ``src/model/attention.py``, ``SBLSH``):
      for ``b <= D`` orthonormal columns (the same as ``"orthonormal"``); for
      ``b > D`` ``orthogonal_`` orthonormalises the ``D`` *rows* instead, so
      ``M^T M`` is not the identity, the ``b`` directions have squared norms
      that sum to ``D`` (not 1 each) and the argmax favours the longer ones.
      The released DLSN hashes ``D = 256 / 4 = 64`` channels; the bucket rule
      gives ``b = 18`` on its 48x48 LR training patches and reaches ``b > 64``
      only on maps of more than ``65 * 128`` positions (large test images),
      while a compact model with few channels is in this regime already in training.

    All three orthonormalise with :func:`orthonormalize_columns` (Gram-Schmidt
    computed as QR).  The Gaussian draw is the same for every mode - float32
    on the CPU from ``generator``, shape ``(n_rounds, D, b)`` - so for
    ``b <= D`` the three modes give identical directions; they are then
    orthonormalised in float64 and cast to ``dtype`` on ``device``.

    Args:
        dim: ``D``, channels of the vectors to hash (>= 1).
        n_rounds: ``R``, hash rounds (>= 1).
        n_buckets: ``b``, buckets per round = directions per round (>= 1).
        generator: a CPU ``torch.Generator`` (advanced by the draw) or an integer seed.
        mode: one of :data:`SUPERBIT_MODES`.
        device: where to put the result (default CPU).
        dtype: floating dtype of the result (default float32).

    Returns:
        ``(D, R, b)`` projections; ``x @ P[:, r]`` are round ``r``'s ``b`` projections of ``x``.

    Raises:
        ValueError: an unknown ``mode``; ``mode="orthonormal"`` with ``b > D``
            (the message names the modes that work); non-positive sizes; a
            non-floating ``dtype``; a generator on a non-CPU device.
        TypeError: ``generator`` is neither a generator nor an integer.

    Source: DLSN (Algorithm 1 lines 5-6, eq. 12); Ji et al., "Super-Bit
    Locality-Sensitive Hashing", NeurIPS 2012.
    """
    dim = positive_int("dim", dim)
    n_rounds = positive_int("n_rounds", n_rounds)
    n_buckets = positive_int("n_buckets", n_buckets)
    if mode not in SUPERBIT_MODES:
        raise ValueError(f"superbit mode must be one of {', '.join(map(repr, SUPERBIT_MODES))}, got {mode!r}")
    if mode == "orthonormal" and n_buckets > dim:
        raise ValueError(
            f"superbit mode 'orthonormal' needs b <= D, but b = {n_buckets} buckets were asked for vectors of "
            f"D = {dim} channels: no {n_buckets} orthonormal directions exist in {dim} dimensions. Use "
            "mode='superbit' (independent orthonormal blocks of at most D directions, Ji et al. 2012) or "
            "mode='official' (what the DLSN code does: orthonormal rows), fewer buckets, or more channels"
        )
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    draw = torch.randn((n_rounds, dim, n_buckets), generator=cpu_generator(generator), dtype=torch.float32)  # (R, D, b)
    draw = draw.double()
    if n_buckets <= dim:
        directions = orthonormalize_columns(draw)  # (R, D, b), every mode
    elif mode == "official":
        directions = orthonormalize_columns(draw.transpose(1, 2)).transpose(1, 2)  # (R, D, b), orthonormal rows
    else:  # "superbit": independent orthonormal blocks of D directions (the last block may be smaller)
        directions = torch.cat(
            [orthonormalize_columns(draw[:, :, start:start + dim]) for start in range(0, n_buckets, dim)], dim=2
        )  # (R, D, b)
    return directions.permute(1, 0, 2).to(device=device if device is not None else "cpu", dtype=dtype or torch.float32)


def superbit_hash(x: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """Super-bit LSH codes ``argmax_k (x . m_k)`` for every position and round (DLSN eq. 12, Algorithm 1 lines 7-8).

    Args:
        x: ``(N, L, D)`` float vectors (any norm: scaling ``x`` by ``c > 0`` keeps its code).
        projections: ``(D, R, b)`` directions (:func:`superbit_projections`),
            moved to ``x``'s device and dtype.

    Returns:
        ``(N, R, L)`` int64 codes in ``[0, b)``; ties go to the first maximum.
        Not differentiable (integers).

    Raises:
        ValueError: ``x`` not 3-D or not floating, ``projections`` not 3-D, or their ``D`` differ.
    """
    return _codes_by_round_groups(
        x, projections, "projections", "(D, n_rounds, n_buckets)", lambda p: _first_index_of(p, p.amax(dim=-1))
    )  # (N, R, L), first maximum wins ties


def superbit_lsh(
    x: torch.Tensor,
    n_rounds: int,
    n_buckets: int,
    generator: torch.Generator | int | None = None,
    projections: torch.Tensor | None = None,
    mode: str = "superbit",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw (or take) super-bit projections and hash: :func:`superbit_projections` + :func:`superbit_hash`.

    Args:
        x: ``(N, L, D)`` float vectors.
        n_rounds: ``R`` (>= 1).
        n_buckets: ``b`` (>= 1; see :func:`bucket_count` for the official rule).
        generator: CPU ``torch.Generator`` or integer seed for a fresh draw.
        projections: precomputed ``(D, R, b)`` directions instead; exactly one
            of ``generator`` / ``projections``.
        mode: how to draw (:data:`SUPERBIT_MODES`), used with ``generator``.

    Returns:
        ``(codes, projections)``: ``(N, R, L)`` int64 codes in ``[0, b)`` and the
        ``(D, R, b)`` directions used (``x``'s device and dtype).

    Raises:
        ValueError: both or neither source; projections of the wrong shape; the
            errors of :func:`superbit_projections` and :func:`superbit_hash`.
    """
    return lsh_codes(x, "superbit", n_rounds, n_buckets, generator=generator, projections=projections, mode=mode)


def projection_buckets(projections: torch.Tensor, hashing: str) -> int:
    """The bucket count ``b`` that a projection tensor implies: ``2 P`` for spherical LSH, ``P`` for super-bit.

    ``projections`` is ``(D, R, P)``.  Raises ``ValueError`` for an unknown
    ``hashing`` or a tensor that is not 3-D.
    """
    if hashing not in HASHINGS:
        raise ValueError(f"hashing must be one of {', '.join(map(repr, HASHINGS))}, got {hashing!r}")
    _check_rank("projections", projections, 3, "(D, n_rounds, P)")
    return 2 * projections.shape[2] if hashing == "spherical" else projections.shape[2]


def draw_projections(
    hashing: str,
    dim: int,
    n_rounds: int,
    n_buckets: int,
    generator: torch.Generator | int,
    mode: str = "superbit",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Random projections of either hash: :func:`random_rotations` ``(D, R, b/2)`` or :func:`superbit_projections` ``(D, R, b)``.

    ``mode`` (:data:`SUPERBIT_MODES`) only matters for ``hashing="superbit"``.

    Raises:
        ValueError: unknown ``hashing``; the errors of the two drawing functions.
    """
    if hashing not in HASHINGS:
        raise ValueError(f"hashing must be one of {', '.join(map(repr, HASHINGS))}, got {hashing!r}")
    if hashing == "spherical":
        return random_rotations(dim, n_rounds, n_buckets, generator, device=device, dtype=dtype)
    return superbit_projections(dim, n_rounds, n_buckets, generator, mode=mode, device=device, dtype=dtype)


def lsh_codes(
    x: torch.Tensor,
    hashing: str,
    n_rounds: int,
    n_buckets: int,
    generator: torch.Generator | int | None = None,
    projections: torch.Tensor | None = None,
    mode: str = "superbit",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hash ``x`` with the named hash: the one entry point the sparse attentions call.

    Args:
        x: ``(N, L, D)`` float vectors.
        hashing: ``"spherical"`` (NLSN) or ``"superbit"`` (DLSN), :data:`HASHINGS`.
        n_rounds: ``R`` (>= 1).
        n_buckets: ``b`` (spherical: even >= 2; super-bit: >= 1).
        generator: CPU generator or integer seed for a fresh draw, or
        projections: the precomputed ``(D, R, P)`` tensor (``P = b/2`` spherical,
            ``b`` super-bit); exactly one of the two.
        mode: super-bit drawing mode (:data:`SUPERBIT_MODES`).

    Returns:
        ``(codes, projections)``: ``(N, R, L)`` int64 codes in ``[0, b)`` and
        the projections used, on ``x``'s device and in its dtype.

    Raises:
        ValueError: unknown ``hashing``; both or neither source; projections
            of the wrong shape; the errors of the drawing and hashing functions.
    """
    if hashing not in HASHINGS:
        raise ValueError(f"hashing must be one of {', '.join(map(repr, HASHINGS))}, got {hashing!r}")
    _check_rank("x", x, 3, "(N, L, D)")
    n_rounds = positive_int("n_rounds", n_rounds)
    if hashing == "spherical":
        n_buckets = _check_bucket_number("n_buckets", n_buckets)
        name, layout, width = "rotations", "(D, n_rounds, n_buckets // 2)", n_buckets // 2
    else:
        n_buckets = positive_int("n_buckets", n_buckets)
        name, layout, width = "projections", "(D, n_rounds, n_buckets)", n_buckets
    if (generator is None) == (projections is None):
        raise ValueError(
            f"pass exactly one source of hash {name}: generator= (a CPU torch.Generator or an integer seed, "
            f"for a fresh draw) or {name}= (a precomputed {layout} tensor)"
        )
    if projections is None:
        projections = draw_projections(
            hashing, x.shape[2], n_rounds, n_buckets, generator, mode=mode, device=x.device, dtype=x.dtype
        )  # (D, R, P)
    else:
        expected = (x.shape[2], n_rounds, width)
        if not isinstance(projections, torch.Tensor) or tuple(projections.shape) != expected:
            shape = tuple(projections.shape) if isinstance(projections, torch.Tensor) else type(projections).__name__
            raise ValueError(f"{name} must have shape {layout} = {expected}, got {shape}")
        projections = projections.to(device=x.device, dtype=x.dtype)
    hash_codes = spherical_hash if hashing == "spherical" else superbit_hash
    return hash_codes(x, projections), projections


# ----------------------------------------------------------------------------------------------
# 2. Sort and un-sort
# ----------------------------------------------------------------------------------------------


def sort_by_code(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable sort of the positions by code along the last dimension, and its inverse.

    Ties keep position order: positions with equal codes stay in increasing
    order (the official code uses an unstable ``torch.sort``, so the order
    inside a bucket is unspecified there; it changes which chunk a position
    falls into, not the method).

    Args:
        codes: ``(..., L)`` integer (or any comparable) codes, e.g. ``(N, R, L)``.

    Returns:
        ``(order, undo)``, both ``(..., L)`` int64:
        ``order[..., s]`` is the position that goes to sorted slot ``s``
        (so ``codes.gather(-1, order)`` is non-decreasing), and ``undo`` is its
        inverse permutation: ``undo[..., order[..., s]] = s`` (so
        ``sorted.gather(-1, undo)`` restores the original order).

    Raises:
        ValueError: ``codes`` is 0-D.
    """
    if not isinstance(codes, torch.Tensor) or codes.dim() == 0:
        raise ValueError("codes must be a tensor with at least one dimension, shaped (..., L)")
    order = torch.sort(codes, dim=-1, stable=True).indices  # (..., L)
    slots = torch.arange(codes.shape[-1], device=codes.device).expand_as(order)  # (..., L)
    undo = torch.empty_like(order).scatter_(-1, order, slots)  # (..., L), undo[order[s]] = s
    return order, undo


def _gather_positions(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[n, r, s, ...] = x[n, r, index[n, r, s], ...]`` for ``x`` of shape ``(N, R, L, ...)``."""
    expanded = index.view(*index.shape, *([1] * (x.dim() - 3))).expand(*index.shape, *x.shape[3:])
    return x.gather(2, expanded)


def sort_positions(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Put the positions of ``x`` in sorted order, one copy per round.

    Args:
        x: ``(N, L, C)`` sequence (the same for every round) or ``(N, R, L, C)``
            (one per round).
        order: ``(N, R, L)`` int64 permutation from :func:`sort_by_code`.

    Returns:
        ``(N, R, L, C)`` with ``out[n, r, s] = x[n, order[n, r, s]]``;
        differentiable with respect to ``x``.

    Raises:
        ValueError: wrong ranks, or ``N`` / ``L`` (/ ``R``) that do not match.
    """
    _check_rank("order", order, 3, "(N, n_rounds, L)")
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be shaped (N, L, C) or (N, n_rounds, L, C), got {shape}")
    n, n_rounds, length = order.shape
    if x.dim() == 3:
        x = x.unsqueeze(1).expand(x.shape[0], n_rounds, *x.shape[1:])  # (N, R, L, C), no copy
    if x.shape[0] != n or x.shape[1] != n_rounds or x.shape[2] != length:
        raise ValueError(
            f"x {tuple(x.shape)} does not match order {tuple(order.shape)}: N, n_rounds and L must agree"
        )
    return _gather_positions(x, order)  # (N, R, L, C)


def unsort_positions(y: torch.Tensor, undo: torch.Tensor) -> torch.Tensor:
    """Undo :func:`sort_positions`: bring per-round results back to the original position order.

    Args:
        y: ``(N, R, L)`` or ``(N, R, L, C)`` in sorted order.
        undo: ``(N, R, L)`` int64 inverse permutation from :func:`sort_by_code`.

    Returns:
        Same shape as ``y``, with ``out[n, r, l] = y[n, r, undo[n, r, l]]``:
        position ``l``'s result.  ``unsort_positions(sort_positions(x, order),
        undo)`` equals ``x`` (expanded over rounds) exactly.

    Raises:
        ValueError: wrong ranks or shapes that do not match ``undo``.
    """
    _check_rank("undo", undo, 3, "(N, n_rounds, L)")
    if not isinstance(y, torch.Tensor) or y.dim() not in (3, 4) or tuple(y.shape[:3]) != tuple(undo.shape):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(
            f"y must be shaped (N, n_rounds, L) or (N, n_rounds, L, C) with (N, n_rounds, L) = "
            f"{tuple(undo.shape)}, got {shape}"
        )
    return _gather_positions(y, undo)


# ----------------------------------------------------------------------------------------------
# 3. Chunks
# ----------------------------------------------------------------------------------------------


def split_into_chunks(x: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a (sorted) sequence into chunks of ``chunk_size`` positions; pad the last one with zeros.

    Chunks are consecutive runs of the *sorted* sequence, so chunk edges are
    not bucket edges: a bucket may straddle two chunks and a chunk may hold
    several buckets (hence the neighbour chunks of :func:`gather_neighbour_chunks`).

    Padding.  When ``L`` is not a multiple of ``chunk_size``, the last chunk is
    filled with ``pad = n_chunks * chunk_size - L`` zero rows and the returned
    mask marks them invalid; attention must give those keys zero weight (pass
    the mask to :func:`softmax_with_logsumexp`) and drop the padded queries
    (:func:`merge_chunks`).  The official NLSN code instead pads by repeating
    the last ``pad`` sorted elements and does not mask them, so those keys are
    counted twice in the softmax of the chunks that see them; this function
    does not do that.

    Args:
        x: ``(..., L, C)`` sorted sequence, e.g. ``(N, R, L, C)``.
        chunk_size: positions per chunk (>= 1; 144 in NLSN).

    Returns:
        ``(chunks, valid)``: ``chunks`` of shape ``(..., n_chunks, chunk_size, C)``
        with ``n_chunks = ceil(L / chunk_size)``, and ``valid``, a bool tensor
        ``(n_chunks, chunk_size)`` on ``x``'s device, False exactly at the
        padded slots (the last ``pad`` slots of the last chunk).

    Raises:
        ValueError: ``x`` with fewer than 2 dimensions or ``L = 0``; a
            non-positive ``chunk_size``.
    """
    chunk_size = positive_int("chunk_size", chunk_size)
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-2] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a non-empty sequence shaped (..., L, C), got {shape}")
    length = x.shape[-2]
    n_chunks = math.ceil(length / chunk_size)
    pad = n_chunks * chunk_size - length
    if pad:
        zeros = x.new_zeros(*x.shape[:-2], pad, x.shape[-1])  # (..., pad, C)
        x = torch.cat([x, zeros], dim=-2)  # (..., n_chunks * chunk_size, C)
    chunks = x.reshape(*x.shape[:-2], n_chunks, chunk_size, x.shape[-1])  # (..., n_chunks, chunk_size, C)
    valid = (torch.arange(n_chunks * chunk_size, device=x.device) < length).view(n_chunks, chunk_size)
    return chunks, valid


def merge_chunks(chunks: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`split_into_chunks`: flatten the chunks and drop the padded slots.

    Args:
        chunks: ``(..., n_chunks, chunk_size, C)``.
        length: ``L``, the sequence length before padding,
            ``(n_chunks - 1) * chunk_size < L <= n_chunks * chunk_size``.

    Returns:
        ``(..., L, C)``.

    Raises:
        ValueError: fewer than 3 dimensions, or a ``length`` that these chunks
            cannot have come from.
    """
    if not isinstance(chunks, torch.Tensor) or chunks.dim() < 3:
        shape = tuple(chunks.shape) if isinstance(chunks, torch.Tensor) else type(chunks).__name__
        raise ValueError(f"chunks must be shaped (..., n_chunks, chunk_size, C), got {shape}")
    n_chunks, chunk_size = chunks.shape[-3], chunks.shape[-2]
    length = positive_int("length", length)
    if not (n_chunks - 1) * chunk_size < length <= n_chunks * chunk_size:
        raise ValueError(
            f"length {length} cannot come from {n_chunks} chunks of {chunk_size}: it must be in "
            f"({(n_chunks - 1) * chunk_size}, {n_chunks * chunk_size}]"
        )
    flat = chunks.reshape(*chunks.shape[:-3], n_chunks * chunk_size, chunks.shape[-1])  # (..., Lp, C)
    return flat[..., :length, :]  # (..., L, C)


def neighbour_chunk_offsets(n_chunks: int, before: int = 1, after: int = 1) -> list[int]:
    """Chunk offsets a chunk attends to: itself, ``before`` previous and ``after`` next (cyclic), each once.

    The candidates are ``0, -1, ..., -before, +1, ..., +after``; offsets that
    reach the same chunk modulo ``n_chunks`` are kept once (the first one).
    So with at least ``1 + before + after`` chunks nothing changes, and with
    fewer every chunk sees every distinct chunk exactly once - no key is
    duplicated.  With 1 chunk (a sequence no longer than one chunk) the result
    is ``[0]``: dense attention over the whole sequence.  (The official code
    always concatenates the chunk, ``roll(+1)`` and ``roll(-1)``, which with 1
    or 2 chunks repeats keys.)

    Args:
        n_chunks: number of chunks (>= 1).
        before, after: how many previous / next chunks to look at (>= 0;
            NLSN: 1 and 1, so a chunk of 144 queries sees 432 keys).

    Returns:
        A list of distinct ints, starting with 0.

    Raises:
        ValueError: ``n_chunks < 1`` or negative ``before`` / ``after``.
    """
    n_chunks = positive_int("n_chunks", n_chunks)
    before = positive_int("before", before, minimum=0)
    after = positive_int("after", after, minimum=0)
    offsets, seen = [], set()
    for offset in [0, *range(-1, -before - 1, -1), *range(1, after + 1)]:
        if offset % n_chunks not in seen:
            seen.add(offset % n_chunks)
            offsets.append(offset)
    return offsets


def gather_neighbour_chunks(chunks: torch.Tensor, before: int = 1, after: int = 1, dim: int = -3) -> torch.Tensor:
    """For every chunk, concatenate itself and its neighbour chunks (cyclic): the keys it attends to.

    Args:
        chunks: a tensor whose dimension ``dim`` counts chunks and whose next
            dimension holds the ``chunk_size`` slots: ``(..., n_chunks,
            chunk_size, C)`` with the default ``dim=-3`` (keys, values), or the
            ``(n_chunks, chunk_size)`` mask of :func:`split_into_chunks` with ``dim=-2``.
        before, after: previous / next chunks to include (>= 0); see
            :func:`neighbour_chunk_offsets` for the de-duplication when there
            are fewer than ``1 + before + after`` chunks.
        dim: the chunk dimension (negative or not), followed by the slot dimension.

    Returns:
        Same layout with the slot dimension grown to ``K * chunk_size``, where
        ``K = len(neighbour_chunk_offsets(n_chunks, before, after))``: slots
        ``[k * chunk_size, (k + 1) * chunk_size)`` of chunk ``c`` hold chunk
        ``(c + offsets[k]) % n_chunks`` (own chunk first, then previous, then next).

    Raises:
        ValueError: ``dim`` out of range or the last dimension (a slot
            dimension must follow), bad ``before`` / ``after``.
    """
    if not isinstance(chunks, torch.Tensor) or chunks.dim() < 2:
        raise ValueError("chunks must have a chunk dimension followed by a slot dimension")
    rank = chunks.dim()
    if not -rank <= dim < rank - 1 or dim == -1:
        raise ValueError(f"dim must index a chunk dimension followed by a slot dimension of a {rank}-D tensor, got {dim}")
    dim = dim % rank
    n_chunks, chunk_size = chunks.shape[dim], chunks.shape[dim + 1]
    offsets = torch.tensor(neighbour_chunk_offsets(n_chunks, before, after), device=chunks.device)  # (K,)
    neighbours = (torch.arange(n_chunks, device=chunks.device)[:, None] + offsets[None, :]) % n_chunks  # (nc, K)
    gathered = chunks.index_select(dim, neighbours.flatten())  # (..., nc * K, chunk_size, ...)
    shape = (*chunks.shape[:dim], n_chunks, len(offsets) * chunk_size, *chunks.shape[dim + 2 :])
    return gathered.reshape(shape)  # (..., nc, K * chunk_size, ...)


# ----------------------------------------------------------------------------------------------
# 4. Attend and combine
# ----------------------------------------------------------------------------------------------


def softmax_with_logsumexp(
    scores: torch.Tensor, key_valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dimension that also returns its log-normaliser; invalid keys get 0.

    ``lse = log sum_j exp(s_j)`` over the valid keys ``j`` and
    ``p_j = exp(s_j - lse)`` (0 exactly for invalid keys), the form the NLSN
    code uses so that rounds can be combined afterwards (:func:`combine_rounds`).

    Args:
        scores: ``(..., Q, K)`` float similarities (any real values).
        key_valid: bool mask broadcastable to ``scores`` (typically
            ``(n_chunks, 1, K)`` for ``(N, R, n_chunks, Q, K)`` scores), True for
            real keys, False for padding; None: all valid.  Every row must keep
            at least one valid key (else its result is NaN).

    Returns:
        ``(probabilities, lse)``: ``(..., Q, K)`` non-negative rows summing to 1,
        and ``(..., Q)`` log-normalisers.

    Raises:
        ValueError: ``scores`` with fewer than 1 dimension, a non-bool mask.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() < 1:
        raise ValueError("scores must be a tensor shaped (..., Q, K)")
    if key_valid is not None:
        if key_valid.dtype != torch.bool:
            raise ValueError(f"key_valid must be a bool mask, got {key_valid.dtype}")
        scores = scores.masked_fill(~key_valid, float("-inf"))  # padded keys: exp(-inf) = 0
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # (..., Q, 1)
    return torch.exp(scores - lse), lse.squeeze(-1)  # (..., Q, K), (..., Q)


def combine_rounds(outputs: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the rounds: ``out = sum_r softmax_r(lse_r) * out_r`` per position.

    ``exp(lse_r)`` is the total (unnormalised) weight that a query gave to the
    keys it saw in round ``r``, so the combination is the softmax over the
    union of the keys of all rounds, where a key seen in ``k`` rounds is
    counted ``k`` times (Reformer, Sec. 3, "multi-round LSH attention";
    the same weighting in the NLSN code).  A round whose chunk
    held better matches gets more weight.

    Args:
        outputs: ``(N, R, L, C)`` per-round attention outputs, in original
            position order (after :func:`unsort_positions`).
        lse: ``(N, R, L)`` per-round log-normalisers, same order.

    Returns:
        ``(combined, weights)``: ``(N, L, C)`` and the ``(N, R, L)`` round
        weights (non-negative, summing to 1 over ``R``).

    Raises:
        ValueError: wrong ranks or shapes that do not match.
    """
    _check_rank("outputs", outputs, 4, "(N, n_rounds, L, C)")
    _check_rank("lse", lse, 3, "(N, n_rounds, L)")
    if tuple(outputs.shape[:3]) != tuple(lse.shape):
        raise ValueError(
            f"outputs {tuple(outputs.shape)} and lse {tuple(lse.shape)} must share (N, n_rounds, L)"
        )
    weights = torch.softmax(lse, dim=1)  # (N, R, L), over rounds
    return (weights.unsqueeze(-1) * outputs).sum(dim=1), weights  # (N, L, C), (N, R, L)
