"""What runs while a check calls the student's function: the grader's runtime fence.

:func:`llm_course.grading.call` runs the student's function inside a :class:`Watch`.
The watch records what actually executes (a ``sys.setprofile`` hook: Python frames
by their code object, C functions by identity) and fails the check when

- code of the exercise's reference runs, reached by any route: the reference
  object itself (by identity), or any code whose *content* is the reference's
  (:func:`fingerprint`: bytecode, names, constants and nested code, without the
  docstring, the line numbers and the local names). That catches a second copy of
  ``llm_course``, ``exec(inspect.getsource(ref))`` and a pasted copy of the module
  file; code defined in the student's own notebook cells is matched by identity only;
- a library routine runs that the exercise forbids (:mod:`llm_course.grading.rules`);
- the function uses a capability a graded function has no business using
  (:data:`CAPABILITIES`): trace or profile functions, frame and ``gc`` introspection,
  threads and processes, signals, resource limits, ``ctypes``, IPython's shell.

Forbidden C calls are blocked (the hook raises :class:`ForbiddenCall` before they
run). After the call, the watch restores what the checks rely on from a snapshot
taken before it -- the notebook's global names, ``builtins``, ``sys.modules``, the
modules and classes the checks use, IPython's input and AST transformers and event
callbacks, ``sys`` hooks -- and fails the check if any of it changed. A thread
started by student code that is still alive afterwards taints the kernel: every
later check fails.

The watch is in-process and cooperative with Python's own introspection: it is a
fence against submissions that try to game the grader, not a sandbox for
malicious code (see the README, "What protects grading").
"""

from __future__ import annotations

import _thread
import builtins
import os
import sys
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any

#: Functions of these modules that a graded function may call; every other C function
#: defined in them is a capability it may not use.
ALLOWED_IN_MODULE = {
    "sys": {"getsizeof", "getrecursionlimit", "getdefaultencoding", "getfilesystemencoding", "exc_info",
            "exception", "intern", "is_finalizing", "getrefcount", "getswitchinterval"},
    "gc": {"collect", "isenabled"},
    "_thread": {"allocate_lock", "allocate", "get_ident", "get_native_id", "_count", "stack_size",
                "_set_sentinel", "_local", "RLock", "LockType", "daemon_threads_allowed"},
    "signal": set(),
    "resource": {"getrlimit", "getrusage", "getpagesize"},
    "faulthandler": set(),
    "atexit": set(),
    "_ctypes": set(),
    "_posixsubprocess": set(),
    "tracemalloc": set(),
}
#: Functions of ``os`` (``posix``) that start, replace or signal processes.
PROCESS_FUNCTIONS = {
    "fork", "forkpty", "kill", "killpg", "system", "popen", "abort", "_exit", "setsid", "setuid", "setgid",
    "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve",
    "posix_spawn", "posix_spawnp", "pidfd_open", "register_at_fork", "setpgid", "setpgrp", "chroot",
}
#: Packages whose Python code a graded function may not run: the notebook's shell and raw memory.
#: (Not IPython or ipykernel: a `print` runs their output stream; changes to the shell are caught by the snapshot.)
FORBIDDEN_PACKAGES = ("debugpy", "ctypes", "pdb", "bdb")


class ForbiddenCall(BaseException):
    """Raised inside student code to block a call it may not make.

    A `BaseException`, so ``except Exception`` does not swallow it; a submission that
    catches it anyway still fails the check (the violation is recorded first).
    """


def _is_function_code(code: types.CodeType) -> bool:
    return bool(code.co_flags & 0x02)  # CO_NEWLOCALS: a function body, not a module or class body


def fingerprint(code: types.CodeType) -> tuple:
    """What a code object *is*, independent of where it was compiled and of its local names.

    Bytecode (as compiled, before specialisation), global and attribute names,
    constants without the docstring, argument counts and flags, and the same for
    nested code objects. Two compilations of the same source -- the reference's
    module file, a second import of it, ``exec`` of its ``inspect.getsource`` -- give
    the same fingerprint; renaming locals or editing comments does too.
    """
    consts = list(code.co_consts)
    if _is_function_code(code) and consts and isinstance(consts[0], str):
        consts = consts[1:]  # the docstring
    parts = []
    for const in consts:
        if isinstance(const, types.CodeType):
            parts.append(fingerprint(const))
        else:
            try:
                hash(const)
                parts.append((type(const).__name__, const))
            except TypeError:
                parts.append(repr(const))
    return (code.co_code, code.co_names, tuple(parts), code.co_argcount, code.co_kwonlyargcount,
            code.co_posonlyargcount, code.co_flags & 0x0F)


def _nested_codes(code: types.CodeType) -> Iterable[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _nested_codes(const)


def _functions_of(obj: Any, depth: int = 0) -> Iterable[Any]:
    """Python functions and C callables that make up `obj` (a function, method, class, partial, ...)."""
    if depth > 2 or obj is None:
        return
    if isinstance(obj, (staticmethod, classmethod)):
        yield from _functions_of(obj.__func__, depth + 1)
    elif isinstance(obj, property):
        for part in (obj.fget, obj.fset, obj.fdel):
            yield from _functions_of(part, depth + 1)
    elif isinstance(obj, types.MethodType):
        yield from _functions_of(obj.__func__, depth + 1)
    elif isinstance(obj, type):
        for value in list(vars(obj).values()):
            if isinstance(value, (types.FunctionType, staticmethod, classmethod, property)):
                yield from _functions_of(value, depth + 1)
    elif hasattr(obj, "func") and hasattr(obj, "args") and hasattr(obj, "keywords"):  # functools.partial
        yield from _functions_of(obj.func, depth + 1)
    elif isinstance(obj, types.FunctionType):
        yield obj
        if getattr(obj, "__wrapped__", None) is not None:
            yield from _functions_of(obj.__wrapped__, depth + 1)
    elif callable(obj):
        yield obj  # a C function, method descriptor, or an object with __call__


def describe(obj: Any) -> str:
    """`module.qualname` of a function or class, for messages."""
    module = getattr(obj, "__module__", None) or getattr(getattr(obj, "__objclass__", None), "__module__", "")
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    if isinstance(obj, types.CodeType):
        module, name = "", obj.co_qualname
    return f"{module}.{name}" if module else name


class Forbidden:
    """What a call may not run: code objects and C functions, each with the name a message gives it."""

    def __init__(self) -> None:
        self.code_ids: dict[int, tuple[types.CodeType, str, str]] = {}  # id -> (code, name, kind)
        self.fingerprints: dict[tuple, tuple[str, str]] = {}  # fingerprint -> (name, kind)
        self.c_ids: dict[int, tuple[Any, str, str]] = {}  # id -> (function, name, kind)
        self.methods: dict[str, list[tuple[type, str, str]]] = {}  # method name -> [(owner class, name, kind)]
        self.files: list[tuple[str, str, str]] = []  # (path prefix, name, kind)
        self.aten: dict[str, str] = {}  # aten op name -> forbidden routine
        self.c_names: set[str] = set()  # __name__ of every forbidden C function: the hook's first, cheap test
        self.references: tuple = ()  # the objects forbidden as references (held while this is cached)

    def add(self, obj: Any, kind: str, name: str | None = None) -> None:
        """Forbid `obj` (function, class, method, C function); `kind` is "reference", "routine" or "capability"."""
        label = name or describe(obj)
        for part in _functions_of(obj):
            code = getattr(part, "__code__", None)
            if isinstance(code, types.CodeType):
                for nested in _nested_codes(code):
                    self.code_ids[id(nested)] = (nested, label, kind)
                if len(code.co_code) >= 24:  # a body of a few instructions could match unrelated code
                    self.fingerprints.setdefault(fingerprint(code), (label, kind))
            elif type(part).__name__ == "method_descriptor":
                self.methods.setdefault(part.__name__, []).append((part.__objclass__, label, kind))
                self.c_names.add(part.__name__)
            else:
                self.c_ids[id(part)] = (part, label, kind)
                self.c_names.add(getattr(part, "__name__", None))

    def add_file(self, path: str, kind: str, name: str) -> None:
        self.files.append((os.path.normcase(path), name, kind))

    def merged(self, other: "Forbidden") -> "Forbidden":
        out = Forbidden()
        for part in (self, other):
            out.code_ids.update(part.code_ids)
            out.c_ids.update(part.c_ids)
            for key, value in part.fingerprints.items():
                out.fingerprints.setdefault(key, value)
            for key, value in part.methods.items():
                out.methods.setdefault(key, []).extend(value)
            out.files.extend(part.files)
            out.aten.update(part.aten)
            out.c_names |= part.c_names
        return out


def _capabilities() -> Forbidden:
    """The capabilities no graded function may use (built once per process)."""
    caps = Forbidden()
    import importlib

    for name, allowed in ALLOWED_IN_MODULE.items():
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr, value in vars(module).items():
            if attr not in allowed and isinstance(value, types.BuiltinFunctionType):
                caps.add(value, "capability", f"{name}.{attr}")
    for attr in PROCESS_FUNCTIONS:
        if hasattr(os, attr):
            caps.add(getattr(os, attr), "capability", f"os.{attr}")
    for attr in ("breakpoint",):
        caps.add(getattr(builtins, attr), "capability", attr)
    for attr in ("settrace", "setprofile"):
        caps.add(getattr(threading, attr), "capability", f"threading.{attr}")
    import weakref

    caps.add(weakref.finalize, "capability", "weakref.finalize")
    for package in FORBIDDEN_PACKAGES:
        spec = importlib.util.find_spec(package) if package not in sys.modules else sys.modules[package].__spec__
        locations = list(getattr(spec, "submodule_search_locations", None) or []) if spec else []
        for location in locations:
            caps.add_file(os.path.join(location, ""), "capability", package)
    return caps


_CAPABILITIES: Forbidden | None = None


def capabilities() -> Forbidden:
    global _CAPABILITIES
    if _CAPABILITIES is None:
        _CAPABILITIES = _capabilities()
    return _CAPABILITIES


# --------------------------------------------------------------------------- protected state
#: Modules whose attributes the checks read (the grading guard adds its private copies).
_PROTECTED_MODULES: dict[int, types.ModuleType] = {}
#: Classes whose attributes the checks rely on (``torch.Tensor.__eq__`` ...).
_PROTECTED_CLASSES: dict[int, type] = {}
_DEFAULTS: list[bool] = []  # whether the default modules are protected yet
_TAINT: list[str] = []  # why this kernel can no longer be trusted (a thread that outlived its call)


def protect(*objects: Any) -> None:
    """Restore these modules' (or classes') attributes after every call of student code."""
    for obj in objects:
        if isinstance(obj, types.ModuleType):
            _PROTECTED_MODULES[id(obj)] = obj
        elif isinstance(obj, type):
            _PROTECTED_CLASSES[id(obj)] = obj


def _default_protection() -> None:
    protect(builtins, sys, threading)
    for name in ("math", "random", "copy", "json", "torch", "torch.nn", "torch.nn.functional", "numpy",
                 "collections", "functools", "itertools", "inspect", "types", "warnings", "contextlib", "io"):
        if name in sys.modules:
            protect(sys.modules[name])
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        protect(torch.Tensor, torch.nn.Parameter, torch.nn.Module)
    for name, module in list(sys.modules.items()):
        if name == "llm_course" or name.startswith("llm_course."):
            protect(module)
    for module in list(_PROTECTED_MODULES.values()):
        if getattr(module, "__name__", "").startswith("llm_course"):
            for value in list(vars(module).values()):
                if isinstance(value, type) and getattr(value, "__module__", "").startswith("llm_course"):
                    protect(value)


def _ipython_state() -> list[tuple[Any, str, Any]]:
    """(container, kind, snapshot) of the IPython shell's mutable state that decides how cells run."""
    module = sys.modules.get("IPython.core.interactiveshell")
    shell = getattr(getattr(module, "InteractiveShell", None), "_instance", None) if module else None
    if shell is None:
        return []
    out: list[tuple[Any, str, Any]] = [(shell.__dict__, "dict", dict(shell.__dict__))]
    values = shell.__dict__.get("_trait_values")
    if isinstance(values, dict):
        out.append((values, "dict", dict(values)))
    for owner in (shell, getattr(shell, "input_transformer_manager", None), getattr(shell, "compile", None)):
        if owner is None:
            continue
        if owner is not shell:
            out.append((owner.__dict__, "dict", dict(owner.__dict__)))
        for value in list(vars(owner).values()) + list((vars(owner).get("_trait_values") or {}).values()):
            if isinstance(value, list):
                out.append((value, "list", list(value)))
    events = getattr(shell, "events", None)
    callbacks = getattr(events, "callbacks", None)
    if isinstance(callbacks, dict):
        out.append((callbacks, "dict", dict(callbacks)))
        out += [(value, "list", list(value)) for value in callbacks.values() if isinstance(value, list)]
    return out


class _Snapshot:
    """Everything a call of student code may not change, restored (and reported) afterwards."""

    def __init__(self, namespace: dict | None) -> None:
        # (dict, its copy, the ids of its values, what it is): comparing id lists runs at C speed and
        # never calls a student object's __eq__.
        self.dicts: list[tuple[dict, dict, list[int], list, str]] = []
        if namespace is not None:
            self._keep(namespace, "the notebook's global names")
        for module in _PROTECTED_MODULES.values():
            self._keep(module.__dict__, f"module {module.__name__}")
        self.classes = [(cls, dict(vars(cls))) for cls in _PROTECTED_CLASSES.values()]
        self.class_ids = [(list(map(id, vars(cls).values())), list(vars(cls))) for cls in _PROTECTED_CLASSES.values()]
        # The entries of sys.modules by which the checks import what they use.
        self.modules = {m.__name__: m for m in _PROTECTED_MODULES.values() if sys.modules.get(m.__name__) is m}
        self.lists = [(sys.meta_path, list(sys.meta_path), "sys.meta_path"),
                      (sys.path_hooks, list(sys.path_hooks), "sys.path_hooks"),
                      (sys.path, list(sys.path), "sys.path")]
        import gc

        self.lists.append((gc.callbacks, list(gc.callbacks), "gc.callbacks"))
        self.ipython = _ipython_state()
        self.hooks = (sys.stdout, sys.stderr, sys.displayhook, sys.excepthook, sys.breakpointhook)
        self.threads = set(threading.enumerate())
        self.thread_count = _thread._count()  # threads alive, those started without `threading` too

    def _keep(self, target: dict, what: str) -> None:
        saved = dict(target)
        self.dicts.append((target, saved, list(map(id, saved.values())), list(saved), what))

    def restore(self) -> list[str]:
        """Put everything back; return what had changed."""
        changed: list[str] = []
        for target, saved, ids, keys, what in self.dicts:
            if list(map(id, target.values())) != ids or list(target) != keys:
                names = {k for k in saved if target.get(k, _MISSING) is not saved[k]} | (target.keys() - saved.keys())
                names -= _BOOKKEEPING  # Python's own (the warnings registry), not the student's doing
                if names:
                    changed.append(f"{what} ({', '.join(sorted(map(str, names))[:4])})")
                for key in target.keys() - saved.keys() - _BOOKKEEPING:
                    del target[key]
                target.update({k: v for k, v in saved.items() if k not in _BOOKKEEPING})
        for (cls, saved), (ids, keys) in zip(self.classes, self.class_ids):
            current = vars(cls)
            if list(map(id, current.values())) != ids or list(current) != keys:
                changed.append(f"class {cls.__qualname__}")
                for key in list(current.keys() - saved.keys()):
                    delattr(cls, key)
                for key, value in saved.items():
                    if current.get(key, _MISSING) is not value:
                        try:
                            setattr(cls, key, value)
                        except (AttributeError, TypeError):
                            pass
        gone = [k for k, v in self.modules.items() if sys.modules.get(k) is not v]
        if gone:
            changed.append(f"sys.modules ({', '.join(gone[:4])})")
            sys.modules.update({k: self.modules[k] for k in gone})
        for target, saved, what in self.lists:
            if len(target) != len(saved) or any(a is not b for a, b in zip(target, saved)):
                changed.append(what)
                target[:] = saved
        for target, kind, saved in self.ipython:
            if kind == "list" and (len(target) != len(saved) or any(a is not b for a, b in zip(target, saved))):
                changed.append("IPython's input/AST transformers or event callbacks")
                target[:] = saved
            elif kind == "dict" and (target.keys() != saved.keys() or any(target[k] is not v for k, v in saved.items())):
                changed.append("IPython's shell")
                target.clear()
                target.update(saved)
        stdout, stderr, displayhook, excepthook, breakpointhook = self.hooks
        if (sys.displayhook, sys.excepthook, sys.breakpointhook) != (displayhook, excepthook, breakpointhook):
            changed.append("sys hooks")
            sys.displayhook, sys.excepthook, sys.breakpointhook = displayhook, excepthook, breakpointhook
        sys.stdout, sys.stderr = stdout, stderr
        new = [t for t in threading.enumerate() if t not in self.threads and t.is_alive()]
        if new or _thread._count() > self.thread_count:
            changed.append("a thread that is still running")
            _TAINT.append("a graded function started a thread that kept running after the call")
        return changed


_MISSING = object()
_BOOKKEEPING = {"__warningregistry__"}
_FINGERPRINTS: dict[int, tuple[types.CodeType, tuple]] = {}  # id(code) -> (code, its fingerprint)


def _route(frame: types.FrameType | None, last: str) -> str:
    """'fn -> helper -> last': the frames from the graded function down to the forbidden call."""
    names: list[str] = []
    while frame is not None and frame.f_code is not _RUN_CODE:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    names = names[:12]
    return " -> ".join([*reversed(names), last])


class Watch:
    """Run student code with the profile hook installed and the interpreter state snapshotted."""

    def __init__(self, fn: Callable, forbidden: Forbidden) -> None:
        self.fn = fn
        self.forbidden = forbidden
        self.violations: list[str] = []
        self._verdicts: dict[int, tuple[types.CodeType, tuple[str, str] | None]] = {}
        namespace = getattr(fn, "__globals__", None)
        self.namespace = namespace if isinstance(namespace, dict) else None
        self.own_codes = self._notebook_codes()
        ops = sys.modules.get("torch._ops")
        self.op_calls = set()
        if ops is not None and forbidden.aten:
            self.op_calls = {id(getattr(getattr(ops, c), "__call__").__code__) for c in ("OpOverloadPacket", "OpOverload")}

    def _notebook_codes(self) -> set[int]:
        """Code the student defined in the notebook's cells: matched by identity only, never by content.

        (A student's cell may hold a copy of the reference: finding copies is the similarity
        report's job. Code compiled while the function runs is never in this set.)
        """
        codes = set()
        for value in (self.namespace or {}).values():
            if getattr(value, "__module__", None) != "__main__":
                continue
            for part in _functions_of(value):
                code = getattr(part, "__code__", None)
                if isinstance(code, types.CodeType):
                    codes.update(id(c) for c in _nested_codes(code))
        return codes

    # ----------------------------------------------------------------- the hook
    def _classify(self, code: types.CodeType) -> tuple[str, str] | None:
        hit = self.forbidden.code_ids.get(id(code))
        if hit is not None and hit[0] is code:
            return hit[1], hit[2]
        filename = os.path.normcase(code.co_filename)
        for prefix, name, kind in self.forbidden.files:
            if filename.startswith(prefix):
                return name, kind
        if id(code) in self.own_codes or not _is_function_code(code) or not self.forbidden.fingerprints:
            return None
        cached = _FINGERPRINTS.get(id(code))
        if cached is None or cached[0] is not code:
            cached = _FINGERPRINTS[id(code)] = (code, fingerprint(code))
        return self.forbidden.fingerprints.get(cached[1])

    def _hook(self, frame, event, arg):
        if event == "c_call":
            if frame.f_code is _RUN_CODE:
                return  # the watch's own calls (sys.getprofile at the end)
            if arg.__name__ not in self.forbidden.c_names:
                return
            hit = self.forbidden.c_ids.get(id(arg))
            if hit is None:
                owners = self.forbidden.methods.get(arg.__name__)
                if owners is None:
                    return
                owner = getattr(arg, "__self__", None)
                hit = next(((None, name, kind) for cls, name, kind in owners if isinstance(owner, cls)), None)
                if hit is None:
                    return
            self._violate(frame, hit[1], hit[2])
        elif event == "call":
            code = frame.f_code
            cached = self._verdicts.get(id(code))
            if cached is None or cached[0] is not code:
                cached = (code, self._classify(code))
                self._verdicts[id(code)] = cached
            if cached[1] is not None:
                self._violate(frame.f_back, cached[1][0], cached[1][1])
            elif id(code) in self.op_calls:
                op = frame.f_locals.get("self")
                name = str(getattr(op, "_qualified_op_name", None) or getattr(op, "_name", "") or "")
                base = name.replace("::", ".").split(".")
                key = base[1] if len(base) > 1 else name
                if key in self.forbidden.aten:
                    self._violate(frame.f_back, f"torch.ops.aten.{key} ({self.forbidden.aten[key]})", "routine")

    def _violate(self, frame, name: str, kind: str) -> None:
        """Record the violation (kind|name|route), then block the call it is about."""
        route = _route(frame, name)
        self.violations.append(f"{kind}|{name}|{route}")
        raise ForbiddenCall(f"{name} may not be used here")

    # ----------------------------------------------------------------- running
    def run(self, *args: Any, **kwargs: Any) -> Any:
        if _TAINT:
            raise ForbiddenCall(_TAINT[0])
        if not _DEFAULTS:
            _DEFAULTS.append(True)
            _default_protection()
        snapshot = _Snapshot(self.namespace)
        previous = sys.getprofile()
        sys.setprofile(self._hook)
        try:
            return self.fn(*args, **kwargs)
        finally:
            hook_kept = sys.getprofile() == self._hook
            sys.setprofile(previous)
            for what in snapshot.restore():
                self.violations.append(f"state|{what}|")
            if not hook_kept and not self.violations:
                self.violations.append("state|the grader's profile hook|")
            self._verdicts.clear()

    def message(self) -> str | None:
        """The check's failure message for the first violation, or None."""
        if not self.violations:
            return None
        name = getattr(self.fn, "__name__", "your function")
        kind, what, route = self.violations[0].split("|", 2)
        via = f" (route: {route})" if route and " -> " in route else ""
        if kind == "reference":
            if what.startswith("llm_course"):
                return f"{name} uses the course's reference implementation {what}{via}; write it yourself (this earns no points)."
            return f"{name} calls {what}, which does the whole exercise{via}; write it yourself (this earns no points)."
        if kind == "routine":
            return f"{name} calls {what}, which the exercise asks you to write yourself{via} (this earns no points)."
        if kind == "capability":
            return (f"{name} uses {what}{via}, which a graded function may not use (it could change how the "
                    "notebook is graded); this earns no points.")
        return (f"{name} changed {what} while it ran; a graded function may only compute its result "
                "(this earns no points).")


_RUN_CODE = Watch.run.__code__
