"""Which fused captions the reducer keeps: each bad one gets a reason code and a readable detail.

`judge` applies the rules in RULE_ORDER and names the first that fails. Facts come before
judgements, so a caption is blamed for the plainest thing wrong with it: what the engine
reported (truncated), its size, its characters, equality with an input, then the content
heuristics (repetition, prompt echo). The size check comes early so that no later rule
does work proportional to a runaway caption.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import CapsfusError

RULE_ORDER = ("empty", "truncated", "too_long", "garbage", "copy_through", "too_short", "repetition", "prompt_echo")

# engine.LENGTH; not imported, since engine pulls in torch and the reducer does not need it.
LENGTH_FINISH = "length"

# Fragments of the CapsFusion instruction (capsfusion_prompt.txt) and its markers; each clause
# of the instruction holds at least one. Matched case-insensitively, on whole words.
DEFAULT_ECHO_PHRASES = (
    "sentence 1", "sentence 2", "new sentence:", "into a new sentence",
    "merge and refine", "two given sentences", "refined and merged", "merged sentence",
    "well-structured sentence", "nice sentence structure", "flaws in sentence structure",
    "sentence structure and grammar", "in-depth real-world details", "may contain false information",
    "concatenating the sentences",
)
# The model leaks "provides detailed real-world knowledge" into about 3% of the official
# CapsFusion captions, which are otherwise sound; rejecting them is a choice, not the default.
STRICT_ECHO_PHRASES = DEFAULT_ECHO_PHRASES + ("real-world knowledge", "real-world information")

# Control characters (line feed aside: a second line is a prompt echo), U+FFFD, lone surrogates
# and private-use code points. Other non-printables stay: NBSP is common web text, and the
# zero-width joiner is part of many emoji.
_GARBAGE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\ufffd\ud800-\udfff\ue000-\uf8ff\U000f0000-\U0010ffff]")
_PUNCTUATION = re.compile(r"[^\w\s]+")


@dataclass(frozen=True)
class CaptionRules:
    min_chars: int = 10  # official captions: shortest sound one 16 chars; "look." is a fragment
    min_words: int = 3  # whitespace-separated; only 4 of 5,000 official captions have fewer
    max_chars: int = 1000  # official maximum 441 (80 new tokens); a 2.3x margin
    max_words: int = 150  # official maximum 65
    max_repeats: int = 3  # times a phrase may follow itself ("ho ho ho"); one more is a loop
    max_repeated_phrase_words: int = 8  # the longest looping phrase looked for
    min_distinct_ratio: float = 0.3  # distinct words / words; official minimum 0.54
    distinct_ratio_min_words: int = 40  # the ratio means little on short captions
    echo_phrases: tuple[str, ...] = DEFAULT_ECHO_PHRASES
    _loop: re.Pattern = field(init=False, repr=False, compare=False)
    _echo: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compiled once per rule set, not per caption; object.__setattr__ because the class is frozen.
        loop = rf"\b((?:\w+ ){{0,{self.max_repeated_phrase_words - 1}}}\w+)(?: \1\b){{{self.max_repeats},}}"
        object.__setattr__(self, "_loop", re.compile(loop))
        words = (r"[\s-]+".join(re.escape(w) for w in re.split(r"[\s-]+", p.strip())) for p in self.echo_phrases)
        echo = "|".join(rf"(?<!\w){w}(?!\w)" for w in words) or r"(?!)"
        object.__setattr__(self, "_echo", re.compile(echo, re.IGNORECASE))

    @classmethod
    def from_dict(cls, data: dict) -> "CaptionRules":
        """Rules from a --rules file's table; unknown keys and wrong types are refused."""
        known = {f.name: f for f in fields(cls) if f.init}
        for key, value in data.items():
            if key not in known:
                raise CapsfusError(f"unknown caption rule '{key}' (known: {', '.join(known)})")
            expected = known[key].type
            if key == "echo_phrases":
                if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p.strip() for p in value):
                    raise CapsfusError("caption rule 'echo_phrases' must be a list of non-empty strings")
            elif isinstance(value, bool) or not isinstance(value, int if expected == "int" else (int, float)):
                raise CapsfusError(f"caption rule '{key}' must be a number of type {expected}, not {value!r}")
        rules = dict(data)
        if "echo_phrases" in rules:
            rules["echo_phrases"] = tuple(rules["echo_phrases"])
        result = cls(**rules)
        if result.min_chars > result.max_chars or result.min_words > result.max_words:
            raise CapsfusError("caption rules: a minimum length is over its maximum")
        if result.max_repeats < 1 or result.max_repeated_phrase_words < 1:
            raise CapsfusError("caption rules: max_repeats and max_repeated_phrase_words must be at least 1")
        return result


DEFAULT_RULES = CaptionRules()


def normalized(text: str) -> str:
    """The caption as compared for copy-through: NFKC, case-folded, punctuation and extra space gone."""
    return " ".join(_PUNCTUATION.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def judge(fused_caption: Any, raw_caption: Any, synthetic_caption: Any, finish_reason: Any,
          rules: CaptionRules = DEFAULT_RULES) -> tuple[str, str] | None:
    """(reason, detail) for the first rule the fused caption fails, else None. Never raises."""
    text = fused_caption
    if text is None:
        return "empty", "the model wrote no caption"
    if not isinstance(text, str):
        return "garbage", f"the caption is a {type(text).__name__}, not text"
    if not text or text.isspace():
        return "empty", "the caption is empty or whitespace"
    if isinstance(finish_reason, str) and finish_reason == LENGTH_FINISH:
        return "truncated", "the model stopped at max_new_tokens, mid-caption"
    if len(text) > rules.max_chars:
        return "too_long", f"{len(text)} characters, over the limit of {rules.max_chars}"
    words = text.split()
    if len(words) > rules.max_words:
        return "too_long", f"{len(words)} words, over the limit of {rules.max_words}"
    bad = _GARBAGE.search(text)
    if bad:
        return "garbage", f"character U+{ord(bad.group()):04X} at position {bad.start()}"
    folded = normalized(text)
    for role, source in (("raw", raw_caption), ("synthetic", synthetic_caption)):
        # NFKC and case-folding can lengthen other scripts, never ASCII: a shorter ASCII input cannot match.
        if isinstance(source, str) and not (source.isascii() and len(source) < len(folded)) \
                and normalized(source) == folded:
            return "copy_through", f"the same as the {role} caption once case, punctuation and spacing are ignored"
    if len(words) < rules.min_words or len(text.strip()) < rules.min_chars:
        return "too_short", (f"{len(words)} words and {len(text.strip())} characters, under the minimum of "
                             f"{rules.min_words} words and {rules.min_chars} characters")
    loop = rules._loop.search(folded)
    if loop:
        return "repetition", f"'{loop.group(1)[:60]}' repeated over {rules.max_repeats} times in a row"
    folded_words = folded.split()
    if len(folded_words) >= rules.distinct_ratio_min_words:
        ratio = len(set(folded_words)) / len(folded_words)
        if ratio < rules.min_distinct_ratio:
            return "repetition", f"only {ratio:.0%} of its {len(folded_words)} words are distinct"
    if "\n" in text:
        return "prompt_echo", "several lines: the model went on past the caption"
    echo = rules._echo.search(text)
    if echo:
        return "prompt_echo", f"'{echo.group()}' comes from the instruction prompt"
    return None
