"""The compiled screen must be sound: every caption it clears, judge clears too. Checked on the
real captions, every corruption mode of the rules benchmark, strict rules and adversarial text."""

import random
import unicodedata

import numpy as np
import pyarrow as pa
import pytest

from capsfus_hpc.caption_rules import DEFAULT_RULES, STRICT_ECHO_PHRASES, CaptionRules, judge
from capsfus_hpc.caption_screen import CHECK_RAW, CHECK_SYNTHETIC, CLEAR, JUDGE, judge_column, screen

from .test_caption_rules import bench

STRICT = CaptionRules(echo_phrases=STRICT_ECHO_PHRASES, max_repeats=1, max_repeated_phrase_words=3, min_words=1)


def _columns(cases):
    fused, raw, synthetic, finish = zip(*cases)
    return [pa.array(list(values), pa.string()) for values in (fused, raw, synthetic, finish)]


def _assert_same_as_judge(cases, rules):
    columns = _columns(cases)
    flags = screen(*columns, rules)
    expected = [(i, *v) for i, case in enumerate(cases) if (v := judge(*case, rules))]
    unsound = [cases[i] for i in np.flatnonzero(flags == CLEAR) if judge(*cases[i], rules)]
    assert unsound == []
    assert judge_column(*columns, rules) == expected
    return flags


def _adversarial(records, rng):
    """Captions built to sit on the edges the screen reasons about."""
    pieces = ["sentence", "Sentence :", "new sentence:", "merge and refine", "refined and merged", "ho", "ho ho",
              "\u2013", "\u00a0", "ﬁ", "ß", "Ａ", "é", "e\u0301", "\u0301", "Кот", "猫", "\x1c", "\t", "\n", "_", "...",
              "a b c", "a b c a b c a b c a b c", "word", "WORD", "\ufffd", "\ue000", "🙂", "T-ROC", "  ", ":", "a fine profile",
              "café", "CAFÉ", "Straße", "ǅ", "\u1100\u1161", "é\u0301", "ς", "İ", "кот кот кот кот", "ª", "²", "™",
              "\u3000", "\u2028", "\u200b", "sentence\u00a0:", "Ω", "ſentence:", "ſ", "Nike™", "ÉCOLE", "КОТ", "\u212b",
              "\u212a", "ﬆ", "Ⅸ", "①", "ｓｅｎｔｅｎｃｅ:", "½", "℃", "™ ™ ™ ™", "TM tm ™", "Σ", "ǈ", "ㄱㅏ", "가", "ㄳ",
              "ｶﾞ", "かﾞ", "ガ", "™sentence:", "Ⓐsentence:", "´"]
    cases = []
    for i in range(3000):
        r = records[i % len(records)]
        fused = " ".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12)))
        if rng.random() < 0.5:
            fused = r["capsfuion_official"] + " " + fused
        raw = rng.choice([r["laion_2b"], fused, fused.upper() + " \u2013", fused.replace(" ", "\u00a0"), fused.casefold(),
                          unicodedata.normalize("NFD", fused), fused.replace("é", "É"), fused.replace("™", "tm"),
                          "ﬁ" + fused, bench._fullwidth(fused), fused.replace("fi", "ﬁ"), None])
        cases.append((fused, raw, r["laion_coco"], rng.choice(["eos", "length", None])))
    return cases


@pytest.mark.parametrize("rules", [DEFAULT_RULES, STRICT], ids=["default", "strict"])
def test_screen_clears_only_what_judge_clears(real_records, rules):
    cases = bench.official_cases(real_records)
    for mode in bench.CORRUPTIONS:
        cases += bench.corrupted_cases(mode, real_records[:600], rules)
    cases += _adversarial(real_records, random.Random(0))
    _assert_same_as_judge(cases, rules)


def test_screen_clears_most_real_captions(real_records):
    flags = _assert_same_as_judge(bench.official_cases(real_records), DEFAULT_RULES)
    assert (flags == CLEAR).mean() > 0.95  # the rest (mostly non-ASCII captions) goes to judge


def test_nulls_and_empty_columns():
    cases = [(None, None, None, None), ("", "", "", "eos"), ("A cat sleeps on a red sofa.", None, None, None)]
    _assert_same_as_judge(cases, DEFAULT_RULES)
    assert judge_column(*[pa.array([], pa.string())] * 4, DEFAULT_RULES) == []


def test_non_ascii_letters_count_as_characters_not_bytes():
    cases = [("éé éé éé", None, None, "eos"), ("ééé ééé ééé", None, None, "eos"), ("кот и кот", None, None, "eos"),
             ("Un café crème à Paris, près de la gare.", "un café crème à paris près de la gare", None, "eos")]
    flags = _assert_same_as_judge(cases, DEFAULT_RULES)
    assert flags[1] == CLEAR  # screened, not sent to judge


def test_characters_that_fold_into_words_are_screened_not_judged():
    # É -> é, ß -> ss, ﬁ -> fi, Н -> н: the screen hashes what they become, and leaves the
    # comparison with the sources to Python (CHECK flags), not the whole judge. ™ folds too, but
    # is no word character itself, so it goes to judge.
    cases = [("A ﬁne Straße sign on a white wall.", "a fine strasse sign", None, "eos"),
             ("ÉCOLE primaire de la ville, vue de la rue.", None, None, "eos"),
             ("Кот сидит на окне.", None, None, "eos"),
             ("A ﬁne Straße sign on a white wall.", "a fine strasse sign on a white wall", None, "eos"),
             ("ſentence: a cat on a mat.", None, None, "eos"),
             ("A Nike™ shoe on a white floor.", None, None, "eos")]
    flags = _assert_same_as_judge(cases, DEFAULT_RULES)
    assert flags[:3].tolist() == [CHECK_RAW | CHECK_SYNTHETIC] * 3 and flags[5] == JUDGE
    assert judge(*cases[3], DEFAULT_RULES)[0] == "copy_through" and judge(*cases[4], DEFAULT_RULES)[0] == "prompt_echo"


def test_characters_that_compose_with_a_neighbour_or_hide_a_label_go_to_judge():
    # Found in review: compatibility jamo fold into jamo that NFKC joins into one syllable, the
    # halfwidth voiced mark becomes a combining mark, and a non-word character that folds into
    # letters ("™sentence:") hides the template label from the folded words.
    faults = ["hello world 가 가 ㄱㅏ 가", "abc de ㄱㅏㄴ", "hello world が が かﾞ が", "xyz zz ｶﾞｶ",
              "™sentence: a nice photo of a cat", "(™sentence: a cat on a mat", "Ⓐsentence: a cat on a mat"]
    other = "unrelated words here"
    flags = _assert_same_as_judge([(c, other, other, "eos") for c in faults], DEFAULT_RULES)
    assert (flags != CLEAR).all() and all(judge(c, other, other, "eos", DEFAULT_RULES) for c in faults)


def test_echo_phrases_with_non_ascii_words_are_screened_too():
    rules = CaptionRules(echo_phrases=("café au lait",))
    cases = [(c, None, None, "eos") for c in ("I like café au lait today", "I like CAFÉ au lait today",
                                               "I like cafe au lait today")]
    flags = _assert_same_as_judge(cases, rules)
    assert flags[2] == CLEAR and [judge(*c, rules)[0] for c in cases[:2]] == ["prompt_echo"] * 2
