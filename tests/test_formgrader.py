"""A written answer graded by a person in nbgrader's formgrader, in a real browser.

A temporary course with chapter 01: alice hands in the reference code and a written answer, and
`nbgrader autograde` grades the code and leaves the answer to a person. Then nbgrader's formgrader
runs in a Jupyter server on a free localhost port (the course's own nbgrader_config.py, as an
instructor's server would read it), and the headless Chromium of the book check
(scripts/check_book.py) does what the instructor does: opens the assignment's list of submissions
in *Manual Grading*, opens alice's, reads her answer, types a score and a comment for the written
cell, and leaves the field (formgrader saves on change). The score and the comment must then be in
the gradebook (nbgrader's API), in the Canvas export (instructor/lms_export.py: blank while the
answer waits for a person, the total after) and in the feedback (`nbgrader generate_feedback`).

Skipped only where Chromium or ChromeDriver is missing (`make browser` installs them).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instructor.harness import ROOT, Course, solution_sources, with_cells, written_answers
from instructor.report import gradebook_scores, written_status

pytestmark = pytest.mark.slow

CHAPTER = "01_neural_networks"
QUESTION = "explain_vanishing_gradients"
STUDENT = "alice"
ANSWER = (
    "Every step back multiplies the gradient by W_hh transposed and by tanh', which is at most 1, "
    "so with small weights it shrinks geometrically (marker 7f3a)."
)
SCORE = 1.5
COMMENT = "Right about the shrinking factor; say what makes the norms grow (marker c2d9)."
TOKEN = "formgrader-test-token"
WAIT_S = 20
OTHER_EXTENSIONS = (
    "jupyterlab", "notebook", "notebook_shim", "jupyter_lsp", "jupyter_server_terminals",
    "nbgrader.server_extensions.assignment_list", "nbgrader.server_extensions.course_list",
    "nbgrader.server_extensions.validate_assignment",
)


def browser_paths() -> tuple[str, str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from check_book import CHROMEDRIVER_CANDIDATES, CHROMIUM_CANDIDATES, find_executable

    chromium = find_executable("CHROMIUM", CHROMIUM_CANDIDATES, "chromium")
    chromedriver = find_executable("CHROMEDRIVER", CHROMEDRIVER_CANDIDATES, "chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("needs Chromium and ChromeDriver (make browser, or apt-get install chromium chromium-driver)")
    return chromium, chromedriver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, what: str, timeout: float = WAIT_S):
    """Poll `condition()` until it returns something true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def jupyter_env(home: Path) -> dict[str, str]:
    """The environment of an instructor's server: this interpreter's tools first on PATH (nbgrader runs
    `alembic`), and Jupyter's folders private to the test, so no user configuration leaks in."""
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "IPYTHONDIR"):
        env[name] = str(home / name.lower())
    return env


def canvas_scores(course: Course) -> dict[str, str]:
    """The Canvas export's column of the chapter, per student: the plugin `nbgrader export
    --exporter=instructor.lms_export.CanvasExport` runs (tests/test_exchange.py runs the command),
    here in this process with the course's configuration."""
    from nbgrader.api import Gradebook

    from instructor.course import load_config
    from instructor.lms_export import CanvasExport

    with Gradebook(f"sqlite:///{course.path / 'gradebook.db'}") as gb:
        CanvasExport(config=load_config(course.path), to=str(course.path / "canvas.csv")).export(gb)
    rows = list(csv.reader((course.path / "canvas.csv").open(encoding="utf-8")))
    column = rows[0].index(CHAPTER)
    return {row[3]: row[column] for row in rows[2:]}


def test_written_answer_graded_in_formgrader(tmp_path):
    chromium, chromedriver = browser_paths()
    from nbgrader.api import Gradebook

    timings = {}
    start = time.perf_counter()
    course = Course(tmp_path / "course", CHAPTER)
    course.generate()
    assert QUESTION in written_answers(CHAPTER)
    answered = with_cells(course.student_notebook(), {**solution_sources(CHAPTER), QUESTION: ANSWER})
    course.submit(STUDENT, answered)
    course.autograde()
    timings["autograde"] = time.perf_counter() - start

    db = f"sqlite:///{course.path / 'gradebook.db'}"
    with Gradebook(db) as gb:
        grade = gb.find_grade(QUESTION, CHAPTER, CHAPTER, STUDENT)
        assert grade.needs_manual_grade and grade.manual_score is None and grade.auto_score is None
        submission = gb.find_submission_notebook(CHAPTER, CHAPTER, STUDENT)
        submission_id = submission.id
        code_points = gb.find_assignment(CHAPTER).max_code_score
        assert submission.code_score == code_points > 0  # the reference code: every autograded point
    # Until a person has graded the answer, the export leaves the LMS grade alone, and the grade
    # report lists it as waiting (and leaves it out of the scores).
    assert canvas_scores(course) == {STUDENT: ""}
    assert written_status(db, [CHAPTER]) == {(CHAPTER, QUESTION): {"waiting": 1, "graded": 0, "empty": 0}}
    assert QUESTION not in gradebook_scores(db, [CHAPTER])[CHAPTER][STUDENT]

    start = time.perf_counter()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Formgrader alone: the other server extensions of the environment (JupyterLab, ...) stay off.
    env = jupyter_env(tmp_path)
    extensions = {name: False for name in OTHER_EXTENSIONS} | {"nbgrader.server_extensions.formgrader": True}
    config = Path(env["JUPYTER_CONFIG_DIR"]) / "jupyter_server_config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"ServerApp": {"jpserver_extensions": extensions}}))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.root_dir={course.path}", f"--IdentityProvider.token={TOKEN}",
         "--ServerApp.port_retries=0", *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=course.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    driver = None
    try:
        from urllib.request import urlopen

        def server_up():
            if server.poll() is not None:
                raise AssertionError(f"jupyter server exited ({server.returncode}):\n{server.stdout.read()}")
            try:
                with urlopen(f"{base}/api/status?token={TOKEN}", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(server_up, "the Jupyter server", timeout=60)
        timings["server"] = time.perf_counter() - start

        start = time.perf_counter()
        sys.path.insert(0, str(ROOT / "scripts"))
        from check_book import make_driver
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        driver = make_driver(chromium, chromedriver, tmp_path / "chromium-profile")
        # The instructor logs in with the server's token, and lands on Manual Grading > the notebook's submissions.
        driver.get(f"{base}/login?next=/formgrader/gradebook/{CHAPTER}/{CHAPTER}")
        driver.find_element(By.ID, "password_input").send_keys(TOKEN)
        driver.find_element(By.ID, "login_submit").click()
        link = wait_for(
            lambda: driver.find_elements(By.CSS_SELECTOR, f"a[href*='/formgrader/submissions/{submission_id}']"),
            "alice's submission in the list",
        )[0]
        link.click()
        score = wait_for(lambda: driver.find_elements(By.ID, QUESTION), "the score field of the written answer")[0]

        # The instructor reads the answer: it is in the written cell's panel, next to its score field.
        panel = score.find_element(By.XPATH, "./ancestor::div[contains(@class, 'nbgrader_cell')]")
        assert ANSWER in panel.text, panel.text
        assert "/ 2" in score.find_element(By.XPATH, "..").text  # the points of the question

        score.clear()
        score.send_keys(str(SCORE), Keys.TAB)  # formgrader saves a score when the field changes
        comment = driver.find_element(By.ID, f"{QUESTION}-comment")
        comment.send_keys(COMMENT, Keys.TAB)

        def saved():
            with Gradebook(db) as gb:
                g = gb.find_grade(QUESTION, CHAPTER, CHAPTER, STUDENT)
                c = gb.find_comment(QUESTION, CHAPTER, CHAPTER, STUDENT)
                return g.manual_score == SCORE and c.manual_comment == COMMENT

        wait_for(saved, "the score and the comment in the gradebook")
        # nbgrader's formgrade page loads MathJax 2 from a CDN, which the browser cannot reach here (so
        # math is not typeset and formgrade.js's MathJax hook fails); nothing else may go wrong.
        console = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert all("mathjax" in m.lower() for m in console), console
        timings["browser"] = time.perf_counter() - start
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    start = time.perf_counter()
    with Gradebook(db) as gb:
        grade = gb.find_grade(QUESTION, CHAPTER, CHAPTER, STUDENT)
        assert grade.score == SCORE and not grade.needs_manual_grade
        submission = gb.find_submission(CHAPTER, STUDENT)
        assert not submission.needs_manual_grade
        assert submission.score == pytest.approx(code_points + SCORE)
    assert canvas_scores(course) == {STUDENT: f"{code_points + SCORE:g}"}
    assert written_status(db, [CHAPTER]) == {(CHAPTER, QUESTION): {"waiting": 0, "graded": 1, "empty": 0}}
    assert gradebook_scores(db, [CHAPTER])[CHAPTER][STUDENT][QUESTION] == (SCORE, 2.0)

    course.nbgrader("generate_feedback", CHAPTER, "--force")
    html = (course.path / "feedback" / STUDENT / CHAPTER / f"{CHAPTER}.html").read_text(encoding="utf-8")
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())  # the page's text, tags and layout dropped
    # The written cell: its score, the answer, the comment; and the notebook's total with it.
    assert f"Student's answer Score: {SCORE:.1f} / 2.0 (Top) {ANSWER} Comments: {COMMENT}" in text
    assert f"{CHAPTER} (Score: {code_points + SCORE:.1f} / {code_points + 2:.1f})" in text
    timings["export_feedback"] = time.perf_counter() - start
    print("formgrader test timings (s):", {k: round(v, 1) for k, v in timings.items()})
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
