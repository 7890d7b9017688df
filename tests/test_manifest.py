"""The course manifest (course.toml, read by instructor/manifest.py): its format and the repository agree."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module

import pytest
import yaml

from instructor import manifest
from instructor.manifest import CHAPTERS, REGISTERED, ROOT, ManifestError, parse

GOOD = '[[chapters]]\nid = "05_transformer"\nchecks = "llm_course.grading.transformer"\nmutants = "tests.mutants.transformer"\n'


def toc_files() -> list[str]:
    """The toc's files in reading order, a chapter's sub-pages (`sections:`) right after it."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [e["file"] for part in toc["parts"] for c in part["chapters"] for e in [c, *c.get("sections", [])]]


def test_parse_reads_every_field_in_order():
    second = GOOD.replace("05_transformer", "06_pretraining").replace("transformer\"", "pretraining\"")
    chapters = parse(GOOD + second)
    assert [c.id for c in chapters] == ["05_transformer", "06_pretraining"]
    assert chapters[1].checks == "llm_course.grading.pretraining"
    assert chapters[1].mutants == "tests.mutants.pretraining"
    assert chapters[0].page == ROOT / "book" / "05_transformer.md"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no chapters"),
        ("[[chapters]]\nid = \"05_transformer\"\n", "lacks checks, mutants"),
        (GOOD + 'title = "x"\n', "unknown fields title"),
        (GOOD.replace("05_transformer", "transformer"), "two digits"),
        (GOOD + GOOD, "listed twice"),
        (GOOD.replace('"tests.mutants.transformer"', "3"), "must be strings"),
        ("[[chapters]\n", "course.toml"),
    ],
)
def test_malformed_manifest_says_what_is_wrong(text, message):
    with pytest.raises(ManifestError, match=message):
        parse(text)


def test_a_chapter_without_notebook_is_registered_not_graded():
    (chapter,) = parse(GOOD.replace("05_transformer", "99_not_written"))
    assert not chapter.graded
    (chapter,) = parse(GOOD.replace("tests.mutants.transformer", "tests.mutants.no_such_module"))
    assert not chapter.graded
    assert parse(GOOD)[0].graded


def test_every_graded_chapter_has_its_files():
    """What README.md's "Adding a chapter" lists, for every chapter the grader tests run over."""
    toc = toc_files()
    assert CHAPTERS, "no graded chapter: course.toml or solutions/ is broken"
    for chapter in map(manifest.chapter, CHAPTERS):
        assert chapter.page.exists(), f"{chapter.page} is missing"
        assert f"book/{chapter.id}" in toc, f"book/{chapter.id} is not in _toc.yml"
        assert (chapter.solutions / f"{chapter.id}.ipynb").exists(), f"solutions/{chapter.id}/{chapter.id}.ipynb is missing"
        assert (chapter.exercises / f"{chapter.id}.ipynb").exists(), f"exercises/{chapter.id} is missing: make exercises"
        import_module(chapter.checks)  # the checks module imports
        assert import_module(chapter.mutants).MUTANTS


def test_manifest_lists_chapters_in_reading_order():
    order = [f for f in toc_files() if f.removeprefix("book/") in REGISTERED]
    assert order == [f"book/{c}" for c in REGISTERED if f"book/{c}" in order]


def test_command_line_prints_the_chapters_for_the_makefile():
    out = subprocess.run([sys.executable, "-m", "instructor.manifest"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == list(CHAPTERS)
    out = subprocess.run([sys.executable, "-m", "instructor.manifest", "--all"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == list(REGISTERED)


def test_unknown_chapter_names_the_registered_ones():
    with pytest.raises(KeyError, match="01_neural_networks"):
        manifest.chapter("00_nothing")
    with pytest.raises(KeyError, match="not a graded chapter"):
        manifest.mutants("00_nothing")
