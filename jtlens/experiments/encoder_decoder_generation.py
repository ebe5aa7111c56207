"""Generation for encoder-decoders (T5): encode once, then decode token by token, all in one
jitted program.

The encoder runs once, and so do the cross-attention key/value projections of its output
(a `KeyValueCache`'s `cross`). Each step then runs the decoder on one token against the cache
of the decoder's self-attention keys and values (the relative position bias read at the
token's slot), as Hugging Face's cached greedy search does.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.checks import ids_in_range
from jtlens.core.compilation_cache import quick_jit
from jtlens.core.config import Config
from jtlens.core.encoder_decoder import EncoderDecoderNames, STACKS, encode, split_hooks
from jtlens.core.engine import run_model
from jtlens.core.hooks import HookRunner, Hooks
from jtlens.core.kv_cache import KeyValueCache
from jtlens.core.params import Params
from jtlens.core.pieces import cross_keys_values
from jtlens.experiments.sampling import check_options, next_token


def generate_encoder_decoder(params: Params, cfg: Config, tokens, max_new_tokens: int, *,
                             decoder_start_token_id: int, attention_mask=None,
                             stop_tokens: Sequence[int] = (), eos_padding: int = 0,
                             key: Optional[jax.Array] = None, do_sample: bool = False,
                             temperature: float = 1.0, top_k: Optional[int] = None,
                             top_p: Optional[float] = None, freq_penalty: float = 0.0,
                             hooks: Optional[Hooks] = None) -> np.ndarray:
    """Decoder tokens [batch, 1 + generated] for encoder input `tokens` [batch, pos].

    Args:
      decoder_start_token_id: the decoder's first token (T5: the pad token).
      attention_mask: optional [batch, pos] padding mask of `tokens`.
      stop_tokens: a row stops at any of these; later slots of a finished row get `eos_padding`
        (TransformerLens's convention; Hugging Face pads with the pad token). Generation ends
        when every row has stopped or after max_new_tokens.
      key, do_sample, temperature, top_k, top_p, freq_penalty: as `jtlens.generate`.
      hooks: a `Hooks` under TransformerLens's names: the encoder's applied once, the
        decoder's at every step (to that step's token, [batch, 1, ...]).
    """
    check_options(do_sample, top_k, top_p, temperature, freq_penalty)
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
    ids_in_range(decoder_start_token_id, cfg.d_vocab, "decoder_start_token_id",
                 "pass a token id of the model's vocabulary (T5: the pad token)")
    if hooks is not None and hooks.capture:
        raise ValueError("generate_encoder_decoder returns tokens only: capture activations with "
                         "encoder_decoder_forward_with_cache on the generated tokens")
    if do_sample and key is None:
        raise ValueError("do_sample=True needs a PRNG key: key=jax.random.PRNGKey(seed)")
    tokens = jnp.asarray(tokens)
    mask = None if attention_mask is None else jnp.asarray(attention_mask)
    options = (do_sample, temperature, top_k, top_p, freq_penalty, tuple(stop_tokens), eos_padding)
    out, steps = _generate(params, tokens, mask, jax.random.PRNGKey(0) if key is None else key,
                           hooks, cfg=cfg, n_new=max_new_tokens, start=decoder_start_token_id,
                           options=options)
    return np.asarray(out)[:, :int(steps) + 1]


@functools.partial(quick_jit, static_argnames=("cfg", "n_new", "start", "options"))
def _generate(params, tokens, mask, key, hooks, *, cfg, n_new, start, options):
    do_sample, temperature, top_k, top_p, freq_penalty, stop, padding = options
    names = EncoderDecoderNames(cfg)
    split = split_hooks(hooks, names)
    runners = {s: HookRunner(split[s], names.stacks[s]) for s in STACKS}
    encoded = encode(params, tokens, cfg, runners["encoder"], mask)[0]
    batch = tokens.shape[0]
    buffer = jnp.full((batch, n_new + 1), start, jnp.int32)
    cache = KeyValueCache.init(cfg, batch, n_new + 1,
                               cross=cross_keys_values(params["blocks"], encoded))

    def step(state):
        i, buffer, cache, done, key = state
        logits, _, _, _, cache = run_model(
            params, jax.lax.dynamic_slice_in_dim(buffer, i, 1, axis=1), cfg, runners["decoder"],
            "logits", False, None, None, None, None, True, None, kv_cache=cache, encoder=encoded,
            encoder_mask=mask)
        key, sub = jax.random.split(key)
        counts = None  # the tokens so far, counted per row only when a penalty reads them
        if freq_penalty:
            counts = jax.vmap(lambda row: jnp.zeros(cfg.d_vocab_out).at[row].add(
                jnp.arange(n_new + 1) <= i))(buffer)
        token = next_token(logits[:, 0], sub, do_sample=do_sample, temperature=temperature,
                           top_k=top_k, top_p=top_p, freq_penalty=freq_penalty, counts=counts)
        token = jnp.where(done, padding, token)
        done = done | jnp.isin(token, jnp.asarray(stop, jnp.int32)) if stop else done
        return i + 1, buffer.at[:, i + 1].set(token), cache, done, key

    def going(state):
        i, _, _, done, _ = state
        return (i < n_new) & ~jnp.all(done)

    steps, buffer, _, _, _ = jax.lax.while_loop(
        going, step, (jnp.int32(0), buffer, cache, jnp.zeros(batch, bool), key))
    return buffer, steps
