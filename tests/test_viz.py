"""Tests for srlib.viz: detailed-crop choice and comparison figures."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from matplotlib.patches import Rectangle

from srlib.viz import comparison_figure, pick_crop, save_figure


def flat_image_with_texture(height=60, width=80, top=30, left=44, size=16) -> torch.Tensor:
    """A smooth ramp with one noisy ``size x size`` square at (top, left): uint8 (3, H, W)."""
    ramp = torch.linspace(60, 120, width).expand(3, height, width).clone()
    noise = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    ramp[:, top : top + size, left : left + size] = noise
    return ramp.round().to(torch.uint8)


def test_pick_crop_finds_the_textured_region():
    image = flat_image_with_texture()
    top, left = pick_crop(image, size=16)
    assert abs(top - 30) <= 1 and abs(left - 44) <= 1


def test_pick_crop_is_deterministic_and_in_bounds():
    gen = torch.Generator().manual_seed(5)
    image = (torch.rand(3, 45, 70, generator=gen) * 255).to(torch.uint8)
    first = pick_crop(image, size=20)
    assert pick_crop(image, size=20) == first
    assert pick_crop(image.float() / 255, size=20) == first  # float input in [0, 1] gives the same crop
    for seed in range(5):
        top, left = pick_crop(image, size=20, generator=torch.Generator().manual_seed(seed))
        assert (top, left) == pick_crop(image, size=20, generator=torch.Generator().manual_seed(seed))
        assert 0 <= top <= 45 - 20 and 0 <= left <= 70 - 20
    assert pick_crop(image, size=45)[0] == 0  # a crop as tall as the image


def test_pick_crop_rejects_small_images():
    with pytest.raises(ValueError, match="smaller than"):
        pick_crop(torch.zeros(3, 10, 30, dtype=torch.uint8), size=16)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        pick_crop(torch.zeros(1, 3, 30, 30, dtype=torch.uint8))


def make_images():
    hr = flat_image_with_texture()
    return {
        "HR": hr,
        "Bicubic": (hr.float() * 0.9).to(torch.uint8),
        "EDSR": hr.flip(-1),
    }


def test_comparison_figure_layout_titles_and_crop_box():
    images = make_images()
    fig = comparison_figure(images, crop=(28, 40, 20), scores={"Bicubic": "30.1 dB", "EDSR": "31.2 dB"})
    axes = fig.get_axes()
    assert len(axes) == 1 + len(images)
    titles = [ax.get_title() for ax in axes[1:]]
    assert titles == ["HR", "Bicubic\n30.1 dB", "EDSR\n31.2 dB"]
    boxes = [patch for patch in axes[0].patches if isinstance(patch, Rectangle)]
    assert len(boxes) == 1 and boxes[0].get_width() == 20
    shown = axes[2].get_images()[0].get_array()
    assert shown.shape == (20, 20, 3)  # the crop, zoomed by the axes (nearest neighbour)
    expected = images["Bicubic"][:, 28:48, 40:60].permute(1, 2, 0).numpy()
    assert (shown == expected).all()


def test_comparison_figure_picks_a_crop_when_none_is_given():
    fig = comparison_figure(make_images())
    assert len(fig.get_axes()) == 4


def test_comparison_figure_errors():
    images = make_images()
    with pytest.raises(ValueError, match="'GT'"):
        comparison_figure(images, crop=(0, 0, 8), hr_key="GT")
    with pytest.raises(ValueError, match="same size"):
        comparison_figure({**images, "Small": images["HR"][:, :30]}, crop=(0, 0, 8))
    with pytest.raises(ValueError, match="does not fit"):
        comparison_figure(images, crop=(50, 70, 20))


def test_save_figure_writes_a_png_atomically(tmp_path):
    path = tmp_path / "figures" / "comparison.png"
    save_figure(comparison_figure(make_images(), crop=(0, 0, 16)), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["comparison.png"]


def test_figure_renders_itself_for_notebooks():
    png = comparison_figure(make_images(), crop=(0, 0, 16))._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_viz_does_not_touch_pyplot_or_the_backend():
    code = "import sys, srlib.viz; print('matplotlib.pyplot' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
