"""A simulated class, graded end to end, every score checked against the expected one.

    python -m instructor.simulate_class --students 30                  # all assignments, one grader, SQLite
    python -m instructor.simulate_class --students 30 --workers 2 --postgres
    python -m instructor.simulate_class --students 4 --assignments 02_tokenization 07_scaling_laws

Each (student, assignment) gets, from a seeded draw: the reference solution,
planted bugs from ``tests/mutants/`` in one or two functions, the untouched
exercise, no submission at all, or a hostile submission (:data:`HOSTILE`, in one
function, the others correct). The expected score of every test cell comes from
running the instructor's notebook *in this process* with the same function
sources (``tests.test_graders.run_in_process``; a hostile function that cannot
run here is replaced by one that raises, which is what grading must make of it).
The class is then graded by ``python -m instructor autograde`` in a temporary
course folder, and every cell's score in the gradebook is compared with the
expected one. Prints the mismatches and the timings (per notebook, for the class,
and a kernel start with ``import torch`` for scale); ``--json`` saves them.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from importlib import import_module
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.chapters import CHAPTERS, mutants  # noqa: E402
from tests.nbgrader_harness import (  # noqa: E402
    ROOT as REPO,
    graded_cells,
    notebook_path,
    solution_sources,
    with_cells,
)

STUB = "# YOUR CODE HERE\nraise NotImplementedError()"

#: name -> (description, how to build the cell from (fn, solution source), what grading must make of it)
#: "broken": the function's cells (and those of functions that call it) fail, as if it raised.
#: "as_mutant": graded exactly like the planted bug it carries. "first_call": the first test cell
#: that calls it fails (output limit), the rest pass.
HOSTILE = {
    "patch_checks": "replaces checks.check_<fn>, llm_course.grading.fail and .call by no-ops, with a planted bug",
    "system_exit": "the function raises SystemExit",
    "os_exit": "the function calls os._exit(1) (the kernel dies)",
    "kill_self": "the function sends SIGKILL to its own process",
    "memory_hog": "the function allocates 16 GiB",
    "print_flood": "the function prints 3 MB on its first call, then works",
    "calls_reference": "the function calls the course's reference implementation",
    "infinite_loop": "the function never returns",
}


def hostile_source(kind: str, fn: str, solution: str, bug: str, reference: str | None) -> str:
    params = "*args, **kwargs"
    if kind == "patch_checks":
        return (
            "import llm_course.grading as _g\n_g.fail = lambda *a, **k: None\n_g.call = lambda f, *a, **k: f(*a, **k)\n"
            f"checks.check_{fn} = lambda *a, **k: print('all good')\n" + bug
        )
    if kind == "system_exit":
        return f"def {fn}({params}):\n    raise SystemExit(0)\n"
    if kind == "os_exit":
        return f"import os\ndef {fn}({params}):\n    os._exit(1)\n"
    if kind == "kill_self":
        return f"import os, signal\ndef {fn}({params}):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    if kind == "memory_hog":
        return f"def {fn}({params}):\n    hog = bytearray(16 * 2**30)\n    return hog\n"
    if kind == "print_flood":
        return f"_flood = [True]\n{solution}\n_real_{fn} = {fn}\ndef {fn}({params}):\n    if _flood:\n        _flood.pop()\n        print('x' * 3_000_000)\n    return _real_{fn}(*args, **kwargs)\n"
    if kind == "calls_reference":
        module, name = reference.rsplit(".", 1)
        return f"from {module} import {name} as _ref\ndef {fn}({params}):\n    return _ref(*args, **kwargs)\n"
    if kind == "infinite_loop":
        return f"def {fn}({params}):\n    while True:\n        pass\n"
    raise KeyError(kind)


def reference_of(chapter: str, fn: str) -> str | None:
    """'llm_course.module.fn' if the chapter's checks module imports a module of llm_course defining `fn`."""
    checks = import_module(f"llm_course.grading.{CHAPTERS[chapter].rsplit('.', 1)[1]}")
    for value in vars(checks).values():
        if getattr(value, "__name__", "").startswith("llm_course.") and callable(getattr(value, fn, None)):
            if value.__name__ != "llm_course.grading":
                return f"{value.__name__}.{fn}"
    return None


def plan_class(students: int, assignments: list[str], seed: int) -> dict:
    """student -> assignment -> {"kind": ..., "cells": {fn: source}, "expect": how} (None: no submission)."""
    rng = random.Random(seed)
    plan: dict = {}
    hostile_kinds = list(HOSTILE)
    for s in range(students):
        student = f"s{s:02d}"
        plan[student] = {}
        for chapter in assignments:
            solution = solution_sources(chapter)
            fns = list(solution)
            draw = rng.random()
            if s == 0:
                draw = 0.0  # one student gets everything right
            if draw < 0.25:
                entry = {"kind": "correct", "cells": dict(solution), "broken": []}
            elif draw < 0.55:
                picked = rng.sample(fns, k=min(len(fns), rng.choice([1, 2])))
                cells = dict(solution)
                for fn in picked:
                    cells[fn] = mutants(chapter)[fn][rng.choice(sorted(mutants(chapter)[fn]))]
                entry = {"kind": "bugs:" + ",".join(picked), "cells": cells, "broken": []}
            elif draw < 0.65:
                entry = {"kind": "empty", "cells": None, "broken": []}
            elif draw < 0.70:
                entry = None
            else:
                kind = hostile_kinds[(s + len(plan[student])) % len(hostile_kinds)]
                fn = rng.choice(fns)
                reference = reference_of(chapter, fn)
                if kind == "calls_reference" and reference is None:
                    kind = "system_exit"
                bug = mutants(chapter)[fn][sorted(mutants(chapter)[fn])[0]]
                cells = dict(solution)
                cells[fn] = hostile_source(kind, fn, solution[fn], bug, reference)
                entry = {"kind": f"{kind}:{fn}", "cells": cells, "fn": fn, "bug": bug}
            plan[student][chapter] = entry
    return plan


def expected_scores(chapter: str, entry: dict, cache: dict) -> dict[str, float]:
    """grade_id -> expected points, from running the instructor notebook in this process."""
    from tests.test_graders import run_in_process

    points = graded_cells(chapter)
    if entry["cells"] is None:
        return {k: 0.0 for k in points}
    kind = entry["kind"].split(":")[0]
    cells = dict(entry["cells"])
    forced_fail = set()
    if kind in {"system_exit", "os_exit", "kill_self", "memory_hog", "infinite_loop"}:
        cells[entry["fn"]] = f"def {entry['fn']}(*args, **kwargs):\n    raise NotImplementedError()\n"
    elif kind == "patch_checks":
        cells[entry["fn"]] = entry["bug"]
    elif kind == "print_flood":
        cells[entry["fn"]] = solution_sources(chapter)[entry["fn"]]
        forced_fail.add(f"test_{entry['fn']}")
    key = (chapter, tuple(sorted(cells.items())))
    if key not in cache:
        cache[key] = run_in_process(chapter, cells)
    outcome = cache[key]
    return {k: 0.0 if (outcome.get(k) is not None or k in forced_fail) else p for k, p in points.items()}


def write_submissions(folder: Path, plan: dict) -> None:
    import nbformat

    for student, chapters in plan.items():
        for chapter, entry in chapters.items():
            if entry is None:
                continue
            exercise = nbformat.read(notebook_path(REPO / "exercises", chapter), as_version=4)
            nb = exercise if entry["cells"] is None else with_cells(exercise, entry["cells"])
            dest = folder / student / chapter
            dest.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, dest / notebook_path(REPO / "exercises", chapter).name)


def kernel_and_torch_seconds(repeats: int = 3) -> float:
    """Median wall time of: start a Python kernel, `import torch` in it, shut it down."""
    from jupyter_client.manager import start_new_kernel

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        km, kc = start_new_kernel(kernel_name="python3", extra_arguments=["--HistoryManager.hist_file=:memory:"])
        kc.execute_interactive("import torch", timeout=120)
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_course(path: Path, assignments: list[str]) -> Path:
    """A course folder: the config, instructor/ and the solutions of `assignments`, released."""
    from instructor.course import release

    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "nbgrader_config.py", path / "nbgrader_config.py")
    shutil.copytree(REPO / "instructor", path / "instructor", ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    for chapter in assignments:
        shutil.copytree(REPO / "solutions" / chapter, path / "solutions" / chapter, dirs_exist_ok=True)
    release(path, assignments)
    return path


def simulate(
    students: int,
    assignments: list[str],
    *,
    workers: int = 1,
    postgres: bool = False,
    seed: int = 0,
    folder: Path | None = None,
    feedback: bool = True,
) -> dict:
    from instructor.course import autograde

    folder = Path(folder or tempfile.mkdtemp(prefix="llm-course-class-"))
    course = make_course(folder / "course", assignments)
    plan = plan_class(students, assignments, seed)
    start = time.perf_counter()
    cache: dict = {}
    expected = {
        (student, chapter): expected_scores(chapter, entry, cache)
        for student, chapters in plan.items()
        for chapter, entry in chapters.items()
        if entry is not None
    }
    oracle_s = time.perf_counter() - start
    write_submissions(folder / "collected", plan)
    start = time.perf_counter()
    timings = autograde(course, folder / "collected", assignments=assignments, workers=workers, postgres=postgres, feedback=feedback)
    class_s = time.perf_counter() - start

    # Per-cell scores, from the gradebook nbgrader wrote (SQLite: with --postgres its copy).
    from nbgrader.api import Gradebook

    graded: dict = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for chapter in assignments:
            for submission in gb.find_assignment(chapter).submissions:
                graded[(submission.student.id, chapter)] = {
                    g.name: float(g.score) for nb in submission.notebooks for g in nb.grades
                }
    mismatches = []
    for key, want in expected.items():
        got = graded.get(key)
        if got != want:
            student, chapter = key
            diff = {k: (got or {}).get(k), } if got is None else {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
            mismatches.append(f"{student}/{chapter} [{plan[student][chapter]['kind']}]: got/expected {diff}")
    jobs = [j for j in timings["jobs"] if j["ok"]]
    per_notebook = [j["autograde_s"] + j["feedback_s"] for j in jobs]
    result = {
        "students": students,
        "assignments": assignments,
        "notebooks": len(expected),
        "workers": workers,
        "database": timings["database"],
        "mismatches": mismatches,
        "ungraded": [f"{j['student']}/{j['assignment']}: {j['error']}" for j in timings["jobs"] if not j["ok"]],
        "class_wall_s": round(class_s, 1),
        "grading_wall_s": round(timings["grading_s"], 1),
        "oracle_s": round(oracle_s, 1),
        "autograde_median_s": round(statistics.median(j["autograde_s"] for j in jobs), 2) if jobs else None,
        "feedback_median_s": round(statistics.median(j["feedback_s"] for j in jobs), 2) if jobs else None,
        "per_notebook_median_s": round(statistics.median(per_notebook), 2) if jobs else None,
        "class_s_per_notebook": round(timings["grading_s"] / max(len(jobs), 1), 2),
        "per_assignment_median_s": {
            a: round(statistics.median(j["autograde_s"] for j in jobs if j["assignment"] == a), 2)
            for a in assignments if any(j["assignment"] == a for j in jobs)
        },
        "kinds": sorted({e["kind"].split(":")[0] for c in plan.values() for e in c.values() if e}),
        "folder": str(folder),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--assignments", nargs="*", default=None, help="default: every registered chapter")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--no-feedback", action="store_true")
    parser.add_argument("--json", type=Path, help="save the figures here")
    args = parser.parse_args(argv)
    assignments = args.assignments or list(CHAPTERS)
    baseline = kernel_and_torch_seconds()
    result = simulate(args.students, assignments, workers=args.workers, postgres=args.postgres,
                      seed=args.seed, folder=args.folder, feedback=not args.no_feedback)
    result["kernel_and_torch_s"] = round(baseline, 2)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 1 if result["mismatches"] or result["ungraded"] else 0


if __name__ == "__main__":
    sys.exit(main())
