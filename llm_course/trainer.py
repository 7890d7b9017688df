"""Pretraining a language model: the training loop, checkpoints, exact resume, loss spikes (chapter 06).

Implements
- `TrainConfig`, every setting of a run, and `TokenBatches`, random windows of a token stream
  in an order fixed by (seed, epoch), so that the data position is two integers;
- objectives: what the trainer minimizes, `objective(model, batch) -> (loss, metrics)`;
  `language_modeling` (pretraining, the default) and `MoELanguageModeling` (plus the MoE
  load-balancing loss). Any `DataSource` (`next_batch`, `state_dict`, `load_state_dict`)
  feeds it; `TokenBatches` is the one for pretraining;
- `Trainer`: one loop for every objective. AdamW (`llm_course.optim`, or PyTorch's fused
  kernel), warmup + cosine schedule (`optim.warmup_cosine`), gradient clipping, gradient
  accumulation, bf16 autocast (on CUDA by default), optional `torch.compile`, periodic
  validation, a progress bar with loss, tokens/s, learning rate (and MFU on a known GPU),
  and the objective's named metrics logged in `history`;
- checkpoints: model.safetensors + llm_course_config.json (readable by
  `checkpoints.load_model`), optimizer.safetensors, trainer_state.safetensors (RNG states)
  and trainer.json (step, schedule, data position, detector, Python/NumPy RNG states,
  histories). Resuming restores all of it, so a stopped and resumed run computes the same
  losses as one that never stopped (the tests check, bit for bit, on CPU);
- `is_spike` and `SpikeDetector`: running statistics of the loss and of the gradient norm.
  A step whose loss or norm is not finite, or is more than `threshold` standard deviations
  above the recent mean, is not applied; after `spike_patience` bad steps in a row (or at
  once with spike_action="rollback") the trainer rolls back to the last checkpoint taken
  before the trouble began and goes on with fresh data (PaLM, Chowdhery et al., 2022, §5.1).
  With no such checkpoint, finite values are taken as a new level (the update is applied,
  the statistics restart), and NaN/inf stops the run: a NaN never reaches the weights;
- `palm_flops_per_token`, `peak_flops` and model FLOPs utilization (MFU; PaLM, appendix B);
- `sample_text`, a minimal sampler to watch training (chapter 08 builds the real ones);
- (the command `python -m llm_course train` is in `llm_course.train_cli`).

Data parallelism (chapter 13): in a process group (torchrun) each rank reads its own rows of
every global batch, the logged loss and metrics are means over the ranks, and checkpoints are
sharded (`torch.distributed.checkpoint`); `distributed.wrap_model` wraps the model in DDP or
FSDP2 before it is given to the trainer.

Left out: sequence packing with document masks, dynamic loss scaling for float16 (bf16 needs
none), and streaming corpora larger than memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import re
import shutil
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llm_course.checkpoints import load_model, save_model
from llm_course.distributed import (
    all_reduce_mean,
    barrier,
    full_model_state_dict,
    in_process_group,
    is_sharded,
    load_sharded,
    rank_and_world,
    save_sharded,
    unwrap,
    wrap_model,
)
from llm_course.losses import cross_entropy
from llm_course.optim import AdamW, clip_grad_norm_, decay_groups, grad_norm, warmup_cosine
from llm_course.transformer import (
    Transformer,
    TransformerConfig,
    count_active_parameters,
    count_parameters,
    moe_aux_loss,
    parameter_breakdown,
)

CHECKPOINT_FORMAT = "llm_course-train-checkpoint"
# fp32: float32 everywhere, exact float32 matmuls; tf32: float32 tensors, matmuls on CUDA's TF32 tensor
# cores (10-bit mantissa, `torch.set_float32_matmul_precision("high")`); bf16: autocast to bfloat16
# (with TF32 for the float32 matmuls autocast leaves); auto: bf16 on CUDA, fp32 elsewhere.
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
CHECKPOINT_VERSION = 1
CHECKPOINT_FILES = ("tokenizer.json",)  # files of out_dir that every checkpoint carries: enough to sample


@dataclass
class TrainConfig:
    """Every setting of a training run (the model's own sizes live in `TransformerConfig`)."""

    batch_size: int = 16  # B: sequences per micro-batch
    seq_len: int = 128  # T: tokens per sequence (at most the model's context_length)
    grad_accum: int = 1  # micro-batches per optimizer step: B * grad_accum * T tokens per step
    max_steps: int = 1000  # optimizer steps of the whole run (the schedule ends here)
    lr: float = 1e-3  # peak learning rate, reached at the end of warmup
    min_lr_ratio: float = 0.1  # the cosine ends at min_lr_ratio * lr
    warmup_steps: int = 100  # linear warmup from 0 to lr
    weight_decay: float = 0.1  # decoupled weight decay of matrices and embeddings (not biases, gains)
    beta1: float = 0.9  # AdamW's decay of the first moment (mean of gradients)
    beta2: float = 0.95  # AdamW's decay of the second moment (mean of squared gradients)
    eps: float = 1e-8  # AdamW's epsilon
    grad_clip: float = 1.0  # clip the global gradient norm to this (0: no clipping)
    eval_interval: int = 100  # steps between validation losses (0: only at the end)
    eval_batches: int = 8  # micro-batches of validation data per evaluation
    checkpoint_interval: int = 0  # steps between checkpoints in out_dir (0: only at the start and end)
    keep_checkpoints: int = 3  # the newest checkpoints kept on disk (older ones are deleted)
    spike_threshold: float = 6.0  # standard deviations above the recent mean that make a spike (0: NaN/inf only)
    spike_window: int = 50  # recent accepted steps whose losses and gradient norms make the statistics
    spike_min_history: int = 20  # no spike is called before this many steps were accepted
    spike_action: Literal["skip", "rollback"] = "skip"  # what a spike does first: skip the update, or roll back
    spike_patience: int = 5  # bad steps in a row after which "skip" rolls back too
    max_rollbacks: int = 5  # give up (RuntimeError) after this many rollbacks
    precision: Literal["auto", "fp32", "tf32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    compile: bool = False  # torch.compile the forward pass and loss
    fused_adamw: bool = False  # PyTorch's fused AdamW kernel instead of the course's AdamW
    seed: int = 0  # seeds the data order and torch's generators (dropout)

    def __post_init__(self):
        for name in ("batch_size", "seq_len", "grad_accum", "max_steps", "eval_batches", "spike_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.spike_action not in ("skip", "rollback"):
            raise ValueError(f'spike_action must be "skip" or "rollback", got {self.spike_action!r}')
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be "auto", "fp32", "tf32" or "bf16", got {self.precision!r}')

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def encode_split(text: str, tokenizer, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (torch.long) of the first 1 - val_fraction of `text` and of its held-out tail."""
    from llm_course.data import train_val_split

    train_text, val_text = train_val_split(text, val_fraction)
    return (
        torch.tensor(tokenizer.encode_ordinary(train_text), dtype=torch.long),
        torch.tensor(tokenizer.encode_ordinary(val_text), dtype=torch.long),
    )


class TokenBatches:
    """Batches (x, y) of B windows of T + 1 tokens from a 1-D token tensor; y is x shifted by one.

    Epoch e cuts the stream into windows starting at a random offset and visits them in a
    random order, both drawn from a generator seeded with (seed, e): the position in the
    data is (epoch, cursor), and `state_dict` / `load_state_dict` save and restore it.

    With `world_size` N > 1 (data parallelism, chapter 13) the stream is cut into global
    batches of N * batch_size windows, and rank `rank` reads rows rank * B .. (rank + 1) * B
    of each: the ranks together see what one process with batch N * B sees, and the data
    position (epoch, cursor) is the same on every rank, whatever N is.
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):  # fmt: skip
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0 .. world_size - 1 = {world_size - 1}, got {rank}")
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be a 1-D tensor of ids, got shape {tuple(tokens.shape)}")
        if len(tokens) < 2 * (seq_len + 1):
            raise ValueError(f"{len(tokens)} tokens are too few for windows of seq_len + 1 = {seq_len + 1} tokens")
        self.tokens, self.batch_size, self.seq_len, self.seed = tokens, batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.cursor = 0, 0
        self._starts = self._epoch_starts(0)

    def _epoch_starts(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        offset = int(torch.randint(0, self.seq_len, (1,), generator=g))
        n_windows = (len(self.tokens) - 1 - offset) // self.seq_len
        return offset + self.seq_len * torch.randperm(n_windows, generator=g)  # (n_windows,)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y), each (B, T), on the CPU; an epoch that runs out continues into the next."""
        starts, wanted = [], self.batch_size * self.world_size  # the global batch: N * B windows
        while len(starts) < wanted:
            if self.cursor == len(self._starts):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._starts = self._epoch_starts(self.epoch)
            take = min(wanted - len(starts), len(self._starts) - self.cursor)
            starts.extend(self._starts[self.cursor : self.cursor + take].tolist())
            self.cursor += take
        starts = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]  # this rank's rows
        index = torch.tensor(starts)[:, None] + torch.arange(self.seq_len + 1)  # (B, T + 1)
        window = self.tokens[index]  # (B, T + 1)
        return window[:, :-1].long(), window[:, 1:].long()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]
        self._starts = self._epoch_starts(self.epoch)


def eval_batches(tokens: torch.Tensor, batch_size: int, seq_len: int, n_batches: int) -> list[tuple]:
    """Up to `n_batches` (x, y) batches of consecutive windows from the start of `tokens` (always the same)."""
    n_windows = min((len(tokens) - 1) // seq_len, batch_size * n_batches)
    if n_windows < 1:
        raise ValueError(f"validation needs at least seq_len + 1 = {seq_len + 1} tokens, got {len(tokens)}")
    index = torch.arange(n_windows)[:, None] * seq_len + torch.arange(seq_len + 1)  # (n_windows, T + 1)
    windows = tokens[index]
    return [(w[:, :-1].long(), w[:, 1:].long()) for w in windows.split(batch_size)]


# ---------------------------------------------------------------------------------------
# Objectives and data sources
# ---------------------------------------------------------------------------------------

Batch = Any  # what a data source yields and an objective reads: a tensor, or a tuple, list or dict of them
Metrics = dict[str, torch.Tensor]  # named scalar tensors, logged in Trainer.history under their names


class Objective(Protocol):
    """What the trainer minimizes: `objective(model, batch) -> (loss, metrics)`.

    `loss` is a scalar tensor with its autograd graph: the trainer calls `backward` on it.
    `metrics` maps names to scalar tensors that the trainer logs (their mean over the
    micro-batches of a step) in `history[name]`, and after each validation in
    `val_history[name]`. Auxiliary losses (MoE balance, a KL penalty) are part of `loss`;
    reporting them as metrics too shows their share. Return the same names at every call.
    """

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Metrics]: ...


class DataSource(Protocol):
    """An endless stream of training batches whose position in the data is a small state.

    `state_dict()` must be JSON-serializable (it goes into trainer.json) and, restored by
    `load_state_dict`, make `next_batch()` continue exactly where it was: the trainer's
    checkpoints, exact resume and rollbacks rely on it. `TokenBatches` is one.
    """

    def next_batch(self) -> Batch: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def language_modeling(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
    """Pretraining, the trainer's default objective: the mean cross-entropy of the model's
    next-token predictions for x (B, T) against y (B, T), in float32; no metrics."""
    x, y = batch
    return cross_entropy(model(x), y), {}  # logits (B, T, V)


@dataclass(frozen=True)
class MoELanguageModeling:
    """Pretraining a Mixture of Experts: cross-entropy + balance * the load-balancing loss.

    The auxiliary loss is `transformer.moe_aux_loss(model)`, the mean over the MoE layers of
    Switch Transformer's E * sum_i f_i P_i (`moe.load_balancing_loss`; Fedus et al., 2022,
    who used balance = 0.01). Both parts are logged: metrics "cross_entropy" and "aux_loss"
    (also with balance 0, so that a run without the loss shows the imbalance it lets grow).
    """

    balance: float = 0.01  # weight of the load-balancing loss

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        x, y = batch
        ce = cross_entropy(model(x), y)  # logits (B, T, V)
        aux = moe_aux_loss(model)  # from the forward call just made
        return ce + self.balance * aux, {"cross_entropy": ce.detach(), "aux_loss": aux.detach()}


def to_device(batch: Batch, device: torch.device) -> Batch:
    """`batch` with every tensor in it (also inside tuples, lists and dicts) moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(to_device(value, device) for value in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


# ---------------------------------------------------------------------------------------
# Loss spikes
# ---------------------------------------------------------------------------------------


def is_spike(value: float, history: Sequence[float], threshold: float = 6.0, min_history: int = 20) -> bool:
    """True if `value` is NaN or infinite, or (once `history` has at least `min_history`
    values) more than `threshold` standard deviations above their mean.

    The standard deviation is the population one (divide by n). Only upward jumps count:
    a loss far *below* its recent mean is good news.
    """
    if not math.isfinite(value):
        return True
    if len(history) < min_history:
        return False
    mean = statistics.fmean(history)
    std = statistics.pstdev(history, mu=mean)
    return value > mean + threshold * std


class SpikeDetector:
    """Running statistics of the loss and of the gradient norm over the last `window` accepted steps.

    `check(loss, norm)` says why a step is bad (or returns None); `accept(loss, norm)` adds a
    good step to the statistics. Bad steps never enter them, so one spike cannot hide the next.
    `threshold` 0 flags only NaN and inf.
    """

    def __init__(self, threshold: float = 6.0, window: int = 50, min_history: int = 20):
        self.threshold, self.min_history = threshold, min_history
        self.losses: deque[float] = deque(maxlen=window)
        self.norms: deque[float] = deque(maxlen=window)

    def check(self, loss: float, norm: float) -> str | None:
        reasons = []
        for name, value, history in (("loss", loss, self.losses), ("gradient norm", norm, self.norms)):
            if not math.isfinite(value):
                reasons.append(f"{name} is {value}")
            elif self.threshold > 0 and is_spike(value, history, self.threshold, self.min_history):
                mean, std = statistics.fmean(history), statistics.pstdev(history)
                z = (value - mean) / std if std > 0 else math.inf
                reasons.append(
                    f"{name} {value:.4g} is {z:.1f} standard deviations above the mean of the last "
                    f"{len(history)} steps ({mean:.4g} ± {std:.2g})"
                )
        return "; ".join(reasons) or None

    def reset(self) -> None:
        self.losses.clear()
        self.norms.clear()

    def accept(self, loss: float, norm: float) -> None:
        self.losses.append(loss)
        self.norms.append(norm)

    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "norms": list(self.norms)}

    def load_state_dict(self, state: dict) -> None:
        self.reset()
        self.losses.extend(state["losses"])
        self.norms.extend(state["norms"])


# ---------------------------------------------------------------------------------------
# FLOPs and model FLOPs utilization
# ---------------------------------------------------------------------------------------

# Dense bf16 tensor-core peaks in TFLOP/s (NVIDIA data sheets; no sparsity). A card matches the first
# entry whose words all appear as whole words of its name (`torch.cuda.get_device_name`): "H200 NVL"
# before "H200" (the SXM card, "NVIDIA H200"), and "L4" does not match an "NVIDIA L40".
PEAK_BF16_TFLOPS = [("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H200 NVL", 835.0),
                    ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0),
                    ("L4", 121.0), ("A10", 125.0)]  # fmt: skip


def palm_flops_per_token(config: TransformerConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token: 6 N + 12 L T C (PaLM, appendix B).

    N counts the weights used in matrix products: every parameter except the position table
    and (when the head is untied) the token table, whose lookups cost nothing; the tied or
    untied head is counted. 6 = 2 FLOPs per multiply-add x (forward + backward's two
    products). 12 L T C is attention's q k^T and weights @ v (2 T C each per token and
    layer), times 3 for the backward pass, with the causal half counted as PaLM does.
    For a Mixture of Experts, N counts the experts a token is routed to, not the idle ones.
    """
    parts = parameter_breakdown(config)
    idle_experts = count_parameters(config) - count_active_parameters(config)
    n = sum(parts.values()) - parts["position_embedding"] - idle_experts
    if not config.tie_embeddings:
        n -= parts["token_embedding"]
    T = config.context_length if seq_len is None else seq_len
    return 6 * n + 12 * config.n_layers * T * config.d_model


def peak_flops(device: torch.device | str) -> float | None:
    """The device's dense bf16 peak in FLOP/s, if it is a GPU in `PEAK_BF16_TFLOPS`; else None."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


def peak_flops_for_name(name: str) -> float | None:
    """The dense bf16 peak in FLOP/s of the GPU called `name` (e.g. "NVIDIA H100 80GB HBM3"), or None."""
    words = set(re.split(r"[^0-9A-Za-z]+", name.upper()))  # "NVIDIA A100-SXM4-80GB" -> {..., "A100", "SXM4"}
    for key, tflops in PEAK_BF16_TFLOPS:
        if set(key.upper().split()) <= words:
            return tflops * 1e12
    return None


# ---------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------


# The trainer's own entries in `Trainer.history`: an objective's metrics take other names.
HISTORY_KEYS = ("iteration", "step", "loss", "grad_norm", "lr", "tokens_per_s", "action")


def _stack_scalars(loss: torch.Tensor, metrics: Metrics) -> torch.Tensor:
    """The loss and the metrics' values as one float32 tensor (1 + len(metrics),), detached."""
    if loss.dim() != 0:
        raise ValueError(f"an objective's loss must be a scalar tensor, got shape {tuple(loss.shape)}")
    clash = set(metrics) & set(HISTORY_KEYS)
    if clash:
        raise ValueError(f"metric names {sorted(clash)} are taken by the trainer's own history entries")
    for name, value in metrics.items():
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError(f"metric {name!r} must be a tensor holding one number, got {value!r}")
    values = [v.detach().float().reshape(()).to(loss.device) for v in metrics.values()]
    return torch.stack([loss.detach().float(), *values])


def _python_rng_state() -> list:
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]


def _numpy_rng_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


class Trainer:
    """Trains `model` (already on its device) to minimize `objective`; see the module docstring.

    The training batches come from `train_tokens` (a 1-D tensor of token ids, cut by
    `TokenBatches`) or from any `data` source; validation batches from `val_tokens` (fixed
    windows, `eval_batches`) or a list of `val_batches`. The default objective is
    `language_modeling`. `config.batch_size * seq_len` counts the tokens of a micro-batch
    for tokens/s and MFU whatever the data. `out_dir` holds the checkpoints (none are
    written without it, and then a run cannot roll back). `log` receives every line the
    trainer writes (validation losses, spikes, rollbacks); `progress` shows a tqdm bar.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_tokens: torch.Tensor | None = None,
        val_tokens: torch.Tensor | None = None,
        out_dir: str | Path | None = None,
        log: Callable[[str], None] | None = print,
        progress: bool = False,
        *,
        objective: Objective = language_modeling,
        data: DataSource | None = None,
        val_batches: Sequence[Batch] | None = None,
    ):
        c = config
        if (train_tokens is None) == (data is None):
            raise ValueError("give the trainer either train_tokens or a data source, not both or neither")
        if val_tokens is not None and val_batches is not None:
            raise ValueError("give the trainer either val_tokens or val_batches, not both")
        model_config = getattr(model, "config", None)
        context_length = getattr(model_config, "context_length", None)
        if train_tokens is not None and context_length is not None and c.seq_len > context_length:
            raise ValueError(f"seq_len {c.seq_len} exceeds the model's context_length {context_length}")
        self.model, self.config, self.objective = model, c, objective
        self.device = next(model.parameters()).device
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.log, self.progress = log, progress
        torch.manual_seed(c.seed)  # dropout and anything else that draws from torch's generator
        self.rank, self.world_size = rank_and_world()  # (0, 1) outside a process group (torchrun)
        if data is None:  # each rank reads its own rows of every global batch
            data = TokenBatches(train_tokens, c.batch_size, c.seq_len, c.seed, self.rank, self.world_size)
        self.data = data
        self.val_data = None if val_batches is None else list(val_batches)
        if val_tokens is not None:
            # The global batch size: every rank evaluates the windows one process of the same global batch would.
            self.val_data = eval_batches(val_tokens, c.batch_size * self.world_size, c.seq_len, c.eval_batches)
        groups = decay_groups(model, c.weight_decay)
        hyper = dict(lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps)
        self.optimizer = torch.optim.AdamW(groups, **hyper, fused=True) if c.fused_adamw else AdamW(groups, **hyper)
        self.detector = SpikeDetector(c.spike_threshold, c.spike_window, c.spike_min_history)
        self.use_bf16 = c.precision == "bf16" or (c.precision == "auto" and self.device.type == "cuda")
        if self.device.type == "cuda":  # float32 matmuls: exact for fp32, TF32 tensor cores otherwise
            torch.set_float32_matmul_precision("highest" if c.precision == "fp32" else "high")
        self.loss_fn = torch.compile(self.compute_loss) if c.compile else self.compute_loss
        is_transformer = isinstance(model_config, TransformerConfig)
        self.flops_per_token = palm_flops_per_token(model_config, c.seq_len) if is_transformer else None
        self.peak_flops = peak_flops(self.device)
        self.step = 0  # optimizer steps done (the schedule's position; goes back on a rollback)
        self.iteration = 0  # batches of steps processed, applied or not (never goes back)
        self.bad_streak, self.first_bad_step, self.rollbacks = 0, None, 0
        self.history: dict[str, list] = {k: [] for k in HISTORY_KEYS}  # one entry per train_step; a list per metric
        self.val_history: dict[str, list] = {"step": [], "iteration": [], "loss": []}
        self.events: list[str] = []  # the lines about spikes, skips and rollbacks
        self._bar = None

    # ------------------------------------------------------------------ pieces of a step
    def learning_rate(self, step: int) -> float:
        c = self.config
        return warmup_cosine(step, c.warmup_steps, c.max_steps, c.lr, c.lr * c.min_lr_ratio)

    def get_batch(self) -> Batch:
        """The next training batch from the data source, on the model's device."""
        return to_device(self.data.next_batch(), self.device)

    def autocast(self):
        if self.use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def compute_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        """The objective's (loss, metrics) for `batch`, under the run's autocast.

        Objectives compute their losses in float32 (`cross_entropy` converts the logits)."""
        with self.autocast():
            return self.objective(self.model, batch)

    def say(self, line: str, event: bool = False) -> None:
        if event:
            self.events.append(line)
        if self.log is None:
            return
        if self._bar is not None and self.progress:
            with self._bar.external_write_mode():  # print above the progress bar, not through it
                self.log(line)
        else:
            self.log(line)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        """One optimizer step: forward and backward over grad_accum micro-batches, clip, check, update."""
        c = self.config
        start = time.perf_counter()
        lr = self.learning_rate(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if not self.model.training:  # (train() walks every module: for a tiny model a tenth of a step)
            self.model.train()
        total = None  # (1 + n_metrics,): the loss and the metrics, summed over the micro-batches
        for _ in range(c.grad_accum):
            loss, metrics = self.loss_fn(self.get_batch())
            values = _stack_scalars(loss, metrics)  # checks the objective's output first
            (loss / c.grad_accum).backward()
            total = values if total is None else total + values
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if c.grad_clip > 0:
            norm = clip_grad_norm_(params, c.grad_clip)
        else:
            norm = grad_norm([p.grad for p in params if p.grad is not None])
        # One read from the device per step: the mean loss and metrics, and the gradient norm.
        # Data parallel: the mean over the ranks, so that all of them log and decide on the same numbers.
        total = all_reduce_mean(total / c.grad_accum)
        loss_value, *metric_values, norm_value = torch.cat([total, norm.float().view(1)]).tolist()

        reason = self.detector.check(loss_value, norm_value)
        step = self.step
        finite = math.isfinite(loss_value) and math.isfinite(norm_value)
        action = "update" if reason is None else self._handle_bad_step(reason, finite)
        if action in ("update", "restart"):
            self.optimizer.step()
            self.detector.accept(loss_value, norm_value)
            self.bad_streak, self.first_bad_step = 0, None
        self.optimizer.zero_grad(set_to_none=True)
        if action != "rollback":
            self.step += 1
        self.iteration += 1
        seconds = time.perf_counter() - start
        record = dict(iteration=self.iteration, step=step, loss=loss_value, grad_norm=norm_value, lr=lr,
                      tokens_per_s=c.tokens_per_step / seconds, action=action)  # fmt: skip
        record.update(zip(metrics, metric_values))
        for key, value in record.items():
            self.history.setdefault(key, []).append(value)
        return record

    def _handle_bad_step(self, reason: str, finite: bool) -> str:
        """Decide what a bad step does: "skip" it, "rollback", or (finite values, nothing to roll
        back to, patience used up) "restart" the statistics and apply it."""
        c = self.config
        self.bad_streak += 1
        if self.first_bad_step is None:
            self.first_bad_step = self.step
        if c.spike_action == "rollback" or self.bad_streak >= c.spike_patience:
            target = self._rollback_target()
            if target is not None:
                self._rollback(target, reason)
                return "rollback"
            if self.bad_streak >= c.spike_patience:
                if not finite:
                    raise RuntimeError(
                        f"step {self.step}: {self.bad_streak} bad steps in a row ({reason}) and no checkpoint from "
                        "before them to roll back to; give the trainer an out_dir and a checkpoint_interval"
                    )
                # Finite, persistent and nothing to go back to: a new level rather than an accident.
                self.say(
                    f"step {self.step}: {reason}; {self.bad_streak} bad steps in a row and no checkpoint from before "
                    "them: applied this update and restarted the statistics from here",
                    event=True,
                )
                self.detector.reset()
                return "restart"
        self.say(f"step {self.step}: skipped the update: {reason}", event=True)
        return "skip"

    def _rollback_target(self) -> Path | None:
        """The newest checkpoint taken before the first bad step of this streak.

        A checkpoint of step s holds the weights after s updates. The first bad step t saw the
        weights after t updates; the latest of them may be the one that did the damage, so the
        target is a checkpoint with s < t, taken before it.
        """
        older = [p for s, p in self.checkpoints() if s < self.first_bad_step]
        return older[-1] if older else None

    def _rollback(self, target: Path, reason: str) -> None:
        self.rollbacks += 1
        if self.rollbacks > self.config.max_rollbacks:
            raise RuntimeError(f"step {self.step}: {reason}; gave up after {self.config.max_rollbacks} rollbacks")
        bad_from = self.first_bad_step
        now = self.step
        self.load_checkpoint(target, restore_data=False)  # fresh data: the batches that led here are skipped
        for step, newer in self.checkpoints():
            if step > self.step:  # from the abandoned path: a resume must not pick them up
                shutil.rmtree(newer, ignore_errors=True)
        self.say(
            f"step {now}: {reason}; {self.bad_streak} bad step(s) in a row since step {bad_from}: rolled back to "
            f"the checkpoint of step {self.step} ({target.name}); the data goes on from where it was",
            event=True,
        )
        self.bad_streak, self.first_bad_step = 0, None

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validation_metrics(self) -> dict[str, float]:
        """The objective's loss and metrics, each a mean over the validation batches (the same
        ones every time), in eval mode."""
        if self.val_data is None:
            raise ValueError("this trainer has no validation data")
        self.model.eval()
        rows = []
        for batch in self.val_data:
            loss, metrics = self.loss_fn(to_device(batch, self.device))
            rows.append(_stack_scalars(loss, metrics))
        self.model.train()
        return dict(zip(["loss", *metrics], torch.stack(rows).mean(dim=0).tolist()))  # rows: (n_batches, 1 + n_metrics)

    def evaluate(self) -> float:
        """Mean loss over the validation batches (the same ones every time), in eval mode."""
        return self.validation_metrics()["loss"]

    def _validate(self) -> float:
        values = self.validation_metrics()
        val = values["loss"]
        self.val_history["step"].append(self.step)
        self.val_history["iteration"].append(self.iteration)
        for name, value in values.items():
            self.val_history.setdefault(name, []).append(value)
        recent = self.history["loss"][-20:]
        train = f" (train {statistics.fmean(recent):.4f}, mean of the last {len(recent)} steps)" if recent else ""
        self.say(f"step {self.step}: validation loss {val:.4f}{train}")
        return val

    # ------------------------------------------------------------------ the loop
    def train(self, until_step: int | None = None) -> dict[str, list]:
        """Train until `until_step` (default: config.max_steps) optimizer steps are done; returns history.

        Validates every eval_interval steps and after the last step of the run; with an out_dir,
        saves a checkpoint at the start, every checkpoint_interval steps and where it stops.
        """
        c = self.config
        until = c.max_steps if until_step is None else min(until_step, c.max_steps)
        if self.out_dir is not None and not self.checkpoints():
            self.save_checkpoint()
        from tqdm.auto import tqdm

        self._bar = tqdm(total=until, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True)
        try:
            while self.step < until:
                record = self.train_step()
                if record["action"] == "rollback":
                    self._bar.reset(total=until)
                    self._bar.update(self.step)
                    continue
                self._bar.update(1)
                speed = record["tokens_per_s"]
                postfix = {"loss": f"{record['loss']:.3f}", "tok/s": f"{speed:,.0f}", "lr": f"{record['lr']:.2e}"}
                if self.peak_flops:
                    postfix["mfu"] = f"{self.mfu(speed):.1%}"
                self._bar.set_postfix(postfix, refresh=False)
                done = self.step == until
                if self.val_data is not None:
                    if (c.eval_interval and self.step % c.eval_interval == 0) or self.step == c.max_steps:
                        self._validate()
                # A checkpoint is taken only after a good step, so that a rollback lands before the trouble.
                due = c.checkpoint_interval and self.step % c.checkpoint_interval == 0 and self.bad_streak == 0
                if self.out_dir is not None and (due or done):
                    self.save_checkpoint()
        finally:
            self._bar.close()
            self._bar = None
        return self.history

    def mfu(self, tokens_per_s: float) -> float | None:
        """Model FLOPs utilization at `tokens_per_s`: achieved FLOP/s over the device's bf16 peak."""
        return None if self.peak_flops is None else tokens_per_s * self.flops_per_token / self.peak_flops

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, folder) of every complete checkpoint in out_dir, oldest first."""
        if self.out_dir is None or not self.out_dir.exists():
            return []
        found = [(int(p.name.split("_")[1]), p) for p in self.out_dir.glob("step_*") if (p / "trainer.json").exists()]
        return sorted(found)

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current step to out_dir/step_NNNNNNN (atomically) and prune old ones.

        One process: model.safetensors, optimizer.safetensors, trainer_state.safetensors (RNG
        states) and trainer.json. In a process group (torchrun, DDP or FSDP) the model and the
        optimizer go through `torch.distributed.checkpoint` into dcp/ instead of the two
        safetensors files: each rank writes its own shards, and any number of ranks can read
        them back. Rank 0 also writes the whole model as model.safetensors, so that every
        checkpoint is a plain model folder. The files of `CHECKPOINT_FILES` found in out_dir
        (the tokenizer) are copied in: a checkpoint is all `generate --checkpoint` needs.
        A collective in a process group: every rank calls it.
        """
        if self.out_dir is None:
            raise ValueError("this trainer has no out_dir to save checkpoints in")
        final = self.out_dir / f"step_{self.step:07d}"
        tmp = self.out_dir / f".tmp_{final.name}"
        sharded, main = in_process_group(), self.rank == 0
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        meta_optimizer = {"class": type(self.optimizer).__name__}
        if sharded:
            barrier()  # tmp exists before any rank writes into it
            meta_optimizer["state_saved"] = save_sharded(self.model, self.optimizer, tmp / "dcp")
            weights = full_model_state_dict(self.model)  # a collective with FSDP; None on ranks > 0
        if main:
            if sharded:
                plain = Transformer(unwrap(self.model).config)
                plain.load_state_dict(weights)
                save_model(plain, tmp)
            else:
                save_model(self.model, tmp)
                opt = self.optimizer.state_dict()
                tensors = {f"state.{i}.{k}": t for i, s in opt["state"].items() for k, t in s.items()}
                save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp / "optimizer.safetensors"))
                meta_optimizer["param_groups"] = opt["param_groups"]
            # Every rank drew the same random numbers (same seed, same calls): rank 0's states stand for all.
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
            save_file(rng, str(tmp / "trainer_state.safetensors"))
            for name in CHECKPOINT_FILES:
                if (self.out_dir / name).is_file():
                    shutil.copy2(self.out_dir / name, tmp / name)
            meta = {
                "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "world_size": self.world_size,
                "threads": torch.get_num_threads(),
                "step": self.step, "iteration": self.iteration, "rollbacks": self.rollbacks,
                "train_config": dataclasses.asdict(self.config), "optimizer": meta_optimizer,
                "data": self.data.state_dict(), "detector": self.detector.state_dict(),
                "rng": {"python": _python_rng_state(), "numpy": _numpy_rng_state()},
                "history": self.history, "val_history": self.val_history, "events": self.events,
            }  # fmt: skip
            (tmp / "trainer.json").write_text(json.dumps(meta) + "\n")  # written last: marks the checkpoint complete
            shutil.rmtree(final, ignore_errors=True)  # the same step again, after a rollback
            tmp.rename(final)
            for _, old in self.checkpoints()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()  # no rank goes on (or rolls back to it) before the checkpoint is complete
        return final

    def load_checkpoint(self, path: str | Path, restore_data: bool = True) -> None:
        """Restore weights, optimizer, schedule step, detector, RNG states (and data position) from `path`.

        A sharded checkpoint (dcp/) loads into any number of ranks, DDP, FSDP or one process;
        a single-process one into one process or DDP.
        """
        path = Path(path)
        meta = json.loads((path / "trainer.json").read_text())
        if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path} is not an {CHECKPOINT_FORMAT} checkpoint of version {CHECKPOINT_VERSION}")
        if (path / "dcp").is_dir():
            load_sharded(self.model, self.optimizer, path / "dcp", meta["optimizer"].get("state_saved", True))
        elif is_sharded(self.model):
            raise ValueError(f"{path} is a single-process checkpoint: resume it with --parallel none or ddp, not fsdp")
        else:
            model = unwrap(self.model)
            weights = load_file(path / "model.safetensors", device=str(self.device))
            missing, unexpected = model.load_state_dict(weights, strict=False)
            tied = {"token_embedding.weight", "lm_head.weight"} if model.config.tie_embeddings else set()
            if unexpected or not set(missing) <= tied or len(missing) > 1:
                raise RuntimeError(f"{path} does not match the model: missing {missing}, unexpected {unexpected}")
            state: dict[int, dict] = {}
            for key, tensor in load_file(path / "optimizer.safetensors").items():
                _, i, name = key.split(".", 2)
                state.setdefault(int(i), {})[name] = tensor
            self.optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
        self.step, self.iteration = meta["step"], max(self.iteration, meta["iteration"])
        self.detector.load_state_dict(meta["detector"])
        rng = load_file(path / "trainer_state.safetensors")
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and "cuda.0" in rng:
            states = [rng[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in rng]
            torch.cuda.set_rng_state_all(states)
        version, state_list, gauss = meta["rng"]["python"]
        random.setstate((version, tuple(state_list), gauss))
        name, keys, pos, has_gauss, cached = meta["rng"]["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        if restore_data:  # a resume, not a rollback: the run continues exactly where it stopped
            self._check_threads(meta.get("threads"))
            self.data.load_state_dict(meta["data"])
            self.history, self.val_history, self.events = meta["history"], meta["val_history"], meta["events"]
            self.rollbacks, self.iteration = meta["rollbacks"], meta["iteration"]

    def _check_threads(self, saved: int | None) -> None:
        """Say so when this process has another number of CPU threads than the one that saved the run.

        PyTorch's CPU LayerNorm backward sums the gain and bias gradients over the B * T rows in
        one partial sum per thread, then adds the partial sums: with another thread count the
        same numbers are added in another order, and those gradients differ by float rounding
        (~1e-9), which a few Adam steps grow to ~1e-7 in the weights. With the same count a
        resume is exact, bit for bit.
        """
        threads = torch.get_num_threads()
        if saved is not None and saved != threads and self.device.type == "cpu":
            self.say(
                f"resumed with {threads} CPU threads; the run was saved with {saved}: LayerNorm's backward adds its "
                f"per-thread partial sums in another order, so the run drifts by float rounding from one that never "
                f"stopped (set OMP_NUM_THREADS={saved}, or torch.set_num_threads({saved}), to resume bit for bit)",
                event=True,
            )

    @classmethod
    def resume(
        cls,
        path: str | Path,
        train_tokens: torch.Tensor | None = None,
        val_tokens: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        parallel: str = "none",
        **kwargs,
    ) -> Trainer:
        """A trainer restored from a checkpoint folder, or from the newest checkpoint in a run's out_dir.

        The model and the TrainConfig are read from the checkpoint; the model is wrapped for
        `parallel` ("none", "ddp", "fsdp"; `distributed.wrap_model`); `kwargs` go to `Trainer`.
        On a different number of ranks than the run that saved it, each rank's batch_size is
        rescaled so that the global batch, and with it the data order, stays the same.
        """
        path = Path(path)
        if not (path / "trainer.json").exists():
            found = sorted(
                (int(p.name.split("_")[1]), p) for p in path.glob("step_*") if (p / "trainer.json").exists()
            )
            if not found:
                raise FileNotFoundError(f"no checkpoint in {str(path)!r}")
            path = found[-1][1]
        meta = json.loads((path / "trainer.json").read_text())
        config = TrainConfig(**meta["train_config"])
        saved_world, world = meta.get("world_size", 1), rank_and_world()[1]
        if saved_world != world:
            global_batch = config.batch_size * saved_world
            if global_batch % world:
                raise ValueError(
                    f"{path} was trained on {saved_world} ranks with a global batch of {global_batch} sequences, "
                    f"which does not split over {world} ranks"
                )
            config = dataclasses.replace(config, batch_size=global_batch // world)
        model = wrap_model(load_model(path, device), parallel)
        trainer = cls(model, config, train_tokens, val_tokens, out_dir=kwargs.pop("out_dir", path.parent), **kwargs)
        trainer.load_checkpoint(path)
        return trainer


# ---------------------------------------------------------------------------------------
# Watching a model
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def sample_text(
    model: nn.Module,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 60,
    temperature: float = 0.8,
    generator: torch.Generator | None = None,
) -> str:
    """Continue `prompt` by sampling from softmax(logits / temperature); returns the new text only.

    Draws from `generator` (a CPU generator; torch's global one if None). No KV cache: each
    token reruns the model on the last context_length tokens (chapter 09 makes this fast).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer.encode_ordinary(prompt)
    if not ids:
        raise ValueError("the prompt must hold at least one token")
    new: list[int] = []
    for _ in range(max_new_tokens):
        context = torch.tensor([(ids + new)[-model.config.context_length :]], device=device)  # (1, T)
        logits = model(context)[0, -1].float().cpu()  # (V,)
        probs = torch.softmax(logits / temperature, dim=-1)
        new.append(int(torch.multinomial(probs, 1, generator=generator)))
    model.train(was_training)
    return tokenizer.decode(new)
