"""LoRA (llm_course.lora): the oracle is Hugging Face peft's LoRA on the same weights."""

import math

import pytest
import torch
from torch import nn

from llm_course.lora import (
    LoRALinear,
    apply_lora,
    count_trainable,
    lora_delta,
    lora_disabled,
    lora_forward,
    merge_lora,
    merge_weight,
)
from llm_course.quantization import QuantizedLinear, quantize_model
from llm_course.transformer import Transformer, tiny

peft = pytest.importorskip("peft")


class Tiny(nn.Module):
    """A module with linear layers named like the course's attention projections."""

    def __init__(self, d_in=16, d_out=12):
        super().__init__()
        self.w_q = nn.Linear(d_in, d_out)
        self.w_v = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.w_q(x) + self.w_v(x)


def peft_pair(r=4, alpha=8.0, seed=0):
    """(peft-wrapped Tiny, our LoRA-wrapped copy) with the same base weights and the same random A, B."""
    torch.manual_seed(seed)
    ref = Tiny()
    ours = Tiny()
    ours.load_state_dict(ref.state_dict())
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["w_q", "w_v"], lora_dropout=0.0)
    ref = peft.get_peft_model(ref, cfg)
    apply_lora(ours, ("w_q", "w_v"), r=r, alpha=alpha)
    g = torch.Generator().manual_seed(seed + 1)
    for name in ("w_q", "w_v"):
        theirs = getattr(ref.base_model.model, name)
        mine = getattr(ours, name)
        with torch.no_grad():
            theirs.lora_B["default"].weight.copy_(torch.randn(theirs.lora_B["default"].weight.shape, generator=g))
            mine.lora_A.copy_(theirs.lora_A["default"].weight)
            mine.lora_B.copy_(theirs.lora_B["default"].weight)
    return ref, ours


def test_shapes_and_scaling_match_peft():
    ref, ours = peft_pair(r=4, alpha=8.0)
    theirs = ref.base_model.model.w_q
    assert ours.w_q.lora_A.shape == theirs.lora_A["default"].weight.shape == (4, 16)
    assert ours.w_q.lora_B.shape == theirs.lora_B["default"].weight.shape == (12, 4)
    assert ours.w_q.scale == theirs.scaling["default"] == 2.0


def test_forward_matches_peft():
    ref, ours = peft_pair(r=4, alpha=8.0)
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours(x), ref(x))


def test_merged_weight_matches_peft():
    ref, ours = peft_pair(r=2, alpha=3.0)
    merged_ref = ref.merge_and_unload()
    merge_lora(ours)
    assert isinstance(ours.w_q, nn.Linear) and not isinstance(ours.w_q, LoRALinear)
    torch.testing.assert_close(ours.w_q.weight, merged_ref.w_q.weight)
    torch.testing.assert_close(ours.w_v.bias, merged_ref.w_v.bias)


def test_init_like_peft():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(256, 64), r=8, alpha=16)
    bound = 1 / math.sqrt(256)  # kaiming_uniform(a=sqrt(5)) on fan_in 256
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.9 * bound
    assert abs(layer.lora_A.std().item() - bound / math.sqrt(3)) < 0.1 * bound
    assert torch.count_nonzero(layer.lora_B) == 0
    x = torch.randn(4, 256)
    torch.testing.assert_close(layer(x), layer.base(x))  # B = 0: the adapted layer starts as its base
    cfg = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["w_q"])
    theirs = peft.get_peft_model(Tiny(256, 64), cfg).base_model.model.w_q
    assert theirs.lora_A["default"].weight.abs().max() <= bound
    assert torch.count_nonzero(theirs.lora_B["default"].weight) == 0


def test_pure_functions_by_hand():
    x = torch.tensor([[1.0, 2.0]])
    W, b = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.5, -0.5])
    A, B = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0], [0.0]])  # r = 1
    # x A^T = 3, (x A^T) B^T = [6, 0], times scale 0.5 = [3, 0]
    torch.testing.assert_close(lora_delta(x, A, B, 0.5), torch.tensor([[3.0, 0.0]]))
    torch.testing.assert_close(lora_forward(x, W, b, A, B, 0.5), torch.tensor([[4.5, 1.5]]))
    torch.testing.assert_close(merge_weight(W, A, B, 0.5), torch.tensor([[2.0, 1.0], [0.0, 1.0]]))


def small_model():
    return Transformer(tiny(64), generator=torch.Generator().manual_seed(0)).eval()


def test_apply_lora_freezes_and_counts():
    model = small_model()
    _, total = count_trainable(model)
    apply_lora(model, ("w_q", "w_v"), r=4, alpha=8)
    trainable, total_after = count_trainable(model)
    c = model.config
    assert trainable == c.n_layers * 2 * 4 * (c.d_model + c.d_model)
    assert total_after == total + trainable
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 2 * c.n_layers
    with pytest.raises(ValueError):
        apply_lora(small_model(), ("nothing",))


def test_disabled_equals_base_and_merge_equals_adapted():
    model = small_model()
    idx = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    base_logits = model(idx)
    apply_lora(model, ("w_q", "w_k", "w_v", "w_o", "w1", "w2"), r=4, alpha=8)
    for layer in model.modules():
        if isinstance(layer, LoRALinear):
            nn.init.normal_(layer.lora_B, std=0.05)
    adapted = model(idx)
    assert not torch.allclose(adapted, base_logits, atol=1e-4)
    with lora_disabled(model):
        torch.testing.assert_close(model(idx), base_logits)
    assert all(layer.enabled for layer in model.modules() if isinstance(layer, LoRALinear))
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(idx), adapted, atol=1e-5, rtol=1e-4)


def test_gradients_reach_only_the_adapters():
    model = apply_lora(small_model(), r=2, alpha=4)
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(3))
    model(idx).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name


def test_qlora_on_int4_base():
    model = small_model()
    idx = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    quantize_model(model, bits=4, group_size=32)
    q_logits = model(idx)
    apply_lora(model, ("w_q", "w_v"), r=4, alpha=8)
    layer = model.blocks[0].attn.w_q
    assert isinstance(layer.base, QuantizedLinear) and layer.base.bits == 4
    torch.testing.assert_close(model(idx), q_logits)  # B = 0
    nn.init.normal_(layer.lora_B, std=0.1)
    x = torch.randn(3, model.config.d_model)
    want = lora_forward(x, layer.base.dequantized_weight(), layer.base.bias, layer.lora_A, layer.lora_B, layer.scale)
    torch.testing.assert_close(layer(x), want)
    model(idx).sum().backward()
    assert layer.lora_A.grad is not None and layer.base.bias.grad is None
    merged = layer.merged()
    torch.testing.assert_close(merged(x), want, atol=1e-5, rtol=1e-4)


def test_merged_keeps_the_base_dtype():
    base = nn.Linear(16, 12).to(torch.bfloat16)
    layer = LoRALinear(base, r=4, alpha=8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.lora_B.normal_(std=0.5, generator=torch.Generator().manual_seed(1))
    merged = layer.merged()
    assert merged.weight.dtype == torch.bfloat16 and merged.bias.dtype == torch.bfloat16
    # The sum W + scale B A in float32, rounded once to bf16.
    want = (base.weight.float() + layer.scale * layer.lora_B.float() @ layer.lora_A.float()).bfloat16()
    assert torch.equal(merged.weight, want)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(2)).bfloat16()
    torch.testing.assert_close(merged(x), layer(x), atol=0.05, rtol=0.02)  # bf16 arithmetic both ways
    # A merged bf16 model still runs: the old merged() returned float32 layers, and bf16 inputs failed.
    model = apply_lora(small_model().to(torch.bfloat16), ("w_q", "w_v"), r=4, alpha=8)
    merge_lora(model)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model(torch.randint(0, 64, (1, 5)))


def test_adapters_are_drawn_on_the_generators_device_and_moved_to_the_base():
    # A CPU generator for a model elsewhere (meta stands in for a GPU): A is drawn on the CPU, then moved.
    layer = LoRALinear(nn.Linear(16, 12, device="meta"), r=4, alpha=8, generator=torch.Generator().manual_seed(0))
    assert layer.lora_A.device.type == "meta" and layer.lora_B.device.type == "meta"
    # The same seed gives the same adapters whatever the base's device.
    a = LoRALinear(nn.Linear(16, 12), r=4, alpha=8, generator=torch.Generator().manual_seed(0)).lora_A
    b = LoRALinear(nn.Linear(16, 12), r=4, alpha=8, generator=torch.Generator(device="cpu").manual_seed(0)).lora_A
    assert torch.equal(a, b)
