"""What :func:`srlib.train.train` does differently for a reference-based model: its data, its step, its report.

A model registered with ``kind="reference"`` (:func:`srlib.models.model_kind`;
AMRSR) trains on :class:`srlib.data.reference.ReferencePatchDataset` samples:
an LR/HR target patch and ``TrainConfig.references`` HR reference crops, from
other views of the training scenes (``train_scenes``; default
:data:`srlib.data.reference.TRAIN_SCENES`) and, for the images of
``train_sets`` (T91), self-references cut from the same image.  The loss is
L1 on the HR patch, as for every other model (AMRSR's supplement, Sec. 1: the
PSNR-oriented variant is trained with the reconstruction loss only).

The same generator without references (``use_references=False``, the
single-image baseline) is built from the same registry entry, so it trains on
the very same target patches and only ignores the references: the comparison
between the two isolates what the references add.

Validation and the final report score whole groups of a reference group set
(``val_set`` / ``final_sets``: ``"MultiViewRef_mini"``, ``"MultiViewRef"``)
with :func:`srlib.evaluate.evaluate_references`.  The training never picks a
checkpoint by its validation score: the validation curve is for watching.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .utils import atomic_write

__all__ = ["check_reference_settings", "reference_patch_dataset", "split_batch", "validate_references",
           "write_reference_report"]


def check_reference_settings(config, reference_data: bool) -> None:
    """Raise :class:`srlib.train.TrainingError` for reference settings that do not fit the model kind.

    Args:
        config: a :class:`srlib.train.TrainConfig`.
        reference_data: whether the model is registered with ``kind="reference"``.

    Raises:
        TrainingError: reference options (``references``, ``train_scenes``,
            ``reference_size``, ``self_reference_prob``) given to a single-image
            model; a reference model without ``references >= 1``, or with a
            degradation other than bicubic (reference-SR sets are scored on
            bicubic LR images).
    """
    from .train import TrainingError

    given = [name for name in ("references", "train_scenes", "reference_size", "self_reference_prob")
             if getattr(config, name) is not None]
    if not reference_data:
        if given:
            raise TrainingError(f"{', '.join(given)} set for {config.model!r}, a single-image model: these options "
                                "are for reference-based models (e.g. --model amrsr)")
        return
    references = config.references
    if not isinstance(references, int) or isinstance(references, bool) or references < 1:
        raise TrainingError(f"{config.model!r} is a reference-based model: set references (--references K) to the "
                            f"number of reference crops per training sample, K >= 1; got {references!r}")
    if config.degradation != "bicubic":
        raise TrainingError(f"reference-based models train on bicubic LR targets only (the reference-SR protocol); "
                            f"got degradation={config.degradation!r}")


def reference_patch_dataset(config, progress: bool):
    """The :class:`srlib.data.reference.ReferencePatchDataset` of a run's settings.

    Args:
        config: a :class:`srlib.train.TrainConfig` of a reference model.
        progress: show the loading bar.

    Returns:
        The dataset: items with ``"lr"`` ``(3, p, p)``, ``"hr"`` ``(3, s p, s p)`` and
        ``"references"`` ``(K, 3, R, R)``, float32 RGB in [0, 1].

    Raises:
        srlib.data.reference.SceneLeakError: a training source is a test scene.
        srlib.data.DatasetNotFoundError: a scene or set is missing.
        ValueError: settings the dataset refuses (its message names them).
    """
    from .data.reference import TRAIN_SCENES, ReferencePatchDataset

    return ReferencePatchDataset(
        scenes=TRAIN_SCENES if config.train_scenes is None else tuple(config.train_scenes),
        images=tuple(config.train_sets),
        scale=config.scale,
        lr_patch=config.lr_patch,
        n_refs=config.references,
        ref_size=config.reference_size,
        samples_per_epoch=config.samples_per_epoch,
        self_reference_prob=config.self_reference_prob,
        augment=True,
        seed=config.seed,
        roots=config.data_roots,
        max_images=config.max_train_images,
        progress=progress,
    )


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
    """``(lr, hr, references)`` of a DataLoader batch of either training dataset.

    Args:
        batch: ``(lr, hr)`` from :class:`srlib.data.TrainPatchDataset`, or the dict
            batch of :class:`srlib.data.reference.ReferencePatchDataset`.

    Returns:
        ``lr`` ``(B, 3, p, p)``, ``hr`` ``(B, 3, s p, s p)`` and ``None`` or the list
        of ``K`` reference batches ``(B, 3, R, R)``, float32 in [0, 1].
    """
    if isinstance(batch, dict):
        references = batch["references"]  # (B, K, 3, R, R)
        return batch["lr"], batch["hr"], [references[:, k] for k in range(references.shape[1])]
    lr, hr = batch
    return lr, hr, None


def validate_references(model: nn.Module, config, device: torch.device) -> float:
    """Mean PSNR on Y (dB, shave = scale) on ``config.val_set`` with ``config.references`` references per group.

    When some group holds fewer references, every group gets that many (a set
    of 5-reference groups scores a 2-reference model with 2).
    """
    from .data.reference import ReferenceGroupDataset
    from .evaluate import evaluate_references

    groups = ReferenceGroupDataset(config.val_set, config.scale, roots=config.data_roots,
                                   max_groups=config.val_max_images).groups
    n_refs = min(config.references, *(len(group.references) for group in groups))
    scores = evaluate_references(model, config.val_set, config.scale, n_refs=n_refs, roots=config.data_roots,
                                 device=device, progress=False, max_groups=config.val_max_images)
    model.train()
    return scores["psnr"]


def _group_scores(result: dict) -> dict:
    return {"psnr": result["psnr"], "ssim": result["ssim"], "n_refs": result["n_refs"],
            "groups": [{k: g[k] for k in ("name", "scene", "psnr", "ssim")} for g in result["groups"]]}


def write_reference_report(model: nn.Module, config, out: Path, train_seconds: float, progress: bool = True) -> dict:
    """Score a trained reference-SR model (or its single-image baseline) and bicubic on ``config.final_sets``.

    Per set: bicubic; the model with 1 reference and with all of each group's
    references; for a model that takes references, also the wrong-scene control
    (every target given the references of a group of another scene).  Each entry
    keeps the per-group scores, from which :func:`srlib.evaluate.paired_gain`
    compares two runs.  Writes ``out/metrics.json``.

    Args:
        model: the trained model (any device).
        config: its :class:`srlib.train.TrainConfig`.
        out: output folder.
        train_seconds: time spent in optimisation steps, in seconds.
        progress: show evaluation progress.

    Returns:
        The dictionary written: ``{"model", "model_options", "scale", "steps",
        "parameters", "train_seconds", "references", "datasets": {name:
        {"bicubic", "model_1_ref", "model_all_refs", ["wrong_scene"], "gain_db"}}}``,
        each score ``{"psnr" (dB), "ssim", "n_refs", "groups": [...]}``; ``gain_db``
        is the all-references mean PSNR minus bicubic's.
    """
    from .evaluate import evaluate_references
    from .models import build_model, count_parameters
    from .models.registry import takes_references

    device = next(model.parameters()).device
    bicubic = build_model("bicubic", config.scale)
    uses_references = takes_references(model)
    datasets = {}
    for name in config.final_sets:
        def score(net, name=name, **options):
            return _group_scores(evaluate_references(net, name, config.scale, roots=config.data_roots,
                                                     progress=progress, **options))

        entry = {"bicubic": score(bicubic), "model_1_ref": score(model, n_refs=1, device=device),
                 "model_all_refs": score(model, device=device)}
        if uses_references:
            entry["wrong_scene"] = score(model, device=device, wrong_scene=True)
        entry["gain_db"] = entry["model_all_refs"]["psnr"] - entry["bicubic"]["psnr"]
        datasets[name] = entry
    metrics = {
        "model": config.model,
        "model_options": dict(model.options),
        "scale": config.scale,
        "steps": config.steps,
        "parameters": count_parameters(model),
        "train_seconds": round(train_seconds, 1),
        "references": config.references,
        "takes_references": uses_references,
        "datasets": datasets,
    }
    with atomic_write(out / "metrics.json", "w") as handle:
        handle.write(json.dumps(metrics, indent=2) + "\n")
    return metrics
