"""Grading a submitted notebook (``srlib assignments grade``).

1. Every test cell of the submission is put back from the solution notebook (hidden tests
   included), so a student who edited a locked test cell is graded on the original.
2. The submission runs headless in quick mode (``SRLIB_QUICK=1``) in the solution notebook's
   folder, every cell executed even after an error. Cells after the last graded cell are
   not run: they cannot change the grade.
3. A test cell that runs without an error earns its points; its message is the error's last
   line otherwise. Written answers are listed for grading by hand.

No database and no server: the notebook runs in a Jupyter kernel driven by ``nbclient``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .markup import cell_source, graded_cells
from .release import course_notebooks, read_notebook

__all__ = ["GradingError", "ExerciseResult", "GradeReport", "grade_notebook", "default_source", "format_report"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MANUAL_MESSAGE = "graded by hand (rubric in the solution notebook)"


class GradingError(RuntimeError):
    """A submission that cannot be graded: no source notebook, or a kernel that does not run."""


@dataclass
class ExerciseResult:
    """The grade of one exercise.

    Attributes:
        grade_id: the test cell's (or written answer's) ``grade_id``.
        points: points earned; ``None`` for a written answer, which is graded by hand.
        max_points: points the exercise is worth.
        passed: whether the test cell ran without an error; ``None`` for a written answer.
        message: the error's last line when it failed (``AssertionError: ...``), else ``""``.
    """

    grade_id: str
    points: float | None
    max_points: float
    passed: bool | None
    message: str


@dataclass
class GradeReport:
    """The grade of a submission.

    Attributes:
        notebook: the submission's file name.
        score: points earned by the autograded exercises.
        max_score: points of all exercises, written answers included.
        manual_score_pending: points of the written answers, still to be graded by hand.
        exercises: one :class:`ExerciseResult` per exercise, in notebook order.
        seconds: wall-clock time of the execution, s.
    """

    notebook: str
    score: float
    max_score: float
    manual_score_pending: float
    exercises: list[ExerciseResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def autograded_max_score(self) -> float:
        """Points of the autograded exercises only."""
        return sum(e.max_points for e in self.exercises if e.passed is not None)

    def to_dict(self) -> dict:
        """The report as JSON-ready ``dict`` (the layout of ``--json``)."""
        return asdict(self)


def default_source(submission: str | os.PathLike) -> Path:
    """The solution notebook of a submission: the course notebook with the same file name.

    Raises:
        GradingError: no course notebook has that name (pass ``--source``).
    """
    name = Path(submission).name
    for path in course_notebooks():
        if path.name == name:
            return path
    raise GradingError(f"no course notebook is called {name}; pass the solution notebook with --source NOTEBOOK")


def _error_message(cell: Mapping[str, Any]) -> str | None:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            name, value = output.get("ename", "Error"), _ANSI.sub("", str(output.get("evalue", "")))
            lines = [line for line in value.strip().splitlines() if line.strip()]
            text = f"{name}: {lines[0]}" if lines else name
            return text if len(text) <= 200 else text[:197] + "..."
    return None


def _restore_tests(submission: dict, source: Mapping[str, Any], source_name: str) -> tuple[dict, list]:
    """The submission with every test cell put back from ``source``; and the source's graded cells."""
    source_cells = graded_cells(source, source_name)
    originals = {c.grade_id: source["cells"][c.index] for c in source_cells}
    restored = copy.deepcopy(submission)
    for cell in restored["cells"]:
        grade_id = (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")
        original = originals.get(grade_id)
        if original is not None and original.get("cell_type") == "code" and original["metadata"]["nbgrader"].get("grade"):
            cell["source"] = cell_source(original)
            cell["metadata"]["nbgrader"] = copy.deepcopy(original["metadata"]["nbgrader"])
            cell["cell_type"] = "code"
    return restored, source_cells


def grade_notebook(submission: str | os.PathLike, source: str | os.PathLike | None = None,
                   timeout: int = 600, quick: bool = True, threads: int | None = None) -> GradeReport:
    """Grade ``submission`` against the solution notebook ``source``.

    Args:
        submission: the student's notebook (``.ipynb``).
        source: the solution notebook; default :func:`default_source`.
        timeout: seconds one cell may run before it is interrupted (and fails).
        quick: run in quick mode (``SRLIB_QUICK=1``), as the course's grading does.
        threads: CPU threads of the notebook's kernel (``OMP_NUM_THREADS``); default: as this
            process. One thread each lets two gradings share two cores.

    Returns:
        A :class:`GradeReport`.

    Raises:
        FileNotFoundError: a notebook does not exist.
        MarkupError: a file is not a notebook, or the source's markup is malformed.
        GradingError: no source is found, or the notebook's kernel cannot be started.
    """
    import time

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    submission = Path(submission)
    source_path = Path(source) if source is not None else default_source(submission)
    student = read_notebook(submission)
    solution = read_notebook(source_path)
    restored, source_cells = _restore_tests(student, solution, source_path.name)
    graded_ids = {c.grade_id for c in source_cells}
    positions = [i for i, cell in enumerate(restored["cells"])
                 if (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id") in graded_ids]
    last = max(positions) if positions else -1
    restored["cells"] = restored["cells"][: last + 1]  # later cells cannot change the grade
    with warnings.catch_warnings():  # course notebooks carry no cell ids; nbformat adds them in memory
        warnings.simplefilter("ignore", category=getattr(nbformat.validator, "MissingIDFieldWarning", UserWarning))
        notebook = nbformat.reads(json.dumps(restored), as_version=4)  # joins list sources, as nbclient needs
    client = NotebookClient(notebook, timeout=timeout, interrupt_on_timeout=True, allow_errors=True,
                            kernel_name="python3",
                            resources={"metadata": {"path": str(source_path.resolve().parent)}})
    started = time.perf_counter()
    environment = {**os.environ, "SRLIB_QUICK": "1" if quick else "0", "MPLBACKEND": "Agg"}
    if threads is not None:
        environment.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        client.execute(env=environment)  # the kernel's environment; this process's stays as it is
    except DeadKernelError as err:
        raise GradingError(f"{submission.name}: the notebook's kernel died ({err}); run it yourself to see why") from None
    except RuntimeError as err:  # the kernel could not be started (no ipykernel, bad kernelspec)
        raise GradingError(f"{submission.name}: could not run the notebook: {err}") from None
    seconds = time.perf_counter() - started

    executed = {(cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id"): cell for cell in notebook.cells}
    results = []
    for graded in source_cells:
        if graded.role == "answer":
            continue
        if graded.role == "written":
            results.append(ExerciseResult(graded.grade_id, None, graded.points, None, MANUAL_MESSAGE))
            continue
        cell = executed.get(graded.grade_id)
        if cell is None:
            results.append(ExerciseResult(graded.grade_id, 0.0, graded.points, False,
                                          "the test cell is missing from the submission"))
            continue
        error = _error_message(cell)
        passed = error is None
        results.append(ExerciseResult(graded.grade_id, graded.points if passed else 0.0, graded.points, passed,
                                      error or ""))
    return GradeReport(
        notebook=submission.name,
        score=sum(r.points or 0.0 for r in results),
        max_score=sum(r.max_points for r in results),
        manual_score_pending=sum(r.max_points for r in results if r.passed is None),
        exercises=results,
        seconds=round(seconds, 1),
    )


def format_report(report: GradeReport) -> str:
    """The report as a plain-text table: exercise, points, passed, message."""
    width = max([len("exercise")] + [len(e.grade_id) for e in report.exercises])
    lines = [f"{report.notebook}", f"{'exercise':<{width}}  {'points':>9}  {'passed':<6}  message"]
    for e in report.exercises:
        points = "manual" if e.points is None else f"{e.points:g}"
        passed = "-" if e.passed is None else "yes" if e.passed else "no"
        lines.append(f"{e.grade_id:<{width}}  {points + ' / ' + format(e.max_points, 'g'):>9}  {passed:<6}  {e.message}")
    lines.append(f"score {report.score:g} / {report.max_score:g}"
                 + (f" ({report.manual_score_pending:g} points graded by hand)" if report.manual_score_pending else "")
                 + f"; ran in {report.seconds:.0f} s")
    return "\n".join(lines)
