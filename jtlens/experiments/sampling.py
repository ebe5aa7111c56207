"""Choosing the next token from logits: greedy, or sampling with TransformerLens's knobs.

`next_token` follows TransformerLens's `utils.sample_logits` step by step (temperature, then the
frequency penalty, then top-k, then top-p, then a categorical draw); the draw comes from a JAX
PRNG key, so a fixed key gives the same tokens every time.
"""

from __future__ import annotations

import warnings
from typing import Optional

import jax
import jax.numpy as jnp


def check_options(do_sample: bool, top_k: Optional[int], top_p: Optional[float],
                  temperature: float, freq_penalty: float) -> None:
    """Raise a one-line error for an impossible sampling option; warn when greedy ignores one."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature} is negative; use a temperature >= 0 "
                         f"(0 means greedy)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must lie in (0, 1] (1 keeps every token)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1 (or None for no top-k cut)")
    if freq_penalty < 0:
        raise ValueError(f"freq_penalty={freq_penalty} is negative; use a penalty >= 0")
    if not do_sample:
        ignored = [name for name, on in (("top_k", top_k is not None), ("top_p", top_p is not None),
                                         ("temperature", temperature != 1.0),
                                         ("freq_penalty", freq_penalty != 0.0)) if on]
        if ignored:
            warnings.warn(f"do_sample=False decodes greedily (argmax), so {', '.join(ignored)} "
                          f"has no effect; pass do_sample=True to sample", UserWarning, stacklevel=3)


def filter_logits(logits, *, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None, freq_penalty: float = 0.0, counts=None):
    """The logits a sample is drawn from: [batch, vocab] -> [batch, vocab] (removed tokens -inf).

    logits / temperature, minus freq_penalty * counts (how often each token occurred so far,
    [batch, vocab]), then every token outside the top_k, then every token outside the smallest
    set whose probability reaches top_p (the most likely token always stays).
    """
    logits = logits.astype(jnp.float32) / temperature
    if freq_penalty:
        logits = logits - freq_penalty * counts
    if top_k is not None:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        ordered = -jnp.sort(-logits, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1)
        # A token stays while the mass before it is still <= top_p: the set's mass reaches top_p.
        keep = jnp.concatenate([jnp.ones_like(cumulative[..., :1], bool),
                                cumulative[..., :-1] <= top_p], axis=-1)
        n_keep = keep.sum(-1, keepdims=True)
        threshold = jnp.take_along_axis(ordered, n_keep - 1, axis=-1)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def next_token(logits, key, *, do_sample: bool = True, temperature: float = 1.0,
               top_k: Optional[int] = None, top_p: Optional[float] = None,
               freq_penalty: float = 0.0, counts=None):
    """The next token of each row, [batch, vocab] -> int32 [batch].

    Greedy (argmax of the raw logits) when `do_sample` is False or `temperature` is 0, as in
    TransformerLens; otherwise a categorical draw from `filter_logits(...)` with `key`.
    """
    if not do_sample or temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                             freq_penalty=freq_penalty, counts=counts)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
