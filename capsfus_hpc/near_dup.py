"""Opt-in near-duplicate captions (--near-dup JACCARD): MinHash over word 3-grams of the
normalised fused caption, with an LSH index (datasketch), greedy in manifest order.

A row is dropped when an earlier kept row's caption is estimated at least `threshold` similar
(Jaccard of 3-grams); LSH proposes candidates and the MinHash estimate confirms them, and the
earliest confirmed row is named as the winner. It runs in the assemble task's greedy pass,
after a row's exact keys (reduce_dedup.settle_in_order): the index is global and in memory, about 1.5 KB per kept caption
(some 700k captions per GB), and MinHash costs about 90 us per caption on one core. So it suits
runs of a few million rows; beyond that, dedup exactly and leave near duplicates to
training-time sampling.
"""

from __future__ import annotations

import numpy as np

from .caption_rules import caption_words
from .errors import CapsfusError

NUM_PERM = 128
SHINGLE_WORDS = 3
SEED = 1  # datasketch's default: the same captions give the same signatures on every machine
# datasketch's LSH needs two bands or more, so it takes no threshold above about 0.98; a higher
# one proposes candidates at 0.98 and the MinHash estimate confirms them at the threshold.
LSH_THRESHOLD_MAX = 0.98


def shingles(caption: str) -> list[bytes]:
    words = caption_words(caption)
    if len(words) <= SHINGLE_WORDS:
        return [" ".join(words).encode()]
    return [" ".join(words[i:i + SHINGLE_WORDS]).encode() for i in range(len(words) - SHINGLE_WORDS + 1)]


def _datasketch():
    try:
        import datasketch
    except ImportError as exc:
        raise CapsfusError("--near-dup needs datasketch: pip install 'capsfus-hpc[near-dup]'") from exc
    return datasketch


class NearDuplicates:
    """The greedy pass as a state: offer kept rows in row id order, batch by batch."""

    def __init__(self, threshold: float):
        if not 0 < threshold <= 1:
            raise CapsfusError(f"--near-dup {threshold}: a Jaccard similarity must be in (0, 1]")
        self.threshold = threshold
        self._datasketch = _datasketch()
        self._index = self._datasketch.MinHashLSH(threshold=min(threshold, LSH_THRESHOLD_MAX), num_perm=NUM_PERM)
        self._kept: dict[int, np.ndarray] = {}
        # Its permutations, drawn once, serve every caption (as datasketch's MinHash.bulk does).
        self._empty = self._datasketch.MinHash(num_perm=NUM_PERM, seed=SEED)

    def signature(self, caption: str):
        """The MinHash of a caption: most of the cost, so asked only of rows the exact keys keep."""
        minhash = self._empty.copy()
        minhash.update_batch(shingles(caption))
        return minhash

    def winner(self, signature) -> int | None:
        """The earliest kept row whose caption this one nearly equals, if any."""
        values = signature.hashvalues.astype(np.uint32)  # datasketch's hashes are below 2**32
        confirmed = [c for c in self._index.query(signature) if (self._kept[c] == values).mean() >= self.threshold]
        return min(confirmed) if confirmed else None

    def keep(self, row_id: int, signature) -> None:
        """A kept row: later ones are held against it."""
        self._index.insert(row_id, signature, check_duplication=False)
        self._kept[row_id] = signature.hashvalues.astype(np.uint32)

    def find(self, rows: list[tuple[int, str]]) -> list[tuple[int, int]]:
        """(row id, winner row id) of each offered (row id, caption) that an earlier kept row's
        caption nearly equals; the others are kept, and may win later rows."""
        found = []
        for row_id, caption in rows:
            if (winner := self.winner(signature := self.signature(caption))) is not None:
                found.append((row_id, winner))
            else:
                self.keep(row_id, signature)
        return found
