"""A term's cycle through nbgrader's exchange, in order, with real commands (chapter 01).

    python -m instructor release      (the due date from the course's schedule.toml: in a week)
    nbgrader release_assignment       (instructor -> exchange)
    nbgrader fetch_assignment         (each student, with their own HOME and cache)
    nbgrader submit                   (alice, on time)
    python -m instructor release      (the instructor moves the due date to now in schedule.toml)
    nbgrader submit                   (bob, after it)
    nbgrader collect                  (exchange -> submitted/, with timestamp.txt)
    python -m instructor autograde submitted   (what `make autograde SUBMISSIONS=submitted` runs:
                                      sandboxed grading, late penalty, feedback)
    nbgrader release_feedback         (feedback -> exchange)
    nbgrader fetch_feedback           (each student gets their own feedback, and no one else's)
    nbgrader export --exporter=instructor.lms_export.CanvasExport   (penalty applied)

Alice hands in the untouched exercise on time; bob hands in the reference solution a few
seconds late, so his 10 % late penalty shows in the gradebook and in the Canvas file.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from instructor.harness import ROOT, Course, notebook_path, solution_sources, with_cells
from instructor.late_penalty import DAY_SECONDS
from instructor.schedule import to_utc

CHAPTER = "01_neural_networks"


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_term_through_the_exchange(tmp_path):
    course = Course(tmp_path / "course", CHAPTER)
    exchange = tmp_path / "exchange"
    exchange.mkdir()
    exchange.chmod(0o777)
    base_env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "LLM_COURSE_EXCHANGE": str(exchange),
        "LLM_COURSE_MATHJAX": str(ROOT / "_build/static/mathjax/tex-svg.js"),
    }
    nbgrader = [sys.executable, "-m", "nbgrader"]

    def instructor(*args: str) -> str:
        return run([*args], course.path, base_env)

    homes = {s: tmp_path / "home" / s for s in ("alice", "bob")}

    def student(name: str, *args: str) -> str:
        """A student's nbgrader command: their own HOME (so their own Jupyter cache), in their home folder."""
        home = homes[name]
        home.mkdir(parents=True, exist_ok=True)
        env = {**base_env, "HOME": str(home), "JUPYTER_DATA_DIR": str(home / ".local/share/jupyter")}
        flags = [f"--Exchange.root={exchange}", "--CourseDirectory.course_id=llm-course", f"--student={name}"]
        return run([*nbgrader, *args, *flags], home, env)

    def schedule(due: dt.datetime) -> None:
        (course.path / "schedule.toml").write_text(f'timezone = "Europe/Berlin"\n\n[due]\n{CHAPTER} = {due.isoformat()}\n')

    def due_in_gradebook() -> dt.datetime:
        with Gradebook(f"sqlite:///{course.path / 'gradebook.db'}") as gb:
            return gb.find_assignment(CHAPTER).duedate

    # The instructor releases, with a due date a week ahead (local time in Berlin) from schedule.toml.
    week = dt.datetime.now().replace(microsecond=0) + dt.timedelta(days=7)
    schedule(week)
    instructor(sys.executable, "-m", "instructor", "release", CHAPTER)
    assert due_in_gradebook() == to_utc(week, "Europe/Berlin")
    instructor(*nbgrader, "release_assignment", CHAPTER)

    # Students fetch; alice submits the untouched exercise, on time.
    for name in homes:
        student(name, "fetch_assignment", CHAPTER)
    fetched = {name: notebook_path(homes[name], CHAPTER) for name in homes}
    solution = with_cells(nbformat.read(fetched["bob"], as_version=4), solution_sources(CHAPTER))
    nbformat.write(solution, fetched["bob"])
    student("alice", "submit", CHAPTER)

    # The instructor moves the deadline to now (schedule.toml, then `make release` again);
    # bob submits the solution after it.
    # Rounded up to the next whole second: alice's submission, a moment ago, stays before it.
    now = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).replace(microsecond=0)
    schedule(now)
    instructor(sys.executable, "-m", "instructor", "release", CHAPTER)
    assert due_in_gradebook() == now.replace(tzinfo=None)
    time.sleep(max(0.0, (now - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 1.1)
    student("bob", "submit", CHAPTER)

    # The instructor collects, grades, and sends the feedback back.
    instructor(*nbgrader, "collect", CHAPTER, "--CollectApp.check_owner=False")
    for name in homes:
        assert (course.path / "submitted" / name / CHAPTER / "timestamp.txt").exists()
    instructor(sys.executable, "-m", "instructor", "autograde", "submitted", "--assignments", CHAPTER)
    instructor(*nbgrader, "release_feedback", CHAPTER)

    with Gradebook(f"sqlite:///{course.path / 'gradebook.db'}") as gb:
        subs = {name: gb.find_submission(CHAPTER, name) for name in homes}
        # Both leave the written answer empty: it scores 0 and needs no person (tests/test_formgrader.py
        # grades one), so full marks here are the autograded points.
        max_score = gb.find_assignment(CHAPTER).max_code_score
        assert not any(sub.needs_manual_grade for sub in subs.values())
        assert subs["alice"].total_seconds_late == 0 and not subs["alice"].late_submission_penalty
        assert 0 < subs["bob"].total_seconds_late < DAY_SECONDS
        assert subs["bob"].score == max_score
        assert subs["bob"].late_submission_penalty == pytest.approx(0.1 * max_score)  # one started day: 10 %
        assert subs["alice"].score < max_score
        alice_score = subs["alice"].score

    # Each student fetches their feedback: their own page, and nobody else's.
    pages = {}
    for name in homes:
        student(name, "fetch_feedback", CHAPTER)
        got = sorted((homes[name] / CHAPTER / "feedback").rglob("*.html"))
        assert len(got) == 1, (name, got)
        pages[name] = got[0].read_bytes()
        assert pages[name] == (course.path / "feedback" / name / CHAPTER / f"{CHAPTER}.html").read_bytes()
    assert pages["alice"] != pages["bob"]

    # The grades for Canvas, with bob's late penalty applied.
    instructor(*nbgrader, "export", "--exporter=instructor.lms_export.CanvasExport", "--to=canvas.csv")
    rows = list(csv.reader((course.path / "canvas.csv").open()))
    assert rows[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", CHAPTER]
    scores = {row[3]: float(row[5]) for row in rows[2:]}
    assert scores["bob"] == pytest.approx(0.9 * max_score)
    assert scores["alice"] == pytest.approx(alice_score)
