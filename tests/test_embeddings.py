"""Tests for llm_course.embeddings: lookups, similarity, sinusoidal positions and their shift matrix."""

import math

import pytest
import torch
import torch.nn.functional as F

from llm_course.embeddings import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    analogy,
    cosine_similarity,
    embedding_lookup,
    inverse_frequencies,
    nearest_neighbors,
    one_hot_embedding,
    sinusoidal_encoding,
    sinusoidal_shift_matrix,
)


def test_lookup_equals_one_hot_product():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(11, 5, generator=g)
    idx = torch.randint(0, 11, (3, 4), generator=g)
    expected = weight[idx]
    torch.testing.assert_close(embedding_lookup(idx, weight), expected)
    torch.testing.assert_close(one_hot_embedding(idx, weight), expected)
    module = TokenEmbedding(11, 5)
    module.weight.data.copy_(weight)
    torch.testing.assert_close(module(idx), expected)


def test_one_hot_gradient_touches_only_used_rows():
    weight = torch.randn(6, 3, requires_grad=True)
    one_hot_embedding(torch.tensor([[1, 4, 1]]), weight).sum().backward()
    used = weight.grad.abs().sum(1) > 0
    assert used.tolist() == [False, True, False, False, True, False]
    assert weight.grad[1].tolist() == [2.0, 2.0, 2.0]  # token 1 occurs twice


def test_cosine_similarity_worked_examples_and_oracle():
    assert cosine_similarity(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).item() == 0.0
    assert cosine_similarity(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])).item() == pytest.approx(1.0)
    assert cosine_similarity(torch.tensor([1.0, 2.0]), torch.tensor([-1.0, -2.0])).item() == pytest.approx(-1.0)
    assert cosine_similarity(torch.zeros(3), torch.ones(3)).item() == 0.0  # finite for a zero vector
    a, b = torch.randn(7, 16), torch.randn(7, 16)
    torch.testing.assert_close(cosine_similarity(a, b), F.cosine_similarity(a, b, dim=-1))


def test_analogy_on_a_constructed_table():
    # Orthogonal directions: gender (man/woman) and royalty. king = man + royal, queen = woman + royal.
    man, woman, royal, other = torch.eye(4)
    weight = torch.stack([man, woman, man + royal, woman + royal, other, -royal])
    MAN, WOMAN, KING, QUEEN = 0, 1, 2, 3
    sims, ids = analogy(weight, MAN, KING, WOMAN)
    assert ids.tolist() == [QUEEN]
    assert sims.item() == pytest.approx(1.0)
    _, near = nearest_neighbors(weight[KING], weight, k=2, exclude=[KING])
    assert set(near.tolist()) == {MAN, QUEEN}


def test_sinusoidal_encoding_values():
    pe = sinusoidal_encoding(50, 8)
    assert pe.shape == (50, 8)
    assert pe[0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    for pos in (1, 7, 49):
        for i in range(4):
            w = 10000.0 ** (-2 * i / 8)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(pos * w), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos * w), abs=1e-6)
    assert inverse_frequencies(8)[0].item() == 1.0


def test_odd_dimension_is_rejected():
    with pytest.raises(ValueError, match="must be even"):
        sinusoidal_encoding(4, 7)


@pytest.mark.parametrize("offset", [0, 1, 5, 37])
def test_shift_matrix_maps_pe_pos_to_pe_pos_plus_k(offset):
    d_model, seq_len = 64, 200
    pe = sinusoidal_encoding(seq_len, d_model).double()
    m = sinusoidal_shift_matrix(offset, d_model).double()
    shifted = pe[: seq_len - offset] @ m.T  # row convention: PE[pos + k] = PE[pos] @ M_k^T
    torch.testing.assert_close(shifted, pe[offset:], atol=1e-4, rtol=0)
    torch.testing.assert_close(m @ pe[3], pe[3 + offset], atol=1e-5, rtol=0)  # column convention


def test_shift_matrix_is_a_rotation_that_composes():
    m2, m3, m5 = (sinusoidal_shift_matrix(k, 16).double() for k in (2, 3, 5))
    torch.testing.assert_close(m2 @ m3, m5, atol=1e-6, rtol=0)
    torch.testing.assert_close(m5 @ m5.T, torch.eye(16, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(sinusoidal_shift_matrix(0, 16), torch.eye(16))
    # block diagonal: nothing outside the 2x2 blocks
    off_block = m5.clone()
    for i in range(0, 16, 2):
        off_block[i : i + 2, i : i + 2] = 0
    assert off_block.abs().max().item() == 0.0


def test_positional_modules():
    learned = LearnedPositionalEmbedding(32, 8)
    assert sum(p.numel() for p in learned.parameters()) == 32 * 8
    assert learned(torch.arange(5)).shape == (5, 8)
    assert learned(torch.arange(10).reshape(2, 5)).shape == (2, 5, 8)
    fixed = SinusoidalPositionalEncoding(32, 8)
    assert list(fixed.parameters()) == [] and fixed.state_dict() == {}  # a constant, not saved
    torch.testing.assert_close(fixed(torch.tensor([0, 3])), sinusoidal_encoding(32, 8)[[0, 3]])
    scaled = SinusoidalPositionalEncoding(32, 8, scale=0.25)
    torch.testing.assert_close(scaled(torch.tensor([0, 3])), 0.25 * sinusoidal_encoding(32, 8)[[0, 3]])


def test_sinusoidal_encoding_in_float64_is_computed_in_float64():
    import math

    from llm_course.embeddings import sinusoidal_encoding

    pe = sinusoidal_encoding(20_000, 8, dtype=torch.float64)
    assert pe.dtype == torch.float64
    assert abs(pe[19_999, 0].item() - math.sin(19_999.0)) < 1e-12  # float32 angles would be off by ~1e-3
