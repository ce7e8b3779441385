"""The hash-quality study (srlib.attention.hash_quality): each measure checked on cases whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from srlib.attention.hash_quality import (
    angle_estimate_spread,
    bucket_occupancy,
    collision_curve,
    pairs_at_angle,
    recovered_attention_mass,
)


def test_pairs_are_unit_vectors_at_the_requested_angle():
    x, y = pairs_at_angle(50, 6, 0.7, 0)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(50, dtype=torch.float64))
    torch.testing.assert_close(y.norm(dim=1), torch.ones(50, dtype=torch.float64))
    torch.testing.assert_close((x * y).sum(dim=1), torch.full((50,), math.cos(0.7), dtype=torch.float64))


def test_orthogonal_sign_bits_estimate_angles_with_less_spread():
    """Ji et al. (NeurIPS 2012) Theorem 2: K <= D orthogonalised bits give a smaller variance; both unbiased."""
    result = angle_estimate_spread(dim=16, n_bits=16, angles=[0.8, 1.5], n_draws=300, generator=0)
    assert (result.std["orthogonal"] < result.std["independent"]).all()
    for name in ("independent", "orthogonal"):
        torch.testing.assert_close(result.mean[name], result.angles.float(), rtol=0, atol=0.03, check_dtype=False)


@pytest.mark.parametrize("hashing", ["spherical", "superbit"])
def test_collision_probability_is_one_at_zero_angle_and_falls_with_the_angle(hashing):
    curve = collision_curve(hashing, dim=8, n_buckets=8, angles=[0.0, 0.5, 1.2, math.pi], n_draws=20, generator=1)
    assert curve.mean[0] == 1 and curve.std[0] == 0
    assert (curve.mean[:-1] > curve.mean[1:]).all()
    assert curve.per_draw.shape == (20, 4) and (curve.binomial_std >= 0).all()
    if hashing == "spherical":  # x and -x never collide: the code of -x is the opposite direction's
        assert curve.mean[-1] == 0


def test_bucket_occupancy_of_even_and_degenerate_codes():
    even = bucket_occupancy(torch.arange(12).remainder(4).view(1, 12), 4)
    assert even.normalized_entropy.item() == pytest.approx(1.0) and even.largest_fraction.item() == 0.25
    one = bucket_occupancy(torch.zeros(2, 10, dtype=torch.long), 4)
    assert one.entropy_bits.tolist() == [0.0, 0.0] and one.largest_fraction.tolist() == [1.0, 1.0]
    assert one.empty_buckets.tolist() == [3, 3]
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        bucket_occupancy(torch.tensor([[0, 5]]), 4)


def test_recovered_mass_is_one_when_one_chunk_holds_everything_and_grows_with_rounds():
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    whole = recovered_attention_mass(x, x, "superbit", 1, chunk_size=64, n_buckets=4, generator=0)
    torch.testing.assert_close(whole, torch.ones(1, 8, 8, dtype=torch.float64))
    one = recovered_attention_mass(x, x, "superbit", 1, chunk_size=4, n_buckets=8, generator=0)
    four = recovered_attention_mass(x, x, "superbit", 4, chunk_size=4, n_buckets=8, generator=0)  # first round equal
    assert (four >= one - 1e-12).all() and four.mean() > one.mean()
    assert (one > 0).all() and (one < 1).any()
