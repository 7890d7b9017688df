"""One cache for everything the course trains once and reuses: chapter 06's pretrained model, the
scaling sweep (chapter 07), the retrieval model (chapter 14), the benchmarks' models.

A result is stored in a folder ``<cache>/<kind>/<name>-<key>``. The key is a hash of

- the **settings**: everything the caller passes that shapes the result (the recipe, a digest of
  the data, the device type), as JSON;
- the **code**: the source of every `llm_course` module that the producing module imports,
  directly or through others (`module_dependencies`), including imports inside functions, and the
  package's ``__init__`` (it runs on every import). A change to `attention.py` therefore changes
  the key of every result whose producer imports the transformer, however indirectly, and of no
  other. The source is hashed as its syntax tree without docstrings (`source_fingerprint`):
  comments, docstrings and layout can be edited without retraining; any change to what the code
  does cannot;
- the torch version (its kernels shape the numbers).

The dependencies are read from the source, not from a running interpreter, so a module imported
only on some code path still counts: the key may change more often than needed (an edit of a
function the result never calls), never less, as long as modules are loaded by import statements
(the package never loads one by a name built at run time, except the command line). Code outside `llm_course` (PyTorch, the data files)
is covered by the torch version and by what the caller puts in the settings.

`cached(folder, build)` makes an entry: `build(tmp)` writes the files into a temporary folder that
is renamed into place when complete, under a lock, so a crash never leaves a half-written entry that
looks finished and two processes never train the same thing twice. The folder then holds
``cache.json``: the settings, the modules and the code hash the key was made of.

Left out: removing old entries (they are small; delete the folder to start again).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_course.utils import cache_dir

PACKAGE = "llm_course"
#: The folder of the `llm_course` package whose source the keys hash (a test points it at a copy).
PACKAGE_ROOT = Path(__file__).resolve().parent
MARKER = "cache.json"  # written last: an entry without it is not finished


# ---------------------------------------------------------------------------------------
# The code a result depends on
# ---------------------------------------------------------------------------------------


def source_fingerprint(source: str) -> str:
    """The syntax tree of `source` without docstrings: equal for two sources that differ only in
    comments, docstrings and layout, different as soon as the code does something else."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]  # drop the docstring
    return ast.dump(tree)


# path -> ((mtime_ns, size), sha256 of the fingerprint, imports as (level, module, names)): a file
# is parsed again only when it changed, so a key costs a few stat calls once the files were read.
_PARSED: dict[Path, tuple[tuple[int, int], str, list[tuple[int, str, list[str]]]]] = {}


def _parsed(path: Path) -> tuple[str, list[tuple[int, str, list[str]]]]:
    """(sha256 of `source_fingerprint`, every import statement) of a source file, read once per version."""
    stat = path.stat()
    version = (stat.st_mtime_ns, stat.st_size)
    if path in _PARSED and _PARSED[path][0] == version:
        return _PARSED[path][1:]
    source = path.read_text()
    imports = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imports.extend((0, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.level, node.module or "", [alias.name for alias in node.names]))
    digest = hashlib.sha256(source_fingerprint(source).encode()).hexdigest()
    _PARSED[path] = (version, digest, imports)
    return digest, imports


def _module_file(module: str, root: Path) -> Path | None:
    """The source file of `llm_course.x.y` under `root` (the package folder), or None if there is none."""
    parts = module.split(".")[1:]
    path = root.joinpath(*parts)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(module: str, path: Path) -> set[str]:
    """The `llm_course` modules that the file of `module` imports anywhere (top level or inside functions).

    ``from llm_course.a import b`` names llm_course.a and, if b is a module, llm_course.a.b: both are
    returned; the caller keeps those that have a source file.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for level, name, names in _parsed(path)[1]:
        if level:  # relative: from . import x, from .a import b
            base = package.split(".")
            target = ".".join(base[: len(base) - (level - 1)] + ([name] if name else []))
        else:
            target = name
        found.add(target)
        found.update(f"{target}.{alias}" for alias in names)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def module_dependencies(*modules: str, root: Path | None = None) -> list[str]:
    """Every `llm_course` module that importing and running `modules` can execute, sorted:
    the modules themselves, what they import (transitively, also inside functions), and the
    packages above each one (their ``__init__`` runs first)."""
    root = PACKAGE_ROOT if root is None else Path(root)
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name, root)
        if path is None:
            if name in modules:
                raise ValueError(f"{name!r} is not a module of {PACKAGE} (no source under {root})")
            continue  # an imported name that is not a module (from llm_course.x import function)
        seen.add(name)
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo.extend(parents)
        todo.extend(_imported_modules(name, path))
    return sorted(seen)


def code_hash(*modules: str, root: Path | None = None) -> str:
    """sha256 over the fingerprints of `module_dependencies(*modules)`: the code version of a result."""
    root = PACKAGE_ROOT if root is None else Path(root)
    digest = hashlib.sha256()
    for name in module_dependencies(*modules, root=root):
        digest.update(f"{name}\0{_parsed(_module_file(name, root))[0]}\0".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Keys and entries
# ---------------------------------------------------------------------------------------


def fingerprint(value: Any) -> Any:
    """A JSON-able stand-in for a setting: dataclasses and containers field by field, tensors and
    arrays as the sha256 of their dtype, shape and bytes, text longer than 256 characters as its sha256."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: fingerprint(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): fingerprint(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        header = f"{array.dtype.str}{array.shape}".encode()
        return "sha256:" + hashlib.sha256(header + array.tobytes()).hexdigest()
    if isinstance(value, bytes):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    if isinstance(value, str) and len(value) > 256:
        return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot put a {type(value).__name__} in a cache key; pass its settings or its data instead")


def key_ingredients(settings: Any, producer: str | Iterable[str], root: Path | None = None) -> dict:
    """What a key hashes: the settings (fingerprinted), the producing modules and their code hash, torch's version."""
    modules = [producer] if isinstance(producer, str) else list(producer)
    return {
        "settings": fingerprint(settings),
        "producer": modules,
        "code": code_hash(*modules, root=root),
        "torch": torch.__version__.split("+")[0],
    }


def _key(ingredients: dict) -> str:
    return hashlib.sha256(json.dumps(ingredients, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(settings: Any, producer: str | Iterable[str], root: Path | None = None) -> str:
    """16 hex digits that change with the settings, the code of `producer` (a module name such as
    "llm_course.failures", or several) and everything it imports, and the torch version."""
    return _key(key_ingredients(settings, producer, root))


def _entry(kind: str, name: str, ingredients: dict, cache: str | Path | None) -> Path:
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    return root / kind / f"{name}-{_key(ingredients)}"


def entry_dir(kind: str, name: str, settings: Any, producer: str | Iterable[str], cache: str | Path | None = None) -> Path:
    """``<cache>/<kind>/<name>-<key>``: where the result is (or will be) stored. `cache` None:
    $LLM_COURSE_CACHE or ~/.cache/llm_course (`utils.cache_dir`)."""
    return _entry(kind, name, key_ingredients(settings, producer), cache)


def is_complete(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock on `path` (POSIX flock); without fcntl, no lock (the atomic rename still protects)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached(folder: Path, build: Callable[[Path], Any], about: dict | None = None) -> Path:
    """`folder`, built by `build(tmp)` unless a finished entry is already there; returns `folder`.

    `build` writes its files into the empty folder `tmp`; when it returns, ``cache.json`` (with
    `about`, e.g. `key_ingredients`) is written and `tmp` is renamed to `folder`. A second process
    waits on the lock and then finds the entry finished. If `build` raises, nothing is left behind.
    """
    folder = Path(folder)
    if is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(folder.parent / f".{folder.name}.lock"):
        if is_complete(folder):  # another process finished it while we waited
            return folder
        tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build(tmp)
            (tmp / MARKER).write_text(json.dumps(about or {}, indent=1, sort_keys=True) + "\n")
            shutil.rmtree(folder, ignore_errors=True)  # an unfinished folder, if any
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def cached_entry(
    kind: str,
    name: str,
    settings: Any,
    producer: str | Iterable[str],
    build: Callable[[Path], Any],
    cache: str | Path | None = None,
) -> Path:
    """The folder of the result `build` makes from `settings` with the code of `producer`: built once,
    then found again by every later call, in any process, until the settings or the code change."""
    ingredients = key_ingredients(settings, producer)
    return cached(_entry(kind, name, ingredients, cache), build, about=ingredients)
