"""The grade report ``python -m instructor autograde`` writes next to nbgrader's ``grades.csv``.

- ``scores.png``: for every assignment, the share of students with full, partial
  and no points on each exercise (an exercise = a function: its visible and hidden test);
- ``report.md``: the same as a table, the written answers waiting for a person
  (formgrader), the most common failure messages (the first
  line of the errors in the autograded notebooks' test cells), submissions that
  use means of tampering with the grader (for a human to read: the grading
  defends against the simple ones, see instructor/preprocessors.py), notebooks
  that could not be graded, and the timings.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import nbformat

SUSPICIOUS = re.compile(
    r"sys\.modules|\bbuiltins\b|\bgc\.|\bsetattr\(|\bchecks\s*\.\s*\w+\s*=|llm_course\.grading|os\._exit|os\.kill|"
    r"llm_course\.[\w.]+\s*=(?!=)|\bsignal\.|resource\.setrlimit|__import__|\bctypes\b|_llm_course_private|\bSystemExit\b|sys\.exit|"
    r"get_ipython|input_transformers|ast_transformers|\bevents\.register|settrace|setprofile|_getframe|__globals__|"
    r"__del__|weakref|\bexec\(|\beval\(|\bcompile\(|inspect\.getsource|threading|subprocess"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def exercise_of(grade_id: str) -> str:
    name = grade_id[5:] if grade_id.startswith("test_") else grade_id
    return name[: -len("_hidden")] if name.endswith("_hidden") else name


def _found(gb, assignments: list[str]):
    """(name, nbgrader assignment) of those of `assignments` the gradebook knows."""
    from nbgrader.api import MissingEntry

    for name in assignments:
        try:
            yield name, gb.find_assignment(name)
        except MissingEntry:
            continue


def gradebook_scores(url: str, assignments: list[str]) -> dict:
    """assignment -> student -> exercise -> (score, max_score); a written answer that waits for a
    person has no score yet and is left out."""
    from nbgrader.api import Gradebook

    out: dict = {}
    with Gradebook(url) as gb:
        for name, assignment in _found(gb, assignments):
            per_student = out.setdefault(name, {})
            for submission in assignment.submissions:
                scores: dict = defaultdict(lambda: [0.0, 0.0])
                for nb in submission.notebooks:
                    for grade in nb.grades:
                        if grade.needs_manual_grade and grade.manual_score is None:
                            continue
                        entry = scores[exercise_of(grade.name)]
                        entry[0] += float(grade.score)
                        entry[1] += float(grade.max_score)
                per_student[submission.student.id] = {k: tuple(v) for k, v in scores.items()}
    return out


def written_status(url: str, assignments: list[str]) -> dict:
    """(assignment, written answer) -> {"waiting": n, "graded": n, "empty": n} over the submissions:
    answered and waiting for a person in formgrader, graded by one, or left empty (0 at once)."""
    from nbgrader.api import Gradebook

    out: dict = {}
    with Gradebook(url) as gb:
        for name, assignment in _found(gb, assignments):
            for submission in assignment.submissions:
                for nb in submission.notebooks:
                    for grade in nb.grades:
                        if grade.cell.cell_type != "markdown":
                            continue
                        counts = out.setdefault((name, grade.name), {"waiting": 0, "graded": 0, "empty": 0})
                        if grade.needs_manual_grade:
                            counts["waiting"] += 1
                        elif grade.manual_score is not None:
                            counts["graded"] += 1
                        else:
                            counts["empty"] += 1
    return out


def failure_messages(course: Path, assignments: list[str]) -> Counter:
    """(assignment, exercise, message) -> how many autograded notebooks show it in a test cell."""
    counts: Counter = Counter()
    for name in assignments:
        for path in sorted((course / "autograded").glob(f"*/{name}/*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            for cell in nb.cells:
                info = cell.metadata.get("nbgrader", {})
                if cell.cell_type != "code" or not info.get("grade"):
                    continue
                for output in cell.outputs:
                    if output.output_type == "error":
                        first = ANSI.sub("", f"{output.ename}: {output.evalue}").splitlines()[0] if output.evalue else output.ename
                        counts[(name, exercise_of(info.get("grade_id", "")), first[:200])] += 1
                        break
    return counts


def suspicious_code(course: Path, assignments: list[str]) -> list[tuple[str, str, str, str]]:
    """(student, assignment, cell, what) for student cells that reach for the grader's internals."""
    found = []
    for name in assignments:
        for path in sorted((course / "submitted").glob(f"*/{name}/*.ipynb")):
            student = path.parts[-3]
            try:
                nb = nbformat.read(path, as_version=4)
            except Exception:  # noqa: BLE001 - not a notebook: reported as ungraded elsewhere
                continue
            for cell in nb.cells:
                info = cell.get("metadata", {}).get("nbgrader", {})
                if cell.cell_type != "code" or info.get("locked"):
                    continue
                hits = sorted(set(SUSPICIOUS.findall(cell.source)))
                if hits:
                    found.append((student, name, info.get("grade_id", "?"), ", ".join(hits)))
    return found


#: Messages of the grader's runtime watch (llm_course/grading/watch.py) and of the definitions filter.
REFUSED = re.compile(
    r"which a graded function may not use|changed .* while it ran|the course's reference implementation|"
    r"which the exercise asks you to write yourself|which does the whole exercise|return plain values"
)
DROPPED_NOTE = "Grading ran only the definitions of this cell"


def grader_findings(course: Path, assignments: list[str]) -> list[tuple[str, str, str, str]]:
    """(student, assignment, cell, what) for what grading itself refused or dropped.

    Read from the autograded notebooks: a test cell whose check refused a call
    (the reference, a forbidden routine, a capability, a change of state, an object
    as a result), and a student cell whose top-level statements were not run.
    """
    found = []
    for name in assignments:
        for path in sorted((course / "autograded").glob(f"*/{name}/*.ipynb")):
            student = path.parts[-3]
            nb = nbformat.read(path, as_version=4)
            for cell in nb.cells:
                if cell.cell_type != "code":
                    continue
                grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "?")
                for output in cell.outputs:
                    text = output.get("text", "") if output.output_type == "stream" else output.get("evalue", "")
                    if output.output_type == "stream" and text.startswith(DROPPED_NOTE):
                        lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
                        found.append((student, name, grade_id, "not run at grading: " + "; ".join(lines)[:300]))
                    elif output.output_type == "error" and REFUSED.search(ANSI.sub("", text)):
                        found.append((student, name, grade_id, "refused: " + ANSI.sub("", text).splitlines()[0][:300]))
    return found


def copies(course: Path, assignments: list[str], out: Path) -> list[str]:
    """The "Similar code" section: every graded function compared with the reference and the
    other students' (instructor/similarity.py); also writes out/similarity.json."""
    from instructor.similarity import report_section

    return report_section(course, assignments, out)


def plot(scores: dict, to: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in scores if scores[n]]
    cols = min(3, max(len(names), 1))
    rows = max((len(names) + cols - 1) // cols, 1)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        students = scores[name]
        exercises = sorted({e for s in students.values() for e in s}, key=lambda e: list(next(iter(students.values()))).index(e) if e in next(iter(students.values())) else 99)
        full, partial, zero = [], [], []
        for e in exercises:
            got = [s[e] for s in students.values() if e in s]
            n = max(len(got), 1)
            full.append(sum(a >= m > 0 for a, m in got) / n)
            zero.append(sum(a == 0 for a, m in got) / n)
            partial.append(1 - full[-1] - zero[-1])
        y = range(len(exercises))
        ax.barh(y, full, color="#2a9d8f", label="full")
        ax.barh(y, partial, left=full, color="#e9c46a", label="partial")
        ax.barh(y, zero, left=[f + p for f, p in zip(full, partial)], color="#e76f51", label="zero")
        ax.set_yticks(list(y), exercises, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"{name} ({len(students)} students)", fontsize=10)
        ax.set_xlabel("share of students", fontsize=8)
    if names:
        axes.flat[0].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(to, dpi=90)
    plt.close(fig)


def write_report(course: Path, url: str, out: Path, assignments: list[str], jobs) -> dict:
    course, out = Path(course), Path(out)
    scores = gradebook_scores(url, assignments)
    plot(scores, out / "scores.png")
    failures = failure_messages(course, assignments)
    flagged = suspicious_code(course, assignments) + grader_findings(course, assignments)
    lines = ["# Grade report", "", "Scores per exercise (share of students with full / partial / no points): `scores.png`.", ""]
    lines += ["| assignment | exercise | students | mean | full | zero |", "|---|---|---|---|---|---|"]
    for name, students in scores.items():
        exercises = list(next(iter(students.values()))) if students else []
        for e in exercises:
            got = [s[e] for s in students.values() if e in s]
            mean = sum(a for a, _ in got) / len(got)
            lines.append(
                f"| {name} | {e} | {len(got)} | {mean:.2f} / {got[0][1]:g} | "
                f"{sum(a >= m > 0 for a, m in got)} | {sum(a == 0 for a, _ in got)} |"
            )
    written = written_status(url, assignments)
    lines += ["", "## Written answers (graded by a person)", ""]
    if written:
        lines += ["Grade the waiting ones in formgrader (*Manual Grading*), then run `python -m instructor "
                  "penalties` and regenerate the feedback (README, \"Running a term\").", "",
                  "| assignment | answer | waiting | graded | empty (0) |", "|---|---|---|---|---|"]
        lines += [f"| {a} | {g} | {c['waiting']} | {c['graded']} | {c['empty']} |" for (a, g), c in written.items()]
    else:
        lines += ["none"]
    lines += ["", "## Most common failures", "", "| count | assignment | exercise | message |", "|---|---|---|---|"]
    for (name, exercise, message), count in failures.most_common(25):
        lines.append(f"| {count} | {name} | {exercise} | {message.replace('|', '/')} |")
    lines += ["", "## Submissions to read (code that reaches for the grader's internals)", ""]
    lines += [f"- {s} / {a} / cell `{c}`: {what}" for s, a, c, what in flagged] or ["none"]
    lines += copies(course, assignments, out)
    bad = [j for j in jobs if not j.ok]
    lines += ["", "## Notebooks that could not be graded", ""]
    lines += [f"- {j.student} / {j.assignment}: {j.error}" for j in bad] or ["none"]
    if jobs:
        auto = sorted(j.autograde_s for j in jobs if j.ok)
        feed = sorted(j.feedback_s for j in jobs if j.ok)
        if auto:
            lines += ["", "## Timings", "",
                      f"- autograde per notebook: median {auto[len(auto) // 2]:.2f} s, max {auto[-1]:.2f} s",
                      f"- feedback per notebook: median {feed[len(feed) // 2]:.2f} s"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"scores": scores, "failures": failures, "flagged": flagged}
