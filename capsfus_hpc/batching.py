"""How many prompts go in one generate call.

Prompts are sorted by length, so a batch is a run of them. Its memory is mostly the KV cache:
every row (prompt x beam) holds keys and values for its longest prompt plus the new tokens. A
token budget caps that sum; on a GPU without one, the budget is what fits in free memory.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

# Of the memory free after loading, the share the KV cache may take; the rest is for the
# activations, the beams' logits and the copies the cache makes as it grows and is reordered.
KV_SHARE = 0.8


def batch_size_at(sorted_lengths: list[int], begin: int, cap: int, budget: int | None, beams: int,
                  new_tokens: int) -> int:
    """How many prompts the batch starting at `begin` takes: up to `cap`, and with a token budget
    only as many as fit, counting each at the batch's longest prompt (the last: lengths are
    sorted) plus the new tokens, times the beams. Always at least one."""
    size = min(cap, len(sorted_lengths) - begin)
    if budget is None:
        return size
    while size > 1 and kv_tokens(sorted_lengths[begin + size - 1], size, beams, new_tokens) > budget:
        size -= 1
    return size


def kv_tokens(longest: int, prompts: int, beams: int, new_tokens: int) -> int:
    """What a batch costs against the budget: the tokens its KV cache holds at the end."""
    return prompts * (longest + new_tokens) * beams


def kv_bytes_per_token(config, element_size: int) -> int:
    """Bytes of keys and values one token costs across all layers of a decoder of this config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element_size


def tokens_that_fit(free_bytes: int, token_bytes: int) -> int:
    """A token budget for this much free memory, leaving room for everything but the cache."""
    return max(1, int(free_bytes * KV_SHARE) // token_bytes)


def gpu_batch_tokens(model, given: int | None) -> int:
    """The run's token budget, or without one what fits in the GPU's free memory now (after loading)."""
    free, _ = torch.cuda.mem_get_info(model.device)
    fits = tokens_that_fit(free, kv_bytes_per_token(model.config.get_text_config(), model.dtype.itemsize))
    if given is None:
        log.info("token budget: %d tokens of KV cache a batch (%.1f GiB free)", fits, free / 2**30)
        return fits
    if given > fits:
        log.warning("--batch-tokens %d is more than the %d that fit in %.1f GiB free; on out of memory the budget "
                    "is halved", given, fits, free / 2**30)
    return given
