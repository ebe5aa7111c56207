"""The key/value cache: every layer's past keys and values, preallocated and layer-stacked.

`KeyValueCache` is a pytree of fixed shape, so a decode loop that extends it one token at a
time is one compiled `lax.while_loop`:

    k, v:    [n_layers, batch, n_key_value_heads, max_len, d_head]  (keys after rotary / qk-norm),
             or tuples of n_layers arrays [batch, n_key_value_heads, max_len, d_head] (`per_layer`)
    mask:    [batch, max_len]  1 where a slot holds a real token, 0 for padding or an empty slot
    length:  int32 scalar      slots filled so far (the next chunk is written at `length`)
    cross:   None, or a T5 decoder's cross-attention (keys, values), each
             [n_layers, batch, enc_pos, n_heads, d_head]: the encoder output's projections
             (before their hooks), computed once and read by every step

The pure forward takes a cache and returns the extended one
(`forward_with_kv(params, chunk, cfg, cache) -> (logits, cache)`); the facade keeps
TransformerLens's in-place workflow (`model(tokens, past_kv_cache=cache)` extends `cache`).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jtlens.core.config import Config


@jax.tree_util.register_pytree_node_class
class KeyValueCache:
    """Past keys and values of a decoder, for `forward_with_kv` and generation.

    Build one with `KeyValueCache.init(cfg, batch, max_len)` or `KeyValueCache.from_model(model,
    batch)`. `freeze()` makes the facade read the cache without extending it (TransformerLens's
    `freeze`); the pure forward always returns the extended cache and leaves the choice to you.
    """

    def __init__(self, k, v, mask, length, frozen: bool = False, cross=None):
        self.k, self.v, self.mask, self.length = k, v, mask, length
        self.frozen, self.cross = frozen, cross

    @classmethod
    def init(cls, cfg: Config, batch: int, max_len: Optional[int] = None,
             dtype: Optional[str] = None, cross=None) -> "KeyValueCache":
        """An empty cache for `batch` sequences of up to `max_len` tokens (default n_ctx);
        `cross`: a T5 decoder's cross-attention keys and values (`cross_keys_values`)."""
        check_decoder(cfg)
        max_len = cfg.n_ctx if max_len is None else max_len
        if batch < 1 or max_len < 1:
            raise ValueError(f"KeyValueCache needs batch >= 1 and max_len >= 1; got batch={batch}, "
                             f"max_len={max_len}")
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.d_head)
        dtype = jnp.dtype(dtype or cfg.dtype)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                   jnp.zeros((batch, max_len), jnp.int32), jnp.zeros((), jnp.int32), cross=cross)

    @classmethod
    def from_model(cls, model, batch: int = 1, max_len: Optional[int] = None) -> "KeyValueCache":
        """An empty cache for a `HookedTransformer` (TransformerLens's `init_cache`)."""
        return cls.init(model.cfg, batch, max_len)

    @property
    def max_len(self) -> int:
        return self._layer_shape[2]

    @property
    def batch(self) -> int:
        return self._layer_shape[0]

    @property
    def n_layers(self) -> int:
        return len(self.k) if isinstance(self.k, tuple) else self.k.shape[0]

    @property
    def _layer_shape(self) -> tuple:  # [batch, n_kv_heads, max_len, d_head]
        return self.k[0].shape if isinstance(self.k, tuple) else self.k.shape[1:]

    def per_layer(self) -> "KeyValueCache":
        """The same cache with k and v as tuples of per-layer arrays. A decode loop carrying it
        updates each layer's buffer in place; a layer-stacked cache costs a copy of every
        layer's keys and values per step on CPU (the forward runs such a cache unrolled)."""
        if isinstance(self.k, tuple):
            return self
        return KeyValueCache(tuple(self.k), tuple(self.v), self.mask, self.length, self.frozen,
                             self.cross)

    def stacked(self) -> "KeyValueCache":
        """The same cache with k and v layer-stacked [n_layers, ...] (undoes `per_layer`)."""
        if not isinstance(self.k, tuple):
            return self
        return KeyValueCache(jnp.stack(self.k), jnp.stack(self.v), self.mask, self.length,
                             self.frozen, self.cross)

    def freeze(self) -> "KeyValueCache":
        self.frozen = True
        return self

    def unfreeze(self) -> "KeyValueCache":
        self.frozen = False
        return self

    def tree_flatten(self):
        return (self.k, self.v, self.mask, self.length, self.cross), self.frozen

    @classmethod
    def tree_unflatten(cls, frozen, children):
        return cls(*children[:4], frozen=frozen, cross=children[4])

    def __repr__(self):
        return (f"KeyValueCache(layers={self.n_layers}, batch={self.batch}, "
                f"max_len={self.max_len}, length={self.length})")


def check_decoder(cfg: Config) -> None:
    """Encoders see the whole sequence at once: a key/value cache (and generation) needs a
    causal decoder."""
    if cfg.post_ln or cfg.attention_dir != "causal":
        raise ValueError("this model is an encoder (bidirectional attention): a key/value cache "
                         "and generate() need a causal decoder such as GPT-2 or Llama")


def check_room(cache: KeyValueCache, n_new: int) -> None:
    """Raise before a chunk of `n_new` tokens overflows the cache (under jit, where the length
    is unknown, only a chunk longer than the whole cache)."""
    used = 0 if isinstance(cache.length, jax.core.Tracer) else int(cache.length)
    if used + n_new > cache.max_len:
        raise ValueError(f"the KeyValueCache holds {used} of {cache.max_len} slots, too few for "
                         f"{n_new} more tokens; build it with a larger max_len")
