"""Checks for the chapter 12 exercises (alignment).

The student writes, with the signatures of the reference:

- ``pairwise_loss(r_chosen, r_rejected) -> scalar``
  (:func:`llm_course.reward_model.pairwise_loss`: the Bradley–Terry loss, mean of -log sigmoid(r_c - r_r))
- ``gae(rewards, values, mask, gamma=1.0, lam=0.95) -> (advantages, returns)``
  (:func:`llm_course.ppo.gae`: the backward recursion, 0 beyond each response's last token)
- ``ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip=0.2) -> scalar``
  (:func:`llm_course.ppo.ppo_clip_loss`: -min(rho A, clip(rho) A) averaged over the response tokens)
- ``dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1) -> scalar``
  (:func:`llm_course.dpo.dpo_loss`: -log sigmoid of beta times the difference of log-ratios, averaged)

Each ``check_*`` runs hand-worked examples (``hidden=False``) or seeded random cases and edge
cases compared with the reference (``hidden=True``): padded masks, a single-token response,
float64 inputs, margins of hundreds (where log(sigmoid) gives inf), and the gradient of each loss
with respect to the policy's log-probabilities (``.backward()`` must give the reference's).
When a value differs, the check compares it with the result of a known mistake (sign flipped,
sum for mean, beta or lam forgotten, max for min, the recursion run forwards, ...) and says which.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from llm_course import dpo, ppo, reward_model
from llm_course.grading import call, expect_tensor, fail, first_difference, forbid_reference, passed, seeded, short
from llm_course.grading.edges import edge

TOL = dict(atol=1e-5, rtol=1e-4)


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.shape == want.shape and torch.allclose(got.detach().double(), want.detach().double(), **TOL)


def _same(got: float, want) -> bool:
    want = float(want.detach()) if isinstance(want, torch.Tensor) else float(want)
    return abs(got - want) <= TOL["atol"] + TOL["rtol"] * abs(want)


def _scalar(name: str, fn, got, where: str, per_item: str) -> float:
    """The student's loss as a float, after checking it is a finite floating-point 0-dim tensor."""
    got = expect_tensor(fn, got, "the loss, a scalar")
    if got.numel() != 1:
        fail(f"{name}({where}) should return one number (a 0-dim tensor), got shape {tuple(got.shape)}: "
             f"{per_item}")  # fmt: skip
    if not got.is_floating_point():
        fail(f"{name}({where}) should return a floating-point tensor, got {got.dtype}.")
    return float(got.detach().double())


def _explain(got: float, candidates) -> str:
    for value, why in candidates:
        if value is not None and _same(got, value):
            return f": {why}"
    return ""


def _check_grads(name: str, where: str, got: torch.Tensor, pairs) -> None:
    """`pairs`: (argument name, the student's leaf tensor, the reference's gradient, hint)."""
    if not got.requires_grad:
        fail(f"{name}({where}) returned a loss without gradient: do not call .item() or .detach(), build a new "
             "tensor from Python numbers or use torch.no_grad; the loss must be differentiable with respect "
             "to the policy's log-probabilities, or training cannot move the policy.")  # fmt: skip
    got.backward()
    for arg, leaf, want, hint in pairs:
        if leaf.grad is None:
            fail(f"{name}({where}): no gradient reaches {arg}; compute the loss from {arg} itself (no .detach(), "
                 ".data or .item()).")  # fmt: skip
        if not _close(leaf.grad, want):
            fail(f"{name}({where}): the gradient of the loss with respect to {arg} is wrong, "
                 f"{first_difference(leaf.grad, want)}{hint}.")  # fmt: skip


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _responses(mask: torch.Tensor) -> str:
    lengths = mask.long().sum(1).tolist()
    if len(lengths) == 1:
        return f"1 response of length {lengths[0]} padded to {mask.shape[1]}"
    return f"{len(lengths)} responses of lengths {lengths} padded to {mask.shape[1]}"


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_()


# --------------------------------------------------------------------------- pairwise loss
def _explain_pairwise(rc, rr, got: float) -> str:
    m = rc.double() - rr.double()
    return _explain(got, [
        (-F.logsigmoid(-m).mean(), "the sign is flipped: the loss is -log sigmoid(r_chosen - r_rejected); yours "
                                   "is lowest when the *rejected* response gets the higher reward"),
        (F.logsigmoid(m).mean(), "the minus is missing: log sigmoid(margin) is the log-likelihood, the loss to "
                                 "minimise is its negative (always >= 0)"),
        (-F.logsigmoid(m).sum(), "this is the sum over the pairs; the loss is their mean"),
        (-torch.sigmoid(m).mean(), "this is -sigmoid(margin): the log is missing; the loss is the negative "
                                   "*log*-likelihood, -log sigmoid(margin)"),
        (torch.sigmoid(-m).mean(), "this is 1 - sigmoid(margin), the probability of the wrong choice: the loss is "
                                   "-log sigmoid(margin)"),
        (-m.mean(), "this is minus the mean margin: pass the margin through log sigmoid (a linear loss would push "
                    "rewards apart without end)"),
    ])  # fmt: skip


def _compare_pairwise(fn, rc, rr, label: str = "", grad: bool = False) -> None:
    name = "pairwise_loss"
    where = label or _n(rc.numel(), "pair")
    want = reward_model.pairwise_loss(rc, rr)
    rc_in, rr_in = (_leaf(rc), _leaf(rr)) if grad else (rc.clone(), rr.clone())
    got_t = call(fn, rc_in, rr_in, copy_args=False)
    value = _scalar(name, fn, got_t, where, "the loss is the *mean* of -log sigmoid(margin) over the pairs.")
    if not torch.isfinite(torch.tensor(value)):
        worst = float((rc.double() - rr.double()).min())
        fail(f"{name}({where}) is {value} for a margin r_chosen - r_rejected of {worst:g}: use F.logsigmoid; "
             "log(sigmoid(x)) underflows, sigmoid(-200) rounds to 0 in float32 and log(0) = -inf (and "
             "1 / (1 + exp(200)) overflows the same way).")  # fmt: skip
    if not _same(value, want):
        fail(f"{name}({where}) should be {float(want):.6g}, got {value:.6g}{_explain_pairwise(rc, rr, value)}.")
    if grad:
        rc_ref, rr_ref = _leaf(rc), _leaf(rr)
        reward_model.pairwise_loss(rc_ref, rr_ref).backward()
        _check_grads(name, where, got_t, [("r_chosen", rc_in, rc_ref.grad, ""), ("r_rejected", rr_in, rr_ref.grad, "")])


def check_pairwise_loss(fn, hidden: bool = False) -> None:
    """pairwise_loss(r_chosen (B,), r_rejected (B,)) -> mean -log sigmoid(r_chosen - r_rejected).

    Edges the exercise defines, all in the hidden test: one pair; equal rewards (log 2); margins of
    +-1000 (log-sigmoid, never log of sigmoid); a constant added to every reward changes nothing; the mean
    over pairs, not the sum; float64; gradients.
    """
    forbid_reference(fn, reward_model.pairwise_loss, dpo.dpo_loss)
    if not hidden:
        # The worked example: margins 0 and ln 3 give -log 1/2 and -log 3/4: mean log(8/3) / 2 = 0.4904.
        rc, rr = torch.tensor([0.5, 1.0986122886681098]), torch.tensor([0.5, 0.0])
        _compare_pairwise(fn, rc, rr, label="the worked example (expected 0.4904)")
        _compare_pairwise(fn, torch.tensor([-100.0]), torch.tensor([100.0]),
                          label="r_chosen = -100, r_rejected = 100 (a margin of -200, expected 200)")  # fmt: skip
        _compare_pairwise(fn, rc, rr, label="the worked example, with gradients", grad=True)
        passed(fn, "the worked example, a margin of -200 and the gradient are right")
        return
    g = seeded(120)
    sizes = [(1, 1.0), (4, 2.0), (16, 0.5), (64, 3.0), (257, 1.0)]
    for B, scale in sizes:
        _compare_pairwise(fn, torch.randn(B, generator=g) * scale, torch.randn(B, generator=g) * scale)
    rc = torch.tensor([500.0, -300.0, 0.0, 1000.0, -1000.0])
    _compare_pairwise(fn, rc, torch.zeros(5), label="margins of 500, -300, 0, 1000 and -1000")
    _compare_pairwise(fn, torch.full((3,), 7.0), torch.full((3,), 7.0), label="equal rewards (expected log 2)")
    rc, rr = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    _compare_pairwise(fn, rc, rr, label="8 float64 pairs")
    rc, rr = torch.randn(12, generator=g) * 4, torch.randn(12, generator=g) * 4
    _compare_pairwise(fn, rc, rr, label="12 random pairs, with gradients", grad=True)
    _compare_pairwise(fn, torch.tensor([-150.0, 2.0]), torch.tensor([150.0, 0.0]),
                      label="a margin of -300 beside one of 2, with gradients", grad=True)  # fmt: skip
    passed(fn, f"all {len(sizes) + 5} random and edge cases (margins up to 1000, float64, gradients) match the reference")


# --------------------------------------------------------------------------- GAE
def _next(x: torch.Tensor) -> torch.Tensor:
    """x shifted one step left along time, 0 at the end: x_{t+1}."""
    return torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)


def _recursion(delta: torch.Tensor, m: torch.Tensor, factor: float, forward: bool = False) -> torch.Tensor:
    """A_t = (delta_t + factor A_{t+1}) m_t, backwards (or A_{t-1} forwards), in float64."""
    A = torch.zeros_like(delta)
    carry = torch.zeros_like(delta[:, 0])
    steps = range(delta.shape[1]) if forward else reversed(range(delta.shape[1]))
    for t in steps:
        A[:, t] = (delta[:, t] + factor * carry) * m[:, t]
        carry = A[:, t]
    return A


def _explain_advantages(rewards, values, mask, gamma, lam, got) -> str:
    r, v, m = rewards.double(), values.double(), mask.double()
    delta = (r + gamma * _next(v * m) - v) * m
    ref = lambda **kw: ppo.gae(r, v, mask, **{"gamma": gamma, "lam": lam, **kw})[0]  # noqa: E731
    candidates = [
        (_recursion(delta, m, gamma * lam, forward=True), "the recursion runs forwards; A_t depends on the "
         "*future*: A_t = delta_t + gamma * lam * A_{t+1}, so loop over t from the last position to the first"),
        (_recursion((r + gamma * _next(v) - v) * m, m, gamma * lam), "the last token of a response bootstraps "
         "from the value at the next position, which is padding: V_{t+1} is 0 beyond a response's last token "
         "(the episode is over)"),
        (ref(lam=1.0) if lam != 1 else None, "lam is missing: A_t = delta_t + gamma * lam * A_{t+1}"),
        (_recursion(delta, m, gamma) if lam != 1 else None, "lam is missing from the recursion: "
         "A_t = delta_t + gamma * lam * A_{t+1}"),
        (_recursion(delta, m, lam) if gamma != 1 else None, "gamma is missing from the recursion: "
         "A_t = delta_t + gamma * lam * A_{t+1}"),
        (ref(gamma=1.0) if gamma != 1 else None, "gamma is missing: delta_t = r_t + gamma V_{t+1} - V_t and "
         "A_t = delta_t + gamma * lam * A_{t+1}"),
        (ref(lam=0.0) if lam != 0 else None, "these are the TD errors delta_t alone: add gamma * lam * A_{t+1}"),
        (_recursion((r + gamma * _next(v * m) + v) * m, m, gamma * lam), "delta_t should subtract V_t: "
         "delta_t = r_t + gamma V_{t+1} - V_t"),
        (ref(lam=1.0) + v * m, "these are the discounted sums of future rewards; the advantage subtracts V_t"),
    ]
    for value, why in candidates:
        if value is not None and _close(got, value):
            return f": {why}"
    return ""


def _first_nonzero(x: torch.Tensor, where: torch.Tensor) -> tuple[float, list[int]] | None:
    bad = ((x.detach().double().abs() > 1e-6) & where).nonzero()
    if len(bad) == 0:
        return None
    index = bad[0].tolist()
    return float(x[tuple(index)]), index


def _compare_gae(fn, rewards, values, mask, gamma=None, lam=None, label: str = "", message: str = "") -> None:
    kwargs = {k: v for k, v in (("gamma", gamma), ("lam", lam)) if v is not None}
    want_a, want_r = ppo.gae(rewards, values, mask, **kwargs)
    gamma, lam = kwargs.get("gamma", 1.0), kwargs.get("lam", 0.95)
    got = call(fn, rewards, values, mask, **kwargs)
    B, T = values.shape
    where = label or f"{_responses(mask)}, gamma={gamma:g}, lam={lam:g}"
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        fail(f"gae({where}) should return a pair (advantages, returns), got {type(got).__name__}: {short(got)}")
    adv = expect_tensor(fn, got[0], "the advantages, (B, T)")
    ret = expect_tensor(fn, got[1], "the returns, (B, T)")
    for what, x in (("advantages", adv), ("returns", ret)):
        if tuple(x.shape) != (B, T):
            fail(f"gae({where}): {what} should have shape {(B, T)} like rewards and values, got {tuple(x.shape)}.")
        if values.dtype == torch.float64 and x.dtype != torch.float64:
            fail(f"gae({where}): {what} should keep the dtype of values (torch.float64), got {x.dtype}: create new "
                 "tensors with torch.zeros_like(values) rather than torch.zeros(B, T).")  # fmt: skip
    pad = ~mask.bool()
    bad = _first_nonzero(adv, pad)
    if bad is not None:
        fail(f"gae({where}): advantages at padding positions should be 0, got {bad[0]:.3g} at {bad[1]}: padding "
             "is not part of any response; multiply by the mask (mask is True at the response tokens).")  # fmt: skip
    if not _close(adv, want_a):
        why = _explain_advantages(rewards, values, mask, gamma, lam, adv.detach())
        fail(f"gae({where}): {message}advantages are wrong, {first_difference(adv, want_a)}{why}.")
    bad = _first_nonzero(ret, pad)
    if bad is not None:
        hint = ""
        if _close(ret, (want_a + values).double()):
            hint = " (these are the values at padding: multiply advantages + values by the mask)"
        fail(f"gae({where}): returns at padding positions should be 0, got {bad[0]:.3g} at {bad[1]}{hint}.")
    if not _close(ret, want_r):
        hint = ""
        if _close(ret, want_a):
            hint = ": the returns are the advantages; they should be advantages + values, the value head's target"
        elif _close(ret, want_a.double() - values.double() * mask.double()):
            hint = ": the returns should be advantages + values, not minus"
        elif _close(ret, ppo.gae(rewards.double(), values.double(), mask, gamma=gamma, lam=1.0)[1]):
            hint = (": these are the discounted sums of future rewards; the returns here are advantages + values "
                    "(with lam < 1 they differ)")  # fmt: skip
        fail(f"gae({where}): returns are wrong, {first_difference(ret, want_r)}{hint}.")


def _right_padded(g, B: int, T: int, full_first: bool = True) -> torch.Tensor:
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    if full_first:
        lengths[0] = T
    if B > 1:
        lengths[-1] = min(int(lengths[-1]), max(1, T - 2))
    return torch.arange(T) < lengths[:, None]  # (B, T) bool, True then False


def _gae_case(g, B: int, T: int, dtype=torch.float32, pad_rewards: bool = False):
    mask = _right_padded(g, B, T)
    values = torch.randn(B, T, generator=g, dtype=dtype)  # the value head also outputs values at padding
    rewards = torch.randn(B, T, generator=g, dtype=dtype) * 0.1
    last = mask.long().sum(1) - 1
    rewards[torch.arange(B), last] += torch.randn(B, generator=g, dtype=dtype) * 2  # the score at the end
    if not pad_rewards:
        rewards = rewards * mask
    return rewards, values, mask


def check_gae(fn, hidden: bool = False) -> None:
    """gae(rewards, values, mask (B, T), gamma, lam) -> (advantages, returns), both (B, T), 0 at padding.

    Edges the exercise defines, all in the hidden test: T = 1; single-token responses padded; a response
    that fills the whole row (nothing after its last token: no wrap-around to position 0); values and
    rewards at padding ignored; lam = 0 and lam = 1, gamma < 1; the mask as bools and 0/1 integers;
    float64 values keep their dtype; 0 at padding.
    """
    forbid_reference(fn, ppo.gae)
    if not hidden:
        # The worked example: rewards [0, 0, 1], values [0.5, 0.6, 0.8], gamma = 1, lam = 0.5:
        # delta = [0.1, 0.2, 0.2], A = [0.25, 0.3, 0.2], returns = [0.75, 0.9, 1.0].
        r, v = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.8]])
        _compare_gae(fn, r, v, torch.ones(1, 3, dtype=torch.bool), 1.0, 0.5,
                     label="the worked example (expected advantages [0.25, 0.3, 0.2], returns [0.75, 0.9, 1.0])")
        # The same response padded to 5 (the value head writes 0.9 and 0.7 at the padding), beside a full one.
        r = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [0.1, -0.2, 0.0, 0.3, -1.0]])
        v = torch.tensor([[0.5, 0.6, 0.8, 0.9, 0.7], [0.2, 0.1, -0.3, 0.4, 0.5]])
        mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
        _compare_gae(fn, r, v, mask, 1.0, 0.5, label="the worked example padded to 5 tokens, beside a full response")
        _compare_gae(fn, r, v, mask, 1.0, 1.0, label="the padded batch with gamma=1, lam=1",
                     message="with gamma=1 and lam=1 the advantage should be the sum of future rewards minus V_t: ")
        _compare_gae(fn, r, v, mask, 0.9, 0.0, label="the padded batch with gamma=0.9, lam=0",
                     message="with lam=0 the advantage should be the TD error delta_t = r_t + gamma V_{t+1} - V_t: ")
        _compare_gae(fn, r, v, mask, 0.9, 0.8, label="the padded batch with gamma=0.9, lam=0.8")
        _compare_gae(fn, r, v, mask, label="the padded batch with the default gamma=1, lam=0.95")
        passed(fn, "the worked example, padding, the limits lam=1 and lam=0, and gamma < 1 are right")
        return
    g = seeded(121)
    cases = [(1, 6, 1.0, 0.95), (3, 8, 0.99, 0.95), (4, 16, 1.0, 0.9), (6, 12, 0.9, 0.5), (8, 24, 0.95, 1.0),
             (2, 5, 0.5, 0.3), (5, 20, 1.0, 0.0)]  # fmt: skip
    for B, T, gamma, lam in cases:
        _compare_gae(fn, *_gae_case(g, B, T), gamma, lam)
    r, v, mask = _gae_case(g, 3, 7)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[:, 0] = True
    _compare_gae(fn, r * mask, v, mask, 0.9, 0.95, label="single-token responses padded to 7")
    _compare_gae(fn, r * mask, v, mask.int(), 0.9, 0.95, label="single-token responses, the mask as 0/1 integers")
    r, v, mask = _gae_case(g, 4, 9, pad_rewards=True)
    _compare_gae(fn, r, v, mask, 0.99, 0.9, label="4 responses whose rewards at padding are not 0 (they must be ignored)")
    _compare_gae(fn, *_gae_case(g, 4, 10, dtype=torch.float64), 0.95, 0.9,
                 label="float64 rewards and values")  # fmt: skip
    r, v, _ = _gae_case(g, 2, 6)
    _compare_gae(fn, r, v, torch.ones(2, 6, dtype=torch.bool), 1.0, 0.95, label="a mask that is all True")
    with edge("T = 1"):
        r, v = torch.randn(3, 1, generator=g), torch.randn(3, 1, generator=g)
        _compare_gae(fn, r, v, torch.ones(3, 1, dtype=torch.bool), 0.9, 0.95, label="responses of one token, T = 1")
    with edge("one full-length response beside a padded one"):
        r, v, mask = _gae_case(g, 2, 6)
        mask[0] = True
        _compare_gae(fn, r, v, mask, 0.97, 0.8, label="row 0 fills all 6 positions, row 1 is padded")
    cases += [None, None]
    passed(fn, f"all {len(cases) + 5} random and edge cases (single tokens, 0/1 masks, float64, rewards at padding) "
               "match the reference")  # fmt: skip


# --------------------------------------------------------------------------- PPO clipped loss
def _explain_ppo(lp, old, adv, mask, clip, got: float) -> str:
    lp, old, adv, m = lp.double(), old.double(), adv.double(), mask.double()
    rho = torch.exp(lp - old)

    def mean(x):
        return (x * m).sum() / m.sum()

    surr = torch.minimum(rho * adv, rho.clamp(1 - clip, 1 + clip) * adv)
    diff = lp - old
    return _explain(got, [
        (mean(surr), "the sign is flipped: PPO *maximises* the surrogate min(rho A, clip(rho) A), so the loss "
                     "is its negative"),
        (-mean(torch.maximum(rho * adv, rho.clamp(1 - clip, 1 + clip) * adv)), "this takes the max of the two "
         "terms; PPO takes the min, the pessimistic one, so that moving rho beyond the clip range earns nothing"),
        (-mean(torch.minimum(rho * adv, rho * adv.clamp(1 - clip, 1 + clip))), "the advantage is clipped; clip the "
         "ratio rho to [1 - clip, 1 + clip] and multiply it by the advantage"),
        (-mean(rho * adv.clamp(1 - clip, 1 + clip)), "the advantage is clipped; clip the ratio rho"),
        (-mean(torch.minimum(diff * adv, diff.clamp(1 - clip, 1 + clip) * adv)), "the ratio is not exponentiated: "
         "logprobs - old_logprobs is log rho; rho = exp(logprobs - old_logprobs)"),
        (-mean(torch.minimum(adv / rho, (1 / rho).clamp(1 - clip, 1 + clip) * adv)), "the ratio is inverted: "
         "rho = pi / pi_old = exp(logprobs - old_logprobs)"),
        (-(surr * m).sum() / m.numel(), "the masked sum is divided by the number of all positions; divide by the "
         "number of response tokens, mask.sum()"),
        (-surr.mean(), "the mean runs over the padding too: average only where the mask is True"),
        (-(surr * m).sum(), "this is the sum over the response tokens; the loss is their mean"),
        (-((surr * m).sum(1) / m.sum(1)).mean(), "each response is averaged first and then the responses: "
         "the course averages over all response tokens of the batch at once"),
        (-mean(rho * adv), "there is no clipping: this is -rho A; take the min with clip(rho, 1 - clip, 1 + clip) A"),
        (-mean(rho.clamp(1 - clip, 1 + clip) * adv), "this is only the clipped term; take the min of rho A and "
         "clip(rho) A"),
    ])  # fmt: skip


def _compare_ppo(fn, lp, old, adv, mask, clip=None, label: str = "") -> None:
    name = "ppo_clip_loss"
    kwargs = {} if clip is None else {"clip": clip}
    clip_value = 0.2 if clip is None else clip
    lp_ref = _leaf(lp)
    want = ppo.ppo_clip_loss(lp_ref, old, adv, mask, **kwargs)
    want.backward()
    want = want.detach()
    lp_in = _leaf(lp)
    got_t = call(fn, lp_in, old.clone(), adv.clone(), mask.clone(), copy_args=False, **kwargs)
    where = label or f"{_responses(mask)}, clip={clip_value:g}"
    value = _scalar(name, fn, got_t, where, "average -min(rho A, clip(rho) A) over the response tokens.")
    if lp.dtype == torch.float64 and got_t.dtype != torch.float64:
        fail(f"{name}({where}) should keep the dtype of the inputs (torch.float64), got {got_t.dtype}.")
    if not torch.isfinite(torch.tensor(value)):
        fail(f"{name}({where}) is {value}: is a mean divided by a count of 0, or the ratio exp() of a huge number?")
    if not _same(value, want):
        fail(f"{name}({where}) should be {float(want):.6g}, got {value:.6g}"
             f"{_explain_ppo(lp, old, adv, mask, clip_value, value)}.")  # fmt: skip
    _check_grads(name, where, got_t, [("logprobs", lp_in, lp_ref.grad, " (a token whose ratio is clipped in the "
                 "direction its advantage pushes gets no gradient; padding gets none)")])  # fmt: skip


def _ppo_case(g, B: int, T: int, spread: float = 0.3, dtype=torch.float32):
    mask = _right_padded(g, B, T)
    old = -torch.rand(B, T, generator=g, dtype=dtype) * 5
    lp = old + torch.randn(B, T, generator=g, dtype=dtype) * spread  # ratios on both sides of the clip range
    adv = torch.randn(B, T, generator=g, dtype=dtype)
    return lp, old, adv, mask


def check_ppo_clip_loss(fn, hidden: bool = False) -> None:
    """ppo_clip_loss(logprobs, old_logprobs, advantages, mask (B, T), clip) -> -mean min(rho A, clip(rho) A).

    Edges the exercise defines, all in the hidden test: the mean over the response tokens of the
    whole batch (padding excluded, uneven lengths); single-token responses; a mask that is all True;
    the mask as bools and 0/1 integers; a bad token made more likely (the unclipped term and its
    gradient stay); large advantages; float64; gradients with respect to logprobs.
    """
    forbid_reference(fn, ppo.ppo_clip_loss)
    if not hidden:
        # The worked example: ratios 1.1, 1.5, 0.5, 1.5 with advantages 2, 1, -1, -0.5 (a fifth, padding):
        # min(rho A, clip(rho) A) = 2.2, 1.2, -0.8, -0.75; mean 0.4625, so the loss is -0.4625.
        old = torch.full((1, 5), -1.0)
        lp = old + torch.log(torch.tensor([[1.1, 1.5, 0.5, 1.5, 3.0]]))
        adv = torch.tensor([[2.0, 1.0, -1.0, -0.5, 5.0]])
        mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
        _compare_ppo(fn, lp, old, adv, mask, 0.2, label="the worked example (expected -0.4625)")
        _compare_ppo(fn, lp, old, adv, mask, label="the worked example with the default clip=0.2")
        _compare_ppo(fn, old.clone(), old, adv, mask, 0.2,
                     label="logprobs equal to old_logprobs, rho = 1 (expected -mean A = -0.375)")  # fmt: skip
        _compare_ppo(fn, *_ppo_case(seeded(122), 2, 6), 0.1)
        passed(fn, "the worked example, rho = 1, a padded batch and the gradients are right")
        return
    g = seeded(123)
    cases = [(1, 4, 0.2, 0.3), (3, 8, 0.2, 0.5), (4, 16, 0.1, 0.2), (6, 12, 0.3, 1.0), (8, 32, 0.2, 0.05)]
    for B, T, clip, spread in cases:
        _compare_ppo(fn, *_ppo_case(g, B, T, spread), clip)
    lp, old, adv, _ = _ppo_case(g, 3, 5, 0.5)
    one = torch.zeros(3, 5, dtype=torch.bool)
    one[:, 0] = True
    _compare_ppo(fn, lp, old, adv, one, 0.2, label="single-token responses padded to 5")
    _compare_ppo(fn, lp, old, adv, one.int(), 0.2, label="single-token responses, the mask as 0/1 integers")
    _compare_ppo(fn, lp, old, adv, torch.ones(3, 5, dtype=torch.bool), 0.2, label="a mask that is all True")
    lp, old, adv, mask = _ppo_case(g, 4, 10, 0.4, dtype=torch.float64)
    _compare_ppo(fn, lp, old, adv, mask, 0.2, label="float64 inputs")
    lp, old, adv, mask = _ppo_case(g, 2, 6, 0.5)
    _compare_ppo(fn, lp, old, adv * 100, mask, 0.2, label="advantages of size ~100")
    passed(fn, f"all {len(cases) + 5} random and edge cases (single tokens, 0/1 masks, float64) and their "
               "gradients match the reference")  # fmt: skip


# --------------------------------------------------------------------------- DPO
def _explain_dpo(pc, pr, rc, rr, beta, got: float) -> str:
    pc, pr, rc, rr = pc.double(), pr.double(), rc.double(), rr.double()
    delta = (pc - rc) - (pr - rr)  # the difference of log-ratios
    return _explain(got, [
        (-F.logsigmoid(-beta * delta).mean(), "chosen and rejected are swapped (or the sign is flipped): the loss "
         "is -log sigmoid(beta [(pi_c - ref_c) - (pi_r - ref_r)]), lowest when the chosen response gains"),
        (-beta * F.logsigmoid(delta).mean(), "beta multiplies the loss; it belongs inside: "
         "-log sigmoid(beta * (difference of log-ratios))"),
        (-F.logsigmoid(delta).mean(), "beta is missing: the margin is beta * ((pi_c - ref_c) - (pi_r - ref_r))"),
        (-F.logsigmoid(delta / beta).mean(), "the difference is divided by beta; multiply it"),
        (-F.logsigmoid(beta * (pc - pr)).mean(), "the reference is missing: the implicit reward is "
         "beta * (log pi - log pi_ref), so subtract ref_chosen and ref_rejected"),
        (-F.logsigmoid(beta * ((pc + rc) - (pr + rr))).mean(), "the reference log-probabilities are added; "
         "subtract them: beta * ((pi_c - ref_c) - (pi_r - ref_r))"),
        (-F.logsigmoid(beta * ((pc - rc) + (pr - rr))).mean(), "the two log-ratios are added; the margin is "
         "their difference (chosen minus rejected)"),
        (-F.logsigmoid(beta * ((rc - pc) - (rr - pr))).mean(), "the log-ratios are reference minus policy; they "
         "are log pi - log pi_ref"),
        (-F.logsigmoid(beta * delta).sum(), "this is the sum over the pairs; the loss is their mean"),
        (F.logsigmoid(beta * delta).mean(), "the minus is missing: the loss is -log sigmoid(margin)"),
        (-torch.sigmoid(beta * delta).mean(), "the log is missing: the loss is -log sigmoid(margin)"),
    ])  # fmt: skip


def _compare_dpo(fn, pc, pr, rc, rr, beta=None, label: str = "") -> None:
    name = "dpo_loss"
    kwargs = {} if beta is None else {"beta": beta}
    beta_value = 0.1 if beta is None else beta
    pc_ref, pr_ref = _leaf(pc), _leaf(pr)
    want = dpo.dpo_loss(pc_ref, pr_ref, rc, rr, **kwargs)
    want.backward()
    want = want.detach()
    pc_in, pr_in = _leaf(pc), _leaf(pr)
    got_t = call(fn, pc_in, pr_in, rc.clone(), rr.clone(), copy_args=False, **kwargs)
    where = label or f"{_n(pc.numel(), 'pair')}, beta={beta_value:g}"
    value = _scalar(name, fn, got_t, where, "the loss is the *mean* over the pairs.")
    if not torch.isfinite(torch.tensor(value)):
        margin = beta_value * ((pc.double() - rc.double()) - (pr.double() - rr.double()))
        fail(f"{name}({where}) is {value} for a margin of {float(margin.min()):g}: use F.logsigmoid; "
             "log(sigmoid(x)) gives log(0) = -inf once sigmoid(x) rounds to 0.")  # fmt: skip
    if not _same(value, want):
        fail(f"{name}({where}) should be {float(want):.6g}, got {value:.6g}{_explain_dpo(pc, pr, rc, rr, beta_value, value)}.")
    _check_grads(name, where, got_t, [("policy_chosen", pc_in, pc_ref.grad, ""),
                                      ("policy_rejected", pr_in, pr_ref.grad, "")])  # fmt: skip


def _dpo_case(g, B: int, spread: float = 3.0, dtype=torch.float32):
    ref = -20 - torch.rand(2, B, generator=g, dtype=dtype) * 60  # sequence log-probs of 20 to 80 nats
    policy = ref + torch.randn(2, B, generator=g, dtype=dtype) * spread
    return policy[0], policy[1], ref[0], ref[1]


def check_dpo_loss(fn, hidden: bool = False) -> None:
    """dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected (B,), beta) -> mean DPO loss.

    Edges the exercise defines, all in the hidden test: one pair; margin 0 (log 2) when the policy
    equals the reference or both move alike; margins of hundreds (log-sigmoid); beta inside the
    log-sigmoid, small and large; float64; gradients reaching the policy's log-probabilities.
    """
    forbid_reference(fn, dpo.dpo_loss, reward_model.pairwise_loss)
    if not hidden:
        # The worked example, beta = 0.1: implicit rewards 0.2, 0 (chosen) and -0.2, 0.1 (rejected), margins
        # 0.4 and -0.1; -log sigmoid of them averages to 0.6287. With the policy equal to the reference: log 2.
        pc, pr = torch.tensor([-10.0, -12.0]), torch.tensor([-14.0, -11.0])
        rc, rr = torch.tensor([-12.0, -12.0]), torch.tensor([-12.0, -12.0])
        _compare_dpo(fn, pc, pr, rc, rr, 0.1, label="the worked example (expected 0.6287)")
        _compare_dpo(fn, pc, pr, pc.clone(), pr.clone(), 0.1,
                     label="a policy equal to the reference (expected log 2 = 0.6931)")  # fmt: skip
        _compare_dpo(fn, pc, pr, rc, rr, 0.5, label="the worked example with beta=0.5")
        _compare_dpo(fn, pc, pr, rc, rr, label="the worked example with the default beta=0.1")
        passed(fn, "the worked example, a policy equal to its reference, beta = 0.5 and the gradients are right")
        return
    g = seeded(124)
    cases = [(1, 0.1, 3.0), (4, 0.1, 5.0), (16, 0.5, 2.0), (64, 0.01, 20.0), (8, 2.0, 1.0)]
    for B, beta, spread in cases:
        _compare_dpo(fn, *_dpo_case(g, B, spread), beta)
    pc, pr, rc, rr = _dpo_case(g, 3)
    _compare_dpo(fn, pc - 1500, pr, rc, rr, 0.2, label="a chosen response 1500 nats less likely (a margin of about -300)")
    _compare_dpo(fn, *_dpo_case(g, 6, dtype=torch.float64), 0.1, label="6 float64 pairs")
    pc, pr, rc, rr = _dpo_case(g, 5)
    _compare_dpo(fn, rc + 4, rr + 4, rc, rr, 0.3, label="both responses 4 nats more likely than under the reference "
                 "(margin 0, expected log 2)")  # fmt: skip
    passed(fn, f"all {len(cases) + 3} random and edge cases (margins of hundreds, float64) and their gradients "
               "match the reference")  # fmt: skip


__all__ = ["check_dpo_loss", "check_gae", "check_pairwise_loss", "check_ppo_clip_loss"]
