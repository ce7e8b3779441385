"""The bicubic baseline: MATLAB ``imresize(LR, scale, 'bicubic')`` as a model.

Every SR paper's tables start with a "Bicubic" row.  Wrapping the resize in an
``nn.Module`` lets it go through the same evaluation, tiling and checkpoint code
as the learned models.  It has no parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from srlib.imresize import imresize
from srlib.models.registry import check_lr_batch, register_model

__all__ = ["BicubicUpsampler", "build_bicubic"]


class BicubicUpsampler(nn.Module):
    """Upscale by MATLAB-exact bicubic interpolation (:func:`srlib.imresize.imresize`).

    Args:
        scale: integer upscaling factor >= 2.

    Forward:
        float32 RGB in [0, 1], ``(N, 3, h, w)`` -> ``(N, 3, scale*h, scale*w)``,
        same dtype and device, not clamped (bicubic over- and undershoots at
        edges).

    Raises:
        ValueError: in ``forward``, input that is not ``(N, 3, h, w)``.
    """

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        check_lr_batch(lr)
        return imresize(lr, scale=self.scale)  # (N, 3, s*h, s*w)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


@register_model("bicubic")
def build_bicubic(scale: int) -> BicubicUpsampler:
    """Builder for ``build_model("bicubic", scale)``: any integer scale >= 2, no options.

    Raises:
        ValueError: ``scale`` < 2.
    """
    if scale < 2:
        raise ValueError(f"bicubic supports any integer scale >= 2, got x{scale}")
    return BicubicUpsampler(scale)
