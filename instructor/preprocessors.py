"""What grading adds to nbgrader's autograde pipeline (configured in ``nbgrader_config.py``).

nbgrader's ``Autograde`` runs a list of preprocessors on each submitted notebook;
the course's list is nbgrader's own with three additions:

``GuardChecks`` (before execution)
    Inserts a first cell, run before any student code, that sets the kernel's
    memory limit (``RLIMIT_AS``) and imports the chapter's checks module
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
Python code in the same process can never be fully fenced in. Defended: a
submission that replaces functions of the checks module it imported
(``checks.check_merge = lambda *a, **k: None``), of ``llm_course.grading``
(``fail``, ``call``, ``forbid_reference``) or of the reference implementations
(``llm_course.bpe.merge = merge``), rebinds the name ``checks``, edits or deletes
test cells (nbgrader restores them), raises ``SystemExit`` (the cell fails),
kills its kernel, prints megabytes, allocates more memory than the limit, or
loops forever (cell timeout and the checks' own time limit). Not defended: a
submission written against the grader's internals -- one that finds the private
copy (it is reachable, e.g. through ``builtins`` or ``gc``), patches libraries the
checks use (``torch``, ``random``, builtins), or, since the grader runs as the
user who starts it, raises its own memory limit back when that user is root.
Such code is plainly visible in the submission; ``instructor.report`` lists
submissions that use these means (``sys.modules``, ``builtins``, ``gc``,
``setattr`` on the checks, ...) for a human to read.
"""

from __future__ import annotations

import copy
import re

from nbclient.exceptions import DeadKernelError
from nbclient.util import run_sync
from nbformat.v4 import new_code_cell, new_output
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Integer

GUARD_TAG = "llm-course-grading-guard"
PRIVATE_NAME = "_llm_course_private_checks"
PREFIX = f"checks = {PRIVATE_NAME}  # grading: the checks as loaded before any student code ran\n"
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
        for name in [n for n in sys.modules if n == "llm_course" or n.startswith("llm_course.")]:
            del sys.modules[name]  # the student's imports load a public copy
        setattr(builtins, {private!r}, checks)
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


class GuardChecks(NbGraderPreprocessor):
    """Insert the guard cell and bind ``checks`` to the private copy in every test cell."""

    memory_limit = Integer(
        6 * 2**30,
        help="Address-space limit of the grading kernel in bytes (RLIMIT_AS); 0 for none. "
        "An allocation beyond it raises MemoryError in the cell that made it.",
    ).tag(config=True)

    def preprocess(self, nb, resources):
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
