"""PSNR and SSIM on the Y channel, computed exactly as SR papers report them.

The protocol (EDSR, RCAN, CSNLN, NLSN, DLSN and their MATLAB evaluation scripts):

1. the super-resolved output is quantised to 8 bit;
2. both images go to the Y channel of ITU-R BT.601 with MATLAB's
   ``rgb2ycbcr`` for uint8 images: ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``
   with R, G, B in 0..255, rounded to an integer in [16, 235];
3. ``shave`` pixels (= the scale) are cut from every border;
4. PSNR = ``10 log10(255^2 / MSE)``; SSIM as in Wang et al.'s original MATLAB
   ``ssim_index`` (11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03,
   L = 255, 'valid' filtering, no automatic downsampling);
5. a dataset's score is the mean of per-image scores (not the PSNR of the pooled
   error, which is what some libraries return for a batch).

All functions take ``torch.Tensor`` images in the library's layout: RGB
``(3, H, W)`` or ``(N, 3, H, W)``, either ``uint8`` in 0..255 or floating in
[0, 1] (quantised to 8 bit first, as a saved PNG would be).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "quantize",
    "rgb_to_y",
    "shave_border",
    "psnr",
    "ssim",
    "psnr_y",
    "ssim_y",
]

# ITU-R BT.601 luma row of MATLAB's rgb2ycbcr, for R, G, B in 0..255 (output 16..235).
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0


def quantize(image: torch.Tensor) -> torch.Tensor:
    """Round an image to 8-bit levels, as saving it to PNG would.

    Args:
        image: ``uint8`` (returned as float64 unchanged in value) or floating
            RGB in [0, 1], any shape.

    Returns:
        float64 tensor of integers in 0..255, same shape.
    """
    if image.dtype == torch.uint8:
        return image.to(torch.float64)
    if not image.is_floating_point():
        raise TypeError(f"expected uint8 or floating image, got {image.dtype}")
    return torch.floor(image.to(torch.float64).clamp(0, 1) * 255.0 + 0.5)


def rgb_to_y(image: torch.Tensor, round_to_uint8: bool = True) -> torch.Tensor:
    """Y (luma) of ITU-R BT.601 as MATLAB's ``rgb2ycbcr`` computes it for uint8 images.

    Args:
        image: RGB ``(3, H, W)`` or ``(N, 3, H, W)``; ``uint8`` 0..255 or float
            in [0, 1] (quantised to 8 bit first).
        round_to_uint8: round Y to an integer as MATLAB does when its input is
            uint8 (default, what the papers' numbers use).  ``False`` keeps the
            unrounded value.

    Returns:
        float64 Y in [16, 235] (display levels), shape ``(H, W)`` or ``(N, H, W)``.

    Raises:
        ValueError: the channel dimension (-3) is not 3.
    """
    if image.dim() < 3 or image.shape[-3] != 3:
        raise ValueError(
            f"rgb_to_y expects RGB images shaped (3, H, W) or (N, 3, H, W), got {tuple(image.shape)}; "
            "convert grayscale to RGB first (srlib.data.load_image does)"
        )
    rgb = quantize(image)
    r, g, b = rgb.unbind(dim=-3)
    # Same operation order as MATLAB (coefficients divided by 255 first, offset added last), so
    # that values landing exactly on .5 round the same way.
    y = _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b + _Y_OFFSET
    if round_to_uint8:
        y = torch.floor(y + 0.5)  # values are positive: MATLAB's round half away from zero
    return y


def shave_border(image: torch.Tensor, shave: int) -> torch.Tensor:
    """Cut ``shave`` pixels from each border of the last two dimensions.

    Raises:
        ValueError: ``shave`` is negative or leaves nothing of the image.
    """
    if shave < 0:
        raise ValueError(f"shave must be >= 0, got {shave}")
    if shave == 0:
        return image
    h, w = image.shape[-2:]
    if h <= 2 * shave or w <= 2 * shave:
        raise ValueError(f"image {h}x{w} is too small to shave {shave} pixels from each border")
    return image[..., shave : h - shave, shave : w - shave]


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}; "
            "crop the HR image to a multiple of the scale (srlib.data.crop_to_multiple)"
        )


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image (or channel map) in a batch.

    Args:
        a, b: same-shaped tensors ``(H, W)`` or ``(N, H, W)`` (for example Y maps),
            values in ``[0, data_range]``.
        data_range: the peak value L (255 for 8-bit levels).

    Returns:
        float64 PSNR in dB, shape ``()`` or ``(N,)``; ``inf`` where the images are equal.

    Source: PSNR = 10 log10(L^2 / MSE).
    """
    _check_pair(a, b)
    diff = a.to(torch.float64) - b.to(torch.float64)
    mse = diff.pow(2).mean(dim=(-2, -1))
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_1d(size: int, sigma: float, dtype, device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _gaussian_filter_valid(maps: torch.Tensor, window_1d: torch.Tensor) -> torch.Tensor:
    """'valid' 2-D Gaussian filtering of ``(N, K, H, W)`` maps, as two 1-D passes.

    The normalised 2-D window of the MATLAB code is ``outer(g, g)`` for the
    normalised 1-D Gaussian ``g``, so the separable form gives the same result.
    """
    n, k, h, w = maps.shape
    x = maps.reshape(n * k, 1, h, w)
    x = F.conv2d(x, window_1d.view(1, 1, -1, 1))
    x = F.conv2d(x, window_1d.view(1, 1, 1, -1))
    return x.reshape(n, k, x.shape[-2], x.shape[-1])


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float = 255.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity of each single-channel image in a batch (Wang et al. 2004).

    Args:
        a, b: same-shaped tensors ``(H, W)`` or ``(N, H, W)``, values in
            ``[0, data_range]``; both sides must be at least ``window_size``.
        data_range: L, the dynamic range (255 for 8-bit levels).
        window_size, sigma: the Gaussian window (11, 1.5 as in the original code).
        k1, k2: stabilising constants (0.01, 0.03).

    Returns:
        float64 mean SSIM, shape ``()`` or ``(N,)``, in [-1, 1].

    Raises:
        ValueError: shapes differ, or an image is smaller than the window.

    Source: Z. Wang et al., "Image quality assessment: from error visibility to
    structural similarity", IEEE TIP 2004, eq. 13, with the 'valid'-filtered
    Gaussian statistics of the authors' MATLAB ``ssim_index``.
    """
    _check_pair(a, b)
    h, w = a.shape[-2:]
    if h < window_size or w < window_size:
        raise ValueError(f"SSIM needs images of at least {window_size}x{window_size}, got {h}x{w}")
    single = a.dim() == 2
    x = a.to(torch.float64).reshape(-1, 1, h, w)
    y = b.to(torch.float64).reshape(-1, 1, h, w)
    window = _gaussian_1d(window_size, sigma, x.dtype, x.device)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    stats = _gaussian_filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), window)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.unbind(dim=1)
    sigma_x2 = e_xx - mu_x**2
    sigma_y2 = e_yy - mu_y**2
    sigma_xy = e_xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (sigma_x2 + sigma_y2 + c2)
    )
    scores = ssim_map.mean(dim=(-2, -1))
    return scores[0] if single else scores


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, shave: int) -> torch.Tensor:
    """PSNR on the Y channel with a border shave, as SR papers report it.

    Args:
        sr: super-resolved RGB ``(3, H, W)`` or ``(N, 3, H, W)``, uint8 or float in [0, 1].
        hr: ground-truth RGB of the same shape and kind.
        shave: pixels cut from each border, normally the scale.

    Returns:
        float64 PSNR in dB per image, shape ``()`` or ``(N,)``.

    Raises:
        ValueError: shapes differ, images are not RGB, or too small to shave.
    """
    _check_pair(sr, hr)
    return psnr(shave_border(rgb_to_y(sr), shave), shave_border(rgb_to_y(hr), shave))


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, shave: int) -> torch.Tensor:
    """SSIM on the Y channel with a border shave (MATLAB ``ssim_index`` settings).

    Args, Returns and Raises as :func:`psnr_y`, with SSIM values in [-1, 1].
    """
    _check_pair(sr, hr)
    return ssim(shave_border(rgb_to_y(sr), shave), shave_border(rgb_to_y(hr), shave))
