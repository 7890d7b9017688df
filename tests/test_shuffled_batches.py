"""ShuffledBatches (llm_course.shuffled_batches): the data source of SFT, the reward model and DPO."""

import pytest
import torch

from llm_course.shuffled_batches import ShuffledBatches


def _as_list(items):
    return list(items)


def test_each_epoch_visits_every_item_once_in_a_new_order():
    source = ShuffledBatches(range(10), 5, _as_list, seed=0)
    epoch0 = source.next_batch() + source.next_batch()
    epoch1 = source.next_batch() + source.next_batch()
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1 and source.epoch == 1
    assert ShuffledBatches(range(10), 5, _as_list, seed=0).next_batch() == epoch0[:5]  # seeded
    assert ShuffledBatches(range(10), 5, _as_list, seed=1).next_batch() != epoch0[:5]


def test_leftover_items_wait_for_the_next_epoch():
    source = ShuffledBatches(range(10), 4, _as_list, seed=0)
    first, second, third = source.next_batch(), source.next_batch(), source.next_batch()
    assert len(set(first + second)) == 8 and len(third) == 4 and source.epoch == 1
    assert ShuffledBatches(range(3), 8, _as_list).next_batch().__len__() == 3  # cut to the list's length


def test_state_dict_resumes_exactly():
    source = ShuffledBatches(range(7), 3, _as_list, seed=4)
    for _ in range(3):
        source.next_batch()
    state = source.state_dict()
    want = [source.next_batch() for _ in range(5)]
    restored = ShuffledBatches(range(7), 3, _as_list, seed=0)
    restored.load_state_dict(state)
    assert [restored.next_batch() for _ in range(5)] == want


def test_ranks_read_their_rows_of_the_global_batch():
    one = ShuffledBatches(range(12), 4, _as_list, seed=2)
    ranks = [ShuffledBatches(range(12), 2, _as_list, seed=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):  # across an epoch boundary
        assert ranks[0].next_batch() + ranks[1].next_batch() == one.next_batch()


def test_collate_makes_the_batch():
    source = ShuffledBatches([torch.tensor([i, i]) for i in range(4)], 2, torch.stack)
    assert source.next_batch().shape == (2, 2)


def test_bad_input():
    with pytest.raises(ValueError, match="at least one item"):
        ShuffledBatches([], 2, _as_list)
    with pytest.raises(ValueError, match="batch_size"):
        ShuffledBatches([1], 0, _as_list)
    with pytest.raises(ValueError, match="rank"):
        ShuffledBatches([1, 2], 1, _as_list, rank=2, world_size=2)
