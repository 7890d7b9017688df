"""The grading pipeline survives hostile and broken submissions (chapter 02 as the example).

One `nbgrader autograde` batch grades, side by side:

| student              | what they handed in                                             | expected                      |
|----------------------|-----------------------------------------------------------------|-------------------------------|
| reference            | the solution                                                    | full marks                    |
| loop_in_function     | decode() loops forever when called                              | decode 0, the rest full       |
| loop_at_top_level    | the decode cell itself never finishes (nbgrader's cell timeout) | decode 0, the rest full       |
| deleted_test_cells   | the solution, with merge's test cells deleted                    | full marks (cells restored)   |
| edited_test_cells    | a buggy merge, with merge's test cells edited to print "ok"      | merge 0 (cells restored)      |
| syntax_error         | the solution with a syntax error in the decode cell             | decode 0, the rest full       |

Each row is graded independently: nothing one student does changes another's score.
"""

from __future__ import annotations

import nbformat
import pytest

from tests.mutants.tokenization import MUTANTS
from tests.nbgrader_harness import Course, grade_id, graded_cells, solution_sources, with_cells

CHAPTER = "02_tokenization"
FUNCTIONS = ["get_pair_counts", "merge", "train", "encode", "decode"]


def points(result, fn):
    return result.score[f"test_{fn}"] + result.score[f"test_{fn}_hidden"]


def max_points(fn):
    cells = graded_cells(CHAPTER)
    return cells[f"test_{fn}"] + cells[f"test_{fn}_hidden"]


@pytest.mark.slow
def test_hostile_and_broken_submissions_in_one_batch(tmp_path):
    course = Course(tmp_path, CHAPTER)
    course.generate()
    exercise = course.student_notebook()
    solution = solution_sources(CHAPTER)

    course.submit("reference", with_cells(exercise, solution))
    course.submit(
        "loop_in_function",
        with_cells(exercise, {**solution, "decode": "def decode(ids, merges):\n    while True:\n        pass\n"}),
    )
    course.submit(
        "loop_at_top_level",
        with_cells(exercise, {**solution, "decode": "while True:\n    pass\n" + solution["decode"]}),
    )
    deleted = with_cells(exercise, solution)
    deleted.cells = [c for c in deleted.cells if grade_id(c) not in {"test_merge", "test_merge_hidden"}]
    course.submit("deleted_test_cells", deleted)
    edited = with_cells(
        exercise,
        {
            **solution,
            "merge": MUTANTS["merge"]["drops_last_id"],
            "test_merge": 'print("ok")',
            "test_merge_hidden": 'print("ok")',
        },
    )
    course.submit("edited_test_cells", edited)
    course.submit(
        "syntax_error", with_cells(exercise, {**solution, "decode": "def decode(ids, merges)\n    return ''\n"})
    )

    # A short cell timeout keeps the test quick; every honest cell here takes well under a second.
    course.autograde("--Execute.timeout=15")
    results = course.results()
    assert set(results) == {
        "reference",
        "loop_in_function",
        "loop_at_top_level",
        "deleted_test_cells",
        "edited_test_cells",
        "syntax_error",
    }
    every_cell = set(graded_cells(CHAPTER))
    for student, result in results.items():
        assert set(result.score) == every_cell, f"{student}: the gradebook is missing cells"

    assert results["reference"].total == results["reference"].total_max
    assert results["deleted_test_cells"].total == results["deleted_test_cells"].total_max
    for student in ("loop_in_function", "loop_at_top_level", "syntax_error"):
        result = results[student]
        assert points(result, "decode") == 0, student
        for fn in FUNCTIONS[:-1]:
            assert points(result, fn) == max_points(fn), f"{student}: {fn} should be unaffected"
    assert points(results["edited_test_cells"], "merge") == 0
    assert points(results["edited_test_cells"], "get_pair_counts") == max_points("get_pair_counts")
    assert points(results["edited_test_cells"], "decode") == max_points("decode")

    # The autograded copy of the edited notebook runs the original checks, not the student's edits.
    graded = nbformat.read(
        tmp_path / "autograded" / "edited_test_cells" / CHAPTER / f"{CHAPTER}.ipynb", as_version=4
    )
    sources = {grade_id(c): c.source for c in graded.cells}
    assert "check_merge(merge)" in sources["test_merge"]
