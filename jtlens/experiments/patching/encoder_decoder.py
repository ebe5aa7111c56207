"""Activation patching on encoder-decoders (T5): every (layer, position) of one hook of either
stack, patched from a clean run into the corrupted one, as `vmap`-ed chunks of one program.

TransformerLens has no sweep for HookedEncoderDecoder (its get_act_patch_* take a
HookedTransformer); this is the loop one would write with its hooks, compiled.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.config import Config
from jtlens.core.encoder_decoder import EncoderDecoderNames, encoder_decoder_forward
from jtlens.core.hooks import Hooks
from jtlens.experiments.patching.sweep import REUSE_POSITION_AXIS, map_rows, scalar_metric


def encoder_decoder_position_sweep(params, cfg: Config, corrupted_tokens, decoder_tokens,
                                   hook: str, clean_activation, metric: Callable, *,
                                   attention_mask=None, chunk_size: int = 16,
                                   progress: bool = True) -> np.ndarray:
    """metric(logits) with `hook` patched at one (layer, position) at a time: [n_layers, pos].

    Args:
      corrupted_tokens: int [batch, pos] encoder input; decoder_tokens: int [batch, decoder_pos].
      hook: an every-layer name, `encoder.*.<hook>` or `decoder.*.<hook>`, of an activation
        whose axis 1 is the position ([batch, pos, ...]: resid_pre, attn_out, hook_z, ...).
      clean_activation: its clean values, [n_layers, batch, pos, ...] (`cache[hook]`).
      metric: logits [batch, decoder_pos, d_vocab] -> scalar.
      attention_mask: optional [batch, pos] padding mask of the encoder input.
    """
    stack, local = EncoderDecoderNames(cfg).locate(hook)
    if not local.startswith("blocks.*."):
        raise ValueError(f"hook={hook!r}: name every layer at once, e.g. '{stack}.*.hook_resid_pre'")
    template = local[len("blocks.*."):].replace("cross_attn.", "attn.")
    if REUSE_POSITION_AXIS.get(template, 1) != 1:  # [batch, heads, q, k]: axis 1 is the heads
        raise ValueError(f"hook={hook!r} holds [batch, heads, query, key]; this sweep patches one "
                         f"position of axis 1: choose a [batch, pos, ...] hook such as "
                         f"'{stack}.*.attn.hook_z'")
    clean = jnp.asarray(clean_activation)
    if clean.ndim < 3 or clean.shape[0] != cfg.n_layers:
        raise ValueError(f"clean_activation has shape {tuple(clean.shape)}; it must be "
                         f"[n_layers={cfg.n_layers}, batch, pos, ...] (cache[{hook!r}])")
    n_pos = clean.shape[2]
    rows = np.stack(np.meshgrid(np.arange(cfg.n_layers), np.arange(n_pos), indexing="ij"), -1)
    run = functools.partial(_patched_metrics, params, jnp.asarray(corrupted_tokens),
                            jnp.asarray(decoder_tokens), clean,
                            None if attention_mask is None else jnp.asarray(attention_mask),
                            cfg=cfg, hook=hook, metric=metric)
    out = map_rows(lambda layer, idx: run(idx), rows.reshape(-1, 2), chunk_size,
                   progress=progress, desc=f"patching {hook}")
    return out.reshape(cfg.n_layers, n_pos)


@functools.partial(jax.jit, static_argnames=("cfg", "hook", "metric"))
def _patched_metrics(params, tokens, decoder_tokens, clean, mask, idx, *, cfg, hook, metric):
    """The metric for each row (layer, position) of idx [chunk, 2]."""
    def one(row):
        where = (jnp.arange(cfg.n_layers)[:, None] == row[0]) & (jnp.arange(clean.shape[2]) == row[1])
        where = where.reshape(where.shape[:1] + (1,) + where.shape[1:] + (1,) * (clean.ndim - 3))
        hooks = Hooks(patch={hook: (clean, where)})
        return scalar_metric(metric, encoder_decoder_forward(params, tokens, decoder_tokens, cfg,
                                                             hooks, attention_mask=mask))

    return jax.vmap(one)(idx)
