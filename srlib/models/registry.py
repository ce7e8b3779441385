"""A name -> builder registry, so that configs, checkpoints and the CLI can say ``"edsr_baseline"``.

A *builder* is a function ``fn(scale, **options) -> nn.Module`` registered under a
name with :func:`register_model`.  :func:`build_model` looks the name up, checks
the scale and the options, calls the builder and stamps three attributes on the
model that the rest of the library relies on:

* ``model.model_name`` - the registered name (``str``);
* ``model.scale`` - the integer upscaling factor;
* ``model.options`` - *every* option the builder takes, defaults filled in, as a
  JSON-serialisable ``dict``.  ``build_model(m.model_name, m.scale, **m.options)``
  rebuilds the same architecture, which is how checkpoints are reloaded.

Every registered model maps float32 RGB in [0, 1], shaped ``(N, 3, h, w)``, to
``(N, 3, scale*h, scale*w)`` (not clamped).  :func:`check_lr_batch` gives models
one shared, clear error for wrong input.

Builders declare their options as keyword parameters with defaults, e.g.
``def build_edsr(scale, n_feats=64, n_blocks=16, res_scale=1.0)``; that
signature is what :func:`build_model` checks unknown options against and
where it takes the defaults from (the machinery is :class:`srlib.registry.Registry`,
shared with the attention registry).

A registration may also carry the model's training presets (``presets={"quick":
{...}, "smoke": {...}}``, read by :func:`srlib.train.preset_config`, so that the
trainer names no model) and an ``upgrade`` function that maps the options and
weights of checkpoints written by older srlib versions onto today's layout
(:func:`upgrade_checkpoint`; :func:`rename_state_keys` is the renaming of weights
that such a function does).
"""

from __future__ import annotations

import numbers
import re
from typing import Any, Callable, Collection, Mapping

import torch
from torch import nn

from srlib.registry import Registry

__all__ = [
    "MODEL_KINDS",
    "register_model",
    "build_model",
    "available_models",
    "model_kind",
    "takes_references",
    "model_options",
    "model_presets",
    "upgrade_checkpoint",
    "rename_state_keys",
    "check_scale",
    "check_lr_batch",
]

ModelBuilder = Callable[..., nn.Module]
# upgrade(options, state) -> (options, state): old checkpoint layout -> today's (identity when current).
CheckpointUpgrade = Callable[[dict, Mapping[str, torch.Tensor]], tuple[dict, dict]]

MODELS = Registry("model", "scale")

#: What a model's forward takes: ``"single_image"`` - ``forward(lr)``; ``"reference"`` -
#: ``forward(lr, references)`` with ``references`` a list of HR reference images ``(N, 3, H_m, W_m)``.
MODEL_KINDS = ("single_image", "reference")


def register_model(
    name: str,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    upgrade: CheckpointUpgrade | None = None,
    kind: str = "single_image",
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that registers a model builder under ``name``.

    Args:
        name: the registry name, e.g. ``"edsr_baseline"`` (lower case, no spaces).
        presets: per training preset (``"quick"``, ``"full"``, ``"smoke"``), the
            :class:`srlib.train.TrainConfig` fields this model needs on top of the
            preset's shared settings (e.g. ``{"model_options": {...}, "val_tile": 48}``).
        upgrade: ``fn(options, state) -> (options, state)`` turning the options
            and ``state_dict`` of a checkpoint written by an older srlib into
            today's (return them unchanged when they are current).
        kind: ``"single_image"`` (``forward(lr)``) or ``"reference"``
            (``forward(lr, references)``), :data:`MODEL_KINDS`.

    Returns:
        A decorator that stores the builder ``fn(scale, **options) -> nn.Module``
        and returns it unchanged.

    Raises:
        ValueError: ``name`` is empty, contains spaces, or is already registered
            by a different function.

    Example::

        @register_model("tiny_net", presets={"smoke": {"model_options": {"n_feats": 8}}})
        def build_tiny_net(scale, n_feats=16):
            check_scale("tiny_net", scale, supported=(2, 4))
            return TinyNet(scale, n_feats)
    """
    if not isinstance(name, str) or not name or any(ch.isspace() for ch in name):
        raise ValueError(f"model names must be non-empty strings without spaces, got {name!r}")
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, MODEL_KINDS))}, got {kind!r}")

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        MODELS.register(name, builder, presets={k: dict(v) for k, v in (presets or {}).items()}, upgrade=upgrade,
                        kind=kind)
        return builder

    return decorator


def available_models(kind: str | None = None) -> list[str]:
    """Names of the registered models, sorted alphabetically; only those of ``kind`` when given.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind is not None and kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, MODEL_KINDS))} or None, got {kind!r}")
    return [n for n in MODELS.names() if kind is None or MODELS.entry(n).info["kind"] == kind]


def takes_references(model: nn.Module) -> bool:
    """Whether a built model's forward takes references: ``model(lr, references)``.

    True for models of kind ``"reference"`` unless the model says otherwise
    with a ``takes_references`` attribute (e.g. a reference architecture built
    as its own single-image baseline).
    """
    return bool(getattr(model, "takes_references", getattr(model, "model_kind", "single_image") == "reference"))


def model_kind(name: str) -> str:
    """``"single_image"`` or ``"reference"``: what the forward of model ``name`` takes.

    Raises:
        ValueError: unknown model name.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    return MODELS.entry(name).info["kind"]


def model_presets(name: str, preset: str) -> dict[str, Any]:
    """The training settings that model ``name`` registered for ``preset`` (``{}`` if none).

    Raises:
        ValueError: unknown model name.
    """
    return dict(MODELS.entry(name).info["presets"].get(preset, {}))


def upgrade_checkpoint(name: str, options: dict, state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """Options and weights of a checkpoint of model ``name``, in today's layout.

    Applies the ``upgrade`` function the model registered (see
    :func:`register_model`); without one, returns them unchanged.

    Raises:
        ValueError: unknown model name; whatever the upgrade raises for
            options it cannot map.
    """
    upgrade = MODELS.entry(name).info.get("upgrade")
    if upgrade is None:
        return dict(options), dict(state)
    return upgrade(dict(options), state)


def rename_state_keys(
    state: Mapping[str, torch.Tensor], pattern: str | re.Pattern, replace: Callable[[re.Match], str]
) -> dict[str, torch.Tensor]:
    r"""A copy of ``state`` whose keys matching ``pattern`` are renamed to ``replace(match)``.

    The weight renaming of the ``upgrade`` functions of :func:`register_model`, e.g.
    ``rename_state_keys(state, r"^(body\.\d+)\.old\.(weight|bias)$", lambda m: f"{m[1]}.new.{m[2]}")``.

    Args:
        state: a state dict (key -> tensor).
        pattern: a regular expression tried at the start of every key (``re.match``;
            end it with ``$`` to match whole keys).
        replace: the new key of a matching key, from its match.

    Returns:
        A new dict in the order of ``state``: the matching keys renamed, the others
        kept; the tensors are shared, not copied.
    """
    pattern = re.compile(pattern)
    renamed = {}
    for key, value in state.items():
        match = pattern.match(key)
        renamed[replace(match) if match else key] = value
    return renamed


def check_scale(model_name: str, scale: int, supported: Collection[int]) -> None:
    """Raise a helpful error when a builder is asked for a scale it cannot build.

    Args:
        model_name: the registry name, used in the message.
        scale: the requested upscaling factor.
        supported: the scales the model supports, e.g. ``(2, 3, 4)``.

    Raises:
        ValueError: ``scale`` is not in ``supported``; the message names the
            supported scales.
    """
    if scale not in supported:
        listed = ", ".join(f"x{s}" for s in sorted(supported))
        raise ValueError(f"{model_name} supports scales {listed}, got x{scale}")


def model_options(name: str) -> dict[str, Any]:
    """The architecture options of a registered model with their default values.

    Raises:
        ValueError: unknown model name (the message lists the available ones).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    return MODELS.options(name)


def build_model(name: str, scale: int, **options: Any) -> nn.Module:
    """Build a registered super-resolution model.

    Args:
        name: a registered name (see :func:`available_models`), e.g. ``"bicubic"``
            or ``"edsr_baseline"``.
        scale: integer upscaling factor (2, 3, 4, ...).
        **options: architecture options of that model (e.g. ``n_feats=64``);
            options left out take the builder's defaults.

    Returns:
        The model (a fresh ``nn.Module`` on the CPU, in training mode, with the
        default PyTorch initialisation drawn from the global RNG - seed it with
        ``torch.manual_seed`` for repeatable weights).  It carries
        ``model_name``, ``model_kind``, ``scale`` and ``options`` (complete,
        JSON-serialisable).  Forward: float32 RGB in [0, 1] ``(N, 3, h, w)`` ->
        ``(N, 3, scale*h, scale*w)`` (a ``"reference"`` model also takes its
        list of references).

    Raises:
        ValueError: unknown model name (the message lists the available ones);
            a scale that is not a positive integer or that the model does not
            support (the message names the supported scales).
        TypeError: an option the model does not take (the message names it and
            lists the valid ones), or an option value that is not
            JSON-serialisable.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or scale != int(scale) or scale < 1:
        raise ValueError(f"scale must be a positive integer such as 2, 3 or 4, got {scale!r}")
    scale = int(scale)
    model, full_options = MODELS.build(name, scale, **options)
    if not isinstance(model, nn.Module):
        raise TypeError(f"the builder of {name!r} returned {type(model).__name__}, not an nn.Module")
    model.model_name = name
    model.model_kind = MODELS.entry(name).info["kind"]
    model.scale = scale
    model.options = dict(full_options)
    return model


def check_lr_batch(lr: torch.Tensor) -> None:
    """Check that a model input is a float RGB batch ``(N, 3, h, w)``.

    Args:
        lr: the low-resolution batch a model's ``forward`` received.

    Raises:
        ValueError: ``lr`` is not 4-D with 3 channels; the message gives the shape.
        TypeError: ``lr`` is not a floating tensor (e.g. uint8 straight from
            disk); convert with ``srlib.data.to_float``.
        ValueError: ``lr`` holds NaN or infinite pixels (they would silently
            give a NaN image); the message counts them.
    """
    if not isinstance(lr, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor shaped (N, 3, h, w), got {type(lr).__name__}")
    if lr.dim() != 4 or lr.shape[1] != 3:
        raise ValueError(
            f"expected an RGB batch shaped (N, 3, h, w), got shape {tuple(lr.shape)}; "
            "add a batch dimension with lr.unsqueeze(0) or convert grayscale to RGB"
        )
    if not lr.is_floating_point():
        raise TypeError(
            f"expected float RGB in [0, 1], got dtype {lr.dtype}; convert with srlib.data.to_float"
        )
    finite = torch.isfinite(lr)
    if not bool(finite.all()):
        bad = int(finite.numel() - finite.sum())
        nan = int(torch.isnan(lr).sum())
        raise ValueError(
            f"the LR batch holds {bad} non-finite value(s) ({nan} NaN, {bad - nan} infinite) out of "
            f"{lr.numel()}; a model would turn them into a NaN image. Check the image loading or the "
            "preprocessing (e.g. a division by zero), or replace them with torch.nan_to_num"
        )
