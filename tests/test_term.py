"""A term's bookkeeping: due dates (schedule.toml), the late penalty, and the LMS grade files.

Fast tests, on nbgrader's own gradebook: nbgrader computes how late a submission is (its
``timestamp.txt`` against the assignment's due date), the course's ``PerDayLatePenalty`` turns
that into points, and the Canvas / Moodle exports are checked against the documented columns
and against nbgrader's own CSV export (the oracle for each score after the penalty). The real
cycle (exchange, a late submission, autograde) is in tests/test_exchange.py.
"""

from __future__ import annotations

import csv
import datetime as dt

import pytest
from nbgrader.api import Gradebook

from instructor.harness import ROOT
from instructor.late_penalty import DAY_SECONDS, PerDayLatePenalty, late_fraction, reapply_late_penalties
from instructor.lms_export import CANVAS_IDENTITY, MOODLE_IDENTITY, CanvasExport, MoodleExport
from instructor.schedule import ScheduleError, load_schedule, set_due_dates, to_utc


# --------------------------------------------------------------------------- the policy
@pytest.mark.parametrize(
    "seconds, fraction",
    [(-5, 0), (0, 0), (1, 0.1), (DAY_SECONDS, 0.1), (DAY_SECONDS + 1, 0.2), (3 * DAY_SECONDS, 0.3),
     (4 * DAY_SECONDS + 1, 0.5), (30 * DAY_SECONDS, 0.5)],
)
def test_late_fraction_per_started_day_capped(seconds, fraction):
    assert late_fraction(seconds) == pytest.approx(fraction)


def test_grace_period_and_bad_settings():
    assert late_fraction(600, grace_seconds=900) == 0
    assert late_fraction(901, grace_seconds=900) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="per_day"):
        late_fraction(10, per_day=1.5)
    with pytest.raises(Exception, match="cap must lie between 0 and 1"):
        PerDayLatePenalty(cap=2)


def test_the_course_configures_the_plugin():
    from nbgrader.preprocessors import AssignLatePenalties

    from instructor.course import load_config

    step = AssignLatePenalties(config=load_config(ROOT))
    step.init_plugin()
    assert isinstance(step.plugin_inst, PerDayLatePenalty)
    assert step.plugin_inst.late_submission_penalty("s", 8.0, 2 * DAY_SECONDS) == pytest.approx(0.2 * 8.0)


# --------------------------------------------------------------------------- the schedule
def test_the_course_schedule_covers_every_assignment_in_order():
    from instructor.course import assignments_of

    names = assignments_of(ROOT)
    due = load_schedule(ROOT / "schedule.toml", names)
    assert sorted(due) == names
    dates = [due[n] for n in names]
    assert dates == sorted(dates) and len(set(dates)) == len(dates)
    # Local time in Europe/Berlin: 23:59 CET is 22:59 UTC in winter, 23:59 CEST is 21:59 UTC in summer.
    assert due["01_neural_networks"] == dt.datetime(2027, 2, 19, 22, 59)
    assert due["07_scaling_laws"] == dt.datetime(2027, 4, 2, 21, 59)


def test_schedule_errors_are_clear(tmp_path):
    path = tmp_path / "schedule.toml"
    path.write_text('timezone = "Mars/Olympus"\n[due]\na = 2027-01-01T12:00:00\n')
    with pytest.raises(ScheduleError, match="unknown time zone"):
        load_schedule(path)
    path.write_text("[due]\na = 2027-01-01\n")
    with pytest.raises(ScheduleError, match="no time of day"):
        load_schedule(path)
    path.write_text("[due]\nzz_typo = 2027-01-01T12:00:00\n")
    with pytest.raises(ScheduleError, match="not an assignment"):
        load_schedule(path, ["a"])
    path.write_text("[due]\na = 2027-01-01T12:00:00+05:30\nb = 2027-01-01T12:00:00\n")  # UTC by default
    assert load_schedule(path) == {"a": dt.datetime(2027, 1, 1, 6, 30), "b": dt.datetime(2027, 1, 1, 12, 0)}
    assert load_schedule(tmp_path / "none.toml") == {}


# --------------------------------------------------------------------------- through the gradebook
def _gradebook(tmp_path, due: dict[str, dt.datetime]) -> str:
    """A gradebook with assignments of one notebook and one 10-point cell each, due as given."""
    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    with Gradebook(url) as gb:
        for name in due:
            gb.add_assignment(name)
            gb.add_notebook("nb", name)
            gb.add_grade_cell("points", "nb", name, max_score=10, cell_type="code")
    set_due_dates(url, due)
    return url


#: Submission timestamps as nbgrader's exchange writes them (timestamp.txt: local time and zone),
#: against a due date of 2027-02-19 23:59 in Berlin (22:59 UTC): expected share lost.
SUBMISSIONS = {
    "early_berlin": ("2027-02-19 23:58:59.000000 Europe/Berlin", 0.0),
    "at_deadline_berlin": ("2027-02-19 23:59:00.000000 Europe/Berlin", 0.0),
    "at_deadline_new_york": ("2027-02-19 17:59:00.000000 America/New_York", 0.0),
    "next_day_in_moscow_but_on_time": ("2027-02-20 00:30:00.000000 Europe/Moscow", 0.0),  # 21:30 UTC
    "one_second_late_utc": ("2027-02-19 22:59:01.000000 UTC", 0.1),
    "late_in_tokyo": ("2027-02-20 08:00:00.000000 Asia/Tokyo", 0.1),  # 23:00 UTC, 1 min late
    "two_days_late": ("2027-02-21 12:00:00.000000 Europe/Berlin", 0.2),
    "ten_days_late": ("2027-03-01 12:00:00.000000 UTC", 0.5),
}


def test_penalty_before_at_and_after_the_deadline_across_time_zones(tmp_path):
    due = to_utc(dt.datetime(2027, 2, 19, 23, 59), "Europe/Berlin")
    url = _gradebook(tmp_path, {"a1": due})
    plugin = PerDayLatePenalty()
    with Gradebook(url) as gb:
        for student, (stamp, share) in SUBMISSIONS.items():
            gb.add_student(student)
            submission = gb.add_submission("a1", student, timestamp=stamp)
            late = submission.total_seconds_late  # nbgrader's own arithmetic, in UTC
            penalty = plugin.late_submission_penalty(student, 10.0, late) if late > 0 else 0.0
            assert penalty == pytest.approx(10 * share), (student, stamp, late)


def test_summer_time_moves_the_deadline_in_utc(tmp_path):
    due = load_schedule(ROOT / "schedule.toml")["07_scaling_laws"]  # 2 April 2027, 23:59 in Berlin (CEST)
    url = _gradebook(tmp_path, {"07_scaling_laws": due})
    with Gradebook(url) as gb:
        gb.add_student("s")
        # 22:30 UTC on 2 April is 00:30 CEST on the 3rd: late, though it would be on time under CET.
        assert gb.add_submission("07_scaling_laws", "s", timestamp="2027-04-02 22:30:00 UTC").total_seconds_late == 31 * 60


# --------------------------------------------------------------------------- LMS export
STUDENTS = [  # id, first, last, email, Canvas user id, score on a1 (None: nothing handed in), penalty
    ("ada", "Ada", "Lovelace", "ada@example.org", "1001", 9.0, 0.9),
    ("bob", "Bob", "", "bob@example.org", "", 7.5, 0.0),
    ("cy", "", "", "", "1003", None, None),
]


def _filled_gradebook(tmp_path) -> str:
    url = _gradebook(tmp_path, {"a1": dt.datetime(2027, 2, 19, 22, 59), "a2": dt.datetime(2027, 2, 26, 22, 59)})
    with Gradebook(url) as gb:
        for sid, first, last, email, lms, score, penalty in STUDENTS:
            gb.add_student(sid, first_name=first, last_name=last, email=email, lms_user_id=lms or None)
            if score is None:
                continue
            # 11 hours late (10 %) where a penalty is given, on time otherwise.
            stamp = "2027-02-20 10:00:00 UTC" if penalty else "2027-02-19 20:00:00 UTC"
            gb.add_submission("a1", sid, timestamp=stamp)
            grade = gb.find_grade("points", "nb", "a1", sid)
            grade.auto_score, grade.needs_manual_grade = score, False  # as autograding leaves a code cell
            gb.find_submission_notebook("nb", "a1", sid).late_submission_penalty = penalty
        gb.db.commit()
    return url


def _nbgrader_scores(url, tmp_path) -> dict[tuple[str, str], str]:
    """(assignment, student) -> score after penalty, from nbgrader's own CSV export (the oracle)."""
    from nbgrader.plugins import CsvExportPlugin

    plugin = CsvExportPlugin(to=str(tmp_path / "nbgrader.csv"))
    with Gradebook(url) as gb:
        plugin.export(gb)
    with open(tmp_path / "nbgrader.csv") as fh:
        return {(r["assignment"], r["student_id"]): r["score"] for r in csv.DictReader(fh)}


def test_canvas_export_has_canvas_columns_and_penalised_scores(tmp_path):
    url = _filled_gradebook(tmp_path)
    out = tmp_path / "canvas.csv"
    with Gradebook(url) as gb:
        CanvasExport(to=str(out), assignment_ids={"a1": 5501}, section="Spring 2027").export(gb)
    rows = list(csv.reader(out.open()))
    assert rows[0] == CANVAS_IDENTITY + ["a1 (5501)", "a2"]
    assert rows[0][:5] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
    assert rows[1][0].strip() == "Points Possible" and rows[1][5:] == ["10", "10"]
    oracle = _nbgrader_scores(url, tmp_path)
    by_login = {r[3]: r for r in rows[2:]}
    assert set(by_login) == {s[0] for s in STUDENTS}
    assert by_login["ada"][:5] == ["Lovelace, Ada", "1001", "", "ada", "Spring 2027"]
    assert by_login["bob"][0] == "Bob"
    assert by_login["cy"][0] == "cy"
    for sid, *_ in STUDENTS:
        for column, assignment in [(5, "a1"), (6, "a2")]:
            assert float(by_login[sid][column]) == pytest.approx(float(oracle[(assignment, sid)])), (sid, assignment)
    assert float(by_login["ada"][5]) == pytest.approx(8.1)  # 9 points less the 10 % late penalty


def test_moodle_export_has_moodle_columns(tmp_path):
    url = _filled_gradebook(tmp_path)
    out = tmp_path / "moodle.csv"
    with Gradebook(url) as gb:
        MoodleExport(to=str(out), missing="").export(gb)
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == MOODLE_IDENTITY + ["a1", "a2"]
    ada = next(r for r in rows if r["ID number"] == "ada")
    assert (ada["First name"], ada["Last name"], ada["Email address"]) == ("Ada", "Lovelace", "ada@example.org")
    assert float(ada["a1"]) == pytest.approx(8.1) and ada["a2"] == ""


@pytest.mark.slow
def test_exporters_work_from_nbgrader_export(tmp_path):
    """`nbgrader export --exporter=instructor.lms_export.CanvasExport` finds and runs the plugin."""
    import shutil
    import subprocess
    import sys

    _filled_gradebook(tmp_path)
    shutil.copy(ROOT / "nbgrader_config.py", tmp_path / "nbgrader_config.py")
    shutil.copytree(ROOT / "instructor", tmp_path / "instructor", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "nbgrader", "export", "--exporter=instructor.lms_export.CanvasExport", "--to=canvas.csv"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "canvas.csv").read_text().startswith("Student,ID,SIS User ID,SIS Login ID,Section,a1,a2")


# --------------------------------------------------------------------------- written answers
def _written_gradebook(tmp_path) -> str:
    """a1 with a 10-point code cell and a 5-point written answer (Markdown), as autograding leaves it:
    ada handed in 11 hours late (10 %), bob on time; the answers wait for a person."""
    url = _gradebook(tmp_path, {"a1": dt.datetime(2027, 2, 19, 22, 59)})
    with Gradebook(url) as gb:
        gb.add_grade_cell("essay", "nb", "a1", max_score=5, cell_type="markdown")
        for sid, stamp in [("ada", "2027-02-20 10:00:00 UTC"), ("bob", "2027-02-19 20:00:00 UTC")]:
            gb.add_student(sid)
            gb.add_submission("a1", sid, timestamp=stamp)
            code = gb.find_grade("points", "nb", "a1", sid)
            code.auto_score, code.needs_manual_grade = 8.0, False
            essay = gb.find_grade("essay", "nb", "a1", sid)
            essay.auto_score, essay.needs_manual_grade = None, True  # answered: for a person
            # nbgrader's penalty, computed when autograding, from the autograded 8 points only.
            gb.find_submission_notebook("nb", "a1", sid).late_submission_penalty = 0.8 if sid == "ada" else None
        gb.db.commit()
    return url


def _canvas(url, tmp_path, **traits) -> dict[str, str]:
    """Canvas's column of a1 per student, exported with the course's late policy (as nbgrader_config.py sets it)."""
    from traitlets.config import Config

    config = Config({"AssignLatePenalties": {"plugin_class": "instructor.late_penalty.PerDayLatePenalty"}})
    out = tmp_path / "canvas.csv"
    with Gradebook(url) as gb:
        CanvasExport(to=str(out), config=config, **traits).export(gb)
    rows = list(csv.reader(out.open()))
    assert rows[1][5] == "15"  # points possible: code and written
    return {r[3]: r[5] for r in rows[2:]}


def test_export_waits_for_written_answers_then_penalises_the_total(tmp_path):
    url = _written_gradebook(tmp_path)
    # Not graded yet: the LMS grade is left alone (or, asked for, the points so far, penalty applied).
    assert _canvas(url, tmp_path) == {"ada": "", "bob": ""}
    assert _canvas(url, tmp_path, ungraded="score") == {"ada": "7.2", "bob": "8"}

    with Gradebook(url) as gb:  # what formgrader saves when the instructor enters a score
        for sid, points in [("ada", 4.0), ("bob", 3.0)]:
            essay = gb.find_grade("essay", "nb", "a1", sid)
            essay.manual_score, essay.needs_manual_grade = points, False
        gb.db.commit()
    # ada: 12 points, 10 % late: 10.8, although the gradebook still holds the penalty of 8 points.
    assert _canvas(url, tmp_path) == {"ada": "10.8", "bob": "11"}
    assert _nbgrader_scores(url, tmp_path)[("a1", "ada")] == "11.2"  # nbgrader's CSV: the stale penalty

    # `python -m instructor penalties` stores the penalty of the total (with the course's policy, from
    # its nbgrader_config.py); nbgrader's own export then agrees, and a second run changes nothing.
    import shutil

    from instructor.course import penalties

    shutil.copy(ROOT / "nbgrader_config.py", tmp_path / "nbgrader_config.py")
    assert penalties(tmp_path, db_url=url) == {("a1", "ada"): (0.8, pytest.approx(1.2))}
    assert float(_nbgrader_scores(url, tmp_path)[("a1", "ada")]) == pytest.approx(10.8)
    with Gradebook(url) as gb:
        assert reapply_late_penalties(gb, PerDayLatePenalty()) == {}
