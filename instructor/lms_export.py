"""Grades for the learning-management system: nbgrader ``ExportPlugin``s writing import files.

    nbgrader export --exporter=instructor.lms_export.CanvasExport --to=canvas.csv
    nbgrader export --exporter=instructor.lms_export.MoodleExport --to=moodle.csv

Both write one row per student of the gradebook and one column per assignment, holding the
score after the late penalty (``score - late_submission_penalty``, at least 0, as nbgrader's own
CSV export computes it; the penalty comes from ``instructor/late_penalty.py``). A student with
no submission gets ``missing`` (0 by default; "" leaves the LMS grade unchanged).

Written answers are graded by a person in formgrader, after autograding. The score is the total
with those points; a submission with an answer nobody has graded yet gets ``ungraded`` ("" by
default: the LMS grade is left alone until the points are all there; "score" writes the points so
far), and the export logs which ones. nbgrader computes a late penalty when it autogrades, before
the written answers have points: the export applies the course's late-submission plugin to the
score as it is now, and warns when the gradebook's stored penalty is out of date
(``python -m instructor penalties`` updates it, for the feedback and formgrader).

Canvas (Grades > Import): the columns of Canvas's own gradebook export, ``Student`` ("Last,
First"), ``ID`` (Canvas's user id: nbgrader's ``lms_user_id``), ``SIS User ID``, ``SIS Login ID``
(the nbgrader student id, i.e. the hub login), ``Section``, then one column per assignment named
``Name (Canvas assignment id)``, or ``Name`` alone when ``CanvasExport.assignment_ids`` has no id
for it (Canvas then creates the assignment). The second row is ``Points Possible``.

Moodle (Grades > Import > CSV file): the columns of Moodle's plain-text grade export, ``First
name``, ``Last name``, ``ID number`` (the nbgrader student id), ``Email address``, then one
column per assignment named after it; Moodle's import asks which column identifies the user
and which grade item each column maps to.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.plugins import ExportPlugin
from traitlets import CaselessStrEnum, Dict, Unicode

from instructor.late_penalty import late_plugin, notebook_penalty

CANVAS_IDENTITY = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
MOODLE_IDENTITY = ["First name", "Last name", "ID number", "Email address"]


@dataclass
class Row:
    student_id: str
    first_name: str
    last_name: str
    email: str
    lms_user_id: str
    scores: dict[str, float | None]  # assignment -> score after the late penalty; None: nothing handed in
    pending: set[str] = field(default_factory=set)  # assignments with written answers not graded yet


def score_after_penalty(raw: float, penalty: float | None) -> float:
    """What the student keeps: the raw score less the late penalty, never below zero."""
    return max(0.0, float(raw) - float(penalty or 0.0))


def collect(gradebook: Gradebook, assignments: list[str] | None = None, students: list[str] | None = None,
            plugin=None):
    """(assignment names and max scores, one Row per student) from nbgrader's gradebook.

    With a late-submission `plugin`, each notebook's penalty is computed from its score now (manual
    points included); without, it is the one stored when the notebook was autograded.
    """
    chosen = [a for a in gradebook.assignments if not assignments or a.name in assignments]
    rows = []
    for student in gradebook.students:
        if students and student.id not in students:
            continue
        scores: dict[str, float | None] = {}
        pending = set()
        for assignment in chosen:
            try:
                submission = gradebook.find_submission(assignment.name, student.id)
            except MissingEntry:
                scores[assignment.name] = None
                continue
            if plugin is None:
                penalty = submission.late_submission_penalty
            else:
                penalty = sum(notebook_penalty(plugin, student.id, nb.score, submission.total_seconds_late)
                              for nb in submission.notebooks)
            scores[assignment.name] = score_after_penalty(submission.score, penalty)
            if submission.needs_manual_grade:
                pending.add(assignment.name)
        rows.append(Row(student.id, student.first_name or "", student.last_name or "", student.email or "",
                        student.lms_user_id or "", scores, pending))
    return [(a.name, float(a.max_score)) for a in chosen], rows


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


class _LmsExport(ExportPlugin):
    missing = Unicode("0", help="What to write for an assignment a student did not hand in.").tag(config=True)
    ungraded = CaselessStrEnum(
        ["", "score"], default_value="",
        help="For a submission whose written answers a person has not graded yet: '' (leave the LMS "
             "grade alone) or 'score' (the points so far).",
    ).tag(config=True)
    default_name = "grades.csv"

    def _score(self, row: Row, assignment: str) -> str:
        value = row.scores[assignment]
        if value is None:
            return self.missing
        if assignment in row.pending and self.ungraded != "score":
            return ""
        return _number(value)

    def export(self, gradebook: Gradebook) -> None:
        names, students = [str(a) for a in self.assignment], [str(s) for s in self.student]
        assignments, rows = collect(gradebook, names, students, plugin=late_plugin(self))
        _, stored = collect(gradebook, names, students)
        stale = [f"{r.student_id}/{a}" for r, s in zip(rows, stored) for a in r.scores
                 if r.scores[a] is not None and not math.isclose(r.scores[a], s.scores[a], abs_tol=1e-9)]
        if stale:
            self.log.warning("Late penalties recomputed from the scores after manual grading for %s; "
                             "`python -m instructor penalties` stores them in the gradebook.", ", ".join(stale))
        pending = [f"{r.student_id}/{a}" for r in rows for a in sorted(r.pending)]
        if pending:
            self.log.warning("Written answers not graded yet (formgrader): %s; %s", ", ".join(pending),
                             "their points so far are exported" if self.ungraded == "score" else "left blank")
        dest = self.to or self.default_name
        self.log.info("Writing %s (%d students, %d assignments)", dest, len(rows), len(assignments))
        with open(dest, "w", newline="", encoding="utf-8") as fh:
            self.write(csv.writer(fh), assignments, rows)

    def write(self, out, assignments, rows) -> None:
        raise NotImplementedError


class CanvasExport(_LmsExport):
    """Canvas's grade-import CSV (see the module docstring)."""

    default_name = "canvas_grades.csv"
    assignment_ids = Dict(
        {}, help="nbgrader assignment name -> Canvas assignment id (the number in the assignment's URL)."
    ).tag(config=True)
    section = Unicode("", help="The Section column (Canvas matches students without it).").tag(config=True)
    assignment_titles = Dict({}, help="nbgrader assignment name -> its title in Canvas (default: the name).").tag(
        config=True
    )

    def column(self, name: str) -> str:
        title = self.assignment_titles.get(name, name)
        canvas_id = self.assignment_ids.get(name)
        return f"{title} ({canvas_id})" if canvas_id else title

    def write(self, out, assignments, rows) -> None:
        out.writerow(CANVAS_IDENTITY + [self.column(name) for name, _ in assignments])
        out.writerow(["    Points Possible", "", "", "", ""] + [_number(points) for _, points in assignments])
        for row in rows:
            name = ", ".join(part for part in (row.last_name, row.first_name) if part) or row.student_id
            identity = [name, row.lms_user_id, "", row.student_id, self.section]
            out.writerow(identity + [self._score(row, a) for a, _ in assignments])


class MoodleExport(_LmsExport):
    """Moodle's CSV grade import, with the columns of Moodle's own export (see the module docstring)."""

    default_name = "moodle_grades.csv"

    def write(self, out, assignments, rows) -> None:
        out.writerow(MOODLE_IDENTITY + [name for name, _ in assignments])
        for row in rows:
            identity = [row.first_name, row.last_name, row.student_id, row.email]
            out.writerow(identity + [self._score(row, a) for a, _ in assignments])
