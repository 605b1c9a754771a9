"""A KV cache allocated once per batch, for the longest prompt plus max_new_tokens.

transformers' DynamicCache grows by torch.cat: each decoding step copies every layer's keys and
values into a new tensor one token longer, and beam search's reorder copies them once more. At a
GPU batch of a few hundred rows the cache is tens of GB, so a step moves it through memory two
or three times besides the one read attention needs. Here each layer's buffers are allocated
once and a step's token is written in place; a layer's keys and values are views of the filled
part, so attention sees exactly what DynamicCache would give it. Beam search's reorder gathers
the filled part into a spare buffer that the layers share and swaps it in: one copy a step,
and greedy steps copy nothing. Only for models whose default cache is all plain layers
(`preallocatable`); others keep transformers' own.
"""

from __future__ import annotations

import torch
import transformers
from packaging.version import Version
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

# generate's cache argument and a model output's cache: transformers 5.24 renamed past_key_values
# to cache (the old name warns, in every task's log, and goes in 6.0); earlier 5.x know only past_key_values.
CACHE_KEYWORD = "cache" if Version(transformers.__version__).release >= (5, 24) else "past_key_values"


def preallocatable(model) -> bool:
    """Whether every layer of the model's default cache is a plain DynamicLayer (no sliding
    window, shared or linear-attention layers) and its generation config asks for no other cache."""
    if getattr(model.generation_config, "cache_implementation", None) is not None:
        return False
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # noqa: BLE001 - a config transformers cannot lay out: keep its own cache
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class PreallocatedLayer(DynamicLayer):
    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.allocate(key_states.shape[0], key_states.shape[1], key_states.shape[-1], value_states.shape[-1],
                      key_states.dtype, key_states.device)

    def allocate(self, rows: int, heads: int, key_dim: int, value_dim: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        self.key_buffer = torch.empty((rows, heads, self.capacity, key_dim), dtype=dtype, device=device)
        self.value_buffer = torch.empty((rows, heads, self.capacity, value_dim), dtype=dtype, device=device)
        self.filled(0)
        self.is_initialized = True

    def filled(self, length: int) -> None:
        self.keys = self.key_buffer[:, :, :length]
        self.values = self.value_buffer[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        begin = self.keys.shape[-2]
        end = begin + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"the KV cache was allocated for {self.capacity} tokens; {end} were asked for")
        self.key_buffer[:, :, begin:end] = key_states
        self.value_buffer[:, :, begin:end] = value_states
        self.filled(end)
        return self.keys, self.values

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError("the preallocated KV cache does not resize, select rows of or offload a batch")

    batch_repeat_interleave = batch_select_indices = offload = prefetch = _unsupported


class PreallocatedCache(DynamicCache):
    """A DynamicCache (generate treats it as one) whose layers never reallocate. Rows are
    allocated at the first update, or by `start_from` with a prefix every row shares."""

    def __init__(self, layers: int, capacity: int):
        Cache.__init__(self, layers=[PreallocatedLayer(capacity) for _ in range(layers)])
        self._spares: dict[tuple, torch.Tensor] = {}  # one per device, shape and dtype

    def start_from(self, prefix: DynamicCache, rows: int) -> "PreallocatedCache":
        """Every row starts with the keys and values of `prefix`, a one-row cache."""
        for layer, source in zip(self.layers, prefix.layers):
            keys, values = source.keys, source.values
            layer.allocate(rows, keys.shape[1], keys.shape[-1], values.shape[-1], keys.dtype, keys.device)
            length = keys.shape[-2]
            layer.key_buffer[:, :, :length] = keys
            layer.value_buffer[:, :, :length] = values
            layer.filled(length)
        return self

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for layer in self.layers:
            length = layer.get_seq_length()
            if length == 0:
                continue
            index = beam_idx.to(layer.device)
            layer.key_buffer = self._gathered(layer.key_buffer, index, length)
            layer.value_buffer = self._gathered(layer.value_buffer, index, length)
            layer.filled(length)

    def _gathered(self, buffer: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
        """The buffer's first `length` positions, rows picked by `index`, written into the spare
        buffer of its kind; the old buffer becomes the spare."""
        kind = (buffer.device, buffer.shape, buffer.dtype)
        spare = self._spares.get(kind)
        if spare is None:
            spare = torch.empty_like(buffer)
        torch.index_select(buffer[:, :, :length], 0, index, out=spare[:, :, :length])
        self._spares[kind] = buffer
        return spare
