"""Tests for srlib.models: registry, bicubic and EDSR-baseline models, parameter and FLOP counts."""

from __future__ import annotations

import json

import pytest
import torch

from srlib.imresize import imresize
from srlib.models import (
    available_models,
    build_model,
    count_flops,
    count_parameters,
    model_summary,
    register_model,
)
from srlib.models.edsr import DIV2K_RGB_MEAN, EDSR

TINY = {"n_feats": 8, "n_blocks": 2}


def tiny_edsr(scale: int, seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_model("edsr_baseline", scale, **{**TINY, **options})


def tiny_model(name: str, scale: int, seed: int = 0):
    """Any registered model at the size of its smoke preset (small enough for a 7x9 input)."""
    from srlib.models import model_presets

    torch.manual_seed(seed)
    return build_model(name, scale, **model_presets(name, "smoke").get("model_options", {}))


# --- registry ---------------------------------------------------------------------------------


def test_available_models_lists_the_baselines():
    names = available_models()
    assert "bicubic" in names and "edsr_baseline" in names
    assert names == sorted(names)


def test_unknown_model_lists_available_ones():
    with pytest.raises(ValueError) as info:
        build_model("edsr_large_typo", 2)
    assert "edsr_large_typo" in str(info.value)
    for name in available_models():
        assert name in str(info.value)


@pytest.mark.parametrize("scale", [1, 5, 8])
def test_edsr_unsupported_scale_names_supported_ones(scale):
    with pytest.raises(ValueError) as info:
        build_model("edsr_baseline", scale)
    message = str(info.value)
    assert f"x{scale}" in message and "x2" in message and "x3" in message and "x4" in message


@pytest.mark.parametrize("scale", [0, -2, 2.5, "2", True])
def test_scale_must_be_a_positive_integer(scale):
    with pytest.raises(ValueError, match="scale"):
        build_model("bicubic", scale)


def test_bicubic_rejects_scale_one_but_accepts_any_integer_from_two():
    with pytest.raises(ValueError, match=">= 2"):
        build_model("bicubic", 1)
    assert build_model("bicubic", 7).scale == 7


def test_unknown_option_is_named():
    with pytest.raises(TypeError) as info:
        build_model("edsr_baseline", 2, n_feat=32)
    assert "n_feat" in str(info.value) and "n_feats" in str(info.value)
    with pytest.raises(TypeError, match="width"):
        build_model("bicubic", 2, width=3)


def test_invalid_option_values_are_rejected():
    with pytest.raises(ValueError, match="n_feats"):
        build_model("edsr_baseline", 2, n_feats=0)
    with pytest.raises(ValueError, match="res_scale"):
        build_model("edsr_baseline", 2, res_scale=0.0)


def test_registering_a_taken_name_with_another_builder_fails():
    with pytest.raises(ValueError, match="already registered"):

        @register_model("edsr_baseline")
        def another_builder(scale):  # pragma: no cover - never called
            return torch.nn.Identity()


# --- forward shapes and input checks ----------------------------------------------------------


@pytest.mark.parametrize("name", available_models("single_image"))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shape_on_odd_sizes(name, scale):
    model = tiny_model(name, scale)
    lr = torch.rand(2, 3, 7, 9)
    sr = model(lr)
    assert sr.shape == (2, 3, 7 * scale, 9 * scale)
    assert sr.dtype == torch.float32


@pytest.mark.parametrize("name", available_models("single_image"))
@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 1, 8, 8), (1, 4, 8, 8), (1, 1, 3, 8, 8)])
def test_bad_input_shape_is_reported(name, shape):
    model = tiny_model(name, 2)
    with pytest.raises(ValueError) as info:
        model(torch.rand(shape))
    assert str(tuple(shape)) in str(info.value)


@pytest.mark.parametrize("name", available_models("single_image"))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_are_refused_with_their_count(name, bad):
    lr = torch.rand(1, 3, 8, 8)
    lr[0, 1, 2, 3] = bad
    lr[0, 2, 5, 5] = bad
    with pytest.raises(ValueError, match="2 non-finite") as info:
        tiny_model(name, 2)(lr)
    assert "torch.nan_to_num" in str(info.value)


@pytest.mark.parametrize("name", available_models("single_image"))
def test_every_model_rebuilds_from_its_stamped_options(name):
    model = tiny_model(name, 2)
    assert model.model_name == name and model.scale == 2
    options = json.loads(json.dumps(model.options))  # what a checkpoint round-trip gives
    rebuilt = build_model(name, 2, **options)
    rebuilt.load_state_dict(model.state_dict())
    lr = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(lr), model.eval()(lr))


def test_uint8_input_is_rejected_with_advice():
    with pytest.raises(TypeError, match="to_float"):
        tiny_edsr(2)(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


# --- attributes and rebuilding ----------------------------------------------------------------


def test_options_are_complete_and_rebuild_the_same_architecture():
    model = tiny_edsr(3, n_blocks=3, res_scale=0.1)
    assert model.model_name == "edsr_baseline" and model.scale == 3
    assert model.options == {"n_feats": 8, "n_blocks": 3, "res_scale": 0.1}
    options = json.loads(json.dumps(model.options))  # what a checkpoint/config round-trip gives
    rebuilt = build_model(model.model_name, model.scale, **options)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())
    lr = torch.rand(1, 3, 6, 5)
    assert torch.equal(rebuilt(lr), model(lr))


def test_default_options_are_filled_in():
    model = build_model("edsr_baseline", 2)
    assert model.options == {"n_feats": 64, "n_blocks": 16, "res_scale": 1.0}
    assert build_model("bicubic", 4).options == {}


def test_bicubic_model_equals_imresize():
    lr = torch.rand(2, 3, 11, 6)
    for scale in (2, 3, 4):
        model = build_model("bicubic", scale)
        assert count_parameters(model) == 0
        assert torch.equal(model(lr), imresize(lr, scale=scale))


# --- EDSR architecture ------------------------------------------------------------------------


def edsr_parameter_formula(scale: int, f: int, n_blocks: int) -> int:
    """Parameters of EDSR-baseline written out layer by layer (weights + biases of 3x3 convs)."""

    def conv(c_in, c_out):
        return 9 * c_in * c_out + c_out

    upsampler = 2 * conv(f, 4 * f) if scale == 4 else conv(f, scale * scale * f)
    return conv(3, f) + n_blocks * 2 * conv(f, f) + conv(f, f) + upsampler + conv(f, 3)


def test_edsr_baseline_parameter_count_matches_the_paper():
    model = build_model("edsr_baseline", 2)
    # 1,369,859 at x2: the EDSR-baseline size (about 1.37 M in Lim et al. 2017, Table 1).
    assert edsr_parameter_formula(2, 64, 16) == 1_369_859
    assert count_parameters(model) == 1_369_859
    for scale in (3, 4):
        assert count_parameters(build_model("edsr_baseline", scale)) == edsr_parameter_formula(scale, 64, 16)


def test_edsr_layers_and_mean_shift():
    model = tiny_edsr(2)
    assert isinstance(model, EDSR)
    assert len(model.body) == 2
    # The RGB mean is a constant of the architecture: not a parameter, not in the checkpoint.
    assert not any("mean" in key or "shift" in key for key in model.state_dict())
    # With a silent tail the network outputs exactly the mean it adds back.
    with torch.no_grad():
        model.tail.weight.zero_()
        model.tail.bias.zero_()
    sr = model(torch.rand(1, 3, 4, 5))
    expected = torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1).expand_as(sr)
    torch.testing.assert_close(sr, expected)


def test_edsr_subtracts_the_mean_at_the_input():
    model = tiny_edsr(2)
    with torch.no_grad():
        model.head.bias.zero_()
    captured = {}
    model.head.register_forward_hook(lambda module, inputs, output: captured.update(out=output))
    mean_image = torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1).expand(1, 3, 6, 6).contiguous()
    model(mean_image)
    assert captured["out"].abs().max() < 1e-6  # head sees zeros: mean removed


def test_gradients_reach_every_parameter():
    model = tiny_edsr(4)
    lr = torch.rand(2, 3, 6, 7)
    loss = (model(lr) - torch.rand(2, 3, 24, 28)).abs().mean()
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


# --- profiling --------------------------------------------------------------------------------


def edsr_flops_by_hand(scale: int, f: int, n_blocks: int, h: int, w: int) -> int:
    """sum over convolutions of 2 * k*k * C_in * C_out * H_out * W_out (2 FLOPs per multiply-add)."""

    def conv(c_in, c_out, height, width):
        return 2 * 9 * c_in * c_out * height * width

    flops = conv(3, f, h, w)  # head
    flops += 2 * n_blocks * conv(f, f, h, w)  # residual blocks
    flops += conv(f, f, h, w)  # conv closing the body
    if scale == 4:
        flops += conv(f, 4 * f, h, w) + conv(f, 4 * f, 2 * h, 2 * w)  # two x2 stages
    else:
        flops += conv(f, scale * scale * f, h, w)
    flops += conv(f, 3, scale * h, scale * w)  # tail at HR resolution
    return flops


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_count_flops_equals_hand_computation(scale):
    model = tiny_edsr(scale)
    assert count_flops(model, lr_size=(6, 5)) == edsr_flops_by_hand(scale, 8, 2, 6, 5)


def test_count_flops_keeps_training_mode_and_grows_with_size():
    model = tiny_edsr(2)
    model.train()
    small = count_flops(model, (8, 8))
    assert model.training
    assert count_flops(model, (16, 16)) == 4 * small


def test_model_summary_rows():
    model = tiny_edsr(2)
    rows = model_summary(model, lr_sizes=[(4, 4), (8, 6)])
    assert [row["lr_size"] for row in rows] == [(4, 4), (8, 6)]
    assert rows[1]["sr_size"] == (16, 12)
    assert all(row["params"] == edsr_parameter_formula(2, 8, 2) for row in rows)
    assert rows[1]["flops"] == edsr_flops_by_hand(2, 8, 2, 8, 6)
    assert rows[0]["gflops"] == pytest.approx(rows[0]["flops"] / 1e9)
    assert rows[0]["model"] == "edsr_baseline" and rows[0]["scale"] == 2


def _dense_attention_flops_by_hand(c: int, c_e: int, qk_width: int, length: int, kernel: int = 1) -> int:
    """One dense attention on L positions: embeddings (a k x k conv C -> C_e (k = 1: twice, query and key; k = 3:
    once, shared) and a 1x1 conv C -> C), then the two (L, L) products with query/key width ``qk_width``."""
    embeddings = length * (2 * c * c_e + c * c) if kernel == 1 else length * (9 * c * c_e + c * c)
    return 2 * (embeddings + length * length * (qk_width + c))


@pytest.mark.parametrize(
    "attention, options, qk_width, kernel",
    [
        ("non_local", {"implementation": "explicit"}, 4, 1),  # bmm + softmax: C_e = 8 // 2 = 4 channels
        ("non_local", {"implementation": "fused"}, 8, 1),  # SDPA: queries and keys zero-padded to C = 8
        ("nlsa_dense", None, 8, 3),  # NLSA's embeddings (3x3 C -> C // 4), SDPA padded to 8
    ],
)
def test_count_flops_counts_the_fused_attention_of_a_small_model(attention, options, qk_width, kernel):
    """NLSN body with dense attention, 2 blocks, attention after every 2nd (2 attentions), on a 6x5 LR input."""
    torch.manual_seed(0)
    model = build_model("nlsn", 2, n_feats=8, n_blocks=2, attention_every=2, attention=attention,
                        attention_options=options)
    c_e = 8 // (2 if attention == "non_local" else 4)
    expected = edsr_flops_by_hand(2, 8, 2, 6, 5) + 2 * _dense_attention_flops_by_hand(8, c_e, qk_width, 30, kernel)
    assert count_flops(model, (6, 5)) == expected


def test_flop_counter_counts_the_cpu_attention_kernel_forward_and_backward():
    from srlib.models.profile import flop_counter

    q = torch.randn(2, 3, 10, 4, requires_grad=True)  # (B, H, Lq, E)
    k = torch.randn(2, 3, 7, 4, requires_grad=True)  # (B, H, Lk, E)
    v = torch.randn(2, 3, 7, 4, requires_grad=True)  # (B, H, Lk, E_v); E_v = E lets the fused CPU kernel run
    with torch.no_grad(), flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == 2 * 2 * 3 * 10 * 7 * (4 + 4)  # Q K^T and the weighted sum of V
    with flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
    counts = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    if any("flash_attention_for_cpu" in op for op in counts):  # the fused kernel ran (not the bmm math path)
        # Forward, then five products backward: the scores again, dP, dV, dQ, dK.
        assert counter.get_total_flops() == 2 * 2 * 3 * 10 * 7 * (4 + 4) + 2 * 2 * 3 * 10 * 7 * (3 * 4 + 2 * 4)
    else:  # the math path: two products forward, four backward, all bmm
        assert counter.get_total_flops() == 2 * 2 * 3 * 10 * 7 * (2 * 4 + 4 * 4)
