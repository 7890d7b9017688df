"""Serving many requests: static batching against continuous batching (chapter 09).

A decode step costs about the same for one sequence as for a batch of them (on a GPU, and
much the same on a CPU for small models: the weights are read once per step), so a server
batches requests. *Static* batching takes B requests, runs them until the longest is done,
then takes the next B: a row whose request finished early idles, and new requests wait.
*Continuous* (iteration-level) batching, from Orca (Yu et al., 2022, "Orca: A Distributed
Serving System for Transformer-Based Generative Models"), refills a row as soon as its
request finishes: every step decodes one token for each of up to B running requests.

- `Request`: a prompt (token ids), how many tokens to generate, and an optional stop token;
- `static_batching(model, requests, batch_size)` and `continuous_batching(model, requests,
  batch_size)`: greedy decoding of every request, returning each request's new tokens and a
  `ServeStats` (model calls, generated tokens, wall time, tokens/s). Both use one `KVCache`
  with a row per running request: a new request is prefilled alone into its row
  (`cache.rows(i)`), and the decode steps run all rows at once, rows holding different
  numbers of tokens (the cache masks each row's unused slots). Greedy decoding makes the
  result testable: every request gets exactly the tokens it would get alone.

Left out: sampling per request, chunked prefill (prefilling a long prompt alongside decode
steps), paged KV memory and preemption (vLLM), and the request queue of a real server
(here all requests are known at the start and admitted in order).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from llm_course.kv_cache import KVCache


@dataclass
class Request:
    """One generation request: greedy decoding of up to max_new_tokens tokens after `prompt`."""

    prompt: list[int]  # token ids, at least one
    max_new_tokens: int  # tokens to generate (fewer if eos_id comes first)
    eos_id: int | None = None  # stop after producing this token


@dataclass
class ServeStats:
    """What serving a workload cost."""

    prefills: int = 0  # forward passes over a prompt (one per request)
    decode_steps: int = 0  # batched forward passes of one token per row
    generated: int = 0  # tokens returned to the requests
    row_steps: int = 0  # rows computed by decode steps, busy or idle (the work paid for)
    seconds: float = 0.0  # wall time
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds else float("nan")

    @property
    def utilization(self) -> float:
        """Fraction of decode rows that produced a token someone asked for."""
        return (self.generated - self.prefills) / self.row_steps if self.row_steps else float("nan")


def _check(model: nn.Module, requests: list[Request], batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    longest = 0
    for i, r in enumerate(requests):
        if len(r.prompt) < 1 or r.max_new_tokens < 1:
            raise ValueError(f"request {i} needs a prompt of at least one token and max_new_tokens >= 1")
        if min(r.prompt) < 0 or max(r.prompt) >= model.config.vocab_size:  # the forward with a cache does not check
            raise ValueError(
                f"request {i}: token ids must be in [0, {model.config.vocab_size}) (vocab_size), got values "
                f"from {min(r.prompt)} to {max(r.prompt)}"
            )
        longest = max(longest, len(r.prompt) + r.max_new_tokens)
    if longest > model.config.context_length:
        context = model.config.context_length
        raise ValueError(f"a request needs {longest} tokens, more than the model's context_length {context}")
    return longest


def _done(request: Request, out: list[int]) -> bool:
    return len(out) >= request.max_new_tokens or (request.eos_id is not None and out[-1] == request.eos_id)


def _prefill(model: nn.Module, cache: KVCache, row: int, request: Request, device) -> int:
    """Empty row `row` of the cache, run the prompt into it, return the first new token."""
    row_cache = cache.rows(row)
    row_cache.reset()
    prompt = torch.tensor([request.prompt], device=device)  # (1, T)
    return int(model(prompt, cache=row_cache)[0, -1].argmax())


@torch.no_grad()
def static_batching(model: nn.Module, requests: list[Request], batch_size: int) -> ServeStats:
    """Requests in groups of `batch_size`, in order; each group decodes until its last request is done."""
    longest = _check(model, requests, batch_size)
    device = next(model.parameters()).device
    model.eval()
    stats = ServeStats(outputs=[[] for _ in requests])
    cache = KVCache.for_model(model, batch_size, longest)
    start = time.perf_counter()
    for first in range(0, len(requests), batch_size):
        group = list(range(first, min(first + batch_size, len(requests))))
        cache.reset()
        for row, i in enumerate(group):
            stats.outputs[i].append(_prefill(model, cache, row, requests[i], device))
            stats.prefills += 1
        rows = cache.rows(0, len(group))
        while not all(_done(requests[i], stats.outputs[i]) for i in group):
            last = torch.tensor([[stats.outputs[i][-1]] for i in group], device=device)  # (B, 1)
            next_ids = model(last, cache=rows)[:, -1].argmax(-1).tolist()  # every row, finished or not
            stats.decode_steps += 1
            stats.row_steps += len(group)
            for row, (i, token) in enumerate(zip(group, next_ids)):
                if _done(requests[i], stats.outputs[i]):
                    cache.rows(row).reset()  # a finished row is computed all the same, then forgotten
                else:
                    stats.outputs[i].append(token)
    stats.seconds = time.perf_counter() - start
    stats.generated = sum(len(o) for o in stats.outputs)
    return stats


@torch.no_grad()
def continuous_batching(model: nn.Module, requests: list[Request], batch_size: int) -> ServeStats:
    """Up to `batch_size` requests run at once; a finished request's row takes the next waiting one."""
    longest = _check(model, requests, batch_size)
    device = next(model.parameters()).device
    model.eval()
    stats = ServeStats(outputs=[[] for _ in requests])
    cache = KVCache.for_model(model, batch_size, longest)
    running: dict[int, int] = {}  # row -> request index
    waiting = list(range(len(requests)))
    start = time.perf_counter()
    while waiting or running:
        # Admit waiting requests into free rows (their first token comes from the prefill).
        for row in range(batch_size):
            while row not in running and waiting:
                i = waiting.pop(0)
                stats.outputs[i].append(_prefill(model, cache, row, requests[i], device))
                stats.prefills += 1
                if not _done(requests[i], stats.outputs[i]):
                    running[row] = i
        if not running:
            continue
        # One decode step for the running rows: rows 0 .. n-1 where n is the highest busy row + 1.
        n_rows = max(running) + 1
        last = torch.zeros(n_rows, 1, dtype=torch.long, device=device)  # idle rows feed token 0 ...
        for row, i in running.items():
            last[row, 0] = stats.outputs[i][-1]
        rows = cache.rows(0, n_rows)
        next_ids = model(last, cache=rows)[:, -1].argmax(-1).tolist()
        stats.decode_steps += 1
        stats.row_steps += n_rows
        for row in range(n_rows):
            if row not in running:
                cache.rows(row).reset()  # ... and forget it again
                continue
            i = running[row]
            stats.outputs[i].append(next_ids[row])
            if _done(requests[i], stats.outputs[i]):
                del running[row]
    stats.seconds = time.perf_counter() - start
    stats.generated = sum(len(o) for o in stats.outputs)
    return stats


def mixed_workload(
    n_requests: int, vocab_size: int, prompt_range: tuple[int, int] = (4, 32), output_range: tuple[int, int] = (4, 96),
    seed: int = 0,
) -> list[Request]:
    """Requests with random prompts and lengths: prompt lengths uniform in prompt_range, output
    lengths log-uniform in output_range (many short answers, a few long ones), both inclusive."""
    g = torch.Generator().manual_seed(seed)
    requests = []
    lo, hi = output_range
    for _ in range(n_requests):
        n_prompt = int(torch.randint(prompt_range[0], prompt_range[1] + 1, (1,), generator=g))
        u = float(torch.rand((), generator=g))
        n_out = min(hi, int(round(lo * (hi / lo) ** u)))
        requests.append(Request(torch.randint(0, vocab_size, (n_prompt,), generator=g).tolist(), n_out))
    return requests
