"""nbgrader markup: find the graded cells of a notebook and refuse malformed markup.

The convention is written down in ``docs/teaching.md``. In short, a graded cell carries the
cell metadata ``nbgrader = {"solution", "grade", "grade_id", "locked", "points",
"schema_version": 3}`` and is one of

- an **answer** cell (code, ``solution`` true, ``grade`` false): the answer lies between
  ``### BEGIN SOLUTION`` and ``### END SOLUTION``;
- a **test** cell (code, ``grade`` true, ``solution`` false, ``points`` > 0): visible checks,
  then hidden ones between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``;
- a **written** answer (markdown, ``solution`` and ``grade`` true, ``points`` > 0), graded by
  hand: the model answer and its rubric lie between the solution markers.

Every function here takes a notebook as a ``dict`` in nbformat 4 layout (``json.load`` of an
``.ipynb`` file, or an ``nbformat.NotebookNode``) and never modifies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = [
    "BEGIN_SOLUTION",
    "END_SOLUTION",
    "BEGIN_HIDDEN_TESTS",
    "END_HIDDEN_TESTS",
    "REVEALS_ANSWER_TAG",
    "MIN_AUTOGRADED_EXERCISES",
    "MarkupError",
    "GradedCell",
    "cell_source",
    "describe_cell",
    "marker_regions",
    "graded_cells",
    "check_assignment",
]

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN_TESTS = "### BEGIN HIDDEN TESTS"
END_HIDDEN_TESTS = "### END HIDDEN TESTS"
REVEALS_ANSWER_TAG = "reveals-answer"
MIN_AUTOGRADED_EXERCISES = 3
_MARKERS = (BEGIN_SOLUTION, END_SOLUTION, BEGIN_HIDDEN_TESTS, END_HIDDEN_TESTS)


class MarkupError(ValueError):
    """Malformed nbgrader markup; the message names the notebook cell and what to fix."""


@dataclass(frozen=True)
class GradedCell:
    """One graded cell of a notebook.

    Attributes:
        index: position of the cell in ``notebook["cells"]`` (0-based).
        role: ``"answer"`` (code the student writes), ``"test"`` (autograded checks) or
            ``"written"`` (markdown answer graded by hand).
        grade_id: the nbgrader ``grade_id``, unique in the notebook.
        points: points of a test or written cell; ``0`` for an answer cell.
        first_line: the first non-empty line of the cell's source, for messages.
    """

    index: int
    role: str
    grade_id: str
    points: float
    first_line: str

    @property
    def autograded(self) -> bool:
        """True for a test cell, whose points are given by running it."""
        return self.role == "test"


def cell_source(cell: Mapping[str, Any]) -> str:
    """The source of a notebook cell as one string (nbformat allows a string or a list of lines)."""
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _first_line(cell: Mapping[str, Any]) -> str:
    for line in cell_source(cell).splitlines():
        if line.strip():
            return line.strip()[:70]
    return "(empty)"


def describe_cell(index: int, cell: Mapping[str, Any]) -> str:
    """``cell 12 (ex1_kernel, "def keys_cubic(x):")``: how messages name a cell (0-based index)."""
    grade_id = (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")
    label = f"{grade_id}, " if grade_id else ""
    return f'cell {index} ({label}"{_first_line(cell)}")'


def marker_regions(source: str, begin: str, end: str, where: str) -> list[tuple[int, int]]:
    """The ``(begin_line, end_line)`` pairs (0-based, inclusive) of the regions ``begin ... end``.

    A marker counts when it is the whole line apart from indentation (in a markdown cell too).

    Raises:
        MarkupError: markers that are unbalanced or nested; ``where`` names the cell.
    """
    regions, opened = [], None
    for number, line in enumerate(source.splitlines()):
        text = line.strip()
        if text == begin:
            if opened is not None:
                raise MarkupError(f"{where}: '{begin}' on line {number + 1} inside the region opened on line "
                                  f"{opened + 1}; close it with '{end}' first")
            opened = number
        elif text == end:
            if opened is None:
                raise MarkupError(f"{where}: '{end}' on line {number + 1} without a '{begin}' before it")
            regions.append((opened, number))
            opened = None
    if opened is not None:
        raise MarkupError(f"{where}: '{begin}' on line {opened + 1} is never closed; add a line '{end}'")
    return regions


def _has_marker(source: str, markers=_MARKERS) -> str | None:
    for line in source.splitlines():
        if line.strip() in markers:
            return line.strip()
    return None


def graded_cells(notebook: Mapping[str, Any], name: str = "notebook") -> list[GradedCell]:
    """The graded cells of ``notebook``, in order, after checking their markup.

    Args:
        notebook: the notebook (nbformat 4 ``dict``).
        name: how messages name the notebook (its file name).

    Returns:
        One :class:`GradedCell` per cell with nbgrader metadata that takes part in grading.

    Raises:
        MarkupError: the first malformed cell, named by number, ``grade_id`` and first line:
            markers in a cell without nbgrader metadata, unbalanced or nested markers, a
            solution region outside a solution cell (or a solution cell without one), hidden
            tests outside a test cell, a missing or duplicate ``grade_id``, missing or
            non-positive points, an unknown ``schema_version``, or a graded code cell that is
            both answer and test.
    """
    found: list[GradedCell] = []
    seen: dict[str, int] = {}
    for index, cell in enumerate(notebook.get("cells", [])):
        where = f"{name}, {describe_cell(index, cell)}"
        source = cell_source(cell)
        meta = cell.get("metadata", {}).get("nbgrader")
        if not meta:
            marker = _has_marker(source)
            if marker:
                raise MarkupError(f"{where}: '{marker}' in a cell without nbgrader metadata; give the cell "
                                  "metadata nbgrader = {solution, grade, grade_id, locked, points, "
                                  "schema_version: 3} (docs/teaching.md) or remove the marker")
            continue
        if meta.get("schema_version") != 3:
            raise MarkupError(f"{where}: nbgrader schema_version {meta.get('schema_version')!r}; "
                              "this course writes schema_version 3")
        grade_id = meta.get("grade_id")
        if not isinstance(grade_id, str) or not grade_id.strip():
            raise MarkupError(f"{where}: nbgrader metadata without a grade_id; name the cell, e.g. 'ex1_kernel'")
        if grade_id in seen:
            raise MarkupError(f"{where}: grade_id {grade_id!r} is also used by cell {seen[grade_id]}; "
                              "grade_ids must be unique in a notebook")
        seen[grade_id] = index
        solution, grade = bool(meta.get("solution")), bool(meta.get("grade"))
        code = cell.get("cell_type") == "code"
        solution_regions = marker_regions(source, BEGIN_SOLUTION, END_SOLUTION, where)
        hidden_regions = marker_regions(source, BEGIN_HIDDEN_TESTS, END_HIDDEN_TESTS, where)
        if solution_regions and not solution:
            raise MarkupError(f"{where}: a solution region in a cell whose nbgrader metadata says solution: false")
        if solution and not solution_regions:
            raise MarkupError(f"{where}: a solution cell without '{BEGIN_SOLUTION}' ... '{END_SOLUTION}'; "
                              "mark the part the student writes")
        if hidden_regions and not (code and grade and not solution):
            raise MarkupError(f"{where}: hidden tests belong in a test cell (code, grade: true, solution: false)")
        if code and solution and grade:
            raise MarkupError(f"{where}: a code cell that is both answer and test; put the answer and its "
                              "checks in two cells (answer: solution true, grade false; test: the reverse)")
        if not solution and not grade:
            continue  # a read-only cell (nbgrader "locked" only): not part of grading
        points = meta.get("points", 0) if grade else 0
        if grade and (isinstance(points, bool) or not isinstance(points, (int, float)) or points <= 0):
            raise MarkupError(f"{where}: a graded cell needs points > 0 in its nbgrader metadata, got {points!r}")
        if not code and not (solution and grade):
            raise MarkupError(f"{where}: a markdown cell in the markup must be a written answer "
                              "(solution: true and grade: true, with points)")
        role = "test" if code and grade else "answer" if code else "written"
        found.append(GradedCell(index, role, grade_id, float(points) if grade else 0.0, _first_line(cell)))
    return found


def check_assignment(notebook: Mapping[str, Any], name: str = "notebook",
                     min_autograded: int = MIN_AUTOGRADED_EXERCISES) -> list[GradedCell]:
    """:func:`graded_cells`, plus the rules of a course assignment.

    The notebook must have at least ``min_autograded`` test cells, and every answer cell
    must be followed (not necessarily at once) by a test cell.

    Raises:
        MarkupError: as :func:`graded_cells`, or too few autograded exercises, or an
            answer cell that no test cell follows.
    """
    cells = graded_cells(notebook, name)
    tests = [c for c in cells if c.autograded]
    if len(tests) < min_autograded:
        raise MarkupError(f"{name}: {len(tests)} autograded exercise(s); a course notebook needs at least "
                          f"{min_autograded} (test cells with grade: true and points)")
    last_test = max(c.index for c in tests)
    for c in cells:
        if c.role == "answer" and c.index > last_test:
            raise MarkupError(f"{name}, cell {c.index} ({c.grade_id}): an answer cell that no test cell follows; "
                              "add a test cell after it")
    return cells
