"""Tests for the NLSN model: registry, NLSA placement, shapes on any size, randomness policy, budgets, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from srlib.attention.lsh import bucket_count
from srlib.attention.sparse import NonLocalSparseAttention
from srlib.checkpoint import checkpoint_payload, model_from_checkpoint, save_checkpoint
from srlib.models import (
    available_models,
    build_model,
    count_flops,
    count_parameters,
    model_options,
)
from srlib.models.edsr import ResidualBlock
from srlib.attention.sparse import DenseMatchAttention
from srlib.models.blocks import ResidualAttention
from srlib.models.nlsn import NLSN, NLSN_OFFICIAL_OPTIONS, attention_positions, upgrade_nlsn_checkpoint

# Small enough to run in milliseconds; chunk_size=16 makes maps of more than 16 LR pixels use
# several chunks and buckets, so that the hashing (and its randomness) changes the output.
TINY = {"n_feats": 8, "n_blocks": 2, "attention_every": 1, "chunk_size": 16, "n_rounds": 2}
# Options of the attention itself (NLSA), passed through the model's attention_options.
ATTENTION_KEYS = ("reduction", "chunk_size", "n_rounds", "n_buckets")


def tiny_nlsn(scale: int, weight_seed: int = 0, **options) -> NLSN:
    """A small NLSN; NLSA's own options (chunk_size, n_rounds, ...) go into attention_options."""
    torch.manual_seed(weight_seed)
    merged = {**TINY, **options}
    attention = {k: merged.pop(k) for k in ATTENTION_KEYS if k in merged}
    if merged.get("attention", "nlsa") == "none":
        attention = {}
    return build_model("nlsn", scale, **merged, attention_options=attention)


def conv_params(c_in: int, c_out: int, k: int) -> int:
    return k * k * c_in * c_out + c_out


def expected_parameters(scale: int, n_feats: int, n_blocks: int, attention_every: int, reduction: int) -> int:
    """The NLSN parameter formula, layer by layer (EDSR backbone + 1 + B // k NLSAs)."""
    f, e = n_feats, n_feats // reduction
    upsampler = 2 * conv_params(f, 4 * f, 3) if scale == 4 else conv_params(f, scale * scale * f, 3)
    backbone = (
        conv_params(3, f, 3)  # head
        + n_blocks * 2 * conv_params(f, f, 3)  # residual blocks
        + conv_params(f, f, 3)  # body conv
        + upsampler
        + conv_params(f, 3, 3)  # tail
    )
    nlsa = conv_params(f, e, 3) + conv_params(f, f, 1)  # match (3x3, F -> F/r) + assembly (1x1, F -> F)
    return backbone + (1 + n_blocks // attention_every) * nlsa


def body_layout(model: NLSN) -> list[str]:
    kinds = {ResidualAttention: "A", ResidualBlock: "R"}
    return [kinds[type(layer)] for layer in model.body]


# --- registry and options ---------------------------------------------------------------------


def test_registered_with_complete_json_options_that_rebuild_it():
    assert "nlsn" in available_models()
    defaults = model_options("nlsn")
    assert defaults == {
        "n_feats": 32, "n_blocks": 8, "attention_every": 4, "res_scale": 0.1, "attention": "nlsa",
        "attention_options": None, "attention_res_scale": 1.0, "seed": 0,
    }
    model = tiny_nlsn(3, n_buckets=4, seed=5)
    assert isinstance(model, NLSN) and model.model_name == "nlsn" and model.scale == 3
    assert set(model.options) == set(defaults)
    options = json.loads(json.dumps(model.options))  # what a checkpoint or config round trip gives
    assert options == model.options
    rebuilt = build_model("nlsn", 3, **options).eval()
    rebuilt.load_state_dict(model.state_dict())  # strict: same layers, same shapes
    lr = torch.rand(1, 3, 6, 7)
    with torch.no_grad():
        assert torch.equal(rebuilt(lr), model.eval()(lr))


@pytest.mark.parametrize(
    "bad",
    [
        {"n_feats": 0}, {"n_blocks": -1}, {"attention_every": 0}, {"reduction": 0}, {"reduction": 9},
        {"chunk_size": 0}, {"n_rounds": 0}, {"n_buckets": 3}, {"n_buckets": 0}, {"res_scale": 0.0},
        {"res_scale": float("nan")}, {"attention_res_scale": -0.1}, {"seed": -1}, {"seed": 1.5},
        {"n_blocks": 2.0},
    ],
)
def test_invalid_options_are_refused_by_name(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        tiny_nlsn(2, **bad)


def test_unsupported_scale_names_the_supported_ones():
    with pytest.raises(ValueError, match="x2, x3, x4"):
        build_model("nlsn", 8)


def test_bad_inputs_get_the_shared_errors():
    model = tiny_nlsn(2)
    with pytest.raises(ValueError, match=r"\(1, 1, 8, 8\)"):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(TypeError, match="to_float"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


# --- where the NLSAs sit ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_blocks, attention_every, positions",
    [
        (32, 8, (0, 8, 16, 24, 32)),  # the official NLSN: 5 NLSAs
        (8, 4, (0, 4, 8)),  # the compact default: 3
        (10, 4, (0, 4, 8)),  # blocks 9 and 10 have no NLSA after them
        (3, 1, (0, 1, 2, 3)),
        (2, 5, (0,)),
        (0, 3, (0,)),
    ],
)
def test_attention_positions_follow_the_official_rule(n_blocks, attention_every, positions):
    assert attention_positions(n_blocks, attention_every) == positions


@pytest.mark.parametrize("n_blocks, attention_every", [(8, 4), (10, 4), (3, 1), (2, 5), (0, 3)])
def test_body_interleaves_blocks_and_attention_as_documented(n_blocks, attention_every):
    model = tiny_nlsn(2, n_blocks=n_blocks, attention_every=attention_every)
    layout = body_layout(model)
    assert layout[0] == "A" and layout.count("R") == n_blocks
    blocks_before_each_attention = tuple(layout[:i].count("R") for i, kind in enumerate(layout) if kind == "A")
    assert blocks_before_each_attention == model.attention_after_blocks
    assert model.attention_after_blocks == attention_positions(n_blocks, attention_every)
    assert len(model.attention_modules()) == 1 + n_blocks // attention_every
    assert model.attention_modules() == [layer.attention for layer in model.body if isinstance(layer, ResidualAttention)]
    assert all(isinstance(m, NonLocalSparseAttention) for m in model.attention_modules())


def test_attention_modules_get_the_options_and_distinct_derived_seeds():
    model = tiny_nlsn(2, n_blocks=4, attention_every=2, seed=7, reduction=2, n_buckets=6, attention_res_scale=0.5)
    modules = model.attention_modules()
    assert [m.seed for m in modules] == [7, 8, 9]
    for m in modules:
        assert (m.channels, m.embed_channels, m.chunk_size, m.n_rounds, m.n_buckets) == (8, 4, 16, 2, 6)
    assert {layer.res_scale for layer in model.body if isinstance(layer, ResidualAttention)} == {0.5}
    blocks = [layer for layer in model.body if isinstance(layer, ResidualBlock)]
    assert all(block.res_scale == 0.1 for block in blocks)


# --- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scale, size, options",
    [
        (2, (7, 9), {}),  # 63 positions: 4 chunks of 16
        (3, (7, 9), {}),
        (4, (7, 9), {}),
        (3, (5, 3), {"chunk_size": 144}),  # fewer positions than one chunk: dense attention
        (4, (1, 1), {}),
        (2, (9, 4), {"n_buckets": 8, "n_rounds": 1}),
    ],
)
def test_any_lr_size_gives_scale_times_the_size(scale, size, options):
    model = tiny_nlsn(scale, **options)
    h, w = size
    sr = model(torch.rand(2, 3, h, w))
    assert sr.shape == (2, 3, scale * h, scale * w)
    assert sr.dtype == torch.float32 and torch.isfinite(sr).all()


def test_details_give_bucket_codes_of_every_nlsa_and_the_same_output():
    model = tiny_nlsn(2, n_blocks=2, attention_every=1).eval()
    lr = torch.rand(2, 3, 8, 9)  # 72 positions: NLSN's rule gives 72 // 16 = 4 -> 4 buckets
    with torch.no_grad():
        plain = model(lr)
        sr, details = model(lr, return_details=True)
    assert torch.equal(sr, plain)
    assert len(details) == len(model.attention_modules()) == 3
    for d in details:
        assert d.n_buckets == bucket_count(72, 16) == 4
        assert d.codes.shape == (2, 2, 8, 9) and d.codes.dtype == torch.int64
        assert 0 <= int(d.codes.min()) and int(d.codes.max()) < 4
        torch.testing.assert_close(d.round_weights.sum(dim=1), torch.ones(2, 8, 9))
    # Each NLSA hashes with its own seed, so the rotations of the first two differ.
    assert not torch.equal(details[0].rotations, details[1].rotations)


def test_forward_hooks_on_the_attention_modules_see_feature_maps_in_order():
    model = tiny_nlsn(3, n_blocks=3, attention_every=1)
    seen = []
    for index, module in enumerate(model.attention_modules()):
        module.register_forward_hook(lambda m, inputs, output, i=index: seen.append((i, tuple(output.shape))))
    model(torch.rand(1, 3, 5, 6))
    assert seen == [(i, (1, 8, 5, 6)) for i in range(4)]


# --- randomness -------------------------------------------------------------------------------


def test_eval_mode_is_deterministic_and_depends_on_the_seed():
    model = tiny_nlsn(2).eval()
    lr = torch.rand(1, 3, 9, 10)  # 90 positions: several chunks, so the buckets matter
    with torch.no_grad():
        first, second = model(lr), model(lr)
        assert torch.equal(first, second)
        reseeded = tiny_nlsn(2, seed=1).eval()
        reseeded.load_state_dict(model.state_dict())  # same weights, other hash rotations
        assert not torch.allclose(reseeded(lr), first)


def test_train_mode_draws_fresh_rotations_that_the_seed_replays():
    model = tiny_nlsn(2).train()
    lr = torch.rand(1, 3, 9, 10)
    with torch.no_grad():
        first, second = model(lr), model(lr)
        assert not torch.allclose(first, second)  # new buckets at every call
        model.reset_attention_generators()
        assert torch.equal(model(lr), first)  # the same sequence again from the seeds


# --- parameter budgets ------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("n_feats, n_blocks, attention_every, reduction", [(8, 2, 1, 4), (12, 5, 2, 3)])
def test_parameter_count_matches_the_formula(scale, n_feats, n_blocks, attention_every, reduction):
    model = tiny_nlsn(scale, n_feats=n_feats, n_blocks=n_blocks, attention_every=attention_every, reduction=reduction)
    assert count_parameters(model) == expected_parameters(scale, n_feats, n_blocks, attention_every, reduction)


def test_documented_default_count():
    # The number in the module docstring (defaults: 32 channels, 8 blocks, 3 NLSAs, x2).
    model = build_model("nlsn", 2)
    assert count_parameters(model) == expected_parameters(2, 32, 8, 4, 4) == 206_075
    assert sum(count_parameters(m) for m in model.attention_modules()) == 10_104


def test_official_size_is_the_papers_44m():
    # 256 channels, 32 residual blocks, 5 NLSAs: 44,156,483 parameters at x4, the "44M" of NLSN.
    # Only built and counted (about 0.2 GB of weights), never run.
    model = build_model("nlsn", 4, **NLSN_OFFICIAL_OPTIONS)
    assert count_parameters(model) == expected_parameters(4, 256, 32, 8, 4) == 44_156_483
    assert model.attention_after_blocks == (0, 8, 16, 24, 32)
    assert sum(count_parameters(m) for m in model.attention_modules()) == 5 * 213_312
    assert {layer.res_scale for layer in model.body if isinstance(layer, ResidualAttention)} == {0.1}


def test_flops_are_the_backbone_plus_each_nlsa():
    model = tiny_nlsn(2)  # TINY: 8 channels, 2 blocks, 3 NLSAs
    backbone = build_model("edsr_baseline", 2, n_feats=8, n_blocks=2, res_scale=0.1)
    nlsa = model.attention_modules()[0].eval()

    def nlsa_flops(h: int, w: int) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            nlsa(torch.zeros(1, 8, h, w))
        return int(counter.get_total_flops())

    for size in [(6, 6), (12, 12)]:
        assert count_flops(model, size) == count_flops(backbone, size) + 3 * nlsa_flops(*size)
    assert nlsa_flops(12, 12) > 0


# --- training machinery -----------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
def test_gradients_reach_every_parameter(scale):
    model = tiny_nlsn(scale).train()
    lr = torch.rand(2, 3, 6, 7)
    loss = (model(lr) - torch.rand(2, 3, 6 * scale, 7 * scale)).abs().mean()
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = tiny_nlsn(3, n_blocks=3, attention_every=2, seed=11).eval()
    path = save_checkpoint(tmp_path / "nlsn.pt", checkpoint_payload(model))
    restored = model_from_checkpoint(path, expected_model="nlsn", expected_scale=3)
    assert isinstance(restored, NLSN) and restored.options == model.options and not restored.training
    assert [m.seed for m in restored.attention_modules()] == [11, 12]
    lr = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        assert torch.equal(restored(lr), model(lr))


# --- attention kinds (supplement Table 1: baseline / Non-Local / NLSA) ----------------------------


def test_dense_kind_equals_sparse_with_one_chunk_and_same_weights():
    torch.manual_seed(0)
    options = dict(n_feats=8, n_blocks=2, attention_every=2)
    dense = build_model("nlsn", 2, attention="nlsa_dense", attention_options={"n_rounds": 1}, **options).double().eval()
    sparse = build_model(
        "nlsn", 2, attention="nlsa", attention_options={"n_rounds": 1, "chunk_size": 1000}, **options
    ).double().eval()
    assert count_parameters(dense) == count_parameters(sparse)
    sparse.load_state_dict(dense.state_dict())
    lr = torch.rand(2, 3, 9, 7, dtype=torch.float64)  # 63 positions: one chunk holds them all
    with torch.no_grad():
        torch.testing.assert_close(dense(lr), sparse(lr))


def test_none_kind_is_the_backbone_alone():
    torch.manual_seed(0)
    options = dict(n_feats=8, n_blocks=4, attention_every=2)
    plain = build_model("nlsn", 2, attention="none", **options)
    full = build_model("nlsn", 2, **options)
    assert plain.attention_modules() == [] and plain.attention_after_blocks == ()
    per_attention = 9 * 8 * 2 + 2 + 8 * 8 + 8  # match 3x3 (8 -> 2) + assembly 1x1 (8 -> 8)
    assert count_parameters(full) - count_parameters(plain) == 3 * per_attention
    assert plain(torch.rand(1, 3, 5, 6)).shape == (1, 3, 10, 12)


def test_dense_kind_gives_its_weights_as_details_and_unknown_or_wrong_kinds_are_clear():
    model = build_model("nlsn", 2, n_feats=8, n_blocks=1, attention_every=1, attention="nlsa_dense")
    _, details = model(torch.rand(1, 3, 6, 6), return_details=True)
    assert len(details) == 2 and details[0].weights.shape == (1, 36, 36)
    with pytest.raises(ValueError, match="unknown attention 'criss-cross'"):
        build_model("nlsn", 2, attention="criss-cross")
    with pytest.raises(ValueError, match="kind 'cross_scale'"):
        build_model("nlsn", 2, attention="cross_scale")
    with pytest.raises(ValueError, match="seed"):
        build_model("nlsn", 2, attention_options={"seed": 3})


@pytest.mark.parametrize("name", ["non_local", "region_non_local", "cross_scale_naive", "nlsa_dense"])
def test_every_in_scale_attention_trains_inside_nlsn(name):
    model = build_model("nlsn", 2, n_feats=8, n_blocks=2, attention_every=2, attention=name)
    assert all(m.attention_name == name for m in model.attention_modules())
    loss = model(torch.rand(2, 3, 6, 6)).abs().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_legacy_options_and_keys_are_upgraded():
    legacy = {
        "n_feats": 8, "n_blocks": 2, "attention_every": 2, "reduction": 4, "chunk_size": 144, "n_rounds": 4,
        "n_buckets": None, "res_scale": 0.1, "attention_res_scale": 1.0, "seed": 0, "attention": "dense",
    }
    options, state = upgrade_nlsn_checkpoint(
        legacy, {"body.0.match_embedding.weight": torch.zeros(1), "body.3.assembly_embedding.bias": torch.zeros(1)}
    )
    assert options["attention"] == "nlsa_dense"
    assert options["attention_options"] == {"reduction": 4, "chunk_size": 144, "n_rounds": 4, "n_buckets": None}
    assert set(state) == {"body.0.attention.query_key_embed.0.weight", "body.3.attention.value_embed.0.bias"}
    build_model("nlsn", 2, **options)
    current = tiny_nlsn(2).options
    assert upgrade_nlsn_checkpoint(current, {})[0] == current


def test_dense_kind_gradcheck():
    torch.manual_seed(0)
    module = DenseMatchAttention(4, reduction=2).double()
    x = torch.rand(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))
