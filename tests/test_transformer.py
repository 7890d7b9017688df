"""Tests for llm_course.transformer: parameter counts, input checks, causality, init, a tiny training run."""

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from llm_course.transformer import (
    Block,
    Transformer,
    TransformerConfig,
    block_gradient_norms,
    count_parameters,
    gpt2_medium,
    gpt2_small,
    llama2_7b,
    llama_tiny,
    parameter_breakdown,
    seeds_70b,
    tiny,
)

DEVICE = "cuda"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
V = 97


def micro(**changes) -> TransformerConfig:
    """A 2-layer, 32-wide model: fast enough to build dozens of times."""
    base = dict(vocab_size=V, context_length=16, d_model=32, n_layers=2, n_heads=4)
    return TransformerConfig(**{**base, **changes})


VARIANTS = {
    "gpt": {},
    "llama": dict(
        norm="rmsnorm", activation="swiglu", position="rope", tie_embeddings=False, bias=False, n_kv_heads=2, d_ff=88
    ),
    "post_ln": dict(pre_ln=False),
    "sinusoidal": dict(position="sinusoidal"),
    "no_positions": dict(position="none"),
    "relu_untied_mqa": dict(activation="relu", tie_embeddings=False, n_kv_heads=1),
    "gelu_rope_nobias": dict(activation="gelu", position="rope", bias=False),
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", VARIANTS)
def test_count_by_formula_equals_counted(name):
    config = micro(**VARIANTS[name])
    assert count_parameters(config) == n_params(Transformer(config))


@pytest.mark.parametrize("preset", [tiny, llama_tiny])
def test_small_presets_count(preset):
    config = preset(V)
    assert count_parameters(config) == n_params(Transformer(config))


@pytest.mark.parametrize(
    "preset, expected",
    [(gpt2_small, 124_439_808), (gpt2_medium, 354_823_168), (llama2_7b, 6_738_415_616)],
)
def test_large_presets_count_on_the_meta_device(preset, expected):
    config = preset()
    with torch.device("meta"):
        model = Transformer(config)
    assert count_parameters(config) == n_params(model) == expected


def test_seeds_70b_is_about_69_billion_not_140():
    config = seeds_70b()
    assert (config.d_model, config.n_layers, config.n_heads) == (8192, 80, 64)
    total = count_parameters(config)
    assert total == 68_976_648_192
    parts = parameter_breakdown(config)
    assert sum(parts.values()) == total
    assert parts["ffn"] > parts["attention"] > parts["token_embedding"]


def test_breakdown_worked_example_gpt2_small():
    parts = parameter_breakdown(gpt2_small())
    assert parts["token_embedding"] == 50257 * 768
    assert parts["position_embedding"] == 1024 * 768
    assert parts["attention"] == 12 * (4 * 768 * 768 + 4 * 768)
    assert parts["ffn"] == 12 * (2 * 768 * 3072 + 3072 + 768)
    assert parts["norms"] == 25 * 2 * 768
    assert parts["lm_head"] == 0  # tied to the token embedding


def test_hugging_face_counts_agree():
    transformers = pytest.importorskip("transformers")
    from llm_course.checkpoints import to_hf_config

    pairs = ((gpt2_small(), transformers.GPT2LMHeadModel), (llama2_7b(), transformers.LlamaForCausalLM))
    for config, cls in pairs:
        with torch.device("meta"):
            hf = cls(to_hf_config(config))
        assert n_params(hf) == count_parameters(config)


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_shape_and_causality(name):
    torch.manual_seed(0)
    model = Transformer(micro(**VARIANTS[name])).eval()
    idx = torch.randint(0, V, (2, 12))
    logits = model(idx)
    assert logits.shape == (2, 12, V) and logits.dtype == torch.float32
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % V
    torch.testing.assert_close(model(changed)[:, :7], logits[:, :7], msg="a token sees a later token")
    assert not torch.allclose(model(changed)[:, 7:], logits[:, 7:])


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_fused_and_own_attention_agree(name):
    config = micro(**VARIANTS[name])
    own = Transformer(config).eval()
    fused = Transformer(dataclasses.replace(config, use_fused_attention=True)).eval()
    fused.load_state_dict(own.state_dict())
    idx = torch.randint(0, V, (3, 16))
    torch.testing.assert_close(fused(idx), own(idx), atol=1e-5, rtol=1e-5)


def test_explicit_positions():
    model = Transformer(micro(**VARIANTS["llama"])).eval()
    idx = torch.randint(0, V, (2, 6))
    torch.testing.assert_close(model(idx, positions=torch.arange(6)), model(idx))
    torch.testing.assert_close(model(idx, positions=torch.arange(6).expand(2, 6)), model(idx))
    # RoPE only sees offsets: shifting every position changes nothing
    torch.testing.assert_close(model(idx, positions=torch.arange(6) + 9), model(idx), atol=1e-5, rtol=1e-4)


def test_input_errors_name_what_was_expected():
    model = Transformer(micro())
    with pytest.raises(TypeError, match=r"integer token ids \(torch.long\), got dtype torch.float32"):
        model(torch.zeros(1, 4))
    with pytest.raises(TypeError, match="torch.Tensor of token ids, got list"):
        model([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"shape \(B, T\), got 1 dimension\(s\): \(4,\)"):
        model(torch.tensor([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="sequence length 17 exceeds context_length 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 97\) \(vocab_size\), got values from 0 to 97"):
        model(torch.tensor([[0, 97]]))
    with pytest.raises(ValueError, match=r"got values from -1 to 3"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match=r"positions must have shape \(T,\) or \(B, T\)"):
        model(torch.zeros(2, 4, dtype=torch.long), positions=torch.arange(5))
    with pytest.raises(ValueError, match=r"positions must be in \[0, 16\)"):
        model(torch.zeros(1, 2, dtype=torch.long), positions=torch.tensor([15, 16]))
    model(torch.zeros(1, 4, dtype=torch.int32))  # any integer dtype is fine


def test_config_errors():
    with pytest.raises(ValueError, match="norm must be one of"):
        micro(norm="batchnorm")
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        micro(d_model=30)
    with pytest.raises(ValueError, match=r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"):
        micro(n_kv_heads=3)
    config = micro()
    assert config.d_ff == 4 * 32 and config.n_kv_heads == 4 and config.d_head == 8


def test_tied_and_untied_heads():
    tied = Transformer(micro())
    assert tied.lm_head.weight is tied.token_embedding.weight
    untied = Transformer(micro(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.token_embedding.weight


def test_gpt2_initialization():
    config = micro(n_layers=8, d_model=128, d_ff=512)
    model = Transformer(config, generator=torch.Generator().manual_seed(0))
    assert model.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.w_q.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual = torch.cat([b.ffn.w2.weight.flatten() for b in model.blocks])
    assert residual.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    assert model.blocks[0].attn.w_q.bias.abs().max().item() == 0.0
    assert model.blocks[0].norm1.weight.min().item() == 1.0
    # the same generator seed gives the same model, whatever the global random state
    torch.manual_seed(123)
    again = Transformer(config, generator=torch.Generator().manual_seed(0))
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_dropout_only_in_training():
    model = Transformer(micro(dropout=0.5))
    idx = torch.randint(0, V, (2, 8))
    model.train()
    assert not torch.allclose(model(idx), model(idx))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx))


def test_block_pre_and_post_ln():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 32)
    for pre_ln in (True, False):
        block = Block(micro(d_ff=64, pre_ln=pre_ln)).eval()
        attn = block.attn(block.norm1(x)) if pre_ln else None
        if pre_ln:
            h = x + attn
            expected = h + block.ffn(block.norm2(h))
        else:
            h = block.norm1(x + block.attn(x))
            expected = block.norm2(h + block.ffn(h))
        torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("name", ["llama", "gpt", "post_ln"])
def test_block_is_built_from_the_config(name):
    """Block(config) is the model's block: same modules, same parameter shapes, same output."""
    config = micro(**VARIANTS[name], n_experts=0)
    model = Transformer(config).eval()
    block = Block(config).eval()
    assert [(k, p.shape) for k, p in block.named_parameters()] == [
        (k, p.shape) for k, p in model.blocks[0].named_parameters()
    ]
    block.load_state_dict(model.blocks[0].state_dict())
    x = torch.randn(2, 5, config.d_model)
    torch.testing.assert_close(block(x), model.blocks[0](x))
    assert block.attn.n_kv_heads == config.n_kv_heads and block.pre_ln == config.pre_ln


def test_blocks_share_the_models_rope_table():
    model = Transformer(micro(position="rope"))
    assert all(block.attn.rope is model.rope for block in model.blocks)


def test_block_rejects_loose_arguments():
    with pytest.raises(TypeError):
        Block(32, 4, 64)
    with pytest.raises(TypeError, match="takes a TransformerConfig, got int"):
        Block(32)
    with pytest.raises(ValueError, match="RoPE table"):
        Block(micro(), rope=Transformer(micro(position="rope")).rope)


def test_moe_block_from_config():
    block = Block(micro(n_experts=4, experts_per_token=2))
    assert len(block.ffn.experts) == 4


def test_block_gradient_norms():
    model = Transformer(micro(n_layers=3))
    idx = torch.randint(0, V, (2, 8))
    F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    norms = block_gradient_norms(model)
    assert len(norms) == 3 and all(n > 0 and math.isfinite(n) for n in norms)


@pytest.fixture
def one_thread():
    """Tensors this small gain nothing from threads, and on a busy CPU the threads wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_tiny_model_learns_a_repeating_sequence(name, one_thread):
    torch.manual_seed(0)
    model = Transformer(micro(**VARIANTS[name]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.arange(16).remainder(5).repeat(4, 1)  # 0 1 2 3 4 0 1 ...
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > math.log(V) - 0.5 and losses[-1] < 0.1, losses[::5]


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_model_on_cuda_matches_cpu(name):
    """float32 on CUDA (no TF32) agrees with the CPU to summation order; bf16 weights to bf16's 8 bits:
    a few units of 2^-8 of the logits' scale (the errors of 2 layers add up), well below the old 5e-2."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for fused in (False, True):
            config = micro(**VARIANTS[name], use_fused_attention=fused)
            model = Transformer(config, generator=torch.Generator().manual_seed(0)).eval()
            with torch.no_grad():
                model.lm_head.weight.mul_(20.0)  # logits of order 1, not 0.02: a relative check means something
            idx = torch.randint(0, V, (2, 16))
            expected = model(idx)
            scale = expected.abs().max().item()
            got32 = copy.deepcopy(model).to(DEVICE)(idx.to(DEVICE))
            assert got32.device.type == DEVICE and got32.dtype == torch.float32
            torch.testing.assert_close(got32.cpu(), expected, atol=1e-5 * scale, rtol=1e-5)
            got = model.to(DEVICE, torch.bfloat16)(idx.to(DEVICE))
            assert got.dtype == torch.bfloat16
            torch.testing.assert_close(got.float().cpu(), expected, atol=2e-2 * scale, rtol=0)
    finally:
        torch.set_float32_matmul_precision(precision)


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_forward_compiles_to_one_graph(name):
    """No graph break: the input checks read values (`.item()`), so they run only in eager mode."""
    import torch._dynamo as dynamo

    model = Transformer(micro(**VARIANTS[name]), generator=torch.Generator().manual_seed(0))
    dynamo.reset()
    try:
        out = dynamo.explain(model)(torch.randint(0, V, (2, 8)))
    finally:
        dynamo.reset()
    assert (out.graph_count, out.graph_break_count) == (1, 0), [str(r.reason)[:200] for r in out.break_reasons]


def test_a_forward_reads_its_inputs_once_and_a_cached_one_never():
    """The range check of ids and positions is one read of the device (it was two to four), and a
    forward with a KV cache reads nothing: on the meta device, any read would raise."""
    from llm_course.kv_cache import KVCache

    model = Transformer(micro(**VARIANTS["llama"]), generator=torch.Generator().manual_seed(0)).to("meta")
    cache = KVCache.for_model(model, 2, 16)
    tokens = torch.zeros(2, 5, dtype=torch.long, device="meta")
    assert model(tokens, cache=cache).shape == (2, 5, V)  # prefill
    assert model(tokens[:, :1], cache=cache).shape == (2, 1, V)  # decode step
    assert cache.length == 6
    with pytest.raises(NotImplementedError, match="meta"):
        model(tokens)  # without a cache the ids are checked, which reads them
