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
where it takes the defaults from.
"""

from __future__ import annotations

import inspect
import json
import numbers
from typing import Any, Callable, Collection

import torch
from torch import nn

__all__ = [
    "register_model",
    "build_model",
    "available_models",
    "model_options",
    "check_scale",
    "check_lr_batch",
]

ModelBuilder = Callable[..., nn.Module]

_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that registers a model builder under ``name``.

    Args:
        name: the registry name, e.g. ``"edsr_baseline"`` (lower case, no spaces).

    Returns:
        A decorator that stores the builder ``fn(scale, **options) -> nn.Module``
        and returns it unchanged.

    Raises:
        ValueError: ``name`` is empty, contains spaces, or is already registered
            by a different function.

    Example::

        @register_model("tiny_net")
        def build_tiny_net(scale, n_feats=16):
            check_scale("tiny_net", scale, supported=(2, 4))
            return TinyNet(scale, n_feats)
    """
    if not isinstance(name, str) or not name or any(ch.isspace() for ch in name):
        raise ValueError(f"model names must be non-empty strings without spaces, got {name!r}")

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        existing = _BUILDERS.get(name)
        if existing is not None and _qualified_name(existing) != _qualified_name(builder):
            raise ValueError(
                f"model name {name!r} is already registered by {_qualified_name(existing)}; "
                "choose another name"
            )
        _BUILDERS[name] = builder
        return builder

    return decorator


def _qualified_name(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def available_models() -> list[str]:
    """Names of all registered models, sorted alphabetically."""
    return sorted(_BUILDERS)


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


def _option_defaults(name: str, builder: ModelBuilder) -> tuple[dict[str, Any], bool]:
    """The builder's keyword options with their defaults, and whether it takes ``**kwargs``."""
    params = list(inspect.signature(builder).parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(f"the builder of {name!r} must take the scale as its first argument")
    defaults: dict[str, Any] = {}
    takes_any = False
    for param in params[1:]:
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            takes_any = True
        elif param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            continue
        elif param.default is inspect.Parameter.empty:
            raise TypeError(f"option {param.name!r} of the builder of {name!r} needs a default value")
        else:
            defaults[param.name] = param.default
    return defaults, takes_any


def model_options(name: str) -> dict[str, Any]:
    """The architecture options of a registered model with their default values.

    Raises:
        ValueError: unknown model name (the message lists the available ones).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    return dict(_option_defaults(name, _BUILDERS[name])[0])


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
        ``model_name``, ``scale`` and ``options`` (complete, JSON-serialisable).
        Forward: float32 RGB in [0, 1] ``(N, 3, h, w)`` -> ``(N, 3, scale*h, scale*w)``.

    Raises:
        ValueError: unknown model name (the message lists the available ones);
            a scale that is not a positive integer or that the model does not
            support (the message names the supported scales).
        TypeError: an option the model does not take (the message names it and
            lists the valid ones), or an option value that is not
            JSON-serialisable.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or scale != int(scale) or scale < 1:
        raise ValueError(f"scale must be a positive integer such as 2, 3 or 4, got {scale!r}")
    scale = int(scale)
    builder = _BUILDERS[name]
    defaults, takes_any = _option_defaults(name, builder)
    unknown = sorted(set(options) - set(defaults))
    if unknown and not takes_any:
        valid = ", ".join(sorted(defaults)) or "none"
        raise TypeError(f"{name} has no option(s) {', '.join(map(repr, unknown))}; valid options: {valid}")
    full_options = {**defaults, **options}
    try:
        json.dumps(full_options)
    except TypeError as err:
        raise TypeError(
            f"options of {name} must be JSON-serialisable (numbers, strings, lists, dicts), got {full_options!r}"
        ) from err
    model = builder(scale, **full_options)
    if not isinstance(model, nn.Module):
        raise TypeError(f"the builder of {name!r} returned {type(model).__name__}, not an nn.Module")
    model.model_name = name
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
