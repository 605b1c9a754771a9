"""Which input rows can be fused: each bad row gets a reason code and a readable detail."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

# Whitespace, the invisible format characters (zero-width space, soft hyphen, BOM, direction marks,
# tag characters) and the fillers that draw nothing (Hangul fillers, the blank Braille pattern, the
# combining grapheme joiner) that web alt-texts hold alone: a caption of nothing else says nothing.
_FILLERS = (0x034F, 0x115F, 0x1160, 0x2800, 0x3164, 0xFFA0)
_INVISIBLE = "".join(c for c in map(chr, [*range(0x20000), *range(0xE0000, 0xF0000)])
                     if c.isspace() or unicodedata.category(c) == "Cf") + "".join(map(chr, _FILLERS))


def blank(text: str) -> bool:
    """Whether the text shows nothing: empty, or only whitespace and invisible characters."""
    return not text.strip(_INVISIBLE)


def input_problem(raw: Any, synthetic: Any, staging_error: str | None, columns, max_chars: int) -> tuple[str, str] | None:
    """(reason, detail) when a row cannot be fused, else None. Never raises."""
    if staging_error:
        code, _, detail = staging_error.partition(": ")
        return code, detail
    for role, name, value in (("raw_caption", columns.raw_caption, raw),
                              ("synthetic_caption", columns.synthetic_caption, synthetic)):
        if value is None:
            return f"{role}_null", f"{name} is null"
        if not isinstance(value, str):
            return f"{role}_not_string", f"{name} is a {type(value).__name__}, not a string"
        if blank(value):
            return f"{role}_empty", f"{name} is empty or shows only whitespace or invisible characters"
        if len(value) > max_chars:
            return f"{role}_too_long", f"{name} has {len(value)} characters, over the limit of {max_chars}"
    return None


@dataclass(frozen=True)
class PromptTooLong:
    """A row the model cannot take: its prompt, the raw caption cut as far as it goes, leaves too
    little of the model's context for the new tokens (the synthetic caption is never cut, as in
    the reference). Rejected as invalid input, never sent: the model would write past what it was
    trained on, or the shard fail on it out of memory at every attempt."""

    prompt_tokens: int
    room: int  # the model's context less max_new_tokens
    reason = "prompt_too_long"

    @property
    def detail(self) -> str:
        return f"the prompt has {self.prompt_tokens} tokens, over the {self.room} the model's context leaves beside " \
               "the new tokens"
