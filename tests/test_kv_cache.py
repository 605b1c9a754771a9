"""The preallocated KV cache: generation from it equals generation from transformers' DynamicCache."""

from types import SimpleNamespace

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, MistralConfig
from transformers.cache_utils import DynamicCache

from capsfus_hpc.kv_cache import CACHE_KEYWORD, PreallocatedCache, preallocatable

from .conftest import load_engine


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("prefix_cache", [True, False])
def test_generation_from_the_preallocated_cache_equals_generation_from_a_dynamic_one(smoke_model, pairs, beams,
                                                                                     prefix_cache):
    allocated = load_engine(smoke_model, num_beams=beams, max_new_tokens=24, batch_size=8, prefix_cache=prefix_cache)
    dynamic = load_engine(smoke_model, num_beams=beams, max_new_tokens=24, batch_size=8, prefix_cache=prefix_cache)
    dynamic.preallocate = False
    caches, generate = [], allocated.model.generate
    allocated.model.generate = lambda **kwargs: (caches.append(kwargs[CACHE_KEYWORD]), generate(**kwargs))[1]
    assert allocated.fuse(pairs) == dynamic.fuse(pairs)
    assert len(caches) == 3 and all(isinstance(cache, PreallocatedCache) for cache in caches)


def _random_layers(rows, length, layers=2):
    return [(torch.randn(rows, 2, length, 4), torch.randn(rows, 2, length, 4)) for _ in range(layers)]


def test_updates_and_beam_reorders_match_a_dynamic_cache_and_greedy_steps_never_reallocate():
    allocated, dynamic = PreallocatedCache(2, capacity=9), DynamicCache()
    for step, length in enumerate([5, 1, 1, 1]):
        for index, (keys, values) in enumerate(_random_layers(6, length)):
            got, want = allocated.update(keys, values, index), dynamic.update(keys, values, index)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        if step == 0:
            buffers = [layer.key_buffer for layer in allocated.layers]
        elif step == 1:  # greedy so far: written in place
            assert all(layer.key_buffer is buffer for layer, buffer in zip(allocated.layers, buffers))
        if step >= 1:
            beam_idx = torch.tensor([1, 1, 0, 5, 3, 3])
            allocated.reorder_cache(beam_idx)
            dynamic.reorder_cache(beam_idx)
        for mine, theirs in zip(allocated.layers, dynamic.layers):
            assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
    assert allocated.get_seq_length() == dynamic.get_seq_length() == 8


def test_a_prefix_starts_every_row_and_the_capacity_is_a_hard_limit():
    prefix = DynamicCache()
    for index, (keys, values) in enumerate(_random_layers(1, 3)):
        prefix.update(keys, values, index)
    cache = PreallocatedCache(2, capacity=4).start_from(prefix, rows=5)
    assert cache.get_seq_length() == 3
    assert torch.equal(cache.layers[1].keys, prefix.layers[1].keys.expand(5, -1, -1, -1))
    cache.update(*_random_layers(5, 1, layers=1)[0], 0)
    with pytest.raises(ValueError, match="allocated for 4 tokens; 5"):
        cache.update(*_random_layers(5, 2, layers=1)[0], 1)


def test_only_models_whose_cache_is_all_plain_layers_get_it(smoke_model):
    def model(config, **generation):
        return SimpleNamespace(config=config, generation_config=GenerationConfig(**generation))

    assert load_engine(smoke_model).preallocate
    assert preallocatable(model(LlamaConfig(num_hidden_layers=2)))
    assert not preallocatable(model(MistralConfig(num_hidden_layers=2, sliding_window=16)))  # sliding layers
    assert not preallocatable(model(LlamaConfig(num_hidden_layers=2), cache_implementation="static"))


def test_what_a_preallocated_layer_cannot_do_fails_loudly():
    cache = PreallocatedCache(1, capacity=4)
    cache.update(*_random_layers(2, 1, layers=1)[0], 0)
    with pytest.raises(NotImplementedError):
        cache.batch_repeat_interleave(3)
