"""The CapsFusion instruction's keys and values, computed once and shared by every batch.

About three quarters of every prompt is the same instruction, and a token's keys and values
depend only on the tokens before it, so they are the same in every row. The engine computes them
once (one row) and starts each batch from a copy repeated to the batch's rows, so the model only
computes the instruction once per task instead of once per prompt.

Rows are laid out [instruction, padding, rest] instead of [padding, instruction, rest]: the
instruction then sits at positions 0.. in every row, the attention mask hides the padding in the
middle, and positions come from the mask (transformers counts them from it), so every token
keeps the position it has in the plain layout.

Token ids decide, not text: the shared prefix is the longest run of tokens that the template
starts with whatever the captions, less one token (a tokenizer may merge the last one with a
caption's first), and a batch uses the cache only when each of its prompts starts with exactly
those ids and has a token after them; otherwise the batch takes the plain path.
"""

from __future__ import annotations

import copy
import inspect

import torch

from .kv_cache import CACHE_KEYWORD, PreallocatedCache
from .prompt import PROBES, render


def shared_prefix(tokenizer) -> list[int]:
    """Token ids every CapsFusion prompt starts with, under this tokenizer."""
    encoded = [tokenizer(render(raw, synthetic)).input_ids for raw, synthetic in PROBES]
    length = 0
    while all(len(ids) > length for ids in encoded) and len({ids[length] for ids in encoded}) == 1:
        length += 1
    return encoded[0][: max(length - 1, 0)]


def positions_follow_mask(model) -> bool:
    """Whether generate counts positions from the attention mask, as the layout needs: transformers
    does so only for a decoder whose forward takes position_ids (some remote-code models' does not;
    their positions would count the padding in the middle)."""
    return not model.config.is_encoder_decoder and "position_ids" in inspect.signature(model.forward).parameters


class PrefixCache:
    """The prefix's cache on the model's device, computed at first use."""

    def __init__(self, model, ids: list[int]):
        self.model = model
        self.ids = list(ids)
        self._cache = None

    def covers(self, prompts: list[list[int]]) -> bool:
        """Whether every prompt starts with the prefix and goes on after it."""
        n = len(self.ids)
        return n > 0 and all(len(ids) > n and ids[:n] == self.ids for ids in prompts)

    @torch.inference_mode()
    def for_rows(self, rows: int, capacity: int | None = None):
        """A cache holding the prefix for `rows` rows (prompts x beams), for generate to extend:
        allocated for `capacity` tokens (kv_cache.py), or without one a DynamicCache."""
        if self._cache is None:
            prefix = torch.tensor([self.ids], dtype=torch.long, device=self.model.device)
            self._cache = getattr(self.model(input_ids=prefix, use_cache=True), CACHE_KEYWORD)
        if capacity is not None:
            return PreallocatedCache(len(self._cache.layers), capacity).start_from(self._cache, rows)
        cache = copy.deepcopy(self._cache)
        cache.batch_repeat_interleave(rows)
        return cache
