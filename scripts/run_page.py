"""Execute one book page (a MyST Markdown notebook) and report the first failing cell.

    python scripts/run_page.py book/02_tokenization.md [--save out.ipynb]

Faster than building the whole book while writing a chapter; `make book` remains
the real check (it also runs Sphinx with warnings as errors).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from myst_nb.core.read import read_myst_markdown_notebook
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--save", type=Path, help="write the executed notebook here")
    parser.add_argument("--timeout", type=int, default=1200)
    args = parser.parse_args()
    nb = read_myst_markdown_notebook(args.page.read_text(encoding="utf-8"), path=str(args.page))
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(args.page.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:
        print(f"FAILED {args.page}:\n{err}", file=sys.stderr)
        return 1
    finally:
        if args.save:
            nbformat.write(nb, args.save)
    n = sum(c.cell_type == "code" for c in nb.cells)
    print(f"ok {args.page}: {n} code cells in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
