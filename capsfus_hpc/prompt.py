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

    def encode(self, pairs: list[tuple[str, str]]) -> list[list[int]]:
        texts = [render(raw, synthetic) for raw, synthetic in pairs]
        encoded = self.tokenizer(texts).input_ids
        for i, ids in enumerate(encoded):
            if len(ids) > self.max_tokens:
                encoded[i] = self._truncated(*pairs[i], total=len(ids))
        return encoded

    def _truncated(self, raw: str, synthetic: str, total: int) -> list[int]:
        raw_ids = self.tokenizer(raw.strip(), add_special_tokens=False).input_ids
        excess = total - self.max_tokens
        while True:
            kept = self.tokenizer.decode(raw_ids[: max(len(raw_ids) - excess, 0)])
            ids = self.tokenizer(render(kept, synthetic)).input_ids
            if len(ids) <= self.max_tokens or excess >= len(raw_ids):
                return ids
            excess += len(ids) - self.max_tokens
