"""Grading checks for the course's exercise notebooks.

Each chapter has a module here (``grading/tokenization.py`` for chapter 02, ...)
with one ``check_<exercise>(student_fn, hidden=False)`` per graded function. The
notebooks' test cells call them; nbgrader gives a cell its points when the call
returns and none when it raises.

A check compares the student's function with the reference implementation in
``llm_course``, on hand-worked examples (the visible test cell) and on seeded
random inputs and edge cases (the hidden test cell, ``hidden=True``). Its failure
message says *what* is wrong and, where a common mistake explains it, *why*.

This module holds what every check needs: calling student code safely
(:func:`call`), failing with a message (:class:`CheckFailed`), detecting a
submission that just calls the reference (:func:`forbid_reference`), and the
message that a check passed (:func:`passed`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import signal
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = [
    "CheckFailed",
    "call",
    "expect_tensor",
    "fail",
    "first_difference",
    "forbid_reference",
    "passed",
    "short",
    "time_limit",
]

#: Seconds one call of a student's function may take before the check gives up on it.
CALL_TIME_LIMIT = 10.0


class CheckFailed(AssertionError):
    """A grading check found the student's function wrong; the message says how."""


def fail(message: str) -> None:
    """Fail the check with `message` (raises :class:`CheckFailed`)."""
    raise CheckFailed(message)


def short(value: Any, limit: int = 120) -> str:
    """`repr(value)`, cut to `limit` characters so messages stay readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...]"


class TimeLimitExceeded(BaseException):
    """Raised inside student code when a call runs too long.

    A `BaseException`, like `KeyboardInterrupt`, so that a student's
    ``except Exception`` cannot swallow it.
    """


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`TimeLimitExceeded` in the block after `seconds` (main thread on POSIX; else no limit).

    nbgrader's cell timeout remains the backstop; this one lets the check say
    *which* call did not finish.
    """
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise TimeLimitExceeded

    outer_remaining, _ = signal.getitimer(signal.ITIMER_REAL)  # an enclosing limit, if any
    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, outer_remaining) if outer_remaining else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_remaining:  # re-arm the enclosing limit with what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(outer_remaining - (time.monotonic() - start), 1e-3))


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", "your function")


def call(fn: Callable, *args: Any, copy_args: bool = True, **kwargs: Any) -> Any:
    """Call the student's `fn` on deep copies of the arguments, translating failures into messages.

    A stub that still raises `NotImplementedError` gets a message saying so; any
    other exception is reported with the arguments that caused it. Arguments are
    copied so a function that modifies its input cannot corrupt the next case
    (checks that care pass ``copy_args=False`` and compare the input before and after).
    Warnings and writes to stderr during the call are silenced: nbgrader fails a cell with
    any stderr output, even when every check in it passes.
    """
    if not callable(fn):
        fail(f"expected a function, got {type(fn).__name__}: did you overwrite the name with a value?")
    args_copy = copy.deepcopy(args) if copy_args else args
    kwargs_copy = copy.deepcopy(kwargs) if copy_args else kwargs
    shown = ", ".join([short(a, 60) for a in args] + [f"{k}={short(v, 60)}" for k, v in kwargs.items()])
    # nbgrader gives 0 points to a test cell with any output on stderr, so a warning raised in
    # the student's function (say, torch's "std(): degrees of freedom is <= 0") would zero a
    # cell whose checks all pass: warnings and stderr writes during the call are kept here.
    try:
        with time_limit(CALL_TIME_LIMIT), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return fn(*args_copy, **kwargs_copy)
    except TimeLimitExceeded:
        message = (
            f"{_name(fn)}({shown}) did not finish within {CALL_TIME_LIMIT:g} s: "
            "is there a loop that never ends, or a loop that makes no progress?"
        )
    except NotImplementedError:
        message = f"{_name(fn)} is not implemented yet: replace `raise NotImplementedError()` with your code."
    except CheckFailed:
        raise
    except RecursionError:
        message = f"{_name(fn)}({shown}) recursed without end (RecursionError)."
    except Exception as err:  # noqa: BLE001 - any student error becomes a message
        # Chained, so the student also sees the traceback into their own code.
        raise CheckFailed(f"{_name(fn)}({shown}) raised {type(err).__name__}: {err}") from err
    raise CheckFailed(message) from None  # the message says it all: no traceback into the stub


def _code_objects(code: types.CodeType) -> Iterable[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _referenced_objects(fn: Callable) -> Iterable[Any]:
    """Objects a function can reach by name: globals and module attributes it reads, defaults, closures."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return
    names = {name for c in _code_objects(code) for name in c.co_names}
    scope = getattr(fn, "__globals__", {})
    for name in names:
        value = scope.get(name, sys.modules.get(name))  # a global, or a module imported inside fn
        if value is None:
            continue
        yield value
        if isinstance(value, types.ModuleType):
            for attr in names:
                if hasattr(value, attr):
                    yield getattr(value, attr)
    yield from getattr(fn, "__defaults__", None) or ()
    yield from (getattr(fn, "__kwdefaults__", None) or {}).values()
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            yield cell.cell_contents
        except ValueError:  # an empty cell
            continue


def _qualified(obj: Any) -> tuple[str, str]:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None)
    return (module, name) if isinstance(module, str) and isinstance(name, str) else ("", "")


def forbid_reference(fn: Callable, *references: Callable) -> None:
    """Fail if the student's `fn` is, or calls by name, one of the reference implementations.

    The exercise is to write the function, not to call the course's own. This is a
    static look at the names the function uses (not a sandbox): it catches
    ``return llm_course.bpe.merge(...)``, ``from llm_course.bpe import merge``
    inside or outside the function, and aliases of either.
    """
    forbidden = {id(r): r for r in references}
    # Grading loads a private copy of llm_course before the student's code runs (see
    # instructor/preprocessors.py), so the student's import of a reference is another object
    # with the same module and qualified name: match those too.
    by_name = {_qualified(r): r for r in references if _qualified(r)[0].startswith("llm_course")}
    candidates = [fn, *_referenced_objects(fn)]
    for obj in candidates:
        target = inspect.unwrap(obj) if callable(obj) else obj
        ref = forbidden.get(id(obj)) or forbidden.get(id(target)) or by_name.get(_qualified(target))
        if ref is not None:
            module = getattr(ref, "__module__", None) or ""
            where = f"{module}.{ref.__qualname__}" if module else ref.__qualname__
            if module.startswith("llm_course"):
                fail(f"{_name(fn)} uses the course's reference implementation {where}; write it yourself (this earns no points).")
            fail(f"{_name(fn)} calls {where}, which does the whole exercise; write it yourself (this earns no points).")


def seeded(seed: int):
    """A CPU `torch.Generator` seeded with `seed`: the random cases of a check are the same on every run."""
    import torch  # here, not at import time: the tokenizer checks need no torch

    return torch.Generator().manual_seed(seed)


def passed(fn: Callable, what: str) -> None:
    """Print the line a student sees when a check passes."""
    print(f"\u2714 {_name(fn)}: {what}")


def expect_tensor(fn: Callable, got: Any, what: str):
    """Fail unless the student's function returned a `torch.Tensor`; return it."""
    import torch  # here, not at import time: the tokenizer checks need no torch

    if not isinstance(got, torch.Tensor):
        fail(f"{_name(fn)} should return a torch.Tensor ({what}), got {type(got).__name__}: {short(got)}")
    return got


def first_difference(got, want) -> str:
    """Where two tensors of the same shape differ most: "at index (i, j) expected a, got b"."""
    got, want = got.detach(), want.detach()
    err = (got.double() - want.double()).abs()
    index = tuple(int(i) for i in (err == err.max()).nonzero()[0])
    return f"at index {index} expected {want[index].item():.6g}, got {got[index].item():.6g}"
