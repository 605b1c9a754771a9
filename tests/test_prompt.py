import copy

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from capsfus_hpc.prompt import PromptBuilder, render, template
from capsfus_hpc.smoke import build_tokenizer

from .conftest import PROMPT_FILE


@pytest.fixture(scope="module")
def tokenizer(smoke_model):
    return AutoTokenizer.from_pretrained(smoke_model)


def test_template_is_the_exact_training_prompt():
    assert template() == PROMPT_FILE.read_text(encoding="utf-8")


def test_captions_are_stripped_into_the_template():
    prompt = render("  Raw Caption | shop \n", "\ta synthetic caption ")
    assert prompt.endswith("Sentence 1: Raw Caption | shop\nSentence 2: a synthetic caption\nNew Sentence:")


def _raw_caption_of_length(tokenizer, synthetic, tokens, source_text):
    """A prefix of source_text that makes the whole prompt exactly `tokens` tokens long."""
    for end in range(len(source_text)):
        raw = source_text[:end].strip()
        if len(tokenizer(render(raw, synthetic)).input_ids) == tokens:
            return raw
    raise AssertionError("no prefix gives that many tokens")


def test_a_prompt_of_exactly_256_tokens_keeps_its_raw_caption(tokenizer, real_records):
    # The reference's ids[:-(total - 256)] empties the raw caption at exactly 256 tokens.
    synthetic = real_records[0]["laion_coco"]
    long_text = " ".join(r["laion_2b"] for r in real_records[:40])
    raw = _raw_caption_of_length(tokenizer, synthetic, 256, long_text)
    [ids] = PromptBuilder(tokenizer, 256).encode([(raw, synthetic)])
    assert len(ids) == 256
    assert ids == tokenizer(render(raw, synthetic)).input_ids


def test_a_long_prompt_is_cut_from_the_end_of_the_raw_caption_only(tokenizer, real_records):
    synthetic = real_records[1]["laion_coco"]
    raw = " ".join(r["laion_2b"] for r in real_records[:40])
    [ids] = PromptBuilder(tokenizer, 256).encode([(raw, synthetic)])
    assert 250 <= len(ids) <= 256
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text.endswith(f"\nSentence 2: {synthetic}\nNew Sentence:")
    kept = text.split("Sentence 1: ", 1)[1].split("\nSentence 2: ")[0]
    assert kept and raw.startswith(kept.rstrip())
    assert text.startswith(template().split("{laion_2b}")[0])


def test_prompts_within_the_budget_are_untouched(tokenizer, real_records):
    pairs = [(r["laion_2b"], r["laion_coco"]) for r in real_records[:50]]
    whole = [tokenizer(render(*pair)).input_ids for pair in pairs]
    encoded = PromptBuilder(tokenizer, 256).encode(pairs)
    short = [i for i, ids in enumerate(whole) if len(ids) <= 256]
    assert len(short) > 40
    assert all(encoded[i] == whole[i] for i in short)


def test_a_prompt_is_cut_the_same_whatever_else_is_in_its_batch(tokenizer, real_records):
    # Long prompts are cut together, in rounds of batched tokenizer calls; some need more rounds.
    pairs = [(" ".join(r["laion_2b"] for r in real_records[i:i + n]), real_records[i]["laion_coco"])
             for i, n in zip(range(0, 60, 3), [1, 2, 5, 9, 30] * 4)]
    builder = PromptBuilder(tokenizer, 160)
    together = builder.encode(pairs)
    assert together == [builder.encode([pair])[0] for pair in pairs]
    assert all(len(ids) <= 160 for ids in together) and sum(len(ids) < 150 for ids in together) < len(pairs)


def test_llama_style_tokenizer_is_what_llama_uses(llama_style):
    assert llama_style("a\nb", add_special_tokens=False).input_ids == llama_style.convert_tokens_to_ids(
        ["\u2581a", "<0x0A>", "b"])
    assert llama_style("a b").input_ids[0] == llama_style.bos_token_id


@pytest.fixture(scope="module")
def llama_legacy(llama_style):
    """As LLaMA-2's own tokenizer.json has it: a normalizer prepends the space and replaces
    spaces, and nothing splits the text."""
    tokenizer = copy.deepcopy(llama_style)
    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    backend.pre_tokenizer = None
    return tokenizer


def test_the_legacy_llama_tokenizer_splits_nothing_and_gives_the_same_ids(llama_style, llama_legacy):
    text = "Sentence 1: a dog\nSentence 2: two"
    assert llama_legacy(text).input_ids == llama_style(text).input_ids
    assert llama_legacy.backend_tokenizer.pre_tokenizer is None


@pytest.mark.parametrize("which", ["smoke", "llama", "llama-legacy"])
def test_prompts_tokenised_from_the_instruction_on_equal_whole_prompts(which, tokenizer, llama_style, llama_legacy,
                                                                        real_records):
    # The instruction's ids are computed once; every prompt must still get exactly the ids of its whole text.
    chosen = {"smoke": tokenizer, "llama": llama_style, "llama-legacy": llama_legacy}[which]
    builder = PromptBuilder(chosen)
    assert builder._cut is not None and len(builder._cut[0]) > 50
    pairs = [(r["laion_2b"], r["laion_coco"]) for r in real_records]
    pairs += [("", ""), ("  \n", "\t"), ("Sentence 1: x\nSentence 2:", "New Sentence: y"), ("ünï ✓ 中文", "😀")]
    assert builder.prompt_ids(pairs) == chosen([render(*pair) for pair in pairs]).input_ids


def test_a_tokenizer_that_cannot_be_cut_there_tokenises_whole_prompts(real_records):
    # One that ends every text with </s>: the instruction then is not a prefix of every prompt's ids.
    tokenizer = build_tokenizer([r["laion_2b"] for r in real_records[:300]] + [template()] * 20)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    builder = PromptBuilder(tokenizer)
    assert builder._cut is None
    pairs = [(r["laion_2b"], r["laion_coco"]) for r in real_records[:200]]
    assert builder.prompt_ids(pairs) == tokenizer([render(*pair) for pair in pairs]).input_ids


def test_a_tokenizer_with_tokens_across_the_cut_tokenises_whole_prompts(real_records):
    # A byte-level BPE that does not split at spaces, trained on the template, learns tokens that
    # run from the instruction's line breaks into "Sentence 1: {laion_": the probes pass, yet a
    # raw caption spelled "{laion_2b}" is tokenised differently across the cut.
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([r["laion_2b"] for r in real_records[:400]] + [r["laion_coco"] for r in real_records[:400]]
                            + [template()] * 20,
                            trainers.BpeTrainer(vocab_size=2000, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    builder = PromptBuilder(tokenizer)
    assert builder._cut is None
    pairs = [("{laion_2b}", "</s>")] + [(r["laion_2b"], r["laion_coco"]) for r in real_records[:300]]
    assert builder.prompt_ids(pairs) == tokenizer([render(*pair) for pair in pairs]).input_ids
