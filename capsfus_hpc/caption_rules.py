"""Which fused captions the reducer keeps: each bad one gets a reason code and a readable detail.

`judge` applies the rules in RULE_ORDER and names the first that fails. Facts come before
judgements, so a caption is blamed for the plainest thing wrong with it: what the engine
reported, its size, its characters, equality with an input, its length in words, then the
content heuristics. The size check comes early so no later rule works on a runaway caption.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import CapsfusError
from .validate import blank

RULE_ORDER = ("empty", "truncated", "too_long", "garbage", "copy_through", "too_short", "repetition", "prompt_echo")

# engine.LENGTH; not imported, since engine pulls in torch and the reducer does not need it.
LENGTH_FINISH = "length"

# Word sequences of the CapsFusion instruction (capsfusion_prompt.txt) that tell the model what to
# do, and the model's own words for it ("a refined and merged sentence"); matched as whole words,
# ignoring case and punctuation. Each sentence of the instruction holds one.
DEFAULT_ECHO_PHRASES = (
    "sentence 1", "sentence 2", "into a new sentence", "merge and refine", "two given sentences",
    "refined and merged", "merged sentence", "well-structured sentence", "concatenating the sentences",
)
# The instruction's descriptions of the two inputs. The model leaks them into about 3.4% of the
# official captions ("provides detailed real-world knowledge"), mostly otherwise sound ones; rejecting
# them is a choice for a --rules file, not the default.
STRICT_ECHO_PHRASES = DEFAULT_ECHO_PHRASES + (
    "nice sentence structure", "flaws in sentence structure", "sentence structure and grammar",
    "in-depth real-world details", "may contain false information", "real-world knowledge", "real-world information",
)
# The template's own labels, which need their colon to tell them from prose ("the new sentence").
_LABEL = re.compile(r"(?<!\w)new\s+sentence\s*:|^\W*sentence\s*:", re.IGNORECASE)

# Control characters (line feed aside: a second line is a prompt echo), U+FFFD, lone surrogates
# and private-use code points. Other non-printables stay: NBSP is common web text, and the
# zero-width joiner is part of many emoji.
_GARBAGE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\ufffd\ud800-\udfff\ue000-\uf8ff\U000f0000-\U0010ffff]")
_PUNCTUATION = re.compile(r"[^\w\s]+")
# The same normalisation for ASCII text through one byte table: 98% of captions, 2.5 times faster.
_ASCII_FOLD = bytes(ord(" ") if _PUNCTUATION.match(chr(b)) else ord(chr(b).lower()) for b in range(128)) + bytes(128)
_ASCII_LOWER = bytes(range(128)).lower() + bytes(128)
_ASCII_NOT_WORD = bytes(b for b in range(128) if chr(b) not in string.ascii_letters + string.digits + "_")


_RULE_MAX = 2**31 - 1  # the compiled screen counts in 32-bit integers


@dataclass(frozen=True)
class CaptionRules:
    min_chars: int = 10  # of the normalised caption; the shortest sound official caption has 15
    min_words: int = 3  # only 4 of 5,000 official captions have fewer ("look.", "Burbank, California.")
    max_chars: int = 1000  # the official maximum is 441
    max_words: int = 150  # the official maximum is 65
    max_repeats: int = 3  # times a phrase may follow itself ("ho ho ho"); one more is a loop
    max_repeated_phrase_words: int = 8  # the longest looping phrase looked for
    min_distinct_ratio: float = 0.3  # distinct words / words; the official minimum is 0.54
    distinct_ratio_min_words: int = 40  # the ratio says little about short captions
    echo_phrases: tuple[str, ...] = DEFAULT_ECHO_PHRASES
    _echo: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)
    _echo_keys: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Derived once per rule set, not per caption; object.__setattr__ because the class is frozen.
        echo = tuple((f" {normalized(p)} ", p) for p in self.echo_phrases if normalized(p))
        object.__setattr__(self, "_echo", echo)
        # A caption can hold a phrase only if it holds the phrase's longest word: one set test skips the rest.
        object.__setattr__(self, "_echo_keys", frozenset(max(words.split(), key=len) for words, _ in echo))

    @classmethod
    def from_dict(cls, data: dict) -> CaptionRules:
        """Rules from a --rules file's table; unknown keys and wrong types are refused."""
        known = {f.name: f for f in fields(cls) if f.init}
        for key, value in data.items():
            if key not in known:
                raise CapsfusError(f"unknown caption rule '{key}' (known: {', '.join(known)})")
            if key == "echo_phrases":
                if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and normalized(p) for p in value):
                    raise CapsfusError("caption rule 'echo_phrases' must be a list of phrases with words in them")
            elif isinstance(value, bool) or not isinstance(value, int if known[key].type == "int" else (int, float)):
                raise CapsfusError(f"caption rule '{key}' must be a number ({known[key].type}), not {value!r}")
            elif not 0 <= value <= (1 if key == "min_distinct_ratio" else _RULE_MAX):  # NaN fails this too
                most = 1 if key == "min_distinct_ratio" else _RULE_MAX
                raise CapsfusError(f"caption rule '{key}' must be from 0 to {most}, not {value!r}")
        rules = cls(**{**data, **({"echo_phrases": tuple(data["echo_phrases"])} if "echo_phrases" in data else {})})
        if rules.min_chars > rules.max_chars or rules.min_words > rules.max_words:
            raise CapsfusError("caption rules: a minimum length is over its maximum")
        if rules.max_repeats < 1 or rules.max_repeated_phrase_words < 1:
            raise CapsfusError("caption rules: max_repeats and max_repeated_phrase_words must be at least 1")
        return rules


def caption_words(text: str) -> list[str]:
    """The words rules count and compare: NFKC, case-folded, split on spaces and punctuation."""
    if text.isascii():
        return text.encode().translate(_ASCII_FOLD).decode().split()
    return _PUNCTUATION.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split()


def normalized(text: str) -> str:
    return " ".join(caption_words(text))


DEFAULT_RULES = CaptionRules()


def _same_words(folded: str, source: Any) -> bool:
    if not isinstance(source, str):
        return False
    # Normalising never lengthens ASCII, and equal word sequences have equal letters and digits:
    # two cheap tests that settle most rows.
    if source.isascii() and folded.isascii() and (
            len(source) < len(folded)
            or source.encode().translate(_ASCII_LOWER, _ASCII_NOT_WORD) != folded.replace(" ", "").encode()):
        return False
    return normalized(source) == folded


def _may_loop(words: list[str], distinct: int, max_repeats: int) -> bool:
    """False when no phrase can follow itself max_repeats times: cheap tests that spare most
    captions the loop search. R more copies of a p-word phrase repeat R*p words, and at least
    one word trigram once R*p >= 3."""
    if len(words) - distinct < max_repeats:
        return False
    return max_repeats < 3 or len(set(zip(words, words[1:], words[2:]))) < len(words) - 2


def first_loop(words: list[str], repeats: int, max_phrase_words: int) -> str | None:
    """The first phrase of at most max_phrase_words words followed by `repeats` copies of
    itself: the one starting earliest, the shortest there. A p-word phrase and its copies are
    repeats * p consecutive places where a word equals the word p places on."""
    best_start, best = len(words), None
    for p in range(1, max_phrase_words + 1):
        need = repeats * p
        run = 0
        for k in range(min(len(words) - p, best_start + need)):  # later runs cannot start earlier
            if words[k] == words[k + p]:
                run += 1
                if run == need:
                    if k - need + 1 < best_start:
                        best_start, best = k - need + 1, " ".join(words[k - need + 1:k - need + 1 + p])
                    break
            else:
                run = 0
    return best


def judge(fused_caption: Any, raw_caption: Any, synthetic_caption: Any, finish_reason: Any,
          rules: CaptionRules = DEFAULT_RULES) -> tuple[str, str] | None:
    """(reason, detail) for the first rule the fused caption fails, else None. Never raises."""
    text = fused_caption
    if text is None:
        return "empty", "the model wrote no caption"
    if not isinstance(text, str):
        return "garbage", f"the caption is a {type(text).__name__}, not text"
    if blank(text):
        return "empty", "the caption is empty or shows only whitespace or invisible characters"
    if isinstance(finish_reason, str) and finish_reason == LENGTH_FINISH:
        return "truncated", "the model stopped at max_new_tokens, mid-caption"
    if len(text) > rules.max_chars:
        return "too_long", f"{len(text)} characters, over the limit of {rules.max_chars}"
    # Words a reader counts are whitespace-separated ("T-ROC alloy" is two); a caption needs more
    # than twice max_words characters to hold more than max_words of them.
    if len(text) > 2 * rules.max_words and len(text.split(None, rules.max_words)) > rules.max_words:
        return "too_long", f"{len(text.split())} words, over the limit of {rules.max_words}"
    words = caption_words(text)
    folded = " ".join(words)
    if (not text.isprintable() or "\ufffd" in text) and (bad := _GARBAGE.search(text)):
        return "garbage", f"character U+{ord(bad.group()):04X} at position {bad.start()}"
    for role, source in (("raw", raw_caption), ("synthetic", synthetic_caption)):
        if folded and _same_words(folded, source):
            return "copy_through", f"the {role} caption, give or take case, punctuation and spacing"
    if len(text.split(None, rules.min_words)) < rules.min_words or len(folded) < rules.min_chars:
        return "too_short", (f"{len(text.split())} words, {len(folded)} characters of words; the minimum is "
                             f"{rules.min_words} words and {rules.min_chars} characters")
    vocabulary = set(words)
    distinct = len(vocabulary)
    if _may_loop(words, distinct, rules.max_repeats) and (
            loop := first_loop(words, rules.max_repeats, rules.max_repeated_phrase_words)):
        return "repetition", f"'{loop[:60]}' {rules.max_repeats + 1} or more times in a row"
    if len(words) >= rules.distinct_ratio_min_words and distinct < rules.min_distinct_ratio * len(words):
        return "repetition", f"only {distinct} distinct words of {len(words)}"
    if "\n" in text:
        return "prompt_echo", "several lines: the model went on past the caption"
    if "sentence" in folded and ":" in text and (label := _LABEL.search(text)):  # cheap tests first
        return "prompt_echo", f"'{label.group()}' is a label of the instruction prompt"
    if rules._echo_keys.isdisjoint(vocabulary):
        return None
    padded = f" {folded} "
    for words_of_phrase, phrase in rules._echo:
        if words_of_phrase in padded:
            return "prompt_echo", f"'{phrase}' comes from the instruction prompt"
    return None
