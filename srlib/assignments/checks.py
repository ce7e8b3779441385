"""Helpers for the test cells of graded exercises.

Hidden tests must make sure an answer computes the thing itself instead of calling the
``srlib`` function that the exercise asks the student to write (see ``docs/teaching.md``).
:func:`refuse_calls` does that by running the answer while the named ``srlib`` functions
raise; :func:`called_names` inspects the answer's source for their names.

Example, in a hidden-test region of a test cell::

    from srlib.assignments.checks import refuse_calls
    from srlib.metrics import psnr
    with refuse_calls(psnr, within=psnr_y):
        value = psnr_y(sr, hr, shave=2)   # fails if psnr_y calls srlib.metrics.psnr
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import sys
from types import ModuleType
from typing import Callable, Iterator

__all__ = ["ForbiddenCallError", "refuse_calls", "called_names"]


class ForbiddenCallError(AssertionError):
    """An answer called the library function that the exercise asks the student to write."""


def _qualified_name(function: Callable) -> str:
    module = getattr(function, "__module__", None) or "?"
    return f"{module}.{getattr(function, '__qualname__', getattr(function, '__name__', repr(function)))}"


def _refusing(function: Callable) -> Callable:
    name = _qualified_name(function)

    @functools.wraps(function)
    def refuse(*args, **kwargs):
        raise ForbiddenCallError(
            f"the answer calls {name}, the library's version of what this exercise asks you to write; "
            "compute it yourself (from the equation, with torch operations)"
        )

    return refuse


@contextlib.contextmanager
def refuse_calls(*functions: Callable, within: Callable | None = None) -> Iterator[None]:
    """While active, every given function raises :class:`ForbiddenCallError` when called.

    Each function is replaced wherever it can be reached by name: as an attribute of every
    loaded module that holds it (``srlib.metrics.psnr``, ``srlib.psnr`` if re-exported, ...)
    and, when ``within`` is given, in the global namespace of ``within`` (the notebook's
    namespace for a function defined in a notebook, so ``from srlib.metrics import psnr``
    followed by ``psnr(...)`` inside the answer is caught too). Everything is restored on
    exit, also when the body raises.

    Args:
        functions: the library functions (or classes) the answer must not call.
        within: the student's function, whose ``__globals__`` are patched as well.

    Raises:
        TypeError: a given object is not callable.
    """
    for function in functions:
        if not callable(function):
            raise TypeError(f"refuse_calls takes functions or classes; got {type(function).__name__}")
    namespaces: list[dict] = [vars(m) for m in list(sys.modules.values()) if isinstance(m, ModuleType)]
    if within is not None:
        namespaces.append(getattr(within, "__globals__", {}))
    saved: list[tuple[dict, str, object]] = []
    try:
        for function in functions:
            stand_in = _refusing(function)
            for namespace in namespaces:
                try:
                    names = [name for name, value in list(namespace.items()) if value is function]
                except Exception:  # a module whose namespace cannot be read: skip it
                    continue
                for name in names:
                    saved.append((namespace, name, function))
                    namespace[name] = stand_in
        yield
    finally:
        for namespace, name, function in reversed(saved):
            namespace[name] = function


def called_names(answer: Callable, *names: str) -> list[str]:
    """The names among ``names`` that occur as calls (``name(`` or ``.name(``) in ``answer``'s source.

    Returns an empty list when the source calls none of them; comments are ignored.

    Raises:
        TypeError: the source of ``answer`` cannot be read (a built-in or a lambda typed at a prompt).
    """
    try:
        source = inspect.getsource(answer)
    except (OSError, TypeError) as err:
        raise TypeError(f"cannot read the source of {answer!r}: {err}") from None
    code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
    return [name for name in names if re.search(rf"(?<![\w]){re.escape(name)}\s*\(", code)]
