import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from capsfus_hpc.batching import KV_SHARE, batch_size_at, kv_bytes_per_token, tokens_that_fit
from capsfus_hpc.kv_cache import CACHE_KEYWORD


def test_batches_by_token_budget_take_more_short_prompts_than_long_ones():
    lengths = [50] * 6 + [200] * 6
    assert batch_size_at(lengths, 0, cap=64, budget=900, beams=1, new_tokens=50) == 6  # 6 x 100 fits; a 7th is long
    assert batch_size_at(lengths, 6, cap=64, budget=900, beams=1, new_tokens=50) == 3  # 3 x 250
    assert batch_size_at(lengths, 4, cap=64, budget=900, beams=1, new_tokens=50) == 3  # counted at its longest
    assert batch_size_at(lengths, 0, cap=3, budget=900, beams=1, new_tokens=50) == 3  # the count still caps
    assert batch_size_at(lengths, 6, cap=64, budget=100, beams=3, new_tokens=50) == 1  # never empty
    assert batch_size_at(lengths, 0, cap=5, budget=None, beams=3, new_tokens=50) == 5


def test_kv_bytes_per_token_is_what_the_model_caches(smoke_model):
    model = AutoModelForCausalLM.from_pretrained(smoke_model).eval()
    with torch.inference_mode():
        cache = getattr(model(input_ids=torch.tensor([[1, 5, 6, 7, 8, 9, 10]]), use_cache=True), CACHE_KEYWORD)
    cached = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert kv_bytes_per_token(model.config, model.dtype.itemsize) * 7 == cached


def test_the_13b_shape_costs_800_kib_a_token_in_bf16():
    config = LlamaConfig(num_hidden_layers=40, hidden_size=5120, num_attention_heads=40, intermediate_size=13824)
    assert kv_bytes_per_token(config, 2) == 819_200
    grouped = LlamaConfig(num_hidden_layers=40, hidden_size=5120, num_attention_heads=40, num_key_value_heads=8)
    assert kv_bytes_per_token(grouped, 2) == 819_200 // 5


def test_tokens_that_fit_leave_room_for_everything_but_the_cache():
    assert tokens_that_fit(50 * 2**30, 819_200) == int(50 * 2**30 * KV_SHARE) // 819_200  # ~52k on an 80 GB GPU
    assert tokens_that_fit(0, 819_200) == 1
