from capsfus_hpc.columns import ColumnMapping
from capsfus_hpc.validate import input_problem

COLUMNS = ColumnMapping()


def problem(raw, synthetic="a dog on a beach"):
    return input_problem(raw, synthetic, None, COLUMNS, max_chars=100)


def test_a_caption_of_only_invisible_characters_is_empty():
    for raw in ("", "   ", "\u200b", " \u200b\ufeff \u00ad\u2060 ", "\u3000\u200e"):
        assert problem(raw) == ("raw_caption_empty", "laion_2b is empty or whitespace"), repr(raw)
    assert problem("dog", "\u200b") == ("synthetic_caption_empty", "laion_coco is empty or whitespace")


def test_visible_text_between_invisible_characters_is_kept_as_it_is():
    assert problem("\u200bdog\u200b") is None
    assert problem("\U0001F468\u200d\U0001F469") is None  # an emoji joined by a zero-width joiner


def test_each_bad_value_is_named_by_its_column():
    assert problem(None) == ("raw_caption_null", "laion_2b is null")
    assert problem(12) == ("raw_caption_not_string", "laion_2b is a int, not a string")
    assert problem("w" * 101) == ("raw_caption_too_long", "laion_2b has 101 characters, over the limit of 100")
    assert input_problem("a", "b", "malformed_json: line 3: bad", COLUMNS, 100) == ("malformed_json", "line 3: bad")
