"""``python -m srlib.bench``: the hidden measuring worker, or the ``srlib bench`` command.

* ``python -m srlib.bench _measure-one SPEC_JSON`` - measure one (case, size)
  and print its record as one JSON line (:func:`srlib.bench.measure.worker_main`);
  :func:`srlib.bench.measure.measure_in_subprocess` starts it;
* ``python -m srlib.bench attention ...`` - the same as ``srlib bench attention ...``
  (:func:`srlib.cli.main`, imported only here, so the package never imports the CLI).
"""

from __future__ import annotations

import sys

from srlib.bench.measure import WORKER_COMMAND, worker_main


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to the worker or to ``srlib bench``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == WORKER_COMMAND:
        return worker_main(argv[1:])
    from srlib.cli import main as cli_main

    return cli_main(["bench", *argv])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
