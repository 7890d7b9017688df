"""Text corpora for the course, all available offline.

The default corpus is the English documentation that ships with every CPython
(`pydoc_data.topics`: the text behind `help("if")`, about 465 KB). The standard
library's own source is a larger corpus for unseen-text tests. Any local text file,
or a folder of text files, can be used instead. Nothing is ever downloaded.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

DEFAULT_SUFFIXES = (".txt", ".md", ".rst")


def default_corpus() -> str:
    """The text of every `pydoc_data.topics` entry, sorted by topic name, joined by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name].strip() for name in sorted(topics))


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:  # permission denied, a broken link, ...
        raise OSError(f"cannot read corpus file {path}: {err.strerror or err}") from err
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"corpus file {path} is not valid UTF-8 (byte {err.start} is {data[err.start:err.start + 1]!r}); "
            "convert it to UTF-8 first, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


def load_corpus(source: str | Path | None = None, suffixes: tuple[str, ...] = DEFAULT_SUFFIXES) -> str:
    """Load a training corpus as one string.

    - `None` (the default): the embedded CPython documentation (:func:`default_corpus`).
    - a path to a file: that file, decoded as UTF-8.
    - a path to a folder: every file below it whose name ends in one of `suffixes`,
      in sorted path order, joined by blank lines.

    A missing path, a folder without matching files, an empty corpus or a file that
    is not UTF-8 raises an error that names the path.
    """
    if source is None:
        return default_corpus()
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"corpus path {str(path)!r} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
        if not files:
            raise ValueError(f"corpus folder {str(path)!r} has no files ending in {', '.join(suffixes)}")
        text = "\n\n".join(_read_text(p) for p in files)
    else:
        text = _read_text(path)
    if not text.strip():
        raise ValueError(f"corpus {str(path)!r} is empty (no non-whitespace text)")
    return text


def stdlib_source_corpus(max_bytes: int | None = None) -> str:
    """The standard library's own Python source (about 12 MB): unseen text for tokenizers.

    Files are read in sorted order and skipped if they are not UTF-8; `max_bytes`
    stops once that much text has been collected.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        total += len(text.encode("utf-8"))
        if max_bytes is not None and total >= max_bytes:
            break
    return "".join(parts)


def train_val_split(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """Split text into a training part and a held-out tail of `val_fraction` of its characters."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]
