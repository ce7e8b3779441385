"""DLSN (srlib.models.dlsn): registry and presets, the official size, structure of eq. 3-7, attention slots, checkpoints."""

from __future__ import annotations

import pytest
import torch

from srlib.attention import GlobalLearnableAttention
from srlib.checkpoint import checkpoint_payload, model_from_checkpoint, save_checkpoint
from srlib.models import build_model, count_parameters, model_presets
from srlib.models.blocks import ResidualAttention, ResidualBlock
from srlib.models.dlsn import DLSN, DLSN_COMPACT_OPTIONS, DLSN_OFFICIAL_OPTIONS, GLAFFM

TINY = {"n_feats": 8, "n_modules": 2, "n_blocks": 1,
        "attention_options": {"reduction": 2, "chunk_size": 16, "n_rounds": 2, "hidden": 8}}


def conv(c_in, c_out, k=3):
    return k * k * c_in * c_out + c_out


def test_official_options_rebuild_the_released_size():
    """69,842,563 at x2: our count of the released DLSN (README command: 10 x 4, 256 channels, chunk 128).

    Counted layer by layer from laoyangui/DLSN src/model/dlsn.py, attention.py and common.py: head, 10 GLAFFMs
    (4 LFFBs, GLA, conv), body conv, x2 up-sampler, tail; less the unused parameter ``a`` and the two frozen
    mean-shift convolutions (24 weights), which srlib keeps as a buffer.
    """
    f, e, m = 256, 64, 128
    gla = conv(f, e) + 2 * conv(f, f) + (f * m + m) + (m * m + m)  # conv_match, conv_assembly(+_fc), fc
    glaffm = 4 * 2 * conv(f, f) + gla + conv(f, f)
    expected = conv(3, f) + 10 * glaffm + conv(f, f) + conv(f, 4 * f) + conv(f, 3)
    assert expected == 69_842_563
    assert count_parameters(build_model("dlsn", 2, **DLSN_OFFICIAL_OPTIONS)) == expected


def test_compact_default_is_near_200k_and_is_the_quick_preset():
    model = build_model("dlsn", 2)
    assert count_parameters(model) == 215_835
    assert model_presets("dlsn", "quick")["model_options"] == {"n_feats": 32, "n_modules": 3, "n_blocks": 1}
    gla = model.attention_modules()
    assert len(gla) == 3 and all(isinstance(m, GlobalLearnableAttention) for m in gla)
    assert {k: getattr(gla[0], k) for k in ("chunk_size", "n_rounds", "hidden")} == {
        k: DLSN_COMPACT_OPTIONS["attention_options"][k] for k in ("chunk_size", "n_rounds", "hidden")}
    assert [m.seed for m in gla] == [0, 1, 2]  # seed + i


def test_glaffm_is_lffbs_gla_conv_in_a_scaled_residual():
    """Eq. 7 block: x + res_scale * conv(x' + GLA(x')) with x' the LFFB output."""
    torch.manual_seed(0)
    model = build_model("dlsn", 2, **TINY).eval()
    module = model.body[0]
    assert isinstance(module, GLAFFM) and module.res_scale == 0.1
    lffb, attention, refine = module.body[0], module.body[1], module.body[2]
    assert isinstance(lffb, ResidualBlock) and lffb.res_scale == 1.0 and isinstance(attention, ResidualAttention)
    x = torch.randn(1, 8, 6, 7)
    y = lffb(x)
    expected = x + 0.1 * refine(y + attention.attention(y))
    torch.testing.assert_close(module(x), expected)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_any_size_and_every_attention_slot(scale):
    for attention, options in [("gla", TINY["attention_options"]), ("nlsa", {"chunk_size": 16}), ("none", None)]:
        model = build_model("dlsn", scale, **{**TINY, "attention": attention, "attention_options": options})
        assert model(torch.rand(1, 3, 9, 11)).shape == (1, 3, 9 * scale, 11 * scale)
    none = build_model("dlsn", 2, **{**TINY, "attention": "none", "attention_options": None})
    assert none.attention_modules() == []


def test_details_and_determinism_in_eval_mode():
    model = build_model("dlsn", 2, **TINY).eval()
    lr = torch.rand(1, 3, 8, 9)
    out, details = model(lr, return_details=True)
    assert len(details) == 2 and details[0].codes.shape == (1, 2, 8, 9) and details[0].hashing == "superbit"
    torch.testing.assert_close(out, model(lr), rtol=0, atol=0)


def test_gradients_reach_every_parameter():
    model = build_model("dlsn", 2, **TINY)
    model(torch.rand(2, 3, 8, 8)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bad_options_are_refused_by_name():
    with pytest.raises(ValueError, match="takes no attention_options"):
        DLSN(2, attention="none", attention_options={"chunk_size": 8})
    with pytest.raises(ValueError, match="must not set 'seed'"):
        DLSN(2, attention_options={"seed": 3})
    with pytest.raises(ValueError, match="kind 'cross_scale'"):
        DLSN(2, attention="cross_scale")
    with pytest.raises(ValueError, match="n_modules"):
        DLSN(2, n_modules=0)


def test_checkpoint_round_trip_and_chunk_size_mismatch(tmp_path):
    model = build_model("dlsn", 2, **TINY).eval()
    path = save_checkpoint(tmp_path / "dlsn.pt", checkpoint_payload(model))
    restored = model_from_checkpoint(path, expected_model="dlsn", expected_scale=2)
    lr = torch.rand(1, 3, 10, 10)
    torch.testing.assert_close(restored(lr), model(lr), rtol=0, atol=0)
    other = build_model("dlsn", 2, **{**TINY, "attention_options": {**TINY["attention_options"], "chunk_size": 8}})
    with pytest.raises(ValueError, match="trained with chunk size 16"):
        other.load_state_dict(model.state_dict())
