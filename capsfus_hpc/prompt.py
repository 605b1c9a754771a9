"""The CapsFusion prompt: the exact training template, its token ids (the instruction tokenised once),
and truncation to the token budget."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

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


class PromptBuilder:
    """Token ids of prompts, cut to max_tokens the way the reference recipe does.

    The reference counts the whole prompt (BOS included) and, when it is too long, drops
    tokens from the end of the raw caption only. Its `ids[:-(total - 256)]` empties the raw
    caption when total == 256; here a prompt of exactly max_tokens is left alone, and a cut
    that re-tokenises one token longer than planned is cut again.
    """

    def __init__(self, tokenizer, max_tokens: int = 256):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        # A fast tokenizer's Rust backend, called directly: the same ids without the offsets and
        # Python objects transformers builds around them (a third of the cost of a prompt). Only
        # when the backend itself truncates and pads nothing, as transformers' call would ask.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        usable = backend is not None and backend.truncation is None and backend.padding is None
        self._backend = backend if usable and hasattr(backend, "encode_batch_fast") else None
        self._instruction, self._anchor = self._split_tokens()

    def ids(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text, as tokenizer(texts).input_ids gives them."""
        if self._backend is None:
            return self.tokenizer(texts, add_special_tokens=add_special_tokens).input_ids
        return [e.ids for e in self._backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]

    def _split_tokens(self) -> tuple[list[int] | None, list[int] | None]:
        """The instruction's ids and the anchor's where this tokenizer cuts prompts cleanly at the
        end of the instruction; (None, None) where it does not, and prompts are tokenised whole.

        The instruction is about three quarters of every prompt and the same in each, so it is
        tokenised once, and each prompt only from the instruction's last line break on (the
        anchor: tokenised with the rest, so a tokenizer that treats the start of a text apart, as
        LLaMA's adds a space there, gives the rest the ids it has in the whole prompt). Clean: for
        every probe, the whole prompt's ids are the instruction's, then the rest's without the
        anchor's. Tokenizers work on pieces split at spaces or line breaks (LLaMA's vocabulary has
        no token with a space inside), and the text on both sides of the cut is the template's,
        so for them what holds for the probes holds for every caption (tests check a LLaMA-style
        and a byte-level tokenizer on the 5,000 real records).
        """
        parts = _instruction_and_rest()
        if parts is None:
            return None, None
        anchor = parts[0][-1:]
        [anchor_ids] = self.ids([anchor], add_special_tokens=False)
        whole = self.ids([render(*probe) for probe in PROBES])
        rests = self.ids([anchor + _render_rest(*probe) for probe in PROBES], add_special_tokens=False)
        instructions = []
        for ids, rest in zip(whole, rests):
            rest = rest[len(anchor_ids):] if rest[: len(anchor_ids)] == anchor_ids else None
            if rest is None or len(rest) > len(ids) or ids[len(ids) - len(rest):] != rest:
                return None, None
            instructions.append(ids[: len(ids) - len(rest)])
        if any(ids != instructions[0] for ids in instructions):
            return None, None
        return instructions[0], anchor_ids

    def prompt_ids(self, pairs: list[tuple[str, str]]) -> list[list[int]]:
        """Token ids of each rendered prompt, as self.ids([render(...)]) gives them."""
        if self._instruction is None:
            return self.ids([render(raw, synthetic) for raw, synthetic in pairs])
        anchor = _instruction_and_rest()[0][-1:]
        rests = self.ids([anchor + _render_rest(raw, synthetic) for raw, synthetic in pairs], add_special_tokens=False)
        n = len(self._anchor)
        return [self._instruction + rest[n:] for rest in rests]

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
        raw_ids = self.ids([raw.strip() for raw, _ in pairs], add_special_tokens=False)
        excess = [total - self.max_tokens for total in totals]
        cut: list[list[int] | None] = [None] * len(pairs)
        todo = list(range(len(pairs)))
        while todo:
            kept = self.tokenizer.batch_decode([raw_ids[i][: max(len(raw_ids[i]) - excess[i], 0)] for i in todo])
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
