"""A fast tokenizer's Rust backend, called directly: the ids and texts transformers' calls give,
without the Python around them.

transformers builds offsets and Python encodings for every text it tokenises (a third of the
cost of a prompt) and checks every token id it decodes in Python (more than the decoding).
The backend is called directly only where transformers' call would come to the same result:
the backend itself truncates and pads nothing, and decoding cleans up no spaces.
"""

from __future__ import annotations


class Tokens:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        usable = backend is not None and backend.truncation is None and backend.padding is None
        self._encoder = backend if usable and hasattr(backend, "encode_batch_fast") else None
        plain = backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False)
        self._decoder = backend if plain else None

    def ids(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text, as tokenizer(texts).input_ids gives them."""
        if self._encoder is None:
            return self.tokenizer(texts, add_special_tokens=add_special_tokens).input_ids
        return [e.ids for e in self._encoder.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]

    def texts(self, sequences: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        """The text of each sequence of ids, as tokenizer.batch_decode(sequences) gives it."""
        if not sequences:
            return []
        if self._decoder is None:
            return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens)
        return self._decoder.decode_batch(sequences, skip_special_tokens=skip_special_tokens)
