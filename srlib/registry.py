"""Name -> builder registries: the one machinery behind ``build_model`` and ``build_attention``.

A *builder* is a callable ``fn(first, **options)`` (a function, or a class whose
``__init__`` takes the first argument and keyword options) registered under a
name.  Its keyword parameters, all with defaults, *are* the options: the
registry reads them from the signature, rejects unknown ones, fills in the
defaults and checks that the complete set is JSON-serialisable, so that
``build(name, first, **entry_options)`` rebuilds the same object - which is how
checkpoints, benchmark workers and configs name things.

:class:`Registry` is that machinery, instantiated twice:
``srlib.models.registry`` (builders ``fn(scale, **options) -> nn.Module``) and
``srlib.attention.registry`` (builders ``fn(channels, **options) -> nn.Module``).
Each entry can carry extra metadata (model presets; attention kind, loop
version, benchmark settings) in :attr:`RegistryEntry.info`.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Registry", "RegistryEntry", "qualified_name"]


def qualified_name(fn: Callable) -> str:
    """``module.QualName`` of a function or class (how a registration is told apart from another)."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


@dataclass
class RegistryEntry:
    """One registered builder.

    Attributes:
        name: the registry name.
        builder: ``fn(first, **options)``.
        defaults: every keyword option with its default (from the signature).
        takes_any: the builder also accepts ``**kwargs`` (unknown options pass through).
        info: registry-specific metadata (e.g. ``kind``, ``loops``, ``bench``, ``presets``).
    """

    name: str
    builder: Callable[..., Any]
    defaults: dict[str, Any]
    takes_any: bool
    info: dict[str, Any] = field(default_factory=dict)


class Registry:
    """A name -> builder table with signature-checked, JSON-serialisable options.

    Args:
        what: the kind of thing built, for messages (``"model"``, ``"attention"``).
        first_argument: the name of the positional argument every builder takes
            first (``"scale"``, ``"channels"``), for messages.
    """

    def __init__(self, what: str, first_argument: str):
        self.what = what
        self.first_argument = first_argument
        self._entries: dict[str, RegistryEntry] = {}

    # -- registration -------------------------------------------------------------------------

    def register(self, name: str, builder: Callable[..., Any], **info: Any) -> RegistryEntry:
        """Store ``builder`` under ``name`` with metadata ``info``; returns the entry.

        Registering the same builder (same qualified name) again replaces the
        entry, so re-running a notebook cell or re-importing a plugin file works.

        Raises:
            ValueError: ``name`` is empty or contains spaces, or is already taken
                by a different builder.
            TypeError: the builder does not take the first argument positionally,
                or has a keyword option without a default.
        """
        if not isinstance(name, str) or not name or any(ch.isspace() for ch in name):
            raise ValueError(f"{self.what} names must be non-empty strings without spaces, got {name!r}")
        existing = self._entries.get(name)
        if existing is not None and qualified_name(existing.builder) != qualified_name(builder):
            raise ValueError(
                f"{self.what} name {name!r} is already registered by {qualified_name(existing.builder)}; "
                "choose another name"
            )
        defaults, takes_any = self._option_defaults(name, builder)
        entry = RegistryEntry(name=name, builder=builder, defaults=defaults, takes_any=takes_any, info=dict(info))
        self._entries[name] = entry
        return entry

    def _option_defaults(self, name: str, builder: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
        """The builder's keyword options with their defaults, and whether it takes ``**kwargs``."""
        params = list(inspect.signature(builder).parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise TypeError(
                f"the builder of {self.what} {name!r} must take the {self.first_argument} as its first argument"
            )
        defaults: dict[str, Any] = {}
        takes_any = False
        for param in params[1:]:
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                takes_any = True
            elif param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
                continue
            elif param.default is inspect.Parameter.empty:
                raise TypeError(f"option {param.name!r} of the builder of {self.what} {name!r} needs a default value")
            else:
                defaults[param.name] = param.default
        return defaults, takes_any

    # -- lookup -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entry(self, name: str) -> RegistryEntry:
        """The entry of ``name``.

        Raises:
            ValueError: unknown name (the message lists the registered ones).
        """
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; available: {', '.join(self.names()) or 'none'}")
        return self._entries[name]

    def options(self, name: str) -> dict[str, Any]:
        """The options of ``name`` with their defaults (a copy)."""
        return dict(self.entry(name).defaults)

    def complete_options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` checked against the builder's signature, defaults filled in.

        Raises:
            ValueError: unknown name.
            TypeError: an option the builder does not take (the message lists the
                valid ones) or a value that is not JSON-serialisable.
        """
        entry = self.entry(name)
        unknown = sorted(set(options) - set(entry.defaults))
        if unknown and not entry.takes_any:
            valid = ", ".join(sorted(entry.defaults)) or "none"
            raise TypeError(f"{name} has no option(s) {', '.join(map(repr, unknown))}; valid options: {valid}")
        full = {**entry.defaults, **options}
        try:
            json.dumps(full)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"options of {name} must be JSON-serialisable (numbers, strings, lists, dicts), got {full!r}"
            ) from err
        return full

    def build(self, name: str, first: Any, **options: Any) -> tuple[Any, dict[str, Any]]:
        """Call the builder of ``name``; returns ``(object, complete options)``.

        Raises:
            ValueError, TypeError: see :meth:`complete_options`; whatever the
                builder raises for bad values.
        """
        full = self.complete_options(name, options)
        return self.entry(name).builder(first, **full), full
