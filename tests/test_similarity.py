"""Copy detection (instructor/similarity.py): planted copies are found, independent solutions are not.

The planted copies are every graded function's reference solution, disguised as a
copying student would (tests/similarity_samples.py: renamed variables, comments,
blank lines and a docstring, independent statements swapped, all of them at once),
and the reference the book prints (llm_course's own code, type hints and docstring
included). The independent solutions are two or three correct implementations of nine
exercises, each checked here by the exercise's own hidden test, written with other
algorithms than the reference's.

Measured (the figures that chose THRESHOLD = 0.9, MIN_MATCH and MIN_TOKENS): every
disguised copy scores 1.00; the most similar pair of independent correct solutions
scores 0.76 (two 5-line ppo_clip_loss sharing the textbook ratio and masked mean),
the others 0.64 or less (median 0.10, 49 pairs).
"""

from __future__ import annotations

import itertools
import json
import math
from functools import lru_cache

import nbformat
import pytest

from instructor import similarity as S
from instructor.harness import ROOT, notebook_path, solution_sources, with_cells
from instructor.manifest import CHAPTERS
from tests.similarity_samples import DISGUISES, INDEPENDENT, rename, reorder

SOLUTIONS = {chapter: solution_sources(chapter) for chapter in CHAPTERS}
OWNER = {fn: chapter for chapter in CHAPTERS for fn in SOLUTIONS[chapter]}


@lru_cache(maxsize=None)
def stub(fn: str) -> str:
    nb = nbformat.read(notebook_path(ROOT / "exercises", OWNER[fn]), as_version=4)
    return next(c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == fn)


@lru_cache(maxsize=None)
def compared(fn: str) -> bool:
    return S.similarity(SOLUTIONS[OWNER[fn]][fn], "", stub(fn)).a.tokens >= S.MIN_TOKENS


# --------------------------------------------------------------------------- the pieces
def test_normalise_drops_docstrings_comments_layout_and_statement_order():
    a = "def f(x, y):\n    '''doc'''\n    s = x + 1  # one\n\n    t = (y *\n         2)\n    return s, t\n"
    b = "def f(x, y):\n    t = y * 2\n    s = x + 1\n    return (s, t)\n"
    assert S.normalise(a)[0] == S.normalise(b)[0]
    # A statement that uses the other's result keeps its place.
    c = "def f(x):\n    s = x + 1\n    t = s * 2\n    return t\n"
    d = "def f(x):\n    t = x * 2\n    s = t + 1\n    return t\n"
    assert S.normalise(c)[0] != S.normalise(d)[0]
    # `out.append(...)` changes `out`: two appends keep their order.
    e = "def f(out):\n    out.append(1)\n    out.append(2)\n"
    assert "append(1)\n    out.append(2)" in S.normalise(e)[0]


def test_normalised_lines_map_back_to_the_original_lines():
    source = 'def f(x):\n    """Doc\n    string."""\n\n    y = (x +\n         1)  # c\n    return y\n'
    text, origin = S.normalise(source)
    assert text.splitlines() == ["def f(x):", "    y = x + 1", "    return y"]
    assert origin == ((1, 1), (5, 6), (7, 7))  # a header maps to its own line


def test_code_that_does_not_parse_is_compared_as_written():
    broken = "def merge(ids, pair, new_id):\n    out = [\n    return out\n"
    pair = S.similarity(broken, broken)
    assert pair.similarity == 1.0


def test_the_exercise_stub_is_boilerplate():
    fn = "get_pair_counts"
    given = stub(fn)
    assert S.similarity(given, given, given).similarity == 0.0  # only the signature: nothing left to match
    assert S.similarity(given, given).similarity == 1.0


def test_same_figures_in_every_run():
    """The k-gram hash must not be Python's salted hash(): the report must not move between runs."""
    import subprocess
    import sys

    code = ("from instructor.similarity import similarity; from instructor.harness import solution_sources as s;"
            "a = s('12_alignment'); print(similarity(a['ppo_clip_loss'], a['gae']).shares)")
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           env={"PYTHONHASHSEED": "1", "PATH": ""}).stdout
    here = solution_sources("12_alignment")
    assert other.strip() == str(S.similarity(here["ppo_clip_loss"], here["gae"]).shares)


# --------------------------------------------------------------------------- planted copies
@pytest.mark.parametrize("disguise", sorted(DISGUISES))
def test_every_disguised_copy_of_every_reference_is_listed(disguise):
    scores = {}
    for chapter in CHAPTERS:
        for fn, source in SOLUTIONS[chapter].items():
            if not compared(fn):
                continue
            copy = DISGUISES[disguise](source)
            pair = S.similarity(copy, source, stub(fn))
            scores[fn] = pair.similarity
            assert pair.listed, f"{disguise} copy of {fn}: similarity {pair.similarity:.2f}, {pair.matched_tokens} tokens"
    assert len(scores) >= 40  # most graded functions are long enough to compare
    assert min(scores.values()) >= S.THRESHOLD


def test_the_disguises_really_change_the_code():
    source = solution_sources("12_alignment")["gae"]
    assert rename(source) != source and "advantages" not in rename(source).split("(", 1)[1]
    assert reorder(source) not in (None, source)
    assert sorted(reorder(source).splitlines()) == sorted(source.splitlines())


def test_a_copy_of_the_code_the_book_prints_is_listed():
    """The book prints llm_course's reference (type hints, docstring): pasting it is a copy."""
    for fn in ["merge", "gae", "top_p_filter", "ppo_clip_loss", "scaled_dot_product_attention"]:
        refs = S.package_references(fn)
        assert refs, fn
        qualname, printed = refs[0]
        pasted = add_types_removed(printed)
        pair = S.similarity(rename(pasted), printed, stub(fn))
        assert pair.listed, f"{fn}: {pair.similarity:.2f}"


def add_types_removed(source: str) -> str:
    """What a student makes of the printed reference: its docstring dropped, its lines kept."""
    import ast

    tree = ast.parse(source)
    fn = tree.body[0]
    if S._is_docstring(fn.body[0]):
        lines = source.splitlines()
        del lines[fn.body[0].lineno - 1: fn.body[0].end_lineno]
        return "\n".join(lines) + "\n"
    return source


# --------------------------------------------------------------------------- independent solutions
@pytest.mark.parametrize("fn", sorted(INDEPENDENT))
def test_independent_solutions_are_correct(fn, capsys):
    """Each independent solution passes the exercise's visible and hidden tests: real answers."""
    import importlib

    import numpy as np
    import torch
    from torch.nn import functional as F

    checks = importlib.import_module(f"llm_course.grading.{OWNER[fn].split('_', 1)[1]}")
    for name, source in INDEPENDENT[fn].items():
        namespace = {"torch": torch, "math": math, "F": F, "np": np}
        exec(source, namespace)  # noqa: S102 - the samples of this test
        getattr(checks, f"check_{fn}")(namespace[fn])
        getattr(checks, f"check_{fn}")(namespace[fn], hidden=True)


def test_independent_solutions_do_not_flag_each_other_nor_the_reference():
    scores = {}
    for fn, samples in INDEPENDENT.items():
        assert compared(fn)
        versions = dict(samples)
        versions["reference (solutions)"] = SOLUTIONS[OWNER[fn]][fn]
        for qualname, source in S.package_references(fn):
            versions[qualname] = source
        for (name_a, a), (name_b, b) in itertools.combinations(versions.items(), 2):
            if name_a.startswith(("reference", "llm_course")) and name_b.startswith(("reference", "llm_course")):
                continue
            scores[(fn, name_a, name_b)] = S.similarity(a, b, stub(fn)).similarity
    assert len(scores) >= 30
    flagged = {k: round(v, 2) for k, v in scores.items() if v >= S.THRESHOLD}
    assert not flagged, flagged
    assert max(scores.values()) < S.THRESHOLD - 0.1, "the threshold should keep a margin above honest work"


# --------------------------------------------------------------------------- a class
def test_class_report_lists_copies_with_evidence(tmp_path):
    """A small course folder: two students share a disguised merge, one pastes the book's gae,
    one writes merge and gae independently: the report lists exactly the copies."""
    course = tmp_path
    pairs = {"02_tokenization": "merge", "12_alignment": "gae"}
    for chapter in pairs:
        for folder in ("solutions", "exercises"):
            (course / folder / chapter).mkdir(parents=True)
            source = notebook_path(ROOT / folder, chapter)
            (course / folder / chapter / source.name).write_bytes(source.read_bytes())
    merge_ref = solution_sources("02_tokenization")["merge"]
    mine = INDEPENDENT["merge"]["stack"]
    book_gae = S.package_references("gae")[0][1]
    submissions = {
        ("alice", "02_tokenization"): {"merge": mine},
        ("bob", "02_tokenization"): {"merge": DISGUISES["all_of_them"](mine)},
        ("carol", "02_tokenization"): {"merge": INDEPENDENT["merge"]["index_search"]},
        ("dave", "02_tokenization"): {"merge": DISGUISES["renamed"](merge_ref)},
        ("carol", "12_alignment"): {"gae": INDEPENDENT["gae"]["per_row_loop"]},
        ("erin", "12_alignment"): {"gae": rename(book_gae)},
    }
    for (student, chapter), cells in submissions.items():
        exercise = nbformat.read(notebook_path(ROOT / "exercises", chapter), as_version=4)
        dest = course / "submitted" / student / chapter
        dest.mkdir(parents=True)
        nbformat.write(with_cells(exercise, cells), dest / notebook_path(ROOT / "exercises", chapter).name)
    (course / "report").mkdir()
    lines = S.report_section(course, list(pairs), course / "report")
    data = json.loads((course / "report" / "similarity.json").read_text())
    found = {(p["function"], p["a"], p["b"].split(":")[0]) for p in data["pairs"]}
    assert found == {("merge", "alice", "bob"), ("merge", "dave", "reference"), ("gae", "erin", "reference")}, found
    text = "\n".join(lines)
    assert "| 02_tokenization | merge | alice, bob | 1.00 |" in text
    assert "| 02_tokenization | merge | reference, dave |" in text and "| 12_alignment | gae | reference, erin |" in text
    assert "carol" not in text  # honest work is not listed
    assert "### 02_tokenization / `merge`: alice and bob" in text
    # The evidence: both versions side by side, matching lines marked.
    block = text.split("alice and bob", 1)[1].split("```", 2)[1]
    assert "> def merge(" in block and "| > def merge(" in block
    bob_pair = next(p for p in data["pairs"] if p["b"] == "bob")
    assert bob_pair["similarity"] == 1.0 and len(bob_pair["lines_a"]) >= 8
