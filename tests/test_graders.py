"""Tests of the graders, for every chapter of the course manifest (course.toml).

Fast tests run each notebook's cells in this process (reference passes every
check; each planted bug fails a check of its function). The slow tests run the
real thing: `nbgrader generate_assignment` must reproduce the committed
exercises, and one `nbgrader autograde` batch must give the reference full marks,
the untouched exercise zero, and every planted bug fewer points than the maximum
for its function.

Every chapter also asks one or two written answers (Markdown cells that a person grades
in formgrader, with a rubric in the instructor's version only). Autograding leaves an
answered one to a person and gives an empty one 0: "full marks" above are the autograded
points, and the written answers are checked on their own (tests/test_formgrader.py grades
one in a browser).
"""

from __future__ import annotations

import json
import re

import nbformat
import pytest

from instructor.harness import (
    CELL_TIME_LIMIT,
    ROOT,
    Course,
    grade_id,
    graded_cells,
    notebook_path,
    run_in_process,
    solution_sources,
    with_cells,
    written_answers,
)
from instructor.manifest import CHAPTERS, REGISTERED, mutants

RUBRIC_ITEM = re.compile(r"^- \*\*(\d+(?:\.\d+)?) points?\.\*\*", re.MULTILINE)
MUTANT_CASES = [(ch, fn, bug) for ch in CHAPTERS for fn, bugs in mutants(ch).items() for bug in bugs]


def function_points(chapter: str, fn: str) -> float:
    cells = graded_cells(chapter)
    return cells[f"test_{fn}"] + cells[f"test_{fn}_hidden"]


def test_every_solution_folder_is_registered():
    folders = {p.name for p in (ROOT / "solutions").iterdir() if p.is_dir()}
    assert folders <= set(REGISTERED), f"add {sorted(folders - set(REGISTERED))} to course.toml"
    assert folders <= set(CHAPTERS), f"{sorted(folders - set(CHAPTERS))} have no planted bugs in tests/mutants/"
    for chapter in folders:
        assert (ROOT / "exercises" / chapter).is_dir(), f"exercises/{chapter} is missing: run make exercises"
        assert list((ROOT / "book").glob(f"{chapter}*.md")), f"book/{chapter}.md is missing"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_conventions(chapter):
    """Every solution cell defines the function it is named after and has a visible and a hidden test."""
    sources = solution_sources(chapter)
    cells = graded_cells(chapter)
    for fn, source in sources.items():
        assert re.search(rf"^def {fn}\(", source, re.MULTILINE), f"solution cell {fn} must define {fn}()"
        assert f"test_{fn}" in cells and f"test_{fn}_hidden" in cells, f"{fn} needs a visible and a hidden test cell"
    assert set(mutants(chapter)) == set(sources), "every graded function needs planted bugs (and only those)"
    for fn, bugs in mutants(chapter).items():
        assert len(bugs) >= 3, f"{fn} needs at least three planted bugs"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_written_answers(chapter):
    """One or two written answers, each a question (locked) followed by an answer cell whose whole
    instructor text is a rubric between solution markers; the student version has the question and
    an empty answer cell, never the rubric."""
    written = written_answers(chapter)
    assert 1 <= len(written) <= 2, f"{chapter} needs one or two written answers, has {sorted(written)}"
    source = nbformat.read(notebook_path(ROOT / "solutions", chapter), as_version=4).cells
    released = {grade_id(c): c for c in nbformat.read(notebook_path(ROOT / "exercises", chapter), as_version=4).cells}
    for i, cell in enumerate(source):
        if grade_id(cell) not in written:
            continue
        name, info = grade_id(cell), cell.metadata["nbgrader"]
        assert name.startswith("explain_") and info["solution"] and not info["locked"] and info["points"] > 0, name
        body = cell.source.strip().split("\n")
        assert body[0] == "### BEGIN SOLUTION" and body[-1] == "### END SOLUTION", f"{name}: rubric outside the markers"
        assert body[1].startswith(f"**Rubric** ({info['points']:g} points"), f"{name}: {body[1]}"
        assert sum(float(p) for p in RUBRIC_ITEM.findall(cell.source)) == info["points"], f"{name}: rubric points"
        question = source[i - 1]
        assert grade_id(question) == f"md_{name}" and question.cell_type == "markdown", name
        assert question.metadata["nbgrader"]["locked"] and not question.metadata["nbgrader"]["grade"], name
        assert f"({info['points']:g} points, a written answer)" in question.source, name
        assert released[f"md_{name}"].source == question.source
        assert released[name].source == "YOUR ANSWER HERE", f"{name}: the student version must be an empty answer"
    text = notebook_path(ROOT / "exercises", chapter).read_text()
    assert "Rubric" not in text and "full-marks answer" not in text, f"exercises/{chapter} shows a rubric"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_reference_passes_in_process(chapter):
    outcome = run_in_process(chapter)
    failed = {k: v for k, v in outcome.items() if v is not None}
    assert not failed
    assert set(outcome) == set(graded_cells(chapter))


@pytest.mark.parametrize(("chapter", "fn", "bug"), MUTANT_CASES)
def test_planted_bug_fails_a_check(chapter, fn, bug):
    outcome = run_in_process(chapter, {fn: mutants(chapter)[fn][bug]}, stop_after=f"test_{fn}_hidden")
    messages = [outcome[f"test_{fn}"], outcome[f"test_{fn}_hidden"]]
    assert any(messages), f"planted bug {bug!r} in {fn} passed every check"
    # The message must say what is wrong, not only that something is.
    first = next(m for m in messages if m)
    assert "CheckFailed" in first and len(first) > 40, first


def _normalized(path):
    return json.dumps(json.loads(path.read_text()), sort_keys=True, indent=1)


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_exercises_match_generated(chapter, tmp_path):
    course = Course(tmp_path, chapter)
    generated = course.generate()
    committed = notebook_path(ROOT / "exercises", chapter)
    assert generated.name == committed.name
    assert _normalized(generated) == _normalized(committed), (
        f"exercises/{chapter} is out of date: run `make exercises` and commit the result"
    )
    text = committed.read_text()
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_autograde_reference_untouched_and_bugs(chapter, tmp_path, request):
    course = Course(tmp_path, chapter)
    course.generate()
    exercise = course.student_notebook()
    # The reference also answers the written questions (with the rubric's model answer).
    answers = {name: "A written answer, graded by a person." for name in written_answers(chapter)}
    course.submit("reference", with_cells(exercise, {**solution_sources(chapter), **answers}))
    course.submit("untouched", exercise)
    reference = solution_sources(chapter)
    # Each notebook costs a kernel start: by default the first three bugs of each function go
    # through real nbgrader (test_planted_bug_fails_a_check runs every one in-process).
    per_function = None if request.config.getoption("--all-mutants") else 3
    cases = [
        (fn, bug) for fn, bugs in mutants(chapter).items() for bug in list(bugs)[:per_function]
    ]
    names = {}
    for i, (fn, bug) in enumerate(cases):
        student = f"bug{i:02d}"
        names[student] = (fn, bug)
        course.submit(student, with_cells(exercise, {**reference, fn: mutants(chapter)[fn][bug]}))
    course.autograde()
    results = course.results()

    assert set(results) == {"reference", "untouched", *names}
    full = results["reference"]
    # Autograded points: the reference has them all, the untouched exercise none.
    assert full.total == full.total_max > 0, f"reference lost points: {full.score}"
    assert results["untouched"].total == 0, f"untouched exercise earned points: {results['untouched'].score}"
    # Written answers: an answered one waits for a person (no score yet), an empty one gets 0 at once.
    for name, points in written_answers(chapter).items():
        answered, empty = full.written[name], results["untouched"].written[name]
        assert answered.needs_manual_grade and answered.auto_score is None and answered.manual_score is None, answered
        assert not empty.needs_manual_grade and empty.auto_score == 0, empty
        assert answered.max_score == empty.max_score == points
    assert set(full.written) == set(written_answers(chapter))
    for student, (fn, bug) in names.items():
        earned = results[student].score[f"test_{fn}"] + results[student].score[f"test_{fn}_hidden"]
        assert earned < function_points(chapter, fn), f"planted bug {bug!r} in {fn} lost no points"


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_untouched_exercise_runs_in_a_fresh_kernel(chapter):
    """What a student sees first: the released notebook runs top to bottom in a fresh kernel,
    every cell that is not a test runs cleanly, and every visible test fails with a message
    that says what to do (the stub is not implemented yet)."""
    from nbclient import NotebookClient

    path = notebook_path(ROOT / "exercises", chapter)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=CELL_TIME_LIMIT, allow_errors=True, kernel_name="python3",
        shutdown_kernel="immediate", resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        name = grade_id(cell)
        if not cell.metadata.get("nbgrader", {}).get("grade"):
            # Setup and demo cells run; a stub cell only defines the function (nothing calls it yet).
            assert not errors, f"{chapter}: cell {name} fails before the student wrote anything: {errors[0].evalue}"
        elif not name.endswith("_hidden"):
            assert errors, f"{chapter}: the visible test {name} passes on the stub"
            message = f"{errors[0].ename}: {errors[0].evalue}"
            assert errors[0].ename == "CheckFailed", f"{chapter}/{name}: {message}"
            assert "not implemented yet: replace `raise NotImplementedError()` with your code" in message, message
