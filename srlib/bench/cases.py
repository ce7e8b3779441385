"""What the attention benchmark measures: cases from the attention registry, external modules, calibration.

A **case** is one module built one way:

* a *registered* case - ``(attention name, options)`` declared by the ``bench=``
  argument of :func:`srlib.attention.register_attention` and listed by
  :func:`srlib.attention.benchmark_cases` (``dense_explicit`` is attention
  ``non_local`` with ``implementation="explicit"``, ``nlsa_r4`` is ``nlsa``
  with ``n_rounds=4``...).  Nothing here names them: a new registration is a
  new case;
* an *external* module - ``"path/to/file.py:Class"`` or ``"package.module:Class"``,
  a module class that is not part of srlib, built as ``Class(channels)`` and
  called as ``forward(x)``.  Importing its file may register attentions too;
  their cases then join the registered ones;
* the *calibration* case ``memory_probe`` - not attention: its forward pass
  fills a known number of MiB, so the measured peak can be checked.

How a case is called depends on the kind of its attention (see
:mod:`srlib.attention.registry`): ``"in_scale"`` and ``"cross_scale"`` modules
take ``forward(x)``; ``"reference"`` modules take ``forward(x, references)``
with :data:`REFERENCE_COUNT` random reference maps of the size of ``x``.

Everything a case needs travels as JSON (:meth:`BenchCase.to_spec`), so the
fresh process that measures it on CPU rebuilds exactly the same module.

The arithmetic of a case (:func:`case_multiply_adds`) is what its attention
declares with ``multiply_adds=`` (:func:`srlib.attention.register_attention`),
evaluated with the options the module was built with; external modules,
calibration cases and attentions that declare nothing have none (``null``
GFLOP in the results).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CALIBRATION_CASES",
    "REFERENCE_COUNT",
    "BenchCase",
    "attention_cases",
    "build_attention_case",
    "build_case",
    "case_inputs",
    "case_multiply_adds",
    "import_module_class",
    "known_case_names",
    "resolve_cases",
]

# Not attention: a self-check of the memory measurement, accepted by `cases` but not run by default.
CALIBRATION_CASES: dict[str, str] = {
    "memory_probe": "fills a probe_mib MiB float32 tensor inside forward; the measured peak must show it",
}
REFERENCE_COUNT = 2  # "reference" attentions get this many reference maps, each of the size of x

# Measured first (when selected): the speed-up and memory ratio are against this one.
REFERENCE_CASES = ("dense_explicit", "dense_fused")

_MIB = float(2**20)


@dataclass(frozen=True)
class BenchCase:
    """One thing the benchmark measures.

    Attributes:
        name: the case name (a row of the table).
        source: ``"registry"``, ``"module"`` (an external class) or ``"calibration"``.
        kind: how it is called: ``"in_scale"``, ``"cross_scale"`` (``forward(x)``)
            or ``"reference"`` (``forward(x, references)``).
        attention: the registered attention name (registry cases), else None.
        options: the options of that registration's ``bench=`` entry (registry cases).
        guarded: the attention has a memory guard (a ``max_attention_bytes`` option).
        takes_regions: the attention has a ``regions`` option (``region_grid`` overrides it).
        module: ``"file.py:Class"`` / ``"package.module:Class"`` (external cases), else None.
        imports: module specs to import before building (files that register attentions).
        description: one line for the result's ``"cases"`` table.
    """

    name: str
    source: str
    kind: str = "in_scale"
    attention: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    guarded: bool = False
    takes_regions: bool = False
    module: str | None = None
    imports: tuple[str, ...] = ()
    description: str = ""
    references: int = REFERENCE_COUNT

    def to_spec(self) -> dict[str, Any]:
        """The case as a JSON-ready dict (the worker process rebuilds it with :meth:`from_spec`)."""
        return {
            "case": self.name, "source": self.source, "kind": self.kind, "attention": self.attention,
            "options": dict(self.options), "guarded": self.guarded, "takes_regions": self.takes_regions,
            "module": self.module, "imports": list(self.imports), "description": self.description,
            "references": self.references,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> BenchCase:
        """Inverse of :meth:`to_spec` (extra keys of ``spec`` are ignored)."""
        return cls(
            name=spec["case"], source=spec["source"], kind=spec.get("kind", "in_scale"),
            attention=spec.get("attention"), options=dict(spec.get("options") or {}),
            guarded=bool(spec.get("guarded")), takes_regions=bool(spec.get("takes_regions")),
            module=spec.get("module"), imports=tuple(spec.get("imports") or ()),
            description=spec.get("description", ""), references=int(spec.get("references", REFERENCE_COUNT)),
        )

    def details(self) -> dict[str, Any]:
        """What the result's ``"case_details"`` records about this case (JSON-ready)."""
        return {"source": self.source, "kind": self.kind, "attention": self.attention,
                "options": dict(self.options), "module": self.module}


# ----------------------------------------------------------------------------------------------
# Registered cases
# ----------------------------------------------------------------------------------------------


def _options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in options.items()) or "default options"


def _registered_cases() -> dict[str, BenchCase]:
    """Every registered benchmark case as a :class:`BenchCase`, reference cases first, then registry order."""
    from srlib.attention import attention_entry, benchmark_cases

    found: dict[str, BenchCase] = {}
    for case, (attention, options) in benchmark_cases().items():
        entry = attention_entry(attention)
        references = entry.bench_inputs.get(case, {}).get("references", REFERENCE_COUNT)
        shown = {**options, "references": references} if entry.kind == "reference" else options
        description = f"{attention}({_options_text(shown)}): {entry.description}".rstrip(": ")
        found[case] = BenchCase(
            name=case, source="registry", kind=entry.kind, attention=attention, options=dict(options),
            guarded=entry.guarded, takes_regions="regions" in entry.defaults, description=description,
            references=references,
        )
    first = [c for c in REFERENCE_CASES if c in found]
    return {name: found[name] for name in [*first, *(c for c in found if c not in first)]}


def attention_cases() -> dict[str, str]:
    """The registered benchmark cases, ``{case_name: description}``, in the order they are measured.

    The description is ``attention(options): first line of the module's docstring``,
    e.g. ``"non_local(implementation='explicit'): In-scale non-local attention ..."``.
    ``dense_explicit`` and ``dense_fused`` (the references of the ratios) come
    first, then the registry's order.  Calibration cases are not included
    (:data:`CALIBRATION_CASES`).
    """
    return {name: case.description for name, case in _registered_cases().items()}


def known_case_names() -> list[str]:
    """Every name ``cases=`` accepts: the registered cases, then the calibration cases."""
    return [*_registered_cases(), *CALIBRATION_CASES]


# ----------------------------------------------------------------------------------------------
# External modules: "file.py:Class" or "package.module:Class"
# ----------------------------------------------------------------------------------------------


def _split_module_spec(spec: str) -> tuple[str, str, bool]:
    """``(target, class name, is_file)`` of ``"file.py:Class"`` / ``"package.module:Class"``.

    Raises:
        ValueError: no ``:Class`` part, or an empty side.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"--module expects FILE.py:Class or package.module:Class, got {spec!r}")
    target, _, attribute = spec.rpartition(":")  # rpartition: a Windows drive letter stays in the path
    if not target or not attribute.isidentifier():
        raise ValueError(f"--module expects FILE.py:Class or package.module:Class, got {spec!r}")
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    return target, attribute, is_file


def _normalise_module_spec(spec: str) -> str:
    """The spec with a file path made absolute (the worker process may run elsewhere)."""
    target, attribute, is_file = _split_module_spec(spec)
    if is_file:
        target = str(Path(target).expanduser().resolve())
    return f"{target}:{attribute}"


def _import_file(path: Path):
    """Import a Python file by path once per process, as :func:`srlib.plugins.load_plugins` does.

    The module name comes from the resolved path (:func:`srlib.plugins.plugin_module_name`),
    so a file given both as ``--module`` and as a plugin is imported once and its
    registrations are not repeated under another name.

    Raises:
        srlib.plugins.PluginError: (a ``ValueError``) the file cannot be imported.
    """
    from srlib.plugins import load_plugins, plugin_module_name

    load_plugins([path])  # importlib.util.spec_from_file_location, once per process
    return sys.modules[plugin_module_name(path)]


def import_module_class(spec: str) -> type[nn.Module]:
    """Import the module class named by ``"path/to/file.py:Class"`` or ``"package.module:Class"``.

    A file is imported by :func:`srlib.plugins.load_plugins` (with
    :func:`importlib.util.spec_from_file_location`, once per process, under the
    same module name as a ``--plugin`` of that file); a dotted name with
    :func:`importlib.import_module`.
    Attentions that the import registers become registered benchmark cases.

    Returns:
        The class, an ``nn.Module`` subclass whose ``__init__`` takes ``channels``.

    Raises:
        ValueError: a malformed spec, a missing file, an import that fails (the
            message holds its error), no such attribute, or not an
            ``nn.Module`` class.
    """
    target, attribute, is_file = _split_module_spec(spec)
    path = Path(target).expanduser().resolve() if is_file else None
    if path is not None and not path.is_file():
        raise ValueError(f"--module {spec}: no such file {path}")
    try:
        module = _import_file(path) if path is not None else importlib.import_module(target)
    except ValueError as exc:  # srlib.plugins.PluginError (it names the file and the error)
        raise ValueError(f"--module {spec}: {exc}") from exc
    except Exception as exc:  # any import error of user code becomes one message
        raise ValueError(f"--module {spec}: importing {target} failed ({type(exc).__name__}: {exc})") from exc
    cls = getattr(module, attribute, None)
    if cls is None:
        raise ValueError(f"--module {spec}: {target} has no attribute {attribute!r}")
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ValueError(f"--module {spec}: {attribute} is not an nn.Module class")
    return cls


def _module_case(spec: str, imports: tuple[str, ...]) -> BenchCase:
    """The :class:`BenchCase` of an external module class (already importable)."""
    from srlib.attention import attention_entry, available_attention

    cls = import_module_class(spec)
    kind = "in_scale"
    for name in available_attention():  # a class its file registered keeps its registered kind
        entry = attention_entry(name)
        if entry.builder is cls:
            kind = entry.kind
            break
    doc = (cls.__doc__ or "").strip().splitlines()
    description = f"{spec} (external, built as {cls.__name__}(channels))" + (f": {doc[0]}" if doc else "")
    return BenchCase(name=cls.__name__, source="module", kind=kind, module=spec, imports=imports,
                     description=description)


# ----------------------------------------------------------------------------------------------
# Choosing the cases
# ----------------------------------------------------------------------------------------------


def resolve_cases(cases: Sequence[str] | str | None = None, modules: Sequence[str] | str | None = None) -> list[BenchCase]:
    """The cases to measure, in order: the named (or all registered) cases, then the external modules.

    Args:
        cases: case names (registered or calibration); None: every registered
            case (calibration cases only when named).  Repeats are dropped.
        modules: ``"path/to/file.py:Class"`` / ``"package.module:Class"`` specs.
            They are imported first, so attentions their files register are
            cases too (and part of ``cases=None``).  An external case is named
            after its class.

    Returns:
        A list of :class:`BenchCase`.

    Raises:
        ValueError: an unknown case name (the message lists the known ones); a
            bad module spec or an import that fails; two cases of one name; nothing
            to measure.
    """
    if isinstance(cases, str):
        cases = [cases]
    if isinstance(modules, str):
        modules = [modules]
    specs = list(dict.fromkeys(_normalise_module_spec(m) for m in (modules or ())))
    imports = tuple(specs)
    external = [_module_case(spec, imports) for spec in specs]  # imports first: they may register cases
    registered = _registered_cases()
    known = [*registered, *CALIBRATION_CASES]
    if cases is None:
        chosen = list(registered)
    else:
        unknown = [c for c in cases if c not in known]
        if unknown:
            raise ValueError(
                f"unknown benchmark case(s) {', '.join(map(repr, unknown))}; choose from {', '.join(known)}"
                + (" (or measure your own class with --module FILE.py:Class)" if not external else "")
            )
        chosen = list(dict.fromkeys(cases))
    if not chosen and not external:
        raise ValueError(f"no cases to measure; choose from {', '.join(known)}")
    selected = [
        registered[c] if c in registered else BenchCase(name=c, source="calibration", description=CALIBRATION_CASES[c])
        for c in chosen
    ]
    if imports:  # the worker re-imports the files, so the registrations they make exist there too
        selected = [replace(case, imports=imports) if case.source == "registry" else case for case in selected]
    names = [c.name for c in selected]
    for case in external:
        if case.name in names:
            raise ValueError(
                f"--module {case.module}: a case named {case.name!r} is already measured; "
                "rename the class or leave out the other case"
            )
        names.append(case.name)
        selected.append(case)
    return selected


# ----------------------------------------------------------------------------------------------
# Building and calling one case
# ----------------------------------------------------------------------------------------------


class _MemoryProbe(nn.Module):
    """Calibration case: ``forward(x)`` fills a ``mib`` MiB float32 tensor, frees it, returns ``x + 0``."""

    def __init__(self, mib: float):
        super().__init__()
        self.numel = int(mib * _MIB) // 4  # float32 elements

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = torch.ones(self.numel, dtype=torch.float32, device=x.device)  # writes every page
        return x + (block[0] - 1.0)  # (N, C, H, W), equal to x; keeps the fill from being skipped


def build_case(
    case: BenchCase,
    channels: int = 64,
    *,
    region_grid: tuple[int, int] | None = None,
    max_attention_bytes: float | None = None,
    probe_mib: float = 200.0,
) -> nn.Module:
    """The module one case measures, freshly initialised (CPU, training mode).

    Args:
        case: a :class:`BenchCase` (from :func:`resolve_cases` or :meth:`BenchCase.from_spec`).
        channels: C of the ``(N, C, H, W)`` input map.
        region_grid: ``(rows, cols)``: replaces the ``regions`` option of the
            attentions that have one (None: the registered value).
        max_attention_bytes: memory-guard limit of guarded attentions (None:
            their default, half the free memory of the device; ``math.inf``: off).
            External modules get no options.
        probe_mib: MiB that ``memory_probe`` allocates in forward.

    Returns:
        An ``nn.Module``: ``forward(x)`` (``forward(x, references)`` for kind
        ``"reference"``) on ``(N, C, H, W)`` float32; the output is
        ``(N, C, H, W)``, ``(N, C, sH, sW)`` for kind ``"cross_scale"``.

    Raises:
        ValueError: an unknown source; options the module rejects; an external
            module that cannot be imported.
        TypeError: an option the attention does not take.
    """
    for spec in case.imports:  # registrations made by external files
        import_module_class(spec)
    if case.source == "calibration":
        if case.name != "memory_probe":
            raise ValueError(f"unknown calibration case {case.name!r}; choose from {', '.join(CALIBRATION_CASES)}")
        return _MemoryProbe(probe_mib)
    if case.source == "module":
        return import_module_class(case.module)(channels)
    if case.source != "registry":
        raise ValueError(f"unknown case source {case.source!r}")
    from srlib.attention import build_attention

    options = dict(case.options)
    if region_grid is not None and case.takes_regions:
        options["regions"] = [int(v) for v in region_grid]
    if max_attention_bytes is not None and case.guarded:
        options["max_attention_bytes"] = max_attention_bytes
    return build_attention(case.attention, channels, **options)


def build_attention_case(
    name: str,
    channels: int = 64,
    *,
    region_grid: tuple[int, int] | None = None,
    max_attention_bytes: float | None = None,
    probe_mib: float = 200.0,
) -> nn.Module:
    """The module of the case called ``name`` (registered, calibration or an external ``file.py:Class``).

    Same as ``build_case(resolve_cases([name])[0], ...)``, see :func:`build_case`
    for the arguments and the shapes; a ``name`` holding ``":"`` is an external
    module spec.

    Raises:
        ValueError: an unknown name (the message lists the known ones), options
            the module rejects.
    """
    chosen = resolve_cases([], [name]) if ":" in name else resolve_cases([name])
    return build_case(chosen[0], channels, region_grid=region_grid, max_attention_bytes=max_attention_bytes,
                      probe_mib=probe_mib)


def case_inputs(case: BenchCase, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple:
    """The positional arguments of the module's forward pass for input ``x`` ``(N, C, H, W)``.

    ``(x,)``; for kind ``"reference"`` ``(x, [r_1, ..., r_K])`` with
    ``K = case.references`` (default :data:`REFERENCE_COUNT`) random maps of the
    shape, dtype and device of ``x`` (drawn from ``generator`` on CPU, then moved).
    """
    if case.kind != "reference":
        return (x,)
    references = [
        torch.randn(tuple(x.shape), generator=generator, dtype=x.dtype).to(x.device) for _ in range(case.references)
    ]
    return (x, references)


def case_multiply_adds(
    case: BenchCase,
    module: nn.Module,
    shape: tuple[int, int, int, int],
    reference_shapes: list[tuple[int, int, int, int]] | None = None,
) -> int | None:
    """The declared multiply-adds of one forward pass of ``module`` (the case, built) on an ``(N, C, H, W)`` input.

    Args:
        case: the :class:`BenchCase`.
        module: its module, from :func:`build_case` (its ``attention_options``
            are the options actually used, ``region_grid`` and guard limits included).
        shape: ``(N, C, H, W)`` of the input.
        reference_shapes: kind ``"reference"``: the ``(N, C, H_k, W_k)`` of each reference.

    Returns:
        The count from the attention's ``multiply_adds`` declaration
        (:func:`srlib.attention.registry.attention_multiply_adds`; 1 multiply-add
        = 2 FLOP), or None: not a registry case, or an attention that declares
        no arithmetic.

    Raises:
        ValueError, TypeError: as the declaration (a bad shape or option).
    """
    if case.source != "registry" or case.attention is None:
        return None
    from srlib.attention.registry import attention_multiply_adds

    options = getattr(module, "attention_options", None) or case.options
    return attention_multiply_adds(case.attention, shape, options, reference_shapes)
