"""Instructor tooling for the course: release, grade a whole class, report.

Everything here drives nbgrader's own commands and its gradebook database; it
adds no grading system of its own. The pieces:

- :mod:`instructor.course` -- the command line (``python -m instructor``):
  ``release`` generates every assignment, ``autograde`` grades a folder of
  collected submissions for the whole class (in parallel with a server
  database), generates the feedback and exports the gradebook and a report;
- :mod:`instructor.preprocessors` -- what grading adds to nbgrader's autograde
  pipeline: checks loaded before any student code runs, a memory limit, an
  output limit, and recovery from a kernel that dies in a cell;
- :mod:`instructor.feedback` -- feedback HTML that renders math without network;
- :mod:`instructor.report` -- score distributions and the most common failures;
- :mod:`instructor.postgres` -- a throwaway local PostgreSQL server for parallel grading;
- :mod:`instructor.sandbox` (with ``sandbox_launch`` and ``sandbox_startup``) -- the grading
  kernel's sandbox: another user, no network, hard limits, the course read-only;
- :mod:`instructor.schedule` and :mod:`instructor.late_penalty` -- due dates from
  ``schedule.toml`` and nbgrader's late-submission plugin (``python -m instructor penalties``
  applies it again once written answers have been graded in formgrader);
- :mod:`instructor.lms_export` -- nbgrader export plugins for Canvas's and Moodle's grade import;
- :mod:`instructor.simulate_class` -- a simulated class with known scores (benchmark
  and end-to-end test of all of the above).
"""
