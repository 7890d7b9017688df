"""Two editions of the book from one source, graded exercises, and a notebook for every page.

A Sphinx extension (`sphinx: local_extensions` in _config.yml). The edition is the Sphinx setting
`book_edition`, which scripts/build_book.py sets:

- ``self-study`` (`make book`): a graded function's exercise, then its reference code in a
  `{solution}` dropdown ("show solution"), as ARENA does;
- ``student`` (`make book EDITION=student`): the same exercise (statement, signature, docstring,
  what the tests check, hint) and never the reference body. sphinx-exercise's `hide_solutions`
  drops every `{solution}` when the page is parsed (its content never enters the doctree), and a
  last pass over each resolved page replaces any graded body still in a code block or a cell's
  output (a `literalinclude` of the function elsewhere on the page, a cell printing
  `inspect.getsource`) by the signature and docstring (scripts/graded_functions.py finds them).

The directive ``{graded-exercise} <grade id>`` writes a graded exercise where the chapter states
it: its title, statement and points come from the solutions/ notebook, its signature and docstring
from the reference in llm_course, what the tests check from the check's docstring, and the time,
difficulty and hint from scripts/graded_functions.py.

Every page that is a MyST notebook also gets a runnable `.ipynb` (scripts/page_notebook.py: the
`literalinclude`d code inlined, the directives turned into Markdown, built for the edition), written
beside the page's source in `_sources/` and offered by the page's download menu.
"""

from __future__ import annotations

import inspect
import os
import textwrap
import sys
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

sys.path.insert(0, str(Path(__file__).resolve().parent))
import graded_functions as graded  # noqa: E402
import page_notebook  # noqa: E402

logger = logging.getLogger(__name__)
EDITIONS = ("self-study", "student")
HIDDEN_NOTE = "# (hidden in the student edition: this code is the answer to a graded exercise)\n"


class GradedExercise(SphinxDirective):
    """``{graded-exercise} merge``: the exercise of a graded function (and its solution)."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        grade_id = self.arguments[0]
        try:
            text = graded.exercise_myst(grade_id, Path(self.env.doc2path(self.env.docname)).parent,
                                        self.config.book_edition)
        except (KeyError, ValueError) as err:
            raise self.error(f"graded-exercise {grade_id}: {err}") from err
        # Re-read the page when the reference, the check or the notebook changes.
        for dotted in graded.REFERENCES[grade_id] + (graded.check_name(grade_id),):
            self.env.note_dependency(inspect.getsourcefile(graded.resolve(dotted)))
        chapter = graded.graded_ids()[grade_id]
        self.env.note_dependency(str(graded.SOLUTIONS / chapter / f"{chapter}.ipynb"))
        container = nodes.container(classes=["graded-exercise"])
        self.state.nested_parse(StringList(text.splitlines(), self.get_source_info()[0]), 0, container)
        return container.children


def redact(text: str) -> str:
    """`text` without any graded body: whole references become their stub, other leaks go."""
    for references in graded.REFERENCES.values():
        for dotted in references:
            source, stub = graded.reference_source(dotted), graded.stub(dotted)
            text = text.replace(source, stub)
            # A method inside its class's source: the same, indented.
            indented = inspect.getsource(graded.resolve(dotted))
            indent = indented[:len(indented) - len(indented.lstrip(" "))]
            if indent:
                text = text.replace(indented, textwrap.indent(stub, indent))
    if graded.find_leaks(text):
        return HIDDEN_NOTE
    return text


def redact_doctree(app, doctree, docname) -> None:
    """Student edition: no code block, cell output or raw HTML of the page holds a graded body."""
    if app.config.book_edition != "student":
        return
    for node in list(doctree.findall(lambda n: isinstance(n, (nodes.literal_block, nodes.raw)))):
        text = node.astext()
        if not graded.find_leaks(text):
            continue
        clean = redact(text)
        if isinstance(node, nodes.raw):
            node.replace_self(nodes.literal_block(HIDDEN_NOTE, HIDDEN_NOTE))
        else:
            node.children = [nodes.Text(clean)]
            node.rawsource = clean
        logger.info(f"student edition: a graded body removed from a code block of {docname}")


def add_page_notebook(app, pagename, templatename, context, doctree) -> None:
    """Write the page's runnable notebook into _sources/ and offer it in the download menu."""
    if doctree is None or app.builder.format != "html":
        return
    source = Path(app.env.doc2path(pagename))
    if source.suffix != ".md" or not page_notebook.is_notebook(source.read_text(encoding="utf-8")):
        return
    notebook = page_notebook.page_notebook(source, app.config.book_edition)
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    page_notebook.write(notebook, target)
    context["ipynb_source"] = f"{pagename}.ipynb"  # sphinx-book-theme's ".ipynb" download button


def check_edition(app, config) -> None:
    if config.book_edition not in EDITIONS:
        raise ValueError(f"book_edition must be one of {EDITIONS}, not {config.book_edition!r}")
    if config.book_edition == "student":
        config.hide_solutions = True  # sphinx-exercise: solutions are not even parsed


def setup(app):
    app.setup_extension("sphinx_exercise")
    app.add_config_value("book_edition", os.environ.get("BOOK_EDITION", "self-study"), "env")
    app.connect("config-inited", check_edition)
    app.add_directive("graded-exercise", GradedExercise)
    app.connect("doctree-resolved", redact_doctree)
    app.connect("html-page-context", add_page_notebook, priority=400)  # before the theme's buttons
    return {"parallel_read_safe": True, "parallel_write_safe": True}
