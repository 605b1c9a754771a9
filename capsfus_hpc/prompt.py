"""The CapsFusion prompt: the exact training template, its token ids (the instruction tokenised once),
and truncation to the token budget."""

from __future__ import annotations

import hashlib
import re
from functools import cache, cached_property
from importlib import resources

from .tokens import Tokens

TEMPLATE_FILE = "capsfusion_prompt.txt"


@cache
def template() -> str:
    """The plain completion prompt CapsFus-LLaMA was trained with; the model only works with it."""
    return resources.files("capsfus_hpc").joinpath(TEMPLATE_FILE).read_text(encoding="utf-8")


def template_sha256() -> str:
    return hashlib.sha256(template().encode("utf-8")).hexdigest()


def render(raw_caption: str, synthetic_caption: str) -> str:
    return template().format(laion_2b=raw_caption.strip(), laion_coco=synthetic_caption.strip())


@cache
def _instruction_and_rest() -> tuple[str, str] | None:
    """The template cut where the line holding the raw caption starts: the instruction, the same
    text in every prompt, and the rest, which the captions complete. None where it cannot be cut."""
    text = template()
    cut = text.rfind("\n", 0, text.find("{laion_2b}")) + 1
    if cut == 0 or "{" in text[:cut] or "}" in text[:cut]:
        return None
    return text[:cut], text[cut:]


def _render_rest(raw_caption: str, synthetic_caption: str) -> str:
    return _instruction_and_rest()[1].format(laion_2b=raw_caption.strip(), laion_coco=synthetic_caption.strip())


# Captions that start and end differently (letters, digits, punctuation, spaces, line breaks,
# non-ASCII, the template's own words, nothing): what holds for all of them is taken to hold for
# every caption.
PROBES = (("A dog on a beach", "a dog"), ("2019 Ford F-150", "a red truck"), ("...", "!"), (" leading space", "x"),
          ("Ünïcödé — text", "é"), ("", ""), ("\nSentence 1: x\n", "New Sentence:"), ("tab\tend ", " 42"))


_LINE_BREAK_THEN_TEXT = re.compile(r"\n\S")


class PromptBuilder:
    """Token ids of prompts, cut to max_tokens the way the reference recipe does.

    The reference counts the whole prompt (BOS included) and, when it is too long, drops
    tokens from the end of the raw caption only. Its `ids[:-(total - 256)]` empties the raw
    caption when total == 256; here a prompt of exactly max_tokens is left alone, and a cut
    that re-tokenises one token longer than planned is cut again.
    """

    def __init__(self, tokenizer, max_tokens: int = 256):
        self.max_tokens = max_tokens
        self.tokens = Tokens(tokenizer)

    @cached_property
    def _cut(self) -> tuple[list[int], int] | None:
        """The instruction's ids and the anchor's length in tokens, where this tokenizer cuts
        prompts cleanly at the end of the instruction; None where it does not, and prompts are
        tokenised whole.

        The instruction is about three quarters of every prompt and the same in each, so it is
        tokenised once, and each prompt only from the instruction's last line break on (the
        anchor: tokenised with the rest, so a tokenizer that treats the start of a text apart, as
        LLaMA's adds a space there, gives the rest the ids it has in the whole prompt). Clean: for
        every probe, the whole prompt's ids are the instruction's, then the rest's without the
        anchor's. And no token of the vocabulary has a line break followed by more text, so none
        can cross the cut: the two sides are then tokenised apart, and the text around the cut
        is the template's, so what holds for the probes holds for every caption. (Passing the
        probes alone is not enough: a BPE that does not split at spaces, trained on the template,
        learns tokens across the cut that a caption can change.) Tests check the ids on the 5,000
        real records with a byte-level tokenizer and two LLaMA-style ones.
        """
        parts = _instruction_and_rest()
        if parts is None or self._a_token_crosses_line_breaks():
            return None
        anchor = parts[0][-1:]
        [anchor_ids] = self.tokens.ids([anchor], add_special_tokens=False)
        whole = self.tokens.ids([render(*probe) for probe in PROBES])
        rests = self.tokens.ids([anchor + _render_rest(*probe) for probe in PROBES], add_special_tokens=False)
        instructions = []
        for ids, rest in zip(whole, rests):
            rest = rest[len(anchor_ids):] if rest[: len(anchor_ids)] == anchor_ids else None
            if rest is None or len(rest) > len(ids) or ids[len(ids) - len(rest):] != rest:
                return None
            instructions.append(ids[: len(ids) - len(rest)])
        if any(ids != instructions[0] for ids in instructions):
            return None
        return instructions[0], len(anchor_ids)

    def _a_token_crosses_line_breaks(self) -> bool:
        every_token = [[i] for i in range(len(self.tokens.tokenizer))]
        return any(_LINE_BREAK_THEN_TEXT.search(text) for text in self.tokens.texts(every_token))

    def prompt_ids(self, pairs: list[tuple[str, str]]) -> list[list[int]]:
        """Token ids of each rendered prompt, as tokenizer([render(...)]).input_ids gives them."""
        if self._cut is None:
            return self.tokens.ids([render(raw, synthetic) for raw, synthetic in pairs])
        instruction, anchor_tokens = self._cut
        anchor = _instruction_and_rest()[0][-1:]
        rests = self.tokens.ids([anchor + _render_rest(raw, synthetic) for raw, synthetic in pairs], add_special_tokens=False)
        return [instruction + rest[anchor_tokens:] for rest in rests]

    def encode(self, pairs: list[tuple[str, str]]) -> list[list[int]]:
        encoded = self.prompt_ids(pairs)
        long = [i for i, ids in enumerate(encoded) if len(ids) > self.max_tokens]
        if long:
            cut = self._truncated([pairs[i] for i in long], [len(encoded[i]) for i in long])
            for i, ids in zip(long, cut):
                encoded[i] = ids
        return encoded

    def _truncated(self, pairs: list[tuple[str, str]], totals: list[int]) -> list[list[int]]:
        """Each long prompt cut to fit, by the same steps one at a time would take, with one
        tokenizer call per step for all of them (a call per prompt cost more than the cutting)."""
        raw_ids = self.tokens.ids([raw.strip() for raw, _ in pairs], add_special_tokens=False)
        excess = [total - self.max_tokens for total in totals]
        cut: list[list[int] | None] = [None] * len(pairs)
        todo = list(range(len(pairs)))
        while todo:
            kept = self.tokens.texts([raw_ids[i][: max(len(raw_ids[i]) - excess[i], 0)] for i in todo])
            encoded = self.prompt_ids([(text, pairs[i][1]) for text, i in zip(kept, todo)])
            again = []
            for i, ids in zip(todo, encoded):
                if len(ids) <= self.max_tokens or excess[i] >= len(raw_ids[i]):
                    cut[i] = ids
                else:
                    excess[i] += len(ids) - self.max_tokens
                    again.append(i)
            todo = again
        return cut  # type: ignore[return-value]
