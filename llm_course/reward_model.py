"""Reward model: a transformer with a scalar head, trained on preference pairs (chapter 12).

Preferences are modelled with Bradley–Terry (1952), as in InstructGPT (Ouyang et al., 2022):
the probability that a labeller prefers response y_c to y_r for the same prompt x is

    P(y_c > y_r | x) = sigmoid(r(x, y_c) - r(x, y_r)),

so the reward model r is trained to maximise the log-likelihood of the observed choices:

    L = -mean log sigmoid(r_chosen - r_rejected)            (`pairwise_loss`).

Only differences of rewards matter: adding a constant to every reward changes nothing.

`RewardModel(trunk)` is a transformer's `features` (its final hidden states) with a linear
head on the last token of each sequence; `train_reward_model` fits it to
`preferences.Preference` pairs with AdamW, `evaluate_reward_model` gives the held-out
preference accuracy and `score_responses` scores tokenized responses (PPO's reward).

Left out: ensembles of reward models, margins from graded preferences (Llama 2), and
reward normalisation across prompts.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from llm_course.preferences import Preference, collate_responses
from llm_course.tokenizer import Tokenizer


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """The Bradley–Terry loss mean(-log sigmoid(r_chosen - r_rejected)) over a batch of pairs (B,), (B,) -> ().

    `F.logsigmoid` computes log sigmoid(z) = -log(1 + exp(-z)) without overflow, even for a
    margin of -1000 (where sigmoid underflows to 0 and its log would be -inf)."""
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen and r_rejected must have the same shape, got {tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}")
    if r_chosen.numel() == 0:
        raise ValueError("pairwise_loss needs at least one pair, got empty tensors")
    return -F.logsigmoid(r_chosen.float() - r_rejected.float()).mean()


def preference_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """The fraction of pairs the rewards rank correctly (r_chosen > r_rejected; a tie counts half)."""
    diff = r_chosen.float() - r_rejected.float()
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


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


@dataclass
class RewardResult:
    """What `train_reward_model` measured."""

    losses: list[float]  # the pairwise loss at every step
    accuracies: list[float]  # the training batch's preference accuracy at every step
    seconds: float  # wall-clock time of the steps


def _score_pairs(rm: RewardModel, pairs: list[Preference], tokenizer: Tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (B,) of the chosen and of the rejected responses of `pairs` (one forward pass)."""
    device = next(rm.parameters()).device
    instructions = [p.instruction for p in pairs] * 2
    tokens, _, lengths = collate_responses(instructions, [p.chosen for p in pairs] + [p.rejected for p in pairs], tokenizer)
    rewards = rm(tokens.to(device), lengths.to(device))  # (2B,)
    return rewards[: len(pairs)], rewards[len(pairs) :]


def train_reward_model(
    rm: RewardModel,
    pairs: list[Preference],
    tokenizer: Tokenizer,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> RewardResult:
    """Train `rm` in place with `pairwise_loss` and AdamW on batches of `pairs` drawn with `seed`."""
    if not pairs:
        raise ValueError("train_reward_model needs at least one preference pair")
    opt = torch.optim.AdamW([p for p in rm.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    rng = random.Random(seed)
    rm.train()
    losses, accuracies = [], []
    start = time.perf_counter()
    for _ in range(steps):
        batch = rng.sample(pairs, min(batch_size, len(pairs)))
        r_chosen, r_rejected = _score_pairs(rm, batch, tokenizer)
        loss = pairwise_loss(r_chosen, r_rejected)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        accuracies.append(preference_accuracy(r_chosen.detach(), r_rejected.detach()))
    rm.eval()
    return RewardResult(losses, accuracies, time.perf_counter() - start)


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
