"""A reduced simulated class, graded end to end by `python -m instructor autograde`.

`instructor/simulate_class.py` builds a class of simulated students (the reference
solution, planted bugs from tests/mutants/, untouched exercises, missing and hostile
submissions, the attacks of issue 13, independent solutions and a disguised copy of
one), computes every test cell's expected score by running the instructor notebook
in-process, grades the class with nbgrader, and compares every cell's score. The
grade report's similarity section must list the copy and nothing else of the
independent student's work.
The full class (30 students, every assignment) is a benchmark run by hand
(`python -m instructor.simulate_class --students 30`); this test grades a few
students on a few assignments: set LLM_COURSE_CLASS_STUDENTS and
LLM_COURSE_CLASS_ASSIGNMENTS (comma-separated) for another size.

Also here: `nbgrader validate` on a correct and an empty submission, and the
offline MathJax of the feedback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import nbformat
import pytest

from instructor.harness import Course, solution_sources, with_cells, written_answers
from instructor.simulate_class import simulate

# Five: s00 right, s01 independent solutions, s02 a copy of one, s03 and s04 the attacks of issue 13.
STUDENTS = int(os.environ.get("LLM_COURSE_CLASS_STUDENTS", "5"))
ASSIGNMENTS = os.environ.get("LLM_COURSE_CLASS_ASSIGNMENTS", "01_neural_networks,07_scaling_laws").split(",")


@pytest.mark.slow
def test_reduced_class_every_score_as_expected(tmp_path):
    result = simulate(STUDENTS, ASSIGNMENTS, folder=tmp_path, seed=1)
    assert result["notebooks"] >= STUDENTS  # most students hand in most assignments
    assert not result["ungraded"], result["ungraded"]
    assert not result["mismatches"], "\n".join(result["mismatches"])
    if STUDENTS >= 5:
        assert {"cheats", "independent", "copy"} <= set(result["kinds"])
        assert result["copies_planted"], "s02 should copy one of s01's functions"
    assert not result["copies_missed"], result["copies_missed"]
    assert not result["honest_work_listed"], result["honest_work_listed"]

    course = tmp_path / "course"
    report = course / "report"
    csv = (report / "grades.csv").read_text().splitlines()
    assert csv[0].startswith("assignment,") and len(csv) == 1 + STUDENTS * len(ASSIGNMENTS)
    assert (report / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Most common failures" in (report / "report.md").read_text()
    assert "## Similar code (possible copies)" in (report / "report.md").read_text()
    timings = json.loads((report / "timings.json").read_text())
    assert timings["per_notebook_median_s"] == result["per_notebook_median_s"] > 0

    # Feedback: math rendered by the local MathJax, inlined (feedback files travel alone).
    pages = sorted((course / "feedback").glob("*/01_neural_networks/*.html"))
    assert pages
    for page in pages:
        html = page.read_text()
        assert not re.search(r'<script[^>]*src="(https?:)?//', html), f"{page} loads a script from the network"
        assert "window.MathJax" in html and "MathJax" in html.split("window.MathJax", 1)[1][:200_000]


@pytest.mark.slow
def test_parallel_graders_on_postgres_give_the_same_scores(tmp_path):
    """Two graders at once on a private PostgreSQL gradebook (nbgrader's choice for concurrent
    access); the grades are then copied into gradebook.db, where every cell must be as expected."""
    import shutil

    pytest.importorskip("psycopg2", reason="parallel grading needs psycopg2 (requirements.txt)")
    if not all(shutil.which(tool) for tool in ("initdb", "pg_ctl", "createdb")):
        pytest.skip("PostgreSQL's server programs (initdb, pg_ctl, createdb) are not on PATH")
    result = simulate(3, ["02_tokenization"], workers=2, postgres=True, folder=tmp_path, seed=2, feedback=False)
    assert result["notebooks"] >= 2
    assert not result["ungraded"], result["ungraded"]
    assert not result["mismatches"], "\n".join(result["mismatches"])


def validate(course: Course, path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])}
    return subprocess.run(
        [sys.executable, "-m", "nbgrader", "validate", str(path)],
        cwd=course.path, capture_output=True, text=True, timeout=300, env=env,
    )


@pytest.mark.slow
def test_validate_correct_and_empty_submissions(tmp_path):
    chapter = "02_tokenization"
    course = Course(tmp_path, chapter)
    course.generate()
    exercise = course.student_notebook()
    correct, empty = tmp_path / "correct.ipynb", tmp_path / "empty.ipynb"
    # Correct code and a written answer: an empty answer fails validation ("You did not provide a response.").
    answers = {name: "An answer in my own words." for name in written_answers(chapter)}
    nbformat.write(with_cells(exercise, {**solution_sources(chapter), **answers}), correct)
    nbformat.write(exercise, empty)

    ok = validate(course, correct)
    assert ok.returncode == 0 and "Success! Your notebook passes all the tests." in ok.stdout, ok.stdout + ok.stderr

    bad = validate(course, empty)
    out = bad.stdout
    assert "VALIDATION FAILED" in out, out
    # Each failing visible test is shown with its message, which says what to do.
    for fn in solution_sources(chapter):
        assert f"checks.check_{fn}({fn})" in out, f"validate should name the failing test of {fn}"
    assert out.count("is not implemented yet") >= 5  # (validate cuts long lines)
    assert "You did not provide a response." in out  # the empty written answer
