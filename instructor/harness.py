"""Run a chapter's notebook with chosen solution cells: in this process, or through real nbgrader.

The grader tests (``tests/``) and the class simulator (:mod:`instructor.simulate_class`) both use it.

- :func:`run_in_process` executes a chapter's source notebook here, with some solution cells
  replaced, and says which test cells failed and why: the expected outcome of a submission.
- A :class:`Course` is a temporary nbgrader course folder holding the repository's
  ``nbgrader_config.py`` and the source notebook of one chapter. Tests generate the
  student version, hand in submissions built from it (the reference solution, the
  untouched exercise, planted bugs, hostile code), run ``nbgrader autograde`` once for
  the whole batch, and read every cell's score from the gradebook.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from llm_course.grading import TimeLimitExceeded, time_limit

ROOT = Path(__file__).resolve().parents[1]
SOLUTION_MARKERS = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", re.MULTILINE)
HIDDEN_MARKERS = re.compile(r"^[ \t]*### (BEGIN|END) HIDDEN TESTS[ \t]*\n?", re.MULTILINE)
CELL_TIME_LIMIT = 60  # like nbgrader's Execute.timeout in nbgrader_config.py


def grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def notebook_path(folder: Path, chapter: str) -> Path:
    notebooks = sorted((folder / chapter).glob("*.ipynb"))
    if len(notebooks) != 1:
        raise AssertionError(f"{folder / chapter} should hold exactly one notebook, found {notebooks}")
    return notebooks[0]


def solution_sources(chapter: str) -> dict[str, str]:
    """The code solution cells of a chapter's source notebook, as a student would write them (markers
    removed). Written answers, graded by a person, are not among them (:func:`written_answers`)."""
    nb = nbformat.read(notebook_path(ROOT / "solutions", chapter), as_version=4)
    return {
        grade_id(c): SOLUTION_MARKERS.sub("", c.source)
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"
    }


def graded_cells(chapter: str) -> dict[str, float]:
    """grade_id -> points of every autograded (test) cell in the chapter's source notebook."""
    nb = nbformat.read(notebook_path(ROOT / "solutions", chapter), as_version=4)
    return {
        grade_id(c): float(c.metadata["nbgrader"]["points"])
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"
    }


def written_answers(chapter: str) -> dict[str, float]:
    """grade_id -> points of every written answer (a Markdown cell that a person grades in formgrader)."""
    nb = nbformat.read(notebook_path(ROOT / "solutions", chapter), as_version=4)
    return {
        grade_id(c): float(c.metadata["nbgrader"]["points"])
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "markdown"
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


@dataclass
class Written:
    """The gradebook's entry for one written answer: autograding scores only an untouched one (0)."""

    auto_score: float | None  # 0 for an unchanged answer cell, None when a person must grade it
    manual_score: float | None  # entered in formgrader
    max_score: float
    needs_manual_grade: bool


@dataclass
class Result:
    score: dict[str, float]  # grade_id -> points earned, autograded (code) cells only
    max_score: dict[str, float]  # grade_id -> points available, autograded (code) cells only
    written: dict[str, Written] = field(default_factory=dict)  # grade_id -> written answer's grade

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
                scores, maxima, written = {}, {}, {}
                for nb in submission.notebooks:
                    for grade in nb.grades:
                        if grade.cell.cell_type == "markdown":
                            written[grade.name] = Written(
                                grade.auto_score, grade.manual_score, float(grade.max_score), grade.needs_manual_grade
                            )
                        else:
                            scores[grade.name] = float(grade.score)
                            maxima[grade.name] = float(grade.max_score)
                out[submission.student.id] = Result(scores, maxima, written)
        return out
