"""Training loop for compact SR models: L1 loss, Adam, cosine schedule, resumable.

The recipe follows the EDSR lineage that CSNLN, NLSN and DLSN all train with
(L1 loss, Adam with betas (0.9, 0.999) and eps 1e-8, random LR patches of 48
pixels with flips and transposes), shrunk so that a useful model trains in
minutes on a laptop CPU:

* ``quick`` preset: a narrow ``edsr_baseline`` on T91 that beats bicubic on
  Set5 x2 by more than 2 dB in under 10 minutes on 2 CPU cores;
* ``full`` preset: the standard EDSR-baseline size for a GPU budget;
* ``smoke`` preset: a few steps, for tests and notebooks in quick mode.

A reference-based model (AMRSR) trains through the same loop on target patches with
reference crops, and is validated and reported on reference group sets; what differs is in
:mod:`srlib.train_reference`.

``PRESETS`` holds the settings every model shares; each model declares its own
per preset (architecture size, patch size, validation tiles) when it registers
(``@register_model(name, presets=...)``), so this module names no model.

Everything a run needs to continue is in ``<out>/checkpoint.pt`` (model,
optimizer, scheduler, step, RNG states, configuration, loss history), written
atomically every ``checkpoint_every`` steps, about every ``checkpoint_minutes``
of wall clock, at the end, and when the run is interrupted with Ctrl-C.
``train(config, out, resume=True)`` continues from it; because the training
patches are a pure function of (seed, epoch, index), a resumed run sees exactly
the batches the uninterrupted run would have seen, whichever step it stopped at.

Started by ``torchrun --nproc_per_node=K -m srlib train ...``, the same loop
trains with DistributedDataParallel on ``K`` processes (see
:mod:`srlib.distributed`): each reads its slice of the same global batches,
rank 0 alone writes the checkpoint and the report, and a checkpoint written by
either kind of run resumes in the other.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import checkpoint_payload, load_checkpoint, save_checkpoint
from .models import available_models, build_model, count_parameters
from .models.registry import model_presets, takes_references
from .plugins import load_plugins
from .train_reference import (
    check_reference_settings,
    reference_patch_dataset,
    split_batch,
    validate_references,
    write_reference_report,
)
from .utils import atomic_write, pick_device

__all__ = ["TrainConfig", "PRESETS", "preset_config", "same_training_config", "train", "TrainingError", "write_run_report"]


class TrainingError(RuntimeError):
    """A training run cannot start or continue (bad configuration, output folder in use)."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the checkpoint).

    Attributes:
        model: registry name (see ``srlib.models.available_models()``).
        model_options: keyword options of the model builder.
        scale: upscaling factor (2, 3 or 4 for ``edsr_baseline``).
        train_sets: datasets whose HR images give the training patches.
        val_set: dataset for periodic validation PSNR (Y, shave = scale).
        val_max_images: validate on the first N images only (``None``: all).
        val_tile: evaluate (validation and the final report) in LR tiles of at
            most this many pixels (``None``: whole images).  Attention models
            whose cost grows with the square of the number of positions need it.
        final_sets: datasets scored at the end in ``metrics.json``.
        lr_patch: LR patch size in pixels (HR patch = ``scale * lr_patch``).
        batch_size: patches per step; under torchrun the global batch, split evenly
            over the processes (it must be a multiple of their number).
        steps: optimiser steps in the whole run.
        learning_rate: peak learning rate of Adam.
        min_learning_rate: learning rate at the end of the cosine schedule.
        schedule: ``"cosine"`` (from ``learning_rate`` to ``min_learning_rate``)
            or ``"constant"``.
        samples_per_epoch: patches per epoch (an epoch only matters for the
            deterministic patch sequence).
        val_every: validate every N steps (0: only at the end).
        checkpoint_every: save ``checkpoint.pt`` every N steps (0: only at the end).
        checkpoint_minutes: also save it at the first logging step (every ``log_every``
            steps) once this many minutes of wall clock have passed since the last save
            (0: never by the clock), so that a run stopped between two step-based
            checkpoints keeps most of its work; a run resumed from such a checkpoint
            sees the batches of the uninterrupted run and logs the same losses.
        log_every: record the mean training loss every N steps.
        num_workers: DataLoader worker processes.
        seed: seeds weight initialisation and the patch sequence.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a device string.
        bf16: use bfloat16 autocast on CUDA (ignored elsewhere).
        cpu_bf16: also use bfloat16 autocast when training on a CPU with native
            bfloat16 instructions (AVX512-BF16 or AMX), where the convolutions of a
            compact model run about twice as fast (2.3x per step for the quick
            ``edsr_baseline`` on 2 cores); weights, optimiser state, loss and every
            evaluation stay in float32.  On a CPU without them the run stays in
            float32 (with a warning), since emulated bfloat16 is slower.
        channels_last: keep weights and batches in the channels-last memory
            format (NHWC), which the CPU and GPU convolution kernels run faster on
            (about 25% per step on a 2-core CPU for the quick preset).
        max_train_images: use only the first N training images (``None``: all).
        degradation: how LR images are made from HR images, for the training
            patches, the validation and the final report: ``"bicubic"`` (the
            default, and what a configuration saved without the field means),
            ``"bd"`` (blur-downscale, x3 only) or ``"dn"`` (noise-downscale),
            see :mod:`srlib.data.degrade`.  Not part of the architecture, so
            it does not change which checkpoints load into which models.
        noise_sigma: the DN noise sigma on the 0..255 scale (``degradation="dn"``
            only; ``None`` otherwise).
        data_roots: extra dataset roots searched before ``SRLIB_DATA`` and ``data/``.
        plugins: plugin files (absolute paths) that register the model or its
            attention (see :mod:`srlib.plugins`); loaded before the model is
            built and recorded in the checkpoint (``"plugins"``), so that
            :func:`srlib.checkpoint.model_from_checkpoint` loads them again.
        references: reference crops per training sample, for a reference-based
            model (``kind="reference"``, e.g. ``amrsr``; see
            :mod:`srlib.train_reference`); ``None`` for single-image models.
        train_scenes: multi-view training scenes of a reference model
            (registered names or folders; ``None``: the default
            :data:`srlib.data.reference.TRAIN_SCENES`); ``train_sets`` then give
            the self-reference images.
        reference_size: side of a reference crop in HR pixels (``None``: the HR patch side).
        self_reference_prob: probability of a self-reference sample (``None``:
            every source image equally likely; see
            :class:`srlib.data.reference.ReferencePatchDataset`).
    """

    model: str = "edsr_baseline"
    model_options: dict = field(default_factory=dict)
    scale: int = 2
    train_sets: tuple = ("T91",)
    val_set: str = "Set5"
    val_max_images: int | None = None
    val_tile: int | None = None
    final_sets: tuple = ("Set5", "Set14")
    lr_patch: int = 48
    batch_size: int = 16
    steps: int = 1000
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-5
    schedule: str = "cosine"
    samples_per_epoch: int = 16000
    val_every: int = 500
    checkpoint_every: int = 500
    checkpoint_minutes: float = 5.0
    log_every: int = 10
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    cpu_bf16: bool = False
    channels_last: bool = True
    max_train_images: int | None = None
    degradation: str = "bicubic"
    noise_sigma: float | None = None
    data_roots: list | None = None
    plugins: list | None = None
    references: int | None = None
    train_scenes: tuple | None = None
    reference_size: int | None = None
    self_reference_prob: float | None = None

    def to_dict(self) -> dict:
        """JSON-friendly dictionary (tuples become lists)."""
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``TrainingError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise TrainingError(f"unknown training options {sorted(unknown)}; known: {sorted(names)}")
        d = dict(d)
        for key in ("train_sets", "final_sets", "train_scenes"):
            if key in d and d[key] is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    def degradation_spec(self):
        """The :class:`srlib.data.degrade.Degradation` of :attr:`degradation` and :attr:`noise_sigma`.

        Raises:
            TrainingError: an unknown degradation, ``dn`` without a sigma or with a
                negative one, a sigma given to another degradation.
        """
        from .data.degrade import Degradation

        try:
            return Degradation(self.degradation, self.noise_sigma)
        except (TypeError, ValueError) as error:
            raise TrainingError(f"bad degradation setting: {error}") from None


# Presets: the settings shared by every model.  Each model adds its own settings per preset
# (architecture size, and anything it needs such as tiled validation for attention models) when
# it registers: ``@register_model(name, presets={...})``, read with
# ``srlib.models.registry.model_presets(name, preset)``.
# "quick" holds what every model shares; edsr_baseline's own quick settings (4,000 bf16 steps on CPU) make
# the README's main job (Set5 x2 36.77 dB in 8.5 min on 2 cores).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(
        batch_size=16,
        steps=1600,
        learning_rate=1e-3,
        min_learning_rate=1e-5,
        val_every=400,
        checkpoint_every=400,
    ),
    "full": dict(
        batch_size=16,
        steps=150_000,
        learning_rate=2e-4,
        min_learning_rate=1e-6,
        val_every=5000,
        checkpoint_every=5000,
        num_workers=4,
    ),
    "smoke": dict(
        batch_size=4,
        steps=20,
        learning_rate=1e-3,
        lr_patch=24,
        val_every=10,
        val_max_images=2,
        checkpoint_every=10,
        samples_per_epoch=200,
        max_train_images=8,
    ),
}


def preset_config(preset: str, **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a named preset with some fields replaced.

    The preset's shared settings (``PRESETS``) come first, then the settings the
    chosen model registered for that preset (``presets=`` of
    :func:`srlib.models.register_model`, read with
    :func:`srlib.models.registry.model_presets`; e.g. the architecture size),
    then ``overrides``.

    Args:
        preset: ``"quick"``, ``"full"`` or ``"smoke"``.
        **overrides: any :class:`TrainConfig` field (``model`` picks the per-model
            settings; default ``"edsr_baseline"``); ``None`` values are ignored so
            that unset command-line options keep the preset's value.  The files
            in ``plugins`` are loaded first, so a model registered by a plugin
            gets its own presets.

    Raises:
        TrainingError: unknown preset, field or model.
        srlib.plugins.PluginError: a plugin file is missing or fails to import.
    """
    if preset not in PRESETS:
        raise TrainingError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("plugins"):
        given["plugins"] = load_plugins(given["plugins"])
    model = given.get("model", TrainConfig.model)
    try:
        own = model_presets(model, preset)
    except ValueError:
        raise TrainingError(
            f"unknown model {model!r}; available models: {', '.join(available_models())} "
            "(a model registered by a plugin needs its file: plugins=[...], --plugin FILE.py or SRLIB_PLUGINS)"
        ) from None
    # Deep copies: a config edited in place must never change a registration or PRESETS.
    values = copy.deepcopy({**PRESETS[preset], **own, **given})
    return TrainConfig.from_dict(values)


def _learning_rate_factor(config: TrainConfig, step: int) -> float:
    if config.schedule == "constant":
        return 1.0
    if config.schedule != "cosine":
        raise TrainingError(f"unknown schedule {config.schedule!r}; use 'cosine' or 'constant'")
    progress = min(step / max(config.steps, 1), 1.0)
    floor = config.min_learning_rate / config.learning_rate
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class _ShardSampler(torch.utils.data.Sampler):
    """This process's sample indices of global batches ``first, first + 1, ..., count - 1`` of an epoch.

    Global batch ``g`` holds samples ``g B .. g B + B - 1`` (``B = batch_size``); process ``rank``
    of ``world_size`` reads its ``b = B / world_size`` consecutive ones from ``g B + rank b``, so the
    processes together read the batches of a single process (which reads them all) in its order,
    and a resumed run can begin mid-epoch.
    """

    def __init__(self, first: int, count: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.first, self.count = first, count
        self.batch_size, self.share = batch_size, distributed.rank_batch_size(batch_size, world_size)
        self.offset = rank * self.share

    def __iter__(self):
        for batch in range(self.first, self.count):
            start = batch * self.batch_size + self.offset
            yield from range(start, start + self.share)

    def __len__(self):
        return (self.count - self.first) * self.share


def _same_architecture(model: str, scale: int, saved_options: dict, options: dict) -> bool:
    """True when two option sets of ``model`` build the same network (older layouts upgraded first)."""
    from .models.registry import upgrade_checkpoint

    try:
        saved_options, _ = upgrade_checkpoint(model, saved_options, {})
        return repr(build_model(model, scale, **saved_options)) == repr(build_model(model, scale, **options))
    except (TypeError, ValueError):
        return False


def same_training_config(saved: dict, config: TrainConfig,
                         ignore: tuple[str, ...] = ("plugins", "data_roots", "checkpoint_minutes")) -> bool:
    """True when a saved configuration (``TrainConfig.to_dict()`` of a run or run record) trains what ``config`` does.

    Fields missing from an older run take their defaults, model options spelled by an older
    srlib are upgraded first, and the models are compared by the network they build. The
    fields in ``ignore`` (machine-specific paths and the wall-clock checkpoint interval by default,
    neither of which changes what is trained) are not compared.
    """
    a, b = TrainConfig.from_dict(saved).to_dict(), config.to_dict()
    for key in ignore:
        a.pop(key, None), b.pop(key, None)
    saved_options, options = a.pop("model_options"), b.pop("model_options")
    return a == b and _same_architecture(config.model, config.scale, saved_options, options)


def _check_resume_compatible(saved: dict, config: TrainConfig, path: Path) -> None:
    # A run saved before the degradation fields existed trained on bicubic LR images.
    saved = {"degradation": TrainConfig.degradation, "noise_sigma": TrainConfig.noise_sigma, **saved}
    for key in ("model", "model_options", "scale", "degradation", "noise_sigma"):
        if saved.get(key) == getattr(config, key):
            continue
        if key == "model_options" and _same_architecture(config.model, config.scale, saved.get(key) or {},
                                                         config.model_options):
            continue  # the same network, its options spelled by an older srlib
        raise TrainingError(
            f"{path} was trained with {key}={saved.get(key)!r} but this run asks for "
            f"{key}={getattr(config, key)!r}; resume with the same settings or choose another --out"
        )


def _empty_history() -> dict[str, list]:
    return {"step": [], "loss": [], "val_step": [], "val_psnr": []}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), where bf16 convolutions are fast."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without the probes: assume not
        return False


def _autocast_bf16(config: TrainConfig, device: torch.device) -> bool:
    """Whether training steps run under bfloat16 autocast (see ``TrainConfig.bf16`` and ``cpu_bf16``)."""
    if device.type == "cuda":
        return config.bf16
    if device.type == "cpu" and config.cpu_bf16:
        if cpu_has_native_bf16():
            return True
        warnings.warn("cpu_bf16 was asked for, but this CPU has no native bfloat16 instructions (AVX512-BF16 or "
                      "AMX), where bf16 would be slower than float32: training in float32", stacklevel=3)
    return False


@dataclass
class _Run:
    """The state of one training run, shared by the helpers of :func:`train`.

    ``model`` is the network itself (what is validated and saved); ``net`` is what a training
    step calls: the same module, or its DistributedDataParallel wrapper under torchrun
    (``group``, ``None`` for a single process). ``rank_batch`` is this process's share of
    ``config.batch_size``; ``last_save`` the wall clock (``_wall_clock``) of the last save.
    """

    config: TrainConfig
    out: Path
    ckpt_path: Path
    device: torch.device
    model: torch.nn.Module
    memory_format: torch.memory_format
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    dataset: Any = None
    reference_data: bool = False
    steps_per_epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    history: dict[str, list] = field(default_factory=_empty_history)
    group: distributed.ProcessGroup | None = None
    net: torch.nn.Module | None = None
    rank_batch: int = 0
    last_save: float = 0.0
    use_bf16: bool = False

    @property
    def is_main(self) -> bool:
        """True for a single process and for rank 0 of several (the one that writes files)."""
        return self.group is None or self.group.is_main


# Wall clock of the time-based checkpoints, in seconds (a module attribute so tests can drive it).
_wall_clock = time.monotonic


def _rank_failure(group: distributed.ProcessGroup, where: str, failed: list[int],
                  error: BaseException | None) -> TrainingError:
    """The error each process raises when ``failed`` ranks reported a failure ``where``."""
    here = f"rank {group.rank} of {group.world_size}"
    if error is not None:
        kind = "" if isinstance(error, TrainingError) else f"{type(error).__name__}: "
        failure = TrainingError(f"{here} failed {where}: {kind}{error}")
        failure.__cause__ = error
        return failure
    ranks = ", ".join(str(rank) for rank in failed)
    return TrainingError(f"{here} stopped: rank {ranks} failed {where} (its error is printed by that process)")


def _agree(run_or_group, where: str, error: BaseException | None, values: tuple[float, ...] = ()) -> list[float]:
    """Sum ``values`` over the processes and stop all of them if any failed (one process: raise ``error``).

    Every process calls it at the same point with the exception it caught there (or ``None``),
    so one process's failure is reported by it (its rank and message) and ends the others
    at once instead of leaving them waiting in the next collective.

    Raises:
        TrainingError: some process failed (under torchrun); the failing one's message
            names its rank and error, the others name the failing rank.
        Exception: ``error`` itself, for a single process.
    """
    group = getattr(run_or_group, "group", run_or_group)
    if group is None:
        if error is not None:
            raise error
        return list(values)
    sums, failed = distributed.exchange(group, values, error is not None)
    if failed:
        raise _rank_failure(group, where, failed, error)
    return sums


def _together(group: distributed.ProcessGroup | None, where: str, work):
    """``work()`` on every process; if it fails on any, all of them stop (see :func:`_agree`). Returns its result."""
    result, error = None, None
    try:
        result = work()
    except Exception as caught:  # reported to every process by _agree
        if group is None:
            raise
        error = caught
    _agree(group, where, error)
    return result


def _on_main(run: _Run, where: str, work) -> float:
    """``work()`` on rank 0 alone (validation, saving) while the others wait; its number on every process.

    ``work`` returns a float (sent to every process) or ``None`` (0.0). An error in it
    stops every process (see :func:`_agree`).
    """
    if run.group is None:
        value = work()
        return 0.0 if value is None else value
    value, error = 0.0, None
    if run.is_main:
        try:
            result = work()
            value = 0.0 if result is None else float(result)
        except Exception as caught:  # noqa: BLE001 - reported to every process by _agree
            error = caught
    return _agree(run, where, error, (value,))[0]


def _setup(config: TrainConfig, out_dir: str | os.PathLike, resume: bool, progress: bool,
           group: distributed.ProcessGroup | None = None) -> tuple[_Run, dict | None]:
    """Check the settings, load the plugins, build model, optimiser and scheduler; read a resumed checkpoint.

    Returns the run and the payload of ``checkpoint.pt`` to resume from (``None`` without
    ``resume``; under torchrun only rank 0 reads it, the others get ``None``). Only rank 0
    touches the output folder.
    """
    out = Path(out_dir)
    ckpt_path = out / "checkpoint.pt"
    main = group is None or group.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
    if config.steps < 1:
        raise TrainingError(f"steps must be >= 1, got {config.steps}")
    if config.model == "bicubic":
        raise TrainingError("the bicubic model has no parameters to train; choose e.g. --model edsr_baseline")
    steps_per_epoch = config.samples_per_epoch // config.batch_size
    if steps_per_epoch < 1:
        raise TrainingError(
            f"samples_per_epoch ({config.samples_per_epoch}) must be at least batch_size ({config.batch_size})"
        )
    if config.val_tile is not None and (not isinstance(config.val_tile, int) or isinstance(config.val_tile, bool)
                                        or config.val_tile < 1):
        # Checked now rather than at the first validation, after minutes of training.
        raise TrainingError(f"val_tile must be a positive number of LR pixels or None (whole images), "
                            f"got {config.val_tile!r}")
    minutes = config.checkpoint_minutes
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes >= 0:
        raise TrainingError(f"checkpoint_minutes must be a number of minutes >= 0 (0: no time-based checkpoints), "
                            f"got {minutes!r}")
    if main and ckpt_path.exists() and not resume:
        raise TrainingError(
            f"{ckpt_path} already exists; pass --resume to continue that run, or choose another --out"
        )
    if main and resume and not ckpt_path.exists():
        raise TrainingError(f"--resume was given but {ckpt_path} does not exist; start a run without --resume")
    if config.plugins:
        # Recorded as absolute paths, so that the checkpoint loads them from anywhere.
        config = dataclasses.replace(config, plugins=load_plugins(config.plugins))
    if config.model not in available_models():
        raise TrainingError(
            f"unknown model {config.model!r}; available models: {', '.join(available_models())} "
            "(a model registered by a plugin needs its file in TrainConfig.plugins / --plugin FILE.py)"
        )
    from .models import model_kind

    reference_data = model_kind(config.model) == "reference"
    check_reference_settings(config, reference_data)
    degradation = config.degradation_spec()
    try:
        degradation.check_scale(config.scale)
    except ValueError as error:
        raise TrainingError(str(error)) from None

    device = pick_device(config.device) if group is None else group.device
    torch.manual_seed(config.seed)
    model = build_model(config.model, config.scale, **config.model_options).to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    use_bf16 = _autocast_bf16(config, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _learning_rate_factor(config, s))
    run = _Run(config=config, out=out, ckpt_path=ckpt_path, device=device, model=model,
               memory_format=memory_format, optimizer=optimizer, scheduler=scheduler,
               reference_data=reference_data, steps_per_epoch=steps_per_epoch, group=group, net=model,
               rank_batch=distributed.rank_batch_size(config.batch_size, 1 if group is None else group.world_size),
               use_bf16=use_bf16)
    payload = None
    if resume and main:
        # Several processes: read on the CPU, sent to the others, then moved by load_state_dict.
        payload = load_checkpoint(ckpt_path, map_location=device if group is None else "cpu")
        _check_resume_compatible(payload.get("config", {}), config, ckpt_path)
    return run, payload


def _open_data(run: _Run, progress: bool) -> None:
    """The training patches of the run (built after a resumed RNG state is restored, as in the uninterrupted run)."""
    from .data import TrainPatchDataset  # local import keeps `import srlib.train` light

    config = run.config
    if run.reference_data:
        run.dataset = reference_patch_dataset(config, progress)
        return
    run.dataset = TrainPatchDataset(
        names=tuple(config.train_sets),
        scale=config.scale,
        lr_patch=config.lr_patch,
        samples_per_epoch=config.samples_per_epoch,
        augment=True,
        seed=config.seed,
        roots=config.data_roots,
        max_images=config.max_train_images,
        progress=progress,
        degradation=config.degradation_spec(),
    )


def _start_run(config: TrainConfig, out_dir: str | os.PathLike, resume: bool, progress: bool,
               group: distributed.ProcessGroup | None) -> _Run:
    """Set up, resume and open the data; under torchrun every process passes each stage or all stop."""
    run, payload = _together(group, "while setting up", lambda: _setup(config, out_dir, resume, progress, group))
    if resume:
        if group is not None:
            payload = distributed.broadcast(group, payload)  # read by rank 0 alone
        _together(group, "while resuming", lambda: _resume(run, payload))
    _together(group, "while reading the training images", lambda: _open_data(run, progress))
    if group is not None:
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # No buffer broadcast before each forward (the models' buffers are constants, synced once
        # here), so that a forward pass is no collective; static_graph lets models with parameters
        # a step never uses (CSNLN) train. torch >= 2.13 spells the first forward_sync_buffers.
        no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel)
                   .parameters else "broadcast_buffers")
        run.net = DistributedDataParallel(run.model, device_ids=[run.device.index] if run.device.type == "cuda"
                                          else None, static_graph=True, **{no_sync: False})
    run.last_save = _wall_clock()
    return run


def _resume(run: _Run, payload: dict) -> None:
    """Restore weights, optimiser, scheduler, step, history, time and RNG state from a checkpoint's payload."""
    from .models.registry import upgrade_checkpoint

    # A run saved by an older srlib: its weights are mapped onto today's layer names first.
    _, state = upgrade_checkpoint(payload["model_name"], payload["model_options"], payload["model_state"])
    run.model.load_state_dict(state)
    run.optimizer.load_state_dict(payload["optimizer_state"])
    run.scheduler.load_state_dict(payload["scheduler_state"])
    run.step = int(payload["step"])
    run.history = {k: list(v) for k, v in payload.get("history", run.history).items()}
    run.train_seconds = float(payload.get("train_seconds", 0.0))
    _set_rng_state(payload.get("rng_state", {}), run.device)


def _save(run: _Run) -> None:
    """Write ``checkpoint.pt`` atomically: the model's payload plus everything a resumed run needs (rank 0 only)."""
    if not run.is_main:
        return
    payload = checkpoint_payload(
        run.model,
        optimizer_state=run.optimizer.state_dict(),
        scheduler_state=run.scheduler.state_dict(),
        step=run.step,
        train_seconds=run.train_seconds,
        rng_state=_rng_state(run.device),
        config=run.config.to_dict(),
        history=run.history,
        plugins=list(run.config.plugins or []),
    )
    save_checkpoint(run.ckpt_path, payload)
    run.last_save = _wall_clock()


def _validate(run: _Run) -> float:
    """PSNR of the model on ``config.val_set``; leaves the model in training mode."""
    from .evaluate import evaluate

    config = run.config
    if run.reference_data:
        return validate_references(run.model, config, run.device)
    scores = evaluate(
        run.model, [config.val_set], config.scale, roots=config.data_roots, device=run.device,
        progress=False, max_images=config.val_max_images, tile=config.val_tile,
        degradation=config.degradation_spec(),
    )
    run.model.train()
    return scores[config.val_set]["psnr"]


def _checkpoint_due(run: _Run) -> bool:
    """Whether ``config.checkpoint_minutes`` of wall clock have passed since the last save (rank 0's clock)."""
    minutes = run.config.checkpoint_minutes
    return bool(run.is_main and minutes and _wall_clock() - run.last_save >= 60.0 * minutes)


def _train_step(run: _Run, batches) -> tuple[float, float, bool]:
    """One optimiser step on the next batch of ``batches``.

    A batch is ``(lr, hr)`` or a reference batch (see :func:`srlib.train_reference.split_batch`),
    this process's share of the global batch; a model that takes references gets them, the
    single-image baseline of a reference architecture does not.

    Returns:
        The L1 loss of the whole global batch, the seconds the step took (added to
        ``train_seconds``) and whether a time-based checkpoint is due (rank 0's clock,
        known to every process).
    """
    tick = time.perf_counter()
    device, memory_format = run.device, run.memory_format
    use_bf16 = run.use_bf16
    error = loss = None
    try:
        lr_patch, hr_patch, references = split_batch(next(batches))
        lr_patch = lr_patch.to(device, memory_format=memory_format, non_blocking=True)  # (b, 3, p, p)
        hr_patch = hr_patch.to(device, memory_format=memory_format, non_blocking=True)  # (b, 3, s*p, s*p)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            if references is not None and takes_references(run.model):
                references = [r.to(device, memory_format=memory_format, non_blocking=True) for r in references]
                sr_patch = run.net(lr_patch, references)  # references: K x (b, 3, R, R)
            else:
                sr_patch = run.net(lr_patch)  # (b, 3, s*p, s*p)
        loss = F.l1_loss(sr_patch.float(), hr_patch)  # mean over this process's b patches
    except Exception as caught:
        if run.group is None:
            raise
        error = caught
    due = _checkpoint_due(run)
    loss_value = None
    if run.group is not None:
        # Before backward (whose gradient all-reduce would wait for a failed process): the mean
        # loss over the global batch (equal shares), the clock of rank 0, who failed.
        share = loss.item() / run.group.world_size if error is None else 0.0
        loss_value, votes = _agree(run, f"in step {run.step + 1}", error, (share, float(due)))
        due = votes > 0
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()  # several processes: DDP averages the gradients over them here
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    if loss_value is None:
        loss_value = loss.item()
    elapsed = time.perf_counter() - tick
    run.train_seconds += elapsed
    return loss_value, elapsed, due


def _train_until(run: _Run, last_step: int, bar) -> None:
    """Steps until ``last_step``, logging the loss, validating and checkpointing on schedule."""
    config = run.config
    world_size = 1 if run.group is None else run.group.world_size
    rank = 0 if run.group is None else run.group.rank
    run.model.train()
    loss_sum, loss_count = 0.0, 0
    val_psnr = run.history["val_psnr"][-1] if run.history["val_psnr"] else float("nan")
    while run.step < last_step:
        epoch, offset = divmod(run.step, run.steps_per_epoch)
        run.dataset.set_epoch(epoch)
        loader = DataLoader(
            run.dataset,
            batch_size=run.rank_batch,
            sampler=_ShardSampler(offset, run.steps_per_epoch, config.batch_size, rank, world_size),
            num_workers=config.num_workers,
            drop_last=True,
            pin_memory=run.device.type == "cuda",
        )
        batches = iter(loader)
        for _ in range(len(loader)):
            loss_value, elapsed, clock_due = _train_step(run, batches)
            step = run.step
            loss_sum += loss_value
            loss_count += 1
            logged = step % config.log_every == 0 or step == last_step
            if logged:
                run.history["step"].append(step)
                run.history["loss"].append(loss_sum / loss_count)
                loss_sum, loss_count = 0.0, 0
            if config.val_every and step % config.val_every == 0 and step < config.steps:
                val_psnr = _on_main(run, f"while validating at step {step}", lambda: _validate(run))
                run.history["val_step"].append(step)
                run.history["val_psnr"].append(val_psnr)
            # By the clock only where the loss was just logged, so that no partial loss mean is lost.
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or (clock_due and logged):
                _on_main(run, f"while saving the checkpoint at step {step}", lambda: _save(run))
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{config.batch_size / max(elapsed, 1e-9):.0f}",
                            val_psnr=f"{val_psnr:.2f}")
            if step >= last_step:
                break


def _finish(run: _Run, write_report: bool, progress: bool) -> dict:
    """Final validation, checkpoint and (for a finished run) ``metrics.json`` / ``comparison.png``; rank 0 only."""
    config, history = run.config, run.history
    result: dict[str, Any] = {"step": run.step, "history": history, "checkpoint": str(run.ckpt_path),
                              "train_seconds": run.train_seconds, "rank": 0 if run.group is None else run.group.rank,
                              "world_size": 1 if run.group is None else run.group.world_size}
    if not run.is_main:
        return result  # nothing left to compute together: the other processes end here
    finished = run.step >= config.steps
    # The report scores every image of config.final_sets; when the validation set is one of
    # them, its score is the final validation PSNR (no second pass over the same images).
    reuse_report = (finished and write_report and config.val_set in config.final_sets
                    and config.val_max_images is None and not run.reference_data)
    if finished and not reuse_report:
        history["val_step"].append(run.step)
        history["val_psnr"].append(_validate(run))
    _save(run)
    if finished and write_report and run.reference_data:
        result["metrics"] = write_reference_report(run.model, config, run.out, run.train_seconds, progress=progress)
    elif finished and write_report:
        result["metrics"] = write_run_report(run.model, config, run.out, run.train_seconds, progress=progress)
        if reuse_report:
            history["val_step"].append(run.step)
            history["val_psnr"].append(result["metrics"]["datasets"][config.val_set]["model"]["psnr"])
            _save(run)
    return result


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    write_report: bool = True,
) -> dict:
    """Train a model and write ``checkpoint.pt``, ``metrics.json`` and ``comparison.png``.

    Started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), every process calls it
    with the same arguments and they train one model with DistributedDataParallel
    (:mod:`srlib.distributed`; gloo on the CPU, NCCL on CUDA, ``cuda:LOCAL_RANK`` per process):
    each reads ``config.batch_size / WORLD_SIZE`` patches of every global batch of the same
    patch sequence, and rank 0 alone reads and writes the output folder, validates, shows
    progress and writes the report. The weights then match a single process's run with the
    same global batch up to the order of float32 sums, and a checkpoint of either kind of run
    resumes in the other.

    Args:
        config: the run's settings (see :class:`TrainConfig`, :func:`preset_config`).
        out_dir: output folder; created if needed.
        resume: continue from ``out_dir/checkpoint.pt``.  Without it, an
            existing checkpoint there is an error (nothing is overwritten).
        progress: show a tqdm bar with loss, images/s and the last validation PSNR (rank 0 only).
        stop_after: stop (with a checkpoint) once this global step is reached,
            as an interruption would; ``None`` runs to ``config.steps``.
        write_report: at the end, score ``config.final_sets`` against bicubic
            into ``metrics.json`` and draw ``comparison.png``.

    Returns:
        A dict with ``"step"``, ``"history"`` (``{"step": [...], "loss": [...],
        "val_step": [...], "val_psnr": [...]}``; the loss is the mean L1 over the global
        batch), ``"checkpoint"`` (path), ``"train_seconds"``, ``"rank"`` and
        ``"world_size"`` (0 and 1 for a single process) and, when written (rank 0),
        ``"metrics"``.

    Raises:
        TrainingError: bad settings, an unknown model, a checkpoint already in
            ``out_dir`` without ``resume``, or a checkpoint that does not match
            the settings; under torchrun, a global batch that the processes cannot
            share evenly, and any error of any process (the failing process names its
            rank and error, the others the failing rank), so that none is left waiting.
        srlib.plugins.PluginError: a file of ``config.plugins`` is missing or fails to import.
        srlib.data.DatasetNotFoundError: a training or validation set is missing.
        ValueError: a bad torchrun environment or device for several processes
            (see :func:`srlib.distributed.start`).
    """
    layout = distributed.process_layout()
    if layout is not None:
        try:
            distributed.rank_batch_size(config.batch_size, layout[2])
        except ValueError as error:
            raise TrainingError(str(error)) from None
    group = distributed.start(config.device)
    try:
        run = _start_run(config, out_dir, resume, progress and (group is None or group.is_main), group)
        progress = progress and run.is_main
        last_step = run.config.steps if stop_after is None else min(stop_after, run.config.steps)
        bar = tqdm(total=run.config.steps, initial=run.step, desc=f"train {run.config.model} x{run.config.scale}",
                   disable=not progress, unit="step", dynamic_ncols=True)
        try:
            _train_until(run, last_step, bar)
        except KeyboardInterrupt:
            _save(run)
            raise TrainingError(
                f"training interrupted at step {run.step}; saved {run.ckpt_path}. "
                "Continue with the same command plus --resume"
            ) from None
        finally:
            bar.close()
        return _finish(run, write_report, progress)
    finally:
        distributed.stop(group)


def write_run_report(model: torch.nn.Module, config: TrainConfig, out: Path, train_seconds: float,
                     progress: bool = True) -> dict:
    """Score a trained model and bicubic on ``config.final_sets``; write ``metrics.json`` and ``comparison.png``.

    Both are scored on LR images made with the run's degradation (``config.degradation``).

    Args:
        model: the trained model (any device).
        config: its training configuration.
        out: output folder.
        train_seconds: time spent in optimisation steps, in seconds.
        progress: show evaluation progress.

    Returns:
        The dictionary written to ``metrics.json``: ``{"model", "scale", "steps",
        "parameters", "train_seconds", "degradation" (its key: "bicubic", "bd",
        "dn_s15"), "datasets": {name: {"model": {psnr, ssim, images}, "bicubic":
        {...}, "gain_db": float}}}``.
    """
    from .data import BenchmarkDataset, to_float, to_uint8
    from .evaluate import evaluate, super_resolve
    from .metrics import psnr_y
    from .viz import comparison_figure, pick_crop, save_figure

    device = next(model.parameters()).device
    degradation = config.degradation_spec()
    bicubic = build_model("bicubic", config.scale)
    ours = evaluate(model, list(config.final_sets), config.scale, roots=config.data_roots, device=device,
                    progress=progress, tile=config.val_tile, degradation=degradation)
    base = evaluate(bicubic, list(config.final_sets), config.scale, roots=config.data_roots, progress=progress,
                    degradation=degradation)
    datasets = {
        name: {"model": ours[name], "bicubic": base[name], "gain_db": ours[name]["psnr"] - base[name]["psnr"]}
        for name in config.final_sets
    }
    metrics = {
        "model": config.model,
        "model_options": dict(model.options),
        "scale": config.scale,
        "steps": config.steps,
        "parameters": count_parameters(model),
        "train_seconds": round(train_seconds, 1),
        "degradation": degradation.key,
        "datasets": datasets,
    }
    with atomic_write(out / "metrics.json", "w") as handle:
        handle.write(json.dumps(metrics, indent=2) + "\n")

    # A zoomed comparison on the first image of the first final set.
    sample = BenchmarkDataset(config.final_sets[0], config.scale, roots=config.data_roots, max_images=1,
                              degradation=degradation)[0]
    lr = to_float(sample["lr"])[None]
    images = {"HR": sample["hr"]}
    for name, net, on in (("bicubic", bicubic, torch.device("cpu")), (config.model, model, device)):
        sr = super_resolve(net, lr.to(on), tile=config.val_tile if net is model else None)[0].cpu()
        images[name] = to_uint8(sr)
    size = min(96, min(sample["hr"].shape[-2:]) // 2)
    top, left = pick_crop(sample["hr"], size=size)
    scores = {name: f"{psnr_y(img, sample['hr'], config.scale).item():.2f} dB"
              for name, img in images.items() if name != "HR"}
    fig = comparison_figure(images, crop=(top, left, size), hr_key="HR", scores=scores)
    save_figure(fig, out / "comparison.png")
    return metrics
