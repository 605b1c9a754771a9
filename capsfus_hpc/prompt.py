"""The CapsFusion prompt: the exact training template, and truncation to the token budget."""

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

    def ids(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text, as tokenizer(texts).input_ids gives them."""
        if self._backend is None:
            return self.tokenizer(texts, add_special_tokens=add_special_tokens).input_ids
        return [e.ids for e in self._backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]

    def encode(self, pairs: list[tuple[str, str]]) -> list[list[int]]:
        texts = [render(raw, synthetic) for raw, synthetic in pairs]
        encoded = self.ids(texts)
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
            encoded = self.ids([render(text, pairs[i][1]) for text, i in zip(kept, todo)])
            again = []
            for i, ids in zip(todo, encoded):
                if len(ids) <= self.max_tokens or excess[i] >= len(raw_ids[i]):
                    cut[i] = ids
                else:
                    excess[i] += len(ids) - self.max_tokens
                    again.append(i)
            todo = again
        return cut  # type: ignore[return-value]
