"""Tests for llm_course.moe and the MoE transformer: Hugging Face's Mixtral as the oracle (block
output, router logits, whole-model logits, load-balancing loss), hand-worked capacity examples,
dispatch/combine against a per-token loop, FLOP counts against PyTorch's FlopCounterMode."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from llm_course.checkpoints import convert_llama_state_dict
from llm_course.moe import (
    MoE,
    capacity_keep,
    combine,
    dispatch,
    expert_capacity,
    expert_positions,
    ffn_flops_per_token,
    load_balancing_loss,
    moe_flops_per_token,
    router_probs,
    top_k_routing,
)
from llm_course.transformer import (
    Block,
    Transformer,
    TransformerConfig,
    count_active_parameters,
    count_parameters,
    llama_tiny,
    mixtral_8x7b,
    moe_aux_loss,
    parameter_breakdown,
)

transformers = pytest.importorskip("transformers")
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ATOL = RTOL = 1e-5  # float32
V = 61


# ----------------------------------------------------------------------------- helpers
def mixtral_config(**changes):
    base = dict(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=6, num_experts_per_tok=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
    )  # fmt: skip
    return transformers.MixtralConfig(**{**base, **changes})


def copy_mixtral_block(theirs, ours: MoE) -> None:
    """Load a MixtralSparseMoeBlock's weights into our MoE (gate_up_proj holds [gate; up] per expert)."""
    with torch.no_grad():
        ours.router.weight.copy_(theirs.gate.weight)
        for e, expert in enumerate(ours.experts):
            gate, up = theirs.experts.gate_up_proj[e].chunk(2, dim=0)
            expert.w1.weight.copy_(gate)
            expert.w3.weight.copy_(up)
            expert.w2.weight.copy_(theirs.experts.down_proj[e])


def our_config_for(hf_config) -> TransformerConfig:
    c = hf_config
    return TransformerConfig(
        vocab_size=c.vocab_size, context_length=c.max_position_embeddings, d_model=c.hidden_size,
        n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads,
        d_ff=c.intermediate_size, norm="rmsnorm", activation="swiglu", position="rope",
        rope_base=c.rope_parameters["rope_theta"], tie_embeddings=False, bias=False, norm_eps=c.rms_norm_eps,
        n_experts=c.num_local_experts, experts_per_token=c.num_experts_per_tok,
    )  # fmt: skip


def naive_moe(x, experts, indices, weights, keep=None):
    """The MoE sum written token by token: y_t = sum_j keep_tj w_tj expert_{i_tj}(x_t)."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(indices.shape[1]):
            if keep is None or keep[t, j]:
                out[t] += weights[t, j] * experts[int(indices[t, j])](x[t : t + 1])[0]
    return out


def naive_keep(indices, capacity):
    """Fill each expert's queue by hand: all first choices in token order, then all second choices, ..."""
    n, k = indices.shape
    used, keep = {}, torch.zeros(n, k, dtype=torch.bool)
    for j in range(k):
        for t in range(n):
            e = int(indices[t, j])
            if used.get(e, 0) < capacity:
                keep[t, j] = True
                used[e] = used.get(e, 0) + 1
    return keep


def random_moe(d_model=16, d_ff=24, n_experts=5, k=2, seed=0, **kwargs) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(d_model, d_ff, n_experts, k, **kwargs).eval()
    with torch.no_grad():  # larger router weights than the default init, so the routing is far from uniform
        moe.router.weight.normal_(0.0, 1.0 / math.sqrt(d_model))
    return moe


# ----------------------------------------------------------------------------- oracle: Mixtral
@pytest.mark.parametrize("implementation", ["eager", "grouped_mm"])
@pytest.mark.parametrize("n_experts, k", [(6, 2), (8, 1), (4, 3), (4, 4)])
def test_block_output_and_router_logits_equal_mixtral(implementation, n_experts, k):
    torch.manual_seed(0)
    config = mixtral_config(num_local_experts=n_experts, num_experts_per_tok=k, experts_implementation=implementation)
    hf = transformers.MixtralForCausalLM(config).eval()
    theirs = hf.model.layers[0].mlp
    ours = MoE(32, 48, n_experts, k)
    copy_mixtral_block(theirs, ours)
    x = torch.randn(3, 11, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(x.clone())
        expected_logits, expected_weights, expected_indices = theirs.gate(x.clone())
        got = ours(x)
        weights, indices = top_k_routing(ours.router_logits, k)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(ours.router_logits, expected_logits, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(weights, expected_weights, atol=ATOL, rtol=RTOL)
    assert torch.equal(indices, expected_indices)
    assert ours.n_dropped.item() == 0


def test_whole_model_equals_mixtral_for_causal_lm():
    torch.manual_seed(0)
    hf_config = mixtral_config(experts_implementation="eager", attn_implementation="eager")
    hf = transformers.MixtralForCausalLM(hf_config).eval()
    config = our_config_for(hf_config)
    state = convert_llama_state_dict(hf.state_dict(), config)  # attention and norms; the MoE below
    for i, layer in enumerate(hf.model.layers):
        state[f"blocks.{i}.ffn.router.weight"] = layer.mlp.gate.weight
        for e in range(config.n_experts):
            gate, up = layer.mlp.experts.gate_up_proj[e].chunk(2, dim=0)
            state[f"blocks.{i}.ffn.experts.{e}.w1.weight"] = gate
            state[f"blocks.{i}.ffn.experts.{e}.w3.weight"] = up
            state[f"blocks.{i}.ffn.experts.{e}.w2.weight"] = layer.mlp.experts.down_proj[e]
    ours = Transformer(config).eval()
    ours.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())

    idx = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hf(idx, output_router_logits=True)
        logits = ours(idx)
    torch.testing.assert_close(logits, out.logits, atol=ATOL, rtol=RTOL)
    for block, theirs in zip(ours.blocks, out.router_logits):
        torch.testing.assert_close(block.ffn.router_logits, theirs, atol=ATOL, rtol=RTOL)
    # Hugging Face pools the layers' tokens into one loss; ours averages per-layer losses (equal for one layer).
    pooled = load_balancing_loss(torch.cat([b.ffn.router_logits for b in ours.blocks]), 2, config.n_experts)
    torch.testing.assert_close(pooled, out.aux_loss, atol=ATOL, rtol=RTOL)
    per_layer = [load_balancing_loss_func((t,), config.n_experts, 2) for t in out.router_logits]
    torch.testing.assert_close(moe_aux_loss(ours), torch.stack(per_layer).mean(), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("n_tokens, n_experts, k, scale", [(50, 8, 2, 1.0), (7, 4, 1, 3.0), (300, 16, 4, 0.3),
                                                           (12, 5, 5, 2.0), (1, 3, 2, 1.0)])  # fmt: skip
def test_balance_loss_equals_hugging_face(n_tokens, n_experts, k, scale):
    g = torch.Generator().manual_seed(n_tokens)
    layers = tuple(scale * torch.randn(n_tokens, n_experts, generator=g) for _ in range(3))
    for one in layers:
        torch.testing.assert_close(
            load_balancing_loss(one, k, n_experts), load_balancing_loss_func((one,), n_experts, k), atol=ATOL, rtol=RTOL
        )
    torch.testing.assert_close(
        load_balancing_loss(torch.cat(layers), k, n_experts), load_balancing_loss_func(layers, n_experts, k),
        atol=ATOL, rtol=RTOL,
    )  # fmt: skip
    # Leading dimensions are tokens: (B, T, E) is the same as (B T, E).
    batched = layers[0].view(1, n_tokens, n_experts)
    torch.testing.assert_close(load_balancing_loss(batched, k, n_experts), load_balancing_loss(layers[0], k, n_experts))


def test_mixtral_8x7b_counts():
    config = mixtral_8x7b()
    with torch.device("meta"):
        ours = Transformer(config)
        theirs = transformers.MixtralForCausalLM(transformers.MixtralConfig())
    assert count_parameters(config) == sum(p.numel() for p in ours.parameters()) == 46_702_792_704
    assert sum(p.numel() for p in theirs.parameters()) == 46_702_792_704
    # 2 of 8 experts per token: the 6 idle ones hold 6 x 32 x 3 x 4096 x 14336 parameters.
    assert count_active_parameters(config) == 46_702_792_704 - 6 * 32 * 3 * 4096 * 14336 == 12_879_925_248


# ----------------------------------------------------------------------------- worked examples
def test_top_k_routing_worked_example():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]))
    weights, indices = top_k_routing(logits, 2)
    assert indices.tolist() == [[1, 2], [0, 2]]
    torch.testing.assert_close(weights, torch.tensor([[2 / 3, 1 / 3], [0.625, 0.375]]))
    raw, _ = top_k_routing(logits, 2, renormalize=False)
    torch.testing.assert_close(raw, torch.tensor([[0.6, 0.3], [0.5, 0.3]]))
    one, _ = top_k_routing(logits, 1)
    assert torch.equal(one, torch.ones(2, 1))  # renormalizing one expert gives weight 1: no gradient to the router
    half = logits.to(torch.bfloat16)
    w16, _ = top_k_routing(half, 2)
    assert w16.dtype == torch.float32 and router_probs(half).dtype == torch.float32


def test_balance_loss_worked_examples():
    E, k = 4, 2
    uniform = torch.zeros(8, E)  # every probability 1/4; top-2 by index order: experts 0 and 1 (f = [1, 1, 0, 0])
    assert load_balancing_loss(uniform, k, E).item() == pytest.approx(E * (1 * 0.25 + 1 * 0.25))  # = 2 = k
    certain = torch.tensor([[30.0, 20.0, 0.0, 0.0]]).repeat(8, 1)  # everyone to experts 0 and 1, p ~ [1, 0, 0, 0]
    assert load_balancing_loss(certain, k, E).item() == pytest.approx(E * 1.0, rel=1e-6)  # f_0 = 1, P_0 = 1
    # Two tokens, two experts, k = 1: token 0 prefers expert 0 with p = 0.8, token 1 expert 1 with p = 0.6.
    logits = torch.log(torch.tensor([[0.8, 0.2], [0.4, 0.6]]))
    # f = [1/2, 1/2], P = [0.6, 0.4] -> 2 * (0.3 + 0.2) = 1
    assert load_balancing_loss(logits, 1, 2).item() == pytest.approx(1.0)
    # The gradient flows through P only (f is a count): E f . dP, zero when f is uniform (sum P = 1).
    logits.requires_grad_(True)
    load_balancing_loss(logits, 1, 2).backward()
    assert logits.grad.abs().max() < 1e-7
    skewed = torch.log(torch.tensor([[0.8, 0.2], [0.6, 0.4]])).requires_grad_(True)  # f = [1, 0]
    load_balancing_loss(skewed, 1, 2).backward()
    assert (skewed.grad[:, 0] > 0).all() and (skewed.grad[:, 1] < 0).all()  # pushes probability off expert 0


def test_expert_capacity():
    assert expert_capacity(n_tokens=8, n_experts=4, k=1, capacity_factor=1.0) == 2
    assert expert_capacity(8, 4, 2, 1.0) == 4
    assert expert_capacity(4, 3, 2, 1.0) == 3  # 8 / 3 rounds up
    assert expert_capacity(4, 3, 2, 0.75) == 2
    assert expert_capacity(10, 4, 1, 1.25) == 4  # 3.125 -> 4


def test_capacity_drop_counts_worked_example():
    # 4 tokens, 3 experts, k = 2. First choices fill the queues first: 0, 0, 0, 1; then seconds: 1, 2, 1, 0.
    indices = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])
    assert expert_positions(indices, 3).tolist() == [[0, 1], [1, 0], [2, 2], [0, 3]]
    keep = capacity_keep(indices, 3, expert_capacity(4, 3, 2, 1.0))  # capacity 3
    assert (~keep).nonzero().tolist() == [[3, 1]]  # token 3's second choice, 4th in expert 0's queue
    keep = capacity_keep(indices, 3, expert_capacity(4, 3, 2, 0.75))  # capacity 2
    assert (~keep).nonzero().tolist() == [[2, 0], [2, 1], [3, 1]]  # token 2 loses both experts
    assert capacity_keep(indices, 3, None).all()
    # k = 1, all to one expert: with capacity 2 only the first two tokens get through.
    same = torch.zeros(5, 1, dtype=torch.long)
    assert capacity_keep(same, 4, 2)[:, 0].tolist() == [True, True, False, False, False]


def test_moe_layer_counts_its_dropped_assignments():
    moe = random_moe(n_experts=4, k=2, capacity_factor=0.5)
    x = torch.randn(2, 10, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = moe(x)
        weights, indices = top_k_routing(moe.router_logits, 2)
        capacity = expert_capacity(20, 4, 2, 0.5)
        keep = naive_keep(indices, capacity)
        expected = naive_moe(x.view(20, 16), moe.experts, indices, weights, keep)
    assert moe.n_dropped.item() == (~keep).sum().item() > 0
    torch.testing.assert_close(y.view(20, 16), expected, atol=ATOL, rtol=RTOL)
    assert torch.bincount(indices[keep], minlength=4).max() <= capacity


# ----------------------------------------------------------------------------- dispatch / combine
@pytest.mark.parametrize("n_experts, k, capacity", [(5, 2, None), (5, 2, 3), (3, 1, 2), (4, 4, None), (6, 3, 1)])
def test_dispatch_combine_equals_a_per_token_loop(n_experts, k, capacity):
    g = torch.Generator().manual_seed(n_experts * 10 + k)
    n, C = 13, 8
    experts = [torch.nn.Linear(C, C) for _ in range(n_experts)]
    x = torch.randn(n, C, generator=g)
    indices = torch.stack([torch.randperm(n_experts, generator=g)[:k] for _ in range(n)])  # distinct per token
    weights = torch.rand(n, k, generator=g)
    keep = capacity_keep(indices, n_experts, capacity)
    if capacity is not None:
        assert torch.equal(keep, naive_keep(indices, capacity))
    with torch.no_grad():
        inputs, routes = dispatch(x, indices, n_experts, keep)
        for e, (h, (token, choice)) in enumerate(zip(inputs, routes)):
            assert torch.equal(h, x[token]) and (indices[token, choice] == e).all()
        got = combine([expert(h) for expert, h in zip(experts, inputs)], routes, weights, n)
        want = naive_moe(x, experts, indices, weights, keep)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    assert sum(len(t) for t, _ in routes) == keep.sum()


def test_moe_layer_equals_a_per_token_loop_and_keeps_the_dtype():
    moe = random_moe(activation="gelu_tanh", bias=True)
    x = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = moe(x)
        weights, indices = top_k_routing(moe.router_logits, 2)
        want = naive_moe(x.view(12, 16), moe.experts, indices, weights)
    assert y.shape == x.shape
    torch.testing.assert_close(y.view(12, 16), want, atol=ATOL, rtol=RTOL)
    moe16 = moe.to(torch.bfloat16)
    with torch.no_grad():
        y16 = moe16(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y, atol=0.05, rtol=0.05)


def test_gradients_reach_the_router_and_the_chosen_experts_only():
    moe = random_moe(n_experts=6, k=2).train()
    x = torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(4))
    y = moe(x)
    (y.pow(2).sum() + 0.01 * moe.aux_loss).backward()
    used = set(top_k_routing(moe.router_logits.detach(), 2)[1].flatten().tolist())
    assert moe.router.weight.grad.abs().sum() > 0
    for e, expert in enumerate(moe.experts):
        has_grad = expert.w1.weight.grad is not None and expert.w1.weight.grad.abs().sum() > 0
        assert has_grad == (e in used), f"expert {e}: used {e in used}, gradient {has_grad}"


# ----------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("activation", ["swiglu", "gelu", "relu"])
@pytest.mark.parametrize("n_experts, k", [(8, 2), (4, 1), (16, 4)])
def test_flops_per_token_match_pytorchs_flop_counter(activation, n_experts, k):
    C, Fh, n = 32, 40, 24
    moe = random_moe(C, Fh, n_experts, k, activation=activation, bias=False)
    x = torch.randn(n, C)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        moe(x)
    assert counter.get_total_flops() == n * moe_flops_per_token(C, Fh, n_experts, k, activation)
    dense = Block(TransformerConfig(d_model=C, n_heads=4, d_ff=Fh, activation=activation, bias=False)).ffn
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        dense(x)
    assert counter.get_total_flops() == n * ffn_flops_per_token(C, Fh, activation)
    # k experts of width F cost about as much as one dense FFN of width k F; the router adds 2 C E.
    assert moe_flops_per_token(C, Fh, n_experts, k, activation) == (
        ffn_flops_per_token(C, k * Fh, activation) + 2 * C * n_experts
    )


# ----------------------------------------------------------------------------- the transformer
MOE_VARIANTS = {
    "llama_moe": dict(norm="rmsnorm", activation="swiglu", position="rope", bias=False, tie_embeddings=False),
    "gpt_moe_k1": dict(experts_per_token=1),
    "gpt_moe_bias_capacity": dict(n_experts=3, capacity_factor=1.25),
}


def moe_config(**changes) -> TransformerConfig:
    base = dict(vocab_size=V, context_length=16, d_model=32, n_layers=2, n_heads=4, d_ff=40, n_experts=4)
    return TransformerConfig(**{**base, **changes})


@pytest.mark.parametrize("name", MOE_VARIANTS)
def test_count_parameters_of_moe_models(name):
    config = moe_config(**MOE_VARIANTS[name])
    model = Transformer(config)
    assert count_parameters(config) == sum(p.numel() for p in model.parameters())
    parts = parameter_breakdown(config)
    ffn_params = sum(p.numel() for b in model.blocks for p in b.ffn.parameters())
    assert parts["ffn"] == ffn_params
    one_expert = sum(p.numel() for p in model.blocks[0].ffn.experts[0].parameters())
    idle = config.n_experts - config.experts_per_token
    assert count_active_parameters(config) == count_parameters(config) - config.n_layers * idle * one_expert
    dense = dataclasses.replace(config, n_experts=0)
    assert count_active_parameters(dense) == count_parameters(dense)


def test_block_uses_moe_and_the_model_is_causal_without_capacity():
    torch.manual_seed(0)
    model = Transformer(moe_config(**MOE_VARIANTS["llama_moe"])).eval()
    assert all(isinstance(b.ffn, MoE) for b in model.blocks)
    idx = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        logits = model(idx)
        changed = idx.clone()
        changed[:, 7:] = (changed[:, 7:] + 1) % V
        torch.testing.assert_close(model(changed)[:, :7], logits[:, :7])
    assert model.blocks[0].ffn.router_logits.shape == (24, 4)


def test_moe_aux_loss_collects_every_block():
    model = Transformer(moe_config(n_layers=3))
    with pytest.raises(RuntimeError, match="forward call first"):
        moe_aux_loss(model)
    model(torch.randint(0, V, (2, 8)))
    losses = [b.ffn.aux_loss for b in model.blocks]
    torch.testing.assert_close(moe_aux_loss(model), torch.stack(losses).mean())
    assert 1.9 < moe_aux_loss(model).item() < 4.0  # k = 2 when balanced, at most E = 4
    dense = Transformer(moe_config(n_experts=0))
    dense(torch.randint(0, V, (1, 4)))
    assert moe_aux_loss(dense).item() == 0.0


def test_moe_initialization_scales_every_experts_output_matrix():
    model = Transformer(moe_config(n_layers=4, d_model=64, d_ff=256, n_experts=3), torch.Generator().manual_seed(0))
    for expert in model.blocks[0].ffn.experts:
        assert expert.w2.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
        assert expert.w1.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.blocks[0].ffn.router.weight.std().item() == pytest.approx(0.02, rel=0.2)
    # A dense model draws the same numbers as before the MoE option existed.
    dense_a = Transformer(llama_tiny(V), torch.Generator().manual_seed(0))
    dense_b = Transformer(dataclasses.replace(llama_tiny(V), n_experts=0), torch.Generator().manual_seed(0))
    for a, b in zip(dense_a.parameters(), dense_b.parameters()):
        assert torch.equal(a, b)


def test_config_errors():
    with pytest.raises(ValueError, match="n_experts"):
        moe_config(n_experts=-1)
    with pytest.raises(ValueError, match="experts_per_token"):
        moe_config(n_experts=2, experts_per_token=3)
    with pytest.raises(ValueError, match="capacity_factor"):
        moe_config(capacity_factor=0.0)
    with pytest.raises(ValueError, match="k"):
        MoE(8, 8, n_experts=2, k=0)


def test_tiny_moe_model_learns_a_repeating_sequence():
    torch.manual_seed(0)
    config = moe_config(context_length=32, **MOE_VARIANTS["llama_moe"])
    model = Transformer(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pattern = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6] * 5)[None, :33]
    for _ in range(60):
        logits = model(pattern[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), pattern[0, 1:]) + 0.01 * moe_aux_loss(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5


def test_save_and_load_round_trip_keeps_the_experts(tmp_path):
    from llm_course.checkpoints import load_model, save_model

    config = moe_config(**MOE_VARIANTS["gpt_moe_bias_capacity"])
    model = Transformer(config).eval()
    loaded = load_model(save_model(model, tmp_path / "moe"))
    assert loaded.config == config
    idx = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), model(idx))


@needs_cuda
@pytest.mark.cuda
def test_moe_on_cuda_matches_cpu():
    moe = random_moe(capacity_factor=1.0)
    x = torch.randn(4, 16, 16)
    with torch.no_grad():
        want = moe(x)
        n_dropped = moe.n_dropped.item()
        got = moe.to("cuda")(x.to("cuda"))
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
    assert moe.n_dropped.item() == n_dropped


def _dispatch_by_nonzero(x, indices, n_experts, keep=None):
    """The former formulation of `dispatch`: one `nonzero` (one wait for the device) per expert."""
    inputs, routes = [], []
    for e in range(n_experts):
        chosen = indices == e
        if keep is not None:
            chosen = chosen & keep
        token, choice = torch.nonzero(chosen, as_tuple=True)
        inputs.append(x[token])
        routes.append((token, choice))
    return inputs, routes


@pytest.mark.parametrize("n_experts, k, capacity", [(4, 2, None), (8, 2, 3), (5, 1, 2), (3, 3, None), (6, 2, 0)])
def test_sorted_dispatch_equals_one_nonzero_per_expert(n_experts, k, capacity):
    """The single stable sort gives each expert the same rows, in the same order, as the old loop
    (so the experts' outputs and `combine`'s sums are bit for bit the same); and it reads the device once."""
    from tests.test_kv_cache import HostReads

    g = torch.Generator().manual_seed(n_experts * 10 + k)
    x = torch.randn(23, 6, generator=g)
    _, indices = top_k_routing(torch.randn(23, n_experts, generator=g), k)
    keep = capacity_keep(indices, n_experts, capacity)
    with HostReads() as reads:
        inputs, routes = dispatch(x, indices, n_experts, keep)
    assert reads.calls == ["tolist"]
    old_inputs, old_routes = _dispatch_by_nonzero(x, indices, n_experts, keep)
    assert len(inputs) == len(routes) == n_experts
    for e in range(n_experts):
        assert torch.equal(inputs[e], old_inputs[e])
        assert torch.equal(routes[e][0], old_routes[e][0]) and torch.equal(routes[e][1], old_routes[e][1])
