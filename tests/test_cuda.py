"""Device-vs-CPU comparisons of the inference and fine-tuning paths: generation with the KV cache,
samplers with a generator on the device, LoRA and QLoRA, int8/int4 layers, batching, speculative
decoding.

Every test runs on each device of `DEVICES`: "cpu" always (the comparison code itself runs, and a
CPU-vs-CPU comparison must be exact), "cuda" marked `cuda` (skipped without a GPU, see conftest.py).
The tolerances fit the arithmetic: float32 on a GPU differs from the CPU by summation order only
(about 1e-6 relative; TF32 is switched off here), bf16 keeps 8 bits (about 1e-2 relative).
Greedy decoding is compared token for token on a model whose logits are far apart (the top-2 gap
is checked on the CPU), so rounding cannot flip an argmax.
"""

import contextlib
import copy

import pytest
import torch

from llm_course.batching import continuous_batching, mixed_workload, static_batching
from llm_course.generation import generate
from llm_course.lora import LoRALinear, apply_lora
from llm_course.losses import cross_entropy
from llm_course.quantization import QuantizedLinear, quantize_model
from llm_course.sampling import top_k_filter, top_p_filter
from llm_course.speculative import probabilities, speculative_generate
from llm_course.transformer import Transformer, TransformerConfig

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
V = 64
FP32 = dict(atol=1e-5, rtol=1e-5)  # float32 on another device: summation order only


@contextlib.contextmanager
def exact_float32():
    """float32 matmuls without TF32 (a Trainer on CUDA may have switched it on for the process)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def sharp_model(seed: int = 0, **changes) -> Transformer:
    """A small Llama-style model in eval mode whose logits are spread out (a scaled head): greedy
    decoding does not sit on near ties."""
    base = dict(vocab_size=V, context_length=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                norm="rmsnorm", activation="swiglu", position="rope", tie_embeddings=False, bias=False)  # fmt: skip
    model = Transformer(TransformerConfig(**{**base, **changes}), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model.eval()


def prompts(batch: int = 2, length: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def min_top2_gap(model: Transformer, tokens: torch.Tensor) -> float:
    """The smallest gap between the two largest logits over every position of `tokens` (CPU model)."""
    with torch.no_grad():
        top = model(tokens).topk(2, dim=-1).values
    return float((top[..., 0] - top[..., 1]).min())


@pytest.fixture(autouse=True)
def _exact():
    with exact_float32():
        yield


# ----------------------------------------------------------------------------- generation
@pytest.mark.parametrize("device", DEVICES)
def test_cached_greedy_on_device_equals_cpu_greedy(device):
    model = sharp_model()
    idx = prompts()
    want = generate(model, idx, 30, temperature=0)  # CPU, no cache: the reference
    assert min_top2_gap(model, want[:, :-1]) > 1e-2, "the reference sits on a near tie: rounding could flip it"
    on_device = copy.deepcopy(model).to(device)
    for use_cache in (True, False):
        got = generate(on_device, idx.to(device), 30, temperature=0, use_cache=use_cache)
        assert got.device.type == device
        assert torch.equal(got.cpu(), want), f"use_cache={use_cache}"
    # bf16 weights: the logits along the reference stay within bf16's precision (8 bits, ~1e-2 relative
    # to their scale), and the greedy choices at those positions mostly agree (one flip shifts the
    # rest of a free-running sequence, so the check is teacher-forced).
    bf16 = copy.deepcopy(model).to(device, torch.bfloat16)
    with torch.no_grad():
        ref_logits = model(want[:, :-1])
        got_logits = bf16(want[:, :-1].to(device)).float().cpu()
    scale = ref_logits.abs().max().item()
    torch.testing.assert_close(got_logits, ref_logits, atol=5e-2 * scale, rtol=0)
    assert (got_logits.argmax(-1) == ref_logits.argmax(-1)).float().mean() >= 0.9


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_with_a_device_generator_is_reproducible(device):
    model = copy.deepcopy(sharp_model()).to(device)
    idx = prompts().to(device)
    settings = dict(temperature=1.0, top_k=20, top_p=0.9, use_cache=True)
    runs = [generate(model, idx, 20, generator=torch.Generator(device=device).manual_seed(s), **settings)
            for s in (7, 7, 8)]  # fmt: skip
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    # The distribution sampled from equals the CPU's: temperature -> top-k -> top-p in float32.
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(0)) * 3
    want = probabilities(logits, 0.8, 20, 0.9)
    torch.testing.assert_close(probabilities(logits.to(device), 0.8, 20, 0.9).cpu(), want, **FP32)
    assert torch.equal(top_k_filter(logits.to(device), 5).isinf().cpu(), top_k_filter(logits, 5).isinf())
    assert torch.equal(top_p_filter(logits.to(device), 0.5).isinf().cpu(), top_p_filter(logits, 0.5).isinf())


# ----------------------------------------------------------------------------- LoRA, QLoRA, int8 / int4
@pytest.mark.parametrize("device", DEVICES)
def test_lora_and_qlora_on_device_match_cpu(device):
    idx = prompts(2, 12)
    for quantized in (False, True):
        base = sharp_model()
        if quantized:
            base = quantize_model(base, 4, 16)
        # The same CPU generator for both: the adapters are drawn on the CPU and moved (identical A).
        cpu = apply_lora(copy.deepcopy(base), ("w_q", "w_v"), r=4, alpha=8, generator=torch.Generator().manual_seed(0))
        dev = apply_lora(copy.deepcopy(base).to(device), ("w_q", "w_v"), r=4, alpha=8,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
        for a, b in zip(cpu.modules(), dev.modules()):
            if isinstance(a, LoRALinear):
                assert b.lora_A.device.type == device and torch.equal(a.lora_A, b.lora_A.cpu())
                with torch.no_grad():  # a trained-looking adapter, the same on both
                    a.lora_B.normal_(std=0.1, generator=torch.Generator().manual_seed(1))
                    b.lora_B.copy_(a.lora_B)
        losses, grads = [], []
        for model, d in ((cpu, "cpu"), (dev, device)):
            model.train()
            loss = cross_entropy(model(idx[:, :-1].to(d)), idx[:, 1:].to(d))
            loss.backward()
            losses.append(loss.item())
            grads.append(torch.cat([p.grad.flatten().cpu() for p in model.parameters() if p.requires_grad]))
        assert losses[1] == pytest.approx(losses[0], rel=1e-5), f"quantized={quantized}"
        torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
        # bf16 autocast (QLoRA's usual setting): within bf16's precision of the float32 loss.
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            logits = dev(idx[:, :-1].to(device))
        assert cross_entropy(logits, idx[:, 1:].to(device)).item() == pytest.approx(losses[0], rel=3e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits, group", [(8, None), (4, 16)])
def test_quantized_layers_on_device_match_cpu(device, bits, group):
    model = sharp_model()
    cpu = quantize_model(copy.deepcopy(model), bits, group)
    dev = quantize_model(copy.deepcopy(model).to(device), bits, group)  # quantized on the device
    for a, b in zip(cpu.modules(), dev.modules()):
        if isinstance(a, QuantizedLinear):
            assert b.qweight.device.type == device
            # The same integers, or (a value on a rounding boundary) one step away, and the same scales.
            assert (a.dequantized_weight() - b.dequantized_weight().cpu()).abs().max() <= a.scale.max() * 1.0001
            assert (a.qweight != b.qweight.cpu()).float().mean() < 1e-3
            torch.testing.assert_close(b.scale.cpu(), a.scale, **FP32)
    idx = prompts(2, 12)
    with torch.no_grad():
        want = cpu(idx)
        moved = copy.deepcopy(cpu).to(device)(idx.to(device)).cpu()  # quantized on the CPU, run on the device
        got = dev(idx.to(device)).cpu()
    scale = want.abs().max().item()
    torch.testing.assert_close(moved, want, atol=1e-5 * scale, rtol=1e-5)
    torch.testing.assert_close(got, want, atol=2e-2 * scale, rtol=0)  # a weight one step away moves a logit a little


# ----------------------------------------------------------------------------- batching, speculative decoding
@pytest.mark.parametrize("device", DEVICES)
def test_batching_on_device_equals_cpu(device):
    model = sharp_model()
    requests = mixed_workload(10, V, prompt_range=(2, 8), output_range=(2, 20), seed=0)
    want = continuous_batching(model, requests, 4).outputs
    dev = copy.deepcopy(model).to(device)
    assert continuous_batching(dev, requests, 4).outputs == want
    assert static_batching(dev, requests, 4).outputs == want


@pytest.mark.parametrize("device", DEVICES)
def test_speculative_decoding_on_device(device):
    target, draft = sharp_model(0), sharp_model(1, n_layers=1)
    idx = prompts(1, 6)
    want = generate(target, idx, 20, temperature=0)
    t, d = copy.deepcopy(target).to(device), copy.deepcopy(draft).to(device)
    out, stats = speculative_generate(t, d, idx.to(device), 20, gamma=3, temperature=0)
    assert torch.equal(out.cpu(), want)  # an unrelated draft: (almost) nothing accepted, the same tokens
    out, stats = speculative_generate(t, copy.deepcopy(t), idx.to(device), 20, gamma=3, temperature=0)
    assert torch.equal(out.cpu(), want) and stats.acceptance_rate == 1.0  # draft == target accepts everything
    seeded = [torch.Generator(device=device).manual_seed(0) for _ in range(2)]
    runs = [speculative_generate(t, d, idx.to(device), 20, gamma=3, temperature=1.0, generator=g)[0] for g in seeded]
    assert torch.equal(*runs) and runs[0].shape == (1, 26)


def test_the_comparisons_can_fail():
    """Negative controls for the helpers above: a perturbed model is caught by each kind of comparison."""
    model, other = sharp_model(0), sharp_model(0)
    with torch.no_grad():
        other.lm_head.weight[3] += 5.0
    idx = prompts()
    assert not torch.equal(generate(model, idx, 30, temperature=0), generate(other, idx, 30, temperature=0))
    requests = mixed_workload(10, V, prompt_range=(2, 8), output_range=(2, 20), seed=0)
    assert continuous_batching(model, requests, 4).outputs != continuous_batching(other, requests, 4).outputs
