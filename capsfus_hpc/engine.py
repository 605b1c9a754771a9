"""The fusion engine: a causal LM (transformers + accelerate) that writes fused captions.

Generation is deterministic (no sampling) whatever the model's generation_config says, so a
chunk regenerated after a crash gives the same captions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from . import faults
from .batching import batch_size_at, gpu_batch_tokens, kv_tokens
from .kv_cache import CACHE_KEYWORD, PreallocatedCache, preallocatable
from .prefix_cache import PrefixCache, positions_follow_mask, shared_prefix
from .prompt import PromptBuilder
from .settings import RunSettings
from .validate import PromptTooLong

log = logging.getLogger(__name__)

EOS = "eos"
LENGTH = "length"


# Allocations outside PyTorch's caching allocator fail as plain RuntimeErrors (AcceleratorError):
# cuBLAS creating a handle or workspace for a new batch shape, or a raw CUDA allocation.
_OUT_OF_MEMORY_ERRORS = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDA error: out of memory")


def out_of_memory(exc: BaseException) -> bool:
    """Whether an error is the GPU running out of memory, which a smaller batch avoids."""
    return isinstance(exc, torch.OutOfMemoryError) or any(text in str(exc) for text in _OUT_OF_MEMORY_ERRORS)


@dataclass(frozen=True)
class Fusion:
    fused_caption: str
    finish_reason: str  # EOS or LENGTH
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the end-of-sequence token included


def _dtype(name: str, on_gpu: bool) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    try:
        return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}: use auto, bf16, fp16 or fp32") from None


class FusionEngine:
    def __init__(self, model, tokenizer, num_beams: int, max_new_tokens: int, max_prompt_tokens: int, batch_size: int,
                 batch_tokens: int | None = None, prefix_ids: list[int] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.prompts = PromptBuilder(tokenizer, max_prompt_tokens)
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.fitted_tokens: int | None = None  # the budget an out-of-memory left, None until one
        self.min_new_tokens = 0  # benchmarks force a length so random weights cost what real ones do
        self.eos_id = tokenizer.eos_token_id
        # LLaMA tokenizers may lack a pad token; left padding is masked out, so any id serves.
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        # The instruction's keys and values, computed once (prefix_cache.py); None: every batch computes them.
        self.prefix = PrefixCache(model, prefix_ids) if prefix_ids else None
        if self.prefix is not None and not positions_follow_mask(model):
            log.warning("prefix cache off: the model's forward takes no position_ids")
            self.prefix = None
        # Positions the model was trained on; longer prompts are refused (PromptTooLong).
        self.context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        # Each batch's KV cache allocated once (kv_cache.py); off: transformers' own cache.
        self.preallocate = preallocatable(model)

    @classmethod
    def load(cls, settings: RunSettings) -> "FusionEngine":
        on_gpu = torch.cuda.is_available()
        transformers_logging.disable_progress_bar()  # task logs get one line per chunk instead
        # A local folder's revision is our fingerprint of its files, not something to check out.
        revision = None if Path(settings.model).is_dir() else settings.model_revision
        tokenizer = AutoTokenizer.from_pretrained(
            settings.model, revision=revision, padding_side="left", trust_remote_code=settings.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            settings.model,
            revision=revision,
            dtype=_dtype(settings.dtype, on_gpu),
            device_map=settings.device_map if on_gpu else None,
            trust_remote_code=settings.trust_remote_code,
        )
        model.eval()
        log.info("loaded %s on %s (%s)", settings.model, model.device, model.dtype)
        batch_tokens = gpu_batch_tokens(model, settings.batch_tokens) if on_gpu else settings.batch_tokens
        return cls(model, tokenizer, settings.num_beams, settings.max_new_tokens, settings.max_prompt_tokens,
                   settings.batch_size, batch_tokens, shared_prefix(tokenizer) if settings.prefix_cache else None)

    def fuse(self, pairs: list[tuple[str, str]],
             before_batch: Callable[[float | None], None] | None = None) -> list[Fusion | PromptTooLong]:
        """Fused captions in input order; batches are formed from length-sorted prompts.

        `before_batch(seconds of the previous batch)` may raise to abandon the rest."""
        encoded = self.prompts.encode(pairs)
        room = None if self.context is None else self.context - self.max_new_tokens
        fit = [i for i, ids in enumerate(encoded) if room is None or len(ids) <= room]
        fused = dict(zip(fit, self.fuse_encoded([encoded[i] for i in fit], before_batch)))
        return [fused.get(i) or PromptTooLong(len(ids), room) for i, ids in enumerate(encoded)]

    def fuse_encoded(self, encoded: list[list[int]],
                     before_batch: Callable[[float | None], None] | None = None) -> list[Fusion]:
        """Fusions of prompts already turned into token ids, in input order."""
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[Fusion | None] = [None] * len(encoded)
        last_seconds = None
        sorted_lengths = [len(encoded[i]) for i in order]
        begin = 0
        while begin < len(order):
            if before_batch:
                before_batch(last_seconds)
            started = time.perf_counter()
            size = batch_size_at(sorted_lengths, begin, self.batch_size, self.batch_tokens, self.num_beams,
                                 self.max_new_tokens)
            batch = order[begin : begin + size]
            try:
                fusions = self._generate([encoded[i] for i in batch])
            except RuntimeError as exc:
                if len(batch) == 1 or not out_of_memory(exc):
                    raise
                fusions = None
            if fusions is None:  # out of the except block, so the failed attempt's tensors are freed
                longest = sorted_lengths[begin + size - 1]
                self._halve_budget(size, kv_tokens(longest, size, self.num_beams, self.max_new_tokens))
                continue
            for index, fusion in zip(batch, fusions):
                results[index] = fusion
            begin += len(batch)
            last_seconds = time.perf_counter() - started
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate(self, prompts: list[list[int]]) -> list[Fusion]:
        prefix = self.prefix if self.prefix is not None and self.prefix.covers(prompts) else None
        head = len(prefix.ids) if prefix else 0  # [prefix, padding, rest], or [padding, prompt]
        width = max(len(ids) for ids in prompts)
        if faults.simulated_oom(kv := kv_tokens(width, len(prompts), self.num_beams, self.max_new_tokens)):
            raise torch.OutOfMemoryError(f"CUDA out of memory with {kv} tokens (simulated by CAPSFUS_FAULT)")
        # Through numpy: torch.tensor checks each element of nested lists, several times slower.
        laid_out = [ids[:head] + [self.pad_id] * (width - len(ids)) + ids[head:] for ids in prompts]
        input_ids = torch.from_numpy(np.array(laid_out, dtype=np.int64))
        position = torch.arange(width)
        first_after_padding = width - torch.tensor([len(ids) for ids in prompts]) + head
        attention_mask = ((position < head) | (position >= first_after_padding[:, None])).long()
        device = self.model.device
        rows, capacity = len(prompts) * self.num_beams, width + self.max_new_tokens
        if prefix:
            cache = prefix.for_rows(rows, capacity if self.preallocate else None)
        elif self.preallocate:
            cache = PreallocatedCache(self.model.config.get_text_config().num_hidden_layers, capacity)
        else:
            cache = None
        output = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            **{CACHE_KEYWORD: cache},
            num_beams=self.num_beams,
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens or None,
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
        )
        generated = [self._until_eos(tokens) for tokens in output[:, width:].tolist()]
        texts = self.prompts.tokens.texts(generated, skip_special_tokens=True)
        return [Fusion(text.strip(), EOS if tokens and tokens[-1] == self.eos_id else LENGTH, len(ids), len(tokens))
                for text, tokens, ids in zip(texts, generated, prompts)]

    def _halve_budget(self, prompts: int, tokens: int) -> None:
        """After an out-of-memory on a batch of `tokens`: half of them is the budget from now on
        (the worker records it), so the same prompts retry in a batch at most half as large while
        shorter prompts still go in larger batches. A cap on the count would hold for them too."""
        self.batch_tokens = self.fitted_tokens = tokens // 2
        log.warning("out of GPU memory with %d prompts (%d tokens); token budget now %d", prompts, tokens,
                    self.batch_tokens)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def limit_tokens(self, budget: int) -> None:
        """Keep batches within a budget that fit in memory before (an earlier attempt's)."""
        if self.batch_tokens is None or budget < self.batch_tokens:
            self.batch_tokens = self.fitted_tokens = budget

    def _until_eos(self, tokens: list[int]) -> list[int]:
        return tokens[: tokens.index(self.eos_id) + 1] if self.eos_id in tokens else tokens
