"""Grading time per notebook with and without the sandboxed kernel, against the committed code.

    .venv/bin/python bench/sandbox_timing.py [--chapter 01_neural_networks] [--students 3] [--rounds 2]

Three variants grade the same submissions (the chapter's instructor notebook, handed in by every
student) through `python -m instructor autograde`, in rounds, one variant after the other, so that
the load of the machine falls on all of them alike:

- ``head``: the last commit (``git archive HEAD``, never a checkout), as graded before the sandbox;
- ``no-sandbox``: this working tree with ``LLM_COURSE_SANDBOX=0``;
- ``sandbox``: this working tree as configured (the sandbox needs root).

Prints the median of nbgrader's Autograde time per notebook (``report/timings.json``) per variant
and the ratios. Not run by ``make bench`` (it takes minutes and root).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_course(tree: Path, folder: Path, chapter: str, students: int) -> None:
    folder.mkdir(parents=True)
    shutil.copy(tree / "nbgrader_config.py", folder)
    shutil.copytree(tree / "instructor", folder / "instructor", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tree / "solutions" / chapter, folder / "solutions" / chapter)
    source = next((tree / "solutions" / chapter).glob("*.ipynb"))
    for i in range(students):
        dest = folder / "collected" / f"student{i}" / chapter
        dest.mkdir(parents=True)
        shutil.copy(source, dest / source.name)


def grade(tree: Path, folder: Path, chapter: str, env: dict[str, str]) -> list[float]:
    def run(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "instructor", "--course", str(folder), *args],
                              cwd=folder, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"{tree}: {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

    run("release", chapter)
    run("autograde", "collected", "--assignments", chapter, "--no-feedback")
    jobs = json.loads((folder / "report" / "timings.json").read_text())["jobs"]
    return [job["autograde_s"] for job in jobs if job["ok"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chapter", default="01_neural_networks")
    parser.add_argument("--students", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sandbox-timing-"))
    head = work / "head"
    head.mkdir()
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(head)], input=archive, check=True)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    variants = {  # name -> (code tree, environment: the head variant imports its own llm_course)
        "head": (head, {**os.environ, "PATH": path, "PYTHONPATH": str(head), "LLM_COURSE_SANDBOX": "0"}),
        "no-sandbox": (ROOT, {**os.environ, "PATH": path, "PYTHONPATH": str(ROOT), "LLM_COURSE_SANDBOX": "0"}),
        "sandbox": (ROOT, {**os.environ, "PATH": path, "PYTHONPATH": str(ROOT), "LLM_COURSE_SANDBOX": "1"}),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, (tree, env) in variants.items():
            folder = work / f"{name}-{r}"
            make_course(tree, folder, args.chapter, args.students)
            times[name] += grade(tree, folder, args.chapter, env)
            print(f"round {r}: {name}: {[round(t, 2) for t in times[name][-args.students:]]}", flush=True)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"\n{args.chapter}, {args.students} notebooks x {args.rounds} rounds per variant; median Autograde s/notebook:")
    for name, m in medians.items():
        print(f"  {name:11s} {m:6.2f} s  (n={len(times[name])})")
    print(f"  sandbox / head       = {medians['sandbox'] / medians['head']:.2f}")
    print(f"  sandbox / no-sandbox = {medians['sandbox'] / medians['no-sandbox']:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
