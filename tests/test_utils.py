import random

import numpy as np
import pytest
import torch

from llm_course import get_device, set_seed


def test_get_device_picks_what_is_available():
    device = get_device()
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert device.type == expected
    assert get_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without a GPU")
def test_asking_for_a_missing_device_says_what_is_available():
    with pytest.raises(RuntimeError, match=r"device 'cuda' was asked for, but only \['cpu'\]"):
        get_device("cuda")


def test_set_seed_makes_every_generator_repeat():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    g1 = set_seed(123)
    first = draw(), torch.rand(1, generator=g1).item()
    g2 = set_seed(123)
    assert (draw(), torch.rand(1, generator=g2).item()) == first
    set_seed(124)
    assert draw() != first[0]


def test_set_seed_rejects_non_integers():
    with pytest.raises(TypeError, match="seed must be an int"):
        set_seed(1.5)


@pytest.mark.cuda
def test_set_seed_seeds_cuda():
    set_seed(7)
    a = torch.rand(3, device="cuda")
    set_seed(7)
    assert torch.equal(a, torch.rand(3, device="cuda"))


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    from pathlib import Path

    from llm_course.utils import cache_dir

    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path))
    assert cache_dir("scaling", "x.json") == tmp_path / "scaling" / "x.json"
    monkeypatch.delenv("LLM_COURSE_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "llm_course"


def test_set_seed_returns_a_generator_on_the_device_asked_for():
    assert set_seed(3).device.type == "cpu"
    g = set_seed(3, device="cpu")
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=torch.Generator().manual_seed(3)))
    if torch.cuda.is_available():
        assert set_seed(3, device="cuda").device.type == "cuda"


def test_check_generator_names_both_devices():
    from llm_course.utils import check_generator

    check_generator(None, torch.zeros(2, device="meta"))  # torch's global generators always fit
    check_generator(torch.Generator(), torch.zeros(2))
    # A tensor on another device (meta stands in for a GPU here): the message says what to do.
    with pytest.raises(RuntimeError, match=r"generator is on 'cpu' and the logits on 'meta'.*device='meta'"):
        check_generator(torch.Generator(), torch.zeros(2, device="meta"), "the logits")
