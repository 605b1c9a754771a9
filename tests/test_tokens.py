import pytest
from transformers import AutoTokenizer

from capsfus_hpc.prompt import render
from capsfus_hpc.tokens import Tokens


@pytest.fixture
def smoke_tokenizer(smoke_model):
    return AutoTokenizer.from_pretrained(smoke_model)  # a test's own: tests change its backend


def _texts(real_records) -> list[str]:
    return [render(r["laion_2b"], r["laion_coco"]) for r in real_records[:300]] + ["", " ", "ünï\ncode ✓ 中文"]


@pytest.mark.parametrize("which", ["smoke", "llama"])
def test_ids_are_the_ids_transformers_gives(which, smoke_tokenizer, llama_style, real_records):
    tokenizer = smoke_tokenizer if which == "smoke" else llama_style
    tokens, texts = Tokens(tokenizer), _texts(real_records)
    assert tokens._encoder is not None
    assert tokens.ids(texts) == tokenizer(texts).input_ids
    assert tokens.ids(texts, add_special_tokens=False) == tokenizer(texts, add_special_tokens=False).input_ids


@pytest.mark.parametrize("which", ["smoke", "llama"])
def test_texts_are_the_texts_transformers_gives(which, smoke_tokenizer, llama_style, real_records):
    tokenizer = smoke_tokenizer if which == "smoke" else llama_style
    tokens = Tokens(tokenizer)
    assert tokens._decoder is not None
    special = [tokenizer.bos_token_id, tokenizer.eos_token_id]
    sequences = [ids[1:41] + special for ids in tokenizer(_texts(real_records)).input_ids] + [[], special]
    for skip in (False, True):
        assert tokens.texts(sequences, skip_special_tokens=skip) == tokenizer.batch_decode(sequences, skip_special_tokens=skip)
    assert tokens.texts([]) == []


def test_a_backend_that_would_cut_or_clean_up_is_left_to_transformers(smoke_tokenizer, real_records):
    texts = _texts(real_records)[:3]
    smoke_tokenizer.backend_tokenizer.enable_truncation(8)
    smoke_tokenizer.clean_up_tokenization_spaces = True
    tokens = Tokens(smoke_tokenizer)
    assert tokens._encoder is None and tokens._decoder is None
    sequences = tokens.ids(texts)
    assert sequences == smoke_tokenizer(texts).input_ids and max(map(len, sequences)) > 8
    assert tokens.texts(sequences) == smoke_tokenizer.batch_decode(sequences)
