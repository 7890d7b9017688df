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
(:func:`call`, which runs it under :mod:`llm_course.grading.watch`), failing with
a message (:class:`CheckFailed`), naming the references a submission may not
use (:func:`forbid_reference`; the library routines each exercise forbids are in
:mod:`llm_course.grading.rules`), and the message that a check passed (:func:`passed`).
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

from llm_course.grading import rules, watch

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

    The call runs under :class:`~llm_course.grading.watch.Watch`: it fails when the
    exercise's reference (see :func:`forbid_reference`), a library routine the exercise
    forbids (:mod:`llm_course.grading.rules`) or a capability no graded function may
    use runs, by whatever route, and when the function changed state the checks rely
    on. The result must be plain data (:func:`_check_plain`), so that no student code
    runs when the check compares it.
    """
    if not callable(fn):
        fail(f"expected a function, got {type(fn).__name__}: did you overwrite the name with a value?")
    args_copy = copy.deepcopy(args) if copy_args else args
    kwargs_copy = copy.deepcopy(kwargs) if copy_args else kwargs
    shown = ", ".join([short(a, 60) for a in args] + [f"{k}={short(v, 60)}" for k, v in kwargs.items()])
    # nbgrader gives 0 points to a test cell with any output on stderr, so a warning raised in
    # the student's function (say, torch's "std(): degrees of freedom is <= 0") would zero a
    # cell whose checks all pass: warnings and stderr writes during the call are kept here.
    guard = watch.Watch(fn, _forbidden_here())
    try:
        try:
            with time_limit(CALL_TIME_LIMIT), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                result = guard.run(*args_copy, **kwargs_copy)
        finally:
            refused = guard.message()  # whatever the function did after a refused call, it fails
        if refused:
            raise CheckFailed(refused)
        _check_plain(fn, result)
        return result
    except watch.ForbiddenCall as err:
        message = guard.message() or f"{_name(fn)}: {err}"
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
    """Fail if the student's `fn` is, or calls, one of the reference implementations.

    The exercise is to write the function, not to call the course's own. Two
    layers: here, a static look at the names the function uses (it catches
    ``return llm_course.bpe.merge(...)``, ``from llm_course.bpe import merge`` inside
    or outside the function, and aliases of either, before anything runs); and the
    references are registered for the calling check, so that every later
    :func:`call` in that check fails if their code runs by any route -- a helper, a
    dotted path, ``getattr``/``importlib``, ``exec`` of their source, another
    ``llm_course`` function that uses them (:mod:`llm_course.grading.watch`).
    """
    _register_references(references)
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


# --------------------------------------------------------------------------- runtime rules
#: check frame id -> (check code, references registered by forbid_reference in that check)
_REGISTERED: dict[int, tuple[types.CodeType, tuple]] = {}
_FORBIDDEN_CACHE: dict[tuple, watch.Forbidden] = {}


def _check_frame() -> types.FrameType | None:
    """The frame of the ``check_*`` function of a chapter module that is running (None outside checks)."""
    frame = sys._getframe(2)
    for _ in range(12):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_name.startswith("check_") and str(frame.f_globals.get("__name__", "")).startswith("llm_course.grading."):
            return frame
        frame = frame.f_back
    return None


def _register_references(references: tuple) -> None:
    frame = _check_frame()
    if frame is None:
        return
    if len(_REGISTERED) > 64:
        _REGISTERED.clear()
    code, known = _REGISTERED.get(id(frame), (None, ()))
    if code is not frame.f_code:
        known = ()
    _REGISTERED[id(frame)] = (frame.f_code, known + tuple(references))


def _forbidden_here() -> watch.Forbidden:
    """What the running check forbids: its references, its rules, and the capabilities."""
    frame = _check_frame()
    references: tuple = ()
    key = ""
    if frame is not None:
        code, registered = _REGISTERED.get(id(frame), (None, ()))
        references = registered if code is frame.f_code else ()
        key = f"{str(frame.f_globals['__name__']).rsplit('.', 1)[-1]}.{frame.f_code.co_name}"
    cache_key = (key, tuple(id(r) for r in references))
    forbidden = _FORBIDDEN_CACHE.get(cache_key)
    if forbidden is None:
        own = watch.Forbidden()
        for reference in references:
            own.add(reference, "reference")
        rules.add_rules(own, key)
        forbidden = _FORBIDDEN_CACHE[cache_key] = watch.capabilities().merged(own)
        forbidden.references = references  # held, so the ids in the cache key stay theirs
    return forbidden


#: Types a graded function may return (inside lists, tuples and dicts): values whose
#: comparison runs no student code.
_PLAIN = {int, float, bool, complex, str, bytes, type(None), list, tuple, dict, set, frozenset, range, slice}


def _plain_types() -> set:
    plain = set(_PLAIN)
    torch = sys.modules.get("torch")
    if torch is not None:
        plain |= {torch.Tensor, torch.nn.Parameter, torch.dtype, torch.Size, torch.device}
    np = sys.modules.get("numpy")
    if np is not None:
        plain |= {np.ndarray, np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
                  np.uint8, np.bool_, np.complex128}
    return plain


def _check_plain(fn: Callable, value: Any) -> None:
    """Fail unless `value` is plain data: exact built-in, tensor or array types, nested in containers.

    A returned object with its own ``__eq__``, a tensor subclass with
    ``__torch_function__``, a generator or a ``map`` of the student's lambdas would
    run student code -- outside :func:`call`'s watch -- when the check compares it.
    """
    plain = _plain_types()
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind not in plain and not (kind.__module__ == "torch.return_types" and isinstance(item, tuple)):
            fail(
                f"{_name(fn)} returned a {kind.__module__}.{kind.__qualname__}"
                f"{'' if item is value else ' inside its result'}: return plain values "
                "(numbers, strings, lists, tuples, dicts, torch.Tensor), not objects of other types."
            )
        if kind in (list, tuple, set, frozenset) or isinstance(item, tuple):
            if len(item) and {type(x) for x in item} <= {int, float, bool, str}:
                continue  # the common case, checked in one pass
            stack.extend(item)
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        seen += 1
        if seen > 1_000_000:
            fail(f"{_name(fn)} returned a result with more than a million nested values.")


def seeded(seed: int):
    """A CPU `torch.Generator` seeded with `seed`: the random cases of a check are the same on every run."""
    import torch  # here, not at import time: the tokenizer checks need no torch

    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny models on one CPU thread: faster for them, and robust on a machine shared by many kernels."""
    import torch  # here, not at import time: the tokenizer checks need no torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def expect_value_error(fn: Callable, args: tuple, should: str) -> None:
    """The student's `fn`, called through `call` on invalid `args`, must raise ValueError.

    Whether it did is read from the exception itself (`call` chains it), not from a message: an
    error of another type, a refused or endless call fail with `call`'s own message, and a return
    fails with `should` ("f(...) should raise ValueError (why)") and what came back."""
    try:
        got = call(fn, *args)
    except CheckFailed as err:
        if isinstance(err.__cause__, ValueError):
            return
        raise
    fail(f"{should}, got {short(got)}")


def passed(fn: Callable, what: str) -> None:
    """Print the line a student sees when a check passes."""
    print(f"\u2714 {_name(fn)}: {what}")


def expect_tensor(fn: Callable, got: Any, what: str):
    """Fail unless the student's function returned a `torch.Tensor`; return it."""
    import torch  # here, not at import time: the tokenizer checks need no torch

    # Exactly a tensor: a subclass (with its own __torch_function__ or __eq__) could make
    # every comparison the check makes come out right.
    if type(got) not in (torch.Tensor, torch.nn.Parameter):
        fail(f"{_name(fn)} should return a torch.Tensor ({what}), got {type(got).__module__}.{type(got).__qualname__}: {short(got)}")
    return got


def first_difference(got, want) -> str:
    """Where two tensors of the same shape differ most: "at index (i, j) expected a, got b"."""
    got, want = got.detach(), want.detach()
    err = (got.double() - want.double()).abs()
    index = tuple(int(i) for i in (err == err.max()).nonzero()[0])
    return f"at index {index} expected {want[index].item():.6g}, got {got[index].item():.6g}"
