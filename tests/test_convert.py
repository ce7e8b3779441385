"""``srlib convert``: the authors' released CSNLN / NLSN state dicts -> srlib checkpoints.

The official layouts are written here independently of :mod:`srlib.convert`, key by key
from the official code (CSNLN: SHI-Labs/Cross-Scale-Non-Local-Attention ``src/model/csnln.py``,
``src/model/attention.py``, ``src/model/common.py``; NLSN: HarukiYqM/Non-Local-Sparse-Attention
``src/model/nlsn.py``, ``src/model/attention.py``, ``src/model/common.py``):

* :func:`official_csnln_state` / :func:`official_nlsn_state` rename a random srlib model's
  tensors to the official names (the inverse of the converter), so a round trip must give
  back the same model;
* :func:`official_csnln_forward` / :func:`official_nlsn_forward` run the official network
  from official-named tensors with plain ``torch.nn.functional`` calls, following the
  official forward passes, so that a mapping that swaps two tensors of the same shape
  (query / key embeddings, the strided convolutions of the cell) cannot pass by being
  mirrored in the inverse.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from srlib.attention.cross_scale import cross_scale_attention
from srlib.checkpoint import (
    checkpoint_payload,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from srlib.cli import main
from srlib.convert import (
    OfficialWeightsError,
    convert_official_checkpoint,
    convert_official_csnln,
    convert_official_nlsn,
    read_official_state,
)
from srlib.data import load_image, save_image
from srlib.models import build_model
from srlib.models.csnln import CSNLN_OFFICIAL_OPTIONS
from srlib.models.nlsn import NLSN_OFFICIAL_OPTIONS

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # rgb_mean of the official CSNLN and NLSN
LR = (1, 3, 12, 12)  # 144 LR pixels: the smallest map NLSN's official bucket rule accepts


# --------------------------------------------------------------------------------------------
# The official layouts, from the official code


class _Renamer:
    """Copies srlib tensors under official names and checks every srlib tensor is used exactly once."""

    def __init__(self, model: nn.Module):
        self.source = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.official: dict[str, torch.Tensor] = {}
        self.used: list[str] = []

    def tensor(self, official: str, ours: str) -> None:
        assert official not in self.official, official
        self.official[official] = self.source[ours]
        self.used.append(ours)

    def conv(self, official: str, ours: str) -> None:  # nn.Conv2d / nn.ConvTranspose2d
        self.tensor(f"{official}.weight", f"{ours}.weight")
        self.tensor(f"{official}.bias", f"{ours}.bias")

    def prelu(self, official: str, ours: str) -> None:  # nn.PReLU()
        self.tensor(f"{official}.weight", f"{ours}.weight")

    def mean_shift(self, rgb_range: float) -> None:  # common.MeanShift: 1x1 conv, weight I, bias -/+ range * mean
        mean = torch.tensor(DIV2K_MEAN)
        for name, sign in (("sub_mean", -1), ("add_mean", 1)):
            self.official[f"{name}.weight"] = torch.eye(3).view(3, 3, 1, 1)
            self.official[f"{name}.bias"] = sign * rgb_range * mean

    def done(self, first_conv: str, last_conv: str, rgb_range: float) -> dict[str, torch.Tensor]:
        """The official state dict; for ``rgb_range != 1``, of the network trained on [0, rgb_range] that
        computes the same [0, 1] map (first conv weight / rgb_range, last conv * rgb_range)."""
        assert sorted(self.used) == sorted(self.source), "every srlib tensor must get exactly one official name"
        state = self.official
        state[f"{first_conv}.weight"] = state[f"{first_conv}.weight"] / rgb_range
        state[f"{last_conv}.weight"] = state[f"{last_conv}.weight"] * rgb_range
        state[f"{last_conv}.bias"] = state[f"{last_conv}.bias"] * rgb_range
        return state


def official_csnln_state(model: nn.Module, rgb_range: float = 1) -> dict[str, torch.Tensor]:
    """The official CSNLN ``state_dict`` holding ``model``'s weights (official ``src/model/csnln.py``).

    ``CSNLN``: ``sub_mean``, ``head`` (two ``BasicBlock(conv, PReLU)``), ``SEM``
    (``RecurrentProjection``), ``tail`` (one conv), ``add_mean``.  ``RecurrentProjection``:
    ``multi_source_projection``, ``down_sample_1``, ``down_sample_2`` (not at x4),
    ``error_encode``, ``post_conv``; at x4 also ``multi_source_projection_2``,
    ``down_sample_3``, ``down_sample_4``, ``error_encode_2``.  ``MultisourceProjection``:
    ``up_attention`` (``CrossScaleAttention``: ``conv_match_1``, ``conv_match_2``,
    ``conv_assembly``, buffer ``escape_NaN``), ``down_attention`` (``NonLocalAttention``:
    ``conv_match1``, ``conv_match2``, ``conv_assembly``), ``upsample`` (ConvT, PReLU),
    ``encoder`` (``ResBlock``: ``body`` = conv, PReLU, conv).

    ``rgb_range != 1``: the official network trained on [0, rgb_range] that computes the
    same [0, 1] map (first conv weight / rgb_range, tail * rgb_range).
    """
    scale = model.scale
    n = _Renamer(model)

    def multisource_projection(official: str, stage: int) -> None:
        ours = f"sem.stages.{stage}"
        for theirs, mine in (("conv_match1", "query_embed"), ("conv_match2", "key_embed"),
                             ("conv_assembly", "value_embed")):
            n.conv(f"{official}.down_attention.{theirs}.0", f"{ours}.in_scale_attention.{mine}.0")
            n.prelu(f"{official}.down_attention.{theirs}.1", f"{ours}.in_scale_attention.{mine}.1")
        for theirs, mine in (("conv_match_1", "query_embed"), ("conv_match_2", "key_embed"),
                             ("conv_assembly", "value_embed")):
            n.conv(f"{official}.up_attention.{theirs}.0", f"{ours}.cross_scale_attention.{mine}.0")
            n.prelu(f"{official}.up_attention.{theirs}.1", f"{ours}.cross_scale_attention.{mine}.1")
        n.official[f"{official}.up_attention.escape_NaN"] = torch.tensor([1e-4])
        n.conv(f"{official}.upsample.0", f"{ours}.in_scale_upsample.0")
        n.prelu(f"{official}.upsample.1", f"{ours}.in_scale_upsample.1")
        n.conv(f"{official}.encoder.body.0", f"{ours}.fusion.residual_encoder.body.0")
        n.prelu(f"{official}.encoder.body.1", f"{ours}.fusion.residual_encoder.body.1")
        n.conv(f"{official}.encoder.body.2", f"{ours}.fusion.residual_encoder.body.2")

    def conv_prelu(official: str, ours: str) -> None:  # nn.Sequential(conv or ConvT, PReLU)
        n.conv(f"{official}.0", f"{ours}.0")
        n.prelu(f"{official}.1", f"{ours}.1")

    n.mean_shift(rgb_range)
    n.conv("head.0.0", "head.0")
    n.prelu("head.0.1", "head.1")
    n.conv("head.1.0", "head.2")
    n.prelu("head.1.1", "head.3")
    multisource_projection("SEM.multi_source_projection", 0)
    conv_prelu("SEM.down_sample_1", "sem.stages.0.fusion.downsample")
    conv_prelu("SEM.error_encode", "sem.stages.0.fusion.upsample")
    if scale == 4:
        multisource_projection("SEM.multi_source_projection_2", 1)
        conv_prelu("SEM.down_sample_3", "sem.stages.1.fusion.downsample")
        conv_prelu("SEM.error_encode_2", "sem.stages.1.fusion.upsample")
        conv_prelu("SEM.down_sample_4", "sem.to_lr")
    else:
        conv_prelu("SEM.down_sample_2", "sem.to_lr")
    conv_prelu("SEM.post_conv", "sem.post_conv")
    n.conv("tail.0", "tail")
    return n.done("head.0.0", "tail.0", rgb_range)


def official_nlsn_state(model: nn.Module, rgb_range: float = 1) -> dict[str, torch.Tensor]:
    """The official NLSN ``state_dict`` holding ``model``'s weights (official ``src/model/nlsn.py``).

    ``NLSN``: ``sub_mean``; ``head`` = [conv]; ``body`` = [NLSA] + 32 x [ResBlock, and an
    NLSA after every 8th] + [conv]; ``tail`` = [``Upsampler`` (conv, shuffle[, conv,
    shuffle]), conv]; ``add_mean``.  ``NonLocalSparseAttention``: ``conv_match`` =
    ``BasicBlock(3x3 conv, act=None)``, ``conv_assembly`` = ``BasicBlock(1x1 conv, act=None)``.
    ``ResBlock``: ``body`` = conv, ReLU, conv.
    """
    n = _Renamer(model)
    n.mean_shift(rgb_range)
    n.conv("head.0", "head")
    index = 0

    def nlsa() -> None:
        nonlocal index
        n.conv(f"body.{index}.conv_match.0", f"body.{index}.attention.query_key_embed.0")
        n.conv(f"body.{index}.conv_assembly.0", f"body.{index}.attention.value_embed.0")
        index += 1

    nlsa()
    for i in range(32):
        n.conv(f"body.{index}.body.0", f"body.{index}.conv1")
        n.conv(f"body.{index}.body.2", f"body.{index}.conv2")
        index += 1
        if (i + 1) % 8 == 0:
            nlsa()
    n.conv(f"body.{index}", "body_conv")
    assert index == 37
    n.conv("tail.0.0", "upsampler.0")
    if model.scale == 4:
        n.conv("tail.0.2", "upsampler.2")
    n.conv("tail.1", "tail")
    return n.done("head.0", "tail.1", rgb_range)


# --------------------------------------------------------------------------------------------
# The official forward passes, on official-named tensors


def _conv(s, x, name, stride=1, padding=None):
    weight = s[f"{name}.weight"]
    padding = weight.shape[-1] // 2 if padding is None else padding  # common.default_conv: 'same'
    return F.conv2d(x, weight, s[f"{name}.bias"], stride=stride, padding=padding)


def _deconv(s, x, name, stride, padding):
    return F.conv_transpose2d(x, s[f"{name}.weight"], s[f"{name}.bias"], stride=stride, padding=padding)


def _prelu(s, x, name):
    return F.prelu(x, s[f"{name}.weight"])


def _basic(s, x, name):  # common.BasicBlock(conv, PReLU)
    return _prelu(s, _conv(s, x, f"{name}.0"), f"{name}.1")


def official_csnln_forward(s: dict, lr: torch.Tensor, scale: int, depth: int = 12) -> torch.Tensor:
    """CSNLN.forward of the official ``src/model/csnln.py`` (the attention core of CS-NL from srlib)."""
    stride_pad = {2: (2, 2), 3: (3, 3), 4: (2, 2)}[scale]  # (6,2,2), (9,3,3), and (6,2,2) per x4 stage

    def in_scale(x, name):  # attention.NonLocalAttention
        q, k, v = (_basic(s, x, f"{name}.{m}") for m in ("conv_match1", "conv_match2", "conv_assembly"))
        n, _, h, w = q.shape
        score = torch.softmax(q.flatten(2).transpose(1, 2) @ k.flatten(2), dim=2)  # (N, HW, HW), over keys
        return (score @ v.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)

    def cross_scale(x, name, r):  # attention.CrossScaleAttention: keys embed the bilinear downscale
        q = _basic(s, x, f"{name}.conv_match_1")
        k = _basic(s, F.interpolate(x, scale_factor=1 / r, mode="bilinear", align_corners=False),
                   f"{name}.conv_match_2")
        v = _basic(s, x, f"{name}.conv_assembly")
        return cross_scale_attention(q, k, v, r, patch_size=3, softmax_scale=10, normalization="constant6")

    def multisource(x, name):  # MultisourceProjection
        r = stride_pad[0]
        down_map = _prelu(s, _deconv(s, in_scale(x, f"{name}.down_attention"), f"{name}.upsample.0", *stride_pad),
                          f"{name}.upsample.1")
        up_map = cross_scale(x, f"{name}.up_attention", r)
        diff = up_map - down_map
        err = diff + _conv(s, _prelu(s, _conv(s, diff, f"{name}.encoder.body.0"), f"{name}.encoder.body.1"),
                           f"{name}.encoder.body.2")  # ResBlock, res_scale 1
        return down_map + err

    def down(x, name, stride, padding):
        return _prelu(s, _conv(s, x, f"{name}.0", stride, padding), f"{name}.1")

    def up(x, name, stride, padding):
        return _prelu(s, _deconv(s, x, f"{name}.0", stride, padding), f"{name}.1")

    def sem(x):  # RecurrentProjection
        x_up = multisource(x, "SEM.multi_source_projection")
        h = x_up + up(x - down(x_up, "SEM.down_sample_1", *stride_pad), "SEM.error_encode", *stride_pad)
        if scale == 4:
            x_up = multisource(h, "SEM.multi_source_projection_2")
            h = x_up + up(x - down(x_up, "SEM.down_sample_3", 4, 2), "SEM.error_encode_2", 4, 2)
            lr_next = _basic(s, down(h, "SEM.down_sample_4", 4, 2), "SEM.post_conv")
        else:
            lr_next = _basic(s, down(h, "SEM.down_sample_2", *stride_pad), "SEM.post_conv")
        return lr_next, h

    x = _conv(s, lr, "sub_mean")
    x = _basic(s, _basic(s, x, "head.0"), "head.1")
    bag = []
    for _ in range(depth):
        x, h = sem(x)
        bag.append(h)
    return _conv(s, _conv(s, torch.cat(bag, dim=1), "tail.0"), "add_mean")


def official_nlsn_forward(s: dict, lr: torch.Tensor, scale: int, res_scale: float = 0.1) -> torch.Tensor:
    """NLSN.forward of the official ``src/model/nlsn.py`` for maps of at most 144 LR pixels.

    With ``H*W <= chunk_size`` every hash round holds one chunk, which meets itself (and its
    two cyclic neighbours, the same chunk), so NLSA is dense: ``softmax(q k^T / ||k||) v``,
    keys L2-normalised (eps 5e-5), queries raw, and the rounds average to the same result.
    """
    def nlsa(x, name):  # attention.NonLocalSparseAttention, dense case; output * res_scale + input
        n, _, h, w = x.shape
        q = _conv(s, x, f"{name}.conv_match.0").flatten(2).transpose(1, 2)  # (N, L, C/4)
        v = _conv(s, x, f"{name}.conv_assembly.0").flatten(2).transpose(1, 2)  # (N, L, C)
        score = torch.softmax(q @ F.normalize(q, p=2, dim=-1, eps=5e-5).transpose(1, 2), dim=-1)
        return (score @ v).transpose(1, 2).reshape(n, -1, h, w) * res_scale + x

    assert lr.shape[-2] * lr.shape[-1] <= 144
    x = _conv(s, lr, "sub_mean")
    head = _conv(s, x, "head.0")
    y = head
    for index in range(37):
        if f"body.{index}.conv_match.0.weight" in s:
            y = nlsa(y, f"body.{index}")
        else:  # common.ResBlock(conv, ReLU, conv), res_scale 0.1
            y = y + res_scale * _conv(s, F.relu(_conv(s, y, f"body.{index}.body.0")), f"body.{index}.body.2")
    y = _conv(s, y, "body.37") + head
    if scale == 4:
        y = F.pixel_shuffle(_conv(s, F.pixel_shuffle(_conv(s, y, "tail.0.0"), 2), "tail.0.2"), 2)
    else:
        y = F.pixel_shuffle(_conv(s, y, "tail.0.0"), scale)
    return _conv(s, _conv(s, y, "tail.1"), "add_mean")


# --------------------------------------------------------------------------------------------
# Helpers


def _model(name: str, scale: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    options = CSNLN_OFFICIAL_OPTIONS if name == "csnln" else NLSN_OFFICIAL_OPTIONS
    model = build_model(name, scale, **options).eval()
    with torch.no_grad():  # PReLU slopes away from their 0.25 init, so that swapped slopes would show
        for value in model.state_dict().values():
            if value.numel() == 1:
                value.uniform_(0.05, 0.45)
    return model


def _official_state(name: str, model: nn.Module, **kwargs) -> dict:
    return (official_csnln_state if name == "csnln" else official_nlsn_state)(model, **kwargs)


def _convert(name: str, state: dict, scale=None) -> nn.Module:
    return (convert_official_csnln if name == "csnln" else convert_official_nlsn)(state, scale)


def _lr(seed: int = 1, shape=LR, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _assert_same_model(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --------------------------------------------------------------------------------------------
# Round trips and the official forward passes


@pytest.mark.parametrize("name", ["csnln", "nlsn"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_round_trip_gives_the_same_model_and_outputs(name, scale):
    model = _model(name, scale)
    converted = _convert(name, _official_state(name, model))  # scale inferred from the weights
    assert (converted.model_name, converted.scale, converted.options) == (model.model_name, scale, model.options)
    assert not converted.training
    _assert_same_model(converted, model)
    lr = _lr()
    with torch.no_grad():
        torch.testing.assert_close(converted(lr), model(lr), rtol=0, atol=0)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_csnln_converted_computes_the_official_forward(scale):
    model = _model("csnln", scale).double()
    official = {k: v.double() for k, v in official_csnln_state(model).items()}
    converted = convert_official_csnln(official).double()
    lr = _lr(dtype=torch.float64)
    with torch.no_grad():
        ours, reference = converted(lr), official_csnln_forward(official, lr, scale)
        assert ours.shape == (1, 3, 12 * scale, 12 * scale)
        torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)
        # The reference notices a swap of two same-shaped tensors (so the check above means something).
        for a, b in () if scale != 2 else (("SEM.multi_source_projection.up_attention.conv_match_1.0.weight",
                      "SEM.multi_source_projection.up_attention.conv_match_2.0.weight"),
                     ("SEM.down_sample_1.0.weight", "SEM.error_encode.0.weight")):
            swapped = {**official, a: official[b], b: official[a]}
            assert (official_csnln_forward(swapped, lr, scale) - reference).abs().max() > 1e-6, (a, b)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_nlsn_converted_computes_the_official_forward(scale):
    model = _model("nlsn", scale).double()
    official = {k: v.double() for k, v in official_nlsn_state(model).items()}
    converted = convert_official_nlsn(official, scale).double()
    lr = _lr(dtype=torch.float64)
    with torch.no_grad():
        ours, reference = converted(lr), official_nlsn_forward(official, lr, scale)
        assert ours.shape == (1, 3, 12 * scale, 12 * scale)
        torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)
        if scale != 2:
            return
        swapped = {**official, "body.1.body.0.weight": official["body.1.body.2.weight"],
                   "body.1.body.2.weight": official["body.1.body.0.weight"]}
        assert (official_nlsn_forward(swapped, lr, scale) - reference).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["csnln", "nlsn"])
def test_rgb_range_255_weights_are_folded_into_the_first_and_last_conv(name):
    model = _model(name, 2)
    converted = _convert(name, _official_state(name, model, rgb_range=255))
    lr = _lr()
    with torch.no_grad():
        torch.testing.assert_close(converted(lr), model(lr), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("name", ["csnln", "nlsn"])
def test_missing_official_key_is_named(name):
    model = _model(name, 2)
    state = _official_state(name, model)
    victim = "SEM.multi_source_projection.up_attention.conv_match_2.1.weight" if name == "csnln" \
        else "body.18.conv_assembly.0.bias"
    del state[victim]
    with pytest.raises(OfficialWeightsError, match="missing official keys") as info:
        _convert(name, state)
    assert victim in str(info.value)


@pytest.mark.parametrize("name", ["csnln", "nlsn"])
@pytest.mark.parametrize("extra", ["SEM.extra_attention.weight", "head.0.0.running_mean", "body.40.body.0.weight"])
def test_extra_official_key_is_named(name, extra):
    model = _model(name, 2)
    state = _official_state(name, model)
    state[extra] = torch.zeros(3)
    with pytest.raises(OfficialWeightsError, match="no place in srlib's model") as info:
        _convert(name, state)
    assert extra in str(info.value)


def test_shape_mismatch_is_named():
    state = official_csnln_state(_model("csnln", 2))
    state["tail.0.weight"] = torch.zeros(3, 128 * 6, 3, 3)  # a depth-6 model
    with pytest.raises(OfficialWeightsError, match=r"shape mismatches.*tail\.0\.weight \(3, 768, 3, 3\)"):
        convert_official_csnln(state)
    state = official_nlsn_state(_model("nlsn", 2))
    state["head.0.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(OfficialWeightsError, match=r"head\.0\.weight \(64, 3, 3, 3\) vs head\.weight \(256, 3, 3, 3\)"):
        convert_official_nlsn(state)


@pytest.mark.parametrize("name", ["csnln", "nlsn"])
def test_mean_shift_must_be_the_div2k_one(name):
    state = _official_state(name, _model(name, 2))
    state["sub_mean.bias"] = state["sub_mean.bias"] + 2e-6
    with pytest.raises(OfficialWeightsError, match="sub_mean is not the DIV2K mean shift"):
        _convert(name, state)
    state = _official_state(name, _model(name, 2))
    del state["add_mean.weight"]
    with pytest.raises(OfficialWeightsError, match="missing official keys: add_mean.weight"):
        _convert(name, state)


def test_escape_nan_buffer_is_checked_and_dropped():
    state = official_csnln_state(_model("csnln", 2))
    state["SEM.multi_source_projection.up_attention.escape_NaN"] = torch.tensor([1e-3])
    with pytest.raises(OfficialWeightsError, match="escape_NaN"):
        convert_official_csnln(state)


@pytest.mark.parametrize("name", ["csnln", "nlsn"])
def test_scale_is_checked_against_the_weights(name):
    state = _official_state(name, _model(name, 3))
    with pytest.raises(OfficialWeightsError, match="holds x3 weights, but x2 was requested"):
        _convert(name, state, scale=2)
    assert _convert(name, state, scale=3).scale == 3


def test_the_other_network_is_recognised():
    csnln = official_csnln_state(_model("csnln", 2))
    nlsn = official_nlsn_state(_model("nlsn", 2))
    with pytest.raises(OfficialWeightsError, match="official-csnln"):
        convert_official_nlsn(csnln)
    with pytest.raises(OfficialWeightsError, match="official-nlsn"):
        convert_official_csnln(nlsn)


# --------------------------------------------------------------------------------------------
# Files and the command


@pytest.fixture(scope="module")
def csnln_x2():
    model = _model("csnln", 2)
    return model, official_csnln_state(model)


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "module."])
def test_file_wrappers_are_accepted(tmp_path, csnln_x2, wrap):
    model, state = csnln_x2
    obj = {"raw": state, "state_dict": {"state_dict": state, "epoch": 3}, "model": {"model": state},
           "module.": {f"module.{k}": v for k, v in state.items()}}[wrap]
    source = tmp_path / "model_x2.pt"
    torch.save(obj, source)
    assert set(read_official_state(source)) == set(state)
    report = convert_official_checkpoint("official-csnln", source, tmp_path / "out.pt")
    assert (report["model_name"], report["scale"], report["rgb_range"]) == ("csnln", 2, 1)
    _assert_same_model(model_from_checkpoint(tmp_path / "out.pt"), model)


def test_files_that_are_not_state_dicts_get_clear_errors(tmp_path, csnln_x2):
    whole = tmp_path / "whole_model.pt"
    torch.save(nn.Conv2d(3, 3, 1), whole)
    with pytest.raises(OfficialWeightsError, match=r"refused to load .*torch.save\(model.state_dict\(\)"):
        read_official_state(whole)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(OfficialWeightsError, match="not a PyTorch file"):
        read_official_state(text)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(OfficialWeightsError, match="not a state dict"):
        read_official_state(listed)
    mixed = tmp_path / "mixed.pt"
    torch.save({"head.0.0.weight": torch.zeros(1), "epoch": 3}, mixed)
    with pytest.raises(OfficialWeightsError, match="'epoch' \\(int\\)"):
        read_official_state(mixed)
    ours = tmp_path / "srlib.pt"
    save_checkpoint(ours, checkpoint_payload(csnln_x2[0]))
    with pytest.raises(OfficialWeightsError, match="already an srlib checkpoint"):
        read_official_state(ours)
    with pytest.raises(OfficialWeightsError, match="no file at"):
        read_official_state(tmp_path / "missing.pt")


def test_cli_convert_then_load_and_upscale(tmp_path, csnln_x2, capsys):
    model, state = csnln_x2
    source, out = tmp_path / "model_x2.pt", tmp_path / "csnln_official_x2.pt"
    torch.save(state, source)
    proc = subprocess.run([sys.executable, "-m", "srlib", "convert", "official-csnln", str(source), "-o", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "csnln x2" in proc.stdout and "rgb_range 1" in proc.stdout

    payload = load_checkpoint(out)
    origin = payload["converted_from"]
    assert (origin["file"], origin["layout"], origin["scale"], origin["rgb_range"]) == \
        ("model_x2.pt", "official-csnln", 2, 1)
    assert origin["repository"] == "SHI-Labs/Cross-Scale-Non-Local-Attention"
    assert sorted(origin["dropped"]) == sorted(["sub_mean.weight", "sub_mean.bias", "add_mean.weight",
                                                "add_mean.bias", "SEM.multi_source_projection.up_attention.escape_NaN"])
    assert len(origin["sha256"]) == 64
    loaded = model_from_checkpoint(out, expected_model="csnln", expected_scale=2)
    _assert_same_model(loaded, model)

    image = tmp_path / "lr.png"
    save_image((_lr(shape=(3, 10, 14)) * 255).round().to(torch.uint8), image)
    assert main(["upscale", str(image), "--checkpoint", str(out), "--scale", "2", "-o", str(tmp_path / "sr.png"),
                 "--device", "cpu"]) == 0
    assert load_image(tmp_path / "sr.png").shape == (3, 20, 28)

    capsys.readouterr()
    assert main(["convert", "official-csnln", str(source), "-o", str(out)]) == 2  # no silent overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", "official-nlsn", str(source), "-o", str(tmp_path / "x.pt"), "--scale", "2"]) == 2
    assert "official-csnln" in capsys.readouterr().err
