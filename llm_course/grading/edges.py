"""Naming the edge case a hidden check is testing, so its failure message says which one.

The hidden test of each exercise walks through the edges that the exercise's own
text defines (equality at a threshold, bin edges, multi-digit ids, bf16 and float64
inputs, sum vs mean losses, empty inputs, ...). Wrapping each one in
``with edge("..."):`` prefixes any failure inside it with that edge, so that a
student reads *where* their function breaks, not only *what* differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from llm_course.grading import CheckFailed, fail

__all__ = ["edge", "expect_dtype"]


@contextlib.contextmanager
def edge(description: str) -> Iterator[None]:
    """Re-raise a :class:`CheckFailed` in the block with "edge case (description): " in front.

    The same exception goes on (its type, cause and traceback kept); only its message grows.
    """
    try:
        yield
    except CheckFailed as err:
        err.args = (f"edge case ({description}): {err}", *err.args[1:])
        raise


def expect_dtype(got, dtype, what: str) -> None:
    """Fail unless the tensor `got` has `dtype`: the exercise says the result keeps the input's dtype."""
    if got.dtype != dtype:
        fail(
            f"{what} should be {dtype}, like the input, got {got.dtype}: do not convert the inputs or the "
            "result to another dtype (a tensor created inside the function gets the input's dtype with "
            "dtype=x.dtype, or torch.zeros_like / new_zeros)."
        )
