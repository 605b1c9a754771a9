"""A tiny random LLaMA with a BPE tokenizer, saved like a real checkpoint.

It writes gibberish. It exists so the real loading (from_pretrained) and generation code runs
anywhere, in tests and the demo, without downloading CapsFus-LLaMA.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

from .examples import captions
from .prompt import template

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
VOCAB_SIZE = 1024
# Scaling the end-of-sequence row of the output layer makes the random model stop on its own
# for part of the prompts, so both finish reasons ("eos" and "length") occur.
EOS_LOGIT_SCALE = 1.35


def build_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


def build_smoke_model(folder: Path, seed: int = 0) -> Path:
    """Write the smoke model and tokenizer to `folder` with save_pretrained; returns the folder."""
    # The instruction repeats in every prompt, so it is weighted in the corpus as it is in use.
    tokenizer = build_tokenizer(captions(300, seed) + [template()] * 20)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] *= EOS_LOGIT_SCALE
    folder.mkdir(parents=True, exist_ok=True)
    transformers_logging.disable_progress_bar()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
