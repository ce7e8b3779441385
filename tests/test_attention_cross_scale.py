"""Cross-scale attention (CSNLN): every version against the loop version of its equation.

The loop versions (srlib.attention.loops) work on one position at a time, in
float64, with plain Python loops: they are slow and only meant for maps of a
few pixels, but each line reads like the equation it implements (paper eq. 3-4,
supplement eq. 2).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from srlib.attention import attention_entry
from srlib.attention.cross_scale import (
    AUTO_CONV_BYTES,
    AUTO_CONV_BYTES_PER_IMAGE,
    CHUNK_BYTES,
    CHUNK_QUERIES,
    MIN_CHUNK,
    NORMALIZATIONS,
    PAD_MODES,
    AttentionMemoryError,
    CrossScaleAttention,
    CrossScaleDetails,
    NaiveCrossScaleAttention,
    PixelCrossScaleAttention,
    bilinear_downscale,
    cross_scale_attention,
    cross_scale_attention_bytes,
    cross_scale_chunk_size,
    cross_scale_implementation,
    naive_cross_scale_attention,
    overlap_count,
    pad_to_multiple,
    pixel_cross_scale_attention,
)
from srlib.attention.loops import (
    bilinear_downscale_loops,
    cross_scale_eq4_loops,
    cross_scale_loops,
    naive_cross_scale_eq2_loops,
    naive_cross_scale_loops,
    pad_to_multiple_loops,
    pixel_cross_scale_eq3_loops,
    pixel_cross_scale_loops,
)

DTYPE = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The maps here are a few pixels: threads only add overhead, and on a busy shared CPU they can
    # make the gradient checks tens of times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_maps(n, c_qk, c_v, height, width, s, seed=0):
    """Query (N, Cq, H, W), key (N, Cq, ceil(H/s), ceil(W/s)), value (N, Cv, H, W), float64."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(n, c_qk, height, width, generator=g, dtype=DTYPE)
    key = torch.randn(n, c_qk, math.ceil(height / s), math.ceil(width / s), generator=g, dtype=DTYPE)
    value = torch.randn(n, c_v, height, width, generator=g, dtype=DTYPE)
    return query, key, value


# (N, C_qk, C_v, H, W, s): the divisible configurations of the brief
DIVISIBLE = [(2, 3, 2, 4, 6, 2), (2, 3, 2, 6, 6, 3)]
ODD = [(2, 3, 2, 5, 7, 2), (1, 2, 3, 7, 5, 3)]


# ----------------------------------------------------------------------------------------------
# Each version against its equation
# ----------------------------------------------------------------------------------------------


def test_naive_matches_eq2_loops():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 6, generator=g, dtype=DTYPE)
    y = bilinear_downscale(x, 2)  # (2, 3, 2, 3)
    value = torch.randn(2, 2, 2, 3, generator=g, dtype=DTYPE)  # psi(Y), other channel count
    out, attention = naive_cross_scale_attention(x, y, value, return_attention=True)
    expected, expected_attention = naive_cross_scale_eq2_loops(x, y, value)
    assert out.shape == (2, 2, 4, 6)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(attention, expected_attention, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n, c_qk, c_v, height, width, s", DIVISIBLE)
def test_pixel_version_matches_eq3_loops(n, c_qk, c_v, height, width, s):
    query, key, value = random_maps(n, c_qk, c_v, height, width, s, seed=2)
    out, attention = pixel_cross_scale_attention(query, key, value, s, return_attention=True)
    expected, expected_attention = pixel_cross_scale_eq3_loops(query, key, value, s)
    assert out.shape == (n, c_v, s * height, s * width)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(attention, expected_attention, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("p", [1, 3, 5])
@pytest.mark.parametrize("n, c_qk, c_v, height, width, s", DIVISIBLE)
def test_patch_version_matches_eq4_loops(n, c_qk, c_v, height, width, s, p):
    query, key, value = random_maps(n, c_qk, c_v, height, width, s, seed=3 + p)
    summed, count, expected_attention = cross_scale_eq4_loops(query, key, value, s, p)
    out, attention = cross_scale_attention(query, key, value, s, p, return_attention=True)
    assert out.shape == (n, c_v, s * height, s * width)
    torch.testing.assert_close(out, summed / count, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(attention, expected_attention, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(overlap_count(height, width, s, p, dtype=DTYPE), count, rtol=0, atol=0)
    out6 = cross_scale_attention(query, key, value, s, p, normalization="constant6")
    torch.testing.assert_close(out6, summed / 6.0, rtol=1e-10, atol=1e-12)


def test_eq4_with_p1_is_eq3():
    query, key, value = random_maps(2, 3, 2, 4, 6, 2, seed=4)
    summed, count, _ = cross_scale_eq4_loops(query, key, value, 2, 1)
    expected, _ = pixel_cross_scale_eq3_loops(query, key, value, 2)
    assert torch.all(count == 1)
    torch.testing.assert_close(summed, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n, c_qk, c_v, height, width, s", DIVISIBLE + ODD)
def test_patch_size_one_equals_pixel_version(n, c_qk, c_v, height, width, s):
    query, key, value = random_maps(n, c_qk, c_v, height, width, s, seed=5)
    out_patch, att_patch = cross_scale_attention(query, key, value, s, patch_size=1, return_attention=True)
    out_pixel, att_pixel = pixel_cross_scale_attention(query, key, value, s, return_attention=True)
    torch.testing.assert_close(out_patch, out_pixel, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(att_patch, att_pixel, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Overlap normalisation versus the official constant 6
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [2, 3])
def test_constant6_differs_from_overlap_by_count_over_6(s):
    height, width = 4, 5
    query, key, value = random_maps(2, 3, 2, height, width, s, seed=6)
    overlap = cross_scale_attention(query, key, value, s, 3, normalization="overlap")
    constant6 = cross_scale_attention(query, key, value, s, 3, normalization="constant6")
    # Per axis, p = 3: 2 patches cover the first and last s rows, 3 cover the others.
    def per_axis(length):
        c = torch.full((s * length,), 3.0, dtype=DTYPE)
        c[:s] = 2
        c[-s:] = 2
        return c

    torch.testing.assert_close(
        overlap_count(height, width, s, 3, dtype=DTYPE), torch.outer(per_axis(height), per_axis(width)), rtol=0, atol=0
    )  # 9 inside, 6 on the edges, 4 in the corners
    # 4x5 is not a multiple of s: the queries of the padded map (a multiple of s) also paste
    # patches, so the count that applies is that of the padded grid, cropped.
    padded_h, padded_w = math.ceil(height / s) * s, math.ceil(width / s) * s
    count = torch.outer(per_axis(padded_h), per_axis(padded_w))[: s * height, : s * width]
    torch.testing.assert_close(constant6, overlap * count / 6.0, rtol=1e-12, atol=1e-12)
    interior = (slice(None), slice(None), slice(s, -s), slice(s, -s))
    torch.testing.assert_close(constant6[interior], 1.5 * overlap[interior], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(constant6, overlap)


def test_overlap_normalised_output_is_convex_combination_of_values():
    # With a constant value map the overlap average returns the constant wherever no zero padding
    # enters a value patch; the division by 6 does not.
    query, key, _ = random_maps(1, 2, 1, 6, 6, 2, seed=7)
    value = torch.full((1, 1, 6, 6), 0.7, dtype=DTYPE)
    out = cross_scale_attention(query, key, value, 2, 1)
    torch.testing.assert_close(out, torch.full_like(out, 0.7), rtol=1e-12, atol=1e-12)
    out6 = cross_scale_attention(query, key, value, 2, 1, normalization="constant6")
    torch.testing.assert_close(out6, torch.full_like(out, 0.7 / 6), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Sizes that are not multiples of the scale, tiny maps, batches
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 3, 5])
@pytest.mark.parametrize("n, c_qk, c_v, height, width, s", ODD)
def test_odd_sizes_match_the_loop_version_on_padded_map(n, c_qk, c_v, height, width, s, p):
    query, key, value = random_maps(n, c_qk, c_v, height, width, s, seed=8)
    out, attention = cross_scale_attention(query, key, value, s, p, return_attention=True)
    assert out.shape == (n, c_v, s * height, s * width)
    assert attention.shape == (n, math.ceil(height / s) * math.ceil(width / s), height, width)
    padded_query, padded_value = pad_to_multiple_loops(query, s), pad_to_multiple_loops(value, s)
    summed, count, expected_attention = cross_scale_eq4_loops(padded_query, key, padded_value, s, p)
    expected = (summed / count)[..., : s * height, : s * width]
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(attention, expected_attention[..., :height, :width], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n, c_qk, c_v, height, width, s", ODD)
def test_odd_sizes_pixel_version_matches_eq3_on_padded_map(n, c_qk, c_v, height, width, s):
    query, key, value = random_maps(n, c_qk, c_v, height, width, s, seed=9)
    out = pixel_cross_scale_attention(query, key, value, s)
    expected, _ = pixel_cross_scale_eq3_loops(pad_to_multiple_loops(query, s), key, pad_to_multiple_loops(value, s), s)
    torch.testing.assert_close(out, expected[..., : s * height, : s * width], rtol=1e-10, atol=1e-12)


def test_reflect_padding_matches_the_loop_version_on_reflect_padded_map():
    query, key, value = random_maps(1, 2, 2, 5, 7, 2, seed=10)
    out = cross_scale_attention(query, key, value, 2, 3, pad_mode="reflect")
    padded_q = F.pad(query, (0, 1, 0, 1), mode="reflect")  # row 5 := row 3, column 7 := column 5
    padded_v = F.pad(value, (0, 1, 0, 1), mode="reflect")
    torch.testing.assert_close(padded_q[:, :, 5, :7], query[:, :, 3, :])
    summed, count, _ = cross_scale_eq4_loops(padded_q, key, padded_v, 2, 3)
    torch.testing.assert_close(out, (summed / count)[..., :10, :14], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("height, width, s, p", [(1, 1, 2, 3), (2, 1, 3, 5), (1, 3, 2, 5)])
def test_maps_smaller_than_the_patch_are_zero_padded(height, width, s, p):
    query, key, value = random_maps(2, 2, 2, height, width, s, seed=11)
    out = cross_scale_attention(query, key, value, s, p)
    assert out.shape == (2, 2, s * height, s * width)
    summed, count, _ = cross_scale_eq4_loops(
        pad_to_multiple_loops(query, s), key, pad_to_multiple_loops(value, s), s, p
    )
    torch.testing.assert_close(out, (summed / count)[..., : s * height, : s * width], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("function", ["patch", "pixel", "naive"])
def test_batch_equals_images_one_by_one(function):
    query, key, value = random_maps(4, 3, 2, 5, 6, 2, seed=12)
    run = {
        "patch": lambda q, k, v: cross_scale_attention(q, k, v, 2, 3),
        "pixel": lambda q, k, v: pixel_cross_scale_attention(q, k, v, 2),
        "naive": lambda q, k, v: naive_cross_scale_attention(q, k, v[..., :3, :3]),
    }[function]
    batched = run(query, key, value)
    one_by_one = torch.cat([run(query[i : i + 1], key[i : i + 1], value[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation, chunk_size", [("conv", None), ("matmul", None), ("matmul", 5)])
@pytest.mark.parametrize("height, width, s, p", [(4, 4, 2, 3), (3, 5, 2, 3), (4, 2, 2, 1), (4, 5, 3, 3)])
def test_gradcheck_patch_version(height, width, s, p, implementation, chunk_size):
    # chunk_size=5 never divides the padded map (16, 24, 16 and 36 queries) and starts chunks inside rows.
    query, key, value = random_maps(2, 2, 1, height, width, s, seed=13)
    inputs = tuple(t.mul(0.3).requires_grad_() for t in (query, key, value))
    assert torch.autograd.gradcheck(
        lambda q, k, v: cross_scale_attention(q, k, v, s, p, implementation=implementation, chunk_size=chunk_size),
        inputs,
    )


def test_gradcheck_pixel_and_naive_versions():
    query, key, value = random_maps(1, 2, 2, 3, 4, 2, seed=14)
    inputs = tuple(t.mul(0.3).requires_grad_() for t in (query, key, value))
    assert torch.autograd.gradcheck(lambda q, k, v: pixel_cross_scale_attention(q, k, v, 2), inputs)
    small_value = value[..., :2, :2].mul(0.3).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda q, k, v: naive_cross_scale_attention(q, k, v), (inputs[0], inputs[1], small_value)
    )


def test_gradcheck_module():
    torch.manual_seed(0)
    module = CrossScaleAttention(4, scale=2, patch_size=3).double()
    x = torch.randn(2, 4, 3, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(15)).requires_grad_()
    assert torch.autograd.gradcheck(module, (x,))


# ----------------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------------


def official_style_pipeline(module: CrossScaleAttention, x: torch.Tensor) -> torch.Tensor:
    """The released algorithm as described in the notes: one image at a time, conv / conv_transpose, / 6.

    Only valid when H and W are multiples of the scale (the released code's restriction).
    """
    s = module.scale
    outputs = []
    for image in x.split(1):
        query = module.query_embed(image)  # (1, C', H, W)
        key = module.key_embed(F.interpolate(image, scale_factor=1 / s, mode="bilinear", align_corners=False))
        value = module.value_embed(image)  # (1, C, H, W)
        kernels = F.unfold(key, 3, padding=1)[0].t()  # (h*w, C'*9)
        kernels = kernels / kernels.norm(dim=1, keepdim=True).clamp_min(1e-4)
        kernels = kernels.reshape(-1, key.shape[1], 3, 3)  # (h*w, C', 3, 3)
        scores = F.conv2d(F.pad(query, (1, 1, 1, 1)), kernels)  # (1, h*w, H, W)
        weights = F.softmax(scores * module.softmax_scale, dim=1)
        patches = F.unfold(value, 3 * s, stride=s, padding=s)[0].t()  # (h*w, C*9s^2)
        patches = patches.reshape(-1, value.shape[1], 3 * s, 3 * s)
        outputs.append(F.conv_transpose2d(weights, patches, stride=s, padding=s) / 6.0)
    return torch.cat(outputs)


@pytest.mark.parametrize("implementation", ["matmul", "conv"])
@pytest.mark.parametrize("s", [2, 3])
def test_module_constant6_matches_official_style_pipeline(s, implementation):
    torch.manual_seed(1)
    module = CrossScaleAttention(4, scale=s, patch_size=3, normalization="constant6", implementation=implementation)
    module = module.double()
    x = torch.randn(3, 4, 2 * s, 3 * s, dtype=DTYPE, generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        torch.testing.assert_close(module(x), official_style_pipeline(module, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n, height, width, s", [(1, 5, 7, 2), (3, 7, 5, 3), (2, 8, 8, 4)])
def test_module_any_size_and_batch(n, height, width, s):
    torch.manual_seed(2)
    module = CrossScaleAttention(8, scale=s)
    x = torch.rand(n, 8, height, width, generator=torch.Generator().manual_seed(17))
    with torch.no_grad():
        out, details = module(x, return_details=True)
        assert isinstance(details, CrossScaleDetails)
        assert details.key_size == (math.ceil(height / s), math.ceil(width / s))
        attention = details.weights
        assert out.shape == (n, 8, s * height, s * width)
        assert out.dtype == torch.float32
        assert attention.shape == (n, math.ceil(height / s) * math.ceil(width / s), height, width)
        torch.testing.assert_close(attention.sum(dim=1), torch.ones(n, height, width))
        one_by_one = torch.cat([module(x[i : i + 1]) for i in range(n)])
        torch.testing.assert_close(out, one_by_one, rtol=1e-5, atol=1e-6)


def test_module_structure_and_options():
    module = CrossScaleAttention(16, scale=3, reduction=4, activation="none")
    assert module.query_embed[0].out_channels == 4
    assert module.key_embed[0].out_channels == 4
    assert module.value_embed[0].out_channels == 16
    assert len(module.query_embed) == 1  # no activation
    prelu = CrossScaleAttention(16)
    assert isinstance(prelu.value_embed[1], torch.nn.PReLU)
    assert "patch_size=3" in repr(prelu)
    with pytest.raises(ValueError, match=r"expects x as a \(N, 16, H, W\) feature map, got \(1, 8, 4, 4\)"):
        prelu(torch.rand(1, 8, 4, 4))
    for bad in [{"patch_size": 2}, {"scale": 0}, {"reduction": 32}, {"normalization": "mean"},
                {"activation": "gelu"}, {"pad_mode": "zeros"}, {"softmax_scale": 0.0},
                {"max_attention_bytes": -1}]:
        with pytest.raises(ValueError):
            CrossScaleAttention(16, **bad)


def random_module(cls, seed=0, **options):
    """A float64 module in eval mode with random PReLU slopes (a misplaced activation would show)."""
    torch.manual_seed(seed)
    module = cls(4, **options).double().eval()
    with torch.no_grad():
        for layer in (module.query_embed, module.key_embed, module.value_embed):
            if len(layer) > 1:
                layer[1].weight.uniform_(0.05, 0.5)
    return module


@pytest.mark.parametrize(
    ("name", "cls", "loops", "options"),
    [
        ("cross_scale", CrossScaleAttention, cross_scale_loops, {"scale": 2}),
        ("cross_scale", CrossScaleAttention, cross_scale_loops, {"scale": 3, "normalization": "constant6"}),
        ("cross_scale", CrossScaleAttention, cross_scale_loops, {"scale": 2, "patch_size": 1, "pad_mode": "reflect"}),
        ("cross_scale", CrossScaleAttention, cross_scale_loops, {"scale": 2, "activation": "none"}),
        ("cross_scale_pixel", PixelCrossScaleAttention, pixel_cross_scale_loops, {"scale": 2}),
        ("cross_scale_pixel", PixelCrossScaleAttention, pixel_cross_scale_loops, {"scale": 3, "pad_mode": "reflect"}),
        ("cross_scale_naive", NaiveCrossScaleAttention, naive_cross_scale_loops, {"scale": 2}),
        ("cross_scale_naive", NaiveCrossScaleAttention, naive_cross_scale_loops, {"scale": 3, "softmax_scale": 5.0}),
    ],
)
@pytest.mark.parametrize("size", [(4, 6), (5, 7)])  # 5x7 is not a multiple of the scale
def test_module_equals_its_registered_loop_version_in_float64(name, cls, loops, options, size):
    assert attention_entry(name).loops is loops  # the registry's lazy "srlib.attention.loops:..." path
    module = random_module(cls, **options)
    x = torch.randn(2, 4, *size, generator=torch.Generator().manual_seed(23), dtype=DTYPE)
    with torch.no_grad():
        out = module(x)
        expected = loops(module, x)
    s = module.scale
    assert out.shape == ((2, 4, *size) if cls is NaiveCrossScaleAttention else (2, 4, s * size[0], s * size[1]))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_modules_return_details_and_pixel_equals_patch_size_one():
    x = torch.randn(1, 4, 5, 6, generator=torch.Generator().manual_seed(24), dtype=DTYPE)
    pixel = random_module(PixelCrossScaleAttention, scale=2)
    patch = CrossScaleAttention(4, scale=2, patch_size=1).double().eval()
    patch.load_state_dict(pixel.state_dict())  # same layers, same checkpoint keys
    naive = NaiveCrossScaleAttention(4, scale=2).double().eval()
    naive.load_state_dict(pixel.state_dict())
    with torch.no_grad():
        out, details = pixel(x, return_details=True)
        torch.testing.assert_close(out, patch(x), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out, pixel(x))
        assert details.weights.shape == (1, 3 * 3, 5, 6) and details.key_size == (3, 3)
        naive_out, naive_details = naive(x, return_details=True)
        assert naive_out.shape == (1, 4, 5, 6) and naive_details.weights.shape == (1, 9, 5, 6)
        torch.testing.assert_close(naive_details.weights.sum(1), torch.ones(1, 5, 6, dtype=DTYPE))


# ----------------------------------------------------------------------------------------------
# Downscaling and padding helpers
# ----------------------------------------------------------------------------------------------


def test_bilinear_downscale_is_block_mean_at_x2_and_centre_pick_at_x3():
    x = torch.randn(2, 3, 6, 12, generator=torch.Generator().manual_seed(18), dtype=DTYPE)
    torch.testing.assert_close(bilinear_downscale(x, 2), F.avg_pool2d(x, 2))
    torch.testing.assert_close(bilinear_downscale(x, 3), x[..., 1::3, 1::3])
    odd = x[..., :5, :7]
    assert bilinear_downscale(odd, 2).shape == (2, 3, 3, 4)
    torch.testing.assert_close(bilinear_downscale(odd, 2), F.avg_pool2d(pad_to_multiple_loops(odd, 2), 2))


@pytest.mark.parametrize("s", [1, 2, 3, 4])
@pytest.mark.parametrize("pad_mode", ["replicate", "reflect"])
def test_bilinear_downscale_equals_its_loop_version(s, pad_mode):
    x = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(25), dtype=DTYPE)
    torch.testing.assert_close(
        bilinear_downscale(x, s, pad_mode), bilinear_downscale_loops(x, s, pad_mode), rtol=1e-12, atol=1e-12
    )


def test_pad_to_multiple():
    x = torch.arange(15.0).view(1, 1, 3, 5)
    even = x[..., :2, :4]
    assert pad_to_multiple(even, 2) is even and pad_to_multiple(x, 1) is x  # nothing to pad
    reflected = pad_to_multiple(x, 2, mode="reflect")  # row 3 := row 1, column 5 := column 3
    torch.testing.assert_close(reflected[0, 0, 3, :5], x[0, 0, 1])
    torch.testing.assert_close(reflected[0, 0, :3, 5], x[0, 0, :, 3])
    padded = pad_to_multiple(x, 2)
    assert padded.shape == (1, 1, 4, 6)
    torch.testing.assert_close(padded.double(), pad_to_multiple_loops(x, 2))  # the loop versions are float64
    torch.testing.assert_close(reflected.double(), pad_to_multiple_loops(x, 2, mode="reflect"))
    with pytest.raises(ValueError, match="replicate"):
        pad_to_multiple(torch.zeros(1, 1, 1, 4), 3, mode="reflect")


# ----------------------------------------------------------------------------------------------
# Memory guard
# ----------------------------------------------------------------------------------------------


def test_attention_bytes_counts_scores_and_weights():
    # 5x7 at s=2: 3*4 = 12 keys, 6*8 = 48 padded queries; scores and weights, float64.
    assert cross_scale_attention_bytes(2, 5, 7, 2, torch.float64) == 2 * 2 * 12 * 48 * 8
    query, key, value = random_maps(2, 2, 2, 6, 8, 2, seed=19)
    _, attention = cross_scale_attention(query, key, value, 2, return_attention=True)
    assert cross_scale_attention_bytes(2, 6, 8, 2, DTYPE) == 2 * attention.numel() * attention.element_size()


def test_memory_guard_raises_before_computing():
    # The paths that hold the whole score map: eq. 3 and eq. 4 with implementation="conv".
    query, key, value = random_maps(2, 2, 2, 5, 7, 2, seed=20)
    needed = cross_scale_attention_bytes(2, 5, 7, 2, DTYPE)
    cross_scale_attention(query, key, value, 2, max_attention_bytes=needed, implementation="conv")  # at the limit
    with pytest.raises(AttentionMemoryError) as info:
        cross_scale_attention(query, key, value, 2, max_attention_bytes=needed - 1, implementation="conv")
    message = str(info.value)
    assert isinstance(info.value, MemoryError)
    assert "5x7" in message and str(needed) in message and "srlib eval --tile" in message and "fits" in message
    assert info.value.needed_bytes == needed and info.value.limit_bytes == needed - 1
    for run in (
        lambda: pixel_cross_scale_attention(query, key, value, 2, max_attention_bytes=needed - 1),
        lambda: naive_cross_scale_attention(query, key, key, max_attention_bytes=100),
        lambda: CrossScaleAttention(2, max_attention_bytes=1000, implementation="conv")(torch.rand(1, 2, 8, 8)),
    ):
        with pytest.raises(AttentionMemoryError, match="tile"):
            run()


def test_default_memory_limit_refuses_a_huge_map_without_allocating():
    # A 4000x4000 map at x2 would need 4e6 keys x 1.6e7 queries: about 0.5 PB of scores. The
    # inputs are broadcast views (no memory), so only the guard can stop this quickly.
    query = torch.zeros(1, 1, 1, 1).expand(1, 2, 4000, 4000)
    key = torch.zeros(1, 1, 1, 1).expand(1, 2, 2000, 2000)
    with pytest.raises(AttentionMemoryError, match="4000x4000"):
        cross_scale_attention(query, key, query, 2, implementation="conv")


def test_default_memory_limit_follows_available_memory(monkeypatch):
    from srlib.attention import _common

    query, key, value = random_maps(1, 2, 2, 4, 4, 2, seed=21)
    needed = cross_scale_attention_bytes(1, 4, 4, 2, DTYPE)
    monkeypatch.setattr(_common, "available_memory_bytes", lambda device: needed)  # limit = needed / 2
    with pytest.raises(AttentionMemoryError, match="available"):
        cross_scale_attention(query, key, value, 2, implementation="conv")
    per_query = 1 * (2 * 4 + 2 * 2 * 36) * 8  # matmul: scores, weights and value patches of one query
    with pytest.raises(AttentionMemoryError, match="available"):
        cross_scale_attention(query, key, value, 2)  # not even one query fits in needed / 2
    monkeypatch.setattr(_common, "available_memory_bytes", lambda device: 2 * 3 * per_query)  # 3 queries fit
    torch.testing.assert_close(
        cross_scale_attention(query, key, value, 2),
        cross_scale_attention(query, key, value, 2, implementation="conv", max_attention_bytes=math.inf),
    )
    monkeypatch.setattr(_common, "available_memory_bytes", lambda device: None)  # unknown: no guard
    assert cross_scale_attention(query, key, value, 2, implementation="conv").shape == (1, 2, 8, 8)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_bad_input_raises_one_clear_error():
    query, key, value = random_maps(2, 3, 2, 4, 6, 2, seed=22)
    with pytest.raises(ValueError, match="odd"):
        cross_scale_attention(query, key, value, 2, patch_size=2)
    with pytest.raises(ValueError, match="normalization"):
        cross_scale_attention(query, key, value, 2, normalization="count")
    with pytest.raises(ValueError, match="pad_mode"):
        cross_scale_attention(query, key, value, 2, pad_mode="circular")
    with pytest.raises(ValueError, match="bilinear_downscale"):
        cross_scale_attention(query, query, value, 2)  # full-resolution keys
    with pytest.raises(ValueError, match="channels"):
        cross_scale_attention(query, key[:, :2], value, 2)
    with pytest.raises(ValueError, match="batch"):
        cross_scale_attention(query, key[:1], value, 2)
    with pytest.raises(ValueError, match="dtype"):
        cross_scale_attention(query, key.float(), value, 2)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        cross_scale_attention(query[0], key, value, 2)
    with pytest.raises(ValueError, match="empty"):
        cross_scale_attention(query[..., :0, :], key, value, 2)
    with pytest.raises(ValueError, match="softmax_scale"):
        pixel_cross_scale_attention(query, key, value, 2, softmax_scale=float("nan"))
    with pytest.raises(ValueError, match="same size"):
        naive_cross_scale_attention(query, key, value)
    with pytest.raises(ValueError, match="max_attention_bytes"):
        cross_scale_attention(query, key, value, 2, max_attention_bytes=0)


# ----------------------------------------------------------------------------------------------
# The two implementations of eq. 4: chunked matrix products and the convolutions ("auto" picks one)
# ----------------------------------------------------------------------------------------------

# (N, C_qk, C_v, H, W, s): multiples of s, sizes that are not, tiny maps, s = 4
IMPLEMENTATION_SHAPES = DIVISIBLE + ODD + [(1, 2, 2, 1, 1, 2), (3, 2, 1, 4, 13, 4), (1, 1, 2, 9, 8, 3)]


@pytest.mark.parametrize("p", [1, 3, 5])
@pytest.mark.parametrize("n, c_qk, c_v, height, width, s", IMPLEMENTATION_SHAPES)
def test_matmul_equals_conv_in_float64(n, c_qk, c_v, height, width, s, p):
    query, key, value = random_maps(n, c_qk, c_v, height, width, s, seed=30 + p)
    queries = math.ceil(height / s) * s * math.ceil(width / s) * s  # Hp * Wp
    for normalization in NORMALIZATIONS:
        expected, expected_attention = cross_scale_attention(
            query, key, value, s, p, normalization=normalization, return_attention=True, implementation="conv"
        )
        # None: one chunk; 1: one query per chunk; 5 and 7 divide none of the padded maps here.
        # ("auto" would take the convolutions on these small maps without a chunk size.)
        for chunk_size in (None, 1, 5, 7, queries - 1, queries + 3):
            out, attention = cross_scale_attention(
                query, key, value, s, p, normalization=normalization, return_attention=True,
                implementation="matmul", chunk_size=chunk_size,
            )
            torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(attention, expected_attention, rtol=1e-12, atol=1e-12)
            assert attention.shape == (n, math.ceil(height / s) * math.ceil(width / s), height, width)
        for pad_mode in PAD_MODES if min(height, width) > s else ("replicate",):
            torch.testing.assert_close(
                cross_scale_attention(query, key, value, s, p, normalization=normalization, pad_mode=pad_mode,
                                      chunk_size=5),
                cross_scale_attention(query, key, value, s, p, normalization=normalization, pad_mode=pad_mode,
                                      implementation="conv"),
                rtol=1e-12, atol=1e-12,
            )


@pytest.mark.parametrize("p", [1, 3])
def test_matmul_matches_the_eq4_loops_with_chunks_that_cut_rows(p):
    query, key, value = random_maps(2, 3, 2, 5, 7, 2, seed=31)
    summed, count, expected_attention = cross_scale_eq4_loops(
        pad_to_multiple_loops(query, 2), key, pad_to_multiple_loops(value, 2), 2, p
    )
    out, attention = cross_scale_attention(query, key, value, 2, p, return_attention=True, chunk_size=11)
    torch.testing.assert_close(out, (summed / count)[..., :10, :14], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(attention, expected_attention[..., :5, :7], rtol=1e-10, atol=1e-12)


def test_row_pieces_cover_a_range_with_at_most_three_rectangles():
    from srlib.attention.cross_scale import _row_pieces

    width = 6
    for start in range(30):
        for stop in range(start + 1, 31):
            pieces = list(_row_pieces(start, stop, width))
            assert len(pieces) <= 3
            positions = [
                (row + dr) * width + column + dc
                for _, row, column, rows, columns in pieces for dr in range(rows) for dc in range(columns)
            ]
            assert positions == list(range(start, stop))  # in order, each once
            assert [offset for offset, *_ in pieces] == [sum(r * c for *_, r, c in pieces[:i]) for i in range(len(pieces))]


class _LargestStorage(TorchDispatchMode):
    """Records the largest storage (in elements) of any tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_matmul_never_holds_the_whole_score_map(chunk_size):
    # 32x32 at s = 2: 256 keys x 1024 queries = 262144 scores. In chunks the largest tensors are
    # the ones that grow with the map (unfolded patches, output), under a quarter of that.
    query, key, value = random_maps(1, 2, 2, 32, 32, 2, seed=32)
    full = 256 * 1024
    with torch.no_grad():
        with _LargestStorage() as conv:
            expected = cross_scale_attention(query, key, value, 2, 3, implementation="conv")
        with _LargestStorage() as matmul:
            out = cross_scale_attention(query, key, value, 2, 3, chunk_size=chunk_size)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert conv.largest >= full  # the (N, h*w, Hp, Wp) scores
    assert chunk_size * 256 <= matmul.largest < full // 4


def test_chunk_size_fits_the_limit_instead_of_refusing():
    # 5x7 at s = 2, p = 3, C = 2, N = 2: 12 keys; one query needs 2 * (2*12 + 2*2*36) * 8 = 2688 bytes.
    per_query = 2 * (2 * 12 + 2 * 2 * 36) * 8
    assert cross_scale_chunk_size(2, 5, 7, 2, 3, 2, DTYPE, max_attention_bytes=math.inf) == 48  # whole map
    assert cross_scale_chunk_size(2, 5, 7, 2, 3, 2, DTYPE, max_attention_bytes=math.inf, chunk_size=5) == 5
    assert cross_scale_chunk_size(2, 5, 7, 2, 3, 2, DTYPE, max_attention_bytes=3 * per_query) == 3
    assert cross_scale_chunk_size(2, 5, 7, 2, 3, 2, DTYPE, max_attention_bytes=3 * per_query, chunk_size=2) == 2
    assert cross_scale_chunk_size(2, 5, 7, 2, 3, 2, DTYPE, max_attention_bytes=per_query) == 1
    whole = 2 * 12 * 48 * 8  # one (N, h*w, Hp, Wp) float64 weight map
    assert cross_scale_chunk_size(
        2, 5, 7, 2, 3, 2, DTYPE, max_attention_bytes=whole + 2 * per_query, whole_weight_maps=1
    ) == 2
    # Default chunk: CHUNK_QUERIES, fewer when their scores exceed CHUNK_BYTES, at least MIN_CHUNK, at most the map.
    assert cross_scale_chunk_size(1, 150, 150, 2, 3, 64, torch.float32, max_attention_bytes=math.inf) == CHUNK_QUERIES
    side = 2 * math.ceil(math.sqrt(CHUNK_BYTES / (4 * CHUNK_QUERIES))) + 20  # more keys than CHUNK_BYTES allows for CHUNK_QUERIES
    keys = (side // 2) ** 2
    assert cross_scale_chunk_size(1, side, side, 2, 3, 64, torch.float32, max_attention_bytes=math.inf) == (
        CHUNK_BYTES // (keys * 4)
    ) < CHUNK_QUERIES
    assert cross_scale_chunk_size(1, 3000, 3000, 2, 3, 64, torch.float32, max_attention_bytes=math.inf) == MIN_CHUNK
    # The guard picks the chunk: a limit far below the whole map still gives the same output.
    query, key, value = random_maps(2, 2, 2, 15, 16, 2, seed=33)  # 64 keys, 256 padded queries
    per_query = 2 * (2 * 64 + 2 * 2 * 36) * 8
    assert cross_scale_chunk_size(2, 15, 16, 2, 3, 2, DTYPE, max_attention_bytes=3 * per_query) == 3
    assert cross_scale_attention_bytes(2, 15, 16, 2, DTYPE) > 40 * 3 * per_query
    torch.testing.assert_close(
        cross_scale_attention(query, key, value, 2, max_attention_bytes=3 * per_query),
        cross_scale_attention(query, key, value, 2, implementation="conv"), rtol=1e-12, atol=1e-12,
    )


def test_matmul_refuses_when_not_even_one_query_fits():
    query, key, value = random_maps(2, 2, 2, 5, 7, 2, seed=34)
    per_query = 2 * (2 * 12 + 2 * 2 * 36) * 8
    cross_scale_attention(query, key, value, 2, max_attention_bytes=per_query)  # one query per chunk: fine
    with pytest.raises(AttentionMemoryError) as info:
        cross_scale_attention(query, key, value, 2, max_attention_bytes=per_query - 1)
    message = str(info.value)
    assert "5x7" in message and "single query" in message and "srlib eval --tile" in message
    assert info.value.needed_bytes == per_query and info.value.limit_bytes == per_query - 1
    # Under autograd every chunk's weights are kept for the backward pass: the guard counts them.
    whole = 2 * 12 * 48 * 8
    leaf = query.clone().requires_grad_()
    with torch.no_grad():
        cross_scale_attention(leaf, key, value, 2, max_attention_bytes=per_query)
    with pytest.raises(AttentionMemoryError, match="backward pass") as info:
        cross_scale_attention(leaf, key, value, 2, max_attention_bytes=per_query)
    assert info.value.needed_bytes == whole + per_query
    out = cross_scale_attention(leaf, key, value, 2, max_attention_bytes=whole + per_query)
    out.sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    # A huge map (broadcast views: no memory) is refused at once when one query does not fit.
    big_query = torch.zeros(1, 1, 1, 1).expand(1, 2, 4000, 4000)
    big_key = torch.zeros(1, 1, 1, 1).expand(1, 2, 2000, 2000)
    with pytest.raises(AttentionMemoryError, match="4000x4000"):
        cross_scale_attention(big_query, big_key, big_query, 2, max_attention_bytes=2**20)


def test_auto_takes_the_convolutions_only_for_small_maps_that_fit():
    mib = 2**20
    # float32, x2: a T x T map holds 2 (T/2)^2 T^2 scores and weights, 4 bytes each.
    assert cross_scale_attention_bytes(1, 48, 48, 2) <= AUTO_CONV_BYTES_PER_IMAGE < cross_scale_attention_bytes(1, 64, 64, 2)
    assert cross_scale_implementation(1, 48, 48, 2, max_attention_bytes=math.inf) == "conv"  # CSNLN's tiles
    assert cross_scale_implementation(16, 24, 24, 2, max_attention_bytes=math.inf) == "conv"  # its training batch
    assert cross_scale_implementation(1, 64, 64, 2, max_attention_bytes=math.inf) == "matmul"  # 32 MiB per image
    assert cross_scale_implementation(1, 150, 150, 2, max_attention_bytes=math.inf) == "matmul"
    # A batch of small maps that is large in all, an explicit chunk size, a limit below the map.
    per_image = cross_scale_attention_bytes(1, 32, 32, 2)
    assert 16 * per_image <= AUTO_CONV_BYTES < 200 * per_image
    assert cross_scale_implementation(16, 32, 32, 2, max_attention_bytes=math.inf) == "conv"
    assert cross_scale_implementation(200, 32, 32, 2, max_attention_bytes=math.inf) == "matmul"
    assert cross_scale_implementation(1, 32, 32, 2, max_attention_bytes=math.inf, chunk_size=100) == "matmul"
    assert cross_scale_implementation(1, 32, 32, 2, max_attention_bytes=per_image) == "conv"
    assert cross_scale_implementation(1, 32, 32, 2, max_attention_bytes=per_image - 1) == "matmul"
    assert cross_scale_implementation(1, 32, 32, 2, torch.float64, max_attention_bytes=math.inf) == "conv"
    assert AUTO_CONV_BYTES == 256 * mib
    with pytest.raises(ValueError, match="chunk_size"):
        cross_scale_implementation(1, 8, 8, 2, chunk_size=0)
    # "auto" computes what both do, and follows the limit (the matmul path fits its chunks).
    query, key, value = random_maps(2, 2, 3, 9, 10, 2, seed=36)
    expected = cross_scale_attention(query, key, value, 2, implementation="conv")
    torch.testing.assert_close(cross_scale_attention(query, key, value, 2), expected, rtol=1e-12, atol=1e-12)
    small = cross_scale_attention_bytes(2, 9, 10, 2, DTYPE) // 8
    torch.testing.assert_close(
        cross_scale_attention(query, key, value, 2, max_attention_bytes=small), expected, rtol=1e-12, atol=1e-12
    )
    with pytest.raises(AttentionMemoryError):
        cross_scale_attention(query, key, value, 2, implementation="conv", max_attention_bytes=small)


def test_implementation_options_and_registry_cases():
    query, key, value = random_maps(1, 2, 2, 4, 4, 2, seed=35)
    with pytest.raises(ValueError, match="implementation"):
        cross_scale_attention(query, key, value, 2, implementation="fft")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            cross_scale_attention(query, key, value, 2, chunk_size=bad)
    with pytest.raises(ValueError, match="implementation"):
        CrossScaleAttention(4, implementation="loops")
    with pytest.raises(ValueError, match="chunk_size"):
        CrossScaleAttention(4, chunk_size=0)
    module = CrossScaleAttention(4)
    assert module.implementation == "auto" and not module.memory_guarded
    assert "implementation='auto'" in repr(module)
    assert not CrossScaleAttention(4, implementation="matmul").memory_guarded
    conv = CrossScaleAttention(4, implementation="conv")
    assert conv.memory_guarded
    assert set(module.state_dict()) == set(conv.state_dict())  # the option is not in the checkpoint
    bench = attention_entry("cross_scale").bench
    assert bench["cross_scale"]["implementation"] == "matmul"  # named: "auto" would switch with S
    assert bench["cross_scale_conv"]["implementation"] == "conv"
    assert bench["cross_scale_conv"]["scale"] == bench["cross_scale"]["scale"] == 2
    assert bench["cross_scale_conv"]["patch_size"] == bench["cross_scale"]["patch_size"] == 3


def test_both_implementations_give_the_recorded_outputs_of_the_shipped_csnln():
    # The recorded outputs were made with the convolution formulation (before the matrix-product
    # path existed); both must reproduce them, also with chunks that cut the 14x18 padded rows.
    from pathlib import Path

    from srlib.checkpoint import model_from_checkpoint

    root = Path(__file__).resolve().parent
    recorded = torch.load(root / "data" / "shipped_checkpoint_outputs.pt", weights_only=True)
    model = model_from_checkpoint(root.parent / "data" / "checkpoints" / "csnln_x2.pt", expected_model="csnln")
    attentions = [m for m in model.modules() if isinstance(m, CrossScaleAttention)]
    assert attentions and all(m.implementation == "auto" for m in attentions)
    for implementation, chunk_size in (("auto", None), ("matmul", None), ("matmul", 37), ("conv", None)):
        for m in attentions:
            m.implementation, m.chunk_size = implementation, chunk_size
        with torch.no_grad():
            out = model(recorded["lr"])  # (2, 3, 28, 34)
        torch.testing.assert_close(out, recorded["csnln_x2"], atol=1e-6, rtol=0)
