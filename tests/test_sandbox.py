"""The sandboxed grading kernel (instructor/sandbox.py): what it stops, through real grading.

`test_attacks_fail_only_their_cells`: one batch of chapter 02 through `python -m instructor
autograde`'s code: the reference solution, and submissions whose decode() attacks the machine
before decoding correctly. Under the sandbox each attack raises inside decode, so decode's tests
score zero and every other function keeps full marks. Without the sandbox, as root, these attacks
succeed (the network one where the machine has network) and decode would keep its marks.

`test_kernel_attacks_fail_only_their_cells`: the sandboxed kernel alone (nbclient), for what
grading's own checks already refuse inside a graded function (raising limits, forking): each
attack fails in its cell, and the same kernel runs the next cells.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nbformat
import pytest

from instructor import sandbox
from instructor.harness import Course, grade_id, solution_sources, with_cells
from instructor.sandbox_launch import below, closed_ancestor, outermost

CHAPTER = "02_tokenization"
FUNCTIONS = ["get_pair_counts", "merge", "train", "encode", "decode"]

#: attack run by decode() before it decodes -> (what decode's test cells must show, what stops it).
#: Raising limits and fork bombs are stopped earlier by grading's own check of what a graded function
#: calls (llm_course.grading); the kernel-level test below tries them against the sandbox itself.
ATTACKS = {
    "network": (
        "getattr(load('so' + 'cket'), 'create_' + 'connection')(('1.1.1.1', 53), 5).close()",
        {"Network is unreachable"},
        "no network: its own network namespace",
    ),
    "write_gradebook": (
        "getattr(load('i' + 'o'), 'op' + 'en')('../../../gradebook.db', 'r+b').write(b'garbage')",
        {"PermissionError"},
        "the gradebook is hidden behind an empty read-only file",
    ),
    "write_course": (
        "getattr(load('i' + 'o'), 'op' + 'en')('../../../nbgrader_config.py', 'a').write('c.Execute.timeout = 1\\n')",
        {"Read-only file system", "Permission denied"},  # another user's file, on a read-only mount
        "the course is mounted read-only",
    ),
    "read_solutions": (
        f"print(getattr(load('i' + 'o'), 'op' + 'en')('../../../solutions/{CHAPTER}/{CHAPTER}.ipynb').read()[:300])",
        {"FileNotFoundError"},
        "solutions/ is hidden",
    ),
}


def attack_source(case: str) -> str:
    """The decode cell of a submission: the reference decode, wrapped by a decode that attacks first.

    The attack reaches its modules by computed names (``__import__("so" + "cket")``, ``io.open``
    rather than IPython's ``open``), as a determined submission would; grading's own watch of what a
    graded function calls lets sockets and files through, and the sandbox must hold.
    """
    body = "\n".join("    " + line for line in ATTACKS[case][0].splitlines())
    return (
        f"{solution_sources(CHAPTER)['decode']}\n_decode = decode\n\n"
        f"def decode(ids, merges):\n    load = __builtins__['__import__'] if isinstance(__builtins__, dict) else __builtins__.__import__\n"
        f"{body}\n    return _decode(ids, merges)\n"
    )


def _sandbox_available() -> str:
    try:
        sandbox.check_available("nobody")
    except sandbox.SandboxUnavailable as err:
        return str(err)
    return ""


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.skipif(bool(_sandbox_available()), reason=_sandbox_available() or "available")
def test_attacks_fail_only_their_cells(tmp_path):
    from instructor.course import autograde, release

    course = Course(tmp_path / "course", CHAPTER)
    release(course.path, [CHAPTER])
    exercise = course.student_notebook()
    solution = solution_sources(CHAPTER)
    collected = tmp_path / "collected"
    name = f"{CHAPTER}.ipynb"
    students = {"reference": solution}
    students.update({case: {**solution, "decode": attack_source(case)} for case in ATTACKS})
    for student, cells in students.items():
        (collected / student / CHAPTER).mkdir(parents=True)
        nbformat.write(with_cells(exercise, cells), collected / student / CHAPTER / name)
    config = course.path / "nbgrader_config.py"
    before = _digest(config)

    timings = autograde(course.path, collected, assignments=[CHAPTER], feedback=False)

    assert all(job["ok"] for job in timings["jobs"]), timings["jobs"]
    results = course.results()  # reading the gradebook also shows it was not overwritten
    assert set(results) == set(students)
    assert results["reference"].total == results["reference"].total_max
    for case, (_, errors, why) in ATTACKS.items():
        score = results[case].score
        for fn in FUNCTIONS[:-1]:
            assert score[f"test_{fn}"] + score[f"test_{fn}_hidden"] == results["reference"].score[f"test_{fn}"] + results[
                "reference"
            ].score[f"test_{fn}_hidden"], f"{case}: {fn} must keep full marks ({score})"
        assert score["test_decode"] == score["test_decode_hidden"] == 0, f"{case} ({why}): {score}"
        graded = nbformat.read(course.path / "autograded" / case / CHAPTER / name, as_version=4)
        outputs = [o for c in graded.cells if grade_id(c) in ("test_decode", "test_decode_hidden") for o in c.outputs]
        shown = " ".join(str(o.get("ename", "")) + " " + str(o.get("evalue", "")) + " " + o.get("text", "") + " ".join(o.get("traceback", [])) for o in outputs)
        assert any(e in shown for e in errors), f"{case} ({why}): decode's tests should show one of {errors}, got {shown[:2000]}"
    assert _digest(config) == before
    # The working folders belong to the grader again.
    for path in (course.path / "autograded").rglob("*"):
        assert path.stat().st_uid == os.geteuid(), path


def test_unavailable_says_why_and_how_to_go_without(monkeypatch):
    sandbox.check_available.cache_clear()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(sandbox.SandboxUnavailable, match="must be started by root.*--no-sandbox"):
        sandbox.check_available("nobody")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(sandbox.SandboxUnavailable, match="unshare"):
        sandbox.check_available("nobody")
    monkeypatch.undo()
    sandbox.check_available.cache_clear()
    with pytest.raises(sandbox.SandboxUnavailable, match="does not exist"):
        sandbox.check_available("no-such-user-llm-course")


def test_disabled_kernel_manager_starts_ordinary_kernels():
    km = sandbox.SandboxKernelManager(enabled=False)
    assert km.transport == "tcp" and km._rundir is None


def test_launcher_path_helpers(tmp_path):
    closed = tmp_path / "closed"
    (closed / "inner" / "deep").mkdir(parents=True)
    closed.chmod(0o700)
    try:
        assert closed_ancestor(str(closed / "inner" / "deep")) in {str(closed), closed_ancestor(str(tmp_path))}
        assert closed_ancestor("/usr/bin") is None
    finally:
        closed.chmod(0o755)
    a, b = str(tmp_path / "a"), str(tmp_path / "a" / "b")
    os.makedirs(b)
    assert outermost([b, a, a]) == [a]
    assert below(b, a) and below(a, a) and not below(a + "x", a)


KERNEL_CELLS = [  # (source, what its output must show); each attack fails in its own cell, the kernel goes on
    ("import os, resource\nkept = 42\nprint(os.getuid(), [resource.getrlimit(r) for r in "
     "(resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE)])", None),
    ("resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))", "ValueError"),
    ("resource.setrlimit(resource.RLIMIT_NPROC, (10**6, 10**6))", "ValueError"),
    ("open('big.bin', 'wb').write(bytes(3 * 2**20))", "File too large"),
    ("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=5)", "Network is unreachable"),
    ("while True:\n    os.fork()", "*"),  # ends at the process limit or by its timeout; either fails the cell
    # The bomb's copies are gone (and reaped) before the next cell starts: the process limit counts them.
    ("def state(pid):\n    try:\n        return open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0]\n"
     "    except OSError:\n        return 'gone'\n"
     "print('others', sum(state(p) not in ('Z', 'gone') for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getpid())))",
     None),
    ("import threading\nt = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\nprint('alive', kept)", None),
]


@pytest.mark.slow
@pytest.mark.skipif(bool(_sandbox_available()), reason=_sandbox_available() or "available")
def test_kernel_attacks_fail_only_their_cells(tmp_path):
    """The sandboxed kernel itself: hard limits, no network, a fork bomb; the same kernel runs on."""
    import pwd

    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook
    from traitlets.config import Config

    limits = {"address_space": 4 * 2**30, "cpu_seconds": 600, "processes": 128, "file_size": 2**20}
    nb = new_notebook(cells=[new_code_cell(source) for source, _ in KERNEL_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    client = NotebookClient(
        nb, kernel_manager_class=sandbox.SandboxKernelManager, config=Config({"SandboxKernelManager": limits}),
        timeout=20, interrupt_on_timeout=True, allow_errors=True, resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    shown = [" ".join(str(o.get(k, "")) for o in cell.outputs for k in ("text", "ename", "evalue")) for cell in nb.cells]
    nobody = pwd.getpwnam("nobody").pw_uid
    hard = [limits[k] for k in ("address_space", "cpu_seconds", "processes", "file_size")]
    assert shown[0].split()[0] == str(nobody), shown[0]
    assert str([(v, v) for v in hard]).replace(" ", "") in shown[0].replace(" ", ""), shown[0]
    for (source, expected), text in zip(KERNEL_CELLS[1:-3], shown[1:-3]):
        assert expected in text, f"{source!r} should fail with {expected!r}, showed {text[:500]!r}"
    assert shown[-2].split() == ["others", "0"], shown[-2]
    assert shown[-1].split() == ["thread", "alive", "42"], shown[-1]  # the same kernel, threads still start
    assert (tmp_path / "big.bin").stat().st_size <= 2**20
    assert tmp_path.stat().st_uid == os.geteuid()  # the working folder is given back


def test_the_kernel_is_shown_the_folder_llm_course_is_imported_from():
    """An editable install finds `llm_course` through an import hook, not `sys.path`: a checkout below
    `/tmp` (as CI's clones may be) was hidden by the kernel's private `/tmp`, and every cell of every
    graded notebook failed with ModuleNotFoundError. The package folder itself is revealed."""
    import llm_course

    package = Path(llm_course.__file__).resolve().parent
    assert package in [Path(p).resolve() for p in sandbox._package_folders()]
