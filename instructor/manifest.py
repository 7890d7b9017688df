"""The course manifest: which chapters the course has, read from ``course.toml`` at the course root.

One list of chapters that everything walking over them reads: the grader tests (``tests/``), the
class simulator (:mod:`instructor.simulate_class`) and the Makefile (``make exercises``,
``make release``), which asks this module on the command line::

    python -m instructor.manifest            # the ids of the graded chapters, one a line
    python -m instructor.manifest --all      # every registered chapter, graded or not yet

A chapter is *registered* when the manifest lists it, and *graded* (in :data:`CHAPTERS`) once its
notebook ``solutions/<id>/`` and its planted bugs (the ``mutants`` module) both exist: a chapter being
written joins the grader tests when both are there.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "course.toml"
CHAPTER_ID = re.compile(r"^\d\d_[a-z0-9_]+$")
FIELDS = {"id", "checks", "mutants"}


class ManifestError(ValueError):
    """course.toml is malformed: a missing or unknown field, a duplicate chapter, a bad id."""


@dataclass(frozen=True)
class Chapter:
    id: str  # "05_transformer": page book/<id>.md, folders solutions/<id>/ and exercises/<id>/
    checks: str  # "llm_course.grading.transformer": what the notebook's test cells call
    mutants: str  # "tests.mutants.transformer": MUTANTS = {function: {bug: source}}

    @property
    def page(self) -> Path:
        return ROOT / "book" / f"{self.id}.md"

    @property
    def solutions(self) -> Path:
        return ROOT / "solutions" / self.id

    @property
    def exercises(self) -> Path:
        return ROOT / "exercises" / self.id

    @property
    def graded(self) -> bool:
        """The notebook and the planted bugs both exist (the grader tests run over it)."""
        if not self.solutions.is_dir():
            return False
        if str(ROOT) not in sys.path:  # the mutants live in the tests package at the course root
            sys.path.insert(0, str(ROOT))
        try:
            return find_spec(self.mutants) is not None
        except ModuleNotFoundError:  # a parent package (tests.mutants) is missing
            return False


def parse(text: str, source: str = "course.toml") -> list[Chapter]:
    """The chapters a manifest's text lists, in its order; ManifestError says what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ManifestError(f"{source}: {err}") from None
    entries = data.get("chapters")
    if not isinstance(entries, list) or not entries:
        raise ManifestError(f"{source}: no chapters; list each one as a [[chapters]] table with id, checks, mutants")
    chapters: list[Chapter] = []
    for i, entry in enumerate(entries, 1):
        where = f"{source}: chapter {i} ({entry.get('id', 'no id')})"
        if missing := FIELDS - set(entry):
            raise ManifestError(f"{where} lacks {', '.join(sorted(missing))}")
        if unknown := set(entry) - FIELDS:
            raise ManifestError(f"{where} has unknown fields {', '.join(sorted(unknown))} (known: {', '.join(sorted(FIELDS))})")
        if not all(isinstance(entry[k], str) for k in FIELDS):
            raise ManifestError(f"{where}: id, checks and mutants must be strings")
        if not CHAPTER_ID.match(entry["id"]):
            raise ManifestError(f"{where}: an id is two digits, an underscore and a lowercase name, e.g. 05_transformer")
        if any(c.id == entry["id"] for c in chapters):
            raise ManifestError(f"{where}: {entry['id']} is listed twice")
        chapters.append(Chapter(entry["id"], entry["checks"], entry["mutants"]))
    return chapters


@cache
def load(path: Path = MANIFEST) -> tuple[Chapter, ...]:
    """Every chapter course.toml registers, in reading order."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path} is missing: the course manifest lists the chapters")
    return tuple(parse(path.read_text(), str(path)))


#: chapter id -> planted-bugs module, for every registered chapter.
REGISTERED: dict[str, str] = {c.id: c.mutants for c in load()}
#: chapter id -> planted-bugs module, for the chapters that are graded (notebook and bugs exist).
CHAPTERS: dict[str, str] = {c.id: c.mutants for c in load() if c.graded}


def chapter(chapter_id: str) -> Chapter:
    for c in load():
        if c.id == chapter_id:
            return c
    raise KeyError(f"{chapter_id!r} is not in course.toml (registered: {', '.join(REGISTERED)})")


def mutants(chapter_id: str) -> dict[str, dict[str, str]]:
    """function name -> bug name -> source of the planted bugs of a graded chapter."""
    if chapter_id not in CHAPTERS:
        raise KeyError(f"{chapter_id!r} is not a graded chapter of course.toml (graded: {', '.join(CHAPTERS)})")
    return import_module(CHAPTERS[chapter_id]).MUTANTS


def checks(chapter_id: str):
    """The chapter's checks module (llm_course.grading.<topic>), imported."""
    return import_module(chapter(chapter_id).checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the chapters of course.toml, one id a line.")
    parser.add_argument("--all", action="store_true", help="every registered chapter, also those not graded yet")
    args = parser.parse_args(argv)
    print("\n".join(REGISTERED if args.all else CHAPTERS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
