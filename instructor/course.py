"""Release every assignment, and grade a whole class, with nbgrader (``python -m instructor``).

    python -m instructor release                      # solutions/ -> exercises/, every assignment
    python -m instructor autograde SUBMISSIONS        # grade, feedback, gradebook CSV, report
    python -m instructor autograde SUBMISSIONS --workers 4 --postgres   # in parallel
    python -m instructor penalties                    # after grading written answers in formgrader

``SUBMISSIONS`` holds one folder per student, laid out like nbgrader's
``submitted/``: ``<student>/<assignment>/<notebook>.ipynb`` (a notebook directly in
``<student>/``, named after its assignment, is accepted too). The notebooks are
copied into the course's ``submitted/`` folder and graded there by nbgrader's own
converters (``Autograde``, ``GenerateFeedback``) into nbgrader's gradebook database;
``grades.csv`` is nbgrader's CSV export of that database.

One grader writes to the SQLite gradebook (``gradebook.db``, nbgrader's default).
Graders in parallel (``--workers N``) need a server database, nbgrader's documented
choice for concurrent access: ``--db-url postgresql://...``, or ``--postgres`` to run
a private PostgreSQL server for this command (``instructor/postgres.py``), whose
grades are then copied into ``gradebook.db`` so that nbgrader's other commands see them.
Each worker is one process that grades its share of (assignment, student) pairs
in turn, so nbgrader is imported once per worker, not once per notebook.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
# nbgrader runs the environment's `alembic` as a command: find it beside this interpreter
# even when the virtual environment is not activated.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


@dataclass
class Job:
    assignment: str
    student: str
    ok: bool = True
    error: str = ""
    autograde_s: float = 0.0
    feedback_s: float = 0.0


# --------------------------------------------------------------------------- nbgrader, in-process
def load_config(course: Path, db_url: str | None = None):
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    config.CourseDirectory.root = str(course)
    if db_url:
        config.CourseDirectory.db_url = db_url
    return config


def db_url_of(course: Path, db_url: str | None) -> str:
    from nbgrader.coursedir import CourseDirectory

    return CourseDirectory(config=load_config(course, db_url)).db_url


class Grader:
    """nbgrader's converters, configured once from the course's nbgrader_config.py."""

    def __init__(self, course: Path, db_url: str | None = None, feedback: bool = True):
        from nbgrader.coursedir import CourseDirectory

        self.course = Path(course)
        self.config = load_config(self.course, db_url)
        self.coursedir = CourseDirectory(config=self.config)
        self.feedback = feedback
        logging.getLogger("traitlets").setLevel(logging.WARNING)
        import warnings

        from sqlalchemy.exc import SAWarning

        warnings.filterwarnings("ignore", category=SAWarning)  # nbgrader's own autoflush warnings

    def _run(self, converter_class, assignment: str, student: str | None = None, **attrs) -> None:
        self.coursedir.assignment_id = assignment
        self.coursedir.student_id = student or "*"
        app = converter_class(coursedir=self.coursedir, config=self.config)
        app.log.setLevel(logging.WARNING)
        for key, value in attrs.items():
            setattr(app, key, value)
        app.start()

    def generate(self, assignment: str) -> None:
        from nbgrader.converters import GenerateAssignment

        self._run(GenerateAssignment, assignment, force=True)

    def grade(self, job: Job) -> Job:
        from nbgrader.converters import Autograde, GenerateFeedback

        from instructor.feedback import offline_mathjax

        start = time.perf_counter()
        try:
            self._run(Autograde, job.assignment, job.student, force=True, create_student=True)
            job.autograde_s = time.perf_counter() - start
            if self.feedback:
                start = time.perf_counter()
                self._run(GenerateFeedback, job.assignment, job.student, force=True)
                folder = self.course / "feedback" / job.student / job.assignment
                for page in folder.glob("*.html"):
                    offline_mathjax(page)
                job.feedback_s = time.perf_counter() - start
        except BaseException as err:  # noqa: BLE001 - one failed notebook must not stop the class
            job.ok, job.error = False, f"{type(err).__name__}: {err}"
        return job


_worker: Grader | None = None


def _init_worker(course: str, db_url: str | None, feedback: bool) -> None:
    global _worker
    sys.path.insert(0, course)
    _worker = Grader(Path(course), db_url, feedback)


def _grade_in_worker(job: Job) -> Job:
    return _worker.grade(job)


# --------------------------------------------------------------------------- commands
def assignments_of(course: Path) -> list[str]:
    return sorted(p.name for p in (course / "solutions").iterdir() if p.is_dir() and list(p.glob("*.ipynb")))


def release(course: Path, assignments: list[str] | None = None, db_url: str | None = None) -> list[str]:
    """Generate the student version of every assignment into exercises/ (and the gradebook).

    Due dates come from the course's schedule.toml (instructor/schedule.py) and go into the gradebook.
    """
    from instructor.schedule import SCHEDULE, load_schedule, set_due_dates

    grader = Grader(course, db_url)
    names = assignments or assignments_of(course)
    due = load_schedule(Path(course) / SCHEDULE, assignments_of(course))
    for name in names:
        grader.generate(name)
        when = f", due {due[name]:%Y-%m-%d %H:%M} UTC" if name in due else ", no due date in schedule.toml"
        print(f"released {name} -> exercises/{name}{when}")
    set_due_dates(grader.coursedir.db_url, {name: due[name] for name in names if name in due})
    return names


def import_submissions(course: Path, submissions: Path, assignments: list[str]) -> list[Job]:
    """Copy a folder of collected notebooks into the course's submitted/; one Job per notebook found."""
    submitted = course / "submitted"
    jobs = []
    same = submissions.resolve() == submitted.resolve()
    for student_dir in sorted(p for p in submissions.iterdir() if p.is_dir()):
        student = student_dir.name
        for assignment in assignments:
            notebooks = sorted((student_dir / assignment).glob("*.ipynb")) or sorted(student_dir.glob(f"{assignment}.ipynb"))
            if not notebooks:
                continue
            if not same:
                dest = submitted / student / assignment
                shutil.rmtree(dest, ignore_errors=True)
                dest.mkdir(parents=True)
                for nb in notebooks:
                    shutil.copy2(nb, dest / nb.name)
                stamp = student_dir / assignment / "timestamp.txt"  # when it was handed in (late penalties)
                if stamp.exists():
                    shutil.copy2(stamp, dest / stamp.name)
            jobs.append(Job(assignment, student))
    return jobs


def _ordered(jobs: list[Job]) -> list[Job]:
    # Students outer, assignments inner: parallel workers rarely grade the same assignment at once.
    return sorted(jobs, key=lambda j: (j.student, j.assignment))


def autograde(
    course: Path,
    submissions: Path,
    *,
    assignments: list[str] | None = None,
    workers: int = 1,
    db_url: str | None = None,
    postgres: bool = False,
    feedback: bool = True,
    report_dir: Path | None = None,
) -> dict:
    """Grade every submission in `submissions`; feedback, CSV export and report. Returns the timings."""
    course = Path(course).resolve()
    names = assignments or assignments_of(course)
    jobs = import_submissions(course, Path(submissions), names)
    report_dir = Path(report_dir or course / "report")
    report_dir.mkdir(parents=True, exist_ok=True)
    timings: dict = {"workers": workers, "notebooks": len(jobs)}
    with ExitStack() as stack:
        if postgres:
            from instructor.postgres import LocalPostgres

            db_url = stack.enter_context(LocalPostgres(course / ".postgres")).url
        url = db_url_of(course, db_url)
        timings["database"] = url.split(":", 1)[0]
        if workers > 1 and url.startswith("sqlite"):
            raise SystemExit(
                "parallel grading needs a server database (SQLite allows one writer): "
                "pass --postgres, or --db-url postgresql://..."
            )
        start = time.perf_counter()
        _prepare_database(course, url, names, {j.student for j in jobs})
        timings["prepare_s"] = time.perf_counter() - start
        start = time.perf_counter()
        if workers <= 1:
            grader = Grader(course, url, feedback)
            done = [grader.grade(job) for job in _ordered(jobs)]
        else:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(str(course), url, feedback)) as pool:
                done = list(pool.map(_grade_in_worker, _ordered(jobs)))
        timings["grading_s"] = time.perf_counter() - start
        start = time.perf_counter()
        export_csv(course, url, report_dir / "grades.csv")
        if postgres:  # keep the grades where nbgrader's other commands look for them
            copy_gradebook(url, f"sqlite:///{course / 'gradebook.db'}")
        from instructor.report import write_report

        write_report(course, url, report_dir, names, done)
        timings["export_report_s"] = time.perf_counter() - start
    timings["jobs"] = [asdict(j) for j in done]
    (report_dir / "timings.json").write_text(json.dumps(timings, indent=1))
    failed = [j for j in done if not j.ok]
    for j in failed:
        print(f"could not grade {j.student}/{j.assignment}: {j.error}", file=sys.stderr)
    return timings


def _prepare_database(course: Path, url: str, assignments: list[str], students: set[str]) -> None:
    """Assignments and students exist before workers start, so no two workers create the same row."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(url) as gb:
        missing = []
        for name in assignments:
            try:
                gb.find_assignment(name)
            except MissingEntry:
                missing.append(name)
        for student in sorted(students):
            gb.update_or_create_student(student)
    if missing:  # e.g. a fresh server database: nbgrader records each assignment's cells when generating it
        release(course, missing, db_url=url)


def export_csv(course: Path, url: str, to: Path) -> None:
    """nbgrader's own CSV export of the gradebook (what `nbgrader export` writes)."""
    from nbgrader.api import Gradebook
    from nbgrader.plugins import CsvExportPlugin

    plugin = CsvExportPlugin(config=load_config(course, url))
    plugin.to = str(to)
    with Gradebook(url) as gb:
        plugin.export(gb)


def copy_gradebook(source_url: str, target_url: str) -> None:
    """Copy every row of one nbgrader gradebook into another (same schema), replacing its contents."""
    from nbgrader.api import Base, Gradebook
    from sqlalchemy import create_engine

    with Gradebook(target_url):  # creates the schema (and alembic stamp) if needed
        pass
    source, target = create_engine(source_url), create_engine(target_url)
    with source.connect() as src, target.begin() as dst:
        for table in reversed(Base.metadata.sorted_tables):
            dst.execute(table.delete())
        for table in Base.metadata.sorted_tables:
            rows = [dict(r._mapping) for r in src.execute(table.select())]
            if rows:
                dst.execute(table.insert(), rows)
    source.dispose()
    target.dispose()


def penalties(course: Path, assignments: list[str] | None = None, db_url: str | None = None) -> dict:
    """Recompute the late penalties from the scores as they are now (written answers graded in
    formgrader included) and store them in the gradebook; returns the ones that changed."""
    from nbgrader.api import Gradebook
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import LoggingConfigurable

    from instructor.late_penalty import late_plugin, reapply_late_penalties

    config = load_config(course, db_url)
    plugin = late_plugin(LoggingConfigurable(config=config))
    if plugin is None:
        raise SystemExit("nbgrader_config.py sets no c.AssignLatePenalties.plugin_class: no late penalties to apply")
    with Gradebook(CourseDirectory(config=config).db_url) as gb:
        changed = reapply_late_penalties(gb, plugin, assignments)
    for (assignment, student), (old, new) in sorted(changed.items()):
        print(f"{student}/{assignment}: late penalty {old:g} -> {new:g} points")
    print(f"late penalties up to date ({len(changed)} changed); regenerate the feedback of those submissions")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instructor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--course", type=Path, default=Path.cwd(), help="the course folder (holds nbgrader_config.py)")
    sub = parser.add_subparsers(dest="command", required=True)
    rel = sub.add_parser("release", help="generate every assignment's student version into exercises/")
    rel.add_argument("assignments", nargs="*")
    grade = sub.add_parser("autograde", help="grade a folder of submissions: feedback, grades.csv, report")
    grade.add_argument("submissions", type=Path)
    grade.add_argument("--assignments", nargs="*")
    grade.add_argument("--workers", type=int, default=1, help="graders in parallel (needs PostgreSQL)")
    grade.add_argument("--db-url", help="gradebook database URL (default: the course's, gradebook.db)")
    grade.add_argument("--postgres", action="store_true", help="run a private PostgreSQL server for this command")
    grade.add_argument("--no-feedback", action="store_true")
    grade.add_argument("--report", type=Path, help="report folder (default: report/)")
    grade.add_argument("--no-sandbox", action="store_true", help="run student code as you, with the network (instructor/sandbox.py)")
    pen = sub.add_parser("penalties", help="recompute late penalties after manual grading (written answers)")
    pen.add_argument("assignments", nargs="*")
    args = parser.parse_args(argv)
    if getattr(args, "no_sandbox", False):
        os.environ["LLM_COURSE_SANDBOX"] = "0"  # read by nbgrader_config.py, in this process and its workers
    course = args.course.resolve()
    if not (course / "nbgrader_config.py").exists():
        parser.error(f"{course} holds no nbgrader_config.py")
    os.chdir(course)
    sys.path.insert(0, str(course))
    if args.command == "release":
        release(course, args.assignments or None)
        return 0
    if args.command == "penalties":
        penalties(course, args.assignments or None)
        return 0
    start = time.perf_counter()
    timings = autograde(
        course,
        args.submissions,
        assignments=args.assignments,
        workers=args.workers,
        db_url=args.db_url,
        postgres=args.postgres,
        feedback=not args.no_feedback,
        report_dir=args.report,
    )
    wall = time.perf_counter() - start
    n = timings["notebooks"]
    print(
        f"graded {n} notebooks in {wall:.1f} s ({wall / max(n, 1):.2f} s per notebook, "
        f"{timings['workers']} worker(s), {timings['database']}); report in {args.report or course / 'report'}"
    )
    return 1 if any(not j["ok"] for j in timings["jobs"]) else 0
