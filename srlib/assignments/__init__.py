"""Classroom assignments: the nbgrader markup of the course notebooks, student releases, grading.

- :mod:`srlib.assignments.markup`: find graded cells, refuse malformed markup;
- :mod:`srlib.assignments.release`: student versions (``srlib assignments release``);
- :mod:`srlib.assignments.grade`: grade a submission (``srlib assignments grade``);
- :mod:`srlib.assignments.checks`: helpers for hidden tests (:func:`refuse_calls`).

The convention is in ``docs/teaching.md``.
"""

from .checks import ForbiddenCallError, called_names, refuse_calls
from .markup import GradedCell, MarkupError, check_assignment, graded_cells
from .release import course_notebooks, read_notebook, release, release_notebook, write_notebook

__all__ = [
    "ForbiddenCallError",
    "GradedCell",
    "MarkupError",
    "called_names",
    "check_assignment",
    "course_notebooks",
    "graded_cells",
    "read_notebook",
    "refuse_calls",
    "release",
    "release_notebook",
    "write_notebook",
]
