"""The windowed sparse attention (srlib.attention.sparse) against the per-round implementation it replaced.

``non_local_sparse_attention`` attends each block of chunks through overlapping
strided windows of one gather, in base 2 (``exp2``), with the score bound as the
softmax shift on CPU, and a backward pass that recomputes the weights block by
block.  ``previous_sparse_attention`` below is a frozen copy of the
implementation before that change (a gather of every chunk's neighbour chunks,
``exp``, the row maximum, autograd through every step), reduced to one block per
round, with the hash codes of the previous ``torch.max`` / ``torch.argmax``
reductions.  Outputs, per-round results and gradients must agree: float64 to
1e-12, float32 to about 1e-6; the codes exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

import srlib.attention.sparse as sparse_module
from srlib.attention import (
    GlobalLearnableAttention,
    NonLocalSparseAttention,
    non_local_sparse_attention,
)
from srlib.attention.learnable import learned_score_width
from srlib.attention.lsh import (
    draw_projections,
    neighbour_chunk_offsets,
    sort_by_code,
    spherical_hash,
    superbit_hash,
)

# --------------------------------------------------------------------------- the previous implementation


def previous_codes(k: torch.Tensor, projections: torch.Tensor, hashing: str) -> torch.Tensor:
    """``(N, L, C_e)`` unit keys -> ``(N, R, L)`` codes, with the index-carrying reductions of before."""
    p = torch.einsum("nld,drk->nrlk", k, projections)  # (N, R, L, P)
    if hashing == "superbit":
        return p.argmax(dim=-1)
    best_plus, plus_index = p.max(dim=-1)
    best_minus, minus_index = p.min(dim=-1)
    return torch.where(best_plus >= -best_minus, plus_index, minus_index + p.shape[-1])


def previous_round(q_rows, k_rows, v_rows, order, chunk_size, before, after, learned_rows, learned_form, fixed,
                   score_sums):
    """One round as the previous ``_attend_round`` computed it, every chunk in one block."""
    n, length = order.shape
    n_chunks = math.ceil(length / chunk_size)
    offsets = neighbour_chunk_offsets(n_chunks, before, after)
    rows = order + torch.arange(n)[:, None] * length  # (N, L)
    rows = torch.cat([rows, rows[:, -1:].expand(n, n_chunks * chunk_size - length)], dim=1)  # (N, nc m)

    def chunks(table):
        return table.index_select(0, rows.flatten()).view(n, n_chunks, chunk_size, -1)  # (N, nc, m, C)

    neighbours = (torch.arange(n_chunks)[:, None] + torch.tensor(offsets)[None, :]) % n_chunks  # (nc, K)
    seen = neighbours.flatten()
    q = chunks(q_rows)  # (N, nc, m, C_e)
    k = chunks(k_rows).index_select(1, seen).view(n, n_chunks, -1, k_rows.shape[1])  # (N, nc, K m, C_e)
    v = chunks(v_rows).index_select(1, seen).view(n, n_chunks, -1, v_rows.shape[1])  # (N, nc, K m, C_v)
    window = len(offsets) * chunk_size
    if learned_form == "none":
        scores = q @ k.transpose(-1, -2)
    else:
        if learned_form == "paper":
            learned = chunks(learned_rows)[..., :window]
        else:
            learned = chunks(learned_rows).index_select(1, seen).view(n, n_chunks, window, chunk_size)
            learned = learned.transpose(-1, -2)
        scores = q @ k.transpose(-1, -2) + learned if fixed else learned.clone()
    key_valid = (neighbours[:, :, None] * chunk_size + torch.arange(chunk_size) < length).view(1, n_chunks, 1, -1)
    block_sum = scores.masked_fill(~key_valid, 0.0).sum(dim=-1) if score_sums else None
    scores = scores.masked_fill(~key_valid, float("-inf"))
    top = scores.detach().amax(dim=-1, keepdim=True)
    weights = (scores - top).exp()
    total = weights.sum(dim=-1, keepdim=True)
    out_chunks = (weights @ v) / total  # (N, nc, m, C_v)
    lse_chunks = top + total.log()
    out = v_rows.new_zeros(n * length, v_rows.shape[1])
    lse = v_rows.new_zeros(n * length)
    real = rows[:, :length].flatten()
    out = out.index_copy(0, real, out_chunks.flatten(1, 2)[:, :length].flatten(0, 1))
    lse = lse.index_copy(0, real, lse_chunks.flatten(1)[:, :length].flatten())
    score_sum = None
    if score_sums:
        score_sum = v_rows.new_zeros(n * length).index_copy(0, real, block_sum.flatten(1)[:, :length].flatten())
    return out, lse, score_sum


def previous_sparse_attention(query, key, value, *, n_rounds, chunk_size, rotations, hashing="spherical",
                              chunks_before=1, chunks_after=1, learned_scores=None, learned_form="none",
                              fixed_scores=True, round_weighting="logsumexp"):
    """``(output, codes, round_outputs (N, R, L, C_v), round_lse (N, R, L))`` as before."""
    n, _, h, w = query.shape
    c_v, length = value.shape[1], h * w
    q = query.flatten(2).transpose(1, 2)
    k = key.flatten(2).transpose(1, 2)
    v = value.flatten(2).transpose(1, 2)
    k = k / k.norm(dim=-1, keepdim=True).clamp_min(sparse_module.KEY_NORM_EPS)
    codes = previous_codes(k.detach(), rotations.to(k.dtype), hashing)
    order, _ = sort_by_code(codes)
    q_rows, k_rows, v_rows = q.reshape(n * length, -1), k.reshape(n * length, -1), v.reshape(n * length, c_v)
    learned_rows = None
    if learned_scores is not None:
        learned_rows = learned_scores.flatten(2).transpose(1, 2).reshape(n * length, -1)
    outs, lses, sums = [], [], []
    for r in range(n_rounds):
        out, lse, score_sum = previous_round(
            q_rows, k_rows, v_rows, order[:, r], chunk_size, chunks_before, chunks_after, learned_rows,
            learned_form, fixed_scores, round_weighting == "score_sum",
        )
        outs.append(out.view(n, length, c_v))
        lses.append(lse.view(n, length))
        sums.append(score_sum)
    round_out, round_lse = torch.stack(outs, dim=1), torch.stack(lses, dim=1)  # (N, R, L, C_v), (N, R, L)
    if round_weighting == "score_sum":
        round_sums = torch.stack([s.view(n, length) for s in sums], dim=1)
        weights = round_sums / round_sums.sum(dim=1, keepdim=True)
    else:
        weights = torch.softmax(round_lse, dim=1)
    combined = (weights.unsqueeze(-1) * round_out).sum(dim=1)  # (N, L, C_v)
    return combined.transpose(1, 2).reshape(n, c_v, h, w), codes, round_out, round_lse


# --------------------------------------------------------------------------- helpers


def maps(n, c_e, c_v, h, w, seed, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, c_e, h, w, generator=g, dtype=dtype) * scale
    k = torch.randn(n, c_e, h, w, generator=g, dtype=dtype) * 2.0
    v = torch.randn(n, c_v, h, w, generator=g, dtype=dtype)
    return q, k, v


def compare(q, k, v, *, rtol, atol, learned=None, shared_qk=False, **options):
    """Outputs, per-round results, codes and gradients of the current and the previous implementation."""
    n_rounds, hashing = options["n_rounds"], options.get("hashing", "spherical")
    n_buckets = options.pop("n_buckets", 4)
    projections = draw_projections(hashing, q.shape[1], n_rounds, n_buckets, 7, dtype=q.dtype)
    cotangent = torch.randn(v.shape, generator=torch.Generator().manual_seed(5), dtype=q.dtype)

    def run(function):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v) + ((learned,) if learned is not None else ())]
        query, key, value = inputs[:3]
        if shared_qk:
            key = query
        extra = {"learned_scores": inputs[3]} if learned is not None else {}
        if function is previous_sparse_attention:
            out, codes, round_out, round_lse = function(query, key, value, rotations=projections, **options, **extra)
        else:
            out, details = function(query, key, value, rotations=projections, return_details=True, **options,
                                    **extra)
            codes = details.codes.flatten(2)
            round_out = details.round_outputs.flatten(3).transpose(2, 3)
            round_lse = details.round_logsumexp.flatten(2)
        (out * cotangent).sum().backward()
        grads = [torch.zeros_like(t) if t.grad is None else t.grad for t in inputs]  # unused input: zero
        return out.detach(), codes, round_out.detach(), round_lse.detach(), grads

    now, before = run(non_local_sparse_attention), run(previous_sparse_attention)
    assert torch.equal(now[1], before[1])  # the same buckets
    for current, previous in zip(now[:1] + now[2:4] + tuple(now[4]), before[:1] + before[2:4] + tuple(before[4])):
        torch.testing.assert_close(current, previous, rtol=rtol, atol=atol)
    # The plain output (no details, no autograd) is the same as well.
    with torch.no_grad():
        plain = non_local_sparse_attention(q, q if shared_qk else k, v, rotations=projections, **options,
                                           **({"learned_scores": learned} if learned is not None else {}))
    torch.testing.assert_close(plain, now[0], rtol=rtol, atol=atol)


EXACT = {"rtol": 1e-12, "atol": 1e-12}

# --------------------------------------------------------------------------- NLSA


@pytest.mark.parametrize(
    ("n", "h", "w", "chunk_size", "n_rounds", "n_buckets", "before", "after"),
    [
        (1, 3, 4, 5, 1, 2, 1, 1),  # L = 12: 3 chunks, the last padded by 3
        (3, 5, 7, 8, 3, 4, 1, 1),  # batch of 3, 5 chunks, padded
        (1, 2, 3, 8, 2, 2, 1, 1),  # one chunk: dense attention
        (2, 4, 4, 8, 2, 4, 1, 1),  # exactly 2 chunks: the neighbours coincide
        (1, 4, 4, 4, 3, 6, 1, 1),  # 4 chunks, no padding
        (1, 5, 5, 3, 2, 8, 2, 0),  # two previous chunks, no next one
        (2, 6, 7, 4, 2, 6, 0, 2),  # no previous chunk, two next ones, padded by 2
        (1, 7, 9, 5, 2, 4, 3, 3),  # 13 chunks, three on each side
    ],
)
@pytest.mark.parametrize("hashing", ["spherical", "superbit"])
def test_nlsa_equals_the_previous_implementation_in_float64(n, h, w, chunk_size, n_rounds, n_buckets, before,
                                                            after, hashing):
    q, k, v = maps(n, 3, 4, h, w, seed=h * 10 + w)
    compare(q, k, v, n_rounds=n_rounds, chunk_size=chunk_size, n_buckets=n_buckets, chunks_before=before,
            chunks_after=after, hashing=hashing, **EXACT)


def test_nlsa_with_shared_queries_and_keys_and_blocks_of_one_chunk(monkeypatch):
    """As NLSN calls it (key = query), with every block one chunk and with one block per image."""
    q, _, v = maps(2, 4, 3, 7, 9, seed=3)
    for entries in (1, 10**9):
        monkeypatch.setattr(sparse_module, "_BLOCK_SCORE_ENTRIES", entries)
        compare(q, q, v, shared_qk=True, n_rounds=3, chunk_size=5, n_buckets=6, **EXACT)


def test_nlsa_equals_the_previous_implementation_in_float32():
    q, k, v = maps(2, 16, 32, 24, 30, seed=4, dtype=torch.float32)  # L = 720: 5 chunks of 144, no padding
    compare(q, k, v, n_rounds=4, chunk_size=144, n_buckets=6, rtol=1e-5, atol=2e-6)
    q, k, v = maps(1, 8, 16, 19, 23, seed=5, dtype=torch.float32)  # L = 437: padded
    compare(q, k, v, n_rounds=2, chunk_size=64, n_buckets=8, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm", [40.0, 300.0])
def test_queries_far_from_their_keys_without_and_with_the_row_maximum(monkeypatch, dtype, norm):
    """Queries of a large norm whose keys all point away: every weight is tiny before normalisation.

    ``||q|| = 40``: the base-2 scores lie in [-58, 58], the softmax runs unshifted and
    2^s' is about 2^-57, still a normal float32.  ``||q|| = 300``: beyond the bound (and
    beyond float32's range in float32), the row maxima shift the scores.  Either way
    the result is the previous one (in float32 to the accuracy such scores allow).
    """
    bounded = []
    window_attention = sparse_module._window_attention

    def spy(table, scoring, *args, **kwargs):
        bounded.append(scoring.bounded)
        return window_attention(table, scoring, *args, **kwargs)

    monkeypatch.setattr(sparse_module, "_window_attention", spy)
    g = torch.Generator().manual_seed(6)
    direction = torch.randn(1, 4, 1, 1, generator=g, dtype=dtype)
    k = -direction.expand(1, 4, 5, 6) + 0.05 * torch.randn(1, 4, 5, 6, generator=g, dtype=dtype)
    q = norm * direction.expand(1, 4, 5, 6) / direction.norm()
    v = torch.randn(1, 3, 5, 6, generator=g, dtype=dtype)
    tolerance = EXACT if dtype == torch.float64 else {"rtol": 1e-3, "atol": 1e-4}
    compare(q.contiguous(), k.contiguous(), v, n_rounds=2, chunk_size=7, n_buckets=2, **tolerance)
    expected_bounded = norm * math.log2(math.e) <= sparse_module._UNSHIFTED_BOUND[dtype]
    assert set(bounded) == {expected_bounded}
    assert torch.isfinite(non_local_sparse_attention(q, k, v, n_rounds=2, chunk_size=7, generator=0)).all()


def test_nlsa_module_forward_and_backward_agree_with_the_previous_code():
    """The module end to end: eval output and the gradient of every parameter."""
    torch.manual_seed(0)
    module = NonLocalSparseAttention(8, reduction=2, chunk_size=10, n_rounds=3).double().eval()
    x = torch.randn(2, 8, 9, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    match, values = module.embed(x)
    _, details = module(x, return_details=True)
    out, *_ = previous_sparse_attention(match, match, values, n_rounds=3, chunk_size=10, rotations=details.rotations)
    torch.testing.assert_close(module(x), out, **EXACT)
    module(x).square().sum().backward()
    now = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    match, values = module.embed(x)
    previous_sparse_attention(match, match, values, n_rounds=3, chunk_size=10,
                              rotations=details.rotations)[0].square().sum().backward()
    for current, previous in zip(now, [p.grad for p in module.parameters()]):
        torch.testing.assert_close(current, previous, **EXACT)


# --------------------------------------------------------------------------- GLA


@pytest.mark.parametrize("form", ["paper", "official", "none"])
@pytest.mark.parametrize("weighting", ["logsumexp", "score_sum"])
@pytest.mark.parametrize("fixed", [True, False])
@pytest.mark.parametrize(("n", "h", "w", "chunk_size", "n_buckets"), [(2, 5, 7, 6, 3), (1, 3, 5, 8, 2), (1, 4, 4, 8, 2)])
def test_gla_scores_equal_the_previous_implementation(form, weighting, fixed, n, h, w, chunk_size, n_buckets):
    """Learned score forms, round weightings, s_f on or off; padded, one-chunk and two-chunk maps."""
    if form == "none" and not fixed:
        pytest.skip("no score at all")
    g = torch.Generator().manual_seed(n * 100 + h)
    q = torch.relu(torch.randn(n, 3, h, w, generator=g, dtype=torch.float64)) + 0.1  # score sums away from 0
    v = torch.randn(n, 4, h, w, generator=g, dtype=torch.float64)
    learned = None
    if form != "none":
        width = learned_score_width(form, chunk_size)
        learned = torch.rand(n, width, h, w, generator=g, dtype=torch.float64) + 0.1
    compare(q, q, v, shared_qk=True, learned=learned, n_rounds=2, chunk_size=chunk_size, n_buckets=n_buckets,
            hashing="superbit", learned_form=form, fixed_scores=fixed, round_weighting=weighting, **EXACT)


def test_gla_module_gradients_equal_the_previous_code():
    torch.manual_seed(0)
    for form in ("paper", "official"):
        module = GlobalLearnableAttention(6, reduction=2, chunk_size=7, n_rounds=2, learned_score=form).double()
        module.eval()
        x = torch.randn(1, 6, 5, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        _, details = module(x, return_details=True)
        module(x).square().sum().backward()
        now = [p.grad.clone() for p in module.parameters()]
        module.zero_grad()
        match, values = module.embed(x)
        previous_sparse_attention(match, match, values, n_rounds=2, chunk_size=7, rotations=details.rotations,
                                  hashing="superbit", learned_scores=module.learned_scores(x),
                                  learned_form=form)[0].square().sum().backward()
        for current, previous in zip(now, [p.grad for p in module.parameters()]):
            torch.testing.assert_close(current, previous, **EXACT)


# --------------------------------------------------------------------------- hash codes


def test_hash_codes_equal_the_index_reductions_with_ties():
    """The first-match search gives torch.max / torch.argmax's first index, ties and zero vectors included."""
    g = torch.Generator().manual_seed(8)
    x = torch.randint(-2, 3, (2, 50, 3), generator=g).double()  # many exact ties between projections
    x[0, :4] = 0.0  # all-zero vectors: every projection 0
    rotations = torch.randint(-1, 2, (3, 3, 5), generator=g).double()
    assert torch.equal(spherical_hash(x, rotations), previous_codes(x, rotations, "spherical"))
    assert torch.equal(superbit_hash(x, rotations), previous_codes(x, rotations, "superbit"))
    x = torch.randn(1, 2000, 16, generator=g)
    rotations = torch.randn(16, 4, 64, generator=g)
    assert torch.equal(spherical_hash(x, rotations), previous_codes(x, rotations, "spherical"))
    assert torch.equal(superbit_hash(x, rotations), previous_codes(x, rotations, "superbit"))


def test_twice_differentiating_is_refused_with_a_clear_error():
    q, k, v = maps(1, 3, 2, 3, 4, seed=9)
    q.requires_grad_(True)
    out = non_local_sparse_attention(q, k, v, n_rounds=1, chunk_size=5, generator=0)
    (grad,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiable"):
        grad.sum().backward()
