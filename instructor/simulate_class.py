"""A simulated class, graded end to end, every score checked against the expected one.

    python -m instructor.simulate_class --students 30                  # all assignments, one grader, SQLite
    python -m instructor.simulate_class --students 30 --workers 2 --postgres
    python -m instructor.simulate_class --students 4 --assignments 02_tokenization 07_scaling_laws

Each (student, assignment) gets, from a seeded draw: the reference solution,
planted bugs from ``tests/mutants/`` in one or two functions, the untouched
exercise, no submission at all, or a hostile submission (:data:`HOSTILE`, in one
function, the others correct: tampering with the grader, calling the reference by
any route, switching off the test cells, pasting the book's reference). Where
``tests/similarity_samples.py`` has independent correct solutions of a chapter's
functions, student s01 hands those in, and s02 copies one of them from s01,
disguised (renamed variables, comments, reordered statements): the grade report's
similarity section must list that pair, and no other pair with s01's own work.
Students s03 and s04 try the attacks of issue 13 (:data:`NEW_CHEATS`), a different
one on each function that no other function calls, all but one per notebook.
The expected score of every test cell comes from running the instructor's
notebook *in this process* with the same function sources
(``instructor.harness.run_in_process``; a hostile function that cannot run here,
or that must lose its points, is replaced by one that raises, which is what
grading must make of it).
The class is then graded by ``python -m instructor autograde`` in a temporary
course folder, and every cell's score in the gradebook is compared with the
expected one. Prints the mismatches, the planted copies the similarity report
missed, and the timings (the median per notebook, also added to the course's
report/timings.json; the class; a kernel start with ``import torch`` for scale);
``--json`` saves them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
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

from instructor import manifest  # noqa: E402
from instructor.harness import (  # noqa: E402
    ROOT as REPO,
    graded_cells,
    notebook_path,
    solution_sources,
    with_cells,
)
from instructor.manifest import CHAPTERS, mutants  # noqa: E402
from instructor.similarity import long_enough  # noqa: E402

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
    # Calling the reference by another route, switching off the test cells, pasting the book (issue 13):
    # the attacked function's cells must score 0 (it is graded as if it raised).
    "reference_dotted": "the function calls the reference by its full dotted path (import llm_course.x; llm_course.x.fn)",
    "reference_helper": "a helper function calls the reference",
    "reference_getattr": "importlib and getattr with the reference's names built from strings",
    "reference_exec_source": "the reference's source, read with inspect and exec'd",
    "input_transformer": "an IPython input transformer that strips the check_ lines; the function is the stub",
    "ast_transformer": "an IPython AST transformer that drops the check_ calls; the function is the stub",
    "book_body": "the reference as the book prints it, pasted (with the imports it needs)",
}
#: Hostile kinds graded as if the function raised (its cells, and those of functions that call it, fail).
BROKEN = {
    "system_exit", "os_exit", "kill_self", "memory_hog", "infinite_loop", "reference_dotted", "reference_helper",
    "reference_getattr", "reference_exec_source", "input_transformer", "ast_transformer",
}
#: Pasting the book's reference is correct code typed into the notebook: it is graded as written
#: (the grader matches notebook code with the reference by identity only, so that an honest answer
#: that happens to read like the reference is never zeroed), and the grade report's similarity
#: section must list it as a copy of the reference. Only functions long enough to be compared get it.
LISTED = {"book_body"}
#: Kinds that need the reference's dotted name (`reference_of`); without one, system_exit stands in.
NEEDS_REFERENCE = {"calls_reference", "reference_dotted", "reference_helper", "reference_getattr", "reference_exec_source", "book_body"}


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
    if kind in NEEDS_REFERENCE:
        module, name = reference.rsplit(".", 1)
    if kind == "reference_dotted":
        return f"import {module}\ndef {fn}({params}):\n    return {module}.{name}(*args, **kwargs)\n"
    if kind == "reference_helper":
        return (f"def _helper(*args, **kwargs):\n    from {module} import {name}\n    return {name}(*args, **kwargs)\n\n"
                f"def {fn}({params}):\n    return _helper(*args, **kwargs)\n")
    if kind == "reference_getattr":
        head, tail = module.split(".", 1)
        return (f"import importlib\ndef {fn}({params}):\n"
                f"    module = importlib.import_module('{head[:3]}' + '{head[3:]}' + '.' + '{tail}')\n"
                f"    return getattr(module, '{name[:2]}' + '{name[2:]}')(*args, **kwargs)\n")
    if kind == "reference_exec_source":
        return (f"import importlib, inspect\n_module = importlib.import_module('{module}')\n_scope = dict(vars(_module))\n"
                f"exec(inspect.getsource(_module.{name}), _scope)\n{fn} = _scope['{name}']\n")
    if kind == "input_transformer":
        return ("get_ipython().input_transformers_cleanup.append(\n"
                "    lambda lines: [line for line in lines if 'check_' not in line])\n" + stub_of(fn, solution))
    if kind == "ast_transformer":
        return ("import ast\nclass _NoChecks(ast.NodeTransformer):\n    def visit_Expr(self, node):\n"
                "        return None if 'check_' in ast.unparse(node) else node\n"
                "get_ipython().ast_transformers.append(_NoChecks())\n" + stub_of(fn, solution))
    if kind == "book_body":
        return book_body(module, name, fn)
    raise KeyError(kind)


def stub_of(fn: str, solution: str) -> str:
    """The untouched exercise: the solution's signature, raising NotImplementedError."""
    signature = solution[solution.index(f"def {fn}("):].split(":\n", 1)[0]
    return f"{signature}:\n    {STUB.replace(chr(10), chr(10) + '    ')}\n"


def book_body(module: str, name: str, fn: str) -> str:
    """The reference function as the book prints it (``literalinclude`` of llm_course), pasted, with
    an import of the module-level names it needs: what a student makes of the printed answer."""
    import ast
    import builtins
    import inspect

    source = inspect.getsource(getattr(import_module(module), name))
    tree = ast.parse(source)
    defined = {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    defined |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    needed = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
                    - defined - set(dir(builtins)) - {name})
    scope = import_module(module)
    imports = []
    for used in needed:
        if not hasattr(scope, used):  # a local the walk above does not see (`except ... as err`)
            continue
        value = getattr(scope, used)
        if inspect.ismodule(value):
            imports.append(f"import {value.__name__}" if value.__name__ == used else f"import {value.__name__} as {used}")
        else:
            imports.append(f"from {module} import {used}")
    body = source if name == fn else source.replace(f"def {name}(", f"def {fn}(", 1)
    return "".join(line + "\n" for line in imports) + body


def reference_of(chapter: str, fn: str) -> str | None:
    """'llm_course.module.fn' if the chapter's checks module imports a module of llm_course defining `fn`."""
    checks = import_module(manifest.chapter(chapter).checks)
    for value in vars(checks).values():
        if getattr(value, "__name__", "").startswith("llm_course.") and callable(getattr(value, fn, None)):
            if value.__name__ != "llm_course.grading":
                return f"{value.__name__}.{fn}"
    return None


def leaves(solution: dict[str, str]) -> list[str]:
    """The functions of a chapter that no other solution cell calls (an attack on one of them
    costs that function's points only, whatever the grader allows inside the others)."""
    return [fn for fn in solution if not any(re.search(rf"\b{fn}\b", src) for other, src in solution.items() if other != fn)]


def independent_entry(chapter: str, solution: dict[str, str], rng: random.Random) -> dict | None:
    """Independent correct solutions (tests/similarity_samples.py) of the chapter's functions that have some."""
    from tests.similarity_samples import INDEPENDENT

    own = {fn: rng.choice(sorted(INDEPENDENT[fn].values())) for fn in solution if fn in INDEPENDENT}
    if not own:
        return None
    return {"kind": "independent:" + ",".join(sorted(own)), "cells": {**solution, **own}, "broken": [], "own": sorted(own)}


def copy_entry(solution: dict[str, str], original: dict, original_student: str, rng: random.Random) -> dict:
    """One of `original`'s own functions, copied and disguised; the rest the reference."""
    from tests.similarity_samples import DISGUISES

    fn = rng.choice(original["own"])
    disguise = rng.choice(sorted(set(DISGUISES) - {"verbatim"}))
    cells = {**solution, fn: DISGUISES[disguise](original["cells"][fn])}
    return {"kind": f"copy:{fn}", "cells": cells, "broken": [], "copied": [fn, original_student, disguise]}


#: The attacks of issue 13, which students s03 and s04 mix into every notebook (one per function
#: that no other function calls), on top of the random draws of every kind.
NEW_CHEATS = ["reference_dotted", "input_transformer", "reference_helper", "ast_transformer",
              "reference_getattr", "book_body", "reference_exec_source"]


def cheats_entry(chapter: str, solution: dict[str, str], start: int) -> dict:
    """Each function that no other calls, but the last, carries another of :data:`NEW_CHEATS`
    (cycled from `start`); the last stays correct, and must keep its points."""
    cells, used = dict(solution), []
    start %= len(NEW_CHEATS)
    kinds = NEW_CHEATS[start:] + NEW_CHEATS[:start]
    targets = leaves(solution) or list(solution)[-1:]
    for i, fn in enumerate(targets[:-1] or targets):
        reference = reference_of(chapter, fn)
        choices = [k for k in kinds if (reference or k not in NEEDS_REFERENCE) and (k not in LISTED or long_enough(solution[fn]))]
        kind = choices[i % len(choices)]
        cells[fn] = hostile_source(kind, fn, solution[fn], "", reference)
        used.append((fn, kind))
    return {"kind": "cheats:" + ",".join(f"{fn}={kind}" for fn, kind in used), "cells": cells, "cheats": used,
            "fns": [fn for fn, kind in used if kind in BROKEN], "pasted": [fn for fn, kind in used if kind in LISTED]}


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
            own = independent_entry(chapter, solution, rng) if s == 1 else None
            if own:  # s01 writes their own solutions where independent ones exist
                entry = own
            elif s == 2 and plan["s01"].get(chapter) and "own" in plan["s01"][chapter]:  # s02 copies from s01
                entry = copy_entry(solution, plan["s01"][chapter], "s01", rng)
            elif s in (3, 4):  # s03 and s04 try the attacks of issue 13, a different one on each function
                tried = sum(len(e.get("cheats", [])) for c in plan.values() for e in c.values() if e)
                entry = cheats_entry(chapter, solution, tried)
            elif draw < 0.25:
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
                if kind in (BROKEN | LISTED) - {"system_exit", "os_exit", "kill_self", "memory_hog", "infinite_loop"}:
                    fn = rng.choice([f for f in leaves(solution) if kind not in LISTED or long_enough(solution[f])] or fns)
                    reference = reference_of(chapter, fn)
                if kind in NEEDS_REFERENCE and reference is None or kind in LISTED and not long_enough(solution[fn]):
                    kind = "system_exit"
                bug = mutants(chapter)[fn][sorted(mutants(chapter)[fn])[0]]
                cells = dict(solution)
                cells[fn] = hostile_source(kind, fn, solution[fn], bug, reference)
                entry = {"kind": f"{kind}:{fn}", "cells": cells, "fn": fn, "bug": bug, "pasted": [fn] if kind in LISTED else []}
            plan[student][chapter] = entry
    return plan


def expected_scores(chapter: str, entry: dict, cache: dict) -> dict[str, float]:
    """grade_id -> expected points, from running the instructor notebook in this process."""
    from instructor.harness import run_in_process

    points = graded_cells(chapter)
    if entry["cells"] is None:
        return {k: 0.0 for k in points}
    kind = entry["kind"].split(":")[0]
    cells = dict(entry["cells"])
    forced_fail = set()
    if kind in BROKEN or kind == "cheats":
        for fn in entry["fns"] if kind == "cheats" else [entry["fn"]]:
            cells[fn] = f"def {fn}(*args, **kwargs):\n    raise NotImplementedError()\n"
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


def write_submissions(folder: Path, plan: dict, exercises: Path = REPO / "exercises") -> None:
    """The students' notebooks: the released exercise (`exercises`, the course's release) with their cells."""
    import nbformat

    for student, chapters in plan.items():
        for chapter, entry in chapters.items():
            if entry is None:
                continue
            exercise = nbformat.read(notebook_path(exercises, chapter), as_version=4)
            nb = exercise if entry["cells"] is None else with_cells(exercise, entry["cells"])
            dest = folder / student / chapter
            dest.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, dest / notebook_path(exercises, chapter).name)


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
    write_submissions(folder / "collected", plan, course / "exercises")
    start = time.perf_counter()
    timings = autograde(course, folder / "collected", assignments=assignments, workers=workers, postgres=postgres, feedback=feedback)
    class_s = time.perf_counter() - start

    # Per-cell scores, from the gradebook nbgrader wrote (SQLite: with --postgres its copy).
    from nbgrader.api import Gradebook

    graded: dict = {}
    written_problems: list[str] = []
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for chapter in assignments:
            for submission in gb.find_assignment(chapter).submissions:
                grades = [g for nb in submission.notebooks for g in nb.grades]
                graded[(submission.student.id, chapter)] = {g.name: float(g.score) for g in grades if g.cell.cell_type == "code"}
                # Written answers (Markdown cells) are graded by a person; no simulated student writes
                # one, so each must be scored 0 ("No response.") and be off formgrader's to-do list.
                pending = sorted(g.name for g in grades if g.cell.cell_type != "code" and (g.needs_manual_grade or g.score))
                if pending:
                    written_problems.append(f"{submission.student.id}/{chapter}: written answers {pending} not scored 0")
    mismatches = list(written_problems)
    for key, want in expected.items():
        got = graded.get(key)
        if got != want:
            student, chapter = key
            diff = {k: (None if got is None else got.get(k), v) for k, v in want.items() if got is None or got.get(k) != v}
            mismatches.append(f"{student}/{chapter} [{plan[student][chapter]['kind']}]: got/expected {diff}")
    jobs = [j for j in timings["jobs"] if j["ok"]]
    per_notebook = [j["autograde_s"] + j["feedback_s"] for j in jobs]
    copies = check_copies(plan, course / "report" / "similarity.json")
    # The per-notebook figure, beside nbgrader's own timings (report/timings.json).
    stamp = course / "report" / "timings.json"
    saved = json.loads(stamp.read_text())
    saved["per_notebook_median_s"] = round(statistics.median(per_notebook), 2) if jobs else None
    saved["autograde_median_s"] = round(statistics.median(j["autograde_s"] for j in jobs), 2) if jobs else None
    stamp.write_text(json.dumps(saved, indent=1))
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
        "copies_planted": copies["planted"],
        "copies_missed": copies["missed"],
        "honest_work_listed": copies["honest_listed"],
        "similar_pairs_listed": copies["listed"],
        "folder": str(folder),
    }
    return result


def check_copies(plan: dict, similarity_json: Path) -> dict:
    """The planted copies the similarity report lists or misses, and the pairs it lists with an
    independent student's own work other than the copy of it."""
    pairs = json.loads(similarity_json.read_text())["pairs"]
    listed = {(p["assignment"], p["function"], frozenset((p["a"], p["b"]))) for p in pairs}
    with_reference = {(p["assignment"], p["function"], p["a"]) for p in pairs if p["b_is_reference"]}
    planted, missed, honest = [], [], []
    for student, chapters in plan.items():
        for chapter, entry in chapters.items():
            for fn in (entry or {}).get("pasted", []):
                planted.append(f"{chapter}/{fn}: {student} pasted the book's reference")
                if (chapter, fn, student) not in with_reference:
                    missed.append(planted[-1])
            if entry and "copied" in entry:
                fn, original, disguise = entry["copied"]
                planted.append(f"{chapter}/{fn}: {student} copied {original} ({disguise})")
                if (chapter, fn, frozenset((student, original))) not in listed:
                    missed.append(planted[-1])
            if entry and "own" in entry:
                copiers = {s for s, c in plan.items() if c.get(chapter) and c[chapter].get("copied", [None, None])[1] == student}
                for a, fn, who in listed:
                    if a == chapter and fn in entry["own"] and student in who and not (who - {student}) <= copiers:
                        honest.append(f"{chapter}/{fn}: {' and '.join(sorted(who))}")
    return {"planted": planted, "missed": missed, "honest_listed": honest, "listed": len(pairs)}


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
    return 1 if result["mismatches"] or result["ungraded"] or result["copies_missed"] or result["honest_work_listed"] else 0


if __name__ == "__main__":
    sys.exit(main())
