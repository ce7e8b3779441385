"""The attention registry: every mechanism is a named plug-in with one contract.

A new attention is ONE file: a module class (or a builder ``fn(channels, **options)``)
decorated with :func:`register_attention`.  From then on it is built by name
(:func:`build_attention`), covered by the contract tests
(``tests/test_attention_contract.py`` and :func:`srlib.attention.check_attention`),
measured by ``srlib bench attention`` (its ``bench=`` cases, at the rate its
``multiply_adds=`` declaration implies) and trainable inside
the models (``srlib train --model nlsn --option attention=<name>``)::

    from srlib.attention import register_attention

    def my_attention_multiply_adds(shape, options):  # (N, C, H, W), complete options -> multiply-adds
        n, c, h, w = shape
        return n * (h * w) ** 2 * 2 * c  # scores and weighted values, from the equations

    @register_attention("my_attention", kind="in_scale", loops=my_attention_loops,
                        bench={"my_attention": {}}, multiply_adds=my_attention_multiply_adds)
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

``multiply_adds=fn``: the arithmetic of one forward pass, counted from the
mechanism's equations (cite them in ``fn``'s docstring), so that ``srlib bench
attention`` can report GFLOP, GFLOP/s and the fraction of the machine's matmul
rate without a hand-kept list.  ``fn(shape, options)`` - ``shape`` the input's
``(N, C, H, W)`` and ``options`` the module's complete options (defaults filled
in) - returns the number of **multiply-adds** (one multiply and one add; 1
multiply-add = 2 FLOP) of the matrix work: embeddings (convolutions, linear
layers) and the attention's matrix products, including the products that hash
positions (LSH projections).  Element-wise work (softmax, normalisation,
activations, biases, masks, gathers) is not counted, as in
``torch.utils.flop_counter``.  For kind ``"reference"`` the function is
``fn(shape, options, reference_shapes)``, ``reference_shapes`` a list of
``(N, C, H_k, W_k)``.  An entry without ``multiply_adds`` has no declared
arithmetic: the benchmark reports ``null`` GFLOP for it.

``bench={"case_name": {option: value, ...}, ...}``: the cases ``srlib bench
attention`` measures for this entry, each the entry built with those options
(default: one case named like the entry, default options).  A ``"reference"``
entry's case may also set ``"references": K``, the number of reference maps
(each of the input's size) the benchmark feeds it (default
:data:`srlib.bench.REFERENCE_COUNT`); it is not a module option.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from srlib.registry import Registry

__all__ = [
    "ATTENTION_KINDS",
    "AttentionEntry",
    "attention_entry",
    "attention_multiply_adds",
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
        multiply_adds: the declared arithmetic ``fn(shape, options[, reference_shapes]) -> int``
            (multiply-adds of one forward pass, see the module docstring), or None.
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
    multiply_adds: Callable[..., int] | None = None


def register_attention(
    name: str,
    kind: str,
    loops: Callable[..., Any] | None = None,
    bench: Mapping[str, Mapping[str, Any]] | None = None,
    guarded: bool = False,
    test_options: list[Mapping[str, Any]] | None = None,
    multiply_adds: Callable[..., int] | None = None,
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
        multiply_adds: the arithmetic of one forward pass, ``fn(shape, options)``
            (``fn(shape, options, reference_shapes)`` for kind ``"reference"``) ->
            multiply-adds (int), counted from the mechanism's equations; None:
            not declared (the benchmark then reports ``null`` GFLOP).

    Returns:
        The decorator; it returns the class or function unchanged.

    Raises:
        ValueError: unknown ``kind``; a name taken by another builder; bench
            options the builder does not take; ``guarded=True`` without a
            ``max_attention_bytes`` option.
        TypeError: a builder whose options lack defaults or are not JSON-serialisable;
            a ``multiply_adds`` that is not callable.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, ATTENTION_KINDS))}, got {kind!r}")
    if multiply_adds is not None and not callable(multiply_adds):
        raise TypeError(
            f"multiply_adds of attention {name!r} must be a function fn(shape, options) -> int, "
            f"got {type(multiply_adds).__name__}"
        )

    def decorator(builder):
        entry = ATTENTION.register(name, builder, kind=kind, loops=loops, guarded=bool(guarded),
                                   multiply_adds=multiply_adds)
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
        multiply_adds=entry.info.get("multiply_adds"),
    )


def attention_multiply_adds(
    name: str,
    shape: tuple[int, int, int, int],
    options: Mapping[str, Any] | None = None,
    reference_shapes: list[tuple[int, int, int, int]] | None = None,
) -> int | None:
    """The declared multiply-adds of one forward pass of a registered attention, or None if it declares none.

    Args:
        name: a registered attention name.
        shape: ``(N, C, H, W)`` of the input map (positive integers).
        options: the module's options (left-out ones take their defaults), e.g.
            ``module.attention_options`` of a built module.
        reference_shapes: kind ``"reference"`` only: the ``(N, C, H_k, W_k)`` of
            each reference map (at least one).

    Returns:
        The count of multiply-adds (1 multiply-add = 2 FLOP) from the entry's
        ``multiply_adds`` declaration (see :func:`register_attention`), or None
        when the entry declares no arithmetic.

    Raises:
        ValueError: unknown name; a shape that is not four positive integers; a
            reference kind without reference shapes; a declaration returning a
            negative or non-integer count.
        TypeError: options the attention does not take.
    """
    entry = ATTENTION.entry(name)
    function = entry.info.get("multiply_adds")
    if function is None:
        return None
    shape = _check_shape("shape", shape)
    full = ATTENTION.complete_options(name, dict(options or {}))
    if entry.info["kind"] == "reference":
        if not reference_shapes:
            raise ValueError(f"attention {name!r} is of kind 'reference': give the (N, C, H_k, W_k) of each reference")
        count = function(shape, full, [_check_shape(f"reference shape {k}", s) for k, s in enumerate(reference_shapes)])
    else:
        count = function(shape, full)
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
        raise ValueError(f"the multiply_adds declaration of attention {name!r} returned {count!r}, "
                         "not a non-negative integer")
    return int(count)


def _check_shape(what: str, shape) -> tuple[int, int, int, int]:
    """``shape`` as a tuple of four positive Python ints, or a ``ValueError`` naming ``what``."""
    try:
        values = tuple(shape)
    except TypeError:
        values = ()
    if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values):
        raise ValueError(f"{what} must be (N, C, H, W), four positive integers, got {shape!r}")
    return tuple(int(v) for v in values)


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
