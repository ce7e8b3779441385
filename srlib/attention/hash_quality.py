"""How good is a hash for sparse attention?  Spherical LSH against super-bit LSH, measured.

DLSN replaces NLSN's spherical LSH by super-bit LSH, citing the "small hashing
variance" that Ji et al. prove for orthogonalised projections, and shows no
comparison.  This module measures the properties that matter for sparse
attention, for either hash (:data:`srlib.attention.lsh.HASHINGS`) at equal
numbers of buckets:

* :func:`angle_estimate_spread` - the claim as Ji et al. state it: ``K`` sign
  bits ``sign(w_k . x)`` estimate the angle between two vectors by
  ``pi * (differing bits) / K``; with orthogonalised ``w_k`` the estimate
  varies less from draw to draw (their Theorem 2, for ``K <= D``);
* :func:`collision_curve` - what sparse attention uses instead of sign bits:
  the probability that two unit vectors at angle ``theta`` get the same
  ``argmax`` code, measured per draw of the projections, so that both its mean
  and its spread across draws (the variance of one draw's behaviour) are known;
* :func:`bucket_occupancy` - how evenly the positions of a real feature map
  fill the buckets (entropy, largest bucket): chunking assumes balanced buckets;
* :func:`recovered_attention_mass` - on real embeddings, the fraction of each
  query's dense softmax mass that the keys of its chunk windows (over all
  rounds) carry: what the sparse attention can see of the dense one.

Everything takes an explicit generator or seed and runs on the input's device.
Notebook ``05_superbit_lsh.ipynb`` runs the study and plots it.

Sources: J. Ji, J. Li, S. Yan, B. Zhang, Q. Tian, "Super-Bit Locality-Sensitive
Hashing", NeurIPS 2012 (Theorem 2: the variance of the angle estimate);
A. Andoni et al., NeurIPS 2015 (spherical LSH); DLSN (Su et al.) Sec. 3.3;
NLSN (Mei et al., CVPR 2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from srlib.attention._common import choice, positive_int
from srlib.attention.lsh import (
    HASHINGS,
    SUPERBIT_MODES,
    cpu_generator,
    draw_projections,
    lsh_codes,
    neighbour_chunk_offsets,
    orthonormalize_columns,
    sort_by_code,
)
from srlib.attention.sparse import normalize_keys

__all__ = [
    "AngleEstimateSpread",
    "BucketOccupancy",
    "CollisionCurve",
    "angle_estimate_spread",
    "bucket_occupancy",
    "collision_curve",
    "pairs_at_angle",
    "recovered_attention_mass",
]


def pairs_at_angle(n_pairs: int, dim: int, angle: float, generator: torch.Generator | int,
                   dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_pairs`` random pairs of unit vectors in ``D`` dimensions at exactly ``angle`` radians.

    ``x`` uniform on the sphere, ``u`` a uniform unit vector orthogonal to
    ``x``, ``y = cos(angle) x + sin(angle) u``.

    Returns:
        ``(x, y)``, each ``(n_pairs, D)`` (CPU, ``dtype``).

    Raises:
        ValueError: ``dim < 2`` (no second direction), non-positive ``n_pairs``.
    """
    n_pairs = positive_int("n_pairs", n_pairs)
    dim = positive_int("dim", dim, minimum=2)
    generator = cpu_generator(generator)
    x = torch.randn(n_pairs, dim, generator=generator, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)  # (P, D) unit
    u = torch.randn(n_pairs, dim, generator=generator, dtype=torch.float64)
    u = u - (u * x).sum(dim=1, keepdim=True) * x  # orthogonal to x
    u = u / u.norm(dim=1, keepdim=True)  # (P, D) unit, u . x = 0
    y = math.cos(angle) * x + math.sin(angle) * u  # (P, D), angle(x, y) = angle
    return x.to(dtype), y.to(dtype)


@dataclass
class AngleEstimateSpread:
    """Result of :func:`angle_estimate_spread`; angles in radians.

    Attributes:
        angles: ``(A,)`` true angles.
        mean: ``{"independent" | "orthogonal": (A,)}`` mean estimate over draws.
        std: the same keys, ``(A,)`` standard deviation of the estimate over draws.
        n_bits, dim, n_draws: the setting.
    """

    angles: torch.Tensor
    mean: dict
    std: dict
    n_bits: int
    dim: int
    n_draws: int


def angle_estimate_spread(dim: int, n_bits: int, angles, n_draws: int, generator: torch.Generator | int,
                          n_pairs: int = 64) -> AngleEstimateSpread:
    """Ji et al.'s claim, measured: spread of the sign-bit angle estimate, independent vs orthogonal projections.

    For every draw, ``K = n_bits`` directions ``w_k`` (i.i.d. Gaussian, or the
    same draw orthonormalised in blocks of ``D``, as
    :func:`srlib.attention.lsh.superbit_projections` does) give each vector
    ``K`` bits ``sign(w_k . x)``; for a pair at angle ``theta`` the estimate is
    ``pi * #{k: bits differ} / K`` (unbiased for both).  The spread is the
    standard deviation over draws of the estimate for one fixed pair, averaged
    (as a variance) over ``n_pairs`` pairs.

    Args:
        dim: ``D``.
        n_bits: ``K`` (Ji et al.'s Theorem 2 covers ``K <= D``; above, blocks).
        angles: iterable of angles in radians, in ``(0, pi)``.
        n_draws: independent draws of the projections (>= 2).
        generator: CPU generator or seed.
        n_pairs: pairs per angle.

    Returns:
        :class:`AngleEstimateSpread`.

    Raises:
        ValueError: non-positive sizes, fewer than 2 draws.
    """
    dim, n_bits = positive_int("dim", dim, minimum=2), positive_int("n_bits", n_bits)
    n_draws = positive_int("n_draws", n_draws, minimum=2)
    generator = cpu_generator(generator)
    angles = torch.as_tensor(list(angles), dtype=torch.float64)
    draws = torch.randn(n_draws, dim, n_bits, generator=generator, dtype=torch.float64)  # (T, D, K)
    orthogonal = torch.cat([orthonormalize_columns(draws[:, :, s:s + dim]) for s in range(0, n_bits, dim)], dim=2)
    mean, std = {"independent": [], "orthogonal": []}, {"independent": [], "orthogonal": []}
    for angle in angles.tolist():
        x, y = pairs_at_angle(n_pairs, dim, angle, generator)  # (P, D) each
        for name, w in (("independent", draws), ("orthogonal", orthogonal)):
            differ = (torch.einsum("pd,tdk->tpk", x, w) > 0) != (torch.einsum("pd,tdk->tpk", y, w) > 0)  # (T, P, K)
            estimate = math.pi * differ.double().mean(dim=2)  # (T, P)
            mean[name].append(float(estimate.mean()))
            std[name].append(float(estimate.var(dim=0).mean().sqrt()))  # per-pair variance over draws
    return AngleEstimateSpread(
        angles=angles, mean={k: torch.tensor(v) for k, v in mean.items()},
        std={k: torch.tensor(v) for k, v in std.items()}, n_bits=n_bits, dim=dim, n_draws=n_draws,
    )


@dataclass
class CollisionCurve:
    """Result of :func:`collision_curve`; angles in radians, probabilities in [0, 1].

    Attributes:
        angles: ``(A,)``.
        per_draw: ``(T, A)`` collision rate of each draw of the projections
            (fraction of ``n_pairs`` pairs that share a code).
        mean: ``(A,)`` mean over draws (the collision probability).
        std: ``(A,)`` standard deviation over draws (how much one draw deviates).
        binomial_std: ``(A,)`` ``sqrt(p (1 - p) / n_pairs)``, the spread that
            counting ``n_pairs`` pairs alone would give if every draw behaved
            alike: ``std`` above it is the draws' own variance.
        hashing, mode, dim, n_buckets: the setting.
    """

    angles: torch.Tensor
    per_draw: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    binomial_std: torch.Tensor
    hashing: str
    mode: str
    dim: int
    n_buckets: int


def collision_curve(hashing: str, dim: int, n_buckets: int, angles, n_draws: int,
                    generator: torch.Generator | int, n_pairs: int = 256, mode: str = "superbit") -> CollisionCurve:
    """Probability that two unit vectors at angle ``theta`` share a bucket code, with its spread over draws.

    Each of ``n_draws`` draws of the projections (one hash round each,
    :func:`srlib.attention.lsh.draw_projections`) hashes ``n_pairs`` fresh pairs
    at every angle (:func:`pairs_at_angle`); the fraction of pairs with equal
    codes is that draw's collision rate.  Compare hashes at equal ``n_buckets``
    (spherical: ``b/2`` directions used with both signs; super-bit: ``b``
    directions).

    Args:
        hashing: ``"spherical"`` or ``"superbit"``.
        dim: ``D`` (>= 2).
        n_buckets: ``b`` (spherical: even).
        angles: iterable of angles in radians.
        n_draws: draws of the projections (>= 2).
        generator: CPU generator or integer seed (draws and pairs).
        n_pairs: pairs per angle and draw.
        mode: super-bit drawing mode (:data:`srlib.attention.lsh.SUPERBIT_MODES`).

    Returns:
        :class:`CollisionCurve`.

    Raises:
        ValueError: unknown ``hashing`` / ``mode``; the errors of the drawing functions.
    """
    hashing = choice("hashing", hashing, HASHINGS)
    mode = choice("mode", mode, SUPERBIT_MODES)
    n_draws = positive_int("n_draws", n_draws, minimum=2)
    generator = cpu_generator(generator)
    angles = torch.as_tensor(list(angles), dtype=torch.float64)
    pairs = [pairs_at_angle(n_pairs, dim, a, generator) for a in angles.tolist()]
    x = torch.cat([p[0] for p in pairs])[None]  # (1, A P, D)
    y = torch.cat([p[1] for p in pairs])[None]  # (1, A P, D)
    projections = draw_projections(hashing, dim, n_draws, n_buckets, generator, mode=mode, dtype=torch.float64)
    codes_x, _ = lsh_codes(x, hashing, n_draws, n_buckets, projections=projections)  # (1, T, A P): draws as rounds
    codes_y, _ = lsh_codes(y, hashing, n_draws, n_buckets, projections=projections)
    rates = (codes_x == codes_y)[0].double().view(n_draws, len(angles), n_pairs).mean(dim=2)  # (T, A)
    mean = rates.mean(dim=0)  # (A,)
    return CollisionCurve(angles=angles, per_draw=rates, mean=mean, std=rates.std(dim=0),
                          binomial_std=(mean * (1 - mean) / n_pairs).sqrt(), hashing=hashing, mode=mode, dim=dim,
                          n_buckets=n_buckets)


@dataclass
class BucketOccupancy:
    """Result of :func:`bucket_occupancy`, per round.

    Attributes:
        counts: ``(R, b)`` positions per bucket.
        entropy_bits: ``(R,)`` entropy of the bucket distribution, bits (at most ``log2 b``).
        normalized_entropy: ``(R,)`` entropy / ``log2 b`` in [0, 1] (1: perfectly even).
        largest_fraction: ``(R,)`` share of positions in the largest bucket.
        empty_buckets: ``(R,)`` buckets with no position.
    """

    counts: torch.Tensor
    entropy_bits: torch.Tensor
    normalized_entropy: torch.Tensor
    largest_fraction: torch.Tensor
    empty_buckets: torch.Tensor


def bucket_occupancy(codes: torch.Tensor, n_buckets: int) -> BucketOccupancy:
    """How evenly codes fill the buckets: counts, entropy, largest bucket, empty buckets per round.

    Args:
        codes: ``(R, L)`` or ``(N, R, L)`` int64 codes in ``[0, b)`` (``(N, R, H, W)``
            from ``details.codes`` works too; images of a batch are pooled).
        n_buckets: ``b``.

    Returns:
        :class:`BucketOccupancy`.

    Raises:
        ValueError: codes outside ``[0, b)`` or of fewer than 2 dimensions.
    """
    n_buckets = positive_int("n_buckets", n_buckets)
    if not isinstance(codes, torch.Tensor) or codes.dim() < 2:
        raise ValueError("codes must be shaped (R, L), (N, R, L) or (N, R, H, W)")
    if codes.dim() >= 3:
        codes = codes.transpose(0, 1).reshape(codes.shape[1], -1)  # (R, N L)
    if codes.numel() and (codes.min() < 0 or codes.max() >= n_buckets):
        raise ValueError(f"codes must lie in [0, {n_buckets}), got [{int(codes.min())}, {int(codes.max())}]")
    counts = torch.stack([torch.bincount(c, minlength=n_buckets) for c in codes.long().cpu()])  # (R, b)
    shares = counts.double() / counts.sum(dim=1, keepdim=True)  # (R, b)
    entropy = -(shares * torch.log2(shares.clamp_min(1e-300))).sum(dim=1)  # (R,) bits
    return BucketOccupancy(
        counts=counts, entropy_bits=entropy,
        normalized_entropy=entropy / math.log2(n_buckets) if n_buckets > 1 else torch.ones_like(entropy),
        largest_fraction=shares.max(dim=1).values, empty_buckets=(counts == 0).sum(dim=1),
    )


def recovered_attention_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    hashing: str,
    n_rounds: int,
    chunk_size: int,
    n_buckets: int,
    generator: torch.Generator | int,
    mode: str = "superbit",
    chunks_before: int = 1,
    chunks_after: int = 1,
) -> torch.Tensor:
    """Fraction of each query's dense softmax mass that its chunk windows, over all rounds, contain.

    Dense attention with NLSA's scores gives ``p_ij = softmax_j(q_i . k_hat_j)``
    over all ``L`` positions.  Sparse attention with ``R`` rounds lets query
    ``i`` see the keys of its own and neighbouring chunks in each round (hash of
    the unit keys, stable sort, chunks of ``m``); this returns
    ``sum_{j seen in any round} p_ij`` for every query - 1 means the sparse
    attention could have reproduced the dense one for that query.

    Args:
        query: ``(N, C_e, H, W)`` queries (raw, as NLSA and GLA use them).
        key: ``(N, C_e, H, W)`` keys (normalised here).
        hashing: ``"spherical"`` or ``"superbit"``.
        n_rounds: ``R``.
        chunk_size: ``m``.
        n_buckets: ``b``.
        generator: CPU generator or integer seed of the projections.
        mode: super-bit drawing mode.
        chunks_before, chunks_after: neighbour chunks (1 and 1 in NLSN and DLSN).

    Returns:
        ``(N, H, W)`` float64 fractions in [0, 1].

    Memory: ``N L^2`` float64 (the dense weights), e.g. 42 MiB for one 48x48 map.

    Raises:
        ValueError: maps of different shapes, the errors of the hashing functions.
    """
    if query.shape != key.shape or query.dim() != 4:
        raise ValueError(f"query and key must be (N, C_e, H, W) maps of one shape, got {tuple(query.shape)} "
                         f"and {tuple(key.shape)}")
    n, _, h, w = query.shape
    length = h * w
    chunk_size = positive_int("chunk_size", chunk_size)
    q = query.detach().double().flatten(2).transpose(1, 2)  # (N, L, C_e)
    k = normalize_keys(key.detach().double().flatten(2).transpose(1, 2))  # (N, L, C_e) unit
    weights = torch.softmax(q @ k.transpose(1, 2), dim=-1)  # (N, L, L), dense p_ij
    codes, _ = lsh_codes(k, hashing, n_rounds, n_buckets, generator=generator, mode=mode)  # (N, R, L)
    order, _ = sort_by_code(codes)  # (N, R, L)
    n_chunks = math.ceil(length / chunk_size)
    offsets = torch.tensor([o % n_chunks for o in neighbour_chunk_offsets(n_chunks, chunks_before, chunks_after)],
                           device=q.device)
    seen = torch.zeros(n, length, length, dtype=torch.bool, device=q.device)  # (N, L, L), query i saw key j
    slot_chunk = torch.arange(length, device=q.device) // chunk_size  # (L,), chunk of each sorted slot
    for r in range(n_rounds):
        chunk_of = torch.empty(n, length, dtype=torch.long, device=q.device)  # (N, L), chunk of each position
        chunk_of.scatter_(1, order[:, r], slot_chunk.expand(n, -1))
        difference = (chunk_of[:, None, :] - chunk_of[:, :, None]) % n_chunks  # (N, L, L)
        seen |= torch.isin(difference, offsets)
    return (weights * seen).sum(dim=-1).view(n, h, w)  # (N, H, W)
