"""The course's late-submission policy, as an nbgrader ``LateSubmissionPlugin``.

A notebook handed in after its due date loses ``per_day`` of its score for every day or part
of a day it is late, up to ``cap``: with the defaults (10 % a day, at most 50 %), one second
late costs 10 %, 24 h 1 s late 20 %, and anything from 4 days and 1 second on 50 %. A
submission exactly at the due date is on time (nbgrader asks for a penalty only when the
submission is late by more than zero seconds). ``grace_minutes`` forgives a few minutes of
lateness (upload delays) before the first day starts counting.

nbgrader's ``AssignLatePenalties`` step of the autograde pipeline calls the plugin with the
notebook's score and how late the submission was (its ``timestamp.txt`` against the due date
in the gradebook, both in UTC, so time zones need no care here); ``nbgrader_config.py``
selects it with ``c.AssignLatePenalties.plugin_class``. Due dates come from ``schedule.toml``
(``instructor/schedule.py``).
"""

from __future__ import annotations

import math

from nbgrader.plugins import LateSubmissionPlugin
from traitlets import Float, TraitError, validate

DAY_SECONDS = 86_400


def late_fraction(seconds_late: float, per_day: float = 0.10, cap: float = 0.50, grace_seconds: float = 0.0) -> float:
    """Share of the score lost when `seconds_late` late: `per_day` per started day, at most `cap`."""
    if not 0 <= per_day <= 1 or not 0 <= cap <= 1 or grace_seconds < 0:
        raise ValueError(f"need 0 <= per_day, cap <= 1 and grace_seconds >= 0; got {per_day}, {cap}, {grace_seconds}")
    if seconds_late <= grace_seconds:
        return 0.0
    days = math.ceil((seconds_late - grace_seconds) / DAY_SECONDS)
    return min(cap, per_day * days)


class PerDayLatePenalty(LateSubmissionPlugin):
    """``per_day`` of the notebook's score per started day late, at most ``cap`` (see the module)."""

    per_day = Float(0.10, help="Share of the score lost for each started day late (0 to 1).").tag(config=True)
    cap = Float(0.50, help="At most this share of the score is lost, however late (0 to 1).").tag(config=True)
    grace_minutes = Float(0.0, help="Minutes after the due date that cost nothing.").tag(config=True)

    @validate("per_day", "cap")
    def _share(self, proposal):
        if not 0 <= proposal["value"] <= 1:
            raise TraitError(f"{proposal['trait'].name} must lie between 0 and 1, got {proposal['value']}")
        return proposal["value"]

    @validate("grace_minutes")
    def _grace(self, proposal):
        if proposal["value"] < 0:
            raise TraitError(f"grace_minutes must be >= 0, got {proposal['value']}")
        return proposal["value"]

    def late_submission_penalty(self, student_id: str, score: float, total_seconds_late: float) -> float:
        fraction = late_fraction(total_seconds_late, self.per_day, self.cap, 60 * self.grace_minutes)
        self.log.info("%s is %.0f s late: penalty %.0f%% of %s points", student_id, total_seconds_late, 100 * fraction, score)
        return fraction * score


def late_plugin(parent) -> LateSubmissionPlugin | None:
    """The course's late-submission plugin (``c.AssignLatePenalties.plugin_class``), configured from
    `parent`'s configuration (an nbgrader app or export plugin); None where none is configured."""
    from nbgrader.preprocessors import AssignLatePenalties

    if "plugin_class" not in parent.config.get("AssignLatePenalties", {}):
        return None
    return AssignLatePenalties(parent=parent).plugin_class(parent=parent)


def notebook_penalty(plugin: LateSubmissionPlugin, student_id: str, score: float, seconds_late: float) -> float:
    """The penalty nbgrader's ``AssignLatePenalties`` stores for a notebook of `score` points handed in
    `seconds_late` late: the plugin's, kept between 0 and the score."""
    if seconds_late <= 0:
        return 0.0
    penalty = plugin.late_submission_penalty(student_id, score, seconds_late)
    return 0.0 if penalty is None else min(max(float(penalty), 0.0), float(score))


def reapply_late_penalties(gradebook, plugin: LateSubmissionPlugin, assignments=None, write: bool = True) -> dict:
    """Late penalties from the scores as they are now: {(assignment, student): (stored, current)} of
    the submissions whose stored penalty differs (written into the gradebook when `write`).

    nbgrader computes a penalty once, when it autogrades, from the autograded score. Points a person
    gives later in formgrader (written answers) are not in it: ``python -m instructor penalties``
    recomputes it from the total, so that the gradebook, the feedback and the exports agree.
    """
    changed = {}
    for assignment in gradebook.assignments:
        if assignments and assignment.name not in assignments:
            continue
        for submission in assignment.submissions:
            stored = current = 0.0
            for notebook in submission.notebooks:
                penalty = notebook_penalty(plugin, submission.student.id, notebook.score, submission.total_seconds_late)
                stored += float(notebook.late_submission_penalty or 0.0)
                current += penalty
                if write:
                    notebook.late_submission_penalty = penalty if submission.total_seconds_late > 0 else None
            if not math.isclose(stored, current, abs_tol=1e-9):
                changed[(assignment.name, submission.student.id)] = (stored, current)
    if write:
        gradebook.db.commit()
    return changed
