import random

import numpy as np
import pyarrow as pa

from capsfus_hpc.dedup import first_seen, key_hashes, partition_of


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
