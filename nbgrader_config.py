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
