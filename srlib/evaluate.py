"""Benchmark evaluation: super-resolve LR images and score them as the papers do.

The protocol (EDSR, RCAN, NLSN, DLSN, ...): the LR input is the MATLAB-bicubic
downscaled HR image (:mod:`srlib.data`), the network output is quantised to
8 bit, and PSNR / SSIM are computed on the Y channel with ``shave = scale``
pixels cut from every border (:mod:`srlib.metrics`); a dataset's score is the
mean of its per-image scores.  ``degradation="bd"`` or ``"dn_s15"`` scores on the
blur-downscale or noise-downscale LR images instead (DLSN Tables 4 and 5,
:mod:`srlib.data.degrade`).

Two optional inference tricks:

* **tiling** (:func:`forward_tiled`) runs the network on overlapping LR tiles so
  that large images (Urban100 at x2 is up to 512x512 LR with attention that is
  quadratic in the number of pixels) fit in memory;
* **geometric self-ensemble** (:func:`forward_self_ensemble`, "+" in the
  papers' tables) averages the outputs for the 8 flips/rotations of the input.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from srlib.data import BenchmarkDataset, to_float, to_uint8
from srlib.data.degrade import Degradation, as_degradation
from srlib.metrics import psnr_y, ssim_y
from srlib.models import check_lr_batch, model_device
from srlib.utils import pick_device

__all__ = [
    "super_resolve",
    "forward_tiled",
    "forward_self_ensemble",
    "evaluate",
    "evaluate_images",
    "evaluate_references",
    "paired_gain",
    "upscale_image",
]


def super_resolve(
    model: nn.Module,
    lr: torch.Tensor,
    tile: int | None = None,
    tile_overlap: int = 16,
    self_ensemble: bool = False,
) -> torch.Tensor:
    """Run a model for inference: no gradients, eval mode, output clamped to [0, 1].

    Args:
        model: a super-resolution model with a ``scale`` attribute (from
            :func:`srlib.models.build_model`).
        lr: float32 RGB in [0, 1], ``(N, 3, h, w)``, on the model's device.
        tile: if given, process the LR image in tiles of at most
            ``tile x tile`` pixels (see :func:`forward_tiled`).
        tile_overlap: LR pixels shared by neighbouring tiles.
        self_ensemble: average the 8 flips/rotations
            (see :func:`forward_self_ensemble`); 8x slower.

    Returns:
        float32 RGB in [0, 1], ``(N, 3, scale*h, scale*w)``, on ``lr``'s device.

    Raises:
        ValueError: ``lr`` is not ``(N, 3, h, w)``; invalid tile settings.
        TypeError: ``lr`` is not floating point.

    The model is switched to eval mode for the call and then back to the mode
    it was in, so this is safe to call for validation inside a training loop.
    """
    check_lr_batch(lr)
    from .models.registry import takes_references

    if takes_references(model):
        raise ValueError(
            f"{getattr(model, 'model_name', type(model).__name__)} is a reference-based model: call it with its "
            "references, model(lr, [reference, ...]); super_resolve and srlib eval score single-image models"
        )
    if tile is not None:
        scale = getattr(model, "scale", None)
        if scale is None:
            raise ValueError("tiling needs the model's scale: build models with srlib.models.build_model")
        forward: Callable[[torch.Tensor], torch.Tensor] = partial(
            forward_tiled, model, tile=tile, overlap=tile_overlap, scale=int(scale)
        )
    else:
        forward = model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            sr = forward_self_ensemble(forward, lr) if self_ensemble else forward(lr)
    finally:
        model.train(was_training)
    return sr.clamp_(0.0, 1.0)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` shared.

    Every tile is full size: the last one is moved back to end at ``length``
    (it then overlaps its neighbour by more than ``overlap``).  A length up to
    ``tile`` gets a single tile of that length.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _keep_mask(start: int, size: int, length: int, margin: int, scale: int, device) -> torch.Tensor:
    """1-D HR weights of one tile: 0 on the ``margin`` LR pixels facing another tile, else 1."""
    keep = torch.ones(size, device=device)
    if start > 0:
        keep[:margin] = 0  # left/top side faces a neighbouring tile
    if start + size < length:
        keep[size - margin :] = 0  # right/bottom side faces a neighbouring tile
    return keep.repeat_interleave(scale)  # (scale * size,)


def forward_tiled(
    model: Callable[[torch.Tensor], torch.Tensor],
    lr: torch.Tensor,
    tile: int,
    overlap: int,
    scale: int,
) -> torch.Tensor:
    """Super-resolve ``lr`` tile by tile and stitch the outputs.

    The LR image is covered by tiles of ``tile x tile`` pixels (smaller only
    when the image itself is smaller) that overlap their neighbours by at least
    ``overlap`` pixels; the last row/column of tiles is shifted back to end at
    the image border, so any ``H, W`` works.  Near a tile's cut edges the
    network sees zero padding instead of the real neighbours, so each tile
    contributes only its inner part: the ``overlap // 2`` LR pixels on every
    side that faces another tile get weight 0.  Outputs and weights are
    accumulated and divided, which averages tiles where their kept parts
    overlap.  If ``overlap // 2`` is at least the network's receptive-field
    radius in LR pixels, the result equals the untiled output up to float
    rounding; smaller overlaps give visible seams only for wide receptive
    fields (non-local attention sees the whole tile, so it never matches
    exactly - larger tiles are closer).

    Args:
        model: callable mapping float ``(N, 3, th, tw)`` to ``(N, 3, scale*th, scale*tw)``.
        lr: float32 RGB in [0, 1], ``(N, 3, H, W)``.
        tile: maximum tile side in LR pixels (>= 1).
        overlap: LR pixels shared by neighbouring tiles (0 <= overlap < tile).
        scale: the model's upscaling factor.

    Returns:
        ``(N, 3, scale*H, scale*W)``, the model's dtype, on ``lr``'s device
        (not clamped).

    Raises:
        ValueError: invalid ``tile`` / ``overlap``, or the model's output is not
            ``scale`` times its input.
    """
    if int(tile) != tile or tile < 1:
        raise ValueError(f"tile must be a positive integer (LR pixels), got {tile!r}")
    if int(overlap) != overlap or not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be an integer in [0, tile={tile}), got {overlap!r}")
    check_lr_batch(lr)
    n, _, height, width = lr.shape
    margin = overlap // 2
    output: torch.Tensor | None = None
    weight = torch.zeros(1, 1, scale * height, scale * width, device=lr.device)
    for top in _tile_starts(height, tile, overlap):
        tile_h = min(tile, height)
        keep_rows = _keep_mask(top, tile_h, height, margin, scale, lr.device)
        for left in _tile_starts(width, tile, overlap):
            tile_w = min(tile, width)
            keep_cols = _keep_mask(left, tile_w, width, margin, scale, lr.device)
            sr_tile = model(lr[:, :, top : top + tile_h, left : left + tile_w])  # (N, 3, s*th, s*tw)
            expected = (n, 3, scale * tile_h, scale * tile_w)
            if tuple(sr_tile.shape) != expected:
                raise ValueError(
                    f"the model turned a {tile_h}x{tile_w} tile into shape {tuple(sr_tile.shape)}, "
                    f"expected {expected} for scale {scale}"
                )
            if output is None:
                output = torch.zeros(n, 3, scale * height, scale * width, dtype=sr_tile.dtype, device=lr.device)
            tile_weight = keep_rows[:, None] * keep_cols[None, :]  # (s*th, s*tw)
            rows = slice(scale * top, scale * (top + tile_h))
            cols = slice(scale * left, scale * (left + tile_w))
            output[:, :, rows, cols] += sr_tile * tile_weight.to(sr_tile.dtype)
            weight[:, :, rows, cols] += tile_weight
    # Every pixel lies in the kept part of at least one tile (2 * margin <= overlap).
    return output / weight.to(output.dtype)


def forward_self_ensemble(
    model_fn: Callable[[torch.Tensor], torch.Tensor], lr: torch.Tensor
) -> torch.Tensor:
    """Geometric self-ensemble: average the outputs for the 8 dihedral transforms of the input.

    The input is optionally flipped left-right and rotated by 0, 90, 180 and
    270 degrees; each output is transformed back (rotated back, then
    un-flipped) before averaging, so an equivariant model (e.g. bicubic)
    returns its plain output.

    Args:
        model_fn: callable mapping float ``(N, 3, h, w)`` to ``(N, 3, s*h, s*w)``;
            it must accept both orientations (``h x w`` and ``w x h``).
        lr: float RGB ``(N, 3, h, w)``.

    Returns:
        The mean output, ``(N, 3, s*h, s*w)``, not clamped.

    Source: Lim et al., "Enhanced Deep Residual Networks for Single Image
    Super-Resolution", CVPRW 2017, Sec. 4.4 ("geometric self-ensemble",
    models marked "+"); Timofte et al., "Seven ways to improve example-based
    single image super resolution", CVPR 2016.
    """
    total: torch.Tensor | None = None
    for flip in (False, True):
        flipped = lr.flip(-1) if flip else lr
        for quarter_turns in range(4):
            sr = model_fn(torch.rot90(flipped, quarter_turns, dims=(-2, -1)))
            sr = torch.rot90(sr, -quarter_turns, dims=(-2, -1))
            if flip:
                sr = sr.flip(-1)
            total = sr if total is None else total + sr
    return total / 8


def _is_out_of_memory(err: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(err, oom_type)) or "out of memory" in str(err).lower()


def _out_of_memory_message(what: str, lr_shape: Sequence[int], device: torch.device, tile: int | None) -> str:
    h, w = lr_shape[-2:]
    if tile is None:
        advice = "evaluate in tiles with --tile 256 (tile=256 in Python), or a smaller tile"
    else:
        advice = f"use smaller tiles than --tile {tile}, e.g. --tile {max(16, tile // 2)}"
    return f"{what} (LR {h}x{w}) does not fit in the memory of {device}: {advice}"


def _run_super_resolve(model, lr, tile, tile_overlap, self_ensemble, what: str) -> torch.Tensor:
    """:func:`super_resolve` that turns out-of-memory errors into advice to tile."""
    try:
        return super_resolve(model, lr, tile=tile, tile_overlap=tile_overlap, self_ensemble=self_ensemble)
    except RuntimeError as err:
        if not _is_out_of_memory(err):
            raise
        if lr.device.type == "cuda":
            torch.cuda.empty_cache()
        message = _out_of_memory_message(what, lr.shape, lr.device, tile)
        try:
            new_error = type(err)(message)
        except TypeError:
            new_error = RuntimeError(message)
        raise new_error from err


def _prepare_model(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Resolve the device and move the model there (in place)."""
    if device is None:
        return model_device(model)
    device = pick_device(device) if isinstance(device, str) else torch.device(device)
    model.to(device)
    return device


def _check_scale(model: nn.Module, scale: int) -> None:
    model_scale = getattr(model, "scale", None)
    if model_scale is None:
        raise ValueError("the model has no 'scale' attribute; build it with srlib.models.build_model")
    if int(model_scale) != int(scale):
        raise ValueError(
            f"the model upscales x{model_scale} but the evaluation asks for x{scale}: "
            f"pass --scale {model_scale} or load a x{scale} checkpoint"
        )


def _open_dataset(dataset: Any, scale: int, roots, max_images: int | None,
                  degradation: Degradation) -> tuple[str, Any, int]:
    """``(name, dataset, number of images to use)`` for a set name or a dataset object."""
    if isinstance(dataset, str):
        opened = BenchmarkDataset(dataset, scale, roots=roots, max_images=max_images, degradation=degradation)
        name = dataset
    else:
        opened = dataset
        name = str(getattr(dataset, "name", type(dataset).__name__))
        own = getattr(dataset, "degradation", None)
        if own is not None and as_degradation(own) != degradation:
            raise ValueError(
                f"dataset {name} makes its LR images with the {as_degradation(own).key} degradation, but "
                f"{degradation.key} was asked for; pass the degradation to the dataset or leave it out here"
            )
    count = len(opened) if max_images is None else min(len(opened), int(max_images))
    if count == 0:
        raise ValueError(f"dataset {name} has no images to evaluate")
    return name, opened, count


def evaluate_images(
    model: nn.Module,
    dataset: str | Any,
    scale: int,
    roots: Any = None,
    device: str | torch.device | None = None,
    tile: int | None = None,
    tile_overlap: int = 16,
    self_ensemble: bool = False,
    progress: bool = True,
    max_images: int | None = None,
    return_images: bool = False,
    degradation: str | Degradation = "bicubic",
) -> list[dict]:
    """Per-image PSNR / SSIM (Y channel, shave = scale) of a model on one dataset.

    Args:
        model: a model from :func:`srlib.models.build_model` (or a checkpoint).
        dataset: a benchmark name (``"Set5"``, ``"Set14"``, ``"B100"``,
            ``"Urban100"``) opened with ``srlib.data.BenchmarkDataset``, or any
            object with ``len()`` whose items are ``{"name", "hr", "lr"}``
            (uint8 ``(3, s*h, s*w)`` and ``(3, h, w)``).
        scale: the upscaling factor; must equal ``model.scale``.
        roots: dataset search folders, passed to ``BenchmarkDataset``.
        device: where to run (``"cpu"``, ``"cuda"``, ``"auto"``...); the model
            is moved there.  Default: where the model already is.
        tile, tile_overlap, self_ensemble: see :func:`super_resolve`.
        progress: show a tqdm progress bar.
        max_images: evaluate only the first ``max_images`` images.
        return_images: also return ``"lr"``, ``"hr"`` and ``"sr"`` (uint8 RGB
            ``(3, H, W)`` on the CPU) in each record, e.g. for
            :func:`srlib.viz.comparison_figure`.
        degradation: how a named set's LR images are made: a
            :class:`srlib.data.degrade.Degradation` or its key, ``"bicubic"``
            (default), ``"bd"`` (x3) or ``"dn_s15"``.  A dataset object brings
            its own LR images; one with a different ``degradation`` attribute
            is refused.

    Returns:
        One dict per image, in dataset order: ``{"name": str, "psnr": dB
        (float), "ssim": float}`` plus the images if ``return_images``.

    Raises:
        ValueError: ``scale`` differs from ``model.scale``; the dataset is empty;
            the degradation is unknown or not defined at ``scale``.
        DatasetNotFoundError: (from ``srlib.data``) the dataset is not installed.
        RuntimeError: the device ran out of memory; the message suggests ``--tile``.
    """
    _check_scale(model, scale)
    degradation = as_degradation(degradation)
    degradation.check_scale(scale)
    run_device = _prepare_model(model, device)
    name, opened, count = _open_dataset(dataset, scale, roots, max_images, degradation)
    records: list[dict] = []
    bar = tqdm(range(count), desc=f"{name} x{scale}", unit="img", disable=not progress)
    for index in bar:
        sample = opened[index]
        lr = to_float(sample["lr"]).unsqueeze(0).to(run_device)  # (1, 3, h, w)
        what = f"{name} image {sample['name']!r}"
        sr = _run_super_resolve(model, lr, tile, tile_overlap, self_ensemble, what)  # (1, 3, s*h, s*w)
        sr_uint8 = to_uint8(sr[0].cpu())  # (3, s*h, s*w), quantised as a saved PNG
        hr = sample["hr"]
        if tuple(hr.shape) != tuple(sr_uint8.shape):
            raise ValueError(
                f"{what}: SR output {tuple(sr_uint8.shape)} and HR {tuple(hr.shape)} differ; "
                f"the HR image must be cropped to a multiple of the scale {scale}"
            )
        record = {
            "name": sample["name"],
            "psnr": float(psnr_y(sr_uint8, hr, shave=scale)),
            "ssim": float(ssim_y(sr_uint8, hr, shave=scale)),
        }
        if return_images:
            record.update(lr=sample["lr"], hr=hr, sr=sr_uint8)
        records.append(record)
        bar.set_postfix(psnr=f"{sum(r['psnr'] for r in records) / len(records):.3f}")
    bar.close()
    return records


def evaluate(
    model: nn.Module,
    datasets: str | Sequence[str | Any],
    scale: int,
    roots: Any = None,
    device: str | torch.device | None = None,
    tile: int | None = None,
    tile_overlap: int = 16,
    self_ensemble: bool = False,
    progress: bool = True,
    max_images: int | None = None,
    per_image: bool = False,
    degradation: str | Degradation = "bicubic",
) -> dict[str, dict]:
    """Mean PSNR / SSIM on the Y channel (shave = scale) of a model on benchmark sets.

    Args:
        model: a model from :func:`srlib.models.build_model` or
            :func:`srlib.checkpoint.model_from_checkpoint`.
        datasets: one name or a list, e.g. ``["Set5", "Set14", "B100",
            "Urban100"]`` (dataset objects work too, see :func:`evaluate_images`).
        scale: upscaling factor; must equal ``model.scale``.
        roots, device, tile, tile_overlap, self_ensemble, progress, max_images, degradation:
            see :func:`evaluate_images`.
        per_image: also return each image's scores under ``"per_image"``.

    Returns:
        ``{dataset name: {"psnr": mean dB, "ssim": mean SSIM, "images": n}}``
        (plus ``"per_image": [{"name", "psnr", "ssim"}, ...]`` if
        ``per_image``).  Means are over per-image scores, as in the papers.

    Raises:
        ValueError: ``scale`` differs from ``model.scale``; an empty dataset; a
            degradation unknown or not defined at ``scale``.
        DatasetNotFoundError: (from ``srlib.data``) a dataset is not installed.
        RuntimeError: the device ran out of memory; the message suggests ``--tile``.

    Example: ``evaluate(build_model("bicubic", 2), ["Set5"], 2)`` gives
    ``{"Set5": {"psnr": 33.649, "ssim": 0.9295, "images": 5}}`` (the papers
    report 33.66 / 0.9299); ``evaluate(build_model("bicubic", 3), ["Set5"], 3,
    degradation="bd")`` gives 28.777 dB / 0.8309 (DLSN Table 4: 28.78 / 0.8308).
    """
    _check_scale(model, scale)
    degradation = as_degradation(degradation)
    degradation.check_scale(scale)
    # A single name or dataset object, or a list/tuple of them.
    datasets = list(datasets) if isinstance(datasets, (list, tuple)) else [datasets]
    results: dict[str, dict] = {}
    for dataset in datasets:
        records = evaluate_images(
            model,
            dataset,
            scale,
            roots=roots,
            device=device,
            tile=tile,
            tile_overlap=tile_overlap,
            self_ensemble=self_ensemble,
            progress=progress,
            max_images=max_images,
            degradation=degradation,
        )
        name = dataset if isinstance(dataset, str) else str(getattr(dataset, "name", type(dataset).__name__))
        summary = {
            "psnr": sum(r["psnr"] for r in records) / len(records),
            "ssim": sum(r["ssim"] for r in records) / len(records),
            "images": len(records),
        }
        if per_image:
            summary["per_image"] = records
        results[name] = summary
    return results


def upscale_image(
    model: nn.Module,
    image: torch.Tensor,
    device: str | torch.device | None = None,
    tile: int | None = None,
    tile_overlap: int = 16,
    self_ensemble: bool = False,
) -> torch.Tensor:
    """Super-resolve one image without ground truth (the ``srlib upscale`` command).

    Args:
        model: a model with a ``scale`` attribute.
        image: uint8 RGB ``(3, h, w)``, 0..255 (as ``srlib.data.load_image`` returns).
        device: where to run; the model is moved there.  Default: the model's device.
        tile, tile_overlap, self_ensemble: see :func:`super_resolve`.

    Returns:
        uint8 RGB ``(3, scale*h, scale*w)`` on the CPU.

    Raises:
        ValueError: ``image`` is not ``(3, h, w)``.
        TypeError: ``image`` is not uint8.
        RuntimeError: the device ran out of memory; the message suggests ``--tile``.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 RGB image shaped (3, h, w), got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image (0..255), got dtype {image.dtype}")
    run_device = _prepare_model(model, device)
    lr = to_float(image).unsqueeze(0).to(run_device)  # (1, 3, h, w)
    sr = _run_super_resolve(model, lr, tile, tile_overlap, self_ensemble, "the image")
    return to_uint8(sr[0].cpu())  # (3, s*h, s*w)


def evaluate_references(
    model: nn.Module,
    dataset: str | Any = "MultiViewRef",
    scale: int = 4,
    n_refs: int | None = None,
    roots: Any = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_groups: int | None = None,
    wrong_scene: bool = False,
) -> dict:
    """PSNR / SSIM (Y, shave = scale) of a model on a reference-SR group set, per group and on average.

    A model that takes references (:func:`srlib.models.takes_references`) gets the first ``n_refs``
    references of each group (HR, full resolution; the model makes its own
    matching copies); a single-image model is scored on the same targets and
    ignores the references, so both fill the same table.

    Args:
        model: a model from :func:`srlib.models.build_model` (or a checkpoint) of ``scale``.
        dataset: a registered group set (``"MultiViewRef"``, ``"MultiViewRef_mini"``),
            a folder, or a :class:`srlib.data.reference.ReferenceGroupDataset`.
        scale: the upscaling factor (4 is the field's reference-SR setting).
        n_refs: references per group (None: all of each group).
        roots: dataset search folders.
        device: where to run; default where the model is.
        progress: show a tqdm bar.
        max_groups: score only the first groups.
        wrong_scene: the control - give each target the references of the next
            group whose scene differs (a reference model must not gain from them).

    Returns:
        ``{"dataset", "n_refs", "wrong_scene", "groups": [{"name", "scene", "psnr" (dB), "ssim"}],
        "psnr": mean dB, "ssim": mean}``.

    Raises:
        ValueError: ``scale`` differs from the model's; ``n_refs`` larger than a
            group has; ``wrong_scene`` on a set with a single scene.
        DatasetNotFoundError: the set is not installed.
    """
    from .data.reference import ReferenceGroupDataset

    _check_scale(model, scale)
    run_device = _prepare_model(model, device)
    opened = dataset if isinstance(dataset, ReferenceGroupDataset) else ReferenceGroupDataset(
        dataset, scale, n_refs=n_refs, roots=roots, max_groups=max_groups)
    samples = [opened[i] for i in range(len(opened))]
    donors = list(range(len(samples)))
    if wrong_scene:
        for i, sample in enumerate(samples):
            others = [j for j in [*range(i + 1, len(samples)), *range(i)] if samples[j]["scene"] != sample["scene"]]
            if not others:
                raise ValueError(f"wrong_scene needs groups of another scene than {sample['scene']!r}; "
                                 f"{opened.name} has only that scene")
            donors[i] = others[0]
    from .models.registry import takes_references

    uses_references = takes_references(model)
    was_training = model.training
    model.eval()
    groups = []
    try:
        for i, sample in enumerate(tqdm(samples, desc=f"{opened.name} x{scale}", unit="group", disable=not progress)):
            lr = to_float(sample["lr"]).unsqueeze(0).to(run_device)  # (1, 3, h, w)
            with torch.no_grad():
                if uses_references:
                    references = [to_float(r).unsqueeze(0).to(run_device) for r in samples[donors[i]]["references"]]
                    sr = model(lr, references).clamp(0, 1)  # (1, 3, s h, s w)
                else:
                    sr = super_resolve(model, lr)
            sr_uint8 = to_uint8(sr[0].cpu())
            groups.append({"name": sample["name"], "scene": sample["scene"],
                           "psnr": float(psnr_y(sr_uint8, sample["hr"], shave=scale)),
                           "ssim": float(ssim_y(sr_uint8, sample["hr"], shave=scale))})
    finally:
        model.train(was_training)
    return {
        "dataset": opened.name, "n_refs": opened.n_refs, "wrong_scene": bool(wrong_scene), "groups": groups,
        "psnr": sum(g["psnr"] for g in groups) / len(groups), "ssim": sum(g["ssim"] for g in groups) / len(groups),
    }


def paired_gain(scores: dict, baseline: dict, confidence: float = 0.95, n_resamples: int = 10_000,
                seed: int = 0, metric: str = "psnr") -> dict:
    """Mean per-group gain of one result over another, with a percentile bootstrap interval over the groups.

    Both results are :func:`evaluate_references` outputs (or any dict with a
    ``"groups"`` list of ``{"name", metric}``) on the same groups; the gain of
    group ``g`` is ``scores[g] - baseline[g]`` (dB for PSNR).  The interval
    resamples the groups with replacement (``scipy.stats.bootstrap``,
    percentile method), so it shows how much the mean depends on which groups
    the set happens to hold; it says nothing about training seeds.

    Args:
        scores, baseline: the two results.
        confidence: the interval's level in (0, 1).
        n_resamples: bootstrap resamples.
        seed: seeds the resampling (``numpy.random.default_rng``).
        metric: ``"psnr"`` or ``"ssim"``.

    Returns:
        ``{"mean", "low", "high", "groups": n, "wins": groups with a positive gain}``.

    Raises:
        ValueError: the two results hold different groups, or fewer than 2.
    """
    import numpy as np
    from scipy.stats import bootstrap

    ours = {g["name"]: g[metric] for g in scores["groups"]}
    theirs = {g["name"]: g[metric] for g in baseline["groups"]}
    if ours.keys() != theirs.keys() or len(ours) < 2:
        raise ValueError(f"paired_gain needs the same >= 2 groups in both results; got {sorted(ours)} and "
                         f"{sorted(theirs)}")
    gains = np.array([ours[name] - theirs[name] for name in sorted(ours)])
    interval = bootstrap((gains,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                         method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    return {"mean": float(gains.mean()), "low": float(interval.low), "high": float(interval.high),
            "groups": len(gains), "wins": int((gains > 0).sum())}
