from capsfus_hpc.columns import ColumnMapping
from capsfus_hpc.validate import input_problem

COLUMNS = ColumnMapping()


def problem(raw, synthetic="a dog on a beach"):
    return input_problem(raw, synthetic, None, COLUMNS, max_chars=100)


EMPTY = "is empty or shows only whitespace or invisible characters"


def test_a_caption_of_only_invisible_characters_is_empty():
    blanks = ("", "   ", "\u200b", " \u200b\ufeff \u00ad\u2060 ", "\u3000\u200e",
              "\u3164", "\u115f\u1160", "\uffa0",  # Hangul fillers
              "\u2800 \u2800",  # the blank Braille pattern
              "\U000e0041\U000e007f", "\ufff9\ufffb", "\u034f")  # tag characters, annotation marks, CGJ
    for raw in blanks:
        assert problem(raw) == ("raw_caption_empty", f"laion_2b {EMPTY}"), repr(raw)
    assert problem("dog", "\u200b") == ("synthetic_caption_empty", f"laion_coco {EMPTY}")


def test_visible_text_between_invisible_characters_is_kept_as_it_is():
    assert problem("\u200bdog\u200b") is None
    assert problem("\U0001F468\u200d\U0001F469") is None  # an emoji joined by a zero-width joiner
    assert problem("\U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F") is None  # a flag
    assert problem("\u2801") is None  # a Braille letter


def test_each_bad_value_is_named_by_its_column():
    assert problem(None) == ("raw_caption_null", "laion_2b is null")
    assert problem(12) == ("raw_caption_not_string", "laion_2b is a int, not a string")
    assert problem("w" * 101) == ("raw_caption_too_long", "laion_2b has 101 characters, over the limit of 100")
    assert input_problem("a", "b", "malformed_json: line 3: bad", COLUMNS, 100) == ("malformed_json", "line 3: bad")
