"""Clear the book's execution cache when the llm_course package has changed.

Jupyter Book caches executed notebooks by their own content only, and Sphinx skips
pages whose source did not change. The pages run the package's code, so a change to
the package must re-execute them: this script
keeps a hash of every file of the package (except the graders, which no page uses)
next to the cache and deletes the execution cache and Sphinx's saved environment
when the hash differs.
"""

import hashlib
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "_build" / ".jupyter_cache"
# Sphinx's saved environment: it would skip re-reading (so re-executing) unchanged pages.
DOCTREES = ROOT / "_build" / ".doctrees"
STUDENT_DOCTREES = ROOT / "_build" / "student" / ".doctrees"  # the student edition's (build_book.py)
STAMP = ROOT / "_build" / ".llm_course.sha256"


def package_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "llm_course").rglob("*.py")):
        if "grading" in path.parts:
            continue  # the graders are not used by the book: editing them re-executes nothing
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def main() -> None:
    current = package_hash()
    if STAMP.exists() and STAMP.read_text() == current:
        print("book cache: llm_course unchanged, cached pages are reused")
        return
    for folder in (CACHE, DOCTREES, STUDENT_DOCTREES):
        if folder.exists():
            shutil.rmtree(folder)
    print("book cache: llm_course changed (or first build), every page will be executed")
    STAMP.parent.mkdir(parents=True, exist_ok=True)
    STAMP.write_text(current)


if __name__ == "__main__":
    main()
