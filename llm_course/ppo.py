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
policy and under the reference, the values and the reward model's scores), and the update
phase on the course's one training loop (`trainer.Trainer`): `ActorCritic` (policy and value
head, the trained module), `PPOObjective` (the loss) and `RolloutMinibatches` (its data
source: minibatches of the current rollout). `PPO.step` is one iteration (a rollout, then
`epochs` passes of updates) and `ppo_train` the run, with a history for plots. The policy
carries LoRA adapters (`lora.apply_lora`); the reference is the same model with the adapters
off (`lora.lora_disabled`), so no second copy is kept.

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
from llm_course.trainer import TrainConfig, Trainer


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
    """PPO's settings (chapter 12 takes lr 2e-3 and 2 epochs, for a short run on a CPU; the rest are its defaults)."""

    beta: float = 0.1  # weight of the per-token KL penalty; 0 removes it
    lr: float = 1e-3  # AdamW's peak learning rate (adapters and value head)
    epochs: int = 4  # passes over each rollout
    minibatch_size: int = 16  # rollouts per update
    clip: float = 0.2  # the clip range of the ratio (and of the value head's move)
    vf_coef: float = 0.5  # weight of the value loss
    ent_coef: float = 0.0  # weight of the entropy bonus
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE's lambda
    max_new_tokens: int = 24  # longest response
    warmup: float = 0.0  # share of the run's updates spent warming the learning rate up (then cosine)
    min_lr_ratio: float = 1.0  # the cosine ends at min_lr_ratio * lr (1: a constant rate, the chapter's)
    grad_clip: float = 1.0  # clip the gradient norm of each update to this (0: no clipping)

    def __post_init__(self):
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.epochs < 1 or self.minibatch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(f"epochs, minibatch_size and max_new_tokens must be >= 1, got {self}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup is a share of the updates in [0, 1), got {self.warmup}")


def ppo_advantages(ro: Rollout, config: PPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(whitened advantages, returns), both (B, n), of a rollout: `kl_penalized_rewards` -> `gae` -> `whiten`."""
    rewards = kl_penalized_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, ro.mask, config.beta)
    advantages, returns = gae(rewards, ro.values, ro.mask, config.gamma, config.lam)
    return whiten(advantages, ro.mask), returns


class ActorCritic(nn.Module):
    """The policy and its value head as one module, what the trainer optimizes (the adapters and the head).

    forward(tokens (B, P + n), prompt_len P) -> (logits (B, n, V), values (B, n)): `policy_outputs`."""

    def __init__(self, policy: nn.Module, value_head: ValueHead):
        super().__init__()
        self.policy, self.value_head = policy, value_head

    def forward(self, tokens: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return policy_outputs(self.policy, self.value_head, tokens, prompt_len)


@dataclass(frozen=True)
class PPOObjective:
    """PPO's update as an objective of the course's `Trainer`, on a minibatch of `RolloutMinibatches`:
    ppo_clip_loss + vf_coef * value_loss - ent_coef * entropy. Metrics: the three parts and
    clip_frac, the share of response tokens whose ratio left [1 - clip, 1 + clip]."""

    clip: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.0

    def __call__(self, model: ActorCritic, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        tokens, mask = batch["tokens"], batch["mask"]  # (b, P + n), (b, n)
        P = tokens.shape[1] - mask.shape[1]
        logits, values = model(tokens, P)  # (b, n, V), (b, n)
        logprobs = token_logprobs(logits, tokens[:, P:])  # (b, n)
        pg = ppo_clip_loss(logprobs, batch["logprobs"], batch["advantages"], mask, self.clip)
        vl = value_loss(values, batch["values"], batch["returns"], mask, self.clip)
        ent = masked_mean(entropy(logits), mask)
        ratio = torch.exp(logprobs.detach() - batch["logprobs"])
        clip_frac = masked_mean(((ratio - 1).abs() > self.clip).float(), mask)
        loss = pg + self.vf_coef * vl - self.ent_coef * ent
        return loss, {"policy_loss": pg.detach(), "value_loss": vl.detach(), "entropy": ent.detach(), "clip_frac": clip_frac}


class RolloutMinibatches:
    """PPO's data source: `epochs` passes over the rows of the current rollout, each in a new seeded
    order, cut into minibatches of `minibatch_size` rows (the last one of a pass may be smaller).

    `set_rollout(rows)` starts the next iteration with new rows (a dict of tensors, (B, ...) each).
    The position (seed, iteration, epoch, cursor) is the state; the rows themselves are not, so a
    checkpoint resumes exactly only between iterations, where a new rollout is sampled."""

    def __init__(self, minibatch_size: int, seed: int = 0):
        if minibatch_size < 1:
            raise ValueError(f"minibatch_size must be at least 1, got {minibatch_size}")
        self.minibatch_size, self.seed = minibatch_size, seed
        self.rows: dict[str, torch.Tensor] | None = None
        self.iteration, self.epoch, self.cursor = -1, 0, 0

    def updates_per_epoch(self, n_rows: int) -> int:
        return -(-n_rows // self.minibatch_size)  # ceil

    def set_rollout(self, rows: dict[str, torch.Tensor]) -> None:
        sizes = {t.shape[0] for t in rows.values()}
        if len(sizes) != 1:
            raise ValueError(f"every tensor of a rollout needs the same number of rows, got {sorted(sizes)}")
        self.rows = rows
        self.iteration, self.epoch, self.cursor = self.iteration + 1, 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> torch.Tensor:
        n = next(iter(self.rows.values())).shape[0]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.iteration) * 1_009 + self.epoch)
        return torch.randperm(n, generator=g)

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.rows is None:
            raise RuntimeError("no rollout yet: call set_rollout first")
        if self.cursor >= len(self._order):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._epoch_order()
        mb = self._order[self.cursor : self.cursor + self.minibatch_size]
        self.cursor += self.minibatch_size
        return {k: t[mb.to(t.device)] for k, t in self.rows.items()}

    def state_dict(self) -> dict:
        return {"seed": self.seed, "iteration": self.iteration, "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.iteration, self.epoch, self.cursor = (state[k] for k in ("seed", "iteration", "epoch", "cursor"))
        if self.rows is not None:
            self._order = self._epoch_order()


class PPO:
    """PPO on a LoRA `policy` (the reference: its adapters off) with a value head on its hidden states.

    Each iteration (`step`) rolls out a batch of prompts (`rollout`, separate from training), turns
    the scores into advantages (`ppo_advantages`), and hands the rows to the course's `Trainer`,
    which takes `epochs` passes of minibatch AdamW updates on `PPOObjective` (gradients clipped to
    `grad_clip`, the learning rate on warmup + cosine over all `iterations`)."""

    def __init__(
        self,
        policy: nn.Module,
        value_head: ValueHead,
        score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        eos_id: int,
        config: PPOConfig = PPOConfig(),
        iterations: int = 50,
        batch_size: int = 32,
        seed: int = 0,
    ):
        _check_lora(policy)
        c = self.config = config
        self.policy, self.value_head, self.score_fn, self.eos_id = policy, value_head, score_fn, eos_id
        self.data = RolloutMinibatches(c.minibatch_size, seed)
        self.updates = c.epochs * self.data.updates_per_epoch(batch_size)  # optimizer steps per iteration
        total = iterations * self.updates
        train_config = TrainConfig(
            batch_size=min(c.minibatch_size, batch_size), seq_len=c.max_new_tokens, max_steps=total, lr=c.lr,
            warmup_steps=int(c.warmup * total), min_lr_ratio=c.min_lr_ratio, weight_decay=0.0, beta2=0.999,
            grad_clip=c.grad_clip, spike_threshold=0.0, eval_interval=0, seed=seed,
        )  # fmt: skip
        self.trainer = Trainer(ActorCritic(policy, value_head), train_config, data=self.data,
                               objective=PPOObjective(c.clip, c.vf_coef, c.ent_coef), log=None)  # fmt: skip
        device = next(policy.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(seed)  # the rollouts' sampling

    def step(self, prompts: torch.Tensor) -> tuple[Rollout, dict[str, float]]:
        """One iteration on the prompts (B, P): a rollout, then `epochs` passes of minibatch updates.
        Returns the rollout and the means of the objective's metrics over the updates."""
        c, trainer = self.config, self.trainer
        if trainer.step + self.updates > trainer.config.max_steps:
            raise RuntimeError(f"the run's {trainer.config.max_steps} updates are done: make a PPO with more iterations")
        ro = rollout(self.policy, prompts, self.score_fn, self.eos_id, c.max_new_tokens, generator=self.generator,
                     value_head=self.value_head)  # fmt: skip
        advantages, returns = ppo_advantages(ro, c)
        self.data.set_rollout({"tokens": ro.tokens, "mask": ro.mask, "logprobs": ro.logprobs, "values": ro.values,
                               "advantages": advantages, "returns": returns})  # fmt: skip
        first = len(trainer.history["loss"])
        trainer.train(until_step=trainer.step + self.updates)
        self.policy.eval()
        names = ("clip_frac", "value_loss", "entropy", "policy_loss")
        return ro, {k: sum(trainer.history[k][first:]) / len(trainer.history[k][first:]) for k in names}


@dataclass
class PPOResult:
    """What `ppo_train` measured, one entry per iteration (rollout + updates)."""

    history: dict[str, list[float]]  # score, kl, length, clip_frac, value_loss, entropy, policy_loss, and track_fn's
    seconds: float  # wall-clock time of the whole run
    trainer: Trainer  # the trainer of the update phase (one entry per update in its history)


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
    """`iterations` steps of `PPO`, each on `batch_size` of `prompts` (N, P) drawn with `seed`.

    Each iteration rolls them out (`rollout`), turns the scores into per-token KL-penalised
    rewards (`kl_penalized_rewards`, `config.beta` = 0: no penalty), estimates advantages with
    `gae`, whitens them, and trains on ppo_clip_loss + vf_coef * value_loss - ent_coef * entropy
    (`PPOObjective`). `track_fn(rollout)` adds its own numbers (e.g. the ground-truth score) to the history."""
    if prompts.dim() != 2 or prompts.shape[0] == 0:
        raise ValueError(f"prompts must be a non-empty (N, P) tensor of token ids, got {tuple(prompts.shape)}")
    runner = PPO(policy, value_head, score_fn, eos_id, config, iterations, batch_size, seed)
    rng = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {}
    start = time.perf_counter()
    for _ in range(iterations):
        batch = prompts[torch.randint(len(prompts), (batch_size,), generator=rng).to(prompts.device)]  # (B, P)
        ro, stats = runner.step(batch)
        row = {"score": ro.scores.mean().item(), "kl": ro.kl().mean().item(),
               "length": ro.mask.float().sum(-1).mean().item(), **stats}  # fmt: skip
        if track_fn is not None:
            row.update(track_fn(ro))
        for k, v in row.items():
            history.setdefault(k, []).append(float(v))
    return PPOResult(history, time.perf_counter() - start, runner.trainer)
