"""Tests for the CSNLN model: registry, shapes on any size, shared recurrent weights, ablation budgets, training."""

from __future__ import annotations

import json

import pytest
import torch

from srlib.attention import (
    CrossScaleAttention,
    NaiveCrossScaleAttention,
    NonLocalAttention,
    RegionNonLocalAttention,
    available_attention,
)
from srlib.checkpoint import checkpoint_payload, model_from_checkpoint, save_checkpoint
from srlib.data.io import load_image, save_image
from srlib.data.locate import repository_data_dir
from srlib.models import (
    available_models,
    build_model,
    count_flops,
    count_parameters,
    model_options,
)
from srlib.models.csnln import (
    CSNLN,
    CSNLN_OFFICIAL_OPTIONS,
    MutualProjectedFusion,
    SelfExemplarsMiningCell,
    upgrade_csnln_checkpoint,
)
from srlib.models.edsr import DIV2K_RGB_MEAN
from srlib.train import preset_config, train

TINY = dict(n_feats=8, depth=2)


def tiny_csnln(scale: int, seed: int = 0, **options) -> CSNLN:
    torch.manual_seed(seed)
    return build_model("csnln", scale, **{**TINY, **options})


def conv_params(c_in: int, c_out: int, k: int) -> int:
    return k * k * c_in * c_out + c_out


# --- registry and options ---------------------------------------------------------------------


def test_registered_with_complete_json_options_that_rebuild_it():
    assert "csnln" in available_models()
    defaults = model_options("csnln")
    assert defaults["n_feats"] == 32 and defaults["depth"] == 4 and defaults["cross_scale_attention"] == "cross_scale"
    model = tiny_csnln(3, in_scale_attention="region_non_local", cross_scale_attention="cross_scale_naive",
                       cross_scale_options={"softmax_scale": 5.0})
    assert isinstance(model, CSNLN) and model.model_name == "csnln" and model.scale == 3
    assert set(model.options) == set(defaults)
    options = json.loads(json.dumps(model.options))  # what a checkpoint or config round trip gives
    assert options == model.options
    rebuilt = build_model("csnln", 3, **options)
    assert rebuilt.options == model.options
    rebuilt.load_state_dict(model.state_dict())  # strict: same layers, same shapes
    lr = torch.rand(1, 3, 5, 6)
    assert torch.equal(rebuilt(lr), model(lr))


@pytest.mark.parametrize(
    "bad",
    [
        (dict(n_feats=0), "n_feats"), (dict(depth=0), "depth"), (dict(x4_stages=3), "x4_stages"),
        (dict(in_scale_options={"reduction": 64}), "reduction"),
        (dict(cross_scale_options={"patch_size": 2}), "patch_size"),
        (dict(cross_scale_options={"softmax_scale": -1.0}), "softmax_scale"),
        (dict(in_scale_attention="local"), "unknown attention 'local'"),
        (dict(cross_scale_attention="pixel"), "unknown attention 'pixel'"),
        (dict(cross_scale_options={"normalization": "nine"}), "normalization"),
        (dict(in_scale_attention="region_non_local", in_scale_options={"regions": [0, 2]}), "regions"),
        (dict(cross_scale_options={"scale": 2}), "scale"),
        (dict(cross_scale_attention="none", cross_scale_options={"patch_size": 3}), "none"),
    ],
)
def test_invalid_options_are_refused_by_name(bad):
    bad, name = bad
    with pytest.raises(ValueError, match=name):
        build_model("csnln", 4, **bad)


def test_a_branch_refuses_an_attention_of_the_wrong_kind_and_lists_those_that_fit():
    with pytest.raises(ValueError) as info:
        build_model("csnln", 2, in_scale_attention="cross_scale")
    message = str(info.value)
    assert "'cross_scale'" in message and "in_scale" in message
    for name in available_attention("in_scale"):
        assert name in message


def test_unknown_attention_options_are_named():
    with pytest.raises(TypeError, match="n_rounds"):
        build_model("csnln", 2, cross_scale_options={"n_rounds": 2})


def test_unsupported_scale_names_the_supported_ones():
    with pytest.raises(ValueError, match="x2, x3, x4"):
        build_model("csnln", 5)


def test_bad_inputs_get_the_shared_errors():
    model = tiny_csnln(2)
    with pytest.raises(ValueError, match=r"\(1, 1, 8, 8\)"):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(TypeError, match="to_float"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


# --- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scale, size, options",
    [
        (2, (7, 9), {}),
        (3, (7, 9), {}),
        (4, (10, 6), {}),
        (4, (5, 3), dict(x4_stages=2)),
        (3, (7, 9), dict(in_scale_attention="region_non_local", in_scale_options={"regions": [2, 2]})),
        (2, (1, 1), dict(cross_scale_options={"normalization": "constant6", "patch_size": 1})),
        (3, (4, 5), dict(cross_scale_attention="cross_scale_naive")),
        (3, (4, 5), dict(cross_scale_attention="cross_scale_pixel")),
        (3, (4, 5), dict(cross_scale_attention="non_local")),
        (2, (4, 5), dict(cross_scale_attention="nlsa")),
        (4, (4, 5), dict(cross_scale_attention="none")),
    ],
)
def test_any_lr_size_gives_scale_times_the_size(scale, size, options):
    model = tiny_csnln(scale, **options)
    h, w = size
    sr = model(torch.rand(2, 3, h, w))
    assert sr.shape == (2, 3, scale * h, scale * w)
    assert sr.dtype == torch.float32 and torch.isfinite(sr).all()


def test_mean_shift_uses_the_div2k_mean():
    model = tiny_csnln(2)
    assert not any("mean" in key or "shift" in key for key in model.state_dict())
    with torch.no_grad():  # a silent tail: the network outputs exactly the mean it adds back
        model.tail.weight.zero_()
        model.tail.bias.zero_()
    sr = model(torch.rand(1, 3, 4, 5))
    torch.testing.assert_close(sr, torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1).expand_as(sr))


# --- the recurrent cell and its shared weights ------------------------------------------------


def test_one_cell_with_shared_weights_is_applied_depth_times():
    model = tiny_csnln(2, depth=3)
    cells = [m for m in model.modules() if isinstance(m, SelfExemplarsMiningCell)]
    assert len(cells) == 1
    calls = []
    model.sem.register_forward_hook(lambda module, inputs, output: calls.append(tuple(output.shape)))
    model(torch.rand(1, 3, 5, 4))
    assert calls == [(1, 8, 10, 8)] * 3  # three hidden units H_t of the same module


@pytest.mark.parametrize("scale", [2, 4])
def test_parameter_count_depends_on_depth_only_through_the_tail(scale):
    f = 8
    counts = {t: count_parameters(tiny_csnln(scale, n_feats=f, depth=t)) for t in (1, 2, 5)}
    tails = {t: conv_params(t * f, 3, 3) for t in counts}
    assert len({counts[t] - tails[t] for t in counts}) == 1  # head + one SEM cell, independent of T
    assert counts[5] - counts[1] == 9 * 4 * f * 3


def test_x4_two_stages_add_a_second_stage_of_branches():
    one = tiny_csnln(4, x4_stages=1)
    two = tiny_csnln(4, x4_stages=2)
    assert len(one.sem.stages) == 1 and len(two.sem.stages) == 2
    assert two.sem.stages[0].cross_scale_attention.scale == 2
    assert two.sem.stages[1].fusion.scale == 4
    assert one.sem.stages[0].cross_scale_attention.scale == 4
    assert one.sem.to_lr[0].kernel_size == two.sem.to_lr[0].kernel_size == (8, 8)


# --- parameter budgets ------------------------------------------------------------------------


def test_official_size_matches_the_paper():
    # 3,061,265 parameters at x2 with 128 channels and 12 recurrences: the "3M" of the paper's
    # Table 2 (Mei et al., CVPR 2020), as the released code builds it.
    assert count_parameters(build_model("csnln", 2, **CSNLN_OFFICIAL_OPTIONS)) == 3_061_265


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_ablation_variants_have_the_documented_budgets(scale):
    f, r = 8, 2
    counts = {kind: count_parameters(tiny_csnln(scale, cross_scale_attention=name)) for kind, name in
              (("proposed", "cross_scale"), ("naive", "cross_scale_naive"), ("in_scale", "non_local"),
               ("none", "none"))}
    # Supplement Table 1: proposed, naive and in-scale attention compared at an equal budget.
    assert counts["proposed"] == counts["naive"] == counts["in_scale"]
    embeddings = 2 * (conv_params(f, f // r, 1) + 1) + conv_params(f, f, 1) + 1  # theta, delta, psi + PReLUs
    residual_block = 2 * conv_params(f, f, 3) + 1  # conv of eq. 6 (a residual block in the code)
    assert counts["proposed"] - counts["none"] == embeddings + residual_block


def test_documented_default_counts():
    # The numbers in the CSNLN docstring (defaults: 32 channels, 4 recurrences, x2).
    assert count_parameters(build_model("csnln", 2)) == 193_169
    assert count_parameters(build_model("csnln", 2, cross_scale_attention="cross_scale_naive")) == 193_169
    assert count_parameters(build_model("csnln", 2, cross_scale_attention="none")) == 172_557


def test_variants_use_the_library_attention_modules():
    stage = tiny_csnln(2, in_scale_attention="region_non_local").sem.stages[0]
    assert isinstance(stage.in_scale_attention, RegionNonLocalAttention)
    assert type(stage.cross_scale_attention) is CrossScaleAttention
    naive = tiny_csnln(2, cross_scale_attention="cross_scale_naive").sem.stages[0]
    assert isinstance(naive.cross_scale_attention, NaiveCrossScaleAttention)
    assert naive.cross_scale_attention.scale == 2  # the model gives the stage's factor
    second = tiny_csnln(2, cross_scale_attention="non_local").sem.stages[0].cross_scale_attention
    assert isinstance(second, NonLocalAttention)
    assert tiny_csnln(2, cross_scale_attention="none").sem.stages[0].cross_scale_attention is None


def test_naive_branch_output_is_constant_on_each_block():
    # Supplement eq. 2: values come from the downscaled map, so F_C carries no sub-block detail.
    stage = tiny_csnln(3, cross_scale_attention="cross_scale_naive").sem.stages[0]
    features = torch.randn(1, 8, 4, 5)
    f_c = stage.cross_scale_upsample(stage.cross_scale_attention(features))  # (1, 8, 12, 15)
    assert f_c.shape == (1, 8, 12, 15)
    blocks = f_c.reshape(1, 8, 4, 3, 5, 3)
    assert torch.equal(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))


# --- fusion -----------------------------------------------------------------------------------


def test_mutual_projected_fusion_follows_eq_5_to_8():
    torch.manual_seed(0)
    fusion = MutualProjectedFusion(4, 3)
    local, f_i, f_c = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 9, 15), torch.randn(2, 4, 9, 15)
    f_ic = f_i + fusion.residual_encoder(f_c - f_i)  # eq. 5-6
    expected = fusion.upsample(local - fusion.downsample(f_ic)) + f_ic  # eq. 7-8
    torch.testing.assert_close(fusion(local, f_i, f_c), expected)
    with pytest.raises(ValueError, match="cross-scale"):
        fusion(local, f_i)
    two_branch = MutualProjectedFusion(4, 3, fuse_cross_scale=False)
    assert two_branch.residual_encoder is None
    with pytest.raises(ValueError, match="cross-scale"):
        two_branch(local, f_i, f_c)


# --- training machinery -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options", [dict(), dict(x4_stages=2, in_scale_attention="region_non_local", cross_scale_attention="cross_scale_naive")]
)
def test_gradients_reach_every_parameter(options):
    model = tiny_csnln(4, **options)
    lr = torch.rand(2, 3, 6, 5)
    loss = (model(lr) - torch.rand(2, 3, 24, 20)).abs().mean()
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = tiny_csnln(3, cross_scale_attention="cross_scale_naive", cross_scale_options={"softmax_scale": 5.0}).eval()
    path = save_checkpoint(tmp_path / "csnln.pt", checkpoint_payload(model))
    restored = model_from_checkpoint(path, expected_model="csnln", expected_scale=3)
    assert isinstance(restored, CSNLN) and restored.options == model.options
    lr = torch.rand(1, 3, 7, 6)
    with torch.no_grad():
        assert torch.equal(restored(lr), model(lr))


def test_flops_are_counted_and_grow_faster_than_the_image():
    model = tiny_csnln(2)
    small, large = count_flops(model, (8, 8)), count_flops(model, (16, 16))
    assert small > 0
    # Convolutions alone would give exactly 4x; the attention's (h w)^2 terms make it more.
    assert large > 4 * small
    assert count_flops(tiny_csnln(2, cross_scale_attention="none"), (8, 8)) < small


def test_smoke_training_run(tmp_path):
    # A tiny validation set (one 36x30 HR crop of Set5's butterfly), so that validation is fast.
    butterfly = load_image(repository_data_dir() / "benchmark" / "Set5" / "butterfly.png")  # uint8 (3, 256, 256)
    save_image(butterfly[:, 100:136, 100:130], tmp_path / "data" / "benchmark" / "TinyVal" / "crop.png")
    config = preset_config(
        "smoke", model="csnln", model_options=dict(n_feats=8, depth=2), scale=2, steps=3, val_every=0,
        checkpoint_every=0, final_sets=("Set5",), val_max_images=1, val_set="TinyVal", lr_patch=16,
        batch_size=2, data_roots=[str(tmp_path / "data")],
    )
    result = train(config, tmp_path / "run", progress=False, write_report=False)
    assert result["step"] == 3
    assert all(torch.isfinite(torch.tensor(result["history"]["loss"])))
    assert len(result["history"]["val_psnr"]) == 1 and result["history"]["val_psnr"][0] > 0
    restored = model_from_checkpoint(result["checkpoint"], expected_model="csnln", expected_scale=2)
    assert restored.options["n_feats"] == 8 and restored.options["depth"] == 2


# --- checkpoints of the pre-registry layout -----------------------------------------------------


LEGACY_OPTIONS = {
    "n_feats": 8, "depth": 2, "reduction": 2, "patch_size": 3, "softmax_scale": 10.0, "in_scale": "region",
    "regions": 2, "cross_scale": "naive", "normalization": "overlap", "x4_stages": 1,
}


def test_legacy_options_and_keys_are_upgraded():
    options, state = upgrade_csnln_checkpoint(
        LEGACY_OPTIONS, {"sem.stages.0.in_scale_attention.theta.0.weight": torch.zeros(1), "head.0.bias": torch.ones(1)}
    )
    assert options == {
        "n_feats": 8, "depth": 2, "in_scale_attention": "region_non_local",
        "in_scale_options": {"reduction": 2, "regions": [2, 2]}, "cross_scale_attention": "cross_scale_naive",
        "cross_scale_options": {"reduction": 2, "softmax_scale": 10.0}, "x4_stages": 1,
    }
    assert set(state) == {"sem.stages.0.in_scale_attention.query_embed.0.weight", "head.0.bias"}
    current = tiny_csnln(2).options
    assert upgrade_csnln_checkpoint(current, {})[0] == current  # today's layout passes unchanged


@pytest.mark.parametrize("legacy, name", [("proposed", "cross_scale"), ("in_scale", "non_local"), ("none", "none")])
def test_every_legacy_third_branch_has_its_counterpart(legacy, name):
    options, _ = upgrade_csnln_checkpoint({**LEGACY_OPTIONS, "cross_scale": legacy, "in_scale": "global"}, {})
    assert options["cross_scale_attention"] == name
    build_model("csnln", 2, **options)  # the upgraded options build
