"""DLSN: a residual network of GLAFFMs, each local residual blocks + global learnable attention + a conv.

Source: J.-N. Su, M. Gan, G.-Y. Chen, J.-L. Yin, C. L. P. Chen, "Global
Learnable Attention for Single Image Super-Resolution" (DLSN), Sec. 3.1-3.2,
eq. 3-7, Fig. 2.  Official code: ``laoyangui/DLSN`` (``src/model/dlsn.py``).
The attention lives in :mod:`srlib.attention.learnable`
(:class:`~srlib.attention.learnable.GlobalLearnableAttention`); this module
only wires it into the network.

Data flow (shapes for an LR batch ``(N, 3, h, w)``, ``F = n_feats``, ``s = scale``,
``M = n_modules``, ``B = n_blocks``)::

    lr ──subtract DIV2K mean──> head conv 3x3 (3 -> F) ──> F_0                (N, F, h, w)  eq. 3
    body: GLAFFM_1 ... GLAFFM_M, each                                                        eq. 7
              x ──> LFFB_1 ... LFFB_B ──> x + 1.0 * GLA(.) ──> conv 3x3 ──> * res_scale ──(+ x)──>
          ──> body conv 3x3 ──(+ F_0)──> F_M                                  (N, F, h, w)  eq. 4
    F_M ──> Upsampler (conv + pixel shuffle) ──> tail conv 3x3 (F -> 3)                       eq. 5
        ──add DIV2K mean──> sr                                                (N, 3, s*h, s*w)

An LFFB (local features fusion block, Sec. 3.2.1) is a residual block
``x + conv(relu(conv(x)))`` without scaling (the official ``LFFB`` computes a
``res_scale`` and does not use it).  The GLA branch is ``x + attention_res_scale *
GLA(x)`` (:class:`~srlib.models.blocks.ResidualAttention`; 1.0, the official
GLA's own ``res_scale=1`` residual), and each GLAFFM is scaled by ``res_scale``
(0.1 in the official training command) before its identity is added.

Parameters.  With ``E = F // reduction``, ``m`` the chunk size and ``P`` the
learned scorer's outputs (``3m`` in the paper's form, ``m`` in the official
form), ``h`` its hidden units::

    head        27 F + F
    GLAFFM      B * 2 (9 F^2 + F)                         LFFBs
                + 9 F E + E + 2 (9 F^2 + F)               GLA embeddings (query/key, value, learned)
                + F h + h + h P + P                       GLA learned scorer
                + 9 F^2 + F                               refinement conv
    body conv   9 F^2 + F
    upsampler   s^2 (9 F^2 + F) at x2 and x3, 8 (9 F^2 + F) at x4
    tail        27 F + 3

:data:`DLSN_OFFICIAL_OPTIONS` (``F = 256``, ``M = 10``, ``B = 4``, ``E = 64``,
``m = h = P = 128``) gives 69,842,563 parameters at x2: the same count as the
released ``DLSN`` class built with the README's training command, counted from
``src/model/dlsn.py``, ``src/model/attention.py`` and ``src/model/common.py``
of ``laoyangui/DLSN``, less its 1 unused parameter ``a`` and the 24 frozen
weights of its two mean-shift convolutions (here a buffer).
``tests/test_models_dlsn.py`` checks the number.

Paper and official code versus this module:

* **The learned score.**  The official GLA computes ``s_l`` from the keys
  (the transpose of eq. 11); :data:`DLSN_OFFICIAL_OPTIONS` selects that form
  (``learned_score="official"``), the default here is the paper's form.
* **The hash when b > E.**  The official ``orthogonal_`` gives orthonormal
  rows when the bucket count exceeds the 64 query/key channels (at x2 on a
  96x96 HR patch, ``L = 2304`` and ``b = 18 <= 64``; the 128-bucket cap is
  above 64 only on large test images); :data:`DLSN_OFFICIAL_OPTIONS` uses
  ``superbit_mode="official"``, the default here is Ji et al.'s blocks.
* **Randomness.**  Each GLA hashes with its own seed ``seed + i`` (explicit,
  repeatable in eval mode), as in :class:`~srlib.models.nlsn.NLSN`; the
  official code redraws from the global RNG at every forward, test time too.
"""

from __future__ import annotations


import torch
from torch import nn

from srlib.attention._common import positive_int, positive_real
from srlib.models.blocks import (
    DIV2K_RGB_MEAN,
    MeanShift,
    ResidualAttention,
    ResidualBlock,
    Upsampler,
    attention_slot,
    conv3x3,
)
from srlib.models.registry import check_lr_batch, check_scale, register_model

__all__ = ["DLSN", "DLSN_COMPACT_OPTIONS", "DLSN_OFFICIAL_OPTIONS", "DLSN_SCALES", "GLAFFM"]

DLSN_SCALES = (2, 3, 4)

#: The released DLSN (README's training command): 10 GLAFFMs of 4 LFFBs, 256 channels, GLA with
#: 256 // 4 = 64 query/key channels, chunks of 128, 3 hash rounds, the official learned score and hash.
DLSN_OFFICIAL_OPTIONS = {
    "n_feats": 256,
    "n_modules": 10,
    "n_blocks": 4,
    "res_scale": 0.1,
    "attention": "gla",
    "attention_options": {
        "reduction": 4, "chunk_size": 128, "n_rounds": 3, "learned_score": "official",
        "superbit_mode": "official", "round_weighting": "logsumexp",
    },
    "attention_res_scale": 1.0,
}

#: The compact DLSN of the course (about 216 k parameters at x2): 32 channels, 3 GLAFFMs of one LFFB,
#: GLA with 8 query/key channels, chunks of 64, 3 rounds, a 32-unit learned scorer in the paper's form.
DLSN_COMPACT_OPTIONS = {
    "n_feats": 32,
    "n_modules": 3,
    "n_blocks": 1,
    "res_scale": 0.1,
    "attention": "gla",
    "attention_options": {"reduction": 4, "chunk_size": 64, "n_rounds": 3, "hidden": 32},
    "attention_res_scale": 1.0,
}

# The attention kinds a GLAFFM can hold: maps in, maps of the same size out.
_BODY_KINDS = ("in_scale",)


class GLAFFM(nn.Module):
    """Global Learnable Attention-based Features Fusion Module: ``x + res_scale * conv(GLA(LFFBs(x)))`` (eq. 7).

    Args:
        n_feats: channels ``F``.
        n_blocks: LFFBs (residual blocks without scaling) before the attention (>= 0).
        attention: the attention module (kind ``"in_scale"``), or None for no attention (DLSN Table 1, "no GLA").
        res_scale: factor of the module's branch (0.1 in the official command).
        attention_res_scale: factor of the attention inside its residual (1.0, official).

    Layers (checkpoint keys): ``body`` - ``Sequential(ResidualBlock x n_blocks,
    [ResidualAttention], conv 3x3)``.

    Forward ``forward(x, return_details=False)``: ``(N, F, H, W) -> (N, F, H, W)``;
    with ``return_details=True`` also the attention's details (None without attention).
    """

    def __init__(self, n_feats: int, n_blocks: int, attention: nn.Module | None, res_scale: float = 0.1,
                 attention_res_scale: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = [ResidualBlock(n_feats, 1.0) for _ in range(n_blocks)]  # LFFB
        if attention is not None:
            layers.append(ResidualAttention(attention, attention_res_scale))
        layers.append(conv3x3(n_feats, n_feats))  # feature refinement conv
        self.body = nn.Sequential(*layers)
        self.res_scale = float(res_scale)

    def forward(self, x: torch.Tensor, return_details: bool = False):
        y, details = x, None
        for layer in self.body:
            if return_details and isinstance(layer, ResidualAttention):
                y, details = layer(y, return_details=True)  # (N, F, H, W)
            else:
                y = layer(y)  # (N, F, H, W)
        out = x + self.res_scale * y  # (N, F, H, W), eq. 7's residual
        return (out, details) if return_details else out

    def extra_repr(self) -> str:
        return f"res_scale={self.res_scale}"


@register_model(
    "dlsn",
    presets={
        # The compact model: its GLA options are the class default (attention_options=None), so that
        # --option attention=none (no GLA) needs no other change.
        "quick": {"model_options": {"n_feats": 32, "n_modules": 3, "n_blocks": 1}},
        "full": {"model_options": {
            "n_feats": 64, "n_modules": 6, "n_blocks": 4,
            "attention_options": {"chunk_size": 128, "n_rounds": 3, "hidden": 64},
        }},
        "smoke": {
            "model_options": {"n_feats": 8, "n_modules": 1, "n_blocks": 1,
                              "attention_options": {"reduction": 2, "chunk_size": 16, "n_rounds": 2, "hidden": 8}},
            "final_sets": ["Set5"],
        },
    },
)
class DLSN(nn.Module):
    """Deep Learnable Similarity Network: head conv, GLAFFMs, body conv, long skip, pixel-shuffle up-sampler.

    Args:
        scale: 2, 3 or 4.
        n_feats: channels ``F`` (256 in DLSN; 32 here).
        n_modules: GLAFFMs ``M`` (10 in DLSN; 3 here).
        n_blocks: LFFBs per GLAFFM ``B`` (4 in DLSN; 1 here).
        res_scale: factor of each GLAFFM's branch (0.1, official command).
        attention: the registered attention of every GLAFFM, any of kind
            ``"in_scale"``: ``"gla"`` (default), ``"nlsa"``, ...; or ``"none"``
            (DLSN Table 1's column without GLA).
        attention_options: its options.  None: for ``"gla"`` the compact
            model's (:data:`DLSN_COMPACT_OPTIONS`: chunk 64, 3 rounds, a 32-unit
            scorer in the paper's form), for another attention its defaults.
            ``seed`` is set by the model.
        attention_res_scale: factor inside the attention's residual (1.0, official).
        seed: integer in ``[0, 2**63 - 1024)``; the ``i``-th attention (from 0)
            hashes with seed ``seed + i`` when it takes a seed.

    Layers (checkpoint keys): ``head``, ``body`` (``nn.Sequential`` of the
    GLAFFMs, ``body.<i>.body.<B>.attention`` the ``i``-th GLA), ``body_conv``,
    ``upsampler``, ``tail``; ``sub_mean`` / ``add_mean`` hold no weights.

    Forward ``forward(lr, return_details=False)``: float32 RGB in [0, 1]
    ``(N, 3, h, w)``, any ``h, w >= 1`` -> ``(N, 3, s*h, s*w)``, not clamped; with
    ``return_details=True`` also the list of each attention's details.

    Raises:
        ValueError: unsupported scale or option values (the message names the
            option); an attention not registered or not of kind ``"in_scale"``;
            input that is not ``(N, 3, h, w)`` float with finite pixels (forward).
        TypeError: attention options the attention does not take.

    Source: DLSN eq. 3-7 and Fig. 2; layer layout from the official ``DLSN`` class.
    """

    def __init__(
        self,
        scale: int,
        n_feats: int = 32,
        n_modules: int = 3,
        n_blocks: int = 1,
        res_scale: float = 0.1,
        attention: str = "gla",
        attention_options: dict | None = None,
        attention_res_scale: float = 1.0,
        seed: int = 0,
    ):
        super().__init__()
        check_scale("dlsn", scale, DLSN_SCALES)
        n_feats = positive_int("n_feats", n_feats, 1)
        n_modules = positive_int("n_modules", n_modules, 1)
        n_blocks = positive_int("n_blocks", n_blocks, 0)
        res_scale = positive_real("res_scale", res_scale, "0.1 in DLSN")
        attention_res_scale = positive_real("attention_res_scale", attention_res_scale, "1.0 in DLSN")
        if attention_options is None and attention == "gla":
            attention_options = DLSN_COMPACT_OPTIONS["attention_options"]
        build = attention_slot(attention, attention_options, n_feats, seed, _BODY_KINDS)
        self.scale = scale

        self.sub_mean = MeanShift(DIV2K_RGB_MEAN, sign=-1)
        self.head = conv3x3(3, n_feats)
        self.body = nn.Sequential(*[
            GLAFFM(n_feats, n_blocks, build(i) if build else None, res_scale, attention_res_scale)
            for i in range(n_modules)
        ])
        self.body_conv = conv3x3(n_feats, n_feats)
        self.upsampler = Upsampler(n_feats, scale)
        self.tail = conv3x3(n_feats, 3)
        self.add_mean = MeanShift(DIV2K_RGB_MEAN, sign=+1)

    def attention_modules(self) -> list[nn.Module]:
        """The attention modules in body order (one per GLAFFM; none for ``attention="none"``)."""
        return [layer.attention for module in self.body for layer in module.body if isinstance(layer, ResidualAttention)]

    def reset_attention_generators(self) -> None:
        """Re-seed every attention's training-mode generator with its seed, replaying the hash draws."""
        for module in self.attention_modules():
            if hasattr(module, "reset_generator"):
                module.reset_generator()

    def forward(self, lr: torch.Tensor, return_details: bool = False):
        check_lr_batch(lr)
        shallow = self.head(self.sub_mean(lr))  # (N, F, h, w), F_0 of eq. 3
        x, details = shallow, []
        for module in self.body:
            if return_details:
                x, module_details = module(x, return_details=True)  # (N, F, h, w)
                if module_details is not None:
                    details.append(module_details)
            else:
                x = module(x)  # (N, F, h, w), eq. 7
        features = self.body_conv(x) + shallow  # (N, F, h, w), F_M of eq. 4 with the long skip
        sr = self.add_mean(self.tail(self.upsampler(features)))  # (N, 3, s*h, s*w), eq. 5
        return (sr, details) if return_details else sr
