"""MATLAB-compatible bicubic resize: torch version == loop reference == known MATLAB output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from srlib.imresize import (
    cubic_kernel,
    imresize,
    imresize_reference,
    output_size_for_scale,
    resize_weights,
)

SCALES = [1 / 2, 1 / 3, 1 / 4, 2, 3, 4, 0.7, 1.6]


def _random_uint8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def test_known_matlab_output_without_antialiasing():
    # imresize(reshape(0:15, 4, 4)', 0.5, 'bicubic', 'Antialiasing', false), as printed by
    # Octave's MATLAB-compatible imresize.
    image = torch.arange(16, dtype=torch.float64).reshape(4, 4)
    expected = torch.tensor([[2.1875, 4.3125], [10.6875, 12.8125]], dtype=torch.float64)
    torch.testing.assert_close(imresize(image, 0.5, antialias=False), expected, rtol=0, atol=1e-12)


def test_cubic_kernel_values():
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, -0.5], dtype=torch.float64)
    # Keys' kernel with a = -0.5: 1 at 0, 0 at the integers, 0.5625 at 0.5, -0.0625 at 1.5.
    expected = torch.tensor([1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0, 0.5625], dtype=torch.float64)
    torch.testing.assert_close(cubic_kernel(x), expected)


@pytest.mark.parametrize("scale", SCALES)
def test_weights_sum_to_one_and_indices_stay_inside(scale):
    in_size = 13
    out_size = output_size_for_scale(in_size, scale)
    weights, indices = resize_weights(in_size, out_size, scale)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert indices.min() >= 0 and indices.max() < in_size
    assert weights.shape == indices.shape and weights.shape[0] == out_size


@pytest.mark.parametrize("scale", SCALES)
def test_torch_equals_loop_reference_float64(scale):
    image = np.random.default_rng(1).random((11, 14, 3))
    ours = imresize(torch.from_numpy(image).permute(2, 0, 1), scale).permute(1, 2, 0).numpy()
    reference = imresize_reference(image, scale)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("round_each_pass", [False, True])
def test_torch_equals_loop_reference_uint8(scale, round_each_pass):
    image = _random_uint8((9, 16, 3))
    ours = imresize(torch.from_numpy(image).permute(2, 0, 1), scale, round_each_pass=round_each_pass)
    reference = imresize_reference(image, scale, round_each_pass=round_each_pass)
    assert ours.dtype == torch.uint8
    np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy(), reference)


def test_uint8_is_the_rounded_float_result():
    image = torch.from_numpy(_random_uint8((3, 20, 24)))
    as_float = imresize(image.double(), 0.5)
    expected = torch.floor(as_float.clamp(0, 255) + 0.5).to(torch.uint8)
    torch.testing.assert_close(imresize(image, 0.5), expected, rtol=0, atol=0)


def test_batched_equals_one_by_one():
    batch = torch.rand(4, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    together = imresize(batch, 1 / 2)
    for i in range(4):
        torch.testing.assert_close(together[i], imresize(batch[i], 1 / 2))


def test_size_argument_and_non_square_scales():
    image = torch.rand(1, 3, 15, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = imresize(image, size=(7, 11))
    assert out.shape == (1, 3, 7, 11)
    reference = imresize_reference(image[0].permute(1, 2, 0).numpy(), size=(7, 11))
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), reference, atol=1e-12)
    assert imresize(image, (0.5, 2.0)).shape == (1, 3, 8, 40)


def test_constant_image_stays_constant_and_ramp_is_reproduced():
    constant = torch.full((1, 8, 9), 0.25, dtype=torch.float64)
    for scale in (0.5, 1 / 3, 2, 3):
        torch.testing.assert_close(imresize(constant, scale), torch.full_like(imresize(constant, scale), 0.25))
    # Cubic convolution reproduces linear functions away from the borders.
    ramp = torch.arange(16, dtype=torch.float64).repeat(16, 1)
    up = imresize(ramp, 2)
    centres = (torch.arange(32, dtype=torch.float64) + 0.5) / 2 - 0.5  # input coordinate of each output column
    torch.testing.assert_close(up[5, 4:-4], centres[4:-4])


def test_float_input_keeps_dtype_and_is_not_clamped():
    image = torch.zeros(1, 8, 8, dtype=torch.float32)
    image[0, 3:5, 3:5] = 1.0
    up = imresize(image, 2)
    assert up.dtype == torch.float32
    assert up.min() < 0 and up.max() > 1  # cubic overshoot is kept


def test_gradcheck():
    image = torch.rand(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: imresize(x, 0.5), (image,))
    assert torch.autograd.gradcheck(lambda x: imresize(x, 2), (image,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    image = torch.from_numpy(_random_uint8((2, 3, 30, 40)))
    torch.testing.assert_close(imresize(image.cuda(), 0.25).cpu(), imresize(image, 0.25))


def test_bad_arguments():
    image = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(image)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(image, 0.5, size=(4, 4))
    with pytest.raises(ValueError, match="positive"):
        imresize(image, -2)
    with pytest.raises(TypeError, match="uint8 or floating"):
        imresize(image.to(torch.int32), 2)
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        imresize(torch.rand(5), 2)
