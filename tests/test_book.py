"""scripts/check_book.py, the rendered-book check, tested in a real headless Chromium.

A tiny book is built with the real `jupyter-book build -W` and the repository's Sphinx settings
(local MathJax, the extensions of _config.yml): one notebook page with math, a matplotlib
figure and internal links, a landing page with a `{download}` link to an exercise notebook, and
one page per planted fault. The checker must pass the clean pages and report each fault, on
its page. A last test runs the checker on the repository's own build when it is up to date.

The two editions (scripts/build_book.py, scripts/book_editions.py) are built from one chapter
with a `{graded-exercise}`, the same reference in a `literalinclude` and printed by a cell, a
Graphviz figure, a citation and numbered references: the student edition must show the signature,
docstring and tests but no body anywhere (and reuse the execution cache); the checker run with
`--student` on the self-study edition must find the bodies; planted faults (an empty diagram, a
citation and a numref that miss their targets, an unresolved reference) must each be reported.
A chapter's generated notebook (scripts/page_notebook.py) is run top to bottom in a fresh kernel.
"""

import functools
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHECKER = ROOT / "scripts" / "check_book.py"
MATHJAX = ROOT / "_build" / "static" / "mathjax"
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")

sys.path.insert(0, str(ROOT / "scripts"))
import check_book  # noqa: E402

CHROMIUM = check_book.find_executable("CHROMIUM", check_book.CHROMIUM_CANDIDATES, "chromium")
CHROMEDRIVER = check_book.find_executable(
    "CHROMEDRIVER", check_book.CHROMEDRIVER_CANDIDATES, "chromedriver"
)

pytestmark = pytest.mark.slow  # real Jupyter Book builds and a real browser: seconds each

needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's Chromium and ChromeDriver (apt-get install chromium chromium-driver)",
)
needs_mathjax = pytest.mark.skipif(
    not (MATHJAX / "tex-chtml.js").is_file(),
    reason=f"needs the local MathJax copy in {MATHJAX} (`make book` installs it)",
)

FRONT_MATTER = """\
---
jupytext:
  text_representation:
    format_name: myst
kernelspec:
  name: python3
  display_name: Python 3
---
"""

PAGES = {
    "index": """\
        # A tiny book

        Read [the demo chapter](01_demo.md), in particular {ref}`its formulas <demo-math>`,
        then do its exercise: {download}`01_demo.ipynb <../exercises/01_demo/01_demo.ipynb>`.
        """,
    "01_demo": FRONT_MATTER + """\
        # Demo

        (demo-math)=
        ## Formulas

        Inline $a^2 + b^2 = c^2$, a display formula

        $$
        \\bar x = \\frac{1}{n} \\sum_{i=1}^{n} x_i ,
        $$

        and an environment:

        \\begin{align}
        y &= W x + b \\\\
        z &= \\operatorname{softmax}(y)
        \\end{align}

        ## A figure

        ```{code-cell} ipython3
        import matplotlib.pyplot as plt
        plt.plot([1, 3, 2])
        plt.show()
        ```

        Back to [the start](index.md), or to [the formulas](#demo-math).
        """,
    # The planted faults, one a page.
    "90_broken_link": """\
        # Broken links

        A <a href="no_such_page.html">page that does not exist</a> and a
        <a href="01_demo.html#no-such-section">section that does not exist</a>.
        """,
    "91_missing_image": FRONT_MATTER + """\
        # Missing image

        The figure's file is deleted from the build after it is built.

        ```{code-cell} ipython3
        import matplotlib.pyplot as plt
        plt.plot([3, 1, 2])
        plt.show()
        ```
        """,
    "92_raw_tex": """\
        # Raw TeX

        The mean is \\frac{1}{n} \\sum_i x_i, written without math delimiters.

        An undefined macro: $\\notamacro{x} + 1$, a TeX error: $x^2^3$, and a formula that
        MathJax cannot even delimit: $x^{2$.
        """,
    "93_console_error": """\
        # A page script that throws

        <script>throw new Error("planted page error");</script>
        """,
    "94_outside_request": """\
        # A request to another host

        <script src="https://cdn.example.com/lib.js"></script>
        """,
}
CLEAN = ["index", "01_demo"]
EXPECTED = {  # page -> patterns that must all appear among its failures
    "90_broken_link": [r"broken link: no_such_page\.html",
                       r"broken anchor: 01_demo\.html#no-such-section"],
    "91_missing_image": [r"image does not load: \.\./_images/\w+\.png",
                         r"HTTP 404 for /_images/\w+\.png"],
    "92_raw_tex": [r"raw TeX in the visible text: \\frac \\sum in: The mean is \\frac\{1\}",
                   r"TeX error: undefined macro \\notamacro in: \\notamacro\{x\} \+ 1",
                   r"TeX error: Double exponent.* in: x\^2\^3",
                   r"formula not typeset: \\\(x\^\{2\\\)"],
    "93_console_error": [r"console error: /book/93_console_error\.html .*Uncaught Error: "
                         r"planted page error"],
    "94_outside_request": [r"request outside the build: https://cdn\.example\.com/lib\.js"],
}


def write_book(folder: Path) -> None:
    """A book with the repository's Sphinx settings and the pages above."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    sphinx = config["sphinx"]
    sphinx["local_extensions"] = {
        name: str((ROOT / path).resolve()) for name, path in sphinx.get("local_extensions", {}).items()
    }
    tiny = {
        "title": "tiny",
        "author": "tests",
        "only_build_toc_files": True,
        "exclude_patterns": ["_build", "exercises"],
        "execute": {"execute_notebooks": "force", "timeout": 120},
        "parse": config["parse"],
        "html": config.get("html", {}),
        "launch_buttons": config.get("launch_buttons", {}),
        "sphinx": sphinx,
    }
    (folder / "_config.yml").write_text(yaml.safe_dump(tiny))
    toc = {"format": "jb-book", "root": "book/index",
           "chapters": [{"file": f"book/{name}"} for name in PAGES if name != "index"]}
    (folder / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    (folder / "clean_toc.yml").write_text(yaml.safe_dump(
        {"format": "jb-book", "root": "book/index", "chapters": [{"file": "book/01_demo"}]},
        sort_keys=False))
    (folder / "book").mkdir()
    for name, text in PAGES.items():
        if text.startswith("---"):
            head, body = text[: len(FRONT_MATTER)], text[len(FRONT_MATTER):]
            text = head + textwrap.dedent(body)
        else:
            text = textwrap.dedent(text)
        (folder / "book" / f"{name}.md").write_text(text)
    exercise = folder / "exercises" / "01_demo" / "01_demo.ipynb"
    exercise.parent.mkdir(parents=True)
    exercise.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n')
    static = folder / "_build" / "static"
    static.mkdir(parents=True)
    shutil.copytree(MATHJAX, static / "mathjax")


def run_checker(build: Path, *args: str) -> tuple[int, str, dict[str, list[str]]]:
    """Runs the checker as `make book` does; returns its exit code, output, lines by page."""
    proc = subprocess.run(
        [sys.executable, str(CHECKER), str(build), *args],
        capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    by_page: dict[str, list[str]] = {}
    page = None
    for line in proc.stdout.splitlines():
        match = re.match(r"(ok  |FAIL) (\S+)", line)
        if match:
            page = match.group(2)
            by_page[page] = [match.group(1).strip()]
        elif page and line.startswith("       "):
            by_page[page].append(line.strip())
    return proc.returncode, output, by_page


@pytest.fixture(scope="module")
def tiny_book(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_book")
    write_book(folder)
    proc = subprocess.run(
        [str(JUPYTER_BOOK), "build", str(folder), "-W", "-n", "--keep-going"],
        capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "MPLBACKEND"},  # inline figures
    )
    warnings = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines()
                if "WARNING" in line and "IPKernelApp" not in line]
    assert proc.returncode == 0 and not warnings, (
        "the tiny book must build with -W (the {download} link included):\n"
        + "\n".join(warnings) + proc.stdout[-3000:] + proc.stderr[-3000:]
    )
    # Plant the missing image: the figure of 91_missing_image is deleted from the build.
    page = folder / "_build" / "html" / "book" / "91_missing_image.html"
    images = re.findall(r'<img[^>]* src="\.\./(_images/[^"]+)"', page.read_text())
    assert images, "the missing-image page has no figure to delete"
    for image in images:
        (folder / "_build" / "html" / image).unlink()
    return folder


@needs_browser
@needs_mathjax
def test_tiny_book_builds_its_download_link(tiny_book):
    html = (tiny_book / "_build" / "html" / "book" / "index.html").read_text()
    links = re.findall(r'href="(\.\./_downloads/[^"]+/01_demo\.ipynb)"', html)
    assert links, "the {download} role wrote no link to the exercise notebook"
    assert (tiny_book / "_build" / "html" / "book" / links[0]).resolve().is_file()


@needs_browser
@needs_mathjax
def test_checker_passes_a_clean_book(tiny_book):
    code, output, pages = run_checker(
        tiny_book / "_build" / "html", "--toc", str(tiny_book / "clean_toc.yml"),
        "--screenshots", str(tiny_book / "shots"),
    )
    assert code == 0, output
    assert set(pages) == {f"book/{name}" for name in CLEAN}, output
    assert all(lines == ["ok"] for lines in pages.values()), output
    # It really looked: the demo's formulas were typeset and its figure counted.
    demo = re.search(r"ok\s+book/01_demo\s+(\d+) math, (\d+) images", output)
    assert demo and int(demo.group(1)) >= 3 and int(demo.group(2)) >= 1, output
    assert (tiny_book / "shots" / "book__01_demo.png").stat().st_size > 1000


@needs_browser
@needs_mathjax
def test_checker_reports_each_planted_fault_on_its_page(tiny_book):
    code, output, pages = run_checker(
        tiny_book / "_build" / "html", "--toc", str(tiny_book / "_toc.yml"),
        "--screenshots", str(tiny_book / "shots"),
    )
    assert code == 1, output
    for name in CLEAN:
        assert pages[f"book/{name}"] == ["ok"], output
    for name, patterns in EXPECTED.items():
        lines = pages[f"book/{name}"]
        assert lines[0] == "FAIL", output
        for pattern in patterns:
            assert any(re.search(pattern, line) for line in lines[1:]), (
                f"{name}: nothing matches {pattern!r} in\n" + "\n".join(lines))
    assert re.search(r"7 pages checked in .*: 2 ok, 5 failed", output), output


class _FailsFirstRequests(check_book._QuietHandler):
    """Answers the first `drops` requests of `page` with 503 and a body that is not the page.
    (A connection closed without an answer is no test: Chromium retries that request itself.)"""

    page = ""
    drops = 0

    def do_GET(self):  # noqa: N802 - the base class's name
        if self.path == self.page and type(self).drops > 0:
            type(self).drops -= 1
            self.send_error(503, "busy")
            return
        super().do_GET()


@pytest.mark.parametrize("drops", [1, check_book.LOAD_ATTEMPTS])
@needs_browser
@needs_mathjax
def test_checker_loads_a_page_again_when_the_browser_shows_an_error_page(tiny_book, tmp_path, drops):
    """A load that fails leaves an error page in the tab, and `driver.get` returns as if all
    went well: the checker must load the page again, and say plainly if it never came, not
    check the error page as the book (it once counted 0 links on a page with 2)."""
    build = tiny_book / "_build" / "html"
    server = check_book.start_server(build)
    handler = type("Handler", (_FailsFirstRequests,), {"page": "/book/01_demo.html", "drops": drops})
    server.RequestHandlerClass = functools.partial(handler, directory=str(build))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    driver = check_book.make_driver(CHROMIUM, CHROMEDRIVER, tmp_path / "profile")
    try:
        result = check_book.check_page(driver, server, build, "book/01_demo", base)
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
    assert handler.drops == 0
    if drops < check_book.LOAD_ATTEMPTS:
        assert result.failures == [], result.failures
        assert result.counts["links"] > 0
    else:
        assert len(result.failures) == 1, result.failures
        assert re.fullmatch(rf"did not load: the tab shows {base}/book/01_demo.html \(complete, "
                            rf"main content missing\) after {drops} attempts",
                            result.failures[0]), result.failures


@needs_browser
@needs_mathjax
def test_checker_reports_a_page_that_was_not_built(tiny_book, tmp_path):
    toc = tmp_path / "toc.yml"
    toc.write_text("format: jb-book\nroot: book/index\nchapters:\n  - file: book/77_never\n")
    code, output, pages = run_checker(tiny_book / "_build" / "html", "--toc", str(toc),
                                      "--screenshots", str(tmp_path / "shots"))
    assert code == 1
    assert pages["book/77_never"] == ["FAIL", "not built: book/77_never.html does not exist"]


@needs_browser
def test_the_repository_book_passes():
    build = ROOT / "_build" / "html"
    stamp = build / "searchindex.js"  # written at the end of every build
    if not stamp.is_file():
        pytest.skip(f"no built book in {build} (run `make book`)")
    sources = sorted((ROOT / "book").glob("*.md"), key=lambda p: p.stat().st_mtime)
    if sources and sources[-1].stat().st_mtime > stamp.stat().st_mtime:
        pytest.skip(f"{build} is older than {sources[-1].relative_to(ROOT)}: run `make book`")
    code, output, _ = run_checker(build)
    assert code == 0, output


# --------------------------------------------------------------------------- the two editions
import graded_functions  # noqa: E402  (scripts/, on sys.path above)

BUILD_BOOK = ROOT / "scripts" / "build_book.py"
EDITION_PAGE = FRONT_MATTER + """\
# Editions

Attention {cite}`vaswani2017` is drawn in {numref}`fig-graph`; the definition is {eq}`eq-def`.

```{math}
:label: eq-def
y = x
```

```{graphviz}
:name: fig-graph
:caption: A diagram
digraph { q -> k -> v }
```

```{graded-exercise} merge
```

The reference once more, elsewhere on the page, and printed by a cell:

```{literalinclude} ../../llm_course/bpe.py
:pyobject: merge
```

```{code-cell} ipython3
import inspect
from llm_course.bpe import merge
print(inspect.getsource(merge))
```

```{bibliography}
:filter: docname in docnames
```
"""
BIB = """\
@article{vaswani2017,
  title = {Attention Is All You Need},
  author = {Vaswani, Ashish and Shazeer, Noam},
  journal = {arXiv:1706.03762},
  year = {2017}
}
"""


def run_build(folder: Path, edition: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BUILD_BOOK), edition, "--source", str(folder)],
        capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "MPLBACKEND"},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def editions_book(tmp_path_factory):
    """A one-chapter book inside the repository's layout (so ../llm_course and ../exercises resolve
    as in book/), built as both editions; the student edition reuses the execution cache."""
    folder = tmp_path_factory.mktemp("editions")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["sphinx"]["local_extensions"] = {
        name: str((ROOT / path).resolve()) for name, path in config["sphinx"]["local_extensions"].items()
    }
    config["bibtex_bibfiles"] = ["refs.bib"]
    config["exclude_patterns"] = ["_build"]
    config["only_build_toc_files"] = True
    (folder / "_config.yml").write_text(yaml.safe_dump(config))
    (folder / "refs.bib").write_text(BIB)
    (folder / "_toc.yml").write_text(
        "format: jb-book\nroot: book/index\nchapters:\n  - file: book/02_editions\n")
    (folder / "book").mkdir()
    (folder / "book" / "index.md").write_text("# Editions test\n\nRead [the chapter](02_editions.md).\n")
    # The page sits two folders below the repository's llm_course/ only through its own paths.
    page = EDITION_PAGE.replace("../../llm_course", os.path.relpath(ROOT / "llm_course", folder / "book"))
    (folder / "book" / "02_editions.md").write_text(page)
    shutil.copytree(MATHJAX, folder / "_build" / "static" / "mathjax")
    run_build(folder, "self-study")
    student_log = run_build(folder, "student")
    return folder, student_log


def test_graded_functions_match_the_notebooks_and_the_book():
    ids = graded_functions.graded_ids()
    assert set(ids) == set(graded_functions.REFERENCES) == set(graded_functions.EXERCISES)
    for grade_id, references in graded_functions.REFERENCES.items():
        for dotted in references:
            head, body = graded_functions.split_source(graded_functions.reference_source(dotted))
            assert graded_functions.normalise(body), f"{dotted} has no body to hide"
    text = "\n".join(p.read_text() for p in sorted((ROOT / "book").glob("*.md")))
    shown = re.findall(r"^```\{graded-exercise\} (\w+)$", text, re.M)
    assert sorted(shown) == sorted(ids), "each graded function has exactly one exercise in the book"


def test_leak_finder_sees_a_body_through_markup_and_not_the_stub():
    source = graded_functions.reference_source("llm_course.bpe:merge")
    as_html = "<pre>" + "".join(f'<span class="n">{html_escape(line)}</span>\n'
                                for line in source.splitlines()) + "</pre>"
    assert "merge (llm_course.bpe:merge)" in graded_functions.find_leaks(source)
    assert "merge (llm_course.bpe:merge)" in graded_functions.find_leaks(
        re.sub(r"<[^>]+>", "", as_html).replace("&gt;", ">").replace("&lt;", "<").replace("&quot;", '"'))
    assert graded_functions.find_leaks(graded_functions.stub("llm_course.bpe:merge")) == []
    assert graded_functions.find_leaks("def merge(ids, pair, new_id):\n    return ids\n") == []


def test_redaction_keeps_the_signature_of_a_method_inside_its_class():
    import inspect

    from book_editions import HIDDEN_NOTE, redact
    from llm_course.moe import MoE
    from llm_course.transformer import Block

    for cls in (Block, MoE):
        source = inspect.getsource(cls)
        assert graded_functions.find_leaks(source), f"{cls.__name__} should hold a graded body"
        clean = redact(source)
        assert clean != HIDDEN_NOTE and graded_functions.find_leaks(clean) == []
        assert "def __init__" in clean and "    def forward(" in clean  # only the body went
        assert graded_functions.HIDDEN_BODY in clean


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


@needs_browser
@needs_mathjax
def test_student_edition_has_no_graded_body_and_passes_the_check(editions_book):
    folder, student_log = editions_book
    assert "Using cached notebook" in student_log, "the student edition re-executed the page"
    student = folder / "_build" / "student" / "html"
    page = (student / "book" / "02_editions.html").read_text()
    assert "def merge(" in page and "not shown in this edition" in page  # signature + docstring
    assert "check_merge" in page and "Hint" in page
    assert 'class="solution' not in page
    notebook = student / "_sources" / "book" / "02_editions.ipynb"
    assert notebook.is_file() and "_sources/book/02_editions.ipynb" in page  # the download menu
    code, output, pages = run_checker(student, "--toc", str(folder / "_toc.yml"), "--student",
                                      "--screenshots", str(folder / "shots"))
    assert code == 0, output
    assert re.search(r"ok\s+book/02_editions\s+\d+ math, \d+ images, 1 diagrams, 1 citations", output), output
    assert "ok   student edition: no graded body" in output


@needs_browser
@needs_mathjax
def test_checker_finds_the_bodies_in_the_self_study_edition(editions_book):
    folder, _ = editions_book
    build = folder / "_build" / "html"
    page = (build / "book" / "02_editions.html").read_text()
    assert 'class="solution dropdown' in page  # the reference behind "show solution"
    code, output, pages = run_checker(build, "--toc", str(folder / "_toc.yml"), "--student",
                                      "--screenshots", str(folder / "shots"))
    assert code == 1, output
    assert pages["book/02_editions"] == ["ok"], output  # the edition itself is sound
    leaks = pages["student"]
    assert any(re.search(r"book/02_editions\.html: the body of merge \(llm_course\.bpe:merge\)", l) for l in leaks)
    assert any(re.search(r"_sources/book/02_editions\.ipynb: the body of merge", l) for l in leaks)


@needs_browser
@needs_mathjax
def test_checker_reports_diagrams_citations_and_numbered_references(editions_book, tmp_path):
    folder, _ = editions_book
    build = tmp_path / "html"
    shutil.copytree(folder / "_build" / "html", build)
    page = build / "book" / "02_editions.html"
    html = page.read_text()
    svg = re.search(r'<object data="\.\./(_images/graphviz-[^"]+\.svg)"', html).group(1)
    (build / svg).write_text("")  # an unrendered diagram
    cite = re.search(r'<span class="bibtex-citation"[^>]*>\[<a class="reference internal" href="#([^"]+)"', html)
    html = html.replace(f'href="#{cite.group(1)}"', 'href="#fig-graph"', 1)  # a citation that misses
    html = html.replace('href="#fig-graph"><span class="std std-numref">',
                        'href="#equation-eq-def"><span class="std std-numref">', 1)  # a numref that misses
    html = html.replace("</article>", '<p><span class="xref std std-numref">fig-missing</span></p></article>', 1)
    page.write_text(html)
    code, output, pages = run_checker(build, "--toc", str(folder / "_toc.yml"),
                                      "--screenshots", str(tmp_path / "shots"))
    assert code == 1, output
    lines = pages["book/02_editions"]
    for pattern in [r"diagram does not render: \.\./_images/graphviz-\w+\.svg",
                    r"citation \S+ does not land on a bibliography entry \(#fig-graph\)",
                    r"reference 'Fig\. 1' does not land on its target \(#equation-eq-def shows '\(1\)'\)",
                    r"unresolved reference: fig-missing"]:
        assert any(re.search(pattern, line) for line in lines), f"{pattern!r} not in\n" + "\n".join(lines)


def test_a_chapter_notebook_runs_top_to_bottom_and_the_student_one_hides_the_answers(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    import page_notebook

    page = ROOT / "book" / "02_tokenization.md"
    self_study = page_notebook.page_notebook(page, "self-study")
    student = page_notebook.page_notebook(page, "student")
    text = lambda nb: "\n".join(cell.source for cell in nb.cells)  # noqa: E731
    assert "merge (llm_course.bpe:merge)" in graded_functions.find_leaks(text(self_study))
    assert graded_functions.find_leaks(text(student)) == []
    assert "{literalinclude}" not in text(self_study) and "{graded-exercise}" not in text(student)
    path = tmp_path / "02_tokenization.ipynb"
    page_notebook.write(student, path)
    nb = nbformat.read(str(path), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # a fresh kernel, elsewhere
    assert all(not any(o.get("output_type") == "error" for o in c.get("outputs", []))
               for c in nb.cells if c.cell_type == "code")


@needs_browser
def test_the_repository_student_edition_passes():
    build = ROOT / "_build" / "student" / "html"
    stamp = build / "searchindex.js"
    if not stamp.is_file():
        pytest.skip(f"no student edition in {build} (run `make book EDITION=student`)")
    sources = sorted((ROOT / "book").glob("*.md"), key=lambda p: p.stat().st_mtime)
    if sources and sources[-1].stat().st_mtime > stamp.stat().st_mtime:
        pytest.skip(f"{build} is older than {sources[-1].relative_to(ROOT)}: rebuild it")
    code, output, _ = run_checker(build, "--toc", str(ROOT / "_toc.yml"), "--student")
    assert code == 0, output
