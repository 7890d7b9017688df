"""Batches of a fixed list of examples in a seeded order: the data source of fine-tuning (chapters 11, 12).

The course's one training loop (`trainer.Trainer`) reads its batches from a *data source*, an
endless stream whose position is a small state (`trainer.DataSource`). Pretraining cuts windows
out of one token stream (`trainer.TokenBatches`); SFT, the reward model and DPO train on a list
of examples (instructions, preference pairs). `ShuffledBatches` is their source:

- epoch e visits the items in the order `torch.randperm(n)` drawn from a generator seeded with
  (seed, e), `batch_size` items at a time; the items left over at the end of an epoch (fewer
  than a batch) wait for the next epoch's order, so every batch has `batch_size` items;
- `collate(items) -> batch` turns the picked items into tensors (padding, masks);
- the position is (epoch, cursor): `state_dict` / `load_state_dict` save and restore it, so
  the trainer's checkpoints resume exactly, and a rollback goes on with fresh batches;
- with `world_size` N > 1 (data parallelism) each global batch holds N * batch_size items and
  rank r reads rows r * B .. (r + 1) * B of it, as `TokenBatches` does.

Left out: sampling with weights, and bucketing examples of similar lengths to save padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


class ShuffledBatches:
    """Batches of `items` in a new seeded order each epoch, collated by `collate`; see the module docstring.

    A `batch_size` larger than the list is cut to its length (every batch is then the whole list,
    in a new order)."""

    def __init__(
        self,
        items: Sequence[Any],
        batch_size: int,
        collate: Callable[[list[Any]], Any],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(items) == 0:
            raise ValueError("ShuffledBatches needs at least one item")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0 .. world_size - 1 = {world_size - 1}, got {rank}")
        self.items, self.collate = list(items), collate
        self.rank, self.world_size = rank, world_size
        self.global_batch = min(batch_size * world_size, len(self.items))  # items taken per step, all ranks
        if self.global_batch % world_size:
            raise ValueError(f"{len(self.items)} items cannot make batches of the same size on {world_size} ranks")
        self.batch_size = self.global_batch // world_size
        self.seed, self.epoch, self.cursor = seed, 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.items), generator=g).tolist()

    def next_batch(self) -> Any:
        """The next batch: `collate` of this rank's `batch_size` items."""
        if self.cursor + self.global_batch > len(self.items):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._epoch_order(self.epoch)
        picked = self._order[self.cursor : self.cursor + self.global_batch]
        self.cursor += self.global_batch
        mine = picked[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return self.collate([self.items[i] for i in mine])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]
        self._order = self._epoch_order(self.epoch)
