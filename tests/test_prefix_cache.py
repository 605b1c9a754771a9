"""The instruction's KV cache: computed once, and generation from it equals generation without it."""

import pytest

from capsfus_hpc.engine import FusionEngine
from capsfus_hpc.prefix_cache import PrefixCache, positions_follow_mask, shared_prefix
from capsfus_hpc.prompt import PromptBuilder, template

from .conftest import load_engine


def test_every_real_prompt_starts_with_the_shared_prefix_and_it_is_most_of_the_instruction(smoke_model, real_records):
    engine = load_engine(smoke_model)
    prefix = shared_prefix(engine.tokenizer)
    instruction = engine.tokenizer(template().split("Sentence 1: {")[0]).input_ids
    assert len(prefix) >= len(instruction) - 1
    prompts = PromptBuilder(engine.tokenizer).encode([(r["laion_2b"], r["laion_coco"]) for r in real_records[:500]])
    assert all(ids[:len(prefix)] == prefix for ids in prompts)
    assert PrefixCache(engine.model, prefix).covers(prompts)


@pytest.mark.parametrize("beams", [1, 3])
def test_generation_from_the_prefix_cache_equals_generation_without_it(smoke_model, pairs, beams):
    cached = load_engine(smoke_model, num_beams=beams, max_new_tokens=24, batch_size=8)
    plain = load_engine(smoke_model, num_beams=beams, max_new_tokens=24, batch_size=8, prefix_cache=False)
    assert plain.prefix is None and cached.prefix is not None
    rows, for_rows = [], cached.prefix.for_rows
    cached.prefix.for_rows = lambda n, capacity=None: (rows.append(n), for_rows(n, capacity))[1]
    assert cached.fuse(pairs) == plain.fuse(pairs)
    assert rows == [8 * beams] * 3  # every batch started from the cache, repeated to prompts x beams


def test_a_batch_with_a_prompt_outside_the_prefix_takes_the_plain_path(smoke_model, pairs):
    cached = load_engine(smoke_model, num_beams=1, max_new_tokens=12, batch_size=4)
    prompts = cached.prompts.encode(pairs[:4])
    odd = [cached.tokenizer.bos_token_id] + prompts[0][2:]  # the instruction's first word missing
    assert not cached.prefix.covers(prompts[1:] + [odd])
    assert not cached.prefix.covers([cached.prefix.ids])  # nothing after the prefix: nothing to start from
    plain = load_engine(smoke_model, num_beams=1, max_new_tokens=12, batch_size=4, prefix_cache=False)
    assert cached.fuse_encoded(prompts[1:] + [odd]) == plain.fuse_encoded(prompts[1:] + [odd])


def test_a_model_whose_forward_takes_no_position_ids_goes_without_the_prefix_cache(smoke_model, pairs):
    # transformers then counts positions from the cache, padding included: the prefix layout,
    # padding in the middle, would shift them (some remote-code models' forward is like this).
    plain = load_engine(smoke_model, num_beams=1, max_new_tokens=16, batch_size=8, prefix_cache=False)
    engine = load_engine(smoke_model, num_beams=1, max_new_tokens=16, batch_size=8)
    forward = engine.model.forward

    def without_position_ids(input_ids=None, attention_mask=None, use_cache=None, **kwargs):
        return forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **kwargs)

    engine.model.forward = without_position_ids
    assert positions_follow_mask(plain.model) and not positions_follow_mask(engine.model)
    rebuilt = FusionEngine(engine.model, engine.tokenizer, 1, 16, 256, 8, prefix_ids=engine.prefix.ids)
    assert rebuilt.prefix is None
    assert rebuilt.fuse(pairs[:24]) == plain.fuse(pairs[:24])
