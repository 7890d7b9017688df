"""llm_course.cache: the key follows every llm_course module a result depends on, and nothing else.

Edits are made to a copy of the package (`edited_package`), never to the real one: the keys hash
whatever folder `cache.PACKAGE_ROOT` points at.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from llm_course import cache

PRODUCERS = ["llm_course.failures", "llm_course.pretrained", "llm_course.scaling"]


@pytest.fixture()
def package(tmp_path, monkeypatch):
    """A copy of the llm_course package that the cache keys hash instead of the real one."""
    copy = shutil.copytree(cache.PACKAGE_ROOT, tmp_path / "llm_course", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "PACKAGE_ROOT", copy)
    return copy


def append_code(path, code="\n\ndef edited():\n    return 1\n"):
    path.write_text(path.read_text() + code)


def test_fingerprint_of_source_ignores_docstrings_comments_and_layout():
    code = 'def f(x):\n    """Add one."""\n    return x + 1  # one\n'
    reworded = 'def f(x):\n    """Add 1 to x.\n\n    More text.\n    """\n\n    return (x + 1)\n'
    changed = 'def f(x):\n    """Add one."""\n    return x + 2\n'
    assert cache.source_fingerprint(code) == cache.source_fingerprint(reworded)
    assert cache.source_fingerprint(code) != cache.source_fingerprint(changed)


def test_dependencies_of_a_small_package(tmp_path):
    """Every import form: top level, inside a function, relative, from-package, a name that is not a module."""
    root = tmp_path / "llm_course"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from llm_course.base import helper\n",
        "base.py": "import math\n\ndef helper():\n    return math.pi\n",
        "a.py": "from llm_course.base import helper\n\ndef late():\n    from llm_course import b\n    return b\n",
        "b.py": "from . import c\nfrom .sub.d import thing\n",
        "c.py": "import torch\n",
        "unused.py": "import llm_course.a\n",
        "sub/__init__.py": "",
        "sub/d.py": "from .. import c\nthing = 1\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    expected = ["llm_course", "llm_course.a", "llm_course.b", "llm_course.base", "llm_course.c",
                "llm_course.sub", "llm_course.sub.d"]  # fmt: skip
    assert cache.module_dependencies("llm_course.a", root=root) == expected
    assert cache.module_dependencies("llm_course.c", root=root) == ["llm_course", "llm_course.base", "llm_course.c"]
    with pytest.raises(ValueError, match="'llm_course.nothing' is not a module of llm_course"):
        cache.module_dependencies("llm_course.nothing", root=root)


# Imports torch once, then forks a fresh child per producer that imports it and lists the llm_course modules loaded.
LOADED_BY = """
import json, os, sys, torch
for producer in sys.argv[1:]:
    read, write = os.pipe()
    if os.fork() == 0:
        __import__(producer)
        os.write(write, json.dumps([m for m in sys.modules if m.split(".")[0] == "llm_course"]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        print(json.dumps({producer: json.loads(pipe.read())}))
    os.wait()
"""


def test_dependencies_cover_what_python_imports():
    """Oracle: the llm_course modules a fresh interpreter loads for `import producer` are all in its key."""
    out = subprocess.run([sys.executable, "-c", LOADED_BY, *PRODUCERS], capture_output=True, text=True, check=True)
    loaded = {k: set(v) for line in out.stdout.splitlines() for k, v in json.loads(line).items()}
    assert set(loaded) == set(PRODUCERS)
    for producer in PRODUCERS:
        assert {producer, "llm_course.attention", "llm_course.transformer"} <= loaded[producer]
        static = set(cache.module_dependencies(producer))
        assert loaded[producer] <= static, f"{producer} imports {sorted(loaded[producer] - static)}, not in its key"


@pytest.mark.parametrize("producer", PRODUCERS)
def test_editing_a_module_a_result_depends_on_changes_its_key(package, producer):
    key = cache.cache_key({"steps": 10}, producer)
    assert cache.cache_key({"steps": 10}, producer) == key
    assert cache.cache_key({"steps": 11}, producer) != key
    attention = package / "attention.py"
    original = attention.read_text()
    attention.write_text('"""Reworded."""\n# a comment\n' + original.split('"""', 2)[2])  # text only
    assert cache.cache_key({"steps": 10}, producer) == key
    append_code(attention)  # a change of code, two imports away from every producer
    assert cache.cache_key({"steps": 10}, producer) != key


def test_a_module_the_result_does_not_import_leaves_the_key(package):
    key = cache.cache_key({}, "llm_course.failures")
    assert "llm_course.bpe" not in cache.module_dependencies("llm_course.failures")
    append_code(package / "bpe.py")
    assert cache.cache_key({}, "llm_course.failures") == key
    append_code(package / "__init__.py")  # runs on every import
    assert cache.cache_key({}, "llm_course.failures") != key


def test_settings_fingerprint():
    ids = torch.arange(10)
    assert cache.fingerprint(ids) == cache.fingerprint(ids.clone().numpy())
    assert cache.fingerprint(ids) != cache.fingerprint(ids.flip(0))
    assert cache.fingerprint(ids) != cache.fingerprint(ids.to(torch.int32))  # the dtype is part of the data
    assert cache.fingerprint({"a": (1, 2.5, None, "x")}) == {"a": [1, 2.5, None, "x"]}
    assert cache.fingerprint("t" * 300).startswith("sha256:")
    with pytest.raises(TypeError, match="cannot put a object in a cache key"):
        cache.fingerprint(object())


def test_cached_entry_builds_once_and_again_after_an_edit(tmp_path, package):
    built = []

    def build(folder):
        built.append(folder)
        (folder / "result.json").write_text(json.dumps({"value": len(built)}))

    first = cache.cached_entry("demo", "run", {"n": 3}, "llm_course.failures", build, tmp_path / "cache")
    again = cache.cached_entry("demo", "run", {"n": 3}, "llm_course.failures", build, tmp_path / "cache")
    assert first == again and len(built) == 1 and first.parent == tmp_path / "cache" / "demo"
    about = json.loads((first / "cache.json").read_text())
    assert about["settings"] == {"n": 3} and "llm_course.attention" not in about["producer"]
    assert about["code"] == cache.code_hash("llm_course.failures")
    append_code(package / "transformer.py")
    edited = cache.cached_entry("demo", "run", {"n": 3}, "llm_course.failures", build, tmp_path / "cache")
    assert edited != first and len(built) == 2
    assert json.loads((edited / "result.json").read_text()) == {"value": 2}


def test_a_failed_build_leaves_nothing(tmp_path):
    def build(folder):
        (folder / "half.bin").write_bytes(b"half")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cache.cached_entry("demo", "run", {}, "llm_course.utils", build, tmp_path)
    assert [p.name for p in (tmp_path / "demo").iterdir() if not p.name.endswith(".lock")] == []


def test_the_scaling_sweep_is_retrained_after_an_edit(tmp_path, package, monkeypatch):
    """End to end: a sweep cached by run_sweep is read back, until attention.py (in the copy) changes."""
    from llm_course import scaling

    pattern = torch.arange(20).repeat(40)
    settings = dict(plan=[(16, 1, 256)], vocab_size=20, context_length=8, batch_size=4, cache_dir=tmp_path, verbose=False)
    runs = scaling.run_sweep(pattern[:600], pattern[600:], **settings)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(scaling, "train_run", no_training)
    assert scaling.run_sweep(pattern[:600], pattern[600:], **settings) == runs
    append_code(package / "attention.py", textwrap.dedent("""

        def edited():
            return 2
    """))
    with pytest.raises(AssertionError, match="trained again"):
        scaling.run_sweep(pattern[:600], pattern[600:], **settings)
