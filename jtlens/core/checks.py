"""Input checks shared by the forward and every entry point that receives concrete inputs.

The pure forward's contract: token ids lie in [0, d_vocab) and an attention mask holds 0/1.
Concrete inputs are checked eagerly (a one-line ValueError). Under `jit`/`vmap` the values are
unknown at trace time, so the forward records `checkify.debug_check`s (no-ops unless the
function runs under checkify) and looks ids up so that an out-of-range id gives NaN, never
another token's row. `checked(fn)` runs any jtlens function with those checks on:

    logits = jtlens.checked(jax.jit(forward, static_argnums=2))(params, tokens, cfg)
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jtlens.core.config import Config


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def ids_in_range(ids, size: int, what: str, fix: str, domain: str = ""):
    """Raise (concrete ids) or record a checkify check (traced ids) for ids outside [0, size)."""
    if is_traced(ids):
        bad = jnp.where((ids < 0) | (ids >= size), ids, 0)
        checkify.debug_check(jnp.all((ids >= 0) & (ids < size)),
                             f"{what} {{}} is outside {domain}[0, {size}); {fix}",
                             jnp.where(jnp.any(bad < 0), jnp.min(bad), jnp.max(bad)))
        return
    arr = np.asarray(ids)
    if arr.size == 0:
        return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= size:
        raise ValueError(f"{what} {hi if hi >= size else lo} is outside {domain}[0, {size}); {fix}")


def lookup(table, ids):
    """table[ids] along axis 0, with NaN rows (not wrapped ones) for ids outside the table."""
    n = table.shape[0]
    return jnp.take(table, jnp.where(ids < 0, n, ids), axis=0, mode="fill", fill_value=jnp.nan)


def layer_range(start_at_layer, stop_at_layer, n_layers: int) -> tuple[int, int]:
    """Blocks [start, stop) to run, as Python slicing `blocks[start_at_layer:stop_at_layer]`
    (TransformerLens's rule: negative values count from the end, stop=-5 of 2 runs none);
    a start beyond n_layers is an error rather than a run of no blocks."""
    for name, v in (("start_at_layer", start_at_layer), ("stop_at_layer", stop_at_layer)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
            raise TypeError(f"{name}={v!r} must be an int or None")
    if start_at_layer is not None and start_at_layer > n_layers:
        raise ValueError(f"start_at_layer={start_at_layer} is beyond the model's {n_layers} "
                         f"layers; use 0..{n_layers} (or a negative index)")
    start, stop, _ = slice(start_at_layer, stop_at_layer).indices(n_layers)
    return start, max(start, stop)


def check_attention_mask(mask, tokens_shape: tuple):
    """A padding mask must be [batch, pos] like the tokens, integer or boolean, of 0s and 1s."""
    if tuple(mask.shape) != tuple(tokens_shape):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; it must match the tokens' "
                         f"[batch, pos] = {tuple(tokens_shape)}")
    kind = np.dtype(mask.dtype).kind
    if kind not in "iub":
        raise ValueError(f"attention_mask holds {mask.dtype} values; it must be integers or "
                         f"booleans (1 = token, 0 = padding)")
    if kind != "b":
        ids_in_range(mask, 2, "attention_mask value", "use 1 for a token and 0 for padding")


def context_name(cfg: Config) -> str:
    """The Config field that `cfg.position_limit` comes from (for error messages)."""
    if (cfg.use_logn_attn or cfg.use_dynamic_ntk_rope) and cfg.train_seq_length:
        return "train_seq_length (past it, log-n attention and dynamic NTK rotary are not implemented)"
    return "n_ctx"


def check_tokens(tokens, cfg: Config):
    """A token batch [batch, pos]: its rank, length and ids (eagerly when concrete, through
    checkify when traced). Call it from every entry point that receives tokens."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos]; got shape {tuple(tokens.shape)}")
    if 0 in tokens.shape:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} are empty; give at least one "
                         f"sequence of at least one token")
    if np.dtype(tokens.dtype).kind not in "iu":
        raise ValueError(f"tokens hold {tokens.dtype} values; token ids must be integers")
    limit = cfg.position_limit
    if limit is not None and tokens.shape[1] > limit:
        raise ValueError(f"sequence of {tokens.shape[1]} tokens is longer than the model's context "
                         f"{context_name(cfg)}={limit}; truncate the input "
                         f"(to_tokens(..., truncate=True))")
    ids_in_range(tokens, cfg.d_vocab, "token id", "check the tokenizer matches the model",
                 "the vocabulary ")


def check_residual(resid, cfg: Config, start_at_layer: int):
    """What `start_at_layer` starts from: the residual stream [batch, pos, d_model] in floats."""
    floats = jnp.issubdtype(resid.dtype, jnp.floating)
    if resid.ndim != 3 or resid.shape[-1] != cfg.d_model or not floats:
        raise ValueError(f"start_at_layer={start_at_layer} takes the residual stream [batch, pos, "
                         f"d_model={cfg.d_model}] (floats), not {resid.dtype} values of shape "
                         f"{tuple(resid.shape)}; get it from the tokens with "
                         f"stop_at_layer={start_at_layer} (or cache['resid_pre', {start_at_layer}])")


def checked(fn: Callable) -> Callable:
    """`fn` run under checkify, raising a ValueError when a jtlens input check fails inside
    jit/vmap/scan (out-of-range token ids or mask values). Do not jit the result; jit `fn`."""
    run = checkify.checkify(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        err, out = run(*args, **kwargs)
        msg: Optional[str] = err.get()
        if msg:
            raise ValueError(msg.split(" (`check` failed)")[0].splitlines()[0])
        return out

    return wrapper
