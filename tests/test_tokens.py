import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

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
    assert tokens._encoder() is not None
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


@pytest.mark.parametrize("call", [dict(padding=True), dict(truncation=True, max_length=3), dict(split_special_tokens=True)])
def test_settings_a_transformers_call_leaves_in_the_backend_do_not_leak(call, smoke_tokenizer):
    # transformers sets padding, truncation and the splitting of special tokens on the backend
    # at each call and leaves them there.
    texts = ["a b c", "a much longer text here </s>"]
    expected = smoke_tokenizer(texts).input_ids
    tokens = Tokens(smoke_tokenizer)
    smoke_tokenizer(texts, **call)
    assert tokens.ids(texts) == expected


def test_a_tokenizer_that_cleans_up_spaces_decodes_through_transformers(smoke_tokenizer, real_records):
    smoke_tokenizer.clean_up_tokenization_spaces = True
    tokens = Tokens(smoke_tokenizer)
    assert tokens._decoder is None
    sequences = tokens.ids(_texts(real_records)[:3])
    assert tokens.texts(sequences) == smoke_tokenizer.batch_decode(sequences)


def test_a_tokenizer_class_with_steps_of_its_own_is_left_to_transformers(smoke_model, real_records):
    class Shouting(PreTrainedTokenizerFast):
        def _decode(self, token_ids, **kwargs):
            return super()._decode(token_ids, **kwargs).upper()

    tokenizer = Shouting.from_pretrained(smoke_model)
    tokens = Tokens(tokenizer)
    texts = _texts(real_records)[:5]
    assert tokens.ids(texts) == tokenizer(texts).input_ids
    sequences = tokens.ids(texts)
    assert tokens.texts(sequences) == tokenizer.batch_decode(sequences)
    assert tokens.texts(sequences)[0].isupper()
