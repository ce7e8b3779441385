"""Student versions of the course notebooks (``srlib assignments release``).

The committed notebooks are the solution versions. The release of one

- replaces each solution region with ``# YOUR CODE HERE`` and ``raise NotImplementedError()``
  (markdown: ``YOUR ANSWER HERE``), indented as the ``### BEGIN SOLUTION`` marker;
- removes each hidden-test region;
- clears the outputs of every graded cell and of every cell tagged ``reveals-answer``;
- keeps all metadata, so that nbgrader accepts the release as it accepts its own.

See ``docs/teaching.md`` for the markup.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from .markup import (
    BEGIN_HIDDEN_TESTS,
    BEGIN_SOLUTION,
    END_HIDDEN_TESTS,
    END_SOLUTION,
    REVEALS_ANSWER_TAG,
    MarkupError,
    cell_source,
    check_assignment,
    describe_cell,
    marker_regions,
)

__all__ = ["CODE_STUB", "ANSWER_STUB", "release_notebook", "release", "read_notebook", "write_notebook",
           "course_notebooks"]

CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
ANSWER_STUB = ("YOUR ANSWER HERE",)


def read_notebook(path: str | os.PathLike) -> dict:
    """Read an ``.ipynb`` file as a ``dict`` (nbformat 4 layout).

    Raises:
        FileNotFoundError: no file at ``path``.
        MarkupError: the file is not JSON or not an nbformat-4 notebook.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MarkupError(f"{path} is not a Jupyter notebook (not JSON: {err})") from None
    if not isinstance(notebook, dict) or notebook.get("nbformat") != 4 or not isinstance(notebook.get("cells"), list):
        raise MarkupError(f"{path} is not a Jupyter notebook in format 4 (no 'nbformat': 4 and 'cells')")
    return notebook


def write_notebook(notebook: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``notebook`` as the course stores notebooks (JSON, indent 1, UTF-8, final newline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def course_notebooks(folder: str | os.PathLike | None = None) -> list[Path]:
    """The course notebooks: every ``*.ipynb`` in ``folder`` (default: the repository's ``notebooks/``), sorted."""
    if folder is None:
        folder = Path(__file__).resolve().parents[2] / "notebooks"
    return sorted(p for p in Path(folder).glob("*.ipynb") if not p.name.startswith("."))


def _replace_regions(source: str, begin: str, end: str, stub: tuple[str, ...] | None, where: str) -> str:
    lines = source.splitlines()
    regions = marker_regions(source, begin, end, where)
    for first, last in reversed(regions):
        marker = lines[first]
        indent = marker[: len(marker) - len(marker.lstrip())]
        lines[first:last + 1] = [indent + text for text in stub] if stub else []
    text = "\n".join(lines)
    return text + "\n" if source.endswith("\n") and text else text


def release_notebook(notebook: Mapping[str, Any], name: str = "notebook") -> dict:
    """The student version of one solution notebook (a new ``dict``; the input is not changed).

    Args:
        notebook: the solution notebook (nbformat 4 ``dict``).
        name: how messages name it (its file name).

    Raises:
        MarkupError: the markup is malformed or the notebook has too few autograded
            exercises (see :func:`srlib.assignments.markup.check_assignment`).
    """
    check_assignment(notebook, name)
    student = copy.deepcopy(dict(notebook))
    for index, cell in enumerate(student["cells"]):
        meta = cell.get("metadata", {})
        graded = bool(meta.get("nbgrader")) and (meta["nbgrader"].get("solution") or meta["nbgrader"].get("grade"))
        where = f"{name}, {describe_cell(index, cell)}"
        source = cell_source(cell)
        if graded:
            code = cell.get("cell_type") == "code"
            source = _replace_regions(source, BEGIN_SOLUTION, END_SOLUTION, CODE_STUB if code else ANSWER_STUB, where)
            source = _replace_regions(source, BEGIN_HIDDEN_TESTS, END_HIDDEN_TESTS, None, where)
            cell["source"] = source.splitlines(keepends=True)
        if cell.get("cell_type") == "code" and (graded or REVEALS_ANSWER_TAG in meta.get("tags", [])):
            cell["outputs"] = []
            cell["execution_count"] = None
        meta.pop("execution", None)  # the solution run's timestamps
    return student


def release(notebooks: Iterable[str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """Write the student version of each notebook into ``out_dir`` under the same file name.

    Python files beside a notebook that it names (a plug-in it imports, such as
    ``topk_attention.py`` for notebook 08) are copied along. Every notebook is checked before anything is written, so a malformed one
    leaves ``out_dir`` untouched.

    Args:
        notebooks: paths of solution notebooks.
        out_dir: destination folder (created); must not be the folder of a source notebook.

    Returns:
        The paths written, notebooks first.

    Raises:
        FileNotFoundError: a notebook does not exist.
        MarkupError: a notebook has malformed markup (names the notebook and the cell).
        ValueError: ``out_dir`` is the folder of a source notebook (it would overwrite the solutions).
    """
    paths = [Path(p) for p in notebooks]
    out = Path(out_dir)
    for path in paths:
        if out.resolve() == path.resolve().parent:
            raise ValueError(f"--out {out_dir} is the folder of {path.name}: the release would overwrite "
                             "the solution; choose another folder")
    students = [(path, release_notebook(read_notebook(path), path.name)) for path in paths]
    written = [write_notebook(student, out / path.name) for path, student in students]
    for path, student in students:
        sources = "\n".join(cell_source(cell) for cell in student["cells"])
        for helper in sorted(path.resolve().parent.glob("*.py")):
            if helper.stem in sources and not (out / helper.name).exists():
                written.append(Path(shutil.copy2(helper, out / helper.name)))
    return written
