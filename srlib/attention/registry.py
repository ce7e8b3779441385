"""The attention registry: every mechanism is a named plug-in with one contract.

A new attention is ONE file: a module class (or a builder ``fn(channels, **options)``)
decorated with :func:`register_attention`.  From then on it is built by name
(:func:`build_attention`), covered by the contract tests
(``tests/test_attention_contract.py`` and :func:`srlib.attention.check_attention`),
measured by ``srlib bench attention`` (its ``bench=`` cases) and trainable inside
the models (``srlib train --model nlsn --option attention=<name>``)::

    from srlib.attention import register_attention

    @register_attention("my_attention", kind="in_scale", loops=my_attention_loops,
                        bench={"my_attention": {}})
    class MyAttention(nn.Module):
        def __init__(self, channels, reduction=2, activation="none"): ...
        def forward(self, x, return_details=False): ...

Kinds and their contract (``x`` float ``(N, C, H, W)``, any ``H, W >= 1`` unless
the module documents a minimum):

* ``"in_scale"`` - ``forward(x, return_details=False)``: ``(N, C, H, W) -> (N, C, H, W)``;
  the positions of one map attend to positions of the same map
  (dense, region, sparse, naive cross-scale: keys from a downscaled copy, output at LR);
* ``"cross_scale"`` - ``forward(x, return_details=False)``: ``(N, C, H, W) -> (N, C, s*H, s*W)``
  with ``s`` the module's ``scale`` option (CSNLN eq. 3-4: HR patches pasted from the map itself);
* ``"reference"`` - ``forward(x, references, return_details=False)``: ``x`` ``(N, C, H, W)``
  and ``references`` a sequence of ``K >= 1`` feature maps of reference images, each
  ``(N, C, H_k, W_k)`` (sizes may differ between references) -> ``(N, C, H, W)``;
  reference-based SR (texture transferred from other images).

Every registered module

* has **no residual inside**: the model owns ``x + res_scale * attention(x)``;
* takes its randomness (LSH rotations) only from an explicit ``seed`` option or a
  ``generator=`` argument of ``forward``, and is deterministic in eval mode;
* with ``return_details=True`` returns ``(out, details)``, ``details`` a documented
  dataclass (attention weights, bucket codes, per-round weights) for plots;
* speaks one vocabulary: ``reduction`` (query/key channels ``C // reduction``),
  ``activation`` (``"prelu"`` or ``"none"`` after each embedding), layers
  ``query_embed`` / ``key_embed`` / ``value_embed`` (``query_key_embed`` when the
  query and key share one embedding), each a ``Sequential`` built by
  :func:`srlib.attention._common.embedding`, so a module's checkpoint keys never
  depend on its options;
* checks its input with :func:`srlib.attention._common.check_feature_map`
  (``ValueError`` naming the wrong shape, dtype or device);
* if its memory grows quadratically, raises
  :class:`~srlib.attention.AttentionMemoryError` before allocating
  (``guarded=True``; its ``max_attention_bytes`` option sets the limit; a module
  whose options select a path that stores no score matrix says so with a
  ``memory_guarded`` attribute that is False).

``loops=fn(module, x[, references])`` is a float64 implementation that evaluates
the module's equation literally (explicit loops on small inputs) with the
module's own weights; the contract tests compare the module with it.  The loop
versions of srlib's mechanisms live in :mod:`srlib.attention.loops`.

``bench={"case_name": {option: value, ...}, ...}``: the cases ``srlib bench
attention`` measures for this entry, each the entry built with those options
(default: one case named like the entry, default options).  A ``"reference"``
entry's case may also set ``"references": K``, the number of reference maps
(each of the input's size) the benchmark feeds it (default
:data:`srlib.bench.REFERENCE_COUNT`); it is not a module option.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from srlib.registry import Registry

__all__ = [
    "ATTENTION_KINDS",
    "AttentionEntry",
    "attention_entry",
    "attention_options",
    "available_attention",
    "benchmark_cases",
    "build_attention",
    "register_attention",
]

ATTENTION_KINDS = ("in_scale", "cross_scale", "reference")

ATTENTION = Registry("attention", "channels")


@dataclass(frozen=True)
class AttentionEntry:
    """What a registration declares about one attention.

    Attributes:
        name: the registry name.
        kind: ``"in_scale"``, ``"cross_scale"`` or ``"reference"`` (see the module docstring).
        builder: the class or function registered.
        defaults: its options with their default values.
        loops: the float64 loop version ``fn(module, x[, references]) -> out``, or None.
        bench: benchmark cases, ``{case_name: options}``.
        bench_inputs: per case, what the benchmark feeds it besides the map
            (``{"references": K}`` for reference-kind cases that set it).
        guarded: the module raises ``AttentionMemoryError`` before an over-large allocation
            (its ``max_attention_bytes`` option sets the limit).
        test_options: extra option sets for the contract tests.
        description: one line, the first line of the builder's docstring.
        source: ``module.QualName`` of the builder (for plugins: the file's module).
    """

    name: str
    kind: str
    builder: Callable[..., nn.Module]
    defaults: Mapping[str, Any]
    loops: Callable[..., Any] | None
    bench: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    bench_inputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    guarded: bool = False
    test_options: tuple = ()
    description: str = ""
    source: str = ""


def register_attention(
    name: str,
    kind: str,
    loops: Callable[..., Any] | None = None,
    bench: Mapping[str, Mapping[str, Any]] | None = None,
    guarded: bool = False,
    test_options: list[Mapping[str, Any]] | None = None,
):
    """Decorator registering an attention module class (or builder ``fn(channels, **options)``).

    Args:
        name: registry name (no spaces), e.g. ``"nlsa"``.
        kind: ``"in_scale"``, ``"cross_scale"`` or ``"reference"``.
        loops: float64 loop version, ``fn(module, x[, references]) -> out``, or its
            ``"package.module:function"`` path (imported when first needed).
        bench: benchmark cases ``{case_name: options}`` (default ``{name: {}}``).
        guarded: the module has a memory guard and a ``max_attention_bytes`` option.
        test_options: extra option sets the contract tests run on small maps
            besides the defaults and the bench cases (e.g. chunks smaller than
            the test map, so that hashing matters).

    Returns:
        The decorator; it returns the class or function unchanged.

    Raises:
        ValueError: unknown ``kind``; a name taken by another builder; bench
            options the builder does not take; ``guarded=True`` without a
            ``max_attention_bytes`` option.
        TypeError: a builder whose options lack defaults or are not JSON-serialisable.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, ATTENTION_KINDS))}, got {kind!r}")

    def decorator(builder):
        entry = ATTENTION.register(name, builder, kind=kind, loops=loops, guarded=bool(guarded))
        cases = {name: {}} if bench is None else {str(k): dict(v) for k, v in bench.items()}
        inputs = {}  # case -> {"references": K}: what the benchmark feeds a reference-kind case
        for case, options in cases.items():
            if "references" in options and kind == "reference" and "references" not in entry.defaults:
                count = options.pop("references")
                if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                    raise ValueError(f"benchmark case {case!r} of attention {name!r}: references must be an "
                                     f"integer >= 1, got {count!r}")
                inputs[case] = {"references": count}
            try:
                ATTENTION.complete_options(name, options)
            except TypeError as err:
                raise ValueError(f"benchmark case {case!r} of attention {name!r}: {err}") from None
        if guarded and "max_attention_bytes" not in entry.defaults:
            raise ValueError(f"attention {name!r} is registered as guarded but has no max_attention_bytes option")
        entry.info["bench"] = cases
        entry.info["bench_inputs"] = inputs
        entry.info["test_options"] = [dict(o) for o in (test_options or [])]
        for options in entry.info["test_options"]:
            ATTENTION.complete_options(name, options)
        return builder

    return decorator


def attention_entry(name: str) -> AttentionEntry:
    """The :class:`AttentionEntry` of a registered attention.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    entry = ATTENTION.entry(name)
    doc = (getattr(entry.builder, "__doc__", None) or "").strip().splitlines()
    return AttentionEntry(
        name=entry.name, kind=entry.info["kind"], builder=entry.builder, defaults=dict(entry.defaults),
        loops=_resolve(entry.info["loops"]), bench=entry.info["bench"],
        bench_inputs=entry.info.get("bench_inputs", {}), guarded=entry.info["guarded"],
        test_options=tuple(entry.info["test_options"]),
        description=doc[0] if doc else "", source=f"{entry.builder.__module__}.{entry.builder.__qualname__}",
    )


def _resolve(loops):
    """A loop version given as ``"package.module:function"`` (resolved on first use) or a callable."""
    if loops is None or callable(loops):
        return loops
    module_name, _, attribute = str(loops).partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def available_attention(kind: str | None = None) -> list[str]:
    """Registered attention names, sorted; only those of ``kind`` when given.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind is not None and kind not in ATTENTION_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, ATTENTION_KINDS))} or None, got {kind!r}")
    return [n for n in ATTENTION.names() if kind is None or ATTENTION.entry(n).info["kind"] == kind]


def attention_options(name: str) -> dict[str, Any]:
    """The options of a registered attention with their default values.

    Raises:
        ValueError: unknown name.
    """
    return ATTENTION.options(name)


def build_attention(name: str, channels: int, kinds: tuple[str, ...] | None = None, **options: Any) -> nn.Module:
    """Build a registered attention module for ``channels`` input channels.

    Args:
        name: a registered name (:func:`available_attention`).
        channels: ``C`` of the ``(N, C, H, W)`` maps it attends over.
        kinds: when given, the kinds the caller can use (a model slot); another
            kind is a ``ValueError`` naming the registered attentions that fit.
        **options: the module's options; left-out ones take their defaults.

    Returns:
        The module (fresh, CPU, training mode), carrying ``attention_name``,
        ``attention_kind`` and ``attention_options`` (complete, JSON-serialisable).

    Raises:
        ValueError: unknown name; a kind the caller cannot use; bad option values.
        TypeError: unknown options (the message lists the valid ones) or values
            that are not JSON-serialisable.
    """
    entry = ATTENTION.entry(name)
    kind = entry.info["kind"]
    if kinds is not None and kind not in kinds:
        fitting = [n for k in kinds for n in available_attention(k)]
        raise ValueError(
            f"attention {name!r} is of kind {kind!r}, but this slot takes {' or '.join(map(repr, kinds))}; "
            f"registered attentions that fit: {', '.join(sorted(fitting)) or 'none'}"
        )
    module, full = ATTENTION.build(name, channels, **options)
    if not isinstance(module, nn.Module):
        raise TypeError(f"the builder of attention {name!r} returned {type(module).__name__}, not an nn.Module")
    module.attention_name = name
    module.attention_kind = kind
    module.attention_options = dict(full)
    return module


def benchmark_cases(names: list[str] | None = None) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every benchmark case of the registry: ``{case_name: (attention_name, options)}``.

    Args:
        names: restrict to these attention names (default: all registered), in registry order.

    Raises:
        ValueError: two entries declaring the same case name.
    """
    cases: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in names if names is not None else ATTENTION.names():
        for case, options in ATTENTION.entry(name).info["bench"].items():
            if case in cases:
                raise ValueError(f"benchmark case {case!r} is declared by both {cases[case][0]!r} and {name!r}")
            cases[case] = (name, dict(options))
    return cases
