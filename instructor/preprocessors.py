"""What grading adds to nbgrader's autograde pipeline (configured in ``nbgrader_config.py``).

nbgrader's ``Autograde`` runs a list of preprocessors on each submitted notebook;
the course's list is nbgrader's own with three additions:

``GuardChecks`` (before execution)
    Keeps only the definitions of the student's code cells (every code cell that is
    not a test cell or a locked cell exactly as released): imports, functions,
    classes and constants (``instructor/definitions.py``); the dropped statements
    are listed in the graded notebook. Then inserts a first cell, run before
    any student code, that sets the kernel's memory limit (``RLIMIT_AS``), makes the
    student's folder unimportable, and imports the chapter's checks module
    (``llm_course.grading.<chapter>``, with the ``llm_course`` reference
    implementations it compares against), then removes that copy from
    ``sys.modules``. The student's own ``import`` statements therefore load a
    second, public copy. Each test cell is prefixed with one line that binds
    ``checks`` to the private copy, so a test cell runs the checks as they were
    before the student's code ran (an IPython ``post_run_cell`` hook gives the
    student's cells their own ``checks`` back after each test cell).

``RobustExecute`` (nbgrader's ``Execute``, plus)
    When the kernel dies in a cell (``os._exit``, ``os.kill(os.getpid(), 9)``, a
    crash, the out-of-memory killer), that cell gets an error output -- so a test
    cell scores zero --, a new kernel is started, the notebook's non-test cells
    before it are run again (their outputs discarded), and execution goes on with
    the next cell. nbgrader alone would fail the whole notebook.

``SealOutputs`` (after execution)
    Removes the guard cell and the prefix lines again (the autograded notebook
    and the feedback show the cells as released), and cuts any cell whose
    output exceeds ``max_output_chars``: that cell gets an error output too.

What this defends, and what it does not
---------------------------------------
Only definitions of the student's cells run at the top level, so a submission
cannot change how a test cell is parsed, executed or scored before the checks
run (IPython input or AST transformers, event hooks, trace functions, patched
modules). The student's code runs only inside a check's ``call``, under
``llm_course.grading.watch``: the reference and forbidden routines may not run,
capabilities (tracing, frames, ``gc``, threads, processes, signals, ``ctypes``,
IPython) are blocked, and the state the checks rely on is restored and compared
after each call. Also defended: replacing functions of the checks module, of
``llm_course.grading`` or of the reference implementations, rebinding ``checks``,
editing or deleting test cells (nbgrader restores them), ``SystemExit``, killing
the kernel, printing megabytes, allocating more memory than the limit, looping
forever. Not defended in-process: a call that reads its way to the grader's
private objects through attributes alone (``__globals__``, ``__subclasses__``),
finalizers of objects built during a call that run after it, and, when grading
runs as root, raising the memory limit again. ``instructor.report`` lists
submissions that use such means and everything grading refused or dropped.
"""

from __future__ import annotations

import copy
import re

from nbclient.exceptions import DeadKernelError
from nbclient.util import run_sync
from nbformat.v4 import new_code_cell, new_output
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Integer

from instructor.definitions import definitions_only, names_bound

GUARD_TAG = "llm-course-grading-guard"
PRIVATE_NAME = "_llm_course_private_checks"
PREFIX = f"checks = {PRIVATE_NAME}  # grading: the checks as loaded before any student code ran\n"
ORIGINAL_KEY = "llm_course_original_source"
DROPPED_KEY = "llm_course_dropped"
CHECKS_IMPORT = re.compile(r"^from llm_course\.grading import (\w+) as checks\b", re.MULTILINE)

GUARD_SOURCE = '''\
# Inserted at grading time, before any student code; removed from the graded notebook.
def _llm_course_grading_guard():
    import builtins, importlib, resource, sys
    limit = {memory_limit}
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    module = {module!r}
    if module:
        checks = importlib.import_module("llm_course.grading." + module)
        watch = importlib.import_module("llm_course.grading.watch")
        private = [m for n, m in sys.modules.items() if n == "llm_course" or n.startswith("llm_course.")]
        watch.protect(*private)  # restored after every call of student code
        watch.capabilities()
        for name in [n for n in sys.modules if n == "llm_course" or n.startswith("llm_course.")]:
            del sys.modules[name]  # the student's imports load a public copy
        setattr(builtins, {private!r}, checks)
    # The student's folder is not importable: a file handed in next to the notebook
    # (a `torch.py`, a helper with top-level code) cannot run by an import.
    import os
    here = os.path.realpath(os.getcwd())
    sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != here]
    # A test cell binds `checks` to the private copy; give the student's cells their own back.
    ip, saved, missing = get_ipython(), {{}}, object()
    def before(info):
        if info.raw_cell.startswith({prefix!r}):
            saved["checks"] = ip.user_ns.get("checks", missing)
    def after(result):
        if result.info.raw_cell.startswith({prefix!r}) and "checks" in saved:
            value = saved.pop("checks")
            if value is missing:
                ip.user_ns.pop("checks", None)
            else:
                ip.user_ns["checks"] = value
    ip.events.register("pre_run_cell", before)
    ip.events.register("post_run_cell", after)
_llm_course_grading_guard()
del _llm_course_grading_guard
'''


def _is_test_cell(cell) -> bool:
    info = cell.get("metadata", {}).get("nbgrader", {})
    return cell.cell_type == "code" and bool(info.get("grade")) and not info.get("solution")


def _is_guard(cell) -> bool:
    return GUARD_TAG in cell.get("metadata", {}).get("tags", [])


def _released_cells(resources) -> dict[str, str] | None:
    """grade_id -> source of the released notebook's locked cells (the gradebook's copy); None without one."""
    info = (resources or {}).get("nbgrader") or {}
    if not info.get("db_url"):
        return None
    from nbgrader.api import Gradebook, MissingEntry

    try:
        with Gradebook(info["db_url"]) as gb:
            notebook = gb.find_notebook(info["notebook"], info["assignment"])
            return {c.name: c.source for c in notebook.source_cells if c.locked and c.cell_type == "code"}
    except MissingEntry:
        return None


def _runs_as_written(cell, released: dict[str, str] | None) -> bool:
    """A test cell, or a locked cell exactly as released; every other code cell is the student's."""
    if _is_test_cell(cell):
        return True  # nbgrader's OverwriteCells has put back the released source
    info = cell.get("metadata", {}).get("nbgrader", {})
    if released is None:  # no gradebook (e.g. a preview): trust the metadata
        return bool(info.get("locked")) and not info.get("solution")
    return released.get(info.get("grade_id")) == cell.source


def dropped_note(dropped: list[str]) -> str:
    """The note grading adds to a student cell whose top-level statements it did not run."""
    lines = "".join(f"  {d}\n" for d in dropped)
    return (
        "Grading ran only the definitions of this cell (functions, classes, imports, constants); "
        f"it ignored:\n{lines}"
    )


class GuardChecks(NbGraderPreprocessor):
    """Insert the guard cell and bind ``checks`` to the private copy in every test cell."""

    memory_limit = Integer(
        6 * 2**30,
        help="Address-space limit of the grading kernel in bytes (RLIMIT_AS); 0 for none. "
        "An allocation beyond it raises MemoryError in the cell that made it.",
    ).tag(config=True)

    def preprocess(self, nb, resources):
        trusted = _released_cells(resources)
        student = [c for c in nb.cells if c.cell_type == "code" and not _runs_as_written(c, trusted)]
        names = names_bound([c.source for c in student])
        for cell in student:
            kept, dropped = definitions_only(cell.source, names)
            if dropped:
                cell.metadata[ORIGINAL_KEY] = cell.source
                cell.metadata[DROPPED_KEY] = dropped
                cell.source = kept
        match = next((CHECKS_IMPORT.search(c.source) for c in nb.cells if c.cell_type == "code" and CHECKS_IMPORT.search(c.source)), None)
        module = match.group(1) if match else ""
        guard = new_code_cell(
            GUARD_SOURCE.format(memory_limit=int(self.memory_limit), module=module, private=PRIVATE_NAME, prefix=PREFIX),
            metadata={"tags": [GUARD_TAG]},
        )
        for cell in nb.cells:
            if module and _is_test_cell(cell):
                cell.source = PREFIX + cell.source
        nb.cells.insert(0, guard)
        return nb, resources


class RobustExecute(Execute):
    """nbgrader's ``Execute``; a kernel that dies fails only the cell it died in."""

    max_kernel_deaths = Integer(5, help="Give up on the notebook after this many kernel deaths.").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._deaths = 0
        return super().preprocess(nb, resources, km=km)

    def preprocess_cell(self, cell, resources, index):
        try:
            return super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self._deaths += 1
            if self._deaths > self.max_kernel_deaths:
                raise
            self.log.warning("The kernel died in cell %d: restarting it and running the cells before again", index)
            cell.outputs.append(
                new_output(
                    "error",
                    ename="KernelDied",
                    evalue="the kernel died while running this cell",
                    traceback=[
                        "KernelDied: the Python process stopped while running this cell "
                        "(os._exit, a signal, a crash, or too much memory). This cell scores zero; "
                        "the rest of the notebook was graded in a new kernel."
                    ],
                )
            )
            self._restart_and_replay(index)
            return cell, resources

    def _restart_and_replay(self, index):
        run_sync(self.km.restart_kernel)(now=True)
        if self.kc is not None:
            self.kc.stop_channels()
        run_sync(self.async_start_new_kernel_client)()
        for i, earlier in enumerate(self.nb.cells[:index]):
            if earlier.cell_type != "code" or _is_test_cell(earlier):
                continue
            scratch = copy.deepcopy(earlier)
            try:
                run_sync(self.async_execute_cell)(scratch, i, store_history=False)
            except DeadKernelError:  # it dies while replaying: start once more and go on without it
                run_sync(self.km.restart_kernel)(now=True)
                self.kc.stop_channels()
                run_sync(self.async_start_new_kernel_client)()


class SealOutputs(NbGraderPreprocessor):
    """Undo ``GuardChecks``'s changes to the notebook and limit each cell's output."""

    max_output_chars = Integer(
        200_000, help="A cell printing more characters than this fails, and its output is cut."
    ).tag(config=True)
    kept_chars = Integer(5_000, help="Characters of an over-long output kept in the graded notebook.").tag(config=True)

    def preprocess(self, nb, resources):
        nb.cells = [c for c in nb.cells if not _is_guard(c)]
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            if cell.source.startswith(PREFIX):
                cell.source = cell.source[len(PREFIX) :]
            if ORIGINAL_KEY in cell.metadata:  # show the cell as handed in, and what grading ignored
                cell.source = cell.metadata.pop(ORIGINAL_KEY)
                dropped = cell.metadata[DROPPED_KEY]
                cell.outputs.insert(0, new_output("stream", name="stdout", text=dropped_note(dropped)))
            self._limit(cell)
        return nb, resources

    def _limit(self, cell):
        total = 0
        outputs = []
        over = False
        for output in cell.outputs:
            size = len(output.get("text", "")) + sum(len(str(v)) for v in output.get("data", {}).values())
            if total + size > self.max_output_chars:
                over = True
                if output.output_type == "stream" and total < self.kept_chars:
                    output.text = output.text[: self.kept_chars - total]
                    outputs.append(output)
                total += size
                continue
            total += size
            outputs.append(output)
        if over:
            outputs.append(
                new_output(
                    "error",
                    ename="OutputLimitExceeded",
                    evalue=f"this cell printed {total:,} characters",
                    traceback=[
                        f"OutputLimitExceeded: this cell printed {total:,} characters, more than the "
                        f"{self.max_output_chars:,} allowed; the output was cut and the cell scores zero."
                    ],
                )
            )
            cell.outputs = outputs
