"""CSNLN: a recurrent SR network whose cell mines local, in-scale and cross-scale self-exemplars.

Source: Y. Mei, Y. Fan, Y. Zhou, L. Huang, T. S. Huang and H. Shi, "Image
Super-Resolution with Cross-Scale Non-Local Attention and Exhaustive
Self-Exemplars Mining", CVPR 2020 (Sec. 4, Fig. 3-4, eq. 5-8) and its
supplementary file (Table 1).  Official code:
github.com/SHI-Labs/Cross-Scale-Non-Local-Attention.  The attention itself lives
in :mod:`srlib.attention` (:class:`~srlib.attention.NonLocalAttention`,
:class:`~srlib.attention.RegionNonLocalAttention`,
:class:`~srlib.attention.CrossScaleAttention`); this module only wires it up.

Data flow (shapes for an LR batch ``(N, 3, h, w)``, ``F = n_feats``, ``s = scale``,
``T = depth``)::

    lr ──subtract DIV2K mean──> head (2 x [conv 3x3 + PReLU]) ──> L_0            (N, F, h, w)
    for t = 1 .. T, with ONE SelfExemplarsMiningCell (weights shared over t):
        H_t     = sem(L_{t-1})                     hidden unit, HR features   (N, F, s*h, s*w)
        L_t     = sem.output_unit(H_t)             output unit, back to LR    (N, F, h, w)
    concat(H_1, ..., H_T) ──> tail conv 3x3 (T*F -> 3) ──add DIV2K mean──> sr (N, 3, s*h, s*w)

Inside the cell (one stage for x2 and x3)::

    x = L_{t-1}                                                              (N, F, h, w)
    F_L = x                                              local branch, identity
    F_I = PReLU(ConvT(IS-NL(x)))                         in-scale branch      (N, F, s*h, s*w)
    F_C = CS-NL(x)                                       cross-scale branch   (N, F, s*h, s*w)
    H   = MutualProjectedFusion(F_L, F_I, F_C)           eq. 5-8              (N, F, s*h, s*w)
    L_t = PReLU(conv 3x3(PReLU(strided conv(H))))        the "two-layer CNN"  (N, F, h, w)

The strided convolutions and deconvolutions use ``(kernel, stride, padding)`` =
``(6, 2, 2)`` at x2, ``(9, 3, 3)`` at x3 and ``(8, 4, 2)`` at x4 (paper Sec. 5.2);
each maps ``h`` exactly to ``s*h`` and back for every ``h``, and the attention
modules pad internally, so any LR size works (e.g. 7x9 at x3).

x4 (option ``x4_stages``):

* ``x4_stages=1`` (default here): one stage, CS-NL at scale 4 and an ``(8, 4, 2)``
  deconvolution after the IS-NL; every projection is 8x8 as the paper's Sec. 5.2
  says.  All attention runs on the LR map, so a 48x48 training patch costs
  ``48^4`` in-scale scores per image and recurrence; this keeps the compact
  default trainable on a CPU.
* ``x4_stages=2`` (the official code): two x2 stages.  Stage 1 is the x2 stage
  (``(6, 2, 2)`` layers, CS-NL at scale 2) giving ``H'`` at 2x; stage 2 runs IS-NL
  and CS-NL (scale 2) again on ``H'`` and projects against the LR input with
  ``(8, 4, 2)`` layers: ``H = fusion_2(x, F_I(H'), F_C(H'))``.  The output unit
  uses an ``(8, 4, 2)`` strided conv.  Its stage-2 in-scale attention sees a
  ``2h x 2w`` map, i.e. 16 times the scores of the LR map (about 11 GB of
  scores and weights for a batch of 16 48x48 patches, per recurrence).

Paper versus official code, and what is done here:

* Fusion eq. 6 says ``F_IC = conv(F_I - F_C) + F_I``; the code uses a residual
  block, ``F_IC = F_I + ResBlock(F_C - F_I)`` with ``ResBlock(r) = r +
  conv(PReLU(conv(r)))`` - followed here.  (Because the block carries its own
  skip, this equals ``F_C + conv(PReLU(conv(F_C - F_I)))``.)
* The paper's IS-NL is region-based; the code's is global.  Both are offered
  (``in_scale="global"`` default, ``"region"`` with a ``regions x regions`` grid).
* The code's CS-NL divides overlapping patches by 6; ``normalization="overlap"``
  (default) divides by the true count, ``"constant6"`` reproduces the code.
* The code computes the output unit ``L_T`` of the last recurrence and
  discards it; here it is skipped (same output, slightly fewer FLOPs).

Cost.  The CS-NL aggregation pastes a ``(sp) x (sp) x F`` value patch for every
(query, key) pair, ``O((h w)^2 F p^2)`` multiply-adds: with the defaults at x2 it
is about 15 of the 20 GFLOPs of a 48x48 LR input (``cross_scale="naive"``: 6.8,
``"none"``: 4.9; see :func:`srlib.models.count_flops`).

Official size (128 channels, 12 recurrences, x2): 3,061,265 parameters, i.e. the
"3M" of the paper's Table 2 - build it with ``build_model("csnln", 2,
**CSNLN_OFFICIAL_OPTIONS)``.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from srlib.attention import (
    NORMALIZATIONS,
    CrossScaleAttention,
    NonLocalAttention,
    RegionNonLocalAttention,
    bilinear_downscale,
    naive_cross_scale_attention,
)
from srlib.models.edsr import DIV2K_RGB_MEAN, MeanShift
from srlib.models.registry import check_lr_batch, check_scale, register_model

__all__ = [
    "CSNLN",
    "CSNLN_SCALES",
    "CSNLN_OFFICIAL_OPTIONS",
    "PROJECTION_LAYERS",
    "IN_SCALE_KINDS",
    "CROSS_SCALE_KINDS",
    "NaiveCrossScaleAttention",
    "MutualProjectedFusion",
    "SEMStage",
    "SelfExemplarsMiningCell",
]

CSNLN_SCALES = (2, 3, 4)

# (kernel, stride, padding) of the strided (de)convolutions that move between LR and s x LR
# (paper Sec. 5.2: 6x6, 9x9 and 8x8 filters for x2, x3, x4; strides and paddings from the
# official code).  ConvTranspose2d: (h - 1) * stride - 2 * padding + kernel = s * h for every h.
PROJECTION_LAYERS = {2: (6, 2, 2), 3: (9, 3, 3), 4: (8, 4, 2)}

# Choices of the ``in_scale`` and ``cross_scale`` options (see :class:`CSNLN`).
IN_SCALE_KINDS = ("global", "region")
CROSS_SCALE_KINDS = ("proposed", "naive", "in_scale", "none")

# The released model (official code's defaults, attention as released).  x4_stages=2 and
# normalization="constant6" reproduce the code; the paper's text would give "region" IS-NL.
CSNLN_OFFICIAL_OPTIONS = dict(
    n_feats=128,
    depth=12,
    reduction=2,
    patch_size=3,
    softmax_scale=10.0,
    in_scale="global",
    cross_scale="proposed",
    normalization="constant6",
    x4_stages=2,
)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """3x3 convolution with stride 1 and zero padding 1, so H and W are kept."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)


def downprojection(n_feats: int, factor: int) -> nn.Sequential:
    """Strided convolution + PReLU: ``(N, F, factor*H, factor*W)`` -> ``(N, F, H, W)``."""
    kernel, stride, padding = PROJECTION_LAYERS[factor]
    return nn.Sequential(nn.Conv2d(n_feats, n_feats, kernel, stride=stride, padding=padding), nn.PReLU())


def upprojection(n_feats: int, factor: int) -> nn.Sequential:
    """Strided deconvolution + PReLU: ``(N, F, H, W)`` -> ``(N, F, factor*H, factor*W)``."""
    kernel, stride, padding = PROJECTION_LAYERS[factor]
    return nn.Sequential(
        nn.ConvTranspose2d(n_feats, n_feats, kernel, stride=stride, padding=padding), nn.PReLU()
    )


class _ResidualEncoder(nn.Module):
    """``r + conv(PReLU(conv(r)))``, the residual block the official fusion applies to ``F_C - F_I``."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.body = nn.Sequential(conv3x3(n_feats, n_feats), nn.PReLU(), conv3x3(n_feats, n_feats))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r + self.body(r)  # (N, F, H, W)


class NaiveCrossScaleAttention(CrossScaleAttention):
    """Naive cross-scale attention (supplement eq. 2) with the embeddings of :class:`CrossScaleAttention`.

    ``Z[i,j] = sum_{g,h} softmax_{g,h}(phi(X[i,j], Y[g,h])) psi(Y[g,h])`` with
    ``Y = bilinear_downscale(X, s)``: keys *and values* come from the downscaled
    map, so the output keeps the query's resolution ``(N, C, H, W)`` and no HR
    detail can come back.  The attention is
    :func:`srlib.attention.naive_cross_scale_attention`; this class only adds
    the three 1x1-conv + PReLU embeddings, inherited from
    :class:`~srlib.attention.CrossScaleAttention` so that both have exactly the
    same layers and parameter count (``patch_size`` and ``normalization`` are
    not used: the naive version matches pixels and pastes nothing).

    Args:
        channels, scale, reduction, softmax_scale, pad_mode, max_attention_bytes:
            as in :class:`~srlib.attention.CrossScaleAttention`.

    Forward:
        ``x`` float ``(N, C, H, W)`` -> ``(N, C, H, W)`` (any ``H, W >= 1``).

    Raises:
        ValueError: bad options, or ``x`` not ``(N, channels, H, W)``.
        AttentionMemoryError: the ``(N, ceil(H/s) ceil(W/s), H, W)`` scores would
            exceed the memory limit.

    Source: Mei et al., CVPR 2020, supplementary file, eq. 2 and Table 1.
    """

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        reduction: int = 2,
        softmax_scale: float = 10.0,
        pad_mode: str = "replicate",
        max_attention_bytes: float | None = None,
    ):
        super().__init__(
            channels, scale, patch_size=1, reduction=reduction, softmax_scale=softmax_scale,
            pad_mode=pad_mode, max_attention_bytes=max_attention_bytes,
        )

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"NaiveCrossScaleAttention expects a (N, {self.channels}, H, W) map, got {shape}")
        small = bilinear_downscale(x, self.scale, self.pad_mode)  # (N, C, ceil(H/s), ceil(W/s)), Y
        return naive_cross_scale_attention(
            self.query_embed(x),  # (N, C', H, W), theta(X)
            self.key_embed(small),  # (N, C', h, w), delta(Y)
            self.value_embed(small),  # (N, C, h, w), psi(Y)
            self.softmax_scale, return_attention, max_attention_bytes=self.max_attention_bytes,
        )  # (N, C, H, W)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, scale={self.scale}, reduction={self.reduction}, "
            f"softmax_scale={self.softmax_scale}, pad_mode={self.pad_mode!r}"
        )


class MutualProjectedFusion(nn.Module):
    """Mutual-projected fusion of the local, in-scale and cross-scale features (paper eq. 5-8, Fig. 4).

    ::

        R_IC = F_I - F_C                    (5)   inter-branch residual
        F_IC = conv(R_IC) + F_I             (6)   here, as the official code:
                                                  F_IC = F_I + ResBlock(F_C - F_I)
        e    = F_L - downsample(F_IC)       (7)   back-projection error at LR
        H    = upsample(e) + F_IC           (8)

    ``downsample`` is a strided convolution + PReLU and ``upsample`` a strided
    deconvolution + PReLU (:data:`PROJECTION_LAYERS`).  Eq. 7-8 are DBPN's
    back-projection: the HR estimate is corrected by how badly it explains the
    LR features ``F_L``.

    Args:
        n_feats: channels ``F`` of every input and of the output.
        scale: ``S``, the size ratio between the HR features and ``F_L``
            (2, 3 or 4; 4 uses the ``(8, 4, 2)`` layers).
        fuse_cross_scale: with False there is no cross-scale input: eq. 5-6
            are skipped (``F_IC = F_I``) and the residual block is not built
            (the "L + IS-NL" column of the paper's Table 3).

    Layers (checkpoint keys): ``residual_encoder`` (the conv of eq. 6; None
    without the cross-scale input), ``downsample`` (eq. 7), ``upsample`` (eq. 8).

    Forward ``forward(local, in_scale, cross_scale=None)``:
        ``local`` ``F_L`` ``(N, F, h, w)``; ``in_scale`` ``F_I`` and
        ``cross_scale`` ``F_C`` ``(N, F, S*h, S*w)`` -> ``H`` ``(N, F, S*h, S*w)``.

    Raises:
        ValueError: unsupported ``scale`` (construction); ``cross_scale`` given
            when the module was built without it, or missing when built with it.

    Source: Mei et al., CVPR 2020, Sec. 4.2, eq. 5-8, Fig. 4; residual block from
    the official code.
    """

    def __init__(self, n_feats: int, scale: int, fuse_cross_scale: bool = True):
        super().__init__()
        check_scale("MutualProjectedFusion", scale, CSNLN_SCALES)
        self.scale = scale
        self.fuse_cross_scale = bool(fuse_cross_scale)
        self.residual_encoder = _ResidualEncoder(n_feats) if self.fuse_cross_scale else None
        self.downsample = downprojection(n_feats, scale)
        self.upsample = upprojection(n_feats, scale)

    def forward(
        self, local: torch.Tensor, in_scale: torch.Tensor, cross_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        if (cross_scale is not None) != self.fuse_cross_scale:
            state = "with" if self.fuse_cross_scale else "without"
            raise ValueError(f"this fusion was built {state} a cross-scale input; pass cross_scale accordingly")
        if self.residual_encoder is None:
            fused = in_scale  # (N, F, S*h, S*w), F_IC = F_I
        else:
            fused = in_scale + self.residual_encoder(cross_scale - in_scale)  # (N, F, S*h, S*w), eq. 5-6
        error = local - self.downsample(fused)  # (N, F, h, w), eq. 7
        return self.upsample(error) + fused  # (N, F, S*h, S*w), eq. 8

    def extra_repr(self) -> str:
        return f"scale={self.scale}, fuse_cross_scale={self.fuse_cross_scale}"


class SEMStage(nn.Module):
    """One upscaling stage of the SEM cell: the three branches on ``features``, fused against ``local``.

    ::

        F_I = PReLU(ConvT_r(IS-NL(features)))   in-scale branch + deconvolution   (N, F, r*H, r*W)
        F_C = CS-NL_r(features)                 cross-scale branch                (N, F, r*H, r*W)
        H   = fusion_S(local, F_I, F_C)         eq. 5-8                           (N, F, S*h, S*w)

    ``features`` is the LR input itself (x2, x3, one-stage x4: ``r = S = s``) or
    the x2 result of the first stage (second stage of the official x4: ``r = 2``,
    ``S = 4``); ``local`` (``F_L``) is always the LR input of the cell.

    Args:
        n_feats: channels ``F``.
        factor: ``r``, the upscaling of this stage's branches.
        scale: ``S``, the size of the stage output relative to ``local``.
        reduction: query/key channels ``F // reduction`` in both attentions.
        patch_size, softmax_scale, normalization: of the CS-NL (eq. 4).
        in_scale: ``"global"`` (:class:`~srlib.attention.NonLocalAttention`) or
            ``"region"`` (:class:`~srlib.attention.RegionNonLocalAttention`).
        regions: the region grid is ``regions x regions`` (``in_scale="region"``).
        cross_scale: the attention in the third branch, see :class:`CSNLN`.

    Layers (checkpoint keys): ``in_scale_attention``, ``in_scale_upsample``,
    ``cross_scale_attention`` (absent with ``cross_scale="none"``),
    ``cross_scale_upsample`` (nearest upsampling for the LR-output variants,
    identity otherwise; no weights), ``fusion``.

    Forward ``forward(local, features)``: ``(N, F, h, w)`` and
    ``(N, F, H, W)`` with ``r*H = S*h`` -> ``(N, F, S*h, S*w)``.
    """

    def __init__(
        self,
        n_feats: int,
        factor: int,
        scale: int,
        reduction: int,
        patch_size: int,
        softmax_scale: float,
        normalization: str,
        in_scale: str,
        regions: int,
        cross_scale: str,
    ):
        super().__init__()
        embed_channels = n_feats // reduction
        self.in_scale_attention = _in_scale_attention(n_feats, embed_channels, in_scale, regions)
        self.in_scale_upsample = upprojection(n_feats, factor)
        if cross_scale == "proposed":  # paper eq. 4 (eq. 3 with patch_size=1): output already r times larger
            self.cross_scale_attention: nn.Module | None = CrossScaleAttention(
                n_feats, factor, patch_size=patch_size, reduction=reduction,
                softmax_scale=softmax_scale, normalization=normalization,
            )
            self.cross_scale_upsample: nn.Module = nn.Identity()
        elif cross_scale == "naive":  # supplement eq. 2: LR output, each value fills its r x r block
            self.cross_scale_attention = NaiveCrossScaleAttention(
                n_feats, factor, reduction=reduction, softmax_scale=softmax_scale
            )
            self.cross_scale_upsample = nn.Upsample(scale_factor=factor, mode="nearest")
        elif cross_scale == "in_scale":  # supplement eq. 1 in the same slot: LR output, same budget
            self.cross_scale_attention = _in_scale_attention(n_feats, embed_channels, in_scale, regions)
            self.cross_scale_upsample = nn.Upsample(scale_factor=factor, mode="nearest")
        else:  # "none": two branches only
            self.cross_scale_attention = None
            self.cross_scale_upsample = nn.Identity()
        self.fusion = MutualProjectedFusion(n_feats, scale, fuse_cross_scale=self.cross_scale_attention is not None)

    def forward(self, local: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        in_scale = self.in_scale_upsample(self.in_scale_attention(features))  # (N, F, rH, rW), F_I
        cross_scale = None
        if self.cross_scale_attention is not None:
            cross_scale = self.cross_scale_upsample(self.cross_scale_attention(features))  # (N, F, rH, rW), F_C
        return self.fusion(local, in_scale, cross_scale)  # (N, F, S*h, S*w), H


def _in_scale_attention(n_feats: int, embed_channels: int, kind: str, regions: int) -> nn.Module:
    """IS-NL with CSNLN's embeddings (1x1 conv + PReLU; ``F -> F//reduction`` for theta/delta, ``F -> F`` for psi)."""
    if kind == "region":
        return RegionNonLocalAttention(n_feats, embed_channels=embed_channels, regions=(regions, regions))
    return NonLocalAttention(n_feats, embed_channels=embed_channels)


class SelfExemplarsMiningCell(nn.Module):
    """The Self-Exemplars Mining (SEM) cell: local, IS-NL and CS-NL branches fused by mutual projection.

    Branches (paper Sec. 4.2, Fig. 3): the *local* branch is the identity
    ``F_L = x``; the *in-scale* branch is a non-local attention
    (:class:`~srlib.attention.NonLocalAttention` or its region-based version)
    followed by a deconvolution to ``s`` times the size; the *cross-scale*
    branch is :class:`~srlib.attention.CrossScaleAttention`, whose output is
    already ``s`` times larger.  :class:`MutualProjectedFusion` (eq. 5-8) turns
    them into the hidden unit ``H``; :meth:`output_unit` maps ``H`` back to an LR
    map for the next recurrence with "a two-layer CNN" (strided conv + PReLU,
    conv 3x3 + PReLU).  See the module docstring for x4 (``x4_stages``).

    Args:
        n_feats: channels ``F``.
        scale: ``s``, 2, 3 or 4.
        reduction, patch_size, softmax_scale, normalization, in_scale, regions,
        cross_scale, x4_stages: see :class:`CSNLN`.

    Layers (checkpoint keys): ``stages`` (``nn.ModuleList`` of
    :class:`SEMStage`: one, or two for ``x4_stages=2``), ``to_lr`` (strided conv
    + PReLU), ``post_conv`` (conv 3x3 + PReLU).

    Forward:
        ``x`` ``(N, F, h, w)`` -> hidden unit ``H`` ``(N, F, s*h, s*w)``;
        ``output_unit(H)`` -> ``(N, F, h, w)``.

    Raises:
        ValueError: unsupported scale or option values (construction).

    Source: Mei et al., CVPR 2020, Sec. 4.2-4.3, Fig. 3; layer sizes from Sec. 5.2
    and the official code (``RecurrentProjection``).
    """

    def __init__(
        self,
        n_feats: int,
        scale: int,
        reduction: int = 2,
        patch_size: int = 3,
        softmax_scale: float = 10.0,
        normalization: str = "overlap",
        in_scale: str = "global",
        regions: int = 2,
        cross_scale: str = "proposed",
        x4_stages: int = 1,
    ):
        super().__init__()
        check_scale("SelfExemplarsMiningCell", scale, CSNLN_SCALES)
        # (factor r of the branches, scale S of the stage output w.r.t. the cell input)
        plan = [(2, 2), (2, 4)] if scale == 4 and x4_stages == 2 else [(scale, scale)]
        self.scale = scale
        self.stages = nn.ModuleList(
            SEMStage(n_feats, factor, total, reduction, patch_size, softmax_scale, normalization,
                     in_scale, regions, cross_scale)
            for factor, total in plan
        )
        self.to_lr = downprojection(n_feats, scale)
        self.post_conv = nn.Sequential(conv3x3(n_feats, n_feats), nn.PReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = x  # (N, F, h, w)
        for stage in self.stages:
            hidden = stage(x, hidden)  # (N, F, S*h, S*w); F_L is always the cell input x
        return hidden  # (N, F, s*h, s*w), H

    def output_unit(self, hidden: torch.Tensor) -> torch.Tensor:
        """The next recurrence's input ``L_t``: ``(N, F, s*h, s*w)`` -> ``(N, F, h, w)``."""
        return self.post_conv(self.to_lr(hidden))  # (N, F, h, w)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


@register_model("csnln")  # the class is its own builder: its __init__ options are the registry options
class CSNLN(nn.Module):
    """Cross-Scale Non-Local Network: head, one SEM cell applied ``depth`` times, concatenated hidden units -> RGB.

    Args:
        scale: 2, 3 or 4.
        n_feats: feature channels ``F`` (128 in the paper; 32 by default here).
        depth: ``T``, recurrences of the SEM cell (12 in the paper; 4 here).  The
            cell's weights are shared across recurrences, so ``T`` changes only
            the tail: ``9 * T * F * 3 + 3`` parameters.
        reduction: query/key embeddings have ``F // reduction`` channels (2).
        patch_size: ``p`` of the CS-NL matching, odd (3; 1 gives paper eq. 3).
        softmax_scale: CS-NL softmax temperature (10).
        in_scale: ``"global"`` IS-NL over the whole map (official code) or
            ``"region"`` inside each cell of a ``regions x regions`` grid (paper
            text); ``"region"`` needs LR maps of at least ``regions`` pixels per side.
        regions: grid size for ``in_scale="region"`` (2: a 2x2 grid).
        cross_scale: the attention of the third branch, for the supplement's
            Table 1 ablation:

            * ``"proposed"`` - cross-scale attention, paper eq. 4 (eq. 3 with
              ``patch_size=1``; supplement eq. 3);
            * ``"naive"`` - naive cross-scale attention, supplement eq. 2 (keys
              and values from the downscaled map; its LR output is repeated over
              each ``s x s`` block, i.e. nearest upsampling, which is eq. 3 with
              the value ``psi(X^{sxs})`` replaced by ``psi(Y)``);
            * ``"in_scale"`` - supplement eq. 1 in the same slot (a second IS-NL,
              nearest-upsampled likewise);
            * ``"none"`` - no third branch: the "L + IS-NL" model of the paper's
              Table 3 (33.62 dB, the same as Table 1's "In-scale" column).

            ``"proposed"``, ``"naive"`` and ``"in_scale"`` have exactly the same
            parameters (three 1x1-conv + PReLU embeddings ``F -> F//r``,
            ``F -> F//r``, ``F -> F``; nearest upsampling has no weights), so
            they compare attention formulas at an equal budget.  ``"none"`` has
            ``2 (F F/r + F/r + 1) + (F^2 + F + 1)`` (embeddings) ``+ 2 (9 F^2 + F)
            + 1`` (residual block of eq. 6) fewer per stage.  With the defaults
            at x2: 193,169 parameters for the first three and 172,557 (-20,612)
            for ``"none"``.
        normalization: CS-NL overlap averaging, ``"overlap"`` (true count) or
            ``"constant6"`` (official code).
        x4_stages: at x4, ``1`` (one stage with ``(8, 4, 2)`` layers, default) or
            ``2`` (two x2 stages, official code); ignored at x2 and x3.  See the
            module docstring.

    Layers (checkpoint keys): ``sub_mean`` / ``add_mean`` (:class:`MeanShift`,
    DIV2K mean, no weights), ``head`` (2 x [conv 3x3 + PReLU], 3 -> F -> F),
    ``sem`` (:class:`SelfExemplarsMiningCell`), ``tail`` (conv 3x3, ``T*F -> 3``).

    Forward:
        float32 RGB in [0, 1] ``(N, 3, h, w)``, any ``h, w >= 1`` (``>= regions``
        for region IS-NL) -> ``(N, 3, s*h, s*w)``, not clamped.  Attention memory
        grows with ``(h w)^2``: large images raise
        :class:`~srlib.attention.AttentionMemoryError` before allocating; run
        them tiled (``srlib eval --tile 64``).

    Raises:
        ValueError: unsupported scale or option values (construction); input
            that is not ``(N, 3, h, w)`` (forward).
        TypeError: non-float input (forward).
        AttentionMemoryError: the attention scores of an input would not fit.

    Source: Mei et al., CVPR 2020, Sec. 4.3, Fig. 3; official code ``CSNLN``.
    """

    def __init__(
        self,
        scale: int,
        n_feats: int = 32,
        depth: int = 4,
        reduction: int = 2,
        patch_size: int = 3,
        softmax_scale: float = 10.0,
        in_scale: str = "global",
        regions: int = 2,
        cross_scale: str = "proposed",
        normalization: str = "overlap",
        x4_stages: int = 1,
    ):
        super().__init__()
        check_scale("csnln", scale, CSNLN_SCALES)
        n_feats = _positive_int("n_feats", n_feats)
        depth = _positive_int("depth", depth)
        reduction = _positive_int("reduction", reduction)
        regions = _positive_int("regions", regions)
        if n_feats // reduction < 1:
            raise ValueError(f"n_feats // reduction must be >= 1, got {n_feats} // {reduction}")
        if isinstance(patch_size, bool) or not isinstance(patch_size, numbers.Integral) or patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be a positive odd integer (1, 3, 5, ...), got {patch_size!r}")
        if (
            isinstance(softmax_scale, bool)
            or not isinstance(softmax_scale, numbers.Real)
            or not (math.isfinite(softmax_scale) and softmax_scale > 0)
        ):
            raise ValueError(f"softmax_scale must be a positive finite number (10 in CSNLN), got {softmax_scale!r}")
        _choice("in_scale", in_scale, IN_SCALE_KINDS)
        _choice("cross_scale", cross_scale, CROSS_SCALE_KINDS)
        _choice("normalization", normalization, NORMALIZATIONS)
        if isinstance(x4_stages, bool) or x4_stages not in (1, 2):
            raise ValueError(f"x4_stages must be 1 (one x4 stage) or 2 (two x2 stages), got {x4_stages!r}")
        self.model_name = "csnln"
        self.scale = scale
        self.depth = depth
        self.options = {
            "n_feats": n_feats, "depth": depth, "reduction": reduction, "patch_size": patch_size,
            "softmax_scale": softmax_scale, "in_scale": in_scale, "regions": regions,
            "cross_scale": cross_scale, "normalization": normalization, "x4_stages": x4_stages,
        }

        self.sub_mean = MeanShift(DIV2K_RGB_MEAN, sign=-1)
        self.head = nn.Sequential(conv3x3(3, n_feats), nn.PReLU(), conv3x3(n_feats, n_feats), nn.PReLU())
        self.sem = SelfExemplarsMiningCell(
            n_feats, scale, reduction=reduction, patch_size=patch_size, softmax_scale=softmax_scale,
            normalization=normalization, in_scale=in_scale, regions=regions, cross_scale=cross_scale,
            x4_stages=x4_stages,
        )
        self.tail = conv3x3(depth * n_feats, 3)
        self.add_mean = MeanShift(DIV2K_RGB_MEAN, sign=+1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        check_lr_batch(lr)
        x = self.head(self.sub_mean(lr))  # (N, F, h, w), L_0
        hidden_units = []
        for t in range(self.depth):
            hidden = self.sem(x)  # (N, F, s*h, s*w), H_t (the same cell, shared weights)
            hidden_units.append(hidden)
            if t + 1 < self.depth:
                x = self.sem.output_unit(hidden)  # (N, F, h, w), L_t
        features = torch.cat(hidden_units, dim=1)  # (N, T*F, s*h, s*w)
        return self.add_mean(self.tail(features))  # (N, 3, s*h, s*w)
