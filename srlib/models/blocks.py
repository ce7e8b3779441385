"""Building blocks shared by the models: convolutions, mean shift, residual blocks, up-samplers.

* :func:`conv3x3` - the 3x3 'same' convolution every EDSR-lineage network is made of;
* :class:`MeanShift` - subtract / add the DIV2K mean RGB at the input / output;
* :class:`ResidualBlock` - EDSR's ``x + res_scale * conv(relu(conv(x)))``;
* :class:`Upsampler` - sub-pixel convolution (pixel shuffle), x2 / x3 / x4;
* :class:`ResidualAttention` - ``x + res_scale * attention(x)``: how a model adds
  a registered attention module (which never holds a residual itself) to its features.

Sources: EDSR (Lim et al., CVPRW 2017) Fig. 2-3; ESPCN (Shi et al., CVPR 2016) for the
pixel shuffle; NLSN (Mei et al., CVPR 2021) for the scaled attention residual.
"""

from __future__ import annotations

import numbers
from typing import Callable

import torch
from torch import nn

from srlib.models.registry import check_scale

__all__ = [
    "DIV2K_RGB_MEAN",
    "EDSR_SCALES",
    "MeanShift",
    "ResidualAttention",
    "ResidualBlock",
    "Upsampler",
    "attention_slot",
    "conv3x3",
]

# Seeds are passed to torch.Generator.manual_seed as seed + i; keep them far from its limits.
_MAX_SEED = 2**63 - 1024

# Mean RGB of the DIV2K training images on a [0, 1] scale, as used by the EDSR
# reference implementation (0.4488, 0.4371, 0.4040).
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)

# Scales the pixel-shuffle up-sampler is built for.
EDSR_SCALES = (2, 3, 4)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """3x3 convolution with stride 1 and zero padding 1, so H and W are kept."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)


class MeanShift(nn.Module):
    """Add or subtract a fixed per-channel RGB mean.

    Args:
        rgb_mean: three floats, the mean of R, G, B in [0, 1].
        sign: ``-1`` to subtract (at the network input), ``+1`` to add back
            (at the output).

    Forward:
        ``(N, 3, H, W)`` -> ``(N, 3, H, W)``, ``x + sign * mean``.

    The mean is a non-persistent buffer: a constant of the architecture, not a
    weight, so it follows ``.to(device)`` but is not stored in checkpoints and
    does not count as a parameter.
    """

    def __init__(self, rgb_mean: tuple[float, float, float], sign: int):
        super().__init__()
        if sign not in (-1, 1):
            raise ValueError(f"sign must be -1 or +1, got {sign}")
        shift = sign * torch.tensor(rgb_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift  # (N, 3, H, W)


class ResidualBlock(nn.Module):
    """EDSR residual block: ``x + res_scale * conv(relu(conv(x)))``, no batch norm.

    Args:
        n_feats: channels in and out (F).
        res_scale: factor applied to the residual branch before the addition.

    Forward:
        ``(N, F, H, W)`` -> ``(N, F, H, W)``.
    """

    def __init__(self, n_feats: int, res_scale: float = 1.0):
        super().__init__()
        self.conv1 = conv3x3(n_feats, n_feats)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(n_feats, n_feats)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv2(self.relu(self.conv1(x)))  # (N, F, H, W)
        return x + residual * self.res_scale  # (N, F, H, W)

    def extra_repr(self) -> str:
        return f"res_scale={self.res_scale}"


class Upsampler(nn.Sequential):
    """Sub-pixel up-sampler: convolution to ``F * r^2`` channels, then pixel shuffle by ``r``.

    x2 and x3 use one stage with ``r = scale``; x4 uses two x2 stages.  Pixel
    shuffle rearranges ``(N, F*r^2, H, W)`` into ``(N, F, r*H, r*W)``, so all
    convolutions run at LR resolution (Shi et al., "Real-Time Single Image and
    Video Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural
    Network", CVPR 2016).

    Args:
        n_feats: channels in and out (F).
        scale: 2, 3 or 4.

    Forward:
        ``(N, F, H, W)`` -> ``(N, F, scale*H, scale*W)``.

    Raises:
        ValueError: another scale.
    """

    def __init__(self, n_feats: int, scale: int):
        check_scale("Upsampler", scale, EDSR_SCALES)
        factors = [2, 2] if scale == 4 else [scale]
        layers: list[nn.Module] = []
        for r in factors:
            layers.append(nn.Conv2d(n_feats, n_feats * r * r, kernel_size=3, padding=1))  # (N, F*r^2, H, W)
            layers.append(nn.PixelShuffle(r))  # (N, F, r*H, r*W)
        super().__init__(*layers)
        self.scale = scale



class ResidualAttention(nn.Module):
    """A registered attention inside a residual connection: ``x + res_scale * attention(x)``.

    Attention modules of :mod:`srlib.attention` have no residual inside (their
    contract); a model that wants one wraps them here.

    Args:
        attention: an ``"in_scale"`` attention module, ``(N, C, H, W) -> (N, C, H, W)``.
        res_scale: factor of the attention branch (NLSN's code: 0.1).

    Layers (checkpoint keys): ``attention``.

    Forward ``forward(x, return_details=False)``:
        ``(N, C, H, W)`` -> ``(N, C, H, W)``; with ``return_details=True``
        ``(out, details)``, the attention's own details (before the residual).
    """

    def __init__(self, attention: nn.Module, res_scale: float = 1.0):
        super().__init__()
        self.attention = attention
        self.res_scale = float(res_scale)

    def forward(self, x: torch.Tensor, return_details: bool = False):
        if return_details:
            attended, details = self.attention(x, return_details=True)  # (N, C, H, W)
            return x + self.res_scale * attended, details
        return x + self.res_scale * self.attention(x)  # (N, C, H, W)

    def extra_repr(self) -> str:
        return f"res_scale={self.res_scale}"


def attention_slot(
    attention: str | None, attention_options: dict | None, channels: int, seed: int, kinds: tuple[str, ...]
) -> Callable[[int], nn.Module] | None:
    """Check a model's attention options once and return ``build(i)``, its ``i``-th attention module.

    The attention slots of NLSN and DLSN share these rules: ``attention="none"``
    (or None) means no attention and takes no options; the options must not set
    ``seed``, because the ``i``-th module (``i = 0, 1, ...`` in body order) gets
    ``seed + i`` when the attention takes a seed, so that the modules hash with
    independent, repeatable draws.

    Args:
        attention: a registered attention name, ``"none"`` or None.
        attention_options: its options (None: its defaults).
        channels: ``C`` of the maps it attends over.
        seed: the model's seed, an integer in ``[0, 2**63 - 1024)``.
        kinds: the attention kinds the slot can hold (e.g. ``("in_scale",)``).

    Returns:
        ``build(i) -> nn.Module`` (:func:`srlib.attention.build_attention`), or None without attention.

    Raises:
        ValueError: a bad seed; options given with ``"none"``; options setting
            ``seed``; (when building) an unknown attention or one of another kind.
    """
    from srlib.attention import attention_options as registered_options
    from srlib.attention import build_attention

    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < _MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**63 - 1024), got {seed!r}")
    options = dict(attention_options or {})
    if attention in (None, "none"):
        if options:
            raise ValueError(f"attention='none' takes no attention_options, got {options!r}")
        return None
    if "seed" in options:
        raise ValueError(
            "attention_options must not set 'seed': the model gives its i-th attention module seed + i; "
            "set the model's seed option instead"
        )
    takes_seed = "seed" in registered_options(attention)

    def build(index: int) -> nn.Module:
        extra = {"seed": int(seed) + index} if takes_seed else {}
        return build_attention(attention, channels, kinds=kinds, **options, **extra)

    return build
