"""Tests of the graders, for every chapter in tests/chapters.py.

Fast tests run each notebook's cells in this process (reference passes every
check; each planted bug fails a check of its function). The slow tests run the
real thing: `nbgrader generate_assignment` must reproduce the committed
exercises, and one `nbgrader autograde` batch must give the reference full marks,
the untouched exercise zero, and every planted bug fewer points than the maximum
for its function.
"""

from __future__ import annotations

import contextlib
import io
import json
import re

import nbformat
import pytest

from llm_course.grading import TimeLimitExceeded, time_limit
from tests.chapters import CHAPTERS, REGISTERED, mutants
from tests.nbgrader_harness import (
    ROOT,
    SOLUTION_MARKERS,
    Course,
    grade_id,
    graded_cells,
    notebook_path,
    solution_sources,
    with_cells,
)

CELL_TIME_LIMIT = 60  # like nbgrader's Execute.timeout in nbgrader_config.py
HIDDEN_MARKERS = re.compile(r"^[ \t]*### (BEGIN|END) HIDDEN TESTS[ \t]*\n?", re.MULTILINE)
MUTANT_CASES = [(ch, fn, bug) for ch in CHAPTERS for fn, bugs in mutants(ch).items() for bug in bugs]


def function_points(chapter: str, fn: str) -> float:
    cells = graded_cells(chapter)
    return cells[f"test_{fn}"] + cells[f"test_{fn}_hidden"]


def run_in_process(
    chapter: str, replacements: dict[str, str] | None = None, stop_after: str | None = None
) -> dict[str, str | None]:
    """Execute a chapter's source notebook here; return grade cell id -> error message (None if it passed).

    Cells named in `replacements` get that source instead; execution ends after the
    cell `stop_after`, if given.
    """
    replacements = replacements or {}
    nb = nbformat.read(notebook_path(ROOT / "solutions", chapter), as_version=4)
    namespace: dict = {"__name__": "__main__"}
    outcome: dict[str, str | None] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        info = cell.metadata.get("nbgrader", {})
        source = replacements.get(grade_id(cell), cell.source)
        source = HIDDEN_MARKERS.sub("", SOLUTION_MARKERS.sub("", source))
        error = None
        try:
            with contextlib.redirect_stdout(io.StringIO()), time_limit(CELL_TIME_LIMIT):
                exec(compile(source, f"<{grade_id(cell)}>", "exec"), namespace)
        except (Exception, TimeLimitExceeded) as err:  # noqa: BLE001 - a failing cell is an outcome
            error = f"{type(err).__name__}: {err}"
        if info.get("grade"):
            outcome[grade_id(cell)] = error
        if grade_id(cell) == stop_after:
            break
    return outcome


def test_every_solution_folder_is_registered():
    folders = {p.name for p in (ROOT / "solutions").iterdir() if p.is_dir()}
    assert folders <= set(REGISTERED), f"add {sorted(folders - set(REGISTERED))} to tests/chapters.py"
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
    course.submit("reference", with_cells(exercise, solution_sources(chapter)))
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
    assert full.total == full.total_max > 0, f"reference lost points: {full.score}"
    assert results["untouched"].total == 0, f"untouched exercise earned points: {results['untouched'].score}"
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
