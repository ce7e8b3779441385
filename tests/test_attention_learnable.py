"""Global learnable attention (srlib.attention.learnable, DLSN eq. 9-18, Algorithm 1).

The module is compared with its float64 loop version by the contract tests
(tests/test_attention_contract.py, every option set of its registration); this file
checks the properties the paper's equations imply and the errors the issue asks for.
"""

from __future__ import annotations

import pytest
import torch

from srlib.attention import GlobalLearnableAttention, build_attention, non_local_sparse_attention
from srlib.attention.learnable import learned_score_width
from srlib.attention.loops import dense_attention_loops, embedding_loops, gla_loops, unit_keys_loops


def _x(n=2, c=4, h=5, w=6, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_one_bucket_one_round_no_learned_term_is_dense_non_local_attention():
    """A chunk holding every position, one round, s_l = 0: GLA is dense attention with the same embeddings."""
    x = _x()
    for learned_score in ("none", "paper", "official"):
        torch.manual_seed(0)
        module = GlobalLearnableAttention(4, reduction=2, chunk_size=30, n_rounds=1, n_buckets=1,
                                          learned_score=learned_score).double().eval()
        if learned_score != "none":  # s_l = 0: zero output layer
            torch.nn.init.zeros_(module.learned_scorer[2].weight)
            torch.nn.init.zeros_(module.learned_scorer[2].bias)
        match = embedding_loops(module.query_key_embed, x)  # (N, C_e, H, W)
        value = embedding_loops(module.value_embed, x)  # (N, C, H, W)
        dense = dense_attention_loops(match, unit_keys_loops(match), value)[0]  # softmax_j(q_i . k_hat_j) v_j
        torch.testing.assert_close(module(x), dense, rtol=0, atol=1e-12)


def test_the_learned_term_changes_the_output_and_receives_gradients():
    x = _x().requires_grad_()
    module = GlobalLearnableAttention(4, reduction=2, chunk_size=8, n_rounds=2).double()
    out = module(x, generator=1)
    without = non_local_sparse_attention(*[t for t in (module.query_key_embed(x),) * 2], module.value_embed(x),
                                         n_rounds=2, chunk_size=8, generator=1, hashing="superbit")
    assert (out - without).abs().max() > 1e-3
    out.square().sum().backward()
    assert module.learned_scorer[0].weight.grad.abs().max() > 0
    assert module.learned_embed[0].weight.grad.abs().max() > 0


@pytest.mark.parametrize("form", ["paper", "official"])
def test_gradcheck_with_respect_to_the_learned_scores(form):
    """The functional core is differentiable in s_l (the module-level gradcheck is in the contract tests)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 3, 5, generator=g, dtype=torch.float64)
    v = torch.randn(1, 3, 3, 5, generator=g, dtype=torch.float64)
    width = learned_score_width(form, 4)
    learned = torch.randn(1, width, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)

    def run(scores):
        return non_local_sparse_attention(q, q, v, n_rounds=2, chunk_size=4, generator=3, hashing="superbit",
                                          learned_scores=scores, learned_form=form)

    assert torch.autograd.gradcheck(run, (learned,))


def test_eq_18_round_weights_are_not_convex_when_score_sums_are_negative():
    """DLSN eq. 18, w_r = S_r / sum S_r: with score sums of both signs a weight leaves [0, 1] (logsumexp weights never do)."""
    x = _x(n=1, c=4, h=6, w=6, seed=3)
    module = GlobalLearnableAttention(4, reduction=2, chunk_size=6, n_rounds=3, learned_score="official",
                                      round_weighting="score_sum").double().eval()
    with torch.no_grad():  # learned scores of both signs, large enough to decide the sign of each round's sum
        module.learned_scorer[2].bias.copy_(torch.linspace(-3.0, 2.0, 6, dtype=torch.float64))
    out, details = module(x, return_details=True)
    weights = details.round_weights  # (N, R, H, W)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones_like(weights[:, 0]))  # they still sum to 1 ...
    assert (weights < 0).any() or (weights > 1).any()  # ... but are not a convex combination
    torch.testing.assert_close(out, gla_loops(module, x), rtol=1e-9, atol=1e-9)
    module.round_weighting = "logsumexp"
    _, details = module(x, return_details=True)
    assert details.round_weights.min() >= 0 and details.round_weights.max() <= 1


def test_an_official_form_checkpoint_refuses_another_chunk_size():
    trained = build_attention("gla", 8, chunk_size=16, learned_score="official")
    other = build_attention("gla", 8, chunk_size=32, learned_score="official")
    with pytest.raises(ValueError, match=r"trained with chunk size 16.*chunk_size=16"):
        other.load_state_dict(trained.state_dict())
    paper = build_attention("gla", 8, chunk_size=16)
    with pytest.raises(ValueError, match=r"trained with chunk size 16"):
        build_attention("gla", 8, chunk_size=12).load_state_dict(paper.state_dict())
    same = build_attention("gla", 8, chunk_size=16, learned_score="official")
    same.load_state_dict(trained.state_dict())  # same chunk size: fine


def test_bad_options_get_one_clear_error():
    with pytest.raises(ValueError, match="leaves no similarity score"):
        GlobalLearnableAttention(8, learned_score="none", fixed_score=False)
    with pytest.raises(ValueError, match="learned_score must be one of"):
        GlobalLearnableAttention(8, learned_score="transposed")
    with pytest.raises(ValueError, match="round_weighting must be one of"):
        GlobalLearnableAttention(8, round_weighting="mean")
    with pytest.raises(TypeError, match="fixed_score must be True or False"):
        GlobalLearnableAttention(8, fixed_score=1)
    module = GlobalLearnableAttention(8, chunk_size=4, n_buckets=6, superbit_mode="orthonormal")  # C_e = 2 < 6
    with pytest.raises(ValueError, match=r"'orthonormal' needs b <= D.*mode='superbit'"):
        module(torch.randn(1, 8, 6, 6))


def test_layers_follow_the_official_sizes():
    """DLSN's GLA at 256 channels, chunk 128: 3x3 embeddings 256 -> 64, 256, 256 with ReLU; fc 256 -> 128 -> 128."""
    module = GlobalLearnableAttention(256, learned_score="official")
    assert module.query_key_embed[0].weight.shape == (64, 256, 3, 3)
    assert module.value_embed[0].weight.shape == (256, 256, 3, 3)
    assert module.learned_embed[0].weight.shape == (256, 256, 3, 3)
    assert isinstance(module.value_embed[1], torch.nn.ReLU)
    assert [tuple(layer.weight.shape) for layer in module.learned_scorer[::2]] == [(128, 256), (128, 128)]
    # counted from the official GLA.__init__ (conv_match, conv_assembly, conv_assembly_fc, fc)
    official = 64 * 256 * 9 + 64 + 2 * (256 * 256 * 9 + 256) + 256 * 128 + 128 + 128 * 128 + 128
    assert sum(p.numel() for p in module.parameters()) == official == 1_377_088
    paper = GlobalLearnableAttention(256)
    assert [tuple(layer.weight.shape) for layer in paper.learned_scorer[::2]] == [(384, 256), (384, 384)]


def test_eq_18_is_nan_where_every_score_sum_is_zero_and_logsumexp_is_not():
    """An all-zero query (as a ReLU embedding can give) has score sums 0 in every round: eq. 18 divides 0 by 0."""
    from srlib.attention import non_local_sparse_attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64).abs() + 0.1  # positive: score sums > 0
    q[..., 0, 0] = 0.0  # one all-zero query
    v = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    kwargs = dict(n_rounds=2, chunk_size=4, generator=1, hashing="superbit")
    eq18 = non_local_sparse_attention(q, q, v, round_weighting="score_sum", **kwargs)
    assert torch.isnan(eq18[..., 0, 0]).all() and torch.isfinite(eq18[..., 1:, :]).all()
    assert torch.isfinite(non_local_sparse_attention(q, q, v, **kwargs)).all()
