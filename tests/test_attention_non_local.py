"""In-scale non-local attention (CSNLN eq. 1-2) against the float64 loop versions of srlib.attention.loops.

The loop versions are written from the paper's formulas with Python loops over
pixel coordinates, independently of the library's reshapes, bmm and softmax:

    Z_{i,j} = sum_{g,h} exp(phi(X_ij, X_gh)) / sum_{u,v} exp(phi(X_ij, X_uv)) * psi(X_gh)   (1)
    phi(X_ij, X_gh) = theta(X_ij)^T delta(X_gh)                                               (2)
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import srlib.attention._common as common_module
from srlib.attention import (
    AttentionDetails,
    AttentionMemoryError,
    NonLocalAttention,
    RegionAttentionDetails,
    RegionNonLocalAttention,
    attention_entry,
    attention_matrix_bytes,
    available_memory_bytes,
    check_attention_memory,
    non_local_attention,
    region_grid,
    region_non_local_attention,
)
from srlib.attention.loops import (
    dense_attention_loops,
    embedding_loops,
    non_local_loops,
    region_attention_loops,
    region_cells_loops,
    region_non_local_loops,
)

# --------------------------------------------------------------------------- helpers


def loop_embeddings(module, x: torch.Tensor):
    """theta(X), delta(X), psi(X) of a module, by hand (embedding_loops)."""
    return tuple(embedding_loops(layer, x) for layer in (module.query_embed, module.key_embed, module.value_embed))


def make_module(cls=NonLocalAttention, seed=0, **kwargs):
    torch.manual_seed(seed)
    module = cls(**kwargs).double()
    # Random PReLU slopes, so that the test would notice a missing or misplaced activation.
    for layer in (module.query_embed, module.key_embed, module.value_embed):
        if len(layer) > 1:
            with torch.no_grad():
                layer[1].weight.uniform_(0.05, 0.5)
    return module


def random_map(*shape, seed=1, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype)


# --------------------------------------------------------------------------- global attention


@pytest.mark.parametrize("activation", ["prelu", "none"])
def test_explicit_path_matches_the_loop_version(activation):
    module = make_module(channels=4, activation=activation)
    x = random_map(2, 4, 3, 4)
    out, details = module(x, return_details=True)
    assert isinstance(details, AttentionDetails) and details.map_size == (3, 4)
    attention = details.weights
    expected, weights = dense_attention_loops(*loop_embeddings(module, x))
    assert out.shape == (2, 4, 3, 4) and attention.shape == (2, 12, 12)
    torch.testing.assert_close(non_local_loops(module, x), expected, rtol=0, atol=0)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    # row i*W + j of the returned matrix holds weights[n, i, j, :, :] flattened the same way
    torch.testing.assert_close(attention, weights.reshape(2, 12, 12), rtol=1e-10, atol=1e-12)


def test_layers_are_the_papers_symbols_with_the_official_sizes():
    module = NonLocalAttention(channels=8)
    assert module.query_embed[0].weight.shape == (4, 8, 1, 1)  # theta: C -> C/2, queries
    assert module.key_embed[0].weight.shape == (4, 8, 1, 1)  # delta: C -> C/2, keys
    assert module.value_embed[0].weight.shape == (8, 8, 1, 1)  # psi: C -> C, values
    layers = (module.query_embed, module.key_embed, module.value_embed)
    assert all(isinstance(layer[1], nn.PReLU) for layer in layers)
    assert not hasattr(module, "output_projection")  # the output is always (N, C, H, W)
    assert sorted(module.state_dict()) == sorted(
        f"{name}.{key}" for name in ("query_embed", "key_embed", "value_embed")
        for key in ("0.weight", "0.bias", "1.weight")
    )
    plain = NonLocalAttention(channels=8, reduction=4, activation="none")
    assert isinstance(plain.query_embed, nn.Sequential) and len(plain.query_embed) == 1
    assert isinstance(plain.query_embed[0], nn.Conv2d) and plain.query_embed[0].out_channels == 2
    assert plain.value_embed[0].out_channels == 8
    # the convolutions keep their checkpoint keys with or without the activation
    plain_keys = {k for k in module.state_dict() if not k.endswith("1.weight")}
    assert set(NonLocalAttention(channels=8, activation="none").state_dict()) == plain_keys
    for removed in ({"embed_channels": 3}, {"value_channels": 5}, {"residual": True}):
        with pytest.raises(TypeError):
            NonLocalAttention(channels=8, **removed)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("size", [(3, 4), (5, 7), (1, 1), (1, 6), (9, 2)])
def test_fused_path_equals_explicit_path(dtype, size):
    module = make_module(channels=6).to(dtype)
    x = random_map(3, 6, *size, seed=2, dtype=dtype)
    explicit = module(x)
    module.implementation = "fused"
    fused = module(x)
    assert fused.dtype == dtype and fused.shape == (3, 6, *size)
    tolerance = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(fused, explicit, **tolerance)


def test_functional_paths_agree_with_different_query_and_key_lengths():
    q, k, v = random_map(2, 5, 3, seed=3), random_map(2, 9, 3, seed=4), random_map(2, 9, 7, seed=5)
    out, attention = non_local_attention(q, k, v, return_attention=True)
    assert out.shape == (2, 5, 7) and attention.shape == (2, 5, 9)
    torch.testing.assert_close(non_local_attention(q, k, v, implementation="fused"), out)
    # no 1/sqrt(d) scaling: the weights are the plain softmax of the dot products
    manual = torch.exp(q @ k.transpose(1, 2))
    torch.testing.assert_close(attention, manual / manual.sum(-1, keepdim=True))


def test_returned_attention_rows_are_probabilities():
    module = make_module(channels=4)
    _, details = module(random_map(2, 4, 5, 3, seed=6), return_details=True)
    attention = details.weights
    assert (attention >= 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 15, dtype=torch.float64))


def test_return_details_with_fused_module_uses_the_explicit_path_and_functional_fused_raises():
    module = make_module(channels=4, implementation="fused")
    x = random_map(1, 4, 3, 3)
    out, details = module(x, return_details=True)  # the weights need the explicit path: it is used
    torch.testing.assert_close(out, module(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(details.weights.sum(-1), torch.ones(1, 9, dtype=torch.float64))
    assert module.implementation == "fused"
    q = random_map(1, 4, 2)
    with pytest.raises(ValueError, match="explicit"):
        non_local_attention(q, q, q, implementation="fused", return_attention=True)


def test_single_pixel_map_returns_its_own_value():
    module = make_module(channels=4)
    x = random_map(2, 4, 1, 1)
    out, details = module(x, return_details=True)
    torch.testing.assert_close(details.weights, torch.ones(2, 1, 1, dtype=torch.float64))
    torch.testing.assert_close(out, module.value_embed(x))


@pytest.mark.parametrize("cls", [NonLocalAttention, RegionNonLocalAttention])
def test_output_has_no_residual(cls):
    """The module returns Z of eq. 1 only; the model adds x + res_scale * Z itself."""
    module = make_module(cls, channels=4)
    x = random_map(2, 4, 3, 4, seed=7)
    out = module(x)
    assert out.shape == x.shape
    z = (non_local_loops if cls is NonLocalAttention else region_non_local_loops)(module, x)
    torch.testing.assert_close(out, z, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(out, x + z)
    # values psi(X) = 0 everywhere: Z = 0, so a residual inside would show up as x
    with torch.no_grad():
        module.value_embed[0].weight.zero_()
        module.value_embed[0].bias.zero_()
    assert torch.equal(module(x), torch.zeros_like(x))


@pytest.mark.parametrize("implementation", ["explicit", "fused"])
@pytest.mark.parametrize("cls", [NonLocalAttention, RegionNonLocalAttention])
def test_batch_of_one_and_of_many_agree(implementation, cls):
    module = make_module(cls, channels=4, implementation=implementation)
    batch = random_map(4, 4, 5, 6, seed=8)
    together = module(batch)
    one_by_one = torch.cat([module(batch[n : n + 1]) for n in range(4)])
    assert together.shape == (4, 4, 5, 6)
    torch.testing.assert_close(together, one_by_one, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size", [(3, 4), (5, 7), (1, 2), (2, 9)])
@pytest.mark.parametrize(
    ("name", "cls", "loops", "options"),
    [
        ("non_local", NonLocalAttention, non_local_loops, {}),
        ("region_non_local", RegionNonLocalAttention, region_non_local_loops, {"regions": (1, 2)}),
    ],
)
def test_module_equals_its_registered_loop_version_in_float64(name, cls, loops, options, size):
    assert attention_entry(name).loops is loops  # the registry's lazy "srlib.attention.loops:..." path
    module = make_module(cls, channels=4, **options).eval()
    x = random_map(2, 4, *size, seed=18)
    with torch.no_grad():
        torch.testing.assert_close(module(x), loops(module, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ["prelu", "none"])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_embedding_loops_equal_the_layer(activation, kernel_size):
    from srlib.attention._common import embedding

    torch.manual_seed(3)
    layer = embedding(3, 5, activation, kernel_size=kernel_size).double()
    if activation == "prelu":
        with torch.no_grad():
            layer[1].weight.fill_(0.3)
    x = random_map(2, 3, 4, 5, seed=19)
    with torch.no_grad():
        torch.testing.assert_close(embedding_loops(layer, x), layer(x), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- regions


@pytest.mark.parametrize(
    "size, regions",
    [
        ((4, 6), (2, 2)),  # the grid divides the map: one batched call
        ((5, 7), (2, 3)),  # uneven in both directions: cells of 3 or 2 rows, 3 or 2 columns
        ((3, 4), (3, 4)),  # one pixel per cell
        ((6, 5), (4, 1)),  # uneven rows only
        ((3, 4), (1, 1)),  # one region: the global attention
    ],
)
def test_region_attention_matches_the_loop_version_per_region(size, regions):
    module = make_module(RegionNonLocalAttention, channels=4, regions=regions)
    x = random_map(2, 4, *size, seed=9)
    expected = region_non_local_loops(module, x)
    out = module(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    module.implementation = "fused"
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-12)


def test_region_details_match_the_loop_version_per_cell():
    module = make_module(RegionNonLocalAttention, channels=4, regions=(2, 3))
    x = random_map(2, 4, 5, 7, seed=20)
    out, details = module(x, return_details=True)
    assert isinstance(details, RegionAttentionDetails)
    assert details.cells == region_grid(5, 7, (2, 3))
    expected, cell_weights = region_attention_loops(*loop_embeddings(module, x), (2, 3))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    assert len(details.weights) == len(cell_weights) == 6
    for (rows, cols), weights, expected_weights in zip(details.cells, details.weights, cell_weights):
        pixels = (rows.stop - rows.start) * (cols.stop - cols.start)
        assert weights.shape == (2, pixels, pixels)
        torch.testing.assert_close(weights, expected_weights.reshape(2, pixels, pixels), rtol=1e-10, atol=1e-12)


def test_region_attention_differs_from_global_attention():
    weights = make_module(channels=4).state_dict()
    global_module = NonLocalAttention(4).double()
    region_module = RegionNonLocalAttention(4, regions=(2, 2)).double()
    global_module.load_state_dict(weights)
    region_module.load_state_dict(weights)  # same layer names: state dicts move between the two
    x = random_map(1, 4, 4, 4, seed=10)
    assert not torch.allclose(global_module(x), region_module(x))
    single = RegionNonLocalAttention(4, regions=(1, 1)).double()
    single.load_state_dict(weights)
    torch.testing.assert_close(single(x), global_module(x))


@pytest.mark.parametrize("size, regions", [((7, 5), (3, 2)), ((4, 4), (2, 2)), ((2, 9), (2, 4))])
def test_region_grid_covers_the_map_with_near_equal_cells(size, regions):
    cells = region_grid(*size, regions)
    assert len(cells) == regions[0] * regions[1]
    covered = torch.zeros(size, dtype=torch.int64)
    for rows, cols in cells:
        covered[rows, cols] += 1
    assert (covered == 1).all()
    heights = {r.stop - r.start for r, _ in cells}
    widths = {c.stop - c.start for _, c in cells}
    assert max(heights) - min(heights) <= 1 and max(widths) - min(widths) <= 1
    expected = [
        (r, c) for r in region_cells_loops(size[0], regions[0]) for c in region_cells_loops(size[1], regions[1])
    ]
    assert [((r.start, r.stop), (c.start, c.stop)) for r, c in cells] == expected


def test_region_errors():
    with pytest.raises(ValueError, match=r"3x4 feature map cannot be cut into a 4x2 grid"):
        RegionNonLocalAttention(4, regions=(4, 2))(torch.zeros(1, 4, 3, 4))
    with pytest.raises(ValueError, match="H >= 2 and W >= 5"):
        region_grid(3, 4, (2, 5))
    for bad in [(0, 2), (2,), 2, (2.5, 2), (True, 2), None]:
        with pytest.raises(ValueError, match="regions must be a pair"):
            RegionNonLocalAttention(4, regions=bad)


# --------------------------------------------------------------------------- gradients


def test_gradcheck_explicit_and_fused_paths():
    q = random_map(2, 3, 2, seed=11).requires_grad_()
    k = random_map(2, 4, 2, seed=12).requires_grad_()
    v = random_map(2, 4, 2, seed=13).requires_grad_()
    for implementation in ("explicit", "fused"):
        assert torch.autograd.gradcheck(
            lambda a, b, c, path=implementation: non_local_attention(a, b, c, implementation=path), (q, k, v)
        )
    # the returned attention matrix is differentiable too
    def attention_only(a, b, c):
        return non_local_attention(a, b, c, return_attention=True)[1]

    assert torch.autograd.gradcheck(attention_only, (q, k, v))


@pytest.mark.parametrize("implementation", ["explicit", "fused"])
def test_gradcheck_region_path_uneven_grid(implementation):
    # 3x3 map, 2x2 grid: cells of 2x2, 2x1, 1x2 and 1x1 pixels (all four blocks of the uneven path)
    q = random_map(1, 1, 3, 3, seed=14).requires_grad_()
    k = random_map(1, 1, 3, 3, seed=15).requires_grad_()
    v = random_map(1, 2, 3, 3, seed=16).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, c: region_non_local_attention(a, b, c, regions=(2, 2), implementation=implementation),
        (q, k, v),
    )


def test_gradcheck_module_input():
    module = make_module(channels=3)
    x = random_map(1, 3, 2, 3, seed=17).requires_grad_()
    assert torch.autograd.gradcheck(module, (x,))


# --------------------------------------------------------------------------- memory guard


def test_memory_guard_raises_before_allocating_with_a_helpful_message():
    module = NonLocalAttention(4, max_attention_bytes=10_000)
    x = torch.zeros(2, 4, 12, 16)  # L = 192: 2 * 2 * 192 * 192 * 4 bytes = 589824 bytes
    with pytest.raises(AttentionMemoryError) as caught:
        module(x)
    error = caught.value
    assert isinstance(error, MemoryError)
    needed = 2 * 2 * 192 * 192 * 4
    assert error.needed_bytes == needed == attention_matrix_bytes(2, 192, 192, torch.float32)
    assert error.limit_bytes == 10_000
    message = str(error)
    expected_parts = ("12x16", str(needed), "9.77 KiB", "max_attention_bytes", "fused", "RegionNonLocalAttention")
    for part in (*expected_parts, "srlib eval --tile", "5x5 positions fits"):
        assert part in message, (part, message)
    # the ways out work under the same limit
    module.implementation = "fused"
    assert module(x).shape == (2, 4, 12, 16)
    # 4x4 cells of 3x4 pixels: 2 * (2 * 16) * 12 * 12 * 4 = 36864 bytes, under a 40000-byte limit
    region = RegionNonLocalAttention(4, regions=(4, 4), max_attention_bytes=40_000)
    assert region(x).shape == (2, 4, 12, 16)
    with pytest.raises(AttentionMemoryError, match=r"32 feature map\(s\) of 3x4 pixels"):
        RegionNonLocalAttention(4, regions=(4, 4), max_attention_bytes=30_000)(x)  # the region message
    assert NonLocalAttention(4, max_attention_bytes=needed)(x).shape == (2, 4, 12, 16)


def test_memory_guard_default_limit_follows_available_memory(monkeypatch):
    real = available_memory_bytes("cpu")
    assert real is None or real > 0
    q = torch.zeros(1, 64, 2)
    monkeypatch.setattr(common_module, "available_memory_bytes", lambda device: 1000)
    with pytest.raises(AttentionMemoryError, match="available on cpu"):
        non_local_attention(q, q, q)
    # limit = MEMORY_FRACTION * 1000 = 500 bytes: a (1, 5, 5) float32 pair (200 bytes) fits
    assert check_attention_memory(1, 5, 5, torch.float32, "cpu") == 2 * 5 * 5 * 4
    with pytest.raises(AttentionMemoryError, match="50% of the 1000 bytes available on cpu"):
        check_attention_memory(1, 8, 8, torch.float32, "cpu")  # 512 bytes > 500
    monkeypatch.setattr(common_module, "available_memory_bytes", lambda device: None)  # unknown: no check
    assert non_local_attention(q, q, q).shape == (1, 64, 2)
    assert non_local_attention(q, q, q, max_attention_bytes=math.inf).shape == (1, 64, 2)


# --------------------------------------------------------------------------- devices, dtypes, bad input


def test_follows_the_input_device_and_dtype():
    module = NonLocalAttention(4).to("meta")
    out = module(torch.empty(2, 4, 5, 6, device="meta"))  # no real memory, no fixed device anywhere
    assert out.device.type == "meta" and out.shape == (2, 4, 5, 6)
    module = NonLocalAttention(4).to(torch.bfloat16)
    assert module(torch.randn(1, 4, 3, 3, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_paths_agree():
    module = make_module(RegionNonLocalAttention, channels=4, regions=(2, 3)).float().cuda()
    x = random_map(2, 4, 7, 8, dtype=torch.float32).cuda()
    explicit = module(x)
    module.implementation = "fused"
    torch.testing.assert_close(module(x), explicit, rtol=1e-4, atol=1e-4)
    assert explicit.device == x.device


def test_bad_input_gets_one_clear_error():
    module = NonLocalAttention(4)
    with pytest.raises(ValueError, match=r"expects x as a \(N, 4, H, W\) feature map, got \(1, 3, 5, 5\)"):
        module(torch.zeros(1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        module(torch.zeros(4, 5, 5))
    with pytest.raises(ValueError, match="implementation must be one of"):
        NonLocalAttention(4, implementation="flash")
    with pytest.raises(ValueError, match="activation must be one of 'prelu', 'relu', 'none'"):
        NonLocalAttention(4, activation="gelu")
    with pytest.raises(ValueError, match="channels must be an integer >= 1"):
        NonLocalAttention(0)
    q = torch.zeros(1, 6, 3)
    with pytest.raises(ValueError, match=r"\(N, L, C\) sequence"):
        non_local_attention(torch.zeros(1, 3, 2, 3), q, q)
    with pytest.raises(ValueError, match="same number of channels"):
        non_local_attention(q, torch.zeros(1, 6, 2), q)
    with pytest.raises(ValueError, match="same length L"):
        non_local_attention(q, q, torch.zeros(1, 5, 3))
    with pytest.raises(TypeError, match="floating"):
        non_local_attention(q.long(), q.long(), q.long())
