"""One pass of the model through its pieces, behind `forward`, `forward_with_cache`,
`forward_with_kv` and the hook catalogue: input checks, embedding (or a given residual), the
blocks from start to stop layer, then the final norm, unembedding and loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from jtlens.core import components as C
from jtlens.core.checks import (check_attention_mask, check_residual, check_tokens, ids_in_range,
                                layer_range)
from jtlens.core.config import Config
from jtlens.core.hooks import HookRunner
from jtlens.core.kv_cache import KeyValueCache
from jtlens.core.params import Params
from jtlens.core.pieces import (Ctx, KVSlots, embed, encoder_embed, final_norm, position_embedding,
                                run_blocks, unembed)


def _check_encoder_inputs(tokens, token_type_ids, return_type, stop_at_layer, cfg: Config):
    if token_type_ids is not None:
        if not cfg.n_token_types:
            raise ValueError("token_type_ids given, but this model has no token-type embedding "
                             "(n_token_types=0); leave them out")
        if tuple(token_type_ids.shape) != tuple(tokens.shape[:2]):
            raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)}; it must "
                             f"match the tokens' [batch, pos] = {tuple(tokens.shape[:2])}")
        ids_in_range(token_type_ids, cfg.n_token_types, "token_type_id", "segment ids count "
                     "from 0 up to the model's n_token_types")
    if not cfg.post_ln or stop_at_layer is not None or return_type is None:
        return
    if return_type != "logits":
        raise ValueError(f"return_type={return_type!r}: an encoder has no next-token loss; use "
                         f"'logits' (MLM head), None, or stop_at_layer=n_layers for the embeddings")
    if not cfg.mlm_head:
        raise ValueError("this encoder has no MLM head (e.g. a BertModel checkpoint), so no "
                         "logits: use return_type=None or stop_at_layer=n_layers for the embeddings")


def run_model(params: Params, tokens, cfg: Config, hk: HookRunner, return_type, loss_per_token,
         attention_mask, start_at_layer, stop_at_layer, loss_tokens, scan, token_type_ids,
         kv_cache: Optional[KeyValueCache] = None, encoder=None, encoder_mask=None):
    """The forward behind `forward`, `forward_with_cache` and `forward_with_kv`:
    (out, outer records, stacked, start, the extended KeyValueCache or None).
    A T5 decoder (cfg.cross_attention) also takes the encoder output [batch, enc_pos, d_model]
    and its padding mask (see `core/encoder_decoder.py`)."""
    rec: dict = {}
    L = cfg.n_layers
    start, stop = layer_range(start_at_layer, stop_at_layer, L)
    if start_at_layer is None:
        check_tokens(tokens, cfg)
        batch, n_pos = tokens.shape
    else:
        check_residual(tokens, cfg, start_at_layer)
        batch, n_pos = tokens.shape[:2]
    tokens = jnp.asarray(tokens)
    mask = None if attention_mask is None else jnp.asarray(attention_mask)
    if mask is not None:
        check_attention_mask(mask, (batch, n_pos))
    if cfg.post_ln or token_type_ids is not None:
        token_type_ids = None if token_type_ids is None else jnp.asarray(token_type_ids)
        _check_encoder_inputs(tokens, token_type_ids, return_type, stop_at_layer, cfg)
    # BERT numbers positions 0..pos-1 whatever the padding; decoders shift past left padding.
    positions = C.positions_from_mask(None if cfg.post_ln else mask, n_pos, batch)
    kv = None
    if kv_cache is not None:
        if (start, stop) != (0, L):
            raise ValueError("a KeyValueCache holds every layer: run it without start_at_layer "
                             "/ stop_at_layer")
        mask = jnp.ones((batch, n_pos), jnp.int32) if mask is None else mask
        positions, kv = _continue(kv_cache, mask)
    if cfg.cross_attention and encoder is None:
        raise ValueError("this Config is an encoder-decoder's decoder (cross_attention=True): run "
                         "it with jtlens.encoder_decoder_forward(params, tokens, decoder_tokens, cfg)")
    ctx = Ctx(cfg, hk, rec, positions, mask, kv=kv, encoder=encoder, encoder_mask=encoder_mask,
              position_bias=_relative_bias(params, cfg, n_pos, kv))
    if cfg.positional_embedding_type == "shortformer":
        pos = position_embedding(params, ctx)
        ctx = dataclasses.replace(ctx, shortformer_pos=pos if start_at_layer is not None
                                  else ctx("hook_pos_embed", pos))
    if start_at_layer is not None:
        resid = tokens
    elif cfg.post_ln:
        resid = encoder_embed(params, tokens, token_type_ids, ctx)
    else:
        resid = embed(params, tokens, ctx)
    blocks = params["blocks"]
    if (start, stop) != (0, L):
        blocks = (blocks[start:stop] if isinstance(blocks, (tuple, list))
                  else jax.tree_util.tree_map(lambda a: a[start:stop], blocks))
    stacked: dict = {}
    if stop > start:
        resid, stacked = run_blocks(blocks, resid, ctx, first_layer=start, scan=scan)
    if kv is not None:
        k, v = stacked.pop("kv")
        kv_cache = KeyValueCache(k, v, kv.mask, kv_cache.length + n_pos, kv_cache.frozen,
                                 kv_cache.cross)
    out: Any
    if stop_at_layer is not None:
        out = resid
    elif return_type is None:
        # TransformerLens runs the final norm (an encoder: its MLM head) and their hooks regardless.
        (unembed if cfg.mlm_head else final_norm)(params, resid, ctx)
        out = None
    else:
        logits = unembed(params, resid, ctx)
        if return_type == "logits":
            out = logits
        else:
            loss_on = tokens if start_at_layer is None else loss_tokens
            if loss_on is None:
                raise ValueError("return_type='loss' with start_at_layer needs loss_tokens=")
            loss = C.lm_cross_entropy_loss(logits, loss_on, mask, loss_per_token)
            if return_type == "loss":
                out = loss
            elif return_type == "both":
                out = (logits, loss)
            else:
                raise ValueError(f"return_type={return_type!r}; use 'logits', 'loss', 'both' or None")
    return out, rec, stacked, start, kv_cache


def _relative_bias(params: Params, cfg: Config, n_pos: int, kv):
    """T5's relative position bias [1, heads, pos, keys], from the table the first layer owns
    and shared by every layer (TransformerLens's compute_relative_attention_bias); None for
    other position schemes. With a KeyValueCache the keys are its slots and the queries the
    chunk's, from slot `kv.at` on (offsets by slot, as Hugging Face's cache positions)."""
    if cfg.positional_embedding_type != "relative_positional_bias":
        return None
    n_keys = n_pos if kv is None else (kv.k[0].shape[2] if isinstance(kv.k, tuple) else kv.k.shape[3])
    buckets = C.relative_position_buckets(n_keys, n_keys, cfg.attention_dir != "causal",
                                          cfg.relative_attention_num_buckets,
                                          cfg.relative_attention_max_distance)
    if kv is not None:  # the chunk's rows (the buckets are static; the slot is traced)
        buckets = jax.lax.dynamic_slice_in_dim(jnp.asarray(buckets), kv.at, n_pos, axis=0)
    return jnp.transpose(params["rel_pos_bias"]["W_rel_pos"][buckets], (2, 0, 1))[None]


def _continue(kv_cache: KeyValueCache, chunk_mask):
    """Positions [batch, pos] of a chunk that continues the cached tokens, and the KVSlots it
    attends to (the key mask covers the cached slots and the chunk's)."""
    positions = kv_cache.mask.sum(1, keepdims=True) + jnp.cumsum(chunk_mask, axis=1) - 1
    key_mask = jax.lax.dynamic_update_slice_in_dim(kv_cache.mask, chunk_mask.astype(jnp.int32),
                                                   kv_cache.length, axis=1)
    return jnp.maximum(positions, 0), KVSlots(kv_cache.k, kv_cache.v, kv_cache.length, key_mask,
                                              cross=kv_cache.cross)
