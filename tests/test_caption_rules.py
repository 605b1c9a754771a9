import importlib.util
import itertools
import random
import re

import pytest

from capsfus_hpc.caption_rules import (
    DEFAULT_ECHO_PHRASES,
    DEFAULT_RULES,
    LENGTH_FINISH,
    RULE_ORDER,
    STRICT_ECHO_PHRASES,
    CaptionRules,
    first_loop,
    judge,
    normalized,
)
from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.prompt import template

from .conftest import REPO


def _load_benchmark():
    # benchmarks/ is not a package: the script owns the corruption builders and is loaded by path,
    # so the test asserts exactly what the benchmark prints.
    spec = importlib.util.spec_from_file_location("caption_rules_eval", REPO / "benchmarks" / "caption_rules_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()

RAW = "VW T-ROC alloy wheel production vehicle teaser"
SYNTHETIC = "The wheel on the Volkswagen SUV is shown."
GOOD = "The teaser showcases the production vehicle of the VW T-ROC, featuring its alloy wheels."


def verdict(fused, raw=RAW, synthetic=SYNTHETIC, finish_reason="eos", rules=DEFAULT_RULES):
    result = judge(fused, raw, synthetic, finish_reason, rules)
    return result and result[0]


def test_a_sound_fused_caption_passes():
    assert judge(GOOD, RAW, SYNTHETIC, "eos") is None


# (reason, a caption that fails only that rule, a near miss that passes), finish_reason "eos"
# unless given; the near misses are the legitimate cases each rule must leave alone.
RULE_EXAMPLES = [
    ("empty", "  \n\t", "A cat sleeps."),
    ("empty", None, "A cat sits."),
    ("empty", "\u200b\u200b", "A cat\u200b sits."),  # zero-width spaces only
    ("empty", "\u3164 \u2800", "A cat sits \u2801."),  # a Hangul filler and a blank Braille pattern
    ("too_short", "Wildfires.", "Wildfires near Burbank."),
    ("too_short", "T-ROC.", "The VW T-ROC."),
    ("too_long", " ".join(f"a{i}" for i in range(151)), " ".join(f"a{i}" for i in range(150))),
    ("too_long", " ".join(f"word{i:03}" for i in range(125)) + "ss", " ".join(f"word{i:03}" for i in range(125)) + "s"),
    ("garbage", "A cat\x1b[0m on a red sofa.", "A cat on a red sofa at the Café\xa0Roma 👨\u200d👩\u200d👧."),
    ("garbage", "A cat on a red \ufffd sofa.", "A cat on a red sofa."),
    ("garbage", "A cat on a red\tsofa.", "A cat on a red sofa."),
    ("copy_through", "vw t-roc ALLOY wheel, production vehicle teaser!", f"{RAW}. It is silver."),
    ("copy_through", "“The  wheel on the Volkswagen SUV is shown”", "The wheel on the Volkswagen SUV is shown here."),
    ("copy_through", "ＶＷ Ｔ－ＲＯＣ alloy wheel production vehicle teaser", "ＶＷ Ｔ－ＲＯＣ alloy wheels on a vehicle"),
    ("repetition", "A red car, a red car, a red car, a red car parked outside.", "Ho ho ho, Santa waves at the kids."),
    ("repetition", "Bye " * 5 + "said the girl.", "Bye bye bye, said the girl."),
    ("prompt_echo", "Sentence 1: A cat on a red sofa.", "A cat on a red sofa reads sentence one."),
    ("prompt_echo", "A cat on a red sofa.\nNew Sentence: A cat.", "A judge hands down a new sentence for fraud."),
    ("prompt_echo", "A cat on a red sofa, ensuring a well-structured sentence.", "A worksheet on sentence structure."),
    ("prompt_echo", "Please merge and refine: a cat on a red sofa.", "Merge the two red sofas and refine the cat."),
]


@pytest.mark.parametrize("reason, bad, near_miss", RULE_EXAMPLES,
                         ids=[f"{r}-{i}" for i, (r, *_) in enumerate(RULE_EXAMPLES)])
def test_each_rule_rejects_its_fault_and_passes_its_near_miss(reason, bad, near_miss):
    assert verdict(bad) == reason
    assert verdict(near_miss) is None


def test_truncated_is_the_engine_stopping_at_max_new_tokens():
    assert judge(GOOD[:40], RAW, SYNTHETIC, LENGTH_FINISH)[0] == "truncated"
    assert judge(GOOD[:40], RAW, SYNTHETIC, "eos") is None


def test_the_truncation_finish_reason_is_the_engines():
    from capsfus_hpc.engine import LENGTH
    assert LENGTH_FINISH == LENGTH


def test_a_long_caption_of_few_distinct_words_is_repetition():
    # A 10-word cycle is longer than the 8-word loop search; the distinct-word ratio catches it.
    cycle = ["red", "blue", "green", "cars", "vans", "trucks", "park", "near", "old", "barns"]
    caption = " ".join(cycle[i % 10] for i in range(50))
    reason, detail = judge(caption, RAW, SYNTHETIC, "eos")
    assert (reason, detail) == ("repetition", "only 10 distinct words of 50")


@pytest.mark.parametrize("repeats, max_words", [(3, 8), (1, 3), (2, 1), (4, 5)])
def test_the_loop_found_is_the_first_and_shortest_a_regular_expression_finds(repeats, max_words):
    # The definition it replaced (a backtracking regex, ten times slower), as the oracle.
    oracle = re.compile(rf"\b((?:\w+ ){{0,{max_words - 1}}}?\w+)(?: \1\b){{{repeats},}}")
    rng = random.Random(repeats * 10 + max_words)
    checked = 0
    for _ in range(4000):
        vocabulary = ["a", "ab", "b", "ho", "hoho", "c"][:rng.randrange(1, 7)]
        words = [rng.choice(vocabulary) for _ in range(rng.randrange(0, 40))]
        if rng.random() < 0.3 and words:  # plant a loop somewhere
            at, size = rng.randrange(len(words)), rng.randrange(1, max_words + 2)
            words[at:at] = words[at:at + size] * (repeats + rng.randrange(0, 2))
        found = oracle.search(" ".join(words))
        assert first_loop(words, repeats, max_words) == (found.group(1) if found else None), words
        checked += found is not None
    assert checked > 500


# (earlier, later, a caption failing both, the same fault without the earlier one)
ORDER_CASES = [
    ("empty", "truncated", ("", "length"), ("x", "length")),
    ("truncated", "too_long", ("x " * 600, "length"), ("x " * 600, "eos")),
    ("too_long", "garbage", ("A\x07 cat " * 300, "eos"), ("A\x07 cat", "eos")),
    ("garbage", "copy_through", (RAW + "\x07", "eos"), (RAW + "!", "eos")),
    ("copy_through", "too_short", ("Teaser.", "eos", "teaser"), ("Teaser.", "eos")),
    ("too_short", "repetition", ("a a a a", "eos"), ("ab ab ab ab", "eos")),
    ("repetition", "prompt_echo", ("Sentence 1: a red car, a red car, a red car, a red car.", "eos"),
     ("Sentence 1: a red car.", "eos")),
]


def test_the_order_cases_cover_every_pair_of_neighbouring_rules():
    assert RULE_ORDER == ("empty", "truncated", "too_long", "garbage", "copy_through", "too_short", "repetition",
                          "prompt_echo")
    assert [(earlier, later) for earlier, later, *_ in ORDER_CASES] == list(itertools.pairwise(RULE_ORDER))
    assert tuple(bench.CORRUPTIONS) == RULE_ORDER  # a corruption for every reason code


@pytest.mark.parametrize("earlier, later, both, later_only", ORDER_CASES,
                         ids=[f"{earlier}-{later}" for earlier, later, *_ in ORDER_CASES])
def test_the_first_failing_rule_in_order_names_the_reason(earlier, later, both, later_only):
    fused, finish_reason, *raw = both
    assert verdict(fused, raw=raw[0] if raw else RAW, finish_reason=finish_reason) == earlier
    assert verdict(later_only[0], finish_reason=later_only[1]) == later


ODD_VALUES = [None, "", 0, 3.5, b"bytes", ["a", "list"], object(), "\ud800 cat on a sofa", "\x00" * 50,
              "\n" * 1000, "🙂" * 600, "x" * 10_000_000, "word " * 2_000_000, "ß" * 900, "\ufdfa" * 100]


@pytest.mark.parametrize("fused", ODD_VALUES, ids=range(len(ODD_VALUES)))
@pytest.mark.parametrize("source", [None, 7, "\ud800", "x" * 10_000_000, RAW], ids=["none", "int", "surrogate",
                                                                                      "huge", "raw"])
def test_judge_never_raises_and_answers_in_its_codes(fused, source):
    for finish_reason in (None, "eos", LENGTH_FINISH, b"length", 1):
        result = judge(fused, source, source, finish_reason)
        assert result is None or (result[0] in RULE_ORDER and isinstance(result[1], str))


def test_from_dict_refuses_an_unknown_key_by_name():
    with pytest.raises(CapsfusError, match="unknown caption rule 'max_lenght'"):
        CaptionRules.from_dict({"max_chars": 800, "max_lenght": 10})


@pytest.mark.parametrize("data, message", [
    ({"max_chars": "1000"}, "'max_chars' must be a number"),
    ({"min_words": True}, "'min_words' must be a number"),
    ({"min_words": 2.5}, "'min_words' must be a number"),
    ({"echo_phrases": "sentence 1"}, "'echo_phrases' must be a list"),
    ({"echo_phrases": ["..."]}, "'echo_phrases' must be a list"),
    ({"min_chars": 2000}, "a minimum length is over its maximum"),
    ({"max_repeats": 0}, "must be at least 1"),
    ({"max_chars": 2**70}, "'max_chars' must be from 0 to 2147483647, not 1180591620717411303424"),
    ({"min_words": -1}, "'min_words' must be from 0 to 2147483647"),
    ({"min_distinct_ratio": float("nan")}, "'min_distinct_ratio' must be from 0 to 1, not nan"),
    ({"min_distinct_ratio": 1.5}, "'min_distinct_ratio' must be from 0 to 1"),
])
def test_from_dict_refuses_values_a_rule_cannot_use(data, message):
    with pytest.raises(CapsfusError, match=message):
        CaptionRules.from_dict(data)


def test_from_dict_builds_the_rules_a_file_describes():
    assert CaptionRules.from_dict({}) == DEFAULT_RULES
    rules = CaptionRules.from_dict({"max_chars": 500, "min_distinct_ratio": 1, "echo_phrases": ["Sentence 1"]})
    assert rules == CaptionRules(max_chars=500, min_distinct_ratio=1, echo_phrases=("Sentence 1",))
    assert verdict("x" * 501, rules=rules) == "too_long"
    assert verdict("A cat on a sofa, ensuring a well-structured sentence.", rules=rules) is None


def test_echo_phrases_come_from_the_instruction_or_the_models_own_words():
    instruction = f" {normalized(template())} "
    outside = {p for p in STRICT_ECHO_PHRASES if f" {normalized(p)} " not in instruction}
    assert outside == {"refined and merged", "merged sentence"}


@pytest.mark.parametrize("sentence", bench.instruction_sentences())
def test_every_sentence_of_the_instruction_is_an_echo(sentence):
    assert verdict(f"{sentence} {GOOD}") == "prompt_echo"


def test_strict_echo_phrases_also_reject_the_input_descriptions():
    leak = "The Oxford Handbook of Recruitment provides detailed real-world knowledge on the subject."
    assert verdict(leak) is None
    assert verdict(leak, rules=CaptionRules(echo_phrases=STRICT_ECHO_PHRASES)) == "prompt_echo"
    assert set(DEFAULT_ECHO_PHRASES) < set(STRICT_ECHO_PHRASES)


def test_corruptions_are_deterministic(real_records):
    for mode in bench.CORRUPTIONS:
        assert bench.corrupted_cases(mode, real_records[:200]) == bench.corrupted_cases(mode, real_records[:200])


def test_official_captions_are_rejected_at_most_one_percent(real_records):
    counts = bench.reasons(bench.official_cases(real_records))
    rejected = len(real_records) - counts[None]
    assert len(real_records) == 5000
    assert rejected / len(real_records) <= 0.01, counts


@pytest.mark.parametrize("mode", RULE_ORDER)
def test_each_corruption_is_caught_with_its_own_code(real_records, mode):
    cases = bench.corrupted_cases(mode, real_records)
    counts = bench.reasons(cases)
    assert counts[mode] / len(cases) >= 0.99, counts
