"""The grading pipeline survives hostile and broken submissions (chapter 02 as the example).

One `nbgrader autograde` batch grades, side by side:

| student              | what they handed in                                             | expected                      |
|----------------------|-----------------------------------------------------------------|-------------------------------|
| reference            | the solution                                                    | full marks                    |
| loop_in_function     | decode() loops forever when called                              | decode 0, the rest full       |
| loop_at_top_level    | a top-level `while True` in the decode cell                     | full marks (the loop is dropped) |
| deleted_test_cells   | the solution, with merge's test cells deleted                    | full marks (cells restored)   |
| edited_test_cells    | a buggy merge, with merge's test cells edited to print "ok"      | merge 0 (cells restored)      |
| syntax_error         | the solution with a syntax error in the decode cell             | decode 0, the rest full       |

Each row is graded independently: nothing one student does changes another's score.

A second batch (`test_hostile_submissions_fail_only_their_cells`, through `python -m instructor
autograde`) tries every case in `HOSTILE`, all in the decode cell: replacing the checks or
`llm_course.grading.fail`/`call`, rebinding `checks`, patching the reference implementation,
calling the reference, `SystemExit`, `os._exit`, SIGKILL to itself (in the function and at the
top level of a cell), a 16 GiB allocation, and 3 MB of output (in the function, and at the top
level of a cell that has no points). What each one costs is listed next to it; the defence is
described in instructor/preprocessors.py.
"""

from __future__ import annotations

import re

import nbformat
import pytest

from instructor.harness import Course, grade_id, graded_cells, solution_sources, with_cells
from tests.mutants.tokenization import MUTANTS

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
    # Grading runs only the definitions of a solution cell: the top-level loop is dropped (and listed).
    assert results["loop_at_top_level"].total == results["loop_at_top_level"].total_max
    for student in ("loop_in_function", "syntax_error"):
        result = results[student]
        assert points(result, "decode") == 0, student
        for fn in FUNCTIONS[:-1]:
            assert points(result, fn) == max_points(fn), f"{student}: {fn} should be unaffected"
    assert points(results["edited_test_cells"], "merge") == 0
    assert points(results["edited_test_cells"], "get_pair_counts") == max_points("get_pair_counts")
    assert points(results["edited_test_cells"], "decode") == max_points("decode")

    looped = nbformat.read(tmp_path / "autograded" / "loop_at_top_level" / CHAPTER / f"{CHAPTER}.ipynb", as_version=4)
    cell = next(c for c in looped.cells if grade_id(c) == "decode")
    assert cell.source.startswith("while True:"), "the graded notebook shows the cell as handed in"
    assert "line 1: while True:" in "".join(o.get("text", "") for o in cell.outputs), "and says what was not run"

    # The autograded copy of the edited notebook runs the original checks, not the student's edits.
    graded = nbformat.read(
        tmp_path / "autograded" / "edited_test_cells" / CHAPTER / f"{CHAPTER}.ipynb", as_version=4
    )
    sources = {grade_id(c): c.source for c in graded.cells}
    assert "check_merge(merge)" in sources["test_merge"]


# --------------------------------------------------------------------------- integrity
#: Every hostile case tried, all in the decode cell of chapter 02 (no other function calls
#: decode, so the rest of each notebook must keep full marks), and what grading makes of it.
HOSTILE = {
    "patch_checks": (  # replaces the check it is graded by, and the helpers every check uses (+ a planted bug)
        None,
        "decode fails: the test cells use the checks loaded before any student code",
    ),
    "rebind_checks": (
        "class _Anything:\n    def __getattr__(self, name):\n        return lambda *a, **k: None\nchecks = _Anything()\n",
        "decode fails: the name `checks` is rebound for each test cell",
    ),
    "patch_reference": (
        "import llm_course.bpe\n" + "{bug}" + "\nllm_course.bpe.decode = decode\n",
        "decode fails: the checks compare with their own copy of the reference",
    ),
    "calls_reference": (
        "from llm_course.bpe import decode\n",
        "decode fails: forbid_reference, through real grading",
    ),
    "system_exit": ("def decode(ids, merges):\n    raise SystemExit(0)\n", "decode fails"),
    "os_exit": ("import os\ndef decode(ids, merges):\n    os._exit(1)\n", "decode fails (os._exit is refused)"),
    "kill_self": (
        "import os, signal\ndef decode(ids, merges):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
        "decode fails (os.kill is refused)",
    ),
    "kill_at_top_level": ("import os\nos._exit(1)\n", "decode fails (the call is dropped: no decode is defined)"),
    "memory_hog": ("def decode(ids, merges):\n    return bytearray(16 * 2**30)\n", "decode fails (MemoryError)"),
    "print_flood_in_function": (
        "{solution}\n_flood = [True]\n_decode = decode\n"
        "def decode(ids, merges):\n    if _flood:\n        _flood.pop()\n        print('x' * 3_000_000)\n"
        "    return _decode(ids, merges)\n",
        "the visible decode test fails (output limit), the hidden one passes",
    ),
    "print_flood_at_top_level": (
        "print('y' * 3_000_000)\n{solution}",
        "full marks: the solution cell's output is cut, it has no points",
    ),
}


def hostile_source(case: str) -> str:
    solution = solution_sources(CHAPTER)["decode"]
    bug = next(iter(MUTANTS["decode"].values()))
    source = HOSTILE[case][0]
    if source is None:  # patch_checks with whichever planted bug comes first
        source = (
            "import llm_course.grading as g\ng.fail = lambda *a, **k: None\ng.call = lambda f, *a, **k: f(*a, **k)\n"
            "checks.check_decode = lambda *a, **k: print('all good')\n" + bug
        )
    return source.replace("{solution}", solution).replace("{bug}", bug)


@pytest.mark.slow
def test_hostile_submissions_fail_only_their_cells(tmp_path):
    """One batch through `python -m instructor autograde`: every case in HOSTILE, plus the reference.

    Also checks what the command writes: nbgrader's gradebook CSV, the report, and
    feedback that loads no script from the network.
    """
    from instructor.course import autograde, release

    course = Course(tmp_path / "course", CHAPTER)
    release(course.path, [CHAPTER])
    exercise = course.student_notebook()
    solution = solution_sources(CHAPTER)
    collected = tmp_path / "collected"
    name = f"{CHAPTER}.ipynb"
    for student, cells in [("reference", solution)] + [
        (case, {**solution, "decode": hostile_source(case)}) for case in HOSTILE
    ]:
        (collected / student / CHAPTER).mkdir(parents=True)
        nbformat.write(with_cells(exercise, cells), collected / student / CHAPTER / name)

    timings = autograde(course.path, collected, assignments=[CHAPTER])
    assert all(job["ok"] for job in timings["jobs"]), timings["jobs"]
    results = course.results()
    assert set(results) == {"reference", *HOSTILE}
    full = {fn: max_points(fn) for fn in FUNCTIONS}
    assert results["reference"].total == results["reference"].total_max
    for case in HOSTILE:
        result = results[case]
        for fn in FUNCTIONS[:-1]:
            assert points(result, fn) == full[fn], f"{case}: {fn} should be unaffected ({result.score})"
        if case == "print_flood_at_top_level":
            assert points(result, "decode") == full["decode"], case
        elif case == "print_flood_in_function":
            assert result.score["test_decode"] == 0 and result.score["test_decode_hidden"] > 0, result.score
        else:
            assert points(result, "decode") == 0, f"{case} ({HOSTILE[case][1]}): {result.score}"

    # What the students and the instructor see.
    graded = nbformat.read(tmp_path / "course" / "autograded" / "os_exit" / CHAPTER / name, as_version=4)
    errors = {grade_id(c): [o.ename for o in c.outputs if o.output_type == "error"] for c in graded.cells if c.cell_type == "code"}
    assert errors["test_decode"] == ["CheckFailed"]  # os._exit is refused before it runs (grading/watch.py)
    message = next(o.evalue for c in graded.cells if grade_id(c) == "test_decode" for o in c.outputs if o.output_type == "error")
    assert "os._exit" in message and "may not use" in message
    assert not any("_llm_course" in c.source for c in graded.cells), "the grading guard must not show in the graded notebook"
    flood = nbformat.read(tmp_path / "course" / "autograded" / "print_flood_in_function" / CHAPTER / name, as_version=4)
    cell = next(c for c in flood.cells if grade_id(c) == "test_decode")
    assert sum(len(o.get("text", "")) for o in cell.outputs) < 20_000
    assert "OutputLimitExceeded" in [o.get("ename") for o in cell.outputs]

    report = tmp_path / "course" / "report"
    assert (report / "grades.csv").read_text().count("\n") >= len(HOSTILE) + 1
    assert (report / "scores.png").stat().st_size > 1000
    text = (report / "report.md").read_text()
    assert "may not use" in text and "reference implementation" in text
    for case in ("patch_checks", "patch_reference", "os_exit", "kill_self"):
        assert f"- {case} / {CHAPTER}" in text, f"{case} should be listed for a human to read"
    pages = list((tmp_path / "course" / "feedback").glob(f"*/{CHAPTER}/*.html"))
    assert len(pages) == len(HOSTILE) + 1
    for page in pages:
        html = page.read_text()
        assert not re.search(r'<script[^>]*src="(https?:)?//', html), f"{page} loads a script from the network"
