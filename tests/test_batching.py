"""Tests for llm_course.batching: static and continuous batching return, for every request, exactly
the tokens greedy decoding gives it alone (GPT-2 and Llama layouts, stop tokens, one-token answers);
continuous batching needs fewer decode steps on a mixed workload."""

import dataclasses

import pytest
import torch

from llm_course.batching import Request, continuous_batching, mixed_workload, static_batching
from llm_course.generation import generate
from llm_course.transformer import Transformer, llama_tiny, tiny

V = 61


def model(make):
    torch.manual_seed(0)
    m = Transformer(dataclasses.replace(make(V), n_layers=2, d_model=64, context_length=64)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def alone(m, request):
    out = generate(m, torch.tensor([request.prompt]), request.max_new_tokens, temperature=0, eos_id=request.eos_id)
    new = out[0, len(request.prompt) :].tolist()
    if request.eos_id is not None and request.eos_id in new:
        new = new[: new.index(request.eos_id) + 1]
    return new


@pytest.mark.parametrize("make", [tiny, llama_tiny], ids=["gpt2", "llama"])
def test_every_request_gets_what_it_would_get_alone(make):
    m = model(make)
    requests = mixed_workload(11, V, prompt_range=(1, 12), output_range=(1, 20), seed=1)
    expected = [alone(m, r) for r in requests]
    # A stop token that some request produces early.
    eos = expected[0][min(2, len(expected[0]) - 1)]
    requests.append(Request(requests[0].prompt, 20, eos_id=eos))
    expected.append(alone(m, requests[-1]))
    for serve in (static_batching, continuous_batching):
        stats = serve(m, requests, batch_size=4)
        assert stats.outputs == expected, serve.__name__
        assert stats.generated == sum(len(e) for e in expected)


def test_continuous_batching_needs_fewer_steps():
    m = model(tiny)
    requests = mixed_workload(24, V, prompt_range=(2, 16), output_range=(2, 40), seed=2)
    static = static_batching(m, requests, batch_size=6)
    continuous = continuous_batching(m, requests, batch_size=6)
    assert continuous.outputs == static.outputs
    assert continuous.decode_steps < 0.8 * static.decode_steps
    assert continuous.utilization > static.utilization


def test_request_too_long_raises():
    m = model(tiny)
    with pytest.raises(ValueError, match="context_length"):
        continuous_batching(m, [Request([1] * 40, 30)], batch_size=2)


def test_out_of_range_prompt_ids_are_named():
    # The decode path does not read the ids back from the device, so the requests are checked first.
    m = model(tiny)
    for serve in (continuous_batching, static_batching):
        message = rf"request 1: token ids must be in \[0, {V}\) \(vocab_size\), got values from 0 to {V}"
        with pytest.raises(ValueError, match=message):
            serve(m, [Request([1, 2], 3), Request([0, V], 3)], batch_size=2)
