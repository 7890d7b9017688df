"""Scaling laws: FLOP counts, power-law fits, the Kaplan and Chinchilla laws, a small sweep (chapter 07).

Implements
- `training_flops(n_params, n_tokens)` = 6 N D, and `kaplan_flops_per_token(config)`, the count it
  approximates: Kaplan et al. (2020), "Scaling Laws for Neural Language Models", Table 1,
  forward = 2 N + 2 n_layers n_ctx d_model per token (N the non-embedding parameters, see
  `non_embedding_parameters`), training = 3 x forward (the backward pass costs twice the
  forward);
- `fit_power_law(x, y)`: y = a x^b by least squares on (log x, log y), and
  `fit_chinchilla_law(n, d, loss)`: L = E + A / N^alpha + B / D^beta, linear least squares
  for (E, A, B) on a grid of (alpha, beta) refined around the best point (no scipy);
- Kaplan et al.'s laws with their published constants (`KAPLAN`), and Hoffmann et al.
  (2022), "Training Compute-Optimal Large Language Models" (Chinchilla), eq. 2 with the
  constants printed in the paper (`CHINCHILLA`), with its unrounded exponents
  (`CHINCHILLA_UNROUNDED`) and as refitted by Besiroglu et al. (2024) (`EPOCH_REFIT`);
  `chinchilla_optimal(compute)`, the N and
  D that minimize that loss under 6 N D = compute (their eq. 4), and
  `tokens_per_parameter_rule(compute)`, the "20 tokens per parameter" rule of thumb;
- a sweep of tiny models (`run_sweep`) that measures the validation loss of every
  (model size, token budget) pair, cached on disk.

Each run of the sweep is a `Trainer` of chapter 06 with its default objective (next-token
cross-entropy): AdamW, `optim.warmup_cosine`, clipping, the data order of `TokenBatches`. Left out:
Kaplan's critical batch size and L(N, S) laws, Chinchilla's Huber loss on log L (we fit
squared relative errors), and the data-repetition laws of Muennighoff et al. (2023).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from llm_course import cache as course_cache
from llm_course.trainer import Trainer, TrainConfig, language_modeling
from llm_course.transformer import Transformer, TransformerConfig, parameter_breakdown
from llm_course.utils import cache_dir

#: One petaflop/s-day, the compute unit of Kaplan et al.: 10^15 FLOP/s for 24 hours.
PF_DAY = 1e15 * 24 * 3600


# ---------------------------------------------------------------------------------------
# Counting FLOPs
# ---------------------------------------------------------------------------------------


def training_flops(n_params: float, n_tokens: float) -> float:
    """C = 6 N D: the FLOPs to train N parameters on D tokens.

    Each parameter is used in one multiply-add (2 FLOPs) per token in the forward pass,
    and the backward pass costs twice that (gradients with respect to the activations and
    to the weights): 2 + 4 = 6 FLOPs per parameter per token.
    """
    return 6 * n_params * n_tokens


def non_embedding_parameters(config: TransformerConfig) -> int:
    """Parameters outside the token and position embeddings and the output head.

    This is the N of Kaplan et al.: the blocks (attention, feed-forward, norms) and the
    final norm. Embedding tables are lookups, not matrix products, and Kaplan et al. found
    the laws are cleaner without them.
    """
    parts = parameter_breakdown(config)
    return parts["attention"] + parts["ffn"] + parts["norms"]


def kaplan_flops_per_token(config: TransformerConfig, include_head: bool = False) -> int:
    """Training FLOPs per token, counted as Kaplan et al. (2020), Table 1: 3 x forward.

    forward = 2 N                              every non-embedding weight: one multiply-add
            + 2 n_layers n_ctx d_model         attention scores q.k and the weighted sum of v
            (+ 2 d_model V with include_head)  the output head (Kaplan leave it out)
    where N = `non_embedding_parameters(config)` and n_ctx = config.context_length. The
    attention term is an average over a causal sequence: position t attends to t keys, so
    each of q k^T and softmax(.) v costs 2 t d_model, which averages to 2 n_ctx d_model for
    the two. Relative to 2 N = 24 n_layers d_model^2 it is n_ctx / (12 d_model): 11% for
    GPT-2 small, 1.4% for GPT-3, which is why C = 6 N D leaves it out.
    """
    c = config
    forward = 2 * non_embedding_parameters(c) + 2 * c.n_layers * c.context_length * c.d_model
    if include_head:
        forward += 2 * c.d_model * c.vocab_size
    return 3 * forward


# ---------------------------------------------------------------------------------------
# Fitting power laws
# ---------------------------------------------------------------------------------------


def _positive_array(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{name} must hold finite positive numbers (they are logged), got {values!r}")
    return array


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Fit y = a * x**b; return (a, b).

    A power law is a straight line in log-log space, log y = log a + b log x, so the fit is
    ordinary least squares on the logarithms. A loss that falls as N^(-0.076) gives b = -0.076.
    """
    log_x = np.log(_positive_array(x, "x"))
    log_y = np.log(_positive_array(y, "y"))
    if len(log_x) != len(log_y):
        raise ValueError(f"x and y must have the same length, got {len(log_x)} and {len(log_y)}")
    if len(log_x) < 2 or np.ptp(log_x) == 0:
        raise ValueError("need at least two different x values to fit a line")
    x_mean, y_mean = log_x.mean(), log_y.mean()
    slope = np.sum((log_x - x_mean) * (log_y - y_mean)) / np.sum((log_x - x_mean) ** 2)
    intercept = y_mean - slope * x_mean
    return float(np.exp(intercept)), float(slope)


# ---------------------------------------------------------------------------------------
# Kaplan et al. (2020)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KaplanLaws:
    """The constants of Kaplan et al. (2020): eqs. 1.1-1.3 and Table 5.

    Loss in nats per token on WebText2 with GPT-2's 50257-token vocabulary and context
    1024; N counts non-embedding parameters; C_min is the compute of efficient training
    (batch well below the critical size), in PF-days. Each law holds when the other
    resources are not the bottleneck; none has an irreducible term. Checked against the paper:
    alpha_N = 0.076, N_c = 8.8e13; alpha_D = 0.095, D_c = 5.4e13; alpha_C^min = 0.050,
    C_c^min = 3.1e8 PF-days (its "naive" L(C) at a fixed batch size, alpha_C = 0.057 and
    C_c = 1.6e7 PF-days, is not used here).
    """

    alpha_n: float = 0.076  # L(N) = (N_c / N)^alpha_n: models trained to convergence on enough data
    n_c: float = 8.8e13  # non-embedding parameters
    alpha_d: float = 0.095  # L(D) = (D_c / D)^alpha_d: large models, early-stopped
    d_c: float = 5.4e13  # tokens
    alpha_c: float = 0.050  # L(C_min) = (C_c / C_min)^alpha_c: the compute-efficient frontier
    c_c: float = 3.1e8  # PF-days


KAPLAN = KaplanLaws()


def kaplan_loss_n(n_params, laws: KaplanLaws = KAPLAN):
    """L(N) = (N_c / N)^alpha_N, for N non-embedding parameters."""
    return (laws.n_c / n_params) ** laws.alpha_n


def kaplan_loss_d(n_tokens, laws: KaplanLaws = KAPLAN):
    """L(D) = (D_c / D)^alpha_D, for D training tokens."""
    return (laws.d_c / n_tokens) ** laws.alpha_d


def kaplan_loss_c(compute_flops, laws: KaplanLaws = KAPLAN):
    """L(C_min) = (C_c / C_min)^alpha_C, with the compute given in FLOPs (converted to PF-days)."""
    return (laws.c_c / (compute_flops / PF_DAY)) ** laws.alpha_c


def kaplan_loss_nd(n_params, n_tokens, laws: KaplanLaws = KAPLAN):
    """L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D (Kaplan et al., eq. 1.5).

    Not a sum of the two power laws: the terms are added inside the bracket, so that
    the law tends to L(N) when D grows and to L(D) when N grows.
    """
    return ((laws.n_c / n_params) ** (laws.alpha_n / laws.alpha_d) + laws.d_c / n_tokens) ** laws.alpha_d


# ---------------------------------------------------------------------------------------
# Hoffmann et al. (2022): Chinchilla
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al., 2022, eq. 2).

    E is the loss of an ideal model on the data (its entropy), A / N^alpha what a finite
    model adds, B / D^beta what finite training adds. N counts all parameters, D tokens.
    """

    E: float  # irreducible loss, nats per token
    A: float  # model-size term: A / N^alpha
    B: float  # data term: B / D^beta
    alpha: float  # exponent of N
    beta: float  # exponent of D


#: The constants as printed in the paper (its "Approach 3"), the exponents rounded to two
#: decimals: the source of the "rounding trap" that chapter 07 computes.
CHINCHILLA = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)

#: The same fit with the exponents as they stand in the paper's TeX source, before rounding
#: (alpha = 0.3392, beta = 0.2849, reported by Besiroglu et al., 2024, "Chinchilla Scaling:
#: A replication attempt", arXiv:2404.10102).
CHINCHILLA_UNROUNDED = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.3392, beta=0.2849)

#: Besiroglu et al.'s (Epoch AI) refit of the same law to Hoffmann et al.'s data,
#: reconstructed from the paper's figures, with an optimizer run to convergence.
EPOCH_REFIT = ChinchillaLaw(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)


def chinchilla_loss(n_params, n_tokens, law: ChinchillaLaw = CHINCHILLA):
    """L(N, D) = E + A / N^alpha + B / D^beta."""
    return law.E + law.A / n_params**law.alpha + law.B / n_tokens**law.beta


def chinchilla_optimal(compute, law: ChinchillaLaw = CHINCHILLA):
    """(N_opt, D_opt) that minimize `chinchilla_loss` subject to 6 N D = compute.

    Hoffmann et al., eq. 4: with G = (alpha A / (beta B))^(1 / (alpha + beta)),
        N_opt = G (C / 6)^(beta / (alpha + beta)),   D_opt = (C / 6)^(alpha / (alpha + beta)) / G.
    Setting D = C / (6 N) and the derivative in N to zero gives alpha A / N^alpha =
    beta B / D^beta: at the optimum the two terms are in the ratio beta : alpha.
    """
    exponent_sum = law.alpha + law.beta
    g = (law.alpha * law.A / (law.beta * law.B)) ** (1 / exponent_sum)
    n_opt = g * (compute / 6) ** (law.beta / exponent_sum)
    d_opt = (compute / 6) ** (law.alpha / exponent_sum) / g
    return n_opt, d_opt


def tokens_per_parameter_rule(compute, tokens_per_parameter: float = 20.0):
    """(N, D) with D = r N and 6 N D = compute: N = sqrt(C / (6 r)), the rule of thumb r = 20."""
    n = (compute / (6 * tokens_per_parameter)) ** 0.5
    return n, tokens_per_parameter * n


def fit_chinchilla_law(
    n_params: Sequence[float],
    n_tokens: Sequence[float],
    loss: Sequence[float],
    exponent_range: tuple[float, float] = (0.02, 2.0),
    grid: int = 60,
    refinements: int = 4,
) -> ChinchillaLaw:
    """Fit L = E + A / N^alpha + B / D^beta to measured (N, D, L) triples.

    For fixed (alpha, beta) the law is linear in (E, A, B), so those come from a linear
    least-squares solve ("variable projection"); (alpha, beta) is searched on a log-spaced
    grid over `exponent_range`, which is then narrowed around the best point `refinements`
    times. The error minimized is the relative one, (L_fit - L) / L, close to the log-space
    error Hoffmann et al. used (they minimized a Huber loss of log L_fit - log L). Fits with
    a negative E, A or B are rejected.
    """
    n = _positive_array(n_params, "n_params")
    d = _positive_array(n_tokens, "n_tokens")
    y = _positive_array(loss, "loss")
    if not len(n) == len(d) == len(y):
        raise ValueError(f"n_params, n_tokens and loss must have the same length, got {len(n)}, {len(d)}, {len(y)}")
    if len(y) < 5:
        raise ValueError(f"fitting 5 constants needs at least 5 measurements, got {len(y)}")
    lo, hi = math.log(exponent_range[0]), math.log(exponent_range[1])
    ranges = [(lo, hi), (lo, hi)]  # log alpha, log beta
    best = None
    for _ in range(refinements + 1):
        alphas, betas = (np.exp(np.linspace(low, high, grid)) for low, high in ranges)
        alpha, beta = (g.ravel() for g in np.meshgrid(alphas, betas, indexing="ij"))  # (G*G,)
        # Design matrix of every grid point, each row divided by its L: (G*G, M, 3).
        X = np.stack(
            [np.ones((len(alpha), len(y))), n[None, :] ** -alpha[:, None], d[None, :] ** -beta[:, None]], axis=-1
        ) / y[None, :, None]
        Xt = X.transpose(0, 2, 1)  # (G*G, 3, M)
        coef = np.linalg.solve(Xt @ X + 1e-12 * np.eye(3), (Xt @ np.ones_like(y))[..., None])[..., 0]  # (G*G, 3)
        residual = ((X @ coef[..., None])[..., 0] - 1.0) ** 2  # relative errors (L_fit - L) / L, squared
        residual = residual.sum(axis=1)
        residual[(coef < 0).any(axis=1)] = np.inf
        i = int(np.argmin(residual))
        if not np.isfinite(residual[i]):
            raise ValueError("no fit with non-negative E, A and B: does the loss fall with N and D?")
        if best is None or residual[i] <= best[0]:
            best = (residual[i], alpha[i], beta[i], coef[i])
        # Zoom in: the next grid spans two steps of this one on each side of the best point.
        ranges = [
            (math.log(v) - 2 * (high - low) / (grid - 1), math.log(v) + 2 * (high - low) / (grid - 1))
            for v, (low, high) in zip(best[1:3], ranges)
        ]
    _, a, b, (e, big_a, big_b) = best
    return ChinchillaLaw(E=float(e), A=float(big_a), B=float(big_b), alpha=float(a), beta=float(b))


def compute_frontier(compute: Sequence[float], loss: Sequence[float]) -> list[int]:
    """Indices of the runs on the compute-efficient frontier, by increasing compute.

    A run is on it when no run with less (or equal) compute reached a lower loss: the lower
    envelope of the loss-against-compute curves, which Kaplan's L(C_min) describes.
    """
    order = sorted(range(len(compute)), key=lambda i: (compute[i], loss[i]))
    frontier, best = [], math.inf
    for i in order:
        if loss[i] < best:
            frontier.append(i)
            best = loss[i]
    return frontier


# ---------------------------------------------------------------------------------------
# A sweep of tiny models
# ---------------------------------------------------------------------------------------


def sweep_config(d_model: int, n_layers: int, vocab_size: int, context_length: int) -> TransformerConfig:
    """A GPT-2-style model for the sweep: heads of size 16, PyTorch's fused attention kernel."""
    return TransformerConfig(
        vocab_size=vocab_size, context_length=context_length, d_model=d_model, n_layers=n_layers,
        n_heads=max(1, d_model // 16), use_fused_attention=True,
    )  # fmt: skip


@torch.no_grad()
def evaluate_loss(model: Transformer, ids: torch.Tensor, context_length: int, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over `ids` cut into windows of `context_length`."""
    model.eval()
    n_windows = (len(ids) - 1) // context_length
    inputs = ids[: n_windows * context_length].view(n_windows, context_length)  # (W, T)
    targets = ids[1 : n_windows * context_length + 1].view(n_windows, context_length)  # (W, T)
    total = 0.0
    for start in range(0, n_windows, batch_size):
        logits = model(inputs[start : start + batch_size])  # (b, T, V)
        batch_targets = targets[start : start + batch_size].flatten()
        total += F.cross_entropy(logits.flatten(0, 1).float(), batch_targets, reduction="sum").item()
    return total / (n_windows * context_length)


def train_run(
    config: TransformerConfig,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    n_tokens: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
) -> dict:
    """Train a fresh `Transformer(config)` on `n_tokens` tokens of `train_ids`; return its size, compute and losses.

    A `Trainer` with the pretraining objective: batches of `batch_size` windows of
    `config.context_length` tokens (`TokenBatches`); the schedule (warmup over the first 10%
    of the steps, cosine to 10% of the peak) spans exactly this run, as Hoffmann et al.
    recommend (a cosine set for a longer run overestimates the loss a run of this length
    can reach). AdamW (PyTorch's fused kernel) with betas (0.9, 0.95), weight decay 0.1 on
    matrices only, gradient clipping at 1, float32, no spike statistics (a NaN is still
    skipped). Runs on the device of `train_ids`; `val_loss` is measured on all of `val_ids`.
    """
    T = config.context_length
    steps = max(1, math.ceil(n_tokens / (batch_size * T)))
    model = Transformer(config, generator=torch.Generator().manual_seed(seed)).to(train_ids.device)
    settings = TrainConfig(batch_size=batch_size, seq_len=T, max_steps=steps, lr=lr, min_lr_ratio=0.1,
                           warmup_steps=max(1, steps // 10), weight_decay=0.1, grad_clip=1.0, eval_interval=0,
                           spike_threshold=0.0, precision="fp32", fused_adamw=True, seed=seed)  # fmt: skip
    trainer = Trainer(model, settings, train_ids.cpu(), objective=language_modeling, log=None)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    n = non_embedding_parameters(config)
    d = steps * batch_size * T
    return {
        "d_model": config.d_model,
        "n_layers": config.n_layers,
        "n_params": n,  # non-embedding, as in Kaplan et al.
        "n_params_total": sum(p.numel() for p in model.parameters()),
        "n_tokens": d,
        "flops": training_flops(n, d),
        "flops_counted": kaplan_flops_per_token(config, include_head=True) * d,
        "train_loss": trainer.history["loss"][-1],
        "val_loss": evaluate_loss(model, val_ids, T),
        "seconds": seconds,
    }


def sweep_cache_dir() -> Path:
    """Where sweep results are kept: `utils.cache_dir("scaling")`."""
    return cache_dir("scaling")


def run_sweep(
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    plan: Sequence[tuple[int, int, int]],
    vocab_size: int,
    context_length: int = 32,
    batch_size: int = 8,
    lr_times_width: float = 0.2,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    verbose: bool = True,
) -> list[dict]:
    """Train one model per (d_model, n_layers, n_tokens) in `plan`; return their results (see `train_run`).

    The peak learning rate is lr_times_width / d_model: wider models need smaller steps (as
    in muP, Yang et al., 2022), and one learning rate for all sizes would favour some of
    them. With `cache_dir`, the results are stored as JSON under a name that hashes
    everything they depend on (the token ids, the settings, the device type, and the code of
    this module and of every llm_course module it imports: `llm_course.cache`), and a call
    with the same inputs reads them back instead of training.
    """
    settings = dict(
        plan=[list(p) for p in plan], vocab_size=vocab_size, context_length=context_length,
        batch_size=batch_size, lr_times_width=lr_times_width, seed=seed, device=train_ids.device.type,
    )  # fmt: skip
    path = None
    if cache_dir is not None:
        # The key (llm_course.cache): the settings, the token ids, and the code of this module and
        # of every llm_course module it imports, so an edit of attention.py trains again.
        data = [course_cache.fingerprint(ids.to(torch.int64)) for ids in (train_ids, val_ids)]
        path = Path(cache_dir) / f"sweep-{course_cache.cache_key({**settings, 'data': data}, __name__)}.json"
        if path.exists():
            if verbose:
                shown = str(path).replace(str(Path.home()), "~", 1)
                print(f"read {len(plan)} results from {shown} (delete it to train again)")
            return json.loads(path.read_text())["runs"]
    runs = []
    for d_model, n_layers, n_tokens in plan:
        config = sweep_config(d_model, n_layers, vocab_size, context_length)
        run = train_run(config, train_ids, val_ids, n_tokens, batch_size, lr_times_width / d_model, seed)
        runs.append(run)
        if verbose:
            print(
                f"d_model {d_model:4d} x {n_layers} layers, N = {run['n_params']:>9,d}, "
                f"D = {run['n_tokens']:>9,d}: val loss {run['val_loss']:.3f} ({run['seconds']:.1f} s)"
            )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": settings, "runs": runs}, indent=1))
        tmp.replace(path)
    return runs
