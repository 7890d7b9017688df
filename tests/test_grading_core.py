"""The helpers every check uses: calling student code, time limits, detecting the reference."""

import sys
import time

import pytest

import llm_course
import llm_course.grading as grading
from llm_course import bpe
from llm_course.grading import CheckFailed, TimeLimitExceeded, call, forbid_reference, time_limit


def test_call_explains_a_stub():
    def merge(ids, pair, new_id):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="merge is not implemented yet"):
        call(merge, [1], (1, 2), 3)


def test_call_reports_the_arguments_of_a_crash():
    def f(x):
        return 1 / x

    with pytest.raises(CheckFailed, match=r"f\(0\) raised ZeroDivisionError: division by zero"):
        call(f, 0)


def test_call_passes_copies_unless_asked_not_to():
    def mutate(xs):
        xs.append(1)
        return xs

    data = []
    assert call(mutate, data) == [1] and data == []
    call(mutate, data, copy_args=False)
    assert data == [1]


def test_call_rejects_non_functions():
    with pytest.raises(CheckFailed, match="expected a function, got int"):
        call(5)


def test_call_stops_a_loop_that_swallows_exceptions(monkeypatch):
    monkeypatch.setattr(grading, "CALL_TIME_LIMIT", 0.3)

    def stubborn():
        while True:
            try:
                while True:
                    pass
            except Exception:  # a student's catch-all cannot swallow the time limit
                pass

    start = time.monotonic()
    with pytest.raises(CheckFailed, match="did not finish within 0.3 s"):
        call(stubborn)
    assert time.monotonic() - start < 3


def test_nested_time_limits_keep_the_outer_one():
    start = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        with time_limit(0.5):
            with time_limit(10):
                pass  # the inner limit ends quickly ...
            while True:  # ... and the outer one must still fire
                pass
    assert time.monotonic() - start < 3


def test_forbid_reference_catches_every_way_of_reaching_it():
    from llm_course.bpe import merge as aliased

    def by_alias(ids, pair, new_id):
        return aliased(ids, pair, new_id)

    def by_module(ids, pair, new_id):
        return bpe.merge(ids, pair, new_id)

    def by_package(ids, pair, new_id):
        return llm_course.bpe.merge(ids, pair, new_id)

    def by_default(ids, pair, new_id, impl=bpe.merge):
        return impl(ids, pair, new_id)

    def by_import_inside(ids, pair, new_id):
        from llm_course.bpe import merge

        return merge(ids, pair, new_id)

    def make_closure():
        impl = bpe.merge

        def inner(ids, pair, new_id):
            return impl(ids, pair, new_id)

        return inner

    for fn in [bpe.merge, by_alias, by_module, by_package, by_default, by_import_inside, make_closure()]:
        with pytest.raises(CheckFailed, match="uses the course's reference implementation llm_course.bpe.merge"):
            forbid_reference(fn, bpe.merge)


def test_forbid_reference_allows_other_library_helpers():
    def train(text, vocab_size):
        return {p: 256 for p in bpe.get_pair_counts(list(bpe.pretokenize(text)[0].encode()))}

    forbid_reference(train, bpe.train_bpe)  # uses helpers, not the reference itself


def test_stub_message_hides_the_stub_traceback_but_crashes_keep_theirs():
    def stub():
        raise NotImplementedError()

    def crash():
        return [][1]

    with pytest.raises(CheckFailed) as stub_info:
        call(stub)
    assert stub_info.value.__suppress_context__ and stub_info.value.__cause__ is None
    with pytest.raises(CheckFailed) as crash_info:
        call(crash)
    assert isinstance(crash_info.value.__cause__, IndexError)


def test_call_keeps_warnings_and_stderr_of_a_passing_function_off_stderr(capsys):
    # nbgrader gives 0 points to a test cell with stderr output: a function that warns but is
    # right must leave no trace there.
    import warnings

    def noisy(x):
        warnings.warn("degrees of freedom is <= 0", UserWarning)
        print("debugging", file=sys.stderr)
        return x + 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert grading.call(noisy, 1) == 2
    assert capsys.readouterr().err == ""


def test_expect_tensor_requires_exactly_a_tensor():
    import torch

    from llm_course.grading import expect_tensor

    class Agreeable(torch.Tensor):  # every comparison with it could come out "equal"
        pass

    def fn():
        return None

    assert expect_tensor(fn, torch.zeros(2), "x").shape == (2,)
    with pytest.raises(CheckFailed, match="should return a torch.Tensor"):
        expect_tensor(fn, torch.zeros(2).as_subclass(Agreeable), "x")


def test_forbid_reference_also_forbids_it_at_run_time():
    """A check's references may not run inside its later calls, whatever the route (here a getattr)."""

    def merge(ids, pair, new_id):
        return getattr(bpe, "mer" + "ge")(ids, pair, new_id)

    # forbid_reference registers the references for the running check_* of a chapter module:
    namespace = {"__name__": "llm_course.grading.fake", "forbid_reference": forbid_reference, "call": call, "bpe": bpe}
    exec(compile("def check_merge(fn):\n    forbid_reference(fn, bpe.merge)\n    return call(fn, [1, 2], (1, 2), 9)\n",
                 "<check>", "exec"), namespace)
    with pytest.raises(CheckFailed, match="reference implementation llm_course.bpe.merge"):
        namespace["check_merge"](merge)
