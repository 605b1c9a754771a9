"""Exact dedup of normalised keys: hash partitions, then the first row of each key per partition.

A key always lands in the same partition, so partitions dedup independently (in parallel, or
as SLURM array tasks) and the groups do not depend on how many partitions there are. Within a
partition rows are in row id order, so the first occurrence of a key names its group
(reduce_dedup.py; which row wins is settled in assemble). Keys are compared byte for byte; the
64-bit hash only places them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from .caption_screen import string_buffers

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True)
def _hashes(offsets, data, out):
    for row in range(len(out)):
        value = _FNV_OFFSET
        for k in range(offsets[row], offsets[row + 1]):
            value = (value ^ np.uint64(data[k])) * _FNV_PRIME
        out[row] = value * _MIX  # spread the low bits, which pick the partition


def key_hashes(keys: pa.Array) -> np.ndarray:
    """A 64-bit hash of every key's bytes (nulls hash as the empty string)."""
    offsets, data, _ = string_buffers(keys)
    out = np.empty(len(offsets) - 1, np.uint64)
    _hashes(offsets, data, out)
    return out


def partition_of(hashes: np.ndarray, partitions: int) -> np.ndarray:
    return ((hashes >> np.uint64(32)) % np.uint64(partitions)).astype(np.int64)


@njit(cache=True, nogil=True)
def _same(data, offsets, a, b):
    length = offsets[a + 1] - offsets[a]
    if offsets[b + 1] - offsets[b] != length:
        return False
    for k in range(length):
        if data[offsets[a] + k] != data[offsets[b] + k]:
            return False
    return True


@njit(cache=True, nogil=True)
def _first_seen(offsets, data, hashes, first):
    size = 1
    while size < 2 * len(first) + 2:
        size *= 2
    table = np.full(size, -1, np.int64)
    mask = np.uint64(size - 1)
    for row in range(len(first)):
        slot = np.int64(hashes[row] & mask)
        while True:
            seen = table[slot]
            if seen < 0:
                table[slot] = row
                first[row] = row
                break
            if hashes[seen] == hashes[row] and _same(data, offsets, seen, row):
                first[row] = seen
                break
            slot = (slot + 1) & (size - 1)


def first_seen(keys: pa.Array) -> np.ndarray:
    """For each row, the index of the first row with the same key (itself if it is the first)."""
    offsets, data, valid = string_buffers(keys)
    if not valid.all():
        raise ValueError("keys to dedup must not be null")
    hashes = key_hashes(keys)
    first = np.empty(len(hashes), np.int64)
    _first_seen(offsets, data, hashes, first)
    return first
