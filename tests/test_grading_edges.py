"""Tests of llm_course.grading.edges: naming the edge case a hidden check is at."""

import pytest
import torch

from llm_course.grading import CheckFailed, fail
from llm_course.grading.edges import edge, expect_dtype


def test_edge_prefixes_the_failure_and_keeps_its_cause():
    cause = ValueError("inside the student's code")
    with pytest.raises(CheckFailed) as info:
        with edge("p exactly at top_p"):
            try:
                raise cause
            except ValueError as err:
                raise CheckFailed("top_p_filter kept token 3") from err
    assert str(info.value) == "edge case (p exactly at top_p): top_p_filter kept token 3"
    assert info.value.__cause__ is cause


def test_edge_lets_a_passing_block_and_other_errors_through():
    with edge("nothing wrong"):
        pass
    with pytest.raises(KeyError):  # not a check failure: a bug in the check itself must show as one
        with edge("a bug in the check"):
            raise KeyError("x")


def test_expect_dtype():
    expect_dtype(torch.zeros(2, dtype=torch.bfloat16), torch.bfloat16, "the output")
    with pytest.raises(CheckFailed, match=r"the output should be torch.bfloat16, like the input, got torch.float32"):
        expect_dtype(torch.zeros(2), torch.bfloat16, "the output")


def test_fail_inside_edge_names_it():
    with pytest.raises(CheckFailed, match=r"^edge case \(one token\): wrong$"):
        with edge("one token"):
            fail("wrong")


def test_edge_keeps_the_exception_itself():
    class Special(CheckFailed):
        pass

    original = Special("wrong dtype")
    with pytest.raises(Special) as info:
        with edge("bf16 inputs"):
            raise original
    assert info.value is original and str(info.value) == "edge case (bf16 inputs): wrong dtype"
