"""A runnable Jupyter notebook from a book page (MyST Markdown notebook), for the page's download menu.

    python scripts/page_notebook.py book/02_tokenization.md out.ipynb [--edition student]

The page is read with MyST-NB's own reader (the `{code-cell}`s become code cells, with their tags).
Its Markdown cells are made readable in Jupyter, where MyST's directives and roles do not render:

- a `literalinclude` becomes the included code in a fenced Python block (the code the page shows;
  the code cells import the same functions from `llm_course`, so the notebook runs as the page did);
- `{graded-exercise}` becomes the exercise's text, and in the self-study edition its reference in a
  collapsed `<details>` block; in the student edition the graded bodies never appear (the exercise
  shows the signature and docstring, `{solution}` blocks are dropped, and any other code that holds
  a graded body is replaced by its signature);
- admonitions become quotes with their title, math blocks `$$`, diagrams stay as their source
  (fenced `dot` / `mermaid`), citations and cross-references become their text.

The notebook has no outputs: it is meant to be run top to bottom in a fresh kernel.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import graded_functions as graded  # noqa: E402

OPEN = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|:{3,})\{(?P<name>[\w:.-]+)\}\s*(?P<arg>.*)$")
PLAIN_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?!.*`)")
ROLE = re.compile(r"\{(?P<role>[\w:-]+)\}`(?P<text>[^`]*)`")


def is_notebook(text: str) -> bool:
    """Whether a page is a MyST notebook (Jupytext front matter with a kernel)."""
    return text.startswith("---") and "kernelspec" in text.split("\n---", 1)[0]


def _closing(lines: list[str], start: int, fence: str) -> int:
    """Index of the line that closes the fence opened before `start` (len(lines) if none)."""
    char, size = fence[0], len(fence)
    for index in range(start, len(lines)):
        stripped = lines[index].strip()
        if stripped and set(stripped) == {char} and len(stripped) >= size:
            return index
    return len(lines)


def _options(body: list[str]) -> tuple[dict[str, str], list[str]]:
    """A directive's options (`:key: value` lines or a `---` YAML block) and the rest of its content."""
    if body and body[0].strip() == "---":
        end = next((i for i in range(1, len(body)) if body[i].strip() == "---"), None)
        if end is not None:
            import yaml

            options = yaml.safe_load("\n".join(body[1:end])) or {}
            return {str(k): str(v) for k, v in options.items()}, body[end + 1:]
    options, index = {}, 0
    while index < len(body) and (m := re.match(r"^\s*:([\w-]+):\s*(.*)$", body[index])):
        options[m.group(1)] = m.group(2).strip()
        index += 1
    return options, body[index:]


def _include(arg: str, options: dict[str, str], page_dir: Path, edition: str) -> str:
    """The code a `literalinclude` shows (a graded reference's stub in the student edition)."""
    path = (page_dir / arg).resolve()
    name = options.get("pyobject")
    if name:
        module = "llm_course." + path.stem if path.parent.name == "llm_course" else None
        dotted = f"{module}:{name}" if module else None
        if dotted and edition == "student" and any(dotted in refs for refs in graded.REFERENCES.values()):
            code = graded.stub(dotted)
        elif dotted:
            code = graded.reference_source(dotted)
        else:
            raise ValueError(f"literalinclude :pyobject: outside llm_course: {arg}")
    else:
        code = path.read_text(encoding="utf-8")
        if "lines" in options:
            keep = []
            for part in options["lines"].split(","):
                first, _, last = part.partition("-")
                keep.extend(range(int(first), int(last or first) + 1))
            all_lines = code.splitlines()
            code = "\n".join(all_lines[i - 1] for i in keep if 0 < i <= len(all_lines))
    if edition == "student":
        code = graded_redact(code)
    language = options.get("language", "python")
    return f"```{language}\n# from {path.relative_to(graded.ROOT) if graded.ROOT in path.parents else path.name}\n{code.rstrip()}\n```"


def convert_markdown(text: str, page_dir: Path, edition: str) -> str:
    """MyST Markdown -> Markdown that Jupyter renders (see the module docstring)."""
    lines, out, prose, index = text.splitlines(), [], [], 0

    def flush():  # roles may span lines: they are replaced in each run of prose at once
        if prose:
            out.append(ROLE.sub(_role_text, "\n".join(prose)))
            prose.clear()

    while index < len(lines):
        line = lines[index]
        opened = OPEN.match(line)
        if not opened:
            plain = PLAIN_FENCE.match(line)
            if plain:  # a code block: copied as it is
                flush()
                end = _closing(lines, index + 1, plain.group("fence"))
                out.append("\n".join(lines[index:end + 1]))
                index = end + 1
                continue
            prose.append(line)
            index += 1
            continue
        flush()
        end = _closing(lines, index + 1, opened.group("fence"))
        options, body = _options(lines[index + 1:end])
        out.append(_directive(opened.group("name"), opened.group("arg").strip(), options,
                              "\n".join(body), page_dir, edition))
        index = end + 1
    flush()
    return "\n".join(out)


def _role_text(match: re.Match) -> str:
    role, text = match.group("role"), match.group("text")
    shown = re.sub(r"\s*<[^>]*>\s*$", "", text) or text
    if role == "cite" or role.startswith("cite:"):
        return f"[{text}]"
    if role == "eq":
        return f"({text})"
    if role in ("math",):
        return f"${text}$"
    return f"`{shown}`" if role in ("download", "doc") else shown


def _directive(name: str, arg: str, options: dict, body: str, page_dir: Path, edition: str) -> str:
    if name == "literalinclude":
        return _include(arg, options, page_dir, edition)
    if name == "graded-exercise":
        return convert_markdown(graded.exercise_myst(arg, page_dir, edition), page_dir, edition)
    if name == "solution":
        if edition == "student":
            return ""
        inner = convert_markdown(body, page_dir, edition)
        return f"<details><summary>Show the solution</summary>\n\n{inner}\n\n</details>"
    if name in ("math",):
        return f"$$\n{body.strip()}\n$$"
    if name in ("graphviz", "mermaid", "code-block", "code"):
        language = {"graphviz": "dot", "mermaid": "mermaid"}.get(name, arg or "python")
        code = body if name != "graphviz" or body.strip() else (page_dir / arg).read_text()
        caption = ROLE.sub(_role_text, " ".join(options.get("caption", "").split()))
        return f"```{language}\n{code.strip()}\n```" + (f"\n\n*{caption}*" if caption else "")
    if name in ("figure", "image"):
        caption = convert_markdown(body, page_dir, edition).strip()
        return f"*Figure: {caption or arg}* (see the book's page)"
    if name in ("bibliography", "glossary", "toctree", "tableofcontents"):
        return convert_markdown(body, page_dir, edition) if name == "glossary" else ""
    title = arg or name.capitalize()
    inner = convert_markdown(body, page_dir, edition)
    # An admonition, an exercise, or any other directive: its content, quoted under its title.
    quoted = "\n".join("> " + line if line else ">" for line in inner.splitlines())
    return f"> **{ROLE.sub(_role_text, title)}**\n>\n{quoted}"


def page_notebook(page: Path, edition: str = "self-study") -> nbformat.NotebookNode:
    """The runnable notebook of a book page, for `edition` ("self-study" or "student")."""
    from myst_nb.core.read import read_myst_markdown_notebook

    page = Path(page).resolve()
    nb = read_myst_markdown_notebook(page.read_text(encoding="utf-8"), path=str(page))
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = convert_markdown(cell.source, page.parent, edition)
        elif edition == "student" and graded.find_leaks(cell.source):
            cell.source = graded_redact(cell.source)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("jupytext", None)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    if edition == "student":
        for cell in nb.cells:
            if graded.find_leaks(cell.source):
                raise ValueError(f"{page.name}: a graded body is still in a cell of the student notebook")
    return nb


def graded_redact(code: str) -> str:
    """`code` with every graded reference's body replaced by its stub (see book_editions.redact)."""
    from book_editions import redact

    return redact(code)


def write(nb: nbformat.NotebookNode, path: Path) -> None:
    nbformat.validate(nb)
    nbformat.write(nb, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--edition", choices=("self-study", "student"), default="self-study")
    args = parser.parse_args(argv)
    write(page_notebook(args.page, args.edition), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
