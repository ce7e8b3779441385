"""EDSR-baseline: the residual CNN that most non-local SR networks are built on.

Source: B. Lim, S. Son, H. Kim, S. Nah and K. M. Lee, "Enhanced Deep Residual
Networks for Single Image Super-Resolution", CVPR Workshops (NTIRE) 2017,
arXiv:1707.02921.  The "baseline" model of that paper has 16 residual blocks
of 64 channels and about 1.37 M parameters at x2 (Sec. 3.1, Table 1).

Data flow (shapes for an LR batch ``(N, 3, h, w)``, ``F = n_feats``, ``s = scale``)::

    lr ──subtract DIV2K mean──> head conv ──> x0                          (N, F, h, w)
    x0 ──> [ResidualBlock] x n_blocks ──> body conv ──(+ x0)──> features  (N, F, h, w)
    features ──> Upsampler (conv + pixel shuffle) ──────────────────────> (N, F, s*h, s*w)
             ──> tail conv ──add DIV2K mean──> sr                         (N, 3, s*h, s*w)

What makes it "enhanced" compared with SRResNet: no batch normalisation in the
residual blocks (BN removes range flexibility and costs memory), no ReLU after
the addition, and a long skip connection around the whole body so the blocks
learn only the missing detail.  The residual scaling ``res_scale`` (0.1 in the
paper's large model) stabilises training of very wide networks; the baseline
uses 1.
"""

from __future__ import annotations

import torch
from torch import nn

from srlib.models.blocks import (
    DIV2K_RGB_MEAN,
    EDSR_SCALES,
    MeanShift,
    ResidualBlock,
    Upsampler,
    conv3x3,
)
from srlib.models.registry import check_lr_batch, check_scale, register_model

__all__ = [
    "DIV2K_RGB_MEAN",
    "MeanShift",
    "ResidualBlock",
    "Upsampler",
    "EDSR",
    "build_edsr_baseline",
    "EDSR_SCALES",
]

class EDSR(nn.Module):
    """EDSR: mean shift, head conv, residual body with a long skip, pixel-shuffle up-sampler, tail conv.

    Args:
        scale: 2, 3 or 4.
        n_feats: feature channels F (64 in the baseline, 256 in the large model).
        n_blocks: number of :class:`ResidualBlock` (16 baseline, 32 large).
        res_scale: residual scaling inside each block (1.0 baseline, 0.1 large).

    Layers (the names are the checkpoint keys):
        ``sub_mean`` / ``add_mean`` - :class:`MeanShift` with the DIV2K mean;
        ``head`` - conv 3 -> F;
        ``body`` - ``nn.Sequential`` of ``n_blocks`` residual blocks;
        ``body_conv`` - conv F -> F closing the body, before the long skip;
        ``upsampler`` - :class:`Upsampler`;
        ``tail`` - conv F -> 3 at HR resolution.

    Forward:
        float32 RGB in [0, 1] ``(N, 3, h, w)`` -> ``(N, 3, scale*h, scale*w)``,
        not clamped.

    Raises:
        ValueError: unsupported scale or non-positive sizes (at construction);
            input that is not ``(N, 3, h, w)`` (in ``forward``).

    Source: Lim et al., CVPRW 2017 (see the module docstring), Fig. 2 and 3.
    """

    def __init__(self, scale: int, n_feats: int = 64, n_blocks: int = 16, res_scale: float = 1.0):
        super().__init__()
        check_scale("edsr_baseline", scale, EDSR_SCALES)
        if int(n_feats) != n_feats or n_feats < 1:
            raise ValueError(f"n_feats must be a positive integer, got {n_feats!r}")
        if int(n_blocks) != n_blocks or n_blocks < 0:
            raise ValueError(f"n_blocks must be a non-negative integer, got {n_blocks!r}")
        if not res_scale > 0:
            raise ValueError(f"res_scale must be positive, got {res_scale!r}")
        n_feats, n_blocks = int(n_feats), int(n_blocks)
        self.scale = scale

        self.sub_mean = MeanShift(DIV2K_RGB_MEAN, sign=-1)
        self.head = conv3x3(3, n_feats)
        self.body = nn.Sequential(*[ResidualBlock(n_feats, res_scale) for _ in range(n_blocks)])
        self.body_conv = conv3x3(n_feats, n_feats)
        self.upsampler = Upsampler(n_feats, scale)
        self.tail = conv3x3(n_feats, 3)
        self.add_mean = MeanShift(DIV2K_RGB_MEAN, sign=+1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        check_lr_batch(lr)
        x = self.sub_mean(lr)  # (N, 3, h, w), zero-centred
        shallow = self.head(x)  # (N, F, h, w)
        deep = self.body_conv(self.body(shallow))  # (N, F, h, w)
        features = deep + shallow  # (N, F, h, w), long skip connection
        upscaled = self.upsampler(features)  # (N, F, s*h, s*w)
        sr = self.tail(upscaled)  # (N, 3, s*h, s*w)
        return self.add_mean(sr)  # (N, 3, s*h, s*w)


@register_model(
    "edsr_baseline",
    presets={
        # The README's main job: bf16 on CPUs that have it (2.3x per step) buys 4,000 steps in the 10-minute budget.
        "quick": {"model_options": {"n_feats": 32, "n_blocks": 4}, "cpu_bf16": True, "steps": 4000,
                  "val_every": 1000, "checkpoint_every": 1000},
        "full": {"model_options": {"n_feats": 64, "n_blocks": 16}},
        "smoke": {"model_options": {"n_feats": 16, "n_blocks": 2}},
    },
)
def build_edsr_baseline(scale: int, n_feats: int = 64, n_blocks: int = 16, res_scale: float = 1.0) -> EDSR:
    """Builder for ``build_model("edsr_baseline", scale, ...)``.

    Args:
        scale: 2, 3 or 4.
        n_feats, n_blocks, res_scale: see :class:`EDSR`; the defaults give the
            paper's EDSR-baseline (1,369,859 parameters at x2).

    Raises:
        ValueError: unsupported scale or invalid option values.
    """
    return EDSR(scale, n_feats=n_feats, n_blocks=n_blocks, res_scale=res_scale)
