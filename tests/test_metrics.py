"""Y-channel PSNR/SSIM: the definitions, MATLAB's rgb2ycbcr, and scikit-image cross-checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from srlib.metrics import psnr, psnr_y, quantize, rgb_to_y, shave_border, ssim, ssim_y


def _pair(seed=0, shape=(3, 40, 50), noise=12.0):
    g = torch.Generator().manual_seed(seed)
    hr = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    noisy = (hr.double() + noise * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 255).round()
    return noisy.to(torch.uint8), hr


def test_y_matches_matlab_formula_and_skimage():
    sr, _ = _pair()
    r, g, b = sr.double()
    # MATLAB's rgb2ycbcr for uint8: imlincomb(T/255 ..., offset) -> coefficients scaled first, offset last.
    expected = torch.floor((65.481 / 255) * r + (128.553 / 255) * g + (24.966 / 255) * b + 16 + 0.5)
    torch.testing.assert_close(rgb_to_y(sr), expected, rtol=0, atol=0)
    # skimage's rgb2ycbcr uses the same BT.601 matrix on [0, 1] input (unrounded Y).
    sk = rgb2ycbcr(sr.permute(1, 2, 0).numpy().astype(np.float64) / 255)[..., 0]
    np.testing.assert_allclose(rgb_to_y(sr, round_to_uint8=False).numpy(), sk, atol=1e-9)
    assert rgb_to_y(sr).min() >= 16 and rgb_to_y(sr).max() <= 235


def test_float_input_is_quantised_like_a_saved_png():
    sr, _ = _pair()
    as_float = sr.float() / 255
    torch.testing.assert_close(rgb_to_y(as_float), rgb_to_y(sr), rtol=0, atol=0)
    torch.testing.assert_close(quantize(torch.tensor([0.0, 0.5 / 255, 1.2, -0.1])),
                               torch.tensor([0.0, 1.0, 255.0, 0.0], dtype=torch.float64))


def test_psnr_matches_definition_and_skimage():
    sr, hr = _pair()
    a, b = rgb_to_y(sr), rgb_to_y(hr)
    mse = ((a - b) ** 2).mean().item()
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-12)
    assert psnr(a, b).item() == pytest.approx(peak_signal_noise_ratio(b.numpy(), a.numpy(), data_range=255), abs=1e-10)
    assert math.isinf(psnr(a, a).item())


def test_ssim_matches_skimage_gaussian_settings():
    sr, hr = _pair(noise=25.0)
    a, b = rgb_to_y(sr), rgb_to_y(hr)
    sk = structural_similarity(a.numpy(), b.numpy(), data_range=255, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False)
    assert ssim(a, b).item() == pytest.approx(sk, abs=1e-10)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-12)


def test_batch_gives_per_image_scores_not_pooled_error():
    sr1, hr1 = _pair(seed=1, noise=4.0)
    sr2, hr2 = _pair(seed=2, noise=30.0)
    batch_sr, batch_hr = torch.stack([sr1, sr2]), torch.stack([hr1, hr2])
    per_image = psnr_y(batch_sr, batch_hr, shave=2)
    assert per_image.shape == (2,)
    torch.testing.assert_close(per_image, torch.stack([psnr_y(sr1, hr1, 2), psnr_y(sr2, hr2, 2)]))
    pooled = psnr(shave_border(rgb_to_y(batch_sr), 2).reshape(1, -1, 46),
                  shave_border(rgb_to_y(batch_hr), 2).reshape(1, -1, 46))
    assert abs(per_image.mean().item() - pooled.item()) > 0.5  # the two conventions really differ here
    torch.testing.assert_close(ssim_y(batch_sr, batch_hr, 2), torch.stack([ssim_y(sr1, hr1, 2), ssim_y(sr2, hr2, 2)]))


def test_shave_cuts_each_border():
    image = torch.arange(36.0).reshape(6, 6)
    torch.testing.assert_close(shave_border(image, 2), image[2:4, 2:4])
    assert shave_border(image, 0) is image
    with pytest.raises(ValueError, match="too small"):
        shave_border(image, 3)


def test_bad_input_is_explained():
    sr, hr = _pair()
    with pytest.raises(ValueError, match="same shape"):
        psnr_y(sr[:, :-1], hr, 2)
    with pytest.raises(ValueError, match="RGB"):
        rgb_to_y(sr[:1])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(8, 8), torch.zeros(8, 8))
