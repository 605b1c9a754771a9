"""A fast tokenizer's Rust backend, called directly: the ids and texts transformers' calls give,
without the Python around them.

transformers builds offsets and Python encodings for every text it tokenises (a third of the
cost of a prompt), and decodes sequence by sequence after converting every id in Python (more
than the decoding). The backend is called directly only where transformers' call comes to the
same result: the tokenizer's class adds nothing of its own to encoding or decoding, and, at
each call (transformers' own calls change the backend's settings and leave them), the backend
truncates and pads nothing and splits special tokens as the tokenizer says; decoding cleans up
no spaces.
"""

from __future__ import annotations

from transformers.tokenization_utils_tokenizers import TokenizersBackend


def _plain_class(tokenizer) -> bool:
    """Whether the tokenizer's class leaves encoding and decoding to TokenizersBackend's methods
    (LLaMA's does; CodeLlama's, Whisper's and others' add steps of their own)."""
    kind = type(tokenizer)
    return isinstance(tokenizer, TokenizersBackend) and all(
        getattr(kind, name) is getattr(TokenizersBackend, name) for name in ("_encode_plus", "decode", "_decode"))


class Tokens:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        plain = _plain_class(tokenizer)
        self._backend = tokenizer.backend_tokenizer if plain else None
        self._decoder = self._backend if plain and not tokenizer.clean_up_tokenization_spaces else None

    def _encoder(self):
        backend = self._backend
        if backend is None or backend.truncation is not None or backend.padding is not None:
            return None
        if backend.encode_special_tokens != bool(getattr(self.tokenizer, "split_special_tokens", False)):
            return None
        return backend

    def ids(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text, as tokenizer(texts).input_ids gives them."""
        encoder = self._encoder()
        if encoder is None:
            return self.tokenizer(texts, add_special_tokens=add_special_tokens).input_ids
        return [e.ids for e in encoder.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]

    def texts(self, sequences: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        """The text of each sequence of ids, as tokenizer.batch_decode(sequences) gives it."""
        if not sequences:
            return []
        if self._decoder is None:
            return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens)
        return self._decoder.decode_batch(sequences, skip_special_tokens=skip_special_tokens)
