"""Small helpers shared by the book, the command line and the tests.

`get_device` is the only place that chooses hardware (CUDA, then Apple's MPS, then
the CPU); library code never calls it. `set_seed` seeds every random generator the
course uses, so a chapter's first cell makes the whole page reproducible, and returns a
generator on the device it is asked for. `check_generator` is the check the library runs
where an explicit generator meets a tensor: a generator draws only on its own device.
`cache_dir` is where trained models and experiment results are kept between runs.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def get_device(prefer: str | None = None) -> torch.device:
    """Return the best available device: CUDA, then MPS, then CPU.

    `prefer` ("cuda", "mps" or "cpu") asks for one explicitly; asking for a device
    that is not available raises a `RuntimeError` naming what is available.
    """
    available = ["cpu"]
    if torch.backends.mps.is_available():
        available.insert(0, "mps")
    if torch.cuda.is_available():
        available.insert(0, "cuda")
    if prefer is None:
        return torch.device(available[0])
    kind = torch.device(prefer).type
    if kind not in available:
        raise RuntimeError(f"device {prefer!r} was asked for, but only {available} are available")
    return torch.device(prefer)


def set_seed(seed: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """Seed Python's, NumPy's and PyTorch's generators (CPU and CUDA).

    Returns a fresh `torch.Generator` on `device` seeded with `seed`, for code that takes
    an explicit generator (samplers, dropout, data shuffling). Pass the device of the
    tensors it will drive: a sampler for a model on CUDA needs a CUDA generator.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)  # inherited by child processes only
    return torch.Generator(device=device).manual_seed(seed)


def check_generator(generator: torch.Generator | None, tensor: torch.Tensor, what: str = "this tensor") -> None:
    """Raise a RuntimeError naming both devices if `generator` cannot draw random numbers for `tensor`.

    PyTorch's own error ("Expected a 'cuda' device type for generator but found 'cpu'")
    does not say which generator or what to do. None (torch's global generators) always fits.
    """
    if generator is None or generator.device.type == tensor.device.type:
        return
    device = str(tensor.device)
    raise RuntimeError(
        f"the generator is on {generator.device.type!r} and {what} on {device!r}, but a generator draws only "
        f"on its own device: create it on the model's device, e.g. torch.Generator(device={device!r})"
        f".manual_seed(seed) or set_seed(seed, device={device!r})"
    )


def cache_dir(*parts: str) -> Path:
    """The course's cache folder: ``$LLM_COURSE_CACHE`` if set, else ``~/.cache/llm_course``, joined with `parts`.

    Models trained once (chapter 06's pretrained model, the scaling sweep, ...) live here so
    that later chapters and rebuilds of the book reuse them. Nothing is created here.
    """
    root = os.environ.get("LLM_COURSE_CACHE") or Path.home() / ".cache" / "llm_course"
    return Path(root).expanduser().joinpath(*parts)
