"""Classroom assignments: the markup tools, and every course notebook's exercises proven.

For every notebook in ``notebooks/``: the markup is well formed, there are at least three
autograded exercises, every autograded test FAILS on the student release and PASSES on the
solution (docs/teaching.md, "What CI proves").
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
import subprocess
import sys

import pytest

from srlib.assignments import (
    MarkupError,
    called_names,
    check_assignment,
    course_notebooks,
    graded_cells,
    read_notebook,
    refuse_calls,
    release,
    release_notebook,
    write_notebook,
)
from srlib.assignments.checks import ForbiddenCallError
from srlib.assignments.grade import format_report, grade_notebook

NOTEBOOKS = course_notebooks()


# --------------------------------------------------------------------------- a toy assignment

def _cell(kind, source, nbgrader=None, tags=None, outputs=None):
    cell = {"cell_type": kind, "metadata": {}, "source": source}
    if nbgrader is not None:
        cell["metadata"]["nbgrader"] = {"schema_version": 3, "locked": False, **nbgrader}
    if tags:
        cell["metadata"]["tags"] = tags
    if kind == "code":
        cell["outputs"] = outputs or []
        cell["execution_count"] = 1 if outputs else None
    return cell


def _answer(grade_id, source):
    return _cell("code", source, {"grade_id": grade_id, "solution": True, "grade": False})


def _test(grade_id, source, points=2):
    return _cell("code", source, {"grade_id": grade_id, "solution": False, "grade": True, "locked": True,
                                  "points": points})


def _notebook(cells):
    return {"nbformat": 4, "nbformat_minor": 5, "cells": cells,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}


PRINTED = [{"output_type": "stream", "name": "stdout", "text": "42\n"}]


def toy_assignment(extra_test=None):
    """Three autograded exercises (implement, predict, implement), a written answer, a revealing cell."""
    cells = [
        _cell("markdown", "# Toy\n"),
        _answer("ex1_square", "def square(x):\n    '''x squared.'''\n    ### BEGIN SOLUTION\n    return x * x\n"
                              "    ### END SOLUTION\n"),
        _test("ex1_square_tests", '"""Checks square on two numbers."""\nassert square(3) == 9, f"expected 9, got '
                                  '{square(3)}"\n### BEGIN HIDDEN TESTS\nassert square(-2) == 4\n### END HIDDEN TESTS\n',
              points=3),
        _answer("ex2_prediction", "### BEGIN SOLUTION\npredicted = 42\n### END SOLUTION\n"),
        _cell("code", "print(6 * 7)\n", tags=["reveals-answer"], outputs=PRINTED),
        _test("ex2_prediction_tests", '"""Checks the prediction."""\nassert predicted == 6 * 7, "expected 42"\n'),
        _cell("code", "print('context')\n", outputs=PRINTED),
        _answer("ex3_double", "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n"),
        _test("ex3_double_tests", '"""Checks double."""\nassert double(4) == 8, f"expected 8, got {double(4)}"\n'),
        _cell("markdown", "### BEGIN SOLUTION\nBecause.\n\n*Rubric.* 2 points.\n### END SOLUTION\n",
              {"grade_id": "ex4_explain", "solution": True, "grade": True, "points": 2}),
        _cell("code", "raise RuntimeError('after the last graded cell: never run by the grader')\n"),
    ]
    if extra_test is not None:
        cells.insert(-1, extra_test)
    return _notebook(cells)


# --------------------------------------------------------------------------- markup

def test_graded_cells_of_the_toy():
    cells = graded_cells(toy_assignment())
    assert [(c.grade_id, c.role, c.points) for c in cells] == [
        ("ex1_square", "answer", 0.0), ("ex1_square_tests", "test", 3.0), ("ex2_prediction", "answer", 0.0),
        ("ex2_prediction_tests", "test", 2.0), ("ex3_double", "answer", 0.0), ("ex3_double_tests", "test", 2.0),
        ("ex4_explain", "written", 2.0)]


@pytest.mark.parametrize("break_it, message", [
    (lambda nb: nb["cells"][1]["metadata"].clear(), "in a cell without nbgrader metadata"),
    (lambda nb: nb["cells"][1].update(source="def f():\n    ### BEGIN SOLUTION\n    return 1\n"), "never closed"),
    (lambda nb: nb["cells"][1].update(source="### END SOLUTION\n"), "without a '### BEGIN SOLUTION'"),
    (lambda nb: nb["cells"][1].update(source="### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n"),
     "inside the region"),
    (lambda nb: nb["cells"][2]["metadata"]["nbgrader"].update(points=0), "points > 0"),
    (lambda nb: nb["cells"][2]["metadata"]["nbgrader"].update(grade_id="ex1_square"), "is also used by cell 1"),
    (lambda nb: nb["cells"][3]["metadata"]["nbgrader"].update(schema_version=1), "schema_version"),
    (lambda nb: nb["cells"][3].update(source="predicted = 42\n"), "a solution cell without"),
    (lambda nb: nb["cells"][6].update(source="### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS\n"),
     "without nbgrader metadata"),
    (lambda nb: nb["cells"][1]["metadata"]["nbgrader"].update(grade=True, points=1), "both answer and test"),
])
def test_malformed_markup_names_the_cell(break_it, message):
    notebook = toy_assignment()
    break_it(notebook)
    with pytest.raises(MarkupError, match=message) as err:
        release_notebook(notebook, "toy.ipynb")
    assert "toy.ipynb, cell " in str(err.value)


def test_too_few_autograded_exercises():
    notebook = toy_assignment()
    del notebook["cells"][7:9]
    with pytest.raises(MarkupError, match="2 autograded exercise"):
        check_assignment(notebook, "toy.ipynb")


# --------------------------------------------------------------------------- release

def test_release_blanks_solutions_hides_tests_and_clears_revealing_outputs():
    solution = toy_assignment()
    before = json.dumps(solution)
    student = release_notebook(solution, "toy.ipynb")
    assert json.dumps(solution) == before, "release_notebook must not change its input"
    source = ["".join(cell["source"]) for cell in student["cells"]]
    assert source[1] == ("def square(x):\n    '''x squared.'''\n    # YOUR CODE HERE\n"
                         "    raise NotImplementedError()\n")
    assert source[3] == "# YOUR CODE HERE\nraise NotImplementedError()\n"
    assert "HIDDEN" not in source[2] and "square(-2)" not in source[2] and "square(3) == 9" in source[2]
    assert source[9] == "YOUR ANSWER HERE\n"
    assert student["cells"][4]["outputs"] == [], "a cell tagged reveals-answer keeps no output"
    assert student["cells"][6]["outputs"] == PRINTED, "other outputs stay"
    for before_cell, after_cell in zip(solution["cells"], student["cells"]):
        assert before_cell["metadata"].get("nbgrader") == after_cell["metadata"].get("nbgrader")


def test_release_refuses_to_overwrite_and_writes_nothing_on_bad_markup(tmp_path):
    good, bad = tmp_path / "good.ipynb", tmp_path / "bad.ipynb"
    write_notebook(toy_assignment(), good)
    broken = toy_assignment()
    broken["cells"][2]["metadata"]["nbgrader"]["points"] = -1
    write_notebook(broken, bad)
    with pytest.raises(ValueError, match="overwrite the solution"):
        release([good], tmp_path)
    out = tmp_path / "release"
    with pytest.raises(MarkupError, match="bad.ipynb, cell 2"):
        release([good, bad], out)
    assert not out.exists(), "nothing is written when one notebook is malformed"


def test_release_copies_the_python_files_beside_the_notebook(tmp_path):
    (tmp_path / "src").mkdir()
    write_notebook(toy_assignment(), tmp_path / "src" / "toy.ipynb")
    toy = toy_assignment()
    toy["cells"][6]["source"] = "import plugin\n"
    write_notebook(toy, tmp_path / "src" / "toy.ipynb")
    (tmp_path / "src" / "plugin.py").write_text("X = 1\n")
    (tmp_path / "src" / "unrelated.py").write_text("Y = 1\n")
    written = release([tmp_path / "src" / "toy.ipynb"], tmp_path / "out")
    assert sorted(p.name for p in written) == ["plugin.py", "toy.ipynb"], "only the files the notebook names"


# --------------------------------------------------------------------------- hidden-test helpers

def test_refuse_calls_catches_the_library_function_however_it_is_named():
    from srlib.metrics import psnr

    namespace = {"psnr": psnr}
    exec("def answer(a, b):\n    return psnr(a, b)\n", namespace)
    answer = namespace["answer"]
    import torch

    a = torch.zeros(1, 4, 4)
    with refuse_calls(psnr, within=answer):
        with pytest.raises(ForbiddenCallError, match="srlib.metrics.psnr"):
            answer(a, a + 1)
        import srlib.metrics

        with pytest.raises(ForbiddenCallError):
            srlib.metrics.psnr(a, a + 1)
    assert namespace["psnr"] is psnr and srlib.metrics.psnr is psnr, "restored on exit"


def test_called_names_reads_the_source():
    def answer(x):
        # psnr(x) in a comment does not count
        return x.softmax(-1) + torch_like.ssim(x)  # noqa: F821

    assert called_names(answer, "psnr", "softmax", "ssim", "unfold") == ["softmax", "ssim"]


# --------------------------------------------------------------------------- grading

def test_grade_toy_solution_release_and_a_test_that_cannot_fail(tmp_path):
    source = tmp_path / "toy.ipynb"
    write_notebook(toy_assignment(), source)
    solved = grade_notebook(source, source=source)
    assert [(e.grade_id, e.passed, e.points) for e in solved.exercises] == [
        ("ex1_square_tests", True, 3.0), ("ex2_prediction_tests", True, 2.0), ("ex3_double_tests", True, 2.0),
        ("ex4_explain", None, None)]
    assert (solved.score, solved.max_score, solved.manual_score_pending) == (7.0, 9.0, 2.0)

    release([source], tmp_path / "student")
    blank = grade_notebook(tmp_path / "student" / "toy.ipynb", source=source)
    assert blank.score == 0 and all(e.passed is False for e in blank.exercises if e.passed is not None)
    messages = {e.grade_id: e.message for e in blank.exercises}
    assert messages["ex1_square_tests"] == "NotImplementedError: " or messages["ex1_square_tests"].startswith(
        "NotImplementedError")
    assert messages["ex2_prediction_tests"].startswith("NameError")
    table = format_report(blank)
    assert "ex1_square_tests" in table and "score 0 / 9" in table

    # A student who edits a locked test cell is graded on the original.
    cheat = read_notebook(tmp_path / "student" / "toy.ipynb")
    cheat["cells"][2]["source"] = "pass\n"
    write_notebook(cheat, tmp_path / "cheat.ipynb")
    assert grade_notebook(tmp_path / "cheat.ipynb", source=source).exercises[0].passed is False

    # The check CI relies on can fail: a test that does not depend on its answer passes on the release.
    lax = toy_assignment(extra_test=_test("ex5_lax_tests", '"""Checks nothing."""\nassert 1 + 1 == 2\n'))
    write_notebook(lax, tmp_path / "lax" / "toy.ipynb")
    release([tmp_path / "lax" / "toy.ipynb"], tmp_path / "lax_student")
    lax_blank = grade_notebook(tmp_path / "lax_student" / "toy.ipynb", source=tmp_path / "lax" / "toy.ipynb")
    assert _passing_on_release(lax_blank) == ["ex5_lax_tests"]


def test_grade_runs_the_kernel_in_quick_mode_with_the_threads_asked(tmp_path):
    check = _test("ex5_environment_tests", '"""Checks the environment of the kernel."""\nimport os, torch\n'
                  'assert os.environ["SRLIB_QUICK"] == "1" and os.environ["MPLBACKEND"] == "Agg"\n'
                  'assert torch.get_num_threads() == 1, torch.get_num_threads()\n')
    write_notebook(toy_assignment(extra_test=check), tmp_path / "toy.ipynb")
    report = grade_notebook(tmp_path / "toy.ipynb", source=tmp_path / "toy.ipynb", threads=1)
    assert report.exercises[-1].grade_id == "ex5_environment_tests" and report.exercises[-1].passed, report


def test_grade_command_json_and_exit_status(tmp_path):
    source = tmp_path / "toy.ipynb"
    write_notebook(toy_assignment(), source)
    release([source], tmp_path / "student")
    out = tmp_path / "grade.json"
    done = subprocess.run([sys.executable, "-m", "srlib", "assignments", "grade", str(tmp_path / "student" / "toy.ipynb"),
                           "--source", str(source), "--json", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert set(report) >= {"score", "max_score", "exercises"} and report["score"] == 0
    assert set(report["exercises"][0]) == {"grade_id", "points", "max_points", "passed", "message"}
    (tmp_path / "notes.ipynb").write_text("not a notebook")
    bad = subprocess.run([sys.executable, "-m", "srlib", "assignments", "grade", str(tmp_path / "notes.ipynb"),
                          "--source", str(source)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "not a Jupyter notebook" in bad.stderr
    orphan = subprocess.run([sys.executable, "-m", "srlib", "assignments", "grade", str(source)],
                            capture_output=True, text=True)
    assert orphan.returncode == 2 and "--source" in orphan.stderr


# --------------------------------------------------------------------------- the course notebooks

def _passing_on_release(report):
    return [e.grade_id for e in report.exercises if e.passed]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_course_notebook_markup(notebook):
    cells = check_assignment(read_notebook(notebook), notebook.name)
    exercises = [c for c in cells if c.role != "answer"]
    top = "".join(read_notebook(notebook)["cells"][0]["source"])
    unlisted = [c.grade_id for c in exercises if c.grade_id not in top and c.grade_id.removesuffix("_tests") not in top]
    assert not unlisted, f"{notebook.name}: the top cell does not list the graded exercises {unlisted}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_course_notebook_fails_on_release_and_passes_as_solution(notebook, tmp_path):
    release([notebook], tmp_path)
    with ThreadPoolExecutor(max_workers=2) as pool:  # two kernels of one thread each share the two cores
        blank_run = pool.submit(grade_notebook, tmp_path / notebook.name, source=notebook, threads=1)
        solved_run = pool.submit(grade_notebook, notebook, source=notebook, threads=1)
        blank, solved = blank_run.result(), solved_run.result()
    assert not _passing_on_release(blank), (
        f"{notebook.name}: these tests pass on the blank student release, so they cannot tell a solved exercise "
        f"from an unsolved one: {_passing_on_release(blank)}\n{format_report(blank)}")
    failing = [f"{e.grade_id}: {e.message}" for e in solved.exercises if e.passed is False]
    assert not failing, f"{notebook.name}: the solution fails its own tests: {failing}"
    expected = {c.grade_id: c.points for c in graded_cells(read_notebook(notebook)) if c.role != "answer"}
    assert {e.grade_id: e.max_points for e in solved.exercises} == expected
    assert solved.score == sum(p for e, p in zip(solved.exercises, expected.values()) if e.passed is not None)


# --------------------------------------------------------------------------- nbgrader, when installed

def _nbgrader_verdicts(notebook, tmp_path):
    """nbgrader's Validator on the solution (failures) and on our release (passes, with invert)."""
    validator = pytest.importorskip("nbgrader.validator", reason="nbgrader is optional: pip install -e '.[teach]'")
    release([notebook], tmp_path / "student")
    saved = os.environ.get("SRLIB_QUICK")
    os.environ["SRLIB_QUICK"] = "1"
    try:
        solution = validator.Validator(ignore_checksums=True).validate(str(notebook))
        student = validator.Validator(ignore_checksums=True, invert=True).validate(
            str(tmp_path / "student" / notebook.name))
    finally:
        if saved is None:
            os.environ.pop("SRLIB_QUICK")
        else:
            os.environ["SRLIB_QUICK"] = saved
    return solution, student


def test_nbgrader_validator_agrees_on_the_toy(tmp_path):
    source = tmp_path / "toy.ipynb"
    toy = toy_assignment()
    del toy["cells"][-1]  # nbgrader runs every cell; ours stops at the last graded one
    write_notebook(toy, source)
    solution, student = _nbgrader_verdicts(source, tmp_path)
    assert solution == {}, f"nbgrader finds failures in the solution: {solution}"
    assert student == {}, f"nbgrader finds tests that pass on the release: {student}"
    ours = grade_notebook(tmp_path / "student" / "toy.ipynb", source=source)
    assert ours.score == 0 and grade_notebook(source, source=source).score == ours.max_score - 2


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_nbgrader_validator_agrees_on_the_course(notebook, tmp_path):
    pytest.importorskip("nbgrader.validator", reason="nbgrader is optional: pip install -e '.[teach]'")
    if not os.environ.get("SRLIB_NBGRADER_COURSE"):
        pytest.skip("runs every notebook twice more; set SRLIB_NBGRADER_COURSE=1 to run it")
    solution, student = _nbgrader_verdicts(notebook, tmp_path)
    assert solution == {}, f"nbgrader finds failures in the solution {notebook.name}: {solution}"
    assert student == {}, f"nbgrader finds tests that pass on the release of {notebook.name}: {student}"
