"""Direct Preference Optimization (Rafailov et al., 2023) (chapter 12).

DPO skips the reward model and the rollouts. With the KL-regularised RL objective, the optimal
policy satisfies r(x, y) = beta log(pi(y|x) / pi_ref(y|x)) + beta log Z(x); put into the
Bradley–Terry model, Z(x) cancels in the difference and the preference likelihood becomes a
loss on the policy itself:

    L = -mean log sigmoid( beta [ (log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r)) ] ),

with log pi(y) the sum of the log-probabilities of the response's tokens (`sequence_logprobs`).
beta log(pi / pi_ref) is the *implicit reward* of a response (`implicit_rewards`); the
difference of the chosen and rejected ones is the reward margin.

The reference pi_ref is the SFT model, frozen. When the policy is the SFT model with LoRA
adapters, switching the adapters off (`lora.lora_disabled`) *is* the reference: no second copy.
`collate_pairs` and `pair_logprobs` batch the chosen and rejected responses of
`preferences.Preference` pairs into one forward pass; `DPOObjective` is the loss as an
objective of the course's one training loop (`trainer.Trainer`): reference log-probabilities
with the adapters off, without gradients, the policy's with them on, and the implicit rewards,
margin and accuracy as metrics. `pair_batches` is its data source and `dpo_train` runs them.

Left out: IPO, KTO and the other variants, label smoothing (conservative DPO), and
precomputing the reference log-probabilities once for the whole data set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from llm_course.lora import lora_disabled, lora_layers
from llm_course.ppo import token_logprobs
from llm_course.preferences import Preference, collate_responses
from llm_course.shuffled_batches import ShuffledBatches
from llm_course.tokenizer import Tokenizer
from llm_course.trainer import TrainConfig, Trainer


def sequence_logprobs(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The sum of log p(token) over the masked (response) positions: logits (B, T, V), tokens and mask (B, T) -> (B,).

    As in `ppo.token_logprobs`, logits[:, t] must predict tokens[:, t]; prompt and padding
    positions (mask False) contribute nothing."""
    if mask.shape != tokens.shape:
        raise ValueError(f"mask and tokens must have the same shape, got {tuple(mask.shape)} and {tuple(tokens.shape)}")
    return (token_logprobs(logits, tokens) * mask.float()).sum(-1)


def implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward beta (log pi(y) - log pi_ref(y)) of each response, (B,) -> (B,)."""
    return beta * (policy_logps - ref_logps)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """The DPO loss, averaged over the pairs: four (B,) tensors of sequence log-probabilities -> ().

    -log sigmoid(beta [(policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)])."""
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1:
        raise ValueError(f"the four log-probability tensors must have the same shape (B,), got {sorted(shapes)}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    margin = implicit_rewards(policy_chosen, ref_chosen, beta) - implicit_rewards(policy_rejected, ref_rejected, beta)
    return -F.logsigmoid(margin.float()).mean()


# --------------------------------------------------------------------------- training
def collate_pairs(pairs: list[Preference], tokenizer: Tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (2B, T), response_mask (2B, T)) of `pairs`: the B chosen responses, then the B rejected ones."""
    instructions = [p.instruction for p in pairs] * 2
    tokens, mask, _ = collate_responses(instructions, [p.chosen for p in pairs] + [p.rejected for p in pairs], tokenizer)
    return tokens, mask


def pair_logprobs(policy: nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probabilities (B,) of the chosen (first half of the rows) and rejected (second half)
    responses of `collate_pairs`' tokens and mask, in one forward pass."""
    logps = sequence_logprobs(policy(tokens[:, :-1]), tokens[:, 1:], mask[:, 1:])  # (2B,)
    half = tokens.shape[0] // 2
    return logps[:half], logps[half:]


@dataclass(frozen=True)
class DPOObjective:
    """DPO as an objective of the course's `Trainer`, on a batch of `collate_pairs` (tokens (2B, T), mask (2B, T)).

    The reference's log-probabilities come from the policy itself with its LoRA adapters off
    (`lora_disabled`), without gradients; the policy's with them on. Metrics: the mean implicit
    rewards of the chosen and rejected responses, their margin, and the fraction of pairs with
    a positive margin (accuracy)."""

    beta: float = 0.1

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")

    def __call__(self, policy: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        tokens, mask = batch
        with torch.no_grad(), lora_disabled(policy):
            ref_chosen, ref_rejected = pair_logprobs(policy, tokens, mask)  # (B,) each
        policy_chosen, policy_rejected = pair_logprobs(policy, tokens, mask)
        loss = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.beta)
        chosen = implicit_rewards(policy_chosen.detach(), ref_chosen, self.beta)  # (B,)
        rejected = implicit_rewards(policy_rejected.detach(), ref_rejected, self.beta)
        return loss, {"chosen_reward": chosen.mean(), "rejected_reward": rejected.mean(),
                      "margin": (chosen - rejected).mean(), "accuracy": (chosen > rejected).float().mean()}  # fmt: skip


def pair_batches(pairs: list[Preference], tokenizer: Tokenizer, batch_size: int, seed: int = 0) -> ShuffledBatches:
    """DPO's data source: `pairs` in a seeded order, `batch_size` at a time, by `collate_pairs`."""
    if not pairs:
        raise ValueError("DPO needs at least one preference pair")
    return ShuffledBatches(pairs, batch_size, lambda batch: collate_pairs(batch, tokenizer), seed)


@dataclass
class DPOResult:
    """What `dpo_train` measured, one entry per step (`tracked`: one per `track_every` steps)."""

    losses: list[float]  # the DPO loss
    chosen_rewards: list[float]  # mean implicit reward of the chosen responses
    rejected_rewards: list[float]  # mean implicit reward of the rejected responses
    margins: list[float]  # mean (chosen - rejected) implicit reward
    accuracies: list[float]  # fraction of pairs with a positive margin
    tracked: dict[str, list[float]]  # "step" and whatever track_fn returned
    seconds: float  # wall-clock time of the steps (tracking excluded)
    trainer: Trainer  # the trainer that ran it


def dpo_train(
    policy: nn.Module,
    pairs: list[Preference],
    tokenizer: Tokenizer,
    beta: float = 0.1,
    steps: int = 100,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    track_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    track_every: int = 10,
    warmup_steps: int = 0,
    min_lr_ratio: float = 1.0,
) -> DPOResult:
    """DPO on a LoRA `policy`: the course's `Trainer` with `DPOObjective(beta)` on `pair_batches`.

    AdamW on the adapters (betas (0.9, 0.999), no weight decay, no clipping), `optim.warmup_cosine`
    with `warmup_steps` and `min_lr_ratio` (the defaults: a constant learning rate). `track_fn(policy)` is called before
    the first step and every `track_every` steps (e.g. to sample and measure the policy)."""
    if not lora_layers(policy):
        raise ValueError("the policy has no LoRA adapters: its reference is the policy with adapters off (lora.apply_lora first)")
    data = pair_batches(pairs, tokenizer, batch_size, seed)
    config = TrainConfig(
        batch_size=2 * data.batch_size, seq_len=1, max_steps=steps, lr=lr, min_lr_ratio=min_lr_ratio,
        warmup_steps=warmup_steps, weight_decay=0.0, beta2=0.999,
        grad_clip=0.0, spike_threshold=0.0, eval_interval=0, seed=seed,
    )  # fmt: skip
    trainer = Trainer(policy, config, data=data, objective=DPOObjective(beta), log=None)
    tracked: dict[str, list[float]] = {}
    seconds = 0.0
    for until in [*range(0, steps, track_every), steps]:
        start = time.perf_counter()
        trainer.train(until_step=until)
        seconds += time.perf_counter() - start
        policy.eval()
        if track_fn is not None:
            for k, v in {"step": until, **track_fn(policy)}.items():
                tracked.setdefault(k, []).append(float(v))
    h = trainer.history
    return DPOResult(h["loss"], h["chosen_reward"], h["rejected_reward"], h["margin"], h["accuracy"], tracked, seconds, trainer)
