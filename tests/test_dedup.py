import random

import numpy as np
import pyarrow as pa
import pytest

from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.dedup import first_seen, key_hashes, partition_of
from capsfus_hpc.reduce_dedup import DuplicateGroups


def test_first_seen_names_the_first_row_of_each_key():
    rng = random.Random(0)
    keys = [f"k{rng.randrange(300)}" for _ in range(2000)] + ["", "", "é", "e\u0301"]
    winners = {}
    expected = [winners.setdefault(k, i) for i, k in enumerate(keys)]
    assert first_seen(pa.array(keys)).tolist() == expected


def test_equal_hashes_are_not_taken_for_equal_keys():
    keys = pa.array(["a", "b", "a"])
    assert first_seen(keys).tolist() == [0, 1, 0]
    assert first_seen(pa.array([], pa.string())).tolist() == []


def test_a_key_always_lands_in_the_same_partition():
    keys = pa.array([f"https://example.org/{i % 50}.jpg" for i in range(1000)])
    where = partition_of(key_hashes(keys), 7)
    assert set(where.tolist()) == set(range(7))
    for i in range(50, 1000):
        assert where[i] == where[i % 50]
    assert np.array_equal(key_hashes(keys), key_hashes(pa.array(keys.to_pylist(), pa.large_string())))


def test_the_first_offered_row_of_a_group_wins_across_batches():
    # Groups (by first row id): {1, 4, 9} and {2, 3}; rows arrive in batches, in row id order.
    groups = DuplicateGroups(np.array([9, 1, 4, 2, 3]), np.array([1, 1, 1, 2, 2]))
    row_ids = np.arange(0, 12)
    offered = np.ones(12, np.bool_)
    offered[1] = False  # row 1 failed the caption rules: row 4 is its group's first to pass
    first, second = groups.settle(row_ids[:5], offered[:5]), groups.settle(row_ids[5:], offered[5:])
    assert first.tolist() == [-1, -1, -1, 2, -1]
    assert second.tolist() == [-1, -1, -1, -1, 4, -1, -1]
    assert DuplicateGroups(np.zeros(0, np.int64), np.zeros(0, np.int64)).settle(row_ids, offered).tolist() == [-1] * 12
    groups.check_all_seen()


@pytest.mark.parametrize("batches", [[[4, 5, 6], [30, 35]], [[4, 5, 6, 25]]])
def test_a_row_that_shares_its_key_but_was_not_read_stops_the_reduce(batches):
    # Row 25 (between two batches) or 35 (after the last) is never read: the parts changed.
    groups = DuplicateGroups(np.array([5, 25, 35]), np.array([5, 5, 5]))
    with pytest.raises(CapsfusError, match="the parts changed"):
        for row_ids in batches:
            groups.settle(np.array(row_ids), np.ones(len(row_ids), np.bool_))
        groups.check_all_seen()
