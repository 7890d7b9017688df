"""Speculative decoding: a small draft model proposes, the large target model verifies (chapter 09).

Implements Leviathan, Kalman and Matias (2023), "Fast Inference from Transformers via
Speculative Decoding", and Chen et al. (2023), "Accelerating Large Language Model Decoding with
Speculative Sampling". The draft model samples gamma tokens x_1 .. x_gamma from its
distributions q_1 .. q_gamma; the target model scores all of them in *one* forward pass, which
gives p_1 .. p_gamma and p_{gamma+1}. Draft x_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)),
in order; at the first rejection the next token is drawn from the residual distribution
norm(max(0, p_i - q_i)) instead, and if every draft is accepted a bonus token is drawn from
p_{gamma+1}. Every token produced this way is distributed exactly as if the target had
sampled it alone (tests/test_speculative.py checks it with a chi-square test); the draft
only changes how many target passes it takes.

- `residual_distribution`, `verify_draft` (the accept / resample rule, deterministic given
  the uniforms u) and `speculative_step` (which draws them) are pure functions;
- `speculative_generate` runs the loop with a KV cache for each model (rejected drafts are
  cropped from the caches) and returns the tokens and `SpeculativeStats` (acceptance rate,
  tokens per target pass);
- `expected_tokens_per_step(alpha, gamma) = (1 - alpha^(gamma+1)) / (1 - alpha)` and
  `expected_speedup`, the formulas of Leviathan et al. (2023), §3.

With temperature 0 both distributions are one-hot and the rule reduces to "accept while the
draft's token is the target's argmax". Left out: batches of sequences (each row accepts a
different number of drafts), tree-shaped drafts (Medusa, SpecInfer) and self-drafting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from llm_course.kv_cache import KVCache
from llm_course.sampling import apply_temperature, check_sampling_settings, top_k_filter, top_p_filter
from llm_course.utils import check_generator


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) over the last dimension (V,): where to resample after a rejection.

    If p <= q nowhere exceeds (p == q), no rejection can happen; p is returned then.
    """
    residual = (p - q).clamp(min=0)  # (..., V)
    total = residual.sum(dim=-1, keepdim=True)  # (..., 1)
    return torch.where(total > 0, residual / total.clamp(min=torch.finfo(p.dtype).tiny), p)


def verify_draft(
    p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor, u: torch.Tensor
) -> tuple[int, torch.Tensor]:
    """The accept / resample rule, given the uniform draws: returns (n_accepted, next_distribution).

    p (gamma + 1, V): the target's probabilities at each draft position and one beyond;
    q (gamma, V): the draft model's; draft (gamma,): the drafted token ids; u (gamma,): uniforms
    in [0, 1). Draft i is accepted when u_i < p_i(x_i) / q_i(x_i); the first rejection stops.
    next_distribution (V,) is the residual norm(max(0, p_n - q_n)) at the first rejected
    position n, or p_gamma if all gamma drafts were accepted.
    """
    gamma = draft.shape[0]
    p_draft = p[:gamma].gather(-1, draft[:, None]).squeeze(-1)  # (gamma,) p_i(x_i)
    q_draft = q.gather(-1, draft[:, None]).squeeze(-1)  # (gamma,) q_i(x_i)
    accepted = u * q_draft < p_draft  # (gamma,) u < p/q, written without dividing
    n = gamma if bool(accepted.all()) else int((~accepted).nonzero()[0, 0])
    if n == gamma:
        return n, p[gamma]
    return n, residual_distribution(p[n], q[n])


def speculative_step(
    p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The tokens one round produces: the accepted drafts plus one more token, (n + 1,).

    Draws gamma uniforms, then one token from `verify_draft`'s distribution, from `generator`
    (on p's device).
    """
    check_generator(generator, p, "the target's probabilities")
    u = torch.rand(draft.shape[0], generator=generator, device=p.device)  # (gamma,)
    n, dist = verify_draft(p, q, draft, u)
    last = torch.multinomial(dist, 1, generator=generator)  # (1,)
    return torch.cat([draft[:n], last])


def probabilities(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution `sample_next` draws from, (..., V), float32: one-hot of the argmax at temperature 0.

    The logits are cast to float32 first, as `sample_next` does: a temperature applied to
    bf16 logits would round them again (and differently from the sampler).
    """
    logits = logits.float()  # (..., V)
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.softmax(logits.float(), dim=-1)


def expected_tokens_per_step(alpha: float, gamma: int) -> float:
    """(1 - alpha^(gamma+1)) / (1 - alpha): tokens per target pass if each draft is accepted with prob. alpha."""
    if alpha >= 1.0:
        return gamma + 1.0
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def expected_speedup(alpha: float, gamma: int, cost_ratio: float) -> float:
    """Leviathan et al.'s walltime improvement: tokens per step / (gamma * c + 1), c = draft / target time."""
    return expected_tokens_per_step(alpha, gamma) / (gamma * cost_ratio + 1)


@dataclass
class SpeculativeStats:
    """What a run of `speculative_generate` did."""

    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens accepted
    rejected: int = 0  # rounds that ended with a rejection (each tested one draft that failed)
    target_passes: int = 0  # forward passes of the target model after the prompt
    overlap: list[float] = field(default_factory=list)  # sum_x min(p(x), q(x)) at every tested position

    @property
    def acceptance_rate(self) -> float:
        """Accepted / tested drafts: an estimate of alpha (drafts after a rejection are not tested)."""
        tested = self.accepted + self.rejected
        return self.accepted / tested if tested else float("nan")

    @property
    def tokens_per_pass(self) -> float:
        """New tokens per target forward pass (1 for ordinary decoding)."""
        return (self.accepted + self.target_passes) / self.target_passes if self.target_passes else float("nan")


@torch.no_grad()
def speculative_generate(
    target: nn.Module,
    draft: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    gamma: int = 4,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, SpeculativeStats]:
    """Continue the prompt idx (1, T) by max_new_tokens tokens sampled from the target: ((1, T + n), stats).

    The tokens have the distribution of `generate(target, idx, ..., temperature, top_k, top_p)`;
    `draft` must share the target's vocabulary. Both models keep a KV cache; prompt +
    max_new_tokens + gamma must fit in both context lengths. Put the models in eval mode
    first (dropout off).
    """
    check_sampling_settings(temperature, top_k, top_p)
    check_generator(generator, idx, "the prompt idx")
    if idx.dim() != 2 or idx.shape[0] != 1:
        raise ValueError(f"speculative_generate takes one sequence, idx of shape (1, T); got {tuple(idx.shape)}")
    if gamma < 1:
        raise ValueError(f"gamma (draft tokens per round) must be at least 1, got {gamma}")
    target.check_inputs(idx)  # ids in range: the forward passes with a cache do not check them
    size = idx.shape[1] + max_new_tokens + gamma
    for name, m in (("target", target), ("draft", draft)):
        if size > m.config.context_length:
            raise ValueError(
                f"prompt ({idx.shape[1]}) + max_new_tokens ({max_new_tokens}) + gamma ({gamma}) = {size} tokens "
                f"exceed the {name}'s context_length {m.config.context_length}"
            )
    probs = lambda logits: probabilities(logits, temperature, top_k, top_p)  # noqa: E731
    target_cache, draft_cache = KVCache.for_model(target, 1, size), KVCache.for_model(draft, 1, size)
    stats = SpeculativeStats()
    tokens = idx.long()
    n_prompt = tokens.shape[1]
    # Both caches hold every token but the last; the last one is fed at the next round.
    while tokens.shape[1] - n_prompt < max_new_tokens:
        # 1. The draft proposes gamma tokens, one forward pass each.
        drafts, qs = [], []
        feed = tokens[:, draft_cache.length :]
        for _ in range(gamma):
            q = probs(draft(feed, cache=draft_cache)[0, -1])  # (V,)
            x = torch.multinomial(q, 1, generator=generator)  # (1,)
            drafts.append(x)
            qs.append(q)
            feed = x[None]  # (1, 1)
        drafted = torch.cat(drafts)  # (gamma,)
        # 2. The target scores all of them in one pass: p_1 .. p_gamma and p_{gamma+1}.
        new = torch.cat([tokens[:, target_cache.length :], drafted[None]], dim=1)
        p = probs(target(new, cache=target_cache)[0, -(gamma + 1) :])  # (gamma + 1, V)
        q = torch.stack(qs)  # (gamma, V)
        # 3. Accept or resample.
        out = speculative_step(p, q, drafted, generator)  # (n + 1,)
        n = out.shape[0] - 1
        stats.target_passes += 1
        stats.drafted += gamma
        stats.accepted += n
        stats.rejected += int(n < gamma)
        stats.overlap += torch.minimum(p[: min(n + 1, gamma)], q[: min(n + 1, gamma)]).sum(-1).tolist()
        tokens = torch.cat([tokens, out[None]], dim=1)
        # 4. Forget the rejected drafts: the caches keep every token but the new last one.
        target_cache.crop(tokens.shape[1] - 1)
        draft_cache.crop(tokens.shape[1] - 1)
    return tokens[:, : n_prompt + max_new_tokens], stats
