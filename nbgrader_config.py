"""nbgrader configuration for the course.

`solutions/` holds the instructor source notebooks (with solutions and hidden
tests); `nbgrader generate_assignment` writes the student versions to
`exercises/`, which are committed. Submissions, autograded copies, feedback and
the gradebook live in folders that git and the book ignore.
"""

import os
import sys

c = get_config()  # noqa: F821 - provided by nbgrader when it loads this file

# The grading additions live in instructor/ next to this file (see instructor/preprocessors.py).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.course_id = "llm-course"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
# Every assignment folder holds one notebook; nothing else is copied to students.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "*.json", "*.pt", "*.safetensors"]

# Student code runs in the grading kernel: a cell that runs longer than this is
# interrupted and scores zero, and the rest of the notebook still runs.
c.Execute.timeout = 60
c.Execute.interrupt_on_timeout = True

# Autograding runs student code in a sandboxed kernel (instructor/sandbox.py): as the user
# `nobody`, without network, under hard limits, with the course read-only and the gradebook,
# solutions and other submissions hidden. It needs root and Linux namespaces; elsewhere grading
# stops with an error that says so. LLM_COURSE_SANDBOX=0, `--SandboxKernelManager.enabled=False`
# or `python -m instructor autograde --no-sandbox` grade without it. Only RobustExecute, the
# autograde step, uses it: `nbgrader validate` and the book run ordinary kernels.
c.RobustExecute.kernel_manager_class = "instructor.sandbox.SandboxKernelManager"
c.SandboxKernelManager.enabled = os.environ.get("LLM_COURSE_SANDBOX", "1") != "0"
c.SandboxKernelManager.user = "nobody"
c.SandboxKernelManager.address_space = 6 * 2**30  # bytes; at least GuardChecks.memory_limit
c.SandboxKernelManager.cpu_seconds = 1800  # CPU seconds per kernel
c.SandboxKernelManager.processes = 1024  # processes and threads of the sandbox user, all kernels (fork bombs)
c.SandboxKernelManager.file_size = 256 * 2**20  # bytes per file written

# Test cells a student deleted are put back, and edited ones are restored from
# the database, before grading.
c.OverwriteCells.add_missing_cells = True

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Autograde is nbgrader's pipeline with three additions (instructor/preprocessors.py): the
# checks are loaded before any student code runs (monkeypatching them changes nothing),
# the kernel has a memory limit, a kernel that dies fails only the cell it died in, and
# a cell that prints more than 200 kB fails. Output beyond 1000 lines is cut (LimitOutput).
c.Autograde.autograde_preprocessors = [
    "instructor.preprocessors.GuardChecks",
    "instructor.preprocessors.RobustExecute",
    "instructor.preprocessors.SealOutputs",
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
c.GuardChecks.memory_limit = 6 * 2**30  # bytes of address space for the grading kernel

# One grader uses the SQLite gradebook (the default, gradebook.db here). Grading
# students in parallel needs a server database, e.g.
#   c.CourseDirectory.db_url = "postgresql://user@localhost/llm_course"
# or `python -m instructor autograde --workers 4 --db-url postgresql://...`.

# The executed notebook is saved before the kernel is shut down: no need to wait ~0.7 s
# for a graceful shutdown of every grading kernel.
c.Execute.shutdown_kernel = "immediate"

# The exchange (nbgrader's default one: a folder every user of the hub can write) through which
# students fetch assignments and submit, and get their feedback back. nbgrader's default location,
# or $LLM_COURSE_EXCHANGE. Students' own nbgrader_config.py (e.g. /etc/jupyter/) names the same
# root and course_id ("Running a term" in README.md).
c.Exchange.root = os.environ.get("LLM_COURSE_EXCHANGE", "/usr/local/share/nbgrader/exchange")

# Late submissions (nbgrader's AssignLatePenalties step, in the autograde list above): 10 % of
# the notebook's score per started day after the due date, at most 50 %
# (instructor/late_penalty.py). Due dates come from schedule.toml through `make release`.
c.AssignLatePenalties.plugin_class = "instructor.late_penalty.PerDayLatePenalty"
c.PerDayLatePenalty.per_day = 0.10
c.PerDayLatePenalty.cap = 0.50
c.PerDayLatePenalty.grace_minutes = 0

# Grades for the learning-management system: `nbgrader export --exporter=instructor.lms_export.CanvasExport`
# writes Canvas's grade-import CSV, `...MoodleExport` Moodle's (instructor/lms_export.py).
