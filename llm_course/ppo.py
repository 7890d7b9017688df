"""PPO for language models, with a per-token KL penalty to a frozen reference (chapter 12).

The policy writes a response y_1..y_T to a prompt x; each token is an action, and the episode
ends with the response. The reward model scores the whole response once, so the per-token
reward (Ziegler et al., 2019; Ouyang et al., 2022) is

    r_t = -beta * (log pi(y_t | ...) - log pi_ref(y_t | ...))  +  [t = T] * score(x, y),

the KL penalty keeping the policy near the reference (the SFT model), the score paid at the
last token. The pure functions here are the algorithm's math (Schulman et al., 2017):

- `token_logprobs(logits, tokens)`: log pi(token) at every position, gathered from logits;
- `masked_mean`, `whiten(x, mask)`: statistics over the valid (response) positions only;
- `kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, beta)`: the r_t above;
- `gae(rewards, values, mask, gamma, lam)`: generalized advantage estimation
  (Schulman et al., 2016), delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1},
  with V = 0 after the last response token (the episode ends there); returns = A + V;
- `ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip)`: the clipped surrogate
  -min(rho A, clip(rho, 1 - eps, 1 + eps) A), rho = exp(log pi - log pi_old), averaged over tokens;
- `value_loss(values, old_values, returns, mask, clip)`: the clipped value loss;
- `entropy(logits)`: the entropy of the policy at every position.

A `mask` (B, T) is True (or 1) at the response tokens and False at padding, which always
comes after a response's last token (a response that stopped early is padded on the right).

The stateful parts below them: `ValueHead` (a linear layer on the policy's hidden states),
`rollout` (sample responses with `generation.generate`, then the log-probabilities under the
policy and under the reference, the values and the reward model's scores), `ppo_step` (one
rollout and `epochs` passes of minibatch updates) and `ppo_train` (the loop, with a history
for plots). The policy carries LoRA adapters (`lora.apply_lora`); the reference is the same
model with the adapters off (`lora.lora_disabled`), so no second copy is kept.

Left out: adaptive KL control, reward scaling by running statistics, PPO-ptx (mixing the
pretraining loss back in), a separate value model, and batches of prompts of different lengths.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from llm_course.generation import generate
from llm_course.lora import lora_disabled, lora_layers


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("shapes must match, got " + ", ".join(f"{n} {s}" for n, s in shapes.items()))


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] at every position: logits (B, T, V), tokens (B, T) -> (B, T), float32.

    `logits[:, t]` must be the prediction *for* `tokens[:, t]` (shift the model's outputs
    by one first: the logits at position t - 1 predict the token at t)."""
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits (B, T, V) and tokens (B, T) disagree: {tuple(logits.shape)} and {tuple(tokens.shape)}")
    return F.log_softmax(logits.float(), dim=-1).gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The mean of `x` over the positions where `mask` is true (over all dims, or along `dim`)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions (padding set to 0).

    Advantage whitening: the scale of the rewards then does not set the size of a PPO step."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out * mask.to(x.dtype)


def kl_penalized_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-token rewards (B, T): -beta (log pi - log pi_ref) at each response token, plus `scores` (B,)
    at each response's last token; 0 at padding. beta = 0 removes the KL penalty."""
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    mask = mask.bool()
    if not mask.any(dim=1).all():
        raise ValueError("every response needs at least one token (a row of the mask is all False)")
    rewards = torch.where(mask, -beta * (logprobs - ref_logprobs), 0.0)
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)  # (T,)
    last = (mask.long() * positions).argmax(dim=1)  # (B,) index of each response's last token
    return rewards.scatter_add(1, last[:, None], scores.to(rewards.dtype)[:, None])


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation: rewards, values, mask (B, T) -> (advantages, returns), both (B, T).

    Backwards over t: delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma lam A_{t+1},
    where V_{t+1} and A_{t+1} are 0 beyond a response's last token (the episode is over).
    returns = advantages + values is the value head's regression target. Padding gets 0."""
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    m = mask.bool()
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])  # (B,) V_{t+1}
    next_advantage = torch.zeros_like(values[:, 0])  # (B,) A_{t+1}
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # torch.where, not a product with the mask: whatever sits at padding (even NaN) stays there.
        advantages[:, t] = torch.where(m[:, t], delta + gamma * lam * next_advantage, 0.0)
        next_value = torch.where(m[:, t], values[:, t], 0.0)  # 0 past the end of the response
        next_advantage = advantages[:, t]
    return advantages, torch.where(m, advantages + values, 0.0)


def ppo_clip_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """PPO's clipped surrogate loss, averaged over the response tokens: all (B, T) -> ().

    rho = exp(log pi - log pi_old); loss_t = -min(rho A, clip(rho, 1 - clip, 1 + clip) A).
    The min makes the objective pessimistic: moving rho beyond the clip range earns nothing."""
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    if clip <= 0:
        raise ValueError(f"clip must be positive, got {clip}")
    ratio = torch.exp(logprobs - old_logprobs)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    return -masked_mean(surrogate, mask)


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """The clipped value loss 0.5 max((V - R)^2, (V_clipped - R)^2) averaged over response tokens, where
    V_clipped = old_V + clamp(V - old_V, -clip, clip) (the value head moves at most `clip` per update)."""
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy -sum_v p_v log p_v of the distribution at every position: (B, T, V) -> (B, T)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


# --------------------------------------------------------------------------- rollouts and training
class ValueHead(nn.Module):
    """V(state): a linear layer on the policy's hidden state before each response token, (B, n, C) -> (B, n)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.linear = nn.Linear(d_model, 1)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


def response_mask(response: torch.Tensor, eos_id: int) -> torch.Tensor:
    """True at each response token up to and including the first `eos_id`, False after it: (B, n) -> (B, n)."""
    is_eos = (response == eos_id).long()  # (B, n)
    before = torch.cumsum(is_eos, dim=1) - is_eos  # number of eos strictly before t
    return before == 0


def policy_outputs(
    policy: nn.Module, value_head: ValueHead | None, tokens: torch.Tensor, prompt_len: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (B, n, V) predicting each response token of tokens (B, P + n), and values (B, n) (None without a head).

    One pass of the trunk: the hidden state before response token t gives both its logits
    (through the policy's `lm_head`) and V_t."""
    h = policy.features(tokens[:, :-1])[:, prompt_len - 1 :]  # (B, n, C): states before each response token
    return policy.lm_head(h), (value_head(h) if value_head is not None else None)


@dataclass
class Rollout:
    """A batch of sampled responses and what PPO needs of them; all (B, n) tensors are over the response."""

    tokens: torch.Tensor  # (B, P + n) prompt and response ids
    mask: torch.Tensor  # (B, n) True up to and including each response's end token
    logprobs: torch.Tensor  # (B, n) log pi_old(token)
    ref_logprobs: torch.Tensor  # (B, n) log pi_ref(token), with the LoRA adapters off
    values: torch.Tensor | None  # (B, n) V_old
    scores: torch.Tensor  # (B,) the reward model's score of each response

    def kl(self) -> torch.Tensor:
        """Per response: sum over its tokens of log pi - log pi_ref, a sample of KL(pi || pi_ref): (B,)."""
        return ((self.logprobs - self.ref_logprobs) * self.mask).sum(-1)


def _check_lora(policy: nn.Module) -> None:
    if not lora_layers(policy):
        raise ValueError("the policy has no LoRA adapters: its reference is the policy with adapters off (lora.apply_lora first)")


@torch.no_grad()
def rollout(
    policy: nn.Module,
    prompts: torch.Tensor,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    eos_id: int,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    value_head: ValueHead | None = None,
) -> Rollout:
    """Sample a response to each prompt (B, P) from `policy` and compute its log-probabilities under the
    policy and under the reference (the same model with its LoRA adapters off), the values and the
    scores `score_fn(tokens (B, P + n), lengths (B,))`."""
    _check_lora(policy)
    tokens = generate(policy, prompts, max_new_tokens, temperature, generator=generator, eos_id=eos_id, use_cache=True)
    P = prompts.shape[1]
    if tokens.shape[1] == P:
        raise ValueError("max_new_tokens must be at least 1")
    response = tokens[:, P:]  # (B, n)
    mask = response_mask(response, eos_id)
    was_training = policy.training
    policy.eval()
    logits, values = policy_outputs(policy, value_head, tokens, P)
    with lora_disabled(policy):
        ref_logits, _ = policy_outputs(policy, None, tokens, P)
    policy.train(was_training)
    scores = score_fn(tokens, P + mask.long().sum(-1))
    return Rollout(tokens, mask, token_logprobs(logits / temperature, response),
                   token_logprobs(ref_logits / temperature, response), values, scores.float())  # fmt: skip


@dataclass
class PPOConfig:
    """PPO's settings (the defaults are the chapter's)."""

    beta: float = 0.1  # weight of the per-token KL penalty; 0 removes it
    lr: float = 1e-3  # AdamW learning rate (adapters and value head)
    epochs: int = 4  # passes over each rollout
    minibatch_size: int = 16  # rollouts per update
    clip: float = 0.2  # the clip range of the ratio (and of the value head's move)
    vf_coef: float = 0.5  # weight of the value loss
    ent_coef: float = 0.0  # weight of the entropy bonus
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE's lambda
    max_new_tokens: int = 24  # longest response

    def __post_init__(self):
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.epochs < 1 or self.minibatch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(f"epochs, minibatch_size and max_new_tokens must be >= 1, got {self}")


@dataclass
class PPOResult:
    """What `ppo_train` measured, one entry per iteration (rollout + updates)."""

    history: dict[str, list[float]]  # score, kl, entropy, clip_frac, value_loss, and whatever track_fn returns
    seconds: float  # wall-clock time of the whole run


def ppo_step(
    policy: nn.Module,
    value_head: ValueHead,
    opt: torch.optim.Optimizer,
    prompts: torch.Tensor,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    eos_id: int,
    config: PPOConfig = PPOConfig(),
    generator: torch.Generator | None = None,
) -> tuple[Rollout, dict[str, float]]:
    """One PPO iteration on the prompts (B, P): a rollout, then `config.epochs` passes of minibatch
    updates. Returns the rollout and the means of clip_frac, value_loss and entropy over the updates."""
    c = config
    ro = rollout(policy, prompts, score_fn, eos_id, c.max_new_tokens, generator=generator, value_head=value_head)
    rewards = kl_penalized_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, ro.mask, c.beta)
    advantages, returns = gae(rewards, ro.values, ro.mask, c.gamma, c.lam)
    advantages = whiten(advantages, ro.mask)
    params = [p for group in opt.param_groups for p in group["params"]]
    P, B = prompts.shape[1], prompts.shape[0]
    stats: dict[str, list[float]] = {"clip_frac": [], "value_loss": [], "entropy": []}
    policy.train()
    for _ in range(c.epochs):
        order = torch.randperm(B, generator=generator, device=generator.device if generator else "cpu").to(prompts.device)
        for i in range(0, B, c.minibatch_size):
            mb = order[i : i + c.minibatch_size]
            logits, values = policy_outputs(policy, value_head, ro.tokens[mb], P)
            logprobs = token_logprobs(logits, ro.tokens[mb, P:])
            mask = ro.mask[mb]
            pg = ppo_clip_loss(logprobs, ro.logprobs[mb], advantages[mb], mask, c.clip)
            vl = value_loss(values, ro.values[mb], returns[mb], mask, c.clip)
            ent = masked_mean(entropy(logits), mask)
            loss = pg + c.vf_coef * vl - c.ent_coef * ent
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ratio = torch.exp(logprobs.detach() - ro.logprobs[mb])
            stats["clip_frac"].append(masked_mean(((ratio - 1).abs() > c.clip).float(), mask).item())
            stats["value_loss"].append(vl.item())
            stats["entropy"].append(ent.item())
    policy.eval()
    return ro, {k: sum(v) / len(v) for k, v in stats.items()}


def ppo_train(
    policy: nn.Module,
    value_head: ValueHead,
    prompts: torch.Tensor,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    eos_id: int,
    config: PPOConfig = PPOConfig(),
    iterations: int = 50,
    batch_size: int = 32,
    seed: int = 0,
    track_fn: Callable[[Rollout], dict[str, float]] | None = None,
) -> PPOResult:
    """PPO on a LoRA `policy` (the reference: its adapters off) with a value head on its hidden states.

    Each iteration (`ppo_step`) samples `batch_size` of `prompts` (N, P), rolls them out (`rollout`),
    turns the scores into per-token KL-penalised rewards (`kl_penalized_rewards`, `config.beta` = 0:
    no penalty), estimates advantages with `gae`, whitens them, and takes `config.epochs` passes of
    minibatch AdamW steps on ppo_clip_loss + vf_coef * value_loss - ent_coef * entropy (gradients
    clipped to norm 1). `track_fn(rollout)` adds its own numbers (e.g. the ground-truth score) to the history."""
    _check_lora(policy)
    if prompts.dim() != 2 or prompts.shape[0] == 0:
        raise ValueError(f"prompts must be a non-empty (N, P) tensor of token ids, got {tuple(prompts.shape)}")
    params = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    rng = torch.Generator().manual_seed(seed)
    generator = torch.Generator(device=prompts.device).manual_seed(seed)
    history: dict[str, list[float]] = {}
    start = time.perf_counter()
    for _ in range(iterations):
        batch = prompts[torch.randint(len(prompts), (batch_size,), generator=rng).to(prompts.device)]  # (B, P)
        ro, stats = ppo_step(policy, value_head, opt, batch, score_fn, eos_id, config, generator)
        row = {"score": ro.scores.mean().item(), "kl": ro.kl().mean().item(),
               "length": ro.mask.float().sum(-1).mean().item(), **stats}  # fmt: skip
        if track_fn is not None:
            row.update(track_fn(ro))
        for k, v in row.items():
            history.setdefault(k, []).append(float(v))
    return PPOResult(history, time.perf_counter() - start)
