"""A paged KV cache: PagedAttention's block table as a memory allocator (chapter 09).

`llm_course.kv_cache.KVCache` gives every sequence one contiguous buffer of its longest
possible length. A server that does the same must reserve, for each request, room for the
longest answer it might produce: most of it is never written (internal fragmentation), and
reservations of different sizes leave holes between them too small for the next request
(external fragmentation). vLLM's PagedAttention (Kwon et al., 2023, "Efficient Memory
Management for Large Language Model Serving with PagedAttention") borrows virtual memory's
answer: the cache is a pool of fixed-size *blocks* of `block_size` token slots; a sequence
owns a *block table*, the list of its blocks in order, and gets a new block only when its
last one is full. Any free block serves any sequence, so nothing is stranded between
reservations, and a sequence wastes at most block_size - 1 slots.

Implements
- `BlockAllocator`: the pool's free list, the block tables, `allocate` / `append` / `free`,
  and `fork` with copy-on-write (two sequences share a prompt's blocks until one writes into
  a shared block; `append` then returns the (source, copy) blocks the caller must copy);
- `ContiguousAllocator`: the baseline, one contiguous region per sequence, first fit;
- `simulate`: a stream of requests served until all are done under a memory budget, with
  either allocator, measuring the memory used, wasted inside allocations and stranded
  between them, and how many sequences run at once;
- `write_kv`, `gather_kv`, `paged_attention`: attention that reads keys and values through the block
  tables (a gather from the pool), equal to attention over a contiguous cache.

Left out: the fused kernel that reads blocks in place instead of gathering them, swapping
blocks to host memory (here a request that runs out of blocks is preempted and recomputed,
vLLM's other policy), prefix caching across requests, and plugging the pool into the model.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch
from einops import rearrange

from llm_course.attention import scaled_dot_product_attention


class OutOfBlocksError(RuntimeError):
    """Raised when an allocation needs more memory than is free (nothing is allocated then)."""


class SequenceError(KeyError):
    """Raised for an unknown sequence id, one freed already, or one that exists already."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class _Sequences:
    """Bookkeeping shared by both allocators: which sequences exist, which were freed, their lengths."""

    def __init__(self):
        self.lengths: dict[int, int] = {}  # sequence id -> tokens stored
        self._freed: set[int] = set()

    def _check_new(self, seq_id: int, n_tokens: int) -> None:
        if seq_id in self.lengths:
            raise SequenceError(f"sequence {seq_id} is already allocated; free it first or use a new id")
        if n_tokens < 0:
            raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")

    def _check_known(self, seq_id: int) -> None:
        if seq_id in self.lengths:
            return
        if seq_id in self._freed:
            raise SequenceError(f"sequence {seq_id} was freed already (freed twice, or used after free)")
        raise SequenceError(f"unknown sequence {seq_id}: it was never allocated")

    @property
    def used_slots(self) -> int:
        """Token slots that hold a token."""
        return sum(self.lengths.values())


class BlockAllocator(_Sequences):
    """A pool of `n_blocks` blocks of `block_size` token slots, and each sequence's block table.

    Slot s of block b is physical slot b * block_size + s of the pool (the layout of `gather_kv`).
    Blocks are reference-counted: `fork` shares them, `free` returns a block to the pool when its
    last owner lets go.
    """

    def __init__(self, n_blocks: int, block_size: int):
        super().__init__()
        if n_blocks < 1 or block_size < 1:
            raise ValueError(f"need n_blocks >= 1 and block_size >= 1, got {n_blocks} and {block_size}")
        self.n_blocks, self.block_size = n_blocks, block_size
        self.free_blocks: deque[int] = deque(range(n_blocks))  # the next block handed out is on the left
        self.ref_counts = [0] * n_blocks
        self.tables: dict[int, list[int]] = {}  # sequence id -> its blocks, in token order

    def blocks_for(self, n_tokens: int) -> int:
        """Blocks that hold n_tokens tokens: ceil(n_tokens / block_size)."""
        return math.ceil(n_tokens / self.block_size)

    def _take(self, n: int, why: str) -> list[int]:
        if n > len(self.free_blocks):
            raise OutOfBlocksError(
                f"{why} needs {n} free block(s) of {self.block_size} slots, but only {len(self.free_blocks)} of "
                f"{self.n_blocks} are free; free a sequence or make the pool larger"
            )
        blocks = [self.free_blocks.popleft() for _ in range(n)]
        for b in blocks:
            self.ref_counts[b] = 1
        return blocks

    def allocate(self, seq_id: int, n_tokens: int) -> list[int]:
        """Start sequence `seq_id` holding n_tokens tokens (its prompt); returns its block table."""
        self._check_new(seq_id, n_tokens)
        self.tables[seq_id] = self._take(self.blocks_for(n_tokens), f"sequence {seq_id} ({n_tokens} tokens)")
        self.lengths[seq_id] = n_tokens
        self._freed.discard(seq_id)
        return self.tables[seq_id]

    def append(self, seq_id: int, n_tokens: int = 1) -> list[tuple[int, int]]:
        """Grow sequence `seq_id` by n_tokens, taking new blocks as its last one fills.

        If its last block is shared (after `fork`) and has room, the sequence first gets its own
        copy of it (copy-on-write). Returns the (source, destination) block pairs whose contents the
        caller must copy, [] usually. Raises `OutOfBlocksError` (and changes nothing) if the pool
        cannot supply the blocks."""
        self._check_known(seq_id)
        table, length = self.tables[seq_id], self.lengths[seq_id]
        shared_last = length % self.block_size != 0 and self.ref_counts[table[-1]] > 1
        n_new = self.blocks_for(length + n_tokens) - len(table)
        new = self._take(n_new + int(shared_last), f"appending {n_tokens} token(s) to sequence {seq_id}")
        copies = []
        if shared_last:
            source, own = table[-1], new.pop()
            self.ref_counts[source] -= 1
            table[-1] = own
            copies.append((source, own))
        table.extend(new)
        self.lengths[seq_id] = length + n_tokens
        return copies

    def fork(self, parent: int, child: int) -> list[int]:
        """Start sequence `child` as a copy of `parent` that shares its blocks (beam search, parallel
        samples of one prompt): no memory is copied until one of them writes into a shared block."""
        self._check_known(parent)
        self._check_new(child, 0)
        self.tables[child] = list(self.tables[parent])
        for b in self.tables[child]:
            self.ref_counts[b] += 1
        self.lengths[child] = self.lengths[parent]
        self._freed.discard(child)
        return self.tables[child]

    def free(self, seq_id: int) -> None:
        """Release sequence `seq_id`; its blocks that no other sequence shares return to the pool."""
        self._check_known(seq_id)
        for b in self.tables.pop(seq_id):
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self.free_blocks.append(b)
        del self.lengths[seq_id]
        self._freed.add(seq_id)

    def slots(self, seq_id: int) -> torch.Tensor:
        """(n,) the physical slot of each of the sequence's tokens, in order."""
        self._check_known(seq_id)
        positions = torch.arange(self.lengths[seq_id])
        table = torch.tensor(self.tables[seq_id], dtype=torch.long)
        return table[positions // self.block_size] * self.block_size + positions % self.block_size

    def block_table_tensor(self, seq_ids: list[int], device: torch.device | str | None = None) -> torch.Tensor:
        """(B, M) block tables of the given sequences, M the longest; shorter rows padded with block 0
        (whatever it holds is masked by `paged_attention`'s lengths)."""
        for s in seq_ids:
            self._check_known(s)
        width = max(len(self.tables[s]) for s in seq_ids)
        rows = [self.tables[s] + [0] * (width - len(self.tables[s])) for s in seq_ids]
        return torch.tensor(rows, dtype=torch.long, device=device)  # (B, M)

    def can_allocate(self, n_tokens: int) -> bool:
        return self.blocks_for(n_tokens) <= len(self.free_blocks)

    @property
    def capacity(self) -> int:
        return self.n_blocks * self.block_size

    @property
    def allocated_slots(self) -> int:
        """Token slots in blocks that some sequence owns (shared blocks counted once)."""
        return (self.n_blocks - len(self.free_blocks)) * self.block_size


class ContiguousAllocator(_Sequences):
    """The baseline: `capacity` token slots in one arena; each sequence gets one contiguous region
    of `reserve` slots (at least its tokens), placed at the lowest address where it fits (first fit)."""

    def __init__(self, capacity: int):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 slot, got {capacity}")
        self.capacity = capacity
        self.regions: dict[int, tuple[int, int]] = {}  # sequence id -> (first slot, reserved slots)

    def holes(self) -> list[tuple[int, int]]:
        """The free regions (first slot, size), in address order."""
        holes, position = [], 0
        for start, size in sorted(self.regions.values()):
            if start > position:
                holes.append((position, start - position))
            position = start + size
        if position < self.capacity:
            holes.append((position, self.capacity - position))
        return holes

    def can_allocate(self, reserve: int) -> bool:
        return any(size >= reserve for _, size in self.holes())

    def allocate(self, seq_id: int, n_tokens: int, reserve: int) -> int:
        """Start sequence `seq_id` with n_tokens tokens in a region of `reserve` slots; returns its first slot."""
        self._check_new(seq_id, n_tokens)
        if reserve < max(n_tokens, 1):
            raise ValueError(f"reserve ({reserve}) must be at least 1 and hold the {n_tokens} tokens")
        for start, size in self.holes():
            if size >= reserve:
                self.regions[seq_id] = (start, reserve)
                self.lengths[seq_id] = n_tokens
                self._freed.discard(seq_id)
                return start
        free = self.capacity - self.allocated_slots
        cause = "free memory is fragmented into smaller holes" if free >= reserve else "not enough free memory"
        raise OutOfBlocksError(
            f"sequence {seq_id} needs {reserve} contiguous slots; {free} are free, the largest hole is "
            f"{max((s for _, s in self.holes()), default=0)} ({cause})"
        )

    def append(self, seq_id: int, n_tokens: int = 1) -> list[tuple[int, int]]:
        """Grow sequence `seq_id` inside its region (which never moves). Returns [] (nothing to copy)."""
        self._check_known(seq_id)
        reserved = self.regions[seq_id][1]
        if self.lengths[seq_id] + n_tokens > reserved:
            raise OutOfBlocksError(
                f"sequence {seq_id} holds {self.lengths[seq_id]} of its {reserved} reserved slots and cannot "
                f"take {n_tokens} more: a contiguous cache must reserve the longest length up front"
            )
        self.lengths[seq_id] += n_tokens
        return []

    def free(self, seq_id: int) -> None:
        self._check_known(seq_id)
        del self.regions[seq_id], self.lengths[seq_id]
        self._freed.add(seq_id)

    @property
    def allocated_slots(self) -> int:
        return sum(size for _, size in self.regions.values())


# ---------------------------------------------------------------------------------------
# Serving a stream of requests
# ---------------------------------------------------------------------------------------


@dataclass
class SimRequest:
    """A request as the memory sees it: a prompt, the answer it will turn out to have, and the
    longest answer it may have (all a contiguous cache can plan for)."""

    prompt_len: int  # tokens stored at admission
    output_len: int  # tokens it will generate (unknown in advance: it stops at end-of-text)
    max_output: int  # the most it may generate (max_new_tokens)


def request_stream(
    n: int, max_len: int, prompt_range: tuple[int, int] = (16, 512), output_range: tuple[int, int] = (8, 1024),
    seed: int = 0,
) -> list[SimRequest]:
    """n requests, prompts uniform in prompt_range, outputs log-uniform in output_range (many short
    answers, a few long ones). Each request's max_output is the power of two at or above its
    answer (a client that guessed well), capped so that prompt + max_output <= max_len."""
    if prompt_range[1] >= max_len:
        raise ValueError(f"prompts of up to {prompt_range[1]} tokens leave no room in max_len {max_len}")
    g = torch.Generator().manual_seed(seed)
    requests = []
    for _ in range(n):
        prompt = int(torch.randint(prompt_range[0], prompt_range[1] + 1, (1,), generator=g))
        u = float(torch.rand((), generator=g))
        limit = max_len - prompt
        output = max(1, min(limit, round(output_range[0] * (output_range[1] / output_range[0]) ** u)))
        requests.append(SimRequest(prompt, output, min(limit, 2 ** math.ceil(math.log2(output)))))
    return requests


@dataclass
class SimResult:
    """What serving a request stream cost: counts per decode step, which `mean` averages."""

    steps: int = 0  # decode steps until every request finished
    preemptions: int = 0  # requests evicted (and later recomputed) for lack of blocks
    running: list[int] = field(default_factory=list)  # sequences that decoded a token, per step
    resident: list[int] = field(default_factory=list)  # sequences holding memory at the step's start
    used: list[int] = field(default_factory=list)  # slots holding a token, per step
    allocated: list[int] = field(default_factory=list)  # slots owned by sequences, per step
    stranded: list[int] = field(default_factory=list)  # free slots a waiting request could not use, per step
    capacity: int = 0

    def mean(self, name: str) -> float:
        """The mean over steps of a per-step list: sequences for running/resident, else a fraction of capacity."""
        values = getattr(self, name)
        return sum(values) / len(values) / (1 if name in ("running", "resident") else self.capacity)

    @property
    def internal(self) -> float:
        """Mean fraction of the budget owned by sequences but holding no token."""
        return self.mean("allocated") - self.mean("used")


def simulate(
    requests: list[SimRequest], capacity: int, policy: str = "paged", block_size: int = 16, max_len: int = 2048,
    watermark: float = 0.01,
) -> SimResult:
    """Serve `requests` in order with `capacity` token slots; each step decodes one token for every
    running request, and waiting requests are admitted (first come, first served) when they fit.

    policy "paged": a `BlockAllocator` of capacity // block_size blocks. A request is admitted if
    the blocks for its tokens and the next one leave a `watermark` fraction of the pool free (vLLM's
    rule); it then takes one block at a time. If a running request needs a block and none is free,
    the most recently admitted request is preempted: its blocks are freed and it waits again at the
    head of the queue; readmitted, it recomputes the keys and values of its prompt and of the tokens it
    had generated (vLLM's recompute mode), so no output is lost.
    policy "reserve_max_len": a `ContiguousAllocator` region of max_len slots per request.
    policy "reserve_request": a region of prompt_len + max_output slots (the request's own limit).
    """
    if policy not in ("paged", "reserve_max_len", "reserve_request"):
        raise ValueError(f"policy must be 'paged', 'reserve_max_len' or 'reserve_request', got {policy!r}")
    paged = policy == "paged"
    alloc = BlockAllocator(capacity // block_size, block_size) if paged else ContiguousAllocator(capacity)
    spare = int(watermark * alloc.capacity) // block_size * block_size if paged else 0  # slots kept free
    generated = [0] * len(requests)  # tokens each request has produced, kept across preemptions

    def need(i: int) -> int:  # slots request i must find free to be admitted
        r = requests[i]
        if paged:
            return alloc.blocks_for(r.prompt_len + generated[i] + 1) * block_size
        return max_len if policy == "reserve_max_len" else r.prompt_len + r.max_output

    for i, r in enumerate(requests):
        if need(i) > alloc.capacity - spare or (paged and r.prompt_len + r.output_len > alloc.capacity):
            raise ValueError(f"request {i} can never fit in {capacity} slots with policy {policy!r}")
    result = SimResult(capacity=alloc.capacity)
    waiting = deque(range(len(requests)))
    running: list[int] = []  # request ids in admission order
    while waiting or running:
        while waiting and alloc.can_allocate(need(waiting[0]) + spare):  # admit in order
            i = waiting.popleft()
            held = requests[i].prompt_len + generated[i]
            if paged:
                alloc.allocate(i, held)
            else:
                alloc.allocate(i, held, reserve=need(i))
            running.append(i)
        free = alloc.capacity - alloc.allocated_slots
        head_fits_in_total = bool(waiting) and need(waiting[0]) + spare <= free
        result.stranded.append(free if head_fits_in_total else 0)  # free, yet the next request waits
        result.resident.append(len(running))
        result.used.append(alloc.used_slots)
        result.allocated.append(alloc.allocated_slots)
        decoded = 0
        for i in list(running):  # one decode step
            if i not in running:
                continue  # preempted during this step
            while i in running:
                try:
                    alloc.append(i)
                    generated[i] += 1
                    decoded += 1
                    break
                except OutOfBlocksError:
                    victim = running.pop()  # the most recently admitted request
                    alloc.free(victim)
                    waiting.appendleft(victim)
                    result.preemptions += 1
            if i in running and generated[i] == requests[i].output_len:
                running.remove(i)
                alloc.free(i)
        result.running.append(decoded)
        result.steps += 1
    return result


# ---------------------------------------------------------------------------------------
# Attention through the block table
# ---------------------------------------------------------------------------------------


def write_kv(pool: torch.Tensor, slots: torch.Tensor, new: torch.Tensor) -> None:
    """Store a sequence's new keys (or values) new (H_kv, n, D) at its physical slots (n,), in place.

    pool (N_blocks, block_size, H_kv, D): slot s of block b is row b * block_size + s of the
    pool seen as (N_blocks * block_size, H_kv, D), which is what `BlockAllocator.slots` returns.
    """
    pool.view(-1, pool.shape[2], pool.shape[3])[slots] = new.transpose(0, 1)  # (n, H_kv, D) rows


def gather_kv(pool: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """Each row's keys (or values) in token order, read through its block table.

    pool (N_blocks, block_size, H_kv, D); block_tables (B, M) block ids -> (B, H_kv, M * block_size, D).
    """
    blocks = pool[block_tables]  # (B, M, block_size, H_kv, D)
    return rearrange(blocks, "b m s h d -> b h (m s) d")  # (B, H_kv, M * block_size, D)


def paged_attention(
    q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_tables: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Attention of each row's new queries over its cached keys, read through the block tables.

    q (B, H, T, D): the queries of each row's last T tokens; k_pool, v_pool (N_blocks, block_size,
    H_kv, D); block_tables (B, M); lengths (B,) tokens each row holds, the T new ones
    included. Query t of row b sits at position lengths[b] - T + t and sees keys 0 .. that
    position (causal). Returns (B, H, T, D), equal to `scaled_dot_product_attention` over the
    same keys stored contiguously.
    """
    n_new, end = q.shape[-2], int(lengths.max())
    room = block_tables.shape[1] * k_pool.shape[1]  # M blocks of block_size slots
    if end > room:
        raise ValueError(f"a row holds {end} tokens but the block tables have room for {room}")
    if int(lengths.min()) < n_new:
        raise ValueError(f"every row must hold its {n_new} new tokens; lengths are {lengths.tolist()}")
    k = gather_kv(k_pool, block_tables)[:, :, :end]  # (B, H_kv, S, D)
    v = gather_kv(v_pool, block_tables)[:, :, :end]  # (B, H_kv, S, D)
    query_pos = lengths[:, None] - n_new + torch.arange(n_new, device=q.device)  # (B, T)
    keys = torch.arange(end, device=q.device)  # (S,)
    mask = (keys[None, None, :] <= query_pos[:, :, None])[:, None]  # (B, 1, T, S)
    return scaled_dot_product_attention(q, k, v, mask=mask)  # (B, H, T, D)
