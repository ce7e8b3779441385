"""The attention contract as code: :func:`check_attention` runs every check on one module.

The same checks run for every registered attention in ``tests/test_attention_contract.py``;
a researcher calls :func:`check_attention` on a new variant (registered or not) in a
notebook.  Each check builds the module afresh on small random float64 maps (the
default ``(2, 4, 5, 6)``: ``N = 2`` images of ``C = 4`` channels, ``5 x 6`` pixels):

==================== ===========================================================================
check                what it asserts
==================== ===========================================================================
``shape``            float32 and float64 output shape and dtype follow the kind (see
                     :mod:`srlib.attention.registry`)
``bad_input``        a wrong shape, channel count, dtype or device raises one ``ValueError``
                     that names the problem
``batch``            a batch of ``N`` images equals the ``N`` images run one by one (eval mode)
``gradcheck``        ``torch.autograd.gradcheck`` of the output with respect to the input (float64)
``loops``            the module equals its registered float64 loop version (if it has one)
``determinism``      same torch seed -> same weights and output; two eval passes are identical
``details``          ``return_details=True`` gives ``(out, details)`` with the same ``out`` and
                     a dataclass ``details``
``state_dict``       the weights loaded into a module built from another seed give the same output
``memory_guard``     (``guarded`` entries) an over-large map raises ``AttentionMemoryError``
                     before allocating the score tensors
==================== ===========================================================================
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from srlib.attention._common import AttentionMemoryError
from srlib.attention.registry import ATTENTION, ATTENTION_KINDS, attention_entry

__all__ = ["CONTRACT_CHECKS", "AttentionContractError", "ContractSubject", "check_attention", "contract_subject"]


class AttentionContractError(AssertionError):
    """One or more contract checks failed; the message lists each failure.

    Attributes:
        failures: ``{check name: reason}`` for every failed check, in the order they ran.
    """

    def __init__(self, message: str, failures: dict[str, str] | None = None):
        super().__init__(message)
        self.failures = dict(failures or {})


@dataclass
class ContractSubject:
    """What the checks need to know about one attention.

    Attributes:
        name: a label for messages (the registry name, or the class name).
        builder: ``fn(channels, **options) -> nn.Module``.
        kind: ``"in_scale"``, ``"cross_scale"`` or ``"reference"``.
        options: options passed to the builder.
        loops: the float64 loop version ``fn(module, x[, references])``, or None.
        guarded: the module takes ``max_attention_bytes`` and guards its memory.
        channels: ``C`` of the test maps.
        size: ``(H, W)`` of the test maps.
        batch: ``N`` of the test maps.
    """

    name: str
    builder: Callable[..., nn.Module]
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    loops: Callable[..., Any] | None = None
    guarded: bool = False
    channels: int = 4
    size: tuple[int, int] = (5, 6)
    batch: int = 2

    # -- helpers shared by the checks ------------------------------------------------------------

    def build(self, seed: int = 0, dtype: torch.dtype = torch.float64, **overrides: Any) -> nn.Module:
        """The module with ``torch.manual_seed(seed)`` weights, in ``dtype``, eval mode."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = self.builder(self.channels, **{**self.options, **overrides})
        return module.to(dtype).eval()

    def inputs(self, dtype: torch.dtype = torch.float64, size: tuple[int, int] | None = None, batch: int | None = None):
        """``(x, references)``: random maps (references None unless the kind is ``"reference"``)."""
        g = torch.Generator().manual_seed(1234)
        h, w = size or self.size
        n = batch or self.batch
        x = torch.randn(n, self.channels, h, w, generator=g, dtype=torch.float64).to(dtype)  # (N, C, H, W)
        if self.kind != "reference":
            return x, None
        references = [
            torch.randn(n, self.channels, h + 1, w + 2, generator=g, dtype=torch.float64).to(dtype),  # (N, C, H_1, W_1)
            torch.randn(n, self.channels, h, w, generator=g, dtype=torch.float64).to(dtype),  # (N, C, H_2, W_2)
        ]
        return x, references

    def run(self, module: nn.Module, x: torch.Tensor, references=None, **kwargs):
        """``module(x, **kwargs)`` or ``module(x, references, **kwargs)`` by kind."""
        if self.kind == "reference":
            return module(x, references, **kwargs)
        return module(x, **kwargs)

    def expected_shape(self, module: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
        n, c, h, w = x.shape
        if self.kind == "cross_scale":
            scale = int(getattr(module, "scale", self.options.get("scale", 1)))
            return (n, c, scale * h, scale * w)
        return (n, c, h, w)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, atol: float = 1e-9, rtol: float = 1e-7) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------


def check_shape(subject: ContractSubject) -> None:
    """Output shape and dtype follow the kind, in float32 and float64."""
    for dtype in (torch.float32, torch.float64):
        module = subject.build(dtype=dtype)
        x, refs = subject.inputs(dtype)
        with torch.no_grad():
            out = subject.run(module, x, refs)
        if not isinstance(out, torch.Tensor):
            raise AssertionError(f"forward returned {type(out).__name__}, expected a tensor")
        expected = subject.expected_shape(module, x)
        if tuple(out.shape) != expected:
            raise AssertionError(f"{subject.kind} attention: output {tuple(out.shape)}, expected {expected} for input {tuple(x.shape)}")
        if out.dtype != dtype:
            raise AssertionError(f"output dtype {out.dtype} for a {dtype} module and input")


def _expect_value_error(call: Callable[[], Any], words: tuple[str, ...], what: str) -> None:
    try:
        call()
    except ValueError as err:
        message = str(err).lower()
        if not any(word in message for word in words):
            raise AssertionError(f"{what}: the ValueError does not name the problem ({' / '.join(words)}): {err}") from None
        return
    except Exception as err:  # noqa: BLE001 - any other exception type breaks the contract
        raise AssertionError(f"{what}: raised {type(err).__name__} ({err}) instead of a ValueError") from None
    raise AssertionError(f"{what}: no error was raised")


def check_bad_input(subject: ContractSubject) -> None:
    """Wrong shape, channels, dtype or device each raise one ValueError naming the problem.

    A module without parameters has no dtype or device of its own and accepts any
    float input (see :func:`srlib.attention._common.check_feature_map`), so for it
    only the shape, channel and integer cases apply.
    """
    module = subject.build(dtype=torch.float32)
    x, refs = subject.inputs(torch.float32)
    n, c, h, w = x.shape
    cases = [
        (lambda: subject.run(module, x[0], refs), ("shape", "(n,", "feature map"), "a 3-D input"),
        (lambda: subject.run(module, torch.zeros(n, c + 1, h, w), refs), ("channel", "shape", f"{c}"), "wrong channels"),
        (lambda: subject.run(module, x.to(torch.int64), refs), ("float", "dtype", "int64"), "an integer input"),
    ]
    if next(module.parameters(), None) is not None:
        cases += [
            (lambda: subject.run(module, x.double(), refs and [r.double() for r in refs]), ("dtype", "float64"),
             "a float64 input"),
            (lambda: subject.run(module, x.to("meta"), refs and [r.to("meta") for r in refs]), ("device", "meta"),
             "an input on another device"),
        ]
    for call, words, what in cases:
        _expect_value_error(call, words, what)


def check_batch(subject: ContractSubject) -> None:
    """A batch equals its images run one by one."""
    module = subject.build()
    x, refs = subject.inputs()
    with torch.no_grad():
        together = subject.run(module, x, refs)
        for i in range(x.shape[0]):
            alone = subject.run(module, x[i : i + 1], refs and [r[i : i + 1] for r in refs])
            _close(together[i : i + 1], alone, f"image {i} in a batch vs alone")


def check_gradcheck(subject: ContractSubject) -> None:
    """``torch.autograd.gradcheck`` with respect to the input, float64, on a 3 x 4 map of one image."""
    module = subject.build()
    x, refs = subject.inputs(size=(3, 4), batch=1)
    x = x.clone().requires_grad_(True)
    if not torch.autograd.gradcheck(lambda t: subject.run(module, t, refs), (x,), eps=1e-6, atol=1e-5, raise_exception=True):
        raise AssertionError("gradcheck failed")


def check_loops(subject: ContractSubject) -> None:
    """The module equals its float64 loop version (skipped when none is registered)."""
    if subject.loops is None:
        return
    module = subject.build()
    x, refs = subject.inputs()
    with torch.no_grad():
        out = subject.run(module, x, refs)
        expected = subject.loops(module, x, refs) if subject.kind == "reference" else subject.loops(module, x)
    _close(out, expected, "module vs its loop version (float64)")


def check_determinism(subject: ContractSubject) -> None:
    """Same seed -> same weights and outputs; eval passes repeat exactly."""
    first, second = subject.build(seed=3), subject.build(seed=3)
    for key, value in first.state_dict().items():
        if not torch.equal(value, second.state_dict()[key]):
            raise AssertionError(f"two builds from torch seed 3 differ in {key}")
    x, refs = subject.inputs()
    with torch.no_grad():
        a = subject.run(first, x, refs)
        b = subject.run(first, x, refs)
        c = subject.run(second, x, refs)
    if not (torch.equal(a, b) and torch.equal(a, c)):
        raise AssertionError("eval-mode outputs differ between two passes or two identically seeded modules")


def check_details(subject: ContractSubject) -> None:
    """``return_details=True`` returns ``(out, details)``: the same out and a dataclass."""
    module = subject.build()
    x, refs = subject.inputs()
    with torch.no_grad():
        plain = subject.run(module, x, refs)
        result = subject.run(module, x, refs, return_details=True)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise AssertionError(f"return_details=True returned {type(result).__name__}, expected (out, details)")
    out, details = result
    _close(out, plain, "output with return_details=True vs without")
    if not dataclasses.is_dataclass(details):
        raise AssertionError(f"details is a {type(details).__name__}, expected a documented dataclass")


def check_state_dict(subject: ContractSubject) -> None:
    """Weights moved into a module built from another seed reproduce the output."""
    source, target = subject.build(seed=5), subject.build(seed=6)
    if set(source.state_dict()) != set(target.state_dict()):
        raise AssertionError("two builds with the same options have different state_dict keys")
    target.load_state_dict(source.state_dict(), strict=True)
    x, refs = subject.inputs()
    with torch.no_grad():
        _close(subject.run(target, x, refs), subject.run(source, x, refs), "after load_state_dict")


def check_memory_guard(subject: ContractSubject) -> None:
    """(guarded entries) An over-large map is refused with AttentionMemoryError, before allocating, quickly."""
    if not subject.guarded:
        return
    module = subject.build(dtype=torch.float32, max_attention_bytes=1024.0)
    if not getattr(module, "memory_guarded", True):  # e.g. a fused path that never stores the scores
        return
    x, refs = subject.inputs(torch.float32, size=(64, 64), batch=1)
    try:
        with torch.no_grad():
            subject.run(module, x, refs)
    except AttentionMemoryError as err:
        if not (err.needed_bytes > err.limit_bytes == 1024.0):
            raise AssertionError(f"the error reports needed={err.needed_bytes}, limit={err.limit_bytes}") from None
    else:
        raise AssertionError("a 64x64 map with max_attention_bytes=1024 was not refused")
    # The default limit on a huge map: refusing must not first allocate the scores.
    module = subject.build(dtype=torch.float32)
    x, refs = subject.inputs(torch.float32, size=(1500, 1500), batch=1)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            subject.run(module, x, refs)
    except AttentionMemoryError:
        pass
    else:
        raise AssertionError("a 1500x1500 map was not refused under the default limit")
    if time.perf_counter() - start > 30:
        raise AssertionError("refusing a 1500x1500 map took more than 30 s: the guard runs after the work")


CONTRACT_CHECKS: dict[str, Callable[[ContractSubject], None]] = {
    "shape": check_shape,
    "bad_input": check_bad_input,
    "batch": check_batch,
    "gradcheck": check_gradcheck,
    "loops": check_loops,
    "determinism": check_determinism,
    "details": check_details,
    "state_dict": check_state_dict,
    "memory_guard": check_memory_guard,
}


def contract_subject(
    name_or_class: str | Callable[..., nn.Module],
    options: dict[str, Any] | None = None,
    kind: str | None = None,
    loops: Callable[..., Any] | None = None,
    **settings: Any,
) -> ContractSubject:
    """A :class:`ContractSubject` from a registered name or a module class (registered or not).

    Args:
        name_or_class: a registry name, or a class / builder ``fn(channels, **options)``.
        options: options for the builder (default: none).
        kind: needed for an unregistered class; ignored for a registered one.
        loops: loop version for an unregistered class.
        **settings: ``channels``, ``size``, ``batch`` of the test maps.

    Raises:
        ValueError: an unknown name, or an unregistered class without a valid ``kind``.
    """
    if isinstance(name_or_class, str):
        entry = attention_entry(name_or_class)
    else:
        registered = [n for n in ATTENTION.names() if ATTENTION.entry(n).builder is name_or_class]
        entry = attention_entry(registered[0]) if registered else None
    if entry is not None:
        return ContractSubject(
            name=entry.name, builder=entry.builder, kind=entry.kind, options=dict(options or {}),
            loops=entry.loops, guarded=entry.guarded, **settings,
        )
    if kind not in ATTENTION_KINDS:
        raise ValueError(
            f"{getattr(name_or_class, '__name__', name_or_class)!r} is not registered: pass kind= one of "
            f"{', '.join(map(repr, ATTENTION_KINDS))} (or register it with @register_attention)"
        )
    guarded = "max_attention_bytes" in inspect.signature(name_or_class).parameters
    return ContractSubject(
        name=getattr(name_or_class, "__name__", str(name_or_class)), builder=name_or_class, kind=kind,
        options=dict(options or {}), loops=loops, guarded=guarded, **settings,
    )


def check_attention(
    name_or_class: str | Callable[..., nn.Module],
    options: dict[str, Any] | None = None,
    *,
    kind: str | None = None,
    loops: Callable[..., Any] | None = None,
    checks: list[str] | None = None,
    **settings: Any,
) -> dict[str, str]:
    """Run the attention contract on one module and raise if anything fails.

    Args:
        name_or_class: a registry name (``"nlsa"``) or a module class.
        options: builder options (e.g. ``{"n_rounds": 2}``).
        kind: for an unregistered class, its kind.
        loops: for an unregistered class, its float64 loop version.
        checks: names from :data:`CONTRACT_CHECKS` (default: all).
        **settings: ``channels`` (4), ``size`` ((5, 6)), ``batch`` (2) of the test maps.

    Returns:
        ``{check: "ok" | "skipped (...)"}`` for every check run, in order.

    Raises:
        AttentionContractError: one or more checks failed (the message lists
            each with its reason).
        ValueError: an unknown name or check, or an unregistered class without ``kind``.
    """
    subject = contract_subject(name_or_class, options, kind=kind, loops=loops, **settings)
    names = list(CONTRACT_CHECKS) if checks is None else list(checks)
    unknown = [c for c in names if c not in CONTRACT_CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; choose from {', '.join(CONTRACT_CHECKS)}")
    report: dict[str, str] = {}
    failures: dict[str, str] = {}
    for check in names:
        if check == "loops" and subject.loops is None:
            report[check] = "skipped (no loop version)"
            continue
        if check == "memory_guard" and not subject.guarded:
            report[check] = "skipped (no memory guard)"
            continue
        try:
            CONTRACT_CHECKS[check](subject)
        except AssertionError as err:
            failures[check] = str(err)
            report[check] = "FAILED"
        else:
            report[check] = "ok"
    if failures:
        listed = "\n  ".join(f"{check}: {reason}" for check, reason in failures.items())
        raise AttentionContractError(f"{subject.name} breaks the attention contract:\n  {listed}", failures)
    return report

