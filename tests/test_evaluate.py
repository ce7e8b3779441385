"""Tests for srlib.evaluate: tiling, self-ensemble, benchmark scores and single-image upscaling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from srlib.evaluate import (
    evaluate,
    evaluate_images,
    forward_self_ensemble,
    forward_tiled,
    super_resolve,
    upscale_image,
)
from srlib.imresize import imresize
from srlib.metrics import psnr_y, ssim_y
from srlib.models import build_model


def tiny_edsr(scale: int, n_blocks: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("edsr_baseline", scale, n_feats=8, n_blocks=n_blocks).eval()


def edsr_receptive_radius(n_blocks: int) -> int:
    """LR pixels on each side that one output pixel of EDSR (x2/x3) depends on.

    3x3 convolutions at LR resolution: head, 2 per block, body conv, up-sampler conv; the
    tail 3x3 conv at HR resolution reaches at most 1 more LR pixel.
    """
    return 1 + 2 * n_blocks + 1 + 1 + 1


# --- tiling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3])
def test_tiled_equals_untiled_when_overlap_covers_the_receptive_field(scale):
    model = tiny_edsr(scale)
    lr = torch.rand(1, 3, 27, 35, generator=torch.Generator().manual_seed(1))
    overlap = 2 * edsr_receptive_radius(1)  # each tile keeps all but overlap // 2 pixels per cut side
    with torch.no_grad():
        whole = model(lr)
        tiled = forward_tiled(model, lr, tile=20, overlap=overlap, scale=scale)
        seamy = forward_tiled(model, lr, tile=20, overlap=2, scale=scale)
    assert tiled.shape == whole.shape == (1, 3, 27 * scale, 35 * scale)
    assert (tiled - whole).abs().max() < 1e-5
    # The check has teeth: too little overlap leaves seams from the tiles' zero padding.
    assert (seamy - whole).abs().max() > 1e-4


@pytest.mark.parametrize("height, width", [(1, 1), (5, 7), (8, 8), (9, 8), (13, 31), (25, 6)])
def test_tiling_covers_any_size(height, width):
    # Bicubic depends on 2 LR pixels either side, so an overlap of 4 makes tiling exact.
    model = build_model("bicubic", 2)
    lr = torch.rand(1, 3, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    tiled = forward_tiled(model, lr, tile=8, overlap=4, scale=2)
    assert tiled.shape == (1, 3, 2 * height, 2 * width)
    assert (tiled - imresize(lr, scale=2)).abs().max() < 1e-10


def test_image_smaller_than_a_tile_through_super_resolve():
    model = tiny_edsr(4)
    lr = torch.rand(1, 3, 5, 7)
    expected = super_resolve(model, lr)
    assert (super_resolve(model, lr, tile=64, tile_overlap=16) - expected).abs().max() < 1e-6


@pytest.mark.parametrize("tile, overlap", [(0, 0), (8, 8), (8, -1), (8.5, 2)])
def test_invalid_tile_settings(tile, overlap):
    with pytest.raises(ValueError, match="tile"):
        forward_tiled(build_model("bicubic", 2), torch.rand(1, 3, 20, 20), tile=tile, overlap=overlap, scale=2)


# --- self-ensemble ----------------------------------------------------------------------------


def test_self_ensemble_of_an_equivariant_model_is_its_plain_output():
    model = build_model("bicubic", 3)
    lr = torch.rand(2, 3, 9, 13, generator=torch.Generator().manual_seed(3))
    plain = model(lr)
    assert (forward_self_ensemble(model, lr) - plain).abs().max() < 1e-5


def test_self_ensemble_inverts_every_transform():
    lr = torch.rand(1, 3, 5, 8)
    seen_shapes = []

    def identity_recording_shapes(x):
        seen_shapes.append(tuple(x.shape))
        return x.clone()

    # A wrongly inverted transform would mix pixels from elsewhere (errors ~0.5, not ~1e-7).
    assert (forward_self_ensemble(identity_recording_shapes, lr) - lr).abs().max() < 1e-6
    assert len(seen_shapes) == 8 and seen_shapes.count((1, 3, 8, 5)) == 4  # rotated inputs are 8x5


def test_self_ensemble_changes_a_non_equivariant_model():
    model = tiny_edsr(2)
    lr = torch.rand(1, 3, 10, 12)
    plain = super_resolve(model, lr)
    ensembled = super_resolve(model, lr, self_ensemble=True)
    assert ensembled.shape == plain.shape
    assert (ensembled - plain).abs().max() > 1e-4


# --- super_resolve ----------------------------------------------------------------------------


class Overshooting(nn.Module):
    """Nearest-neighbour x2 upscaling that overshoots the [0, 1] range."""

    scale = 2

    def forward(self, lr):
        return nn.functional.interpolate(lr, scale_factor=2, mode="nearest") * 3 - 1


def test_super_resolve_clamps_keeps_mode_and_builds_no_graph():
    model = tiny_edsr(2).train()
    sr = super_resolve(model, torch.rand(1, 3, 6, 6))
    assert model.training  # restored after the call
    assert not sr.requires_grad
    out = super_resolve(Overshooting(), torch.rand(1, 3, 4, 4))
    assert out.min() >= 0 and out.max() <= 1 and (out == 0).any() and (out == 1).any()


def test_super_resolve_rejects_wrong_input():
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        super_resolve(tiny_edsr(2), torch.rand(3, 8, 8))


# --- evaluate on in-memory datasets -----------------------------------------------------------


class TinySet:
    """A stand-in benchmark set: random smooth HR images and their bicubic LR."""

    name = "TinySet"

    def __init__(self, scale: int, count: int = 3):
        gen = torch.Generator().manual_seed(4)
        self.samples = []
        for index in range(count):
            coarse = torch.rand(1, 3, 6 + index, 7, generator=gen)
            hr_float = nn.functional.interpolate(coarse, size=(8 * scale, 9 * scale), mode="bilinear")
            hr = torch.floor(hr_float[0] * 255 + 0.5).to(torch.uint8)
            lr = imresize(hr, scale=1 / scale)
            self.samples.append({"name": f"img{index}", "hr": hr, "lr": lr})

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


def test_evaluate_scores_match_direct_metric_computation():
    dataset = TinySet(scale=2)
    model = build_model("bicubic", 2)
    results = evaluate(model, [dataset], 2, progress=False, per_image=True)
    assert set(results) == {"TinySet"}
    summary = results["TinySet"]
    assert summary["images"] == 3
    expected_psnr, expected_ssim = [], []
    for sample in dataset.samples:
        sr = torch.floor(imresize(sample["lr"].double() / 255, scale=2).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        expected_psnr.append(float(psnr_y(sr, sample["hr"], shave=2)))
        expected_ssim.append(float(ssim_y(sr, sample["hr"], shave=2)))
    assert summary["psnr"] == pytest.approx(sum(expected_psnr) / 3, abs=1e-3)
    assert summary["ssim"] == pytest.approx(sum(expected_ssim) / 3, abs=1e-5)
    assert [r["name"] for r in summary["per_image"]] == ["img0", "img1", "img2"]
    assert [r["psnr"] for r in summary["per_image"]] == pytest.approx(expected_psnr, abs=1e-3)


def test_evaluate_images_returns_images_and_honours_max_images():
    records = evaluate_images(build_model("bicubic", 3), TinySet(scale=3), 3, progress=False,
                              max_images=2, return_images=True)
    assert len(records) == 2
    assert records[0]["sr"].dtype == torch.uint8 and records[0]["sr"].shape == records[0]["hr"].shape


def test_evaluate_rejects_a_scale_mismatch():
    with pytest.raises(ValueError, match="x2.*x4"):
        evaluate(build_model("bicubic", 2), [TinySet(scale=4)], 4, progress=False)


class RunsOutOfMemory(nn.Module):
    scale = 2

    def forward(self, lr):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_suggests_tiling():
    with pytest.raises(RuntimeError, match="--tile 256"):
        evaluate(RunsOutOfMemory(), [TinySet(scale=2)], 2, progress=False)
    with pytest.raises(RuntimeError, match="smaller tiles"):
        upscale_image(RunsOutOfMemory(), torch.zeros(3, 40, 40, dtype=torch.uint8), tile=32)


# --- upscale_image ----------------------------------------------------------------------------


def test_upscale_image_shape_dtype_and_values():
    image = TinySet(scale=2).samples[0]["lr"]
    sr = upscale_image(build_model("bicubic", 2), image)
    assert sr.dtype == torch.uint8 and sr.shape == (3, 2 * image.shape[1], 2 * image.shape[2])
    reference = imresize(image, scale=2)  # uint8 path: one rounding, as a PNG would store
    assert (sr.int() - reference.int()).abs().max() <= 1
    with pytest.raises(TypeError, match="uint8"):
        upscale_image(build_model("bicubic", 2), image.float() / 255)
    with pytest.raises(ValueError, match="shape"):
        upscale_image(build_model("bicubic", 2), image[None])


# --- the shipped Set5 benchmark ---------------------------------------------------------------


def test_bicubic_set5_x2_matches_the_measured_scores():
    scores = evaluate(build_model("bicubic", 2), ["Set5"], 2, progress=False)["Set5"]
    assert scores["images"] == 5
    # Our measured values; the papers report 33.66 dB / 0.9299 for Bicubic on Set5 x2.
    assert scores["psnr"] == pytest.approx(33.649, abs=0.005)
    assert scores["ssim"] == pytest.approx(0.9295, abs=0.0005)


def test_tiled_and_untiled_set5_scores_agree_within_a_hundredth_of_a_db():
    torch.manual_seed(0)
    model = build_model("edsr_baseline", 2, n_feats=16, n_blocks=2)
    whole = evaluate(model, ["Set5"], 2, progress=False)["Set5"]
    tiled = evaluate(model, ["Set5"], 2, tile=64, tile_overlap=16, progress=False)["Set5"]
    assert abs(whole["psnr"] - tiled["psnr"]) < 0.01
    assert abs(whole["ssim"] - tiled["ssim"]) < 1e-4


def test_paired_gain_bootstraps_the_mean_per_group_gain():
    from srlib.evaluate import paired_gain

    def result(values):
        return {"groups": [{"name": f"{i:03d}", "psnr": v} for i, v in enumerate(values)]}

    constant = paired_gain(result([30.5, 28.5, 31.5]), result([30.0, 28.0, 31.0]))
    assert constant["mean"] == pytest.approx(0.5) and constant["low"] == pytest.approx(0.5)
    assert constant["high"] == pytest.approx(0.5) and constant["wins"] == 3
    gains = [0.0, 1.0, 0.2, -0.4, 0.6, 0.1, 0.3, 0.9]
    spread = paired_gain(result([30 + g for g in gains]), result([30.0] * 8), seed=1)
    assert -0.4 < spread["low"] < spread["mean"] < spread["high"] < 1.0 and spread["wins"] == 6
    assert spread == paired_gain(result([30 + g for g in gains]), result([30.0] * 8), seed=1)
    with pytest.raises(ValueError, match="same >= 2 groups"):
        paired_gain(result([1.0, 2.0]), result([1.0, 2.0, 3.0]))
