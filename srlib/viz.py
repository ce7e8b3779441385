"""Visual comparisons of SR outputs: a full HR image with a marked crop, then the crop of every method.

PSNR differences of a few tenths of a dB are easier to believe when you can see
them: the classic figure of SR papers shows a detailed crop (a window grid, a
striped shirt) of each method side by side, zoomed with nearest-neighbour
interpolation so that the pixels of each output are visible.

Figures are built with ``matplotlib.figure.Figure`` directly, not through
``pyplot``: no backend is chosen or forced (scripts and headless machines
render PNGs with Agg, notebooks display the returned figure with their own
backend), and no figure stays registered in pyplot's global state.  The
returned figures also render themselves as PNG in Jupyter when pyplot was
never imported there.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from srlib.metrics import quantize, rgb_to_y
from srlib.utils import atomic_write

__all__ = ["pick_crop", "comparison_figure", "save_figure"]


class _DisplayableFigure(Figure):
    """A ``Figure`` that Jupyter can show as PNG even when no pyplot backend is loaded."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def _check_rgb(image: torch.Tensor, what: str) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{what} must be an RGB tensor shaped (3, H, W), got {shape}")


def pick_crop(hr: torch.Tensor, size: int = 64, generator: torch.Generator | None = None) -> tuple[int, int]:
    """Top-left corner of a ``size x size`` crop with much fine detail.

    Detail is measured as gradient energy: the sum, inside the crop, of the
    squared differences between neighbouring pixels of the luma (Y) channel.
    Flat sky scores low, text and textures high - where SR methods differ.

    Args:
        hr: RGB ``(3, H, W)``, uint8 0..255 or float in [0, 1]; ``H, W >= size``.
        size: crop side in pixels (>= 2).
        generator: ``None`` returns the crop with the highest energy (first one
            in row-major order on ties), so the choice is deterministic.  With a
            ``torch.Generator`` a crop is drawn uniformly among those with at
            least 80 % of the highest energy: varied, reproducible, still detailed.

    Returns:
        ``(top, left)`` with ``0 <= top <= H - size`` and ``0 <= left <= W - size``.

    Raises:
        ValueError: ``hr`` is not ``(3, H, W)``, ``size < 2``, or the image is
            smaller than the crop.
    """
    _check_rgb(hr, "hr")
    size = int(size)
    height, width = hr.shape[-2:]
    if size < 2:
        raise ValueError(f"crop size must be at least 2 pixels, got {size}")
    if height < size or width < size:
        raise ValueError(f"image {height}x{width} is smaller than the {size}x{size} crop; use a smaller size")
    luma = rgb_to_y(hr.detach().cpu(), round_to_uint8=False)  # (H, W) float64
    grad_y = luma[1:, :-1] - luma[:-1, :-1]  # (H-1, W-1) vertical differences
    grad_x = luma[:-1, 1:] - luma[:-1, :-1]  # (H-1, W-1) horizontal differences
    energy = grad_y**2 + grad_x**2
    # Integral image: window sums of every (size-1) x (size-1) block of differences in O(H W).
    integral = torch.nn.functional.pad(energy.cumsum(0).cumsum(1), (1, 0, 1, 0))
    k = size - 1
    window = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]  # (H-size+1, W-size+1)
    if generator is None:
        flat_index = int(torch.argmax(window))
    else:
        candidates = torch.nonzero(window.flatten() >= 0.8 * window.max()).flatten()
        choice = torch.randint(len(candidates), (1,), generator=generator)
        flat_index = int(candidates[choice])
    top, left = divmod(flat_index, window.shape[1])
    return top, left


def _to_display(image: torch.Tensor) -> np.ndarray:
    """uint8 or float [0, 1] ``(3, H, W)`` tensor -> uint8 ``(H, W, 3)`` NumPy array for ``imshow``."""
    return quantize(image.detach().cpu()).to(torch.uint8).permute(1, 2, 0).numpy()


def comparison_figure(
    images: Mapping[str, torch.Tensor],
    crop: tuple[int, int, int] | None = None,
    hr_key: str = "HR",
    scores: Mapping[str, str] | None = None,
    panel_inches: float = 2.6,
) -> Figure:
    """Full HR image with the crop marked, then the zoomed crop of every image side by side.

    Args:
        images: name -> RGB ``(3, H, W)`` image, uint8 0..255 (or float in
            [0, 1]), all the same size; e.g. ``{"HR": hr, "Bicubic": bicubic_sr,
            "EDSR": edsr_sr}``.  Crops appear in the dict's order.
        crop: ``(top, left, size)`` in HR pixels; default: :func:`pick_crop` of
            the HR image with ``size = min(64, H, W)``.
        hr_key: the key of the ground-truth image shown in full.
        scores: optional text per name shown under its title, e.g.
            ``{"EDSR": "32.10 dB / 0.9011"}``.
        panel_inches: height of the figure's panels in inches.

    Returns:
        A ``matplotlib.figure.Figure`` with ``1 + len(images)`` axes: the full
        HR image, then one crop per entry of ``images``, each titled with its
        name (and score).  Display it in a notebook or write it with
        :func:`save_figure`.

    Raises:
        ValueError: ``hr_key`` is missing; images are not RGB or differ in
            size; the crop does not fit inside the image.
    """
    if hr_key not in images:
        raise ValueError(f"images has no {hr_key!r} entry (keys: {', '.join(images)}); pass hr_key=")
    for name, image in images.items():
        _check_rgb(image, f"image {name!r}")
    hr = images[hr_key]
    height, width = hr.shape[-2:]
    for name, image in images.items():
        if tuple(image.shape[-2:]) != (height, width):
            raise ValueError(
                f"image {name!r} is {image.shape[-2]}x{image.shape[-1]} but {hr_key} is {height}x{width}; "
                "compare images of the same size (crop HR to a multiple of the scale)"
            )
    if crop is None:
        size = min(64, height, width)
        top, left = pick_crop(hr, size=size)
    else:
        top, left, size = (int(v) for v in crop)
    if size < 1 or top < 0 or left < 0 or top + size > height or left + size > width:
        raise ValueError(f"crop (top={top}, left={left}, size={size}) does not fit in the {height}x{width} image")

    aspect = width / height
    n_crops = len(images)
    fig = _DisplayableFigure(figsize=(panel_inches * (aspect + n_crops) + 0.3, panel_inches + 0.7))
    grid = fig.add_gridspec(1, 1 + n_crops, width_ratios=[aspect] + [1] * n_crops, wspace=0.06)

    full_ax = fig.add_subplot(grid[0, 0])
    full_ax.imshow(_to_display(hr), interpolation="antialiased")
    full_ax.add_patch(
        Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor="red", linewidth=1.5)
    )
    full_ax.set_title(f"{hr_key} ({width}x{height})", fontsize=9)
    full_ax.set_axis_off()

    for column, (name, image) in enumerate(images.items(), start=1):
        ax = fig.add_subplot(grid[0, column])
        patch = image[:, top : top + size, left : left + size]  # (3, size, size)
        ax.imshow(_to_display(patch), interpolation="nearest")
        title = name if not scores or name not in scores else f"{name}\n{scores[name]}"
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write a figure as PNG atomically (temp file in the same folder, then ``os.replace``).

    Args:
        fig: a matplotlib figure (e.g. from :func:`comparison_figure`).
        path: destination ``.png`` file; parent folders are created.
        dpi: resolution in dots per inch.

    Returns:
        The path written, as a ``Path``.
    """
    path = Path(path)
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
    return path
