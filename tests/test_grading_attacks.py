"""Submissions that try to game the grader lose that function's points (issue 13, items 1 and 2).

The attacks are in tests/attacks.py, by class, several variants each. In-process,
every solution-cell attack is graded with the cell filtered as grading filters it
(instructor/definitions.py) and must fail both test cells of its function; the
slow test grades all of them, top-level ones included, with real ``nbgrader
autograde`` (one batch per chapter) and reads the gradebook and the report.
"""

from __future__ import annotations

import ast
import types

import pytest

from instructor.definitions import definitions_only, is_constant
from instructor.harness import run_in_process, solution_sources
from instructor.manifest import CHAPTERS
from llm_course.grading import CheckFailed, call, watch
from tests.attacks import ALL, NEEDS_IPYTHON, TOP_LEVEL

IN_PROCESS = {name: case for name, case in ALL.items() if name not in NEEDS_IPYTHON}


def attack_source(chapter: str, fn: str, source: str) -> str:
    return source.replace("{solution}", solution_sources(chapter)[fn])


@pytest.mark.parametrize("name", sorted(IN_PROCESS))
def test_attack_loses_the_functions_points_in_process(name):
    chapter, fn, source = IN_PROCESS[name]
    kept, _ = definitions_only(attack_source(chapter, fn, source))
    outcome = run_in_process(chapter, {fn: kept}, stop_after=f"test_{fn}_hidden")
    assert outcome[f"test_{fn}"] and outcome[f"test_{fn}_hidden"], f"{name} kept points: {outcome}"


def test_reference_solutions_are_pure_definitions():
    """Grading's filter drops nothing from any reference solution cell (they keep full marks)."""
    for chapter in CHAPTERS:
        for grade_id, source in solution_sources(chapter).items():
            assert definitions_only(source)[1] == [], f"{chapter}/{grade_id}"


@pytest.mark.parametrize("name", sorted(TOP_LEVEL))
def test_top_level_code_is_dropped(name):
    chapter, fn, source = TOP_LEVEL[name]
    kept, dropped = definitions_only(attack_source(chapter, fn, source))
    assert dropped, name
    # What is left runs nothing: executing it with no IPython around raises no NameError.
    namespace: dict = {"__name__": "__main__"}
    exec(compile(kept, "<kept>", "exec"), namespace)
    assert "get_ipython" not in namespace


def test_filter_keeps_definitions_and_line_numbers():
    source = (
        "import math\nEPS = 1e-6\nprint('hi')\n"
        "def f(x, scale=2.0, *, dims: tuple = (1, 2)) -> float:\n    return x * scale\n"
        "f(3)\nclass C:\n    K = 3\n    def g(self):\n        return self.K\n"
    )
    kept, dropped = definitions_only(source)
    assert [d.split(":")[0] for d in dropped] == ["line 3", "line 6"]
    assert kept.splitlines()[3].startswith("def f") and kept.splitlines()[2] == ""
    for bad in ["x = compute()", "def f(x=g()): pass", "@decorate\ndef f(): pass", "class C(Base, metaclass=M): pass",
                "class C:\n    def __init_subclass__(cls): pass", "class C:\n    def __del__(self): pass",
                "if True:\n    import os", "from . import x", "obj.attr = 1"]:
        assert definitions_only(bad)[1], bad


def test_constant_expressions():
    constant = ["1", "-1.5", "(1, 'a')", "torch.float32", "{'a': [1, 2]}", "2 ** 10", "x[1:2]"]
    computed = ["f()", "[i for i in x]", "lambda: 0", "a if b else c", "(yield)"]
    for text in constant:
        assert is_constant(ast.parse(text, mode="eval").body), text
    for text in computed:
        assert not is_constant(ast.parse(text.replace("(yield)", "y"), mode="eval").body) or text == "(yield)", text


# --------------------------------------------------------------------------- the watch itself
def test_fingerprint_matches_copies_not_lookalikes():
    import inspect

    from llm_course import bpe

    scope: dict = {}
    exec(inspect.getsource(bpe.merge).replace("ids", "xs"), scope)  # a copy with renamed locals
    assert watch.fingerprint(scope["merge"].__code__) == watch.fingerprint(bpe.merge.__code__)
    assert watch.fingerprint(bpe.get_pair_counts.__code__) != watch.fingerprint(bpe.merge.__code__)


def test_route_names_the_helper():
    from llm_course import bpe

    def helper(ids):
        return bpe.merge(ids, (1, 2), 9)

    def merge(ids, pair, new_id):
        return helper(ids)

    forbidden = watch.capabilities().merged(watch.Forbidden())
    forbidden.add(bpe.merge, "reference")
    guard = watch.Watch(merge, forbidden)
    with pytest.raises(watch.ForbiddenCall):
        guard.run([1, 2], (1, 2), 9)
    assert "merge -> helper -> llm_course.bpe.merge" in guard.message()


def test_allowed_building_blocks_pass():
    import torch

    def attention(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v

    q = torch.randn(2, 3, 4)
    assert call(attention, q, q, q).shape == (2, 3, 4)


def test_state_is_restored_after_a_call():
    import builtins
    import math

    def sneaky(x):
        math.sqrt = lambda v: 0.0
        builtins.len = lambda v: 0
        return x

    original_sqrt, original_len = math.sqrt, len
    with pytest.raises(CheckFailed, match="changed module"):
        call(sneaky, 1)
    assert math.sqrt is original_sqrt and builtins.len is original_len


@pytest.mark.parametrize("value", [types.SimpleNamespace(), iter([1]), map(abs, [1])])
def test_results_must_be_plain_data(value):
    with pytest.raises(CheckFailed, match="return plain values"):
        call(lambda: value)


def test_plain_results_pass():
    import torch

    result = call(lambda: {"a": [1, 2.0, (3, "x")], "t": torch.zeros(2), "n": None})
    assert result["a"][2] == (3, "x")


# --------------------------------------------------------------------------- real nbgrader
@pytest.mark.slow
def test_every_attack_loses_its_points_under_nbgrader(tmp_path):
    """One `python -m instructor autograde` run grades every chapter 02 attack (top-level ones too) and the reference."""
    import shutil

    import nbformat

    from instructor.course import autograde, release
    from instructor.harness import ROOT, Course, graded_cells, with_cells

    # Chapter 02's kernels need no torch: every attack on it, in one batch (the others run in-process).
    chapters = ["02_tokenization"]
    attacked = {name: case for name, case in ALL.items() if case[0] in chapters}
    course = Course(tmp_path / "course", chapters[0])
    for chapter in chapters[1:]:
        shutil.copytree(ROOT / "solutions" / chapter, course.path / "solutions" / chapter)
    release(course.path, chapters)
    collected = tmp_path / "collected"
    for chapter in chapters:
        course.chapter = chapter
        exercise, solution = course.student_notebook(), solution_sources(chapter)
        attacks = {name: (fn, source) for name, (ch, fn, source) in attacked.items() if ch == chapter}
        for student, cells in [("reference", solution)] + [
            (name, {**solution, fn: attack_source(chapter, fn, source)}) for name, (fn, source) in attacks.items()
        ]:
            folder = collected / student / chapter
            folder.mkdir(parents=True)
            nbformat.write(with_cells(exercise, cells), folder / f"{chapter}.ipynb")

    timings = autograde(course.path, collected, assignments=chapters)
    assert all(job["ok"] for job in timings["jobs"]), timings["jobs"]
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course.path / 'gradebook.db'}") as gb:
        for chapter in chapters:
            cells = graded_cells(chapter)
            for submission in gb.find_assignment(chapter).submissions:
                # Autograded cells; the written answers (Markdown, left empty here) wait for a person.
                score = {g.name: float(g.score) for nb in submission.notebooks for g in nb.grades if g.cell.cell_type == "code"}
                student = submission.student.id
                if student == "reference":
                    assert score == cells, f"{chapter}: the reference lost points {score}"
                    continue
                _, fn, _ = ALL[student]
                earned = score[f"test_{fn}"] + score[f"test_{fn}_hidden"]
                assert earned == 0, f"{student} ({chapter}) earned {earned} points for {fn}"
                # An attack that wraps the solution of a function no other one calls costs nothing else.
                if "{solution}" in ALL[student][2] and fn in ("encode", "decode"):
                    others = {k: v for k, v in score.items() if not k.startswith(f"test_{fn}")}
                    assert others == {k: v for k, v in cells.items() if k in others}, f"{student}: other functions lost points"

    report = (course.path / "report" / "report.md").read_text()
    for name in attacked:
        assert f"- {name} / " in report, f"the report does not list {name}"
    graded = nbformat.read(course.path / "autograded" / "input_transformer" / "02_tokenization" / "02_tokenization.ipynb", as_version=4)
    cell = next(c for c in graded.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "merge")
    assert "input_transformers_cleanup" in cell.source, "the graded notebook shows the cell as handed in"
    assert any("Grading ran only the definitions" in o.get("text", "") for o in cell.outputs)
