"""Non-Local Sparse Attention (srlib.attention.sparse) against the float64 loop version of srlib.attention.loops.

The loop version (sparse_attention_loops) follows the algorithm step by step with
Python loops over positions, independently of the library's gathers, chunk
tensors and einsums:

    for each image and round r:
        code(l)  = argmax concat[k_hat(l) A_r, -k_hat(l) A_r]          k_hat = k / max(|k|, 5e-5)
        sorted   = positions sorted by (code, position)
        chunks   = consecutive runs of m sorted positions (the last one shorter)
        for every query l in chunk c:
            keys     = positions of the distinct chunks c - before .. c + after (cyclic)
            lse_r(l) = log sum_j exp(q(l) . k_hat(j))
            out_r(l) = sum_j exp(q(l) . k_hat(j) - lse_r(l)) v(j)
    out(l) = sum_r softmax_r(lse_r(l)) out_r(l)

The blocked implementation (non_local_sparse_attention) is also checked against
readable_sparse_attention, the same function written with the lsh steps, unblocked.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import srlib.attention.sparse as sparse_module
from srlib.attention import attention_entry, non_local_attention
from srlib.attention.loops import nlsa_dense_loops, nlsa_loops, sparse_attention_loops
from srlib.attention.lsh import bucket_count, neighbour_chunk_offsets, random_rotations
from srlib.attention.non_local import AttentionDetails
from srlib.attention.sparse import (
    DenseMatchAttention,
    NonLocalSparseAttention,
    SparseAttentionDetails,
    non_local_sparse_attention,
    readable_sparse_attention,
)


def random_maps(n, c_e, c_v, height, width, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, c_e, height, width, generator=g, dtype=torch.float64)
    k = torch.randn(n, c_e, height, width, generator=g, dtype=torch.float64) * 2.0
    v = torch.randn(n, c_v, height, width, generator=g, dtype=torch.float64)
    return q, k, v


# --------------------------------------------------------------------------- against the loop version


@pytest.mark.parametrize(
    ("n", "height", "width", "chunk_size", "n_rounds", "n_buckets", "before", "after"),
    [
        (1, 3, 4, 5, 1, 2, 1, 1),  # L = 12: 3 chunks, last one padded by 3
        (3, 5, 7, 8, 3, 4, 1, 1),  # L = 35: 5 chunks, padded by 5; batch of 3
        (1, 2, 3, 8, 2, None, 1, 1),  # L = 6 < one chunk: a single chunk, rule gives 2 buckets
        (3, 4, 4, 8, 2, 4, 1, 1),  # L = 16: exactly 2 chunks (neighbours coincide)
        (1, 4, 4, 4, 3, 6, 1, 1),  # L = 16: 4 chunks, no padding
        (1, 5, 5, 3, 2, 8, 2, 0),  # other neighbourhood: two previous chunks, no next
    ],
)
def test_matches_the_loop_version(n, height, width, chunk_size, n_rounds, n_buckets, before, after):
    q, k, v = random_maps(n, 3, 2, height, width, seed=height * 10 + width)
    b = n_buckets if n_buckets is not None else 2
    rotations = random_rotations(3, n_rounds, b, 99, dtype=torch.float64)
    out, details = non_local_sparse_attention(
        q, k, v, n_rounds=n_rounds, chunk_size=chunk_size, n_buckets=n_buckets, rotations=rotations,
        chunks_before=before, chunks_after=after, return_details=True,
    )
    expected, expected_codes = sparse_attention_loops(q, k, v, rotations, chunk_size, before, after)
    assert out.shape == (n, 2, height, width) and out.dtype == torch.float64
    assert torch.equal(details.codes, expected_codes)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_generator_seed_and_rotations_paths_agree():
    q, k, v = random_maps(2, 4, 3, 5, 6, seed=1)
    common = {"n_rounds": 3, "chunk_size": 7}
    by_seed, details = non_local_sparse_attention(q, k, v, generator=8, return_details=True, **common)
    by_generator = non_local_sparse_attention(q, k, v, generator=torch.Generator().manual_seed(8), **common)
    by_rotations = non_local_sparse_attention(q, k, v, rotations=details.rotations, **common)
    assert torch.equal(by_seed, by_generator) and torch.equal(by_seed, by_rotations)
    b = details.n_buckets
    assert torch.equal(details.rotations, random_rotations(4, 3, b, 8, dtype=torch.float64))
    expected, _ = sparse_attention_loops(q, k, v, details.rotations, 7)
    torch.testing.assert_close(by_seed, expected, rtol=1e-10, atol=1e-12)


def test_details_are_consistent_with_the_output():
    q, k, v = random_maps(2, 4, 3, 6, 5, seed=2)
    out, details = non_local_sparse_attention(q, k, v, n_rounds=4, chunk_size=6, n_buckets=4, generator=0,
                                              return_details=True)
    assert isinstance(details, SparseAttentionDetails)
    assert details.codes.shape == (2, 4, 6, 5) and details.codes.dtype == torch.int64
    assert int(details.codes.min()) >= 0 and int(details.codes.max()) < 4
    assert details.round_outputs.shape == (2, 4, 3, 6, 5)
    assert details.round_weights.shape == details.round_logsumexp.shape == (2, 4, 6, 5)
    torch.testing.assert_close(details.round_weights.sum(1), torch.ones(2, 6, 5, dtype=torch.float64))
    torch.testing.assert_close(details.round_weights, torch.softmax(details.round_logsumexp, dim=1))
    torch.testing.assert_close((details.round_weights.unsqueeze(2) * details.round_outputs).sum(1), out)
    assert details.n_buckets == 4 and details.rotations.shape == (4, 4, 2)


@pytest.mark.parametrize(
    ("n", "height", "width", "chunk_size", "n_rounds", "n_buckets", "before", "after"),
    [
        (2, 14, 14, 16, 3, None, 1, 1),  # L = 196: 13 chunks, the last padded; the rule gives 12 buckets
        (1, 5, 7, 8, 2, 4, 1, 1),  # L = 35: 5 chunks, padded by 5
        (3, 4, 4, 8, 2, 4, 1, 1),  # exactly 2 chunks (neighbours coincide)
        (1, 2, 3, 8, 2, 2, 1, 1),  # a single chunk
        (1, 6, 7, 4, 2, 6, 2, 0),  # two previous chunks, no next
    ],
)
def test_readable_version_equals_the_blocked_one(n, height, width, chunk_size, n_rounds, n_buckets, before, after):
    q, k, v = random_maps(n, 3, 2, height, width, seed=30 + height)
    b = bucket_count(height * width, chunk_size, n_buckets=n_buckets)
    rotations = random_rotations(3, n_rounds, b, 7, dtype=torch.float64)
    common = {"n_rounds": n_rounds, "chunk_size": chunk_size, "n_buckets": n_buckets, "rotations": rotations,
              "chunks_before": before, "chunks_after": after}
    out, details = non_local_sparse_attention(q, k, v, return_details=True, **common)
    readable, readable_details = readable_sparse_attention(q, k, v, return_details=True, **common)
    assert readable.shape == (n, 2, height, width) and readable.dtype == torch.float64
    torch.testing.assert_close(readable, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(readable_sparse_attention(q, k, v, **common), out, rtol=1e-12, atol=1e-12)
    assert isinstance(readable_details, SparseAttentionDetails)
    assert torch.equal(readable_details.codes, details.codes)
    assert readable_details.n_buckets == details.n_buckets == b
    assert torch.equal(readable_details.rotations, details.rotations)
    for field in ("round_outputs", "round_weights", "round_logsumexp"):
        torch.testing.assert_close(getattr(readable_details, field), getattr(details, field), rtol=1e-12, atol=1e-12)


def test_readable_version_is_exported_and_checks_its_inputs():
    import srlib.attention

    assert srlib.attention.readable_sparse_attention is readable_sparse_attention
    assert "readable_sparse_attention" in srlib.attention.__all__
    assert "readable_sparse_attention" in sparse_module.__all__
    q, k, v = random_maps(1, 4, 3, 4, 4, seed=10)
    rotations = random_rotations(4, 1, 4, 0, dtype=torch.float64)
    with pytest.raises(ValueError, match="same number of channels"):
        readable_sparse_attention(q, k[:, :3], v, n_rounds=1, chunk_size=4, n_buckets=4, rotations=rotations)
    with pytest.raises(ValueError, match="rotations must have shape"):
        readable_sparse_attention(q, k, v, n_rounds=2, chunk_size=4, n_buckets=4, rotations=rotations)


def random_sparse_module(cls=NonLocalSparseAttention, **options):
    torch.manual_seed(0)
    module = cls(4, reduction=2, **options).double().eval()
    if options.get("activation") == "prelu":
        with torch.no_grad():
            for layer in (module.query_key_embed, module.value_embed):
                layer[1].weight.uniform_(0.05, 0.5)
    return module


@pytest.mark.parametrize(
    ("size", "options"),
    [
        ((14, 14), {"chunk_size": 16, "n_rounds": 3, "seed": 4}),  # 13 chunks: the buckets matter
        ((14, 14), {"chunk_size": 16, "n_rounds": 2, "n_buckets": 6, "activation": "prelu"}),
        ((5, 7), {"chunk_size": 8, "n_rounds": 2, "seed": 1}),  # L = 35, not a multiple of the chunk size
        ((3, 4), {"chunk_size": 144, "n_rounds": 1}),  # one chunk: dense
    ],
)
def test_module_equals_its_registered_loop_version_in_float64(size, options):
    assert attention_entry("nlsa").loops is nlsa_loops
    module = random_sparse_module(**options)
    x = torch.randn(2, 4, *size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        out, details = module(x, return_details=True)
        expected = nlsa_loops(module, x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    if size == (14, 14):  # several buckets really are in use, so the sort decides who meets whom
        assert len(details.codes.unique()) > 2
    # the loop version's rotations are the module's eval-mode draw; a fresh module's first training draw too
    fresh = random_sparse_module(**options).train()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size", [(4, 5), (1, 1), (7, 3)])
def test_dense_match_attention_equals_its_loop_version_and_one_chunk_nlsa(size):
    assert attention_entry("nlsa_dense").loops is nlsa_dense_loops
    dense = random_sparse_module(DenseMatchAttention)
    sparse = random_sparse_module(NonLocalSparseAttention, chunk_size=64, n_rounds=2)
    sparse.load_state_dict(dense.state_dict())  # same layers, same checkpoint keys
    x = torch.randn(2, 4, *size, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        out = dense(x)
        torch.testing.assert_close(out, nlsa_dense_loops(dense, x), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out, sparse(x), rtol=1e-10, atol=1e-12)  # L <= chunk: NLSA is dense
        explicit, details = dense(x, return_details=True)
        torch.testing.assert_close(explicit, out, rtol=1e-10, atol=1e-12)
        length = size[0] * size[1]
        assert isinstance(details, AttentionDetails) and details.weights.shape == (2, length, length)
        assert details.map_size == size


# --------------------------------------------------------------------------- special cases


@pytest.mark.parametrize(("chunk_size", "n_rounds"), [(30, 1), (1000, 1), (144, 3)])
def test_one_chunk_holding_every_position_is_dense_attention(chunk_size, n_rounds):
    """Chunk >= L: each query sees every key exactly once, so NLSA = softmax(q k_hat^T) v."""
    q, k, v = random_maps(2, 4, 3, 5, 6, seed=3)  # L = 30
    out = non_local_sparse_attention(q, k, v, n_rounds=n_rounds, chunk_size=chunk_size, generator=0)
    k_hat = k / k.norm(dim=1, keepdim=True)

    def seq(t):
        return t.flatten(2).transpose(1, 2)  # (N, L, C)

    dense = non_local_attention(seq(q), seq(k_hat), seq(v)).transpose(1, 2).reshape(2, 3, 5, 6)
    torch.testing.assert_close(out, dense, rtol=1e-12, atol=1e-12)


def test_non_multiple_and_tiny_sizes_work_in_float32():
    for height, width in ((1, 1), (2, 3), (11, 13), (12, 12)):
        q, k, v = (t.float() for t in random_maps(2, 4, 5, height, width, seed=4))
        out = non_local_sparse_attention(q, k, v, n_rounds=2, chunk_size=16, generator=0)
        assert out.shape == (2, 5, height, width) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    # 1x1: the only key is the pixel itself, so the output is its value.
    q, k, v = random_maps(1, 4, 5, 1, 1, seed=5)
    assert torch.allclose(non_local_sparse_attention(q, k, v, n_rounds=2, generator=0), v)


def test_batch_of_images_equals_images_one_by_one():
    q, k, v = random_maps(3, 4, 3, 7, 9, seed=6)
    batched = non_local_sparse_attention(q, k, v, n_rounds=2, chunk_size=10, generator=5)
    for i in range(3):
        alone = non_local_sparse_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], n_rounds=2, chunk_size=10,
                                           generator=5)
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-12, atol=1e-12)


def test_keys_are_normalised_but_queries_are_not():
    q, k, v = random_maps(1, 4, 3, 4, 5, seed=7)
    common = {"n_rounds": 2, "chunk_size": 6, "generator": 1}
    base = non_local_sparse_attention(q, k, v, **common)
    scales = torch.rand(1, 1, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5 + 0.2
    torch.testing.assert_close(non_local_sparse_attention(q, k * scales, v, **common), base)
    assert not torch.allclose(non_local_sparse_attention(q * 3.0, k, v, **common), base)


# --------------------------------------------------------------------------- randomness


def test_repeatable_under_a_seed_and_different_seeds_give_different_codes():
    q, k, v = random_maps(1, 8, 2, 12, 12, seed=8)
    common = {"n_rounds": 2, "chunk_size": 16, "return_details": True}
    out_a, det_a = non_local_sparse_attention(q, k, v, generator=1, **common)
    out_b, det_b = non_local_sparse_attention(q, k, v, generator=1, **common)
    _, det_c = non_local_sparse_attention(q, k, v, generator=2, **common)
    assert torch.equal(out_a, out_b) and torch.equal(det_a.codes, det_b.codes)
    assert det_a.n_buckets == 10  # the rule with L = 144, chunk 16: 144 // 16 = 9, rounded up to even
    assert not torch.equal(det_a.codes, det_c.codes)


def test_module_eval_is_deterministic_and_train_draws_fresh_buckets():
    torch.manual_seed(0)
    module = NonLocalSparseAttention(8, reduction=2, chunk_size=8, n_rounds=2, seed=3)
    x = torch.randn(2, 8, 6, 7, generator=torch.Generator().manual_seed(1))
    module.eval()
    with torch.no_grad():
        first, det_first = module(x, return_details=True)
        second, det_second = module(x, return_details=True)
        assert torch.equal(first, second) and torch.equal(det_first.codes, det_second.codes)
        assert torch.equal(det_first.rotations, random_rotations(4, 2, det_first.n_buckets, 3))
        module.train()
        codes = [module(x, return_details=True)[1].codes for _ in range(3)]
        assert not torch.equal(codes[1], codes[0]) and not torch.equal(codes[2], codes[1])
        # Reproducible from the seed: a copy made now, or a re-seeded module, repeats the sequence.
        twin = NonLocalSparseAttention(8, reduction=2, chunk_size=8, n_rounds=2, seed=3)
        twin.load_state_dict(module.state_dict())
        twin.train()
        assert all(torch.equal(twin(x, return_details=True)[1].codes, c) for c in codes)
        module.reset_generator()
        assert torch.equal(module(x, return_details=True)[1].codes, codes[0])
        clone = copy.deepcopy(module)
        assert torch.equal(clone(x), module(x))
        # An explicit generator wins in both modes.
        module.eval()
        assert torch.equal(module(x, generator=11), module(x, generator=torch.Generator().manual_seed(11)))
        assert not torch.equal(module(x, generator=11), first)


def test_module_structure_and_no_residual():
    module = NonLocalSparseAttention(16, seed=0)
    query_key, value = module.query_key_embed[0], module.value_embed[0]
    assert query_key.kernel_size == (3, 3) and query_key.out_channels == 4
    assert value.kernel_size == (1, 1) and value.out_channels == 16
    assert sorted(module.state_dict()) == [
        "query_key_embed.0.bias", "query_key_embed.0.weight", "value_embed.0.bias", "value_embed.0.weight",
    ]
    x = torch.randn(2, 16, 9, 10, generator=torch.Generator().manual_seed(2))
    module.eval()
    with torch.no_grad():
        out, details = module(x, return_details=True)
        attention = non_local_sparse_attention(
            module.query_key_embed(x), module.query_key_embed(x), module.value_embed(x), n_rounds=4,
            chunk_size=144, generator=0,
        )
        torch.testing.assert_close(out, attention)  # the attention output only: NLSN adds x + res_scale * out
        assert details.n_buckets == 2  # 90 positions < 144: the fixed rule's floor
        # no res_scale any more, and zero values give a zero output (a residual inside would give x)
        assert not hasattr(module, "res_scale")
        module.value_embed[0].weight.zero_()
        module.value_embed[0].bias.zero_()
        assert torch.equal(module(x), torch.zeros_like(x))
    with pytest.raises(TypeError):
        NonLocalSparseAttention(16, res_scale=0.1)


# --------------------------------------------------------------------------- gradients


def test_gradcheck_functional():
    q, k, v = random_maps(2, 3, 2, 3, 5, seed=9)  # L = 15, chunks of 4: padding on the last one
    rotations = random_rotations(3, 2, 4, 0, dtype=torch.float64)
    inputs = tuple(t.clone().requires_grad_(True) for t in (q, k, v))

    def f(query, key, value):
        return non_local_sparse_attention(query, key, value, n_rounds=2, chunk_size=4, rotations=rotations)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_gradcheck_module_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    module = NonLocalSparseAttention(4, reduction=2, chunk_size=4, n_rounds=2, seed=1).double().eval()
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-6)
    module(x).square().sum().backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- blocks of chunks


def score_entries_for(chunks_per_block, n, length, chunk_size, before, after):
    """The _BLOCK_SCORE_ENTRIES that makes blocks of exactly ``chunks_per_block`` chunks."""
    n_chunks = math.ceil(length / chunk_size)
    keys = len(neighbour_chunk_offsets(n_chunks, before, after)) * chunk_size
    return chunks_per_block * n * chunk_size * keys


@pytest.mark.parametrize(
    ("n", "height", "width", "chunk_size", "n_rounds", "before", "after", "chunks_per_block"),
    [
        (2, 7, 9, 5, 3, 1, 1, 1),  # L = 63: 13 chunks, the last padded by 2; 13 blocks of one chunk
        (2, 7, 9, 5, 3, 1, 1, 4),  # blocks of 4, 4, 4 and 1 chunks (the padded chunk alone)
        (1, 6, 7, 4, 2, 2, 0, 3),  # L = 42: 11 chunks padded by 2, two previous chunks; last block of 2
        (2, 4, 4, 6, 2, 1, 1, 1),  # L = 16: 3 chunks, padded by 2
        (3, 4, 4, 8, 2, 1, 1, 1),  # L = 16: exactly 2 chunks (neighbours coincide), no padding
    ],
)
def test_blocks_of_chunks_equal_the_unblocked_math(
    monkeypatch, n, height, width, chunk_size, n_rounds, before, after, chunks_per_block
):
    """Attending a round block by block of chunks (and combining rounds as they come) changes nothing."""
    q, k, v = random_maps(n, 3, 4, height, width, seed=20 + chunks_per_block)
    rotations = random_rotations(3, n_rounds, 6, 5, dtype=torch.float64)
    cotangent = torch.randn(n, 4, height, width, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def run(function):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out, *rest = function(*inputs)
        (out * cotangent).sum().backward()
        return out.detach(), [r.detach() for r in rest], [t.grad for t in inputs]

    def through(function):
        def call(query, key, value):
            out, details = function(
                query, key, value, n_rounds=n_rounds, chunk_size=chunk_size, n_buckets=None, rotations=rotations,
                chunks_before=before, chunks_after=after, return_details=True,
            )
            round_out = details.round_outputs.flatten(3).transpose(2, 3)  # (N, R, L, C_v)
            return out, round_out, details.round_logsumexp.flatten(2)

        return call

    # readable_sparse_attention: every round and chunk at once, all scores in one tensor
    expected, (expected_round_out, expected_lse), expected_grads = run(through(readable_sparse_attention))
    sparse = through(non_local_sparse_attention)

    entries = score_entries_for(chunks_per_block, n, height * width, chunk_size, before, after)
    monkeypatch.setattr(sparse_module, "_BLOCK_SCORE_ENTRIES", entries)
    blocked, (round_out, lse), grads = run(sparse)
    monkeypatch.setattr(sparse_module, "_BLOCK_SCORE_ENTRIES", 10**12)  # every chunk of a round in one block
    one_block, _, one_block_grads = run(sparse)

    exact = {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(blocked, expected, **exact)
    torch.testing.assert_close(round_out, expected_round_out, **exact)
    torch.testing.assert_close(lse, expected_lse, **exact)
    torch.testing.assert_close(one_block, expected, **exact)
    for grad, one_block_grad, expected_grad in zip(grads, one_block_grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, **exact)
        torch.testing.assert_close(one_block_grad, expected_grad, **exact)


def test_gradcheck_with_blocks_of_one_chunk(monkeypatch):
    q, k, v = random_maps(1, 3, 2, 3, 5, seed=12)  # L = 15, chunks of 4: 4 chunks, the last padded
    monkeypatch.setattr(sparse_module, "_BLOCK_SCORE_ENTRIES", score_entries_for(1, 1, 15, 4, 1, 1))
    rotations = random_rotations(3, 2, 4, 1, dtype=torch.float64)
    inputs = tuple(t.clone().requires_grad_(True) for t in (q, k, v))

    def f(query, key, value):
        return non_local_sparse_attention(query, key, value, n_rounds=2, chunk_size=4, rotations=rotations)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_output_is_the_same_with_and_without_details():
    q, k, v = random_maps(2, 4, 3, 9, 8, seed=13)
    common = {"n_rounds": 4, "chunk_size": 10, "generator": 2}
    out, _ = non_local_sparse_attention(q, k, v, return_details=True, **common)
    assert torch.equal(non_local_sparse_attention(q, k, v, **common), out)


# --------------------------------------------------------------------------- errors


def test_functional_rejects_bad_inputs():
    q, k, v = random_maps(1, 4, 3, 4, 4, seed=10)
    with pytest.raises(ValueError, match=r"query must be a feature map shaped \(N, C, H, W\)"):
        non_local_sparse_attention(q[0], k, v, n_rounds=1, generator=0)
    with pytest.raises(ValueError, match="same number of channels"):
        non_local_sparse_attention(q, k[:, :3], v, n_rounds=1, generator=0)
    with pytest.raises(ValueError, match="share the query's batch size and size"):
        non_local_sparse_attention(q, k, v[:, :, :3], n_rounds=1, generator=0)
    with pytest.raises(ValueError, match="share dtype and device"):
        non_local_sparse_attention(q, k, v.float(), n_rounds=1, generator=0)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        non_local_sparse_attention(q, k, v, n_rounds=1, chunk_size=0, generator=0)
    with pytest.raises(ValueError, match="n_rounds must be an integer >= 1"):
        non_local_sparse_attention(q, k, v, n_rounds=0, generator=0)
    with pytest.raises(ValueError, match="n_buckets must be an even integer"):
        non_local_sparse_attention(q, k, v, n_rounds=1, n_buckets=5, generator=0)
    with pytest.raises(ValueError, match="exactly one source"):
        non_local_sparse_attention(q, k, v, n_rounds=1)
    with pytest.raises(ValueError, match="rotations must have shape"):
        non_local_sparse_attention(q, k, v, n_rounds=2, rotations=random_rotations(4, 1, 4, 0))
    with pytest.raises(ValueError, match="rotations must have shape"):
        non_local_sparse_attention(q, k, v, n_rounds=1, n_buckets=6, rotations=random_rotations(4, 1, 4, 0))
    with pytest.raises(ValueError, match="floating-point"):
        non_local_sparse_attention(q.long(), k, v, n_rounds=1, generator=0)


def test_module_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="channels // reduction"):
        NonLocalSparseAttention(3, reduction=4)
    with pytest.raises(ValueError, match="chunk_size"):
        NonLocalSparseAttention(8, chunk_size=0)
    with pytest.raises(ValueError, match="even integer"):
        NonLocalSparseAttention(8, n_buckets=7)
    with pytest.raises(TypeError, match="seed must be an integer"):
        NonLocalSparseAttention(8, seed=0.5)
    module = NonLocalSparseAttention(8)
    with pytest.raises(ValueError, match=r"expects x as a \(N, 8, H, W\) feature map"):
        module(torch.zeros(1, 4, 5, 5))
    with pytest.raises(TypeError, match="Generator or an integer seed"):
        module(torch.zeros(1, 8, 5, 5), generator=0.5)


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_buckets_and_output():
    q, k, v = random_maps(2, 4, 3, 13, 11, seed=11)
    out, details = non_local_sparse_attention(q, k, v, n_rounds=3, chunk_size=16, generator=4, return_details=True)
    out_gpu, details_gpu = non_local_sparse_attention(
        q.cuda(), k.cuda(), v.cuda(), n_rounds=3, chunk_size=16, generator=4, return_details=True
    )
    assert out_gpu.device.type == "cuda"
    assert torch.equal(details_gpu.codes.cpu(), details.codes)
    torch.testing.assert_close(out_gpu.cpu(), out, rtol=1e-10, atol=1e-12)
    module = NonLocalSparseAttention(8, reduction=2, chunk_size=8, n_rounds=2).eval()
    x = torch.randn(2, 8, 9, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(module.cuda()(x.cuda()).cpu(), module.cpu()(x), rtol=1e-4, atol=1e-5)
