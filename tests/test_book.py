"""scripts/check_book.py, the rendered-book check, tested in a real headless Chromium.

A tiny book is built with the real `jupyter-book build -W` and the repository's Sphinx settings
(local MathJax, the extensions of _config.yml): one notebook page with math, a matplotlib
figure and internal links, a landing page with a `{download}` link to an exercise notebook, and
one page per planted fault. The checker must pass the clean pages and report each fault, on
its page. A last test runs the checker on the repository's own build when it is up to date.
"""

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
