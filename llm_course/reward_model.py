"""Reward model: a transformer with a scalar head, trained on preference pairs (chapter 12).

Preferences are modelled with Bradley–Terry (1952), as in InstructGPT (Ouyang et al., 2022):
the probability that a labeller prefers response y_c to y_r for the same prompt x is

    P(y_c > y_r | x) = sigmoid(r(x, y_c) - r(x, y_r)),

so the reward model r is trained to maximise the log-likelihood of the observed choices:

    L = -mean log sigmoid(r_chosen - r_rejected)            (`pairwise_loss`).

Only differences of rewards matter: adding a constant to every reward changes nothing.

`RewardModel(trunk)` is a transformer's `features` (its final hidden states) with a linear
head on the last token of each sequence. `pairwise_objective` is the loss as an objective of
the course's one training loop (`trainer.Trainer`), `preference_batches` its data source
(`preferences.Preference` pairs, collated by `collate_pair_rewards`), and
`train_reward_model` runs them; `evaluate_reward_model` gives the held-out preference
accuracy and `score_responses` scores tokenized responses (PPO's reward).

Left out: ensembles of reward models, margins from graded preferences (Llama 2), and
reward normalisation across prompts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from llm_course.preferences import Preference, collate_responses
from llm_course.shuffled_batches import ShuffledBatches
from llm_course.tokenizer import Tokenizer
from llm_course.trainer import TrainConfig, Trainer


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """The Bradley–Terry loss mean(-log sigmoid(r_chosen - r_rejected)) over a batch of pairs (B,), (B,) -> ().

    `F.logsigmoid` computes log sigmoid(z) = -log(1 + exp(-z)) without overflow, even for a
    margin of -1000 (where sigmoid underflows to 0 and its log would be -inf)."""
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen and r_rejected must have the same shape, got {tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}")
    if r_chosen.numel() == 0:
        raise ValueError("pairwise_loss needs at least one pair, got empty tensors")
    return -F.logsigmoid(r_chosen.float() - r_rejected.float()).mean()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """The fraction of pairs the rewards rank correctly (r_chosen > r_rejected; a tie counts half), (B,), (B,) -> ()."""
    diff = r_chosen.detach().float() - r_rejected.detach().float()
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean()


def preference_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """`pairwise_accuracy` as a Python float."""
    return float(pairwise_accuracy(r_chosen, r_rejected))


# --------------------------------------------------------------------------- the model and its training
class RewardModel(nn.Module):
    """A transformer trunk (its `features`: the final hidden states) and a linear head that reads the
    hidden state of the last token of each sequence: tokens (B, T), lengths (B,) -> rewards (B,).

    The last token is the response's <|endoftext|>, which (by causal attention) has seen the
    prompt and the whole response. Right padding after it changes nothing."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(trunk.config.d_model, 1)
        with torch.no_grad():
            self.head.weight.zero_()  # every response scores 0 at the start
            self.head.bias.zero_()

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if lengths.shape != tokens.shape[:1] or int(lengths.min()) < 1 or int(lengths.max()) > tokens.shape[1]:
            raise ValueError(f"lengths must be (B,) in [1, T] for tokens {tuple(tokens.shape)}, got {lengths.tolist()}")
        h = self.trunk.features(tokens)  # (B, T, C)
        last = h[torch.arange(tokens.shape[0], device=tokens.device), lengths.to(tokens.device) - 1]  # (B, C)
        return self.head(last).squeeze(-1)  # (B,)


def _score_pairs(rm: RewardModel, pairs: list[Preference], tokenizer: Tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (B,) of the chosen and of the rejected responses of `pairs` (one forward pass)."""
    device = next(rm.parameters()).device
    tokens, lengths = collate_pair_rewards(pairs, tokenizer)
    return split_rewards(rm(tokens.to(device), lengths.to(device)))


def collate_pair_rewards(pairs: list[Preference], tokenizer: Tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (2B, T), lengths (2B,)) of `pairs`: the B chosen responses, then the B rejected ones."""
    instructions = [p.instruction for p in pairs] * 2
    tokens, _, lengths = collate_responses(instructions, [p.chosen for p in pairs] + [p.rejected for p in pairs], tokenizer)
    return tokens, lengths


def split_rewards(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (2B,) of `collate_pair_rewards`' rows -> (chosen (B,), rejected (B,))."""
    half = rewards.shape[0] // 2
    return rewards[:half], rewards[half:]


def pairwise_objective(rm: RewardModel, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """The reward model's objective for the course's `Trainer`: `pairwise_loss` on a batch of
    `collate_pair_rewards` (tokens (2B, T), lengths (2B,)); metric "accuracy", the batch's preference accuracy."""
    r_chosen, r_rejected = split_rewards(rm(*batch))  # (B,) each
    return pairwise_loss(r_chosen, r_rejected), {"accuracy": pairwise_accuracy(r_chosen, r_rejected)}


def preference_batches(pairs: list[Preference], tokenizer: Tokenizer, batch_size: int, seed: int = 0) -> ShuffledBatches:
    """The reward model's data source: `pairs` in a seeded order, `batch_size` at a time, by `collate_pair_rewards`."""
    if not pairs:
        raise ValueError("training on preferences needs at least one preference pair")
    return ShuffledBatches(pairs, batch_size, lambda batch: collate_pair_rewards(batch, tokenizer), seed)


@dataclass
class RewardResult:
    """What `train_reward_model` measured."""

    losses: list[float]  # the pairwise loss at every step
    accuracies: list[float]  # the training batch's preference accuracy at every step
    seconds: float  # wall-clock time of the steps
    trainer: Trainer  # the trainer that ran it


def train_reward_model(
    rm: RewardModel,
    pairs: list[Preference],
    tokenizer: Tokenizer,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    seed: int = 0,
    warmup_steps: int = 0,
    min_lr_ratio: float = 1.0,
) -> RewardResult:
    """Train `rm` in place: the course's `Trainer` with `pairwise_objective` on `preference_batches`.

    AdamW with betas (0.9, 0.999), no gradient clipping; `optim.warmup_cosine` with `warmup_steps`
    and `min_lr_ratio` (the defaults: a constant learning rate)."""
    data = preference_batches(pairs, tokenizer, batch_size, seed)
    config = TrainConfig(
        batch_size=2 * data.batch_size, seq_len=1, max_steps=steps, lr=lr, min_lr_ratio=min_lr_ratio,
        warmup_steps=warmup_steps, weight_decay=weight_decay, beta2=0.999,
        grad_clip=0.0, spike_threshold=0.0, eval_interval=0, seed=seed,
    )  # fmt: skip
    trainer = Trainer(rm, config, data=data, objective=pairwise_objective, log=None)
    start = time.perf_counter()
    history = trainer.train()
    seconds = time.perf_counter() - start
    rm.eval()
    return RewardResult(history["loss"], history["accuracy"], seconds, trainer)


@torch.no_grad()
def evaluate_reward_model(rm: RewardModel, pairs: list[Preference], tokenizer: Tokenizer, batch_size: int = 128) -> float:
    """The preference accuracy of `rm` on `pairs` (e.g. held-out ones)."""
    was_training = rm.training
    rm.eval()
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        c, r = _score_pairs(rm, pairs[i : i + batch_size], tokenizer)
        chosen.append(c)
        rejected.append(r)
    rm.train(was_training)
    return preference_accuracy(torch.cat(chosen), torch.cat(rejected))


@torch.no_grad()
def score_responses(rm: RewardModel, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Rewards (B,) of already tokenized sequences (B, T) of `lengths` real tokens, without gradients."""
    was_training = rm.training
    rm.eval()
    try:
        return rm(tokens, lengths)
    finally:
        rm.train(was_training)
