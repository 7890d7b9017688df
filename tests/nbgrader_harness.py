"""Run real nbgrader commands on a throwaway copy of the course, for the grader tests.

A :class:`Course` is a temporary nbgrader course folder holding the repository's
``nbgrader_config.py`` and the source notebook of one chapter. Tests generate the
student version, hand in submissions built from it (the reference solution, the
untouched exercise, planted bugs, hostile code), run ``nbgrader autograde`` once for
the whole batch, and read every cell's score from the gradebook.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOLUTION_MARKERS = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", re.MULTILINE)


def grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def notebook_path(folder: Path, chapter: str) -> Path:
    notebooks = sorted((folder / chapter).glob("*.ipynb"))
    if len(notebooks) != 1:
        raise AssertionError(f"{folder / chapter} should hold exactly one notebook, found {notebooks}")
    return notebooks[0]


def solution_sources(chapter: str) -> dict[str, str]:
    """The solution cells of a chapter's source notebook, as a student would write them (markers removed)."""
    nb = nbformat.read(notebook_path(ROOT / "solutions", chapter), as_version=4)
    return {
        grade_id(c): SOLUTION_MARKERS.sub("", c.source)
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("solution")
    }


def graded_cells(chapter: str) -> dict[str, float]:
    """grade_id -> points of every graded (test) cell in the chapter's source notebook."""
    nb = nbformat.read(notebook_path(ROOT / "solutions", chapter), as_version=4)
    return {
        grade_id(c): float(c.metadata["nbgrader"]["points"])
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("grade")
    }


def with_cells(nb, replacements: dict[str, str]):
    """A copy of notebook `nb` with the sources of the cells named by grade id replaced."""
    nb = copy.deepcopy(nb)
    unknown = set(replacements) - {grade_id(c) for c in nb.cells}
    if unknown:
        raise KeyError(f"no cells with grade ids {sorted(unknown)}")
    for cell in nb.cells:
        if grade_id(cell) in replacements:
            cell.source = replacements[grade_id(cell)]
    return nb


@dataclass
class Result:
    score: dict[str, float]  # grade_id -> points earned
    max_score: dict[str, float]  # grade_id -> points available

    @property
    def total(self) -> float:
        return sum(self.score.values())

    @property
    def total_max(self) -> float:
        return sum(self.max_score.values())


class Course:
    """A temporary nbgrader course with one chapter's source notebook."""

    def __init__(self, path: Path, chapter: str):
        self.path = Path(path)
        self.chapter = chapter
        self.path.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "nbgrader_config.py", self.path / "nbgrader_config.py")
        # The grading additions that nbgrader_config.py configures (instructor/preprocessors.py).
        shutil.copytree(ROOT / "instructor", self.path / "instructor", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "solutions" / chapter, self.path / "solutions" / chapter)

    def nbgrader(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        # nbgrader calls `alembic` as a command: this interpreter's scripts must come first on PATH.
        env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        proc = subprocess.run(
            [sys.executable, "-m", "nbgrader", *args],
            cwd=self.path,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        if proc.returncode != 0:
            raise AssertionError(f"nbgrader {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def generate(self) -> Path:
        """Run `nbgrader generate_assignment`; return the student notebook it wrote."""
        self.nbgrader("generate_assignment", self.chapter, "--force")
        return notebook_path(self.path / "exercises", self.chapter)

    def student_notebook(self):
        return nbformat.read(notebook_path(self.path / "exercises", self.chapter), as_version=4)

    def submit(self, student: str, nb) -> None:
        name = notebook_path(self.path / "exercises", self.chapter).name
        folder = self.path / "submitted" / student / self.chapter
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(nb, str):  # raw text: e.g. a file that is not valid JSON
            (folder / name).write_text(nb)
        else:
            nbformat.write(nb, folder / name)

    def autograde(self, *extra: str) -> subprocess.CompletedProcess:
        return self.nbgrader("autograde", self.chapter, "--force", *extra)

    def results(self) -> dict[str, Result]:
        """student -> Result, read from the gradebook."""
        from nbgrader.api import Gradebook

        out: dict[str, Result] = {}
        with Gradebook(f"sqlite:///{self.path / 'gradebook.db'}") as gb:
            assignment = gb.find_assignment(self.chapter)
            for submission in assignment.submissions:
                scores, maxima = {}, {}
                for nb in submission.notebooks:
                    for grade in nb.grades:
                        scores[grade.name] = float(grade.score)
                        maxima[grade.name] = float(grade.max_score)
                out[submission.student.id] = Result(scores, maxima)
        return out
