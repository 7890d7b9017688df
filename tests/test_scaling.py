"""Tests for llm_course.scaling: FLOP counts, power-law fits, the Kaplan and Chinchilla laws, the sweep."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llm_course.scaling import (
    CHINCHILLA,
    CHINCHILLA_UNROUNDED,
    EPOCH_REFIT,
    KAPLAN,
    PF_DAY,
    ChinchillaLaw,
    chinchilla_loss,
    chinchilla_optimal,
    compute_frontier,
    evaluate_loss,
    fit_chinchilla_law,
    fit_power_law,
    kaplan_flops_per_token,
    kaplan_loss_c,
    kaplan_loss_d,
    kaplan_loss_n,
    kaplan_loss_nd,
    non_embedding_parameters,
    run_sweep,
    train_run,
    sweep_config,
    tokens_per_parameter_rule,
    training_flops,
)
from llm_course.transformer import Transformer, TransformerConfig, count_parameters, gpt2_small, llama2_7b


def gpt3_175b() -> TransformerConfig:
    """GPT-3 175B (Brown et al., 2020, Table 2.1): 96 layers, 12288 wide, 96 heads, context 2048."""
    return TransformerConfig(vocab_size=50257, context_length=2048, d_model=12288, n_layers=96, n_heads=96)


# --------------------------------------------------------------------------- FLOPs
def test_six_n_d_worked_examples():
    assert training_flops(2, 3) == 36
    assert training_flops(175e9, 300e9) == pytest.approx(3.15e23)  # GPT-3; the paper reports 3.14e23
    assert training_flops(70e9, 1.4e12) == pytest.approx(5.88e23)  # Chinchilla
    assert training_flops(175e9, 300e9) / PF_DAY == pytest.approx(3645.8, abs=0.1)  # GPT-3: ~3640 PF-days


def test_non_embedding_parameters_gpt2_small():
    cfg = gpt2_small()
    n = non_embedding_parameters(cfg)
    # 12 L d^2 weights + 13 L d biases and gains per layer + the final LayerNorm (2 d).
    L, d = cfg.n_layers, cfg.d_model
    assert n == 12 * L * d * d + 13 * L * d + 2 * d == 85_056_000
    assert n == count_parameters(cfg) - cfg.vocab_size * d - cfg.context_length * d


def test_non_embedding_parameters_excludes_untied_head_and_counts_module():
    cfg = TransformerConfig(vocab_size=50, context_length=8, d_model=16, n_layers=2, n_heads=2, tie_embeddings=False)
    model = Transformer(cfg)
    embedding = {"token_embedding.weight", "position_embedding.weight", "lm_head.weight"}
    counted = sum(p.numel() for name, p in model.named_parameters() if name not in embedding)
    assert non_embedding_parameters(cfg) == counted


def test_flops_per_token_worked_example():
    cfg = TransformerConfig(vocab_size=100, context_length=10, d_model=8, n_layers=1, n_heads=2, bias=False)
    # attention 4 * 8 * 8 = 256, ffn 2 * 8 * 32 = 512, norms 3 * 8 = 24 -> N = 792
    assert non_embedding_parameters(cfg) == 792
    assert kaplan_flops_per_token(cfg) == 3 * (2 * 792 + 2 * 1 * 10 * 8) == 5232
    assert kaplan_flops_per_token(cfg, include_head=True) == 5232 + 3 * 2 * 8 * 100


@pytest.mark.parametrize(("config", "low", "high"), [(gpt2_small, 1.10, 1.12), (gpt3_175b, 1.013, 1.015)])
def test_six_n_underestimates_by_the_attention_term(config, low, high):
    cfg = config()
    n = non_embedding_parameters(cfg)
    ratio = kaplan_flops_per_token(cfg) / (6 * n)
    assert ratio == pytest.approx(1 + cfg.n_layers * cfg.context_length * cfg.d_model / n, rel=1e-12)
    assert low < ratio < high  # ~ 1 + n_ctx / (12 d_model): 11% for GPT-2 small, 1.4% for GPT-3


def test_llama_flops_counts_swiglu_and_grouped_query():
    cfg = llama2_7b()
    n = non_embedding_parameters(cfg)
    assert 6.4e9 < n < 6.5e9  # 6.74B minus two 32000 x 4096 tables
    assert kaplan_flops_per_token(cfg) == 3 * (2 * n + 2 * cfg.n_layers * cfg.context_length * cfg.d_model)


@pytest.mark.parametrize("bias", [True, False])
def test_flops_per_token_against_torch_flop_counter(bias):
    """Oracle: PyTorch's FlopCounterMode counts matrix products only, and the full T x T score matrix."""
    cfg = TransformerConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4, bias=bias)
    model = Transformer(cfg)
    idx = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        logits = model(idx)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
    counted = counter.get_total_flops() / idx.numel()
    vectors = sum(p.numel() for name, p in model.named_parameters() if p.dim() < 2)  # biases, norm gains
    L, T, C = cfg.n_layers, cfg.context_length, cfg.d_model
    # Ours: 6 per non-embedding parameter (vectors too) + 6 L T C (causal average); the counter:
    # 6 per matrix weight + 12 L T C (the masked matrix is computed in full, twice: q k^T and a v).
    assert counted == kaplan_flops_per_token(cfg, include_head=True) - 6 * vectors - 6 * L * T * C + 12 * L * T * C


# --------------------------------------------------------------------------- power-law fits
def test_fit_power_law_exact():
    x = [1.0, 4.0, 16.0, 64.0]
    a, b = fit_power_law(x, [3 * v**-0.5 for v in x])
    assert a == pytest.approx(3.0, rel=1e-12) and b == pytest.approx(-0.5, rel=1e-12)
    x = np.array([1e6, 1e9, 1e12])  # NumPy and torch inputs, values far beyond float32's comfort
    a, b = fit_power_law(x, torch.tensor(2.0 * x**1.5, dtype=torch.float64))
    assert a == pytest.approx(2.0, rel=1e-9) and b == pytest.approx(1.5, rel=1e-9)


def test_fit_power_law_matches_polyfit_and_recovers_kaplan_exponent():
    rng = np.random.default_rng(0)
    n = np.geomspace(1e5, 1e9, 12)
    loss = kaplan_loss_n(n) * np.exp(rng.normal(0, 0.01, n.size))
    a, b = fit_power_law(n, loss)
    slope, intercept = np.polyfit(np.log(n), np.log(loss), 1)
    assert b == pytest.approx(slope, rel=1e-10) and a == pytest.approx(math.exp(intercept), rel=1e-10)
    assert b == pytest.approx(-KAPLAN.alpha_n, abs=0.01)
    assert a ** (-1 / b) == pytest.approx(KAPLAN.n_c, rel=3.0)  # N_c: only its order of magnitude survives noise


@pytest.mark.parametrize(
    ("x", "y"), [([1, 2], [1, 0]), ([1, -2], [1, 1]), ([3, 3, 3], [1, 2, 3]), ([1, 2, 3], [1, 2]), ([1], [1])]
)
def test_fit_power_law_rejects_bad_input(x, y):
    with pytest.raises(ValueError):
        fit_power_law(x, y)


def test_fit_chinchilla_law_recovers_constants():
    truth = ChinchillaLaw(E=1.8, A=300.0, B=900.0, alpha=0.4, beta=0.3)
    n = np.repeat(np.geomspace(1e4, 1e6, 5), 5)
    d = np.tile(np.geomspace(1e4, 3e5, 5), 5)
    fit = fit_chinchilla_law(n, d, chinchilla_loss(n, d, truth))
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, name) == pytest.approx(getattr(truth, name), rel=1e-3), name
    noisy = chinchilla_loss(n, d, truth) * np.exp(np.random.default_rng(1).normal(0, 0.002, n.size))
    fit = fit_chinchilla_law(n, d, noisy)
    assert fit.alpha == pytest.approx(0.4, abs=0.05) and fit.beta == pytest.approx(0.3, abs=0.03)
    assert np.abs(chinchilla_loss(n, d, fit) / noisy - 1).max() < 0.01


def test_compute_frontier():
    compute = [1, 2, 2, 4, 8, 8]
    loss = [5.0, 4.0, 4.5, 4.2, 3.0, 3.5]
    assert compute_frontier(compute, loss) == [0, 1, 4]


# --------------------------------------------------------------------------- Kaplan
def test_kaplan_laws_published_constants():
    assert (KAPLAN.alpha_n, KAPLAN.alpha_d, KAPLAN.alpha_c) == (0.076, 0.095, 0.050)
    assert kaplan_loss_n(KAPLAN.n_c) == 1.0 and kaplan_loss_d(KAPLAN.d_c) == 1.0
    assert kaplan_loss_c(KAPLAN.c_c * PF_DAY) == pytest.approx(1.0)
    # Doubling the model multiplies the loss by 2^-0.076 = 0.949: 5% lower, not 10-15%.
    assert kaplan_loss_n(2e9) / kaplan_loss_n(1e9) == pytest.approx(2**-0.076) == pytest.approx(0.9487, abs=1e-4)


def test_kaplan_nd_tends_to_single_laws():
    assert kaplan_loss_nd(1e9, 1e30) == pytest.approx(kaplan_loss_n(1e9), rel=1e-6)
    assert kaplan_loss_nd(1e30, 1e10) == pytest.approx(kaplan_loss_d(1e10), rel=1e-6)
    assert kaplan_loss_nd(1e9, 1e10) > max(kaplan_loss_n(1e9), kaplan_loss_d(1e10))


# --------------------------------------------------------------------------- Chinchilla
BUDGETS = [1e18, 3.15e23, 5.76e23, 1e25]


@pytest.mark.parametrize("compute", BUDGETS)
def test_chinchilla_optimal_spends_the_budget(compute):
    n, d = chinchilla_optimal(compute)
    assert training_flops(n, d) == pytest.approx(compute, rel=1e-12)


@pytest.mark.parametrize("compute", BUDGETS)
@pytest.mark.parametrize("law", [CHINCHILLA, ChinchillaLaw(E=2.0, A=50.0, B=2000.0, alpha=0.5, beta=0.25)])
def test_chinchilla_optimal_is_the_minimum_along_the_budget(compute, law):
    n, d = chinchilla_optimal(compute, law)

    def loss_at(log_n):  # the loss of the model of size e^log_n that spends the whole budget
        size = math.exp(log_n)
        return chinchilla_loss(size, compute / (6 * size), law)

    h = 1e-3
    derivative = (loss_at(math.log(n) + h) - loss_at(math.log(n) - h)) / (2 * h)
    curvature = (loss_at(math.log(n) + h) - 2 * loss_at(math.log(n)) + loss_at(math.log(n) - h)) / h**2
    assert abs(derivative) < 1e-5 * curvature
    assert loss_at(math.log(n)) < min(loss_at(math.log(n) + 0.1), loss_at(math.log(n) - 0.1))
    # At the optimum the two reducible terms are in the ratio beta : alpha.
    assert law.alpha * law.A / n**law.alpha == pytest.approx(law.beta * law.B / d**law.beta, rel=1e-10)


def test_chinchilla_optimal_scales_as_published_exponents():
    compute = np.geomspace(1e18, 1e26, 9)
    n, d = chinchilla_optimal(compute)
    assert fit_power_law(compute, n)[1] == pytest.approx(0.28 / 0.62, rel=1e-10)
    assert fit_power_law(compute, d)[1] == pytest.approx(0.34 / 0.62, rel=1e-10)


def test_rounding_trap_at_the_gopher_budget():
    n, d = chinchilla_optimal(5.76e23)
    assert n == pytest.approx(3.219e10, rel=1e-3) and d == pytest.approx(2.982e12, rel=1e-3)
    assert d / n == pytest.approx(92.6, abs=0.1)  # not ~20
    n20, d20 = tokens_per_parameter_rule(5.76e23)
    assert n20 == pytest.approx(69.28e9, rel=1e-3) and d20 == 20 * n20
    assert training_flops(n20, d20) == pytest.approx(5.76e23)
    # A rounding error of 0.005 in alpha moves the ratio by ~40%: the printed digits cannot pin it down.
    n2, d2 = chinchilla_optimal(5.76e23, dataclasses.replace(CHINCHILLA, alpha=0.335))
    assert d2 / n2 == pytest.approx(65.6, abs=0.1)


def test_unrounded_exponents_and_epoch_refit_at_the_gopher_budget():
    # Besiroglu et al. (2024): the TeX source's exponents, and their refit of Hoffmann et al.'s data.
    assert (CHINCHILLA_UNROUNDED.alpha, CHINCHILLA_UNROUNDED.beta) == (0.3392, 0.2849)
    assert dataclasses.replace(CHINCHILLA_UNROUNDED, alpha=0.34, beta=0.28) == CHINCHILLA
    n_u, d_u = chinchilla_optimal(5.76e23, CHINCHILLA_UNROUNDED)
    n_e, d_e = chinchilla_optimal(5.76e23, EPOCH_REFIT)
    # Values from the closed form, worked out independently of chinchilla_optimal.
    assert d_u / n_u == pytest.approx(59.08, abs=0.01)
    assert d_e / n_e == pytest.approx(18.39, abs=0.01)  # "about 20 tokens per parameter"
    assert n_e == pytest.approx(72.25e9, rel=1e-3)
    # Rounding explains about a quarter of the gap (log scale) between the printed law and the refit.
    printed = math.log(92.65)
    share = (printed - math.log(d_u / n_u)) / (printed - math.log(d_e / n_e))
    assert 0.25 < share < 0.30


# --------------------------------------------------------------------------- the sweep
def test_train_run_is_a_trainer_run_whose_schedule_spans_the_run(monkeypatch):
    from llm_course.optim import warmup_cosine
    from llm_course.trainer import Trainer

    trainers = []
    train = Trainer.train

    def watched(self, *args, **kwargs):
        trainers.append(self)
        return train(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", watched)
    pattern = torch.arange(50).repeat(60)
    args = (sweep_config(16, 1, 50, 16), pattern[:2500], pattern[2500:], 1000, 4, 0.01)
    run = train_run(*args, seed=3)
    (trainer,) = trainers
    steps = math.ceil(1000 / (4 * 16))  # 16 steps of 64 tokens
    assert run["n_tokens"] == steps * 64 and trainer.step == steps
    # warmup over the first 10% of the steps, then a cosine to 10% of the peak at the run's last step
    assert trainer.history["lr"] == pytest.approx([warmup_cosine(s, 1, steps, 0.01, 0.001) for s in range(steps)])
    assert trainer.history["action"] == ["update"] * steps and run["train_loss"] == trainer.history["loss"][-1]
    assert train_run(*args, seed=3)["val_loss"] == run["val_loss"] != train_run(*args, seed=4)["val_loss"]


def test_evaluate_loss_is_mean_cross_entropy():
    cfg = sweep_config(16, 1, 50, 8)
    model = Transformer(cfg, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 50, (41,), generator=torch.Generator().manual_seed(1))
    logits = model(ids[:40].view(5, 8))
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[1:41]).item()
    assert evaluate_loss(model, ids, 8, batch_size=2) == pytest.approx(expected, rel=1e-5)


def test_run_sweep_tiny_and_cached(tmp_path, monkeypatch):
    pattern = torch.arange(50).repeat(60)  # a learnable sequence: 0, 1, ..., 49, 0, 1, ...
    train_ids, val_ids = pattern[:2500], pattern[2500:]
    settings = dict(plan=[(16, 1, 512), (16, 1, 4096)], vocab_size=50, context_length=16, batch_size=4)
    runs = run_sweep(train_ids, val_ids, **settings, cache_dir=tmp_path, verbose=False)
    assert [r["n_tokens"] for r in runs] == [512, 4096]
    assert runs[1]["val_loss"] < runs[0]["val_loss"] < math.log(50) + 0.5
    assert runs[0]["n_params"] == non_embedding_parameters(sweep_config(16, 1, 50, 16))
    assert runs[0]["flops"] == 6 * runs[0]["n_params"] * 512
    files = list(tmp_path.glob("sweep-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["runs"] == runs

    def no_training(*args, **kwargs):
        raise AssertionError("the cached sweep was trained again")

    monkeypatch.setattr("llm_course.scaling.train_run", no_training)
    assert run_sweep(train_ids, val_ids, **settings, cache_dir=tmp_path, verbose=False) == runs
    with pytest.raises(AssertionError, match="trained again"):  # other settings: another cache entry
        run_sweep(train_ids, val_ids, **{**settings, "batch_size": 2}, cache_dir=tmp_path, verbose=False)
