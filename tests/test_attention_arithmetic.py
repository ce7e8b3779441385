"""The arithmetic each attention declares (``register_attention(..., multiply_adds=fn)``).

Every declaration is checked twice on a tiny input: against a count written by hand from
the mechanism's equations (the numbers below), and against ``torch.utils.flop_counter`` on a
path that multiplies exactly what the equations say (explicit implementation, chunk sizes
that need no padding), where 1 multiply-add = 2 FLOP.  The fused path is counted by
``srlib.models.profile.flop_counter``, which also sees the zero padding the equations leave out.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from srlib.attention import available_attention, build_attention, register_attention
from srlib.attention.registry import ATTENTION, attention_entry, attention_multiply_adds
from srlib.models.profile import flop_counter


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test go into a copy of the attention registry, dropped afterwards."""
    monkeypatch.setattr(ATTENTION, "_entries", dict(ATTENTION._entries))


def _counted(module, *inputs, counter=FlopCounterMode) -> int:
    """FLOPs of one no-grad forward pass as ``torch.utils.flop_counter`` counts them."""
    with torch.no_grad(), counter(display=False) as mode:
        module(*inputs)
    return mode.get_total_flops()


# ----------------------------------------------------------------------------------------------
# Hand counts on tiny inputs (multiply-adds, from the equations cited in each declaration)
# ----------------------------------------------------------------------------------------------

HAND_COUNTS = [
    # non_local, C = 8, C_e = 4, L = 3 * 4 = 12 (CSNLN eq. 1-2):
    # embeddings 12 (2*8*4 + 8*8) = 1536; scores 12^2 * 4 = 576; weighted values 12^2 * 8 = 1152.
    pytest.param("non_local", {}, (1, 8, 3, 4), None, 1536 + 576 + 1152, id="non_local"),
    # Two images: everything doubles.
    pytest.param("non_local", {"implementation": "fused"}, (2, 8, 3, 4), None, 2 * 3264, id="non_local-N2"),
    # region_non_local on 5 x 4 with a 2 x 2 grid: cells of 3x2, 3x2, 2x2, 2x2 pixels (6, 6, 4, 4);
    # embeddings 20 * 128 = 2560; cells (36 + 36 + 16 + 16) * (4 + 8) = 1248.
    pytest.param("region_non_local", {"regions": [2, 2]}, (1, 8, 5, 4), None, 2560 + 1248, id="region"),
    # nlsa, C = 8, reduction 4 -> C_e = 2, L = 64, m = 8 -> 8 chunks, 3 of them seen (24 keys), b = 64 // 8 = 8
    # buckets (spherical: 4 rotations), 2 rounds: embeddings 64 (9*8*2 + 8*8) = 13312; hashing 2 * 64 * 2 * 4 = 1024;
    # attention 2 * 64 * 24 * (2 + 8) = 30720.
    pytest.param("nlsa", {"chunk_size": 8, "n_rounds": 2}, (1, 8, 8, 8), None, 13312 + 1024 + 30720, id="nlsa"),
    # The same with super-bit hashing and 5 buckets: 5 projections per round, 2 * 64 * 2 * 5 = 1280.
    pytest.param("nlsa", {"chunk_size": 8, "n_rounds": 2, "hashing": "superbit", "n_buckets": 5}, (1, 8, 8, 8),
                 None, 13312 + 1280 + 30720, id="nlsa-superbit"),
    # One chunk holds the whole map (L = 9 <= m = 144): each query meets the 9 keys, 2 buckets (1 rotation),
    # 4 rounds: embeddings 9 * 208 = 1872; hashing 4 * 9 * 2 * 1 = 72; attention 4 * 9 * 9 * 10 = 3240.
    pytest.param("nlsa", {}, (1, 8, 3, 3), None, 1872 + 72 + 3240, id="nlsa-one-chunk"),
    # nlsa_dense, L = 9: embeddings 9 * 208 = 1872; dense attention 81 * (2 + 8) = 810.
    pytest.param("nlsa_dense", {}, (1, 8, 3, 3), None, 1872 + 810, id="nlsa_dense"),
    # gla, C = 8, C_e = 2, L = 64, m = 8, 3 rounds, super-bit with b = 8 directions, "paper" scores P = 3m = 24,
    # hidden 24 (DLSN eq. 9-17): embeddings 64 (9*8*2 + 9*8*8) = 46080; s_l 64 (9*64 + 8*24 + 24*24) = 86016;
    # hashing 3 * 64 * 2 * 8 = 3072; attention 3 * 64 * 24 * (2 + 8) = 46080.
    pytest.param("gla", {"chunk_size": 8}, (1, 8, 8, 8), None, 46080 + 86016 + 3072 + 46080, id="gla"),
    # "official" scores (P = m = 8, hidden 8) without s_f: s_l 64 (576 + 64 + 64) = 45056; attention
    # 3 * 64 * 24 * 8 = 36864 (no q . k_hat).
    pytest.param("gla", {"chunk_size": 8, "learned_score": "official", "fixed_score": False}, (1, 8, 8, 8), None,
                 46080 + 45056 + 3072 + 36864, id="gla-official-no-fixed"),
    # No learned term: no phi_l, no W_1, W_2.
    pytest.param("gla", {"chunk_size": 8, "learned_score": "none"}, (1, 8, 8, 8), None, 46080 + 3072 + 46080,
                 id="gla-none"),
    # multi_reference, C = 8 = C_m, p = 3 (D = 72), input 4 x 5 (L = 20), references 5 x 6 and 4 x 4
    # (3*4 + 2*2 = 16 patches, 30 + 16 = 46 positions) (AMRSR Alg. 1): embeddings 9*8*8 (20 + 46) + 64 * 46 = 40960;
    # INPUTATT scores 20 * 72 * 16 = 23040.
    pytest.param("multi_reference", {}, (1, 8, 4, 5), [(1, 8, 5, 6), (1, 8, 4, 4)], 40960 + 23040, id="multi_ref"),
    # The parts only cut the product into blocks.
    pytest.param("multi_reference", {"reference_parts": 4, "input_parts": 4}, (1, 8, 4, 5),
                 [(1, 8, 5, 6), (1, 8, 4, 4)], 40960 + 23040, id="multi_ref-parts"),
    # Two sub-vectors: REFATT adds 20 * 72 per reference part; 4 parts of the 3 x 4 patch grid, 4 of the 2 x 2.
    pytest.param("multi_reference", {"n_subvectors": 2, "reference_parts": 4}, (1, 8, 4, 5),
                 [(1, 8, 5, 6), (1, 8, 4, 4)], 40960 + 23040 + 20 * 72 * 8, id="multi_ref-subvectors"),
    # No embeddings: matching on the maps themselves.
    pytest.param("multi_reference", {"embed": False}, (1, 8, 4, 5), [(1, 8, 5, 6), (1, 8, 4, 4)], 23040,
                 id="multi_ref-no-embed"),
    # cross_scale, C = 8, C' = 4, 6 x 8 map, s = 2 (3 x 4 keys, hw = 12), p = 3 (CSNLN eq. 4): embeddings
    # 48 (8*4 + 8*8) + 12 * 8*4 = 4992; scores 48 * 12 * 4 * 9 = 20736; pasting 48 * 12 * 8 * 6^2 = 165888.
    pytest.param("cross_scale", {}, (1, 8, 6, 8), None, 4992 + 20736 + 165888, id="cross_scale"),
    # The convolution implementation computes the same products.
    pytest.param("cross_scale", {"implementation": "conv"}, (1, 8, 6, 8), None, 191616, id="cross_scale-conv"),
    # A 5 x 7 map is padded to 6 x 8 (h, w = 3, 4): embeddings 35 * 96 + 12 * 32 = 3744; eq. 4 on the 48 padded queries.
    pytest.param("cross_scale", {}, (1, 8, 5, 7), None, 3744 + 20736 + 165888, id="cross_scale-padded"),
    # cross_scale_pixel (eq. 3, p = 1): scores 48 * 12 * 4 = 2304; pasting 48 * 12 * 8 * 2^2 = 18432.
    pytest.param("cross_scale_pixel", {}, (1, 8, 6, 8), None, 4992 + 2304 + 18432, id="cross_scale_pixel"),
    # cross_scale_naive (supplement eq. 2): theta 48 * 32 = 1536, delta and psi on Y 12 * (32 + 64) = 1152;
    # scores 48 * 12 * 4 = 2304; values 48 * 12 * 8 = 4608.
    pytest.param("cross_scale_naive", {}, (1, 8, 6, 8), None, 1536 + 1152 + 2304 + 4608, id="cross_scale_naive"),
]


@pytest.mark.parametrize("name, options, shape, references, expected", HAND_COUNTS)
def test_declared_arithmetic_equals_the_hand_count(name, options, shape, references, expected):
    assert attention_multiply_adds(name, shape, options, references) == expected


# ----------------------------------------------------------------------------------------------
# Against torch.utils.flop_counter where the implementation multiplies what the equations say
# ----------------------------------------------------------------------------------------------

UNFUSED = [
    pytest.param("non_local", {"implementation": "explicit"}, (2, 8, 5, 6), None, id="non_local-explicit"),
    pytest.param("region_non_local", {"regions": [2, 3]}, (1, 8, 7, 8), None, id="region-uneven"),
    pytest.param("nlsa", {"chunk_size": 16, "n_rounds": 3}, (1, 8, 12, 12), None, id="nlsa"),
    pytest.param("nlsa", {"chunk_size": 16, "n_rounds": 2}, (1, 8, 4, 8), None, id="nlsa-two-chunks"),
    pytest.param("nlsa", {"chunk_size": 16, "hashing": "superbit", "n_buckets": 5}, (1, 8, 12, 12), None,
                 id="nlsa-superbit"),
    pytest.param("gla", {"chunk_size": 16}, (1, 8, 12, 12), None, id="gla"),
    pytest.param("gla", {"chunk_size": 16, "learned_score": "official", "fixed_score": False}, (1, 8, 12, 12), None,
                 id="gla-official"),
    pytest.param("gla", {"chunk_size": 16, "learned_score": "none", "hidden": 5}, (1, 8, 12, 12), None, id="gla-none"),
    pytest.param("multi_reference", {"reference_parts": 4, "input_parts": 4}, (1, 8, 6, 7),
                 [(1, 8, 5, 9), (1, 8, 7, 6)], id="multi_reference"),
    pytest.param("multi_reference", {"embed": False, "gate": False}, (1, 8, 6, 7), [(1, 8, 5, 9)],
                 id="multi_reference-no-embed"),
    pytest.param("cross_scale", {"chunk_size": 16}, (2, 8, 8, 10), None, id="cross_scale"),
    pytest.param("cross_scale", {"implementation": "conv"}, (2, 8, 8, 10), None, id="cross_scale-conv"),
    pytest.param("cross_scale", {"scale": 3, "patch_size": 1}, (1, 8, 9, 6), None, id="cross_scale-x3-p1"),
    pytest.param("cross_scale_pixel", {}, (1, 8, 8, 10), None, id="cross_scale_pixel"),
    pytest.param("cross_scale_naive", {}, (1, 8, 8, 10), None, id="cross_scale_naive"),
]


@pytest.mark.parametrize("name, options, shape, references", UNFUSED)
def test_declared_arithmetic_equals_flop_counter_on_the_unfused_path(name, options, shape, references):
    torch.manual_seed(0)
    module = build_attention(name, shape[1], **options).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)  # (N, C, H, W)
    inputs = (x,) if references is None else (x, [torch.randn(s, generator=generator) for s in references])
    declared = attention_multiply_adds(name, shape, module.attention_options, references)
    assert _counted(module, *inputs) == 2 * declared


@pytest.mark.parametrize("name, options", [("non_local", {"implementation": "fused"}), ("nlsa_dense", {})])
def test_fused_path_counts_the_equations_plus_the_zero_padding(name, options):
    """The fused kernel pads queries and keys from C_e to C channels: the counter sees 2 N L^2 (C - C_e) more FLOPs."""
    n, c, h, w = 1, 8, 5, 6
    module = build_attention(name, c, **options).eval()
    declared = attention_multiply_adds(name, (n, c, h, w), module.attention_options)
    c_e = c // module.attention_options["reduction"]
    padding = 2 * n * (h * w) ** 2 * (c - c_e)
    assert _counted(module, torch.randn(n, c, h, w), counter=flop_counter) == 2 * declared + padding


# ----------------------------------------------------------------------------------------------
# Every registered attention
# ----------------------------------------------------------------------------------------------


def test_every_registered_attention_declares_its_arithmetic():
    undeclared = [name for name in available_attention() if attention_entry(name).multiply_adds is None]
    assert undeclared == [], f"{undeclared} declare no multiply_adds (register_attention(..., multiply_adds=fn))"


def test_an_undeclared_attention_has_null_arithmetic_not_an_error(scratch_registry):
    @register_attention("arithmetic_undeclared", kind="in_scale")
    class Undeclared(nn.Module):
        """Declares no arithmetic."""

        def __init__(self, channels):
            super().__init__()

        def forward(self, x, return_details=False):
            return x

    assert attention_multiply_adds("arithmetic_undeclared", (1, 8, 6, 6)) is None


@pytest.mark.parametrize("name", [n for n in available_attention() if attention_entry(n).multiply_adds is not None])
def test_declared_arithmetic_of_every_bench_case_is_positive_and_grows_with_the_map(name):
    entry = attention_entry(name)
    for case, options in entry.bench.items():
        references = entry.bench_inputs.get(case, {}).get("references", 2)

        def count(side, options=options, references=references):
            shape = (1, 64, side, side)
            return attention_multiply_adds(name, shape, options, [shape] * references if entry.kind == "reference"
                                           else None)

        small, large = count(24), count(48)
        assert isinstance(small, int) and 0 < small < large, (case, small, large)


# ----------------------------------------------------------------------------------------------
# The declaration itself
# ----------------------------------------------------------------------------------------------


def test_a_declaration_is_one_argument_of_register_attention(scratch_registry):
    def toy_multiply_adds(shape, options):
        """A 1x1 convolution C -> C: N H W C^2 multiply-adds."""
        n, c, h, w = shape
        return n * h * w * c * c

    @register_attention("arithmetic_toy", kind="in_scale", multiply_adds=toy_multiply_adds)
    class Toy(nn.Module):
        """A 1x1 convolution (a toy for the arithmetic tests)."""

        def __init__(self, channels, gain=1.0):
            super().__init__()
            self.value_embed = nn.Conv2d(channels, channels, 1, bias=False)
            self.gain = gain

        def forward(self, x, return_details=False):
            return self.gain * self.value_embed(x)  # (N, C, H, W)

    assert attention_entry("arithmetic_toy").multiply_adds is toy_multiply_adds
    assert attention_multiply_adds("arithmetic_toy", (2, 4, 3, 5)) == 2 * 15 * 16
    assert _counted(build_attention("arithmetic_toy", 4), torch.randn(2, 4, 3, 5)) == 2 * 2 * 15 * 16


def test_bad_declarations_and_shapes_are_refused(scratch_registry):
    with pytest.raises(TypeError, match="multiply_adds"):
        register_attention("arithmetic_bad", kind="in_scale", multiply_adds=42)

    @register_attention("arithmetic_negative", kind="in_scale", multiply_adds=lambda shape, options: -1)
    class Negative(nn.Module):
        """Declares a negative count."""

        def __init__(self, channels):
            super().__init__()

        def forward(self, x, return_details=False):
            return x

    with pytest.raises(ValueError, match="not a non-negative integer"):
        attention_multiply_adds("arithmetic_negative", (1, 4, 2, 2))
    for shape in [(1, 4, 2), (1, 4, 0, 2), (1, 4.0, 2, 2), "1442"]:
        with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
            attention_multiply_adds("non_local", shape)
    with pytest.raises(ValueError, match="reference"):
        attention_multiply_adds("multi_reference", (1, 8, 4, 4))
    with pytest.raises(TypeError, match="no option"):
        attention_multiply_adds("non_local", (1, 8, 4, 4), {"chunk_size": 3})
    with pytest.raises(ValueError, match="cannot be cut"):
        attention_multiply_adds("region_non_local", (1, 8, 1, 4), {"regions": [2, 2]})
