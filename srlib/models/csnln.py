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
  (``in_scale_attention="non_local"`` default, ``"region_non_local"`` with
  ``in_scale_options={"regions": [2, 2]}``).
* The code's CS-NL divides overlapping patches by 6; ``normalization="overlap"``
  (default) divides by the true count, ``"constant6"`` reproduces the code.
* The code computes the output unit ``L_T`` of the last recurrence and
  discards it; here it is skipped (same output, slightly fewer FLOPs).

Cost.  The CS-NL aggregation pastes a ``(sp) x (sp) x F`` value patch for every
(query, key) pair, ``O((h w)^2 F p^2)`` multiply-adds: with the defaults at x2 it
is about 15 of the 20 GFLOPs of a 48x48 LR input (``cross_scale="naive"``: 6.8,
``"none"``: 4.9; see :func:`srlib.models.count_flops`).

Attention plug-ins.  The second branch takes any registered attention of kind
``"in_scale"`` (option ``in_scale_attention``, options ``in_scale_options``);
the third any of kind ``"cross_scale"`` (its output is already ``s`` times
larger) or ``"in_scale"`` (its LR output is repeated over each ``s x s`` block,
nearest upsampling), or ``"none"`` (option ``cross_scale_attention``, options
``cross_scale_options``).  An attention that takes a ``scale`` option gets the
stage's factor from the model.

Official size (128 channels, 12 recurrences, x2): 3,061,265 parameters, i.e. the
"3M" of the paper's Table 2 - build it with ``build_model("csnln", 2,
**CSNLN_OFFICIAL_OPTIONS)``.
"""

from __future__ import annotations

import torch
from torch import nn

from srlib.attention import build_attention
from srlib.attention import attention_options as registered_options
from srlib.attention._common import positive_int
from srlib.models.blocks import DIV2K_RGB_MEAN, MeanShift, conv3x3
from srlib.models.registry import check_lr_batch, check_scale, register_model, rename_state_keys

__all__ = [
    "CSNLN",
    "CSNLN_SCALES",
    "CSNLN_OFFICIAL_OPTIONS",
    "PROJECTION_LAYERS",
    "MutualProjectedFusion",
    "SEMStage",
    "SelfExemplarsMiningCell",
    "upgrade_csnln_checkpoint",
]

CSNLN_SCALES = (2, 3, 4)

# (kernel, stride, padding) of the strided (de)convolutions that move between LR and s x LR
# (paper Sec. 5.2: 6x6, 9x9 and 8x8 filters for x2, x3, x4; strides and paddings from the
# official code).  ConvTranspose2d: (h - 1) * stride - 2 * padding + kernel = s * h for every h.
PROJECTION_LAYERS = {2: (6, 2, 2), 3: (9, 3, 3), 4: (8, 4, 2)}

# The attention kinds each branch accepts.
IN_SCALE_BRANCH_KINDS = ("in_scale",)
CROSS_SCALE_BRANCH_KINDS = ("cross_scale", "in_scale")

# The released model (official code's defaults, attention as released).  x4_stages=2 and
# normalization="constant6" reproduce the code; the paper's text would give region IS-NL.
CSNLN_OFFICIAL_OPTIONS = dict(
    n_feats=128,
    depth=12,
    in_scale_attention="non_local",
    in_scale_options={"reduction": 2},
    cross_scale_attention="cross_scale",
    cross_scale_options={"reduction": 2, "patch_size": 3, "softmax_scale": 10.0, "normalization": "constant6"},
    x4_stages=2,
)


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


def _branch_attention(
    slot: str, name: str, options: dict, n_feats: int, factor: int, kinds: tuple[str, ...]
) -> nn.Module:
    """Build a branch's registered attention; an attention that takes ``scale`` gets the stage's factor."""
    options = dict(options)
    if "scale" in options:
        raise ValueError(
            f"{slot}_options must not set 'scale': the model gives the attention its stage's factor "
            f"(x{factor}); choose the model's scale instead"
        )
    if "scale" in registered_options(name):
        options["scale"] = factor
    return build_attention(name, n_feats, kinds=kinds, **options)


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
        in_scale_attention, in_scale_options: the registered attention of the
            in-scale branch (kind ``"in_scale"``) and its options.
        cross_scale_attention, cross_scale_options: the registered attention of
            the third branch (kind ``"cross_scale"``, or ``"in_scale"`` whose LR
            output is upsampled by nearest neighbour), or ``"none"`` / ``None`` for no third branch.

    Layers (checkpoint keys): ``in_scale_attention``, ``in_scale_upsample``,
    ``cross_scale_attention`` (absent without a third branch),
    ``cross_scale_upsample`` (nearest upsampling for the LR-output kinds,
    identity otherwise; no weights), ``fusion``.

    Forward ``forward(local, features)``: ``(N, F, h, w)`` and
    ``(N, F, H, W)`` with ``r*H = S*h`` -> ``(N, F, S*h, S*w)``.

    Raises:
        ValueError: an attention of a kind the branch cannot use (the message
            lists the registered ones that fit), or options setting ``scale``.
    """

    def __init__(
        self,
        n_feats: int,
        factor: int,
        scale: int,
        in_scale_attention: str,
        in_scale_options: dict,
        cross_scale_attention: str | None,
        cross_scale_options: dict,
    ):
        super().__init__()
        self.in_scale_attention = _branch_attention(
            "in_scale", in_scale_attention, in_scale_options, n_feats, factor, IN_SCALE_BRANCH_KINDS
        )
        self.in_scale_upsample = upprojection(n_feats, factor)
        if cross_scale_attention in (None, "none"):  # two branches only: "L + IS-NL"
            self.cross_scale_attention: nn.Module | None = None
            self.cross_scale_upsample: nn.Module = nn.Identity()
        else:
            self.cross_scale_attention = _branch_attention(
                "cross_scale", cross_scale_attention, cross_scale_options, n_feats, factor, CROSS_SCALE_BRANCH_KINDS
            )
            if self.cross_scale_attention.attention_kind == "cross_scale":  # eq. 3-4: already r times larger
                self.cross_scale_upsample = nn.Identity()
            else:  # an LR output (supplement eq. 1-2 in this slot): each value fills its r x r block
                self.cross_scale_upsample = nn.Upsample(scale_factor=factor, mode="nearest")
        self.fusion = MutualProjectedFusion(n_feats, scale, fuse_cross_scale=self.cross_scale_attention is not None)

    def forward(self, local: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        in_scale = self.in_scale_upsample(self.in_scale_attention(features))  # (N, F, rH, rW), F_I
        cross_scale = None
        if self.cross_scale_attention is not None:
            cross_scale = self.cross_scale_upsample(self.cross_scale_attention(features))  # (N, F, rH, rW), F_C
        return self.fusion(local, in_scale, cross_scale)  # (N, F, S*h, S*w), H


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
        in_scale_attention, in_scale_options, cross_scale_attention,
        cross_scale_options, x4_stages: see :class:`CSNLN`.

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
        in_scale_attention: str = "non_local",
        in_scale_options: dict | None = None,
        cross_scale_attention: str | None = "cross_scale",
        cross_scale_options: dict | None = None,
        x4_stages: int = 1,
    ):
        super().__init__()
        check_scale("SelfExemplarsMiningCell", scale, CSNLN_SCALES)
        # (factor r of the branches, scale S of the stage output w.r.t. the cell input)
        plan = [(2, 2), (2, 4)] if scale == 4 and x4_stages == 2 else [(scale, scale)]
        self.scale = scale
        self.stages = nn.ModuleList(
            SEMStage(n_feats, factor, total, in_scale_attention, dict(in_scale_options or {}),
                     cross_scale_attention, dict(cross_scale_options or {}))
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


# Checkpoints written before the attention registry (srlib 0.1 layout): CSNLN's own attention
# options and kind names, and the in-scale attention's layers called theta / delta / psi.
_LEGACY_IN_SCALE = {"global": "non_local", "region": "region_non_local"}
_LEGACY_CROSS_SCALE = {"proposed": "cross_scale", "naive": "cross_scale_naive", "none": "none"}
_LEGACY_LAYERS = {"theta": "query_embed", "delta": "key_embed", "psi": "value_embed"}


def upgrade_csnln_checkpoint(options: dict, state) -> tuple[dict, dict]:
    """Map a CSNLN checkpoint of the pre-registry layout onto today's; current ones pass unchanged.

    The mapping (documented here and tested on the shipped ``data/checkpoints/csnln_x2.pt``):

    * ``in_scale="global" | "region"`` -> ``in_scale_attention="non_local" | "region_non_local"``,
      ``regions=r`` -> ``in_scale_options["regions"] = [r, r]``;
    * ``cross_scale="proposed" | "naive" | "in_scale" | "none"`` -> ``cross_scale_attention=
      "cross_scale" | "cross_scale_naive" | <the in-scale attention> | "none"``;
    * ``reduction`` -> both branches' options; ``patch_size``, ``softmax_scale``,
      ``normalization`` -> the cross-scale options (``softmax_scale`` also to the naive one);
    * weights ``...in_scale_attention.theta|delta|psi.<k>.<p>`` (and the same under
      ``cross_scale_attention`` for ``cross_scale="in_scale"``) -> ``query_embed|key_embed|value_embed``.

    Args:
        options: the checkpoint's ``model_options``.
        state: its ``model_state``.

    Returns:
        ``(options, state)`` in today's layout (new dicts; tensors are shared).

    Raises:
        ValueError: a legacy ``in_scale`` or ``cross_scale`` value that has no counterpart.
    """
    options, state = dict(options), dict(state)
    if "cross_scale" not in options and "in_scale" not in options:
        return options, state
    in_scale = options.pop("in_scale", "global")
    cross_scale = options.pop("cross_scale", "proposed")
    if in_scale not in _LEGACY_IN_SCALE or cross_scale not in (*_LEGACY_CROSS_SCALE, "in_scale"):
        raise ValueError(f"cannot upgrade CSNLN options in_scale={in_scale!r}, cross_scale={cross_scale!r}")
    reduction = options.pop("reduction", 2)
    regions = options.pop("regions", 2)
    patch_size = options.pop("patch_size", 3)
    softmax_scale = options.pop("softmax_scale", 10.0)
    normalization = options.pop("normalization", "overlap")
    in_scale_options = {"reduction": reduction}
    if in_scale == "region":
        in_scale_options["regions"] = [regions, regions]
    options["in_scale_attention"] = _LEGACY_IN_SCALE[in_scale]
    options["in_scale_options"] = in_scale_options
    if cross_scale == "in_scale":
        options["cross_scale_attention"] = options["in_scale_attention"]
        options["cross_scale_options"] = dict(in_scale_options)
    else:
        options["cross_scale_attention"] = _LEGACY_CROSS_SCALE[cross_scale]
        options["cross_scale_options"] = {
            "proposed": {"reduction": reduction, "patch_size": patch_size, "softmax_scale": softmax_scale,
                         "normalization": normalization},
            "naive": {"reduction": reduction, "softmax_scale": softmax_scale},
            "none": {},
        }[cross_scale]
    return options, rename_state_keys(
        state, r"^(.*\.(?:in_scale_attention|cross_scale_attention))\.(theta|delta|psi)\.(.+)$",
        lambda match: f"{match.group(1)}.{_LEGACY_LAYERS[match.group(2)]}.{match.group(3)}",
    )


@register_model(  # the class is its own builder: its __init__ options are the registry options
    "csnln",
    presets={
        # The quick budget keeps validation within memory (tiles) and a step affordable on a CPU
        # (24-pixel LR patches: the attention cost grows with the square of the patch area).
        "quick": {"model_options": {"n_feats": 32, "depth": 4}, "lr_patch": 24, "val_tile": 48},
        "full": {"model_options": {"n_feats": 64, "depth": 6}, "val_tile": 64},
        "smoke": {"model_options": {"n_feats": 8, "depth": 1}, "val_tile": 32},
    },
    upgrade=upgrade_csnln_checkpoint,
)
class CSNLN(nn.Module):
    """Cross-Scale Non-Local Network: head, one SEM cell applied ``depth`` times, concatenated hidden units -> RGB.

    Args:
        scale: 2, 3 or 4.
        n_feats: feature channels ``F`` (128 in the paper; 32 by default here).
        depth: ``T``, recurrences of the SEM cell (12 in the paper; 4 here).  The
            cell's weights are shared across recurrences, so ``T`` changes only
            the tail: ``9 * T * F * 3 + 3`` parameters.
        in_scale_attention: the registered attention of the in-scale branch, any
            of kind ``"in_scale"``: ``"non_local"`` (default: IS-NL over the whole
            map, official code) or ``"region_non_local"`` (inside each cell of a
            grid, the paper's text; needs LR maps of at least ``regions`` pixels
            per side), or a plugin's.
        in_scale_options: its options (None: defaults; ``reduction=2`` gives
            query/key embeddings of ``F // 2`` channels as in CSNLN).
        cross_scale_attention: the attention of the third branch, any of kind
            ``"cross_scale"`` or ``"in_scale"``, or ``"none"``; for the
            supplement's Table 1 ablation:

            * ``"cross_scale"`` - cross-scale attention, paper eq. 4 (eq. 3 with
              ``patch_size=1``, or ``"cross_scale_pixel"``; supplement eq. 3);
            * ``"cross_scale_naive"`` - naive cross-scale attention, supplement
              eq. 2 (keys and values from the downscaled map; its LR output is
              repeated over each ``s x s`` block, i.e. nearest upsampling, which is
              eq. 3 with the value ``psi(X^{sxs})`` replaced by ``psi(Y)``);
            * ``"non_local"`` - supplement eq. 1 in the same slot (a second IS-NL,
              nearest-upsampled likewise);
            * ``"none"`` - no third branch: the "L + IS-NL" model of the paper's
              Table 3 (33.62 dB, the same as Table 1's "In-scale" column).

            ``"cross_scale"``, ``"cross_scale_naive"`` and ``"non_local"`` have
            exactly the same parameters (three 1x1-conv + PReLU embeddings
            ``F -> F//r``, ``F -> F//r``, ``F -> F``; nearest upsampling has no
            weights), so they compare attention formulas at an equal budget.
            ``"none"`` has ``2 (F F/r + F/r + 1) + (F^2 + F + 1)`` (embeddings)
            ``+ 2 (9 F^2 + F) + 1`` (residual block of eq. 6) fewer per stage.
            With the defaults at x2: 193,169 parameters for the first three and
            172,557 (-20,612) for ``"none"``.
        cross_scale_options: its options (None: defaults; for ``"cross_scale"``
            ``patch_size=3``, ``reduction=2``, ``softmax_scale=10``,
            ``normalization="overlap"`` (true overlap count; ``"constant6"``:
            the official code)).  ``scale`` is not one of them: the model sets it
            to the stage's factor.
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
        ValueError: unsupported scale or option values (construction); an
            attention that is not registered or of a kind its branch cannot use
            (the message lists those that fit); input that is not
            ``(N, 3, h, w)`` or holds non-finite pixels (forward).
        TypeError: attention options the attention does not take; non-float input (forward).
        AttentionMemoryError: the attention scores of an input would not fit.

    Source: Mei et al., CVPR 2020, Sec. 4.3, Fig. 3; official code ``CSNLN``.
    """

    def __init__(
        self,
        scale: int,
        n_feats: int = 32,
        depth: int = 4,
        in_scale_attention: str = "non_local",
        in_scale_options: dict | None = None,
        cross_scale_attention: str = "cross_scale",
        cross_scale_options: dict | None = None,
        x4_stages: int = 1,
    ):
        super().__init__()
        check_scale("csnln", scale, CSNLN_SCALES)
        n_feats = positive_int("n_feats", n_feats)
        depth = positive_int("depth", depth)
        if isinstance(x4_stages, bool) or x4_stages not in (1, 2):
            raise ValueError(f"x4_stages must be 1 (one x4 stage) or 2 (two x2 stages), got {x4_stages!r}")
        third = None if cross_scale_attention in (None, "none") else cross_scale_attention
        if third is None and cross_scale_options:
            raise ValueError(f"cross_scale_attention='none' takes no cross_scale_options, got {cross_scale_options!r}")
        self.scale = scale
        self.depth = depth

        self.sub_mean = MeanShift(DIV2K_RGB_MEAN, sign=-1)
        self.head = nn.Sequential(conv3x3(3, n_feats), nn.PReLU(), conv3x3(n_feats, n_feats), nn.PReLU())
        self.sem = SelfExemplarsMiningCell(
            n_feats, scale, in_scale_attention=in_scale_attention, in_scale_options=in_scale_options,
            cross_scale_attention=third, cross_scale_options=cross_scale_options, x4_stages=x4_stages,
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
