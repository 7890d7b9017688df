"""Timing helpers shared by the benchmarks: the wall time of one call, synchronized with a GPU.

Imported by the `bench_*.py` scripts, which run as `python bench/bench_x.py` (this folder is
then first on `sys.path`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds that `fn()` takes, with the device synchronized before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_forward(module: torch.nn.Module, x: torch.Tensor, device: torch.device) -> float:
    """One forward pass without autograd."""
    with torch.no_grad():
        return time_call(lambda: module(x), device)


def time_forward_backward(
    module: torch.nn.Module, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device
) -> float:
    """One forward pass, `loss_fn` of its output, and the backward pass."""
    module.zero_grad(set_to_none=True)
    return time_call(lambda: loss_fn(module(x)).backward(), device)


def interleaved_medians(
    subjects: dict[str, object],
    measures: dict[str, Callable[[object], float]],
    warmup: int,
    reps: int,
) -> dict[tuple[str, str], float]:
    """Median seconds of each measure on each subject, ``{(subject, measure): seconds}``.

    Subjects are interleaved and their order rotates every repetition, so a slow patch of a
    noisy machine hits all of them alike; the first `warmup` repetitions are not counted.
    """
    names = list(subjects)
    times: dict[tuple[str, str], list[float]] = {(n, m): [] for n in names for m in measures}
    for rep in range(warmup + reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            for measure, fn in measures.items():
                seconds = fn(subjects[name])
                if rep >= warmup:
                    times[(name, measure)].append(seconds)
    return {key: statistics.median(values) for key, values in times.items()}
