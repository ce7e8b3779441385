"""Hashing primitives of sparse attention (srlib.attention.lsh): hash, sort, chunk, combine.

Each primitive is checked against a literal Python computation of its documented
rule (the hash against srlib.attention.loops.spherical_codes_loops), or against a
property that must hold exactly (inverse permutations, masks).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from srlib.attention import lsh
from srlib.attention.lsh import (
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
from srlib.attention.loops import spherical_codes_loops

# --------------------------------------------------------------------------- bucket count


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (1, 2),  # official rule: 0 buckets (crash); smallest valid even count
        (100, 2),  # 10x10 map, smaller than one chunk
        (143, 2),
        (144, 2),  # 1 chunk -> 1 + 1
        (287, 2),
        (288, 2),  # 2 chunks -> 2 + 0
        (432, 4),  # 3 -> 3 + 1
        (576, 4),
        (48 * 48, 16),  # 2304 // 144 = 16
        (100 * 100, 70),  # 10000 // 144 = 69 -> 70
        (127 * 144, 128),
        (128 * 144, 128),
        (10**6, 128),  # capped
    ],
)
def test_bucket_count_follows_the_official_rule_with_a_floor_of_two(length, expected):
    assert bucket_count(length) == expected


def test_bucket_count_equals_the_official_formula_wherever_that_formula_works():
    for length in range(144, 40_000, 37):
        official = min(length // 144 + (length // 144) % 2, 128)
        assert bucket_count(length) == official
        assert bucket_count(length) % 2 == 0


def test_bucket_count_other_chunk_sizes_and_override():
    assert bucket_count(100, chunk_size=10) == 10
    assert bucket_count(110, chunk_size=10) == 12
    assert bucket_count(10**6, chunk_size=10, max_buckets=32) == 32
    assert bucket_count(100, n_buckets=6) == 6  # override wins
    assert bucket_count(10**6, n_buckets=256) == 256  # override is not capped


@pytest.mark.parametrize(
    "kwargs",
    [
        {"length": 0},
        {"length": 10, "chunk_size": 0},
        {"length": 10, "n_buckets": 3},
        {"length": 10, "n_buckets": 0},
        {"length": 10, "max_buckets": 7},
        {"length": 10, "n_buckets": True},
    ],
)
def test_bucket_count_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="must be"):
        bucket_count(**kwargs)


# --------------------------------------------------------------------------- randomness


def test_cpu_generator_accepts_seeds_and_cpu_generators_only():
    g = torch.Generator().manual_seed(5)
    assert cpu_generator(g) is g
    a = torch.randn(4, generator=cpu_generator(7))
    b = torch.randn(4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    for bad in (None, 1.5, True, "0"):
        with pytest.raises(TypeError, match="Generator or an integer seed"):
            cpu_generator(bad)


def test_random_rotations_shape_seed_and_dtype():
    r = random_rotations(5, 3, 8, 11)
    assert r.shape == (5, 3, 4) and r.dtype == torch.float32 and r.device.type == "cpu"
    assert torch.equal(r, random_rotations(5, 3, 8, 11))
    assert not torch.equal(r, random_rotations(5, 3, 8, 12))
    # float64 rotations are the same draw, widened: one seed, same numbers in every dtype.
    assert torch.equal(random_rotations(5, 3, 8, 11, dtype=torch.float64), r.double())
    # A generator advances: two draws differ, and equal two draws from a fresh generator of the same seed.
    g, h = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    first, second = random_rotations(4, 2, 4, g), random_rotations(4, 2, 4, g)
    assert not torch.equal(first, second)
    assert torch.equal(first, random_rotations(4, 2, 4, h)) and torch.equal(second, random_rotations(4, 2, 4, h))
    with pytest.raises(ValueError, match="even integer"):
        random_rotations(4, 2, 5, 0)
    with pytest.raises(ValueError, match="n_rounds"):
        random_rotations(4, 0, 4, 0)


# --------------------------------------------------------------------------- hash


def test_spherical_hash_matches_the_literal_rule():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 4, generator=g, dtype=torch.float64)
    rotations = random_rotations(4, 3, 6, 1, dtype=torch.float64)
    codes = spherical_hash(x, rotations)
    assert codes.shape == (2, 3, 9) and codes.dtype == torch.int64
    assert codes.tolist() == spherical_codes_loops(x, rotations).tolist()
    assert int(codes.min()) >= 0 and int(codes.max()) < 6


@pytest.mark.parametrize("block", [None, 1, 6400])  # all 5 rounds at once; one at a time; groups of 2, 2, 1
def test_spherical_hash_breaks_ties_like_the_first_maximum_of_the_concatenation(block, monkeypatch):
    if block is not None:  # force rounds into small groups, as on a large map
        monkeypatch.setattr(lsh, "_HASH_BLOCK_ELEMENTS", block)
    # Integer vectors and rotations make exact ties common: between two "+" directions, between
    # two "-" directions, and between a "+" and a "-" one (max(xR) == -min(xR)).
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-2, 3, (2, 400, 3), generator=g).double()
    rotations = torch.randint(-1, 2, (3, 5, 4), generator=g).double()  # (D, R, b/2), b = 8; N*L*b/2 = 3200
    projections = torch.einsum("nld,drk->nrlk", x, rotations)
    literal = torch.cat([projections, -projections], dim=-1).argmax(dim=-1)  # first maximum
    tie_between_halves = projections.amax(-1) == -projections.amin(-1)
    assert tie_between_halves.sum() > 50  # the case is really exercised
    assert torch.equal(spherical_hash(x, rotations), literal)
    assert spherical_hash(torch.tensor([[[1.0, -1.0]]]), torch.eye(2)[:, None, :]).item() == 0


def test_spherical_hash_depends_on_direction_only_and_negation_swaps_the_halves():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 50, 8, generator=g)
    rotations = random_rotations(8, 4, 10, 2)
    codes = spherical_hash(x, rotations)
    scales = torch.rand(3, 50, 1, generator=g) * 10 + 0.1
    assert torch.equal(spherical_hash(x * scales, rotations), codes)
    assert torch.equal(spherical_hash(-x, rotations), (codes + 5) % 10)


def test_spherical_lsh_draws_or_takes_rotations():
    x = torch.randn(2, 20, 6, generator=torch.Generator().manual_seed(2))
    codes, rotations = spherical_lsh(x, 3, 8, generator=4)
    assert rotations.shape == (6, 3, 4)
    assert torch.equal(rotations, random_rotations(6, 3, 8, 4))
    again, _ = spherical_lsh(x, 3, 8, rotations=rotations)
    assert torch.equal(codes, again)
    assert torch.equal(spherical_lsh(x, 3, 8, generator=torch.Generator().manual_seed(4))[0], codes)
    assert not torch.equal(spherical_lsh(x, 3, 8, generator=5)[0], codes)
    with pytest.raises(ValueError, match="exactly one"):
        spherical_lsh(x, 3, 8)
    with pytest.raises(ValueError, match="exactly one"):
        spherical_lsh(x, 3, 8, generator=1, rotations=rotations)
    with pytest.raises(ValueError, match="rotations must have shape"):
        spherical_lsh(x, 2, 8, rotations=rotations)
    with pytest.raises(ValueError, match="x must be a 3-D"):
        spherical_hash(x[0], rotations)
    with pytest.raises(ValueError, match="one row per channel"):
        spherical_hash(x[..., :5], rotations)


def test_offset_rounds_separates_rounds():
    codes = torch.tensor([[[0, 3, 1], [2, 2, 0], [3, 0, 1]]])  # (1, 3, 3), b = 4
    shifted = offset_rounds(codes, 4)
    assert shifted.tolist() == [[[0, 3, 1], [6, 6, 4], [11, 8, 9]]]
    with pytest.raises(ValueError, match="integer tensor"):
        offset_rounds(codes.float(), 4)


def test_collision_probability_falls_with_the_angle():
    """Two unit vectors at angle theta share a code in many independent rounds: P falls with theta.

    4000 rounds per angle (fixed seeds), 16 dimensions, 8 buckets.  Measured:
    about 0.92, 0.57, 0.15, 0.004 at 0.1, 0.6, 1.5, 2.5 rad; the binomial
    standard deviation is below 0.008, the margins below are > 10 of those.
    """
    g = torch.Generator().manual_seed(0)
    dim, n_buckets, n_rounds = 16, 8, 4000
    rotations = random_rotations(dim, n_rounds, n_buckets, 123, dtype=torch.float64)
    rates = []
    for theta in (0.1, 0.6, 1.5, 2.5):
        u = torch.randn(dim, generator=g, dtype=torch.float64)
        u = u / u.norm()
        w = torch.randn(dim, generator=g, dtype=torch.float64)
        w = w - (w @ u) * u
        w = w / w.norm()
        v = math.cos(theta) * u + math.sin(theta) * w
        codes = spherical_hash(torch.stack([u, v])[None], rotations)  # (1, R, 2)
        rates.append(float((codes[0, :, 0] == codes[0, :, 1]).double().mean()))
    assert rates[0] > 0.8
    assert rates[-1] < 0.05
    for near, far in itertools.pairwise(rates):
        assert near > far + 0.1, rates


# --------------------------------------------------------------------------- sort


def test_sort_is_stable_and_undo_is_its_exact_inverse():
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 4, (2, 3, 40), generator=g)  # many ties
    order, undo = sort_by_code(codes)
    for n in range(2):
        for r in range(3):
            row = codes[n, r].tolist()
            assert order[n, r].tolist() == sorted(range(40), key=lambda p, row=row: (row[p], p))
    assert torch.equal(order.gather(-1, undo), torch.arange(40).expand(2, 3, 40))
    assert torch.equal(undo.gather(-1, order), torch.arange(40).expand(2, 3, 40))
    x = torch.randn(2, 40, 5, generator=g, dtype=torch.float64)
    sorted_x = sort_positions(x, order)  # (2, 3, 40, 5)
    assert torch.equal(sorted_x[1, 2, 7], x[1, order[1, 2, 7]])
    assert torch.equal(unsort_positions(sorted_x, undo), x.unsqueeze(1).expand(2, 3, 40, 5))
    scalar = torch.randn(2, 3, 40, generator=g)
    assert torch.equal(unsort_positions(scalar.gather(-1, order), undo), scalar)


def test_sorting_rounds_separately_equals_one_sort_of_offset_codes():
    g = torch.Generator().manual_seed(4)
    codes = torch.randint(0, 6, (2, 3, 25), generator=g)
    order, _ = sort_by_code(codes)
    global_order, _ = sort_by_code(offset_rounds(codes, 6).flatten(1))  # (2, 75), positions r*L + l
    per_round = order + torch.arange(3).view(1, 3, 1) * 25
    assert torch.equal(global_order, per_round.flatten(1))


def test_sort_positions_rejects_mismatched_shapes():
    order, undo = sort_by_code(torch.zeros(2, 3, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="does not match"):
        sort_positions(torch.zeros(2, 9, 4), order)
    with pytest.raises(ValueError, match="y must be shaped"):
        unsort_positions(torch.zeros(2, 3, 9), undo)


# --------------------------------------------------------------------------- chunks


def test_split_pads_with_masked_zeros_and_merge_inverts_it():
    x = torch.arange(1, 2 * 10 * 3 + 1, dtype=torch.float64).view(2, 10, 3)
    chunks, valid = split_into_chunks(x, 4)
    assert chunks.shape == (2, 3, 4, 3)
    assert valid.tolist() == [[True] * 4, [True] * 4, [True, True, False, False]]
    assert torch.all(chunks[:, 2, 2:] == 0)
    assert torch.equal(merge_chunks(chunks, 10), x)
    exact, valid_exact = split_into_chunks(x[:, :8], 4)
    assert exact.shape == (2, 2, 4, 3) and bool(valid_exact.all())
    single, valid_single = split_into_chunks(x, 144)  # fewer positions than one chunk
    assert single.shape == (2, 1, 144, 3) and int(valid_single.sum()) == 10
    with pytest.raises(ValueError, match="chunk_size"):
        split_into_chunks(x, 0)
    with pytest.raises(ValueError, match="cannot come from"):
        merge_chunks(chunks, 8)


@pytest.mark.parametrize(
    ("n_chunks", "before", "after", "expected"),
    [
        (1, 1, 1, [0]),
        (2, 1, 1, [0, -1]),
        (3, 1, 1, [0, -1, 1]),
        (8, 1, 1, [0, -1, 1]),
        (5, 2, 1, [0, -1, -2, 1]),
        (4, 2, 2, [0, -1, -2, 1]),
        (6, 0, 0, [0]),
        (6, 0, 2, [0, 1, 2]),
    ],
)
def test_neighbour_offsets_reach_each_distinct_chunk_once(n_chunks, before, after, expected):
    assert neighbour_chunk_offsets(n_chunks, before, after) == expected


def test_gather_neighbour_chunks_own_then_previous_then_next_without_duplicates():
    for n_chunks in (1, 2, 3, 5):
        chunks = torch.arange(n_chunks, dtype=torch.float64).view(1, n_chunks, 1, 1).expand(1, n_chunks, 2, 1)
        seen = gather_neighbour_chunks(chunks)  # (1, nc, K * 2, 1): chunk ids of the keys
        k = min(n_chunks, 3)
        assert seen.shape == (1, n_chunks, 2 * k, 1)
        for c in range(n_chunks):
            ids = seen[0, c, ::2, 0].tolist()
            assert ids[0] == c
            assert sorted(ids) == sorted({c % n_chunks, (c - 1) % n_chunks, (c + 1) % n_chunks})
            if n_chunks >= 3:
                assert ids == [c, (c - 1) % n_chunks, (c + 1) % n_chunks]
    _, valid = split_into_chunks(torch.zeros(1, 10, 1), 4)
    key_valid = gather_neighbour_chunks(valid, dim=-2)  # (3, 12)
    assert key_valid.shape == (3, 12)
    assert int((~key_valid).sum()) == 3 * 2  # the 2 padded slots, seen once by every chunk
    with pytest.raises(ValueError, match="dim"):
        gather_neighbour_chunks(valid, dim=-1)


# --------------------------------------------------------------------------- attend and combine


def test_padded_keys_get_exactly_zero_weight():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 1, 10, 3, generator=g, dtype=torch.float64)  # (N, R, L, C)
    chunks, valid = split_into_chunks(x, 4)  # 3 chunks, 2 padded slots
    keys = gather_neighbour_chunks(chunks)  # (1, 1, 3, 12, 3)
    key_valid = gather_neighbour_chunks(valid, dim=-2)  # (3, 12)
    scores = torch.einsum("nrcqd,nrckd->nrcqk", chunks, keys)
    probabilities, lse = softmax_with_logsumexp(scores, key_valid.unsqueeze(1))
    mask = key_valid.unsqueeze(1).expand_as(probabilities)
    assert torch.all(probabilities[~mask] == 0)
    assert torch.allclose(probabilities.sum(-1), torch.ones_like(lse))
    expected_lse = torch.stack(
        [torch.logsumexp(scores[0, 0, c][:, key_valid[c]], dim=-1) for c in range(3)]
    )
    assert torch.allclose(lse[0, 0], expected_lse)
    # A padded key of huge score would dominate if it were counted; masked, it changes nothing.
    loud = scores.clone()
    loud[..., ~key_valid.unsqueeze(1).expand_as(scores)[0, 0]] = 1e3
    assert torch.equal(softmax_with_logsumexp(loud, key_valid.unsqueeze(1))[0], probabilities)


def test_combine_rounds_is_the_softmax_of_lse_weighted_sum():
    g = torch.Generator().manual_seed(6)
    outputs = torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64)
    lse = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    combined, weights = combine_rounds(outputs, lse)
    for n in range(2):
        for pos in range(7):
            e = [math.exp(float(lse[n, r, pos])) for r in range(3)]
            w = [v / sum(e) for v in e]
            expected = sum(w[r] * outputs[n, r, pos] for r in range(3))
            assert torch.allclose(combined[n, pos], expected)
            assert torch.allclose(weights[n, :, pos], torch.tensor(w, dtype=torch.float64))
    dominant = lse.clone()
    dominant[:, 1] += 100.0
    assert torch.allclose(combine_rounds(outputs, dominant)[0], outputs[:, 1])
    with pytest.raises(ValueError, match="must share"):
        combine_rounds(outputs, lse[:, :2])


# --------------------------------------------------------------------------- super-bit LSH (DLSN)


def _gram(projections: torch.Tensor) -> torch.Tensor:
    """(D, R, b) directions -> (R, b, b) Gram matrices of each round's directions."""
    return torch.einsum("drk,drj->rkj", projections, projections)


@pytest.mark.parametrize("mode", lsh.SUPERBIT_MODES)
@pytest.mark.parametrize("n_buckets", [1, 5, 16])
def test_superbit_directions_are_orthonormal_when_b_fits_in_d(mode, n_buckets):
    """b <= D: every mode gives b orthonormal directions per round, and the same ones (one Gaussian draw)."""
    projections = lsh.superbit_projections(16, 3, n_buckets, 7, mode=mode, dtype=torch.float64)  # (D, R, b)
    assert projections.shape == (16, 3, n_buckets)
    torch.testing.assert_close(_gram(projections), torch.eye(n_buckets, dtype=torch.float64).expand(3, -1, -1))
    reference = lsh.superbit_projections(16, 3, n_buckets, 7, mode="superbit", dtype=torch.float64)
    torch.testing.assert_close(projections, reference, rtol=0, atol=0)


def test_superbit_mode_is_block_orthonormal_when_b_exceeds_d():
    """b > D: blocks of D consecutive directions are orthonormal; directions of different blocks are not orthogonal."""
    dim, n_buckets = 4, 10
    projections = lsh.superbit_projections(dim, 2, n_buckets, 3, dtype=torch.float64)  # (D, R, b)
    gram = _gram(projections)  # (R, b, b)
    for start in range(0, n_buckets, dim):
        block = slice(start, min(start + dim, n_buckets))
        size = block.stop - block.start
        torch.testing.assert_close(gram[:, block, block], torch.eye(size, dtype=torch.float64).expand(2, -1, -1))
    assert gram[:, :dim, dim : 2 * dim].abs().max() > 1e-3  # independent blocks


def test_official_mode_reproduces_torch_orthogonal_init():
    """mode='official' gives what torch.nn.init.orthogonal_(torch.empty(D, b)) gives from the same Gaussian numbers."""
    for dim, n_buckets in [(16, 18), (16, 8), (3, 7)]:
        torch.manual_seed(11)
        expected = torch.nn.init.orthogonal_(torch.empty(dim, n_buckets))  # the DLSN code's call, global RNG
        ours = lsh.superbit_projections(dim, 1, n_buckets, 11, mode="official")[:, 0]  # (D, b), seeded generator
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
        if n_buckets > dim:  # orthonormal rows, not columns: directions are not unit vectors
            torch.testing.assert_close(ours @ ours.T, torch.eye(dim), rtol=0, atol=1e-5)
            assert (ours.norm(dim=0) - 1).abs().max() > 0.05


def test_orthonormal_mode_refuses_more_buckets_than_channels_naming_the_other_modes():
    with pytest.raises(ValueError, match=r"b <= D.*mode='superbit'.*mode='official'"):
        lsh.superbit_projections(4, 1, 6, 0, mode="orthonormal")
    with pytest.raises(ValueError, match="superbit mode must be one of"):
        lsh.superbit_projections(4, 1, 3, 0, mode="qr")


@pytest.mark.parametrize("mode", lsh.SUPERBIT_MODES)
@pytest.mark.parametrize(("dim", "n_buckets"), [(5, 3), (5, 5), (3, 8)])
def test_superbit_codes_equal_a_float64_loop_of_algorithm_1(mode, dim, n_buckets):
    """Algorithm 1 lines 5-8 by loops (Gaussian H, Gram-Schmidt, M x, argmax) = superbit_lsh, from one seed."""
    from srlib.attention.loops import superbit_codes_loops, superbit_projections_loops

    if mode == "orthonormal" and n_buckets > dim:
        pytest.skip("not defined for b > D")
    x = torch.randn(2, 17, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    codes, projections = lsh.superbit_lsh(x, 3, n_buckets, generator=5, mode=mode)  # (N, R, L), (D, R, b)
    draw = torch.randn((3, dim, n_buckets), generator=torch.Generator().manual_seed(5))  # the same draw
    loop_projections = superbit_projections_loops(draw, mode)  # Gram-Schmidt by loops
    torch.testing.assert_close(projections, loop_projections, rtol=0, atol=1e-12)
    assert torch.equal(codes, superbit_codes_loops(x, loop_projections))
    assert codes.min() >= 0 and codes.max() < n_buckets


def test_orthonormalize_columns_equals_gram_schmidt_loops():
    from srlib.attention.loops import gram_schmidt_loops

    h = torch.randn(6, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # 4 vectors in 6-D
    expected = torch.tensor(gram_schmidt_loops(h.T.tolist()), dtype=torch.float64).T  # (6, 4)
    torch.testing.assert_close(lsh.orthonormalize_columns(h), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="at most D orthonormal directions"):
        lsh.orthonormalize_columns(torch.randn(3, 5))


def test_superbit_lsh_is_repeatable_from_a_seed_and_scale_invariant():
    x = torch.randn(1, 40, 8, generator=torch.Generator().manual_seed(0))
    a, pa = lsh.superbit_lsh(x, 2, 6, generator=3)
    b, pb = lsh.superbit_lsh(x, 2, 6, generator=3)
    assert torch.equal(a, b) and torch.equal(pa, pb)
    c, _ = lsh.superbit_lsh(x, 2, 6, generator=4)
    assert not torch.equal(a, c)
    assert torch.equal(lsh.superbit_lsh(3.5 * x, 2, 6, projections=pa)[0], a)  # direction only
    generator = torch.Generator().manual_seed(3)
    first, _ = lsh.superbit_lsh(x, 2, 6, generator=generator)
    second, _ = lsh.superbit_lsh(x, 2, 6, generator=generator)  # the generator advanced
    assert torch.equal(first, a) and not torch.equal(second, a)


def test_lsh_codes_dispatches_to_either_hash_and_checks_its_arguments():
    x = torch.randn(1, 30, 6, generator=torch.Generator().manual_seed(0))
    spherical, rotations = lsh.lsh_codes(x, "spherical", 2, 4, generator=1)
    assert torch.equal(spherical, lsh.spherical_lsh(x, 2, 4, generator=1)[0]) and rotations.shape == (6, 2, 2)
    superbit, projections = lsh.lsh_codes(x, "superbit", 2, 5, generator=1)
    assert projections.shape == (6, 2, 5) and lsh.projection_buckets(projections, "superbit") == 5
    assert lsh.projection_buckets(rotations, "spherical") == 4
    with pytest.raises(ValueError, match="hashing must be one of"):
        lsh.lsh_codes(x, "cosine", 2, 4, generator=1)
    with pytest.raises(ValueError, match="exactly one source"):
        lsh.lsh_codes(x, "superbit", 2, 4)
    with pytest.raises(ValueError, match=r"\(D, n_rounds, n_buckets\) = \(6, 2, 4\)"):
        lsh.lsh_codes(x, "superbit", 2, 4, projections=projections)
    assert bucket_count(100, n_buckets=5, hashing="superbit") == 5  # super-bit needs no even count
    with pytest.raises(ValueError, match="even integer"):
        bucket_count(100, n_buckets=5)
