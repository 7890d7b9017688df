"""Build one edition of the book with Jupyter Book, as `jupyter-book build . -W --keep-going` does.

    python scripts/build_book.py [self-study|student] [--path-output _build]

- ``self-study`` (default, `make book`) builds into _build/html, as `jupyter-book build` always did;
- ``student`` (`make book EDITION=student`) builds into _build/student/html with its own Sphinx
  environment (_build/student/.doctrees: the two editions parse pages differently) but the same
  execution cache, _build/.jupyter_cache: the code cells are the same in both editions, so a page
  executed for one is not executed again for the other.

The edition reaches Sphinx as the setting `book_edition` (scripts/book_editions.py). Jupyter Book's
command line cannot set a Sphinx option nor the output folder apart from the cache, hence this
script, which calls the same function the command line does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = {"self-study": Path("html"), "student": Path("student") / "html"}


def main(argv: list[str] | None = None) -> int:
    from jupyter_book.sphinx import build_sphinx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("edition", nargs="?", choices=sorted(OUTPUTS), default="self-study")
    parser.add_argument("--source", type=Path, default=ROOT, help="the book's folder (default: the repository)")
    parser.add_argument("--path-output", type=Path, default=None, help="default: <source>/_build")
    args = parser.parse_args(argv)
    source = args.source.resolve()
    build = (args.path_output or source / "_build").resolve()
    output = build / OUTPUTS[args.edition]
    overrides = {
        "external_toc_path": (source / "_toc.yml").as_posix(),
        "latex_individualpages": False,
        "book_edition": args.edition,
        "nb_execution_cache_path": str(build / ".jupyter_cache"),
    }
    print(f"building the {args.edition} edition of {source} into {output}", flush=True)
    result = build_sphinx(
        source, output, use_external_toc=True, noconfig=True, path_config=str(source / "_config.yml"),
        confoverrides=overrides, doctreedir=output.parent / ".doctrees", builder="html",
        warningiserror=True, keep_going=True,
    )
    if isinstance(result, Exception):
        raise result
    return 1 if result else 0


if __name__ == "__main__":
    sys.exit(main())
