"""The authors' released weights -> srlib checkpoints (CSNLN and NLSN).

The official repositories publish trained networks as plain PyTorch state dicts
(CSNLN x2/x3/x4: github.com/SHI-Labs/Cross-Scale-Non-Local-Attention; NLSN
x2/x3/x4: github.com/HarukiYqM/Non-Local-Sparse-Attention).  Both codebases
save ``model.state_dict()`` of the bare network (``src/model/__init__.py``,
``Model.save``), so a released file is a flat ``{name: tensor}`` dict.  This
module renames those tensors onto srlib's model built with the released options
(:data:`~srlib.models.csnln.CSNLN_OFFICIAL_OPTIONS`,
:data:`~srlib.models.nlsn.NLSN_OFFICIAL_OPTIONS`), checks every shape, and
writes an srlib checkpoint that ``srlib eval``, ``srlib upscale`` and
:func:`srlib.checkpoint.model_from_checkpoint` load::

    srlib convert official-csnln model_x2.pt -o csnln_official_x2.pt
    srlib convert official-nlsn  model_x4.pt -o nlsn_official_x4.pt [--scale 4]

The mapping is a table of prefix renames (the rest of each key, e.g.
``0.weight``, is kept).  It is complete in both directions: every official
tensor has exactly one place in the srlib model (the frozen constants below
aside), every srlib tensor receives exactly one official tensor, and any key
left over on either side is an error that lists them.

CSNLN (official ``src/model/csnln.py``: ``CSNLN``, ``RecurrentProjection``,
``MultisourceProjection``; ``src/model/attention.py``: ``NonLocalAttention``,
``CrossScaleAttention``; ``src/model/common.py``: ``BasicBlock``, ``ResBlock``,
``MeanShift``).  ``MSP`` is ``SEM.multi_source_projection`` (stage 0 of the
srlib cell) and, at x4 only, ``SEM.multi_source_projection_2`` (stage 1)::

    official key prefix                  srlib key prefix                          what
    head.0.0 / head.0.1                  head.0 / head.1                           conv 3x3 3->F, PReLU
    head.1.0 / head.1.1                  head.2 / head.3                           conv 3x3 F->F, PReLU
    MSP.down_attention.conv_match1       sem.stages.k.in_scale_attention.query_embed   IS-NL theta
    MSP.down_attention.conv_match2       sem.stages.k.in_scale_attention.key_embed     IS-NL delta
    MSP.down_attention.conv_assembly     sem.stages.k.in_scale_attention.value_embed   IS-NL psi
    MSP.upsample                         sem.stages.k.in_scale_upsample            ConvT + PReLU after IS-NL
    MSP.up_attention.conv_match_1        sem.stages.k.cross_scale_attention.query_embed  CS-NL theta (on X)
    MSP.up_attention.conv_match_2        sem.stages.k.cross_scale_attention.key_embed    CS-NL delta (on X down-s)
    MSP.up_attention.conv_assembly       sem.stages.k.cross_scale_attention.value_embed  CS-NL psi (on X)
    MSP.encoder.body                     sem.stages.k.fusion.residual_encoder.body ResBlock on F_C - F_I
    SEM.down_sample_1   (x4 stage 1: SEM.down_sample_3)    sem.stages.k.fusion.downsample   eq. 7
    SEM.error_encode    (x4 stage 1: SEM.error_encode_2)   sem.stages.k.fusion.upsample     eq. 8
    SEM.down_sample_2   (x4: SEM.down_sample_4)            sem.to_lr                 output unit, strided conv
    SEM.post_conv                        sem.post_conv                             output unit, conv + PReLU
    tail.0                               tail                                      conv 3x3 T*F -> 3
    sub_mean, add_mean                   (dropped, checked)                        MeanShift 1x1 convs
    MSP.up_attention.escape_NaN          (dropped, checked = 1e-4)                 key-norm clamp buffer

NLSN (official ``src/model/nlsn.py``: ``NLSN``; ``src/model/attention.py``:
``NonLocalSparseAttention``; ``src/model/common.py``: ``ResBlock``,
``Upsampler``, ``MeanShift``).  The official body is one ``nn.Sequential``: an
NLSA, then 32 ResBlocks with an NLSA after every 8th, then the body conv, i.e.
NLSAs at ``body.0, 9, 18, 27, 36``, ResBlocks at the other indices up to 36
and the conv at ``body.37``; srlib's ``body`` has the same indices up to 36::

    official key prefix                  srlib key prefix                          what
    head.0                               head                                      conv 3x3 3->F
    body.i.conv_match.0   (NLSA i)       body.i.attention.query_key_embed.0        3x3 conv F->F/4
    body.i.conv_assembly.0 (NLSA i)      body.i.attention.value_embed.0            1x1 conv F->F
    body.i.body.0 / body.i.body.2        body.i.conv1 / body.i.conv2               ResBlock convs
    body.37                              body_conv                                 conv before the long skip
    tail.0.0 (x4: and tail.0.2)          upsampler.0 (x4: and upsampler.2)         conv before pixel shuffle
    tail.1                               tail                                      conv 3x3 F->3
    sub_mean, add_mean                   (dropped, checked)                        MeanShift 1x1 convs

Mean shift and ``rgb_range``.  The official ``MeanShift`` is a frozen 1x1 conv
with weight ``I`` and bias ``-/+ rgb_range * (0.4488, 0.4371, 0.4040)``; srlib's
:class:`~srlib.models.blocks.MeanShift` is a non-persistent buffer on [0, 1]
images.  The released models use ``rgb_range 1``: CSNLN's ``src/option.py``
defaults to ``--rgb_range 1`` and its ``src/demo.sh`` does not change it;
NLSN's ``src/option.py`` defaults to 255 but every train and test command of
its ``README.md`` / ``src/demo.sh`` passes ``--rgb_range 1``.  The converter
checks that ``sub_mean`` / ``add_mean`` are ``I`` and ``-/+`` the DIV2K mean
within ``1e-6`` (times ``rgb_range``) and drops them.  Weights trained with the
official code at ``rgb_range 255`` are accepted too: the network is linear in
its input up to the first conv and in its output after the last one, so the
first conv's weight is multiplied by 255 and the tail conv's weight and bias
divided by 255, which gives the same [0, 1] -> [0, 1] map exactly.

What the converted model does not reproduce bit for bit: NLSN's official
hashing draws new random rotations at every forward (two official runs differ
by about 1e-2), srlib's NLSAs hash with fixed seeds; srlib accepts sizes that
the official code rejects (CSNLN: not divisible by the scale; NLSN: under 144
LR pixels).  PSNRs also depend on the tile policy (official ``--chop`` versus
``srlib eval --tile``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from srlib.attention.cross_scale import KEY_NORM_EPS
from srlib.checkpoint import (
    CHECKPOINT_FORMAT,
    checkpoint_payload,
    load_weights_only,
    save_checkpoint,
    state_mismatch,
)
from srlib.models import build_model
from srlib.models.blocks import DIV2K_RGB_MEAN
from srlib.models.csnln import CSNLN_OFFICIAL_OPTIONS
from srlib.models.nlsn import NLSN_OFFICIAL_OPTIONS

__all__ = [
    "OFFICIAL_LAYOUTS",
    "OfficialWeightsError",
    "read_official_state",
    "convert_official_csnln",
    "convert_official_nlsn",
    "convert_official_checkpoint",
]

PathLike = str | os.PathLike

# kind -> (srlib model, official repository, the official file of the network)
OFFICIAL_LAYOUTS = {
    "official-csnln": ("csnln", "SHI-Labs/Cross-Scale-Non-Local-Attention", "src/model/csnln.py"),
    "official-nlsn": ("nlsn", "HarukiYqM/Non-Local-Sparse-Attention", "src/model/nlsn.py"),
}

# rgb_range values the official code is run with (option.py defaults: CSNLN 1, NLSN 255).
_RGB_RANGES = (1, 255)
_MEAN_SHIFT_TOLERANCE = 1e-6  # per unit of rgb_range
_MAX_LISTED = 30  # keys named in one error message


class OfficialWeightsError(ValueError):
    """A file that is not a usable official CSNLN / NLSN state dict (the message says why)."""


def _listed(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


# --------------------------------------------------------------------------------------------
# Reading a state dict


def _state_dict_from(obj, source: str) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` dict inside what ``torch.load`` returned; ``module.`` prefixes removed."""
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        raise OfficialWeightsError(
            f"{source} is already an srlib checkpoint ({obj.get('model_name')} x{obj.get('scale')}); "
            "load it with srlib eval / upscale --checkpoint, there is nothing to convert"
        )
    if isinstance(obj, Mapping):
        for entry in ("state_dict", "model"):  # training-script wrappers: {"state_dict": ...}, {"model": ...}
            if isinstance(obj.get(entry), Mapping):
                obj = obj[entry]
                break
    if not isinstance(obj, Mapping) or not obj:
        what = "an empty dict" if isinstance(obj, Mapping) else f"a {type(obj).__module__}.{type(obj).__name__}"
        raise OfficialWeightsError(
            f"{source} holds {what}, not a state dict ({{name: tensor}}, or a dict with a 'state_dict' or "
            "'model' entry); save the official network with torch.save(model.state_dict(), path)"
        )
    bad = [f"{key!r} ({type(value).__name__})" for key, value in obj.items()
           if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if bad:
        raise OfficialWeightsError(
            f"{source} is not a state dict: these entries are not named tensors: {_listed(bad)}"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = key.removeprefix("module.")  # nn.DataParallel
        if name in state:
            raise OfficialWeightsError(f"{source} holds {name!r} both with and without the 'module.' prefix")
        state[name] = value
    return state


def read_official_state(path: PathLike) -> dict[str, torch.Tensor]:
    """Load an official state dict safely (``torch.load(weights_only=True)``, on the CPU).

    Args:
        path: a ``.pt`` file holding a state dict, or a dict with a
            ``'state_dict'`` or ``'model'`` entry; ``module.`` prefixes
            (``nn.DataParallel``) are removed.

    Returns:
        ``{name: tensor}``.

    Raises:
        OfficialWeightsError: no such file; not a PyTorch file or truncated;
            it holds pickled Python objects (e.g. a whole model saved with
            ``torch.save(model)``), which are refused rather than run; or it
            does not hold a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise OfficialWeightsError(f"no file at {path}: pass the released .pt file (e.g. model_x2.pt)")
    obj = load_weights_only(
        path, "cpu", OfficialWeightsError,
        refused_advice="A whole model saved with torch.save(model) is such a file; re-save only the weights: "
        "torch.save(model.state_dict(), path)",
        damaged_advice="re-download it",
    )
    return _state_dict_from(obj, str(path))


# --------------------------------------------------------------------------------------------
# Key tables (official prefix -> srlib prefix), read from the official files named above


def _csnln_rules(scale: int) -> tuple[list[tuple[str, str]], list[str]]:
    """CSNLN's renames and its dropped buffers, from ``src/model/csnln.py`` of the official code."""
    rules = [
        ("head.0.0.", "head.0."), ("head.0.1.", "head.1."),  # BasicBlock(conv 3->F, PReLU)
        ("head.1.0.", "head.2."), ("head.1.1.", "head.3."),  # BasicBlock(conv F->F, PReLU)
        ("tail.0.", "tail."),
        ("SEM.post_conv.", "sem.post_conv."),
        # the output unit's strided conv: down_sample_2 at x2 / x3, down_sample_4 at x4
        ("SEM.down_sample_4." if scale == 4 else "SEM.down_sample_2.", "sem.to_lr."),
    ]
    # (multi-source projection, back-projection conv, back-projection deconv) of each stage
    stages = [("SEM.multi_source_projection.", "SEM.down_sample_1.", "SEM.error_encode.")]
    if scale == 4:  # two x2 stages; the second projects against the LR input with (8, 4, 2) layers
        stages.append(("SEM.multi_source_projection_2.", "SEM.down_sample_3.", "SEM.error_encode_2."))
    buffers = []
    for k, (msp, down, up) in enumerate(stages):
        ours = f"sem.stages.{k}."
        rules += [
            (msp + "down_attention.conv_match1.", ours + "in_scale_attention.query_embed."),
            (msp + "down_attention.conv_match2.", ours + "in_scale_attention.key_embed."),
            (msp + "down_attention.conv_assembly.", ours + "in_scale_attention.value_embed."),
            (msp + "upsample.", ours + "in_scale_upsample."),
            (msp + "up_attention.conv_match_1.", ours + "cross_scale_attention.query_embed."),
            (msp + "up_attention.conv_match_2.", ours + "cross_scale_attention.key_embed."),
            (msp + "up_attention.conv_assembly.", ours + "cross_scale_attention.value_embed."),
            (msp + "encoder.body.", ours + "fusion.residual_encoder.body."),
            (down, ours + "fusion.downsample."),
            (up, ours + "fusion.upsample."),
        ]
        buffers.append(msp + "up_attention.escape_NaN")
    return rules, buffers


def _nlsn_rules(scale: int) -> list[tuple[str, str]]:
    """NLSN's renames, from ``src/model/nlsn.py`` of the official code (32 blocks, an NLSA every 8)."""
    n_blocks, every = NLSN_OFFICIAL_OPTIONS["n_blocks"], NLSN_OFFICIAL_OPTIONS["attention_every"]
    body = ["nlsa"]  # the official body order: NLSA, then ResBlocks with an NLSA after every 8th
    for block in range(1, n_blocks + 1):
        body.append("res")
        if block % every == 0:
            body.append("nlsa")
    rules = [("head.0.", "head."), ("tail.0.0.", "upsampler.0."), ("tail.1.", "tail.")]
    if scale == 4:  # Upsampler: conv, shuffle, conv, shuffle
        rules.append(("tail.0.2.", "upsampler.2."))
    for index, kind in enumerate(body):  # srlib's body keeps the official indices
        if kind == "nlsa":
            rules += [(f"body.{index}.conv_match.0.", f"body.{index}.attention.query_key_embed.0."),
                      (f"body.{index}.conv_assembly.0.", f"body.{index}.attention.value_embed.0.")]
        else:  # ResBlock body: conv, ReLU, conv
            rules += [(f"body.{index}.body.0.", f"body.{index}.conv1."),
                      (f"body.{index}.body.2.", f"body.{index}.conv2.")]
    rules.append((f"body.{len(body)}.", "body_conv."))  # the conv closing the official body
    return rules


def _rename(key: str, rules: list[tuple[str, str]], to_srlib: bool = True) -> str | None:
    """Apply the one rule whose prefix starts ``key`` (official -> srlib, or back); None when none does."""
    pairs = rules if to_srlib else [(ours, theirs) for theirs, ours in rules]
    hits = [ours + key[len(theirs):] for theirs, ours in pairs if key.startswith(theirs)]
    if len(hits) > 1:  # the tables are prefix-free; this guards edits to them
        raise AssertionError(f"{key!r} matches several prefixes of the key table")
    return hits[0] if hits else None


# --------------------------------------------------------------------------------------------
# Checks of the dropped constants


def _check_mean_shift(state: Mapping[str, torch.Tensor], name: str) -> int:
    """``rgb_range`` (1 or 255) of the official ``MeanShift`` pair; raises when it is not the DIV2K shift."""
    missing = [f"{layer}.{p}" for layer in ("sub_mean", "add_mean") for p in ("weight", "bias")
               if f"{layer}.{p}" not in state]
    if missing:
        raise OfficialWeightsError(f"{name}: missing official keys: {_listed(missing)} (the MeanShift layers)")
    mean = torch.tensor(DIV2K_RGB_MEAN, dtype=torch.float64)
    identity = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)
    found = {}
    for layer, sign in (("sub_mean", -1), ("add_mean", +1)):
        weight, bias = state[f"{layer}.weight"].double(), state[f"{layer}.bias"].double()
        if weight.shape != identity.shape or bias.shape != (3,):
            raise OfficialWeightsError(
                f"{name}: {layer} has shapes {tuple(weight.shape)}, {tuple(bias.shape)}, not the official "
                "MeanShift's (3, 3, 1, 1), (3,)"
            )
        matches = [r for r in _RGB_RANGES
                   if (weight - identity).abs().max() <= _MEAN_SHIFT_TOLERANCE
                   and (bias - sign * r * mean).abs().max() <= _MEAN_SHIFT_TOLERANCE * r]
        if not matches:
            raise OfficialWeightsError(
                f"{name}: {layer} is not the DIV2K mean shift (weight I, bias {sign:+d} * rgb_range * "
                f"{DIV2K_RGB_MEAN} with rgb_range 1 or 255, within 1e-6 per unit); it has bias "
                f"{[round(v, 6) for v in bias.tolist()]}, so the weights were trained with another normalisation"
            )
        found[layer] = matches[0]
    if found["sub_mean"] != found["add_mean"]:
        raise OfficialWeightsError(
            f"{name}: sub_mean uses rgb_range {found['sub_mean']} but add_mean {found['add_mean']}"
        )
    return found["sub_mean"]


def _check_escape_nan(state: Mapping[str, torch.Tensor], key: str, name: str) -> None:
    value = state[key]
    if value.numel() != 1 or abs(float(value.reshape(-1)[0]) - KEY_NORM_EPS) > 1e-3 * KEY_NORM_EPS:
        raise OfficialWeightsError(
            f"{name}: {key} = {value.tolist()} but srlib's cross-scale attention clamps key norms at "
            f"{KEY_NORM_EPS} (the official value)"
        )


# --------------------------------------------------------------------------------------------
# Conversion


def _infer_scale(kind: str, state: Mapping[str, torch.Tensor], scale: int | None, name: str) -> int:
    """The scale the weights were trained for, from the upsampling layers; checked against ``scale``."""
    inferred = None
    if kind == "official-csnln":
        projection = state.get("SEM.down_sample_1.0.weight")
        if any(key.startswith("SEM.multi_source_projection_2.") for key in state):
            inferred = 4  # the x4 cell has a second multi-source projection
        elif projection is not None and projection.dim() == 4:
            inferred = {6: 2, 9: 3}.get(projection.shape[-1])  # (6, 2, 2) at x2, (9, 3, 3) at x3
    else:
        upsampler, last = state.get("tail.0.0.weight"), state.get("tail.1.weight")
        if "tail.0.2.weight" in state:
            inferred = 4  # two x2 sub-pixel stages
        elif upsampler is not None and last is not None and last.dim() == 4 and last.shape[1] > 0:
            ratio, rest = divmod(upsampler.shape[0], last.shape[1])  # the last conv takes the F shuffled maps
            inferred = {4: 2, 9: 3}.get(ratio) if rest == 0 else None  # F * r^2 output channels
    if inferred is None:
        if scale is None:
            raise OfficialWeightsError(
                f"{name}: cannot tell the scale from the upsampling layers; pass --scale 2, 3 or 4"
            )
        return int(scale)
    if scale is not None and int(scale) != inferred:
        raise OfficialWeightsError(
            f"{name} holds x{inferred} weights, but x{scale} was requested; pass --scale {inferred}"
        )
    return inferred


def _check_kind(kind: str, state: Mapping[str, torch.Tensor], name: str) -> None:
    """A clear error when the file holds the other network."""
    looks_csnln = any(key.startswith("SEM.multi_source_projection.") for key in state)
    looks_nlsn = any(key.startswith("body.0.conv_match.") for key in state)
    if kind == "official-csnln" and looks_nlsn and not looks_csnln:
        raise OfficialWeightsError(f"{name} looks like official NLSN weights; use `srlib convert official-nlsn`")
    if kind == "official-nlsn" and looks_csnln and not looks_nlsn:
        raise OfficialWeightsError(f"{name} looks like official CSNLN weights; use `srlib convert official-csnln`")


def _convert(kind: str, state: Mapping[str, torch.Tensor], scale: int | None, name: str) -> tuple[nn.Module, dict]:
    """Build the srlib model and fill it from the official ``state``; returns ``(model, info)``."""
    if kind not in OFFICIAL_LAYOUTS:
        raise ValueError(f"unknown official layout {kind!r}; choose one of {', '.join(OFFICIAL_LAYOUTS)}")
    state = _state_dict_from(state, name)
    _check_kind(kind, state, name)
    scale = _infer_scale(kind, state, scale, name)
    model_name, repository, network_file = OFFICIAL_LAYOUTS[kind]
    if kind == "official-csnln":
        rules, buffers = _csnln_rules(scale)
        options, first_conv = CSNLN_OFFICIAL_OPTIONS, "head.0.weight"
    else:
        rules, buffers = _nlsn_rules(scale), []
        options, first_conv = NLSN_OFFICIAL_OPTIONS, "head.weight"
    label = f"{name} (official {model_name.upper()} x{scale}, {repository} {network_file})"

    rgb_range = _check_mean_shift(state, label)
    dropped = ["sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias"]
    for key in buffers:
        if key in state:  # a persistent buffer of the official CrossScaleAttention
            _check_escape_nan(state, key, label)
            dropped.append(key)

    model = build_model(model_name, scale, **options)
    target = model.state_dict()
    mapped: dict[str, str] = {}  # srlib key -> official key
    unmapped = []
    for key in state:
        if key in dropped:
            continue
        ours = _rename(key, rules)
        if ours is None or ours not in target:
            unmapped.append(key)
        elif ours in mapped:
            raise OfficialWeightsError(f"{label}: {mapped[ours]} and {key} both map to srlib's {ours}")
        else:
            mapped[ours] = key
    # The official tensors under srlib's names; every key is one of target's, so none is unexpected.
    renamed = {ours: state[theirs] for ours, theirs in mapped.items()}
    unfilled, _, wrong_shape = state_mismatch(target, renamed)
    not_float = [mapped[ours] for ours in mapped if not state[mapped[ours]].is_floating_point()]
    if unmapped or unfilled or wrong_shape or not_float:
        parts = []
        if unmapped:
            parts.append(f"official keys with no place in srlib's model: {_listed(unmapped)}")
        if unfilled:
            expected = [f"{_rename(ours, rules, to_srlib=False) or '?'} (for {ours})" for ours in unfilled]
            parts.append(f"missing official keys: {_listed(expected)}")
        if wrong_shape:
            shapes = [f"{mapped[ours]} {tuple(renamed[ours].shape)} vs {ours} {tuple(target[ours].shape)}"
                      for ours in wrong_shape]
            parts.append(f"shape mismatches (official vs srlib): {_listed(shapes)}")
        if not_float:
            parts.append(f"non-float tensors: {_listed(not_float)}")
        raise OfficialWeightsError(
            f"{label} does not have the released layout: {'; '.join(parts)}. Only the released "
            f"configuration converts (srlib options {options})"
        )

    with torch.no_grad():
        for ours, theirs in mapped.items():
            target[ours].copy_(state[theirs])  # cast to the model's float32
        if rgb_range != 1:  # fold the [0, 255] scaling into the first and last convolutions
            target[first_conv].mul_(rgb_range)
            target["tail.weight"].div_(rgb_range)
            target["tail.bias"].div_(rgb_range)
    model.eval()
    info = {
        "layout": kind,
        "repository": repository,
        "network_file": network_file,
        "scale": scale,
        "rgb_range": rgb_range,
        "tensors": len(mapped),
        "dropped": dropped,
    }
    return model, info


def convert_official_csnln(state: Mapping[str, torch.Tensor], scale: int | None = None) -> nn.Module:
    """srlib's CSNLN (:data:`~srlib.models.csnln.CSNLN_OFFICIAL_OPTIONS`) holding an official CSNLN state dict.

    Args:
        state: the official ``state_dict`` (also accepted: a dict with a
            ``'state_dict'`` / ``'model'`` entry; ``module.`` prefixes).
        scale: 2, 3 or 4, or None to read it from the projection layers
            (``SEM.down_sample_1`` is 6x6 at x2, 9x9 at x3; x4 has
            ``SEM.multi_source_projection_2``); a given scale is checked.

    Returns:
        The model in eval mode (built with :func:`srlib.models.build_model`).

    Raises:
        OfficialWeightsError: a key of either side left over (listed), a shape
            mismatch, a mean shift other than the DIV2K one, or a scale that
            contradicts the weights.
    """
    return _convert("official-csnln", state, scale, "the state dict")[0]


def convert_official_nlsn(state: Mapping[str, torch.Tensor], scale: int | None = None) -> nn.Module:
    """srlib's NLSN (:data:`~srlib.models.nlsn.NLSN_OFFICIAL_OPTIONS`) holding an official NLSN state dict.

    Args:
        state: the official ``state_dict`` (or a wrapper dict, see
            :func:`convert_official_csnln`).
        scale: 2, 3 or 4, or None to read it from the upsampler (``tail.0.0``
            has ``4 F`` outputs at x2 and ``9 F`` at x3, ``F`` being the input
            channels of ``tail.1``; x4 has ``tail.0.2``).

    Returns:
        The model in eval mode.

    Raises:
        OfficialWeightsError: as :func:`convert_official_csnln`.
    """
    return _convert("official-nlsn", state, scale, "the state dict")[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_official_checkpoint(kind: str, path: PathLike, out: PathLike, scale: int | None = None) -> dict:
    """Convert a released ``.pt`` file into an srlib checkpoint (``srlib convert``).

    Args:
        kind: ``"official-csnln"`` or ``"official-nlsn"``.
        path: the released state dict (e.g. ``model_x2.pt``).
        out: the srlib checkpoint to write (atomically; parent folders created).
        scale: None to infer it from the weights, or the expected scale.

    Returns:
        ``{"path", "model_name", "scale", "rgb_range", "tensors", "dropped"}``.
        The checkpoint holds the usual entries (:func:`srlib.checkpoint.checkpoint_payload`)
        and ``"converted_from"``: ``{"file", "sha256", "layout", "repository",
        "network_file", "scale", "rgb_range", "tensors", "dropped"}``.

    Raises:
        OfficialWeightsError: the file cannot be read or does not fit (see
            :func:`read_official_state`, :func:`convert_official_csnln`).
        ValueError: an unknown ``kind``.
    """
    if kind not in OFFICIAL_LAYOUTS:
        raise ValueError(f"unknown official layout {kind!r}; choose one of {', '.join(OFFICIAL_LAYOUTS)}")
    path = Path(path)
    state = read_official_state(path)
    model, info = _convert(kind, state, scale, str(path))
    converted_from = {"file": path.name, "sha256": _sha256(path), **info}
    written = save_checkpoint(out, checkpoint_payload(model, converted_from=converted_from))
    return {"path": written, "model_name": model.model_name, "scale": model.scale,
            "rgb_range": info["rgb_range"], "tensors": info["tensors"], "dropped": info["dropped"]}
