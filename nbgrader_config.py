"""nbgrader configuration for the course.

`solutions/` holds the instructor source notebooks (with solutions and hidden
tests); `nbgrader generate_assignment` writes the student versions to
`exercises/`, which are committed. Submissions, autograded copies, feedback and
the gradebook live in folders that git and the book ignore.
"""

import os

c = get_config()  # noqa: F821 - provided by nbgrader when it loads this file

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
