"""The paged KV cache: the block allocator's bookkeeping, the contiguous baseline, the serving
simulation's accounting, and attention through block tables against contiguous attention."""

import random

import pytest
import torch
import torch.nn.functional as F

from llm_course.attention import causal_mask, scaled_dot_product_attention
from llm_course.paged_kv import (
    BlockAllocator,
    ContiguousAllocator,
    OutOfBlocksError,
    SequenceError,
    SimRequest,
    gather_kv,
    paged_attention,
    request_stream,
    simulate,
    write_kv,
)


def test_blocks_are_taken_only_when_the_last_one_fills():
    alloc = BlockAllocator(n_blocks=8, block_size=4)
    assert alloc.allocate(0, 5) == [0, 1]  # 5 tokens: 2 blocks
    assert alloc.append(0, 3) == [] and alloc.tables[0] == [0, 1]  # 8 tokens: still 2
    alloc.append(0)
    assert alloc.tables[0] == [0, 1, 2] and alloc.lengths[0] == 9
    assert alloc.slots(0).tolist() == list(range(9))
    assert (alloc.used_slots, alloc.allocated_slots) == (9, 12)


def test_slots_follow_the_block_table_when_blocks_interleave():
    alloc = BlockAllocator(n_blocks=6, block_size=2)
    alloc.allocate(0, 2)  # block 0
    alloc.allocate(1, 2)  # block 1
    alloc.append(0, 2)  # block 2
    alloc.append(1)  # block 3
    assert alloc.tables == {0: [0, 2], 1: [1, 3]}
    assert alloc.slots(0).tolist() == [0, 1, 4, 5] and alloc.slots(1).tolist() == [2, 3, 6]


def test_free_returns_blocks_and_errors_say_what_went_wrong():
    alloc = BlockAllocator(n_blocks=4, block_size=4)
    alloc.allocate(7, 9)
    assert len(alloc.free_blocks) == 1
    with pytest.raises(SequenceError, match="already allocated"):
        alloc.allocate(7, 1)
    alloc.free(7)
    assert sorted(alloc.free_blocks) == [0, 1, 2, 3] and alloc.used_slots == 0
    with pytest.raises(SequenceError, match="freed already"):
        alloc.free(7)
    with pytest.raises(SequenceError, match="freed already"):
        alloc.append(7)
    with pytest.raises(SequenceError, match="never allocated"):
        alloc.slots(3)
    with pytest.raises(ValueError, match="n_blocks >= 1"):
        BlockAllocator(0, 4)


def test_out_of_blocks_changes_nothing():
    alloc = BlockAllocator(n_blocks=3, block_size=4)
    with pytest.raises(OutOfBlocksError, match="needs 4 free block"):
        alloc.allocate(0, 13)
    assert 0 not in alloc.lengths and len(alloc.free_blocks) == 3
    alloc.allocate(1, 12)
    with pytest.raises(OutOfBlocksError, match="only 0 of 3"):
        alloc.append(1)
    assert alloc.lengths[1] == 12 and alloc.tables[1] == [0, 1, 2]


def test_fork_shares_blocks_and_copies_on_write():
    alloc = BlockAllocator(n_blocks=6, block_size=4)
    alloc.allocate(0, 6)  # blocks 0, 1 (block 1 half full)
    alloc.fork(0, 1)
    assert alloc.tables[1] == [0, 1] and alloc.ref_counts[:2] == [2, 2] and alloc.allocated_slots == 8
    assert alloc.append(1) == [(1, 2)]  # the child writes into shared block 1: it gets its own copy, block 2
    assert alloc.tables == {0: [0, 1], 1: [0, 2]} and alloc.ref_counts[:3] == [2, 1, 1]
    assert alloc.append(0) == []  # block 1 is the parent's alone now
    alloc.free(0)
    assert alloc.ref_counts[0] == 1 and 0 not in alloc.free_blocks  # still the child's
    alloc.free(1)
    assert sorted(alloc.free_blocks) == list(range(6))


def test_a_full_shared_block_needs_no_copy():
    alloc = BlockAllocator(n_blocks=4, block_size=4)
    alloc.allocate(0, 8)
    alloc.fork(0, 1)
    assert alloc.append(1) == [] and alloc.tables[1] == [0, 1, 2]


def test_random_operations_keep_every_slot_owned_once():
    """Against the invariants a correct pool keeps: live sequences' slots are disjoint (no fork
    here), each holds exactly its length, and free + owned blocks make the pool."""
    rng = random.Random(0)
    alloc = BlockAllocator(n_blocks=40, block_size=3)
    live, next_id = {}, 0  # id -> expected length
    for _ in range(2000):
        op = rng.random()
        try:
            if op < 0.3 or not live:
                n = rng.randint(0, 10)
                alloc.allocate(next_id, n)
                live[next_id], next_id = n, next_id + 1
            elif op < 0.8:
                s = rng.choice(list(live))
                n = rng.randint(1, 5)
                alloc.append(s, n)
                live[s] += n
            else:
                s = rng.choice(list(live))
                alloc.free(s)
                del live[s]
        except OutOfBlocksError:
            pass
        slots = [alloc.slots(s).tolist() for s in live]
        flat = [x for row in slots for x in row]
        assert len(flat) == len(set(flat)) == sum(live.values())
        assert [len(row) for row in slots] == list(live.values())
        owned = {b for s in live for b in alloc.tables[s]}
        assert len(owned) + len(alloc.free_blocks) == alloc.n_blocks and not owned & set(alloc.free_blocks)
        assert all(len(alloc.tables[s]) == alloc.blocks_for(live[s]) for s in live)


def test_contiguous_allocator_first_fit_and_external_fragmentation():
    alloc = ContiguousAllocator(capacity=100)
    assert alloc.allocate(0, 10, reserve=30) == 0
    assert alloc.allocate(1, 10, reserve=30) == 30
    assert alloc.allocate(2, 10, reserve=30) == 60
    alloc.free(1)
    assert alloc.holes() == [(30, 30), (90, 10)]
    with pytest.raises(OutOfBlocksError, match="fragmented into smaller holes"):  # 40 free, but no hole of 35
        alloc.allocate(3, 5, reserve=35)
    assert alloc.allocate(3, 5, reserve=20) == 30  # first fit: the lowest hole
    alloc.append(0, 20)
    with pytest.raises(OutOfBlocksError, match="reserve the longest length"):
        alloc.append(0)
    with pytest.raises(ValueError, match="hold the 9 tokens"):
        alloc.allocate(4, 9, reserve=5)
    with pytest.raises(SequenceError, match="never allocated"):
        alloc.free(9)


def test_simulation_accounting():
    requests = request_stream(60, 512, prompt_range=(8, 128), output_range=(4, 256), seed=1)
    assert all(1 <= r.output_len <= r.max_output and r.prompt_len + r.max_output <= 512 for r in requests)
    results = {p: simulate(requests, 4096, p, block_size=16, max_len=512) for p in
               ("paged", "reserve_max_len", "reserve_request")}  # fmt: skip
    for policy, r in results.items():
        assert r.capacity == 4096 and len(r.running) == len(r.resident) == len(r.used) == r.steps
        assert all(n <= m for n, m in zip(r.running, r.resident))
        assert all(u <= a <= r.capacity for u, a in zip(r.used, r.allocated))
        assert sum(r.running) == sum(q.output_len for q in requests), policy  # each token decoded once
    paged = results["paged"]
    # A sequence wastes less than one block; the contiguous caches waste far more.
    assert all(a - u < n * 16 for u, a, n in zip(paged.used, paged.allocated, paged.resident))
    assert paged.mean("stranded") == 0
    assert results["reserve_max_len"].mean("stranded") == 0  # equal regions leave no odd holes
    assert results["reserve_request"].mean("stranded") > 0
    for baseline in ("reserve_max_len", "reserve_request"):
        assert paged.mean("running") > results[baseline].mean("running")
        assert paged.internal < results[baseline].internal
        assert paged.steps < results[baseline].steps


def test_simulation_preempts_and_still_finishes():
    requests = [SimRequest(8, 40, 64) for _ in range(6)]  # each grows to 48 tokens: 3 blocks of 16
    r = simulate(requests, 160, "paged", block_size=16, max_len=64)  # 10 blocks: 5 prompts fit, not 5 answers
    assert r.preemptions > 0 and sum(r.running) == 6 * 40  # preempted requests lose no token
    with pytest.raises(ValueError, match="can never fit"):
        simulate(requests, 160, "reserve_max_len", max_len=256)
    with pytest.raises(ValueError, match="policy must be"):
        simulate(requests, 160, "buddy")


def filled_pool(lengths, n_kv_heads=2, d_head=8, block_size=4, seed=0):
    """Sequences of the given lengths scattered over a pool, and the same keys/values contiguous."""
    g = torch.Generator().manual_seed(seed)
    alloc = BlockAllocator(n_blocks=32, block_size=block_size)
    alloc.allocate(99, 5)  # a sequence that is freed again leaves holes in the pool
    for s in range(len(lengths)):
        alloc.allocate(s, 0)
    for step in range(max(lengths)):  # grow the sequences in turn: their blocks interleave
        for s, n in enumerate(lengths):
            if step < n:
                alloc.append(s)
        if step == 2:
            alloc.free(99)
    k_pool = torch.randn(32, block_size, n_kv_heads, d_head, generator=g)  # garbage where nothing was written
    v_pool = torch.randn(32, block_size, n_kv_heads, d_head, generator=g)
    k_seq = [torch.randn(n_kv_heads, n, d_head, generator=g) for n in lengths]  # (H_kv, n, D)
    v_seq = [torch.randn(n_kv_heads, n, d_head, generator=g) for n in lengths]
    for s in range(len(lengths)):
        slots = alloc.slots(s)
        k_pool.view(-1, n_kv_heads, d_head).index_copy_(0, slots, k_seq[s].transpose(0, 1))  # rows = slots
        v_pool.view(-1, n_kv_heads, d_head).index_copy_(0, slots, v_seq[s].transpose(0, 1))
    return alloc, k_pool, v_pool, k_seq, v_seq


def test_pool_layout_matches_slots():
    """Slot b * block_size + s of the flat pool is slot s of block b, which `gather_kv` reads."""
    lengths = [7, 3, 10]
    alloc, k_pool, _, k_seq, _ = filled_pool(lengths)
    gathered = gather_kv(k_pool, alloc.block_table_tensor([0, 1, 2]))  # (B, H_kv, M * bs, D)
    for s, n in enumerate(lengths):
        assert torch.equal(gathered[s, :, :n], k_seq[s])


def test_write_kv_writes_where_gather_reads():
    alloc, k_pool, _, _, _ = filled_pool([5, 6])
    new = torch.randn(2, 6, 8)  # (H_kv, n, D)
    write_kv(k_pool, alloc.slots(1), new)
    assert torch.equal(gather_kv(k_pool, alloc.block_table_tensor([1]))[0, :, :6], new)


@pytest.mark.parametrize("n_new", [1, 3])
def test_paged_attention_equals_contiguous_attention(n_new):
    lengths = [7, 3, 10]
    n_heads, d_head = 4, 8  # 4 query heads over 2 key/value heads
    alloc, k_pool, v_pool, k_seq, v_seq = filled_pool(lengths, d_head=d_head)
    q = torch.randn(len(lengths), n_heads, n_new, d_head, generator=torch.Generator().manual_seed(1))
    lens = torch.tensor(lengths)
    out = paged_attention(q, k_pool, v_pool, alloc.block_table_tensor([0, 1, 2]), lens)  # (B, H, T, D)
    # The course's attention over a contiguous, zero-padded cache with the same per-row mask: identical.
    end = max(lengths)
    k_cont = torch.stack([F.pad(k, (0, 0, 0, end - k.shape[1])) for k in k_seq])  # (B, H_kv, S, D)
    v_cont = torch.stack([F.pad(v, (0, 0, 0, end - v.shape[1])) for v in v_seq])
    query_pos = lens[:, None] - n_new + torch.arange(n_new)  # (B, T)
    mask = (torch.arange(end)[None, None, :] <= query_pos[:, :, None])[:, None]  # (B, 1, T, S)
    assert torch.equal(out, scaled_dot_product_attention(q, k_cont, v_cont, mask=mask))
    # PyTorch's attention, one sequence at a time, without padding.
    for s, n in enumerate(lengths):
        expected = F.scaled_dot_product_attention(q[s : s + 1], k_seq[s][None], v_seq[s][None],
                                                  attn_mask=causal_mask(n_new, n), enable_gqa=True)  # fmt: skip
        torch.testing.assert_close(out[s : s + 1], expected, atol=1e-6, rtol=1e-5)


def test_paged_attention_refuses_inconsistent_lengths():
    alloc, k_pool, v_pool, _, _ = filled_pool([4, 4])
    q = torch.randn(2, 4, 1, 8)
    with pytest.raises(ValueError, match="room for"):
        paged_attention(q, k_pool, v_pool, alloc.block_table_tensor([0, 1]), torch.tensor([4, 9]))
    with pytest.raises(ValueError, match="new tokens"):
        paged_attention(torch.randn(2, 4, 3, 8), k_pool, v_pool, alloc.block_table_tensor([0, 1]), torch.tensor([4, 2]))
